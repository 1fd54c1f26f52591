//! The real service binaries, started against the test infrastructure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::wait_until;

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
}

impl ServiceProcess {
    /// Start `bin` with exactly `env` (plus `PATH`/`HOME`/`LD_LIBRARY_PATH` from the test),
    /// writing its output to `log`. `port` is where it serves health.
    pub fn spawn(bin: &str, env: &BTreeMap<String, String>, port: u16, log: PathBuf) -> Self {
        Self::spawn_wrapped(&[], bin, env, port, log)
    }

    /// The same, run through `wrapper` (e.g. `ip netns exec <ns>`): `wrapper... <bin path>`.
    pub fn spawn_wrapped(
        wrapper: &[String],
        bin: &str,
        env: &BTreeMap<String, String>,
        port: u16,
        log: PathBuf,
    ) -> Self {
        let path = bin_dir().join(bin);
        assert!(
            path.is_file(),
            "{} is not built: run `cargo build --workspace --bins` (deploy/local/test.sh does)",
            path.display()
        );
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&path);
                c
            }
            None => Command::new(&path),
        };
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
