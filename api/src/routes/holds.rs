use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{
    DomainError, HoldStatus, Quantity,
    batching::coalesce::Unserved,
    operations::carts::{CartLine, CartLinesError, CartRequest},
    operations::holds::{self, HoldOutcome, HoldRequest},
    operations::idempotency::Replay,
    operations::queue::TicketPass,
    rules::ownership::ClientSecret,
    types::{BuyerId, HoldId, ProductId, TicketId},
    views::{HoldView, LineView, total_of},
};
use poem::{Endpoint, Request, Response};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path},
};
use serde::Deserialize;

use super::{ApiTags, problems};
use crate::{
    AppState,
    buyers::{self, Caller, Owner, Purchaser, identified},
    error::{ApiError, ProblemCode, Problems},
    idempotency::{self, Claim, Early, IdempotencyKey},
    rate_limit,
    types::{Json, JsonBody},
};

/// Ask for a hold on `qty` units of a product, or on several products at once (`lines`: all
/// held or none). Send `product_id` and `qty`, or `lines`, not both.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CreateHold {
    /// The product, for a hold of one product (with `qty`).
    #[oai(skip_serializing_if_is_none)]
    #[serde(default)]
    pub product_id: Option<i64>,
    /// 1 to `MAX_HOLD_QTY` (10 by default; the `maximum` here is this server's).
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "1")))]
    #[serde(default)]
    pub qty: Option<i32>,
    /// A cart: 1 to `MAX_HOLD_LINES` lines of distinct products, all held or none. Every
    /// product rule (sale window, buyer limit, admission, stock) applies to each line; a
    /// refusal lists every failing line in the problem's `lines`.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default)]
    pub lines: Option<Vec<HoldLineRequest>>,
    /// Who the hold is for: 1 to 128 characters, no control characters, compared exactly
    /// (the frontend's user or session id). Required on a product with a `per_buyer_limit`.
    /// `null` is the same as leaving it out. With `BUYER_AUTH=jwt` the buyer is the token's
    /// `sub`: leave this out, or send the same.
    // No `pattern` validator: poem-openapi compiles its regex again for every request. The
    // handler refuses control characters (`BuyerId::parse`), and the document states the
    // pattern (`document::BUYER_ID_PATTERN`).
    #[oai(
        skip_serializing_if_is_none,
        validator(min_length = 1, max_length = 128)
    )]
    #[serde(default)]
    pub buyer_id: Option<String>,
    /// On a product with `queue` admission and `BUYER_AUTH=none`: the buyer's admitted ticket,
    /// whose `client_secret` goes in the `Client-Secret` header. (With `jwt` the token's
    /// buyer's ticket is found by itself.) Ignored on an `open` product.
    #[oai(skip_serializing_if_is_none)]
    #[serde(default)]
    pub ticket_id: Option<i64>,
}

/// One line of a cart request.
#[derive(Debug, Clone, Object, Deserialize)]
pub struct HoldLineRequest {
    pub product_id: i64,
    /// 1 to `MAX_HOLD_QTY`.
    #[oai(validator(minimum(value = "1")))]
    pub qty: i32,
}

/// One product of a cart: its units, at the price recorded when the hold was made.
#[derive(Debug, Clone, Object)]
pub struct HoldLine {
    pub product_id: i64,
    #[oai(validator(minimum(value = "1")))]
    pub qty: i32,
    /// The product's price when the hold was made, a decimal string with two places.
    #[oai(validator(pattern = r"^[0-9]+\.[0-9]{2}$"))]
    pub unit_price: String,
}

impl From<LineView> for HoldLine {
    fn from(l: LineView) -> Self {
        Self {
            product_id: l.product_id.get(),
            qty: l.qty,
            unit_price: l.unit_price.to_string(),
        }
    }
}

impl poem_openapi::types::Example for CreateHold {
    fn example() -> Self {
        Self {
            product_id: Some(1),
            qty: Some(2),
            lines: None,
            buyer_id: Some("user-42".into()),
            ticket_id: None,
        }
    }
}

/// The state of a hold: `active` (reserving stock until `expires_at`), `expired` (its time ran
/// out, its stock is available again), `released` (given back by `DELETE`) or `consumed`
/// (turned into an order).
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum HoldState {
    Active,
    Expired,
    Released,
    Consumed,
}

impl From<HoldStatus> for HoldState {
    fn from(s: HoldStatus) -> Self {
        match s {
            HoldStatus::Active => Self::Active,
            HoldStatus::Expired => Self::Expired,
            HoldStatus::Released => Self::Released,
            HoldStatus::Consumed => Self::Consumed,
        }
    }
}

