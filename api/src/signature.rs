//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), as the gateway's
//! Standard Webhooks library makes them: `webhook-signature` holds space-separated `v1,<base64>`
//! entries, each an HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{raw body}` keyed with the
//! decoded secret. One valid entry suffices (secret rotation); the timestamp must be within five
//! minutes of now. Comparison is constant-time (`hmac`'s `verify_slice`).

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far `webhook-timestamp` may be from now, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;
/// Signatures of one header tried at most: a header of thousands must not cost an HMAC each.
pub const MAX_SIGNATURES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("webhook-timestamp is not Unix seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes from now")]
    OutsideTolerance,
    #[error("no valid v1 signature")]
    NoValidSignature,
}

/// The three Standard Webhooks headers, as the webhook operation received them.
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

pub fn verify(
    key: &[u8],
    headers: &SignedHeaders<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let id = headers.id.ok_or(SignatureError::Missing("webhook-id"))?;
    let ts_text = headers
        .timestamp
        .ok_or(SignatureError::Missing("webhook-timestamp"))?;
    let signatures = headers
        .signature
        .ok_or(SignatureError::Missing("webhook-signature"))?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    // `abs_diff`: any timestamp, `i64::MIN` included, is a refusal, never an overflow.
    if now_unix.abs_diff(ts) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::OutsideTolerance);
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).map_err(|_| SignatureError::NoValidSignature)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts_text.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    let valid = signatures
        .split(' ')
        .filter(|entry| !entry.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        // Every candidate is checked, in constant time each.
        .fold(false, |found, sig| {
            mac.clone().verify_slice(&sig).is_ok() | found
        });
    if valid {
        Ok(())
    } else {
        Err(SignatureError::NoValidSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn accepts_a_valid_signature_among_several() {
        let key = b"0123456789abcdef";
        let now = 1_800_000_000;
        let good = sign(key, "msg_1", now, b"{}");
        let rotated = format!("v1,AAAA {} v2,whatever", good);
        assert_eq!(
            verify(key, &headers("msg_1", "1800000000", &rotated), b"{}", now),
            Ok(())
        );
    }

    #[test]
    fn any_timestamp_is_a_refusal_never_an_overflow() {
        let key = b"0123456789abcdef";
        for ts in [i64::MIN, i64::MAX, -1, 0] {
            let ts = ts.to_string();
            let got = verify(key, &headers("msg_1", &ts, "v1,AAAA"), b"{}", 1_800_000_000);
            assert_eq!(got, Err(SignatureError::OutsideTolerance), "{ts}");
        }
        let got = verify(
            key,
            &headers("msg_1", "99999999999999999999", "v1,AAAA"),
            b"{}",
            1,
        );
        assert_eq!(got, Err(SignatureError::BadTimestamp));
    }

    #[test]
    fn at_most_sixteen_signatures_are_tried() {
        let key = b"0123456789abcdef";
        let now = 1_800_000_000;
        let good = sign(key, "msg_1", now, b"{}");
        let ts = now.to_string();
        let junk = vec!["v1,AAAA"; MAX_SIGNATURES - 1].join(" ");
        let sixteenth = format!("{junk} {good}");
        assert_eq!(
            verify(key, &headers("msg_1", &ts, &sixteenth), b"{}", now),
            Ok(())
        );
        let seventeenth = format!("{junk} v1,AAAA {good}");
        assert_eq!(
            verify(key, &headers("msg_1", &ts, &seventeenth), b"{}", now),
            Err(SignatureError::NoValidSignature)
        );
    }

    #[test]
    fn rejects_tampering_staleness_and_missing_headers() {
        let key = b"0123456789abcdef";
        let now = 1_800_000_000;
        let good = sign(key, "msg_1", now, b"{}");
        let ts = now.to_string();
        assert_eq!(
            verify(key, &headers("msg_1", &ts, &good), b"{ }", now),
            Err(SignatureError::NoValidSignature)
        );
        assert_eq!(
            verify(key, &headers("msg_2", &ts, &good), b"{}", now),
            Err(SignatureError::NoValidSignature)
        );
        assert_eq!(
            verify(
                key,
                &headers("msg_1", &ts, &good),
                b"{}",
                now + TOLERANCE_SECS + 1
            ),
            Err(SignatureError::OutsideTolerance)
        );
        assert_eq!(
            verify(key, &headers("msg_1", "soon", &good), b"{}", now),
            Err(SignatureError::BadTimestamp)
        );
        let missing = SignedHeaders {
            id: None,
            timestamp: Some("1"),
            signature: Some("v1,x"),
        };
        assert_eq!(
            verify(key, &missing, b"{}", now),
            Err(SignatureError::Missing("webhook-id"))
        );
    }
}
