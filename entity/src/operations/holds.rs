//! Holds: putting them on stock ([`serve_holds`]: a batch of requests for one product, their
//! keys looked up first, the rest granted in one transaction by the rule of `crate::rules::grant`),
//! reading one, and releasing one at the buyer's request. Each public function is one short
//! write transaction (retried on contention) or one read; the row changes themselves —
//! creating holds, moving them, the counters — are made by `transitions.rs`.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    Statement,
};

use crate::{
    Db, DomainError, OrderStatus, Quantity,
    db::{ANSWER_WITHIN, ServerTraits, now, out_of_time, with_retry, with_retry_until},
    hold::{self, HoldStatus},
    operations::idempotency::{
        self, Lookup, Replay, StoredOutcome, StoredRefusal, check_in_txn, store_in_txn,
    },
    operations::products::product_view,
    operations::queue::{TicketPass, admissions, use_admissions},
    operations::sweeps::{log_expired, reclaim_expired},
    product::{self, Admission},
    rules::grant::{Ask, Decision, grant},
    rules::keys::KeyClaim,
    rules::ownership::{Access, ClientSecret},
    rules::transitions::{
        HoldRef, NewHold, create_holds, extend_holds, lock_hold, lock_lines, lock_product,
        move_holds,
    },
    types::{BuyerId, HoldId, ProductId, TicketId},
    views::HoldView,
};

/// Whether `access` reaches this hold (see [`crate::rules::ownership`]).
pub(crate) fn owned(model: &hold::Model, access: Access<'_>) -> bool {
    access.owns(model.secret_hash.as_deref(), model.buyer_id.as_deref())
}

/// A hold, for its owner: anyone else is answered [`DomainError::HoldNotFound`], as for a hold
/// that does not exist.
pub async fn get_hold(db: &Db, id: HoldId, access: Access<'_>) -> Result<HoldView, DomainError> {
    let lines = db
        .read(|| async {
            let Some(model) = hold::Entity::find_by_id(id).one(db.conn()).await? else {
                return Ok(Vec::new());
            };
            if model.cart_id != Some(model.id) {
                return Ok(vec![model]);
            }
            Ok(hold::Entity::find()
                .filter(hold::Column::CartId.eq(id))
                .order_by_asc(hold::Column::Id)
                .all(db.conn())
                .await?)
        })
        .await?;
    lines
        .first()
        .filter(|m| m.id == id && !m.is_inner_line() && owned(m, access))
        .and_then(|_| HoldView::of_lines(&lines, now()))
        .ok_or(DomainError::HoldNotFound(id))
}

/// A locked hold and all its lines, for its owner. A cart's inner lines are not holds of
/// their own to clients: answered as missing, like anyone else's hold.
async fn lock_owned(
    txn: &DatabaseTransaction,
    id: HoldId,
    access: Access<'_>,
) -> Result<Vec<hold::Model>, DomainError> {
    let hold = lock_hold(txn, id).await?;
    if hold.is_inner_line() || !owned(&hold, access) {
        return Err(DomainError::HoldNotFound(id));
    }
    lock_lines(txn, hold).await
}

/// How far holds may be extended.
#[derive(Debug, Clone, Copy)]
pub struct ExtensionRules {
    /// Each extension makes the hold expire this long after it.
    pub ttl: chrono::Duration,
    /// How many times a hold may be extended.
    pub max_extensions: i32,
    /// No extension takes a hold past this long after it was made.
    pub max_lifetime: chrono::Duration,
}

/// Gives an active hold (every line of a cart) more time: it expires `ttl` from now, cut at
/// `max_lifetime` after it was made. Refused [`DomainError::ExtensionLimit`] once extended
/// `max_extensions` times or when the cut leaves nothing to add, and
/// [`DomainError::HoldNotActive`] when it is not active (also when its time has run out, swept
/// or not: a hold past its time is never brought back). Under the hold's lock, which a sweeper
/// skips: an extension and an expiry never both win.
pub async fn extend_hold(
    db: &Db,
    id: HoldId,
    access: Access<'_>,
    rules: ExtensionRules,
) -> Result<HoldView, DomainError> {
    with_retry(None, || {
        db.write(async |txn| {
            let mut lines = lock_owned(txn, id, access).await?;
            let now = now();
            let first = &lines[0];
            let status = first.effective_status(now);
            if status != HoldStatus::Active {
                return Err(DomainError::HoldNotActive { id, status });
            }
            let until = (now + rules.ttl).min(first.created_at + rules.max_lifetime);
            if first.extensions >= rules.max_extensions || until <= first.expires_at {
                return Err(DomainError::ExtensionLimit(id));
            }
            extend_holds(txn, &lines, until, now).await?;
            for line in &mut lines {
                line.expires_at = until;
                line.extensions += 1;
            }
            HoldView::of_lines(&lines, now)
                .ok_or_else(|| DomainError::Invariant("a hold of no lines".into()))
        })
    })
    .await
}

