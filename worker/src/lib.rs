//! `flash-sale-worker`: the expiry daemon.
//!
//! On every tick of `EXPIRY_SCHEDULE` (tokio-cron-scheduler) it releases expired holds in
//! batches of `EXPIRY_BATCH_SIZE`, through the same `entity::stock` operation the API uses, then
//! cancels orders left unpaid past `PAYMENT_TIMEOUT_SECONDS` (`entity::orders`), purges client
//! idempotency keys older than 24 hours (`entity::idempotency`), and writes one
//! `expiry.batch` line per run. Any number of workers may run against one database:
//! each batch locks its holds or orders with `FOR UPDATE SKIP LOCKED` (SQLite: one writer at a time), so
//! every hold is released exactly once. Overlapping ticks inside one process are skipped.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Instant};

use anyhow::Context;
use clap::Parser;
use entity::{Db, StockError, idempotency, orders, stock};
use metrics_exporter_prometheus::PrometheusHandle;
use poem::{
    EndpointExt, IntoResponse, Route, Server,
    endpoint::make_sync,
    listener::{Acceptor, Listener, TcpListener},
};
use tokio::sync::{Mutex, watch};
use tokio_cron_scheduler::{Job, JobScheduler};

/// The worker's settings (README, "Configuration"), from flags, the environment and `.env`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flash-sale-worker",
    version,
    about = "Flash Sale worker: releases expired holds on a schedule"
)]
pub struct Config {
    /// mysql://user:pass@host:3306/db (MySQL 8 / MariaDB 10.6+) or a SQLite file.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://flash_sale.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Pool size of this process.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,
    /// On a Galera node, make every read see every write acknowledged before it started
    /// (`wsrep_sync_wait`): `auto` (on exactly when the server reports `wsrep_on`), `true`, `false`.
    #[arg(long, env = "DATABASE_CAUSAL_READS", default_value = "auto")]
    pub database_causal_reads: entity::db::CausalReads,
    /// The health and metrics listener (`:0` picks a free port; the chosen address is logged).
    #[arg(long, env = "WORKER_ADDR", default_value = "127.0.0.1:9101")]
    pub worker_addr: SocketAddr,
    /// Cron schedule of the sweep, six fields with seconds, UTC.
    #[arg(long, env = "EXPIRY_SCHEDULE", default_value = "*/10 * * * * *")]
    pub expiry_schedule: String,
    /// Expired holds released per transaction.
    #[arg(long, env = "EXPIRY_BATCH_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub expiry_batch_size: u64,
    /// A pending order not paid within this many seconds is cancelled.
    #[arg(long, env = "PAYMENT_TIMEOUT_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..))]
    pub payment_timeout_seconds: u32,
    /// Folder of the daily JSON log files.
    #[arg(long, env = "LOG_DIR", default_value = "storage/logs")]
    pub log_dir: PathBuf,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,
    /// Run one sweep now and exit, instead of serving the schedule.
    #[arg(long)]
    pub once: bool,
}

impl Config {
    /// How this process opens its pool.
    pub fn db_config(&self) -> entity::DbConfig {
        entity::DbConfig {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            causal_reads: self.database_causal_reads,
        }
    }

    /// The configuration as printed at start-up: secrets masked.
    pub fn redacted(&self) -> String {
        format!(
            "DATABASE_URL={} DATABASE_MAX_CONNECTIONS={} DATABASE_CAUSAL_READS={} WORKER_ADDR={} EXPIRY_SCHEDULE={:?} \
             EXPIRY_BATCH_SIZE={} PAYMENT_TIMEOUT_SECONDS={} LOG_DIR={} RUST_LOG={}",
            entity::db::redact_url(&self.database_url),
            self.database_max_connections,
            self.database_causal_reads,
            self.worker_addr,
            self.expiry_schedule,
            self.expiry_batch_size,
            self.payment_timeout_seconds,
            self.log_dir.display(),
            self.rust_log,
        )
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired_count: u64,
    pub timed_out_count: u64,
    pub purged_keys: u64,
    pub batches: u64,
}

/// What a sweep needs to know.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub batch_size: u64,
    pub payment_timeout: chrono::Duration,
}

/// One run: release expired holds, then cancel orders unpaid past the payment timeout, batch
/// by batch until a batch comes back short, or `stop` says to finish (the batch in flight
/// always completes). Writes one `expiry.batch` line.
pub async fn sweep(
    db: &Db,
    settings: SweepSettings,
    stop: &watch::Receiver<bool>,
) -> Result<SweepReport, StockError> {
    let started = Instant::now();
    let mut report = SweepReport::default();
    let result = sweep_into(db, settings, stop, &mut report).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        metric = "expiry.batch",
        expired_count = report.expired_count,
        duration_ms,
        timed_out_count = report.timed_out_count,
        purged_idempotency_keys = report.purged_keys,
        batches = report.batches,
        ok = result.is_ok(),
        "expiry run finished"
    );
    metrics::counter!("expiry_runs_total").increment(1);
    result.map(|()| report)
}

