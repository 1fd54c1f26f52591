//! The listings as whole bodies (`listing.body`): how the api serves `GET /api/admin/cluster_nodes`
//! and `GET /admin/api/cluster_clients` from one registry snapshot, without parsing them.
//!
//! The registry keeps the sorted listing serialized once per snapshot. A `listing.body` request
//! names the listing and which entries ([`BodyQuery`]); the reply is one line of JSON
//! ([`BodyHead`]), a `\n`, then the body's first bytes exactly as the api serves them. A body too
//! large for one NATS message is fetched on from the same replica, over the subject the head names
//! ([`ChunkQuery`] → raw bytes), so every byte of it comes from the same snapshot even while nodes
//! join and heartbeat and whichever replica answered first.

use serde::{Deserialize, Serialize};

use super::Driver;

/// Longest `token` filter accepted (a whole token is 64 characters, a name at most 100).
pub const MAX_FILTER_TOKEN: usize = 200;

/// Which listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Listing {
    /// `cluster_nodes`: connected and recently disconnected nodes with the totals.
    Nodes,
    /// `cluster_clients`: connected nodes.
    Clients,
}

/// Which entries of a listing; every field unset lists all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ListingFilter {
    /// Only connected (`true`) or only disconnected (`false`) nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Only nodes whose workers run on this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<Driver>,
    /// Only nodes that joined with this cluster token: its listed form (`abcd1234...`), its
    /// first 8 characters, the whole token, or its name (regardless of case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl ListingFilter {
    /// True when it lists every entry.
    pub fn is_empty(&self) -> bool {
        self.connected.is_none() && self.driver.is_none() && self.token.is_none()
    }
}

/// `listing.body` request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BodyQuery {
    /// Which listing.
    pub listing: Listing,
    /// Which entries.
    #[serde(default)]
    pub filter: ListingFilter,
    /// Skip this many of the matching entries.
    #[serde(default)]
    pub offset: usize,
    /// At most this many entries (all when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The ETag of the body the asker already holds: when it is still the current one, the
    /// reply is only the head, with `unchanged` set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known: Option<String>,
}

impl BodyQuery {
    /// Everything in `listing`, in the page's shape.
    pub fn all(listing: Listing) -> Self {
        Self {
            listing,
            filter: ListingFilter::default(),
            offset: 0,
            limit: None,
            known: None,
        }
    }

    /// Why the registry refuses it, if it does.
    pub fn check(&self) -> Result<(), String> {
        if self.limit == Some(0) {
            return Err("limit must be at least 1".into());
        }
        if let Some(t) = &self.filter.token {
            if t.len() > MAX_FILTER_TOKEN || t.trim().is_empty() {
                return Err(format!("token must be 1 to {MAX_FILTER_TOKEN} characters"));
            }
        }
        if self.known.as_ref().is_some_and(|k| k.len() > 200) {
            return Err("known must be at most 200 characters".into());
        }
        Ok(())
    }
}

/// The head of a `listing.body` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyHead {
    /// The body's entity tag, quoted as HTTP sends it; the same tag is always the same bytes.
    pub etag: String,
    /// Entries that match the filter, before `offset` and `limit`.
    pub total: usize,
    /// The whole body's length in bytes.
    pub len: usize,
    /// The asker's `known` body is current: no body follows (`total` and `len` are 0).
    #[serde(default)]
    pub unchanged: bool,
    /// Where the rest of the body is fetched when this reply does not hold all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<BodyRest>,
    /// The body's generation of changes shown at once (a node joining, leaving, changing its
    /// settings, processes or health), as `<replica>.<revision>`. Two bodies of one generation
    /// differ only in what heartbeats refresh (last seen, uptime, live GPU figures): an asker
    /// holding one may go on serving it while it fetches the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

/// Where the rest of a body waits (on the replica that answered, for a short while).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyRest {
    /// The subject to send [`ChunkQuery`] to.
    pub subject: String,
    /// The body's id there.
    pub id: u64,
}

/// Request for more of a body: its bytes from `offset`, as many as fit in one message. The
/// reply is those bytes; a body no longer held answers `not_found` (ask `listing.body` again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkQuery {
    /// [`BodyRest::id`].
    pub id: u64,
    /// Where to start.
    pub offset: usize,
}

/// Split a `listing.body` reply into its head and the body bytes it carries.
pub fn split_body_reply(payload: &[u8]) -> Result<(BodyHead, &[u8]), String> {
    let end = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("a listing reply without its head")?;
    let head: BodyHead = serde_json::from_slice(&payload[..end])
        .map_err(|e| format!("an unreadable listing head: {e}"))?;
    let body = &payload[end + 1..];
    if body.len() > head.len || (head.rest.is_none() && !head.unchanged && body.len() != head.len) {
        return Err(format!(
            "a listing reply of {} bytes for a body of {}",
            body.len(),
            head.len
        ));
    }
    Ok((head, body))
}

/// A `listing.body` reply: `head`, a newline, then `body`.
pub fn body_reply(head: &BodyHead, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).expect("a head always encodes");
    out.reserve(body.len() + 1);
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_splits_into_its_head_and_body() {
        let head = BodyHead {
            etag: "\"a-1\"".into(),
            total: 2,
            len: 4,
            unchanged: false,
            rest: None,
            prompt: None,
        };
        let reply = body_reply(&head, b"[1,2]"[..4].as_ref());
        let (h, b) = split_body_reply(&reply).unwrap();
        assert_eq!((h, b), (head, &b"[1,2"[..]));
        assert!(split_body_reply(b"{}").is_err());
        let short = body_reply(
            &BodyHead {
                len: 10,
                ..BodyHead {
                    etag: "x".into(),
                    total: 0,
                    len: 0,
                    unchanged: false,
                    rest: None,
                    prompt: None,
                }
            },
            b"abc",
        );
        assert!(split_body_reply(&short).is_err(), "a body cut short");
    }
}
