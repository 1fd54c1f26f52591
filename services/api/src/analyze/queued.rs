//! An analysis too large to answer at once, queued as a job: its images checked (the training
//! rules, before anything is charged) and packed into a snapshot, the user charged per image
//! (keyed by the job id, so the registry refunds it if the job fails), the snapshot stored, the
//! job recorded (kind `analyze`) and its [`AnalyzeJob`] published on
//! `gantry.jobs.analyze.<driver>`. A failure after the charge fails the job and refunds it.

use std::path::PathBuf;

use gantry_contracts::analysis::{input_entry, AnalyzeJob};
use gantry_contracts::auth::{CreditChange, CreditResult, Principal, Role};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::jobs::{self, JobDriver, JobRecord, ModelVersion};
use gantry_contracts::subjects;
use gantry_runtime::dataset::{self, DatasetFile};
use gantry_runtime::nats;
use gantry_training::dataset::{check_open_file, DatasetLimits};
use poem_openapi::payload::Json;

use super::{AnalyzeApi, AnalyzeBody, AnalyzeQueued, AnalyzeResponse};
use crate::error::{ApiError, ApiResult};

/// The images' snapshot: its hash and the archive.
struct Packed {
    hash: String,
    archive: tempfile::NamedTempFile,
}

/// Check each image's header (the training rules: an input that is not an image is refused by
/// name) and pack them all, at most `max_bytes`, each under [`input_entry`] of its path.
fn pack(found: Vec<(String, PathBuf)>, max_bytes: u64) -> ApiResult<Packed> {
    let limits = DatasetLimits::default();
    let mut total = 0u64;
    let mut files = Vec::with_capacity(found.len());
    for (path, real) in found {
        let not_image =
            |why: String| ApiError::bad_request(format!("{path} is not an image: {why}"));
        let (mut file, seen) = dataset::open_plain(&real)
            .map_err(|e| not_image(format!("not a readable plain file ({e})")))?;
        check_open_file(&mut file, &path, &limits).map_err(|e| not_image(e.to_string()))?;
        total += seen.len;
        if total > max_bytes {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the input's images add up to more than {} MiB, the most one analysis takes \
                     (GANTRY_MAX_DATASET_GB); analyse it in parts",
                    max_bytes >> 20
                ),
            ));
        }
        files.push(DatasetFile {
            relative: input_entry(&path),
            source: real,
            seen,
        });
    }
    let archive = tempfile::NamedTempFile::new().map_err(ApiError::internal)?;
    let hash = dataset::pack(&mut files, archive.path())
        .map_err(|e| ApiError::bad_request(format!("the input could not be read: {e:#}")))?
        .into();
    Ok(Packed { hash, archive })
}

impl AnalyzeApi {
    /// Fail the job (if recorded) and refund its charge, then answer 503.
    async fn abort(
        &self,
        user_id: i64,
        job_id: &str,
        price: i64,
        recorded: bool,
        what: String,
    ) -> ApiError {
        let job = crate::enqueue::Unqueued {
            user_id,
            job_id,
            charged: price,
            recorded,
        };
        crate::enqueue::abort(&self.state, job, what).await
    }

    /// Queue the analysis of `found` (more images than are answered at once) as a job.
    pub(super) async fn queue(
        &self,
        p: Principal,
        body: AnalyzeBody,
        admin: bool,
        version: ModelVersion,
        label: String,
        found: Vec<(String, PathBuf)>,
    ) -> ApiResult<AnalyzeResponse> {
        let driver = match body.driver.as_deref() {
            None => JobDriver::Any,
            Some(d) => JobDriver::parse(d).ok_or_else(|| {
                ApiError::bad_request("driver must be one of cuda, rocm, cpu, any")
            })?,
        };
        let images = found.len();
        let max_bytes = self.state.limits.dataset_bytes;
        let packed = tokio::task::spawn_blocking(move || pack(found, max_bytes))
            .await
            .map_err(ApiError::internal)??;

        let job_id = uuid::Uuid::new_v4().simple().to_string();
        let price = if p.user.role == Role::Admin {
            0
        } else {
            self.state
                .limits
                .analyze_price
                .saturating_mul(images as i64)
        };
        let tokens_used = if price > 0 {
            let charged: CreditResult = nats::request(
                &self.state.nats,
                subjects::auth(subjects::auth::CREDITS_CHARGE),
                &CreditChange {
                    user_id: p.user.id,
                    amount: price,
                    key: job_id.clone(),
                    reason: format!("analysis job {job_id} of {images} images"),
                },
            )
            .await?;
            charged.tokens_used
        } else {
            0
        };

        if let Err(what) =
            crate::enqueue::store_snapshot(&self.state, &packed.hash, packed.archive.path()).await
        {
            return Err(self.abort(p.user.id, &job_id, price, false, what).await);
        }
        let job = AnalyzeJob {
            job_id: job_id.clone(),
            user_id: p.user.id,
            model: label.clone(),
            weights_key: version.weights_key.clone(),
            card: version.card.clone(),
            top_k: body.top_k,
            input_hash: packed.hash,
            images: images as u64,
            driver,
            submitted_at: chrono::Utc::now(),
        };
        let input_path = self
            .state
            .data_root
            .resolve(&body.input_path)
            .map_or_else(|_| body.input_path.clone(), |p| p.as_str().to_owned());
        let record = JobRecord::queued_analysis(&job, input_path, tokens_used);
        if let Err(e) = nats::request::<_, JobRecord>(
            &self.state.nats,
            subjects::registry(jobs::subjects::JOBS_CREATE),
            &record,
        )
        .await
        {
            tracing::error!(error = %e, "recording the analysis job failed");
            let what = "the analysis job could not be recorded".to_owned();
            return Err(self.abort(p.user.id, &job_id, price, false, what).await);
        }
        let payload = serde_json::to_vec(&job).map_err(ApiError::internal)?;
        let subject = jobs::analyze_subject(driver);
        if let Err(e) = crate::enqueue::publish(&self.state, subject, &job_id, payload).await {
            tracing::error!(
                error = format!("{e:#}"),
                "publishing the analysis job failed"
            );
            let what = "the job queue refused the analysis job".to_owned();
            return Err(self.abort(p.user.id, &job_id, price, true, what).await);
        }
        tracing::info!(job_id, images, model = label, "analysis job queued");
        let base = if admin {
            "/admin/api/jobs"
        } else {
            "/api/jobs"
        };
        Ok(AnalyzeResponse::Queued(Json(AnalyzeQueued {
            status_url: format!("{base}/{job_id}"),
            results_url: format!("{base}/{job_id}/results"),
            job_id,
            status: jobs::JobStatus::Queued,
            model: label,
            images: images as u64,
            tokens_used,
        })))
    }
}
