//! Carts: one hold over several products, all held or none.
//!
//! A cart is one hold row per product: its first row carries `cart_lines`, its others the first
//! row's id (`holds.cart_id`), so every per-product rule and counter (stock, the sale window,
//! buyer limits, admission, expiry) works on the lines unchanged. A cart is served in a hold
//! batch's transaction (`holds::serve_with_carts`), which locks every product it touches in id
//! order: the one global order every path that locks several products keeps, so no two
//! transactions wait on each other in a circle. `plan` decides carts of one set of products
//! under those locks; `decide` also writes them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Utc};

use sea_orm::{DatabaseTransaction, EntityTrait, QuerySelect};

use crate::{
    Db, DomainError, Money, Quantity,
    db::now,
    error::LineRefusal,
    operations::granting::{HoldOutcome, store_refusals, taken_keys, units_per_buyer},
    operations::queue::{TicketPass, admissions, use_admissions},
    operations::sweeps::{ExpiredHold, reclaim_expired},
    product::{self, Admission},
    rules::keys::KeyClaim,
    rules::ownership::ClientSecret,
    rules::transitions::{CartLink, NewHold, create_all},
    types::{BuyerId, HoldId, ProductId, TicketId},
    views::{HoldView, LineView},
};

/// One line of a cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartLine {
    pub product_id: ProductId,
    pub qty: Quantity,
}

/// Why a cart's lines cannot be served as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CartLinesError {
    #[error("a cart needs at least one line")]
    Empty,
    #[error("at most {0} lines")]
    TooMany(usize),
    #[error("product {0} is named twice")]
    Repeated(ProductId),
}

/// A request for a cart: its lines (sorted by product, each product once), and who asks, as
/// for a one-product hold (`operations::holds::HoldRequest`).
#[derive(Debug, Clone)]
pub struct CartRequest {
    lines: Vec<CartLine>,
    pub buyer: Option<BuyerId>,
    pub secret: Option<ClientSecret>,
    pub key: Option<Arc<KeyClaim>>,
    /// The queue ticket it brings, for its lines of a product with queue admission.
    pub ticket: Option<TicketPass>,
}

impl CartRequest {
    /// A cart of these lines (in any order; kept in product order), at most `max_lines`.
    pub fn new(mut lines: Vec<CartLine>, max_lines: usize) -> Result<Self, CartLinesError> {
        if lines.is_empty() {
            return Err(CartLinesError::Empty);
        }
        if lines.len() > max_lines {
            return Err(CartLinesError::TooMany(max_lines));
        }
        lines.sort_by_key(|l| l.product_id);
        if let Some(twice) = lines
            .windows(2)
            .find(|w| w[0].product_id == w[1].product_id)
        {
            return Err(CartLinesError::Repeated(twice[0].product_id));
        }
        Ok(Self {
            lines,
            buyer: None,
            secret: None,
            key: None,
            ticket: None,
        })
    }

    pub fn lines(&self) -> &[CartLine] {
        &self.lines
    }

    /// Its products, in id order: carts of the same products are served together.
    pub fn products(&self) -> Vec<ProductId> {
        self.lines.iter().map(|l| l.product_id).collect()
    }
}

/// A locked product of the batch and what the transaction knows of it.
struct Stocked<'a> {
    model: product::Model,
    available: i32,
    /// Units each buyer of the batch has on it (only with a per-buyer limit).
    used: HashMap<&'a str, i32>,
}

/// What a cart request is, while its batch is decided.
enum Verdict {
    Open,
    /// Its caller has gone: nothing is done for it.
    Gone,
    /// Refused as a whole before any line is judged (its key is taken).
    Set(DomainError),
}

