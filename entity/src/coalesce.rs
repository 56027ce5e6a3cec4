//! In-process coalescing in front of the stock operations, for the hot-product case.
//!
//! - [`HoldCoalescer`]: concurrent hold requests for one product are served by one transaction
//!   ([`holds::create_holds_batch`]), so the product row lock does a batch's work per
//!   acquisition. Several API processes stay correct: their batches serialize on the same lock.
//! - [`ProductReads`]: concurrent reads of one product share one query (single-flight), taken
//!   only by requests that arrived before the query started, so no answer is older than its
//!   request. There is no time-based cache.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    Db, DomainError,
    batcher::{BatchError, BatchPolicy, KeyedBatcher, Stage},
    db::ANSWER_WITHIN,
    holds::{self, HoldRequest, HoldView},
    idempotency::{self, KeyedRequest, Lookup},
    products::{self, ProductView},
    types::ProductId,
};

type HoldAnswer = Result<HoldView, DomainError>;

/// Hold requests that may wait for one product, per batch the transaction can take: beyond
/// that a request waits longer than the contract's 5 s anyway, so it is refused at once (503).
const QUEUED_BATCHES: usize = 16;
/// Concurrent reads waiting for one product's next query.
const MAX_QUEUED_READS: usize = 65_536;

impl From<BatchError> for DomainError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Overloaded => DomainError::Overloaded,
            BatchError::Panicked(message) => DomainError::Panicked(message),
        }
    }
}

/// A request left with less time than this is answered "busy" rather than started.
const TOO_LATE: Duration = Duration::from_millis(200);

/// When a request that arrived at `arrived` must be answered by.
fn due(arrived: Instant) -> Instant {
    arrived + ANSWER_WITHIN
}

#[derive(Clone)]
pub struct HoldCoalescer {
    batcher: Arc<KeyedBatcher<ProductId, (HoldRequest, Instant), HoldAnswer>>,
}

impl HoldCoalescer {
    /// `max_wait`: how long a batch's first request waits for company; `max_batch`: most
    /// requests per transaction.
    pub fn new(db: Db, ttl: chrono::Duration, max_wait: Duration, max_batch: usize) -> Self {
        let policy = BatchPolicy {
            max_batch: max_batch.max(1),
            max_wait,
            max_queued: max_batch.max(1) * QUEUED_BATCHES,
            // One batch per product at a time: what arrives meanwhile waits in the queue and
            // makes the next batch, instead of a second transaction holding a connection while
            // it waits for the row lock. Measured with wrk at 256 connections (three interleaved
            // rounds): with two in flight the batches were half the size and every path slower
            // (unkeyed holds 6,750-9,560/s against 11,580-15,740/s with one; keyed 4,410-5,400
            // against 5,840-7,700; buyer-limited 4,540-6,120 against 8,420-12,120).
            max_in_flight: 1,
        };
        let prepare = {
            let db = db.clone();
            move |_product, reqs| {
                let db = db.clone();
                async move { answer_finished_keys(&db, reqs).await }
            }
        };
        let batcher = KeyedBatcher::with_prepare(
            policy,
            prepare,
            move |product_id, reqs: Vec<(HoldRequest, Instant)>| {
                let db = db.clone();
                async move {
                    // Requests that waited behind a slow batch until too little of their time is
                    // left are answered now; the batch runs for the others, by the earliest's due.
                    let now = Instant::now();
                    let late = |arrived: Instant| due(arrived) < now + TOO_LATE;
                    let (live, arrivals): (Vec<HoldRequest>, Vec<Instant>) = reqs
                        .iter()
                        .filter(|(_, arrived)| !late(*arrived))
                        .cloned()
                        .unzip();
                    let mut answers = match arrivals.into_iter().map(due).min() {
                        None => Vec::new(),
                        Some(deadline) => {
                            match holds::create_holds_batch(&db, product_id, &live, ttl, deadline)
                                .await
                            {
                                Ok(answers) => answers,
                                // The whole batch failed (contention outlasted its retries,
                                // database gone): every request in it gets that answer.
                                Err(e) => live.iter().map(|_| Err(e.clone())).collect(),
                            }
                        }
                    }
                    .into_iter();
                    reqs.iter()
                        .map(|(_, arrived)| {
                            if late(*arrived) {
                                Err(DomainError::Contention { attempts: 0 })
                            } else {
                                answers.next().unwrap_or_else(|| {
                                    Err(DomainError::Invariant("a batch answered too few".into()))
                                })
                            }
                        })
                        .collect()
                }
            },
        );
        Self { batcher }
    }

    pub async fn create_hold(&self, product_id: ProductId, request: HoldRequest) -> HoldAnswer {
        let answer = self
            .batcher
            .call(product_id, (request, Instant::now()))
            .await
            .unwrap_or_else(|e| Err(e.into()));
        if let Ok(hold) = &answer {
            holds::log_hold_created(hold);
        }
        answer
    }
}

