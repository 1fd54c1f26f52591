//! Users: `GET /admin/api/users` as the admin page shows, plus creating and changing users.

use chrono::SecondsFormat;
use gantry_contracts::auth as msg;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_runtime::nats;
use poem::Request;
use poem_openapi::param::Path;
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
}

impl Example for UserListResponse {
    fn example() -> Self {
        Self {
            users: vec![UserOut::example()],
        }
    }
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
    async fn list(&self, req: &Request, auth: Credentials) -> ApiResult<Json<UserListResponse>> {
        self.0.auth.admin(&auth, req).await?;
        let list: msg::UserList = nats::request(
            &self.0.nats,
            subjects::auth(ep::USERS_LIST),
            &serde_json::json!({}),
        )
        .await?;
        Ok(Json(UserListResponse {
            users: list.users.into_iter().map(Into::into).collect(),
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
}
