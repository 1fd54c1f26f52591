//! The in-memory view of the cluster that every replica keeps: nodes, their liveness and what
//! their heartbeats say, and which tokens are revoked.
//!
//! Pure state: every method that depends on time takes `now` (seconds since the epoch), so the
//! liveness rules are tested by driving that clock, not by sleeping.
//!
//! Kept in one file past 600 lines on purpose: a node's state, the rules that change it
//! (registration, heartbeats, liveness) and the listings read from it change together; the
//! tests are in `view/tests.rs`.

use std::collections::{HashMap, HashSet};

use gantry_contracts::registry::{
    plan_analysis_processes, plan_processes, process_status, AnalysisSlot, ClusterClient,
    ClusterNode, Driver, GpuStats, Heartbeat, MasterStats, NodeControl, NodeSettings, Process,
};

use gantry_contracts::jobs::{JobDriver, WaitingReason};

use crate::store::{NodeRecord, StateDoc, TokenDoc};

/// A node's last-seen time alone is written at most this often (other changes at the next
/// flush), so thousands of idle nodes do not rewrite their state every few seconds.
pub const LAST_SEEN_PERSIST_SECS: f64 = 30.0;

/// Liveness settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Seconds between a node's heartbeats.
    pub interval: f64,
    /// Missed heartbeats before a node is disconnected.
    pub misses: u32,
    /// Seconds a disconnected node stays listed.
    pub retention: f64,
}

impl Timing {
    /// Silence after which a node counts as disconnected.
    pub fn expiry(&self) -> f64 {
        self.interval * f64::from(self.misses)
    }
}

/// One node as this replica sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it registered with, and its settings.
    pub record: NodeRecord,
    /// Its token was revoked.
    pub revoked: bool,
    /// Heartbeating.
    pub connected: bool,
    /// When it (re)connected.
    pub connected_at: f64,
    /// Its last heartbeat (shown).
    pub last_seen: f64,
    /// What the expiry is measured from: `last_seen`, or the restart time of this replica for a
    /// node restored as connected (it gets a full expiry period to be heard again).
    pub last_heard: f64,
    /// Busy worker slots.
    pub busy_slots: u32,
    /// Its processes, as last reported.
    pub processes: Vec<Process>,
    /// The backend it runs on.
    pub driver: Driver,
    /// The trainer's uptime at `last_seen`.
    pub uptime_seconds: f64,
    /// GPU memory in use, MiB.
    pub gpu_memory_used_mib: Option<u64>,
    /// Each GPU's live figures, as last reported (kept in memory only: they change every beat).
    pub gpu_stats: Vec<GpuStats>,
    /// Why it fails its health check, as last reported.
    pub unhealthy: Option<String>,
    /// Changed since the last flush.
    pub dirty: bool,
    /// The `last_seen` last written.
    pub persisted_last_seen: f64,
    /// When this replica last pushed a control message to it (rate limit).
    pub last_push: f64,
}

/// What a node that just joined runs, until its first heartbeat says: every training slot and
/// analysis worker idle.
fn planned_processes(record: &NodeRecord) -> (Driver, Vec<Process>) {
    let gpu_info = &record.inventory.gpu_info;
    let (driver, mut processes) = plan_processes(
        gpu_info,
        &record.settings,
        &vec![None; record.workers as usize],
        None,
    );
    processes.extend(plan_analysis_processes(
        gpu_info,
        &record.settings,
        &vec![AnalysisSlot::default(); record.analysis_workers as usize],
        None,
    ));
    (driver, processes)
}

impl Node {
    fn new(record: NodeRecord, now: f64) -> Self {
        let (driver, processes) = planned_processes(&record);
        Self {
            record,
            revoked: false,
            connected: true,
            connected_at: now,
            last_seen: now,
            last_heard: now,
            busy_slots: 0,
            processes,
            driver,
            uptime_seconds: 0.0,
            gpu_memory_used_mib: None,
            gpu_stats: Vec::new(),
            unhealthy: None,
            dirty: true,
            persisted_last_seen: 0.0,
            last_push: f64::NEG_INFINITY,
        }
    }

