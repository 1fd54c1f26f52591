//! What training costs, over the real binaries: a user short of tokens gets 402, a charge is
//! refunded when the queue refuses the job or no node can take a held one, an idempotency key
//! charges once, and unusable datasets and escaping paths are refused before any charge.

use std::time::Duration;

use gantry_contracts::jobs::{self, JOBS_STREAM};
use gantry_testing::{send, wait_until, TestStack};
use gantry_training::synthetic::{generate, SyntheticSpec};
use reqwest::StatusCode;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn a_user_short_of_tokens_gets_402_and_keeps_the_balance() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "600");
        stack.start_core().await;
        stack.shapes("shapes", 5, 1);
        let (id, token) = stack.user("poor", 50).await;
        let (status, v) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/shapes"})),
        )
        .await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{v}");
        assert_eq!(v["error"]["code"], "insufficient_tokens");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("50"),
            "{v}"
        );
        assert_eq!(stack.balance(id).await, 50);
        let (_, jobs) = send(
            stack
                .http()
                .get(format!("{}/api/jobs", stack.base_url()))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(jobs["total"], 0, "nothing half-written: {jobs}");
        // Not an admin: the admin endpoint is refused.
        let (status, _) = send(
            stack
                .http()
                .post(format!("{}/admin/api/train", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/shapes"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    })
    .await;
}

#[tokio::test]
async fn a_charge_is_refunded_when_the_queue_refuses_the_job() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "600");
        stack.start_core().await;
        stack.shapes("shapes", 5, 1);
        let (id, token) = stack.user("payer", 1000).await;
        // Let the api finish its JetStream set-up, then take the job stream away.
        let js = async_nats::jetstream::new(stack.client().clone());
        wait_until(Duration::from_secs(20), || {
            let js = js.clone();
            async move { js.get_stream(JOBS_STREAM).await.ok().map(|_| ()) }
        })
        .await
        .expect("the job stream was never created");
        js.delete_stream(JOBS_STREAM).await.unwrap();

        let submit = || {
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .header("Idempotency-Key", "retry-me")
                .json(&json!({"train_path": "/shapes"}))
        };
        let (status, v) = send(submit()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("refunded"),
            "{v}"
        );
        assert_eq!(stack.balance(id).await, 1000, "the charge was given back");
        let (_, jobs) = send(
            stack
                .http()
                .get(format!("{}/api/jobs", stack.base_url()))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(jobs["total"], 1);
        assert_eq!(
            jobs["jobs"][0]["status"], "failed",
            "not left queued: {jobs}"
        );
        assert_eq!(jobs["jobs"][0]["refunded"], true);
        let first = jobs["jobs"][0]["job_id"].clone();

        // Retrying with the same key, as the 503 invites, never trains for free: the answer is
        // the job as it ended, nothing is charged, queued or refunded again.
        let (status, again) = send(submit()).await;
        let first = first.as_str().unwrap();
        assert!(
            again["job_id"] == first
                || again.to_string().contains(first)
                || status == StatusCode::CONFLICT,
            "{status} {again}"
        );
        assert_ne!(status, StatusCode::ACCEPTED, "{again}");
        assert_eq!(stack.balance(id).await, 1000);
        let (_, jobs) = send(
            stack
                .http()
                .get(format!("{}/api/jobs", stack.base_url()))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(jobs["total"], 1, "{jobs}");
        assert_eq!(jobs["jobs"][0]["status"], "failed");
    })
    .await;
}

#[tokio::test]
async fn a_paying_user_is_charged_once_per_idempotency_key() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "600");
        stack.start_core().await;
        let _node = stack.join_trainer("cpu-node-1").await;
        stack.shapes("shapes", 10, 3);
        let (id, token) = stack.user("payer", 1000).await;
        let body =
            json!({"train_path": "/shapes", "epochs": 1, "image_size": 16, "output_model": "Mine"});
        let (s1, v1) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .header("Idempotency-Key", "k-1")
                .header("Prefer", "respond-async")
                .json(&body),
        )
        .await;
        assert_eq!(s1, StatusCode::ACCEPTED, "{v1}");
        assert_eq!(v1["tokens_used"], 100);
        assert_eq!(v1["remaining_tokens"], 900);
        assert!(v1["status_url"].as_str().unwrap().starts_with("/api/jobs/"));
        // The charge shows at once to the user, though their token was verified a moment ago.
        let (_, me) = send(
            stack
                .http()
                .get(format!("{}/api/auth/me", stack.base_url()))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(me["tokens"], 900, "{me}");
        let (s2, v2) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .header("Idempotency-Key", "k-1")
                .json(&body),
        )
        .await;
        assert!(s2 == StatusCode::OK || s2 == StatusCode::ACCEPTED, "{v2}");
        assert_eq!(v2["job_id"], v1["job_id"]);
        // The same key with a different request is refused, and charges nothing.
        let mut other = body.clone();
        other["epochs"] = json!(2);
        let (s3, v3) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .header("Idempotency-Key", "k-1")
                .json(&other),
        )
        .await;
        assert_eq!(s3, StatusCode::UNPROCESSABLE_ENTITY, "{v3}");
        assert!(
            v3["error"]["message"]
                .as_str()
                .unwrap()
                .contains("different request"),
            "{v3}"
        );
        let job_id = v1["job_id"].as_str().unwrap();
        stack
            .wait_job(job_id, Duration::from_secs(300), "completed", |j| {
                j["status"] == "completed"
            })
            .await;
        assert_eq!(stack.balance(id).await, 900, "charged once");
        let (status, models) = send(
            stack
                .http()
                .get(format!("{}/api/models", stack.base_url()))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(models["models"][0]["name"], "Mine");
    })
    .await;
}

