//! The payment webhook as a real gateway calls it: retried, duplicated, concurrent, out of
//! order, signed.

use std::time::Duration;

use flash_sale_tests::{AppOptions, Backend, TestApp, on_both_databases, until_older_than};
use serde_json::{Value, json};

/// An app with one product of `stock` units and a pending order of `qty` of them.
async fn app_with_order(backend: Backend, stock: i64, qty: i64) -> (TestApp, i64, i64, i64) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(stock).await;
    let hold = app.hold(product, qty).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = app.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    (app, product, hold, order)
}

fn event(key: &str, order: i64, status: &str) -> Value {
    json!({"idempotency_key": key, "order_id": order, "status": status})
}

on_both_databases!(
    success_pays_and_failure_cancels,
    fifty_identical_webhooks_at_once_have_one_effect,
    fifty_identical_failures_at_once_release_the_stock_once,
    a_retry_with_the_same_fields_in_another_layout_is_a_duplicate_and_another_body_a_mismatch,
    a_webhook_before_its_order_makes_the_order_from_the_hold,
    an_early_webhook_whose_hold_does_not_match_or_is_gone_changes_nothing,
    an_unknown_order_without_hold_is_404_and_leaves_no_trace,
    failure_after_paid_changes_nothing_and_is_a_conflict,
    success_after_failure_pays_only_if_the_stock_is_still_there,
    bad_webhooks_get_their_4xx,
    signed_webhooks_are_checked_the_standard_webhooks_way,
    unpaid_orders_time_out_once_even_with_two_workers
);

async fn success_pays_and_failure_cancels(backend: Backend) {
    let (app, product, _, paid) = app_with_order(backend, 10, 2).await;
    let r = app.webhook(event("pay-1", paid, "success")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body,
        json!({"processed": true, "duplicate": false, "order_id": paid, "status": "success", "order_status": "paid"})
    );
    assert_eq!(app.stock(product).await, (8, 8), "stock drops when paid");
    assert_eq!(
        app.get(&format!("/api/orders/{paid}")).await.body["status"],
        "paid"
    );

    let hold = app.hold(product, 3).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let failed = app.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    assert_eq!(app.stock(product).await, (8, 5));
    let r = app.webhook(event("pay-2", failed, "failure")).await;
    assert_eq!(r.body["order_status"], "cancelled");
    assert_eq!(
        app.stock(product).await,
        (8, 8),
        "a failed payment gives the units back"
    );
    app.assert_stock_conserved().await;
    app.assert_sold_within(product, 10).await;
    app.server.metric_exactly("webhook.processed", 2).await;
}

async fn fifty_identical_webhooks_at_once_have_one_effect(backend: Backend) {
    let (app, product, _, order) = app_with_order(backend, 10, 4).await;
    let answers = app
        .all_at_once(50, move |c, _| async move {
            c.webhook(event("pay-dup", order, "success")).await
        })
        .await;
    assert!(
        answers.iter().all(|r| r.status == 200),
        "never a 500 for a lost race"
    );
    assert_eq!(
        answers
            .iter()
            .filter(|r| r.body["duplicate"] == false)
            .count(),
        1
    );
    assert!(
        answers
            .iter()
            .all(|r| r.body["order_status"] == "paid" && r.body["order_id"] == order)
    );
    assert_eq!(app.stock(product).await, (6, 6), "paid once");
    assert_eq!(app.count("webhook_events", "1 = 1").await, 1);
    let logged = app.server.metric_exactly("webhook.processed", 50).await;
    assert_eq!(
        logged.iter().filter(|m| m["is_duplicate"] == false).count(),
        1
    );
    app.assert_sold_within(product, 10).await;
}

async fn fifty_identical_failures_at_once_release_the_stock_once(backend: Backend) {
    let (app, product, _, order) = app_with_order(backend, 10, 4).await;
    let answers = app
        .all_at_once(50, move |c, _| async move {
            c.webhook(event("fail-dup", order, "failure")).await
        })
        .await;
    assert!(
        answers
            .iter()
            .all(|r| r.status == 200 && r.body["order_status"] == "cancelled")
    );
    assert_eq!(
        answers
            .iter()
            .filter(|r| r.body["duplicate"] == false)
            .count(),
        1
    );
    assert_eq!(app.stock(product).await, (10, 10), "released once");
    // And a later duplicate changes nothing either.
    let again = app.webhook(event("fail-dup", order, "failure")).await;
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(app.stock(product).await, (10, 10));
    app.assert_stock_conserved().await;
}

