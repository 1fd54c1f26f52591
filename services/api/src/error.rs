//! The api's error: every failure becomes `{"error": {"code", "message"}}` with its status.
//!
//! [`ApiError`] is the error type of every operation, so the OpenAPI spec lists the error
//! responses. [`catch_all`] turns the framework's own errors (unparseable JSON, wrong content
//! type, a body over the limit, a missing credential, an unknown route) into the same envelope.

use gantry_contracts::error::{ErrorCode, ServiceFailure};
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// What went wrong.
#[derive(Debug, Clone, Object)]
#[oai(rename = "ErrorDetail")]
pub struct ErrorDetail {
    /// Machine-readable code: `bad_request`, `unauthorized`, `insufficient_tokens`, `forbidden`,
    /// `not_found`, `conflict`, `payload_too_large`, `unsupported_media_type`, `unprocessable`,
    /// `too_many_requests`, `internal`, `unavailable`.
    pub code: String,
    /// What to tell the user.
    pub message: String,
}

/// The error body of every endpoint.
#[derive(Debug, Clone, Object)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Every error an operation can answer.
#[derive(Debug, ApiResponse)]
pub enum ApiError {
    /// The input is malformed or breaks a rule.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No credential, or a wrong, expired or revoked one.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// Not enough credit tokens.
    #[oai(status = 402)]
    InsufficientTokens(Json<ErrorBody>),
    /// Authenticated, but not allowed (not an admin, or a cross-origin cookie write).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// No such thing.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// It exists already, or its state forbids the change.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is too large.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body's content type is not accepted.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Well-formed but unusable.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// Too many attempts; try again later.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
    /// Something broke on our side.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// A service behind the api is down; try again shortly.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
}

fn body(code: ErrorCode, message: String) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: ErrorDetail {
            code: code.as_str().into(),
            message,
        },
    })
}

impl ApiError {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let b = body(code, message);
        match code {
            ErrorCode::BadRequest => Self::BadRequest(b),
            ErrorCode::Unauthorized => Self::Unauthorized(b, "Bearer".into()),
            ErrorCode::InsufficientTokens => Self::InsufficientTokens(b),
            ErrorCode::Forbidden => Self::Forbidden(b),
            ErrorCode::NotFound => Self::NotFound(b),
            ErrorCode::Conflict => Self::Conflict(b),
            ErrorCode::PayloadTooLarge => Self::PayloadTooLarge(b),
            ErrorCode::UnsupportedMediaType => Self::UnsupportedMediaType(b),
            ErrorCode::Unprocessable => Self::Unprocessable(b),
            ErrorCode::TooManyRequests => Self::TooManyRequests(b, "60".into()),
            ErrorCode::Internal => Self::Internal(b),
            ErrorCode::Unavailable => Self::Unavailable(b, "5".into()),
            // Only the router answers 405 (`app::method_not_allowed`, with `Allow`); a service
            // reply carrying this code would be a bug.
            ErrorCode::MethodNotAllowed => Self::Internal(b),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 500, logged; the user sees a generic message.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(error = %error, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl From<ServiceFailure> for ApiError {
    fn from(f: ServiceFailure) -> Self {
        if f.code == ErrorCode::Internal {
            return Self::internal(f.message);
        }
        Self::new(f.code, f.message)
    }
}

/// Result of every operation.
pub type ApiResult<T> = Result<T, ApiError>;

fn code_for(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::BadRequest,
        401 => ErrorCode::Unauthorized,
        402 => ErrorCode::InsufficientTokens,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::Unprocessable,
        429 => ErrorCode::TooManyRequests,
        503 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// Turn any framework error into the envelope, keeping its status.
pub fn envelope(err: poem::Error) -> Response {
    let mut status = err.status();
    let message = match status.as_u16() {
        401 => "authentication required: send `Authorization: Bearer <token>` or log in".to_owned(),
        404 => "no such endpoint".to_owned(),
        405 => {
            status = StatusCode::METHOD_NOT_ALLOWED;
            "method not allowed on this endpoint".to_owned()
        }
        413 => "request body too large".to_owned(),
        415 => format!("unsupported content type: {err}"),
        s if s >= 500 => {
            tracing::error!(error = %err, "unhandled error");
            "internal error".to_owned()
        }
        _ => err.to_string(),
    };
    let code = code_for(status);
    let mut resp = poem::web::Json(
        serde_json::json!({ "error": { "code": code.as_str(), "message": message } }),
    )
    .with_status(status)
    .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert("WWW-Authenticate", "Bearer".parse().unwrap());
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert("Retry-After", "5".parse().unwrap());
    }
    resp
}
