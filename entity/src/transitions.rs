//! The one place where holds and orders change state, together with what each change does to
//! its product's counters. Every path — API, webhook, worker — goes through here, so none can
//! move a hold or an order out of a final state, or give stock back twice.
//!
//! | change                      | `available_stock` | `stock` |
//! | --------------------------- | ----------------- | ------- |
//! | hold created                | − qty             |         |
//! | hold active → expired/released | + qty          |         |
//! | hold active → consumed (order created) |        |         |
//! | order pending → paid        |                   | − qty   |
//! | order pending → cancelled   | + qty             |         |
//! | order cancelled → paid      | − qty (if there)  | − qty   |
//!
//! Callers hold the rows' locks (or SQLite's write lock); the updates re-check the state they
//! move from, and a mismatch is an invariant error that rolls the transaction back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    StockError,
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    product,
    types::{HoldId, ProductId},
};

/// The part of a hold a transition needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct HoldRef {
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
}

impl From<&hold::Model> for HoldRef {
    fn from(h: &hold::Model) -> Self {
        Self {
            id: h.id,
            product_id: h.product_id,
            qty: h.qty,
        }
    }
}

/// Moves locked active holds to `to`; for expired and released holds their quantity is
/// available again (products updated in id order, so two sweepers never deadlock).
pub(crate) async fn move_holds<C: ConnectionTrait>(
    txn: &C,
    holds: &[HoldRef],
    to: HoldStatus,
    now: DateTime<Utc>,
) -> Result<(), StockError> {
    if holds.is_empty() {
        return Ok(());
    }
    if !HoldStatus::Active.can_become(to) {
        return Err(StockError::Invariant(format!(
            "a hold cannot become {}",
            to.as_str()
        )));
    }
    let returns_stock = matches!(to, HoldStatus::Expired | HoldStatus::Released);
    let mut per_product: BTreeMap<ProductId, i32> = BTreeMap::new();
    if returns_stock {
        for h in holds {
            *per_product.entry(h.product_id).or_default() += h.qty;
        }
        lock_products(txn, per_product.keys().copied()).await?;
    }
    let result = hold::Entity::update_many()
        .col_expr(hold::Column::Status, Expr::value(to.as_str()))
        .col_expr(hold::Column::UpdatedAt, Expr::value(now))
        .filter(hold::Column::Id.is_in(holds.iter().map(|h| h.id)))
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .exec(txn)
        .await?;
    if result.rows_affected != holds.len() as u64 {
        return Err(StockError::Invariant(format!(
            "moved {} of {} locked holds to {}",
            result.rows_affected,
            holds.len(),
            to.as_str()
        )));
    }
    for (product_id, qty) in per_product {
        adjust_product(txn, product_id, qty, 0).await?;
    }
    Ok(())
}

/// Takes the product rows' exclusive locks (in id order) before any child row of theirs
/// changes. Updating a hold or order row makes InnoDB check its foreign key with a *shared*
/// lock on the product; upgrading that to exclusive later, while a hold batch waits for the
/// same row, is a deadlock. Locking exclusively first avoids the upgrade.
async fn lock_products<C: ConnectionTrait>(
    txn: &C,
    ids: impl IntoIterator<Item = ProductId>,
) -> Result<(), StockError> {
    for id in ids {
        product::Entity::find_by_id(id)
            .select_only()
            .column(product::Column::Id)
            .lock_exclusive()
            .into_tuple::<i64>()
            .one(txn)
            .await?
            .ok_or(StockError::ProductNotFound(id))?;
    }
    Ok(())
}

/// Takes `qty` out of a product's available stock for a new hold. The caller holds the
/// product lock and has checked that the stock is there.
pub(crate) async fn take_for_hold<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    qty: i32,
) -> Result<(), StockError> {
    adjust_product(txn, product_id, -qty, 0).await
}

/// Adds `qty` units (negative: takes them away) to a locked product's `stock` and
/// `available_stock` together: a restock or a removal by an operator. The caller has checked
/// that the available stock covers a removal.
pub(crate) async fn restock<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    qty: i32,
) -> Result<(), StockError> {
    adjust_product(txn, product_id, qty, qty).await
}

