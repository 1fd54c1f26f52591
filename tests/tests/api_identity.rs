//! Identity over HTTP, through the real api and auth binaries: logging in, bearer tokens, 401 and
//! 403, same-origin cookie writes, users and API tokens, and the error envelope.

use std::time::Duration;

use gantry_contracts::auth::MAX_TOKENS;
use gantry_testing::{TestStack, ADMIN_PASSWORD, ADMIN_TOKEN};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(180);

fn http() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn body(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    )
}

/// The error envelope with `code`, and the status that goes with it.
fn assert_error(status: StatusCode, v: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

async fn create_user(base: &str, name: &str, role: &str, tokens: i64) -> Value {
    let (status, v) = body(
        http()
            .post(format!("{base}/admin/api/users"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "password-of-test", "role": role, "tokens": tokens}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

async fn login(base: &str, user: &str, password: &str) -> String {
    let resp = http()
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_then_list_users_with_the_cookie_then_logout() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        let cookie = login(base, "admin", ADMIN_PASSWORD).await;

        let (status, v) = body(
            http()
                .get(format!("{base}/admin/api/users"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let admin = &v["users"][0];
        assert_eq!(admin["id"], 1);
        assert_eq!(admin["username"], "admin");
        assert_eq!(admin["role"], "admin");
        assert_eq!(admin["active"], true);
        let keys: Vec<&str> = admin
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 7, "exactly the page's fields: {keys:?}");
        let created = admin["created_at"].as_str().unwrap();
        assert!(created.ends_with('Z') && chrono_like(created), "{created}");

        // A cookie write without an Origin is refused; with our own origin it passes.
        let resp = http()
            .post(format!("{base}/api/auth/logout"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let resp = http()
            .post(format!("{base}/api/auth/logout"))
            .header("cookie", &cookie)
            .header("origin", "http://evil.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        let resp = http()
            .post(format!("{base}/api/auth/logout"))
            .header("cookie", &cookie)
            .header("origin", base)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);

        // The session is over.
        let (status, v) = body(
            http()
                .get(format!("{base}/admin/api/users"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::UNAUTHORIZED, "unauthorized");
    })
    .await;
}

fn chrono_like(s: &str) -> bool {
    s.len() == 20 && s.as_bytes()[4] == b'-' && s.as_bytes()[10] == b'T'
}

#[tokio::test]
async fn the_pages_curl_example_lists_users_with_a_bearer_token_under_both_prefixes() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        create_user(base, "user1", "user", 100).await;
        // curl -H "Authorization: Bearer YOUR_ADMIN_API_TOKEN" {{ request.host_url }}admin/api/users
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-H",
                &format!("Authorization: Bearer {ADMIN_TOKEN}"),
                &format!("{base}/admin/api/users"),
            ])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let users = v["users"].as_array().unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[1]["id"], 2);
        assert_eq!(users[1]["username"], "user1");
        assert_eq!(users[1]["email"], "user1@example.com");
        assert_eq!(users[1]["role"], "user");
        assert_eq!(users[1]["tokens"], 100);
        assert_eq!(users[1]["active"], true);

        let (status, alias) = body(
            http()
                .get(format!("{base}/api/admin/users"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(alias, v);
    })
    .await;
}

#[tokio::test]
async fn no_wrong_revoked_or_deactivated_credentials_get_401_and_a_non_admin_403() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        let users = format!("{base}/admin/api/users");

        let resp = http().get(&users).send().await.unwrap();
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let (status, v) = body(resp).await;
        assert_error(status, &v, StatusCode::UNAUTHORIZED, "unauthorized");

        let (status, v) = body(
            http()
                .get(&users)
                .bearer_auth("gnt_not-a-real-token-at-all-0000000000000000")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::UNAUTHORIZED, "unauthorized");

        // A user's own token works on /api/ but not on admin endpoints.
        let user = create_user(base, "alice", "user", 0).await;
        let cookie = login(base, "alice", "password-of-test").await;
        let (status, created) = body(
            http()
                .post(format!("{base}/api/tokens"))
                .header("cookie", &cookie)
                .header("origin", base)
                .json(&json!({"name": "laptop"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let token = created["token"].as_str().unwrap().to_owned();
        assert_eq!(created["prefix"], format!("{}...", &token[..8]));

        let (status, me) = body(
            http()
                .get(format!("{base}/api/auth/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["username"], "alice");
        let (status, v) = body(http().get(&users).bearer_auth(&token).send().await.unwrap()).await;
        assert_error(status, &v, StatusCode::FORBIDDEN, "forbidden");

        // Listed by prefix, never whole.
        let (_, list) = body(
            http()
                .get(format!("{base}/api/tokens"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(list["tokens"].as_array().unwrap().len(), 1);
        assert!(!list.to_string().contains(&token));

        // Revoked: 401 at once (the api's cache is dropped).
        let id = created["id"].as_str().unwrap();
        let resp = http()
            .delete(format!("{base}/api/tokens/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let (status, v) = body(
            http()
                .get(format!("{base}/api/auth/me"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::UNAUTHORIZED, "unauthorized");

        // Deactivated: the session stops working at once.
        let (status, _) = body(
            http()
                .get(format!("{base}/api/auth/me"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, v) = body(
            http()
                .patch(format!("{base}/admin/api/users/{}", user["id"]))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"active": false}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["active"], false);
        let (status, v) = body(
            http()
                .get(format!("{base}/api/auth/me"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::UNAUTHORIZED, "unauthorized");
        // And the listing still reads the flag as a boolean.
        let (_, v) = body(
            http()
                .get(&users)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(v["users"][1]["active"], false);
    })
    .await;
}

#[tokio::test]
async fn users_are_created_and_changed_with_clear_errors() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        let bob = create_user(base, "bob", "user", 50).await;
        assert_eq!(bob["tokens"], 50);

        // One user by id, under both prefixes; an unknown id is 404.
        for prefix in ["/admin/api", "/api/admin"] {
            let (status, v) = body(
                http()
                    .get(format!("{base}{prefix}/users/{}", bob["id"]))
                    .bearer_auth(ADMIN_TOKEN)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            assert_eq!(v, bob, "the same record as created");
        }
        let (status, v) = body(
            http()
                .get(format!("{base}/admin/api/users/999999"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found");

        // Duplicate username: 409.
        let (status, v) = body(
            http()
                .post(format!("{base}/admin/api/users"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"username": "bob", "email": "other@example.com", "password": "password-of-test"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::CONFLICT, "conflict");

        // Too short a password: 400, and nothing written.
        let (status, v) = body(
            http()
                .post(format!("{base}/admin/api/users"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"username": "carol", "email": "carol@example.com", "password": "short"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "bad_request");
        let (_, list) = body(
            http()
                .get(format!("{base}/admin/api/users"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(list["users"].as_array().unwrap().len(), 2);

        // Balance changes go through the ledger and never below zero.
        let patch = |body: Value| {
            let url = format!("{base}/admin/api/users/{}", bob["id"]);
            async move {
                self::body(
                    http()
                        .patch(url)
                        .bearer_auth(ADMIN_TOKEN)
                        .json(&body)
                        .send()
                        .await
                        .unwrap(),
                )
                .await
            }
        };
        let (status, v) = patch(json!({"tokens_delta": 25, "reason": "bonus"})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["tokens"], 75);
        // Taking away more than the balance conflicts with its state; nothing changes.
        let (status, v) = patch(json!({"tokens_delta": -100})).await;
        assert_error(status, &v, StatusCode::CONFLICT, "conflict");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("75"),
            "{v}"
        );
        // Changes past the bounds are refused whole, and the balance stays a whole number.
        for extreme in [i64::MAX, i64::MIN, MAX_TOKENS + 1] {
            let (status, v) = patch(json!({"tokens_delta": extreme})).await;
            assert_error(status, &v, StatusCode::BAD_REQUEST, "bad_request");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("tokens_delta"),
                "{v}"
            );
        }
        let (status, v) = patch(json!({"tokens_delta": MAX_TOKENS})).await;
        assert_error(status, &v, StatusCode::CONFLICT, "conflict");
        let (status, list) = body(
            http()
                .get(format!("{base}/admin/api/users"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let listed = list["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == bob["id"])
            .unwrap();
        assert_eq!(listed["tokens"], 75, "{listed}");
        // A job listing offset past what the store can count is a bad request, not a failure.
        let (status, v) = body(
            http()
                .get(format!("{base}/admin/api/jobs?offset={}", u64::MAX))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

        let (status, v) = patch(json!({"role": "admin"})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["role"], "admin");

        // The last admin cannot be demoted... but there are two now; demote bob, then try admin.
        let (status, _) = patch(json!({"role": "user"})).await;
        assert_eq!(status, StatusCode::OK);
        let (status, v) = body(
            http()
                .patch(format!("{base}/admin/api/users/1"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"active": false}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::CONFLICT, "conflict");

        let (status, v) = body(
            http()
                .patch(format!("{base}/admin/api/users/999"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"tokens_delta": 1}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found");
    })
    .await;
}

#[tokio::test]
async fn login_failures_are_rate_limited_per_client_behind_a_trusted_proxy_and_forms_are_accepted()
{
    TestStack::run(LIMIT, |mut stack| async move {
        // The tests reach the api from loopback: it stands in for the ingress.
        stack.set_env("GANTRY_TRUSTED_PROXIES", "127.0.0.1, ::1");
        stack.start_core().await;
        let base = stack.base_url();
        let resp = http()
            .post(format!("{base}/api/auth/login"))
            .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);

        let login = |from: &'static str, password: &'static str| {
            let url = format!("{base}/api/auth/login");
            async move {
                http()
                    .post(url)
                    .header("x-forwarded-for", format!("198.51.100.1, {from}"))
                    .json(&json!({"username": "admin", "password": password}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        };
        let mut statuses = Vec::new();
        for _ in 0..12 {
            statuses.push(login("203.0.113.1", "wrong").await);
        }
        assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
        assert_eq!(
            *statuses.last().unwrap(),
            StatusCode::TOO_MANY_REQUESTS,
            "{statuses:?}"
        );
        // The guessing address stays shut out; the admin, behind the same ingress, does not.
        assert_eq!(
            login("203.0.113.1", ADMIN_PASSWORD).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(login("203.0.113.2", ADMIN_PASSWORD).await, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn malformed_json_wrong_content_type_and_oversized_bodies_get_the_envelope() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        let url = format!("{base}/admin/api/users");

        let (status, v) = body(
            http()
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("{not json")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "bad_request");

        let (status, v) = body(
            http()
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "text/plain")
                .body("hello")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(
            status,
            &v,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );

        let big = format!("{{\"username\": \"{}\"}}", "x".repeat(2 << 20));
        let (status, v) = body(
            http()
                .post(&url)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(big)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(
            status,
            &v,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        );

        let (status, v) = body(
            http()
                .get(format!("{base}/admin/api/nothing-here"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found");
    })
    .await;
}
