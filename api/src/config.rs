//! The API's settings: one typed struct, read once at start from flags, the environment and
//! `.env` (see the table in the README, "Configuration").

use std::{net::SocketAddr, path::PathBuf};

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
    /// The most products (`lines`) one hold may cover.
    #[arg(long, env = "MAX_HOLD_LINES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_hold_lines: u32,
    /// How many times a hold may be extended (`POST /api/holds/{id}/extend`).
    #[arg(long, env = "HOLD_MAX_EXTENSIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub hold_max_extensions: u32,
    /// No extension takes a hold past this many seconds after it was made.
    #[arg(long, env = "HOLD_MAX_LIFETIME_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=604_800))]
    pub hold_max_lifetime_seconds: u32,
    /// `whsec_` + base64 of at least 24 bytes: every payment webhook must be signed with it.
    /// Required unless `WEBHOOK_ALLOW_UNSIGNED=true`.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_webhook_secret)]
    pub webhook_secret: Option<WebhookSecret>,
    /// `true` accepts unsigned webhooks when no `WEBHOOK_SECRET` is set: for local development
    /// only (anyone who can reach the API can then pay or cancel any order).
    #[arg(long, env = "WEBHOOK_ALLOW_UNSIGNED", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub webhook_allow_unsigned: bool,
    /// Comma-separated origins (or `*`) whose browsers may call the API.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS")]
    pub cors_allowed_origins: Option<String>,
    /// Bearer token for /api/admin/*, at least 24 characters; when unset those routes answer
    /// 404.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = parse_admin_token)]
    pub admin_token: Option<SecretString>,
    #[command(flatten)]
    pub buyers: BuyerArgs,
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
    /// How often, in milliseconds, this process looks at the queue tickets it streams
    /// (`GET /api/queue/{id}/stream`): one query per queued product, however many listeners.
    #[arg(long, env = "QUEUE_STREAM_INTERVAL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub queue_stream_interval_ms: u64,
    /// Open stock streams this process serves at most; beyond it 503 `unavailable`.
    #[arg(long, env = "STOCK_STREAM_MAX_CLIENTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stock_stream_max_clients: u32,
    #[command(flatten)]
    pub listener: crate::listener::ListenerArgs,
}

/// How buyers are known (see `crate::buyers`).
#[derive(Debug, Clone, Args)]
pub struct BuyerArgs {
    /// `none`: anonymous buyers, who reach their holds and orders with the `client_secret` they
    /// were given; `jwt`: a bearer JWT from the shop's identity provider, the buyer its `sub`.
    #[arg(long, env = "BUYER_AUTH", default_value = "none")]
    pub buyer_auth: BuyerAuthMode,
    /// With `jwt`: an HS256 key, at least 32 bytes.
    #[arg(long, env = "BUYER_JWT_SECRET", hide_env_values = true)]
    pub buyer_jwt_secret: Option<SecretString>,
    /// With `jwt`: a JWKS or PEM file of public keys (RS256, ES256, EdDSA), read again when it
    /// changes.
    #[arg(long, env = "BUYER_JWT_PUBLIC_KEYS")]
    pub buyer_jwt_public_keys: Option<PathBuf>,
    /// With `jwt`: the `iss` a token must carry.
    #[arg(long, env = "BUYER_JWT_ISSUER")]
    pub buyer_jwt_issuer: Option<String>,
    /// With `jwt`: the `aud` a token must carry.
    #[arg(long, env = "BUYER_JWT_AUDIENCE")]
    pub buyer_jwt_audience: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BuyerAuthMode {
    None,
    Jwt,
}

impl BuyerArgs {
    /// The buyers of a serving process: `jwt` with keys that can be used, or `none` with no
    /// token setting left over (a key set for a mode that is off is a mistake worth stopping
    /// for: tokens would not be checked).
    pub fn buyer_auth(&self) -> anyhow::Result<crate::buyers::BuyerAuth> {
        let settings = crate::jwt::JwtSettings {
            secret: self.buyer_jwt_secret.as_ref(),
            public_keys: self.buyer_jwt_public_keys.as_deref(),
            issuer: self.buyer_jwt_issuer.as_deref(),
            audience: self.buyer_jwt_audience.as_deref(),
        };
        match self.buyer_auth {
            BuyerAuthMode::Jwt => {
                let verifier = crate::jwt::JwtVerifier::new(&settings)?;
                Ok(crate::buyers::BuyerAuth::Jwt(verifier))
            }
            BuyerAuthMode::None => {
                let stray = [
                    ("BUYER_JWT_SECRET", settings.secret.is_some()),
                    ("BUYER_JWT_PUBLIC_KEYS", settings.public_keys.is_some()),
                    ("BUYER_JWT_ISSUER", settings.issuer.is_some()),
                    ("BUYER_JWT_AUDIENCE", settings.audience.is_some()),
                ];
                if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
                    anyhow::bail!(
                        "{name} is set but BUYER_AUTH is none: set BUYER_AUTH=jwt to check \
                         buyer tokens, or unset {name}"
                    );
                }
                Ok(crate::buyers::BuyerAuth::Anonymous)
            }
        }
    }
}

