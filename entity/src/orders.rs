//! Orders and payment webhooks, as transactions over the hold and order state machines.
//!
//! A hold becomes at most one order (`orders.hold_id` is UNIQUE and the hold row is locked),
//! and each webhook idempotency key has exactly one effect: the event row is inserted first, in
//! the same transaction as its effect, and the unique key makes every concurrent twin wait for
//! the first and then answer as its duplicate.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
    sea_query::{LockBehavior, LockType},
};
use sha2::{Digest, Sha256};

use crate::{
    Db, Money, StockError,
    db::with_retry,
    hold::{self, HoldStatus},
    idempotency::{Keyed, check_in_txn, store_in_txn},
    order::{self, OrderStatus},
    stock::now,
    transitions::{
        clear_refund_required, lock_hold, lock_order, mark_refund_required, move_order,
        order_from_hold,
    },
    types::{HoldId, ProductId},
    webhook_event,
};

/// An order as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub id: i64,
    pub hold_id: HoldId,
    pub product_id: ProductId,
    pub quantity: i32,
    pub total: Money,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub buyer_id: Option<String>,
    /// Paid for, but its units could not be delivered: the payment is owed back.
    pub refund_required: bool,
}

impl From<&order::Model> for OrderView {
    fn from(o: &order::Model) -> Self {
        Self {
            id: o.id,
            hold_id: o.hold_id,
            product_id: o.product_id,
            quantity: o.quantity,
            total: Money::from_cents(o.total_cents),
            status: o.status,
            created_at: o.created_at,
            buyer_id: o.buyer_id.clone(),
            refund_required: o.refund_required,
        }
    }
}

/// Whether `create_order` made the order or found the one the hold had already become.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCreated {
    New(OrderView),
    Existing(OrderView),
}

pub async fn get_order(db: &Db, id: i64) -> Result<OrderView, StockError> {
    let model = db
        .read(|| async { Ok(order::Entity::find_by_id(id).one(db.conn()).await?) })
        .await?
        .ok_or(StockError::OrderNotFound(id))?;
    Ok(OrderView::from(&model))
}

/// Turns an active hold into a pending order; for a hold that already became an order, returns
/// that order (the hold is the order's natural idempotency key). With a client idempotency key,
/// the key and the answer are written in the order's transaction, refusals included.
pub async fn create_order(
    db: &Db,
    hold_id: HoldId,
    keyed: Option<Keyed<OrderCreated>>,
) -> Result<OrderCreated, StockError> {
    let outcome = with_retry(None, || {
        db.write(async |txn| {
            let Some(k) = &keyed else {
                return order_for_hold(txn, hold_id, now()).await.map(Ok);
            };
            if let Some(Err(taken)) = check_in_txn(txn, &[&k.request]).await?.pop() {
                return Err(taken);
            }
            let result = order_for_hold(txn, hold_id, now()).await;
            let answer = result
                .as_ref()
                .map(|(model, new)| created(model, *new))
                .map_err(Clone::clone);
            match (k.render)(&answer) {
                // A refusal is an answer too: it commits with its key (nothing else changed).
                Some(stored) => {
                    store_in_txn(txn, db.server(), &[(&k.request, stored)]).await?;
                    Ok(result)
                }
                // Not worth repeating (the database failed): roll back, retry or answer 503.
                None => result.map(Ok),
            }
        })
    })
    .await?;
    let (model, new) = outcome?;
    if new {
        log_order_created(&OrderView::from(&model));
    }
    Ok(created(&model, new))
}

/// `order.created`, for an order made by `POST /api/orders` or by a webhook that came first;
/// written once its transaction has committed.
fn log_order_created(order: &OrderView) {
    tracing::info!(
        metric = "order.created",
        order_id = order.id,
        hold_id = order.hold_id,
        product_id = order.product_id,
        quantity = order.quantity,
        "order created"
    );
    metrics::counter!("order_status_changes_total", "status" => "pending").increment(1);
}

fn created(model: &order::Model, new: bool) -> OrderCreated {
    let view = OrderView::from(model);
    if new {
        OrderCreated::New(view)
    } else {
        OrderCreated::Existing(view)
    }
}

