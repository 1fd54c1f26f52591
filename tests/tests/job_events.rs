//! The registry's job event consumer and reconciler: an event it can never apply goes to the
//! dead-letter stream after `GANTRY_EVENT_MAX_DELIVER` deliveries, counted and logged with its
//! reason, and other jobs' events apply meanwhile; a refund that was given up on is settled by the
//! reconciler once auth is back, exactly once; a job recorded but never queued, and one whose
//! last delivery ended with its node, are failed and refunded by the reconciler, once.

use std::time::Duration;

use chrono::Utc;
use gantry_contracts::auth::CreditResult;
use gantry_contracts::jobs::{
    self, FailJob, FailureKind, JobDriver, JobEvent, JobEventKind, JobRecord, JobRef,
    DEAD_EVENTS_STREAM,
};
use gantry_contracts::subjects::auth as auth_ep;
use gantry_testing::auth::change;
use gantry_testing::jobs::train_job;
use gantry_testing::{metric, wait_until, TestStack};

const LIMIT: Duration = Duration::from_secs(120);

fn started(job_id: &str) -> JobEvent {
    JobEvent {
        job_id: job_id.into(),
        delivery: 1,
        at: Utc::now(),
        kind: JobEventKind::Started {
            node: "n".into(),
            node_id: "node-1".into(),
            driver: "cpu".into(),
            resumed_from_epoch: 0,
        },
    }
}

/// Record a queued CPU job `job_id` of `user_id`, charged `tokens`, as the api would.
async fn record_job(stack: &TestStack, job_id: &str, user_id: i64, tokens: i64) {
    stack
        .record_job(&train_job(job_id, user_id, JobDriver::Cpu), tokens)
        .await;
}

/// The registry's record of `job_id`, when it answers.
async fn read_job(stack: &TestStack, job_id: &str) -> Option<JobRecord> {
    stack
        .registry_call(
            jobs::subjects::JOBS_GET,
            &JobRef {
                job_id: job_id.into(),
                user_id: None,
                bare: false,
            },
        )
        .await
        .ok()
}

