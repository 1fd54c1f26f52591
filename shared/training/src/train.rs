//! Training: [`train`] fits the [`ResNet`] to a [`Dataset`] with Adam, reporting [`Progress`],
//! honouring cancel, and handing out a [`Checkpoint`] after every epoch that a later call resumes
//! from.
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
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::card::{EpochMetrics, ModelCard, TrainingSummary, CARD_VERSION, INPUT_DESCRIPTION};
use crate::dataset::{Dataset, Split};
use crate::infer::{load_weights, weights_to_bytes};
use crate::model::{NetConfig, ResNet, ARCHITECTURE};

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
    /// Random horizontal flips of training images. Off by default: for some data (arrows,
    /// digits, text) a mirror image is another class.
    pub augment: bool,
    /// libtorch intra-op threads, set process-wide with `tch::set_num_threads` at the start of
    /// the run; `None` leaves the current setting (by default one per core).
    pub threads: Option<usize>,
    /// Width of the network's first stage (see [`crate::model`]); 4..=256.
    pub base_width: i64,
    /// Least time between [`ProgressKind::Report`] events, in milliseconds.
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
            augment: false,
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

/// Why a [`Progress`] event was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// After every training step, so returning `Break` cancels within one step. Not worth
    /// publishing: `loss` and `train_accuracy` are those of the last `Report`/`EpochEnd` (reading
    /// fresh ones would stall a GPU every step).
    Step,
    /// At least `report_interval_ms` since the last `Report` or `EpochEnd`: fresh running loss and
    /// accuracy of the current epoch. Publish these.
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

/// Why a run did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A hyper-parameter is out of bounds.
    #[error("invalid training configuration: {0}")]
    InvalidConfig(String),
    /// The dataset cannot be trained on (for example, no training images).
    #[error("the dataset cannot be trained on: {0}")]
    UnusableData(String),
    /// The checkpoint is for another dataset or network.
    #[error("the checkpoint does not fit this job: {0}")]
    IncompatibleCheckpoint(String),
    /// The checkpoint bytes are not a checkpoint.
    #[error("not a valid checkpoint: {0}")]
    BadCheckpoint(String),
    /// Weights that do not fit the network, or a card naming an unknown architecture.
    #[error("the weights cannot be loaded: {0}")]
    BadWeights(String),
    /// A callback returned `Break`.
    #[error("training was cancelled after {completed_epochs} completed epochs")]
    Cancelled {
        /// Epochs finished (and checkpointed) before the cancel.
        completed_epochs: u32,
    },
    /// The loss became NaN or infinite.
    #[error("training diverged in epoch {epoch} (loss is not finite); try a lower learning_rate")]
    Diverged {
        /// The epoch it happened in.
        epoch: u32,
    },
    /// libtorch reported an error (out of device memory, for one).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A temporary file for the weights could not be written or read.
    #[error("temporary weights file: {0}")]
    Io(#[from] std::io::Error),
    /// libtorch (or a callback) panicked; the run is abandoned.
    #[error("training panicked: {0}")]
    Panicked(String),
}

impl TrainError {
    /// True when the job's input is at fault (HTTP 422 at the edge) rather than the node.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            TrainError::UnusableData(_) | TrainError::Diverged { .. }
        )
    }
}

/// The state after a finished epoch: enough to resume at the next one. The optimiser's moment
/// estimates are not kept (Adam restarts from zero on resume); weights, BatchNorm statistics,
/// metrics and the epoch count are.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: u32,
    /// Metrics of the completed epochs.
    pub metrics: Vec<EpochMetrics>,
    /// Network architecture.
    pub architecture: String,
    /// Network width.
    pub base_width: i64,
    /// Class names, which the resumed dataset must match.
    pub classes: Vec<String>,
    /// Input size, which the resumed dataset must match.
    pub image_size: u32,
    /// Content hash of the dataset trained on (informational).
    pub dataset_hash: String,
    /// Weights (safetensors).
    pub weights: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    epoch: u32,
    metrics: Vec<EpochMetrics>,
    architecture: String,
    base_width: i64,
    classes: Vec<String>,
    image_size: u32,
    dataset_hash: String,
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"GNTRYCK1";

