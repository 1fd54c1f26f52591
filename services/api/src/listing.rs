//! Serving the cluster listings (`cluster_nodes`, `cluster_clients`) as the registry wrote them:
//! the body comes from one registry snapshot (`listing.body`, its rest fetched from the replica
//! that answered) and is passed through without being parsed. Bodies are kept per query under
//! their ETag, so an unchanged listing costs one small request to the registry and no transfer;
//! a body that heartbeats alone made older is answered while its successor is fetched in the
//! background; their gzip is made once per body, for clients that accept it; `If-None-Match`
//! answers 304.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use gantry_contracts::error::{ErrorCode, ServiceFailure};
use gantry_contracts::registry::{split_body_reply, BodyHead, BodyQuery, ChunkQuery};
use gantry_contracts::subjects;
use gantry_runtime::nats::{request_bytes, REQUEST_TIMEOUT};
use poem::http::header;
use poem::{IntoResponse, Request, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;

use crate::error::{ApiError, ApiResult};

/// Largest listing body accepted from the registry.
pub const MAX_BODY: usize = 1 << 30;
/// Queries whose body is kept (the least recently asked goes first).
const KEPT: usize = 16;
/// Bodies smaller than this are sent as they are even to clients that accept gzip.
const GZIP_FROM: usize = 1024;

/// A JSON body already encoded (by the registry), documented as `T`.
pub struct RawJson<T>(pub Bytes, PhantomData<T>);

impl<T> RawJson<T> {
    /// `bytes`, which hold a `T` in JSON (or its gzip, with `Content-Encoding` set).
    pub fn new(bytes: Bytes) -> Self {
        Self(bytes, PhantomData)
    }
}

impl<T: Type + Send> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> IntoResponse for RawJson<T> {
    fn into_response(self) -> Response {
        Response::builder()
            .content_type("application/json; charset=utf-8")
            .body(self.0)
    }
}

/// One listing body as the registry answered it.
pub struct Kept {
    /// Its ETag, quoted.
    pub etag: String,
    /// Entries matching the query's filter, before offset and limit.
    pub total: usize,
    /// The JSON.
    pub body: Bytes,
    /// Its generation of changes shown at once ([`gantry_contracts::registry::BodyHead::prompt`]).
    prompt: Option<String>,
    gzip: tokio::sync::OnceCell<Bytes>,
}

impl Kept {
    fn new(head: BodyHead, body: Bytes) -> Self {
        Self {
            etag: head.etag,
            total: head.total,
            body,
            prompt: head.prompt,
            gzip: tokio::sync::OnceCell::new(),
        }
    }

    /// The body gzipped (made once, on a blocking thread).
    pub async fn gzip(&self) -> ApiResult<Bytes> {
        self.gzip
            .get_or_try_init(|| {
                let body = self.body.clone();
                async move {
                    tokio::task::spawn_blocking(move || gzip(&body))
                        .await
                        .map_err(ApiError::internal)?
                        .map_err(ApiError::internal)
                }
            })
            .await
            .cloned()
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    enc.write_all(body)?;
    Ok(enc.finish()?.into())
}

/// The body kept for one query; its lock is held while it is checked or fetched, so that
/// clients asking at once share one fetch.
#[derive(Default)]
struct Slot {
    kept: tokio::sync::Mutex<Option<Arc<Kept>>>,
    used: Mutex<Option<Instant>>,
    /// A newer body of the kept one's generation is being fetched in the background.
    refreshing: AtomicBool,
}

/// The bodies kept, by query.
#[derive(Default)]
pub struct Listings {
    slots: Mutex<HashMap<BodyQuery, Arc<Slot>>>,
}

impl Listings {
    fn slot(&self, q: &BodyQuery) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if !slots.contains_key(q) && slots.len() >= KEPT {
            let oldest = slots
                .iter()
                .min_by_key(|(_, s)| *s.used.lock().unwrap_or_else(|p| p.into_inner()))
                .map(|(q, _)| q.clone());
            if let Some(q) = oldest {
                slots.remove(&q);
            }
        }
        let slot = slots.entry(q.clone()).or_default().clone();
        *slot.used.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        slot
    }

    /// The current body for `q` (without `known`): the kept one while the registry says it is
    /// current, else fetched whole from one snapshot. When the registry's newer body differs from
    /// the kept one only in what heartbeats refresh (the same [`Kept::prompt`] generation), the
    /// kept one is answered and the newer one fetched in the background; a node joining or
    /// leaving is always in the answer.
    pub async fn fetch(&self, nats: &async_nats::Client, q: BodyQuery) -> ApiResult<Arc<Kept>> {
        let slot = self.slot(&q);
        let mut kept = slot.kept.lock().await;
        // A body no longer held by the replica between our requests: ask once more.
        for attempt in 0..3 {
            let known = kept.as_ref().map(|k| k.etag.clone());
            let fetched = match ask(nats, &q, known).await {
                Ok(Asked::Unchanged) => match kept.as_ref() {
                    Some(k) => return Ok(k.clone()),
                    None => continue,
                },
                Ok(Asked::Changed(head, first)) => {
                    if let Some(k) = kept.as_ref() {
                        if head.prompt.is_some() && head.prompt == k.prompt {
                            if !slot.refreshing.swap(true, Ordering::AcqRel) {
                                tokio::spawn(refresh(nats.clone(), slot.clone(), head, first));
                            }
                            return Ok(k.clone());
                        }
                    }
                    rest(nats, head, first).await
                }
                Err(f) => Err(f),
            };
            match fetched {
                Ok(k) => {
                    let k = Arc::new(k);
                    *kept = Some(k.clone());
                    return Ok(k);
                }
                Err(f) if f.code == ErrorCode::NotFound && attempt < 2 => {}
                Err(f) => return Err(f.into()),
            }
        }
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "the cluster listing changed hands while it was read: try again",
        ))
    }
}

