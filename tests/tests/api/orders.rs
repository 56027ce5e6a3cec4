//! Holds become orders: once per hold, whatever the concurrency.

use std::{collections::HashSet, time::Duration};

use flash_sale_tests::{AppOptions, Backend, TestApp, on_both_databases};

on_both_databases!(
    a_hold_becomes_a_pending_order_with_an_exact_total,
    fifty_concurrent_orders_for_one_hold_make_one_order,
    orders_for_released_expired_or_unknown_holds_are_refused
);

async fn a_hold_becomes_a_pending_order_with_an_exact_total(backend: Backend) {
    let app = TestApp::spawn(backend).await; // products cost "10.50"
    let product = app.create_product(10).await;
    let hold = app.hold(product, 3).await.body["hold_id"]
        .as_i64()
        .expect("hold");

    let r = app.order(hold).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["hold_id"], hold);
    assert_eq!(r.body["product_id"], product);
    assert_eq!(r.body["quantity"], 3);
    assert_eq!(r.body["total_price"], "31.50");
    assert_eq!(r.body["status"], "pending");
    assert!(r.body["created_at"].is_string());
    let id = r.body["order_id"].as_i64().expect("order_id");

    assert_eq!(
        app.get(&format!("/api/holds/{hold}")).await.body["status"],
        "consumed"
    );
    assert_eq!(app.get(&format!("/api/orders/{id}")).await.body, r.body);
    // A pending order still keeps its units out of available stock, and in stock.
    assert_eq!(app.stock(product).await, (10, 7));
    app.assert_stock_conserved().await;

    // A consumed hold cannot be released.
    assert_eq!(app.release(hold).await.code(), "hold_not_active");
}

async fn fifty_concurrent_orders_for_one_hold_make_one_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let hold = app.hold(product, 2).await.body["hold_id"]
        .as_i64()
        .expect("hold");

    let answers = app
        .all_at_once(50, move |c, _| async move { c.order(hold).await })
        .await;

    assert_eq!(answers.iter().filter(|r| r.status == 201).count(), 1);
    assert_eq!(answers.iter().filter(|r| r.status == 200).count(), 49);
    let ids: HashSet<i64> = answers
        .iter()
        .map(|r| r.body["order_id"].as_i64().expect("order_id"))
        .collect();
    assert_eq!(ids.len(), 1, "every answer names the same order");
    assert_eq!(app.count("orders", &format!("hold_id = {hold}")).await, 1);
    assert_eq!(app.stock(product).await, (10, 8));
    app.assert_stock_conserved().await;
}

async fn orders_for_released_expired_or_unknown_holds_are_refused(backend: Backend) {
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(1)).await;
    let product = app.create_product(10).await;
    let released = app.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let expiring = app.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    assert_eq!(app.release(released).await.status, 200);
    app.until_no_hold_active(&[expiring], Duration::from_secs(10))
        .await;

    let r = app.order(released).await;
    assert_eq!((r.status, r.code()), (409, "hold_released"), "{}", r.body);
    let r = app.order(expiring).await;
    assert_eq!((r.status, r.code()), (409, "hold_expired"), "{}", r.body);
    let r = app.order(987_654).await;
    assert_eq!((r.status, r.code()), (404, "hold_not_found"));
    let r = app.get("/api/orders/987654").await;
    assert_eq!((r.status, r.code()), (404, "order_not_found"));
    let r = app
        .request(
            reqwest::Method::POST,
            "/api/orders",
            Some(serde_json::json!({"hold_id": "1"})),
        )
        .await;
    assert_eq!((r.status, r.code()), (400, "malformed_request"));

    assert_eq!(app.count("orders", "1 = 1").await, 0);
    assert_eq!(app.available(product).await, 10);
    app.assert_stock_conserved().await;
}
