//! Image header checks: the one set of rules an image file must pass before anything decodes it.
//! A file is taken only when its content (not its name) is PNG or JPEG, its header can be read,
//! and the dimensions it announces are non-zero and within [`DatasetLimits`]. Only the header is
//! read, so a decompression bomb costs a few bytes.
//!
//! The api checks every image of a submitted dataset with [`check_file`] and the trainer checks
//! each one again just before decoding it, so a dataset the api accepts
//! (and charges for) is one the trainer can load. Needs no libtorch.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Seek};
use std::path::Path;

use image::{ImageFormat, ImageReader};

use crate::error::DatasetError;
use crate::limits::DatasetLimits;

/// Checks the header of the image in `bytes`; `path` names it in the error. Returns
/// `(width, height)`.
pub fn check_header(
    bytes: &[u8],
    path: &str,
    limits: &DatasetLimits,
) -> Result<(u32, u32), DatasetError> {
    probe(Cursor::new(bytes), limits).map_err(|p| p.into_error(path.to_owned(), limits))
}

/// Checks the header of the image file at `file`, reading only as much of it as the header takes;
/// `path` names it in the error (a path relative to the dataset root, not the real filesystem).
/// A file that cannot be opened is reported as not a readable image. Returns `(width, height)`.
pub fn check_file(
    file: &Path,
    path: &str,
    limits: &DatasetLimits,
) -> Result<(u32, u32), DatasetError> {
    let opened = File::open(file).map_err(|e| ImageProblem::Bad(e.to_string()));
    opened
        .and_then(|f| check_opened(f, limits))
        .map_err(|p| p.into_error(path.to_owned(), limits))
}

/// [`check_file`] on a file its caller opened (without following links, say): the header is
/// read from that handle, so it is the same file the caller goes on to use.
pub fn check_open_file(
    file: &mut File,
    path: &str,
    limits: &DatasetLimits,
) -> Result<(u32, u32), DatasetError> {
    check_opened(file, limits).map_err(|p| p.into_error(path.to_owned(), limits))
}

fn check_opened(
    file: impl Read + Seek,
    limits: &DatasetLimits,
) -> Result<(u32, u32), ImageProblem> {
    probe(BufReader::new(file), limits)
}

/// Why one image could not be used; turned into a [`DatasetError`] with its path.
#[derive(Debug)]
pub(crate) enum ImageProblem {
    /// Not a readable PNG or JPEG: what the decoder (or the file system) said.
    Bad(String),
    /// The header announces dimensions beyond the limits.
    TooLarge { width: u32, height: u32 },
}

impl ImageProblem {
    /// The dataset error for the image at `path`.
    pub(crate) fn into_error(self, path: String, limits: &DatasetLimits) -> DatasetError {
        match self {
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
}

/// Reads only an image's header: its format (PNG or JPEG, from the content) and dimensions,
/// checked against the limits. Returns `(width, height)`.
pub(crate) fn probe<R: BufRead + Seek>(
    reader: R,
    limits: &DatasetLimits,
) -> Result<(u32, u32), ImageProblem> {
    let reader = ImageReader::new(reader)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_png_within_the_limits_passes_with_its_dimensions() {
        let limits = DatasetLimits::default();
        assert_eq!(
            check_header(&png(7, 5), "a/x.png", &limits).unwrap(),
            (7, 5)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.png");
        std::fs::write(&file, png(3, 4)).unwrap();
        assert_eq!(check_file(&file, "a/x.png", &limits).unwrap(), (3, 4));
    }

    #[test]
    fn images_beyond_the_limits_are_refused_by_name() {
        let limits = DatasetLimits {
            max_image_side: 8,
            ..DatasetLimits::default()
        };
        let err = check_header(&png(9, 2), "a/wide.png", &limits).unwrap_err();
        assert!(
            matches!(err, DatasetError::ImageTooLarge { ref path, width: 9, height: 2, .. } if path == "a/wide.png"),
            "{err}"
        );
    }

    #[test]
    fn the_content_decides_the_format_not_the_name() {
        let limits = DatasetLimits::default();
        // A GIF header named like a PNG: the trainer could never decode it.
        let gif = b"GIF89a\x02\x00\x02\x00\x00\x00\x00;";
        let err = check_header(gif, "a/x.png", &limits).unwrap_err();
        assert!(matches!(err, DatasetError::BadImage { .. }), "{err}");
        let err = check_header(b"not an image", "a/y.png", &limits).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`a/y.png` is not a readable PNG or JPEG image"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_not_a_readable_image() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_file(
            &dir.path().join("missing.png"),
            "a/missing.png",
            &DatasetLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, DatasetError::BadImage { .. }), "{err}");
        assert!(err.is_data_error());
    }
}
