//! Step one of loading an ImageFolder dataset: [`Listing::scan`] walks the directory within
//! [`DatasetLimits`] without decoding anything: class folders (sorted by name, hidden ones
//! skipped), image files (by extension), sizes. Symlinks are refused outright, so a dataset can
//! never reach outside its own directory. Errors name paths relative to the dataset root.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::DatasetError;
use crate::limits::DatasetLimits;

/// File extensions (lower-cased) taken as images; everything else in a class folder is ignored.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

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
    pub(crate) fn read(
        &self,
        file: &ImageFile,
        limits: &DatasetLimits,
    ) -> Result<Vec<u8>, DatasetError> {
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
