use std::sync::Arc;

use entity::{
    Money,
    operations::payments::{self, PaymentEvent, PaymentResult, PaymentStatus},
    types::{HoldId, OrderId, ProductId},
};
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, param::Header};
use serde::Deserialize;

use super::{ApiTags, orders::OrderState, problems};
use crate::{
    AppState,
    error::{ApiError, ProblemCode, Problems},
    signature::{self, SignedHeaders},
    types::{Json, UnparsedJson, within},
};

/// The outcome a payment event reports: `success` (the order is paid) or `failure` (the
/// payment failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    Success,
    Failure,
}

impl From<WebhookStatus> for PaymentStatus {
    fn from(s: WebhookStatus) -> Self {
        match s {
            WebhookStatus::Success => Self::Success,
            WebhookStatus::Failure => Self::Failure,
        }
    }
}

impl From<PaymentStatus> for WebhookStatus {
    fn from(s: PaymentStatus) -> Self {
        match s {
            PaymentStatus::Success => Self::Success,
            PaymentStatus::Failure => Self::Failure,
        }
    }
}

/// A payment gateway's event.
#[derive(Debug, Object, Deserialize)]
#[oai(example)]
pub struct PaymentWebhook {
    /// Unique per event, 1 to 255 characters; a retry of the same event repeats it.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub idempotency_key: String,
    /// The order paid for. When the webhook may arrive before the order exists, also send
    /// `hold_id`: an unknown `order_id` is then made from that hold.
    pub order_id: i64,
    // Described by `WebhookStatus` itself: a description here would wrap the `$ref` in `allOf`.
    pub status: WebhookStatus,
    /// The hold the order is (or will be) made from. `null` is the same as leaving it out, here
    /// and in the next two.
    #[oai(skip_serializing_if_is_none)]
    pub hold_id: Option<i64>,
    /// When sent, must match the hold's product.
    #[oai(skip_serializing_if_is_none)]
    pub product_id: Option<i64>,
    /// When sent, must match the hold's quantity.
    #[oai(skip_serializing_if_is_none, validator(minimum(value = "1")))]
    pub quantity: Option<i32>,
    /// What the gateway charged, a decimal string (`"199.98"`). When sent, it must be the
    /// order's `total_price`: otherwise 422 `amount_mismatch` and nothing is recorded.
    #[oai(
        skip_serializing_if_is_none,
        validator(pattern = r"^[0-9]{1,16}(\.[0-9]{1,2})?$")
    )]
    #[serde(default)]
    pub amount: Option<String>,
}

impl poem_openapi::types::Example for PaymentWebhook {
    /// Pays for the order made from hold 1 (making it first when it does not exist yet), so
    /// that it works as it stands after the holds' and orders' examples.
    fn example() -> Self {
        Self {
            idempotency_key: "pay_0001".into(),
            order_id: 1,
            status: WebhookStatus::Success,
            hold_id: Some(1),
            product_id: None,
            quantity: None,
            amount: Some("199.98".into()),
        }
    }
}

/// What the event did.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PaymentProcessed {
    /// The event is recorded (always true in a 200).
    pub processed: bool,
    /// This idempotency key was seen before: the answer is the first one's, with no new effect.
    pub duplicate: bool,
    /// The real order (when the webhook made the order from `hold_id`, its new id).
    pub order_id: i64,
    // The event's status, echoed (described by `WebhookStatus`).
    pub status: WebhookStatus,
    // The order's status after the event (described by `OrderState`).
    pub order_status: OrderState,
}

impl poem_openapi::types::Example for PaymentProcessed {
    fn example() -> Self {
        Self {
            processed: true,
            duplicate: false,
            order_id: 1,
            status: WebhookStatus::Success,
            order_status: OrderState::Paid,
        }
    }
}

impl From<PaymentResult> for PaymentProcessed {
    fn from(r: PaymentResult) -> Self {
        Self {
            processed: true,
            duplicate: r.duplicate,
            order_id: r.order_id.get(),
            status: r.status.into(),
            order_status: r.order_status.into(),
        }
    }
}

#[derive(ApiResponse)]
pub enum WebhookAnswer {
    /// The event is recorded, and `order_status` is the order's status after it (also when
    /// the event could not change it: a failure after payment, a success on a cancelled order
    /// whose units are gone).
    #[oai(status = 200)]
    Ok(Json<PaymentProcessed>),
}

