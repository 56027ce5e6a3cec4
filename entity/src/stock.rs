//! The transactional stock operations: the only code that changes `available_stock` or moves a
//! hold out of `active`. Each public function is one short write transaction (retried on
//! contention) or one consistent read.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, SqlErr, Statement,
    sea_query::{Expr, ExprTrait, LockBehavior, LockType},
};

use crate::{
    Db, Money, Quantity, StockError,
    db::with_retry,
    hold::{self, HoldStatus},
    product,
    types::{HoldId, ProductId},
};

/// Expired holds reclaimed per statement when a hold request finds too little stock.
const RECLAIM_CHUNK: u64 = 1000;

/// Now, at the precision the database keeps (microseconds), so what we answer is what we store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A product as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    pub id: ProductId,
    pub name: String,
    pub price: Money,
    pub stock: i32,
    /// Excludes expired holds even before the worker has released them.
    pub available_stock: i32,
}

/// A hold as clients see it; `status` is the effective one (an active hold past its time is
/// `Expired`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
    pub status: HoldStatus,
    pub expires_at: DateTime<Utc>,
}

impl HoldView {
    fn at(model: &hold::Model, now: DateTime<Utc>) -> Self {
        Self {
            id: model.id,
            product_id: model.product_id,
            qty: model.qty,
            status: model.effective_status(now),
            expires_at: model.expires_at,
        }
    }
}

/// A hold whose stock went back to its product because its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromQueryResult)]
pub struct ExpiredHold {
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
}

#[derive(Debug, FromQueryResult)]
struct ProductRow {
    id: i64,
    name: String,
    price_cents: i64,
    stock: i32,
    available_stock: i32,
    expired_qty: i64,
}

/// Reads a product and its available stock in ONE statement, so the counter and the sum of
/// not-yet-reclaimed expired holds come from the same snapshot.
pub async fn product_view(db: &Db, id: ProductId) -> Result<ProductView, StockError> {
    let cast = match db.db_backend() {
        DbBackend::Sqlite => "INTEGER",
        _ => "SIGNED",
    };
    let sql = format!(
        "SELECT p.id, p.name, p.price_cents, p.stock, p.available_stock, \
           CAST(COALESCE((SELECT SUM(h.qty) FROM holds h \
             WHERE h.product_id = p.id AND h.status = ? AND h.expires_at <= ?), 0) AS {cast}) \
           AS expired_qty \
         FROM products p WHERE p.id = ?"
    );
    let stmt = Statement::from_sql_and_values(
        db.db_backend(),
        sql,
        [HoldStatus::Active.as_str().into(), now().into(), id.into()],
    );
    let row = ProductRow::find_by_statement(stmt)
        .one(db.conn())
        .await?
        .ok_or(StockError::ProductNotFound(id))?;
    let expired = i32::try_from(row.expired_qty)
        .map_err(|_| StockError::Invariant(format!("expired quantity {}", row.expired_qty)))?;
    Ok(ProductView {
        id: row.id,
        name: row.name,
        price: Money::from_cents(row.price_cents),
        stock: row.stock,
        available_stock: row.available_stock + expired,
    })
}

/// Adds a product with all of its stock available.
pub async fn create_product(
    db: &Db,
    name: &str,
    price: Money,
    stock: i32,
) -> Result<ProductView, StockError> {
    let model = product::ActiveModel {
        name: Set(name.to_owned()),
        price_cents: Set(price.cents()),
        stock: Set(stock),
        available_stock: Set(stock),
        created_at: Set(now()),
        ..Default::default()
    };
    let id = product::Entity::insert(model)
        .exec(db.conn())
        .await?
        .last_insert_id;
    Ok(ProductView {
        id,
        name: name.to_owned(),
        price,
        stock,
        available_stock: stock,
    })
}