#[tokio::test]
async fn an_event_that_never_applies_is_dead_lettered_and_holds_up_no_other() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.set_env("GANTRY_EVENT_MAX_DELIVER", "2");
        stack.start_services(&["gantry-registry"]).await;
        // A job record the registry cannot read: every event of it fails to apply.
        stack
            .store_script(
                "registry",
                r#"
import sys
from pymongo import MongoClient
MongoClient(sys.argv[1])[sys.argv[2]].jobs.insert_one({"_id": "poison", "created_ms": 0, "rev": 1, "status": "bogus"})
"#,
                &[],
            )
            .await;
        record_job(&stack, "good", 1, 0).await;

        let js = async_nats::jetstream::new(stack.client().clone());
        for event in [started("poison"), started("good")] {
            js.publish(
                jobs::event_subject("node-1", &event.job_id),
                serde_json::to_vec(&event).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }

        // The good job's start applies: it never waits behind the poison event.
        let running = wait_until(Duration::from_secs(60), || async {
            read_job(&stack, "good")
                .await
                .filter(|job| job.status == jobs::JobStatus::Running)
        })
        .await;
        let running = running.expect("the event behind the poison one never applied");
        assert_eq!(running.node_id.as_deref(), Some("node-1"));

        // The poison event is kept, with why, under its job's dead-letter subject.
        let dead_letters = js.get_stream(DEAD_EVENTS_STREAM).await.unwrap();
        let dead = wait_until(Duration::from_secs(60), || async {
            dead_letters
                .get_last_raw_message_by_subject(&jobs::dead_event_subject("poison"))
                .await
                .ok()
        })
        .await
        .unwrap_or_else(|| panic!("no dead letter for the poison job\n{}", stack.logs()));
        let kept: JobEvent = serde_json::from_slice(&dead.payload).unwrap();
        assert_eq!(
            kept,
            JobEvent {
                at: kept.at,
                ..started("poison")
            }
        );
        let reason = dead
            .headers
            .get("Gantry-Dead-Reason")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert!(reason.contains("after 2 deliveries"), "{reason}");
        let metrics = stack.registry().metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "gantry_registry_dead_events_total{type=\"started\"}"
            ),
            1.0,
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_refund_that_failed_and_was_given_up_is_settled_by_the_reconciler() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack
            .short_heartbeats()
            .set_env("GANTRY_EVENT_MAX_DELIVER", "2")
            .set_env("GANTRY_RECONCILE_INTERVAL", "0.5");
        stack
            .start_services(&["gantry-auth", "gantry-registry"])
            .await;
        let user = stack.auth_user("paula", 300).await;
        let _: CreditResult = stack
            .auth_ok(auth_ep::CREDITS_CHARGE, &change(user.id, 100, "stranded"))
            .await;
        assert_eq!(stack.auth_balance(user.id).await, 200);

        // Auth goes away; the job is withdrawn meanwhile: its refund fails, and so does every
        // redelivery of its event, which is then given up.
        stack.kill9("gantry-auth");
        record_job(&stack, "stranded", user.id, 100).await;
        let failed: JobRecord = stack
            .registry_call(
                jobs::subjects::JOBS_FAIL,
                &FailJob {
                    job_id: "stranded".into(),
                    error: "could not queue".into(),
                    kind: FailureKind::System,
                },
            )
            .await
            .unwrap();
        assert!(failed.refund_due && !failed.refunded, "{failed:?}");
        let js = async_nats::jetstream::new(stack.client().clone());
        let given_up = wait_until(Duration::from_secs(30), || async {
            js.get_stream(DEAD_EVENTS_STREAM)
                .await
                .ok()?
                .get_last_raw_message_by_subject(&jobs::dead_event_subject("stranded"))
                .await
                .ok()
        })
        .await;
        assert!(given_up.is_some(), "the failed event was never given up");

        // Auth is back: nothing but the reconciler will look at this job again.
        stack.start_services(&["gantry-auth"]).await;
        let refunded = wait_until(Duration::from_secs(30), || async {
            read_job(&stack, "stranded")
                .await
                .filter(|job| job.refunded)
        })
        .await;
        assert!(refunded.is_some(), "the reconciler never refunded the job");
        assert_eq!(stack.auth_balance(user.id).await, 300, "refunded once");
        let metrics = stack.registry().metrics().await;
        assert_eq!(
            metric(
                &metrics,
                "gantry_registry_reconciled_total{what=\"refund\"}"
            ),
            1.0,
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_job_recorded_but_never_queued_is_failed_and_refunded_by_the_reconciler_once() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack
            .short_heartbeats()
            .set_env("GANTRY_RECONCILE_INTERVAL", "0.3")
            .set_env("GANTRY_RECONCILE_GRACE", "1");
        stack
            .start_services(&["gantry-auth", "gantry-registry"])
            .await;
        let user = stack.auth_user("quinn", 300).await;
        for id in ["orphan", "waiting"] {
            let _: CreditResult = stack
                .auth_ok(auth_ep::CREDITS_CHARGE, &change(user.id, 100, id))
                .await;
            record_job(&stack, id, user.id, 100).await;
        }
        // "waiting" is in the queue (no node yet); "orphan" never got there, as when the api
        // stops between recording a job and queueing it.
        let waiting = train_job("waiting", user.id, JobDriver::Cpu);
        stack.queue_job(&waiting).await;

        let orphan = wait_until(Duration::from_secs(30), || async {
            read_job(&stack, "orphan")
                .await
                .filter(|job| job.status.is_final() && job.refunded)
        })
        .await
        .expect("the reconciler never settled the job that was never queued");
        assert_eq!(orphan.status, jobs::JobStatus::Failed);
        assert_eq!(stack.auth_balance(user.id).await, 200, "refunded once");
        // The round that settled it looked at the queued job too (both were recorded together,
        // past the grace) and left it alone.
        let metrics = wait_until(Duration::from_secs(10), || async {
            let m = stack.registry().metrics().await;
            (metric(&m, "gantry_registry_reconciled_total{what=\"lost\"}") == 1.0).then_some(m)
        })
        .await
        .expect("the settled job is counted");
        let waiting = read_job(&stack, "waiting").await.unwrap();
        assert_eq!(waiting.status, jobs::JobStatus::Queued, "{metrics}");
        assert_eq!(stack.auth_balance(user.id).await, 200);
    })
    .await;
}

