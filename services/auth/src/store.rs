//! Access to the service's database (`<prefix>auth`): the stored shapes, their collections, the
//! indexes created at start-up, and the queries the handlers share.
//!
//! ## Collections
//! - `users`: `_id` is the numeric user id; unique `username` and `email`. `ledger_marks` holds
//!   one field per recently applied ledger entry (see [`crate::credits`]).
//! - `counters`: `{_id: "users", seq}`, the last user id handed out.
//! - `sessions`: `_id` is the SHA-256 of the session id.
//! - `api_tokens`: `_id` is the token id; unique `hash` (SHA-256 of the token).
//! - `login_failures`: one document per failed (or in-flight) login, for the rate limiter.
//! - `ledger`: every credit change; unique `key`.
//!
//! Times are stored as milliseconds since the epoch (`*_ms`): they compare and range-query the
//! same way on every MongoDB-wire store. Booleans may read back as 0/1 on the local store after a
//! `$set` (DESIGN), so they are read with [`tolerant_bool`].

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use gantry_contracts::auth::{Role, User};
use gantry_runtime::mongo::{self, Counter};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::is_duplicate_key;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Milliseconds since the epoch as a UTC time (the epoch itself if out of range).
pub fn to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Read a boolean written as `true`/`false` or, after a `$set` on the local store, as `1`/`0`.
pub fn tolerant_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a boolean, or 0/1")
        }
        fn visit_bool<E>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E>(self, v: i64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_u64<E>(self, v: u64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_f64<E>(self, v: f64) -> Result<bool, E> {
            Ok(v != 0.0)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v {
                "true" | "1" => Ok(true),
                "false" | "0" | "" => Ok(false),
                other => Err(E::custom(format!("not a boolean: {other:?}"))),
            }
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_none<E>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    d.deserialize_any(V)
}

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserDoc {
    /// The numeric user id.
    #[serde(rename = "_id")]
    pub id: i64,
    pub username: String,
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub tokens: i64,
    #[serde(deserialize_with = "tolerant_bool")]
    pub active: bool,
    pub created_at_ms: i64,
}

impl UserDoc {
    /// The contract's view (no hash).
    pub fn to_user(&self) -> User {
        User {
            id: self.id,
            username: self.username.clone(),
            email: self.email.clone(),
            role: self.role,
            tokens: self.tokens,
            active: self.active,
            created_at: to_time(self.created_at_ms),
        }
    }
}

/// A login session, keyed by the SHA-256 of its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionDoc {
    #[serde(rename = "_id")]
    pub hash: String,
    pub user_id: i64,
    pub created_at_ms: i64,
    /// When the expiry was last pushed forward.
    pub last_seen_ms: i64,
    pub expires_at_ms: i64,
}

/// An API token. Revoked tokens keep their document (with `revoked_at_ms`) so that
/// `GANTRY_ADMIN_API_TOKEN` is not stored again after its owner revoked it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub user_id: i64,
    pub name: String,
    /// SHA-256 of the whole token.
    pub hash: String,
    /// First 8 characters and `...`.
    pub prefix: String,
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

/// One login attempt: in flight, or failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureDoc {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub username: String,
    pub client: String,
    pub at_ms: i64,
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// `credits.charge`.
    Charge,
    /// `credits.refund` of a charge.
    Refund,
    /// An admin's `tokens_delta` in `users.update`.
    Adjust,
}

/// Where a ledger entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    /// Written, balance maybe not yet changed; whoever holds the lease may finish it.
    Pending,
    /// The balance changed (or, for an admin's charge, nothing had to).
    Applied,
}

/// One credit change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerDoc {
    /// Idempotency key (unique).
    pub key: String,
    pub user_id: i64,
    pub kind: LedgerKind,
    /// What was asked for (positive).
    pub amount: i64,
    /// What the balance changes by (0 for an admin's charge).
    pub delta: i64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<i64>,
    pub state: LedgerState,
    /// Until when the request that holds this pending entry may finish it alone.
    pub lease_until_ms: i64,
    pub created_at_ms: i64,
    /// When the balance changed; 0 while pending.
    #[serde(default)]
    pub applied_at_ms: i64,
    /// When the entry's mark was removed from the user (see [`crate::credits`]); 0 until then.
    #[serde(default)]
    pub settled_at_ms: i64,
    /// The balance right after the change, when it is known exactly (entries applied before
    /// this was kept, or finished by a retry after a crash, have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_after: Option<i64>,
}

