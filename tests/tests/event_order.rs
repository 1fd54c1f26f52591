//! Job events under two registry replicas: both pull batches of the event stream at once, yet
//! every job ends as its events, applied in publish order, leave it (completed, with its last
//! progress figures, progress published after its completion never applied), its history is in
//! publish order, and a replica killed while applying leaves no event unapplied or applied
//! twice (each completion lists exactly one model version). Events met with the store away wait
//! for it without spending their deliveries.

use std::time::Duration;

use chrono::Utc;
use gantry_contracts::jobs::{
    self, JobEvent, JobEventKind, JobRecord, JobRef, JobStatus, ModelVersion, EVENTS_CONSUMER,
    EVENTS_STREAM, UPLOADS_BUCKET,
};
use gantry_contracts::models::ModelCard;
use gantry_testing::jobs::{kinds, train_job};
use gantry_testing::{wait_until, TestStack};
use sha2::Digest as _;

const LIMIT: Duration = Duration::from_secs(300);
const NODE: &str = "node-1";
const WEIGHTS: &[u8] = b"event order weights";

fn event(job_id: &str, kind: JobEventKind) -> JobEvent {
    JobEvent {
        job_id: job_id.into(),
        delivery: 1,
        at: Utc::now(),
        kind,
    }
}

fn progress(job_id: &str, epoch: u32, epochs: u32) -> JobEvent {
    event(
        job_id,
        JobEventKind::Progress {
            epoch,
            epochs,
            step: u64::from(epoch),
            total_steps: u64::from(epochs),
            loss: 1.0 / f64::from(epoch),
            train_accuracy: 0.5,
            val_accuracy: None,
            samples_per_sec: 10.0,
            eta_seconds: f64::from(epochs - epoch.min(epochs)),
        },
    )
}

/// Started, `epochs` progress events, completed, then one more progress (a late one) for each
/// job: publish order per job.
fn history(job_id: &str, epochs: u32) -> Vec<JobEvent> {
    let mut out = vec![event(
        job_id,
        JobEventKind::Started {
            node: "n".into(),
            node_id: NODE.into(),
            driver: "cpu".into(),
            resumed_from_epoch: 0,
        },
    )];
    out.extend((1..=epochs).map(|e| progress(job_id, e, epochs)));
    out.push(event(
        job_id,
        JobEventKind::Completed {
            model: Box::new(ModelVersion {
                name: String::new(),
                version: 0,
                user_id: 1,
                job_id: job_id.into(),
                weights_key: jobs::weights_key(job_id, 1),
                card: ModelCard {
                    weights_sha256: hex::encode(sha2::Sha256::digest(WEIGHTS)),
                    weights_bytes: WEIGHTS.len() as u64,
                    ..Default::default()
                },
                val_accuracy: 0.9,
                created_at: Utc::now().into(),
            }),
        },
    ));
    out.push(progress(job_id, epochs + 1, epochs));
    out
}

