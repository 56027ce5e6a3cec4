//! End-to-end suites: the real binaries over real databases, each scenario on MariaDB and SQLite.

mod bad_input;
mod charsets;
mod clients;
mod coalescing;
mod docs;
mod expiry;
mod faults;
mod galera;
mod holds;
mod hostile;
mod ids;
mod layout;
mod listener;
mod mixed;
mod money;
mod operations;
mod orders;
mod ownership;
mod payments;
mod processes;
mod queue;
mod queue_scale;
mod retries;
mod sales;
mod stream;
mod tokens;
