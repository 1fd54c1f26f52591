//! The registry's job event consumer: an event it can never apply goes to the dead-letter stream
//! after `GANTRY_EVENT_MAX_DELIVER` deliveries, counted and logged with its reason, and the
//! events behind it apply.

use std::time::Duration;

use chrono::Utc;
use gantry_contracts::jobs::{
    self, JobDriver, JobEvent, JobEventKind, JobRecord, JobRef, TrainJob, TrainParams,
    DEAD_EVENTS_STREAM,
};
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

#[tokio::test]
async fn an_event_that_never_applies_is_dead_lettered_and_the_events_behind_it_apply() {
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
        let good = TrainJob {
            job_id: "good".into(),
            user_id: 1,
            output_model: "M".into(),
            description: String::new(),
            driver: JobDriver::Cpu,
            dataset_hash: "0".repeat(64),
            classes: vec!["a".into(), "b".into()],
            params: TrainParams::default(),
            submitted_at: Utc::now(),
        };
        let _: JobRecord = stack
            .registry_call(
                jobs::subjects::JOBS_CREATE,
                &JobRecord::queued(&good, "/d", 0),
            )
            .await
            .expect("record the good job");

        let js = async_nats::jetstream::new(stack.client().clone());
        for event in [started("poison"), started("good")] {
            js.publish(
                jobs::event_subject(&event.job_id),
                serde_json::to_vec(&event).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }

        // The good job's start applies once the poison event is out of the way.
        let running = wait_until(Duration::from_secs(60), || async {
            let job: JobRecord = stack
                .registry_call(
                    jobs::subjects::JOBS_GET,
                    &JobRef {
                        job_id: "good".into(),
                        user_id: None,
                    },
                )
                .await
                .ok()?;
            (job.status == jobs::JobStatus::Running).then_some(job)
        })
        .await;
        let running = running.expect("the event behind the poison one never applied");
        assert_eq!(running.node_id.as_deref(), Some("node-1"));

        // The poison event is kept, with why, under its job's dead-letter subject.
        let dead = js
            .get_stream(DEAD_EVENTS_STREAM)
            .await
            .unwrap()
            .get_last_raw_message_by_subject(&jobs::dead_event_subject("poison"))
            .await
            .expect("a dead letter for the poison job");
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
