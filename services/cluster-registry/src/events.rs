//! The registry's background work on jobs: the durable job event consumer (shared by every
//! replica, each pulling batches), the max-deliveries advisory (one replica handles each), and
//! the settled announcements every replica follows to keep its node counters in step.
//!
//! A batch is grouped by job: each job's events apply in their stream order, folded into one
//! read and one conditional write of its record where they can be ([`Jobs::apply_events`]), and
//! the jobs of a batch apply concurrently. Nothing orders events across replicas: two may apply
//! events of one job at once, and the record decides (see `jobs.rs`), so what ends up stored is
//! what applying them in publish order gives.
//!
//! An event that cannot be applied comes back with growing waits; after `GANTRY_EVENT_MAX_DELIVER`
//! deliveries (or at once, when it cannot even be read) it moves to the dead-letter stream
//! ([`DEAD_EVENTS_STREAM`](gantry_contracts::jobs::DEAD_EVENTS_STREAM)) with the reason, is
//! counted and logged; other events never wait behind it.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::{FutureExt, StreamExt};
use gantry_contracts::jobs::{
    self, JobEvent, JobRecord, JobStatus, EVENTS_CONSUMER, EVENTS_STREAM,
};
use gantry_runtime::retry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::RegistryError;
use crate::jobs::{Delivered, Jobs};

/// How long applying one job's events of a batch may take (the consumer's ack wait is 30 s).
const APPLY_LIMIT: Duration = Duration::from_secs(20);

/// Most events one replica takes in a batch.
const BATCH: i64 = 1024;

/// Most jobs of a batch one replica applies at once.
const JOBS_AT_ONCE: usize = 32;

/// How often events held while the store is away look for it again (and keep their lease).
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Most events unacknowledged across all replicas (the consumer's `max_ack_pending`).
const EVENTS_IN_FLIGHT: i64 = 4096;

/// JetStream's max-deliveries advisory: the part the registry reads.
#[derive(Deserialize)]
struct Advisory {
    stream_seq: u64,
}

/// Consume job events durably and follow the advisories and announcements, until `shutdown`.
pub async fn start(
    jobs: Jobs,
    max_deliver: u32,
    limits: gantry_runtime::jetstream::BucketLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let js = jetstream::new(jobs.registry().client().clone());
        if !gantry_runtime::jetstream::ensure_with_retry(&js, &limits, &shutdown).await {
            return;
        }
        if let Err(e) = jobs.ensure_indexes().await {
            tracing::warn!(error = %e, "job indexes");
        }
        let advisories = tokio::spawn(follow_advisories(
            jobs.clone(),
            js.clone(),
            shutdown.clone(),
        ));
        let completions = tokio::spawn(follow_completions(jobs.clone(), shutdown.clone()));
        while !shutdown.is_cancelled() {
            if let Err(e) = consume(&jobs, &js, max_deliver, &shutdown).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "job event consumer stopped; restarting"
                );
                if !retry::pause(&shutdown, Duration::from_secs(1)).await {
                    break;
                }
            }
        }
        advisories.abort();
        completions.abort();
    });
}

