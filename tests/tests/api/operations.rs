//! What operators and frontend teams rely on: request ids, Prometheus metrics, graceful
//! shutdown, `--help`, the committed OpenAPI document, and Swagger UI in a real browser.

use std::{path::PathBuf, process::Command, time::Duration};

use flash_sale_tests::{
    AppOptions, Backend, TestApp, binary, eventually, into_response, on_both_databases,
};
use serde_json::json;

on_both_databases!(
    every_request_has_an_id_that_reaches_its_log_lines,
    metrics_count_requests_by_route_template_holds_webhooks_and_the_pool,
    sigterm_drains_readiness_then_finishes_in_flight_requests
);

async fn every_request_has_an_id_that_reaches_its_log_lines(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(5).await;
    let r = app
        .http
        .post(format!("{}/api/holds", app.address))
        .header("x-request-id", "checkout-42")
        .json(&json!({"product_id": product, "qty": 1}))
        .send()
        .await
        .expect("hold");
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["x-request-id"],
        "checkout-42",
        "the client's id comes back"
    );
    let created = app.server.metric_eventually("hold.created", 1).await;
    assert_eq!(
        created[0]["span"]["request_id"], "checkout-42",
        "{}",
        created[0]
    );

    let r = app
        .http
        .get(format!("{}/api/products/{product}", app.address))
        .send()
        .await
        .expect("get");
    let generated = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(
        generated.len(),
        36,
        "a UUID when the client sends none: {generated}"
    );
    let junk = app
        .http
        .get(format!("{}/healthz", app.address))
        .header("x-request-id", "has spaces in it")
        .send()
        .await
        .expect("healthz");
    assert_ne!(junk.headers()["x-request-id"], "has spaces in it");
}

