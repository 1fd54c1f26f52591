//! Training jobs: the JetStream streams and object stores, the job message trainers pull, the
//! events they publish, the registry's job and model endpoints, and cancellation.
//!
//! ## The flow
//! 1. The api validates a submission, charges the caller through auth (key: the job id), packs
//!    the dataset into [`DATASETS_BUCKET`] under its content hash, records the job through
//!    [`subjects::JOBS_CREATE`] (status `queued`) and publishes a [`TrainJob`] on
//!    [`train_subject`] with `Nats-Msg-Id` = job id.
//! 2. A trainer serving that driver (or `any`) pulls it from the durable consumer
//!    [`train_consumer`], keeps it leased with in-progress acks, and publishes [`JobEvent`]s on
//!    [`event_subject`] (stream [`EVENTS_STREAM`]): started, progress, checkpoint, then exactly
//!    one of completed, failed or cancelled. It acks the job message after the final event.
//! 3. The registry consumes [`EVENTS_STREAM`] durably ([`EVENTS_CONSUMER`]): it updates the job
//!    record, the node counters and the models, refunds failed jobs, and ignores events whose
//!    `delivery` is older than the job's current delivery (a zombie worker's late result), names
//!    a delivery the queue never made (0 or past [`MAX_DELIVER`]), or, for a completion, points
//!    at weights other than [`weights_key`] of its job and delivery. Which event changes what is
//!    decided in one place, the registry's job lifecycle (`lifecycle.rs`). Every
//!    replica applies batches of events at once; a job's record ends as its events applied in
//!    publish order leave it (its progress is kept by stream sequence, and a start applied after
//!    its end still names the node). Every write of a job record (events, cancels, failures) is
//!    conditional on the revision it read, and decided again on a fresh read when another writer
//!    got there first, so concurrent writers never lose each other's changes.
//!    Once a job is over, the registry settles it (lists the model version and credits the node,
//!    or refunds) and announces its record on [`settled_subject`]; a held submission answers from
//!    that. Settling is repeated whenever an event of the finished job comes again, which
//!    finishes any step that failed the first time.
//! 4. Jobs that exhaust their deliveries are failed and refunded by the registry, which listens
//!    to the JetStream max-deliveries advisory ([`MAX_DELIVERIES_ADVISORY`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod events;
mod progress;
mod summary;
mod waiting;
pub use events::{JobEvent, JobEventKind};
pub use progress::{JobProgress, ProgressType};
pub use summary::JobSummary;
pub use waiting::WaitingReason;

pub use crate::models::{
    ModelCard, ModelDetail, ModelList, ModelQuery, ModelRef, ModelSummary, ModelVersion,
};

