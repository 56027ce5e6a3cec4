//! Holds: putting them on stock ([`serve_holds`]: a batch of requests for one product, their
//! keys looked up first, the rest granted in one transaction by the rule of `crate::rules::grant`),
//! reading one, and releasing one at the buyer's request. Each public function is one short
//! write transaction (retried on contention) or one read; the row changes themselves —
//! creating holds, moving them, the counters — are made by `transitions.rs`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::{
    Db, DomainError, Quantity,
    db::{ANSWER_WITHIN, now, with_retry, with_retry_until},
    hold::{self, HoldStatus},
    operations::carts::{self, CartRequest},
    operations::granting::{looked_up, store_refusals, taken_keys, units_per_buyer},
    operations::products::product_view,
    operations::queue::{TicketPass, admissions, use_admissions},
    operations::sweeps::{ExpiredHold, log_expired, reclaim_expired},
    product::{self, Admission},
    rules::grant::{Ask, Decision, grant},
    rules::keys::KeyClaim,
    rules::ownership::{Access, ClientSecret},
    rules::transitions::{
        HoldRef, NewHold, create_all, create_holds, extend_holds, lock_hold, lock_lines,
        lock_product, move_holds,
    },
    types::{BuyerId, HoldId, ProductId, TicketId},
    views::HoldView,
};

pub use super::granting::HoldOutcome;

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
            if !model.is_cart() {
                return Ok(vec![model]);
            }
            let others = hold::Entity::find()
                .filter(hold::Column::CartId.eq(id))
                .order_by_asc(hold::Column::Id)
                .all(db.conn())
                .await?;
            Ok(std::iter::once(model).chain(others).collect())
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
            let status = hold::Model::status_of_lines(&lines, now);
            let first = &lines[0];
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
    let served = serve_with_carts(
        db,
        product_id,
        requests,
        &[],
        ttl,
        deadline,
        withdrawn,
        sold_out,
    );
    Ok(served.await?.0)
}

/// [`serve_holds`] for a batch that also carries carts which include its product: they are
/// served in the same transaction, after its one-product holds (a cart beside a hot product
/// costs it no transaction of its own). `withdrawn(i)` counts the holds first, then the carts.
/// Answers the holds' outcomes and the carts', each in order.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with_carts(
    db: &Db,
    product_id: ProductId,
    requests: &[HoldRequest],
    carts: &[CartRequest],
    ttl: chrono::Duration,
    deadline: std::time::Instant,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    sold_out: bool,
) -> Result<(Vec<HoldOutcome>, Vec<HoldOutcome>), DomainError> {
    let n = requests.len();
    let keys: Vec<Option<&KeyClaim>> = requests
        .iter()
        .map(|r| r.key.as_deref())
        .chain(carts.iter().map(|c| c.key.as_deref()))
        .collect();
    let mut outcomes = looked_up(db, &keys, deadline).await?;
    // Ascending: the holds to run come first, then the carts.
    let to_run: Vec<usize> = (0..keys.len()).filter(|&i| outcomes[i].is_none()).collect();
    if !to_run.is_empty() {
        let run: Vec<&HoldRequest> = to_run
            .iter()
            .filter(|&&i| i < n)
            .map(|&i| &requests[i])
            .collect();
        let run_carts: Vec<&CartRequest> = to_run
            .iter()
            .filter(|&&i| i >= n)
            .map(|&i| &carts[i - n])
            .collect();
        let gone = |j: usize| withdrawn(to_run[j]);
        let refused = match sold_out && run_carts.is_empty() {
            true => refused_for_stock(db, product_id, &run, &gone).await?,
            false => None,
        };
        let ran = match refused {
            Some(refused) => refused,
            None => {
                let batch = Batch {
                    holds: &run,
                    carts: &run_carts,
                };
                hold_transaction(db, product_id, batch, ttl, deadline, &gone).await?
            }
        };
        for (&i, outcome) in to_run.iter().zip(ran) {
            outcomes[i] = Some(outcome);
        }
    }
    let mut holds = outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| DomainError::Invariant("a hold request had no outcome".into())))
        .collect::<Result<Vec<_>, _>>()?;
    let carts = holds.split_off(n);
    Ok((holds, carts))
}

/// The requests one hold transaction serves: one-product holds on its product, then carts
/// that include it.
#[derive(Clone, Copy)]
struct Batch<'r, 'a> {
    holds: &'r [&'a HoldRequest],
    carts: &'r [&'a CartRequest],
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