    fn restored(record: NodeRecord, state: Option<StateDoc>, revoked: bool, now: f64) -> Self {
        let mut node = Self::new(record, now);
        node.revoked = revoked;
        node.dirty = false;
        match state {
            Some(s) => {
                node.connected = s.connected && !revoked;
                node.connected_at = s.connected_at;
                node.last_seen = s.last_seen;
                node.last_heard = if node.connected { now } else { s.last_seen };
                node.busy_slots = s.busy_slots;
                if !s.processes.is_empty() {
                    node.processes = s.processes;
                }
                node.driver = s.driver;
                node.uptime_seconds = s.uptime_seconds;
                node.gpu_memory_used_mib = s.gpu_memory_used_mib;
                node.persisted_last_seen = s.last_seen;
            }
            None => {
                // Registered, then the registry died before its first state flush.
                node.connected = !revoked;
                node.last_seen = node.record.registered_at;
                node.connected_at = node.record.registered_at;
                node.dirty = true;
            }
        }
        node
    }

    fn state_doc(&self) -> StateDoc {
        StateDoc {
            node_id: self.record.node_id.clone(),
            connected: self.connected,
            connected_at: self.connected_at,
            last_seen: self.last_seen,
            busy_slots: self.busy_slots,
            processes: self.processes.clone(),
            driver: self.driver,
            uptime_seconds: self.uptime_seconds,
            gpu_memory_used_mib: self.gpu_memory_used_mib,
        }
    }

    fn disconnect(&mut self) {
        if self.connected {
            self.connected = false;
            self.dirty = true;
        }
    }

    /// Free worker slots: workers ready for work (0 when disconnected).
    pub fn workers_available(&self) -> u32 {
        if !self.connected {
            return 0;
        }
        self.processes
            .iter()
            .filter(|p| p.is_training() && p.status == process_status::ACTIVE)
            .count() as u32
    }

    /// This node as `cluster_nodes` lists it.
    pub fn cluster_node(&self, now: f64) -> ClusterNode {
        let inv = &self.record.inventory;
        ClusterNode {
            token: format!("{}...", self.record.token_prefix),
            token_name: self.record.token_name.clone(),
            hostname: self.record.hostname.clone(),
            weight: self.record.weight,
            gpus: inv.gpus.len() as u32,
            gpu_memory: inv.gpus.iter().map(|g| g.describe()).collect(),
            total_memory: inv.gpus.iter().map(|g| g.memory_gb()).sum(),
            workers_available: self.workers_available(),
            ip_address: self.record.ip_address.clone(),
            connected: self.connected,
            last_seen: self.last_seen,
            uptime_seconds: if self.connected {
                round1(self.uptime_seconds + (now - self.last_seen).max(0.0))
            } else {
                0.0
            },
            active_jobs: if self.connected {
                u64::from(self.busy_slots)
            } else {
                0
            },
            completed_jobs: self.record.completed_jobs,
            client_id: self.record.node_id.clone(),
            workers: self.record.workers,
            host_memory_gb: inv.host_memory_gb,
            cpus: inv.cpus,
            driver: self.driver,
            driver_preference: self.record.settings.driver_preference,
            draining: self.record.settings.draining,
            gpu_info: inv.gpu_info.clone(),
            gpu_devices: inv.gpus.clone(),
            driver_version: inv.driver_version.clone(),
            processes: self.processes.clone(),
            gpu_stats: if self.connected {
                self.gpu_stats.clone()
            } else {
                Vec::new()
            },
            unhealthy: self.unhealthy.clone().filter(|_| self.connected),
        }
    }

    /// This node as `cluster_clients` lists it.
    pub fn cluster_client(&self) -> ClusterClient {
        ClusterClient {
            client_id: self.record.node_id.clone(),
            connected_at: self.connected_at,
            last_seen: self.last_seen,
            gpu_info: self.record.inventory.gpu_info.clone(),
            processes: self.processes.clone(),
            hostname: self.record.hostname.clone(),
            connected: self.connected,
        }
    }
}

/// The fields of a node a listing should show at once when they change (see [`Revisions`]);
/// its processes and health are compared with the heartbeat separately, without copying them.
#[derive(PartialEq)]
struct Shown {
    connected: bool,
    revoked: bool,
    busy_slots: u32,
    driver: Driver,
    settings_version: i64,
}

