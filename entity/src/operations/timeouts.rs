//! The payment timeout: pending orders left unpaid too long are cancelled and their units
//! are available again.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{LockBehavior, LockType},
};

use crate::{
    Db, DomainError,
    db::{now, with_retry},
    order::{self, OrderStatus},
    rules::transitions::move_order,
    types::{OrderId, ProductId},
};

/// An order the payment timeout cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOutOrder {
    pub order_id: OrderId,
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
) -> Result<Vec<TimedOutOrder>, DomainError> {
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
            order_id = o.order_id.get(),
            product_id = o.product_id.get(),
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
