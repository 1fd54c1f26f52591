//! The registry's MongoDB documents and every read and write of them.
//!
//! Collections of `<prefix>registry`:
//! - `cluster_tokens`: one per token, `_id` = its numeric id, SHA-256 of the secret (unique),
//!   its 8-character listed prefix, and `name_key` (unique: an active token's name, trimmed and
//!   lowercased; a revoked token's own key, freeing its name). Written whole (insert, replace).
//! - `counters`: `{_id: "cluster_tokens", n}` hands out token ids.
//! - `nodes`: what a node registered with plus the admin's settings for that hostname + token
//!   (`_id` = node id). Written through at once.
//! - `node_state`: what changes with heartbeats (connected, last seen, processes), written in
//!   batches in the background, each document whole, so several replicas writing the same state
//!   is harmless.
//!
//! The local store reads back a boolean written through `$set` as 0/1, so booleans are read with
//! [`tolerant_bool`] and written whole where we can.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use gantry_contracts::registry::{tolerant_bool, Driver, Inventory, NodeSettings, Process};
use gantry_runtime::mongo::{self, Counter};
use mongodb::bson::{self, doc, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// True when a write failed on a unique index (code 11000).
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// A cluster token as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenDoc {
    /// Numeric id.
    #[serde(rename = "_id")]
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Hex SHA-256 of the whole token.
    pub hash: String,
    /// Its first 8 characters.
    pub prefix: String,
    /// False once revoked.
    #[serde(deserialize_with = "tolerant_bool")]
    pub active: bool,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was revoked.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
    /// What keeps names unique (a unique index): `name:<trimmed, lowercased name>` while the
    /// token is active, `revoked:<id>` once revoked (so the name may be given again). Absent only
    /// on tokens stored before names were unique, until [`Store::ensure_indexes`] fills it in.
    #[serde(default)]
    pub name_key: Option<String>,
}

/// The key an active token with `name` holds: names compare without surrounding blanks and
/// regardless of case.
pub fn active_name_key(name: &str) -> String {
    format!("name:{}", name.trim().to_lowercase())
}

/// The key of a revoked token, which frees its name.
pub fn revoked_name_key(id: i64) -> String {
    format!("revoked:{id}")
}

impl TokenDoc {
    /// The key this token should hold in its current state.
    pub fn expected_name_key(&self) -> String {
        if self.active {
            active_name_key(&self.name)
        } else {
            revoked_name_key(self.id)
        }
    }
}

/// What inserting a token came to.
pub enum Inserted {
    /// Stored.
    Stored(TokenDoc),
    /// An active token already has this name (its id, when it could be read).
    NameTaken(Option<i64>),
}

/// A node's registration and settings as stored (`nodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id (also its client id).
    #[serde(rename = "_id")]
    pub node_id: String,
    /// The node name.
    pub hostname: String,
    /// The token it joined with.
    pub token_id: i64,
    /// That token's name.
    pub token_name: String,
    /// That token's first 8 characters.
    pub token_prefix: String,
    /// The address it joined from.
    pub ip_address: String,
    /// Node weight.
    pub weight: u32,
    /// Worker slots.
    pub workers: u32,
    /// Analysis workers.
    #[serde(default)]
    pub analysis_workers: u32,
    /// What it has.
    pub inventory: Inventory,
    /// The trainer's version.
    #[serde(default)]
    pub version: String,
    /// When it last registered (epoch seconds).
    #[serde(default)]
    pub registered_at: f64,
    /// Driver preference and drain state for this hostname + token.
    #[serde(flatten)]
    pub settings: NodeSettings,
    /// Jobs it completed (counted by the job events consumer).
    #[serde(default)]
    pub completed_jobs: u64,
}

