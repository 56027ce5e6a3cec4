//! The worker's settings: one typed struct, read once at start from flags, the environment and
//! `.env` (see the table in the README, "Configuration").

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};

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
    pub database_url: SecretString,
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
            entity::db::redact_url(self.database_url.expose_secret()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_database_password() {
        let config = Config::try_parse_from([
            "flash-sale-worker",
            "--database-url",
            "mysql://flash:db-password-42@db:3306/flash_sale",
        ])
        .unwrap();
        assert!(
            config
                .database_url
                .expose_secret()
                .contains("db-password-42")
        );
        for printed in [format!("{config:?}"), config.redacted()] {
            assert!(!printed.contains("db-password-42"), "{printed}");
        }
    }
}
