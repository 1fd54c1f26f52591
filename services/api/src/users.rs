//! Users: `GET /admin/api/users` as the admin page shows (plus filters and paging), creating,
//! changing and deleting users, and a user's credit ledger.

use chrono::SecondsFormat;
use gantry_contracts::auth::{self as msg, LedgerEntry};
use gantry_contracts::paging;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_runtime::nats;
use poem::Request;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::Example;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use crate::auth::Credentials;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::tags::ApiTags;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum RoleName {
    /// Every admin endpoint; pays no credit tokens.
    Admin,
    /// Their own jobs, models and tokens; pays for training.
    User,
}

impl From<msg::Role> for RoleName {
    fn from(r: msg::Role) -> Self {
        match r {
            msg::Role::Admin => Self::Admin,
            msg::Role::User => Self::User,
        }
    }
}

impl From<RoleName> for msg::Role {
    fn from(r: RoleName) -> Self {
        match r {
            RoleName::Admin => Self::Admin,
            RoleName::User => Self::User,
        }
    }
}

/// A user.
#[derive(Debug, Clone, Object)]
#[oai(rename = "User", example)]
pub struct UserOut {
    /// Numeric id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// E-mail address.
    pub email: String,
    /// `admin` or `user`.
    pub role: RoleName,
    /// Credit token balance.
    pub tokens: i64,
    /// Whether the user may log in and use their tokens.
    pub active: bool,
    /// When the user was created (RFC 3339, UTC).
    pub created_at: String,
}

impl Example for UserOut {
    fn example() -> Self {
        Self {
            id: 1,
            username: "user1".into(),
            email: "user1@example.com".into(),
            role: RoleName::User,
            tokens: 100,
            active: true,
            created_at: "2024-01-01T00:00:00Z".into(),
        }
    }
}

/// RFC 3339 with a `Z`, as the admin page shows.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl From<msg::User> for UserOut {
    fn from(u: msg::User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            role: u.role.into(),
            tokens: u.tokens,
            active: u.active,
            created_at: rfc3339(u.created_at),
        }
    }
}

/// Every user.
#[derive(Debug, Clone, Object)]
#[oai(example)]
pub struct UserListResponse {
    /// All users, by id.
    pub users: Vec<UserOut>,
    /// Users matching the filters in all.
    pub total: u64,
    /// Page size.
    pub limit: u64,
    /// Users skipped before this page.
    pub offset: u64,
}

impl Example for UserListResponse {
    fn example() -> Self {
        Self {
            users: vec![UserOut::example()],
            total: 1,
            limit: u64::from(paging::DEFAULT_LIMIT),
            offset: 0,
        }
    }
}

/// A page of a user's credit ledger, newest first.
#[derive(Debug, Clone, Object)]
pub struct LedgerPageOut {
    /// This page of entries, newest first.
    pub entries: Vec<LedgerEntry>,
    /// The user's entries in all.
    pub total: u64,
    /// Page size.
    pub limit: u64,
    /// Entries skipped before this page.
    pub offset: u64,
}

fn default_limit() -> u32 {
    paging::DEFAULT_LIMIT
}

/// A new user.
#[derive(Debug, Clone, Object)]
pub struct CreateUserBody {
    /// 3 to 64 letters, digits, `.`, `_` or `-`.
    #[oai(validator(min_length = 3, max_length = 64, pattern = r"^[A-Za-z0-9._-]+$"))]
    pub username: String,
    /// E-mail address.
    #[oai(validator(max_length = 254))]
    pub email: String,
    /// At least 8 characters.
    #[oai(validator(min_length = 8, max_length = 1024))]
    pub password: String,
    /// `admin` or `user` (default: `user`).
    pub role: Option<RoleName>,
    /// Starting credit token balance (default: 0).
    #[oai(validator(minimum(value = "0")))]
    pub tokens: Option<i64>,
}

/// Changes to a user; every field is optional.
#[derive(Debug, Clone, Object)]
pub struct UpdateUserBody {
    /// New role.
    pub role: Option<RoleName>,
    /// Activate or deactivate. A deactivated user's sessions and tokens stop working at once.
    pub active: Option<bool>,
    /// New e-mail address.
    #[oai(validator(max_length = 254))]
    pub email: Option<String>,
    /// New password (at least 8 characters).
    #[oai(validator(min_length = 8, max_length = 1024))]
    pub password: Option<String>,
    /// Add (or, negative, take away) credit tokens; written to the ledger. The balance never
    /// goes below 0.
    pub tokens_delta: Option<i64>,
    /// Why the balance changes, for the ledger.
    #[oai(validator(max_length = 200))]
    pub reason: Option<String>,
}

/// `POST /admin/api/users` answers.
#[derive(ApiResponse)]
pub enum CreatedUser {
    /// The user was created.
    #[oai(status = 201)]
    Created(Json<UserOut>),
}

/// `DELETE /admin/api/users/{id}` answers.
#[derive(ApiResponse)]
pub enum DeletedUser {
    /// Deleted: their sessions and API tokens stopped working; their jobs, models and ledger are
    /// kept under their id.
    #[oai(status = 204)]
    Done,
}

/// User management for admins.
pub struct UsersApi(pub AppState);

