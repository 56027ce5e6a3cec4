//! Clients that retry, bots that hammer, and what must never reach the logs.

use std::time::Duration;

use flash_sale_tests::{AppOptions, Backend, Client, TestApp, into_response, on_both_databases};
use serde_json::{Value, json};

async fn hold_with_key(c: &Client, key: &str, body: &Value) -> flash_sale_tests::Response {
    c.post_with_key("/api/holds", key, body).await
}

on_both_databases!(
    an_idempotency_key_replays_the_first_answer_and_refuses_another_body,
    a_quoted_key_with_trailing_spaces_is_the_key_without_them,
    concurrent_retries_with_one_key_make_one_hold,
    orders_honour_idempotency_keys_and_the_worker_purges_old_ones,
    the_hold_rate_limit_answers_429_with_retry_after,
    secrets_and_webhook_bodies_never_reach_the_logs
);

async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let body = json!({"product_id": product, "qty": 2});

    let first = hold_with_key(&app.client, "retry-1", &body).await;
    assert_eq!(first.status, 201);
    let again = app
        .http
        .post(format!("{}/api/holds", app.address))
        .header("idempotency-key", "\"retry-1\"") // the draft's quoted form, same key
        .header("content-type", "application/json")
        .body(format!("{{ \"qty\": 2, \"product_id\": {product} }}"))
        .send()
        .await
        .expect("retry");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again = into_response(again).await;
    assert_eq!(
        (again.status, &again.body),
        (201, &first.body),
        "the stored answer, again"
    );
    assert_eq!(app.available(product).await, 8, "no second hold");

    let other = hold_with_key(
        &app.client,
        "retry-1",
        &json!({"product_id": product, "qty": 3}),
    )
    .await;
    assert_eq!(
        (other.status, other.code()),
        (422, "idempotency_key_mismatch")
    );
    // So is a body refused before it reaches a batch; with a fresh key it is just refused.
    let zero = json!({"product_id": product, "qty": 0});
    let refused_early = hold_with_key(&app.client, "retry-1", &zero).await;
    assert_eq!(
        (refused_early.status, refused_early.code()),
        (422, "idempotency_key_mismatch")
    );
    let fresh = hold_with_key(&app.client, "fresh-key-bad-body", &zero).await;
    assert_eq!(
        (fresh.status, fresh.code()),
        (422, "validation_error"),
        "{}",
        fresh.body
    );
    // Refusals are stored answers too: a retried 409 stays a 409.
    let big = json!({"product_id": product, "qty": 10});
    assert_eq!(
        hold_with_key(&app.client, "too-big", &big).await.status,
        409
    );
    assert_eq!(
        app.release(first.body["hold_id"].as_i64().expect("id"))
            .await
            .status,
        200
    );
    assert_eq!(
        hold_with_key(&app.client, "too-big", &big).await.status,
        409,
        "replayed, not re-run"
    );
    // Without the header nothing changes.
    assert_eq!(app.hold(product, 1).await.status, 201);
    assert_eq!(app.hold(product, 1).await.status, 201);
    let bad = hold_with_key(&app.client, "", &body).await;
    assert_eq!((bad.status, bad.code()), (400, "malformed_request"));
}

async fn a_quoted_key_with_trailing_spaces_is_the_key_without_them(backend: Backend) {
    // MariaDB's key columns ignore trailing spaces and SQLite's do not: both must answer
    // the same.
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let body = json!({"product_id": product, "qty": 1});
    let first = hold_with_key(&app.client, "\"spaced-1  \"", &body).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let bare = hold_with_key(&app.client, "spaced-1", &body).await;
    assert_eq!(
        (bare.status, &bare.body),
        (201, &first.body),
        "the same key, replayed"
    );
    assert_eq!(app.available(product).await, 9, "one hold");
    let blank = hold_with_key(&app.client, "\"   \"", &body).await;
    assert_eq!((blank.status, blank.code()), (400, "malformed_request"));
}

async fn concurrent_retries_with_one_key_make_one_hold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(50).await;
    let answers = app
        .all_at_once(30, move |c, _| async move {
            hold_with_key(&c, "same-key", &json!({"product_id": product, "qty": 1})).await
        })
        .await;
    for r in &answers {
        assert!(
            r.status == 201 || r.code() == "idempotency_key_in_use",
            "{}",
            r.body
        );
    }
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["hold_id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "every success names the same hold");
    assert_eq!(app.available(product).await, 49, "one effect");
}

