//! What a domain operation (products, holds, orders, payment webhooks, idempotency keys) can
//! answer besides success.
//!
//! Database failures are sorted once, here, by what the caller should do about them — retry
//! ([`DomainError::Busy`]), answer "unavailable" ([`DomainError::Unavailable`]), or treat as a
//! fault ([`DomainError::Db`]) — and keep the original [`DbErr`] (with its server error number)
//! behind an `Arc`, so one failure can be handed to every caller of a shared batch or read
//! without being flattened into a message.

pub(crate) mod failure;

use std::sync::Arc;

use sea_orm::DbErr;

use crate::{
    error::failure::{DbFailure, classify},
    hold::HoldStatus,
    types::{HoldId, OrderId, ProductId, TicketId},
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum DomainError {
    #[error("product {0} not found")]
    ProductNotFound(ProductId),
    #[error("hold {0} not found")]
    HoldNotFound(HoldId),
    #[error("order {0} not found")]
    OrderNotFound(OrderId),
    #[error("only {available} available")]
    InsufficientStock { available: i32 },
    /// The hold has left the active state (or its time ran out): it cannot be released again.
    #[error("hold {id} is {status}, not active", status = .status.as_str())]
    HoldNotActive { id: HoldId, status: HoldStatus },
    /// An order was asked of a hold whose time ran out.
    #[error("hold {0} has expired")]
    HoldExpired(HoldId),
    /// An order was asked of a hold the buyer released.
    #[error("hold {0} was released")]
    HoldReleased(HoldId),
    /// A hold before the product's sale window opens.
    #[error("the sale starts at {starts_at}")]
    SaleNotStarted {
        starts_at: chrono::DateTime<chrono::Utc>,
    },
    /// A hold at or after the end of the product's sale window.
    #[error("the sale has ended")]
    SaleEnded,
    /// A hold without a buyer on a product with a per-buyer limit.
    #[error("this product limits units per buyer: the hold must name its buyer")]
    BuyerIdRequired,
    /// The hold would take the buyer over the product's per-buyer limit.
    #[error("the buyer may hold only {remaining} more")]
    BuyerLimitExceeded { remaining: i32 },
    /// No such ticket, or one that is not the caller's.
    #[error("ticket {0} not found")]
    TicketNotFound(TicketId),
    /// Joining the queue of a product that admits everyone.
    #[error("product {0} has no queue: anyone may hold it")]
    NoQueue(ProductId),
    /// Joining a queue that no longer admits anyone: the sale ended or the stock ran out.
    #[error("the queue of product {0} is closed")]
    QueueClosed(ProductId),
    /// A hold on a queue product without the buyer's admitted ticket. `ticket` (its state and
    /// position) when the request named a ticket of the caller's and it was found.
    #[error("this product admits buyers through its queue: a hold needs an admitted ticket")]
    AdmissionRequired {
        ticket: Option<(crate::TicketState, Option<i64>)>,
    },
    /// A cart refused: every line that could not be held, with its own refusal (each one of
    /// the single-product refusals above). Nothing of the cart was held.
    #[error("{} line(s) of the cart cannot be held", .0.len())]
    CartRefused(Vec<LineRefusal>),
    /// A hold extended as many times, or as far past its making, as it may be.
    #[error("hold {0} cannot be extended any further")]
    ExtensionLimit(HoldId),
    /// An operator marked refunded an order that owes no refund.
    #[error("order {0} has no refund due")]
    NoRefundDue(OrderId),
    /// A product or change that does not hold together (a sale that ends before it starts):
    /// which field, and why.
    #[error("{field}: {message}")]
    InvalidProduct {
        field: &'static str,
        message: String,
    },
    /// A webhook's `hold_id`, `product_id` or `quantity` does not match its hold or order.
    #[error("{0}")]
    HoldMismatch(String),
    /// A webhook's `amount` is not its order's total. `order` (id and status) is none when the
    /// order would have been made by this webhook, and so was not.
    #[error("the order's total is {total}")]
    AmountMismatch {
        order: Option<(OrderId, crate::OrderStatus)>,
        total: crate::Money,
    },
    /// The idempotency key was used before with a different body.
    #[error("idempotency key reused with a different body")]
    IdempotencyKeyMismatch,
    /// A request with the same idempotency key and body is running, or has just been answered
    /// by another process: the client's retry gets its answer.
    #[error("a request with this idempotency key is in progress")]
    IdempotencyKeyInUse,
    /// One attempt lost to another transaction: a lock wait timeout (1205), a deadlock or a
    /// Galera certification conflict (1213, also at COMMIT), SQLite busy, or a transaction whose
    /// rows vanished under it (aborted by the cluster). [`crate::db::with_retry`] runs the
    /// operation again; if it escapes (a read, or the last attempt) it is answered like
    /// [`DomainError::Contention`].
    #[error("transaction lost to a concurrent one: {0}")]
    Busy(Arc<DbErr>),
    /// Lock waits, deadlocks or SQLite busy errors outlasted the bounded retries.
    #[error("stock row stayed contended after {attempts} attempts")]
    Contention { attempts: u32 },
    /// The database cannot serve: unreachable, connection lost or killed, shutting down, pool
    /// exhausted, or a Galera node outside the primary component (1047, 1180 at COMMIT).
    #[error("database unavailable: {0}")]
    Unavailable(Arc<DbErr>),
    /// A stored row broke an invariant this crate keeps; never caused by a client.
    #[error("invariant broken: {0}")]
    Invariant(String),
    #[error("database error: {0}")]
    Db(Arc<DbErr>),
}

/// Why one line of a cart could not be held.
#[derive(Debug, Clone)]
pub struct LineRefusal {
    pub product_id: ProductId,
    pub refusal: DomainError,
}

impl From<DbErr> for DomainError {
    fn from(err: DbErr) -> Self {
        let kind = classify(&err);
        let err = Arc::new(err);
        match kind {
            DbFailure::Busy => DomainError::Busy(err),
            DbFailure::Unavailable => DomainError::Unavailable(err),
            DbFailure::Other => DomainError::Db(err),
        }
    }
}

impl DomainError {
    /// A transaction found fewer of its own new rows than it wrote: on a Galera node that is
    /// a transaction the cluster aborted under it, so it counts as lost, to be retried.
    pub(crate) fn rows_lost(what: String) -> DomainError {
        DomainError::Busy(Arc::new(DbErr::Custom(what)))
    }
}
