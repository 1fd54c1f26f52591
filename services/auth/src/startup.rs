//! Start-up: connections, endpoints, health, background work, shutdown.
//!
//! Nothing here waits for the store: the health server and every endpoint come up at once, and
//! a background task creates the indexes and the first admin when the store answers. Until then
//! `/readyz` says why not and requests are answered as unavailable.

use std::future::Future;
use std::time::Duration;

use async_nats::service::Group;
use gantry_contracts::error::ServiceFailure;
use gantry_contracts::services;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_runtime::health::{self, Readiness};
use gantry_runtime::{mongo, nats, Config};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Settings};
use crate::bootstrap::{self, FirstAdmin};
use crate::error::AuthResult;
use crate::store::Store;
use crate::{credits, sessions, tokens, users, verify};

/// How often expired sessions, old login failures and settled ledger marks are cleaned up.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Register `name` under `gantry.auth.v1` and serve it with `handler` (refused as unavailable
/// until start-up is done).
async fn endpoint<Req, Resp, F, Fut>(
    group: &Group,
    name: &'static str,
    app: &App,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    handler: F,
) -> anyhow::Result<()>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(App, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = AuthResult<Resp>> + Send + 'static,
{
    let endpoint = group
        .endpoint(name)
        .await
        .map_err(|e| anyhow::anyhow!("registering endpoint {}: {e}", subjects::auth(name)))?;
    let app = app.clone();
    tokio::spawn(nats::serve(
        endpoint,
        name,
        shutdown.clone(),
        tracker.clone(),
        move |req: Req| {
            let app = app.clone();
            let handler = handler.clone();
            async move {
                app.ensure_started().map_err(ServiceFailure::from)?;
                handler(app, req).await.map_err(ServiceFailure::from)
            }
        },
    ));
    Ok(())
}

/// Wait for the store, then create indexes and the first admin; retry until it works.
async fn start_when_store_answers(app: App, first: FirstAdmin, shutdown: CancellationToken) {
    let mut failures = 0u32;
    let mut next_warning = 1u32;
    loop {
        if !mongo::wait_ready(&app.store().db, &shutdown).await {
            return;
        }
        match bootstrap::prepare(&app, &first).await {
            Ok(()) => {
                app.set_problem(None);
                app.mark_started();
                tracing::info!("store ready: indexes and first admin in place");
                return;
            }
            Err(e) => {
                failures += 1;
                let reason = format!("{e:#}");
                if failures >= next_warning {
                    tracing::warn!(error = %reason, failures, "start-up work failed; retrying");
                    next_warning = failures + 10;
                }
                app.set_problem(Some(reason));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
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
    let (s, t) = (&shutdown, &tracker);
    endpoint(&v1, ep::VERIFY, &app, s, t, verify::verify).await?;
    endpoint(&v1, ep::LOGIN, &app, s, t, sessions::login).await?;
    endpoint(&v1, ep::LOGOUT, &app, s, t, sessions::logout).await?;
    endpoint(&v1, ep::USERS_LIST, &app, s, t, users::list).await?;
    endpoint(&v1, ep::USERS_GET, &app, s, t, users::get).await?;
    endpoint(&v1, ep::USERS_CREATE, &app, s, t, users::create).await?;
    endpoint(&v1, ep::USERS_UPDATE, &app, s, t, users::update).await?;
    endpoint(&v1, ep::TOKENS_LIST, &app, s, t, tokens::list).await?;
    endpoint(&v1, ep::TOKENS_CREATE, &app, s, t, tokens::create).await?;
    endpoint(&v1, ep::TOKENS_REVOKE, &app, s, t, tokens::revoke).await?;
    endpoint(&v1, ep::CREDITS_CHARGE, &app, s, t, credits::charge).await?;
    endpoint(&v1, ep::CREDITS_REFUND, &app, s, t, credits::refund).await?;

    let background = TaskTracker::new();
    background.spawn(start_when_store_answers(
        app.clone(),
        first,
        shutdown.clone(),
    ));
    background.spawn(sweep(app.clone(), shutdown.clone()));

    shutdown.cancelled().await;
    nats::leave(service, &client).await;
    nats::drain(&tracker, Duration::from_secs(10)).await;
    background.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), background.wait()).await;
    let _ = health.await;
    Ok(())
}
