//! From image bytes to network input: the header checks of [`crate::images`], then decoding
//! with `image::Limits` set, conversion to RGB, a resize to `size` x `size` (bilinear, aspect
//! ratio not kept) and per-channel [`Normalization`]. Loading a dataset and classifying a single
//! image both go through [`decode_into`], so a model sees the same pixels at both.

use std::io::Cursor;

use image::ImageReader;
use serde::{Deserialize, Serialize};

use crate::error::DatasetError;
use crate::images::{probe, ImageProblem};
use crate::limits::{DatasetLimits, IMAGE_SIZE_RANGE};

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

/// Decodes one image into `out` (`3 * size * size` floats, channel-major), normalised.
pub(crate) fn decode_into(
    bytes: &[u8],
    size: u32,
    norm: &Normalization,
    limits: &DatasetLimits,
    out: &mut [f32],
) -> Result<(), ImageProblem> {
    probe(Cursor::new(bytes), limits)?;
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

/// Decodes one image the way [`Dataset::load`](crate::Dataset::load) does (same checks, resize and normalisation), for
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
        .map_err(|p| p.into_error("image".into(), limits))?;
    Ok(out)
}
