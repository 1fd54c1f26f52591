//! The cluster: cluster tokens, connected clients, nodes, driver choice and draining. The
//! registry answers in the admin page's shapes; these types document them and carry them through.

use gantry_contracts::registry as msg;
use gantry_contracts::subjects::registry as ep;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::{Form, Json};
use poem_openapi::types::Example;
use poem_openapi::{ApiRequest, ApiResponse, Multipart, Object, OpenApi};

use crate::auth::Credentials;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tags::ApiTags;
use crate::users::rfc3339;
use crate::wire::carry;

/// A cluster token.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ClusterToken", example)]
pub struct ClusterTokenOut {
    /// Numeric id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// The first 8 characters followed by `...`; whole only when just created.
    pub token: String,
    /// False once revoked.
    pub active: bool,
    /// When it was made (RFC 3339, UTC).
    pub created_at: String,
}

impl Example for ClusterTokenOut {
    fn example() -> Self {
        Self {
            id: 1,
            name: "Worker Token".into(),
            token: "abc123...".into(),
            active: true,
            created_at: "2024-01-01T00:00:00Z".into(),
        }
    }
}

impl From<msg::ClusterToken> for ClusterTokenOut {
    fn from(t: msg::ClusterToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            token: t.token,
            active: t.active,
            created_at: rfc3339(t.created_at),
        }
    }
}

/// Every cluster token.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ClusterTokenList {
    /// By id, revoked ones too.
    pub tokens: Vec<ClusterTokenOut>,
}

impl Example for ClusterTokenList {
    fn example() -> Self {
        Self {
            tokens: vec![ClusterTokenOut::example()],
        }
    }
}

/// A new cluster token.
#[derive(Debug, Clone, Object)]
pub struct CreateClusterTokenBody {
    /// A name to recognise it by.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
}

/// The page's `gpu_info`.
#[derive(Debug, Clone, Object)]
pub struct GpuInfoOut {
    /// libtorch sees a CUDA device.
    pub cuda_available: bool,
    /// libtorch (a ROCm build) sees a ROCm device.
    pub rocm_available: bool,
    /// CUDA devices.
    pub cuda_devices: u32,
    /// ROCm devices.
    pub rocm_devices: u32,
    /// What the node can train on, best first, ending in `cpu`.
    pub available_backends: Vec<String>,
}

/// One worker of a node.
#[derive(Debug, Clone, Object)]
pub struct ProcessOut {
    /// `train_cuda`, `train_rocm` or `train_cpu`.
    pub name: String,
    /// `active` (ready), `busy`, `draining` or `unavailable`.
    pub status: String,
    /// Per-worker weight.
    pub weight: u32,
    /// The model it is working on, or null.
    pub model: Option<String>,
    /// Why it is unavailable.
    #[oai(skip_serializing_if_is_none)]
    pub reason: Option<String>,
}

/// A connected cluster client.
#[derive(Debug, Clone, Object)]
pub struct ClientOut {
    /// The node's identity.
    pub client_id: String,
    /// When it connected, seconds since the epoch.
    pub connected_at: f64,
    /// Its last heartbeat, seconds since the epoch.
    pub last_seen: f64,
    /// Its GPUs.
    pub gpu_info: GpuInfoOut,
    /// One per worker.
    pub processes: Vec<ProcessOut>,
    /// The node name.
    pub hostname: String,
    /// Connected (always true here).
    pub connected: bool,
}

/// Connected cluster clients.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ClusterClientsOut {
    /// By hostname.
    pub clients: Vec<ClientOut>,
}

impl Example for ClusterClientsOut {
    fn example() -> Self {
        Self {
            clients: vec![ClientOut {
                client_id: "abc123...".into(),
                connected_at: 1640995200.0,
                last_seen: 1640995300.0,
                gpu_info: GpuInfoOut {
                    cuda_available: true,
                    rocm_available: false,
                    cuda_devices: 1,
                    rocm_devices: 0,
                    available_backends: vec!["cuda".into(), "cpu".into()],
                },
                processes: vec![ProcessOut {
                    name: "train_cuda".into(),
                    status: "active".into(),
                    weight: 10,
                    model: Some("MyCustomModel".into()),
                    reason: None,
                }],
                hostname: "worker1.example.com".into(),
                connected: true,
            }],
        }
    }
}

