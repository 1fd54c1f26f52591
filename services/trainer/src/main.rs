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
    /// Print one reading of every GPU's live figures (what heartbeats carry) as JSON and exit.
    GpuStats,
    /// Drain this node through the registry and wait until its jobs in flight are handed back
    /// (checkpointed work resumes on another node). For a Kubernetes `preStop` hook: run it with
    /// the trainer's configuration, beside the running trainer.
    Drain {
        /// Seconds to wait for the hand-back before giving up (exit 1).
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
    /// Write the example dataset (generated circles, squares and triangles, an ImageFolder of
    /// a few hundred small images that trains to high accuracy in well under a minute on a CPU)
    /// into DIR, unless DIR already holds something.
    ExampleDataset {
        /// Where to write it, e.g. <data root>/datasets/shapes
        dir: std::path::PathBuf,
        /// Images per class (three classes)
        #[arg(long, default_value_t = EXAMPLE_PER_CLASS)]
        per_class: usize,
    },
}

/// Images per class of the example dataset.
const EXAMPLE_PER_CLASS: usize = 150;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry-trainer: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(cli_main());
    // A training thread still finishing its step (or decoding a large dataset) must not hold the
    // exit: its job was handed back already.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

async fn cli_main() -> ExitCode {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::ExampleDataset { dir, per_class } => example_dataset(&dir, per_class),
        Command::Run => {
            gantry_runtime::run_service("gantry-trainer", gantry_trainer::startup::run).await
        }
        Command::GpuStats => {
            let nvml = gantry_trainer::inventory::open_nvml().ok();
            let inv = gantry_trainer::inventory::detect(nvml.as_ref());
            print_json(&gantry_trainer::health::read(nvml.as_ref(), &inv.gpus))
        }
        Command::Drain { timeout } => {
            let config = match gantry_runtime::Config::from_env() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("gantry-trainer drain: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match gantry_trainer::drain::run(config, std::time::Duration::from_secs(timeout)).await
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gantry-trainer drain: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inventory => {
            let nvml = gantry_trainer::inventory::open_nvml();
            let mut inv = gantry_trainer::inventory::detect(nvml.as_ref().ok());
            if let Err(e) = &nvml {
                inv.notes.push(format!("NVML unavailable: {e}"));
            }
            print_json(&inv)
        }
    }
}

/// Print `value` as pretty JSON on standard output.
fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
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

/// `gantry-trainer example-dataset DIR`: the generated shapes, written once.
fn example_dataset(dir: &std::path::Path, per_class: usize) -> ExitCode {
    use gantry_training::synthetic::{generate, SyntheticSpec};
    let occupied = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        println!("{} already holds a dataset; left as it is", dir.display());
        return ExitCode::SUCCESS;
    }
    let spec = SyntheticSpec {
        per_class,
        ..SyntheticSpec::default()
    };
    match generate(dir, &spec) {
        Ok(report) => {
            println!(
                "wrote the example dataset to {}: {} images of {}",
                dir.display(),
                report.files,
                report.classes.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "gantry-trainer: writing the example dataset to {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}
