//! Connecting, and the one way this crate opens a write transaction.
//!
//! MySQL/MariaDB: every session runs at READ COMMITTED (locking reads see the latest commit and
//! InnoDB takes no gap locks, so inserting a hold never waits on the worker's range scan), with a
//! short `innodb_lock_wait_timeout` so that a stuck lock turns into a retry, then a 503, well
//! within the contract's 5 seconds.
//!
//! On a Galera node (`wsrep_on`), [`CausalReads`] decides whether each session also sets
//! `wsrep_sync_wait = 1`, so that a read through this node sees every write the cluster
//! acknowledged before it started, whichever node took the write.
//!
//! SQLite: lock clauses are dropped, so a write transaction starts with `BEGIN IMMEDIATE` and
//! holds the database write lock from its first statement; inside one process writers queue on
//! a fair async mutex instead of spinning in SQLite's busy handler; across processes the busy
//! timeout and the retry loop take over.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, TransactionOptions, TransactionTrait,
    sqlx::{
        self, Executor,
        sqlite::{SqliteJournalMode, SqliteSynchronous},
    },
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{DomainError, failure::connection_lost};
use crate::types::ProductId;

/// Attempts per operation before contention is answered as [`DomainError::Contention`]. Lost
/// attempts come in two speeds: a lock wait times out after a second, while a Galera
/// certification conflict fails at once, so the bound that matters is the request's deadline
/// ([`ANSWER_WITHIN`]).
pub const MAX_ATTEMPTS: u32 = 16;
/// How long one request may take inside this crate, from its arrival to its answer: the
/// contract's 5 seconds, less a margin for HTTP.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(4_500);
/// No new attempt starts later than this before the deadline: an attempt may wait a full lock
/// timeout.
const LAST_ATTEMPT: Duration = Duration::from_millis(1_100);
/// Seconds a MySQL statement waits for a row lock before it fails with 1205 and is retried.
/// Healthy lock queues on a hot row drain in milliseconds; a second means something is stuck.
const LOCK_WAIT_TIMEOUT_SECS: u32 = 1;
/// How long a request waits for a pooled connection before the database counts as unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// SQLite's busy timeout, across processes (same reasoning as the MySQL lock wait).
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Now, at the precision the database keeps (microseconds), so what we answer is what we store.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Sqlite,
}

/// Whether reads wait for the cluster to apply every write acknowledged before them
/// (`wsrep_sync_wait = 1`). Only Galera has anything to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CausalReads {
    /// On exactly when the server reports `wsrep_on`.
    #[default]
    Auto,
    /// Always set (fails at connect on a server without `wsrep_sync_wait`).
    On,
    Off,
}

impl std::fmt::Display for CausalReads {
    /// As the setting is written: `auto`, `true`, `false`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "true",
            Self::Off => "false",
        })
    }
}

impl std::str::FromStr for CausalReads {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "true" | "on" | "1" => Ok(Self::On),
            "false" | "off" | "0" => Ok(Self::Off),
            other => Err(format!("expected auto, true or false, not {other:?}")),
        }
    }
}

/// What is needed to open the pool. The URL carries the password: `Debug` prints it masked.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub url: SecretString,
    pub max_connections: u32,
    pub causal_reads: CausalReads,
}

impl DbConfig {
    pub fn new(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections,
            causal_reads: CausalReads::Auto,
        }
    }
}

/// What the server is, as read once at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTraits {
    /// MariaDB 10.6+: `INSERT … SELECT … FROM JSON_TABLE(…) RETURNING`, so new rows' ids come
    /// back with the insert, whatever `auto_increment_increment` and lock mode are.
    pub insert_returning: bool,
    /// A Galera node (`wsrep_on`).
    pub galera: bool,
}

/// The shared handle: the pool plus the in-process writer queue used on SQLite.
#[derive(Clone)]
pub struct Db {
    conn: DatabaseConnection,
    backend: Backend,
    sqlite_writer: Option<Arc<Mutex<()>>>,
    max_connections: u32,
    server: ServerTraits,
}

