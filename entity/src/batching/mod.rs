//! Serving concurrent calls together: the generic per-key batcher, and what it serves — hold
//! requests per product, product reads, idempotency-key look-ups ([`coalesce`]); queue joins
//! per product and ticket reads ([`queue`]).

pub mod batcher;
pub mod coalesce;
pub mod queue;