#[tokio::test]
async fn a_job_whose_last_delivery_ended_with_its_node_is_failed_and_refunded_by_the_reconciler() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack
            .short_heartbeats()
            .set_env("GANTRY_RECONCILE_INTERVAL", "0.3")
            .set_env("GANTRY_RECONCILE_GRACE", "1");
        stack
            .start_services(&["gantry-auth", "gantry-registry"])
            .await;
        let user = stack.auth_user("rosa", 300).await;
        let _: CreditResult = stack
            .auth_ok(auth_ep::CREDITS_CHARGE, &change(user.id, 100, "spent"))
            .await;
        record_job(&stack, "spent", user.id, 100).await;
        // Its message is still in the queue, but the node that took it on the queue's last
        // delivery is gone (it never heartbeats), and the max-deliveries advisory was missed.
        let js = async_nats::jetstream::new(stack.client().clone());
        stack
            .queue_job(&train_job("spent", user.id, JobDriver::Cpu))
            .await;
        let last = JobEvent {
            delivery: jobs::MAX_DELIVER as u64,
            ..started("spent")
        };
        js.publish(
            jobs::event_subject("node-1", "spent"),
            serde_json::to_vec(&last).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

        let settled = wait_until(Duration::from_secs(30), || async {
            read_job(&stack, "spent")
                .await
                .filter(|job| job.status.is_final() && job.refunded)
        })
        .await
        .expect("the reconciler never settled the exhausted job");
        assert_eq!(settled.status, jobs::JobStatus::Failed);
        assert_eq!(settled.delivery, jobs::MAX_DELIVER as u64);
        assert_eq!(stack.auth_balance(user.id).await, 300, "refunded once");
    })
    .await;
}

#[tokio::test]
async fn a_charge_no_job_was_recorded_for_is_refunded_by_the_reconciler_once() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack
            .short_heartbeats()
            .set_env("GANTRY_RECONCILE_INTERVAL", "0.3")
            .set_env("GANTRY_RECONCILE_GRACE", "1");
        stack
            .start_services(&["gantry-auth", "gantry-registry"])
            .await;
        let user = stack.auth_user("sam", 300).await;
        // "orphaned" was charged and then the api stopped; "kept" got its job, queued.
        for key in ["orphaned", "kept"] {
            let _: CreditResult = stack
                .auth_ok(auth_ep::CREDITS_CHARGE, &change(user.id, 100, key))
                .await;
        }
        assert_eq!(stack.auth_balance(user.id).await, 100);
        record_job(&stack, "kept", user.id, 100).await;
        stack
            .queue_job(&train_job("kept", user.id, JobDriver::Cpu))
            .await;

        let metrics = wait_until(Duration::from_secs(30), || async {
            let m = stack.registry().metrics().await;
            (metric(&m, "gantry_registry_reconciled_total{what=\"charge\"}") == 1.0).then_some(m)
        })
        .await
        .expect("the reconciler never refunded the charge with no job");
        assert_eq!(stack.auth_balance(user.id).await, 200, "{metrics}");
        let kept = read_job(&stack, "kept").await.unwrap();
        assert_eq!(kept.status, jobs::JobStatus::Queued);
        assert!(!kept.refunded);
        // Charging the refunded key again is refused: the work cannot be had for free.
        let again = stack
            .auth_fails(
                auth_ep::CREDITS_CHARGE,
                &change(user.id, 100, "orphaned"),
                gantry_contracts::error::ErrorCode::Conflict,
            )
            .await;
        assert!(again.contains("refunded"), "{again}");
    })
    .await;
}
