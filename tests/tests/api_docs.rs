//! The documentation: a valid OpenAPI 3 spec listing every endpoint, Swagger UI and the rendered
//! admin page, readable without logging in, and rendering in a real browser without a single
//! request leaving the machine.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::process::Command;

use gantry_testing::TestStack;
use reqwest::StatusCode;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(300);

/// Every path the api documents: each endpoint once, admin ones under the prefix they are
/// defined with (the admin page's own).
const EXPECTED: &[&str] = &[
    "/admin/api/browse",
    "/admin/api/users",
    "/admin/api/users/{id}",
    "/admin/api/users/{id}/ledger",
    "/admin/api/cluster_tokens",
    "/admin/api/cluster_tokens/{id}",
    "/admin/api/cluster_clients",
    "/api/admin/cluster_nodes",
    "/api/admin/cluster_nodes/set_driver",
    "/api/admin/cluster_nodes/drain",
    "/api/admin/cluster_nodes/undrain",
    "/admin/api/train",
    "/api/train",
    "/admin/api/jobs",
    "/admin/api/jobs/{id}",
    "/admin/api/jobs/{id}/events",
    "/admin/api/jobs/{id}/cancel",
    "/api/jobs",
    "/api/jobs/{id}/cancel",
    "/admin/api/models",
    "/admin/api/models/{name}",
    "/admin/api/models/{name}/versions/{version}/download",
    "/api/models",
    "/api/auth/login",
    "/api/auth/logout",
    "/api/auth/me",
    "/api/tokens",
    "/api/tokens/{id}",
    "/api/datasets",
];

/// The other prefix of each admin path: served, named in the description, never listed again.
const ALIASES: &[&str] = &[
    "/api/admin/browse",
    "/api/admin/users",
    "/api/admin/cluster_tokens",
    "/admin/api/cluster_nodes",
    "/admin/api/cluster_nodes/set_driver",
    "/api/admin/train",
    "/api/admin/jobs",
];

fn tools_python() -> String {
    let bin = std::env::var("GANTRY_TOOLS_BIN")
        .unwrap_or_else(|_| format!("{}/.cache/gantry/tools/bin", std::env::var("HOME").unwrap()));
    format!("{bin}/python")
}

