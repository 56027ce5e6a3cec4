//! Products: what clients see of one ([`ProductView`], with its [`SaleRules`]), the catalogue,
//! and the admin's changes ([`create_product`], [`update_product`], [`ProductChange`]). Reads
//! take the counter and the unswept expired holds from one snapshot; a change runs under the
//! product lock, and the counters themselves are moved by `transitions.rs`.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    EntityTrait, FromQueryResult, QuerySelect, SqlErr, Statement,
};

use crate::{
    Db, DomainError, Money,
    db::{now, with_retry},
    hold::HoldStatus,
    operations::sweeps::{log_expired, reclaim_expired},
    product,
    product::Admission,
    rules::tickets::ensure_queue,
    rules::transitions::{lock_product, restock},
    types::ProductId,
};

/// A product as clients see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    pub id: ProductId,
    pub name: String,
    pub price: Money,
    pub stock: i32,
    /// Excludes expired holds even before the worker has released them.
    pub available_stock: i32,
    pub rules: SaleRules,
}

/// When a product sells, how much of it one buyer may have, and how buyers are let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaleRules {
    pub sale_starts_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// At least 1 when set.
    pub per_buyer_limit: Option<i32>,
    pub admission: Admission,
    /// With queue admission, how long an admitted buyer has to hold (1 s to a day).
    pub admission_window_seconds: i32,
}

/// The admission window of a product that does not name one.
pub const DEFAULT_ADMISSION_WINDOW_SECONDS: i32 = 120;
/// The longest admission window.
pub const MAX_ADMISSION_WINDOW_SECONDS: i32 = 86_400;

impl Default for SaleRules {
    fn default() -> Self {
        Self {
            sale_starts_at: None,
            sale_ends_at: None,
            per_buyer_limit: None,
            admission: Admission::Open,
            admission_window_seconds: DEFAULT_ADMISSION_WINDOW_SECONDS,
        }
    }
}

impl SaleRules {
    /// The times at the precision the database keeps (microseconds), so that what is answered
    /// is what is stored.
    fn stored(self) -> Self {
        Self {
            sale_starts_at: self.sale_starts_at.map(|t| t.trunc_subsecs(6)),
            sale_ends_at: self.sale_ends_at.map(|t| t.trunc_subsecs(6)),
            ..self
        }
    }

    /// A window must end after it starts, and a limit must allow at least one unit.
    pub fn check(&self) -> Result<(), DomainError> {
        if let (Some(start), Some(end)) = (self.sale_starts_at, self.sale_ends_at)
            && end <= start
        {
            return Err(DomainError::InvalidProduct {
                field: "sale_ends_at",
                message: "must be after sale_starts_at".into(),
            });
        }
        if self.per_buyer_limit.is_some_and(|l| l < 1) {
            return Err(DomainError::InvalidProduct {
                field: "per_buyer_limit",
                message: "must be at least 1".into(),
            });
        }
        if !(1..=MAX_ADMISSION_WINDOW_SECONDS).contains(&self.admission_window_seconds) {
            return Err(DomainError::InvalidProduct {
                field: "admission_window_seconds",
                message: format!("must be 1 to {MAX_ADMISSION_WINDOW_SECONDS}"),
            });
        }
        Ok(())
    }
}

/// A change to a product (`PATCH`): `None` leaves a field as it is; for the nullable ones
/// `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProductChange {
    pub name: Option<String>,
    pub price: Option<Money>,
    /// Units added to (or, negative, taken from) both `stock` and `available_stock`.
    pub add_stock: Option<i32>,
    pub sale_starts_at: Option<Option<DateTime<Utc>>>,
    pub sale_ends_at: Option<Option<DateTime<Utc>>>,
    pub per_buyer_limit: Option<Option<i32>>,
    pub admission: Option<Admission>,
    pub admission_window_seconds: Option<i32>,
}

#[derive(Debug, FromQueryResult)]
struct ProductRow {
    id: ProductId,
    name: String,
    price_cents: i64,
    stock: i32,
    available_stock: i32,
    expired_qty: i64,
    sale_starts_at: Option<DateTime<Utc>>,
    sale_ends_at: Option<DateTime<Utc>>,
    per_buyer_limit: Option<i32>,
    admission: Admission,
    admission_window_seconds: i32,
}

