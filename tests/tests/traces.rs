//! Traces that reach the operator: the services export over OTLP (`http/protobuf`, and `grpc`)
//! to a real receiver that decodes the protobuf, and one `POST /admin/api/train` is one trace
//! holding the api's HTTP server span, auth's verify and charge, the registry's job record, the
//! JetStream publish, and the trainer's job span with its dataset fetch, epochs, checkpoints
//! and upload, each linked to its parent. Log lines inside a span carry its ids.

use std::time::Duration;

use gantry_contracts::jobs;
use gantry_contracts::subjects;
use gantry_testing::otlp::{OtlpReceiver, ReceivedSpan, Transport};
use gantry_testing::TestStack;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const EPOCHS: usize = 2;

/// Whether `span` is `ancestor` or below it, following parent ids within `spans`.
fn descends_from(span: &ReceivedSpan, ancestor: &ReceivedSpan, spans: &[ReceivedSpan]) -> bool {
    let mut at = span.clone();
    for _ in 0..64 {
        if at.span_id == ancestor.span_id {
            return true;
        }
        match spans.iter().find(|s| s.span_id == at.parent_span_id) {
            Some(parent) => at = parent.clone(),
            None => return false,
        }
    }
    false
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pred(s)).collect();
    assert!(
        !found.is_empty(),
        "no span is {what}; the trace holds:\n{}",
        describe(spans)
    );
    found[0]
}

fn describe(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "  {} {:?} kind={} id={} parent={} {:?}",
                s.service, s.name, s.kind, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The trace of the train request whose server span is `root`: what the receiver has of it.
fn trace_of(spans: &[ReceivedSpan], root: &ReceivedSpan) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .cloned()
        .collect()
}

/// The trainer's part is complete once its upload span and its job span have arrived (the job
/// span ends last, after the final event, and may come in a later export).
fn has_upload(spans: &[ReceivedSpan]) -> bool {
    let trainer = |pred: &dyn Fn(&ReceivedSpan) -> bool| {
        spans
            .iter()
            .any(|s| s.service == "gantry-trainer" && pred(s))
    };
    trainer(&|s| s.name == "weights.upload") && trainer(&|s| s.kind == CONSUMER)
}