impl Shown {
    fn of(n: &Node) -> Self {
        Self {
            connected: n.connected,
            revoked: n.revoked,
            busy_slots: n.busy_slots,
            driver: n.driver,
            settings_version: n.record.settings.settings_version,
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// What a heartbeat led to.
#[derive(Debug, PartialEq)]
pub enum HeartbeatOutcome {
    /// Applied; send this to the node when set (its settings are behind).
    Applied(Option<NodeControl>),
    /// This replica does not know the node: look it up in the store.
    Unknown,
    /// The node's token is revoked; tell it to leave when set (rate-limited).
    Revoked(Option<NodeControl>),
}

/// Every node this replica knows.
#[derive(Debug)]
pub struct View {
    timing: Timing,
    nodes: HashMap<String, Node>,
    revoked_tokens: HashSet<i64>,
    /// Counts changes the listings show: see [`View::revisions`].
    revisions: Revisions,
}

/// How far the listed state has changed: every change counts in `any`; those an admin or a test
/// expects to see at once (a node joining, leaving, changing settings, processes or health) also
/// in `prompt`. A heartbeat that only refreshes `last_seen`, uptime and live GPU figures counts in
/// `any` alone, so a listing snapshot may lag it by [`crate::listing::REFRESH`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revisions {
    /// Every listed change.
    pub any: u64,
    /// Changes shown at once.
    pub prompt: u64,
}

impl View {
    /// An empty view.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            nodes: HashMap::new(),
            revoked_tokens: HashSet::new(),
            revisions: Revisions::default(),
        }
    }

    /// How far the listed state has changed (see [`Revisions`]).
    pub fn revisions(&self) -> Revisions {
        self.revisions
    }

    fn changed(&mut self, prompt: bool) {
        self.revisions.any += 1;
        if prompt {
            self.revisions.prompt += 1;
        }
    }

    /// Liveness settings.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// A node by id.
    pub fn node(&self, node_id: &str) -> Option<&Node> {
        self.nodes.get(node_id)
    }

    /// Number of nodes held (listed or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node is held.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Rebuild from the store after a restart. Nodes already in the view (heard since start-up)
    /// are kept as they are.
    pub fn restore(
        &mut self,
        tokens: &[TokenDoc],
        records: Vec<NodeRecord>,
        states: Vec<StateDoc>,
        now: f64,
    ) {
        self.revoked_tokens
            .extend(tokens.iter().filter(|t| !t.active).map(|t| t.id));
        let mut states: HashMap<String, StateDoc> =
            states.into_iter().map(|s| (s.node_id.clone(), s)).collect();
        for record in records {
            if self.nodes.contains_key(&record.node_id) {
                continue;
            }
            let state = states.remove(&record.node_id);
            let revoked = self.revoked_tokens.contains(&record.token_id);
            let node = Node::restored(record, state, revoked, now);
            if node.connected || now - node.last_seen <= self.timing.retention {
                self.nodes.insert(node.record.node_id.clone(), node);
            }
        }
        self.changed(true);
    }

    /// Insert one node read from the store (met through a heartbeat this replica did not know).
    pub fn insert_loaded(
        &mut self,
        record: NodeRecord,
        state: Option<StateDoc>,
        token_active: bool,
        now: f64,
    ) {
        if self.nodes.contains_key(&record.node_id) {
            return;
        }
        if !token_active {
            self.revoked_tokens.insert(record.token_id);
        }
        let mut node = Node::restored(record, state, !token_active, now);
        // It was heard a moment ago: that is why it is being loaded.
        node.connected = false;
        self.nodes.insert(node.record.node_id.clone(), node);
        self.changed(true);
    }

    /// A node (re)registered: it is connected now, with the stored settings.
    pub fn register(&mut self, record: NodeRecord, now: f64) {
        self.changed(true);
        self.revoked_tokens.remove(&record.token_id);
        match self.nodes.get_mut(&record.node_id) {
            Some(node) => {
                let workers_changed = node.record.workers != record.workers
                    || node.record.analysis_workers != record.analysis_workers
                    || node.record.inventory != record.inventory
                    || node.record.settings != record.settings;
                node.record = record;
                node.revoked = false;
                if !node.connected {
                    node.connected = true;
                    node.connected_at = now;
                }
                node.last_seen = now;
                node.last_heard = now;
                if workers_changed {
                    let (driver, processes) = planned_processes(&node.record);
                    node.driver = driver;
                    node.processes = processes;
                    node.busy_slots = 0;
                }
                node.dirty = true;
            }
            None => {
                let node = Node::new(record, now);
                self.nodes.insert(node.record.node_id.clone(), node);
            }
        }
    }

    /// A registration announced on the bus (by another replica, or this one's own announcement
    /// heard back). It may arrive after the node has been heard from since: a node that said it
    /// is stopping after that registration stays disconnected, and a record no newer than the one
    /// held changes nothing.
    pub fn register_announced(&mut self, record: NodeRecord, now: f64) {
        if let Some(node) = self.nodes.get(&record.node_id) {
            let held = node.record == record && node.connected;
            let stale = node.record.registered_at >= record.registered_at
                && node.last_heard >= record.registered_at;
            if held || stale {
                return;
            }
        }
        self.register(record, now);
    }

