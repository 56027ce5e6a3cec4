//! The webhook as an attacker and a careless gateway try it, and money as it must add up: the
//! signature before the body, bounded work per header, any timestamp a 401; charged amounts
//! checked, second payments flagged, hold-time prices, late payments that count expired holds,
//! totals that cannot overflow.

use std::time::{Duration, Instant};

use flash_sale_tests::{
    AppOptions, Backend, TestApp, WEBHOOK_SECRET, on_both_databases, signature_headers,
};
use serde_json::{Value, json};

fn event(key: &str, order: i64, status: &str) -> Value {
    json!({"idempotency_key": key, "order_id": order, "status": status})
}

/// A pending order of `qty` units of a new product of `stock` units at 10.50.
async fn pending_order(app: &TestApp, stock: i64, qty: i64) -> (i64, i64, i64) {
    let product = app.create_product(stock).await;
    let hold = app.hold(product, qty).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = app.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    (product, hold, order)
}

on_both_databases!(
    a_webhook_is_authenticated_before_anything_reads_it,
    a_charged_amount_must_be_the_orders_total,
    two_payments_for_one_order_sell_once_and_flag_the_second,
    an_order_costs_the_price_when_its_hold_was_made,
    a_late_payment_counts_expired_holds_as_available
);

async fn a_webhook_is_authenticated_before_anything_reads_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (product, _, order) = pending_order(&app, 10, 2).await;
    let body = event("auth-1", order, "success").to_string();
    let valid = signature_headers(WEBHOOK_SECRET, &body, 0);
    let with = |name: &str, value: String| {
        valid
            .iter()
            .map(|(k, v)| (*k, if *k == name { value.clone() } else { v.clone() }))
            .collect::<Vec<_>>()
    };
    // 20 forgeries at once, each a different way: every one a 401, never a 400 or a 5xx.
    let forgeries: Vec<(String, Vec<(&str, String)>)> = vec![
        // Not JSON, unsigned: the body is not even read.
        ("{not json".into(), vec![]),
        (
            "{not json".into(),
            with("webhook-signature", "v1,AAAA".into()),
        ),
        (
            body.clone(),
            with("webhook-timestamp", i64::MIN.to_string()),
        ),
        (
            body.clone(),
            with("webhook-timestamp", i64::MAX.to_string()),
        ),
        (
            body.clone(),
            with("webhook-timestamp", "99999999999999999999999".into()),
        ),
        (body.clone(), with("webhook-timestamp", "-1".into())),
        (body.clone(), with("webhook-timestamp", "soon".into())),
        (body.replace("success", "failure"), valid.clone()),
    ];
    let answers = flash_sale_tests::all_at_once(20, |i| {
        let (raw, headers) = forgeries[i % forgeries.len()].clone();
        let c = app.client.clone();
        async move { (raw.clone(), c.raw_webhook(&raw, &headers).await) }
    })
    .await;
    for (raw, r) in &answers {
        assert_eq!(
            (r.status, r.code()),
            (401, "invalid_signature"),
            "{raw}: {}",
            r.body
        );
    }
    assert_eq!(app.count("webhook_events", "1 = 1").await, 0);
    assert_eq!(app.stock(product).await, (10, 8), "no effect");

    // Thousands of signatures cost no more than 16: the right one after them is not tried.
    let junk = vec!["v1,bm90LXRoZS1zaWduYXR1cmUtYXQtYWxsLTMyLWJ5dGVzISE="; 5_000].join(" ");
    let good = valid
        .iter()
        .find(|(k, _)| *k == "webhook-signature")
        .map(|(_, v)| v.clone())
        .expect("signature");
    let started = Instant::now();
    let r = app
        .raw_webhook(&body, &with("webhook-signature", format!("{junk} {good}")))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (401, "invalid_signature"),
        "{}",
        r.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let fifteen = vec!["v1,AAAA"; 15].join(" ");
    let r = app
        .raw_webhook(
            &body,
            &with("webhook-signature", format!("{fifteen} {good}")),
        )
        .await;
    assert_eq!(r.status, 200, "the 16th is tried: {}", r.body);
    // Signed but not JSON: now the body is read, and refused for what it is.
    let r = app.signed_raw_webhook("{not json").await;
    assert_eq!((r.status, r.code()), (400, "malformed_request"));
}

