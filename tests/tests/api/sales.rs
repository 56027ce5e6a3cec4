//! What merchants run a flash sale with: sale windows, per-buyer limits, restocks while the sale
//! runs, the catalogue, and refunds owed for payments that came too late. Every scenario runs
//! real concurrent requests against the real binaries, on MariaDB and SQLite.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flash_sale_tests::{
    AppOptions, Backend, Client, Response, TestApp, all_at_once, eventually, on_both_databases,
    until_older_than,
};
use reqwest::Method;
use serde_json::{Value, json};

/// A product made with these extra members (`per_buyer_limit`, `sale_starts_at`, ...).
async fn product_with(client: &Client, stock: i64, extra: Value) -> i64 {
    let mut body = json!({"name": "Sale product", "price": "5.00", "stock": stock});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = client
        .admin(Method::POST, "/api/admin/products", Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_i64().expect("product id")
}

async fn hold_for(client: &Client, product: i64, qty: i64, buyer: &str) -> Response {
    client
        .request(
            Method::POST,
            "/api/holds",
            Some(json!({"product_id": product, "qty": qty, "buyer_id": buyer})),
        )
        .await
}

fn time_of(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// Units granted among these answers.
fn granted(answers: &[Response]) -> i64 {
    answers
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["qty"].as_i64().unwrap_or(0))
        .sum()
}

on_both_databases!(
    a_sale_opening_in_two_seconds_serves_no_one_early_and_sells_out_at_the_opening,
    holds_at_or_after_the_end_of_a_sale_are_refused_and_earlier_holds_still_become_paid_orders,
    fifty_concurrent_holds_by_one_buyer_with_a_limit_of_3_grant_exactly_3_units,
    the_buyer_limit_holds_with_coalescing_off,
    two_api_processes_together_still_respect_the_buyer_limit,
    released_and_expired_holds_and_cancelled_orders_give_the_buyer_allowance_back,
    restocks_and_removals_racing_with_hundreds_of_holds_keep_every_invariant,
    a_payment_after_the_timeout_for_units_since_sold_owes_exactly_one_refund,
    a_sale_window_is_answered_as_it_is_stored,
    the_catalogue_pages_by_id,
    bad_sale_and_buyer_input_gets_its_contract_error_and_changes_nothing
);

async fn a_sale_opening_in_two_seconds_serves_no_one_early_and_sells_out_at_the_opening(
    backend: Backend,
) {
    const TTL: i64 = 600;
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(TTL as u32)).await;
    let opens = Utc::now() + chrono::Duration::seconds(2);
    let product = product_with(&app, 100, json!({"sale_starts_at": opens})).await;

    // 300 buyers already waiting, each asking again as soon as it is told "not yet".
    let client = app.client.clone();
    let answers = all_at_once(300, move |i| {
        let c = client.clone();
        async move {
            let mut early = 0;
            loop {
                let r = hold_for(&c, product, 1, &format!("buyer-{i}")).await;
                if r.code() != "sale_not_started" {
                    return (early, r);
                }
                assert_eq!(
                    time_of(&r.body["sale_starts_at"]).timestamp_micros(),
                    opens.timestamp_micros()
                );
                early += 1;
                // A buyer's pause before asking again: part of the crowd, not a wait for the
                // opening (the answers say when it came).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
    .await;

    let told_not_yet: usize = answers.iter().map(|(early, _)| early).sum();
    assert!(
        told_not_yet >= 300,
        "every buyer was told to wait at least once"
    );
    let answers: Vec<Response> = answers.into_iter().map(|(_, r)| r).collect();
    assert_eq!(granted(&answers), 100, "exactly the stock is sold");
    let mut last_grant = opens;
    for r in &answers {
        match r.status {
            201 => {
                // A hold's creation is its expiry less the TTL: never before the opening.
                let made = time_of(&r.body["expires_at"]) - chrono::Duration::seconds(TTL);
                assert!(
                    made >= opens,
                    "hold made at {made}, before the opening at {opens}"
                );
                last_grant = last_grant.max(made);
            }
            _ => assert_eq!(r.code(), "insufficient_stock", "{}", r.body),
        }
    }
    assert!(
        last_grant - opens < chrono::Duration::seconds(3),
        "the stock went in the first instants after the opening (last at {last_grant})"
    );
    assert_eq!(app.available(product).await, 0);
    app.assert_stock_conserved().await;
}

async fn holds_at_or_after_the_end_of_a_sale_are_refused_and_earlier_holds_still_become_paid_orders(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let ends = Utc::now() + chrono::Duration::seconds(2);
    let product = product_with(&app, 1000, json!({"sale_ends_at": ends})).await;
    let hold = app.hold(product, 2).await;
    assert_eq!(hold.status, 201, "{}", hold.body);

    // Wait for the end by asking, not by sleeping a guess: holds are granted until it.
    let refused = eventually("the end of the sale", Duration::from_secs(10), || async {
        let r = app.hold(product, 1).await;
        if r.status == 409 {
            return Some(r);
        }
        assert_eq!(r.status, 201, "{}", r.body);
        None
    })
    .await;
    assert_eq!(refused.code(), "sale_ended");
    assert!(Utc::now() >= ends);

    let order = app.order(hold.body["hold_id"].as_i64().unwrap_or(0)).await;
    assert_eq!(order.status, 201, "{}", order.body);
    let order_id = order.body["order_id"].as_i64().unwrap_or(0);
    let paid = app
        .webhook(json!({"idempotency_key": "after-end", "order_id": order_id, "status": "success"}))
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["order_status"], "paid");
    app.assert_stock_conserved().await;
}

async fn fifty_concurrent_holds_by_one_buyer_with_a_limit_of_3_grant_exactly_3_units(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    limit_of_3_under_fire(&app, &app.client).await;
}

async fn the_buyer_limit_holds_with_coalescing_off(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            extra_env: vec![("HOLD_COALESCING", "false".into())],
            ..Default::default()
        },
    )
    .await;
    limit_of_3_under_fire(&app, &app.client).await;
}

async fn two_api_processes_together_still_respect_the_buyer_limit(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let other = app.spawn_another_api(&AppOptions::default());
    let clients = [app.client.clone(), app.client.on(&other)];
    let product = product_with(&app, 1000, json!({"per_buyer_limit": 3})).await;
    let answers = all_at_once(60, move |i| {
        let c = clients[i % 2].clone();
        async move { hold_for(&c, product, 1 + (i % 2) as i64, "ann").await }
    })
    .await;
    assert_eq!(
        granted(&answers),
        3,
        "ann holds at most her 3 units across both processes"
    );
    for r in answers.iter().filter(|r| r.status != 201) {
        assert_eq!(r.code(), "buyer_limit_exceeded", "{}", r.body);
        assert!(
            r.body["remaining"]
                .as_i64()
                .is_some_and(|n| (0..=2).contains(&n))
        );
    }
    app.assert_stock_conserved().await;
}

async fn released_and_expired_holds_and_cancelled_orders_give_the_buyer_allowance_back(
    backend: Backend,
) {
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(1)).await;
    let product = product_with(&app, 100, json!({"per_buyer_limit": 3})).await;
    let a = hold_for(&app, product, 3, "ann").await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(
        hold_for(&app, product, 1, "ann").await.code(),
        "buyer_limit_exceeded"
    );

    // Expired: the hold no longer counts, even before the worker runs.
    let b = eventually(
        "ann's allowance back when her hold expired",
        Duration::from_secs(10),
        || async {
            let r = hold_for(&app, product, 3, "ann").await;
            if r.status == 201 {
                return Some(r);
            }
            assert_eq!(r.code(), "buyer_limit_exceeded");
            None
        },
    )
    .await;
    // Consumed into an order: the order counts while pending...
    let order = app.order(b.body["hold_id"].as_i64().unwrap_or(0)).await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["buyer_id"], "ann");
    assert_eq!(
        hold_for(&app, product, 1, "ann").await.code(),
        "buyer_limit_exceeded"
    );
    // ...and no longer once cancelled.
    let order_id = order.body["order_id"].as_i64().unwrap_or(0);
    let failed = app
        .webhook(json!({"idempotency_key": "fail-1", "order_id": order_id, "status": "failure"}))
        .await;
    assert_eq!(failed.body["order_status"], "cancelled", "{}", failed.body);
    let c = hold_for(&app, product, 3, "ann").await;
    assert_eq!(c.status, 201, "{}", c.body);
    // Released: allowance back at once.
    let released = app.release(c.body["hold_id"].as_i64().unwrap_or(0)).await;
    assert_eq!(released.status, 200, "{}", released.body);
    let d = hold_for(&app, product, 3, "ann").await;
    assert_eq!(d.status, 201, "{}", d.body);
    // Paid orders count for good.
    let order = app.order(d.body["hold_id"].as_i64().unwrap_or(0)).await;
    let order_id = order.body["order_id"].as_i64().unwrap_or(0);
    let paid = app
        .webhook(json!({"idempotency_key": "pay-1", "order_id": order_id, "status": "success"}))
        .await;
    assert_eq!(paid.body["order_status"], "paid", "{}", paid.body);
    let refused = hold_for(&app, product, 1, "ann").await;
    assert_eq!(refused.code(), "buyer_limit_exceeded");
    assert_eq!(refused.body["remaining"], 0);
    // Buyers are compared exactly: "Ann" is someone else.
    assert_eq!(hold_for(&app, product, 3, "Ann").await.status, 201);
    app.assert_stock_conserved().await;
}

