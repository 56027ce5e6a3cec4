//! The database's health as gauges, probed on a timer by each process: `database_up` and, on a
//! Galera node, `galera_node_primary`. An alert needs a series that says "down" even when no
//! request arrives; `/readyz` is asked by load balancers, not by Prometheus.

use std::time::Duration;

use entity::{Db, DbHealth};

/// How often each process probes its database (each probe waits 2 s at most).
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

/// Probes `db` now and every [`PROBE_EVERY`] after, for the life of the runtime.
pub fn watch_database(db: Db) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PROBE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            record(db.health().await);
        }
    });
}

fn record(health: DbHealth) {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metrics::gauge!("database_up").set(flag(health.up));
    if let Some(primary) = health.galera_primary {
        metrics::gauge!("galera_node_primary").set(flag(primary));
    }
}