/// Fail and refund jobs whose message exhausted its deliveries.
async fn follow_advisories(jobs: Jobs, js: jetstream::Context, stop: CancellationToken) {
    let client = jobs.registry().client().clone();
    let Ok(mut sub) = client
        .queue_subscribe(jobs::MAX_DELIVERIES_ADVISORY, "gantry-registry".into())
        .await
    else {
        return;
    };
    while let Some(msg) = tokio::select! { _ = stop.cancelled() => None, m = sub.next() => m } {
        match serde_json::from_slice::<Advisory>(&msg.payload) {
            Ok(a) => {
                if let Err(e) = exhausted(&jobs, &js, a.stream_seq).await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "handling a max-deliveries advisory"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable max-deliveries advisory"),
        }
    }
}

/// Fail and refund the job at `stream_seq` of the job stream, and take it off the queue.
async fn exhausted(jobs: &Jobs, js: &jetstream::Context, stream_seq: u64) -> anyhow::Result<()> {
    let stream = js.get_stream(jobs::JOBS_STREAM).await?;
    let msg = stream.get_raw_message(stream_seq).await?;
    let job: crate::jobs::QueuedJob = serde_json::from_slice(&msg.payload)?;
    match jobs.exhausted(&job.job_id).await {
        Ok(_) | Err(RegistryError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let _ = stream.delete_message(stream_seq).await;
    Ok(())
}

/// Every replica follows completions (not only the one that recorded them), so each lists the
/// same completed-job counts.
async fn follow_completions(jobs: Jobs, stop: CancellationToken) {
    let client = jobs.registry().client().clone();
    let Ok(mut sub) = client.subscribe(jobs::SETTLED_SUBJECTS).await else {
        return;
    };
    while let Some(msg) = tokio::select! { _ = stop.cancelled() => None, m = sub.next() => m } {
        if let Ok(JobRecord {
            status: JobStatus::Completed,
            node_id: Some(node_id),
            ..
        }) = serde_json::from_slice(&msg.payload)
        {
            jobs.models().refresh_completed(&node_id).await;
        }
    }
}

async fn consume(
    jobs: &Jobs,
    js: &jetstream::Context,
    max_deliver: u32,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = js.get_stream(EVENTS_STREAM).await?;
    // Created or updated to this config (an older registry's consumer had one event in flight).
    // Every replica pulls batches; a job's events may apply on two replicas at once, which the
    // job's record settles: its writes are conditional, its progress is kept by stream
    // sequence, and an event that needs its delivery's start comes back until it is applied.
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(EVENTS_CONSUMER.into()),
            filter_subject: jobs::EVENTS_STREAM_SUBJECTS[0].into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: EVENTS_IN_FLIGHT,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH as usize)
        .messages()
        .await?;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let mut batch = Vec::with_capacity(BATCH as usize);
        let mut next = first;
        let mut ended = false;
        loop {
            match next {
                Some(Ok(m)) => batch.push(m),
                // The stream re-arms its pulls itself; messages already pulled are not lost.
                Some(Err(e)) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                    tracing::warn!(error = %e, "job event consumer missed a heartbeat; going on");
                }
                Some(Err(e)) if batch.is_empty() => return Err(anyhow::anyhow!("{e}")),
                Some(Err(_)) => break,
                None => {
                    ended = true;
                    break;
                }
            }
            if batch.len() >= BATCH as usize {
                break;
            }
            // What has arrived already joins the batch; nothing waits for more. The client reads
            // the connection a buffer at a time: when one is drained, the connection's task gets
            // a turn to hand over what it has read since, and the batch ends when nothing came.
            match messages.next().now_or_never() {
                Some(m) => next = m,
                None => {
                    tokio::task::yield_now().await;
                    match messages.next().now_or_never() {
                        Some(m) => next = m,
                        None => break,
                    }
                }
            }
        }
        if !batch.is_empty() {
            tracing::debug!(events = batch.len(), "job event batch");
            apply_batch(jobs, js, max_deliver, batch, stop).await;
        }
        if ended || stop.is_cancelled() {
            return Ok(());
        }
    }
}

/// Apply a batch: its events grouped by job, each job's in stream order, jobs concurrently.
async fn apply_batch(
    jobs: &Jobs,
    js: &jetstream::Context,
    max_deliver: u32,
    batch: Vec<jetstream::Message>,
    stop: &CancellationToken,
) {
    let mut by_job: HashMap<String, Vec<(jetstream::Message, Delivered)>> = HashMap::new();
    for msg in batch {
        match read(&msg) {
            Ok(d) => by_job
                .entry(d.event.job_id.clone())
                .or_default()
                .push((msg, d)),
            Err(why) => give_up(js, &msg, "unreadable", &why).await,
        }
    }
    futures::stream::iter(by_job)
        .for_each_concurrent(JOBS_AT_ONCE, |(job_id, mut items)| async move {
            items.sort_by_key(|(_, d)| d.seq);
            let (msgs, events): (Vec<_>, Vec<_>) = items.into_iter().unzip();
            let span = tracing::info_span!("job.events", job_id, events = events.len());
            if let Some(first) = msgs.first() {
                gantry_runtime::telemetry::set_parent_from(&span, first.headers.as_ref());
            }
            let results = loop {
                // Bounded well inside the ack wait, so an event is never redelivered to another
                // replica while this one still applies it.
                let results =
                    tokio::time::timeout(APPLY_LIMIT, jobs.apply_events(&job_id, &events))
                        .instrument(span.clone())
                        .await
                        .unwrap_or_else(|_| {
                            events
                                .iter()
                                .map(|_| {
                                    Err(RegistryError::Unavailable(
                                        "applying the events took too long".into(),
                                    ))
                                })
                                .collect()
                        });
                if results.iter().all(Result::is_ok)
                    || stop.is_cancelled()
                    || jobs.store_reachable().await
                {
                    break results;
                }
                // The store is away: the events are held (no delivery spent, none
                // dead-lettered for it) until it is back, then applied again.
                tracing::warn!(
                    job_id,
                    "the store is unavailable; the job's events wait for it"
                );
                while !stop.is_cancelled() {
                    for msg in &msgs {
                        let _ = msg.ack_with(AckKind::Progress).await;
                    }
                    if !retry::pause(stop, STORE_WAIT).await || jobs.store_reachable().await {
                        break;
                    }
                }
            };
            for ((msg, d), result) in msgs.iter().zip(&events).zip(results) {
                settle_message(js, msg, d.event.kind.name(), result, max_deliver).await;
            }
        })
        .await;
}

