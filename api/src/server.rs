//! Wiring: the route tree and its middleware, migrations, and serving.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context;
use entity::{Db, DbConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use migration::{Migrator, MigratorTrait};
use poem::{
    Endpoint, EndpointExt, IntoResponse, PathPattern, Request, Response, Route, Server,
    endpoint::make_sync,
    http::{Method, header},
    middleware::CatchPanic,
    web::Html,
};
use poem_openapi::{ExtraHeader, LicenseObject, OpenApi, OpenApiService, ServerObject};

use crate::{
    AppState, Config,
    error::{ApiError, ProblemCode, problem_response},
    observe, routes,
};

/// Largest request body accepted (413 `payload_too_large` above it).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The generated OpenAPI document's service: every operation, described from the code.
pub fn openapi_service(state: Arc<AppState>) -> OpenApiService<impl OpenApi, ()> {
    OpenApiService::new(
        routes::api(state),
        "Flash Sale API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(crate::document::DESCRIPTION)
    .license(LicenseObject::new("MIT").url("https://opensource.org/licenses/MIT"))
    .server(ServerObject::new("/").description("the server that serves this document"))
    .server(
        ServerObject::new("http://127.0.0.1:8000")
            .description("a local run (`deploy/local.sh`)"),
    )
    .extra_response_header::<String, _>(ExtraHeader::new(observe::REQUEST_ID_NAME).description(
        "The request's id: the client's own `X-Request-Id` when it sent a sane one (1 to 128 \
         visible ASCII characters), a new UUID otherwise. Every log line of the request carries it.",
    ))
}

/// The OpenAPI document as served (see [`crate::document`]).
pub fn document(config: &Config, state: Arc<AppState>) -> String {
    let raw = openapi_service(state).spec();
    let limits = crate::document::HoldLimits {
        max_hold_qty: config.max_hold_qty,
        max_hold_lines: config.max_hold_lines,
    };
    crate::document::refine(&raw, limits, config.buyers.buyer_auth)
}

/// The OpenAPI document as JSON, for `flash-sale-api openapi` and the committed copy. The
/// operations hold a state they never touch while describing themselves; an in-memory SQLite
/// pool stands in for the database.
pub async fn openapi_json(config: &Config) -> anyhow::Result<String> {
    let db = Db::connect(&DbConfig::new("sqlite::memory:", 1)).await?;
    let state = AppState::new(config, db, crate::buyers::BuyerAuth::Anonymous);
    Ok(document(config, Arc::new(state)))
}

/// The whole HTTP application: the OpenAPI operations, `/openapi.json`, `/docs`, `/metrics`,
/// and the middleware that keeps every error answer problem+json.
pub fn build_app(
    config: &Config,
    state: Arc<AppState>,
    metrics: Option<PrometheusHandle>,
) -> impl Endpoint<Output = Response> + use<> {
    let (routes, templates) = routes(config, state.clone(), metrics);
    with_middleware(routes, config, state, templates)
}

/// Every route, and the document's path templates (for metrics labels and error answers).
pub fn routes(
    config: &Config,
    state: Arc<AppState>,
    metrics: Option<PrometheusHandle>,
) -> (Route, Arc<crate::observe::RouteTemplates>) {
    let service = openapi_service(state.clone());
    let document = document(config, state.clone());
    let templates = Arc::new(crate::observe::RouteTemplates::from_spec(
        &serde_json::from_str(&document).unwrap_or_default(),
    ));
    // Swagger UI embeds the document it shows: the refined one, the same as /openapi.json.
    let docs_html = service
        .swagger_ui_html()
        .replacen(&service.spec(), &document, 1);
    let docs = make_sync(move |_| Html(docs_html.clone()));
    let spec = make_sync(move |_| document.clone().with_content_type(crate::types::JSON));
    let routes = Route::new()
        .nest("/", service)
        .nest("/docs", docs)
        .at("/openapi.json", spec);
    // With METRICS_ADDR, /metrics is served on that listener alone (see `run`).
    let routes = match config.listener.metrics_addr {
        Some(_) => routes,
        None => routes.at("/metrics", metrics_endpoint(metrics, state)),
    };
    (routes, templates)
}

/// `/metrics`, the database pool's gauges refreshed on each rendering.
fn metrics_endpoint(
    metrics: Option<PrometheusHandle>,
    state: Arc<AppState>,
) -> impl Endpoint<Output = Response> {
    flash_sale_process::metrics_endpoint(metrics, move || state.db.record_pool_metrics())
}

/// The middleware every request goes through, around `routes`: the admin switch, the body
/// limit, the panic safety net, problem+json for every error, CORS (when configured), then
/// the request id, metrics and `Retry-After` on 429s and 503s (`observe`), and outermost the
/// request's arrival on its connection (its body read first: see [`crate::connections`]) and
/// the app state. (Idempotency keys and the hold rate limit belong to their operations: see
/// their `transform`.)
pub fn with_middleware(
    routes: Route,
    config: &Config,
    state: Arc<AppState>,
    templates: Arc<crate::observe::RouteTemplates>,
) -> impl Endpoint<Output = Response> + use<> {
    let admin_enabled = state.admin_token.is_some();
    let inner = routes
        .around(move |ep, req| async move {
            // With no ADMIN_TOKEN the admin routes do not exist at all.
            if !admin_enabled && req.uri().path().starts_with("/api/admin") {
                return Ok(problem_response(ProblemCode::NotFound, "no such route"));
            }
            limit_body(ep, req).await
        })
        // A panic answers 500 instead of dropping the connection. Inside the request's span
        // (see `observe`), so the log line carries the request id.
        .with(CatchPanic::new().with_handler(panicked))
        .catch_all_error({
            let templates = templates.clone();
            move |err: poem::Error| {
                let templates = templates.clone();
                async move { error_response(err, &templates) }
            }
        });
    // Outside the error catcher: every answer, errors included, gets its CORS headers. Only
    // when CORS is configured: each layer costs every request a boxed future and a move of
    // the request.
    let inner = match config.cors_allowed_origins.as_deref() {
        Some(origins) => {
            let policy = crate::cors::CorsPolicy::new(origins);
            inner
                .around(move |ep, req| crate::cors::cors(ep, req, policy.clone()))
                .boxed()
        }
        None => inner.boxed(),
    };
    let connections = state.connections.clone();
    inner
        .around(move |ep, mut req| {
            let (templates, connections) = (templates.clone(), connections.clone());
            async move {
                read_body(&mut req).await;
                let in_flight = connections.arrived(&mut req);
                let resp = crate::observe::observe(ep, req, templates).await?;
                Ok(match in_flight {
                    Some(in_flight) => in_flight.until_sent(resp),
                    None => resp,
                })
            }
        })
        .data(state)
}

/// The answer to a request whose handler panicked: 500 `internal`, the message logged.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    tracing::error!(panic = message, "handler panicked");
    problem_response(ProblemCode::Internal, "internal error; it has been logged")
}

/// Any error raised below this point as a problem+json answer (our own error answers, already
/// problem+json, pass through untouched), keeping the matched route for the metrics. A
/// refused request that poem-openapi could not parse names the field or parameter to blame,
/// by its name in the document (poem-openapi calls path parameters `param0`, `param1`, ...).
pub fn error_response(err: poem::Error, templates: &crate::observe::RouteTemplates) -> Response {
    let pattern = err.data::<PathPattern>().cloned();
    let mut resp = if err.is_from_response() {
        err.into_response()
    } else {
        if err.status().is_server_error() {
            tracing::error!(error = %err, "unhandled error");
        }
        let param = |index: usize| {
            pattern
                .as_ref()
                .and_then(|p| templates.param_name(&p.0, index))
        };
        ApiError::from_request_error(err, param).into_response()
    };
    if let Some(pattern) = pattern {
        resp.set_data(pattern);
    }
    resp
}

/// Why a request's body was not read (see [`read_body`]), for [`limit_body`] to answer.
#[derive(Clone)]
enum BodyRefused {
    TooLarge,
    Unreadable(String),
}

fn announced_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Only the operations that take a body read one (and document a 413).
fn takes_body(req: &Request) -> bool {
    matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
}

/// Reads the body of a request that takes one, up to [`MAX_BODY_BYTES`], before the request
/// counts as arrived: it must come within the connection's header deadline like the head, or a
/// client could trickle its body instead. What cannot be read is left for [`limit_body`] to
/// answer, inside the layers that make every answer problem+json (and give it CORS headers).
async fn read_body(req: &mut Request) {
    // A body announced too large is refused unread.
    if !takes_body(req) || announced_length(req).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return;
    }
    // Boxed: the read's future is large, and only a request with a body needs it.
    match Box::pin(req.take_body().into_bytes_limit(MAX_BODY_BYTES)).await {
        Ok(bytes) => req.set_body(bytes),
        Err(poem::error::ReadBodyError::PayloadTooLarge) => req.set_data(BodyRefused::TooLarge),
        Err(e) => req.set_data(BodyRefused::Unreadable(e.to_string())),
    }
}

