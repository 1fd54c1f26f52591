//! The real service binaries, started against the test infrastructure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::infra::{Nats, Store};
use crate::util::{free_port, unique_prefix, wait_until};

/// The admin API token every test stack starts with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
/// The first admin's password in every test stack.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// The directory holding the service binaries: `$GANTRY_BIN_DIR`, else the `target/<profile>`
/// directory this test executable was built into.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("GANTRY_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .to_path_buf()
}

/// A running service binary. Killed on drop.
pub struct ServiceProcess {
    /// Binary name.
    pub name: String,
    /// Base URL of its health server (the api: its HTTP address).
    pub base_url: String,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl ServiceProcess {
    /// Start `bin` with exactly `env` (plus `PATH`/`HOME`/`LD_LIBRARY_PATH` from the test). `port`
    /// is where it serves health.
    pub fn spawn(bin: &str, env: &BTreeMap<String, String>, port: u16) -> Self {
        let path = bin_dir().join(bin);
        assert!(
            path.is_file(),
            "{} is not built: run `cargo build --workspace --bins` (deploy/local/test.sh does)",
            path.display()
        );
        let dir = TempDir::new().unwrap();
        let log = dir.path().join(format!("{bin}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&path);
        cmd.env_clear();
        for keep in ["PATH", "HOME", "LD_LIBRARY_PATH", "TMPDIR"] {
            if let Ok(v) = std::env::var(keep) {
                cmd.env(keep, v);
            }
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.envs(env);
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        Self {
            name: bin.into(),
            base_url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `GET /readyz` status, or `None` when nothing answers.
    pub async fn readyz(&self) -> Option<u16> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        client
            .get(format!("{}/readyz", self.base_url))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// `GET /metrics`: Prometheus' text format. Panics unless it answers 200 with `text/plain`.
    pub async fn metrics(&self) -> String {
        let resp = reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{} /metrics", self.name);
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            kind.starts_with("text/plain"),
            "{} /metrics answered {kind}",
            self.name
        );
        resp.text().await.unwrap()
    }

    /// Wait until `/readyz` answers 200. Panics with the service's output when it does not.
    pub async fn wait_ready(&self, timeout: Duration) {
        let ok = wait_until(timeout, || async {
            (self.readyz().await == Some(200)).then_some(())
        })
        .await;
        if ok.is_none() {
            panic!(
                "{} not ready within {timeout:?}; output:\n{}",
                self.name,
                self.output()
            );
        }
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Wait for it to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send SIGTERM and wait for it to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.wait_exit(timeout).await
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// NATS, the store, a data root and a database prefix of one test; starts services against them.
pub struct Stack {
    /// The test's NATS.
    pub nats: Nats,
    /// The test's store.
    pub store: Store,
    /// `GANTRY_DB_PREFIX` for this test.
    pub prefix: String,
    /// `GANTRY_DATA_ROOT` for this test.
    pub data_root: TempDir,
    /// Extra variables every service of this stack gets.
    pub extra_env: BTreeMap<String, String>,
}

impl Stack {
    /// Start NATS and the store.
    pub async fn start() -> Self {
        let (nats, store) = tokio::join!(Nats::start(), Store::start());
        Self {
            nats,
            store,
            prefix: unique_prefix(),
            data_root: TempDir::new().unwrap(),
            extra_env: BTreeMap::new(),
        }
    }

    /// The variables a service of this stack starts with.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("NATS_URL".into(), self.nats.url());
        env.insert("MONGODB_URI".into(), self.store.uri());
        env.insert("GANTRY_DB_PREFIX".into(), self.prefix.clone());
        env.insert(
            "GANTRY_DATA_ROOT".into(),
            self.data_root.path().display().to_string(),
        );
        env.insert("GANTRY_ADMIN_USER".into(), "admin".into());
        env.insert("GANTRY_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into());
        env.insert("GANTRY_ADMIN_EMAIL".into(), "admin@example.com".into());
        env.insert("GANTRY_ADMIN_API_TOKEN".into(), ADMIN_TOKEN.into());
        env.extend(self.extra_env.clone());
        env
    }

    /// Start `bin` with this stack's variables plus `extra`. The api gets `GANTRY_HTTP_ADDR`,
    /// the others `GANTRY_HEALTH_ADDR`, on a free port.
    pub fn spawn(&self, bin: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let port = free_port();
        let mut env = self.env();
        let var = if bin == "gantry-api" {
            "GANTRY_HTTP_ADDR"
        } else {
            "GANTRY_HEALTH_ADDR"
        };
        env.insert(var.into(), format!("127.0.0.1:{port}"));
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        ServiceProcess::spawn(bin, &env, port)
    }

    /// Start auth, the registry and the api, and wait until all three are ready.
    pub async fn start_core(&self) -> Core {
        let auth = self.spawn("gantry-auth", &[]);
        let registry = self.spawn("gantry-registry", &[]);
        let api = self.spawn("gantry-api", &[]);
        for s in [&auth, &registry, &api] {
            s.wait_ready(Duration::from_secs(60)).await;
        }
        Core {
            auth,
            registry,
            api,
        }
    }
}

/// The three core services of a stack.
pub struct Core {
    /// `gantry-auth`.
    pub auth: ServiceProcess,
    /// `gantry-registry`.
    pub registry: ServiceProcess,
    /// `gantry-api`.
    pub api: ServiceProcess,
}

impl Core {
    /// The api's base URL.
    pub fn url(&self) -> &str {
        &self.api.base_url
    }
}

impl Stack {
    /// Start a trainer with this stack's variables (a CPU node; the cluster token and node name
    /// come from `extra_env` when a test sets them). Without `GANTRY_CLUSTER_TOKEN` there, a new
    /// cluster token is created first through the running registry ([`Stack::create_cluster_token`]),
    /// so the registry must be up.
    pub fn trainer(&self) -> ServiceProcess {
        if self.extra_env.contains_key("GANTRY_CLUSTER_TOKEN") {
            return self.spawn("gantry-trainer", &[]);
        }
        let token = self.create_cluster_token("test");
        self.spawn("gantry-trainer", &[("GANTRY_CLUSTER_TOKEN", &token)])
    }

    /// Create a cluster token named `name` through the running registry (`gantry-registry
    /// create-token`, over this stack's NATS) and return it whole. Panics when no registry answers
    /// within a minute.
    pub fn create_cluster_token(&self, name: &str) -> String {
        let out = Command::new(bin_dir().join("gantry-registry"))
            .args(["create-token", name, "--wait", "60"])
            .env("NATS_URL", self.nats.url())
            .stdin(Stdio::null())
            .output()
            .expect("run gantry-registry create-token");
        assert!(
            out.status.success(),
            "gantry-registry create-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 token")
            .trim()
            .to_owned()
    }
}
