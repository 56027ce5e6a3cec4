//! The operations callers run: each one short write transaction (retried on contention) or one
//! read, over the rules of `crate::rules`.

pub mod carts;
pub(crate) mod granting;
pub mod holds;
pub mod idempotency;
pub mod orders;
pub mod payments;
pub mod products;
pub mod queue;
pub mod sweeps;
pub mod timeouts;