/// One request for a hold.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub qty: Quantity,
    /// Who the hold is for; required on a product with a per-buyer limit. With
    /// `BUYER_AUTH=jwt`, the token's buyer, who owns the hold.
    pub buyer: Option<BuyerId>,
    /// The secret of an anonymous buyer, who owns the hold by it (its hash is stored).
    pub secret: Option<ClientSecret>,
    /// Its `Idempotency-Key`, if it came with one: looked up before the batch (a finished key
    /// is answered again) and written with the outcome in the batch's transaction.
    pub key: Option<Arc<KeyClaim>>,
    /// The queue ticket it brings, for a product with queue admission (ignored otherwise).
    pub ticket: Option<TicketPass>,
}

impl HoldRequest {
    pub fn new(qty: Quantity) -> Self {
        Self {
            qty,
            buyer: None,
            secret: None,
            key: None,
            ticket: None,
        }
    }
}

/// What became of one hold request.
#[derive(Debug, Clone)]
pub enum HoldOutcome {
    /// The stock is held.
    Granted(HoldView),
    /// Refused, for a reason of the product, the buyer or the key: a refusal, never a failure
    /// (when the database fails, the whole batch does).
    Refused(DomainError),
    /// Its key had finished: the first request's outcome, answered again.
    Replayed(Replay),
    /// Its caller withdrew (its client went away) before the batch held the product's lock:
    /// nothing was done for it.
    Withdrawn,
}

/// Puts a hold on `qty` units of a product for `ttl`: a batch of one (see [`serve_holds`]),
/// so both paths share every rule.
pub async fn create_hold(
    db: &Db,
    product_id: ProductId,
    request: HoldRequest,
    ttl: chrono::Duration,
) -> Result<HoldOutcome, DomainError> {
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    serve_holds(db, product_id, &[request], ttl, deadline, &|_| false, false)
        .await?
        .pop()
        .ok_or_else(|| DomainError::Invariant("a batch of one had no outcome".into()))
}

/// Serves hold requests for one product together, by `deadline` (the earliest of theirs):
/// 1. the requests' keys are looked up with one statement that takes no lock: a finished key's
///    request is answered again ([`HoldOutcome::Replayed`]), another request's key refused;
/// 2. the others in ONE transaction ([`hold_transaction`]), where `withdrawn(i)`, asked once
///    the product is locked, says whether request `i`'s caller has gone (it then takes nothing);
///    when `sold_out` (the product's last batch was refused for stock), first by one read
///    ([`refused_for_stock`]), which may answer them all without a transaction.
///
/// Answers each request, in order.
pub async fn serve_holds(
    db: &Db,
    product_id: ProductId,
    requests: &[HoldRequest],
    ttl: chrono::Duration,
    deadline: std::time::Instant,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    sold_out: bool,
) -> Result<Vec<HoldOutcome>, DomainError> {
    let keys: Vec<Option<&KeyClaim>> = requests.iter().map(|r| r.key.as_deref()).collect();
    let mut outcomes = looked_up(db, &keys, deadline).await?;
    let to_run: Vec<usize> = (0..requests.len())
        .filter(|&i| outcomes[i].is_none())
        .collect();
    if !to_run.is_empty() {
        let run: Vec<&HoldRequest> = to_run.iter().map(|&i| &requests[i]).collect();
        let gone = |j: usize| withdrawn(to_run[j]);
        let refused = match sold_out {
            true => refused_for_stock(db, product_id, &run, &gone).await?,
            false => None,
        };
        let ran = match refused {
            Some(refused) => refused,
            None => hold_transaction(db, product_id, &run, ttl, deadline, &gone).await?,
        };
        for (&i, outcome) in to_run.iter().zip(ran) {
            outcomes[i] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| DomainError::Invariant("a hold request had no outcome".into())))
        .collect()
}

