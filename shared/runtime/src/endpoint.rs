//! Serving micro-service endpoints, the same way in every service: one call per endpoint names
//! it and its handler; requests are decoded from JSON, handled in tracked tasks under a span that
//! continues the caller's trace, counted in the request metrics, and answered with JSON or a
//! typed [`ServiceFailure`] (in the `Nats-Service-Error` header, counted by `$SRV.STATS`).

use std::future::Future;
use std::time::Duration;

use async_nats::service::{self, Group};
use bytes::Bytes;
use futures::StreamExt;
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::telemetry;

/// Checked before every request of a set of endpoints; an error is the answer.
pub type Gate<S> = fn(&S) -> Result<(), ServiceFailure>;

/// The endpoints of one group, all handled with the same state: add each with
/// [`Endpoints::add`].
pub struct Endpoints<'a, S> {
    group: &'a Group,
    state: S,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    gate: Gate<S>,
}

impl<'a, S> Endpoints<'a, S>
where
    S: Clone + Send + Sync + 'static,
{
    /// Endpoints under `group` whose handlers get a clone of `state`. They stop taking requests
    /// when `shutdown` fires; their handlers run on `tracker` (wait for them with [`drain`]).
    pub fn new(
        group: &'a Group,
        state: S,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        Self {
            group,
            state,
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            gate: |_| Ok(()),
        }
    }

    /// Answer every request with `gate`'s error, without running its handler, while there is one
    /// (a service still starting).
    pub fn gated(self, gate: Gate<S>) -> Self {
        Self { gate, ..self }
    }

    /// Register the endpoint `name` and serve it with `handler`.
    pub async fn add<Req, Resp, E, F, Fut>(
        &self,
        name: &'static str,
        handler: F,
    ) -> anyhow::Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        E: Into<ServiceFailure>,
        F: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        let endpoint = self
            .group
            .endpoint(name)
            .await
            .map_err(|e| anyhow::anyhow!("registering endpoint {name}: {e}"))?;
        let (state, gate) = (self.state.clone(), self.gate);
        self.tracker.spawn(serve(
            endpoint,
            name,
            self.shutdown.clone(),
            self.tracker.clone(),
            move |req: Req| {
                let state = state.clone();
                let handler = handler.clone();
                async move {
                    gate(&state)?;
                    handler(state, req).await.map_err(Into::into)
                }
            },
        ));
        Ok(())
    }
}

impl<S> Endpoints<'_, S>
where
    S: Clone + Send + Sync + 'static,
{
    /// Register the endpoint `name` and serve it with `handler`, whose answer is sent as it is
    /// (bytes it encoded itself) rather than as JSON.
    pub async fn add_raw<Req, E, F, Fut>(
        &self,
        name: &'static str,
        handler: F,
    ) -> anyhow::Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        E: Into<ServiceFailure>,
        F: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
    {
        let endpoint = self
            .group
            .endpoint(name)
            .await
            .map_err(|e| anyhow::anyhow!("registering endpoint {name}: {e}"))?;
        self.spawn_raw(endpoint, name, handler);
        Ok(())
    }

    /// Serve `endpoint` (made by the caller, e.g. on a subject of its own) like
    /// [`Endpoints::add_raw`], counted in the metrics as `name`.
    pub fn spawn_raw<Req, E, F, Fut>(
        &self,
        endpoint: service::endpoint::Endpoint,
        name: &'static str,
        handler: F,
    ) where
        Req: DeserializeOwned + Send + 'static,
        E: Into<ServiceFailure>,
        F: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, E>> + Send + 'static,
    {
        let (state, gate) = (self.state.clone(), self.gate);
        self.tracker.spawn(serve_bytes(
            endpoint,
            name,
            self.shutdown.clone(),
            self.tracker.clone(),
            move |req: Req| {
                let state = state.clone();
                let handler = handler.clone();
                async move {
                    gate(&state)?;
                    handler(state, req).await.map_err(Into::into)
                }
            },
        ));
    }
}

/// Register one endpoint `name` under `group` and serve it with `handler`, which gets a clone of
/// `state` with each request (see [`Endpoints`] to add several).
pub async fn endpoint<S, Req, Resp, E, F, Fut>(
    group: &Group,
    name: &'static str,
    state: &S,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    handler: F,
) -> anyhow::Result<()>
where
    S: Clone + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    E: Into<ServiceFailure>,
    F: Fn(S, Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send + 'static,
{
    Endpoints::new(group, state.clone(), shutdown, tracker)
        .add(name, handler)
        .await
}

/// Serve one endpoint: decode each request's JSON, run `handler` in a task tracked by `tracker`
/// under a span that continues the caller's trace, and answer its JSON or its typed error. Stops
/// taking requests when `shutdown` fires; in-flight handlers finish (wait on `tracker`).
pub async fn serve<Req, Resp, F, Fut>(
    endpoint: service::endpoint::Endpoint,
    name: &'static str,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ServiceFailure>> + Send + 'static,
{
    serve_bytes(endpoint, name, shutdown, tracker, move |req: Req| {
        let answer = handler(req);
        async move {
            let resp = answer.await?;
            serde_json::to_vec(&resp).map(Bytes::from).map_err(|e| {
                ServiceFailure::new(ErrorCode::Internal, format!("encoding reply: {e}"))
            })
        }
    })
    .await
}

/// [`serve`] for a handler that encodes its answer itself.
pub async fn serve_bytes<Req, F, Fut>(
    mut endpoint: service::endpoint::Endpoint,
    name: &'static str,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    Req: DeserializeOwned + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, ServiceFailure>> + Send + 'static,
{
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = endpoint.next() => match r { Some(r) => r, None => break },
        };
        let handler = handler.clone();
        let span = tracing::info_span!(
            "nats.handle",
            otel.name = format!("process {}", request.message.subject),
            otel.kind = "server",
            endpoint = name,
            messaging.system = "nats",
            messaging.destination.name = %request.message.subject,
            messaging.operation.type = "process",
        );
        telemetry::set_parent_from(&span, request.message.headers.as_ref());
        tracker.spawn(
            async move {
                let started = std::time::Instant::now();
                let result = match serde_json::from_slice::<Req>(&request.message.payload) {
                    Ok(req) => handler(req).await,
                    Err(e) => Err(ServiceFailure::new(
                        ErrorCode::BadRequest,
                        format!("malformed request: {e}"),
                    )),
                };
                let outcome = result.as_ref().map_or_else(|f| f.code.as_str(), |_| "ok");
                crate::metrics::NATS_REQUESTS
                    .with_label_values(&[name, outcome])
                    .inc();
                crate::metrics::NATS_REQUEST_SECONDS
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                let answer = match result {
                    Ok(bytes) => Ok(bytes),
                    Err(failure) => {
                        if failure.code == ErrorCode::Internal {
                            tracing::error!(error = %failure.message, "request failed");
                        } else {
                            tracing::debug!(code = %failure.code, "request refused");
                        }
                        Err(service::error::Error {
                            code: failure.code.status() as usize,
                            status: failure.to_string().replace(['\r', '\n'], " "),
                        })
                    }
                };
                if let Err(e) = request.respond(answer).await {
                    tracing::warn!(error = %e, "could not send reply");
                }
            }
            .instrument(span),
        );
    }
}

/// Wait for in-flight handlers, at most `grace`.
pub async fn drain(tracker: &TaskTracker, grace: Duration) {
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("in-flight requests did not finish within the grace period");
    }
}
