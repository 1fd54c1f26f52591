//! The reconciler: one registry replica at a time (the holder of a lease in a JetStream key-value
//! bucket) looks over the jobs every `GANTRY_RECONCILE_INTERVAL` and settles what no event will
//! come back for: a job that is over with its refund still due (the refund and every retry of it
//! failed while auth was away, say), and a queued or running job untouched for
//! `GANTRY_RECONCILE_GRACE`, held by no connected node, whose queue message is gone or was
//! delivered for the last time (failed as exhausted, refunded); charges made more than the
//! grace ago that no job was recorded for (refunded); and dataset snapshots no queued
//! or running job uses, older than `GANTRY_DATASET_RETENTION`. What it fixes is counted in
//! `gantry_registry_reconciled_total` and logged.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use gantry_runtime::retry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::Jobs;

/// The bucket holding the reconciler's lease.
pub const LEASE_BUCKET: &str = "gantry-registry-leases";
/// The lease's key.
const LEASE_KEY: &str = "reconciler";
/// How long giving the lease up at shutdown may take.
const RELEASE_WITHIN: Duration = Duration::from_secs(2);

/// Who holds the lease, as this replica tries to take or keep it.
struct Lease {
    kv: kv::Store,
    me: String,
}

impl Lease {
    /// The lease bucket; a lease not renewed for three intervals lapses, so another replica
    /// takes over from one that died.
    async fn open(js: &jetstream::Context, interval: Duration) -> anyhow::Result<Self> {
        // As many replicas as the job stream (GANTRY_STREAM_REPLICAS): the lease outlives a server.
        let replicas = match js.get_stream(gantry_contracts::jobs::JOBS_STREAM).await {
            Ok(mut jobs) => jobs.info().await.map_or(1, |i| i.config.num_replicas),
            Err(_) => 1,
        };
        let config = kv::Config {
            bucket: LEASE_BUCKET.into(),
            history: 1,
            max_age: interval * 3,
            num_replicas: replicas.max(1),
            ..Default::default()
        };
        let kv = match js.get_key_value(LEASE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js.create_key_value(config).await?,
        };
        Ok(Self {
            kv,
            me: gantry_runtime::secrets::random_hex(16),
        })
    }

    /// Take the lease if nobody holds it, or renew it if this replica does; false otherwise.
    async fn hold(&self) -> bool {
        if self
            .kv
            .create(LEASE_KEY, self.me.clone().into())
            .await
            .is_ok()
        {
            return true;
        }
        match self.kv.entry(LEASE_KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put && e.value == self.me.as_bytes() => {
                self.kv
                    .update(LEASE_KEY, self.me.clone().into(), e.revision)
                    .await
                    .is_ok()
            }
            // Deleted or purged (the holder stopped): take it over at that revision.
            Ok(Some(e)) if e.operation != kv::Operation::Put => self
                .kv
                .update(LEASE_KEY, self.me.clone().into(), e.revision)
                .await
                .is_ok(),
            _ => false,
        }
    }

    /// Give the lease up (on shutdown), so another replica takes over at once. Bounded: with
    /// NATS gone the lease simply expires, and SIGTERM must still stop the process promptly.
    async fn release(&self) {
        let give_up = async {
            if let Ok(Some(e)) = self.kv.entry(LEASE_KEY).await {
                if e.value == self.me.as_bytes() {
                    let _ = self
                        .kv
                        .delete_expect_revision(LEASE_KEY, Some(e.revision))
                        .await;
                }
            }
        };
        if tokio::time::timeout(RELEASE_WITHIN, give_up).await.is_err() {
            tracing::warn!("could not give the reconciler's lease up; it expires on its own");
        }
    }
}

/// Run the reconciler until `shutdown`.
pub fn start(
    jobs: Jobs,
    interval: Duration,
    grace: Duration,
    retention: Duration,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    tracker.spawn(async move {
        let js = jetstream::new(jobs.registry().client().clone());
        let Some(lease) = retry::until_ready("opening the reconciler's lease", &shutdown, || {
            Lease::open(&js, interval)
        })
        .await
        else {
            return;
        };
        loop {
            let round = async {
                if lease.hold().await && jobs.registry().is_settled() {
                    match jobs.settle_refunds_due().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(jobs = n, "reconciler settled jobs left unsettled"),
                        Err(e) => tracing::warn!(error = %e, "reconciling jobs failed; tried again next round"),
                    }
                    match jobs.settle_lost_jobs(grace).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(jobs = n, "reconciler settled jobs nothing would finish"),
                        Err(e) => tracing::warn!(error = %e, "reconciling lost jobs failed; tried again next round"),
                    }
                    if let Err(e) = jobs.refund_orphan_charges(grace).await {
                        tracing::warn!(error = %e, "refunding charges with no job failed; tried again next round");
                    }
                    if let Err(e) = jobs.remove_unused_datasets(retention).await {
                        tracing::warn!(error = %e, "removing unused dataset snapshots failed; tried again next round");
                    }
                }
            };
            // A round waiting on a NATS that is gone must not hold up shutdown; every write in
            // it is conditional, so one cut short is simply done again by the next holder.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = round => {}
            }
            if !retry::pause(&shutdown, interval).await {
                break;
            }
        }
        lease.release().await;
    });
}
