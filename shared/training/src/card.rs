//! The model card stored beside a model's weights: what the network is, what it expects as input,
//! how it was trained and how well it did. It is plain serde data so services that never link
//! libtorch can read it; `infer::load_model` rebuilds the network from it.

use serde::{Deserialize, Serialize};

use crate::preprocess::Normalization;

/// Metrics of one finished epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch, counting from 1.
    pub epoch: u32,
    /// Mean training loss (cross-entropy) over the epoch.
    pub loss: f64,
    /// Training accuracy over the epoch (in training mode, so it trails the weights).
    pub train_accuracy: f64,
    /// Validation accuracy after the epoch; `None` when there is no validation split.
    pub val_accuracy: Option<f64>,
    /// Training samples per second over the epoch's training steps (validation not counted).
    pub samples_per_sec: f64,
    /// Wall-clock seconds of the epoch, validation included.
    pub seconds: f64,
}

/// How the model was trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Epochs trained in all (over every resumed run).
    pub epochs: u32,
    /// Batch size.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Learning-rate schedule (`constant` or `cosine`).
    pub lr_schedule: String,
    /// Seed of weight initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Whether training images were randomly shifted (cards written before shifts existed used
    /// this for horizontal flips).
    pub augment: bool,
    /// Whether random horizontal flips were applied.
    #[serde(default)]
    pub hflip: bool,
    /// Whether the forward pass ran under bf16 autocast (asked for and on a GPU).
    #[serde(default)]
    pub bf16: bool,
    /// The epoch whose weights these are: the one with the best validation accuracy (the later
    /// one on a tie), or the last epoch without a validation split. `None` on cards written
    /// before the best epoch was kept (those hold the last epoch's weights).
    #[serde(default)]
    pub best_epoch: Option<u32>,
    /// Images trained on.
    pub train_samples: usize,
    /// Images validated on.
    pub val_samples: usize,
    /// The device of the last run, as `tch` writes it (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// The epoch a resumed run started from, if the last run was resumed from a checkpoint.
    pub resumed_from_epoch: Option<u32>,
}

/// Everything needed to use, and judge, a trained model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Version of this card's layout.
    pub card_version: u32,
    /// Network architecture name; `infer::load_model` refuses names it does not know.
    pub architecture: String,
    /// Channels of the network's first stage (the network's width).
    pub base_width: i64,
    /// Class names; prediction `i` means `classes[i]`.
    pub classes: Vec<String>,
    /// Input side in pixels: images are resized to `image_size` x `image_size`.
    pub image_size: u32,
    /// Per-channel normalisation of the input.
    pub normalization: Normalization,
    /// The input in words, for people reading the card.
    pub input: String,
    /// Per-epoch metrics, oldest first.
    pub metrics: Vec<EpochMetrics>,
    /// How it was trained.
    pub training: TrainingSummary,
    /// Free text from the job's submitter (filled by the caller).
    pub description: String,
    /// The hash the training dataset is known by where the model is stored. `train` fills in the
    /// loaded dataset's [`ContentHash`](crate::ContentHash); a service that names datasets
    /// otherwise replaces it (Gantry's trainer writes the snapshot hash its job names, so a
    /// stored card and its job agree).
    pub dataset_hash: String,
    /// Id of the job that trained it (filled by the caller).
    pub job_id: String,
    /// Node that trained it (filled by the caller).
    pub node: String,
}

/// Current [`ModelCard::card_version`].
pub const CARD_VERSION: u32 = 1;

/// The value of [`ModelCard::input`].
pub const INPUT_DESCRIPTION: &str =
    "RGB image resized to image_size x image_size (bilinear, aspect \
ratio not kept), scaled to [0, 1], then (x - mean) / std per channel; NCHW float32";

impl ModelCard {
    /// Validation accuracy of the weights stored with the card: that of the best epoch, or of
    /// the last epoch on cards without one.
    pub fn final_val_accuracy(&self) -> Option<f64> {
        match self.training.best_epoch {
            Some(best) => self
                .metrics
                .iter()
                .find(|m| m.epoch == best)
                .and_then(|m| m.val_accuracy),
            None => self.metrics.last().and_then(|m| m.val_accuracy),
        }
    }
}
