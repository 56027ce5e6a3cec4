//! JSON log lines (to stdout and to a daily file per binary in `LOG_DIR`) and the Prometheus
//! recorder, installed once per process.

use std::{
    io::{BufWriter, Write},
    path::Path,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Subscriber;
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{self, MakeWriter},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// Keep these alive for the life of the process: dropping them flushes the log writers.
pub struct LogGuards(#[allow(dead_code)] crate::log_writer::WriterGuard);

/// Installs the global subscriber: one JSON object per line, event fields at the top level (so
/// a metric line reads `{"timestamp":…,"metric":"hold.created","hold_id":…}`), written
/// without blocking to stdout and to `{log_dir}/{binary}.log.YYYY-MM-DD` (UTC days).
pub fn init_logging(
    binary: &str,
    log_dir: &Path,
    filter: &str,
) -> Result<LogGuards, TelemetryError> {
    let log_dir_err = |e: &dyn std::fmt::Display| TelemetryError::LogDir {
        dir: log_dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(log_dir).map_err(|e| log_dir_err(&e))?;
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| TelemetryError::Filter(format!("{filter:?}: {e}")))?;
    let file = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(format!("{binary}.log"))
        .build(log_dir)
        .map_err(|e| log_dir_err(&e))?;
    // One background thread writes every line to both places, through buffers, a timer tick's
    // lines at a time (`log_writer`). A buffer only ever holds whole lines, so the daily file
    // that several processes append to gets whole lines from each.
    let out = Both {
        stdout: BufWriter::with_capacity(LOG_BUFFER, std::io::stdout()),
        file: BufWriter::with_capacity(LOG_BUFFER, file),
    };
    let (writer, guard) = crate::log_writer::spawn(out, crate::log_writer::QUEUE_LINES)
        .map_err(|e| TelemetryError::Init(format!("log writer thread: {e}")))?;
    tracing_subscriber::registry()
        .with(filter)
        .with(json_layer(writer))
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    Ok(LogGuards(guard))
}

/// The JSON layer: the event's fields at the top level, then its `target`, then the current
/// span (for HTTP requests, `"span":{"method":…,"path":…,"request_id":…,"name":"request"}`,
/// which carries the request id into every line logged while serving that request). The
/// timestamp is tracing-subscriber's default: RFC 3339, UTC, microseconds.
fn json_layer<S, W>(writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(true)
        .with_writer(writer)
}

/// Bytes of log lines gathered before a write (lines are flushed sooner, at every tick of the
/// writer).
const LOG_BUFFER: usize = 64 * 1024;

/// Each line to stdout and to the daily file.
struct Both<A, B> {
    stdout: A,
    file: B,
}

impl<A: Write, B: Write> Write for Both<A, B> {
    /// The writer thread hands over one whole line at a time.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        // A failing stdout (a closed pipe) must not cost the file its lines.
        let to_stdout = self.stdout.write_all(line);
        self.file.write_all(line)?;
        to_stdout.map(|()| line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let stdout = self.stdout.flush();
        self.file.flush()?;
        stdout
    }
}

/// Latency buckets (seconds) for every `*_seconds` histogram: sub-millisecond to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Rows per expiry batch, requests per coalesced hold batch.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 500.0, 1000.0, 5000.0,
];

/// How often the recorder's upkeep runs. `install_recorder` leaves upkeep to its caller, and
/// without it every histogram sample recorded since the last `/metrics` scrape stays in memory:
/// an API nobody scraped grew about 1.5 MiB per 100,000 holds (14 rounds of 8 s under wrk took
/// it from 79 to 95 MiB).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the global Prometheus recorder (histograms with fixed buckets, so they aggregate
/// across replicas), starts its upkeep on the current Tokio runtime, and returns the handle
/// that renders `/metrics`.
pub fn init_metrics() -> Result<PrometheusHandle, TelemetryError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("batch_size".into()), BATCH_SIZE_BUCKETS)
        })
        .map_err(|e| TelemetryError::Init(e.to_string()))?
        .install_recorder()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    describe_metrics();
    // Shown at 0 from the start, so an alert on it has a series to watch.
    metrics::counter!("log_lines_dropped_total").increment(0);
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| TelemetryError::Init(format!("metrics upkeep needs a Tokio runtime: {e}")))?;
    let upkept = handle.clone();
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_EVERY);
        loop {
            ticks.tick().await;
            upkept.run_upkeep();
        }
    });
    Ok(handle)
}

