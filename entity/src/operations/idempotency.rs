//! Client idempotency keys (IETF httpapi Idempotency-Key draft), stored in the database so they
//! hold across API processes, for 24 hours.
//!
//! A key ([`KeyClaim`]), its request's fingerprint and its outcome are written in the SAME
//! transaction as the request's effect (the hold batch, the order), by [`store_in_txn`]. So
//! there is never a "claimed but unanswered" row: after a crash at any moment a retry finds
//! either the finished outcome ([`lookup_many`], a plain read that takes no product lock) or no
//! trace, and then runs afresh. Two requests with one key racing in different processes both
//! reach their INSERT; the unique key makes the second wait for the first and then fail, its
//! transaction is retried ([`DomainError::Busy`]) and finds the key taken ([`check_in_txn`]).
//!
//! What is kept is a typed outcome ([`StoredOutcome`]), never HTTP bytes: the API renders it,
//! the first time and on every replay. A granted keyed hold keeps its key on its own row
//! (`holds.idem_key`, unique), written by the batch's one hold `INSERT`, and is replayed from
//! the hold; every other outcome (a keyed hold's refusal, every order key) is a row of
//! `idempotency_keys`. Keys of the `holds` scope are looked up in both places with one
//! statement.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveEnum, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr, Statement, sea_query::Expr,
};

use serde::{Deserialize, Serialize};

use crate::{
    Db, DomainError,
    db::{ServerTraits, now, with_retry},
    hold,
    idempotency_key::{self as key, KeyState},
    rules::keys::KeyClaim,
    types::{HoldId, ProductId},
    views::{HoldView, OrderCreated},
};

/// How long a key is kept.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);

/// What a finished keyed request's outcome is kept as, in `idempotency_keys` (a granted hold
/// is kept as the hold itself). Stored as JSON: these names are the stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredOutcome {
    /// The request was refused.
    Refused(StoredRefusal),
    /// An order request: the order as it was answered, made or found.
    Order(OrderCreated),
}

/// A refusal worth answering again to a retry (see [`StoredRefusal::of`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum StoredRefusal {
    InsufficientStock {
        available: i32,
    },
    BuyerLimitExceeded {
        remaining: i32,
    },
    BuyerIdRequired,
    SaleEnded,
    ProductNotFound {
        product_id: ProductId,
    },
    HoldNotFound {
        hold_id: HoldId,
    },
    HoldExpired {
        hold_id: HoldId,
    },
    HoldReleased {
        hold_id: HoldId,
    },
    /// A cart refused: each failing line's own refusal.
    Cart {
        lines: Vec<StoredLine>,
    },
}

/// One refused line of a stored cart refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLine {
    pub product_id: ProductId,
    pub refusal: StoredRefusal,
}

impl StoredRefusal {
    /// The refusals a key keeps. Not kept: a failure of the database (its retry must run
    /// afresh), a key that was not this request's (in use, another body), a client that had
    /// gone, and "not yet" (`sale_not_started`: a retry after the opening runs afresh).
    pub fn of(refusal: &DomainError) -> Option<Self> {
        Some(match *refusal {
            DomainError::InsufficientStock { available } => Self::InsufficientStock { available },
            DomainError::BuyerLimitExceeded { remaining } => Self::BuyerLimitExceeded { remaining },
            DomainError::BuyerIdRequired => Self::BuyerIdRequired,
            DomainError::SaleEnded => Self::SaleEnded,
            DomainError::ProductNotFound(product_id) => Self::ProductNotFound { product_id },
            DomainError::HoldNotFound(hold_id) => Self::HoldNotFound { hold_id },
            DomainError::HoldExpired(hold_id) => Self::HoldExpired { hold_id },
            DomainError::HoldReleased(hold_id) => Self::HoldReleased { hold_id },
            // Kept only when every line's refusal is.
            DomainError::CartRefused(ref lines) => Self::Cart {
                lines: lines
                    .iter()
                    .map(|l| {
                        Some(StoredLine {
                            product_id: l.product_id,
                            refusal: Self::of(&l.refusal)?,
                        })
                    })
                    .collect::<Option<_>>()?,
            },
            _ => return None,
        })
    }

    pub fn into_error(self) -> DomainError {
        match self {
            Self::InsufficientStock { available } => DomainError::InsufficientStock { available },
            Self::BuyerLimitExceeded { remaining } => DomainError::BuyerLimitExceeded { remaining },
            Self::BuyerIdRequired => DomainError::BuyerIdRequired,
            Self::SaleEnded => DomainError::SaleEnded,
            Self::ProductNotFound { product_id } => DomainError::ProductNotFound(product_id),
            Self::HoldNotFound { hold_id } => DomainError::HoldNotFound(hold_id),
            Self::HoldExpired { hold_id } => DomainError::HoldExpired(hold_id),
            Self::HoldReleased { hold_id } => DomainError::HoldReleased(hold_id),
            Self::Cart { lines } => DomainError::CartRefused(
                lines
                    .into_iter()
                    .map(|l| crate::error::LineRefusal {
                        product_id: l.product_id,
                        refusal: l.refusal.into_error(),
                    })
                    .collect(),
            ),
        }
    }
}