/// The service's collections.
#[derive(Clone)]
pub struct Store {
    /// The database, for pings.
    pub db: Database,
    pub users: Collection<UserDoc>,
    user_ids: Counter,
    pub sessions: Collection<SessionDoc>,
    pub tokens: Collection<TokenDoc>,
    pub failures: Collection<FailureDoc>,
    pub ledger: Collection<LedgerDoc>,
}

fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_owned())
                .unique(unique.then_some(true))
                .build(),
        )
        .build()
}

impl Store {
    /// Handles on `db`'s collections (no I/O).
    pub fn new(db: Database) -> Self {
        Self {
            users: db.collection("users"),
            user_ids: Counter::new(&db, "counters", "users", "seq"),
            sessions: db.collection("sessions"),
            tokens: db.collection("api_tokens"),
            failures: db.collection("login_failures"),
            ledger: db.collection("ledger"),
            db,
        }
    }

    /// Create every index (idempotent; safe from several replicas at once).
    pub async fn create_indexes(&self) -> anyhow::Result<()> {
        self.users
            .create_indexes([
                index(doc! { "username": 1 }, "username_unique", true),
                index(doc! { "email": 1 }, "email_unique", true),
                index(doc! { "role": 1 }, "role", false),
            ])
            .await
            .context("creating the users indexes")?;
        self.sessions
            .create_indexes([
                index(doc! { "user_id": 1 }, "user_id", false),
                index(doc! { "expires_at_ms": 1 }, "expires_at_ms", false),
            ])
            .await
            .context("creating the sessions indexes")?;
        self.tokens
            .create_indexes([
                index(doc! { "hash": 1 }, "hash_unique", true),
                index(doc! { "user_id": 1 }, "user_id", false),
            ])
            .await
            .context("creating the api_tokens indexes")?;
        self.failures
            .create_indexes([
                index(doc! { "username": 1, "at_ms": 1 }, "username_at", false),
                index(doc! { "client": 1, "at_ms": 1 }, "client_at", false),
                index(doc! { "at_ms": 1 }, "at_ms", false),
            ])
            .await
            .context("creating the login_failures indexes")?;
        self.ledger
            .create_indexes([
                index(doc! { "key": 1 }, "key_unique", true),
                index(doc! { "user_id": 1 }, "user_id", false),
                index(doc! { "state": 1 }, "state", false),
                index(
                    doc! { "kind": 1, "created_at_ms": 1 },
                    "kind_created",
                    false,
                ),
            ])
            .await
            .context("creating the ledger indexes")?;
        self.ledger
            .create_indexes([index(
                doc! { "user_id": 1, "applied_at_ms": -1 },
                "user_applied",
                false,
            )])
            .await
            .context("creating the ledger's per-user index")?;
        Ok(())
    }

    /// The next user id, from the `users` counter.
    pub async fn next_user_id(&self) -> anyhow::Result<i64> {
        self.user_ids.next().await.context("allocating a user id")
    }

    /// Make sure the counter is at least `seq` (after inserting a user with a chosen id).
    pub async fn raise_user_counter(&self, seq: i64) -> anyhow::Result<()> {
        self.user_ids.raise_to(seq).await
    }

    /// One user by id.
    pub async fn user(&self, id: i64) -> anyhow::Result<Option<UserDoc>> {
        self.users
            .find_one(doc! { "_id": id })
            .await
            .context("reading a user")
    }

    /// One user by name.
    pub async fn user_by_name(&self, username: &str) -> anyhow::Result<Option<UserDoc>> {
        self.users
            .find_one(doc! { "username": username })
            .await
            .context("reading a user by name")
    }

    /// One user by e-mail.
    pub async fn user_by_email(&self, email: &str) -> anyhow::Result<Option<UserDoc>> {
        self.users
            .find_one(doc! { "email": email })
            .await
            .context("reading a user by email")
    }

