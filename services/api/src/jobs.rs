//! Following jobs and using their models: listings, one job, its live events (server-sent
//! events, history first), cancel, models and their downloads. Admins see everything under
//! `/admin/api`; users see their own under `/api`.

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::stream::BoxStream;
use futures::StreamExt;
use gantry_contracts::auth::Principal;
use gantry_contracts::jobs::{
    self, JobEvent, JobList, JobQuery, JobRecord, JobRef, JobStatus, ModelDetail, ModelList,
    ModelQuery, ModelRef,
};
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Attachment, AttachmentType, EventStream, Json};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use crate::auth::Credentials;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tags::ApiTags;
use crate::wire::carry;

/// Training settings of a job.
#[derive(Debug, Clone, Object)]
pub struct TrainParamsOut {
    /// Passes over the data.
    pub epochs: u32,
    /// Images per step.
    pub batch_size: u32,
    /// Learning rate.
    pub learning_rate: f64,
    /// Square image side.
    pub image_size: u32,
    /// Validation share.
    pub validation_split: f64,
}

/// A stored model version.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ModelVersion")]
pub struct ModelVersionOut {
    /// Model name.
    pub name: String,
    /// Version, 1, 2, 3 ...
    pub version: u32,
    /// Owner.
    pub user_id: i64,
    /// The job that made it.
    pub job_id: String,
    /// Where its weights are stored.
    pub weights_key: String,
    /// Its card: classes, image size, normalisation, architecture, metrics per epoch,
    /// description, dataset hash, job id, node.
    pub card: serde_json::Value,
    /// Final validation accuracy.
    pub val_accuracy: f64,
    /// When it was stored.
    pub created_at: String,
}

/// A training job.
#[derive(Debug, Clone, Object)]
#[oai(rename = "Job")]
pub struct JobOut {
    /// Job id.
    pub job_id: String,
    /// Owner.
    pub user_id: i64,
    /// Model name.
    pub output_model: String,
    /// Description.
    pub description: String,
    /// The dataset, as named.
    pub train_path: String,
    /// The dataset's content hash.
    pub dataset_hash: String,
    /// Requested backend.
    pub driver: String,
    /// Settings.
    pub params: TrainParamsOut,
    /// `queued`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Tokens charged.
    pub tokens_charged: i64,
    /// Whether the charge was refunded.
    pub refunded: bool,
    /// The node on it (its name).
    pub node: Option<String>,
    /// That node's id.
    pub node_id: Option<String>,
    /// Deliveries of the job so far.
    pub delivery: u64,
    /// The latest progress: epoch, step, total steps, loss, accuracies, samples/s, ETA.
    pub progress: Option<serde_json::Value>,
    /// Last checkpointed epoch.
    pub checkpoint_epoch: u32,
    /// The model version it produced.
    pub model: Option<ModelVersionOut>,
    /// Why it failed.
    pub error: Option<String>,
    /// The failure's kind: `data`, `crash`, `no_node`, `system`.
    pub failure_kind: Option<String>,
    /// Submitted.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Among queued jobs of its driver, 1 = next.
    #[oai(skip_serializing_if_is_none)]
    pub queue_position: Option<u64>,
    /// Why a queued job waits.
    #[oai(skip_serializing_if_is_none)]
    pub waiting_reason: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Object)]
pub struct JobListOut {
    /// This page.
    pub jobs: Vec<JobOut>,
    /// Matching jobs in all.
    pub total: u64,
    /// Page size.
    pub limit: u64,
    /// Skipped.
    pub offset: u64,
}

/// Job states to filter by.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum StatusFilter {
    /// Waiting.
    Queued,
    /// Training.
    Running,
    /// Done.
    Completed,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl From<StatusFilter> for JobStatus {
    fn from(s: StatusFilter) -> Self {
        match s {
            StatusFilter::Queued => JobStatus::Queued,
            StatusFilter::Running => JobStatus::Running,
            StatusFilter::Completed => JobStatus::Completed,
            StatusFilter::Failed => JobStatus::Failed,
            StatusFilter::Cancelled => JobStatus::Cancelled,
        }
    }
}