/// The event a message carries, with its sender and stream sequence; why not, if unreadable.
fn read(msg: &jetstream::Message) -> Result<Delivered, String> {
    let Some(sender) = jobs::event_sender(&msg.subject).map(str::to_owned) else {
        return Err("the subject names no sender".into());
    };
    let seq = msg
        .info()
        .map_err(|e| format!("no stream sequence: {e}"))?
        .stream_sequence;
    match serde_json::from_slice::<JobEvent>(&msg.payload) {
        Ok(event) if msg.subject.ends_with(&format!(".job.{}", event.job_id)) => {
            Ok(Delivered { sender, event, seq })
        }
        Ok(_) => Err("the event's job is not its subject's".into()),
        Err(e) => Err(format!("unreadable: {e}")),
    }
}

/// Acknowledge an applied event; one that failed comes back, later each time, until its
/// deliveries run out and it moves to the dead-letter stream.
async fn settle_message(
    js: &jetstream::Context,
    msg: &jetstream::Message,
    kind: &str,
    result: Result<(), RegistryError>,
    max_deliver: u32,
) {
    match result {
        Ok(()) => {
            gantry_runtime::metrics::REGISTRY_JOB_EVENTS
                .with_label_values(&[kind])
                .inc();
            let _ = msg.ack().await;
        }
        // Never dropped (a lost completion would leave its job running for good): it comes
        // back, later each time.
        Err(e) => {
            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
            if delivered >= i64::from(max_deliver) {
                give_up(
                    js,
                    msg,
                    kind,
                    &format!("{e} (after {delivered} deliveries)"),
                )
                .await;
                return;
            }
            let wait = Duration::from_secs(1u64 << (delivered - 1).min(5));
            if delivered >= 5 {
                tracing::error!(error = %e, delivered, "a job event keeps failing");
            } else {
                tracing::warn!(error = %e, delivered, "applying a job event failed; it comes back");
            }
            let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
        }
    }
}

/// Move an event the registry cannot apply to the dead-letter stream, with its headers and the
/// reason, then take it off the event stream so the events behind it go on. If the dead letter
/// cannot be stored, the event comes back instead: it is never lost.
async fn give_up(js: &jetstream::Context, msg: &jetstream::Message, kind: &str, why: &str) {
    let job_id = msg
        .subject
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut headers = msg.headers.clone().unwrap_or_default();
    headers.insert("Gantry-Dead-Reason", truncate(why, 1024));
    headers.insert("Gantry-Dead-Subject", msg.subject.as_str());
    let stored = async {
        js.publish_with_headers(
            jobs::dead_event_subject(&job_id),
            headers,
            msg.payload.clone(),
        )
        .await?
        .await
    };
    match stored.await {
        Ok(_) => {
            gantry_runtime::metrics::REGISTRY_DEAD_EVENTS
                .with_label_values(&[kind])
                .inc();
            tracing::error!(
                job_id,
                kind,
                reason = why,
                "a job event was moved to the dead-letter stream; the events behind it go on"
            );
            let _ = msg.ack_with(AckKind::Term).await;
        }
        Err(e) => {
            tracing::error!(job_id, error = %e, "could not store a dead letter; the event comes back");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
