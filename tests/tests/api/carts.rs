//! Carts (one hold over several products, all or none) and extensions, through the real
//! binaries, on MariaDB and SQLite: all-or-nothing under concurrency in every lock order, one
//! order and one payment for a whole cart, every line given back once, and extensions that
//! never race an expiry into a double win.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use flash_sale_tests::{
    AppOptions, Backend, Client, Load, TestApp, all_at_once, kill9, on_both_databases,
};
use reqwest::Method;
use serde_json::{Value, json};

/// A product at `price` with these extra members (`per_buyer_limit`, `sale_starts_at`, ...).
async fn product(client: &Client, stock: i64, price: &str, extra: Value) -> i64 {
    let mut body = json!({"name": "Cart product", "price": price, "stock": stock});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = client
        .admin(Method::POST, "/api/admin/products", Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_i64().expect("product id")
}

fn id(v: &Value, member: &str) -> i64 {
    v[member]
        .as_i64()
        .unwrap_or_else(|| panic!("no {member} in {v}"))
}

fn time_of(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

/// Waits until the clock reads `at`.
async fn until(at: DateTime<Utc>) {
    if let Ok(left) = (at - Utc::now()).to_std() {
        tokio::time::sleep(left).await;
    }
}

/// The `(product_id, code)` of each failing line of a refused cart.
fn failing_lines(body: &Value) -> Vec<(i64, String)> {
    body["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines in {body}"))
        .iter()
        .map(|l| {
            (
                id(l, "product_id"),
                l["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The API killed with SIGKILL while carts over three products are being held: every product's
/// books balance afterwards (no cart is half there), and every acknowledged cart is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_api_mid_cart_leaves_every_product_balanced() {
    let mut app = TestApp::spawn(Backend::MariaDb).await;
    let a = product(&app, 100_000, "1.00", json!({})).await;
    let b = product(&app, 100_000, "1.00", json!({})).await;
    let c = product(&app, 100_000, "1.00", json!({})).await;
    let body = flash_sale_tests::client::cart_body(&[(c, 1), (a, 2), (b, 3)], None);
    let load = Load::posting(std::slice::from_ref(&app.client), body, 8);
    load.until("20 carts acknowledged before the kill", |answers| {
        answers.iter().filter(|a| a.hold_id.is_some()).count() >= 20
    })
    .await;
    kill9(app.server.pid());
    assert!(
        !app.server.wait(Duration::from_secs(10)),
        "killed, not exited"
    );
    load.until("requests unanswered after the kill", |answers| {
        answers.iter().any(|a| a.status == 0)
    })
    .await;
    let acknowledged: Vec<i64> = load
        .finish()
        .await
        .iter()
        .filter_map(|a| a.hold_id)
        .collect();

    app.assert_stock_conserved().await;
    let restarted = app.spawn_another_api(&AppOptions::default());
    let client = app.client.on(&restarted);
    let carts = app.count("holds", "cart_lines IS NOT NULL").await;
    for (p, qty) in [(a, 2), (b, 3), (c, 1)] {
        assert_eq!(
            app.hold_count(p, "active").await,
            carts,
            "one line per cart of {p}"
        );
        assert_eq!(client.available(p).await, 100_000 - qty * carts);
    }
    assert!(carts >= acknowledged.len() as i64);
    for cart in acknowledged {
        let r = client.get(&format!("/api/holds/{cart}")).await;
        assert_eq!(
            r.body["lines"].as_array().map(Vec::len),
            Some(3),
            "{}",
            r.body
        );
    }
}

on_both_databases!(
    a_cart_holds_every_line_or_none_and_names_each_failing_line,
    every_product_rule_applies_to_each_line_of_a_cart,
    fifty_carts_in_every_order_over_three_products_never_deadlock_or_oversell,
    carts_racing_single_holds_on_the_hot_product_keep_every_book,
    a_cart_becomes_one_order_at_its_hold_time_prices_and_is_paid_whole,
    a_failed_payment_release_and_expiry_give_back_every_line_once,
    unpaid_cart_orders_time_out_whole_and_a_late_payment_pays_all_or_owes_the_whole_order,
    a_keyed_cart_is_replayed_with_its_lines,
    carts_of_different_products_in_one_batch_share_the_last_units_correctly,
    a_buyer_limit_counts_the_holds_and_carts_of_one_batch_together,
    a_cart_with_a_queue_product_uses_the_buyers_admitted_ticket_once,
    an_extension_moves_expiry_for_the_owner_only_and_stops_at_its_limits,
    the_worker_honours_an_extension_and_a_swept_hold_cannot_be_extended,
    extensions_racing_the_expiry_never_both_win
);

async fn a_cart_holds_every_line_or_none_and_names_each_failing_line(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let ticket = product(&app, 5, "40.00", json!({})).await;
    let parking = product(&app, 1, "7.25", json!({})).await;
    let shirt = product(&app, 3, "20.00", json!({})).await;

    // Lines in any order; answered in product order with hold-time prices and an exact total.
    let r = app.cart(&[(parking, 1), (ticket, 2)], None).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        id(&r.body, "product_id"),
        ticket,
        "the first line's product"
    );
    assert_eq!(r.body["qty"], 2);
    assert_eq!(
        r.body["lines"],
        json!([
            {"product_id": ticket, "qty": 2, "unit_price": "40.00"},
            {"product_id": parking, "qty": 1, "unit_price": "7.25"},
        ])
    );
    assert_eq!(r.body["total_price"], "87.25");
    assert!(r.body["client_secret"].is_string());
    let cart = id(&r.body, "hold_id");
    assert_eq!(
        r.header("location"),
        Some(format!("/api/holds/{cart}").as_str())
    );
    assert_eq!(app.available(ticket).await, 3);
    assert_eq!(app.available(parking).await, 0);

    // Its owner reads it whole; nobody else reads it, nor its other lines by their ids.
    let read = app.get(&format!("/api/holds/{cart}")).await;
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.body["lines"], r.body["lines"]);
    assert_eq!(
        app.stranger()
            .get(&format!("/api/holds/{cart}"))
            .await
            .status,
        404
    );
    let inner: i64 = app.count("holds", &format!("cart_id = {cart}")).await;
    assert_eq!(inner, 1, "one more row for the second line");
    let max_id = app.count("holds", "1 = 1").await;
    for other in 1..=max_id {
        if other != cart {
            assert_eq!(app.get(&format!("/api/holds/{other}")).await.status, 404);
        }
    }

    // Parking is gone and the ticket short: both lines named, nothing held of the shirt.
    let r = app
        .cart(&[(shirt, 1), (parking, 1), (ticket, 4)], None)
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(
        failing_lines(&r.body),
        vec![
            (ticket, "insufficient_stock".to_owned()),
            (parking, "insufficient_stock".to_owned())
        ]
    );
    assert_eq!(r.body["lines"][0]["available"], 3);
    assert_eq!(r.body["lines"][1]["available"], 0);
    assert_eq!(r.code(), "insufficient_stock");
    assert_eq!(
        r.body["available"], 3,
        "the first failing line's, as the code promises"
    );
    assert_eq!(
        app.available(shirt).await,
        3,
        "nothing of a refused cart is held"
    );
    assert_eq!(app.hold_count(shirt, "active").await, 0);

    // Bad carts change nothing.
    for (body, status, field) in [
        (json!({"lines": []}), 422, "lines"),
        (
            json!({"lines": [{"product_id": shirt, "qty": 1}, {"product_id": shirt, "qty": 2}]}),
            422,
            "lines",
        ),
        (
            json!({"lines": [{"product_id": shirt, "qty": 0}]}),
            422,
            "lines[0].qty",
        ),
        (
            json!({"lines": [{"product_id": shirt, "qty": 1}], "product_id": shirt, "qty": 1}),
            422,
            "lines",
        ),
        (
            json!({"lines": [{"product_id": shirt}]}),
            400,
            "lines[0].qty",
        ),
        (json!({"buyer_id": "x"}), 400, "product_id"),
        (json!({"lines": "x"}), 400, "lines"),
        (
            json!({"lines": [{"product_id": "a", "qty": 1}]}),
            400,
            "lines[0].product_id",
        ),
        (
            json!({"lines": [{"product_id": shirt, "qty": 1}], "ticket_id": "t"}),
            400,
            "ticket_id",
        ),
    ] {
        let r = app
            .request(Method::POST, "/api/holds", Some(body.clone()))
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {}", r.body);
    }
    let eleven: Vec<(i64, i64)> = (0..11).map(|i| (1000 + i, 1)).collect();
    let r = app.cart(&eleven, None).await;
    assert_eq!(r.status, 422, "MAX_HOLD_LINES is 10: {}", r.body);
    let r = app.cart(&[(shirt, 1), (99_999, 1)], None).await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(
        failing_lines(&r.body),
        vec![(99_999, "product_not_found".to_owned())]
    );
    assert_eq!(app.available(shirt).await, 3);
    app.assert_stock_conserved().await;
}

async fn every_product_rule_applies_to_each_line_of_a_cart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let open = product(&app, 10, "1.00", json!({})).await;
    let limited = product(&app, 10, "1.00", json!({"per_buyer_limit": 2})).await;
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let not_yet = product(&app, 10, "1.00", json!({"sale_starts_at": later})).await;
    let queued = app.create_queue_product(10, None).await;

    // No buyer on a limited product: that line is refused, the others are not held.
    let r = app.cart(&[(open, 1), (limited, 1)], None).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        failing_lines(&r.body),
        vec![(limited, "buyer_id_required".to_owned())]
    );

    // The limit counts the buyer's other holds, and this cart's line.
    assert_eq!(app.cart(&[(limited, 2)], Some("ann")).await.status, 201);
    let r = app.cart(&[(open, 1), (limited, 1)], Some("ann")).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        failing_lines(&r.body),
        vec![(limited, "buyer_limit_exceeded".to_owned())]
    );
    assert_eq!(r.body["lines"][0]["remaining"], 0);

    // A window not yet open, and a queue without an admitted ticket: each named, with its
    // own status for the first.
    let r = app
        .cart(&[(open, 1), (not_yet, 1), (queued, 1)], Some("bob"))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        failing_lines(&r.body),
        vec![
            (not_yet, "sale_not_started".to_owned()),
            (queued, "admission_required".to_owned())
        ]
    );
    let r = app.cart(&[(open, 1), (queued, 1)], Some("bob")).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.code(), "admission_required");

    assert_eq!(
        app.available(open).await,
        10,
        "no refused cart held anything"
    );
    assert_eq!(app.available(limited).await, 8);
    app.assert_stock_conserved().await;
}

