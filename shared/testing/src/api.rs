//! Talking to the api over HTTP: requests with the admin token, users with credit and an API
//! token, balances.

use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::stack::{TestStack, ADMIN_TOKEN};

/// Send `req` and read the answer as JSON (a body that is not JSON comes back as
/// `{"raw": <text>}`).
pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("an HTTP answer");
    let status = resp.status();
    let text = resp.text().await.expect("an HTTP body");
    let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
    (status, v)
}

impl TestStack {
    /// The api's base URL.
    pub fn base_url(&self) -> &str {
        &self.api().base_url
    }

    /// The api's URL for `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The test's HTTP client (held requests may take minutes: it waits up to 15).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path` as the admin.
    pub async fn admin_get(&self, path: &str) -> (StatusCode, Value) {
        send(self.http.get(self.url(path)).bearer_auth(ADMIN_TOKEN)).await
    }

    /// `POST path` with a JSON `body` as the admin.
    pub async fn admin_post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        send(
            self.http
                .post(self.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .json(body),
        )
        .await
    }

    /// A user with `tokens` credit tokens who logged in and made an API token; returns (user
    /// id, API token). Its password is `password-of-test`.
    pub async fn user(&self, name: &str, tokens: i64) -> (i64, String) {
        let (status, u) = self
            .admin_post(
                "/admin/api/users",
                &json!({
                    "username": name, "email": format!("{name}@example.com"),
                    "password": "password-of-test", "tokens": tokens
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{u}");
        let resp = self
            .http
            .post(self.url("/api/auth/login"))
            .json(&json!({"username": name, "password": "password-of-test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "logging {name} in");
        let cookie = resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let (status, t) = send(
            self.http
                .post(self.url("/api/tokens"))
                .header("cookie", cookie)
                .header("origin", self.base_url())
                .json(&json!({"name": "tests"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
        (
            u["id"].as_i64().unwrap(),
            t["token"].as_str().unwrap().to_owned(),
        )
    }

    /// A user's credit balance, from the admin's user listing.
    pub async fn balance(&self, user_id: i64) -> i64 {
        let (status, v) = self.admin_get("/admin/api/users").await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["users"]
            .as_array()
            .and_then(|users| users.iter().find(|u| u["id"] == user_id))
            .and_then(|u| u["tokens"].as_i64())
            .unwrap_or_else(|| panic!("user {user_id} is not listed: {v}"))
    }
}