async fn sweep_into(
    db: &Db,
    settings: SweepSettings,
    stop: &watch::Receiver<bool>,
    report: &mut SweepReport,
) -> Result<(), StockError> {
    let batch = settings.batch_size;
    loop {
        let started = Instant::now();
        let released = stock::expire_batch(db, batch).await?;
        report.batches += 1;
        report.expired_count += released.len() as u64;
        metrics::histogram!("expiry_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("expiry_batch_size").record(released.len() as f64);
        if (released.len() as u64) < batch || *stop.borrow() {
            break;
        }
    }
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let cancelled = orders::cancel_unpaid_batch(db, settings.payment_timeout, batch).await?;
        report.batches += 1;
        report.timed_out_count += cancelled.len() as u64;
        if (cancelled.len() as u64) < batch {
            break;
        }
    }
    // Client idempotency keys older than 24 hours.
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let purged = idempotency::purge_expired(db, batch).await?;
        report.purged_keys += purged;
        if purged < batch {
            return Ok(());
        }
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `WORKER_ADDR` and runs the schedule until Ctrl-C or
/// SIGTERM; then finishes the sweep in flight and exits.
pub async fn run(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<()> {
    let db = Db::connect(&config.db_config())
        .await
        .context("DATABASE_URL: cannot connect")?;
    let (stop_tx, stop_rx) = watch::channel(false);

    let settings = SweepSettings {
        batch_size: config.expiry_batch_size,
        payment_timeout: chrono::Duration::seconds(i64::from(config.payment_timeout_seconds)),
    };
    if config.once {
        sweep(&db, settings, &stop_rx).await?;
        return Ok(());
    }

    // Ticks are spawned without waiting for the previous one: this lock skips a tick while a
    // sweep is still running, and lets shutdown wait for the one in flight.
    let running = Arc::new(Mutex::new(()));
    let job = {
        let (db, running, stop_rx) = (db.clone(), running.clone(), stop_rx.clone());
        Job::new_async(config.expiry_schedule.as_str(), move |_id, _sched| {
            let (db, running, stop_rx) = (db.clone(), running.clone(), stop_rx.clone());
            Box::pin(async move {
                let Ok(_guard) = running.try_lock() else {
                    tracing::debug!("previous sweep still running, skipping this tick");
                    return;
                };
                if *stop_rx.borrow() {
                    return;
                }
                if let Err(e) = sweep(&db, settings, &stop_rx).await {
                    tracing::error!(error = %e, "expiry sweep failed; the next tick retries");
                }
            })
        })
        .with_context(|| {
            format!(
                "EXPIRY_SCHEDULE: invalid cron expression {:?}",
                config.expiry_schedule
            )
        })?
    };
    let mut scheduler = JobScheduler::new()
        .await
        .context("starting the scheduler")?;
    scheduler.add(job).await.context("scheduling the sweep")?;

    let acceptor = TcpListener::bind(config.worker_addr)
        .into_acceptor()
        .await
        .with_context(|| format!("WORKER_ADDR {}: cannot listen", config.worker_addr))?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let app = {
        let (ready_db, metrics_db) = (db.clone(), db.clone());
        Route::new()
            .at("/healthz", make_sync(|_| "ok"))
            .at(
                "/readyz",
                poem::endpoint::make(move |_| {
                    let db = ready_db.clone();
                    async move {
                        if db.is_ready().await {
                            "ready".into_response()
                        } else {
                            poem::Response::builder()
                                .status(poem::http::StatusCode::SERVICE_UNAVAILABLE)
                                .body("the database cannot be reached")
                        }
                    }
                }),
            )
            .at(
                "/metrics",
                make_sync(move |_| {
                    metrics_db.record_pool_metrics();
                    metrics
                        .as_ref()
                        .map(PrometheusHandle::render)
                        .unwrap_or_default()
                        .with_content_type("text/plain; version=0.0.4")
                        .into_response()
                }),
            )
            .map_to_response()
    };
    scheduler.start().await.context("starting the scheduler")?;
    tracing::info!(addr = %addr, schedule = %config.expiry_schedule, "listening");

    let server = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
        app,
        entity::telemetry::shutdown_signal(),
        Some(std::time::Duration::from_secs(5)),
    );
    server.await.context("serving health and metrics")?;

    let _ = stop_tx.send(true);
    scheduler.shutdown().await.ok();
    // Wait for the sweep in flight to finish its batch.
    let _idle = running.lock().await;
    db.conn().clone().close().await.ok();
    tracing::info!("stopped");
    Ok(())
}
