//! The node side of the cluster: join with the cluster token, heartbeat, follow control messages
//! (driver choice, drain, leave), and re-register by itself after a network loss.
//!
//! What the workers should do is published on a [`tokio::sync::watch`] channel
//! ([`WorkerPlan`]): the job consumers (training issue) follow it to move to another backend's
//! queue or stop taking work when drained.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::Client;
use futures::StreamExt;
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::registry::{
    plan_analysis_processes, plan_processes, AnalysisSlot, Driver, Heartbeat, Inventory,
    NodeControl, NodeName, NodeSettings, RegisterNode, Registered,
};
use gantry_contracts::subjects;
use gantry_runtime::retry;
use gantry_runtime::{nats, Config};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{watch, Notify};

use crate::health::Health;
use tokio_util::sync::CancellationToken;

/// What the workers do now: which backend's jobs they take, and whether they take any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    /// The backend the workers run on (the preference, or the best one the node has).
    pub driver: Driver,
    /// False when drained or when the chosen backend is missing: take no new job.
    pub accepting: bool,
}

/// Who this node is and what it offers.
pub struct NodeConfig {
    /// The node name.
    pub hostname: NodeName,
    /// The address it reaches the cluster from.
    pub ip_address: String,
    /// Node weight.
    pub weight: u32,
    /// Worker slots.
    pub workers: u32,
    /// Analysis workers.
    pub analysis_workers: u32,
    /// The cluster token.
    pub token: SecretString,
    /// Seconds between heartbeats.
    pub heartbeat_interval: Duration,
}

/// Why joining stopped for good (as opposed to "try again later").
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The registry refused the token (unknown or revoked) or the request: exit non-zero.
    #[error("the registry refused this node: {0}")]
    Refused(String),
    /// Shutdown was requested while waiting for the registry.
    #[error("stopped while joining")]
    Stopped,
}

/// A joined node's running state.
pub struct Node {
    client: Client,
    config: NodeConfig,
    inventory: Inventory,
    started: Instant,
    node_id: String,
    settings: NodeSettings,
    /// Per worker: the model it trains, or `None` when idle (filled by the job consumers).
    busy: Arc<Mutex<Vec<Option<String>>>>,
    /// Per analysis worker: busy or not, and the model it holds (filled by [`crate::analysis`]).
    analysis: Arc<Mutex<Vec<AnalysisSlot>>>,
    /// Woken by the job consumers when a slot is taken or freed: heartbeat at once.
    busy_changed: Arc<Notify>,
    /// The GPUs' figures and the node's health check, as last read.
    health: watch::Receiver<Health>,
    plan: watch::Sender<WorkerPlan>,
    /// Woken when the registry asks for the jobs in flight back ([`NodeControl::HandBack`]).
    hand_back: Arc<Notify>,
}

/// The node name: `GANTRY_NODE_NAME`, else the hostname.
pub fn node_name(config: &Config) -> anyhow::Result<NodeName> {
    let name = config
        .node_name
        .clone()
        .or_else(sysinfo::System::host_name)
        .unwrap_or_else(|| "localhost".into());
    NodeName::parse(&name).map_err(|e| anyhow::anyhow!("invalid GANTRY_NODE_NAME={name:?}: {e}"))
}

/// Where dataset snapshots are cached: `GANTRY_CACHE_DIR`, else `<tmp>/gantry-trainer-<node>`.
pub fn cache_dir(config: &Config, node: &NodeName) -> PathBuf {
    config
        .cache_dir
        .clone()
        .unwrap_or_else(|| crate::cache::default_cache_dir(node.as_ref()))
}

/// The address of the interface that routes to the NATS server (no packet is sent).
pub fn local_ip(nats_url: &str) -> String {
    let first = nats_url.split(',').next().unwrap_or(nats_url);
    let rest = first.split_once("://").map(|(_, r)| r).unwrap_or(first);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let target = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:4222")
    };
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect(target.as_str())?;
            s.local_addr()
        })
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into())
}