async fn fifty_carts_in_every_order_over_three_products_never_deadlock_or_oversell(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let a = product(&app, 30, "1.00", json!({})).await;
    let b = product(&app, 30, "1.00", json!({})).await;
    let c = product(&app, 30, "1.00", json!({})).await;
    let orders: [[i64; 3]; 6] = [
        [a, b, c],
        [a, c, b],
        [b, a, c],
        [b, c, a],
        [c, a, b],
        [c, b, a],
    ];

    let answers = app
        .all_at_once(50, move |client, i| async move {
            let order = orders[i % 6];
            // Two or three lines, overlapping, in every order.
            let lines: Vec<(i64, i64)> = order
                .iter()
                .take(2 + i % 2)
                .map(|&p| (p, 1 + (i % 2) as i64))
                .collect();
            (lines.clone(), client.cart(&lines, None).await)
        })
        .await;

    let mut held = std::collections::HashMap::new();
    for (lines, r) in &answers {
        assert!(
            r.status == 201 || r.status == 409,
            "{}: {}",
            r.status,
            r.body
        );
        if r.status == 201 {
            for &(p, q) in lines {
                *held.entry(p).or_insert(0) += q;
            }
        }
    }
    for p in [a, b, c] {
        let units = held.get(&p).copied().unwrap_or(0);
        assert!(units <= 30, "product {p}: {units} held of 30");
        assert_eq!(app.available(p).await, 30 - units, "product {p}");
    }
    app.assert_stock_conserved().await;
}

