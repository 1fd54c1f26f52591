//! A trainer cut off the network mid-job (it runs in its own network namespace, joined by a
//! veth pair whose link the test takes down): the registry marks it gone within three
//! heartbeats, the job resumes on another node from its last checkpoint, and when the link comes
//! back the cut node's late words change nothing.

use std::time::{Duration, Instant};

use gantry_contracts::jobs::JobEventKind;
use gantry_testing::netns::{self, NetNs};
use gantry_testing::{kinds, TestStack, INTERVAL, JOIN, MISSES};
use reqwest::StatusCode;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn a_node_cut_off_mid_job_is_gone_within_three_heartbeats_and_its_job_resumes_elsewhere() {
    if !netns::available() {
        eprintln!("skipped: cutting a node off needs root (ip netns)");
        return;
    }
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let mut net = NetNs::create().expect("a network namespace (root and iproute2)");
        let port = net.forward(stack.nats.port).await;
        let url = format!("nats://{}:{port}", netns::HOST_ADDR);
        let token = stack.cluster_token().await.to_owned();
        let cache = stack.cache_dir("cut").display().to_string();
        let _cut = stack.spawn_wrapped(
            &net.wrapper(),
            "gantry-trainer",
            &[
                ("GANTRY_CLUSTER_TOKEN", &token),
                ("GANTRY_NODE_NAME", "cut"),
                ("GANTRY_CACHE_DIR", &cache),
                ("NATS_URL", &url),
            ],
        );
        stack.wait_node("cut", JOIN, "connected", |n| n.connected).await;

        stack.shapes("shapes", 40, 3);
        let id = stack
            .submit(json!({"train_path": "/shapes", "epochs": 15, "image_size": 48, "output_model": "Cut"}))
            .await;
        stack
            .wait_job(&id, Duration::from_secs(90), "checkpointed on the cut node", |j| {
                j["node"] == "cut" && j["checkpoint_epoch"].as_u64().unwrap_or(0) >= 1
            })
            .await;

        // The link goes down: packets vanish, nothing is closed.
        let cut_at = Instant::now();
        net.cut();
        stack
            .wait_node("cut", Duration::from_secs(20), "gone", |n| !n.connected)
            .await;
        // Three heartbeats, plus the sweep's own period and this test's polling, with room for a
        // loaded machine.
        let gone_after = cut_at.elapsed();
        let three = Duration::from_secs_f64(INTERVAL * f64::from(MISSES));
        assert!(
            gone_after < three + Duration::from_secs(4),
            "marked gone after {gone_after:?}, three heartbeats are {three:?}"
        );

        // Another node takes the job once its lease lapses and resumes after the checkpoint.
        let _rescuer = stack.join_trainer("rescuer").await;
        let job = stack.wait_final(&id, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", stack.logs());
        assert_eq!(job["node"], "rescuer", "{job:#}");
        let events = stack.events(&id).await;
        let resumed = events.iter().any(|e| {
            matches!(&e.kind, JobEventKind::Started { node, resumed_from_epoch, .. }
                if node == "rescuer" && *resumed_from_epoch >= 1)
        });
        assert!(resumed, "not resumed from a checkpoint: {:?}", kinds(&events));

        // The link comes back; the cut node is heard again, and whatever it still had to say
        // about the job changes nothing.
        net.restore();
        stack
            .wait_node("cut", Duration::from_secs(90), "connected again", |n| n.connected)
            .await;
        let after = stack.job(&id).await;
        assert_eq!(after["status"], "completed", "{after:#}");
        assert_eq!(after["node"], "rescuer", "{after:#}");
        assert_eq!(after["model"]["version"], job["model"]["version"]);
        let (status, model) = stack.admin_get("/admin/api/models/Cut").await;
        assert_eq!(status, StatusCode::OK, "{model}");
        assert_eq!(model["versions"].as_array().map(Vec::len), Some(1), "{model}");
    })
    .await;
}
