//! MongoDB connection. Each service owns one database, `<GANTRY_DB_PREFIX><service>`.

use std::time::Duration;

use anyhow::Context as _;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use crate::Config;

/// Connect lazily (the driver retries server selection) and return the service's database.
/// Fails only on an unparseable URI.
pub async fn connect(config: &Config, service: &str) -> anyhow::Result<Database> {
    let mut options = ClientOptions::parse(&config.mongodb_uri)
        .await
        .context("parsing MONGODB_URI")?;
    options.app_name = Some(format!("gantry-{service}"));
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(3));
    let client = Client::with_options(options).context("building the MongoDB client")?;
    Ok(client.database(&config.database_name(service)))
}

/// Wait until the store answers `ping`, logging while it does not.
pub async fn wait_ready(db: &Database, shutdown: &tokio_util::sync::CancellationToken) -> bool {
    let mut attempt = 0u32;
    loop {
        match ping(db).await {
            Ok(()) => return true,
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt % 10 == 0 {
                    tracing::warn!(error = %e, attempt, "store not reachable yet");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// One `ping` with a short deadline.
pub async fn ping(db: &Database) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(2), db.run_command(doc! { "ping": 1 }))
        .await
        .context("store ping timed out")?
        .context("store ping failed")?;
    Ok(())
}