async fn carts_racing_single_holds_on_the_hot_product_keep_every_book(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let hot = product(&app, 40, "1.00", json!({})).await;
    let side = product(&app, 1000, "1.00", json!({})).await;

    let answers = app
        .all_at_once(120, move |client, i| async move {
            match i % 3 {
                0 => (2, client.cart(&[(side, 1), (hot, 1)], None).await),
                _ => (1, client.hold(hot, 1).await),
            }
        })
        .await;
    let (mut hot_units, mut side_units) = (0, 0);
    for (lines, r) in &answers {
        assert!(
            r.status == 201 || r.status == 409,
            "{}: {}",
            r.status,
            r.body
        );
        if r.status == 201 {
            hot_units += 1;
            side_units += lines - 1;
        }
    }
    assert_eq!(hot_units, 40, "the hot product sells out, exactly");
    assert_eq!(app.available(hot).await, 0);
    assert_eq!(app.available(side).await, 1000 - side_units);
    app.assert_stock_conserved().await;
}

async fn a_cart_becomes_one_order_at_its_hold_time_prices_and_is_paid_whole(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = product(&app, 10, "3.10", json!({})).await;
    let b = product(&app, 10, "0.05", json!({})).await;
    let cart = id(
        &app.cart(&[(a, 2), (b, 3)], Some("ann")).await.body,
        "hold_id",
    );
    // A price change after the hold does not change what the cart costs.
    let r = app
        .admin(
            Method::PATCH,
            &format!("/api/admin/products/{a}"),
            Some(json!({"price": "99.00"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let r = app.order(cart).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let order = id(&r.body, "order_id");
    assert_eq!(r.body["total_price"], "6.35");
    assert_eq!(
        r.body["lines"],
        json!([
            {"product_id": a, "qty": 2, "unit_price": "3.10"},
            {"product_id": b, "qty": 3, "unit_price": "0.05"},
        ])
    );
    assert_eq!(r.body["buyer_id"], "ann");
    assert_eq!(
        app.get(&format!("/api/holds/{cart}")).await.body["status"],
        "consumed"
    );
    // Again: the same order.
    let again = app.order(cart).await;
    assert_eq!((again.status, id(&again.body, "order_id")), (200, order));
    // The order's other row is not an order of its own.
    let inner = app
        .count("orders", &format!("cart_id = {order} AND id <> {order}"))
        .await;
    assert_eq!(inner, 1);

    // A wrong amount changes nothing; the whole total pays the whole order, once.
    let r = app
        .webhook(json!({"idempotency_key": "k1", "order_id": order, "status": "success", "amount": "6.20"}))
        .await;
    assert_eq!((r.status, r.code()), (422, "amount_mismatch"), "{}", r.body);
    let pay =
        json!({"idempotency_key": "k2", "order_id": order, "status": "success", "amount": "6.35"});
    let answers = all_at_once(10, |_| {
        let (client, pay) = (app.client.clone(), pay.clone());
        async move { client.webhook(pay).await }
    })
    .await;
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 && r.body["order_status"] == "paid")
    );
    assert_eq!(
        answers
            .iter()
            .filter(|r| r.body["duplicate"] == false)
            .count(),
        1
    );
    assert_eq!(app.stock(a).await, (8, 8));
    assert_eq!(app.stock(b).await, (7, 7));
    let read = app.get(&format!("/api/orders/{order}")).await;
    assert_eq!(read.body["status"], "paid");
    assert_eq!(read.body["lines"], r_lines(a, b));
    app.assert_sold_within(a, 10).await;
    app.assert_sold_within(b, 10).await;
    app.assert_stock_conserved().await;
}

fn r_lines(a: i64, b: i64) -> Value {
    json!([
        {"product_id": a, "qty": 2, "unit_price": "3.10"},
        {"product_id": b, "qty": 3, "unit_price": "0.05"},
    ])
}

async fn a_failed_payment_release_and_expiry_give_back_every_line_once(backend: Backend) {
    let options = AppOptions::hold_ttl(1);
    let app = TestApp::spawn_with(backend, options).await;
    let a = product(&app, 10, "1.00", json!({})).await;
    let b = product(&app, 10, "1.00", json!({})).await;

    // Released by its owner, concurrently: every line back once.
    let released = id(&app.cart(&[(a, 2), (b, 3)], None).await.body, "hold_id");
    let answers = app
        .all_at_once(10, move |c, _| async move { c.release(released).await })
        .await;
    assert_eq!(answers.iter().filter(|r| r.status == 200).count(), 1);
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 || r.code() == "hold_not_active")
    );
    assert_eq!((app.available(a).await, app.available(b).await), (10, 10));

    // Cancelled by the gateway: every line back once.
    let cart = id(&app.cart(&[(a, 2), (b, 3)], None).await.body, "hold_id");
    let order = id(&app.order(cart).await.body, "order_id");
    let fail = json!({"idempotency_key": "f1", "order_id": order, "status": "failure"});
    assert_eq!(app.webhook(fail).await.body["order_status"], "cancelled");
    assert_eq!((app.available(a).await, app.available(b).await), (10, 10));

    // Expired: every line back, counted at once and swept once.
    let expiring = id(&app.cart(&[(a, 4), (b, 4)], None).await.body, "hold_id");
    app.until_no_hold_active(&[expiring], Duration::from_secs(10))
        .await;
    assert_eq!((app.available(a).await, app.available(b).await), (10, 10));
    let mut worker = app.start_worker_once(1);
    assert!(worker.wait(Duration::from_secs(30)), "{}", worker.output());
    let mut again = app.start_worker_once(500);
    assert!(again.wait(Duration::from_secs(30)), "{}", again.output());
    let swept: Vec<i64> = worker
        .metric("hold.expired")
        .into_iter()
        .chain(again.metric("hold.expired"))
        .map(|m| id(&m, "hold_id"))
        .collect();
    assert_eq!(
        swept,
        vec![expiring, expiring],
        "each line once, named by the cart"
    );
    assert_eq!(app.count("holds", "status = 'active'").await, 0);
    assert_eq!((app.available(a).await, app.available(b).await), (10, 10));
    assert_eq!(app.order(expiring).await.code(), "hold_expired");
    app.assert_stock_conserved().await;
}