problems!(WebhookProblems = "paymentWebhook": [
    MalformedRequest, InvalidSignature, OrderNotFound, HoldNotFound, HoldExpired, HoldReleased,
    PayloadTooLarge, UnsupportedMediaType, ValidationError, HoldMismatch, AmountMismatch,
    IdempotencyKeyMismatch, Internal, Unavailable,
]);

pub struct PaymentsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Payments")]
impl PaymentsApi {
    /// Payment webhook: settle an order
    ///
    /// `success` pays a pending order, `failure` cancels it (its units are available again).
    /// The same `idempotency_key` with the same body answers the first result again with
    /// `duplicate: true` and no second effect; with another body, 422
    /// `idempotency_key_mismatch`. A 404, 409 or 422 records nothing, so a retry can succeed
    /// later. The Standard Webhooks headers are required (401 `invalid_signature` otherwise),
    /// checked on the body's exact bytes before it is read, unless the server runs with
    /// `WEBHOOK_ALLOW_UNSIGNED=true` (local development). A `success` with a new key for an
    /// order already paid changes nothing and is logged for people to check (`already_paid`).
    #[oai(
        path = "/api/payments/webhook",
        method = "post",
        operation_id = "paymentWebhook"
    )]
    async fn webhook(
        &self,
        /// Standard Webhooks message id (required when `WEBHOOK_SECRET` is set).
        #[oai(name = "webhook-id")]
        webhook_id: Header<Option<String>>,
        /// Unix seconds when the gateway signed the message.
        #[oai(name = "webhook-timestamp")]
        webhook_timestamp: Header<Option<String>>,
        /// Space-separated `v1,<base64 HMAC-SHA256>` signatures (at most 16 are tried).
        #[oai(name = "webhook-signature")]
        webhook_signature: Header<Option<String>>,
        body: UnparsedJson<PaymentWebhook>,
    ) -> Result<WebhookAnswer, Problems<WebhookProblems>> {
        if let Some(secret) = &self.state.webhook_secret {
            let headers = SignedHeaders {
                id: webhook_id.0.as_deref(),
                timestamp: webhook_timestamp.0.as_deref(),
                signature: webhook_signature.0.as_deref(),
            };
            let now = chrono::Utc::now().timestamp();
            if let Err(e) = signature::verify(&secret.0, &headers, &body.raw, now) {
                metrics::counter!("webhooks_total", "outcome" => "bad_signature").increment(1);
                return Err(ApiError::new(ProblemCode::InvalidSignature, e.to_string()).into());
            }
        }
        // Read only once it is known to come from the gateway.
        let event = validate(body.parse()?)?;
        let result = payments::apply_payment(&self.state.db, &event).await?;
        Ok(WebhookAnswer::Ok(Json(result.into())))
    }
}

/// What the document's pattern for `amount` says: 1 to 16 digits, then optionally a point and
/// one or two digits.
fn is_amount(s: &str) -> bool {
    let (whole, cents) = s.split_once('.').unwrap_or((s, "0"));
    let digits =
        |p: &str, max: usize| (1..=max).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    digits(whole, 16) && digits(cents, 2)
}

fn validate(w: PaymentWebhook) -> Result<PaymentEvent, ApiError> {
    let key = w.idempotency_key;
    if key.is_empty() || key.chars().count() > 255 {
        return Err(ApiError::validation(
            "idempotency_key",
            "must be 1 to 255 characters",
        ));
    }
    if let Some(q) = w.quantity {
        within("quantity", i64::from(q), 1, i64::from(i32::MAX))?;
    }
    let amount = match w.amount.as_deref() {
        None => None,
        Some(text) => Some(
            is_amount(text)
                .then(|| Money::parse_amount(text).ok())
                .flatten()
                .ok_or_else(|| {
                    ApiError::validation(
                        "amount",
                        "must be a decimal string with at most two places, like \"199.98\"",
                    )
                })?,
        ),
    };
    Ok(PaymentEvent {
        idempotency_key: key,
        order_id: OrderId::new(w.order_id),
        status: w.status.into(),
        hold_id: w.hold_id.map(HoldId::new),
        product_id: w.product_id.map(ProductId::new),
        quantity: w.quantity.map(i64::from),
        amount,
    })
}
