//! The listener's settings (flattened into [`crate::Config`]) and the `/metrics` listener of
//! `METRICS_ADDR`. What they guard against is in [`crate::connections`] (deadlines and the
//! connection limit) and [`crate::client_addr`] (who a client is).

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use poem::{Endpoint, Route, Server};

use crate::{client_addr::TrustedProxies, connections::Limits};

#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Seconds a request's head and body may take to arrive, from its first byte; then the
    /// connection is closed.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub http_header_timeout_seconds: u32,
    /// Seconds a connection with no request in flight may stay silent before it is closed.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub http_idle_timeout_seconds: u32,
    /// Open client connections this process serves at most; beyond it new ones are closed at
    /// once.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 25_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub http_max_connections: u32,
    /// Concurrent streams on one HTTP/2 connection (more are refused with `REFUSED_STREAM`).
    #[arg(long, env = "HTTP2_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub http2_max_streams: u32,
    /// Open event streams (`GET /api/products/{id}/stream`) per client; beyond it 429
    /// `rate_limited`.
    #[arg(long, env = "STREAM_MAX_PER_CLIENT", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub stream_max_per_client: u32,
    /// When set, `/metrics` is served on this address alone, not on `BIND_ADDR`.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Comma-separated addresses or CIDR networks of the reverse proxies in front of the API:
    /// only from them is `X-Forwarded-For` believed.
    #[arg(long, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<TrustedProxies>,
}

impl ListenerArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(u64::from(self.http_header_timeout_seconds)),
            idle_timeout: Duration::from_secs(u64::from(self.http_idle_timeout_seconds)),
            max_connections: usize::try_from(self.http_max_connections).unwrap_or(usize::MAX),
        }
    }

    /// The settings as printed at start-up.
    pub fn redacted(&self) -> String {
        format!(
            "HTTP_HEADER_TIMEOUT_SECONDS={} HTTP_IDLE_TIMEOUT_SECONDS={} HTTP_MAX_CONNECTIONS={} \
             HTTP2_MAX_STREAMS={} STREAM_MAX_PER_CLIENT={} METRICS_ADDR={} TRUSTED_PROXIES={}",
            self.http_header_timeout_seconds,
            self.http_idle_timeout_seconds,
            self.http_max_connections,
            self.http2_max_streams,
            self.stream_max_per_client,
            self.metrics_addr
                .map_or_else(|| "(unset)".to_owned(), |a| a.to_string()),
            self.trusted_proxies
                .as_ref()
                .map_or_else(|| "(unset)".to_owned(), ToString::to_string),
        )
    }
}

/// Binds `METRICS_ADDR` and serves `metrics` there as `/metrics`, alone, until the returned
/// task is aborted. Logs `metrics listening` with the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: impl Endpoint + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (acceptor, bound) = flash_sale_process::bind(addr, "METRICS_ADDR").await?;
    tracing::info!(addr = %bound, "metrics listening");
    let app = Route::new().at("/metrics", metrics);
    Ok(tokio::spawn(async move {
        if let Err(error) = Server::new_with_acceptor(acceptor).run(app).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    }))
}
