//! One API process on a random port over a fresh database ([`TestApp`]), in the manner of
//! zero-to-production's `spawn_app`, plus the workers and further API processes a test starts
//! beside it.

use crate::{Backend, Blocker, Client, Process, TestDb};

/// The admin token every test API gets unless [`AppOptions::admin_token`] says otherwise.
pub const ADMIN_TOKEN: &str = "test-admin-token-of-32-characters";
/// The gateway's Standard Webhooks secret every test API gets unless its options say otherwise
/// (a test's own, published nowhere else).
pub const WEBHOOK_SECRET: &str = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1vZi0zMi1ieXRlcw==";

/// Settings for a test API process, on top of the defaults below.
#[derive(Clone, Default)]
pub struct AppOptions {
    pub hold_ttl_seconds: Option<u32>,
    pub admin_token: Option<Option<String>>,
    pub extra_env: Vec<(&'static str, String)>,
}

impl AppOptions {
    /// The defaults, with holds that expire `seconds` after they are made.
    pub fn hold_ttl(seconds: u32) -> Self {
        Self {
            hold_ttl_seconds: Some(seconds),
            ..Self::default()
        }
    }
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
        let mut client = Client::new(&server);
        client.webhook_secret = webhook_secret(&options);
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

    /// Holds the product's row lock from outside the API: see [`TestDb::block_product`].
    pub async fn block_product(&self, product_id: i64) -> Blocker {
        self.db.block_product(product_id).await
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
    if !options
        .extra_env
        .iter()
        .any(|(k, _)| k.starts_with("WEBHOOK_"))
    {
        env.push(("WEBHOOK_SECRET", WEBHOOK_SECRET.into()));
    }
    env.extend(options.extra_env.iter().cloned());
    Process::start("flash-sale-api", &[], &env, true)
}

/// The webhook secret an API started with `options` has.
fn webhook_secret(options: &AppOptions) -> Option<String> {
    let set = |name: &str| options.extra_env.iter().find(|(k, _)| *k == name);
    match set("WEBHOOK_SECRET") {
        Some((_, secret)) => Some(secret.clone()),
        None if set("WEBHOOK_ALLOW_UNSIGNED").is_some() => None,
        None => Some(WEBHOOK_SECRET.into()),
    }
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
