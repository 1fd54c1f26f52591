//! The trainer pod's `preStop` hook (k8s/trainer/statefulset.yaml runs `gantry-trainer drain`), over
//! the real binaries: a node that drains itself to stop hands its running job back at once (its
//! checkpoint kept), another node resumes and finishes it, the drained node takes nothing new,
//! and the same node coming back under its name (a StatefulSet scaling up again) takes work.

use std::time::Duration;

use gantry_contracts::jobs::JobEventKind;
use gantry_testing::{ServiceProcess, TestStack};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(360);

/// Run `gantry-trainer drain` as the pod's preStop hook does: beside the running trainer `name`,
/// with its configuration. Returns its exit status and output.
async fn pre_stop(stack: &TestStack, name: &str) -> (std::process::ExitStatus, String) {
    let token = stack.cluster_token().await.to_owned();
    let mut cmd =
        tokio::process::Command::new(gantry_testing::service::bin_dir().join("gantry-trainer"));
    cmd.env_clear();
    for keep in ["PATH", "HOME", "LD_LIBRARY_PATH", "TMPDIR"] {
        if let Ok(v) = std::env::var(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.envs(stack.env())
        .env("GANTRY_CLUSTER_TOKEN", &token)
        .env("GANTRY_NODE_NAME", name)
        .env("GANTRY_CACHE_DIR", stack.cache_dir(name))
        .args(["drain", "--timeout", "60"]);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("gantry-trainer drain ends within its own timeout")
        .expect("gantry-trainer drain starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

fn draining(n: &gantry_contracts::registry::ClusterNode) -> bool {
    !n.processes.is_empty() && n.processes.iter().all(|p| p.status == "draining")
}

#[tokio::test]
async fn a_node_stopping_drains_itself_and_its_job_is_handed_back_and_finished_elsewhere() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 20, 7);
        let first: ServiceProcess = stack.join_trainer("trainer-0").await;
        let id = stack
            .submit(json!({"output_model": "prestop", "train_path": "/shapes", "epochs": 10, "image_size": 32, "batch_size": 8}))
            .await;
        let job = stack
            .wait_job(&id, Duration::from_secs(120), "checkpointed", |j| {
                j["checkpoint_epoch"].as_u64() >= Some(1)
            })
            .await;
        assert_eq!(job["node"], "trainer-0");

        // The preStop hook: it returns once the job is handed back, with the trainer still up.
        let (status, out) = pre_stop(&stack, "trainer-0").await;
        assert!(status.success(), "drain failed ({status:?}):\n{out}\n{}", first.output());
        assert!(out.contains("is drained"), "{out}");
        assert!(first.output().contains("job handed back"), "{}", first.output());
        // Handed back at once, not after AckWait, its checkpoint kept for the next node.
        assert_eq!(stack.queued_messages().await, 1);
        assert!(stack.checkpoint_exists(&id).await);
        let checkpointed = stack.job(&id).await["checkpoint_epoch"].as_u64().unwrap() as u32;
        assert!(checkpointed >= 1);
        // Listed as draining through the registry.
        stack
            .wait_node("trainer-0", Duration::from_secs(15), "draining", draining)
            .await;

        // Another node resumes it after its checkpoint and finishes it.
        let second = stack.join_trainer("trainer-1").await;
        let job = stack.wait_final(&id, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", second.output());
        assert_eq!(job["node"], "trainer-1");
        assert_eq!(job["delivery"], 2);
        let events = stack.events(&id).await;
        let starts: Vec<(u64, String, u32)> = events
            .iter()
            .filter_map(|e| match &e.kind {
                JobEventKind::Started {
                    node,
                    resumed_from_epoch,
                    ..
                } => Some((e.delivery, node.clone(), *resumed_from_epoch)),
                _ => None,
            })
            .collect();
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!((starts[1].0, starts[1].1.as_str()), (2, "trainer-1"));
        assert!(starts[1].2 >= checkpointed, "{starts:?}, checkpointed {checkpointed}");

        // The drained node, still running, takes nothing new.
        let next = stack
            .submit(json!({"output_model": "after", "train_path": "/shapes", "epochs": 1, "image_size": 16}))
            .await;
        let job = stack.wait_final(&next, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "completed", "{job:#}");
        assert_eq!(job["node"], "trainer-1", "{job}");
        assert!(
            !stack.events(&next).await.iter().any(|e| matches!(
                &e.kind,
                JobEventKind::Started { node, .. } if node == "trainer-0"
            )),
            "the drained node started a job"
        );

        // The pod stops, and comes back under the same name with the same cache volume: it
        // undrains itself and takes work (the other node is drained by an admin meanwhile).
        let mut first = first;
        let status = first
            .terminate(Duration::from_secs(15))
            .await
            .expect("the trainer exits on SIGTERM");
        assert!(status.success(), "{}", first.output());
        let token = stack.cluster_token().await.to_owned();
        stack.drain("trainer-1", &token, true).await;
        stack
            .wait_node("trainer-1", Duration::from_secs(15), "draining", draining)
            .await;
        let back = stack.join_trainer("trainer-0").await;
        stack
            .wait_node("trainer-0", Duration::from_secs(15), "undrained", |n| {
                n.connected && !draining(n)
            })
            .await;
        let last = stack
            .submit(json!({"output_model": "back", "train_path": "/shapes", "epochs": 1, "image_size": 16}))
            .await;
        let job = stack.wait_final(&last, Duration::from_secs(180)).await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", back.output());
        assert_eq!(job["node"], "trainer-0", "{job}");
    })
    .await;
}
