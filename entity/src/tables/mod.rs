//! The tables, as SeaORM entities: what a row is, and nothing that changes one (that is
//! `transitions.rs` and the operation modules beside it).

pub mod hold;
pub mod idempotency_key;
pub mod order;
pub mod product;
pub mod queue;
pub mod ticket;
pub mod webhook_event;