async fn unpaid_cart_orders_time_out_whole_and_a_late_payment_pays_all_or_owes_the_whole_order(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let a = product(&app, 5, "2.00", json!({})).await;
    let b = product(&app, 5, "3.00", json!({})).await;
    let first = id(&app.cart(&[(a, 1), (b, 1)], None).await.body, "hold_id");
    let second = id(&app.cart(&[(a, 2), (b, 2)], None).await.body, "hold_id");
    let first = id(&app.order(first).await.body, "order_id");
    let second = id(&app.order(second).await.body, "order_id");

    let created = app.get(&format!("/api/orders/{second}")).await.body["created_at"].clone();
    flash_sale_tests::until_older_than([&created], Duration::from_secs(1)).await;
    let mut worker =
        app.start_worker_once_with(500, &[("PAYMENT_TIMEOUT_SECONDS", "1".to_string())]);
    assert!(worker.wait(Duration::from_secs(30)), "{}", worker.output());
    let timed_out: HashSet<(i64, i64)> = worker
        .metric("order.timed_out")
        .iter()
        .map(|m| (id(m, "order_id"), id(m, "product_id")))
        .collect();
    assert_eq!(
        timed_out,
        HashSet::from([(first, a), (first, b), (second, a), (second, b)]),
        "every line of both carts, each once, named by its order"
    );
    assert_eq!((app.available(a).await, app.available(b).await), (5, 5));

    // Someone buys 4 of b: the second cart's late payment cannot have its b, so none of it.
    let other = id(&app.hold(b, 4).await.body, "hold_id");
    assert_eq!(app.order(other).await.status, 201);
    let late = json!({"idempotency_key": "late-2", "order_id": second, "status": "success"});
    let r = app.webhook(late).await;
    assert_eq!(r.body["order_status"], "cancelled", "{}", r.body);
    assert_eq!((app.available(a).await, app.available(b).await), (5, 1));
    let owed = app
        .admin(Method::GET, "/api/admin/orders?refund_required=true", None)
        .await;
    let items = owed.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 1, "{}", owed.body);
    assert_eq!(id(&items[0], "order_id"), second);
    assert_eq!(items[0]["total_price"], "10.00", "the whole order is owed");
    assert_eq!(items[0]["lines"].as_array().map(Vec::len), Some(2));

    // The first cart's late payment finds both lines there: all paid.
    let late = json!({"idempotency_key": "late-1", "order_id": first, "status": "success"});
    assert_eq!(app.webhook(late).await.body["order_status"], "paid");
    assert_eq!(app.stock(a).await, (4, 4));
    assert_eq!(app.stock(b).await, (4, 0));
    let r = app
        .admin(
            Method::POST,
            &format!("/api/admin/orders/{second}/refunded"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        app.count("orders", "refund_required = 1").await,
        0,
        "every row cleared"
    );
    app.assert_stock_conserved().await;
}