async fn metrics_count_requests_by_route_template_holds_webhooks_and_the_pool(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(1).await;
    let hold = app.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    assert_eq!(app.hold(product, 1).await.code(), "insufficient_stock");
    assert_eq!(app.hold(987_654, 1).await.code(), "product_not_found");
    app.get(&format!("/api/holds/{hold}")).await;
    app.get("/no/such/route").await;
    let made_up = reqwest::Method::from_bytes(b"FROBNICATE").expect("a method token");
    assert_eq!(app.request(made_up, "/api/holds", None).await.status, 405);
    let order = app.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    let e = json!({"idempotency_key": "m-1", "order_id": order, "status": "success"});
    app.webhook(e.clone()).await;
    app.webhook(e).await;

    let text = app.metrics_text().await;
    for needle in [
        r#"http_requests_total{method="POST",route="/api/holds",status="201"} 1"#,
        r#"http_requests_total{method="POST",route="/api/holds",status="409"} 1"#,
        r#"http_requests_total{method="GET",route="/api/holds/{id}",status="200"} 1"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        // A method a client made up is labelled `other`: labels stay bounded.
        r#"http_requests_total{method="other",route="/api/holds",status="405"} 1"#,
        r#"http_request_duration_seconds_bucket{method="POST",route="/api/holds",status="201",le="0.005"}"#,
        &format!(r#"holds_created_total{{product_id="{product}"}} 1"#),
        &format!(r#"holds_rejected_total{{reason="insufficient_stock",product_id="{product}"}} 1"#),
        // A product that does not exist is no label: ids a client makes up stay out.
        r#"holds_rejected_total{reason="product_not_found"} 1"#,
        &format!(r#"order_status_changes_total{{status="pending",product_id="{product}"}} 1"#),
        &format!(r#"order_status_changes_total{{status="paid",product_id="{product}"}} 1"#),
        r#"webhooks_total{outcome="processed"} 1"#,
        r#"webhooks_total{outcome="duplicate"} 1"#,
        r#"db_pool_connections{state="idle"}"#,
        "db_pool_max_connections 8",
        // At 0 from the start, so that an alert has a series to watch.
        "log_lines_dropped_total 0",
        "orders_refund_required_total 0",
        "database_up 1",
        "# HELP http_requests_total",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(
        !text.contains(&format!("/api/holds/{hold}\"")),
        "raw paths never become labels"
    );
    assert!(
        !text.contains("987654"),
        "made-up product ids never become labels"
    );
    assert!(
        !text.contains("FROBNICATE"),
        "made-up methods never become labels"
    );
}

async fn sigterm_drains_readiness_then_finishes_in_flight_requests(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            extra_env: vec![
                ("SHUTDOWN_DELAY_SECONDS", "1".into()),
                ("SHUTDOWN_GRACE_SECONDS", "10".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(5).await;
    // Hold the product (or the SQLite write lock) so the next hold stays in flight.
    let blocker = app.block_product(product).await;
    let client = app.client.clone();
    let in_flight = tokio::spawn(async move {
        let r = client
            .http
            .post(format!("{}/api/holds", client.address))
            .header("x-request-id", "in-flight-at-sigterm")
            .json(&json!({"product_id": product, "qty": 1}))
            .send()
            .await
            .expect("hold");
        into_response(r).await
    });
    app.until_waiting("holds", 1).await;

    let kill = Command::new("kill")
        .args(["-TERM", &app.server.pid().to_string()])
        .status();
    assert!(kill.expect("kill").success());
    // For the 1 s drain delay the listener still answers: /readyz turns 503 at the signal.
    let client = &app.client;
    let ready = eventually(
        "/readyz answers 503 while draining",
        Duration::from_secs(1),
        || async move {
            let ready = client.get("/readyz").await;
            (ready.status == 503).then_some(ready)
        },
    )
    .await;
    assert_eq!(ready.code(), "unavailable", "draining: {}", ready.body);
    blocker.release().await;

    let r = in_flight.await.expect("task");
    assert_eq!(r.status, 201, "the in-flight request finished: {}", r.body);
    let mut server = app.server;
    assert!(
        server.wait(Duration::from_secs(15)),
        "clean exit (status 0):\n{}",
        server.output()
    );
    assert!(
        app.client
            .http
            .get(format!("{}/healthz", app.client.address))
            .send()
            .await
            .is_err(),
        "listener closed"
    );
}

#[test]
fn help_lists_every_setting_with_its_default() {
    let api = Command::new(binary("flash-sale-api"))
        .arg("--help")
        .output()
        .expect("api --help");
    let text = String::from_utf8_lossy(&api.stdout);
    for (var, default) in [
        ("DATABASE_URL", Some("sqlite://flash_sale.db?mode=rwc")),
        ("DATABASE_MAX_CONNECTIONS", Some("16")),
        ("BIND_ADDR", Some("127.0.0.1:8000")),
        ("HOLD_TTL_SECONDS", Some("120")),
        ("MAX_HOLD_QTY", Some("10")),
        ("WEBHOOK_SECRET", None),
        ("CORS_ALLOWED_ORIGINS", None),
        ("ADMIN_TOKEN", None),
        ("LOG_DIR", Some("storage/logs")),
        ("RUST_LOG", Some("info")),
        ("AUTO_MIGRATE", Some("true")),
        ("SHUTDOWN_GRACE_SECONDS", Some("30")),
    ] {
        assert!(
            text.contains(&format!("env: {var}")),
            "api --help lacks {var}:\n{text}"
        );
        if let Some(d) = default {
            assert!(
                text.contains(&format!("default: {d}")),
                "api --help lacks default {d}"
            );
        }
    }
    let worker = Command::new(binary("flash-sale-worker"))
        .arg("--help")
        .output()
        .expect("worker --help");
    let text = String::from_utf8_lossy(&worker.stdout);
    for (var, default) in [
        ("WORKER_ADDR", "127.0.0.1:9101"),
        ("EXPIRY_SCHEDULE", "\"*/10 * * * * *\""),
        ("EXPIRY_BATCH_SIZE", "500"),
        ("PAYMENT_TIMEOUT_SECONDS", "900"),
        ("DATABASE_URL", "sqlite://flash_sale.db?mode=rwc"),
    ] {
        assert!(
            text.contains(&format!("env: {var}")),
            "worker --help lacks {var}:\n{text}"
        );
        assert!(
            text.contains(&format!("default: {default}")),
            "worker --help lacks {default}"
        );
    }
}

fn committed_openapi() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/openapi.json")
}

/// The committed `api/openapi.json` is what the code generates. After changing the API, refresh
/// it with `target/debug/flash-sale-api openapi > api/openapi.json`.
#[tokio::test]
async fn the_committed_openapi_document_matches_the_code() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let served = app.get("/openapi.json").await.body;
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(committed_openapi()).expect("api/openapi.json"),
    )
    .expect("valid JSON");
    assert!(
        served == committed,
        "api/openapi.json is stale: run `target/debug/flash-sale-api openapi > api/openapi.json`"
    );
    check_document(&served);
}

/// What generated clients need of the document (issue 11): exact types, only the statuses
/// each operation answers with an example of each code, the declared headers, limits as schema
/// keywords, plain `$ref`s and `application/json`.
fn check_document(doc: &serde_json::Value) {
    let text = doc.to_string();
    assert!(!text.contains("allOf"), "plain $refs only");
    assert!(
        !text.contains("application/json;"),
        "JSON media types are application/json"
    );
    let tags: Vec<_> = doc["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        tags,
        [
            "Products",
            "Queue",
            "Holds",
            "Orders",
            "Payments",
            "Admin",
            "Operations"
        ]
    );
    assert!(!doc["servers"].as_array().expect("servers").is_empty());

    let schemas = &doc["components"]["schemas"];
    let codes: Vec<_> = schemas["ProblemCode"]["enum"]
        .as_array()
        .expect("ProblemCode enum")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    for code in [
        "malformed_request",
        "unsupported_media_type",
        "validation_error",
        "hold_mismatch",
        "product_not_found",
        "hold_not_found",
        "order_not_found",
        "not_found",
        "method_not_allowed",
        "insufficient_stock",
        "hold_expired",
        "hold_released",
        "hold_not_active",
        "idempotency_key_in_use",
        "idempotency_key_mismatch",
        "invalid_signature",
        "unauthorized",
        "payload_too_large",
        "rate_limited",
        "unavailable",
        "internal",
        "ticket_not_found",
        "queue_closed",
        "no_queue",
        "admission_required",
    ] {
        assert!(codes.contains(&code), "ProblemCode lacks {code}");
    }
    let problem = &schemas["Problem"]["properties"];
    assert_eq!(problem["code"]["$ref"], "#/components/schemas/ProblemCode");
    for member in [
        "available",
        "remaining",
        "sale_starts_at",
        "ticket_state",
        "position",
        "errors",
    ] {
        assert!(problem[member].is_object(), "Problem lacks {member}");
    }
    assert_eq!(
        schemas["FieldError"]["required"],
        serde_json::json!(["field", "message"])
    );

    // Limits and formats.
    let qty = &schemas["CreateHold"]["properties"]["qty"];
    assert_eq!(
        (
            qty["format"].as_str(),
            qty["minimum"].as_f64(),
            qty["maximum"].as_f64()
        ),
        (Some("int32"), Some(1.0), Some(10.0))
    );
    assert_eq!(schemas["Hold"]["properties"]["qty"]["format"], "int32");
    assert_eq!(
        schemas["Order"]["properties"]["quantity"]["format"],
        "int32"
    );
    assert_eq!(
        schemas["NewProduct"]["properties"]["stock"]["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(
        schemas["NewProduct"]["properties"]["price"]["pattern"],
        r"^[0-9]{1,12}(\.[0-9]{1,2})?$"
    );
    assert_eq!(
        schemas["NewProduct"]["properties"]["name"]["maxLength"],
        255
    );
    for (schema, field) in [("PaymentWebhook", "status"), ("PaymentProcessed", "status")] {
        assert_eq!(
            schemas[schema]["properties"][field]["$ref"],
            "#/components/schemas/WebhookStatus"
        );
    }
    assert_eq!(
        schemas["PaymentProcessed"]["properties"]["order_status"]["$ref"],
        "#/components/schemas/OrderState"
    );
    assert_eq!(
        schemas["WebhookStatus"]["enum"],
        serde_json::json!(["success", "failure"])
    );

    let mut statuses = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let id = op["operationId"].as_str().expect("operationId");
            let summary = op["summary"]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: no summary"));
            assert!(
                !summary.contains('`'),
                "{id}: backticks in summary {summary:?}"
            );
            assert!(op["security"].is_array(), "{id}: security stated");
            // Who may call what (`BUYER_AUTH=none`, the default): operators with their token,
            // a hold's and its order's owner with its secret, a ticket's owner with the
            // ticket's, anyone else nothing.
            let scheme = match id {
                "createProduct" | "updateProduct" | "listOrders" | "markRefunded" => {
                    Some("AdminToken")
                }
                "getHold" | "releaseHold" | "extendHold" | "createOrder" | "getOrder"
                | "getTicket" | "leaveQueue" | "streamTicket" => Some("ClientSecret"),
                _ => None,
            };
            let expected = match scheme {
                Some(s) => serde_json::json!([{ s: [] }]),
                None => serde_json::json!([]),
            };
            assert_eq!(op["security"], expected, "{id}");
            if let Some(params) = op["parameters"].as_array() {
                for p in params {
                    if p["name"] == "Idempotency-Key" {
                        assert_eq!(
                            (
                                p["schema"]["minLength"].as_u64(),
                                p["schema"]["maxLength"].as_u64()
                            ),
                            (Some(1), Some(255))
                        );
                    }
                }
            }
            let responses = op["responses"].as_object().expect("responses");
            statuses.insert(id.to_owned(), responses.keys().cloned().collect::<Vec<_>>());
            for (status, r) in responses {
                let what = format!("{method} {path} {status}");
                assert!(
                    r["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{what}: no description"
                );
                let headers = &r["headers"];
                assert!(headers["X-Request-Id"].is_object(), "{what}: X-Request-Id");
                if status == "201" {
                    assert_eq!(headers["Location"]["required"], true, "{what}: Location");
                }
                if status == "429" || status == "503" {
                    assert!(headers["Retry-After"].is_object(), "{what}: Retry-After");
                }
                if (id == "createHold" || id == "createOrder")
                    && ["200", "201", "404", "409", "422"].contains(&status.as_str())
                {
                    assert!(
                        headers["Idempotent-Replayed"].is_object(),
                        "{what}: Idempotent-Replayed"
                    );
                }
                let Some(content) = r["content"].as_object() else {
                    continue;
                };
                for media in content.keys() {
                    assert!(
                        [
                            "application/json",
                            "application/problem+json",
                            "text/plain; charset=utf-8",
                            "text/event-stream"
                        ]
                        .contains(&media.as_str()),
                        "{what}: {media}"
                    );
                }
                if let Some(problem) = content.get("application/problem+json") {
                    assert_eq!(
                        problem["schema"]["$ref"], "#/components/schemas/Problem",
                        "{what}"
                    );
                    let examples = problem["examples"]
                        .as_object()
                        .unwrap_or_else(|| panic!("{what}: no examples"));
                    for (code, example) in examples {
                        assert_eq!(example["value"]["code"], code.as_str(), "{what}");
                        assert_eq!(
                            example["value"]["status"].to_string(),
                            *status,
                            "{what}: {code} under another status"
                        );
                        assert!(codes.contains(&code.as_str()), "{what}: {code}");
                    }
                    if status == "409" && examples.contains_key("insufficient_stock") {
                        assert_eq!(examples["insufficient_stock"]["value"]["available"], 3);
                    }
                }
            }
        }
    }
    // Each operation lists only what it can answer.
    let list = |id: &str| statuses[id].join(",");
    assert_eq!(list("getProduct"), "200,400,404,500,503");
    assert_eq!(list("streamStock"), "200,400,404,429,500,503");
    assert_eq!(list("getHold"), "200,400,404,500,503");
    assert_eq!(list("releaseHold"), "200,400,404,409,500,503");
    assert_eq!(list("extendHold"), "200,400,404,409,500,503");
    assert_eq!(list("getOrder"), "200,400,404,500,503");
    assert_eq!(
        list("createHold"),
        "201,400,403,404,409,413,415,422,429,500,503"
    );
    assert_eq!(list("joinQueue"), "200,201,400,404,409,413,415,422,500,503");
    assert_eq!(list("getTicket"), "200,400,404,500,503");
    assert_eq!(list("leaveQueue"), "200,400,404,500,503");
    assert_eq!(list("streamTicket"), "200,400,404,429,500,503");
    assert_eq!(
        list("createOrder"),
        "200,201,400,404,409,413,415,422,500,503"
    );
    assert_eq!(
        list("paymentWebhook"),
        "200,400,401,404,409,413,415,422,500,503"
    );
    assert_eq!(list("createProduct"), "201,400,401,404,413,415,422,500,503");
    assert_eq!(list("listProducts"), "200,400,422,500,503");
    assert_eq!(
        list("updateProduct"),
        "200,400,401,404,409,413,415,422,500,503"
    );
    assert_eq!(list("listOrders"), "200,400,401,404,422,500,503");
    assert_eq!(list("markRefunded"), "200,400,401,404,409,500,503");
    assert_eq!(list("readyz"), "200,503");
    assert_eq!(list("healthz"), "200");
}

/// Swagger UI renders the operations in headless Chromium, with every outside host unreachable.
#[tokio::test]
async fn swagger_ui_renders_the_operations_in_a_browser_without_network() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let dom = swagger_ui_dom(&app).await;
    assert!(
        dom.contains("opblock"),
        "no operations rendered:\n{}",
        &dom[..dom.len().min(2000)]
    );
    for op in [
        "createHold",
        "getProduct",
        "createOrder",
        "paymentWebhook",
        "releaseHold",
    ] {
        assert!(dom.contains(op), "operation {op} not rendered");
    }
    for path in ["/api/holds", "/api/products/{id}", "/api/payments/webhook"] {
        assert!(dom.contains(path), "path {path} not rendered");
    }
}

/// Swagger UI's **Authorize** knows each credential, for the server's buyer mode: a lock on
/// exactly the operations that take one (anonymous buyers: the five hold and order routes and
/// the three ticket routes with `Client-Secret`, the four admin routes; buyer tokens: the six
/// hold and order routes, joining a queue and the three ticket routes, the four admin routes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_offers_each_credential_on_the_operations_that_take_it() {
    for (options, locks, scheme) in [
        (flash_sale_tests::AppOptions::default(), 12, "ClientSecret"),
        (flash_sale_tests::tokens::jwt_options(), 14, "BuyerToken"),
    ] {
        let app = TestApp::spawn_with(Backend::Sqlite, options).await;
        let dom = swagger_ui_dom(&app).await;
        assert!(dom.contains("btn authorize"), "no Authorize button");
        assert_eq!(
            dom.matches("class=\"authorization__btn\"").count(),
            locks,
            "{scheme}"
        );
        let doc = app.get("/openapi.json").await.body;
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("schemes");
        let mut names: Vec<&str> = schemes.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["AdminToken", scheme]);
    }
}

/// `/docs` as headless Chromium renders it, cut off from every other host.
async fn swagger_ui_dom(app: &TestApp) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = flash_sale_tests::headless_chromium(profile.path())
        .args([
            "--virtual-time-budget=20000",
            "--dump-dom",
            &format!("{}/docs", app.address),
        ])
        .output()
        .await
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
