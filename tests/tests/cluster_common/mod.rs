//! Shared by the `cluster_*` tests: a stack with a real registry on short heartbeats, typed
//! calls to its NATS endpoints, trainers under a given name and token, and polling helpers.

#![allow(dead_code)]

use std::time::Duration;

use gantry_contracts::error::ServiceFailure;
use gantry_contracts::registry::{
    ClusterClients, ClusterNode, ClusterNodes, ClusterToken, CreateClusterToken, Empty, ListQuery,
};
use gantry_contracts::subjects;
use gantry_testing::{wait_until, ServiceProcess, Stack};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Seconds between heartbeats in these tests.
pub const INTERVAL: f64 = 0.5;
/// Missed heartbeats before a node is disconnected.
pub const MISSES: u32 = 3;
/// How long a service may take to become ready.
pub const READY: Duration = Duration::from_secs(60);

/// A stack with one registry (more can be started).
pub struct Cluster {
    pub stack: Stack,
    pub registry: ServiceProcess,
    pub client: async_nats::Client,
}

impl Cluster {
    /// NATS, the store and a registry, all on short heartbeats.
    pub async fn start() -> Self {
        let mut stack = Stack::start().await;
        stack
            .extra_env
            .insert("GANTRY_HEARTBEAT_INTERVAL".into(), INTERVAL.to_string());
        stack
            .extra_env
            .insert("GANTRY_HEARTBEAT_MISSES".into(), MISSES.to_string());
        let registry = stack.spawn("gantry-registry", &[]);
        registry.wait_ready(READY).await;
        let client = stack.nats.client().await;
        Self {
            stack,
            registry,
            client,
        }
    }

    /// Another registry replica, ready.
    pub async fn replica(&self) -> ServiceProcess {
        let r = self.stack.spawn("gantry-registry", &[]);
        r.wait_ready(READY).await;
        r
    }

    /// Call a registry endpoint.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> Result<Resp, ServiceFailure> {
        gantry_runtime::nats::request(&self.client, subjects::registry(endpoint), req).await
    }

    /// Create a cluster token; the reply holds it whole.
    pub async fn create_token(&self, name: &str) -> ClusterToken {
        self.call(
            subjects::registry::TOKENS_CREATE,
            &CreateClusterToken { name: name.into() },
        )
        .await
        .expect("create a cluster token")
    }

    /// `nodes.list`, every page.
    pub async fn nodes(&self) -> ClusterNodes {
        let mut first: ClusterNodes = self
            .call(subjects::registry::NODES, &Empty {})
            .await
            .expect("nodes.list");
        while let Some(offset) = first.next_offset {
            let more: ClusterNodes = self
                .call(
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
        self.call(subjects::registry::CLIENTS, &Empty {})
            .await
            .expect("clients.list")
    }

    /// A trainer named `name` joining with `token` (`workers` slots).
    pub fn trainer(&self, name: &str, token: &str, workers: u32) -> ServiceProcess {
        self.stack.spawn(
            "gantry-trainer",
            &[
                ("GANTRY_CLUSTER_TOKEN", token),
                ("GANTRY_NODE_NAME", name),
                ("GANTRY_WORKERS", &workers.to_string()),
            ],
        )
    }

    /// Wait until `nodes.list` shows `hostname` matching `pred`; panics with the last listing and
    /// `context` otherwise.
    pub async fn wait_node(
        &self,
        hostname: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&ClusterNode) -> bool,
    ) -> ClusterNode {
        let found = wait_until(timeout, || async {
            self.call::<_, ClusterNodes>(subjects::registry::NODES, &Empty {})
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
                    .call::<_, ClusterNodes>(subjects::registry::NODES, &Empty {})
                    .await;
                panic!("node {hostname} never became {what} within {timeout:?}; last listing: {last:#?}")
            }
        }
    }
}