async fn a_retry_with_the_same_fields_in_another_layout_is_a_duplicate_and_another_body_a_mismatch(
    backend: Backend,
) {
    let (app, product, _, order) = app_with_order(backend, 10, 1).await;
    let first = format!(r#"{{"idempotency_key":"k-1","order_id":{order},"status":"success"}}"#);
    let reordered = format!(
        "{{ \"status\" : \"success\",\n  \"order_id\": {order}, \"idempotency_key\": \"k-1\" }}"
    );
    assert_eq!(
        app.signed_raw_webhook(&first).await.body["duplicate"],
        false
    );
    let dup = app.signed_raw_webhook(&reordered).await;
    assert_eq!(
        (dup.status, dup.body["duplicate"].clone()),
        (200, json!(true))
    );

    let other = app.webhook(event("k-1", order, "failure")).await;
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_mismatch")
    );
    assert_eq!(
        app.stock(product).await,
        (9, 9),
        "no effect from the mismatch"
    );
    assert_eq!(
        app.get(&format!("/api/orders/{order}")).await.body["status"],
        "paid"
    );
}

async fn a_webhook_before_its_order_makes_the_order_from_the_hold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let hold = app.hold(product, 2).await.body["hold_id"]
        .as_i64()
        .expect("hold");

    let r = app
        .webhook(
            json!({"idempotency_key": "early", "order_id": 999_999, "status": "success",
                        "hold_id": hold, "product_id": product, "quantity": 2}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["order_status"], "paid");
    let real = r.body["order_id"].as_i64().expect("order_id");
    assert_ne!(real, 999_999, "the answer names the real order");

    let placed = app.order(hold).await;
    assert_eq!(placed.status, 200, "the hold already became an order");
    assert_eq!(placed.body["order_id"], real);
    assert_eq!(placed.body["status"], "paid");
    assert_eq!(app.stock(product).await, (8, 8));
    app.assert_stock_conserved().await;
    app.assert_sold_within(product, 10).await;
}

async fn an_early_webhook_whose_hold_does_not_match_or_is_gone_changes_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(1)).await;
    let product = app.create_product(10).await;
    let hold = app.hold(product, 2).await.body["hold_id"]
        .as_i64()
        .expect("hold");

    for (field, value) in [("product_id", product + 1), ("quantity", 3)] {
        let mut body = json!({"idempotency_key": format!("mm-{field}"), "order_id": 999_999,
                              "status": "success", "hold_id": hold});
        body[field] = json!(value);
        let r = app.webhook(body).await;
        assert_eq!(
            (r.status, r.code()),
            (422, "hold_mismatch"),
            "{field}: {}",
            r.body
        );
    }
    assert_eq!(
        app.get(&format!("/api/holds/{hold}")).await.body["status"],
        "active"
    );
    assert_eq!(app.count("orders", "1 = 1").await, 0);

    app.until_no_hold_active(&[hold], Duration::from_secs(10))
        .await;
    let r = app
        .webhook(json!({"idempotency_key": "late", "order_id": 999_999, "status": "success", "hold_id": hold}))
        .await;
    assert_eq!((r.status, r.code()), (409, "hold_expired"), "{}", r.body);
    let conflicts = app.server.metric_exactly("webhook.conflict", 1).await;
    assert_eq!(conflicts[0]["reason"], "hold_expired");
    assert!(conflicts[0]["order_id"].is_null() && conflicts[0]["order_status"].is_null());
    assert_eq!(
        app.count("webhook_events", "1 = 1").await,
        0,
        "nothing recorded"
    );
    assert_eq!(app.count("orders", "1 = 1").await, 0);
    assert_eq!(app.available(product).await, 10);
    app.assert_stock_conserved().await;
}

async fn an_unknown_order_without_hold_is_404_and_leaves_no_trace(backend: Backend) {
    let (app, product, _, order) = app_with_order(backend, 10, 1).await;
    let r = app.webhook(event("retry-me", 999_999, "success")).await;
    assert_eq!((r.status, r.code()), (404, "order_not_found"));
    assert_eq!(app.count("webhook_events", "1 = 1").await, 0);
    // The gateway's retry, once it knows the order, is processed, not a mismatch.
    let r = app.webhook(event("retry-me", order, "success")).await;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(false)));
    assert_eq!(app.stock(product).await, (9, 9));
}

