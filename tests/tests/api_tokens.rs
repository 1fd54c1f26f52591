//! Cluster tokens and API tokens as admins and users reach them over HTTP, against the real
//! binaries: unique cluster token names (a revoked token's name may be used again), DELETE
//! answering 204 and then 404, `limit`/`offset`/`total` on both lists in the page's shape,
//! timestamps with milliseconds, and node operations on a revoked token's node refused with 409.

use std::time::Duration;

use gantry_testing::{send, TestStack, ADMIN_TOKEN, READY};
use reqwest::multipart::Form;
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(240);

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

/// A 4xx in the envelope with `code`, whose message names every one of `words`.
fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str, words: &[&str]) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    for w in words {
        assert!(m.contains(w), "{m:?} does not name {w:?}");
    }
}

/// RFC 3339, UTC, milliseconds: `2026-01-02T03:04:05.678Z`.
fn is_millis(s: &str) -> bool {
    s.len() == 24
        && s.ends_with('Z')
        && s.as_bytes()[19] == b'.'
        && s[20..23].chars().all(|c| c.is_ascii_digit())
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

async fn create_cluster_token(stack: &TestStack, name: &str) -> (StatusCode, Value) {
    stack
        .admin_post("/admin/api/cluster_tokens", &json!({ "name": name }))
        .await
}

async fn delete(stack: &TestStack, token: &str, path: &str) -> (StatusCode, Value) {
    send(stack.http().delete(stack.url(path)).bearer_auth(token)).await
}

fn token_names(list: &Value) -> Vec<(String, bool)> {
    list["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {list}"))
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["active"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn cluster_token_names_are_unique_revoking_answers_204_then_404_and_the_list_pages() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let (status, rack) = create_cluster_token(&stack, "Rack 7").await;
        assert_eq!(status, StatusCode::CREATED, "{rack}");
        let rack_id = rack["id"].as_i64().unwrap();

        // The same name, whatever its case and surrounding blanks: 409 naming it.
        for same in ["Rack 7", "  rack 7 ", "RACK 7"] {
            let (status, v) = create_cluster_token(&stack, same).await;
            assert_error(
                status,
                &v,
                StatusCode::CONFLICT,
                "conflict",
                &[same.trim(), "already exists"],
            );
        }
        let (status, v) = create_cluster_token(&stack, "Rack 8").await;
        assert_eq!(status, StatusCode::CREATED, "{v}");

        // Revoked: 204 with no body, then 404; it stays listed, inactive.
        let path = format!("/admin/api/cluster_tokens/{rack_id}");
        let (status, body) = delete(&stack, ADMIN_TOKEN, &path).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, v) = delete(&stack, ADMIN_TOKEN, &path).await;
        assert_error(
            status,
            &v,
            StatusCode::NOT_FOUND,
            "not_found",
            &["already revoked"],
        );
        let (status, v) = delete(
            &stack,
            ADMIN_TOKEN,
            &format!("/api/admin/cluster_tokens/{rack_id}"),
        )
        .await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", &[]);
        let (status, v) = delete(&stack, ADMIN_TOKEN, "/admin/api/cluster_tokens/4242").await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", &["4242"]);
        let (status, v) = delete(&stack, ADMIN_TOKEN, "/admin/api/cluster_tokens/rack").await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "bad_request", &["id"]);

        // A revoked token's name may be given again.
        let (status, again) = create_cluster_token(&stack, "rack 7").await;
        assert_eq!(status, StatusCode::CREATED, "{again}");
        assert_ne!(again["id"], rack_id);
        let (status, v) = create_cluster_token(&stack, "Rack 7").await;
        assert_error(status, &v, StatusCode::CONFLICT, "conflict", &["Rack 7"]);

        // The list: the page's shape, plus total, limit and offset; pages by id.
        for name in ["Rack 9", "Rack 10"] {
            assert_eq!(
                create_cluster_token(&stack, name).await.0,
                StatusCode::CREATED
            );
        }
        let (status, all) = stack.admin_get("/admin/api/cluster_tokens").await;
        assert_eq!(status, StatusCode::OK, "{all}");
        assert_eq!(keys(&all), ["limit", "offset", "tokens", "total"]);
        assert_eq!(
            (
                all["total"].as_u64(),
                all["limit"].as_u64(),
                all["offset"].as_u64()
            ),
            (Some(5), Some(100), Some(0))
        );
        for t in all["tokens"].as_array().unwrap() {
            assert_eq!(
                keys(t),
                ["active", "created_at", "id", "name", "token"],
                "{t}"
            );
            assert!(t["token"].as_str().unwrap().ends_with("..."), "{t}");
        }
        assert_eq!(
            token_names(&all),
            [
                ("Rack 7".to_owned(), false),
                ("Rack 8".to_owned(), true),
                ("rack 7".to_owned(), true),
                ("Rack 9".to_owned(), true),
                ("Rack 10".to_owned(), true),
            ]
        );
        let (_, first) = stack.admin_get("/admin/api/cluster_tokens?limit=2").await;
        let (_, rest) = stack
            .admin_get("/api/admin/cluster_tokens?limit=2&offset=2")
            .await;
        assert_eq!(token_names(&first), token_names(&all)[..2]);
        assert_eq!(token_names(&rest), token_names(&all)[2..4]);
        assert_eq!(
            (
                rest["total"].as_u64(),
                rest["limit"].as_u64(),
                rest["offset"].as_u64()
            ),
            (Some(5), Some(2), Some(2))
        );
        for (query, words) in [
            ("limit=0", &["limit", "1"][..]),
            ("limit=1001", &["limit", "1000"][..]),
            ("offset=-3", &["offset"][..]),
        ] {
            let (status, v) = stack
                .admin_get(&format!("/admin/api/cluster_tokens?{query}"))
                .await;
            assert_error(status, &v, StatusCode::BAD_REQUEST, "bad_request", words);
        }

        // Bounded on the bus too.
        let e = stack
            .registry_call::<_, Value>(
                gantry_contracts::subjects::registry::TOKENS_LIST,
                &json!({"limit": 0}),
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.code,
            gantry_contracts::error::ErrorCode::BadRequest,
            "{e}"
        );
        assert!(
            e.message.contains("limit must be between 1 and 1000"),
            "{e}"
        );

        // Admins only.
        let (_, user_token) = stack.user("uma", 0).await;
        let (status, _) = delete(&stack, &user_token, "/admin/api/cluster_tokens/2").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (_, still) = stack
            .admin_get("/admin/api/cluster_tokens?limit=1&offset=1")
            .await;
        assert_eq!(token_names(&still), [("Rack 8".to_owned(), true)]);
    })
    .await;
}

