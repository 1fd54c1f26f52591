//! `gantry-trainer drain`: a node stopping on purpose (a Kubernetes pod's `preStop` hook, a
//! scale-down) drains itself through the registry and waits until its jobs in flight are handed
//! back, so that another node resumes them from their last checkpoint at once.
//!
//! It runs beside the trainer process, with the same configuration:
//! 1. The running trainer writes its node id into its dataset cache directory when it joins
//!    ([`joined`]); `drain` reads it there (no file: the trainer never joined, nothing to do).
//! 2. `drain` connects as the node (its cluster token, its name) and asks the registry on
//!    `gantry.node.<id>.drain`, the one drain subject the bus lets this node publish on. The
//!    registry stores the node as draining (the node takes no new job, the admin page shows it)
//!    and tells the trainer to hand its jobs back ([`NodeControl::HandBack`]).
//! 3. `drain` follows the node's own heartbeats until one says it is draining with no job in
//!    flight (the trainer heartbeats as soon as a slot is freed), or gives up after `timeout`.
//!
//! A node that drained itself this way (and was not drained by an admin before) leaves a mark
//! in its cache directory, and undrains itself when it joins again: a pod that comes back under
//! the same name (a StatefulSet scaling up again) takes work at once, while an admin's drain
//! stays.
//!
//! [`NodeControl::HandBack`]: gantry_contracts::registry::NodeControl::HandBack

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use futures::StreamExt;
use gantry_contracts::registry::{DrainSelf, DrainedSelf, Heartbeat};
use gantry_contracts::subjects;
use gantry_runtime::{nats, Config};
use secrecy::ExposeSecret;

use crate::node;

/// The file in the cache directory holding the id of the node that last joined with it.
pub const NODE_ID_FILE: &str = ".node-id";
/// The mark of a node that drained itself to stop: it undrains itself when it joins again.
pub const DRAINED_MARK: &str = ".drained-to-stop";

/// Called by the trainer once joined: record the node id for `drain`, and undrain the node if it
/// drained itself when it last stopped. Failures are logged, never fatal.
pub async fn joined(client: &Client, cache: &Path, node_id: &str) {
    if let Err(e) = std::fs::create_dir_all(cache)
        .and_then(|()| std::fs::write(cache.join(NODE_ID_FILE), node_id))
    {
        tracing::warn!(error = %e, dir = %cache.display(), "could not record the node id; `gantry-trainer drain` will find nothing to drain");
    }
    let mark = cache.join(DRAINED_MARK);
    if mark.is_file() {
        match nats::request::<_, DrainedSelf>(
            client,
            subjects::node_drain(node_id),
            &DrainSelf { drain: false },
        )
        .await
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&mark);
                tracing::info!("undrained: this node drained itself when it last stopped");
            }
            Err(f) => tracing::warn!(error = %f, "could not undrain this node; an admin can"),
        }
    }
}

/// Drain the node this configuration names and wait, at most `timeout`, until its jobs in flight
/// are handed back.
pub async fn run(config: Config, timeout: Duration) -> anyhow::Result<()> {
    let token = config
        .cluster_token
        .clone()
        .context("GANTRY_CLUSTER_TOKEN is not set")?;
    let hostname = node::node_name(&config)?;
    let cache = node::cache_dir(&config, &hostname);
    let node_id = match std::fs::read_to_string(cache.join(NODE_ID_FILE)) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => {
            eprintln!(
                "gantry-trainer drain: {hostname} has not joined the cluster (no {} in {}): nothing to drain",
                NODE_ID_FILE,
                cache.display()
            );
            return Ok(());
        }
    };
    let work = async {
        let (client, _refusals) =
            nats::connect_node(&config, hostname.as_ref(), token.expose_secret()).await?;
        let mut beats = client
            .subscribe(subjects::node_heartbeat(&node_id))
            .await
            .context("following this node's heartbeats")?;
        client.flush().await.context("reaching the bus")?;
        let reply: DrainedSelf = nats::request(
            &client,
            subjects::node_drain(&node_id),
            &DrainSelf { drain: true },
        )
        .await
        .map_err(|f| anyhow::anyhow!("the registry did not drain {hostname}: {f}"))?;
        if !reply.was_draining {
            if let Err(e) = std::fs::write(cache.join(DRAINED_MARK), b"") {
                eprintln!("gantry-trainer drain: could not leave the undrain mark: {e}");
            }
        }
        eprintln!(
            "gantry-trainer drain: {hostname} is draining; waiting for its jobs to be handed back"
        );
        while let Some(msg) = beats.next().await {
            let Ok(hb) = serde_json::from_slice::<Heartbeat>(&msg.payload) else {
                continue;
            };
            if hb.settings.draining && hb.busy_slots == 0 {
                eprintln!("gantry-trainer drain: {hostname} is drained, no job in flight");
                let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                return Ok(());
            }
        }
        anyhow::bail!("the heartbeat subscription ended")
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        anyhow::anyhow!(
            "{hostname}'s jobs were not handed back within {timeout:?}; stopping the trainer hands them back too"
        )
    })?
}