/// Cluster totals.
#[derive(Debug, Clone, Object)]
pub struct MasterStatsOut {
    /// Nodes listed.
    pub total_nodes: u64,
    /// Of which connected.
    pub connected_nodes: u64,
    /// Worker slots of connected nodes.
    pub total_workers: u64,
    /// Jobs running.
    pub total_active_jobs: u64,
    /// Jobs completed.
    pub total_completed_jobs: u64,
    /// The registry's uptime.
    pub uptime_seconds: f64,
}

/// One GPU.
#[derive(Debug, Clone, Object)]
pub struct GpuDeviceOut {
    /// Index.
    pub index: u32,
    /// `cuda` or `rocm`.
    pub backend: String,
    /// Product name.
    pub name: String,
    /// Memory, MiB.
    pub memory_total_mib: u64,
}

/// A cluster node.
#[derive(Debug, Clone, Object)]
pub struct NodeOut {
    /// Its token, listed form.
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
    pub workers_available: u32,
    /// The address it joined from.
    pub ip_address: String,
    /// Heartbeating now.
    pub connected: bool,
    /// Last heartbeat, seconds since the epoch.
    pub last_seen: f64,
    /// Seconds the trainer has been up.
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
    pub driver: String,
    /// Added: the stored preference (null: automatic).
    pub driver_preference: Option<String>,
    /// Added: drained.
    pub draining: bool,
    /// Added: its `gpu_info`.
    pub gpu_info: GpuInfoOut,
    /// Added: its GPUs in detail.
    pub gpu_devices: Vec<GpuDeviceOut>,
    /// Added: GPU driver version.
    pub driver_version: Option<String>,
    /// Added: one per worker.
    pub processes: Vec<ProcessOut>,
}

/// Every node with the cluster's totals.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct ClusterNodesOut {
    /// Totals.
    pub master_stats: MasterStatsOut,
    /// Connected and recently disconnected nodes.
    pub nodes: Vec<NodeOut>,
}

impl Example for ClusterNodesOut {
    fn example() -> Self {
        Self {
            master_stats: MasterStatsOut {
                total_nodes: 3,
                connected_nodes: 2,
                total_workers: 6,
                total_active_jobs: 1,
                total_completed_jobs: 15,
                uptime_seconds: 3600.5,
            },
            nodes: vec![NodeOut {
                token: "abc123...".into(),
                token_name: "Worker Node 1".into(),
                hostname: "worker1.example.com".into(),
                weight: 100,
                gpus: 1,
                gpu_memory: vec!["CUDA Device 0: 8GB VRAM".into()],
                total_memory: 8,
                workers_available: 2,
                ip_address: "192.168.1.100".into(),
                connected: true,
                last_seen: 1640995300.0,
                uptime_seconds: 1800.5,
                active_jobs: 1,
                completed_jobs: 5,
                client_id: "abc123...".into(),
                workers: 3,
                host_memory_gb: 62.8,
                cpus: 16,
                driver: "cuda".into(),
                driver_preference: None,
                draining: false,
                gpu_info: GpuInfoOut {
                    cuda_available: true,
                    rocm_available: false,
                    cuda_devices: 1,
                    rocm_devices: 0,
                    available_backends: vec!["cuda".into(), "cpu".into()],
                },
                gpu_devices: vec![GpuDeviceOut {
                    index: 0,
                    backend: "cuda".into(),
                    name: "NVIDIA GeForce RTX 3070".into(),
                    memory_total_mib: 8192,
                }],
                driver_version: Some("580.65.06".into()),
                processes: vec![],
            }],
        }
    }
}

/// The fields of `set_driver`, in whichever form they come.
#[derive(Debug, Clone, Object, Multipart, serde::Deserialize)]
pub struct SetDriverFields {
    /// Hostname of the cluster node
    pub hostname: Option<String>,
    /// Authentication token for the node
    pub token: Option<String>,
    /// Preferred driver: "cuda" or "rocm" (also "cpu", or "auto" to clear the preference)
    pub driver: Option<String>,
}

/// `set_driver` body: a form (`curl -F` sends multipart), URL-encoded, or JSON.
#[derive(ApiRequest)]
pub enum SetDriverBody {
    /// `multipart/form-data`, as `curl -F` sends it.
    Multipart(SetDriverFields),
    /// `application/x-www-form-urlencoded`.
    Form(Form<SetDriverFields>),
    /// JSON.
    Json(Json<SetDriverFields>),
}

/// The fields of drain and undrain.
#[derive(Debug, Clone, Object, Multipart, serde::Deserialize)]
pub struct NodeFields {
    /// Hostname of the cluster node
    pub hostname: Option<String>,
    /// Authentication token for the node (whole, or as listed)
    pub token: Option<String>,
}

