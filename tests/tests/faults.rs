//! Faults an operator meets: NATS restarting mid-run, the store going away. Nothing acknowledged
//! is lost, every service comes back by itself, and while a dependency is down every answer is a
//! 503 with `Retry-After`, never a 500 or a hang.

use std::time::{Duration, Instant};

use gantry_contracts::jobs::JobEvent;
use gantry_testing::{kinds, wait_until, TestStack, ADMIN_TOKEN, READY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn nats_restarting_mid_run_loses_no_job_or_event_and_every_service_reconnects_by_itself() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let trainer = stack.join_trainer("steady").await;
        stack.shapes("shapes", 40, 3);
        let body = |name: &str| {
            json!({"train_path": "/shapes", "epochs": 4, "image_size": 32, "output_model": name})
        };
        // One job running (one worker slot), one queued behind it.
        let running = stack.submit(body("Through")).await;
        let queued = stack.submit(body("Behind")).await;
        stack
            .wait_job(&running, Duration::from_secs(60), "running", |j| {
                j["status"] == "running"
            })
            .await;

        // NATS goes away (JetStream keeps its files) and comes back on the same port. While
        // it is away the api answers 503 with Retry-After, within its request timeout.
        stack.nats.stop();
        let started = Instant::now();
        let (status, retry, v) = call(&stack, reqwest::Method::GET, "/admin/api/jobs", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(retry.is_some(), "no Retry-After: {v}");
        assert!(started.elapsed() < Duration::from_secs(25), "{:?}", started.elapsed());
        stack.nats.restart().await;
        stack.reconnect().await;
        // Each service comes back by itself; until it has, the api may still answer 503.
        for svc in [stack.api(), stack.auth(), stack.registry()] {
            svc.wait_ready(Duration::from_secs(30)).await;
        }

        for id in [&running, &queued] {
            let job = wait_until(Duration::from_secs(150), || async {
                let (status, job) = stack.admin_get(&format!("/admin/api/jobs/{id}")).await;
                (status == StatusCode::OK && gantry_testing::is_final(&job)).then_some(job)
            })
            .await
            .unwrap_or_else(|| panic!("job {id} never ended\n{}", stack.logs()));
            assert_eq!(job["status"], "completed", "{job:#}\n{}", stack.logs());
            assert_eq!(job["model"]["version"], 1, "{job:#}");
        }
        // Each job's events are all there, once each: started first, completed last.
        for id in [&running, &queued] {
            let events = stack.events(id).await;
            let k = kinds(&events);
            assert_eq!(k.first(), Some(&"started"), "{k:?}");
            assert_eq!(k.last(), Some(&"completed"), "{k:?}");
            assert_eq!(k.iter().filter(|e| **e == "completed").count(), 1, "{k:?}");
        }
        // The same processes (the harness never restarts one), all ready again.
        for svc in [stack.api(), stack.auth(), stack.registry(), &trainer] {
            svc.wait_ready(READY).await;
        }
    })
    .await;
}

