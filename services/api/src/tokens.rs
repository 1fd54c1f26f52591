//! A user's own API tokens.

use gantry_contracts::auth as msg;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_contracts::{paging, rfc3339_millis};
use gantry_runtime::nats;
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::auth::Credentials;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tags::ApiTags;

/// An API token as listed: never whole.
#[derive(Debug, Clone, Object)]
pub struct ApiTokenOut {
    /// Token id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The first 8 characters followed by `...`.
    pub prefix: String,
    /// When it was made (RFC 3339, UTC, milliseconds).
    pub created_at: String,
    /// When it was last used (RFC 3339, UTC, milliseconds; recorded at most once a minute);
    /// absent if never.
    #[oai(skip_serializing_if_is_none)]
    pub last_used_at: Option<String>,
}

impl From<msg::ApiToken> for ApiTokenOut {
    fn from(t: msg::ApiToken) -> Self {
        Self {
            id: t.id,
            name: t.name,
            prefix: t.prefix,
            created_at: rfc3339_millis(t.created_at),
            last_used_at: t.last_used_at.map(rfc3339_millis),
        }
    }
}

/// Your tokens.
#[derive(Debug, Clone, Object)]
pub struct ApiTokenList {
    /// Live tokens, oldest first.
    pub tokens: Vec<ApiTokenOut>,
    /// Your live tokens in all.
    pub total: u64,
    /// Page size.
    pub limit: u64,
    /// Tokens skipped before this page.
    pub offset: u64,
}

fn default_limit() -> u32 {
    paging::DEFAULT_LIMIT
}

/// A new token.
#[derive(Debug, Clone, Object)]
pub struct CreateTokenBody {
    /// A name to recognise it by.
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
}

/// A token just made: the only time it is shown whole.
#[derive(Debug, Clone, Object)]
pub struct CreatedTokenOut {
    /// As listed.
    #[oai(flatten)]
    pub listed: ApiTokenOut,
    /// The whole token. Keep it: it is not shown again.
    pub token: String,
}

/// `POST /api/tokens` answers.
#[derive(ApiResponse)]
pub enum CreatedToken {
    /// Created.
    #[oai(status = 201)]
    Created(Json<CreatedTokenOut>),
}

/// `DELETE /api/tokens/{id}` answers.
#[derive(ApiResponse)]
pub enum Revoked {
    /// Revoked; it stops working at once.
    #[oai(status = 204)]
    Done,
}

/// Token management for every user.
pub struct TokensApi(pub AppState);

#[OpenApi]
impl TokensApi {
    /// List your API tokens
    #[oai(
        path = "/api/tokens",
        method = "get",
        tag = "ApiTags::Tokens",
        operation_id = "list_tokens"
    )]
    async fn list(
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
    ) -> ApiResult<Json<ApiTokenList>> {
        let p = self.0.auth.principal(&auth, req).await?;
        let list: msg::ApiTokenList = nats::request(
            &self.0.nats,
            subjects::auth(ep::TOKENS_LIST),
            &msg::TokenQuery {
                user_id: p.user.id,
                limit: Some(limit.0),
                offset: offset.0,
            },
        )
        .await?;
        Ok(Json(ApiTokenList {
            tokens: list.tokens.into_iter().map(Into::into).collect(),
            total: list.total,
            limit: u64::from(limit.0),
            offset: offset.0,
        }))
    }

    /// Create an API token
    ///
    /// The answer holds the whole token, once. Use it as `Authorization: Bearer <token>`.
    #[oai(
        path = "/api/tokens",
        method = "post",
        tag = "ApiTags::Tokens",
        operation_id = "create_token"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<CreateTokenBody>,
    ) -> ApiResult<CreatedToken> {
        let p = self.0.auth.principal(&auth, req).await?;
        let t: msg::CreatedApiToken = nats::request(
            &self.0.nats,
            subjects::auth(ep::TOKENS_CREATE),
            &msg::CreateApiToken {
                user_id: p.user.id,
                name: body.0.name,
            },
        )
        .await?;
        Ok(CreatedToken::Created(Json(CreatedTokenOut {
            listed: t.token.into(),
            token: t.secret,
        })))
    }

    /// Revoke an API token
    ///
    /// It stops working at once. 204 the first time; 404 afterwards, and for a token that is
    /// not yours.
    #[oai(
        path = "/api/tokens/:id",
        method = "delete",
        tag = "ApiTags::Tokens",
        operation_id = "revoke_token"
    )]
    async fn revoke(
        &self,
        req: &Request,
        auth: Credentials,
        /// The token's id.
        id: Path<String>,
    ) -> ApiResult<Revoked> {
        let p = self.0.auth.principal(&auth, req).await?;
        let _: serde_json::Value = nats::request(
            &self.0.nats,
            subjects::auth(ep::TOKENS_REVOKE),
            &msg::RevokeApiToken {
                user_id: p.user.id,
                token_id: id.0,
            },
        )
        .await?;
        Ok(Revoked::Done)
    }
}