    /// Apply a heartbeat.
    pub fn heartbeat(&mut self, hb: &Heartbeat, now: f64) -> HeartbeatOutcome {
        let Some(node) = self.nodes.get(&hb.node_id) else {
            return HeartbeatOutcome::Unknown;
        };
        let before = Shown::of(node);
        let reports_news = node.processes != hb.processes || node.unhealthy != hb.unhealthy;
        let outcome = self.apply_heartbeat(hb, now);
        let after = self.nodes.get(&hb.node_id).map(Shown::of);
        self.changed(reports_news || after.as_ref() != Some(&before));
        outcome
    }

    fn apply_heartbeat(&mut self, hb: &Heartbeat, now: f64) -> HeartbeatOutcome {
        let interval = self.timing.interval.max(1.0);
        let Some(node) = self.nodes.get_mut(&hb.node_id) else {
            return HeartbeatOutcome::Unknown;
        };
        if node.revoked {
            node.disconnect();
            if now - node.last_push >= interval {
                node.last_push = now;
                return HeartbeatOutcome::Revoked(Some(NodeControl::Leave {
                    reason: format!("cluster token {:?} was revoked", node.record.token_name),
                }));
            }
            return HeartbeatOutcome::Revoked(None);
        }
        node.last_seen = now;
        node.last_heard = now;
        if hb.stopping {
            node.disconnect();
            node.busy_slots = 0;
            return HeartbeatOutcome::Applied(None);
        }
        if !node.connected {
            node.connected = true;
            node.connected_at = now;
            node.dirty = true;
        }
        if node.busy_slots != hb.busy_slots
            || node.processes != hb.processes
            || node.driver != hb.driver
        {
            node.busy_slots = hb.busy_slots;
            node.processes = hb.processes.clone();
            node.driver = hb.driver;
            node.dirty = true;
        }
        node.uptime_seconds = hb.uptime_seconds;
        node.gpu_memory_used_mib = hb.gpu_memory_used_mib;
        node.gpu_stats = hb.gpu_stats.clone();
        node.unhealthy = hb.unhealthy.clone();
        if now - node.persisted_last_seen >= LAST_SEEN_PERSIST_SECS {
            node.dirty = true;
        }
        let stored = &node.record.settings;
        if hb.settings.settings_version > stored.settings_version {
            // Another replica changed it and this one missed the announcement.
            node.record.settings = hb.settings.clone();
            HeartbeatOutcome::Applied(None)
        } else if hb.settings.settings_version < stored.settings_version
            && now - node.last_push >= interval
        {
            node.last_push = now;
            HeartbeatOutcome::Applied(Some(NodeControl::Settings(stored.clone())))
        } else {
            HeartbeatOutcome::Applied(None)
        }
    }

    /// New settings for a node (from this replica's handler or another's announcement); older
    /// versions than the one held are ignored. Returns the node's connection state when known.
    pub fn apply_settings(&mut self, node_id: &str, settings: &NodeSettings) -> Option<bool> {
        self.changed(true);
        let node = self.nodes.get_mut(node_id)?;
        if settings.settings_version >= node.record.settings.settings_version {
            node.record.settings = settings.clone();
            node.last_push = f64::NEG_INFINITY;
        }
        Some(node.connected)
    }

    /// A token was revoked: its nodes are disconnected and refused. Returns their ids.
    pub fn revoke_token(&mut self, token_id: i64) -> Vec<String> {
        self.changed(true);
        self.revoked_tokens.insert(token_id);
        let mut ids = Vec::new();
        for node in self
            .nodes
            .values_mut()
            .filter(|n| n.record.token_id == token_id)
        {
            node.revoked = true;
            node.disconnect();
            ids.push(node.record.node_id.clone());
        }
        ids
    }

    /// Disconnect nodes silent for too long and forget those disconnected past the retention.
    /// Returns how many were disconnected.
    pub fn sweep(&mut self, now: f64) -> usize {
        let expiry = self.timing.expiry();
        let retention = self.timing.retention;
        let mut expired = 0;
        for node in self.nodes.values_mut() {
            if node.connected && now - node.last_heard > expiry {
                node.disconnect();
                expired += 1;
            }
        }
        let held = self.nodes.len();
        self.nodes
            .retain(|_, n| n.connected || now - n.last_seen <= retention || n.dirty);
        if expired > 0 || self.nodes.len() != held {
            self.changed(true);
        }
        expired
    }

    /// The state documents to write now; they count as written (see [`View::unflushed`]).
    pub fn take_dirty(&mut self) -> Vec<StateDoc> {
        let mut docs = Vec::new();
        for node in self.nodes.values_mut().filter(|n| n.dirty) {
            node.dirty = false;
            node.persisted_last_seen = node.last_seen;
            docs.push(node.state_doc());
        }
        docs
    }

