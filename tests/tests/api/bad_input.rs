//! Every bad input of the contract's error table gets its 4xx problem+json and changes nothing.

use flash_sale_tests::{ADMIN_TOKEN, AppOptions, Backend, TestApp, on_both_databases};
use reqwest::Method;

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    auth: Option<&'static str>,
    body: Option<String>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: Method,
    path: &str,
    body: Option<&str>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        content_type: body.map(|_| "application/json"),
        auth: None,
        body: body.map(str::to_owned),
        status,
        code,
    }
}

fn cases(product: i64) -> Vec<Case> {
    let hold = |body: &str| Some(body.replace("PID", &product.to_string()));
    let post = |name, body: Option<String>, status, code| Case {
        body,
        ..case(name, Method::POST, "/api/holds", Some(""), status, code)
    };
    let admin = |name, body: &str, auth, status, code| Case {
        auth,
        ..case(
            name,
            Method::POST,
            "/api/admin/products",
            Some(body),
            status,
            code,
        )
    };
    vec![
        post(
            "not json",
            Some("{not json".into()),
            400,
            "malformed_request",
        ),
        post("empty body", Some(String::new()), 400, "malformed_request"),
        post("json array", Some("[1,2]".into()), 400, "malformed_request"),
        post(
            "qty missing",
            hold(r#"{"product_id":PID}"#),
            400,
            "malformed_request",
        ),
        post(
            "product_id missing",
            Some(r#"{"qty":1}"#.into()),
            400,
            "malformed_request",
        ),
        post(
            "qty null",
            hold(r#"{"product_id":PID,"qty":null}"#),
            400,
            "malformed_request",
        ),
        post(
            "qty a string",
            hold(r#"{"product_id":PID,"qty":"abc"}"#),
            400,
            "malformed_request",
        ),
        post(
            "qty a fraction",
            hold(r#"{"product_id":PID,"qty":1.5}"#),
            400,
            "malformed_request",
        ),
        post(
            "qty huge",
            hold(r#"{"product_id":PID,"qty":1e40}"#),
            400,
            "malformed_request",
        ),
        post(
            "product_id a string",
            Some(r#"{"product_id":"1","qty":1}"#.into()),
            400,
            "malformed_request",
        ),
        post(
            "qty zero",
            hold(r#"{"product_id":PID,"qty":0}"#),
            422,
            "validation_error",
        ),
        post(
            "qty negative",
            hold(r#"{"product_id":PID,"qty":-3}"#),
            422,
            "validation_error",
        ),
        post(
            "qty over MAX_HOLD_QTY",
            hold(r#"{"product_id":PID,"qty":11}"#),
            422,
            "validation_error",
        ),
        post(
            "qty i64 max",
            hold(r#"{"product_id":PID,"qty":9223372036854775807}"#),
            422,
            "validation_error",
        ),
        post(
            "unknown product",
            Some(r#"{"product_id":987654,"qty":1}"#.into()),
            404,
            "product_not_found",
        ),
        Case {
            content_type: None,
            ..post(
                "no content type",
                hold(r#"{"product_id":PID,"qty":1}"#),
                415,
                "unsupported_media_type",
            )
        },
        Case {
            content_type: Some("text/plain"),
            ..post(
                "text/plain",
                hold(r#"{"product_id":PID,"qty":1}"#),
                415,
                "unsupported_media_type",
            )
        },
        post(
            "body over 64 KiB",
            Some(format!(
                r#"{{"product_id":1,"qty":1,"pad":"{}"}}"#,
                "x".repeat(70_000)
            )),
            413,
            "payload_too_large",
        ),
        case(
            "unknown product read",
            Method::GET,
            "/api/products/987654",
            None,
            404,
            "product_not_found",
        ),
        case(
            "product id not a number",
            Method::GET,
            "/api/products/abc",
            None,
            400,
            "malformed_request",
        ),
        case(
            "product id overflows",
            Method::GET,
            "/api/products/99999999999999999999",
            None,
            400,
            "malformed_request",
        ),
        case(
            "unknown hold",
            Method::GET,
            "/api/holds/987654",
            None,
            404,
            "hold_not_found",
        ),
        case(
            "release unknown hold",
            Method::DELETE,
            "/api/holds/987654",
            None,
            404,
            "hold_not_found",
        ),
        case(
            "unknown route",
            Method::GET,
            "/api/nothing-here",
            None,
            404,
            "not_found",
        ),
        case(
            "wrong method",
            Method::PUT,
            "/api/holds",
            None,
            405,
            "method_not_allowed",
        ),
        admin(
            "admin without token",
            r#"{"name":"x","price":"1.00","stock":1}"#,
            None,
            401,
            "unauthorized",
        ),
        admin(
            "admin wrong token",
            r#"{"name":"x","price":"1.00","stock":1}"#,
            Some("wrong"),
            401,
            "unauthorized",
        ),
        admin(
            "price not decimal",
            r#"{"name":"x","price":"abc","stock":1}"#,
            Some(ADMIN_TOKEN),
            422,
            "validation_error",
        ),
        admin(
            "price three places",
            r#"{"name":"x","price":"1.001","stock":1}"#,
            Some(ADMIN_TOKEN),
            422,
            "validation_error",
        ),
        admin(
            "price negative",
            r#"{"name":"x","price":"-1","stock":1}"#,
            Some(ADMIN_TOKEN),
            422,
            "validation_error",
        ),
        admin(
            "price a number",
            r#"{"name":"x","price":1.5,"stock":1}"#,
            Some(ADMIN_TOKEN),
            400,
            "malformed_request",
        ),
        admin(
            "stock negative",
            r#"{"name":"x","price":"1.00","stock":-1}"#,
            Some(ADMIN_TOKEN),
            422,
            "validation_error",
        ),
        admin(
            "empty name",
            r#"{"name":" ","price":"1.00","stock":1}"#,
            Some(ADMIN_TOKEN),
            422,
            "validation_error",
        ),
    ]
}

on_both_databases!(
    every_bad_input_gets_its_4xx_problem_and_changes_nothing,
    admin_routes_do_not_exist_without_admin_token
);

async fn every_bad_input_gets_its_4xx_problem_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let before = app.get(&format!("/api/products/{product}")).await.body;

    for c in cases(product) {
        let mut req = app
            .http
            .request(c.method.clone(), format!("{}{}", app.address, c.path));
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        if let Some(token) = c.auth {
            req = req.bearer_auth(token);
        }
        if let Some(body) = c.body.clone() {
            req = req.body(body);
        }
        let r = flash_sale_tests::into_response(req.send().await.expect("request")).await;
        assert_eq!(r.status, c.status, "{}: {}", c.name, r.body);
        assert_eq!(r.code(), c.code, "{}: {}", c.name, r.body);
        assert_eq!(r.content_type, "application/problem+json", "{}", c.name);
        for field in ["type", "title", "detail"] {
            assert!(
                r.body[field].is_string(),
                "{}: no {field} in {}",
                c.name,
                r.body
            );
        }
        assert_eq!(r.body["status"], c.status, "{}", c.name);
    }

    // A 405 says which methods the resource has (RFC 9110).
    let put = app
        .http
        .put(format!("{}/api/holds/1", app.address))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 405);
    let allow = put
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        allow.contains("GET") && allow.contains("DELETE"),
        "Allow: {allow}"
    );

    assert_eq!(
        app.get(&format!("/api/products/{product}")).await.body,
        before
    );
    assert_eq!(app.hold_count(product, "active").await, 0);
    let products = app.get("/api/products/2").await;
    assert_eq!(products.status, 404, "no admin case created a product");
}

async fn admin_routes_do_not_exist_without_admin_token(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            admin_token: Some(None),
            ..Default::default()
        },
    )
    .await;
    let r = app
        .http
        .post(format!("{}/api/admin/products", app.address))
        .bearer_auth("anything")
        .json(&serde_json::json!({"name": "x", "price": "1.00", "stock": 1}))
        .send()
        .await
        .expect("request");
    let r = flash_sale_tests::into_response(r).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
}
