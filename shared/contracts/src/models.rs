//! Models: a stored version with its card, and the registry's `models.*` endpoints. The api
//! serves these types as they are.
//!
//! [`ModelVersion`] is part of the admin page's published shapes (the answer of
//! `POST /admin/api/train`), so its doc comments are the OpenAPI document's descriptions, word
//! for word; details for readers of the contract are in plain comments.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// A stored model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ModelVersion"))]
pub struct ModelVersion {
    /// Model name.
    // The job's `output_model`.
    pub name: String,
    /// Version, 1, 2, 3 ...
    // Per name. The trainer sends 0; the registry numbers it when it lists the version.
    pub version: u32,
    /// Owner.
    pub user_id: i64,
    /// The job that made it.
    pub job_id: String,
    /// Where its weights are stored.
    // Object key in [`crate::jobs::MODELS_BUCKET`].
    pub weights_key: String,
    /// Its card: classes, image size, normalisation, architecture, metrics per epoch,
    /// description, dataset hash, job id, node.
    // Written by the trainer. Documented as a free-form value, as the page always has.
    pub card: ModelCard,
    /// Final validation accuracy.
    pub val_accuracy: f64,
    /// When it was stored.
    pub created_at: Timestamp,
}

/// Everything needed to use, and judge, a trained model: the card the trainer writes beside the
/// weights (`gantry_training::card::ModelCard`, with the job's details filled in). Field for field
/// the same JSON, numbers as `f64` so a card read and sent again keeps every digit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Version of this card's layout (1).
    pub card_version: u32,
    /// Network architecture name.
    pub architecture: String,
    /// Channels of the network's first stage (the network's width).
    pub base_width: i64,
    /// Class names; prediction `i` means `classes[i]`.
    pub classes: Vec<String>,
    /// Input side in pixels: images are resized to `image_size` x `image_size`.
    pub image_size: u32,
    /// Per-channel normalisation of the input.
    pub normalization: CardNormalization,
    /// The input in words, for people reading the card.
    pub input: String,
    /// Per-epoch metrics, oldest first.
    pub metrics: Vec<CardEpoch>,
    /// How it was trained.
    pub training: CardTraining,
    /// Free text from the job's submitter.
    pub description: String,
    /// Content hash of the training dataset.
    pub dataset_hash: String,
    /// Id of the job that trained it.
    pub job_id: String,
    /// Node that trained it.
    pub node: String,
    /// SHA-256 of the weights file, in hex, as the node that uploaded it reports it; the
    /// registry lists a version only when the stored weights have this digest and size.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub weights_sha256: String,
    /// Size of the weights file in bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub weights_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Per-channel normalisation applied after scaling pixels to `[0, 1]`: `(x - mean) / std`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CardNormalization {
    /// Mean of the R, G and B channels.
    pub mean: [f64; 3],
    /// Standard deviation of the R, G and B channels.
    pub std: [f64; 3],
}

/// Metrics of one finished epoch, as the card lists them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CardEpoch {
    /// The epoch, counting from 1.
    pub epoch: u32,
    /// Mean training loss (cross-entropy) over the epoch.
    pub loss: f64,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Validation accuracy after the epoch; `None` when there is no validation split.
    pub val_accuracy: Option<f64>,
    /// Training samples per second over the epoch's training steps.
    pub samples_per_sec: f64,
    /// Wall-clock seconds of the epoch, validation included.
    pub seconds: f64,
}

/// How the model was trained.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CardTraining {
    /// Epochs trained in all (over every resumed run).
    pub epochs: u32,
    /// Batch size.
    pub batch_size: u64,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// Learning-rate schedule (`constant` or `cosine`).
    pub lr_schedule: String,
    /// Seed of weight initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Whether training images were randomly shifted by a few pixels (on cards written before
    /// shifts existed: whether they were flipped).
    pub augment: bool,
    /// Whether random horizontal flips were applied.
    #[serde(default)]
    pub hflip: bool,
    /// Whether the forward pass ran under bf16 autocast.
    #[serde(default)]
    pub bf16: bool,
    /// The epoch whose weights were stored: the best by validation accuracy (the last without
    /// a validation split). Absent on cards of models stored before it was kept (the last).
    #[serde(default)]
    pub best_epoch: Option<u32>,
    /// Images trained on.
    pub train_samples: u64,
    /// Images validated on.
    pub val_samples: u64,
    /// The device of the last run, as `tch` writes it (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// The epoch a resumed run started from, if the last run was resumed from a checkpoint.
    pub resumed_from_epoch: Option<u32>,
}

