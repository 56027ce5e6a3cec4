//! The listener against bots: slow and idle connections are closed on time, connections and
//! HTTP/2 streams are capped, `X-Forwarded-For` is believed only from trusted proxies, event
//! streams are capped per client, and `/metrics` can live on a listener of its own. All through
//! the real binary, over real sockets.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flash_sale_tests::{
    AppOptions, Backend, Client, TestApp, binary, eventually, into_response, on_both_databases,
    sse::{End, Reader, stream_client},
};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn with_env(env: &[(&'static str, &str)]) -> AppOptions {
    AppOptions {
        extra_env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        ..Default::default()
    }
}

/// The API's `host:port`.
fn addr_of(app: &TestApp) -> String {
    app.server.addr.clone().expect("the API's address")
}

/// A client that opens a new connection for every request: with short idle timeouts a pooled
/// connection may be closed by the server just as it is reused.
fn unpooled(address: &str) -> Client {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    Client::with_http(address, http)
}

/// The client of the `/metrics` listener of `METRICS_ADDR`, found by its log line.
async fn metrics_listener(app: &TestApp) -> Client {
    let line = app
        .server
        .line_eventually("the metrics listener", |v| {
            v["message"] == "metrics listening"
        })
        .await;
    let addr = line["addr"].as_str().expect("its address");
    unpooled(&format!("http://{addr}"))
}

/// Sends `GET path` on a raw HTTP/1.1 connection and reads the whole answer; its status.
async fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut read_more = async |buf: &mut Vec<u8>| {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("the answer within 10 s")
            .expect("read the answer");
        assert!(n > 0, "the connection closed before the answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        read_more(&mut buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    while buf.len() < end + 4 + length {
        read_more(&mut buf).await;
    }
    status
}

/// How long until the server closes `stream` (reads end or fail), reading and dropping whatever
/// it sends; fails the test if that takes longer than `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closing = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    match tokio::time::timeout(within, closing).await {
        Ok(()) => started.elapsed(),
        Err(_) => panic!("the server kept the connection open for {within:?}"),
    }
}

