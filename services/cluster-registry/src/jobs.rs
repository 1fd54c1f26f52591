//! Job records: create, get and list them (with queue positions and waiting reasons), cancel and
//! withdraw them, apply trainers' events to them, and settle a job that is over. Every change of
//! a record is a [`Transition`] decided by [`crate::lifecycle`] on a fresh read and written
//! conditionally on the record's revision; this module only carries out what it decides.
//!
//! Collection `jobs` of `<prefix>registry`: one document per job, `_id` = job id, written whole
//! (replace) so booleans stay booleans.
//!
//! Longer than most modules because the reconciler's rounds (refunds due, lost jobs, charges
//! with no job, unused datasets) and the batched application of a job's events (folded into one
//! conditional write, with the stream read back for what arrived out of order) live here beside
//! the writes they repeat: each needs the job collection and the same conditional transitions.

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use gantry_contracts::auth::{CreditChange, CreditResult, UnsettledCharges, UnsettledQuery};
use gantry_contracts::jobs::{
    self, FailJob, FailureKind, JobDriver, JobEvent, JobEventKind, JobList, JobQuery, JobRecord,
    JobRef, JobStatus, WaitingReason,
};
use gantry_contracts::subjects;
use gantry_runtime::events::EventPublisher;
use gantry_runtime::{mongo, nats};
use mongodb::bson::{doc, Document};
use mongodb::{Collection, IndexModel};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;
use crate::lifecycle::{self, Effects, Refused, Transition};
use crate::models::Models;
use crate::registry::Registry;

/// A job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Milliseconds since the epoch, for ordering.
    created_ms: i64,
    /// Bumped by every write: the version a write is conditional on.
    #[serde(default)]
    rev: i64,
    /// The event stream sequence of the progress the record holds: progress applies only when
    /// newer, so replicas applying a job's events concurrently (or again, after a crash) keep
    /// the last one published.
    #[serde(default)]
    progress_seq: u64,
    /// The event stream sequence of the trainer's event that ended the job, if one did: progress
    /// published before it still counts when it is applied after it.
    #[serde(default)]
    end_seq: Option<u64>,
    #[serde(flatten)]
    record: JobRecord,
}

/// One job event as the consumer read it: who sent it (from its subject) and where it sits in
/// the event stream.
pub struct Delivered {
    /// The sending node, or the registry.
    pub sender: String,
    /// The event.
    pub event: JobEvent,
    /// Its event stream sequence.
    pub seq: u64,
}

/// What a transition did to a stored job.
enum Outcome {
    /// Written; the job as written and what to carry out.
    Changed(JobRecord, Effects),
    /// Refused; the job as it is, and why.
    Refused(JobRecord, Refused),
}

/// The id of a job message in the queue, of either kind.
#[derive(Deserialize)]
pub(crate) struct QueuedJob {
    pub(crate) job_id: String,
}

/// Most jobs one reconciler round settles.
const RECONCILE_BATCH: i64 = 500;

/// How many times a write lost to a concurrent one is decided again before giving up.
const WRITE_ATTEMPTS: usize = 8;

/// The job side of the registry; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    registry: Registry,
    models: Models,
    events: EventPublisher,
}

impl Jobs {
    /// Over the registry's connections and view.
    pub fn new(registry: Registry) -> Self {
        let models = Models::new(registry.clone());
        let events = EventPublisher::new(
            jetstream::new(registry.client().clone()),
            jobs::REGISTRY_SENDER,
        );
        Self {
            registry,
            models,
            events,
        }
    }

    /// The registry it works over.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The model versions.
    pub fn models(&self) -> &Models {
        &self.models
    }

    pub(crate) fn jobs(&self) -> Collection<JobDoc> {
        self.registry.store().database().collection("jobs")
    }

