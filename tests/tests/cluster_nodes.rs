//! Trainer nodes joining the cluster, over the real binaries: listings with their inventory,
//! liveness (kill -9, restart, same identity), driver choice that survives restarts of the node
//! and of the registry, draining, graceful stops, and several registry replicas.

use std::time::{Duration, Instant};

use gantry_contracts::registry::{Drain, Driver, SetDriver, SetDriverResult};
use gantry_contracts::subjects::registry as ep;
use gantry_testing::{wait_until, TestStack, INTERVAL, MISSES, READY};

const JOIN: Duration = Duration::from_secs(30);
const LIMIT: Duration = Duration::from_secs(240);

fn set_driver(hostname: &str, token: &str, driver: &str) -> SetDriver {
    SetDriver {
        hostname: Some(hostname.into()),
        token: Some(token.into()),
        driver: Some(driver.into()),
    }
}

#[tokio::test]
async fn a_joined_node_appears_in_both_listings_with_its_inventory() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("Worker Token").await;
        let trainer = stack.trainer("worker1.example.com", &token.token, 2, &[]);
        trainer.wait_ready(READY).await;

        let node = stack
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
        assert_eq!(node.processes.iter().filter(|p| p.is_training()).count(), 2);
        for p in node.processes.iter().filter(|p| p.is_training()) {
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

        let listing = stack.nodes().await;
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
        let raw: serde_json::Value = stack
            .registry_call(ep::NODES, &serde_json::json!({}))
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

        let clients = stack.clients().await.clients;
        assert_eq!(clients.len(), 1);
        let c = &clients[0];
        assert_eq!(c.client_id, node.client_id);
        assert_eq!(c.hostname, "worker1.example.com");
        assert!(c.connected && c.connected_at > 1.6e9 && c.last_seen >= c.connected_at);
        assert_eq!(c.gpu_info, node.gpu_info);
        assert_eq!(
            c.processes.len(),
            3,
            "two training slots and an analysis worker"
        );
        let raw: serde_json::Value = stack
            .registry_call(ep::CLIENTS, &serde_json::json!({}))
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
    })
    .await;
}

#[tokio::test]
async fn the_inventory_subcommand_prints_json_and_exits_zero() {
    TestStack::run(LIMIT, |_stack| async move {
        let out =
            std::process::Command::new(gantry_testing::service::bin_dir().join("gantry-trainer"))
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
    })
    .await;
}

#[tokio::test]
async fn a_killed_node_shows_disconnected_within_three_heartbeats_and_returns_with_the_same_identity(
) {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let mut trainer = stack.trainer("node-a", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        let before = stack
            .wait_node("node-a", JOIN, "connected", |n| n.connected)
            .await;

        trainer.kill9();
        let killed = Instant::now();
        let gone = stack
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
        let listing = stack.nodes().await;
        assert_eq!(
            (
                listing.master_stats.total_nodes,
                listing.master_stats.connected_nodes
            ),
            (1, 0)
        );
        assert!(
            stack.clients().await.clients.is_empty(),
            "a disconnected node is not a connected client"
        );

        let trainer = stack.trainer("node-a", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        let back = stack
            .wait_node("node-a", JOIN, "connected again", |n| n.connected)
            .await;
        assert_eq!(
            back.client_id, before.client_id,
            "same node name + token, same identity"
        );
        assert_eq!(stack.nodes().await.nodes.len(), 1);
        assert!(back.uptime_seconds < 30.0);
    })
    .await;
}

#[tokio::test]
async fn a_stopped_trainer_exits_zero_and_shows_disconnected_at_once() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let mut trainer = stack.trainer("node-b", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        stack
            .wait_node("node-b", JOIN, "connected", |n| n.connected)
            .await;
        let status = trainer
            .terminate(Duration::from_secs(8))
            .await
            .expect("stopped within 8 s");
        assert_eq!(status.code(), Some(0), "{}", trainer.output());
        // Its goodbye heartbeat disconnects it before any expiry could.
        stack
            .wait_node("node-b", Duration::from_millis(1200), "disconnected", |n| {
                !n.connected
            })
            .await;
    })
    .await;
}