#[tokio::test]
async fn the_spec_validates_as_openapi_3_and_lists_every_endpoint() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();

        let resp = reqwest::get(format!("{base}/admin/api/openapi.json"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let text = resp.text().await.unwrap();
        let spec: Value = serde_json::from_str(&text).unwrap();
        assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
        let paths: BTreeSet<&str> = spec["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for p in EXPECTED {
            assert!(paths.contains(p), "{p} missing from the spec: {paths:?}");
        }
        // One operation per endpoint: the other prefix is named, not repeated.
        for alias in ALIASES {
            assert!(!paths.contains(alias), "{alias} is documented twice");
        }
        for p in &paths {
            let alias = match (p.strip_prefix("/admin/api/"), p.strip_prefix("/api/admin/")) {
                (Some(rest), _) => format!("/api/admin/{rest}"),
                (_, Some(rest)) => format!("/admin/api/{rest}"),
                _ => continue,
            };
            assert!(!paths.contains(alias.as_str()), "{p} and {alias} both listed");
        }
        let users = &spec["paths"]["/admin/api/users"]["get"];
        assert!(
            users["summary"]
                .as_str()
                .unwrap()
                .ends_with("(also at /api/admin/users)"),
            "{users}"
        );
        let schemes = spec["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes["TokenAuth"]["scheme"], "bearer");
        assert_eq!(schemes["SessionAuth"]["in"], "cookie");
        let browse = &spec["paths"]["/admin/api/browse"]["get"];
        assert_eq!(
            browse["description"],
            "Browse files and directories in the configured server directory for administrative purposes."
        );
        let path_param = browse["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "path")
            .unwrap();
        assert_eq!(
            path_param["description"],
            "Directory path to browse (default: root directory)"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(tools_python())
            .args(["-m", "openapi_spec_validator"])
            .arg(&file)
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "openapi-spec-validator refused the spec:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let yaml = reqwest::get(format!("{base}/admin/api/openapi.yaml"))
            .await
            .unwrap();
        assert_eq!(yaml.status(), StatusCode::OK);
        let yaml = yaml.text().await.unwrap();
        assert!(
            yaml.starts_with("openapi:") && yaml.contains("/admin/api/browse:"),
            "{}",
            &yaml[..200.min(yaml.len())]
        );
    })
    .await;
}

#[tokio::test]
async fn the_admin_page_renders_each_endpoint_with_curl_examples_for_this_host() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        let resp = reqwest::get(format!("{base}/admin/api")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let html = resp.text().await.unwrap();
        assert!(html.contains("<title>Admin API Documentation</title>"));
        assert!(html.contains("Admin Authentication Required"));
        assert!(html.contains(
            "All endpoints require admin authentication via login session or admin API token"
        ));
        assert!(
            html.contains(&format!("{base}/admin/api/users")),
            "curl examples use the request's host"
        );
        assert!(html.contains("Directory path to browse (default: root directory)"));
        assert!(html.contains("&quot;current_path&quot;: &quot;/some/path&quot;"));
        assert!(!html.contains("{{ request.host_url }}"));
        assert!(
            html.contains("-F &quot;driver=cuda&quot;"),
            "the set_driver example sends a form"
        );
        assert!(html.contains("Preferred driver: &quot;cuda&quot; or &quot;rocm&quot;"));
        assert!(html.contains("&quot;total_completed_jobs&quot;: 15"));
        assert!(
            html.contains("Start AI model training process. Costs 100 tokens (free for admins).")
        );
        assert!(html.contains("Name for the trained model (default: &quot;MyCustomModel&quot;)"));
        assert!(html.contains("&quot;message&quot;: &quot;Training completed&quot;"));
        // The seven endpoints of the page come first, in the page's order.
        let order: Vec<usize> = [
            "/admin/api/browse",
            "/admin/api/train",
            "/admin/api/users</code>",
            "/admin/api/cluster_tokens</code>",
            "/admin/api/cluster_clients",
            "/api/admin/cluster_nodes</code>",
            "/api/admin/cluster_nodes/set_driver",
        ]
        .iter()
        .map(|p| {
            html.find(p)
                .unwrap_or_else(|| panic!("{p} missing from the page"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        let docs = reqwest::get(format!("{base}/admin/api/docs"))
            .await
            .unwrap();
        assert_eq!(docs.status(), StatusCode::OK);
        // Every link on the page resolves, as a browser resolves it against the page's URL.
        let page = reqwest::Url::parse(&format!("{base}/admin/api")).unwrap();
        let links: Vec<&str> = html
            .split("href=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|l| !l.starts_with('#') && !l.starts_with("http"))
            .collect();
        assert!(links.len() >= 3, "{links:?}");
        for link in links {
            let url = page.join(link).unwrap();
            let status = reqwest::get(url.clone()).await.unwrap().status();
            assert_eq!(
                status,
                StatusCode::OK,
                "the page's link {link:?} ({url}) answers {status}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn swagger_ui_and_the_admin_page_render_in_headless_chromium_without_leaving_the_machine() {
    TestStack::run(LIMIT, |mut stack| async move {
        stack.start_core().await;
        let base = stack.base_url();
        let node_path = std::env::var("GANTRY_NODE_MODULES").unwrap_or_else(|_| {
            format!(
                "{}/.cache/gantry/node/node_modules",
                std::env::var("HOME").unwrap()
            )
        });
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/browser/docs.cjs");
        let out = Command::new("node")
            .arg(script)
            .arg(base)
            .env("NODE_PATH", &node_path)
            .kill_on_drop(true)
            .output()
            .await
            .expect("node is required for the browser test (deploy/local/test.sh installs playwright-core and chromium)");
        assert!(
            out.status.success(),
            "browser run failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        for url in seen["requests"].as_array().unwrap() {
            let url = url.as_str().unwrap();
            assert!(
                url.starts_with(base) || url.starts_with("data:") || url.starts_with("blob:"),
                "a request left the machine: {url}"
            );
        }
        assert!(
            seen["failed"].as_array().unwrap().is_empty(),
            "{}",
            seen["failed"]
        );
        let swagger: BTreeSet<&str> = seen["swaggerPaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for p in EXPECTED {
            assert!(
                swagger.contains(p),
                "Swagger UI does not show {p}: {swagger:?}"
            );
        }
        assert_eq!(seen["pageTitle"], "Admin API Documentation");
        let page: BTreeSet<&str> = seen["pagePaths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        for p in [
            "/admin/api/browse",
            "/admin/api/train",
            "/admin/api/users",
            "/admin/api/cluster_tokens",
            "/admin/api/cluster_clients",
            "/api/admin/cluster_nodes",
            "/api/admin/cluster_nodes/set_driver",
            "/api/auth/login",
            "/api/tokens",
        ] {
            assert!(
                page.contains(p),
                "the admin page does not show {p}: {page:?}"
            );
        }
        assert!(seen["curls"].as_array().unwrap().iter().any(|c| c
            .as_str()
            .unwrap()
            .contains(&format!("{base}/admin/api/browse"))));
    })
    .await;
}
