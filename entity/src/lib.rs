//! The Flash Sale data layer, which both `flash-sale-api` and `flash-sale-worker` call: the only
//! place that changes stock or moves a hold or an order between states. Its rooms, lowest first;
//! each uses only the rooms before it (checked by `tests/tests/api/layout.rs`; see
//! `entity/README.md` for why they are apart):
//!
//! - [`types`]: ids, quantities, money. [`tables`]: what a row is (SeaORM entities) and the
//!   states' enums.
//! - [`error`]: what an operation can answer besides success, and how a database failure is
//!   sorted (retry, unavailable, fault).
//! - [`sql`]: every hand-written statement, one file per backend.
//! - [`db`]: connecting, the one way to open a write transaction, retries, single reads.
//! - [`rules`]: the domain's rules — the state machines and their counters ([`rules::transitions`],
//!   the one writer of holds, orders and stock), granting ([`rules::grant`], with the per-buyer
//!   limit), the sale window, who owns what ([`rules::ownership`]), whose a key is
//!   ([`rules::keys`]).
//! - [`views`]: what clients are answered (a hold, an order, a product), as typed values.
//! - [`operations`]: the transactions callers run — products, holds, orders, payments, sweeps,
//!   payment timeouts, idempotency keys — each one short write transaction (retried on
//!   contention) or one read.
//! - [`batching`]: serving concurrent calls together (a hold batch per product, single-flight
//!   reads, key look-ups).
//!
//! Lock order, to keep deadlocks out by design: hold rows before the product row, except in a
//! hold batch ([`operations::holds::serve_holds`]), which locks the product first and then only
//! *skips* locked holds.

pub mod batching;
pub mod db;
pub mod error;
pub mod operations;
pub mod rules;
pub(crate) mod sql;
pub mod tables;
pub mod types;
pub mod views;

// The tables keep their short paths (`entity::hold`, ...).
pub use tables::{hold, idempotency_key, order, product, queue, ticket, webhook_event};

pub use db::{Backend, Db, DbConfig, DbHealth};
pub use error::DomainError;
pub use hold::HoldStatus;
pub use order::OrderStatus;
pub use product::Admission;
pub use ticket::TicketState;
pub use types::{Money, ProductId, Quantity};
