//! Start-up: inventory, connections, health, joining the cluster, shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use gantry_contracts::services;
use gantry_runtime::health::{self, Readiness};
use gantry_runtime::{nats, Config};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analysis::{Analysis, AnalysisConfig};
use crate::health::Monitor;
use crate::inventory;
use crate::node::{self, JoinError, Node, NodeConfig};
use crate::worker::{self, WorkerConfig, Workers};

/// Authorization violations in a row, while joining, after which the trainer gives up.
const JOIN_REFUSALS: u32 = 3;

/// Run until `shutdown` fires (exit 0), or until the cluster refuses this node (an error: exit
/// non-zero).
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    gantry_runtime::metrics::init_trainer();
    let token = config.cluster_token.clone().context(
        "GANTRY_CLUSTER_TOKEN is not set: create a cluster token (POST /admin/api/cluster_tokens) and start the trainer with it",
    )?;
    let hostname = node::node_name(&config)?;
    let node_config_name = hostname.clone();

    let (nvml, inv) = tokio::task::spawn_blocking(|| {
        let nvml = inventory::open_nvml().ok().map(Arc::new);
        let inv = inventory::detect(nvml.as_deref());
        (nvml, inv)
    })
    .await
    .context("probing the GPU inventory")?;
    tracing::info!(
        backends = ?inv.gpu_info.available_backends, gpus = inv.gpus.len(),
        host_memory_gb = inv.host_memory_gb, cpus = inv.cpus, "inventory"
    );

    let (client, refusals) =
        nats::connect_node(&config, hostname.as_ref(), token.expose_secret()).await?;
    let joined = Arc::new(AtomicBool::new(false));
    let ready = joined.clone();
    let readiness = Readiness::nats(client.clone()).with_check(move || {
        (!ready.load(Ordering::Acquire)).then(|| "not joined to the cluster yet".to_owned())
    });
    let (_addr, health) = health::serve(config.health_addr, readiness, shutdown.clone()).await?;
    let service = nats::start_service(
        &client,
        services::TRAINER,
        "Trains jobs on this machine's devices",
    )
    .await?;

    // The first reading (and the operator's first check) before joining: a node that fails
    // its health check never takes a job.
    let gpu_health = Monitor {
        nvml,
        gpus: inv.gpus.clone(),
        node: hostname.to_string(),
        every: config.heartbeat_interval,
        command: config.health_check.clone(),
        command_every: config.health_check_interval,
        command_limit: crate::health::COMMAND_LIMIT,
    }
    .start(shutdown.clone())
    .await;
    let node_config = NodeConfig {
        hostname: node_config_name,
        ip_address: node::local_ip(&config.nats_url),
        weight: config.node_weight,
        workers: config.workers,
        analysis_workers: config.analysis_workers,
        token,
        heartbeat_interval: config.heartbeat_interval,
    };
    // What this process may use (cgroup quotas included), not what the host has.
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(inv.cpus.max(1) as usize);
    // The bus says no to an unknown or revoked token only as an authorization violation; a few
    // in a row while joining mean the token will not do (after joining, a refusal may be a
    // registry restarting, and the node keeps trying).
    let join = tokio::select! {
        joined = Node::join(client.clone(), node_config, inv, gpu_health, &shutdown) => joined,
        _ = refusals.reached(JOIN_REFUSALS) => Err(JoinError::Refused(
            "the bus refused this node's connection: an unknown or revoked cluster token \
             (check GANTRY_CLUSTER_TOKEN, or ask an admin for a new one)"
                .into(),
        )),
    };
    let result = match join {
        Ok(node) => {
            joined.store(true, Ordering::Release);
            let workers = Workers::new(
                client.clone(),
                WorkerConfig {
                    node_name: hostname.to_string(),
                    node_id: node.node_id().to_owned(),
                    cache_dir: node::cache_dir(&config, &hostname),
                    cache_max_bytes: (config.cache_max_gb * 1e9) as u64,
                    threads: worker::threads_per_job(cpus, config.workers as usize),
                },
                node.busy_slots(),
                node.busy_changed(),
            );
            let cache = node::cache_dir(&config, &hostname);
            crate::drain::joined(&client, &cache, node.node_id()).await;
            let hand_backs = node.hand_back_requests();
            let handing = workers.clone();
            let stop_following = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop_following.cancelled() => break,
                        _ = hand_backs.notified() => {
                            let jobs = handing.hand_back();
                            tracing::info!(jobs, "handing the jobs in flight back");
                        }
                    }
                }
            });
            let analysis_tasks = TaskTracker::new();
            let analysis = Analysis::new(
                client.clone(),
                &AnalysisConfig {
                    node_name: hostname.to_string(),
                    node_id: node.node_id().to_owned(),
                    cache_bytes: (config.analysis_cache_mb * 1024.0 * 1024.0) as u64,
                },
                node.analysis_slots(),
                node.busy_changed(),
                node.plan(),
            );
            if config.analysis_workers > 0 {
                analysis
                    .clone()
                    .serve(&service, node.node_id(), &shutdown, &analysis_tasks)
                    .await?;
                analysis_tasks.spawn(analysis.take_jobs(
                    workers.datasets(),
                    node.node_id().to_owned(),
                    shutdown.clone(),
                ));
            }
            let jobs = tokio::spawn(workers.run(node.plan(), shutdown.clone()));
            let result = node.run(shutdown.clone()).await;
            // Leaving on our own (token revoked) stops the jobs too: they are handed back.
            shutdown.cancel();
            if tokio::time::timeout(worker::SHUTDOWN_GRACE + worker::LOOK_EVERY, jobs)
                .await
                .is_err()
            {
                tracing::warn!("the job workers did not stop in time");
            }
            gantry_runtime::endpoint::drain(&analysis_tasks, worker::SHUTDOWN_GRACE).await;
            result
        }
        Err(JoinError::Stopped) => Ok(()),
        Err(e @ JoinError::Refused(_)) => Err(anyhow::Error::new(e)),
    };

    shutdown.cancel(); // stops the health server when leaving on our own
                       // Bounded: with NATS gone these would wait for a reconnect, and SIGTERM must still stop us.
    nats::leave(service, &client).await;
    let _ = health.await;
    result
}
