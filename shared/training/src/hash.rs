//! A dataset's content hash: [`ContentHash`] and [`content_hash`], its definition.
//!
//! Not to be confused with a snapshot's hash (`gantry_runtime::dataset::SnapshotHash`): the
//! SHA-256 of the tar archive a dataset travels in, which names it in the object store and in a
//! trainer's cache. The content hash names the images the loader reads, whatever archive or
//! folder they came from.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DatasetError;
use crate::limits::DatasetLimits;
use crate::listing::Listing;

/// The content hash of a dataset: lower-case hex SHA-256 as [`content_hash`] defines it. A
/// string on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContentHash(String);

impl ContentHash {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ContentHash {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<ContentHash> for String {
    fn from(hash: ContentHash) -> String {
        hash.0
    }
}

const HASH_DOMAIN: &[u8] = b"gantry-imagefolder-v1\n";

/// The content hash of the data a [`Listing`] describes.
///
/// Definition (so other services can reproduce it): SHA-256 over the bytes
/// `"gantry-imagefolder-v1\n"`, then for every image file in byte order of its `/`-separated
/// path relative to the root: the path's UTF-8 bytes, one `0` byte, the file's length as a
/// little-endian `u64`, and the 32-byte SHA-256 of the file's content. Hashing each file
/// separately lets loading hash in parallel and keeps one definition for both. Only the files the
/// loader reads count, so a stray `README` in a class folder does not change it.
pub fn content_hash(
    listing: &Listing,
    limits: &DatasetLimits,
) -> Result<ContentHash, DatasetError> {
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

pub(crate) fn file_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn combine_digests(listing: &Listing, digests: &[(u64, [u8; 32])]) -> ContentHash {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    for (file, (len, digest)) in listing.files.iter().zip(digests) {
        h.update(file.relative_path.as_bytes());
        h.update([0u8]);
        h.update(len.to_le_bytes());
        h.update(digest);
    }
    ContentHash(hex::encode(h.finalize()))
}