/// An admin token: at least 24 characters (empty or shorter stops the API at start).
fn parse_admin_token(s: &str) -> Result<SecretString, String> {
    if s.chars().count() < 24 {
        return Err("must be at least 24 characters (for example `openssl rand -hex 24`)".into());
    }
    Ok(SecretString::from(s.to_owned()))
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
    if key.len() < 24 {
        return Err(
            "the key after whsec_ must be at least 24 bytes (`echo whsec_$(openssl rand -base64 32)`)"
                .into(),
        );
    }
    Ok(WebhookSecret(key))
}

impl Config {
    /// The checks a serving process makes at start, beyond each value's own: no unsigned
    /// webhooks unless asked for. (Buyer token keys are checked by [`BuyerArgs::buyer_auth`].)
    pub fn check_serving(&self) -> anyhow::Result<()> {
        if self.webhook_secret.is_none() && !self.webhook_allow_unsigned {
            anyhow::bail!(
                "WEBHOOK_SECRET is not set: payment webhooks could not be told from forgeries. \
                 Set it to the gateway's Standard Webhooks secret (whsec_...), or, for local \
                 development only, set WEBHOOK_ALLOW_UNSIGNED=true"
            );
        }
        Ok(())
    }

    /// How this process opens its pool.
    pub fn db_config(&self) -> entity::DbConfig {
        self.database.db_config()
    }

    /// The configuration as printed at start-up: secrets masked.
    pub fn redacted(&self) -> String {
        format!(
            "{} BIND_ADDR={} HOLD_TTL_SECONDS={} \
             MAX_HOLD_QTY={} MAX_HOLD_LINES={} HOLD_MAX_EXTENSIONS={} \
             HOLD_MAX_LIFETIME_SECONDS={} WEBHOOK_SECRET={} WEBHOOK_ALLOW_UNSIGNED={} CORS_ALLOWED_ORIGINS={} \
             ADMIN_TOKEN={} BUYER_AUTH={:?} BUYER_JWT_SECRET={} BUYER_JWT_PUBLIC_KEYS={} \
             BUYER_JWT_ISSUER={} BUYER_JWT_AUDIENCE={} {} \
             AUTO_MIGRATE={} SHUTDOWN_DELAY_SECONDS={} SHUTDOWN_GRACE_SECONDS={} \
             HOLD_COALESCING={} HOLD_BATCH_WAIT_MICROS={} HOLD_BATCH_MAX={} \
             HOLD_RATE_LIMIT_PER_SECOND={} STOCK_STREAM_INTERVAL_MS={} STOCK_STREAM_MAX_CLIENTS={} \
             QUEUE_STREAM_INTERVAL_MS={} {}",
            self.database.redacted(),
            self.bind_addr,
            self.hold_ttl_seconds,
            self.max_hold_qty,
            self.max_hold_lines,
            self.hold_max_extensions,
            self.hold_max_lifetime_seconds,
            masked(self.webhook_secret.is_some()),
            self.webhook_allow_unsigned,
            self.cors_allowed_origins.as_deref().unwrap_or("(unset)"),
            masked(self.admin_token.is_some()),
            self.buyers.buyer_auth,
            masked(self.buyers.buyer_jwt_secret.is_some()),
            self.buyers
                .buyer_jwt_public_keys
                .as_deref()
                .map_or("(unset)".into(), |p| p.display().to_string()),
            self.buyers.buyer_jwt_issuer.as_deref().unwrap_or("(unset)"),
            self.buyers
                .buyer_jwt_audience
                .as_deref()
                .unwrap_or("(unset)"),
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
            self.queue_stream_interval_ms,
            self.listener.redacted(),
        )
    }
}

