//! What a run tells its caller while it trains: [`Progress`] after every step and epoch, and
//! [`ProgressKind`], which says which of them are worth publishing.

use serde::{Deserialize, Serialize};

/// Why a [`Progress`] event was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// After every training step, so returning `Break` cancels within one step. Not worth
    /// publishing: `loss` and `train_accuracy` are those of the last `Report`/`EpochEnd` (reading
    /// fresh ones would stall a GPU every step).
    Step,
    /// The run's first step, then at least `report_interval_ms` since the last `Report` or
    /// `EpochEnd`: fresh running loss and accuracy of the current epoch. Publish these.
    Report,
    /// An epoch finished: its final loss and accuracy, and `val_accuracy`. Its checkpoint has
    /// already been handed to `on_checkpoint`. Publish these.
    EpochEnd,
}

/// Where a run stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Why this event was sent.
    pub kind: ProgressKind,
    /// Current epoch, counting from 1.
    pub epoch: u32,
    /// Epochs in all.
    pub epochs: u32,
    /// Steps done over the whole job (earlier runs of a resumed job included), counting from 1.
    pub step: u64,
    /// Steps of the whole job.
    pub total_steps: u64,
    /// Steps done in the current epoch.
    pub step_in_epoch: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// Mean training loss of the current epoch so far (see [`ProgressKind::Step`]).
    pub loss: f64,
    /// Training accuracy of the current epoch so far (see [`ProgressKind::Step`]).
    pub train_accuracy: f64,
    /// Validation accuracy; only on `EpochEnd` (and `None` without a validation split).
    pub val_accuracy: Option<f64>,
    /// Training samples per second in this run (validation time not counted).
    pub samples_per_sec: f64,
    /// Estimated seconds until the run ends, validation included.
    pub eta_seconds: f64,
}
