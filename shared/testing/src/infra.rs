//! A real `nats-server` and a real MongoDB-wire store, one each per test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gantry_bus::setup::{Layout, Setup};
use gantry_bus::Role;
use tempfile::TempDir;

use crate::util::{free_port, tool, wait_for_port};

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `nats-server` with JetStream, on a free port, storing under a temporary directory, configured
/// exactly as a deployment is (`gantry-registry bus-config`): TLS, every role with its own key
/// and permissions, nodes admitted by the registry's auth callout. The test itself connects as
/// the `inspector`, which may do anything.
pub struct Nats {
    /// The client port.
    pub port: u16,
    dir: TempDir,
    layout: Layout,
    child: Option<Child>,
}

impl Nats {
    /// Start and wait until it accepts connections.
    pub async fn start() -> Self {
        let dir = TempDir::new().unwrap();
        let port = free_port();
        let layout = gantry_bus::setup::write(&Setup {
            dir: dir.path().join("bus"),
            listen: format!("127.0.0.1:{port}"),
            store_dir: dir.path().join("js"),
            hosts: vec![
                "127.0.0.1".into(),
                "localhost".into(),
                crate::netns::HOST_ADDR.into(),
            ],
            tls: true,
            inspector: true,
            http_port: None,
        })
        .expect("generate the NATS configuration");
        let mut nats = Self {
            port,
            dir,
            layout,
            child: None,
        };
        nats.restart().await;
        nats
    }

    /// `nats://127.0.0.1:<port>` (TLS is required by the server).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Where the keys, certificates and configuration are.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The variables a service of `role` connects with (the registry also gets the callout's
    /// issuer key and its system-account key).
    pub fn env_for(&self, role: Option<Role>) -> Vec<(String, String)> {
        let path = |p: std::path::PathBuf| p.display().to_string();
        let mut env = vec![
            ("NATS_URL".to_owned(), self.url()),
            ("GANTRY_NATS_CA_FILE".to_owned(), path(self.layout.ca())),
        ];
        if let Some(role) = role {
            env.push((
                "GANTRY_NATS_NKEY_FILE".into(),
                path(self.layout.role_seed(role)),
            ));
        }
        if role == Some(Role::Registry) {
            env.push((
                "GANTRY_CALLOUT_ISSUER_FILE".into(),
                path(self.layout.issuer_seed()),
            ));
            env.push((
                "GANTRY_NATS_SYSTEM_NKEY_FILE".into(),
                path(self.layout.system_seed()),
            ));
        }
        env
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
            .arg("-c")
            .arg(self.layout.config())
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

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Options trusting the server's CA, for a connection of the test's choosing.
    pub fn options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .require_tls(true)
            .add_root_certificates(self.layout.ca())
    }

    /// A client with the nkey seed in `seed_file`.
    pub async fn client_with_seed(&self, seed_file: &std::path::Path) -> async_nats::Client {
        let seed = std::fs::read_to_string(seed_file).unwrap();
        self.options()
            .nkey(seed.trim().to_owned())
            .connect(self.url())
            .await
            .expect("connect to test NATS")
    }

    /// The test's own client: the inspector, which may do anything.
    pub async fn client(&self) -> async_nats::Client {
        self.client_with_seed(&self.layout.inspector_seed()).await
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
        let mut store = Self {
            port: free_port(),
            dir: TempDir::new().unwrap(),
            child: None,
        };
        store.restart().await;
        store
    }

    /// Kill the server (its data stays).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Start it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        let data: PathBuf = self.dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let child = Command::new(tool("nx-27017"))
            .args([
                "--host",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "--data-dir",
            ])
            .arg(&data)
            .arg("--log-file")
            .arg(self.dir.path().join("store.log"))
            .arg("--pid-file")
            .arg(self.dir.path().join("store.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nx-27017");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, Duration::from_secs(30)).await,
            "nx-27017 did not start"
        );
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
