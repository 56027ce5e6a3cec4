//! Orders: made from a hold, read, listed, and cleared of a refund mark by an operator.
//!
//! A hold becomes at most one order (`orders.hold_id` is UNIQUE and the hold row is locked).
//! Payment webhooks are in `payments.rs`, the payment timeout in `timeouts.rs`.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    Db, DomainError,
    db::{now, with_retry},
    hold::{self, HoldStatus},
    operations::idempotency::{StoredOutcome, StoredRefusal, check_in_txn, store_in_txn},
    order::{self, OrderStatus},
    rules::keys::KeyClaim,
    rules::ownership::Access,
    rules::transitions::{
        clear_refund_required, lock_hold, lock_lines, lock_order, lock_order_lines,
        order_from_hold, order_rows,
    },
    types::{HoldId, OrderId, ProductId},
    views::{OrderCreated, OrderView},
};

/// An order, for the owner of its hold: anyone else is answered
/// [`DomainError::OrderNotFound`], as for an order that does not exist.
pub async fn get_order(db: &Db, id: OrderId, access: Access<'_>) -> Result<OrderView, DomainError> {
    let rows = db
        .read(|| async {
            match order::Entity::find_by_id(id).one(db.conn()).await? {
                Some(o) if !o.is_inner_line() => order_rows(db.conn(), o).await,
                _ => Ok(Vec::new()),
            }
        })
        .await?;
    rows.first()
        .filter(|o| access.owns(o.secret_hash.as_deref(), o.buyer_id.as_deref()))
        .and_then(|_| OrderView::of_rows(&rows))
        .ok_or(DomainError::OrderNotFound(id))
}

/// Turns an active hold into a pending order; for a hold that already became an order, returns
/// that order (the hold is the order's natural idempotency key). Only the hold's owner may
/// (anyone else: [`DomainError::HoldNotFound`]). With a client idempotency key, the key and the
/// answer are written in the order's transaction, refusals included.
pub async fn create_order(
    db: &Db,
    hold_id: HoldId,
    access: Access<'_>,
    key: Option<&KeyClaim>,
) -> Result<OrderCreated, DomainError> {
    let outcome = with_retry(None, || {
        db.write(async |txn| {
            let Some(key) = key else {
                return order_for_hold(txn, hold_id, access, now()).await.map(Ok);
            };
            if let Some(Err(taken)) = check_in_txn(txn, &[key]).await?.pop() {
                return Err(taken);
            }
            let result = order_for_hold(txn, hold_id, access, now()).await;
            let kept = match &result {
                Ok((rows, new)) => Some(StoredOutcome::Order(created(rows, *new)?)),
                Err(refusal) => StoredRefusal::of(refusal).map(StoredOutcome::Refused),
            };
            match kept {
                // A refusal is an outcome too: it commits with its key (nothing else changed).
                Some(outcome) => {
                    store_in_txn(txn, db.server(), &[(key, outcome)]).await?;
                    Ok(result)
                }
                // A failure of the database: roll back, retry or answer 503.
                None => result.map(Ok),
            }
        })
    })
    .await?;
    let (rows, new) = outcome?;
    let answer = created(&rows, new)?;
    if let OrderCreated::New(order) = &answer {
        log_order_created(order);
    }
    Ok(answer)
}

/// `order.created`, for an order made by `POST /api/orders` or by a webhook that came first;
/// written once its transaction has committed.
pub(crate) fn log_order_created(order: &OrderView) {
    tracing::info!(
        metric = "order.created",
        order_id = order.id.get(),
        hold_id = order.hold_id.get(),
        product_id = order.product_id.get(),
        quantity = order.quantity,
        "order created"
    );
    count_status_change(OrderStatus::Pending, &order.product_ids());
}

/// `order_status_changes_total`: one per line of the order that moved to `status`, labelled
/// with the line's product, so a sale's progress can be followed per product.
pub(crate) fn count_status_change(status: OrderStatus, products: &[ProductId]) {
    for product in products {
        metrics::counter!(
            "order_status_changes_total",
            "status" => status.as_str(),
            "product_id" => product.get().to_string()
        )
        .increment(1);
    }
}

fn created(rows: &[order::Model], new: bool) -> Result<OrderCreated, DomainError> {
    let view = OrderView::of_rows(rows)
        .ok_or_else(|| DomainError::Invariant("an order of no rows".into()))?;
    Ok(if new {
        OrderCreated::New(view)
    } else {
        OrderCreated::Existing(view)
    })
}

