//! The OpenAPI document as served: poem-openapi's, with what it cannot say added. poem-openapi
//! has no media-type examples, no `security: []`, no `nullable`, lists tags alphabetically and
//! writes header names in capitals; and a limit that is a setting (`MAX_HOLD_QTY`) is only known at run time.
//! Everything else (schemas, statuses, headers, limits) comes from the types.

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq},
};
use serde_json::Value;

use crate::{
    buyers::{BUYER_TOKEN_SCHEME, CLIENT_SECRET_SCHEME},
    config::BuyerAuthMode,
    error::ProblemCode,
};

/// The document's overview, shown at the top of Swagger UI.
pub const DESCRIPTION: &str = "\
Holds, orders and payments over a limited stock, with zero overselling.

**Flow**: `POST /api/holds` reserves units for a short time; `POST /api/orders` turns the hold \
into a pending order; the payment gateway's webhook (`POST /api/payments/webhook`) pays or \
cancels it. Expired holds and unpaid orders give their units back by themselves.

**Who may do what**: with `BUYER_AUTH=none` (anonymous buyers) a hold's 201 answer carries \
`client_secret`: keep it, and send it as the header `Client-Secret` to read or release the \
hold, to make its order and to read that order. With `BUYER_AUTH=jwt` every buyer route takes \
`Authorization: Bearer <JWT>` and the buyer is the token's `sub`. Either way a hold or order \
that is not the caller's answers 404, exactly as one that does not exist. Swagger UI's \
**Authorize** takes the one this server uses.

**Live stock**: `GET /api/products/{id}/stream` is a Server-Sent Events stream (`EventSource`) \
of `stock` events, sent at once and then on every change, for stock bars that many browsers \
watch.

**Errors** are `application/problem+json` (RFC 9457) with a stable `code` (the `ProblemCode` \
enum): branch on `code`, not on `detail`. Each operation lists the codes it can answer. \
`insufficient_stock` carries `available`; a refusal of one field or parameter carries \
`errors: [{field, message}]`.

**Headers**: every answer carries `X-Request-Id`; a 201 carries `Location`; a replayed \
idempotent answer carries `Idempotent-Replayed: true`; 429 and 503 carry `Retry-After`. \
Browsers on an origin listed in `CORS_ALLOWED_ORIGINS` can read all of them.

**Retries**: `POST /api/holds` and `POST /api/orders` take an optional `Idempotency-Key`; the \
same key and body within 24 hours answers the first answer again, with no second effect.";

/// The tags in a buyer's order.
pub const TAG_ORDER: &[&str] = &[
    "Products",
    "Queue",
    "Holds",
    "Orders",
    "Payments",
    "Admin",
    "Operations",
];

/// Header names as they are usually written (poem-openapi writes them in capitals).
const HEADER_NAMES: &[&str] = &[
    "Location",
    "Idempotent-Replayed",
    "Retry-After",
    crate::observe::REQUEST_ID_NAME,
];

/// Members that may be `null`: optional request members (`null` meaning "not sent", or in a
/// `PATCH` "clear it") and answer members that are `null` when unset. poem-openapi writes
/// `Option` members as optional but not nullable.
const NULLABLE: &[(&str, &[&str])] = &[
    (
        "PaymentWebhook",
        &["hold_id", "product_id", "quantity", "amount"],
    ),
    ("CreateHold", &["buyer_id"]),
    (
        "NewProduct",
        &[
            "per_buyer_limit",
            "sale_starts_at",
            "sale_ends_at",
            "admission_window_seconds",
        ],
    ),
    (
        "ProductPatch",
        &["per_buyer_limit", "sale_starts_at", "sale_ends_at"],
    ),
    // Answers: these members are always there, `null` when unset.
    (
        "Product",
        &["per_buyer_limit", "sale_starts_at", "sale_ends_at"],
    ),
    ("Hold", &["buyer_id", "client_secret"]),
    ("Order", &["buyer_id"]),
    (
        "Ticket",
        &[
            "position",
            "admitted_at",
            "admission_expires_at",
            "client_secret",
        ],
    ),
    ("ProductPage", &["next"]),
    ("OrderPage", &["next"]),
];

