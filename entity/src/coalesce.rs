//! In-process coalescing in front of the stock operations, for the hot-product case.
//!
//! - [`HoldCoalescer`]: concurrent hold requests for one product are served by one transaction
//!   ([`stock::create_holds_batch`]), so the product row lock does a batch's work per
//!   acquisition. Several API processes stay correct: their batches serialize on the same lock.
//! - [`ProductReads`]: concurrent reads of one product share one query (single-flight), taken
//!   only by requests that arrived before the query started, so no answer is older than its
//!   request. There is no time-based cache.

use std::{sync::Arc, time::Duration};

use crate::{
    Db, Quantity, StockError,
    batcher::{BatchPolicy, KeyedBatcher},
    stock::{self, HoldView, ProductView},
    types::ProductId,
};

type HoldAnswer = Result<HoldView, StockError>;

/// How long a key's gathering task lives without calls.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct HoldCoalescer {
    batcher: Arc<KeyedBatcher<ProductId, Quantity, HoldAnswer>>,
}

impl HoldCoalescer {
    /// `max_wait`: how long a batch's first request waits for company; `max_batch`: most
    /// requests per transaction.
    pub fn new(db: Db, ttl: chrono::Duration, max_wait: Duration, max_batch: usize) -> Self {
        let policy = BatchPolicy {
            max_batch: max_batch.max(1),
            max_wait,
            idle: IDLE,
        };
        let batcher = KeyedBatcher::new(policy, move |product_id, qtys: Vec<Quantity>| {
            let db = db.clone();
            async move {
                match stock::create_holds_batch(&db, product_id, &qtys, ttl).await {
                    Ok(answers) => answers,
                    // The whole batch failed (contention outlasted its retries, database gone):
                    // every request in it gets that answer.
                    Err(e) => qtys.iter().map(|_| Err(e.clone())).collect(),
                }
            }
        });
        Self { batcher }
    }

    pub async fn create_hold(&self, product_id: ProductId, qty: Quantity) -> HoldAnswer {
        let answer = self
            .batcher
            .call(product_id, qty)
            .await
            .unwrap_or_else(|| Err(StockError::Contention { attempts: 0 }));
        if let Ok(hold) = &answer {
            stock::log_hold_created(hold);
        }
        answer
    }
}

#[derive(Clone)]
pub struct ProductReads {
    batcher: Arc<KeyedBatcher<ProductId, (), Result<ProductView, StockError>>>,
}

impl ProductReads {
    pub fn new(db: Db) -> Self {
        let policy = BatchPolicy {
            max_batch: 100_000,
            max_wait: Duration::ZERO,
            idle: IDLE,
        };
        let batcher = KeyedBatcher::new(policy, move |product_id, waiters: Vec<()>| {
            let db = db.clone();
            async move {
                let read = stock::product_view(&db, product_id).await;
                waiters
                    .iter()
                    .map(|()| match &read {
                        Ok(view) => Ok(view.clone()),
                        Err(e) => Err(e.clone()),
                    })
                    .collect()
            }
        });
        Self { batcher }
    }

    pub async fn product_view(&self, product_id: ProductId) -> Result<ProductView, StockError> {
        self.batcher
            .call(product_id, ())
            .await
            .unwrap_or_else(|| Err(StockError::Contention { attempts: 0 }))
    }
}
