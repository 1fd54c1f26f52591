//! Start-up: connections, endpoints, health, shutdown.

use std::time::Duration;

use gantry_contracts::services;
use gantry_runtime::health::{self, Readiness};
use gantry_runtime::{mongo, nats, Config};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Run until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = nats::connect(&config, services::REGISTRY).await?;
    let db = mongo::connect(&config, "registry").await?;
    let readiness = Readiness::nats(client.clone()).with_mongo(db.clone());
    let (_addr, health) = health::serve(config.health_addr, readiness, shutdown.clone()).await?;

    let service = nats::start_service(&client, services::REGISTRY, "Cluster tokens, nodes and driver preferences").await?;
    let tracker = TaskTracker::new();

    shutdown.cancelled().await;
    let _ = service.stop().await;
    nats::drain(&tracker, Duration::from_secs(10)).await;
    let _ = client.flush().await;
    let _ = health.await;
    Ok(())
}