/// Decides carts of the same `products` (sorted) inside a hold batch's transaction, and creates
/// the granted ones (when the batch's own product is missing, or it carries several sets of
/// products, each decided and written in turn; see `holds::hold_transaction`).
pub(crate) async fn decide(
    db: &Db,
    txn: &DatabaseTransaction,
    products: &[ProductId],
    requests: &[&CartRequest],
    ttl: chrono::Duration,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    check_keys: bool,
) -> Result<(Vec<HoldOutcome>, Vec<ExpiredHold>), DomainError> {
    let plan = plan(
        txn,
        products,
        requests,
        now(),
        ttl,
        withdrawn,
        check_keys,
        None,
    )
    .await?;
    let new_lines = plan.new_lines(requests, 0);
    let per_product: Vec<(&product::Model, Vec<NewHold<'_>>)> = new_lines
        .into_iter()
        .map(|(j, holds)| (plan.model(j), holds))
        .collect();
    let (now, expires_at) = (plan.now, plan.expires_at);
    let ids = create_all(txn, db.server(), &per_product, now, expires_at).await?;
    drop(per_product);
    let (outcomes, reclaimed) = plan.finish(requests, ids);
    let keys: Vec<Option<&KeyClaim>> = requests.iter().map(|r| r.key.as_deref()).collect();
    let outcomes = store_refusals(txn, db.server(), &keys, outcomes, check_keys).await?;
    Ok((outcomes, reclaimed))
}

/// What a transaction decided for carts of one set of products, before their rows exist:
/// each request's verdict, and each product's row and what is left of it.
pub(crate) struct CartPlan {
    products: Vec<ProductId>,
    /// Per product: its locked row (none: it does not exist) and its available stock after
    /// this plan's grants.
    stocked: Vec<Option<(product::Model, i32)>>,
    decided: Vec<Option<Result<(), DomainError>>>,
    /// Whose each cart is: the request's buyer, or its ticket's.
    holders: Vec<Option<String>>,
    reclaimed: Vec<ExpiredHold>,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl CartPlan {
    /// The locked row of product `j` (one that exists: [`CartPlan::new_lines`] names only
    /// those).
    pub(crate) fn model(&self, j: usize) -> &product::Model {
        match &self.stocked[j] {
            Some((model, _)) => model,
            None => unreachable!("new lines are only made for products that exist"),
        }
    }

    /// How many carts the plan grants.
    pub(crate) fn granted(&self) -> usize {
        self.decided
            .iter()
            .filter(|d| matches!(d, Some(Ok(()))))
            .count()
    }

    /// What is left of `product` after this plan's grants, if the plan has it.
    pub(crate) fn left(&self, product: ProductId) -> Option<i32> {
        let j = self.products.iter().position(|&p| p == product)?;
        self.stocked[j].as_ref().map(|(_, left)| *left)
    }

    /// The granted carts' new lines, per product `j` that gets any (in id order), each
    /// product's in the order of the granted carts; `first_cart` numbers this plan's carts
    /// among the transaction's.
    pub(crate) fn new_lines<'a>(
        &'a self,
        requests: &[&'a CartRequest],
        first_cart: usize,
    ) -> Vec<(usize, Vec<NewHold<'a>>)> {
        let granted: Vec<usize> = (0..requests.len())
            .filter(|&i| matches!(self.decided[i], Some(Ok(()))))
            .collect();
        if granted.is_empty() {
            return Vec::new();
        }
        let lines = i32::try_from(self.products.len()).unwrap_or(i32::MAX);
        (0..self.products.len())
            .filter(|&j| self.stocked[j].is_some())
            .map(|j| {
                let holds = granted
                    .iter()
                    .enumerate()
                    .map(|(k, &i)| NewHold {
                        qty: requests[i].lines[j].qty.as_i32(),
                        secret_hash: requests[i].secret.as_ref().map(|s| s.hash().as_str()),
                        buyer: self.holders[i].as_deref(),
                        // The key goes on the first line, which answers for the cart.
                        key: requests[i].key.as_deref().filter(|_| j == 0),
                        cart: Some(match j {
                            0 => CartLink::First {
                                cart: first_cart + k,
                                lines,
                            },
                            _ => CartLink::Line {
                                cart: first_cart + k,
                            },
                        }),
                    })
                    .collect();
                (j, holds)
            })
            .collect()
    }

    /// Each request's outcome, given the ids [`create_all`] answered for
    /// [`CartPlan::new_lines`] (in the same order), and the expired holds the plan reclaimed.
    pub(crate) fn finish(
        self,
        requests: &[&CartRequest],
        ids: Vec<Vec<HoldId>>,
    ) -> (Vec<HoldOutcome>, Vec<ExpiredHold>) {
        let granted = self
            .decided
            .iter()
            .filter(|d| matches!(d, Some(Ok(()))))
            .count();
        let mut line_ids: Vec<Vec<HoldId>> = vec![Vec::new(); granted];
        for product_ids in ids {
            for (k, id) in product_ids.into_iter().enumerate() {
                if let Some(cart) = line_ids.get_mut(k) {
                    cart.push(id);
                }
            }
        }
        let mut carts = line_ids.into_iter();
        let outcomes = self
            .decided
            .into_iter()
            .enumerate()
            .map(|(i, decision)| match decision {
                None => HoldOutcome::Withdrawn,
                Some(Err(refusal)) => HoldOutcome::Refused(refusal),
                Some(Ok(())) => {
                    let ids = carts.next().unwrap_or_default();
                    let lines: Vec<LineView> = requests[i]
                        .lines
                        .iter()
                        .zip(&self.stocked)
                        .filter_map(|(line, stocked)| {
                            let (model, _) = stocked.as_ref()?;
                            Some(LineView {
                                product_id: line.product_id,
                                qty: line.qty.as_i32(),
                                unit_price: Money::from_cents(model.price_cents),
                            })
                        })
                        .collect();
                    let first = lines.first().copied();
                    HoldOutcome::Granted(HoldView {
                        id: ids.first().copied().unwrap_or(HoldId::new(0)),
                        product_id: first.map_or(self.products[0], |l| l.product_id),
                        qty: first.map_or(0, |l| l.qty),
                        lines,
                        status: crate::HoldStatus::Active,
                        expires_at: self.expires_at,
                        buyer_id: self.holders[i].clone(),
                        client_secret: requests[i].secret.clone(),
                    })
                }
            })
            .collect();
        (outcomes, self.reclaimed)
    }
}

/// What a transaction that rides carts along already knows of their products.
pub(crate) struct Known<'a> {
    /// A product it has locked and planned holds on, as it now stands.
    pub product: &'a product::Model,
    /// The units those holds give each buyer, not yet written.
    pub planned: &'a HashMap<String, i32>,
    /// The carts' other products, locked by the transaction and unchanged since.
    pub locked: &'a BTreeMap<ProductId, product::Model>,
}

/// Decides carts of the same `products` (sorted) under their locks (taken here, in id order,
/// unless [`Known`] has them), and marks the tickets the granted ones use. Nothing of the carts
/// is created yet.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn plan(
    txn: &DatabaseTransaction,
    products: &[ProductId],
    requests: &[&CartRequest],
    now: DateTime<Utc>,
    ttl: chrono::Duration,
    withdrawn: &(dyn Fn(usize) -> bool + Sync),
    check_keys: bool,
    known: Option<Known<'_>>,
) -> Result<CartPlan, DomainError> {
    // 1. Every product, exclusively, in id order (`products` is sorted).
    let mut locked: Vec<Option<product::Model>> = Vec::with_capacity(products.len());
    for &id in products {
        let already = known.as_ref().and_then(|k| match k.product.id == id {
            true => Some(k.product),
            false => k.locked.get(&id),
        });
        locked.push(match already {
            Some(model) => Some(model.clone()),
            None => {
                product::Entity::find_by_id(id)
                    .lock_exclusive()
                    .one(txn)
                    .await?
            }
        });
    }
    let mut verdicts: Vec<Verdict> = (0..requests.len())
        .map(|i| match withdrawn(i) {
            true => Verdict::Gone,
            false => Verdict::Open,
        })
        .collect();
    if check_keys {
        let keys: Vec<Option<&KeyClaim>> = requests.iter().map(|r| r.key.as_deref()).collect();
        for (verdict, taken) in verdicts.iter_mut().zip(taken_keys(txn, &keys).await?) {
            if let Some(taken) = taken {
                *verdict = Verdict::Set(taken);
            }
        }
    }
    let open = |i: usize, verdicts: &[Verdict]| matches!(verdicts[i], Verdict::Open);

    // 2. Line refusals that do not depend on other carts: `line_refusals[i][j]`.
    let n = requests.len();
    let mut line_refusals: Vec<Vec<Option<DomainError>>> = vec![vec![None; products.len()]; n];
    // The ticket each cart uses on each queue product, and the buyer it makes the cart's.
    let mut tickets: Vec<Vec<Option<TicketId>>> = vec![vec![None; products.len()]; n];
    let mut holders: Vec<Option<String>> = requests
        .iter()
        .map(|r| r.buyer.as_ref().map(|b| b.as_str().to_owned()))
        .collect();
    let mut ticket_buyers: Vec<Option<String>> = vec![None; n];
    for (j, model) in locked.iter().enumerate() {
        let Some(model) = model else {
            for row in line_refusals.iter_mut() {
                row[j] = Some(DomainError::ProductNotFound(products[j]));
            }
            continue;
        };
        if let Some(shut) = crate::rules::window::refusal(model, now) {
            for row in line_refusals.iter_mut() {
                row[j] = Some(shut.clone());
            }
            continue;
        }
        if model.admission == Admission::Queue {
            let eligible: Vec<usize> = (0..n).filter(|&i| open(i, &verdicts)).collect();
            let passes: Vec<(Option<&TicketPass>, Option<&str>)> = eligible
                .iter()
                .map(|&i| (requests[i].ticket.as_ref(), holders[i].as_deref()))
                .collect();
            let answers = admissions(txn, model.id, &passes, now).await?;
            for (&i, answer) in eligible.iter().zip(answers) {
                match answer {
                    Ok((ticket, buyer)) => {
                        tickets[i][j] = Some(ticket);
                        ticket_buyers[i] = Some(buyer);
                    }
                    Err(refusal) => line_refusals[i][j] = Some(refusal),
                }
            }
        }
    }
    // On a queue product the hold is its ticket's buyer's: limits count that buyer.
    for (holder, ticket_buyer) in holders.iter_mut().zip(ticket_buyers) {
        if holder.is_none() {
            *holder = ticket_buyer;
        }
    }

    // 3. Each product's counters: expired holds reclaimed where the carts need more, and the
    //    units the batch's buyers already have where a limit applies.
    let mut stocked: Vec<Option<Stocked<'_>>> = Vec::with_capacity(products.len());
    let mut reclaimed = Vec::new();
    for (j, model) in locked.into_iter().enumerate() {
        let Some(model) = model else {
            stocked.push(None);
            continue;
        };
        let wanting: Vec<usize> = (0..n)
            .filter(|&i| open(i, &verdicts) && line_refusals[i][j].is_none())
            .collect();
        let wanted: i64 = wanting
            .iter()
            .map(|&i| i64::from(requests[i].lines[j].qty.as_i32()))
            .sum();
        let (available, swept) =
            reclaim_expired(txn, model.id, now, model.available_stock, wanted).await?;
        reclaimed.extend(swept);
        let buyers: Vec<&str> = wanting
            .iter()
            .filter_map(|&i| holders[i].as_deref())
            .collect();
        let mut used = match model.per_buyer_limit {
            Some(_) if !buyers.is_empty() => units_per_buyer(txn, model.id, &buyers, now).await?,
            _ => HashMap::new(),
        };
        // Units the transaction's holds planned on this product count too, though unwritten.
        if let Some(Known {
            product: known,
            planned,
            ..
        }) = known.as_ref()
            && known.id == model.id
            && model.per_buyer_limit.is_some()
        {
            for &buyer in &buyers {
                if let Some(units) = planned.get(buyer) {
                    let sum = used.entry(buyer).or_default();
                    *sum = sum.saturating_add(*units);
                }
            }
        }
        stocked.push(Some(Stocked {
            model,
            available,
            used,
        }));
    }

    // 4. In arrival order: all lines or none.
    let mut decided: Vec<Option<Result<(), DomainError>>> = Vec::with_capacity(n);
    for i in 0..n {
        match &verdicts[i] {
            Verdict::Gone => {
                decided.push(None);
                continue;
            }
            Verdict::Set(refusal) => {
                decided.push(Some(Err(refusal.clone())));
                continue;
            }
            Verdict::Open => {}
        }
        let mut failing = Vec::new();
        for (j, line) in requests[i].lines.iter().enumerate() {
            let refusal = match (&line_refusals[i][j], &stocked[j]) {
                (Some(refusal), _) => Some(refusal.clone()),
                (None, Some(product)) => {
                    fits(product, holders[i].as_deref(), line.qty.as_i32()).err()
                }
                (None, None) => Some(DomainError::ProductNotFound(line.product_id)),
            };
            if let Some(refusal) = refusal {
                failing.push(LineRefusal {
                    product_id: line.product_id,
                    refusal,
                });
            }
        }
        if !failing.is_empty() {
            decided.push(Some(Err(DomainError::CartRefused(failing))));
            continue;
        }
        for (j, line) in requests[i].lines.iter().enumerate() {
            if let Some(product) = stocked[j].as_mut() {
                let qty = line.qty.as_i32();
                product.available -= qty;
                if let (Some(_), Some(buyer)) =
                    (product.model.per_buyer_limit, holders[i].as_deref())
                {
                    *product.used.entry(buyer).or_default() += qty;
                }
            }
        }
        decided.push(Some(Ok(())));
    }

    // 5. The tickets the granted carts use.
    for (j, product) in stocked.iter().enumerate() {
        let Some(product) = product else {
            continue;
        };
        let used: Vec<TicketId> = (0..n)
            .filter(|&i| matches!(decided[i], Some(Ok(()))))
            .filter_map(|i| tickets[i][j])
            .collect();
        use_admissions(txn, product.model.id, &used, now).await?;
    }
    let stocked = stocked
        .into_iter()
        .map(|s| s.map(|s| (s.model, s.available)))
        .collect();
    Ok(CartPlan {
        products: products.to_vec(),
        stocked,
        decided,
        holders,
        reclaimed,
        now,
        expires_at: now + ttl,
    })
}

/// Whether `qty` more units for `buyer` fit a product: its buyer limit, then its stock.
fn fits(product: &Stocked<'_>, buyer: Option<&str>, qty: i32) -> Result<(), DomainError> {
    if let Some(limit) = product.model.per_buyer_limit {
        let Some(buyer) = buyer else {
            return Err(DomainError::BuyerIdRequired);
        };
        let units = product.used.get(buyer).copied().unwrap_or_default();
        if units.saturating_add(qty) > limit {
            return Err(DomainError::BuyerLimitExceeded {
                remaining: (limit - units).max(0),
            });
        }
    }
    if product.available < qty {
        return Err(DomainError::InsufficientStock {
            available: product.available,
        });
    }
    Ok(())
}

/// The `hold.created` lines and counter of a granted cart: one line per product, each naming
/// the cart's id.
pub fn log_cart_created(hold: &HoldView) {
    for line in &hold.lines {
        tracing::info!(
            metric = "hold.created",
            hold_id = hold.id.get(),
            product_id = line.product_id.get(),
            quantity = line.qty,
            "hold created"
        );
        let product = line.product_id.get().to_string();
        metrics::counter!("holds_created_total", "product_id" => product).increment(1);
    }
}
