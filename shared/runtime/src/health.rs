//! `/healthz` (the process is alive), `/readyz` (its dependencies answer) and `/metrics`
//! (Prometheus text). The api mounts [`add_routes`] on its HTTP port; other services [`serve`]
//! them on `GANTRY_HEALTH_ADDR`.

use std::net::SocketAddr;
use std::sync::Arc;

use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::{Data, Json};
use poem::{get, handler, EndpointExt, IntoResponse, Response, Route, Server};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    nats: Option<async_nats::Client>,
    mongo: Option<mongodb::Database>,
    extra: Option<Arc<dyn Fn() -> Option<String> + Send + Sync>>,
}

impl Readiness {
    /// Ready when NATS is connected.
    pub fn nats(client: async_nats::Client) -> Self {
        Self {
            nats: Some(client),
            ..Default::default()
        }
    }

    /// Also require the store to answer `ping`.
    pub fn with_mongo(mut self, db: mongodb::Database) -> Self {
        self.mongo = Some(db);
        self
    }

    /// Also require `check` to return `None` (`Some(reason)` means not ready).
    pub fn with_check(
        mut self,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.extra = Some(Arc::new(check));
        self
    }

    /// `None` when ready, else why not.
    pub async fn check(&self) -> Option<String> {
        if let Some(client) = &self.nats {
            if !crate::nats::is_connected(client) {
                return Some(format!("nats: {}", client.connection_state()));
            }
        }
        if let Some(db) = &self.mongo {
            if let Err(e) = crate::mongo::ping(db).await {
                return Some(format!("store: {e:#}"));
            }
        }
        if let Some(extra) = &self.extra {
            if let Some(reason) = extra() {
                return Some(reason);
            }
        }
        None
    }
}

#[handler]
fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[handler]
async fn readyz(Data(readiness): Data<&Readiness>) -> Response {
    match readiness.check().await {
        None => Json(json!({ "status": "ready" })).into_response(),
        Some(reason) => Json(json!({ "status": "unavailable", "reason": reason }))
            .with_status(StatusCode::SERVICE_UNAVAILABLE)
            .with_header("Retry-After", "2")
            .into_response(),
    }
}

#[handler]
fn metrics() -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}

/// Add `/healthz`, `/readyz` and `/metrics` to a larger app's routes.
pub fn add_routes(route: Route, readiness: Readiness) -> Route {
    route
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz).data(readiness))
        .at("/metrics", get(metrics))
}

/// The paths [`add_routes`] serves.
pub const PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Bind `addr` (port 0 picks a free one), log and return the bound address, and serve until
/// `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let acceptor = TcpListener::bind(addr).into_acceptor().await?;
    let bound = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .unwrap_or(addr);
    tracing::info!(addr = %bound, "health server listening");
    let app = add_routes(Route::new(), readiness);
    let handle = tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
            .await;
    });
    Ok((bound, handle))
}