/// Work-queue stream of jobs; subjects `gantry.jobs.train.<driver>` and
/// `gantry.jobs.analyze.<driver>`.
pub const JOBS_STREAM: &str = "GANTRY_JOBS";
/// Subjects of [`JOBS_STREAM`].
pub const JOBS_STREAM_SUBJECTS: [&str; 2] = ["gantry.jobs.train.*", "gantry.jobs.analyze.*"];
/// Stream of job events; subjects `gantry.events.node.<node_id>.job.<job_id>`: the sending node
/// is in the subject, so the server's permissions decide who may send for which node.
pub const EVENTS_STREAM: &str = "GANTRY_EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_STREAM_SUBJECTS: [&str; 1] = ["gantry.events.node.*.job.*"];
/// Stream of job events the registry could not apply after `GANTRY_EVENT_MAX_DELIVER`
/// deliveries (dead letters), kept 30 days for an operator; subjects
/// `gantry.dead.events.job.<job_id>`.
pub const DEAD_EVENTS_STREAM: &str = "GANTRY_DEAD_EVENTS";
/// Subjects of [`DEAD_EVENTS_STREAM`].
pub const DEAD_EVENTS_STREAM_SUBJECTS: [&str; 1] = ["gantry.dead.events.job.*"];
/// Subject a dead letter of `job_id`'s events is kept under.
pub fn dead_event_subject(job_id: &str) -> String {
    format!("gantry.dead.events.job.{job_id}")
}
/// The registry's durable consumer of [`EVENTS_STREAM`], pulled in batches by every replica.
pub const EVENTS_CONSUMER: &str = "registry-job-events";
/// Object store of dataset snapshots, keyed by content hash (`<sha256>.tar`).
pub const DATASETS_BUCKET: &str = "gantry-datasets";
/// Object store of listed model versions' weights; only the registry writes it, copying a
/// completion's weights from [`UPLOADS_BUCKET`] once their digest and size check out.
pub const MODELS_BUCKET: &str = "gantry-models";
/// Object store the nodes write to: each delivery's weights and each job's checkpoint. A node
/// cannot write (or purge) [`MODELS_BUCKET`], so no node can touch a listed model.
pub const UPLOADS_BUCKET: &str = "gantry-uploads";
/// How long a trainer may go without acking before its job is redelivered, seconds. Trainers
/// send in-progress acks at a third of this.
pub const ACK_WAIT_SECS: u64 = 30;
/// Deliveries of a job before it is failed (one first try and two retries).
pub const MAX_DELIVER: i64 = 3;
/// JetStream's advisory for a message that reached its max deliveries, for [`JOBS_STREAM`].
pub fn max_deliveries_advisory(consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.{consumer}")
}
/// Wildcard of [`max_deliveries_advisory`] over every jobs consumer.
pub const MAX_DELIVERIES_ADVISORY: &str =
    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.GANTRY_JOBS.*";

/// Which backend a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum JobDriver {
    /// NVIDIA GPUs.
    Cuda,
    /// AMD GPUs.
    Rocm,
    /// CPU only.
    Cpu,
    /// Whichever node takes it first.
    Any,
}

impl JobDriver {
    /// `cuda`, `rocm`, `cpu` or `any`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobDriver::Cuda => "cuda",
            JobDriver::Rocm => "rocm",
            JobDriver::Cpu => "cpu",
            JobDriver::Any => "any",
        }
    }

    /// Parse `cuda`, `rocm`, `cpu` or `any`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cuda" => Some(Self::Cuda),
            "rocm" => Some(Self::Rocm),
            "cpu" => Some(Self::Cpu),
            // `auto`, the word an older `set_driver` used, is accepted for `any`.
            "any" | "auto" => Some(Self::Any),
            _ => None,
        }
    }

    /// All four.
    pub const ALL: [JobDriver; 4] = [
        JobDriver::Cuda,
        JobDriver::Rocm,
        JobDriver::Cpu,
        JobDriver::Any,
    ];
}

/// Subject a training job for `driver` is published on.
pub fn train_subject(driver: JobDriver) -> String {
    format!("gantry.jobs.train.{}", driver.as_str())
}

/// Subject of analysis jobs for `driver`.
pub fn analyze_subject(driver: JobDriver) -> String {
    format!("gantry.jobs.analyze.{}", driver.as_str())
}

/// Durable pull consumer of analysis jobs for `driver`, shared by every node serving it.
pub fn analyze_consumer(driver: JobDriver) -> String {
    format!("analyze-{}", driver.as_str())
}

/// Durable pull consumer of training jobs for `driver`, shared by every trainer serving it.
pub fn train_consumer(driver: JobDriver) -> String {
    format!("train-{}", driver.as_str())
}

/// Subject of the events `node_id` sends about `job_id`.
pub fn event_subject(node_id: &str, job_id: &str) -> String {
    format!("gantry.events.node.{node_id}.job.{job_id}")
}

/// The sender the registry's own events (delivery 0) name in their subject; never a node id
/// (those are 32 hex digits).
pub const REGISTRY_SENDER: &str = "registry";

/// Every event subject of `node_id` (what a node may publish to).
pub fn node_events(node_id: &str) -> String {
    format!("gantry.events.node.{node_id}.job.*")
}

