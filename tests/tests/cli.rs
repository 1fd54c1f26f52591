//! The `gantry` command line over the real stack: the real binary, run as a person would, against
//! the real api, auth, registry and a CPU trainer. Logging in (token and password), users, API
//! and cluster tokens, nodes as a table and as JSON, browsing, training with `--follow` to the
//! end, a download checked against the model card's digest, an error of every group of commands
//! printed as the server's message with a non-zero exit, `--follow` in a pseudo-terminal drawing
//! an advancing progress bar, and Ctrl-C leaving the followed job running.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use gantry_contracts::auth::{User, UserList};
use gantry_contracts::jobs::ModelDetail;
use gantry_contracts::registry::{ClusterNodes, ClusterTokenList};
use gantry_testing::service::bin_dir;
use gantry_testing::{free_port, TestStack, ADMIN_TOKEN};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What one run of `gantry` left.
#[derive(Debug)]
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    /// It succeeded; its standard output.
    fn ok(self) -> String {
        assert!(self.status.success(), "gantry failed: {self:#?}");
        self.stdout
    }

    /// It failed as a person should see it: a `gantry:` line naming `expected`, no panic, exit
    /// code 1.
    fn fails_with(self, expected: &str) -> String {
        assert_eq!(self.status.code(), Some(1), "{self:#?}");
        assert!(self.stderr.starts_with("gantry: "), "{self:#?}");
        assert!(
            self.stderr.contains(expected),
            "expected {expected:?}: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{self:#?}");
        self.stderr
    }
}

/// A person's shell: their own home and config directory, a working directory of their own (so
/// no local stack is found by accident) and none of gantry's variables unless given.
struct Shell {
    home: TempDir,
    env: Vec<(String, String)>,
}

impl Shell {
    fn new() -> Self {
        Self {
            home: TempDir::new().unwrap(),
            env: Vec::new(),
        }
    }

