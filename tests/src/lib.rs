//! Helpers for the end-to-end suites: a fresh database per test, the real binaries started on
//! random ports, and short request helpers, in the manner of zero-to-production's `spawn_app`.
//!
//! MariaDB is found at `TEST_MYSQL_URL` (default `mysql://flash:flash@127.0.0.1:3306`, the user
//! `tests/ensure-mariadb.sh` creates). A test that cannot reach it fails; it never skips.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use serde_json::{Value, json};

/// Private database servers for tests that stop, kill or isolate theirs.
pub mod servers;

/// Reading Server-Sent Events (the stock stream).
pub mod sse;

pub const ADMIN_TOKEN: &str = "test-admin-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MariaDb,
    Sqlite,
}

/// Declares each scenario once and runs it as two tests, `<name>::mariadb` and `<name>::sqlite`.
#[macro_export]
macro_rules! on_both_databases {
    ($(async fn $name:ident($backend:ident: Backend) $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn scenario($backend: $crate::Backend) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mariadb() { scenario($crate::Backend::MariaDb).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() { scenario($crate::Backend::Sqlite).await }
        }
    )*};
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

/// Where cargo put the binaries: next to this test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as tests/run.sh does)",
        path.display()
    );
    path
}

/// A running binary whose stdout (JSON log lines) is collected.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub addr: Option<String>,
}

impl Process {
    /// Starts `bin` with `env` and, when it serves HTTP, waits for its "listening" line.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, String)], wait_listening: bool) -> Self {
        let mut cmd = Command::new(binary(bin));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == "listening"
                        && v["target"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("flash_sale"))
                        && let Some(a) = v["addr"].as_str()
                    {
                        let _ = tx.send(a.to_owned());
                    }
                    lines.lock().expect("lines").push(line);
                }
            })
        };
        let addr = wait_listening.then(|| match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => panic!(
                "{bin} did not start listening; its output:\n{}",
                lines.lock().expect("lines").join("\n")
            ),
        });
        Self {
            child,
            lines,
            reader: Some(reader),
            addr,
        }
    }

    /// The metric lines of a running process once at least `n` have arrived (log lines reach
    /// stdout through a non-blocking writer), plus any that follow within a short grace.
    pub async fn metric_eventually(&self, name: &str, n: usize) -> Vec<Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.metric(name).len() < n && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.metric(name)
    }

    /// The JSON log lines with `"metric": name`, so far.
    pub fn metric(&self, name: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["metric"] == name)
            .collect()
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// Waits for the process to exit by itself and returns whether it succeeded.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The pipe is closed: the reader ends once it has every line.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit in {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    pub id: i64,
    pub stock: i64,
    pub available: i64,
    pub held: i64,
    pub pending: i64,
    pub paid: i64,
}

