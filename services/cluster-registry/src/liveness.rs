//! Background work that keeps this replica's view: restoring it from the store, following every
//! node's heartbeats and the other replicas' announcements (plain subscriptions, not queue
//! groups, so each replica sees everything), expiring silent nodes, and writing what heartbeats
//! changed to the store in batches.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use gantry_contracts::registry::{check_size, Heartbeat, NodeControl, RegistryEvent};
use gantry_contracts::subjects;
use gantry_runtime::retry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::registry::{now, Registry};
use crate::store::NodeRecord;
use crate::view::HeartbeatOutcome;

/// How often heartbeat state is written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How long to wait before looking up the same unknown node again.
const LOOKUP_BACKOFF_SECS: f64 = 5.0;

/// Start every background task on `tracker`; they stop when `shutdown` fires (the flusher
/// writes once more on the way out).
pub async fn start(
    registry: Registry,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    // Subscribe before restoring, so nothing said during the restore is lost.
    let heartbeats = registry
        .client()
        .subscribe(subjects::NODE_HEARTBEATS)
        .await?;
    let events = registry
        .client()
        .subscribe(subjects::REGISTRY_EVENTS)
        .await?;
    tracker.spawn(restore(registry.clone(), shutdown.clone()));
    tracker.spawn(follow_heartbeats(
        registry.clone(),
        heartbeats,
        shutdown.clone(),
    ));
    tracker.spawn(follow_events(registry.clone(), events, shutdown.clone()));
    tracker.spawn(sweep(registry.clone(), shutdown.clone()));
    tracker.spawn(flush(registry, shutdown));
    Ok(())
}

/// Rebuild the view once the store answers; endpoints answer 503 until then.
async fn restore(registry: Registry, shutdown: CancellationToken) {
    let restore = || registry.restore();
    let Some(n) = retry::until_ready("restoring the view", &shutdown, restore).await else {
        return;
    };
    tracing::info!(nodes = n, "view restored from the store");
    if let Err(e) = registry.store().ensure_indexes().await {
        tracing::warn!(
            error = format!("{e:#}"),
            "could not create the store's indexes"
        );
    }
}

async fn follow_heartbeats(
    registry: Registry,
    mut sub: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let mut lookups: HashMap<String, f64> = HashMap::new();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        // gantry.node.<id>.heartbeat: the subject names the node, whatever the payload claims.
        let Some(subject_id) = msg.subject.split('.').nth(2) else {
            continue;
        };
        let hb = check_size("a heartbeat", msg.payload.len())
            .and_then(|()| {
                serde_json::from_slice::<Heartbeat>(&msg.payload).map_err(|e| e.to_string())
            })
            .and_then(|hb| hb.check().map(|()| hb));
        let mut hb = match hb {
            Ok(hb) => hb,
            Err(e) => {
                tracing::warn!(node_id = subject_id, error = %e, "ignoring a malformed or oversized heartbeat");
                continue;
            }
        };
        hb.node_id = subject_id.to_owned();
        if !registry.is_restored() {
            continue; // the restore brings these nodes in
        }
        let t = now();
        let outcome = registry.view().heartbeat(&hb, t);
        match outcome {
            HeartbeatOutcome::Applied(None) | HeartbeatOutcome::Revoked(None) => {}
            HeartbeatOutcome::Applied(Some(push)) | HeartbeatOutcome::Revoked(Some(push)) => {
                registry.control(&hb.node_id, &push).await;
            }
            HeartbeatOutcome::Unknown => {
                let due = lookups
                    .get(&hb.node_id)
                    .is_none_or(|last| t - last >= LOOKUP_BACKOFF_SECS);
                if due {
                    lookups.insert(hb.node_id.clone(), t);
                    tokio::spawn(load_unknown(registry.clone(), hb));
                }
            }
        }
        if lookups.len() > 10_000 {
            lookups.retain(|_, last| t - *last < LOOKUP_BACKOFF_SECS);
        }
    }
}