#[tokio::test]
async fn set_driver_survives_the_nodes_restart_and_the_registrys_kill_9() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let listed = format!("{}...", &token.token[..8]);
        let mut trainer = stack.trainer("node-c", &token.token, 2, &[]);
        trainer.wait_ready(READY).await;
        let first = stack
            .wait_node("node-c", JOIN, "connected", |n| n.connected)
            .await;

        // A backend the node has: no warning.
        let r: SetDriverResult = stack
            .registry_call(ep::SET_DRIVER, &set_driver("node-c", &listed, "cpu"))
            .await
            .unwrap();
        assert_eq!(
            r,
            SetDriverResult {
                success: true,
                warning: None
            }
        );
        stack
            .wait_node("node-c", JOIN, "preferring cpu", |n| {
                n.driver_preference == Some(Driver::Cpu)
            })
            .await;

        // One it lacks: stored, with a warning; its workers show unavailable with the reason.
        let r: SetDriverResult = stack
            .registry_call(ep::SET_DRIVER, &set_driver("node-c", &token.token, "cuda"))
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
                && n.processes.iter().filter(|p| p.is_training()).count() == 2
                && n.processes.iter().filter(|p| p.is_training()).all(|p| {
                    p.status == "unavailable" && p.name == "train_cuda" && p.reason.is_some()
                })
        };
        let node = stack
            .wait_node("node-c", JOIN, "unavailable on cuda", unavailable)
            .await;
        assert_eq!(node.workers_available, 0);

        // The node restarts: it gets the preference when it joins again.
        trainer.kill9();
        let trainer = stack.trainer("node-c", &token.token, 2, &[]);
        trainer.wait_ready(READY).await;
        stack
            .wait_node(
                "node-c",
                JOIN,
                "unavailable on cuda after its restart",
                |n| unavailable(n) && n.uptime_seconds < 20.0,
            )
            .await;

        // The registry is killed and restarted: preference, identity and liveness come back.
        stack.kill9("gantry-registry");
        stack.start_services(&["gantry-registry"]).await;
        let node = stack
            .wait_node("node-c", JOIN, "restored with its preference", unavailable)
            .await;
        assert_eq!(node.client_id, first.client_id);

        // auto clears it.
        let r: SetDriverResult = stack
            .registry_call(ep::SET_DRIVER, &set_driver("node-c", &listed, "auto"))
            .await
            .unwrap();
        assert_eq!(r.warning, None);
        stack
            .wait_node("node-c", JOIN, "back on cpu", |n| {
                n.driver_preference.is_none()
                    && n.processes
                        .iter()
                        .filter(|p| p.is_training())
                        .all(|p| p.status == "active" && p.name == "train_cpu")
            })
            .await;
        drop(trainer);
    })
    .await;
}

#[tokio::test]
async fn a_registry_restarted_after_kill_9_still_lists_a_recently_disconnected_node() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let mut trainer = stack.trainer("node-d", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        let node = stack
            .wait_node("node-d", JOIN, "connected", |n| n.connected)
            .await;
        trainer.kill9();
        stack
            .wait_node("node-d", Duration::from_secs(10), "disconnected", |n| {
                !n.connected
            })
            .await;
        // The batched state has reached the store: it says the node is disconnected.
        let flushed = wait_until(Duration::from_secs(15), || async {
            let out = stack
                .store_script(
                    "registry",
                    r#"
import sys
from pymongo import MongoClient
d = MongoClient(sys.argv[1])[sys.argv[2]].node_state.find_one({"_id": sys.argv[3]})
print("flushed" if d is not None and d.get("connected") is False else "not yet")
"#,
                    &[&node.client_id],
                )
                .await;
            (out.trim() == "flushed").then_some(())
        })
        .await;
        assert!(
            flushed.is_some(),
            "the registry never wrote the node disconnected"
        );

        stack.kill9("gantry-registry");
        stack.start_services(&["gantry-registry"]).await;
        let listing = stack.nodes().await;
        assert_eq!(listing.nodes.len(), 1, "{listing:#?}");
        let restored = &listing.nodes[0];
        assert!(!restored.connected);
        assert_eq!(restored.client_id, node.client_id);
        assert!((restored.last_seen - node.last_seen).abs() < 5.0);
        assert!(
            listing.master_stats.uptime_seconds < 30.0,
            "uptime is the new registry's"
        );
    })
    .await;
}

