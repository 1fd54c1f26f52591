//! A node that fails its health check takes no job and says why, in its processes, in the
//! queue's waiting reason and in its metrics; once the check passes it takes the waiting job.
//! Every service's `/metrics` is read by Prometheus' own text-format parser.
//!
//! The failing check is the operator's own (`GANTRY_HEALTH_CHECK`, a real shell command run by
//! the real trainer): the machines that run this suite have no GPU whose ECC counters could be
//! made to fail. The GPU checks themselves are unit-tested in the contracts and read on a GPU
//! machine by `bench/device_check.sh`.

use std::time::Duration;

use gantry_testing::{metric, wait_until, TestStack};
use serde_json::json;

const WHY: &str = "GPU 0: Xid 79, fallen off the bus";

#[tokio::test]
async fn a_node_failing_its_health_check_takes_no_job_says_why_and_takes_it_once_it_passes() {
    TestStack::run(Duration::from_secs(240), |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let state = tempfile::TempDir::new().unwrap();
        let flag = state.path().join("sick");
        std::fs::write(&flag, format!("{WHY}\n")).unwrap();
        let check = format!(
            "if [ -s '{f}' ]; then cat '{f}'; exit 1; fi",
            f = flag.display()
        );
        let node = stack
            .join_trainer_with(
                "sick-node",
                &[
                    ("GANTRY_HEALTH_CHECK", check.as_str()),
                    ("GANTRY_HEALTH_CHECK_INTERVAL", "1"),
                ],
            )
            .await;

        // The listing says why, per node and per idle worker.
        let listed = stack
            .wait_node("sick-node", Duration::from_secs(30), "unhealthy", |n| {
                n.unhealthy.as_deref() == Some(WHY)
            })
            .await;
        // The training slot and the analysis worker both take nothing new.
        assert_eq!(listed.processes.len(), 2);
        assert_eq!(listed.processes[1].status, "unavailable");
        assert_eq!(listed.processes[0].status, "unavailable");
        assert_eq!(
            listed.processes[0].reason.as_deref(),
            Some(format!("the node failed its health check: {WHY}").as_str())
        );
        let metrics = node.metrics().await;
        assert_eq!(
            metric(&metrics, "gantry_node_healthy{node=\"sick-node\"}"),
            0.0
        );

        // A job waits, saying why, and stays queued across the node's heartbeats.
        stack.shapes("shapes", 6, 3);
        let id = stack
            .submit(json!({"output_model": "Healthy", "train_path": "/shapes", "epochs": 1}))
            .await;
        let waiting = stack
            .wait_job(
                &id,
                Duration::from_secs(30),
                "waiting on unhealthy nodes",
                |j| {
                    j["waiting_reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("fail their health check"))
                },
            )
            .await;
        assert_eq!(waiting["status"], "queued", "{waiting}");
        let seen = listed.last_seen;
        stack
            .wait_node(
                "sick-node",
                Duration::from_secs(30),
                "heard twice more",
                |n| n.last_seen > seen + 0.5,
            )
            .await;
        let still = stack.job(&id).await;
        assert_eq!(
            still["status"], "queued",
            "an unhealthy node took the job: {still}"
        );

        // The check passes: the node takes the job and trains it.
        std::fs::write(&flag, "").unwrap();
        stack
            .wait_node("sick-node", Duration::from_secs(30), "healthy", |n| {
                n.unhealthy.is_none()
            })
            .await;
        let done = stack.wait_final(&id, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let healthy = wait_until(Duration::from_secs(10), || async {
            let m = node.metrics().await;
            (metric(&m, "gantry_node_healthy{node=\"sick-node\"}") == 1.0).then_some(())
        })
        .await;
        assert!(
            healthy.is_some(),
            "gantry_node_healthy never went back to 1"
        );

        // Every service's /metrics is Prometheus' text format, as Prometheus' own parser reads it.
        for service in [stack.api(), stack.auth(), stack.registry(), &node] {
            let families = prometheus_families(&service.metrics().await).await;
            assert!(
                families.iter().any(|f| f.starts_with("gantry_")),
                "{} exports no gantry_ metric: {families:?}",
                service.name
            );
        }
    })
    .await;
}

/// The metric families `prometheus_client`'s parser finds in `text`; panics when it refuses it.
async fn prometheus_families(text: &str) -> Vec<String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let out = tokio::process::Command::new(gantry_testing::tool("python"))
        .args([
            "-c",
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\nfor f in parse(open(sys.argv[1]).read()): print(f.name)",
        ])
        .arg(file.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "Prometheus' parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