/// What `crate::idempotency::parse_key` accepts: printable ASCII.
const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\x20-\x7E]+$";

/// What `entity::types::BuyerId::parse` accepts, besides the length: no control character
/// (Unicode `Cc`). Checked by the handler, not by a poem-openapi `pattern` validator, which
/// compiles its regex again for every request.
const BUYER_ID_PATTERN: &str = r"^[^\x00-\x1F\x7F-\x9F]+$";

/// The answer schemas of [`NULLABLE`].
const ANSWERS: &[&str] = &[
    "Product",
    "Hold",
    "Order",
    "Ticket",
    "ProductPage",
    "OrderPage",
];

/// The server's hold limits the document states.
#[derive(Debug, Clone, Copy)]
pub struct HoldLimits {
    pub max_hold_qty: u32,
    pub max_hold_lines: u32,
}

/// poem-openapi's document, refined (see the module's doc), for a server whose buyers are
/// known by `buyers`.
pub fn refine(raw: &str, limits: HoldLimits, buyers: BuyerAuthMode) -> String {
    let HoldLimits {
        max_hold_qty,
        max_hold_lines,
    } = limits;
    let Ok(mut doc) = serde_json::from_str::<Json>(raw) else {
        // Not reachable with poem-openapi's output; serve it unrefined rather than nothing.
        return raw.to_owned();
    };
    // The buyer operations declare both ways a buyer proves who it is; this server uses one.
    let unused = match buyers {
        BuyerAuthMode::None => BUYER_TOKEN_SCHEME,
        BuyerAuthMode::Jwt => CLIENT_SECRET_SCHEME,
    };
    if let Some(Json::Obj(schemes)) = doc.pointer_mut(&["components", "securitySchemes"]) {
        schemes.retain(|(name, _)| name != unused);
    }
    let problem_sets = crate::routes::problem_sets();
    if let Some(Json::Arr(tags)) = doc.get_mut("tags") {
        tags.sort_by_key(|t| {
            let name = t.get("name").and_then(Json::as_str).unwrap_or_default();
            TAG_ORDER
                .iter()
                .position(|n| *n == name)
                .unwrap_or(usize::MAX)
        });
    }
    if let Some(Json::Obj(paths)) = doc.get_mut("paths") {
        for (_, item) in paths.iter_mut() {
            let Json::Obj(ops) = item else { continue };
            for (_, op) in ops.iter_mut() {
                refine_operation(op, &problem_sets, unused);
            }
        }
    }
    for (schema, members) in NULLABLE {
        for member in *members {
            let path = ["components", "schemas", schema, "properties", member];
            if let Some(m) = doc.pointer_mut(&path) {
                m.insert("nullable", Json::Bool(true));
            }
            // In answers the member is always sent (`null` when unset): required, so generated
            // clients type it `T | null`, not optional.
            if ANSWERS.contains(schema)
                && let Some(Json::Arr(required)) =
                    doc.pointer_mut(&["components", "schemas", schema, "required"])
                && !required.iter().any(|r| r.as_str() == Some(member))
            {
                required.push(Json::Str((*member).to_owned()));
            }
        }
    }
    for schema in ["CreateHold", "HoldLineRequest"] {
        if let Some(qty) = doc.pointer_mut(&["components", "schemas", schema, "properties", "qty"])
        {
            qty.insert("maximum", Json::from(&Value::from(max_hold_qty)));
        }
    }
    if let Some(lines) =
        doc.pointer_mut(&["components", "schemas", "CreateHold", "properties", "lines"])
    {
        lines.insert("minItems", Json::from(&Value::from(1)));
        lines.insert("maxItems", Json::from(&Value::from(max_hold_lines)));
    }
    if let Some(buyer) = doc.pointer_mut(&[
        "components",
        "schemas",
        "CreateHold",
        "properties",
        "buyer_id",
    ]) {
        buyer.insert("pattern", Json::Str(BUYER_ID_PATTERN.to_owned()));
    }
    // poem-openapi describes an event stream as an array of its data; a stream is a sequence
    // of events, each `{event, data}` with the data as JSON text (the shape OpenAPI 3.2 gives
    // an event stream's items, and the one Schemathesis checks each event against).
    for (path, event, data) in [
        ("/api/products/{id}/stream", "stock", "a `StockLevel`"),
        ("/api/queue/{id}/stream", "ticket", "a `Ticket`"),
    ] {
        let media = ["paths", path, "get", "responses", "200", "content"];
        if let Some(media) = doc
            .pointer_mut(&media)
            .and_then(|m| m.get_mut("text/event-stream"))
        {
            let event = serde_json::json!({
                "type": "object",
                "description": format!("One Server-Sent Event: `event` is `{event}`, `data` the JSON text of {data}."),
                "required": ["event", "data"],
                "properties": {
                    "event": {"type": "string", "enum": [event]},
                    "data": {"type": "string", "description": format!("JSON text of {data}.")},
                },
            });
            media.insert("schema", Json::from(&event));
        }
    }
    serde_json::to_string(&doc).unwrap_or_else(|_| raw.to_owned())
}