/// Record `n` queued jobs with their uploaded weights, publish every job's history
/// interleaved (as concurrently running jobs publish), and return their ids.
async fn publish_jobs(stack: &TestStack, prefix: &str, n: usize, epochs: u32) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let js = async_nats::jetstream::new(stack.client().clone());
    let uploads = gantry_runtime::jetstream::bucket_store(&js, UPLOADS_BUCKET)
        .await
        .unwrap();
    for id in &ids {
        stack
            .record_job(&train_job(id, 1, jobs::JobDriver::Cpu), 0)
            .await;
        uploads
            .put(jobs::weights_key(id, 1).as_str(), &mut &WEIGHTS[..])
            .await
            .unwrap();
    }
    let histories: Vec<Vec<JobEvent>> = ids.iter().map(|id| history(id, epochs)).collect();
    let mut acks = Vec::new();
    for step in 0..histories[0].len() {
        for h in &histories {
            acks.push(
                js.publish(
                    jobs::event_subject(NODE, &h[step].job_id),
                    serde_json::to_vec(&h[step]).unwrap().into(),
                )
                .await
                .unwrap(),
            );
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    ids
}

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

/// Wait until the registry's consumer has nothing left (pending or unacknowledged).
async fn wait_all_applied(stack: &TestStack, limit: Duration) {
    let js = async_nats::jetstream::new(stack.client().clone());
    let done = wait_until(limit, || async {
        let stream = js.get_stream(EVENTS_STREAM).await.ok()?;
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(EVENTS_CONSUMER).await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "the registries did not apply every event; logs:\n{}",
        stack.logs()
    );
}

/// Every job ended as its events in publish order leave it; each completion listed once.
async fn check_jobs(stack: &TestStack, ids: &[String], epochs: u32) {
    let mut versions = Vec::new();
    for id in ids {
        let job = read_job(stack, id).await.expect("the job is recorded");
        assert_eq!(
            job.status,
            JobStatus::Completed,
            "{job:?}\n{}",
            stack.logs()
        );
        assert_eq!(job.node_id.as_deref(), Some(NODE), "{job:?}");
        let last = job.progress.as_ref().expect("progress is kept");
        // The last figures published before the completion, never the late ones after it.
        assert_eq!(last.epoch, epochs, "{job:?}");
        assert_eq!(last.step, u64::from(epochs), "{job:?}");
        versions.push(job.model.expect("its model version").version);
        // Its history, in publish order.
        let events = stack.events(id).await;
        let mut want = vec!["started"];
        want.extend(std::iter::repeat_n("progress", epochs as usize));
        want.extend(["completed", "progress"]);
        assert_eq!(kinds(&events), want, "{id}");
        let epochs_seen: Vec<u32> = events
            .iter()
            .filter_map(|e| match e.kind {
                JobEventKind::Progress { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect();
        assert!(
            epochs_seen.windows(2).all(|w| w[0] < w[1]),
            "{epochs_seen:?}"
        );
    }
    // One version of model M per job: no completion was listed twice, none lost.
    versions.sort_unstable();
    assert_eq!(
        versions,
        (1..=ids.len() as u32).collect::<Vec<_>>(),
        "{}",
        stack.logs()
    );
}

#[tokio::test]
async fn two_replicas_apply_every_jobs_events_as_published() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-registry"]).await;
        let second = stack.spawn("gantry-registry", &[]);
        second.wait_ready(Duration::from_secs(60)).await;

        let epochs = 12;
        let ids = publish_jobs(&stack, "order", 30, epochs).await;
        wait_all_applied(&stack, Duration::from_secs(120)).await;
        check_jobs(&stack, &ids, epochs).await;

        // Both replicas applied events: the work is shared.
        for (name, metrics) in [
            ("first", stack.registry().metrics().await),
            ("second", second.metrics().await),
        ] {
            let applied: f64 = metrics
                .lines()
                .filter(|l| l.starts_with("gantry_registry_job_events_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert!(applied > 0.0, "the {name} replica applied nothing");
        }
    })
    .await;
}

#[tokio::test]
async fn a_replica_killed_while_applying_leaves_every_event_applied_once() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_services(&["gantry-registry"]).await;
        let second = stack.spawn("gantry-registry", &[]);
        second.wait_ready(Duration::from_secs(60)).await;

        let epochs = 18;
        let ids = publish_jobs(&stack, "crash", 40, epochs).await;
        // Killed as soon as it has applied something: what it holds comes back to the other.
        let busy = wait_until(Duration::from_secs(60), || async {
            let m = stack.registry().metrics().await;
            m.lines()
                .any(|l| l.starts_with("gantry_registry_job_events_total{"))
                .then_some(())
        })
        .await;
        assert!(
            busy.is_some(),
            "the first replica applied nothing\n{}",
            stack.logs()
        );
        stack.kill9("gantry-registry");

        // Redelivered after the consumer's 30 s ack wait.
        wait_all_applied(&stack, Duration::from_secs(150)).await;
        check_jobs(&stack, &ids, epochs).await;
        drop(second);
    })
    .await;
}

#[tokio::test]
async fn events_met_with_the_store_away_wait_for_it_and_are_never_dead_lettered() {
    TestStack::run(LIMIT, |mut stack| async move {
        // Two deliveries would dead-letter an event at once, were its waits counted.
        stack.set_env("GANTRY_EVENT_MAX_DELIVER", "2");
        stack.start_services(&["gantry-registry"]).await;
        let epochs = 3;
        // Recorded (with their weights) before the store goes; their events are published after.
        let ids: Vec<String> = (0..3).map(|i| format!("away-{i}")).collect();
        let js = async_nats::jetstream::new(stack.client().clone());
        let uploads = gantry_runtime::jetstream::bucket_store(&js, UPLOADS_BUCKET)
            .await
            .unwrap();
        for id in &ids {
            stack
                .record_job(&train_job(id, 1, jobs::JobDriver::Cpu), 0)
                .await;
            uploads
                .put(jobs::weights_key(id, 1).as_str(), &mut &WEIGHTS[..])
                .await
                .unwrap();
        }

        stack.store.stop();
        for id in &ids {
            for e in history(id, epochs) {
                js.publish(
                    jobs::event_subject(NODE, id),
                    serde_json::to_vec(&e).unwrap().into(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            }
        }
        let holding = wait_until(Duration::from_secs(60), || async {
            stack
                .registry()
                .output()
                .contains("the store is unavailable; the job's events wait for it")
                .then_some(())
        })
        .await;
        assert!(
            holding.is_some(),
            "the registry never held the events\n{}",
            stack.logs()
        );
        stack.store.restart().await;

        wait_all_applied(&stack, Duration::from_secs(120)).await;
        check_jobs(&stack, &ids, epochs).await;
        let dead = js
            .get_stream(jobs::DEAD_EVENTS_STREAM)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        assert_eq!(dead, 0, "events were dead-lettered\n{}", stack.logs());
    })
    .await;
}
