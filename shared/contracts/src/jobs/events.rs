//! [`JobEvent`]: what trainers (and the registry and api, with delivery 0) publish on a job's
//! [`super::event_subject`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EpochMetrics, FailureKind, ModelVersion};

/// What happened to a job; published on [`event_subject`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobEventKind {
    /// A trainer took it (again).
    Started {
        /// The node's name.
        node: String,
        /// The node's id (`gantry.node.<node_id>.*`).
        node_id: String,
        /// The backend it trains on.
        driver: String,
        /// The epoch it resumes after (0 for a fresh start).
        resumed_from_epoch: u32,
    },
    /// Training progress.
    Progress {
        /// 1-based epoch.
        epoch: u32,
        /// Of how many.
        epochs: u32,
        /// Step within the whole run.
        step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Recent training loss.
        loss: f64,
        /// Training accuracy so far in this epoch.
        train_accuracy: f64,
        /// Validation accuracy of the last finished epoch, if any.
        val_accuracy: Option<f64>,
        /// Throughput.
        samples_per_sec: f64,
        /// Estimated seconds to go.
        eta_seconds: f64,
    },
    /// An epoch's checkpoint is stored; a redelivered job resumes after it.
    Checkpoint {
        /// The epoch.
        epoch: u32,
        /// Its metrics.
        metrics: EpochMetrics,
    },
    /// Done: the weights are stored. The trainer sends `version: 0`; the registry numbers the
    /// version when it records the job (read the job to learn it).
    Completed {
        /// The version (boxed: it carries the model card, far larger than any other event).
        model: Box<ModelVersion>,
    },
    /// Could not finish.
    Failed {
        /// Why, for the user.
        error: String,
        /// The kind of failure.
        kind: FailureKind,
    },
    /// Stopped by a cancel.
    Cancelled,
    /// Results of an analysis job: those of images `first..first + results.len()` (in the
    /// order of the job's input), at most [`crate::analysis::MAX_BATCH_IMAGES`] per event.
    Results {
        /// Index of the first image.
        first: u64,
        /// One per image, in order.
        results: Vec<crate::analysis::ImageResult>,
    },
    /// An analysis job is done: each of its `images` has its result.
    Analyzed {
        /// How many images were classified.
        images: u64,
    },
}

/// An event of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job_id: String,
    /// The delivery of the job message this comes from (results are fenced by it). The api and
    /// registry use 0 for events they publish themselves.
    pub delivery: u64,
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    #[serde(flatten)]
    pub kind: JobEventKind,
}

impl JobEventKind {
    /// The `type` it travels under: `started`, `progress`, `checkpoint`, `completed`, `failed`,
    /// `cancelled`, `results` or `analyzed`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Progress { .. } => "progress",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Cancelled => "cancelled",
            Self::Results { .. } => "results",
            Self::Analyzed { .. } => "analyzed",
        }
    }
}

impl JobEvent {
    /// Whether this event ends the job.
    pub fn is_final(&self) -> bool {
        matches!(
            self.kind,
            JobEventKind::Completed { .. }
                | JobEventKind::Failed { .. }
                | JobEventKind::Cancelled
                | JobEventKind::Analyzed { .. }
        )
    }
}
