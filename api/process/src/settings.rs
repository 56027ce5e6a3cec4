//! The settings both binaries read the same way, declared once: the database ([`DatabaseArgs`])
//! and the logs ([`LogArgs`]). Each binary's `Config` flattens them, so the variables, flags,
//! defaults and help text cannot drift apart between the API and the worker.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
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
}

impl DatabaseArgs {
    /// How this process opens its pool.
    pub fn db_config(&self) -> entity::DbConfig {
        entity::DbConfig {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            causal_reads: self.database_causal_reads,
        }
    }

    /// As the first log line prints them: the URL's password masked.
    pub fn redacted(&self) -> String {
        format!(
            "DATABASE_URL={} DATABASE_MAX_CONNECTIONS={} DATABASE_CAUSAL_READS={}",
            entity::db::redact_url(self.database_url.expose_secret()),
            self.database_max_connections,
            self.database_causal_reads,
        )
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Folder of the daily JSON log files.
    #[arg(long, env = "LOG_DIR", default_value = "storage/logs")]
    pub log_dir: PathBuf,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long = "log-filter", env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,
}

impl LogArgs {
    /// As the first log line prints them.
    pub fn redacted(&self) -> String {
        format!(
            "LOG_DIR={} RUST_LOG={}",
            self.log_dir.display(),
            self.rust_log
        )
    }
}
