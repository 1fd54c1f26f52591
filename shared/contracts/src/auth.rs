//! Messages of the auth service (`gantry.auth.v1.*`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::paging::PageQuery;
use crate::Timestamp;

/// The most credit tokens a balance may hold, and the largest single change of one. Well inside
/// what JSON numbers carry exactly (2^53), so no client and no store ever rounds a balance.
pub const MAX_TOKENS: i64 = 1_000_000_000_000_000;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May use every admin endpoint and pays no credit tokens.
    Admin,
    /// May use `/api/*` for themselves and pays for training.
    User,
}

impl Role {
    /// `admin` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// A user as listed by `GET /admin/api/users` (the admin page's shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Numeric id, 1, 2, 3 ... in creation order.
    pub id: i64,
    /// Unique login name.
    pub username: String,
    /// Unique e-mail address.
    pub email: String,
    /// `admin` or `user`.
    pub role: Role,
    /// Credit balance, never negative.
    pub tokens: i64,
    /// Inactive users cannot log in and their tokens stop working.
    pub active: bool,
    /// RFC 3339 UTC.
    pub created_at: DateTime<Utc>,
}

/// `users.list` request: filters and a page (`{}` asks for the first page of everyone). The
/// page is checked against [`crate::paging::MAX_LIMIT`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserQuery {
    /// Only users of this role.
    #[serde(default)]
    pub role: Option<Role>,
    /// Only active (or only inactive) users.
    #[serde(default)]
    pub active: Option<bool>,
    /// Page size (default [`crate::paging::DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Users to skip.
    #[serde(default)]
    pub offset: u64,
}

impl UserQuery {
    /// Its page.
    pub fn page(&self) -> PageQuery {
        PageQuery {
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// `users.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    /// This page of the matching users, by id.
    pub users: Vec<User>,
    /// Matching users in all.
    #[serde(default)]
    pub total: u64,
}

/// `users.delete` request. The user's sessions end and API tokens are revoked at once; their
/// ledger, jobs and models are kept under their id (ids are never given out again). Refused with
/// `conflict` for the asking admin themself and for the last active admin; `not_found` when
/// there is no such user (so a second delete answers `not_found`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteUser {
    /// The user to delete.
    pub user_id: i64,
    /// The admin who asks.
    pub actor_id: i64,
}

/// `users.ledger` request: one user's ledger entries, newest first. The page is checked against
/// [`crate::paging::MAX_LEDGER_LIMIT`]; an unknown user is `not_found`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerQuery {
    /// Whose ledger.
    pub user_id: i64,
    /// Page size (default [`crate::paging::DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Entries to skip.
    #[serde(default)]
    pub offset: u64,
}

impl LedgerQuery {
    /// Its page.
    pub fn page(&self) -> PageQuery {
        PageQuery {
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// What a ledger entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Enum))]
#[cfg_attr(feature = "openapi", oai(rename_all = "lowercase"))]
#[serde(rename_all = "lowercase")]
pub enum LedgerEntryKind {
    /// Tokens taken for a job (0 for an admin, who pays nothing).
    Charge,
    /// Tokens given back for a job that failed or could not run.
    Refund,
    /// An admin's change of the balance, or a new user's opening balance.
    Adjustment,
}

/// One change of a user's credit balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(poem_openapi::Object))]
pub struct LedgerEntry {
    /// The entry's key: a charge's is its job id, a refund's `refund:<job id>`, an adjustment's
    /// `adjust:<random>`.
    pub id: String,
    /// `charge`, `refund` or `adjustment`.
    pub kind: LedgerEntryKind,
    /// What the balance changed by (negative for a charge).
    pub delta: i64,
    /// The balance right after this change; absent for entries recorded before balances were
    /// kept with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub balance_after: Option<i64>,
    /// The training job it was for (charges and refunds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub job_id: Option<String>,
    /// Why.
    pub reason: String,
    /// The admin who made an adjustment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", oai(skip_serializing_if_is_none))]
    pub actor_id: Option<i64>,
    /// When the balance changed (RFC 3339, UTC, milliseconds).
    #[cfg_attr(
        feature = "openapi",
        oai(serialize_with = "crate::openapi::rfc3339_millis")
    )]
    pub at: Timestamp,
}

/// `users.ledger` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LedgerPage {
    /// This page, newest first.
    pub entries: Vec<LedgerEntry>,
    /// The user's entries in all.
    pub total: u64,
}

/// Which credential a caller presented.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token as presented.
        token: String,
    },
    /// The session cookie.
    Session {
        /// The session id as presented.
        session_id: String,
    },
}

/// `verify` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// The credential to check.
    pub credential: Credential,
}

/// Who a verified credential belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// The user.
    pub user: User,
    /// How they authenticated: `bearer` or `session`.
    pub via: String,
    /// Seconds the api may cache this answer; a revocation is announced on
    /// [`REVOCATIONS`] so caches drop it sooner.
    pub cache_seconds: u64,
}

