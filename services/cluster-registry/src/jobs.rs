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
    self, FailJob, FailureKind, JobDriver, JobEvent, JobEventKind, JobList, JobQuery, JobRecord, JobRef, JobStatus,
    ModelDetail, ModelList, ModelQuery, ModelRef, ModelSummary, ModelVersion, EVENTS_CONSUMER, EVENTS_STREAM,
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
    #[serde(flatten)]
    record: JobRecord,
}

/// A model version as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelDoc {
    #[serde(rename = "_id")]
    id: String,
    created_ms: i64,
    #[serde(flatten)]
    version: ModelVersion,
}

/// The job side of the registry; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    registry: Registry,
}

/// Run `op` again, on a fresh read, while another writer got to the job first (a few times).
async fn redo_if_stale<T, F, Fut>(mut op: F) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut tries = 1;
    loop {
        match op().await {
            Err(RegistryError::Stale(m)) if tries < 5 => {
                tracing::debug!(reason = m, "redoing a job update");
                tries += 1;
            }
            other => return other,
        }
    }
}

fn unavailable_if_final(job: &JobRecord) -> Result<(), RegistryError> {
    if job.status.is_final() {
        return Err(RegistryError::Conflict(format!("job {} is already {}", job.job_id, job.status.as_str())));
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
        self.jobs().create_index(IndexModel::builder().keys(doc! { "created_ms": -1 }).build()).await?;
        self.jobs().create_index(IndexModel::builder().keys(doc! { "status": 1, "driver": 1 }).build()).await?;
        self.models().create_index(IndexModel::builder().keys(doc! { "name": 1 }).build()).await?;
        Ok(())
    }

    async fn load(&self, job_id: &str) -> Result<Option<JobRecord>, RegistryError> {
        Ok(self.jobs().find_one(doc! { "_id": job_id }).await?.map(|d| d.record))
    }

    /// Write back a job read with [`Self::load`], only if nobody wrote it since (its `updated_at`
    /// is the version): replicas and the api's requests change jobs concurrently, and the store
    /// has no transactions. [`RegistryError::Stale`] otherwise: read again and redo.
    async fn save(&self, mut job: JobRecord) -> Result<JobRecord, RegistryError> {
        let read = mongodb::bson::to_bson(&job.updated_at).map_err(anyhow::Error::from)?;
        job.updated_at = Utc::now();
        job.queue_position = None;
        job.waiting_reason = None;
        let d = JobDoc { id: job.job_id.clone(), created_ms: job.created_at.timestamp_millis(), record: job.clone() };
        let written = self.jobs().replace_one(doc! { "_id": &d.id, "updated_at": read }, &d).await?;
        if written.matched_count == 0 {
            return Err(RegistryError::Stale(format!("job {} changed concurrently; try again", job.job_id)));
        }
        Ok(job)
    }

    /// `jobs.create`: record a queued job; an existing id answers the stored record.
    pub async fn create(&self, job: JobRecord) -> Result<JobRecord, RegistryError> {
        if job.job_id.is_empty() || job.job_id.len() > 64 || !job.job_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(RegistryError::BadRequest("job_id must be 1-64 letters, digits or '-'".into()));
        }
        if let Some(existing) = self.load(&job.job_id).await? {
            return Ok(existing);
        }
        let d = JobDoc { id: job.job_id.clone(), created_ms: job.created_at.timestamp_millis(), record: job.clone() };
        match self.jobs().insert_one(&d).await {
            Ok(_) => Ok(job),
            // Two replicas racing on a retried submission: the first one's record wins.
            Err(_) => self.load(&job.job_id).await?.ok_or_else(|| RegistryError::Unavailable("could not record the job".into())),
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
        let queued: Vec<JobDoc> = self.jobs().find(doc! { "status": "queued" }).sort(doc! { "created_ms": 1 }).await?.try_collect().await?;
        for job in jobs.iter_mut().filter(|j| j.status == JobStatus::Queued) {
            let ahead = queued
                .iter()
                .filter(|d| d.record.driver == job.driver && d.created_ms <= job.created_at.timestamp_millis())
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
            .filter(|n| !n.processes.iter().all(|p| p.status == process_status::UNAVAILABLE))
            .collect();
        if serving.is_empty() {
            return Some(format!("no node for driver {}: none connected trains on it", driver.as_str()));
        }
        if serving.iter().all(|n| n.workers_available() == 0) {
            return Some("all worker slots busy".into());
        }
        None
    }

    /// `jobs.cancel`.
    pub async fn cancel(&self, r: JobRef) -> Result<JobRecord, RegistryError> {
        redo_if_stale(|| self.cancel_once(r.clone())).await
    }

    async fn cancel_once(&self, r: JobRef) -> Result<JobRecord, RegistryError> {
        let mut job = Self::owned(self.load(&r.job_id).await?, &r)?;
        unavailable_if_final(&job)?;
        let was_queued = job.status == JobStatus::Queued;
        job.status = JobStatus::Cancelled;
        job.error = Some("cancelled".into());
        let job = self.save(job).await?;
        // Every trainer hears it; the one running it stops and publishes the final event.
        let _ = self.registry.client().publish(jobs::cancel_subject(&job.job_id), "".into()).await;
        let job = if was_queued {
            self.publish_event(&job.job_id, JobEventKind::Cancelled).await;
            self.refund(job, "cancelled before training started").await?
        } else {
            job
        };
        self.announce_settled(&job).await;
        Ok(job)
    }

    /// `jobs.fail`: the api could not queue the job.
    pub async fn fail(&self, f: FailJob) -> Result<JobRecord, RegistryError> {
        redo_if_stale(|| self.fail_once(f.clone())).await
    }

    async fn fail_once(&self, f: FailJob) -> Result<JobRecord, RegistryError> {
        let job = self.load(&f.job_id).await?.ok_or_else(|| RegistryError::NotFound(format!("no job {}", f.job_id)))?;
        if job.status.is_final() {
            return Ok(job);
        }
        self.publish_event(&job.job_id, JobEventKind::Failed { error: f.error.clone(), kind: f.kind }).await;
        self.mark_failed(job, f.error, f.kind).await
    }

    async fn mark_failed(&self, mut job: JobRecord, error: String, kind: FailureKind) -> Result<JobRecord, RegistryError> {
        job.status = JobStatus::Failed;
        job.error = Some(error);
        job.failure_kind = Some(kind);
        let job = self.save(job).await?;
        let job = self.refund(job, "job failed").await?;
        self.announce_settled(&job).await;
        Ok(job)
    }

    /// Tell whoever holds the submission that the job is over and recorded
    /// ([`jobs::settled_subject`]). Lost when nobody listens, which is fine: the record is stored.
    async fn announce_settled(&self, job: &JobRecord) {
        gantry_runtime::metrics::REGISTRY_JOBS_SETTLED.with_label_values(&[job.status.as_str()]).inc();
        let Ok(payload) = serde_json::to_vec(job) else { return };
        let client = self.registry.client();
        if let Err(e) = client.publish_with_headers(jobs::settled_subject(&job.job_id), nats::traced_headers(), payload.into()).await {
            tracing::warn!(job_id = job.job_id, error = %e, "could not announce the job's end");
        }
    }

    /// Give the charge back (once: keyed by the job id) and record it.
    async fn refund(&self, mut job: JobRecord, why: &str) -> Result<JobRecord, RegistryError> {
        if job.tokens_charged <= 0 || job.refunded {
            return Ok(job);
        }
        let r: Result<CreditResult, _> = nats::request(
            self.registry.client(),
            subjects::auth(subjects::auth::CREDITS_REFUND),
            &CreditChange { user_id: job.user_id, amount: job.tokens_charged, key: job.job_id.clone(), reason: format!("job {}: {why}", job.job_id) },
        )
        .await;
        match r {
            Ok(_) => {
                job.refunded = true;
                self.save(job).await
            }
            Err(e) => {
                tracing::error!(job_id = job.job_id, error = %e, "refund failed; it is retried with the next event");
                Ok(job)
            }
        }
    }

    async fn publish_event(&self, job_id: &str, kind: JobEventKind) {
        let event = JobEvent { job_id: job_id.to_owned(), delivery: 0, at: Utc::now(), kind };
        let js = jetstream::new(self.registry.client().clone());
        let payload = serde_json::to_vec(&event).unwrap_or_default();
        let published = async { js.publish_with_headers(jobs::event_subject(job_id), nats::traced_headers(), payload.into()).await?.await };
        if let Err(e) = published.await {
            tracing::warn!(job_id, error = %e, "could not publish a job event");
        }
    }

    /// Apply one event from a trainer. Returns without change for events of an older delivery
    /// (a node that lost its lease) and for events after the job ended.
    pub async fn apply(&self, event: JobEvent) -> Result<(), RegistryError> {
        let Some(mut job) = self.load(&event.job_id).await? else { return Ok(()) };
        if event.delivery != 0 && event.delivery < job.delivery {
            tracing::info!(job_id = job.job_id, delivery = event.delivery, current = job.delivery, "ignoring a late event from an earlier delivery");
            return Ok(());
        }
        if job.status.is_final() {
            // Retry a refund that did not go through when the job ended.
            if job.status == JobStatus::Failed && !job.refunded {
                self.refund(job, "job failed").await?;
            }
            return Ok(());
        }
        if event.delivery > job.delivery {
            job.delivery = event.delivery;
        }
        match event.kind {
            JobEventKind::Started { node, node_id, .. } => {
                job.status = JobStatus::Running;
                job.node = Some(node);
                job.node_id = Some(node_id);
                self.save(job).await?;
            }
            JobEventKind::Progress { .. } => {
                job.status = JobStatus::Running;
                job.progress = serde_json::to_value(&event).ok();
                self.save(job).await?;
            }
            JobEventKind::Checkpoint { epoch, .. } => {
                job.checkpoint_epoch = job.checkpoint_epoch.max(epoch);
                self.save(job).await?;
            }
            JobEventKind::Completed { model } => {
                let (stored, numbered_now) = self.store_model(&job, model).await?;
                // Counted once, when the version is numbered, and before the job reads completed,
                // so whoever sees the job completed sees the node's count include it. (A count that
                // fails here is lost rather than doubled: the retry finds the version numbered.)
                if let (Some(node_id), true) = (&job.node_id, numbered_now) {
                    self.registry.store().count_completed(node_id).await?;
                    self.refresh_completed(node_id).await;
                }
                job.status = JobStatus::Completed;
                job.model = Some(stored);
                let job = self.save(job).await?;
                self.announce_settled(&job).await;
            }
            JobEventKind::Failed { error, kind } => {
                self.mark_failed(job, error, kind).await?;
            }
            JobEventKind::Cancelled => {
                job.status = JobStatus::Cancelled;
                let job = self.save(job).await?;
                self.announce_settled(&job).await;
            }
        }
        Ok(())
    }

    /// Take a node's completed-job count from the store into this replica's view.
    async fn refresh_completed(&self, node_id: &str) {
        match self.registry.store().completed_jobs(node_id).await {
            Ok(Some(n)) => self.registry.view().set_completed(node_id, n),
            Ok(None) => {}
            Err(e) => tracing::warn!(node_id, error = %e, "reading a node's completed jobs"),
        }
    }

    /// Number the new version of a model and store it (once per job). True when this call
    /// numbered it, false when an earlier try already had.
    async fn store_model(&self, job: &JobRecord, mut model: ModelVersion) -> Result<(ModelVersion, bool), RegistryError> {
        if let Some(existing) = self.models().find_one(doc! { "job_id": &job.job_id }).await? {
            return Ok((existing.version, false));
        }
        let counters: Collection<Document> = self.registry.store().database().collection("counters");
        let after = counters
            .find_one_and_update(doc! { "_id": format!("model:{}", job.output_model) }, doc! { "$inc": { "n": 1_i64 } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the model counter vanished"))?;
        let n = match after.get("n") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Double(n)) => *n as i64,
            other => return Err(anyhow::anyhow!("model counter holds {other:?}").into()),
        };
        model.version = n as u32;
        model.name = job.output_model.clone();
        model.user_id = job.user_id;
        model.job_id = job.job_id.clone();
        let d = ModelDoc { id: format!("{}:{}", model.name, model.version), created_ms: Utc::now().timestamp_millis(), version: model.clone() };
        self.models().insert_one(&d).await?;
        Ok((model, true))
    }

    /// `models.list`.
    pub async fn list_models(&self, q: ModelQuery) -> Result<ModelList, RegistryError> {
        let filter = match q.user_id {
            Some(u) => doc! { "user_id": u },
            None => doc! {},
        };
        let docs: Vec<ModelDoc> = self.models().find(filter).sort(doc! { "name": 1, "version": 1 }).await?.try_collect().await?;
        let mut models: Vec<ModelSummary> = Vec::new();
        for d in docs {
            match models.last_mut() {
                Some(m) if m.name == d.version.name => {
                    m.versions += 1;
                    if d.version.version > m.latest.version {
                        m.latest = d.version;
                    }
                }
                _ => models.push(ModelSummary { name: d.version.name.clone(), versions: 1, latest: d.version }),
            }
        }
        Ok(ModelList { models })
    }

    /// `models.get`.
    pub async fn get_model(&self, r: ModelRef) -> Result<ModelDetail, RegistryError> {
        let mut filter = doc! { "name": &r.name };
        if let Some(u) = r.user_id {
            filter.insert("user_id", u);
        }
        let mut versions: Vec<ModelVersion> = self.models().find(filter).await?.try_collect::<Vec<ModelDoc>>().await?.into_iter().map(|d| d.version).collect();
        if versions.is_empty() {
            return Err(RegistryError::NotFound(format!("no model {}", r.name)));
        }
        versions.sort_by_key(|v| v.version);
        Ok(ModelDetail { name: r.name, versions })
    }

    /// Fail and refund a job whose message exhausted its deliveries, and take it off the queue.
    async fn exhausted(&self, js: &jetstream::Context, stream_seq: u64) -> anyhow::Result<()> {
        let stream = js.get_stream(jobs::JOBS_STREAM).await?;
        let msg = stream.get_raw_message(stream_seq).await?;
        let job: jobs::TrainJob = serde_json::from_slice(&msg.payload)?;
        redo_if_stale(|| async {
            if let Some(record) = self.load(&job.job_id).await? {
                if !record.status.is_final() {
                    let error = format!("the job failed on {} deliveries; no trainer could finish it", jobs::MAX_DELIVER);
                    self.publish_event(&job.job_id, JobEventKind::Failed { error: error.clone(), kind: FailureKind::Crash }).await;
                    self.mark_failed(record, error, FailureKind::Crash).await?;
                }
            }
            Ok(())
        })
        .await?;
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

    async fn consume(&self, js: &jetstream::Context, stop: &CancellationToken) -> anyhow::Result<()> {
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
                    match redo_if_stale(|| self.apply(event.clone())).instrument(span).await {
                        Ok(()) => {
                            gantry_runtime::metrics::REGISTRY_JOB_EVENTS.with_label_values(&[kind]).inc();
                            let _ = msg.ack().await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "applying a job event failed; it comes back");
                            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
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
    endpoint(group, ep::JOBS_CREATE, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.create(q).await }).await?;
    endpoint(group, ep::JOBS_GET, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.get(q).await }).await?;
    endpoint(group, ep::JOBS_LIST, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.list(q).await }).await?;
    endpoint(group, ep::JOBS_CANCEL, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.cancel(q).await }).await?;
    endpoint(group, ep::JOBS_FAIL, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.fail(q).await }).await?;
    endpoint(group, ep::MODELS_LIST, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.list_models(q).await }).await?;
    endpoint(group, ep::MODELS_GET, &jobs, shutdown, tracker, |j: Jobs, q| async move { j.get_model(q).await }).await?;
    Ok(())
}