/// What a retry with a finished key is answered: its first request's outcome, as it was.
#[derive(Debug, Clone)]
pub enum Replay {
    /// A granted hold (`active`, with its expiry), rebuilt from the hold's row.
    Hold(HoldView),
    /// An order, as first answered: made by that request, or found made.
    Order(OrderCreated),
    /// A refusal.
    Refused(DomainError),
}

impl From<StoredOutcome> for Replay {
    fn from(outcome: StoredOutcome) -> Self {
        match outcome {
            StoredOutcome::Refused(refusal) => Self::Refused(refusal.into_error()),
            StoredOutcome::Order(order) => Self::Order(order),
        }
    }
}

/// What is known of a key before its request runs.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Never used (or expired): run the request.
    Absent,
    /// Same key, same request, finished: answer this again.
    Finished(Replay),
    /// Same key, another request.
    Mismatch,
}

/// The scope whose granted requests keep their keys on their hold rows.
pub const HOLDS: &str = "holds";

/// Where a key was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A row of `idempotency_keys` (its id).
    KeyRow(i64),
    /// A hold's own key (the hold's id).
    Hold(HoldId),
}

/// A stored key, as the look-ups and the in-transaction check need it.
#[derive(Debug)]
struct Found {
    key: String,
    fingerprint: String,
    place: Place,
    created_at: DateTime<Utc>,
}

impl Found {
    /// Kept for [`RETENTION`]: older, the key is free again.
    fn live(&self, now: DateTime<Utc>) -> bool {
        self.created_at + RETENTION > now
    }
}

/// Looks keys of one scope up without locking anything (a replay never waits for the product
/// lock): one statement for all of them, and one more per place only when some were found
/// with the same request (replays). A hold batch looks up its requests' keys with one call
/// before it locks the product; [`crate::batching::coalesce::KeyLookups`] gathers the other keys of
/// concurrent requests into one call.
pub async fn lookup_many(
    db: &Db,
    scope: &str,
    requests: &[&KeyClaim],
) -> Result<Vec<Lookup>, DomainError> {
    let keys: Vec<&str> = requests.iter().map(|r| r.key.as_str()).collect();
    let rows = db.read(|| find_keys(db.conn(), scope, &keys)).await?;
    let found = live_by_key(&rows, now());
    let (mut key_ids, mut hold_ids) = (Vec::new(), Vec::new());
    for r in requests {
        match found.get(r.key.as_str()) {
            Some(f) if f.fingerprint == r.fingerprint => match f.place {
                Place::KeyRow(id) => key_ids.push(id),
                Place::Hold(id) => hold_ids.push(id),
            },
            _ => {}
        }
    }
    let key_rows = by_id::<key::Entity, _>(db, key::Column::Id, key_ids, |m| m.id).await?;
    let holds = by_id::<hold::Entity, _>(db, hold::Column::Id, hold_ids, |m| m.id).await?;
    // A cart's key is on its first line: its answer lists every line.
    let carts: Vec<HoldId> = holds
        .values()
        .filter(|h| h.is_cart())
        .map(|h| h.id)
        .collect();
    let lines = by_id::<hold::Entity, _>(db, hold::Column::CartId, carts, |m| m.id).await?;
    let granted = |h: &hold::Model| {
        let mut mine: Vec<hold::Model> = lines
            .values()
            .filter(|l| l.cart_id == Some(h.id))
            .cloned()
            .collect();
        mine.sort_by_key(|l| l.id);
        mine.insert(0, h.clone());
        let mut view = HoldView::as_granted(h);
        if let Some(with_lines) = HoldView::of_lines(&mine, h.created_at) {
            view.lines = with_lines.lines;
        }
        view
    };
    requests
        .iter()
        .map(|r| match found.get(r.key.as_str()) {
            None => Ok(Lookup::Absent),
            Some(f) if f.fingerprint != r.fingerprint => Ok(Lookup::Mismatch),
            Some(f) => match f.place {
                Place::KeyRow(id) => key_rows
                    .get(&id)
                    .ok_or_else(|| DomainError::Invariant(format!("key row {id} vanished")))
                    .and_then(stored_outcome)
                    .map(|outcome| Lookup::Finished(outcome.into())),
                Place::Hold(id) => holds
                    .get(&id)
                    .map(|h| Lookup::Finished(Replay::Hold(granted(h))))
                    .ok_or_else(|| DomainError::Invariant(format!("hold {id} vanished"))),
            },
        })
        .collect()
}

