//! The payment timeout: pending orders left unpaid too long are cancelled and their units
//! are available again.

use sea_orm::{
    ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType},
};

use crate::{
    Db, DomainError,
    db::{now, with_retry},
    order::{self, OrderStatus},
    rules::transitions::{lock_order_lines, lock_products, move_order},
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
            // Orders as clients know them (a cart's first row: its other rows are locked only
            // by whoever holds it, and move with it).
            let first_rows = Condition::any()
                .add(order::Column::CartId.is_null())
                .add(Expr::col(order::Column::CartId).equals(order::Column::Id));
            let orders = order::Entity::find()
                .filter(first_rows)
                .filter(order::Column::Status.eq(OrderStatus::Pending))
                .filter(order::Column::CreatedAt.lte(now - timeout))
                .order_by_asc(order::Column::CreatedAt)
                .limit(batch_size)
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(txn)
                .await?;
            let mut carts = Vec::with_capacity(orders.len());
            for order in orders {
                carts.push(lock_order_lines(txn, order).await?);
            }
            // Every product of the batch in id order first keeps two sweepers (and a cart's
            // webhook) from deadlocking.
            let mut products: Vec<ProductId> =
                carts.iter().flatten().map(|o| o.product_id).collect();
            products.sort_unstable();
            products.dedup();
            lock_products(txn, products).await?;
            let mut done = Vec::with_capacity(carts.len());
            for rows in &carts {
                move_order(txn, rows, OrderStatus::Cancelled, now).await?;
                done.extend(rows.iter().map(|line| TimedOutOrder {
                    order_id: line.cart_id.unwrap_or(line.id),
                    product_id: line.product_id,
                    quantity: line.quantity,
                }));
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
    for o in &cancelled {
        metrics::counter!(
            "order_status_changes_total",
            "status" => "timed_out",
            "product_id" => o.product_id.get().to_string()
        )
        .increment(1);
    }
    Ok(cancelled)
}
