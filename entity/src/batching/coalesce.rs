//! In-process coalescing in front of the stock operations, for the hot-product case.
//!
//! - [`HoldDesk`]: where hold requests are served. With coalescing, concurrent requests for one
//!   product are served by one batch ([`holds::serve_holds`]), so the product row lock does a
//!   batch's work per acquisition; several API processes stay correct, their batches
//!   serializing on the same lock. Without, each request is a batch of its own.
//! - [`ProductReads`]: concurrent reads of one product share one query (single-flight), taken
//!   only by requests that arrived before the query started, so no answer is older than its
//!   request. There is no time-based cache.
//! - [`KeyLookups`]: concurrent look-ups of idempotency keys share one query per scope.
//!
//! A call that the batching machinery could not serve says why ([`Unserved`]); what the
//! operation itself decided is its outcome.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    Db, DomainError,
    batching::batcher::{BatchError, BatchPolicy, KeyedBatcher},
    db::ANSWER_WITHIN,
    operations::carts::{self, CartRequest},
    operations::holds::{self, HoldOutcome, HoldRequest},
    operations::idempotency::{self, Lookup},
    operations::products::{self, ProductView},
    rules::keys::KeyClaim,
    types::ProductId,
};

/// Why a call got no outcome from its operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unserved {
    /// Too many calls already wait for this product (or scope) in this process.
    #[error("too many requests are waiting for this product")]
    Overloaded,
    /// The call waited behind slower batches until too little of its time was left to start.
    #[error("the request waited too long to be served")]
    Late,
    /// A bug: the batch panicked (the message is logged; the process goes on).
    #[error("the batch panicked: {0}")]
    Panicked(String),
    /// The operation failed as a whole (the database: busy, unavailable, a fault).
    #[error(transparent)]
    Failed(#[from] DomainError),
}

impl From<BatchError> for Unserved {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Overloaded => Self::Overloaded,
            BatchError::Panicked(message) => Self::Panicked(message),
        }
    }
}

/// Hold requests that may wait for one product, per batch the transaction can take: beyond
/// that a request waits longer than the contract's 5 s anyway, so it is refused at once (503).
const QUEUED_BATCHES: usize = 16;
/// Concurrent reads waiting for one product's next query.
const MAX_QUEUED_READS: usize = 65_536;

/// A request left with less time than this is answered "late" rather than started.
const TOO_LATE: Duration = Duration::from_millis(200);

/// When a request that arrived at `arrived` must be answered by.
fn due(arrived: Instant) -> Instant {
    arrived + ANSWER_WITHIN
}

/// A hold request on its way into a batch: when it arrived, and the flag that rises when its
/// client goes away (`None`: always wanted).
pub type Call = (Asked, Instant, Option<Arc<AtomicBool>>);

/// What a call of a product's batch asks for: a hold of that product, or a cart that includes
/// it (served in the same transaction, after the holds).
#[derive(Clone)]
pub enum Asked {
    One(HoldRequest),
    Cart(CartRequest),
}

/// Where hold requests are served: coalesced per product, or each on its own.
#[derive(Clone)]
pub enum HoldDesk {
    Coalesced(Arc<KeyedBatcher<ProductId, Call, Result<HoldOutcome, Unserved>>>),
    OneByOne { db: Db, ttl: chrono::Duration },
}

impl HoldDesk {
    /// Each request in a transaction of its own.
    pub fn one_by_one(db: Db, ttl: chrono::Duration) -> Self {
        Self::OneByOne { db, ttl }
    }

    /// Concurrent requests for one product in one batch: `max_wait` is how long a batch's
    /// first request waits for company, `max_batch` the most requests per transaction.
    pub fn coalesced(db: Db, ttl: chrono::Duration, max_wait: Duration, max_batch: usize) -> Self {
        let policy = BatchPolicy {
            name: "holds",
            max_batch: max_batch.max(1),
            max_wait,
            max_queued: max_batch.max(1) * QUEUED_BATCHES,
        };
        // Products whose last batch was refused for stock: their next batch tries one read
        // first (`holds::serve_holds`). At most one entry per product that exists.
        let sold_out: Arc<Mutex<HashSet<ProductId>>> = Arc::default();
        Self::Coalesced(KeyedBatcher::new(
            policy,
            move |product_id, calls: Vec<Call>| {
                let (db, sold_out) = (db.clone(), sold_out.clone());
                async move { serve_batch(&db, product_id, calls, ttl, &sold_out).await }
            },
        ))
    }