/// Carts of two different sets of products ride in the hot product's batches together and
/// compete for the last units of a product both sets include: no 5xx, the scarce product sold
/// exactly out, every book balanced.
async fn carts_of_different_products_in_one_batch_share_the_last_units_correctly(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Made first, so it has the lowest id: the carts ride in its batches.
    let hot = product(&app, 10_000, "1.00", json!({})).await;
    let scarce = product(&app, 5, "1.00", json!({})).await;
    let side = product(&app, 10_000, "1.00", json!({})).await;
    let answers = app
        .all_at_once(150, move |c, i| async move {
            match i % 3 {
                0 => (i, c.cart(&[(hot, 1), (scarce, 1)], None).await),
                1 => (i, c.cart(&[(hot, 1), (scarce, 1), (side, 1)], None).await),
                _ => (i, c.hold(hot, 1).await),
            }
        })
        .await;
    let mut carts = 0;
    for (i, r) in &answers {
        assert!(
            r.status == 201 || r.status == 409,
            "{}: {}",
            r.status,
            r.body
        );
        if r.status == 201 && i % 3 != 2 {
            carts += 1;
        }
    }
    assert_eq!(carts, 5, "the scarce product's 5 units, one per cart");
    assert_eq!(app.available(scarce).await, 0);
    app.assert_stock_conserved().await;
}

