//! `Idempotency-Key` on `POST /api/holds` and `POST /api/orders` (IETF httpapi draft): the
//! HTTP side of `entity::idempotency`. A retry with the same key and body gets the stored
//! status and body again (with `Idempotent-Replayed: true`), never a second effect.
//!
//! This layer answers what can be answered before the request runs — a finished key is
//! replayed, another body is a mismatch, a key still running in this process is "in use" — and
//! otherwise hands the key to the handler ([`KeyedRequest`] in the request's data), which passes
//! it into the effect's transaction, where the key and its answer are written with the effect.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use entity::{
    coalesce::KeyLookups,
    idempotency::{KeyedRequest, Lookup, StoredResponse},
};
use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode},
};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ProblemCode};

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

/// Keys whose requests are running in this process.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<(&'static str, String)>>>);

/// Holds a key in [`InFlight`] until the request ends (or its client goes away).
struct Running {
    set: InFlight,
    id: (&'static str, String),
}

impl InFlight {
    fn start(&self, scope: &'static str, key: &str) -> Option<Running> {
        let id = (scope, key.to_owned());
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id.clone()).then(|| Running {
            set: self.clone(),
            id,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut set = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        set.remove(&self.id);
    }
}

pub async fn idempotent<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    lookups: KeyLookups,
    in_flight: InFlight,
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
        return Ok(ApiError::field(
            ProblemCode::MalformedRequest,
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters, bare or in double quotes",
        )
        .into_response());
    };
    let body = req.take_body().into_bytes().await?;
    let keyed = KeyedRequest {
        scope,
        key,
        fingerprint: fingerprint(&body),
    };
    req.set_body(body);
    match lookups.lookup(keyed.clone()).await {
        Ok(Lookup::Replay(stored)) => return Ok(replay(stored, scope)),
        Ok(Lookup::Mismatch) => {
            return Ok(ApiError::from(entity::StockError::IdempotencyKeyMismatch).into_response());
        }
        Ok(Lookup::Absent) => {}
        Err(e) => return Ok(ApiError::from(e).into_response()),
    }
    let Some(_running) = in_flight.start(scope, &keyed.key) else {
        return Ok(ApiError::from(entity::StockError::IdempotencyKeyInUse).into_response());
    };
    req.set_data(keyed);
    ep.call(req).await.map(IntoResponse::into_response)
}

/// How an answer is written down for replay: exactly the bytes and type the handler sends.
/// A 5xx is not written down: nothing happened that a retry must not repeat.
pub fn stored<T: poem_openapi::types::ToJSON>(
    answer: Result<(StatusCode, T), ApiError>,
) -> Option<StoredResponse> {
    let (status, content_type, body) = match answer {
        Ok((status, value)) => (status, crate::types::JSON, value.to_json_string()),
        Err(e) => {
            let status = e.status();
            let problem = e.into_problem();
            use poem_openapi::types::ToJSON;
            (status, crate::error::PROBLEM_JSON, problem.to_json_string())
        }
    };
    (!status.is_server_error()).then(|| StoredResponse {
        status: status.as_u16(),
        content_type: content_type.to_owned(),
        body,
    })
}

/// SHA-256 of the body, JSON canonicalized (key order and spacing do not matter).
fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| body.to_vec());
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(&canonical) {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

fn replay(stored: StoredResponse, scope: &str) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    // A replayed 201 says where the resource is, as the first answer did.
    let location = (status == StatusCode::CREATED)
        .then(|| serde_json::from_str::<serde_json::Value>(&stored.body).ok())
        .flatten()
        .and_then(|body| match scope {
            "holds" => body["hold_id"].as_i64().map(crate::locations::hold),
            "orders" => body["order_id"].as_i64().map(crate::locations::order),
            _ => None,
        })
        .and_then(|path| HeaderValue::from_str(&path).ok());
    let mut resp = Response::builder()
        .status(status)
        .content_type(stored.content_type)
        .body(stored.body);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    if let Some(location) = location {
        resp.headers_mut()
            .insert(poem::http::header::LOCATION, location);
    }
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
