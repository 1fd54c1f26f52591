//! The node's dataset cache: snapshots unpacked under `<cache_dir>/datasets/<hash>/`, each with a
//! `<hash>.used` marker whose modification time is its last use. When the cache grows past its
//! budget (`GANTRY_CACHE_MAX_GB`), the least recently used snapshots that no job of this node is
//! using are removed until it fits again. A snapshot in use is never removed, even when that
//! leaves the cache over budget. One cache directory belongs to one trainer: two trainers sharing
//! it would not see each other's jobs.
//!
//! A job takes its [`Lease`] before it looks for its snapshot, and eviction decides and moves a
//! snapshot aside (`.evicting-<hash>`) under the same lock, so a snapshot a job has found is never
//! removed under it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Snapshots in use by this node's jobs, counted per hash.
#[derive(Debug, Default, Clone)]
pub struct InUse(Arc<Mutex<HashMap<String, usize>>>);

/// One job's hold on a snapshot; released on drop.
#[derive(Debug)]
pub struct Lease {
    in_use: InUse,
    hash: String,
}

impl InUse {
    /// Hold `hash` until the lease is dropped.
    pub fn lease(&self, hash: &str) -> Lease {
        *self.lock().entry(hash.to_owned()).or_default() += 1;
        Lease {
            in_use: self.clone(),
            hash: hash.to_owned(),
        }
    }

    /// The hashes held now.
    pub fn held(&self) -> HashSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// Run `f` unless `hash` is held, with no lease taken meanwhile.
    fn unless_held<T>(&self, hash: &str, f: impl FnOnce() -> T) -> Option<T> {
        let held = self.lock();
        (!held.contains_key(hash)).then(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
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

fn marker(root: &Path, hash: &str) -> PathBuf {
    root.join(format!("{hash}.used"))
}

/// Record a use of `<root>/<hash>` now.
pub fn touch(root: &Path, hash: &str) -> std::io::Result<()> {
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
    /// Its content hash (the directory's name).
    pub hash: String,
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
        .filter_map(|e| {
            let hash = e.file_name().to_str()?.to_owned();
            // Staging folders (`.incoming-*`) belong to fetches in progress.
            crate::jobs::valid_dataset_hash(&hash).then_some(hash)
        })
        .map(|hash| {
            let used = std::fs::metadata(marker(root, &hash))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Cached {
                bytes: size_of(&root.join(&hash)),
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
        match in_use.unless_held(&c.hash, || std::fs::rename(root.join(&c.hash), &aside)) {
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(hash = c.hash, error = %e, "could not remove a cached dataset");
                continue;
            }
            Some(Ok(())) => {}
        }
        let _ = std::fs::remove_file(marker(root, &c.hash));
        if let Err(e) = std::fs::remove_dir_all(&aside) {
            tracing::warn!(hash = c.hash, error = %e, "could not remove a cached dataset");
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

    fn snapshot(root: &Path, n: u8, bytes: usize, used_secs_ago: u64) -> String {
        let hash = format!("{:064x}", n);
        let dir = root.join(&hash).join("class");
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
        assert!(!root.path().join(&old).exists() && !marker(root.path(), &old).exists());
        assert!(root.path().join(&middle).exists() && root.path().join(&recent).exists());
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
        assert!(root.path().join(&old).exists());
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
