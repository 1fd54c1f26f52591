//! Trainer nodes joining the cluster, over the real binaries: listings with their inventory,
//! liveness (kill -9, restart, same identity), driver choice that survives restarts of the node
//! and of the registry, draining, graceful stops, and several registry replicas.

mod cluster_common;

use std::time::{Duration, Instant};

use cluster_common::{Cluster, INTERVAL, MISSES, READY};
use gantry_contracts::registry::{Drain, Driver, SetDriver, SetDriverResult};
use gantry_contracts::subjects::registry as ep;

const JOIN: Duration = Duration::from_secs(30);

fn set_driver(hostname: &str, token: &str, driver: &str) -> SetDriver {
    SetDriver {
        hostname: Some(hostname.into()),
        token: Some(token.into()),
        driver: Some(driver.into()),
    }
}

#[tokio::test]
async fn a_joined_node_appears_in_both_listings_with_its_inventory() {
    let cluster = Cluster::start().await;
    let token = cluster.create_token("Worker Token").await;
    let trainer = cluster.trainer("worker1.example.com", &token.token, 2);
    trainer.wait_ready(READY).await;

    let node = cluster
        .wait_node("worker1.example.com", JOIN, "connected", |n| n.connected)
        .await;
    assert_eq!(node.token, format!("{}...", &token.token[..8]));
    assert_eq!(node.token_name, "Worker Token");
    assert_eq!(node.weight, 100);
    assert_eq!(node.gpus, 0);
    assert!(node.gpu_memory.is_empty());
    assert_eq!(node.total_memory, 0);
    assert_eq!(node.workers, 2);
    assert_eq!(node.workers_available, 2);
    assert_eq!(node.ip_address, "127.0.0.1");
    assert!(node.host_memory_gb > 0.0 && node.cpus >= 1);
    assert_eq!(node.gpu_info.available_backends, vec!["cpu".to_owned()]);
    assert!(!node.gpu_info.cuda_available && !node.gpu_info.rocm_available);
    assert_eq!(node.driver, Driver::Cpu);
    assert_eq!(node.driver_preference, None);
    assert_eq!(node.processes.len(), 2);
    for p in &node.processes {
        assert_eq!(
            (
                p.name.as_str(),
                p.status.as_str(),
                p.weight,
                p.model.as_deref()
            ),
            ("train_cpu", "active", 10, None)
        );
    }
    assert!(node.last_seen > 1.6e9);

    let listing = cluster.nodes().await;
    let stats = &listing.master_stats;
    assert_eq!(
        (
            stats.total_nodes,
            stats.connected_nodes,
            stats.total_workers
        ),
        (1, 1, 2)
    );
    assert_eq!(
        (stats.total_active_jobs, stats.total_completed_jobs),
        (0, 0)
    );
    assert!(stats.uptime_seconds > 0.0);

    // The page's field names, exactly.
    let raw: serde_json::Value = cluster
        .call(ep::NODES, &serde_json::json!({}))
        .await
        .unwrap();
    let n = &raw["nodes"][0];
    for field in [
        "token",
        "token_name",
        "hostname",
        "weight",
        "gpus",
        "gpu_memory",
        "total_memory",
        "workers_available",
        "ip_address",
        "connected",
        "last_seen",
        "uptime_seconds",
        "active_jobs",
        "completed_jobs",
    ] {
        assert!(n.get(field).is_some(), "nodes[0] lacks {field}: {n}");
    }

    let clients = cluster.clients().await.clients;
    assert_eq!(clients.len(), 1);
    let c = &clients[0];
    assert_eq!(c.client_id, node.client_id);
    assert_eq!(c.hostname, "worker1.example.com");
    assert!(c.connected && c.connected_at > 1.6e9 && c.last_seen >= c.connected_at);
    assert_eq!(c.gpu_info, node.gpu_info);
    assert_eq!(c.processes.len(), 2);
    let raw: serde_json::Value = cluster
        .call(ep::CLIENTS, &serde_json::json!({}))
        .await
        .unwrap();
    let c = &raw["clients"][0];
    for field in [
        "client_id",
        "connected_at",
        "last_seen",
        "gpu_info",
        "processes",
    ] {
        assert!(c.get(field).is_some(), "clients[0] lacks {field}: {c}");
    }
    for field in [
        "cuda_available",
        "rocm_available",
        "cuda_devices",
        "rocm_devices",
        "available_backends",
    ] {
        assert!(
            c["gpu_info"].get(field).is_some(),
            "gpu_info lacks {field}: {c}"
        );
    }
}

