//! Analysis: classifying images with a trained model on the nodes' analysis workers.
//!
//! The api resolves the model (through the registry's `models.get`) and the images (under the
//! data root), picks a node, and sends it the images in [`AnalyzeBatch`]es on that node's own
//! `gantry.node.<node_id>.analyze` ([`crate::subjects::node_analyze`]), a request answered with
//! an [`AnalyzeBatchResult`] or a service error. Only the api may publish there; a node
//! subscribes to its own subject only. The node loads the weights from
//! [`crate::jobs::MODELS_BUCKET`] once and keeps them cached.
//!
//! [`AnalyzeResult`] is the HTTP answer of `POST /admin/api/analyze`, served as it is.
//!
//! A request over the api's synchronous bound becomes an analysis job instead: the api packs the
//! images into a snapshot (as a training dataset is packed, each under [`input_entry`]), records
//! the job (kind `analyze`, its [`AnalysisSpec`]) and queues an [`AnalyzeJob`] on
//! `gantry.jobs.analyze.<driver>`. A node pulls it, classifies the images in order in batches on
//! its analysis workers, and publishes `results` events (each a run of [`ImageResult`]s by
//! index), `progress` events, and `analyzed` at the end. The registry stores the results by
//! index; `jobs.results` pages them ([`ResultsQuery`] → [`ResultsPage`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::jobs::{JobDriver, JobStatus};
use crate::models::ModelCard;

/// Most images in one [`AnalyzeBatch`].
pub const MAX_BATCH_IMAGES: usize = 256;
/// Most image bytes (before base64) the api puts in one [`AnalyzeBatch`], so that the message
/// stays under the NATS server's 1 MiB `max_payload`. A larger image cannot be analysed.
pub const MAX_BATCH_BYTES: usize = 640 * 1024;
/// Most labels a result may list per image.
pub const MAX_TOP_K: u32 = 100;
/// Most classes a card may have for a node to load it.
pub const MAX_CLASSES: usize = 10_000;
/// Longest path or model reference in a batch, in bytes.
pub const MAX_NAME: usize = 1024;

/// A model reference as users write it: `name` (the latest version) or `name@version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The model's name.
    pub name: String,
    /// The version asked for; `None` for the latest.
    pub version: Option<u32>,
}

impl ModelSpec {
    /// Parse `name` or `name@version` (a version counts from 1).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, version) = match s.rsplit_once('@') {
            Some((name, v)) => {
                let v: u32 = v
                    .parse()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| format!("model version {v:?} is not a number from 1"))?;
                (name, Some(v))
            }
            None => (s, None),
        };
        if name.is_empty() {
            return Err("model must be `name` or `name@version`".into());
        }
        if name.len() > 100 {
            return Err("a model name is at most 100 characters".into());
        }
        Ok(Self {
            name: name.to_owned(),
            version,
        })
    }
}

/// The `name@version` a node lists in its `processes` and a result names.
pub fn model_label(name: &str, version: u32) -> String {
    format!("{name}@{version}")
}

/// One image to classify.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalyzeImage {
    /// The path as the user named it (under the data root), echoed in the result.
    pub path: String,
    /// The file's bytes, base64 on the wire.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

/// The model a batch or job names, within what a node loads: `top_k` labels, a reference and
/// weights key of bounded length, a card with 1 to [`MAX_CLASSES`] classes.
fn check_model(top_k: u32, model: &str, weights_key: &str, card: &ModelCard) -> Result<(), String> {
    if top_k == 0 || top_k > MAX_TOP_K {
        return Err(format!("top_k must be between 1 and {MAX_TOP_K}"));
    }
    if model.len() > MAX_NAME || weights_key.len() > MAX_NAME {
        return Err("model or weights key too long".into());
    }
    if card.classes.is_empty() || card.classes.len() > MAX_CLASSES {
        return Err(format!("a card names 1 to {MAX_CLASSES} classes"));
    }
    Ok(())
}

/// A request to a node: classify these images with this model version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalyzeBatch {
    /// `name@version`.
    pub model: String,
    /// Where the weights are ([`crate::models::ModelVersion::weights_key`] in the models
    /// bucket); the cache key on the node.
    pub weights_key: String,
    /// The version's card: the network to build and the preprocessing to apply.
    pub card: ModelCard,
    /// Labels per image, most probable first.
    pub top_k: u32,
    /// The images, at most [`MAX_BATCH_IMAGES`].
    pub images: Vec<AnalyzeImage>,
}

impl AnalyzeBatch {
    /// Within the bounds above (the message size is bounded by the server).
    pub fn check(&self) -> Result<(), String> {
        if self.images.is_empty() || self.images.len() > MAX_BATCH_IMAGES {
            return Err(format!(
                "a batch holds 1 to {MAX_BATCH_IMAGES} images, not {}",
                self.images.len()
            ));
        }
        check_model(self.top_k, &self.model, &self.weights_key, &self.card)?;
        if let Some(i) = self.images.iter().find(|i| i.path.len() > MAX_NAME) {
            return Err(format!("path of {} bytes is too long", i.path.len()));
        }
        Ok(())
    }
}

/// One label of a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "Prediction"))]
pub struct Prediction {
    /// The class name, from the model card.
    pub label: String,
    /// Its softmax probability.
    pub probability: f64,
}

