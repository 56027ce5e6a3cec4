//! Safe retries at full speed: an `Idempotency-Key` is committed with its effect, inside the
//! hold batch or the order transaction, so a crash at any moment leaves a retry either the
//! finished answer or no trace at all; twins of one key make one effect; callers that gave up
//! take no stock; a spray of unknown ids leaves no memory behind.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use flash_sale_tests::{
    AppOptions, Backend, Client, Response, TestApp, into_response, kill9, on_both_databases,
};
use serde_json::{Value, json};

fn options(env: &[(&'static str, &str)]) -> AppOptions {
    AppOptions {
        extra_env: env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        ..Default::default()
    }
}

/// What one keyed request of the burst got before the API was killed.
#[derive(Debug)]
enum Before {
    /// An HTTP answer, complete, so the API sent it before it died.
    Answered { status: u16, body: Value },
    /// No answer; `sent` is when the request left the client.
    NoAnswer { sent: Instant, error: String },
}

/// Twins of one key sent at once: exactly one of them ran and got 201; every other one is that
/// answer replayed (same status and body, `Idempotent-Replayed: true`) or 409
/// `idempotency_key_in_use`. Returns the one that ran.
fn assert_one_run<'a>(what: &str, answers: &'a [Response]) -> &'a Response {
    let ran: Vec<&Response> = answers
        .iter()
        .filter(|r| !r.replayed() && r.code() != "idempotency_key_in_use")
        .collect();
    assert_eq!(
        ran.len(),
        1,
        "{what}: exactly one request with the key runs; the ones that were not replays or \
         409 idempotency_key_in_use: {:?}",
        ran.iter().map(|r| (r.status, &r.body)).collect::<Vec<_>>()
    );
    let first = ran[0];
    assert_eq!(first.status, 201, "{what}: {}", first.body);
    for r in answers {
        if r.code() == "idempotency_key_in_use" {
            assert_eq!(r.status, 409, "{what}: {}", r.body);
            assert!(!r.replayed(), "{what}: a 409 in use is not a replay");
        } else if r.replayed() {
            assert_eq!(
                (r.status, &r.body),
                (first.status, &first.body),
                "{what}: a replay is the first answer, exactly"
            );
        }
    }
    first
}

on_both_databases!(
    kill_9_mid_burst_of_keyed_holds_then_every_key_has_one_hold_and_one_answer,
    one_key_sent_thirty_times_at_once_makes_one_hold_and_one_order,
    replays_are_answered_while_the_product_row_is_locked,
    holds_whose_clients_gave_up_before_their_batch_take_no_stock,
    keys_that_differ_only_in_case_are_different_keys
);

