//! JetStream set-up shared by the api, the registry and the trainers: the job, event and
//! dead-letter streams,
//! the per-driver job consumers and the object stores. Every service ensures them at start-up;
//! creating what exists already changes nothing.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, object_store, stream};
use gantry_contracts::jobs::{
    self, JobDriver, ACK_WAIT_SECS, DATASETS_BUCKET, DEAD_EVENTS_STREAM,
    DEAD_EVENTS_STREAM_SUBJECTS, EVENTS_STREAM, EVENTS_STREAM_SUBJECTS, JOBS_STREAM,
    JOBS_STREAM_SUBJECTS, MAX_DELIVER, MODELS_BUCKET, UPLOADS_BUCKET,
};

/// The job stream's configuration: a work queue, deduplicated by job id for ten minutes.
pub fn jobs_stream() -> stream::Config {
    stream::Config {
        name: JOBS_STREAM.into(),
        subjects: JOBS_STREAM_SUBJECTS.iter().map(|s| s.to_string()).collect(),
        retention: stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(600),
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The event stream's configuration: kept a week, so a job's history can be replayed.
pub fn events_stream() -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.into(),
        subjects: EVENTS_STREAM_SUBJECTS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(7 * 24 * 3600),
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The dead-letter stream's configuration: job events the registry gave up on, kept 30 days.
pub fn dead_events_stream() -> stream::Config {
    stream::Config {
        name: DEAD_EVENTS_STREAM.into(),
        subjects: DEAD_EVENTS_STREAM_SUBJECTS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        retention: stream::RetentionPolicy::Limits,
        max_age: Duration::from_secs(30 * 24 * 3600),
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The durable pull consumer of training jobs for `driver`.
pub fn train_consumer(driver: JobDriver) -> consumer::pull::Config {
    job_consumer(jobs::train_consumer(driver), jobs::train_subject(driver))
}

/// The durable pull consumer of analysis jobs for `driver`.
pub fn analyze_consumer(driver: JobDriver) -> consumer::pull::Config {
    job_consumer(
        jobs::analyze_consumer(driver),
        jobs::analyze_subject(driver),
    )
}

fn job_consumer(name: String, filter_subject: String) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.clone()),
        name: Some(name),
        filter_subject,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(ACK_WAIT_SECS),
        max_deliver: MAX_DELIVER,
        // A crashed trainer's job comes back after AckWait; a nak'd one after a short pause.
        backoff: vec![],
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// The most bytes each object store may hold (`GANTRY_*_MAX_GB`). A full store refuses new
/// objects (its stream discards new messages): nothing already stored is ever evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketLimits {
    /// Dataset snapshots.
    pub datasets: u64,
    /// Listed models' weights.
    pub models: u64,
    /// The nodes' uploads: weights and checkpoints.
    pub uploads: u64,
    /// How many servers of a NATS cluster keep each stream and object store, when they are
    /// created (`GANTRY_STREAM_REPLICAS`; 3 in production, 1 on a single server).
    pub replicas: usize,
}

impl BucketLimits {
    /// From the configuration.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            datasets: config.datasets_max_bytes,
            models: config.models_max_bytes,
            uploads: config.uploads_max_bytes,
            replicas: config.stream_replicas,
        }
    }
}

/// Give the object store `bucket` at most `max_bytes`, refusing new objects when full.
async fn bound_bucket(js: &jetstream::Context, bucket: &str, max_bytes: u64) -> anyhow::Result<()> {
    let name = format!("OBJ_{bucket}");
    let mut stream = js
        .get_stream(&name)
        .await
        .with_context(|| format!("finding {name}"))?;
    let info = stream.info().await?;
    let (mut config, used) = (info.config.clone(), info.state.bytes);
    let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
    if used > max_bytes {
        // Lowering the bound below what is stored would make the server drop stored objects.
        tracing::warn!(
            stream = name,
            used,
            max_bytes,
            "the object store holds more than its bound; the bound is left as it is"
        );
        return Ok(());
    }
    if config.max_bytes != max || config.discard != jetstream::stream::DiscardPolicy::New {
        config.max_bytes = max;
        config.discard = jetstream::stream::DiscardPolicy::New;
        js.update_stream(config)
            .await
            .with_context(|| format!("bounding {name} to {max_bytes} bytes"))?;
    }
    Ok(())
}

