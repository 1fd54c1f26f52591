//! The listings (`cluster_nodes`, `cluster_clients`) as immutable snapshots: the view is sorted
//! and serialized once per snapshot, outside its lock, and every answer (a whole body, a filtered
//! or paged one, a `nodes.list` page) is cut from those bytes. A snapshot is rebuilt when the
//! view changed in a way a listing should show at once, or at most every [`REFRESH`] when only
//! heartbeats refreshed it (then in the background, the old one served meanwhile); so thousands
//! of nodes heartbeating cost one rebuild a second, however often they are listed, heartbeats
//! never wait for a listing and a listing never waits for a heartbeat-only rebuild.
//!
//! A body larger than one NATS message is held for [`BODY_TTL`] under an id; the rest of it is
//! fetched from this replica's own subject ([`gantry_contracts::subjects::listing_chunks`]), so a
//! listing never mixes two snapshots.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gantry_contracts::registry::{
    body_reply, BodyHead, BodyQuery, BodyRest, ChunkQuery, ClusterClient, ClusterNode, Driver,
    ListQuery, Listing, ListingFilter, MasterStats,
};
use gantry_contracts::subjects;

use crate::error::RegistryError;
use crate::registry::{now, Registry};
use crate::view::{Revisions, View};

/// A snapshot that only heartbeats made stale is served for at most this long.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long the rest of a large body waits to be fetched.
pub const BODY_TTL: Duration = Duration::from_secs(60);
/// Large bodies held at once (the oldest goes first).
const BODIES_HELD: usize = 16;

/// One listed node: where its entries lie in the bodies, and what the filters look at.
#[derive(Debug)]
struct Entry {
    node: Range<usize>,
    client: Option<Range<usize>>,
    connected: bool,
    driver: Driver,
    /// The token's first characters, lowercase.
    token_head: String,
    /// The token's name, lowercase.
    token_name: String,
}

impl Entry {
    fn matches(&self, f: &ListingFilter) -> bool {
        if f.connected.is_some_and(|c| c != self.connected) {
            return false;
        }
        if f.driver.is_some_and(|d| d != self.driver) {
            return false;
        }
        match &f.token {
            None => true,
            Some(t) => {
                let t = t.trim();
                let bare = t.strip_suffix("...").unwrap_or(t);
                let by_head = matches!(bare.len(), 8 | 64)
                    && bare.chars().all(|c| c.is_ascii_hexdigit())
                    && bare[..8].eq_ignore_ascii_case(&self.token_head);
                by_head || t.to_lowercase() == self.token_name
            }
        }
    }
}

/// The sorted listings, serialized once.
#[derive(Debug)]
pub struct Snapshot {
    /// Its number in this process.
    pub id: u64,
    /// The view's revisions it was built from.
    pub revisions: Revisions,
    /// When it was built.
    pub built: Instant,
    stats: Vec<u8>,
    entries: Vec<Entry>,
    /// `{"master_stats":…,"nodes":[…]}`, exactly the default `cluster_nodes` answer.
    nodes_body: Bytes,
    /// `{"clients":[…]}`, exactly the default `cluster_clients` answer.
    clients_body: Bytes,
}

const NODES_HEAD: &[u8] = b",\"nodes\":[";
const CLIENTS_HEAD: &[u8] = b"{\"clients\":[";

fn encode<T: serde::Serialize>(out: &mut Vec<u8>, value: &T) -> Range<usize> {
    let start = out.len();
    serde_json::to_writer(&mut *out, value).expect("listing entries always encode");
    start..out.len()
}

