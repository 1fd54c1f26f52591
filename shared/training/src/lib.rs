//! Gantry's training core: everything a trainer node does with a dataset once it has one on disk,
//! as a plain blocking library with no NATS and no async.
//!
//! # Layout
//!
//! - [`dataset`]: scan an ImageFolder directory within [`DatasetLimits`], hash its content, decode
//!   and resize its PNG/JPEG images into normalised pixels, split train/validation
//!   deterministically. Errors are [`DatasetError`], all but I/O being "data the trainer could not
//!   use".
//! - [`synthetic`]: generates ImageFolder datasets whose classes differ only by shape (circle,
//!   square, triangle), for this crate's tests, the service's end-to-end tests and the benchmark.
//! - [`card`]: the [`ModelCard`] stored next to the weights, and per-epoch [`EpochMetrics`].
//! - [`model`] (feature `torch`): the small ResNet classifier, built with `tch::nn`.
//! - [`train`](mod@train) (feature `torch`): [`train()`](train::train) with progress, cancel and per-epoch
//!   [`Checkpoint`]s that a later run resumes from.
//! - [`infer`] (feature `torch`): [`load_model`] and [`predict`] from a card and safetensors bytes.
//! - [`device`] (feature `torch`): [`pick_device`] turns a job's driver (`cuda`, `rocm`, `cpu`,
//!   `any`) into a `tch::Device`.
//!
//! The `torch` feature (on by default) is everything that links libtorch; without it a service
//! can still validate and hash datasets. Binaries that link this crate with `torch` must link
//! `torch_cuda` with `--no-as-needed`: see `LINKING.md` in this crate.

pub mod card;
pub mod dataset;
pub mod synthetic;

#[cfg(feature = "torch")]
pub mod device;
#[cfg(feature = "torch")]
pub mod infer;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod train;

pub use card::{EpochMetrics, ModelCard, TrainingSummary};
pub use dataset::{
    content_hash, Dataset, DatasetError, DatasetLimits, Listing, LoadOptions, Normalization, Split,
};

#[cfg(feature = "torch")]
pub use device::{available_drivers, gpu_runtime, pick_device, DeviceError, GpuRuntime};
#[cfg(feature = "torch")]
pub use infer::{load_model, predict, LoadedModel};
#[cfg(feature = "torch")]
pub use model::{NetConfig, ResNet, ARCHITECTURE};
#[cfg(feature = "torch")]
pub use train::{
    train, Checkpoint, LrSchedule, Progress, ProgressKind, TrainConfig, TrainError, TrainedModel,
};

/// Re-exported so callers name the same `tch` (and its `Device`) that this crate was built with.
#[cfg(feature = "torch")]
pub use tch;
