//! A job's event stream as a client follows it: opened while the job waits, it ends right after
//! the final event; every event has an `id:` (its sequence) and an `event:` (its type);
//! `Last-Event-ID` resumes after an event; and `completed` names the version as listed.

use std::time::Duration;

use futures::StreamExt;
use gantry_testing::{TestStack, ADMIN_TOKEN};
use serde_json::{json, Value};

/// One server-sent event.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: Value,
}

/// Read `url`'s events until the server ends the stream; panics when it stays open `quiet` after
/// the last event.
async fn follow(
    stack: &TestStack,
    url: &str,
    last_event_id: Option<u64>,
    quiet: Duration,
) -> Vec<Sse> {
    read(open(stack, url, last_event_id).await, quiet).await
}

/// Open the stream: once the answer's head is here, the api follows the job.
async fn open(stack: &TestStack, url: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut req = stack.http().get(url).bearer_auth(ADMIN_TOKEN);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    resp
}

async fn read(resp: reqwest::Response, quiet: Duration) -> Vec<Sse> {
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    loop {
        let chunk = match tokio::time::timeout(quiet, body.next()).await {
            Ok(Some(chunk)) => chunk.unwrap(),
            Ok(None) => break,
            Err(_) => panic!("the stream stayed open {quiet:?} after {events:#?}"),
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut sse = Sse {
                id: None,
                event: None,
                data: Value::Null,
            };
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    sse.id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    sse.event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    sse.data = serde_json::from_str(v).unwrap();
                }
            }
            // Keep-alives are comments: no data.
            if !sse.data.is_null() {
                events.push(sse);
            }
        }
    }
    events
}

#[tokio::test]
async fn a_followed_job_streams_ids_and_types_ends_after_completion_names_the_listed_version_and_resumes(
) {
    TestStack::run(Duration::from_secs(240), |mut stack| async move {
        stack.start_core().await;
        stack.shapes("shapes", 8, 4);
        // Queued with no node yet: the stream is opened before anything happened.
        let id = stack
            .submit(json!({"output_model": "Streamed", "train_path": "/shapes", "epochs": 2}))
            .await;
        let url = format!("{}/admin/api/jobs/{id}/events", stack.base_url());
        let opened = open(&stack, &url, None).await;
        let (events, _node) = tokio::join!(
            read(opened, Duration::from_secs(60)),
            stack.join_trainer("stream-node")
        );

        // Every event: an id that grows, and an event line naming its type; the last completes.
        assert!(events.len() >= 4, "{events:#?}");
        for pair in events.windows(2) {
            assert!(pair[0].id.unwrap() < pair[1].id.unwrap(), "{events:#?}");
        }
        for e in &events {
            assert_eq!(e.event.as_deref(), e.data["type"].as_str(), "{e:?}");
            assert_eq!(e.id, e.data["seq"].as_u64(), "{e:?}");
        }
        assert_eq!(events[0].event.as_deref(), Some("started"));
        let last = events.last().unwrap();
        assert_eq!(last.event.as_deref(), Some("completed"));

        // The version in the event is the one listed, and the one that downloads.
        let job = stack.job(&id).await;
        let version = job["model"]["version"].as_u64().unwrap();
        assert!(version >= 1, "{job}");
        assert_eq!(last.data["model"]["version"], version, "{last:?}");
        let (status, _) = stack.admin_get("/admin/api/models/Streamed").await;
        assert_eq!(status, 200);
        let resp = stack
            .http()
            .get(format!(
                "{}/admin/api/models/Streamed/versions/{version}/download",
                stack.base_url()
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the event's version downloads");

        // Resuming after the first event sends the rest, and ends too.
        let first = events[0].id.unwrap();
        let rest = follow(&stack, &url, Some(first), Duration::from_secs(30)).await;
        let ids: Vec<u64> = rest.iter().map(|e| e.id.unwrap()).collect();
        let want: Vec<u64> = events[1..].iter().map(|e| e.id.unwrap()).collect();
        assert_eq!(ids, want);
        // Resuming after the final event: nothing more, and the stream ends.
        let none = follow(&stack, &url, last.id, Duration::from_secs(30)).await;
        assert!(none.is_empty(), "{none:#?}");
    })
    .await;
}
