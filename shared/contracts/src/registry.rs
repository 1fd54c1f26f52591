//! Messages of the cluster registry (`gantry.registry.v1.*`) and of node traffic
//! (`gantry.node.<id>.*`).
//!
//! The listing types ([`ClusterToken`], [`ClusterClients`], [`ClusterNodes`], [`SetDriverResult`])
//! serialize to exactly the shapes of the admin API page, plus a few added fields (documented as
//! such); the api passes them through unchanged.
//!
//! Large listings are paged so that one reply stays under the NATS server's `max_payload`: a
//! reply with `next_offset` set has more, fetched by asking again with that `offset`. The api
//! reads them instead as whole bodies of one snapshot (`listing.body`, see [`BodyQuery`]), which
//! never mix two moments of the cluster.

use serde::{Deserialize, Deserializer, Serialize};

use crate::Timestamp;

/// A backend a node can train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// NVIDIA CUDA.
    Cuda,
    /// AMD ROCm (HIP builds of libtorch).
    Rocm,
    /// The CPU, always present.
    Cpu,
}

impl Driver {
    /// `cuda`, `rocm` or `cpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Cuda => "cuda",
            Driver::Rocm => "rocm",
            Driver::Cpu => "cpu",
        }
    }

    /// Every backend, in the order a node prefers them when no driver is chosen.
    pub const ALL: [Driver; 3] = [Driver::Cuda, Driver::Rocm, Driver::Cpu];

    /// Parse a `set_driver` value: `cuda`, `rocm`, `cpu`, or `any` (no preference, `Ok(None)`;
    /// `auto` is accepted for it, as for a job's driver).
    /// Case and surrounding blanks are ignored.
    pub fn parse_choice(s: &str) -> Result<Option<Driver>, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cuda" => Ok(Some(Driver::Cuda)),
            "rocm" => Ok(Some(Driver::Rocm)),
            "cpu" => Ok(Some(Driver::Cpu)),
            "any" | "auto" => Ok(None),
            _ => Err(DRIVER_CHOICES.to_owned()),
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compare with a wire name, as in `p.status == "busy"`.
macro_rules! eq_wire_name {
    ($ty:ty) => {
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }
    };
}

eq_wire_name!(Driver);

// After `eq_wire_name!`, which `process` uses.
mod body;
mod bounds;
mod gpu_stats;
mod listing;
mod process;
pub use body::*;
pub use bounds::*;
pub use gpu_stats::*;
pub use listing::*;
pub use process::*;

/// The message an unknown `driver` value is refused with.
pub const DRIVER_CHOICES: &str = "driver must be one of cuda, rocm, cpu, any";

/// Read a boolean that the store may hand back as 0/1 (the `nx-27017` quirk: a boolean written
/// through `$set` reads back as an integer). Use with `#[serde(deserialize_with = ...)]`.
pub fn tolerant_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
    }
    Ok(match Loose::deserialize(d)? {
        Loose::Bool(b) => b,
        Loose::Int(i) => i != 0,
        Loose::Float(f) => f != 0.0,
        Loose::Text(s) => matches!(s.as_str(), "true" | "1"),
    })
}

// ---------------------------------------------------------------------------------------------
// Cluster tokens
// ---------------------------------------------------------------------------------------------

/// A cluster token.
// As `GET /admin/api/cluster_tokens` lists it (the admin page's shape). The doc comments of this
// and the other listing types are the OpenAPI document's descriptions, which the admin page
// publishes word for word; details for readers of the contract are in plain comments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(example))]
pub struct ClusterToken {
    /// Numeric id.
    // 1, 2, 3 ... in creation order.
    pub id: i64,
    /// Its name.
    // The name the admin gave it.
    pub name: String,
    /// The first 8 characters followed by `...`; whole only when just created.
    // Whole (64 hex characters) only in the reply to [`CreateClusterToken`].
    pub token: String,
    /// False once revoked.
    // Nodes can no longer join with it.
    #[serde(deserialize_with = "tolerant_bool")]
    pub active: bool,
    /// When it was made (RFC 3339, UTC).
    // Whole seconds over HTTP; as stored over NATS.
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_secs")
    )]
    pub created_at: Timestamp,
}

/// Every cluster token.
// The `cluster_tokens.list` reply: by id, revoked ones too (`active: false`), one page of them
// (the page's shape plus `total`, `limit` and `offset`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(example))]
pub struct ClusterTokenList {
    /// By id, revoked ones too.
    pub tokens: Vec<ClusterToken>,
    /// Tokens in all, revoked ones too.
    #[serde(default)]
    pub total: u64,
    /// Page size.
    #[serde(default)]
    pub limit: u64,
    /// Tokens skipped before this page.
    #[serde(default)]
    pub offset: u64,
}

