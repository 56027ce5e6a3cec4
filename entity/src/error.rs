//! What a stock operation can answer besides success.

use sea_orm::DbErr;

use crate::hold::HoldStatus;

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("product {0} not found")]
    ProductNotFound(i64),
    #[error("hold {0} not found")]
    HoldNotFound(i64),
    #[error("only {available} available")]
    InsufficientStock { available: i32 },
    /// The hold has left the active state (or its time ran out): it cannot be released again.
    #[error("hold {id} is {status}, not active", status = .status.as_str())]
    HoldNotActive { id: i64, status: HoldStatus },
    /// Lock waits, deadlocks or SQLite busy errors outlasted the bounded retries.
    #[error("stock row stayed contended after {attempts} attempts")]
    Contention { attempts: u32 },
    /// The database could not be reached (connect, pool or I/O failure).
    #[error("database unavailable: {0}")]
    Unavailable(DbErr),
    /// A stored row broke an invariant this crate keeps; never caused by a client.
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error("database error: {0}")]
    Db(DbErr),
}

impl From<DbErr> for StockError {
    fn from(err: DbErr) -> Self {
        if crate::db::is_unavailable(&err) {
            StockError::Unavailable(err)
        } else {
            StockError::Db(err)
        }
    }
}