#[tokio::test]
async fn the_inventory_subcommand_prints_json_and_exits_zero() {
    let out = std::process::Command::new(gantry_testing::service::bin_dir().join("gantry-trainer"))
        .arg("inventory")
        .output()
        .expect("run gantry-trainer inventory");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: gantry_contracts::registry::Inventory =
        serde_json::from_slice(&out.stdout).expect("inventory JSON");
    assert!(inv
        .gpu_info
        .available_backends
        .ends_with(&[gantry_contracts::registry::Driver::Cpu]));
    assert!(inv.cpus >= 1 && inv.host_memory_gb > 0.0);
}

#[tokio::test]
async fn a_killed_node_shows_disconnected_within_three_heartbeats_and_returns_with_the_same_identity(
) {
    let cluster = Cluster::start().await;
    let token = cluster.create_token("t").await;
    let mut trainer = cluster.trainer("node-a", &token.token, 1);
    trainer.wait_ready(READY).await;
    let before = cluster
        .wait_node("node-a", JOIN, "connected", |n| n.connected)
        .await;

    trainer.kill9();
    let killed = Instant::now();
    let gone = cluster
        .wait_node("node-a", Duration::from_secs(10), "disconnected", |n| {
            !n.connected
        })
        .await;
    let took = killed.elapsed().as_secs_f64();
    // Three missed heartbeats, plus the one that may have been due, plus polling slack.
    let bound = INTERVAL * f64::from(MISSES + 1) + 0.75;
    assert!(
        took <= bound,
        "disconnected after {took:.2} s, more than {bound} s"
    );
    assert_eq!(gone.workers_available, 0);
    assert_eq!(gone.client_id, before.client_id);
    let listing = cluster.nodes().await;
    assert_eq!(
        (
            listing.master_stats.total_nodes,
            listing.master_stats.connected_nodes
        ),
        (1, 0)
    );
    assert!(
        cluster.clients().await.clients.is_empty(),
        "a disconnected node is not a connected client"
    );

    let trainer = cluster.trainer("node-a", &token.token, 1);
    trainer.wait_ready(READY).await;
    let back = cluster
        .wait_node("node-a", JOIN, "connected again", |n| n.connected)
        .await;
    assert_eq!(
        back.client_id, before.client_id,
        "same node name + token, same identity"
    );
    assert_eq!(cluster.nodes().await.nodes.len(), 1);
    assert!(back.uptime_seconds < 30.0);
}

#[tokio::test]
async fn a_stopped_trainer_exits_zero_and_shows_disconnected_at_once() {
    let cluster = Cluster::start().await;
    let token = cluster.create_token("t").await;
    let mut trainer = cluster.trainer("node-b", &token.token, 1);
    trainer.wait_ready(READY).await;
    cluster
        .wait_node("node-b", JOIN, "connected", |n| n.connected)
        .await;
    let status = trainer
        .terminate(Duration::from_secs(8))
        .await
        .expect("stopped within 8 s");
    assert_eq!(status.code(), Some(0), "{}", trainer.output());
    // Its goodbye heartbeat disconnects it before any expiry could.
    cluster
        .wait_node("node-b", Duration::from_millis(1200), "disconnected", |n| {
            !n.connected
        })
        .await;
}

