//! Model versions: numbering a completion's version once, listing and withdrawing it, crediting
//! the node that trained it, removing weights no version points at, and the `models.*` listings.
//!
//! A model belongs to its owner: its name is unique per owner, and its versions are numbered per
//! owner and name.
//!
//! Collections of `<prefix>registry`:
//! - `models`: one per model version, `_id` = `model:<owner>:<name>:<version>` (versions listed
//!   before models had owners keep `model:<name>:<version>`; every lookup goes by `key`).
//! - `counters`: `{_id: "model:<owner>:<name>", n}` numbers a model's versions ([`Counter`]).
//! - `version_reservations`: `{_id: <job id>, version}`, the number a job's completion got.
//! - `model_heads`: one per model, `_id` = `m:<owner>:<name>`: its summary (versions, the
//!   newest), rewritten whenever a version is listed or withdrawn, so `models.list` reads one
//!   page of these and never every version with its card. Each is written as of a revision
//!   (`rev`, from the counter `head:m:<owner>:<name>` in `counters`) and never over a later one, so
//!   two replicas listing versions of one model at once leave the summary of the one that counted
//!   last; a model whose last version is withdrawn keeps a bare `{_id, rev}` that listings skip.

use async_nats::jetstream::{self, object_store};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use chrono::Utc;
use futures::TryStreamExt;
use gantry_contracts::jobs::{
    self, JobRecord, ModelDetail, ModelList, ModelQuery, ModelRef, ModelSummary, ModelVersion,
};
use gantry_contracts::models::{ModelBrief, MAX_MODELS_PAGE};
use gantry_runtime::mongo::{self, Counter};
use mongodb::bson::{doc, Document};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::registry::Registry;

/// A model version as stored. `key` (`m:<owner>:<name>`) is what lookups filter on, `nkey`
/// (`n:<name>`) what an admin's lookup by name alone does: the store reads a value that starts
/// like a date (`2026-01-02-x`) as one, so names are never compared bare.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelDoc {
    #[serde(rename = "_id")]
    id: String,
    key: String,
    #[serde(default)]
    nkey: String,
    created_ms: i64,
    /// When its node was credited with the job (0: not yet).
    #[serde(default)]
    credited_ms: i64,
    #[serde(flatten)]
    version: ModelVersion,
}

fn model_key(owner: i64, name: &str) -> String {
    format!("m:{owner}:{name}")
}

fn name_key(name: &str) -> String {
    format!("n:{name}")
}

fn model_id(owner: i64, name: &str, version: u32) -> String {
    format!("model:{owner}:{name}:{version}")
}

/// A model's summary as `models.list` pages it; `nkey` sorts it by name (never compared bare).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeadDoc {
    #[serde(rename = "_id")]
    id: String,
    nkey: String,
    #[serde(flatten)]
    summary: ModelSummary,
}

/// The summaries of the models `versions` belong to (each model's versions together or not).
fn heads(versions: impl IntoIterator<Item = ModelVersion>) -> Vec<HeadDoc> {
    let mut by_key: std::collections::BTreeMap<String, HeadDoc> = Default::default();
    for v in versions {
        let key = model_key(v.user_id, &v.name);
        match by_key.get_mut(&key) {
            Some(h) => {
                h.summary.versions += 1;
                if v.version > h.summary.latest.version {
                    h.summary.latest = ModelBrief::from(&v);
                }
            }
            None => {
                by_key.insert(
                    key.clone(),
                    HeadDoc {
                        id: key,
                        nkey: name_key(&v.name),
                        summary: ModelSummary {
                            name: v.name.clone(),
                            owner_id: v.user_id,
                            versions: 1,
                            latest: ModelBrief::from(&v),
                        },
                    },
                );
            }
        }
    }
    by_key.into_values().collect()
}

