//! Users as an admin manages them over HTTP, against the real binaries: the list filtered by role
//! and active with `limit`/`offset`/`total` (keeping the admin page's shape), deleting a user
//! (their access ends at once, their jobs and ledger stay under their id, 204 then 404, never
//! yourself nor the last active admin), and a user's credit ledger, newest first.

use std::time::Duration;

use gantry_contracts::auth::DeleteUser;
use gantry_contracts::error::ErrorCode;
use gantry_contracts::subjects::auth as ep;
use gantry_testing::{send, wait_until, TestStack, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(240);

/// The fields of a user, exactly as the admin page shows them.
const USER_FIELDS: [&str; 7] = [
    "active",
    "created_at",
    "email",
    "id",
    "role",
    "tokens",
    "username",
];

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

fn ids(list: &Value) -> Vec<i64> {
    list["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {list}"))
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect()
}

/// RFC 3339, UTC, milliseconds: `2026-01-02T03:04:05.678Z`.
fn is_millis(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 24
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[23] == b'Z'
        && s[20..23].chars().all(|c| c.is_ascii_digit())
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// A 400 in the envelope whose message names `words`.
fn assert_bad_request(status: StatusCode, v: &Value, words: &[&str]) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    for w in words {
        assert!(m.contains(w), "{m:?} does not name {w:?}");
    }
}