#[tokio::test]
async fn set_driver_survives_the_nodes_restart_and_the_registrys_kill_9() {
    let mut cluster = Cluster::start().await;
    let token = cluster.create_token("t").await;
    let listed = format!("{}...", &token.token[..8]);
    let mut trainer = cluster.trainer("node-c", &token.token, 2);
    trainer.wait_ready(READY).await;
    let first = cluster
        .wait_node("node-c", JOIN, "connected", |n| n.connected)
        .await;

    // A backend the node has: no warning.
    let r: SetDriverResult = cluster
        .call(ep::SET_DRIVER, &set_driver("node-c", &listed, "cpu"))
        .await
        .unwrap();
    assert_eq!(
        r,
        SetDriverResult {
            success: true,
            warning: None
        }
    );
    cluster
        .wait_node("node-c", JOIN, "preferring cpu", |n| {
            n.driver_preference == Some(Driver::Cpu)
        })
        .await;

    // One it lacks: stored, with a warning; its workers show unavailable with the reason.
    let r: SetDriverResult = cluster
        .call(ep::SET_DRIVER, &set_driver("node-c", &token.token, "cuda"))
        .await
        .unwrap();
    assert!(r.success);
    assert!(
        r.warning
            .as_deref()
            .unwrap_or("")
            .contains("no cuda backend"),
        "{r:?}"
    );
    let unavailable = |n: &gantry_contracts::registry::ClusterNode| {
        n.connected
            && n.driver_preference == Some(Driver::Cuda)
            && n.processes.len() == 2
            && n.processes
                .iter()
                .all(|p| p.status == "unavailable" && p.name == "train_cuda" && p.reason.is_some())
    };
    let node = cluster
        .wait_node("node-c", JOIN, "unavailable on cuda", unavailable)
        .await;
    assert_eq!(node.workers_available, 0);

    // The node restarts: it gets the preference when it joins again.
    trainer.kill9();
    let trainer = cluster.trainer("node-c", &token.token, 2);
    trainer.wait_ready(READY).await;
    cluster
        .wait_node(
            "node-c",
            JOIN,
            "unavailable on cuda after its restart",
            |n| unavailable(n) && n.uptime_seconds < 20.0,
        )
        .await;

    // The registry is killed and restarted: preference, identity and liveness come back.
    cluster.registry.kill9();
    cluster.registry = cluster.stack.spawn("gantry-registry", &[]);
    cluster.registry.wait_ready(READY).await;
    let node = cluster
        .wait_node("node-c", JOIN, "restored with its preference", unavailable)
        .await;
    assert_eq!(node.client_id, first.client_id);

    // auto clears it.
    let r: SetDriverResult = cluster
        .call(ep::SET_DRIVER, &set_driver("node-c", &listed, "auto"))
        .await
        .unwrap();
    assert_eq!(r.warning, None);
    cluster
        .wait_node("node-c", JOIN, "back on cpu", |n| {
            n.driver_preference.is_none()
                && n.processes
                    .iter()
                    .all(|p| p.status == "active" && p.name == "train_cpu")
        })
        .await;
    drop(trainer);
}

#[tokio::test]
async fn a_registry_restarted_after_kill_9_still_lists_a_recently_disconnected_node() {
    let mut cluster = Cluster::start().await;
    let token = cluster.create_token("t").await;
    let mut trainer = cluster.trainer("node-d", &token.token, 1);
    trainer.wait_ready(READY).await;
    let node = cluster
        .wait_node("node-d", JOIN, "connected", |n| n.connected)
        .await;
    trainer.kill9();
    cluster
        .wait_node("node-d", Duration::from_secs(10), "disconnected", |n| {
            !n.connected
        })
        .await;
    // Let the batched state reach the store.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    cluster.registry.kill9();
    cluster.registry = cluster.stack.spawn("gantry-registry", &[]);
    cluster.registry.wait_ready(READY).await;
    let listing = cluster.nodes().await;
    assert_eq!(listing.nodes.len(), 1, "{listing:#?}");
    let restored = &listing.nodes[0];
    assert!(!restored.connected);
    assert_eq!(restored.client_id, node.client_id);
    assert!((restored.last_seen - node.last_seen).abs() < 5.0);
    assert!(
        listing.master_stats.uptime_seconds < 30.0,
        "uptime is the new registry's"
    );
}

#[tokio::test]
async fn a_drained_node_shows_draining_and_undrain_makes_it_active_again() {
    let cluster = Cluster::start().await;
    let token = cluster.create_token("t").await;
    let trainer = cluster.trainer("node-e", &token.token, 2);
    trainer.wait_ready(READY).await;
    cluster
        .wait_node("node-e", JOIN, "connected", |n| n.connected)
        .await;

    let drain = Drain {
        hostname: Some("node-e".into()),
        token: Some(token.token.clone()),
        drain: Some(true),
    };
    let r: SetDriverResult = cluster.call(ep::DRAIN, &drain).await.unwrap();
    assert!(r.success);
    let node = cluster
        .wait_node("node-e", JOIN, "draining", |n| {
            n.draining && n.processes.iter().all(|p| p.status == "draining")
        })
        .await;
    assert_eq!(node.workers_available, 0);
    assert!(node.connected);

    let undrain = Drain {
        drain: Some(false),
        ..drain
    };
    let _: SetDriverResult = cluster.call(ep::DRAIN, &undrain).await.unwrap();
    let node = cluster
        .wait_node("node-e", JOIN, "active again", |n| {
            !n.draining && n.processes.iter().all(|p| p.status == "active")
        })
        .await;
    assert_eq!(node.workers_available, 2);
}

