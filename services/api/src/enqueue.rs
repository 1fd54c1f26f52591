//! Queueing a job, for training and analysis alike: its snapshot stored in the datasets bucket
//! (a training dataset or an analysis's images, packed into one deterministic archive named by
//! its content, [`gantry_runtime::dataset::pack`]), once per hash; then its message published on
//! the job queue with its id as `Nats-Msg-Id`.

use std::path::Path;

use gantry_contracts::auth::{CreditChange, CreditResult};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::jobs::{self, FailJob, FailureKind, JobRecord};
use gantry_contracts::subjects;
use gantry_runtime::nats;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::state::AppState;

/// A job that could not be queued after its charge: whose, how much, and whether it was recorded.
pub struct Unqueued<'a> {
    /// Who was charged.
    pub user_id: i64,
    /// The job (and the charge's key).
    pub job_id: &'a str,
    /// Tokens charged (0: nothing to give back).
    pub charged: i64,
    /// The registry holds its record.
    pub recorded: bool,
}

/// Fail a job that could not be queued (when recorded) and give its charge back, then the 503
/// to answer, saying `what` failed. The registry's refund of the failed job and this one share
/// the job id as their key, so the charge comes back once.
pub async fn abort(state: &AppState, job: Unqueued<'_>, what: String) -> ApiError {
    if job.recorded {
        let _: Result<JobRecord, _> = nats::request(
            &state.nats,
            subjects::registry(jobs::subjects::JOBS_FAIL),
            &FailJob {
                job_id: job.job_id.to_owned(),
                error: what.clone(),
                kind: FailureKind::System,
            },
        )
        .await;
    }
    if job.charged > 0 {
        let r: Result<CreditResult, _> = nats::request(
            &state.nats,
            subjects::auth(subjects::auth::CREDITS_REFUND),
            &CreditChange {
                user_id: job.user_id,
                amount: job.charged,
                key: job.job_id.to_owned(),
                reason: format!("job {} could not be queued", job.job_id),
            },
        )
        .await;
        if let Err(e) = r {
            tracing::error!(job_id = job.job_id, error = %e, "refund failed; the ledger key lets a retry complete it");
        }
    }
    ApiError::new(
        ErrorCode::Unavailable,
        format!("{what}; the job was not queued and any charge was refunded"),
    )
}

/// Publish the job message `payload` of `job_id` on `subject` of the job queue and wait for the
/// stream to store it. The producer span: the node's job span is its child, through the
/// message's `traceparent`, on whichever node and delivery takes it.
pub async fn publish(
    state: &AppState,
    subject: String,
    job_id: &str,
    payload: Vec<u8>,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(state.nats.clone());
    let span = tracing::info_span!(
        "jobs.publish",
        otel.name = format!("send {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.message.id = %job_id,
    );
    async {
        let mut headers = nats::traced_headers();
        headers.insert("Nats-Msg-Id", job_id);
        js.publish_with_headers(subject.clone(), headers, payload.into())
            .await?
            .await?;
        anyhow::Ok(())
    }
    .instrument(span)
    .await
}

/// Dataset snapshots lately seen stored and fresh, each with the time (epoch seconds) until which
/// it is known to stay so: a submission naming one again does not ask the store.
#[derive(Default)]
pub struct StoredSnapshots {
    until: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// How long a snapshot seen stored is believed without asking (well inside the retention's half).
const STORED_BELIEVED_SECS: i64 = 60;
/// Most snapshots remembered at once.
const STORED_REMEMBERED: usize = 4096;

impl StoredSnapshots {
    fn known(&self, key: &str) -> bool {
        let until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until
            .get(key)
            .is_some_and(|&t| t > chrono::Utc::now().timestamp())
    }

    fn note(&self, key: &str, fresh_until: i64) {
        let now = chrono::Utc::now().timestamp();
        let t = fresh_until.min(now + STORED_BELIEVED_SECS);
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if until.len() >= STORED_REMEMBERED {
            until.retain(|_, &mut t| t > now);
            if until.len() >= STORED_REMEMBERED {
                until.clear();
            }
        }
        until.insert(key.to_owned(), t);
    }
}

/// Half the dataset retention, in seconds: a snapshot younger than this is not about to go.
fn half_retention(state: &AppState) -> i64 {
    (state.limits.dataset_retention.as_secs() / 2) as i64
}

/// Whether the store holds `key` and it is young enough that the retention sweep is not about to
/// remove it: a job never names a snapshot about to go. Remembered for a short while in `state`
/// (its callers look there first, before they open the store).
async fn fresh(
    state: &AppState,
    store: &async_nats::jetstream::object_store::ObjectStore,
    key: &str,
) -> bool {
    let half = half_retention(state);
    match store.info(key).await {
        Ok(info) if !info.deleted => {
            let Some(modified) = info.modified.map(|m| m.unix_timestamp()) else {
                return false;
            };
            let age = chrono::Utc::now().timestamp() - modified;
            let fresh = age >= 0 && age < half;
            if fresh {
                state.stored.note(key, modified + half);
            }
            fresh
        }
        _ => false,
    }
}

/// Whether the snapshot `hash` is stored and fresh ([`fresh`]); false when it cannot tell.
pub async fn snapshot_stored(state: &AppState, hash: &str) -> bool {
    let key = jobs::dataset_key(hash);
    if state.stored.known(&key) {
        return true;
    }
    let js = async_nats::jetstream::new(state.nats.clone());
    match gantry_runtime::jetstream::bucket_store(&js, jobs::DATASETS_BUCKET).await {
        Ok(store) => fresh(state, &store, &key).await,
        Err(_) => false,
    }
}

/// Store the archive at `archive` as the snapshot `hash`, unless it is stored already and fresh:
/// stored again when missing, or old enough that the retention sweep may be about to remove it,
/// so a job never names a snapshot about to go. `Err` says, for the user, what failed.
pub async fn store_snapshot(state: &AppState, hash: &str, archive: &Path) -> Result<(), String> {
    let js = async_nats::jetstream::new(state.nats.clone());
    let key = jobs::dataset_key(hash);
    let stored = async {
        if state.stored.known(&key) {
            return anyhow::Ok(());
        }
        let store = gantry_runtime::jetstream::bucket_store(&js, jobs::DATASETS_BUCKET).await?;
        if !fresh(state, &store, &key).await {
            let mut file = tokio::fs::File::open(archive).await?;
            gantry_runtime::jetstream::put_object(&js, jobs::DATASETS_BUCKET, &key, &mut file)
                .await?;
            let until = chrono::Utc::now().timestamp() + half_retention(state);
            state.stored.note(&key, until);
        }
        anyhow::Ok(())
    }
    .await;
    stored.map_err(|e| {
        let e = format!("{e:#}");
        tracing::error!(error = e, "storing the dataset snapshot failed");
        if e.contains("maximum bytes") {
            "the dataset store is full (GANTRY_DATASETS_MAX_GB)".to_owned()
        } else {
            "the dataset could not be stored".to_owned()
        }
    })
}
