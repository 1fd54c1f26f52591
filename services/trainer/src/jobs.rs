//! Training jobs on this node: pull them from the job consumer of the node's backend and from
//! `train-any`, train each on a blocking thread, publish its events, checkpoint every epoch,
//! upload the model, and follow cancels, drains, driver changes and shutdown.
//!
//! ## Pulling
//! [`Workers::run`] asks for at most as many jobs as there are free worker slots, alternating
//! between the two consumers with short long-polls ([`PULL_WAIT`]), so a job never sits in a
//! message this node cannot start and a changed [`WorkerPlan`] (another driver, a drain) takes
//! effect within a poll. A message that arrives after the plan stopped wanting it is handed back
//! at once (nak).
//!
//! ## A job
//! 1. Registered for cancels first (so a cancel can never slip between the check and the start),
//!    then the registry is asked whether the job is already over (cancelled while queued): then
//!    the message is terminated, with no event.
//! 2. The lease is kept with in-progress acks every [`LEASE_EVERY`] while the node works.
//! 3. The dataset snapshot is fetched into the node's cache (by content hash, checked), the last
//!    checkpoint (if any) is read, `Started` is published, and [`gantry_training::train`] runs on
//!    a blocking thread. Its `Report`/`EpochEnd` progress and its checkpoints go through a channel
//!    to a publisher task that stores each checkpoint before announcing it.
//! 4. The outcome decides the end (see [`Outcome`]): completed (weights and card uploaded,
//!    `Completed` published, then acked), data error (`Failed{kind: data}`, acked: retrying cannot
//!    help), cancelled (`Cancelled`, checkpoint deleted, terminated), shutdown (nak at once: another
//!    node resumes from the checkpoint), anything else (nak after [`RETRY_DELAY`]; the registry
//!    fails the job through the max-deliveries advisory after the last try).
//!
//! Every event carries the message's delivery count, so the registry ignores a late answer from a
//! node that lost its lease; every publish waits for JetStream's ack and carries the job
//! message's trace.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer, object_store::ObjectStore, AckKind};
use async_nats::Client;
use chrono::Utc;
use futures::StreamExt;
use gantry_contracts::error::ErrorCode;
use gantry_contracts::jobs::{
    self as contract, FailureKind, JobDriver, JobEvent, JobEventKind, JobRecord, JobRef, JobStatus,
    ModelVersion, TrainJob, CANCEL_SUBJECTS, DATASETS_BUCKET, JOBS_STREAM, MAX_DELIVER,
    MODELS_BUCKET,
};
use gantry_contracts::registry::Driver;
use gantry_contracts::subjects;
use gantry_runtime::{metrics, nats, telemetry};
use gantry_training::{
    Checkpoint, Dataset, DatasetError, LoadOptions, ModelCard, Progress, ProgressKind, TrainConfig,
    TrainError,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::cache;
use crate::node::WorkerPlan;

/// How long one pull request waits at the server before the loop looks again (at the other
/// consumer, the plan, the free slots).
pub const PULL_WAIT: Duration = Duration::from_secs(1);
/// In-progress acks: a third of AckWait.
pub const LEASE_EVERY: Duration = Duration::from_secs(contract::ACK_WAIT_SECS / 3);
/// A job that failed here for a reason of the node comes back after this.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);
/// How long shutdown waits for jobs in flight to hand their messages back.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// What the workers need to know about this node.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The node's name (events and model cards).
    pub node_name: String,
    /// The node's id (`Started` events).
    pub node_id: String,
    /// Where dataset snapshots are cached (`<cache_dir>/datasets/<hash>/`).
    pub cache_dir: PathBuf,
    /// The cache's budget in bytes; least recently used snapshots go beyond it.
    pub cache_max_bytes: u64,
    /// libtorch intra-op threads per job.
    pub threads: usize,
}

/// The default cache directory: `<tmp>/gantry-trainer-<node name>`.
pub fn default_cache_dir(node_name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gantry-trainer-{node_name}"))
}

/// libtorch threads per job: the node's CPUs shared by its worker slots.
pub fn threads_per_job(cpus: usize, workers: usize) -> usize {
    (cpus / workers.max(1)).max(1)
}

/// The job consumer serving a backend.
pub fn job_driver(driver: Driver) -> JobDriver {
    match driver {
        Driver::Cuda => JobDriver::Cuda,
        Driver::Rocm => JobDriver::Rocm,
        Driver::Cpu => JobDriver::Cpu,
    }
}

/// The job id of a cancel announced on [`contract::cancel_subject`].
pub fn cancelled_job_id(subject: &str) -> Option<&str> {
    let id = subject
        .strip_prefix("gantry.control.job.")?
        .strip_suffix(".cancel")?;
    (!id.is_empty() && !id.contains('.')).then_some(id)
}

/// A dataset hash is the hex SHA-256 of its snapshot; anything else must not become a path.
pub fn valid_dataset_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a message that arrived from `consumer` is still wanted under `plan`.
pub fn wanted(plan: &WorkerPlan, consumer: JobDriver) -> bool {
    plan.accepting && (consumer == JobDriver::Any || consumer == job_driver(plan.driver))
}

impl Outcome {
    /// Its label in `gantry_trainer_jobs_total`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::AlreadyFinal(_) | Outcome::Unknown => "skipped",
            Outcome::Completed(_) => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::HandedBack => "handed_back",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry(_) => "retried",
        }
    }
}