/// Serves a batch in ONE transaction: lock its product (and its carts' products, all in id
/// order); decide the one-product holds ([`decide_holds`]); then the carts, each set of
/// products together (`carts::decide`); commit. Answers the holds' outcomes, then the carts'.
async fn hold_transaction(
    db: &Db,
    product_id: ProductId,
    batch: Batch<'_, '_>,
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
            // Every product of the batch in id order (the carts' too), the one order every path
            // that locks several keeps.
            let mut others: BTreeSet<ProductId> = batch
                .carts
                .iter()
                .flat_map(|c| c.lines().iter().map(|l| l.product_id))
                .collect();
            others.remove(&product_id);
            // With carts of other products too, all of them with one statement (a primary-key
            // range is locked in key order): one statement less under the hot product's lock.
            let (product, locked) = match others.is_empty() {
                true => match lock_product(txn, product_id).await {
                    Ok(product) => (Some(product), BTreeMap::new()),
                    // Carts ride along: they are answered line by line, the holds as missing.
                    Err(DomainError::ProductNotFound(_)) if !batch.carts.is_empty() => {
                        (None, BTreeMap::new())
                    }
                    Err(e) => return Err(e),
                },
                false => {
                    others.insert(product_id);
                    let mut locked = lock_together(txn, &others).await?;
                    (locked.remove(&product_id), locked)
                }
            };
            let sets: BTreeSet<Vec<ProductId>> = batch.carts.iter().map(|c| c.products()).collect();
            let (mut outcomes, mut reclaimed) = match product {
                // Several sets of products: each is decided and written in turn below, so that
                // every one sees what the ones before took.
                Some(product) if batch.carts.is_empty() || sets.len() > 1 => {
                    let holds = batch.holds;
                    decide_holds(db, txn, product, holds, ttl, withdrawn, check_keys).await?
                }
                // The carts ride along: planned after the holds, created with them.
                Some(product) => {
                    let (holds, carts) = (batch.holds, batch.carts);
                    let decided = decide_with_carts(
                        db, txn, product, &locked, holds, carts, ttl, withdrawn, check_keys,
                    );
                    return decided.await;
                }
                None => (
                    batch
                        .holds
                        .iter()
                        .map(|_| HoldOutcome::Refused(DomainError::ProductNotFound(product_id)))
                        .collect(),
                    Vec::new(),
                ),
            };
            // Then the carts, each set of products together.
            let first_cart = outcomes.len();
            outcomes.resize(first_cart + batch.carts.len(), HoldOutcome::Withdrawn);
            let mut groups: BTreeMap<Vec<ProductId>, Vec<usize>> = BTreeMap::new();
            for (k, cart) in batch.carts.iter().enumerate() {
                groups.entry(cart.products()).or_default().push(k);
            }
            for (products, members) in groups {
                let requests: Vec<&CartRequest> = members.iter().map(|&k| batch.carts[k]).collect();
                let gone = |j: usize| withdrawn(first_cart + members[j]);
                let decided =
                    carts::decide(db, txn, &products, &requests, ttl, &gone, check_keys).await?;
                for (&k, outcome) in members.iter().zip(decided.0) {
                    outcomes[first_cart + k] = outcome;
                }
                reclaimed.extend(decided.1);
            }
            Ok((outcomes, reclaimed))
        })
    })
    .await?;
    log_expired(&reclaimed, "api");
    // `hold.created` is logged by each caller, in its own request's span.
    if !batch.holds.is_empty() {
        metrics::histogram!("hold_batch_size").record(batch.holds.len() as f64);
    }
    if !batch.carts.is_empty() {
        metrics::histogram!("cart_batch_size").record(batch.carts.len() as f64);
    }
    metrics::histogram!("hold_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    Ok(outcomes)
}

