//! The cluster side: typed requests to a service's NATS endpoints, the registry's tokens and
//! node listings, trainers joining under a name, draining, and waiting for a node's state.

use std::time::Duration;

use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::registry::{
    ClusterClients, ClusterNode, ClusterNodes, ClusterToken, CreateClusterToken, Drain, Empty,
    ListQuery, SetDriverResult,
};
use gantry_contracts::subjects;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::service::ServiceProcess;
use crate::stack::{TestStack, READY};
use crate::util::wait_until;

/// How long a trainer may take to show connected.
pub const JOIN: Duration = Duration::from_secs(30);
/// Seconds between heartbeats on a stack with [`TestStack::short_heartbeats`].
pub const INTERVAL: f64 = 0.5;
/// Missed heartbeats before a node is disconnected there.
pub const MISSES: u32 = 3;

/// How long one poll of a listing waits for its reply. Core NATS delivers a request at most
/// once: one that reached a replica the moment it was killed is never answered, and a poll
/// bounded this way is simply asked again instead of holding its wait for a whole minute.
pub const POLL_REQUEST: Duration = Duration::from_secs(5);

/// One request to a NATS service endpoint. A service error comes back as its
/// `ServiceFailure`; no responders and timeouts read as unavailable, as the api sees them.
pub async fn request<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    req: &Req,
) -> Result<Resp, ServiceFailure> {
    request_within(client, subject, req, Duration::from_secs(60)).await
}

/// [`request`], waiting up to `timeout` for the reply.
pub async fn request_within<Req: Serialize, Resp: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, ServiceFailure> {
    let payload = serde_json::to_vec(req).expect("an encodable request");
    let request = async_nats::Request::new()
        .payload(payload.into())
        .timeout(Some(timeout));
    let reply = match client.send_request(subject.clone(), request).await {
        Ok(reply) => reply,
        Err(e) => {
            return Err(ServiceFailure::new(
                ErrorCode::Unavailable,
                format!("{subject}: {e}"),
            ))
        }
    };
    if let Some(text) = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR))
    {
        return Err(ServiceFailure::from_header(text.as_str()));
    }
    Ok(serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "{subject} answered something undecodable ({e}): {:?}",
            reply.payload
        )
    }))
}

