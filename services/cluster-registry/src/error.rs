//! The registry's errors and how they travel: each becomes a [`ServiceFailure`] whose code the
//! api maps to an HTTP status.

use gantry_contracts::error::{ErrorCode, ServiceFailure};

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Malformed input or a broken rule (400).
    #[error("{0}")]
    BadRequest(String),
    /// A cluster token that is unknown or revoked (401).
    #[error("{0}")]
    Unauthorized(String),
    /// No such token or node (404).
    #[error("{0}")]
    NotFound(String),
    /// The input matches more than one thing (409).
    #[error("{0}")]
    Conflict(String),
    /// The store is unreachable or the view is still loading (503).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (500).
    #[error(transparent)]
    Unexpected(anyhow::Error),
}

impl From<anyhow::Error> for RegistryError {
    /// A store error keeps its meaning through the context added on the way (an unreachable
    /// store is a 503 however deep it was met); anything else is unexpected.
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<mongodb::error::Error>() {
            Ok(store) => store.into(),
            Err(e) => RegistryError::Unexpected(e),
        }
    }
}

impl From<mongodb::error::Error> for RegistryError {
    fn from(e: mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        match *e.kind {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. } => {
                tracing::warn!(error = %e, "store unavailable");
                RegistryError::Unavailable(
                    "the registry's store is unavailable; try again shortly".into(),
                )
            }
            _ => RegistryError::Unexpected(anyhow::anyhow!("store: {e}")),
        }
    }
}

impl From<RegistryError> for ServiceFailure {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::BadRequest(m) => ServiceFailure::new(ErrorCode::BadRequest, m),
            RegistryError::Unauthorized(m) => ServiceFailure::new(ErrorCode::Unauthorized, m),
            RegistryError::NotFound(m) => ServiceFailure::new(ErrorCode::NotFound, m),
            RegistryError::Conflict(m) => ServiceFailure::new(ErrorCode::Conflict, m),
            RegistryError::Unavailable(m) => ServiceFailure::new(ErrorCode::Unavailable, m),
            RegistryError::Unexpected(e) => {
                tracing::error!(error = format!("{e:#}"), "unexpected registry failure");
                ServiceFailure::new(ErrorCode::Internal, "internal error in the registry")
            }
        }
    }
}
