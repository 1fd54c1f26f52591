//! Browsing the data root through the real api: the page's shape, paging, and a traversal
//! battery that must never show anything outside the root.

use std::time::Duration;

use gantry_testing::{TestStack, ADMIN_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(300);

async fn get(base: &str, query: &str) -> (StatusCode, Value, String) {
    let resp = reqwest::Client::new()
        .get(format!("{base}/admin/api/browse{query}"))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, v, text)
}

fn enc(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn the_pages_curl_example_lists_a_directory_in_the_pages_shape() {
    TestStack::run(LIMIT, |mut stack| async move {
        let root = stack.data_root.path().to_owned();
        std::fs::create_dir_all(root.join("some/path/zdir")).unwrap();
        std::fs::write(root.join("some/path/file.txt"), vec![b'x'; 1024]).unwrap();
        std::fs::create_dir_all(root.join("some/path/adir")).unwrap();
        stack.start_core().await;
        let base = stack.base_url();

        // curl -H "Authorization: Bearer YOUR_ADMIN_API_TOKEN" "{{ request.host_url }}admin/api/browse?path=/some/path"
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-H",
                &format!("Authorization: Bearer {ADMIN_TOKEN}"),
                &format!("{base}/admin/api/browse?path=/some/path"),
            ])
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["current_path"], "/some/path");
        assert_eq!(
            v["items"],
            json!([
                {"name": "adir", "path": "/some/path/adir", "is_dir": true, "size": 0},
                {"name": "zdir", "path": "/some/path/zdir", "is_dir": true, "size": 0},
                {"name": "file.txt", "path": "/some/path/file.txt", "is_dir": false, "size": 1024},
            ])
        );
        assert_eq!(v["total"], 3);

        // Default: the root.
        let (status, v, _) = get(base, "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["current_path"], "/");
        assert_eq!(v["items"][0]["path"], "/some");
    })
    .await;
}

