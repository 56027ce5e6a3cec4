//! `flash-sale-worker`: the expiry daemon.
//!
//! On every tick of `EXPIRY_SCHEDULE` (tokio-cron-scheduler) it releases expired holds in
//! batches of `EXPIRY_BATCH_SIZE`, through `entity::operations::sweeps` (whose reclaim the API runs too), then
//! cancels orders left unpaid past `PAYMENT_TIMEOUT_SECONDS` (`entity::operations::orders`), purges client
//! idempotency keys older than 24 hours (`entity::operations::idempotency`), and writes one
//! `expiry.batch` line per run. Any number of workers may run against one database:
//! each batch locks its holds or orders with `FOR UPDATE SKIP LOCKED` (SQLite: one writer at a time), so
//! every hold is released exactly once. Overlapping ticks inside one process are skipped.
//!
//! Every second it also runs the queues' admission passes ([`admission`]).

pub mod admission;
pub mod config;
pub mod gauges;
pub mod health;
pub mod sweep;

use std::sync::Arc;

use anyhow::Context;
use entity::Db;
use metrics_exporter_prometheus::PrometheusHandle;
use poem::Server;
use tokio::sync::{Mutex, watch};
use tokio_cron_scheduler::{Job, JobScheduler};

pub use config::Config;
pub use sweep::{SweepReport, SweepSettings, sweep};

/// Serves `/healthz`, `/readyz` and `/metrics` on `WORKER_ADDR` and runs the schedule until
/// Ctrl-C or SIGTERM; then finishes the sweep in flight and exits. With `--once`, one sweep now.
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
        admission::admit_queues(&db, &stop_rx).await?;
        return Ok(());
    }

    let running = Arc::new(Mutex::new(()));
    let admitting = Arc::new(Mutex::new(()));
    let job = sweep_job(&config.expiry_schedule, &db, settings, &running, &stop_rx)?;
    let mut scheduler = JobScheduler::new()
        .await
        .context("starting the scheduler")?;
    scheduler.add(job).await.context("scheduling the sweep")?;
    scheduler
        .add(admission_job(&db, &admitting, &stop_rx)?)
        .await
        .context("scheduling the admission runs")?;
    scheduler
        .add(gauges_job(&db)?)
        .await
        .context("scheduling the gauge reads")?;
    flash_sale_process::watch_database(db.clone());
    for outcome in ["ok", "failed"] {
        metrics::counter!("expiry_runs_total", "outcome" => outcome).increment(0);
    }
    let (acceptor, addr) = flash_sale_process::bind(config.worker_addr, "WORKER_ADDR").await?;
    scheduler.start().await.context("starting the scheduler")?;
    tracing::info!(addr = %addr, schedule = %config.expiry_schedule, "listening");

    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            health::app(db.clone(), metrics),
            flash_sale_process::shutdown_signal(),
            Some(std::time::Duration::from_secs(5)),
        )
        .await
        .context("serving health and metrics")?;

    let _ = stop_tx.send(true);
    scheduler.shutdown().await.ok();
    // Wait for the sweep in flight to finish its batch, and the admission run its pass.
    let _idle = running.lock().await;
    let _idle_admitting = admitting.lock().await;
    db.conn().clone().close().await.ok();
    tracing::info!("stopped");
    Ok(())
}

/// The admission runs, every second; a run still going when the next tick comes skips it.
fn admission_job(
    db: &Db,
    running: &Arc<Mutex<()>>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Job> {
    let (db, running, stop_rx) = (db.clone(), running.clone(), stop_rx.clone());
    Job::new_async(admission::ADMISSION_SCHEDULE, move |_id, _sched| {
        let (db, running, stop_rx) = (db.clone(), running.clone(), stop_rx.clone());
        Box::pin(async move {
            let Ok(_guard) = running.try_lock() else {
                return;
            };
            if *stop_rx.borrow() {
                return;
            }
            if let Err(e) = admission::admit_queues(&db, &stop_rx).await {
                tracing::error!(error = %e, "admission run failed; the next tick retries");
            }
        })
    })
    .context("the admission schedule")
}

/// The gauge reads, every 5 seconds; a read still going when the next tick comes skips it.
fn gauges_job(db: &Db) -> anyhow::Result<Job> {
    let db = db.clone();
    let reading = Arc::new(Mutex::new(()));
    Job::new_async(gauges::GAUGES_SCHEDULE, move |_id, _sched| {
        let (db, reading) = (db.clone(), reading.clone());
        Box::pin(async move {
            let Ok(_guard) = reading.try_lock() else {
                return;
            };
            if let Err(e) = gauges::publish(&db).await {
                tracing::warn!(error = %e, "reading the sale's gauges failed; the next tick retries");
            }
        })
    })
    .context("the gauge schedule")
}

/// The scheduled sweep. Ticks are spawned without waiting for the previous one: `running`
/// skips a tick while a sweep is still running, and lets shutdown wait for the one in flight.
fn sweep_job(
    schedule: &str,
    db: &Db,
    settings: SweepSettings,
    running: &Arc<Mutex<()>>,
    stop_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Job> {
    let (db, running, stop_rx) = (db.clone(), running.clone(), stop_rx.clone());
    Job::new_async(schedule, move |_id, _sched| {
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
    .with_context(|| format!("EXPIRY_SCHEDULE: invalid cron expression {schedule:?}"))
}