/// A heartbeat from a node this replica does not hold: it registered on another replica (and
/// the announcement is late) or the view lost it. Load it from the store, or ask the node to
/// register again when the store does not know it either.
async fn load_unknown(registry: Registry, hb: Heartbeat) {
    let store = registry.store();
    let loaded = async {
        let Some(record) = store.node(&hb.node_id).await? else {
            return Ok(None);
        };
        let state = store.state(&hb.node_id).await?;
        let active = store
            .token(record.token_id)
            .await?
            .map(|t| t.active)
            .unwrap_or(false);
        Ok::<_, crate::error::RegistryError>(Some((record, state, active)))
    }
    .await;
    match loaded {
        Ok(Some((record, state, active))) => {
            let outcome = {
                let mut view = registry.view();
                view.insert_loaded(record, state, active, now());
                view.heartbeat(&hb, now())
            };
            if let HeartbeatOutcome::Applied(Some(push)) | HeartbeatOutcome::Revoked(Some(push)) =
                outcome
            {
                registry.control(&hb.node_id, &push).await;
            }
        }
        Ok(None) => {
            tracing::info!(node_id = %hb.node_id, "heartbeat from an unregistered node; asking it to register");
            registry
                .control(&hb.node_id, &NodeControl::Reregister)
                .await;
        }
        Err(e) => {
            tracing::warn!(node_id = %hb.node_id, error = %e, "cannot look up a node heard from")
        }
    }
}

async fn follow_events(
    registry: Registry,
    mut sub: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        if let Err(e) = check_size("an announcement", msg.payload.len()) {
            tracing::warn!(error = %e, "ignoring an oversized registry announcement");
            continue;
        }
        let event: RegistryEvent = match serde_json::from_slice(&msg.payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed registry announcement");
                continue;
            }
        };
        match event {
            RegistryEvent::NodeRegistered { record } => {
                let record = serde_json::from_value::<NodeRecord>(record)
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.check().map(|()| r));
                match record {
                    Ok(record) => registry.view().register_announced(record, now()),
                    Err(e) => tracing::warn!(error = %e, "ignoring an unusable node record"),
                }
            }
            RegistryEvent::NodeSettings { node_id, settings } => {
                registry.view().apply_settings(&node_id, &settings);
            }
            RegistryEvent::TokenRevoked { token_id } => {
                registry.view().revoke_token(token_id);
            }
        }
    }
}

/// Disconnect silent nodes, checking four times per heartbeat interval.
async fn sweep(registry: Registry, shutdown: CancellationToken) {
    let interval = registry.view().timing().interval;
    let period = Duration::from_secs_f64((interval / 4.0).clamp(0.05, 1.0));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if !registry.is_restored() {
            continue;
        }
        let (expired, connected, listed) = {
            let mut view = registry.view();
            let expired = view.sweep(now());
            (
                expired,
                view.nodes().filter(|n| n.connected).count(),
                view.nodes().count(),
            )
        };
        gantry_runtime::metrics::REGISTRY_NODES
            .with_label_values(&["connected"])
            .set(connected as i64);
        gantry_runtime::metrics::REGISTRY_NODES
            .with_label_values(&["disconnected"])
            .set((listed - connected) as i64);
        if expired > 0 {
            tracing::info!(
                nodes = expired,
                "nodes missed their heartbeats: disconnected"
            );
        }
    }
}

/// Write changed heartbeat state every [`FLUSH_EVERY`], and once more at shutdown.
async fn flush(registry: Registry, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        if registry.is_restored() {
            let docs = registry.view().take_dirty();
            if !docs.is_empty() {
                if let Err(e) = registry.store().write_states(&docs).await {
                    tracing::warn!(error = %e, nodes = docs.len(), "could not write node state; will retry");
                    registry.view().unflushed(&docs);
                }
            }
        }
        if stopping {
            break;
        }
    }
}
