//! Databases for tests: a fresh MariaDB schema or SQLite file per test ([`TestDb`]), the
//! [`on_both_databases!`](crate::on_both_databases) scenario macro, and a lock taken from
//! outside the API ([`Blocker`]).
//!
//! MariaDB is found at `TEST_MYSQL_URL` (default `mysql://flash:flash@127.0.0.1:3306`, the user
//! `tests/ensure-mariadb.sh` creates). A test that cannot reach it fails; it never skips.

use std::path::Path;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MariaDb,
    Sqlite,
}

/// Runs each named scenario as two tests, `<name>::mariadb` and `<name>::sqlite`.
///
/// A scenario is an ordinary `async fn name(backend: Backend)` beside the invocation, so that
/// rustfmt formats it; the macro adds a module of the same name (modules and functions do not
/// share a namespace) with one test per database:
///
/// ```ignore
/// on_both_databases!(a_hold_lowers_available_stock);
///
/// /// What the scenario shows.
/// async fn a_hold_lowers_available_stock(backend: Backend) {
///     let app = TestApp::spawn(backend).await;
///     // ...
/// }
/// ```
///
/// A scenario left out of the list is a function never used: the warning (an error under
/// `clippy -D warnings`) says so.
#[macro_export]
macro_rules! on_both_databases {
    ($($scenario:ident),+ $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() {
                super::$scenario($crate::Backend::MariaDb).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$scenario($crate::Backend::Sqlite).await
            }
        }
    )+};
}

/// A database that exists for one test: a MariaDB schema dropped afterwards, or a SQLite file
/// in a temporary folder.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: Option<String>,
    admin_url: String,
    _dir: tempfile::TempDir,
}

fn mysql_base_url() -> String {
    std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://flash:flash@127.0.0.1:3306".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Self {
                    backend,
                    url,
                    name: None,
                    admin_url: String::new(),
                    _dir: dir,
                }
            }
            Backend::MariaDb => Self::new_on(&mysql_base_url()).await,
        }
    }

    /// A fresh database on the MariaDB server at `base_url` (`mysql://user:pass@host:port`, no
    /// database): the shared one, or a test's own from [`servers`].
    pub async fn new_on(base_url: &str) -> Self {
        let base = base_url.trim_end_matches('/').to_owned();
        let name = format!("fs_test_{:016x}", rand::random::<u64>());
        let admin = Database::connect(&base).await.unwrap_or_else(|e| {
            panic!(
                "MariaDB at {base} is not reachable ({e}); run tests/ensure-mariadb.sh \
                 or set TEST_MYSQL_URL"
            )
        });
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create test database");
        admin.close().await.ok();
        Self {
            backend: Backend::MariaDb,
            url: format!("{base}/{name}"),
            name: Some(name),
            admin_url: base,
            _dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// This database through another server of its cluster (another Galera node).
    pub fn url_on(&self, base_url: &str) -> String {
        let name = self.name.as_deref().expect("a MariaDB database");
        format!("{}/{name}", base_url.trim_end_matches('/'))
    }

    /// A direct connection, for checks the HTTP API does not expose.
    pub async fn connect(&self) -> DatabaseConnection {
        Database::connect(&self.url)
            .await
            .expect("connect to test db")
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Holds the product's row lock (MariaDB) or the database's write lock (SQLite) from
    /// outside the API, as a stuck transaction would, until [`Blocker::release`].
    pub async fn block_product(&self, product_id: i64) -> Blocker {
        use sea_orm::{TransactionOptions, TransactionTrait};
        let db = self.connect().await;
        let txn = db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .expect("begin");
        let lock = match self.backend {
            Backend::MariaDb => {
                format!("SELECT id FROM products WHERE id = {product_id} FOR UPDATE")
            }
            Backend::Sqlite => format!("UPDATE products SET name = name WHERE id = {product_id}"),
        };
        txn.query_one_raw(Statement::from_string(txn.get_database_backend(), lock))
            .await
            .expect("lock");
        Blocker { _db: db, txn }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else { return };
        let admin_url = self.admin_url.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(db) = Database::connect(&admin_url).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS `{name}`"))
                        .await;
                    db.close().await.ok();
                }
            });
        })
        .join();
    }
}

/// A transaction holding a product's lock from outside the API.
pub struct Blocker {
    _db: DatabaseConnection,
    txn: sea_orm::DatabaseTransaction,
}

impl Blocker {
    pub async fn release(self) {
        self.txn.rollback().await.expect("rollback");
    }
}
