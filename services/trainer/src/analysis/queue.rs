//! Queued analysis jobs: this node pulls [`AnalyzeJob`]s from the analysis consumer of its
//! backend and from `analyze-any`, one job at a time, while it accepts work and has analysis
//! workers. A job's images come from its snapshot (through the node's dataset cache, as a
//! training dataset does) and go through the same workers and model cache as the api's
//! requests, in batches, in the order of the job's input. After each batch the node publishes its
//! results (`results` events, each well under a NATS message) and a `progress` event (step =
//! images done of `total_steps` = the job's images); at the end `analyzed`, then it acks the
//! message. The message is kept leased with in-progress acks meanwhile, so a node that dies has
//! its job redelivered to another, which starts it over (results are stored by index, so the
//! second run replaces the first one's).
//!
//! Failures: an image the model cannot read or a card that does not match its weights fail the
//! job as `data` (refunded); a node that stops taking work hands the job back (nak); a cancel
//! stops it between batches (`cancelled`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::StreamExt;
use gantry_contracts::analysis::{entry_path, AnalyzeBatch, AnalyzeImage, AnalyzeJob, ImageResult};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::jobs::{self as contract, FailureKind, JobDriver, JobEventKind, JOBS_STREAM};
use gantry_runtime::dataset::SnapshotHash;
use gantry_runtime::events::{EventPublisher, Retry};
use gantry_runtime::retry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument as _;

use super::Analysis;
use crate::cache::{CacheError, DatasetCache};
use crate::worker::job_driver;

/// Images classified per batch.
const BATCH: usize = 64;
/// How long one pull waits at the server before the loop looks at the other consumer.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Most serialised result bytes in one `results` event: far under a NATS message.
const MAX_EVENT_BYTES: usize = 256 * 1024;
/// How long a handed-back job waits before it is offered again.
const RETRY_DELAY: Duration = Duration::from_secs(5);

/// How a job ended on this node.
enum Ended {
    /// Every image classified and reported.
    Done,
    /// Stopped by a cancel.
    Cancelled,
    /// Failed for good: published as `failed` of this kind.
    Failed(FailureKind, String),
    /// This node cannot go on (stopping, drained, its backend gone): hand it back.
    HandBack(String),
}

/// Split `results` (those of images from `first`) into runs of at most [`MAX_EVENT_BYTES`]
/// serialised bytes each (one result alone always makes a run).
pub fn runs(first: u64, results: Vec<ImageResult>) -> Vec<(u64, Vec<ImageResult>)> {
    let mut out: Vec<(u64, Vec<ImageResult>)> = Vec::new();
    let mut bytes = 0;
    for (next, r) in (first..).zip(results) {
        let size = serde_json::to_vec(&r).map_or(MAX_EVENT_BYTES, |v| v.len());
        let start_new = match out.last() {
            None => true,
            Some((_, run)) => !run.is_empty() && bytes + size > MAX_EVENT_BYTES,
        };
        if start_new {
            out.push((next, Vec::new()));
            bytes = 0;
        }
        bytes += size;
        if let Some((_, run)) = out.last_mut() {
            run.push(r);
        }
    }
    out
}