async fn restocks_and_removals_racing_with_hundreds_of_holds_keep_every_invariant(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(100).await;
    let client = app.client.clone();
    let answers = all_at_once(360, move |i| {
        let c = client.clone();
        async move {
            if i % 6 == 0 {
                // 60 changes: +10 or -15 units.
                let add = if i % 12 == 0 { 10 } else { -15 };
                let r = c
                    .admin(
                        Method::PATCH,
                        &format!("/api/admin/products/{product}"),
                        Some(json!({"add_stock": add})),
                    )
                    .await;
                (Some(add), r)
            } else {
                (None, c.hold(product, 1 + (i % 3) as i64).await)
            }
        }
    })
    .await;
    let mut added = 0;
    for (add, r) in &answers {
        match (add, r.status) {
            (Some(add), 200) => added += add,
            (Some(_), _) | (None, 409) => {
                assert_eq!(r.code(), "insufficient_stock", "{}", r.body);
                assert!(r.body["available"].as_i64().is_some_and(|a| a >= 0));
            }
            (None, 201) => {}
            (None, s) => panic!("hold answered {s}: {}", r.body),
        }
    }
    let held: i64 = answers
        .iter()
        .filter(|(a, _)| a.is_none())
        .map(|(_, r)| r)
        .filter(|r| r.status == 201)
        .map(|r| r.body["qty"].as_i64().unwrap_or(0))
        .sum();
    let (stock, available) = app.stock(product).await;
    assert_eq!(
        stock,
        100 + added,
        "stock moved by exactly the accepted changes"
    );
    assert_eq!(available, stock - held, "available = stock - held");
    assert!(available >= 0);
    app.assert_stock_conserved().await;
}

