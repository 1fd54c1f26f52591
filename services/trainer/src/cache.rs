//! The node's dataset cache ([`DatasetCache`]): it fetches a job's snapshot from the datasets
//! bucket, checks it against the [`SnapshotHash`] the job names, unpacks it and evicts what no
//! longer fits.
//!
//! Snapshots are unpacked under `<cache_dir>/datasets/<hash>/`, each with a `<hash>.used` marker
//! whose modification time is its last use. When the cache grows past its budget
//! (`GANTRY_CACHE_MAX_GB`), the least recently used snapshots that no job of this node is using
//! are removed until it fits again. A snapshot in use is never removed, even when that leaves the
//! cache over budget. One cache directory belongs to one trainer: two trainers sharing it would
//! not see each other's jobs.
//!
//! A job takes its [`Lease`] before it looks for its snapshot, and eviction decides and moves a
//! snapshot aside (`.evicting-<hash>`) under the same lock, so a snapshot a job has found is never
//! removed under it. A fetch unpacks into a staging folder (`.incoming-*`) and renames it into
//! place, so a half-fetched snapshot is never seen.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use async_nats::jetstream::{self, object_store::GetErrorKind};
use gantry_contracts::jobs::{dataset_key, DATASETS_BUCKET};
use gantry_runtime::dataset::SnapshotHash;
use gantry_runtime::metrics;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default cache directory: `<tmp>/gantry-trainer-<node name>`.
pub fn default_cache_dir(node_name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gantry-trainer-{node_name}"))
}

/// Why a snapshot could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The datasets bucket has no snapshot of that hash: no node can train the job.
    #[error("the dataset snapshot {0} is missing from the {DATASETS_BUCKET} store")]
    Missing(SnapshotHash),
    /// Anything else (the bucket, the download, a hash mismatch, the disk): worth a retry.
    #[error("fetching the dataset: {0:#}")]
    Other(#[from] anyhow::Error),
}

/// The node's dataset cache; cheap to clone.
#[derive(Clone)]
pub struct DatasetCache {
    js: jetstream::Context,
    /// `<cache_dir>/datasets`.
    root: PathBuf,
    max_bytes: u64,
    in_use: InUse,
}

impl DatasetCache {
    /// The cache under `<cache_dir>/datasets`, fetching from the datasets bucket of `js` and
    /// holding at most `max_bytes` of snapshots no job uses. Finishes the evictions a crash
    /// interrupted, so open it before any job runs.
    pub fn open(js: jetstream::Context, cache_dir: &Path, max_bytes: u64) -> Self {
        let root = cache_dir.join("datasets");
        remove_leftovers(&root);
        Self {
            js,
            root,
            max_bytes,
            in_use: InUse::default(),
        }
    }

    /// The unpacked snapshot `hash`, from the cache or fetched into it, and a lease that keeps it
    /// there until dropped.
    pub async fn get(&self, hash: &SnapshotHash) -> Result<(PathBuf, Lease), CacheError> {
        let lease = self.in_use.lease(hash);
        let dir = self.root.join(hash.as_str());
        if dir.is_dir() {
            tracing::debug!(dir = %dir.display(), "dataset cached");
            if let Err(e) = touch(&self.root, hash) {
                tracing::warn!(error = %e, "could not mark the cached dataset used");
            }
            return Ok((dir, lease));
        }
        self.fetch(hash, &dir).await?;
        let _ = touch(&self.root, hash);
        self.evict_over_budget().await;
        Ok((dir, lease))
    }

