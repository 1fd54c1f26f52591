//! The service's one error type and its mapping to the [`ServiceFailure`] callers see.

use gantry_contracts::error::{ErrorCode, ServiceFailure};

/// Why a request failed. Messages are meant for the end user: never a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Malformed input or a broken rule.
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or a wrong, expired or revoked one; a deactivated user.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// A charge would take the balance below zero.
    #[error("{0}")]
    InsufficientTokens(String),
    /// No such user, token or charge.
    #[error("{0}")]
    NotFound(String),
    /// Exists already, or the state forbids the change.
    #[error("{0}")]
    Conflict(String),
    /// Too many failed logins.
    #[error("{0}")]
    TooManyRequests(String),
    /// The store is unreachable or the service is still starting.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: a bug or an unexpected failure of a dependency.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Shorthand for handler results.
pub type AuthResult<T> = Result<T, AuthError>;

/// True when a store error means "could not reach it" rather than "it refused".
fn is_store_outage(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *e.kind,
        ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

pub use gantry_runtime::mongo::is_duplicate_key;

impl From<AuthError> for ServiceFailure {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadRequest(m) => ServiceFailure::new(ErrorCode::BadRequest, m),
            AuthError::Unauthorized(m) => ServiceFailure::new(ErrorCode::Unauthorized, m),
            AuthError::Forbidden(m) => ServiceFailure::new(ErrorCode::Forbidden, m),
            AuthError::InsufficientTokens(m) => {
                ServiceFailure::new(ErrorCode::InsufficientTokens, m)
            }
            AuthError::NotFound(m) => ServiceFailure::new(ErrorCode::NotFound, m),
            AuthError::Conflict(m) => ServiceFailure::new(ErrorCode::Conflict, m),
            AuthError::TooManyRequests(m) => ServiceFailure::new(ErrorCode::TooManyRequests, m),
            AuthError::Unavailable(m) => ServiceFailure::new(ErrorCode::Unavailable, m),
            AuthError::Unexpected(e) => {
                if e.downcast_ref::<mongodb::error::Error>()
                    .is_some_and(is_store_outage)
                {
                    tracing::warn!(error = format!("{e:#}"), "store unreachable");
                    ServiceFailure::new(
                        ErrorCode::Unavailable,
                        "the auth store is unreachable; try again shortly",
                    )
                } else {
                    // The whole chain goes to the log; the caller gets no internals.
                    tracing::error!(error = format!("{e:#}"), "unexpected failure");
                    ServiceFailure::new(ErrorCode::Internal, "internal error in the auth service")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_maps_to_its_code() {
        let cases = [
            (AuthError::BadRequest("x".into()), ErrorCode::BadRequest),
            (AuthError::Unauthorized("x".into()), ErrorCode::Unauthorized),
            (AuthError::Forbidden("x".into()), ErrorCode::Forbidden),
            (
                AuthError::InsufficientTokens("x".into()),
                ErrorCode::InsufficientTokens,
            ),
            (AuthError::NotFound("x".into()), ErrorCode::NotFound),
            (AuthError::Conflict("x".into()), ErrorCode::Conflict),
            (
                AuthError::TooManyRequests("x".into()),
                ErrorCode::TooManyRequests,
            ),
            (AuthError::Unavailable("x".into()), ErrorCode::Unavailable),
        ];
        for (e, code) in cases {
            let f = ServiceFailure::from(e);
            assert_eq!(f.code, code);
            assert_eq!(f.message, "x");
        }
    }

    #[test]
    fn an_unexpected_error_hides_its_details() {
        let f = ServiceFailure::from(AuthError::from(anyhow::anyhow!("secret detail")));
        assert_eq!(f.code, ErrorCode::Internal);
        assert!(!f.message.contains("secret"));
    }
}