async fn a_payment_after_the_timeout_for_units_since_sold_owes_exactly_one_refund(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(1).await;
    let late = app.hold(product, 1).await;
    let order = app.order(late.body["hold_id"].as_i64().unwrap_or(0)).await;
    let late_order = order.body["order_id"].as_i64().unwrap_or(0);

    // The payment timeout cancels the order (the worker, its timeout 1 s)...
    until_older_than([&order.body["created_at"]], Duration::from_secs(1)).await;
    let mut worker =
        app.start_worker_once_with(10, &[("PAYMENT_TIMEOUT_SECONDS", "1".to_string())]);
    assert!(worker.wait(Duration::from_secs(60)), "{}", worker.output());
    assert_eq!(
        worker.metric("order.timed_out").len(),
        1,
        "{}",
        worker.output()
    );
    // ...the unit is sold to someone else...
    let other = app.hold(product, 1).await;
    assert_eq!(other.status, 201, "{}", other.body);
    let other_order = app.order(other.body["hold_id"].as_i64().unwrap_or(0)).await;
    let other_id = other_order.body["order_id"].as_i64().unwrap_or(0);
    let paid = app
        .webhook(json!({"idempotency_key": "pay-other", "order_id": other_id, "status": "success"}))
        .await;
    assert_eq!(paid.body["order_status"], "paid");
    // ...and then the first buyer's payment arrives: money taken, nothing to deliver.
    let event = json!({"idempotency_key": "pay-late", "order_id": late_order, "status": "success"});
    let first = app.webhook(event.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["processed"], true);
    assert_eq!(first.body["order_status"], "cancelled");
    let again = app.webhook(event).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["duplicate"], true);

    let owed = app
        .admin(Method::GET, "/api/admin/orders?refund_required=true", None)
        .await;
    assert_eq!(owed.status, 200, "{}", owed.body);
    let items = owed.body["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        items.len(),
        1,
        "exactly one order owes a refund: {}",
        owed.body
    );
    assert_eq!(items[0]["order_id"], late_order);
    assert_eq!(items[0]["refund_required"], true);
    assert_eq!(
        app.server
            .metric_eventually("order.refund_required", 1)
            .await
            .len(),
        1
    );
    let lines = app.server.metric("order.refund_required");
    assert_eq!(lines.len(), 1, "logged once, not again for the duplicate");
    assert_eq!(lines[0]["idempotency_key"], "pay-late");
    assert_eq!(lines[0]["quantity"], 1);
    assert_eq!(app.stock(product).await, (0, 0), "the sold unit stays sold");

    let path = format!("/api/admin/orders/{late_order}/refunded");
    let done = app.admin(Method::POST, &path, None).await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["refund_required"], false);
    let twice = app.admin(Method::POST, &path, None).await;
    assert_eq!(twice.status, 409);
    assert_eq!(twice.code(), "no_refund_due");
    let owed = app
        .admin(Method::GET, "/api/admin/orders?refund_required=true", None)
        .await;
    assert_eq!(owed.body["items"], json!([]));
    app.assert_stock_conserved().await;
}

