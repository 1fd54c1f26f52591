//! Model versions: numbering a completion's version once, listing and withdrawing it, crediting
//! the node that trained it, removing weights no version points at, and the `models.*` listings.
//!
//! Collections of `<prefix>registry`:
//! - `models`: one per model version, `_id` = `model:<name>:<version>`.
//! - `counters`: `{_id: "model:<name>", n}` numbers a model's versions ([`Counter`]).
//! - `version_reservations`: `{_id: <job id>, version}`, the number a job's completion got.

use async_nats::jetstream::{self, object_store};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use chrono::Utc;
use futures::TryStreamExt;
use gantry_contracts::jobs::{
    self, JobRecord, ModelDetail, ModelList, ModelQuery, ModelRef, ModelSummary, ModelVersion,
};
use gantry_runtime::mongo::{self, Counter};
use mongodb::bson::{doc, Document};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::registry::Registry;

/// A model version as stored. `key` (`m:<name>`) is what lookups by name filter on: the store
/// reads a value that starts like a date (`2026-01-02-x`) as one, so names are never compared
/// bare.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelDoc {
    #[serde(rename = "_id")]
    id: String,
    key: String,
    created_ms: i64,
    /// When its node was credited with the job (0: not yet).
    #[serde(default)]
    credited_ms: i64,
    #[serde(flatten)]
    version: ModelVersion,
}

fn model_key(name: &str) -> String {
    format!("m:{name}")
}

fn model_id(name: &str, version: u32) -> String {
    format!("model:{name}:{version}")
}

/// The model side of the registry; cheap to clone.
#[derive(Clone)]
pub struct Models {
    registry: Registry,
}

