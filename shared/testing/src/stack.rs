//! [`TestStack`]: one test's NATS, store, data root and database prefix, the real service
//! binaries started against them, and [`TestStack::run`], which bounds a test's time and prints
//! every service's output when it fails.
//!
//! The api's HTTP helpers live in [`crate::api`], the job helpers in [`crate::jobs`] and the
//! registry's and trainers' in [`crate::cluster`]; all are methods of [`TestStack`].

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tempfile::TempDir;

use crate::infra::{Nats, Store};
use crate::logs::Logs;
use crate::service::{bin_dir, ServiceProcess};
use crate::util::{free_port, unique_prefix};

/// The admin API token every test stack starts with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef0123456789";
/// The first admin's password in every test stack.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// How long a service may take to become ready.
pub const READY: Duration = Duration::from_secs(60);

/// The api, auth and the registry: what most tests start.
pub const CORE: [&str; 3] = ["gantry-auth", "gantry-registry", "gantry-api"];

/// NATS, the store, a data root and a database prefix of one test, and the services it holds.
pub struct TestStack {
    /// The test's NATS.
    pub nats: Nats,
    /// The test's store.
    pub store: Store,
    /// `GANTRY_DB_PREFIX` for this test.
    pub prefix: String,
    /// `GANTRY_DATA_ROOT` for this test.
    pub data_root: TempDir,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) logs: Logs,
    pub(crate) held: BTreeMap<String, ServiceProcess>,
    pub(crate) client: async_nats::Client,
    pub(crate) http: reqwest::Client,
    pub(crate) caches: TempDir,
    pub(crate) cluster_token: tokio::sync::OnceCell<String>,
}

impl TestStack {
    /// Run one end-to-end test: start NATS and the store, hand the stack to `test`, and fail the
    /// test when it has not finished within `limit`, printing every service's output. A test that
    /// panics prints the same output before its panic goes on. The report is read from files, so
    /// producing it never waits on the runtime.
    pub async fn run<F, Fut>(limit: Duration, test: F)
    where
        F: FnOnce(TestStack) -> Fut,
        Fut: Future<Output = ()>,
    {
        let logs = Logs::new();
        let body = {
            let logs = logs.clone();
            async move {
                let stack = TestStack::start(logs).await;
                test(stack).await;
            }
        };
        match tokio::time::timeout(limit, AssertUnwindSafe(body).catch_unwind()).await {
            Ok(Ok(())) => {}
            Ok(Err(panic)) => {
                eprintln!("the services' output:\n{}", logs.report());
                std::panic::resume_unwind(panic)
            }
            Err(_) => panic!(
                "the test did not finish within {limit:?}; the services' output:\n{}",
                logs.report()
            ),
        }
    }

