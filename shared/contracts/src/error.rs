//! Error codes and payloads, on NATS and over HTTP.

use serde::{Deserialize, Serialize};

/// Why a request failed. Each code has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input is malformed or breaks a rule (400).
    BadRequest,
    /// No credential, or one that is wrong, expired or revoked (401).
    Unauthorized,
    /// Not enough credit tokens (402).
    InsufficientTokens,
    /// Authenticated but not allowed (403).
    Forbidden,
    /// No such thing (404).
    NotFound,
    /// The endpoint exists but not with this method (405); `Allow` lists the ones it has.
    MethodNotAllowed,
    /// It exists already, or the state forbids the change (409).
    Conflict,
    /// The body is too large (413).
    PayloadTooLarge,
    /// The body's content type is not accepted (415).
    UnsupportedMediaType,
    /// Well-formed but unusable (422).
    Unprocessable,
    /// Too many attempts (429).
    TooManyRequests,
    /// A bug or an unexpected failure (500).
    Internal,
    /// A dependency is down (503).
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status this code maps to; also what travels in `Nats-Service-Error-Code`.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::InsufficientTokens => 402,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unprocessable => 422,
            Self::TooManyRequests => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// The snake_case name used in payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::InsufficientTokens => "insufficient_tokens",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unprocessable => "unprocessable",
            Self::TooManyRequests => "too_many_requests",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }

    /// Parse the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed service request: a code and a message meant for the end user (never a secret,
/// never a real filesystem path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceFailure {
    /// Why.
    pub code: ErrorCode,
    /// What to tell the user.
    pub message: String,
}

impl ServiceFailure {
    /// A failure with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Decode the `Nats-Service-Error` header text (`<code>: <message>`). An unknown code becomes
    /// [`ErrorCode::Internal`] with the whole text as the message.
    pub fn from_header(text: &str) -> Self {
        match text.split_once(": ") {
            Some((code, message)) => match ErrorCode::parse(code) {
                Some(code) => Self::new(code, message),
                None => Self::new(ErrorCode::Internal, text),
            },
            None => Self::new(ErrorCode::Internal, text),
        }
    }
}

/// The HTTP error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ServiceFailure,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_round_trips() {
        let f = ServiceFailure::new(ErrorCode::InsufficientTokens, "balance is 20: needs 100");
        let back = ServiceFailure::from_header(&f.to_string());
        assert_eq!(back, f);
    }

    #[test]
    fn unknown_code_is_internal() {
        let f = ServiceFailure::from_header("weird: thing");
        assert_eq!(f.code, ErrorCode::Internal);
        assert_eq!(f.message, "weird: thing");
    }

    #[test]
    fn every_code_has_a_distinct_status() {
        use ErrorCode::*;
        let all = [
            BadRequest,
            Unauthorized,
            InsufficientTokens,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            TooManyRequests,
            Internal,
            Unavailable,
        ];
        let mut statuses: Vec<u16> = all.iter().map(|c| c.status()).collect();
        statuses.sort();
        statuses.dedup();
        assert_eq!(statuses.len(), all.len());
        for c in all {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
    }
}
