//! Issue 16 as users meet it: models belong to their owners, lists carry summaries with
//! millisecond timestamps and filters, refusals name the field and what it allows, users find
//! the datasets they may train on, and `Prefer: respond-async` answers at once.

use std::time::Duration;

use gantry_testing::{send, TestStack, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);
const JOB: Duration = Duration::from_secs(120);

/// `2026-01-02T03:04:05.678Z`.
fn is_ms_timestamp(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

async fn get(stack: &TestStack, token: &str, path: &str) -> (StatusCode, Value) {
    send(stack.http().get(stack.url(path)).bearer_auth(token)).await
}

async fn post(stack: &TestStack, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
    send(
        stack
            .http()
            .post(stack.url(path))
            .bearer_auth(token)
            .json(body),
    )
    .await
}

#[tokio::test]
async fn models_belong_to_their_owners_and_lists_show_summaries() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        stack.shapes("shapes", 8, 4);
        let _node = stack.join_trainer("own-node").await;
        let (user_id, user) = stack.user("owner-a", 1000).await;
        let (_, me) = stack.admin_get("/api/auth/me").await;
        let admin_id = me["id"].as_i64().unwrap();
        let tiny = |extra: Value| {
            let mut body = json!({"output_model": "Bars", "train_path": "/shapes", "epochs": 1, "image_size": 16});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };

        // The admin's Bars and the user's Bars are two models, each at version 1.
        let admin_job = stack.submit(tiny(json!({}))).await;
        let done = stack.wait_final(&admin_job, JOB).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["model"]["version"], 1, "{done}");
        assert_eq!(done["model"]["user_id"], admin_id, "{done}");
        let (status, v) = post(&stack, &user, "/api/train?wait=false", &tiny(json!({}))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let user_job = v["job_id"].as_str().unwrap().to_owned();
        let done = stack.wait_final(&user_job, JOB).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["model"]["version"], 1, "the user's own first version: {done}");
        assert_eq!(done["model"]["user_id"], user_id, "{done}");

        // The user sees only theirs; the admin sees both, each with its owner.
        let (status, mine) = get(&stack, &user, "/api/models").await;
        assert_eq!(status, StatusCode::OK, "{mine}");
        assert_eq!(mine["total"], 1, "{mine}");
        assert_eq!(mine["models"][0]["owner_id"], user_id, "{mine}");
        assert!(mine["models"][0]["latest"].get("card").is_none(), "{mine}");
        assert!(is_ms_timestamp(&mine["models"][0]["latest"]["created_at"]), "{mine}");
        let (_, all) = stack.admin_get("/admin/api/models").await;
        let owners: Vec<i64> = all["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] == "Bars")
            .map(|m| m["owner_id"].as_i64().unwrap())
            .collect();
        assert_eq!(owners.len(), 2, "{all}");
        assert!(owners.contains(&admin_id) && owners.contains(&user_id), "{all}");
        let (_, one) = stack
            .admin_get(&format!("/admin/api/models?owner={user_id}&limit=1"))
            .await;
        assert_eq!((one["total"].as_u64(), one["limit"].as_u64()), (Some(1), Some(1)), "{one}");

        // Paged one at a time, the pages hold every model once, by name then owner.
        let total = all["total"].as_u64().unwrap();
        let mut paged = Vec::new();
        for offset in 0..total {
            let (_, page) = stack
                .admin_get(&format!("/admin/api/models?limit=1&offset={offset}"))
                .await;
            assert_eq!(page["models"].as_array().unwrap().len(), 1, "{page}");
            paged.push(page["models"][0].clone());
        }
        assert_eq!(&Value::Array(paged), &all["models"], "pages differ from the whole list");

        // By name alone the admin is asked whose; with the owner, it is that one.
        let (status, v) = stack.admin_get("/admin/api/models/Bars").await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("owner"), "{v}");
        let (status, v) = stack
            .admin_get(&format!("/admin/api/models/Bars?owner={user_id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["owner_id"], user_id, "{v}");

        // A user never writes into another's model; an admin may, and it stays the user's.
        let (status, v) =
            post(&stack, &user, "/api/train?wait=false", &tiny(json!({"owner": admin_id}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("owner"), "{v}");
        let into = stack.submit(tiny(json!({"owner": user_id}))).await;
        let done = stack.wait_final(&into, JOB).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!((done["model"]["version"].as_u64(), done["model"]["user_id"].as_i64()), (Some(2), Some(user_id)), "{done}");
        assert_eq!(done["model_owner"], user_id, "{done}");
        let (_, v) = get(&stack, &user, "/api/models/Bars").await;
        assert_eq!(v["versions"].as_array().unwrap().len(), 2, "{v}");
        let resp = stack
            .http()
            .get(stack.url("/api/models/Bars/versions/2/download"))
            .bearer_auth(&user)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "the user downloads what an admin trained for them");
        let (_, v) = stack
            .admin_get(&format!("/admin/api/models/Bars?owner={admin_id}"))
            .await;
        assert_eq!(v["versions"].as_array().unwrap().len(), 1, "the admin's model is untouched: {v}");

        // Lists carry summaries with millisecond timestamps; the job's own view has everything.
        let (_, jobs) = stack.admin_get("/admin/api/jobs").await;
        let listed = jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job_id"] == into.as_str())
            .unwrap()
            .clone();
        assert!(listed["model"].get("card").is_none(), "{listed}");
        assert_eq!(listed["model"]["version"], 2, "{listed}");
        assert!(is_ms_timestamp(&listed["created_at"]), "{listed}");
        let full = stack.job(&into).await;
        assert!(full["model"]["card"]["classes"].is_array(), "{full}");
        // When it started and ended, and how long it waited and ran.
        assert!(is_ms_timestamp(&full["started_at"]) && is_ms_timestamp(&full["ended_at"]), "{full}");
        assert!(full["started_at"].as_str() <= full["ended_at"].as_str(), "{full}");
        assert!(full["queue_seconds"].as_f64().unwrap() >= 0.0, "{full}");
        assert!(full["run_seconds"].as_f64().unwrap() > 0.0, "{full}");
        assert_eq!(listed["run_seconds"], full["run_seconds"], "{listed}");
        // Filters: by user, by time.
        let (_, v) = stack
            .admin_get(&format!("/admin/api/jobs?user_id={user_id}"))
            .await;
        assert_eq!(v["total"], 1, "{v}");
        assert_eq!(v["jobs"][0]["job_id"], user_job.as_str(), "{v}");
        let later = (chrono::Utc::now() + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (status, v) = stack
            .admin_get(&format!("/admin/api/jobs?since={later}"))
            .await;
        assert_eq!((status, v["total"].as_u64()), (StatusCode::OK, Some(0)), "{v}");
        let (status, v) = stack
            .admin_get(&format!("/admin/api/jobs?until={later}"))
            .await;
        assert_eq!((status, v["total"].as_u64()), (StatusCode::OK, Some(3)), "{v}");
        let (status, v) = stack
            .admin_get(&format!("/admin/api/jobs?since={later}&until={later}"))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

        // `Prefer: respond-async` answers while the job still waits behind a long one.
        let long = stack
            .submit(json!({"output_model": "Long", "train_path": "/shapes", "epochs": 200, "image_size": 16}))
            .await;
        stack
            .wait_job(&long, JOB, "running", |j| j["status"] == "running")
            .await;
        let (status, v) = send(
            stack
                .http()
                .post(stack.url("/admin/api/train"))
                .bearer_auth(ADMIN_TOKEN)
                .header("Prefer", "respond-async")
                .json(&tiny(json!({"output_model": "Behind"}))),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let behind = v["job_id"].as_str().unwrap().to_owned();
        let waiting = stack.job(&behind).await;
        assert_eq!(waiting["status"], "queued", "{waiting}");
        assert_eq!(waiting["queue_position"], 1, "{waiting}");
        assert!(waiting["started_at"].is_null() && waiting["queue_seconds"].as_f64().is_some(), "{waiting}");
        stack.cancel(&behind).await;
        stack.cancel(&long).await;
    })
    .await;
}

#[tokio::test]
async fn refusals_name_the_field_and_what_it_allows() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let refused = |v: &Value| v["error"]["message"].as_str().unwrap_or_default().to_owned();
        for (body, needle) in [
            (json!({"train_path": null}), "`train_path` is required"),
            (json!({"train_path": "/x", "epochs": 0}), "`epochs` must be an integer from 1 to 200"),
            (json!({"train_path": "/x", "epochs": "ten"}), "`epochs` must be an integer from 1 to 200"),
            (json!({"train_path": "/x", "learning_rate": 0}), "`learning_rate` must be a number above 0 and at most 1"),
            (json!({"train_path": "/x", "output_model": "no spaces"}), "`output_model` must be a string"),
            (json!({"train_path": "/x", "driver": "gpu"}), "driver must be one of cuda, rocm, cpu, any"),
            (json!([1, 2]), "the body must be an object"),
        ] {
            let (status, v) = stack.admin_post("/admin/api/train", &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert_eq!(v["error"]["code"], "bad_request", "{v}");
            assert!(refused(&v).contains(needle), "{body}: {v}");
            assert!(!refused(&v).contains("occurred while parsing"), "{v}");
        }
        let (status, v) = send(
            stack
                .http()
                .post(stack.url("/admin/api/train"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("{\"train_path\": "),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(refused(&v).starts_with("the body is not valid JSON"), "{v}");

        for (path, needle) in [
            ("/admin/api/users/abc", "path parameter `id` must be an integer (got `abc`)"),
            ("/api/admin/users/abc", "path parameter `id` must be an integer (got `abc`)"),
            ("/admin/api/jobs?limit=0", "query parameter `limit` must be an integer from 1 to 500 (got `0`)"),
            (
                "/admin/api/jobs?status=done",
                "query parameter `status` must be one of queued, running, completed, failed, cancelled (got `done`)",
            ),
            ("/admin/api/models/X/versions/first/download", "path parameter `version`"),
        ] {
            let (status, v) = stack.admin_get(path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
            assert!(refused(&v).contains(needle), "{path}: {v}");
            assert!(!refused(&v).contains("param0"), "{path}: {v}");
        }

        // A form names the missing field too (the page's set_driver marks all three required).
        let (status, v) = send(
            stack
                .http()
                .post(stack.url("/api/admin/cluster_nodes/set_driver"))
                .bearer_auth(ADMIN_TOKEN)
                .form(&[("hostname", "worker1"), ("token", "abcd1234...")]),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(refused(&v).contains("`driver` is required"), "{v}");
    })
    .await;
}

#[tokio::test]
async fn users_list_the_datasets_they_may_train_on_and_train_only_there() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.set_env("GANTRY_DATASETS_PATH", "/datasets");
        stack.start_core().await;
        stack.shapes("datasets/shapes", 5, 1);
        stack.shapes("private/other", 5, 2);
        std::fs::create_dir_all(stack.data_root.path().join("datasets/empty")).unwrap();
        std::fs::write(stack.data_root.path().join("datasets/readme.txt"), "hi").unwrap();
        let (user_id, user) = stack.user("reader", 1000).await;

        let (status, v) = get(&stack, &user, "/api/datasets").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["total"], 1, "only folders holding class folders: {v}");
        let d = &v["datasets"][0];
        assert_eq!(d["name"], "shapes", "{v}");
        assert_eq!(d["path"], "/datasets/shapes", "{v}");
        assert_eq!(d["classes"], json!(["circle", "square", "triangle"]), "{v}");
        assert_eq!(d["images"], 15, "{v}");
        let (status, v) = send(stack.http().get(stack.url("/api/datasets"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");

        // Users train on those only; admins anywhere under the root.
        let (status, v) = post(
            &stack,
            &user,
            "/api/train?wait=false",
            &json!({"train_path": "/private/other", "epochs": 1}),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/datasets"),
            "{v}"
        );
        assert_eq!(stack.balance(user_id).await, 1000, "nothing was charged");
    })
    .await;
}