/// Fetch the rest of a body of the kept one's generation and keep it; the next ask finds it.
async fn refresh(nats: async_nats::Client, slot: Arc<Slot>, head: BodyHead, first: Bytes) {
    match rest(&nats, head, first).await {
        Ok(k) => {
            // Unless a body of a newer generation was fetched meanwhile.
            let mut kept = slot.kept.lock().await;
            if kept.as_ref().is_none_or(|held| held.prompt == k.prompt) {
                *kept = Some(Arc::new(k));
            }
        }
        Err(f) => {
            tracing::debug!(error = %f, "refreshing a kept listing failed; the next ask retries")
        }
    }
    slot.refreshing.store(false, Ordering::Release);
}

enum Asked {
    Unchanged,
    /// The head of a newer body and its first bytes.
    Changed(BodyHead, Bytes),
}

fn bad_reply(what: impl std::fmt::Display) -> ServiceFailure {
    ServiceFailure::new(
        ErrorCode::Internal,
        format!("a malformed listing from the registry: {what}"),
    )
}

async fn ask(
    nats: &async_nats::Client,
    q: &BodyQuery,
    known: Option<String>,
) -> Result<Asked, ServiceFailure> {
    let ask = BodyQuery { known, ..q.clone() };
    let payload = serde_json::to_vec(&ask).map_err(bad_reply)?;
    let reply = request_bytes(
        nats,
        subjects::registry(subjects::registry::BODY),
        payload.into(),
        REQUEST_TIMEOUT,
    )
    .await?;
    let (head, first) = split_body_reply(&reply).map_err(bad_reply)?;
    if head.unchanged {
        return Ok(Asked::Unchanged);
    }
    if head.len > MAX_BODY {
        return Err(bad_reply(format!("{} bytes", head.len)));
    }
    let first = reply.slice_ref(first);
    Ok(Asked::Changed(head, first))
}

