//! What each command does: the request it sends and how its answer is shown.
//!
//! One file for every command group on purpose: each command is a short request-and-print
//! function, and keeping them side by side keeps their output conventions (tables, `--output
//! json`, errors) the same; the shared pieces live in `client`, `output` and `follow`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;
use futures::StreamExt;
use gantry_contracts::analysis::{AnalyzeResult, ResultsPage, MAX_RESULTS_PAGE};
use gantry_contracts::auth::{ApiToken, ApiTokenList, LedgerEntry, User, UserList};
use gantry_contracts::jobs::{
    JobRecord, JobStatus, JobSummary, ModelDetail, ModelList, ModelVersion,
};
use gantry_contracts::registry::{
    ClusterNode, ClusterNodes, ClusterToken, ClusterTokenList, SetDriverResult,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cli::*;
use crate::client::{segment, Client, Error, Result};
use crate::config;
use crate::follow::{self, Ended};
use crate::output::{self, Format};

/// Run one command; the exit code it ends with.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let format = cli.output;
    match cli.command {
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "gantry", &mut out);
            output::print(&String::from_utf8_lossy(&out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Login(args) => login(cli.url.as_deref(), args, format).await,
        command => {
            let target = config::target(cli.url.as_deref())?;
            let client = Client::new(&target.url, target.token)?;
            let ctx = Ctx { client, format };
            match command {
                Command::Users(c) => ctx.users(c).await,
                Command::Tokens(c) => ctx.tokens(c).await,
                Command::Cluster(ClusterCmd::Tokens(c)) => ctx.cluster_tokens(c).await,
                Command::Nodes(c) => ctx.nodes(c).await,
                Command::Browse(a) => ctx.browse(a).await,
                Command::Train(a) => ctx.train(a).await,
                Command::Analyze(a) => ctx.analyze(a).await,
                Command::Jobs(c) => ctx.jobs(c).await,
                Command::Models(c) => ctx.models(c).await,
                Command::Login(_) | Command::Completions { .. } => unreachable!("handled above"),
            }
        }
    }
}

/// Read one secret: from standard input when `from_stdin` (or when it is not a terminal),
/// else asking on the terminal.
fn read_secret(prompt: &str, from_stdin: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let text = if from_stdin || !stdin.is_terminal() {
        let mut s = String::new();
        stdin.lock().read_to_string(&mut s)?;
        s
    } else {
        eprint!("{prompt}: ");
        std::io::stderr().flush()?;
        read_line_unechoed()?
    };
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(Error::msg(format!("no {} given", prompt.to_lowercase())));
    }
    Ok(text)
}

