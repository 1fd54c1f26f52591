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
    /// The best epoch so far by validation accuracy, so a resumed run still uploads it. `None`
    /// without a validation split, and in checkpoints written before it was kept.
    pub best: Option<BestEpoch>,
}

/// The epoch with the best validation accuracy so far, and its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct BestEpoch {
    /// The epoch, counting from 1.
    pub epoch: u32,
    /// Its validation accuracy.
    pub val_accuracy: f64,
    /// Its weights (safetensors).
    pub weights: Vec<u8>,
}

/// Where the best epoch's weights are: none stored separately when it is the checkpoint's own
/// epoch, otherwise the last `weights_len` bytes.
#[derive(Serialize, Deserialize)]
struct BestHeader {
    epoch: u32,
    val_accuracy: f64,
    weights_len: Option<u64>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    best: Option<BestHeader>,
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"GNTRYCK1";

impl Checkpoint {
    /// Serialises to bytes: the 8 bytes `GNTRYCK1`, a little-endian `u64` length, that many bytes
    /// of JSON (everything but the weights), then the safetensors weights, then the best epoch's
    /// weights when that is an earlier epoch (the header's `best.weights_len` says how many
    /// bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let separate = self.best.as_ref().filter(|b| b.epoch != self.epoch);
        let header = CheckpointHeader {
            epoch: self.epoch,
            metrics: self.metrics.clone(),
            architecture: self.architecture.clone(),
            base_width: self.base_width,
            classes: self.classes.clone(),
            image_size: self.image_size,
            dataset_hash: self.content_hash.clone(),
            best: self.best.as_ref().map(|b| BestHeader {
                epoch: b.epoch,
                val_accuracy: b.val_accuracy,
                weights_len: separate.map(|b| b.weights.len() as u64),
            }),
        };
        let json = serde_json::to_vec(&header).expect("checkpoint header serialises");
        let mut out = Vec::with_capacity(16 + json.len() + self.weights.len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.weights);
        if let Some(best) = separate {
            out.extend_from_slice(&best.weights);
        }
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
        let mut weights = &bytes[16 + len..];
        let best = match header.best {
            None => None,
            Some(b) => {
                if b.epoch == 0 || b.epoch > header.epoch || !(0.0..=1.0).contains(&b.val_accuracy)
                {
                    return Err(bad("the best epoch is out of range"));
                }
                let best_weights = match b.weights_len {
                    None if b.epoch == header.epoch => weights.to_vec(),
                    None => return Err(bad("the best epoch's weights are missing")),
                    Some(n) => {
                        let n = usize::try_from(n)
                            .ok()
                            .filter(|n| *n <= weights.len())
                            .ok_or_else(|| bad("truncated best-epoch weights"))?;
                        let (own, best) = weights.split_at(weights.len() - n);
                        weights = own;
                        best.to_vec()
                    }
                };
                Some(BestEpoch {
                    epoch: b.epoch,
                    val_accuracy: b.val_accuracy,
                    weights: best_weights,
                })
            }
        };
        Ok(Checkpoint {
            epoch: header.epoch,
            metrics: header.metrics,
            architecture: header.architecture,
            base_width: header.base_width,
            classes: header.classes,
            image_size: header.image_size,
            content_hash: header.dataset_hash,
            weights: weights.to_vec(),
            best,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(best: Option<BestEpoch>) -> Checkpoint {
        Checkpoint {
            epoch: 2,
            metrics: (1..=2)
                .map(|epoch| EpochMetrics {
                    epoch,
                    loss: 1.0,
                    train_accuracy: 0.5,
                    val_accuracy: Some(0.5),
                    samples_per_sec: 1.0,
                    seconds: 1.0,
                })
                .collect(),
            architecture: "arch".into(),
            base_width: 16,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            content_hash: serde_json::from_str(&format!("\"{}\"", "ab".repeat(32))).unwrap(),
            weights: b"last-weights".to_vec(),
            best,
        }
    }

    #[test]
    fn the_best_epoch_survives_the_round_trip() {
        for best in [
            None,
            Some(BestEpoch {
                epoch: 1,
                val_accuracy: 0.75,
                weights: b"first-epoch".to_vec(),
            }),
            Some(BestEpoch {
                epoch: 2,
                val_accuracy: 0.5,
                weights: b"last-weights".to_vec(),
            }),
        ] {
            let ckpt = checkpoint(best);
            assert_eq!(Checkpoint::from_bytes(&ckpt.to_bytes()).unwrap(), ckpt);
        }
    }

    #[test]
    fn a_checkpoint_without_a_best_epoch_still_loads() {
        // The layout before the best epoch was kept: no `best` in the header.
        let mut ckpt = checkpoint(None);
        let bytes = ckpt.to_bytes();
        let json = std::str::from_utf8(&bytes[16..bytes.len() - ckpt.weights.len()]).unwrap();
        assert!(!json.contains("best"));
        ckpt.best = None;
        assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), ckpt);
    }

    #[test]
    fn a_best_epoch_past_the_checkpoint_is_refused() {
        let mut ckpt = checkpoint(Some(BestEpoch {
            epoch: 1,
            val_accuracy: 0.75,
            weights: b"first".to_vec(),
        }));
        ckpt.best.as_mut().unwrap().epoch = 3;
        assert!(Checkpoint::from_bytes(&ckpt.to_bytes()).is_err());
    }
}