/// HELP lines for every metric either binary records.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    describe_counter!("holds_created_total", "Holds granted");
    describe_histogram!(
        "hold_batch_size",
        "Hold requests served by one coalesced transaction"
    );
    describe_histogram!(
        "hold_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of one coalesced hold transaction, retries included"
    );
    describe_counter!(
        "holds_rejected_total",
        "Hold requests refused, by reason (the problem code)"
    );
    describe_counter!("holds_released_total", "Holds released by their buyer");
    describe_counter!(
        "holds_expired_total",
        "Expired holds whose stock went back, by who swept them (worker, api)"
    );
    describe_counter!(
        "order_status_changes_total",
        "Orders entering a status (pending, paid, cancelled, timed_out)"
    );
    describe_counter!(
        "webhooks_total",
        "Payment webhooks, by outcome (processed, duplicate, conflict, mismatch, rejected, bad_signature)"
    );
    describe_counter!(
        "webhook_conflicts_total",
        "Webhooks that could not have their normal effect, by reason"
    );
    describe_counter!(
        "stock_contention_retries_total",
        "Transactions retried after a lock wait timeout, deadlock or SQLite busy error"
    );
    describe_counter!("expiry_runs_total", "Worker sweeps run");
    describe_histogram!(
        "expiry_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of one expiry batch transaction"
    );
    describe_histogram!("expiry_batch_size", "Holds released by one expiry batch");
    describe_counter!(
        "log_lines_dropped_total",
        "Log lines dropped because the log writer had too many waiting (it never makes a request wait)"
    );
    describe_gauge!(
        "db_pool_connections",
        "Database pool connections of this process, by state (idle, in_use)"
    );
    describe_gauge!(
        "db_pool_max_connections",
        "Configured pool size of this process"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("LOG_DIR {dir}: {reason}")]
    LogDir { dir: String, reason: String },
    #[error("RUST_LOG: invalid filter {0}")]
    Filter(String),
    #[error("telemetry already initialised: {0}")]
    Init(String),
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;

    /// A destination the test can read while a writer thread owns it, or hold stuck (its lock).
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().map(|b| b.clone()).unwrap_or_default()).expect("UTF-8")
        }

        fn lines(&self) -> Vec<Value> {
            self.text()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    impl<'a> MakeWriter<'a> for Shared {
        type Writer = Shared;
        fn make_writer(&'a self) -> Shared {
            self.clone()
        }
    }

    #[test]
    fn a_line_has_the_shape_the_service_relies_on() {
        let file = Shared::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(file.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = %"r-1",
                method = %"POST",
                path = %"/api/holds"
            );
            let entered = span.enter();
            tracing::info!(
                metric = "hold.created",
                hold_id = 7_i64,
                product_id = 1_i64,
                quantity = 2_i32,
                "hold created"
            );
            drop(entered);
            tracing::warn!(error = %"disk \"full\"\n", "outside any span");
        });
        let text = file.text();
        assert!(text.ends_with('\n') && text.lines().count() == 2, "{text}");
        assert!(text.starts_with("{\"timestamp\":\""), "{text}");
        let mut lines = file.lines();
        for line in &mut lines {
            let ts = line["timestamp"].as_str().expect("a timestamp").to_owned();
            // RFC 3339, UTC, microseconds: 2026-11-24T15:27:31.526376Z.
            assert!(
                chrono::DateTime::parse_from_rfc3339(&ts).is_ok()
                    && ts.len() == 27
                    && ts.ends_with('Z'),
                "{ts}"
            );
            line["timestamp"] = Value::Null;
        }
        let target = module_path!();
        assert_eq!(
            lines[0],
            json!({
                "timestamp": null,
                "level": "INFO",
                "message": "hold created",
                "metric": "hold.created",
                "hold_id": 7,
                "product_id": 1,
                "quantity": 2,
                "target": target,
                "span": {"request_id": "r-1", "method": "POST", "path": "/api/holds", "name": "request"},
            })
        );
        assert_eq!(
            lines[1],
            json!({
                "timestamp": null,
                "level": "WARN",
                "message": "outside any span",
                "error": "disk \"full\"\n",
                "target": target,
            })
        );
    }
}
