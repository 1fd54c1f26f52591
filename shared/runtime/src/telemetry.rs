//! Telemetry: JSON logs through `tracing`, spans exported by OTLP when the standard `OTEL_*`
//! variables ask for it, and the W3C trace context carried in NATS headers.
//!
//! The OpenTelemetry layer is installed even without an exporter, so that spans have trace ids
//! and the `traceparent` header still links services in the logs.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{global, Context};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Flushes spans when dropped; keep it alive for the life of `main`.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).map(|s| !s.is_empty()).unwrap_or(false))
        && std::env::var("OTEL_SDK_DISABLED")
            .map(|v| v != "true")
            .unwrap_or(true)
}

/// Start logging and tracing for `service`. `OTEL_SERVICE_NAME` overrides the service name in
/// exported spans. Log level from `RUST_LOG` (default `info`).
pub fn init(service: &'static str) -> TelemetryGuard {
    // Without a global propagator, injection silently does nothing.
    global::set_text_map_propagator(TraceContextPropagator::new());

    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(name).build());
    let mut export_error = None;
    if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    let tracer = provider.tracer(service);

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false),
        )
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init();
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP exporter could not start; spans stay local");
    }
    TelemetryGuard { provider }
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
    use opentelemetry::trace::TraceContextExt;
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
