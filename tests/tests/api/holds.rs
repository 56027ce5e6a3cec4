//! Holds at the stock boundary, under truly concurrent requests.

use flash_sale_tests::{Backend, TestApp, on_both_databases};

on_both_databases!(
    parallel_holds_at_the_stock_boundary_never_oversell,
    mixed_quantities_at_the_boundary_are_granted_while_stock_lasts,
    a_hold_shows_its_fields_and_lowers_available_stock,
    a_released_hold_cannot_be_released_twice,
    concurrent_releases_of_one_hold_return_its_stock_once,
    holds_and_releases_mixed_concurrently_keep_stock_conserved,
    a_stuck_product_lock_is_retried_then_answered_503_and_service_resumes,
    no_sold_out_refusal_is_given_while_a_unit_was_there_all_along
);

async fn parallel_holds_at_the_stock_boundary_never_oversell(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(100).await;

    let answers = app
        .all_at_once(200, move |c, _| async move { c.hold(product, 1).await })
        .await;

    let created = answers.iter().filter(|r| r.status == 201).count();
    let refused: Vec<_> = answers.iter().filter(|r| r.status == 409).collect();
    assert_eq!(created, 100, "exactly the stock is held");
    assert_eq!(refused.len(), 100);
    for r in &refused {
        assert_eq!(r.code(), "insufficient_stock");
        assert_eq!(r.content_type, "application/problem+json");
        assert_eq!(r.body["detail"], "only 0 available");
    }
    assert_eq!(app.available(product).await, 0);
    assert_eq!(app.hold_count(product, "active").await, 100);
    app.assert_stock_conserved().await;
}

async fn mixed_quantities_at_the_boundary_are_granted_while_stock_lasts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(50).await;
    let qty_of = |i: usize| 1 + (i * 7 % 5) as i64; // 1..=5, mixed

    let answers = app
        .all_at_once(120, move |c, i| async move {
            (qty_of(i), c.hold(product, qty_of(i)).await)
        })
        .await;

    let granted: i64 = answers
        .iter()
        .filter(|(_, r)| r.status == 201)
        .map(|(q, r)| {
            assert_eq!(r.body["qty"].as_i64(), Some(*q));
            q
        })
        .sum();
    let available = app.available(product).await;
    assert_eq!(granted + available, 50, "held + available == stock");
    assert!(available >= 0);
    // Available stock only fell during the run, so every refusal asked for more than what
    // is left now: nothing was refused that could have been granted.
    for (qty, r) in answers.iter().filter(|(_, r)| r.status != 201) {
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.code(), "insufficient_stock");
        assert!(
            *qty > available,
            "qty {qty} refused with {available} available"
        );
    }
    app.assert_stock_conserved().await;
}

async fn a_hold_shows_its_fields_and_lowers_available_stock(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;

    let r = app.hold(product, 3).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["product_id"].as_i64(), Some(product));
    assert_eq!(r.body["qty"], 3);
    assert_eq!(r.body["status"], "active");
    let id = r.body["hold_id"].as_i64().expect("hold_id");
    assert!(
        r.body["expires_at"]
            .as_str()
            .is_some_and(|t| t.contains('T'))
    );

    let p = app.get(&format!("/api/products/{product}")).await;
    assert_eq!(p.body["stock"], 10, "a hold does not touch stock");
    assert_eq!(p.body["available_stock"], 7);
    assert_eq!(p.body["price"], "10.50");

    let secret = r.body["client_secret"]
        .as_str()
        .expect("an anonymous buyer's secret");
    assert!(secret.len() >= 22, "128 random bits: {secret}");
    let h = app.get(&format!("/api/holds/{id}")).await;
    assert_eq!(h.status, 200);
    // The same hold, and the secret only where it was made.
    let mut made = r.body.clone();
    made["client_secret"] = serde_json::Value::Null;
    assert_eq!(h.body, made);
}

async fn a_released_hold_cannot_be_released_twice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let id = app.hold(product, 4).await.body["hold_id"]
        .as_i64()
        .expect("hold_id");

    let first = app.release(id).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "released");
    assert_eq!(app.available(product).await, 10);

    let again = app.release(id).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), "hold_not_active");
    assert_eq!(app.available(product).await, 10, "stock came back once");
    assert_eq!(
        app.get(&format!("/api/holds/{id}")).await.body["status"],
        "released"
    );
}

async fn concurrent_releases_of_one_hold_return_its_stock_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let id = app.hold(product, 5).await.body["hold_id"]
        .as_i64()
        .expect("hold_id");

    let answers = app
        .all_at_once(30, move |c, _| async move { c.release(id).await })
        .await;

    assert_eq!(answers.iter().filter(|r| r.status == 200).count(), 1);
    assert!(
        answers
            .iter()
            .filter(|r| r.status != 200)
            .all(|r| r.status == 409 && r.code() == "hold_not_active")
    );
    assert_eq!(app.available(product).await, 10);
    app.assert_stock_conserved().await;
}

