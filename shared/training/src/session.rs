//! One training run as a [`TrainingSession`]: built from a configuration, a dataset and perhaps a
//! checkpoint, it trains an epoch at a time ([`train_epoch`](TrainingSession::train_epoch)),
//! validates ([`evaluate`](TrainingSession::evaluate)), records the epoch, hands out a
//! [`Checkpoint`] ([`checkpoint`](TrainingSession::checkpoint)) and ends in a [`TrainedModel`]
//! whose card [`model_card`] builds. `train()` drives it epoch by epoch.
//!
//! Throughput figures are quoted against PyTorch (`bench/train_throughput.py`), so the numerics
//! stay as they are: seeds, network, resumed weights, optimiser, data on the device, then per
//! step: gather the shuffled batch, shift and flip it (with `augment` and `hflip`: one gather on
//! the device), set the learning rate, forward (under bf16 autocast with `bf16` on a GPU),
//! backward, step, and add the step's loss and hits to sums kept on the device.
//!
//! After each validated epoch the session keeps the weights of the best epoch so far by
//! validation accuracy (in memory and in the checkpoint); [`finish`](TrainingSession::finish)
//! hands those out, so a run whose last epochs got worse still yields its best model.

use std::ops::{ControlFlow, RangeInclusive};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::card::{EpochMetrics, ModelCard, TrainingSummary, CARD_VERSION, INPUT_DESCRIPTION};
use crate::checkpoint::{BestEpoch, Checkpoint};
use crate::config::TrainConfig;
use crate::dataset::{Dataset, Split};
use crate::error::TrainError;
use crate::model::{NetConfig, ResNet, ARCHITECTURE};
use crate::progress::{Progress, ProgressKind};
use crate::weights::{load_weights, weights_to_bytes};

/// A finished run's result.
#[derive(Clone, Debug)]
pub struct TrainedModel {
    /// The card; the caller fills `description`, `job_id`, `node` (and may replace
    /// `dataset_hash`).
    pub card: ModelCard,
    /// The weights as safetensors bytes.
    pub weights: Vec<u8>,
}

/// One run: the network, its optimiser, the training images on the device, and where the run
/// stands (steps, history, timing).
///
/// `train()` validates the configuration and turns libtorch's panics into
/// [`TrainError::Panicked`]; a caller that drives a session itself does both. Each epoch is
/// `train_epoch`, `evaluate`, `record`, then `checkpoint` and `epoch_end` as wanted.
pub struct TrainingSession<'a> {
    config: &'a TrainConfig,
    data: &'a Dataset,
    device: Device,
    vs: nn::VarStore,
    net: ResNet,
    opt: nn::Optimizer,
    x_train: Tensor,
    y_train: Tensor,
    /// Images per step (the configured batch, at most the training split).
    batch: usize,
    steps_per_epoch: u64,
    total_steps: u64,
    /// Steps done over the whole job (earlier runs of a resumed job included).
    step: u64,
    start_epoch: u32,
    resumed_from: Option<u32>,
    /// Metrics of the finished epochs, a resumed job's earlier ones first.
    history: Vec<EpochMetrics>,
    /// The best validated epoch so far.
    best: Option<BestEpoch>,
    /// Whether the forward pass runs under bf16 autocast.
    bf16: bool,
    clock: RunClock,
}

/// Timing and the figures shown in `Step` events, over this run only.
struct RunClock {
    report_every: Duration,
    run_start: Instant,
    last_report: Instant,
    steps_this_run: u64,
    samples_this_run: u64,
    /// Training time of the finished epochs of this run.
    train_time_done: Duration,
    shown_loss: f64,
    shown_acc: f64,
}

/// What an epoch's training steps gave, before validation.
pub struct EpochTrained {
    epoch: u32,
    loss: f64,
    train_accuracy: f64,
    started: Instant,
    train_time: Duration,
}

