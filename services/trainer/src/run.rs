//! One job's run on this node, from its message to its final ack ([`JobRunner::run`]):
//!
//! 1. The registry is asked whether the job is already over (cancelled while queued): then the
//!    message is terminated, with no event. (The worker registered the run for cancels before,
//!    so a cancel can never slip between the check and the start.)
//! 2. The lease is kept with in-progress acks every [`LEASE_EVERY`] while the node works.
//! 3. The dataset snapshot is had from the [`DatasetCache`], the last checkpoint (if any; never
//!    on the first delivery, which cannot have one) is read, `Started` is published, and training runs on a blocking thread
//!    ([`crate::training`]). Its progress and checkpoints go through a channel to a publisher
//!    task that stores each checkpoint before announcing it.
//! 4. The [`Outcome`] decides the end: completed (weights uploaded, `Completed` published, then
//!    acked), failed (`Failed` published, acked: retrying cannot help), cancelled (`Cancelled`,
//!    checkpoint deleted, terminated), handed back (nak at once: another node resumes from the
//!    checkpoint), retry (nak after [`RETRY_DELAY`]; the registry fails the job through the
//!    max-deliveries advisory after the last try).
//!
//! Every event carries the message's delivery count, so the registry ignores a late answer from a
//! node that lost its lease; every publish waits for JetStream's ack and carries the job
//! message's trace ([`EventPublisher`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use async_nats::Client;
use chrono::Utc;
use gantry_contracts::error::ErrorCode;
use gantry_contracts::jobs::{
    self as contract, FailureKind, JobEventKind, JobRecord, JobRef, ModelVersion, TrainJob,
    MAX_DELIVER, UPLOADS_BUCKET,
};
use gantry_contracts::registry::Driver;
use gantry_contracts::subjects;
use gantry_runtime::dataset::SnapshotHash;
use gantry_runtime::events::{EventPublisher, Retry};
use gantry_runtime::{metrics, nats, telemetry};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::cache::{CacheError, DatasetCache};
use crate::checkpoint::Checkpoints;
use crate::control::JobControl;
use crate::outcome::{classify, Outcome};
use crate::report::{epoch_metrics, model_card};
use crate::training::{load_options, train_blocking, train_config, Update};

/// In-progress acks: a third of AckWait.
pub const LEASE_EVERY: Duration = Duration::from_secs(contract::ACK_WAIT_SECS / 3);

/// Keep `msg` leased with an in-progress ack every [`LEASE_EVERY`] until the handle drops, so
/// the queue redelivers the job only when this node dies.
pub fn keep_leased(msg: Arc<jetstream::Message>) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(
        async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + LEASE_EVERY, LEASE_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, "in-progress ack failed");
                }
            }
        }
        .in_current_span(),
    ))
}
/// A job that failed here for a reason of the node comes back after this.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);

/// Who runs the jobs: named in events and model cards.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The node's name (events and model cards).
    pub node_name: String,
    /// The node's id (`Started` events).
    pub node_id: String,
    /// libtorch intra-op threads per job.
    pub threads: usize,
}

/// Runs jobs to their end; cheap to clone.
#[derive(Clone)]
pub struct JobRunner {
    client: Client,
    js: jetstream::Context,
    config: Arc<RunnerConfig>,
    cache: DatasetCache,
    checkpoints: Checkpoints,
    events: EventPublisher,
}