fn refine_operation(
    op: &mut Json,
    problem_sets: &[(&'static str, &'static [ProblemCode])],
    unused_scheme: &str,
) {
    let id = op
        .get("operationId")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    // This server's buyer scheme only; "no credential" (`{}`) left out where a scheme remains.
    // Public operations say so with `security: []`: without it, a global requirement would
    // apply.
    let mut security = match op.get("security") {
        Some(Json::Arr(requirements)) => requirements.clone(),
        _ => Vec::new(),
    };
    let names = |r: &Json| match r {
        Json::Obj(schemes) => schemes.iter().map(|(n, _)| n.clone()).collect(),
        _ => Vec::new(),
    };
    let named: Vec<String> = security.iter().flat_map(names).collect();
    security.retain(|r| {
        let n = names(r);
        !n.is_empty() && n.iter().all(|n| n != unused_scheme)
    });
    op.insert("security", Json::Arr(security));
    // A buyer operation answers 401 only to a missing or bad buyer token: never when buyers
    // are anonymous.
    if unused_scheme == BUYER_TOKEN_SCHEME
        && named.iter().any(|n| n == BUYER_TOKEN_SCHEME)
        && let Some(Json::Obj(responses)) = op.get_mut("responses")
    {
        responses.retain(|(status, _)| status != "401");
    }
    if let Some(Json::Arr(params)) = op.get_mut("parameters") {
        // A ticket's secret (`createHold`) is an anonymous buyer's: not with buyer tokens.
        if unused_scheme == CLIENT_SECRET_SCHEME {
            params.retain(|p| p.get("name").and_then(Json::as_str) != Some("Client-Secret"));
        }
        for p in params.iter_mut() {
            if p.get("in").and_then(Json::as_str) == Some("path") {
                // The seeded demo product, and the first hold and order of a fresh database
                // (made by the examples of createHold and createOrder); releasing takes a second
                // hold, the first having become the order.
                let example = if id == "releaseHold" { 2 } else { 1 };
                p.insert("example", Json::from(&Value::from(example)));
            }
            // Paging limits are checked by the handlers (out of range is a 422, where a
            // poem-openapi validator would answer 400), so the schema learns them here.
            let name = p.get("name").and_then(Json::as_str).map(str::to_owned);
            // The key's pattern is checked by the idempotency layer (`parse_key`): poem-openapi
            // compiles a `pattern` validator's regex again on every request (about a third of
            // a keyed hold's CPU in the API when it was there).
            if name.as_deref() == Some("Idempotency-Key")
                && let Some(schema) = p.get_mut("schema")
            {
                schema.insert("pattern", Json::Str(IDEMPOTENCY_KEY_PATTERN.to_owned()));
            }
            let limits: &[(&str, i64)] = match name.as_deref() {
                Some("limit") => &[("minimum", 1), ("maximum", 100), ("default", 20)],
                Some("after") => &[("minimum", 0), ("default", 0)],
                _ => &[],
            };
            if let Some(schema) = p.get_mut("schema") {
                for (keyword, value) in limits {
                    schema.insert(keyword, Json::from(&Value::from(*value)));
                }
            }
        }
    }
    let codes = problem_sets
        .iter()
        .find(|(op_id, _)| *op_id == id)
        .map(|(_, codes)| *codes)
        .unwrap_or_default();
    let Some(Json::Obj(responses)) = op.get_mut("responses") else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        if let Some(Json::Obj(headers)) = response.get_mut("headers") {
            for (name, _) in headers.iter_mut() {
                if let Some(canonical) = HEADER_NAMES.iter().find(|n| n.eq_ignore_ascii_case(name))
                {
                    *name = (*canonical).to_owned();
                }
            }
        }
        let Some(media) = response.pointer_mut(&["content", crate::error::PROBLEM_JSON]) else {
            continue;
        };
        let examples: Vec<(String, Json)> = codes
            .iter()
            .filter(|c| c.status().as_str() == status)
            .map(|c| {
                let value =
                    serde_json::to_value(ProblemJsonValue(c.example_in(&id))).unwrap_or_default();
                let example = Json::Obj(vec![
                    ("summary".into(), Json::Str(c.as_str().to_owned())),
                    ("value".into(), Json::from(&value)),
                ]);
                (c.as_str().to_owned(), example)
            })
            .collect();
        if !examples.is_empty() {
            media.insert("examples", Json::Obj(examples));
        }
    }
}

