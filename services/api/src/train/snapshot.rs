//! A submitted dataset made ready to queue: the path rules of browse, the ImageFolder layout, the
//! bounds and every image's header (the trainer's own rules), then one deterministic archive
//! named by its content.

use gantry_runtime::dataset::{self, DatasetFile};
use gantry_training::dataset::{check_open_file, DatasetLimits, Listing};

use crate::data_path::DataRoot;
use crate::error::{ApiError, ApiResult};

/// A dataset ready to queue.
pub(super) struct Snapshot {
    pub(super) hash: String,
    pub(super) classes: Vec<String>,
    pub(super) archive: tempfile::NamedTempFile,
}

fn dataset_error(e: gantry_training::dataset::DatasetError) -> ApiError {
    if let gantry_training::dataset::DatasetError::DatasetTooLarge { .. } = e {
        return ApiError::new(
            gantry_contracts::error::ErrorCode::PayloadTooLarge,
            format!("train_path is too large to train on here: {e} (GANTRY_MAX_DATASET_GB)"),
        );
    }
    if e.is_data_error() {
        ApiError::bad_request(format!(
            "train_path is not a usable ImageFolder dataset: {e}"
        ))
    } else {
        ApiError::internal(e)
    }
}

/// Check `train_path` (path rules, ImageFolder layout, bounds, image headers) and pack it.
pub(super) fn prepare(root: &DataRoot, train_path: &str, max_bytes: u64) -> ApiResult<Snapshot> {
    let dir = root.resolve_dir(train_path)?;
    let limits = DatasetLimits {
        max_total_bytes: max_bytes,
        ..DatasetLimits::default()
    };
    let listing = Listing::scan(dir.real(), &limits).map_err(dataset_error)?;
    // Every image's header, before anything is decoded anywhere: refuse bombs and junk now.
    let mut readable = vec![0usize; listing.classes.len()];
    let mut files = Vec::with_capacity(listing.files.len());
    for f in &listing.files {
        let path = dir.real().join(&f.relative_path);
        if !root.contains(&path) {
            return Err(ApiError::forbidden(format!(
                "`{}` resolves outside the data root",
                f.relative_path
            )));
        }
        // Opened once, as a plain file (no link followed, no FIFO or device waited on), and
        // checked by the trainer's own header rules from that handle: what passes here loads
        // there, and packing takes only this same file.
        let (mut file, seen) = dataset::open_plain(&path).map_err(|e| {
            ApiError::bad_request(format!(
                "`{}` is not a readable plain file: {e}",
                f.relative_path
            ))
        })?;
        check_open_file(&mut file, &f.relative_path, &limits)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        readable[f.class] += 1;
        files.push(DatasetFile {
            relative: format!(
                "{}/{}",
                listing.classes[f.class],
                strip_class(&f.relative_path)
            ),
            source: path,
            seen,
        });
    }
    if let Some(i) = readable.iter().position(|n| *n == 0) {
        return Err(ApiError::bad_request(format!(
            "class folder `{}` has no readable PNG or JPEG image",
            listing.classes[i]
        )));
    }
    let archive = tempfile::NamedTempFile::new().map_err(ApiError::internal)?;
    let hash = dataset::pack(&mut files, archive.path())
        .map_err(ApiError::internal)?
        .into();
    Ok(Snapshot {
        hash,
        classes: listing.classes.clone(),
        archive,
    })
}

/// `cats/sub/a.png` → `sub/a.png`.
fn strip_class(relative: &str) -> &str {
    relative
        .split_once('/')
        .map(|(_, rest)| rest)
        .unwrap_or(relative)
}
