//! Payment webhooks, applied over the order state machine.
//!
//! Each webhook idempotency key has exactly one effect: the event row is inserted first, in the
//! same transaction as its effect, and the unique key makes every concurrent twin wait for the
//! first and then answer as its duplicate.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, SqlErr,
};

use crate::{
    Db, DomainError, Money,
    db::{now, with_retry},
    hold,
    operations::orders::{count_status_change, log_order_created, order_for_hold},
    operations::sweeps::{ExpiredHold, log_expired, reclaim_expired},
    order::{self, OrderStatus},
    rules::ownership::Access,
    rules::transitions::{
        lock_order, lock_order_lines, lock_product, mark_refund_required, move_order,
    },
    types::{HoldId, OrderId, ProductId},
    views::OrderView,
    webhook_event::{self, WebhookConflict},
};

/// The `status` of a payment webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Success,
    Failure,
}

impl PaymentStatus {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// A payment webhook, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    pub idempotency_key: String,
    pub order_id: OrderId,
    pub status: PaymentStatus,
    pub hold_id: Option<HoldId>,
    pub product_id: Option<ProductId>,
    pub quantity: Option<i64>,
    /// What the gateway charged, when it says: it must be the order's total.
    pub amount: Option<Money>,
}

impl PaymentEvent {
    /// SHA-256 of the event's fields in a canonical form (sorted keys, no spacing), so the same
    /// fields and values give the same fingerprint however the gateway formats its JSON.
    pub fn fingerprint(&self) -> String {
        let mut canonical = serde_json::json!({
            "idempotency_key": self.idempotency_key,
            "order_id": self.order_id.get(),
            "status": self.status.as_str(),
            "hold_id": self.hold_id.map(HoldId::get),
            "product_id": self.product_id.map(ProductId::get),
            "quantity": self.quantity,
        });
        // Only when sent, so that events stored before `amount` existed keep their fingerprint.
        if let (Some(amount), Some(fields)) = (self.amount, canonical.as_object_mut()) {
            fields.insert("amount".into(), amount.to_string().into());
        }
        crate::rules::keys::fingerprint_json(&canonical)
    }
}

/// The `outcome` labels of `webhooks_total` counted here (the API adds `bad_signature`), so a
/// process can show each at 0 from its start.
pub const WEBHOOK_OUTCOMES: [&str; 5] =
    ["processed", "duplicate", "conflict", "mismatch", "rejected"];

/// What a webhook did, as answered to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentResult {
    pub duplicate: bool,
    pub order_id: OrderId,
    pub status: PaymentStatus,
    pub order_status: OrderStatus,
    /// Why the event could not have its normal effect (logged as `webhook.conflict`).
    pub conflict: Option<WebhookConflict>,
    /// The event made its order from `hold_id` (the webhook came first): the new order.
    pub created: Option<OrderView>,
    /// The event marked its order `refund_required` (a success on a cancelled order whose
    /// units are gone): that order.
    pub refund_owed: Option<OrderView>,
    /// The products of the order's lines, one per line (for the per-product counters).
    pub products: Vec<ProductId>,
    /// The event moved the order to `order_status` from another status.
    pub changed: bool,
}

