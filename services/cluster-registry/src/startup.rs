//! Start-up: connections, endpoints, background work, health, shutdown.
//!
//! Nothing here waits for the store: health and every endpoint are up at once; `/readyz` and
//! the endpoints that need the store answer 503 until it is reachable and the view is restored.

use std::time::Duration;

use gantry_contracts::services;
use gantry_contracts::subjects::{self, registry as ep};
use gantry_runtime::endpoint::{self, Endpoints};
use gantry_runtime::health::{self, Readiness};
use gantry_runtime::{mongo, nats, Config};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jobs::Jobs;
use crate::models::Models;
use crate::registry::Registry;
use crate::store::Store;
use crate::view::Timing;

/// Run until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    gantry_runtime::metrics::init_registry();
    let client = nats::connect(&config, services::REGISTRY).await?;
    let db = mongo::connect(&config, "registry").await?;
    let timing = Timing {
        interval: config.heartbeat_interval.as_secs_f64(),
        misses: config.heartbeat_misses,
        retention: config.node_retention.as_secs_f64(),
    };
    let registry = Registry::new(client.clone(), Store::new(db.clone()), timing);
    registry.listings().set_chunk(config.listing_chunk_bytes);
    let restored = registry.clone();
    let readiness = Readiness::nats(client.clone())
        .with_mongo(db)
        .with_check(move || {
            (!restored.is_restored())
                .then(|| "restoring the cluster view from the store".to_owned())
        });
    let (_addr, health) = health::serve(config.health_addr, readiness, shutdown.clone()).await?;

    let tracker = TaskTracker::new();
    crate::liveness::start(registry.clone(), shutdown.clone(), &tracker).await?;
    crate::callout::start(&registry, &config, &shutdown, &tracker).await?;

    let service = nats::start_service(
        &client,
        services::REGISTRY,
        "Cluster tokens, nodes and driver preferences",
    )
    .await?;
    let group = service.group(subjects::REGISTRY_V1);
    let endpoints = Endpoints::new(&group, registry.clone(), &shutdown, &tracker);
    endpoints
        .add(ep::TOKENS_LIST, |r: Registry, q| async move {
            r.list_tokens(q).await
        })
        .await?;
    endpoints
        .add(ep::TOKENS_CREATE, |r: Registry, q| async move {
            r.create_token(q).await
        })
        .await?;
    endpoints
        .add(ep::TOKENS_REVOKE, |r: Registry, q| async move {
            r.revoke_token(q).await
        })
        .await?;
    endpoints
        .add(
            ep::REGISTER,
            |r: Registry, q| async move { r.register(q).await },
        )
        .await?;
    endpoints
        .add_raw(ep::NODES, |r: Registry, q| async move {
            r.cluster_nodes(q).await
        })
        .await?;
    endpoints
        .add_raw(ep::CLIENTS, |r: Registry, q| async move {
            r.cluster_clients(q).await
        })
        .await?;
    endpoints
        .add_raw(
            ep::BODY,
            |r: Registry, q| async move { r.listing_body(q).await },
        )
        .await?;
    // The rest of large bodies, from this replica only.
    let chunks = group
        .endpoint_builder()
        .name("listing_chunk")
        .add(format!("listing.chunk.{}", registry.listings().instance()))
        .await
        .map_err(|e| anyhow::anyhow!("registering the listing chunk endpoint: {e}"))?;
    endpoints.spawn_raw(chunks, "listing.chunk", |r: Registry, q| async move {
        r.listing_chunk(q).await
    });
    endpoints
        .add(ep::SET_DRIVER, |r: Registry, q| async move {
            r.set_driver(q).await
        })
        .await?;
    endpoints
        .add(ep::DRAIN, |r: Registry, q| async move { r.drain(q).await })
        .await?;
    serve_jobs(&group, &registry, &config, &shutdown, &tracker).await?;
    serve_drains(&registry, &shutdown, &tracker).await?;
    tracing::info!("registry endpoints up");

    shutdown.cancelled().await;
    // Bounded: with NATS gone, stopping the service and flushing would wait for a reconnect
    // that may never come, and SIGTERM must still stop the process.
    nats::leave(service, &client).await;
    endpoint::drain(&tracker, Duration::from_secs(10)).await;
    let _ = health.await;
    Ok(())
}