/// How one job ended on this node.
#[derive(Debug)]
pub enum Outcome {
    /// The registry says it is over already (cancelled while queued, or finished elsewhere).
    AlreadyFinal(JobStatus),
    /// The registry does not know it: a stray message.
    Unknown,
    /// Trained and uploaded.
    Completed(Box<ModelVersion>),
    /// A cancel reached it.
    Cancelled,
    /// The node is shutting down: hand it back.
    HandedBack,
    /// It cannot succeed anywhere: report and drop it.
    Failed {
        /// For the user.
        error: String,
        /// Why.
        kind: FailureKind,
    },
    /// Something of this node went wrong: let it come back (here or elsewhere).
    Retry(String),
}

/// Why training did not give a model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The dataset could not be loaded.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The node's backend has no device.
    #[error(transparent)]
    Device(#[from] gantry_training::DeviceError),
}

/// The outcome of a failed run; `cancelled` and `stopping` say whether a cancel or the shutdown
/// interrupted it.
pub fn classify(error: &RunError, cancelled: bool, stopping: bool) -> Outcome {
    match error {
        RunError::Train(TrainError::Cancelled { .. }) if cancelled => Outcome::Cancelled,
        RunError::Train(TrainError::Cancelled { .. }) if stopping => Outcome::HandedBack,
        RunError::Dataset(e) if e.is_data_error() => Outcome::Failed {
            error: e.to_string(),
            kind: FailureKind::Data,
        },
        // The job's parameters are out of the library's bounds: no node would do better.
        RunError::Train(e @ TrainError::InvalidConfig(_)) => Outcome::Failed {
            error: e.to_string(),
            kind: FailureKind::Data,
        },
        RunError::Train(e) if e.is_data_error() => Outcome::Failed {
            error: e.to_string(),
            kind: FailureKind::Data,
        },
        other => Outcome::Retry(other.to_string()),
    }
}

/// The contract's metrics row from the training library's (no validation split reads as 0).
pub fn epoch_metrics(m: &gantry_training::EpochMetrics) -> contract::EpochMetrics {
    contract::EpochMetrics {
        epoch: m.epoch,
        loss: m.loss,
        train_accuracy: m.train_accuracy,
        val_accuracy: m.val_accuracy.unwrap_or(0.0),
    }
}

/// The `Progress` event worth publishing for a training callback, if any: `Report`s (at most
/// every `report_interval_ms`) and `EpochEnd`s, never the per-step calls. `last_val` is the
/// validation accuracy of the last finished epoch.
pub fn progress_event(p: &Progress, last_val: Option<f64>) -> Option<JobEventKind> {
    if p.kind == ProgressKind::Step {
        return None;
    }
    Some(JobEventKind::Progress {
        epoch: p.epoch,
        epochs: p.epochs,
        step: p.step,
        total_steps: p.total_steps,
        loss: finite(p.loss),
        train_accuracy: finite(p.train_accuracy),
        val_accuracy: p.val_accuracy.or(last_val).map(finite),
        samples_per_sec: finite(p.samples_per_sec),
        eta_seconds: finite(p.eta_seconds),
    })
}

/// JSON has no NaN: a diverging loss reads 0 in the event (the run fails right after).
fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

/// The model card as stored: the training library's card with the job's description, dataset
/// hash (the snapshot's, as the job names it), job id and node.
pub fn model_card(mut card: ModelCard, job: &TrainJob, node: &str) -> contract::ModelCard {
    card.description = job.description.clone();
    card.dataset_hash = job.dataset_hash.clone();
    card.job_id = job.job_id.clone();
    card.node = node.to_owned();
    // The same fields in the contract's wire form (its numbers are f64).
    serde_json::to_value(card)
        .and_then(serde_json::from_value)
        .unwrap_or_default()
}

/// The training settings of a job.
pub fn train_config(job: &TrainJob, threads: usize) -> TrainConfig {
    TrainConfig {
        epochs: job.params.epochs,
        batch_size: job.params.batch_size as usize,
        learning_rate: job.params.learning_rate,
        threads: Some(threads),
        ..TrainConfig::default()
    }
}

/// How a job's dataset is decoded and split (the split is deterministic: a resumed job, on any
/// node, validates on the same images).
pub fn load_options(job: &TrainJob) -> LoadOptions {
    LoadOptions {
        image_size: job.params.image_size,
        validation_split: job.params.validation_split,
        ..LoadOptions::default()
    }
}

/// Cancel and shutdown flags of one job in flight.
#[derive(Default)]
pub struct JobControl {
    interrupted: CancellationToken,
    cancelled: AtomicBool,
    stopping: AtomicBool,
}

impl JobControl {
    /// A cancel arrived: stop, publish `Cancelled`, nothing else after.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.interrupted.cancel();
    }

    /// The node is stopping: stop and hand the job back.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.interrupted.cancel();
    }

    /// Whether a cancel arrived.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the node is stopping.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether the job should stop, for either reason.
    pub fn is_interrupted(&self) -> bool {
        self.interrupted.is_cancelled()
    }

    fn interrupted_outcome(&self) -> Option<Outcome> {
        if self.is_cancelled() {
            Some(Outcome::Cancelled)
        } else if self.is_stopping() {
            Some(Outcome::HandedBack)
        } else {
            None
        }
    }
}

/// What the training thread hands the publisher.
enum Update {
    Progress(JobEventKind),
    Checkpoint { epoch: u32, bytes: Vec<u8> },
}