    /// Download the snapshot into a staging folder, check its hash, unpack it, move it in place.
    async fn fetch(&self, hash: &SnapshotHash, dir: &Path) -> Result<(), CacheError> {
        let root = &self.root;
        tokio::fs::create_dir_all(root)
            .await
            .context("creating the dataset cache")?;
        let staging = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempdir_in(root)
            .context("creating a staging folder")?;
        let store = gantry_runtime::jetstream::bucket_store(&self.js, DATASETS_BUCKET).await?;
        let mut object = match store.get(dataset_key(hash.as_str())).await {
            Ok(o) => o,
            Err(e) if e.kind() == GetErrorKind::NotFound => {
                return Err(CacheError::Missing(hash.clone()))
            }
            Err(e) => return Err(anyhow::anyhow!("opening the snapshot: {e}").into()),
        };
        let archive = staging.path().join("snapshot.tar");
        let mut file = tokio::fs::File::create(&archive)
            .await
            .context("creating the snapshot file")?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        loop {
            let n = object
                .read(&mut buf)
                .await
                .context("downloading the snapshot")?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .await
                .context("writing the snapshot")?;
            bytes += n as u64;
        }
        file.flush().await.context("writing the snapshot")?;
        drop(file);
        let digest = hasher.finalize();
        if !hash.names(&digest) {
            return Err(anyhow::anyhow!(
                "the downloaded snapshot hashes to {}, not {hash}",
                hex::encode(digest)
            )
            .into());
        }
        let unpacked = staging.path().join("data");
        {
            let (archive, unpacked) = (archive.clone(), unpacked.clone());
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&archive).context("opening the snapshot")?;
                gantry_runtime::dataset::unpack(std::io::BufReader::new(f), &unpacked)
            })
            .await
            .context("unpacking the snapshot")??;
        }
        // Another job may have filled the cache meanwhile; either copy will do.
        if let Err(e) = tokio::fs::rename(&unpacked, dir).await {
            if !dir.is_dir() {
                return Err(anyhow::anyhow!("moving the dataset into the cache: {e}").into());
            }
        }
        tracing::info!(bytes, dir = %dir.display(), "dataset fetched");
        Ok(())
    }

    /// Evict (off the async workers) until the cache fits its budget, and report its size.
    async fn evict_over_budget(&self) {
        let (root, max, in_use) = (self.root.clone(), self.max_bytes, self.in_use.clone());
        let (evicted, left) = tokio::task::spawn_blocking(move || {
            let evicted = evict(&root, max, &in_use);
            (evicted, list(&root).iter().map(|c| c.bytes).sum::<u64>())
        })
        .await
        .unwrap_or_default();
        metrics::TRAINER_CACHE_BYTES.set(left as i64);
        for c in evicted {
            tracing::info!(
                hash = %c.hash,
                bytes = c.bytes,
                "evicted a dataset from the cache"
            );
        }
    }
}

/// Snapshots in use by this node's jobs, counted per hash.
#[derive(Debug, Default, Clone)]
pub struct InUse(Arc<Mutex<HashMap<SnapshotHash, usize>>>);

/// One job's hold on a snapshot; released on drop.
#[derive(Debug)]
pub struct Lease {
    in_use: InUse,
    hash: SnapshotHash,
}

impl InUse {
    /// Hold `hash` until the lease is dropped.
    pub fn lease(&self, hash: &SnapshotHash) -> Lease {
        *self.lock().entry(hash.clone()).or_default() += 1;
        Lease {
            in_use: self.clone(),
            hash: hash.clone(),
        }
    }

    /// The hashes held now.
    pub fn held(&self) -> HashSet<SnapshotHash> {
        self.lock().keys().cloned().collect()
    }

    /// Run `f` unless `hash` is held, with no lease taken meanwhile.
    fn unless_held<T>(&self, hash: &SnapshotHash, f: impl FnOnce() -> T) -> Option<T> {
        let held = self.lock();
        (!held.contains_key(hash)).then(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SnapshotHash, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.in_use.lock();
        if let Some(n) = held.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.hash);
            }
        }
    }
}

fn marker(root: &Path, hash: &SnapshotHash) -> PathBuf {
    root.join(format!("{hash}.used"))
}

/// Record a use of `<root>/<hash>` now.
pub fn touch(root: &Path, hash: &SnapshotHash) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(marker(root, hash))?;
    f.set_modified(SystemTime::now())
}

/// Bytes of the files under `dir` (not following links).
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// A cached snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Its snapshot hash (the directory's name).
    pub hash: SnapshotHash,
    /// Bytes on disk.
    pub bytes: u64,
    /// Last use (the marker's time; a snapshot without a marker counts as never used).
    pub used: SystemTime,
}

/// Every snapshot under `root`, least recently used first.
pub fn list(root: &Path) -> Vec<Cached> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut cached: Vec<Cached> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        // Staging folders (`.incoming-*`) belong to fetches in progress.
        .filter_map(|e| SnapshotHash::parse(e.file_name().to_str()?).ok())
        .map(|hash| {
            let used = std::fs::metadata(marker(root, &hash))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Cached {
                bytes: size_of(&root.join(hash.as_str())),
                hash,
                used,
            }
        })
        .collect();
    cached.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.hash.cmp(&b.hash)));
    cached
}

