//! The blocking side of a run: the job's training settings, then loading the dataset and
//! training it on a blocking thread ([`train_blocking`]), handing progress and checkpoints to the
//! async side through a channel ([`Update`]) and stopping when the job's [`JobControl`] says so.

use std::ops::ControlFlow;
use std::path::Path;

use gantry_contracts::jobs::{JobEventKind, TrainJob};
use gantry_contracts::registry::Driver;
use gantry_training::{
    Checkpoint, Dataset, Listing, LoadOptions, Progress, TrainConfig, TrainError,
};
use tokio::sync::mpsc;

use crate::control::JobControl;
use crate::outcome::RunError;
use crate::report::progress_event;

/// What the training thread hands the publisher.
pub enum Update {
    /// A `Progress` event worth publishing.
    Progress(JobEventKind),
    /// A finished epoch's checkpoint, to store before it is announced.
    Checkpoint {
        /// The epoch.
        epoch: u32,
        /// The serialised [`Checkpoint`].
        bytes: Vec<u8>,
    },
}

/// The training settings of a job.
pub fn train_config(job: &TrainJob, threads: usize) -> TrainConfig {
    TrainConfig {
        epochs: job.params.epochs,
        batch_size: job.params.batch_size as usize,
        learning_rate: job.params.learning_rate,
        augment: job.params.augment,
        hflip: job.params.hflip,
        bf16: job.params.bf16,
        threads: Some(threads),
        ..TrainConfig::default()
    }
}

/// How a job's dataset is decoded and split (the split is deterministic: a resumed job, on any
/// node, validates on the same images). Without an `image_size` in the job, the size is chosen
/// from the data when it is loaded ([`train_blocking`]); the one here is then a placeholder.
pub fn load_options(job: &TrainJob) -> LoadOptions {
    LoadOptions {
        image_size: job.params.image_size.unwrap_or(64),
        validation_split: job.params.validation_split,
        ..LoadOptions::default()
    }
}

/// Load and train, on the blocking thread. With `choose_size`, the image size is chosen from the
/// dataset's image headers ([`gantry_training::choose_image_size`]: the same files give the same
/// size, so a resumed job's checkpoint still fits). A checkpoint that does not fit the job
/// (another network, classes or size) is dropped and the job trains from the start.
#[allow(clippy::too_many_arguments)]
pub fn train_blocking(
    dataset: &Path,
    options: &LoadOptions,
    choose_size: bool,
    config: &TrainConfig,
    backend: Driver,
    resume: Option<Checkpoint>,
    control: &JobControl,
    tx: mpsc::Sender<Update>,
) -> Result<gantry_training::TrainedModel, RunError> {
    let device = gantry_training::pick_device(backend.as_str())?;
    let listing = Listing::scan(dataset, &options.limits)?;
    let mut options = options.clone();
    if choose_size {
        options.image_size = gantry_training::choose_image_size(&listing, &options.limits)?;
    }
    let data = Dataset::from_listing(&listing, &options)?;
    tracing::info!(
        classes = data.classes.len(), train = data.train.len(), validation = data.validation.len(),
        image_size = data.image_size, chosen = choose_size,
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
    use chrono::Utc;
    use gantry_contracts::jobs::JobDriver;

    #[test]
    fn a_job_of_the_defaults_trains_within_the_librarys_bounds() {
        let job = TrainJob {
            job_id: "j1".into(),
            user_id: 7,
            output_model: "shapes".into(),
            description: String::new(),
            driver: JobDriver::Any,
            dataset_hash: "ab".repeat(32),
            classes: vec!["a".into(), "b".into()],
            params: Default::default(),
            submitted_at: Utc::now(),
        };
        let config = train_config(&job, 3);
        assert_eq!(
            (config.epochs, config.batch_size, config.threads),
            (10, 32, Some(3))
        );
        assert_eq!(
            (config.augment, config.hflip, config.bf16),
            (true, false, false)
        );
        assert!(config.validate().is_ok());
        assert_eq!(job.params.image_size, None, "chosen from the data");
        assert!(load_options(&job).image_size >= 16);
    }
}
