//! Publishing job events: [`EventPublisher`] puts a [`JobEvent`] on its job's subject
//! ([`event_subject`]) in the event stream, with the current trace context in its headers, and
//! waits for JetStream's ack, so an `Ok` means the event is stored. [`Retry`] says how patiently
//! to try again for an event that must not be lost (a final event the job message's ack waits
//! on).
//!
//! The trainer publishes every event of a run through it; the registry's own events (delivery 0)
//! are meant to go the same way.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishError as JetStreamError};
use chrono::Utc;
use gantry_contracts::jobs::{event_subject, JobEvent, JobEventKind};

use crate::nats::traced_headers;

/// Why an event was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event did not serialise (a bug, not a network problem).
    #[error("encoding the job event: {0}")]
    Encode(#[from] serde_json::Error),
    /// JetStream did not take it, or did not ack it in time.
    #[error("publishing the job event: {0}")]
    JetStream(#[from] JetStreamError),
}

/// Attempts, and the wait after the first failure; each later wait doubles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all (at least one is made).
    pub attempts: u32,
    /// The wait after the first failed try.
    pub first_wait: Duration,
}

impl Retry {
    /// For a final event the job's ack waits on: five tries over about four seconds.
    pub const FINAL_EVENT: Retry = Retry {
        attempts: 5,
        first_wait: Duration::from_millis(250),
    };
}

/// Publishes job events on the event stream; cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    js: jetstream::Context,
    sender: String,
}

impl EventPublisher {
    /// A publisher over `js` whose events name `sender` (a node id, or
    /// [`gantry_contracts::jobs::REGISTRY_SENDER`]) in their subject.
    pub fn new(js: jetstream::Context, sender: impl Into<String>) -> Self {
        Self {
            js,
            sender: sender.into(),
        }
    }

    /// The event `kind` of `job_id` from `delivery` (0 for the api and registry), stamped now.
    pub fn event(job_id: &str, delivery: u64, kind: JobEventKind) -> JobEvent {
        JobEvent {
            job_id: job_id.to_owned(),
            delivery,
            at: Utc::now(),
            kind,
        }
    }

    /// Publish `event` once and wait for the stream's ack.
    pub async fn publish(&self, event: &JobEvent) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(event)?;
        self.js
            .publish_with_headers(
                event_subject(&self.sender, &event.job_id),
                traced_headers(),
                payload.into(),
            )
            .await?
            .await?;
        Ok(())
    }

    /// Publish `event` once; a failure is logged and otherwise ignored (progress, say, which the
    /// next event supersedes).
    pub async fn publish_or_warn(&self, event: &JobEvent) {
        if let Err(e) = self.publish(event).await {
            tracing::warn!(job_id = event.job_id, error = %e, "publishing a job event failed");
        }
    }

    /// Publish `event`, trying again as `retry` says; false when every try failed. Each failure is
    /// logged.
    pub async fn publish_retrying(&self, event: &JobEvent, retry: Retry) -> bool {
        let mut wait = retry.first_wait;
        for attempt in 1..=retry.attempts.max(1) {
            match self.publish(event).await {
                Ok(()) => return true,
                Err(e) => tracing::warn!(
                    job_id = event.job_id,
                    attempt,
                    error = %e,
                    "publishing a job event failed"
                ),
            }
            if attempt < retry.attempts {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        false
    }
}