/// The demo product of the contract (id 1, "Flash Sale Product", "99.99", stock 100). Adds it
/// once; returns whether it was added (running it again changes nothing).
pub async fn seed_demo_product(db: &Db) -> Result<bool, StockError> {
    let txn = db.begin_write().await?;
    if product::Entity::find_by_id(1)
        .lock_exclusive()
        .one(&*txn)
        .await?
        .is_some()
    {
        txn.commit().await?;
        return Ok(false);
    }
    let model = product::ActiveModel {
        id: Set(1),
        name: Set("Flash Sale Product".to_owned()),
        price_cents: Set(9999),
        stock: Set(100),
        available_stock: Set(100),
        created_at: Set(now()),
    };
    match product::Entity::insert(model).exec(&*txn).await {
        Ok(_) => {}
        // Another process seeded it between our read and our insert.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    txn.commit().await?;
    Ok(true)
}

pub async fn get_hold(db: &Db, id: HoldId) -> Result<HoldView, StockError> {
    let model = hold::Entity::find_by_id(id)
        .one(db.conn())
        .await?
        .ok_or(StockError::HoldNotFound(id))?;
    Ok(HoldView::at(&model, now()))
}

/// Puts a hold on `qty` units of a product for `ttl`.
///
/// One transaction: lock the product row; if its counter is short, reclaim the product's
/// expired holds (skipping any the worker has locked); grant or refuse; commit. A refusal still
/// commits the reclaim, which was real work.
pub async fn create_hold(
    db: &Db,
    product_id: ProductId,
    qty: Quantity,
    ttl: chrono::Duration,
) -> Result<HoldView, StockError> {
    let (granted, reclaimed) = with_retry(Some(product_id), || async {
        let txn = db.begin_write().await?;
        let product = product::Entity::find_by_id(product_id)
            .lock_exclusive()
            .one(&*txn)
            .await?
            .ok_or(StockError::ProductNotFound(product_id))?;
        let now = now();
        let need = qty.as_i32();
        let mut available = product.available_stock;
        let mut reclaimed = Vec::new();
        while available < need {
            let chunk = lock_expired_holds(&*txn, Some(product_id), now, RECLAIM_CHUNK).await?;
            if chunk.is_empty() {
                break;
            }
            move_holds(&*txn, &chunk, HoldStatus::Expired, now).await?;
            available += chunk.iter().map(|h| h.qty).sum::<i32>();
            let last = (chunk.len() as u64) < RECLAIM_CHUNK;
            reclaimed.extend(chunk);
            if last {
                break;
            }
        }
        let granted = if available >= need {
            let model = hold::ActiveModel {
                product_id: Set(product_id),
                qty: Set(need),
                status: Set(HoldStatus::Active),
                expires_at: Set(now + ttl),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            };
            let id = hold::Entity::insert(model)
                .exec(&*txn)
                .await?
                .last_insert_id;
            available -= need;
            Ok(HoldView {
                id,
                product_id,
                qty: need,
                status: HoldStatus::Active,
                expires_at: now + ttl,
            })
        } else {
            Err(StockError::InsufficientStock { available })
        };
        let delta = available - product.available_stock;
        if delta != 0 {
            adjust_available(&*txn, product_id, delta).await?;
        }
        txn.commit().await?;
        Ok((granted, reclaimed))
    })
    .await?;

    log_expired(&reclaimed, "api");
    let hold = granted?;
    tracing::info!(
        metric = "hold.created",
        hold_id = hold.id,
        product_id,
        quantity = hold.qty,
        "hold created"
    );
    metrics::counter!("holds_created_total").increment(1);
    Ok(hold)
}

/// Releases an active hold at the buyer's request: its stock is available again at once.
/// A hold that is consumed, released or expired (even if not yet swept) is refused; an expired
/// one found here is swept in the same transaction.
pub async fn release_hold(db: &Db, id: HoldId) -> Result<HoldView, StockError> {
    let (outcome, expired) = with_retry(None, || async {
        let txn = db.begin_write().await?;
        // Hold row first, then its product: the lock order every path but create_hold keeps.
        let hold = hold::Entity::find_by_id(id)
            .lock_exclusive()
            .one(&*txn)
            .await?
            .ok_or(StockError::HoldNotFound(id))?;
        let now = now();
        let status = hold.effective_status(now);
        if status != HoldStatus::Active {
            let mut expired = Vec::new();
            if hold.status == HoldStatus::Active {
                // Past its time but not yet swept: sweep it here, once.
                let this = ExpiredHold {
                    id: hold.id,
                    product_id: hold.product_id,
                    qty: hold.qty,
                };
                move_holds(&*txn, &[this], HoldStatus::Expired, now).await?;
                adjust_available(&*txn, hold.product_id, hold.qty).await?;
                expired.push(this);
            }
            txn.commit().await?;
            return Ok((Err(StockError::HoldNotActive { id, status }), expired));
        }
        let this = ExpiredHold {
            id: hold.id,
            product_id: hold.product_id,
            qty: hold.qty,
        };
        move_holds(&*txn, &[this], HoldStatus::Released, now).await?;
        adjust_available(&*txn, hold.product_id, hold.qty).await?;
        txn.commit().await?;
        let mut view = HoldView::at(&hold, now);
        view.status = HoldStatus::Released;
        Ok((Ok(view), Vec::new()))
    })
    .await?;
    log_expired(&expired, "api");
    if outcome.is_ok() {
        metrics::counter!("holds_released_total").increment(1);
    }
    outcome
}

/// Releases up to `batch_size` expired holds, oldest first, in one transaction, skipping holds
/// another worker or an API reclaim has locked (`FOR UPDATE SKIP LOCKED`), so each hold is
/// released exactly once however many sweepers run. Returns the holds this call released.
pub async fn expire_batch(db: &Db, batch_size: u64) -> Result<Vec<ExpiredHold>, StockError> {
    let released = with_retry(None, || async {
        let txn = db.begin_write().await?;
        let now = now();
        let holds = lock_expired_holds(&*txn, None, now, batch_size).await?;
        if holds.is_empty() {
            txn.commit().await?;
            return Ok(holds);
        }
        move_holds(&*txn, &holds, HoldStatus::Expired, now).await?;
        // Products in id order, so two sweepers never wait on each other's product rows.
        let mut per_product: BTreeMap<ProductId, i32> = BTreeMap::new();
        for h in &holds {
            *per_product.entry(h.product_id).or_default() += h.qty;
        }
        for (product_id, qty) in per_product {
            adjust_available(&*txn, product_id, qty).await?;
        }
        txn.commit().await?;
        Ok(holds)
    })
    .await?;
    log_expired(&released, "worker");
    Ok(released)
}

/// Locks (skipping rows others hold) up to `limit` active holds whose time has run out.
async fn lock_expired_holds<C: ConnectionTrait>(
    txn: &C,
    product_id: Option<ProductId>,
    now: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<ExpiredHold>, StockError> {
    let mut query = hold::Entity::find()
        .select_only()
        .columns([hold::Column::Id, hold::Column::ProductId, hold::Column::Qty])
        .filter(hold::Column::Status.eq(HoldStatus::Active))
        .filter(hold::Column::ExpiresAt.lte(now));
    if let Some(product_id) = product_id {
        query = query.filter(hold::Column::ProductId.eq(product_id));
    }
    Ok(query
        .order_by_asc(hold::Column::ExpiresAt)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .into_model::<ExpiredHold>()
        .all(txn)
        .await?)
}

/// The one place a hold changes state. Only `active` holds move, and only into a final state;
/// the rows must already be locked by this transaction, so every one of them must move.
async fn move_holds<C: ConnectionTrait>(
    txn: &C,
    holds: &[ExpiredHold],
    to: HoldStatus,
    now: DateTime<Utc>,
) -> Result<(), StockError> {
    if !HoldStatus::Active.can_become(to) {
        return Err(StockError::Invariant(format!(
            "a hold cannot become {}",
            to.as_str()
        )));
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
    Ok(())
}

/// Changes a product's available counter; the caller holds the row lock (or the SQLite write
/// lock). The table's CHECK constraints refuse any value below 0 or above `stock`.
async fn adjust_available<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    delta: i32,
) -> Result<(), StockError> {
    product::Entity::update_many()
        .col_expr(
            product::Column::AvailableStock,
            Expr::col(product::Column::AvailableStock).add(delta),
        )
        .filter(product::Column::Id.eq(product_id))
        .exec(txn)
        .await?;
    Ok(())
}

fn log_expired(holds: &[ExpiredHold], by: &'static str) {
    for h in holds {
        tracing::info!(
            metric = "hold.expired",
            hold_id = h.id,
            product_id = h.product_id,
            quantity = h.qty,
            by,
            "hold expired, stock returned"
        );
    }
    if !holds.is_empty() {
        metrics::counter!("holds_expired_total", "by" => by).increment(holds.len() as u64);
    }
}