/// Largest page of `models.list`.
pub const MAX_MODELS_PAGE: u64 = 500;

/// `models.list` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ModelQuery {
    /// Only this owner's models.
    #[serde(default)]
    pub user_id: Option<i64>,
    /// Page size (default 50, at most [`MAX_MODELS_PAGE`]).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Models to skip.
    #[serde(default)]
    pub offset: u64,
}

/// A model version as lists show it: no card beyond its classes and input size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct ModelBrief {
    /// Model name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// Owner.
    pub user_id: i64,
    /// The job that made it.
    pub job_id: String,
    /// The classes it tells apart.
    pub classes: Vec<String>,
    /// Its input images' side, in pixels.
    pub image_size: u32,
    /// Final validation accuracy.
    pub val_accuracy: f64,
    /// When it was stored.
    pub created_at: Timestamp,
}

impl From<&ModelVersion> for ModelBrief {
    fn from(m: &ModelVersion) -> Self {
        Self {
            name: m.name.clone(),
            version: m.version,
            user_id: m.user_id,
            job_id: m.job_id.clone(),
            classes: m.card.classes.clone(),
            image_size: m.card.image_size,
            val_accuracy: m.val_accuracy,
            created_at: m.created_at,
        }
    }
}

/// A model and its newest version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ModelSummaryOut"))]
pub struct ModelSummary {
    /// Name (unique per owner).
    pub name: String,
    /// Its owner's user id.
    pub owner_id: i64,
    /// Versions stored.
    pub versions: u32,
    /// The newest.
    pub latest: ModelBrief,
}

/// Models.
// The `models.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ModelListOut"))]
pub struct ModelList {
    /// By name, then owner.
    pub models: Vec<ModelSummary>,
    /// Matching models in all.
    #[serde(default)]
    pub total: u64,
    /// Page size.
    #[serde(default)]
    pub limit: u64,
    /// Skipped.
    #[serde(default)]
    pub offset: u64,
}

/// `models.get` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRef {
    /// Name.
    pub name: String,
    /// This owner's. `None` (admins): the one owner with a model of that name (`conflict`
    /// when several have one).
    #[serde(default)]
    pub user_id: Option<i64>,
}

/// A model with every version.
// The `models.get` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ModelDetailOut"))]
pub struct ModelDetail {
    /// Name.
    pub name: String,
    /// Its owner's user id.
    #[serde(default)]
    pub owner_id: i64,
    /// Oldest first.
    pub versions: Vec<ModelVersion>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_read_and_sent_again_keeps_every_field_digit_and_order() {
        // As the trainer writes it: f32 statistics widened to f64 on the way into JSON.
        let text = r#"{"card_version":1,"architecture":"resnet-s","base_width":16,"classes":["a","b"],"image_size":32,"normalization":{"mean":[0.48500001430511475,0.4560000002384186,0.4059999883174896],"std":[0.2290000021457672,0.2240000069141388,0.22499999403953552]},"input":"RGB","metrics":[{"epoch":1,"loss":0.5,"train_accuracy":0.75,"val_accuracy":null,"samples_per_sec":120.5,"seconds":2.25}],"training":{"epochs":1,"batch_size":32,"learning_rate":0.001,"lr_schedule":"cosine","seed":7,"augment":true,"hflip":false,"bf16":false,"best_epoch":1,"train_samples":80,"val_samples":0,"device":"Cpu","resumed_from_epoch":null},"description":"d","dataset_hash":"h","job_id":"j","node":"n"}"#;
        let card: ModelCard = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&card).unwrap(), text);
    }
}