/// Applies a payment webhook exactly once per idempotency key (see `docs/payments.md`). Errors
/// record nothing, so the gateway's retry can succeed later.
pub async fn apply_payment(db: &Db, event: &PaymentEvent) -> Result<PaymentResult, DomainError> {
    let fingerprint = event.fingerprint();
    let outcome = with_retry(None, || {
        db.write(async |txn| record_and_apply(txn, event, &fingerprint, now()).await)
    })
    .await;
    let result = match outcome {
        Ok(Applied::Done(result, reclaimed)) => {
            log_expired(&reclaimed, "api");
            if let Some(order) = &result.created {
                log_order_created(order);
            }
            if let Some(order) = &result.refund_owed {
                log_refund_required(order, &event.idempotency_key);
            }
            *result
        }
        Ok(Applied::AlreadyRecorded) => duplicate_of(db, event, &fingerprint).await?,
        Err(err) => {
            match &err {
                DomainError::HoldExpired(_) | DomainError::HoldReleased(_) => {
                    log_conflict(event, None, None, conflict_reason(&err));
                }
                DomainError::AmountMismatch { order, .. } => log_conflict(
                    event,
                    order.map(|(id, _)| id),
                    order.map(|(_, status)| status),
                    "amount_mismatch",
                ),
                _ => {}
            }
            if !matches!(err, DomainError::IdempotencyKeyMismatch) {
                metrics::counter!("webhooks_total", "outcome" => "rejected").increment(1);
            }
            return Err(err);
        }
    };
    tracing::info!(
        metric = "webhook.processed",
        idempotency_key = %event.idempotency_key,
        order_id = result.order_id.get(),
        is_duplicate = result.duplicate,
        status = event.status.as_str(),
        order_status = result.order_status.as_str(),
        "payment webhook processed"
    );
    let outcome = if result.duplicate {
        "duplicate"
    } else if result.conflict.is_some() {
        "conflict"
    } else {
        "processed"
    };
    metrics::counter!("webhooks_total", "outcome" => outcome).increment(1);
    if !result.duplicate {
        if let Some(reason) = result.conflict {
            log_conflict(
                event,
                Some(result.order_id),
                Some(result.order_status),
                reason.as_str(),
            );
        }
        if result.changed {
            count_status_change(result.order_status, &result.products);
        }
    }
    Ok(result)
}

enum Applied {
    /// With the expired holds a late success reclaimed to pay its order.
    Done(Box<PaymentResult>, Vec<ExpiredHold>),
    /// The key was recorded by someone else first (maybe at this very moment).
    AlreadyRecorded,
}