#[tokio::test]
async fn a_traversal_battery_never_shows_anything_outside_the_root() {
    TestStack::run(LIMIT, |mut stack| async move {
        let root = stack.data_root.path().to_owned();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret-outside.txt"), "top secret").unwrap();
        std::fs::create_dir_all(root.join("some/path")).unwrap();
        std::fs::write(root.join("some/path/file.txt"), "inside").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("escape")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("secret-outside.txt"),
            root.join("escape-file"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../..", root.join("some/path/up")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/elsewhere", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink(root.join("some"), root.join("inside-link")).unwrap();
        stack.start_core().await;
        let base = stack.base_url();
        let outside_s = outside.path().display().to_string();
        let root_s = root.canonicalize().unwrap().display().to_string();

        let attempts: Vec<(String, StatusCode)> = vec![
            ("..", StatusCode::BAD_REQUEST),
            ("/..", StatusCode::BAD_REQUEST),
            ("../", StatusCode::BAD_REQUEST),
            ("/some/../../", StatusCode::BAD_REQUEST),
            ("/some/path/../../..", StatusCode::BAD_REQUEST),
            ("/./././..", StatusCode::BAD_REQUEST),
            ("%2e%2e", StatusCode::BAD_REQUEST),
            ("%2e%2e%2fetc", StatusCode::BAD_REQUEST),
            ("..%2f..%2fetc", StatusCode::BAD_REQUEST),
            ("%252e%252e%252f", StatusCode::BAD_REQUEST),
            ("/some\0/path", StatusCode::BAD_REQUEST),
            ("..\\..\\etc", StatusCode::BAD_REQUEST),
            ("/some/path/file.txt", StatusCode::BAD_REQUEST),
            ("/etc/passwd", StatusCode::NOT_FOUND),
            ("/etc", StatusCode::NOT_FOUND),
            ("....//", StatusCode::NOT_FOUND),
            ("~root", StatusCode::NOT_FOUND),
            ("/escape", StatusCode::FORBIDDEN),
            ("/escape/", StatusCode::FORBIDDEN),
            ("/escape-file", StatusCode::FORBIDDEN),
            ("/some/path/up", StatusCode::FORBIDDEN),
            ("/inside-link/path/up", StatusCode::FORBIDDEN),
            ("/dangling", StatusCode::FORBIDDEN),
            (&*format!("{outside_s}/"), StatusCode::NOT_FOUND),
            (&*format!("{root_s}/.."), StatusCode::BAD_REQUEST),
        ]
        .into_iter()
        .map(|(p, s)| (p.to_owned(), s))
        .chain([
            ("a/".repeat(600), StatusCode::BAD_REQUEST),
            ("x".repeat(300), StatusCode::BAD_REQUEST),
        ])
        .collect();
        assert!(attempts.len() >= 20);

        let mut checked = 0;
        for (path, want) in &attempts {
            let (status, v, text) = get(base, &format!("?path={}", enc(path))).await;
            assert_eq!(status, *want, "path {path:?}: {text}");
            assert!(
                v["error"]["code"].is_string() && v["error"]["message"].is_string(),
                "{path:?}: {text}"
            );
            for leak in ["secret-outside", "top secret", &outside_s, &root_s] {
                // Echoing the caller's own text back is not a leak.
                if path.contains(leak) {
                    continue;
                }
                assert!(!text.contains(leak), "{path:?} leaked {leak:?}: {text}");
            }
            checked += 1;
        }
        // Raw query strings, encoded by hand the way an attacker would send them.
        for raw in [
            "?path=..%2F..%2F",
            "?path=%2e%2e%2f%2e%2e",
            "?path=%252e%252e%252f",
            "?path=/some%00/x",
            "?path=%2Fescape",
        ] {
            let (status, _, text) = get(base, raw).await;
            assert!(
                [
                    StatusCode::BAD_REQUEST,
                    StatusCode::FORBIDDEN,
                    StatusCode::NOT_FOUND
                ]
                .contains(&status),
                "{raw}: {status} {text}"
            );
            assert!(!text.contains("secret-outside"), "{raw}: {text}");
            checked += 1;
        }
        assert!(checked >= 25);

        // Links that stay inside are followed; links out of the root are not listed at all.
        let (status, v, text) = get(base, "?path=/").await;
        assert_eq!(status, StatusCode::OK);
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"inside-link") && names.contains(&"some"),
            "{names:?}"
        );
        assert!(
            !names.contains(&"escape")
                && !names.contains(&"escape-file")
                && !names.contains(&"dangling"),
            "{text}"
        );
        let (status, v, _) = get(base, "?path=/inside-link/path").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["items"][0]["name"], "file.txt");
    })
    .await;
}

#[tokio::test]
async fn a_directory_of_100k_entries_pages_with_total_limit_and_offset() {
    TestStack::run(LIMIT, |mut stack| async move {
        let big = stack.data_root.path().join("big");
        std::fs::create_dir_all(big.join("sub-a")).unwrap();
        std::fs::create_dir_all(big.join("sub-b")).unwrap();
        for i in 0..100_000 {
            std::fs::File::create(big.join(format!("f{i:06}.bin"))).unwrap();
        }
        stack.start_core().await;
        let base = stack.base_url();

        let (status, v, text) = get(base, "?path=/big&limit=100&offset=0").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(v["total"], 100_002);
        assert_eq!(v["limit"], 100);
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 100);
        assert_eq!(items[0]["name"], "sub-a");
        assert_eq!(items[1]["name"], "sub-b");
        assert_eq!(items[2]["name"], "f000000.bin");

        let (_, v, _) = get(base, "?path=/big&limit=10&offset=100000").await;
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["f099998.bin", "f099999.bin"]);
        assert_eq!(v["offset"], 100_000);

        let (status, v, _) = get(base, "?path=/big&limit=0").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        let (status, _, _) = get(base, "?path=/big&limit=abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    })
    .await;
}