#[tokio::test]
async fn api_tokens_page_with_a_total_show_milliseconds_and_answer_204_then_404_on_delete() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let (_, una) = stack.user("una", 0).await;
        let (_, vic) = stack.user("vic", 0).await;
        let mut made = Vec::new();
        for name in ["ci", "laptop", "notebook"] {
            let (status, t) = send(
                stack
                    .http()
                    .post(stack.url("/api/tokens"))
                    .bearer_auth(&una)
                    .json(&json!({ "name": name })),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{t}");
            assert!(is_millis(t["created_at"].as_str().unwrap()), "{t}");
            made.push((
                t["id"].as_str().unwrap().to_owned(),
                t["token"].as_str().unwrap().to_owned(),
            ));
        }
        let list = |query: &'static str| {
            send(
                stack
                    .http()
                    .get(stack.url(&format!("/api/tokens{query}")))
                    .bearer_auth(&una),
            )
        };

        // Her own four (the harness made one), oldest first, paged.
        let (status, all) = list("").await;
        assert_eq!(status, StatusCode::OK, "{all}");
        assert_eq!(keys(&all), ["limit", "offset", "tokens", "total"]);
        assert_eq!(
            (
                all["total"].as_u64(),
                all["limit"].as_u64(),
                all["offset"].as_u64()
            ),
            (Some(4), Some(100), Some(0))
        );
        let names: Vec<&str> = all["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["tests", "ci", "laptop", "notebook"]);
        for t in all["tokens"].as_array().unwrap() {
            assert!(is_millis(t["created_at"].as_str().unwrap()), "{t}");
            if let Some(used) = t.get("last_used_at") {
                assert!(is_millis(used.as_str().unwrap()), "{t}");
            }
            assert!(t.get("token").is_none(), "listed whole: {t}");
        }
        let (_, page) = list("?limit=2&offset=1").await;
        let names: Vec<&str> = page["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ci", "laptop"]);
        assert_eq!(
            (
                page["total"].as_u64(),
                page["limit"].as_u64(),
                page["offset"].as_u64()
            ),
            (Some(4), Some(2), Some(1))
        );
        for (query, words) in [
            ("?limit=0", &["limit", "1"][..]),
            ("?limit=1001", &["limit", "1000"][..]),
            ("?offset=many", &["offset"][..]),
        ] {
            let (status, v) = list(query).await;
            assert_error(status, &v, StatusCode::BAD_REQUEST, "bad_request", words);
        }

        // Someone else's token is not found; hers: 204, then 404, and it stops working.
        let (ci_id, ci_secret) = made[0].clone();
        let path = format!("/api/tokens/{ci_id}");
        let (status, v) = delete(&stack, &vic, &path).await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", &[]);
        let (status, me) = send(
            stack
                .http()
                .get(stack.url("/api/auth/me"))
                .bearer_auth(&ci_secret),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{me}");
        let (status, body) = delete(&stack, &una, &path).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, v) = delete(&stack, &una, &path).await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found", &[]);
        let (status, _) = send(
            stack
                .http()
                .get(stack.url("/api/auth/me"))
                .bearer_auth(&ci_secret),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (_, after) = list("").await;
        assert_eq!(after["total"], 3, "{after}");
        let (status, _) = send(stack.http().get(stack.url("/api/tokens"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn driver_and_drain_on_a_revoked_tokens_node_answer_409_conflict() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let (status, created) = create_cluster_token(&stack, "doomed").await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let secret = created["token"].as_str().unwrap().to_owned();
        let listed = format!("{}...", &secret[..8]);
        let mut trainer = stack.trainer("node-rv", &secret, 1, &[]);
        trainer.wait_ready(READY).await;
        stack
            .wait_node("node-rv", Duration::from_secs(30), "connected", |n| {
                n.connected
            })
            .await;

        // While the token is active, every operation succeeds.
        let ops = ["set_driver", "drain", "undrain"];
        let body = |op: &str, token: &str| {
            let mut b = json!({"hostname": "node-rv", "token": token});
            if op == "set_driver" {
                b["driver"] = json!("cpu");
            }
            b
        };
        for op in ops {
            let (status, v) = stack
                .admin_post(
                    &format!("/api/admin/cluster_nodes/{op}"),
                    &body(op, &listed),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{op}: {v}");
            assert_eq!(v["success"], true, "{op}: {v}");
        }

        // Revoked: the node is sent away, and changing it is a conflict saying why.
        let (status, _) = delete(
            &stack,
            ADMIN_TOKEN,
            &format!("/admin/api/cluster_tokens/{}", created["id"]),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        trainer
            .wait_exit(Duration::from_secs(20))
            .await
            .expect("the trainer kept running with a revoked token");
        for op in ops {
            for token in [listed.as_str(), secret.as_str()] {
                for prefix in ["/api/admin", "/admin/api"] {
                    let (status, v) = stack
                        .admin_post(&format!("{prefix}/cluster_nodes/{op}"), &body(op, token))
                        .await;
                    assert_error(
                        status,
                        &v,
                        StatusCode::CONFLICT,
                        "conflict",
                        &["revoked", "doomed"],
                    );
                }
            }
        }
        // As a form, the way the admin page's curl example sends it.
        let (status, v) = send(
            stack
                .http()
                .post(stack.url("/api/admin/cluster_nodes/set_driver"))
                .bearer_auth(ADMIN_TOKEN)
                .multipart(
                    Form::new()
                        .text("hostname", "node-rv")
                        .text("token", listed.clone())
                        .text("driver", "cuda"),
                ),
        )
        .await;
        assert_error(status, &v, StatusCode::CONFLICT, "conflict", &["revoked"]);
        // Bad input is still named first; an unknown node is still not found.
        let (status, v) = stack
            .admin_post(
                "/api/admin/cluster_nodes/set_driver",
                &json!({"hostname": "node-rv", "token": listed, "driver": "opencl"}),
            )
            .await;
        assert_error(
            status,
            &v,
            StatusCode::BAD_REQUEST,
            "bad_request",
            &["driver"],
        );
        let (status, v) = stack
            .admin_post(
                "/api/admin/cluster_nodes/drain",
                &json!({"hostname": "elsewhere", "token": listed}),
            )
            .await;
        assert_error(
            status,
            &v,
            StatusCode::NOT_FOUND,
            "not_found",
            &["elsewhere"],
        );
    })
    .await;
}
