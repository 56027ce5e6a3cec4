//! `Idempotency-Key` on `POST /api/holds` and `POST /api/orders` (IETF httpapi draft): the
//! HTTP side of `entity::idempotency`. A retry with the same key and body gets the stored
//! status and body again (with `Idempotent-Replayed: true`), never a second effect.
//!
//! This layer answers what can be answered before the request runs — a finished key is
//! replayed, another body is a mismatch, a key still running in this process is "in use" — and
//! otherwise lets the request through with its [`KeyCheck`] in the request's data: the key, if
//! any, for the handler to pass into the effect's transaction, where the key and its answer are
//! written with the effect.
//!
//! A coalesced hold's key is not looked up here: its product's batch looks up the keys of all
//! its requests with one statement before it takes the product's lock, so a keyed hold waits in
//! one queue instead of two (measured: a third less of the API's own work on top of an unkeyed
//! hold). A finished key is then answered here, after the handler, from what the batch found;
//! a request answered before any batch saw it (its body refused) has its key looked up then.
//!
//! The layer is attached to its operations by type, as their `transform` ([`keyed`]), never by
//! path: renaming a route cannot turn keys off. And a keyed handler takes `Data<&KeyCheck>`,
//! which only this layer provides, so an operation that lost its layer fails loudly (500)
//! instead of silently ignoring keys.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use entity::{
    holds::HoldView,
    idempotency::{KeyedRequest, Lookup, LookupSlot, Render, StoredResponse},
    ownership::ClientSecret,
};
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response,
    http::{HeaderValue, StatusCode},
};

use crate::{
    AppState,
    buyers::Caller,
    error::{ApiError, ProblemCode},
};

pub const HEADER: &str = "idempotency-key";

/// The scope of `createHold`'s keys (a granted hold keeps its key on its row).
pub const HOLDS: &str = entity::idempotency::HOLDS;
/// The scope of `createOrder`'s keys.
pub const ORDERS: &str = "orders";

/// What the layer let through: the key the handler must honour (none when the request sent
/// none), and, when the layer left the key's look-up to the hold batch, where the batch writes
/// what it found.
#[derive(Debug, Clone, Default)]
pub struct KeyCheck {
    pub request: Option<Arc<KeyedRequest>>,
    pub look_up: Option<LookupSlot>,
    /// An anonymous buyer's keyed hold: its secret, derived from the key (see
    /// [`ClientSecret::for_key`]), so that the first answer and its replays carry the same.
    pub hold_secret: Option<ClientSecret>,
}

/// What a handler answers when its batch found the request's key finished
/// ([`entity::DomainError::AnsweredByKey`]): this layer then answers with what was found
/// instead. Seen by a client only if the layer were missing, as a 500.
pub fn answered_by_key() -> ApiError {
    ApiError::new(
        ProblemCode::Internal,
        "internal error: a replay was not answered by the idempotency layer",
    )
}

/// The layer, as an operation's `transform`: keys of this operation live in `scope`.
/// `render_hold` writes a hold as the operation first answered it: a key found on a hold is
/// replayed through it (`None` for an operation that makes no holds).
pub fn keyed<E: Endpoint + 'static>(
    ep: E,
    scope: &'static str,
    render_hold: Option<Render<HoldView>>,
) -> impl Endpoint<Output = Response> {
    ep.around(move |ep, req| idempotent(ep, req, scope, render_hold))
}

