//! The NATS auth callout's messages: the server's signed authorization request for a connecting
//! client, and the answer (a user JWT with that client's permissions, or a refusal) signed by the
//! callout's issuer account key.

use nkeys::KeyPair;
use serde_json::{json, Value};

use crate::jwt::{self, JwtError};
use crate::permissions::{Permissions, ACCOUNT};

/// Where the server asks (in the callout's account).
pub use crate::permissions::CALLOUT_SUBJECT as SUBJECT;

/// Longest cluster token or connection name considered.
const MAX_FIELD: usize = 512;

/// A client asking to connect, as the server describes it.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The asking server's id (the answer's audience).
    pub server_id: String,
    /// The key the server made for this connection (the answer's subject).
    pub user_nkey: String,
    /// The connection's token (`auth_token`), if it sent one.
    pub token: Option<String>,
    /// The connection's name, if it sent one.
    pub name: Option<String>,
    /// The client's address.
    pub host: String,
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The JWT itself.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// A field missing, of the wrong type or too long.
    #[error("authorization request: {0}")]
    Field(&'static str),
}

fn text(v: &Value, what: &'static str) -> Result<Option<String>, RequestError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.len() <= MAX_FIELD => Ok((!s.is_empty()).then(|| s.clone())),
        _ => Err(RequestError::Field(what)),
    }
}

/// Read and check the server's request (`payload` is its JWT, signed by the server).
pub fn parse_request(payload: &[u8], now: i64) -> Result<AuthRequest, RequestError> {
    let token = std::str::from_utf8(payload).map_err(|_| RequestError::Field("not UTF-8"))?;
    let claims = jwt::decode(token.trim(), 'N', now)?;
    let nats = &claims["nats"];
    if nats["type"] != "authorization_request" {
        return Err(RequestError::Field("type is not authorization_request"));
    }
    let server_id =
        text(&nats["server_id"]["id"], "server_id.id")?.ok_or(RequestError::Field("server id"))?;
    let user_nkey =
        text(&nats["user_nkey"], "user_nkey")?.ok_or(RequestError::Field("user_nkey"))?;
    if !user_nkey.starts_with('U') {
        return Err(RequestError::Field("user_nkey is not a user key"));
    }
    Ok(AuthRequest {
        server_id,
        user_nkey,
        token: text(&nats["connect_opts"]["auth_token"], "auth_token")?,
        name: text(&nats["connect_opts"]["name"], "name")?,
        host: text(&nats["client_info"]["host"], "host")?.unwrap_or_default(),
    })
}

fn permission(allow: &[String], deny: &[String]) -> Value {
    let mut p = json!({ "allow": allow });
    if !deny.is_empty() {
        p["deny"] = json!(deny);
    }
    p
}

/// Admit the client as `name` with `permissions` until `expires_at` (unix seconds): the signed
/// answer to publish to the request's reply subject.
pub fn admit(
    req: &AuthRequest,
    name: &str,
    permissions: &Permissions,
    expires_at: i64,
    issuer: &KeyPair,
    now: i64,
) -> anyhow::Result<String> {
    let mut user = json!({
        "sub": req.user_nkey,
        "aud": ACCOUNT,
        "name": name,
        "exp": expires_at,
        "nats": {
            "pub": permission(&permissions.publish, &permissions.publish_deny),
            "sub": permission(&permissions.subscribe, &[]),
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    });
    if permissions.responses {
        user["nats"]["resp"] = json!({ "max": 1, "ttl": 0 });
    }
    let user = jwt::encode(user, issuer, now)?;
    answer(req, json!({ "jwt": user }), issuer, now)
}

/// Refuse the client, saying why (the server logs it; the client only sees an authorization
/// violation).
pub fn refuse(
    req: &AuthRequest,
    reason: &str,
    issuer: &KeyPair,
    now: i64,
) -> anyhow::Result<String> {
    answer(req, json!({ "error": reason }), issuer, now)
}

fn answer(
    req: &AuthRequest,
    mut body: Value,
    issuer: &KeyPair,
    now: i64,
) -> anyhow::Result<String> {
    body["type"] = json!("authorization_response");
    body["version"] = json!(2);
    jwt::encode(
        json!({ "sub": req.user_nkey, "aud": req.server_id, "nats": body }),
        issuer,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(server: &KeyPair, token: &str) -> Vec<u8> {
        jwt::encode(
            json!({
                "sub": "AISSUER",
                "aud": "nats-authorization-request",
                "nats": {
                    "server_id": {"id": server.public_key(), "name": "n"},
                    "user_nkey": KeyPair::new_user().public_key(),
                    "client_info": {"host": "10.0.0.7", "id": 5},
                    "connect_opts": {"auth_token": token, "name": "gpu-01", "protocol": 1},
                    "type": "authorization_request",
                    "version": 2,
                }
            }),
            server,
            100,
        )
        .unwrap()
        .into_bytes()
    }

    #[test]
    fn a_request_signed_by_a_server_is_read() {
        let server = KeyPair::new_server();
        let req = parse_request(&request(&server, "gct_secret"), 100).unwrap();
        assert_eq!(req.server_id, server.public_key());
        assert_eq!(req.token.as_deref(), Some("gct_secret"));
        assert_eq!(req.name.as_deref(), Some("gpu-01"));
        assert_eq!(req.host, "10.0.0.7");
    }

    #[test]
    fn a_request_not_signed_by_a_server_is_refused() {
        let account = KeyPair::new_account();
        assert!(parse_request(&request(&account, "t"), 100).is_err());
        assert!(parse_request(b"garbage", 100).is_err());
        let long = "x".repeat(MAX_FIELD + 1);
        assert!(parse_request(&request(&KeyPair::new_server(), &long), 100).is_err());
    }

    #[test]
    fn the_answer_carries_a_user_for_the_request_signed_by_the_issuer() {
        let server = KeyPair::new_server();
        let issuer = KeyPair::new_account();
        let req = parse_request(&request(&server, "t"), 100).unwrap();
        let perms = crate::permissions::node("n1", "_INBOX_Nx");
        let answer = admit(&req, "node:1:n1", &perms, 500, &issuer, 100).unwrap();
        let claims = jwt::decode(&answer, 'A', 100).unwrap();
        assert_eq!(claims["sub"], req.user_nkey.as_str());
        assert_eq!(claims["aud"], server.public_key());
        assert_eq!(claims["nats"]["type"], "authorization_response");
        let user = jwt::decode(claims["nats"]["jwt"].as_str().unwrap(), 'A', 100).unwrap();
        assert_eq!(user["sub"], req.user_nkey.as_str());
        assert_eq!(user["aud"], ACCOUNT);
        assert_eq!(user["exp"], 500);
        assert_eq!(user["nats"]["pub"]["allow"], json!(perms.publish));
        assert_eq!(user["nats"]["sub"]["allow"], json!(perms.subscribe));

        let no = refuse(&req, "revoked", &issuer, 100).unwrap();
        let claims = jwt::decode(&no, 'A', 100).unwrap();
        assert_eq!(claims["nats"]["error"], "revoked");
        assert!(claims["nats"]["jwt"].is_null());
    }
}
