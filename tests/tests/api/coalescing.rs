//! The semantics of hold coalescing and single-flight reads (behaviour, not timing).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use flash_sale_tests::{AppOptions, Backend, TestApp, into_response, on_both_databases};
use serde_json::json;

fn options(env: &[(&'static str, &str)]) -> AppOptions {
    AppOptions {
        extra_env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Default::default()
    }
}

on_both_databases!(
    one_batch_grants_in_arrival_order_while_stock_lasts,
    a_failed_batch_answers_every_request_in_it,
    a_read_after_a_hold_sees_it_even_while_other_reads_are_in_flight,
    without_coalescing_holds_still_never_oversell,
    without_coalescing_a_keyed_hold_is_replayed
);

async fn one_batch_grants_in_arrival_order_while_stock_lasts(backend: Backend) {
    // A one-second gathering window puts all four requests in one batch; each is sent once
    // the one before it is queued, so the arrival order is the order below.
    let app = TestApp::spawn_with(backend, options(&[("HOLD_BATCH_WAIT_MICROS", "1000000")])).await;
    let product = app.create_product(5).await;
    let mut tasks = Vec::new();
    for (i, qty) in [3, 3, 2, 1].into_iter().enumerate() {
        let c = app.client.clone();
        let request_id = format!("arrival-{i}");
        tasks.push(tokio::spawn(async move {
            let r = c
                .http
                .post(format!("{}/api/holds", c.address))
                .header("x-request-id", request_id)
                .json(&json!({"product_id": product, "qty": qty}))
                .send()
                .await
                .expect("hold");
            into_response(r).await
        }));
        app.until_waiting("holds", i + 1).await;
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [201, 409, 201, 409],
        "3 granted, 3 refused (2 left), 2 granted, 1 refused (0 left)"
    );
    assert_eq!(answers[1].body["detail"], "only 2 available");
    assert_eq!(answers[3].body["detail"], "only 0 available");
    let first = answers[0].body["hold_id"].as_i64().expect("id");
    let third = answers[2].body["hold_id"].as_i64().expect("id");
    assert!(first < third, "ids follow arrival order");
    assert_eq!(app.available(product).await, 0);

    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("hold_batch_size_count 1\n"),
        "one transaction served all four:\n{metrics}"
    );
    app.assert_stock_conserved().await;
}

async fn a_failed_batch_answers_every_request_in_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(100).await;
    let blocker = app.block_product(product).await;

    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        app.all_at_once(30, move |c, _| async move { c.hold(product, 1).await }),
    )
    .await
    .expect("no request left hanging");
    assert!(
        answers
            .iter()
            .all(|r| r.status == 503 && r.code() == "unavailable"),
        "every request answered 503"
    );
    blocker.release().await;

    assert_eq!(
        app.hold(product, 1).await.status,
        201,
        "the next batch works"
    );
    assert_eq!(app.available(product).await, 99);
    app.assert_stock_conserved().await;
}

async fn a_read_after_a_hold_sees_it_even_while_other_reads_are_in_flight(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(40).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Readers keep a shared read in flight at every moment.
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (c, stop) = (app.client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    c.get(&format!("/api/products/{product}")).await;
                }
            })
        })
        .collect();
    for held in 1..=40 {
        assert_eq!(app.hold(product, 1).await.status, 201);
        assert_eq!(
            app.available(product).await,
            40 - held,
            "read {held} saw the hold just made"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("reader");
    }
}

async fn without_coalescing_holds_still_never_oversell(backend: Backend) {
    let app = TestApp::spawn_with(backend, options(&[("HOLD_COALESCING", "false")])).await;
    let product = app.create_product(100).await;
    let answers = app
        .all_at_once(200, move |c, _| async move { c.hold(product, 1).await })
        .await;
    assert_eq!(answers.iter().filter(|r| r.status == 201).count(), 100);
    let others: Vec<_> = answers.iter().filter(|r| r.status != 201).collect();
    assert!(
        others.iter().all(|r| r.code() == "insufficient_stock"),
        "{:?}",
        others
            .iter()
            .map(|r| (r.status, r.body.to_string()))
            .collect::<Vec<_>>()
    );
    assert_eq!(app.available(product).await, 0);
    app.assert_stock_conserved().await;
}

/// Without coalescing a hold's key is looked up as the request arrives (there is no batch to
/// do it): a retry is still the first answer, and another body still a mismatch.
async fn without_coalescing_a_keyed_hold_is_replayed(backend: Backend) {
    let app = TestApp::spawn_with(backend, options(&[("HOLD_COALESCING", "false")])).await;
    let product = app.create_product(10).await;
    let first = app.hold_with_key(product, 2, "uncoalesced-key").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = app.hold_with_key(product, 2, "uncoalesced-key").await;
    assert!(again.replayed(), "{}", again.body);
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    let other = app.hold_with_key(product, 3, "uncoalesced-key").await;
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_mismatch")
    );
    assert_eq!(app.available(product).await, 8, "one hold");
    app.assert_stock_conserved().await;
}
