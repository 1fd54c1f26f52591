//! The trainer's side of training jobs, over the real binaries: a job submitted through the api is
//! pulled, trained on a tiny synthetic dataset and stored as a model version that downloads as
//! safetensors; a cancel stops it on the node with nothing published after; a job cancelled while
//! queued is dropped without training; a drained node takes nothing until undrained and a CPU node
//! never takes a CUDA job; a trainer stopped with SIGTERM hands its job back and another node
//! resumes it after the last checkpointed epoch.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gantry_contracts::jobs::{
    self, JobEvent, JobEventKind, EVENTS_STREAM, JOBS_STREAM, MODELS_BUCKET,
};
use gantry_contracts::registry::{
    ClusterNodes, ClusterToken, CreateClusterToken, Drain, Empty, SetDriverResult,
};
use gantry_contracts::subjects;
use gantry_testing::{
    metric, requests_per_replica, wait_until, Core, ServiceProcess, Stack, ADMIN_TOKEN,
};
use gantry_training::synthetic::{self, SyntheticSpec};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(60);

/// A stack with the core services, a cluster token, a cache directory for trainers and a client.
struct Env {
    stack: Stack,
    core: Core,
    token: String,
    http: reqwest::Client,
    nats: async_nats::Client,
    cache: tempfile::TempDir,
}