/// [`lookup_many`], counted in the look-up metrics.
pub(crate) async fn lookup_counted(
    db: &Db,
    scope: &str,
    claims: &[&KeyClaim],
) -> Result<Vec<Lookup>, DomainError> {
    let started = std::time::Instant::now();
    let found = lookup_many(db, scope, claims).await;
    metrics::histogram!("idempotency_lookup_batch_size").record(claims.len() as f64);
    metrics::histogram!("idempotency_lookup_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    found
}

/// The rows of `E` with these ids (none asked: no statement), by id.
async fn by_id<E, K>(
    db: &Db,
    id: E::Column,
    ids: Vec<K>,
    key: fn(&E::Model) -> K,
) -> Result<HashMap<K, E::Model>, DomainError>
where
    E: EntityTrait,
    K: Into<sea_orm::Value> + Clone + Eq + std::hash::Hash,
{
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db
        .read(|| async {
            Ok(E::find()
                .filter(id.is_in(ids.iter().cloned()))
                .all(db.conn())
                .await?)
        })
        .await?;
    Ok(rows.into_iter().map(|m| (key(&m), m)).collect())
}

/// The live stored key of each key, a hold's first: a key that made a hold answers for that
/// hold.
fn live_by_key(rows: &[Found], now: DateTime<Utc>) -> HashMap<&str, &Found> {
    let mut found: HashMap<&str, &Found> = HashMap::new();
    for row in rows.iter().filter(|r| r.live(now)) {
        let entry = found.entry(row.key.as_str()).or_insert(row);
        if matches!(row.place, Place::Hold(_)) {
            *entry = row;
        }
    }
    found
}

/// The stored keys among these, by one statement whatever their number (the keys are bound as
/// one JSON array), so a prepared statement serves every batch size. Keys of the `holds` scope
/// are looked for on the holds too.
async fn find_keys<C: ConnectionTrait>(
    conn: &C,
    scope: &str,
    keys: &[&str],
) -> Result<Vec<Found>, DomainError> {
    let backend = conn.get_database_backend();
    let json = serde_json::to_string(keys)
        .map_err(|e| DomainError::Invariant(format!("keys as JSON: {e}")))?;
    let holds_too = scope == HOLDS;
    let statements = crate::sql::of(backend);
    let sql = if holds_too {
        statements.hold_keys
    } else {
        statements.keys
    };
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            backend,
            sql,
            [json.into(), scope.into()],
        ))
        .await?;
    let mut found = Vec::new();
    for row in &rows {
        let key: String = row.try_get("", "idem_key")?;
        if let Some(id) = row.try_get::<Option<i64>>("", "row_id")? {
            found.push(Found {
                key: key.clone(),
                fingerprint: row.try_get("", "row_fingerprint")?,
                place: Place::KeyRow(id),
                created_at: row.try_get("", "row_created_at")?,
            });
        }
        if holds_too && let Some(id) = row.try_get::<Option<i64>>("", "hold_id")? {
            found.push(Found {
                key,
                fingerprint: row
                    .try_get::<Option<String>>("", "hold_fingerprint")?
                    .unwrap_or_default(),
                place: Place::Hold(HoldId::new(id)),
                created_at: row.try_get("", "hold_created_at")?,
            });
        }
    }
    Ok(found)
}

fn stored_outcome(row: &key::Model) -> Result<StoredOutcome, DomainError> {
    let text = row
        .outcome
        .as_deref()
        .ok_or_else(|| DomainError::Invariant(format!("key row {} has no outcome", row.id)))?;
    serde_json::from_str(text)
        .map_err(|e| DomainError::Invariant(format!("key row {}: {e}", row.id)))
}

