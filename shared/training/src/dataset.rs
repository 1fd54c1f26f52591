//! ImageFolder datasets: one sub-directory per class, PNG or JPEG images inside (at any depth).
//!
//! Loading goes in three steps, each usable on its own:
//!
//! 1. [`Listing::scan`] walks the directory within [`DatasetLimits`] without decoding anything:
//!    class folders (sorted by name, hidden ones skipped), image files (by extension), sizes.
//!    Symlinks are refused outright, so a dataset can never reach outside its own directory.
//! 2. [`content_hash`] identifies the data the trainer would read (see its docs for the exact
//!    definition, so other services can reproduce it).
//! 3. [`Dataset::load`] reads every image, checks its header dimensions *before* decoding (so a
//!    decompression bomb is refused at the cost of reading a few bytes), decodes it with
//!    `image::Limits` set, converts it to RGB, resizes it to `image_size` x `image_size` (bilinear,
//!    aspect ratio not kept), normalises it per channel and splits the lot into train and
//!    validation, stratified per class, with a seeded RNG: the same files and options always give
//!    the same split.
//!
//! Every error names paths relative to the dataset root, never the real filesystem.

use std::fs;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use image::{ImageFormat, ImageReader};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File extensions (lower-cased) taken as images; everything else in a class folder is ignored.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Smallest and largest `image_size` the loader and the network accept.
pub const IMAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=512;

/// Per-channel normalisation applied after scaling pixels to `[0, 1]`: `(x - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of the R, G and B channels.
    pub mean: [f32; 3],
    /// Standard deviation of the R, G and B channels.
    pub std: [f32; 3],
}

impl Normalization {
    /// The ImageNet statistics torchvision uses; the default.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

impl Default for Normalization {
    fn default() -> Self {
        Self::IMAGENET
    }
}

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

/// One image file found by [`Listing::scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Index into [`Listing::classes`].
    pub class: usize,
    /// Path relative to the dataset root, `/`-separated.
    pub relative_path: String,
    /// Size in bytes when scanned.
    pub bytes: u64,
}

/// What a dataset directory holds, found without decoding anything.
#[derive(Clone, Debug)]
pub struct Listing {
    root: PathBuf,
    /// Class names (the folder names), sorted; a label is an index into this.
    pub classes: Vec<String>,
    /// Image files, sorted by relative path.
    pub files: Vec<ImageFile>,
    /// Sum of the image files' sizes.
    pub total_bytes: u64,
}

impl Listing {
    /// Walks `root` as an ImageFolder dataset within `limits`.
    pub fn scan(root: &Path, limits: &DatasetLimits) -> Result<Listing, DatasetError> {
        let meta = fs::symlink_metadata(root).map_err(|_| DatasetError::NotADirectory)?;
        if !meta.is_dir() {
            return Err(DatasetError::NotADirectory);
        }
        let mut classes = Vec::new();
        for (name, kind) in read_dir_sorted(root, "")? {
            if name.starts_with('.') {
                continue;
            }
            match kind {
                EntryKind::Dir => classes.push(name),
                EntryKind::Symlink => return Err(DatasetError::Symlink { path: name }),
                // Loose files at the top level belong to no class; torchvision ignores them too.
                EntryKind::File(_) | EntryKind::Other => {}
            }
        }
        if classes.len() < 2 {
            return Err(DatasetError::TooFewClasses {
                found: classes.len(),
            });
        }
        if classes.len() > limits.max_classes {
            return Err(DatasetError::TooManyClasses {
                found: classes.len(),
                max: limits.max_classes,
            });
        }
        let mut listing = Listing {
            root: root.to_path_buf(),
            classes,
            files: Vec::new(),
            total_bytes: 0,
        };
        for class in 0..listing.classes.len() {
            let before = listing.files.len();
            let name = listing.classes[class].clone();
            listing.walk_class(class, &name, 0, limits)?;
            if listing.files.len() == before {
                return Err(DatasetError::EmptyClass { class: name });
            }
        }
        // Class folders are visited in sorted order and each walk is sorted, but sort anyway so
        // the order is exactly byte order of the relative path, which the hash relies on.
        listing
            .files
            .sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        Ok(listing)
    }