    fn with(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn config_file(&self) -> PathBuf {
        self.home.path().join(".config/gantry/config.json")
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(program);
        for var in [
            "GANTRY_URL",
            "GANTRY_TOKEN",
            "GANTRY_CONFIG",
            "GANTRY_STATE_DIR",
            "XDG_CONFIG_HOME",
        ] {
            c.env_remove(var);
        }
        c.env("HOME", self.home.path())
            .env("NO_COLOR", "1")
            .current_dir(self.home.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .kill_on_drop(true);
        c
    }

    /// Run `gantry args...` with `stdin` on its standard input.
    async fn run_with(&self, args: &[&str], stdin: &str) -> Out {
        let mut child = self
            .command(&gantry())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start gantry");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let out = child.wait_with_output().await.expect("gantry ran");
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, "").await
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let out = self.run(&all).await.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

fn gantry() -> PathBuf {
    bin_dir().join("gantry")
}

/// The column where `header` starts in a table's first line, and the text of the row that
/// starts with `first_cell`: every column of that row starts where its header does.
fn assert_aligned(table: &str, first_cell: &str, headers: &[&str]) {
    let mut lines = table.lines();
    let head = lines.next().expect("a header line");
    let row = lines
        .find(|l| l.starts_with(first_cell))
        .unwrap_or_else(|| panic!("no row {first_cell:?} in:\n{table}"));
    for h in headers {
        let col = head
            .find(h)
            .unwrap_or_else(|| panic!("no column {h} in:\n{table}"));
        assert!(
            col == 0 || row[..col].ends_with("  ") || row.as_bytes()[col - 1] == b' ',
            "column {h} is not aligned in:\n{table}"
        );
        assert_ne!(
            row.as_bytes().get(col),
            Some(&b' '),
            "column {h} of row {first_cell} is empty or misaligned in:\n{table}"
        );
    }
}

#[tokio::test]
async fn every_command_group_works_for_an_admin_and_prints_the_servers_message_when_refused() {
    TestStack::run(Duration::from_secs(480), |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let _node = stack.join_trainer("cpu-node-1").await;
        stack.shapes("datasets/shapes", 5, 1);
        let url = stack.base_url().to_owned();
        let admin = Shell::new();

        // Nothing configured: it says what to do.
        admin
            .run(&["nodes", "list"])
            .await
            .fails_with("no Gantry server configured: run `gantry login --url URL`");

        // login: a wrong token is refused with the server's message and nothing is saved.
        admin
            .run_with(
                &["--url", &url, "login", "--token-stdin"],
                "gnt_not-a-real-token-0000000000000000",
            )
            .await
            .fails_with("(HTTP 401)");
        assert!(!admin.config_file().exists());
        let out = admin
            .run_with(
                &["--url", &url, "login", "--token-stdin"],
                &format!("{ADMIN_TOKEN}\n"),
            )
            .await
            .ok();
        assert!(
            out.contains(&format!("logged in to {url} as admin (admin)")),
            "{out}"
        );
        let meta = std::fs::metadata(admin.config_file()).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "the login is the owner's only"
        );
        let saved: Value =
            serde_json::from_slice(&std::fs::read(admin.config_file()).unwrap()).unwrap();
        assert_eq!(saved["url"], url.as_str());
        let out = admin.run(&["login", "--show"]).await.ok();
        assert!(out.contains("as admin (admin)"), "{out}");

        // users: create, list as a table and as JSON, update; a duplicate is refused.
        let out = admin
            .run_with(
                &[
                    "users",
                    "create",
                    "alice",
                    "--email",
                    "alice@example.com",
                    "--password-stdin",
                    "--tokens",
                    "500",
                ],
                "alice-password-1\n",
            )
            .await
            .ok();
        assert!(out.contains("created user alice"), "{out}");
        let table = admin.run(&["users", "list"]).await.ok();
        assert!(table.starts_with("ID  USERNAME"), "{table}");
        assert_aligned(
            &table,
            "2 ",
            &["USERNAME", "EMAIL", "ROLE", "TOKENS", "ACTIVE"],
        );
        let users: UserList = serde_json::from_value(admin.json(&["users", "list"]).await).unwrap();
        let alice = users
            .users
            .iter()
            .find(|u| u.username == "alice")
            .expect("alice listed");
        assert_eq!(alice.tokens, 500);
        let updated: User = serde_json::from_value(
            admin
                .json(&[
                    "users",
                    "update",
                    "alice",
                    "--add-tokens",
                    "250",
                    "--reason",
                    "grant",
                ])
                .await,
        )
        .unwrap();
        assert_eq!(updated.tokens, 750);
        admin
            .run_with(
                &[
                    "users",
                    "create",
                    "alice",
                    "--email",
                    "a2@example.com",
                    "--password-stdin",
                ],
                "alice-password-2\n",
            )
            .await
            .fails_with("(HTTP 409)");
        admin
            .run(&["users", "update", "nobody", "--active", "false"])
            .await
            .fails_with("no user named nobody");

        // users: a ledger, newest first, as a table and as JSON; delete, then it is gone.
        let table = admin.run(&["users", "ledger", "alice"]).await.ok();
        assert!(table.starts_with("AT"), "{table}");
        let row = table.lines().nth(1).unwrap_or_default();
        assert!(
            row.contains("adjustment") && row.contains("+250") && row.ends_with("grant"),
            "{table}"
        );
        let ledger = admin
            .json(&["users", "ledger", "alice", "--limit", "1"])
            .await;
        assert_eq!(ledger["entries"][0]["reason"], "grant", "{ledger}");
        assert_eq!(ledger["entries"][0]["delta"], 250, "{ledger}");
        assert_eq!(ledger["total"], 2, "{ledger}");
        let bad = admin
            .run(&["users", "ledger", "alice", "--limit", "500"])
            .await;
        assert_eq!(bad.status.code(), Some(2), "{bad:#?}");
        admin
            .run_with(
                &[
                    "users",
                    "create",
                    "zed",
                    "--email",
                    "zed@example.com",
                    "--password-stdin",
                ],
                "zed-password-1\n",
            )
            .await
            .ok();
        let out = admin.run(&["users", "delete", "zed"]).await.ok();
        assert!(out.contains("deleted user zed"), "{out}");
        admin
            .run(&["users", "delete", "zed"])
            .await
            .fails_with("no user named zed");

        // nodes: a table with the node and its state, the same as JSON, show, drain, undrain,
        // set-driver; an unknown node is refused.
        let table = admin.run(&["nodes", "list"]).await.ok();
        assert!(table.starts_with("HOSTNAME"), "{table}");
        assert_aligned(
            &table,
            "cpu-node-1",
            &["STATE", "DRIVER", "GPUS", "FREE/WORKERS", "TOKEN"],
        );
        let row = table.lines().find(|l| l.starts_with("cpu-node-1")).unwrap();
        assert!(
            row.contains("connected") && row.contains("cpu") && row.contains("1/1"),
            "{table}"
        );
        assert!(table.contains("1 node, 1 connected"), "{table}");
        let nodes: ClusterNodes =
            serde_json::from_value(admin.json(&["nodes", "list"]).await).unwrap();
        assert_eq!(nodes.nodes.len(), 1);
        assert_eq!(nodes.nodes[0].hostname, "cpu-node-1");
        assert!(nodes.nodes[0].connected);
        let out = admin.run(&["nodes", "show", "cpu-node-1"]).await.ok();
        assert!(
            out.contains("hostname:") && out.contains("PROCESS"),
            "{out}"
        );
        let out = admin.run(&["nodes", "drain", "cpu-node-1"]).await.ok();
        assert!(out.contains("cpu-node-1 is draining"), "{out}");
        stack
            .wait_node("cpu-node-1", Duration::from_secs(30), "draining", |n| {
                n.draining
            })
            .await;
        admin.run(&["nodes", "undrain", "cpu-node-1"]).await.ok();
        stack
            .wait_node("cpu-node-1", Duration::from_secs(30), "undrained", |n| {
                !n.draining
            })
            .await;
        let out = admin
            .run(&["nodes", "set-driver", "cpu-node-1", "cpu"])
            .await
            .ok();
        assert!(out.contains("driver set to cpu"), "{out}");
        admin
            .run(&["nodes", "show", "no-such-node"])
            .await
            .fails_with("no node named no-such-node");

        // API tokens: create one (shown whole once), use it, list it, revoke it; then it is
        // refused. Revoking an unknown id is refused.
        let created = admin.json(&["tokens", "create", "ci"]).await;
        let secret = created["token"]
            .as_str()
            .expect("the whole token")
            .to_owned();
        let id = created["id"].as_str().unwrap().to_owned();
        let with_new = Shell::new()
            .with("GANTRY_URL", &url)
            .with("GANTRY_TOKEN", &secret);
        let out = with_new.run(&["login", "--show"]).await.ok();
        assert!(out.contains("as admin"), "{out}");
        let table = admin.run(&["tokens", "list"]).await.ok();
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("ci")),
            "{table}"
        );
        assert!(
            !table.contains(&secret),
            "a listing never shows a token whole"
        );
        admin.run(&["tokens", "revoke", &id]).await.ok();
        with_new
            .run(&["users", "list"])
            .await
            .fails_with("(HTTP 401)");
        admin
            .run(&["tokens", "revoke", "no-such-token"])
            .await
            .fails_with("(HTTP 404)");

        // cluster tokens: create, list, revoke; an unknown id is refused.
        let created = admin.json(&["cluster", "tokens", "create", "rack-7"]).await;
        let cid = created["id"].as_i64().unwrap();
        assert!(created["token"].as_str().unwrap().len() > 20);
        let list: ClusterTokenList =
            serde_json::from_value(admin.json(&["cluster", "tokens", "list"]).await).unwrap();
        assert!(list.tokens.iter().any(|t| t.id == cid && t.active));
        let table = admin.run(&["cluster", "tokens", "list"]).await.ok();
        assert_aligned(&table, &cid.to_string(), &["NAME", "TOKEN", "ACTIVE"]);
        let out = admin
            .run(&["cluster", "tokens", "revoke", &cid.to_string()])
            .await
            .ok();
        assert!(
            out.contains(&format!("revoked cluster token {cid}")),
            "{out}"
        );
        admin
            .run(&["cluster", "tokens", "revoke", "999999"])
            .await
            .fails_with("(HTTP 404)");

        // browse: the data root and a dataset; a missing path is refused.
        let out = admin.run(&["browse"]).await.ok();
        assert!(out.contains("datasets/"), "{out}");
        let out = admin.run(&["browse", "/datasets/shapes"]).await.ok();
        assert!(
            out.contains("circle/") && out.contains("triangle/"),
            "{out}"
        );
        admin
            .run(&["browse", "/nope"])
            .await
            .fails_with("no such path: /nope");

        // jobs, models and train: unknown things are refused with the server's message.
        admin
            .run(&["jobs", "show", "0123456789abcdef"])
            .await
            .fails_with("(HTTP 404)");
        admin
            .run(&["jobs", "cancel", "0123456789abcdef"])
            .await
            .fails_with("(HTTP 404)");
        admin
            .run(&["models", "show", "NoSuchModel"])
            .await
            .fails_with("(HTTP 404)");
        admin
            .run(&["models", "download", "NoSuchModel"])
            .await
            .fails_with("(HTTP 404)");
        admin
            .run(&["train", "/datasets/none", "--output-model", "M"])
            .await
            .fails_with("no such path: /datasets/none");

        // A user logs in with their password; gantry makes and saves an API token. They see
        // their own jobs and are refused admin commands with the server's word.
        let user = Shell::new();
        let out = user
            .run_with(
                &[
                    "--url",
                    &url,
                    "login",
                    "--username",
                    "alice",
                    "--password-stdin",
                ],
                "alice-password-1\n",
            )
            .await
            .ok();
        assert!(out.contains("as alice (user)"), "{out}");
        let jobs = user.json(&["jobs", "list"]).await;
        assert_eq!(jobs["total"], 0, "{jobs}");
        user.run(&["users", "list"]).await.fails_with("(HTTP 403)");
        user.run(&["nodes", "list"]).await.fails_with("(HTTP 403)");
        let tokens = user.json(&["tokens", "list"]).await;
        assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1, "{tokens}");

