//! Subject names. Request/reply endpoints are grouped under a versioned prefix so that a `v2`
//! can run beside a `v1`.

/// Prefix of the auth service's endpoints.
pub const AUTH_V1: &str = "gantry.auth.v1";
/// Prefix of the cluster registry's endpoints.
pub const REGISTRY_V1: &str = "gantry.registry.v1";

/// Auth endpoint names, relative to [`AUTH_V1`].
pub mod auth {
    /// [`crate::auth::VerifyRequest`] → [`crate::auth::Principal`].
    pub const VERIFY: &str = "verify";
    /// [`crate::auth::LoginRequest`] → [`crate::auth::LoginResponse`].
    pub const LOGIN: &str = "login";
    /// [`crate::auth::LogoutRequest`] → `{}`.
    pub const LOGOUT: &str = "logout";
    /// [`crate::auth::UserQuery`] (`{}` for the first page) → [`crate::auth::UserList`].
    pub const USERS_LIST: &str = "users.list";
    /// [`crate::auth::CreateUser`] → [`crate::auth::User`].
    pub const USERS_CREATE: &str = "users.create";
    /// [`crate::auth::UpdateUser`] → [`crate::auth::User`].
    pub const USERS_UPDATE: &str = "users.update";
    /// [`crate::auth::UserRef`] → [`crate::auth::User`].
    pub const USERS_GET: &str = "users.get";
    /// [`crate::auth::DeleteUser`] → `{}`.
    pub const USERS_DELETE: &str = "users.delete";
    /// [`crate::auth::LedgerQuery`] → [`crate::auth::LedgerPage`].
    pub const USERS_LEDGER: &str = "users.ledger";
    /// [`crate::auth::TokenQuery`] (or [`crate::auth::UserRef`]) → [`crate::auth::ApiTokenList`].
    pub const TOKENS_LIST: &str = "tokens.list";
    /// [`crate::auth::CreateApiToken`] → [`crate::auth::CreatedApiToken`].
    pub const TOKENS_CREATE: &str = "tokens.create";
    /// [`crate::auth::RevokeApiToken`] → `{}`.
    pub const TOKENS_REVOKE: &str = "tokens.revoke";
    /// [`crate::auth::CreditChange`] → [`crate::auth::CreditResult`].
    pub const CREDITS_CHARGE: &str = "credits.charge";
    /// [`crate::auth::CreditChange`] → [`crate::auth::CreditResult`].
    pub const CREDITS_REFUND: &str = "credits.refund";
    /// Charges made in a time window and not refunded: [`crate::auth::UnsettledQuery`] ->
    /// [`crate::auth::UnsettledCharges`] (the registry's reconciler refunds those without a job).
    pub const CREDITS_UNSETTLED: &str = "credits.unsettled";
}

/// Registry endpoint names, relative to [`REGISTRY_V1`]. Requests go to any replica (one queue
/// group); failures are service errors whose code maps to the HTTP status.
pub mod registry {
    /// [`crate::registry::ClusterTokenQuery`] (`{}` for the first page) →
    /// [`crate::registry::ClusterTokenList`].
    pub const TOKENS_LIST: &str = "cluster_tokens.list";
    /// [`crate::registry::CreateClusterToken`] → [`crate::registry::ClusterToken`] (whole token).
    /// A blank or over-long name: `bad_request`; a name an active token has: `conflict`.
    pub const TOKENS_CREATE: &str = "cluster_tokens.create";
    /// [`crate::registry::RevokeClusterToken`] → [`crate::registry::ClusterToken`] (listed,
    /// `active: false`). Unknown or already revoked id: `not_found`. Its nodes are told to leave.
    pub const TOKENS_REVOKE: &str = "cluster_tokens.revoke";
    /// [`crate::registry::RegisterNode`] → [`crate::registry::Registered`]. Unknown or revoked
    /// token: `unauthorized`.
    pub const REGISTER: &str = "nodes.register";
    /// [`crate::registry::ListQuery`] (`{}` for the first page) → [`crate::registry::ClusterNodes`].
    pub const NODES: &str = "nodes.list";
    /// [`crate::registry::ListQuery`] (`{}` for the first page) → [`crate::registry::ClusterClients`].
    pub const CLIENTS: &str = "clients.list";
    /// [`crate::registry::BodyQuery`] → a [`crate::registry::BodyHead`] line and the body's
    /// first bytes (see [`crate::registry::split_body_reply`]); the rest, if any, from the same
    /// replica at [`super::listing_chunks`].
    pub const BODY: &str = "listing.body";
    /// [`crate::registry::SetDriver`] → [`crate::registry::SetDriverResult`]. Missing field or
    /// unknown driver: `bad_request`; unknown hostname + token: `not_found`; a revoked token:
    /// `conflict`.
    pub const SET_DRIVER: &str = "nodes.set_driver";
    /// [`crate::registry::Drain`] → [`crate::registry::SetDriverResult`]. Missing field:
    /// `bad_request`; unknown hostname + token: `not_found`; a revoked token: `conflict`.
    pub const DRAIN: &str = "nodes.drain";
}

/// Where one registry replica (`instance`) hands out the rest of a listing body
/// ([`crate::registry::ChunkQuery`] → raw bytes); only that replica subscribes.
pub fn listing_chunks(instance: &str) -> String {
    format!("{REGISTRY_V1}.listing.chunk.{instance}")
}

/// Announcements between registry replicas ([`crate::registry::RegistryEvent`]), core NATS;
/// every replica subscribes (not as a queue group).
pub const REGISTRY_EVENTS: &str = "gantry.registry.v1.events.nodes";

/// Full subject of an auth endpoint.
pub fn auth(endpoint: &str) -> String {
    format!("{AUTH_V1}.{endpoint}")
}

/// Full subject of a registry endpoint.
pub fn registry(endpoint: &str) -> String {
    format!("{REGISTRY_V1}.{endpoint}")
}

/// Heartbeats of every node (registries subscribe to this wildcard, not as a queue group, so each
/// replica keeps the full view).
pub const NODE_HEARTBEATS: &str = "gantry.node.*.heartbeat";

/// A node's heartbeat subject: [`crate::registry::Heartbeat`], core NATS, fire and forget.
pub fn node_heartbeat(node_id: &str) -> String {
    format!("gantry.node.{node_id}.heartbeat")
}

/// A node's control subject: [`crate::registry::NodeControl`] pushed by the registry.
pub fn node_control(node_id: &str) -> String {
    format!("gantry.node.{node_id}.control")
}

/// Every node's own drain requests (the registry serves them in a queue group).
pub const NODE_DRAINS: &str = "gantry.node.*.drain";

/// Where a node asks the registry to drain (or undrain) itself: [`crate::registry::DrainSelf`],
/// a request answered with [`crate::registry::DrainedSelf`]. The subject names the node, and the
/// bus lets a node publish only on its own, so a node can drain nobody but itself.
pub fn node_drain(node_id: &str) -> String {
    format!("gantry.node.{node_id}.drain")
}

/// Every node's analysis subject (the api publishes analysis requests under it).
pub const NODE_ANALYZE_ALL: &str = "gantry.node.*.analyze";

/// Where the api asks node `node_id` to classify images: [`crate::analysis::AnalyzeBatch`], a
/// request answered with [`crate::analysis::AnalyzeBatchResult`] or a service error. Only the api
/// publishes here; the node subscribes to its own only.
pub fn node_analyze(node_id: &str) -> String {
    format!("gantry.node.{node_id}.analyze")
}
