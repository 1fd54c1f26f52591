//! Gantry's training core: everything a trainer node does with a dataset once it has one on disk,
//! as a plain blocking library with no NATS and no async.
//!
//! # Layout
//!
//! Datasets (no libtorch needed):
//! - [`dataset`]: [`Dataset::load`] decodes and splits an ImageFolder directory; every dataset
//!   item of the modules below is re-exported there.
//! - [`listing`]: [`Listing::scan`] walks the directory within [`DatasetLimits`] ([`limits`])
//!   without decoding anything.
//! - [`hash`]: the dataset's [`ContentHash`] and its exact definition.
//! - [`images`]: the image header checks ([`check_file`], [`check_header`]) that the api and the
//!   trainer both apply, so a dataset one accepts the other can load.
//! - [`preprocess`]: from image bytes to normalised pixels ([`preprocess_image`],
//!   [`Normalization`]).
//! - [`error`]: [`DatasetError`] (and [`TrainError`] with `torch`), each saying whether the data
//!   is at fault.
//! - [`synthetic`]: generates ImageFolder datasets whose classes differ only by shape (circle,
//!   square, triangle), for this crate's tests, the service's end-to-end tests and the benchmark.
//! - [`card`]: the [`ModelCard`] stored next to the weights, and per-epoch [`EpochMetrics`].
//!
//! Training (feature `torch`):
//! - [`model`]: the small ResNet classifier, built with `tch::nn`.
//! - [`config`]: [`TrainConfig`] and [`LrSchedule`]; [`progress`]: the [`Progress`] a run reports.
//! - [`train`](mod@train): [`train()`](train::train) with progress, cancel and per-epoch
//!   [`Checkpoint`]s ([`checkpoint`]) that a later run resumes from; it drives a training session
//!   ([`session`]: `train_epoch`, `evaluate`, `checkpoint`, and [`model_card`]).
//! - [`weights`]: a network's weights as safetensors bytes, both ways.
//! - [`infer`]: [`load_model`] and [`predict`] from a card and safetensors bytes.
//! - [`device`]: [`pick_device`] turns a job's driver (`cuda`, `rocm`, `cpu`, `any`) into a
//!   `tch::Device`.
//!
//! The `torch` feature (on by default) is everything that links libtorch; without it a service
//! can still validate and hash datasets. This crate's build script links libtorch's GPU library
//! into every binary that uses it with `torch`: see `LINKING.md` in this crate.

pub mod card;
pub mod dataset;
pub mod error;
pub mod hash;
pub mod images;
pub mod limits;
pub mod listing;
pub mod preprocess;
pub mod synthetic;

#[cfg(feature = "torch")]
pub mod checkpoint;
#[cfg(feature = "torch")]
pub mod config;
#[cfg(feature = "torch")]
pub mod device;
#[cfg(feature = "torch")]
pub mod infer;
#[cfg(feature = "torch")]
pub mod model;
#[cfg(feature = "torch")]
pub mod progress;
#[cfg(feature = "torch")]
pub mod session;
#[cfg(feature = "torch")]
pub mod train;
#[cfg(feature = "torch")]
pub mod weights;

pub use card::{EpochMetrics, ModelCard, TrainingSummary};
pub use dataset::{
    check_file, check_header, check_open_file, choose_image_size, content_hash,
    image_size_for_sides, preprocess_image, ContentHash, Dataset, DatasetError, DatasetLimits,
    Listing, LoadOptions, Normalization, Split,
};

#[cfg(feature = "torch")]
pub use checkpoint::{BestEpoch, Checkpoint};
#[cfg(feature = "torch")]
pub use config::{LrSchedule, TrainConfig};
#[cfg(feature = "torch")]
pub use device::{available_drivers, gpu_runtime, pick_device, DeviceError, GpuRuntime};
#[cfg(feature = "torch")]
pub use error::TrainError;
#[cfg(feature = "torch")]
pub use infer::{load_model, predict, preprocess_for, top_k, LoadedModel};
#[cfg(feature = "torch")]
pub use model::{NetConfig, ResNet, ARCHITECTURE};
#[cfg(feature = "torch")]
pub use progress::{Progress, ProgressKind};
#[cfg(feature = "torch")]
pub use session::{model_card, EpochTrained, TrainedModel, TrainingSession};
#[cfg(feature = "torch")]
pub use train::train;

/// Re-exported so callers name the same `tch` (and its `Device`) that this crate was built with.
#[cfg(feature = "torch")]
pub use tch;
