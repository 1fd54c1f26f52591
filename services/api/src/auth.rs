//! Who is calling: the bearer token or the session cookie, verified by the auth service, cached
//! briefly, dropped from the cache the moment auth announces a revocation. Cookie-authenticated
//! writes must come from our own origin (CSRF).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gantry_contracts::auth::{Credential, Principal, Revocation, Role, VerifyRequest, REVOCATIONS};
use gantry_contracts::subjects;
use gantry_runtime::nats;
use poem::http::Method;
use poem::Request;
use poem_openapi::auth::{ApiKey, Bearer};
use poem_openapi::SecurityScheme;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "gantry_session";

/// An API token: `Authorization: Bearer <token>`. Admin endpoints need an admin's token.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "opaque token")]
pub struct TokenAuth(pub Bearer);

/// The session cookie set by `POST /api/auth/login`. Writes authenticated this way must come
/// with an `Origin` (or `Referer`) of this server.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "gantry_session", key_in = "cookie")]
pub struct SessionAuth(pub ApiKey);

/// Either credential.
#[derive(SecurityScheme)]
pub enum Credentials {
    /// `Authorization: Bearer <token>`.
    Bearer(TokenAuth),
    /// The session cookie.
    Session(SessionAuth),
}

impl Credentials {
    fn credential(&self) -> Credential {
        match self {
            Credentials::Bearer(TokenAuth(b)) => Credential::Bearer {
                token: b.token.clone(),
            },
            Credentials::Session(SessionAuth(k)) => Credential::Session {
                session_id: k.key.clone(),
            },
        }
    }

    fn cache_key(&self) -> [u8; 32] {
        let (kind, secret) = match self {
            Credentials::Bearer(TokenAuth(b)) => ("b", b.token.as_str()),
            Credentials::Session(SessionAuth(k)) => ("s", k.key.as_str()),
        };
        let mut h = Sha256::new();
        h.update(kind);
        h.update(secret);
        h.finalize().into()
    }
}

struct Cached {
    principal: Principal,
    until: Instant,
}

/// Verifies credentials through the auth service.
#[derive(Clone)]
pub struct Authenticator {
    nats: async_nats::Client,
    public_url: Option<String>,
    cache: Arc<Mutex<HashMap<[u8; 32], Cached>>>,
}

impl Authenticator {
    /// Build it and start listening for revocations.
    pub async fn new(nats: async_nats::Client, public_url: Option<String>) -> anyhow::Result<Self> {
        let this = Self {
            nats: nats.clone(),
            public_url,
            cache: Arc::default(),
        };
        let mut revocations = nats.subscribe(REVOCATIONS).await?;
        let cache = this.cache.clone();
        tokio::spawn(async move {
            while let Some(msg) = revocations.next().await {
                match serde_json::from_slice::<Revocation>(&msg.payload) {
                    Ok(r) => cache
                        .lock()
                        .unwrap()
                        .retain(|_, c| c.principal.user.id != r.user_id),
                    // Unknown shape: be safe and forget everything.
                    Err(_) => cache.lock().unwrap().clear(),
                }
            }
        });
        // A missed revocation while disconnected must not keep a credential alive.
        let cache = this.cache.clone();
        let client = nats.clone();
        tokio::spawn(async move {
            let mut was_connected = true;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let connected = nats::is_connected(&client);
                if connected != was_connected {
                    cache.lock().unwrap().clear();
                    was_connected = connected;
                }
            }
        });
        Ok(this)
    }

    /// The caller, whatever their role. Cookie-authenticated writes must pass the same-origin check.
    pub async fn principal(&self, creds: &Credentials, req: &Request) -> ApiResult<Principal> {
        self.verify(creds, req, false).await
    }

    /// The caller as auth knows them now, never from the cache: for answers that show the
    /// user's own record (its balance changes with every charge).
    pub async fn principal_now(&self, creds: &Credentials, req: &Request) -> ApiResult<Principal> {
        self.verify(creds, req, true).await
    }

    async fn verify(
        &self,
        creds: &Credentials,
        req: &Request,
        fresh: bool,
    ) -> ApiResult<Principal> {
        if matches!(creds, Credentials::Session(_)) {
            self.check_origin(req)?;
        }
        let key = creds.cache_key();
        if !fresh {
            if let Some(c) = self.cache.lock().unwrap().get(&key) {
                if c.until > Instant::now() {
                    return Ok(c.principal.clone());
                }
            }
        }
        let principal: Principal = nats::request(
            &self.nats,
            subjects::auth(subjects::auth::VERIFY),
            &VerifyRequest {
                credential: creds.credential(),
            },
        )
        .await?;
        if principal.cache_seconds > 0 {
            let until = Instant::now() + Duration::from_secs(principal.cache_seconds.min(60));
            let mut cache = self.cache.lock().unwrap();
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(
                key,
                Cached {
                    principal: principal.clone(),
                    until,
                },
            );
        }
        Ok(principal)
    }

    /// The caller, who must be an admin (403 otherwise).
    pub async fn admin(&self, creds: &Credentials, req: &Request) -> ApiResult<Principal> {
        let p = self.principal(creds, req).await?;
        if p.user.role != Role::Admin {
            return Err(ApiError::forbidden("this endpoint is for admins"));
        }
        Ok(p)
    }

    /// Cookie-authenticated writes need an `Origin` (or `Referer`) equal to the public URL or to
    /// the request's own host.
    fn check_origin(&self, req: &Request) -> ApiResult<()> {
        if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let origin = header("origin").or_else(|| header("referer").map(|r| origin_of(&r)));
        let Some(origin) = origin else {
            return Err(ApiError::forbidden(
                "a write with the session cookie needs an Origin or Referer header",
            ));
        };
        let mut allowed = Vec::new();
        if let Some(public) = &self.public_url {
            allowed.push(origin_of(public));
        }
        if let Some(host) = header("host") {
            allowed.push(format!("http://{host}"));
            allowed.push(format!("https://{host}"));
        }
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(&origin)) {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "cross-origin write refused: the Origin does not match this server",
            ))
        }
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find('/').unwrap_or(rest.len());
            format!("{}{}", &url[..i + 3], &rest[..end])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::origin_of;

    #[test]
    fn origin_drops_the_path() {
        assert_eq!(
            origin_of("https://gantry.example.com/admin/api"),
            "https://gantry.example.com"
        );
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