/// The job consumers of this node; cheap to clone.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    config: WorkerConfig,
    /// Per worker slot: the model it trains (shared with the heartbeats).
    busy: Arc<Mutex<Vec<Option<String>>>>,
    /// Woken when a slot is taken or freed, so the node heartbeats at once.
    busy_changed: Arc<Notify>,
    /// Woken when a slot is freed, so the pull loop asks for more.
    slot_freed: Notify,
    /// Jobs in flight, by a serial (the same job may run twice here after a lost lease).
    running: Mutex<HashMap<u64, (String, Arc<JobControl>)>>,
    serial: AtomicU64,
    /// Dataset snapshots this node's jobs are using (never evicted).
    datasets_in_use: cache::InUse,
}

/// A taken worker slot; freed on drop.
struct Slot {
    workers: Workers,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.workers.inner;
        if let Some(s) = lock(&inner.busy).get_mut(self.index) {
            *s = None;
        }
        inner.slot_freed.notify_one();
        inner.busy_changed.notify_one();
    }
}

/// A job's entry in the cancel table; removed on drop.
struct Registration {
    workers: Workers,
    serial: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.workers.inner.running).remove(&self.serial);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workers {
    /// Workers over `busy` (one entry per slot, shared with the heartbeats).
    pub fn new(
        client: Client,
        config: WorkerConfig,
        busy: Arc<Mutex<Vec<Option<String>>>>,
        busy_changed: Arc<Notify>,
    ) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                busy,
                busy_changed,
                slot_freed: Notify::new(),
                running: Mutex::new(HashMap::new()),
                serial: AtomicU64::new(0),
                datasets_in_use: cache::InUse::default(),
            }),
        }
    }

    fn free_slots(&self) -> usize {
        lock(&self.inner.busy)
            .iter()
            .filter(|s| s.is_none())
            .count()
    }

    fn take_slot(&self, model: &str) -> Option<Slot> {
        let index = {
            let mut busy = lock(&self.inner.busy);
            let index = busy.iter().position(Option::is_none)?;
            busy[index] = Some(model.to_owned());
            index
        };
        self.inner.busy_changed.notify_one();
        Some(Slot {
            workers: self.clone(),
            index,
        })
    }

    fn register(&self, job_id: &str) -> (Registration, Arc<JobControl>) {
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(JobControl::default());
        lock(&self.inner.running).insert(serial, (job_id.to_owned(), control.clone()));
        (
            Registration {
                workers: self.clone(),
                serial,
            },
            control,
        )
    }

    /// Set the cancel flag of every run of `job_id` here; true when one was found.
    pub fn cancel(&self, job_id: &str) -> bool {
        let running = lock(&self.inner.running);
        let mut found = false;
        for (id, control) in running.values() {
            if id == job_id {
                control.cancel();
                found = true;
            }
        }
        found
    }

    /// Pull and train until `shutdown`; then stop the jobs in flight, hand their messages back and
    /// return within [`SHUTDOWN_GRACE`] (plus a pull).
    pub async fn run(self, mut plan: watch::Receiver<WorkerPlan>, shutdown: CancellationToken) {
        if !gantry_runtime::jobs::ensure_with_retry(&self.inner.js, &shutdown).await {
            return;
        }
        let cancels = AbortOnDrop(tokio::spawn(self.clone().follow_cancels(shutdown.clone())));
        let tracker = TaskTracker::new();
        let mut consumers: HashMap<JobDriver, PullConsumer> = HashMap::new();
        let mut turn = 0usize;
        tracing::info!(slots = lock(&self.inner.busy).len(), "taking training jobs");
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let current = plan.borrow_and_update().clone();
            let free = self.free_slots();
            if !current.accepting || free == 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = plan.changed() => if changed.is_err() { break },
                    _ = self.inner.slot_freed.notified() => {}
                }
                continue;
            }
            let driver = [job_driver(current.driver), JobDriver::Any][turn % 2];
            turn = turn.wrapping_add(1);
            // With NATS gone a pull waits for its request timeout; a shutdown must not. A batch cut
            // short here only delays its unread messages until AckWait.
            let pulled = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.pull(&mut consumers, driver, free, &plan, &shutdown, &tracker) => r,
            };
            if let Err(e) = pulled {
                consumers.remove(&driver);
                tracing::warn!(
                    consumer = contract::train_consumer(driver),
                    error = format!("{e:#}"),
                    "pulling jobs failed; retrying"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let _ = gantry_runtime::jobs::ensure(&self.inner.js).await;
            }
        }

        let in_flight: Vec<Arc<JobControl>> = lock(&self.inner.running)
            .values()
            .map(|(_, c)| c.clone())
            .collect();
        if !in_flight.is_empty() {
            tracing::info!(
                jobs = in_flight.len(),
                "stopping: handing the jobs in flight back"
            );
        }
        for control in in_flight {
            control.stop();
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "jobs in flight did not hand back in time; they return to the queue after AckWait"
            );
        }
        drop(cancels);
    }

    async fn consumer(
        &self,
        consumers: &mut HashMap<JobDriver, PullConsumer>,
        driver: JobDriver,
    ) -> anyhow::Result<PullConsumer> {
        if let Some(c) = consumers.get(&driver) {
            return Ok(c.clone());
        }
        let name = contract::train_consumer(driver);
        let stream = self
            .inner
            .js
            .get_stream(JOBS_STREAM)
            .await
            .context("looking up the job stream")?;
        let consumer: PullConsumer = stream
            .get_consumer(&name)
            .await
            .map_err(|e| anyhow::anyhow!("looking up consumer {name}: {e}"))?;
        consumers.insert(driver, consumer.clone());
        Ok(consumer)
    }

    /// One long-poll for at most `free` jobs from `driver`'s consumer; each is started as it
    /// arrives. The batch is read to its end even when stopping, so no message is left delivered
    /// to nobody.
    async fn pull(
        &self,
        consumers: &mut HashMap<JobDriver, PullConsumer>,
        driver: JobDriver,
        free: usize,
        plan: &watch::Receiver<WorkerPlan>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let consumer = self.consumer(consumers, driver).await?;
        let mut batch = consumer
            .batch()
            .max_messages(free)
            .expires(PULL_WAIT)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("asking for jobs: {e}"))?;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!("receiving jobs: {e}"))?;
            self.accept(msg, driver, plan, shutdown, tracker).await;
        }
        Ok(())
    }

    async fn accept(
        &self,
        msg: jetstream::Message,
        consumer: JobDriver,
        plan: &watch::Receiver<WorkerPlan>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let current = plan.borrow().clone();
        if shutdown.is_cancelled() || !wanted(&current, consumer) {
            // Asked for while wanted; the plan changed on the way. Another node takes it now.
            tracing::info!(
                consumer = contract::train_consumer(consumer),
                "handing back a job that arrived after the plan changed"
            );
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        let job: TrainJob = match serde_json::from_slice(&msg.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, subject = %msg.subject, "dropping an unreadable job message");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let Some(slot) = self.take_slot(&job.output_model) else {
            // Cannot happen (we never ask for more than the free slots), but never hold it.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        };
        tracker.spawn(self.clone().work(msg, job, slot, current.driver));
    }

    async fn follow_cancels(self, shutdown: CancellationToken) {
        let mut sub = loop {
            match self.inner.client.subscribe(CANCEL_SUBJECTS).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to cancels failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            if let Some(job_id) = cancelled_job_id(&msg.subject) {
                if self.cancel(job_id) {
                    tracing::info!(job_id, "cancel received: stopping the job");
                }
            }
        }
    }

    /// One job, from its message to its final ack.
    async fn work(self, msg: jetstream::Message, job: TrainJob, slot: Slot, backend: Driver) {
        let delivery = msg.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
        let span = tracing::info_span!(
            "train.job", job_id = %job.job_id, delivery, model = %job.output_model, backend = %backend, otel.kind = "consumer"
        );
        telemetry::set_parent_from(&span, msg.headers.as_ref());
        async move {
            // Registered before asking the registry: a cancel recorded after the answer still
            // reaches this run.
            let (_registration, control) = self.register(&job.job_id);
            let msg = Arc::new(msg);
            let lease = {
                let msg = msg.clone();
                AbortOnDrop(tokio::spawn(
                    async move {
                        let mut tick = tokio::time::interval_at(
                            tokio::time::Instant::now() + LEASE_EVERY,
                            LEASE_EVERY,
                        );
                        loop {
                            tick.tick().await;
                            if let Err(e) = msg.ack_with(AckKind::Progress).await {
                                tracing::warn!(error = %e, "in-progress ack failed");
                            }
                        }
                    }
                    .in_current_span(),
                ))
            };
            tracing::info!("job received");
            metrics::TRAINER_JOBS_RUNNING.inc();
            let outcome = self.execute(&job, delivery, backend, &control).await;
            metrics::TRAINER_JOBS_RUNNING.dec();
            drop(lease);
            metrics::TRAINER_JOBS
                .with_label_values(&[outcome.name()])
                .inc();
            self.finish(&msg, &job, delivery, outcome).await;
            drop(slot);
        }
        .instrument(span)
        .await
    }

    async fn store(&self, bucket: &str) -> anyhow::Result<ObjectStore> {
        gantry_runtime::jobs::bucket_store(&self.inner.js, bucket).await
    }

    async fn execute(
        &self,
        job: &TrainJob,
        delivery: u64,
        backend: Driver,
        control: &Arc<JobControl>,
    ) -> Outcome {
        let get = nats::request::<_, JobRecord>(
            &self.inner.client,
            subjects::registry(contract::subjects::JOBS_GET),
            &JobRef {
                job_id: job.job_id.clone(),
                user_id: None,
            },
        )
        .await;
        match get {
            Ok(record) if record.status.is_final() => return Outcome::AlreadyFinal(record.status),
            Ok(_) => {}
            Err(f) if f.code == ErrorCode::NotFound => return Outcome::Unknown,
            // The registry catches up from the durable event stream.
            Err(f) => {
                tracing::warn!(error = %f, "could not ask the registry about the job; training it anyway")
            }
        }
        if let Some(o) = control.interrupted_outcome() {
            return o;
        }

        let dataset = tokio::select! {
            d = self.dataset_dir(&job.dataset_hash) => d,
            _ = control.interrupted.cancelled() => return control.interrupted_outcome().unwrap_or(Outcome::HandedBack),
        };
        // The lease keeps the snapshot in the cache until this job is done with it.
        let (dataset, _lease) = match dataset {
            Ok(d) => d,
            Err(o) => return o,
        };
        let resume = match self.read_checkpoint(&job.job_id).await {
            Ok(c) => c,
            Err(e) => return Outcome::Retry(format!("reading the checkpoint: {e:#}")),
        };
        if let Some(o) = control.interrupted_outcome() {
            return o;
        }
        let resumed_from_epoch = resume.as_ref().map_or(0, |c| c.epoch);
        if resumed_from_epoch > 0 {
            tracing::info!(resumed_from_epoch, "resuming from the checkpoint");
        }
        self.publish_logged(
            &job.job_id,
            delivery,
            JobEventKind::Started {
                node: self.inner.config.node_name.clone(),
                node_id: self.inner.config.node_id.clone(),
                driver: backend.as_str().to_owned(),
                resumed_from_epoch,
            },
        )
        .await;

        let (tx, rx) = mpsc::channel::<Update>(64);
        let publisher = tokio::spawn(
            self.clone()
                .publish_updates(rx, job.job_id.clone(), delivery, control.clone())
                .in_current_span(),
        );
        let result = {
            let span = tracing::Span::current();
            let control = control.clone();
            let config = train_config(job, self.inner.config.threads);
            let options = load_options(job);
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    train_blocking(&dataset, &options, &config, backend, resume, &control, tx)
                })
            })
            .await
        };
        // The training thread dropped its sender: the publisher ends after the last update.
        let _ = publisher.await;

        let model = match result {
            Err(join) => return Outcome::Retry(format!("the training thread failed: {join}")),
            Ok(Err(e)) => return classify(&e, control.is_cancelled(), control.is_stopping()),
            Ok(Ok(model)) => model,
        };
        if control.is_cancelled() {
            return Outcome::Cancelled;
        }

        let weights_key = contract::weights_key(&job.job_id, delivery);
        let uploaded = async {
            let store = self.store(MODELS_BUCKET).await?;
            store
                .put(weights_key.as_str(), &mut model.weights.as_slice())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = uploaded {
            return Outcome::Retry(format!("uploading the weights: {e:#}"));
        }
        let val_accuracy = model.card.final_val_accuracy().unwrap_or(0.0);
        Outcome::Completed(Box::new(ModelVersion {
            name: job.output_model.clone(),
            version: 0,
            user_id: job.user_id,
            job_id: job.job_id.clone(),
            weights_key,
            card: model_card(model.card, job, &self.inner.config.node_name),
            val_accuracy,
            created_at: Utc::now().into(),
        }))
    }

    async fn finish(
        &self,
        msg: &jetstream::Message,
        job: &TrainJob,
        delivery: u64,
        outcome: Outcome,
    ) {
        match outcome {
            Outcome::AlreadyFinal(status) => {
                tracing::info!(
                    status = status.as_str(),
                    "the job is already over; dropping it"
                );
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Outcome::Unknown => {
                tracing::warn!("the registry does not know this job; dropping it");
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Outcome::Completed(model) => {
                let val_accuracy = model.val_accuracy;
                if self
                    .publish_final(&job.job_id, delivery, JobEventKind::Completed { model })
                    .await
                {
                    match msg.double_ack().await {
                        Ok(()) => self.delete_checkpoint(&job.job_id).await,
                        // Perhaps the lease was lost and another delivery runs it: leave it its
                        // checkpoint (the registry keeps whichever result is not fenced).
                        Err(e) => tracing::warn!(error = %e, "acking the finished job failed"),
                    }
                    tracing::info!(val_accuracy, "job completed");
                } else {
                    // The checkpoint of the last epoch stays: the retry only uploads.
                    let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                }
            }
            Outcome::Cancelled => {
                self.publish_final(&job.job_id, delivery, JobEventKind::Cancelled)
                    .await;
                self.delete_checkpoint(&job.job_id).await;
                let _ = msg.ack_with(AckKind::Term).await;
                tracing::info!("job cancelled");
            }
            Outcome::HandedBack => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                tracing::info!("job handed back");
            }
            Outcome::Failed { error, kind } => {
                tracing::warn!(%error, ?kind, "job failed");
                if self
                    .publish_final(&job.job_id, delivery, JobEventKind::Failed { error, kind })
                    .await
                {
                    if msg.double_ack().await.is_ok() {
                        self.delete_checkpoint(&job.job_id).await;
                    }
                } else {
                    let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                }
            }
            Outcome::Retry(error) => {
                let last = delivery >= MAX_DELIVER as u64;
                tracing::error!(
                    %error, delivery, max_deliver = MAX_DELIVER,
                    "job failed on this node; {}",
                    if last { "that was its last delivery: the registry fails it" } else { "it will be retried" }
                );
                let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }

    /// The unpacked dataset, from the cache or fetched into it. Errors are the job's outcome.
    async fn dataset_dir(&self, hash: &str) -> Result<(PathBuf, cache::Lease), Outcome> {
        if !valid_dataset_hash(hash) {
            return Err(Outcome::Failed {
                error: format!("the job names an invalid dataset snapshot {hash:?}"),
                kind: FailureKind::Data,
            });
        }
        let lease = self.inner.datasets_in_use.lease(hash);
        let root = self.inner.config.cache_dir.join("datasets");
        let dir = root.join(hash);
        if dir.is_dir() {
            tracing::debug!(dir = %dir.display(), "dataset cached");
            if let Err(e) = cache::touch(&root, hash) {
                tracing::warn!(error = %e, "could not mark the cached dataset used");
            }
            return Ok((dir, lease));
        }
        match self.fetch_dataset(hash, &root, &dir).await {
            Ok(()) => {
                let _ = cache::touch(&root, hash);
                let (max, in_use) = (
                    self.inner.config.cache_max_bytes,
                    self.inner.datasets_in_use.clone(),
                );
                let (evicted, left) = tokio::task::spawn_blocking(move || {
                    let evicted = cache::evict(&root, max, &in_use);
                    (
                        evicted,
                        cache::list(&root).iter().map(|c| c.bytes).sum::<u64>(),
                    )
                })
                .await
                .unwrap_or_default();
                metrics::TRAINER_CACHE_BYTES.set(left as i64);
                for c in evicted {
                    tracing::info!(
                        hash = c.hash,
                        bytes = c.bytes,
                        "evicted a dataset from the cache"
                    );
                }
                Ok((dir, lease))
            }
            Err(FetchError::Missing) => Err(Outcome::Failed {
                error: format!(
                    "the dataset snapshot {hash} is missing from the {DATASETS_BUCKET} store"
                ),
                kind: FailureKind::System,
            }),
            Err(FetchError::Other(e)) => {
                Err(Outcome::Retry(format!("fetching the dataset: {e:#}")))
            }
        }
    }

    async fn fetch_dataset(&self, hash: &str, root: &Path, dir: &Path) -> Result<(), FetchError> {
        tokio::fs::create_dir_all(root)
            .await
            .context("creating the dataset cache")?;
        let staging = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempdir_in(root)
            .context("creating a staging folder")?;
        let store = self.store(DATASETS_BUCKET).await?;
        let mut object = match store.get(contract::dataset_key(hash)).await {
            Ok(o) => o,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Err(FetchError::Missing)
            }
            Err(e) => return Err(anyhow::anyhow!("opening the snapshot: {e}").into()),
        };
        let archive = staging.path().join("snapshot.tar");
        let mut file = tokio::fs::File::create(&archive)
            .await
            .context("creating the snapshot file")?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = object
                .read(&mut buf)
                .await
                .context("downloading the snapshot")?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .context("writing the snapshot")?;
            bytes += n as u64;
        }
        file.flush().await.context("writing the snapshot")?;
        drop(file);
        let got = hex::encode(hasher.finalize());
        if !got.eq_ignore_ascii_case(hash) {
            return Err(
                anyhow::anyhow!("the downloaded snapshot hashes to {got}, not {hash}").into(),
            );
        }
        let unpacked = staging.path().join("data");
        {
            let (archive, unpacked) = (archive.clone(), unpacked.clone());
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&archive).context("opening the snapshot")?;
                gantry_runtime::dataset::unpack(std::io::BufReader::new(f), &unpacked)
            })
            .await
            .context("unpacking the snapshot")??;
        }
        // Another job may have filled the cache meanwhile; either copy will do.
        if let Err(e) = tokio::fs::rename(&unpacked, dir).await {
            if !dir.is_dir() {
                return Err(anyhow::anyhow!("moving the dataset into the cache: {e}").into());
            }
        }
        tracing::info!(bytes, dir = %dir.display(), "dataset fetched");
        Ok(())
    }

    async fn read_checkpoint(&self, job_id: &str) -> anyhow::Result<Option<Checkpoint>> {
        let store = self.store(MODELS_BUCKET).await?;
        let mut object = match store.get(contract::checkpoint_key(job_id)).await {
            Ok(o) => o,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => anyhow::bail!("opening the checkpoint: {e}"),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .context("downloading the checkpoint")?;
        match Checkpoint::from_bytes(&bytes) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable checkpoint; training from the start");
                Ok(None)
            }
        }
    }

    async fn delete_checkpoint(&self, job_id: &str) {
        if let Ok(store) = self.store(MODELS_BUCKET).await {
            let _ = store.delete(contract::checkpoint_key(job_id)).await;
        }
    }

    /// Progress and checkpoints from the training thread, in order. Nothing is published after a
    /// cancel; during shutdown checkpoints are still stored (the next node resumes from them) but
    /// progress is not.
    async fn publish_updates(
        self,
        mut rx: mpsc::Receiver<Update>,
        job_id: String,
        delivery: u64,
        control: Arc<JobControl>,
    ) {
        while let Some(update) = rx.recv().await {
            if control.is_cancelled() {
                continue;
            }
            match update {
                Update::Progress(kind) => {
                    if let JobEventKind::Progress {
                        samples_per_sec, ..
                    } = &kind
                    {
                        metrics::TRAINER_SAMPLES_PER_SECOND.set(*samples_per_sec);
                    }
                    if !control.is_interrupted() {
                        self.publish_logged(&job_id, delivery, kind).await;
                    }
                }
                Update::Checkpoint { epoch, bytes } => {
                    let metrics = Checkpoint::from_bytes(&bytes)
                        .ok()
                        .and_then(|c| c.metrics.last().map(epoch_metrics));
                    let stored = async {
                        let store = self.store(MODELS_BUCKET).await?;
                        store
                            .put(
                                contract::checkpoint_key(&job_id).as_str(),
                                &mut bytes.as_slice(),
                            )
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        anyhow::Ok(())
                    }
                    .await;
                    match (stored, metrics) {
                        (Ok(()), Some(metrics)) if !control.is_cancelled() => {
                            tracing::info!(
                                epoch,
                                loss = metrics.loss,
                                val_accuracy = metrics.val_accuracy,
                                "epoch checkpointed"
                            );
                            self.publish_logged(
                                &job_id,
                                delivery,
                                JobEventKind::Checkpoint { epoch, metrics },
                            )
                            .await;
                        }
                        (Ok(()), _) => {}
                        (Err(e), _) => tracing::warn!(
                            epoch,
                            error = format!("{e:#}"),
                            "storing the checkpoint failed"
                        ),
                    }
                }
            }
        }
    }

    async fn publish(&self, job_id: &str, delivery: u64, kind: JobEventKind) -> anyhow::Result<()> {
        let event = JobEvent {
            job_id: job_id.to_owned(),
            delivery,
            at: Utc::now(),
            kind,
        };
        let payload = serde_json::to_vec(&event)?;
        self.inner
            .js
            .publish_with_headers(
                contract::event_subject(job_id),
                nats::traced_headers(),
                payload.into(),
            )
            .await?
            .await?;
        Ok(())
    }

    async fn publish_logged(&self, job_id: &str, delivery: u64, kind: JobEventKind) {
        if let Err(e) = self.publish(job_id, delivery, kind).await {
            tracing::warn!(error = format!("{e:#}"), "publishing a job event failed");
        }
    }

    /// A final event, tried a few times (about 8 s) since the job's ack waits on it.
    async fn publish_final(&self, job_id: &str, delivery: u64, kind: JobEventKind) -> bool {
        let mut wait = Duration::from_millis(250);
        for attempt in 1..=5 {
            match self.publish(job_id, delivery, kind.clone()).await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(
                    attempt,
                    error = format!("{e:#}"),
                    "publishing the job's final event failed"
                ),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        false
    }
}

