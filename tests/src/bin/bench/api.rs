//! The `flash-sale-api` process under test: started from the release binaries on a database,
//! waited for until it listens, asked for products and holds, read for its metrics, CPU time
//! and resident size, and stopped when dropped.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::sampling::{proc_cpu_seconds, proc_status_kib};

const ADMIN: &str = "bench-admin-token-of-32-characters";

/// A gateway secret, without which the API does not start (the benchmark sends no webhook).
const WEBHOOK_SECRET: &str = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtb2YtMzItYnl0ZXM=";

/// The HS256 key of the API that knows its buyers by tokens (`BUYER_AUTH=jwt`).
pub(crate) const JWT_SECRET: &str = "bench-buyer-tokens-hs256-key-of-40-bytes";

pub(crate) struct Api {
    child: Child,
    pub(crate) url: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) fn start(release: &Path, db_url: &str, coalescing: bool) -> Result<Self> {
        Self::start_with(release, db_url, coalescing, &[])
    }

    /// An API on `db_url` (already migrated) whose buyers are known by HS256 tokens.
    pub(crate) fn start_tokens(release: &Path, db_url: &str) -> Result<Self> {
        Self::start_with(
            release,
            db_url,
            true,
            &[
                ("AUTO_MIGRATE", "false"),
                ("BUYER_AUTH", "jwt"),
                ("BUYER_JWT_SECRET", JWT_SECRET),
            ],
        )
    }

    /// [`start`](Self::start) with more environment variables (`AUTO_MIGRATE`).
    pub(crate) fn start_with(
        release: &Path,
        db_url: &str,
        coalescing: bool,
        extra_env: &[(&str, &str)],
    ) -> Result<Self> {
        let log_dir = std::env::temp_dir().join("flash-sale-bench-logs");
        // A free port chosen here, so the API's stdout need not be read (parsing every log
        // line would cost the load generator CPU).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(release.join("flash-sale-api"))
            .env("DATABASE_URL", db_url)
            .env("BIND_ADDR", addr.to_string())
            .env("HOLD_COALESCING", coalescing.to_string())
            .env("HOLD_TTL_SECONDS", "3600")
            .env("MAX_HOLD_QTY", "10")
            .env("ADMIN_TOKEN", ADMIN)
            .env("WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env("LOG_DIR", &log_dir)
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .context("start target/release/flash-sale-api (run tests/bench.sh)")?;
        let mut api = Self {
            child,
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = api.child.try_wait()? {
                bail!(
                    "the API exited before listening ({status}); its log is in {}",
                    log_dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the API did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(api)
    }

    pub(crate) async fn create_limited_product(
        &self,
        stock: i64,
        per_buyer_limit: i64,
    ) -> Result<i64> {
        let r: Value = self
            .http
            .post(format!("{}/api/admin/products", self.url))
            .bearer_auth(ADMIN)
            .json(
                &json!({"name": "Limited product", "price": "9.99", "stock": stock,
                "per_buyer_limit": per_buyer_limit}),
            )
            .send()
            .await?
            .json()
            .await?;
        r["id"].as_i64().context("limited product id")
    }

    /// A hold of one unit: its id and the secret its buyer was given.
    pub(crate) async fn create_hold(&self, product: i64) -> Result<(i64, String)> {
        let r: Value = self
            .http
            .post(format!("{}/api/holds", self.url))
            .json(&json!({"product_id": product, "qty": 1}))
            .send()
            .await?
            .json()
            .await?;
        let id = r["hold_id"].as_i64().context("hold id")?;
        let secret = r["client_secret"].as_str().context("client_secret")?;
        Ok((id, secret.to_owned()))
    }

    /// A product with queue admission, on sale at once.
    pub(crate) async fn create_queue_product(&self, stock: i64) -> Result<i64> {
        let r: Value = self
            .http
            .post(format!("{}/api/admin/products", self.url))
            .bearer_auth(ADMIN)
            .json(
                &json!({"name": "Queued product", "price": "9.99", "stock": stock,
                "admission": "queue", "admission_window_seconds": 3600}),
            )
            .send()
            .await?
            .json()
            .await?;
        r["id"].as_i64().context("queue product id")
    }

    pub(crate) async fn create_product(&self, stock: i64) -> Result<i64> {
        let r: Value = self
            .http
            .post(format!("{}/api/admin/products", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "Hot product", "price": "9.99", "stock": stock}))
            .send()
            .await?
            .json()
            .await?;
        r["id"].as_i64().context("product id")
    }

    /// `stock_contention_retries_total` from the API's `/metrics`: transactions retried after a
    /// lock wait timeout or a deadlock (on Galera, a certification conflict: error 1213).
    pub(crate) async fn contention_retries(&self) -> Result<u64> {
        Ok(self.metric("stock_contention_retries_total").await? as u64)
    }

    /// A counter or gauge from the API's `/metrics`, summed over its labels.
    pub(crate) async fn metric(&self, name: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter(|rest| rest.starts_with([' ', '{']))
            .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// CPU seconds (user + system) the API has used so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&self.child.id().to_string(), [11, 12])
    }

    pub(crate) fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.pid(), field)
    }

    /// The API's process id, for CPU samples taken around a run.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