/// A write transaction. On SQLite it also holds this process's writer slot until it ends.
pub struct WriteTxn {
    // Field order matters: the transaction ends before the writer slot is freed.
    txn: DatabaseTransaction,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl WriteTxn {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    /// Rolls back now, before the writer slot is freed (a dropped transaction would only queue
    /// its rollback, and the next SQLite writer would find the database still locked).
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

impl Db {
    /// Opens the pool. For SQLite the file is created if missing (`mode=rwc` in the URL) and put
    /// in WAL mode so readers do not block the writer.
    pub async fn connect(config: &DbConfig) -> Result<Self, DbErr> {
        let url: &str = config.url.expose_secret();
        let backend = if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            Backend::MySql
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(DbErr::Custom(format!(
                "unsupported database URL (expected mysql:// or sqlite:): {}",
                redact_url(url)
            )));
        };
        let url = url.replacen("mariadb://", "mysql://", 1);
        let mut opts = ConnectOptions::new(url);
        opts.max_connections(config.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_timeout(ACQUIRE_TIMEOUT)
            // A connection killed by the server or a restarted database is noticed on checkout.
            .test_before_acquire_if_idle_for(Duration::from_secs(10))
            .sqlx_logging(false);
        let causal = config.causal_reads;
        match backend {
            Backend::MySql => {
                opts.map_sqlx_mysql_pool_opts(move |pool| {
                    pool.after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                                .await?;
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "SET SESSION innodb_lock_wait_timeout = {LOCK_WAIT_TIMEOUT_SECS}"
                            )))
                            .await?;
                            let causal = match causal {
                                CausalReads::Off => false,
                                CausalReads::On => true,
                                CausalReads::Auto => wsrep_on(&mut *conn).await?,
                            };
                            if causal {
                                conn.execute("SET SESSION wsrep_sync_wait = 1").await?;
                            }
                            Ok(())
                        })
                    })
                });
            }
            Backend::Sqlite => {
                opts.map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(SQLITE_BUSY_TIMEOUT)
                        .foreign_keys(true)
                });
            }
        }
        let conn = Database::connect(opts).await?;
        let server = match backend {
            Backend::MySql => {
                let row = conn
                    .query_one_raw(sea_orm::Statement::from_string(
                        DbBackend::MySql,
                        "SELECT VERSION() AS version",
                    ))
                    .await?
                    .ok_or_else(|| DbErr::Custom("SELECT VERSION() returned no row".into()))?;
                let version: String = row.try_get("", "version")?;
                let mut pooled = conn
                    .get_mysql_connection_pool()
                    .acquire()
                    .await
                    .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(std::sync::Arc::new(e))))?;
                let galera = wsrep_on(&mut pooled)
                    .await
                    .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(std::sync::Arc::new(e))))?;
                ServerTraits {
                    insert_returning: mariadb_at_least(&version, (10, 6)),
                    galera,
                }
            }
            Backend::Sqlite => ServerTraits {
                insert_returning: false,
                galera: false,
            },
        };
        tracing::info!(
            backend = ?backend,
            insert_returning = server.insert_returning,
            galera = server.galera,
            causal_reads = %config.causal_reads,
            "database connected"
        );
        Ok(Self {
            conn,
            backend,
            sqlite_writer: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
            max_connections: config.max_connections.max(1),
            server,
        })
    }

    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What the server can do, as read at connect.
    pub fn server(&self) -> ServerTraits {
        self.server
    }

    /// A write transaction that takes its locks up front on SQLite (`BEGIN IMMEDIATE`).
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        let writer = match &self.sqlite_writer {
            Some(m) => Some(m.clone().lock_owned().await),
            None => None,
        };
        let txn = self
            .conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTxn {
            txn,
            _writer: writer,
        })
    }

    /// Runs `work` in one write transaction: commits if it returns `Ok`, rolls back if `Err`.
    /// (An outcome that must still commit, such as a refusal after a reclaim, is an `Ok`.)
    pub async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&DatabaseTransaction) -> Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        self.write_until(Instant::now() + ANSWER_WITHIN, work).await
    }

    /// [`Db::write`] for a caller that must answer by `deadline`: waiting for a connection (or,
    /// on SQLite, for this process's writer slot) stops there, as unavailable. Once the
    /// transaction has begun it is never cut short, so its outcome is always known.
    pub async fn write_until<T>(
        &self,
        deadline: Instant,
        work: impl AsyncFnOnce(&DatabaseTransaction) -> Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        let txn = match tokio::time::timeout_at(deadline.into(), self.begin_write()).await {
            Ok(txn) => txn?,
            Err(_) => return Err(out_of_time()),
        };
        match work(&txn).await {
            Ok(value) => {
                txn.commit().await?;
                Ok(value)
            }
            Err(err) => {
                if let Err(e) = txn.rollback().await {
                    tracing::warn!(error = %e, "rollback failed");
                }
                Err(err)
            }
        }
    }

    /// Runs a read, again while its pooled connection turns out to be dead (killed by the
    /// server, or left over from before a restart): harmless for a read, and it spares the
    /// client a 503 that a fresh connection would not have given. Each failure retires one
    /// dead connection at once, so this ends after at most the pool's size of them.
    pub async fn read<T, F, Fut>(&self, op: F) -> Result<T, DomainError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, DomainError>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match op().await {
                Err(DomainError::Unavailable(e))
                    if connection_lost(&e) && tries <= self.max_connections =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Publishes the pool's state as gauges (called when `/metrics` is scraped).
    pub fn record_pool_metrics(&self) {
        let (size, idle) = match self.backend {
            Backend::MySql => {
                let pool = self.conn.get_mysql_connection_pool();
                (pool.size(), pool.num_idle() as u32)
            }
            Backend::Sqlite => {
                let pool = self.conn.get_sqlite_connection_pool();
                (pool.size(), pool.num_idle() as u32)
            }
        };
        metrics::gauge!("db_pool_connections", "state" => "idle").set(f64::from(idle));
        metrics::gauge!("db_pool_connections", "state" => "in_use")
            .set(f64::from(size.saturating_sub(idle)));
        metrics::gauge!("db_pool_max_connections").set(f64::from(self.max_connections));
    }

    /// Readiness: does the database answer `SELECT 1` within 2 seconds?
    pub async fn is_ready(&self) -> bool {
        let ping = self.conn.execute_unprepared("SELECT 1");
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ping).await,
            Ok(Ok(_))
        )
    }

    /// What the process's gauges say of its database: whether it answers (the readiness check)
    /// and, on a Galera node, whether the node is a ready member of the primary component.
    pub async fn health(&self) -> DbHealth {
        let up = self.is_ready().await;
        let galera_primary = match self.server.galera {
            true => GaleraMembership::Known(self.galera_primary().await),
            false => GaleraMembership::NotGalera,
        };
        DbHealth { up, galera_primary }
    }

    /// `wsrep_cluster_status` is `Primary` and `wsrep_ready` is `ON`, read within 2 seconds
    /// (`SHOW STATUS` answers on a node outside the primary component, where queries do not);
    /// none when the status cannot be read.
    async fn galera_primary(&self) -> Option<bool> {
        let stmt = sea_orm::Statement::from_string(
            DbBackend::MySql,
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_cluster_status', 'wsrep_ready')",
        );
        let Ok(Ok(rows)) =
            tokio::time::timeout(Duration::from_secs(2), self.conn.query_all_raw(stmt)).await
        else {
            return None;
        };
        let value = |name: &str| {
            rows.iter().find_map(|row| {
                let n: String = row.try_get("", "Variable_name").ok()?;
                n.eq_ignore_ascii_case(name)
                    .then(|| row.try_get::<String>("", "Value").ok())
                    .flatten()
            })
        };
        Some(
            value("wsrep_cluster_status").is_some_and(|v| v == "Primary")
                && value("wsrep_ready").is_some_and(|v| v.eq_ignore_ascii_case("ON")),
        )
    }

    pub fn db_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }
}

