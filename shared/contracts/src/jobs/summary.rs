//! [`JobSummary`]: a job as lists show it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{FailureKind, JobDriver, JobProgress, JobRecord, JobStatus, WaitingReason};

/// A job as lists show it: its state and what it made, without the model's card (the job's
/// own view has everything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct JobSummary {
    /// Job id.
    pub job_id: String,
    /// Owner.
    pub user_id: i64,
    /// Model name.
    pub output_model: String,
    /// The user whose model it trains into, when not its submitter's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub model_owner: Option<i64>,
    /// The dataset, as named.
    pub train_path: String,
    /// Requested backend.
    pub driver: JobDriver,
    /// `queued`, `running`, `completed`, `failed` or `cancelled`.
    pub status: JobStatus,
    /// Tokens charged.
    pub tokens_charged: i64,
    /// Whether the charge was refunded.
    pub refunded: bool,
    /// The node on it (its name).
    pub node: Option<String>,
    /// The latest progress.
    pub progress: Option<JobProgress>,
    /// The model version it produced.
    pub model: Option<crate::models::ModelBrief>,
    /// Why it failed.
    pub error: Option<String>,
    /// The failure's kind: `data`, `crash`, `no_node`, `system`.
    pub failure_kind: Option<FailureKind>,
    /// Seconds it waited for a node.
    pub queue_seconds: Option<f64>,
    /// Seconds it ran.
    pub run_seconds: Option<f64>,
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
    /// Among queued jobs of its driver, 1 = next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub queue_position: Option<u64>,
    /// Why a queued job waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub waiting_reason: Option<WaitingReason>,
}

impl From<JobRecord> for JobSummary {
    fn from(j: JobRecord) -> Self {
        Self {
            job_id: j.job_id,
            user_id: j.user_id,
            output_model: j.output_model,
            model_owner: j.model_owner,
            train_path: j.train_path,
            driver: j.driver,
            status: j.status,
            tokens_charged: j.tokens_charged,
            refunded: j.refunded,
            node: j.node,
            progress: j.progress,
            model: j.model.as_ref().map(crate::models::ModelBrief::from),
            error: j.error,
            failure_kind: j.failure_kind,
            queue_seconds: j.queue_seconds,
            run_seconds: j.run_seconds,
            created_at: j.created_at,
            updated_at: j.updated_at,
            queue_position: j.queue_position,
            waiting_reason: j.waiting_reason,
        }
    }
}