/// The `q`-quantile of `latencies` (sorted here).
fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    latencies.sort();
    let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
    latencies[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_connections_are_closed_at_the_header_timeout_while_others_are_served() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        with_env(&[("HTTP_HEADER_TIMEOUT_SECONDS", "2")]),
    )
    .await;
    let addr = addr_of(&app);

    // A well-behaved client asks in a loop, four requests at a time on connections of its own,
    // for as long as the bots are at it.
    let stop = Arc::new(AtomicBool::new(false));
    let normal: Vec<_> = (0..4)
        .map(|_| {
            let (client, stop) = (app.client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let r = client.get("/healthz").await;
                    latencies.push(sent.elapsed());
                    assert_eq!(r.status, 200, "{}", r.body);
                }
                latencies
            })
        })
        .collect();

    // 500 bots: a request head begun, then one more byte of a header every 500 ms, never done.
    let bots: Vec<_> = (0..500)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(&addr).await.expect("connect");
                let started = Instant::now();
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow")
                    .await
                    .expect("send the start");
                let (mut read, mut write) = stream.into_split();
                let trickle = async move {
                    loop {
                        // The bot's pace: the attack itself, not a wait for anything.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if write.write_all(b"w").await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                let closed = async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                };
                // The bound the test asserts: the timeout, and three seconds of slack for a busy
                // machine.
                let within = Duration::from_secs(2 + 3);
                tokio::select! {
                    () = closed => {}
                    () = trickle => {}
                    () = tokio::time::sleep(within) => {
                        panic!("a slow request head was still open after {within:?}");
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    let mut closed_after = Vec::new();
    for bot in bots {
        closed_after.push(bot.await.expect("bot"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in normal {
        latencies.extend(task.await.expect("the well-behaved client"));
    }

    let earliest = closed_after.iter().min().copied().unwrap_or_default();
    assert!(
        earliest >= Duration::from_millis(1900),
        "a bot was cut before the 2 s header timeout: after {earliest:?}"
    );
    assert!(
        latencies.len() >= 20,
        "only {} requests served",
        latencies.len()
    );
    let p99 = quantile(&mut latencies, 0.99);
    assert!(
        p99 < Duration::from_secs(1),
        "p99 {p99:?} over {} requests",
        latencies.len()
    );
    let metrics = unpooled(&app.address);
    let closed = metrics
        .metric("http_connections_closed_total{reason=\"header_timeout\"}")
        .await;
    assert_eq!(closed, 500.0, "closed for their header timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_trickled_in_is_cut_at_the_header_timeout_too() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        with_env(&[("HTTP_HEADER_TIMEOUT_SECONDS", "1")]),
    )
    .await;
    let product = app.create_product(5).await;
    let mut stream = TcpStream::connect(addr_of(&app)).await.expect("connect");
    let body = json!({"product_id": product, "qty": 1}).to_string();
    let head = format!(
        "POST /api/holds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len() + 200
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.expect("head");
    // The body, a byte every 200 ms (a slow client's pace, not a wait): the head is whole, the
    // request never arrives.
    let (mut read, mut write) = stream.into_split();
    let trickle = async move {
        for byte in body.bytes().chain(std::iter::repeat(b' ')) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(&[byte]).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let closed = async move {
        let mut buf = [0u8; 1024];
        if let Ok(n @ 1..) = read.read(&mut buf).await {
            panic!("answered: {}", String::from_utf8_lossy(&buf[..n]));
        }
    };
    // The bound the test asserts: the 1 s timeout, and three seconds of slack.
    tokio::select! {
        () = closed => {}
        () = trickle => {}
        () = tokio::time::sleep(Duration::from_secs(1 + 3)) => panic!("still open after 4 s"),
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    assert_eq!(app.available(product).await, 5, "no hold was made");
}

on_both_databases!(
    idle_connections_are_closed_and_open_streams_are_not,
    forwarded_for_counts_only_from_trusted_proxies,
    a_client_may_hold_only_so_many_streams_open
);

async fn idle_connections_are_closed_and_open_streams_are_not(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        with_env(&[
            ("HTTP_IDLE_TIMEOUT_SECONDS", "1"),
            ("HTTP_HEADER_TIMEOUT_SECONDS", "1"),
        ]),
    )
    .await;
    let fresh = unpooled(&app.address);
    let product = fresh.create_product(5).await;
    let http = stream_client();
    let r = http
        .get(format!("{}/api/products/{product}/stream", app.address))
        .send()
        .await
        .expect("open the stream");
    assert_eq!(r.status(), 200);
    let mut stream = Reader::new(r);
    stream
        .next_event("stock", Duration::from_secs(5))
        .await
        .expect("the first event");

    // A keep-alive connection that made one request and then says nothing.
    let mut idle = TcpStream::connect(addr_of(&app)).await.expect("connect");
    assert_eq!(get_on(&mut idle, "/healthz").await, 200);
    let after = closed_within(&mut idle, Duration::from_secs(1 + 3)).await;
    // Counted from when this side had read the answer, a moment after the server wrote it.
    assert!(
        after >= Duration::from_millis(500),
        "closed after {after:?}"
    );

    // The stream has written nothing since its first event (its keep-alive comments come
    // every 10 s), and it has been open longer than both timeouts: it is still open...
    match stream.next(Duration::from_secs(3)).await {
        Err(End::TimedOut) => {}
        other => panic!("the stream should be open and quiet, got {other:?}"),
    }
    // ...and still delivers.
    assert_eq!(fresh.hold(product, 2).await.status, 201);
    let level = stream
        .next_event("stock", Duration::from_secs(3))
        .await
        .expect("a change");
    assert_eq!(level["available_stock"], 3);
    let idle_closed = fresh
        .metric("http_connections_closed_total{reason=\"idle_timeout\"}")
        .await;
    assert!(idle_closed >= 1.0, "{idle_closed}");
}

async fn forwarded_for_counts_only_from_trusted_proxies(backend: Backend) {
    let limit = ("HOLD_RATE_LIMIT_PER_SECOND", "5");
    let app = TestApp::spawn_with(backend, with_env(&[limit])).await;
    let product = app.create_product(1000).await;
    let proxied = with_env(&[limit, ("TRUSTED_PROXIES", "127.0.0.1")]);
    let behind_proxy = app.spawn_another_api(&proxied);
    let behind_proxy = Client::new(&behind_proxy);

    // 20 holds at once, each claiming another address; the limiter allows a burst of 5,
    // and 5 more per second the burst takes.
    let holds = async |client: &Client, forwarded: fn(usize) -> String| {
        let started = Instant::now();
        let answers = client
            .all_at_once(20, move |c, i| async move {
                let r = c
                    .http
                    .post(format!("{}/api/holds", c.address))
                    .header("x-forwarded-for", forwarded(i))
                    .json(&json!({"product_id": product, "qty": 1}))
                    .send()
                    .await
                    .expect("hold");
                into_response(r).await
            })
            .await;
        let allowed = 5 + (started.elapsed().as_millis() / 200) as usize;
        let served = answers.iter().filter(|r| r.status != 429).count();
        for r in answers.iter().filter(|r| r.status == 429) {
            assert_eq!(r.code(), "rate_limited", "{}", r.body);
        }
        (served, allowed)
    };

    // Not from a trusted proxy: the header is the client's own claim, ignored.
    let (served, allowed) = holds(&app.client, |i| format!("198.51.100.{i}")).await;
    assert!(
        served <= allowed,
        "{served} holds served, {allowed} allowed"
    );

    // From a trusted proxy: each forwarded address is a client of its own.
    let (served, _) = holds(&behind_proxy, |i| format!("198.51.100.{}", 100 + i)).await;
    assert_eq!(served, 20, "every client within its own limit");

    // A made-up entry left of the proxy's own is the client's claim: the client is the
    // rightmost address the proxy did not vouch for itself.
    let (served, allowed) = holds(&behind_proxy, |i| format!("192.0.2.{i}, 203.0.113.7")).await;
    assert!(
        served <= allowed,
        "{served} holds served, {allowed} allowed"
    );
}

async fn a_client_may_hold_only_so_many_streams_open(backend: Backend) {
    let app = TestApp::spawn_with(
        backend,
        with_env(&[
            ("STREAM_MAX_PER_CLIENT", "2"),
            ("TRUSTED_PROXIES", "127.0.0.1"),
        ]),
    )
    .await;
    let product = app.create_product(5).await;
    let url = format!("{}/api/products/{product}/stream", app.address);
    let http = stream_client();
    let open = async |forwarded: Option<&str>| {
        let mut req = http.get(&url);
        if let Some(f) = forwarded {
            req = req.header("x-forwarded-for", f);
        }
        req.send().await.expect("open a stream")
    };
    let first = open(None).await;
    let second = open(None).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );

    let third = open(None).await;
    // Checked before the body is read: a stream served would never end.
    assert_eq!(third.status(), 429, "a third stream of one client");
    let third = into_response(third).await;
    assert_eq!(third.code(), "rate_limited", "{}", third.body);
    assert_eq!(third.content_type, "application/problem+json");
    let retry_after = third
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "{:?}", third.headers);

    // Another client, behind the trusted proxy, has places of its own.
    let other = open(Some("198.51.100.20")).await;
    assert_eq!(other.status(), 200);
    let mut other = Reader::new(other);
    other
        .next_event("stock", Duration::from_secs(5))
        .await
        .expect("its first event");

    // Closing a stream gives its place back.
    drop(first);
    let _again = eventually(
        "a place after a stream closed",
        Duration::from_secs(10),
        || async {
            let r = open(None).await;
            (r.status() == 200).then_some(r)
        },
    )
    .await;
}

/// With buyer tokens, each signed-in buyer has its own streams wherever it connects from (many
/// buyers share one address behind a carrier's NAT); without a token, the address counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_in_buyers_each_hold_their_own_streams() {
    let mut options = flash_sale_tests::tokens::jwt_options();
    options
        .extra_env
        .push(("STREAM_MAX_PER_CLIENT", "2".into()));
    let app = TestApp::spawn_with(Backend::Sqlite, options).await;
    let product = app.create_product(5).await;
    let url = format!("{}/api/products/{product}/stream", app.address);
    let http = stream_client();
    let open = async |token: Option<&str>| {
        let mut req = http.get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.expect("open a stream").status().as_u16()
    };
    let (ann, bob) = (
        flash_sale_tests::tokens::buyer_token("ann"),
        flash_sale_tests::tokens::buyer_token("bob"),
    );
    let opened = futures::future::join_all([
        open(Some(&ann)),
        open(Some(&ann)),
        open(Some(&bob)),
        open(Some(&bob)),
        open(None),
        open(None),
    ])
    .await;
    assert_eq!(opened, [200; 6], "two each: ann, bob and the address");
    assert_eq!(open(Some(&ann)).await, 429, "ann's third");
    assert_eq!(
        open(Some("not.a.token")).await,
        429,
        "a bad token counts as the address"
    );
    assert_eq!(
        open(Some(&flash_sale_tests::tokens::buyer_token("cy"))).await,
        200,
        "cy's first"
    );
}

/// An HTTP/2 frame: its type, flags, stream and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK "literal header field without indexing" whose name is entry `index` of the static
/// table (RFC 7541, 6.2.2), with a short value.
fn literal(index: u8, value: &str) -> Vec<u8> {
    assert!(index < 16 && value.len() < 127);
    let mut field = vec![index, value.len() as u8];
    field.extend(value.as_bytes());
    field
}

async fn read_frame(stream: &mut TcpStream) -> Frame {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.expect("a frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .expect("a frame payload");
    Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// Plain-text HTTP/2 with prior knowledge, in raw frames: 300 streams opened at once on one
/// connection, 100 (`HTTP2_MAX_STREAMS`' default) answered and the rest refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http2_connection_gets_100_concurrent_streams() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        with_env(&[("STREAM_MAX_PER_CLIENT", "1000")]),
    )
    .await;
    let product = app.create_product(5).await;
    let mut conn = TcpStream::connect(addr_of(&app)).await.expect("connect");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let path = format!("/api/products/{product}/stream");
    let block: Vec<u8> = [
        literal(2, "GET"),  // :method
        literal(6, "http"), // :scheme
        literal(4, &path),  // :path
        literal(1, "test"), // :authority
    ]
    .concat();
    for i in 0..300 {
        // END_STREAM | END_HEADERS: a GET without a body.
        out.extend(frame(HEADERS, 0x1 | 0x4, 1 + 2 * i, &block));
    }
    conn.write_all(&out).await.expect("send the streams");

    let mut advertised = None;
    let mut answered = std::collections::BTreeSet::new();
    let mut refused = std::collections::BTreeSet::new();
    let reading = async {
        while answered.len() + refused.len() < 300 {
            let f = read_frame(&mut conn).await;
            match f.kind {
                SETTINGS if f.flags & 0x1 == 0 => {
                    for setting in f.payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([setting[0], setting[1]]);
                        if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                            advertised = Some(u32::from_be_bytes([
                                setting[2], setting[3], setting[4], setting[5],
                            ]));
                        }
                    }
                }
                HEADERS => {
                    // HPACK's static entry 8 is `:status: 200`: each admitted stream is served.
                    assert_eq!(
                        f.payload.first(),
                        Some(&0x88),
                        "stream {} not a 200",
                        f.stream
                    );
                    answered.insert(f.stream);
                }
                RST_STREAM => {
                    let code = u32::from_be_bytes([
                        f.payload[0],
                        f.payload[1],
                        f.payload[2],
                        f.payload[3],
                    ]);
                    assert_eq!(code, REFUSED_STREAM, "stream {} reset", f.stream);
                    refused.insert(f.stream);
                }
                DATA => {}
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .unwrap_or_else(|_| panic!("not every stream was answered or refused within 30 s"));
    assert_eq!(advertised, Some(100), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!((answered.len(), refused.len()), (100, 200));
    assert!(answered.is_disjoint(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_max_connections_new_ones_are_closed_and_open_ones_served() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        with_env(&[
            ("HTTP_MAX_CONNECTIONS", "50"),
            ("METRICS_ADDR", "127.0.0.1:0"),
        ]),
    )
    .await;
    let metrics = metrics_listener(&app).await;
    let addr = addr_of(&app);
    let open_gauge = async |want: f64| {
        eventually(
            &format!("{want} open connections"),
            Duration::from_secs(10),
            || async { (metrics.metric("http_connections_open").await == want).then_some(()) },
        )
        .await
    };
    let connect = async || TcpStream::connect(&addr).await.expect("connect");

    let mut kept = Vec::new();
    for _ in 0..50 {
        kept.push(connect().await);
    }
    open_gauge(50.0).await;
    for _ in 50..60 {
        let mut refused = connect().await;
        closed_within(&mut refused, Duration::from_secs(2)).await;
    }
    // The listener counts a refusal just after it closes the socket, so the last one may be
    // seen closed a moment before it is counted.
    let over_capacity = "http_connections_closed_total{reason=\"over_capacity\"}";
    eventually(
        "10 connections counted over capacity",
        Duration::from_secs(10),
        || async { (metrics.metric(over_capacity).await == 10.0).then_some(()) },
    )
    .await;

    // The 50 are served, all at once.
    let statuses = futures::future::join_all(kept.iter_mut().map(|s| get_on(s, "/healthz"))).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // Five leave: five new ones are served, and the next is closed again.
    kept.truncate(45);
    open_gauge(45.0).await;
    for _ in 0..5 {
        let mut s = connect().await;
        assert_eq!(get_on(&mut s, "/healthz").await, 200);
        kept.push(s);
    }
    let mut refused = connect().await;
    closed_within(&mut refused, Duration::from_secs(2)).await;
    assert_eq!(get_on(&mut kept[0], "/healthz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_addr_serves_metrics_there_and_not_on_bind_addr() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        with_env(&[("METRICS_ADDR", "127.0.0.1:0")]),
    )
    .await;
    let metrics = metrics_listener(&app).await;
    assert_eq!(app.get("/healthz").await.status, 200);
    let text = metrics.metrics_text().await;
    assert!(text.contains("http_connections_open"), "{text}");
    assert!(text.contains("http_requests_total"), "{text}");

    let on_api = app.get("/metrics").await;
    assert_eq!(
        (on_api.status, on_api.code()),
        (404, "not_found"),
        "{}",
        on_api.body
    );
    assert_eq!(on_api.content_type, "application/problem+json");
}

#[test]
fn listener_settings_are_listed_and_checked_at_start() {
    let help = Command::new(binary("flash-sale-api"))
        .arg("--help")
        .output()
        .expect("--help");
    let text = String::from_utf8_lossy(&help.stdout);
    for (var, default) in [
        ("HTTP_HEADER_TIMEOUT_SECONDS", Some("10")),
        ("HTTP_IDLE_TIMEOUT_SECONDS", Some("60")),
        ("HTTP_MAX_CONNECTIONS", Some("25000")),
        ("HTTP2_MAX_STREAMS", Some("100")),
        ("STREAM_MAX_PER_CLIENT", Some("8")),
        ("METRICS_ADDR", None),
        ("TRUSTED_PROXIES", None),
    ] {
        let line = text
            .lines()
            .position(|l| l.contains(&format!("env: {var}")))
            .unwrap_or_else(|| panic!("--help lacks {var}:\n{text}"));
        if let Some(default) = default {
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
    }
    for (var, bad) in [
        ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("HTTP_HEADER_TIMEOUT_SECONDS", "ten"),
        ("HTTP_IDLE_TIMEOUT_SECONDS", "-1"),
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP2_MAX_STREAMS", "many"),
        ("STREAM_MAX_PER_CLIENT", "0"),
        ("METRICS_ADDR", "nowhere"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
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
