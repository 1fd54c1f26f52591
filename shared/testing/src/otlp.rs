//! [`OtlpReceiver`]: a real OTLP trace receiver for end-to-end tests. It decodes the protobuf the
//! services' exporters send, over OTLP/HTTP (`POST /v1/traces`) or OTLP/gRPC
//! (`TraceService/Export`), and keeps every span with its service, ids, parent and attributes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use tokio::task::JoinHandle;

/// One span as a receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the resource that sent it.
    pub service: String,
    /// The resource's other attributes.
    pub resource: BTreeMap<String, String>,
    pub name: String,
    /// Hex, as in logs and `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute as text (numbers and booleans too).
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Which OTLP transport a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `http/protobuf`.
    Http,
    /// `grpc`.
    Grpc,
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    transport: Transport,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
    task: JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn keep(spans: &Mutex<Vec<ReceivedSpan>>, request: ExportTraceServiceRequest) {
    let mut kept = spans.lock().unwrap();
    for rs in request.resource_spans {
        let resource: BTreeMap<String, String> = rs
            .resource
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv)))
                    .collect()
            })
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                kept.push(ReceivedSpan {
                    service: service.clone(),
                    resource: resource.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv)))
                        .collect(),
                });
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Grpc {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        *self.requests.lock().unwrap() += 1;
        keep(&self.spans, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpReceiver {
    /// Start a receiver on a free loopback port.
    pub async fn start(transport: Transport) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0u64));
        let task = match transport {
            Transport::Http => {
                let (spans, requests) = (spans.clone(), requests.clone());
                let endpoint = poem::endpoint::make(move |req: poem::Request| {
                    let (spans, requests) = (spans.clone(), requests.clone());
                    async move { http_export(req, &spans, &requests).await }
                });
                let route = poem::Route::new().at("/v1/traces", poem::post(endpoint));
                let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
                tokio::spawn(async move {
                    let _ = poem::Server::new_with_acceptor(acceptor).run(route).await;
                })
            }
            Transport::Grpc => {
                let service = TraceServiceServer::new(Grpc {
                    spans: spans.clone(),
                    requests: requests.clone(),
                });
                let incoming = tokio_stream_listener(listener);
                tokio::spawn(async move {
                    let _ = tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(incoming)
                        .await;
                })
            }
        };
        Self {
            addr,
            transport,
            spans,
            requests,
            task,
        }
    }

    /// `OTEL_EXPORTER_OTLP_ENDPOINT` for this receiver.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The standard variables that point a service at this receiver, exporting promptly.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let protocol = match self.transport {
            Transport::Http => "http/protobuf",
            Transport::Grpc => "grpc",
        };
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// How many export requests arrived.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }

    /// Wait until `done` holds for the spans received, or `limit` passes; the spans either way.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn http_export(
    mut req: poem::Request,
    spans: &Mutex<Vec<ReceivedSpan>>,
    requests: &Mutex<u64>,
) -> poem::Response {
    use poem::http::StatusCode;
    let content_type = req
        .header(poem::http::header::CONTENT_TYPE)
        .unwrap_or_default()
        .to_owned();
    let Ok(body) = req.take_body().into_bytes().await else {
        return StatusCode::BAD_REQUEST.into();
    };
    if content_type != "application/x-protobuf" {
        return poem::Response::builder()
            .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .body(format!(
                "expected application/x-protobuf, got {content_type:?}"
            ));
    }
    match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(request) => {
            *requests.lock().unwrap() += 1;
            keep(spans, request);
            poem::Response::builder()
                .content_type("application/x-protobuf")
                .body(
                    ExportTraceServiceResponse {
                        partial_success: None,
                    }
                    .encode_to_vec(),
                )
        }
        Err(e) => poem::Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(format!("undecodable OTLP request: {e}")),
    }
}

/// The accepted connections of `listener`, as tonic's `serve_with_incoming` takes them.
fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}
