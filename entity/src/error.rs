//! What a stock operation can answer besides success.

use sea_orm::DbErr;

use crate::hold::HoldStatus;

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("product {0} not found")]
    ProductNotFound(i64),
    #[error("hold {0} not found")]
    HoldNotFound(i64),
    #[error("order {0} not found")]
    OrderNotFound(i64),
    #[error("only {available} available")]
    InsufficientStock { available: i32 },
    /// The hold has left the active state (or its time ran out): it cannot be released again.
    #[error("hold {id} is {status}, not active", status = .status.as_str())]
    HoldNotActive { id: i64, status: HoldStatus },
    /// An order was asked of a hold whose time ran out.
    #[error("hold {0} has expired")]
    HoldExpired(i64),
    /// An order was asked of a hold the buyer released.
    #[error("hold {0} was released")]
    HoldReleased(i64),
    /// A webhook's `hold_id`, `product_id` or `quantity` does not match its hold or order.
    #[error("{0}")]
    HoldMismatch(String),
    /// The idempotency key was used before with a different body.
    #[error("idempotency key reused with a different body")]
    IdempotencyKeyMismatch,
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

impl StockError {
    /// The same error for another caller of a shared batch or read. Database errors keep only
    /// their message (`DbErr` cannot be cloned); their kind, and so their HTTP status, is kept.
    pub fn duplicate(&self) -> StockError {
        use StockError::*;
        match self {
            ProductNotFound(id) => ProductNotFound(*id),
            HoldNotFound(id) => HoldNotFound(*id),
            OrderNotFound(id) => OrderNotFound(*id),
            InsufficientStock { available } => InsufficientStock {
                available: *available,
            },
            HoldNotActive { id, status } => HoldNotActive {
                id: *id,
                status: *status,
            },
            HoldExpired(id) => HoldExpired(*id),
            HoldReleased(id) => HoldReleased(*id),
            HoldMismatch(m) => HoldMismatch(m.clone()),
            IdempotencyKeyMismatch => IdempotencyKeyMismatch,
            Contention { attempts } => Contention {
                attempts: *attempts,
            },
            Unavailable(e) => Unavailable(DbErr::Custom(e.to_string())),
            Invariant(m) => Invariant(m.clone()),
            Db(e) => Db(DbErr::Custom(e.to_string())),
        }
    }
}