    async fn start(logs: Logs) -> Self {
        let (nats, store) = tokio::join!(Nats::start(), Store::start());
        let client = nats.client().await;
        Self {
            nats,
            store,
            prefix: unique_prefix(),
            data_root: TempDir::new().unwrap(),
            env: BTreeMap::new(),
            logs,
            held: BTreeMap::new(),
            client,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(900))
                .build()
                .unwrap(),
            caches: TempDir::new().unwrap(),
            cluster_token: tokio::sync::OnceCell::new(),
        }
    }

    /// Give every service started from now on `key=value`.
    pub fn set_env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// The variables a service of this stack starts with.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.extend(self.nats.env_for(None));
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
        env.extend(self.env.clone());
        env
    }

    /// Start `bin` with this stack's variables plus `extra`, without waiting for it; the caller
    /// holds it. The api gets `GANTRY_HTTP_ADDR`, the others `GANTRY_HEALTH_ADDR`, on a free
    /// port. Its output joins the test's report.
    pub fn spawn(&self, bin: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        self.spawn_wrapped(&[], bin, extra)
    }

    /// The same, run through `wrapper` (e.g. [`crate::netns::NetNs::wrapper`]).
    pub fn spawn_wrapped(
        &self,
        wrapper: &[String],
        bin: &str,
        extra: &[(&str, &str)],
    ) -> ServiceProcess {
        let port = free_port();
        let mut env = self.env();
        let var = if bin == "gantry-api" {
            "GANTRY_HTTP_ADDR"
        } else {
            "GANTRY_HEALTH_ADDR"
        };
        env.insert(var.into(), format!("127.0.0.1:{port}"));
        env.extend(self.nats.env_for(gantry_bus::Role::of_service(bin)));
        for (k, v) in extra {
            env.insert((*k).into(), (*v).into());
        }
        let label = match env.get("GANTRY_NODE_NAME") {
            Some(node) if bin == "gantry-trainer" => format!("{bin} {node}"),
            _ => bin.to_owned(),
        };
        ServiceProcess::spawn_wrapped(wrapper, bin, &env, port, self.logs.file(&label))
    }

    /// Start `bins` and wait until each is ready; the stack holds them (one per binary; more
    /// replicas come from [`TestStack::spawn`]).
    pub async fn start_services(&mut self, bins: &[&str]) {
        let started: Vec<ServiceProcess> = bins.iter().map(|b| self.spawn(b, &[])).collect();
        for s in &started {
            s.wait_ready(READY).await;
        }
        for s in started {
            if let Some(mut old) = self.held.insert(s.name.clone(), s) {
                old.kill9();
            }
        }
    }

    /// Start auth, the registry and the api, ready.
    pub async fn start_core(&mut self) {
        self.start_services(&CORE).await;
    }

    /// The held service `bin`. Panics when the test did not start it.
    pub fn service(&self, bin: &str) -> &ServiceProcess {
        self.held
            .get(bin)
            .unwrap_or_else(|| panic!("{bin} was not started on this stack"))
    }

    /// The held service `bin`, to stop or signal it.
    pub fn service_mut(&mut self, bin: &str) -> &mut ServiceProcess {
        self.held
            .get_mut(bin)
            .unwrap_or_else(|| panic!("{bin} was not started on this stack"))
    }

    /// Stop holding `bin` and hand it to the caller.
    pub fn take(&mut self, bin: &str) -> ServiceProcess {
        self.held
            .remove(bin)
            .unwrap_or_else(|| panic!("{bin} was not started on this stack"))
    }

    /// Kill `bin` with SIGKILL (no chance to clean up) and stop holding it.
    pub fn kill9(&mut self, bin: &str) {
        self.take(bin).kill9();
    }

    /// `gantry-api`.
    pub fn api(&self) -> &ServiceProcess {
        self.service("gantry-api")
    }

    /// `gantry-auth`.
    pub fn auth(&self) -> &ServiceProcess {
        self.service("gantry-auth")
    }

    /// `gantry-registry`.
    pub fn registry(&self) -> &ServiceProcess {
        self.service("gantry-registry")
    }

    /// The test's own NATS client (it reconnects by itself after a NATS restart).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// A fresh NATS client for the test, e.g. right after NATS came back.
    pub async fn reconnect(&mut self) {
        self.client = self.nats.client().await;
    }

    /// Every service's output so far, as a failing test prints it.
    pub fn logs(&self) -> String {
        self.logs.report()
    }

    /// Create a cluster token named `name` with the registry's command line
    /// (`gantry-registry create-token`, over this stack's NATS) and return it whole. Panics when
    /// no registry answers within a minute.
    pub async fn create_token_cli(&self, name: &str) -> String {
        let out = tokio::process::Command::new(bin_dir().join("gantry-registry"))
            .args(["create-token", name, "--wait", "60"])
            .envs(self.nats.env_for(Some(gantry_bus::Role::Registry)))
            .stdin(std::process::Stdio::null())
            .output()
            .await
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

    /// Run a Python script with pymongo against database `db` (without the prefix, e.g. `auth`)
    /// of this stack's store: `sys.argv[1]` is the store's URI, `sys.argv[2]` the database, then
    /// `args`. The store's own interpreter runs it (the store is built on pymongo, so it is there
    /// wherever the store is). Returns what it printed.
    pub async fn store_script(&self, db: &str, script: &str, args: &[&str]) -> String {
        let store = crate::util::tool("nx-27017");
        let first = std::fs::read_to_string(&store)
            .unwrap()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        let mut words = first.trim_start_matches("#!").split_whitespace();
        let mut python = words
            .next()
            .expect("nx-27017 starts with a #! line")
            .to_owned();
        if python.ends_with("/env") {
            python = words
                .next()
                .expect("#!/usr/bin/env names the interpreter")
                .to_owned();
        }
        let out = tokio::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(self.store.uri())
            .arg(format!("{}{db}", self.prefix))
            .args(args)
            .output()
            .await
            .expect("run the store's python");
        assert!(
            out.status.success(),
            "store script failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}
