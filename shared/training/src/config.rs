//! The hyper-parameters of a training run: [`TrainConfig`], with the bounds it is checked
//! against, and the learning-rate schedule [`LrSchedule`].

use serde::{Deserialize, Serialize};

use crate::error::TrainError;

/// Hyper-parameters of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Epochs in all (a resumed run trains the ones its checkpoint lacks); 1..=1000.
    pub epochs: u32,
    /// Images per step; 1..=4096.
    pub batch_size: usize,
    /// Adam's learning rate; in (0, 1].
    pub learning_rate: f64,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// How the learning rate moves over the run.
    pub lr_schedule: LrSchedule,
    /// Light augmentation of training images: each is shifted by a random whole number of
    /// pixels, up to an eighth of its side in each direction, its border pixels repeated into
    /// the gap. On by default: a small shift keeps the class of shapes, digits, arrows and text
    /// alike.
    pub augment: bool,
    /// Random horizontal flips of training images. Off by default: for some data (arrows,
    /// digits, text) a mirror image is another class.
    pub hflip: bool,
    /// bf16 autocast (mixed precision) of the forward pass on GPUs that support it. Off by
    /// default; ignored on the CPU (the card records whether it was used). A GPU without bf16
    /// fails the run with [`TrainError::InvalidConfig`].
    pub bf16: bool,
    /// libtorch intra-op threads, set process-wide with `tch::set_num_threads` at the start of
    /// the run; `None` leaves the current setting (by default one per core).
    pub threads: Option<usize>,
    /// Width of the network's first stage (see [`crate::model`]); 4..=256.
    pub base_width: i64,
    /// Least time between [`ProgressKind::Report`](crate::ProgressKind::Report) events, in milliseconds.
    pub report_interval_ms: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 32,
            learning_rate: 3e-3,
            lr_schedule: LrSchedule::Cosine,
            seed: 0,
            augment: true,
            hflip: false,
            bf16: false,
            threads: None,
            base_width: 16,
            report_interval_ms: 2_000,
        }
    }
}

impl TrainConfig {
    /// Checks every field is within its bounds.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        if !(1..=1000).contains(&self.epochs) {
            return bad(format!(
                "epochs must be within 1..=1000, not {}",
                self.epochs
            ));
        }
        if !(1..=4096).contains(&self.batch_size) {
            return bad(format!(
                "batch_size must be within 1..=4096, not {}",
                self.batch_size
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad(format!(
                "learning_rate must be within (0, 1], not {}",
                self.learning_rate
            ));
        }
        if self.threads == Some(0) || self.threads.is_some_and(|t| t > 1024) {
            return bad("threads must be within 1..=1024".into());
        }
        if !(4..=256).contains(&self.base_width) {
            return bad(format!(
                "base_width must be within 4..=256, not {}",
                self.base_width
            ));
        }
        Ok(())
    }
}

/// Learning-rate schedule over the whole job (so a resumed run picks up where it was).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// `learning_rate` throughout.
    Constant,
    /// Half a cosine from `learning_rate` at the first step down to zero after the last, set
    /// every step. The default: the last epochs then settle instead of bouncing around a minimum,
    /// which makes the final validation accuracy far less noisy.
    #[default]
    Cosine,
}

impl LrSchedule {
    /// The learning rate before step `step` (counting from 0) of `total` steps.
    pub fn rate(self, base: f64, step: u64, total: u64) -> f64 {
        match self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}
