//! The transactional product and hold operations. Each public function is one short write
//! transaction (retried on contention) or one consistent read; the row changes themselves —
//! creating holds, moving them, the counters — are made by `transitions.rs`.

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, Statement,
    sea_query::{LockBehavior, LockType},
};

use std::collections::HashMap;

use crate::{
    Db, Money, OrderStatus, Quantity, StockError,
    db::{ServerTraits, with_retry, with_retry_until},
    hold::{self, HoldStatus},
    idempotency::{Keyed, KeyedRequest, StoredResponse, check_in_txn, store_in_txn},
    product,
    transitions::{HoldRef, NewHold, create_holds, lock_hold, lock_product, move_holds, restock},
    types::{BuyerId, HoldId, ProductId},
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
    pub rules: SaleRules,
}

/// When a product sells and how much of it one buyer may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaleRules {
    pub sale_starts_at: Option<DateTime<Utc>>,
    pub sale_ends_at: Option<DateTime<Utc>>,
    /// At least 1 when set.
    pub per_buyer_limit: Option<i32>,
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
    pub fn check(&self) -> Result<(), StockError> {
        if let (Some(start), Some(end)) = (self.sale_starts_at, self.sale_ends_at)
            && end <= start
        {
            return Err(StockError::InvalidProduct {
                field: "sale_ends_at",
                message: "must be after sale_starts_at".into(),
            });
        }
        if self.per_buyer_limit.is_some_and(|l| l < 1) {
            return Err(StockError::InvalidProduct {
                field: "per_buyer_limit",
                message: "must be at least 1".into(),
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
    pub buyer_id: Option<String>,
}

impl HoldView {
    fn at(model: &hold::Model, now: DateTime<Utc>) -> Self {
        Self {
            id: model.id,
            product_id: model.product_id,
            qty: model.qty,
            status: model.effective_status(now),
            expires_at: model.expires_at,
            buyer_id: model.buyer_id.clone(),
        }
    }
}

/// A hold whose stock went back to its product because its time ran out.
pub type ExpiredHold = HoldRef;

#[derive(Debug, FromQueryResult)]
struct ProductRow {
    id: i64,
    name: String,
    price_cents: i64,
    stock: i32,
    available_stock: i32,
    expired_qty: i64,
    sale_starts_at: Option<DateTime<Utc>>,
    sale_ends_at: Option<DateTime<Utc>>,
    per_buyer_limit: Option<i32>,
}

impl ProductRow {
    fn into_view(self) -> Result<ProductView, StockError> {
        let expired = i32::try_from(self.expired_qty)
            .map_err(|_| StockError::Invariant(format!("expired quantity {}", self.expired_qty)))?;
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
            },
        })
    }
}

/// The products query of [`product_view`] and [`list_products`]: each product with the sum of
/// its expired-but-unswept holds, from one snapshot. `filter` follows `FROM products p`.
fn products_sql(backend: DbBackend, filter: &str) -> String {
    let cast = match backend {
        DbBackend::Sqlite => "INTEGER",
        _ => "SIGNED",
    };
    format!(
        "SELECT p.id, p.name, p.price_cents, p.stock, p.available_stock, \
           p.sale_starts_at, p.sale_ends_at, p.per_buyer_limit, \
           CAST(COALESCE((SELECT SUM(h.qty) FROM holds h \
             WHERE h.product_id = p.id AND h.status = ? AND h.expires_at <= ?), 0) AS {cast}) \
           AS expired_qty \
         FROM products p {filter}"
    )
}

/// Reads a product and its available stock in ONE statement, so the counter and the sum of
/// not-yet-reclaimed expired holds come from the same snapshot.
pub async fn product_view(db: &Db, id: ProductId) -> Result<ProductView, StockError> {
    let stmt = Statement::from_sql_and_values(
        db.db_backend(),
        products_sql(db.db_backend(), "WHERE p.id = ?"),
        [HoldStatus::Active.as_str().into(), now().into(), id.into()],
    );
    db.read(|| async {
        Ok(ProductRow::find_by_statement(stmt.clone())
            .one(db.conn())
            .await?)
    })
    .await?
    .ok_or(StockError::ProductNotFound(id))?
    .into_view()
}