async fn one_train_request_is_one_trace(transport: Transport) {
    TestStack::run(Duration::from_secs(300), move |mut stack| async move {
        let receiver = OtlpReceiver::start(transport).await;
        for (key, value) in receiver.env() {
            stack.set_env(key, &value);
        }
        stack.start_core().await;
        let node = stack.join_trainer("traced-node").await;
        stack.shapes("shapes", 12, 5);

        let (status, v) = stack
            .admin_post(
                "/admin/api/train",
                &json!({"output_model": "Traced", "train_path": "/shapes", "epochs": EPOCHS}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["message"], "Training completed", "{v}");
        let job_id = v["job_id"].as_str().expect("a job id").to_owned();

        let spans = receiver
            .wait_until(Duration::from_secs(60), |spans| {
                has_upload(spans)
                    && spans.iter().any(|s| {
                        s.service == "gantry-api"
                            && s.attr("http.route") == Some("/admin/api/train")
                    })
            })
            .await;
        let root = one(
            &spans,
            "the api's HTTP server span of the train request",
            |s| {
                s.service == "gantry-api"
                    && s.kind == SERVER
                    && s.attr("http.route") == Some("/admin/api/train")
                    && s.attr("http.request.method") == Some("POST")
            },
        );
        assert_eq!(root.name, "POST /admin/api/train");
        assert_eq!(root.attr("http.response.status_code"), Some("200"));
        assert!(root.parent_span_id.is_empty(), "the request is the root");
        let trace = trace_of(&spans, root);
        let summary = describe(&trace);

        // Every service is in the one trace.
        for service in [
            "gantry-api",
            "gantry-auth",
            "gantry-registry",
            "gantry-trainer",
        ] {
            assert!(
                trace.iter().any(|s| s.service == service),
                "{service} has no span in trace {}:\n{summary}",
                root.trace_id
            );
        }

        // auth's verify and charge, and the registry's job record: server spans below the
        // api's request, each the child of the api's client span for it.
        for (service, subject) in [
            ("gantry-auth", subjects::auth(subjects::auth::VERIFY)),
            (
                "gantry-auth",
                subjects::auth(subjects::auth::CREDITS_CHARGE),
            ),
            (
                "gantry-registry",
                subjects::registry(jobs::subjects::JOBS_CREATE),
            ),
        ] {
            let handled = one(&trace, &format!("{service} handling {subject}"), |s| {
                s.service == service
                    && s.kind == SERVER
                    && s.attr("messaging.destination.name") == Some(subject.as_str())
            });
            assert_eq!(handled.attr("messaging.system"), Some("nats"));
            assert_eq!(handled.attr("messaging.operation.type"), Some("process"));
            let asked = one(&trace, &format!("the api's request to {subject}"), |s| {
                s.span_id == handled.parent_span_id
            });
            assert_eq!(asked.service, "gantry-api");
            assert_eq!(asked.kind, CLIENT);
            assert!(descends_from(asked, root, &trace), "{summary}");
        }

        // The JetStream publish, and the trainer's job span as its consumer.
        // No driver asked for: the job goes to any node.
        let subject = jobs::train_subject(jobs::JobDriver::Any);
        let publish = one(&trace, "the api's publish of the job", |s| {
            s.service == "gantry-api"
                && s.kind == PRODUCER
                && s.attr("messaging.destination.name") == Some(subject.as_str())
        });
        assert!(descends_from(publish, root, &trace), "{summary}");
        assert_eq!(publish.attr("messaging.system"), Some("nats"));
        assert_eq!(publish.attr("messaging.message.id"), Some(job_id.as_str()));
        let job = one(&trace, "the trainer's job span", |s| {
            s.service == "gantry-trainer" && s.kind == CONSUMER
        });
        assert_eq!(job.parent_span_id, publish.span_id, "{summary}");
        assert_eq!(job.attr("job_id"), Some(job_id.as_str()));
        assert_eq!(job.attr("messaging.operation.type"), Some("process"));
        assert_eq!(
            job.resource.get("gantry.node.name").map(String::as_str),
            Some("traced-node")
        );
        assert!(job.resource.contains_key("host.name"), "{:?}", job.resource);
        assert_eq!(
            job.resource.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(job.attr("gantry.node.id").is_some_and(|id| !id.is_empty()));

        // Its children: the dataset, each epoch, each checkpoint, the upload.
        let children = |name: &str| {
            trace
                .iter()
                .filter(|s| s.name == name && s.parent_span_id == job.span_id)
                .count()
        };
        assert_eq!(children("dataset.fetch"), 1, "{summary}");
        assert_eq!(children("weights.upload"), 1, "{summary}");
        assert_eq!(children("checkpoint.save"), EPOCHS, "{summary}");
        let epochs: Vec<&ReceivedSpan> = trace
            .iter()
            .filter(|s| {
                s.parent_span_id == job.span_id
                    && s.attr("epoch").is_some()
                    && s.name.starts_with("epoch ")
            })
            .collect();
        assert_eq!(epochs.len(), EPOCHS, "{summary}");

        // Logs and traces join: the trainer's log lines of the job carry its ids.
        let trainer_log = node.output();
        let joined = trainer_log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .any(|l| {
                l["fields"]["message"] == "job received"
                    && l["trace_id"] == root.trace_id.as_str()
                    && l["span_id"] == job.span_id.as_str()
            });
        assert!(
            joined,
            "no `job received` log line carries the job span's ids"
        );
        let every_log = [
            trainer_log,
            stack.api().output(),
            stack.auth().output(),
            stack.registry().output(),
        ];
        for log in &every_log {
            for bad in [
                "no reactor running",
                "emitted even after Shutdown",
                "exporter could not start",
            ] {
                assert!(!log.contains(bad), "a service logged {bad:?}");
            }
            // The SDK and exporter report export failures as their own warnings and errors.
            for line in log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            {
                let from_otel = line["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("opentelemetry"));
                let bad = matches!(line["level"].as_str(), Some("WARN" | "ERROR"));
                assert!(!(from_otel && bad), "an exporter error was logged: {line}");
            }
        }
        assert!(receiver.requests() > 0);
    })
    .await;
}

#[tokio::test]
async fn one_train_request_is_one_trace_across_the_four_services_over_otlp_http() {
    one_train_request_is_one_trace(Transport::Http).await;
}

#[tokio::test]
async fn one_train_request_is_one_trace_across_the_four_services_over_otlp_grpc() {
    one_train_request_is_one_trace(Transport::Grpc).await;
}
