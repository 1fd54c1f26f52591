//! Checkpoints: the state after a finished epoch, enough for a later run (on any node) to resume
//! at the next one, and its byte layout.

use serde::{Deserialize, Serialize};

use crate::card::EpochMetrics;
use crate::error::TrainError;
use crate::hash::ContentHash;

/// The state after a finished epoch: enough to resume at the next one. The optimiser's moment
/// estimates are not kept (Adam restarts from zero on resume); weights, BatchNorm statistics,
/// metrics and the epoch count are.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Epochs completed.
    pub epoch: u32,
    /// Metrics of the completed epochs.
    pub metrics: Vec<EpochMetrics>,
    /// Network architecture.
    pub architecture: String,
    /// Network width.
    pub base_width: i64,
    /// Class names, which the resumed dataset must match.
    pub classes: Vec<String>,
    /// Input size, which the resumed dataset must match.
    pub image_size: u32,
    /// Content hash of the dataset trained on (informational).
    pub content_hash: ContentHash,
    /// Weights (safetensors).
    pub weights: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    epoch: u32,
    metrics: Vec<EpochMetrics>,
    architecture: String,
    base_width: i64,
    classes: Vec<String>,
    image_size: u32,
    /// The content hash; named `dataset_hash` in checkpoints already stored.
    dataset_hash: ContentHash,
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"GNTRYCK1";

impl Checkpoint {
    /// Serialises to bytes: the 8 bytes `GNTRYCK1`, a little-endian `u64` length, that many bytes
    /// of JSON (everything but the weights), then the safetensors weights.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = CheckpointHeader {
            epoch: self.epoch,
            metrics: self.metrics.clone(),
            architecture: self.architecture.clone(),
            base_width: self.base_width,
            classes: self.classes.clone(),
            image_size: self.image_size,
            dataset_hash: self.content_hash.clone(),
        };
        let json = serde_json::to_vec(&header).expect("checkpoint header serialises");
        let mut out = Vec::with_capacity(16 + json.len() + self.weights.len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.weights);
        out
    }

    /// Parses bytes written by [`Checkpoint::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint, TrainError> {
        let bad = |m: &str| TrainError::BadCheckpoint(m.to_string());
        if bytes.len() < 16 || &bytes[..8] != CHECKPOINT_MAGIC {
            return Err(bad("missing the GNTRYCK1 header"));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        if len > bytes.len() - 16 {
            return Err(bad("truncated header"));
        }
        let header: CheckpointHeader = serde_json::from_slice(&bytes[16..16 + len])
            .map_err(|e| TrainError::BadCheckpoint(e.to_string()))?;
        if header.metrics.len() != header.epoch as usize {
            return Err(bad("metrics do not match the epoch count"));
        }
        Ok(Checkpoint {
            epoch: header.epoch,
            metrics: header.metrics,
            architecture: header.architecture,
            base_width: header.base_width,
            classes: header.classes,
            image_size: header.image_size,
            content_hash: header.dataset_hash,
            weights: bytes[16 + len..].to_vec(),
        })
    }
}