/// Every event subject of `job_id`, whichever node sent them (a consumer's filter).
pub fn job_events(job_id: &str) -> String {
    format!("gantry.events.node.*.job.{job_id}")
}

/// The node an event subject names, if it is one.
pub fn event_sender(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("gantry.events.node.")?;
    let (node, job) = rest.split_once(".job.")?;
    (!node.is_empty() && !node.contains('.') && !job.is_empty() && !job.contains('.'))
        .then_some(node)
}

/// Core NATS subject on which the registry announces a job's [`JobRecord`] once the job is
/// over and settled: the model version listed, or the refund given (`refunded` says whether it
/// went through). A held submission answers from this, never from a trainer's raw event, so it
/// cannot answer ahead of the registry; it also reads the job every few seconds, in case an
/// announcement is lost.
pub fn settled_subject(job_id: &str) -> String {
    format!("gantry.status.job.{job_id}")
}

/// Every registry replica subscribes to this wildcard of [`settled_subject`] to keep its node
/// counters in step with the replica that recorded the end.
pub const SETTLED_SUBJECTS: &str = "gantry.status.job.*";

/// Core NATS subject on which a cancellation is announced to every trainer.
pub fn cancel_subject(job_id: &str) -> String {
    format!("gantry.control.job.{job_id}.cancel")
}

/// Trainers subscribe to this wildcard of [`cancel_subject`].
pub const CANCEL_SUBJECTS: &str = "gantry.control.job.*.cancel";

/// Core NATS subject on which the api announces that a job for `driver` was queued, once
/// JetStream has stored it. It carries nothing (the job itself is had from the queue): a trainer
/// with a free slot that serves `driver` asks the consumer at once instead of at its next look.
pub fn queued_subject(driver: JobDriver) -> String {
    format!("gantry.control.jobs.queued.{}", driver.as_str())
}

/// Trainers subscribe to this wildcard of [`queued_subject`].
pub const QUEUED_SUBJECTS: &str = "gantry.control.jobs.queued.*";

/// The driver a [`queued_subject`] names.
pub fn queued_driver(subject: &str) -> Option<JobDriver> {
    let d = subject.strip_prefix("gantry.control.jobs.queued.")?;
    JobDriver::ALL.into_iter().find(|j| j.as_str() == d)
}

/// Training settings, with their bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "TrainParamsOut"))]
pub struct TrainParams {
    /// Passes over the data, 1–200 (default 10).
    pub epochs: u32,
    /// Images per step, 1–1024 (default 32).
    pub batch_size: u32,
    /// Adam learning rate, (0, 1] (default 0.003).
    pub learning_rate: f64,
    /// Images are resized to this square, 16–512. Absent: chosen from the data by the trainer
    /// (the median side of its images, rounded to a multiple of 8, within 16–128); the model
    /// card says which.
    // Older records always hold a number (64 was the default).
    #[serde(default)]
    pub image_size: Option<u32>,
    /// Share of each class held out for validation, [0.05, 0.5] (default 0.2).
    pub validation_split: f64,
    /// Shift training images by a few pixels at random (up to an eighth of their side), which
    /// keeps any class (default true).
    // Records from before augmentation existed read as true.
    #[serde(default = "yes")]
    pub augment: bool,
    /// Flip training images left to right at random (default false: for digits, arrows or text
    /// a mirror image can be another class).
    #[serde(default)]
    pub hflip: bool,
    /// Mixed precision: bf16 autocast of the forward pass on GPUs that support it (default
    /// false). Ignored on CPU nodes; a GPU without bf16 fails the job.
    #[serde(default)]
    pub bf16: bool,
}

fn yes() -> bool {
    true
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 32,
            learning_rate: 0.003,
            image_size: None,
            validation_split: 0.2,
            augment: true,
            hflip: false,
            bf16: false,
        }
    }
}