/// Every file under `dir/input`, as (the path it stands for, the file), sorted by that path:
/// the order the api counted the images in.
fn input_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(gantry_contracts::analysis::INPUT_DIR)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let relative = entry
                    .path()
                    .strip_prefix(dir)
                    .ok()
                    .and_then(|p| p.to_str())
                    .map(str::to_owned);
                if let Some(path) = relative.as_deref().and_then(entry_path) {
                    out.push((path, entry.path()));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Analysis {
    /// Take queued analysis jobs until `shutdown`.
    pub async fn take_jobs(
        self,
        datasets: DatasetCache,
        node_id: String,
        shutdown: CancellationToken,
    ) {
        let client = self.inner.client.clone();
        let js = jetstream::new(client.clone());
        let events = EventPublisher::new(js.clone(), node_id.clone());
        let mut plan = self.inner.plan.clone();
        let mut consumers: std::collections::HashMap<JobDriver, PullConsumer> =
            std::collections::HashMap::new();
        let mut turn = 0usize;
        while !shutdown.is_cancelled() {
            let current = plan.borrow_and_update().clone();
            if !current.accepting {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = plan.changed() => if changed.is_err() { break },
                }
                continue;
            }
            let driver = [job_driver(current.driver), JobDriver::Any][turn % 2];
            turn = turn.wrapping_add(1);
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = self.pull_one(&js, &mut consumers, driver) => m,
            };
            match pulled {
                Ok(Some(msg)) => {
                    self.run_job(msg, &datasets, &events, &node_id, &shutdown)
                        .await
                }
                Ok(None) => {}
                Err(e) => {
                    consumers.remove(&driver);
                    tracing::warn!(
                        consumer = contract::analyze_consumer(driver),
                        error = format!("{e:#}"),
                        "pulling analysis jobs failed; retrying"
                    );
                    if !retry::pause(&shutdown, Duration::from_secs(1)).await {
                        break;
                    }
                }
            }
        }
    }

    async fn pull_one(
        &self,
        js: &jetstream::Context,
        consumers: &mut std::collections::HashMap<JobDriver, PullConsumer>,
        driver: JobDriver,
    ) -> anyhow::Result<Option<jetstream::Message>> {
        let consumer = match consumers.get(&driver) {
            Some(c) => c.clone(),
            None => {
                let name = contract::analyze_consumer(driver);
                let stream = js
                    .get_stream(JOBS_STREAM)
                    .await
                    .map_err(|e| anyhow::anyhow!("looking up the job stream: {e}"))?;
                let c: PullConsumer = stream
                    .get_consumer(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("looking up consumer {name}: {e}"))?;
                consumers.insert(driver, c.clone());
                c
            }
        };
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        match batch.next().await {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Ok(None),
        }
    }

    async fn run_job(
        &self,
        msg: jetstream::Message,
        datasets: &DatasetCache,
        events: &EventPublisher,
        node_id: &str,
        shutdown: &CancellationToken,
    ) {
        let delivery = msg.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
        let job: AnalyzeJob = match serde_json::from_slice(&msg.payload) {
            Ok(job) => job,
            Err(e) => {
                // Nothing names a job to fail: it goes, and the registry's reconciler settles
                // whatever record it had.
                tracing::error!(error = %e, "unreadable analysis job; dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "analyze.job",
            otel.name = format!("process {}", msg.subject),
            otel.kind = "consumer",
            job_id = %job.job_id,
            delivery,
            model = %job.model,
        );
        gantry_runtime::telemetry::set_parent_from(&span, msg.headers.as_ref());
        self.run_delivery(msg, job, delivery, datasets, events, node_id, shutdown)
            .instrument(span)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_delivery(
        &self,
        msg: jetstream::Message,
        job: AnalyzeJob,
        delivery: u64,
        datasets: &DatasetCache,
        events: &EventPublisher,
        node_id: &str,
        shutdown: &CancellationToken,
    ) {
        let msg = Arc::new(msg);
        let _lease = crate::run::keep_leased(msg.clone());
        let cancelled = CancellationToken::new();
        let _cancels = match self
            .inner
            .client
            .subscribe(contract::cancel_subject(&job.job_id))
            .await
        {
            Ok(mut sub) => {
                let cancelled = cancelled.clone();
                Some(AbortOnDropHandle::new(tokio::spawn(async move {
                    if sub.next().await.is_some() {
                        cancelled.cancel();
                    }
                })))
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not follow the job's cancel");
                None
            }
        };
        let publish = |kind: JobEventKind| EventPublisher::event(&job.job_id, delivery, kind);
        let driver = self.inner.plan.borrow().driver;
        let started = publish(JobEventKind::Started {
            node: self.inner.node_name.clone(),
            node_id: node_id.to_owned(),
            driver: driver.as_str().to_owned(),
            resumed_from_epoch: 0,
        });
        if let Err(e) = events.publish(&started).await {
            tracing::warn!(error = %e, "could not announce the analysis job; handing it back");
            let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            return;
        }
        tracing::info!(
            job_id = job.job_id,
            images = job.images,
            "analysis job started"
        );
        let ended = self
            .classify_job(&job, delivery, datasets, events, &cancelled, shutdown)
            .await;
        let last = match &ended {
            Ended::Done => Some(JobEventKind::Analyzed { images: job.images }),
            Ended::Cancelled => Some(JobEventKind::Cancelled),
            Ended::Failed(kind, error) => Some(JobEventKind::Failed {
                error: error.clone(),
                kind: *kind,
            }),
            Ended::HandBack(why) => {
                tracing::info!(
                    job_id = job.job_id,
                    reason = why,
                    "handing the analysis job back"
                );
                None
            }
        };
        let reported = match last {
            Some(kind) => {
                events
                    .publish_retrying(&publish(kind), Retry::FINAL_EVENT)
                    .await
            }
            None => false,
        };
        if reported {
            let _ = msg.double_ack().await;
        } else {
            // Handed back, or its end could not be reported: another delivery does it again.
            let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        }
    }

    async fn classify_job(
        &self,
        job: &AnalyzeJob,
        delivery: u64,
        datasets: &DatasetCache,
        events: &EventPublisher,
        cancelled: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Ended {
        if let Err(why) = job.check() {
            return Ended::Failed(FailureKind::Data, why);
        }
        let Ok(hash) = SnapshotHash::parse(&job.input_hash) else {
            return Ended::Failed(FailureKind::Data, "the job names no snapshot".into());
        };
        let (dir, _lease) = match datasets.get(&hash).await {
            Ok(got) => got,
            Err(CacheError::Missing(_)) => {
                return Ended::Failed(
                    FailureKind::System,
                    "the job's images are no longer stored".into(),
                )
            }
            Err(e) => return Ended::HandBack(e.to_string()),
        };
        let listed = dir.clone();
        let files = match tokio::task::spawn_blocking(move || input_files(&listed)).await {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => return Ended::HandBack(format!("reading the images: {e}")),
            Err(e) => return Ended::HandBack(format!("reading the images: {e}")),
        };
        if files.len() as u64 != job.images {
            return Ended::Failed(
                FailureKind::Data,
                format!(
                    "the snapshot holds {} images, not {}",
                    files.len(),
                    job.images
                ),
            );
        }
        let started = Instant::now();
        let mut done = 0u64;
        for chunk in files.chunks(BATCH) {
            if cancelled.is_cancelled() {
                return Ended::Cancelled;
            }
            if shutdown.is_cancelled() {
                return Ended::HandBack("this node is stopping".into());
            }
            let mut images = Vec::with_capacity(chunk.len());
            for (path, file) in chunk {
                match tokio::fs::read(file).await {
                    Ok(data) => images.push(AnalyzeImage {
                        path: path.clone(),
                        data,
                    }),
                    Err(e) => return Ended::HandBack(format!("reading {path}: {e}")),
                }
            }
            let batch = AnalyzeBatch {
                model: job.model.clone(),
                weights_key: job.weights_key.clone(),
                card: job.card.clone(),
                top_k: job.top_k,
                images,
            };
            let results = match self.analyze(batch).await {
                Ok(r) => r.results,
                Err(f) => return ended_by(f),
            };
            gantry_runtime::metrics::TRAINER_ANALYZED_IMAGES
                .with_label_values(&["ok"])
                .inc_by(results.len() as u64);
            for (first, run) in runs(done, results) {
                done = first + run.len() as u64;
                let event = EventPublisher::event(
                    &job.job_id,
                    delivery,
                    JobEventKind::Results {
                        first,
                        results: run,
                    },
                );
                if let Err(e) = events.publish(&event).await {
                    return Ended::HandBack(format!("publishing results: {e}"));
                }
            }
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rate = done as f64 / secs;
            let progress = JobEventKind::Progress {
                epoch: 1,
                epochs: 1,
                step: done,
                total_steps: job.images,
                loss: 0.0,
                train_accuracy: 0.0,
                val_accuracy: None,
                samples_per_sec: rate,
                eta_seconds: (job.images - done) as f64 / rate.max(1e-9),
            };
            events
                .publish_or_warn(&EventPublisher::event(&job.job_id, delivery, progress))
                .await;
        }
        Ended::Done
    }
}

/// How a batch's failure ends the job: the model cannot read an input or its card does not
/// match its weights (the user's to fix; refunded), or this node cannot serve now (handed back).
fn ended_by(f: ServiceFailure) -> Ended {
    match f.code {
        ErrorCode::BadRequest | ErrorCode::Conflict | ErrorCode::NotFound => {
            Ended::Failed(FailureKind::Data, f.message)
        }
        ErrorCode::Unavailable => Ended::HandBack(f.message),
        _ => Ended::Failed(FailureKind::Crash, f.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_contracts::analysis::Prediction;

    fn result(path_len: usize) -> ImageResult {
        ImageResult {
            path: "p".repeat(path_len),
            top_k: vec![Prediction {
                label: "l".into(),
                probability: 0.5,
            }],
            node: "n".into(),
        }
    }

    #[test]
    fn results_are_split_into_runs_that_fit_an_event_and_keep_their_indexes() {
        let small = runs(10, vec![result(10); 3]);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].0, 10);
        let big = runs(0, vec![result(100 * 1024); 5]);
        let starts: Vec<u64> = big.iter().map(|(f, _)| *f).collect();
        assert_eq!(starts, [0, 2, 4], "two of ~100 KiB fit under 256 KiB");
        assert_eq!(big.iter().map(|(_, r)| r.len()).sum::<usize>(), 5);
        let huge = runs(0, vec![result(300 * 1024)]);
        assert_eq!(huge.len(), 1, "one result alone still goes");
    }

    #[test]
    fn input_files_are_the_snapshots_images_by_their_paths_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("input/b/c")).unwrap();
        std::fs::write(dir.path().join("input/b/c/2.png"), "x").unwrap();
        std::fs::write(dir.path().join("input/a.png"), "x").unwrap();
        std::fs::write(dir.path().join("input/b/1.png"), "x").unwrap();
        let paths: Vec<String> = input_files(dir.path())
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(paths, ["/a.png", "/b/1.png", "/b/c/2.png"]);
    }
}