#[tokio::test]
async fn two_registry_replicas_each_keep_the_whole_view() {
    let mut cluster = Cluster::start().await;
    let mut second = cluster.replica().await;
    let token = cluster.create_token("t").await;
    let listed = format!("{}...", &token.token[..8]);
    let trainer = cluster.trainer("node-f", &token.token, 1);
    trainer.wait_ready(READY).await;
    cluster
        .wait_node("node-f", JOIN, "connected", |n| n.connected)
        .await;
    let r: SetDriverResult = cluster
        .call(ep::SET_DRIVER, &set_driver("node-f", &listed, "rocm"))
        .await
        .unwrap();
    assert!(r.warning.is_some());

    // Only the second answers now: it learned the node and its preference by itself.
    cluster.registry.kill9();
    let node = cluster
        .wait_node("node-f", JOIN, "listed by the second replica", |n| {
            n.connected && n.driver_preference == Some(Driver::Rocm)
        })
        .await;
    assert_eq!(node.processes[0].status, "unavailable");

    // And the other way round: a fresh first replica, then the second goes.
    cluster.registry = cluster.stack.spawn("gantry-registry", &[]);
    cluster.registry.wait_ready(READY).await;
    second.kill9();
    cluster
        .wait_node(
            "node-f",
            JOIN,
            "listed by the restarted first replica",
            |n| n.connected && n.driver_preference == Some(Driver::Rocm),
        )
        .await;
    drop(trainer);
}

#[tokio::test]
async fn a_node_keeps_its_identity_and_rejoins_by_itself_after_nats_comes_back() {
    let mut cluster = Cluster::start().await;
    let token = cluster.create_token("t").await;
    let mut trainer = cluster.trainer("node-g", &token.token, 1);
    trainer.wait_ready(READY).await;
    let before = cluster
        .wait_node("node-g", JOIN, "connected", |n| n.connected)
        .await;

    cluster.stack.nats.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.stack.nats.restart().await;
    cluster.client = cluster.stack.nats.client().await;
    cluster.registry.wait_ready(READY).await;

    let after = cluster
        .wait_node("node-g", Duration::from_secs(40), "connected again", |n| {
            n.connected
        })
        .await;
    assert_eq!(after.client_id, before.client_id);
    assert!(
        trainer.try_exit().is_none(),
        "the trainer gave up:\n{}",
        trainer.output()
    );
    assert_eq!(cluster.nodes().await.nodes.len(), 1);
}

#[tokio::test]
async fn a_heartbeat_from_an_unknown_node_is_answered_with_a_request_to_register() {
    use futures::StreamExt;
    use gantry_contracts::registry::{Heartbeat, NodeControl, NodeSettings};
    use gantry_contracts::subjects;

    let cluster = Cluster::start().await;
    let node_id = "0123456789abcdef0123456789abcdef";
    let mut control = cluster
        .client
        .subscribe(subjects::node_control(node_id))
        .await
        .unwrap();
    let hb = Heartbeat {
        node_id: node_id.into(),
        busy_slots: 0,
        gpu_memory_used_mib: None,
        processes: vec![],
        driver: Driver::Cpu,
        settings: NodeSettings::default(),
        uptime_seconds: 1.0,
        stopping: false,
    };
    cluster
        .client
        .publish(
            subjects::node_heartbeat(node_id),
            serde_json::to_vec(&hb).unwrap().into(),
        )
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), control.next())
        .await
        .expect("an answer")
        .unwrap();
    let ctl: NodeControl = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(ctl, NodeControl::Reregister);
    assert!(
        cluster.nodes().await.nodes.is_empty(),
        "an unregistered node is not listed"
    );
}
