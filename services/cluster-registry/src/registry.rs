//! The registry's request handlers: cluster tokens, node registration, listings, driver choice
//! and draining. The view they read is kept by [`crate::liveness`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use async_nats::Client;
use gantry_contracts::paging::{PageQuery, MAX_LIMIT};
use gantry_contracts::registry::{
    ClusterToken, ClusterTokenList, ClusterTokenQuery, CreateClusterToken, Drain, DrainSelf,
    DrainedSelf, Driver, NodeControl, NodeName, NodeSettings, RegisterNode, Registered,
    RegistryEvent, RevokeClusterToken, SetDriver, SetDriverResult, DRIVER_CHOICES,
};
use gantry_contracts::subjects;
use gantry_runtime::nats;
use gantry_runtime::secrets::{self, ExposeSecret};

use crate::error::RegistryError;
use crate::listing::Listings;
use crate::store::{Inserted, NodeRecord, Store, TokenDoc};
use crate::tokens::{self, TokenRef};
use crate::view::{Timing, View};

/// Seconds since the epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    store: Store,
    view: Mutex<View>,
    restored: AtomicBool,
    /// When the view was restored, and how long a heartbeat interval is: see
    /// [`Registry::is_settled`].
    restored_at: OnceLock<Instant>,
    interval: f64,
    started: Instant,
    /// A system-account connection, to disconnect the nodes of a revoked token.
    system: OnceLock<Client>,
    /// The listing snapshots.
    listings: Listings,
}

fn listed_token(t: &TokenDoc) -> ClusterToken {
    ClusterToken {
        id: t.id,
        name: t.name.clone(),
        token: secrets::listed(&t.prefix),
        active: t.active,
        created_at: t.created_at.into(),
    }
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, RegistryError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(RegistryError::BadRequest(format!("{name} is required"))),
    }
}

