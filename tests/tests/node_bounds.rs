//! What a node sends is bounded before it touches a registry: an oversized or unbounded
//! registration, heartbeat or announcement is refused, logged, and every replica stays up and
//! keeps serving real nodes.

use std::time::Duration;

use gantry_contracts::registry::{Driver, RegisterNode, MAX_NODE_MESSAGE, MAX_WORKERS};
use gantry_contracts::subjects::{self, registry as ep};
use gantry_testing::{wait_until, TestStack, READY};

const LIMIT: Duration = Duration::from_secs(180);
const SEEN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn oversized_registrations_heartbeats_and_announcements_are_refused_and_every_replica_stays_up(
) {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_services(&["gantry-registry"]).await;
        let mut second = stack.spawn("gantry-registry", &[]);
        second.wait_ready(READY).await;
        let token = stack.create_token("bounds").await;

        // A registration with four billion workers: refused with the bound, nothing stored.
        let huge: Result<serde_json::Value, _> = stack
            .registry_call(
                ep::REGISTER,
                &RegisterNode {
                    token: token.token.clone(),
                    hostname: "greedy".into(),
                    ip_address: "10.0.0.9".into(),
                    weight: 100,
                    workers: 4_000_000_000,
                    analysis_workers: 0,
                    inventory: Default::default(),
                    version: "0".into(),
                },
            )
            .await;
        let refused = huge.expect_err("an unbounded registration is refused");
        assert!(
            refused.message.contains(&MAX_WORKERS.to_string()),
            "{refused:?}"
        );

        // Straight onto the bus: a node record announced with four billion workers, a heartbeat
        // past the size bound, and one claiming more processes than any node may have.
        let client = stack.client().clone();
        let announcement = serde_json::json!({
            "type": "node_registered",
            "record": {
                "_id": "forged", "hostname": "forged", "token_id": token.id,
                "token_name": "bounds", "token_prefix": "x", "ip_address": "10.0.0.8",
                "weight": 100, "workers": 4_000_000_000u64,
                "inventory": {"gpu_info": {"cuda_available": false, "rocm_available": false,
                    "cuda_devices": 0, "rocm_devices": 0, "available_backends": ["cpu"]},
                    "gpus": [], "driver_version": null, "cuda_version": null,
                    "rocm_version": null, "host_memory_gb": 1.0, "cpus": 1},
                "version": "0", "registered_at": 0.0, "completed_jobs": 0
            }
        });
        client
            .publish(
                subjects::REGISTRY_EVENTS,
                serde_json::to_vec(&announcement).unwrap().into(),
            )
            .await
            .unwrap();
        let processes: Vec<serde_json::Value> = (0..=2 * MAX_WORKERS)
            .map(|_| serde_json::json!({"name": "train_cpu", "status": "active", "weight": 10}))
            .collect();
        let crowded = serde_json::json!({
            "node_id": "forged", "busy_slots": 0, "processes": processes,
            "driver": "cpu", "uptime_seconds": 1.0,
        });
        client
            .publish(
                "gantry.node.forged.heartbeat",
                serde_json::to_vec(&crowded).unwrap().into(),
            )
            .await
            .unwrap();
        client
            .publish(
                "gantry.node.forged.heartbeat",
                vec![b' '; MAX_NODE_MESSAGE + 1].into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();

        // Both replicas say why they ignored each one.
        for registry in [stack.registry(), &second] {
            let logged = wait_until(SEEN, || async {
                let out = registry.output();
                (out.contains("ignoring an unusable node record")
                    && out.contains("more than 256 workers")
                    && out.matches("oversized heartbeat").count() >= 2)
                    .then_some(())
            })
            .await;
            assert!(
                logged.is_some(),
                "a replica did not report the refusals:\n{}",
                registry.output()
            );
        }

        // Both still run, and a real node joins and is listed alone.
        assert!(stack.service_mut("gantry-registry").try_exit().is_none());
        assert!(second.try_exit().is_none());
        let _trainer = stack.trainer("honest", &token.token, 1, &[]);
        let node = stack
            .wait_node("honest", SEEN, "connected", |n| n.connected)
            .await;
        assert_eq!(node.driver, Driver::Cpu);
        let listing = stack.nodes().await;
        assert_eq!(listing.nodes.len(), 1, "{:?}", listing.nodes);
        assert_eq!(listing.master_stats.total_workers, 1);
    })
    .await;
}