/// A model and its newest version.
#[derive(Debug, Clone, Object)]
pub struct ModelSummaryOut {
    /// Name.
    pub name: String,
    /// Versions stored.
    pub versions: u32,
    /// The newest.
    pub latest: ModelVersionOut,
}

/// Models.
#[derive(Debug, Clone, Object)]
pub struct ModelListOut {
    /// By name.
    pub models: Vec<ModelSummaryOut>,
}

/// A model with every version.
#[derive(Debug, Clone, Object)]
pub struct ModelDetailOut {
    /// Name.
    pub name: String,
    /// Oldest first.
    pub versions: Vec<ModelVersionOut>,
}

/// Weights download.
#[derive(ApiResponse)]
pub enum Download {
    /// The safetensors file.
    #[oai(status = 200)]
    File(Attachment<Vec<u8>>),
}

fn default_limit() -> u64 {
    50
}

/// Jobs and models.
pub struct JobsApi(pub AppState);

/// Whose things a request may see: `None` for admins on admin paths.
fn owner(p: &Principal, admin_path: bool) -> Option<i64> {
    if admin_path {
        None
    } else {
        Some(p.user.id)
    }
}

impl JobsApi {
    async fn who(
        &self,
        req: &Request,
        auth: &Credentials,
        admin_path: bool,
    ) -> ApiResult<Option<i64>> {
        if admin_path {
            self.0.auth.admin(auth, req).await?;
            Ok(None)
        } else {
            let p = self.0.auth.principal(auth, req).await?;
            Ok(owner(&p, false))
        }
    }

    async fn list(
        &self,
        user_id: Option<i64>,
        status: Option<StatusFilter>,
        limit: u64,
        offset: u64,
    ) -> ApiResult<Json<JobListOut>> {
        let list: JobList = self
            .0
            .registry(
                jobs::subjects::JOBS_LIST,
                &JobQuery {
                    user_id,
                    status: status.map(Into::into),
                    limit: Some(limit),
                    offset,
                },
            )
            .await?;
        Ok(Json(JobListOut {
            jobs: carry(list.jobs)?,
            total: list.total,
            limit,
            offset,
        }))
    }

    async fn get(&self, user_id: Option<i64>, job_id: String) -> ApiResult<JobRecord> {
        self.0
            .registry(jobs::subjects::JOBS_GET, &JobRef { job_id, user_id })
            .await
    }