/// Filter of one version of one owner's model.
fn version_filter(model: &ModelVersion) -> Document {
    doc! { "key": model_key(model.user_id, &model.name), "version": model.version }
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

    fn heads(&self) -> Collection<HeadDoc> {
        self.registry.store().database().collection("model_heads")
    }

    /// Write the summary of `owner`'s model `name` from its versions (gone with the last one):
    /// their number counted by the store and the newest read alone, so listing a version costs
    /// the same however many the model has.
    async fn refresh_head(&self, owner: i64, name: &str) -> Result<(), RegistryError> {
        let key = model_key(owner, name);
        let db = self.registry.store().database();
        // Taken before counting: whoever takes a later one counts after this writer's change.
        let rev = Counter::new(db, "counters", format!("head:{key}"), "n")
            .next()
            .await?;
        let filter = doc! { "key": &key, "name": name };
        let versions = mongo::count(&self.models(), filter.clone()).await?;
        let latest = self
            .models()
            .find_one(filter)
            .sort(doc! { "version": -1 })
            .await?;
        let head = match latest {
            Some(latest) => mongodb::bson::to_document(&HeadDoc {
                id: key.clone(),
                nkey: name_key(name),
                summary: ModelSummary {
                    name: name.to_owned(),
                    owner_id: latest.version.user_id,
                    versions: u32::try_from(versions).unwrap_or(u32::MAX),
                    latest: ModelBrief::from(&latest.version),
                },
            })
            .map_err(anyhow::Error::from)?,
            // Gone with its last version: a bare revision, so that an older view cannot bring
            // it back.
            None => Document::new(),
        };
        if !mongo::replace_if_newer(&self.heads().clone_with_type(), &key, rev, head).await? {
            tracing::debug!(
                key,
                rev,
                "a later summary of the model was written meanwhile"
            );
        }
        Ok(())
    }

    /// Indexes for lookups by owner and name, and by name (idempotent); versions listed before
    /// models had owners get their owner's keys.
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        for keys in [
            doc! { "key": 1 },
            doc! { "nkey": 1 },
            doc! { "key": 1, "version": -1 },
        ] {
            self.models()
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        for keys in [
            doc! { "nkey": 1, "owner_id": 1 },
            doc! { "owner_id": 1, "nkey": 1 },
        ] {
            self.heads()
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        let docs: Vec<ModelDoc> = self.models().find(doc! {}).await?.try_collect().await?;
        // A summary for every model listed before summaries were kept (listings read only
        // these). One that exists stays: a replica starting must not write back an older view
        // over another replica's newer one.
        let have: std::collections::HashSet<String> = self
            .heads()
            .clone_with_type::<Document>()
            .find(doc! {})
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect::<Vec<Document>>()
            .await?
            .into_iter()
            .filter_map(|h| h.get_str("_id").ok().map(str::to_owned))
            .collect();
        for head in heads(docs.iter().map(|d| d.version.clone())) {
            if !have.contains(&head.id) {
                // Lost to a replica that wrote it meanwhile: theirs is as new.
                let _ = self.heads().insert_one(&head).await;
            }
        }
        for d in docs {
            let key = model_key(d.version.user_id, &d.version.name);
            let nkey = name_key(&d.version.name);
            if d.key != key || d.nkey != nkey {
                self.models()
                    .update_one(
                        doc! { "_id": &d.id },
                        doc! { "$set": { "key": key, "nkey": nkey } },
                    )
                    .await?;
            }
        }
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
    /// Also says whether the number was reserved just now (no earlier attempt can have listed it).
    async fn reserve_version(&self, job: &JobRecord) -> Result<(u32, bool), RegistryError> {
        let db = self.registry.store().database();
        let reservations: Collection<Document> = db.collection("version_reservations");
        if let Some(r) = reservations.find_one(doc! { "_id": &job.job_id }).await? {
            return Ok((mongo::number(r.get("version"))? as u32, false));
        }
        let owner = job.model_owner();
        let counter = Counter::new(
            db,
            "counters",
            format!("model:{owner}:{}", job.output_model),
            "n",
        );
        let key = model_key(owner, &job.output_model);
        // Versions listed before models had owners were numbered by name alone: skip past them.
        let mut n = counter.next().await?;
        while self
            .models()
            .find_one(doc! { "key": &key, "version": n })
            .await?
            .is_some()
        {
            n = counter.next().await?;
        }
        // Events are applied one at a time, so nobody reserves for this job meanwhile.
        reservations
            .insert_one(doc! { "_id": &job.job_id, "version": n })
            .await?;
        Ok((n as u32, true))
    }

    /// List the model version a completion of `job` makes, under the version reserved for it
    /// (repeatable: listed once).
    pub async fn list_version(
        &self,
        job: &JobRecord,
        model: &ModelVersion,
    ) -> Result<ModelVersion, RegistryError> {
        let mut model = model.clone();
        let (version, fresh) = self.reserve_version(job).await?;
        model.version = version;
        model.name = job.output_model.clone();
        model.user_id = job.model_owner();
        model.job_id = job.job_id.clone();
        // A number reserved just now is listed under no version yet: no need to look.
        self.write_version(&model, !fresh).await?;
        Ok(model)
    }

    async fn ensure_listed(&self, model: &ModelVersion) -> Result<(), RegistryError> {
        self.write_version(model, true).await
    }

    /// Write the version (after looking whether it is there, when `look`) and its model's summary.
    async fn write_version(&self, model: &ModelVersion, look: bool) -> Result<(), RegistryError> {
        if !look
            || self
                .models()
                .find_one(version_filter(model))
                .await?
                .is_none()
        {
            let d = ModelDoc {
                id: model_id(model.user_id, &model.name, model.version),
                key: model_key(model.user_id, &model.name),
                nkey: name_key(&model.name),
                created_ms: Utc::now().timestamp_millis(),
                credited_ms: 0,
                version: model.clone(),
            };
            self.models().insert_one(&d).await?;
        }
        self.refresh_head(model.user_id, &model.name).await
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
        self.models().delete_one(version_filter(model)).await?;
        self.refresh_head(model.user_id, &model.name).await?;
        tracing::info!(
            job_id = model.job_id,
            version = model.version,
            "the job ended otherwise; its version is withdrawn"
        );
        self.drop_weights(Some(model.weights_key.clone()), None)
            .await;
        Ok(())
    }

    /// Mark a listed version's node credited; true when this call marked it.
    async fn mark_credited(&self, model: &ModelVersion) -> Result<bool, RegistryError> {
        let mut filter = version_filter(model);
        filter.insert("credited_ms", 0_i64);
        let marked = self
            .models()
            .update_one(
                filter,
                doc! { "$set": { "credited_ms": Utc::now().timestamp_millis() } },
            )
            .await?;
        Ok(marked.modified_count == 1)
    }

    /// A completed job's model version listed and its node credited once (repeatable), and the
    /// weights of its other deliveries removed.
    ///
    /// The version and its model's summary were written before the job read completed
    /// ([`Self::list_version`]); they are written here only when the version is missing (a job
    /// completed by a registry that listed versions afterwards). Every replica takes the node's
    /// new count from the job's settled announcement.
    pub async fn record(&self, job: &JobRecord, model: &ModelVersion) -> Result<(), RegistryError> {
        // Marked first, then counted: a count that fails here is lost, never doubled. A mark
        // that matches nothing is a version credited already, or one not listed.
        let mut credited = match &job.node_id {
            Some(_) => self.mark_credited(model).await?,
            None => false,
        };
        if !credited
            && self
                .models()
                .find_one(version_filter(model))
                .await?
                .is_none()
        {
            self.ensure_listed(model).await?;
            if job.node_id.is_some() {
                credited = self.mark_credited(model).await?;
            }
        }
        if let (true, Some(node_id)) = (credited, &job.node_id) {
            self.registry.store().count_completed(node_id).await?;
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

    /// `models.list`: by name, then owner; paged.
    pub async fn list(&self, q: ModelQuery) -> Result<ModelList, RegistryError> {
        // A model whose versions are all withdrawn has a bare revision and no count.
        let mut filter = doc! { "versions": { "$gt": 0 } };
        if let Some(u) = q.user_id {
            filter.insert("owner_id", u);
        }
        let limit = q.limit.unwrap_or(50).clamp(1, MAX_MODELS_PAGE);
        let total = mongo::count(&self.heads(), filter.clone()).await?;
        let models = self
            .heads()
            .find(filter)
            .sort(doc! { "nkey": 1, "owner_id": 1 })
            .skip(q.offset.min(i64::MAX as u64))
            .limit(limit as i64)
            .await?
            .try_collect::<Vec<HeadDoc>>()
            .await?
            .into_iter()
            .map(|h| h.summary)
            .collect();
        Ok(ModelList {
            models,
            total,
            limit,
            offset: q.offset,
        })
    }

    /// `models.get`: the owner's model of that name; with no owner named, the one owner's
    /// (`conflict` when several users have a model of that name).
    pub async fn get(&self, r: ModelRef) -> Result<ModelDetail, RegistryError> {
        let filter = match r.user_id {
            Some(u) => doc! { "key": model_key(u, &r.name) },
            None => doc! { "nkey": name_key(&r.name) },
        };
        let mut versions: Vec<ModelVersion> = self
            .models()
            .find(filter)
            .await?
            .try_collect::<Vec<ModelDoc>>()
            .await?
            .into_iter()
            .map(|d| d.version)
            .filter(|v| v.name == r.name)
            .collect();
        let Some(first) = versions.first() else {
            return Err(RegistryError::NotFound(format!("no model {}", r.name)));
        };
        let owner_id = first.user_id;
        let mut owners: Vec<i64> = versions.iter().map(|v| v.user_id).collect();
        owners.sort_unstable();
        owners.dedup();
        if owners.len() > 1 {
            let list: Vec<String> = owners.iter().map(i64::to_string).collect();
            return Err(RegistryError::Conflict(format!(
                "users {} each have a model named {}; name its owner (`owner`)",
                list.join(", "),
                r.name
            )));
        }
        versions.sort_by_key(|v| v.version);
        Ok(ModelDetail {
            name: r.name,
            owner_id,
            versions,
        })
    }
}

#[cfg(test)]
mod tests;