/// Locks the hold and returns its order, creating it from an active hold. `true` if new.
async fn order_for_hold(
    txn: &DatabaseTransaction,
    hold_id: HoldId,
    now: DateTime<Utc>,
) -> Result<(order::Model, bool), StockError> {
    let hold = lock_hold(txn, hold_id).await?;
    match hold.effective_status(now) {
        HoldStatus::Consumed => {
            let order = order::Entity::find()
                .filter(order::Column::HoldId.eq(hold_id))
                .one(txn)
                .await?
                .ok_or_else(|| {
                    StockError::Invariant(format!("hold {hold_id} is consumed but has no order"))
                })?;
            Ok((order, false))
        }
        // An expired hold is left for the sweepers: this transaction may be rolled back (a
        // webhook records nothing when it cannot apply).
        HoldStatus::Expired => Err(StockError::HoldExpired(hold_id)),
        HoldStatus::Released => Err(StockError::HoldReleased(hold_id)),
        HoldStatus::Active => order_from_hold(txn, &hold, now).await,
    }
}

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
    pub order_id: i64,
    pub status: PaymentStatus,
    pub hold_id: Option<HoldId>,
    pub product_id: Option<ProductId>,
    pub quantity: Option<i64>,
}

impl PaymentEvent {
    /// SHA-256 of the event's fields in a canonical form (sorted keys, no spacing), so the same
    /// fields and values give the same fingerprint however the gateway formats its JSON.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::json!({
            "idempotency_key": self.idempotency_key,
            "order_id": self.order_id,
            "status": self.status.as_str(),
            "hold_id": self.hold_id,
            "product_id": self.product_id,
            "quantity": self.quantity,
        });
        let digest = Sha256::digest(canonical.to_string().as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a webhook did, as answered to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentResult {
    pub duplicate: bool,
    pub order_id: i64,
    pub status: PaymentStatus,
    pub order_status: OrderStatus,
    /// Why the event could not have its normal effect (logged as `webhook.conflict`).
    pub conflict: Option<String>,
    /// The event made its order from `hold_id` (the webhook came first): the new order.
    pub created: Option<OrderView>,
    /// The event marked its order `refund_required` (a success on a cancelled order whose
    /// units are gone): that order.
    pub refund_owed: Option<OrderView>,
}

/// Applies a payment webhook exactly once per idempotency key (see the README, "Orders and
/// payments"). Errors record nothing, so the gateway's retry can succeed later.
pub async fn apply_payment(db: &Db, event: &PaymentEvent) -> Result<PaymentResult, StockError> {
    let fingerprint = event.fingerprint();
    let outcome = with_retry(None, || {
        db.write(async |txn| record_and_apply(txn, event, &fingerprint, now()).await)
    })
    .await;
    let result = match outcome {
        Ok(Applied::Done(result)) => {
            if let Some(order) = &result.created {
                log_order_created(order);
            }
            if let Some(order) = &result.refund_owed {
                log_refund_required(order, &event.idempotency_key);
            }
            result
        }
        Ok(Applied::AlreadyRecorded) => duplicate_of(db, event, &fingerprint).await?,
        Err(err) => {
            if let StockError::HoldExpired(_) | StockError::HoldReleased(_) = err {
                log_conflict(event, None, None, conflict_reason(&err));
            }
            if !matches!(err, StockError::IdempotencyKeyMismatch) {
                metrics::counter!("webhooks_total", "outcome" => "rejected").increment(1);
            }
            return Err(err);
        }
    };
    tracing::info!(
        metric = "webhook.processed",
        idempotency_key = %event.idempotency_key,
        order_id = result.order_id,
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
        if let Some(reason) = &result.conflict {
            log_conflict(
                event,
                Some(result.order_id),
                Some(result.order_status),
                reason,
            );
        }
        if result.conflict.is_none() {
            metrics::counter!("order_status_changes_total", "status" => result.order_status.as_str())
                .increment(1);
        }
    }
    Ok(result)
}

enum Applied {
    Done(PaymentResult),
    /// The key was recorded by someone else first (maybe at this very moment).
    AlreadyRecorded,
}

async fn record_and_apply(
    txn: &DatabaseTransaction,
    event: &PaymentEvent,
    fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<Applied, StockError> {
    // 1. The key first: a concurrent twin blocks here until this transaction ends, then fails
    //    on the unique key and answers as a duplicate.
    let record = webhook_event::ActiveModel {
        idempotency_key: Set(event.idempotency_key.clone()),
        fingerprint: Set(fingerprint.to_owned()),
        order_id: Set(event.order_id),
        event_status: Set(event.status.as_str().to_owned()),
        order_status: Set(OrderStatus::Pending.as_str().to_owned()),
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
        Ok(order) => {
            if event.hold_id.is_some_and(|h| h != order.hold_id) {
                return Err(StockError::HoldMismatch(format!(
                    "order {} was made from hold {}, not {}",
                    order.id,
                    order.hold_id,
                    event.hold_id.unwrap_or_default()
                )));
            }
            order
        }
        Err(StockError::OrderNotFound(_)) => {
            let hold_id = event
                .hold_id
                .ok_or(StockError::OrderNotFound(event.order_id))?;
            check_hold_matches(txn, event, hold_id).await?;
            let (order, new) = order_for_hold(txn, hold_id, now).await?;
            if new {
                created = Some(OrderView::from(&order));
            }
            // The order row was created or found; lock it for the change below.
            lock_order(txn, order.id).await?
        }
        Err(e) => return Err(e),
    };

    // 3. The effect, through the order state machine.
    let mut refund_owed = None;
    let (order_status, conflict) = match (order.status, event.status) {
        (OrderStatus::Pending, PaymentStatus::Success) => {
            move_order(txn, &order, OrderStatus::Paid, now).await?;
            (OrderStatus::Paid, None)
        }
        (OrderStatus::Pending, PaymentStatus::Failure) => {
            move_order(txn, &order, OrderStatus::Cancelled, now).await?;
            (OrderStatus::Cancelled, None)
        }
        (OrderStatus::Paid, PaymentStatus::Success) => (OrderStatus::Paid, None),
        (OrderStatus::Paid, PaymentStatus::Failure) => {
            (OrderStatus::Paid, Some("failure_after_paid".to_owned()))
        }
        (OrderStatus::Cancelled, PaymentStatus::Failure) => (OrderStatus::Cancelled, None),
        (OrderStatus::Cancelled, PaymentStatus::Success) => {
            match move_order(txn, &order, OrderStatus::Paid, now).await {
                Ok(()) => (OrderStatus::Paid, None),
                Err(StockError::InsufficientStock { .. }) => {
                    // Money taken for units that are gone: owed back, and listed for operators.
                    if mark_refund_required(txn, &order, now).await? {
                        refund_owed = Some(OrderView::from(&order));
                    }
                    (
                        OrderStatus::Cancelled,
                        Some("success_after_cancelled_no_stock".to_owned()),
                    )
                }
                Err(e) => return Err(e),
            }
        }
    };

    // 4. The answer, stored with the key for its duplicates.
    webhook_event::Entity::update(webhook_event::ActiveModel {
        id: Set(record_id),
        order_id: Set(order.id),
        order_status: Set(order_status.as_str().to_owned()),
        conflict: Set(conflict.clone()),
        ..Default::default()
    })
    .exec(txn)
    .await?;
    Ok(Applied::Done(PaymentResult {
        duplicate: false,
        order_id: order.id,
        status: event.status,
        order_status,
        conflict,
        created,
        refund_owed,
    }))
}

async fn check_hold_matches(
    txn: &DatabaseTransaction,
    event: &PaymentEvent,
    hold_id: HoldId,
) -> Result<(), StockError> {
    if event.product_id.is_none() && event.quantity.is_none() {
        return Ok(());
    }
    let hold = hold::Entity::find_by_id(hold_id)
        .one(txn)
        .await?
        .ok_or(StockError::HoldNotFound(hold_id))?;
    if let Some(p) = event.product_id
        && p != hold.product_id
    {
        return Err(StockError::HoldMismatch(format!(
            "hold {hold_id} is for product {}, not {p}",
            hold.product_id
        )));
    }
    if let Some(q) = event.quantity
        && q != i64::from(hold.qty)
    {
        return Err(StockError::HoldMismatch(format!(
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
) -> Result<PaymentResult, StockError> {
    let stored = webhook_event::Entity::find()
        .filter(webhook_event::Column::IdempotencyKey.eq(event.idempotency_key.as_str()))
        .one(db.conn())
        .await?
        .ok_or_else(|| StockError::Invariant("recorded webhook vanished".into()))?;
    if stored.fingerprint != fingerprint {
        metrics::counter!("webhooks_total", "outcome" => "mismatch").increment(1);
        return Err(StockError::IdempotencyKeyMismatch);
    }
    Ok(PaymentResult {
        duplicate: true,
        order_id: stored.order_id,
        status: event.status,
        order_status: OrderStatus::parse(&stored.order_status).ok_or_else(|| {
            StockError::Invariant(format!("stored order status {}", stored.order_status))
        })?,
        conflict: stored.conflict,
        created: None,
        refund_owed: None,
    })
}

fn log_refund_required(order: &OrderView, idempotency_key: &str) {
    tracing::warn!(
        metric = "order.refund_required",
        order_id = order.id,
        product_id = order.product_id,
        quantity = order.quantity,
        idempotency_key,
        "a payment was taken for units that could not be delivered: refund it"
    );
    metrics::counter!("orders_refund_required_total").increment(1);
}

/// Orders by id ascending after `after`, at most `limit` (only those whose refund mark is
/// `refund_required`, when given); and whether more may follow.
pub async fn list_orders(
    db: &Db,
    refund_required: Option<bool>,
    after: i64,
    limit: u64,
) -> Result<(Vec<OrderView>, bool), StockError> {
    let rows = db
        .read(|| async {
            let mut query = order::Entity::find();
            if let Some(r) = refund_required {
                query = query.filter(order::Column::RefundRequired.eq(r));
            }
            Ok(query
                .filter(order::Column::Id.gt(after))
                .order_by_asc(order::Column::Id)
                .limit(limit + 1)
                .all(db.conn())
                .await?)
        })
        .await?;
    let more = rows.len() as u64 > limit;
    Ok((
        rows.iter()
            .take(limit as usize)
            .map(OrderView::from)
            .collect(),
        more,
    ))
}

/// An operator refunded the payment of an order marked `refund_required`: the mark goes.
/// An order with no refund due answers [`StockError::NoRefundDue`].
pub async fn mark_refunded(db: &Db, id: i64) -> Result<OrderView, StockError> {
    with_retry(None, || {
        db.write(async |txn| {
            let order = lock_order(txn, id).await?;
            clear_refund_required(txn, &order, now()).await?;
            let order = order::Model {
                refund_required: false,
                ..order
            };
            Ok(OrderView::from(&order))
        })
    })
    .await
}

fn conflict_reason(err: &StockError) -> &'static str {
    match err {
        StockError::HoldExpired(_) => "hold_expired",
        StockError::HoldReleased(_) => "hold_released",
        _ => "conflict",
    }
}

fn log_conflict(
    event: &PaymentEvent,
    order_id: Option<i64>,
    order_status: Option<OrderStatus>,
    reason: &str,
) {
    tracing::warn!(
        metric = "webhook.conflict",
        idempotency_key = %event.idempotency_key,
        order_id,
        order_status = order_status.map(OrderStatus::as_str),
        reason,
        status = event.status.as_str(),
        "payment webhook could not have its normal effect"
    );
    metrics::counter!("webhook_conflicts_total", "reason" => reason.to_owned()).increment(1);
}

/// An order the payment timeout cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOutOrder {
    pub order_id: i64,
    pub product_id: ProductId,
    pub quantity: i32,
}

/// Cancels up to `batch_size` pending orders created before `now - timeout`, oldest first,
/// skipping orders another sweeper (or a webhook) has locked: each order is cancelled once, and
/// its quantity is available again.
pub async fn cancel_unpaid_batch(
    db: &Db,
    timeout: chrono::Duration,
    batch_size: u64,
) -> Result<Vec<TimedOutOrder>, StockError> {
    let cancelled = with_retry(None, || {
        db.write(async |txn| {
            let now = now();
            let orders = order::Entity::find()
                .filter(order::Column::Status.eq(OrderStatus::Pending))
                .filter(order::Column::CreatedAt.lte(now - timeout))
                .order_by_asc(order::Column::CreatedAt)
                .limit(batch_size)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(txn)
                .await?;
            let mut done = Vec::with_capacity(orders.len());
            // Products in id order across the batch keeps two sweepers from deadlocking.
            let mut sorted = orders;
            sorted.sort_by_key(|o| (o.product_id, o.id));
            for order in &sorted {
                move_order(txn, order, OrderStatus::Cancelled, now).await?;
                done.push(TimedOutOrder {
                    order_id: order.id,
                    product_id: order.product_id,
                    quantity: order.quantity,
                });
            }
            Ok(done)
        })
    })
    .await?;
    for o in &cancelled {
        tracing::info!(
            metric = "order.timed_out",
            order_id = o.order_id,
            product_id = o.product_id,
            quantity = o.quantity,
            "unpaid order cancelled, stock returned"
        );
    }
    if !cancelled.is_empty() {
        metrics::counter!("order_status_changes_total", "status" => "timed_out")
            .increment(cancelled.len() as u64);
    }
    Ok(cancelled)
}

fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}