/// `cluster_tokens.list` request: one page (`{}` asks for the first). Checked against
/// [`crate::paging::MAX_LIMIT`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ClusterTokenQuery {
    /// Page size (default [`crate::paging::DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Tokens to skip.
    #[serde(default)]
    pub offset: u64,
}

/// `cluster_tokens.create` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateClusterToken {
    /// 1–100 characters, not blank, no control characters. Unique among active tokens, compared
    /// without surrounding blanks and regardless of case (`conflict` otherwise); a revoked
    /// token's name may be given again.
    pub name: String,
}

/// `cluster_tokens.revoke` request. Replies with the [`ClusterToken`] as listed
/// (`active: false`); revoking a token that is already revoked is `not_found` (its nodes are
/// told to leave again all the same).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeClusterToken {
    /// The token's id.
    pub id: i64,
}

/// The empty request of the list endpoints that take no parameters, e.g.
/// `cluster_tokens.list` (`{}` on the wire).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------------------------------------
// Inventory and joining
// ---------------------------------------------------------------------------------------------

/// The page's `gpu_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "GpuInfoOut"))]
pub struct GpuInfo {
    /// libtorch sees a CUDA device.
    #[serde(deserialize_with = "tolerant_bool")]
    pub cuda_available: bool,
    /// libtorch (a ROCm build) sees a ROCm device.
    // A ROCm/HIP build of libtorch.
    #[serde(deserialize_with = "tolerant_bool")]
    pub rocm_available: bool,
    /// CUDA devices.
    pub cuda_devices: u32,
    /// ROCm devices.
    pub rocm_devices: u32,
    /// What the node can train on, best first, ending in `cpu`.
    // `["cuda", "cpu"]`, `["rocm", "cpu"]` or `["cpu"]`.
    pub available_backends: Vec<Driver>,
}

impl GpuInfo {
    /// True when `driver` is among [`GpuInfo::available_backends`].
    pub fn has(&self, driver: Driver) -> bool {
        self.available_backends.contains(&driver)
    }

    /// [`GpuInfo::available_backends`] for people: `cuda, cpu`.
    pub fn backends_list(&self) -> String {
        let names: Vec<&str> = self.available_backends.iter().map(|d| d.as_str()).collect();
        names.join(", ")
    }

    /// The best available backend (CUDA, then ROCm, then the CPU).
    pub fn best(&self) -> Driver {
        Driver::ALL
            .into_iter()
            .find(|d| self.has(*d))
            .unwrap_or(Driver::Cpu)
    }
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "GpuDeviceOut"))]
pub struct GpuDevice {
    /// Index.
    // As the backend numbers it (0, 1, ...).
    pub index: u32,
    /// `cuda` or `rocm`.
    pub backend: Driver,
    /// Product name.
    // E.g. `NVIDIA H100 80GB HBM3` (a placeholder when the driver tools cannot tell).
    pub name: String,
    /// Memory, MiB.
    // Total; 0 when unknown.
    pub memory_total_mib: u64,
}

impl GpuDevice {
    /// Memory in whole GB as the listings show it (GiB, rounded).
    pub fn memory_gb(&self) -> u64 {
        (self.memory_total_mib as f64 / 1024.0).round() as u64
    }

    /// The admin page's `gpu_memory` entry: `"CUDA Device 0: 80GB VRAM"`.
    pub fn describe(&self) -> String {
        let kind = match self.backend {
            Driver::Cuda => "CUDA",
            Driver::Rocm => "ROCm",
            Driver::Cpu => "CPU",
        };
        format!("{kind} Device {}: {}GB VRAM", self.index, self.memory_gb())
    }
}

/// What a node has: printed by `gantry-trainer inventory` and sent when joining.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// The page's `gpu_info`.
    pub gpu_info: GpuInfo,
    /// Every GPU, CUDA ones then ROCm ones.
    pub gpus: Vec<GpuDevice>,
    /// GPU driver version (NVIDIA: NVML's, e.g. `580.65.06`; AMD: the kernel driver's), when
    /// readable.
    pub driver_version: Option<String>,
    /// CUDA version the driver supports (e.g. `13.0`), when readable.
    pub cuda_version: Option<String>,
    /// ROCm version, when readable.
    pub rocm_version: Option<String>,
    /// Host memory in GB (GiB, one decimal).
    pub host_memory_gb: f64,
    /// Logical CPUs.
    pub cpus: u32,
    /// Anything worth telling an operator (e.g. "NVML unavailable: ..."); never an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `nodes.register` request: a trainer joining (again). Registering again with the same
