//! The API's settings: one typed struct, read once at start from flags, the environment and
//! `.env` (see the table in the README, "Configuration").

use std::net::SocketAddr;

use base64::Engine;
use clap::{Args, Parser, Subcommand, builder::BoolishValueParser};
use flash_sale_process::{DatabaseArgs, LogArgs};
use secrecy::SecretString;

#[derive(Debug, Parser)]
#[command(
    name = "flash-sale-api",
    version,
    about = "Flash Sale API: holds, orders and payments over one hot stock"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document (JSON) and exit; needs no database.
    Openapi,
    /// Run pending migrations and exit.
    Migrate {
        /// Also add the demo product (id 1) if it is not there yet.
        #[arg(long)]
        seed: bool,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where the API listens (`:0` picks a free port; the chosen address is logged).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,
    /// How long a hold reserves stock, in seconds.
    #[arg(long, env = "HOLD_TTL_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub hold_ttl_seconds: u32,
    /// The largest `qty` one hold may take.
    #[arg(long, env = "MAX_HOLD_QTY", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_hold_qty: u32,
    /// `whsec_` + base64; when set every payment webhook must be signed.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_webhook_secret)]
    pub webhook_secret: Option<WebhookSecret>,
    /// Comma-separated origins (or `*`) whose browsers may call the API.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS")]
    pub cors_allowed_origins: Option<String>,
    /// Bearer token for /api/admin/*; when unset those routes answer 404.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
    #[command(flatten)]
    pub logs: LogArgs,
    /// Serve concurrent hold requests for one product in one transaction (`false`: one
    /// transaction per request).
    #[arg(long, env = "HOLD_COALESCING", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub hold_coalescing: bool,
    /// With coalescing: microseconds a batch's first request waits for more.
    #[arg(long, env = "HOLD_BATCH_WAIT_MICROS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub hold_batch_wait_micros: u64,
    /// With coalescing: most hold requests in one transaction.
    #[arg(long, env = "HOLD_BATCH_MAX", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub hold_batch_max: u64,
    /// Hold requests per second per client address (burst of the same size); 0 turns the
    /// limit off. Over it: 429 `rate_limited` with `Retry-After`.
    #[arg(long, env = "HOLD_RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub hold_rate_limit_per_second: u32,
    /// On SIGTERM/Ctrl-C: seconds `/readyz` answers 503 before the listener closes, so load
    /// balancers stop sending new requests first.
    #[arg(long, env = "SHUTDOWN_DELAY_SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=300))]
    pub shutdown_delay_seconds: u32,
    /// Then at most this many seconds for in-flight requests to finish before the pool closes.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub shutdown_grace_seconds: u32,
    /// Run pending migrations when the server starts.
    #[arg(long, env = "AUTO_MIGRATE", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub auto_migrate: bool,
    /// How often, in milliseconds, this process reads the stock of each product it streams
    /// (`GET /api/products/{id}/stream`): one query per product, however many listeners.
    #[arg(long, env = "STOCK_STREAM_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub stock_stream_interval_ms: u64,
    /// Open stock streams this process serves at most; beyond it 503 `unavailable`.
    #[arg(long, env = "STOCK_STREAM_MAX_CLIENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stock_stream_max_clients: u32,
    #[command(flatten)]
    pub listener: crate::listener::ListenerArgs,
}

