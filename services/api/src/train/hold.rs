//! Holding a submission until its job ends: the answer is the job's record as the registry keeps
//! it once the job is settled, announced on `gantry.status.job.<id>` or read every few seconds.

use super::*;

impl TrainApi {
    /// Answer for a job that already exists (a retried submission).
    pub(super) async fn answer(
        &self,
        sub: Submitted,
        job: Option<JobRecord>,
        wait: bool,
    ) -> ApiResult<TrainResponse> {
        match job {
            Some(job) if job.status.is_final() => final_answer(sub, job),
            _ if !wait => Ok(queued(sub)),
            _ => {
                let settled = self
                    .state
                    .nats
                    .subscribe(jobs::settled_subject(&sub.job_id))
                    .await
                    .map_err(ApiError::internal)?;
                // It may have ended between the lookup and the subscription.
                if let Some(job) = self.if_over(&sub.job_id).await {
                    return final_answer(sub, job);
                }
                self.hold(sub, settled).await
            }
        }
    }

    /// The job's record if it is over (`None` when it is not, or the registry does not answer).
    pub(super) async fn if_over(&self, job_id: &str) -> Option<JobRecord> {
        let job: JobRecord = nats::request(
            &self.state.nats,
            subjects::registry(jobs::subjects::JOBS_GET),
            &JobRef {
                job_id: job_id.to_owned(),
                user_id: None,
                bare: true,
            },
        )
        .await
        .ok()?;
        job.status.is_final().then_some(job)
    }

    /// Wait until the registry announces the job settled (model numbered, refund given), at most
    /// the hold.
    pub(super) async fn hold(
        &self,
        sub: Submitted,
        mut settled: async_nats::Subscriber,
    ) -> ApiResult<TrainResponse> {
        let deadline = tokio::time::sleep(self.hold);
        tokio::pin!(deadline);
        // A backstop for an announcement that never came (lost in a reconnect): look now and then.
        let mut look = tokio::time::interval_at(
            tokio::time::Instant::now() + HOLD_LOOK_EVERY,
            HOLD_LOOK_EVERY,
        );
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                msg = settled.next() => {
                    let Some(msg) = msg else { break };
                    let Ok(job) = serde_json::from_slice::<JobRecord>(&msg.payload) else { continue };
                    if job.status.is_final() {
                        return final_answer(sub, job);
                    }
                }
                _ = look.tick() => {
                    if let Some(job) = self.if_over(&sub.job_id).await {
                        return final_answer(sub, job);
                    }
                }
            }
        }
        // The hold ran out. With no node able to take it at all, fail it now (503, refunded);
        // otherwise it is queued or running: 202.
        let job: JobRecord = nats::request(
            &self.state.nats,
            subjects::registry(jobs::subjects::JOBS_GET),
            &JobRef {
                job_id: sub.job_id.clone(),
                user_id: None,
                bare: false,
            },
        )
        .await?;
        let no_node = match job.waiting_reason {
            Some(reason @ WaitingReason::NoNode { .. }) if job.status == JobStatus::Queued => {
                Some(reason)
            }
            _ => None,
        };
        let job = if let Some(reason) = no_node {
            // The registry fails it only if it is still queued; the answer follows what it did.
            let withdrawn: Result<JobRecord, _> = nats::request(
                &self.state.nats,
                subjects::registry(jobs::subjects::JOBS_FAIL),
                &FailJob {
                    job_id: sub.job_id.clone(),
                    error: format!("no node could take it within the hold ({reason})"),
                    kind: FailureKind::NoNode,
                },
            )
            .await;
            withdrawn.unwrap_or(job)
        } else {
            job
        };
        if job.status.is_final() {
            return final_answer(sub, job);
        }
        Ok(queued(sub))
    }
}

/// How often a held submission looks at its job besides listening for its end.
pub(super) const HOLD_LOOK_EVERY: Duration = Duration::from_secs(10);

/// The user-facing form of a path (`/datasets/x`), or the raw text when it does not resolve.
pub(super) fn gantry_api_display(root: &DataRoot, raw: &str) -> String {
    root.resolve(raw)
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|_| raw.to_owned())
}

pub(super) fn queued(sub: Submitted) -> TrainResponse {
    TrainResponse::Queued(Json(TrainQueued {
        message: "Training queued".into(),
        job_id: sub.job_id,
        tokens_used: sub.tokens_used,
        remaining_tokens: sub.remaining_tokens,
        status_url: sub.status_url,
    }))
}

/// The answer for a job that is over, from its record as the registry keeps it.
pub(super) fn final_answer(sub: Submitted, job: JobRecord) -> ApiResult<TrainResponse> {
    let JobRecord {
        status,
        model,
        error,
        failure_kind: kind,
        refund_due,
        refunded,
        tokens_charged,
        queue_seconds,
        run_seconds,
        ..
    } = job;
    let refunded = match (tokens_charged > 0, refunded, refund_due) {
        (false, _, _) => String::new(),
        (true, true, _) => format!("; the {tokens_charged} tokens charged were refunded"),
        (true, false, true) => {
            format!("; the refund of the {tokens_charged} tokens charged is pending")
        }
        (true, false, false) => {
            format!("; the {tokens_charged} tokens charged are kept: training had started")
        }
    };
    match status {
        JobStatus::Completed => Ok(TrainResponse::Completed(Json(Box::new(TrainCompleted {
            message: "Training completed".into(),
            tokens_used: sub.tokens_used,
            remaining_tokens: sub.remaining_tokens,
            job_id: sub.job_id,
            model,
            queue_seconds,
            run_seconds,
        })))),
        JobStatus::Cancelled => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("job {} was cancelled{refunded}", sub.job_id),
        )),
        _ => {
            let code = match kind {
                Some(FailureKind::Data) => ErrorCode::Unprocessable,
                Some(FailureKind::NoNode) | Some(FailureKind::System) => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            };
            let message = format!(
                "job {} failed: {}{refunded}",
                sub.job_id,
                error.unwrap_or_else(|| "unknown error".into())
            );
            if code == ErrorCode::Internal {
                // A trainer crash is reported as it is, not hidden behind a generic message.
                return Err(ApiError::Internal(Json(crate::error::ErrorBody {
                    error: crate::error::ErrorDetail {
                        code: code.as_str().into(),
                        message,
                    },
                })));
            }
            Err(ApiError::new(code, message))
        }
    }
}