impl Models {
    /// Over the registry's connections and view.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    fn models(&self) -> Collection<ModelDoc> {
        self.registry.store().database().collection("models")
    }

    /// Indexes for lookups by name (idempotent).
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        self.models()
            .create_index(IndexModel::builder().keys(doc! { "key": 1 }).build())
            .await?;
        Ok(())
    }

    /// Take a node's completed-job count from the store into this replica's view.
    pub async fn refresh_completed(&self, node_id: &str) {
        match self.registry.store().completed_jobs(node_id).await {
            Ok(Some(n)) => self.registry.view().set_completed(node_id, n),
            Ok(None) => {}
            Err(e) => tracing::warn!(node_id, error = %e, "reading a node's completed jobs"),
        }
    }

    /// The version number of the model a job completes: taken from the model's counter the first
    /// time, the same number on every retry.
    async fn reserve_version(&self, job: &JobRecord) -> Result<u32, RegistryError> {
        let db = self.registry.store().database();
        let reservations: Collection<Document> = db.collection("version_reservations");
        if let Some(r) = reservations.find_one(doc! { "_id": &job.job_id }).await? {
            return Ok(mongo::number(r.get("version"))? as u32);
        }
        let n = Counter::new(db, "counters", format!("model:{}", job.output_model), "n")
            .next()
            .await?;
        // Events are applied one at a time, so nobody reserves for this job meanwhile.
        reservations
            .insert_one(doc! { "_id": &job.job_id, "version": n })
            .await?;
        Ok(n as u32)
    }

    /// List the model version a completion of `job` makes, under the version reserved for it
    /// (repeatable: listed once).
    pub async fn list_version(
        &self,
        job: &JobRecord,
        model: &ModelVersion,
    ) -> Result<ModelVersion, RegistryError> {
        let mut model = model.clone();
        model.version = self.reserve_version(job).await?;
        model.name = job.output_model.clone();
        model.user_id = job.user_id;
        model.job_id = job.job_id.clone();
        self.ensure_listed(&model).await?;
        Ok(model)
    }

    async fn ensure_listed(&self, model: &ModelVersion) -> Result<(), RegistryError> {
        let id = model_id(&model.name, model.version);
        if self.models().find_one(doc! { "_id": &id }).await?.is_none() {
            let d = ModelDoc {
                id,
                key: model_key(&model.name),
                created_ms: Utc::now().timestamp_millis(),
                credited_ms: 0,
                version: model.clone(),
            };
            self.models().insert_one(&d).await?;
        }
        Ok(())
    }

    /// Take a completion's weights into the models bucket: the upload under its key must have
    /// the digest and size its card reports, and is then copied where only the registry writes
    /// (and removed from the uploads). `Ok(Err(why))` when they do not match or are missing;
    /// `Err` when the store cannot say now. Repeatable: weights already copied count.
    pub async fn take_weights(
        &self,
        model: &ModelVersion,
    ) -> Result<Result<(), String>, RegistryError> {
        let card = &model.card;
        let Ok(expected) = hex::decode(&card.weights_sha256) else {
            return Ok(Err("the digest is not hex".into()));
        };
        if expected.len() != 32 {
            return Ok(Err("no SHA-256 digest was reported".into()));
        }
        let reported = format!("SHA-256={}", URL_SAFE.encode(&expected));
        let matches = |info: &object_store::ObjectInfo| {
            !info.deleted
                && info.digest.as_deref() == Some(reported.as_str())
                && info.size as u64 == card.weights_bytes
        };
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            RegistryError::Unavailable(format!("{what}: {e}"))
        };
        let js = jetstream::new(self.registry.client().clone());
        let models = gantry_runtime::jetstream::bucket_store(&js, jobs::MODELS_BUCKET)
            .await
            .map_err(|e| unavailable("the models bucket", &e))?;
        if models
            .info(&model.weights_key)
            .await
            .is_ok_and(|i| matches(&i))
        {
            return Ok(Ok(()));
        }
        let uploads = gantry_runtime::jetstream::bucket_store(&js, jobs::UPLOADS_BUCKET)
            .await
            .map_err(|e| unavailable("the uploads bucket", &e))?;
        let info = match uploads.info(&model.weights_key).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Ok(Err("no weights are stored under the job's key".into())),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {
                return Ok(Err("no weights are stored under the job's key".into()))
            }
            Err(e) => return Err(unavailable("reading the weights' digest", &e)),
        };
        if !matches(&info) {
            return Ok(Err(format!(
                "stored {} bytes with {}, reported {} bytes with {reported}",
                info.size,
                info.digest.unwrap_or_default(),
                card.weights_bytes
            )));
        }
        let mut upload = uploads
            .get(&model.weights_key)
            .await
            .map_err(|e| unavailable("reading the uploaded weights", &e))?;
        let copied = models
            .put(model.weights_key.as_str(), &mut upload)
            .await
            .map_err(|e| unavailable("copying the weights", &e))?;
        if !matches(&copied) {
            // Changed between the check and the copy: this copy never counts.
            let _ = models.delete(&model.weights_key).await;
            return Ok(Err("the upload changed while it was copied".into()));
        }
        if let Err(e) = uploads.delete(&model.weights_key).await {
            tracing::warn!(key = model.weights_key, error = %e, "could not remove an upload that was copied");
        }
        Ok(Ok(()))
    }

    /// Withdraw a version whose job ended another way, and remove its weights.
    pub async fn withdraw(&self, model: &ModelVersion) -> Result<(), RegistryError> {
        self.models()
            .delete_one(doc! { "_id": model_id(&model.name, model.version) })
            .await?;
        tracing::info!(
            job_id = model.job_id,
            version = model.version,
            "the job ended otherwise; its version is withdrawn"
        );
        self.drop_weights(Some(model.weights_key.clone()), None)
            .await;
        Ok(())
    }

    /// A completed job's model version listed and its node credited once (repeatable), and the
    /// weights of its other deliveries removed.
    pub async fn record(&self, job: &JobRecord, model: &ModelVersion) -> Result<(), RegistryError> {
        self.ensure_listed(model).await?;
        if let Some(node_id) = &job.node_id {
            // Marked first, then counted: a count that fails here is lost, never doubled.
            let marked = self
                .models()
                .update_one(
                    doc! { "_id": model_id(&model.name, model.version), "credited_ms": 0_i64 },
                    doc! { "$set": { "credited_ms": Utc::now().timestamp_millis() } },
                )
                .await?;
            if marked.modified_count == 1 {
                self.registry.store().count_completed(node_id).await?;
            }
            self.refresh_completed(node_id).await;
        }
        let others =
            (1..=jobs::MAX_DELIVER as u64).map(|delivery| jobs::weights_key(&job.job_id, delivery));
        self.drop_weights(others, Some(model)).await;
        Ok(())
    }

    /// Remove the weights at `keys` (uploaded by deliveries whose results do not count), except
    /// the ones `keep` points at.
    pub async fn drop_weights(
        &self,
        keys: impl IntoIterator<Item = String>,
        keep: Option<&ModelVersion>,
    ) {
        let keys: Vec<String> = keys
            .into_iter()
            .filter(|k| keep.is_none_or(|m| m.weights_key != *k))
            .collect();
        if keys.is_empty() {
            return;
        }
        let js = jetstream::new(self.registry.client().clone());
        for bucket in [jobs::MODELS_BUCKET, jobs::UPLOADS_BUCKET] {
            let Ok(store) = gantry_runtime::jetstream::bucket_store(&js, bucket).await else {
                continue;
            };
            for key in &keys {
                if store.info(key).await.is_ok_and(|i| !i.deleted) {
                    match store.delete(key).await {
                        Ok(()) => {
                            tracing::info!(
                                key,
                                bucket,
                                "removed weights that belong to no model version"
                            )
                        }
                        Err(e) => {
                            tracing::warn!(key, bucket, error = %e, "could not remove unused weights")
                        }
                    }
                }
            }
        }
    }

    /// `models.list`.
    pub async fn list(&self, q: ModelQuery) -> Result<ModelList, RegistryError> {
        let filter = match q.user_id {
            Some(u) => doc! { "user_id": u },
            None => doc! {},
        };
        let docs: Vec<ModelDoc> = self
            .models()
            .find(filter)
            .sort(doc! { "key": 1, "version": 1 })
            .await?
            .try_collect()
            .await?;
        let mut models: Vec<ModelSummary> = Vec::new();
        for d in docs {
            match models.last_mut() {
                Some(m) if m.name == d.version.name => {
                    m.versions += 1;
                    if d.version.version > m.latest.version {
                        m.latest = d.version;
                    }
                }
                _ => models.push(ModelSummary {
                    name: d.version.name.clone(),
                    versions: 1,
                    latest: d.version,
                }),
            }
        }
        Ok(ModelList { models })
    }

    /// `models.get`.
    pub async fn get(&self, r: ModelRef) -> Result<ModelDetail, RegistryError> {
        let mut filter = doc! { "key": model_key(&r.name) };
        if let Some(u) = r.user_id {
            filter.insert("user_id", u);
        }
        let mut versions: Vec<ModelVersion> = self
            .models()
            .find(filter)
            .await?
            .try_collect::<Vec<ModelDoc>>()
            .await?
            .into_iter()
            .map(|d| d.version)
            .collect();
        if versions.is_empty() {
            return Err(RegistryError::NotFound(format!("no model {}", r.name)));
        }
        versions.sort_by_key(|v| v.version);
        Ok(ModelDetail {
            name: r.name,
            versions,
        })
    }
}