/// A hold on stock.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Hold {
    pub hold_id: i64,
    pub product_id: i64,
    #[oai(validator(minimum(value = "1")))]
    pub qty: i32,
    // Described by `HoldState` itself: a description here would wrap the `$ref` in `allOf`.
    pub status: HoldState,
    /// When an active hold stops reserving stock (RFC 3339, UTC).
    pub expires_at: DateTime<Utc>,
    /// The buyer the hold is for; null when none was named.
    pub buyer_id: Option<String>,
    /// With `BUYER_AUTH=none`: what reaches this hold and its order from now on, sent as the
    /// header `Client-Secret`. Only in the answer that made the hold (and its idempotent
    /// replay): keep it. Null in every other answer, and with `BUYER_AUTH=jwt`.
    pub client_secret: Option<String>,
    /// A cart's lines (in product id order; `product_id` and `qty` above are the first
    /// line's). Only on a hold made with `lines`.
    #[oai(skip_serializing_if_is_none)]
    pub lines: Option<Vec<HoldLine>>,
    /// A cart's total: every line's unit price × qty. Only on a hold made with `lines`.
    #[oai(
        skip_serializing_if_is_none,
        validator(pattern = r"^[0-9]+\.[0-9]{2}$")
    )]
    pub total_price: Option<String>,
}

impl poem_openapi::types::Example for Hold {
    fn example() -> Self {
        Self {
            hold_id: 1,
            product_id: 1,
            qty: 2,
            status: HoldState::Active,
            expires_at: DateTime::from_timestamp(1_796_139_000, 0).unwrap_or_default(),
            buyer_id: Some("user-42".into()),
            client_secret: Some("q3pC1l2m0W8yq6b9cV4xZg".into()),
            lines: None,
            total_price: None,
        }
    }
}

impl From<HoldView> for Hold {
    fn from(h: HoldView) -> Self {
        let total_price = match h.lines.is_empty() {
            true => None,
            false => total_of(&h.lines).map(|t| t.to_string()),
        };
        let lines = match h.lines.is_empty() {
            true => None,
            false => Some(h.lines.into_iter().map(HoldLine::from).collect()),
        };
        Self {
            lines,
            total_price,
            hold_id: h.id.get(),
            product_id: h.product_id.get(),
            qty: h.qty,
            status: h.status.into(),
            expires_at: h.expires_at,
            buyer_id: h.buyer_id,
            client_secret: h.client_secret.map(|s| s.expose().to_owned()),
        }
    }
}