async fn failure_after_paid_changes_nothing_and_is_a_conflict(backend: Backend) {
    let (app, product, _, order) = app_with_order(backend, 10, 2).await;
    app.webhook(event("ok", order, "success")).await;
    let r = app.webhook(event("late-failure", order, "failure")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["processed"], true);
    assert_eq!(r.body["order_status"], "paid");
    assert_eq!(app.stock(product).await, (8, 8));
    let c = app.server.metric_exactly("webhook.conflict", 1).await;
    assert_eq!(c[0]["order_id"], order);
    assert_eq!(c[0]["order_status"], "paid");
    assert_eq!(c[0]["idempotency_key"], "late-failure");
    // A success with a new key on a paid order is no second sale, but maybe a second charge:
    // a conflict for people to check, counted.
    let r = app.webhook(event("ok-again", order, "success")).await;
    assert_eq!((r.status, &r.body["order_status"]), (200, &json!("paid")));
    let c = app.server.metric_exactly("webhook.conflict", 2).await;
    assert_eq!(
        (&c[1]["reason"], &c[1]["idempotency_key"]),
        (&json!("already_paid"), &json!("ok-again"))
    );
    assert_eq!(c[1]["order_status"], "paid");
    let counted = app.metrics_text().await;
    assert!(
        counted.contains(r#"webhook_conflicts_total{reason="already_paid"} 1"#),
        "{counted}"
    );
    assert_eq!(app.stock(product).await, (8, 8));
    app.assert_sold_within(product, 10).await;
}

async fn success_after_failure_pays_only_if_the_stock_is_still_there(backend: Backend) {
    let (app, product, _, order) = app_with_order(backend, 5, 5).await;
    app.webhook(event("f1", order, "failure")).await;
    assert_eq!(app.stock(product).await, (5, 5));
    // Stock left: the retried payment takes it and the order is paid.
    let r = app.webhook(event("s1", order, "success")).await;
    assert_eq!(r.body["order_status"], "paid");
    assert_eq!(app.stock(product).await, (0, 0));
    app.assert_sold_within(product, 5).await;

    // Now an order whose units went to someone else while it was cancelled.
    let (app, product, _, order) = app_with_order(backend, 5, 5).await;
    app.webhook(event("f2", order, "failure")).await;
    assert_eq!(app.hold(product, 5).await.status, 201);
    let r = app.webhook(event("s2", order, "success")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body["order_status"], "cancelled",
        "no stock: stays cancelled"
    );
    let c = app.server.metric_exactly("webhook.conflict", 1).await;
    assert_eq!(c[0]["order_status"], "cancelled");
    assert_eq!(app.stock(product).await, (5, 0));
    app.assert_stock_conserved().await;
    app.assert_sold_within(product, 5).await;
}

async fn bad_webhooks_get_their_4xx(backend: Backend) {
    let (app, product, _, order) = app_with_order(backend, 10, 1).await;
    let cases = [
        (
            json!({"idempotency_key": "b1", "order_id": order, "status": "refunded"}),
            422,
            "validation_error",
        ),
        (
            json!({"idempotency_key": "", "order_id": order, "status": "success"}),
            422,
            "validation_error",
        ),
        (
            json!({"idempotency_key": "k".repeat(256), "order_id": order, "status": "success"}),
            422,
            "validation_error",
        ),
        (
            json!({"idempotency_key": 5, "order_id": order, "status": "success"}),
            400,
            "malformed_request",
        ),
        (
            json!({"order_id": order, "status": "success"}),
            400,
            "malformed_request",
        ),
        (
            json!({"idempotency_key": "b2", "order_id": "x", "status": "success"}),
            400,
            "malformed_request",
        ),
        (
            json!({"idempotency_key": "b3", "order_id": order, "status": null}),
            400,
            "malformed_request",
        ),
    ];
    for (body, status, code) in cases {
        let r = app.webhook(body.clone()).await;
        assert_eq!((r.status, r.code()), (status, code), "{body}: {}", r.body);
    }
    let r = app.signed_raw_webhook("not json").await;
    assert_eq!((r.status, r.code()), (400, "malformed_request"));
    assert_eq!(app.count("webhook_events", "1 = 1").await, 0);
    assert_eq!(app.stock(product).await, (10, 9));
}

/// A secret of these tests' own (the 24 bytes `signed-webhooks-test-key`).
const SECRET: &str = "whsec_c2lnbmVkLXdlYmhvb2tzLXRlc3Qta2V5";

async fn signed_webhooks_are_checked_the_standard_webhooks_way(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            extra_env: vec![("WEBHOOK_SECRET", SECRET.into())],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(10).await;
    let hold = app.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = app.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    let body = event("signed-1", order, "failure");

    // Refused, with no effect: unsigned, stale, from the future, tampered, wrong secret.
    let unsigned = app.raw_webhook(&body.to_string(), &[]).await;
    assert_eq!(
        (unsigned.status, unsigned.code()),
        (401, "invalid_signature")
    );
    for age in [301, -301] {
        let r = app.signed_webhook(SECRET, &body, age).await;
        assert_eq!(
            (r.status, r.code()),
            (401, "invalid_signature"),
            "age {age}"
        );
    }
    let other_secret = "whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZS0yNC1ieXRlcw==";
    assert_eq!(app.signed_webhook(other_secret, &body, 0).await.status, 401);
    let ts = flash_sale_tests::now_unix().to_string();
    let sig = standardwebhooks::Webhook::new(SECRET)
        .expect("secret")
        .sign(
            "msg_t",
            ts.parse().expect("ts"),
            body.to_string().as_bytes(),
        )
        .expect("sign");
    let tampered = body.to_string().replace("failure", "success");
    let r = app
        .raw_webhook(
            &tampered,
            &[
                ("webhook-id", "msg_t".into()),
                ("webhook-timestamp", ts.clone()),
                ("webhook-signature", sig.clone()),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(app.stock(product).await, (10, 9), "no effect");
    assert_eq!(app.count("webhook_events", "1 = 1").await, 0);

    // Accepted: signed by the reference library, also among several signatures (rotation).
    let rotated = format!("v1,bm90LXRoZS1yaWdodC1vbmU= {sig}");
    let r = app
        .raw_webhook(
            &body.to_string(),
            &[
                ("webhook-id", "msg_t".into()),
                ("webhook-timestamp", ts),
                ("webhook-signature", rotated),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["order_status"], "cancelled");
    let r = app.signed_webhook(SECRET, &body, 60).await;
    assert_eq!((r.status, r.body["duplicate"].clone()), (200, json!(true)));
    assert_eq!(app.stock(product).await, (10, 10));
}

async fn unpaid_orders_time_out_once_even_with_two_workers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(100).await;
    let placed: Vec<Value> = app
        .all_at_once(60, move |c, _| async move {
            let hold = c.hold(product, 1).await.body["hold_id"]
                .as_i64()
                .expect("hold");
            c.order(hold).await.body
        })
        .await;
    let orders: Vec<i64> = placed
        .iter()
        .map(|o| o["order_id"].as_i64().expect("order"))
        .collect();
    let paid = orders[0];
    app.webhook(event("paid-in-time", paid, "success")).await;
    assert_eq!(app.stock(product).await, (99, 40));
    // Until the newest order is older than the 1 s timeout the workers are given below.
    until_older_than(
        placed.iter().map(|o| &o["created_at"]),
        Duration::from_secs(1),
    )
    .await;

    let timeout = [("PAYMENT_TIMEOUT_SECONDS", "1".to_string())];
    let mut w1 = app.start_worker_once_with(5, &timeout);
    let mut w2 = app.start_worker_once_with(5, &timeout);
    assert!(w1.wait(Duration::from_secs(60)), "{}", w1.output());
    assert!(w2.wait(Duration::from_secs(60)), "{}", w2.output());
    let mut timed_out: Vec<i64> = w1
        .metric("order.timed_out")
        .into_iter()
        .chain(w2.metric("order.timed_out"))
        .map(|m| m["order_id"].as_i64().expect("order_id"))
        .collect();
    timed_out.sort_unstable();
    let mut expected: Vec<i64> = orders[1..].to_vec();
    expected.sort_unstable();
    assert_eq!(
        timed_out, expected,
        "every unpaid order cancelled exactly once"
    );
    assert_eq!(app.stock(product).await, (99, 99));
    assert_eq!(
        app.get(&format!("/api/orders/{}", orders[1])).await.body["status"],
        "cancelled"
    );
    app.assert_stock_conserved().await;

    // A payment that arrives after the timeout takes the stock back if it is there.
    let r = app.webhook(event("late-pay", orders[1], "success")).await;
    assert_eq!(r.body["order_status"], "paid");
    assert_eq!(app.stock(product).await, (98, 98));
    app.assert_sold_within(product, 100).await;
}
