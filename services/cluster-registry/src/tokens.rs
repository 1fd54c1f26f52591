//! Cluster token secrets and node identities: generation, hashing, the listed form.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of the listed prefix (`abcd1234...`).
pub const PREFIX_LEN: usize = 8;

/// A new secret: 256 random bits as 64 lowercase hex characters.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Hex SHA-256 of a secret: what the store keeps.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The first [`PREFIX_LEN`] characters.
pub fn prefix(secret: &str) -> String {
    secret.chars().take(PREFIX_LEN).collect()
}

/// The listed form: prefix followed by `...`.
pub fn listed(prefix: &str) -> String {
    format!("{prefix}...")
}

/// How an admin named a token in `set_driver` / `drain`.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenRef {
    /// The whole secret.
    Whole(String),
    /// Its listed form (or the bare prefix).
    Prefix(String),
}

impl TokenRef {
    /// Read `abcd1234...`, `abcd1234` or a whole 64-character token; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let s = s.strip_suffix("...").unwrap_or(s);
        if !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        match s.len() {
            64 => Some(TokenRef::Whole(s.to_ascii_lowercase())),
            PREFIX_LEN => Some(TokenRef::Prefix(s.to_ascii_lowercase())),
            _ => None,
        }
    }
}

/// A node's identity, the same for the same hostname + token: 32 hex characters of
/// SHA-256 over both (usable as a NATS subject token).
pub fn node_id(hostname: &str, token_id: i64) -> String {
    let digest = Sha256::digest(format!("gantry-node\0{hostname}\0{token_id}").as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_64_hex_characters_and_listed_by_its_first_8() {
        let s = generate();
        assert_eq!(s.len(), 64);
        assert!(s.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(listed(&prefix(&s)), format!("{}...", &s[..8]));
        assert_ne!(generate(), s);
    }

    #[test]
    fn token_references_accept_whole_listed_and_bare_prefix_forms() {
        let s = "ab".repeat(32);
        assert_eq!(TokenRef::parse(&s), Some(TokenRef::Whole(s.clone())));
        assert_eq!(
            TokenRef::parse("ABCD1234..."),
            Some(TokenRef::Prefix("abcd1234".into()))
        );
        assert_eq!(
            TokenRef::parse("abcd1234"),
            Some(TokenRef::Prefix("abcd1234".into()))
        );
        assert_eq!(TokenRef::parse("abc..."), None);
        assert_eq!(TokenRef::parse("zzzz1234..."), None);
    }

    #[test]
    fn the_same_hostname_and_token_give_the_same_identity() {
        assert_eq!(node_id("gpu1", 1), node_id("gpu1", 1));
        assert_ne!(node_id("gpu1", 1), node_id("gpu1", 2));
        assert_ne!(node_id("gpu1", 1), node_id("gpu2", 1));
        assert_eq!(node_id("gpu1", 1).len(), 32);
    }
}
