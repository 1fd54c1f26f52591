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

/// Whether `store` holds `key` and it is young enough that the retention sweep is not about to
/// remove it: a job never names a snapshot about to go.
pub async fn fresh(
    store: &async_nats::jetstream::object_store::ObjectStore,
    key: &str,
    retention: std::time::Duration,
) -> bool {
    match store.info(key).await {
        Ok(info) if !info.deleted => info.modified.is_some_and(|m| {
            let age = chrono::Utc::now().timestamp() - m.unix_timestamp();
            age >= 0 && (age as u64) < retention.as_secs() / 2
        }),
        _ => false,
    }
}

/// Store the archive at `archive` as the snapshot `hash`, unless it is stored already and fresh:
/// stored again when missing, or old enough that the retention sweep may be about to remove it,
/// so a job never names a snapshot about to go. `Err` says, for the user, what failed.
pub async fn store_snapshot(state: &AppState, hash: &str, archive: &Path) -> Result<(), String> {
    let js = async_nats::jetstream::new(state.nats.clone());
    let key = jobs::dataset_key(hash);
    let retention = state.limits.dataset_retention;
    let stored = async {
        let store = gantry_runtime::jetstream::bucket_store(&js, jobs::DATASETS_BUCKET).await?;
        if !fresh(&store, &key, retention).await {
            let mut file = tokio::fs::File::open(archive).await?;
            gantry_runtime::jetstream::put_object(&js, jobs::DATASETS_BUCKET, &key, &mut file)
                .await?;
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
