use std::sync::Arc;

use entity::orders::{self, PaymentEvent, PaymentResult, PaymentStatus};
use poem::http::StatusCode;
use poem_openapi::{Object, OpenApi, param::Header, payload::Json};

use super::{ApiTags, orders::OrderState};
use crate::{
    AppState,
    error::ApiError,
    payload::RawJson,
    signature::{self, SignedHeaders},
    types::Text,
};

/// A payment gateway's event.
#[derive(Debug, Object)]
#[oai(example)]
pub struct PaymentWebhook {
    /// Unique per event, 1 to 255 characters; a retry of the same event repeats it.
    pub idempotency_key: Text,
    /// The order paid for. When the webhook may arrive before the order exists, also send
    /// `hold_id`.
    pub order_id: i64,
    /// `success` or `failure`.
    pub status: Text,
    /// The hold the order is (or will be) made from.
    pub hold_id: Option<i64>,
    /// Must match the hold's product when sent.
    pub product_id: Option<i64>,
    /// Must match the hold's quantity when sent.
    pub quantity: Option<i64>,
}

impl poem_openapi::types::Example for PaymentWebhook {
    fn example() -> Self {
        Self {
            idempotency_key: Text("pay_7f3a9c".into()),
            order_id: 456,
            status: Text("success".into()),
            hold_id: Some(123),
            product_id: None,
            quantity: None,
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
    /// The event's status, echoed.
    pub status: String,
    /// The order's status after the event.
    pub order_status: OrderState,
}

impl poem_openapi::types::Example for PaymentProcessed {
    fn example() -> Self {
        Self {
            processed: true,
            duplicate: false,
            order_id: 456,
            status: "success".into(),
            order_status: OrderState::Paid,
        }
    }
}

impl From<PaymentResult> for PaymentProcessed {
    fn from(r: PaymentResult) -> Self {
        Self {
            processed: true,
            duplicate: r.duplicate,
            order_id: r.order_id,
            status: r.status.as_str().to_owned(),
            order_status: r.order_status.into(),
        }
    }
}

pub struct PaymentsApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Payments")]
impl PaymentsApi {
    /// Payment webhook: settle an order.
    ///
    /// `success` pays a pending order, `failure` cancels it (its units are available again).
    /// The same `idempotency_key` with the same body answers the first result again with
    /// `duplicate: true` and no second effect; with another body, 422
    /// `idempotency_key_mismatch`. A 404 or 409 records nothing, so a retry can succeed later.
    /// With `WEBHOOK_SECRET` set, the Standard Webhooks headers are required (401
    /// `invalid_signature` otherwise).
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
        /// Space-separated `v1,<base64 HMAC-SHA256>` signatures.
        #[oai(name = "webhook-signature")]
        webhook_signature: Header<Option<String>>,
        body: RawJson<PaymentWebhook>,
    ) -> Result<Json<PaymentProcessed>, ApiError> {
        if let Some(secret) = &self.state.webhook_secret {
            let headers = SignedHeaders {
                id: webhook_id.0.as_deref(),
                timestamp: webhook_timestamp.0.as_deref(),
                signature: webhook_signature.0.as_deref(),
            };
            let now = chrono::Utc::now().timestamp();
            if let Err(e) = signature::verify(&secret.0, &headers, &body.raw, now) {
                metrics::counter!("webhooks_total", "outcome" => "bad_signature").increment(1);
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_signature",
                    e.to_string(),
                ));
            }
        }
        let event = validate(body.value)?;
        let result = orders::apply_payment(&self.state.db, &event).await?;
        Ok(Json(result.into()))
    }
}

fn validate(w: PaymentWebhook) -> Result<PaymentEvent, ApiError> {
    let key = w.idempotency_key.0;
    if key.is_empty() || key.chars().count() > 255 {
        return Err(ApiError::validation(
            "idempotency_key must be 1 to 255 characters",
        ));
    }
    let status = PaymentStatus::parse(&w.status)
        .ok_or_else(|| ApiError::validation("status must be success or failure"))?;
    Ok(PaymentEvent {
        idempotency_key: key,
        order_id: w.order_id,
        status,
        hold_id: w.hold_id,
        product_id: w.product_id,
        quantity: w.quantity,
    })
}