impl Snapshot {
    /// Serialize `rows` (listed nodes in order, each with its clients entry when connected).
    pub fn build(
        id: u64,
        revisions: Revisions,
        stats: &MasterStats,
        rows: &[(ClusterNode, Option<ClusterClient>)],
    ) -> Self {
        let stats = serde_json::to_vec(stats).expect("totals always encode");
        let mut nodes = Vec::with_capacity(64 + stats.len() + rows.len() * 1024);
        nodes.extend_from_slice(b"{\"master_stats\":");
        nodes.extend_from_slice(&stats);
        nodes.extend_from_slice(NODES_HEAD);
        let mut clients = Vec::with_capacity(16 + rows.len() * 512);
        clients.extend_from_slice(CLIENTS_HEAD);
        let mut entries = Vec::with_capacity(rows.len());
        for (node, client) in rows {
            if !entries.is_empty() {
                nodes.push(b',');
            }
            let node_range = encode(&mut nodes, node);
            let client_range = client.as_ref().map(|c| {
                if clients.len() > CLIENTS_HEAD.len() {
                    clients.push(b',');
                }
                encode(&mut clients, c)
            });
            entries.push(Entry {
                node: node_range,
                client: client_range,
                connected: node.connected,
                driver: node.driver,
                token_head: node
                    .token
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
                    .chars()
                    .take(8)
                    .collect(),
                token_name: node.token_name.to_lowercase(),
            });
        }
        nodes.extend_from_slice(b"]}");
        clients.extend_from_slice(b"]}");
        Self {
            id,
            revisions,
            built: Instant::now(),
            stats,
            entries,
            nodes_body: nodes.into(),
            clients_body: clients.into(),
        }
    }

    /// The entries of `listing`, in order, with the bytes of each.
    fn listed(&self, listing: Listing) -> impl Iterator<Item = (&Entry, Range<usize>)> {
        self.entries.iter().filter_map(move |e| match listing {
            Listing::Nodes => Some((e, e.node.clone())),
            Listing::Clients => e.client.clone().map(|r| (e, r)),
        })
    }

    fn source(&self, listing: Listing) -> &Bytes {
        match listing {
            Listing::Nodes => &self.nodes_body,
            Listing::Clients => &self.clients_body,
        }
    }

    /// Start a body of `listing` (the totals first, for nodes).
    fn open(&self, listing: Listing, capacity: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(capacity + 64 + self.stats.len());
        match listing {
            Listing::Nodes => {
                out.extend_from_slice(b"{\"master_stats\":");
                out.extend_from_slice(&self.stats);
                out.extend_from_slice(NODES_HEAD);
            }
            Listing::Clients => out.extend_from_slice(CLIENTS_HEAD),
        }
        out
    }

    /// The body `q` asks for (in the page's shape) and how many entries match its filter.
    pub fn body(&self, q: &BodyQuery) -> (Bytes, usize) {
        let source = self.source(q.listing);
        if q.filter.is_empty() && q.offset == 0 && q.limit.is_none() {
            return (source.clone(), self.listed(q.listing).count());
        }
        let matching: Vec<Range<usize>> = self
            .listed(q.listing)
            .filter(|(e, _)| e.matches(&q.filter))
            .map(|(_, r)| r)
            .collect();
        let chosen = matching
            .iter()
            .skip(q.offset)
            .take(q.limit.unwrap_or(usize::MAX));
        let mut out = self.open(q.listing, 0);
        for (i, r) in chosen.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&source[r.clone()]);
        }
        out.extend_from_slice(b"]}");
        (out.into(), matching.len())
    }

    /// A `nodes.list` / `clients.list` page: from `q.offset`, at most `q.limit` entries and
    /// about `budget` bytes (at least one entry), with `next_offset` when more follow.
    pub fn page(&self, listing: Listing, q: &ListQuery, budget: usize) -> Bytes {
        let source = self.source(listing);
        let all: Vec<Range<usize>> = self.listed(listing).map(|(_, r)| r).collect();
        let limit = q.limit.unwrap_or(usize::MAX).max(1);
        let mut out = self.open(listing, budget.min(source.len()));
        let mut taken = 0;
        for r in all.iter().skip(q.offset).take(limit) {
            if taken > 0 && out.len() + r.len() + 64 > budget {
                break;
            }
            if taken > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&source[r.clone()]);
            taken += 1;
        }
        out.push(b']');
        let next = q.offset + taken;
        if next < all.len() {
            out.extend_from_slice(format!(",\"next_offset\":{next}").as_bytes());
        }
        out.push(b'}');
        out.into()
    }
}

