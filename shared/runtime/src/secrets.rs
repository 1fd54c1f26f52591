//! Making and checking secrets, the same way in every service: random secrets (session ids, API
//! tokens, cluster tokens, generated passwords), the SHA-256 digests stored in their place, the
//! listed form that shows only their head, constant-time comparison, and argon2id password
//! hashes. Nothing here logs.

use std::sync::OnceLock;

use anyhow::Context as _;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
pub use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How many characters of a secret its listed form shows.
pub const HEAD_LEN: usize = 8;

/// `n` random bytes from the OS generator as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new secret: `prefix` (so a leaked one is easy to recognise; may be empty) and 256 random
/// bits as 64 lowercase hex characters.
pub fn generate(prefix: &str) -> SecretString {
    SecretString::from(format!("{prefix}{}", random_hex(32)))
}

/// A generated password: 24 characters (about 140 random bits) of letters and digits without
/// look-alikes, so it survives copy and paste from a terminal.
pub fn generate_password() -> SecretString {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let password: String = bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    SecretString::from(password)
}

/// What is stored instead of a generated secret: its SHA-256 as lowercase hex. The secrets are
/// 256 random bits, so a fast hash is enough (no dictionary to attack).
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The first [`HEAD_LEN`] characters of a secret, kept so that it can be listed.
pub fn head(secret: &str) -> String {
    secret.chars().take(HEAD_LEN).collect()
}

/// How a secret is listed afterwards: its head and `...`.
pub fn listed(head: &str) -> String {
    format!("{head}...")
}

/// Compare two secrets (or digests) in constant time.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Hash a password with argon2id (default parameters: 19 MiB, 2 passes) and a random salt, as a
/// PHC string. CPU-heavy: call from a blocking thread.
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

/// Spend as long as a real check when there is nothing to check against (an unknown user), so
/// that timing does not reveal which users exist.
pub fn verify_against_nothing(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default());
    let _ = verify_password(password, stored);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_carry_their_prefix_and_256_random_bits() {
        let a = generate("");
        let a = a.expose_secret();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, generate("").expose_secret());
        let t = generate("gnt_");
        assert!(t.expose_secret().starts_with("gnt_"));
        assert_eq!(t.expose_secret().len(), 4 + 64);
    }

    #[test]
    fn the_digest_is_sha256_hex() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_listed_secret_shows_its_first_eight_characters() {
        assert_eq!(head("gnt_0123456789"), "gnt_0123");
        assert_eq!(listed(&head("gnt_0123456789")), "gnt_0123...");
        assert_eq!(listed(&head("abc")), "abc...");
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
        assert_eq!(a.expose_secret().len(), 24);
        assert_ne!(a.expose_secret(), generate_password().expose_secret());
    }
}