/// 300 holds, each with its own key, and `kill -9` of the API while some have been answered
/// and others are still in flight. A new API on the same database then gets every key twice,
/// all at once: each key has exactly one hold and one answer, the same every time (and the
/// same as before the crash when there was one), never "in use".
async fn kill_9_mid_burst_of_keyed_holds_then_every_key_has_one_hold_and_one_answer(
    backend: Backend,
) {
    const KEYS: usize = 300;
    const STOCK: i64 = 1_000;
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(STOCK).await;
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("burst-{i:03}")).collect());

    // Two requests a millisecond over 150 ms, so that the API is busy with some while it
    // has answered others.
    let sent = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..KEYS)
        .map(|i| {
            let (c, keys) = (app.client.clone(), keys.clone());
            let (sent, acknowledged, finished) =
                (sent.clone(), acknowledged.clone(), finished.clone());
            tokio::spawn(async move {
                // The burst's pace: this request's turn in it, not a wait for anything.
                tokio::time::sleep(Duration::from_micros(500 * i as u64)).await;
                let at = Instant::now();
                sent.fetch_add(1, Ordering::SeqCst);
                let r = c
                    .http
                    .post(format!("{}/api/holds", c.address))
                    .header("idempotency-key", &keys[i])
                    .json(&json!({"product_id": product, "qty": 1}))
                    .send()
                    .await;
                let outcome = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        match r.text().await {
                            Ok(text) => Before::Answered {
                                status,
                                body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
                            },
                            Err(e) => Before::NoAnswer {
                                sent: at,
                                error: e.to_string(),
                            },
                        }
                    }
                    Err(e) => Before::NoAnswer {
                        sent: at,
                        error: e.to_string(),
                    },
                };
                if matches!(outcome, Before::Answered { status: 201, .. }) {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
                finished.fetch_add(1, Ordering::SeqCst);
                outcome
            })
        })
        .collect();
    // Kill once at least 20 holds are acknowledged while at least 10 requests are out.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, a, f) = (
            sent.load(Ordering::SeqCst),
            acknowledged.load(Ordering::SeqCst),
            finished.load(Ordering::SeqCst),
        );
        if (a >= 20 && s - f >= 10) || f == KEYS || Instant::now() > deadline {
            break;
        }
        // Polling the burst's own counters, finer than `eventually` does: at two requests a
        // millisecond the moment to kill lasts only milliseconds.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    kill9(app.server.pid());
    let killed_at = Instant::now();
    let mut before = Vec::with_capacity(KEYS);
    for t in burst {
        before.push(t.await.expect("burst task"));
    }
    let answered = before
        .iter()
        .filter(|b| matches!(b, Before::Answered { .. }))
        .count();
    let in_flight = before
        .iter()
        .filter(|b| matches!(b, Before::NoAnswer { sent, .. } if *sent < killed_at))
        .count();
    println!(
        "before the kill: {answered} answered, {in_flight} in flight at the kill, {} sent after it",
        KEYS - answered - in_flight
    );
    for b in &before {
        if let Before::Answered { status, body } = b {
            assert_eq!(*status, 201, "before the kill, with stock to spare: {body}");
        }
    }
    assert!(
        answered >= 1,
        "some holds were acknowledged before the kill"
    );
    let errors: Vec<&str> = before
        .iter()
        .filter_map(|b| match b {
            Before::NoAnswer { error, .. } => Some(error.as_str()),
            Before::Answered { .. } => None,
        })
        .take(3)
        .collect();
    assert!(
        in_flight >= 1,
        "some requests were in flight at the kill: {errors:?}"
    );

    let restarted = app.spawn_another_api(&AppOptions::default());
    let client = app.client.on(&restarted);
    let mut rounds = Vec::new();
    for _ in 0..2 {
        rounds.push(
            client
                .all_at_once(KEYS, |c, i| {
                    let key = keys[i].clone();
                    async move { c.hold_with_key(product, 1, &key).await }
                })
                .await,
        );
    }
    let mut hold_ids = HashSet::new();
    let mut fresh = 0;
    for (i, key) in keys.iter().enumerate() {
        let (first, second) = (&rounds[0][i], &rounds[1][i]);
        for r in [first, second] {
            assert_ne!(
                r.code(),
                "idempotency_key_in_use",
                "key {key} is stuck in use after the crash: {}",
                r.body
            );
        }
        assert_eq!(first.status, 201, "key {key}: {}", first.body);
        assert_eq!(
            (second.status, &second.body),
            (first.status, &first.body),
            "key {key}: every retry gets the same answer"
        );
        assert!(second.replayed(), "key {key}: the second retry is a replay");
        if let Before::Answered { status, body } = &before[i] {
            assert_eq!(
                (first.status, &first.body),
                (*status, body),
                "key {key}: the answer before the crash, replayed"
            );
            assert!(
                first.replayed(),
                "key {key}: answered before the crash, so replayed"
            );
        }
        if !first.replayed() {
            fresh += 1;
        }
        assert_eq!(
            first.body["product_id"], product,
            "key {key}: {}",
            first.body
        );
        assert_eq!(first.body["qty"], 1, "key {key}: {}", first.body);
        hold_ids.insert(first.body["hold_id"].as_i64().expect("hold_id"));
    }
    println!(
        "after the restart: {fresh} keys ran afresh, {} were replayed",
        KEYS - fresh
    );
    assert_eq!(
        hold_ids.len(),
        KEYS,
        "one hold per key, no two keys share one"
    );
    assert_eq!(
        app.count("holds", &format!("product_id = {product}")).await,
        KEYS as i64,
        "one hold row per key, no second effect"
    );
    assert_eq!(client.stock(product).await, (STOCK, STOCK - KEYS as i64));
    app.assert_stock_conserved().await;
}

