//! The registry's command line: serve (the default), or ask a running registry for a cluster
//! token, waiting for one to answer.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::registry::{
    ClusterToken, ClusterTokenList, ClusterTokenQuery, CreateClusterToken,
};
use gantry_contracts::subjects;
use gantry_runtime::{nats, retry, secrets};
use tokio::time::Instant;

/// Gantry's cluster registry.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Ask a running registry (at NATS_URL) to create a cluster token and print it whole.
    CreateToken {
        /// The token's name.
        name: String,
        /// Seconds to wait for a registry to answer.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Generate the NATS server's configuration, every role's key, the auth callout's signing
    /// key and a local CA into DIR (existing keys are kept), and print the configuration's path.
    BusConfig {
        /// Where the files go.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The address the server listens on.
        #[arg(long, default_value = "127.0.0.1:4222")]
        listen: String,
        /// JetStream's storage directory (default: DIR/jetstream).
        #[arg(long)]
        store_dir: Option<std::path::PathBuf>,
        /// Names and addresses the server certificate is valid for (repeatable).
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
        /// Plain TCP instead of TLS.
        #[arg(long)]
        no_tls: bool,
        /// Also make an `inspector` user with every permission (tests, break-glass).
        #[arg(long)]
        inspector: bool,
        /// The server's HTTP monitoring port.
        #[arg(long)]
        http_port: Option<u16>,
    },
    /// Keep a usable cluster token in FILE: reuse the one there while the registry lists it as
    /// active, else create one named NAME and write it there (mode 0600). For deploy/local/up.sh.
    EnsureToken {
        /// The token's name, when one is created.
        name: String,
        /// Where the whole token is kept.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Seconds to wait for a registry to answer.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => {
            gantry_runtime::run_service("gantry-registry", gantry_registry::startup::run).await
        }
        Command::CreateToken { name, wait } => {
            match create_token(&name, Duration::from_secs(wait)).await {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gantry-registry: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::BusConfig {
            dir,
            listen,
            store_dir,
            hosts,
            no_tls,
            inspector,
            http_port,
        } => {
            let setup = gantry_bus::setup::Setup {
                store_dir: store_dir.unwrap_or_else(|| dir.join("jetstream")),
                dir,
                listen,
                hosts,
                tls: !no_tls,
                inspector,
                http_port,
            };
            match gantry_bus::setup::write(&setup) {
                Ok(layout) => {
                    println!("{}", layout.config().display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gantry-registry: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::EnsureToken { name, file, wait } => {
            match ensure_token(&name, &file, Duration::from_secs(wait)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gantry-registry: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn connect(deadline: Instant) -> Result<async_nats::Client, String> {
    let config = gantry_runtime::Config::from_env().map_err(|e| e.to_string())?;
    let client = nats::connect(&config, gantry_contracts::services::REGISTRY)
        .await
        .map_err(|e| format!("cannot reach NATS at {}: {e}", config.nats_url))?;
    // The client connects in the background; wait for it until the deadline.
    retry::until_deadline(
        "connecting to NATS",
        deadline,
        |_| true,
        || async {
            if nats::is_connected(&client) {
                Ok(())
            } else {
                Err(format!("not connected to {}", config.nats_url))
            }
        },
    )
    .await
    .map_err(|e| format!("cannot reach NATS at {}: {e}", config.nats_url))?;
    Ok(client)
}

/// A request to the registry, retried while no registry answers (until `deadline`).
async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    endpoint: &str,
    req: &Req,
    deadline: Instant,
) -> Result<Resp, String> {
    let unavailable = |f: &ServiceFailure| f.code == ErrorCode::Unavailable;
    retry::until_deadline(endpoint, deadline, unavailable, || {
        nats::request::<_, Resp>(client, subjects::registry(endpoint), req)
    })
    .await
    .map_err(|f| format!("{endpoint} failed: {f}"))
}

async fn create_token(name: &str, wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    let client = connect(deadline).await?;
    new_token(&client, name, deadline)
        .await
        .map_err(|e| match e {
            NewToken::NameTaken => format!("a cluster token named {name:?} already exists"),
            NewToken::Failed(e) => e,
        })
}

/// Ask the registry for a new cluster token named `name`; the whole secret.
async fn new_token(
    client: &async_nats::Client,
    name: &str,
    deadline: Instant,
) -> Result<String, NewToken> {
    let req = CreateClusterToken {
        name: name.to_owned(),
    };
    let unavailable = |f: &ServiceFailure| f.code == ErrorCode::Unavailable;
    let endpoint = subjects::registry::TOKENS_CREATE;
    match retry::until_deadline(endpoint, deadline, unavailable, || {
        nats::request::<_, ClusterToken>(client, subjects::registry(endpoint), &req)
    })
    .await
    {
        Ok(token) => Ok(token.token),
        Err(f) if f.code == ErrorCode::Conflict => Err(NewToken::NameTaken),
        Err(f) => Err(NewToken::Failed(format!("{endpoint} failed: {f}"))),
    }
}

async fn ensure_token(name: &str, file: &std::path::Path, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    let client = connect(deadline).await?;
    if let Ok(saved) = std::fs::read_to_string(file) {
        let saved = saved.trim();
        let listed = secrets::listed(&secrets::head(saved));
        let mut query = ClusterTokenQuery {
            limit: Some(gantry_contracts::paging::MAX_LIMIT),
            offset: 0,
        };
        loop {
            let page: ClusterTokenList =
                call(&client, subjects::registry::TOKENS_LIST, &query, deadline).await?;
            if saved.len() == 64 && page.tokens.iter().any(|t| t.active && t.token == listed) {
                return Ok(());
            }
            query.offset += page.tokens.len() as u64;
            if page.tokens.is_empty() || query.offset >= page.total {
                break;
            }
        }
        eprintln!(
            "gantry-registry: the token in {} is no longer active; creating a new one",
            file.display()
        );
    }
    // Names are unique among active tokens: when `name` is taken by a token whose secret this
    // file no longer holds, take the first free `name-2`, `name-3` ...
    for n in 1..=100 {
        let candidate = if n == 1 {
            name.to_owned()
        } else {
            format!("{name}-{n}")
        };
        match new_token(&client, &candidate, deadline).await {
            Ok(token) => {
                if n > 1 {
                    eprintln!("gantry-registry: {name:?} is taken; created {candidate:?}");
                }
                return write_secret(file, &token)
                    .map_err(|e| format!("writing {}: {e}", file.display()));
            }
            Err(NewToken::NameTaken) => continue,
            Err(NewToken::Failed(e)) => return Err(e),
        }
    }
    Err(format!("every name from {name:?} to {name:?}-100 is taken"))
}

/// Why a new token was not made.
enum NewToken {
    /// An active token has the name.
    NameTaken,
    /// Anything else, said.
    Failed(String),
}

fn write_secret(file: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(f, "{secret}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}