/// One line from the terminal, not shown while it is typed.
fn read_line_unechoed() -> Result<String> {
    use std::os::fd::AsRawFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a descriptor we hold open.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let quiet = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if quiet {
        let mut t = saved;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        // SAFETY: as above, with a termios read from this descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    let mut s = String::new();
    let read = stdin.lock().read_line(&mut s);
    if quiet {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read?;
    Ok(s)
}

/// `POST /api/tokens` answers with the token as listed plus the whole token, this once.
#[derive(Debug, Serialize, Deserialize)]
struct CreatedToken {
    #[serde(flatten)]
    listed: ApiToken,
    token: String,
}

async fn login(url: Option<&str>, args: LoginArgs, format: Format) -> Result<ExitCode> {
    if args.forget {
        let p = config::path()?;
        if config::remove()? {
            output::print(&format!("forgot the login saved in {}", p.display()))?;
        } else {
            output::print(&format!("no login saved in {}", p.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.show {
        let target = config::target(url)?;
        let client = Client::new(&target.url, target.token.clone())?;
        let me: User = client.get("/api/auth/me").await?;
        if format == Format::Json {
            output::json(&json!({"url": target.url, "source": target.source, "user": me}))?;
        } else {
            output::print(&format!(
                "{} as {} ({}), from {}",
                target.url,
                me.username,
                me.role.as_str(),
                target.source
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let url = match url
        .map(str::to_owned)
        .or_else(|| std::env::var("GANTRY_URL").ok())
        .or_else(|| config::load().ok().flatten().map(|s| s.url))
    {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => return Err(Error::msg("which server? give --url URL")),
    };
    let token = match &args.username {
        Some(username) => {
            let password = read_secret("Password", args.password_stdin)?;
            token_from_password(&url, username, &password).await?
        }
        None => read_secret("API token", args.token_stdin)?,
    };
    let client = Client::new(&url, Some(token.clone()))?;
    let me: User = client.get("/api/auth/me").await?;
    let path = config::save(&config::Saved {
        url: url.clone(),
        token,
    })?;
    if format == Format::Json {
        output::json(&json!({"url": url, "config": path, "user": me}))?;
    } else {
        output::print(&format!(
            "logged in to {url} as {} ({}); saved in {}",
            me.username,
            me.role.as_str(),
            path.display()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Log in with a password, make an API token for this machine with that session, and log the
/// session out again.
async fn token_from_password(url: &str, username: &str, password: &str) -> Result<String> {
    let client = Client::new(url, None)?;
    let resp = client
        .send(
            client
                .request(Method::POST, "/api/auth/login")
                .json(&json!({"username": username, "password": password})),
        )
        .await?;
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gantry_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| Error::msg("the server set no session on login"))?;
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this machine".into());
    let name = format!("gantry cli on {host}");
    let created: CreatedToken = client
        .send(
            client
                .request(Method::POST, "/api/tokens")
                .header("Cookie", &cookie)
                .header("Origin", url)
                .json(&json!({ "name": name })),
        )
        .await?
        .json()
        .await
        .map_err(|e| client.transport(e))?;
    let _ = client
        .send(
            client
                .request(Method::POST, "/api/auth/logout")
                .header("Cookie", &cookie)
                .header("Origin", url),
        )
        .await;
    Ok(created.token)
}

struct Ctx {
    client: Client,
    format: Format,
}

/// The answer of `GET /admin/api/browse` (the api's own shape).
#[derive(Debug, Serialize, Deserialize)]
struct BrowseResponse {
    current_path: String,
    items: Vec<BrowseItem>,
    total: u64,
    limit: u32,
    offset: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct BrowseItem {
    name: String,
    path: String,
    is_dir: bool,
    size: u64,
}

/// `POST .../train?wait=false` answers 202 with this (the api's own shape).
#[derive(Debug, Serialize, Deserialize)]
struct TrainQueued {
    message: String,
    job_id: String,
    tokens_used: i64,
    remaining_tokens: i64,
    #[serde(default)]
    status_url: String,
}

/// A page of jobs (the api's shape around the contract's records).
#[derive(Debug, Serialize, Deserialize)]
struct JobPage {
    jobs: Vec<JobSummary>,
    total: u64,
    limit: u64,
    offset: u64,
}

fn role_name(u: &User) -> &'static str {
    u.role.as_str()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

impl Ctx {
    fn json_or<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> Result<()> {
        match self.format {
            Format::Json => output::json(value),
            Format::Table => output::print(&human(value)),
        }
    }

    /// Whether the caller is an admin: admins use `/admin/api`, users `/api`.
    async fn prefix(&self) -> Result<&'static str> {
        let me: User = self.client.get("/api/auth/me").await?;
        Ok(match me.role {
            gantry_contracts::auth::Role::Admin => "/admin/api",
            gantry_contracts::auth::Role::User => "/api",
        })
    }

    // ---- users ----

    async fn users(&self, cmd: UsersCmd) -> Result<ExitCode> {
        match cmd {
            UsersCmd::List => {
                let list = self.all_users().await?;
                self.json_or(&list, |l| users_table(&l.users))?;
            }
            UsersCmd::Create {
                username,
                email,
                password_stdin,
                role,
                tokens,
            } => {
                let password = read_secret("Password", password_stdin)?;
                let mut body = json!({
                    "username": username, "email": email, "password": password, "role": role,
                });
                if let Some(t) = tokens {
                    body["tokens"] = json!(t);
                }
                let user: User = self
                    .client
                    .send_json(Method::POST, "/admin/api/users", &body)
                    .await?;
                self.json_or(&user, |u| {
                    format!(
                        "created user {} (id {}, {}, {} tokens)",
                        u.username,
                        u.id,
                        role_name(u),
                        u.tokens
                    )
                })?;
            }
            UsersCmd::Update {
                user,
                role,
                active,
                email,
                password_stdin,
                add_tokens,
                reason,
            } => {
                let id = self.user_id(&user).await?;
                let mut body = serde_json::Map::new();
                if let Some(r) = role {
                    body.insert("role".into(), json!(r));
                }
                if let Some(a) = active {
                    body.insert("active".into(), json!(a));
                }
                if let Some(e) = email {
                    body.insert("email".into(), json!(e));
                }
                if password_stdin {
                    body.insert("password".into(), json!(read_secret("New password", true)?));
                }
                if let Some(n) = add_tokens {
                    body.insert("tokens_delta".into(), json!(n));
                }
                if let Some(r) = reason {
                    body.insert("reason".into(), json!(r));
                }
                if body.is_empty() {
                    return Err(Error::msg(
                        "nothing to change: give --role, --active, --email, --password-stdin or --add-tokens",
                    ));
                }
                let user: User = self
                    .client
                    .send_json(Method::PATCH, &format!("/admin/api/users/{id}"), &body)
                    .await?;
                self.json_or(&user, |u| {
                    format!(
                        "updated user {} (id {}): {}, {}, {} tokens, {}",
                        u.username,
                        u.id,
                        role_name(u),
                        u.email,
                        u.tokens,
                        if u.active { "active" } else { "inactive" }
                    )
                })?;
            }
            UsersCmd::Delete { user } => {
                let id = self.user_id(&user).await?;
                self.client
                    .delete(&format!("/admin/api/users/{id}"))
                    .await?;
                self.json_or(&json!({ "deleted": id }), |_| {
                    format!("deleted user {user} (id {id}); their jobs and models are kept")
                })?;
            }
            UsersCmd::Ledger { user, limit } => {
                let id = self.user_id(&user).await?;
                let page: LedgerPage = self
                    .client
                    .get_query(
                        &format!("/admin/api/users/{id}/ledger"),
                        &[("limit", limit)],
                    )
                    .await?;
                self.json_or(&page, ledger_table)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Every user, page after page.
    async fn all_users(&self) -> Result<UserList> {
        let mut all = UserList {
            users: Vec::new(),
            total: 0,
        };
        loop {
            let page: UserList = self
                .client
                .get_query(
                    "/admin/api/users",
                    &[("limit", 1000), ("offset", all.users.len())],
                )
                .await?;
            all.total = page.total;
            let done = page.users.is_empty();
            all.users.extend(page.users);
            if done || all.users.len() as u64 >= all.total {
                return Ok(all);
            }
        }
    }

    /// A user's id from their id or username.
    async fn user_id(&self, user: &str) -> Result<i64> {
        if let Ok(id) = user.parse::<i64>() {
            return Ok(id);
        }
        let list = self.all_users().await?;
        list.users
            .iter()
            .find(|u| u.username == user)
            .map(|u| u.id)
            .ok_or_else(|| Error::msg(format!("no user named {user}")))
    }

    // ---- API tokens ----

    async fn tokens(&self, cmd: TokensCmd) -> Result<ExitCode> {
        match cmd {
            TokensCmd::List => {
                let list: ApiTokenList = self.client.get("/api/tokens").await?;
                self.json_or(&list, |l| {
                    let rows: Vec<Vec<String>> = l
                        .tokens
                        .iter()
                        .map(|t| {
                            vec![
                                t.id.clone(),
                                t.name.clone(),
                                t.prefix.clone(),
                                output::when(&t.created_at),
                                t.last_used_at
                                    .as_ref()
                                    .map(output::when)
                                    .unwrap_or_else(|| "never".into()),
                            ]
                        })
                        .collect();
                    output::table(&["ID", "NAME", "TOKEN", "CREATED", "LAST USED"], &rows)
                })?;
            }
            TokensCmd::Create { name } => {
                let t: CreatedToken = self
                    .client
                    .send_json(Method::POST, "/api/tokens", &json!({ "name": name }))
                    .await?;
                self.json_or(&t, |t| {
                    format!(
                        "created API token {} (id {}). It is shown this once; keep it:\n{}",
                        t.listed.name, t.listed.id, t.token
                    )
                })?;
            }
            TokensCmd::Revoke { id } => {
                self.client
                    .delete(&format!("/api/tokens/{}", segment(&id)))
                    .await?;
                self.json_or(&json!({"revoked": id}), |_| {
                    format!("revoked API token {id}")
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    // ---- cluster tokens ----

    async fn cluster_tokens(&self, cmd: ClusterTokensCmd) -> Result<ExitCode> {
        match cmd {
            ClusterTokensCmd::List => {
                let list: ClusterTokenList = self.client.get("/admin/api/cluster_tokens").await?;
                self.json_or(&list, |l| cluster_tokens_table(&l.tokens))?;
            }
            ClusterTokensCmd::Create { name } => {
                let t: ClusterToken = self
                    .client
                    .send_json(
                        Method::POST,
                        "/admin/api/cluster_tokens",
                        &json!({ "name": name }),
                    )
                    .await?;
                self.json_or(&t, |t| {
                    format!(
                        "created cluster token {} (id {}). It is shown this once; start trainers \
                         with GANTRY_CLUSTER_TOKEN set to:\n{}",
                        t.name, t.id, t.token
                    )
                })?;
            }
            ClusterTokensCmd::Revoke { id } => {
                self.client
                    .delete(&format!("/admin/api/cluster_tokens/{id}"))
                    .await?;
                self.json_or(&json!({ "revoked": id }), |_| {
                    format!("revoked cluster token {id}; its nodes are disconnected")
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    // ---- nodes ----

    async fn nodes(&self, cmd: NodesCmd) -> Result<ExitCode> {
        match cmd {
            NodesCmd::List => {
                let nodes: ClusterNodes = self.client.get("/api/admin/cluster_nodes").await?;
                self.json_or(&nodes, nodes_table)?;
            }
            NodesCmd::Show(r) => {
                let node = self.find_node(&r).await?;
                self.json_or(&node, node_detail)?;
            }
            NodesCmd::SetDriver { node, driver } => {
                let n = self.find_node(&node).await?;
                let r: SetDriverResult = self
                    .client
                    .send_json(
                        Method::POST,
                        "/api/admin/cluster_nodes/set_driver",
                        &json!({"hostname": n.hostname, "token": n.token, "driver": driver}),
                    )
                    .await?;
                self.json_or(&r, |r| {
                    let mut s = format!("node {}: driver set to {driver}", n.hostname);
                    if let Some(w) = &r.warning {
                        s.push_str(&format!("\nwarning: {w}"));
                    }
                    s
                })?;
            }
            NodesCmd::Drain(r) => return self.drain(&r, true).await,
            NodesCmd::Undrain(r) => return self.drain(&r, false).await,
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn drain(&self, r: &NodeRef, on: bool) -> Result<ExitCode> {
        let n = self.find_node(r).await?;
        let path = if on { "drain" } else { "undrain" };
        let res: SetDriverResult = self
            .client
            .send_json(
                Method::POST,
                &format!("/api/admin/cluster_nodes/{path}"),
                &json!({"hostname": n.hostname, "token": n.token}),
            )
            .await?;
        self.json_or(&res, |res| {
            let mut s = if on {
                format!(
                    "node {} is draining: it finishes what it runs and takes no new work",
                    n.hostname
                )
            } else {
                format!("node {} takes work again", n.hostname)
            };
            if let Some(w) = &res.warning {
                s.push_str(&format!("\nwarning: {w}"));
            }
            s
        })?;
        Ok(ExitCode::SUCCESS)
    }

    /// The node `r` names: by hostname, and by token (whole, as listed, or its name) where
    /// several share it.
    async fn find_node(&self, r: &NodeRef) -> Result<ClusterNode> {
        let nodes: ClusterNodes = self.client.get("/api/admin/cluster_nodes").await?;
        let listed_prefix = |t: &str| t.trim_end_matches("...").to_owned();
        let matching: Vec<ClusterNode> = nodes
            .nodes
            .into_iter()
            .filter(|n| n.hostname == r.hostname)
            .filter(|n| match &r.token {
                None => true,
                Some(t) => {
                    n.token_name == *t || n.token == *t || t.starts_with(&listed_prefix(&n.token))
                }
            })
            .collect();
        match matching.len() {
            0 => Err(Error::msg(format!(
                "no node named {}{} (see `gantry nodes list`)",
                r.hostname,
                r.token
                    .as_ref()
                    .map(|_| " with that token".to_owned())
                    .unwrap_or_default()
            ))),
            1 => Ok(matching.into_iter().next().expect("one")),
            _ => {
                // Prefer the one connected now when only one is.
                let connected: Vec<&ClusterNode> =
                    matching.iter().filter(|n| n.connected).collect();
                if connected.len() == 1 {
                    return Ok(connected[0].clone());
                }
                let names: Vec<String> = matching.iter().map(|n| n.token_name.clone()).collect();
                Err(Error::msg(format!(
                    "{} nodes are named {}; pick one with --token (token names: {})",
                    matching.len(),
                    r.hostname,
                    names.join(", ")
                )))
            }
        }
    }

    // ---- browse ----

    async fn browse(&self, a: BrowseArgs) -> Result<ExitCode> {
        let limit = a.limit.to_string();
        let offset = a.offset.to_string();
        let page: BrowseResponse = self
            .client
            .get_query(
                "/admin/api/browse",
                &[
                    ("path", a.path.as_str()),
                    ("limit", limit.as_str()),
                    ("offset", offset.as_str()),
                ],
            )
            .await?;
        self.json_or(&page, |p| {
            let rows: Vec<Vec<String>> = p
                .items
                .iter()
                .map(|i| {
                    vec![
                        if i.is_dir {
                            format!("{}/", i.name)
                        } else {
                            i.name.clone()
                        },
                        if i.is_dir {
                            "-".into()
                        } else {
                            output::bytes(i.size)
                        },
                        i.path.clone(),
                    ]
                })
                .collect();
            let mut s = format!("{}: {} entries", p.current_path, p.total);
            if p.offset > 0 || (p.items.len() as u64) < p.total {
                s.push_str(&format!(
                    " (showing {}-{})",
                    p.offset + 1,
                    p.offset + p.items.len() as u64
                ));
            }
            s.push('\n');
            if !rows.is_empty() {
                s.push_str(&output::table(&["NAME", "SIZE", "PATH"], &rows));
            }
            s
        })?;
        Ok(ExitCode::SUCCESS)
    }

    // ---- training ----

    async fn train(&self, a: TrainArgs) -> Result<ExitCode> {
        let prefix = self.prefix().await?;
        let mut body = json!({
            "output_model": a.output_model,
            "description": a.description,
            "train_path": a.path,
        });
        let opt = [
            ("epochs", a.epochs.map(|v| json!(v))),
            ("batch_size", a.batch_size.map(|v| json!(v))),
            ("learning_rate", a.learning_rate.map(|v| json!(v))),
            ("image_size", a.image_size.map(|v| json!(v))),
            ("validation_split", a.validation_split.map(|v| json!(v))),
            ("driver", a.driver.map(|v| json!(v))),
            ("augment", a.no_augment.then(|| json!(false))),
            ("hflip", a.hflip.then(|| json!(true))),
            ("bf16", a.bf16.then(|| json!(true))),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        let queued: TrainQueued = self
            .client
            .send_json(Method::POST, &format!("{prefix}/train?wait=false"), &body)
            .await?;
        if !a.follow {
            self.json_or(&queued, |q| {
                format!(
                    "job {} queued ({} tokens used, {} left)\nfollow it: gantry jobs follow {}",
                    q.job_id, q.tokens_used, q.remaining_tokens, q.job_id
                )
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        if self.format == Format::Table {
            eprintln!(
                "job {} queued ({} tokens used, {} left); following it (Ctrl-C stops following, the job goes on)",
                queued.job_id, queued.tokens_used, queued.remaining_tokens
            );
        } else {
            output::print(&serde_json::to_string(&queued).map_err(|e| Error::msg(e.to_string()))?)?;
        }
        self.follow(prefix, &queued.job_id).await
    }

    // ---- analysis ----

    async fn analyze(&self, a: AnalyzeArgs) -> Result<ExitCode> {
        let prefix = self.prefix().await?;
        let mut body = json!({"model": a.model, "input_path": a.path});
        if let Some(k) = a.top_k {
            body["top_k"] = json!(k);
        }
        if let Some(owner) = a.owner {
            body["owner"] = json!(owner);
        }
        if let Some(d) = &a.driver {
            body["driver"] = json!(d);
        }
        let answer: Value = self
            .client
            .send_json(Method::POST, &format!("{prefix}/analyze"), &body)
            .await?;
        let out: AnalyzeResult = match answer.get("job_id").and_then(Value::as_str) {
            None => serde_json::from_value(answer).map_err(|e| Error::msg(e.to_string()))?,
            // More images than one request answers: queued. Follow it, then page its results.
            Some(id) => {
                let id = id.to_owned();
                eprintln!(
                    "queued as analysis job {id} ({} images; follow it: gantry jobs follow {id})",
                    answer["images"]
                );
                match follow::follow(&self.client, prefix, &id, Format::Table).await? {
                    Ended::Interrupted => {
                        eprintln!("stopped following; analysis job {id} goes on");
                        return Ok(ExitCode::from(130));
                    }
                    Ended::Final(job) if job.status != JobStatus::Completed => {
                        eprintln!("{}", follow::summary(&job).0);
                        return Ok(ExitCode::FAILURE);
                    }
                    Ended::Final(_) => {}
                }
                self.all_results(prefix, &id).await?
            }
        };
        self.json_or(&out, |r| {
            let rows: Vec<Vec<String>> = r
                .results
                .iter()
                .map(|i| {
                    let labels: Vec<String> = i
                        .top_k
                        .iter()
                        .map(|p| format!("{} {:.1}%", p.label, p.probability * 100.0))
                        .collect();
                    vec![i.path.clone(), labels.join(", "), i.node.clone()]
                })
                .collect();
            format!(
                "model {}: {} images\n{}",
                r.model,
                r.results.len(),
                output::table(&["PATH", "LABELS", "NODE"], &rows)
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }

    /// Every result of analysis job `id`, page by page.
    async fn all_results(&self, prefix: &str, id: &str) -> Result<AnalyzeResult> {
        let mut results = Vec::new();
        loop {
            let page: ResultsPage = self
                .client
                .get(&format!(
                    "{}/results?offset={}&limit={}",
                    follow::job_path(prefix, id),
                    results.len(),
                    MAX_RESULTS_PAGE
                ))
                .await?;
            let got = page.results.len();
            results.extend(page.results);
            if got == 0 || results.len() as u64 >= page.total {
                return Ok(AnalyzeResult {
                    model: page.model,
                    results,
                });
            }
        }
    }

    async fn follow(&self, prefix: &str, id: &str) -> Result<ExitCode> {
        match follow::follow(&self.client, prefix, id, self.format).await? {
            Ended::Interrupted => {
                eprintln!(
                    "stopped following; job {id} goes on (follow it again: gantry jobs follow {id}; cancel it: gantry jobs cancel {id})"
                );
                Ok(ExitCode::from(130))
            }
            Ended::Final(job) => {
                let (line, ok) = follow::summary(&job);
                match self.format {
                    Format::Json => output::print(
                        &serde_json::to_string(&job).map_err(|e| Error::msg(e.to_string()))?,
                    )?,
                    Format::Table => output::print(&line)?,
                }
                Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
        }
    }

    // ---- jobs ----

    async fn jobs(&self, cmd: JobsCmd) -> Result<ExitCode> {
        let prefix = self.prefix().await?;
        match cmd {
            JobsCmd::List {
                status,
                limit,
                offset,
            } => {
                let mut query = vec![("limit", limit.to_string()), ("offset", offset.to_string())];
                if let Some(s) = status {
                    query.push(("status", s));
                }
                let page: JobPage = self
                    .client
                    .get_query(&format!("{prefix}/jobs"), &query)
                    .await?;
                self.json_or(&page, |p| {
                    let rows: Vec<Vec<String>> = p.jobs.iter().map(job_row).collect();
                    let mut s = output::table(
                        &[
                            "JOB", "STATUS", "MODEL", "PROGRESS", "QUEUE", "NODE", "CREATED",
                            "NOTE",
                        ],
                        &rows,
                    );
                    if p.total > p.offset + p.jobs.len() as u64 {
                        s.push_str(&format!(
                            "{} of {} jobs; more with --offset {}\n",
                            p.jobs.len(),
                            p.total,
                            p.offset + p.jobs.len() as u64
                        ));
                    }
                    s
                })?;
            }
            JobsCmd::Show { id } => {
                let job: JobRecord = self.client.get(&follow::job_path(prefix, &id)).await?;
                self.json_or(&job, job_detail)?;
            }
            JobsCmd::Cancel { id } => {
                let job: JobRecord = self
                    .client
                    .send_json(
                        Method::POST,
                        &format!("{}/cancel", follow::job_path(prefix, &id)),
                        &json!({}),
                    )
                    .await?;
                self.json_or(&job, |j| format!("job {}: {}", j.job_id, j.status.as_str()))?;
            }
            JobsCmd::Follow { id } => return self.follow(prefix, &id).await,
        }
        Ok(ExitCode::SUCCESS)
    }

    // ---- models ----

    async fn models(&self, cmd: ModelsCmd) -> Result<ExitCode> {
        let prefix = self.prefix().await?;
        match cmd {
            ModelsCmd::List => {
                let list: ModelList = self.client.get(&format!("{prefix}/models")).await?;
                self.json_or(&list, |l| {
                    let rows: Vec<Vec<String>> = l
                        .models
                        .iter()
                        .map(|m| {
                            vec![
                                m.name.clone(),
                                m.versions.to_string(),
                                m.latest.version.to_string(),
                                output::percent(m.latest.val_accuracy),
                                m.latest.classes.len().to_string(),
                                output::when(&m.latest.created_at),
                            ]
                        })
                        .collect();
                    output::table(
                        &[
                            "MODEL",
                            "VERSIONS",
                            "LATEST",
                            "VAL ACCURACY",
                            "CLASSES",
                            "CREATED",
                        ],
                        &rows,
                    )
                })?;
            }
            ModelsCmd::Show { name } => {
                let m: ModelDetail = self
                    .client
                    .get(&format!("{prefix}/models/{}", segment(&name)))
                    .await?;
                self.json_or(&m, model_detail)?;
            }
            ModelsCmd::Download {
                name,
                version,
                file,
            } => return self.download(prefix, &name, version, file).await,
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn download(
        &self,
        prefix: &str,
        name: &str,
        version: Option<u32>,
        file: Option<PathBuf>,
    ) -> Result<ExitCode> {
        let m: ModelDetail = self
            .client
            .get(&format!("{prefix}/models/{}", segment(name)))
            .await?;
        let v: &ModelVersion = match version {
            Some(n) => m
                .versions
                .iter()
                .find(|v| v.version == n)
                .ok_or_else(|| Error::msg(format!("model {name} has no version {n}")))?,
            None => m
                .versions
                .iter()
                .max_by_key(|v| v.version)
                .ok_or_else(|| Error::msg(format!("model {name} has no versions")))?,
        };
        let expected_size = v.card.weights_bytes;
        let expected_sha = v.card.weights_sha256.to_ascii_lowercase();
        if expected_sha.is_empty() {
            return Err(Error::msg(format!(
                "the card of {name} v{} carries no digest; nothing to check the download against",
                v.version
            )));
        }
        let dest =
            file.unwrap_or_else(|| PathBuf::from(format!("{name}-v{}.safetensors", v.version)));
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!(
            ".{}.part",
            dest.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| "download".into())
        ));
        let resp = self
            .client
            .send(self.client.request(
                Method::GET,
                &format!(
                    "{prefix}/models/{}/versions/{}/download",
                    segment(name),
                    v.version
                ),
            ))
            .await?;
        let bar = if self.format == Format::Table && std::io::stderr().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(expected_size), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("{name} v{}", v.version));
            bar
        } else {
            ProgressBar::hidden()
        };
        let result = async {
            let mut out = std::fs::File::create(&tmp)
                .map_err(|e| Error::msg(format!("writing {}: {e}", tmp.display())))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| self.client.transport(e))?;
                hasher.update(&chunk);
                out.write_all(&chunk)
                    .map_err(|e| Error::msg(format!("writing {}: {e}", tmp.display())))?;
                size += chunk.len() as u64;
                bar.set_position(size);
            }
            out.sync_all()?;
            let sha = hex::encode(hasher.finalize());
            if expected_size > 0 && size != expected_size {
                return Err(Error::msg(format!(
                    "the download of {name} v{} is {size} bytes, its card says {expected_size}; not kept",
                    v.version
                )));
            }
            if sha != expected_sha {
                return Err(Error::msg(format!(
                    "the download of {name} v{} has SHA-256 {sha}, its card says {expected_sha}; not kept",
                    v.version
                )));
            }
            std::fs::rename(&tmp, &dest)
                .map_err(|e| Error::msg(format!("writing {}: {e}", dest.display())))?;
            Ok((size, sha))
        }
        .await;
        bar.finish_and_clear();
        let (size, sha) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let value = json!({
            "name": name, "version": v.version, "file": dest, "bytes": size, "sha256": sha,
        });
        self.json_or(&value, |_| {
            format!(
                "saved {name} v{} to {} ({}, SHA-256 {sha}, verified)",
                v.version,
                dest.display(),
                output::bytes(size)
            )
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

fn users_table(users: &[User]) -> String {
    let rows: Vec<Vec<String>> = users
        .iter()
        .map(|u| {
            vec![
                u.id.to_string(),
                u.username.clone(),
                u.email.clone(),
                role_name(u).into(),
                u.tokens.to_string(),
                yes_no(u.active),
                output::when(&u.created_at),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "USERNAME", "EMAIL", "ROLE", "TOKENS", "ACTIVE", "CREATED",
        ],
        &rows,
    )
}

/// `GET /admin/api/users/{id}/ledger` as the command line reads it.
#[derive(Debug, Serialize, Deserialize)]
struct LedgerPage {
    entries: Vec<LedgerEntry>,
    total: u64,
    limit: u64,
    offset: u64,
}

fn ledger_table(page: &LedgerPage) -> String {
    let rows: Vec<Vec<String>> = page
        .entries
        .iter()
        .map(|e| {
            vec![
                output::when(&e.at),
                format!("{:?}", e.kind).to_lowercase(),
                format!("{:+}", e.delta),
                e.balance_after.map_or("-".into(), |b| b.to_string()),
                e.job_id.clone().unwrap_or_else(|| "-".into()),
                e.reason.clone(),
            ]
        })
        .collect();
    let mut out = output::table(&["AT", "KIND", "DELTA", "BALANCE", "JOB", "REASON"], &rows);
    if page.total > page.entries.len() as u64 {
        out.push_str(&format!(
            "{} of {} entries; --limit shows more",
            page.entries.len(),
            page.total
        ));
    }
    out
}

fn cluster_tokens_table(tokens: &[ClusterToken]) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.token.clone(),
                yes_no(t.active),
                output::when(&t.created_at),
            ]
        })
        .collect();
    output::table(&["ID", "NAME", "TOKEN", "ACTIVE", "CREATED"], &rows)
}

/// A node's GPUs in a few words: `2x NVIDIA H200 (140 GB)`, or `none`.
fn gpus(n: &ClusterNode) -> String {
    if n.gpu_devices.is_empty() {
        return "none".into();
    }
    let mut groups: BTreeMap<(String, u64), u32> = BTreeMap::new();
    for d in &n.gpu_devices {
        *groups.entry((d.name.clone(), d.memory_gb())).or_default() += 1;
    }
    groups
        .iter()
        .map(|((name, gb), count)| format!("{count}x {name} ({gb} GB)"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn node_state(n: &ClusterNode) -> String {
    let mut s = if n.connected {
        "connected"
    } else {
        "disconnected"
    }
    .to_owned();
    if n.draining {
        s.push_str(", draining");
    }
    s
}

fn node_driver(n: &ClusterNode) -> String {
    match n.driver_preference {
        Some(p) => format!("{} (chosen: {p})", n.driver),
        None => n.driver.to_string(),
    }
}

fn nodes_table(nodes: &ClusterNodes) -> String {
    let rows: Vec<Vec<String>> = nodes
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.hostname.clone(),
                node_state(n),
                node_driver(n),
                gpus(n),
                format!("{}/{}", n.workers_available, n.workers),
                format!("{}/{}", n.active_jobs, n.completed_jobs),
                n.token_name.clone(),
                output::ago(n.last_seen),
            ]
        })
        .collect();
    let s = &nodes.master_stats;
    let mut out = output::table(
        &[
            "HOSTNAME",
            "STATE",
            "DRIVER",
            "GPUS",
            "FREE/WORKERS",
            "ACTIVE/DONE JOBS",
            "TOKEN",
            "LAST SEEN",
        ],
        &rows,
    );
    out.push_str(&format!(
        "{}, {} connected, {}, {}, {} completed\n",
        count(s.total_nodes, "node"),
        s.connected_nodes,
        count(s.total_workers, "worker"),
        count(s.total_active_jobs, "active job"),
        s.total_completed_jobs
    ));
    out
}

/// `1 node`, `2 nodes`.
fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn node_detail(n: &ClusterNode) -> String {
    let mut out = output::fields(&[
        ("hostname", n.hostname.clone()),
        ("state", node_state(n)),
        ("driver", node_driver(n)),
        ("backends", n.gpu_info.backends_list()),
        ("gpus", gpus(n)),
        (
            "driver version",
            n.driver_version.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "workers",
            format!("{} free of {}", n.workers_available, n.workers),
        ),
        (
            "jobs",
            format!("{} active, {} completed", n.active_jobs, n.completed_jobs),
        ),
        ("cpus", n.cpus.to_string()),
        ("memory", format!("{:.1} GB", n.host_memory_gb)),
        ("ip address", n.ip_address.clone()),
        ("token", format!("{} ({})", n.token_name, n.token)),
        ("weight", n.weight.to_string()),
        ("uptime", output::duration(n.uptime_seconds)),
        ("last seen", output::ago(n.last_seen)),
    ]);
    for d in &n.gpu_devices {
        out.push_str(&format!("  {} ({})\n", d.describe(), d.name));
    }
    if !n.processes.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = n
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.status.to_string(),
                    p.model.clone().unwrap_or_else(|| "-".into()),
                    p.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["PROCESS", "STATUS", "MODEL", "REASON"],
            &rows,
        ));
    }
    out
}

fn job_progress(j: &JobSummary) -> String {
    match (j.status, &j.progress, &j.model) {
        (JobStatus::Completed, _, Some(m)) => format!("val {}", output::percent(m.val_accuracy)),
        (JobStatus::Running, Some(p), _) => format!(
            "epoch {}/{} {:.0}%",
            p.epoch,
            p.epochs,
            100.0 * p.step as f64 / p.total_steps.max(1) as f64
        ),
        (JobStatus::Running, None, _) => "starting".into(),
        _ => "-".into(),
    }
}

fn job_note(j: &JobSummary) -> String {
    if let Some(r) = &j.waiting_reason {
        return r.to_string();
    }
    if let Some(e) = &j.error {
        return e.clone();
    }
    if let (JobStatus::Running, Some(p)) = (j.status, &j.progress) {
        return format!(
            "loss {:.4}, {:.0} samples/s, ETA {}",
            p.loss,
            p.samples_per_sec,
            output::duration(p.eta_seconds)
        );
    }
    String::new()
}

fn job_row(j: &JobSummary) -> Vec<String> {
    vec![
        j.job_id.clone(),
        j.status.as_str().into(),
        match &j.model {
            Some(m) => format!("{} v{}", m.name, m.version),
            None => j.output_model.clone(),
        },
        job_progress(j),
        j.queue_position
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        j.node.clone().unwrap_or_else(|| "-".into()),
        output::when(&j.created_at),
        job_note(j),
    ]
}

fn job_detail(j: &JobRecord) -> String {
    let mut pairs = vec![
        ("job", j.job_id.clone()),
        ("status", j.status.as_str().to_owned()),
        ("model", j.output_model.clone()),
        ("dataset", j.train_path.clone()),
        ("driver", j.driver.as_str().to_owned()),
        (
            "params",
            format!(
                "{} epochs, batch {}, learning rate {}, image size {}, validation {}{}{}{}",
                j.params.epochs,
                j.params.batch_size,
                j.params.learning_rate,
                j.params
                    .image_size
                    .map_or_else(|| "from the data".to_owned(), |s| s.to_string()),
                j.params.validation_split,
                if j.params.augment { ", shifts" } else { "" },
                if j.params.hflip { ", flips" } else { "" },
                if j.params.bf16 { ", bf16" } else { "" },
            ),
        ),
        ("user", j.user_id.to_string()),
        ("tokens charged", j.tokens_charged.to_string()),
        ("created", output::when(&j.created_at)),
        ("updated", output::when(&j.updated_at)),
    ];
    if let Some(p) = j.queue_position {
        pairs.push(("queue position", p.to_string()));
    }
    if let Some(r) = &j.waiting_reason {
        pairs.push(("waiting", r.to_string()));
    }
    if let Some(n) = &j.node {
        pairs.push(("node", n.clone()));
    }
    if let Some(p) = &j.progress {
        pairs.push((
            "progress",
            format!(
                "epoch {}/{}, step {}/{}, loss {:.4}, accuracy {}{}, {:.0} samples/s, ETA {}",
                p.epoch,
                p.epochs,
                p.step,
                p.total_steps,
                p.loss,
                output::percent(p.train_accuracy),
                p.val_accuracy
                    .map(|v| format!(", validation {}", output::percent(v)))
                    .unwrap_or_default(),
                p.samples_per_sec,
                output::duration(p.eta_seconds)
            ),
        ));
    }
    if let Some(m) = &j.model {
        pairs.push((
            "result",
            format!(
                "{} version {}, validation accuracy {}",
                m.name,
                m.version,
                output::percent(m.val_accuracy)
            ),
        ));
    }
    if let Some(e) = &j.error {
        pairs.push(("error", e.clone()));
    }
    if j.refunded {
        pairs.push(("refunded", "yes".into()));
    }
    output::fields(&pairs)
}

fn model_detail(m: &ModelDetail) -> String {
    let rows: Vec<Vec<String>> = m
        .versions
        .iter()
        .map(|v| {
            vec![
                v.version.to_string(),
                output::percent(v.val_accuracy),
                v.card.classes.join(","),
                output::bytes(v.card.weights_bytes),
                v.card.weights_sha256.chars().take(16).collect(),
                v.card.node.clone(),
                v.job_id.clone(),
                output::when(&v.created_at),
            ]
        })
        .collect();
    format!(
        "{}: {} versions\n{}",
        m.name,
        m.versions.len(),
        output::table(
            &[
                "VERSION",
                "VAL ACCURACY",
                "CLASSES",
                "SIZE",
                "SHA-256",
                "NODE",
                "JOB",
                "CREATED"
            ],
            &rows
        )
    )
}
