//! Logging in and out, and who am I.

use gantry_contracts::auth as msg;
use gantry_contracts::subjects::{self, auth as ep};
use gantry_runtime::nats;
use poem::Request;
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiRequest, ApiResponse, Object, OpenApi};

use crate::auth::{Credentials, SESSION_COOKIE};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tags::ApiTags;
use crate::users::UserOut;

/// Username and password.
#[derive(Debug, Clone, Object, serde::Deserialize)]
pub struct LoginForm {
    /// Login name.
    #[oai(validator(min_length = 1, max_length = 64))]
    pub username: String,
    /// Password.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub password: String,
}

/// JSON or an HTML form.
#[derive(ApiRequest)]
pub enum LoginBody {
    /// JSON.
    Json(Json<LoginForm>),
    /// `application/x-www-form-urlencoded`.
    Form(Form<LoginForm>),
}

/// Logged in.
#[derive(Debug, Clone, Object)]
pub struct LoginOk {
    /// Who.
    pub user: UserOut,
    /// Seconds of inactivity after which the session ends.
    pub expires_in: u64,
}

/// `POST /api/auth/login` answers.
#[derive(ApiResponse)]
pub enum LoginResponse {
    /// Logged in; the session cookie is set.
    #[oai(status = 200)]
    Ok(Json<LoginOk>, #[oai(header = "Set-Cookie")] String),
}

/// `POST /api/auth/logout` answers.
#[derive(ApiResponse)]
pub enum LogoutResponse {
    /// Logged out; the cookie is cleared.
    #[oai(status = 204)]
    Done(#[oai(header = "Set-Cookie")] String),
}

/// Sessions.
pub struct SessionApi(pub AppState);

impl SessionApi {
    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.0.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }
}

#[OpenApi]
impl SessionApi {
    /// Log in
    ///
    /// Checks a username and password and sets the session cookie (HttpOnly, SameSite=Strict).
    /// Repeated failures are refused for a while (429).
    #[oai(
        path = "/api/auth/login",
        method = "post",
        tag = "ApiTags::Session",
        operation_id = "login"
    )]
    async fn login(&self, req: &Request, body: LoginBody) -> ApiResult<LoginResponse> {
        let form = match body {
            LoginBody::Json(Json(f)) | LoginBody::Form(Form(f)) => f,
        };
        let client = self.0.client_address(
            req.remote_addr().as_socket_addr().map(|a| a.ip()),
            req.header("x-forwarded-for"),
        );
        let resp: msg::LoginResponse = nats::request(
            &self.0.nats,
            subjects::auth(ep::LOGIN),
            &msg::LoginRequest {
                username: form.username,
                password: form.password,
                client,
            },
        )
        .await?;
        let cookie = self.cookie(&resp.session_id, resp.expires_in);
        Ok(LoginResponse::Ok(
            Json(LoginOk {
                user: resp.user.into(),
                expires_in: resp.expires_in,
            }),
            cookie,
        ))
    }

    /// Log out
    ///
    /// Ends the session of the cookie sent and clears it.
    #[oai(
        path = "/api/auth/logout",
        method = "post",
        tag = "ApiTags::Session",
        operation_id = "logout"
    )]
    async fn logout(&self, req: &Request, auth: Credentials) -> ApiResult<LogoutResponse> {
        self.0.auth.principal(&auth, req).await?;
        if let Credentials::Session(s) = &auth {
            let _: serde_json::Value = nats::request(
                &self.0.nats,
                subjects::auth(ep::LOGOUT),
                &msg::LogoutRequest {
                    session_id: s.0.key.clone(),
                },
            )
            .await?;
        } else {
            return Err(ApiError::bad_request(
                "logout ends a session: send the session cookie, not a bearer token",
            ));
        }
        Ok(LogoutResponse::Done(self.cookie("", 0)))
    }

    /// Who am I
    ///
    /// The user the credential belongs to, as auth has it now (a charge shows at once).
    #[oai(
        path = "/api/auth/me",
        method = "get",
        tag = "ApiTags::Session",
        operation_id = "me"
    )]
    async fn me(&self, req: &Request, auth: Credentials) -> ApiResult<Json<UserOut>> {
        let p = self.0.auth.principal_now(&auth, req).await?;
        Ok(Json(p.user.into()))
    }
}