#[tokio::test]
async fn unusable_datasets_and_escaping_paths_are_refused_before_any_charge() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "600");
        stack.start_core().await;
        let root = stack.data_root.path().to_owned();
        let (id, token) = stack.user("careful", 1000).await;
        // One class only.
        stack.shapes("one", 3, 1);
        std::fs::remove_dir_all(root.join("one/square")).unwrap();
        std::fs::remove_dir_all(root.join("one/triangle")).unwrap();
        // Loose files, no class folders.
        std::fs::create_dir_all(root.join("flat")).unwrap();
        std::fs::write(root.join("flat/a.png"), b"not really").unwrap();
        // A class whose only image is junk.
        stack.shapes("junk", 2, 1);
        for f in std::fs::read_dir(root.join("junk/circle")).unwrap() {
            std::fs::write(f.unwrap().path(), b"garbage").unwrap();
        }
        // A symlink inside the dataset pointing outside the root.
        let outside = tempfile::tempdir().unwrap();
        generate(
            outside.path(),
            &SyntheticSpec {
                per_class: 2,
                ..SyntheticSpec::default()
            },
        )
        .unwrap();
        stack.shapes("linked", 2, 1);
        std::os::unix::fs::symlink(outside.path().join("circle"), root.join("linked/escape"))
            .unwrap();

        for (path, want) in [
            ("/one", StatusCode::BAD_REQUEST),
            ("/flat", StatusCode::BAD_REQUEST),
            ("/junk", StatusCode::BAD_REQUEST),
            ("/linked", StatusCode::BAD_REQUEST),
            ("/../etc", StatusCode::BAD_REQUEST),
            ("/missing", StatusCode::NOT_FOUND),
            ("/one/circle/00000.png", StatusCode::BAD_REQUEST),
        ] {
            let (status, v) = send(
                stack
                    .http()
                    .post(format!("{}/api/train", stack.base_url()))
                    .bearer_auth(&token)
                    .json(&json!({"train_path": path})),
            )
            .await;
            assert_eq!(status, want, "{path}: {v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{path}: {v}"
            );
            assert!(
                !v.to_string()
                    .contains(&outside.path().display().to_string()),
                "{path} leaked a real path: {v}"
            );
        }
        let (status, v) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/one", "driver": "opencl"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (status, v) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/one", "epochs": 0})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (status, v) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({"description": "no path"})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(stack.balance(id).await, 1000, "nothing was charged");
    })
    .await;
}

