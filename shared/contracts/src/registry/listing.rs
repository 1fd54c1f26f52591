//! The listings of `GET /admin/api/cluster_clients` and `GET /api/admin/cluster_nodes`: the
//! registry's `clients.list` and `nodes.list` replies, served by the api as they are.
//!
//! The doc comments of these types are the OpenAPI document's descriptions, which the admin page
//! publishes word for word; details for readers of the contract are in plain comments.

use serde::{Deserialize, Serialize};

use super::{tolerant_bool, Driver, GpuDevice, GpuInfo, GpuStats, Process};

/// `clients.list` / `nodes.list` request. Both fields optional: `{}` asks for the first page.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListQuery {
    /// Skip this many entries (the previous reply's `next_offset`).
    #[serde(default)]
    pub offset: usize,
    /// At most this many entries (default and cap: as many as fit in one NATS message).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A connected cluster client.
// One entry of `GET /admin/api/cluster_clients`: the page's shape plus `hostname` and `connected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ClientOut"))]
pub struct ClusterClient {
    /// The node's identity.
    // The same as its `node_id`.
    pub client_id: String,
    /// When it connected, seconds since the epoch.
    // Or reconnected.
    pub connected_at: f64,
    /// Its last heartbeat, seconds since the epoch.
    pub last_seen: f64,
    /// Its GPUs.
    // The page's `gpu_info`.
    pub gpu_info: GpuInfo,
    /// One per worker.
    pub processes: Vec<Process>,
    /// The node name.
    // Added to the page's shape.
    pub hostname: String,
    /// Connected (always true here).
    // Added: the listing holds connected clients only.
    #[serde(deserialize_with = "tolerant_bool")]
    pub connected: bool,
}

/// Connected cluster clients.
// The `clients.list` reply: the connected nodes, by hostname, one page of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ClusterClientsOut", example))]
pub struct ClusterClients {
    /// By hostname.
    pub clients: Vec<ClusterClient>,
    /// Set when more entries follow: ask again with this offset.
    // Not in the page: the api concatenates the pages and leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip))]
    pub next_offset: Option<usize>,
}

/// Cluster totals.
// The page's `master_stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "MasterStatsOut"))]
pub struct MasterStats {
    /// Nodes listed.
    // Connected plus recently disconnected.
    pub total_nodes: u64,
    /// Of which connected.
    pub connected_nodes: u64,
    /// Worker slots of connected nodes.
    pub total_workers: u64,
    /// Jobs running.
    pub total_active_jobs: u64,
    /// Jobs completed.
    // By the listed nodes.
    pub total_completed_jobs: u64,
    /// The registry's uptime.
    // The answering replica's.
    pub uptime_seconds: f64,
}

/// A cluster node.
// One entry of `GET /api/admin/cluster_nodes`: the page's shape plus the added fields at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "NodeOut"))]
pub struct ClusterNode {
    /// Its token, listed form.
    // `abcd1234...`.
    pub token: String,
    /// That token's name.
    pub token_name: String,
    /// The node name.
    pub hostname: String,
    /// Node weight.
    pub weight: u32,
    /// GPU count.
    pub gpus: u32,
    /// One per GPU: `"CUDA Device 0: 8GB VRAM"`.
    pub gpu_memory: Vec<String>,
    /// GPU memory, GB, summed (0 on a CPU-only node).
    pub total_memory: u64,
    /// Free worker slots.
    // 0 when disconnected or drained.
    pub workers_available: u32,
    /// The address it joined from.
    pub ip_address: String,
    /// Heartbeating now.
    #[serde(deserialize_with = "tolerant_bool")]
    pub connected: bool,
    /// Last heartbeat, seconds since the epoch.
    pub last_seen: f64,
    /// Seconds the trainer has been up.
    // 0 when disconnected.
    pub uptime_seconds: f64,
    /// Jobs running.
    pub active_jobs: u64,
    /// Jobs completed.
    pub completed_jobs: u64,
    /// Added: its identity (`client_id`).
    pub client_id: String,
    /// Added: total worker slots.
    pub workers: u32,
    /// Added: host memory, GB.
    pub host_memory_gb: f64,
    /// Added: logical CPUs.
    pub cpus: u32,
    /// Added: the backend its workers run on.
    pub driver: Driver,
    /// Added: the stored preference (null: automatic).
    pub driver_preference: Option<Driver>,
    /// Added: drained.
    // Finishing what it runs, taking nothing new.
    #[serde(deserialize_with = "tolerant_bool")]
    pub draining: bool,
    /// Added: its `gpu_info`.
    // As in the clients listing.
    pub gpu_info: GpuInfo,
    /// Added: its GPUs in detail.
    pub gpu_devices: Vec<GpuDevice>,
    /// Added: GPU driver version.
    // When the node could read it.
    pub driver_version: Option<String>,
    /// Added: one per worker.
    // As in the clients listing.
    pub processes: Vec<Process>,
    /// Added: each GPU's live figures, from its last heartbeat.
    #[serde(default)]
    pub gpu_stats: Vec<GpuStats>,
    /// Added: why it fails its health check and takes no new job; null when healthy.
    #[serde(default)]
    pub unhealthy: Option<String>,
}

