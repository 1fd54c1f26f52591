//! `GET /admin/api/jobs/{id}/results` (and `GET /api/jobs/{id}/results` for a user's own): a
//! queued analysis's results, paged by image in the order of its input, from the registry's
//! `jobs.results`. They fill in while the job runs (`available` says how far); the job itself
//! (status, progress) is at `GET /admin/api/jobs/{id}`.

use gantry_contracts::analysis::{ResultsPage, ResultsQuery, MAX_RESULTS_PAGE};
use gantry_contracts::jobs;
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::OpenApi;

use crate::auth::Credentials;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tags::ApiTags;

fn default_limit() -> u64 {
    100
}

/// Analysis results.
pub struct ResultsApi(pub AppState);

impl ResultsApi {
    async fn page(
        &self,
        user_id: Option<i64>,
        job_id: String,
        offset: u64,
        limit: u64,
    ) -> ApiResult<Json<ResultsPage>> {
        if !(1..=MAX_RESULTS_PAGE).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "query parameter `limit` must be an integer from 1 to {MAX_RESULTS_PAGE}"
            )));
        }
        let page = self
            .0
            .registry(
                jobs::subjects::JOBS_RESULTS,
                &ResultsQuery {
                    job_id,
                    user_id,
                    offset,
                    limit,
                },
            )
            .await?;
        Ok(Json(page))
    }
}

#[OpenApi]
impl ResultsApi {
    /// Page an analysis job's results
    ///
    /// A queued analysis's results (an analysis of more images than `GANTRY_ANALYZE_MAX_IMAGES`
    /// answers 202 with its job id), one per image in the order of its input: `offset` is the
    /// first image's index. They fill in while the job runs: `available` says how many are in
    /// (all of them, `total`, once it completed). A job that is not an analysis: 404.
    #[oai(
        path = "/admin/api/jobs/:id/results",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "job_results"
    )]
    async fn admin_results(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
        /// Index of the first image
        #[oai(default, validator(maximum(value = "1000000000")))]
        offset: Query<u64>,
        /// Results per page, 1 to 1000 (default 100)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u64>,
    ) -> ApiResult<Json<ResultsPage>> {
        self.0.auth.admin(&auth, req).await?;
        self.page(None, id.0, offset.0, limit.0).await
    }

    /// Page your analysis job's results
    ///
    /// As `GET /admin/api/jobs/{id}/results`, for your own jobs.
    #[oai(
        path = "/api/jobs/:id/results",
        method = "get",
        tag = "ApiTags::Training",
        operation_id = "my_job_results"
    )]
    async fn user_results(
        &self,
        req: &Request,
        auth: Credentials,
        /// Job id
        id: Path<String>,
        /// Index of the first image
        #[oai(default, validator(maximum(value = "1000000000")))]
        offset: Query<u64>,
        /// Results per page, 1 to 1000 (default 100)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u64>,
    ) -> ApiResult<Json<ResultsPage>> {
        let p = self.0.auth.principal(&auth, req).await?;
        self.page(Some(p.user.id), id.0, offset.0, limit.0).await
    }
}
