//! Small helpers shared by the fixtures and the tests.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

/// How many requests each replica of micro service `service` has answered on the endpoint whose
/// subject is `subject`, from `$SRV.STATS` (one entry per replica that answers within a second).
pub async fn requests_per_replica(
    client: &async_nats::Client,
    service: &str,
    subject: &str,
) -> Vec<u64> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(format!("$SRV.STATS.{service}"), inbox, "".into())
        .await
        .unwrap();
    let mut counts = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
        let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let endpoint = v["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["subject"] == subject));
        counts.push(
            endpoint
                .and_then(|e| e["num_requests"].as_u64())
                .unwrap_or(0),
        );
    }
    counts
}

/// A series' value in Prometheus' text format (`name{labels} value`), or 0 when it is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A TCP port that was free a moment ago, and never handed out before in this test process: the
/// services bind the ports they are given a little later, so two tests running side by side must
/// not be given the same one (a health server answering 404 on another test's api port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind an ephemeral port")
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A database prefix no other test in this run uses.
pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}_",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where a tool lives: `PATH`, `$GANTRY_TOOLS_BIN`, or the scripts' tools environment.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("GANTRY_TOOLS_BIN") {
        dirs.push(d.into());
    }
    let tools_dir = std::env::var("GANTRY_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/gantry")
        });
    dirs.push(tools_dir.join("tools/bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run deploy/local/test.sh, which installs it"))
}

/// Wait until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .is_some()
}