/// A problem as JSON, through its `ToJSON` (the same rendering as the answers').
struct ProblemJsonValue(crate::error::Problem);

impl Serialize for ProblemJsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use poem_openapi::types::ToJSON;
        self.0.to_json().unwrap_or_default().serialize(s)
    }
}

/// JSON that keeps the order of object members, so the refined document reads in the order
/// poem-openapi wrote it (properties in declaration order, operations as declared).
/// `serde_json`'s `preserve_order` is not an option: request fingerprints rely on its sorted
/// maps.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Obj(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn pointer_mut(&mut self, keys: &[&str]) -> Option<&mut Json> {
        keys.iter().try_fold(self, |at, key| at.get_mut(key))
    }

    /// Sets `key`, in place if present, else at the end.
    fn insert(&mut self, key: &str, value: Json) {
        if let Json::Obj(members) = self {
            match members.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v = value,
                None => members.push((key.to_owned(), value)),
            }
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl From<&Value> for Json {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Num(n.clone()),
            Value::String(s) => Json::Str(s.clone()),
            Value::Array(a) => Json::Arr(a.iter().map(Json::from).collect()),
            Value::Object(o) => Json::Obj(o.iter().map(|(k, v)| (k.clone(), v.into())).collect()),
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Null => s.serialize_unit(),
            Json::Bool(b) => s.serialize_bool(*b),
            Json::Num(n) => n.serialize(s),
            Json::Str(v) => s.serialize_str(v),
            Json::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Json::Obj(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_none<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Num(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Num(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Json, E> {
                Ok(serde_json::Number::from_f64(n).map_or(Json::Null, Json::Num))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::Str(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::Str(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Arr(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Json>()? {
                    members.push((k, v));
                }
                Ok(Json::Obj(members))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_order_survives_a_round_trip() {
        let raw = r#"{"b":1,"a":[true,null,"x",1.5],"c":{"z":1,"y":2}}"#;
        let j: Json = serde_json::from_str(raw).expect("parse");
        assert_eq!(serde_json::to_string(&j).expect("write"), raw);
    }
}
