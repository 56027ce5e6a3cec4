//! Who may read or act on a hold and the order made from it.
//!
//! A hold belongs to whoever made it. With `BUYER_AUTH=none` that is whoever holds its
//! [`ClientSecret`]: the buyer is given the secret once, in the answer that made the hold, and
//! the database keeps only its SHA-256 ([`SecretHash`]). With `BUYER_AUTH=jwt` it is the buyer
//! named by the token (`holds.buyer_id`). An order inherits its hold's owner.
//!
//! A caller who does not own a row is answered exactly as if the row did not exist, so ids
//! cannot be probed; secrets are compared in constant time.

use std::fmt;

use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::types::BuyerId;

/// Random bytes in a secret: 128 bits, as the contract asks.
const SECRET_BYTES: usize = 16;

/// The secret a buyer uses to reach a hold and its order (`Client-Secret`), in the clear. Made
/// once, answered once; only its [`SecretHash`] is stored. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret {
    text: String,
    /// Made with the secret, outside any transaction: a batch of holds stores its hashes
    /// under the product lock.
    hash: SecretHash,
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(***)")
    }
}

impl ClientSecret {
    /// A fresh secret from the thread's cryptographic generator (ChaCha, seeded by the OS).
    pub fn random() -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self::encode(&bytes)
    }

    /// The secret of the hold a keyed request makes: derived from its `Idempotency-Key`, so a
    /// retry with the same key is answered the same secret without the secret being stored.
    /// Anyone who knows a key can have its answer replayed anyway; the secret is as hard to
    /// guess as the key.
    pub fn for_key(key: &str) -> Self {
        // HMAC with the key as the HMAC key: a fixed label in, 16 bytes out.
        let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
            Ok(mac) => mac,
            // HMAC takes a key of any length; unreachable, but never a secret anyone could guess.
            Err(_) => return Self::random(),
        };
        mac.update(b"flash-sale hold client_secret v1");
        let out = mac.finalize().into_bytes();
        Self::encode(&out[..SECRET_BYTES])
    }

    /// The secret of the ticket a keyed join makes: derived from the product, the buyer and the
    /// join's `Idempotency-Key`, so a retry of the join with that key is answered it again.
    pub fn for_ticket(product_id: i64, buyer: &str, key: &str) -> Self {
        let mut mac = match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => return Self::random(),
        };
        mac.update(b"flash-sale ticket client_secret v1\0");
        mac.update(&product_id.to_be_bytes());
        mac.update(buyer.as_bytes());
        let out = mac.finalize().into_bytes();
        Self::encode(&out[..SECRET_BYTES])
    }

    fn encode(bytes: &[u8]) -> Self {
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hash = SecretHash::of(&text);
        Self { text, hash }
    }

    /// The text given to the buyer.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// What is stored instead of the secret.
    pub fn hash(&self) -> &SecretHash {
        &self.hash
    }
}

/// SHA-256 of a [`ClientSecret`], as stored (64 lowercase hex digits). The secret has 128
/// random bits, so a fast hash is enough: nothing short of the secret finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(String);

impl SecretHash {
    fn of(secret: &str) -> Self {
        Self(hex(&Sha256::digest(secret.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// What a caller brings to reach a hold or an order.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// `BUYER_AUTH=none`: the `Client-Secret` header, if one was sent.
    Secret(Option<&'a str>),
    /// `BUYER_AUTH=jwt`: the buyer the token names.
    Buyer(&'a BuyerId),
    /// The payment gateway (signed webhooks) and the worker: every row.
    Service,
}

impl Access<'_> {
    /// Whether this caller owns a row whose owner columns are these. A row without a stored
    /// hash (made before secrets existed) has no anonymous owner.
    pub fn owns(&self, secret_hash: Option<&str>, buyer_id: Option<&str>) -> bool {
        match self {
            Access::Service => true,
            Access::Buyer(buyer) => buyer_id == Some(buyer.as_str()),
            Access::Secret(presented) => {
                // Always one hash and one comparison of equal length, whatever is missing, so
                // the time taken says nothing about which part was wrong.
                let hash = SecretHash::of(presented.unwrap_or_default());
                let stored = secret_hash.unwrap_or(NO_HASH);
                let equal: bool = hash.0.as_bytes().ct_eq(stored.as_bytes()).into();
                // An empty secret never matches, even a stored hash of "".
                equal && presented.is_some_and(|s| !s.is_empty())
            }
        }
    }
}

/// Compared against when a row has no hash: 64 characters no SHA-256 hex ever equals.
const NO_HASH: &str = "----------------------------------------------------------------";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_128_random_bits_url_safe() {
        let a = ClientSecret::random();
        let b = ClientSecret::random();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 22, "16 bytes in unpadded base64url");
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_eq!(format!("{a:?}"), "ClientSecret(***)");
    }

    #[test]
    fn a_keyed_secret_is_the_same_for_the_same_key_only() {
        assert_eq!(ClientSecret::for_key("k-1"), ClientSecret::for_key("k-1"));
        assert_ne!(ClientSecret::for_key("k-1"), ClientSecret::for_key("k-2"));
        assert_eq!(ClientSecret::for_key("k-1").expose().len(), 22);
        let ticket = ClientSecret::for_ticket(1, "ann", "k-1");
        assert_eq!(ticket, ClientSecret::for_ticket(1, "ann", "k-1"));
        assert_ne!(ticket, ClientSecret::for_ticket(2, "ann", "k-1"));
        assert_ne!(ticket, ClientSecret::for_ticket(1, "bob", "k-1"));
        assert_ne!(
            ticket,
            ClientSecret::for_key("k-1"),
            "a hold's and a ticket's differ"
        );
    }

    #[test]
    fn only_the_right_secret_or_buyer_owns_a_row() {
        let secret = ClientSecret::random();
        let hash = secret.hash();
        let stored = Some(hash.as_str());
        assert!(Access::Secret(Some(secret.expose())).owns(stored, None));
        assert!(!Access::Secret(Some("wrong")).owns(stored, None));
        assert!(!Access::Secret(None).owns(stored, None));
        assert!(
            !Access::Secret(Some(secret.expose())).owns(None, None),
            "legacy row"
        );
        let empty = SecretHash::of("");
        assert!(!Access::Secret(Some("")).owns(Some(empty.as_str()), None));
        assert!(!Access::Secret(None).owns(Some(empty.as_str()), None));
        let ann = BuyerId::parse("ann").expect("a buyer");
        let bob = BuyerId::parse("bob").expect("a buyer");
        assert!(Access::Buyer(&ann).owns(stored, Some("ann")));
        assert!(!Access::Buyer(&bob).owns(stored, Some("ann")));
        assert!(!Access::Buyer(&ann).owns(stored, None));
        assert!(Access::Service.owns(None, None));
    }
}