    /// One page of the users matching `filter`, by id, and how many match in all.
    pub async fn users_page(
        &self,
        filter: Document,
        limit: u32,
        offset: u64,
    ) -> anyhow::Result<(Vec<UserDoc>, u64)> {
        let total = mongo::count(&self.users, filter.clone())
            .await
            .context("counting users")?;
        let users: Vec<UserDoc> = self
            .users
            .find(filter)
            .sort(doc! { "_id": 1 })
            .skip(offset)
            .limit(i64::from(limit))
            .await
            .context("listing users")?
            .try_collect()
            .await
            .context("reading the user list")?;
        Ok((users, total))
    }

    /// Every admin, active or not. Filtered on `role` only: `active` may be stored as 0/1.
    pub async fn admins(&self) -> anyhow::Result<Vec<UserDoc>> {
        let mut admins: Vec<UserDoc> = self
            .users
            .find(doc! { "role": Role::Admin.as_str() })
            .await
            .context("listing admins")?
            .try_collect()
            .await
            .context("reading the admin list")?;
        admins.sort_by_key(|u| u.id);
        Ok(admins)
    }

    /// Insert a user. `Ok(false)` when a unique index refused it.
    pub async fn insert_user(&self, user: &UserDoc) -> anyhow::Result<bool> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("inserting a user")),
        }
    }

    /// The token with this digest, revoked or not.
    pub async fn token_by_hash(&self, hash: &str) -> anyhow::Result<Option<TokenDoc>> {
        self.tokens
            .find_one(doc! { "hash": hash })
            .await
            .context("reading an API token")
    }

    /// Insert a token. `Ok(false)` when its digest is stored already.
    pub async fn insert_token(&self, token: &TokenDoc) -> anyhow::Result<bool> {
        match self.tokens.insert_one(token).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(anyhow::Error::new(e).context("inserting an API token")),
        }
    }

    /// End every session of a user (password change, deactivation).
    pub async fn delete_sessions_of(&self, user_id: i64) -> anyhow::Result<u64> {
        let r = self
            .sessions
            .delete_many(doc! { "user_id": user_id })
            .await
            .context("ending a user's sessions")?;
        Ok(r.deleted_count)
    }

    /// Remove what has expired: sessions past their expiry, login failures older than `window`.
    pub async fn sweep_expired(&self, window: Duration) -> anyhow::Result<()> {
        let now = now_ms();
        self.sessions
            .delete_many(doc! { "expires_at_ms": { "$lt": now } })
            .await
            .context("deleting expired sessions")?;
        self.failures
            .delete_many(doc! { "at_ms": { "$lt": now - window.as_millis() as i64 } })
            .await
            .context("deleting old login failures")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{self, Bson};

    fn user_with_active(active: Bson) -> Document {
        doc! {
            "_id": 7i32, "username": "ann", "email": "ann@example.com", "password_hash": "x",
            "role": "user", "tokens": 5i32, "active": active, "created_at_ms": 0i64,
            "ledger_marks": { "abc": 1i64 },
        }
    }

    #[test]
    fn active_reads_as_a_boolean_whether_stored_as_bool_or_0_1() {
        for (stored, expected) in [
            (Bson::Boolean(true), true),
            (Bson::Boolean(false), false),
            (Bson::Int32(1), true),
            (Bson::Int32(0), false),
            (Bson::Int64(1), true),
            (Bson::Double(0.0), false),
        ] {
            let u: UserDoc = bson::from_document(user_with_active(stored.clone())).unwrap();
            assert_eq!(u.active, expected, "{stored:?}");
            assert_eq!(u.id, 7);
            assert_eq!(u.tokens, 5);
        }
    }

    #[test]
    fn optional_times_are_left_out_when_absent() {
        let t = TokenDoc {
            id: "a".into(),
            user_id: 1,
            name: "n".into(),
            hash: "h".into(),
            prefix: "p".into(),
            created_at_ms: 1,
            last_used_ms: None,
            revoked_at_ms: None,
        };
        let d = bson::to_document(&t).unwrap();
        assert!(!d.contains_key("revoked_at_ms"));
        let back: TokenDoc = bson::from_document(d).unwrap();
        assert!(back.revoked_at_ms.is_none());
    }
}