/// Log `name` in over HTTP; the session cookie.
async fn cookie(stack: &TestStack, name: &str, password: &str) -> String {
    let resp = stack
        .http()
        .post(stack.url("/api/auth/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "logging {name} in");
    resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn delete_as(stack: &TestStack, token: &str, path: &str) -> (StatusCode, Value) {
    send(stack.http().delete(stack.url(path)).bearer_auth(token)).await
}

#[tokio::test]
async fn the_user_list_filters_by_role_and_active_and_pages_with_a_total() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let (amy, amy_token) = stack.user("amy", 10).await;
        let (bob, _) = stack.user("bob", 20).await;
        let (status, cid) = stack
            .admin_post(
                "/admin/api/users",
                &json!({"username": "cid", "email": "cid@example.com",
                        "password": "cid-password", "role": "admin"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{cid}");
        let cid = cid["id"].as_i64().unwrap();
        let (status, v) = send(
            stack
                .http()
                .patch(stack.url(&format!("/admin/api/users/{bob}")))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"active": false})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");

        // Everyone, in the page's shape plus the paging fields.
        let (status, all) = stack.admin_get("/admin/api/users").await;
        assert_eq!(status, StatusCode::OK, "{all}");
        assert_eq!(keys(&all), ["limit", "offset", "total", "users"]);
        assert_eq!(
            (
                all["total"].as_u64(),
                all["limit"].as_u64(),
                all["offset"].as_u64()
            ),
            (Some(4), Some(100), Some(0))
        );
        assert_eq!(ids(&all), [1, amy, bob, cid]);
        for u in all["users"].as_array().unwrap() {
            assert_eq!(keys(u), USER_FIELDS, "{u}");
            assert!(u["active"].is_boolean(), "{u}");
        }

        // Filters, under both prefixes.
        for prefix in ["/admin/api", "/api/admin"] {
            for (query, expected) in [
                ("role=admin", vec![1, cid]),
                ("role=user", vec![amy, bob]),
                ("active=false", vec![bob]),
                ("active=true", vec![1, amy, cid]),
                ("role=user&active=true", vec![amy]),
            ] {
                let (status, v) = stack.admin_get(&format!("{prefix}/users?{query}")).await;
                assert_eq!(status, StatusCode::OK, "{query}: {v}");
                assert_eq!(ids(&v), expected, "{query}: {v}");
                assert_eq!(
                    v["total"].as_u64(),
                    Some(expected.len() as u64),
                    "{query}: {v}"
                );
            }
        }

        // Pages: the same users, once each, in id order; past the end is empty.
        let (_, first) = stack.admin_get("/admin/api/users?limit=3").await;
        let (_, second) = stack.admin_get("/admin/api/users?limit=3&offset=3").await;
        assert_eq!(ids(&first), [1, amy, bob]);
        assert_eq!(ids(&second), [cid]);
        assert_eq!(
            (
                second["total"].as_u64(),
                second["limit"].as_u64(),
                second["offset"].as_u64()
            ),
            (Some(4), Some(3), Some(3))
        );
        let (_, past) = stack.admin_get("/admin/api/users?offset=50").await;
        assert_eq!((ids(&past), past["total"].as_u64()), (vec![], Some(4)));
        let (status, max) = stack
            .admin_get("/admin/api/users?limit=1000&role=admin&active=true")
            .await;
        assert_eq!((status, ids(&max)), (StatusCode::OK, vec![1, cid]));

        // Bad input: 400 in the envelope naming the parameter (and the range of `limit`).
        for (query, words) in [
            ("limit=0", &["limit", "1"][..]),
            ("limit=1001", &["limit", "1000"][..]),
            ("limit=-5", &["limit"][..]),
            ("limit=ten", &["limit"][..]),
            ("offset=-1", &["offset"][..]),
            ("role=root", &["role"][..]),
            ("active=maybe", &["active"][..]),
        ] {
            let (status, v) = stack.admin_get(&format!("/admin/api/users?{query}")).await;
            assert_bad_request(status, &v, words);
        }

        // Admins only.
        let (status, v) = send(
            stack
                .http()
                .get(stack.url("/admin/api/users"))
                .bearer_auth(&amy_token),
        )
        .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{v}"
        );
        let (status, _) = send(stack.http().get(stack.url("/admin/api/users?role=admin"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn a_deleted_user_loses_access_at_once_keeps_their_records_and_is_404_afterwards() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 4, 3);
        let (dora, dora_token) = stack.user("dora", 500).await;
        let dora_cookie = cookie(&stack, "dora", "password-of-test").await;
        let me = |auth: Result<String, String>| {
            let req = stack.http().get(stack.url("/api/auth/me"));
            let req = match auth {
                Ok(token) => req.bearer_auth(token),
                Err(cookie) => req.header("cookie", cookie),
            };
            send(req)
        };
        assert_eq!(me(Ok(dora_token.clone())).await.0, StatusCode::OK);
        assert_eq!(me(Err(dora_cookie.clone())).await.0, StatusCode::OK);

        // Dora trains (queued: no node is needed for the record) and is charged for it.
        let (status, job) = send(
            stack
                .http()
                .post(stack.url("/api/train?wait=false"))
                .bearer_auth(&dora_token)
                .json(&json!({"train_path": "/shapes", "output_model": "DoraNet"})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let job_id = job["job_id"].as_str().unwrap().to_owned();

        // Bad requests first: nothing changes.
        let (status, v) = delete_as(&stack, &dora_token, &format!("/admin/api/users/{dora}")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "a user cannot delete: {v}");
        let (status, v) = delete_as(&stack, ADMIN_TOKEN, "/admin/api/users/1").await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "conflict");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("yourself"),
            "{v}"
        );
        let (status, v) = delete_as(&stack, ADMIN_TOKEN, "/admin/api/users/987654").await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{v}"
        );
        let (status, v) = delete_as(&stack, ADMIN_TOKEN, "/admin/api/users/dora").await;
        assert_bad_request(status, &v, &["id"]);
        assert_eq!(me(Ok(dora_token.clone())).await.0, StatusCode::OK);

        // Deleted: 204, and her token and session stop working at once.
        let (status, body) =
            delete_as(&stack, ADMIN_TOKEN, &format!("/api/admin/users/{dora}")).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let (status, v) = me(Ok(dora_token.clone())).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "her API token still works: {v}"
        );
        let (status, v) = me(Err(dora_cookie.clone())).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "her session still works: {v}"
        );

        // Gone from the users, 404 for the same id, everywhere.
        let (status, v) = delete_as(&stack, ADMIN_TOKEN, &format!("/admin/api/users/{dora}")).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{v}"
        );
        let (status, _) = stack.admin_get(&format!("/admin/api/users/{dora}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = stack
            .admin_get(&format!("/admin/api/users/{dora}/ledger"))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, all) = stack.admin_get("/admin/api/users").await;
        assert_eq!(ids(&all), [1]);
        assert_eq!(all["total"], 1);

        // Her job is kept, still hers.
        let (status, j) = stack.admin_get(&format!("/admin/api/jobs/{job_id}")).await;
        assert_eq!(status, StatusCode::OK, "{j}");
        assert_eq!(j["user_id"], dora, "{j}");

        // Her username may be used again, by a new user with a new id who sees nothing of hers.
        let (dora2, dora2_token) = stack.user("dora", 0).await;
        assert!(
            dora2 > dora,
            "ids are never given out again: {dora2} after {dora}"
        );
        let (status, jobs) = send(
            stack
                .http()
                .get(stack.url("/api/jobs"))
                .bearer_auth(&dora2_token),
        )
        .await;
        assert_eq!(
            (status, jobs["total"].as_u64()),
            (StatusCode::OK, Some(0)),
            "{jobs}"
        );
        let (status, j) = stack.admin_get(&format!("/admin/api/jobs/{job_id}")).await;
        assert_eq!(
            (status, j["user_id"].as_i64()),
            (StatusCode::OK, Some(dora)),
            "{j}"
        );

        // Her queued job is cancelled: the refund owed to a deleted user is settled without
        // a balance to return to, and nothing is retried for ever.
        stack.cancel(&job_id).await;
        let j = stack
            .wait_job(&job_id, Duration::from_secs(30), "settled", |j| {
                j["status"] == "cancelled" && j["refunded"] == true
            })
            .await;
        assert_eq!(j["user_id"], dora, "{j}");
    })
    .await;
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_deleted_even_by_two_admins_at_once() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        // Over the bus, the way the api asks: an admin other than the last one asks.
        let message = stack
            .auth_fails(
                ep::USERS_DELETE,
                &DeleteUser {
                    user_id: 1,
                    actor_id: 99,
                },
                ErrorCode::Conflict,
            )
            .await;
        assert!(message.contains("last active admin"), "{message}");
        stack
            .auth_fails(
                ep::USERS_DELETE,
                &json!({"user_id": 1}),
                ErrorCode::BadRequest,
            )
            .await;
        // Every page asked for on the bus is bounded there too, whoever asks.
        for (endpoint, request, words) in [
            (
                ep::USERS_LIST,
                json!({"limit": 5000}),
                "limit must be between 1 and 1000",
            ),
            (
                ep::USERS_LIST,
                json!({"limit": 0}),
                "limit must be between 1 and 1000",
            ),
            (
                ep::USERS_LIST,
                json!({"offset": 2_000_000_000_000_000_u64}),
                "offset must be between 0 and",
            ),
            (
                ep::USERS_LEDGER,
                json!({"user_id": 1, "limit": 201}),
                "limit must be between 1 and 200",
            ),
            (
                ep::TOKENS_LIST,
                json!({"user_id": 1, "limit": 1001}),
                "limit must be between 1 and 1000",
            ),
        ] {
            let message = stack
                .auth_fails(endpoint, &request, ErrorCode::BadRequest)
                .await;
            assert!(message.contains(words), "{endpoint} {request}: {message}");
        }

        // Ann and Ben are the only active admins; each deletes the other at the same moment.
        let mut tokens = Vec::new();
        for name in ["ann", "ben"] {
            let (id, token) = stack.user(name, 0).await;
            let (status, v) = send(
                stack
                    .http()
                    .patch(stack.url(&format!("/admin/api/users/{id}")))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({"role": "admin"})),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{v}");
            tokens.push((id, token));
        }
        let (status, v) = send(
            stack
                .http()
                .patch(stack.url("/admin/api/users/1"))
                .bearer_auth(&tokens[0].1)
                .json(&json!({"active": false})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let ((ann, ann_token), (ben, ben_token)) = (tokens[0].clone(), tokens[1].clone());
        let ann_path = format!("/admin/api/users/{ben}");
        let ben_path = format!("/admin/api/users/{ann}");
        let (a, b) = tokio::join!(
            delete_as(&stack, &ann_token, &ann_path),
            delete_as(&stack, &ben_token, &ben_path),
        );
        assert!(
            !(a.0 == StatusCode::NO_CONTENT && b.0 == StatusCode::NO_CONTENT),
            "both admins were deleted: {a:?} {b:?}"
        );
        for (status, v) in [&a, &b] {
            assert!(
                *status == StatusCode::NO_CONTENT
                    || (*status == StatusCode::CONFLICT
                        && v["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("last active admin"))
                    || *status == StatusCode::UNAUTHORIZED,
                "{status}: {v}"
            );
        }
        let (_, admins) = send(
            stack
                .http()
                .get(stack.url("/admin/api/users?role=admin&active=true"))
                .bearer_auth(if a.0 == StatusCode::NO_CONTENT {
                    &ann_token
                } else {
                    &ben_token
                }),
        )
        .await;
        assert!(
            admins["total"].as_u64().unwrap_or(0) >= 1,
            "no active admin is left: {admins}"
        );

        // The one left is the last active admin: nobody can delete them, and they cannot
        // delete themself.
        let survivor = ids(&admins)[0];
        let token = if survivor == ann {
            &ann_token
        } else {
            &ben_token
        };
        let (status, v) = delete_as(&stack, token, &format!("/admin/api/users/{survivor}")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
    })
    .await;
}

#[tokio::test]
async fn a_users_ledger_shows_charges_refunds_and_adjustments_newest_first() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        stack.shapes("shapes", 4, 5);
        let (lena, lena_token) = stack.user("lena", 500).await;
        let (status, v) = send(
            stack
                .http()
                .patch(stack.url(&format!("/admin/api/users/{lena}")))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"tokens_delta": 100, "reason": "monthly grant"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");

        // She trains (charged 100), then cancels before any node takes it (refunded).
        let (status, job) = send(
            stack
                .http()
                .post(stack.url("/api/train?wait=false"))
                .bearer_auth(&lena_token)
                .json(&json!({"train_path": "/shapes", "output_model": "LenaNet"})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let job_id = job["job_id"].as_str().unwrap().to_owned();
        let (status, v) = send(
            stack
                .http()
                .post(stack.url(&format!("/api/jobs/{job_id}/cancel")))
                .bearer_auth(&lena_token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let path = format!("/admin/api/users/{lena}/ledger");
        let ledger = wait_until(Duration::from_secs(30), || async {
            let (_, v) = stack.admin_get(&path).await;
            (v["total"] == 4).then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("the refund never showed in the ledger"));

        assert_eq!(keys(&ledger), ["entries", "limit", "offset", "total"]);
        assert_eq!(
            (ledger["limit"].as_u64(), ledger["offset"].as_u64()),
            (Some(100), Some(0))
        );
        let entries = ledger["entries"].as_array().unwrap();
        let summary: Vec<(&str, i64, Option<i64>)> = entries
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap(),
                    e["delta"].as_i64().unwrap(),
                    e["balance_after"].as_i64(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("refund", 100, Some(600)),
                ("charge", -100, Some(500)),
                ("adjustment", 100, Some(600)),
                ("adjustment", 500, Some(500)),
            ],
            "{ledger:#}"
        );
        assert_eq!(entries[0]["job_id"], job_id.as_str());
        assert_eq!(entries[1]["job_id"], job_id.as_str());
        assert_eq!(entries[1]["id"], job_id.as_str());
        assert_eq!(entries[2]["actor_id"], 1);
        assert_eq!(entries[2]["reason"], "monthly grant");
        assert!(entries[3].get("job_id").is_none(), "{}", entries[3]);
        let times: Vec<&str> = entries.iter().map(|e| e["at"].as_str().unwrap()).collect();
        assert!(times.iter().all(|t| is_millis(t)), "{times:?}");
        assert!(
            times.windows(2).all(|w| w[0] >= w[1]),
            "not newest first: {times:?}"
        );
        assert!(entries
            .iter()
            .all(|e| !e["id"].as_str().unwrap().is_empty()));

        // Pages, under both prefixes.
        let (_, first) = stack.admin_get(&format!("{path}?limit=2")).await;
        let (_, rest) = stack
            .admin_get(&format!("/api/admin/users/{lena}/ledger?limit=2&offset=2"))
            .await;
        let page_ids = |v: &Value| -> Vec<String> {
            v["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect()
        };
        let all_ids = page_ids(&ledger);
        assert_eq!([page_ids(&first), page_ids(&rest)].concat(), all_ids);
        assert_eq!(
            (
                rest["total"].as_u64(),
                rest["limit"].as_u64(),
                rest["offset"].as_u64()
            ),
            (Some(4), Some(2), Some(2))
        );

        // Bad input and strangers.
        for (query, words) in [
            ("limit=0", &["limit", "1"][..]),
            ("limit=201", &["limit", "200"][..]),
            ("offset=x", &["offset"][..]),
        ] {
            let (status, v) = stack.admin_get(&format!("{path}?{query}")).await;
            assert_bad_request(status, &v, words);
        }
        let (status, v) = stack.admin_get("/admin/api/users/424242/ledger").await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{v}"
        );
        let (status, _) = send(stack.http().get(stack.url(&path)).bearer_auth(&lena_token)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = send(stack.http().get(stack.url(&path))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    })
    .await;
}