/// Create (or find) the streams, the training consumers and the object stores (bounded as
/// `limits` says).
/// Streams that exist keep their replica count: change it with `nats stream edit --replicas`.
pub async fn ensure(js: &jetstream::Context, limits: &BucketLimits) -> anyhow::Result<()> {
    let replicated = |config: stream::Config| stream::Config {
        num_replicas: limits.replicas.max(1),
        ..config
    };
    let jobs = js
        .get_or_create_stream(replicated(jobs_stream()))
        .await
        .context("creating the GANTRY_JOBS stream")?;
    let mut events = js
        .get_or_create_stream(replicated(events_stream()))
        .await
        .context("creating the GANTRY_EVENTS stream")?;
    // Streams made before events named their node in the subject take the new subjects.
    let info = events.info().await?;
    if info.config.subjects != events_stream().subjects {
        js.update_stream(stream::Config {
            num_replicas: info.config.num_replicas,
            ..events_stream()
        })
        .await
        .context("updating the GANTRY_EVENTS stream's subjects")?;
    }
    js.get_or_create_stream(replicated(dead_events_stream()))
        .await
        .context("creating the GANTRY_DEAD_EVENTS stream")?;
    for driver in JobDriver::ALL {
        jobs.get_or_create_consumer(&jobs::train_consumer(driver), train_consumer(driver))
            .await
            .with_context(|| format!("creating the {} consumer", jobs::train_consumer(driver)))?;
        jobs.get_or_create_consumer(&jobs::analyze_consumer(driver), analyze_consumer(driver))
            .await
            .with_context(|| format!("creating the {} consumer", jobs::analyze_consumer(driver)))?;
    }
    for (bucket, max) in [
        (DATASETS_BUCKET, limits.datasets),
        (MODELS_BUCKET, limits.models),
        (UPLOADS_BUCKET, limits.uploads),
    ] {
        bucket_store_with(js, bucket, limits.replicas).await?;
        // A bound the server refuses (more than the JetStream storage it has, say) leaves the
        // store bounded by that storage alone: said, not fatal.
        if let Err(e) = bound_bucket(js, bucket, max).await {
            tracing::warn!(
                bucket,
                max_bytes = max,
                error = format!("{e:#}"),
                "could not bound the object store"
            );
        }
    }
    Ok(())
}

/// An object store, created when missing.
pub async fn bucket_store(
    js: &jetstream::Context,
    bucket: &str,
) -> anyhow::Result<object_store::ObjectStore> {
    bucket_store_with(js, bucket, 1).await
}

/// An object store, created with `replicas` when missing.
async fn bucket_store_with(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> anyhow::Result<object_store::ObjectStore> {
    match js.get_object_store(bucket).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.into(),
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating object store {bucket}")),
    }
}

/// Store `data` under `key` in `bucket` (created if missing), replacing what was there.
pub async fn put_object(
    js: &jetstream::Context,
    bucket: &str,
    key: &str,
    data: &mut (impl tokio::io::AsyncRead + Unpin),
) -> anyhow::Result<()> {
    bucket_store(js, bucket)
        .await?
        .put(key, data)
        .await
        .map_err(|e| anyhow::anyhow!("storing {key} in {bucket}: {e}"))?;
    Ok(())
}

/// [`ensure`] until it succeeds (NATS may come up after the service), or `shutdown` fires.
pub async fn ensure_with_retry(
    js: &jetstream::Context,
    limits: &BucketLimits,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    crate::retry::until_ready("JetStream set-up", shutdown, || ensure(js, limits))
        .await
        .is_some()
}
