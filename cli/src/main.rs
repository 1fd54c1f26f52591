//! `gantry`: the command line of a Gantry cluster. It talks to the REST API only, with the
//! contract types of `gantry-contracts`.
//!
//! - [`cli`]: the commands and their arguments.
//! - [`config`]: the saved login and where a command goes.
//! - [`client`]: HTTP, and errors a person can read.
//! - [`commands`]: what each command does.
//! - [`follow`]: a job's live events as a progress bar.
//! - [`output`]: tables and JSON.

mod cli;
mod client;
mod commands;
mod config;
mod follow;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gantry: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gantry: {e}");
            ExitCode::FAILURE
        }
    }
}