/// Refuses bodies over [`MAX_BODY_BYTES`] with 413, whether announced by `Content-Length` or
/// streamed (chunked), and bodies that could not be read with 400, before any handler runs.
async fn limit_body<E: Endpoint>(ep: Arc<E>, req: Request) -> poem::Result<Response> {
    let too_large = || {
        let mut resp = problem_response(
            ProblemCode::PayloadTooLarge,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        );
        // The rest of the body is never read, so this connection cannot carry another
        // request: say so, or a client may reuse it and see its next request fail.
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        resp
    };
    if takes_body(&req) && announced_length(&req).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Ok(too_large());
    }
    match req.data::<BodyRefused>() {
        Some(BodyRefused::TooLarge) => return Ok(too_large()),
        Some(BodyRefused::Unreadable(why)) => {
            return Err(poem::Error::from_string(
                why.clone(),
                poem::http::StatusCode::BAD_REQUEST,
            ));
        }
        None => {}
    }
    // Boxed, and called from one place: see `boxed_call`.
    crate::middleware::boxed_call(&*ep, req).await
}

/// Runs pending migrations over a dedicated single connection. Several API processes may start
/// at once, on one server or on several Galera nodes: on MySQL/MariaDB a lease row that the
/// cluster replicates ([`migration::with_lease`]) lets one migrate while the others wait, and
/// then they find the migrations applied; a failed run is retried.
pub async fn migrate(config: &DbConfig) -> anyhow::Result<Db> {
    let db = Db::connect(&DbConfig {
        max_connections: 1,
        ..config.clone()
    })
    .await
    .context("DATABASE_URL: cannot connect")?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match migration::with_lease(db.conn(), async || Migrator::up(db.conn(), None).await).await {
            Ok(()) => return Ok(db),
            Err(e) if attempt < 3 => {
                tracing::warn!(error = %e, attempt, "migration failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("running migrations"),
        }
    }
}

/// Checks the settings a serving process needs, connects, migrates unless told not to, and
/// serves until Ctrl-C or SIGTERM.
pub async fn run(config: Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<()> {
    config.check_serving()?;
    let buyer_auth = config.buyers.buyer_auth()?;
    if let crate::buyers::BuyerAuth::Jwt(verifier) = &buyer_auth {
        tracing::info!(algorithms = %crate::jwt::describe(verifier), "buyers are known by their tokens");
        verifier.watch();
    }
    let unsigned = config.webhook_secret.is_none();
    if unsigned {
        tracing::warn!(
            "WEBHOOK_ALLOW_UNSIGNED=true and no WEBHOOK_SECRET: unsigned payment webhooks are \
             accepted, so anyone who can reach this API can pay or cancel any order (local \
             development only)"
        );
    }
    metrics::gauge!("webhook_unsigned_allowed").set(if unsigned { 1.0 } else { 0.0 });
    let db = Db::connect(&config.db_config())
        .await
        .context("DATABASE_URL: cannot connect")?;
    if config.auto_migrate {
        migrate(&config.db_config()).await?;
    }
    flash_sale_process::watch_database(db.clone());
    // Shown at 0 from the start, so an alert on it has a series to watch.
    metrics::counter!("orders_refund_required_total").increment(0);
    // Each webhook outcome too, so `increase()` sees the first one of each.
    let outcomes = entity::operations::payments::WEBHOOK_OUTCOMES;
    for outcome in outcomes.into_iter().chain(["bad_signature"]) {
        metrics::counter!("webhooks_total", "outcome" => outcome).increment(0);
    }
    let state = Arc::new(AppState::new(&config, db.clone(), buyer_auth));
    let metrics_listener = match config.listener.metrics_addr {
        Some(addr) => {
            let endpoint = metrics_endpoint(metrics.clone(), state.clone());
            Some(crate::listener::serve_metrics(addr, endpoint).await?)
        }
        None => None,
    };
    let app = build_app(&config, state.clone(), metrics);

    let (acceptor, addr) = flash_sale_process::bind(config.bind_addr, "BIND_ADDR").await?;
    let acceptor = crate::connections::TrackingAcceptor::new(acceptor, state.connections.clone());
    tracing::info!(addr = %addr, "listening");
    let delay = Duration::from_secs(u64::from(config.shutdown_delay_seconds));
    let drain = async move {
        flash_sale_process::shutdown_signal().await;
        state.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            delay_seconds = delay.as_secs(),
            "draining: /readyz answers 503"
        );
        tokio::time::sleep(delay).await;
        tracing::info!("closing the listener, finishing in-flight requests");
        // Open stock streams never finish by themselves: end them now, or shutdown would wait
        // the whole grace period for them. Browsers reconnect, to a process still listening.
        state.stock_hub.close();
        state.ticket_hub.close();
    };
    let grace = Duration::from_secs(u64::from(config.shutdown_grace_seconds));
    Server::new_with_acceptor(acceptor)
        .http2_max_concurrent_streams(config.listener.http2_max_streams)
        .run_with_graceful_shutdown(app, drain, Some(grace))
        .await
        .context("serving")?;
    if let Some(task) = metrics_listener {
        task.abort();
    }
    db.conn().clone().close().await.ok();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use poem::{
        Body,
        http::{HeaderMap, StatusCode},
    };
    use serde_json::Value;

    use super::*;

    /// The production configuration's defaults, admin routes on, over an in-memory SQLite pool
    /// that these tests never reach.
    async fn app_parts() -> (Config, Arc<AppState>) {
        let cli = crate::config::Cli::try_parse_from([
            "flash-sale-api",
            "--admin-token",
            "test-admin-token-of-24-chars",
        ])
        .expect("defaults parse");
        let db = Db::connect(&DbConfig::new("sqlite::memory:", 1))
            .await
            .expect("in-memory SQLite");
        let state = AppState::new(&cli.config, db, crate::buyers::BuyerAuth::Anonymous);
        let state = Arc::new(state);
        (cli.config, state)
    }

    async fn call(
        app: &impl Endpoint<Output = Response>,
        req: Request,
    ) -> (StatusCode, HeaderMap, Value) {
        let resp = app.call(req).await.expect("answers are never errors");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.into_body().into_string().await.expect("a body");
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_json_and_the_next_request_is_served() {
        let (config, state) = app_parts().await;
        let (routes, templates) = routes(&config, state.clone(), None);
        let routes = routes.at(
            "/test/panic",
            make_sync(|_| -> &'static str { panic!("deliberate test panic") }),
        );
        let app = with_middleware(routes, &config, state, templates);

        // The log lines, JSON with the current span, as the binaries write them.
        #[derive(Clone, Default)]
        struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
                lines.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        // A current-thread runtime: the subscriber covers the whole request.
        let _logs = tracing::subscriber::set_default(subscriber);

        let req = Request::builder()
            .uri_str("/test/panic")
            .header("x-request-id", "panic-req-1")
            .finish();
        let (status, headers, body) = call(&app, req).await;
        let logged = String::from_utf8_lossy(&lines.0.lock().unwrap_or_else(|p| p.into_inner()))
            .into_owned();
        let line = logged
            .lines()
            .find(|l| l.contains("handler panicked"))
            .unwrap_or_else(|| panic!("no panic logged in {logged}"));
        assert!(line.contains("deliberate test panic"), "{line}");
        assert!(line.contains("panic-req-1"), "{line}");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some(crate::error::PROBLEM_JSON)
        );
        assert_eq!(
            headers.get("x-request-id").and_then(|v| v.to_str().ok()),
            Some("panic-req-1")
        );
        assert_eq!(body["code"], "internal", "{body}");
        assert_eq!(body["status"], 500, "{body}");

        let (status, _, _) = call(&app, Request::builder().uri_str("/healthz").finish()).await;
        assert_eq!(status, StatusCode::OK, "served after the panic");
    }

    /// Keys are honoured by exactly the operations whose types say so — the handlers that
    /// document the `Idempotency-Key` header and the problem sets marked `keyed` — at whatever
    /// path the document gives them: renaming a route cannot turn keys off.
    #[tokio::test]
    async fn keys_are_checked_by_exactly_the_keyed_operations_wherever_they_live() {
        let (config, state) = app_parts().await;
        let spec: Value =
            serde_json::from_str(&document(&config, state.clone())).expect("the document");
        let app = build_app(&config, state, None);
        let mut documented = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let params = op["parameters"].as_array().into_iter().flatten();
                if params.clone().any(|p| p["name"] == "Idempotency-Key") {
                    let id = op["operationId"].as_str().unwrap_or_default().to_owned();
                    documented.push((id, method.to_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let ids: Vec<&str> = documented.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["createHold", "createOrder", "joinQueue"]);
        // A join is idempotent by buyer and product: its key only gives a retry the ticket's
        // secret again, and is parsed by the same rules.
        let mut keyed = crate::routes::keyed_operations();
        keyed.push("joinQueue");
        keyed.sort_unstable();
        assert_eq!(keyed, ids);

        // A key the header's schema allows (1 to 255 characters) but the layer refuses: only the
        // layer can answer this, before the body is even parsed.
        for (id, method, path) in &documented {
            let path = path.replace("{id}", "1");
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).expect("a method"))
                .uri_str(&path)
                .header("idempotency-key", "tab\there")
                .content_type("application/json")
                .body(Body::from_string("{}".into()));
            let (status, _, body) = call(&app, req).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{id}: {body}");
            assert_eq!(
                body["errors"][0]["field"], "Idempotency-Key",
                "{id}: {body}"
            );
            assert_eq!(
                body["errors"][0]["message"],
                "must be 1 to 255 printable ASCII characters, bare or in double quotes",
                "{id}: {body}"
            );
        }
    }
}