impl ProductRow {
    fn into_view(self) -> Result<ProductView, DomainError> {
        let expired = i32::try_from(self.expired_qty).map_err(|_| {
            DomainError::Invariant(format!("expired quantity {}", self.expired_qty))
        })?;
        Ok(ProductView {
            id: self.id,
            name: self.name,
            price: Money::from_cents(self.price_cents),
            stock: self.stock,
            available_stock: self.available_stock + expired,
            rules: SaleRules {
                sale_starts_at: self.sale_starts_at,
                sale_ends_at: self.sale_ends_at,
                per_buyer_limit: self.per_buyer_limit,
                admission: self.admission,
                admission_window_seconds: self.admission_window_seconds,
            },
        })
    }
}

/// Reads a product and its available stock in ONE statement, so the counter and the sum of
/// not-yet-reclaimed expired holds come from the same snapshot.
pub async fn product_view(db: &Db, id: ProductId) -> Result<ProductView, DomainError> {
    let stmt = Statement::from_sql_and_values(
        db.db_backend(),
        crate::sql::of(db.db_backend()).product_by_id,
        [HoldStatus::Active.as_str().into(), now().into(), id.into()],
    );
    db.read(|| async {
        Ok(ProductRow::find_by_statement(stmt.clone())
            .one(db.conn())
            .await?)
    })
    .await?
    .ok_or(DomainError::ProductNotFound(id))?
    .into_view()
}