/// One buyer's one-product holds and carts in the same batches of a limited product: the limit
/// counts them all, the ones planned earlier in the same transaction too.
async fn a_buyer_limit_counts_the_holds_and_carts_of_one_batch_together(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let limited = product(&app, 10_000, "1.00", json!({"per_buyer_limit": 2})).await;
    let side = product(&app, 10_000, "1.00", json!({})).await;
    // The product's lock held elsewhere: the requests gather into one batch behind it.
    let blocker = app.block_product(limited).await;
    let client = app.client.clone();
    let sent = tokio::spawn(async move {
        client
            .all_at_once(60, move |c, i| async move {
                // Buyer b sends a hold, then a cart, then a hold (i = b, b + 20, b + 40).
                let buyer = format!("buyer-{}", i % 20);
                let body = match (i / 20) % 2 {
                    0 => json!({"product_id": limited, "qty": 2, "buyer_id": buyer}),
                    _ => flash_sale_tests::client::cart_body(
                        &[(limited, 2), (side, 1)],
                        Some(&buyer),
                    ),
                };
                c.request(Method::POST, "/api/holds", Some(body)).await
            })
            .await
    });
    app.until_waiting("holds", 60).await;
    drop(blocker);
    let answers = sent.await.expect("requests");
    for r in &answers {
        assert!(
            r.status == 201 || r.status == 409,
            "{}: {}",
            r.status,
            r.body
        );
    }
    for b in 0..20 {
        let units = app
            .sum(
                "holds",
                "qty",
                &format!("product_id = {limited} AND buyer_id = 'buyer-{b}' AND status = 'active'"),
            )
            .await;
        assert_eq!(units, 2, "buyer-{b} holds exactly the limit");
    }
    app.assert_stock_conserved().await;
}

