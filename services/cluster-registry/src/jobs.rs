//! Jobs and models: the records the api creates, the job events trainers publish (consumed
//! durably, fenced by delivery count), cancellation, refunds of failed jobs, the max-deliveries
//! advisory, queue positions and models.
//!
//! Collections of `<prefix>registry`:
//! - `jobs`: one per job, `_id` = job id, written whole (replace) so booleans stay booleans.
//! - `models`: one per model version, `_id` = `<name>:<version>`.
//! - `counters`: `{_id: "model:<name>", n}` numbers a model's versions.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use gantry_contracts::auth::{CreditChange, CreditResult};
use gantry_contracts::jobs::{
    self, FailJob, FailureKind, JobDriver, JobEvent, JobEventKind, JobList, JobQuery, JobRecord,
    JobRef, JobStatus, ModelDetail, ModelList, ModelQuery, ModelRef, ModelSummary, ModelVersion,
    EVENTS_CONSUMER, EVENTS_STREAM,
};
use gantry_contracts::registry::process_status;
use gantry_contracts::subjects;
use gantry_runtime::nats;
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::ReturnDocument;
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::RegistryError;
use crate::registry::Registry;

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Milliseconds since the epoch, for ordering.
    created_ms: i64,
    /// Bumped by every write: the version a write is conditional on.
    #[serde(default)]
    rev: i64,
    #[serde(flatten)]
    record: JobRecord,
}

/// What [`Jobs::update`] did.
enum Update<T> {
    /// `change` left the job alone; this is the job as it is.
    Unchanged(JobRecord),
    /// Written; the job as written, and what `change` returned.
    Changed(JobRecord, T),
}

/// A model version as stored: `_id` = `model:<name>:<version>`. `key` (`m:<name>`) is what
/// lookups by name filter on: the store reads a value that starts like a date (`2026-01-02-x`)
/// as one, so names are never compared bare.
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

/// How long applying one event may take (the consumer's ack wait is 30 s).
const APPLY_LIMIT: Duration = Duration::from_secs(20);

fn bson_number(v: Option<&Bson>) -> Result<i64, RegistryError> {
    match v {
        Some(Bson::Int64(n)) => Ok(*n),
        Some(Bson::Int32(n)) => Ok(i64::from(*n)),
        Some(Bson::Double(n)) => Ok(*n as i64),
        other => Err(anyhow::anyhow!("expected a number, found {other:?}").into()),
    }
}

/// The job side of the registry; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    registry: Registry,
}

/// Count a job's end (once: only the writer that made it final calls this).
fn ended(job: &JobRecord) {
    gantry_runtime::metrics::REGISTRY_JOBS_ENDED
        .with_label_values(&[job.status.as_str()])
        .inc();
}

fn unavailable_if_final(job: &JobRecord) -> Result<(), RegistryError> {
    if job.status.is_final() {
        return Err(RegistryError::Conflict(format!(
            "job {} is already {}",
            job.job_id,
            job.status.as_str()
        )));
    }
    Ok(())
}

impl Jobs {
    /// Over the registry's connections and view.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }

    fn jobs(&self) -> Collection<JobDoc> {
        self.registry.store().database().collection("jobs")
    }

    fn models(&self) -> Collection<ModelDoc> {
        self.registry.store().database().collection("models")
    }