/// Remove least recently used snapshots that `in_use` does not hold until the cache holds at most
/// `max_bytes`. Returns what was removed.
pub fn evict(root: &Path, max_bytes: u64, in_use: &InUse) -> Vec<Cached> {
    let cached = list(root);
    let mut total: u64 = cached.iter().map(|c| c.bytes).sum();
    let mut removed = Vec::new();
    for c in cached {
        if total <= max_bytes {
            break;
        }
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let aside = root.join(format!(".evicting-{}-{nanos}", c.hash));
        // Decided and moved aside under the lock jobs take their leases under.
        match in_use.unless_held(&c.hash, || {
            std::fs::rename(root.join(c.hash.as_str()), &aside)
        }) {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(hash = %c.hash, error = %e, "could not remove a cached dataset");
                continue;
            }
            Some(Ok(())) => {}
        }
        let _ = std::fs::remove_file(marker(root, &c.hash));
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(hash = %c.hash, error = %e, "could not remove a cached dataset");
        }
        total -= c.bytes;
        removed.push(c);
    }
    removed
}

/// Finish what an eviction interrupted by a crash left behind; run at start-up, before any job.
pub fn remove_leftovers(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(".evicting-"))
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot(root: &Path, n: u8, bytes: usize, used_secs_ago: u64) -> SnapshotHash {
        let hash = SnapshotHash::parse(&format!("{:064x}", n)).unwrap();
        let dir = root.join(hash.as_str()).join("class");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), vec![0u8; bytes]).unwrap();
        touch(root, &hash).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(marker(root, &hash))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(used_secs_ago))
            .unwrap();
        hash
    }

    #[test]
    fn the_least_recently_used_snapshots_go_first_until_the_cache_fits() {
        let root = tempfile::tempdir().unwrap();
        let old = snapshot(root.path(), 1, 1000, 300);
        let middle = snapshot(root.path(), 2, 1000, 200);
        let recent = snapshot(root.path(), 3, 1000, 100);
        std::fs::create_dir_all(root.path().join(".incoming-x")).unwrap();

        assert_eq!(
            list(root.path())
                .iter()
                .map(|c| c.hash.clone())
                .collect::<Vec<_>>(),
            vec![old.clone(), middle.clone(), recent.clone()]
        );
        let removed = evict(root.path(), 2000, &InUse::default());
        assert_eq!(
            removed.iter().map(|c| c.hash.clone()).collect::<Vec<_>>(),
            vec![old.clone()]
        );
        assert!(!root.path().join(old.as_str()).exists() && !marker(root.path(), &old).exists());
        assert!(
            root.path().join(middle.as_str()).exists()
                && root.path().join(recent.as_str()).exists()
        );
        assert!(
            root.path().join(".incoming-x").exists(),
            "a fetch in progress is left alone"
        );
        assert!(
            evict(root.path(), 2000, &InUse::default()).is_empty(),
            "it fits now"
        );
        std::fs::create_dir_all(root.path().join(".evicting-y-1")).unwrap();
        remove_leftovers(root.path());
        assert!(
            !root.path().join(".evicting-y-1").exists(),
            "a half-done eviction is finished"
        );
        assert!(root.path().join(".incoming-x").exists());
    }

    #[test]
    fn a_snapshot_in_use_stays_even_over_budget() {
        let root = tempfile::tempdir().unwrap();
        let old = snapshot(root.path(), 1, 1000, 300);
        let recent = snapshot(root.path(), 2, 1000, 100);
        let in_use = InUse::default();
        let lease = in_use.lease(&old);
        let second = in_use.lease(&old);
        let removed = evict(root.path(), 0, &in_use);
        assert_eq!(
            removed.iter().map(|c| c.hash.clone()).collect::<Vec<_>>(),
            vec![recent]
        );
        assert!(root.path().join(old.as_str()).exists());
        drop(lease);
        assert!(in_use.held().contains(&old), "still held by the second job");
        drop(second);
        assert!(in_use.held().is_empty());
        assert_eq!(evict(root.path(), 0, &in_use).len(), 1);
    }

    #[test]
    fn a_use_makes_a_snapshot_the_most_recent() {
        let root = tempfile::tempdir().unwrap();
        let a = snapshot(root.path(), 1, 10, 300);
        let b = snapshot(root.path(), 2, 10, 100);
        touch(root.path(), &a).unwrap();
        assert_eq!(
            list(root.path())
                .iter()
                .map(|c| c.hash.clone())
                .collect::<Vec<_>>(),
            vec![b, a]
        );
    }
}