/// The message a trainer pulls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainJob {
    /// Job id (also the `Nats-Msg-Id` and the charge's idempotency key).
    pub job_id: String,
    /// Who submitted it.
    pub user_id: i64,
    /// Name of the model to create a version of.
    pub output_model: String,
    /// Description for the model card.
    pub description: String,
    /// Requested backend.
    pub driver: JobDriver,
    /// Content hash of the dataset snapshot (object `<hash>.tar` in [`DATASETS_BUCKET`]).
    pub dataset_hash: String,
    /// Class names, sorted (the ImageFolder sub-directories).
    pub classes: Vec<String>,
    /// Training settings.
    pub params: TrainParams,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
}

/// Job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum JobStatus {
    /// Waiting for a trainer.
    Queued,
    /// A trainer is on it.
    Running,
    /// Finished with a model.
    Completed,
    /// Could not finish (see the error); refunded.
    Failed,
    /// Cancelled by its owner or an admin.
    Cancelled,
}

impl JobStatus {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Why a job failed; decides the HTTP status a held submission answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "snake_case"))]
pub enum FailureKind {
    /// The trainer could not use the data (422).
    Data,
    /// The trainer crashed or kept failing, deliveries exhausted (500).
    Crash,
    /// No node took it in time (503).
    NoNode,
    /// Something on our side after the charge: store or publish (503).
    System,
}

/// A per-epoch metric row of a model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u32,
    /// Mean training loss.
    pub loss: f64,
    /// Training accuracy, 0–1.
    pub train_accuracy: f64,
    /// Validation accuracy, 0–1.
    pub val_accuracy: f64,
}

impl JobRecord {
    /// The record of `job` as submitted: queued, with the path as the user named it and the
    /// tokens charged for it.
    pub fn queued(job: &TrainJob, train_path: impl Into<String>, tokens_charged: i64) -> Self {
        Self {
            job_id: job.job_id.clone(),
            user_id: job.user_id,
            output_model: job.output_model.clone(),
            description: job.description.clone(),
            train_path: train_path.into(),
            dataset_hash: job.dataset_hash.clone(),
            driver: job.driver,
            params: job.params.clone(),
            status: JobStatus::Queued,
            tokens_charged,
            refund_due: false,
            refunded: false,
            node: None,
            model_owner: None,
            started_at: None,
            ended_at: None,
            queue_seconds: None,
            run_seconds: None,
            node_id: None,
            delivery: 0,
            progress: None,
            checkpoint_epoch: 0,
            model: None,
            error: None,
            failure_kind: None,
            created_at: job.submitted_at,
            updated_at: job.submitted_at,
            queue_position: None,
            waiting_reason: None,
            kind: JobKind::Train,
            analysis: None,
        }
    }
}

impl JobRecord {
    /// The record of an analysis `job` as submitted: queued, kind `analyze`, with its input as
    /// the user named it. It reuses a training job's fields where they mean the same: the
    /// model's name, the input path (`train_path`) and its snapshot (`dataset_hash`, so the
    /// snapshot is kept while the job waits).
    pub fn queued_analysis(
        job: &crate::analysis::AnalyzeJob,
        input_path: impl Into<String>,
        tokens_charged: i64,
    ) -> Self {
        let input_path = input_path.into();
        let name = job
            .model
            .rsplit_once('@')
            .map_or(job.model.as_str(), |(name, _)| name);
        let train = TrainJob {
            job_id: job.job_id.clone(),
            user_id: job.user_id,
            output_model: name.to_owned(),
            description: format!("analysis of {} images with {}", job.images, job.model),
            driver: job.driver,
            dataset_hash: job.input_hash.clone(),
            classes: Vec::new(),
            params: TrainParams::default(),
            submitted_at: job.submitted_at,
        };
        Self {
            kind: JobKind::Analyze,
            analysis: Some(crate::analysis::AnalysisSpec {
                model: job.model.clone(),
                input_path: input_path.clone(),
                images: job.images,
                top_k: job.top_k,
            }),
            ..Self::queued(&train, input_path, tokens_charged)
        }
    }
}

