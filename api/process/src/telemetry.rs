//! JSON log lines (to stdout and to a daily file per binary in `LOG_DIR`) and the Prometheus
//! recorder, installed once per process.
//!
//! Logs go through the ecosystem's crates: tracing-subscriber's JSON formatter writes each event
//! once, as one line, and hands it to two tracing-appender non-blocking writers, one per
//! destination (stdout, the daily file), each a bounded queue and a thread of its own.

use std::{
    io::Write,
    path::Path,
    sync::{OnceLock, mpsc},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Subscriber;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{
        self, MakeWriter,
        writer::{MakeWriterExt, Tee},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

/// Lines that may wait for each destination's writer thread (tracing-appender's default, set
/// here so that it stays this service's): beyond it a new line is dropped rather than making a
/// request wait, and counted in `log_lines_dropped_total`.
const QUEUE_LINES: usize = 128_000;

/// How long a process at its end waits, in all, for its writers to write the lines still queued:
/// a destination that blocks (a stdout pipe nobody reads) must not keep the process from
/// exiting.
const FINAL_WAIT: Duration = Duration::from_secs(1);

/// Keep these alive for the life of the process: dropping them lets the log writers write the
/// lines still queued, waiting [`FINAL_WAIT`] at most.
pub struct LogGuards {
    guards: Vec<WorkerGuard>,
}

/// Each destination's drop counter, for `log_lines_dropped_total` (set once the subscriber is
/// installed).
static DROPPED: OnceLock<[ErrorCounter; 2]> = OnceLock::new();

/// Installs the global subscriber: one JSON object per line, event fields at the top level (so
/// a metric line reads `{"timestamp":…,"metric":"hold.created","hold_id":…}`), written
/// without blocking to stdout and to `{log_dir}/{binary}.log.YYYY-MM-DD` (UTC days).
pub fn init_logging(
    binary: &str,
    log_dir: &Path,
    filter: &str,
) -> Result<LogGuards, TelemetryError> {
    install(binary, log_dir, filter, QUEUE_LINES)
}

fn install(
    binary: &str,
    log_dir: &Path,
    filter: &str,
    queue_lines: usize,
) -> Result<LogGuards, TelemetryError> {
    let log_dir_err = |e: &dyn std::fmt::Display| TelemetryError::LogDir {
        dir: log_dir.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(log_dir).map_err(|e| log_dir_err(&e))?;
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| TelemetryError::Filter(format!("{filter:?}: {e}")))?;
    // Opened for appending and without a buffer: each line goes to it in one `write` call, so
    // the daily file that several processes append to gets whole lines from each.
    let file = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(format!("{binary}.log"))
        .build(log_dir)
        .map_err(|e| log_dir_err(&e))?;
    let writers = writers(std::io::stdout(), file, queue_lines);
    tracing_subscriber::registry()
        .with(filter)
        .with(json_layer(writers.lines))
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    let _ = DROPPED.set(writers.dropped);
    Ok(writers.guards)
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

/// Both destinations' writers: each formatted line is handed to the file's queue and to
/// stdout's, each drained by its own thread, so a destination that blocks costs the other none
/// of its lines.
struct Writers {
    lines: Tee<NonBlocking, NonBlocking>,
    guards: LogGuards,
    /// The file's, then stdout's.
    dropped: [ErrorCounter; 2],
}

fn writers<F, O>(stdout: O, file: F, queue_lines: usize) -> Writers
where
    O: Write + Send + 'static,
    F: Write + Send + 'static,
{
    let non_blocking = |thread: &str| {
        NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(queue_lines)
            .thread_name(thread)
    };
    let (to_file, file_guard) = non_blocking("log-file").finish(file);
    let (to_stdout, stdout_guard) = non_blocking("log-stdout").finish(stdout);
    Writers {
        dropped: [to_file.error_counter(), to_stdout.error_counter()],
        lines: to_file.and(to_stdout),
        guards: LogGuards {
            guards: vec![file_guard, stdout_guard],
        },
    }
}

/// Brings `log_lines_dropped_total` up to the lines the log writers have dropped so far (each
/// destination's drops, added up). Called when `/metrics` is rendered.
pub fn record_log_drops() {
    if let Some(dropped) = DROPPED.get() {
        record_drops(dropped);
    }
}

fn record_drops(dropped: &[ErrorCounter]) {
    let total = dropped
        .iter()
        .map(|d| u64::try_from(d.dropped_lines()).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    // A counter only rises: sampled by two scrapes at once, the higher total stays.
    metrics::counter!("log_lines_dropped_total").absolute(total);
}

impl Drop for LogGuards {
    /// A `WorkerGuard`'s own drop waits up to 0.1 s to queue its writer's stop and up to 1 s
    /// more for the writer to reach it; but when its queue is full it prints a complaint to
    /// stdout instead, and if stdout is the destination that blocks (a pipe nobody reads), that
    /// print never returns. So each guard is dropped on a thread of its own, and the process
    /// goes on without the ones still waiting after [`FINAL_WAIT`].
    fn drop(&mut self) {
        let (finishing, finished) = mpsc::channel::<()>();
        for guard in self.guards.drain(..) {
            let finishing = finishing.clone();
            // Should the thread not start, the closure, and the guard with it, is dropped here.
            let _ = std::thread::Builder::new()
                .name("log-finish".into())
                .spawn(move || {
                    drop(guard);
                    drop(finishing);
                });
        }
        drop(finishing);
        // Disconnected once every guard is dropped, or timed out: either way, go on.
        let _ = finished.recv_timeout(FINAL_WAIT);
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
/// without it every histogram sample recorded since the last `/metrics` scrape stays in memory,
/// and an API nobody scraped grew with every request (`tests/bench-results/README.md`).
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
    describe_counter!(
        "holds_created_total",
        "Holds granted, one per product line, by product"
    );
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
        "Hold requests refused, by reason (the problem code), and by product when the product decided it"
    );
    describe_counter!("holds_released_total", "Holds released by their buyer");
    describe_counter!(
        "holds_expired_total",
        "Expired holds whose stock went back, by who swept them (worker, api)"
    );
    describe_counter!(
        "order_status_changes_total",
        "Orders entering a status (pending, paid, cancelled, timed_out), one per product line, by product"
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
    describe_counter!(
        "expiry_runs_total",
        "Worker sweeps run, by outcome (ok, failed)"
    );
    describe_gauge!(
        "expiry_last_success_timestamp_seconds",
        metrics::Unit::Seconds,
        "Unix time the last sweep completed (absent until one has)"
    );
    describe_gauge!(
        "database_up",
        "1 when this process's database answered its last probe (every 5 s, within 2 s), else 0"
    );
    describe_gauge!(
        "galera_node_primary",
        "On a Galera node: 1 when the node is a ready member of the primary component, 0 when it is not, NaN when its status cannot be read"
    );
    describe_gauge!(
        "product_stock",
        "Units on hand per product, read by the worker every 5 s (the newest 500 products)"
    );
    describe_gauge!(
        "product_available_stock",
        "Units free to hold per product, as GET /api/products answers, read by the worker every 5 s"
    );
    describe_gauge!(
        "queue_waiting",
        "Tickets waiting in a product's queue, read by the worker every 5 s"
    );
    describe_gauge!(
        "queue_open",
        "1 while a product's queue should admit (not closed, its sale on), read every 5 s"
    );
    describe_gauge!(
        "queue_admitted_unused",
        "Admitted tickets not yet used or expired, read by the worker every 5 s"
    );
    describe_counter!(
        "queue_admission_failures_total",
        "Admission passes on a product that failed (the next run retries)"
    );
    describe_gauge!(
        "orders_refund_owed",
        "Orders marked refund_required and not yet marked refunded, read by the worker every 5 s"
    );
    describe_histogram!(
        "expiry_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of one expiry batch transaction"
    );
    describe_histogram!("expiry_batch_size", "Holds released by one expiry batch");
    describe_counter!(
        "log_lines_dropped_total",
        "Log lines dropped because a log writer had too many waiting (it never makes a request wait); stdout's and the file's added up"
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
    use std::{
        process::{Command, Stdio},
        sync::{Arc, Mutex},
        time::Instant,
    };

    use serde_json::{Value, json};
    use tracing::dispatcher::{self, Dispatch};

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

    /// The subscriber of a process, over `writers`, for the calling thread(s) of a test.
    fn dispatch(writers: Writers) -> (Dispatch, LogGuards, [ErrorCounter; 2]) {
        let subscriber = tracing_subscriber::registry().with(json_layer(writers.lines));
        (Dispatch::new(subscriber), writers.guards, writers.dropped)
    }

    #[test]
    fn a_line_has_the_shape_the_service_relies_on() {
        let (file, stdout) = (Shared::default(), Shared::default());
        let (subscriber, guards, _) = dispatch(writers(stdout.clone(), file.clone(), QUEUE_LINES));
        dispatcher::with_default(&subscriber, || {
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
        drop(guards);
        let text = file.text();
        assert_eq!(text, stdout.text(), "the same lines in both places");
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

    #[test]
    fn every_line_logged_before_the_end_reaches_both_places_whole_and_in_order() {
        let (file, stdout) = (Shared::default(), Shared::default());
        let (subscriber, guards, dropped) =
            dispatch(writers(stdout.clone(), file.clone(), QUEUE_LINES));
        std::thread::scope(|s| {
            for t in 0..4 {
                let subscriber = &subscriber;
                s.spawn(move || {
                    dispatcher::with_default(subscriber, || {
                        for i in 0..2_000 {
                            tracing::info!(t, i, "a line");
                        }
                    });
                });
            }
        });
        drop(guards);
        for place in [&file, &stdout] {
            let mut next = [0; 4];
            for line in place.lines() {
                let (t, i) = (line["t"].as_u64().expect("t"), line["i"].as_u64());
                let t = usize::try_from(t).expect("a thread");
                assert_eq!(i, Some(next[t]), "thread {t}'s lines out of order");
                next[t] += 1;
            }
            assert_eq!(next, [2_000; 4]);
        }
        assert_eq!(dropped.map(|d| d.dropped_lines()), [0, 0]);
    }

    #[test]
    fn lines_beyond_a_full_queue_are_dropped_and_counted_not_waited_for() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let (file, stdout) = (Shared::default(), Shared::default());
        let (subscriber, guards, dropped) = dispatch(writers(stdout.clone(), file.clone(), 10));
        metrics::with_local_recorder(&recorder, || record_drops(&dropped));
        assert!(
            metrics.render().contains("log_lines_dropped_total 0"),
            "{}",
            metrics.render()
        );
        // Stdout is stuck (its lock held here), so its writer can take at most one line off its
        // queue of 10: the rest of the burst must be dropped, and a line that waited for room
        // would hang this test. The file's writer is not held up by it.
        let stuck = stdout.0.lock().expect("stdout");
        dispatcher::with_default(&subscriber, || {
            for i in 0..1_000 {
                tracing::info!(i, "a line");
            }
        });
        let [file_dropped, stdout_dropped] = dropped.clone().map(|d| d.dropped_lines());
        assert!(
            stdout_dropped >= 1_000 - 11,
            "only {stdout_dropped} dropped"
        );
        metrics::with_local_recorder(&recorder, || record_drops(&dropped));
        let rendered = metrics.render();
        let total = file_dropped + stdout_dropped;
        assert!(
            rendered.contains(&format!("log_lines_dropped_total {total}")),
            "{total} expected in:\n{rendered}"
        );
        drop(stuck);
        drop(guards);
        assert_eq!(file.lines().len() + file_dropped, 1_000);
        assert_eq!(stdout.lines().len() + stdout_dropped, 1_000);
    }

    #[test]
    fn processes_sharing_a_daily_file_each_write_whole_lines() {
        let dir = TempDir::new("shared-file");
        let appender = || {
            tracing_appender::rolling::Builder::new()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("shared.log")
                .build(&dir.0)
                .expect("appender")
        };
        // Two processes' writers over one file, each line long enough that a split would show.
        let [a, b] = [appender(), appender()]
            .map(|file| dispatch(writers(std::io::sink(), file, QUEUE_LINES)));
        std::thread::scope(|s| {
            for (subscriber, tag) in [(&a.0, "a"), (&b.0, "b")] {
                s.spawn(move || {
                    dispatcher::with_default(subscriber, || {
                        for i in 0..2_000_usize {
                            let text = tag.repeat(1 + i % 3_000);
                            tracing::info!(tag, text, "a long line");
                        }
                    });
                });
            }
        });
        drop((a, b));
        let mut seen = [0; 2];
        for line in dir.text().lines() {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let tag = v["tag"].as_str().expect("tag");
            assert!(
                v["text"]
                    .as_str()
                    .expect("text")
                    .bytes()
                    .all(|c| c == tag.as_bytes()[0])
            );
            seen[usize::from(tag == "b")] += 1;
        }
        assert_eq!(seen, [2_000; 2]);
    }

    /// Set in the child process of the test below: the folder of its logs.
    const STUCK_STDOUT_CHILD: &str = "FLASH_SALE_PROCESS_TEST_STUCK_STDOUT";

    /// The real set-up in a process of its own, whose stdout is a pipe nobody reads: once the
    /// pipe is full, stdout's writer blocks in `write` and its queue fills up. The process must
    /// still end, its wait for the writers bounded; the file keeps getting its lines.
    #[test]
    fn a_stdout_nobody_reads_does_not_keep_the_process_from_ending() {
        if let Some(dir) = std::env::var_os(STUCK_STDOUT_CHILD) {
            let guards = install("stuck", Path::new(&dir), "info", 1_000).expect("logging");
            for i in 0..20_000 {
                tracing::info!(i, "a line nobody reads on stdout");
            }
            let [_, stdout_dropped] = DROPPED.get().expect("installed").clone();
            let started = Instant::now();
            drop(guards);
            let waited = started.elapsed();
            let dropped = stdout_dropped.dropped_lines();
            // Not on stdout: the test harness's own output would block there too.
            eprintln!("stdout dropped {dropped} lines; waited {waited:?} for the writers");
            let ok = dropped > 0 && waited < FINAL_WAIT + Duration::from_millis(500);
            std::process::exit(if ok { 0 } else { 1 });
        }
        let dir = TempDir::new("stuck-stdout");
        let test = "telemetry::tests::a_stdout_nobody_reads_does_not_keep_the_process_from_ending";
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(STUCK_STDOUT_CHILD, &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("child");
        // Kept open and never read.
        let _stdout = child.stdout.take();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("child") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the process did not end: its log writers kept it");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        assert!(status.success(), "{status}: {stderr}");
        let written = dir.text().lines().count();
        assert!(
            written >= 1_000,
            "the file kept getting its lines: {written}"
        );
    }

    /// A folder of its own under the system's temporary folder, removed at the end.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let dir = std::env::temp_dir().join(format!(
                "flash-sale-process-{name}-{}-{}",
                std::process::id(),
                now.as_nanos()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }

    impl TempDir {
        /// Every file's text (a test that runs over midnight, UTC, has two daily files).
        fn text(&self) -> String {
            let mut files: Vec<_> = std::fs::read_dir(&self.0)
                .expect("dir")
                .map(|f| f.expect("entry").path())
                .collect();
            files.sort();
            files
                .iter()
                .map(|f| std::fs::read_to_string(f).expect("file"))
                .collect()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
