//! Analysis end to end over the real binaries: a CPU trainer trains shapes, then its analysis
//! worker classifies the job's validation images through `POST /admin/api/analyze` and scores
//! exactly what the training reported; the model stays loaded for the next request and the
//! node lists it in `processes`; unknown models, versions and inputs that are not images are
//! refused; with no node left, 503 with `Retry-After`.

use std::time::Duration;

use gantry_testing::{send, wait_until, TestStack, ADMIN_TOKEN};
use gantry_training::dataset::{Dataset, LoadOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

/// `gantry_trainer_model_loads_total{outcome="loaded"}` in a trainer's metrics.
fn loads(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("gantry_trainer_model_loads_total{outcome=\"loaded\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_trained_model_classifies_its_validation_images_as_training_scored_them_and_stays_loaded()
{
    TestStack::run(Duration::from_secs(900), |mut stack| async move {
        stack
            .short_heartbeats()
            .set_env("GANTRY_TRAIN_HOLD", "600")
            .set_env("GANTRY_ANALYZE_PRICE", "2");
        stack.start_core().await;
        let node = stack.join_trainer("analysis-node").await;
        let root = stack.data_root.path().to_path_buf();
        stack.shapes("shapes", 40, 11);

        // No such model yet.
        let (status, v) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes", "input_path": "/shapes"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

        let (status, v) = stack
            .admin_post(
                "/admin/api/train",
                &json!({"output_model": "Shapes", "train_path": "/shapes", "epochs": 6,
                        "learning_rate": 0.003, "image_size": 32}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let reported = v["model"]["val_accuracy"].as_f64().unwrap();
        let card: gantry_training::card::ModelCard =
            serde_json::from_value(v["model"]["card"].clone()).unwrap();

        // The job's validation images (the trainer's own deterministic split), copied under
        // /val with their class folders, so each path says the right answer.
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
        assert!(data.validation.len() >= 20, "{}", data.validation.len());
        for p in &data.validation.paths {
            let to = root.join("val").join(p);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(root.join("shapes").join(p), to).unwrap();
        }

        let (status, out) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes", "input_path": "/val", "top_k": 3}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["model"], "Shapes@1", "the latest version by default");
        let results = out["results"].as_array().unwrap();
        assert_eq!(results.len(), data.validation.len(), "{out}");
        let mut right = 0;
        for r in results {
            let path = r["path"].as_str().unwrap();
            let class = path
                .strip_prefix("/val/")
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            assert_eq!(r["node"], "analysis-node", "{r}");
            let top = r["top_k"].as_array().unwrap();
            assert_eq!(top.len(), 3, "{r}");
            let probs: Vec<f64> = top
                .iter()
                .map(|t| t["probability"].as_f64().unwrap())
                .collect();
            assert!(
                probs.windows(2).all(|w| w[0] >= w[1]),
                "most probable first: {r}"
            );
            assert!(
                (probs.iter().sum::<f64>() - 1.0).abs() < 1e-3,
                "three classes: {r}"
            );
            if top[0]["label"] == class {
                right += 1;
            }
        }
        let measured = right as f64 / results.len() as f64;
        assert!(
            (measured - reported).abs() < 1e-6,
            "the api's results score {measured}, the training reported {reported}"
        );

        // The node lists its analysis worker holding the model, in the page's shape.
        let listed = wait_until(Duration::from_secs(10), || async {
            let (_, v) = stack.admin_get("/admin/api/cluster_clients").await;
            v["clients"][0]["processes"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == "analysis_cpu" && p["model"] == "Shapes@1")
                .cloned()
        })
        .await
        .expect("processes never named the loaded model");
        assert_eq!(listed["weight"], 10, "{listed}");
        assert!(
            listed["status"] == "active" || listed["status"] == "busy",
            "{listed}"
        );

        // A second request for the same version is served without loading it again.
        assert_eq!(loads(&node.metrics().await), 1);
        let (status, again) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes@1", "input_path": &results[0]["path"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["results"].as_array().unwrap().len(), 1);
        assert_eq!(
            again["results"][0]["top_k"].as_array().unwrap().len(),
            3,
            "top_k is at most the classes"
        );
        // The same answer (alone in its batch, the arithmetic may differ in the last digits).
        let (one, many) = (&again["results"][0]["top_k"], &results[0]["top_k"]);
        for i in 0..3 {
            assert_eq!(one[i]["label"], many[i]["label"], "{one} {many}");
            let d =
                one[i]["probability"].as_f64().unwrap() - many[i]["probability"].as_f64().unwrap();
            assert!(d.abs() < 1e-4, "{one} {many}");
        }
        assert_eq!(
            loads(&node.metrics().await),
            1,
            "the model was loaded again"
        );

        // The same from the command line.
        let home = tempfile::tempdir().unwrap();
        let cli = |format: &'static str| {
            let mut c =
                tokio::process::Command::new(gantry_testing::service::bin_dir().join("gantry"));
            c.args([
                "--output",
                format,
                "analyze",
                "Shapes@1",
                "/val/circle",
                "--top-k",
                "1",
            ])
            .env_remove("GANTRY_CONFIG")
            .env_remove("GANTRY_STATE_DIR")
            .env("HOME", home.path())
            .env("GANTRY_URL", stack.base_url())
            .env("GANTRY_TOKEN", ADMIN_TOKEN)
            .current_dir(home.path());
            c
        };
        let out = cli("json").output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["model"], "Shapes@1");
        let listed = v["results"].as_array().unwrap();
        assert!(!listed.is_empty());
        assert!(
            listed
                .iter()
                .all(|r| r["path"].as_str().unwrap().starts_with("/val/circle/")
                    && r["top_k"].as_array().unwrap().len() == 1),
            "{v}"
        );
        let out = cli("table").output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("model Shapes@1:"),
            "{text}"
        );
        assert!(text.contains("analysis-node"), "{text}");
        assert_eq!(loads(&node.metrics().await), 1, "still loaded once");

        // Refusals: an unknown version, an input that is not an image (named), a path outside
        // the rules; users see only their own models.
        let (status, v) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes@9", "input_path": "/val"}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
        std::fs::create_dir_all(root.join("junk")).unwrap();
        std::fs::write(root.join("junk/broken.png"), b"not a picture").unwrap();
        let (status, v) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes", "input_path": "/junk/broken.png"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/junk/broken.png"),
            "{v}"
        );
        let (status, v) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes", "input_path": "/../etc"}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

        // A user analyses with their own model only, and pays 2 tokens an image (admins paid
        // nothing above): enough for one pass over /val after training, not for two.
        let n = results.len() as i64;
        let (user_id, user_token) = stack.user("ana", 100 + 2 * n + 5).await;
        let as_user = |path: &str, body: Value| {
            send(
                stack
                    .http()
                    .post(format!("{}{path}", stack.base_url()))
                    .bearer_auth(&user_token)
                    .json(&body),
            )
        };
        let (status, v) = as_user(
            "/api/analyze",
            json!({"model": "Shapes", "input_path": "/val"}),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another user's model: {v}");
        let (status, v) = as_user(
            "/api/train",
            json!({"output_model": "Mine", "train_path": "/shapes", "epochs": 1, "image_size": 32}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(stack.balance(user_id).await, 2 * n + 5);

        // Weights that no longer match their card are refused (409) and the charge refunded;
        // put back, the same request goes through.
        let key = v["model"]["weights_key"].as_str().unwrap().to_owned();
        let models = async_nats::jetstream::new(stack.client().clone())
            .get_object_store(gantry_contracts::jobs::MODELS_BUCKET)
            .await
            .unwrap();
        let mut original = Vec::new();
        models
            .get(key.as_str())
            .await
            .unwrap()
            .read_to_end(&mut original)
            .await
            .unwrap();
        let mut tampered = original.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0xff;
        models
            .put(key.as_str(), &mut tampered.as_slice())
            .await
            .unwrap();
        let (status, v) = as_user(
            "/api/analyze",
            json!({"model": "Mine", "input_path": "/val"}),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{v}"
        );
        assert_eq!(stack.balance(user_id).await, 2 * n + 5, "refunded");
        models
            .put(key.as_str(), &mut original.as_slice())
            .await
            .unwrap();
        let (status, v) = as_user(
            "/api/analyze",
            json!({"model": "Mine", "input_path": "/val"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["model"], "Mine@1");
        assert_eq!(v["results"].as_array().unwrap().len() as i64, n);
        assert_eq!(
            stack.balance(user_id).await,
            5,
            "2 tokens for each of {n} images"
        );
        let (status, v) = as_user(
            "/api/analyze",
            json!({"model": "Mine", "input_path": "/val"}),
        )
        .await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{v}");
        assert_eq!(stack.balance(user_id).await, 5, "nothing charged");

        // With no node left to serve: 503 and when to try again.
        drop(node);
        stack
            .wait_node(
                "analysis-node",
                Duration::from_secs(20),
                "disconnected",
                |n| !n.connected,
            )
            .await;
        let resp = stack
            .http()
            .post(format!("{}/admin/api/analyze", stack.base_url()))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"model": "Shapes", "input_path": "/val"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key("retry-after"));
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
    })
    .await;
}