        // A server that is not there is named with its URL.
        let gone = format!("http://127.0.0.1:{}", free_port());
        Shell::new()
            .with("GANTRY_URL", &gone)
            .with("GANTRY_TOKEN", "x")
            .run(&["jobs", "list"])
            .await
            .fails_with(&format!("cannot reach the Gantry server at {gone}"));

        // Forgetting the login.
        let out = admin.run(&["login", "--forget"]).await.ok();
        assert!(out.contains("forgot the login"), "{out}");
        assert!(!admin.config_file().exists());

        // Completions for three shells, and an example in every command's help.
        for shell in ["bash", "zsh", "fish"] {
            let out = admin.run(&["completions", shell]).await.ok();
            assert!(
                out.contains("gantry") && out.contains("set-driver"),
                "{shell}: {out}"
            );
        }
        let bad = admin.run(&["completions", "tcsh"]).await;
        assert_eq!(bad.status.code(), Some(2), "{bad:#?}");
        let commands: &[&[&str]] = &[
            &[],
            &["login"],
            &["users", "list"],
            &["users", "create"],
            &["users", "update"],
            &["users", "delete"],
            &["users", "ledger"],
            &["tokens", "list"],
            &["tokens", "create"],
            &["tokens", "revoke"],
            &["cluster", "tokens", "list"],
            &["cluster", "tokens", "create"],
            &["cluster", "tokens", "revoke"],
            &["nodes", "list"],
            &["nodes", "show"],
            &["nodes", "set-driver"],
            &["nodes", "drain"],
            &["nodes", "undrain"],
            &["browse"],
            &["train"],
            &["jobs", "list"],
            &["jobs", "show"],
            &["jobs", "cancel"],
            &["jobs", "follow"],
            &["models", "list"],
            &["models", "show"],
            &["models", "download"],
            &["completions"],
        ];
        for c in commands {
            let mut args = c.to_vec();
            args.push("--help");
            let out = admin.run(&args).await.ok();
            let examples = out.split("Examples:\n").nth(1).unwrap_or_default();
            assert!(
                examples.contains("gantry "),
                "{c:?} --help has no example:\n{out}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn train_follow_runs_to_the_end_and_the_downloaded_model_matches_its_digest() {
    TestStack::run(Duration::from_secs(600), |mut stack| async move {
        stack.short_heartbeats().set_env("GANTRY_TRAIN_HOLD", "600");
        stack.start_core().await;
        let _node = stack.join_trainer("cpu-node-1").await;
        stack.shapes("datasets/shapes", 30, 3);
        let admin = Shell::new()
            .with("GANTRY_URL", stack.base_url())
            .with("GANTRY_TOKEN", ADMIN_TOKEN);

        let out = admin
            .run(&[
                "train",
                "/datasets/shapes",
                "--output-model",
                "CliModel",
                "--epochs",
                "3",
                "--image-size",
                "32",
                "--follow",
            ])
            .await;
        assert!(out.status.success(), "{out:#?}");
        assert!(out.stderr.contains("queued"), "{out:#?}");
        assert!(
            out.stderr.contains("started on node cpu-node-1"),
            "{out:#?}"
        );
        assert!(out.stderr.contains("epoch 3/3"), "{out:#?}");
        let last = out.stdout.lines().last().unwrap_or_default().to_owned();
        assert!(
            last.starts_with("model CliModel version 1: validation accuracy "),
            "{out:#?}"
        );

        // The job as listed and shown.
        let table = admin.run(&["jobs", "list"]).await.ok();
        assert!(table.starts_with("JOB"), "{table}");
        let row = table.lines().nth(1).expect("one job");
        assert!(
            row.contains("completed") && row.contains("CliModel v1"),
            "{table}"
        );
        let job_id = row.split_whitespace().next().unwrap().to_owned();
        assert_aligned(
            &table,
            &job_id,
            &["STATUS", "MODEL", "PROGRESS", "QUEUE", "NODE"],
        );
        let out = admin.run(&["jobs", "show", &job_id]).await.ok();
        assert!(
            out.contains("status:") && out.contains("completed"),
            "{out}"
        );
        // A finished job cannot be cancelled: the server says why.
        admin
            .run(&["jobs", "cancel", &job_id])
            .await
            .fails_with("(HTTP 409)");

        // Models: listed, shown, downloaded with the card's size and digest checked.
        let table = admin.run(&["models", "list"]).await.ok();
        assert!(table.lines().any(|l| l.starts_with("CliModel")), "{table}");
        let detail: ModelDetail =
            serde_json::from_value(admin.json(&["models", "show", "CliModel"]).await).unwrap();
        let card = &detail.versions[0].card;
        let file = admin.home.path().join("weights.safetensors");
        let out = admin
            .run(&[
                "models",
                "download",
                "CliModel",
                "--file",
                file.to_str().unwrap(),
            ])
            .await
            .ok();
        assert!(out.contains("verified"), "{out}");
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(bytes.len() as u64, card.weights_bytes);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), card.weights_sha256);
        assert!(out.contains(&card.weights_sha256), "{out}");
        // The default file name is the model's and version's.
        admin.run(&["models", "download", "CliModel"]).await.ok();
        assert_eq!(
            std::fs::read(admin.home.path().join("CliModel-v1.safetensors")).unwrap(),
            bytes
        );
        admin
            .run(&["models", "download", "CliModel", "--version", "9"])
            .await
            .fails_with("model CliModel has no version 9");
        let v = admin
            .json(&["models", "download", "CliModel", "--file", "again.bin"])
            .await;
        assert_eq!(v["sha256"], json!(card.weights_sha256));
        assert_eq!(v["bytes"], json!(card.weights_bytes));
    })
    .await;
}