/// See [`Db::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbHealth {
    /// The database answered `SELECT 1` within 2 seconds.
    pub up: bool,
    /// Whether this is a Galera node that is a ready member of the primary component.
    pub galera_primary: GaleraMembership,
}

/// See [`DbHealth::galera_primary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaleraMembership {
    /// Not a Galera node.
    NotGalera,
    /// A Galera node: whether it is a ready member of the primary component, when its status
    /// could be read.
    Known(Option<bool>),
}

/// Runs `op` (one whole transaction) until it succeeds, fails for a reason other than
/// contention, or has used its attempts or its time ([`MAX_ATTEMPTS`], and no attempt starts
/// less than [`LAST_ATTEMPT`] before the answer is due, [`ANSWER_WITHIN`] from now). Each retry is logged as
/// `stock.contention` with the attempt number that failed.
pub async fn with_retry<T, F, Fut>(product_id: Option<ProductId>, op: F) -> Result<T, DomainError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DomainError>>,
{
    with_retry_until(Instant::now() + ANSWER_WITHIN, product_id, op).await
}

/// [`with_retry`] for a caller that must answer by `deadline`.
pub async fn with_retry_until<T, F, Fut>(
    deadline: Instant,
    product_id: Option<ProductId>,
    mut op: F,
) -> Result<T, DomainError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DomainError>>,
{
    let last_start = deadline.checked_sub(LAST_ATTEMPT).unwrap_or(deadline);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(DomainError::Busy(err)) => {
                tracing::warn!(
                    metric = "stock.contention",
                    product_id = product_id.map(ProductId::get),
                    attempts = attempt,
                    error = %err,
                    "lock wait or deadlock, retrying"
                );
                metrics::counter!("stock_contention_retries_total").increment(1);
                // Exponential backoff with jitter: 4, 8, 16, ... ms (at most 256), so retries
                // spread out.
                let base = 4u64 << (attempt - 1).min(6);
                let pause = Duration::from_millis(base + rand::random_range(0..=base));
                if attempt >= MAX_ATTEMPTS || Instant::now() + pause >= last_start {
                    return Err(DomainError::Contention { attempts: attempt });
                }
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The request's deadline passed while it waited for the database (a pooled connection, or a
/// shared read): unavailable, as a pool timeout is.
pub(crate) fn out_of_time() -> DomainError {
    DomainError::Unavailable(Arc::new(DbErr::ConnectionAcquire(
        sea_orm::error::ConnAcquireErr::Timeout,
    )))
}

/// Whether this session's server is a Galera node with replication on. `SHOW VARIABLES`
/// rather than `@@wsrep_on`, which MySQL (no such variable) would refuse.
async fn wsrep_on(conn: &mut sqlx::MySqlConnection) -> Result<bool, sqlx::Error> {
    let row: Option<(String, String)> = sqlx::query_as("SHOW VARIABLES LIKE 'wsrep_on'")
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some_and(|(_, value)| value.eq_ignore_ascii_case("ON")))
}

/// Whether `VERSION()` names a MariaDB at least `min` (major, minor).
fn mariadb_at_least(version: &str, min: (u32, u32)) -> bool {
    if !version.to_ascii_lowercase().contains("mariadb") {
        return false;
    }
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// The URL with any password replaced, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{DbConfig, mariadb_at_least, redact_url};

    #[test]
    fn debug_never_prints_the_url() {
        let config = DbConfig::new("mysql://flash:secret@127.0.0.1:3306/db", 4);
        let printed = format!("{config:?}");
        assert!(!printed.contains("secret@"), "{printed}");
    }

    #[test]
    fn returning_needs_mariadb_10_6() {
        assert!(mariadb_at_least("10.11.19-MariaDB-0+deb12u1", (10, 6)));
        assert!(mariadb_at_least("11.4.2-MariaDB", (10, 6)));
        assert!(mariadb_at_least("10.6.0-MariaDB-log", (10, 6)));
        assert!(!mariadb_at_least("10.5.22-MariaDB", (10, 6)));
        assert!(
            !mariadb_at_least("8.0.36", (10, 6)),
            "MySQL has no RETURNING"
        );
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            redact_url("mysql://flash:secret@127.0.0.1:3306/db"),
            "mysql://flash:***@127.0.0.1:3306/db"
        );
        assert_eq!(redact_url("mysql://root@h/db"), "mysql://root@h/db");
        assert_eq!(
            redact_url("sqlite://flash_sale.db?mode=rwc"),
            "sqlite://flash_sale.db?mode=rwc"
        );
    }
}
