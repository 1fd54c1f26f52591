//! NATS: connect with retry, traced requests and publishes, registering and leaving as a micro
//! service. Its endpoints are served by [`crate::endpoint`].

use std::time::Duration;

use anyhow::Context;

use async_nats::service::{self, ServiceExt};
use async_nats::{Client, ConnectOptions, Event, HeaderMap};
use bytes::Bytes;
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

use crate::{telemetry, Config};

/// How long a request waits for its reply by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect to `NATS_URL` as the service `name` (its role's nkey from `GANTRY_NATS_NKEY_FILE`,
/// its role's inbox prefix, TLS when `GANTRY_NATS_CA_FILE` is set). Returns at once: while the
/// server is down the client keeps trying in the background (forever), and every connect,
/// disconnect and reconnect is logged.
pub async fn connect(config: &Config, name: &str) -> anyhow::Result<Client> {
    let mut options = options(config, name)?;
    if let Some(role) = gantry_bus::Role::of_service(name) {
        options = options.custom_inbox_prefix(gantry_bus::permissions::inbox_prefix(role));
    }
    if let Some(path) = &config.nats_nkey_file {
        let seed = std::fs::read_to_string(path)
            .with_context(|| format!("reading GANTRY_NATS_NKEY_FILE {}", path.display()))?;
        options = options.nkey(seed.trim().to_owned());
    }
    Ok(options.connect(config.nats_url.as_str()).await?)
}

/// Connect as the node `hostname`, with nothing but its cluster token: the registry's auth
/// callout admits it with the permissions of that node alone. The [`Refusals`] count the
/// server's authorization violations in a row (an unknown or revoked token, or no registry to
/// ask), so the caller can give up.
pub async fn connect_node(
    config: &Config,
    hostname: &str,
    token: &str,
) -> anyhow::Result<(Client, Refusals)> {
    let refusals = Refusals::default();
    let seen = refusals.clone();
    let options = options_with(config, hostname, move |event: &Event| match event {
        Event::Connected => seen.reset(),
        Event::ServerError(async_nats::ServerError::AuthorizationViolation) => seen.add(),
        Event::ClientError(e) if e.to_string().contains("authorization violation") => seen.add(),
        _ => {}
    })?
    .token(token.to_owned())
    .custom_inbox_prefix(gantry_bus::permissions::node_inbox(token, hostname));
    Ok((options.connect(config.nats_url.as_str()).await?, refusals))
}

/// Authorization violations in a row on one connection.
#[derive(Clone, Default)]
pub struct Refusals {
    count: std::sync::Arc<std::sync::atomic::AtomicU32>,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl Refusals {
    fn add(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn reset(&self) {
        self.count.store(0, std::sync::atomic::Ordering::Release);
    }

    /// Wait until the server refused the connection `n` times in a row.
    pub async fn reached(&self, n: u32) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(std::sync::atomic::Ordering::Acquire) >= n {
                return;
            }
            changed.await;
        }
    }
}

/// Connect with an nkey seed file (the registry's system-account connection, a command line).
pub async fn connect_with_seed(
    config: &Config,
    name: &str,
    seed_file: &std::path::Path,
    inbox_prefix: &str,
) -> anyhow::Result<Client> {
    let seed = std::fs::read_to_string(seed_file)
        .with_context(|| format!("reading {}", seed_file.display()))?;
    let options = options(config, name)?
        .nkey(seed.trim().to_owned())
        .custom_inbox_prefix(inbox_prefix);
    Ok(options.connect(config.nats_url.as_str()).await?)
}

fn options(config: &Config, name: &str) -> anyhow::Result<ConnectOptions> {
    options_with(config, name, |_| {})
}

/// Connection options; `also` sees every event after it is logged.
fn options_with(
    config: &Config,
    name: &str,
    also: impl Fn(&Event) + Send + Sync + 'static,
) -> anyhow::Result<ConnectOptions> {
    let also = std::sync::Arc::new(also);
    let mut options = ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(REQUEST_TIMEOUT))
        .event_callback(move |event| {
            let also = also.clone();
            async move {
                match &event {
                    Event::Connected => tracing::info!("connected to NATS"),
                    Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                    Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
                    Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
                    other => tracing::info!(event = %other, "NATS event"),
                }
                also(&event);
            }
        });
    if let Some(ca) = &config.nats_ca_file {
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &config.nats_client_cert {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
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
    request_within(client, subject, req, REQUEST_TIMEOUT).await
}

/// [`request`], waiting up to `timeout` for the reply (work that takes longer than a lookup,
/// such as classifying images on a node).
pub async fn request_within<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    subject: String,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ServiceFailure> {
    let payload = serde_json::to_vec(req)
        .map_err(|e| ServiceFailure::new(ErrorCode::Internal, format!("encoding request: {e}")))?;
    let reply = request_bytes(client, subject.clone(), payload.into(), timeout).await?;
    serde_json::from_slice(&reply).map_err(|e| {
        ServiceFailure::new(
            ErrorCode::Internal,
            format!("undecodable reply from {subject}: {e}"),
        )
    })
}

/// Send `payload` as it is and return the reply's bytes as they are (an endpoint that answers
/// more than JSON, such as a listing's pre-serialized body); a service error is the `Err`.
pub async fn request_bytes(
    client: &Client,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<Bytes, ServiceFailure> {
    let span = tracing::info_span!(
        "nats.request",
        otel.name = format!("send {subject}"),
        otel.kind = "client",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.operation.type = "send",
        messaging.operation.name = "request",
    );
    async move {
        let request = async_nats::Request::new()
            .headers(traced_headers())
            .payload(payload)
            .timeout(Some(timeout));
        let reply = client
            .send_request(subject.clone(), request)
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
        Ok(reply.payload)
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
