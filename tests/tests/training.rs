//! Training end to end over the real binaries: the api, auth, the registry and CPU trainers,
//! real NATS (JetStream) and the real store. Datasets are generated shapes that differ only by
//! shape (random colours, positions and sizes).

use std::time::Duration;

use futures::StreamExt;
use gantry_contracts::jobs::{JobEvent, JobEventKind, EVENTS_STREAM, JOBS_STREAM};
use gantry_testing::{wait_until, Core, ServiceProcess, Stack, ADMIN_TOKEN};
use gantry_training::dataset::{Dataset, LoadOptions};
use gantry_training::synthetic::{generate, SyntheticSpec};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(60);

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(900))
        .build()
        .unwrap()
}

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })),
    )
}

/// A stack with the core services on short heartbeats and a cluster token.
struct Cluster {
    stack: Stack,
    core: Core,
    token: String,
}

impl Cluster {
    async fn start() -> Self {
        Self::with_hold("600").await
    }

    /// With `GANTRY_TRAIN_HOLD` = `hold` seconds.
    async fn with_hold(hold: &str) -> Self {
        let mut stack = Stack::start().await;
        stack
            .extra_env
            .insert("GANTRY_HEARTBEAT_INTERVAL".into(), "0.5".into());
        stack
            .extra_env
            .insert("GANTRY_TRAIN_HOLD".into(), hold.into());
        let core = stack.start_core().await;
        let (status, v) = send(
            http()
                .post(format!("{}/admin/api/cluster_tokens", core.url()))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"name": "tests"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        let token = v["token"].as_str().unwrap().to_owned();
        Self { stack, core, token }
    }

    fn url(&self) -> &str {
        self.core.url()
    }

    /// A CPU trainer named `name`, connected.
    async fn trainer(&self, name: &str) -> ServiceProcess {
        let t = self.stack.spawn(
            "gantry-trainer",
            &[
                ("GANTRY_CLUSTER_TOKEN", &self.token),
                ("GANTRY_NODE_NAME", name),
                ("GANTRY_WORKERS", "1"),
            ],
        );
        t.wait_ready(READY).await;
        let url = self.url().to_owned();
        let ok = wait_until(Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let (_, v) = send(
                    http()
                        .get(format!("{url}/api/admin/cluster_nodes"))
                        .bearer_auth(ADMIN_TOKEN),
                )
                .await;
                v["nodes"]
                    .as_array()?
                    .iter()
                    .any(|n| n["hostname"] == name && n["connected"] == true)
                    .then_some(())
            }
        })
        .await;
        assert!(
            ok.is_some(),
            "trainer {name} never showed connected:\n{}",
            t.output()
        );
        t
    }

    /// A user with `tokens` credit tokens and an API token; returns (user id, API token).
    async fn user(&self, name: &str, tokens: i64) -> (i64, String) {
        let (status, u) = send(http().post(format!("{}/admin/api/users", self.url())).bearer_auth(ADMIN_TOKEN).json(&json!({
            "username": name, "email": format!("{name}@example.com"), "password": "password-of-test", "tokens": tokens
        })))
        .await;
        assert_eq!(status, StatusCode::CREATED, "{u}");
        // Log in, and make an API token with the session.
        let resp = http()
            .post(format!("{}/api/auth/login", self.url()))
            .json(&json!({"username": name, "password": "password-of-test"}))
            .send()
            .await
            .unwrap();
        let cookie = resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let (status, t) = send(
            http()
                .post(format!("{}/api/tokens", self.url()))
                .header("cookie", cookie)
                .header("origin", self.url())
                .json(&json!({"name": "tests"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        (
            u["id"].as_i64().unwrap(),
            t["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn balance(&self, user_id: i64) -> i64 {
        let (_, v) = send(
            http()
                .get(format!("{}/admin/api/users", self.url()))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == user_id)
            .unwrap()["tokens"]
            .as_i64()
            .unwrap()
    }

    async fn job(&self, id: &str) -> Value {
        let (status, v) = send(
            http()
                .get(format!("{}/admin/api/jobs/{id}", self.url()))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    /// Wait until the job reaches `status`.
    async fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Value {
        let got = wait_until(timeout, || async move {
            let j = self.job(id).await;
            (j["status"] == status).then_some(j)
        })
        .await;
        got.unwrap_or_else(|| {
            panic!(
                "job {id} never became {status}: {}",
                futures::executor::block_on(self.job(id))
            )
        })
    }

    /// Submit without waiting; returns the job id.
    async fn submit(&self, body: Value) -> String {
        let (status, v) = send(
            http()
                .post(format!("{}/admin/api/train?wait=false", self.url()))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["message"], "Training queued");
        v["job_id"].as_str().unwrap().to_owned()
    }

    /// Every event of a job stored so far.
    async fn events(&self, id: &str) -> Vec<JobEvent> {
        let client = self.stack.nats.client().await;
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream(EVENTS_STREAM).await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
                filter_subject: format!("gantry.events.job.{id}"),
                deliver_subject: client.new_inbox(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut out = Vec::new();
        // Everything stored when the consumer was made: stop at the last one (pending 0), or
        // after a quiet second when there is nothing at all.
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(1000), messages.next()).await
        {
            out.push(serde_json::from_slice(&m.payload).unwrap());
            if m.info().map(|i| i.pending == 0).unwrap_or(false) {
                break;
            }
        }
        out
    }
}

fn shapes(dir: &std::path::Path, per_class: usize, shuffle: bool, seed: u64) {
    generate(
        dir,
        &SyntheticSpec {
            per_class,
            image_size: 32,
            seed,
            shuffle_labels: shuffle,
            mixed_formats: true,
        },
    )
    .unwrap();
}

fn final_val_accuracy(model: &Value) -> f64 {
    model["val_accuracy"].as_f64().unwrap()
}

#[tokio::test]
async fn the_pages_curl_example_trains_shapes_to_90_percent_while_shuffled_labels_stay_below_50() {
    let c = Cluster::start().await;
    let _node = c.trainer("cpu-node-1").await;
    let root = c.stack.data_root.path();
    shapes(&root.join("path/to/training/data"), 30, false, 3);
    shapes(&root.join("shapes"), 200, false, 7);
    shapes(&root.join("shuffled"), 200, true, 7);

    // The page's example, exactly as written, held until the job ends:
    // curl -X POST -H "Authorization: Bearer YOUR_ADMIN_API_TOKEN" -H "Content-Type: application/json" \
    //   -d '{"output_model": "MyModel", "description": "Custom trained model", "train_path": "/path/to/training/data"}' \
    //   {{ request.host_url }}admin/api/train
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-X", "POST", "-H", &format!("Authorization: Bearer {ADMIN_TOKEN}"), "-H", "Content-Type: application/json", "-d"])
        .arg(r#"{ "output_model": "MyModel", "description": "Custom trained model", "train_path": "/path/to/training/data" }"#)
        .arg(format!("{}/admin/api/train", c.url()))
        .output()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["message"], "Training completed", "{v}");
    assert_eq!(v["tokens_used"], 0, "admins pay nothing");
    assert_eq!(v["remaining_tokens"], c.balance(1).await);
    assert_eq!(v["model"]["name"], "MyModel");
    assert_eq!(v["model"]["version"], 1);
    assert_eq!(
        v["model"]["card"]["training"]["epochs"], 10,
        "the defaults apply"
    );
    // The held answer is what the registry recorded, not a trainer's word ahead of it.
    let (_, job) = send(
        http()
            .get(format!(
                "{}/admin/api/jobs/{}",
                c.url(),
                v["job_id"].as_str().unwrap()
            ))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["model"], v["model"], "{job}");

    // A real run on the shapes: a held JSON submission with more epochs.
    let (status, v) = send(http().post(format!("{}/admin/api/train", c.url())).bearer_auth(ADMIN_TOKEN).json(&json!({
        "output_model": "MyModel", "description": "Custom trained model", "train_path": "/shapes",
        "epochs": 25, "learning_rate": 0.003, "image_size": 32
    })))
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let model = &v["model"];
    assert_eq!(model["name"], "MyModel");
    assert_eq!(model["version"], 2, "a new version of the same model");
    let acc = final_val_accuracy(model);
    assert!(acc >= 0.9, "validation accuracy {acc} < 0.9: {v}");
    let card = &model["card"];
    assert_eq!(card["description"], "Custom trained model");
    assert_eq!(card["node"], "cpu-node-1");
    assert_eq!(card["classes"], json!(["circle", "square", "triangle"]));
    assert!(card["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["val_accuracy"].is_number()));

    // The downloaded weights load into the same network and classify the validation images as
    // reported.
    let resp = http()
        .get(format!(
            "{}/admin/api/models/MyModel/versions/2/download",
            c.url()
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let weights = resp.bytes().await.unwrap().to_vec();
    let card: gantry_training::card::ModelCard = serde_json::from_value(card.clone()).unwrap();
    let loaded = gantry_training::infer::load_model(&card, &weights, tch::Device::Cpu).unwrap();
    let data = Dataset::load(
        &root.join("shapes"),
        &LoadOptions {
            image_size: card.image_size,
            validation_split: 0.2,
            normalization: card.normalization,
            ..Default::default()
        },
    )
    .unwrap();
    let predicted =
        gantry_training::infer::predict(&loaded, &data.validation.images_tensor()).unwrap();
    let right = predicted
        .iter()
        .zip(&data.validation.labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    let measured = right as f64 / data.validation.len() as f64;
    assert!(
        (measured - acc).abs() < 1e-6,
        "reloaded weights score {measured}, the job reported {acc}"
    );

    // The same pictures with shuffled labels: nothing to learn.
    let id = c.submit(json!({"output_model": "Shuffled", "train_path": "/shuffled", "epochs": 25, "learning_rate": 0.003, "image_size": 32})).await;
    let job = c
        .wait_status(&id, "completed", Duration::from_secs(600))
        .await;
    let acc = final_val_accuracy(&job["model"]);
    assert!(acc < 0.5, "shuffled labels reached {acc}");

    // Listings and counters follow the jobs (they are settled just after the job reads completed).
    let settled = wait_until(Duration::from_secs(10), || async {
        let (_, models) = send(
            http()
                .get(format!("{}/admin/api/models", c.url()))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        let (_, nodes) = send(
            http()
                .get(format!("{}/api/admin/cluster_nodes", c.url()))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        (models["models"].as_array().map(Vec::len) == Some(2)
            && nodes["nodes"][0]["completed_jobs"] == 3)
            .then_some(nodes)
    })
    .await;
    let nodes = settled.expect("two models listed and three jobs credited to the node");
    assert_eq!(nodes["master_stats"]["total_completed_jobs"], 3);
    let (_, list) = send(
        http()
            .get(format!("{}/admin/api/jobs?status=completed", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(list["total"], 3);
    assert_eq!(list["jobs"][0]["job_id"], id, "newest first");

    // The event history over server-sent events ends with the completion.
    let body = http()
        .get(format!("{}/admin/api/jobs/{id}/events", c.url()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let datas: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(datas.first().unwrap()["type"], "started", "{body}");
    assert!(datas.iter().any(|d| d["type"] == "progress"
        && d["samples_per_sec"].is_number()
        && d["eta_seconds"].is_number()));
    assert_eq!(datas.last().unwrap()["type"], "completed");
}

#[tokio::test]
async fn a_user_short_of_tokens_gets_402_and_keeps_the_balance() {
    let c = Cluster::start().await;
    shapes(&c.stack.data_root.path().join("shapes"), 5, false, 1);
    let (id, token) = c.user("poor", 50).await;
    let (status, v) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/shapes"})),
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{v}");
    assert_eq!(v["error"]["code"], "insufficient_tokens");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("50"),
        "{v}"
    );
    assert_eq!(c.balance(id).await, 50);
    let (_, jobs) = send(
        http()
            .get(format!("{}/api/jobs", c.url()))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(jobs["total"], 0, "nothing half-written: {jobs}");
    // Not an admin: the admin endpoint is refused.
    let (status, _) = send(
        http()
            .post(format!("{}/admin/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/shapes"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_charge_is_refunded_when_the_queue_refuses_the_job() {
    let c = Cluster::start().await;
    shapes(&c.stack.data_root.path().join("shapes"), 5, false, 1);
    let (id, token) = c.user("payer", 1000).await;
    // Let the api finish its JetStream set-up, then take the job stream away.
    let js = async_nats::jetstream::new(c.stack.nats.client().await);
    wait_until(Duration::from_secs(20), || {
        let js = js.clone();
        async move { js.get_stream(JOBS_STREAM).await.ok().map(|_| ()) }
    })
    .await
    .expect("the job stream was never created");
    js.delete_stream(JOBS_STREAM).await.unwrap();

    let (status, v) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/shapes"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("refunded"),
        "{v}"
    );
    assert_eq!(c.balance(id).await, 1000, "the charge was given back");
    let (_, jobs) = send(
        http()
            .get(format!("{}/api/jobs", c.url()))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(jobs["total"], 1);
    assert_eq!(
        jobs["jobs"][0]["status"], "failed",
        "not left queued: {jobs}"
    );
    assert_eq!(jobs["jobs"][0]["refunded"], true);
}

#[tokio::test]
async fn a_paying_user_is_charged_once_per_idempotency_key() {
    let c = Cluster::start().await;
    let _node = c.trainer("cpu-node-1").await;
    shapes(&c.stack.data_root.path().join("shapes"), 10, false, 3);
    let (id, token) = c.user("payer", 1000).await;
    let body =
        json!({"train_path": "/shapes", "epochs": 1, "image_size": 16, "output_model": "Mine"});
    let (s1, v1) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .header("Idempotency-Key", "k-1")
            .header("Prefer", "respond-async")
            .json(&body),
    )
    .await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{v1}");
    assert_eq!(v1["tokens_used"], 100);
    assert_eq!(v1["remaining_tokens"], 900);
    assert!(v1["status_url"].as_str().unwrap().starts_with("/api/jobs/"));
    let (s2, v2) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .header("Idempotency-Key", "k-1")
            .json(&body),
    )
    .await;
    assert!(s2 == StatusCode::OK || s2 == StatusCode::ACCEPTED, "{v2}");
    assert_eq!(v2["job_id"], v1["job_id"]);
    let job_id = v1["job_id"].as_str().unwrap();
    c.wait_status(job_id, "completed", Duration::from_secs(300))
        .await;
    assert_eq!(c.balance(id).await, 900, "charged once");
    let (status, models) = send(
        http()
            .get(format!("{}/api/models", c.url()))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["models"][0]["name"], "Mine");
}

#[tokio::test]
async fn a_job_whose_trainer_dies_is_redelivered_and_resumes_after_its_last_checkpoint() {
    let c = Cluster::start().await;
    let mut first = c.trainer("doomed").await;
    shapes(&c.stack.data_root.path().join("shapes"), 100, false, 5);
    let live = c.stack.nats.client().await;
    let mut watch = live.subscribe("gantry.events.job.*").await.unwrap();
    let id = c.submit(json!({"train_path": "/shapes", "epochs": 20, "image_size": 48, "output_model": "Resumed"})).await;

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
    assert!(checkpointed.is_ok(), "no checkpoint:\n{}", first.output());
    let before = c.events(&id).await;
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

    let _second = c.trainer("rescuer").await;
    let job = c
        .wait_status(&id, "completed", Duration::from_secs(400))
        .await;
    assert_eq!(job["node"], "rescuer");
    let events = c.events(&id).await;
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
}

#[tokio::test]
async fn a_cancelled_job_stops_within_seconds_and_no_progress_follows() {
    let c = Cluster::start().await;
    let node = c.trainer("cpu-node-1").await;
    shapes(&c.stack.data_root.path().join("shapes"), 60, false, 9);
    let id = c
        .submit(json!({"train_path": "/shapes", "epochs": 200, "image_size": 32}))
        .await;
    let running = wait_until(Duration::from_secs(120), || async {
        c.events(&id)
            .await
            .iter()
            .any(|e| matches!(e.kind, JobEventKind::Progress { .. }))
            .then_some(())
    })
    .await;
    assert!(running.is_some(), "never made progress:\n{}", node.output());

    let (status, v) = send(
        http()
            .post(format!("{}/admin/api/jobs/{id}/cancel", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled");
    let stopped = wait_until(Duration::from_secs(15), || async {
        c.events(&id)
            .await
            .iter()
            .any(|e| e.kind == JobEventKind::Cancelled)
            .then_some(())
    })
    .await;
    assert!(
        stopped.is_some(),
        "the node never stopped:\n{}",
        node.output()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = c.events(&id).await;
    let at = events
        .iter()
        .position(|e| e.kind == JobEventKind::Cancelled)
        .unwrap();
    assert_eq!(
        at,
        events.len() - 1,
        "events after the cancel: {:?}",
        &events[at..]
    );
    assert_eq!(c.job(&id).await["status"], "cancelled");
    // Cancelling again conflicts.
    let (status, _) = send(
        http()
            .post(format!("{}/admin/api/jobs/{id}/cancel", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_drained_node_gets_no_job_while_another_does() {
    let c = Cluster::start().await;
    let _a = c.trainer("node-a").await;
    let _b = c.trainer("node-b").await;
    let (status, v) = send(
        http()
            .post(format!("{}/api/admin/cluster_nodes/drain", c.url()))
            .bearer_auth(ADMIN_TOKEN)
            .form(&[("hostname", "node-a"), ("token", c.token.as_str())]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    shapes(&c.stack.data_root.path().join("shapes"), 10, false, 2);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            c.submit(json!({"train_path": "/shapes", "epochs": 1, "image_size": 16}))
                .await,
        );
    }
    for id in &ids {
        let job = c
            .wait_status(id, "completed", Duration::from_secs(300))
            .await;
        assert_eq!(job["node"], "node-b", "{job}");
    }
    let (_, nodes) = send(
        http()
            .get(format!("{}/api/admin/cluster_nodes", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
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
}

#[tokio::test]
async fn unusable_datasets_and_escaping_paths_are_refused_before_any_charge() {
    let c = Cluster::start().await;
    let root = c.stack.data_root.path();
    let (id, token) = c.user("careful", 1000).await;
    // One class only.
    shapes(&root.join("one"), 3, false, 1);
    std::fs::remove_dir_all(root.join("one/square")).unwrap();
    std::fs::remove_dir_all(root.join("one/triangle")).unwrap();
    // Loose files, no class folders.
    std::fs::create_dir_all(root.join("flat")).unwrap();
    std::fs::write(root.join("flat/a.png"), b"not really").unwrap();
    // A class whose only image is junk.
    shapes(&root.join("junk"), 2, false, 1);
    for f in std::fs::read_dir(root.join("junk/circle")).unwrap() {
        std::fs::write(f.unwrap().path(), b"garbage").unwrap();
    }
    // A symlink inside the dataset pointing outside the root.
    let outside = tempfile::tempdir().unwrap();
    shapes(outside.path(), 2, false, 1);
    shapes(&root.join("linked"), 2, false, 1);
    std::os::unix::fs::symlink(outside.path().join("circle"), root.join("linked/escape")).unwrap();

    for (path, want) in [
        ("/one", StatusCode::BAD_REQUEST),
        ("/flat", StatusCode::BAD_REQUEST),
        ("/junk", StatusCode::BAD_REQUEST),
        ("/linked", StatusCode::BAD_REQUEST),
        ("/../etc", StatusCode::BAD_REQUEST),
        ("/missing", StatusCode::NOT_FOUND),
        ("/one/circle/00000.png", StatusCode::BAD_REQUEST),
    ] {
        let (status, v) = send(
            http()
                .post(format!("{}/api/train", c.url()))
                .bearer_auth(&token)
                .json(&json!({"train_path": path})),
        )
        .await;
        assert_eq!(status, want, "{path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path}: {v}"
        );
        assert!(
            !v.to_string()
                .contains(&outside.path().display().to_string()),
            "{path} leaked a real path: {v}"
        );
    }
    let (status, v) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/one", "driver": "opencl"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/one", "epochs": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"description": "no path"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(c.balance(id).await, 1000, "nothing was charged");
}

#[tokio::test]
async fn a_held_job_that_no_node_can_take_answers_503_and_is_refunded() {
    let c = Cluster::with_hold("2").await;
    shapes(&c.stack.data_root.path().join("shapes"), 5, false, 1);
    let (id, token) = c.user("hopeful", 300).await;
    let (status, v) = send(
        http()
            .post(format!("{}/api/train", c.url()))
            .bearer_auth(&token)
            .json(&json!({"train_path": "/shapes", "driver": "cuda"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("no node"),
        "{v}"
    );
    assert_eq!(c.balance(id).await, 300, "refunded");
    let (_, jobs) = send(
        http()
            .get(format!("{}/api/jobs", c.url()))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(jobs["jobs"][0]["status"], "failed", "{jobs}");
    assert_eq!(jobs["jobs"][0]["failure_kind"], "no_node");
}

#[tokio::test]
async fn a_queued_job_shows_its_position_and_why_it_waits() {
    let c = Cluster::start().await;
    shapes(&c.stack.data_root.path().join("shapes"), 5, false, 1);
    let first = c
        .submit(json!({"train_path": "/shapes", "driver": "rocm"}))
        .await;
    let second = c
        .submit(json!({"train_path": "/shapes", "driver": "rocm"}))
        .await;
    let j1 = c.job(&first).await;
    let j2 = c.job(&second).await;
    assert_eq!(j1["status"], "queued");
    assert_eq!(j1["queue_position"], 1, "{j1}");
    assert_eq!(j2["queue_position"], 2, "{j2}");
    assert!(
        j2["waiting_reason"]
            .as_str()
            .unwrap()
            .starts_with("no node for driver rocm"),
        "{j2}"
    );
    let (_, list) = send(
        http()
            .get(format!("{}/admin/api/jobs?status=queued&limit=1", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["job_id"], second, "newest first");
    // Cancelling a queued job ends it at once.
    let (status, v) = send(
        http()
            .post(format!("{}/admin/api/jobs/{first}/cancel", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(c.job(&second).await["queue_position"], 1);
    let (status, _) = send(
        http()
            .get(format!("{}/admin/api/jobs/nope", c.url()))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
