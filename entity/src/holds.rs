//! Holds: putting them on stock (one request, or a coalesced batch of them in one
//! transaction: [`create_holds_batch`] and its steps, the granting rule [`grant`] and the
//! per-buyer count it needs), reading one, and releasing one at the buyer's request. Each public
//! function is one short write transaction (retried on contention) or one read; the row changes
//! themselves — creating holds, moving them, the counters — are made by `transitions.rs`.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, Statement};

use std::collections::HashMap;

use crate::{
    Db, DomainError, OrderStatus, Quantity,
    db::{ServerTraits, now, with_retry, with_retry_until},
    hold::{self, HoldStatus},
    idempotency::{Keyed, KeyedRequest, LookupSlot, StoredResponse, check_in_txn, store_in_txn},
    ownership::{Access, ClientSecret},
    product,
    sweeps::{log_expired, reclaim_expired},
    transitions::{HoldRef, NewHold, create_holds, lock_hold, lock_product, move_holds},
    types::{BuyerId, HoldId, ProductId},
};

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
    /// The secret its anonymous buyer reaches it with: only in the answer that made the hold
    /// (and that answer's replay), never read back from the database, which keeps its hash.
    pub client_secret: Option<ClientSecret>,
}

impl HoldView {
    /// The hold as its request was first answered: `active`, with its expiry (a keyed hold's
    /// replay is this answer again, whatever became of the hold since).
    pub fn as_granted(model: &hold::Model) -> Self {
        Self {
            status: HoldStatus::Active,
            ..Self::at(model, model.created_at)
        }
    }

    fn at(model: &hold::Model, now: DateTime<Utc>) -> Self {
        Self {
            id: model.id,
            product_id: model.product_id,
            qty: model.qty,
            status: model.effective_status(now),
            expires_at: model.expires_at,
            buyer_id: model.buyer_id.clone(),
            client_secret: None,
        }
    }
}

/// Whether `access` reaches this hold (see [`crate::ownership`]).
pub(crate) fn owned(model: &hold::Model, access: Access<'_>) -> bool {
    access.owns(model.secret_hash.as_deref(), model.buyer_id.as_deref())
}

/// A hold, for its owner: anyone else is answered [`DomainError::HoldNotFound`], as for a hold
/// that does not exist.
pub async fn get_hold(db: &Db, id: HoldId, access: Access<'_>) -> Result<HoldView, DomainError> {
    let model = db
        .read(|| async { Ok(hold::Entity::find_by_id(id).one(db.conn()).await?) })
        .await?
        .filter(|m| owned(m, access))
        .ok_or(DomainError::HoldNotFound(id))?;
    Ok(HoldView::at(&model, now()))
}

