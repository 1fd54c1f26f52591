//! Why a dataset or a run cannot be used: [`DatasetError`] (scanning, hashing, decoding; no
//! libtorch needed) and, with the `torch` feature, [`TrainError`] (training, checkpoints, weights,
//! inference). Both say whether the data is at fault (`is_data_error`), which is what a service
//! needs to decide between failing a job and retrying it elsewhere.

use std::io;

/// Why a dataset cannot be used. Every variant but [`DatasetError::Io`] is a problem with the data
/// (or the options asked of it), which a service reports to the user (HTTP 422); see
/// [`DatasetError::is_data_error`].
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The options are out of range.
    #[error("invalid dataset options: {0}")]
    InvalidOptions(String),
    /// The dataset root is missing or not a directory.
    #[error("the dataset is not a directory")]
    NotADirectory,
    /// Fewer than two class folders.
    #[error(
        "an ImageFolder dataset needs at least two class folders (one per class), found {found}"
    )]
    TooFewClasses {
        /// Class folders found.
        found: usize,
    },
    /// More class folders than the limit.
    #[error("the dataset has {found} class folders, more than the limit of {max}")]
    TooManyClasses {
        /// Class folders found.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// A class folder holds no PNG or JPEG image.
    #[error("class folder `{class}` has no PNG or JPEG image")]
    EmptyClass {
        /// The class folder's name.
        class: String,
    },
    /// More image files than the limit.
    #[error("the dataset has more than {max} image files")]
    TooManyFiles {
        /// The limit.
        max: usize,
    },
    /// One file is bigger than the limit.
    #[error("`{path}` is {bytes} bytes, more than the limit of {max} bytes per image")]
    FileTooLarge {
        /// Path relative to the dataset root.
        path: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// All files together are bigger than the limit.
    #[error("the dataset's images add up to more than {max} bytes")]
    DatasetTooLarge {
        /// The limit.
        max: u64,
    },
    /// The decoded images would not fit the memory limit.
    #[error(
        "{images} images at {image_size}x{image_size} need {bytes} bytes decoded, more than the \
         limit of {max}; use a smaller image_size or fewer images"
    )]
    DecodedTooLarge {
        /// Images in the dataset.
        images: usize,
        /// The requested side.
        image_size: u32,
        /// Bytes the decoded tensor would take.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// An image header announces dimensions beyond the limits (a decompression bomb, or just too
    /// big); refused before decoding.
    #[error("`{path}` is {width}x{height} pixels, more than the limit of {max_side} per side or {max_pixels} pixels")]
    ImageTooLarge {
        /// Path relative to the dataset root.
        path: String,
        /// Announced width.
        width: u32,
        /// Announced height.
        height: u32,
        /// The per-side limit.
        max_side: u32,
        /// The pixel-count limit.
        max_pixels: u64,
    },
    /// A file named like an image is not a readable PNG or JPEG.
    #[error("`{path}` is not a readable PNG or JPEG image: {reason}")]
    BadImage {
        /// Path relative to the dataset root.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// The dataset contains a symbolic link (refused, so a dataset cannot reach outside itself).
    #[error("`{path}` is a symbolic link; datasets may not contain links")]
    Symlink {
        /// Path relative to the dataset root.
        path: String,
    },
    /// A file or folder name is not valid UTF-8.
    #[error("a name under `{parent}` is not valid UTF-8")]
    InvalidName {
        /// The folder holding it, relative to the dataset root.
        parent: String,
    },
    /// Folders nested deeper than the limit inside a class folder.
    #[error("`{path}` is nested more than {max} folders deep inside its class folder")]
    TooDeep {
        /// Path relative to the dataset root.
        path: String,
        /// The limit.
        max: usize,
    },
    /// Reading the directory failed: a problem of the node, not of the data.
    #[error("reading `{path}`: {source}")]
    Io {
        /// Path relative to the dataset root.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl DatasetError {
    /// True for problems with the data itself (HTTP 422 at the edge); false for I/O failures of
    /// the machine reading it, which deserve a retry elsewhere.
    pub fn is_data_error(&self) -> bool {
        !matches!(self, DatasetError::Io { .. })
    }
}

/// Why a run did not produce a model.
#[cfg(feature = "torch")]
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

#[cfg(feature = "torch")]
impl TrainError {
    /// True when the job's input is at fault (HTTP 422 at the edge) rather than the node.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self,
            TrainError::UnusableData(_) | TrainError::Diverged { .. }
        )
    }
}
