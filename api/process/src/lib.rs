//! The process set-up `flash-sale-api` and `flash-sale-worker` share, kept out of the data layer
//! and out of either binary: the settings both read ([`settings`]), reading `.env`, JSON logs and the Prometheus recorder
//! ([`telemetry`]), the first log line ([`start`]), the listener and its `/metrics`
//! ([`listener`]), the database's health gauges ([`health`]), and the signal both drain on
//! ([`shutdown_signal`]).

pub mod health;
pub mod listener;
pub mod settings;
pub mod telemetry;

use std::path::Path;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;

pub use health::watch_database;
pub use listener::{bind, metrics_endpoint};
pub use settings::{DatabaseArgs, LogArgs};

/// Reads `.env` from the working directory into the environment, before the settings are parsed.
/// A missing file is fine; a broken one is an error worth stopping for.
pub fn load_dotenv() -> anyhow::Result<()> {
    match dotenvy::dotenv() {
        Err(e) if !e.not_found() => Err(e).context(".env: cannot be read"),
        _ => Ok(()),
    }
}

/// A started process's telemetry. Keep it for the life of the process: dropping it lets the log
/// writers write the lines still queued (waiting 1 s at most).
pub struct Started {
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    _logs: telemetry::LogGuards,
}

/// Installs logging (the `binary`'s daily file in `log_dir`, and stdout, through `filter`) and
/// the metrics recorder, then writes the first line: `"{binary} starting"` with its `version` and
/// its settings as `config` (the caller passes them with secrets masked).
pub fn start(
    binary: &str,
    version: &str,
    log_dir: &Path,
    filter: &str,
    config: &str,
) -> anyhow::Result<Started> {
    let logs = telemetry::init_logging(binary, log_dir, filter)?;
    let metrics = telemetry::init_metrics()?;
    tracing::info!(version, config, "{binary} starting");
    Ok(Started {
        metrics,
        _logs: logs,
    })
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