impl NodeRecord {
    /// Within the bounds every node message is held to (a record announced by another replica
    /// is checked like a registration).
    pub fn check(&self) -> Result<(), String> {
        use gantry_contracts::registry::{check_text, check_workers};
        check_workers(self.workers)?;
        for (field, value) in [
            ("node_id", &self.node_id),
            ("hostname", &self.hostname),
            ("token_name", &self.token_name),
            ("token_prefix", &self.token_prefix),
            ("ip_address", &self.ip_address),
            ("version", &self.version),
        ] {
            check_text(field, value)?;
        }
        self.inventory.check()
    }
}

/// What heartbeats change, as stored (`node_state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDoc {
    /// The node id.
    #[serde(rename = "_id")]
    pub node_id: String,
    /// Heartbeating when written.
    #[serde(deserialize_with = "tolerant_bool")]
    pub connected: bool,
    /// When it (re)connected.
    pub connected_at: f64,
    /// Its last heartbeat.
    pub last_seen: f64,
    /// Busy worker slots.
    #[serde(default)]
    pub busy_slots: u32,
    /// Its processes.
    #[serde(default)]
    pub processes: Vec<Process>,
    /// The backend it ran on.
    pub driver: Driver,
    /// The trainer's uptime at `last_seen`.
    #[serde(default)]
    pub uptime_seconds: f64,
    /// GPU memory in use, MiB.
    #[serde(default)]
    pub gpu_memory_used_mib: Option<u64>,
}

/// The registry's database.
#[derive(Clone)]
pub struct Store {
    db: Database,
}

const TOKENS: &str = "cluster_tokens";
const COUNTERS: &str = "counters";
const NODES: &str = "nodes";
const STATE: &str = "node_state";

impl Store {
    /// Wrap the service's database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database (for readiness).
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn tokens(&self) -> Collection<TokenDoc> {
        self.db.collection(TOKENS)
    }

    fn nodes(&self) -> Collection<NodeRecord> {
        self.db.collection(NODES)
    }

    fn states(&self) -> Collection<StateDoc> {
        self.db.collection(STATE)
    }

