//! Values parsed once at the edge into types that cannot be invalid. Handlers take these, never
//! raw strings, so the rules live here and nowhere else.

use crate::error::AuthError;

/// A login name: 3–64 characters of ASCII letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Check the rules and keep the name as given.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let len = s.chars().count();
        if !(3..=64).contains(&len) {
            return Err(AuthError::BadRequest(
                "username must be 3 to 64 characters long".into(),
            ));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(AuthError::BadRequest(
                "username may contain only letters, digits, '.', '_' and '-'".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// An e-mail address: one `@` with something on either side, no whitespace, at most 254
/// characters. Stored as given, minus surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Check the rules.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let s = s.trim();
        let bad = || AuthError::BadRequest("email must look like name@example.com".into());
        if s.is_empty() || s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let mut parts = s.split('@');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(local), Some(domain), None) if !local.is_empty() && !domain.is_empty() => {
                Ok(Self(s.to_owned()))
            }
            _ => Err(bad()),
        }
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A new password: at least 8 characters, at most 1024 bytes (hashing is deliberately slow; an
/// unbounded input would make it slower still). Never logged: `Debug` is redacted.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Check the rules.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        if s.chars().count() < 8 {
            return Err(AuthError::BadRequest(
                "password must be at least 8 characters long".into(),
            ));
        }
        if s.len() > 1024 {
            return Err(AuthError::BadRequest(
                "password must be at most 1024 bytes long".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The password itself, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A name for an API token: 1–100 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    /// Check the rules; surrounding whitespace is dropped.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let s = s.trim();
        let len = s.chars().count();
        if !(1..=100).contains(&len) {
            return Err(AuthError::BadRequest(
                "token name must be 1 to 100 characters long".into(),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(AuthError::BadRequest(
                "token name must not contain control characters".into(),
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

impl AsRef<str> for TokenName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Prefixes of ledger keys the service makes itself; callers may not use them.
pub const RESERVED_KEY_PREFIXES: [&str; 2] = ["refund:", "adjust:"];

/// An idempotency key for a credit change: 1–200 printable characters, not starting with a
/// reserved prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Check the rules of a key a caller chose.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        let len = s.chars().count();
        if !(1..=200).contains(&len) || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(AuthError::BadRequest(
                "key must be 1 to 200 characters without whitespace or control characters".into(),
            ));
        }
        if RESERVED_KEY_PREFIXES.iter().any(|p| s.starts_with(p)) {
            return Err(AuthError::BadRequest(format!(
                "key must not start with {}",
                RESERVED_KEY_PREFIXES.join(" or ")
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// The key of the refund of the charge with this key.
    pub fn refund(&self) -> LedgerKey {
        LedgerKey(format!("refund:{}", self.0))
    }

    /// As a ledger key.
    pub fn ledger(&self) -> LedgerKey {
        LedgerKey(self.0.clone())
    }
}

/// The key of one ledger entry: a caller's key, `refund:<key>`, or `adjust:<random>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey(String);

impl LedgerKey {
    /// A fresh key for an admin's balance adjustment.
    pub fn adjustment() -> Self {
        Self(format!(
            "adjust:{}",
            gantry_runtime::secrets::random_hex(16)
        ))
    }
}

impl AsRef<str> for LedgerKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_3_to_64_allowed_characters_parse() {
        for ok in ["abc", "a.b_c-d", "User123", &"x".repeat(64)] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn usernames_too_short_too_long_or_with_other_characters_are_refused() {
        for bad in [
            "",
            "ab",
            &"x".repeat(65),
            "a b",
            "ab/c",
            "émile",
            "a@b",
            "abc\n",
        ] {
            assert!(
                matches!(Username::parse(bad), Err(AuthError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_email_needs_exactly_one_at_with_text_on_both_sides() {
        assert_eq!(Email::parse(" a@b.c ").unwrap().as_ref(), "a@b.c");
        for bad in ["", "ab", "@b", "a@", "a@b@c", "a b@c", "a@b\tc"] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_password_needs_eight_characters_and_never_shows_in_debug() {
        assert!(Password::parse("1234567").is_err());
        let p = Password::parse("12345678").unwrap();
        assert_eq!(p.expose(), "12345678");
        assert!(!format!("{p:?}").contains("1234"));
        assert!(Password::parse(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn token_names_are_trimmed_and_bounded() {
        assert_eq!(TokenName::parse("  ci  ").unwrap().as_ref(), "ci");
        assert!(TokenName::parse("   ").is_err());
        assert!(TokenName::parse(&"x".repeat(101)).is_err());
        assert!(TokenName::parse("a\u{7}b").is_err());
    }

    #[test]
    fn caller_keys_cannot_use_the_reserved_prefixes() {
        assert!(IdempotencyKey::parse("job-123").is_ok());
        assert!(IdempotencyKey::parse("refund:job-123").is_err());
        assert!(IdempotencyKey::parse("adjust:x").is_err());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert_eq!(
            IdempotencyKey::parse("k").unwrap().refund().as_ref(),
            "refund:k"
        );
    }
}
