//! Conventions every endpoint follows: a method an endpoint does not have answers 405 in the
//! error envelope with code `method_not_allowed`, listing the methods it has in `Allow`.

use std::time::Duration;

use gantry_testing::{TestStack, ADMIN_TOKEN};
use serde_json::Value;

#[tokio::test]
async fn a_method_an_endpoint_lacks_answers_405_method_not_allowed_with_allow() {
    TestStack::run(Duration::from_secs(120), |mut stack| async move {
        stack.start_core().await;
        for (method, path, allows) in [
            (reqwest::Method::PUT, "/admin/api/users/48", "PATCH"),
            (reqwest::Method::PUT, "/admin/api/users/48", "DELETE"),
            (reqwest::Method::POST, "/admin/api/users/48/ledger", "GET"),
            (reqwest::Method::PUT, "/admin/api/train", "POST"),
            (reqwest::Method::POST, "/api/admin/cluster_nodes", "GET"),
        ] {
            let resp = stack
                .http()
                .request(method.clone(), stack.url(path))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 405, "{method} {path}");
            let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
            assert!(
                allow.split(", ").any(|m| m == allows),
                "{method} {path}: Allow {allow}"
            );
            assert!(
                !allow.contains(method.as_str()),
                "{method} {path}: Allow {allow}"
            );
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
            assert!(
                body["error"]["message"].as_str().unwrap().contains(allows),
                "{body}"
            );
        }
    })
    .await;
}