async fn record_and_apply(
    txn: &DatabaseTransaction,
    event: &PaymentEvent,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<Applied, DomainError> {
    // 1. The key first: a concurrent twin blocks here until this transaction ends, then fails
    //    on the unique key and answers as a duplicate.
    let record = webhook_event::ActiveModel {
        idempotency_key: Set(event.idempotency_key.clone()),
        fingerprint: Set(fingerprint.to_owned()),
        order_id: Set(event.order_id),
        event_status: Set(event.status.as_str().to_owned()),
        order_status: Set(OrderStatus::Pending),
        conflict: Set(None),
        created_at: Set(now),
        ..Default::default()
    };
    let record_id = match webhook_event::Entity::insert(record).exec(txn).await {
        Ok(r) => r.last_insert_id,
        Err(e) if is_unique_violation(&e) => return Ok(Applied::AlreadyRecorded),
        Err(e) => return Err(e.into()),
    };

    // 2. The order: by id, or made from the hold when the webhook came first.
    let mut created = None;
    let order = match lock_order(txn, event.order_id).await {
        // A cart's inner rows are not orders of their own to anyone outside.
        Ok(order) if order.is_inner_line() => {
            return Err(DomainError::OrderNotFound(event.order_id));
        }
        Ok(order) => {
            if let Some(h) = event.hold_id
                && h != order.hold_id
            {
                return Err(DomainError::HoldMismatch(format!(
                    "order {} was made from hold {}, not {h}",
                    order.id, order.hold_id
                )));
            }
            order
        }
        Err(DomainError::OrderNotFound(_)) => {
            let hold_id = event
                .hold_id
                .ok_or(DomainError::OrderNotFound(event.order_id))?;
            check_hold_matches(txn, event, hold_id).await?;
            let (rows, new) = order_for_hold(txn, hold_id, Access::Service, now).await?;
            if new {
                created = OrderView::of_rows(&rows);
            }
            // The order's first row was created or found; lock it for the change below.
            let first = rows
                .first()
                .ok_or_else(|| DomainError::Invariant("an order of no rows".into()))?;
            lock_order(txn, first.id).await?
        }
        Err(e) => return Err(e),
    };
    // Every row of a cart's order moves with it.
    let rows = lock_order_lines(txn, order.clone()).await?;
    let total_cents: i64 = rows.iter().map(|o| o.total_cents).sum();

    // 3. What was charged, when the gateway says: the order's total or nothing happens.
    if let Some(amount) = event.amount
        && amount.cents() != total_cents
    {
        return Err(DomainError::AmountMismatch {
            order: created.is_none().then_some((order.id, order.status)),
            total: Money::from_cents(total_cents),
        });
    }

    // 4. The effect, through the order state machine.
    let mut refund_owed = None;
    let mut reclaimed = Vec::new();
    let (order_status, conflict) = match (order.status, event.status) {
        (OrderStatus::Pending, PaymentStatus::Success) => {
            move_order(txn, &rows, OrderStatus::Paid, now).await?;
            (OrderStatus::Paid, None)
        }
        (OrderStatus::Pending, PaymentStatus::Failure) => {
            move_order(txn, &rows, OrderStatus::Cancelled, now).await?;
            (OrderStatus::Cancelled, None)
        }
        // A second payment for a paid order (the same key is a duplicate, answered above):
        // nothing changes, and people must check whether the buyer was charged twice.
        (OrderStatus::Paid, PaymentStatus::Success) => {
            (OrderStatus::Paid, Some(WebhookConflict::AlreadyPaid))
        }
        (OrderStatus::Paid, PaymentStatus::Failure) => {
            (OrderStatus::Paid, Some(WebhookConflict::FailureAfterPaid))
        }
        (OrderStatus::Cancelled, PaymentStatus::Failure) => (OrderStatus::Cancelled, None),
        (OrderStatus::Cancelled, PaymentStatus::Success) => {
            // Expired holds count as available, as reads say, even before a sweeper ran. The
            // products in id order, as every path that locks several takes them.
            let mut by_product: Vec<&order::Model> = rows.iter().collect();
            by_product.sort_by_key(|o| o.product_id);
            for line in by_product {
                let product = lock_product(txn, line.product_id).await?;
                let need = i64::from(line.quantity);
                let (_, swept) =
                    reclaim_expired(txn, line.product_id, now, product.available_stock, need)
                        .await?;
                reclaimed.extend(swept);
            }
            match move_order(txn, &rows, OrderStatus::Paid, now).await {
                Ok(()) => (OrderStatus::Paid, None),
                Err(DomainError::InsufficientStock { .. }) => {
                    // Money taken for units that are gone (all or nothing for a cart): owed
                    // back, and listed for operators.
                    if mark_refund_required(txn, &rows, now).await? {
                        refund_owed = OrderView::of_rows(&rows);
                    }
                    (
                        OrderStatus::Cancelled,
                        Some(WebhookConflict::SuccessAfterCancelledNoStock),
                    )
                }
                Err(e) => return Err(e),
            }
        }
    };

    // 5. The answer, stored with the key for its duplicates.
    webhook_event::Entity::update(webhook_event::ActiveModel {
        id: Set(record_id),
        order_id: Set(order.id),
        order_status: Set(order_status),
        conflict: Set(conflict),
        ..Default::default()
    })
    .exec(txn)
    .await?;
    Ok(Applied::Done(
        Box::new(PaymentResult {
            duplicate: false,
            order_id: order.id,
            status: event.status,
            order_status,
            conflict,
            created,
            refund_owed,
            products: rows.iter().map(|o| o.product_id).collect(),
            changed: order_status != order.status,
        }),
        reclaimed,
    ))
}

async fn check_hold_matches(
    txn: &DatabaseTransaction,
    event: &PaymentEvent,
    hold_id: HoldId,
) -> Result<(), DomainError> {
    if event.product_id.is_none() && event.quantity.is_none() {
        return Ok(());
    }
    let hold = hold::Entity::find_by_id(hold_id)
        .one(txn)
        .await?
        .ok_or(DomainError::HoldNotFound(hold_id))?;
    if let Some(p) = event.product_id
        && p != hold.product_id
    {
        return Err(DomainError::HoldMismatch(format!(
            "hold {hold_id} is for product {}, not {p}",
            hold.product_id
        )));
    }
    if let Some(q) = event.quantity
        && q != i64::from(hold.qty)
    {
        return Err(DomainError::HoldMismatch(format!(
            "hold {hold_id} is for {} units, not {q}",
            hold.qty
        )));
    }
    Ok(())
}

/// The stored answer for a key that was already recorded, or a mismatch if the body differs.
async fn duplicate_of(
    db: &Db,
    event: &PaymentEvent,
    fingerprint: &str,
) -> Result<PaymentResult, DomainError> {
    let stored = webhook_event::Entity::find()
        .filter(webhook_event::Column::IdempotencyKey.eq(event.idempotency_key.as_str()))
        .one(db.conn())
        .await?
        .ok_or_else(|| DomainError::Invariant("recorded webhook vanished".into()))?;
    if stored.fingerprint != fingerprint {
        metrics::counter!("webhooks_total", "outcome" => "mismatch").increment(1);
        return Err(DomainError::IdempotencyKeyMismatch);
    }
    Ok(PaymentResult {
        duplicate: true,
        order_id: stored.order_id,
        status: event.status,
        order_status: stored.order_status,
        conflict: stored.conflict,
        created: None,
        refund_owed: None,
        products: Vec::new(),
        changed: false,
    })
}

fn log_refund_required(order: &OrderView, idempotency_key: &str) {
    tracing::warn!(
        metric = "order.refund_required",
        order_id = order.id.get(),
        product_id = order.product_id.get(),
        quantity = order.quantity,
        idempotency_key,
        "a payment was taken for units that could not be delivered: refund it"
    );
    metrics::counter!("orders_refund_required_total").increment(1);
}

fn conflict_reason(err: &DomainError) -> &'static str {
    match err {
        DomainError::HoldExpired(_) => "hold_expired",
        DomainError::HoldReleased(_) => "hold_released",
        _ => "conflict",
    }
}