/// What the keys of a batch's requests already answer, one entry per request (none: run it),
/// by one look-up that takes no lock: a finished key's request is answered again
/// ([`HoldOutcome::Replayed`]), another request's key refused.
pub(crate) async fn looked_up(
    db: &Db,
    keys: &[Option<&KeyClaim>],
    deadline: std::time::Instant,
) -> Result<Vec<Option<HoldOutcome>>, DomainError> {
    let mut outcomes: Vec<Option<HoldOutcome>> = vec![None; keys.len()];
    let keyed: Vec<(usize, &KeyClaim)> = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.map(|k| (i, k)))
        .collect();
    if keyed.is_empty() {
        return Ok(outcomes);
    }
    let claims: Vec<&KeyClaim> = keyed.iter().map(|(_, k)| *k).collect();
    let found = tokio::time::timeout_at(
        deadline.into(),
        idempotency::lookup_counted(db, idempotency::HOLDS, &claims),
    )
    .await
    .unwrap_or_else(|_| Err(out_of_time()))?;
    for ((i, _), lookup) in keyed.iter().zip(found) {
        outcomes[*i] = match lookup {
            Lookup::Absent => None,
            Lookup::Finished(replay) => Some(HoldOutcome::Replayed(replay)),
            Lookup::Mismatch => Some(HoldOutcome::Refused(DomainError::IdempotencyKeyMismatch)),
        };
    }
    Ok(outcomes)
}

/// A sold-out product's batch, refused on one read and no transaction: when the read (taken
/// after every request of the batch arrived, expired holds counted back in) shows fewer units
/// than the smallest request asks for, each is refused `insufficient_stock` with the
/// `available` the transaction would have found, and that was true at a moment of its life.
/// Only where nothing else decides first: no key to write, open admission, no buyer limit,
/// the sale window open. Otherwise `None`: the transaction decides.
async fn refused_for_stock(
    db: &Db,
    product_id: ProductId,
    requests: &[&HoldRequest],
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
) -> Result<Option<Vec<HoldOutcome>>, DomainError> {
    if requests.iter().any(|r| r.key.is_some()) {
        return Ok(None);
    }
    let product = product_view(db, product_id).await?;
    let rules = product.rules;
    let plain = rules.admission == Admission::Open
        && rules.per_buyer_limit.is_none()
        && crate::rules::window::refusal_of(rules.sale_starts_at, rules.sale_ends_at, now())
            .is_none();
    let smallest = requests.iter().map(|r| r.qty.as_i32()).min();
    if !plain || smallest.is_none_or(|qty| product.available_stock >= qty) {
        return Ok(None);
    }
    let available = product.available_stock;
    Ok(Some(
        (0..requests.len())
            .map(|i| match withdrawn(i) {
                true => HoldOutcome::Withdrawn,
                false => HoldOutcome::Refused(DomainError::InsufficientStock { available }),
            })
            .collect(),
    ))
}

