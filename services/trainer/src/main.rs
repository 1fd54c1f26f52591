use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A Gantry trainer node: joins the cluster with GANTRY_CLUSTER_TOKEN and trains its jobs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Join the cluster and work (the default).
    Run,
    /// Print this machine's GPU inventory as JSON and exit.
    Inventory,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => gantry_runtime::run_service("gantry-trainer", gantry_trainer::startup::run).await,
        Command::Inventory => {
            let nvml = gantry_trainer::inventory::open_nvml();
            let mut inv = gantry_trainer::inventory::detect(nvml.as_ref().ok());
            if let Err(e) = &nvml {
                inv.notes.push(format!("NVML unavailable: {e}"));
            }
            match serde_json::to_string_pretty(&inv) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gantry-trainer: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