async fn a_sale_window_is_answered_as_it_is_stored(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .admin(
            Method::POST,
            "/api/admin/products",
            Some(json!({"name": "w", "price": "1.00", "stock": 1,
            "sale_starts_at": "2030-01-01T00:00:00.123456789Z"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_i64().unwrap_or(0);
    let read = app.get(&format!("/api/products/{id}")).await;
    assert_eq!(
        time_of(&r.body["sale_starts_at"]),
        time_of(&read.body["sale_starts_at"])
    );
    assert_eq!(
        time_of(&read.body["sale_starts_at"]).timestamp_subsec_nanos(),
        123_456_000
    );
}

async fn the_catalogue_pages_by_id(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_product(7).await);
    }
    let first = app.get("/api/products?limit=2").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let page_ids = |r: &Response| -> Vec<i64> {
        r.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_i64())
            .collect()
    };
    assert_eq!(page_ids(&first), ids[..2]);
    assert_eq!(first.body["next"], ids[1]);
    assert_eq!(first.body["items"][0]["per_buyer_limit"], Value::Null);
    let next = app
        .get(&format!("/api/products?limit=2&after={}", ids[3]))
        .await;
    assert_eq!(page_ids(&next), ids[4..]);
    assert_eq!(next.body["next"], Value::Null, "the last page says so");
    let all = app.get("/api/products").await;
    assert_eq!(page_ids(&all), ids);
}

async fn bad_sale_and_buyer_input_gets_its_contract_error_and_changes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = product_with(&app, 10, json!({"per_buyer_limit": 2})).await;
    let held = hold_for(&app, product, 2, "ann").await;
    assert_eq!(held.status, 201);
    let before = app.get(&format!("/api/products/{product}")).await.body;
    let path = format!("/api/admin/products/{product}");
    let start = "2030-01-02T00:00:00Z";

    let cases: Vec<(&str, Response, u16, &str, Option<&str>)> = vec![
        ("sale ends before it starts", app.admin(Method::POST, "/api/admin/products", Some(json!({"name": "x", "price": "1.00", "stock": 1, "sale_starts_at": start, "sale_ends_at": "2030-01-01T00:00:00Z"}))).await, 422, "validation_error", Some("sale_ends_at")),
        ("a limit of 0", app.admin(Method::POST, "/api/admin/products", Some(json!({"name": "x", "price": "1.00", "stock": 1, "per_buyer_limit": 0}))).await, 422, "validation_error", Some("per_buyer_limit")),
        ("an end before the stored start", {
            // Set a start first (a real change), then try an end before it.
            let ok = app.admin(Method::PATCH, &path, Some(json!({"sale_starts_at": "2020-01-01T00:00:00Z"}))).await;
            assert_eq!(ok.status, 200, "{}", ok.body);
            app.admin(Method::PATCH, &path, Some(json!({"sale_ends_at": "2019-01-01T00:00:00Z"}))).await
        }, 422, "validation_error", Some("sale_ends_at")),
        ("a buyer_id of 129 characters", hold_for(&app, product, 1, &"b".repeat(129)).await, 422, "validation_error", Some("buyer_id")),
        ("a buyer_id with a control character", hold_for(&app, product, 1, "ann\u{7}").await, 422, "validation_error", Some("buyer_id")),
        ("no buyer_id on a limited product", app.hold(product, 1).await, 422, "buyer_id_required", Some("buyer_id")),
        ("PATCH of an unknown product", app.admin(Method::PATCH, "/api/admin/products/999999", Some(json!({"add_stock": 1}))).await, 404, "product_not_found", None),
        ("add_stock that would take held units", app.admin(Method::PATCH, &path, Some(json!({"add_stock": -9}))).await, 409, "insufficient_stock", None),
        ("a non-integer limit", app.admin(Method::PATCH, &path, Some(json!({"per_buyer_limit": "three"}))).await, 400, "malformed_request", Some("per_buyer_limit")),
        ("name: null", app.admin(Method::PATCH, &path, Some(json!({"name": null}))).await, 400, "malformed_request", Some("name")),
        ("add_stock past the largest stock", app.admin(Method::PATCH, &path, Some(json!({"add_stock": i32::MAX}))).await, 422, "validation_error", Some("add_stock")),
        ("add_stock: null", app.admin(Method::PATCH, &path, Some(json!({"add_stock": null}))).await, 400, "malformed_request", Some("add_stock")),
        ("a limit of 0 in a PATCH", app.admin(Method::PATCH, &path, Some(json!({"per_buyer_limit": 0}))).await, 422, "validation_error", Some("per_buyer_limit")),
        ("after=-1", app.get("/api/products?after=-1").await, 422, "validation_error", Some("after")),
        ("limit=0", app.get("/api/products?limit=0").await, 422, "validation_error", Some("limit")),
        ("limit=abc", app.get("/api/products?limit=abc").await, 400, "malformed_request", Some("limit")),
    ];
    for (what, r, status, code, field) in cases {
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(r.code(), code, "{what}: {}", r.body);
        assert_eq!(r.content_type, "application/problem+json", "{what}");
        if let Some(field) = field {
            assert_eq!(r.body["errors"][0]["field"], field, "{what}: {}", r.body);
        }
    }
    assert_eq!(held.body["buyer_id"], "ann");
    let refused = app
        .admin(Method::PATCH, &path, Some(json!({"add_stock": -9})))
        .await;
    assert_eq!(refused.body["available"], 8);
    let after = app.get(&format!("/api/products/{product}")).await.body;
    assert_eq!(after["stock"], before["stock"]);
    assert_eq!(after["available_stock"], before["available_stock"]);
    assert_eq!(after["per_buyer_limit"], 2);
    assert_eq!(after["sale_ends_at"], Value::Null);
    assert_eq!(
        app.count("products", "1 = 1").await,
        1,
        "no product was made"
    );
    app.assert_stock_conserved().await;
}

