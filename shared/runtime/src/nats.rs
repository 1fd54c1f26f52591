//! NATS: connect with retry, traced requests and publishes, registering and leaving as a micro
//! service. Its endpoints are served by [`crate::endpoint`].

use std::time::Duration;

use async_nats::service::{self, ServiceExt};
use async_nats::{Client, ConnectOptions, Event, HeaderMap};
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::{telemetry, Config};

/// How long a request waits for its reply by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to `NATS_URL`. Returns at once: while the server is down the client keeps trying in
/// the background (forever), and every connect, disconnect and reconnect is logged.
pub async fn connect(config: &Config, name: &str) -> anyhow::Result<Client> {
    let client = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(|event| async move {
            match event {
                Event::Connected => tracing::info!("connected to NATS"),
                Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
                Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(config.nats_url.as_str())
        .await?;
    Ok(client)
}

/// True while the connection is up.
pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Register as a NATS micro service, visible in `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS`.
pub async fn start_service(
    client: &Client,
    name: &str,
    description: &str,
) -> anyhow::Result<service::Service> {
    client
        .service_builder()
        .description(description)
        .start(name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("registering micro service {name}: {e}"))
}

/// Headers carrying the current trace context.
pub fn traced_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    telemetry::inject(&mut headers);
    headers
}

/// Publish `msg` as JSON with the trace context.
pub async fn publish<T: Serialize>(
    client: &Client,
    subject: String,
    msg: &T,
) -> anyhow::Result<()> {
    let payload = serde_json::to_vec(msg)?;
    client
        .publish_with_headers(subject, traced_headers(), payload.into())
        .await?;
    Ok(())
}

/// Send a JSON request to a service endpoint and decode its JSON reply. A service error comes
/// back as its [`ServiceFailure`]; no responders or a timeout as [`ErrorCode::Unavailable`].
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: String,
    req: &Req,
) -> Result<Resp, ServiceFailure> {
    let span = tracing::info_span!("nats.request", subject = %subject, otel.kind = "client");
    async move {
        let payload = serde_json::to_vec(req).map_err(|e| {
            ServiceFailure::new(ErrorCode::Internal, format!("encoding request: {e}"))
        })?;
        let reply = client
            .request_with_headers(subject.clone(), traced_headers(), payload.into())
            .await
            .map_err(|e| {
                use async_nats::client::RequestErrorKind;
                let what = match e.kind() {
                    RequestErrorKind::NoResponders => "no service is answering",
                    RequestErrorKind::TimedOut => "the service did not answer in time",
                    RequestErrorKind::MaxPayloadExceeded => "the request is too large",
                    RequestErrorKind::InvalidSubject => "the subject is invalid",
                    _ => "the message bus is unreachable",
                };
                ServiceFailure::new(ErrorCode::Unavailable, format!("{what} ({subject})"))
            })?;
        if let Some(headers) = &reply.headers {
            if let Some(text) = headers.get(service::NATS_SERVICE_ERROR) {
                return Err(ServiceFailure::from_header(text.as_str()));
            }
        }
        serde_json::from_slice(&reply.payload).map_err(|e| {
            ServiceFailure::new(
                ErrorCode::Internal,
                format!("undecodable reply from {subject}: {e}"),
            )
        })
    }
    .instrument(span)
    .await
}

/// Leave NATS at shutdown: stop the micro service (its endpoints stop taking requests) and flush
/// what is pending, each bounded so that a server that is gone cannot hold up the exit.
pub async fn leave(service: service::Service, client: &Client) {
    let _ = tokio::time::timeout(Duration::from_secs(2), service.stop()).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
}