impl<'a> TrainingSession<'a> {
    /// Seeds libtorch, builds the network (loading the checkpoint's weights when resuming) and
    /// its optimiser, and moves the training images to `device`.
    pub fn start(
        config: &'a TrainConfig,
        data: &'a Dataset,
        device: Device,
        resume: Option<Checkpoint>,
    ) -> Result<Self, TrainError> {
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
        let mut best = None;
        let mut start_epoch = 1;
        let resumed_from = resume.as_ref().map(|c| c.epoch);
        if let Some(ckpt) = resume {
            check_compatible(&ckpt, config, data)?;
            load_weights(&vs, &ckpt.weights)?;
            start_epoch = ckpt.epoch + 1;
            // A checkpoint from before the best epoch was kept: its own epoch is the best known.
            best = ckpt.best.or_else(|| {
                let val_accuracy = ckpt.metrics.last()?.val_accuracy?;
                Some(BestEpoch {
                    epoch: ckpt.epoch,
                    val_accuracy,
                    weights: ckpt.weights,
                })
            });
            history = ckpt.metrics;
        }
        let bf16 = config.bf16 && device.is_cuda();
        if bf16 {
            check_bf16(device)?;
        }
        let opt = nn::Adam::default().build(&vs, config.learning_rate)?;

        let x_train = data.train.images_tensor().f_to_device(device)?;
        let y_train = data.train.labels_tensor().f_to_device(device)?;
        let n_train = data.train.len();
        let batch = config.batch_size.min(n_train);
        let steps_per_epoch = n_train.div_ceil(batch) as u64;
        let total_steps = u64::from(config.epochs) * steps_per_epoch;
        let step = u64::from(start_epoch - 1) * steps_per_epoch;

        let run_start = Instant::now();
        Ok(Self {
            config,
            data,
            device,
            vs,
            net,
            opt,
            x_train,
            y_train,
            batch,
            steps_per_epoch,
            total_steps,
            step,
            start_epoch,
            resumed_from,
            history,
            best,
            bf16,
            clock: RunClock {
                report_every: Duration::from_millis(config.report_interval_ms),
                run_start,
                last_report: run_start,
                steps_this_run: 0,
                samples_this_run: 0,
                train_time_done: Duration::ZERO,
                shown_loss: 0.0,
                shown_acc: 0.0,
            },
        })
    }

    /// The epochs this run trains: those a resumed checkpoint lacks, or all of them.
    pub fn remaining_epochs(&self) -> RangeInclusive<u32> {
        self.start_epoch..=self.config.epochs
    }

