//! A real `nats-server` and a real MongoDB-wire store, one each per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::util::{free_port, tool, wait_for_port};

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `nats-server` with JetStream, on a free port, storing under a temporary directory.
pub struct Nats {
    /// The client port.
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Nats {
    /// Start and wait until it accepts connections.
    pub async fn start() -> Self {
        let mut nats = Self {
            port: free_port(),
            dir: TempDir::new().unwrap(),
            child: None,
        };
        nats.restart().await;
        nats
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (its data stays).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Start it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.dir.path().join("nats.log")).unwrap();
        let child = Command::new(tool("nats-server"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(10)).await,
            "nats-server did not start"
        );
    }

    /// A plain client for the test itself.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to test NATS")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The MongoDB-wire store (`nx-27017`) on a free port with its data in a temporary directory.
pub struct Store {
    /// The client port.
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Store {
    /// Start and wait until it accepts connections.
    pub async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let data: PathBuf = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let child = Command::new(tool("nx-27017"))
            .args(["--host", "127.0.0.1", "-p", &port.to_string(), "--data-dir"])
            .arg(&data)
            .arg("--log-file")
            .arg(dir.path().join("store.log"))
            .arg("--pid-file")
            .arg(dir.path().join("store.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nx-27017");
        let store = Self {
            port,
            dir,
            child: Some(child),
        };
        assert!(
            wait_for_port(port, Duration::from_secs(30)).await,
            "nx-27017 did not start"
        );
        store
    }

    /// `mongodb://127.0.0.1:<port>/?directConnection=true`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Where it keeps its data and log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