#[tokio::test]
async fn a_held_job_that_no_node_can_take_answers_503_and_is_refunded() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "2");
        stack.start_core().await;
        stack.shapes("shapes", 5, 1);
        let (id, token) = stack.user("hopeful", 300).await;
        let (status, v) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({"train_path": "/shapes", "driver": "cuda"})),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("no node"),
            "{v}"
        );
        assert_eq!(stack.balance(id).await, 300, "refunded");
        let (_, jobs) = send(
            stack
                .http()
                .get(format!("{}/api/jobs", stack.base_url()))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(jobs["jobs"][0]["status"], "failed", "{jobs}");
        assert_eq!(jobs["jobs"][0]["failure_kind"], "no_node");
    })
    .await;
}

#[tokio::test]
async fn a_thousand_concurrent_paid_submissions_never_overdraw_and_every_refusal_is_a_402() {
    use futures::StreamExt;
    const USERS: usize = 50;
    const EACH: usize = 20;
    const AFFORDABLE: i64 = 2;
    const COST: i64 = 100;
    TestStack::run(Duration::from_secs(600), |mut stack| async move {
        // Money, not the packing bound, is what this is about.
        stack.set_env("GANTRY_MAX_PACKING_PER_USER", "1000");
        stack.start_core().await;
        stack.shapes("shapes", 5, 1);
        let mut users = Vec::new();
        for i in 0..USERS {
            // Enough for two jobs and half a third.
            users.push(
                stack
                    .user(&format!("payer{i}"), AFFORDABLE * COST + COST / 2)
                    .await,
            );
        }
        let url = format!("{}/api/train?wait=false", stack.base_url());
        let submissions = users
            .iter()
            .flat_map(|(id, token)| std::iter::repeat_n((*id, token.clone()), EACH))
            .map(|(id, token)| {
                let req = stack
                    .http()
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({"train_path": "/shapes"}));
                async move { (id, send(req).await) }
            });
        let answers: Vec<(i64, (StatusCode, serde_json::Value))> =
            futures::stream::iter(submissions)
                .buffer_unordered(64)
                .collect()
                .await;
        assert_eq!(answers.len(), USERS * EACH);

        let mut accepted = std::collections::HashMap::<i64, i64>::new();
        for (id, (status, v)) in &answers {
            match *status {
                StatusCode::ACCEPTED => *accepted.entry(*id).or_default() += 1,
                StatusCode::PAYMENT_REQUIRED => {
                    assert_eq!(v["error"]["code"], "insufficient_tokens", "{v}")
                }
                other => panic!("a submission answered {other}: {v}"),
            }
        }
        for (id, _) in &users {
            let n = accepted.get(id).copied().unwrap_or(0);
            assert_eq!(n, AFFORDABLE, "user {id} got {n} jobs accepted");
            let balance = stack.balance(*id).await;
            assert_eq!(
                balance,
                COST / 2,
                "user {id}: charges must equal accepted jobs"
            );
        }
        // Every accepted job is recorded once, under its user.
        let (_, jobs) = stack.admin_get("/admin/api/jobs?limit=1").await;
        assert_eq!(
            jobs["total"].as_i64(),
            Some(USERS as i64 * AFFORDABLE),
            "{jobs}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_users_open_event_streams_and_dataset_size_are_bounded_before_any_charge() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.shapes("shapes", 20, 1);
        stack.shapes("tiny", 1, 2);
        // A bound between the two datasets' sizes.
        let size = |path: &str| -> u64 {
            fn walk(dir: &std::path::Path) -> u64 {
                std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .map(|p| {
                        if p.is_dir() {
                            walk(&p)
                        } else {
                            p.metadata().unwrap().len()
                        }
                    })
                    .sum()
            }
            walk(&stack.data_root.path().join(path))
        };
        let (big, small) = (size("shapes"), size("tiny"));
        assert!(big > small * 2, "{big} {small}");
        let bound_gb = format!("{}", (big + small) as f64 / 2.0 / 1e9);
        stack
            .set_env("GANTRY_MAX_STREAMS_PER_USER", "2")
            .set_env("GANTRY_MAX_DATASET_GB", &bound_gb);
        stack.start_core().await;
        let (id, token) = stack.user("streamer", 1000).await;
        let submit = |path: &'static str| {
            stack
                .http()
                .post(format!("{}/api/train?wait=false", stack.base_url()))
                .bearer_auth(&token)
                .json(&json!({ "train_path": path }))
        };
        // Over the bound: 413 before any charge.
        let (status, v) = send(submit("/shapes")).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
        assert_eq!(stack.balance(id).await, 1000);

        // Open streams of a job that waits (no node): two may be open, a third is 429.
        let (status, v) = send(submit("/tiny")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let job = v["job_id"].as_str().unwrap().to_owned();
        let url = format!("{}/api/jobs/{job}/events", stack.base_url());
        let open = || stack.http().get(&url).bearer_auth(&token).send();
        let first = open().await.unwrap();
        let second = open().await.unwrap();
        assert_eq!(
            (first.status(), second.status()),
            (StatusCode::OK, StatusCode::OK)
        );
        let third = open().await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        // Closing one frees its slot.
        drop(first);
        let again = wait_until(Duration::from_secs(30), || async {
            let r = open().await.ok()?;
            (r.status() == StatusCode::OK).then_some(r)
        })
        .await;
        assert!(
            again.is_some(),
            "a closed stream's slot was never given back"
        );
    })
    .await;
}

