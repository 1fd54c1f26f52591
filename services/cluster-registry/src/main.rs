use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use gantry_contracts::error::ErrorCode;
use gantry_contracts::registry::{ClusterToken, CreateClusterToken};
use gantry_contracts::subjects;

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
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Serve) {
        Command::Serve => gantry_runtime::run_service("gantry-registry", gantry_registry::startup::run).await,
        Command::CreateToken { name, wait } => create_token(name, Duration::from_secs(wait)).await,
    }
}

async fn create_token(name: String, wait: Duration) -> ExitCode {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let deadline = Instant::now() + wait;
    let client = loop {
        match async_nats::connect(url.as_str()).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                eprintln!("gantry-registry: cannot reach NATS at {url}: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let subject = subjects::registry(subjects::registry::TOKENS_CREATE);
    loop {
        let req = CreateClusterToken { name: name.clone() };
        match gantry_runtime::nats::request::<_, ClusterToken>(&client, subject.clone(), &req).await {
            Ok(token) => {
                println!("{}", token.token);
                return ExitCode::SUCCESS;
            }
            Err(f) if f.code == ErrorCode::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(f) => {
                eprintln!("gantry-registry: creating the cluster token failed: {f}");
                return ExitCode::FAILURE;
            }
        }
    }
}
