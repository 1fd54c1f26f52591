//! ImageFolder datasets: one sub-directory per class, PNG or JPEG images inside (at any depth).
//!
//! Loading goes in three steps, each usable on its own:
//!
//! 1. [`Listing::scan`] walks the directory within [`DatasetLimits`] without decoding anything
//!    (see [`crate::listing`]).
//! 2. [`content_hash`] identifies the data the trainer would read (see [`crate::hash`] for the
//!    exact definition, so other services can reproduce it).
//! 3. [`Dataset::load`] (here) reads every image, checks its header before decoding
//!    ([`crate::images`]), decodes, resizes and normalises it ([`crate::preprocess`]) and splits
//!    the lot into train and validation, stratified per class, with a seeded RNG: the same files
//!    and options always give the same split.
//!
//! Every error names paths relative to the dataset root, never the real filesystem. The items of
//! the other dataset modules are re-exported here, so `gantry_training::dataset::*` names them
//! all.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

pub use crate::error::DatasetError;
pub use crate::hash::{content_hash, ContentHash};
pub use crate::images::{check_file, check_header, check_open_file};
pub use crate::limits::{DatasetLimits, IMAGE_SIZE_RANGE};
pub use crate::listing::{ImageFile, Listing, IMAGE_EXTENSIONS};
pub use crate::preprocess::{preprocess_image, Normalization};

use crate::hash::{combine_digests, file_digest};
use crate::preprocess::decode_into;

/// How to turn a directory into a [`Dataset`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Side of the square every image is resized to; within [`IMAGE_SIZE_RANGE`].
    pub image_size: u32,
    /// Fraction of each class held out for validation, in `[0, 0.9]`. A class with at least two
    /// images keeps at least one for validation when this is above zero, and always at least one
    /// for training.
    pub validation_split: f64,
    /// Seed of the split; the same files and seed always give the same split.
    pub split_seed: u64,
    /// Normalisation applied to every pixel (recorded in the model card).
    pub normalization: Normalization,
    /// Bounds on the dataset.
    pub limits: DatasetLimits,
    /// Threads that read and decode images; 0 means one per available CPU.
    pub decode_threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            image_size: 64,
            validation_split: 0.2,
            split_seed: 0,
            normalization: Normalization::IMAGENET,
            limits: DatasetLimits::default(),
            decode_threads: 0,
        }
    }
}

/// Images and labels of one side of the split.
#[derive(Clone, Debug, Default)]
pub struct Split {
    /// Side of every image.
    pub image_size: u32,
    /// `len() x 3 x image_size x image_size` normalised floats, image after image, channel-major.
    pub images: Vec<f32>,
    /// Class index of each image.
    pub labels: Vec<i64>,
    /// Each image's path relative to the dataset root.
    pub paths: Vec<String>,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The normalised pixels of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = 3 * (self.image_size * self.image_size) as usize;
        &self.images[i * n..(i + 1) * n]
    }

    /// The images as a `[N, 3, S, S]` float tensor on the CPU.
    #[cfg(feature = "torch")]
    pub fn images_tensor(&self) -> tch::Tensor {
        let s = i64::from(self.image_size);
        tch::Tensor::from_slice(&self.images).view([self.len() as i64, 3, s, s])
    }

    /// The labels as an `[N]` int64 tensor on the CPU.
    #[cfg(feature = "torch")]
    pub fn labels_tensor(&self) -> tch::Tensor {
        tch::Tensor::from_slice(&self.labels)
    }
}

/// A decoded, normalised, split ImageFolder dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Class names, sorted; labels index into this.
    pub classes: Vec<String>,
    /// Side every image was resized to.
    pub image_size: u32,
    /// Normalisation applied to the pixels.
    pub normalization: Normalization,
    /// [`content_hash`] of the files read.
    pub content_hash: ContentHash,
    /// Training images.
    pub train: Split,
    /// Validation images (empty when `validation_split` is 0).
    pub validation: Split,
}

