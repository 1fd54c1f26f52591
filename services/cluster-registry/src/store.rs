//! The registry's MongoDB documents and every read and write of them.
//!
//! Collections of `<prefix>registry`:
//! - `cluster_tokens`: one per token, `_id` = its numeric id, SHA-256 of the secret (unique),
//!   its 8-character listed prefix. Written whole (insert, replace).
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
use gantry_runtime::mongo::Counter;
use mongodb::bson::{self, doc, Document};
use mongodb::options::{IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

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

    /// Store a new token (whole document).
    pub async fn insert_token(
        &self,
        name: &str,
        hash: &str,
        prefix: &str,
    ) -> Result<TokenDoc, RegistryError> {
        let token = TokenDoc {
            id: self.next_token_id().await?,
            name: name.to_owned(),
            hash: hash.to_owned(),
            prefix: prefix.to_owned(),
            active: true,
            created_at: Utc::now(),
            revoked_at: None,
        };
        self.tokens().insert_one(&token).await?;
        Ok(token)
    }

    /// Every token, by id.
    pub async fn list_tokens(&self) -> Result<Vec<TokenDoc>, RegistryError> {
        let mut tokens: Vec<TokenDoc> = self.tokens().find(doc! {}).await?.try_collect().await?;
        tokens.sort_by_key(|t| t.id);
        Ok(tokens)
    }

    /// One token by id.
    pub async fn token(&self, id: i64) -> Result<Option<TokenDoc>, RegistryError> {
        Ok(self.tokens().find_one(doc! { "_id": id }).await?)
    }

    /// One token by the SHA-256 of its secret.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenDoc>, RegistryError> {
        Ok(self.tokens().find_one(doc! { "hash": hash }).await?)
    }

    /// Rewrite a token whole (how revocation is written, so `active` stays a boolean).
    pub async fn replace_token(&self, token: &TokenDoc) -> Result<(), RegistryError> {
        self.tokens()
            .replace_one(doc! { "_id": token.id }, token)
            .await?;
        Ok(())
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