/// Thirty requests with one key and one body at once (one batch, for holds: a long gathering
/// window) make one hold; the same for thirty orders with one key. Every other answer is the
/// replay or 409 `idempotency_key_in_use`, and a later retry gets the replay.
async fn one_key_sent_thirty_times_at_once_makes_one_hold_and_one_order(backend: Backend) {
    let app = TestApp::spawn_with(backend, options(&[("HOLD_BATCH_WAIT_MICROS", "50000")])).await;
    let product = app.create_product(50).await;

    let answers = app
        .all_at_once(30, move |c, _| async move {
            c.hold_with_key(product, 2, "one-key-for-a-hold").await
        })
        .await;
    let first = assert_one_run("holds", &answers);
    assert_eq!(
        app.count("holds", &format!("product_id = {product}")).await,
        1,
        "one hold row"
    );
    assert_eq!(app.available(product).await, 48, "one effect");
    let retry = app.hold_with_key(product, 2, "one-key-for-a-hold").await;
    assert!(retry.replayed(), "{}", retry.body);
    assert_eq!((retry.status, &retry.body), (first.status, &first.body));
    let hold = first.body["hold_id"].as_i64().expect("hold_id");

    let answers = app
        .all_at_once(30, move |c, _| async move {
            c.order_with_key(hold, "one-key-for-an-order").await
        })
        .await;
    let first = assert_one_run("orders", &answers);
    assert_eq!(first.body["hold_id"], hold, "{}", first.body);
    assert_eq!(
        app.count("orders", &format!("hold_id = {hold}")).await,
        1,
        "one order row"
    );
    let retry = app.order_with_key(hold, "one-key-for-an-order").await;
    assert!(retry.replayed(), "{}", retry.body);
    assert_eq!((retry.status, &retry.body), (first.status, &first.body));
    assert_eq!(
        app.get(&format!("/api/holds/{hold}")).await.body["status"],
        "consumed"
    );
    assert_eq!(
        app.stock(product).await,
        (50, 48),
        "the order took the hold's units, once"
    );
    app.assert_stock_conserved().await;
}

/// Replays never wait for the product: with its row locked from outside, a key that made a
/// hold, a key whose request was refused and a key sent again with another body are all
/// answered while the lock is still held (a request that waited for it would be answered
/// only when its 4.5 s ran out), and nothing new is held.
async fn replays_are_answered_while_the_product_row_is_locked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(3).await;
    let granted = app.hold_with_key(product, 2, "locked-granted").await;
    assert_eq!(granted.status, 201, "{}", granted.body);
    let refused = app.hold_with_key(product, 2, "locked-refused").await;
    assert_eq!(refused.code(), "insufficient_stock", "{}", refused.body);

    let blocker = app.block_product(product).await;
    let replays = async {
        tokio::join!(
            app.hold_with_key(product, 2, "locked-granted"),
            app.hold_with_key(product, 2, "locked-refused"),
            app.hold_with_key(product, 1, "locked-granted"),
        )
    };
    let (granted_again, refused_again, other_body) =
        tokio::time::timeout(Duration::from_millis(2_500), replays)
            .await
            .expect("replays answered while the product row is still locked");
    blocker.release().await;

    for (again, first) in [(&granted_again, &granted), (&refused_again, &refused)] {
        assert!(
            again.replayed(),
            "a replay: {} {}",
            again.status,
            again.body
        );
        assert_eq!((again.status, &again.body), (first.status, &first.body));
    }
    assert_eq!(other_body.status, 422, "{}", other_body.body);
    assert_eq!(
        other_body.code(),
        "idempotency_key_mismatch",
        "{}",
        other_body.body
    );
    assert_eq!(
        app.count("holds", &format!("product_id = {product}")).await,
        1
    );
    assert_eq!(app.available(product).await, 1);
    app.assert_stock_conserved().await;
}

