//! Bearer tokens (API tokens of admins and tenants, one-time join tokens):
//! random secrets of which only a SHA-256 hash is stored.

use sha2::{Digest, Sha256};

/// What every token starts with, so a leaked one is recognisable.
pub const PREFIX: &str = "bst_";

/// A new random token (256 bits, hex).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut s = String::with_capacity(PREFIX.len() + 64);
    s.push_str(PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The stored form of `token`: hex SHA-256. Looking a token up by its hash
/// keeps the comparison off the secret itself.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A short, non-secret name for a token in listings and logs: the first 8
/// hex digits of its hash.
pub fn short_id(hash: &str) -> &str {
    &hash[..hash.len().min(8)]
}

/// Whether `s` has the shape of a token (checked before any lookup).
pub fn well_formed(s: &str) -> bool {
    s.strip_prefix(PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_well_formed_and_hashed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(well_formed(&a) && well_formed(&b));
        assert_eq!(hash(&a), hash(&format!("{a}\n")));
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[PREFIX.len()..]));
        for bad in ["", "bst_", "abc", &a[1..], &format!("{a}0")] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
