//! Process plumbing shared by `flash-sale-api` and `flash-sale-worker`: JSON log lines (to
//! stdout and to a daily file per binary in `LOG_DIR`) and the Prometheus recorder.
//!
//! It lives here only because both binaries need exactly the same setup; nothing in the stock
//! operations depends on it (it is behind the `telemetry` feature).

use std::path::Path;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{
    EnvFilter, fmt, fmt::writer::MakeWriterExt, layer::SubscriberExt, util::SubscriberInitExt,
};

/// Keep these alive for the life of the process: dropping them flushes the log writers.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

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
    let (file_writer, file_guard) = tracing_appender::non_blocking(file);
    let (stdout_writer, stdout_guard) = tracing_appender::non_blocking(std::io::stdout());
    let json = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(stdout_writer.and(file_writer));
    tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    Ok(LogGuards(vec![file_guard, stdout_guard]))
}

/// Installs the global Prometheus recorder and returns the handle that renders `/metrics`.
pub fn init_metrics() -> Result<PrometheusHandle, TelemetryError> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| TelemetryError::Init(e.to_string()))
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

/// Resolves on Ctrl-C or SIGTERM: the signal both binaries drain on.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received, draining");
}
