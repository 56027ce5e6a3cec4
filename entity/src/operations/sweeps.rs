//! Expired holds giving their stock back: the worker's sweep ([`expire_batch`]) and the
//! reclaim a hold request or a restock runs under the product lock when it finds too little
//! available. Both lock with `SKIP LOCKED`, so each expired hold is returned exactly once however
//! many sweepers and API processes reach it.

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{LockBehavior, LockType},
};

use crate::{
    Db, DomainError,
    db::{now, with_retry},
    hold::{self, HoldStatus},
    rules::transitions::{HoldRef, move_holds},
    types::ProductId,
};

/// Expired holds reclaimed per statement when a hold request finds too little stock.
const RECLAIM_CHUNK: u64 = 1000;

/// A hold whose stock went back to its product because its time ran out.
pub type ExpiredHold = HoldRef;

/// Releases up to `batch_size` expired holds, oldest first, in one transaction, skipping holds
/// another worker or an API reclaim has locked (`FOR UPDATE SKIP LOCKED`), so each hold is
/// released exactly once however many sweepers run. Returns the holds this call released.
pub async fn expire_batch(db: &Db, batch_size: u64) -> Result<Vec<ExpiredHold>, DomainError> {
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
) -> Result<Vec<ExpiredHold>, DomainError> {
    let mut query = hold::Entity::find()
        .select_only()
        .columns([
            hold::Column::Id,
            hold::Column::ProductId,
            hold::Column::Qty,
            hold::Column::CartId,
        ])
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

/// Reclaims a locked product's expired holds, a chunk at a time, while its available stock is
/// below `need`. Answers the available stock after that, and the holds reclaimed.
pub(crate) async fn reclaim_expired<C: ConnectionTrait>(
    txn: &C,
    product_id: ProductId,
    now: DateTime<Utc>,
    mut available: i32,
    need: i64,
) -> Result<(i32, Vec<ExpiredHold>), DomainError> {
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

/// The `hold.expired` lines and counter, `by` whoever returned the stock (`api`, `worker`).
pub(crate) fn log_expired(holds: &[ExpiredHold], by: &'static str) {
    for h in holds {
        tracing::info!(
            metric = "hold.expired",
            hold_id = h.public_id().get(),
            product_id = h.product_id.get(),
            quantity = h.qty,
            by,
            "hold expired, stock returned"
        );
    }
    if !holds.is_empty() {
        metrics::counter!("holds_expired_total", "by" => by).increment(holds.len() as u64);
    }
}
