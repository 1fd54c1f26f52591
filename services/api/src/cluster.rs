//! The cluster: cluster tokens, connected clients, nodes, driver choice and draining. The
//! registry answers in the admin page's shapes, and its replies (`gantry_contracts::registry`)
//! are served as they are (the two listings as the very bytes it serialized: [`crate::listing`]);
//! this module holds only the request bodies and parameters.

use gantry_contracts::paging;
use gantry_contracts::registry::{
    self as msg, BodyQuery, ClusterClients, ClusterNodes, ClusterToken, ClusterTokenList, Driver,
    Listing, ListingFilter, SetDriverResult,
};
use gantry_contracts::subjects::registry as ep;
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiRequest, ApiResponse, Enum, Multipart, Object, OpenApi};

use crate::auth::Credentials;
use crate::error::ApiResult;
use crate::listing::{RawJson, Served};
use crate::state::AppState;
use crate::tags::ApiTags;

fn default_limit() -> u32 {
    paging::DEFAULT_LIMIT
}

/// A new cluster token.
#[derive(Debug, Clone, Object)]
pub struct CreateClusterTokenBody {
    /// A name to recognise it by, unique among active tokens (compared without surrounding
    /// blanks and regardless of case); a revoked token's name may be used again.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
}

/// The fields of `set_driver`, in whichever form they come.
#[derive(Debug, Clone, Object, Multipart, serde::Deserialize)]
pub struct SetDriverFields {
    /// Hostname of the cluster node
    pub hostname: String,
    /// Authentication token for the node
    pub token: String,
    /// Preferred driver: "cuda" or "rocm" (also "cpu", or "any" to clear the preference;
    /// "auto" means the same as "any")
    pub driver: String,
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
    pub hostname: String,
    /// Authentication token for the node (whole, or as listed)
    pub token: String,
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

/// `POST /admin/api/cluster_tokens` answers.
#[derive(ApiResponse)]
pub enum CreatedClusterToken {
    /// Created: `token` is whole, this once.
    #[oai(status = 201)]
    Created(Json<ClusterToken>),
}

/// `DELETE /admin/api/cluster_tokens/{id}` answers.
#[derive(ApiResponse)]
pub enum RevokedClusterToken {
    /// Revoked: nodes can no longer join with it, and those that joined are told to leave.
    #[oai(status = 204)]
    Done,
}

/// A backend to filter a listing by.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum DriverFilter {
    /// NVIDIA CUDA.
    Cuda,
    /// AMD ROCm.
    Rocm,
    /// The CPU.
    Cpu,
}

impl From<DriverFilter> for Driver {
    fn from(d: DriverFilter) -> Self {
        match d {
            DriverFilter::Cuda => Driver::Cuda,
            DriverFilter::Rocm => Driver::Rocm,
            DriverFilter::Cpu => Driver::Cpu,
        }
    }
}

/// `GET /api/admin/cluster_nodes` answers.
#[derive(ApiResponse)]
pub enum NodesListing {
    /// The listing, in the page's shape. `ETag` names this exact body; `X-Total-Count` is the
    /// number of nodes the filters match (before `offset` and `limit`); gzipped
    /// (`Content-Encoding: gzip`) when the request accepts it.
    #[oai(status = 200)]
    Ok(
        RawJson<ClusterNodes>,
        #[oai(header = "ETag")] String,
        #[oai(header = "X-Total-Count")] u64,
        #[oai(header = "Vary")] String,
        #[oai(header = "Content-Encoding")] Option<String>,
    ),
    /// Not modified: `If-None-Match` names the current listing.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
}

/// `GET /admin/api/cluster_clients` answers.
#[derive(ApiResponse)]
pub enum ClientsListing {
    /// The listing, in the page's shape. `ETag` names this exact body; `X-Total-Count` is the
    /// number of clients the filters match (before `offset` and `limit`); gzipped
    /// (`Content-Encoding: gzip`) when the request accepts it.
    #[oai(status = 200)]
    Ok(
        RawJson<ClusterClients>,
        #[oai(header = "ETag")] String,
        #[oai(header = "X-Total-Count")] u64,
        #[oai(header = "Vary")] String,
        #[oai(header = "Content-Encoding")] Option<String>,
    ),
    /// Not modified: `If-None-Match` names the current listing.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
}

/// What both listings take.
struct ListingParams {
    limit: Option<u32>,
    offset: Option<u64>,
    connected: Option<bool>,
    driver: Option<DriverFilter>,
    token: Option<String>,
}

/// The cluster endpoints.
pub struct ClusterApi(pub AppState);

