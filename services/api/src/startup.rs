//! Start-up: NATS, the HTTP app, shutdown.

use std::time::Duration;

use gantry_contracts::services;
use gantry_runtime::health::Readiness;
use gantry_runtime::{nats, Config};
use poem::listener::TcpListener;
use poem::Server;

use crate::app;
use crate::state::AppState;
use tokio_util::sync::CancellationToken;

/// Run until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    gantry_runtime::metrics::init_api();
    let client = nats::connect(&config, services::API).await?;
    let readiness = Readiness::nats(client.clone());
    let service = nats::start_service(
        &client,
        services::API,
        "HTTP edge of the admin and user API",
    )
    .await?;

    let state = AppState::new(&config, client.clone()).await?;
    let js = async_nats::jetstream::new(client.clone());
    {
        let (js, shutdown) = (js.clone(), shutdown.clone());
        let limits = gantry_runtime::jetstream::BucketLimits::from_config(&config);
        tokio::spawn(async move {
            gantry_runtime::jetstream::ensure_with_retry(&js, &limits, &shutdown).await
        });
    }
    let app = app::build(
        state,
        readiness,
        config.public_url.clone(),
        config.train_hold,
    );
    tracing::info!(addr = %config.http_addr, "api listening");
    Server::new(TcpListener::bind(config.http_addr))
        .run_with_graceful_shutdown(
            app,
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(10)),
        )
        .await?;
    nats::leave(service, &client).await;
    Ok(())
}