#[derive(Debug)]
enum FetchError {
    Missing,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> Self {
        FetchError::Other(e)
    }
}

/// Load and train, on the blocking thread. A checkpoint that does not fit the job (another
/// network, classes or size) is dropped and the job trains from the start.
fn train_blocking(
    dataset: &Path,
    options: &LoadOptions,
    config: &TrainConfig,
    backend: Driver,
    resume: Option<Checkpoint>,
    control: &JobControl,
    tx: mpsc::Sender<Update>,
) -> Result<gantry_training::TrainedModel, RunError> {
    let device = gantry_training::pick_device(backend.as_str())?;
    let data = Dataset::load(dataset, options)?;
    tracing::info!(
        classes = data.classes.len(), train = data.train.len(), validation = data.validation.len(),
        device = ?device, threads = config.threads, "dataset loaded; training"
    );
    if control.is_interrupted() {
        return Err(TrainError::Cancelled {
            completed_epochs: resume.as_ref().map_or(0, |c| c.epoch),
        }
        .into());
    }
    let mut last_val = resume
        .as_ref()
        .and_then(|c| c.metrics.last())
        .and_then(|m| m.val_accuracy);
    let mut progress = |p: Progress| {
        if control.is_interrupted() {
            return ControlFlow::Break(());
        }
        if p.val_accuracy.is_some() {
            last_val = p.val_accuracy;
        }
        if let Some(kind) = progress_event(&p, last_val) {
            // Progress may be dropped when the bus is slow; checkpoints may not.
            let _ = tx.try_send(Update::Progress(kind));
        }
        ControlFlow::Continue(())
    };
    let tx_ck = tx.clone();
    let mut on_checkpoint = |epoch: u32, bytes: Vec<u8>| {
        if control.is_cancelled() {
            return ControlFlow::Break(());
        }
        let _ = tx_ck.blocking_send(Update::Checkpoint { epoch, bytes });
        ControlFlow::Continue(())
    };
    match gantry_training::train(
        config,
        &data,
        device,
        &mut progress,
        &mut on_checkpoint,
        resume.clone(),
    ) {
        Err(e @ (TrainError::IncompatibleCheckpoint(_) | TrainError::BadCheckpoint(_)))
            if resume.is_some() =>
        {
            tracing::warn!(error = %e, "the checkpoint does not fit this job; training from the start");
            Ok(gantry_training::train(
                config,
                &data,
                device,
                &mut progress,
                &mut on_checkpoint,
                None,
            )?)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(kind: ProgressKind, val: Option<f64>) -> Progress {
        Progress {
            kind,
            epoch: 2,
            epochs: 3,
            step: 7,
            total_steps: 9,
            step_in_epoch: 1,
            steps_per_epoch: 3,
            loss: 0.5,
            train_accuracy: 0.75,
            val_accuracy: val,
            samples_per_sec: 120.0,
            eta_seconds: f64::NAN,
        }
    }

    #[test]
    fn only_reports_and_epoch_ends_become_events() {
        assert!(progress_event(&progress(ProgressKind::Step, None), None).is_none());
        let Some(JobEventKind::Progress {
            epoch,
            epochs,
            step,
            total_steps,
            loss,
            train_accuracy,
            val_accuracy,
            eta_seconds,
            ..
        }) = progress_event(&progress(ProgressKind::Report, None), Some(0.6))
        else {
            panic!("a report is an event")
        };
        assert_eq!((epoch, epochs, step, total_steps), (2, 3, 7, 9));
        assert_eq!((loss, train_accuracy), (0.5, 0.75));
        assert_eq!(
            val_accuracy,
            Some(0.6),
            "a report carries the last epoch's validation accuracy"
        );
        assert_eq!(eta_seconds, 0.0, "no NaN reaches JSON");
        let Some(JobEventKind::Progress { val_accuracy, .. }) =
            progress_event(&progress(ProgressKind::EpochEnd, Some(0.9)), Some(0.6))
        else {
            panic!("an epoch end is an event")
        };
        assert_eq!(val_accuracy, Some(0.9));
    }

    #[test]
    fn cancel_subjects_name_the_job() {
        assert_eq!(
            cancelled_job_id(&contract::cancel_subject("abc-123")),
            Some("abc-123")
        );
        assert_eq!(cancelled_job_id("gantry.control.job..cancel"), None);
        assert_eq!(cancelled_job_id("gantry.control.job.a.b.cancel"), None);
        assert_eq!(cancelled_job_id("gantry.jobs.train.cpu"), None);
    }

    #[test]
    fn only_sha256_hashes_become_cache_paths() {
        assert!(valid_dataset_hash(&"ab".repeat(32)));
        assert!(!valid_dataset_hash("../../etc"));
        assert!(!valid_dataset_hash(&"zz".repeat(32)));
        assert!(!valid_dataset_hash(&"ab".repeat(31)));
    }

    #[test]
    fn a_node_pulls_its_backend_and_any_unless_drained_or_unavailable() {
        let plan = WorkerPlan {
            driver: Driver::Cpu,
            accepting: true,
        };
        assert!(wanted(&plan, JobDriver::Cpu));
        assert!(wanted(&plan, JobDriver::Any));
        assert!(!wanted(&plan, JobDriver::Cuda));
        let moved = WorkerPlan {
            driver: Driver::Cuda,
            accepting: true,
        };
        assert!(wanted(&moved, JobDriver::Cuda) && !wanted(&moved, JobDriver::Cpu));
        let drained = WorkerPlan {
            driver: Driver::Cpu,
            accepting: false,
        };
        assert!(!wanted(&drained, JobDriver::Cpu) && !wanted(&drained, JobDriver::Any));
    }

    #[test]
    fn data_errors_fail_the_job_and_the_rest_is_retried() {
        let data = RunError::Dataset(DatasetError::TooFewClasses { found: 1 });
        assert!(matches!(
            classify(&data, false, false),
            Outcome::Failed {
                kind: FailureKind::Data,
                ..
            }
        ));
        let io = RunError::Dataset(DatasetError::Io {
            path: "a".into(),
            source: std::io::Error::other("disk"),
        });
        assert!(matches!(classify(&io, false, false), Outcome::Retry(_)));
        let diverged = RunError::Train(TrainError::Diverged { epoch: 1 });
        assert!(matches!(
            classify(&diverged, false, false),
            Outcome::Failed {
                kind: FailureKind::Data,
                ..
            }
        ));
        let config = RunError::Train(TrainError::InvalidConfig("epochs".into()));
        assert!(matches!(
            classify(&config, false, false),
            Outcome::Failed {
                kind: FailureKind::Data,
                ..
            }
        ));
        let panicked = RunError::Train(TrainError::Panicked("oom".into()));
        assert!(matches!(
            classify(&panicked, false, false),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn an_interrupted_run_is_cancelled_or_handed_back() {
        let stopped = RunError::Train(TrainError::Cancelled {
            completed_epochs: 1,
        });
        assert!(matches!(
            classify(&stopped, true, false),
            Outcome::Cancelled
        ));
        assert!(
            matches!(classify(&stopped, true, true), Outcome::Cancelled),
            "a cancel wins over a shutdown"
        );
        assert!(matches!(
            classify(&stopped, false, true),
            Outcome::HandedBack
        ));
    }

    #[test]
    fn job_controls_say_why_they_stopped() {
        let c = JobControl::default();
        assert!(!c.is_interrupted() && c.interrupted_outcome().is_none());
        c.stop();
        assert!(c.is_interrupted() && matches!(c.interrupted_outcome(), Some(Outcome::HandedBack)));
        c.cancel();
        assert!(matches!(c.interrupted_outcome(), Some(Outcome::Cancelled)));
    }

    #[test]
    fn threads_are_shared_between_slots() {
        assert_eq!(threads_per_job(16, 4), 4);
        assert_eq!(threads_per_job(2, 4), 1);
        assert_eq!(threads_per_job(8, 0), 8);
    }

    #[test]
    fn the_card_names_the_job_and_the_node() {
        let job = TrainJob {
            job_id: "j1".into(),
            user_id: 7,
            output_model: "shapes".into(),
            description: "three shapes".into(),
            driver: JobDriver::Any,
            dataset_hash: "ab".repeat(32),
            classes: vec!["a".into(), "b".into()],
            params: Default::default(),
            submitted_at: Utc::now(),
        };
        let card = ModelCard {
            card_version: 1,
            architecture: "arch".into(),
            base_width: 16,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            normalization: Default::default(),
            input: "x".into(),
            metrics: vec![],
            training: gantry_training::TrainingSummary {
                epochs: 1,
                batch_size: 8,
                learning_rate: 0.01,
                lr_schedule: "cosine".into(),
                seed: 0,
                augment: false,
                train_samples: 8,
                val_samples: 2,
                device: "Cpu".into(),
                resumed_from_epoch: None,
            },
            description: String::new(),
            dataset_hash: "content".into(),
            job_id: String::new(),
            node: String::new(),
        };
        let v = serde_json::to_value(model_card(card, &job, "node-a")).unwrap();
        assert_eq!(v["description"], "three shapes");
        assert_eq!(v["dataset_hash"], job.dataset_hash);
        assert_eq!(v["job_id"], "j1");
        assert_eq!(v["node"], "node-a");
        assert_eq!(v["classes"], serde_json::json!(["a", "b"]));
        let config = train_config(&job, 3);
        assert_eq!(
            (config.epochs, config.batch_size, config.threads),
            (10, 32, Some(3))
        );
        assert!(config.validate().is_ok());
        assert_eq!(load_options(&job).image_size, 64);
    }
}
