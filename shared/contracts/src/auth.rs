//! Messages of the auth service (`gantry.auth.v1.*`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

/// `users.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserList {
    /// Every user, by id.
    pub users: Vec<User>,
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

/// `tokens.list` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiTokenList {
    /// The user's live tokens.
    pub tokens: Vec<ApiToken>,
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