/// Locks the hold (all its lines) and returns its order's rows, creating it from an active
/// hold. `true` if new. A hold `access` does not own, or a cart's inner line, is answered as
/// missing.
pub(crate) async fn order_for_hold(
    txn: &DatabaseTransaction,
    hold_id: HoldId,
    access: Access<'_>,
    now: DateTime<Utc>,
) -> Result<(Vec<order::Model>, bool), DomainError> {
    let hold = lock_hold(txn, hold_id).await?;
    if hold.is_inner_line() || !crate::operations::holds::owned(&hold, access) {
        return Err(DomainError::HoldNotFound(hold_id));
    }
    match hold.effective_status(now) {
        HoldStatus::Consumed => {
            let order = order::Entity::find()
                .filter(order::Column::HoldId.eq(hold_id))
                .one(txn)
                .await?
                .ok_or_else(|| {
                    DomainError::Invariant(format!("hold {hold_id} is consumed but has no order"))
                })?;
            Ok((order_rows(txn, order).await?, false))
        }
        // An expired hold is left for the sweepers: this transaction may be rolled back (a
        // webhook records nothing when it cannot apply).
        HoldStatus::Expired => Err(DomainError::HoldExpired(hold_id)),
        HoldStatus::Released => Err(DomainError::HoldReleased(hold_id)),
        HoldStatus::Active => {
            let lines = lock_lines(txn, hold).await?;
            // A sweeper may have taken another line of the cart meanwhile: then it expired.
            match hold::Model::status_of_lines(&lines, now) {
                HoldStatus::Active => order_from_hold(txn, &lines, now).await,
                _ => Err(DomainError::HoldExpired(hold_id)),
            }
        }
    }
}

/// Orders by id ascending after `after`, at most `limit` (only those whose refund mark is
/// `refund_required`, when given); and whether more may follow.
pub async fn list_orders(
    db: &Db,
    refund_required: Option<bool>,
    after: OrderId,
    limit: u64,
) -> Result<(Vec<OrderView>, bool), DomainError> {
    let (rows, lines) = db
        .read(|| async {
            let mut query = order::Entity::find();
            if let Some(r) = refund_required {
                query = query.filter(order::Column::RefundRequired.eq(r));
            }
            let rows = query
                .filter(orders_as_known())
                .filter(order::Column::Id.gt(after))
                .order_by_asc(order::Column::Id)
                .limit(limit + 1)
                .all(db.conn())
                .await?;
            let carts: Vec<OrderId> = rows.iter().filter_map(|o| o.cart_id).collect();
            let lines = match carts.is_empty() {
                true => Vec::new(),
                false => {
                    order::Entity::find()
                        .filter(order::Column::CartId.is_in(carts))
                        .order_by_asc(order::Column::Id)
                        .all(db.conn())
                        .await?
                }
            };
            Ok((rows, lines))
        })
        .await?;
    let more = rows.len() as u64 > limit;
    let views = rows
        .into_iter()
        .take(limit as usize)
        .filter_map(|o| match o.cart_id {
            None => Some(OrderView::from(&o)),
            Some(cart) => {
                let mine: Vec<order::Model> = lines
                    .iter()
                    .filter(|l| l.cart_id == Some(cart))
                    .cloned()
                    .collect();
                OrderView::of_rows(&mine)
            }
        })
        .collect();
    Ok((views, more))
}

/// Orders as clients know them: a cart's first row stands for the cart.
fn orders_as_known() -> Condition {
    Condition::any()
        .add(order::Column::CartId.is_null())
        .add(Expr::col(order::Column::CartId).equals(order::Column::Id))
}

/// How many orders are marked `refund_required` (a cart's order once): the refunds owed.
pub async fn refunds_owed(db: &Db) -> Result<u64, DomainError> {
    db.read(|| async {
        Ok(order::Entity::find()
            .filter(order::Column::RefundRequired.eq(true))
            .filter(orders_as_known())
            .count(db.conn())
            .await?)
    })
    .await
}

/// An operator refunded the payment of an order marked `refund_required`: the mark goes.
/// An order with no refund due answers [`DomainError::NoRefundDue`].
pub async fn mark_refunded(db: &Db, id: OrderId) -> Result<OrderView, DomainError> {
    with_retry(None, || {
        db.write(async |txn| {
            let order = lock_order(txn, id).await?;
            if order.is_inner_line() {
                return Err(DomainError::OrderNotFound(id));
            }
            let mut rows = lock_order_lines(txn, order).await?;
            clear_refund_required(txn, &rows, now()).await?;
            for row in &mut rows {
                row.refund_required = false;
            }
            OrderView::of_rows(&rows)
                .ok_or_else(|| DomainError::Invariant("an order of no rows".into()))
        })
    })
    .await
}
