//! NATS JWTs (v2): a header, JSON claims and an ed25519 nkey signature, each base64url without
//! padding. Only what the auth callout needs: sign claims, and decode claims whose signature by
//! their issuer checks out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The largest JWT accepted (the server's own limit is of this order).
pub const MAX_LEN: usize = 64 * 1024;

/// Why a JWT was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed JWT: {0}")]
    Malformed(&'static str),
    /// Signed by someone else than its `iss`, or an issuer of the wrong kind.
    #[error("JWT signature does not verify: {0}")]
    Signature(String),
    /// Its `exp` has passed.
    #[error("JWT expired")]
    Expired,
}

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// Sign `claims` (an object; `iss`, `iat` and `jti` are set here) with `issuer`.
pub fn encode(mut claims: Value, issuer: &KeyPair, now: i64) -> anyhow::Result<String> {
    let obj = claims
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("claims must be an object"))?;
    obj.insert("iss".into(), json!(issuer.public_key()));
    obj.insert("iat".into(), json!(now));
    obj.remove("jti");
    let digest = Sha256::digest(serde_json::to_vec(&claims)?);
    let jti = data_encoding::BASE32_NOPAD.encode(&digest);
    claims["jti"] = json!(jti);
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    let signed = format!("{header}.{payload}");
    let sig = issuer
        .sign(signed.as_bytes())
        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// Decode `token`, check it is signed by its `iss`, that `iss` starts with `issuer_prefix`
/// (`N` for a server, `A` for an account) and that it has not expired at `now`.
pub fn decode(token: &str, issuer_prefix: char, now: i64) -> Result<Value, JwtError> {
    if token.len() > MAX_LEN {
        return Err(JwtError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three parts"));
    };
    let head: Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed("header"))?;
    if head["alg"].as_str().map(str::to_ascii_lowercase).as_deref() != Some("ed25519-nkey") {
        return Err(JwtError::Malformed("algorithm is not ed25519-nkey"));
    }
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed("claims"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| JwtError::Malformed("signature"))?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    if !iss.starts_with(issuer_prefix) {
        return Err(JwtError::Signature(format!(
            "issuer {iss:?} is not a {issuer_prefix} key"
        )));
    }
    let key = KeyPair::from_public_key(iss).map_err(|e| JwtError::Signature(e.to_string()))?;
    key.verify(&token.as_bytes()[..header.len() + 1 + payload.len()], &sig)
        .map_err(|e| JwtError::Signature(e.to_string()))?;
    if let Some(exp) = claims["exp"].as_i64() {
        if exp > 0 && exp < now {
            return Err(JwtError::Expired);
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_jwt_decodes_and_a_tampered_one_does_not() {
        let account = KeyPair::new_account();
        let jwt = encode(
            json!({"sub": "U1", "nats": {"type": "user"}}),
            &account,
            100,
        )
        .unwrap();
        let claims = decode(&jwt, 'A', 100).unwrap();
        assert_eq!(claims["sub"], "U1");
        assert_eq!(claims["iss"], account.public_key());
        assert!(claims["jti"].as_str().unwrap().len() > 40);

        // Not an account key.
        assert!(matches!(
            decode(&jwt, 'N', 100),
            Err(JwtError::Signature(_))
        ));
        // Claims changed after signing.
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&json!({"sub": "U2", "iss": account.public_key()})).unwrap(),
        );
        parts[1] = &forged;
        assert!(matches!(
            decode(&parts.join("."), 'A', 100),
            Err(JwtError::Signature(_))
        ));
        // Signed by another key claiming the first as issuer.
        let other = KeyPair::new_account();
        let mut claims = decode(&encode(json!({"sub": "U"}), &other, 1).unwrap(), 'A', 1).unwrap();
        claims["iss"] = json!(account.public_key());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let resigned = format!(
            "{}.{body}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(other.sign(b"x").unwrap())
        );
        assert!(decode(&resigned, 'A', 1).is_err());
        assert!(matches!(decode("a.b", 'A', 1), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn expired_jwts_are_refused() {
        let account = KeyPair::new_account();
        let jwt = encode(json!({"sub": "U", "exp": 50}), &account, 10).unwrap();
        assert!(decode(&jwt, 'A', 49).is_ok());
        assert!(matches!(decode(&jwt, 'A', 51), Err(JwtError::Expired)));
    }
}
