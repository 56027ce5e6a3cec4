//! `GET /api/products/{id}/stream`: live stock as Server-Sent Events, through the real binaries.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use flash_sale_tests::{
    AppOptions, Backend, Client, TestApp, binary, eventually, metric_in, on_both_databases,
    servers::{ScratchMariaDb, com_select},
    sse::{End, Item, Reader, stream_client},
};
use serde_json::{Value, json};

/// The contract's default `STOCK_STREAM_INTERVAL_MS`.
const INTERVAL: Duration = Duration::from_millis(250);
/// The contract's bound: an event within the interval plus a second of the change's commit.
const PROMPT: Duration = Duration::from_millis(250 + 1000);

fn with_env(env: &[(&'static str, &str)]) -> AppOptions {
    AppOptions {
        extra_env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        ..Default::default()
    }
}

/// Opens a product's stream on `client`'s process.
async fn open(http: &reqwest::Client, client: &Client, product: i64) -> reqwest::Response {
    http.get(format!("{}/api/products/{product}/stream", client.address))
        .send()
        .await
        .expect("open stream")
}

/// Opens a stream that must answer 200, and reads its first event.
async fn follow(http: &reqwest::Client, client: &Client, product: i64) -> (Reader, Value) {
    let r = open(http, client, product).await;
    assert_eq!(r.status(), 200, "stream of product {product}");
    let mut reader = Reader::new(r);
    let first = reader
        .next_event("stock", Duration::from_secs(5))
        .await
        .expect("the first event comes at once");
    (reader, first)
}

fn level(product: i64, stock: i64, available: i64) -> Value {
    json!({"id": product, "stock": stock, "available_stock": available})
}

/// Waits until the next event differs from nothing but keep-alives and returns it with how
/// long it took.
async fn next_change(reader: &mut Reader, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    let v = reader
        .next_event("stock", within)
        .await
        .unwrap_or_else(|e| panic!("no event within {within:?}: {e:?}"));
    (v, started.elapsed())
}

/// Asserts that no event arrives for `quiet` (keep-alive comments are fine).
async fn assert_no_event(reader: &mut Reader, quiet: Duration) {
    match reader.next_event("stock", quiet).await {
        Err(End::TimedOut) => {}
        other => panic!("expected no event for {quiet:?}, got {other:?}"),
    }
}

/// Waits for the stream hub's next check (`stock_stream_checks_total` moves on): the product's
/// task is running, and whatever listeners joined before it are served by its ticks alone.
async fn until_the_hub_checks(client: &Client) {
    let before = client.metric("stock_stream_checks_total").await;
    eventually(
        "a check by the stream hub",
        Duration::from_secs(5),
        || async { (client.metric("stock_stream_checks_total").await > before).then_some(()) },
    )
    .await;
}

fn kill_term(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

on_both_databases!(
    holds_through_another_process_reach_the_stream_within_the_interval,
    an_expired_hold_comes_back_on_the_stream_without_the_worker,
    an_unknown_product_is_404_before_any_event,
    beyond_max_clients_is_503_with_retry_after_until_a_stream_closes,
    sigterm_ends_open_streams_cleanly_and_at_once,
    idle_streams_get_a_comment_line_at_least_every_15_seconds,
    checks_per_second_do_not_grow_with_listeners
);

async fn holds_through_another_process_reach_the_stream_within_the_interval(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(10).await;
    let other = app.spawn_another_api(&AppOptions::default());
    let writer = app.client.on(&other);
    let http = stream_client();

    let r = open(&http, &app.client, product).await;
    assert_eq!(r.status(), 200);
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    assert!(
        r.headers().contains_key("x-request-id"),
        "every answer carries X-Request-Id"
    );
    let mut reader = Reader::new(r);
    let first = reader
        .next_event("stock", Duration::from_secs(5))
        .await
        .expect("first event");
    assert_eq!(first, level(product, 10, 10));

    // A hold, its release, an order and its payment, all through the OTHER process.
    let hold = writer.hold(product, 3).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let (v, took) = next_change(&mut reader, PROMPT).await;
    assert_eq!(v, level(product, 10, 7));
    assert!(took <= PROMPT, "took {took:?}");
    // Only changes are pushed: nothing more while nothing changes.
    assert_no_event(&mut reader, INTERVAL * 4).await;

    let released = writer
        .release(hold.body["hold_id"].as_i64().expect("hold id"))
        .await;
    assert_eq!(released.status, 200);
    let (v, took) = next_change(&mut reader, PROMPT).await;
    assert_eq!(v, level(product, 10, 10), "released after {took:?}");

    let hold = writer.hold(product, 2).await.body["hold_id"]
        .as_i64()
        .expect("hold id");
    let (v, _) = next_change(&mut reader, PROMPT).await;
    assert_eq!(v, level(product, 10, 8));
    let order = writer.order(hold).await.body["order_id"]
        .as_i64()
        .expect("order id");
    let paid = writer
        .webhook(json!({"idempotency_key": "stream-pay", "order_id": order, "status": "success"}))
        .await;
    assert_eq!(paid.body["order_status"], "paid", "{}", paid.body);
    let (v, took) = next_change(&mut reader, PROMPT).await;
    assert_eq!(
        v,
        level(product, 8, 8),
        "a payment lowers stock; after {took:?}"
    );
    assert_no_event(&mut reader, INTERVAL * 3).await;
}

async fn an_expired_hold_comes_back_on_the_stream_without_the_worker(backend: Backend) {
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(1)).await;
    let product = app.create_product(5).await;
    let http = stream_client();
    let (mut reader, first) = follow(&http, &app.client, product).await;
    assert_eq!(first, level(product, 5, 5));
    assert_eq!(app.hold(product, 2).await.status, 201);
    assert_eq!(
        next_change(&mut reader, PROMPT).await.0,
        level(product, 5, 3)
    );
    // No worker runs: the stream's read counts expired holds out, as GET does.
    let (v, took) = next_change(&mut reader, Duration::from_secs(1) + PROMPT).await;
    assert_eq!(v, level(product, 5, 5), "back after {took:?}");
}

async fn an_unknown_product_is_404_before_any_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let http = stream_client();
    let r = open(&http, &app.client, 987_654).await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
    let r = flash_sale_tests::into_response(r).await;
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.code(), "product_not_found");
    for bad in ["abc", "1.5", "99999999999999999999"] {
        let r = app.get(&format!("/api/products/{bad}/stream")).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "malformed_request"),
            "{bad}: {}",
            r.body
        );
        assert_eq!(r.body["errors"][0]["field"], "id");
    }
    // A refused stream holds no place: the process still serves (and checks nothing).
    assert_eq!(app.client.metric("stock_stream_clients").await, 0.0);
    assert_eq!(app.client.metric("stock_stream_checks_total").await, 0.0);
}

