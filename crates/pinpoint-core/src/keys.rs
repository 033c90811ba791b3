//! API-key format and hashing. A key is `pp_<id>_<secret>`: `id` is 16 lower-case hex
//! digits (public, used for lookup), `secret` is 43 base64url characters (256 random
//! bits). Only `HMAC-SHA256(pepper, secret)` is stored, and hashes are compared in
//! constant time. Generation (randomness) and storage live in the store crate.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// What every Pinpoint key starts with.
pub const PREFIX: &str = "pp_";
/// Length of the public key id in hex digits.
pub const ID_LEN: usize = 16;
/// Length of the secret part in base64url characters (32 bytes, unpadded).
pub const SECRET_LEN: usize = 43;

/// A presented key split into its parts. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

impl std::fmt::Debug for PresentedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PresentedKey {{ id: {}, secret: <redacted> }}", self.id)
    }
}

/// Splits `pp_<id>_<secret>`; `None` when the text is not shaped like a key.
pub fn parse(key: &str) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    let id_ok = id.bytes().all(|b| CHARS[usize::from(b)] & ID_CHAR != 0);
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| CHARS[usize::from(b)] & SECRET_CHAR != 0);
    (id_ok && secret_ok).then_some(PresentedKey { id, secret })
}

/// Character classes of key text, one table lookup per byte on the hot path.
const ID_CHAR: u8 = 1;
const SECRET_CHAR: u8 = 2;
static CHARS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_digit() || matches!(c, b'a'..=b'f') {
            table[b] |= ID_CHAR;
        }
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            table[b] |= SECRET_CHAR;
        }
        b += 1;
    }
    table
};

/// Formats a key from its parts.
pub fn format(id: &str, secret: &str) -> String {
    format!("pp_{id}_{secret}")
}

/// A pepper-keyed HMAC, prepared once: each hash or verification then costs two SHA-256
/// compressions fewer than keying the HMAC again.
#[derive(Clone)]
pub struct SecretHasher {
    keyed: Hmac<Sha256>,
}

impl SecretHasher {
    pub fn new(pepper: &[u8]) -> Self {
        let keyed = match Hmac::<Sha256>::new_from_slice(pepper) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        };
        SecretHasher { keyed }
    }

    /// The stored hash of a secret.
    pub fn hash(&self, secret: &str) -> [u8; 32] {
        let mut mac = self.keyed.clone();
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Constant-time comparison of a presented secret with a stored hash.
    pub fn verify(&self, secret: &str, stored_hash: &[u8]) -> bool {
        let computed = self.hash(secret);
        // `subtle`: equal-length slices compared without a data-dependent branch.
        stored_hash.len() == computed.len() && bool::from(computed.as_slice().ct_eq(stored_hash))
    }
}

/// The stored hash of a secret (one-off; keep a [`SecretHasher`] for repeated use).
pub fn hash_secret(pepper: &[u8], secret: &str) -> [u8; 32] {
    SecretHasher::new(pepper).hash(secret)
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn verify_secret(pepper: &[u8], secret: &str, stored_hash: &[u8]) -> bool {
    SecretHasher::new(pepper).verify(secret, stored_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";

    #[test]
    fn parses_well_formed_keys_only() {
        let key = format("0123456789abcdef", SECRET);
        let p = parse(&key).unwrap();
        assert_eq!(p.id, "0123456789abcdef");
        assert_eq!(p.secret, SECRET);
        assert!(!format!("{p:?}").contains(SECRET));
        assert!(parse("pp_0123").is_none());
        assert!(parse(&key[..key.len() - 1]).is_none());
        assert!(parse(&key.replace("pp_", "px_")).is_none());
        assert!(parse(&format("0123456789ABCDEF", SECRET)).is_none());
        assert!(parse("pp_é").is_none());
    }

    #[test]
    fn hashes_are_keyed_and_verified() {
        let h = hash_secret(b"pepper", SECRET);
        assert!(verify_secret(b"pepper", SECRET, &h));
        assert!(!verify_secret(b"other", SECRET, &h));
        assert!(!verify_secret(b"pepper", "x", &h));
        assert!(!verify_secret(b"pepper", SECRET, &h[..31]));
        let hasher = SecretHasher::new(b"pepper");
        assert_eq!(hasher.hash(SECRET), h);
        assert!(hasher.verify(SECRET, &h) && !hasher.verify("x", &h));
    }

    #[test]
    fn a_difference_in_any_bit_of_a_hash_is_seen() {
        let h = hash_secret(b"pepper", SECRET);
        assert!(verify_secret(b"pepper", SECRET, &h));
        for byte in 0..32 {
            for bit in 0..8 {
                let mut other = h;
                other[byte] ^= 1 << bit;
                assert!(!verify_secret(b"pepper", SECRET, &other), "byte {byte} bit {bit}");
            }
        }
        assert!(
            !verify_secret(b"pepper", SECRET, &h[..31]),
            "a short hash never matches"
        );
    }
}
