//! Helpers for the end-to-end suites: a fresh database per test, the real binaries started on
//! random ports, and short request helpers, in the manner of zero-to-production's `spawn_app`.
//!
//! One module per kind of help; everything a suite uses is re-exported here, so suites write
//! `use flash_sale_tests::{TestApp, TestDb, ...}` whatever module it lives in.

/// [`TestApp`]: an API process over a fresh database, and the processes started beside it.
pub mod app;
/// [`headless_chromium`]: a browser for the tests that load pages.
pub mod browser;
/// [`Client`] and [`Response`]: requests to one API process.
pub mod client;
/// [`TestDb`], [`Backend`], [`on_both_databases!`] and [`Blocker`].
pub mod db;
/// [`Ledger`] and the invariants read straight from the tables.
pub mod ledger;
/// [`all_at_once`] and [`Load`]: concurrent requests.
pub mod load;
/// [`Process`]: a running binary and its log lines.
pub mod process;
/// A Prometheus of a test's own, for the alert rules and the dashboard's queries.
pub mod prometheus;
/// Private database servers for tests that stop, kill or isolate theirs.
pub mod servers;
/// Reading Server-Sent Events (the stock stream).
pub mod sse;
/// Buyer tokens and key pairs (`BUYER_AUTH=jwt`).
pub mod tokens;
/// [`eventually`]: waiting for a condition with a deadline instead of sleeping.
pub mod wait;

pub use app::{ADMIN_TOKEN, AppOptions, TestApp, WEBHOOK_SECRET, spawn_api};
pub use browser::headless_chromium;
pub use client::{Client, Response, into_response, metric_in, now_unix, signature_headers};
pub use db::{Backend, Blocker, TestDb};
pub use ledger::{Ledger, assert_conserved};
pub use load::{Answer, Load, all_at_once, all_at_once_across};
pub use process::{Process, binary, kill9};
pub use wait::{eventually, until_older_than};
