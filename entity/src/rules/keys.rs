//! What an `Idempotency-Key` stands for: a key belongs to its owner (two buyers' equal keys are
//! two keys) and to one request (its fingerprint). How keys are stored and replayed is
//! `crate::operations::idempotency`.

use sha2::{Digest, Sha256};

/// A request that came with an `Idempotency-Key`: the key as stored, and what the request was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// Which operation the key belongs to (`holds`, `orders`).
    pub scope: &'static str,
    /// The key as it is stored and compared: see [`KeyClaim::new`].
    pub key: String,
    /// SHA-256 (hex) of the canonical request body.
    pub fingerprint: String,
}

impl KeyClaim {
    /// A request with the client's `key`, sent by `owner` (the token's buyer; empty for an
    /// anonymous buyer). Keys are stored as SHA-256 (hex) of the owner and the key: two buyers'
    /// equal keys are two keys, and the database never holds a key a secret is derived from
    /// (see [`super::ownership::ClientSecret::for_key`]).
    pub fn new(scope: &'static str, owner: &str, key: &str, fingerprint: String) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(owner.as_bytes());
        hasher.update([0]);
        hasher.update(key.as_bytes());
        Self {
            scope,
            key: hex(hasher),
            fingerprint,
        }
    }
}

/// The fingerprint of a request: SHA-256, in lowercase hex, of `value` as compact JSON with
/// its members in key order, so the same fields and values give the same fingerprint however
/// the client spaced and ordered them. Streamed into the hasher, not written out first (it
/// runs for every keyed request). Stored fingerprints depend on these exact bytes.
pub fn fingerprint_json(value: &serde_json::Value) -> String {
    let mut hasher = Sha256::new();
    match serde_json::to_writer(&mut hasher, value) {
        Ok(()) => hex(hasher),
        // Writing into a hasher cannot fail; if it ever did, hash the text instead.
        Err(_) => fingerprint_bytes(value.to_string().as_bytes()),
    }
}

/// SHA-256 of `bytes` in lowercase hex: the fingerprint of a body that is not JSON.
pub fn fingerprint_bytes(bytes: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(bytes);
    hex(hasher)
}

fn hex(hasher: Sha256) -> String {
    super::ownership::hex(&hasher.finalize())
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    /// Stored fingerprints (keys, webhook events) keep matching across versions: the SHA-256
    /// of the compact JSON with its members in key order.
    #[test]
    fn fingerprints_are_the_hash_of_compact_ordered_json() {
        let reordered = serde_json::json!({"b": 2, "a": 1});
        assert_eq!(
            fingerprint_json(&reordered),
            "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
        );
        assert_eq!(
            fingerprint_json(&reordered),
            fingerprint_bytes(br#"{"a":1,"b":2}"#)
        );
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// Stored keys keep matching across versions (migration 8 rewrote the older ones the same
    /// way): SHA-256 of the owner, a zero byte and the key.
    #[test]
    fn keys_are_stored_as_digests_of_owner_and_key() {
        let anonymous = KeyClaim::new("holds", "", "k-1", String::new());
        // printf '\0k-1' | sha256sum
        assert_eq!(
            anonymous.key,
            "87f271b944dd193511c623d5aa5280099d7550f4375d7a8ee7a4cdcf14403469"
        );
        let ann = KeyClaim::new("holds", "ann", "k-1", String::new());
        let bob = KeyClaim::new("holds", "bob", "k-1", String::new());
        assert_ne!(ann.key, bob.key, "two buyers' equal keys are two keys");
        assert_ne!(ann.key, anonymous.key);
    }
}