/// What the model made of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ImageResult"))]
pub struct ImageResult {
    /// The image, under the data root.
    pub path: String,
    /// The most probable labels, most probable first.
    pub top_k: Vec<Prediction>,
    /// The node that classified it.
    pub node: String,
}

/// A node's answer to an [`AnalyzeBatch`]: one result per image, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalyzeBatchResult {
    /// In the batch's order.
    pub results: Vec<ImageResult>,
}

/// The images classified.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "AnalyzeResult"))]
pub struct AnalyzeResult {
    /// The model version used, `name@version`.
    pub model: String,
    /// One per image, by path.
    pub results: Vec<ImageResult>,
}

/// How the ledger key of an analysis answered at once starts: such a charge is settled by the
/// request itself (served, or refunded), never by a job, so the registry's reconciler leaves it.
pub const ANSWERED_CHARGE_PREFIX: &str = "analysis-";

/// The folder of an analysis job's snapshot that holds its images.
pub const INPUT_DIR: &str = "input";
/// Most results a `jobs.results` page holds.
pub const MAX_RESULTS_PAGE: u64 = 1000;

/// Where the image at `path` (as the user names it under the data root: `/a/b.png`) lies in an
/// analysis job's snapshot: `input/a/b.png`.
pub fn input_entry(path: &str) -> String {
    format!("{INPUT_DIR}/{}", path.trim_start_matches('/'))
}

/// The path a snapshot entry ([`input_entry`]) stands for; `None` outside [`INPUT_DIR`].
pub fn entry_path(entry: &str) -> Option<String> {
    entry
        .strip_prefix(INPUT_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|rest| !rest.is_empty())
        .map(|rest| format!("/{rest}"))
}

/// An analysis job's model, input and labels per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "AnalysisSpec"))]
pub struct AnalysisSpec {
    /// The model version, `name@version`.
    pub model: String,
    /// The image or folder, as named under the data root.
    pub input_path: String,
    /// How many images it classifies.
    pub images: u64,
    /// Labels per image.
    pub top_k: u32,
}

/// The message a node pulls from `gantry.jobs.analyze.<driver>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnalyzeJob {
    /// Job id (also the `Nats-Msg-Id` and the charge's idempotency key).
    pub job_id: String,
    /// Who submitted it.
    pub user_id: i64,
    /// `name@version`.
    pub model: String,
    /// The version's weights in the models bucket.
    pub weights_key: String,
    /// The version's card.
    pub card: ModelCard,
    /// Labels per image.
    pub top_k: u32,
    /// Content hash of the images' snapshot in the datasets bucket (entries [`input_entry`]).
    pub input_hash: String,
    /// How many images the snapshot holds.
    pub images: u64,
    /// Requested backend.
    pub driver: JobDriver,
    /// When it was submitted.
    pub submitted_at: DateTime<Utc>,
}

impl AnalyzeJob {
    /// Within bounds a node can serve.
    pub fn check(&self) -> Result<(), String> {
        if self.images == 0 {
            return Err("an analysis job holds at least one image".into());
        }
        check_model(self.top_k, &self.model, &self.weights_key, &self.card)?;
        if self.input_hash.len() != 64 || !self.input_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("input_hash is not a snapshot hash".into());
        }
        Ok(())
    }
}

/// `jobs.results` request: a page of an analysis job's results by image index.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultsQuery {
    /// The job.
    pub job_id: String,
    /// Only this owner's job (others: `not_found`).
    #[serde(default)]
    pub user_id: Option<i64>,
    /// The first image's index.
    #[serde(default)]
    pub offset: u64,
    /// Page size, 1 to [`MAX_RESULTS_PAGE`].
    pub limit: u64,
}

/// One page of an analysis job's results, in the order of its input (paths sorted).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "AnalysisResults"))]
pub struct ResultsPage {
    /// The job.
    pub job_id: String,
    /// The model version, `name@version`.
    pub model: String,
    /// The job's state; results keep coming while it runs.
    pub status: JobStatus,
    /// Images the job classifies in all.
    pub total: u64,
    /// Results stored so far (all of them once the job completed).
    pub available: u64,
    /// Index of this page's first image.
    pub offset: u64,
    /// Page size asked for.
    pub limit: u64,
    /// This page's results, by index.
    pub results: Vec<ImageResult>,
}

mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_references_parse_with_and_without_a_version() {
        assert_eq!(
            ModelSpec::parse("Shapes").unwrap(),
            ModelSpec {
                name: "Shapes".into(),
                version: None
            }
        );
        assert_eq!(ModelSpec::parse("Shapes@3").unwrap().version, Some(3));
        assert!(ModelSpec::parse("Shapes@0").is_err());
        assert!(ModelSpec::parse("Shapes@x").is_err());
        assert!(ModelSpec::parse("@2").is_err());
        assert_eq!(model_label("Shapes", 2), "Shapes@2");
    }

    #[test]
    fn image_bytes_travel_as_base64_and_come_back_whole() {
        let image = AnalyzeImage {
            path: "/a.png".into(),
            data: vec![0, 1, 2, 255],
        };
        let v = serde_json::to_value(&image).unwrap();
        assert_eq!(v["data"], "AAEC/w==");
        let back: AnalyzeImage = serde_json::from_value(v).unwrap();
        assert_eq!(back.data, image.data);
    }
}