async fn a_charged_amount_must_be_the_orders_total(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (product, _, order) = pending_order(&app, 10, 2).await;
    // 2 × 10.50. Wrong amounts, at once: each 422 `amount_mismatch`, nothing recorded.
    let wrong = ["20.00", "21.01", "0.00", "2100", "21.0001"];
    let answers = flash_sale_tests::all_at_once(wrong.len(), |i| {
        let c = app.client.clone();
        let mut body = event(&format!("amount-{i}"), order, "success");
        body["amount"] = json!(wrong[i]);
        async move { c.webhook(body).await }
    })
    .await;
    assert_eq!(
        (answers[0].status, answers[0].code()),
        (422, "amount_mismatch"),
        "{}",
        answers[0].body
    );
    for (amount, r) in wrong.iter().zip(&answers) {
        let expected = if *amount == "21.0001" {
            "validation_error"
        } else {
            "amount_mismatch"
        };
        assert_eq!(
            (r.status, r.code()),
            (422, expected),
            "{amount}: {}",
            r.body
        );
    }
    assert_eq!(
        app.count("webhook_events", "1 = 1").await,
        0,
        "nothing recorded"
    );
    assert_eq!(
        app.get(&format!("/api/orders/{order}")).await.body["status"],
        "pending"
    );
    let conflicts = app.server.metric_exactly("webhook.conflict", 4).await;
    assert!(
        conflicts
            .iter()
            .all(|c| c["reason"] == "amount_mismatch" && c["order_id"] == order)
    );
    // The right amount pays; so does none.
    let mut body = event("amount-ok", order, "success");
    body["amount"] = json!("21.00");
    let r = app.webhook(body).await;
    assert_eq!(
        (r.status, &r.body["order_status"]),
        (200, &json!("paid")),
        "{}",
        r.body
    );
    // An order the webhook makes from its hold: checked against the hold, not made on a
    // mismatch.
    let hold = app.hold(product, 3).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let mut early = json!({"idempotency_key": "early-1", "order_id": 999_999, "status": "success", "hold_id": hold, "amount": "10.50"});
    let r = app.webhook(early.clone()).await;
    assert_eq!((r.status, r.code()), (422, "amount_mismatch"), "{}", r.body);
    assert_eq!(
        app.count("orders", &format!("hold_id = {hold}")).await,
        0,
        "no order made"
    );
    early["idempotency_key"] = json!("early-2");
    early["amount"] = json!("31.50");
    assert_eq!(app.webhook(early).await.body["order_status"], "paid");
    app.assert_stock_conserved().await;
}

async fn two_payments_for_one_order_sell_once_and_flag_the_second(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (product, _, order) = pending_order(&app, 10, 2).await;
    // Two gateways' successes with different keys, at the same moment.
    let answers = flash_sale_tests::all_at_once(2, |i| {
        let c = app.client.clone();
        async move {
            c.webhook(event(&format!("charge-{i}"), order, "success"))
                .await
        }
    })
    .await;
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 && r.body["order_status"] == "paid")
    );
    assert_eq!(app.stock(product).await, (8, 8), "sold once");
    let conflicts = app.server.metric_exactly("webhook.conflict", 1).await;
    assert_eq!(conflicts[0]["reason"], "already_paid");
    assert_eq!(app.metric("webhook_conflicts_total").await, 1.0);
    app.assert_stock_conserved().await;
}

