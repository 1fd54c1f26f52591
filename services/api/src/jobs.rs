//! Following jobs and using their models: listings, one job, its live events (server-sent
//! events, history first), cancel, models and their downloads. Admins see everything under
//! `/admin/api`; users see their own under `/api`. The registry's replies (`JobRecord`,
//! `ModelList`, `ModelDetail`) are served as they are; job lists as [`JobSummary`]s.
//!
//! Its length is mostly the operations' definitions, each twice: the admin's and the user's
//! (their own paths, authorisation and documentation) over one shared body.

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::stream::BoxStream;
use futures::StreamExt;
use gantry_contracts::auth::Principal;
use gantry_contracts::error::ErrorCode;
use gantry_contracts::jobs::{
    self, JobEvent, JobList, JobQuery, JobRecord, JobRef, JobStatus, JobSummary, ModelDetail,
    ModelList, ModelQuery, ModelRef,
};
use poem::{Body, Request};
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::{Attachment, AttachmentType, EventStream, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::auth::Credentials;
use crate::error::{ApiError, ApiResult};
use crate::slots::Kind;
use crate::state::AppState;
use crate::tags::ApiTags;

/// A page of jobs, newest first.
#[derive(Debug, Clone, Object)]
pub struct JobListOut {
    /// This page, each job without its model's card (`GET .../jobs/{id}` has everything).
    pub jobs: Vec<JobSummary>,
    /// Matching jobs in all.
    pub total: u64,
    /// Page size.
    pub limit: u64,
    /// Skipped.
    pub offset: u64,
}

/// Weights download.
#[derive(ApiResponse)]
pub enum Download {
    /// The safetensors file.
    #[oai(status = 200)]
    File(Attachment<Body>),
}

fn default_limit() -> u64 {
    50
}

/// How long a stream waits for the registry to list a completed job's version before it sends
/// the `completed` event as the trainer sent it.
const LISTING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Besides listening for the registry's announcement, a stream reads the job this long after the
/// `completed` event arrived, then twice as long each time, up to [`LISTING_LOOK_MAX`].
const LISTING_LOOK_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const LISTING_LOOK_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a job's completion is listed under a version.
enum Listed {
    Yes(Box<jobs::ModelVersion>),
    /// Over without a listed version (a fenced or withdrawn completion).
    Never,
    NotYet,
}

fn listed_version(job: JobRecord) -> Listed {
    match job.model.filter(|m| m.version > 0) {
        Some(model) => Listed::Yes(Box::new(model)),
        None if job.status.is_final() => Listed::Never,
        None => Listed::NotYet,
    }
}

/// Jobs and models.
#[derive(Clone)]
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

    async fn list(&self, q: JobQuery) -> ApiResult<Json<JobListOut>> {
        if let (Some(since), Some(until)) = (q.since, q.until) {
            if until <= since {
                return Err(ApiError::bad_request(
                    "query parameter `until` must be later than `since`",
                ));
            }
        }
        let (limit, offset) = (q.limit.unwrap_or_else(default_limit), q.offset);
        let list: JobList = self.0.registry(jobs::subjects::JOBS_LIST, &q).await?;
        Ok(Json(JobListOut {
            jobs: list.jobs.into_iter().map(JobSummary::from).collect(),
            total: list.total,
            limit,
            offset,
        }))
    }

    async fn get(&self, user_id: Option<i64>, job_id: String) -> ApiResult<JobRecord> {
        self.read(user_id, job_id, false).await
    }

    /// `jobs.get`; `bare` leaves out what only the job's own view shows (its queue position),
    /// for a caller that needs its status or model alone.
    async fn read(&self, user_id: Option<i64>, job_id: String, bare: bool) -> ApiResult<JobRecord> {
        self.0
            .registry(
                jobs::subjects::JOBS_GET,
                &JobRef {
                    job_id,
                    user_id,
                    bare,
                },
            )
            .await
    }

    /// The job's events as SSE: everything stored so far (or after `last_event_id`), then live,
    /// ending right after the final one. Each event's `id:` is its sequence number in the event
    /// stream and its `event:` its type; a `completed` event names the version as listed.
    async fn events(
        &self,
        user_id: Option<i64>,
        job_id: String,
        last_event_id: Option<u64>,
    ) -> ApiResult<EventStream<BoxStream<'static, serde_json::Value>>> {
        // Whether it exists (and is theirs) and is over: not where it waits.
        let job = self.read(user_id, job_id.clone(), true).await?;
        // A user's open streams are bounded (admins' are not); the slot is held by the stream.
        let slot = match user_id {
            Some(uid) => Some(
                self.0
                    .slots
                    .take(Kind::Stream, uid, self.0.limits.streams)?,
            ),
            None => None,
        };
        let js = async_nats::jetstream::new(self.0.nats.clone());
        let deliver_policy = match last_event_id {
            // Resume after the last event the client saw.
            Some(seq) => DeliverPolicy::ByStartSequence {
                start_sequence: seq.saturating_add(1),
            },
            None => DeliverPolicy::All,
        };
        // Created on the stream by name: no round trip to look the stream up first.
        let consumer = js
            .create_consumer_on_stream(
                consumer::push::OrderedConfig {
                    filter_subject: jobs::job_events(&job.job_id),
                    deliver_policy,
                    deliver_subject: self.0.nats.new_inbox(),
                    ..Default::default()
                },
                jobs::EVENTS_STREAM,
            )
            .await
            .map_err(|e| {
                ApiError::new(
                    gantry_contracts::error::ErrorCode::Unavailable,
                    format!("event stream unavailable: {e}"),
                )
            })?;
        let messages = consumer.messages().await.map_err(ApiError::internal)?;
        let already_final = job.status.is_final();
        let events = messages.filter_map(|m| async move {
            let m = m.ok()?;
            let seq = m.info().ok()?.stream_sequence;
            let event = serde_json::from_slice::<JobEvent>(&m.payload).ok()?;
            Some((seq, event))
        });
        // A job that ended before any event was stored (e.g. cancelled while queued), or one whose
        // final event the client has seen already, still ends the stream: stop when it goes quiet
        // after the history.
        let events: BoxStream<'static, (u64, JobEvent)> = if already_final {
            events
                .take_until(tokio::time::sleep(std::time::Duration::from_secs(2)))
                .boxed()
        } else {
            events.boxed()
        };
        let api = self.clone();
        // Ends as soon as the final event is sent, not when a next one would come.
        let events =
            futures::stream::unfold((events, false, slot), move |(mut events, done, slot)| {
                let api = api.clone();
                async move {
                    if done {
                        return None;
                    }
                    let (seq, event) = events.next().await?;
                    let done = event.is_final();
                    let value = api.listed(user_id, seq, event).await;
                    Some((value, (events, done, slot)))
                }
            });
        // A keep-alive every 5 s also finds a client that went away (and frees its slot).
        Ok(EventStream::new(events.boxed())
            .to_event(|v| {
                let mut event = poem::web::sse::Event::message(v.to_string());
                if let Some(kind) = v["type"].as_str() {
                    event = event.event_type(kind);
                }
                if let Some(seq) = v["seq"].as_u64() {
                    event = event.id(seq.to_string());
                }
                event
            })
            .keep_alive(std::time::Duration::from_secs(5)))
    }

    /// An event as the stream sends it: with its `seq`, and for `completed` the model as the
    /// registry listed it (the trainer's own event cannot know the version number). The listing
    /// follows the event by moments; when it takes longer, the event goes as the trainer sent it.
    async fn listed(&self, user_id: Option<i64>, seq: u64, event: JobEvent) -> serde_json::Value {
        let job_id = event.job_id.clone();
        let mut value = serde_json::to_value(&event).unwrap_or_default();
        value["seq"] = seq.into();
        value["at"] = event
            .at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            .into();
        if !matches!(event.kind, jobs::JobEventKind::Completed { .. }) {
            return value;
        }
        // At most this long in all, however slow the registry answers. The registry announces
        // the job settled once the version is listed; reads look too, for an announcement that
        // came before the subscription or was lost.
        let settled = self
            .0
            .nats
            .subscribe(jobs::settled_subject(&job_id))
            .await
            .ok();
        let listing = async {
            let mut settled = settled;
            let mut look = LISTING_LOOK_FIRST;
            loop {
                if let Ok(job) = self.read(user_id, job_id.clone(), true).await {
                    match listed_version(job) {
                        Listed::Yes(model) => return Some(model),
                        Listed::Never => return None,
                        Listed::NotYet => {}
                    }
                }
                let wait = tokio::time::sleep(look);
                tokio::pin!(wait);
                loop {
                    let announced = async {
                        match settled.as_mut() {
                            Some(sub) => sub.next().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = &mut wait => break,
                        msg = announced => {
                            let Some(msg) = msg else {
                                settled = None;
                                continue;
                            };
                            let Ok(job) = serde_json::from_slice::<JobRecord>(&msg.payload) else {
                                continue;
                            };
                            match listed_version(job) {
                                Listed::Yes(model) => return Some(model),
                                Listed::Never => return None,
                                Listed::NotYet => {}
                            }
                        }
                    }
                }
                look = (look * 2).min(LISTING_LOOK_MAX);
            }
        };
        if let Ok(Some(model)) = tokio::time::timeout(LISTING_WAIT, listing).await {
            value["model"] = serde_json::to_value(model).unwrap_or_default();
        }
        value
    }

    async fn cancel(&self, user_id: Option<i64>, job_id: String) -> ApiResult<Json<JobRecord>> {
        let job: JobRecord = self
            .0
            .registry(
                jobs::subjects::JOBS_CANCEL,
                &JobRef {
                    job_id,
                    user_id,
                    bare: false,
                },
            )
            .await?;
        Ok(Json(job))
    }

    async fn models(
        &self,
        user_id: Option<i64>,
        limit: u64,
        offset: u64,
    ) -> ApiResult<Json<ModelList>> {
        let list: ModelList = self
            .0
            .registry(
                jobs::subjects::MODELS_LIST,
                &ModelQuery {
                    user_id,
                    limit: Some(limit),
                    offset,
                },
            )
            .await?;
        Ok(Json(list))
    }

    async fn model(&self, user_id: Option<i64>, name: String) -> ApiResult<Json<ModelDetail>> {
        let m: ModelDetail = self
            .0
            .registry(jobs::subjects::MODELS_GET, &ModelRef { name, user_id })
            .await?;
        Ok(Json(m))
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
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "model store unavailable");
            ApiError::new(
                ErrorCode::Unavailable,
                "the model store is unreachable; try again shortly",
            )
        };
        let store = js
            .get_object_store(jobs::MODELS_BUCKET)
            .await
            .map_err(|e| unavailable(&e))?;
        let object = store
            .get(&v.weights_key)
            .await
            .map_err(|e| match e.kind() {
                async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                    ApiError::not_found(format!("weights of {name} v{version} are missing"))
                }
                _ => unavailable(&e),
            })?;
        // Streamed as it arrives from the store: memory stays bounded however large the file.
        Ok(Download::File(
            Attachment::new(Body::from_async_read(object))
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
    #[allow(clippy::too_many_arguments)]
    async fn admin_list(
        &self,
        req: &Request,
        auth: Credentials,
        /// Only this user's jobs
        user_id: Query<Option<i64>>,
        /// Only jobs in this state
        status: Query<Option<JobStatus>>,
        /// Only jobs submitted at or after this time (RFC 3339)
        since: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// Only jobs submitted before this time (RFC 3339)
        until: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// Page size (default: 50, at most 500)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u64>,
        /// Jobs to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<JobListOut>> {
        self.who(req, &auth, true).await?;
        self.list(JobQuery {
            user_id: user_id.0,
            status: status.0,
            since: since.0,
            until: until.0,
            limit: Some(limit.0),
            offset: offset.0,
        })
        .await
    }

    /// List your jobs
    #[oai(
        path = "/api/jobs",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "list_my_jobs"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn user_list(
        &self,
        req: &Request,
        auth: Credentials,
        /// Only jobs in this state
        status: Query<Option<JobStatus>>,
        /// Only jobs submitted at or after this time (RFC 3339)
        since: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// Only jobs submitted before this time (RFC 3339)
        until: Query<Option<chrono::DateTime<chrono::Utc>>>,
        /// Page size (default: 50, at most 500)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u64>,
        /// Jobs to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<JobListOut>> {
        let who = self.who(req, &auth, false).await?;
        self.list(JobQuery {
            user_id: who,
            status: status.0,
            since: since.0,
            until: until.0,
            limit: Some(limit.0),
            offset: offset.0,
        })
        .await
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
    ) -> ApiResult<Json<JobRecord>> {
        let who = self.who(req, &auth, true).await?;
        Ok(Json(self.get(who, id.0).await?))
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
    ) -> ApiResult<Json<JobRecord>> {
        let who = self.who(req, &auth, false).await?;
        Ok(Json(self.get(who, id.0).await?))
    }

    /// Follow a job
    ///
    /// Server-sent events: the job's history first, then live progress (epoch, step, loss,
    /// accuracies, samples/s, ETA), ending right after it completes, fails or is cancelled.
    /// Each event's `id:` is its sequence number (also its `seq` field) and its `event:` its
    /// type; send `Last-Event-ID` to resume after it. `completed` names the listed version.
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
        /// Resume after this event (its `id:`), as browsers send it when they reconnect
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<u64>>,
    ) -> ApiResult<EventStream<BoxStream<'static, serde_json::Value>>> {
        let who = self.who(req, &auth, true).await?;
        self.events(who, id.0, last_event_id.0).await
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
        /// Resume after this event (its `id:`), as browsers send it when they reconnect
        #[oai(name = "Last-Event-ID")]
        last_event_id: Header<Option<u64>>,
    ) -> ApiResult<EventStream<BoxStream<'static, serde_json::Value>>> {
        let who = self.who(req, &auth, false).await?;
        self.events(who, id.0, last_event_id.0).await
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
    ) -> ApiResult<Json<JobRecord>> {
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
    ) -> ApiResult<Json<JobRecord>> {
        let who = self.who(req, &auth, false).await?;
        self.cancel(who, id.0).await
    }

    /// List models
    ///
    /// Every user's models, each with its owner; `owner` narrows to one user's.
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
        /// Only this user's models
        owner: Query<Option<i64>>,
        /// Page size (default: 50, at most 500)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u64>,
        /// Models to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<ModelList>> {
        self.who(req, &auth, true).await?;
        self.models(owner.0, limit.0, offset.0).await
    }

    /// List your models
    #[oai(
        path = "/api/models",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "list_my_models"
    )]
    async fn user_models(
        &self,
        req: &Request,
        auth: Credentials,
        /// Page size (default: 50, at most 500)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "500"))
        )]
        limit: Query<u64>,
        /// Models to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<ModelList>> {
        let who = self.who(req, &auth, false).await?;
        self.models(who, limit.0, offset.0).await
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
        /// Its owner's user id (needed only when several users have a model of that name)
        owner: Query<Option<i64>>,
    ) -> ApiResult<Json<ModelDetail>> {
        self.who(req, &auth, true).await?;
        self.model(owner.0, name.0).await
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
    ) -> ApiResult<Json<ModelDetail>> {
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
        /// Its owner's user id (needed only when several users have a model of that name)
        owner: Query<Option<i64>>,
    ) -> ApiResult<Download> {
        self.who(req, &auth, true).await?;
        self.download(owner.0, name.0, version.0).await
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