/// hostname and token is the normal way back after a network loss and keeps the node's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterNode {
    /// The whole cluster token (`GANTRY_CLUSTER_TOKEN`).
    pub token: String,
    /// The node name (`GANTRY_NODE_NAME` or the hostname).
    pub hostname: String,
    /// The address the node reaches the cluster from.
    pub ip_address: String,
    /// Node weight for scheduling (`GANTRY_NODE_WEIGHT`, default 100).
    pub weight: u32,
    /// Worker slots (`GANTRY_WORKERS`).
    pub workers: u32,
    /// Analysis workers (`GANTRY_ANALYSIS_WORKERS`), listed in `processes` from the moment the
    /// node joins, before its first heartbeat.
    #[serde(default)]
    pub analysis_workers: u32,
    /// What the node has.
    #[serde(flatten)]
    pub inventory: Inventory,
    /// The trainer's version.
    pub version: String,
}

/// What an admin chose for one hostname + token, stored by the registry and applied by the node
/// whenever it joins. Always sent whole, with a version the store increments on every change,
/// so a lost or reordered control message is corrected by the next heartbeat (the registry
/// pushes a newer version; a replica that missed a change adopts the node's newer one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// The preferred backend; `None` means automatic (the best one the node has).
    #[serde(default)]
    pub driver_preference: Option<Driver>,
    /// Drained: finish what runs, take nothing new.
    #[serde(default, deserialize_with = "tolerant_bool")]
    pub draining: bool,
    /// Incremented by the store on every change; 0 before the first.
    #[serde(default)]
    pub settings_version: i64,
}

/// A node name: 1–253 characters of letters, digits, `.`, `_` and `-` (a hostname, or
/// `GANTRY_NODE_NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// Check and wrap a node name.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("a node name must not be empty".into());
        }
        if s.len() > 253 {
            return Err("a node name must be at most 253 characters".into());
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "node name {s:?} may hold only letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `nodes.register` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The node's identity: the subject token of `gantry.node.<node_id>.*`. Derived from the
    /// hostname and the token's id, so the same node keeps it across restarts.
    pub node_id: String,
    /// Its `client_id` in the listings (the same value as `node_id`).
    pub client_id: String,
    /// The stored settings for this hostname + token (`driver_preference`, `draining`,
    /// `settings_version`), to apply at once.
    #[serde(flatten)]
    pub settings: NodeSettings,
    /// The name of the token it joined with.
    pub token_name: String,
}

/// A node's heartbeat on `gantry.node.<node_id>.heartbeat` (core NATS, every
/// `GANTRY_HEARTBEAT_INTERVAL`). Every registry replica subscribes to all of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Who is beating.
    pub node_id: String,
    /// Worker slots in use.
    pub busy_slots: u32,
    /// GPU memory in use over all devices, MiB, when readable.
    #[serde(default)]
    pub gpu_memory_used_mib: Option<u64>,
    /// One per worker.
    pub processes: Vec<Process>,
    /// The backend the node's workers run on now.
    pub driver: Driver,
    /// The settings the node is applying, so the registry can correct a node that missed a
    /// control message (or learn a change it missed itself).
    #[serde(flatten)]
    pub settings: NodeSettings,
    /// Seconds since the trainer started.
    pub uptime_seconds: f64,
    /// Each GPU's live figures (empty on a node without GPUs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_stats: Vec<GpuStats>,
    /// Why the node fails its health check (a GPU's, or the operator's `GANTRY_HEALTH_CHECK`):
    /// while set, it takes no new job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    /// True in the last heartbeat of a trainer shutting down: show it disconnected at once.
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "tolerant_bool"
    )]
    pub stopping: bool,
}

/// Pushed by the registry on `gantry.node.<node_id>.control`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeControl {
    /// The stored settings changed (`set_driver`, drain, undrain) or the node runs an older
    /// version of them: apply these whole if their version is newer than the node's. Moving to
    /// another driver moves the workers to that backend's job consumer; draining stops taking
    /// work.
    Settings(NodeSettings),
    /// The node's token was revoked: stop and exit non-zero.
    Leave {
        /// Why, for the node's log.
        reason: String,
    },
    /// The registry does not know this node (e.g. its store was reset): register again.
    Reregister,
    /// The node asked to be drained because it is stopping (`gantry-trainer drain`, a pod's
    /// `preStop`): stop the jobs in flight now and hand them back (their last checkpoint stays
    /// for the node that takes them next), instead of letting them finish as a drain does.
    HandBack,
}

// ---------------------------------------------------------------------------------------------
// Driver choice and draining
// ---------------------------------------------------------------------------------------------

