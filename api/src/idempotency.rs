//! `Idempotency-Key` on `POST /api/holds` and `POST /api/orders` (IETF httpapi draft), at the
//! HTTP edge. A retry with the same key and body gets the first outcome again (with
//! `Idempotent-Replayed: true`), never a second effect.
//!
//! This module owns what is HTTP about keys: the header ([`IdempotencyKey`], a parameter of the
//! keyed operations, so a malformed key is refused before anything else), the claim a request
//! makes with it ([`Claim`]: the key scoped to its owner, the body's fingerprint, the in-flight
//! guard), what is answered before a request runs ([`Early`]), and the replayed marker on the
//! answers. What a key is stored as, and how it is looked up, is `entity::operations::idempotency`'s: an
//! order's key is looked up here before the order runs, a hold's by its batch (one queue to
//! wait in, not two), and both outcomes come back typed, for the handler to render.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use entity::{
    operations::idempotency::{Lookup, Replay},
    rules::keys::KeyClaim,
    rules::ownership::ClientSecret,
    views::HoldView,
};
use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaParamIn, MetaSchemaRef, Registry},
    types::Type,
};

use crate::{
    AppState,
    buyers::Caller,
    error::{ApiError, BodyError, ProblemCode},
};

/// The scope of `createHold`'s keys (a granted hold keeps its key on its row).
pub const HOLDS: &str = entity::operations::idempotency::HOLDS;
/// The scope of `createOrder`'s keys.
pub const ORDERS: &str = "orders";

const MALFORMED: &str = "must be 1 to 255 printable ASCII characters, bare or in double quotes";

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

/// The `Idempotency-Key` header of a keyed operation, parsed ([`parse_key`]); a header that
/// is not a key is 400 `malformed_request` naming it.
pub struct IdempotencyKey(pub Option<String>);

impl<'a> ApiExtractor<'a> for IdempotencyKey {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::Parameter];
    const PARAM_IS_REQUIRED: bool = false;
    type ParamType = String;
    type ParamRawType = String;

    fn register(registry: &mut Registry) {
        <String as Type>::register(registry);
    }

    fn param_in() -> Option<MetaParamIn> {
        Some(MetaParamIn::Header)
    }

    fn param_schema_ref() -> Option<MetaSchemaRef> {
        Some(<String as Type>::schema_ref())
    }

    fn param_raw_type(&self) -> Option<&Self::ParamRawType> {
        self.0.as_ref()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let Some(raw) = request.headers().get(param_opts.name) else {
            return Ok(Self(None));
        };
        match raw.to_str().ok().and_then(parse_key) {
            Some(key) => Ok(Self(Some(key.to_owned()))),
            None => Err(BodyError {
                code: ProblemCode::MalformedRequest,
                field: Some(param_opts.name.to_owned()),
                message: MALFORMED.to_owned(),
            }
            .into()),
        }
    }
}

/// What a keyed request is answered before it runs.
pub enum Early {
    /// Its key had finished with the same request: the first outcome, again.
    Replay(Replay),
    /// Its key belongs to another request (422), or a twin still runs (409).
    Refused(ApiError),
}

/// A request's claim on its key, held until the request ends: while it is held, a twin in this
/// process is told the key is in use.
pub struct Claim {
    key: Arc<KeyClaim>,
    /// An anonymous buyer's keyed hold: its secret, derived from the key (see
    /// [`ClientSecret::for_key`]), so that the first answer and its replays carry the same.
    hold_secret: Option<ClientSecret>,
    _running: Running,
}

impl Claim {
    /// The key as stored, for the operation to write its outcome under.
    pub fn key(&self) -> &Arc<KeyClaim> {
        &self.key
    }

    /// The secret of the hold this keyed request makes, for an anonymous buyer.
    pub fn hold_secret(&self) -> Option<&ClientSecret> {
        self.hold_secret.as_ref()
    }

    /// A request refused before any operation saw its key (its body out of range): a used key
    /// still answers as used (its replay, or 422 for another body); a free one gets `refusal`.
    pub async fn refused_early(&self, state: &AppState, refusal: ApiError) -> Early {
        match state.key_lookups.lookup(self.key.clone()).await {
            Ok(Lookup::Absent) | Err(_) => Early::Refused(refusal),
            Ok(found) => {
                found_early(found, self.hold_secret.as_ref()).unwrap_or(Early::Refused(refusal))
            }
        }
    }
}

impl IdempotencyKey {
    /// The claim a request with this key makes, or none without one. `body` is the request's,
    /// fingerprinted as canonical JSON (key order and spacing do not matter). An order's key is
    /// looked up now; a hold's by its batch. Answered [`Early`] when the key had finished, is
    /// another request's, or is held by a twin running in this process.
    pub async fn claim(
        &self,
        state: &AppState,
        scope: &'static str,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Option<Claim>, Early> {
        let Some(key) = &self.0 else {
            return Ok(None);
        };
        let claim = Arc::new(KeyClaim::new(
            scope,
            caller.key_owner(),
            key,
            fingerprint(body),
        ));
        let hold_secret =
            (scope == HOLDS && caller.buyer().is_none()).then(|| ClientSecret::for_key(key));
        let look_up = async || match state.key_lookups.lookup(claim.clone()).await {
            Ok(found) => Ok(found_early(found, hold_secret.as_ref())),
            Err(e) => Err(Early::Refused(ApiError::from(e))),
        };
        if scope != HOLDS
            && let Some(early) = look_up().await?
        {
            return Err(early);
        }
        let Some(running) = state.in_flight.start(scope, &claim.key) else {
            // A twin runs in this process. Its key may have finished already (twins retrying a
            // finished key): then this one is answered again too.
            let early = look_up().await?;
            return Err(early.unwrap_or_else(|| {
                Early::Refused(ApiError::from(entity::DomainError::IdempotencyKeyInUse))
            }));
        };
        Ok(Some(Claim {
            key: claim,
            hold_secret,
            _running: running,
        }))
    }
}

/// What a found key answers before its request runs; `None` for a free key. A replayed hold
/// carries the secret its key derives (`hold_secret`), which is not stored.
fn found_early(found: Lookup, hold_secret: Option<&ClientSecret>) -> Option<Early> {
    match found {
        Lookup::Absent => None,
        Lookup::Finished(Replay::Hold(hold)) => Some(Early::Replay(Replay::Hold(HoldView {
            client_secret: hold_secret.cloned(),
            ..hold
        }))),
        Lookup::Finished(replay) => Some(Early::Replay(replay)),
        Lookup::Mismatch => Some(Early::Refused(ApiError::from(
            entity::DomainError::IdempotencyKeyMismatch,
        ))),
    }
}

/// A running request's key, with its scope.
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

/// The body's fingerprint: of its canonical JSON (key order and spacing do not matter), or of
/// its bytes when it is not JSON (the operation refuses it).
fn fingerprint(body: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => entity::rules::keys::fingerprint_json(&value),
        Err(_) => entity::rules::keys::fingerprint_bytes(body),
    }
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
