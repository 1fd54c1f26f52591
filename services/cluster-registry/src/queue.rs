//! The training queue's depth per driver, sampled for `gantry_queue_jobs{driver, state}`: jobs
//! waiting for a node (`waiting`) and jobs a node holds (`delivered`), as each driver's
//! JetStream consumer counts them. Every replica samples; the figures are the queue's, not the
//! replica's, so any replica's answer will do.

use std::time::Duration;

use gantry_contracts::jobs::{self, JobDriver};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Sample every `every` until `shutdown`.
pub fn start(
    client: async_nats::Client,
    every: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let js = async_nats::jetstream::new(client);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Bounded, and given up at shutdown: a bus that is away must not hold up the exit.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::timeout(every.max(Duration::from_secs(1)), sample(&js)) => {}
            }
        }
    });
}

async fn sample(js: &async_nats::jetstream::Context) {
    let Ok(stream) = js.get_stream(jobs::JOBS_STREAM).await else {
        return;
    };
    for driver in JobDriver::ALL {
        let Ok(info) = stream.consumer_info(jobs::train_consumer(driver)).await else {
            continue;
        };
        let gauge = &gantry_runtime::metrics::QUEUE_JOBS;
        gauge
            .with_label_values(&[driver.as_str(), "waiting"])
            .set(info.num_pending as i64);
        gauge
            .with_label_values(&[driver.as_str(), "delivered"])
            .set(info.num_ack_pending as i64);
    }
}
