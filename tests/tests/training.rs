//! Training end to end over the real binaries: the api, auth, the registry and a CPU trainer,
//! real NATS (JetStream) and the real store. The page's curl example trains; generated shapes
//! that differ only by shape are learnt to 90 % while the same pictures with shuffled labels stay
//! below 50 %; the downloaded weights score what the job reported; listings, counters and the
//! event history follow.

use std::time::Duration;

use gantry_testing::{send, wait_until, TestStack, ADMIN_TOKEN};
use gantry_training::dataset::{Dataset, LoadOptions};
use gantry_training::synthetic::SyntheticSpec;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn final_val_accuracy(model: &Value) -> f64 {
    model["val_accuracy"].as_f64().unwrap()
}

#[tokio::test]
async fn the_pages_curl_example_trains_shapes_to_90_percent_while_shuffled_labels_stay_below_50() {
    TestStack::run(Duration::from_secs(1500), |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "600");
        stack.start_core().await;
        let _node = stack.join_trainer("cpu-node-1").await;
        let root = stack.data_root.path();
        stack.shapes("path/to/training/data", 30, 3);
        stack.shapes("shapes", 200, 7);
        stack.shapes_with(
            "shuffled",
            SyntheticSpec {
                per_class: 200,
                seed: 7,
                shuffle_labels: true,
                ..SyntheticSpec::default()
            },
        );

        // The page's example, exactly as written, held until the job ends:
        // curl -X POST -H "Authorization: Bearer YOUR_ADMIN_API_TOKEN" -H "Content-Type: application/json" \
        //   -d '{"output_model": "MyModel", "description": "Custom trained model", "train_path": "/path/to/training/data"}' \
        //   {{ request.host_url }}admin/api/train
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-X", "POST", "-H", &format!("Authorization: Bearer {ADMIN_TOKEN}"), "-H", "Content-Type: application/json", "-d"])
            .arg(r#"{ "output_model": "MyModel", "description": "Custom trained model", "train_path": "/path/to/training/data" }"#)
            .arg(format!("{}/admin/api/train", stack.base_url()))
            .output()
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["message"], "Training completed", "{v}");
        assert_eq!(v["tokens_used"], 0, "admins pay nothing");
        assert_eq!(v["remaining_tokens"], stack.balance(1).await);
        assert_eq!(v["model"]["name"], "MyModel");
        assert_eq!(v["model"]["version"], 1);
        assert_eq!(
            v["model"]["card"]["training"]["epochs"], 10,
            "the defaults apply"
        );
        // How long it waited for a node and trained.
        assert!(v["queue_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{v}");
        assert!(v["run_seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");
        // The held answer is what the registry recorded, not a trainer's word ahead of it.
        let (_, job) = send(
            stack.http()
                .get(format!(
                    "{}/admin/api/jobs/{}",
                    stack.base_url(),
                    v["job_id"].as_str().unwrap()
                ))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["model"], v["model"], "{job}");

        // A real run on the shapes: a held JSON submission with more epochs.
        let (status, v) = send(stack.http().post(format!("{}/admin/api/train", stack.base_url())).bearer_auth(ADMIN_TOKEN).json(&json!({
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
        let resp = stack.http()
            .get(format!(
                "{}/admin/api/models/MyModel/versions/2/download",
                stack.base_url()
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
        let id = stack.submit(json!({"output_model": "Shuffled", "train_path": "/shuffled", "epochs": 25, "learning_rate": 0.003, "image_size": 32})).await;
        let job = stack.wait_job(&id, Duration::from_secs(600), "completed", |j| j["status"] == "completed")
            .await;
        let acc = final_val_accuracy(&job["model"]);
        assert!(acc < 0.5, "shuffled labels reached {acc}");

        // Listings and counters follow the jobs (they are settled just after the job reads completed).
        let settled = wait_until(Duration::from_secs(10), || async {
            let (_, models) = send(
                stack.http()
                    .get(format!("{}/admin/api/models", stack.base_url()))
                    .bearer_auth(ADMIN_TOKEN),
            )
            .await;
            let (_, nodes) = send(
                stack.http()
                    .get(format!("{}/api/admin/cluster_nodes", stack.base_url()))
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
            stack.http()
                .get(format!("{}/admin/api/jobs?status=completed", stack.base_url()))
                .bearer_auth(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(list["total"], 3);
        assert_eq!(list["jobs"][0]["job_id"], id, "newest first");

        // The event history over server-sent events ends with the completion.
        let body = stack.http()
            .get(format!("{}/admin/api/jobs/{id}/events", stack.base_url()))
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
    })
    .await;
}