/// Inside a write transaction, before the effect, for requests of one scope: for each, `Ok(())` if its key is free,
/// or the error to answer it with — [`DomainError::IdempotencyKeyInUse`] when the same request
/// was answered by a twin that got there first (the client's retry gets that answer), and
/// [`DomainError::IdempotencyKeyMismatch`] for another request. Expired rows of these keys are
/// deleted here, so their keys can be written again.
pub(crate) async fn check_in_txn<C: ConnectionTrait>(
    txn: &C,
    requests: &[&KeyClaim],
) -> Result<Vec<Result<(), DomainError>>, DomainError> {
    // One operation's requests: a hold batch, or one order.
    let Some(scope) = requests.first().map(|r| r.scope) else {
        return Ok(Vec::new());
    };
    debug_assert!(requests.iter().all(|r| r.scope == scope));
    let keys: Vec<&str> = requests.iter().map(|r| r.key.as_str()).collect();
    let now = now();
    let rows = find_keys(txn, scope, &keys).await?;
    let mut expired_rows = Vec::new();
    let mut expired_holds = Vec::new();
    for row in rows.iter().filter(|r| !r.live(now)) {
        match row.place {
            Place::KeyRow(id) => expired_rows.push(id),
            Place::Hold(id) => expired_holds.push(id),
        }
    }
    if !expired_rows.is_empty() {
        key::Entity::delete_many()
            .filter(key::Column::Id.is_in(expired_rows))
            .exec(txn)
            .await?;
    }
    if !expired_holds.is_empty() {
        // The hold stays; only its claim on the key ends.
        hold::Entity::update_many()
            .col_expr(hold::Column::IdemKey, Expr::value(Option::<String>::None))
            .col_expr(
                hold::Column::IdemFingerprint,
                Expr::value(Option::<String>::None),
            )
            .filter(hold::Column::Id.is_in(expired_holds))
            .exec(txn)
            .await?;
    }
    let live = live_by_key(&rows, now);
    // Earlier holders of each key: a stored row, or a request before this one in the list.
    let mut taken: HashMap<&str, &str> = live
        .iter()
        .map(|(key, row)| (*key, row.fingerprint.as_str()))
        .collect();
    Ok(requests
        .iter()
        .map(|r| match taken.get(r.key.as_str()) {
            None => {
                taken.insert(&r.key, &r.fingerprint);
                Ok(())
            }
            Some(fp) if *fp == r.fingerprint => Err(DomainError::IdempotencyKeyInUse),
            Some(_) => Err(DomainError::IdempotencyKeyMismatch),
        })
        .collect())
}

/// Inside the effect's transaction: writes each key with its request's fingerprint and outcome,
/// in one statement. A key written meanwhile by a twin elsewhere fails the unique index: the
/// transaction is lost ([`DomainError::Busy`]) and retried, and then [`check_in_txn`] sees it.
pub(crate) async fn store_in_txn(
    txn: &DatabaseTransaction,
    server: ServerTraits,
    outcomes: &[(&KeyClaim, StoredOutcome)],
) -> Result<(), DomainError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    // Each outcome as JSON text (a string inside the bound array, read back as text).
    let texts = outcomes
        .iter()
        .map(|(_, outcome)| serde_json::to_string(outcome))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| DomainError::Invariant(format!("an outcome as JSON: {e}")))?;
    let now = now();
    let expires_at = now + RETENTION;
    let result = if server.insert_returning {
        // MariaDB: one prepared statement whatever the batch size.
        let rows: Vec<serde_json::Value> = outcomes
            .iter()
            .zip(&texts)
            .map(|((r, _), text)| serde_json::json!([r.scope, r.key, r.fingerprint, text]))
            .collect();
        let json = serde_json::Value::Array(rows).to_string();
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::MySql,
            crate::sql::mysql::INSERT_KEYS,
            [
                KeyState::Done.to_value().into(),
                now.into(),
                expires_at.into(),
                json.into(),
            ],
        ))
        .await
        .map(|_| ())
    } else {
        let models = outcomes
            .iter()
            .zip(texts)
            .map(|((r, _), text)| key::ActiveModel {
                scope: Set(r.scope.to_owned()),
                idem_key: Set(r.key.clone()),
                fingerprint: Set(r.fingerprint.clone()),
                state: Set(KeyState::Done),
                outcome: Set(Some(text)),
                created_at: Set(now),
                expires_at: Set(expires_at),
                ..Default::default()
            });
        key::Entity::insert_many(models)
            .exec_without_returning(txn)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Err(DomainError::rows_lost(format!(
                "an idempotency key was written by a concurrent request: {e}"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes up to `batch_size` expired keys; returns how many.
pub async fn purge_expired(db: &Db, batch_size: u64) -> Result<u64, DomainError> {
    let ids: Vec<i64> = key::Entity::find()
        .select_only()
        .column(key::Column::Id)
        .filter(key::Column::ExpiresAt.lte(now()))
        .order_by_asc(key::Column::ExpiresAt)
        .limit(batch_size)
        .into_tuple()
        .all(db.conn())
        .await?;
    if ids.is_empty() {
        return Ok(0);
    }
    with_retry(None, || {
        let ids = ids.clone();
        db.write(async move |txn| {
            let deleted = key::Entity::delete_many()
                .filter(key::Column::Id.is_in(ids))
                .exec(txn)
                .await?;
            Ok(deleted.rows_affected)
        })
    })
    .await
}
