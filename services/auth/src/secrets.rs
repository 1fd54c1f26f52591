//! Making and checking secrets: session ids, API tokens, generated passwords, SHA-256 digests of
//! what we store, and argon2id password hashes. Nothing here logs.

use std::sync::OnceLock;

use anyhow::Context as _;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every API token starts with this, so leaked tokens are easy to recognise (secret scanners).
pub const API_TOKEN_PREFIX: &str = "gnt_";

/// `n` random bytes from the OS generator as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new session id: 256 random bits as 64 hex characters.
pub fn new_session_id() -> String {
    random_hex(32)
}

/// A new API token: `gnt_` and 256 random bits as 64 hex characters.
pub fn new_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_hex(32))
}

/// A generated password for the first admin: 24 characters (about 140 random bits) of letters and
/// digits without look-alikes, so it survives copy and paste from a terminal.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// What we store instead of a session id or token: its SHA-256 as lowercase hex. The secrets are
/// 256 random bits, so a fast hash is enough (no dictionary to attack).
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// How a token is listed afterwards: its first 8 characters and `...`.
pub fn display_prefix(secret: &str) -> String {
    let head: String = secret.chars().take(8).collect();
    format!("{head}...")
}

/// Compare two secrets (or digests) in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Hash a password with argon2id (default parameters: 19 MiB, 2 passes) and a random salt.
/// CPU-heavy: call from a blocking thread.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("hashing a password")?;
    Ok(hash.to_string())
}

/// Check a password against a stored PHC string. A malformed stored hash never matches.
/// CPU-heavy: call from a blocking thread.
pub fn verify_password(password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spend as long as a real check when the user does not exist, so timing does not reveal which
/// usernames exist.
pub fn verify_against_nothing(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default());
    let _ = verify_password(password, stored);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_and_tokens_carry_256_random_bits() {
        let a = new_session_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_session_id());
        let t = new_api_token();
        assert!(t.starts_with("gnt_"));
        assert_eq!(t.len(), 4 + 64);
    }

    #[test]
    fn the_digest_is_sha256_hex() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_listed_prefix_shows_eight_characters() {
        assert_eq!(display_prefix("gnt_0123456789"), "gnt_0123...");
        assert_eq!(display_prefix("abc"), "abc...");
    }

    #[test]
    fn constant_time_comparison_agrees_with_equality() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }

    #[test]
    fn a_hashed_password_verifies_and_a_wrong_one_does_not() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("correct horse"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let a = generate_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, generate_password());
    }
}
