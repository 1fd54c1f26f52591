//! `login` and `logout`, session verification with sliding expiry, and the failed-login limiter.
//!
//! The limiter keeps its state in the store (several replicas share it): every login attempt
//! first writes an attempt document, then counts the attempts of the same username from the same
//! client, and of the same client for any username, within the window, its own included. Keying
//! by username and client together means nobody can lock an account for its owner by guessing
//! from elsewhere; the api takes the client address from `X-Forwarded-For` only behind a trusted
//! proxy (`GANTRY_TRUSTED_PROXIES`), so behind an ingress users are still told apart. Past a
//! username's allowance from one client, each further try must wait longer after the last one
//! (1 s, doubling, up to the window), and one that comes too early is withdrawn and refused with
//! 429 before the password is even checked; past a client's allowance over all usernames, the
//! client is refused for the window. A failed attempt stays as a failure; a
//! successful one is withdrawn together with the username's earlier failures. Writing before
//! counting means concurrent guesses cannot all slip under the limit at once.

use std::time::Duration;

use gantry_contracts::auth::{LoginRequest, LoginResponse, LogoutRequest, Principal};
use gantry_runtime::mongo;
use gantry_runtime::secrets::{self, ExposeSecret};
use mongodb::bson::{doc, oid::ObjectId};
use serde_json::{Map, Value};

use crate::app::App;
use crate::error::{AuthError, AuthResult};
use crate::store::{now_ms, FailureDoc, SessionDoc, Store};

/// The one message for a wrong username or password: it must not tell which.
const BAD_LOGIN: &str = "invalid username or password";

/// The first wait after a username's allowance of failed logins from one client is used up;
/// each further failure doubles it.
const BACKOFF_BASE_MS: i64 = 1000;

/// At most this many characters of a username or client address go into the limiter's records.
const MAX_RECORDED: usize = 128;

fn clip(s: &str) -> String {
    s.chars().take(MAX_RECORDED).collect()
}

/// When a session seen at `now` should have its expiry pushed forward: not on every request (that
/// would be a write per request), but once a minute, or more often for very short lifetimes.
/// Returns the new `(last_seen_ms, expires_at_ms)` or `None` to leave it.
pub fn slide(session: &SessionDoc, now: i64, ttl: Duration) -> Option<(i64, i64)> {
    let ttl_ms = ttl.as_millis() as i64;
    let every = (ttl_ms / 4).min(60_000);
    (now - session.last_seen_ms >= every).then_some((now, now + ttl_ms))
}

/// How long the api may cache a verified session: the configured time, never past the expiry.
pub fn cache_seconds(expires_at_ms: i64, now: i64, max: Duration) -> u64 {
    let left = ((expires_at_ms - now).max(0) / 1000) as u64;
    left.min(max.as_secs())
}

impl Store {
    /// When the latest attempt of `username` from `client` other than `except` was made.
    async fn last_attempt(
        &self,
        username: &str,
        client: &str,
        except: ObjectId,
    ) -> anyhow::Result<Option<i64>> {
        use anyhow::Context as _;
        let last = self
            .failures
            .find_one(doc! { "username": username, "client": client, "_id": { "$ne": except } })
            .sort(doc! { "at_ms": -1 })
            .await
            .context("reading the last failed login")?;
        Ok(last.map(|f| f.at_ms))
    }

    async fn count_attempts(&self, fields: &[(&str, &str)], since_ms: i64) -> anyhow::Result<u64> {
        use anyhow::Context as _;
        let mut filter = doc! { "at_ms": { "$gt": since_ms } };
        for (field, value) in fields {
            filter.insert(*field, *value);
        }
        mongo::count(&self.failures, filter)
            .await
            .context("counting failed logins")
    }
}

/// `login`.
pub async fn login(app: App, req: LoginRequest) -> AuthResult<LoginResponse> {
    let store = app.store();
    let settings = app.settings();
    let username = clip(&req.username);
    let client = clip(req.client.trim());

    let attempt_id = ObjectId::new();
    let now = now_ms();
    let attempt = FailureDoc {
        id: attempt_id,
        username: username.clone(),
        client: client.clone(),
        at_ms: now,
    };
    store
        .failures
        .insert_one(&attempt)
        .await
        .map_err(|e| anyhow::Error::new(e).context("recording a login attempt"))?;
    let withdraw = || async {
        store
            .failures
            .delete_one(doc! { "_id": attempt_id })
            .await
            .map_err(|e| anyhow::Error::new(e).context("withdrawing a login attempt"))
    };
    let since = now - settings.failure_window.as_millis() as i64;
    // Keyed by username and client together: guesses from one address never lock the account
    // for its owner elsewhere. Without a client address, by username alone.
    let by_user = store
        .count_attempts(&[("username", &username), ("client", &client)], since)
        .await?;
    let by_client = if client.is_empty() {
        0
    } else {
        store.count_attempts(&[("client", &client)], since).await?
    };
    if by_client > settings.max_failures_per_client {
        withdraw().await?;
        tracing::warn!(
            by_client,
            "login refused: too many failed attempts from one client"
        );
        return Err(AuthError::TooManyRequests(
            "too many failed logins from this address; wait a few minutes and try again".into(),
        ));
    }
    // Past the allowance, each further try of this username from this client waits longer
    // after the last one: 1 s, 2 s, 4 s ... up to the window. It is never a lockout: once the
    // wait is over, the right password gets in.
    if by_user > settings.max_failures_per_user {
        let excess = (by_user - settings.max_failures_per_user - 1).min(20) as u32;
        let wait_ms = (BACKOFF_BASE_MS << excess).min(settings.failure_window.as_millis() as i64);
        let last = store.last_attempt(&username, &client, attempt_id).await?;
        let left_ms = last.map_or(0, |t| t + wait_ms - now);
        if left_ms > 0 {
            withdraw().await?;
            let secs = (left_ms + 999) / 1000;
            tracing::warn!(
                by_user,
                wait_seconds = secs,
                "login refused: backing off after failed attempts"
            );
            return Err(AuthError::TooManyRequests(format!(
                "too many failed logins; try again in {secs} s"
            )));
        }
    }

    let user = store.user_by_name(&req.username).await?;
    let password = req.password;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => secrets::verify_password(&password, &hash),
        None => {
            secrets::verify_against_nothing(&password);
            false
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("password check task failed: {e}"))?;
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => return Err(AuthError::Unauthorized(BAD_LOGIN.into())),
    };
    // The password was right: this client's attempts for the username are forgiven.
    store
        .failures
        .delete_many(doc! { "username": &username, "client": &client })
        .await
        .map_err(|e| anyhow::Error::new(e).context("clearing failed logins"))?;
    if !user.active {
        return Err(AuthError::Unauthorized(
            "this account is deactivated".into(),
        ));
    }

    let session_id = secrets::generate("");
    let now = now_ms();
    let ttl_ms = settings.session_ttl.as_millis() as i64;
    let session = SessionDoc {
        hash: secrets::digest(session_id.expose_secret()),
        user_id: user.id,
        created_at_ms: now,
        last_seen_ms: now,
        expires_at_ms: now + ttl_ms,
    };
    store
        .sessions
        .insert_one(&session)
        .await
        .map_err(|e| anyhow::Error::new(e).context("storing a session"))?;
    tracing::info!(user_id = user.id, "logged in");
    Ok(LoginResponse {
        user: user.to_user(),
        session_id: session_id.expose_secret().to_owned(),
        expires_in: settings.session_ttl.as_secs(),
    })
}

