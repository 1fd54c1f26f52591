//! # Gantry runtime
//!
//! What every service needs and should do the same way: read its configuration, start telemetry,
//! connect to NATS and MongoDB, serve health, and shut down cleanly.
//!
//! ## Layout
//! - [`config`]: every environment variable of DESIGN's list, parsed once, errors naming it.
//! - [`telemetry`]: tracing subscriber (JSON logs), OTLP export, W3C propagation over NATS headers.
//! - [`nats`]: connect with retry, traced request/publish, joining and leaving as a micro service.
//! - [`endpoint`]: serving micro-service endpoints: decode, trace, count, typed errors.
//! - [`jetstream`]: the JetStream streams, job consumers and object stores, ensured at start-up.
//! - [`retry`]: trying again with growing waits until something is ready.
//! - [`secrets`]: generated secrets and tokens, their stored digests, argon2id passwords.
//! - [`dataset`]: dataset snapshots (deterministic tar, named by SHA-256).
//! - [`events`]: publishing job events on the event stream, traced, acked, retried.
//! - [`mongo`]: connect, per-service database names, counters.
//! - [`shutdown`]: SIGINT/SIGTERM into a cancellation token.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: the Prometheus metrics every service exports.

pub mod config;
pub mod dataset;
pub mod endpoint;
pub mod events;
pub mod health;
pub mod jetstream;
pub mod metrics;
pub mod mongo;
pub mod nats;
pub mod retry;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;

pub use config::{Config, ConfigError, Variable, VARIABLES};

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// The whole of a service's `main`: start telemetry, read the configuration (a bad value exits
/// with code 2 and a message naming the variable), run `serve` until SIGINT/SIGTERM cancels its
/// token, and exit 0 when it returns cleanly.
pub async fn run_service<F, Fut>(name: &'static str, serve: F) -> ExitCode
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let telemetry = telemetry::init(name);
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "bad configuration");
            eprintln!("{name}: configuration error: {e}");
            telemetry.shutdown().await;
            return ExitCode::from(2);
        }
    };
    let shutdown = shutdown::on_signal();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "{name} starting");
    let code = match serve(config, shutdown).await {
        Ok(()) => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The spans of the last requests leave before the process does.
    telemetry.shutdown().await;
    code
}