    /// A write of these documents failed: mark them dirty again.
    pub fn unflushed(&mut self, docs: &[StateDoc]) {
        for d in docs {
            if let Some(n) = self.nodes.get_mut(&d.node_id) {
                n.dirty = true;
            }
        }
    }

    /// Why a job for `driver` would wait now, or `None` when a node could take it. `settled`:
    /// the view has heard every live node since it was restored; before that, an empty answer
    /// says nothing about the cluster, so the job waits as [`WaitingReason::Settling`].
    pub fn waiting_reason(&self, driver: JobDriver, settled: bool) -> Option<WaitingReason> {
        let connected: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.connected && !n.revoked)
            .filter(|n| driver == JobDriver::Any || n.driver.as_str() == driver.as_str())
            .collect();
        let for_driver: Vec<&Node> = connected
            .iter()
            .copied()
            .filter(|n| !n.record.settings.draining)
            .collect();
        let serving: Vec<&Node> = for_driver
            .iter()
            .copied()
            .filter(|n| n.unhealthy.is_none())
            .filter(|n| {
                !n.processes
                    .iter()
                    .filter(|p| p.is_training())
                    .all(|p| p.status == process_status::UNAVAILABLE)
            })
            .collect();
        if serving.is_empty() {
            return Some(if for_driver.iter().any(|n| n.unhealthy.is_some()) {
                // They may recover: the job waits rather than being given up.
                WaitingReason::Unhealthy { driver }
            } else if connected.iter().any(|n| {
                n.record.settings.draining
                    && !n
                        .processes
                        .iter()
                        .filter(|p| p.is_training())
                        .all(|p| p.status == process_status::UNAVAILABLE)
            }) {
                // An admin's pause, not a missing node: the job waits for the undrain.
                WaitingReason::Drained { driver }
            } else if settled {
                WaitingReason::NoNode { driver }
            } else {
                WaitingReason::Settling
            });
        }
        if serving.iter().all(|n| n.workers_available() == 0) {
            return Some(WaitingReason::SlotsBusy);
        }
        None
    }

    /// The nodes the listings show (connected, or disconnected within the retention), by
    /// hostname then id.
    pub fn listed(&self, now: f64) -> Vec<&Node> {
        let retention = self.timing.retention;
        let mut nodes: Vec<&Node> = self
            .nodes
            .values()
            .filter(|n| n.connected || now - n.last_seen <= retention)
            .collect();
        nodes.sort_by(|a, b| {
            a.record
                .hostname
                .cmp(&b.record.hostname)
                .then_with(|| a.record.node_id.cmp(&b.record.node_id))
        });
        nodes
    }

    /// `master_stats` over the listed nodes.
    pub fn stats(listed: &[&Node], uptime_seconds: f64) -> MasterStats {
        let connected = || listed.iter().filter(|n| n.connected);
        MasterStats {
            total_nodes: listed.len() as u64,
            connected_nodes: connected().count() as u64,
            total_workers: connected().map(|n| u64::from(n.record.workers)).sum(),
            total_active_jobs: connected().map(|n| u64::from(n.busy_slots)).sum(),
            total_completed_jobs: listed.iter().map(|n| n.record.completed_jobs).sum(),
            uptime_seconds: round1(uptime_seconds),
        }
    }

    /// `cluster_nodes`: totals and every listed node, by hostname.
    pub fn cluster_nodes(&self, now: f64, uptime_seconds: f64) -> (MasterStats, Vec<ClusterNode>) {
        let listed = self.listed(now);
        (
            Self::stats(&listed, uptime_seconds),
            listed.iter().map(|n| n.cluster_node(now)).collect(),
        )
    }

    /// `cluster_clients`: the connected nodes, by hostname.
    pub fn cluster_clients(&self, now: f64) -> Vec<ClusterClient> {
        self.listed(now)
            .into_iter()
            .filter(|n| n.connected)
            .map(|n| n.cluster_client())
            .collect()
    }
}

/// What the job side of the registry reads and counts.
impl View {
    /// Every node this replica knows.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// Take a node's completed-job count as stored (the store is where it is counted, so every
    /// replica converges on the same number). Counts only grow: a read that raced a newer one
    /// and lands after it changes nothing.
    pub fn set_completed(&mut self, node_id: &str, completed: u64) {
        if let Some(n) = self.nodes.get_mut(node_id) {
            if completed > n.record.completed_jobs {
                n.record.completed_jobs = completed;
                self.changed(true);
            }
        }
    }
}

#[cfg(test)]
mod tests;