/// A training job.
// As the registry keeps it; the api serves it as the `Job` schema, whose descriptions are these
// doc comments (details for readers of the contract are in plain comments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "Job"))]
pub struct JobRecord {
    /// Job id.
    pub job_id: String,
    /// Owner.
    pub user_id: i64,
    /// Model name.
    pub output_model: String,
    /// Description.
    pub description: String,
    /// The dataset, as named.
    // As the user named it: `/datasets/shapes`.
    pub train_path: String,
    /// The dataset's content hash.
    pub dataset_hash: String,
    /// Requested backend.
    pub driver: JobDriver,
    /// Settings.
    pub params: TrainParams,
    /// `queued`, `running`, `completed`, `failed` or `cancelled`.
    pub status: JobStatus,
    /// Tokens charged.
    // 0 for admins.
    pub tokens_charged: i64,
    /// Whether the charge is to be given back: the job failed, or was cancelled before a node
    /// took it (a job that started training keeps its charge when cancelled).
    #[serde(default, deserialize_with = "crate::registry::tolerant_bool")]
    #[cfg_attr(feature = "openapi", oai(skip))]
    pub refund_due: bool,
    /// Whether the charge was refunded.
    #[serde(default, deserialize_with = "crate::registry::tolerant_bool")]
    pub refunded: bool,
    /// The node on it (its name).
    // The node working on it, or that finished it.
    pub node: Option<String>,
    /// That node's id.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Deliveries of the job so far.
    // The latest delivery seen: results from older ones are ignored.
    #[serde(default)]
    pub delivery: u64,
    /// The latest progress: epoch, step, total steps, loss, accuracies, samples/s, ETA.
    pub progress: Option<JobProgress>,
    /// Last checkpointed epoch.
    #[serde(default)]
    pub checkpoint_epoch: u32,
    /// The model version it produced.
    pub model: Option<ModelVersion>,
    /// The user whose model it trains into, when not its submitter's (an admin training into
    /// another user's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub model_owner: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The failure's kind: `data`, `crash`, `no_node`, `system`.
    pub failure_kind: Option<FailureKind>,
    /// Submitted.
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_ms")
    )]
    pub created_at: DateTime<Utc>,
    /// Last change.
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_ms")
    )]
    pub updated_at: DateTime<Utc>,
    /// When a node first started it (absent while it waits, and for a job no node took).
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_ms_opt")
    )]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended: completed, failed or cancelled.
    #[serde(default)]
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_ms_opt")
    )]
    pub ended_at: Option<DateTime<Utc>>,
    /// Seconds it waited in the queue: from `created_at` to `started_at` (or to its end, for a
    /// job no node took).
    #[serde(default)]
    pub queue_seconds: Option<f64>,
    /// Seconds it ran: from `started_at` to `ended_at`, or to its last change while it runs.
    #[serde(default)]
    pub run_seconds: Option<f64>,
    /// Among queued jobs of its driver, 1 = next.
    // Listings only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub queue_position: Option<u64>,
    /// Why a queued job waits (no node for its driver, all slots busy); listings only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub waiting_reason: Option<WaitingReason>,
    /// `train`, or `analyze` for a queued analysis (its results at `/jobs/{id}/results`).
    #[serde(default)]
    pub kind: JobKind,
    /// An analysis job's model, images and labels per image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub analysis: Option<crate::analysis::AnalysisSpec>,
}

/// What a job does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum JobKind {
    /// Trains a model version.
    #[default]
    Train,
    /// Classifies images with a model version (an analysis too large to answer at once).
    Analyze,
}

impl JobRecord {
    /// Date a start or an end the change just applied made by `at`, when the node says it
    /// happened, kept between the job's creation and `now`: the registry may apply a node's
    /// events late and several in one write, so its own clock would date two jobs of one slot
    /// as running at once, and a node's clock is never believed past what the registry saw.
    pub fn mark_times(&mut self, at: DateTime<Utc>, now: DateTime<Utc>) {
        let at = at.clamp(self.created_at.min(now), now);
        if self.started_at.is_none() && self.node_id.is_some() {
            self.started_at = Some(at);
        }
        if self.ended_at.is_none() && self.status.is_final() {
            self.ended_at = Some(self.started_at.map_or(at, |s| at.max(s)));
        }
    }

