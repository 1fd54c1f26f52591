//! Load check for the registry's job-event consumer: record J queued jobs, publish their events
//! interleaved as J concurrently running jobs would (started, progress ..., completed), and time
//! how fast the registry applies them all. The figure that matters is events per second against
//! the store's own sequential read-then-write rate (what applying one event at a time, in order,
//! is bound by), measured in the same run as the baseline.
//!
//! Run through `bench/events_load.sh`, which starts NATS, the store and release registries.

use sha2::Digest as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Parser;
use futures::StreamExt;
use gantry_contracts::jobs::{
    self, JobDriver, JobEvent, JobEventKind, JobList, JobQuery, JobRecord, JobStatus, ModelVersion,
    TrainJob, TrainParams,
};
use gantry_contracts::subjects;
use gantry_runtime::nats::request;
use mongodb::bson::doc;

#[derive(Parser)]
#[command(about = "Time how fast the registry applies job events")]
struct Args {
    /// NATS server.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The store, for the baseline.
    #[arg(
        long,
        env = "MONGODB_URI",
        default_value = "mongodb://127.0.0.1:27017/?directConnection=true"
    )]
    mongodb_uri: String,
    /// Jobs running at once.
    #[arg(long, default_value_t = 100)]
    jobs: usize,
    /// Events per job (started, progress ..., completed); at least 2.
    #[arg(long, default_value_t = 20)]
    events_per_job: usize,
    /// Read-then-write round trips for the store baseline.
    #[arg(long, default_value_t = 1000)]
    baseline_ops: usize,
}

fn record(job_id: &str) -> JobRecord {
    let job = TrainJob {
        job_id: job_id.into(),
        user_id: 1,
        output_model: format!("load-{job_id}"),
        description: "events load".into(),
        driver: JobDriver::Cpu,
        dataset_hash: "0".repeat(64),
        classes: vec!["a".into(), "b".into()],
        params: TrainParams::default(),
        submitted_at: Utc::now(),
    };
    JobRecord::queued(&job, "/load", 0)
}

/// The `step`th of `n` events of a job.
/// The weights every load job completes with.
const WEIGHTS: &[u8] = b"load-test weights";

fn event(job_id: &str, step: usize, n: usize) -> JobEvent {
    let kind = if step == 0 {
        JobEventKind::Started {
            node: "load-node".into(),
            node_id: "load-node-id".into(),
            driver: "cpu".into(),
            resumed_from_epoch: 0,
        }
    } else if step + 1 == n {
        JobEventKind::Completed {
            model: Box::new(ModelVersion {
                name: String::new(),
                version: 0,
                user_id: 1,
                job_id: job_id.into(),
                weights_key: jobs::weights_key(job_id, 1),
                card: jobs::ModelCard {
                    weights_sha256: hex::encode(sha2::Sha256::digest(WEIGHTS)),
                    weights_bytes: WEIGHTS.len() as u64,
                    ..Default::default()
                },
                val_accuracy: 0.9,
                created_at: Utc::now().into(),
            }),
        }
    } else {
        JobEventKind::Progress {
            epoch: step as u32,
            epochs: n as u32,
            step: step as u64,
            total_steps: n as u64,
            loss: 1.0 / step as f64,
            train_accuracy: 0.5,
            val_accuracy: None,
            samples_per_sec: 1000.0,
            eta_seconds: (n - step) as f64,
        }
    };
    JobEvent {
        job_id: job_id.into(),
        delivery: 1,
        at: Utc::now(),
        kind,
    }
}