/// The whole body `head` announces, from its `first` bytes and the pieces the replica holds.
async fn rest(
    nats: &async_nats::Client,
    head: BodyHead,
    first: Bytes,
) -> Result<Kept, ServiceFailure> {
    if first.len() == head.len {
        return Ok(Kept::new(head, first));
    }
    let mut body = Vec::with_capacity(head.len);
    body.extend_from_slice(&first);
    while body.len() < head.len {
        let rest = head
            .rest
            .as_ref()
            .ok_or_else(|| bad_reply("a body cut short"))?;
        if !rest
            .subject
            .starts_with(&format!("{}.listing.chunk.", subjects::REGISTRY_V1))
        {
            return Err(bad_reply(format!("the subject {:?}", rest.subject)));
        }
        let ask = serde_json::to_vec(&ChunkQuery {
            id: rest.id,
            offset: body.len(),
        })
        .map_err(bad_reply)?;
        let chunk = request_bytes(nats, rest.subject.clone(), ask.into(), REQUEST_TIMEOUT).await?;
        if chunk.is_empty() || body.len() + chunk.len() > head.len {
            return Err(bad_reply("a piece of the wrong size"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Kept::new(head, body.into()))
}

/// How a listing answer goes out.
pub enum Served {
    /// The body (gzipped when `encoding` is set).
    Body {
        /// JSON, or its gzip.
        body: Bytes,
        /// Its ETag.
        etag: String,
        /// `X-Total-Count`.
        total: u64,
        /// `Content-Encoding`.
        encoding: Option<String>,
    },
    /// `If-None-Match` named the current body.
    NotModified(String),
}

/// The ETag of a body's gzip: another representation, another tag.
fn gzip_etag(etag: &str) -> String {
    match etag.strip_suffix('"') {
        Some(open) => format!("{open}-gz\""),
        None => format!("{etag}-gz"),
    }
}

/// True when the `If-None-Match` header names `etag` (or its gzip's), or is `*`.
pub fn none_match(header: Option<&str>, etag: &str) -> bool {
    let Some(header) = header else {
        return false;
    };
    let gz = gzip_etag(etag);
    header.split(',').map(str::trim).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t == etag || t == gz
    })
}

/// True when `Accept-Encoding` accepts gzip (named, or `*`, without `q=0`).
pub fn accepts_gzip(header: Option<&str>) -> bool {
    header.unwrap_or_default().split(',').any(|part| {
        let mut it = part.split(';').map(str::trim);
        let coding = it.next().unwrap_or_default();
        let refused = it.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// Answer `req` with `kept`: 304 when it names the body, else the body, gzipped when accepted.
pub async fn serve(req: &Request, kept: &Kept) -> ApiResult<Served> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    if none_match(header(header::IF_NONE_MATCH), &kept.etag) {
        return Ok(Served::NotModified(kept.etag.clone()));
    }
    let total = kept.total as u64;
    if kept.body.len() >= GZIP_FROM && accepts_gzip(header(header::ACCEPT_ENCODING)) {
        return Ok(Served::Body {
            body: kept.gzip().await?,
            etag: gzip_etag(&kept.etag),
            total,
            encoding: Some("gzip".into()),
        });
    }
    Ok(Served::Body {
        body: kept.body.clone(),
        etag: kept.etag.clone(),
        total,
        encoding: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_the_body_in_any_of_its_forms() {
        let etag = "\"abc.1.ff\"";
        assert!(none_match(Some(etag), etag));
        assert!(none_match(Some("\"x\", W/\"abc.1.ff\""), etag));
        assert!(none_match(Some("\"abc.1.ff-gz\""), etag));
        assert!(none_match(Some("*"), etag));
        assert!(!none_match(Some("\"abc.2.ff\""), etag));
        assert!(!none_match(None, etag));
    }

    #[test]
    fn gzip_is_accepted_unless_refused() {
        assert!(accepts_gzip(Some("gzip, deflate, br")));
        assert!(accepts_gzip(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(Some("*")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("br")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn a_gzipped_body_unzips_to_the_body() {
        use std::io::Read;
        let body = br#"{"clients":[]}"#.repeat(100);
        let z = gzip(&body).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
