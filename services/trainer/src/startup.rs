//! Start-up: connections, health, shutdown.

use gantry_contracts::services;
use gantry_runtime::health::{self, Readiness};
use gantry_runtime::{nats, Config};
use tokio_util::sync::CancellationToken;

/// Run until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = nats::connect(&config, services::TRAINER).await?;
    let readiness = Readiness::nats(client.clone());
    let (_addr, health) = health::serve(config.health_addr, readiness, shutdown.clone()).await?;
    let service = nats::start_service(&client, services::TRAINER, "Trains jobs on this machine's devices").await?;

    shutdown.cancelled().await;
    let _ = service.stop().await;
    let _ = client.flush().await;
    let _ = health.await;
    Ok(())
}
