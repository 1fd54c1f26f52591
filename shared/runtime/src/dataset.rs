//! Dataset snapshots: an ImageFolder directory packed into a deterministic tar archive whose
//! SHA-256 is its name ([`SnapshotHash`]), so an unchanged dataset is stored once and remote nodes
//! need no shared filesystem. The api packs; trainers unpack into their cache.
//!
//! A snapshot hash names the archive's bytes; the training library's `ContentHash` names the
//! images the loader reads. Jobs, the object store, the trainer's cache and stored model cards
//! use the snapshot hash.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Component, Path};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of a dataset snapshot: the hex SHA-256 of its archive, 64 hex digits (so it is safe
/// as a file name and an object key). A string on the wire; one that is not 64 hex digits does
/// not deserialise.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotHash(String);

/// A string that is not 64 hex digits, so not a [`SnapshotHash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a dataset snapshot hash (64 hex digits)")]
pub struct InvalidSnapshotHash(pub String);

impl SnapshotHash {
    /// `hash` if it is 64 hex digits (either case, kept as given).
    pub fn parse(hash: &str) -> Result<Self, InvalidSnapshotHash> {
        if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(hash.to_owned()))
        } else {
            Err(InvalidSnapshotHash(hash.to_owned()))
        }
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `digest` (a SHA-256) is the one this hash names.
    pub fn names(&self, digest: &[u8]) -> bool {
        hex::encode(digest).eq_ignore_ascii_case(&self.0)
    }
}

impl TryFrom<String> for SnapshotHash {
    type Error = InvalidSnapshotHash;

    fn try_from(hash: String) -> Result<Self, Self::Error> {
        Self::parse(&hash)
    }
}

impl From<SnapshotHash> for String {
    fn from(hash: SnapshotHash) -> String {
        hash.0
    }
}

impl AsRef<str> for SnapshotHash {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file of a dataset: its path inside the archive (`class/image.png`), where to read it, and
/// the file as it was when checked.
#[derive(Debug, Clone)]
pub struct DatasetFile {
    /// Relative path with `/` separators: `<class>/<file>`.
    pub relative: String,
    /// The file on disk.
    pub source: std::path::PathBuf,
    /// The file that was checked ([`open_plain`]): [`pack`] packs only that same file.
    pub seen: FileIdentity,
}

/// Which file an open handle is, and how long: device, inode and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
    /// Last status change: a file made under a freed inode number differs here.
    ctime: (i64, i64),
    /// Its length in bytes when opened.
    pub len: u64,
}

/// Open `path` for reading only if it is a plain file: a symbolic link in its last component is
/// not followed, and a FIFO or a device is refused without blocking on it. Returns the handle
/// and which file it is, so a later open can tell whether the path still names the same file.
pub fn open_plain(path: &Path) -> std::io::Result<(std::fs::File, FileIdentity)> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a plain file",
        ));
    }
    Ok((
        file,
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
        },
    ))
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Pack `files` (sorted here) into a tar archive at `out`, with fixed modes, owners and times so
/// the same content always gives the same bytes. Returns the archive's hash, its name.
pub fn pack(files: &mut [DatasetFile], out: &Path) -> anyhow::Result<SnapshotHash> {
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    let file = std::fs::File::create(out).context("creating the snapshot file")?;
    let mut writer = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
    };
    {
        let mut builder = tar::Builder::new(&mut writer);
        builder.mode(tar::HeaderMode::Deterministic);
        for f in files.iter() {
            let (src, now) =
                open_plain(&f.source).with_context(|| format!("reading {}", f.relative))?;
            // The same file that was checked, at the same length: one swapped for another file,
            // a link or a device since, or grown, is refused rather than packed.
            if now != f.seen {
                bail!("{} changed while the dataset was being read", f.relative);
            }
            let len = now.len;
            let mut src = src.take(len);
            let mut header = tar::Header::new_gnu();
            header.set_size(len);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, &f.relative, &mut src)
                .with_context(|| format!("packing {}", f.relative))?;
        }
        builder.finish()?;
    }
    writer.flush()?;
    Ok(SnapshotHash(hex::encode(writer.hasher.finalize())))
}

