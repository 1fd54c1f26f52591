//! A job moving between nodes, over the real binaries: a trainer stopped with SIGTERM hands its
//! job back and another node resumes it after the last checkpointed epoch; a job whose trainer is
//! killed is redelivered and resumes the same way; a drained node takes nothing until undrained
//! while another does, and a CPU node never takes a CUDA job.

use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_contracts::jobs::{self, JobEvent, JobEventKind};
use gantry_testing::{send, TestStack, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn sigterm_hands_the_job_back_and_another_node_resumes_after_its_checkpoint() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 20, 7);
        let mut first = stack.join_trainer("trainer-1").await;
        let id = stack.submit(json!({"output_model": "handoff", "train_path": "/shapes", "epochs": 10, "image_size": 32, "batch_size": 8}))
            .await;
        let job = stack.wait_job(
                &id,
                Duration::from_secs(60),
                "checkpointed",
                |j| j["checkpoint_epoch"].as_u64() >= Some(1),
            )
            .await;
        assert_eq!(job["node"], "trainer-1");

        let asked = Instant::now();
        let status = first
            .terminate(Duration::from_secs(15))
            .await
            .expect("the trainer exits on SIGTERM");
        assert!(
            status.success(),
            "exit status {status:?}:\n{}",
            first.output()
        );
        assert!(
            asked.elapsed() < Duration::from_secs(8),
            "took {:?} to stop",
            asked.elapsed()
        );
        assert!(first.output().contains("handed back"), "{}", first.output());
        // Handed back at once, not after AckWait: it is waiting in the queue for the next node.
        assert_eq!(stack.queued_messages().await, 1);
        let checkpointed = stack.job(&id).await["checkpoint_epoch"].as_u64().unwrap() as u32;
        assert!(checkpointed >= 1);

        let second = stack.join_trainer("trainer-2").await;
        let job = stack.wait_final(&id, Duration::from_secs(120))
            .await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", second.output());
        eprintln!("last progress: {}", job["progress"]);
        assert_eq!(job["node"], "trainer-2");
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
        assert_eq!(
            (starts[0].0, starts[0].1.as_str(), starts[0].2),
            (1, "trainer-1", 0)
        );
        assert_eq!((starts[1].0, starts[1].1.as_str()), (2, "trainer-2"));
        assert!(
            starts[1].2 >= checkpointed,
            "resumed from {} but epoch {checkpointed} was checkpointed",
            starts[1].2
        );
        // The second delivery trained only the epochs after its checkpoint.
        let second_run_epochs: Vec<u32> = events
            .iter()
            .filter(|e| e.delivery == 2)
            .filter_map(|e| {
                if let JobEventKind::Checkpoint { epoch, .. } = e.kind {
                    Some(epoch)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            second_run_epochs.first().copied(),
            Some(starts[1].2 + 1),
            "{second_run_epochs:?}"
        );
        assert_eq!(
            job["model"]["card"]["training"]["resumed_from_epoch"],
            starts[1].2
        );
        assert_eq!(
            job["model"]["card"]["metrics"].as_array().map(Vec::len),
            Some(10)
        );
    })
    .await;
}

#[tokio::test]
async fn a_job_whose_trainer_dies_is_redelivered_and_resumes_after_its_last_checkpoint() {
    TestStack::run(Duration::from_secs(900), |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let mut first = stack.join_trainer("doomed").await;
        stack.shapes("shapes", 100, 5);
        let mut watch = stack
            .client()
            .subscribe(jobs::EVENTS_STREAM_SUBJECTS[0])
            .await
            .unwrap();
        let id = stack
            .submit(json!({"train_path": "/shapes", "epochs": 20, "image_size": 48, "output_model": "Resumed"}))
            .await;

        // Kill -9 the moment the first checkpoint is announced.
        let checkpointed = tokio::time::timeout(Duration::from_secs(300), async {
            while let Some(m) = watch.next().await {
                let e: JobEvent = serde_json::from_slice(&m.payload).unwrap();
                if e.job_id == id && matches!(e.kind, JobEventKind::Checkpoint { .. }) {
                    return;
                }
            }
        })
        .await;
        first.kill9();
        assert!(checkpointed.is_ok(), "no checkpoint");
        let before = stack.events(&id).await;
        let last_epoch = before
            .iter()
            .filter_map(|e| match e.kind {
                JobEventKind::Checkpoint { epoch, .. } => Some(epoch),
                _ => None,
            })
            .max()
            .unwrap();
        assert!(
            !before.iter().any(JobEvent::is_final),
            "it finished before the kill; make the job longer"
        );

        let _second = stack.join_trainer("rescuer").await;
        let job = stack
            .wait_job(&id, Duration::from_secs(400), "completed", |j| {
                j["status"] == "completed"
            })
            .await;
        assert_eq!(job["node"], "rescuer");
        let events = stack.events(&id).await;
        let restarts: Vec<(u64, u32)> = events
            .iter()
            .filter_map(|e| match &e.kind {
                JobEventKind::Started {
                    resumed_from_epoch, ..
                } => Some((e.delivery, *resumed_from_epoch)),
                _ => None,
            })
            .collect();
        assert_eq!(restarts.first(), Some(&(1, 0)), "{restarts:?}");
        let (delivery, resumed) = *restarts.last().unwrap();
        assert!(delivery >= 2, "the job was not redelivered: {restarts:?}");
        assert!(
            resumed >= last_epoch,
            "resumed from epoch {resumed}, the last checkpoint was {last_epoch}"
        );
        let epochs_after: Vec<u32> = events
            .iter()
            .filter(|e| e.delivery == delivery)
            .filter_map(|e| match e.kind {
                JobEventKind::Progress { epoch, .. } => Some(epoch),
                _ => None,
            })
            .collect();
        assert!(
            epochs_after.iter().all(|e| *e > last_epoch),
            "epochs retrained after resuming: {epochs_after:?}"
        );
        assert_eq!(
            job["model"]["card"]["metrics"].as_array().unwrap().len(),
            20,
            "the history of every epoch is kept"
        );
    })
    .await;
}