/// Register the job and model endpoints and start the event consumers.
async fn serve_jobs(
    group: &async_nats::service::Group,
    registry: &Registry,
    config: &Config,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    use gantry_contracts::jobs::subjects as ep;
    let jobs = Jobs::new(registry.clone());
    crate::events::start(
        jobs.clone(),
        config.event_max_deliver,
        gantry_runtime::jetstream::BucketLimits::from_config(config),
        shutdown.clone(),
        tracker,
    )
    .await;
    crate::reconcile::start(
        jobs.clone(),
        config.reconcile_interval,
        config.reconcile_grace,
        config.dataset_retention,
        shutdown.clone(),
        tracker,
    );
    crate::queue::start(
        registry.client().clone(),
        config.heartbeat_interval,
        shutdown.clone(),
        tracker,
    );
    let models = Endpoints::new(group, jobs.models().clone(), shutdown, tracker);
    let jobs = Endpoints::new(group, jobs, shutdown, tracker);
    jobs.add(
        ep::JOBS_CREATE,
        |j: Jobs, q| async move { j.create(q).await },
    )
    .await?;
    jobs.add(ep::JOBS_GET, |j: Jobs, q| async move { j.get(q).await })
        .await?;
    jobs.add(ep::JOBS_LIST, |j: Jobs, q| async move { j.list(q).await })
        .await?;
    jobs.add(
        ep::JOBS_RESULTS,
        |j: Jobs, q| async move { j.results(q).await },
    )
    .await?;
    jobs.add(
        ep::JOBS_CANCEL,
        |j: Jobs, q| async move { j.cancel(q).await },
    )
    .await?;
    jobs.add(ep::JOBS_FAIL, |j: Jobs, q| async move { j.fail(q).await })
        .await?;
    models
        .add(
            ep::MODELS_LIST,
            |m: Models, q| async move { m.list(q).await },
        )
        .await?;
    models
        .add(ep::MODELS_GET, |m: Models, q| async move { m.get(q).await })
        .await?;
    Ok(())
}

/// Serve the nodes' own drain requests (`gantry.node.<id>.drain`, one replica each: a queue
/// group), answering like an endpoint: JSON, or the failure in the `Nats-Service-Error` header.
async fn serve_drains(
    registry: &Registry,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use gantry_contracts::error::{ErrorCode, ServiceFailure};
    use gantry_contracts::registry::DrainSelf;

    let mut requests = registry
        .client()
        .queue_subscribe(subjects::NODE_DRAINS, services::REGISTRY.to_owned())
        .await?;
    let (registry, shutdown, handlers) = (registry.clone(), shutdown.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = requests.next() => match m { Some(m) => m, None => break },
            };
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let registry = registry.clone();
            handlers.spawn(async move {
                // gantry.node.<id>.drain: the subject names the node, whatever the payload says.
                let node_id = msg.subject.split('.').nth(2).unwrap_or_default().to_owned();
                let result = if !registry.is_restored() {
                    Err(ServiceFailure::new(
                        ErrorCode::Unavailable,
                        "the registry is restoring its view of the cluster",
                    ))
                } else {
                    match serde_json::from_slice::<DrainSelf>(&msg.payload) {
                        Ok(req) => registry
                            .drain_self(&node_id, req)
                            .await
                            .map_err(ServiceFailure::from),
                        Err(e) => Err(ServiceFailure::new(
                            ErrorCode::BadRequest,
                            format!("malformed request: {e}"),
                        )),
                    }
                };
                let client = registry.client();
                let sent = match result.map(|r| serde_json::to_vec(&r)) {
                    Ok(Ok(body)) => client.publish(reply, body.into()).await,
                    Ok(Err(e)) => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(
                            async_nats::service::NATS_SERVICE_ERROR,
                            format!("internal: encoding the reply: {e}").as_str(),
                        );
                        client.publish_with_headers(reply, headers, "".into()).await
                    }
                    Err(failure) => {
                        let mut headers = async_nats::HeaderMap::new();
                        let text = format!("{}: {}", failure.code.as_str(), failure.message)
                            .replace(['\r', '\n'], " ");
                        headers.insert(async_nats::service::NATS_SERVICE_ERROR, text.as_str());
                        client.publish_with_headers(reply, headers, "".into()).await
                    }
                };
                if let Err(e) = sent {
                    tracing::warn!(node_id, error = %e, "could not answer a drain request");
                }
            });
        }
    });
    Ok(())
}