/// A large body waiting for its rest to be fetched.
struct Held {
    id: u64,
    at: Instant,
    body: Bytes,
}

/// A replica's listing state: the current snapshot and the large bodies being fetched.
pub struct Listings {
    instance: String,
    current: tokio::sync::Mutex<Option<Arc<Snapshot>>>,
    /// A heartbeat-only rebuild is under way in the background.
    rebuilding: AtomicBool,
    next_snapshot: AtomicU64,
    next_body: AtomicU64,
    held: Mutex<VecDeque<Held>>,
    /// Largest piece of a body in one message; 0: three quarters of the server's `max_payload`.
    chunk: AtomicUsize,
}

impl Default for Listings {
    fn default() -> Self {
        Self::new()
    }
}

impl Listings {
    /// Empty, under a fresh instance id.
    pub fn new() -> Self {
        Self {
            instance: uuid_hex(),
            current: tokio::sync::Mutex::new(None),
            rebuilding: AtomicBool::new(false),
            next_snapshot: AtomicU64::new(1),
            next_body: AtomicU64::new(1),
            held: Mutex::new(VecDeque::new()),
            chunk: AtomicUsize::new(0),
        }
    }

    /// This replica's listing instance (the tail of its chunk subject).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Cut bodies into pieces of at most `bytes` (`GANTRY_LISTING_CHUNK_KB`).
    pub fn set_chunk(&self, bytes: usize) {
        self.chunk.store(bytes, Ordering::Relaxed);
    }

    fn hold(&self, body: Bytes) -> u64 {
        let id = self.next_body.fetch_add(1, Ordering::Relaxed);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|h| h.at.elapsed() < BODY_TTL);
        while held.len() >= BODIES_HELD {
            held.pop_front();
        }
        held.push_back(Held {
            id,
            at: Instant::now(),
            body,
        });
        id
    }

    fn held(&self, id: u64) -> Option<Bytes> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter()
            .find(|h| h.id == id && h.at.elapsed() < BODY_TTL)
            .map(|h| h.body.clone())
    }
}

/// 16 random hex characters (an instance id that differs between replicas and restarts).
fn uuid_hex() -> String {
    let mut h = DefaultHasher::new();
    std::process::id().hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    Instant::now().hash(&mut h);
    let a = h.finish();
    // A second, independently seeded hasher from the standard library's random keys.
    let b = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), a);
    format!("{:016x}", a ^ b)
}

/// The ETag of `q`'s answer from snapshot `id` of replica `instance`.
fn etag(instance: &str, id: u64, q: &BodyQuery) -> String {
    let mut h = DefaultHasher::new();
    (q.listing, &q.filter, q.offset, q.limit).hash(&mut h);
    format!("\"{instance}.{id}.{:016x}\"", h.finish())
}