async fn orders_honour_idempotency_keys_and_the_worker_purges_old_ones(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(5).await;
    let hold = app.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = |key: &'static str| {
        let c = app.client.clone();
        async move { c.order_with_key(hold, key).await }
    };
    let first = order("order-key").await;
    assert_eq!(first.status, 201);
    let again = order("order-key").await;
    assert_eq!(
        (again.status, &again.body),
        (201, &first.body),
        "replayed as first answered"
    );
    assert_eq!(app.count("idempotency_keys", "1 = 1").await, 1);

    // Keys are kept 24 hours; age this one past that and let the worker purge it.
    let db = app.db.connect().await;
    use sea_orm::ConnectionTrait;
    db.execute_unprepared("UPDATE idempotency_keys SET expires_at = created_at")
        .await
        .expect("age");
    let mut worker = app.start_worker_once(100);
    assert!(worker.wait(Duration::from_secs(30)), "{}", worker.output());
    assert_eq!(
        worker.metric("expiry.batch")[0]["purged_idempotency_keys"],
        1
    );
    assert_eq!(app.count("idempotency_keys", "1 = 1").await, 0);
}

async fn the_hold_rate_limit_answers_429_with_retry_after(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            extra_env: vec![("HOLD_RATE_LIMIT_PER_SECOND", "2".into())],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(100).await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let r = app
            .http
            .post(format!("{}/api/holds", app.address))
            .json(&json!({"product_id": product, "qty": 1}))
            .send()
            .await
            .expect("hold");
        let retry_after = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let r = into_response(r).await;
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some((r, retry_after));
        }
    }
    assert_eq!(&statuses[..2], &[201, 201], "the burst is allowed");
    let (r, retry_after) = limited.expect("some requests were limited");
    assert_eq!(r.code(), "rate_limited");
    assert!(
        retry_after
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= 1)
    );
    assert_eq!(
        app.available(product).await,
        100 - statuses.iter().filter(|s| **s == 201).count() as i64
    );
    // Reads are not limited.
    for _ in 0..10 {
        assert_eq!(
            app.get(&format!("/api/products/{product}")).await.status,
            200
        );
    }
}

async fn secrets_and_webhook_bodies_never_reach_the_logs(backend: Backend) {
    let secret = "whsec_c2VjcmV0LWZvci10aGUtbG9nLXRlc3Q9c2VjcmV0LWZvci10aGUtbG9n";
    let app = TestApp::spawn_with(
        backend,
        AppOptions {
            extra_env: vec![("WEBHOOK_SECRET", secret.into())],
            ..Default::default()
        },
    )
    .await;
    let product = app.create_product(5).await;
    let hold = app.hold(product, 1).await.body["hold_id"]
        .as_i64()
        .expect("hold");
    let order = app.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order");
    let body = json!({"idempotency_key": "log-test-key", "order_id": order, "status": "success",
                      "card_last4": "4242-should-not-be-logged"});
    assert_eq!(app.signed_webhook(secret, &body, 0).await.status, 200);
    assert_eq!(
        app.raw_webhook(&body.to_string(), &[]).await.status,
        401,
        "unsigned"
    );
    app.server.metric_exactly("webhook.processed", 1).await;
    let logs = app.server.output();
    let client_secret = app.secret_of(hold).expect("the hold's secret");
    for needle in [
        secret,
        "c2VjcmV0LWZvci10aGUtbG9nLXRlc3Q",
        flash_sale_tests::ADMIN_TOKEN,
        "4242-should-not-be-logged",
        "mysql://flash:flash",
        client_secret.as_str(),
    ] {
        assert!(!logs.contains(needle), "{needle} leaked into the logs");
    }
}

/// MariaDB only: the first request is kept running by a product row lock taken from outside. On
/// SQLite the only such lock is the database-wide write lock, which stops the retry from even
/// claiming its key (it answers 503, as it should when the database cannot be written).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_while_the_first_request_runs_is_told_the_key_is_in_use() {
    let app = TestApp::spawn(flash_sale_tests::Backend::MariaDb).await;
    let product = app.create_product(5).await;
    let blocker = app.block_product(product).await;
    let body = json!({"product_id": product, "qty": 1});
    let c = app.client.clone();
    let b = body.clone();
    let first = tokio::spawn(async move {
        let r = c
            .http
            .post(format!("{}/api/holds", c.address))
            .header("idempotency-key", "slow")
            .header("x-request-id", "first-with-slow")
            .json(&b)
            .send()
            .await
            .expect("first");
        into_response(r).await
    });
    // Queued for its batch, which waits on the blocked product: the key is claimed and busy.
    app.until_waiting("holds", 1).await;
    let second = hold_with_key(&app.client, "slow", &body).await;
    assert_eq!(
        (second.status, second.code()),
        (409, "idempotency_key_in_use"),
        "{}",
        second.body
    );
    blocker.release().await;
    let first = first.await.expect("first");
    // The first either got through once the lock went, or ran out of retries (503, which
    // is not stored: the retry then runs afresh).
    let retry = hold_with_key(&app.client, "slow", &body).await;
    if first.status == 201 {
        assert_eq!(retry.body, first.body);
    } else {
        assert_eq!(first.code(), "unavailable");
        assert_eq!(retry.status, 201);
    }
    assert_eq!(app.available(product).await, 4);
}