impl Node {
    fn register_request(&self) -> RegisterNode {
        RegisterNode {
            token: self.config.token.expose_secret().to_owned(),
            hostname: self.config.hostname.to_string(),
            ip_address: self.config.ip_address.clone(),
            weight: self.config.weight,
            workers: self.config.workers,
            analysis_workers: self.config.analysis_workers,
            inventory: self.inventory.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// One registration attempt. `Ok(None)`: try again later (no registry, store down).
    async fn register_once(&self) -> Result<Option<Registered>, JoinError> {
        let subject = subjects::registry(subjects::registry::REGISTER);
        match nats::request::<_, Registered>(&self.client, subject, &self.register_request()).await
        {
            Ok(r) => Ok(Some(r)),
            Err(ServiceFailure {
                code: ErrorCode::Unavailable | ErrorCode::Internal,
                message,
            }) => {
                tracing::warn!(reason = %message, "cannot register yet; retrying");
                Ok(None)
            }
            Err(f) => Err(JoinError::Refused(f.message)),
        }
    }

    /// Join: register until the registry answers (backing off), then apply the stored settings.
    /// A refused token ends it at once.
    pub async fn join(
        client: Client,
        config: NodeConfig,
        inventory: Inventory,
        health: watch::Receiver<Health>,
        shutdown: &CancellationToken,
    ) -> Result<Self, JoinError> {
        let workers = config.workers as usize;
        let analysis_workers = config.analysis_workers as usize;
        let (plan, _) = watch::channel(WorkerPlan {
            driver: inventory.gpu_info.best(),
            accepting: true,
        });
        let mut node = Node {
            client,
            config,
            inventory,
            started: Instant::now(),
            node_id: String::new(),
            settings: NodeSettings::default(),
            busy: Arc::new(Mutex::new(vec![None; workers])),
            analysis: Arc::new(Mutex::new(vec![AnalysisSlot::default(); analysis_workers])),
            busy_changed: Arc::new(Notify::new()),
            health,
            plan,
            hand_back: Arc::new(Notify::new()),
        };
        let mut backoff = retry::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            if let Some(reg) = node.register_once().await? {
                node.node_id = reg.node_id.clone();
                node.apply(reg.settings);
                tracing::info!(
                    node_id = %reg.node_id, token_name = %reg.token_name,
                    driver = %node.plan.borrow().driver, "joined the cluster"
                );
                return Ok(node);
            }
            if !retry::pause(shutdown, backoff.next_wait()).await {
                return Err(JoinError::Stopped);
            }
        }
    }

    /// The node's identity.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Follow what the workers should do.
    pub fn plan(&self) -> watch::Receiver<WorkerPlan> {
        self.plan.subscribe()
    }

    /// Per-worker busy slots, for the job consumers to fill.
    pub fn busy_slots(&self) -> Arc<Mutex<Vec<Option<String>>>> {
        self.busy.clone()
    }

    /// Per analysis worker, for [`crate::analysis::Analysis`] to fill.
    pub fn analysis_slots(&self) -> Arc<Mutex<Vec<AnalysisSlot>>> {
        self.analysis.clone()
    }

    /// Notify this when [`Node::busy_slots`] changed, so the registry hears it before the next
    /// heartbeat tick.
    pub fn busy_changed(&self) -> Arc<Notify> {
        self.busy_changed.clone()
    }

    /// Notified when the registry asks for the jobs in flight back (the node drained itself to
    /// stop): the job workers follow it ([`crate::worker::Workers::hand_back`]).
    pub fn hand_back_requests(&self) -> Arc<Notify> {
        self.hand_back.clone()
    }

    /// Take new settings when newer than the ones applied.
    fn apply(&mut self, settings: NodeSettings) {
        if settings.settings_version < self.settings.settings_version {
            return;
        }
        let (driver, processes) =
            plan_processes(&self.inventory.gpu_info, &settings, &[None], None);
        let unavailable = processes.first().is_some_and(|p| p.reason.is_some());
        if let Some(reason) = processes.first().and_then(|p| p.reason.clone()) {
            tracing::warn!(%reason, "the chosen driver is not available here; workers are unavailable");
        }
        let healthy = self.health.borrow().unhealthy.is_none();
        let plan = WorkerPlan {
            driver,
            accepting: !settings.draining && !unavailable && healthy,
        };
        if *self.plan.borrow() != plan || self.settings != settings {
            tracing::info!(
                driver = %plan.driver, draining = settings.draining,
                version = settings.settings_version, "settings applied"
            );
        }
        self.plan.send_replace(plan);
        self.settings = settings;
    }

    fn heartbeat(&self, stopping: bool) -> Heartbeat {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let health = self.health.borrow().clone();
        let (driver, mut processes) = plan_processes(
            &self.inventory.gpu_info,
            &self.settings,
            &busy,
            health.unhealthy.as_deref(),
        );
        let analysis = self
            .analysis
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        processes.extend(plan_analysis_processes(
            &self.inventory.gpu_info,
            &self.settings,
            &analysis,
            health.unhealthy.as_deref(),
        ));
        Heartbeat {
            node_id: self.node_id.clone(),
            busy_slots: busy.iter().filter(|b| b.is_some()).count() as u32,
            // From the monitor's last reading: a heartbeat never waits on the driver.
            gpu_memory_used_mib: health
                .gpus
                .iter()
                .map(|g| g.memory_used_mib)
                .sum::<Option<u64>>()
                .filter(|_| !health.gpus.is_empty()),
            processes,
            driver,
            settings: self.settings.clone(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            stopping,
            gpu_stats: health.gpus,
            unhealthy: health.unhealthy,
        }
    }

    async fn send_heartbeat(&self, stopping: bool) {
        let hb = self.heartbeat(stopping);
        if let Err(e) =
            nats::publish(&self.client, subjects::node_heartbeat(&self.node_id), &hb).await
        {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }

    /// Register again with the same identity (after a reconnect, or when asked). A refusal
    /// (revoked token) ends the node.
    async fn rejoin(&mut self) -> anyhow::Result<()> {
        match self.register_once().await {
            Ok(Some(reg)) => {
                if reg.node_id != self.node_id {
                    tracing::warn!(old = %self.node_id, new = %reg.node_id, "the registry gave a new identity");
                    self.node_id = reg.node_id;
                }
                self.apply(reg.settings);
                tracing::info!(node_id = %self.node_id, "registered again");
                Ok(())
            }
            Ok(None) => Ok(()), // the next reconnect or heartbeat tries again
            Err(JoinError::Refused(m)) => {
                anyhow::bail!("the registry refused this node on re-registering: {m}")
            }
            Err(JoinError::Stopped) => Ok(()),
        }
    }

    /// Heartbeat and follow control messages until `shutdown` fires (then say goodbye and return
    /// `Ok`) or the node must leave (`Err`, so the process exits non-zero).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut control = self
            .client
            .subscribe(subjects::node_control(&self.node_id))
            .await
            .context("subscribing to this node's control subject")?;
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = true;
        let busy_changed = self.busy_changed.clone();
        let mut monitored = true;
        let mut last_verdict = self.health.borrow().unhealthy.clone();
        loop {
            tokio::select! {
                _ = busy_changed.notified() => self.send_heartbeat(false).await,
                changed = self.health.changed(), if monitored => {
                    if changed.is_err() {
                        // The monitor stops at shutdown, which the arm above handles.
                        monitored = false;
                        continue;
                    }
                    // New figures ride on the next heartbeat; only the verdict acts now.
                    let verdict = self.health.borrow_and_update().unhealthy.clone();
                    if verdict == last_verdict {
                        continue;
                    }
                    last_verdict = verdict;
                    // Passing or failing the health check opens or closes the node to new jobs:
                    // the workers and the registry hear it now, not at the next tick.
                    let settings = self.settings.clone();
                    self.apply(settings);
                    self.send_heartbeat(false).await;
                }
                _ = shutdown.cancelled() => {
                    self.send_heartbeat(true).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
                    return Ok(());
                }
                _ = tick.tick() => {
                    let connected = nats::is_connected(&self.client);
                    if connected && !was_connected {
                        tracing::info!("connection back: registering again");
                        self.rejoin().await?;
                    }
                    was_connected = connected;
                    self.send_heartbeat(false).await;
                }
                msg = control.next() => {
                    let Some(msg) = msg else { anyhow::bail!("the control subscription ended") };
                    match serde_json::from_slice::<NodeControl>(&msg.payload) {
                        Ok(NodeControl::Settings(s)) => {
                            self.apply(s);
                            self.send_heartbeat(false).await;
                        }
                        Ok(NodeControl::Leave { reason }) => {
                            anyhow::bail!("leaving the cluster: {reason}; this node's cluster token no longer works");
                        }
                        Ok(NodeControl::HandBack) => {
                            tracing::info!("drained to stop: handing the jobs in flight back");
                            self.hand_back.notify_one();
                        }
                        Ok(NodeControl::Reregister) => {
                            let node_id = self.node_id.clone();
                            self.rejoin().await?;
                            if node_id != self.node_id {
                                control = self.client.subscribe(subjects::node_control(&self.node_id)).await?;
                            }
                            self.send_heartbeat(false).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable control message"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_is_the_one_routing_to_nats() {
        assert_eq!(local_ip("nats://127.0.0.1:4222"), "127.0.0.1");
        assert_eq!(
            local_ip("nats://user:pw@127.0.0.1:4222,nats://10.0.0.1:4222"),
            "127.0.0.1"
        );
        assert_eq!(local_ip("nats://localhost"), "127.0.0.1");
    }
}
