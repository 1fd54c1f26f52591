//! The job workers of this node: the pull loop and the worker slots. Jobs come from the job
//! consumer of the node's backend and from `train-any`; each runs in a slot of its own
//! ([`crate::run`]), and cancels, drains, driver changes and shutdown reach it through its
//! [`JobControl`].
//!
//! [`Workers::run`] asks for at most as many jobs as there are free worker slots, with no-wait
//! pulls: one consumer at a time, at once when the api announces a job for it
//! ([`contract::queued_subject`]) or a slot frees, and every [`LOOK_EVERY`] otherwise. No pull is
//! ever left waiting at the server, so a job never sits in a message this node cannot start (no
//! hand-back, which would spend one of its [`contract::MAX_DELIVER`] deliveries), and a changed
//! [`WorkerPlan`] (another driver, a drain) takes effect at once. A message that arrives after the
//! plan stopped wanting it is handed back at once (nak).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use async_nats::Client;
use futures::StreamExt;
use gantry_contracts::jobs::{
    self as contract, JobDriver, TrainJob, CANCEL_SUBJECTS, JOBS_STREAM, QUEUED_SUBJECTS,
};
use gantry_contracts::registry::Driver;
use gantry_runtime::retry;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::cache::DatasetCache;
use crate::control::JobControl;
use crate::node::WorkerPlan;
use crate::run::{JobRunner, RunnerConfig};

/// How often a node with a free slot looks at its consumers unasked: for jobs handed back or
/// redelivered (those are not announced) and announcements it missed.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long shutdown waits for jobs in flight to hand their messages back.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// What the workers need to know about this node.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The node's name (events and model cards).
    pub node_name: String,
    /// The node's id (`Started` events).
    pub node_id: String,
    /// Where dataset snapshots are cached (`<cache_dir>/datasets/<hash>/`).
    pub cache_dir: PathBuf,
    /// The cache's budget in bytes; least recently used snapshots go beyond it.
    pub cache_max_bytes: u64,
    /// libtorch intra-op threads per job.
    pub threads: usize,
}

/// libtorch threads per job: the node's CPUs shared by its worker slots.
pub fn threads_per_job(cpus: usize, workers: usize) -> usize {
    (cpus / workers.max(1)).max(1)
}

/// The job consumer serving a backend.
pub fn job_driver(driver: Driver) -> JobDriver {
    match driver {
        Driver::Cuda => JobDriver::Cuda,
        Driver::Rocm => JobDriver::Rocm,
        Driver::Cpu => JobDriver::Cpu,
    }
}

/// The job id of a cancel announced on [`contract::cancel_subject`].
pub fn cancelled_job_id(subject: &str) -> Option<&str> {
    let id = subject
        .strip_prefix("gantry.control.job.")?
        .strip_suffix(".cancel")?;
    (!id.is_empty() && !id.contains('.')).then_some(id)
}

/// The next announcement of a queued job, as the driver it names (others are skipped); `None`
/// when the subscription ended. Pending forever without one.
async fn next_announcement(queued: &mut Option<async_nats::Subscriber>) -> Option<JobDriver> {
    let Some(sub) = queued.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let m = sub.next().await?;
        if let Some(driver) = contract::queued_driver(&m.subject) {
            return Some(driver);
        }
    }
}

/// Whether a message that arrived from `consumer` is still wanted under `plan`.
pub fn wanted(plan: &WorkerPlan, consumer: JobDriver) -> bool {
    plan.accepting && (consumer == JobDriver::Any || consumer == job_driver(plan.driver))
}

/// The job consumers of this node; cheap to clone.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    runner: JobRunner,
    /// Per worker slot: the model it trains (shared with the heartbeats).
    busy: Arc<Mutex<Vec<Option<String>>>>,
    /// Woken when a slot is taken or freed, so the node heartbeats at once.
    busy_changed: Arc<Notify>,
    /// Woken when a slot is freed, so the pull loop asks for more.
    slot_freed: Notify,
    /// Jobs in flight, by a serial (the same job may run twice here after a lost lease).
    running: Mutex<HashMap<u64, (String, Arc<JobControl>)>>,
    serial: AtomicU64,
}

