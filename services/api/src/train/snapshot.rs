//! A submitted dataset made ready to queue: the path rules of browse, the ImageFolder layout, the
//! bounds and every image's header (the trainer's own rules), then one deterministic archive
//! named by its content.
//!
//! A folder submitted again unchanged is not checked and hashed again: [`SnapshotCache`] keeps,
//! per folder, the hash and the stamp of every image file (device, inode, length, modified and
//! changed times). Any change to a file, or a file added or removed, changes the stamps, and the
//! folder is checked and packed anew.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use gantry_runtime::dataset::{self, DatasetFile};
use gantry_training::dataset::{check_open_file, DatasetLimits, Listing};

use crate::data_path::DataRoot;
use crate::error::{ApiError, ApiResult};

/// A dataset ready to queue.
pub(super) struct Snapshot {
    pub(super) hash: String,
    pub(super) classes: Vec<String>,
    /// The packed archive; `None` when the hash came from the [`SnapshotCache`] (the archive is
    /// made only if the store no longer holds it).
    pub(super) archive: Option<tempfile::NamedTempFile>,
}

/// Folders remembered at most; past this the cache starts over.
const CACHED_FOLDERS: usize = 1024;
/// A file modified this recently when it is stamped is not remembered: a change within the
/// filesystem's timestamp granularity could leave its stamp as it was.
const SETTLED: Duration = Duration::from_secs(2);

/// What one image file looked like when its folder was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    relative: String,
    dev: u64,
    ino: u64,
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

#[derive(Debug, Clone)]
struct Remembered {
    stamps: Vec<Stamp>,
    hash: String,
    classes: Vec<String>,
}

/// The hashes of folders already submitted, by their real path; shared by every submission.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    folders: Mutex<HashMap<PathBuf, Remembered>>,
}

impl SnapshotCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Remembered>> {
        self.folders.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(&self, dir: &Path, stamps: &[Stamp], classes: &[String]) -> Option<String> {
        let folders = self.lock();
        let r = folders.get(dir)?;
        (r.stamps == stamps && r.classes == classes).then(|| r.hash.clone())
    }

    fn remember(&self, dir: &Path, remembered: Remembered) {
        let mut folders = self.lock();
        if folders.len() >= CACHED_FOLDERS && !folders.contains_key(dir) {
            folders.clear();
        }
        folders.insert(dir.to_owned(), remembered);
    }

    /// Forget `dir` (its snapshot must be packed again).
    pub(super) fn forget(&self, dir: &Path) {
        self.lock().remove(dir);
    }
}