impl Dataset {
    /// Scans, reads, hashes, decodes and splits the ImageFolder dataset at `root`.
    pub fn load(root: &Path, options: &LoadOptions) -> Result<Dataset, DatasetError> {
        validate_options(options)?;
        let listing = Listing::scan(root, &options.limits)?;
        Self::from_listing(&listing, options)
    }

    /// Like [`Dataset::load`], from a listing already made with the same limits.
    pub fn from_listing(listing: &Listing, options: &LoadOptions) -> Result<Dataset, DatasetError> {
        validate_options(options)?;
        let limits = &options.limits;
        let size = options.image_size;
        let per_image = 3 * (size as usize) * (size as usize);
        let n = listing.files.len();
        let decoded_bytes = (n as u64) * (per_image as u64) * 4;
        if decoded_bytes > limits.max_decoded_bytes {
            return Err(DatasetError::DecodedTooLarge {
                images: n,
                image_size: size,
                bytes: decoded_bytes,
                max: limits.max_decoded_bytes,
            });
        }

        let mut pixels = vec![0f32; n * per_image];
        let mut digests = vec![(0u64, [0u8; 32]); n];
        let threads = match options.decode_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            t => t,
        }
        .clamp(1, n.max(1));
        let chunk = n.div_ceil(threads).max(1);
        // Each thread decodes a contiguous run of files into its own slice of the output; the
        // first failure in file order wins, so the reported error does not depend on timing.
        let results: Vec<Result<(), DatasetError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pixels
                .chunks_mut(chunk * per_image)
                .zip(digests.chunks_mut(chunk))
                .enumerate()
                .map(|(t, (out, dig))| {
                    let files = &listing.files[t * chunk..(t * chunk + dig.len())];
                    scope.spawn(move || -> Result<(), DatasetError> {
                        for (i, file) in files.iter().enumerate() {
                            let bytes = listing.read(file, limits)?;
                            dig[i] = (bytes.len() as u64, file_digest(&bytes));
                            decode_into(
                                &bytes,
                                size,
                                &options.normalization,
                                limits,
                                &mut out[i * per_image..(i + 1) * per_image],
                            )
                            .map_err(|p| p.into_error(file.relative_path.clone(), limits))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for result in results {
            result?;
        }
        let content_hash = combine_digests(listing, &digests);

        let (train_idx, val_idx) =
            stratified_split(listing, options.validation_split, options.split_seed);
        let take = |idx: &[usize]| {
            let mut split = Split {
                image_size: size,
                ..Split::default()
            };
            split.images.reserve(idx.len() * per_image);
            for &i in idx {
                split
                    .images
                    .extend_from_slice(&pixels[i * per_image..(i + 1) * per_image]);
                split.labels.push(listing.files[i].class as i64);
                split.paths.push(listing.files[i].relative_path.clone());
            }
            split
        };
        let train = take(&train_idx);
        let validation = take(&val_idx);
        Ok(Dataset {
            classes: listing.classes.clone(),
            image_size: size,
            normalization: options.normalization,
            content_hash,
            train,
            validation,
        })
    }
}

/// The sizes [`choose_image_size`] picks from: small enough to train quickly on a CPU, large
/// enough for the network's three stages.
pub const AUTO_IMAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=128;

/// Most image headers [`choose_image_size`] reads (evenly spaced over the sorted files).
pub const AUTO_IMAGE_SIZE_SAMPLE: usize = 512;

/// The input side for images of these sides (each `sqrt(width * height)`): their median,
/// rounded to a multiple of 8 and clamped to [`AUTO_IMAGE_SIZE_RANGE`]. 28 px digits train at
/// 32, photos at 128; no sides gives 64.
pub fn image_size_for_sides(sides: &[u32]) -> u32 {
    if sides.is_empty() {
        return 64;
    }
    let mut sorted = sides.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = if n % 2 == 1 {
        f64::from(sorted[n / 2])
    } else {
        (f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0
    };
    let rounded = ((median / 8.0).round() * 8.0) as u32;
    rounded.clamp(*AUTO_IMAGE_SIZE_RANGE.start(), *AUTO_IMAGE_SIZE_RANGE.end())
}

/// The input side to train `listing` at when none is given: [`image_size_for_sides`] of up to
/// [`AUTO_IMAGE_SIZE_SAMPLE`] images, evenly spaced over the files in path order, so the same
/// files always give the same size (a resumed job, on any node, picks what it picked before).
/// Reads only the images' headers.
pub fn choose_image_size(listing: &Listing, limits: &DatasetLimits) -> Result<u32, DatasetError> {
    let n = listing.files.len();
    let take = n.min(AUTO_IMAGE_SIZE_SAMPLE);
    let mut sides = Vec::with_capacity(take);
    for k in 0..take {
        let file = &listing.files[k * n / take];
        let bytes = listing.read(file, limits)?;
        let (w, h) = check_header(&bytes, &file.relative_path, limits)?;
        sides.push((f64::from(w) * f64::from(h)).sqrt().round() as u32);
    }
    Ok(image_size_for_sides(&sides))
}

fn validate_options(options: &LoadOptions) -> Result<(), DatasetError> {
    if !IMAGE_SIZE_RANGE.contains(&options.image_size) {
        return Err(DatasetError::InvalidOptions(format!(
            "image_size must be within {IMAGE_SIZE_RANGE:?}, not {}",
            options.image_size
        )));
    }
    if !(0.0..=0.9).contains(&options.validation_split) {
        return Err(DatasetError::InvalidOptions(format!(
            "validation_split must be within [0, 0.9], not {}",
            options.validation_split
        )));
    }
    if options
        .normalization
        .std
        .iter()
        .any(|s| !s.is_finite() || *s <= 0.0)
        || options.normalization.mean.iter().any(|m| !m.is_finite())
    {
        return Err(DatasetError::InvalidOptions(
            "normalisation needs finite means and positive standard deviations".into(),
        ));
    }
    Ok(())
}

/// Indices (into `listing.files`, ascending) of the training and validation images. Each class is
/// shuffled with its own seeded RNG, so adding a class does not reshuffle the others.
fn stratified_split(listing: &Listing, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class = vec![Vec::new(); listing.classes.len()];
    for (i, file) in listing.files.iter().enumerate() {
        by_class[file.class].push(i);
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (class, mut idx) in by_class.into_iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            seed ^ (class as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        idx.shuffle(&mut rng);
        let n = idx.len();
        let mut n_val = (n as f64 * fraction).round() as usize;
        if fraction > 0.0 && n >= 2 {
            n_val = n_val.max(1);
        }
        n_val = n_val.min(n.saturating_sub(1));
        val.extend_from_slice(&idx[..n_val]);
        train.extend_from_slice(&idx[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{self, SyntheticSpec};

    #[test]
    fn the_image_size_is_the_median_side_rounded_and_clamped() {
        assert_eq!(image_size_for_sides(&[28, 28, 28]), 32);
        assert_eq!(image_size_for_sides(&[20, 27, 100]), 24);
        assert_eq!(image_size_for_sides(&[32, 64]), 48);
        assert_eq!(image_size_for_sides(&[5, 6, 7]), 16);
        assert_eq!(image_size_for_sides(&[480, 640, 4000]), 128);
        assert_eq!(image_size_for_sides(&[]), 64);
        assert_eq!(image_size_for_sides(&[100]), 104);
    }

    #[test]
    fn the_image_size_is_chosen_from_the_datasets_headers() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            per_class: 4,
            image_size: 30,
            ..SyntheticSpec::default()
        };
        synthetic::generate(dir.path(), &spec).unwrap();
        let limits = DatasetLimits::default();
        let listing = Listing::scan(dir.path(), &limits).unwrap();
        assert_eq!(choose_image_size(&listing, &limits).unwrap(), 32);
    }
}
