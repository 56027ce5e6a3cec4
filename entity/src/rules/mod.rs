//! The domain's rules, apart from how they are called: the state machines of holds and orders
//! with their counters, granting, the sale window, who owns a hold or an order, and
//! whose an idempotency key is.

pub(crate) mod grant;
pub mod keys;
pub mod ownership;
pub(crate) mod tickets;
pub mod transitions;
pub(crate) mod window;