/// The decoded key of a Standard Webhooks secret (`whsec_` + base64).
#[derive(Clone)]
pub struct WebhookSecret(pub Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

fn parse_webhook_secret(s: &str) -> Result<WebhookSecret, String> {
    let b64 = s
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_ followed by base64")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
    if key.is_empty() {
        return Err("the key after whsec_ is empty".into());
    }
    Ok(WebhookSecret(key))
}

impl Config {
    /// How this process opens its pool.
    pub fn db_config(&self) -> entity::DbConfig {
        self.database.db_config()
    }

    /// The configuration as printed at start-up: secrets masked.
    pub fn redacted(&self) -> String {
        format!(
            "{} BIND_ADDR={} HOLD_TTL_SECONDS={} \
             MAX_HOLD_QTY={} WEBHOOK_SECRET={} CORS_ALLOWED_ORIGINS={} ADMIN_TOKEN={} {} \
             AUTO_MIGRATE={} SHUTDOWN_DELAY_SECONDS={} SHUTDOWN_GRACE_SECONDS={} \
             HOLD_COALESCING={} HOLD_BATCH_WAIT_MICROS={} HOLD_BATCH_MAX={} \
             HOLD_RATE_LIMIT_PER_SECOND={} STOCK_STREAM_INTERVAL_MS={} STOCK_STREAM_MAX_CLIENTS={} {}",
            self.database.redacted(),
            self.bind_addr,
            self.hold_ttl_seconds,
            self.max_hold_qty,
            if self.webhook_secret.is_some() {
                "***"
            } else {
                "(unset)"
            },
            self.cors_allowed_origins.as_deref().unwrap_or("(unset)"),
            if self.admin_token.is_some() {
                "***"
            } else {
                "(unset)"
            },
            self.logs.redacted(),
            self.auto_migrate,
            self.shutdown_delay_seconds,
            self.shutdown_grace_seconds,
            self.hold_coalescing,
            self.hold_batch_wait_micros,
            self.hold_batch_max,
            self.hold_rate_limit_per_second,
            self.stock_stream_interval_ms,
            self.stock_stream_max_clients,
            self.listener.redacted(),
        )
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["flash-sale-api"]).unwrap();
        let c = cli.config;
        assert_eq!(c.bind_addr.to_string(), "127.0.0.1:8000");
        assert_eq!(c.hold_ttl_seconds, 120);
        assert_eq!(c.max_hold_qty, 10);
        assert_eq!(c.database.database_max_connections, 16);
        assert!(c.auto_migrate);
        assert_eq!(c.stock_stream_interval_ms, 250);
        assert_eq!(c.stock_stream_max_clients, 10_000);
        let l = &c.listener;
        assert_eq!(
            (l.http_header_timeout_seconds, l.http_idle_timeout_seconds),
            (10, 60)
        );
        assert_eq!((l.http_max_connections, l.http2_max_streams), (25_000, 100));
        assert_eq!(l.stream_max_per_client, 8);
        assert_eq!((l.metrics_addr, l.trusted_proxies.is_none()), (None, true));
    }

    #[test]
    fn webhook_secret_must_be_whsec_base64() {
        assert!(parse_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(parse_webhook_secret("secret").is_err());
        assert!(parse_webhook_secret("whsec_not base64!").is_err());
    }

    #[test]
    fn debug_output_never_shows_the_secrets() {
        let cli = Cli::try_parse_from([
            "flash-sale-api",
            "--database-url",
            "mysql://flash:db-password-42@db:3306/flash_sale",
            "--admin-token",
            "admin-token-42",
            "--webhook-secret",
            "whsec_c2VjcmV0LWluLWRlYnVn",
        ])
        .unwrap();
        // The values are there, for the code that needs them...
        assert!(
            cli.config
                .database
                .database_url
                .expose_secret()
                .contains("db-password-42")
        );
        let token = cli.config.admin_token.as_ref().map(|t| t.expose_secret());
        assert_eq!(token, Some("admin-token-42"));
        // ...but no `{:?}` of the configuration (as a log line might print it) shows them.
        for printed in [
            format!("{cli:?}"),
            format!("{:?}", cli.config),
            cli.config.redacted(),
        ] {
            for secret in ["db-password-42", "admin-token-42", "c2VjcmV0LWluLWRlYnVn"] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
        }
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Cli::try_parse_from(["flash-sale-api", "--bind-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("BIND_ADDR"), "{err}");
    }
}