/// Moves a locked order to `to` and applies the change to its product. Cancelled → paid needs
/// the quantity to be available again now: if it is not, nothing changes and the answer is
/// [`StockError::InsufficientStock`].
pub(crate) async fn move_order<C: ConnectionTrait>(
    txn: &C,
    order: &order::Model,
    to: OrderStatus,
    now: DateTime<Utc>,
) -> Result<(), StockError> {
    let from = order.status;
    if !from.can_become(to) {
        return Err(StockError::Invariant(format!(
            "order {} cannot go from {} to {}",
            order.id,
            from.as_str(),
            to.as_str()
        )));
    }
    let q = order.quantity;
    // The product first, exclusively (see `lock_products`), then the order row.
    let product = product::Entity::find_by_id(order.product_id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(StockError::ProductNotFound(order.product_id))?;
    let (available_delta, stock_delta) = match (from, to) {
        (OrderStatus::Pending, OrderStatus::Paid) => (0, -q),
        (OrderStatus::Pending, OrderStatus::Cancelled) => (q, 0),
        (OrderStatus::Cancelled, OrderStatus::Paid) => {
            if product.available_stock < q {
                return Err(StockError::InsufficientStock {
                    available: product.available_stock,
                });
            }
            (-q, -q)
        }
        _ => unreachable!("checked by can_become"),
    };
    let result = order::Entity::update_many()
        .col_expr(order::Column::Status, Expr::value(to.as_str()))
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .filter(order::Column::Id.eq(order.id))
        .filter(order::Column::Status.eq(from))
        .exec(txn)
        .await?;
    if result.rows_affected != 1 {
        return Err(StockError::Invariant(format!(
            "order {} was not {} any more",
            order.id,
            from.as_str()
        )));
    }
    adjust_product(txn, order.product_id, available_delta, stock_delta).await
}

/// Marks a locked cancelled order as owing its payment back; `false` if it already was.
pub(crate) async fn mark_refund_required<C: ConnectionTrait>(
    txn: &C,
    order: &order::Model,
    now: DateTime<Utc>,
) -> Result<bool, StockError> {
    if order.status != OrderStatus::Cancelled {
        return Err(StockError::Invariant(format!(
            "order {} is {}: only a cancelled order can owe a refund",
            order.id,
            order.status.as_str()
        )));
    }
    let result = order::Entity::update_many()
        .col_expr(order::Column::RefundRequired, Expr::value(true))
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .filter(order::Column::Id.eq(order.id))
        .filter(order::Column::RefundRequired.eq(false))
        .exec(txn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Clears a locked order's refund mark: [`StockError::NoRefundDue`] if it has none.
pub(crate) async fn clear_refund_required<C: ConnectionTrait>(
    txn: &C,
    order: &order::Model,
    now: DateTime<Utc>,
) -> Result<(), StockError> {
    if !order.refund_required {
        return Err(StockError::NoRefundDue(order.id));
    }
    order::Entity::update_many()
        .col_expr(order::Column::RefundRequired, Expr::value(false))
        .col_expr(order::Column::UpdatedAt, Expr::value(now))
        .filter(order::Column::Id.eq(order.id))
        .exec(txn)
        .await?;
    Ok(())
}

/// Changes a product's counters. The table's CHECK constraints refuse an available stock below
/// 0 or above `stock`, so even a wrong delta cannot oversell.
async fn adjust_product<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    available_delta: i32,
    stock_delta: i32,
) -> Result<(), StockError> {
    if available_delta == 0 && stock_delta == 0 {
        return Ok(());
    }
    let mut update = product::Entity::update_many().filter(product::Column::Id.eq(product_id));
    if available_delta != 0 {
        update = update.col_expr(
            product::Column::AvailableStock,
            Expr::col(product::Column::AvailableStock).add(available_delta),
        );
    }
    if stock_delta != 0 {
        update = update.col_expr(
            product::Column::Stock,
            Expr::col(product::Column::Stock).add(stock_delta),
        );
    }
    update.exec(txn).await?;
    Ok(())
}
