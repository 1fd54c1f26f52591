//! Training: [`train`] fits the [`ResNet`](crate::ResNet) to a [`Dataset`] with Adam, reporting
//! [`Progress`], honouring cancel, and handing out a [`Checkpoint`] after every epoch that a later
//! call resumes from. It drives a [`TrainingSession`] epoch by epoch; the session does the work.
//!
//! It blocks for the whole run (minutes to hours) and uses libtorch's intra-op thread pool, so an
//! async service calls it from `tokio::task::spawn_blocking` (or a thread of its own), never on
//! its async workers.
//!
//! Randomness: weight initialisation uses libtorch's global generator, seeded from
//! [`TrainConfig::seed`]. Shuffling and augmentation use a generator of this run alone, seeded
//! from the seed and the epoch number, so epoch `e` sees the same order whether the run started at
//! epoch 1 or resumed at `e`. `tch::set_num_threads` and `tch::manual_seed` are process-wide: jobs
//! trained concurrently in one process share the thread setting (the last one set wins) and their
//! initial weights are only reproducible when they do not start at the same instant.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tch::Device;

use crate::checkpoint::Checkpoint;
use crate::config::TrainConfig;
use crate::dataset::Dataset;
use crate::error::TrainError;
use crate::progress::Progress;
use crate::session::{TrainedModel, TrainingSession};

/// Trains the classifier on `data` on `device`.
///
/// - `progress` is called after every step and at the end of every epoch (see [`ProgressKind`](crate::ProgressKind)
///   for which events to publish); returning `Break` stops the run within one step with
///   [`TrainError::Cancelled`], and no further callback is made.
/// - `on_checkpoint(epoch, bytes)` is called after every epoch with a serialised [`Checkpoint`],
///   before that epoch's `EpochEnd` event; `Break` cancels too.
/// - `resume`: a checkpoint of an earlier run of the same job; training continues at its next
///   epoch and the metrics history carries on. A checkpoint of the last epoch returns the model
///   without training.
///
/// Blocks until done; see the module docs for threads and randomness.
pub fn train(
    config: &TrainConfig,
    data: &Dataset,
    device: Device,
    progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    on_checkpoint: &mut dyn FnMut(u32, Vec<u8>) -> ControlFlow<()>,
    resume: Option<Checkpoint>,
) -> Result<TrainedModel, TrainError> {
    config.validate()?;
    // tch reports most libtorch failures (a CUDA out-of-memory in a forward pass, say) by
    // panicking; a trainer node wants an error it can report, not a dead worker.
    catch_unwind(AssertUnwindSafe(|| {
        run(config, data, device, progress, on_checkpoint, resume)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(TrainError::Panicked(msg))
    })
}

/// The epochs of one run: train, validate, record, checkpoint, report.
fn run(
    config: &TrainConfig,
    data: &Dataset,
    device: Device,
    progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    on_checkpoint: &mut dyn FnMut(u32, Vec<u8>) -> ControlFlow<()>,
    resume: Option<Checkpoint>,
) -> Result<TrainedModel, TrainError> {
    let mut session = TrainingSession::start(config, data, device, resume)?;
    for epoch in session.remaining_epochs() {
        // A child of the caller's span (the trainer's job span): one per epoch in the trace.
        let _span = tracing::info_span!("train.epoch", otel.name = format!("epoch {epoch}"), epoch)
            .entered();
        let trained = session.train_epoch(epoch, progress)?;
        let val_accuracy = session.evaluate()?;
        session.record(&trained, val_accuracy)?;
        let checkpoint = session.checkpoint(epoch)?;
        if on_checkpoint(epoch, checkpoint.to_bytes()).is_break() {
            return Err(TrainError::Cancelled {
                completed_epochs: epoch,
            });
        }
        if progress(session.epoch_end(&trained, val_accuracy)).is_break() {
            return Err(TrainError::Cancelled {
                completed_epochs: epoch,
            });
        }
    }
    session.finish()
}