    fn walk_class(
        &mut self,
        class: usize,
        dir: &str,
        depth: usize,
        limits: &DatasetLimits,
    ) -> Result<(), DatasetError> {
        if depth > limits.max_depth {
            return Err(DatasetError::TooDeep {
                path: dir.to_string(),
                max: limits.max_depth,
            });
        }
        for (name, kind) in read_dir_sorted(&self.root.join(dir), dir)? {
            if name.starts_with('.') {
                continue;
            }
            let path = format!("{dir}/{name}");
            match kind {
                EntryKind::Dir => self.walk_class(class, &path, depth + 1, limits)?,
                EntryKind::Symlink => return Err(DatasetError::Symlink { path }),
                EntryKind::File(bytes) if is_image_name(&name) => {
                    if self.files.len() >= limits.max_files {
                        return Err(DatasetError::TooManyFiles {
                            max: limits.max_files,
                        });
                    }
                    if bytes > limits.max_file_bytes {
                        return Err(DatasetError::FileTooLarge {
                            path,
                            bytes,
                            max: limits.max_file_bytes,
                        });
                    }
                    self.total_bytes += bytes;
                    if self.total_bytes > limits.max_total_bytes {
                        return Err(DatasetError::DatasetTooLarge {
                            max: limits.max_total_bytes,
                        });
                    }
                    self.files.push(ImageFile {
                        class,
                        relative_path: path,
                        bytes,
                    });
                }
                EntryKind::File(_) | EntryKind::Other => {}
            }
        }
        Ok(())
    }

    /// The directory that was scanned.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Number of image files per class, indexed like [`Listing::classes`].
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for file in &self.files {
            counts[file.class] += 1;
        }
        counts
    }

    /// Reads one listed file, refusing it if it grew past the limit since the scan.
    fn read(&self, file: &ImageFile, limits: &DatasetLimits) -> Result<Vec<u8>, DatasetError> {
        let io_err = |source| DatasetError::Io {
            path: file.relative_path.clone(),
            source,
        };
        let handle = fs::File::open(self.root.join(&file.relative_path)).map_err(io_err)?;
        let mut bytes = Vec::with_capacity(file.bytes as usize);
        handle
            .take(limits.max_file_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > limits.max_file_bytes {
            return Err(DatasetError::FileTooLarge {
                path: file.relative_path.clone(),
                bytes: bytes.len() as u64,
                max: limits.max_file_bytes,
            });
        }
        Ok(bytes)
    }
}

enum EntryKind {
    Dir,
    File(u64),
    Symlink,
    Other,
}