/// One request for a hold, as it enters a batch.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub qty: Quantity,
    /// Who the hold is for; required on a product with a per-buyer limit. With
    /// `BUYER_AUTH=jwt`, the token's buyer, who owns the hold.
    pub buyer: Option<BuyerId>,
    /// The secret of an anonymous buyer, who owns the hold by it (its hash is stored).
    pub secret: Option<ClientSecret>,
    /// Its `Idempotency-Key`, if it came with one: the key and its answer are written in the
    /// batch's transaction.
    pub keyed: Option<Keyed<HoldView>>,
    /// `None`: the key (if any) was looked up when the request arrived, and found free.
    /// `Some`: not yet; the coalesced batch looks it up, without the product's lock, and writes
    /// what it found here. A finished key is then answered [`DomainError::AnsweredByKey`].
    pub key_look_up: Option<LookupSlot>,
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
            secret: None,
            keyed: None,
            key_look_up: None,
            client_gone: None,
        }
    }

    /// A key nobody has looked up yet: the batch must check it before granting.
    pub(crate) fn key_unchecked(&self) -> bool {
        self.keyed.is_some() && self.key_look_up.as_ref().is_some_and(|s| s.get().is_none())
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
) -> Result<HoldView, DomainError> {
    let deadline = std::time::Instant::now() + crate::db::ANSWER_WITHIN;
    let hold = create_holds_batch(db, product_id, &[request], ttl, deadline)
        .await?
        .pop()
        .unwrap_or_else(|| {
            Err(DomainError::Invariant(
                "a batch of one had no answer".into(),
            ))
        })?;
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
) -> Result<Vec<Result<HoldView, DomainError>>, DomainError> {
    let started = std::time::Instant::now();
    let mut attempt = 0;
    let (answers, reclaimed) = with_retry_until(deadline, Some(product_id), || {
        attempt += 1;
        // The keys of this batch were free when they were looked up (on their requests'
        // arrival, or by the coalescer just before this batch; no twin runs in this process),
        // so the first attempt only writes them. If a twin elsewhere wrote one meanwhile, that
        // write fails and the batch runs again: then the keys are checked first. A key nobody
        // looked up is checked from the start.
        let check_keys = attempt > 1 || requests.iter().any(HoldRequest::key_unchecked);
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
                        secret_hash: r.secret.as_ref().map(|s| s.hash().as_str()),
                        buyer: r.buyer.as_ref().map(BuyerId::as_str),
                        key: r.keyed.as_ref().map(|k| &*k.request),
                    })
                })
                .collect();
            let expires_at = now + ttl;
            let ids = create_holds(txn, db.server(), &product, &granted, now, expires_at).await?;
            let answers = answer_all(requests, decided, ids, product_id, expires_at);
            let answers = store_refusals(txn, db.server(), requests, answers, check_keys).await?;
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
) -> Result<Vec<Option<DomainError>>, DomainError> {
    // Whoever has gone by now gets nothing.
    let mut refused: Vec<Option<DomainError>> = requests
        .iter()
        .map(|r| r.abandoned().then_some(DomainError::Abandoned))
        .collect();
    // Keys before stock: a request whose key is taken takes no stock.
    if check_keys {
        let keyed: Vec<(usize, &KeyedRequest)> = requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.keyed.as_ref().map(|k| (i, &*k.request)))
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

/// The granting rule ([`grant`]) applied to a batch, with the units its buyers already have
/// read under the product lock when the product has a per-buyer limit.
async fn decide<C: ConnectionTrait>(
    txn: &C,
    product: &product::Model,
    requests: &[HoldRequest],
    refused: Vec<Option<DomainError>>,
    available: i32,
    now: DateTime<Utc>,
) -> Result<Vec<Result<i32, DomainError>>, DomainError> {
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
    decided: Vec<Result<i32, DomainError>>,
    ids: Vec<HoldId>,
    product_id: ProductId,
    expires_at: DateTime<Utc>,
) -> Vec<Result<HoldView, DomainError>> {
    let mut ids = ids.into_iter();
    decided
        .into_iter()
        .zip(requests)
        .map(|(a, r)| {
            a.map(|qty| HoldView {
                // Never short: `create_holds` checked it has an id per granted hold.
                id: ids.next().unwrap_or(HoldId::new(0)),
                product_id,
                qty,
                status: HoldStatus::Active,
                expires_at,
                buyer_id: r.buyer.as_ref().map(|b| b.as_str().to_owned()),
                client_secret: r.secret.clone(),
            })
        })
        .collect()
}

/// The refusals of a batch's keyed requests, written down with their keys in one statement
/// (a granted keyed hold carries its key on its own row, written by the hold `INSERT`). A key
/// already taken, by a hold or a stored answer that a twin in another process committed before
/// this batch took the product lock, is answered as taken instead, and nothing is written for
/// it: the key answers for what its first request did. (On the first attempt keys were not
/// checked before granting; a granted key that was taken fails the hold `INSERT` instead.)
async fn store_refusals(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    requests: &[HoldRequest],
    mut answers: Vec<Result<HoldView, DomainError>>,
    keys_checked: bool,
) -> Result<Vec<Result<HoldView, DomainError>>, DomainError> {
    let refused: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(i, a)| a.is_err() && worth_replaying(a) && requests[*i].keyed.is_some())
        .map(|(i, _)| i)
        .collect();
    if refused.is_empty() {
        return Ok(answers);
    }
    if !keys_checked {
        let keyed: Vec<&KeyedRequest> = refused
            .iter()
            .filter_map(|&i| requests[i].keyed.as_ref().map(|k| &*k.request))
            .collect();
        for (&i, check) in refused.iter().zip(check_in_txn(txn, &keyed).await?) {
            if let Err(taken) = check {
                answers[i] = Err(taken);
            }
        }
    }
    let stored: Vec<(&KeyedRequest, StoredResponse)> = refused
        .iter()
        .filter(|&&i| worth_replaying(&answers[i]))
        .filter_map(|&i| {
            let k = requests[i].keyed.as_ref()?;
            Some((&*k.request, (k.render)(&answers[i])?))
        })
        .collect();
    store_in_txn(txn, server, &stored).await?;
    Ok(answers)
}

/// Whether a keyed hold's answer is written down for replay. Not when the key was not this
/// request's to use (a twin's, another body's), when its client had gone, or when the answer
/// only said "not yet" (`sale_not_started`): a retry with the same key after the opening must
/// run afresh, not be told forever that the sale has not started.
fn worth_replaying(answer: &Result<HoldView, DomainError>) -> bool {
    !matches!(
        answer,
        Err(DomainError::Abandoned
            | DomainError::IdempotencyKeyInUse
            | DomainError::IdempotencyKeyMismatch
            | DomainError::SaleNotStarted { .. })
    )
}

/// A product's sale window seen at `now`: the refusal for every hold, or none.
fn sale_window_refusal(product: &product::Model, now: DateTime<Utc>) -> Option<DomainError> {
    match (product.sale_starts_at, product.sale_ends_at) {
        (Some(starts_at), _) if now < starts_at => Some(DomainError::SaleNotStarted { starts_at }),
        (_, Some(ends_at)) if now >= ends_at => Some(DomainError::SaleEnded),
        _ => None,
    }
}

