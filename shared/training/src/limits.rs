//! The bounds a dataset is held to before anything big is read or decoded: [`DatasetLimits`]
//! (classes, files, bytes, image dimensions, decoded size, nesting) and the accepted
//! [`IMAGE_SIZE_RANGE`]. The api checks a submitted dataset against the same values the trainer
//! loads it with.

use serde::{Deserialize, Serialize};

/// Smallest and largest `image_size` the loader and the network accept.
pub const IMAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=512;

/// Bounds on what a dataset may contain, checked before anything big is read or decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetLimits {
    /// Most class folders.
    pub max_classes: usize,
    /// Most image files over all classes.
    pub max_files: usize,
    /// Largest single image file, in bytes.
    pub max_file_bytes: u64,
    /// Largest sum of image file sizes, in bytes.
    pub max_total_bytes: u64,
    /// Largest width x height an image header may announce.
    pub max_image_pixels: u64,
    /// Largest width or height an image header may announce.
    pub max_image_side: u32,
    /// Largest decoded dataset (images x 3 x size x size x 4 bytes) held in memory.
    pub max_decoded_bytes: u64,
    /// Deepest folder nesting inside a class folder.
    pub max_depth: usize,
}

impl Default for DatasetLimits {
    fn default() -> Self {
        Self {
            max_classes: 1_000,
            max_files: 100_000,
            max_file_bytes: 32 << 20,
            max_total_bytes: 8 << 30,
            max_image_pixels: 40_000_000,
            max_image_side: 16_384,
            max_decoded_bytes: 6 << 30,
            max_depth: 8,
        }
    }
}
