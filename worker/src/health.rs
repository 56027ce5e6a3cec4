//! The worker's own small HTTP app on `WORKER_ADDR`: liveness, readiness (the database answers)
//! and Prometheus metrics.

use entity::Db;
use metrics_exporter_prometheus::PrometheusHandle;
use poem::{
    Endpoint, EndpointExt, IntoResponse, Response, Route,
    endpoint::{make, make_sync},
    http::StatusCode,
};

/// `/healthz`, `/readyz` and `/metrics`.
pub fn app(db: Db, metrics: Option<PrometheusHandle>) -> impl Endpoint<Output = Response> {
    let ready_db = db.clone();
    Route::new()
        .at("/healthz", make_sync(|_| "ok"))
        .at(
            "/readyz",
            make(move |_| {
                let db = ready_db.clone();
                async move {
                    if db.is_ready().await {
                        "ready".into_response()
                    } else {
                        Response::builder()
                            .status(StatusCode::SERVICE_UNAVAILABLE)
                            .body("the database cannot be reached")
                    }
                }
            }),
        )
        .at(
            "/metrics",
            flash_sale_process::metrics_endpoint(metrics, move || db.record_pool_metrics()),
        )
        .map_to_response()
}
