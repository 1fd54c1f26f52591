//! The NATS auth callout: a node connects with nothing but its cluster token (and its name as
//! the connection name); the server asks here, and the registry answers with a user that may
//! use that node's subjects alone, or a refusal. Revoking a token disconnects its nodes through
//! the server's system account ([`disconnect`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::Client;
use futures::StreamExt;
use gantry_bus::callout::{self, AuthRequest};
use gantry_bus::permissions::{self, Permissions};
use gantry_contracts::registry::NodeName;
use gantry_runtime::Config;
use nkeys::KeyPair;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::RegistryError;
use crate::kick::token_user_prefix;
use crate::registry::Registry;
use crate::tokens;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

struct Callout {
    registry: Registry,
    issuer: KeyPair,
    session: Duration,
}

/// Serve the callout (when `GANTRY_CALLOUT_ISSUER_FILE` is set) and connect to the system
/// account (when `GANTRY_NATS_SYSTEM_NKEY_FILE` is set), until `shutdown`.
pub async fn start(
    registry: &Registry,
    config: &Config,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    if let Some(path) = &config.nats_system_nkey_file {
        let system = gantry_runtime::nats::connect_with_seed(
            config,
            "gantry-registry-system",
            path,
            "_INBOX_registry_system",
        )
        .await?;
        registry.set_system_client(system);
    }
    let Some(path) = &config.callout_issuer_file else {
        tracing::info!("no GANTRY_CALLOUT_ISSUER_FILE: nodes are not admitted by the registry");
        return Ok(());
    };
    let callout = Arc::new(Callout {
        registry: registry.clone(),
        issuer: gantry_bus::setup::read_seed(path)?,
        session: config.node_session,
    });
    let client = registry.client().clone();
    let mut requests = client
        .queue_subscribe(callout::SUBJECT, "gantry-registry".into())
        .await?;
    let (stop, inner) = (shutdown.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                m = requests.next() => match m { Some(m) => m, None => break },
            };
            let (callout, client) = (callout.clone(), client.clone());
            inner.spawn(async move { callout.answer(&client, msg).await });
        }
    });
    tracing::info!("admitting nodes by their cluster token (auth callout)");
    Ok(())
}

impl Callout {
    async fn answer(&self, client: &Client, msg: async_nats::Message) {
        let Some(reply) = msg.reply else { return };
        let now = now();
        let req = match callout::parse_request(&msg.payload, now) {
            Ok(req) => req,
            // Without a readable request there is nobody to answer: the server times out and
            // refuses the connection.
            Err(e) => {
                tracing::warn!(error = %e, "unreadable authorization request");
                return;
            }
        };
        let answer = match self.admit(&req).await {
            Ok((name, perms)) => {
                tracing::info!(user = name, host = req.host, "admitted a node to the bus");
                let expires = now + self.session.as_secs() as i64;
                callout::admit(&req, &name, &perms, expires, &self.issuer, now)
            }
            Err(why) => {
                tracing::warn!(host = req.host, name = ?req.name, reason = why, "refused a connection to the bus");
                callout::refuse(&req, &why, &self.issuer, now)
            }
        };
        match answer {
            Ok(jwt) => {
                if let Err(e) = client.publish(reply, jwt.into()).await {
                    tracing::warn!(error = %e, "could not answer an authorization request");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not sign an authorization answer"),
        }
    }

    /// The user a request's connection becomes, or why it may not connect.
    async fn admit(&self, req: &AuthRequest) -> Result<(String, Permissions), String> {
        let Some(token) = req.token.as_deref() else {
            return Err("no cluster token: nodes connect with their cluster token".into());
        };
        let hostname = NodeName::parse(req.name.as_deref().unwrap_or_default())
            .map_err(|e| format!("the connection name must be the node's name: {e}"))?;
        let doc = match self.registry.admitted_token(token.trim()).await {
            Ok(doc) => doc,
            Err(RegistryError::Unauthorized(why)) => return Err(why),
            Err(e) => return Err(format!("the registry cannot check tokens now: {e}")),
        };
        let node_id = tokens::node_id(hostname.as_ref(), doc.id);
        let inbox = permissions::node_inbox(token.trim(), hostname.as_ref());
        Ok((
            format!("{}{node_id}", token_user_prefix(doc.id)),
            permissions::node(&node_id, &inbox),
        ))
    }
}
