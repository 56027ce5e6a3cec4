//! One sweep: expired holds released, then orders unpaid past the payment timeout cancelled,
//! then client idempotency keys older than 24 hours purged, each batch by batch.

use std::{future::Future, time::Instant};

use entity::{Db, DomainError, operations::idempotency, operations::sweeps, operations::timeouts};
use tokio::sync::watch;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired_count: u64,
    pub timed_out_count: u64,
    pub purged_keys: u64,
    /// Hold and order batches run (key purges are not counted).
    pub batches: u64,
}

/// What a sweep needs to know.
#[derive(Debug, Clone, Copy)]
pub struct SweepSettings {
    pub batch_size: u64,
    pub payment_timeout: chrono::Duration,
}

/// One run: release expired holds, then cancel orders unpaid past the payment timeout, then
/// purge old idempotency keys, batch by batch until a batch comes back short, or `stop` says to
/// finish (the batch in flight always completes). Writes one `expiry.batch` line.
pub async fn sweep(
    db: &Db,
    settings: SweepSettings,
    stop: &watch::Receiver<bool>,
) -> Result<SweepReport, DomainError> {
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
    let outcome = if result.is_ok() { "ok" } else { "failed" };
    metrics::counter!("expiry_runs_total", "outcome" => outcome).increment(1);
    if result.is_ok() {
        metrics::gauge!("expiry_last_success_timestamp_seconds").set(unix_now());
    }
    result.map(|()| report)
}

/// Seconds since the Unix epoch, for the `..._timestamp_seconds` gauges.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn sweep_into(
    db: &Db,
    settings: SweepSettings,
    stop: &watch::Receiver<bool>,
    report: &mut SweepReport,
) -> Result<(), DomainError> {
    let size = settings.batch_size;
    let expired = |n| {
        report.batches += 1;
        report.expired_count += n;
    };
    drain(stop, size, expired, || async {
        let started = Instant::now();
        let released = sweeps::expire_batch(db, size).await?.len() as u64;
        metrics::histogram!("expiry_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("expiry_batch_size").record(released as f64);
        Ok(released)
    })
    .await?;
    let timed_out = |n| {
        report.batches += 1;
        report.timed_out_count += n;
    };
    drain(stop, size, timed_out, || async {
        let cancelled = timeouts::cancel_unpaid_batch(db, settings.payment_timeout, size).await?;
        Ok(cancelled.len() as u64)
    })
    .await?;
    let purged = |n| report.purged_keys += n;
    drain(stop, size, purged, || idempotency::purge_expired(db, size)).await
}

/// Runs `batch` (which returns how many rows it handled) until one handles fewer than `size`,
/// or `stop` is set; `stop` is read before each batch, so a batch once begun completes.
/// `record` is told each batch's count as it finishes, so an error keeps what was done.
async fn drain<Fut>(
    stop: &watch::Receiver<bool>,
    size: u64,
    mut record: impl FnMut(u64),
    mut batch: impl FnMut() -> Fut,
) -> Result<(), DomainError>
where
    Fut: Future<Output = Result<u64, DomainError>>,
{
    while !*stop.borrow() {
        let n = batch().await?;
        record(n);
        if n < size {
            break;
        }
    }
    Ok(())
}
