use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{
    OrderStatus,
    operations::idempotency::Replay,
    operations::orders,
    types::{HoldId, OrderId},
    views::{OrderCreated, OrderView},
};
use poem::{Endpoint, Response};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, param::Path};
use serde::Deserialize;

use super::{ApiTags, problems};
use crate::{
    AppState,
    buyers::{self, Owner, identified},
    error::{ApiError, ProblemCode, Problems},
    idempotency::{self, Early, IdempotencyKey},
    types::{Json, JsonBody},
};

/// Turn a hold into an order.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct CreateOrder {
    pub hold_id: i64,
}

impl poem_openapi::types::Example for CreateOrder {
    fn example() -> Self {
        Self { hold_id: 1 }
    }
}

/// The state of an order: `pending` (waiting for the payment webhook; cancelled after
/// `PAYMENT_TIMEOUT_SECONDS`), `paid` (the units are sold) or `cancelled` (payment failed or
/// timed out; the units are available again).
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OrderState {
    Pending,
    Paid,
    Cancelled,
}

impl From<OrderStatus> for OrderState {
    fn from(s: OrderStatus) -> Self {
        match s {
            OrderStatus::Pending => Self::Pending,
            OrderStatus::Paid => Self::Paid,
            OrderStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// An order.
#[derive(Debug, Object)]
#[oai(example)]
pub struct Order {
    pub order_id: i64,
    pub hold_id: i64,
    pub product_id: i64,
    #[oai(validator(minimum(value = "1")))]
    pub quantity: i32,
    /// Price × quantity, a decimal string with two places, exact.
    #[oai(validator(pattern = r"^[0-9]+\.[0-9]{2}$"))]
    pub total_price: String,
    // Described by `OrderState` itself: a description here would wrap the `$ref` in `allOf`.
    pub status: OrderState,
    /// When the order was made (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
    /// The buyer of the hold it was made from; null when none was named.
    pub buyer_id: Option<String>,
    /// Paid for, but its units could not be delivered (the payment came after the order was
    /// cancelled and its units were sold): the payment is owed back. Operators list these at
    /// `GET /api/admin/orders?refund_required=true`.
    pub refund_required: bool,
    /// For an order made from a cart: its lines, as the hold had them (`product_id` and
    /// `quantity` above are the first line's; `total_price` is the whole order's). Only on
    /// such orders.
    #[oai(skip_serializing_if_is_none)]
    pub lines: Option<Vec<super::holds::HoldLine>>,
}

impl poem_openapi::types::Example for Order {
    fn example() -> Self {
        Self {
            order_id: 1,
            hold_id: 1,
            product_id: 1,
            quantity: 2,
            total_price: "199.98".into(),
            status: OrderState::Pending,
            created_at: DateTime::from_timestamp(1_796_139_000, 0).unwrap_or_default(),
            buyer_id: Some("user-42".into()),
            refund_required: false,
            lines: None,
        }
    }
}

impl From<OrderView> for Order {
    fn from(o: OrderView) -> Self {
        Self {
            order_id: o.id.get(),
            hold_id: o.hold_id.get(),
            product_id: o.product_id.get(),
            quantity: o.quantity,
            total_price: o.total.to_string(),
            status: o.status.into(),
            created_at: o.created_at,
            buyer_id: o.buyer_id,
            refund_required: o.refund_required,
            lines: match o.lines.is_empty() {
                true => None,
                false => Some(o.lines.into_iter().map(Into::into).collect()),
            },
        }
    }
}

#[derive(ApiResponse)]
pub enum OrderPlaced {
    /// The hold became this pending order.
    #[oai(status = 201)]
    Created(
        Json<Order>,
        /// The new order's path.
        #[oai(header = "Location")]
        String,
        /// `true` when this is the stored answer to an earlier request with the same
        /// `Idempotency-Key` and body.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
    /// The hold had already become this order (a retry); its current status.
    #[oai(status = 200)]
    Existing(
        Json<Order>,
        /// `true` when this is the stored answer to an earlier request with the same
        /// `Idempotency-Key` and body.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
}

impl OrderPlaced {
    /// The answer for an order made or found, replayed or not.
    fn of(created: OrderCreated, replayed: bool) -> Self {
        let replayed = replayed.then_some(true);
        match created {
            OrderCreated::New(o) => {
                let path = crate::locations::order(o.id.get());
                Self::Created(Json(o.into()), path, replayed)
            }
            OrderCreated::Existing(o) => Self::Existing(Json(o.into()), replayed),
        }
    }
}

type OrderAnswer = Result<OrderPlaced, Problems<CreateOrderProblems>>;

/// What a keyed order request is answered before it runs.
fn early_order(early: Early) -> OrderAnswer {
    match early {
        Early::Replay(Replay::Order(created)) => Ok(OrderPlaced::of(created, true)),
        Early::Replay(Replay::Refused(refusal)) => Err(ApiError::from(refusal).replayed().into()),
        Early::Replay(Replay::Hold(_)) => Err(ApiError::new(
            ProblemCode::Internal,
            "internal error: a hold found under an order's key",
        )
        .into()),
        Early::Refused(refusal) => Err(refusal.into()),
    }
}

#[derive(ApiResponse)]
pub enum OrderFound {
    /// The order and its current status.
    #[oai(status = 200)]
    Ok(Json<Order>),
}

problems!(CreateOrderProblems = "createOrder", keyed = true: [
    MalformedRequest, Unauthorized, HoldNotFound, HoldExpired, HoldReleased, IdempotencyKeyInUse,
    PayloadTooLarge, UnsupportedMediaType, IdempotencyKeyMismatch, Internal, Unavailable,
]);
problems!(GetOrderProblems = "getOrder": [
    MalformedRequest, Unauthorized, OrderNotFound, Internal, Unavailable,
]);

pub struct OrdersApi {
    pub state: Arc<AppState>,
}

/// `createOrder`'s own middleware, attached to the operation rather than to its path: who the
/// buyer is.
fn order_guards(ep: impl Endpoint + 'static) -> impl Endpoint<Output = Response> {
    buyers::identified(ep)
}

#[OpenApi(tag = "ApiTags::Orders")]
impl OrdersApi {
    /// Turn an active hold into a pending order
    ///
    /// The hold is the order's idempotency key: asking again for the same hold answers 200 with
    /// the same order, however many requests arrive at once. Holds that expired or were released
    /// answer 409 `hold_expired` / `hold_released`. Only the hold's owner may: for anyone else
    /// the hold does not exist (404). The total is the price when the hold was made × its
    /// quantity.
    #[oai(
        path = "/api/orders",
        method = "post",
        operation_id = "createOrder",
        transform = "order_guards"
    )]
    async fn create_order(
        &self,
        owner: Owner,
        /// Optional client idempotency key (IETF httpapi draft; 1 to 255 printable ASCII
        /// characters, bare or in double quotes). A retry with the same key and body replays the
        /// first answer (header `Idempotent-Replayed: true`) with no second effect; the same key
        /// with another body answers 422 `idempotency_key_mismatch`; while the first request
        /// still runs, 409 `idempotency_key_in_use`. Trailing spaces of a quoted key are not
        /// part of it. Keys are kept 24 hours, across all API processes.
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        key: IdempotencyKey,
        body: JsonBody<CreateOrder>,
    ) -> OrderAnswer {
        let state = &self.state;
        let claim = match key
            .claim(state, idempotency::ORDERS, &owner.0, &body.raw)
            .await
        {
            Ok(claim) => claim,
            Err(early) => return early_order(early),
        };
        let (hold, access) = (HoldId::new(body.hold_id), owner.0.access());
        let key = claim.as_ref().map(|c| &**c.key());
        let created = orders::create_order(&state.db, hold, access, key).await?;
        Ok(OrderPlaced::of(created, false))
    }

    /// Get an order and its current status
    ///
    /// Only for the owner of the hold it was made from: anyone else is answered 404, as for an
    /// order that does not exist.
    #[oai(
        path = "/api/orders/:id",
        method = "get",
        operation_id = "getOrder",
        transform = "identified"
    )]
    async fn get_order(
        &self,
        owner: Owner,
        /// The order's id.
        id: Path<i64>,
    ) -> Result<OrderFound, Problems<GetOrderProblems>> {
        let order = orders::get_order(&self.state.db, OrderId::new(id.0), owner.0.access()).await?;
        Ok(OrderFound::Ok(Json(order.into())))
    }
}