async fn an_order_costs_the_price_when_its_hold_was_made(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(100).await;
    // Ten buyers hold at 10.50 while the operator raises the price to 99.00 at once.
    let answers = flash_sale_tests::all_at_once(11, |i| {
        let c = app.client.clone();
        async move {
            if i == 10 {
                let r = c
                    .admin(
                        reqwest::Method::PATCH,
                        &format!("/api/admin/products/{product}"),
                        Some(json!({"price": "99.00"})),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                None
            } else {
                Some(c.hold(product, 2).await)
            }
        }
    })
    .await;
    // Each hold's order costs what the product cost when the hold was granted: the hold
    // answered before the change was read (10.50) or after (99.00), never a mix.
    for r in answers.into_iter().flatten() {
        let hold = r.body["hold_id"].as_i64().expect("hold");
        let order = app.order(hold).await;
        assert_eq!(order.status, 201, "{}", order.body);
        let total = order.body["total_price"]
            .as_str()
            .expect("total")
            .to_owned();
        assert!(["21.00", "198.00"].contains(&total.as_str()), "{total}");
    }
    // A hold made before the change, ordered after it: the old price.
    app.admin(
        reqwest::Method::PATCH,
        &format!("/api/admin/products/{product}"),
        Some(json!({"price": "10.50"})),
    )
    .await;
    let hold = app.hold(product, 3).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    app.admin(
        reqwest::Method::PATCH,
        &format!("/api/admin/products/{product}"),
        Some(json!({"price": "500.00"})),
    )
    .await;
    let order = app.order(hold).await;
    assert_eq!(order.body["total_price"], "31.50", "{}", order.body);
    let paid = app.webhook(json!({"idempotency_key": "p-1", "order_id": order.body["order_id"], "status": "success", "amount": "31.50"})).await;
    assert_eq!(paid.body["order_status"], "paid", "{}", paid.body);
}

async fn a_late_payment_counts_expired_holds_as_available(backend: Backend) {
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(1)).await;
    let (product, _, order) = pending_order(&app, 2, 2).await;
    assert_eq!(
        app.webhook(event("declined", order, "failure")).await.body["order_status"],
        "cancelled"
    );
    // Someone else holds both units, and lets the hold run out; no worker runs.
    let other = app.stranger();
    let hold = other.hold(product, 2).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    other
        .until_no_hold_active(&[hold], Duration::from_secs(10))
        .await;
    assert_eq!(
        app.count("holds", &format!("id = {hold} AND status = 'active'"))
            .await,
        1,
        "not swept"
    );
    // The gateway's late success: the units are there (the hold has expired), so it is paid,
    // not refunded.
    let r = app.webhook(event("approved-late", order, "success")).await;
    assert_eq!(
        (r.status, &r.body["order_status"]),
        (200, &json!("paid")),
        "{}",
        r.body
    );
    assert_eq!(app.count("orders", "refund_required = 1").await, 0);
    assert_eq!(app.stock(product).await, (0, 0));
    app.server.metric_exactly("hold.expired", 1).await;
    app.assert_stock_conserved().await;
    app.assert_sold_within(product, 2).await;
}

/// A price whose largest hold could not be totalled exactly is refused, never stored to
/// overflow later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_that_could_not_be_totalled_are_refused() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        AppOptions {
            extra_env: vec![("MAX_HOLD_QTY", "1000000".into())],
            ..Default::default()
        },
    )
    .await;
    let new = |price: &str| json!({"name": "Big", "price": price, "stock": 1});
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/admin/products",
            Some(new("999999999999.99")),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_error"),
        "{}",
        r.body
    );
    assert_eq!(r.body["errors"][0]["field"], "price");
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/admin/products",
            Some(new("9000000.00")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    let r = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/admin/products/{id}"),
            Some(json!({"price": "999999999999.99"})),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (422, "validation_error"),
        "{}",
        r.body
    );
    assert_eq!(
        app.get(&format!("/api/products/{id}")).await.body["price"],
        "9000000.00"
    );
}