/// Serves hold requests for one product in ONE transaction, in these steps: lock the product
/// row; set aside the requests that cannot be served (caller withdrawn, key taken, sale
/// window); reclaim expired holds if the rest need more than is available; grant in arrival
/// order while stock lasts ([`grant`]); create every granted hold with one statement and update
/// the counter once; write the keyed refusals' keys and outcomes with one statement; commit.
async fn hold_transaction(
    db: &Db,
    product_id: ProductId,
    requests: &[&HoldRequest],
    ttl: chrono::Duration,
    deadline: std::time::Instant,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
) -> Result<Vec<HoldOutcome>, DomainError> {
    let started = std::time::Instant::now();
    let mut attempt = 0;
    let (outcomes, reclaimed) = with_retry_until(deadline, Some(product_id), || {
        attempt += 1;
        // The keys of this batch were free when the batch looked them up just before (no twin
        // runs in this process), so the first attempt only writes them. If a twin elsewhere
        // wrote one meanwhile, that write fails and the batch runs again: then the keys are
        // checked first.
        let check_keys = attempt > 1;
        db.write_until(deadline, async move |txn| {
            let product = lock_product(txn, product_id).await?;
            let now = now();
            let mut asks = asks(txn, requests, withdrawn, check_keys, &product, now).await?;
            let tickets = admissions_of(txn, requests, &mut asks, &product, now).await?;
            // On a queue product the hold is its ticket's buyer's: limits count that buyer.
            for (ask, ticket) in asks.iter_mut().zip(&tickets) {
                if let Some((_, buyer)) = ticket {
                    ask.buyer = Some(buyer.as_str());
                }
            }
            let wanted: i64 = asks.iter().filter_map(Ask::wanted).sum();
            let (available, reclaimed) =
                reclaim_expired(txn, product_id, now, product.available_stock, wanted).await?;
            let buyers = buyers(&asks);
            // Whose each hold would be: the request's buyer, or its ticket's.
            let holders: Vec<Option<&str>> = asks.iter().map(|a| a.buyer).collect();
            let used = match product.per_buyer_limit {
                Some(_) if !buyers.is_empty() => {
                    units_per_buyer(txn, product.id, &buyers, now).await?
                }
                _ => HashMap::new(),
            };
            let decided = grant(available, product.per_buyer_limit, used, asks);
            let admitted: Vec<TicketId> = decided
                .iter()
                .zip(&tickets)
                .filter_map(|(d, t)| matches!(d, Decision::Grant(_)).then_some(t.as_ref()?.0))
                .collect();
            use_admissions(txn, product_id, &admitted, now).await?;
            let granted: Vec<NewHold> = requests
                .iter()
                .zip(&decided)
                .zip(&holders)
                .filter_map(|((r, d), buyer)| match d {
                    Decision::Grant(qty) => Some(NewHold {
                        qty: *qty,
                        secret_hash: r.secret.as_ref().map(|s| s.hash().as_str()),
                        buyer: *buyer,
                        key: r.key.as_deref(),
                    }),
                    _ => None,
                })
                .collect();
            let expires_at = now + ttl;
            let ids = create_holds(txn, db.server(), &product, &granted, now, expires_at).await?;
            let outcomes = outcomes(requests, &holders, decided, ids, product_id, expires_at);
            let keys: Vec<Option<&KeyClaim>> = requests.iter().map(|r| r.key.as_deref()).collect();
            let outcomes = store_refusals(txn, db.server(), &keys, outcomes, check_keys).await?;
            Ok((outcomes, reclaimed))
        })
    })
    .await?;
    log_expired(&reclaimed, "api");
    // `hold.created` is logged by each caller, in its own request's span.
    metrics::histogram!("hold_batch_size").record(requests.len() as f64);
    metrics::histogram!("hold_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(outcomes)
}

/// Each request of a batch as the granting rule takes it, in order: set aside when its caller
/// withdrew, its key is taken (checked only when `check_keys`), or the sale window is shut.
/// Run under the product lock, so the batch really starts here.
async fn asks<'a, C: ConnectionTrait>(
    txn: &C,
    requests: &[&'a HoldRequest],
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    check_keys: bool,
    product: &product::Model,
    now: DateTime<Utc>,
) -> Result<Vec<Ask<'a>>, DomainError> {
    let mut asks: Vec<Ask<'a>> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| Ask {
            qty: r.qty.as_i32(),
            buyer: r.buyer.as_ref().map(BuyerId::as_str),
            withdrawn: withdrawn(i),
            refused: None,
        })
        .collect();
    // Keys before stock: a request whose key is taken takes no stock.
    if check_keys {
        let keyed: Vec<(usize, &KeyClaim)> = requests
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.key.as_deref().map(|k| (i, k)))
            .collect();
        let claims: Vec<&KeyClaim> = keyed.iter().map(|(_, k)| *k).collect();
        for ((i, _), check) in keyed.iter().zip(check_in_txn(txn, &claims).await?) {
            asks[*i].refused = check.err();
        }
    }
    // The sale window, as this transaction's clock sees it under the lock: nobody is served a
    // moment early, whichever process or batch they came through.
    if let Some(shut) = crate::rules::window::refusal(product, now) {
        for ask in asks.iter_mut().filter(|a| a.refused.is_none()) {
            ask.refused = Some(shut.clone());
        }
    }
    Ok(asks)
}

/// On a product with queue admission, the admitted ticket each request that may be granted
/// uses (checked under the product lock, like the sale window): the others are refused
/// [`DomainError::AdmissionRequired`]. One entry per request, with the ticket's buyer; none on
/// an open product.
async fn admissions_of<C: ConnectionTrait>(
    txn: &C,
    requests: &[&HoldRequest],
    asks: &mut [Ask<'_>],
    product: &product::Model,
    now: DateTime<Utc>,
) -> Result<Vec<Option<(TicketId, String)>>, DomainError> {
    let mut tickets = vec![None; requests.len()];
    if product.admission != Admission::Queue {
        return Ok(tickets);
    }
    let eligible: Vec<usize> = (0..requests.len())
        .filter(|&i| asks[i].wanted().is_some())
        .collect();
    let passes: Vec<(Option<&TicketPass>, Option<&str>)> = eligible
        .iter()
        .map(|&i| {
            let r = requests[i];
            (r.ticket.as_ref(), r.buyer.as_ref().map(BuyerId::as_str))
        })
        .collect();
    let answers = admissions(txn, product.id, &passes, now).await?;
    for (&i, answer) in eligible.iter().zip(answers) {
        match answer {
            Ok(ticket) => tickets[i] = Some(ticket),
            Err(refusal) => asks[i].refused = Some(refusal),
        }
    }
    Ok(tickets)
}

/// The buyers of the asks that may be granted.
fn buyers<'a>(asks: &[Ask<'a>]) -> Vec<&'a str> {
    asks.iter()
        .filter(|a| a.wanted().is_some())
        .filter_map(|a| a.buyer)
        .collect()
}