    /// The job's events as SSE: everything stored so far, then live, ending after the final one.
    async fn events(
        &self,
        user_id: Option<i64>,
        job_id: String,
    ) -> ApiResult<EventStream<BoxStream<'static, serde_json::Value>>> {
        let job = self.get(user_id, job_id.clone()).await?;
        let js = async_nats::jetstream::new(self.0.nats.clone());
        let stream = js.get_stream(jobs::EVENTS_STREAM).await.map_err(|e| {
            ApiError::new(
                gantry_contracts::error::ErrorCode::Unavailable,
                format!("event stream unavailable: {e}"),
            )
        })?;
        let consumer = stream
            .create_consumer(consumer::push::OrderedConfig {
                filter_subject: jobs::event_subject(&job.job_id),
                deliver_policy: DeliverPolicy::All,
                deliver_subject: self.0.nats.new_inbox(),
                ..Default::default()
            })
            .await
            .map_err(ApiError::internal)?;
        let messages = consumer.messages().await.map_err(ApiError::internal)?;
        let already_final = job.status.is_final();
        let events = messages
            .filter_map(|m| async move {
                m.ok()
                    .and_then(|m| serde_json::from_slice::<JobEvent>(&m.payload).ok())
            })
            .scan(false, |done, e| {
                if *done {
                    return futures::future::ready(None);
                }
                *done = e.is_final();
                futures::future::ready(Some(serde_json::to_value(e).unwrap_or_default()))
            });
        // A job that ended before any event was stored (e.g. cancelled while queued) still ends
        // the stream: stop when the stream goes quiet after the history.
        let events: BoxStream<'static, serde_json::Value> = if already_final {
            events
                .take_until(tokio::time::sleep(std::time::Duration::from_secs(2)))
                .boxed()
        } else {
            events.boxed()
        };
        Ok(EventStream::new(events).keep_alive(std::time::Duration::from_secs(15)))
    }

    async fn cancel(&self, user_id: Option<i64>, job_id: String) -> ApiResult<Json<JobOut>> {
        let job: JobRecord = self
            .0
            .registry(jobs::subjects::JOBS_CANCEL, &JobRef { job_id, user_id })
            .await?;
        Ok(Json(carry(job)?))
    }

    async fn models(&self, user_id: Option<i64>) -> ApiResult<Json<ModelListOut>> {
        let list: ModelList = self
            .0
            .registry(jobs::subjects::MODELS_LIST, &ModelQuery { user_id })
            .await?;
        Ok(Json(ModelListOut {
            models: carry(list.models)?,
        }))
    }

    async fn model(&self, user_id: Option<i64>, name: String) -> ApiResult<Json<ModelDetailOut>> {
        let m: ModelDetail = self
            .0
            .registry(jobs::subjects::MODELS_GET, &ModelRef { name, user_id })
            .await?;
        Ok(Json(carry(m)?))
    }

    async fn download(
        &self,
        user_id: Option<i64>,
        name: String,
        version: u32,
    ) -> ApiResult<Download> {
        let m: ModelDetail = self
            .0
            .registry(
                jobs::subjects::MODELS_GET,
                &ModelRef {
                    name: name.clone(),
                    user_id,
                },
            )
            .await?;
        let v = m
            .versions
            .iter()
            .find(|v| v.version == version)
            .ok_or_else(|| ApiError::not_found(format!("model {name} has no version {version}")))?;
        let js = async_nats::jetstream::new(self.0.nats.clone());
        let store = gantry_runtime::jetstream::bucket_store(&js, jobs::MODELS_BUCKET)
            .await
            .map_err(ApiError::internal)?;
        let mut object = store.get(&v.weights_key).await.map_err(|e| {
            ApiError::not_found(format!("weights of {name} v{version} are missing: {e}"))
        })?;
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .map_err(ApiError::internal)?;
        Ok(Download::File(
            Attachment::new(bytes)
                .attachment_type(AttachmentType::Attachment)
                .filename(format!("{name}-v{version}.safetensors")),
        ))
    }
}