/// `nodes.set_driver` request. Fields are optional on the wire so that a missing one is refused
/// as `bad_request` naming it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetDriver {
    /// The node name.
    pub hostname: Option<String>,
    /// The token it joined with: whole, or listed (`abcd1234...`).
    pub token: Option<String>,
    /// `cuda`, `rocm`, `cpu` or `any` (clears the preference; `auto` means the same).
    pub driver: Option<String>,
}

/// `{"success": true}`, with a warning when the change cannot take effect now.
// The `nodes.set_driver` and `nodes.drain` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
#[cfg_attr(feature = "openapi", oai(rename = "SuccessOut", example))]
pub struct SetDriverResult {
    /// Always true.
    // Failures are service errors.
    pub success: bool,
    /// Set when the change is stored but cannot take effect now (e.g. the node lacks that backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub warning: Option<String>,
}

/// `nodes.drain` request: drain (`drain: true`) or undrain (`drain: false`) a node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Drain {
    /// The node name.
    pub hostname: Option<String>,
    /// The token it joined with: whole, or listed (`abcd1234...`).
    pub token: Option<String>,
    /// True to drain, false to undrain (required).
    pub drain: Option<bool>,
}

/// A node's request to drain or undrain itself, on `gantry.node.<node_id>.drain`
/// ([`crate::subjects::node_drain`]). Draining also hands the node's jobs in flight back
/// ([`NodeControl::HandBack`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainSelf {
    /// True to drain, false to undrain.
    pub drain: bool,
}

/// The answer to [`DrainSelf`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainedSelf {
    /// Whether the node was draining already (an admin drained it) before this request.
    pub was_draining: bool,
}

// ---------------------------------------------------------------------------------------------
// Between registry replicas
// ---------------------------------------------------------------------------------------------

/// Announced by the replica that changed something on
/// [`crate::subjects::REGISTRY_EVENTS`], so every replica's in-memory view follows at once (each
/// also reads the store when it meets a node it does not know).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RegistryEvent {
    /// A node registered: its record as stored.
    NodeRegistered {
        /// The stored record, as JSON (the registry's own document type).
        record: serde_json::Value,
    },
    /// A node's driver preference or drain state changed.
    NodeSettings {
        /// The node.
        node_id: String,
        /// Its settings now, as stored.
        settings: NodeSettings,
    },
    /// A cluster token was revoked: its nodes are disconnected.
    TokenRevoked {
        /// The token's id.
        token_id: i64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_choices_parse_and_refuse_with_the_documented_message() {
        assert_eq!(Driver::parse_choice("CUDA"), Ok(Some(Driver::Cuda)));
        assert_eq!(Driver::parse_choice(" rocm "), Ok(Some(Driver::Rocm)));
        assert_eq!(Driver::parse_choice("cpu"), Ok(Some(Driver::Cpu)));
        assert_eq!(Driver::parse_choice("auto"), Ok(None));
        assert_eq!(Driver::parse_choice("any"), Ok(None));
        assert_eq!(
            Driver::parse_choice("opencl"),
            Err(DRIVER_CHOICES.to_owned())
        );
    }

    #[test]
    fn booleans_stored_as_integers_read_back_as_booleans() {
        let t: ClusterToken = serde_json::from_value(serde_json::json!({
            "id": 1, "name": "n", "token": "abcd1234...", "active": 0,
            "created_at": "2024-01-01T00:00:00Z"
        }))
        .unwrap();
        assert!(!t.active);
    }

    #[test]
    fn gpu_memory_is_described_like_the_admin_page() {
        let d = GpuDevice {
            index: 0,
            backend: Driver::Cuda,
            name: "H100".into(),
            memory_total_mib: 81559,
        };
        assert_eq!(d.describe(), "CUDA Device 0: 80GB VRAM");
        assert_eq!(d.memory_gb(), 80);
    }

    #[test]
    fn control_messages_are_tagged_by_type() {
        let settings = NodeSettings {
            driver_preference: Some(Driver::Rocm),
            draining: false,
            settings_version: 3,
        };
        let v = serde_json::to_value(NodeControl::Settings(settings)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "settings", "driver_preference": "rocm", "draining": false, "settings_version": 3})
        );
        let v = serde_json::to_value(NodeControl::Leave { reason: "x".into() }).unwrap();
        assert_eq!(v["type"], "leave");
    }

    #[test]
    fn best_backend_prefers_gpus() {
        let g = GpuInfo {
            available_backends: vec![Driver::Rocm, Driver::Cpu],
            ..Default::default()
        };
        assert_eq!(g.best(), Driver::Rocm);
        assert!(!g.has(Driver::Cuda));
        assert_eq!(GpuInfo::default().best(), Driver::Cpu);
    }
}