/// 1 to 255 printable ASCII characters, bare or as the draft's quoted string. Trailing spaces
/// are not part of the key: MariaDB and MySQL compare keys with trailing spaces ignored (the
/// key columns' `ascii_bin` pads), SQLite and this process's in-flight set exactly, so `"k "`
/// and `k` are made one key everywhere. (A bare value cannot end in a space: HTTP trims it.)
pub fn parse_key(raw: &str) -> Option<&str> {
    let key = raw
        .strip_prefix('"')
        .and_then(|k| k.strip_suffix('"'))
        .unwrap_or(raw)
        .trim_end_matches(' ');
    ((1..=255).contains(&key.len()) && key.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .then_some(key)
}

/// A running request's key, with its scope: shared by [`InFlight`] and [`Running`], so one
/// copy of the key is made.
type RunningKey = (&'static str, Arc<str>);

/// Keys whose requests are running in this process.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<RunningKey>>>);

/// Holds a key in [`InFlight`] until the request ends (or its client goes away).
struct Running {
    set: InFlight,
    id: RunningKey,
}

impl InFlight {
    fn start(&self, scope: &'static str, key: &str) -> Option<Running> {
        let id = (scope, Arc::from(key));
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

async fn idempotent<E: Endpoint>(
    ep: Arc<E>,
    mut req: Request,
    scope: &'static str,
    render_hold: Option<Render<HoldView>>,
) -> poem::Result<Response> {
    // The inner endpoint is called from one place, through a box (see `server::boxed_call`):
    // each call site would be a slot of its own in this future, which is moved whole.
    let (_running, deferred) = match admit(&mut req, scope, render_hold).await? {
        Admitted::Run(running, deferred) => (running, deferred),
        Admitted::Answered(answer) => return Ok(answer),
    };
    let answer = crate::server::boxed_call(&*ep, req).await;
    let Some(Deferred {
        slot,
        keyed,
        state,
        hold_secret,
    }) = deferred
    else {
        return answer;
    };
    // The batch looked the key up: a finished one is answered with what it found.
    let found = match slot.get() {
        Some(found) => found.clone(),
        // Answered before any batch saw it (its body refused, the product's queue full): looked
        // up now, so that a finished key is answered the same whichever way its retry went.
        None => match state.key_lookups.lookup(keyed).await {
            Ok(found) => found,
            Err(_) => return answer,
        },
    };
    match answer_found(found, scope, render_hold, hold_secret) {
        Some(replayed) => Ok(replayed),
        None => answer,
    }
}

/// A key whose look-up the layer left to the hold batch: where the batch writes what it found.
struct Deferred {
    slot: LookupSlot,
    keyed: Arc<KeyedRequest>,
    state: Arc<AppState>,
    hold_secret: Option<ClientSecret>,
}

/// What the layer decided before the request runs.
enum Admitted {
    /// Run it (holding its key in [`InFlight`] until it ends, when it has one), and what the
    /// layer needs to answer it afterwards when the key's look-up was left to the batch.
    Run(Option<Running>, Option<Deferred>),
    /// Answered here: a replay, a mismatch, a key in use or malformed.
    Answered(Response),
}

/// The answer to a request whose key was found: its first answer again (a replay), or a
/// mismatch; `None` for a key that is free.
fn answer_found(
    found: Lookup,
    scope: &'static str,
    render_hold: Option<Render<HoldView>>,
    hold_secret: Option<ClientSecret>,
) -> Option<Response> {
    match found {
        Lookup::Absent => None,
        Lookup::Replay(stored) => Some(replay(stored, scope)),
        Lookup::Hold(mut hold) => Some({
            // The secret is not stored: the replay derives it from the key again.
            hold.client_secret = hold_secret;
            match render_hold.and_then(|render| render(&Ok(hold))) {
                Some(stored) => replay(stored, scope),
                None => {
                    tracing::error!(scope, "a key found on a hold, with no way to answer it");
                    ApiError::new(ProblemCode::Internal, "internal error; it has been logged")
                        .into_response()
                }
            }
        }),
        Lookup::Mismatch => {
            Some(ApiError::from(entity::DomainError::IdempotencyKeyMismatch).into_response())
        }
    }
}

/// Puts the request's [`KeyCheck`] in its data, or answers it.
async fn admit(
    req: &mut Request,
    scope: &'static str,
    render_hold: Option<Render<HoldView>>,
) -> poem::Result<Admitted> {
    let answered = |e: ApiError| Ok(Admitted::Answered(e.into_response()));
    let Some(state) = req.data::<Arc<AppState>>().cloned() else {
        // `build_app` adds the state to every request: only a wiring mistake gets here.
        tracing::error!("idempotency layer without the app state");
        return answered(ApiError::new(
            ProblemCode::Internal,
            "internal error; it has been logged",
        ));
    };
    let Some(raw) = req.headers().get(HEADER) else {
        req.set_data(KeyCheck::default());
        return Ok(Admitted::Run(None, None));
    };
    let Some(key) = raw.to_str().ok().and_then(parse_key).map(str::to_owned) else {
        return answered(ApiError::field(
            ProblemCode::MalformedRequest,
            "Idempotency-Key",
            "must be 1 to 255 printable ASCII characters, bare or in double quotes",
        ));
    };
    let Some(caller) = req.data::<Caller>().cloned() else {
        // Every keyed operation identifies its buyer first: only a wiring mistake gets here.
        tracing::error!("idempotency layer without the caller");
        return answered(ApiError::new(
            ProblemCode::Internal,
            "internal error; it has been logged",
        ));
    };
    let body = req.take_body().into_bytes().await?;
    let keyed = Arc::new(KeyedRequest::new(
        scope,
        caller.key_owner(),
        &key,
        fingerprint(&body),
    ));
    req.set_body(body);
    let hold_secret = (scope == HOLDS && matches!(caller, Caller::Anonymous { .. }))
        .then(|| ClientSecret::for_key(&key));
    // A coalesced hold's key is looked up by its batch, before the batch takes the product's
    // lock: one queue to wait in instead of two. Any other key is looked up here.
    let in_batch = scope == HOLDS && state.hold_coalescer.is_some();
    if !in_batch {
        match state.key_lookups.lookup(keyed.clone()).await {
            Ok(found) => {
                if let Some(answer) = answer_found(found, scope, render_hold, hold_secret.clone()) {
                    return Ok(Admitted::Answered(answer));
                }
            }
            Err(e) => return answered(ApiError::from(e)),
        }
    }
    let Some(running) = state.in_flight.start(scope, &keyed.key) else {
        // A twin runs in this process. Its key may have finished already (twins retrying a
        // finished key): then this one is replayed too, as if it had been looked up first.
        if in_batch
            && let Ok(found) = state.key_lookups.lookup(keyed).await
            && let Some(answer) = answer_found(found, scope, render_hold, hold_secret)
        {
            return Ok(Admitted::Answered(answer));
        }
        return answered(ApiError::from(entity::DomainError::IdempotencyKeyInUse));
    };
    let deferred = in_batch.then(|| Deferred {
        slot: LookupSlot::default(),
        keyed: keyed.clone(),
        state: state.clone(),
        hold_secret: hold_secret.clone(),
    });
    req.set_data(KeyCheck {
        request: Some(keyed),
        look_up: deferred.as_ref().map(|d| d.slot.clone()),
        hold_secret,
    });
    Ok(Admitted::Run(Some(running), deferred))
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

/// The body's fingerprint: of its canonical JSON (key order and spacing do not matter), or of
/// its bytes when it is not JSON (the handler will refuse it).
fn fingerprint(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => entity::idempotency::fingerprint_json(&value),
        Err(_) => entity::idempotency::fingerprint_bytes(body),
    }
}

fn replay(stored: StoredResponse, scope: &str) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    // A replayed 201 says where the resource is, as the first answer did.
    let location = (status == StatusCode::CREATED)
        .then(|| serde_json::from_str::<serde_json::Value>(&stored.body).ok())
        .flatten()
        .and_then(|body| match scope {
            HOLDS => body["hold_id"].as_i64().map(crate::locations::hold),
            ORDERS => body["order_id"].as_i64().map(crate::locations::order),
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
    use sha2::{Digest, Sha256};

    #[test]
    fn keys_bare_or_quoted() {
        assert_eq!(parse_key("abc-1"), Some("abc-1"));
        assert_eq!(parse_key("\"8e03978e-40d5\""), Some("8e03978e-40d5"));
        assert_eq!(parse_key(""), None);
        assert_eq!(parse_key("\"\""), None);
        assert_eq!(parse_key(&"k".repeat(256)), None);
        assert_eq!(parse_key("tab\there"), None);
        assert_eq!(
            parse_key("\"k-1  \""),
            Some("k-1"),
            "trailing spaces dropped"
        );
        assert_eq!(parse_key("\"  k\""), Some("  k"), "leading spaces kept");
        assert_eq!(parse_key("\"   \""), None, "spaces alone are no key");
    }

    #[test]
    fn fingerprints_ignore_layout() {
        assert_eq!(
            fingerprint(br#"{"a":1,"b":2}"#),
            fingerprint(b"{ \"b\": 2, \"a\": 1 }")
        );
        assert_ne!(fingerprint(br#"{"a":1}"#), fingerprint(br#"{"a":2}"#));
    }

    /// Stored keys keep their fingerprints across versions: it is the SHA-256 of the compact,
    /// ordered JSON (`{"a":1,"b":2}` here), or of the bytes when they are not JSON.
    #[test]
    fn fingerprints_are_the_hash_of_the_canonical_body() {
        assert_eq!(
            fingerprint(b"{ \"b\": 2, \"a\": 1 }"),
            "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
        );
        let not_json = b"{\"a\":";
        let hex: String = Sha256::digest(not_json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(fingerprint(not_json), hex);
    }
}