#[tokio::test]
async fn dataset_snapshots_no_waiting_job_uses_are_removed_after_their_retention() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack
            .set_env("GANTRY_DATASET_RETENTION", "1")
            .set_env("GANTRY_RECONCILE_INTERVAL", "0.3");
        stack.start_core().await;
        stack.shapes("kept", 3, 1);
        stack.shapes("gone", 3, 2);
        let kept = stack
            .submit(json!({"train_path": "/kept", "output_model": "K"}))
            .await;
        let gone = stack
            .submit(json!({"train_path": "/gone", "output_model": "G"}))
            .await;
        let kept_hash = stack.job(&kept).await["dataset_hash"]
            .as_str()
            .unwrap()
            .to_owned();
        let gone_hash = stack.job(&gone).await["dataset_hash"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(kept_hash, gone_hash);
        stack.cancel(&gone).await;

        let js = async_nats::jetstream::new(stack.client().clone());
        let store = js.get_object_store(jobs::DATASETS_BUCKET).await.unwrap();
        let stored = |hash: &str| {
            let key = jobs::dataset_key(hash);
            let store = store.clone();
            async move { store.info(key.as_str()).await.is_ok_and(|i| !i.deleted) }
        };
        let removed = wait_until(Duration::from_secs(30), || async {
            (!stored(&gone_hash).await).then_some(())
        })
        .await;
        assert!(removed.is_some(), "the cancelled job's snapshot was kept");
        // Removed in the same round as it would have been: the waiting job's stays.
        assert!(
            stored(&kept_hash).await,
            "a waiting job's snapshot was removed"
        );
        assert_eq!(stack.job(&kept).await["status"], "queued");
        let metrics = stack.registry().metrics().await;
        assert!(
            gantry_testing::metric(
                &metrics,
                "gantry_registry_reconciled_total{what=\"dataset\"}"
            ) >= 1.0,
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_full_dataset_store_refuses_new_snapshots_with_503_and_refunds() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.set_env("GANTRY_DATASETS_MAX_GB", "0.000001");
        stack.start_core().await;
        stack.shapes("shapes", 5, 1);
        let (id, token) = stack.user("filler", 1000).await;
        // The api bounds the store as it starts; wait until it has.
        let js = async_nats::jetstream::new(stack.client().clone());
        wait_until(Duration::from_secs(20), || async {
            let mut s = js.get_stream("OBJ_gantry-datasets").await.ok()?;
            (s.info().await.ok()?.config.max_bytes == 1000).then_some(())
        })
        .await
        .expect("the dataset store was never bounded");
        let resp = stack
            .http()
            .post(format!("{}/api/train?wait=false", stack.base_url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/shapes"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key("retry-after"));
        let v: serde_json::Value = resp.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("full"),
            "{v}"
        );
        assert_eq!(stack.balance(id).await, 1000, "refunded");
    })
    .await;
}