#[derive(ApiResponse)]
pub enum HoldCreated {
    /// The stock is reserved until `expires_at`.
    #[oai(status = 201)]
    Created(
        Json<Hold>,
        /// The new hold's path.
        #[oai(header = "Location")]
        String,
        /// `true` when this is the stored answer to an earlier request with the same
        /// `Idempotency-Key` and body.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
}

impl HoldCreated {
    /// The answer for a granted hold, replayed or not.
    fn of(hold: HoldView, replayed: bool) -> Self {
        let hold = Hold::from(hold);
        let path = crate::locations::hold(hold.hold_id);
        Self::Created(Json(hold), path, replayed.then_some(true))
    }
}

#[derive(ApiResponse)]
pub enum HoldFound {
    /// The hold; `status` says whether it still reserves stock.
    #[oai(status = 200)]
    Ok(Json<Hold>),
}

#[derive(ApiResponse)]
pub enum HoldExtended {
    /// The hold with its new `expires_at`.
    #[oai(status = 200)]
    Ok(Json<Hold>),
}

#[derive(ApiResponse)]
pub enum HoldReleased {
    /// The hold, now `released`; its units are available again.
    #[oai(status = 200)]
    Ok(Json<Hold>),
}

problems!(CreateHoldProblems = "createHold", keyed = true: [
    MalformedRequest, Unauthorized, ProductNotFound, InsufficientStock, BuyerLimitExceeded,
    SaleNotStarted, SaleEnded, AdmissionRequired, IdempotencyKeyInUse, PayloadTooLarge,
    UnsupportedMediaType, ValidationError, BuyerIdRequired, IdempotencyKeyMismatch, RateLimited,
    Internal, Unavailable,
]);
problems!(GetHoldProblems = "getHold": [
    MalformedRequest, Unauthorized, HoldNotFound, Internal, Unavailable,
]);
problems!(ExtendHoldProblems = "extendHold": [
    MalformedRequest, Unauthorized, HoldNotFound, HoldNotActive, ExtensionLimit, Internal,
    Unavailable,
]);
problems!(ReleaseHoldProblems = "releaseHold": [
    MalformedRequest, Unauthorized, HoldNotFound, HoldNotActive, Internal, Unavailable,
]);

pub struct HoldsApi {
    pub state: Arc<AppState>,
}

/// `createHold`'s own middleware, attached to the operation rather than to its path: who the
/// buyer is, then the per-client rate limit.
fn hold_guards(ep: impl Endpoint + 'static) -> impl Endpoint<Output = Response> {
    buyers::identified(rate_limit::limited(ep))
}

type HoldAnswer = Result<HoldCreated, Problems<CreateHoldProblems>>;

/// What a hold body asks for: one product, or a cart.
enum Asked {
    One(ProductId, HoldRequest),
    Cart(CartRequest),
}

/// The hold request a body asks for, or why it cannot be served: `product_id` and `qty`, or
/// `lines` (see [`requester`]).
fn asked(
    caller: &Caller,
    body: &CreateHold,
    claim: Option<&Claim>,
    max_qty: u32,
    max_lines: usize,
) -> Result<Asked, ApiError> {
    let quantity = |qty: i32, field: &str| {
        Quantity::new(i64::from(qty), max_qty)
            .ok_or_else(|| ApiError::validation(field, format!("must be between 1 and {max_qty}")))
    };
    let who = requester(caller, body, claim)?;
    match (&body.lines, body.product_id, body.qty) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ApiError::validation(
            "lines",
            "send either `lines` or `product_id` and `qty`, not both",
        )),
        (Some(lines), None, None) => {
            let lines = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    Ok(CartLine {
                        product_id: ProductId::new(l.product_id),
                        qty: quantity(l.qty, &format!("lines[{i}].qty"))?,
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            let mut cart = CartRequest::new(lines, max_lines).map_err(|e| {
                let message = match e {
                    CartLinesError::TooMany(n) => format!("at most {n} lines (MAX_HOLD_LINES)"),
                    e => e.to_string(),
                };
                ApiError::validation("lines", message)
            })?;
            (cart.buyer, cart.secret, cart.key, cart.ticket) =
                (who.buyer, who.secret, who.key, who.ticket);
            Ok(Asked::Cart(cart))
        }
        (None, Some(product_id), Some(qty)) => Ok(Asked::One(
            ProductId::new(product_id),
            HoldRequest {
                buyer: who.buyer,
                secret: who.secret,
                key: who.key,
                ticket: who.ticket,
                ..HoldRequest::new(quantity(qty, "qty")?)
            },
        )),
        (None, None, _) => Err(ApiError::field(
            ProblemCode::MalformedRequest,
            "product_id",
            "missing field (send `product_id` and `qty`, or `lines`)",
        )),
        (None, Some(_), None) => Err(ApiError::field(
            ProblemCode::MalformedRequest,
            "qty",
            "missing field",
        )),
    }
}

/// Who asks for a hold, and what proves it.
struct Requester {
    buyer: Option<BuyerId>,
    secret: Option<ClientSecret>,
    key: Option<Arc<entity::rules::keys::KeyClaim>>,
    ticket: Option<TicketPass>,
}

/// Who asks for a hold. An anonymous buyer owns the hold by its secret: derived from the key
/// of a keyed request (so a replay answers it again), random otherwise.
fn requester(
    caller: &Caller,
    body: &CreateHold,
    claim: Option<&Claim>,
) -> Result<Requester, ApiError> {
    let secret = match caller {
        Caller::Anonymous { .. } => Some(
            claim
                .and_then(Claim::hold_secret)
                .cloned()
                .unwrap_or_else(ClientSecret::random),
        ),
        Caller::Buyer(_) => None,
    };
    let ticket = match (caller, body.ticket_id) {
        (Caller::Buyer(_), _) => Some(TicketPass::OfBuyer),
        (Caller::Anonymous { secret }, Some(id)) => Some(TicketPass::Named {
            id: TicketId::new(id),
            secret: secret.clone(),
        }),
        (Caller::Anonymous { .. }, None) => None,
    };
    Ok(Requester {
        buyer: buyer_of(caller, body.buyer_id.as_deref())?,
        secret,
        key: claim.map(|c| c.key().clone()),
        ticket,
    })
}

/// The answer to a hold request's outcome. A replayed hold carries the secret its key derives.
fn hold_answer(
    outcome: Result<HoldOutcome, Unserved>,
    secret: Option<&ClientSecret>,
    asked_for: Option<ProductId>,
) -> HoldAnswer {
    match outcome {
        Ok(HoldOutcome::Granted(hold)) => Ok(HoldCreated::of(hold, false)),
        Ok(HoldOutcome::Replayed(replay)) => replayed_hold(replay, secret),
        Ok(HoldOutcome::Refused(refusal)) => Err(refused_for_product(refusal, asked_for)),
        // Nobody reads this one: the client has gone.
        Ok(HoldOutcome::Withdrawn) => Err(refused(ApiError::new(
            ProblemCode::Unavailable,
            "the request was abandoned by its client",
        ))),
        Err(unserved) => Err(refused(ApiError::from(unserved))),
    }
}

/// A finished key's first outcome, again.
fn replayed_hold(replay: Replay, secret: Option<&ClientSecret>) -> HoldAnswer {
    match replay {
        Replay::Hold(hold) => Ok(HoldCreated::of(
            HoldView {
                client_secret: secret.cloned().or(hold.client_secret.clone()),
                ..hold
            },
            true,
        )),
        Replay::Refused(refusal) => Err(ApiError::from(refusal).replayed().into()),
        Replay::Order(_) => Err(ApiError::new(
            ProblemCode::Internal,
            "internal error: an order's outcome found under a hold's key",
        )
        .into()),
    }
}

/// What a keyed hold request is answered before it runs.
fn early_hold(early: Early) -> HoldAnswer {
    match early {
        Early::Replay(replay) => replayed_hold(replay, None),
        Early::Refused(refusal) => Err(refused(refusal)),
    }
}

/// A request refused before any batch saw its key: a used key still answers as used.
async fn refused_early(state: &AppState, claim: Option<&Claim>, refusal: ApiError) -> HoldAnswer {
    match claim {
        Some(claim) => early_hold(claim.refused_early(state, refusal).await),
        None => Err(refused(refusal)),
    }
}

/// A refusal, counted by its code.
fn refused<S>(e: ApiError) -> Problems<S> {
    metrics::counter!("holds_rejected_total", "reason" => e.code().as_str()).increment(1);
    e.into()
}

/// A refusal a batch gave, counted by its code and, when the product decided it (its window,
/// stock, buyer limit or queue), by that product too: the one asked for, or a cart's first
/// failing line. Other refusals carry no product, so ids a client makes up never become labels.
fn refused_for_product<S>(refusal: DomainError, asked_for: Option<ProductId>) -> Problems<S> {
    let product = match &refusal {
        DomainError::CartRefused(lines) => lines.first().map(|l| l.product_id),
        _ => asked_for,
    };
    let e = ApiError::from(refusal);
    let code = e.code();
    let by_product = matches!(
        code,
        ProblemCode::InsufficientStock
            | ProblemCode::SaleNotStarted
            | ProblemCode::SaleEnded
            | ProblemCode::BuyerIdRequired
            | ProblemCode::BuyerLimitExceeded
            | ProblemCode::AdmissionRequired
    );
    match product.filter(|_| by_product) {
        Some(product) => metrics::counter!(
            "holds_rejected_total",
            "reason" => code.as_str(),
            "product_id" => product.get().to_string()
        )
        .increment(1),
        None => metrics::counter!("holds_rejected_total", "reason" => code.as_str()).increment(1),
    }
    e.into()
}

/// The buyer a hold is for: with a token, its `sub` (a body `buyer_id` must say the same);
/// anonymous, the body's, if any.
fn buyer_of(caller: &Caller, named: Option<&str>) -> Result<Option<BuyerId>, ApiError> {
    match (caller.buyer(), named) {
        (Some(buyer), Some(named)) if named != buyer.as_str() => Err(ApiError::validation(
            "buyer_id",
            "must be left out or be the token's buyer (`sub`)",
        )),
        (Some(buyer), _) => Ok(Some(buyer.clone())),
        (None, None) => Ok(None),
        (None, Some(named)) => BuyerId::parse(named).map(Some).ok_or_else(|| {
            ApiError::validation(
                "buyer_id",
                "must be 1 to 128 characters, none of them a control character",
            )
        }),
    }
}

#[OpenApi(tag = "ApiTags::Holds")]
impl HoldsApi {
    /// Hold stock for a short time
    ///
    /// The hold reserves `qty` units for `HOLD_TTL_SECONDS` (2 minutes by default). Answers 409
    /// `insufficient_stock`, with `available`, when the product cannot cover `qty`. Never
    /// oversells, however many requests arrive at once.
    #[oai(
        path = "/api/holds",
        method = "post",
        operation_id = "createHold",
        transform = "hold_guards"
    )]
    async fn create_hold(
        &self,
        purchaser: Purchaser,
        /// Optional client idempotency key (IETF httpapi draft; 1 to 255 printable ASCII
        /// characters, bare or in double quotes; trailing spaces inside the quotes are not part
        /// of it). The same key and body within 24 hours replays the first answer
        /// (`Idempotent-Replayed: true`); another body is 422 `idempotency_key_mismatch`; a key
        /// still running 409 `idempotency_key_in_use`. With `BUYER_AUTH=jwt`, per buyer.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        key: IdempotencyKey,
        /// With `BUYER_AUTH=none`, on a product with queue admission: the `client_secret` of
        /// the ticket named by `ticket_id` (read with the buyer's other credentials; declared
        /// here so that generated clients can send it).
        #[oai(name = "Client-Secret")]
        _ticket_secret: Header<Option<String>>,
        body: JsonBody<CreateHold>,
        req: &Request,
    ) -> HoldAnswer {
        let state = &self.state;
        let caller = purchaser.0;
        let claim = match key
            .claim(state, idempotency::HOLDS, &caller, &body.raw)
            .await
        {
            Ok(claim) => claim,
            Err(early) => return early_hold(early),
        };
        let secret = claim.as_ref().and_then(Claim::hold_secret);
        let (max_qty, max_lines) = (state.max_hold_qty, state.max_hold_lines);
        let asked = match asked(&caller, &body, claim.as_ref(), max_qty, max_lines) {
            Ok(asked) => asked,
            Err(refusal) => return refused_early(state, claim.as_ref(), refusal).await,
        };
        let gone = crate::connections::client_gone(req);
        let (outcome, asked_for) = match asked {
            Asked::One(product, request) => (
                state.holds.serve(product, request, gone).await,
                Some(product),
            ),
            Asked::Cart(cart) => (state.holds.serve_cart(cart, gone).await, None),
        };
        hold_answer(outcome, secret, asked_for)
    }

    /// Give a hold more time
    ///
    /// An active hold (every line of a cart) now expires `HOLD_TTL_SECONDS` from now, but never
    /// later than `HOLD_MAX_LIFETIME_SECONDS` after it was made; at most `HOLD_MAX_EXTENSIONS`
    /// times (then 409 `extension_limit`, as when the lifetime leaves nothing to add). A hold
    /// that is not active (consumed, released, or past its time, swept or not) answers 409
    /// `hold_not_active`. Only for the hold's owner.
    #[oai(
        path = "/api/holds/:id/extend",
        method = "post",
        operation_id = "extendHold",
        transform = "identified"
    )]
    async fn extend_hold(
        &self,
        owner: Owner,
        /// The hold's id.
        id: Path<i64>,
    ) -> Result<HoldExtended, Problems<ExtendHoldProblems>> {
        let state = &self.state;
        let access = owner.0.access();
        let hold =
            holds::extend_hold(&state.db, HoldId::new(id.0), access, state.extensions).await?;
        metrics::counter!("holds_extended_total").increment(1);
        Ok(HoldExtended::Ok(Json(hold.into())))
    }

    /// Get a hold
    ///
    /// `status` tells whether it still reserves stock. Only for the hold's owner: anyone else
    /// is answered 404, as for a hold that does not exist.
    #[oai(
        path = "/api/holds/:id",
        method = "get",
        operation_id = "getHold",
        transform = "identified"
    )]
    async fn get_hold(
        &self,
        owner: Owner,
        /// The hold's id.
        id: Path<i64>,
    ) -> Result<HoldFound, Problems<GetHoldProblems>> {
        let hold = holds::get_hold(&self.state.db, HoldId::new(id.0), owner.0.access()).await?;
        Ok(HoldFound::Ok(Json(hold.into())))
    }

    /// Release an active hold
    ///
    /// Its stock is available again at once. A hold that is consumed, expired or already
    /// released answers 409 `hold_not_active`. (The example releases hold 2: on a fresh
    /// database, hold 1 became order 1 in the examples before, so make a second hold first.)
    #[oai(
        path = "/api/holds/:id",
        method = "delete",
        operation_id = "releaseHold",
        transform = "identified"
    )]
    async fn release_hold(
        &self,
        owner: Owner,
        /// The hold's id.
        id: Path<i64>,
    ) -> Result<HoldReleased, Problems<ReleaseHoldProblems>> {
        let access = owner.0.access();
        let hold = holds::release_hold(&self.state.db, HoldId::new(id.0), access).await?;
        Ok(HoldReleased::Ok(Json(hold.into())))
    }
}