/// The stamps of `listing`'s files under `dir`, and whether all of them have settled; `None`
/// when one cannot be read (the full checks then say why).
fn stamps(dir: &Path, listing: &Listing) -> Option<(Vec<Stamp>, bool)> {
    let settled_before = SystemTime::now().checked_sub(SETTLED)?;
    let mut settled = true;
    let mut out = Vec::with_capacity(listing.files.len());
    for f in &listing.files {
        let meta = std::fs::symlink_metadata(dir.join(&f.relative_path)).ok()?;
        if !meta.is_file() {
            return None;
        }
        settled &= meta.modified().ok().is_some_and(|m| m < settled_before);
        out.push(Stamp {
            relative: f.relative_path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        });
    }
    Some((out, settled))
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

/// Check `train_path` (path rules, ImageFolder layout, bounds, image headers) and pack it; or,
/// when `cache` knows the folder unchanged since it was last packed, only name its snapshot.
/// Returns the snapshot and the folder's real path.
pub(super) fn prepare(
    root: &DataRoot,
    train_path: &str,
    max_bytes: u64,
    cache: Option<&SnapshotCache>,
) -> ApiResult<(Snapshot, PathBuf)> {
    let dir = root.resolve_dir(train_path)?;
    let limits = DatasetLimits {
        max_total_bytes: max_bytes,
        ..DatasetLimits::default()
    };
    let listing = Listing::scan(dir.real(), &limits).map_err(dataset_error)?;
    let real = dir.real().to_owned();
    // Stamped before anything is read: a change made while packing shows next time.
    let stamped = stamps(&real, &listing);
    if let (Some(cache), Some((stamps, _))) = (cache, &stamped) {
        if let Some(hash) = cache.lookup(&real, stamps, &listing.classes) {
            tracing::debug!(dir = %real.display(), hash, "dataset unchanged since it was packed");
            return Ok((
                Snapshot {
                    hash,
                    classes: listing.classes.clone(),
                    archive: None,
                },
                real,
            ));
        }
    }
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
    let hash: String = dataset::pack(&mut files, archive.path())
        .map_err(ApiError::internal)?
        .into();
    if let (Some(cache), Some((stamps, true))) = (cache, stamped) {
        cache.remember(
            &real,
            Remembered {
                stamps,
                hash: hash.clone(),
                classes: listing.classes.clone(),
            },
        );
    }
    Ok((
        Snapshot {
            hash,
            classes: listing.classes.clone(),
            archive: Some(archive),
        },
        real,
    ))
}

/// `cats/sub/a.png` → `sub/a.png`.
fn strip_class(relative: &str) -> &str {
    relative
        .split_once('/')
        .map(|(_, rest)| rest)
        .unwrap_or(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(rgb: [u8; 3]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(16, 16, image::Rgb(rgb))
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    /// `png` with a text chunk of eight bytes of `note` after its header: the same length for
    /// every `note`, other bytes.
    fn png_with_note(note: u8) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 {
                        (crc >> 1) ^ 0xEDB8_8320
                    } else {
                        crc >> 1
                    };
                }
            }
            !crc
        }
        let plain = png([10, 20, 30]);
        // Signature (8) and the IHDR chunk (4 + 4 + 13 + 4).
        let (head, rest) = plain.split_at(33);
        let mut body = b"tEXtComment\0".to_vec();
        body.extend([note; 8]);
        let mut chunk = ((body.len() - 4) as u32).to_be_bytes().to_vec();
        chunk.extend(&body);
        chunk.extend(crc32(&body).to_be_bytes());
        [head, &chunk, rest].concat()
    }

    /// Write `bytes` to `path` and date it an hour back (settled).
    fn write_settled(path: &Path, bytes: &[u8]) -> SystemTime {
        std::fs::write(path, bytes).unwrap();
        let past = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(past)
            .unwrap();
        past
    }

    fn dataset(root: &Path) {
        for class in ["a", "b"] {
            std::fs::create_dir_all(root.join("ds").join(class)).unwrap();
            for i in 0..2u8 {
                write_settled(
                    &root.join(format!("ds/{class}/{i}.png")),
                    &png([i * 50, 10, 200]),
                );
            }
        }
    }

    #[test]
    fn an_unchanged_folder_is_named_from_the_cache_and_any_change_packs_it_again() {
        let dir = tempfile::tempdir().unwrap();
        dataset(dir.path());
        let root = DataRoot::new(dir.path());
        let cache = SnapshotCache::default();
        let prep = |cache: Option<&SnapshotCache>| prepare(&root, "/ds", 1 << 30, cache).unwrap().0;

        let first = prep(Some(&cache));
        assert!(first.archive.is_some(), "packed the first time");
        let again = prep(Some(&cache));
        assert!(again.archive.is_none(), "unchanged: named from the cache");
        assert_eq!((&again.hash, &again.classes), (&first.hash, &first.classes));

        // Other content of the same length, with the modified time put back as it was: only the
        // changed time and the bytes differ.
        let file = dir.path().join("ds/a/1.png");
        let modified = write_settled(&file, &png_with_note(b'a'));
        let noted = prep(Some(&cache));
        assert!(noted.archive.is_some(), "a changed file is packed again");
        assert_ne!(noted.hash, first.hash);
        assert!(prep(Some(&cache)).archive.is_none());
        let new = png_with_note(b'b');
        assert_eq!(std::fs::read(&file).unwrap().len(), new.len());
        let ctime = |f: &Path| {
            let m = std::fs::metadata(f).unwrap();
            (m.ctime(), m.ctime_nsec())
        };
        let before = ctime(&file);
        // Written again until the filesystem's coarse clock shows the change in the changed time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            std::fs::write(&file, &new).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(modified)
                .unwrap();
            if ctime(&file) != before {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the changed time never moved"
            );
        }
        let changed = prep(Some(&cache));
        assert!(changed.archive.is_some(), "a changed file is packed again");
        assert_ne!(changed.hash, noted.hash);
        assert_eq!(changed.hash, prep(None).hash, "the hash of the new content");

        // A file added, then one removed.
        write_settled(&dir.path().join("ds/b/9.png"), &png([9, 9, 9]));
        let added = prep(Some(&cache));
        assert!(added.archive.is_some());
        assert_ne!(added.hash, changed.hash);
        std::fs::remove_file(dir.path().join("ds/b/9.png")).unwrap();
        let removed = prep(Some(&cache));
        assert!(removed.archive.is_some());
        assert_eq!(removed.hash, changed.hash);
        assert!(prep(Some(&cache)).archive.is_none());

        // Forgotten (the store lost it): packed again.
        cache.forget(&std::fs::canonicalize(dir.path().join("ds")).unwrap());
        assert!(prep(Some(&cache)).archive.is_some());
    }

    #[test]
    fn a_file_modified_just_now_is_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        dataset(dir.path());
        std::fs::write(dir.path().join("ds/a/0.png"), png([7, 7, 7])).unwrap();
        let root = DataRoot::new(dir.path());
        let cache = SnapshotCache::default();
        for _ in 0..2 {
            let s = prepare(&root, "/ds", 1 << 30, Some(&cache)).unwrap().0;
            assert!(s.archive.is_some(), "checked and packed every time");
        }
    }
}