    /// Serves one request for a hold on `product_id`. `gone` rises when its client goes away:
    /// a request whose client has gone by the time its batch holds the product's lock takes
    /// nothing ([`HoldOutcome::Withdrawn`]).
    pub async fn serve(
        &self,
        product_id: ProductId,
        request: HoldRequest,
        gone: Option<Arc<AtomicBool>>,
    ) -> Result<HoldOutcome, Unserved> {
        let outcome = match self {
            Self::Coalesced(batcher) => batcher
                .call(product_id, (Asked::One(request), Instant::now(), gone))
                .await
                .unwrap_or_else(|e| Err(e.into())),
            Self::OneByOne { db, ttl } => {
                let withdrawn = move |_| gone.as_ref().is_some_and(|g| g.load(Ordering::Relaxed));
                // Boxed: the transaction's future is large, and every request's future would
                // otherwise carry (and copy) room for it.
                let deadline = Instant::now() + ANSWER_WITHIN;
                let requests = [request];
                let batch = holds::serve_holds(
                    db, product_id, &requests, *ttl, deadline, &withdrawn, false,
                );
                only_outcome(Box::pin(batch).await)
            }
        };
        if let Ok(HoldOutcome::Granted(hold)) = &outcome {
            holds::log_hold_created(hold);
        }
        outcome
    }
}

impl HoldDesk {
    /// Serves one cart. Coalesced, it joins the batch of one of its products: one that has
    /// holds queued or running in this process (a hot product), else its first; it is then
    /// served in that batch's transaction, after its holds. Alone, a transaction of its own.
    pub async fn serve_cart(
        &self,
        request: CartRequest,
        gone: Option<Arc<AtomicBool>>,
    ) -> Result<HoldOutcome, Unserved> {
        let outcome = match self {
            Self::Coalesced(batcher) => {
                let products = request.products();
                let anchor = products
                    .iter()
                    .find(|p| batcher.is_busy(p))
                    .or(products.first())
                    .copied()
                    .unwrap_or(ProductId::new(0));
                batcher
                    .call(anchor, (Asked::Cart(request), Instant::now(), gone))
                    .await
                    .unwrap_or_else(|e| Err(e.into()))
            }
            // A batch of its own, on its first product.
            Self::OneByOne { db, ttl } => {
                let withdrawn = move |_| gone.as_ref().is_some_and(|g| g.load(Ordering::Relaxed));
                let deadline = Instant::now() + ANSWER_WITHIN;
                let first = request.lines()[0].product_id;
                let carts = [request];
                let batch = holds::serve_with_carts(
                    db,
                    first,
                    &[],
                    &carts,
                    *ttl,
                    deadline,
                    &withdrawn,
                    false,
                );
                only_outcome(Box::pin(batch).await.map(|(_, carts)| carts))
            }
        };
        if let Ok(HoldOutcome::Granted(hold)) = &outcome {
            carts::log_cart_created(hold);
        }
        outcome
    }
}

/// The one outcome of a batch of one.
fn only_outcome(served: Result<Vec<HoldOutcome>, DomainError>) -> Result<HoldOutcome, Unserved> {
    served.map_err(Unserved::Failed).and_then(|mut outcomes| {
        outcomes.pop().ok_or_else(|| {
            Unserved::Failed(DomainError::Invariant(
                "a batch of one had no outcome".into(),
            ))
        })
    })
}

/// One product's batch: requests that waited behind slower batches until too little of their
/// time is left are answered [`Unserved::Late`]; the batch runs for the others, by the earliest
/// one's due.
async fn serve_batch(
    db: &Db,
    product_id: ProductId,
    calls: Vec<Call>,
    ttl: chrono::Duration,
    sold_out: &Mutex<HashSet<ProductId>>,
) -> Vec<Result<HoldOutcome, Unserved>> {
    let now = Instant::now();
    let late = |arrived: Instant| due(arrived) < now + TOO_LATE;
    let live: Vec<&Call> = calls
        .iter()
        .filter(|(_, arrived, _)| !late(*arrived))
        .collect();
    let mut outcomes = match live.iter().map(|(_, arrived, _)| due(*arrived)).min() {
        None => Vec::new(),
        Some(deadline) => {
            // The holds first, then the carts riding along: `order[i]` is where each is in `live`.
            let (mut requests, mut carts, mut order) = (Vec::new(), Vec::new(), Vec::new());
            for (i, (asked, _, _)) in live.iter().enumerate() {
                if let Asked::One(r) = asked {
                    requests.push(r.clone());
                    order.push(i);
                }
            }
            for (i, (asked, _, _)) in live.iter().enumerate() {
                if let Asked::Cart(c) = asked {
                    carts.push(c.clone());
                    order.push(i);
                }
            }
            let withdrawn = |i: usize| {
                live[order[i]]
                    .2
                    .as_ref()
                    .is_some_and(|g| g.load(Ordering::Relaxed))
            };
            let was_sold_out = sold_out
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&product_id);
            let served = holds::serve_with_carts(
                db,
                product_id,
                &requests,
                &carts,
                ttl,
                deadline,
                &withdrawn,
                was_sold_out,
            );
            match served.await {
                Ok((outcomes, cart_outcomes)) => {
                    let refused_for_stock = outcomes.iter().all(|o| {
                        matches!(
                            o,
                            HoldOutcome::Refused(DomainError::InsufficientStock { .. })
                                | HoldOutcome::Withdrawn
                        )
                    });
                    if !outcomes.is_empty() {
                        let mut set = sold_out.lock().unwrap_or_else(|p| p.into_inner());
                        if refused_for_stock {
                            set.insert(product_id);
                        } else {
                            set.remove(&product_id);
                        }
                    }
                    let mut in_order: Vec<Option<HoldOutcome>> = vec![None; live.len()];
                    for (&i, outcome) in order.iter().zip(outcomes.into_iter().chain(cart_outcomes))
                    {
                        in_order[i] = Some(outcome);
                    }
                    in_order
                        .into_iter()
                        .map(|o| {
                            o.ok_or_else(|| {
                                Unserved::Failed(DomainError::Invariant(
                                    "a batch answered too few".into(),
                                ))
                            })
                        })
                        .collect()
                }
                // The whole batch failed (contention outlasted its retries, database gone):
                // every request in it gets that answer.
                Err(e) => live
                    .iter()
                    .map(|_| Err(Unserved::Failed(e.clone())))
                    .collect(),
            }
        }
    }
    .into_iter();
    calls
        .iter()
        .map(|(_, arrived, _)| {
            if late(*arrived) {
                Err(Unserved::Late)
            } else {
                outcomes.next().unwrap_or_else(|| {
                    Err(Unserved::Failed(DomainError::Invariant(
                        "a batch answered too few".into(),
                    )))
                })
            }
        })
        .collect()
}

