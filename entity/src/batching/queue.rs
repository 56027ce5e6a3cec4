//! Coalescing in front of the queue's operations, for the opening storm.
//!
//! - [`JoinDesk`]: concurrent joins of one product's queue are served by one transaction
//!   ([`queue::serve_joins`]) under the queue's lock.
//! - [`TicketReads`]: concurrent ticket reads share one statement ([`queue::read_tickets`]),
//!   taken only by reads that arrived before it started, so no answer is older than its
//!   request.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    Db, DomainError,
    batching::{
        batcher::{BatchPolicy, KeyedBatcher},
        coalesce::Unserved,
    },
    db::{ANSWER_WITHIN, out_of_time},
    operations::queue::{self, JoinOutcome, JoinRequest, TicketRead},
    types::{ProductId, TicketId},
};

/// Join requests that may wait for one product, per batch the transaction can take.
const QUEUED_BATCHES: usize = 16;
/// Concurrent ticket reads waiting for the next statement.
const MAX_QUEUED_READS: usize = 65_536;
/// Most tickets one read statement looks up.
const MAX_READ_BATCH: usize = 2_000;

/// A join on its way into a batch, with when it arrived.
type Join = (JoinRequest, Instant);
/// A ticket read on its way into a statement, with when it arrived.
type Read = (TicketId, Instant);

/// Where join requests are served: concurrent joins of one product in one transaction.
#[derive(Clone)]
pub struct JoinDesk {
    batcher: Arc<KeyedBatcher<ProductId, Join, Result<JoinOutcome, Unserved>>>,
}

impl JoinDesk {
    /// `max_wait` is how long a batch's first request waits for company, `max_batch` the most
    /// joins per transaction.
    pub fn new(db: Db, max_wait: Duration, max_batch: usize) -> Self {
        let policy = BatchPolicy {
            name: "queue_joins",
            max_batch: max_batch.max(1),
            max_wait,
            max_queued: max_batch.max(1) * QUEUED_BATCHES,
        };
        let batcher = KeyedBatcher::new(policy, move |product_id, calls: Vec<Join>| {
            let db = db.clone();
            async move {
                // By the earliest arrival's due: every join in the batch is answered in time.
                let deadline = calls
                    .iter()
                    .map(|(_, arrived)| *arrived + ANSWER_WITHIN)
                    .min()
                    .unwrap_or_else(Instant::now);
                let requests: Vec<JoinRequest> = calls.into_iter().map(|(r, _)| r).collect();
                match queue::serve_joins(&db, product_id, &requests, deadline).await {
                    Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                    Err(e) => requests
                        .iter()
                        .map(|_| Err(Unserved::Failed(e.clone())))
                        .collect(),
                }
            }
        });
        Self { batcher }
    }

    /// Joins one buyer to a product's queue.
    pub async fn join(
        &self,
        product_id: ProductId,
        request: JoinRequest,
    ) -> Result<JoinOutcome, Unserved> {
        self.batcher
            .call(product_id, (request, Instant::now()))
            .await
            .unwrap_or_else(|e| Err(e.into()))
    }
}

/// Concurrent ticket reads share one statement.
#[derive(Clone)]
pub struct TicketReads {
    batcher: Arc<KeyedBatcher<(), Read, Result<Option<TicketRead>, DomainError>>>,
}

impl TicketReads {
    pub fn new(db: Db) -> Self {
        let policy = BatchPolicy {
            name: "ticket_reads",
            max_batch: MAX_READ_BATCH,
            max_wait: Duration::ZERO,
            max_queued: MAX_QUEUED_READS,
        };
        let batcher = KeyedBatcher::new(policy, move |(), calls: Vec<Read>| {
            let db = db.clone();
            async move {
                let deadline = calls
                    .iter()
                    .map(|(_, arrived)| *arrived + ANSWER_WITHIN)
                    .min()
                    .unwrap_or_else(Instant::now);
                let mut ids: Vec<TicketId> = calls.iter().map(|(id, _)| *id).collect();
                ids.sort_unstable();
                ids.dedup();
                let read = tokio::time::timeout_at(deadline.into(), queue::read_tickets(&db, &ids))
                    .await
                    .unwrap_or_else(|_| Err(out_of_time()));
                match read {
                    Ok(found) => calls
                        .iter()
                        .map(|(id, _)| Ok(found.iter().find(|t| t.model.id == *id).cloned()))
                        .collect(),
                    Err(e) => calls.iter().map(|_| Err(e.clone())).collect(),
                }
            }
        });
        Self { batcher }
    }

    /// A ticket as a statement that started after this call read it, or none if it does not
    /// exist. The caller checks who may see it.
    pub async fn read(&self, id: TicketId) -> Result<Option<TicketRead>, Unserved> {
        match self.batcher.call((), (id, Instant::now())).await {
            Ok(read) => read.map_err(Unserved::Failed),
            Err(e) => Err(e.into()),
        }
    }
}
