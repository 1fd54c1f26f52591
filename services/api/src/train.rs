//! `POST /admin/api/train` (and `POST /api/train` for users): validate, charge, snapshot the
//! dataset, record and publish the job, then hold the request until the job ends.

use std::time::Duration;

use futures::StreamExt;
use gantry_contracts::auth::{CreditChange, CreditResult, Principal, Role};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::jobs::{
    self, FailJob, FailureKind, JobDriver, JobRecord, JobRef, JobStatus, TrainJob, TrainParams,
    WaitingReason,
};
use gantry_contracts::subjects;
use gantry_runtime::nats;
use poem::Request;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::data_path::DataRoot;
use crate::error::{ApiError, ApiResult};
use crate::slots::Kind;
use crate::state::AppState;
use crate::tags::ApiTags;

mod hold;
mod retry;
mod snapshot;

use hold::{gantry_api_display, queued};
use retry::same_params;
use snapshot::prepare;
pub use snapshot::SnapshotCache;

/// What training costs a user, in credit tokens (admins pay nothing).
pub const TRAINING_COST: i64 = 100;

fn default_model() -> String {
    "MyCustomModel".into()
}

/// A training request.
#[derive(Debug, Clone, Object)]
pub struct TrainBody {
    /// Name for the trained model (default: "MyCustomModel")
    #[oai(
        default = "default_model",
        validator(
            min_length = 1,
            max_length = 100,
            pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
        )
    )]
    pub output_model: String,
    /// Description of the model
    #[oai(default, validator(max_length = 2000))]
    pub description: String,
    /// Path to the training data directory
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub train_path: String,
    /// Passes over the data (default: 10, 1 to 200)
    #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
    pub epochs: Option<u32>,
    /// Images per step (default: 32, 1 to 1024)
    #[oai(validator(minimum(value = "1"), maximum(value = "1024")))]
    pub batch_size: Option<u32>,
    /// Learning rate (default: 0.003, above 0 and at most 1)
    #[oai(validator(minimum(value = "0", exclusive), maximum(value = "1")))]
    pub learning_rate: Option<f64>,
    /// Images are resized to this square, 16 to 512 (default: chosen from the data, the median
    /// side of its images rounded to a multiple of 8 within 16 to 128; the model card says
    /// which)
    #[oai(validator(minimum(value = "16"), maximum(value = "512")))]
    pub image_size: Option<u32>,
    /// Share of each class held out for validation (default: 0.2, 0.05 to 0.5)
    #[oai(validator(minimum(value = "0.05"), maximum(value = "0.5")))]
    pub validation_split: Option<f64>,
    /// Shift training images by a few pixels at random, which keeps any class (default: true)
    pub augment: Option<bool>,
    /// Flip training images left to right at random (default: false; for digits, arrows or
    /// text a mirror image can be another class)
    pub hflip: Option<bool>,
    /// Mixed precision: bf16 autocast on GPUs that support it (default: false; CPU nodes
    /// ignore it, a GPU without bf16 fails the job)
    pub bf16: Option<bool>,
    /// Backend: "cuda", "rocm", "cpu" or "any" (default: "any")
    pub driver: Option<String>,
    /// Hold the request until the job ends (default: true); false answers 202 at once
    pub wait: Option<bool>,
    /// The user whose model to train into (admins; default: your own). Model names are unique
    /// per owner.
    pub owner: Option<i64>,
}

/// The job finished.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct TrainCompleted {
    /// "Training completed".
    pub message: String,
    /// Tokens charged (0 for admins).
    pub tokens_used: i64,
    /// The caller's balance afterwards.
    pub remaining_tokens: i64,
    /// The job.
    pub job_id: String,
    /// The model version it produced.
    pub model: Option<jobs::ModelVersion>,
    /// Seconds the job waited for a node.
    pub queue_seconds: Option<f64>,
    /// Seconds it trained.
    pub run_seconds: Option<f64>,
}

impl Example for TrainCompleted {
    fn example() -> Self {
        Self {
            message: "Training completed".into(),
            tokens_used: 100,
            remaining_tokens: 900,
            job_id: "7f0c3f9e2b7d4c1a9e8b6d5c4b3a2f1e".into(),
            model: None,
            queue_seconds: Some(0.02),
            run_seconds: Some(41.5),
        }
    }
}