async fn beyond_max_clients_is_503_with_retry_after_until_a_stream_closes(backend: Backend) {
    let app = TestApp::spawn_with(backend, with_env(&[("STOCK_STREAM_MAX_CLIENTS", "2")])).await;
    let product = app.create_product(5).await;
    let http = stream_client();
    let (a, _) = follow(&http, &app.client, product).await;
    let (_b, _) = follow(&http, &app.client, product).await;
    let r = flash_sale_tests::into_response(open(&http, &app.client, product).await).await;
    assert_eq!((r.status, r.code()), (503, "unavailable"), "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(app.client.metric("stock_stream_rejected_total").await, 1.0);

    // A client that goes away gives its place back.
    drop(a);
    eventually(
        "the closed stream's place back",
        Duration::from_secs(15),
        || async {
            let r = open(&http, &app.client, product).await;
            if r.status() == 200 {
                return Some(());
            }
            assert_eq!(r.status(), 503);
            None
        },
    )
    .await;
}

async fn sigterm_ends_open_streams_cleanly_and_at_once(backend: Backend) {
    // The default grace (30 s): open streams must not make shutdown wait for it.
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(5).await;
    let http = stream_client();
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(follow(&http, &app.client, product).await.0);
    }
    let started = Instant::now();
    kill_term(app.server.pid());
    for reader in &mut readers {
        loop {
            match reader.next(Duration::from_secs(5)).await {
                Ok(Item::Comment(_)) => continue,
                Ok(item) => panic!("unexpected {item:?}"),
                Err(end) => {
                    assert_eq!(end, End::Closed, "the stream ends cleanly");
                    break;
                }
            }
        }
    }
    let mut server = app.server;
    assert!(
        server.wait(Duration::from_secs(5)),
        "clean exit:\n{}",
        server.output()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

async fn idle_streams_get_a_comment_line_at_least_every_15_seconds(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.create_product(5).await;
    let http = stream_client();
    let (mut reader, _) = follow(&http, &app.client, product).await;
    let started = Instant::now();
    match reader.next(Duration::from_secs(16)).await {
        Ok(Item::Comment(_)) => {}
        other => panic!("expected a comment line, got {other:?}"),
    }
    assert!(
        started.elapsed() <= Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

async fn checks_per_second_do_not_grow_with_listeners(backend: Backend) {
    // 301 listeners, all of them this one client.
    let options = with_env(&[
        ("STOCK_STREAM_INTERVAL_MS", "100"),
        ("STREAM_MAX_PER_CLIENT", "1000"),
    ]);
    // On MariaDB, a server of this test's own: its `Com_select` then counts this API's
    // queries and nobody else's, a count independent of the hub's own counter.
    let scratch = match backend {
        Backend::MariaDb => Some(ScratchMariaDb::start(&[]).await),
        Backend::Sqlite => None,
    };
    let app = match &scratch {
        Some(server) => TestApp::spawn_on(&server.base_url(), options).await,
        None => TestApp::spawn_with(backend, options).await,
    };
    let status = match &scratch {
        Some(server) => Some(
            sea_orm::Database::connect(server.base_url())
                .await
                .expect("status connection"),
        ),
        None => None,
    };
    let product = app.create_product(1000).await;
    let http = stream_client();
    let window = Duration::from_secs(2);
    // Checks the hub made over `window` (each is one database read), and on MariaDB the
    // SELECTs the server ran meanwhile.
    // The SELECT count is read on both sides of the hub's counter: under load reading
    // `/metrics` can take longer than a tick, and checks made during that read must not
    // count as SELECTs missing or extra.
    let reading = async || {
        let selects_before = com_select(status.as_ref()).await;
        let checks = app.client.metric("stock_stream_checks_total").await;
        let selects_after = com_select(status.as_ref()).await;
        (checks, selects_before.zip(selects_after))
    };
    let checks_over = async |window: Duration| {
        let before = reading().await;
        // The time the checks are counted over: a measurement, not a wait for a condition.
        tokio::time::sleep(window).await;
        let after = reading().await;
        let checks = after.0 - before.0;
        if let (Some((s1, s2)), Some((e1, e2))) = (before.1, after.1) {
            // Each check is one SELECT, and idle, the API runs no other.
            let (fewest, most) = (e1 - s2, e2 - s1);
            assert!(
                fewest - 2.0 <= checks && checks <= most + 2.0,
                "{fewest} to {most} SELECTs for {checks} checks"
            );
        }
        checks
    };

    let mut readers = vec![follow(&http, &app.client, product).await.0];
    until_the_hub_checks(&app.client).await;
    let one = checks_over(window).await;

    let opened =
        futures::future::join_all((0..300).map(|_| follow(&http, &app.client, product))).await;
    readers.extend(opened.into_iter().map(|(r, first)| {
        assert_eq!(first["available_stock"], 1000);
        r
    }));
    assert_eq!(app.client.metric("stock_stream_clients").await, 301.0);
    until_the_hub_checks(&app.client).await;
    let many = checks_over(window).await;

    // One check per interval (100 ms), however many listeners: about 20 in 2 s either way.
    let most = window.as_millis() as f64 / 100.0 + 2.0;
    assert!(
        one >= 5.0 && one <= most,
        "1 listener: {one} checks in {window:?}"
    );
    assert!(
        many >= 5.0 && many <= most,
        "301 listeners: {many} checks in {window:?} (1 listener: {one})"
    );

    // Every listener is live: one hold reaches all of them.
    assert_eq!(app.hold(product, 4).await.status, 201);
    let updates = futures::future::join_all(
        readers
            .iter_mut()
            .map(|r| r.next_event("stock", Duration::from_secs(3))),
    )
    .await;
    for u in updates {
        assert_eq!(
            u.expect("every listener gets the change"),
            level(product, 1000, 996)
        );
    }

    // When every listener has gone, the product's checks stop: once a rendering of
    // `/metrics` shows no streamed product, its checks counter never moves again.
    drop(readers);
    let snapshot = async || {
        let text = app.client.metrics_text().await;
        let [products, clients, checks] = [
            "stock_stream_products",
            "stock_stream_clients",
            "stock_stream_checks_total",
        ]
        .map(|name| metric_in(&text, name));
        assert!(
            text.contains("\nstock_stream_products "),
            "no products gauge in:\n{text}"
        );
        (products, clients, checks)
    };
    let (_, clients, checks) = eventually(
        "no streamed product once every listener went",
        Duration::from_secs(15),
        || async {
            let s = snapshot().await;
            (s.0 == 0.0).then_some(s)
        },
    )
    .await;
    assert_eq!(clients, 0.0, "no stream is open any more");
    // Nothing may happen now: the test watches for 500 ms that nothing does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = snapshot().await;
    assert_eq!(
        after,
        (0.0, 0.0, checks),
        "(products, clients, checks) 500 ms after the last listener went"
    );
}

#[test]
fn stream_settings_are_listed_and_checked_at_start() {
    let help = Command::new(binary("flash-sale-api"))
        .arg("--help")
        .output()
        .expect("--help");
    let text = String::from_utf8_lossy(&help.stdout);
    for (var, default) in [
        ("STOCK_STREAM_INTERVAL_MS", "250"),
        ("STOCK_STREAM_MAX_CLIENTS", "10000"),
    ] {
        let line = text
            .lines()
            .position(|l| l.contains(&format!("env: {var}")))
            .unwrap_or_else(|| panic!("--help lacks {var}:\n{text}"));
        let around = text
            .lines()
            .skip(line.saturating_sub(3))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            around.contains(&format!("default: {default}")),
            "{var} default:\n{around}"
        );
    }
    for (var, bad) in [
        ("STOCK_STREAM_INTERVAL_MS", "0"),
        ("STOCK_STREAM_INTERVAL_MS", "fast"),
        ("STOCK_STREAM_MAX_CLIENTS", "0"),
        ("STOCK_STREAM_MAX_CLIENTS", "-1"),
    ] {
        let out = Command::new(binary("flash-sale-api"))
            .arg("openapi")
            .env_clear()
            .env(var, bad)
            .output()
            .expect("start");
        assert!(!out.status.success(), "{var}={bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var),
            "{var}={bad}: the message names the variable:\n{err}"
        );
    }
}

/// Serves `html` at every path but `/report?...`, whose query it passes on: the page's way of
/// telling the test what it shows.
fn serve_page(
    listener: std::net::TcpListener,
    html: String,
    reports: std::sync::mpsc::Sender<String>,
) {
    use std::io::{BufRead, BufReader, Write};
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request_line = String::new();
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // The rest of the head, up to its blank line.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_owned();
            let (status, body) = match path.strip_prefix("/report?") {
                Some(query) => {
                    let _ = reports.send(query.to_owned());
                    ("204 No Content", String::new())
                }
                None if path == "/" => ("200 OK", html.clone()),
                None => ("404 Not Found", String::new()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// A real `EventSource` in headless Chromium, on a page of another origin (as a shop's
/// frontend is), shows the available stock fall as holds are made.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_source_in_chromium_shows_the_number_fall() {
    let page = std::net::TcpListener::bind("127.0.0.1:0").expect("page listener");
    let origin = format!("http://{}", page.local_addr().expect("page addr"));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        with_env(&[("CORS_ALLOWED_ORIGINS", &origin)]),
    )
    .await;
    let product = app.create_product(10).await;
    let html = format!(
        r#"<!doctype html><html><body><p>Available: <b id="available">…</b></p><script>
const shown = document.getElementById("available");
const source = new EventSource("{api}/api/products/{product}/stream");
source.addEventListener("stock", (e) => {{
  shown.textContent = JSON.parse(e.data).available_stock;
  fetch("/report?available=" + encodeURIComponent(shown.textContent));
}});
source.onerror = () => fetch("/report?error=" + source.readyState);
</script></body></html>"#,
        api = app.address
    );
    let (tx, reports) = std::sync::mpsc::channel();
    serve_page(page, html, tx);
    let profile = tempfile::tempdir().expect("profile dir");
    let _browser = flash_sale_tests::headless_chromium(profile.path())
        .arg(format!("{origin}/"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run chromium");

    let mut shown = Vec::new();
    // Each report must be the next number due: only changes are sent, and an error (a
    // reconnection) would be reported too.
    let mut wait_for = |want: &str, within: Duration| match reports.recv_timeout(within) {
        Ok(r) if r == format!("available={want}") => shown.push(want.to_owned()),
        Ok(r) => panic!("the page reported {r} while {want} was due (so far {shown:?})"),
        Err(_) => panic!("the page never showed {want} (so far {shown:?})"),
    };
    // The browser's start is slow on a busy machine; the events after it are not.
    wait_for("10", Duration::from_secs(30));
    for (qty, left) in [(1, "9"), (3, "6"), (4, "2")] {
        let hold = app.hold(product, qty).await;
        assert_eq!(hold.status, 201, "{}", hold.body);
        // The event's bound, plus a moment for the page to report what it shows.
        wait_for(left, PROMPT + Duration::from_millis(500));
    }
    assert_eq!(shown, ["10", "9", "6", "2"]);
}