/// The catalogue, by id ascending: products with ids above `after`, at most `limit`; and
/// whether more may follow.
pub async fn list_products(
    db: &Db,
    after: ProductId,
    limit: u64,
) -> Result<(Vec<ProductView>, bool), StockError> {
    let stmt = Statement::from_sql_and_values(
        db.db_backend(),
        products_sql(db.db_backend(), "WHERE p.id > ? ORDER BY p.id LIMIT ?"),
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

/// Changes a product under its lock. Stock taken away (`add_stock` < 0) can only come out of
/// what is available (expired holds are reclaimed first): never out of units held or in pending
/// orders ([`StockError::InsufficientStock`]). A window end not after its start, counting the
/// stored end that is not changed, is refused ([`StockError::InvalidProduct`]).
pub async fn update_product(
    db: &Db,
    id: ProductId,
    change: &ProductChange,
) -> Result<ProductView, StockError> {
    let reclaimed = with_retry(Some(id), || {
        db.write(async |txn| {
            let product = lock_product(txn, id).await?;
            let rules = SaleRules {
                sale_starts_at: change.sale_starts_at.unwrap_or(product.sale_starts_at),
                sale_ends_at: change.sale_ends_at.unwrap_or(product.sale_ends_at),
                per_buyer_limit: change.per_buyer_limit.unwrap_or(product.per_buyer_limit),
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
                return Err(StockError::InsufficientStock { available });
            }
            let (Some(_), Some(_)) = (product.stock.checked_add(add), available.checked_add(add))
            else {
                return Err(StockError::InvalidProduct {
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
                ..Default::default()
            };
            product::Entity::update(model).exec(txn).await?;
            restock(txn, id, add).await?;
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
) -> Result<ProductView, StockError> {
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
        rules,
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
        txn.rollback().await?;
        return Ok(false);
    }
    let model = product::ActiveModel {
        id: Set(1),
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

pub async fn get_hold(db: &Db, id: HoldId) -> Result<HoldView, StockError> {
    let model = db
        .read(|| async { Ok(hold::Entity::find_by_id(id).one(db.conn()).await?) })
        .await?
        .ok_or(StockError::HoldNotFound(id))?;
    Ok(HoldView::at(&model, now()))
}

/// One request for a hold, as it enters a batch.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub qty: Quantity,
    /// Who the hold is for; required on a product with a per-buyer limit.
    pub buyer: Option<BuyerId>,
    /// Its `Idempotency-Key`, if it came with one: the key and its answer are written in the
    /// batch's transaction.
    pub keyed: Option<Keyed<HoldView>>,
    /// Raised when the client has gone (its connection closed): a request whose client has
    /// gone by the time its batch holds the product lock takes no stock. `None`: always wanted.
    /// (A caller that stops waiting before its batch starts is left out by the batcher.)
    pub client_gone: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl HoldRequest {
    pub fn new(qty: Quantity) -> Self {
        Self {
            qty,
            buyer: None,
            keyed: None,
            client_gone: None,
        }
    }

    fn abandoned(&self) -> bool {
        self.client_gone
            .as_ref()
            .is_some_and(|g| g.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Puts a hold on `qty` units of a product for `ttl`: a batch of one (see
/// [`create_holds_batch`]), so both paths share every rule.
pub async fn create_hold(
    db: &Db,
    product_id: ProductId,
    request: HoldRequest,
    ttl: chrono::Duration,
) -> Result<HoldView, StockError> {
    let deadline = std::time::Instant::now() + crate::db::ANSWER_WITHIN;
    let hold = create_holds_batch(db, product_id, &[request], ttl, deadline)
        .await?
        .pop()
        .unwrap_or_else(|| Err(StockError::Invariant("a batch of one had no answer".into())))?;
    log_hold_created(&hold);
    Ok(hold)
}

/// Serves several hold requests for one product in ONE transaction, in these steps: lock the
/// product row; refuse the requests that cannot be served (client gone, key taken, sale
/// window); reclaim expired holds if the rest need more than is available; grant in arrival
/// order while stock lasts ([`grant`]); create every granted hold with one statement and update
/// the counter once; answer each request, writing the keyed requests' keys and answers with one
/// statement; commit. The whole batch is answered by `deadline` (the earliest of its requests').
pub async fn create_holds_batch(
    db: &Db,
    product_id: ProductId,
    requests: &[HoldRequest],
    ttl: chrono::Duration,
    deadline: std::time::Instant,
) -> Result<Vec<Result<HoldView, StockError>>, StockError> {
    let started = std::time::Instant::now();
    let mut attempt = 0;
    let (answers, reclaimed) = with_retry_until(deadline, Some(product_id), || {
        attempt += 1;
        // The keys of this batch were free when their requests arrived (the API looked them
        // up, and no twin runs in this process), so the first attempt only writes them. If a
        // twin elsewhere wrote one meanwhile, that write fails and the batch runs again: then
        // the keys are checked first.
        let check_keys = attempt > 1;
        db.write_until(deadline, async move |txn| {
            let product = lock_product(txn, product_id).await?;
            let now = now();
            let refused = refusals(txn, requests, check_keys, &product, now).await?;
            let wanted: i64 = requests
                .iter()
                .zip(&refused)
                .filter(|(_, r)| r.is_none())
                .map(|(q, _)| i64::from(q.qty.get()))
                .sum();
            let (available, reclaimed) =
                reclaim_expired(txn, product_id, now, product.available_stock, wanted).await?;
            let decided = decide(txn, &product, requests, refused, available, now).await?;
            let granted: Vec<NewHold> = requests
                .iter()
                .zip(&decided)
                .filter_map(|(r, d)| {
                    d.as_ref().ok().map(|&qty| NewHold {
                        qty,
                        buyer: r.buyer.as_ref().map(BuyerId::as_str),
                    })
                })
                .collect();
            let expires_at = now + ttl;
            let ids = create_holds(txn, db.server(), product_id, &granted, now, expires_at).await?;
            let answers = answer_all(requests, decided, ids, product_id, expires_at);
            store_answers(txn, db.server(), requests, &answers).await?;
            Ok((answers, reclaimed))
        })
    })
    .await?;
    log_expired(&reclaimed, "api");
    // `hold.created` is logged by each caller, in its own request's span.
    metrics::histogram!("hold_batch_size").record(requests.len() as f64);
    metrics::histogram!("hold_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(answers)
}

/// The requests of a batch refused before granting, in order (`None`: not refused): a client
/// that has gone, a key already taken (checked only when `check_keys`), the sale window. Run
/// under the product lock, so the batch really starts here.
async fn refusals<C: ConnectionTrait>(
    txn: &C,
    requests: &[HoldRequest],
    check_keys: bool,
    product: &product::Model,
    now: DateTime<Utc>,
) -> Result<Vec<Option<StockError>>, StockError> {
    // Whoever has gone by now gets nothing.
    let mut refused: Vec<Option<StockError>> = requests
        .iter()
        .map(|r| r.abandoned().then_some(StockError::Abandoned))
        .collect();
    // Keys before stock: a request whose key is taken takes no stock.
    if check_keys {
        let keyed: Vec<(usize, &KeyedRequest)> = requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.keyed.as_ref().map(|k| (i, &k.request)))
            .collect();
        let keyed_requests: Vec<&KeyedRequest> = keyed.iter().map(|(_, k)| *k).collect();
        let checks = check_in_txn(txn, &keyed_requests).await?;
        for ((i, _), check) in keyed.iter().zip(checks) {
            if refused[*i].is_none() {
                refused[*i] = check.err();
            }
        }
    }
    // The sale window, as this transaction's clock sees it under the lock: nobody is served a
    // moment early, whichever process or batch they came through.
    let window = sale_window_refusal(product, now);
    for refusal in refused.iter_mut().filter(|r| r.is_none()) {
        *refusal = window.clone();
    }
    Ok(refused)
}

/// Reclaims a locked product's expired holds, a chunk at a time, while its available stock is
/// below `need`. Answers the available stock after that, and the holds reclaimed.
async fn reclaim_expired<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    now: DateTime<Utc>,
    mut available: i32,
    need: i64,
) -> Result<(i32, Vec<ExpiredHold>), StockError> {
    let mut reclaimed = Vec::new();
    while i64::from(available) < need {
        let chunk = lock_expired_holds(txn, Some(product_id), now, RECLAIM_CHUNK).await?;
        move_holds(txn, &chunk, HoldStatus::Expired, now).await?;
        available += chunk.iter().map(|h| h.qty).sum::<i32>();
        let last = (chunk.len() as u64) < RECLAIM_CHUNK;
        reclaimed.extend(chunk);
        if last {
            break;
        }
    }
    Ok((available, reclaimed))
}

/// The granting rule ([`grant`]) applied to a batch, with the units its buyers already have
/// read under the product lock when the product has a per-buyer limit.
async fn decide<C: ConnectionTrait>(
    txn: &C,
    product: &product::Model,
    requests: &[HoldRequest],
    refused: Vec<Option<StockError>>,
    available: i32,
    now: DateTime<Utc>,
) -> Result<Vec<Result<i32, StockError>>, StockError> {
    let buyers: Vec<&str> = requests
        .iter()
        .zip(&refused)
        .filter(|(_, r)| r.is_none())
        .filter_map(|(q, _)| q.buyer.as_ref().map(BuyerId::as_str))
        .collect();
    let used = match product.per_buyer_limit {
        Some(_) if !buyers.is_empty() => units_per_buyer(txn, product.id, &buyers, now).await?,
        _ => HashMap::new(),
    };
    let asks = requests.iter().zip(refused).map(|(r, refused)| Ask {
        qty: r.qty.as_i32(),
        buyer: r.buyer.as_ref().map(BuyerId::as_str),
        refused,
    });
    Ok(grant(available, product.per_buyer_limit, used, asks))
}

/// Each request's answer: its new hold (the granted ones take `ids` in order) or its refusal.
fn answer_all(
    requests: &[HoldRequest],
    decided: Vec<Result<i32, StockError>>,
    ids: Vec<HoldId>,
    product_id: ProductId,
    expires_at: DateTime<Utc>,
) -> Vec<Result<HoldView, StockError>> {
    let mut ids = ids.into_iter();
    decided
        .into_iter()
        .zip(requests)
        .map(|(a, r)| {
            a.map(|qty| HoldView {
                id: ids.next().unwrap_or_default(),
                product_id,
                qty,
                status: HoldStatus::Active,
                expires_at,
                buyer_id: r.buyer.as_ref().map(|b| b.as_str().to_owned()),
            })
        })
        .collect()
}

/// The answers of a batch's keyed requests, written down with their keys in one statement.
async fn store_answers(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    requests: &[HoldRequest],
    answers: &[Result<HoldView, StockError>],
) -> Result<(), StockError> {
    let stored: Vec<(&KeyedRequest, StoredResponse)> = requests
        .iter()
        .zip(answers)
        .filter(|(_, answer)| worth_replaying(answer))
        .filter_map(|(r, answer)| {
            let k = r.keyed.as_ref()?;
            Some((&k.request, (k.render)(answer)?))
        })
        .collect();
    store_in_txn(txn, server, &stored).await
}

/// Whether a keyed hold's answer is written down for replay. Not when the key was not this
/// request's to use (a twin's, another body's), when its client had gone, or when the answer
/// only said "not yet" (`sale_not_started`): a retry with the same key after the opening must
/// run afresh, not be told forever that the sale has not started.
fn worth_replaying(answer: &Result<HoldView, StockError>) -> bool {
    !matches!(
        answer,
        Err(StockError::Abandoned
            | StockError::IdempotencyKeyInUse
            | StockError::IdempotencyKeyMismatch
            | StockError::SaleNotStarted { .. })
    )
}

/// A product's sale window seen at `now`: the refusal for every hold, or none.
fn sale_window_refusal(product: &product::Model, now: DateTime<Utc>) -> Option<StockError> {
    match (product.sale_starts_at, product.sale_ends_at) {
        (Some(starts_at), _) if now < starts_at => Some(StockError::SaleNotStarted { starts_at }),
        (_, Some(ends_at)) if now >= ends_at => Some(StockError::SaleEnded),
        _ => None,
    }
}

/// One request of a batch, as the granting rule sees it.
#[derive(Debug)]
struct Ask<'a> {
    qty: i32,
    buyer: Option<&'a str>,
    /// Refused before granting (client gone, key taken, sale window).
    refused: Option<StockError>,
}

/// The granting rule of a batch, in arrival order: each request is judged against what is left
/// after the ones before it. With a per-buyer limit a request must name its buyer, and the
/// buyer's units (`used`: active holds and pending or paid orders before this batch, then the
/// grants of this batch as they are made) plus `qty` may not exceed the limit. Answers the
/// quantity granted or the refusal, one per request.
fn grant<'a>(
    mut available: i32,
    limit: Option<i32>,
    mut used: HashMap<&'a str, i32>,
    asks: impl IntoIterator<Item = Ask<'a>>,
) -> Vec<Result<i32, StockError>> {
    asks.into_iter()
        .map(|ask| {
            if let Some(e) = ask.refused {
                return Err(e);
            }
            let buyer_units = match (limit, ask.buyer) {
                (None, _) => None,
                (Some(_), None) => return Err(StockError::BuyerIdRequired),
                (Some(limit), Some(buyer)) => {
                    let units = used.entry(buyer).or_default();
                    if units.saturating_add(ask.qty) > limit {
                        let remaining = (limit - *units).max(0);
                        return Err(StockError::BuyerLimitExceeded { remaining });
                    }
                    Some(units)
                }
            };
            if available < ask.qty {
                return Err(StockError::InsufficientStock { available });
            }
            available -= ask.qty;
            if let Some(units) = buyer_units {
                *units += ask.qty;
            }
            Ok(ask.qty)
        })
        .collect()
}

/// The units each of these buyers has on a product now: active holds not yet past their time,
/// and pending or paid orders. One statement for the batch's buyers, run under the product
/// lock (every change to these rows takes that lock first), so nothing moves meanwhile.
async fn units_per_buyer<'a, C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    buyers: &[&'a str],
    now: DateTime<Utc>,
) -> Result<HashMap<&'a str, i32>, StockError> {
    let mut distinct: Vec<&'a str> = buyers.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let backend = txn.get_database_backend();
    // The buyers go in as ONE bound JSON array, so one prepared statement serves every batch
    // (an `IN (?, ?, ...)` list would be a new statement, prepared under the lock, for each
    // number of buyers). The JSON column has the buyer column's exact collation, or the index
    // on (product_id, buyer_id, status) could not be used. The rows are summed here: a
    // `GROUP BY` made MariaDB build and sort a temporary table for every batch (measured: its
    // CPU per hold on a limited product went from 49 to 38 µs without it).
    let buyers_in = match backend {
        DbBackend::Sqlite => "SELECT value FROM json_each(?)",
        _ => {
            "SELECT j.b FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
               b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j"
        }
    };
    let sql = format!(
        "SELECT buyer_id, qty AS units FROM holds \
           WHERE product_id = ? AND status = ? AND expires_at > ? AND buyer_id IN ({buyers_in}) \
         UNION ALL \
         SELECT buyer_id, quantity AS units FROM orders \
           WHERE product_id = ? AND status IN (?, ?) AND buyer_id IN ({buyers_in})"
    );
    let json = serde_json::to_string(&distinct)
        .map_err(|e| StockError::Invariant(format!("buyers as JSON: {e}")))?;
    let values: Vec<sea_orm::Value> = vec![
        product_id.into(),
        HoldStatus::Active.as_str().into(),
        now.into(),
        json.clone().into(),
        product_id.into(),
        OrderStatus::Pending.as_str().into(),
        OrderStatus::Paid.as_str().into(),
        json.into(),
    ];
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    let mut used: HashMap<&'a str, i32> = HashMap::new();
    for row in rows {
        let buyer: String = row.try_get("", "buyer_id")?;
        let units: i32 = row.try_get("", "units")?;
        // Map back to the batch's own &str (the rows' strings are equal byte for byte).
        if let Ok(i) = distinct.binary_search(&buyer.as_str()) {
            let sum = used.entry(distinct[i]).or_default();
            *sum = sum.saturating_add(units);
        }
    }
    Ok(used)
}

/// Releases an active hold at the buyer's request: its stock is available again at once.
/// A hold that is consumed, released or expired (even if not yet swept) is refused; an expired
/// one found here is swept in the same transaction.
pub async fn release_hold(db: &Db, id: HoldId) -> Result<HoldView, StockError> {
    let (outcome, expired) = with_retry(None, || {
        db.write(async |txn| {
            // Hold row first, then its product: the lock order every path but create_hold keeps.
            let hold = lock_hold(txn, id).await?;
            let now = now();
            let status = hold.effective_status(now);
            if status == HoldStatus::Active {
                move_holds(txn, &[HoldRef::from(&hold)], HoldStatus::Released, now).await?;
                let mut view = HoldView::at(&hold, now);
                view.status = HoldStatus::Released;
                return Ok((Ok(view), Vec::new()));
            }
            let mut expired = Vec::new();
            if hold.status == HoldStatus::Active {
                // Past its time but not yet swept: sweep it here, once.
                move_holds(txn, &[HoldRef::from(&hold)], HoldStatus::Expired, now).await?;
                expired.push(HoldRef::from(&hold));
            }
            Ok((Err(StockError::HoldNotActive { id, status }), expired))
        })
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
    let released = with_retry(None, || {
        db.write(async |txn| {
            let now = now();
            let holds = lock_expired_holds(txn, None, now, batch_size).await?;
            move_holds(txn, &holds, HoldStatus::Expired, now).await?;
            Ok(holds)
        })
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

/// The `hold.created` line and counter, written by the caller that asked for the hold.
pub fn log_hold_created(hold: &HoldView) {
    tracing::info!(
        metric = "hold.created",
        hold_id = hold.id,
        product_id = hold.product_id,
        quantity = hold.qty,
        "hold created"
    );
    metrics::counter!("holds_created_total").increment(1);
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

#[cfg(test)]
mod grant_tests {
    use super::*;

    fn ask(qty: i32, buyer: Option<&str>) -> Ask<'_> {
        Ask {
            qty,
            buyer,
            refused: None,
        }
    }

    #[test]
    fn grants_in_arrival_order_while_stock_lasts() {
        let answers = grant(
            5,
            None,
            HashMap::new(),
            [ask(3, None), ask(3, None), ask(2, None)],
        );
        assert!(matches!(answers[0], Ok(3)));
        assert!(matches!(
            answers[1],
            Err(StockError::InsufficientStock { available: 2 })
        ));
        assert!(
            matches!(answers[2], Ok(2)),
            "a later, smaller request still fits"
        );
    }

    #[test]
    fn counts_each_buyer_against_the_limit_within_the_batch_and_before_it() {
        let used = HashMap::from([("ann", 1)]);
        let answers = grant(
            100,
            Some(3),
            used,
            [
                ask(1, Some("ann")),
                ask(2, Some("ann")),
                ask(1, Some("bob")),
                ask(1, None),
                ask(3, Some("bob")),
            ],
        );
        assert!(matches!(answers[0], Ok(1)));
        assert!(matches!(
            answers[1],
            Err(StockError::BuyerLimitExceeded { remaining: 1 })
        ));
        assert!(matches!(answers[2], Ok(1)));
        assert!(matches!(answers[3], Err(StockError::BuyerIdRequired)));
        assert!(matches!(
            answers[4],
            Err(StockError::BuyerLimitExceeded { remaining: 2 })
        ));
    }

    #[test]
    fn a_refused_request_takes_nothing_and_a_limit_refusal_leaves_stock_for_others() {
        let mut gone = ask(4, None);
        gone.refused = Some(StockError::Abandoned);
        let answers = grant(
            4,
            Some(2),
            HashMap::new(),
            [
                gone,
                ask(3, Some("ann")),
                ask(2, Some("bob")),
                ask(2, Some("cy")),
            ],
        );
        assert!(matches!(answers[0], Err(StockError::Abandoned)));
        assert!(matches!(
            answers[1],
            Err(StockError::BuyerLimitExceeded { remaining: 2 })
        ));
        assert!(matches!(answers[2], Ok(2)));
        assert!(matches!(answers[3], Ok(2)));
    }
}