/// Unpack a snapshot into `dir`, refusing anything but plain files inside a class folder
/// (`<class>/.../<file>`, at most 16 deep; no links, no absolute paths, no `..`).
pub fn unpack(archive: impl Read, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries()? {
        let mut entry = entry?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("snapshot holds something other than a plain file");
        }
        let path = entry.path()?.into_owned();
        let parts: Vec<_> = path.components().collect();
        if parts.len() < 2
            || parts.len() > 16
            || !parts.iter().all(|c| matches!(c, Component::Normal(_)))
        {
            bail!(
                "snapshot entry {} is not <class>/.../<file>",
                path.display()
            );
        }
        let target = dir.join(&path);
        std::fs::create_dir_all(target.parent().unwrap())?;
        let mut out = std::fs::File::create(&target)?;
        std::io::copy(&mut entry, &mut out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_hex_names_a_snapshot() {
        assert!(SnapshotHash::parse(&"ab".repeat(32)).is_ok());
        assert!(SnapshotHash::parse(&"AB".repeat(32)).is_ok());
        assert!(SnapshotHash::parse("../../etc").is_err());
        assert!(SnapshotHash::parse(&"zz".repeat(32)).is_err());
        assert!(SnapshotHash::parse(&"ab".repeat(31)).is_err());
        let hash: SnapshotHash = serde_json::from_str(&format!("\"{}\"", "0f".repeat(32))).unwrap();
        assert_eq!(
            serde_json::to_string(&hash).unwrap(),
            format!("\"{}\"", "0f".repeat(32))
        );
        assert!(serde_json::from_str::<SnapshotHash>("\"../x\"").is_err());
        assert!(hash.names(&[0x0f; 32]) && !hash.names(&[0; 32]));
    }

    #[test]
    fn the_same_content_packs_to_the_same_hash_and_unpacks_back() {
        let src = tempfile::tempdir().unwrap();
        for (class, name, body) in [
            ("cats", "a.png", "1"),
            ("dogs", "b.png", "22"),
            ("cats", "c.png", "333"),
        ] {
            std::fs::create_dir_all(src.path().join(class)).unwrap();
            std::fs::write(src.path().join(class).join(name), body).unwrap();
        }
        let files = |order: &[(&str, &str)]| -> Vec<DatasetFile> {
            order
                .iter()
                .map(|(c, n)| {
                    let source = src.path().join(c).join(n);
                    let (_, seen) = open_plain(&source).unwrap();
                    DatasetFile {
                        relative: format!("{c}/{n}"),
                        source,
                        seen,
                    }
                })
                .collect()
        };
        let out = tempfile::tempdir().unwrap();
        let h1 = pack(
            &mut files(&[("cats", "a.png"), ("dogs", "b.png"), ("cats", "c.png")]),
            &out.path().join("1.tar"),
        )
        .unwrap();
        let h2 = pack(
            &mut files(&[("dogs", "b.png"), ("cats", "c.png"), ("cats", "a.png")]),
            &out.path().join("2.tar"),
        )
        .unwrap();
        assert_eq!(h1, h2);
        std::fs::write(src.path().join("cats/a.png"), "changed").unwrap();
        let h3 = pack(
            &mut files(&[("cats", "a.png"), ("dogs", "b.png"), ("cats", "c.png")]),
            &out.path().join("3.tar"),
        )
        .unwrap();
        assert_ne!(h1, h3);

        let dest = tempfile::tempdir().unwrap();
        unpack(
            std::fs::File::open(out.path().join("1.tar")).unwrap(),
            dest.path(),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.path().join("dogs/b.png")).unwrap(),
            "22"
        );
        assert_eq!(
            std::fs::read_to_string(dest.path().join("cats/c.png")).unwrap(),
            "333"
        );
    }

    #[test]
    fn a_file_swapped_after_its_check_is_refused_and_links_and_fifos_are_not_plain_files() {
        let src = tempfile::tempdir().unwrap();
        let image = src.path().join("a.png");
        std::fs::write(&image, "1").unwrap();
        // Held open, as a reader of it would, so its inode number is not reused at once.
        let (_held, seen) = open_plain(&image).unwrap();
        // Replaced by another file under the same name: another inode.
        std::fs::remove_file(&image).unwrap();
        std::fs::write(&image, "1").unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut files = vec![DatasetFile {
            relative: "cats/a.png".into(),
            source: image.clone(),
            seen,
        }];
        let err = pack(&mut files, &out.path().join("x.tar")).unwrap_err();
        assert!(format!("{err:#}").contains("changed"), "{err:#}");

        let outside = src.path().join("outside.png");
        std::fs::write(&outside, "secret").unwrap();
        let link = src.path().join("link.png");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(open_plain(&link).is_err(), "a link is never followed");
        let fifo = src.path().join("fifo.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            open_plain(&fifo).is_err(),
            "a FIFO is refused without blocking"
        );
        assert!(open_plain(&src.path().join("missing.png")).is_err());
    }
}
