//! The worker's settings: one typed struct, read once at start from flags, the environment and
//! `.env` (see the table in the README, "Configuration").

use std::net::SocketAddr;

use clap::Parser;
use flash_sale_process::{DatabaseArgs, LogArgs};

/// The worker's settings (README, "Configuration"), from flags, the environment and `.env`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flash-sale-worker",
    version,
    about = "Flash Sale worker: releases expired holds on a schedule"
)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseArgs,
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
    #[command(flatten)]
    pub logs: LogArgs,
    /// Run one sweep now and exit, instead of serving the schedule.
    #[arg(long)]
    pub once: bool,
}

impl Config {
    /// How this process opens its pool.
    pub fn db_config(&self) -> entity::DbConfig {
        self.database.db_config()
    }

    /// The configuration as printed at start-up: secrets masked.
    pub fn redacted(&self) -> String {
        format!(
            "{} WORKER_ADDR={} EXPIRY_SCHEDULE={:?} EXPIRY_BATCH_SIZE={} PAYMENT_TIMEOUT_SECONDS={} {}",
            self.database.redacted(),
            self.worker_addr,
            self.expiry_schedule,
            self.expiry_batch_size,
            self.payment_timeout_seconds,
            self.logs.redacted(),
        )
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

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
                .database
                .database_url
                .expose_secret()
                .contains("db-password-42")
        );
        for printed in [format!("{config:?}"), config.redacted()] {
            assert!(!printed.contains("db-password-42"), "{printed}");
        }
    }
}