    /// Mark when it started and ended, as a change at `now` leaves it, and its queue and run
    /// times as of `now`.
    pub fn stamp(&mut self, now: DateTime<Utc>) {
        if self.started_at.is_none() && self.node_id.is_some() {
            self.started_at = Some(now);
        }
        if self.ended_at.is_none() && self.status.is_final() {
            self.ended_at = Some(now);
        }
        let secs = |from: DateTime<Utc>, to: DateTime<Utc>| {
            ((to - from).num_milliseconds().max(0) as f64) / 1000.0
        };
        let queue_end = self.started_at.or(self.ended_at).unwrap_or(now);
        self.queue_seconds = Some(secs(self.created_at, queue_end));
        self.run_seconds = self
            .started_at
            .map(|s| secs(s, self.ended_at.unwrap_or(now)));
    }

    /// The user whose model the job trains into.
    pub fn model_owner(&self) -> i64 {
        self.model_owner.unwrap_or(self.user_id)
    }
}

/// Registry endpoint names for jobs and models, relative to [`crate::subjects::REGISTRY_V1`].
pub mod subjects {
    /// [`super::JobRecord`] (status `queued`) → [`super::JobRecord`]. Creating an existing id
    /// answers the stored record unchanged (idempotent submissions).
    pub const JOBS_CREATE: &str = "jobs.create";
    /// [`super::JobRef`] → [`super::JobRecord`] (with queue position). Unknown: `not_found`.
    pub const JOBS_GET: &str = "jobs.get";
    /// [`super::JobQuery`] → [`super::JobList`].
    pub const JOBS_LIST: &str = "jobs.list";
    /// [`super::JobRef`] → [`super::JobRecord`]: marks it cancelled (a final job: `conflict`),
    /// announces it on [`super::cancel_subject`], refunds it if training had not started.
    pub const JOBS_CANCEL: &str = "jobs.cancel";
    /// [`super::FailJob`] → [`super::JobRecord`]: the api failing a job it could not publish.
    pub const JOBS_FAIL: &str = "jobs.fail";
    /// [`crate::analysis::ResultsQuery`] → [`crate::analysis::ResultsPage`]: an analysis
    /// job's results by image index. Unknown job, or not an analysis: `not_found`.
    pub const JOBS_RESULTS: &str = "jobs.results";
    /// [`super::ModelQuery`] → [`super::ModelList`].
    pub const MODELS_LIST: &str = "models.list";
    /// [`super::ModelRef`] → [`super::ModelDetail`]. Unknown: `not_found`.
    pub const MODELS_GET: &str = "models.get";
}

/// Names a job; `user_id` set limits it to that owner (others get `not_found`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRef {
    /// Job id.
    pub job_id: String,
    /// Only this owner's.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// `jobs.get` only: the caller wants the record as stored, without `queue_position` and
    /// `waiting_reason` (a queued job's position is a count of the store).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bare: bool,
}

/// `jobs.fail` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailJob {
    /// Job id.
    pub job_id: String,
    /// Why.
    pub error: String,
    /// Kind.
    pub kind: FailureKind,
}

/// `jobs.list` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobQuery {
    /// Only this owner's jobs.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// Only jobs in this state.
    #[serde(default)]
    pub status: Option<JobStatus>,
    /// Only jobs submitted at or after this time.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// Only jobs submitted before this time.
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Page size (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Skip.
    #[serde(default)]
    pub offset: u64,
}

/// `jobs.list` reply: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    /// This page.
    pub jobs: Vec<JobRecord>,
    /// Matching jobs in all.
    pub total: u64,
}