/// Seconds since the epoch, as the registry stamps `last_seen`.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl TestStack {
    /// Heartbeats every [`INTERVAL`] seconds, [`MISSES`] of them missed before a node is
    /// disconnected, for every service started from now on.
    pub fn short_heartbeats(&mut self) -> &mut Self {
        self.set_env("GANTRY_HEARTBEAT_INTERVAL", &INTERVAL.to_string())
            .set_env("GANTRY_HEARTBEAT_MISSES", &MISSES.to_string())
    }

    /// Call a registry endpoint.
    pub async fn registry_call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> Result<Resp, ServiceFailure> {
        request(&self.client, subjects::registry(endpoint), req).await
    }

    /// Create a cluster token through the registry; the reply holds it whole.
    pub async fn create_token(&self, name: &str) -> ClusterToken {
        self.registry_call(
            subjects::registry::TOKENS_CREATE,
            &CreateClusterToken { name: name.into() },
        )
        .await
        .expect("create a cluster token")
    }

    /// The stack's own cluster token (named `tests`), created on first use.
    pub async fn cluster_token(&self) -> &str {
        self.cluster_token
            .get_or_init(|| async { self.create_token("tests").await.token })
            .await
    }

    /// `nodes.list`, every page.
    pub async fn nodes(&self) -> ClusterNodes {
        let mut first: ClusterNodes = self
            .registry_call(subjects::registry::NODES, &Empty {})
            .await
            .expect("nodes.list");
        while let Some(offset) = first.next_offset {
            let more: ClusterNodes = self
                .registry_call(
                    subjects::registry::NODES,
                    &ListQuery {
                        offset,
                        limit: None,
                    },
                )
                .await
                .expect("nodes.list page");
            first.nodes.extend(more.nodes);
            first.next_offset = more.next_offset;
        }
        first
    }

    /// `clients.list` (first page; tests hold few nodes).
    pub async fn clients(&self) -> ClusterClients {
        self.registry_call(subjects::registry::CLIENTS, &Empty {})
            .await
            .expect("clients.list")
    }

    /// Wait until `nodes.list` shows `hostname` matching `pred`; panics with the last listing
    /// otherwise.
    pub async fn wait_node(
        &self,
        hostname: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ClusterNode) -> bool,
    ) -> ClusterNode {
        let found = wait_until(timeout, || async {
            request_within::<_, ClusterNodes>(
                &self.client,
                subjects::registry(subjects::registry::NODES),
                &Empty {},
                POLL_REQUEST,
            )
            .await
            .ok()
            .and_then(|l| {
                l.nodes
                    .into_iter()
                    .find(|n| n.hostname == hostname && pred(n))
            })
        })
        .await;
        match found {
            Some(n) => n,
            None => {
                let last = self
                    .registry_call::<_, ClusterNodes>(subjects::registry::NODES, &Empty {})
                    .await;
                panic!(
                    "node {hostname} never became {what} within {timeout:?}; last listing: {last:#?}"
                )
            }
        }
    }

    /// Wait until a heartbeat sent after this call shows every training slot of `hostname` idle
    /// (active, no model). A trainer frees a worker only after everything its job published, so this
    /// proves the node is done with its jobs.
    pub async fn wait_idle(&self, hostname: &str) -> ClusterNode {
        let since = unix_now();
        self.wait_node(hostname, Duration::from_secs(15), "idle", |n| {
            n.connected
                && n.last_seen > since
                && n.processes
                    .iter()
                    .filter(|p| p.is_training())
                    .all(|p| p.status == "active" && p.model.is_none())
        })
        .await
    }

    /// Drain (or undrain) a node through the registry.
    pub async fn drain(&self, hostname: &str, token: &str, on: bool) {
        let r: SetDriverResult = self
            .registry_call(
                subjects::registry::DRAIN,
                &Drain {
                    hostname: Some(hostname.into()),
                    token: Some(token.into()),
                    drain: Some(on),
                },
            )
            .await
            .expect("drain");
        assert!(r.success);
    }

    /// Start a CPU trainer named `name` joining with `token` with `workers` slots and `extra`
    /// variables, without waiting for it. Each name has its own dataset cache
    /// ([`TestStack::cache_dir`]), kept across its restarts.
    pub fn trainer(
        &self,
        name: &str,
        token: &str,
        workers: u32,
        extra: &[(&str, &str)],
    ) -> ServiceProcess {
        let cache = self.cache_dir(name).display().to_string();
        let workers = workers.to_string();
        let mut env = vec![
            ("GANTRY_CLUSTER_TOKEN", token),
            ("GANTRY_NODE_NAME", name),
            ("GANTRY_WORKERS", workers.as_str()),
            ("GANTRY_CACHE_DIR", cache.as_str()),
        ];
        env.extend_from_slice(extra);
        self.spawn("gantry-trainer", &env)
    }

    /// A CPU trainer named `name` with one worker slot on the stack's cluster token, ready and
    /// listed connected.
    pub async fn join_trainer(&self, name: &str) -> ServiceProcess {
        self.join_trainer_with(name, &[]).await
    }

    /// The same, with more variables.
    pub async fn join_trainer_with(&self, name: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let token = self.cluster_token().await.to_owned();
        let t = self.trainer(name, &token, 1, extra);
        t.wait_ready(READY).await;
        self.wait_node(name, JOIN, "connected", |n| n.connected)
            .await;
        t
    }

    /// Where trainer `name` keeps its dataset cache.
    pub fn cache_dir(&self, name: &str) -> std::path::PathBuf {
        self.caches.path().join(name)
    }
}
