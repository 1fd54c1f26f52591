//! What is particular to cluster tokens: how an admin names one (whole, listed or by its bare
//! head) and the node identity a hostname + token gives. Generating, digesting and listing the
//! secrets themselves is [`gantry_runtime::secrets`]' job: a cluster token is 64 hex characters
//! without a prefix, the store keeps its SHA-256 and its first [`HEAD_LEN`] characters.

use gantry_runtime::secrets::{self, HEAD_LEN};

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
            HEAD_LEN => Some(TokenRef::Prefix(s.to_ascii_lowercase())),
            _ => None,
        }
    }
}

/// A node's identity, the same for the same hostname + token: 32 hex characters of
/// SHA-256 over both (usable as a NATS subject token).
pub fn node_id(hostname: &str, token_id: i64) -> String {
    let mut id = secrets::digest(&format!("gantry-node\0{hostname}\0{token_id}"));
    id.truncate(32);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(node_id("gpu1", 1), "ef433680e411c3e883d2296d7fa7070e");
    }
}
