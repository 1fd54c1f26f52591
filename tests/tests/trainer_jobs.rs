//! The trainer's side of training jobs, over the real binaries: a job submitted through the api is
//! pulled, trained on a tiny synthetic dataset and stored as a model version that downloads as
//! safetensors and is counted once by two registry replicas; the dataset cache evicts past its
//! budget; an image that does not decode fails the job as a data error.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use gantry_contracts::jobs::{self, JobEventKind, MODELS_BUCKET, UPLOADS_BUCKET};
use gantry_contracts::registry::{ClusterNodes, Empty};
use gantry_contracts::subjects;
use gantry_testing::{
    kinds, metric, requests_per_replica, wait_until, TestStack, ADMIN_TOKEN, READY,
};
use gantry_training::synthetic::SyntheticSpec;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);

/// `nodes.list` requests each registry replica has answered.
async fn node_listings_per_replica(stack: &TestStack) -> Vec<u64> {
    requests_per_replica(
        stack.client(),
        gantry_contracts::services::REGISTRY,
        &subjects::registry(subjects::registry::NODES),
    )
    .await
}

/// The dataset snapshots cached on trainer `name`, by hash.
fn cached_datasets(stack: &TestStack, name: &str) -> Vec<String> {
    let mut hashes: Vec<String> = std::fs::read_dir(stack.cache_dir(name).join("datasets"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    hashes.retain(|h| !h.starts_with('.'));
    hashes.sort();
    hashes
}

#[tokio::test]
async fn a_submitted_job_is_trained_and_its_model_version_downloads_as_safetensors() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 20, 7);
        // A second registry replica: whichever one records the completion, both must count it.
        let second_registry = stack.spawn("gantry-registry", &[]);
        second_registry.wait_ready(READY).await;
        let trainer = stack.join_trainer("trainer-a").await;
        let started = Instant::now();

        let id = stack.submit(json!({"output_model": "shapes", "train_path": "/shapes", "epochs": 2, "image_size": 32, "batch_size": 16}))
            .await;
        // What a node that lost its lease on a second delivery would have left behind.
        let uploads = jetstream::new(stack.client().clone())
            .get_object_store(UPLOADS_BUCKET)
            .await
            .expect("uploads bucket");
        uploads
            .put(
                jobs::weights_key(&id, 2).as_str(),
                &mut &b"stale weights"[..],
            )
            .await
            .unwrap();
        let job = stack.wait_final(&id, Duration::from_secs(60))
            .await;
        assert_eq!(job["status"], "completed", "{job:#}\n{}", trainer.output());
        eprintln!("trained in {:?}", started.elapsed());
        assert_eq!(job["node"], "trainer-a");
        assert_eq!(job["delivery"], 1);
        assert_eq!(job["checkpoint_epoch"], 2);

        let model = &job["model"];
        assert_eq!(model["name"], "shapes");
        assert_eq!(model["version"], 1);
        assert_eq!(model["job_id"], id.as_str());
        assert_eq!(model["weights_key"], jobs::weights_key(&id, 1));
        let dropped = wait_until(Duration::from_secs(10), || async {
            let gone = match uploads.info(jobs::weights_key(&id, 2)).await {
                Ok(info) => info.deleted,
                Err(e) => e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound,
            };
            gone.then_some(())
        })
        .await;
        assert!(dropped.is_some(), "the other delivery's weights were kept");
        // The listed version's weights were copied into the models bucket, where only the
        // registry writes.
        let models = jetstream::new(stack.client().clone())
            .get_object_store(MODELS_BUCKET)
            .await
            .expect("models bucket");
        assert!(models
            .info(jobs::weights_key(&id, 1))
            .await
            .is_ok_and(|i| !i.deleted));
        let card = &model["card"];
        assert_eq!(card["classes"], json!(["circle", "square", "triangle"]));
        assert_eq!(card["image_size"], 32);
        assert_eq!(card["job_id"], id.as_str());
        assert_eq!(card["node"], "trainer-a");
        assert_eq!(card["dataset_hash"], job["dataset_hash"]);
        assert!(
            card["normalization"]["mean"].is_array() && card["architecture"].is_string(),
            "{card:#}"
        );
        let metrics = card["metrics"].as_array().expect("metrics per epoch");
        assert_eq!(metrics.len(), 2);
        assert!(metrics.iter().all(|m| m["val_accuracy"].is_number()));
        assert!(model["val_accuracy"]
            .as_f64()
            .is_some_and(|a| (0.0..=1.0).contains(&a)));

        let resp = stack.http()
            .get(stack.url("/admin/api/models/shapes/versions/1/download"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let bytes = resp.bytes().await.unwrap();
        // safetensors: a little-endian u64 header length, then that much JSON naming the tensors.
        assert!(bytes.len() > 8);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert!(8 + header_len <= bytes.len());
        let header: Value =
            serde_json::from_slice(&bytes[8..8 + header_len]).expect("a safetensors header");
        assert!(
            header
                .as_object()
                .is_some_and(|o| o.values().any(|t| t["dtype"] == "F32")),
            "{header}"
        );

        // Its events, in order, all from the first delivery: started, progress at least once per
        // epoch, a checkpoint per epoch, completed last.
        let events = stack.events(&id).await;
        let k = kinds(&events);
        assert_eq!(k.first(), Some(&"started"), "{k:?}");
        assert_eq!(k.last(), Some(&"completed"), "{k:?}");
        assert!(events.iter().all(|e| e.delivery == 1), "{events:#?}");
        let JobEventKind::Started {
            node,
            resumed_from_epoch,
            driver,
            ..
        } = &events[0].kind
        else {
            unreachable!()
        };
        assert_eq!(
            (node.as_str(), *resumed_from_epoch, driver.as_str()),
            ("trainer-a", 0, "cpu")
        );
        let checkpoints: Vec<u32> = events
            .iter()
            .filter_map(|e| {
                if let JobEventKind::Checkpoint { epoch, .. } = e.kind {
                    Some(epoch)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(checkpoints, vec![1, 2]);
        for epoch in 1..=2 {
            assert!(
                events.iter().any(|e| matches!(e.kind, JobEventKind::Progress { epoch: p, epochs: 2, .. } if p == epoch)),
                "no progress in epoch {epoch}: {k:?}"
            );
        }

        // Done and tidied up: the message is gone from the queue, the checkpoint deleted, the worker
        // idle again and the node credited with the job.
        assert_eq!(stack.queued_messages().await, 0);
        assert!(!stack.checkpoint_exists(&id).await);
        stack.wait_idle("trainer-a").await;
        let credited = wait_until(Duration::from_secs(10), || async {
            let nodes: ClusterNodes = stack.registry_call(subjects::registry::NODES, &Empty {})
            .await
            .ok()?;
            nodes
                .nodes
                .into_iter()
                .find(|n| n.hostname == "trainer-a" && n.completed_jobs == 1)
        })
        .await;
        assert!(
            credited.is_some(),
            "the node was never credited with the job"
        );

        // Both replicas list the same count (listings go to either replica of the queue group).
        let before = node_listings_per_replica(&stack).await;
        assert_eq!(before.len(), 2, "two registry replicas answer $SRV.STATS");
        let agreed = wait_until(Duration::from_secs(10), || async {
            for _ in 0..20 {
                let nodes: ClusterNodes = stack.registry_call(subjects::registry::NODES, &Empty {})
                .await
                .ok()?;
                let node = nodes.nodes.iter().find(|n| n.hostname == "trainer-a")?;
                if node.completed_jobs != 1 || nodes.master_stats.total_completed_jobs != 1 {
                    return None;
                }
            }
            Some(())
        })
        .await;
        assert!(
            agreed.is_some(),
            "the replicas never agreed on one completed job"
        );
        let after = node_listings_per_replica(&stack).await;
        assert!(after.iter().sum::<u64>() - before.iter().sum::<u64>() >= 20);
        assert!(
            after.iter().all(|n| *n > 0),
            "both replicas answered listings: {after:?}"
        );
        // Their metrics: the trainer counts the job completed; between them the replicas recorded it
        // once and applied its events.
        assert_eq!(
            metric(
                &trainer.metrics().await,
                r#"gantry_trainer_jobs_total{outcome="completed"}"#
            ),
            1.0
        );
        let replicas = [
            stack.registry().metrics().await,
            second_registry.metrics().await,
        ];
        let settled: f64 = replicas
            .iter()
            .map(|m| metric(m, r#"gantry_registry_jobs_ended_total{status="completed"}"#))
            .sum();
        assert_eq!(settled, 1.0);
        let applied: f64 = replicas
            .iter()
            .map(|m| metric(m, r#"gantry_registry_job_events_total{type="completed"}"#))
            .sum();
        assert_eq!(applied, 1.0);
        drop(second_registry);
    })
    .await;
}

#[tokio::test]
async fn past_its_budget_the_dataset_cache_drops_the_least_recently_used_snapshot() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes_with("first", SyntheticSpec { per_class: 6, image_size: 16, seed: 7, ..SyntheticSpec::default() });
        stack.shapes_with("second", SyntheticSpec { per_class: 7, image_size: 16, seed: 7, ..SyntheticSpec::default() });
        // A budget of nothing: every fetch evicts whatever no job is using.
        let trainer = stack.join_trainer_with("trainer-e", &[("GANTRY_CACHE_MAX_GB", "0")])
            .await;
        let mut hashes = Vec::new();
        for name in ["first", "second"] {
            let id = stack.submit(json!({"output_model": name, "train_path": format!("/{name}"), "epochs": 1, "image_size": 16})).await;
            let job = stack.wait_final(&id, Duration::from_secs(60))
                .await;
            assert_eq!(job["status"], "completed", "{job:#}");
            hashes.push(job["dataset_hash"].as_str().unwrap().to_owned());
            // The snapshot a job used stays until the next fetch.
            assert_eq!(
                cached_datasets(&stack, "trainer-e"),
                vec![hashes.last().unwrap().clone()],
                "after {name}"
            );
        }
        assert_ne!(hashes[0], hashes[1]);
        assert!(
            trainer
                .output()
                .contains("evicted a dataset from the cache"),
            "{}",
            trainer.output()
        );
    })
    .await;
}

#[tokio::test]
async fn an_image_that_does_not_decode_fails_the_job_as_a_data_error_without_retries() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("broken", 5, 7);
        // A PNG whose header is intact (the api reads only headers) but whose pixel data is garbage.
        let dir = stack.data_root.path().join("broken/square");
        let png = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .unwrap();
        let mut bytes = std::fs::read(&png).unwrap();
        let n = bytes.len();
        for b in &mut bytes[60..n - 20] {
            *b ^= 0x5a;
        }
        std::fs::write(&png, &bytes).unwrap();
        let _trainer = stack.join_trainer("trainer-e").await;

        let id = stack.submit(json!({"output_model": "broken", "train_path": "/broken", "epochs": 1, "image_size": 32})).await;
        let job = stack.wait_final(&id, Duration::from_secs(60))
            .await;
        assert_eq!(job["status"], "failed", "{job:#}");
        assert_eq!(job["failure_kind"], "data");
        assert!(
            job["error"]
                .as_str()
                .is_some_and(|e| e.contains("square/") && e.contains("not a readable")),
            "{job:#}"
        );
        assert_eq!(job["delivery"], 1, "a data error is not retried");
        let events = stack.events(&id).await;
        assert_eq!(kinds(&events), vec!["started", "failed"]);
        assert_eq!(stack.queued_messages().await, 0);
        stack.wait_idle("trainer-e").await;
    })
    .await;
}