#[derive(Clone)]
pub struct ProductReads {
    batcher: Arc<KeyedBatcher<ProductId, Instant, Result<ProductView, DomainError>>>,
}

impl ProductReads {
    pub fn new(db: Db) -> Self {
        let policy = BatchPolicy {
            name: "product_reads",
            max_batch: MAX_QUEUED_READS,
            max_wait: Duration::ZERO,
            max_queued: MAX_QUEUED_READS,
        };
        let batcher = KeyedBatcher::new(policy, move |product_id, waiters: Vec<Instant>| {
            let db = db.clone();
            async move {
                // Waiters queued while the previous read ran: this read answers by the
                // earliest one's due (a cancelled read leaves its connection to the pool,
                // which drains it).
                let deadline = waiters
                    .iter()
                    .copied()
                    .map(due)
                    .min()
                    .unwrap_or_else(Instant::now);
                let read = tokio::time::timeout_at(
                    deadline.into(),
                    products::product_view(&db, product_id),
                )
                .await
                .unwrap_or_else(|_| Err(crate::db::out_of_time()));
                waiters.iter().map(|_| read.clone()).collect()
            }
        });
        Self { batcher }
    }

    pub async fn product_view(&self, product_id: ProductId) -> Result<ProductView, Unserved> {
        match self.batcher.call(product_id, Instant::now()).await {
            Ok(read) => read.map_err(Unserved::Failed),
            Err(e) => Err(e.into()),
        }
    }
}

/// Idempotency-key look-ups of concurrent requests share one query per scope, taken only by
/// requests that arrived before it started (so a key finished before a request arrived is
/// always seen by it).
///
/// A look-up's first request waits up to `max_wait` for company, as a hold batch's does: the
/// query's fixed cost is many times a key's, so without the wait thousands of keyed requests a
/// second would each pay for a query of their own.
#[derive(Clone)]
pub struct KeyLookups {
    batcher: Arc<KeyedBatcher<&'static str, Arc<KeyClaim>, Result<Lookup, DomainError>>>,
}

impl KeyLookups {
    pub fn new(db: Db, max_wait: Duration) -> Self {
        let policy = BatchPolicy {
            name: "key_lookups",
            max_batch: 1_000,
            max_wait,
            max_queued: MAX_QUEUED_READS,
        };
        let batcher = KeyedBatcher::new(policy, move |scope, claims: Vec<Arc<KeyClaim>>| {
            let db = db.clone();
            async move {
                let refs: Vec<&KeyClaim> = claims.iter().map(|r| &**r).collect();
                match idempotency::lookup_counted(&db, scope, &refs).await {
                    Ok(found) => found.into_iter().map(Ok).collect(),
                    Err(e) => claims.iter().map(|_| Err(e.clone())).collect(),
                }
            }
        });
        Self { batcher }
    }

    /// What is known of the key of `claim` (shared with its caller, not copied).
    pub async fn lookup(&self, claim: Arc<KeyClaim>) -> Result<Lookup, Unserved> {
        match self.batcher.call(claim.scope, claim).await {
            Ok(found) => found.map_err(Unserved::Failed),
            Err(e) => Err(e.into()),
        }
    }
}