impl Registry {
    /// A registry over `store`, its view empty until [`Registry::restore`].
    pub fn new(client: Client, store: Store, timing: Timing) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                store,
                view: Mutex::new(View::new(timing)),
                restored: AtomicBool::new(false),
                restored_at: OnceLock::new(),
                interval: timing.interval,
                started: Instant::now(),
                system: OnceLock::new(),
                listings: Listings::new(),
            }),
        }
    }

    /// The NATS client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The listing snapshots.
    pub fn listings(&self) -> &Listings {
        &self.inner.listings
    }

    /// Lock the view (never held across an await).
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.inner.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the view was rebuilt from the store.
    pub fn is_restored(&self) -> bool {
        self.inner.restored.load(Ordering::Acquire)
    }

    /// Rebuild the view from the store (nodes, recently disconnected ones, counters, settings).
    pub async fn restore(&self) -> Result<usize, RegistryError> {
        let (tokens, records, states) = self.store().load_all().await?;
        let mut view = self.view();
        view.restore(&tokens, records, states, now());
        self.inner.restored.store(true, Ordering::Release);
        let _ = self.inner.restored_at.set(Instant::now());
        Ok(view.len())
    }

    /// True once the view was restored and a full heartbeat interval has passed since, so every
    /// live node has been heard: only then does "no node serves this driver" mean it.
    pub fn is_settled(&self) -> bool {
        self.inner
            .restored_at
            .get()
            .is_some_and(|t| t.elapsed().as_secs_f64() >= self.inner.interval)
    }

    pub(crate) fn ensure_restored(&self) -> Result<(), RegistryError> {
        if self.is_restored() {
            Ok(())
        } else {
            Err(RegistryError::Unavailable(
                "the registry is still loading its state from the store".into(),
            ))
        }
    }

    /// Seconds since this registry started.
    pub fn uptime(&self) -> f64 {
        self.inner.started.elapsed().as_secs_f64()
    }

    /// Send a control message to a node (fire and forget).
    pub async fn control(&self, node_id: &str, msg: &NodeControl) {
        if let Err(e) = nats::publish(self.client(), subjects::node_control(node_id), msg).await {
            tracing::warn!(node_id, error = %e, "could not send a control message");
        }
    }

    async fn announce(&self, event: &RegistryEvent) {
        if let Err(e) =
            nats::publish(self.client(), subjects::REGISTRY_EVENTS.to_owned(), event).await
        {
            tracing::warn!(error = %e, "could not announce a change to the other replicas");
        }
    }

    // -----------------------------------------------------------------------------------------
    // Cluster tokens
    // -----------------------------------------------------------------------------------------

    /// `cluster_tokens.list`: one page, by id.
    pub async fn list_tokens(
        &self,
        q: ClusterTokenQuery,
    ) -> Result<ClusterTokenList, RegistryError> {
        let page = PageQuery {
            limit: q.limit,
            offset: q.offset,
        }
        .check(MAX_LIMIT)
        .map_err(RegistryError::BadRequest)?;
        let (tokens, total) = self.store().tokens_page(page.limit, page.offset).await?;
        Ok(ClusterTokenList {
            tokens: tokens.iter().map(listed_token).collect(),
            total,
            limit: u64::from(page.limit),
            offset: page.offset,
        })
    }

    /// `cluster_tokens.create`: the only reply that holds the whole token.
    pub async fn create_token(
        &self,
        req: CreateClusterToken,
    ) -> Result<ClusterToken, RegistryError> {
        let name = req.name.trim();
        if name.is_empty() {
            return Err(RegistryError::BadRequest("name is required".into()));
        }
        if name.chars().count() > 100 {
            return Err(RegistryError::BadRequest(
                "name must be at most 100 characters".into(),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(RegistryError::BadRequest(
                "name must not hold control characters".into(),
            ));
        }
        let secret = secrets::generate("");
        let secret = secret.expose_secret();
        let doc = match self
            .store()
            .insert_token(name, &secrets::digest(secret), &secrets::head(secret))
            .await?
        {
            Inserted::Stored(doc) => doc,
            Inserted::NameTaken(other) => {
                let which = other.map(|id| format!(" (id {id})")).unwrap_or_default();
                return Err(RegistryError::Conflict(format!(
                    "a cluster token named {name:?} already exists{which}: choose another name, \
                     or revoke that token first"
                )));
            }
        };
        tracing::info!(token_id = doc.id, name, "cluster token created");
        Ok(ClusterToken {
            token: secret.to_owned(),
            ..listed_token(&doc)
        })
    }

    /// `cluster_tokens.revoke`: nodes that joined with it are told to leave and shown
    /// disconnected. A token that was already revoked is `not_found`, after its nodes are told
    /// to leave again (so a retry after a partial failure still finishes the work).
    pub async fn revoke_token(
        &self,
        req: RevokeClusterToken,
    ) -> Result<ClusterToken, RegistryError> {
        let mut token = self.store().token(req.id).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("no cluster token with id {}", req.id))
        })?;
        let revoked_now = token.active && self.store().revoke_token(&token).await?;
        if revoked_now {
            tracing::info!(token_id = token.id, name = %token.name, "cluster token revoked");
        }
        token.active = false;
        let node_ids = self.view().revoke_token(token.id);
        let leave = NodeControl::Leave {
            reason: format!("cluster token {:?} was revoked", token.name),
        };
        for id in &node_ids {
            self.control(id, &leave).await;
        }
        self.announce(&RegistryEvent::TokenRevoked { token_id: token.id })
            .await;
        self.disconnect_token_nodes(token.id).await;
        if !revoked_now {
            return Err(RegistryError::NotFound(format!(
                "cluster token {} is already revoked",
                token.id
            )));
        }
        Ok(listed_token(&token))
    }

    // -----------------------------------------------------------------------------------------
    // Nodes
    // -----------------------------------------------------------------------------------------

    /// The active cluster token whose secret is `secret`, or why it does not admit anyone.
    pub async fn admitted_token(&self, secret: &str) -> Result<TokenDoc, RegistryError> {
        let hash = secrets::digest(secret);
        let token = self.store().token_by_hash(&hash).await?;
        let token = match token {
            Some(t) if secrets::same(&t.hash, &hash) => t,
            _ => {
                return Err(RegistryError::Unauthorized(
                    "unknown cluster token: check GANTRY_CLUSTER_TOKEN (create one under /admin/api/cluster_tokens)"
                        .into(),
                ))
            }
        };
        if !token.active {
            return Err(RegistryError::Unauthorized(format!(
                "cluster token {:?} was revoked: ask an admin for a new one",
                token.name
            )));
        }
        Ok(token)
    }

    /// Use `client` (a system-account connection) to disconnect revoked nodes.
    pub fn set_system_client(&self, client: Client) {
        let _ = self.inner.system.set(client);
    }

    /// Disconnect every connection of a node admitted with the token `token_id`, on every
    /// server. Without a system-account connection this does nothing (the nodes are told to
    /// leave, and their credentials expire after `GANTRY_NODE_SESSION`).
    async fn disconnect_token_nodes(&self, token_id: i64) {
        let Some(system) = self.inner.system.get() else {
            return;
        };
        match crate::kick::disconnect(system, &crate::kick::token_user_prefix(token_id)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                token_id,
                connections = n,
                "disconnected the nodes of a revoked token"
            ),
            Err(e) => {
                tracing::warn!(token_id, error = %e, "could not disconnect the nodes of a revoked token")
            }
        }
    }

    /// `nodes.register`: a trainer joins (again) with its token.
    pub async fn register(&self, req: RegisterNode) -> Result<Registered, RegistryError> {
        let hostname = NodeName::parse(&req.hostname).map_err(RegistryError::BadRequest)?;
        req.check().map_err(RegistryError::BadRequest)?;
        let secret = req.token.trim();
        if secret.is_empty() {
            return Err(RegistryError::Unauthorized(
                "a cluster token is required (GANTRY_CLUSTER_TOKEN)".into(),
            ));
        }
        let token = self.admitted_token(secret).await?;
        let node_id = tokens::node_id(hostname.as_ref(), token.id);
        let record = NodeRecord {
            node_id: node_id.clone(),
            hostname: hostname.to_string(),
            token_id: token.id,
            token_name: token.name.clone(),
            token_prefix: token.prefix.clone(),
            ip_address: req.ip_address.trim().to_owned(),
            weight: req.weight,
            workers: req.workers,
            analysis_workers: req.analysis_workers,
            inventory: req.inventory,
            version: req.version,
            registered_at: now(),
            settings: NodeSettings::default(),
            completed_jobs: 0,
        };
        let stored = self.store().upsert_registration(&record).await?;
        let settings = stored.settings.clone();
        let announced = serde_json::to_value(&stored).map_err(anyhow::Error::from)?;
        self.view().register(stored, now());
        self.announce(&RegistryEvent::NodeRegistered { record: announced })
            .await;
        tracing::info!(node_id = %node_id, hostname = %hostname, token_id = token.id, "node registered");
        Ok(Registered {
            client_id: node_id.clone(),
            node_id,
            settings,
            token_name: token.name,
        })
    }

    /// Three quarters of the server's `max_payload`: what one reply may carry.
    pub(crate) fn payload_budget(&self) -> usize {
        let max = self.client().server_info().max_payload;
        let max = if max == 0 { 1024 * 1024 } else { max };
        max - max / 4
    }

    /// Find the node an admin names by hostname + token (whole or listed), refusing one whose
    /// token is revoked: its node cannot come back, so a setting for it would never apply.
    async fn resolve(&self, hostname: &str, token: &str) -> Result<NodeRecord, RegistryError> {
        let record = self.find_node(hostname, token).await?;
        let token = self.store().token(record.token_id).await?;
        if let Some(t) = token.filter(|t| !t.active) {
            return Err(RegistryError::Conflict(format!(
                "cluster token {:?} of node {hostname:?} is revoked: the node cannot rejoin \
                 with it, so there is nothing to change",
                t.name
            )));
        }
        Ok(record)
    }

    /// The node an admin names by hostname + token (whole or listed).
    async fn find_node(&self, hostname: &str, token: &str) -> Result<NodeRecord, RegistryError> {
        let not_found = || {
            RegistryError::NotFound(format!(
                "no node named {hostname:?} has joined with that token"
            ))
        };
        match TokenRef::parse(token).ok_or_else(not_found)? {
            TokenRef::Whole(secret) => {
                let token = self
                    .store()
                    .token_by_hash(&secrets::digest(&secret))
                    .await?
                    .ok_or_else(not_found)?;
                self.store()
                    .node(&tokens::node_id(hostname, token.id))
                    .await?
                    .ok_or_else(not_found)
            }
            TokenRef::Prefix(prefix) => {
                let mut found: Vec<NodeRecord> = self
                    .store()
                    .nodes_by_hostname(hostname)
                    .await?
                    .into_iter()
                    .filter(|n| n.token_prefix == prefix)
                    .collect();
                match found.len() {
                    0 => Err(not_found()),
                    1 => Ok(found.remove(0)),
                    _ => Err(RegistryError::Conflict(format!(
                        "{prefix}... matches several tokens {hostname:?} joined with: give the whole token"
                    ))),
                }
            }
        }
    }

    /// Store new settings, update the view, tell the other replicas and the node.
    async fn change_settings(
        &self,
        record: &NodeRecord,
        driver: Option<Option<Driver>>,
        draining: Option<bool>,
    ) -> Result<NodeRecord, RegistryError> {
        let stored = self
            .store()
            .update_settings(&record.node_id, driver, draining)
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "node {:?} is no longer registered",
                    record.hostname
                ))
            })?;
        let connected = self
            .view()
            .apply_settings(&stored.node_id, &stored.settings);
        self.announce(&RegistryEvent::NodeSettings {
            node_id: stored.node_id.clone(),
            settings: stored.settings.clone(),
        })
        .await;
        if connected.unwrap_or(true) {
            self.control(
                &stored.node_id,
                &NodeControl::Settings(stored.settings.clone()),
            )
            .await;
        }
        Ok(stored)
    }

    /// `nodes.set_driver`: store the preference for hostname + token and push it to the node.
    pub async fn set_driver(&self, req: SetDriver) -> Result<SetDriverResult, RegistryError> {
        let hostname = required(&req.hostname, "hostname")?;
        let token = required(&req.token, "token")?;
        let driver = required(&req.driver, "driver")?;
        let driver = Driver::parse_choice(driver)
            .map_err(|_| RegistryError::BadRequest(DRIVER_CHOICES.into()))?;
        let record = self.resolve(hostname, token).await?;
        let stored = self.change_settings(&record, Some(driver), None).await?;
        let gpu_info = &stored.inventory.gpu_info;
        let warning = match driver {
            Some(d) if !gpu_info.has(d) => Some(format!(
                "node {hostname:?} has no {d} backend (it has: {}); the preference is stored and its workers stay unavailable until it has one",
                gpu_info.backends_list()
            )),
            _ => None,
        };
        tracing::info!(node_id = %stored.node_id, driver = ?driver, "driver preference set");
        Ok(SetDriverResult {
            success: true,
            warning,
        })
    }

    /// `nodes.drain`: drain or undrain a node.
    pub async fn drain(&self, req: Drain) -> Result<SetDriverResult, RegistryError> {
        let hostname = required(&req.hostname, "hostname")?;
        let token = required(&req.token, "token")?;
        let drain = req
            .drain
            .ok_or_else(|| RegistryError::BadRequest("drain is required".into()))?;
        let record = self.resolve(hostname, token).await?;
        let stored = self.change_settings(&record, None, Some(drain)).await?;
        tracing::info!(node_id = %stored.node_id, drain, "drain state set");
        Ok(SetDriverResult {
            success: true,
            warning: None,
        })
    }

    /// `gantry.node.<node_id>.drain`: a node drains (or undrains) itself, e.g. from its pod's
    /// `preStop` hook. The subject names the node and the bus lets a node publish only on its
    /// own, so `node_id` is the asker. Draining also tells it to hand its jobs in flight back
    /// ([`NodeControl::HandBack`]) rather than finish them.
    pub async fn drain_self(
        &self,
        node_id: &str,
        req: DrainSelf,
    ) -> Result<DrainedSelf, RegistryError> {
        let record = self
            .view()
            .node(node_id)
            .map(|n| n.record.clone())
            .ok_or_else(|| RegistryError::NotFound(format!("node {node_id} is not registered")))?;
        let was_draining = record.settings.draining;
        self.change_settings(&record, None, Some(req.drain)).await?;
        if req.drain {
            self.control(node_id, &NodeControl::HandBack).await;
        }
        tracing::info!(node_id, hostname = %record.hostname, drain = req.drain, "the node set its own drain state");
        Ok(DrainedSelf { was_draining })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_blank_field_is_named() {
        assert_eq!(
            required(&None, "hostname").unwrap_err().to_string(),
            "hostname is required"
        );
        assert_eq!(
            required(&Some("  ".into()), "token")
                .unwrap_err()
                .to_string(),
            "token is required"
        );
    }
}
