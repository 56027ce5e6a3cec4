//! Client idempotency keys (IETF httpapi Idempotency-Key draft), stored in the database so they
//! hold across API processes, for 24 hours.
//!
//! The first request with a key claims it (a unique key decides among concurrent ones), runs,
//! and stores its status and body; a retry with the same request gets that answer again, a
//! retry while the first still runs gets "in use", and the same key with another request gets
//! "mismatch". A claim whose request never finished (its process died) is abandoned after
//! [`ABANDONED_AFTER`] and may be claimed again.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
};

use crate::{Db, StockError, db::with_retry, idempotency_key as key, stock::now};

/// How long a key is kept.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);
/// A claim still running after this long belongs to a request that will never finish.
pub const ABANDONED_AFTER: chrono::Duration = chrono::Duration::seconds(60);

/// The stored answer of a finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// What a request with a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: run the request, then [`complete`] (or [`release`] if it failed).
    Claimed { id: i64 },
    /// Same key, same request, finished: answer this again.
    Replay(StoredResponse),
    /// Same key, same request, still running.
    InUse,
    /// Same key, another request.
    Mismatch,
}

/// Claims `idem_key` in `scope` for a request with this `fingerprint`.
pub async fn claim(
    db: &Db,
    scope: &str,
    idem_key: &str,
    fingerprint: &str,
) -> Result<Claim, StockError> {
    for _ in 0..3 {
        let now = now();
        let row = key::ActiveModel {
            scope: Set(scope.to_owned()),
            idem_key: Set(idem_key.to_owned()),
            fingerprint: Set(fingerprint.to_owned()),
            state: Set("running".to_owned()),
            response_status: Set(None),
            response_content_type: Set(None),
            response_body: Set(None),
            created_at: Set(now),
            expires_at: Set(now + RETENTION),
            ..Default::default()
        };
        // Through the write path, so SQLite writers queue and busy errors are retried.
        let inserted = with_retry(None, || {
            let row = row.clone();
            db.write(
                async move |txn| match key::Entity::insert(row).exec(txn).await {
                    Ok(r) => Ok(Some(r.last_insert_id)),
                    Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                        Ok(None)
                    }
                    Err(e) => Err(e.into()),
                },
            )
        })
        .await?;
        if let Some(id) = inserted {
            return Ok(Claim::Claimed { id });
        }
        let Some(existing) = key::Entity::find()
            .filter(key::Column::Scope.eq(scope))
            .filter(key::Column::IdemKey.eq(idem_key))
            .one(db.conn())
            .await?
        else {
            continue; // purged meanwhile: claim again
        };
        if existing.expires_at <= now || abandoned(&existing, now) {
            // Expired or abandoned: remove exactly that row, then claim again.
            let (id, state) = (existing.id, existing.state.clone());
            with_retry(None, || {
                let state = state.clone();
                db.write(async move |txn| {
                    key::Entity::delete_many()
                        .filter(key::Column::Id.eq(id))
                        .filter(key::Column::State.eq(state))
                        .exec(txn)
                        .await?;
                    Ok(())
                })
            })
            .await?;
            continue;
        }
        if existing.fingerprint != fingerprint {
            return Ok(Claim::Mismatch);
        }
        return Ok(match (existing.state.as_str(), existing.response_status) {
            ("done", Some(status)) => Claim::Replay(StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                content_type: existing.response_content_type.unwrap_or_default(),
                body: existing.response_body.unwrap_or_default(),
            }),
            _ => Claim::InUse,
        });
    }
    Ok(Claim::InUse)
}

fn abandoned(row: &key::Model, now: DateTime<Utc>) -> bool {
    row.state == "running" && row.created_at + ABANDONED_AFTER <= now
}

/// Stores the answer of the request that claimed `id`.
pub async fn complete(db: &Db, id: i64, response: &StoredResponse) -> Result<(), StockError> {
    with_retry(None, || {
        db.write(async |txn| {
            key::Entity::update_many()
                .col_expr(key::Column::State, "done".into())
                .col_expr(
                    key::Column::ResponseStatus,
                    i32::from(response.status).into(),
                )
                .col_expr(
                    key::Column::ResponseContentType,
                    response.content_type.clone().into(),
                )
                .col_expr(key::Column::ResponseBody, response.body.clone().into())
                .filter(key::Column::Id.eq(id))
                .exec(txn)
                .await?;
            Ok(())
        })
    })
    .await
}

/// Gives up a claim whose request failed without an answer worth repeating (a 5xx): the
/// client's retry runs afresh.
pub async fn release(db: &Db, id: i64) -> Result<(), StockError> {
    with_retry(None, || {
        db.write(async |txn| {
            key::Entity::delete_by_id(id).exec(txn).await?;
            Ok(())
        })
    })
    .await
}

/// Deletes up to `batch_size` expired keys; returns how many.
pub async fn purge_expired(db: &Db, batch_size: u64) -> Result<u64, StockError> {
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