/// Drain/undrain body: a form, URL-encoded, or JSON.
#[derive(ApiRequest)]
pub enum NodeBody {
    /// `multipart/form-data`.
    Multipart(NodeFields),
    /// `application/x-www-form-urlencoded`.
    Form(Form<NodeFields>),
    /// JSON.
    Json(Json<NodeFields>),
}

impl NodeBody {
    fn fields(self) -> NodeFields {
        match self {
            NodeBody::Multipart(f) | NodeBody::Form(Form(f)) | NodeBody::Json(Json(f)) => f,
        }
    }
}

/// `{"success": true}`, with a warning when the change cannot take effect now.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct SuccessOut {
    /// Always true.
    pub success: bool,
    /// Set when the change is stored but cannot take effect now (e.g. the node lacks that backend).
    #[oai(skip_serializing_if_is_none)]
    pub warning: Option<String>,
}

impl Example for SuccessOut {
    fn example() -> Self {
        Self {
            success: true,
            warning: None,
        }
    }
}

/// `POST /admin/api/cluster_tokens` answers.
#[derive(ApiResponse)]
pub enum CreatedClusterToken {
    /// Created: `token` is whole, this once.
    #[oai(status = 201)]
    Created(Json<ClusterTokenOut>),
}

/// The cluster endpoints.
pub struct ClusterApi(pub AppState);

impl ClusterApi {
    async fn drain(
        &self,
        req: &Request,
        auth: Credentials,
        body: NodeBody,
        drain: bool,
    ) -> ApiResult<Json<SuccessOut>> {
        self.0.auth.admin(&auth, req).await?;
        let f = body.fields();
        let r: msg::SetDriverResult = self
            .0
            .registry(
                ep::DRAIN,
                &msg::Drain {
                    hostname: f.hostname,
                    token: f.token,
                    drain: Some(drain),
                },
            )
            .await?;
        Ok(Json(SuccessOut {
            success: r.success,
            warning: r.warning,
        }))
    }
}