/// Locks these products, those that exist, with one statement, in id order: the order every
/// path that locks several products keeps.
async fn lock_together(
    txn: &DatabaseTransaction,
    ids: &BTreeSet<ProductId>,
) -> Result<BTreeMap<ProductId, product::Model>, DomainError> {
    let rows = product::Entity::find()
        .filter(product::Column::Id.is_in(ids.iter().copied()))
        .order_by_asc(product::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    Ok(rows.into_iter().map(|p| (p.id, p)).collect())
}

/// A locked product's one-product holds: planned ([`plan_holds`]), created with one statement
/// and one counter update, answered, and the keyed refusals' keys and outcomes written with one
/// statement.
async fn decide_holds(
    db: &Db,
    txn: &DatabaseTransaction,
    product: product::Model,
    requests: &[&HoldRequest],
    ttl: chrono::Duration,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    check_keys: bool,
) -> Result<(Vec<HoldOutcome>, Vec<ExpiredHold>), DomainError> {
    if requests.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let plan = plan_holds(txn, &product, requests, now(), ttl, withdrawn, check_keys).await?;
    let granted = plan.new_holds(requests);
    let ids = create_holds(
        txn,
        db.server(),
        &product,
        &granted,
        plan.now,
        plan.expires_at,
    );
    let ids = ids.await?;
    drop(granted);
    let (outcomes, reclaimed) = plan.finish(requests, ids, product.id);
    let keys: Vec<Option<&KeyClaim>> = requests.iter().map(|r| r.key.as_deref()).collect();
    let outcomes = store_refusals(txn, db.server(), &keys, outcomes, check_keys).await?;
    Ok((outcomes, reclaimed))
}

/// A batch's one-product holds and the carts riding along, on its locked product: each planned
/// against what the ones before left ([`plan_holds`], then `carts::plan` per set of products),
/// then every new row made by [`create_all`] (one statement per product, the product's holds
/// and cart lines together, and one counter update for all), then the keyed refusals written
/// with one statement. Answers the holds' outcomes, then the carts'.
#[allow(clippy::too_many_arguments)]
async fn decide_with_carts(
    db: &Db,
    txn: &DatabaseTransaction,
    product: product::Model,
    locked: &BTreeMap<ProductId, product::Model>,
    requests: &[&HoldRequest],
    carts: &[&CartRequest],
    ttl: chrono::Duration,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    check_keys: bool,
) -> Result<(Vec<HoldOutcome>, Vec<ExpiredHold>), DomainError> {
    let now = now();
    let product_id = product.id;
    let holds = plan_holds(txn, &product, requests, now, ttl, withdrawn, check_keys).await?;
    // The product as the holds leave it, for the carts' plans.
    let mut current = product.clone();
    current.available_stock = holds.left;
    let mut groups: BTreeMap<Vec<ProductId>, Vec<usize>> = BTreeMap::new();
    for (k, cart) in carts.iter().enumerate() {
        groups.entry(cart.products()).or_default().push(k);
    }
    let mut plans = Vec::with_capacity(groups.len());
    for (products, members) in groups {
        let group: Vec<&CartRequest> = members.iter().map(|&k| carts[k]).collect();
        let gone = |j: usize| withdrawn(requests.len() + members[j]);
        let plan = carts::plan(
            txn,
            &products,
            &group,
            now,
            ttl,
            &gone,
            check_keys,
            Some(carts::Known {
                product: &current,
                planned: &holds.per_buyer,
                locked,
            }),
        );
        let plan = plan.await?;
        if let Some(left) = plan.left(product_id) {
            current.available_stock = left;
        }
        plans.push((products, members, group, plan));
    }

    // The new rows, per product in id order: this product's holds first, then cart lines.
    let mut rows: BTreeMap<ProductId, (&product::Model, Vec<NewHold<'_>>)> = BTreeMap::new();
    rows.insert(product_id, (&product, holds.new_holds(requests)));
    // Where each plan's lines went: (plan, line j, product, first row, rows).
    let mut slots: Vec<(usize, usize, ProductId, usize, usize)> = Vec::new();
    let mut first_cart = 0;
    for (p, (products, _, group, plan)) in plans.iter().enumerate() {
        for (j, lines) in plan.new_lines(group, first_cart) {
            let model = match products[j] == product_id {
                true => &product,
                false => plan.model(j),
            };
            let entry = rows.entry(products[j]).or_insert((model, Vec::new()));
            slots.push((p, j, products[j], entry.1.len(), lines.len()));
            entry.1.extend(lines);
        }
        first_cart += plan.granted();
    }
    let order: Vec<ProductId> = rows.keys().copied().collect();
    let rows: Vec<(&product::Model, Vec<NewHold<'_>>)> = rows.into_values().collect();
    let made = create_all(txn, db.server(), &rows, now, holds.expires_at).await?;
    drop(rows);
    let ids_of = |product: ProductId, from: usize, count: usize| -> Vec<HoldId> {
        order
            .iter()
            .position(|&p| p == product)
            .and_then(|i| made[i].get(from..from + count))
            .map(<[HoldId]>::to_vec)
            .unwrap_or_default()
    };
    let single_ids = ids_of(product_id, 0, holds.granted());
    let (mut outcomes, mut reclaimed) = holds.finish(requests, single_ids, product_id);
    outcomes.resize(requests.len() + carts.len(), HoldOutcome::Withdrawn);
    for (p, (_, members, group, plan)) in plans.into_iter().enumerate() {
        // This plan's ids per line, in the order of its `new_lines`.
        let ids: Vec<Vec<HoldId>> = slots
            .iter()
            .filter(|s| s.0 == p)
            .map(|&(_, _, product, from, count)| ids_of(product, from, count))
            .collect();
        let (decided, swept) = plan.finish(&group, ids);
        for (&k, outcome) in members.iter().zip(decided) {
            outcomes[requests.len() + k] = outcome;
        }
        reclaimed.extend(swept);
    }
    let keys: Vec<Option<&KeyClaim>> = requests
        .iter()
        .map(|r| r.key.as_deref())
        .chain(carts.iter().map(|c| c.key.as_deref()))
        .collect();
    let outcomes = store_refusals(txn, db.server(), &keys, outcomes, check_keys).await?;
    Ok((outcomes, reclaimed))
}

/// What a batch decided for its one-product holds, before their rows exist.
struct HoldPlan {
    decided: Vec<Decision>,
    /// Whose each hold would be: the request's buyer, or its ticket's.
    holders: Vec<Option<String>>,
    reclaimed: Vec<ExpiredHold>,
    /// The product's available stock after these grants.
    left: i32,
    /// Units these grants give each buyer.
    per_buyer: HashMap<String, i32>,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl HoldPlan {
    fn granted(&self) -> usize {
        self.decided
            .iter()
            .filter(|d| matches!(d, Decision::Grant(_)))
            .count()
    }

    /// The granted holds' new rows, in order.
    fn new_holds<'a>(&'a self, requests: &[&'a HoldRequest]) -> Vec<NewHold<'a>> {
        requests
            .iter()
            .zip(&self.decided)
            .zip(&self.holders)
            .filter_map(|((r, d), buyer)| match d {
                Decision::Grant(qty) => Some(NewHold {
                    qty: *qty,
                    secret_hash: r.secret.as_ref().map(|s| s.hash().as_str()),
                    buyer: buyer.as_deref(),
                    key: r.key.as_deref(),
                    cart: None,
                }),
                _ => None,
            })
            .collect()
    }

    /// Each request's outcome, given the new holds' ids (in the order of
    /// [`HoldPlan::new_holds`]), and the expired holds the plan reclaimed.
    fn finish(
        self,
        requests: &[&HoldRequest],
        ids: Vec<HoldId>,
        product_id: ProductId,
    ) -> (Vec<HoldOutcome>, Vec<ExpiredHold>) {
        let holders: Vec<Option<&str>> = self.holders.iter().map(Option::as_deref).collect();
        let outcomes = outcomes(
            requests,
            &holders,
            self.decided,
            ids,
            product_id,
            self.expires_at,
        );
        (outcomes, self.reclaimed)
    }
}

/// A locked product's one-product holds, decided: set aside the requests that cannot be served
/// (caller withdrawn, key taken, sale window, admission); reclaim expired holds if the rest need
/// more than is available; grant in arrival order while stock lasts ([`grant`]); mark the
/// tickets the granted ones use. Nothing is created yet.
async fn plan_holds(
    txn: &DatabaseTransaction,
    product: &product::Model,
    requests: &[&HoldRequest],
    now: DateTime<Utc>,
    ttl: chrono::Duration,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    check_keys: bool,
) -> Result<HoldPlan, DomainError> {
    let product_id = product.id;
    let mut asks = asks(txn, requests, withdrawn, check_keys, product, now).await?;
    let tickets = admissions_of(txn, requests, &mut asks, product, now).await?;
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
    let holders: Vec<Option<String>> = asks.iter().map(|a| a.buyer.map(str::to_owned)).collect();
    let used = match product.per_buyer_limit {
        Some(_) if !buyers.is_empty() => units_per_buyer(txn, product.id, &buyers, now).await?,
        _ => HashMap::new(),
    };
    let decided = grant(available, product.per_buyer_limit, used, asks);
    let admitted: Vec<TicketId> = decided
        .iter()
        .zip(&tickets)
        .filter_map(|(d, t)| matches!(d, Decision::Grant(_)).then_some(t.as_ref()?.0))
        .collect();
    use_admissions(txn, product_id, &admitted, now).await?;
    let mut taken = 0;
    let mut per_buyer: HashMap<String, i32> = HashMap::new();
    for (d, holder) in decided.iter().zip(&holders) {
        if let Decision::Grant(qty) = d {
            taken += qty;
            if let Some(buyer) = holder {
                *per_buyer.entry(buyer.clone()).or_default() += qty;
            }
        }
    }
    Ok(HoldPlan {
        decided,
        holders,
        reclaimed,
        left: available - taken,
        per_buyer,
        now,
        expires_at: now + ttl,
    })
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
        let keys: Vec<Option<&KeyClaim>> = requests.iter().map(|r| r.key.as_deref()).collect();
        for (ask, taken) in asks.iter_mut().zip(taken_keys(txn, &keys).await?) {
            ask.refused = taken;
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
            let status = hold::Model::status_of_lines(&lines, now);
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
    metrics::counter!("holds_created_total", "product_id" => hold.product_id.get().to_string())
        .increment(1);
}

#[cfg(test)]
mod key_races;