#[tokio::test]
async fn a_drained_node_shows_draining_and_undrain_makes_it_active_again() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let trainer = stack.trainer("node-e", &token.token, 2, &[]);
        trainer.wait_ready(READY).await;
        stack
            .wait_node("node-e", JOIN, "connected", |n| n.connected)
            .await;

        let drain = Drain {
            hostname: Some("node-e".into()),
            token: Some(token.token.clone()),
            drain: Some(true),
        };
        let r: SetDriverResult = stack.registry_call(ep::DRAIN, &drain).await.unwrap();
        assert!(r.success);
        let node = stack
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
        let _: SetDriverResult = stack.registry_call(ep::DRAIN, &undrain).await.unwrap();
        let node = stack
            .wait_node("node-e", JOIN, "active again", |n| {
                !n.draining && n.processes.iter().all(|p| p.status == "active")
            })
            .await;
        assert_eq!(node.workers_available, 2);
    })
    .await;
}

#[tokio::test]
async fn two_registry_replicas_each_keep_the_whole_view() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let mut second = stack.spawn("gantry-registry", &[]);
        second.wait_ready(READY).await;
        let token = stack.create_token("t").await;
        let listed = format!("{}...", &token.token[..8]);
        let trainer = stack.trainer("node-f", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        stack
            .wait_node("node-f", JOIN, "connected", |n| n.connected)
            .await;
        let r: SetDriverResult = stack
            .registry_call(ep::SET_DRIVER, &set_driver("node-f", &listed, "rocm"))
            .await
            .unwrap();
        assert!(r.warning.is_some());

        // Only the second answers now: it learned the node and its preference by itself.
        stack.kill9("gantry-registry");
        // Bounded loosely: under a loaded machine the kill can lose the first replica's
        // announcement, and the second learns from the node's own settings instead.
        let node = stack
            .wait_node(
                "node-f",
                Duration::from_secs(90),
                "listed by the second replica",
                |n| {
                    // The preference comes from the announcement, the process status from the
                    // node's next heartbeat: wait for both.
                    n.connected
                        && n.driver_preference == Some(Driver::Rocm)
                        && n.processes
                            .first()
                            .is_some_and(|p| p.status == "unavailable")
                },
            )
            .await;
        assert_eq!(node.processes[0].status, "unavailable");

        // And the other way round: a fresh first replica, then the second goes.
        stack.start_services(&["gantry-registry"]).await;
        second.kill9();
        stack
            .wait_node(
                "node-f",
                JOIN,
                "listed by the restarted first replica",
                |n| n.connected && n.driver_preference == Some(Driver::Rocm),
            )
            .await;
        drop(trainer);
    })
    .await;
}

#[tokio::test]
async fn a_node_keeps_its_identity_and_rejoins_by_itself_after_nats_comes_back() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let token = stack.create_token("t").await;
        let mut trainer = stack.trainer("node-g", &token.token, 1, &[]);
        trainer.wait_ready(READY).await;
        let before = stack
            .wait_node("node-g", JOIN, "connected", |n| n.connected)
            .await;

        stack.nats.stop();
        // Down long enough that the registry noticed.
        let noticed = wait_until(Duration::from_secs(10), || async {
            (stack.registry().readyz().await == Some(503)).then_some(())
        })
        .await;
        assert!(
            noticed.is_some(),
            "the registry stayed ready with NATS stopped"
        );
        stack.nats.restart().await;
        stack.reconnect().await;
        stack.registry().wait_ready(READY).await;

        let after = stack
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
        assert_eq!(stack.nodes().await.nodes.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_heartbeat_from_an_unknown_node_is_answered_with_a_request_to_register() {
    TestStack::run(LIMIT, |mut stack| async move {
        use futures::StreamExt;
        use gantry_contracts::registry::{Heartbeat, NodeControl, NodeSettings};
        use gantry_contracts::subjects;

        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let node_id = "0123456789abcdef0123456789abcdef";
        let mut control = stack
            .client()
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
            gpu_stats: Vec::new(),
            unhealthy: None,
        };
        stack
            .client()
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
            stack.nodes().await.nodes.is_empty(),
            "an unregistered node is not listed"
        );
    })
    .await;
}