#[OpenApi]
impl ClusterApi {
    /// List cluster tokens
    ///
    /// List all cluster tokens for distributed processing management.
    #[oai(
        path = "/admin/api/cluster_tokens",
        method = "get",
        tag = "ApiTags::AdminApi",
        operation_id = "list_cluster_tokens",
        code_sample(lang = "curl", source = "crate::docs::samples::LIST_CLUSTER_TOKENS")
    )]
    async fn list_tokens(
        &self,
        req: &Request,
        auth: Credentials,
    ) -> ApiResult<Json<ClusterTokenList>> {
        self.0.auth.admin(&auth, req).await?;
        let list: msg::ClusterTokenList = self.0.registry(ep::TOKENS_LIST, &msg::Empty {}).await?;
        Ok(Json(ClusterTokenList {
            tokens: list.tokens.into_iter().map(Into::into).collect(),
        }))
    }

    /// Create a cluster token
    ///
    /// Issues a token GPU machines join the cluster with (`GANTRY_CLUSTER_TOKEN`). The answer
    /// holds it whole, once; listings show its first 8 characters.
    #[oai(
        path = "/admin/api/cluster_tokens",
        method = "post",
        tag = "ApiTags::Cluster",
        operation_id = "create_cluster_token",
        code_sample(lang = "curl", source = "crate::docs::samples::CREATE_CLUSTER_TOKEN")
    )]
    async fn create_token(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<CreateClusterTokenBody>,
    ) -> ApiResult<CreatedClusterToken> {
        self.0.auth.admin(&auth, req).await?;
        let t: msg::ClusterToken = self
            .0
            .registry(
                ep::TOKENS_CREATE,
                &msg::CreateClusterToken { name: body.0.name },
            )
            .await?;
        Ok(CreatedClusterToken::Created(Json(t.into())))
    }

    /// Revoke a cluster token
    ///
    /// Nodes can no longer join with it; nodes that joined with it are told to leave and shown
    /// disconnected.
    #[oai(
        path = "/admin/api/cluster_tokens/:id",
        method = "delete",
        tag = "ApiTags::Cluster",
        operation_id = "revoke_cluster_token"
    )]
    async fn revoke_token(
        &self,
        req: &Request,
        auth: Credentials,
        /// The token's id.
        id: Path<i64>,
    ) -> ApiResult<Json<ClusterTokenOut>> {
        self.0.auth.admin(&auth, req).await?;
        let t: msg::ClusterToken = self
            .0
            .registry(ep::TOKENS_REVOKE, &msg::RevokeClusterToken { id: id.0 })
            .await?;
        Ok(Json(t.into()))
    }

    /// List cluster clients
    ///
    /// List all connected cluster clients with their GPU capabilities and status.
    #[oai(
        path = "/admin/api/cluster_clients",
        method = "get",
        tag = "ApiTags::AdminApi",
        operation_id = "list_cluster_clients",
        code_sample(lang = "curl", source = "crate::docs::samples::LIST_CLUSTER_CLIENTS")
    )]
    async fn clients(
        &self,
        req: &Request,
        auth: Credentials,
    ) -> ApiResult<Json<ClusterClientsOut>> {
        self.0.auth.admin(&auth, req).await?;
        let mut clients = Vec::new();
        let mut offset = 0;
        loop {
            let page: msg::ClusterClients = self
                .0
                .registry(
                    ep::CLIENTS,
                    &msg::ListQuery {
                        offset,
                        limit: None,
                    },
                )
                .await?;
            clients.extend(page.clients);
            match page.next_offset {
                Some(next) if next > offset => offset = next,
                _ => break,
            }
        }
        Ok(Json(ClusterClientsOut {
            clients: carry(clients)?,
        }))
    }

    /// List cluster nodes
    ///
    /// Get detailed information about all cluster nodes, including connected and recently disconnected nodes.
    #[oai(
        path = "/api/admin/cluster_nodes",
        method = "get",
        tag = "ApiTags::AdminApi",
        operation_id = "cluster_nodes",
        code_sample(lang = "curl", source = "crate::docs::samples::CLUSTER_NODES")
    )]
    async fn nodes(&self, req: &Request, auth: Credentials) -> ApiResult<Json<ClusterNodesOut>> {
        self.0.auth.admin(&auth, req).await?;
        let first: msg::ClusterNodes = self
            .0
            .registry(ep::NODES, &msg::ListQuery::default())
            .await?;
        let stats = first.master_stats.clone();
        let mut nodes = first.nodes;
        let mut next = first.next_offset;
        while let Some(offset) = next {
            let page: msg::ClusterNodes = self
                .0
                .registry(
                    ep::NODES,
                    &msg::ListQuery {
                        offset,
                        limit: None,
                    },
                )
                .await?;
            nodes.extend(page.nodes);
            next = page.next_offset.filter(|n| *n > offset);
        }
        Ok(Json(ClusterNodesOut {
            master_stats: carry(stats)?,
            nodes: carry(nodes)?,
        }))
    }

    /// Set a node's driver
    ///
    /// Set the preferred GPU driver (CUDA or ROCm) for a specific cluster node. This preference is saved and reused for future connections from the same hostname + token combination.
    #[oai(
        path = "/api/admin/cluster_nodes/set_driver",
        method = "post",
        tag = "ApiTags::AdminApi",
        operation_id = "set_driver",
        code_sample(lang = "curl", source = "crate::docs::samples::SET_DRIVER")
    )]
    async fn set_driver(
        &self,
        req: &Request,
        auth: Credentials,
        body: SetDriverBody,
    ) -> ApiResult<Json<SuccessOut>> {
        self.0.auth.admin(&auth, req).await?;
        let f = match body {
            SetDriverBody::Multipart(f)
            | SetDriverBody::Form(Form(f))
            | SetDriverBody::Json(Json(f)) => f,
        };
        let r: msg::SetDriverResult = self
            .0
            .registry(
                ep::SET_DRIVER,
                &msg::SetDriver {
                    hostname: f.hostname,
                    token: f.token,
                    driver: f.driver,
                },
            )
            .await?;
        Ok(Json(SuccessOut {
            success: r.success,
            warning: r.warning,
        }))
    }

    /// Drain a node
    ///
    /// The node finishes what it runs and takes no new work; its processes show `draining`.
    #[oai(
        path = "/api/admin/cluster_nodes/drain",
        method = "post",
        tag = "ApiTags::Cluster",
        operation_id = "drain_node"
    )]
    async fn drain_node(
        &self,
        req: &Request,
        auth: Credentials,
        body: NodeBody,
    ) -> ApiResult<Json<SuccessOut>> {
        self.drain(req, auth, body, true).await
    }

    /// Undrain a node
    ///
    /// The node takes work again.
    #[oai(
        path = "/api/admin/cluster_nodes/undrain",
        method = "post",
        tag = "ApiTags::Cluster",
        operation_id = "undrain_node"
    )]
    async fn undrain_node(
        &self,
        req: &Request,
        auth: Credentials,
        body: NodeBody,
    ) -> ApiResult<Json<SuccessOut>> {
        self.drain(req, auth, body, false).await
    }
}