/// `method path` as the admin, with `body` when given: status, `Retry-After`, JSON body.
async fn call(
    stack: &TestStack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut req = stack
        .http()
        .request(method, stack.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the api answers");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let v = resp.json().await.unwrap_or(Value::Null);
    (status, retry, v)
}

#[tokio::test]
async fn with_the_store_down_every_endpoint_answers_503_with_retry_after_and_no_acknowledged_write_is_lost(
) {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let (status, _, ivy) = call(
            &stack,
            reqwest::Method::POST,
            "/admin/api/users",
            Some(json!({"username": "ivy", "email": "ivy@example.com", "password": "ivy-password", "tokens": 5})),
        )
        .await;
        assert!(status.is_success(), "{status} {ivy}");

        stack.store.stop();
        use reqwest::Method;
        let cases = [
            (Method::GET, "/admin/api/users", None),
            (
                Method::POST,
                "/admin/api/users",
                Some(json!({"username": "eve", "email": "eve@example.com", "password": "eve-password"})),
            ),
            (Method::GET, "/api/tokens", None),
            (Method::GET, "/admin/api/jobs", None),
            (Method::GET, "/admin/api/models", None),
            (
                Method::POST,
                "/admin/api/cluster_tokens",
                Some(json!({"name": "during-outage"})),
            ),
        ];
        for (method, path, body) in cases {
            let started = Instant::now();
            let (status, retry, v) = call(&stack, method.clone(), path, body).await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{method} {path}: {v}\n{}",
                stack.logs()
            );
            assert!(retry.is_some(), "{method} {path}: no Retry-After");
            assert_eq!(v["error"]["code"], "unavailable", "{method} {path}: {v}");
            assert!(
                started.elapsed() < Duration::from_secs(25),
                "{method} {path} took {:?}",
                started.elapsed()
            );
        }

        stack.store.restart().await;
        let back = wait_until(Duration::from_secs(60), || async {
            let (status, _, v) = call(&stack, Method::GET, "/admin/api/users", None).await;
            (status == StatusCode::OK).then_some(v)
        })
        .await
        .expect("the api answers again once the store is back");
        let names: Vec<&str> = back["users"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["username"].as_str()).collect())
            .unwrap_or_default();
        assert!(names.contains(&"ivy"), "{back}");
        assert!(!names.contains(&"eve"), "a refused write was stored: {back}");
    })
    .await;
}

#[tokio::test]
async fn the_registry_and_auth_killed_mid_run_lose_no_job_event_or_charge_and_double_none() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let _trainer = stack.join_trainer("steady").await;
        stack.shapes("shapes", 40, 3);
        let (user, token) = stack.user("payer", 1000).await;
        let (status, v) = gantry_testing::send(
            stack
                .http()
                .post(stack.url("/api/train?wait=false"))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/shapes", "epochs": 15, "image_size": 48, "output_model": "Survivor"})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let id = v["job_id"].as_str().unwrap().to_owned();
        assert_eq!(stack.balance(user).await, 900);
        stack
            .wait_job(&id, Duration::from_secs(60), "running", |j| j["status"] == "running")
            .await;

        // Both die without a chance to clean up, mid-run, and come back.
        stack.kill9("gantry-registry");
        stack.kill9("gantry-auth");
        let mid = stack.events(&id).await;
        assert!(
            !mid.iter().any(JobEvent::is_final),
            "the job ended before the services were killed; make it longer"
        );
        stack
            .start_services(&["gantry-auth", "gantry-registry"])
            .await;

        let job = stack.wait_final(&id, Duration::from_secs(150)).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", stack.logs());
        assert_eq!(stack.balance(user).await, 900, "charged once, never refunded");
        let (status, model) = stack.admin_get("/admin/api/models/Survivor").await;
        assert_eq!(status, StatusCode::OK, "{model}");
        assert_eq!(
            model["versions"].as_array().map(Vec::len),
            Some(1),
            "one model version: {model}"
        );
        let k = kinds(&stack.events(&id).await);
        assert_eq!(k.iter().filter(|e| **e == "completed").count(), 1, "{k:?}");
    })
    .await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn oversized_bodies_header_floods_and_slow_clients_leave_the_api_up_and_its_memory_bounded() {
    use tokio::io::AsyncWriteExt;
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let api = stack.api();
        let addr = stack.base_url().trim_start_matches("http://").to_owned();
        let before = rss_kib(api.pid());

        // 300 slow clients: a request line, then nothing.
        let mut slow = Vec::new();
        for _ in 0..300 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                let _ = s
                    .write_all(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\n")
                    .await;
                slow.push(s);
            }
        }
        // Header floods: many large headers on one request.
        for _ in 0..5 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                let mut req = b"GET /admin/api/users HTTP/1.1\r\nHost: x\r\n".to_vec();
                for i in 0..2000 {
                    req.extend_from_slice(
                        format!("X-Flood-{i}: {}\r\n", "a".repeat(1000)).as_bytes(),
                    );
                }
                req.extend_from_slice(b"\r\n");
                let _ = s.write_all(&req).await;
            }
        }
        // Oversized bodies, announced and not: a 413, or the connection closed while the body
        // is still being sent (the api stops reading it), never the body taken in.
        let refused = |r: Result<reqwest::Response, reqwest::Error>| match r {
            Ok(resp) => resp.status() == StatusCode::PAYLOAD_TOO_LARGE,
            Err(e) => e.is_request() || e.is_body(),
        };
        let big = vec![b'x'; 8 << 20];
        let announced = stack
            .http()
            .post(stack.url("/admin/api/train"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await;
        assert!(refused(announced), "an 8 MiB body was not refused");
        let chunked = reqwest::Body::wrap_stream(futures::stream::iter(
            (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 256 << 10])),
        ));
        let streamed = stack
            .http()
            .post(stack.url("/admin/api/train"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(chunked)
            .send()
            .await;
        assert!(refused(streamed), "a 16 MiB chunked body was not refused");

        // Still answering, memory bounded, while the slow clients hang on.
        api.wait_ready(READY).await;
        let (status, _) = stack.admin_get("/admin/api/users").await;
        assert_eq!(status, StatusCode::OK);
        let after = rss_kib(api.pid());
        assert!(
            after < before + 64 * 1024,
            "the api grew from {before} KiB to {after} KiB"
        );
        drop(slow);
    })
    .await;
}

