//! The Flash Sale data layer: the tables (SeaORM entities) and the transactional stock
//! operations that both `flash-sale-api` and `flash-sale-worker` call.
//!
//! This crate is the only place that changes stock or moves a hold between states, and within
//! it [`transitions`] is the one module that writes holds, orders and their counters. Every
//! operation runs in one write transaction that locks what it changes (`SELECT ... FOR UPDATE`
//! on MySQL/MariaDB, `BEGIN IMMEDIATE` on SQLite) and is retried a bounded number of times on
//! lock waits, deadlocks and SQLite busy errors.
//!
//! Lock order, to keep deadlocks out by design: hold rows before the product row, except in
//! [`holds::create_hold`], which locks the product first and then only *skips* locked holds.

pub mod batcher;
pub mod coalesce;
pub mod db;
pub mod error;
mod failure;
mod grant;
pub mod holds;
pub mod idempotency;
pub mod orders;
pub mod ownership;
pub mod payments;
pub mod products;
pub mod sweeps;
pub mod tables;
pub mod timeouts;
pub mod transitions;
pub mod types;
pub mod views;
mod window;

// The tables keep their short paths (`entity::hold`, ...).
pub use tables::{hold, idempotency_key, order, product, webhook_event};

pub use db::{Backend, Db, DbConfig};
pub use error::DomainError;
pub use hold::HoldStatus;
pub use order::OrderStatus;
pub use types::{Money, ProductId, Quantity};