fn log_conflict(
    event: &PaymentEvent,
    order_id: Option<OrderId>,
    order_status: Option<OrderStatus>,
    reason: &str,
) {
    tracing::warn!(
        metric = "webhook.conflict",
        idempotency_key = %event.idempotency_key,
        order_id = order_id.map(OrderId::get),
        order_status = order_status.map(OrderStatus::as_str),
        reason,
        status = event.status.as_str(),
        "payment webhook could not have its normal effect"
    );
    metrics::counter!("webhook_conflicts_total", "reason" => reason.to_owned()).increment(1);
}

fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fingerprints are stored with their keys: what is hashed must not change (ids as plain
    /// integers), or every stored webhook would answer its retry as a mismatch.
    #[test]
    fn fingerprints_hash_ids_as_plain_integers() {
        let mut event = PaymentEvent {
            idempotency_key: "evt-1".into(),
            order_id: OrderId::new(1),
            status: PaymentStatus::Success,
            hold_id: Some(HoldId::new(2)),
            product_id: Some(ProductId::new(3)),
            quantity: Some(4),
            amount: None,
        };
        // SHA-256 of {"hold_id":2,"idempotency_key":"evt-1","order_id":1,"product_id":3,
        // "quantity":4,"status":"success"}.
        assert_eq!(
            event.fingerprint(),
            "a45d583902655fa7927bcf45664420991dc976298912ccad8681ee3b3938c2b1"
        );
        event.status = PaymentStatus::Failure;
        (event.hold_id, event.product_id, event.quantity) = (None, None, None);
        assert_eq!(
            event.fingerprint(),
            "730df8bff1af6df31ebc4a4d4457855e20472dfd5cff807dd4c8f1dc8025e63e"
        );
        // An amount, when sent, is part of the event.
        event.amount = Some(Money::from_cents(1250));
        assert_ne!(
            event.fingerprint(),
            "730df8bff1af6df31ebc4a4d4457855e20472dfd5cff807dd4c8f1dc8025e63e"
        );
    }
}