/// A taken worker slot; freed on drop.
struct Slot {
    workers: Workers,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.workers.inner;
        if let Some(s) = lock(&inner.busy).get_mut(self.index) {
            *s = None;
        }
        inner.slot_freed.notify_one();
        inner.busy_changed.notify_one();
    }
}

/// A job's entry in the cancel table; removed on drop.
struct Registration {
    workers: Workers,
    serial: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.workers.inner.running).remove(&self.serial);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workers {
    /// Workers over `busy` (one entry per slot, shared with the heartbeats). Opens the dataset
    /// cache, which finishes the evictions a crash interrupted.
    pub fn new(
        client: Client,
        config: WorkerConfig,
        busy: Arc<Mutex<Vec<Option<String>>>>,
        busy_changed: Arc<Notify>,
    ) -> Self {
        let js = jetstream::new(client.clone());
        let cache = DatasetCache::open(js.clone(), &config.cache_dir, config.cache_max_bytes);
        let runner = JobRunner::new(
            client.clone(),
            RunnerConfig {
                node_name: config.node_name,
                node_id: config.node_id,
                threads: config.threads,
            },
            cache,
        );
        Self {
            inner: Arc::new(Inner {
                client,
                js,
                runner,
                busy,
                busy_changed,
                slot_freed: Notify::new(),
                running: Mutex::new(HashMap::new()),
                serial: AtomicU64::new(0),
            }),
        }
    }

    /// The node's dataset cache (analysis jobs fetch their images through it too).
    pub fn datasets(&self) -> DatasetCache {
        self.inner.runner.datasets()
    }

    fn free_slots(&self) -> usize {
        lock(&self.inner.busy)
            .iter()
            .filter(|s| s.is_none())
            .count()
    }

    fn take_slot(&self, model: &str) -> Option<Slot> {
        let index = {
            let mut busy = lock(&self.inner.busy);
            let index = busy.iter().position(Option::is_none)?;
            busy[index] = Some(model.to_owned());
            index
        };
        self.inner.busy_changed.notify_one();
        Some(Slot {
            workers: self.clone(),
            index,
        })
    }

    fn register(&self, job_id: &str) -> (Registration, Arc<JobControl>) {
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(JobControl::default());
        lock(&self.inner.running).insert(serial, (job_id.to_owned(), control.clone()));
        (
            Registration {
                workers: self.clone(),
                serial,
            },
            control,
        )
    }

    /// Set the cancel flag of every run of `job_id` here; true when one was found.
    pub fn cancel(&self, job_id: &str) -> bool {
        let running = lock(&self.inner.running);
        let mut found = false;
        for (id, control) in running.values() {
            if id == job_id {
                control.cancel();
                found = true;
            }
        }
        found
    }

    /// Stop every job in flight and hand it back (nak at once; its last checkpoint stays for the
    /// node that takes it next), without stopping the node: the registry asked, because the node
    /// drained itself to stop ([`gantry_contracts::registry::NodeControl::HandBack`]). Returns how
    /// many jobs were asked to stop.
    pub fn hand_back(&self) -> usize {
        let in_flight: Vec<Arc<JobControl>> = lock(&self.inner.running)
            .values()
            .map(|(_, c)| c.clone())
            .collect();
        for control in &in_flight {
            control.stop();
        }
        in_flight.len()
    }

    /// Pull and train until `shutdown`; then stop the jobs in flight, hand their messages back and
    /// return within [`SHUTDOWN_GRACE`].
    /// The streams and consumers are the registry's and the api's to create (a node may only
    /// read them); until they exist, pulls fail and are retried.
    ///
    /// The node never waits on a pull: it asks a consumer only for what it holds now (a no-wait
    /// pull of at most the free slots, one consumer at a time), so it can never be handed more
    /// jobs than it can start and has no request outstanding when the plan changes or it stops.
    /// It asks when the api announces a job for a consumer it serves
    /// ([`contract::queued_subject`]), when a slot frees, when the plan changes, and every
    /// [`LOOK_EVERY`] (for redeliveries and missed announcements).
    pub async fn run(self, mut plan: watch::Receiver<WorkerPlan>, shutdown: CancellationToken) {
        let cancels =
            AbortOnDropHandle::new(tokio::spawn(self.clone().follow_cancels(shutdown.clone())));
        let tracker = TaskTracker::new();
        let mut consumers: HashMap<JobDriver, PullConsumer> = HashMap::new();
        let mut queued = match self.inner.client.subscribe(QUEUED_SUBJECTS).await {
            Ok(sub) => Some(sub),
            Err(e) => {
                tracing::warn!(error = %e, "not hearing of queued jobs; looking every second");
                None
            }
        };
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Which consumers to ask next; all of them at first.
        let mut look: Vec<JobDriver> = JobDriver::ALL.to_vec();
        let mut turn = 0usize;
        tracing::info!(slots = lock(&self.inner.busy).len(), "taking training jobs");
        'run: loop {
            if shutdown.is_cancelled() {
                break;
            }
            let current = plan.borrow_and_update().clone();
            // The node's backend and `any`, in turns, so neither goes first every time.
            let mut order = [job_driver(current.driver), JobDriver::Any];
            if turn % 2 == 1 {
                order.reverse();
            }
            turn = turn.wrapping_add(1);
            let mut failed = false;
            for driver in order {
                if !look.contains(&driver) || !wanted(&current, driver) {
                    continue;
                }
                let free = self.free_slots();
                if free == 0 {
                    break;
                }
                // With NATS gone a request waits for its timeout; a shutdown must not.
                let pulled = tokio::select! {
                    _ = shutdown.cancelled() => break 'run,
                    r = self.pull(&mut consumers, driver, free, &plan, &shutdown, &tracker) => r,
                };
                if let Err(e) = pulled {
                    consumers.remove(&driver);
                    failed = true;
                    tracing::warn!(
                        consumer = contract::train_consumer(driver),
                        error = format!("{e:#}"),
                        "pulling jobs failed; retrying"
                    );
                }
            }
            look.clear();
            if failed && !retry::pause(&shutdown, Duration::from_secs(1)).await {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = plan.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    look = JobDriver::ALL.to_vec();
                }
                _ = self.inner.slot_freed.notified() => look = JobDriver::ALL.to_vec(),
                _ = tick.tick() => look = JobDriver::ALL.to_vec(),
                m = next_announcement(&mut queued) => match m {
                    Some(driver) => look.push(driver),
                    // The client is gone for good: the ticks go on.
                    None => queued = None,
                },
            }
            // Announcements that came meanwhile are answered by the same look.
            while let Some(sub) = queued.as_mut() {
                match futures::FutureExt::now_or_never(sub.next()) {
                    Some(Some(m)) => look.extend(contract::queued_driver(&m.subject)),
                    Some(None) => queued = None,
                    None => break,
                }
            }
        }

        let in_flight: Vec<Arc<JobControl>> = lock(&self.inner.running)
            .values()
            .map(|(_, c)| c.clone())
            .collect();
        if !in_flight.is_empty() {
            tracing::info!(
                jobs = in_flight.len(),
                "stopping: handing the jobs in flight back"
            );
        }
        for control in in_flight {
            control.stop();
        }
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "jobs in flight did not hand back in time; they return to the queue after AckWait"
            );
        }
        drop(cancels);
    }

    async fn consumer(
        &self,
        consumers: &mut HashMap<JobDriver, PullConsumer>,
        driver: JobDriver,
    ) -> anyhow::Result<PullConsumer> {
        if let Some(c) = consumers.get(&driver) {
            return Ok(c.clone());
        }
        let name = contract::train_consumer(driver);
        let stream = self
            .inner
            .js
            .get_stream(JOBS_STREAM)
            .await
            .context("looking up the job stream")?;
        let consumer: PullConsumer = stream
            .get_consumer(&name)
            .await
            .map_err(|e| anyhow::anyhow!("looking up consumer {name}: {e}"))?;
        consumers.insert(driver, consumer.clone());
        Ok(consumer)
    }

    /// One no-wait pull of at most `free` jobs from `driver`'s consumer: what it holds now, each
    /// started as it arrives. The batch is read to its end, so no message is left delivered to
    /// nobody.
    async fn pull(
        &self,
        consumers: &mut HashMap<JobDriver, PullConsumer>,
        driver: JobDriver,
        free: usize,
        plan: &watch::Receiver<WorkerPlan>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> anyhow::Result<()> {
        let consumer = self.consumer(consumers, driver).await?;
        let mut batch = consumer
            .fetch()
            .max_messages(free)
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("asking for jobs: {e}"))?;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!("receiving jobs: {e}"))?;
            self.accept(msg, driver, plan, shutdown, tracker).await;
        }
        Ok(())
    }

    async fn accept(
        &self,
        msg: jetstream::Message,
        consumer: JobDriver,
        plan: &watch::Receiver<WorkerPlan>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let current = plan.borrow().clone();
        if shutdown.is_cancelled() || !wanted(&current, consumer) {
            // Asked for while wanted; the plan changed on the way. Another node takes it now.
            tracing::info!(
                consumer = contract::train_consumer(consumer),
                "handing back a job that arrived after the plan changed"
            );
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
        let job: TrainJob = match serde_json::from_slice(&msg.payload) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(error = %e, subject = %msg.subject, "dropping an unreadable job message");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let Some(slot) = self.take_slot(&job.output_model) else {
            // Cannot happen (we never ask for more than the free slots), but never hold it.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        };
        // Registered before the run asks the registry: a cancel recorded after the answer still
        // reaches this run.
        let (registration, control) = self.register(&job.job_id);
        let runner = self.inner.runner.clone();
        tracker.spawn(async move {
            runner.run(msg, job, current.driver, control).await;
            drop(registration);
            drop(slot);
        });
    }

    async fn follow_cancels(self, shutdown: CancellationToken) {
        let client = self.inner.client.clone();
        let Some(mut sub) = retry::until_ready("subscribing to cancels", &shutdown, || {
            client.subscribe(CANCEL_SUBJECTS)
        })
        .await
        else {
            return;
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            if let Some(job_id) = cancelled_job_id(&msg.subject) {
                if self.cancel(job_id) {
                    tracing::info!(job_id, "cancel received: stopping the job");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_subjects_name_the_job() {
        assert_eq!(
            cancelled_job_id(&contract::cancel_subject("abc-123")),
            Some("abc-123")
        );
        assert_eq!(cancelled_job_id("gantry.control.job..cancel"), None);
        assert_eq!(cancelled_job_id("gantry.control.job.a.b.cancel"), None);
        assert_eq!(cancelled_job_id("gantry.jobs.train.cpu"), None);
    }

    #[test]
    fn a_node_pulls_its_backend_and_any_unless_drained_or_unavailable() {
        let plan = WorkerPlan {
            driver: Driver::Cpu,
            accepting: true,
        };
        assert!(wanted(&plan, JobDriver::Cpu));
        assert!(wanted(&plan, JobDriver::Any));
        assert!(!wanted(&plan, JobDriver::Cuda));
        let moved = WorkerPlan {
            driver: Driver::Cuda,
            accepting: true,
        };
        assert!(wanted(&moved, JobDriver::Cuda) && !wanted(&moved, JobDriver::Cpu));
        let drained = WorkerPlan {
            driver: Driver::Cpu,
            accepting: false,
        };
        assert!(!wanted(&drained, JobDriver::Cpu) && !wanted(&drained, JobDriver::Any));
    }

    #[test]
    fn threads_are_shared_between_slots() {
        assert_eq!(threads_per_job(16, 4), 4);
        assert_eq!(threads_per_job(2, 4), 1);
        assert_eq!(threads_per_job(8, 0), 8);
    }
}