impl Registry {
    /// The current listing snapshot. The last one while nothing shown at once has changed since:
    /// when heartbeats alone made it older than [`REFRESH`], it is still served and a new one is
    /// built in the background (one at a time), so no listing waits on a heartbeat-only rebuild.
    /// After a change shown at once the new snapshot is built now (one build at a time; askers
    /// meanwhile wait for it and share it).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, RegistryError> {
        self.ensure_restored()?;
        let listings = self.listings();
        {
            let current = listings.current.lock().await;
            let revisions = self.view().revisions();
            if let Some(s) = current.as_ref() {
                if s.revisions.prompt == revisions.prompt {
                    let fresh = s.revisions.any == revisions.any || s.built.elapsed() < REFRESH;
                    if !fresh && !listings.rebuilding.swap(true, Ordering::AcqRel) {
                        let registry = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = registry.rebuild().await {
                                tracing::warn!(error = %e, "refreshing the listing snapshot failed");
                            }
                            registry
                                .listings()
                                .rebuilding
                                .store(false, Ordering::Release);
                        });
                    }
                    return Ok(s.clone());
                }
            }
        }
        self.rebuild().await
    }

    /// Build a new snapshot unless one as current as the view was built meanwhile.
    async fn rebuild(&self) -> Result<Arc<Snapshot>, RegistryError> {
        let listings = self.listings();
        let mut current = listings.current.lock().await;
        let revisions = self.view().revisions();
        if let Some(s) = current.as_ref() {
            let fresh = s.revisions.prompt == revisions.prompt
                && (s.revisions.any == revisions.any || s.built.elapsed() < REFRESH);
            if fresh {
                return Ok(s.clone());
            }
        }
        let id = listings.next_snapshot.fetch_add(1, Ordering::Relaxed);
        let (uptime, registry) = (self.uptime(), self.clone());
        let snapshot = tokio::task::spawn_blocking(move || {
            let t = now();
            let (revisions, stats, rows) = {
                let view = registry.view();
                let listed = view.listed(t);
                let rows: Vec<(ClusterNode, Option<ClusterClient>)> = listed
                    .iter()
                    .map(|n| (n.cluster_node(t), n.connected.then(|| n.cluster_client())))
                    .collect();
                (view.revisions(), View::stats(&listed, uptime), rows)
            };
            Snapshot::build(id, revisions, &stats, &rows)
        })
        .await
        .map_err(|e| anyhow::anyhow!("building a listing snapshot: {e}"))?;
        let snapshot = Arc::new(snapshot);
        *current = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Largest piece of a body one reply carries.
    fn chunk_size(&self) -> usize {
        let budget = self.payload_budget();
        match self.listings().chunk.load(Ordering::Relaxed) {
            0 => budget,
            n => n.min(budget),
        }
    }

    /// `listing.body`: the head and the first piece of the body `q` asks for.
    pub async fn listing_body(&self, q: BodyQuery) -> Result<Bytes, RegistryError> {
        q.check().map_err(RegistryError::BadRequest)?;
        let snapshot = self.snapshot().await?;
        let listings = self.listings();
        let etag = etag(&listings.instance, snapshot.id, &q);
        let prompt = format!("{}.{}", listings.instance, snapshot.revisions.prompt);
        if q.known.as_deref() == Some(etag.as_str()) {
            let head = BodyHead {
                etag,
                total: 0,
                len: 0,
                unchanged: true,
                rest: None,
                prompt: Some(prompt),
            };
            return Ok(body_reply(&head, &[]).into());
        }
        let (body, total) = snapshot.body(&q);
        let chunk = self.chunk_size().saturating_sub(512).max(1);
        let rest = (body.len() > chunk).then(|| BodyRest {
            subject: subjects::listing_chunks(&listings.instance),
            id: listings.hold(body.clone()),
        });
        let head = BodyHead {
            etag,
            total,
            len: body.len(),
            unchanged: false,
            rest,
            prompt: Some(prompt),
        };
        Ok(body_reply(&head, &body[..body.len().min(chunk)]).into())
    }

    /// `listing.chunk.<instance>`: more of a held body.
    pub async fn listing_chunk(&self, q: ChunkQuery) -> Result<Bytes, RegistryError> {
        let body = self.listings().held(q.id).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "listing body {} is no longer held: ask for the listing again",
                q.id
            ))
        })?;
        if q.offset >= body.len() {
            return Err(RegistryError::BadRequest(format!(
                "offset {} is past the body's {} bytes",
                q.offset,
                body.len()
            )));
        }
        let end = body.len().min(q.offset + self.chunk_size());
        Ok(body.slice(q.offset..end))
    }

    /// `nodes.list`: one page of the current snapshot.
    pub async fn cluster_nodes(&self, q: ListQuery) -> Result<Bytes, RegistryError> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot.page(Listing::Nodes, &q, self.payload_budget()))
    }

    /// `clients.list`: connected nodes only, one page of the current snapshot.
    pub async fn cluster_clients(&self, q: ListQuery) -> Result<Bytes, RegistryError> {
        let snapshot = self.snapshot().await?;
        Ok(snapshot.page(Listing::Clients, &q, self.payload_budget()))
    }
}

#[cfg(test)]
mod tests;
