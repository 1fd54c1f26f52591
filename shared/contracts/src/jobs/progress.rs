//! [`JobProgress`]: a job's latest progress as its record keeps it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{JobEvent, JobEventKind};

/// A job's latest progress: its last `progress` event, whole, as it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct JobProgress {
    /// The job.
    pub job_id: String,
    /// The delivery it comes from.
    pub delivery: u64,
    /// When.
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_ms")
    )]
    pub at: DateTime<Utc>,
    /// Always `progress`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", oai(rename = "type"))]
    pub kind: ProgressType,
    /// 1-based epoch.
    pub epoch: u32,
    /// Of how many.
    pub epochs: u32,
    /// Step within the whole run.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Recent training loss.
    pub loss: f64,
    /// Training accuracy so far in this epoch.
    pub train_accuracy: f64,
    /// Validation accuracy of the last finished epoch, if any.
    pub val_accuracy: Option<f64>,
    /// Throughput.
    pub samples_per_sec: f64,
    /// Estimated seconds to go.
    pub eta_seconds: f64,
}

/// The `type` of a job's progress: the event it was, `progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
pub enum ProgressType {
    /// A `progress` event.
    Progress,
}

impl JobProgress {
    /// The progress `event` reports, if it is a progress event.
    pub fn of(event: &JobEvent) -> Option<Self> {
        match event.kind {
            JobEventKind::Progress {
                epoch,
                epochs,
                step,
                total_steps,
                loss,
                train_accuracy,
                val_accuracy,
                samples_per_sec,
                eta_seconds,
            } => Some(Self {
                job_id: event.job_id.clone(),
                delivery: event.delivery,
                at: event.at,
                kind: ProgressType::Progress,
                epoch,
                epochs,
                step,
                total_steps,
                loss,
                train_accuracy,
                val_accuracy,
                samples_per_sec,
                eta_seconds,
            }),
            _ => None,
        }
    }
}
