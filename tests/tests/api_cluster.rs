//! The cluster over HTTP, through the real api, registry and a CPU trainer: the admin page's
//! shapes for cluster tokens, clients and nodes, `set_driver` in all three body forms with every
//! bad input, drain, and revoking a token.

use std::time::Duration;

use gantry_testing::{wait_until, TestStack, ADMIN_TOKEN};
use reqwest::multipart::Form;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

#[tokio::test]
async fn cluster_tokens_clients_nodes_and_set_driver_answer_in_the_pages_shapes() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.set_env("GANTRY_HEARTBEAT_INTERVAL", "0.5");
        stack.start_core().await;
        let base = stack.base_url().to_owned();

        let (status, created) = send(
            http()
                .post(format!("{base}/admin/api/cluster_tokens"))
                .json(&json!({"name": "Worker Token"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let token = created["token"].as_str().unwrap().to_owned();
        assert_eq!(token.len(), 64, "whole, once");
        assert_eq!(
            keys(&created),
            ["active", "created_at", "id", "name", "token"]
        );
        let (_, list) = send(http().get(format!("{base}/admin/api/cluster_tokens"))).await;
        assert_eq!(list["tokens"][0]["token"], format!("{}...", &token[..8]));
        assert_eq!(list["tokens"][0]["name"], "Worker Token");
        assert_eq!(list["tokens"][0]["id"], 1);
        let (status, _) = send(
            http()
                .post(format!("{base}/admin/api/cluster_tokens"))
                .json(&json!({"name": ""})),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let mut trainer = stack.spawn(
            "gantry-trainer",
            &[
                ("GANTRY_CLUSTER_TOKEN", &token),
                ("GANTRY_NODE_NAME", "worker1.example.com"),
                ("GANTRY_WORKERS", "2"),
            ],
        );
        trainer.wait_ready(Duration::from_secs(60)).await;
        let clients = wait_until(Duration::from_secs(20), || {
            let base = base.clone();
            async move {
                let (_, v) = send(http().get(format!("{base}/admin/api/cluster_clients"))).await;
                (v["clients"].as_array()?.len() == 1).then_some(v)
            }
        })
        .await
        .expect("the node never showed in cluster_clients");
        let client = &clients["clients"][0];
        assert_eq!(
            client["gpu_info"],
            json!({"cuda_available": false, "rocm_available": false, "cuda_devices": 0, "rocm_devices": 0, "available_backends": ["cpu"]})
        );
        // Two training slots, then the one analysis worker (GANTRY_ANALYSIS_WORKERS' default).
        assert_eq!(client["processes"].as_array().unwrap().len(), 3);
        assert_eq!(
            client["processes"][0],
            json!({"name": "train_cpu", "status": "active", "weight": 10, "model": null})
        );
        assert_eq!(
            client["processes"][2],
            json!({"name": "analysis_cpu", "status": "active", "weight": 10, "model": null})
        );
        assert!(client["connected_at"].is_f64() && client["last_seen"].is_f64());

        let (_, nodes) = send(http().get(format!("{base}/api/admin/cluster_nodes"))).await;
        assert_eq!(
            keys(&nodes["master_stats"]),
            [
                "connected_nodes",
                "total_active_jobs",
                "total_completed_jobs",
                "total_nodes",
                "total_workers",
                "uptime_seconds"
            ]
        );
        assert_eq!(nodes["master_stats"]["total_workers"], 2);
        let node = &nodes["nodes"][0];
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
            assert!(node.get(field).is_some(), "node lacks {field}: {node}");
        }
        assert_eq!(node["token"], format!("{}...", &token[..8]));
        assert_eq!(node["token_name"], "Worker Token");
        assert_eq!(node["weight"], 100);
        assert_eq!(node["total_memory"], 0);
        assert_eq!(node["workers_available"], 2);
        let (_, alias) = send(http().get(format!("{base}/admin/api/cluster_nodes"))).await;
        assert_eq!(alias["nodes"][0]["hostname"], "worker1.example.com");

        // set_driver as curl -F sends it (multipart), URL-encoded and JSON; the token whole or listed.
        let url = format!("{base}/api/admin/cluster_nodes/set_driver");
        let listed = format!("{}...", &token[..8]);
        let form = Form::new()
            .text("hostname", "worker1.example.com")
            .text("token", listed.clone())
            .text("driver", "cuda");
        let (status, v) = send(http().post(&url).multipart(form)).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["success"], true);
        assert!(
            v["warning"].as_str().unwrap().contains("cuda"),
            "a CPU node lacks CUDA: {v}"
        );
        let unavailable = wait_until(Duration::from_secs(10), || {
            let base = base.clone();
            async move {
                let (_, v) = send(http().get(format!("{base}/admin/api/cluster_clients"))).await;
                v["clients"][0]["processes"]
                    .as_array()?
                    .iter()
                    .all(|p| p["status"] == "unavailable" && p["reason"].is_string())
                    .then_some(())
            }
        })
        .await;
        assert!(unavailable.is_some(), "processes never showed unavailable");
        let (status, v) = send(http().post(&url).form(&[
            ("hostname", "worker1.example.com"),
            ("token", token.as_str()),
            ("driver", "auto"),
        ]))
        .await;
        assert_eq!(
            (status, v.clone()),
            (StatusCode::OK, json!({"success": true}))
        );
        let (status, v) = send(
            http()
                .post(&url)
                .json(&json!({"hostname": "worker1.example.com", "token": token, "driver": "cpu"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");

        for (body, want, needle) in [
            (
                json!({"hostname": "worker1.example.com", "token": token, "driver": "opencl"}),
                StatusCode::BAD_REQUEST,
                "driver must be one of",
            ),
            (
                json!({"token": token, "driver": "cuda"}),
                StatusCode::BAD_REQUEST,
                "hostname",
            ),
            (
                json!({"hostname": "worker1.example.com", "driver": "cuda"}),
                StatusCode::BAD_REQUEST,
                "token",
            ),
            (
                json!({"hostname": "worker1.example.com", "token": token}),
                StatusCode::BAD_REQUEST,
                "driver",
            ),
            (
                json!({"hostname": "nobody.example.com", "token": token, "driver": "cuda"}),
                StatusCode::NOT_FOUND,
                "",
            ),
        ] {
            let (status, v) = send(http().post(&url).json(&body)).await;
            assert_eq!(status, want, "{body}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(needle),
                "{body}: {v}"
            );
        }

        // Drain through the form the page uses.
        let (status, _) = send(
            http()
                .post(format!("{base}/api/admin/cluster_nodes/drain"))
                .multipart(
                    Form::new()
                        .text("hostname", "worker1.example.com")
                        .text("token", listed),
                ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let drained = wait_until(Duration::from_secs(10), || {
            let base = base.clone();
            async move {
                let (_, v) = send(http().get(format!("{base}/api/admin/cluster_nodes"))).await;
                v["nodes"][0]["processes"]
                    .as_array()?
                    .iter()
                    .all(|p| p["status"] == "draining")
                    .then_some(())
            }
        })
        .await;
        assert!(drained.is_some());

        // Revoking the token sends its node away and shows it disconnected.
        let (status, revoked) = send(http().delete(format!("{base}/admin/api/cluster_tokens/1"))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{revoked}");
        let (_, list) = send(http().get(format!("{base}/admin/api/cluster_tokens"))).await;
        assert_eq!(list["tokens"][0]["active"], false, "{list}");
        let exit = trainer
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("the trainer kept running with a revoked token");
        assert!(!exit.success());
        let (_, nodes) = send(http().get(format!("{base}/api/admin/cluster_nodes"))).await;
        assert_eq!(nodes["nodes"][0]["connected"], false, "{nodes}");
        let (status, _) = send(http().delete(format!("{base}/admin/api/cluster_tokens/99"))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    })
    .await;
}