#[tokio::test]
async fn a_trainer_killed_between_its_last_step_and_its_completion_is_finished_by_another_once() {
    use futures::StreamExt;
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let mut doomed = stack.join_trainer("doomed").await;
        stack.shapes("shapes", 40, 3);
        let (user, token) = stack.user("payer", 1000).await;
        let (status, v) = gantry_testing::send(
            stack
                .http()
                .post(stack.url("/api/train?wait=false"))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/shapes", "epochs": 3, "image_size": 48, "output_model": "Upload"})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let id = v["job_id"].as_str().unwrap().to_owned();

        // Killed the moment its last training step is reported: what follows (evaluation, the
        // weights' upload, the completion) is cut short.
        let mut live = stack
            .client()
            .subscribe(gantry_contracts::jobs::job_events(&id))
            .await
            .unwrap();
        let last_step = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(msg) = live.next().await {
                if let Ok(e) = serde_json::from_slice::<JobEvent>(&msg.payload) {
                    if let gantry_contracts::jobs::JobEventKind::Progress { step, total_steps, .. } = e.kind {
                        if step == total_steps {
                            return true;
                        }
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        doomed.kill9();
        assert!(last_step, "the last step was never reported");

        let _rescuer = stack.join_trainer("rescuer").await;
        let job = stack.wait_final(&id, Duration::from_secs(150)).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", stack.logs());
        assert_eq!(job["node"], "rescuer", "the killed node finished first: {job:#}");
        assert_eq!(stack.balance(user).await, 900, "charged once");
        let (_, model) = stack.admin_get("/admin/api/models/Upload").await;
        assert_eq!(model["versions"].as_array().map(Vec::len), Some(1), "{model}");
        let events = stack.events(&id).await;
        let k = kinds(&events);
        assert_eq!(k.iter().filter(|e| **e == "completed").count(), 1, "{k:?}");
        // Whatever the killed delivery uploaded is not kept beside the listed weights.
        let listed = job["model"]["weights_key"].as_str().unwrap().to_owned();
        let uploads = async_nats::jetstream::new(stack.client().clone())
            .get_object_store(gantry_contracts::jobs::UPLOADS_BUCKET)
            .await
            .unwrap();
        let first = gantry_contracts::jobs::weights_key(&id, 1);
        if listed != first {
            let gone = wait_until(Duration::from_secs(10), || async {
                let info = uploads.info(first.as_str()).await;
                (info.is_err() || info.is_ok_and(|i| i.deleted)).then_some(())
            })
            .await;
            assert!(gone.is_some(), "the killed delivery's upload was kept");
        }
    })
    .await;
}