fn read_dir_sorted(dir: &Path, rel: &str) -> Result<Vec<(String, EntryKind)>, DatasetError> {
    let shown = if rel.is_empty() {
        ".".to_string()
    } else {
        rel.to_string()
    };
    let io_err = |source| DatasetError::Io {
        path: shown.clone(),
        source,
    };
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| DatasetError::InvalidName {
                parent: shown.clone(),
            })?;
        // DirEntry::metadata does not follow symlinks, which is what lets us see and refuse them.
        let meta = entry.metadata().map_err(io_err)?;
        let kind = if meta.file_type().is_symlink() {
            EntryKind::Symlink
        } else if meta.is_dir() {
            EntryKind::Dir
        } else if meta.is_file() {
            EntryKind::File(meta.len())
        } else {
            EntryKind::Other
        };
        out.push((name, kind));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn is_image_name(name: &str) -> bool {
    name.rsplit_once('.')
        .map(|(_, ext)| IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

const HASH_DOMAIN: &[u8] = b"gantry-imagefolder-v1\n";

/// The content hash of the data a [`Listing`] describes, as lower-case hex SHA-256.
///
/// Definition (so other services can reproduce it): SHA-256 over the bytes
/// `"gantry-imagefolder-v1\n"`, then for every image file in byte order of its `/`-separated
/// path relative to the root: the path's UTF-8 bytes, one `0` byte, the file's length as a
/// little-endian `u64`, and the 32-byte SHA-256 of the file's content. Hashing each file
/// separately lets loading hash in parallel and keeps one definition for both. Only the files the
/// loader reads count, so a stray `README` in a class folder does not change it.
pub fn content_hash(listing: &Listing, limits: &DatasetLimits) -> Result<String, DatasetError> {
    let digests = listing
        .files
        .iter()
        .map(|f| {
            listing
                .read(f, limits)
                .map(|b| (b.len() as u64, file_digest(&b)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(combine_digests(listing, &digests))
}

fn file_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn combine_digests(listing: &Listing, digests: &[(u64, [u8; 32])]) -> String {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    for (file, (len, digest)) in listing.files.iter().zip(digests) {
        h.update(file.relative_path.as_bytes());
        h.update([0u8]);
        h.update(len.to_le_bytes());
        h.update(digest);
    }
    hex::encode(h.finalize())
}

/// Why one image could not be used; turned into a [`DatasetError`] with its path.
#[derive(Debug)]
enum ImageProblem {
    Bad(String),
    TooLarge { width: u32, height: u32 },
}

/// Reads only an image's header: its format (PNG or JPEG) and dimensions, checked against the
/// limits. Returns `(width, height)`.
fn probe(bytes: &[u8], limits: &DatasetLimits) -> Result<(u32, u32), ImageProblem> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageProblem::Bad(e.to_string()))?;
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(ImageProblem::Bad(format!(
                "{other:?} images are not supported"
            )))
        }
        None => return Err(ImageProblem::Bad("unrecognised image format".into())),
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| ImageProblem::Bad(e.to_string()))?;
    if width == 0 || height == 0 {
        return Err(ImageProblem::Bad("the image is empty".into()));
    }
    if width > limits.max_image_side
        || height > limits.max_image_side
        || u64::from(width) * u64::from(height) > limits.max_image_pixels
    {
        return Err(ImageProblem::TooLarge { width, height });
    }
    Ok((width, height))
}

/// Decodes one image into `out` (`3 * size * size` floats, channel-major), normalised.
fn decode_into(
    bytes: &[u8],
    size: u32,
    norm: &Normalization,
    limits: &DatasetLimits,
    out: &mut [f32],
) -> Result<(), ImageProblem> {
    probe(bytes, limits)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageProblem::Bad(e.to_string()))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_image_width = Some(limits.max_image_side);
    decoder_limits.max_image_height = Some(limits.max_image_side);
    // Room for the largest allowed image at 16 bits x 4 channels, plus decoder scratch.
    decoder_limits.max_alloc = Some(
        limits
            .max_image_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(decoder_limits);
    let rgb = reader
        .decode()
        .map_err(|e| ImageProblem::Bad(e.to_string()))?
        .to_rgb8();
    let rgb = if rgb.dimensions() == (size, size) {
        rgb
    } else {
        image::imageops::resize(&rgb, size, size, image::imageops::FilterType::Triangle)
    };
    let plane = (size * size) as usize;
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - norm.mean[c]) / norm.std[c];
        }
    }
    Ok(())
}

/// Decodes one image the way [`Dataset::load`] does (same checks, resize and normalisation), for
/// inference on single images. Returns `3 * image_size * image_size` floats, channel-major.
pub fn preprocess_image(
    bytes: &[u8],
    image_size: u32,
    normalization: &Normalization,
    limits: &DatasetLimits,
) -> Result<Vec<f32>, DatasetError> {
    if !IMAGE_SIZE_RANGE.contains(&image_size) {
        return Err(DatasetError::InvalidOptions(format!(
            "image_size must be within {IMAGE_SIZE_RANGE:?}, not {image_size}"
        )));
    }
    let mut out = vec![0f32; 3 * (image_size * image_size) as usize];
    decode_into(bytes, image_size, normalization, limits, &mut out)
        .map_err(|p| problem_to_error(p, "image".into(), limits))?;
    Ok(out)
}

fn problem_to_error(problem: ImageProblem, path: String, limits: &DatasetLimits) -> DatasetError {
    match problem {
        ImageProblem::Bad(reason) => DatasetError::BadImage { path, reason },
        ImageProblem::TooLarge { width, height } => DatasetError::ImageTooLarge {
            path,
            width,
            height,
            max_side: limits.max_image_side,
            max_pixels: limits.max_image_pixels,
        },
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
    pub content_hash: String,
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
                            .map_err(|p| problem_to_error(p, file.relative_path.clone(), limits))?;
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

    #[test]
    fn image_names_are_recognised_by_extension() {
        assert!(is_image_name("a.PNG"));
        assert!(is_image_name("x.y.jpeg"));
        assert!(!is_image_name("README"));
        assert!(!is_image_name("notes.txt"));
    }
}