    /// The training steps of `epoch`, in the order its seeded generator shuffles the images.
    /// `progress` hears of every step (see [`ProgressKind`]); `Break` cancels.
    pub fn train_epoch(
        &mut self,
        epoch: u32,
        progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<EpochTrained, TrainError> {
        let (device, batch) = (self.device, self.batch);
        let n_train = self.data.train.len();
        let started = Instant::now();
        let mut rng = epoch_rng(self.config.seed, epoch);
        let mut order: Vec<i64> = (0..n_train as i64).collect();
        order.shuffle(&mut rng);
        let order = Tensor::from_slice(&order).f_to_device(device)?;
        let mut totals = EpochTotals::new(device);

        for step_in_epoch in 1..=self.steps_per_epoch {
            let start = ((step_in_epoch - 1) as usize * batch) as i64;
            let len = (batch as i64).min(n_train as i64 - start);
            let idx = order.f_narrow(0, start, len)?;
            let mut xs = self.x_train.f_index_select(0, &idx)?;
            let ys = self.y_train.f_index_select(0, &idx)?;
            if self.config.augment || self.config.hflip {
                let moves = draw_moves(&mut rng, len as usize, self.data.image_size, self.config);
                xs = apply_moves(&xs, &moves)?;
            }
            self.opt.set_lr(self.config.lr_schedule.rate(
                self.config.learning_rate,
                self.step,
                self.total_steps,
            ));
            let (logits, loss) = autocast(self.bf16, || -> Result<_, TrainError> {
                let logits = self.net.forward_t(&xs, true);
                let loss = logits
                    .f_log_softmax(-1, Kind::Float)?
                    .f_nll_loss::<Tensor>(&ys, None, tch::Reduction::Mean, -100)?;
                Ok((logits, loss))
            })?;
            self.opt.backward_step(&loss);
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
            self.step += 1;
            let clock = &mut self.clock;
            clock.steps_this_run += 1;
            clock.samples_this_run += len as u64;

            // The run's first step is reported at once (a follower sees it moving), then at most
            // every `report_every`.
            let kind =
                if clock.steps_this_run == 1 || clock.last_report.elapsed() >= clock.report_every {
                    (clock.shown_loss, clock.shown_acc) = totals.read()?;
                    if !clock.shown_loss.is_finite() {
                        return Err(TrainError::Diverged { epoch });
                    }
                    clock.last_report = Instant::now();
                    ProgressKind::Report
                } else {
                    ProgressKind::Step
                };
            let train_time = clock.train_time_done + started.elapsed();
            let event = Progress {
                kind,
                epoch,
                epochs: self.config.epochs,
                step: self.step,
                total_steps: self.total_steps,
                step_in_epoch,
                steps_per_epoch: self.steps_per_epoch,
                loss: clock.shown_loss,
                train_accuracy: clock.shown_acc,
                val_accuracy: None,
                samples_per_sec: clock.samples_this_run as f64 / train_time.as_secs_f64().max(1e-9),
                eta_seconds: self.eta(),
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
        let train_time = started.elapsed();
        self.clock.train_time_done += train_time;
        Ok(EpochTrained {
            epoch,
            loss,
            train_accuracy,
            started,
            train_time,
        })
    }

    /// Accuracy on the validation split in evaluation mode, or `None` without one.
    pub fn evaluate(&self) -> Result<Option<f64>, TrainError> {
        evaluate(
            &self.net,
            &self.data.validation,
            self.device,
            self.batch.max(256),
        )
    }

    /// Adds a trained and validated epoch to the history; its figures are what `Step` events
    /// show until the next report.
    ///
    /// An epoch at least as accurate on validation as the best so far becomes the best (its
    /// weights are copied).
    pub fn record(
        &mut self,
        trained: &EpochTrained,
        val_accuracy: Option<f64>,
    ) -> Result<(), TrainError> {
        if let Some(acc) = val_accuracy {
            if self.best.as_ref().is_none_or(|b| acc >= b.val_accuracy) {
                self.best = Some(BestEpoch {
                    epoch: trained.epoch,
                    val_accuracy: acc,
                    weights: weights_to_bytes(&self.vs)?,
                });
            }
        }
        self.history.push(EpochMetrics {
            epoch: trained.epoch,
            loss: trained.loss,
            train_accuracy: trained.train_accuracy,
            val_accuracy,
            samples_per_sec: self.data.train.len() as f64
                / trained.train_time.as_secs_f64().max(1e-9),
            seconds: trained.started.elapsed().as_secs_f64(),
        });
        (self.clock.shown_loss, self.clock.shown_acc) = (trained.loss, trained.train_accuracy);
        Ok(())
    }

    /// The state after `epoch`: weights and the history so far.
    pub fn checkpoint(&self, epoch: u32) -> Result<Checkpoint, TrainError> {
        Ok(Checkpoint {
            epoch,
            metrics: self.history.clone(),
            architecture: ARCHITECTURE.to_string(),
            base_width: self.config.base_width,
            classes: self.data.classes.clone(),
            image_size: self.data.image_size,
            content_hash: self.data.content_hash.clone(),
            weights: weights_to_bytes(&self.vs)?,
            best: self.best.clone(),
        })
    }

    /// The `EpochEnd` event of a recorded epoch; the next report is due a report interval after
    /// it.
    pub fn epoch_end(&mut self, trained: &EpochTrained, val_accuracy: Option<f64>) -> Progress {
        self.clock.last_report = Instant::now();
        Progress {
            kind: ProgressKind::EpochEnd,
            epoch: trained.epoch,
            epochs: self.config.epochs,
            step: self.step,
            total_steps: self.total_steps,
            step_in_epoch: self.steps_per_epoch,
            steps_per_epoch: self.steps_per_epoch,
            loss: trained.loss,
            train_accuracy: trained.train_accuracy,
            val_accuracy,
            samples_per_sec: self.clock.samples_this_run as f64
                / self.clock.train_time_done.as_secs_f64().max(1e-9),
            eta_seconds: self.eta(),
        }
    }

    /// The card and weights of the finished run: the best epoch's weights, or the last epoch's
    /// without a validation split; the card's `training.best_epoch` says which.
    pub fn finish(self) -> Result<TrainedModel, TrainError> {
        let last = self.history.last().map(|m| m.epoch);
        let (best_epoch, weights) = match self.best {
            Some(best) => (Some(best.epoch), best.weights),
            None => (last, weights_to_bytes(&self.vs)?),
        };
        let mut card = model_card(
            self.config,
            self.data,
            self.device,
            self.history,
            self.resumed_from,
        );
        card.training.best_epoch = best_epoch;
        card.training.bf16 = self.bf16;
        Ok(TrainedModel { card, weights })
    }

    /// Seconds until the run ends at this run's pace so far (validation included).
    fn eta(&self) -> f64 {
        let clock = &self.clock;
        if clock.steps_this_run == 0 {
            return 0.0;
        }
        clock.run_start.elapsed().as_secs_f64() / clock.steps_this_run as f64
            * (self.total_steps - self.step) as f64
    }
}

/// The card of a model trained with `config` on `data` on `device`: the network, its input, the
/// per-epoch `history` and how it was trained. `dataset_hash` is the dataset's content hash;
/// `description`, `job_id` and `node` are left for the caller.
pub fn model_card(
    config: &TrainConfig,
    data: &Dataset,
    device: Device,
    history: Vec<EpochMetrics>,
    resumed_from_epoch: Option<u32>,
) -> ModelCard {
    ModelCard {
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
            hflip: config.hflip,
            bf16: config.bf16 && device.is_cuda(),
            best_epoch: None,
            train_samples: data.train.len(),
            val_samples: data.validation.len(),
            device: format!("{device:?}"),
            resumed_from_epoch,
        },
        description: String::new(),
        dataset_hash: data.content_hash.to_string(),
        job_id: String::new(),
        node: String::new(),
    }
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

/// How one training image is moved: shifted right by `dx` and down by `dy` pixels (border
/// pixels repeated into the gap), after a horizontal flip when `flip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// Pixels to the right (negative: left).
    pub dx: i64,
    /// Pixels down (negative: up).
    pub dy: i64,
    /// Mirror left to right first.
    pub flip: bool,
}

/// The most pixels `augment` shifts an image of side `image_size` in each direction: an eighth
/// of the side (4 px at 32 px), at least 1.
pub fn max_shift(image_size: u32) -> i64 {
    i64::from(image_size / 8).max(1)
}

/// The moves of `n` images, drawn from `rng` in order (shift, then flip, per image): the same
/// generator state always gives the same moves.
pub fn draw_moves(
    rng: &mut impl Rng,
    n: usize,
    image_size: u32,
    config: &TrainConfig,
) -> Vec<Move> {
    let p = max_shift(image_size);
    (0..n)
        .map(|_| {
            let (dx, dy) = if config.augment {
                (rng.gen_range(-p..=p), rng.gen_range(-p..=p))
            } else {
                (0, 0)
            };
            let flip = config.hflip && rng.gen_bool(0.5);
            Move { dx, dy, flip }
        })
        .collect()
}

/// Applies `moves[i]` to image `i` of the `[N, C, S, S]` batch `xs`, as one gather on its
/// device.
pub fn apply_moves(xs: &Tensor, moves: &[Move]) -> Result<Tensor, TrainError> {
    let size = xs.size();
    let (n, s) = (size[0], size[3]);
    assert_eq!(moves.len() as i64, n, "one move per image");
    let mut rows = Vec::with_capacity((n * s) as usize);
    let mut cols = Vec::with_capacity((n * s) as usize);
    for m in moves {
        for i in 0..s {
            rows.push((i - m.dy).clamp(0, s - 1));
            let x = if m.flip { s - 1 - i } else { i };
            cols.push((x - m.dx).clamp(0, s - 1));
        }
    }
    let device = xs.device();
    let images = Tensor::f_arange(n, (Kind::Int64, device))?.f_view([n, 1, 1])?;
    let rows = Tensor::from_slice(&rows)
        .f_to_device(device)?
        .f_view([n, s, 1])?;
    let cols = Tensor::from_slice(&cols)
        .f_to_device(device)?
        .f_view([n, 1, s])?;
    // Advanced indices split by the channel slice put their broadcast shape first: [N, S, S, C].
    Ok(xs
        .f_index(&[Some(images), None, Some(rows), Some(cols)])?
        .f_permute([0, 3, 1, 2])?
        .f_contiguous()?)
}

/// Runs `f` under bf16 autocast when `enabled` (on CUDA or ROCm), as it is otherwise.
fn autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    set_autocast_bf16();
    tch::autocast(true, f)
}

/// Sets the GPU autocast type to bf16 (libtorch's default is fp16, which needs loss scaling).
/// `tch` does not expose the setting, so this calls libtorch's
/// `at::autocast::set_autocast_dtype(c10::DeviceType, c10::ScalarType)` itself; both enums are
/// `int8_t` underneath.
fn set_autocast_bf16() {
    extern "C" {
        #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
        fn at_set_autocast_dtype(device_type: i8, dtype: i8);
    }
    // c10::DeviceType::CUDA (ROCm builds present HIP as CUDA) and c10::ScalarType::BFloat16.
    const CUDA: i8 = 1;
    const BFLOAT16: i8 = 15;
    // SAFETY: a plain setter of libtorch's thread-local autocast state, with valid enum values.
    unsafe { at_set_autocast_dtype(CUDA, BFLOAT16) }
}

/// Refuses bf16 on a GPU that cannot run a bf16 convolution.
fn check_bf16(device: Device) -> Result<(), TrainError> {
    let probe = || -> Result<(), tch::TchError> {
        let x = Tensor::f_ones([1, 3, 8, 8], (Kind::BFloat16, device))?;
        let w = Tensor::f_ones([4, 3, 3, 3], (Kind::BFloat16, device))?;
        x.f_conv2d::<Tensor>(&w, None, [1, 1], [1, 1], [1, 1], 1)?
            .f_sum(Kind::Float)?
            .f_double_value(&[])?;
        Ok(())
    };
    probe().map_err(|e| {
        TrainError::InvalidConfig(format!(
            "bf16 was asked for, but this GPU cannot run it: {e}"
        ))
    })
}

/// The generator of epoch `epoch`'s shuffle and augmentation: the same whether the run started at epoch
/// 1 or resumed at `epoch`.
fn epoch_rng(seed: u64, epoch: u32) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ u64::from(epoch).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

/// Refuses a checkpoint of another network, classes, input size, or of more epochs than asked.
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
