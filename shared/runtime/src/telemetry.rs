//! Telemetry: JSON logs through `tracing`, spans exported by OTLP when the standard `OTEL_*`
//! variables ask for it, and the W3C trace context carried in NATS headers.
//!
//! The OpenTelemetry layer is installed even without an exporter, so that spans have trace ids,
//! every log line inside a span carries `trace_id` and `span_id`, and the `traceparent` header
//! still links services in the logs.
//!
//! Export runs on the service's own Tokio runtime (the SDK's batch processor for async
//! runtimes): the HTTP and gRPC clients are async and need that runtime's reactor.
//! [`TelemetryGuard::shutdown`] flushes what is queued before the process exits.

use std::sync::OnceLock;
use std::time::Duration;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::dispatcher::WeakDispatch;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How long shutdown waits for the last spans to leave.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Flushes spans on [`TelemetryGuard::shutdown`]; keep it alive for the life of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Export what is queued and stop the exporter, waiting at most a few seconds: a collector
    /// that is down must not hold up a service's exit.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The processor's worker runs on this runtime; wait for it from a blocking thread.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_LIMIT, flushed).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing spans failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans failed"),
            Err(_) => tracing::warn!("flushing spans took too long; the rest are dropped"),
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Without a runtime to flush on (a panic, or a caller that never awaited `shutdown`),
        // stop exporting without waiting: a blocking wait here could deadlock the runtime.
        if let Some(provider) = self.provider.take() {
            std::thread::spawn(move || {
                let _ = provider.shutdown_with_timeout(Duration::from_millis(500));
            });
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether spans leave the process: only when an OTLP endpoint is named, the SDK is not
/// disabled and the traces exporter is not `none`. Without an endpoint nothing is exported,
/// rather than sending to a default address nobody listens on.
fn otlp_configured() -> bool {
    (env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
        && env("OTEL_SDK_DISABLED").is_none_or(|v| !v.eq_ignore_ascii_case("true"))
        && env("OTEL_TRACES_EXPORTER").is_none_or(|v| !v.eq_ignore_ascii_case("none"))
}

/// The OTLP protocol from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (the specification's default).
pub fn otlp_protocol() -> Result<Protocol, String> {
    let name = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    match name.trim() {
        "http/protobuf" => Ok(Protocol::HttpBinary),
        "http/json" => Ok(Protocol::HttpJson),
        "grpc" => Ok(Protocol::Grpc),
        other => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not one of grpc, http/protobuf, http/json"
        )),
    }
}

fn exporter() -> Result<opentelemetry_otlp::SpanExporter, String> {
    // Endpoint, headers, timeout and compression come from the standard variables; the
    // builders read them.
    let built = match otlp_protocol()? {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        protocol => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build(),
    };
    built.map_err(|e| e.to_string())
}

/// This machine's name, for the `host.name` resource attribute and a node's default name.
pub fn host_name() -> String {
    env("HOSTNAME")
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// What every span of this process says about where it came from: the service (its name
/// overridable by `OTEL_SERVICE_NAME`, more attributes by `OTEL_RESOURCE_ATTRIBUTES`), its
/// version, the host, and for trainers the node's name.
fn resource(service: &'static str) -> Resource {
    let mut attributes = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.namespace", "gantry"),
        KeyValue::new("host.name", host_name()),
    ];
    if service == "gantry-trainer" {
        let node = env("GANTRY_NODE_NAME").unwrap_or_else(host_name);
        attributes.push(KeyValue::new("gantry.node.name", node));
    }
    // `Resource::builder` reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; ours come
    // first so that an operator's attributes win.
    let mut builder = Resource::builder_empty().with_attributes(attributes);
    if env("OTEL_SERVICE_NAME").is_none() {
        builder = builder.with_service_name(service);
    }
    let from_env = Resource::builder().build();
    builder
        .with_attributes(
            from_env
                .iter()
                .filter(|(k, _)| k.as_str() != "service.name" || env("OTEL_SERVICE_NAME").is_some())
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
}

/// The subscriber's dispatch, so log lines can ask the OpenTelemetry layer for their span's ids.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

struct RememberDispatch;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RememberDispatch {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = DISPATCH.set(subscriber.downgrade());
    }
}

/// The JSON log line, with the trace and span ids of the span it was written in, so that logs
/// and traces join.
struct JsonWithTrace(
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
);

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        let ids = span.and_then(|span| {
            let dispatch = DISPATCH.get()?.upgrade()?;
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        match (ids, line.trim_end().strip_suffix('}')) {
            (Some((trace, span)), Some(open)) => writeln!(
                writer,
                "{open},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
            ),
            _ => writer.write_str(&line),
        }
    }
}

/// Start logging and tracing for `service`. Log level from `RUST_LOG` (default `info`). Must be
/// called on the service's Tokio runtime when spans are exported.
pub fn init(service: &'static str) -> TelemetryGuard {
    // Without a global propagator, injection silently does nothing.
    global::set_text_map_propagator(TraceContextPropagator::new());

    // The sampler (OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG) and span limits come from the
    // SDK's own reading of the environment.
    let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
    let mut export_error = None;
    if otlp_configured() {
        match exporter() {
            Ok(exporter) => {
                builder = builder.with_span_processor(
                    BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                        .build(),
                )
            }
            Err(e) => export_error = Some(e),
        }
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = tracing_subscriber::fmt::format()
        .json()
        .with_current_span(true)
        .with_span_list(false);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(RememberDispatch)
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonWithTrace(json))
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new()),
        )
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP exporter could not start; spans stay local");
    }
    TelemetryGuard {
        provider: Some(provider),
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Write the current span's context into NATS headers (`traceparent`, `tracestate`).
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// Read a remote context from NATS headers.
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(h) => global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(h))),
        None => Context::new(),
    }
}

/// Make `span` a child of the context carried in `headers`.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    let _ = span.set_parent(extract(headers));
}

/// The current span's trace id as 32 hex characters, for logs and tests.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let id = cx.span().span_context().trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then(|| id.to_string())
}

struct HttpExtractor<'a>(&'a poem::http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Make `span` a child of the W3C context of an incoming HTTP request, if it carries one.
pub fn set_parent_from_http(span: &tracing::Span, headers: &poem::http::HeaderMap) {
    let cx = global::get_text_map_propagator(|p| p.extract(&HttpExtractor(headers)));
    let _ = span.set_parent(cx);
}
