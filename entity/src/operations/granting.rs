//! What a one-product hold request and a cart share on their way through a batch: their
//! outcome, the look-up of their keys before the batch's transaction, the writing of keyed
//! refusals inside it, and the units each buyer already has on a product (for its limit).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement};

use crate::{
    Db, DomainError, OrderStatus,
    db::{ServerTraits, out_of_time},
    hold::HoldStatus,
    operations::idempotency::{
        self, Lookup, Replay, StoredOutcome, StoredRefusal, check_in_txn, store_in_txn,
    },
    rules::keys::KeyClaim,
    types::ProductId,
    views::HoldView,
};

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

/// Inside a batch's transaction, which of its requests' keys another request has taken
/// meanwhile (a twin in another process committed first): that request's refusal, one entry
/// per request (none: its key is free, or it has none).
pub(crate) async fn taken_keys<C: ConnectionTrait>(
    txn: &C,
    keys: &[Option<&KeyClaim>],
) -> Result<Vec<Option<DomainError>>, DomainError> {
    let keyed: Vec<(usize, &KeyClaim)> = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.map(|k| (i, k)))
        .collect();
    let mut taken = vec![None; keys.len()];
    if keyed.is_empty() {
        return Ok(taken);
    }
    let claims: Vec<&KeyClaim> = keyed.iter().map(|(_, k)| *k).collect();
    for ((i, _), check) in keyed.iter().zip(check_in_txn(txn, &claims).await?) {
        taken[*i] = check.err();
    }
    Ok(taken)
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