#[OpenApi]
impl JobsApi {
    /// List jobs
    ///
    /// Every job, newest first, with the queue position of queued jobs and the reason they wait.
    #[oai(
        path = "/admin/api/jobs",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "list_jobs"
    )]
    async fn admin_list(
        &self,
        req: &Request,
        auth: Credentials,
        /// Only jobs in this state
        status: Query<Option<StatusFilter>>,
        /// Page size (default: 50, at most 500)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u64>,
        /// Jobs to skip (default: 0)
        #[oai(default)]
        offset: Query<u64>,
    ) -> ApiResult<Json<JobListOut>> {
        let who = self.who(req, &auth, true).await?;
        self.list(who, status.0, limit.0, offset.0).await
    }

    /// List your jobs
    #[oai(
        path = "/api/jobs",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "list_my_jobs"
    )]
    async fn user_list(
        &self,
        req: &Request,
        auth: Credentials,
        /// Only jobs in this state
        status: Query<Option<StatusFilter>>,
        /// Page size (default: 50, at most 500)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u64>,
        /// Jobs to skip (default: 0)
        #[oai(default)]
        offset: Query<u64>,
    ) -> ApiResult<Json<JobListOut>> {
        let who = self.who(req, &auth, false).await?;
        self.list(who, status.0, limit.0, offset.0).await
    }

    /// Get a job
    #[oai(
        path = "/admin/api/jobs/:id",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "get_job"
    )]
    async fn admin_get(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
    ) -> ApiResult<Json<JobOut>> {
        let who = self.who(req, &auth, true).await?;
        Ok(Json(carry(self.get(who, id.0).await?)?))
    }

    /// Get one of your jobs
    #[oai(
        path = "/api/jobs/:id",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "get_my_job"
    )]
    async fn user_get(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
    ) -> ApiResult<Json<JobOut>> {
        let who = self.who(req, &auth, false).await?;
        Ok(Json(carry(self.get(who, id.0).await?)?))
    }

    /// Follow a job
    ///
    /// Server-sent events: the job's history first, then live progress (epoch, step, loss,
    /// accuracies, samples/s, ETA), ending after it completes, fails or is cancelled.
    #[oai(
        path = "/admin/api/jobs/:id/events",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "job_events"
    )]
    async fn admin_events(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
    ) -> ApiResult<EventStream<BoxStream<'static, serde_json::Value>>> {
        let who = self.who(req, &auth, true).await?;
        self.events(who, id.0).await
    }

    /// Follow one of your jobs
    #[oai(
        path = "/api/jobs/:id/events",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "my_job_events"
    )]
    async fn user_events(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
    ) -> ApiResult<EventStream<BoxStream<'static, serde_json::Value>>> {
        let who = self.who(req, &auth, false).await?;
        self.events(who, id.0).await
    }

    /// Cancel a job
    ///
    /// Stops it within seconds on its node; a job that had not started training is refunded.
    #[oai(
        path = "/admin/api/jobs/:id/cancel",
        method = "post",
        tag = "ApiTags::Training",
        operation_id = "cancel_job"
    )]
    async fn admin_cancel(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
    ) -> ApiResult<Json<JobOut>> {
        let who = self.who(req, &auth, true).await?;
        self.cancel(who, id.0).await
    }

    /// Cancel one of your jobs
    #[oai(
        path = "/api/jobs/:id/cancel",
        method = "post",
        tag = "ApiTags::Training",
        operation_id = "cancel_my_job"
    )]
    async fn user_cancel(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
    ) -> ApiResult<Json<JobOut>> {
        let who = self.who(req, &auth, false).await?;
        self.cancel(who, id.0).await
    }

    /// List models
    #[oai(
        path = "/admin/api/models",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "list_models"
    )]
    async fn admin_models(
        &self,
        req: &Request,
        auth: Credentials,
    ) -> ApiResult<Json<ModelListOut>> {
        let who = self.who(req, &auth, true).await?;
        self.models(who).await
    }

    /// List your models
    #[oai(
        path = "/api/models",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "list_my_models"
    )]
    async fn user_models(&self, req: &Request, auth: Credentials) -> ApiResult<Json<ModelListOut>> {
        let who = self.who(req, &auth, false).await?;
        self.models(who).await
    }

    /// Get a model
    ///
    /// Every version with its card and metrics.
    #[oai(
        path = "/admin/api/models/:name",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "get_model"
    )]
    async fn admin_model(
        &self,
        req: &Request,
        auth: Credentials,
        /// Model name
        name: Path<String>,
    ) -> ApiResult<Json<ModelDetailOut>> {
        let who = self.who(req, &auth, true).await?;
        self.model(who, name.0).await
    }

    /// Get one of your models
    #[oai(
        path = "/api/models/:name",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "get_my_model"
    )]
    async fn user_model(
        &self,
        req: &Request,
        auth: Credentials,
        /// Model name
        name: Path<String>,
    ) -> ApiResult<Json<ModelDetailOut>> {
        let who = self.who(req, &auth, false).await?;
        self.model(who, name.0).await
    }

    /// Download a model version
    ///
    /// Its weights as safetensors.
    #[oai(
        path = "/admin/api/models/:name/versions/:version/download",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "download_model"
    )]
    async fn admin_download(
        &self,
        req: &Request,
        auth: Credentials,
        /// Model name
        name: Path<String>,
        /// Version
        version: Path<u32>,
    ) -> ApiResult<Download> {
        let who = self.who(req, &auth, true).await?;
        self.download(who, name.0, version.0).await
    }

    /// Download one of your model versions
    #[oai(
        path = "/api/models/:name/versions/:version/download",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "download_my_model"
    )]
    async fn user_download(
        &self,
        req: &Request,
        auth: Credentials,
        /// Model name
        name: Path<String>,
        /// Version
        version: Path<u32>,
    ) -> ApiResult<Download> {
        let who = self.who(req, &auth, false).await?;
        self.download(who, name.0, version.0).await
    }
}