/// Every node with the cluster's totals.
// The `nodes.list` reply: connected and recently disconnected nodes, by hostname, one page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "ClusterNodesOut", example))]
pub struct ClusterNodes {
    /// Totals.
    // Over every listed node, not only this page.
    pub master_stats: MasterStats,
    /// Connected and recently disconnected nodes.
    pub nodes: Vec<ClusterNode>,
    /// Set when more entries follow: ask again with this offset.
    // Not in the page: the api concatenates the pages, keeps the first page's `master_stats`
    // and leaves this field out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip))]
    pub next_offset: Option<usize>,
}

/// A listing the registry answers in pages (each as large as fits in one NATS message).
pub trait Paged: Sized {
    /// Where the next page starts; `None` on the last page.
    fn next_offset(&self) -> Option<usize>;
    /// Append a later page's entries, taking its `next_offset`.
    fn extend(&mut self, page: Self);
}

impl Paged for ClusterClients {
    fn next_offset(&self) -> Option<usize> {
        self.next_offset
    }
    fn extend(&mut self, page: Self) {
        self.clients.extend(page.clients);
        self.next_offset = page.next_offset;
    }
}

impl Paged for ClusterNodes {
    fn next_offset(&self) -> Option<usize> {
        self.next_offset
    }
    fn extend(&mut self, page: Self) {
        self.nodes.extend(page.nodes);
        self.next_offset = page.next_offset;
    }
}

/// The whole listing: `fetch` is asked for the page at each offset, starting at 0, until a page
/// says it is the last (or names no offset past the one asked, so a confused replica cannot
/// loop). The first page's other fields (totals) are kept.
pub async fn all_pages<P, E, Fut>(mut fetch: impl FnMut(ListQuery) -> Fut) -> Result<P, E>
where
    P: Paged,
    Fut: std::future::Future<Output = Result<P, E>>,
{
    let mut all = fetch(ListQuery::default()).await?;
    while let Some(offset) = all.next_offset() {
        let page = fetch(ListQuery {
            offset,
            limit: None,
        })
        .await?;
        let stuck = page.next_offset().is_some_and(|next| next <= offset);
        all.extend(page);
        if stuck {
            break;
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(next: Option<usize>) -> ClusterClients {
        ClusterClients {
            clients: Vec::new(),
            next_offset: next,
        }
    }

    #[tokio::test]
    async fn every_page_is_asked_for_once_until_the_last() {
        let mut asked = Vec::new();
        let all: Result<ClusterClients, ()> = all_pages(|q: ListQuery| {
            asked.push(q.offset);
            let next = match q.offset {
                0 => Some(10),
                10 => Some(20),
                _ => None,
            };
            std::future::ready(Ok(page(next)))
        })
        .await;
        assert_eq!(asked, [0, 10, 20]);
        assert_eq!(all.unwrap().next_offset, None);
    }

    #[tokio::test]
    async fn a_page_that_points_back_ends_the_listing() {
        let mut asked = 0;
        let _: Result<ClusterClients, ()> = all_pages(|_q: ListQuery| {
            asked += 1;
            std::future::ready(Ok(page(Some(5))))
        })
        .await;
        assert_eq!(asked, 2);
    }
}
