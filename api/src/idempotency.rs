//! `Idempotency-Key` on `POST /api/holds` and `POST /api/orders` (IETF httpapi draft): the
//! HTTP side of `entity::idempotency`. A retry with the same key and body gets the stored
//! status and body again (with `Idempotent-Replayed: true`), never a second effect.

use std::sync::Arc;

use entity::{
    Db,
    idempotency::{self, Claim, StoredResponse},
};
use poem::{
    Body, Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, problem_response};

pub const HEADER: &str = "idempotency-key";

/// The operations that honour the header, and the scope their keys live in.
fn scope(req: &Request) -> Option<&'static str> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/api/holds") => Some("holds"),
        (&Method::POST, "/api/orders") => Some("orders"),
        _ => None,
    }
}

/// 1 to 255 printable ASCII characters, bare or as the draft's quoted string.
pub fn parse_key(raw: &str) -> Option<&str> {
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw);
    ((1..=255).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .then_some(key)
}

pub async fn idempotent<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    db: Db,
) -> poem::Result<Response> {
    let Some(scope) = scope(&req) else {
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    let Some(raw) = req
        .headers()
        .get(HEADER)
        .map(|v| v.to_str().unwrap_or("\u{0}").to_owned())
    else {
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    let Some(key) = parse_key(&raw).map(str::to_owned) else {
        return Ok(problem_response(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            "Idempotency-Key must be 1 to 255 printable characters",
        ));
    };
    let body = req.take_body().into_bytes().await?;
    let fingerprint = fingerprint(&body);
    req.set_body(body);
    let id = match idempotency::claim(&db, scope, &key, &fingerprint).await {
        Ok(Claim::Claimed { id }) => id,
        Ok(Claim::Replay(stored)) => return Ok(replay(stored)),
        Ok(Claim::InUse) => {
            return Ok(problem_response(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being processed; retry later",
            ));
        }
        Ok(Claim::Mismatch) => {
            return Ok(problem_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_mismatch",
                "this Idempotency-Key was used with a different request body",
            ));
        }
        Err(e) => return Ok(ApiError::from(e).into_response()),
    };
    let resp = match ep.call(req).await {
        Ok(r) => r.into_response(),
        Err(e) => crate::server::error_response(e),
    };
    let (parts, body) = resp.into_parts();
    let bytes = body.into_bytes().await.unwrap_or_default();
    let outcome = if parts.status.is_server_error() {
        // Nothing worth repeating: let the retry run afresh.
        idempotency::release(&db, id).await
    } else {
        let stored = StoredResponse {
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_owned(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        idempotency::complete(&db, id, &stored).await
    };
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "could not record the Idempotency-Key outcome");
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

/// SHA-256 of the body, JSON canonicalized (key order and spacing do not matter).
fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn replay(stored: StoredResponse) -> Response {
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK))
        .content_type(stored.content_type)
        .body(stored.body);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_bare_or_quoted() {
        assert_eq!(parse_key("abc-1"), Some("abc-1"));
        assert_eq!(parse_key("\"8e03978e-40d5\""), Some("8e03978e-40d5"));
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key("\"\""), None);
        assert_eq!(parse_key(&"k".repeat(256)), None);
        assert_eq!(parse_key("tab\there"), None);
    }

    #[test]
    fn fingerprints_ignore_layout() {
        assert_eq!(
            fingerprint(br#"{"a":1,"b":2}"#),
            fingerprint(b"{ \"b\": 2, \"a\": 1 }")
        );
        assert_ne!(fingerprint(br#"{"a":1}"#), fingerprint(br#"{"a":2}"#));
    }
}
