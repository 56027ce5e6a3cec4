//! The listeners of both binaries: binding one (with the address `:0` chose), and the
//! `/metrics` endpoint each serves.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use poem::{
    Endpoint, IntoResponse, Response,
    endpoint::make_sync,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};

/// A bound listener and the address it really has (`:0` picks a free port), which the caller
/// logs as `listening` once it serves. `setting` names the variable the address came from, for
/// the error message.
pub async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<(TcpAcceptor, String)> {
    let acceptor = TcpListener::bind(addr)
        .into_acceptor()
        .await
        .with_context(|| format!("{setting} {addr}: cannot listen"))?;
    let bound = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .map(|a| a.to_string())
        .unwrap_or_default();
    Ok((acceptor, bound))
}

/// `/metrics`: the Prometheus text of `handle` (empty without one), rendered after `refresh`
/// has updated the gauges that are sampled rather than counted (the database pool's), and
/// `log_lines_dropped_total` has been brought up to the log writers' count.
pub fn metrics_endpoint(
    handle: Option<PrometheusHandle>,
    refresh: impl Fn() + Send + Sync + 'static,
) -> impl Endpoint<Output = Response> {
    make_sync(move |_| {
        crate::telemetry::record_log_drops();
        refresh();
        handle
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
            .with_content_type("text/plain; version=0.0.4")
            .into_response()
    })
}