async fn holds_and_releases_mixed_concurrently_keep_stock_conserved(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(20).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            app.hold(product, 1).await.body["hold_id"]
                .as_i64()
                .expect("id"),
        );
    }
    let ids = std::sync::Arc::new(ids);

    let answers = app
        .all_at_once(60, move |c, i| {
            let ids = ids.clone();
            async move {
                if i % 2 == 0 {
                    c.release(ids[i / 2 % ids.len()]).await
                } else {
                    c.hold(product, 1).await
                }
            }
        })
        .await;
    assert!(answers.iter().all(|r| r.status < 500), "no 5xx");
    app.assert_stock_conserved().await;
    let active = app.hold_count(product, "active").await;
    assert_eq!(app.available(product).await, 20 - active);
}

async fn a_stuck_product_lock_is_retried_then_answered_503_and_service_resumes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    // Someone else holds the product row (MariaDB) or the database write lock (SQLite).
    let blocker = app.block_product(product).await;

    let started = std::time::Instant::now();
    let r = app.hold(product, 1).await;
    let waited = started.elapsed();
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{}", r.body);
    assert!(
        waited < std::time::Duration::from_secs(5),
        "answered after {waited:?}"
    );
    let retries = app.server.metric_eventually("stock.contention", 3).await;
    assert!(retries.len() >= 3, "each retry logged: {retries:?}");
    assert!(
        retries
            .iter()
            .all(|m| m["product_id"] == product && m["attempts"].is_number())
    );
    // Reads are not blocked by the stuck writer.
    assert_eq!(app.available(product).await, 10);

    blocker.release().await;
    let r = app.hold(product, 1).await;
    assert_eq!(r.status, 201, "{}", r.body);
    app.assert_stock_conserved().await;
}

/// Sixteen buyers keep asking for one unit of a sold-out product while its ten holds are
/// released one by one. A refusal is right only if, at some moment of its request's life, no
/// unit was free. Known for certain at any moment: at least (releases answered) − (granted
/// requests sent) units were free; a refusal whose whole life that bound stays at 1 or more
/// was given while a unit was there all along.
async fn no_sold_out_refusal_is_given_while_a_unit_was_there_all_along(backend: Backend) {
    use std::time::{Duration, Instant};

    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let owner = app.stranger();
    let mut held = Vec::new();
    for _ in 0..10 {
        let r = owner.hold(product, 1).await;
        assert_eq!(r.status, 201, "{}", r.body);
        held.push(r.body["hold_id"].as_i64().expect("hold id"));
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(3);
    let releaser = tokio::spawn(async move {
        let mut released = Vec::new();
        for hold in held {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(owner.release(hold).await.status, 200);
            released.push(Instant::now());
        }
        released
    });
    let asks = futures::future::join_all((0..16).map(|_| {
        let buyer = app.stranger();
        tokio::spawn(async move {
            let mut asked = Vec::new();
            while Instant::now() < until {
                let sent = Instant::now();
                let r = buyer.hold(product, 1).await;
                assert!([201, 409].contains(&r.status), "{} {}", r.status, r.body);
                asked.push((sent, Instant::now(), r.status));
            }
            asked
        })
    }))
    .await;
    let released = releaser.await.expect("releaser");
    let asks: Vec<_> = asks.into_iter().flat_map(|a| a.expect("buyer")).collect();

    // The bound's steps: +1 when a release was answered, -1 when a later-granted request left.
    let mut steps: Vec<(Instant, i64)> = released.iter().map(|t| (*t, 1)).collect();
    steps.extend(asks.iter().filter(|a| a.2 == 201).map(|a| (a.0, -1)));
    steps.sort_by_key(|s| s.0);
    let free_at_least =
        |t: Instant| -> i64 { steps.iter().take_while(|s| s.0 <= t).map(|s| s.1).sum() };
    let refusals: Vec<_> = asks.iter().filter(|a| a.2 == 409).collect();
    assert!(refusals.len() > 100, "only {} refusals", refusals.len());
    for (sent, answered, _) in refusals {
        let lowest = steps
            .iter()
            .filter(|s| *sent < s.0 && s.0 <= *answered)
            .map(|s| free_at_least(s.0))
            .chain([free_at_least(*sent)])
            .min()
            .unwrap_or_default();
        assert!(
            lowest <= 0,
            "refused while at least {lowest} unit(s) were free from {:?} to {:?}",
            *sent - start,
            *answered - start
        );
    }
    let granted = asks.iter().filter(|a| a.2 == 201).count();
    assert_eq!(granted, 10, "every released unit was sold again");
    assert_eq!(app.available(product).await, 0);
}