/// A secret setting as the first log line shows it.
fn masked(set: bool) -> &'static str {
    if set { "***" } else { "(unset)" }
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
        assert_eq!(c.max_hold_lines, 10);
        assert_eq!(c.hold_max_extensions, 2);
        assert_eq!(c.hold_max_lifetime_seconds, 600);
        assert_eq!(c.database.database_max_connections, 16);
        assert!(c.auto_migrate);
        assert_eq!(c.stock_stream_interval_ms, 250);
        assert_eq!(c.stock_stream_max_clients, 10_000);
        assert_eq!(c.queue_stream_interval_ms, 500);
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
        // 24 bytes of key, and 23.
        assert!(parse_webhook_secret("whsec_MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u").is_ok());
        assert!(parse_webhook_secret("whsec_MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG0=").is_err());
        assert!(parse_webhook_secret("whsec_").is_err());
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
            "admin-token-42-admin-token-42",
            "--webhook-secret",
            "whsec_c2VjcmV0LWluLWRlYnVnLXNlY3JldC1pbi1kZWJ1Zw==",
            "--buyer-jwt-secret",
            "jwt-secret-42-jwt-secret-42-jwt-secret-42",
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
        assert_eq!(token, Some("admin-token-42-admin-token-42"));
        // ...but no `{:?}` of the configuration (as a log line might print it) shows them.
        for printed in [
            format!("{cli:?}"),
            format!("{:?}", cli.config),
            cli.config.redacted(),
        ] {
            for secret in [
                "db-password-42",
                "admin-token-42",
                "c2VjcmV0LWluLWRlYnVn",
                "jwt-secret-42",
            ] {
                assert!(!printed.contains(secret), "{secret} in {printed}");
            }
        }
    }

    #[test]
    fn admin_tokens_are_long_or_refused() {
        for short in ["", "t", "twenty-three-characters"] {
            let err = Cli::try_parse_from(["flash-sale-api", "--admin-token", short]).unwrap_err();
            assert!(err.to_string().contains("ADMIN_TOKEN"), "{err}");
        }
        assert!(
            Cli::try_parse_from([
                "flash-sale-api",
                "--admin-token",
                "twenty-four-characters!!"
            ])
            .is_ok()
        );
    }

    #[test]
    fn serving_needs_a_webhook_secret_or_the_explicit_opt_out() {
        let parse = |args: &[&str]| {
            let mut all = vec!["flash-sale-api"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().config
        };
        let err = parse(&[]).check_serving().unwrap_err();
        assert!(err.to_string().contains("WEBHOOK_SECRET"), "{err}");
        assert!(
            parse(&["--webhook-allow-unsigned", "true"])
                .check_serving()
                .is_ok()
        );
        assert!(
            parse(&["--webhook-secret", "whsec_MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u"])
                .check_serving()
                .is_ok()
        );
    }

    #[test]
    fn buyer_token_settings_must_fit_the_mode() {
        let parse = |args: &[&str]| {
            let mut all = vec!["flash-sale-api"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().config.buyers
        };
        let no_keys = parse(&["--buyer-auth", "jwt"]).buyer_auth().err().unwrap();
        assert!(
            no_keys.to_string().contains("BUYER_JWT_SECRET"),
            "{no_keys}"
        );
        let short = parse(&["--buyer-auth", "jwt", "--buyer-jwt-secret", "short"])
            .buyer_auth()
            .err()
            .unwrap();
        assert!(short.to_string().contains("BUYER_JWT_SECRET"), "{short}");
        let stray = parse(&["--buyer-jwt-secret", "x".repeat(40).as_str()])
            .buyer_auth()
            .err()
            .unwrap();
        assert!(stray.to_string().contains("BUYER_AUTH"), "{stray}");
        let missing = parse(&[
            "--buyer-auth",
            "jwt",
            "--buyer-jwt-public-keys",
            "/no/such/file",
        ])
        .buyer_auth()
        .err()
        .unwrap();
        assert!(
            missing.to_string().contains("BUYER_JWT_PUBLIC_KEYS"),
            "{missing}"
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Cli::try_parse_from(["flash-sale-api", "--bind-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("BIND_ADDR"), "{err}");
    }
}