#[OpenApi]
impl UsersApi {
    /// List users
    ///
    /// Retrieve a complete list of all users in the system for administrative management.
    #[oai(
        path = "/admin/api/users",
        method = "get",
        tag = "ApiTags::Users",
        operation_id = "list_users",
        code_sample(lang = "curl", source = "crate::docs::samples::LIST_USERS")
    )]
    async fn list(
        &self,
        req: &Request,
        auth: Credentials,
        /// Only users of this role
        role: Query<Option<RoleName>>,
        /// Only active (`true`) or only deactivated (`false`) users
        active: Query<Option<bool>>,
        /// Page size (default: 100, 1 to 1000)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<u32>,
        /// Users to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<UserListResponse>> {
        self.0.auth.admin(&auth, req).await?;
        let list: msg::UserList = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_LIST),
            &msg::UserQuery {
                role: role.0.map(Into::into),
                active: active.0,
                limit: Some(limit.0),
                offset: offset.0,
            },
        )
        .await?;
        Ok(Json(UserListResponse {
            users: list.users.into_iter().map(Into::into).collect(),
            total: list.total,
            limit: u64::from(limit.0),
            offset: offset.0,
        }))
    }

    /// Create a user
    ///
    /// Creates a user with a password, a role and a starting credit token balance. Usernames and
    /// e-mail addresses are unique (409 otherwise).
    #[oai(
        path = "/admin/api/users",
        method = "post",
        tag = "ApiTags::Users",
        operation_id = "create_user",
        code_sample(lang = "curl", source = "crate::docs::samples::CREATE_USER")
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Credentials,
        body: Json<CreateUserBody>,
    ) -> ApiResult<CreatedUser> {
        self.0.auth.admin(&auth, req).await?;
        let b = body.0;
        let user: msg::User = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_CREATE),
            &msg::CreateUser {
                username: b.username,
                email: b.email,
                password: b.password,
                role: b.role.map(Into::into),
                tokens: b.tokens,
            },
        )
        .await?;
        Ok(CreatedUser::Created(Json(user.into())))
    }

    /// Get a user
    ///
    /// One user as the list shows them, with their balance as auth has it now; 404 when there
    /// is no such user.
    #[oai(
        path = "/admin/api/users/:id",
        method = "get",
        tag = "ApiTags::Users",
        operation_id = "get_user"
    )]
    async fn get(
        &self,
        req: &Request,
        auth: Credentials,
        /// The user's id.
        id: Path<i64>,
    ) -> ApiResult<Json<UserOut>> {
        self.0.auth.admin(&auth, req).await?;
        let user: msg::User = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_GET),
            &msg::UserRef { user_id: id.0 },
        )
        .await?;
        Ok(Json(user.into()))
    }

    /// Change a user
    ///
    /// Changes a user's role, active flag, e-mail, password or credit token balance. Balance
    /// changes go through the ledger. The last active admin cannot be deactivated or demoted (409).
    #[oai(
        path = "/admin/api/users/:id",
        method = "patch",
        tag = "ApiTags::Users",
        operation_id = "update_user",
        code_sample(lang = "curl", source = "crate::docs::samples::UPDATE_USER")
    )]
    async fn update(
        &self,
        req: &Request,
        auth: Credentials,
        /// The user's id.
        id: Path<i64>,
        body: Json<UpdateUserBody>,
    ) -> ApiResult<Json<UserOut>> {
        let admin = self.0.auth.admin(&auth, req).await?;
        let b = body.0;
        let user: msg::User = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_UPDATE),
            &msg::UpdateUser {
                id: id.0,
                role: b.role.map(Into::into),
                active: b.active,
                email: b.email,
                password: b.password,
                tokens_delta: b.tokens_delta,
                reason: b.reason,
                actor_id: Some(admin.user.id),
            },
        )
        .await?;
        Ok(Json(user.into()))
    }

    /// Delete a user
    ///
    /// Deletes a user: their sessions and API tokens stop working at once; their jobs, models
    /// and credit ledger are kept, attributed to their id (ids are never given out again), and
    /// their username and e-mail may be used for a new user. You cannot delete yourself, nor the
    /// last active admin (409). A second delete of the same id answers 404.
    #[oai(
        path = "/admin/api/users/:id",
        method = "delete",
        tag = "ApiTags::Users",
        operation_id = "delete_user"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Credentials,
        /// The user's id.
        id: Path<i64>,
    ) -> ApiResult<DeletedUser> {
        let admin = self.0.auth.admin(&auth, req).await?;
        let _: serde_json::Value = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_DELETE),
            &msg::DeleteUser {
                user_id: id.0,
                actor_id: admin.user.id,
            },
        )
        .await?;
        Ok(DeletedUser::Done)
    }

    /// A user's credit ledger
    ///
    /// Every change of the user's credit balance, newest first: charges and refunds (with their
    /// job's id) and admins' adjustments (with the admin's id), each with what it changed the
    /// balance by, the balance right after it where it is known, and when (`at`, RFC 3339 with
    /// milliseconds). 404 when there is no such user.
    #[oai(
        path = "/admin/api/users/:id/ledger",
        method = "get",
        tag = "ApiTags::Users",
        operation_id = "user_ledger"
    )]
    async fn ledger(
        &self,
        req: &Request,
        auth: Credentials,
        /// The user's id.
        id: Path<i64>,
        /// Page size (default: 100, 1 to 200)
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
        /// Entries to skip (default: 0, at most 10^15)
        #[oai(default, validator(maximum(value = "1000000000000000")))]
        offset: Query<u64>,
    ) -> ApiResult<Json<LedgerPageOut>> {
        self.0.auth.admin(&auth, req).await?;
        let page: msg::LedgerPage = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_LEDGER),
            &msg::LedgerQuery {
                user_id: id.0,
                limit: Some(limit.0),
                offset: offset.0,
            },
        )
        .await?;
        Ok(Json(LedgerPageOut {
            entries: page.entries,
            total: page.total,
            limit: u64::from(limit.0),
            offset: offset.0,
        }))
    }
}
