//! Start-up: connections, endpoints, health, background work, shutdown.
//!
//! Nothing here waits for the store: the health server and every endpoint come up at once, and
//! a background task creates the indexes and the first admin when the store answers. Until then
//! `/readyz` says why not and requests are answered as unavailable.

use std::time::Duration;

use gantry_contracts::error::ServiceFailure;
use gantry_contracts::services;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_runtime::endpoint::{self, Endpoints};
use gantry_runtime::health::{self, Readiness};
use gantry_runtime::{mongo, nats, retry, Config};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Settings};
use crate::bootstrap::{self, FirstAdmin};
use crate::store::Store;
use crate::{credits, ledger, sessions, tokens, users, verify};

/// How often expired sessions, old login failures and settled ledger marks are cleaned up.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Wait for the store, then create indexes and the first admin; retry until it works.
async fn start_when_store_answers(app: App, first: FirstAdmin, shutdown: CancellationToken) {
    let started = retry::until_ready("start-up work", &shutdown, || async {
        mongo::ping(&app.store().db).await?;
        bootstrap::prepare(&app, &first)
            .await
            .inspect_err(|e| app.set_problem(Some(format!("{e:#}"))))
    })
    .await;
    if started.is_some() {
        app.set_problem(None);
        app.mark_started();
        tracing::info!("store ready: indexes and first admin in place");
    }
}

/// Clean up what expires, once a minute, on every replica (each step is idempotent).
async fn sweep(app: App, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        if !app.started() {
            continue;
        }
        if let Err(e) = app
            .store()
            .sweep_expired(app.settings().failure_window)
            .await
        {
            tracing::warn!(error = format!("{e:#}"), "sweeping expired sessions failed");
        }
        if let Err(e) = credits::settle(app.store(), crate::store::now_ms()).await {
            tracing::warn!(error = format!("{e:#}"), "settling the ledger failed");
        }
    }
}

/// Run until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = Settings::from_config(&config);
    let first = FirstAdmin::from_config(&config)?;
    let client = nats::connect(&config, services::AUTH).await?;
    let db = mongo::connect(&config, "auth").await?;
    let app = App::new(Store::new(db.clone()), client.clone(), settings);

    let ready_app = app.clone();
    let readiness = Readiness::nats(client.clone())
        .with_mongo(db.clone())
        .with_check(move || ready_app.not_ready_reason());
    let (_addr, health) = health::serve(config.health_addr, readiness, shutdown.clone()).await?;

    let service = nats::start_service(
        &client,
        services::AUTH,
        "Users, sessions, API tokens and credits",
    )
    .await?;
    let tracker = TaskTracker::new();
    let v1 = service.group(subjects::AUTH_V1);
    // Until the indexes exist, unique rules would not hold: refuse work as unavailable.
    let endpoints = Endpoints::new(&v1, app.clone(), &shutdown, &tracker)
        .gated(|app: &App| app.ensure_started().map_err(ServiceFailure::from));
    endpoints.add(ep::VERIFY, verify::verify).await?;
    endpoints.add(ep::LOGIN, sessions::login).await?;
    endpoints.add(ep::LOGOUT, sessions::logout).await?;
    endpoints.add(ep::USERS_LIST, users::list).await?;
    endpoints.add(ep::USERS_GET, users::get).await?;
    endpoints.add(ep::USERS_CREATE, users::create).await?;
    endpoints.add(ep::USERS_UPDATE, users::update).await?;
    endpoints.add(ep::USERS_DELETE, users::delete).await?;
    endpoints.add(ep::USERS_LEDGER, ledger::ledger).await?;
    endpoints.add(ep::TOKENS_LIST, tokens::list).await?;
    endpoints.add(ep::TOKENS_CREATE, tokens::create).await?;
    endpoints.add(ep::TOKENS_REVOKE, tokens::revoke).await?;
    endpoints.add(ep::CREDITS_CHARGE, credits::charge).await?;
    endpoints.add(ep::CREDITS_REFUND, credits::refund).await?;
    endpoints
        .add(ep::CREDITS_UNSETTLED, credits::unsettled)
        .await?;

    let background = TaskTracker::new();
    background.spawn(start_when_store_answers(
        app.clone(),
        first,
        shutdown.clone(),
    ));
    background.spawn(sweep(app.clone(), shutdown.clone()));

    shutdown.cancelled().await;
    nats::leave(service, &client).await;
    endpoint::drain(&tracker, Duration::from_secs(10)).await;
    background.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), background.wait()).await;
    let _ = health.await;
    Ok(())
}
