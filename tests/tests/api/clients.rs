//! What frontend teams build on: errors that name their field, the headers the contract
//! declares, CORS as the contract says, metrics labelled by route for answers given before
//! routing, and a document whose examples work on a fresh database.

use flash_sale_tests::{
    ADMIN_TOKEN, AppOptions, Backend, TestApp, binary, into_response, on_both_databases,
};
use serde_json::{Value, json};

/// The one problem member `errors` must name `field`.
fn assert_blames(r: &flash_sale_tests::Response, status: u16, code: &str, field: &str) {
    assert_eq!((r.status, r.code()), (status, code), "{}", r.body);
    let errors = r.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {}", r.body));
    assert_eq!(errors.len(), 1, "{}", r.body);
    assert_eq!(errors[0]["field"], field, "{}", r.body);
    assert!(errors[0]["message"].is_string(), "{}", r.body);
}

on_both_databases!(
    refusals_name_the_field_or_parameter_to_blame,
    created_resources_say_where_they_are_and_replays_say_so,
    cors_answers_unlisted_origins_as_if_they_sent_none,
    metrics_label_answers_given_before_routing_with_their_route,
    an_order_made_by_a_webhook_writes_order_created
);

async fn refusals_name_the_field_or_parameter_to_blame(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(3).await;
    let post = |body: &str| {
        let app = &app;
        let body = body.to_owned();
        async move {
            let r = app
                .http
                .post(format!("{}/api/holds", app.address))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("post");
            into_response(r).await
        }
    };

    let r = post(&format!(r#"{{"product_id":{product}}}"#)).await;
    assert_blames(&r, 400, "malformed_request", "qty");
    assert_eq!(
        r.body["errors"][0]["message"], "missing field",
        "not \"found null\": {}",
        r.body
    );
    // `qty` is left out of a cart's body, so `null` there is as good as missing.
    let r = post(&format!(r#"{{"product_id":{product},"qty":null}}"#)).await;
    assert_blames(&r, 400, "malformed_request", "qty");
    assert_eq!(r.body["errors"][0]["message"], "missing field");
    assert_blames(
        &post(&format!(r#"{{"product_id":{product},"qty":"2"}}"#)).await,
        400,
        "malformed_request",
        "qty",
    );
    assert_blames(
        &post(r#"{"product_id":"1","qty":1}"#).await,
        400,
        "malformed_request",
        "product_id",
    );
    assert_blames(
        &post(&format!(r#"{{"product_id":{product},"qty":11}}"#)).await,
        422,
        "validation_error",
        "qty",
    );
    assert_blames(
        &post(&format!(r#"{{"product_id":{product},"qty":0}}"#)).await,
        422,
        "validation_error",
        "qty",
    );
    assert_blames(
        &post(&format!(
            r#"{{"product_id":{product},"qty":9223372036854775807}}"#
        ))
        .await,
        422,
        "validation_error",
        "qty",
    );

    // Path parameters by their own name, never poem-openapi's `param0`.
    for path in [
        "/api/products/abc",
        "/api/holds/1.5",
        "/api/orders/99999999999999999999",
    ] {
        let r = app.get(path).await;
        assert_blames(&r, 400, "malformed_request", "id");
        assert!(!r.body.to_string().contains("param0"), "{}", r.body);
    }
    // Headers too.
    let r = app
        .post_with_key(
            "/api/holds",
            &"k".repeat(256),
            &json!({"product_id": product, "qty": 1}),
        )
        .await;
    assert_blames(&r, 400, "malformed_request", "Idempotency-Key");
    // Webhook fields, and admin fields.
    let r = app
        .webhook(json!({"idempotency_key": "f1", "order_id": 1, "status": "refunded"}))
        .await;
    assert_blames(&r, 422, "validation_error", "status");
    let r = app
        .webhook(json!({"idempotency_key": "f2", "status": "success"}))
        .await;
    assert_blames(&r, 400, "malformed_request", "order_id");
    let r = into_response(
        app.http
            .post(format!("{}/api/admin/products", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "x", "price": "1.001", "stock": 1}))
            .send()
            .await
            .expect("admin"),
    )
    .await;
    assert_blames(&r, 422, "validation_error", "price");

    // A refusal for want of stock says how many are available, as a number.
    assert_eq!(app.hold(product, 2).await.status, 201);
    let r = app.hold(product, 2).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "insufficient_stock"),
        "{}",
        r.body
    );
    assert_eq!(r.body["available"], 1, "{}", r.body);
    assert!(r.body.get("errors").is_none(), "{}", r.body);
}

async fn created_resources_say_where_they_are_and_replays_say_so(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = into_response(
        app.http
            .post(format!("{}/api/admin/products", app.address))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "P", "price": "2.50", "stock": 5}))
            .send()
            .await
            .expect("admin"),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let product = r.body["id"].as_i64().expect("id");
    assert_eq!(
        r.header("location"),
        Some(format!("/api/products/{product}").as_str())
    );
    assert_eq!(
        app.get(r.header("location").unwrap_or_default())
            .await
            .status,
        200
    );

    let first = app.hold_with_key(product, 1, "loc-1").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let hold = first.body["hold_id"].as_i64().expect("hold_id");
    assert_eq!(
        first.header("location"),
        Some(format!("/api/holds/{hold}").as_str())
    );
    assert!(!first.replayed());
    let again = app.hold_with_key(product, 1, "loc-1").await;
    assert_eq!(
        (again.status, again.replayed()),
        (201, true),
        "{}",
        again.body
    );
    assert_eq!(
        again.header("location"),
        first.header("location"),
        "a replayed 201 says where too"
    );
    assert_eq!(again.content_type, "application/json");

    let order = app.order(hold).await;
    assert_eq!(order.status, 201, "{}", order.body);
    let id = order.body["order_id"].as_i64().expect("order_id");
    assert_eq!(
        order.header("location"),
        Some(format!("/api/orders/{id}").as_str())
    );
    assert_eq!(
        order.content_type, "application/json",
        "no charset parameter, as documented"
    );
    let existing = app.order(hold).await;
    assert_eq!((existing.status, existing.header("location")), (200, None));
    assert!(existing.header("x-request-id").is_some());
}

async fn cors_answers_unlisted_origins_as_if_they_sent_none(backend: Backend) {
    let listed = "http://localhost:5173";
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            extra_env: vec![(
                "CORS_ALLOWED_ORIGINS",
                format!("{listed}, http://127.0.0.1:3000"),
            )],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(5).await;
    let hold = |origin: Option<&str>| {
        let mut req = app
            .http
            .post(format!("{}/api/holds", app.address))
            .json(&json!({"product_id": product, "qty": 1}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        async move { req.send().await.expect("hold") }
    };

    let r = hold(Some("http://evil.example")).await;
    assert_eq!(
        r.status(),
        201,
        "an unlisted origin is served, never refused"
    );
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(r.headers().get("access-control-expose-headers").is_none());
    let r = hold(None).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let r = hold(Some(listed)).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["access-control-allow-origin"], listed);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    for h in [
        "x-request-id",
        "location",
        "idempotent-replayed",
        "retry-after",
    ] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }

    // Preflights: a listed origin gets its answer; another is answered as without Origin.
    let preflight = |origin: &str| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/holds", app.address),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, idempotency-key",
            )
            .send()
    };
    let ok = preflight(listed).await.expect("preflight");
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(ok.headers()["access-control-allow-origin"], listed);
    let other = preflight("http://evil.example").await.expect("preflight");
    let bare = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/holds", app.address),
        )
        .send()
        .await
        .expect("options");
    assert_eq!(
        other.status(),
        bare.status(),
        "as if no Origin had been sent"
    );
    assert_ne!(other.status(), 400);
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

async fn metrics_label_answers_given_before_routing_with_their_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(5).await;
    let big = format!(
        r#"{{"product_id":{product},"qty":1,"pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let r = app
        .http
        .post(format!("{}/api/holds", app.address))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("413");
    assert_eq!(r.status(), 413);
    assert_eq!(app.hold_with_key(product, 1, "m-1").await.status, 201);
    assert!(app.hold_with_key(product, 1, "m-1").await.replayed());
    app.get("/no/such/route").await;

    let text = app.metrics_text().await;
    for needle in [
        r#"http_requests_total{method="POST",route="/api/holds",status="413"} 1"#,
        r#"http_requests_total{method="POST",route="/api/holds",status="201"} 2"#,
        r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    assert!(
        !text.contains(r#"route="unmatched",status="413""#),
        "{text}"
    );
}

async fn an_order_made_by_a_webhook_writes_order_created(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(5).await;
    let hold = app.hold(product, 2).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let r = app.webhook(json!({"idempotency_key": "early-1", "order_id": 987_654, "status": "success", "hold_id": hold})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let order = r.body["order_id"].as_i64().expect("order");
    let created = app.server.metric_exactly("order.created", 1).await;
    assert_eq!(created[0]["order_id"], order);
    assert_eq!(created[0]["hold_id"], hold);
    assert_eq!(created[0]["product_id"], product);
    assert_eq!(created[0]["quantity"], 2);
    // A duplicate of that webhook makes no second order and no second line.
    app.webhook(json!({"idempotency_key": "early-1", "order_id": 987_654, "status": "success", "hold_id": hold})).await;
    app.server.metric_exactly("order.created", 1).await;
}

/// The document's own examples, executed in a buyer's order on a fresh database with the demo
/// product (as `deploy/local.sh` makes it), all succeed.
#[tokio::test]
async fn the_documents_examples_work_on_a_fresh_seeded_database() {
    let app = TestApp::spawn(flash_sale_tests::Backend::Sqlite).await;
    let seed = std::process::Command::new(binary("flash-sale-api"))
        .args(["migrate", "--seed"])
        .env("DATABASE_URL", &app.db.url)
        .env("LOG_DIR", app.db.dir().join("seed-logs"))
        .output()
        .expect("seed");
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    let doc = app.get("/openapi.json").await.body;
    let schema_example = |name: &str| doc["components"]["schemas"][name]["example"].clone();
    let body_of = |path: &str, method: &str| -> Value {
        let r = &doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"];
        let name = r
            .as_str()
            .and_then(|r| r.rsplit('/').next())
            .expect("a $ref body");
        schema_example(name)
    };
    let param = |path: &str, method: &str| -> String {
        let p = &doc["paths"][path][method]["parameters"][0]["example"];
        p.as_i64().map(|i| i.to_string()).expect("path example")
    };
    // As Swagger UI's user would: the admin token on admin routes, the hold's `client_secret`
    // (kept by the buyer's client) on its hold and order, the gateway's signature on the webhook.
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let c = app.client.clone();
        async move {
            if path.starts_with("/api/admin") {
                c.admin(method, &path, body).await
            } else if path == "/api/payments/webhook" {
                let raw = body.map(|b| b.to_string()).unwrap_or_default();
                c.signed_raw_webhook(&raw).await
            } else {
                c.request(method, &path, body).await
            }
        }
    };
    use reqwest::Method;
    let steps = [
        (
            "createProduct",
            Method::POST,
            "/api/admin/products".to_owned(),
            Some(body_of("/api/admin/products", "post")),
            201,
        ),
        (
            "getProduct",
            Method::GET,
            format!("/api/products/{}", param("/api/products/{id}", "get")),
            None,
            200,
        ),
        (
            "createHold",
            Method::POST,
            "/api/holds".to_owned(),
            Some(body_of("/api/holds", "post")),
            201,
        ),
        (
            "getHold",
            Method::GET,
            format!("/api/holds/{}", param("/api/holds/{id}", "get")),
            None,
            200,
        ),
        (
            "createOrder",
            Method::POST,
            "/api/orders".to_owned(),
            Some(body_of("/api/orders", "post")),
            201,
        ),
        (
            "getOrder",
            Method::GET,
            format!("/api/orders/{}", param("/api/orders/{id}", "get")),
            None,
            200,
        ),
        (
            "paymentWebhook",
            Method::POST,
            "/api/payments/webhook".to_owned(),
            Some(body_of("/api/payments/webhook", "post")),
            200,
        ),
        // releaseHold's example is a second hold: the first became the order.
        (
            "createHold again",
            Method::POST,
            "/api/holds".to_owned(),
            Some(body_of("/api/holds", "post")),
            201,
        ),
        (
            "releaseHold",
            Method::DELETE,
            format!("/api/holds/{}", param("/api/holds/{id}", "delete")),
            None,
            200,
        ),
        (
            "listProducts",
            Method::GET,
            "/api/products".to_owned(),
            None,
            200,
        ),
        // Last among the product's steps: its example sets a per-buyer limit of 2.
        (
            "updateProduct",
            Method::PATCH,
            format!(
                "/api/admin/products/{}",
                param("/api/admin/products/{id}", "patch")
            ),
            Some(body_of("/api/admin/products/{id}", "patch")),
            200,
        ),
        (
            "listOrders",
            Method::GET,
            "/api/admin/orders".to_owned(),
            None,
            200,
        ),
        // The example order was paid in full: no refund is due, as the document's 409 says.
        (
            "markRefunded",
            Method::POST,
            format!(
                "/api/admin/orders/{}/refunded",
                param("/api/admin/orders/{id}/refunded", "post")
            ),
            None,
            409,
        ),
    ];
    for (name, method, path, body, status) in steps {
        let r = call(method, path, body).await;
        assert_eq!(r.status, status, "{name}: {}", r.body);
    }
    let order = app
        .get(&format!("/api/orders/{}", param("/api/orders/{id}", "get")))
        .await;
    assert_eq!(
        order.body["status"], "paid",
        "the webhook example paid the example order"
    );
}