#[tokio::test]
async fn a_drained_node_takes_nothing_until_undrained_and_a_cpu_node_never_takes_a_cuda_job() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 10, 2);
        let token = stack.cluster_token().await.to_owned();
        let _a = stack.join_trainer("node-a").await;
        let _b = stack.join_trainer("node-b").await;
        let cuda = stack
            .submit(json!({"output_model": "gpu", "train_path": "/shapes", "epochs": 1, "image_size": 16, "driver": "cuda"}))
            .await;

        // Drained through the admin page's form: its workers show draining.
        let (status, v) = send(
            stack
                .http()
                .post(stack.url("/api/admin/cluster_nodes/drain"))
                .bearer_auth(ADMIN_TOKEN)
                .form(&[("hostname", "node-a"), ("token", token.as_str())]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        stack
            .wait_node("node-a", Duration::from_secs(15), "draining", |n| {
                n.processes.iter().all(|p| p.status == "draining")
            })
            .await;

        // Jobs submitted now all go to the other node, which proves the drained one took none.
        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(
                stack
                    .submit(json!({"output_model": "elsewhere", "train_path": "/shapes", "epochs": 1, "image_size": 16}))
                    .await,
            );
        }
        for id in &ids {
            let job = stack.wait_final(id, Duration::from_secs(300)).await;
            assert_eq!(job["status"], "completed", "{job:#}");
            assert_eq!(job["node"], "node-b", "{job}");
        }
        let (_, nodes) = stack.admin_get("/api/admin/cluster_nodes").await;
        let a = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["hostname"] == "node-a")
            .unwrap();
        assert!(
            a["processes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["status"] == "draining"),
            "{a}"
        );
        assert_eq!(a["completed_jobs"], 0);

        // Undrained (through the registry) while the other node drains: node-a takes the next.
        stack.drain("node-b", &token, true).await;
        stack
            .wait_node("node-b", Duration::from_secs(15), "draining", |n| {
                n.processes.iter().all(|p| p.status == "draining")
            })
            .await;
        // With every node drained, a job waits, saying so.
        let id = stack
            .submit(json!({"output_model": "later", "train_path": "/shapes", "epochs": 1, "image_size": 16, "driver": "cpu"}))
            .await;
        let waiting = stack
            .wait_job(&id, Duration::from_secs(30), "waiting on drained nodes", |j| {
                j["waiting_reason"].as_str().is_some_and(|r| r.contains("are drained"))
            })
            .await;
        assert_eq!(waiting["status"], "queued", "{waiting}");
        stack.drain("node-a", &token, false).await;
        let job = stack.wait_final(&id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "completed", "{job:#}");
        assert_eq!(job["node"], "node-a", "{job}");

        // The CUDA job, queued before all of them, was passed over by both CPU nodes: never
        // pulled (no delivery, no event), it still waits in its queue.
        let gpu = stack.job(&cuda).await;
        assert_eq!(gpu["status"], "queued", "{gpu:#}");
        assert_eq!(gpu["delivery"], 0);
        assert!(stack.events(&cuda).await.is_empty());
        assert_eq!(stack.queued_messages().await, 1);
    })
    .await;
}