/// Object key of the weights a delivery of a job produced (a model version points at it). Keyed
/// by delivery, so a node that lost its lease and finishes late writes beside the accepted
/// weights, never over them.
pub fn weights_key(job_id: &str, delivery: u64) -> String {
    format!("jobs/{job_id}/{delivery}/model.safetensors")
}

/// Object key of a job's latest checkpoint.
pub fn checkpoint_key(job_id: &str) -> String {
    format!("checkpoints/{job_id}/latest")
}

/// Object key of a dataset snapshot.
pub fn dataset_key(hash: &str) -> String {
    format!("{hash}.tar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_and_end_are_dated_by_the_node_within_what_the_registry_saw() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let job = TrainJob {
            job_id: "j".into(),
            user_id: 1,
            output_model: "m".into(),
            description: String::new(),
            driver: JobDriver::Any,
            dataset_hash: "h".into(),
            classes: vec![],
            params: TrainParams::default(),
            submitted_at: t(0),
        };
        let mut r = JobRecord::queued(&job, "/d", 0);
        r.node_id = Some("n".into());
        r.mark_times(t(5), t(9));
        assert_eq!(r.started_at, Some(t(5)), "the node's time, applied later");
        // A node's clock before the job existed, or ahead of the registry's, is not believed.
        let mut early = JobRecord::queued(&job, "/d", 0);
        early.node_id = Some("n".into());
        early.mark_times(t(-60), t(9));
        assert_eq!(early.started_at, Some(t(0)));
        r.status = JobStatus::Completed;
        r.mark_times(t(3600), t(12));
        assert_eq!(r.ended_at, Some(t(12)));
        r.stamp(t(20));
        assert_eq!((r.queue_seconds, r.run_seconds), (Some(5.0), Some(7.0)));
    }

    #[test]
    fn events_are_tagged_and_flat() {
        let e = JobEvent {
            job_id: "j".into(),
            delivery: 2,
            at: Utc::now(),
            kind: JobEventKind::Cancelled,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "cancelled");
        assert_eq!(v["delivery"], 2);
        assert!(e.is_final());
        let back: JobEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn an_event_kinds_name_is_its_type_on_the_wire() {
        let kinds = [
            JobEventKind::Started {
                node: "n".into(),
                node_id: "i".into(),
                driver: "cpu".into(),
                resumed_from_epoch: 0,
            },
            JobEventKind::Failed {
                error: "e".into(),
                kind: FailureKind::Data,
            },
            JobEventKind::Cancelled,
        ];
        for kind in kinds {
            assert_eq!(serde_json::to_value(&kind).unwrap()["type"], kind.name());
        }
    }

    #[test]
    fn a_queued_announcement_names_its_driver() {
        for d in JobDriver::ALL {
            assert_eq!(queued_driver(&queued_subject(d)), Some(d));
            assert_eq!(
                queued_subject(d).rsplit_once('.').map(|(head, _)| head),
                QUEUED_SUBJECTS.strip_suffix(".*")
            );
        }
        assert_eq!(queued_driver("gantry.control.jobs.queued.auto"), None);
        assert_eq!(queued_driver("gantry.control.jobs.queued."), None);
        assert_eq!(queued_driver(&cancel_subject("cpu")), None);
    }

    #[test]
    fn subjects_do_not_overlap_between_streams() {
        assert_eq!(train_subject(JobDriver::Cuda), "gantry.jobs.train.cuda");
        assert!(event_subject("n", "x").starts_with("gantry.events.node.n.job."));
        assert_eq!(event_sender(&event_subject("n1", "j1")), Some("n1"));
        assert_eq!(event_sender("gantry.events.node..job.j"), None);
        assert_eq!(event_sender("gantry.events.job.j"), None);
        // Core NATS announcements stay out of both streams.
        for core in [
            cancel_subject("x"),
            settled_subject("x"),
            queued_subject(JobDriver::Any),
        ] {
            assert!(
                !core.starts_with("gantry.jobs.") && !core.starts_with("gantry.events."),
                "{core}"
            );
        }
    }
}