impl Checkpoint {
    /// Serialises to bytes: the 8 bytes `GNTRYCK1`, a little-endian `u64` length, that many bytes
    /// of JSON (everything but the weights), then the safetensors weights.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = CheckpointHeader {
            epoch: self.epoch,
            metrics: self.metrics.clone(),
            architecture: self.architecture.clone(),
            base_width: self.base_width,
            classes: self.classes.clone(),
            image_size: self.image_size,
            dataset_hash: self.dataset_hash.clone(),
        };
        let json = serde_json::to_vec(&header).expect("checkpoint header serialises");
        let mut out = Vec::with_capacity(16 + json.len() + self.weights.len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.weights);
        out
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, TrainError> {
        let bad = |m: &str| TrainError::BadCheckpoint(m.to_string());
        if bytes.len() < 16 || &bytes[..8] != CHECKPOINT_MAGIC {
            return Err(bad("missing the GNTRYCK1 header"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        if len > bytes.len() - 16 {
            return Err(bad("truncated header"));
        }
        let header: CheckpointHeader = serde_json::from_slice(&bytes[16..16 + len])
            .map_err(|e| TrainError::BadCheckpoint(e.to_string()))?;
        if header.metrics.len() != header.epoch as usize {
            return Err(bad("metrics do not match the epoch count"));
        }
        Ok(Checkpoint {
            epoch: header.epoch,
            metrics: header.metrics,
            architecture: header.architecture,
            base_width: header.base_width,
            classes: header.classes,
            image_size: header.image_size,
            dataset_hash: header.dataset_hash,
            weights: bytes[16 + len..].to_vec(),
        })
    }
}

/// A finished run's result.
#[derive(Clone, Debug)]
pub struct TrainedModel {
    /// The card; the caller fills `description`, `job_id`, `node` (and may replace
    /// `dataset_hash`).
    pub card: ModelCard,
    /// The weights as safetensors bytes.
    pub weights: Vec<u8>,
}

/// Trains the classifier on `data` on `device`.
///
/// - `progress` is called after every step and at the end of every epoch (see [`ProgressKind`]
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

/// Running sums of an epoch, kept on the device so steps never wait for the GPU.
struct EpochTotals {
    loss_sum: Tensor,
    correct: Tensor,
    seen: i64,
}

impl EpochTotals {
    fn new(device: Device) -> Self {
        Self {
            loss_sum: Tensor::zeros([], (Kind::Double, device)),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            seen: 0,
        }
    }

    /// Mean loss and accuracy so far (waits for the device).
    fn read(&self) -> Result<(f64, f64), TrainError> {
        let n = self.seen.max(1) as f64;
        let loss = self.loss_sum.f_double_value(&[])? / n;
        let correct = self.correct.f_int64_value(&[])? as f64;
        Ok((loss, correct / n))
    }
}

fn epoch_rng(seed: u64, epoch: u32) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(epoch).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

fn run(
    config: &TrainConfig,
    data: &Dataset,
    device: Device,
    progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    on_checkpoint: &mut dyn FnMut(u32, Vec<u8>) -> ControlFlow<()>,
    resume: Option<Checkpoint>,
) -> Result<TrainedModel, TrainError> {
    let net_config = NetConfig {
        num_classes: data.classes.len() as i64,
        image_size: i64::from(data.image_size),
        base_width: config.base_width,
    };
    net_config.validate().map_err(TrainError::UnusableData)?;
    if data.train.is_empty() {
        return Err(TrainError::UnusableData(
            "the training split is empty".into(),
        ));
    }
    if let Some(threads) = config.threads {
        tch::set_num_threads(threads as i32);
    }
    tch::manual_seed(config.seed as i64);
    if device.is_cuda() {
        tch::Cuda::manual_seed_all(config.seed);
        tch::Cuda::cudnn_set_benchmark(true);
    }

    let vs = nn::VarStore::new(device);
    let net = ResNet::new(&vs.root(), net_config);
    let mut history = Vec::new();
    let mut start_epoch = 1;
    let resumed_from = resume.as_ref().map(|c| c.epoch);
    if let Some(ckpt) = resume {
        check_compatible(&ckpt, config, data)?;
        load_weights(&vs, &ckpt.weights)?;
        start_epoch = ckpt.epoch + 1;
        history = ckpt.metrics;
    }
    let mut opt = nn::Adam::default().build(&vs, config.learning_rate)?;

    let x_train = data.train.images_tensor().f_to_device(device)?;
    let y_train = data.train.labels_tensor().f_to_device(device)?;
    let n_train = data.train.len();
    let batch = config.batch_size.min(n_train);
    let steps_per_epoch = n_train.div_ceil(batch) as u64;
    let total_steps = u64::from(config.epochs) * steps_per_epoch;
    let mut step = u64::from(start_epoch - 1) * steps_per_epoch;

    let report_every = Duration::from_millis(config.report_interval_ms);
    let run_start = Instant::now();
    let mut last_report = run_start;
    let mut steps_this_run = 0u64;
    let mut samples_this_run = 0u64;
    let mut train_time_done = Duration::ZERO; // training time of finished epochs of this run
    let (mut shown_loss, mut shown_acc) = (0.0, 0.0);

    for epoch in start_epoch..=config.epochs {
        let epoch_start = Instant::now();
        let mut rng = epoch_rng(config.seed, epoch);
        let mut order: Vec<i64> = (0..n_train as i64).collect();
        order.shuffle(&mut rng);
        let order = Tensor::from_slice(&order).f_to_device(device)?;
        let mut totals = EpochTotals::new(device);

        for step_in_epoch in 1..=steps_per_epoch {
            let start = ((step_in_epoch - 1) as usize * batch) as i64;
            let len = (batch as i64).min(n_train as i64 - start);
            let idx = order.f_narrow(0, start, len)?;
            let mut xs = x_train.f_index_select(0, &idx)?;
            let ys = y_train.f_index_select(0, &idx)?;
            if config.augment {
                let flips: Vec<bool> = (0..len).map(|_| rng.gen_bool(0.5)).collect();
                let mask = Tensor::from_slice(&flips)
                    .f_to_device(device)?
                    .f_view([len, 1, 1, 1])?;
                xs = xs.f_flip([3])?.f_where_self(&mask, &xs)?;
            }
            opt.set_lr(
                config
                    .lr_schedule
                    .rate(config.learning_rate, step, total_steps),
            );
            let logits = net.forward_t(&xs, true);
            let loss = logits
                .f_log_softmax(-1, Kind::Float)?
                .f_nll_loss::<Tensor>(&ys, None, tch::Reduction::Mean, -100)?;
            opt.backward_step(&loss);
            tch::no_grad(|| -> Result<(), TrainError> {
                totals.loss_sum = totals
                    .loss_sum
                    .f_add(&loss.f_to_kind(Kind::Double)?.f_mul_scalar(len)?)?;
                let hits = logits
                    .f_argmax(-1, false)?
                    .f_eq_tensor(&ys)?
                    .f_sum(Kind::Int64)?;
                totals.correct = totals.correct.f_add(&hits)?;
                Ok(())
            })?;
            totals.seen += len;
            step += 1;
            steps_this_run += 1;
            samples_this_run += len as u64;

            let kind = if last_report.elapsed() >= report_every {
                (shown_loss, shown_acc) = totals.read()?;
                if !shown_loss.is_finite() {
                    return Err(TrainError::Diverged { epoch });
                }
                last_report = Instant::now();
                ProgressKind::Report
            } else {
                ProgressKind::Step
            };
            let train_time = train_time_done + epoch_start.elapsed();
            let event = Progress {
                kind,
                epoch,
                epochs: config.epochs,
                step,
                total_steps,
                step_in_epoch,
                steps_per_epoch,
                loss: shown_loss,
                train_accuracy: shown_acc,
                val_accuracy: None,
                samples_per_sec: samples_this_run as f64 / train_time.as_secs_f64().max(1e-9),
                eta_seconds: eta(run_start, steps_this_run, total_steps - step),
            };
            if progress(event).is_break() {
                return Err(TrainError::Cancelled {
                    completed_epochs: epoch - 1,
                });
            }
        }

        let (loss, train_accuracy) = totals.read()?;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { epoch });
        }
        let epoch_train_time = epoch_start.elapsed();
        train_time_done += epoch_train_time;
        let val_accuracy = evaluate(&net, &data.validation, device, batch.max(256))?;
        let metrics = EpochMetrics {
            epoch,
            loss,
            train_accuracy,
            val_accuracy,
            samples_per_sec: n_train as f64 / epoch_train_time.as_secs_f64().max(1e-9),
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        history.push(metrics);
        (shown_loss, shown_acc) = (loss, train_accuracy);

        let checkpoint = Checkpoint {
            epoch,
            metrics: history.clone(),
            architecture: ARCHITECTURE.to_string(),
            base_width: config.base_width,
            classes: data.classes.clone(),
            image_size: data.image_size,
            dataset_hash: data.content_hash.clone(),
            weights: weights_to_bytes(&vs)?,
        };
        if on_checkpoint(epoch, checkpoint.to_bytes()).is_break() {
            return Err(TrainError::Cancelled {
                completed_epochs: epoch,
            });
        }
        last_report = Instant::now();
        let event = Progress {
            kind: ProgressKind::EpochEnd,
            epoch,
            epochs: config.epochs,
            step,
            total_steps,
            step_in_epoch: steps_per_epoch,
            steps_per_epoch,
            loss,
            train_accuracy,
            val_accuracy,
            samples_per_sec: samples_this_run as f64 / train_time_done.as_secs_f64().max(1e-9),
            eta_seconds: eta(run_start, steps_this_run, total_steps - step),
        };
        if progress(event).is_break() {
            return Err(TrainError::Cancelled {
                completed_epochs: epoch,
            });
        }
    }

    let weights = weights_to_bytes(&vs)?;
    let card = ModelCard {
        card_version: CARD_VERSION,
        architecture: ARCHITECTURE.to_string(),
        base_width: config.base_width,
        classes: data.classes.clone(),
        image_size: data.image_size,
        normalization: data.normalization,
        input: INPUT_DESCRIPTION.to_string(),
        metrics: history,
        training: TrainingSummary {
            epochs: config.epochs,
            batch_size: config.batch_size,
            learning_rate: config.learning_rate,
            lr_schedule: serde_json::to_value(config.lr_schedule)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            seed: config.seed,
            augment: config.augment,
            train_samples: data.train.len(),
            val_samples: data.validation.len(),
            device: format!("{device:?}"),
            resumed_from_epoch: resumed_from,
        },
        description: String::new(),
        dataset_hash: data.content_hash.clone(),
        job_id: String::new(),
        node: String::new(),
    };
    Ok(TrainedModel { card, weights })
}

fn eta(run_start: Instant, steps_done: u64, steps_left: u64) -> f64 {
    if steps_done == 0 {
        return 0.0;
    }
    run_start.elapsed().as_secs_f64() / steps_done as f64 * steps_left as f64
}

fn check_compatible(
    ckpt: &Checkpoint,
    config: &TrainConfig,
    data: &Dataset,
) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::IncompatibleCheckpoint(m));
    if ckpt.architecture != ARCHITECTURE || ckpt.base_width != config.base_width {
        return bad(format!(
            "it is for {} width {}, this run trains {ARCHITECTURE} width {}",
            ckpt.architecture, ckpt.base_width, config.base_width
        ));
    }
    if ckpt.classes != data.classes {
        return bad(format!(
            "its classes {:?} differ from the dataset's {:?}",
            ckpt.classes, data.classes
        ));
    }
    if ckpt.image_size != data.image_size {
        return bad(format!(
            "its image_size {} differs from {}",
            ckpt.image_size, data.image_size
        ));
    }
    if ckpt.epoch > config.epochs {
        return bad(format!(
            "it has {} epochs, more than the {} asked for",
            ckpt.epoch, config.epochs
        ));
    }
    Ok(())
}

/// Accuracy of `net` on `split` in evaluation mode, or `None` for an empty split.
fn evaluate(
    net: &ResNet,
    split: &Split,
    device: Device,
    batch: usize,
) -> Result<Option<f64>, TrainError> {
    if split.is_empty() {
        return Ok(None);
    }
    let xs = split.images_tensor();
    let ys = split.labels_tensor();
    let n = split.len() as i64;
    let correct = tch::no_grad(|| -> Result<i64, TrainError> {
        let mut correct = Tensor::zeros([], (Kind::Int64, device));
        let mut start = 0;
        while start < n {
            let len = (batch as i64).min(n - start);
            let x = xs.f_narrow(0, start, len)?.f_to_device(device)?;
            let y = ys.f_narrow(0, start, len)?.f_to_device(device)?;
            let hits = net
                .forward_t(&x, false)
                .f_argmax(-1, false)?
                .f_eq_tensor(&y)?
                .f_sum(Kind::Int64)?;
            correct = correct.f_add(&hits)?;
            start += len;
        }
        Ok(correct.f_int64_value(&[])?)
    })?;
    Ok(Some(correct as f64 / n as f64))
}
