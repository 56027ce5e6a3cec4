//! The database's health as gauges, probed on a timer by each process: `database_up` and, on a
//! Galera node, `galera_node_primary`. An alert needs a series that says "down" even when no
//! request arrives; `/readyz` is asked by load balancers, not by Prometheus.

use std::time::Duration;

use entity::{Db, DbHealth, db::GaleraMembership};

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
    // Unknown is NaN, not 0: a node that cannot be asked is the database alert's, and an alert
    // on `== 0` stays quiet on NaN.
    if let GaleraMembership::Known(primary) = health.galera_primary {
        metrics::gauge!("galera_node_primary").set(primary.map_or(f64::NAN, flag));
    }
}
