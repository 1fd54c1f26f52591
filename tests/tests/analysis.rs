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

/// Store `bytes` as the listed weights at `key`.
async fn put_weights(stack: &TestStack, key: &str, bytes: &[u8]) {
    async_nats::jetstream::new(stack.client().clone())
        .get_object_store(gantry_contracts::jobs::MODELS_BUCKET)
        .await
        .unwrap()
        .put(key, &mut &bytes[..])
        .await
        .unwrap();
}

/// Flip the last byte of the listed weights at `key`, so they no longer match their card; the
/// original bytes, to put back.
async fn tamper(stack: &TestStack, key: &str) -> Vec<u8> {
    let mut original = Vec::new();
    async_nats::jetstream::new(stack.client().clone())
        .get_object_store(gantry_contracts::jobs::MODELS_BUCKET)
        .await
        .unwrap()
        .get(key)
        .await
        .unwrap()
        .read_to_end(&mut original)
        .await
        .unwrap();
    let mut tampered = original.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    put_weights(stack, key, &tampered).await;
    original
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
        let original = tamper(&stack, &key).await;
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
        put_weights(&stack, &key, &original).await;
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

/// Page every result of analysis job `id` at `base` (`/admin/api/jobs` or `/api/jobs`), `limit`
/// at a time, checking each page's bounds.
async fn all_results(
    stack: &TestStack,
    token: &str,
    base: &str,
    id: &str,
    limit: u64,
) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let url = format!(
            "{}{base}/{id}/results?offset={}&limit={limit}",
            stack.base_url(),
            out.len()
        );
        let (status, page) = send(stack.http().get(url).bearer_auth(token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["offset"], out.len() as u64, "{page}");
        let results = page["results"].as_array().unwrap();
        assert!(results.len() as u64 <= limit, "{page}");
        out.extend(results.iter().cloned());
        if results.is_empty() || out.len() as u64 >= page["total"].as_u64().unwrap() {
            return out;
        }
    }
}

/// Wait until job `id` is over; the job as it ended.
async fn ended(stack: &TestStack, id: &str) -> Value {
    wait_until(Duration::from_secs(120), || async {
        let (_, v) = stack.admin_get(&format!("/admin/api/jobs/{id}")).await;
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(v)
    })
    .await
    .unwrap_or_else(|| panic!("analysis job {id} never ended"))
}

