//! `flash-sale-api`: the HTTP side of the Flash Sale service.
//!
//! This crate owns HTTP only: routes and their request/response types ([`routes`]), the one
//! mapping from domain errors to problem+json answers ([`error`]), configuration ([`config`]), the state
//! every handler shares ([`state`]) and the server wiring ([`server`]). Every change to stock goes through `entity`.

pub mod buyers;
pub mod client_addr;
pub mod config;
pub mod connections;
pub mod cors;
pub mod document;
pub mod error;
pub mod idempotency;
pub mod jwt;
pub mod listener;
pub mod locations;
pub mod middleware;
pub mod observe;
pub mod rate_limit;
pub mod routes;
pub mod server;
pub mod signature;
pub mod state;
pub mod states;
pub mod stream;
pub mod ticket_stream;
pub mod types;

pub use config::Config;
pub use server::{build_app, migrate, run};
pub use state::AppState;