    /// Create the indexes (idempotent).
    pub async fn ensure_indexes(&self) -> anyhow::Result<()> {
        self.tokens()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "hash": 1 })
                    .options(IndexOptions::builder().unique(true).build())
                    .build(),
            )
            .await
            .context("creating the cluster token hash index")?;
        self.fill_name_keys().await?;
        self.tokens()
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "name_key": 1 })
                    .options(
                        IndexOptions::builder()
                            .name("name_key_unique".to_owned())
                            .unique(true)
                            .build(),
                    )
                    .build(),
            )
            .await
            .context("creating the cluster token name index")?;
        self.nodes()
            .create_index(IndexModel::builder().keys(doc! { "hostname": 1 }).build())
            .await
            .context("creating the node hostname index")?;
        Ok(())
    }

    /// The next token id (1, 2, 3 ...), atomically.
    async fn next_token_id(&self) -> Result<i64, RegistryError> {
        Ok(Counter::new(&self.db, COUNTERS, TOKENS, "n").next().await?)
    }

    /// Give every token stored before names were unique its name key, in id order: the first
    /// active token of a name keeps it, later ones of the same name get one of their own (they
    /// keep working; their name is simply not reserved). Deterministic, so replicas doing this at
    /// once write the same.
    async fn fill_name_keys(&self) -> Result<(), RegistryError> {
        let mut all = self.list_tokens().await?;
        if all.iter().all(|t| t.name_key.is_some()) {
            return Ok(());
        }
        all.sort_by_key(|t| t.id);
        let mut taken: std::collections::HashSet<String> =
            all.iter().filter_map(|t| t.name_key.clone()).collect();
        for t in all.iter().filter(|t| t.name_key.is_none()) {
            let mut key = t.expected_name_key();
            if !taken.insert(key.clone()) {
                key = format!("duplicate:{}", t.id);
                taken.insert(key.clone());
            }
            self.tokens()
                .update_one(
                    doc! { "_id": t.id, "name_key": { "$exists": false } },
                    doc! { "$set": { "name_key": &key } },
                )
                .await
                .context("filling in a cluster token's name key")?;
        }
        Ok(())
    }

    /// The active token named `name` (compared as [`active_name_key`] does).
    pub async fn active_token_named(&self, name: &str) -> Result<Option<TokenDoc>, RegistryError> {
        Ok(self
            .tokens()
            .find_one(doc! { "name_key": active_name_key(name) })
            .await?)
    }

    /// Store a new token (whole document), unless an active token has its name.
    pub async fn insert_token(
        &self,
        name: &str,
        hash: &str,
        prefix: &str,
    ) -> Result<Inserted, RegistryError> {
        // Looked up first so a taken name uses up no id; the unique index settles a race.
        if let Some(other) = self.active_token_named(name).await? {
            return Ok(Inserted::NameTaken(Some(other.id)));
        }
        let token = TokenDoc {
            id: self.next_token_id().await?,
            name: name.to_owned(),
            hash: hash.to_owned(),
            prefix: prefix.to_owned(),
            active: true,
            created_at: Utc::now(),
            revoked_at: None,
            name_key: Some(active_name_key(name)),
        };
        match self.tokens().insert_one(&token).await {
            Ok(_) => Ok(Inserted::Stored(token)),
            Err(e) if is_duplicate_key(&e) => {
                let other = self.active_token_named(name).await?.map(|t| t.id);
                Ok(Inserted::NameTaken(other))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every token, by id.
    pub async fn list_tokens(&self) -> Result<Vec<TokenDoc>, RegistryError> {
        let mut tokens: Vec<TokenDoc> = self.tokens().find(doc! {}).await?.try_collect().await?;
        tokens.sort_by_key(|t| t.id);
        Ok(tokens)
    }

    /// One page of the tokens, by id, and how many there are.
    pub async fn tokens_page(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<TokenDoc>, u64), RegistryError> {
        let total = mongo::count(&self.tokens(), doc! {}).await?;
        let mut tokens: Vec<TokenDoc> = self
            .tokens()
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .skip(offset)
            .limit(i64::from(limit))
            .await?
            .try_collect()
            .await?;
        tokens.sort_by_key(|t| t.id);
        Ok((tokens, total))
    }

    /// One token by id.
    pub async fn token(&self, id: i64) -> Result<Option<TokenDoc>, RegistryError> {
        Ok(self.tokens().find_one(doc! { "_id": id }).await?)
    }

    /// One token by the SHA-256 of its secret.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenDoc>, RegistryError> {
        Ok(self.tokens().find_one(doc! { "hash": hash }).await?)
    }

    /// Revoke `token` (read while active) by rewriting it whole, so `active` stays a boolean.
    /// `false` when it was no longer as read: another request revoked it first.
    pub async fn revoke_token(&self, token: &TokenDoc) -> Result<bool, RegistryError> {
        let mut revoked = token.clone();
        revoked.active = false;
        revoked.revoked_at = Some(Utc::now());
        revoked.name_key = Some(revoked_name_key(token.id));
        let mut filter = doc! { "_id": token.id };
        match &token.name_key {
            Some(key) => filter.insert("name_key", key),
            None => filter.insert("name_key", doc! { "$exists": false }),
        };
        let r = self.tokens().replace_one(filter, &revoked).await?;
        Ok(r.matched_count == 1)
    }

    /// Write what a node registered with (its settings and counters are left as they are) and
    /// return the whole stored record. Idempotent: registering twice writes the same.
    pub async fn upsert_registration(&self, rec: &NodeRecord) -> Result<NodeRecord, RegistryError> {
        let inventory = bson::to_bson(&rec.inventory).context("encoding the inventory")?;
        let set = doc! {
            "hostname": &rec.hostname,
            "token_id": rec.token_id,
            "token_name": &rec.token_name,
            "token_prefix": &rec.token_prefix,
            "ip_address": &rec.ip_address,
            "weight": i64::from(rec.weight),
            "workers": i64::from(rec.workers),
            "inventory": inventory,
            "version": &rec.version,
            "registered_at": rec.registered_at,
        };
        let stored = self
            .nodes()
            .find_one_and_update(doc! { "_id": &rec.node_id }, doc! { "$set": set })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the registration of {} vanished", rec.node_id))?;
        Ok(stored)
    }

    /// Change a node's driver preference and/or drain state; the store increments the settings
    /// version, so concurrent changes on several replicas are ordered. `None` when no such node.
    pub async fn update_settings(
        &self,
        node_id: &str,
        driver_preference: Option<Option<Driver>>,
        draining: Option<bool>,
    ) -> Result<Option<NodeRecord>, RegistryError> {
        let mut set = Document::new();
        if let Some(pref) = driver_preference {
            set.insert("driver_preference", pref.map(|d| d.as_str()));
        }
        if let Some(drain) = draining {
            set.insert("draining", drain);
        }
        Ok(self
            .nodes()
            .find_one_and_update(
                doc! { "_id": node_id },
                doc! { "$set": set, "$inc": { "settings_version": 1_i64 } },
            )
            .return_document(ReturnDocument::After)
            .await?)
    }

    /// The registrations of a hostname.
    pub async fn nodes_by_hostname(
        &self,
        hostname: &str,
    ) -> Result<Vec<NodeRecord>, RegistryError> {
        Ok(self
            .nodes()
            .find(doc! { "hostname": hostname })
            .await?
            .try_collect()
            .await?)
    }

    /// One registration.
    pub async fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, RegistryError> {
        Ok(self.nodes().find_one(doc! { "_id": node_id }).await?)
    }

    /// One node's stored heartbeat state.
    pub async fn state(&self, node_id: &str) -> Result<Option<StateDoc>, RegistryError> {
        Ok(self.states().find_one(doc! { "_id": node_id }).await?)
    }

    /// Everything, to rebuild the view after a restart.
    pub async fn load_all(
        &self,
    ) -> Result<(Vec<TokenDoc>, Vec<NodeRecord>, Vec<StateDoc>), RegistryError> {
        let tokens = self.list_tokens().await?;
        let nodes: Vec<NodeRecord> = self.nodes().find(doc! {}).await?.try_collect().await?;
        let states: Vec<StateDoc> = self.states().find(doc! {}).await?.try_collect().await?;
        Ok((tokens, nodes, states))
    }

    /// Write heartbeat state whole, many documents per round trip (one `update` command with an
    /// upserting replacement per node).
    pub async fn write_states(&self, states: &[StateDoc]) -> Result<(), RegistryError> {
        for chunk in states.chunks(500) {
            let mut updates = Vec::with_capacity(chunk.len());
            for s in chunk {
                let u = bson::to_document(s).context("encoding node state")?;
                updates.push(doc! { "q": { "_id": &s.node_id }, "u": u, "upsert": true });
            }
            let reply = self
                .db
                .run_command(doc! { "update": STATE, "updates": updates, "ordered": false })
                .await?;
            if let Ok(errors) = reply.get_array("writeErrors") {
                if !errors.is_empty() {
                    return Err(anyhow::anyhow!("writing node state: {errors:?}").into());
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// Count a completed job for a node.
    pub async fn count_completed(&self, node_id: &str) -> Result<(), RegistryError> {
        self.nodes()
            .update_one(
                doc! { "_id": node_id },
                doc! { "$inc": { "completed_jobs": 1_i64 } },
            )
            .await?;
        Ok(())
    }

    /// A node's completed-job count as stored (`None` for an unknown node).
    pub async fn completed_jobs(&self, node_id: &str) -> Result<Option<u64>, RegistryError> {
        Ok(self.node(node_id).await?.map(|n| n.completed_jobs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_without_surrounding_blanks_and_regardless_of_case() {
        assert_eq!(active_name_key(" Rack-7 "), active_name_key("rack-7"));
        assert_ne!(active_name_key("rack-7"), active_name_key("rack-8"));
        // A revoked token's key can never be an active name's, whatever the name.
        assert_ne!(revoked_name_key(5), active_name_key("revoked:5"));
    }
}