/// The job is queued (or still running); follow it at `status_url`.
#[derive(Debug, Clone, Object)]
pub struct TrainQueued {
    /// "Training queued".
    pub message: String,
    /// The job.
    pub job_id: String,
    /// Tokens charged (0 for admins).
    pub tokens_used: i64,
    /// The caller's balance afterwards.
    pub remaining_tokens: i64,
    /// Where to follow it.
    pub status_url: String,
}

/// `POST /admin/api/train` answers.
#[derive(ApiResponse)]
pub enum TrainResponse {
    /// Training completed.
    #[oai(status = 200)]
    Completed(Json<Box<TrainCompleted>>),
    /// Queued: `wait=false`, `Prefer: respond-async`, or the hold ran out while the job waits or runs.
    #[oai(status = 202)]
    Queued(Json<TrainQueued>),
}

/// The job id: from the caller's `Idempotency-Key` (so a retry finds the same job), else random.
fn job_id(user_id: i64, key: Option<&str>) -> String {
    match key {
        Some(k) => {
            let mut h = Sha256::new();
            h.update(user_id.to_le_bytes());
            h.update(k.as_bytes());
            hex::encode(&h.finalize()[..16])
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Training for admins and users.
pub struct TrainApi {
    /// Shared state.
    pub state: AppState,
    /// How long a submission is held.
    pub hold: Duration,
}

struct Submitted {
    job_id: String,
    tokens_used: i64,
    remaining_tokens: i64,
    status_url: String,
}

impl TrainApi {
    /// Fail the job (if recorded) and refund, then answer 503.
    async fn abort(&self, user_id: i64, job_id: &str, recorded: bool, what: String) -> ApiError {
        let job = crate::enqueue::Unqueued {
            user_id,
            job_id,
            charged: TRAINING_COST,
            recorded,
        };
        crate::enqueue::abort(&self.state, job, what).await
    }

    async fn submit(
        &self,
        p: Principal,
        body: TrainBody,
        idem: Option<String>,
        wait: bool,
    ) -> ApiResult<TrainResponse> {
        let driver = match body.driver.as_deref() {
            None => JobDriver::Any,
            Some(d) => JobDriver::parse(d).ok_or_else(|| {
                ApiError::bad_request("driver must be one of cuda, rocm, cpu, any")
            })?,
        };
        let d = TrainParams::default();
        let params = TrainParams {
            epochs: body.epochs.unwrap_or(d.epochs),
            batch_size: body.batch_size.unwrap_or(d.batch_size),
            learning_rate: body.learning_rate.unwrap_or(d.learning_rate),
            image_size: body.image_size.or(d.image_size),
            validation_split: body.validation_split.unwrap_or(d.validation_split),
            augment: body.augment.unwrap_or(d.augment),
            hflip: body.hflip.unwrap_or(d.hflip),
            bf16: body.bf16.unwrap_or(d.bf16),
        };
        let admin = p.user.role == Role::Admin;
        // Users train on the datasets folder's contents only (`GET /api/datasets`).
        let datasets = lexical(&self.state.datasets_path);
        let path = lexical(&body.train_path);
        if !admin
            && datasets != "/"
            && path != datasets
            && !path.starts_with(&format!("{datasets}/"))
        {
            return Err(ApiError::forbidden(format!(
                "`train_path`: users may train only on datasets under {datasets} \
                 (GET /api/datasets lists them)"
            )));
        }
        let owner = match body.owner {
            None => p.user.id,
            Some(o) if o == p.user.id => o,
            Some(o) if admin => {
                let _: gantry_contracts::auth::User = nats::request(
                    &self.state.nats,
                    subjects::auth(subjects::auth::USERS_GET),
                    &gantry_contracts::auth::UserRef { user_id: o },
                )
                .await?;
                o
            }
            Some(_) => {
                return Err(ApiError::forbidden(
                    "`owner`: only admins can train into another user's model",
                ))
            }
        };
        let status_base = if admin {
            "/admin/api/jobs"
        } else {
            "/api/jobs"
        };
        if let Some(k) = &idem {
            if k.is_empty() || k.len() > 200 {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1 to 200 characters",
                ));
            }
        }
        let job_id = job_id(p.user.id, idem.as_deref());
        // Ordinary users' held submissions and packing are bounded per user (admins are not):
        // over the bound, 429 before anything is done or charged.
        let bounded = p.user.role != Role::Admin;
        let limits = self.state.limits;
        let _held = match (bounded, wait) {
            (true, true) => Some(self.state.slots.take(Kind::Held, p.user.id, limits.held)?),
            _ => None,
        };

        // A retried submission: the same job, never a second charge. It goes on only when the
        // registry says there is no such job; any other failure answers as it is (a retry during
        // a registry outage must not charge, queue or refund anything twice).
        if idem.is_some() {
            let existing: Result<JobRecord, _> = nats::request(
                &self.state.nats,
                subjects::registry(jobs::subjects::JOBS_GET),
                &JobRef {
                    job_id: job_id.clone(),
                    user_id: Some(p.user.id),
                    bare: true,
                },
            )
            .await;
            let existing = match existing {
                Err(e) if e.code == ErrorCode::NotFound => None,
                other => Some(other?),
            };
            if let Some(job) = existing {
                // The same key with another request is a client's mistake, not a retry.
                let same = job.output_model == body.output_model
                    && job.model_owner() == owner
                    && job.description == body.description
                    && job.driver == driver
                    && same_params(&job.params, &params, body.learning_rate.is_some())
                    && lexical(&job.train_path) == lexical(&body.train_path);
                if !same {
                    return Err(ApiError::new(
                        ErrorCode::Unprocessable,
                        format!(
                            "Idempotency-Key was already used for a different request (job {job_id}); \
                             send this request with a new key"
                        ),
                    ));
                }
                let me = self.me(&p).await;
                let sub = Submitted {
                    status_url: format!("{status_base}/{job_id}"),
                    job_id,
                    tokens_used: job.tokens_charged,
                    remaining_tokens: me,
                };
                return self.answer(sub, Some(job), wait).await;
            }
        }

        // Validate and pack before charging: bad data costs nothing.
        let root = self.state.data_root.clone();
        let train_path = body.train_path.clone();
        let packing = match bounded {
            true => Some(
                self.state
                    .slots
                    .take(Kind::Packing, p.user.id, limits.packing)?,
            ),
            false => None,
        };
        let max_bytes = limits.dataset_bytes;
        let cache = self.state.snapshots.clone();
        let (mut snapshot, folder) = tokio::task::spawn_blocking(move || {
            prepare(&root, &train_path, max_bytes, Some(&cache))
        })
        .await
        .map_err(ApiError::internal)??;
        if snapshot.archive.is_none()
            && !crate::enqueue::snapshot_stored(&self.state, &snapshot.hash).await
        {
            // Known, but no longer in the store (or about to go): check and pack it again.
            self.state.snapshots.forget(&folder);
            let root = self.state.data_root.clone();
            let train_path = body.train_path.clone();
            (snapshot, _) =
                tokio::task::spawn_blocking(move || prepare(&root, &train_path, max_bytes, None))
                    .await
                    .map_err(ApiError::internal)??;
        }
        drop(packing);

        let charge: CreditResult = nats::request(
            &self.state.nats,
            subjects::auth(subjects::auth::CREDITS_CHARGE),
            &CreditChange {
                user_id: p.user.id,
                amount: TRAINING_COST,
                key: job_id.clone(),
                reason: format!("training job {job_id}"),
            },
        )
        .await?;
        let charged_at = std::time::Instant::now();

        // Store the snapshot once per content hash.
        // (One named from the cache was found stored just now.)
        if let Some(archive) = &snapshot.archive {
            if let Err(what) =
                crate::enqueue::store_snapshot(&self.state, &snapshot.hash, archive.path()).await
            {
                return Err(self.abort(p.user.id, &job_id, false, what).await);
            }
        }

        let job = TrainJob {
            job_id: job_id.clone(),
            user_id: p.user.id,
            output_model: body.output_model,
            description: body.description,
            driver,
            dataset_hash: snapshot.hash,
            classes: snapshot.classes,
            params,
            submitted_at: chrono::Utc::now(),
        };
        let mut record = JobRecord::queued(
            &job,
            gantry_api_display(&self.state.data_root, &body.train_path),
            charge.tokens_used,
        );
        record.model_owner = (owner != p.user.id).then_some(owner);
        // Past this the reconciler may refund the charge as one with no job: record nothing.
        if charged_at.elapsed() > self.state.limits.record_deadline {
            return Err(self
                .abort(
                    p.user.id,
                    &job_id,
                    false,
                    "storing the dataset took too long".into(),
                )
                .await);
        }
        if let Err(e) = nats::request::<_, JobRecord>(
            &self.state.nats,
            subjects::registry(jobs::subjects::JOBS_CREATE),
            &record,
        )
        .await
        {
            tracing::error!(error = %e, "recording the job failed");
            return Err(self
                .abort(
                    p.user.id,
                    &job_id,
                    false,
                    "the job could not be recorded".into(),
                )
                .await);
        }

        // Listen before publishing, so a fast job's end is not missed.
        let settled = if wait {
            Some(
                self.state
                    .nats
                    .subscribe(jobs::settled_subject(&job_id))
                    .await
                    .map_err(ApiError::internal)?,
            )
        } else {
            None
        };
        let payload = serde_json::to_vec(&job).map_err(ApiError::internal)?;
        let published =
            crate::enqueue::publish(&self.state, jobs::train_subject(driver), &job_id, payload)
                .await;
        if let Err(e) = published {
            tracing::error!(error = format!("{e:#}"), "publishing the job failed");
            return Err(self
                .abort(
                    p.user.id,
                    &job_id,
                    true,
                    "the job queue refused the job".into(),
                )
                .await);
        }
        // Stored: tell the trainers, so a free slot asks for it now rather than at its next look.
        // Best effort: a node that misses it still finds the job then.
        if let Err(e) = self
            .state
            .nats
            .publish(jobs::queued_subject(driver), Default::default())
            .await
        {
            tracing::debug!(error = %e, "announcing the queued job failed");
        }
        tracing::info!(job_id, driver = driver.as_str(), "training job queued");

        let sub = Submitted {
            status_url: format!("{status_base}/{job_id}"),
            job_id,
            tokens_used: charge.tokens_used,
            remaining_tokens: charge.remaining_tokens,
        };
        match settled {
            None => Ok(queued(sub)),
            Some(settled) => self.hold(sub, settled).await,
        }
    }

    /// The caller's balance now.
    async fn me(&self, p: &Principal) -> i64 {
        let user: Result<gantry_contracts::auth::User, _> = nats::request(
            &self.state.nats,
            subjects::auth(subjects::auth::USERS_GET),
            &gantry_contracts::auth::UserRef { user_id: p.user.id },
        )
        .await;
        user.map(|u| u.tokens).unwrap_or(p.user.tokens)
    }
}

/// A path as written, without `.` and repeated slashes, rooted: no filesystem is asked, so a
/// retry compares the same after its dataset was moved.
fn lexical(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

fn wants_async(prefer: &Option<String>) -> bool {
    prefer.as_deref().is_some_and(|p| {
        p.split(',')
            .any(|v| v.trim().eq_ignore_ascii_case("respond-async"))
    })
}

#[OpenApi]
impl TrainApi {
    /// Train a model
    ///
    /// Start AI model training process. Costs 100 tokens (free for admins).
    #[oai(
        path = "/admin/api/train",
        method = "post",
        tag = "ApiTags::Training",
        operation_id = "train",
        code_sample(lang = "curl", source = "crate::docs::samples::TRAIN")
    )]
    #[allow(clippy::too_many_arguments)]
    async fn train_admin(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<TrainBody>,
        /// Hold the request until the job ends (default: true)
        wait: Query<Option<bool>>,
        /// `respond-async` answers 202 at once
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// A retried request with the same key returns the same job and charges once
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<TrainResponse> {
        let p = self.state.auth.admin(&auth, req).await?;
        let wait = wait.0.or(body.0.wait).unwrap_or(true) && !wants_async(&prefer.0);
        self.submit(p, body.0, idempotency_key.0, wait).await
    }

    /// Train a model (users)
    ///
    /// The same as the admin endpoint for any user, who pays 100 credit tokens (402 when the
    /// balance is short). Failed jobs are refunded.
    #[oai(
        path = "/api/train",
        method = "post",
        tag = "ApiTags::Training",
        operation_id = "train_user"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn train_user(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<TrainBody>,
        /// Hold the request until the job ends (default: true)
        wait: Query<Option<bool>>,
        /// `respond-async` answers 202 at once
        #[oai(name = "Prefer")]
        prefer: Header<Option<String>>,
        /// A retried request with the same key returns the same job and charges once
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<TrainResponse> {
        let p = self.state.auth.principal(&auth, req).await?;
        let wait = wait.0.or(body.0.wait).unwrap_or(true) && !wants_async(&prefer.0);
        self.submit(p, body.0, idempotency_key.0, wait).await
    }
}