    /// Indexes for listings (idempotent).
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        self.jobs()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "created_ms": -1 })
                    .build(),
            )
            .await?;
        self.jobs()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "status": 1, "driver": 1 })
                    .build(),
            )
            .await?;
        self.models()
            .create_index(IndexModel::builder().keys(doc! { "key": 1 }).build())
            .await?;
        Ok(())
    }

    async fn load(&self, job_id: &str) -> Result<Option<JobRecord>, RegistryError> {
        Ok(self
            .jobs()
            .find_one(doc! { "_id": job_id })
            .await?
            .map(|d| d.record))
    }

    /// Change a job in the store: read it, let `change` edit it (or return `None` to leave it as
    /// it is), and write it back only if nobody wrote it since (conditional on its `rev`). When
    /// another writer got there first (a replica applying an event, a cancel on another replica),
    /// read again and decide again: the store has no transactions, so this is how concurrent
    /// writers never lose each other's changes. `change` must be free of side effects; the
    /// caller acts on the result.
    async fn update<T>(
        &self,
        job_id: &str,
        mut change: impl FnMut(&mut JobRecord) -> Result<Option<T>, RegistryError>,
    ) -> Result<Update<T>, RegistryError> {
        for _ in 0..8 {
            let doc = self
                .jobs()
                .find_one(doc! { "_id": job_id })
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("no job {job_id}")))?;
            let mut job = doc.record.clone();
            let Some(out) = change(&mut job)? else {
                return Ok(Update::Unchanged(doc.record));
            };
            job.updated_at = Utc::now();
            job.queue_position = None;
            job.waiting_reason = None;
            let next = JobDoc {
                id: doc.id.clone(),
                created_ms: doc.created_ms,
                rev: doc.rev + 1,
                record: job.clone(),
            };
            let filter = if doc.rev == 0 {
                // Written before revisions were kept: no `rev` field yet.
                doc! { "_id": &doc.id, "rev": { "$exists": false } }
            } else {
                doc! { "_id": &doc.id, "rev": doc.rev }
            };
            if self.jobs().replace_one(filter, &next).await?.matched_count == 1 {
                return Ok(Update::Changed(job, out));
            }
            tracing::debug!(job_id, "job changed concurrently; deciding again");
        }
        Err(RegistryError::Unavailable(format!(
            "job {job_id} keeps changing concurrently; try again"
        )))
    }

    /// `jobs.create`: record a queued job; an existing id answers the stored record.
    pub async fn create(&self, job: JobRecord) -> Result<JobRecord, RegistryError> {
        if job.job_id.is_empty()
            || job.job_id.len() > 64
            || !job
                .job_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(RegistryError::BadRequest(
                "job_id must be 1-64 letters, digits or '-'".into(),
            ));
        }
        if let Some(existing) = self.load(&job.job_id).await? {
            return Ok(existing);
        }
        let d = JobDoc {
            id: job.job_id.clone(),
            created_ms: job.created_at.timestamp_millis(),
            rev: 1,
            record: job.clone(),
        };
        match self.jobs().insert_one(&d).await {
            Ok(_) => Ok(job),
            // Two replicas racing on a retried submission: the first one's record wins.
            Err(_) => self
                .load(&job.job_id)
                .await?
                .ok_or_else(|| RegistryError::Unavailable("could not record the job".into())),
        }
    }

    fn owned(job: Option<JobRecord>, r: &JobRef) -> Result<JobRecord, RegistryError> {
        match job {
            Some(j) if r.user_id.is_none_or(|u| u == j.user_id) => Ok(j),
            _ => Err(RegistryError::NotFound(format!("no job {}", r.job_id))),
        }
    }

    /// `jobs.get`, with the queue position of a queued job.
    pub async fn get(&self, r: JobRef) -> Result<JobRecord, RegistryError> {
        let mut job = Self::owned(self.load(&r.job_id).await?, &r)?;
        self.annotate(std::slice::from_mut(&mut job)).await?;
        Ok(job)
    }

    /// `jobs.list`: newest first.
    pub async fn list(&self, q: JobQuery) -> Result<JobList, RegistryError> {
        let mut filter = Document::new();
        if let Some(u) = q.user_id {
            filter.insert("user_id", u);
        }
        if let Some(s) = q.status {
            filter.insert("status", s.as_str());
        }
        let limit = q.limit.unwrap_or(50).clamp(1, 500);
        let total = self.jobs().count_documents(filter.clone()).await?;
        let docs: Vec<JobDoc> = self
            .jobs()
            .find(filter)
            .sort(doc! { "created_ms": -1 })
            .skip(q.offset)
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        let mut jobs: Vec<JobRecord> = docs.into_iter().map(|d| d.record).collect();
        self.annotate(&mut jobs).await?;
        Ok(JobList { jobs, total })
    }

    /// Queue position and waiting reason of the queued jobs among `jobs`.
    async fn annotate(&self, jobs: &mut [JobRecord]) -> Result<(), RegistryError> {
        if !jobs.iter().any(|j| j.status == JobStatus::Queued) {
            return Ok(());
        }
        let queued: Vec<JobDoc> = self
            .jobs()
            .find(doc! { "status": "queued" })
            .sort(doc! { "created_ms": 1 })
            .await?
            .try_collect()
            .await?;
        for job in jobs.iter_mut().filter(|j| j.status == JobStatus::Queued) {
            let ahead = queued
                .iter()
                .filter(|d| {
                    d.record.driver == job.driver
                        && d.created_ms <= job.created_at.timestamp_millis()
                })
                .take_while(|d| d.id != job.job_id)
                .count();
            job.queue_position = Some(ahead as u64 + 1);
            job.waiting_reason = self.waiting_reason(job.driver);
        }
        Ok(())
    }

    /// Why a job for `driver` would wait now, or `None` when a node could take it.
    fn waiting_reason(&self, driver: JobDriver) -> Option<String> {
        let view = self.registry.view();
        let serving: Vec<_> = view
            .nodes()
            .filter(|n| n.connected && !n.revoked && !n.record.settings.draining)
            .filter(|n| driver == JobDriver::Any || n.driver.as_str() == driver.as_str())
            .filter(|n| {
                !n.processes
                    .iter()
                    .all(|p| p.status == process_status::UNAVAILABLE)
            })
            .collect();
        if serving.is_empty() {
            return Some(format!(
                "no node for driver {}: none connected trains on it",
                driver.as_str()
            ));
        }
        if serving.iter().all(|n| n.workers_available() == 0) {
            return Some("all worker slots busy".into());
        }
        None
    }

    /// `jobs.cancel`.
    pub async fn cancel(&self, r: JobRef) -> Result<JobRecord, RegistryError> {
        let updated = self
            .update(&r.job_id, |job| {
                if r.user_id.is_some_and(|u| u != job.user_id) {
                    return Err(RegistryError::NotFound(format!("no job {}", r.job_id)));
                }
                unavailable_if_final(job)?;
                let was_queued = job.status == JobStatus::Queued;
                job.status = JobStatus::Cancelled;
                job.error = Some("cancelled".into());
                job.refund_due = was_queued;
                Ok(Some(was_queued))
            })
            .await;
        let (job, was_queued) = match updated {
            Ok(Update::Changed(job, was_queued)) => (job, was_queued),
            Ok(Update::Unchanged(job)) => return Ok(job),
            Err(RegistryError::NotFound(_)) => {
                return Err(RegistryError::NotFound(format!("no job {}", r.job_id)))
            }
            Err(e) => return Err(e),
        };
        // Every trainer hears it; the one running it stops and publishes the final event.
        let _ = self
            .registry
            .client()
            .publish(jobs::cancel_subject(&job.job_id), "".into())
            .await;
        ended(&job);
        if was_queued {
            self.publish_event(&job.job_id, JobEventKind::Cancelled)
                .await;
        }
        // A step left undone is finished when the consumer applies the cancelled event.
        Ok(self.settle(job).await.0)
    }

    /// `jobs.fail`: the api could not queue the job, or no node could take it.
    pub async fn fail(&self, f: FailJob) -> Result<JobRecord, RegistryError> {
        self.fail_job(&f.job_id, f.error, f.kind).await
    }

    /// Mark a job failed unless it is over already, tell its followers, refund it. A job failed
    /// because no node could take it is failed only while it is still queued: one a node took
    /// meanwhile goes on.
    async fn fail_job(
        &self,
        job_id: &str,
        error: String,
        kind: FailureKind,
    ) -> Result<JobRecord, RegistryError> {
        let updated = self
            .update(job_id, |job| {
                if job.status.is_final()
                    || (kind == FailureKind::NoNode && job.status != JobStatus::Queued)
                {
                    return Ok(None);
                }
                job.refund_due = true;
                job.status = JobStatus::Failed;
                job.error = Some(error.clone());
                job.failure_kind = Some(kind);
                Ok(Some(()))
            })
            .await?;
        match updated {
            Update::Unchanged(job) => Ok(job),
            Update::Changed(job, ()) => {
                ended(&job);
                self.publish_event(job_id, JobEventKind::Failed { error, kind })
                    .await;
                Ok(self.settle(job).await.0)
            }
        }
    }

    /// What follows from a job being over, each step idempotent so it can be repeated whenever
    /// the job is seen again (a redelivered event): a completed job's model version is listed,
    /// its node credited and other deliveries' weights removed; a job whose charge is due back is
    /// refunded. Then the record is announced on [`jobs::settled_subject`]. Returns the record as
    /// it ends up, and whether every step is done (the consumer redelivers the event otherwise).
    async fn settle(&self, mut job: JobRecord) -> (JobRecord, bool) {
        let mut done = true;
        if job.status == JobStatus::Completed {
            if let Err(e) = self.record_model(&job).await {
                tracing::error!(job_id = job.job_id, error = %e, "recording the model version failed; retried");
                done = false;
            }
        }
        if job.refund_due && !job.refunded && job.tokens_charged > 0 {
            job = self.refund(job).await;
            done &= job.refunded;
        }
        self.announce_settled(&job).await;
        (job, done)
    }

    /// Tell whoever holds the submission that the job is over and recorded
    /// ([`jobs::settled_subject`]). Lost when nobody listens, which is fine: the record is stored.
    async fn announce_settled(&self, job: &JobRecord) {
        let Ok(payload) = serde_json::to_vec(job) else {
            return;
        };
        let client = self.registry.client();
        if let Err(e) = client
            .publish_with_headers(
                jobs::settled_subject(&job.job_id),
                nats::traced_headers(),
                payload.into(),
            )
            .await
        {
            tracing::warn!(job_id = job.job_id, error = %e, "could not announce the job's end");
        }
    }

    /// Give the charge back (once: auth keys it by the job id) and mark the job refunded.
    async fn refund(&self, job: JobRecord) -> JobRecord {
        let why = if job.status == JobStatus::Cancelled {
            "cancelled before training started"
        } else {
            "job failed"
        };
        let r: Result<CreditResult, _> = nats::request(
            self.registry.client(),
            subjects::auth(subjects::auth::CREDITS_REFUND),
            &CreditChange {
                user_id: job.user_id,
                amount: job.tokens_charged,
                key: job.job_id.clone(),
                reason: format!("job {}: {why}", job.job_id),
            },
        )
        .await;
        if let Err(e) = r {
            tracing::error!(job_id = job.job_id, error = %e, "refund failed; it is retried with the job's next event");
            return job;
        }
        let marked = self
            .update(&job.job_id, |j| {
                if j.refunded {
                    return Ok(None);
                }
                j.refunded = true;
                Ok(Some(()))
            })
            .await;
        match marked {
            Ok(Update::Changed(j, ())) | Ok(Update::Unchanged(j)) => j,
            Err(e) => {
                tracing::error!(job_id = job.job_id, error = %e, "refunded, but marking the job refunded failed");
                job
            }
        }
    }

    async fn publish_event(&self, job_id: &str, kind: JobEventKind) {
        let event = JobEvent {
            job_id: job_id.to_owned(),
            delivery: 0,
            at: Utc::now(),
            kind,
        };
        let js = jetstream::new(self.registry.client().clone());
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let published = async {
            js.publish_with_headers(
                jobs::event_subject(job_id),
                nats::traced_headers(),
                payload.into(),
            )
            .await?
            .await
        };
        if let Err(e) = published.await {
            tracing::warn!(job_id, error = %e, "could not publish a job event");
        }
    }

    /// Apply one event from a trainer. Events of an older delivery (a node that lost its lease)
    /// change nothing; an event for a job that is over repeats what follows from its end
    /// ([`Self::settle`]), which finishes any step that failed the first time.
    pub async fn apply(&self, event: JobEvent) -> Result<(), RegistryError> {
        let Some(current) = self.load(&event.job_id).await? else {
            return Ok(());
        };
        let stale = |job: &JobRecord| event.delivery != 0 && event.delivery < job.delivery;
        let late_weights = match &event.kind {
            JobEventKind::Completed { model } => Some(model.weights_key.clone()),
            _ => None,
        };
        if stale(&current) {
            tracing::info!(
                job_id = current.job_id,
                delivery = event.delivery,
                current = current.delivery,
                "ignoring a late event from an earlier delivery"
            );
            self.drop_weights(late_weights, current.model.as_ref())
                .await;
            return Ok(());
        }
        if current.status.is_final() {
            self.drop_weights(late_weights, current.model.as_ref())
                .await;
            return self.settle_or_retry(current).await;
        }
        // A completion is listed under its version before the job reads completed, so whoever
        // sees the job completed can list and download its model.
        let listed = match &event.kind {
            JobEventKind::Completed { model } => Some(self.list_version(&current, model).await?),
            _ => None,
        };
        let updated = match self
            .update(&event.job_id, |job| {
                if stale(job) || job.status.is_final() {
                    return Ok(None);
                }
                job.delivery = job.delivery.max(event.delivery);
                match &event.kind {
                    JobEventKind::Started { node, node_id, .. } => {
                        job.status = JobStatus::Running;
                        job.node = Some(node.clone());
                        job.node_id = Some(node_id.clone());
                    }
                    JobEventKind::Progress { .. } => {
                        job.status = JobStatus::Running;
                        job.progress = jobs::JobProgress::of(&event);
                    }
                    JobEventKind::Checkpoint { epoch, .. } => {
                        job.checkpoint_epoch = job.checkpoint_epoch.max(*epoch)
                    }
                    JobEventKind::Completed { .. } => {
                        job.status = JobStatus::Completed;
                        job.model = listed.clone();
                    }
                    JobEventKind::Failed { error, kind } => {
                        job.status = JobStatus::Failed;
                        job.error = Some(error.clone());
                        job.failure_kind = Some(*kind);
                        job.refund_due = true;
                    }
                    JobEventKind::Cancelled => job.status = JobStatus::Cancelled,
                }
                Ok(Some(()))
            })
            .await
        {
            Err(RegistryError::NotFound(_)) => return Ok(()),
            other => other?,
        };
        match updated {
            Update::Changed(job, ()) if job.status.is_final() => {
                ended(&job);
                self.settle_or_retry(job).await
            }
            Update::Changed(..) => Ok(()),
            // The job ended another way meanwhile (a cancel won): the version listed for this
            // completion goes again, and so do its weights.
            Update::Unchanged(job) => {
                if let Some(model) = listed.filter(|_| job.status != JobStatus::Completed) {
                    self.unlist_version(&model).await?;
                    self.drop_weights(Some(model.weights_key.clone()), None)
                        .await;
                }
                Ok(())
            }
        }
    }

    /// [`Self::settle`], asking for the event again when a step is left undone.
    async fn settle_or_retry(&self, job: JobRecord) -> Result<(), RegistryError> {
        let job_id = job.job_id.clone();
        match self.settle(job).await {
            (_, true) => Ok(()),
            (_, false) => Err(RegistryError::Unavailable(format!(
                "job {job_id} is not settled yet"
            ))),
        }
    }

    /// Take a node's completed-job count from the store into this replica's view.
    async fn refresh_completed(&self, node_id: &str) {
        match self.registry.store().completed_jobs(node_id).await {
            Ok(Some(n)) => self.registry.view().set_completed(node_id, n),
            Ok(None) => {}
            Err(e) => tracing::warn!(node_id, error = %e, "reading a node's completed jobs"),
        }
    }

    /// The version number of the model a job completes: taken from the model's counter the first
    /// time, the same number on every retry.
    async fn reserve_version(&self, job: &JobRecord) -> Result<u32, RegistryError> {
        let reservations: Collection<Document> = self
            .registry
            .store()
            .database()
            .collection("version_reservations");
        if let Some(r) = reservations.find_one(doc! { "_id": &job.job_id }).await? {
            return bson_number(r.get("version")).map(|n| n as u32);
        }
        let counters: Collection<Document> =
            self.registry.store().database().collection("counters");
        let after = counters
            .find_one_and_update(
                doc! { "_id": format!("model:{}", job.output_model) },
                doc! { "$inc": { "n": 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the model counter vanished"))?;
        let n = bson_number(after.get("n"))?;
        // Events are applied one at a time, so nobody reserves for this job meanwhile.
        reservations
            .insert_one(doc! { "_id": &job.job_id, "version": n })
            .await?;
        Ok(n as u32)
    }

    /// List the model version a completion of `job` makes, under the version reserved for it
    /// (repeatable: listed once).
    async fn list_version(
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

    async fn unlist_version(&self, model: &ModelVersion) -> Result<(), RegistryError> {
        self.models()
            .delete_one(doc! { "_id": model_id(&model.name, model.version) })
            .await?;
        tracing::info!(
            job_id = model.job_id,
            version = model.version,
            "the job ended otherwise; its version is withdrawn"
        );
        Ok(())
    }

    /// A completed job's model version listed and its node credited once (repeatable), and the
    /// weights of its other deliveries removed.
    async fn record_model(&self, job: &JobRecord) -> Result<(), RegistryError> {
        let Some(model) = &job.model else {
            return Ok(());
        };
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
    async fn drop_weights(
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
        let Ok(store) = gantry_runtime::jobs::bucket_store(&js, jobs::MODELS_BUCKET).await else {
            return;
        };
        for key in keys {
            if store.info(&key).await.is_ok_and(|i| !i.deleted) {
                match store.delete(&key).await {
                    Ok(()) => {
                        tracing::info!(key, "removed weights that belong to no model version")
                    }
                    Err(e) => tracing::warn!(key, error = %e, "could not remove unused weights"),
                }
            }
        }
    }

    /// `models.list`.
    pub async fn list_models(&self, q: ModelQuery) -> Result<ModelList, RegistryError> {
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
    pub async fn get_model(&self, r: ModelRef) -> Result<ModelDetail, RegistryError> {
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

    /// Fail and refund a job whose message exhausted its deliveries, and take it off the queue.
    async fn exhausted(&self, js: &jetstream::Context, stream_seq: u64) -> anyhow::Result<()> {
        let stream = js.get_stream(jobs::JOBS_STREAM).await?;
        let msg = stream.get_raw_message(stream_seq).await?;
        let job: jobs::TrainJob = serde_json::from_slice(&msg.payload)?;
        let error = format!(
            "the job failed on {} deliveries; no trainer could finish it",
            jobs::MAX_DELIVER
        );
        match self.fail_job(&job.job_id, error, FailureKind::Crash).await {
            Ok(_) | Err(RegistryError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let _ = stream.delete_message(stream_seq).await;
        Ok(())
    }

    /// Consume job events durably (shared by every replica) and the max-deliveries advisory
    /// (one replica handles each), until `shutdown`.
    pub async fn start(&self, shutdown: CancellationToken, tracker: &TaskTracker) {
        let this = self.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let js = jetstream::new(this.registry.client().clone());
            if !gantry_runtime::jobs::ensure_with_retry(&js, &stop).await {
                return;
            }
            if let Err(e) = this.ensure_indexes().await {
                tracing::warn!(error = %e, "job indexes");
            }
            let advisories = {
                let this = this.clone();
                let js = js.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut sub) = this.registry.client().queue_subscribe(jobs::MAX_DELIVERIES_ADVISORY, "gantry-registry".into()).await else { return };
                    loop {
                        let msg = tokio::select! { _ = stop.cancelled() => break, m = sub.next() => match m { Some(m) => m, None => break } };
                        #[derive(Deserialize)]
                        struct Advisory {
                            stream_seq: u64,
                        }
                        match serde_json::from_slice::<Advisory>(&msg.payload) {
                            Ok(a) => {
                                if let Err(e) = this.exhausted(&js, a.stream_seq).await {
                                    tracing::warn!(error = format!("{e:#}"), "handling a max-deliveries advisory");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "unreadable max-deliveries advisory"),
                        }
                    }
                })
            };
            // Every replica follows completions (not only the one that recorded them), so each
            // lists the same completed-job counts.
            let completions = {
                let this = this.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut sub) = this.registry.client().subscribe(jobs::SETTLED_SUBJECTS).await else { return };
                    loop {
                        let msg = tokio::select! { _ = stop.cancelled() => break, m = sub.next() => match m { Some(m) => m, None => break } };
                        if let Ok(JobRecord { status: JobStatus::Completed, node_id: Some(node_id), .. }) = serde_json::from_slice(&msg.payload) {
                            this.refresh_completed(&node_id).await;
                        }
                    }
                })
            };
            loop {
                if stop.is_cancelled() {
                    break;
                }
                if let Err(e) = this.consume(&js, &stop).await {
                    tracing::warn!(error = format!("{e:#}"), "job event consumer stopped; restarting");
                    tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                }
            }
            advisories.abort();
            completions.abort();
        });
    }

    async fn consume(
        &self,
        js: &jetstream::Context,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let stream = js.get_stream(EVENTS_STREAM).await?;
        // Created or updated to this config. One event in flight across all replicas: events are
        // applied in the order they were published, so a job's progress can never be applied
        // after its completion by a slower replica, nor two updates of one job race.
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(EVENTS_CONSUMER.into()),
                filter_subject: "gantry.events.job.*".into(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 1,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = messages.next() => match m {
                    Some(Ok(m)) => m,
                    // The stream re-arms its pulls itself; messages already pulled are not lost.
                    Some(Err(e)) if e.kind() == consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                        tracing::warn!(error = %e, "job event consumer missed a heartbeat; going on");
                        continue;
                    }
                    Some(Err(e)) => return Err(anyhow::anyhow!("{e}")),
                    None => return Ok(()),
                },
            };
            let span = tracing::info_span!("job.event", subject = %msg.subject);
            gantry_runtime::telemetry::set_parent_from(&span, msg.headers.as_ref());
            match serde_json::from_slice::<JobEvent>(&msg.payload) {
                Ok(event) => {
                    let kind = event.kind.name();
                    // Bounded well inside the ack wait, so an event is never redelivered to another
                    // replica while this one still applies it.
                    let applied = tokio::time::timeout(APPLY_LIMIT, self.apply(event))
                        .instrument(span)
                        .await;
                    let applied = applied.unwrap_or_else(|_| {
                        Err(RegistryError::Unavailable(
                            "applying the event took too long".into(),
                        ))
                    });
                    match applied {
                        Ok(()) => {
                            gantry_runtime::metrics::REGISTRY_JOB_EVENTS
                                .with_label_values(&[kind])
                                .inc();
                            let _ = msg.ack().await;
                        }
                        // Never dropped (a lost completion would leave its job running for good):
                        // it comes back, later each time, and holds up the events behind it.
                        Err(e) => {
                            let delivered = msg.info().map(|i| i.delivered).unwrap_or(1).max(1);
                            let wait = Duration::from_secs(1u64 << (delivered - 1).min(5));
                            if delivered >= 5 {
                                tracing::error!(error = %e, delivered, "a job event keeps failing; job events wait behind it");
                            } else {
                                tracing::warn!(error = %e, delivered, "applying a job event failed; it comes back");
                            }
                            let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable job event dropped");
                    let _ = msg.ack().await;
                }
            }
        }
    }
}

/// Register the job and model endpoints and start the event consumers.
pub async fn serve(
    group: &async_nats::service::Group,
    registry: &Registry,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    use crate::startup::endpoint;
    use jobs::subjects as ep;
    let jobs = Jobs::new(registry.clone());
    jobs.start(shutdown.clone(), tracker).await;
    endpoint(
        group,
        ep::JOBS_CREATE,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.create(q).await },
    )
    .await?;
    endpoint(
        group,
        ep::JOBS_GET,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.get(q).await },
    )
    .await?;
    endpoint(
        group,
        ep::JOBS_LIST,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.list(q).await },
    )
    .await?;
    endpoint(
        group,
        ep::JOBS_CANCEL,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.cancel(q).await },
    )
    .await?;
    endpoint(
        group,
        ep::JOBS_FAIL,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.fail(q).await },
    )
    .await?;
    endpoint(
        group,
        ep::MODELS_LIST,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.list_models(q).await },
    )
    .await?;
    endpoint(
        group,
        ep::MODELS_GET,
        &jobs,
        shutdown,
        tracker,
        |j: Jobs, q| async move { j.get_model(q).await },
    )
    .await?;
    Ok(())
}
