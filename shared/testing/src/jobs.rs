//! Training jobs: submit one over HTTP, read it, wait for a state or an event, cancel it, and
//! look at what it left in JetStream (its events, the queue, its checkpoint); generated
//! datasets to train on.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gantry_contracts::jobs::{self, JobEvent, EVENTS_STREAM, JOBS_STREAM, UPLOADS_BUCKET};
use gantry_training::synthetic::{generate, SyntheticSpec};
use reqwest::StatusCode;
use serde_json::Value;

use crate::api::send;
use crate::stack::{TestStack, ADMIN_TOKEN};
use crate::util::wait_until;

/// A two-class job `job_id` of `user_id` on `driver`, naming no real dataset: for recording
/// straight through the registry ([`TestStack::record_job`]), where no trainer will train it.
pub fn train_job(job_id: &str, user_id: i64, driver: jobs::JobDriver) -> jobs::TrainJob {
    jobs::TrainJob {
        job_id: job_id.into(),
        user_id,
        output_model: "M".into(),
        description: String::new(),
        driver,
        dataset_hash: "0".repeat(64),
        classes: vec!["a".into(), "b".into()],
        params: jobs::TrainParams::default(),
        submitted_at: chrono::Utc::now(),
    }
}

/// Whether a job read over HTTP has reached a final state.
pub fn is_final(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// The names of `events`' kinds, in order.
pub fn kinds(events: &[JobEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

impl TestStack {
    /// Put `job` in the job queue on its driver's subject, as the api does after recording it.
    pub async fn queue_job(&self, job: &jobs::TrainJob) {
        jetstream::new(self.client.clone())
            .publish(
                jobs::train_subject(job.driver),
                serde_json::to_vec(job).unwrap().into(),
            )
            .await
            .expect("publish the job")
            .await
            .expect("the queue stores the job");
    }

    /// Record `job` as queued and charged `tokens`, straight through the registry, as the api
    /// would (nothing is put in the queue).
    pub async fn record_job(&self, job: &jobs::TrainJob, tokens: i64) -> jobs::JobRecord {
        self.registry_call(
            jobs::subjects::JOBS_CREATE,
            &jobs::JobRecord::queued(job, "/d", tokens),
        )
        .await
        .expect("record the job")
    }

    /// Three classes of generated shapes (circle, square, triangle), `per_class` images each of
    /// 32 pixels in mixed formats, under `<data root>/<path>`.
    pub fn shapes(&self, path: &str, per_class: usize, seed: u64) {
        self.shapes_with(
            path,
            SyntheticSpec {
                per_class,
                seed,
                ..SyntheticSpec::default()
            },
        );
    }

    /// The same, as `spec` says.
    pub fn shapes_with(&self, path: &str, spec: SyntheticSpec) {
        generate(&self.data_root.path().join(path), &spec).expect("generate a dataset");
    }

    /// Submit a training job as the admin without waiting for it; returns its id.
    pub async fn submit(&self, body: Value) -> String {
        let (status, v) = self.admin_post("/admin/api/train?wait=false", &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "submitting: {v}");
        assert_eq!(v["message"], "Training queued", "{v}");
        v["job_id"].as_str().expect("a job id").to_owned()
    }

    /// A job as the admin reads it.
    pub async fn job(&self, id: &str) -> Value {
        let (status, v) = self.admin_get(&format!("/admin/api/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "reading job {id}: {v}");
        v
    }

    /// Poll the job until `pred` holds; panics with the job as it last read otherwise.
    pub async fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = wait_until(timeout, || async {
            let j = self.job(id).await;
            pred(&j).then_some(j)
        })
        .await;
        match found {
            Some(j) => j,
            None => panic!(
                "job {id} never became {what} within {timeout:?}: {:#}",
                self.job(id).await
            ),
        }
    }

    /// Wait until the job is completed, failed or cancelled.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Value {
        self.wait_job(id, timeout, "final", is_final).await
    }

    /// Cancel a job as the admin; the answer must be 200.
    pub async fn cancel(&self, id: &str) -> Value {
        let (status, v) = send(
            self.http
                .post(self.url(&format!("/admin/api/jobs/{id}/cancel")))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "cancelling {id}: {v}");
        v
    }

    /// Every event of a job stored so far, in order.
    pub async fn events(&self, id: &str) -> Vec<JobEvent> {
        let js = jetstream::new(self.client.clone());
        let stream = js.get_stream(EVENTS_STREAM).await.expect("events stream");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: jobs::job_events(id),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .expect("an ephemeral consumer");
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .messages()
                .await
                .expect("fetch events");
            let before = out.len();
            while let Some(Ok(m)) = batch.next().await {
                out.push(serde_json::from_slice(&m.payload).expect("a job event"));
            }
            if out.len() == before {
                return out;
            }
        }
    }

    /// Wait until one of the job's events matches `pred`; returns all its events then. Panics
    /// with the events seen otherwise.
    pub async fn wait_event(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&JobEvent) -> bool,
    ) -> Vec<JobEvent> {
        let found = wait_until(timeout, || async {
            let events = self.events(id).await;
            events.iter().any(&pred).then_some(events)
        })
        .await;
        match found {
            Some(events) => events,
            None => panic!(
                "job {id} never had {what} within {timeout:?}; its events: {:?}",
                kinds(&self.events(id).await)
            ),
        }
    }

    /// Messages left in the job queue.
    pub async fn queued_messages(&self) -> u64 {
        let js = jetstream::new(self.client.clone());
        let mut stream = js.get_stream(JOBS_STREAM).await.expect("jobs stream");
        stream.info().await.expect("stream info").state.messages
    }

    /// Whether the job's checkpoint is in the uploads bucket.
    pub async fn checkpoint_exists(&self, id: &str) -> bool {
        let js = jetstream::new(self.client.clone());
        let store = js
            .get_object_store(UPLOADS_BUCKET)
            .await
            .expect("uploads bucket");
        store
            .info(jobs::checkpoint_key(id))
            .await
            .is_ok_and(|i| !i.deleted)
    }
}