impl JobRunner {
    /// A runner over `client`, fetching datasets through `cache`.
    pub fn new(client: Client, config: RunnerConfig, cache: DatasetCache) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            checkpoints: Checkpoints::new(js.clone()),
            events: EventPublisher::new(js.clone(), config.node_id.clone()),
            client,
            js,
            config: Arc::new(config),
            cache,
        }
    }

    /// The dataset cache it fetches through.
    pub fn datasets(&self) -> DatasetCache {
        self.cache.clone()
    }

    /// One job, from its message to its final ack, on the node's `backend`; `control` is its
    /// entry in the worker's cancel table.
    pub async fn run(
        self,
        msg: jetstream::Message,
        job: TrainJob,
        backend: Driver,
        control: Arc<JobControl>,
    ) {
        let delivery = msg.info().map(|i| i.delivered.max(1) as u64).unwrap_or(1);
        // The consumer span, a child of the api's publish through the message's `traceparent`:
        // every delivery of the job, on any node, joins the same trace.
        let span = tracing::info_span!(
            "train.job",
            otel.name = format!("process {}", msg.subject),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.destination.name = %msg.subject,
            messaging.operation.type = "process",
            messaging.message.id = %job.job_id,
            job_id = %job.job_id,
            delivery,
            model = %job.output_model,
            backend = %backend,
            gantry.node.id = %self.config.node_id,
        );
        telemetry::set_parent_from(&span, msg.headers.as_ref());
        async move {
            let msg = Arc::new(msg);
            let lease = keep_leased(msg.clone());
            tracing::info!("job received");
            metrics::TRAINER_JOBS_RUNNING.inc();
            let outcome = self.execute(&job, delivery, backend, &control).await;
            metrics::TRAINER_JOBS_RUNNING.dec();
            drop(lease);
            metrics::TRAINER_JOBS
                .with_label_values(&[outcome.name()])
                .inc();
            self.finish(&msg, &job, delivery, outcome).await;
        }
        .instrument(span)
        .await
    }

    async fn execute(
        &self,
        job: &TrainJob,
        delivery: u64,
        backend: Driver,
        control: &Arc<JobControl>,
    ) -> Outcome {
        // The contract carries the snapshot's name as a string; anything else must not become a
        // path.
        let Ok(snapshot) = SnapshotHash::parse(&job.dataset_hash) else {
            return Outcome::data_failure(format!(
                "the job names an invalid dataset snapshot {:?}",
                job.dataset_hash
            ));
        };
        // Whether the job is still wanted, asked while the dataset is found (at once when
        // cached): the two are independent, and nothing is published before both answered.
        let job_ref = JobRef {
            job_id: job.job_id.clone(),
            user_id: None,
            bare: true,
        };
        let get = nats::request::<_, JobRecord>(
            &self.client,
            subjects::registry(contract::subjects::JOBS_GET),
            &job_ref,
        );
        let fetch = async {
            let span = tracing::info_span!("dataset.fetch", snapshot = %snapshot);
            tokio::select! {
                d = self.cache.get(&snapshot).instrument(span) => Some(d),
                _ = control.interrupted() => None,
            }
        };
        let (get, dataset) = tokio::join!(get, fetch);
        match get {
            Ok(record) if record.status.is_final() => return Outcome::AlreadyFinal(record.status),
            Ok(_) => {}
            Err(f) if f.code == ErrorCode::NotFound => return Outcome::Unknown,
            // The registry catches up from the durable event stream.
            Err(f) => {
                tracing::warn!(error = %f, "could not ask the registry about the job; training it anyway")
            }
        }
        let Some(dataset) = dataset else {
            return Outcome::interrupted(control).unwrap_or(Outcome::HandedBack);
        };
        if let Some(o) = Outcome::interrupted(control) {
            return o;
        }
        // The lease keeps the snapshot in the cache until this job is done with it.
        let (dataset, _lease) = match dataset {
            Ok(d) => d,
            Err(e @ CacheError::Missing(_)) => {
                return Outcome::Failed {
                    error: e.to_string(),
                    kind: FailureKind::System,
                }
            }
            Err(e @ CacheError::Other(_)) => return Outcome::Retry(e.to_string()),
        };
        // Only an earlier delivery of the job can have left a checkpoint: the first has none to
        // read.
        let resume = if delivery <= 1 {
            None
        } else {
            match self
                .checkpoints
                .read(&job.job_id)
                .instrument(tracing::info_span!("checkpoint.read"))
                .await
            {
                Ok(c) => c,
                Err(e) => return Outcome::Retry(format!("reading the checkpoint: {e:#}")),
            }
        };
        if let Some(o) = Outcome::interrupted(control) {
            return o;
        }
        let resumed_from_epoch = resume.as_ref().map_or(0, |c| c.epoch);
        if resumed_from_epoch > 0 {
            tracing::info!(resumed_from_epoch, "resuming from the checkpoint");
        }
        let started = JobEventKind::Started {
            node: self.config.node_name.clone(),
            node_id: self.config.node_id.clone(),
            driver: backend.as_str().to_owned(),
            resumed_from_epoch,
        };
        self.events
            .publish_or_warn(&EventPublisher::event(&job.job_id, delivery, started))
            .await;

        let (tx, rx) = mpsc::channel::<Update>(64);
        let publisher = tokio::spawn(
            publish_updates(
                self.events.clone(),
                self.checkpoints.clone(),
                rx,
                job.job_id.clone(),
                delivery,
                control.clone(),
            )
            .in_current_span(),
        );
        let result = {
            let span = tracing::Span::current();
            let control = control.clone();
            let config = train_config(job, self.config.threads);
            let options = load_options(job);
            let choose_size = job.params.image_size.is_none();
            tokio::task::spawn_blocking(move || {
                span.in_scope(|| {
                    train_blocking(
                        &dataset,
                        &options,
                        choose_size,
                        &config,
                        backend,
                        resume,
                        &control,
                        tx,
                    )
                })
            })
            .await
        };
        // The training thread dropped its sender: the publisher ends after the last update.
        let _ = publisher.await;

        let model = match result {
            Err(join) => return Outcome::Retry(format!("the training thread failed: {join}")),
            Ok(Err(e)) => return classify(&e, control.is_cancelled(), control.is_stopping()),
            Ok(Ok(model)) => model,
        };
        if control.is_cancelled() {
            return Outcome::Cancelled;
        }

        let weights_key = contract::weights_key(&job.job_id, delivery);
        if let Err(e) = self.upload_weights(&weights_key, &model.weights).await {
            return Outcome::Retry(format!("uploading the weights: {e:#}"));
        }
        let val_accuracy = model.card.final_val_accuracy().unwrap_or(0.0);
        let mut card = match model_card(model.card, job, &snapshot, &self.config.node_name) {
            Ok(card) => card,
            Err(e) => return Outcome::Retry(format!("writing the model card: {e}")),
        };
        // What the registry checks the stored object against before listing the version.
        card.weights_sha256 = hex::encode(sha2::Sha256::digest(&model.weights));
        card.weights_bytes = model.weights.len() as u64;
        Outcome::Completed(Box::new(ModelVersion {
            name: job.output_model.clone(),
            version: 0,
            user_id: job.user_id,
            job_id: job.job_id.clone(),
            weights_key,
            card,
            val_accuracy,
            created_at: Utc::now().into(),
        }))
    }

    async fn upload_weights(&self, key: &str, weights: &[u8]) -> anyhow::Result<()> {
        let span = tracing::info_span!("weights.upload", bytes = weights.len(), key);
        gantry_runtime::jetstream::put_object(&self.js, UPLOADS_BUCKET, key, &mut &weights[..])
            .instrument(span)
            .await
    }

    /// Carry out `outcome`: its event, then the message's ack, nak or term.
    async fn finish(
        &self,
        msg: &jetstream::Message,
        job: &TrainJob,
        delivery: u64,
        outcome: Outcome,
    ) {
        let event = |kind| EventPublisher::event(&job.job_id, delivery, kind);
        match outcome {
            Outcome::AlreadyFinal(status) => {
                tracing::info!(
                    status = status.as_str(),
                    "the job is already over; dropping it"
                );
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Outcome::Unknown => {
                tracing::warn!("the registry does not know this job; dropping it");
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Outcome::Completed(model) => {
                let val_accuracy = model.val_accuracy;
                let completed = event(JobEventKind::Completed { model });
                if self
                    .events
                    .publish_retrying(&completed, Retry::FINAL_EVENT)
                    .await
                {
                    match msg.double_ack().await {
                        Ok(()) => self.checkpoints.delete(&job.job_id).await,
                        // Perhaps the lease was lost and another delivery runs it: leave it its
                        // checkpoint (the registry keeps whichever result is not fenced).
                        Err(e) => tracing::warn!(error = %e, "acking the finished job failed"),
                    }
                    tracing::info!(val_accuracy, "job completed");
                } else {
                    // The checkpoint of the last epoch stays: the retry only uploads.
                    let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                }
            }
            Outcome::Cancelled => {
                self.events
                    .publish_retrying(&event(JobEventKind::Cancelled), Retry::FINAL_EVENT)
                    .await;
                self.checkpoints.delete(&job.job_id).await;
                let _ = msg.ack_with(AckKind::Term).await;
                tracing::info!("job cancelled");
            }
            Outcome::HandedBack => {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                tracing::info!("job handed back");
            }
            Outcome::Failed { error, kind } => {
                tracing::warn!(%error, ?kind, "job failed");
                let failed = event(JobEventKind::Failed { error, kind });
                if self
                    .events
                    .publish_retrying(&failed, Retry::FINAL_EVENT)
                    .await
                {
                    if msg.double_ack().await.is_ok() {
                        self.checkpoints.delete(&job.job_id).await;
                    }
                } else {
                    let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
                }
            }
            Outcome::Retry(error) => {
                let last = delivery >= MAX_DELIVER as u64;
                tracing::error!(
                    %error, delivery, max_deliver = MAX_DELIVER,
                    "job failed on this node; {}",
                    if last { "that was its last delivery: the registry fails it" } else { "it will be retried" }
                );
                let _ = msg.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
            }
        }
    }
}

/// Progress and checkpoints from the training thread, in order. Nothing is published after a
/// cancel; during shutdown checkpoints are still stored (the next node resumes from them) but
/// progress is not.
async fn publish_updates(
    events: EventPublisher,
    checkpoints: Checkpoints,
    mut rx: mpsc::Receiver<Update>,
    job_id: String,
    delivery: u64,
    control: Arc<JobControl>,
) {
    while let Some(update) = rx.recv().await {
        if control.is_cancelled() {
            continue;
        }
        match update {
            Update::Progress(kind) => {
                if let JobEventKind::Progress {
                    samples_per_sec, ..
                } = &kind
                {
                    metrics::TRAINER_SAMPLES_PER_SECOND.set(*samples_per_sec);
                }
                if !control.is_interrupted() {
                    events
                        .publish_or_warn(&EventPublisher::event(&job_id, delivery, kind))
                        .await;
                }
            }
            Update::Checkpoint { epoch, bytes } => {
                let metrics = gantry_training::Checkpoint::from_bytes(&bytes)
                    .ok()
                    .and_then(|c| c.metrics.last().map(epoch_metrics));
                let stored = checkpoints
                    .write(&job_id, &bytes)
                    .instrument(tracing::info_span!("checkpoint.save", epoch))
                    .await;
                match (stored, metrics) {
                    (Ok(()), Some(metrics)) if !control.is_cancelled() => {
                        tracing::info!(
                            epoch,
                            loss = metrics.loss,
                            val_accuracy = metrics.val_accuracy,
                            "epoch checkpointed"
                        );
                        let checkpointed = JobEventKind::Checkpoint { epoch, metrics };
                        events
                            .publish_or_warn(&EventPublisher::event(
                                &job_id,
                                delivery,
                                checkpointed,
                            ))
                            .await;
                    }
                    (Ok(()), _) => {}
                    (Err(e), _) => tracing::warn!(
                        epoch,
                        error = format!("{e:#}"),
                        "storing the checkpoint failed"
                    ),
                }
            }
        }
    }
}