/// The store's own rate for what applying one event costs it: read a document, write it back.
async fn store_baseline(uri: &str, ops: usize) -> anyhow::Result<f64> {
    let client = mongodb::Client::with_uri_str(uri).await?;
    let coll = client
        .database("events_load_baseline")
        .collection::<mongodb::bson::Document>("docs");
    coll.drop().await.ok();
    let body = serde_json::to_string(&record("baseline"))?;
    coll.insert_one(doc! { "_id": 0, "n": 0_i64, "body": &body })
        .await?;
    let started = Instant::now();
    for i in 0..ops {
        let d = coll
            .find_one(doc! { "_id": 0 })
            .await?
            .context("the baseline document vanished")?;
        let n = d.get_i64("n").unwrap_or(0);
        coll.replace_one(
            doc! { "_id": 0, "n": n },
            doc! { "_id": 0, "n": n + 1, "body": &body, "i": i as i64 },
        )
        .await?;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.events_per_job >= 2,
        "--events-per-job must be at least 2"
    );
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(args.nats_url.as_str())
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = loop {
        match js.get_stream(jobs::EVENTS_STREAM).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };

    let baseline = store_baseline(&args.mongodb_uri, args.baseline_ops).await?;

    let run = Utc::now().timestamp_millis();
    let ids: Vec<String> = (0..args.jobs).map(|i| format!("load-{run}-{i}")).collect();
    futures::stream::iter(ids.iter())
        .map(|id| {
            let client = client.clone();
            async move {
                request::<_, JobRecord>(
                    &client,
                    subjects::registry(jobs::subjects::JOBS_CREATE),
                    &record(id),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("recording the jobs: {e}"))?;
    // Each job's weights, as a trainer uploads them: the registry checks and copies them
    // before it lists the version.
    let uploads = gantry_runtime::jetstream::bucket_store(&js, jobs::UPLOADS_BUCKET).await?;
    for id in &ids {
        uploads
            .put(jobs::weights_key(id, 1).as_str(), &mut &WEIGHTS[..])
            .await
            .map_err(|e| anyhow::anyhow!("uploading weights: {e}"))?;
    }

    // Interleaved, as concurrently running jobs publish them.
    let total = args.jobs * args.events_per_job;
    let started = Instant::now();
    let mut acks = Vec::with_capacity(total);
    for step in 0..args.events_per_job {
        for id in &ids {
            let payload = serde_json::to_vec(&event(id, step, args.events_per_job))?;
            acks.push(
                js.publish(jobs::event_subject("load-node-id", id), payload.into())
                    .await?,
            );
        }
    }
    for ack in acks {
        ack.await?;
    }
    let published = started.elapsed();

    // Applied when the registry's consumer has nothing pending and nothing unacknowledged.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(jobs::EVENTS_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let info = consumer.info().await?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the registry did not catch up in 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let applied = started.elapsed();
    let rate = total as f64 / applied.as_secs_f64();

    // In order, all of them: every job ends completed.
    let done: JobList = request(
        &client,
        subjects::registry(jobs::subjects::JOBS_LIST),
        &JobQuery {
            status: Some(JobStatus::Completed),
            limit: Some(1),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("listing jobs: {e}"))?;

    println!("jobs                    {}", args.jobs);
    println!(
        "events                  {total} ({} per job, interleaved)",
        args.events_per_job
    );
    println!("published in            {:.2} s", published.as_secs_f64());
    println!("applied in              {:.2} s", applied.as_secs_f64());
    println!("registry events/s       {rate:.0}");
    println!("store read+write/s      {baseline:.0} (baseline, same store, sequential)");
    println!("ratio                   {:.2}", rate / baseline);
    println!("jobs completed          {} of {}", done.total, args.jobs);
    // The row bench/run.sh tabulates: applied events against the store's own sequential rate
    // (what applying one event at a time, in order, is bound by).
    println!(
        "ROW\tjob events applied/s ({} registry replicas), store's sequential read+write/s\t{rate:.0}\t{baseline:.0}\t{:.2}",
        std::env::var("REPLICAS").unwrap_or_else(|_| "1".into()),
        rate / baseline
    );
    println!(
        "supports about          {:.0} running jobs at one progress event every 2 s",
        rate * 2.0
    );
    anyhow::ensure!(
        done.total as usize >= args.jobs,
        "only {} of {} jobs ended completed",
        done.total,
        args.jobs
    );
    Ok(())
}
