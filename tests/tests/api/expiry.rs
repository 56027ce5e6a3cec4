//! Expired holds give their stock back: at once in `available_stock`, for good when the
//! worker (or a hold request that needs the stock) sweeps them, and exactly once.

use std::{collections::HashSet, time::Duration};

use flash_sale_tests::{AppOptions, Backend, TestApp, eventually, on_both_databases};

fn short_holds() -> AppOptions {
    AppOptions::hold_ttl(1)
}

/// Until the API reports every one of `holds` expired (a 1 s TTL, with room for a loaded machine).
async fn let_holds_expire(app: &TestApp, holds: &[i64]) {
    app.until_no_hold_active(holds, Duration::from_secs(10))
        .await;
}

on_both_databases!(
    expired_holds_give_their_stock_back_through_the_worker,
    available_stock_excludes_expired_holds_before_the_worker_runs,
    two_workers_and_the_api_release_each_hold_exactly_once,
    the_scheduled_worker_sweeps_by_itself_and_serves_health
);

async fn expired_holds_give_their_stock_back_through_the_worker(backend: Backend) {
    let app = TestApp::spawn_with(backend, short_holds()).await;
    let product = app.create_product(10).await;
    let a = app.hold(product, 6).await.body["hold_id"]
        .as_i64()
        .expect("id");
    let b = app.hold(product, 4).await.body["hold_id"]
        .as_i64()
        .expect("id");
    assert_eq!(app.available(product).await, 0);
    let_holds_expire(&app, &[a, b]).await;

    let mut worker = app.start_worker_once(500);
    assert!(worker.wait(Duration::from_secs(30)), "{}", worker.output());

    let expired: HashSet<i64> = worker
        .metric("hold.expired")
        .iter()
        .map(|m| m["hold_id"].as_i64().expect("hold_id"))
        .collect();
    assert_eq!(expired, HashSet::from([a, b]));
    let batch = worker.metric("expiry.batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0]["expired_count"], 2);
    assert!(batch[0]["duration_ms"].is_number());
    assert!(batch[0]["timestamp"].is_string());

    assert_eq!(app.hold_count(product, "expired").await, 2);
    assert_eq!(app.available(product).await, 10);
    assert_eq!(
        app.get(&format!("/api/holds/{a}")).await.body["status"],
        "expired"
    );
    app.assert_stock_conserved().await;

    // A second sweep finds nothing: each hold is released once.
    let mut again = app.start_worker_once(500);
    assert!(again.wait(Duration::from_secs(30)));
    assert!(again.metric("hold.expired").is_empty());
    assert_eq!(again.metric("expiry.batch")[0]["expired_count"], 0);
    assert_eq!(app.available(product).await, 10);
}

async fn available_stock_excludes_expired_holds_before_the_worker_runs(backend: Backend) {
    let app = TestApp::spawn_with(backend, short_holds()).await;
    let product = app.create_product(5).await;
    let old = app.hold(product, 5).await.body["hold_id"]
        .as_i64()
        .expect("id");
    assert_eq!(app.hold(product, 1).await.code(), "insufficient_stock");
    let_holds_expire(&app, &[old]).await;

    // No worker has run: the read already leaves the expired hold out...
    assert_eq!(app.available(product).await, 5);
    assert_eq!(
        app.get(&format!("/api/holds/{old}")).await.body["status"],
        "expired"
    );
    // ...and a hold that needs the stock reclaims it under the product lock.
    let new = app.hold(product, 5).await;
    assert_eq!(new.status, 201, "{}", new.body);
    assert_eq!(app.available(product).await, 0);
    assert_eq!(app.hold_count(product, "expired").await, 1);
    let reclaimed = app.server.metric_exactly("hold.expired", 1).await;
    assert_eq!(reclaimed[0]["hold_id"].as_i64(), Some(old));
    assert_eq!(reclaimed[0]["quantity"], 5);
    app.assert_stock_conserved().await;
}

async fn two_workers_and_the_api_release_each_hold_exactly_once(backend: Backend) {
    // Long enough for 200 holds to be made before any expires, even on a loaded machine.
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(3)).await;
    let product = app.create_product(399).await; // exactly what the 200 holds below take
    let created = app
        .all_at_once(200, move |c, i| async move {
            c.hold(product, 1 + (i % 3) as i64).await
        })
        .await;
    let held: HashSet<i64> = created
        .iter()
        .map(|r| {
            r.body["hold_id"]
                .as_i64()
                .expect("all 200 fit in the stock")
        })
        .collect();
    assert_eq!(held.len(), 200);
    assert_eq!(app.available(product).await, 0);
    let held_ids: Vec<i64> = held.iter().copied().collect();
    app.until_no_hold_active(&held_ids, Duration::from_secs(20))
        .await;

    // Two workers in small batches, and hold requests that reclaim, all at once.
    let mut w1 = app.start_worker_once(7);
    let mut w2 = app.start_worker_once(7);
    let new_holds = app
        .all_at_once(20, move |c, _| async move { c.hold(product, 2).await })
        .await;
    assert!(w1.wait(Duration::from_secs(60)), "{}", w1.output());
    assert!(w2.wait(Duration::from_secs(60)), "{}", w2.output());
    assert!(
        new_holds.iter().all(|r| r.status == 201),
        "stock was there to reclaim"
    );

    let mut seen = Vec::new();
    for m in w1
        .metric("hold.expired")
        .into_iter()
        .chain(w2.metric("hold.expired"))
        .chain(app.server.metric_settled("hold.expired").await)
    {
        seen.push(m["hold_id"].as_i64().expect("hold_id"));
    }
    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(seen.len(), unique.len(), "a hold was released twice");
    assert_eq!(unique, held, "every expired hold released");
    assert_eq!(app.hold_count(product, "expired").await, 200);
    assert_eq!(app.available(product).await, 399 - 40);
    app.assert_stock_conserved().await;
}

async fn the_scheduled_worker_sweeps_by_itself_and_serves_health(backend: Backend) {
    let app = TestApp::spawn_with(backend, short_holds()).await;
    let product = app.create_product(3).await;
    app.hold(product, 3).await;
    let worker = app.spawn_worker(&[]);
    let addr = worker.addr.clone().expect("worker addr");

    let swept = std::fmt::from_fn(|f| write!(f, "a sweep; the worker wrote:\n{}", worker.output()));
    eventually(swept, Duration::from_secs(15), || async {
        (app.hold_count(product, "expired").await >= 1).then_some(())
    })
    .await;
    assert_eq!(app.available(product).await, 3);
    assert!(!worker.metric_eventually("expiry.batch", 1).await.is_empty());

    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics");
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap_or_default()
            .contains("expiry_runs_total")
    );
}