/// One request of a batch, as the granting rule sees it.
#[derive(Debug)]
struct Ask<'a> {
    qty: i32,
    buyer: Option<&'a str>,
    /// Refused before granting (client gone, key taken, sale window).
    refused: Option<DomainError>,
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
) -> Vec<Result<i32, DomainError>> {
    asks.into_iter()
        .map(|ask| {
            if let Some(e) = ask.refused {
                return Err(e);
            }
            let buyer_units = match (limit, ask.buyer) {
                (None, _) => None,
                (Some(_), None) => return Err(DomainError::BuyerIdRequired),
                (Some(limit), Some(buyer)) => {
                    let units = used.entry(buyer).or_default();
                    if units.saturating_add(ask.qty) > limit {
                        let remaining = (limit - *units).max(0);
                        return Err(DomainError::BuyerLimitExceeded { remaining });
                    }
                    Some(units)
                }
            };
            if available < ask.qty {
                return Err(DomainError::InsufficientStock { available });
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
) -> Result<HashMap<&'a str, i32>, DomainError> {
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
    //
    // The join order and the index are fixed: from the batch's buyers to their rows. Left to
    // itself the optimizer chose by the tables' statistics, and with many active holds or orders
    // on the product it read all of them for every batch (the product's prefix of the buyer
    // index, or every unexpired hold through the status index).
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT h.buyer_id, h.qty AS units FROM json_each(?) AS j \
               CROSS JOIN holds AS h INDEXED BY idx_holds_product_buyer \
               WHERE h.product_id = ? AND h.buyer_id = j.value AND h.status = ? \
                 AND h.expires_at > ? \
             UNION ALL \
             SELECT o.buyer_id, o.quantity AS units FROM json_each(?) AS j \
               CROSS JOIN orders AS o INDEXED BY idx_orders_product_buyer \
               WHERE o.product_id = ? AND o.buyer_id = j.value AND o.status IN (?, ?)"
        }
        _ => {
            "SELECT STRAIGHT_JOIN h.buyer_id, h.qty AS units \
               FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
                 b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
               JOIN holds AS h FORCE INDEX (idx_holds_product_buyer) \
                 ON h.product_id = ? AND h.buyer_id = j.b AND h.status = ? \
                   AND h.expires_at > ? \
             UNION ALL \
             SELECT STRAIGHT_JOIN o.buyer_id, o.quantity AS units \
               FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
                 b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
               JOIN orders AS o FORCE INDEX (idx_orders_product_buyer) \
                 ON o.product_id = ? AND o.buyer_id = j.b AND o.status IN (?, ?)"
        }
    };
    let json = serde_json::to_string(&distinct)
        .map_err(|e| DomainError::Invariant(format!("buyers as JSON: {e}")))?;
    let values: Vec<sea_orm::Value> = vec![
        json.clone().into(),
        product_id.into(),
        HoldStatus::Active.as_str().into(),
        now.into(),
        json.into(),
        product_id.into(),
        OrderStatus::Pending.as_str().into(),
        OrderStatus::Paid.as_str().into(),
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
pub async fn release_hold(
    db: &Db,
    id: HoldId,
    access: Access<'_>,
) -> Result<HoldView, DomainError> {
    let (outcome, expired) = with_retry(None, || {
        db.write(async |txn| {
            // Hold row first, then its product: the lock order every path but create_hold keeps.
            let hold = lock_hold(txn, id).await?;
            if !owned(&hold, access) {
                return Err(DomainError::HoldNotFound(id));
            }
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
            Ok((Err(DomainError::HoldNotActive { id, status }), expired))
        })
    })
    .await?;
    log_expired(&expired, "api");
    if outcome.is_ok() {
        metrics::counter!("holds_released_total").increment(1);
    }
    outcome
}

/// The `hold.created` line and counter, written by the caller that asked for the hold.
pub fn log_hold_created(hold: &HoldView) {
    tracing::info!(
        metric = "hold.created",
        hold_id = hold.id.get(),
        product_id = hold.product_id.get(),
        quantity = hold.qty,
        "hold created"
    );
    metrics::counter!("holds_created_total").increment(1);
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
            Err(DomainError::InsufficientStock { available: 2 })
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
            Err(DomainError::BuyerLimitExceeded { remaining: 1 })
        ));
        assert!(matches!(answers[2], Ok(1)));
        assert!(matches!(answers[3], Err(DomainError::BuyerIdRequired)));
        assert!(matches!(
            answers[4],
            Err(DomainError::BuyerLimitExceeded { remaining: 2 })
        ));
    }

    #[test]
    fn a_refused_request_takes_nothing_and_a_limit_refusal_leaves_stock_for_others() {
        let mut gone = ask(4, None);
        gone.refused = Some(DomainError::Abandoned);
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
        assert!(matches!(answers[0], Err(DomainError::Abandoned)));
        assert!(matches!(
            answers[1],
            Err(DomainError::BuyerLimitExceeded { remaining: 2 })
        ));
        assert!(matches!(answers[2], Ok(2)));
        assert!(matches!(answers[3], Ok(2)));
    }
}