impl Env {
    async fn start() -> Self {
        let mut stack = Stack::start().await;
        stack
            .extra_env
            .insert("GANTRY_HEARTBEAT_INTERVAL".into(), "0.5".into());
        let core = stack.start_core().await;
        let nats = stack.nats.client().await;
        let token: ClusterToken = gantry_runtime::nats::request(
            &nats,
            subjects::registry(subjects::registry::TOKENS_CREATE),
            &CreateClusterToken {
                name: "trainers".into(),
            },
        )
        .await
        .expect("create a cluster token");
        Self {
            stack,
            core,
            token: token.token,
            http: reqwest::Client::new(),
            nats,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    /// A CPU trainer named `name` with one worker slot, joined and ready.
    async fn trainer(&self, name: &str) -> ServiceProcess {
        self.trainer_with(name, &[]).await
    }

    /// The same, with more variables.
    async fn trainer_with(&self, name: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let cache = self.cache_dir(name);
        let mut env = vec![
            ("GANTRY_CLUSTER_TOKEN", self.token.as_str()),
            ("GANTRY_NODE_NAME", name),
            ("GANTRY_WORKERS", "1"),
            ("GANTRY_CACHE_DIR", cache.to_str().unwrap()),
        ];
        env.extend_from_slice(extra);
        let t = self.stack.spawn("gantry-trainer", &env);
        t.wait_ready(READY).await;
        t
    }

    fn cache_dir(&self, name: &str) -> std::path::PathBuf {
        self.cache.path().join(name)
    }

    /// The dataset snapshots cached on `name`, by hash.
    fn cached_datasets(&self, name: &str) -> Vec<String> {
        let mut hashes: Vec<String> = std::fs::read_dir(self.cache_dir(name).join("datasets"))
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

    /// Three classes of shapes under `<data root>/<name>`.
    fn dataset(&self, name: &str, per_class: usize, image_size: u32) {
        let spec = SyntheticSpec {
            per_class,
            image_size,
            seed: 7,
            ..SyntheticSpec::default()
        };
        synthetic::generate(&self.stack.data_root.path().join(name), &spec)
            .expect("generate the dataset");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.core.url())
    }

    async fn submit(&self, body: Value) -> String {
        let resp = self
            .http
            .post(self.url("/admin/api/train?wait=false"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST /admin/api/train");
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "submitting: {v}");
        v["job_id"].as_str().expect("a job id").to_owned()
    }

    async fn job(&self, id: &str) -> Value {
        self.http
            .get(self.url(&format!("/admin/api/jobs/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET job")
            .json()
            .await
            .expect("job JSON")
    }

    /// Poll the job until `pred`; panics with the job and the trainers' output otherwise.
    async fn wait_job(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        trainers: &[&ServiceProcess],
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = wait_until(timeout, || async {
            let j = self.job(id).await;
            pred(&j).then_some(j)
        })
        .await;
        match found {
            Some(j) => j,
            None => {
                let logs: Vec<String> = trainers
                    .iter()
                    .map(|t| format!("--- {}:\n{}", t.name, t.output()))
                    .collect();
                panic!(
                    "job {id} never became {what} within {timeout:?}: {:#}\n{}",
                    self.job(id).await,
                    logs.join("\n")
                )
            }
        }
    }

    async fn cancel(&self, id: &str) -> Value {
        let resp = self
            .http
            .post(self.url(&format!("/admin/api/jobs/{id}/cancel")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("POST cancel");
        assert_eq!(resp.status().as_u16(), 200);
        resp.json().await.unwrap()
    }

    /// Every event of a job stored so far, in order.
    async fn events(&self, id: &str) -> Vec<JobEvent> {
        let js = jetstream::new(self.nats.clone());
        let stream = js.get_stream(EVENTS_STREAM).await.expect("events stream");
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: jobs::event_subject(id),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .expect("an ephemeral consumer");
        let mut out = Vec::new();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(500)
                .messages()
                .await
                .expect("fetch events");
            let before = out.len();
            while let Some(Ok(m)) = batch.next().await {
                out.push(serde_json::from_slice(&m.payload).expect("a job event"));
            }
            if out.len() == before {
                return out;
            }
        }
    }

    /// Messages left in the job queue.
    async fn queued_messages(&self) -> u64 {
        let js = jetstream::new(self.nats.clone());
        let mut stream = js.get_stream(JOBS_STREAM).await.expect("jobs stream");
        stream.info().await.expect("stream info").state.messages
    }

    async fn checkpoint_exists(&self, id: &str) -> bool {
        let js = jetstream::new(self.nats.clone());
        let store = js
            .get_object_store(MODELS_BUCKET)
            .await
            .expect("models bucket");
        store
            .info(jobs::checkpoint_key(id))
            .await
            .is_ok_and(|i| !i.deleted)
    }

    /// Drain (or undrain) a node through the registry.
    async fn drain(&self, hostname: &str, on: bool) {
        let req = Drain {
            hostname: Some(hostname.into()),
            token: Some(self.token.clone()),
            drain: Some(on),
        };
        let r: SetDriverResult = gantry_runtime::nats::request(
            &self.nats,
            subjects::registry(subjects::registry::DRAIN),
            &req,
        )
        .await
        .expect("drain");
        assert!(r.success);
    }

    /// `nodes.list` requests each registry replica has answered.
    async fn node_listings_per_replica(&self) -> Vec<u64> {
        requests_per_replica(
            &self.nats,
            gantry_contracts::services::REGISTRY,
            &subjects::registry(subjects::registry::NODES),
        )
        .await
    }

    /// Wait until `hostname`'s workers are all idle again (no model, not busy).
    async fn wait_idle(&self, hostname: &str) -> gantry_contracts::registry::ClusterNode {
        wait_until(Duration::from_secs(15), || async {
            let nodes: ClusterNodes = gantry_runtime::nats::request(
                &self.nats,
                subjects::registry(subjects::registry::NODES),
                &Empty {},
            )
            .await
            .ok()?;
            nodes.nodes.into_iter().find(|n| {
                n.hostname == hostname
                    && n.connected
                    && n.processes
                        .iter()
                        .all(|p| p.status == "active" && p.model.is_none())
            })
        })
        .await
        .unwrap_or_else(|| panic!("{hostname} never went back to idle"))
    }
}

fn kinds(events: &[JobEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

#[tokio::test]
async fn a_submitted_job_is_trained_and_its_model_version_downloads_as_safetensors() {
    let env = Env::start().await;
    env.dataset("shapes", 20, 32);
    // A second registry replica: whichever one records the completion, both must count it.
    let second_registry = env.stack.spawn("gantry-registry", &[]);
    second_registry.wait_ready(READY).await;
    let trainer = env.trainer("trainer-a").await;
    let started = Instant::now();

    let id = env
        .submit(json!({"output_model": "shapes", "train_path": "/shapes", "epochs": 2, "image_size": 32, "batch_size": 16}))
        .await;
    // What a node that lost its lease on a second delivery would have left behind.
    let models = jetstream::new(env.nats.clone())
        .get_object_store(MODELS_BUCKET)
        .await
        .expect("models bucket");
    models
        .put(
            jobs::weights_key(&id, 2).as_str(),
            &mut &b"stale weights"[..],
        )
        .await
        .unwrap();
    let job = env
        .wait_job(&id, Duration::from_secs(60), "final", &[&trainer], |j| {
            matches!(
                j["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
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
        let gone = match models.info(jobs::weights_key(&id, 2)).await {
            Ok(info) => info.deleted,
            Err(e) => e.kind() == async_nats::jetstream::object_store::InfoErrorKind::NotFound,
        };
        gone.then_some(())
    })
    .await;
    assert!(dropped.is_some(), "the other delivery's weights were kept");
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

    let resp = env
        .http
        .get(env.url("/admin/api/models/shapes/versions/1/download"))
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
    let events = env.events(&id).await;
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
    assert_eq!(env.queued_messages().await, 0);
    assert!(!env.checkpoint_exists(&id).await);
    env.wait_idle("trainer-a").await;
    let credited = wait_until(Duration::from_secs(10), || async {
        let nodes: ClusterNodes = gantry_runtime::nats::request(
            &env.nats,
            subjects::registry(subjects::registry::NODES),
            &Empty {},
        )
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
    let before = env.node_listings_per_replica().await;
    assert_eq!(before.len(), 2, "two registry replicas answer $SRV.STATS");
    let agreed = wait_until(Duration::from_secs(10), || async {
        for _ in 0..20 {
            let nodes: ClusterNodes = gantry_runtime::nats::request(
                &env.nats,
                subjects::registry(subjects::registry::NODES),
                &Empty {},
            )
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
    let after = env.node_listings_per_replica().await;
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
        env.core.registry.metrics().await,
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
}

#[tokio::test]
async fn a_cancel_stops_the_job_on_its_node_and_nothing_is_published_after_it() {
    let env = Env::start().await;
    env.dataset("shapes", 20, 32);
    let trainer = env.trainer("trainer-c").await;
    let id = env
        .submit(json!({"output_model": "long", "train_path": "/shapes", "epochs": 200, "image_size": 32, "batch_size": 8}))
        .await;
    env.wait_job(
        &id,
        Duration::from_secs(60),
        "checkpointed",
        &[&trainer],
        |j| j["checkpoint_epoch"].as_u64() >= Some(1),
    )
    .await;
    // While it trains the worker shows it.
    let nodes: ClusterNodes = gantry_runtime::nats::request(
        &env.nats,
        subjects::registry(subjects::registry::NODES),
        &Empty {},
    )
    .await
    .unwrap();
    let node = nodes
        .nodes
        .iter()
        .find(|n| n.hostname == "trainer-c")
        .unwrap();
    assert_eq!(node.processes[0].status, "busy", "{node:#?}");
    assert_eq!(node.processes[0].model.as_deref(), Some("long"));
    assert_eq!(node.workers_available, 0);

    let cancelled = env.cancel(&id).await;
    assert_eq!(cancelled["status"], "cancelled");
    let asked = Instant::now();

    // The node stops within seconds: its Cancelled event arrives and the worker is idle again.
    let events = wait_until(Duration::from_secs(15), || async {
        let events = env.events(&id).await;
        events
            .iter()
            .any(|e| e.delivery >= 1 && e.kind == JobEventKind::Cancelled)
            .then_some(events)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the trainer never reported the cancel:\n{}",
            trainer.output()
        )
    });
    eprintln!("stopped {:?} after the cancel", asked.elapsed());
    env.wait_idle("trainer-c").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let after = env.events(&id).await;
    let at = after
        .iter()
        .position(|e| e.delivery >= 1 && e.kind == JobEventKind::Cancelled)
        .unwrap();
    assert!(after.len() >= events.len());
    assert_eq!(
        at,
        after.len() - 1,
        "events after the cancel: {:?}",
        kinds(&after[at..])
    );
    assert!(!after
        .iter()
        .any(|e| matches!(e.kind, JobEventKind::Completed { .. })));
    let job = env.job(&id).await;
    assert_eq!(job["status"], "cancelled");
    assert!(job["model"].is_null());
    assert!(
        !env.checkpoint_exists(&id).await,
        "the checkpoint of a cancelled job is deleted"
    );
    assert_eq!(
        env.queued_messages().await,
        0,
        "the job message is terminated, not redelivered"
    );
}

#[tokio::test]
async fn past_its_budget_the_dataset_cache_drops_the_least_recently_used_snapshot() {
    let env = Env::start().await;
    env.dataset("first", 6, 16);
    env.dataset("second", 7, 16);
    // A budget of nothing: every fetch evicts whatever no job is using.
    let trainer = env
        .trainer_with("trainer-e", &[("GANTRY_CACHE_MAX_GB", "0")])
        .await;
    let mut hashes = Vec::new();
    for name in ["first", "second"] {
        let id = env.submit(json!({"output_model": name, "train_path": format!("/{name}"), "epochs": 1, "image_size": 16})).await;
        let job = env
            .wait_job(&id, Duration::from_secs(60), "final", &[&trainer], |j| {
                matches!(
                    j["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
            })
            .await;
        assert_eq!(job["status"], "completed", "{job:#}");
        hashes.push(job["dataset_hash"].as_str().unwrap().to_owned());
        // The snapshot a job used stays until the next fetch.
        assert_eq!(
            env.cached_datasets("trainer-e"),
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
}

#[tokio::test]
async fn a_job_cancelled_while_queued_is_dropped_without_training() {
    let env = Env::start().await;
    env.dataset("shapes", 5, 32);
    let id = env
        .submit(json!({"output_model": "never", "train_path": "/shapes", "epochs": 2, "image_size": 32, "batch_size": 16}))
        .await;
    assert_eq!(env.cancel(&id).await["status"], "cancelled");
    assert_eq!(
        env.queued_messages().await,
        1,
        "the message is still queued"
    );

    let trainer = env.trainer("trainer-q").await;
    let gone = wait_until(Duration::from_secs(20), || async {
        (env.queued_messages().await == 0).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the trainer never took the cancelled job off the queue:\n{}",
        trainer.output()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = env.events(&id).await;
    assert!(
        events.iter().all(|e| e.delivery == 0),
        "the trainer published for a cancelled job: {events:#?}"
    );
    assert_eq!(env.job(&id).await["status"], "cancelled");
    env.wait_idle("trainer-q").await;
}

#[tokio::test]
async fn an_image_that_does_not_decode_fails_the_job_as_a_data_error_without_retries() {
    let env = Env::start().await;
    env.dataset("broken", 5, 32);
    // A PNG whose header is intact (the api reads only headers) but whose pixel data is garbage.
    let dir = env.stack.data_root.path().join("broken/square");
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
    let trainer = env.trainer("trainer-e").await;

    let id = env.submit(json!({"output_model": "broken", "train_path": "/broken", "epochs": 1, "image_size": 32})).await;
    let job = env
        .wait_job(&id, Duration::from_secs(60), "final", &[&trainer], |j| {
            matches!(
                j["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
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
    let events = env.events(&id).await;
    assert_eq!(kinds(&events), vec!["started", "failed"]);
    assert_eq!(env.queued_messages().await, 0);
    env.wait_idle("trainer-e").await;
}

#[tokio::test]
async fn a_drained_node_takes_nothing_until_undrained_and_a_cpu_node_never_takes_a_cuda_job() {
    let env = Env::start().await;
    env.dataset("shapes", 10, 32);
    let trainer = env.trainer("trainer-d").await;
    let cuda = env
        .submit(json!({"output_model": "gpu", "train_path": "/shapes", "epochs": 1, "image_size": 32, "driver": "cuda"}))
        .await;
    env.drain("trainer-d", true).await;
    wait_until(Duration::from_secs(15), || async {
        let nodes: ClusterNodes = gantry_runtime::nats::request(
            &env.nats,
            subjects::registry(subjects::registry::NODES),
            &Empty {},
        )
        .await
        .ok()?;
        nodes
            .nodes
            .iter()
            .any(|n| {
                n.hostname == "trainer-d" && n.processes.iter().all(|p| p.status == "draining")
            })
            .then_some(())
    })
    .await
    .expect("the node reports its workers draining");

    let id = env.submit(json!({"output_model": "later", "train_path": "/shapes", "epochs": 1, "image_size": 32})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.job(&id).await["status"],
        "queued",
        "a drained node took a job:\n{}",
        trainer.output()
    );
    assert!(env.events(&id).await.is_empty());

    env.drain("trainer-d", false).await;
    let job = env
        .wait_job(&id, Duration::from_secs(60), "final", &[&trainer], |j| {
            matches!(
                j["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await;
    assert_eq!(job["status"], "completed", "{job:#}");

    // The CUDA job was never pulled (no delivery, no event) and still waits in its queue.
    let gpu = env.job(&cuda).await;
    assert_eq!(gpu["status"], "queued", "{gpu:#}");
    assert_eq!(gpu["delivery"], 0);
    assert!(env.events(&cuda).await.is_empty());
    assert_eq!(env.queued_messages().await, 1);
}

#[tokio::test]
async fn sigterm_hands_the_job_back_and_another_node_resumes_after_its_checkpoint() {
    let env = Env::start().await;
    env.dataset("shapes", 20, 32);
    let mut first = env.trainer("trainer-1").await;
    let id = env
        .submit(json!({"output_model": "handoff", "train_path": "/shapes", "epochs": 10, "image_size": 32, "batch_size": 8}))
        .await;
    let job = env
        .wait_job(
            &id,
            Duration::from_secs(60),
            "checkpointed",
            &[&first],
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
    assert_eq!(env.queued_messages().await, 1);
    let checkpointed = env.job(&id).await["checkpoint_epoch"].as_u64().unwrap() as u32;
    assert!(checkpointed >= 1);

    let second = env.trainer("trainer-2").await;
    let job = env
        .wait_job(&id, Duration::from_secs(120), "final", &[&second], |j| {
            matches!(
                j["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        })
        .await;
    assert_eq!(job["status"], "completed", "{job:#}\n{}", second.output());
    eprintln!("last progress: {}", job["progress"]);
    assert_eq!(job["node"], "trainer-2");
    assert_eq!(job["delivery"], 2);

    let events = env.events(&id).await;
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
}

/// A queued job recorded straight through the registry (no trainer will see it).
fn queued_record(job_id: &str, user_id: i64) -> jobs::JobRecord {
    let job = jobs::TrainJob {
        job_id: job_id.into(),
        user_id,
        output_model: "contended".into(),
        description: String::new(),
        driver: jobs::JobDriver::Cuda,
        dataset_hash: "0".repeat(64),
        classes: vec!["a".into(), "b".into()],
        params: jobs::TrainParams::default(),
        submitted_at: chrono::Utc::now(),
    };
    jobs::JobRecord::queued(&job, "/none", CONTENDED_CHARGE)
}

/// What each contended job charged (refunded however it ends: it never started).
const CONTENDED_CHARGE: i64 = 10;

#[tokio::test]
async fn a_cancel_and_a_failure_racing_on_two_replicas_end_a_job_exactly_one_way() {
    let env = Env::start().await;
    let second_registry = env.stack.spawn("gantry-registry", &[]);
    second_registry.wait_ready(READY).await;
    // A paying user, charged for each job as the api would.
    let user: Value = env
        .http
        .post(env.url("/admin/api/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"username": "payer", "email": "payer@example.com", "password": "a long enough password", "role": "user", "tokens": 1000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = user["id"].as_i64().unwrap_or_else(|| panic!("{user}"));
    let balance = || async {
        let users: Value = env
            .http
            .get(env.url("/admin/api/users"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        users["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == user_id)
            .unwrap()["tokens"]
            .as_i64()
            .unwrap()
    };
    let before = balance().await;
    assert_eq!(before, 1000);
    let request = |subject: &'static str, body: Value| {
        let nats = env.nats.clone();
        async move {
            gantry_runtime::nats::request::<_, jobs::JobRecord>(
                &nats,
                subjects::registry(subject),
                &body,
            )
            .await
        }
    };
    for i in 0..15 {
        let id = format!("contended-{i}");
        let charge = gantry_contracts::auth::CreditChange {
            user_id,
            amount: CONTENDED_CHARGE,
            key: id.clone(),
            reason: format!("job {id}"),
        };
        let _: gantry_contracts::auth::CreditResult = gantry_runtime::nats::request(
            &env.nats,
            subjects::auth(subjects::auth::CREDITS_CHARGE),
            &charge,
        )
        .await
        .unwrap();
        let created: jobs::JobRecord = request(
            jobs::subjects::JOBS_CREATE,
            serde_json::to_value(queued_record(&id, user_id)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(created.status, jobs::JobStatus::Queued);
        let (cancelled, failed) = tokio::join!(
            request(jobs::subjects::JOBS_CANCEL, json!({"job_id": id})),
            request(
                jobs::subjects::JOBS_FAIL,
                json!({"job_id": id, "error": "the queue refused it", "kind": "system"})
            ),
        );
        let stored = env.job(&id).await;
        // Whichever came second saw the first one's result: the answers agree with the record.
        let failed = failed.unwrap_or_else(|e| panic!("jobs.fail: {e}"));
        match cancelled {
            Ok(c) => {
                assert_eq!(c.status, jobs::JobStatus::Cancelled);
                assert_eq!(
                    failed.status,
                    jobs::JobStatus::Cancelled,
                    "both won on {id}"
                );
                assert_eq!(stored["status"], "cancelled", "{stored}");
            }
            Err(e) => {
                assert_eq!(e.code, gantry_contracts::error::ErrorCode::Conflict, "{e}");
                assert_eq!(failed.status, jobs::JobStatus::Failed);
                assert_eq!(stored["status"], "failed", "{stored}");
            }
        }
    }
    // Cancelled while queued or failed, every job is refunded (auth gives a key's refund once).
    let refunded = wait_until(Duration::from_secs(10), || async {
        (balance().await == before).then_some(())
    })
    .await;
    assert!(
        refunded.is_some(),
        "balance {} after 15 charges and refunds from {before}",
        balance().await
    );

    drop(second_registry);
}