#[tokio::test]
async fn an_analysis_larger_than_a_request_is_queued_paged_and_charged_per_image() {
    TestStack::run(Duration::from_secs(900), |mut stack| async move {
        stack
            .short_heartbeats()
            .set_env("GANTRY_TRAIN_HOLD", "600")
            .set_env("GANTRY_ANALYZE_PRICE", "1")
            .set_env("GANTRY_ANALYZE_MAX_IMAGES", "8");
        stack.start_core().await;
        let _node = stack.join_trainer("queue-node").await;
        let root = stack.data_root.path().to_path_buf();
        stack.shapes("shapes", 30, 5);

        let (status, v) = stack
            .admin_post(
                "/admin/api/train",
                &json!({"output_model": "Shapes", "train_path": "/shapes", "epochs": 3,
                        "learning_rate": 0.003, "image_size": 32}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let train_job = v["job_id"].as_str().unwrap().to_owned();
        let reported = v["model"]["val_accuracy"].as_f64().unwrap();
        let card: gantry_training::card::ModelCard =
            serde_json::from_value(v["model"]["card"].clone()).unwrap();
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
        for p in &data.validation.paths {
            let to = root.join("val").join(p);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(root.join("shapes").join(p), to).unwrap();
        }
        let n = data.validation.len();
        assert!(n > 8, "more images than one request answers: {n}");

        // More than GANTRY_ANALYZE_MAX_IMAGES: queued, 202 with where to look.
        let (status, queued) = stack
            .admin_post(
                "/admin/api/analyze",
                &json!({"model": "Shapes", "input_path": "/val", "top_k": 2}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
        assert_eq!(queued["images"], n as u64, "{queued}");
        assert_eq!(queued["model"], "Shapes@1", "{queued}");
        assert_eq!(queued["tokens_used"], 0, "admins pay nothing");
        let id = queued["job_id"].as_str().unwrap().to_owned();
        assert_eq!(
            queued["results_url"],
            format!("/admin/api/jobs/{id}/results")
        );

        let job = ended(&stack, &id).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["kind"], "analyze", "{job}");
        assert_eq!(job["analysis"]["images"], n as u64, "{job}");
        assert_eq!(job["analysis"]["input_path"], "/val", "{job}");
        assert_eq!(
            job["progress"]["step"], n as u64,
            "progress like training: {job}"
        );
        assert_eq!(job["progress"]["total_steps"], n as u64, "{job}");
        assert_eq!(job["node"], "queue-node", "{job}");

        // Paged in the input's order, each image once, scoring what training reported.
        let results = all_results(&stack, ADMIN_TOKEN, "/admin/api/jobs", &id, 5).await;
        assert_eq!(results.len(), n);
        let paths: Vec<&str> = results
            .iter()
            .map(|r| r["path"].as_str().unwrap())
            .collect();
        let mut sorted = paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(paths, sorted, "every image once, in order");
        let right = results
            .iter()
            .filter(|r| {
                let class = r["path"].as_str().unwrap().split('/').nth(2).unwrap();
                assert_eq!(r["top_k"].as_array().unwrap().len(), 2, "{r}");
                r["top_k"][0]["label"] == class
            })
            .count();
        let measured = right as f64 / n as f64;
        assert!(
            (measured - reported).abs() < 1e-6,
            "the queued analysis scores {measured}, the training reported {reported}"
        );
        // The command line queues it too, follows it, and prints every result.
        let home = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new(gantry_testing::service::bin_dir().join("gantry"))
            .args([
                "--output", "json", "analyze", "Shapes", "/val", "--top-k", "1",
            ])
            .env_remove("GANTRY_CONFIG")
            .env_remove("GANTRY_STATE_DIR")
            .env("HOME", home.path())
            .env("GANTRY_URL", stack.base_url())
            .env("GANTRY_TOKEN", ADMIN_TOKEN)
            .current_dir(home.path())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("queued as analysis job"), "{stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["model"], "Shapes@1", "{v}");
        assert_eq!(v["results"].as_array().unwrap().len(), n, "{v}");

        // The same page under the other admin prefix; past the end, empty.
        let (status, page) = stack
            .admin_get(&format!("/api/admin/jobs/{id}/results?offset={n}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["results"].as_array().unwrap().len(), 0, "{page}");
        assert_eq!(page["available"], n as u64, "{page}");

        // Bad pages and jobs that are no analysis.
        for bad in ["limit=0", "limit=1001", "offset=-1"] {
            let (status, v) = stack
                .admin_get(&format!("/admin/api/jobs/{id}/results?{bad}"))
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        }
        let (status, v) = stack
            .admin_get(&format!("/admin/api/jobs/{train_job}/results"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "a training job: {v}");

        // A user pays a token an image, is refunded when the job fails (weights that no longer
        // match their card: the node has not loaded this model yet), and sees only their own
        // job's results.
        let (user_id, user_token) = stack.user("queue-user", 100 + 2 * n as i64).await;
        let (status, v) = send(
            stack
                .http()
                .post(format!("{}/api/train", stack.base_url()))
                .bearer_auth(&user_token)
                .json(
                    &json!({"output_model": "Mine", "train_path": "/shapes", "epochs": 1,
                              "image_size": 32}),
                ),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(stack.balance(user_id).await, 2 * n as i64);
        let key = v["model"]["weights_key"].as_str().unwrap().to_owned();
        let original = tamper(&stack, &key).await;
        let analyze_mine = || {
            send(
                stack
                    .http()
                    .post(format!("{}/api/analyze", stack.base_url()))
                    .bearer_auth(&user_token)
                    .json(&json!({"model": "Mine", "input_path": "/val", "top_k": 1})),
            )
        };
        let (status, failing) = analyze_mine().await;
        assert_eq!(status, StatusCode::ACCEPTED, "{failing}");
        assert_eq!(failing["tokens_used"], n as u64, "{failing}");
        let failing_id = failing["job_id"].as_str().unwrap().to_owned();
        let job = ended(&stack, &failing_id).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["failure_kind"], "data", "{job}");
        assert!(
            job["error"].as_str().unwrap().contains("does not match"),
            "{job}"
        );
        let refunded = wait_until(Duration::from_secs(30), || async {
            (stack.balance(user_id).await == 2 * n as i64).then_some(())
        })
        .await;
        assert!(refunded.is_some(), "the failed analysis was not refunded");

        put_weights(&stack, &key, &original).await;
        let (status, mine) = analyze_mine().await;
        assert_eq!(status, StatusCode::ACCEPTED, "{mine}");
        let mine_id = mine["job_id"].as_str().unwrap().to_owned();
        assert_eq!(ended(&stack, &mine_id).await["status"], "completed");
        assert_eq!(stack.balance(user_id).await, n as i64, "a token an image");
        let own = all_results(&stack, &user_token, "/api/jobs", &mine_id, 1000).await;
        assert_eq!(own.len(), n);
        assert!(own
            .iter()
            .all(|r| r["top_k"].as_array().unwrap().len() == 1));
        let (status, v) = send(
            stack
                .http()
                .get(format!("{}/api/jobs/{id}/results", stack.base_url()))
                .bearer_auth(&user_token),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another user's job: {v}");
    })
    .await;
}
