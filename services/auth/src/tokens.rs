//! API tokens: `tokens.list`, `tokens.create`, `tokens.revoke`, and bearer verification.
//!
//! A token is `gnt_` and 64 hex characters, shown whole once; the store keeps its SHA-256.
//! Revoking stamps `revoked_at_ms` (a time, not a boolean: no `$set` quirk) and keeps the
//! document, so `GANTRY_ADMIN_API_TOKEN` is not stored again on the next start.

use futures::TryStreamExt;
use gantry_contracts::auth::{
    ApiToken, ApiTokenList, CreateApiToken, CreatedApiToken, Principal, RevokeApiToken, TokenQuery,
};
use gantry_contracts::paging::MAX_LIMIT;
use gantry_runtime::secrets::{self, ExposeSecret};
use mongodb::bson::doc;
use serde_json::{Map, Value};

use crate::app::App;
use crate::domain::TokenName;
use crate::error::{AuthError, AuthResult};
use crate::store::{now_ms, to_time, Store, TokenDoc};

/// Every API token starts with this, so leaked tokens are easy to recognise (secret scanners).
pub const API_TOKEN_PREFIX: &str = "gnt_";
/// Live tokens one user may hold.
const MAX_TOKENS_PER_USER: usize = 100;
/// `last_used_at` is written at most this often per token.
const LAST_USED_EVERY_MS: i64 = 60_000;

fn listed(t: &TokenDoc) -> ApiToken {
    ApiToken {
        id: t.id.clone(),
        name: t.name.clone(),
        prefix: t.prefix.clone(),
        created_at: to_time(t.created_at_ms),
        last_used_at: t.last_used_ms.map(to_time),
    }
}

async fn live_tokens(store: &Store, user_id: i64) -> AuthResult<Vec<TokenDoc>> {
    let mut tokens: Vec<TokenDoc> = store
        .tokens
        .find(doc! { "user_id": user_id })
        .await
        .map_err(|e| anyhow::Error::new(e).context("listing API tokens"))?
        .try_collect()
        .await
        .map_err(|e| anyhow::Error::new(e).context("reading API tokens"))?;
    tokens.retain(|t| t.revoked_at_ms.is_none());
    tokens.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    Ok(tokens)
}

/// `tokens.list`: a page of a user's live tokens, oldest first. A user holds at most
/// [`MAX_TOKENS_PER_USER`] live tokens, so the page is cut from all of them.
pub async fn list(app: App, req: TokenQuery) -> AuthResult<ApiTokenList> {
    let page = req.page().check(MAX_LIMIT).map_err(AuthError::BadRequest)?;
    let store = app.store();
    if store.user(req.user_id).await?.is_none() {
        return Err(AuthError::NotFound(format!(
            "no user with id {}",
            req.user_id
        )));
    }
    let live = live_tokens(store, req.user_id).await?;
    let total = live.len() as u64;
    Ok(ApiTokenList {
        tokens: live
            .iter()
            .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
            .take(page.limit as usize)
            .map(listed)
            .collect(),
        total,
    })
}

/// A token document for `secret`, owned by `user_id`.
pub fn new_doc(user_id: i64, name: &TokenName, secret: &str) -> TokenDoc {
    TokenDoc {
        id: secrets::random_hex(12),
        user_id,
        name: name.as_ref().to_owned(),
        hash: secrets::digest(secret),
        prefix: secrets::listed(&secrets::head(secret)),
        created_at_ms: now_ms(),
        last_used_ms: None,
        revoked_at_ms: None,
    }
}

/// `tokens.create`: the only answer that carries the whole token.
pub async fn create(app: App, req: CreateApiToken) -> AuthResult<CreatedApiToken> {
    let name = TokenName::parse(&req.name)?;
    let store = app.store();
    let user = store
        .user(req.user_id)
        .await?
        .ok_or_else(|| AuthError::NotFound(format!("no user with id {}", req.user_id)))?;
    if !user.active {
        return Err(AuthError::Forbidden(
            "a deactivated user cannot create API tokens".into(),
        ));
    }
    if live_tokens(store, user.id).await?.len() >= MAX_TOKENS_PER_USER {
        return Err(AuthError::Conflict(format!(
            "a user may hold at most {MAX_TOKENS_PER_USER} API tokens: revoke one first"
        )));
    }
    let secret = secrets::generate(API_TOKEN_PREFIX);
    let token = new_doc(user.id, &name, secret.expose_secret());
    if !store.insert_token(&token).await? {
        return Err(
            anyhow::anyhow!("a freshly generated API token collided with a stored one").into(),
        );
    }
    tracing::info!(user_id = user.id, token_id = %token.id, "API token created");
    Ok(CreatedApiToken {
        token: listed(&token),
        secret: secret.expose_secret().to_owned(),
    })
}

/// `tokens.revoke`: only the owner's own tokens; anything else is not found.
pub async fn revoke(app: App, req: RevokeApiToken) -> AuthResult<Value> {
    let store = app.store();
    let not_found = || AuthError::NotFound(format!("no API token with id '{}'", req.token_id));
    let token = store
        .tokens
        .find_one(doc! { "_id": &req.token_id })
        .await
        .map_err(|e| anyhow::Error::new(e).context("reading an API token"))?
        .ok_or_else(not_found)?;
    if token.user_id != req.user_id || token.revoked_at_ms.is_some() {
        return Err(not_found());
    }
    store
        .tokens
        .update_one(
            doc! { "_id": &token.id },
            doc! { "$set": { "revoked_at_ms": now_ms() } },
        )
        .await
        .map_err(|e| anyhow::Error::new(e).context("revoking an API token"))?;
    app.announce_revocation(token.user_id).await;
    tracing::info!(user_id = token.user_id, token_id = %token.id, "API token revoked");
    Ok(Value::Object(Map::new()))
}

/// The principal behind a bearer token.
pub async fn verify(app: &App, secret: &str) -> AuthResult<Principal> {
    let store = app.store();
    let hash = secrets::digest(secret);
    let unknown = || AuthError::Unauthorized("the API token is unknown or revoked".into());
    let token = store.token_by_hash(&hash).await?.ok_or_else(unknown)?;
    if !secrets::same(&token.hash, &hash) || token.revoked_at_ms.is_some() {
        return Err(unknown());
    }
    let user = store.user(token.user_id).await?.ok_or_else(unknown)?;
    if !user.active {
        return Err(AuthError::Unauthorized(
            "this account is deactivated".into(),
        ));
    }
    let now = now_ms();
    if token
        .last_used_ms
        .is_none_or(|t| now - t >= LAST_USED_EVERY_MS)
    {
        // Bookkeeping only: a failure here must not refuse a valid token.
        if let Err(e) = store
            .tokens
            .update_one(
                doc! { "_id": &token.id },
                doc! { "$set": { "last_used_ms": now } },
            )
            .await
        {
            tracing::warn!(error = %e, token_id = %token.id, "could not record when a token was used");
        }
    }
    Ok(Principal {
        user: user.to_user(),
        via: "bearer".into(),
        cache_seconds: app.settings().verify_cache.as_secs(),
    })
}
