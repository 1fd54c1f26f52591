//! Cancelling training jobs over the real binaries: a running job stops on its node with nothing
//! published after its `Cancelled`; a job cancelled while queued is dropped without training; a
//! queued job shows its position and why it waits; a cancel and a failure racing on two registry
//! replicas end a job exactly one way.

use std::time::{Duration, Instant};

use gantry_contracts::jobs::{self, JobEventKind};
use gantry_contracts::subjects;
use gantry_testing::{kinds, request, send, wait_until, TestStack, ADMIN_TOKEN, READY};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn a_cancel_stops_the_job_on_its_node_and_nothing_is_published_after_it() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 20, 7);
        let _trainer = stack.join_trainer("trainer-c").await;
        let id = stack
            .submit(json!({"output_model": "long", "train_path": "/shapes", "epochs": 200, "image_size": 32, "batch_size": 8}))
            .await;
        stack
            .wait_job(&id, Duration::from_secs(60), "checkpointed", |j| {
                j["checkpoint_epoch"].as_u64() >= Some(1)
            })
            .await;
        assert!(
            stack
                .events(&id)
                .await
                .iter()
                .any(|e| matches!(e.kind, JobEventKind::Progress { .. })),
            "it trains but reported no progress"
        );
        // While it trains the worker shows it.
        let node = stack
            .nodes()
            .await
            .nodes
            .into_iter()
            .find(|n| n.hostname == "trainer-c")
            .unwrap();
        assert_eq!(node.processes[0].status, "busy", "{node:#?}");
        assert_eq!(node.processes[0].model.as_deref(), Some("long"));
        assert_eq!(node.workers_available, 0);

        let cancelled = stack.cancel(&id).await;
        assert_eq!(cancelled["status"], "cancelled");
        let asked = Instant::now();

        // The node stops within seconds: its Cancelled event arrives.
        let events = stack
            .wait_event(&id, Duration::from_secs(15), "a Cancelled from the node", |e| {
                e.delivery >= 1 && e.kind == JobEventKind::Cancelled
            })
            .await;
        eprintln!("stopped {:?} after the cancel", asked.elapsed());
        // Its worker is free again, which it is only after everything the job published: what
        // the stream holds now is all there will be.
        stack.wait_idle("trainer-c").await;

        let after = stack.events(&id).await;
        let at = after
            .iter()
            .position(|e| e.delivery >= 1 && e.kind == JobEventKind::Cancelled)
            .unwrap();
        assert!(after.len() >= events.len());
        assert_eq!(
            at,
            after.len() - 1,
            "events after the cancel: {:?}",
            kinds(&after[at..])
        );
        assert!(!after
            .iter()
            .any(|e| matches!(e.kind, JobEventKind::Completed { .. })));
        let job = stack.job(&id).await;
        assert_eq!(job["status"], "cancelled");
        assert!(job["model"].is_null());
        assert!(
            !stack.checkpoint_exists(&id).await,
            "the checkpoint of a cancelled job is deleted"
        );
        assert_eq!(
            stack.queued_messages().await,
            0,
            "the job message is terminated, not redelivered"
        );
        // Cancelling again conflicts.
        let (status, v) = send(
            stack
                .http()
                .post(stack.url(&format!("/admin/api/jobs/{id}/cancel")))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
    })
    .await;
}

#[tokio::test]
async fn a_job_cancelled_while_queued_is_dropped_without_training() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 5, 7);
        let id = stack
            .submit(json!({"output_model": "never", "train_path": "/shapes", "epochs": 2, "image_size": 32, "batch_size": 16}))
            .await;
        assert_eq!(stack.cancel(&id).await["status"], "cancelled");
        assert_eq!(
            stack.queued_messages().await,
            1,
            "the message is still queued"
        );

        let _trainer = stack.join_trainer("trainer-q").await;
        let gone = wait_until(Duration::from_secs(20), || async {
            (stack.queued_messages().await == 0).then_some(())
        })
        .await;
        assert!(
            gone.is_some(),
            "the trainer never took the cancelled job off the queue"
        );
        // Idle again after it dropped the message: it is done with the job.
        stack.wait_idle("trainer-q").await;
        let events = stack.events(&id).await;
        assert!(
            events.iter().all(|e| e.delivery == 0),
            "the trainer published for a cancelled job: {events:#?}"
        );
        assert_eq!(stack.job(&id).await["status"], "cancelled");
    })
    .await;
}