/// Each request's outcome: its new hold (the granted ones take `ids` in order), its refusal,
/// or nothing for a caller that withdrew; a hold is its `holders` entry's.
fn outcomes(
    requests: &[&HoldRequest],
    holders: &[Option<&str>],
    decided: Vec<Decision>,
    ids: Vec<HoldId>,
    product_id: ProductId,
    expires_at: DateTime<Utc>,
) -> Vec<HoldOutcome> {
    let mut ids = ids.into_iter();
    decided
        .into_iter()
        .zip(requests.iter().zip(holders))
        .map(|(decision, (r, holder))| match decision {
            Decision::Grant(qty) => HoldOutcome::Granted(HoldView {
                // Never short: `create_holds` checked it has an id per granted hold.
                id: ids.next().unwrap_or(HoldId::new(0)),
                product_id,
                qty,
                lines: Vec::new(),
                status: HoldStatus::Active,
                expires_at,
                buyer_id: holder.map(str::to_owned),
                client_secret: r.secret.clone(),
            }),
            Decision::Refuse(refusal) => HoldOutcome::Refused(refusal),
            Decision::Skip => HoldOutcome::Withdrawn,
        })
        .collect()
}

/// The refusals of a batch's keyed requests, written down with their keys in one statement
/// (a granted keyed hold carries its key on its own row, written by the hold `INSERT`). A key
/// already taken, by a hold or a stored outcome that a twin in another process committed before
/// this batch took the product lock, is answered as taken instead, and nothing is written for
/// it: the key answers for what its first request did. (On the first attempt keys were not
/// checked before granting; a granted key that was taken fails the hold `INSERT` instead.)
pub(crate) async fn store_refusals(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    keys: &[Option<&KeyClaim>],
    mut outcomes: Vec<HoldOutcome>,
    keys_checked: bool,
) -> Result<Vec<HoldOutcome>, DomainError> {
    let kept = |o: &HoldOutcome| match o {
        HoldOutcome::Refused(refusal) => StoredRefusal::of(refusal),
        _ => None,
    };
    let refused: Vec<usize> = (0..keys.len())
        .filter(|&i| keys[i].is_some() && kept(&outcomes[i]).is_some())
        .collect();
    if refused.is_empty() {
        return Ok(outcomes);
    }
    if !keys_checked {
        let claims: Vec<&KeyClaim> = refused.iter().filter_map(|&i| keys[i]).collect();
        for (&i, check) in refused.iter().zip(check_in_txn(txn, &claims).await?) {
            if let Err(taken) = check {
                outcomes[i] = HoldOutcome::Refused(taken);
            }
        }
    }
    let stored: Vec<(&KeyClaim, StoredOutcome)> = refused
        .iter()
        .filter_map(|&i| Some((keys[i]?, StoredOutcome::Refused(kept(&outcomes[i])?))))
        .collect();
    store_in_txn(txn, server, &stored).await?;
    Ok(outcomes)
}

/// The units each of these buyers has on a product now: active holds not yet past their time,
/// and pending or paid orders. One statement for the batch's buyers, run under the product
/// lock (every change to these rows takes that lock first), so nothing moves meanwhile.
pub(crate) async fn units_per_buyer<'a, C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    buyers: &[&'a str],
    now: DateTime<Utc>,
) -> Result<HashMap<&'a str, i32>, DomainError> {
    let mut distinct: Vec<&'a str> = buyers.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let backend = txn.get_database_backend();
    let sql = crate::sql::of(backend).units_per_buyer;
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
            // Hold rows first, then their products: the lock order every path but a hold
            // batch keeps.
            let lines = lock_owned(txn, id, access).await?;
            let now = now();
            let status = lines[0].effective_status(now);
            if status == HoldStatus::Active {
                let refs: Vec<HoldRef> = lines.iter().map(HoldRef::from).collect();
                move_holds(txn, &refs, HoldStatus::Released, now).await?;
                let mut view = HoldView::of_lines(&lines, now)
                    .ok_or_else(|| DomainError::Invariant("a hold of no lines".into()))?;
                view.status = HoldStatus::Released;
                return Ok((Ok(view), Vec::new()));
            }
            // Lines past their time but not yet swept: swept here, once.
            let expired: Vec<HoldRef> = lines
                .iter()
                .filter(|h| h.status == HoldStatus::Active)
                .map(HoldRef::from)
                .collect();
            move_holds(txn, &expired, HoldStatus::Expired, now).await?;
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
mod key_races;