/// A hold batch's first step: the keys its requests brought that nobody has looked up yet are
/// looked up together, by one statement that takes no lock, and each request's slot is told what
/// was found. A key that had finished is answered now ([`DomainError::AnsweredByKey`]: its
/// first answer is replayed), before the batch waits for the product's lock; the others run.
/// (Looked up here rather than on arrival, a keyed hold waits in one queue, not two.)
async fn answer_finished_keys(
    db: &Db,
    reqs: Vec<(HoldRequest, Instant)>,
) -> Vec<Stage<(HoldRequest, Instant), HoldAnswer>> {
    let unchecked: Vec<&KeyedRequest> = reqs
        .iter()
        .filter(|(r, _)| r.key_unchecked())
        .filter_map(|(r, _)| r.keyed.as_ref().map(|k| &*k.request))
        .collect();
    if unchecked.is_empty() {
        return reqs.into_iter().map(Stage::Run).collect();
    }
    let deadline = reqs.iter().map(|(_, arrived)| due(*arrived)).min();
    let found = tokio::time::timeout_at(
        deadline.unwrap_or_else(Instant::now).into(),
        look_up(db, idempotency::HOLDS, &unchecked),
    )
    .await
    .unwrap_or_else(|_| Err(crate::db::out_of_time()));
    let mut found = match found {
        Ok(found) => found.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(e) => vec![Err(e); unchecked.len()],
    }
    .into_iter();
    reqs.into_iter()
        .map(|(req, arrived)| {
            if !req.key_unchecked() {
                return Stage::Run((req, arrived));
            }
            let lookup = match found.next() {
                Some(Ok(lookup)) => lookup,
                Some(Err(e)) => return Stage::Answered(Err(e)),
                None => {
                    let e = DomainError::Invariant("a key look-up answered too few".into());
                    return Stage::Answered(Err(e));
                }
            };
            let finished = lookup != Lookup::Absent;
            if let Some(slot) = &req.key_look_up {
                let _ = slot.set(lookup);
            }
            if finished {
                Stage::Answered(Err(DomainError::AnsweredByKey))
            } else {
                Stage::Run((req, arrived))
            }
        })
        .collect()
}

/// Looks keys of one scope up ([`idempotency::lookup_many`]), counted in the look-up metrics.
async fn look_up(
    db: &Db,
    scope: &str,
    requests: &[&KeyedRequest],
) -> Result<Vec<Lookup>, DomainError> {
    let started = Instant::now();
    let found = idempotency::lookup_many(db, scope, requests).await;
    metrics::histogram!("idempotency_lookup_batch_size").record(requests.len() as f64);
    metrics::histogram!("idempotency_lookup_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    found
}

#[derive(Clone)]
pub struct ProductReads {
    batcher: Arc<KeyedBatcher<ProductId, Instant, Result<ProductView, DomainError>>>,
}

impl ProductReads {
    pub fn new(db: Db) -> Self {
        let policy = BatchPolicy {
            max_batch: MAX_QUEUED_READS,
            max_wait: Duration::ZERO,
            max_queued: MAX_QUEUED_READS,
            max_in_flight: 1,
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
                waiters
                    .iter()
                    .map(|_| match &read {
                        Ok(view) => Ok(view.clone()),
                        Err(e) => Err(e.clone()),
                    })
                    .collect()
            }
        });
        Self { batcher }
    }

    pub async fn product_view(&self, product_id: ProductId) -> Result<ProductView, DomainError> {
        self.batcher
            .call(product_id, Instant::now())
            .await
            .unwrap_or_else(|e| Err(e.into()))
    }
}

/// Idempotency-key look-ups of concurrent requests share one query per scope, taken only by
/// requests that arrived before it started (so a key finished before a request arrived is
/// always seen by it).
///
/// A look-up's first request waits up to `max_wait` for company, as a hold batch's does: the
/// query's fixed cost is many times a key's, and it returns in about 0.1 ms, so without the
/// wait thousands of keyed requests a second would each pay for a query of their own (measured:
/// half the database's work per keyed hold).
#[derive(Clone)]
pub struct KeyLookups {
    batcher: Arc<KeyedBatcher<&'static str, Arc<KeyedRequest>, Result<Lookup, DomainError>>>,
}

impl KeyLookups {
    pub fn new(db: Db, max_wait: Duration) -> Self {
        let policy = BatchPolicy {
            max_batch: 1_000,
            max_wait,
            max_queued: MAX_QUEUED_READS,
            max_in_flight: 1,
        };
        let batcher = KeyedBatcher::new(policy, move |scope, requests: Vec<Arc<KeyedRequest>>| {
            let db = db.clone();
            async move {
                let refs: Vec<&KeyedRequest> = requests.iter().map(|r| &**r).collect();
                match look_up(&db, scope, &refs).await {
                    Ok(found) => found.into_iter().map(Ok).collect(),
                    Err(e) => requests.iter().map(|_| Err(e.clone())).collect(),
                }
            }
        });
        Self { batcher }
    }

    /// The request is shared with its caller (it is [`crate::idempotency::Keyed::request`]),
    /// not copied.
    pub async fn lookup(&self, request: Arc<KeyedRequest>) -> Result<Lookup, DomainError> {
        self.batcher
            .call(request.scope, request)
            .await
            .unwrap_or_else(|e| Err(e.into()))
    }
}