/// Hold requests whose clients gave up (timed out) while they waited behind a batch stuck on
/// the product's lock take no stock, whether they were still queued or in a batch that was
/// itself waiting for the lock; the ones that stayed get theirs.
async fn holds_whose_clients_gave_up_before_their_batch_take_no_stock(backend: Backend) {
    const LEAVERS: usize = 20;
    const STAYERS: usize = 10;
    const STOCK: i64 = 100;
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(STOCK).await;
    wait_for_pool_in_use(&app.client, |n| n == 0, Duration::from_secs(5)).await;

    let blocker = app.block_product(product).await;
    let started = Instant::now();
    let c = app.client.clone();
    let first = tokio::spawn(async move { c.hold(product, 1).await });
    // The first request's batch has begun once it holds a pooled connection (nothing else
    // uses one here): it is waiting for the lock, and whatever comes now is queued behind
    // it or in a next batch that waits for the same lock.
    wait_for_pool_in_use(&app.client, |n| n >= 1, Duration::from_millis(500)).await;
    let waiting_after = started.elapsed();

    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let leavers: Vec<_> = (0..LEAVERS)
        .map(|_| {
            let (http, url) = (impatient.clone(), format!("{}/api/holds", app.address));
            tokio::spawn(async move {
                http.post(url)
                    .json(&json!({"product_id": product, "qty": 1}))
                    .send()
                    .await
            })
        })
        .collect();
    let stayers: Vec<_> = (0..STAYERS)
        .map(|_| {
            let c = app.client.clone();
            tokio::spawn(async move { c.hold(product, 1).await })
        })
        .collect();
    for l in leavers {
        match l.await.expect("leaver") {
            Err(e) if e.is_timeout() => {}
            other => panic!("a leaver should have timed out waiting: {other:?}"),
        }
    }
    let left_after = started.elapsed();
    // The API drops a request whose client closed its connection, and closes its side of
    // that connection with it: once none of the API's sockets is left in CLOSE_WAIT, every
    // leaver is out of the queue. The lock must go before the first batch's lock wait times
    // out (1 s, then it retries: still correct, only slower), so this wait is bounded to
    // 800 ms after the first request; the assertions below then say whether it was enough.
    let port = port_of(&app.address);
    let release_by = started + Duration::from_millis(800);
    while close_wait_sockets(port) > 0 && Instant::now() < release_by {
        // Polling /proc/net/tcp; the deadline is not a failure but the latest the lock may go.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left_open = close_wait_sockets(port);
    let released_after = started.elapsed();
    blocker.release().await;
    println!(
        "batch waiting on the lock after {waiting_after:?}, leavers timed out after \
         {left_after:?}, lock released after {released_after:?} with {left_open} leavers' \
         connections not yet closed by the API"
    );

    let first = first.await.expect("first");
    assert_eq!(
        first.status, 201,
        "the first request stayed: {}",
        first.body
    );
    for s in stayers {
        let r = s.await.expect("stayer");
        assert_eq!(r.status, 201, "a request that stayed: {}", r.body);
    }
    assert_eq!(
        app.count("holds", &format!("product_id = {product}")).await,
        1 + STAYERS as i64,
        "only the requests that stayed got holds ({left_open} of the {LEAVERS} leavers' \
         connections were still open on the API's side when the lock went)"
    );
    assert_eq!(app.available(product).await, STOCK - 1 - STAYERS as i64);
    app.assert_stock_conserved().await;
}

/// Polls `/metrics` until the pool's `in_use` connections satisfy `ok`.
async fn wait_for_pool_in_use(client: &Client, ok: impl Fn(u64) -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let text = client.metrics_text().await;
        let in_use =
            text.lines()
                .find_map(|l| l.strip_prefix("db_pool_connections{state=\"in_use\"} "))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .expect("db_pool_connections{state=\"in_use\"} in /metrics") as u64;
        if ok(in_use) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool in_use stayed at {in_use} for {within:?}"
        );
        // Polling `/metrics`, finer than `eventually` does: the moment the first batch takes
        // its connection starts a test's 800 ms in which the lock must go.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// Sockets on local `port` whose peer has closed and which this side has not closed yet
/// (`CLOSE_WAIT`, state 08 in /proc/net/tcp).
fn close_wait_sockets(port: u16) -> usize {
    let suffix = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .filter(|cols| cols.len() > 3 && cols[1].ends_with(&suffix) && cols[3] == "08")
        .count()
}

/// The resident memory of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `n` requests for product ids that do not exist, half holds and half reads, `concurrency`
/// at a time. Returns the answers that were not 404 `product_not_found` (at most 10) and how
/// many there were.
async fn spray_unknown_ids(client: &Client, n: usize, concurrency: usize) -> (Vec<String>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (c, next, wrong) = (client.clone(), next.clone(), wrong.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    // Far above any id this test creates, and different every time.
                    let id: i64 = rand::random_range(1_000_000_000..1_000_000_000_000_000);
                    let r = if i % 2 == 0 {
                        c.http
                            .post(format!("{}/api/holds", c.address))
                            .json(&json!({"product_id": id, "qty": 1}))
                            .send()
                            .await
                    } else {
                        c.http
                            .get(format!("{}/api/products/{id}", c.address))
                            .send()
                            .await
                    };
                    let seen = match r {
                        Ok(r) => {
                            let r = into_response(r).await;
                            if (r.status, r.code()) == (404, "product_not_found") {
                                continue;
                            }
                            format!("{} {}", r.status, r.body)
                        }
                        Err(e) => format!("no answer: {e}"),
                    };
                    let mut w = wrong.lock().expect("wrong");
                    w.1 += 1;
                    if w.0.len() < 10 {
                        w.0.push(seen);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("spray worker");
    }
    let w = wrong.lock().expect("wrong");
    (w.0.clone(), w.1)
}

/// Bots asking for products that do not exist, at high concurrency: every answer is 404
/// `product_not_found`, and the API keeps nothing per id (no lingering batch task or queue, no
/// metric series per raw path), so its resident memory after 20,000 such requests is within
/// 8 MiB of where it was after a warm-up of the same kind.
///
/// MariaDB only: the memory at stake is the API's own (per-id batcher tasks and tables, metric
/// series), which is the same code on both backends; on SQLite the database engine and its page
/// cache (up to 2 MiB per pooled connection) live inside the API process too, so its RSS would
/// measure SQLite's caches as well and an 8 MiB margin would mean nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spray_of_unknown_product_ids_leaves_memory_where_it_was() {
    const CONCURRENCY: usize = 32;
    const WARM_UP: usize = 10_000;
    const SPRAY: usize = 20_000;
    const MARGIN_KIB: u64 = 8 * 1024;
    let app = TestApp::spawn(Backend::MariaDb).await;
    app.create_product(10).await;
    let pid = app.server.pid();

    let started = Instant::now();
    let (wrong, n) = spray_unknown_ids(&app.client, WARM_UP, CONCURRENCY).await;
    assert_eq!(
        n, 0,
        "warm-up: every answer is 404 product_not_found: {wrong:?}"
    );
    let before = vm_rss_kib(pid);
    println!(
        "warm-up: {WARM_UP} requests in {:?}, VmRSS {before} KiB",
        started.elapsed()
    );

    let started = Instant::now();
    let (wrong, n) = spray_unknown_ids(&app.client, SPRAY, CONCURRENCY).await;
    let took = started.elapsed();
    let after = vm_rss_kib(pid);
    println!(
        "spray: {SPRAY} requests in {took:?} ({:.0}/s), VmRSS {after} KiB ({:+} KiB)",
        SPRAY as f64 / took.as_secs_f64(),
        after as i64 - before as i64
    );
    assert_eq!(
        n, 0,
        "every answer is 404 product_not_found; {n} were not, e.g. {wrong:?}"
    );
    assert!(
        after <= before + MARGIN_KIB,
        "VmRSS grew from {before} KiB to {after} KiB (+{} KiB) over {SPRAY} unknown ids",
        after - before
    );
    assert_eq!(app.get("/healthz").await.status, 200);
}

/// Keys are compared exactly: two keys that differ only in letter case are two keys, each
/// with its own hold (a case-insensitive collation would replay one client's answer to
/// another).
async fn keys_that_differ_only_in_case_are_different_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let upper = app.hold_with_key(product, 1, "Order-ABC").await;
    let lower = app.hold_with_key(product, 1, "order-abc").await;
    assert_eq!(
        (upper.status, lower.status),
        (201, 201),
        "{} {}",
        upper.body,
        lower.body
    );
    assert!(!lower.replayed(), "the second key was taken for the first");
    assert_ne!(upper.body["hold_id"], lower.body["hold_id"]);
    assert_eq!(app.available(product).await, 8);
    let again = app.hold_with_key(product, 1, "order-abc").await;
    assert!(again.replayed());
    assert_eq!(again.body, lower.body);
}