/// A cart that includes a product with queue admission needs the buyer's admitted ticket for
/// that line: without it the line is refused `admission_required`; with it the cart is granted
/// (the ticket's buyer's), the ticket is `used`, and it serves no second cart.
async fn a_cart_with_a_queue_product_uses_the_buyers_admitted_ticket_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let _worker = app.spawn_worker(&[]);
    let queued = app.create_queue_product(2, None).await;
    let open = product(&app, 10, "1.00", json!({})).await;
    let buyer = app.stranger();
    let joined = buyer.join(queued, Some("ann")).await;
    assert_eq!(joined.status, 201, "{}", joined.body);
    let ticket = id(&joined.body, "ticket_id");
    flash_sale_tests::eventually("the ticket admitted", Duration::from_secs(15), || {
        let buyer = buyer.clone();
        async move { (buyer.ticket(ticket).await.body["state"] == "admitted").then_some(()) }
    })
    .await;

    let r = buyer.cart(&[(open, 1), (queued, 1)], None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        failing_lines(&r.body),
        vec![(queued, "admission_required".to_owned())]
    );

    let mut body = flash_sale_tests::client::cart_body(&[(open, 1), (queued, 1)], None);
    body["ticket_id"] = json!(ticket);
    let r = buyer
        .request(Method::POST, "/api/holds", Some(body.clone()))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["buyer_id"], "ann",
        "the cart is the ticket's buyer's"
    );
    assert_eq!(r.body["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(buyer.ticket(ticket).await.body["state"], "used");
    let again = buyer.request(Method::POST, "/api/holds", Some(body)).await;
    assert_eq!(
        (again.status, again.code()),
        (403, "admission_required"),
        "{}",
        again.body
    );
    assert_eq!(
        (app.available(open).await, app.available(queued).await),
        (9, 1)
    );
    app.assert_stock_conserved().await;
}

async fn a_keyed_cart_is_replayed_with_its_lines(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = product(&app, 1, "1.00", json!({})).await;
    let b = product(&app, 5, "1.00", json!({})).await;
    let body = flash_sale_tests::client::cart_body(&[(a, 1), (b, 2)], None);
    let answers = app
        .all_at_once(10, move |c, _| {
            let body = body.clone();
            async move { c.post_with_key("/api/holds", "cart-1", &body).await }
        })
        .await;
    let first: Vec<_> = answers.iter().filter(|r| r.status == 201).collect();
    assert!(!first.is_empty());
    let cart = id(&first[0].body, "hold_id");
    for r in &answers {
        assert!(
            (r.status == 201 && id(&r.body, "hold_id") == cart)
                || r.code() == "idempotency_key_in_use",
            "{}: {}",
            r.status,
            r.body
        );
    }
    let body = flash_sale_tests::client::cart_body(&[(a, 1), (b, 2)], None);
    let replay = app.post_with_key("/api/holds", "cart-1", &body).await;
    assert_eq!(replay.status, 201);
    assert!(replay.replayed());
    assert_eq!(replay.body["lines"], first[0].body["lines"]);
    assert_eq!(replay.body["client_secret"], first[0].body["client_secret"]);
    assert_eq!((app.available(a).await, app.available(b).await), (0, 3));

    // A refused keyed cart is answered the same refusal again, lines and all.
    let body = flash_sale_tests::client::cart_body(&[(a, 1), (b, 1)], None);
    let refused = app.post_with_key("/api/holds", "cart-2", &body).await;
    assert_eq!(refused.status, 409);
    let again = app.post_with_key("/api/holds", "cart-2", &body).await;
    assert_eq!((again.status, again.replayed()), (409, true));
    assert_eq!(again.body["lines"], refused.body["lines"]);
    app.assert_stock_conserved().await;
}

async fn an_extension_moves_expiry_for_the_owner_only_and_stops_at_its_limits(backend: Backend) {
    let options = AppOptions {
        hold_ttl_seconds: Some(60),
        extra_env: vec![
            ("HOLD_MAX_EXTENSIONS", "2".into()),
            ("HOLD_MAX_LIFETIME_SECONDS", "150".into()),
        ],
        ..Default::default()
    };
    let app = TestApp::spawn_with(backend, options).await;
    let a = product(&app, 5, "1.00", json!({})).await;
    let b = product(&app, 5, "1.00", json!({})).await;
    let r = app.cart(&[(a, 1), (b, 1)], None).await;
    let cart = id(&r.body, "hold_id");
    let made = time_of(&r.body["expires_at"]) - chrono::Duration::seconds(60);

    assert_eq!(app.stranger().extend(cart).await.status, 404, "owner only");
    let first = app.extend(cart).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let until = time_of(&first.body["expires_at"]);
    assert!(until > time_of(&r.body["expires_at"]) - chrono::Duration::seconds(1));
    assert_eq!(first.body["lines"].as_array().map(Vec::len), Some(2));
    assert_eq!(first.body["status"], "active");
    // The second extension is cut at 150 s after the hold was made.
    let second = app.extend(cart).await;
    assert_eq!(second.status, 200, "{}", second.body);
    let cut = time_of(&second.body["expires_at"]);
    assert!(
        cut <= made + chrono::Duration::seconds(151),
        "{cut} vs made {made}"
    );
    assert_eq!(
        app.get(&format!("/api/holds/{cart}")).await.body["expires_at"],
        second.body["expires_at"]
    );
    let third = app.extend(cart).await;
    assert_eq!(
        (third.status, third.code()),
        (409, "extension_limit"),
        "{}",
        third.body
    );
    // Every line moved together.
    assert_eq!(
        app.count(
            "holds",
            &format!("(id = {cart} OR cart_id = {cart}) AND extensions = 2")
        )
        .await,
        2
    );

    // Not active: refused, nothing moved.
    let single = id(&app.hold(a, 1).await.body, "hold_id");
    assert_eq!(app.release(single).await.status, 200);
    let r = app.extend(single).await;
    assert_eq!((r.status, r.code()), (409, "hold_not_active"));
    assert_eq!(app.extend(999_999).await.status, 404);
    app.assert_stock_conserved().await;
}

async fn the_worker_honours_an_extension_and_a_swept_hold_cannot_be_extended(backend: Backend) {
    let options = AppOptions::hold_ttl(2);
    let app = TestApp::spawn_with(backend, options).await;
    let p = product(&app, 5, "1.00", json!({})).await;
    let kept = app.hold(p, 1).await;
    let lapsed = id(&app.hold(p, 1).await.body, "hold_id");
    let kept_id = id(&kept.body, "hold_id");
    // Extended after a while: its new expiry is later than the first.
    until(time_of(&kept.body["expires_at"]) - chrono::Duration::milliseconds(800)).await;
    let extended = app.extend(kept_id).await;
    assert_eq!(extended.status, 200, "{}", extended.body);
    let new_expiry = time_of(&extended.body["expires_at"]);
    assert!(new_expiry > time_of(&kept.body["expires_at"]));

    // Past the first expiry, before the new one: the worker sweeps only the other hold.
    app.until_no_hold_active(&[lapsed], Duration::from_secs(10))
        .await;
    let mut worker = app.start_worker_once(500);
    assert!(worker.wait(Duration::from_secs(30)), "{}", worker.output());
    let swept: Vec<i64> = worker
        .metric("hold.expired")
        .iter()
        .map(|m| id(m, "hold_id"))
        .collect();
    if Utc::now() < new_expiry {
        assert_eq!(swept, vec![lapsed]);
        assert_eq!(
            app.get(&format!("/api/holds/{kept_id}")).await.body["status"],
            "active"
        );
        assert_eq!(app.available(p).await, 4);
    }
    let r = app.extend(lapsed).await;
    assert_eq!(
        (r.status, r.code()),
        (409, "hold_not_active"),
        "a swept hold stays swept"
    );
    app.assert_stock_conserved().await;
}

async fn extensions_racing_the_expiry_never_both_win(backend: Backend) {
    let options = AppOptions {
        hold_ttl_seconds: Some(1),
        extra_env: vec![("HOLD_MAX_EXTENSIONS", "5".into())],
        ..Default::default()
    };
    let app = TestApp::spawn_with(backend, options).await;
    let p = product(&app, 100, "1.00", json!({})).await;
    let mut holds = Vec::new();
    let mut expires = Utc::now();
    for _ in 0..30 {
        let r = app.hold(p, 1).await;
        expires = time_of(&r.body["expires_at"]);
        holds.push(id(&r.body, "hold_id"));
    }
    // At the last hold's expiry, extensions of all of them race a sweeping worker.
    until(expires).await;
    let mut worker = app.start_worker_once(1000);
    let extends = all_at_once(holds.len(), |i| {
        let (client, hold) = (app.client.clone(), holds[i]);
        async move { (hold, client.extend(hold).await) }
    })
    .await;
    assert!(worker.wait(Duration::from_secs(30)), "{}", worker.output());
    let swept: HashSet<i64> = worker
        .metric("hold.expired")
        .iter()
        .map(|m| id(m, "hold_id"))
        .collect();
    for (hold, r) in &extends {
        match r.status {
            200 => {
                assert!(!swept.contains(hold), "hold {hold} was extended and swept");
                let read = app.get(&format!("/api/holds/{hold}")).await;
                assert!(
                    read.body["status"] == "active"
                        || time_of(&read.body["expires_at"]) <= Utc::now(),
                    "{}",
                    read.body
                );
            }
            409 => assert_eq!(r.code(), "hold_not_active", "{}", r.body),
            s => panic!("extend answered {s}: {}", r.body),
        }
    }
    // A second sweep takes what is left, once, whatever the extensions did.
    let mut again = app.start_worker_once(1000);
    assert!(again.wait(Duration::from_secs(30)), "{}", again.output());
    let second: Vec<i64> = again
        .metric("hold.expired")
        .iter()
        .map(|m| id(m, "hold_id"))
        .collect();
    assert!(
        second.iter().all(|h| !swept.contains(h)),
        "a hold was swept twice"
    );
    app.assert_stock_conserved().await;
}