/// 50 holds at once by one buyer on a product limited to 3 per buyer, beside 50 by other
/// buyers: exactly 3 units for her, and every other buyer's own limit kept.
async fn limit_of_3_under_fire(app: &TestApp, client: &Client) {
    let product = product_with(client, 1000, json!({"per_buyer_limit": 3})).await;
    let c = client.clone();
    let answers = all_at_once(100, move |i| {
        let c = c.clone();
        async move {
            let buyer = if i % 2 == 0 {
                "ann".to_owned()
            } else {
                format!("other-{}", i % 10)
            };
            (buyer.clone(), hold_for(&c, product, 1, &buyer).await)
        }
    })
    .await;
    // 503 `unavailable` is the contract's answer when the product stayed contended past the
    // retries (with coalescing off, a hundred transactions queue on one row lock): it grants
    // nothing, and only then may a buyer end with fewer than the limit.
    let mut per_buyer = std::collections::BTreeMap::<String, (i64, bool)>::new();
    for (buyer, r) in &answers {
        let (granted, turned_away) = per_buyer.entry(buyer.clone()).or_default();
        match (r.status, r.code()) {
            (201, _) => *granted += 1,
            (503, "unavailable") => *turned_away = true,
            _ => {
                assert_eq!(r.code(), "buyer_limit_exceeded", "{}", r.body);
                assert_eq!(r.body["remaining"], 0);
            }
        }
    }
    for (buyer, (granted, turned_away)) in &per_buyer {
        assert!(
            *granted <= 3,
            "{buyer} holds {granted} units, over the limit of 3"
        );
        assert!(
            *granted == 3 || *turned_away,
            "{buyer} holds only {granted}: {per_buyer:?}"
        );
    }
    assert_eq!(
        per_buyer.get("ann").map(|(g, _)| *g),
        Some(3),
        "ann, with 50 tries, holds exactly 3 units: {per_buyer:?}"
    );
    app.assert_stock_conserved().await;
}