/// The `step N/M` positions a progress bar drew, in order.
fn bar_positions(screen: &str) -> Vec<u64> {
    screen
        .split("step ")
        .skip(1)
        .filter_map(|s| s.split('/').next()?.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn follow_in_a_terminal_draws_an_advancing_bar_and_ctrl_c_leaves_the_job_running() {
    TestStack::run(Duration::from_secs(600), |mut stack| async move {
        stack.short_heartbeats();
        stack.start_core().await;
        let _node = stack.join_trainer("cpu-node-1").await;
        stack.shapes("datasets/shapes", 80, 5);
        let url = stack.base_url().to_owned();
        let shell = Shell::new().with("GANTRY_URL", &url).with("GANTRY_TOKEN", ADMIN_TOKEN);

        // `gantry jobs follow` in a pseudo-terminal (script(1) gives it one, 120 columns wide).
        let id = stack
            .submit(json!({"output_model": "Bar", "train_path": "/datasets/shapes", "epochs": 6, "batch_size": 8}))
            .await;
        let line = format!(
            "stty cols 120 rows 40; exec {} jobs follow {id}",
            gantry().display()
        );
        let out = shell
            .command(Path::new("script"))
            .args(["-qfec", &line, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run script");
        let screen = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{screen}");
        let positions = bar_positions(&screen);
        let mut distinct = positions.clone();
        distinct.dedup();
        assert!(
            distinct.len() >= 3,
            "the bar drew fewer than 3 positions {positions:?}:\n{screen}"
        );
        assert!(
            positions.windows(2).all(|w| w[0] <= w[1]),
            "the bar went backwards {positions:?}"
        );
        assert!(screen.contains("epoch 6/6") && screen.contains("samples/s"), "{screen}");
        assert!(screen.contains("ETA"), "{screen}");
        assert!(screen.contains("model Bar version 1: validation accuracy"), "{screen}");

        // Ctrl-C stops following; the job goes on.
        let id = stack
            .submit(json!({"output_model": "Long", "train_path": "/datasets/shapes", "epochs": 200, "batch_size": 8}))
            .await;
        let mut child = shell
            .command(&gantry())
            .args(["jobs", "follow", &id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = Vec::new();
        while let Some(l) = stderr.next_line().await.unwrap() {
            let training = l.starts_with("epoch ");
            seen.push(l);
            if training {
                break;
            }
        }
        assert!(seen.iter().any(|l| l.starts_with("epoch ")), "{seen:?}");
        let pid = child.id().unwrap().to_string();
        let kill = tokio::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        assert!(kill.success());
        let status = child.wait().await.unwrap();
        let mut rest = String::new();
        while let Some(l) = stderr.next_line().await.unwrap() {
            rest.push_str(&l);
            rest.push('\n');
        }
        assert_eq!(status.code(), Some(130), "{rest}");
        assert!(rest.contains(&format!("stopped following; job {id} goes on")), "{rest}");
        let job = stack.job(&id).await;
        assert_eq!(job["status"], "running", "following stopped, the job did not: {job}");

        // The job is cancelled with the command line, and then shows so.
        let out = shell.run(&["jobs", "cancel", &id]).await.ok();
        assert!(out.contains(&format!("job {id}: cancelled")), "{out}");
        let job = stack.wait_final(&id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "cancelled");
    })
    .await;
}