#[tokio::test]
async fn a_queued_job_shows_its_position_and_why_it_waits() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 5, 1);
        let first = stack
            .submit(json!({"train_path": "/shapes", "driver": "rocm"}))
            .await;
        let second = stack
            .submit(json!({"train_path": "/shapes", "driver": "rocm"}))
            .await;
        let j1 = stack.job(&first).await;
        assert_eq!(j1["status"], "queued");
        assert_eq!(j1["queue_position"], 1, "{j1}");
        // A registry that has not yet heard a full heartbeat interval says it is still
        // settling; once it has, it says no node serves the driver.
        let no_node = |j: &Value| {
            j["waiting_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("no node for driver rocm"))
        };
        let waited = wait_until(Duration::from_secs(10), || async {
            Some(stack.job(&second).await).filter(no_node)
        })
        .await;
        let j2 = match waited {
            Some(j2) => j2,
            None => panic!("never a no-node reason: {}", stack.job(&second).await),
        };
        assert_eq!(j2["queue_position"], 2, "{j2}");
        // A node asking whether to start it wants the record only: nothing counted.
        let bare = request::<_, jobs::JobRecord>(
            stack.client(),
            subjects::registry(jobs::subjects::JOBS_GET),
            &jobs::JobRef {
                job_id: second.clone(),
                user_id: None,
                bare: true,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("bare jobs.get: {e:?}"));
        assert_eq!(bare.job_id, second);
        assert_eq!(bare.status, jobs::JobStatus::Queued);
        assert_eq!(bare.queue_position, None);
        assert_eq!(bare.waiting_reason, None);
        assert!(bare.queue_seconds.is_some(), "{bare:?}");
        let (_, list) = stack
            .admin_get("/admin/api/jobs?status=queued&limit=1")
            .await;
        assert_eq!(list["total"], 2);
        assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
        assert_eq!(list["jobs"][0]["job_id"], second, "newest first");
        // Cancelling a queued job ends it at once.
        stack.cancel(&first).await;
        assert_eq!(stack.job(&second).await["queue_position"], 1);
        let (status, _) = stack.admin_get("/admin/api/jobs/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}

/// A queued job recorded straight through the registry (no trainer will see it).
fn queued_record(job_id: &str, user_id: i64) -> jobs::JobRecord {
    let job = jobs::TrainJob {
        job_id: job_id.into(),
        user_id,
        output_model: "contended".into(),
        description: String::new(),
        driver: jobs::JobDriver::Cuda,
        dataset_hash: "0".repeat(64),
        classes: vec!["a".into(), "b".into()],
        params: jobs::TrainParams::default(),
        submitted_at: chrono::Utc::now(),
    };
    jobs::JobRecord::queued(&job, "/none", CONTENDED_CHARGE)
}

/// What each contended job charged (refunded however it ends: it never started).
const CONTENDED_CHARGE: i64 = 10;

#[tokio::test]
async fn a_cancel_and_a_failure_racing_on_two_replicas_end_a_job_exactly_one_way() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let second_registry = stack.spawn("gantry-registry", &[]);
        second_registry.wait_ready(READY).await;
        // A paying user, charged for each job as the api would.
        let (status, user) = stack
            .admin_post(
                "/admin/api/users",
                &json!({"username": "payer", "email": "payer@example.com", "password": "a long enough password", "role": "user", "tokens": 1000}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        let user_id = user["id"].as_i64().unwrap_or_else(|| panic!("{user}"));
        let before = stack.balance(user_id).await;
        assert_eq!(before, 1000);
        let registry = |subject: &'static str, body: Value| {
            let nats = stack.client().clone();
            async move {
                request::<_, jobs::JobRecord>(&nats, subjects::registry(subject), &body).await
            }
        };
        for i in 0..15 {
            let id = format!("contended-{i}");
            let charge = gantry_contracts::auth::CreditChange {
                user_id,
                amount: CONTENDED_CHARGE,
                key: id.clone(),
                reason: format!("job {id}"),
            };
            let _: gantry_contracts::auth::CreditResult = stack
                .auth_ok(subjects::auth::CREDITS_CHARGE, &charge)
                .await;
            let created: jobs::JobRecord = registry(
                jobs::subjects::JOBS_CREATE,
                serde_json::to_value(queued_record(&id, user_id)).unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(created.status, jobs::JobStatus::Queued);
            let (cancelled, failed) = tokio::join!(
                registry(jobs::subjects::JOBS_CANCEL, json!({"job_id": id})),
                registry(
                    jobs::subjects::JOBS_FAIL,
                    json!({"job_id": id, "error": "the queue refused it", "kind": "system"})
                ),
            );
            let stored = stack.job(&id).await;
            // Whichever came second saw the first one's result: the answers agree with the record.
            let failed = failed.unwrap_or_else(|e| panic!("jobs.fail: {e}"));
            match cancelled {
                Ok(c) => {
                    assert_eq!(c.status, jobs::JobStatus::Cancelled);
                    assert_eq!(
                        failed.status,
                        jobs::JobStatus::Cancelled,
                        "both won on {id}"
                    );
                    assert_eq!(stored["status"], "cancelled", "{stored}");
                }
                Err(e) => {
                    assert_eq!(e.code, gantry_contracts::error::ErrorCode::Conflict, "{e}");
                    assert_eq!(failed.status, jobs::JobStatus::Failed);
                    assert_eq!(stored["status"], "failed", "{stored}");
                }
            }
        }
        // Cancelled while queued or failed, every job is refunded (auth gives a key's refund once).
        let refunded = wait_until(Duration::from_secs(10), || async {
            (stack.balance(user_id).await == before).then_some(())
        })
        .await;
        assert!(
            refunded.is_some(),
            "balance {} after 15 charges and refunds from {before}",
            stack.balance(user_id).await
        );
        drop(second_registry);
    })
    .await;
}