impl ClusterApi {
    /// One listing, as the registry serialized it.
    async fn listing(
        &self,
        req: &Request,
        listing: Listing,
        p: ListingParams,
    ) -> ApiResult<Served> {
        let q = BodyQuery {
            listing,
            filter: ListingFilter {
                connected: p.connected,
                driver: p.driver.map(Driver::from),
                token: p.token.map(|t| t.trim().to_owned()),
            },
            offset: usize::try_from(p.offset.unwrap_or(0)).unwrap_or(usize::MAX),
            limit: p.limit.map(|l| l as usize),
            known: None,
        };
        let kept = self.0.listings.fetch(&self.0.nats, q).await?;
        crate::listing::serve(req, &kept).await
    }

    async fn drain(
        &self,
        req: &Request,
        auth: Credentials,
        body: NodeBody,
        drain: bool,
    ) -> ApiResult<Json<SetDriverResult>> {
        self.0.auth.admin(&auth, req).await?;
        let f = body.fields();
        let r: SetDriverResult = self
            .0
            .registry(
                ep::DRAIN,
                &msg::Drain {
                    hostname: Some(f.hostname),
                    token: Some(f.token),
                    drain: Some(drain),
                },
            )
            .await?;
        Ok(Json(r))
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
        tag = "ApiTags::Cluster",
        operation_id = "list_cluster_tokens",
        code_sample(lang = "curl", source = "crate::docs::samples::LIST_CLUSTER_TOKENS")
    )]
    async fn list_tokens(
        &self,
        req: &Request,
        auth: Credentials,
        /// Page size (default: 100, 1 to 1000)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u32>,
        /// Tokens to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<ClusterTokenList>> {
        self.0.auth.admin(&auth, req).await?;
        let list: ClusterTokenList = self
            .0
            .registry(
                ep::TOKENS_LIST,
                &msg::ClusterTokenQuery {
                    limit: Some(limit.0),
                    offset: offset.0,
                },
            )
            .await?;
        Ok(Json(list))
    }

    /// Create a cluster token
    ///
    /// Issues a token GPU machines join the cluster with (`GANTRY_CLUSTER_TOKEN`). The answer
    /// holds it whole, once; listings show its first 8 characters. Names are unique among active
    /// tokens, compared without surrounding blanks and regardless of case (409 otherwise); a
    /// revoked token's name may be used again.
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
        let t: ClusterToken = self
            .0
            .registry(
                ep::TOKENS_CREATE,
                &msg::CreateClusterToken { name: body.0.name },
            )
            .await?;
        Ok(CreatedClusterToken::Created(Json(t)))
    }

    /// Revoke a cluster token
    ///
    /// Nodes can no longer join with it; nodes that joined with it are told to leave and shown
    /// disconnected. It stays listed with `active: false`. 204 the first time; 404 afterwards.
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
    ) -> ApiResult<RevokedClusterToken> {
        self.0.auth.admin(&auth, req).await?;
        let _: ClusterToken = self
            .0
            .registry(ep::TOKENS_REVOKE, &msg::RevokeClusterToken { id: id.0 })
            .await?;
        Ok(RevokedClusterToken::Done)
    }

    /// List cluster clients
    ///
    /// List all connected cluster clients with their GPU capabilities and status.
    ///
    /// Without parameters, every connected client. `limit`, `offset`, `driver` and `token` pick
    /// fewer, in the same shape. The answer carries an `ETag`: send it back in `If-None-Match`
    /// and an unchanged listing answers 304 with no body. Sent gzipped to clients that accept it
    /// (`Accept-Encoding: gzip`). One listing is one consistent snapshot, at most a second old.
    #[oai(
        path = "/admin/api/cluster_clients",
        method = "get",
        tag = "ApiTags::Cluster",
        operation_id = "list_cluster_clients",
        code_sample(lang = "curl", source = "crate::docs::samples::LIST_CLUSTER_CLIENTS")
    )]
    async fn clients(
        &self,
        req: &Request,
        auth: Credentials,
        /// At most this many clients (1 to 100000; default: all)
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        limit: Query<Option<u32>>,
        /// Skip this many of the matching clients (default: 0)
        #[oai(validator(maximum(value = "1000000000000000")))]
        offset: Query<Option<u64>>,
        /// Only clients whose workers run on this backend
        driver: Query<Option<DriverFilter>>,
        /// Only clients that joined with this cluster token: as listed (`abcd1234...`), its
        /// first 8 characters, whole, or its name
        #[oai(validator(min_length = 1, max_length = 200))]
        token: Query<Option<String>>,
    ) -> ApiResult<ClientsListing> {
        self.0.auth.admin(&auth, req).await?;
        let params = ListingParams {
            limit: limit.0,
            offset: offset.0,
            connected: None,
            driver: driver.0,
            token: token.0,
        };
        Ok(match self.listing(req, Listing::Clients, params).await? {
            Served::Body {
                body,
                etag,
                total,
                encoding,
            } => ClientsListing::Ok(
                RawJson::new(body),
                etag,
                total,
                "Accept-Encoding".into(),
                encoding,
            ),
            Served::NotModified(etag) => ClientsListing::NotModified(etag),
        })
    }

    /// List cluster nodes
    ///
    /// Get detailed information about all cluster nodes, including connected and recently disconnected nodes.
    ///
    /// Without parameters, every node. `limit`, `offset`, `connected`, `driver` and `token` pick
    /// fewer, in the same shape (`master_stats` still counts every node). The answer carries an
    /// `ETag`: send it back in `If-None-Match` and an unchanged listing answers 304 with no
    /// body. Sent gzipped to clients that accept it (`Accept-Encoding: gzip`). One listing is one
    /// consistent snapshot, at most a second old.
    #[oai(
        path = "/api/admin/cluster_nodes",
        method = "get",
        tag = "ApiTags::Cluster",
        operation_id = "cluster_nodes",
        code_sample(lang = "curl", source = "crate::docs::samples::CLUSTER_NODES")
    )]
    #[allow(clippy::too_many_arguments)]
    async fn nodes(
        &self,
        req: &Request,
        auth: Credentials,
        /// At most this many nodes (1 to 100000; default: all)
        #[oai(validator(minimum(value = "1"), maximum(value = "100000")))]
        limit: Query<Option<u32>>,
        /// Skip this many of the matching nodes (default: 0)
        #[oai(validator(maximum(value = "1000000000000000")))]
        offset: Query<Option<u64>>,
        /// Only connected (`true`) or only disconnected (`false`) nodes
        connected: Query<Option<bool>>,
        /// Only nodes whose workers run on this backend
        driver: Query<Option<DriverFilter>>,
        /// Only nodes that joined with this cluster token: as listed (`abcd1234...`), its first
        /// 8 characters, whole, or its name
        #[oai(validator(min_length = 1, max_length = 200))]
        token: Query<Option<String>>,
    ) -> ApiResult<NodesListing> {
        self.0.auth.admin(&auth, req).await?;
        let params = ListingParams {
            limit: limit.0,
            offset: offset.0,
            connected: connected.0,
            driver: driver.0,
            token: token.0,
        };
        Ok(match self.listing(req, Listing::Nodes, params).await? {
            Served::Body {
                body,
                etag,
                total,
                encoding,
            } => NodesListing::Ok(
                RawJson::new(body),
                etag,
                total,
                "Accept-Encoding".into(),
                encoding,
            ),
            Served::NotModified(etag) => NodesListing::NotModified(etag),
        })
    }

    /// Set a node's driver
    ///
    /// Set the preferred GPU driver (CUDA or ROCm) for a specific cluster node. This preference is saved and reused for future connections from the same hostname + token combination.
    #[oai(
        path = "/api/admin/cluster_nodes/set_driver",
        method = "post",
        tag = "ApiTags::Cluster",
        operation_id = "set_driver",
        code_sample(lang = "curl", source = "crate::docs::samples::SET_DRIVER")
    )]
    async fn set_driver(
        &self,
        req: &Request,
        auth: Credentials,
        body: SetDriverBody,
    ) -> ApiResult<Json<SetDriverResult>> {
        self.0.auth.admin(&auth, req).await?;
        let f = match body {
            SetDriverBody::Multipart(f)
            | SetDriverBody::Form(Form(f))
            | SetDriverBody::Json(Json(f)) => f,
        };
        let r: SetDriverResult = self
            .0
            .registry(
                ep::SET_DRIVER,
                &msg::SetDriver {
                    hostname: Some(f.hostname),
                    token: Some(f.token),
                    driver: Some(f.driver),
                },
            )
            .await?;
        Ok(Json(r))
    }

    /// Drain a node
    ///
    /// The node finishes what it runs and takes no new work; its processes show `draining`.
    /// A node whose cluster token is revoked answers 409: it cannot rejoin, so there is nothing
    /// to change.
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
    ) -> ApiResult<Json<SetDriverResult>> {
        self.drain(req, auth, body, true).await
    }

    /// Undrain a node
    ///
    /// The node takes work again. A node whose cluster token is revoked answers 409.
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
    ) -> ApiResult<Json<SetDriverResult>> {
        self.drain(req, auth, body, false).await
    }
}