/// Subject on which auth announces revoked credentials and changed users, so every api replica
/// drops its cached verifications at once. Payload: [`Revocation`].
pub const REVOCATIONS: &str = "gantry.auth.v1.events.revoked";

/// Announced when a token is revoked, a session ends or a user changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    /// The user whose cached credentials must be dropped.
    pub user_id: i64,
}

/// `login` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    /// Login name.
    pub username: String,
    /// Password (never logged).
    pub password: String,
    /// The client's address, for per-client rate limiting.
    pub client: String,
}

/// `login` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The user.
    pub user: User,
    /// The new session id, shown once; auth keeps only its SHA-256.
    pub session_id: String,
    /// Seconds of inactivity after which the session expires.
    pub expires_in: u64,
}

/// `logout` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogoutRequest {
    /// The session id to end.
    pub session_id: String,
}

/// `users.create` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateUser {
    /// 3–64 characters of letters, digits, `.`, `_`, `-`.
    pub username: String,
    /// An e-mail address.
    pub email: String,
    /// At least 8 characters.
    pub password: String,
    /// Defaults to `user`.
    pub role: Option<Role>,
    /// Starting balance, defaults to 0.
    pub tokens: Option<i64>,
}

/// `users.update` request: every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateUser {
    /// The user to change.
    pub id: i64,
    /// New role.
    pub role: Option<Role>,
    /// Activate or deactivate.
    pub active: Option<bool>,
    /// New e-mail.
    pub email: Option<String>,
    /// New password.
    pub password: Option<String>,
    /// Balance adjustment (positive or negative), written to the ledger.
    pub tokens_delta: Option<i64>,
    /// Why the balance changed, for the ledger.
    pub reason: Option<String>,
    /// Who asked (the admin's id), for the ledger.
    pub actor_id: Option<i64>,
}

/// Names one user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRef {
    /// The user's id.
    pub user_id: i64,
}

/// An API token as listed (never whole).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    /// Token id.
    pub id: String,
    /// The name its owner gave it.
    pub name: String,
    /// The first 8 characters followed by `...`.
    pub prefix: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used, if ever.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// `tokens.list` request: one user's live tokens, a page of them (`{"user_id": 1}` asks for the
/// first). The page is checked against [`crate::paging::MAX_LIMIT`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenQuery {
    /// Whose tokens.
    pub user_id: i64,
    /// Page size (default [`crate::paging::DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<u32>,
    /// Tokens to skip.
    #[serde(default)]
    pub offset: u64,
}

impl TokenQuery {
    /// Its page.
    pub fn page(&self) -> PageQuery {
        PageQuery {
            limit: self.limit,
            offset: self.offset,
        }
    }
}

/// `tokens.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiTokenList {
    /// This page of the user's live tokens, oldest first.
    pub tokens: Vec<ApiToken>,
    /// The user's live tokens in all.
    #[serde(default)]
    pub total: u64,
}

/// `tokens.create` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateApiToken {
    /// Owner.
    pub user_id: i64,
    /// A name, 1–100 characters.
    pub name: String,
}

/// `tokens.create` reply: the only time the whole token is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedApiToken {
    /// As listed.
    #[serde(flatten)]
    pub token: ApiToken,
    /// The whole token.
    pub secret: String,
}

/// `tokens.revoke` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeApiToken {
    /// Owner (a user may only revoke their own).
    pub user_id: i64,
    /// Token id.
    pub token_id: String,
}

/// `credits.charge` / `credits.refund` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreditChange {
    /// Whose balance.
    pub user_id: i64,
    /// How many tokens (positive).
    pub amount: i64,
    /// Idempotency key: a repeated key changes the balance once.
    pub key: String,
    /// Why, for the ledger.
    pub reason: String,
}

/// `credits.unsettled` request: charges applied in `[since_ms, until_ms)` (at most 7 days
/// apart) that were not refunded, at most `limit` (1 to 1000).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsettledQuery {
    /// Window start, milliseconds since the epoch.
    pub since_ms: i64,
    /// Window end (exclusive).
    pub until_ms: i64,
    /// Most charges answered.
    pub limit: u32,
}

/// One charge that was not refunded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnsettledCharge {
    /// Its idempotency key (a job's id, for training).
    pub key: String,
    /// Whose.
    pub user_id: i64,
    /// Tokens asked for.
    pub amount: i64,
}

/// `credits.unsettled` reply, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsettledCharges {
    /// The charges.
    pub charges: Vec<UnsettledCharge>,
}

/// `credits.charge` / `credits.refund` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreditResult {
    /// Tokens actually taken (0 for an admin) or given back.
    pub tokens_used: i64,
    /// Balance afterwards.
    pub remaining_tokens: i64,
    /// True when the key had been seen and nothing changed this time.
    pub replayed: bool,
}