/// `kill -9` of a process this test started (an API, a worker), by its pid.
pub fn kill9(pid: u32) {
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -9 {pid}");
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The contract's invariant over a [`TestApp::ledger`]: see [`TestApp::assert_stock_conserved`].
pub fn assert_conserved(ledger: &[Ledger]) {
    for p in ledger {
        assert!(
            p.available >= 0,
            "product {}: available {} < 0",
            p.id,
            p.available
        );
        assert_eq!(
            p.stock,
            p.available + p.held + p.pending,
            "product {}: stock {} != available {} + active holds {} + pending orders {}",
            p.id,
            p.stock,
            p.available,
            p.held,
            p.pending
        );
    }
}

/// Settings for a test API process, on top of the defaults below.
#[derive(Clone, Default)]
pub struct AppOptions {
    pub hold_ttl_seconds: Option<u32>,
    pub admin_token: Option<Option<String>>,
    pub extra_env: Vec<(&'static str, String)>,
}

/// One API process on a random port over a fresh database. Derefs to its [`Client`].
pub struct TestApp {
    pub db: TestDb,
    pub server: Process,
    pub client: Client,
}

impl std::ops::Deref for TestApp {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// An HTTP client for one API process; cheap to clone into concurrent tasks.
#[derive(Clone)]
pub struct Client {
    pub address: String,
    pub http: reqwest::Client,
}

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
    /// Every header of the answer.
    pub headers: reqwest::header::HeaderMap,
}

impl Response {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// A header's value, if present and readable as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the answer says it is a stored one, replayed (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, AppOptions::default()).await
    }

    pub async fn spawn_with(backend: Backend, options: AppOptions) -> Self {
        Self::start(TestDb::new(backend).await, options)
    }

    /// One API process over a fresh database on the MariaDB server at `base_url` (a test's own
    /// server or Galera node, see [`servers`]).
    pub async fn spawn_on(base_url: &str, options: AppOptions) -> Self {
        Self::start(TestDb::new_on(base_url).await, options)
    }

    fn start(db: TestDb, options: AppOptions) -> Self {
        let server = spawn_api(&db.url, &db, &options);
        let client = Client::new(&server);
        Self { db, server, client }
    }

    /// Another API process on the same database (it does not migrate again).
    pub fn spawn_another_api(&self, options: &AppOptions) -> Process {
        self.spawn_api_at(&self.db.url, options)
    }

    /// Another API process on this database, through the server at `base_url` (another Galera
    /// node). It does not migrate again.
    pub fn spawn_api_on(&self, base_url: &str, options: &AppOptions) -> Process {
        self.spawn_api_at(&self.db.url_on(base_url), options)
    }

    fn spawn_api_at(&self, url: &str, options: &AppOptions) -> Process {
        let mut options = options.clone();
        options.extra_env.push(("AUTO_MIGRATE", "false".into()));
        spawn_api(url, &self.db, &options)
    }

    /// A scheduled worker on this app's database, sweeping every second.
    pub fn spawn_worker(&self, extra: &[(&'static str, String)]) -> Process {
        self.spawn_worker_at(&self.db.url, extra)
    }

    /// A scheduled worker on this database through the server at `base_url` (a Galera node).
    pub fn spawn_worker_on(&self, base_url: &str, extra: &[(&'static str, String)]) -> Process {
        self.spawn_worker_at(&self.db.url_on(base_url), extra)
    }

    fn spawn_worker_at(&self, url: &str, extra: &[(&'static str, String)]) -> Process {
        let mut env = worker_env(url, &self.db);
        env.push(("EXPIRY_SCHEDULE", "* * * * * *".into()));
        env.extend(extra.iter().cloned());
        Process::start("flash-sale-worker", &[], &env, true)
    }

    /// A worker that runs one sweep and exits (`--once`); the caller waits for it.
    pub fn start_worker_once(&self, batch_size: u64) -> Process {
        self.start_worker_once_with(batch_size, &[])
    }

    pub fn start_worker_once_with(
        &self,
        batch_size: u64,
        extra: &[(&'static str, String)],
    ) -> Process {
        let mut env = worker_env(&self.db.url, &self.db);
        env.push(("EXPIRY_BATCH_SIZE", batch_size.to_string()));
        env.extend(extra.iter().cloned());
        Process::start("flash-sale-worker", &["--once"], &env, false)
    }

    /// The contract's invariant, read straight from the tables: for every product,
    /// `stock == available counter + Σ qty of holds stored as active + Σ quantity of pending
    /// orders`, and the counter is never negative. (Expired-but-unswept holds are still stored
    /// as active and still counted out of the counter, so this holds at every moment.)
    pub async fn assert_stock_conserved(&self) {
        assert_conserved(&self.ledger().await);
    }

    /// Units sold never exceed what there was: `stock + Σ quantity of paid orders == initial`.
    pub async fn assert_sold_within(&self, product_id: i64, initial: i64) {
        let p = self
            .ledger()
            .await
            .into_iter()
            .find(|p| p.id == product_id)
            .expect("product");
        assert_eq!(p.stock + p.paid, initial, "product {product_id}: {p:?}");
    }

    /// Per product: the counters and the sums of holds and orders by state.
    pub async fn ledger(&self) -> Vec<Ledger> {
        self.ledger_at(&self.db.url).await
    }

    /// [`ledger`](Self::ledger) read through `url` (this database on one Galera node).
    pub async fn ledger_at(&self, url: &str) -> Vec<Ledger> {
        let sum = |table: &str, col: &str, status: &str| {
            format!(
                "CAST(COALESCE((SELECT SUM(x.{col}) FROM {table} x WHERE x.product_id = p.id \
                 AND x.status = '{status}'), 0) {})",
                self.signed()
            )
        };
        let sql = format!(
            "SELECT p.id, p.stock, p.available_stock, {} AS held, {} AS pending, {} AS paid \
             FROM products p ORDER BY p.id",
            sum("holds", "qty", "active"),
            sum("orders", "quantity", "pending"),
            sum("orders", "quantity", "paid"),
        );
        self.read_at(url, sql)
            .await
            .iter()
            .map(|row| Ledger {
                id: row.try_get("", "id").expect("id"),
                stock: i64::from(row.try_get::<i32>("", "stock").expect("stock")),
                available: i64::from(
                    row.try_get::<i32>("", "available_stock")
                        .expect("available"),
                ),
                held: row.try_get("", "held").expect("held"),
                pending: row.try_get("", "pending").expect("pending"),
                paid: row.try_get("", "paid").expect("paid"),
            })
            .collect()
    }

    /// Rows of a table matching a condition, e.g. `count("orders", "hold_id = 3")`.
    pub async fn count(&self, table: &str, condition: &str) -> i64 {
        self.count_at(&self.db.url, table, condition).await
    }

    /// [`count`](Self::count) read through `url` (this database on one Galera node).
    pub async fn count_at(&self, url: &str, table: &str, condition: &str) -> i64 {
        let sql = format!(
            "SELECT CAST(COUNT(*) {}) AS n FROM {table} WHERE {condition}",
            self.signed()
        );
        let rows = self.read_at(url, sql).await;
        rows[0].try_get("", "n").expect("n")
    }

    /// A read through `url` on one connection. On a Galera node it first waits until the node
    /// has applied every write committed anywhere before it (`wsrep_sync_wait`), so a direct
    /// check is never stale; other servers ignore the setting or lack it.
    async fn read_at(&self, url: &str, sql: String) -> Vec<sea_orm::QueryResult> {
        let mut options = sea_orm::ConnectOptions::new(url);
        options.max_connections(1).sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .expect("connect to test db");
        if self.db.backend == Backend::MariaDb {
            let _ = db
                .execute_unprepared("SET SESSION wsrep_sync_wait = 1")
                .await;
        }
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                sql.clone(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        db.close().await.ok();
        rows
    }

    /// Holds the product's row lock (MariaDB) or the database's write lock (SQLite) from
    /// outside the API, as a stuck transaction would, until [`Blocker::release`].
    pub async fn block_product(&self, product_id: i64) -> Blocker {
        use sea_orm::{TransactionOptions, TransactionTrait};
        let db = self.db.connect().await;
        let txn = db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await
            .expect("begin");
        let lock = match self.db.backend {
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

    /// Count of holds per stored status for a product.
    pub async fn hold_count(&self, product_id: i64, status: &str) -> i64 {
        self.count(
            "holds",
            &format!("product_id = {product_id} AND status = '{status}'"),
        )
        .await
    }

    fn signed(&self) -> &'static str {
        match self.db.backend {
            Backend::MariaDb => "AS SIGNED",
            Backend::Sqlite => "AS INTEGER",
        }
    }
}

impl Client {
    pub fn new(server: &Process) -> Self {
        Self {
            address: format!("http://{}", server.addr.clone().expect("server addr")),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.http.request(method, format!("{}{path}", self.address));
        if let Some(body) = body {
            req = req.json(&body);
        }
        into_response(req.send().await.expect("request failed")).await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn create_product(&self, stock: i64) -> i64 {
        let r = self
            .http
            .post(format!("{}/api/admin/products", self.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "Test product", "price": "10.50", "stock": stock}))
            .send()
            .await
            .expect("create product");
        let r = into_response(r).await;
        assert_eq!(r.status, 201, "create product: {}", r.body);
        r.body["id"].as_i64().expect("product id")
    }

    pub async fn hold(&self, product_id: i64, qty: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/holds",
            Some(json!({"product_id": product_id, "qty": qty})),
        )
        .await
    }

    /// `POST /api/holds` with an `Idempotency-Key`.
    pub async fn hold_with_key(&self, product_id: i64, qty: i64, key: &str) -> Response {
        self.post_with_key(
            "/api/holds",
            key,
            &json!({"product_id": product_id, "qty": qty}),
        )
        .await
    }

    /// `POST /api/orders` with an `Idempotency-Key`.
    pub async fn order_with_key(&self, hold_id: i64, key: &str) -> Response {
        self.post_with_key("/api/orders", key, &json!({ "hold_id": hold_id }))
            .await
    }

    /// A JSON `POST` to `path` carrying `Idempotency-Key: key`.
    pub async fn post_with_key(&self, path: &str, key: &str, body: &Value) -> Response {
        let r = self
            .http
            .post(format!("{}{path}", self.address))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .expect("request failed");
        into_response(r).await
    }

    pub async fn release(&self, hold_id: i64) -> Response {
        self.request(
            reqwest::Method::DELETE,
            &format!("/api/holds/{hold_id}"),
            None,
        )
        .await
    }

    pub async fn order(&self, hold_id: i64) -> Response {
        self.request(
            reqwest::Method::POST,
            "/api/orders",
            Some(json!({ "hold_id": hold_id })),
        )
        .await
    }

    pub async fn webhook(&self, body: Value) -> Response {
        self.request(reqwest::Method::POST, "/api/payments/webhook", Some(body))
            .await
    }

    /// A webhook signed the way a gateway using the Standard Webhooks library signs it,
    /// `age_secs` seconds ago.
    pub async fn signed_webhook(&self, secret: &str, body: &Value, age_secs: i64) -> Response {
        let raw = body.to_string();
        let ts = now_unix() - age_secs;
        let id = format!("msg_{:x}", rand::random::<u64>());
        let signature = standardwebhooks::Webhook::new(secret)
            .expect("secret")
            .sign(&id, ts, raw.as_bytes())
            .expect("sign");
        self.raw_webhook(
            &raw,
            &[
                ("webhook-id", id),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", signature),
            ],
        )
        .await
    }

    /// A webhook with the given raw body and headers, exactly as given.
    pub async fn raw_webhook(&self, raw: &str, headers: &[(&str, String)]) -> Response {
        let mut req = self
            .http
            .post(format!("{}/api/payments/webhook", self.address))
            .header("content-type", "application/json")
            .body(raw.to_owned());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        into_response(req.send().await.expect("webhook")).await
    }

    /// The current stock and available stock of a product.
    pub async fn stock(&self, product_id: i64) -> (i64, i64) {
        let r = self.get(&format!("/api/products/{product_id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        (
            r.body["stock"].as_i64().expect("stock"),
            r.body["available_stock"].as_i64().expect("available_stock"),
        )
    }

    pub async fn available(&self, product_id: i64) -> i64 {
        let r = self.get(&format!("/api/products/{product_id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["available_stock"].as_i64().expect("available_stock")
    }
}

/// An API process on the database at `url` (`db`'s, perhaps through another Galera node), logging
/// into `db`'s folder.
pub fn spawn_api(url: &str, db: &TestDb, options: &AppOptions) -> Process {
    let mut env = vec![
        ("DATABASE_URL", url.to_owned()),
        ("DATABASE_MAX_CONNECTIONS", "8".into()),
        ("BIND_ADDR", "127.0.0.1:0".into()),
        ("LOG_DIR", db.dir().join("logs").display().to_string()),
        ("RUST_LOG", "info".into()),
        (
            "HOLD_TTL_SECONDS",
            options.hold_ttl_seconds.unwrap_or(120).to_string(),
        ),
    ];
    match &options.admin_token {
        None => env.push(("ADMIN_TOKEN", ADMIN_TOKEN.into())),
        Some(Some(t)) => env.push(("ADMIN_TOKEN", t.clone())),
        Some(None) => {}
    }
    env.extend(options.extra_env.iter().cloned());
    Process::start("flash-sale-api", &[], &env, true)
}

fn worker_env(url: &str, db: &TestDb) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", url.to_owned()),
        ("DATABASE_MAX_CONNECTIONS", "4".into()),
        ("WORKER_ADDR", "127.0.0.1:0".into()),
        ("LOG_DIR", db.dir().join("logs").display().to_string()),
        ("RUST_LOG", "info".into()),
    ]
}

pub async fn into_response(r: reqwest::Response) -> Response {
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Response {
        status,
        content_type,
        body,
        headers,
    }
}

/// One answer seen by a [`Load`].
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which of the load's clients asked.
    pub client: usize,
    pub sent: std::time::Instant,
    pub took: Duration,
    /// 0 when no HTTP answer came (the connection failed or was closed); `code` then says why.
    pub status: u16,
    pub code: String,
    pub hold_id: Option<i64>,
}

/// Holds of one unit requested in a loop, `per_client` at a time through each client, until
/// [`finish`](Self::finish); every answer is recorded. Dropped unfinished (a failed test), it
/// stops.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    pub fn holds(clients: &[Client], product_id: i64, per_client: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (client, c) in clients.iter().enumerate() {
            for _ in 0..per_client {
                let (c, stop) = (c.clone(), stop.clone());
                let body = json!({"product_id": product_id, "qty": 1});
                tasks.push(tokio::spawn(async move {
                    let mut answers = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let sent = std::time::Instant::now();
                        let url = format!("{}/api/holds", c.address);
                        let (status, code, hold_id) =
                            match c.http.post(url).json(&body).send().await {
                                Ok(r) => {
                                    let r = into_response(r).await;
                                    let id = r.body["hold_id"].as_i64().filter(|_| r.status == 201);
                                    (r.status, r.code().to_owned(), id)
                                }
                                Err(e) => (0, format!("no answer: {e}"), None),
                            };
                        let took = sent.elapsed();
                        answers.push(Answer {
                            client,
                            sent,
                            took,
                            status,
                            code,
                            hold_id,
                        });
                        // A failing server answers at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    answers
                }));
            }
        }
        Self { stop, tasks }
    }

    /// Stops the load and returns every answer, in the order they were sent.
    pub async fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Vec::new();
        for t in std::mem::take(&mut self.tasks) {
            all.extend(t.await.expect("load task panicked"));
        }
        all.sort_by_key(|a| a.sent);
        all
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs `n` requests at the same instant: every task is spawned and waits on one barrier, so
/// they hit the server together, not one after another.
pub async fn all_at_once<F, Fut, T>(n: usize, make: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let barrier = barrier.clone();
            let fut = make(i);
            tokio::spawn(async move {
                barrier.wait().await;
                fut.await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("task panicked"));
    }
    out
}