/// `logout`: end the session (unknown ones included: the result is the same).
pub async fn logout(app: App, req: LogoutRequest) -> AuthResult<Value> {
    let store = app.store();
    let hash = secrets::digest(&req.session_id);
    let found = store
        .sessions
        .find_one(doc! { "_id": &hash })
        .await
        .map_err(|e| anyhow::Error::new(e).context("reading a session"))?;
    if let Some(session) = found {
        store
            .sessions
            .delete_one(doc! { "_id": &hash })
            .await
            .map_err(|e| anyhow::Error::new(e).context("deleting a session"))?;
        app.announce_revocation(session.user_id).await;
        tracing::info!(user_id = session.user_id, "logged out");
    }
    Ok(Value::Object(Map::new()))
}

/// The principal behind a session id.
pub async fn verify(app: &App, session_id: &str) -> AuthResult<Principal> {
    let store = app.store();
    let settings = app.settings();
    let hash = secrets::digest(session_id);
    let unknown = || AuthError::Unauthorized("the session is unknown or has ended".into());
    let session = store
        .sessions
        .find_one(doc! { "_id": &hash })
        .await
        .map_err(|e| anyhow::Error::new(e).context("reading a session"))?
        .ok_or_else(unknown)?;
    if !secrets::same(&session.hash, &hash) {
        return Err(unknown());
    }
    let now = now_ms();
    if session.expires_at_ms <= now {
        store
            .sessions
            .delete_one(doc! { "_id": &hash })
            .await
            .map_err(|e| anyhow::Error::new(e).context("deleting an expired session"))?;
        return Err(AuthError::Unauthorized(
            "the session has expired; log in again".into(),
        ));
    }
    let user = store.user(session.user_id).await?.ok_or_else(unknown)?;
    if !user.active {
        return Err(AuthError::Unauthorized(
            "this account is deactivated".into(),
        ));
    }
    let mut expires_at_ms = session.expires_at_ms;
    if let Some((seen, expires)) = slide(&session, now, settings.session_ttl) {
        store
            .sessions
            .update_one(
                doc! { "_id": &hash },
                doc! { "$set": { "last_seen_ms": seen, "expires_at_ms": expires } },
            )
            .await
            .map_err(|e| anyhow::Error::new(e).context("extending a session"))?;
        expires_at_ms = expires;
    }
    Ok(Principal {
        user: user.to_user(),
        via: "session".into(),
        cache_seconds: cache_seconds(expires_at_ms, now, settings.verify_cache),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(last_seen_ms: i64, expires_at_ms: i64) -> SessionDoc {
        SessionDoc {
            hash: "h".into(),
            user_id: 1,
            created_at_ms: 0,
            last_seen_ms,
            expires_at_ms,
        }
    }

    #[test]
    fn a_session_slides_at_most_once_a_minute() {
        let ttl = Duration::from_secs(12 * 3600);
        let s = session(1_000_000, 1_000_000 + 43_200_000);
        assert_eq!(slide(&s, 1_000_000 + 59_999, ttl), None);
        assert_eq!(
            slide(&s, 1_000_000 + 60_000, ttl),
            Some((1_060_000, 1_060_000 + 43_200_000))
        );
    }

    #[test]
    fn a_short_lived_session_slides_more_often() {
        let ttl = Duration::from_secs(4);
        let s = session(0, 4_000);
        assert_eq!(slide(&s, 999, ttl), None);
        assert_eq!(slide(&s, 1_000, ttl), Some((1_000, 5_000)));
    }

    #[test]
    fn the_api_never_caches_a_session_past_its_expiry() {
        assert_eq!(cache_seconds(100_000, 90_000, Duration::from_secs(30)), 10);
        assert_eq!(cache_seconds(1_000_000, 0, Duration::from_secs(30)), 30);
        assert_eq!(cache_seconds(0, 5_000, Duration::from_secs(30)), 0);
    }
}