/// The catalogue, by id ascending: products with ids above `after`, at most `limit`; and
/// whether more may follow.
pub async fn list_products(
    db: &Db,
    after: ProductId,
    limit: u64,
) -> Result<(Vec<ProductView>, bool), DomainError> {
    let stmt = Statement::from_sql_and_values(
        db.db_backend(),
        crate::sql::of(db.db_backend()).products_after,
        [
            HoldStatus::Active.as_str().into(),
            now().into(),
            after.into(),
            (limit + 1).into(),
        ],
    );
    let rows = db
        .read(|| async {
            Ok(ProductRow::find_by_statement(stmt.clone())
                .all(db.conn())
                .await?)
        })
        .await?;
    let more = rows.len() as u64 > limit;
    let views = rows
        .into_iter()
        .take(limit as usize)
        .map(ProductRow::into_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((views, more))
}

/// The newest `limit` products, newest first, with their available stock as
/// [`product_view`] reads it: what the worker publishes as gauges.
pub async fn newest_products(db: &Db, limit: u64) -> Result<Vec<ProductView>, DomainError> {
    let stmt = Statement::from_sql_and_values(
        db.db_backend(),
        crate::sql::of(db.db_backend()).products_newest,
        [
            HoldStatus::Active.as_str().into(),
            now().into(),
            limit.into(),
        ],
    );
    db.read(|| async {
        Ok(ProductRow::find_by_statement(stmt.clone())
            .all(db.conn())
            .await?)
    })
    .await?
    .into_iter()
    .map(ProductRow::into_view)
    .collect()
}

/// Changes a product under its lock. Stock taken away (`add_stock` < 0) can only come out of
/// what is available (expired holds are reclaimed first): never out of units held or in pending
/// orders ([`DomainError::InsufficientStock`]). A window end not after its start, counting the
/// stored end that is not changed, is refused ([`DomainError::InvalidProduct`]).
pub async fn update_product(
    db: &Db,
    id: ProductId,
    change: &ProductChange,
) -> Result<ProductView, DomainError> {
    let reclaimed = with_retry(Some(id), || {
        db.write(async |txn| {
            let product = lock_product(txn, id).await?;
            let rules = SaleRules {
                sale_starts_at: change.sale_starts_at.unwrap_or(product.sale_starts_at),
                sale_ends_at: change.sale_ends_at.unwrap_or(product.sale_ends_at),
                per_buyer_limit: change.per_buyer_limit.unwrap_or(product.per_buyer_limit),
                admission: change.admission.unwrap_or(product.admission),
                admission_window_seconds: change
                    .admission_window_seconds
                    .unwrap_or(product.admission_window_seconds),
            }
            .stored();
            rules.check()?;
            let add = change.add_stock.unwrap_or(0);
            let (available, reclaimed) = reclaim_expired(
                txn,
                id,
                now(),
                product.available_stock,
                -i64::from(add.min(0)),
            )
            .await?;
            // In i64: a large `add_stock` must be refused below, not overflow here.
            if i64::from(available) + i64::from(add) < 0 {
                return Err(DomainError::InsufficientStock { available });
            }
            let (Some(_), Some(_)) = (product.stock.checked_add(add), available.checked_add(add))
            else {
                return Err(DomainError::InvalidProduct {
                    field: "add_stock",
                    message: "would take stock past its largest value".into(),
                });
            };
            let model = product::ActiveModel {
                id: Set(id),
                name: change.name.clone().map_or(NotSet, Set),
                price_cents: change.price.map_or(NotSet, |p| Set(p.cents())),
                sale_starts_at: Set(rules.sale_starts_at),
                sale_ends_at: Set(rules.sale_ends_at),
                per_buyer_limit: Set(rules.per_buyer_limit),
                admission: Set(rules.admission),
                admission_window_seconds: Set(rules.admission_window_seconds),
                ..Default::default()
            };
            let updated = product::Entity::update(model).exec(txn).await?;
            restock(txn, id, add).await?;
            // Going back to open admission leaves the queue to the next admission pass, which
            // closes its waiting tickets.
            ensure_queue(txn, &updated, now()).await?;
            Ok(reclaimed)
        })
    })
    .await?;
    log_expired(&reclaimed, "api");
    product_view(db, id).await
}

/// Adds a product with all of its stock available.
pub async fn create_product(
    db: &Db,
    name: &str,
    price: Money,
    stock: i32,
    rules: SaleRules,
) -> Result<ProductView, DomainError> {
    let rules = rules.stored();
    rules.check()?;
    let model = product::ActiveModel {
        name: Set(name.to_owned()),
        price_cents: Set(price.cents()),
        stock: Set(stock),
        available_stock: Set(stock),
        created_at: Set(now()),
        sale_starts_at: Set(rules.sale_starts_at),
        sale_ends_at: Set(rules.sale_ends_at),
        per_buyer_limit: Set(rules.per_buyer_limit),
        admission: Set(rules.admission),
        admission_window_seconds: Set(rules.admission_window_seconds),
        ..Default::default()
    };
    // The product and its queue row together.
    let id = db
        .write(async |txn| {
            let id = product::Entity::insert(model.clone())
                .exec(txn)
                .await?
                .last_insert_id;
            let product = lock_product(txn, id).await?;
            ensure_queue(txn, &product, now()).await?;
            Ok(id)
        })
        .await?;
    Ok(ProductView {
        id,
        name: name.to_owned(),
        price,
        stock,
        available_stock: stock,
        rules,
    })
}

/// The id of the demo product.
const DEMO_PRODUCT: ProductId = ProductId::new(1);

/// The demo product of the contract (id 1, "Flash Sale Product", "99.99", stock 100). Adds it
/// once; returns whether it was added (running it again changes nothing).
pub async fn seed_demo_product(db: &Db) -> Result<bool, DomainError> {
    let txn = db.begin_write().await?;
    if product::Entity::find_by_id(DEMO_PRODUCT)
        .lock_exclusive()
        .one(&*txn)
        .await?
        .is_some()
    {
        txn.rollback().await?;
        return Ok(false);
    }
    let model = product::ActiveModel {
        id: Set(DEMO_PRODUCT),
        name: Set("Flash Sale Product".to_owned()),
        price_cents: Set(9999),
        stock: Set(100),
        available_stock: Set(100),
        created_at: Set(now()),
        ..Default::default()
    };
    match product::Entity::insert(model).exec(&*txn).await {
        Ok(_) => {}
        // Another process seeded it between our read and our insert.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            // Rolled back now, not on drop: SQLite's writer slot must not outlive it.
            txn.rollback().await?;
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    }
    txn.commit().await?;
    Ok(true)
}
