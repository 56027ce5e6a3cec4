use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{
    DomainError, HoldStatus, Quantity,
    holds::{self, HoldRequest, HoldView},
    idempotency::{Keyed, StoredResponse},
    ownership::ClientSecret,
    types::{BuyerId, HoldId, ProductId},
};
use poem::{Endpoint, Request, Response, http::StatusCode, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Header, Path},
};
use serde::Deserialize;

use super::{ApiTags, problems};
use crate::{
    AppState,
    buyers::{self, Caller, Owner, Purchaser, identified},
    error::{ApiError, Problems},
    idempotency::{self, KeyCheck},
    rate_limit,
    types::{Json, JsonBody},
};

/// Ask for a hold on `qty` units of a product.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CreateHold {
    pub product_id: i64,
    /// 1 to `MAX_HOLD_QTY` (10 by default; the `maximum` here is this server's).
    #[oai(validator(minimum(value = "1")))]
    pub qty: i32,
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
}

impl poem_openapi::types::Example for CreateHold {
    fn example() -> Self {
        Self {
            product_id: 1,
            qty: 2,
            buyer_id: Some("user-42".into()),
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
        }
    }
}

impl From<HoldView> for Hold {
    fn from(h: HoldView) -> Self {
        Self {
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

/// How a keyed hold's answer is written down in its batch, to be replayed byte for byte.
fn render_hold(answer: &Result<HoldView, DomainError>) -> Option<StoredResponse> {
    crate::idempotency::stored(
        answer
            .clone()
            .map(|h| (StatusCode::CREATED, Hold::from(h)))
            .map_err(ApiError::from),
    )
}

#[derive(ApiResponse)]
#[oai(header(
    name = "Idempotent-Replayed",
    ty = "Option<bool>",
    description = "`true` when this is the stored answer to an earlier request with the same `Idempotency-Key` and body."
))]
pub enum HoldCreated {
    /// The stock is reserved until `expires_at`.
    #[oai(status = 201)]
    Created(
        Json<Hold>,
        /// The new hold's path.
        #[oai(header = "Location")]
        String,
    ),
}

#[derive(ApiResponse)]
pub enum HoldFound {
    /// The hold; `status` says whether it still reserves stock.
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
    SaleNotStarted, SaleEnded, IdempotencyKeyInUse, PayloadTooLarge, UnsupportedMediaType,
    ValidationError, BuyerIdRequired, IdempotencyKeyMismatch, RateLimited, Internal, Unavailable,
]);
problems!(GetHoldProblems = "getHold": [
    MalformedRequest, Unauthorized, HoldNotFound, Internal, Unavailable,
]);
problems!(ReleaseHoldProblems = "releaseHold": [
    MalformedRequest, Unauthorized, HoldNotFound, HoldNotActive, Internal, Unavailable,
]);

pub struct HoldsApi {
    pub state: Arc<AppState>,
}

/// `createHold`'s own middleware, attached to the operation rather than to its path: who the
/// buyer is, the per-client rate limit, then idempotency keys.
fn hold_guards(ep: impl Endpoint + 'static) -> impl Endpoint<Output = Response> {
    buyers::identified(rate_limit::limited(idempotency::keyed(
        ep,
        idempotency::HOLDS,
        Some(render_hold),
    )))
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
        /// characters, bare or in double quotes). A retry with the same key and body replays the
        /// first answer (header `Idempotent-Replayed: true`) with no second effect; the same key
        /// with another body answers 422 `idempotency_key_mismatch`; while the first request
        /// still runs, 409 `idempotency_key_in_use`. Trailing spaces of a quoted key are not
        /// part of it. Keys are kept 24 hours, across all API processes; with
        /// `BUYER_AUTH=jwt` each buyer's keys are its own.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        _idempotency_key: Header<Option<String>>,
        body: JsonBody<CreateHold>,
        keys: Data<&KeyCheck>,
        req: &Request,
    ) -> Result<HoldCreated, Problems<CreateHoldProblems>> {
        let max = self.state.max_hold_qty;
        let caller = purchaser.0;
        let buyer = buyer_of(&caller, body.buyer_id.as_deref());
        let result = match (Quantity::new(i64::from(body.qty), max), buyer) {
            (None, _) => Err(ApiError::validation(
                "qty",
                format!("must be between 1 and {max}"),
            )),
            (_, Err(e)) => Err(e),
            (Some(qty), Ok(buyer)) => {
                // An anonymous buyer owns the hold by its secret: derived from the key of a
                // keyed request (so a replay answers it again), random otherwise.
                let secret = matches!(caller, Caller::Anonymous { .. }).then(|| {
                    keys.hold_secret
                        .clone()
                        .unwrap_or_else(ClientSecret::random)
                });
                let request = HoldRequest {
                    buyer,
                    secret,
                    keyed: keys.request.clone().map(|request| Keyed {
                        request,
                        render: render_hold,
                    }),
                    key_look_up: keys.look_up.clone(),
                    client_gone: crate::connections::client_gone(req),
                    ..HoldRequest::new(qty)
                };
                let product_id = ProductId::new(body.product_id);
                let answer = match &self.state.hold_coalescer {
                    Some(coalescer) => coalescer.create_hold(product_id, request).await,
                    None => {
                        let (db, ttl) = (&self.state.db, self.state.hold_ttl);
                        // Boxed: the transaction's future is large, and every request's
                        // future would otherwise carry (and copy) room for it.
                        Box::pin(holds::create_hold(db, product_id, request, ttl)).await
                    }
                };
                match answer {
                    // Its key had finished: the idempotency layer answers with what the
                    // batch found.
                    Err(DomainError::AnsweredByKey) => {
                        return Err(idempotency::answered_by_key().into());
                    }
                    answer => answer.map_err(ApiError::from),
                }
            }
        };
        if let Err(e) = &result {
            metrics::counter!("holds_rejected_total", "reason" => e.code().as_str()).increment(1);
        }
        let hold = Hold::from(result?);
        let path = crate::locations::hold(hold.hold_id);
        Ok(HoldCreated::Created(Json(hold), path))
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
