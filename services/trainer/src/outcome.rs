//! The outcome policy: how one job ended on this node ([`Outcome`]) and, for a run that failed,
//! which end that is ([`classify`]): the data's fault (fail the job: no node would do better), a
//! cancel, a shutdown (hand it back), or a fault of this node (retry, here or elsewhere).
//! The run carries an outcome out (events, acks, checkpoint clean-up).

use gantry_contracts::jobs::{FailureKind, JobStatus, ModelVersion};
use gantry_training::{DatasetError, TrainError};

use crate::control::JobControl;

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

    /// The end of a job that `control` interrupted, if it was: a cancel wins over a shutdown.
    pub fn interrupted(control: &JobControl) -> Option<Outcome> {
        if control.is_cancelled() {
            Some(Outcome::Cancelled)
        } else if control.is_stopping() {
            Some(Outcome::HandedBack)
        } else {
            None
        }
    }

    /// A failure the job's input is to blame for.
    pub fn data_failure(error: impl ToString) -> Outcome {
        Outcome::Failed {
            error: error.to_string(),
            kind: FailureKind::Data,
        }
    }
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
        RunError::Dataset(e) if e.is_data_error() => Outcome::data_failure(e),
        // The job's parameters are out of the library's bounds: no node would do better.
        RunError::Train(e @ TrainError::InvalidConfig(_)) => Outcome::data_failure(e),
        RunError::Train(e) if e.is_data_error() => Outcome::data_failure(e),
        other => Outcome::Retry(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!c.is_interrupted() && Outcome::interrupted(&c).is_none());
        c.stop();
        assert!(
            c.is_interrupted() && matches!(Outcome::interrupted(&c), Some(Outcome::HandedBack))
        );
        c.cancel();
        assert!(matches!(Outcome::interrupted(&c), Some(Outcome::Cancelled)));
    }
}
