//! What every handler and middleware needs, built once at start from the configuration.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use entity::{
    Db,
    batching::coalesce::{HoldDesk, KeyLookups, ProductReads},
    batching::queue::{JoinDesk, TicketReads},
    operations::holds::ExtensionRules,
};

use crate::Config;

/// What every handler needs, built once at start.
pub struct AppState {
    pub db: Db,
    /// Where hold requests are served: coalesced per product unless `HOLD_COALESCING=false`.
    pub holds: HoldDesk,
    /// `MAX_HOLD_LINES`.
    pub max_hold_lines: usize,
    /// `HOLD_TTL_SECONDS`, `HOLD_MAX_EXTENSIONS`, `HOLD_MAX_LIFETIME_SECONDS`.
    pub extensions: ExtensionRules,
    /// Single-flight product reads.
    pub product_reads: ProductReads,
    /// Where queue joins are served: coalesced per product.
    pub joins: JoinDesk,
    /// Concurrent ticket reads, one statement at a time.
    pub ticket_reads: TicketReads,
    /// Live tickets: one look per queued product per interval.
    pub ticket_hub: crate::ticket_stream::TicketHub,
    pub hold_ttl: chrono::Duration,
    pub max_hold_qty: u32,
    pub admin_token: Option<String>,
    pub webhook_secret: Option<crate::config::WebhookSecret>,
    /// How buyers are known (`BUYER_AUTH`).
    pub buyer_auth: crate::buyers::BuyerAuth,
    /// Set on SIGTERM/Ctrl-C: `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// The open connections: which clients are still connected, and the listener's limits.
    pub connections: Arc<crate::connections::Connections>,
    /// Whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`).
    pub trusted_proxies: crate::client_addr::TrustedProxies,
    /// Open event streams per client (`STREAM_MAX_PER_CLIENT`).
    pub client_streams: Arc<crate::stream::ClientStreams>,
    /// Live stock streams: one check per streamed product per interval.
    pub stock_hub: crate::stream::StockHub,
    /// Idempotency-key look-ups, batched (see [`crate::idempotency`]).
    pub key_lookups: KeyLookups,
    /// Idempotency keys whose requests are running in this process.
    pub in_flight: crate::idempotency::InFlight,
    /// `createHold`'s per-client limit; `None` when `HOLD_RATE_LIMIT_PER_SECOND` is 0.
    pub hold_rate_limit: Option<Arc<crate::rate_limit::HoldRateLimit>>,
}

impl AppState {
    pub fn new(config: &Config, db: Db, buyer_auth: crate::buyers::BuyerAuth) -> Self {
        let hold_ttl = chrono::Duration::seconds(i64::from(config.hold_ttl_seconds));
        Self {
            max_hold_lines: usize::try_from(config.max_hold_lines).unwrap_or(10),
            extensions: ExtensionRules {
                ttl: hold_ttl,
                max_extensions: i32::try_from(config.hold_max_extensions).unwrap_or(i32::MAX),
                max_lifetime: chrono::Duration::seconds(i64::from(
                    config.hold_max_lifetime_seconds,
                )),
            },
            holds: if config.hold_coalescing {
                HoldDesk::coalesced(
                    db.clone(),
                    hold_ttl,
                    Duration::from_micros(config.hold_batch_wait_micros),
                    usize::try_from(config.hold_batch_max).unwrap_or(256),
                )
            } else {
                HoldDesk::one_by_one(db.clone(), hold_ttl)
            },
            product_reads: ProductReads::new(db.clone()),
            // Joins gather company as hold batches do.
            joins: JoinDesk::new(
                db.clone(),
                Duration::from_micros(config.hold_batch_wait_micros),
                usize::try_from(config.hold_batch_max).unwrap_or(256),
            ),
            ticket_reads: TicketReads::new(db.clone()),
            ticket_hub: crate::ticket_stream::TicketHub::new(
                db.clone(),
                Duration::from_millis(config.queue_stream_interval_ms),
            ),
            // Key look-ups gather company for as long as hold batches do.
            key_lookups: KeyLookups::new(
                db.clone(),
                Duration::from_micros(config.hold_batch_wait_micros),
            ),
            in_flight: crate::idempotency::InFlight::default(),
            hold_rate_limit: crate::rate_limit::HoldRateLimit::new(
                config.hold_rate_limit_per_second,
            ),
            stock_hub: crate::stream::StockHub::new(
                db.clone(),
                Duration::from_millis(config.stock_stream_interval_ms),
                usize::try_from(config.stock_stream_max_clients).unwrap_or(usize::MAX),
            ),
            db,
            hold_ttl,
            max_hold_qty: config.max_hold_qty,
            admin_token: config
                .admin_token
                .as_ref()
                .map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned()),
            connections: Arc::new(crate::connections::Connections::new(
                config.listener.limits(),
            )),
            trusted_proxies: config.listener.trusted_proxies.clone().unwrap_or_default(),
            client_streams: crate::stream::ClientStreams::new(
                config.listener.stream_max_per_client,
            ),
            webhook_secret: config.webhook_secret.clone(),
            buyer_auth,
            draining: AtomicBool::new(false),
        }
    }
}