    /// Indexes for listings (idempotent).
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        self.ensure_result_indexes().await?;
        for keys in [
            doc! { "created_ms": -1 },
            doc! { "status": 1, "driver": 1 },
            doc! { "user_id": 1, "created_ms": -1 },
        ] {
            self.jobs()
                .create_index(IndexModel::builder().keys(keys).build())
                .await?;
        }
        self.models.ensure_indexes().await
    }

    pub(crate) async fn load(&self, job_id: &str) -> Result<Option<JobRecord>, RegistryError> {
        Ok(self
            .jobs()
            .find_one(doc! { "_id": job_id })
            .await?
            .map(|d| d.record))
    }

    /// Apply `t` to a stored job: read it, let the lifecycle decide, and write it back only if
    /// nobody wrote it since (conditional on its `rev`). When another writer got there first (a
    /// replica applying an event, a cancel on another replica), read again and decide again: the
    /// store has no transactions, so this is how concurrent writers never lose each other's
    /// changes. The caller carries out the effects of a change.
    async fn transition(&self, job_id: &str, t: &Transition) -> Result<Outcome, RegistryError> {
        self.transition_at(job_id, t, None, None).await
    }

    /// [`Self::transition`] for the event at `seq` of the event stream, kept as the job's end
    /// when it ends the job.
    async fn transition_at(
        &self,
        job_id: &str,
        t: &Transition,
        seq: Option<u64>,
        at: Option<DateTime<Utc>>,
    ) -> Result<Outcome, RegistryError> {
        for _ in 0..WRITE_ATTEMPTS {
            let doc = self
                .jobs()
                .find_one(doc! { "_id": job_id })
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("no job {job_id}")))?;
            let mut job = doc.record.clone();
            let effects = match lifecycle::apply(&mut job, t) {
                Ok(effects) => effects,
                Err(refused) => return Ok(Outcome::Refused(doc.record, refused)),
            };
            if let Some(at) = at {
                job.mark_times(at, Utc::now());
            }
            let end_seq = if effects.ended { seq } else { None };
            let progress_seq = self
                .keep_progress_before(&mut job, doc.progress_seq, end_seq)
                .await?;
            job.updated_at = Utc::now();
            job.stamp(job.updated_at);
            job.queue_position = None;
            job.waiting_reason = None;
            let next = JobDoc {
                id: doc.id.clone(),
                created_ms: doc.created_ms,
                rev: doc.rev + 1,
                progress_seq,
                end_seq: end_seq.or(doc.end_seq),
                record: job.clone(),
            };
            let filter = if doc.rev == 0 {
                // Written before revisions were kept: no `rev` field yet.
                doc! { "_id": &doc.id, "rev": { "$exists": false } }
            } else {
                doc! { "_id": &doc.id, "rev": doc.rev }
            };
            if self.jobs().replace_one(filter, &next).await?.matched_count == 1 {
                return Ok(Outcome::Changed(job, effects));
            }
            tracing::debug!(job_id, "job changed concurrently; deciding again");
        }
        Err(RegistryError::Unavailable(format!(
            "job {job_id} keeps changing concurrently; try again"
        )))
    }

    /// Carry out what a written transition calls for; an ended job is settled. Returns the job
    /// as it ends up and whether every step is done.
    async fn carry_out(&self, job: JobRecord, effects: Effects) -> (JobRecord, bool) {
        if effects.stop_trainers {
            // Every trainer hears it; the one running it stops and publishes the final event.
            let _ = self
                .registry
                .client()
                .publish(jobs::cancel_subject(&job.job_id), "".into())
                .await;
        }
        if effects.first_start {
            // Dispatch latency: from the job's record to a node's `started`.
            let waited = (chrono::Utc::now() - job.created_at)
                .num_milliseconds()
                .max(0);
            gantry_runtime::metrics::REGISTRY_DISPATCH_SECONDS.observe(waited as f64 / 1000.0);
        }
        if effects.ended {
            gantry_runtime::metrics::REGISTRY_JOBS_ENDED
                .with_label_values(&[job.status.as_str()])
                .inc();
        }
        if let Some(kind) = effects.publish {
            self.publish_event(&job.job_id, kind).await;
        }
        if effects.ended || effects.settle_again {
            return self.settle(job).await;
        }
        (job, true)
    }

    /// `jobs.create`: record a queued job; an existing id answers the stored record.
    pub async fn create(&self, job: JobRecord) -> Result<JobRecord, RegistryError> {
        if !lifecycle::valid_job_id(&job.job_id) {
            return Err(RegistryError::BadRequest(format!(
                "job_id must be 1-{} letters, digits or '-'",
                lifecycle::MAX_JOB_ID
            )));
        }
        if let Some(existing) = self.load(&job.job_id).await? {
            return Ok(existing);
        }
        let d = JobDoc {
            id: job.job_id.clone(),
            created_ms: job.created_at.timestamp_millis(),
            rev: 1,
            progress_seq: 0,
            end_seq: None,
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

    /// `jobs.get`, with the queue position of a queued job.
    pub async fn get(&self, r: JobRef) -> Result<JobRecord, RegistryError> {
        let mut job = match self.load(&r.job_id).await? {
            Some(j) if r.user_id.is_none_or(|u| u == j.user_id) => j,
            _ => return Err(RegistryError::NotFound(format!("no job {}", r.job_id))),
        };
        // A node asking whether to start it, a held submission looking for its end (`bare`):
        // no count of the queue.
        self.annotate(std::slice::from_mut(&mut job), !r.bare)
            .await?;
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
        let mut created = Document::new();
        if let Some(since) = q.since {
            created.insert("$gte", since.timestamp_millis());
        }
        if let Some(until) = q.until {
            created.insert("$lt", until.timestamp_millis());
        }
        if !created.is_empty() {
            filter.insert("created_ms", created);
        }
        let limit = q.limit.unwrap_or(50).clamp(1, 500);
        // Unfiltered, the total is the collection's own count (its metadata, not a scan of every
        // job); a filter counts through its index.
        let total = match filter.is_empty() {
            true => match self.jobs().estimated_document_count().await {
                Ok(n) => n,
                Err(_) => mongo::count(&self.jobs(), doc! {}).await?,
            },
            false => mongo::count(&self.jobs(), filter.clone()).await?,
        };
        let docs: Vec<JobDoc> = self
            .jobs()
            .find(filter)
            .sort(doc! { "created_ms": -1 })
            // The store takes a signed count; past i64 there is nothing to list anyway.
            .skip(q.offset.min(i64::MAX as u64))
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        let mut jobs: Vec<JobRecord> = docs.into_iter().map(|d| d.record).collect();
        self.annotate(&mut jobs, true).await?;
        Ok(JobList { jobs, total })
    }

    /// Queue and run times of the jobs not over among `jobs`, and with `queue` the queue position
    /// and waiting reason of the queued ones.
    async fn annotate(&self, jobs: &mut [JobRecord], queue: bool) -> Result<(), RegistryError> {
        let now = Utc::now();
        for job in jobs.iter_mut().filter(|j| !j.status.is_final()) {
            // Queue and run times as of now while it waits or runs.
            job.stamp(now);
        }
        if !queue {
            return Ok(());
        }
        for job in jobs.iter_mut().filter(|j| j.status == JobStatus::Queued) {
            // Counted by the store, never read: the work does not grow with the queue.
            let ahead = mongo::count(
                &self.jobs(),
                doc! {
                    "status": "queued",
                    "driver": job.driver.as_str(),
                    "created_ms": { "$lt": job.created_at.timestamp_millis() },
                },
            )
            .await?;
            job.queue_position = Some(ahead + 1);
            job.waiting_reason = self.waiting_reason(job.driver);
        }
        Ok(())
    }

    /// Why a job for `driver` would wait now, or `None` when a node could take it.
    fn waiting_reason(&self, driver: JobDriver) -> Option<WaitingReason> {
        let settled = self.registry.is_settled();
        self.registry.view().waiting_reason(driver, settled)
    }

    /// `jobs.cancel`: someone else's job is `not_found`, a job that is over a `conflict`.
    pub async fn cancel(&self, r: JobRef) -> Result<JobRecord, RegistryError> {
        let t = Transition::CancelRequested { user_id: r.user_id };
        match self.transition(&r.job_id, &t).await? {
            Outcome::Changed(job, effects) => Ok(self.carry_out(job, effects).await.0),
            Outcome::Refused(_, Refused::NotOwner) => {
                Err(RegistryError::NotFound(format!("no job {}", r.job_id)))
            }
            Outcome::Refused(job, Refused::Final(status)) => Err(RegistryError::Conflict(format!(
                "job {} is already {}",
                job.job_id,
                status.as_str()
            ))),
            Outcome::Refused(job, _) => Ok(job),
        }
    }

    /// `jobs.fail`: the api withdraws a job it could not queue, or one no node could take (only
    /// while it is still queued: one a node took meanwhile goes on).
    pub async fn fail(&self, f: FailJob) -> Result<JobRecord, RegistryError> {
        let t = Transition::Withdrawn {
            error: f.error,
            kind: f.kind,
        };
        self.end(&f.job_id, &t).await
    }

    /// Fail and refund a job whose message ran out of deliveries.
    pub async fn exhausted(&self, job_id: &str) -> Result<JobRecord, RegistryError> {
        let t = Transition::Exhausted {
            deliveries: jobs::MAX_DELIVER,
        };
        self.end(job_id, &t).await
    }

    /// Apply an ending transition of the registry's own; a refused one answers the job as it is.
    async fn end(&self, job_id: &str, t: &Transition) -> Result<JobRecord, RegistryError> {
        match self.transition(job_id, t).await? {
            Outcome::Changed(job, effects) => Ok(self.carry_out(job, effects).await.0),
            Outcome::Refused(job, _) => Ok(job),
        }
    }

    /// What follows from a job being over ([`lifecycle::settlement`]), each step repeatable so it
    /// can be done again whenever the job is seen again (a redelivered event): a completed job's
    /// model version is listed, its node credited and other deliveries' weights removed; a
    /// charge due back is refunded. Then the record is announced on [`jobs::settled_subject`].
    /// Returns the record as it ends up, and whether every step is done.
    async fn settle(&self, mut job: JobRecord) -> (JobRecord, bool) {
        let Some(plan) = lifecycle::settlement(&job) else {
            return (job, true);
        };
        let mut done = true;
        if let Some(model) = &plan.list {
            if let Err(e) = self.models.record(&job, model).await {
                tracing::error!(job_id = job.job_id, error = %e, "recording the model version failed; retried");
                done = false;
            }
        }
        if plan.refund {
            job = self.refund(job).await;
            done &= job.refunded;
        }
        self.announce_settled(&job).await;
        (job, done)
    }

    /// Settle every job that is over with its refund still due (the reconciler's round): each is
    /// refunded once (auth keys refunds by job) and announced. Returns how many were refunded.
    pub async fn settle_refunds_due(&self) -> Result<usize, RegistryError> {
        let docs: Vec<JobDoc> = self
            .jobs()
            .find(doc! {
                "status": { "$in": ["failed", "cancelled"] },
                "refund_due": true,
                "refunded": { "$ne": true },
                "tokens_charged": { "$gt": 0_i64 },
            })
            .limit(RECONCILE_BATCH)
            .await?
            .try_collect()
            .await?;
        let mut refunded = 0;
        for d in docs {
            if lifecycle::settlement(&d.record).is_some_and(|s| s.refund) {
                let (job, _) = self.settle(d.record).await;
                if job.refunded {
                    refunded += 1;
                    gantry_runtime::metrics::REGISTRY_RECONCILED
                        .with_label_values(&["refund"])
                        .inc();
                    tracing::info!(job_id = job.job_id, "reconciler refunded a job");
                }
            }
        }
        Ok(refunded)
    }

    /// Settle jobs nothing will ever finish (the reconciler's round): a queued or running job
    /// untouched for `grace`, held by no connected node, whose queue message is gone (the api
    /// stopped between recording and queueing it) or was delivered for the last time (its
    /// max-deliveries advisory was missed). Each fails as exhausted and is refunded. Returns how
    /// many.
    pub async fn settle_lost_jobs(
        &self,
        grace: std::time::Duration,
    ) -> Result<usize, RegistryError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
        let docs: Vec<JobDoc> = self
            .jobs()
            .find(doc! { "status": { "$in": ["queued", "running"] } })
            .limit(RECONCILE_BATCH)
            .await?
            .try_collect()
            .await?;
        let candidates: Vec<JobRecord> = {
            let view = self.registry.view();
            docs.into_iter()
                .map(|d| d.record)
                .filter(|j| j.updated_at < cutoff)
                .filter(|j| {
                    !j.node_id
                        .as_deref()
                        .and_then(|n| view.node(n))
                        .is_some_and(|n| n.connected)
                })
                .collect()
        };
        if candidates.is_empty() {
            return Ok(0);
        }
        let Some(queued) = self.queued_job_ids().await? else {
            return Ok(0);
        };
        let mut settled = 0;
        for job in candidates {
            let why = if !queued.contains(&job.job_id) {
                "its queue message is gone"
            } else if job.delivery >= jobs::MAX_DELIVER as u64 {
                "its last delivery ended with its node"
            } else {
                continue;
            };
            let t = Transition::Exhausted {
                deliveries: jobs::MAX_DELIVER,
            };
            let ended = self.end(&job.job_id, &t).await?;
            if ended.status.is_final() {
                settled += 1;
                gantry_runtime::metrics::REGISTRY_RECONCILED
                    .with_label_values(&["lost"])
                    .inc();
                tracing::warn!(
                    job_id = job.job_id,
                    reason = why,
                    "reconciler failed a job nothing would finish, and refunded it"
                );
            }
        }
        Ok(settled)
    }

    /// Remove dataset snapshots that no queued or running job uses and that were last stored
    /// longer than `retention` ago (the reconciler's round). The api stores a snapshot again
    /// when it is half that old, so a new job never names one about to go. Returns how many.
    pub async fn remove_unused_datasets(
        &self,
        retention: std::time::Duration,
    ) -> Result<usize, RegistryError> {
        const MAX_LISTED: usize = 100_000;
        let unavailable = |e: &dyn std::fmt::Display| {
            RegistryError::Unavailable(format!("reading the dataset store: {e}"))
        };
        let js = jetstream::new(self.registry.client().clone());
        let store = gantry_runtime::jetstream::bucket_store(&js, jobs::DATASETS_BUCKET)
            .await
            .map_err(|e| unavailable(&e))?;
        let cutoff = Utc::now().timestamp() - retention.as_secs() as i64;
        let old_enough = |info: &jetstream::object_store::ObjectInfo| {
            !info.deleted && info.modified.is_some_and(|m| m.unix_timestamp() < cutoff)
        };
        let mut old = Vec::new();
        let mut listing = store.list().await.map_err(|e| unavailable(&e))?;
        while let Some(info) = futures::StreamExt::next(&mut listing).await {
            let info = info.map_err(|e| unavailable(&e))?;
            if old_enough(&info) {
                old.push(info.name);
            }
            if old.len() >= MAX_LISTED {
                break;
            }
        }
        if old.is_empty() {
            return Ok(0);
        }
        let docs: Vec<JobDoc> = self
            .jobs()
            .find(doc! { "status": { "$in": ["queued", "running"] } })
            .await?
            .try_collect()
            .await?;
        let in_use: std::collections::HashSet<String> = docs
            .into_iter()
            .map(|d| jobs::dataset_key(&d.record.dataset_hash))
            .collect();
        let mut removed = 0;
        for name in old.into_iter().filter(|n| !in_use.contains(n)) {
            // Looked at again just before: stored anew meanwhile, it stays.
            if !store.info(&name).await.is_ok_and(|i| old_enough(&i)) {
                continue;
            }
            match store.delete(&name).await {
                Ok(()) => {
                    removed += 1;
                    gantry_runtime::metrics::REGISTRY_RECONCILED
                        .with_label_values(&["dataset"])
                        .inc();
                    tracing::info!(key = name, "removed a dataset snapshot no job uses");
                }
                Err(e) => {
                    tracing::warn!(key = name, error = %e, "could not remove a dataset snapshot")
                }
            }
        }
        Ok(removed)
    }

    /// Refund charges no job was recorded for (the api stopped between charging and recording;
    /// it never records a job later than half the grace after its charge): charges made in
    /// the day before `grace` ago whose key names no job. Each is refunded once (auth keys
    /// refunds by the charge's key). Returns how many.
    pub async fn refund_orphan_charges(
        &self,
        grace: std::time::Duration,
    ) -> Result<usize, RegistryError> {
        let until_ms = Utc::now().timestamp_millis() - grace.as_millis() as i64;
        let query = UnsettledQuery {
            since_ms: until_ms - 86_400_000,
            until_ms,
            limit: 1000,
        };
        let unsettled: UnsettledCharges = nats::request(
            self.registry.client(),
            subjects::auth(subjects::auth::CREDITS_UNSETTLED),
            &query,
        )
        .await
        .map_err(|e| RegistryError::Unavailable(format!("listing charges: {e}")))?;
        if unsettled.charges.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&str> = unsettled.charges.iter().map(|c| c.key.as_str()).collect();
        let known: std::collections::HashSet<String> = self
            .jobs()
            .find(doc! { "_id": { "$in": &keys } })
            .await?
            .try_collect::<Vec<JobDoc>>()
            .await?
            .into_iter()
            .map(|d| d.id)
            .collect();
        let mut refunded = 0;
        for c in unsettled
            .charges
            .into_iter()
            .filter(|c| !known.contains(&c.key))
            // An analysis answered at once settles its own charge; no job is ever recorded.
            .filter(|c| {
                !c.key
                    .starts_with(gantry_contracts::analysis::ANSWERED_CHARGE_PREFIX)
            })
        {
            let r: Result<CreditResult, _> = nats::request(
                self.registry.client(),
                subjects::auth(subjects::auth::CREDITS_REFUND),
                &CreditChange {
                    user_id: c.user_id,
                    amount: c.amount,
                    key: c.key.clone(),
                    reason: "no job was recorded for this charge".into(),
                },
            )
            .await;
            match r {
                Ok(_) => {
                    refunded += 1;
                    gantry_runtime::metrics::REGISTRY_RECONCILED
                        .with_label_values(&["charge"])
                        .inc();
                    tracing::warn!(
                        key = c.key,
                        user_id = c.user_id,
                        "reconciler refunded a charge no job was recorded for"
                    );
                }
                Err(e) => {
                    tracing::warn!(key = c.key, error = %e, "refunding a charge with no job failed; tried again next round")
                }
            }
        }
        Ok(refunded)
    }

    /// The job ids of every message in the job queue; `None` when the queue is too long to scan
    /// in one round (the next round tries again).
    async fn queued_job_ids(
        &self,
    ) -> Result<Option<std::collections::HashSet<String>>, RegistryError> {
        const MAX_SCAN: u64 = 100_000;
        let unavailable = |e: &dyn std::fmt::Display| {
            RegistryError::Unavailable(format!("reading the job queue: {e}"))
        };
        let js = jetstream::new(self.registry.client().clone());
        let mut stream = js
            .get_stream(jobs::JOBS_STREAM)
            .await
            .map_err(|e| unavailable(&e))?;
        let state = stream
            .info()
            .await
            .map_err(|e| unavailable(&e))?
            .state
            .clone();
        if state.messages > MAX_SCAN {
            tracing::warn!(
                messages = state.messages,
                "the job queue is too long for the reconciler to scan"
            );
            return Ok(None);
        }
        let mut ids = std::collections::HashSet::new();
        if state.messages == 0 {
            return Ok(Some(ids));
        }
        for seq in state.first_sequence..=state.last_sequence {
            match stream.get_raw_message(seq).await {
                Ok(msg) => {
                    if let Ok(job) = serde_json::from_slice::<QueuedJob>(&msg.payload) {
                        ids.insert(job.job_id);
                    }
                }
                // Acked (removed) or deleted: nothing there.
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(unavailable(&e)),
            }
        }
        Ok(Some(ids))
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
        let r: Result<CreditResult, _> = nats::request(
            self.registry.client(),
            subjects::auth(subjects::auth::CREDITS_REFUND),
            &CreditChange {
                user_id: job.user_id,
                amount: job.tokens_charged,
                key: job.job_id.clone(),
                reason: lifecycle::refund_reason(&job),
            },
        )
        .await;
        if let Err(e) = r {
            tracing::error!(job_id = job.job_id, error = %e, "refund failed; it is retried with the job's next event");
            return job;
        }
        match self.transition(&job.job_id, &Transition::Refunded).await {
            Ok(Outcome::Changed(j, _)) | Ok(Outcome::Refused(j, _)) => j,
            Err(e) => {
                tracing::error!(job_id = job.job_id, error = %e, "refunded, but marking the job refunded failed");
                job
            }
        }
    }

    async fn publish_event(&self, job_id: &str, kind: JobEventKind) {
        self.events
            .publish_or_warn(&EventPublisher::event(job_id, 0, kind))
            .await;
    }

    /// Apply one event from a trainer. Events of an older delivery (a node that lost its lease)
    /// change nothing; an event for a job that is over repeats what follows from its end
    /// ([`Self::settle`]), which finishes any step that failed the first time.
    pub async fn apply(&self, sender: &str, event: JobEvent) -> Result<(), RegistryError> {
        self.apply_at(sender, event, None).await
    }

    /// [`Self::apply`] for the event at `seq` of the event stream.
    async fn apply_at(
        &self,
        sender: &str,
        event: JobEvent,
        seq: Option<u64>,
    ) -> Result<(), RegistryError> {
        let Some(current) = self.load(&event.job_id).await? else {
            return Ok(());
        };
        // Who sent it (the server checked the subject against the sender's permissions) must
        // be who may: the registry for its own events, else the node holding the job.
        if let Err(refused) = lifecycle::check_sender(&current, &event, sender) {
            if let Refused::NotStarted(delivery) = refused {
                return Err(waits(&event.job_id, delivery));
            }
            tracing::warn!(
                job_id = current.job_id,
                node_id = sender,
                delivery = event.delivery,
                event = event.kind.name(),
                ?refused,
                "refused a job event from a node that may not send it"
            );
            return Ok(());
        }
        // An analysis job's results are stored beside its record; its end is checked against them.
        let event = match event.kind {
            JobEventKind::Results { first, results } => {
                return self
                    .store_results(&current, event.delivery, first, results)
                    .await;
            }
            JobEventKind::Analyzed { images } => {
                match self.check_analyzed(&current, images).await? {
                    Ok(()) => JobEvent {
                        kind: JobEventKind::Analyzed { images },
                        ..event
                    },
                    Err(why) => {
                        tracing::warn!(
                            job_id = current.job_id,
                            node_id = sender,
                            reason = why,
                            "refused an analysis that is not whole"
                        );
                        JobEvent {
                            kind: JobEventKind::Failed {
                                error: format!("the node ended the analysis early: {why}"),
                                kind: FailureKind::Crash,
                            },
                            ..event
                        }
                    }
                }
            }
            _ => event,
        };
        // Weights a refused completion uploaded: the key is derived from the job and delivery,
        // never taken from the event, so a forged event cannot name another object.
        let late_weights = match &event.kind {
            JobEventKind::Completed { .. } => {
                lifecycle::delivery_weights(&event.job_id, event.delivery)
            }
            _ => None,
        };
        match lifecycle::check(&current, &Transition::from_event(&event, None)) {
            Ok(()) => {}
            Err(Refused::NotStarted(delivery)) => return Err(waits(&event.job_id, delivery)),
            Err(refused) => {
                tracing::info!(
                    job_id = current.job_id,
                    delivery = event.delivery,
                    ?refused,
                    "event changes nothing"
                );
                // A stale delivery's weights, or a finished job's other ones, never count; a
                // refused event of the current delivery leaves that delivery's upload alone.
                if matches!(refused, Refused::Stale { .. } | Refused::Final(_)) {
                    self.models
                        .drop_weights(late_weights, current.model.as_ref())
                        .await;
                }
                return match refused {
                    Refused::Final(_) => self.settle_or_retry(current).await,
                    _ => Ok(()),
                };
            }
        }
        // A completion is listed under its version before the job reads completed, so whoever
        // sees the job completed can list and download its model.
        // Its weights must be what the node reports (digest and size) before they are copied
        // where only the registry writes and listed; if not, this delivery failed (the job is
        // refunded) and the upload goes.
        if let JobEventKind::Completed { model } = &event.kind {
            if let Err(why) = self.models.take_weights(model).await? {
                tracing::warn!(
                    job_id = current.job_id,
                    node_id = sender,
                    delivery = event.delivery,
                    reason = why,
                    "refused a completion whose weights do not match"
                );
                let failed = Transition::Failed {
                    delivery: event.delivery,
                    error: format!("the uploaded weights do not match the completion: {why}"),
                    kind: FailureKind::Crash,
                };
                self.models.drop_weights(late_weights, None).await;
                return match self.transition(&event.job_id, &failed).await {
                    Ok(Outcome::Changed(job, effects)) => {
                        match self.carry_out(job, effects).await {
                            (_, true) => Ok(()),
                            (job, false) => Err(RegistryError::Unavailable(format!(
                                "job {} is not settled yet",
                                job.job_id
                            ))),
                        }
                    }
                    Ok(Outcome::Refused(..)) | Err(RegistryError::NotFound(_)) => Ok(()),
                    Err(e) => Err(e),
                };
            }
        }
        let listed = match &event.kind {
            JobEventKind::Completed { model } => {
                Some(self.models.list_version(&current, model).await?)
            }
            _ => None,
        };
        let t = Transition::from_event(&event, listed.clone());
        match self
            .transition_at(&event.job_id, &t, seq, Some(event.at))
            .await
        {
            Err(RegistryError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(Outcome::Changed(job, effects)) => match self.carry_out(job, effects).await {
                (_, true) => Ok(()),
                (job, false) => Err(RegistryError::Unavailable(format!(
                    "job {} is not settled yet",
                    job.job_id
                ))),
            },
            // The job ended another way meanwhile (a cancel won): the version listed for this
            // completion goes again, and so do its weights.
            Ok(Outcome::Refused(job, _)) => {
                if let Some(model) = listed.filter(|_| lifecycle::completion_lost(&job)) {
                    self.models.withdraw(&model).await?;
                }
                Ok(())
            }
        }
    }

    /// A job that just ended with its trainer's event at `end` (a stream sequence) keeps the
    /// last progress published before it. Progress published after it may have been applied
    /// first (a replica killed while holding the end: the end came back later); then the last
    /// progress of the job's delivery from its node before `end` is read back from the event
    /// stream. Returns the progress sequence the job keeps.
    async fn keep_progress_before(
        &self,
        job: &mut JobRecord,
        progress_seq: u64,
        end: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let Some(end) = end.filter(|end| progress_seq > *end) else {
            return Ok(progress_seq);
        };
        let kept = self
            .holder_events(job, end)
            .await?
            .into_iter()
            .rfind(|(_, event)| matches!(event.kind, JobEventKind::Progress { .. }))
            .map(|(seq, event)| (seq, jobs::JobProgress::of(&event)));
        tracing::info!(
            job_id = job.job_id,
            "progress published after the job's end was applied first; the last one before it is kept"
        );
        let (seq, progress) = kept.unwrap_or((0, None));
        job.progress = progress;
        Ok(seq)
    }

    /// The events of `job`'s current delivery from the node holding it, as stored in the event
    /// stream before sequence `before`, in stream order, each with its sequence.
    pub(crate) async fn holder_events(
        &self,
        job: &JobRecord,
        before: u64,
    ) -> Result<Vec<(u64, JobEvent)>, RegistryError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            RegistryError::Unavailable(format!("reading the job's events: {e}"))
        };
        let js = jetstream::new(self.registry.client().clone());
        let stream = js
            .get_stream(jobs::EVENTS_STREAM)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut found = Vec::new();
        let mut from = 1;
        while from < before {
            let msg = match stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(jobs::job_events(&job.job_id))
                .send()
                .await
            {
                Ok(msg) => msg,
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    break
                }
                Err(e) => return Err(unavailable(&e)),
            };
            if msg.sequence >= before {
                break;
            }
            from = msg.sequence + 1;
            let Ok(event) = serde_json::from_slice::<JobEvent>(&msg.payload) else {
                continue;
            };
            if event.delivery == job.delivery
                && jobs::event_sender(&msg.subject) == job.node_id.as_deref()
            {
                found.push((msg.sequence, event));
            }
        }
        Ok(found)
    }

    /// Whether the store answers.
    pub async fn store_reachable(&self) -> bool {
        gantry_runtime::mongo::ping(self.registry.store().database())
            .await
            .is_ok()
    }

    /// Apply one job's events from a batch, in their stream order; one result per event (an
    /// error: it comes back). Started, progress, checkpoint, failed and cancelled events fold
    /// into the record read once and are written once (conditionally, decided again on a fresh
    /// read when another writer got there first); a completion, which lists a version first, and
    /// an analysis's results and end go through [`Self::apply`] on their own. Once an event of the job fails, the ones after
    /// it come back too, so a replica never runs ahead of what it could not apply.
    pub async fn apply_events(
        &self,
        job_id: &str,
        events: &[Delivered],
    ) -> Vec<Result<(), RegistryError>> {
        let mut results: Vec<Result<(), RegistryError>> = Vec::with_capacity(events.len());
        let mut start = 0;
        while start < events.len() {
            // A completion lists a version first; an analysis's results and end touch the results
            // collection: each on its own.
            let completion = |d: &Delivered| {
                matches!(
                    d.event.kind,
                    JobEventKind::Completed { .. }
                        | JobEventKind::Results { .. }
                        | JobEventKind::Analyzed { .. }
                )
            };
            let end = if completion(&events[start]) {
                start + 1
            } else {
                events[start..]
                    .iter()
                    .position(completion)
                    .map_or(events.len(), |i| start + i)
            };
            let segment = &events[start..end];
            let outcome = if completion(&segment[0]) {
                let d = &segment[0];
                vec![self.apply_at(&d.sender, d.event.clone(), Some(d.seq)).await]
            } else {
                match self.fold(job_id, segment).await {
                    Ok(each) => each,
                    Err(e) => segment
                        .iter()
                        .map(|_| Err(RegistryError::Unavailable(e.to_string())))
                        .collect(),
                }
            };
            let failed = outcome.iter().any(Result::is_err);
            results.extend(outcome);
            start = end;
            if failed {
                break;
            }
        }
        while results.len() < events.len() {
            results.push(Err(RegistryError::Unavailable(format!(
                "job {job_id}: an earlier event of the job comes back first"
            ))));
        }
        results
    }

    /// Fold `events` (none a completion) into the job's record and write it once; see
    /// [`Self::apply_events`].
    async fn fold(
        &self,
        job_id: &str,
        events: &[Delivered],
    ) -> Result<Vec<Result<(), RegistryError>>, RegistryError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(doc) = self.jobs().find_one(doc! { "_id": job_id }).await? else {
                // Not a job the registry recorded: nothing to change.
                return Ok(events.iter().map(|_| Ok(())).collect());
            };
            let mut job = doc.record.clone();
            let (mut progress_seq, mut end_seq) = (doc.progress_seq, doc.end_seq);
            let mut effects = Effects::default();
            let mut changed = false;
            let mut over = false;
            let mut results = Vec::with_capacity(events.len());
            for d in events {
                let event = &d.event;
                if let Err(refused) = lifecycle::check_sender(&job, event, &d.sender) {
                    if let Refused::NotStarted(delivery) = refused {
                        results.push(Err(waits(job_id, delivery)));
                    } else {
                        tracing::warn!(
                            job_id,
                            node_id = d.sender,
                            delivery = event.delivery,
                            event = event.kind.name(),
                            ?refused,
                            "refused a job event from a node that may not send it"
                        );
                        results.push(Ok(()));
                    }
                    continue;
                }
                let t = Transition::from_event(event, None);
                if let Transition::Progress { delivery, progress } = &t {
                    if d.seq <= progress_seq {
                        // Older than the progress the job holds (or the same, again).
                        results.push(Ok(()));
                        continue;
                    }
                    // Published before the event that ended the job: its figures still count.
                    if job.status.is_final()
                        && end_seq.is_some_and(|end| d.seq < end)
                        && *delivery == job.delivery
                    {
                        job.progress = progress.clone();
                        progress_seq = d.seq;
                        changed = true;
                        results.push(Ok(()));
                        continue;
                    }
                }
                match lifecycle::apply(&mut job, &t) {
                    Ok(e) => {
                        job.mark_times(event.at, Utc::now());
                        if matches!(t, Transition::Progress { .. }) {
                            progress_seq = d.seq;
                        }
                        if e.ended {
                            end_seq = Some(d.seq);
                        }
                        effects.ended |= e.ended;
                        effects.stop_trainers |= e.stop_trainers;
                        effects.first_start |= e.first_start;
                        effects.settle_again |= e.settle_again;
                        effects.publish = e.publish.or(effects.publish.take());
                        changed = true;
                        results.push(Ok(()));
                    }
                    Err(Refused::NotStarted(delivery)) => {
                        results.push(Err(waits(job_id, delivery)))
                    }
                    Err(refused) => {
                        tracing::info!(
                            job_id,
                            delivery = event.delivery,
                            ?refused,
                            "event changes nothing"
                        );
                        over |= matches!(refused, Refused::Final(_));
                        results.push(Ok(()));
                    }
                }
            }
            if end_seq != doc.end_seq {
                progress_seq = self
                    .keep_progress_before(&mut job, progress_seq, end_seq)
                    .await?;
            }
            if !changed {
                // An event of a job that is over repeats its settling, which finishes any step
                // that failed the first time.
                if over {
                    self.settle_or_retry(doc.record).await?;
                }
                return Ok(results);
            }
            job.updated_at = Utc::now();
            job.stamp(job.updated_at);
            job.queue_position = None;
            job.waiting_reason = None;
            let next = JobDoc {
                id: doc.id.clone(),
                created_ms: doc.created_ms,
                rev: doc.rev + 1,
                progress_seq,
                end_seq,
                record: job.clone(),
            };
            let filter = if doc.rev == 0 {
                doc! { "_id": &doc.id, "rev": { "$exists": false } }
            } else {
                doc! { "_id": &doc.id, "rev": doc.rev }
            };
            if self.jobs().replace_one(filter, &next).await?.matched_count != 1 {
                tracing::debug!(job_id, "job changed concurrently; deciding again");
                continue;
            }
            return match self.carry_out(job, effects).await {
                (_, true) => Ok(results),
                (job, false) => Err(RegistryError::Unavailable(format!(
                    "job {} is not settled yet",
                    job.job_id
                ))),
            };
        }
        Err(RegistryError::Unavailable(format!(
            "job {job_id} keeps changing concurrently; try again"
        )))
    }
}

/// The error an event that waits for its delivery's start comes back with.
fn waits(job_id: &str, delivery: u64) -> RegistryError {
    RegistryError::Unavailable(format!(
        "job {job_id}: the event waits for the start of delivery {delivery}"
    ))
}
