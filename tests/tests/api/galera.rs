//! The contract's "several database nodes": the real binaries on a three-node MariaDB Galera
//! cluster of each test's own (tests/src/servers.rs), with APIs and workers pointed at different
//! nodes. No oversell, every id right, one effect per key, a read through any node sees the
//! writes acknowledged before it, and a node that is killed or cut off answers 503 (never 500)
//! and serves again by itself once it is back.
//!
//! Nodes are numbered 0, 1, 2 (node 0 bootstrapped the cluster); `clients[i]` talks to the API
//! on node `i`.

use std::time::{Duration, Instant};

use flash_sale_tests::{
    AppOptions, Client, Ledger, Load, Process, Response, TestApp, TestDb, all_at_once_across,
    assert_conserved, eventually, servers::GaleraCluster, spawn_api,
};
use futures::future::join_all;
use serde_json::{Value, json};

/// A cluster with one API on each node, over one fresh database (migrated by node 0's API).
struct Cluster {
    // Field order: the API processes stop before the nodes do.
    app: TestApp,
    others: [Process; 2],
    clients: [Client; 3],
    nodes: GaleraCluster,
}

impl Cluster {
    async fn start() -> Self {
        let nodes = GaleraCluster::start().await;
        let options = AppOptions::default();
        let app = TestApp::spawn_on(&nodes.node_url(0), options.clone()).await;
        let others = [
            app.spawn_api_on(&nodes.node_url(1), &options),
            app.spawn_api_on(&nodes.node_url(2), &options),
        ];
        let clients = [
            app.client.clone(),
            app.client.on(&others[0]),
            app.client.on(&others[1]),
        ];
        Self {
            app,
            others,
            clients,
            nodes,
        }
    }

    /// What to read when a test fails: each API's warnings, errors and contention lines, and
    /// the end of each node's error log (a test that failed once, with requests unanswered for
    /// 30 s, had kept neither).
    fn diagnostics(&self) -> String {
        let apis = [&self.app.server, &self.others[0], &self.others[1]];
        let mut out = String::new();
        for (i, api) in apis.iter().enumerate() {
            out += &format!("\n--- API on node {i} ---\n{}\n", api.notable_tail(40));
        }
        for i in 0..3 {
            out += &format!("\n{}\n", self.nodes.log_tail(i));
        }
        out
    }

    /// The books, read on every node directly: the same everywhere, and conserved.
    async fn books(&self) -> Vec<Ledger> {
        books(&self.app, &self.nodes).await
    }

    /// Rows of `table` matching `condition`, counted on each node directly.
    async fn counts(&self, table: &str, condition: &str) -> Vec<i64> {
        let mut counts = Vec::new();
        for i in 0..3 {
            let url = self.app.db.url_on(&self.nodes.node_url(i));
            counts.push(self.app.count_at(&url, table, condition).await);
        }
        counts
    }
}

async fn books(app: &TestApp, nodes: &GaleraCluster) -> Vec<Ledger> {
    let first = app.ledger_at(&app.db.url_on(&nodes.node_url(0))).await;
    for i in 1..3 {
        let other = app.ledger_at(&app.db.url_on(&nodes.node_url(i))).await;
        assert_eq!(other, first, "node {i} disagrees with node 0");
    }
    assert_conserved(&first);
    first
}

fn is_unavailable(r: &Response) -> bool {
    (r.status, r.code()) == (503, "unavailable")
}

/// Up to ten examples, for a failure message.
fn some<T: std::fmt::Debug>(items: &[T]) -> String {
    format!(
        "{} in all, first: {:#?}",
        items.len(),
        &items[..items.len().min(10)]
    )
}

/// Sends `send` until it is answered 201 (serving again), for up to 30 s; every answer before
/// must be 503 `unavailable`. Returns the 201 and how long it took.
async fn until_serving<F, Fut>(what: &str, send: F) -> (Response, Duration)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let since = Instant::now();
    let serving = format!("{what}: serving again after its node came back");
    eventually(serving, Duration::from_secs(30), || async {
        let r = send().await;
        if r.status == 201 {
            return Some((r, since.elapsed()));
        }
        assert!(is_unavailable(&r), "{what}: {} {}", r.status, r.body);
        None
    })
    .await
}

/// 300 carts over two products (and 300 one-product holds on the first) at once, through the
/// three nodes' APIs: no product is oversold, every granted cart is whole (read back through
/// another node with both its lines), and the books agree on every node. 503s are retried, as
/// a client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn carts_through_three_nodes_are_whole_and_never_oversell() {
    let c = Cluster::start().await;
    let (a, b) = (
        c.clients[0].create_product(200).await,
        c.clients[0].create_product(120).await,
    );
    let send = move |c: Client, i: usize| async move {
        match i % 2 {
            0 => (i, c.cart(&[(b, 1), (a, 1)], None).await),
            _ => (i, c.hold(a, 1).await),
        }
    };
    let mut answers = all_at_once_across(&c.clients, 600, send).await;
    let (mut carts, mut held_a, mut unexpected) = (Vec::new(), 0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut retry = Vec::new();
        for (i, r) in answers {
            match (r.status, r.code()) {
                (201, _) if i % 2 == 0 => {
                    carts.push((i, r.body["hold_id"].as_i64().expect("hold_id")));
                    held_a += 1;
                }
                (201, _) => held_a += 1,
                (409, "insufficient_stock") => {}
                (503, "unavailable") => retry.push(i),
                _ => unexpected.push(format!("{} {}", r.status, r.body)),
            }
        }
        if retry.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still 503 after 60 s\n{}",
            c.diagnostics()
        );
        // A client's back-off before it retries its 503s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        answers = join_all(retry.into_iter().map(|i| send(c.clients[i % 3].clone(), i))).await;
    }
    assert!(
        unexpected.is_empty(),
        "{}\n{}",
        some(&unexpected),
        c.diagnostics()
    );
    assert_eq!(held_a, 200, "product a sells exactly its stock");
    assert!(
        carts.len() <= 120 && !carts.is_empty(),
        "{} carts",
        carts.len()
    );
    let reads = join_all(carts.iter().map(|&(i, id)| {
        let c = c.clients[(i + 1) % 3].clone();
        async move { (id, c.get(&format!("/api/holds/{id}")).await) }
    }))
    .await;
    for (id, r) in reads {
        assert_eq!(r.status, 200, "cart {id}: {}", r.body);
        assert_eq!(
            r.body["lines"].as_array().map(Vec::len),
            Some(2),
            "{}",
            r.body
        );
    }
    let books = c.books().await;
    let held = |p: i64| books.iter().find(|l| l.id == p).map(|l| l.held);
    assert_eq!(held(a), Some(200));
    assert_eq!(held(b), Some(carts.len() as i64), "one line of b per cart");
}

/// 600 holds of one unit at once, 200 through each node's API, for 300 units: exactly 300 are
/// granted and the others refused `insufficient_stock`. A 503 `unavailable` (certification
/// conflicts outlasting the retries) is allowed and retried, as a client would; no other 5xx.
/// Every granted id names its hold, read back through another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_hundred_holds_through_three_nodes_sell_exactly_the_stock() {
    let c = Cluster::start().await;
    let product = c.clients[0].create_product(300).await;
    let mut answers = all_at_once_across(&c.clients, 600, move |c, i| async move {
        (i, c.hold(product, 1).await)
    })
    .await;

    let (mut granted, mut refused, mut unavailable, mut unexpected) = (vec![], 0, 0, vec![]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut retry = Vec::new();
        for (i, r) in answers {
            match (r.status, r.code()) {
                (201, _) => granted.push((i, r.body["hold_id"].as_i64().expect("hold_id"))),
                (409, "insufficient_stock") => refused += 1,
                (503, "unavailable") => {
                    unavailable += 1;
                    retry.push(i);
                }
                _ => unexpected.push(format!("{} {}", r.status, r.body)),
            }
        }
        if retry.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still 503 after 60 s of retries\n{}",
            c.diagnostics()
        );
        // A client's back-off before it retries its 503s: the scenario's client, not a wait.
        tokio::time::sleep(Duration::from_millis(500)).await;
        answers = join_all(retry.into_iter().map(|i| {
            let c = c.clients[i % 3].clone();
            async move { (i, c.hold(product, 1).await) }
        }))
        .await;
    }
    println!(
        "600 holds: {} granted, {refused} refused, {unavailable} answers 503 (retried)",
        granted.len()
    );
    assert!(
        unexpected.is_empty(),
        "only 201, 409 insufficient_stock or 503 unavailable: {}\n{}",
        some(&unexpected),
        c.diagnostics()
    );
    assert_eq!(granted.len(), 300, "exactly the stock is granted");
    assert_eq!(refused, 300);

    let mut wrong = Vec::new();
    let reads = join_all(granted.iter().map(|&(i, id)| {
        let c = c.clients[(i + 1) % 3].clone();
        async move { (id, c.get(&format!("/api/holds/{id}")).await) }
    }))
    .await;
    for (id, r) in reads {
        if r.status != 200
            || r.body["hold_id"] != id
            || r.body["product_id"] != product
            || r.body["status"] != "active"
        {
            wrong.push(format!("hold {id}: {} {}", r.status, r.body));
        }
    }
    assert!(
        wrong.is_empty(),
        "a granted id that does not name its hold: {}",
        some(&wrong)
    );
    let ids: std::collections::HashSet<_> = granted.iter().map(|g| g.1).collect();
    assert_eq!(ids.len(), 300, "300 distinct ids");
    let books = c.books().await;
    assert_eq!((books[0].available, books[0].held), (0, 300), "{books:?}");
}

/// One write-then-read round on `product` (stock 10, held by nothing else): a hold made through
/// node 0 is seen through node 1 at once, active, with the product's available stock down; once
/// released through node 0 it is seen through node 2 at once, released, the unit back. Returns
/// what was stale or failed.
async fn read_your_writes(c: &[Client; 3], product: i64) -> Vec<String> {
    let hold = c[0].hold(product, 1).await;
    let Some(id) = hold.body["hold_id"].as_i64().filter(|_| hold.status == 201) else {
        return vec![format!(
            "hold through node 0: {} {}",
            hold.status, hold.body
        )];
    };
    let (hold, stock) = (
        format!("/api/holds/{id}"),
        format!("/api/products/{product}"),
    );
    let mut problems = Vec::new();
    let mut expect = |what: &str, r: Response, field: &str, want: Value| {
        if r.status != 200 || r.body[field] != want {
            problems.push(format!("{what}: {} {}", r.status, r.body));
        }
    };
    expect(
        "new hold through node 1",
        c[1].get(&hold).await,
        "status",
        json!("active"),
    );
    expect(
        "stock through node 1",
        c[1].get(&stock).await,
        "available_stock",
        json!(9),
    );
    expect(
        "release through node 0",
        c[0].release(id).await,
        "status",
        json!("released"),
    );
    expect(
        "released hold through node 2",
        c[2].get(&hold).await,
        "status",
        json!("released"),
    );
    expect(
        "stock through node 2",
        c[2].get(&stock).await,
        "available_stock",
        json!(10),
    );
    problems
}

/// Read-your-writes across nodes (`DATABASE_CAUSAL_READS`): 800 write-then-read rounds, 16 at a
/// time on 16 products, each writing through node 0 and reading through nodes 1 and 2 at once.
/// Not one stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_through_one_node_is_read_at_once_through_the_others() {
    const STREAMS: usize = 16;
    const ROUNDS: usize = 50;
    let c = Cluster::start().await;
    let mut products = Vec::new();
    for _ in 0..STREAMS {
        products.push(c.clients[0].create_product(10).await);
    }
    let streams = products.into_iter().map(|product| {
        let clients = c.clients.clone();
        tokio::spawn(async move {
            let mut problems = Vec::new();
            for _ in 0..ROUNDS {
                problems.extend(read_your_writes(&clients, product).await);
            }
            problems
        })
    });
    let problems: Vec<String> = join_all(streams)
        .await
        .into_iter()
        .flat_map(|t| t.expect("stream panicked"))
        .collect();
    assert!(
        problems.is_empty(),
        "stale or failed of {} rounds: {}",
        STREAMS * ROUNDS,
        some(&problems)
    );
    c.books().await;
}

/// A scheduled worker on node 2 expires holds made through node 1's API, each exactly once (one
/// `hold.expired` line per hold, counting the worker's and the API's), and the units are back on
/// every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_on_one_node_expires_holds_made_through_another_exactly_once() {
    const HOLDS: usize = 60;
    let nodes = GaleraCluster::start().await;
    let options = AppOptions::hold_ttl(1);
    let app = TestApp::spawn_on(&nodes.node_url(1), options).await;
    let product = app.create_product(100).await;
    let mut holds: Vec<i64> = join_all((0..HOLDS).map(|_| app.hold(product, 1)))
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["hold_id"].as_i64().expect("hold_id")
        })
        .collect();
    holds.sort_unstable();

    let worker = app.spawn_worker_on(&nodes.node_url(2), &[]);
    worker.metric_eventually("hold.expired", HOLDS).await;
    // A few more sweeps, to see that none expires a hold again.
    let runs = worker.metric("expiry.batch").len();
    let later = worker.metric_eventually("expiry.batch", runs + 3).await;
    assert!(later.len() >= runs + 3, "the worker stopped sweeping");
    let mut expired: Vec<i64> = worker
        .metric("hold.expired")
        .into_iter()
        .chain(app.server.metric("hold.expired"))
        .map(|m| m["hold_id"].as_i64().expect("hold_id"))
        .collect();
    expired.sort_unstable();
    assert_eq!(expired, holds, "each hold expired exactly once");
    for i in 0..3 {
        let url = app.db.url_on(&nodes.node_url(i));
        assert_eq!(
            app.count_at(&url, "holds", "status = 'expired'").await,
            HOLDS as i64
        );
    }
    let books = books(&app, &nodes).await;
    assert_eq!((books[0].available, books[0].held), (100, 0), "{books:?}");
    assert_eq!(app.available(product).await, 100);
}

/// A node killed with `kill -9` under load: its API answers 503 within 3 s, the other two go on
/// granting (or refusing) holds; the node restarts, rejoins by IST, and its API serves again by
/// itself, with no restart. Nothing acknowledged is lost and nothing is oversold: the books agree
/// on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_under_load_gives_503_there_then_rejoins_and_its_api_resumes() {
    let c = Cluster::start().await;
    let product = c.clients[0].create_product(100_000).await;
    let load = Load::holds(&c.clients, product, 2);
    for api in [&c.app.server, &c.others[0], &c.others[1]] {
        api.metric_eventually("hold.created", 10).await;
    }

    c.nodes.kill9(2);
    let killed = Instant::now();
    let to_503 = loop {
        let r = c.clients[2].hold(product, 1).await;
        if r.status == 503 {
            assert_eq!(r.code(), "unavailable", "{}", r.body);
            break killed.elapsed();
        }
        assert!(
            r.status != 201 && killed.elapsed() < Duration::from_secs(10),
            "node 2's API after its node was killed: {} {}",
            r.status,
            r.body
        );
    };
    println!("node 2's API answered 503 {to_503:?} after its node was killed");
    assert!(
        to_503 <= Duration::from_secs(3),
        "503 only after {to_503:?}"
    );
    // The survivors go on granting holds while node 2 is down.
    for (i, api) in [&c.app.server, &c.others[0]].into_iter().enumerate() {
        let before = api.metric("hold.created").len();
        let after = api
            .metric_eventually("hold.created", before + 10)
            .await
            .len();
        assert!(
            after >= before + 10,
            "node {i}'s API stopped granting holds"
        );
    }

    let restarting = Instant::now();
    c.nodes.restart(2).await;
    println!(
        "node 2 restarted {:?} after the kill, rejoined by IST in {:?}",
        restarting - killed,
        restarting.elapsed()
    );
    let (last, took) = until_serving("node 2's API", || c.clients[2].hold(product, 1)).await;
    println!("node 2's API served again {took:?} after its node was synced");

    let answers = load.finish().await;
    let after_kill = |a: &flash_sale_tests::Answer| match a.sent.checked_duration_since(killed) {
        Some(d) => format!("{d:?} after the kill"),
        None => format!("{:?} before the kill", killed - a.sent),
    };
    if let Some(a) = answers.iter().max_by_key(|a| a.took) {
        let (n, s, t) = (a.client, a.status, a.took);
        let sent = after_kill(a);
        println!(
            "load: {} answers; slowest: node {n}'s API, {s} in {t:?}, sent {sent}",
            answers.len()
        );
    }
    // Galera's own window: until the survivors agree that node 2 is gone
    // (`evs.suspect_timeout`, 3 s here, then a view change), their commits wait. A request in
    // flight then may be answered 503 (its retries ran out of time) and may take that long; the
    // README says so. Outside the window the survivors answer 201 or 409 only, and everyone
    // within the contract's 5 s.
    let stall = |a: &flash_sale_tests::Answer| {
        a.sent + a.took > killed && a.sent < killed + Duration::from_secs(5)
    };
    let wrong: Vec<_> = answers
        .iter()
        .filter(|a| {
            let expected = matches!(
                (a.client, a.status, a.code.as_str()),
                (_, 201, _) | (_, 409, "insufficient_stock") | (2, 503, "unavailable")
            );
            let stalled = a.status == 503 && a.code == "unavailable" && stall(a);
            !(expected || stalled)
        })
        .map(|a| {
            format!(
                "node {}'s API: {} {} in {:?}, sent {}",
                a.client,
                a.status,
                a.code,
                a.took,
                after_kill(a)
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "the survivors answer 201/409 (or 503 in Galera's stall), node 2's API also 503: {}",
        some(&wrong)
    );
    for a in &answers {
        let bound = if stall(a) { 6 } else { 5 };
        assert!(
            a.took < Duration::from_secs(bound),
            "a hang: {a:?}, sent {}",
            after_kill(a)
        );
    }
    // Every acknowledged hold is there; a 503 may or may not have been committed.
    let acknowledged = answers.iter().filter(|a| a.hold_id.is_some()).count() as i64 + 1;
    let unknown = answers.iter().filter(|a| a.status == 503).count() as i64;
    assert!(last.body["hold_id"].is_number());
    let held = c.books().await[0].held;
    assert!(
        (acknowledged..=acknowledged + unknown).contains(&held),
        "{held} held, {acknowledged} acknowledged, {unknown} answered 503"
    );
}

/// A node cut off from the others (`gmcast.isolate=1`) leaves the primary component: its API
/// answers 503 `unavailable`, never 500, to holds and product reads alike, and `/readyz` is 503,
/// while the other nodes go on; reconnected, it rejoins and its API serves again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_node_answers_503_then_serves_again_by_itself() {
    let c = Cluster::start().await;
    let product = c.clients[0].create_product(100).await;
    assert_eq!(c.clients[1].hold(product, 1).await.status, 201);
    until_metrics_say(&c.clients[1], &["galera_node_primary 1", "database_up 1"]).await;

    c.nodes.isolate(1, true).await;
    let isolated = Instant::now();
    // Even before the node notices it is alone, an answer comes in time, and never a 500.
    let r = c.clients[1].hold(product, 1).await;
    println!(
        "a hold right after the isolation: {} after {:?}",
        r.status,
        isolated.elapsed()
    );
    assert!(
        r.status == 201 || is_unavailable(&r),
        "{} {}",
        r.status,
        r.body
    );
    assert!(
        isolated.elapsed() < Duration::from_secs(6),
        "answered after {:?}",
        isolated.elapsed()
    );
    c.nodes
        .wait_status(1, &[("wsrep_cluster_status", "non-Primary")])
        .await;
    c.nodes.wait_status(0, &[("wsrep_cluster_size", "2")]).await;
    println!(
        "node 1 out of the primary component after {:?}",
        isolated.elapsed()
    );
    // What an operator's alert watches (FlashSaleGaleraNodeNotPrimary), probed every 5 s.
    until_metrics_say(&c.clients[1], &["galera_node_primary 0", "database_up 0"]).await;
    until_metrics_say(&c.clients[0], &["galera_node_primary 1"]).await;

    for _ in 0..3 {
        let sent = Instant::now();
        let hold = c.clients[1].hold(product, 1).await;
        let read = c.clients[1].get(&format!("/api/products/{product}")).await;
        let ready = c.clients[1].get("/readyz").await;
        let took = sent.elapsed();
        assert!(is_unavailable(&hold), "hold: {} {}", hold.status, hold.body);
        assert!(
            is_unavailable(&read),
            "product read: {} {}",
            read.status,
            read.body
        );
        assert_eq!(ready.status, 503, "/readyz: {}", ready.body);
        assert!(took < Duration::from_secs(6), "three answers took {took:?}");
        assert_eq!(
            c.clients[0].hold(product, 1).await.status,
            201,
            "node 0 serves"
        );
        assert_eq!(
            c.clients[2]
                .get(&format!("/api/products/{product}"))
                .await
                .status,
            200
        );
    }

    c.nodes.isolate(1, false).await;
    c.nodes.wait_synced(1).await;
    let (_, took) = until_serving("node 1's API", || c.clients[1].hold(product, 1)).await;
    println!("node 1's API served again {took:?} after its node was synced");
    assert_eq!(c.clients[1].get("/readyz").await.status, 200);
    until_metrics_say(&c.clients[1], &["galera_node_primary 1", "database_up 1"]).await;
    c.books().await;
}

/// Waits until the API's `/metrics` has every one of `lines` (a gauge and its value); the
/// database probe behind them runs every 5 s.
async fn until_metrics_say(client: &Client, lines: &[&str]) {
    eventually(
        format!("/metrics saying {lines:?}"),
        Duration::from_secs(20),
        || async {
            let text = client.metrics_text().await;
            lines
                .iter()
                .all(|want| text.lines().any(|l| l == *want))
                .then_some(())
        },
    )
    .await;
}

async fn hold_with_key(c: &Client, key: &str, body: &Value) -> Response {
    c.post_with_key("/api/holds", key, body).await
}

/// One effect per key across nodes: 50 order requests for one hold at once, spread over the
/// three APIs, make one order; 30 copies of one payment webhook make one payment; one
/// `Idempotency-Key` on `POST /api/holds`, sent through the three APIs at once, makes one hold.
/// A 503 `unavailable` (contention) is allowed; a second effect or another error is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hold_one_webhook_one_key_each_have_one_effect_across_nodes() {
    let c = Cluster::start().await;
    let product = c.clients[0].create_product(10).await;
    let hold = c.clients[0].hold(product, 2).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold = hold.body["hold_id"].as_i64().expect("hold_id");

    let answers = all_at_once_across(
        &c.clients,
        50,
        move |c, _| async move { c.order(hold).await },
    )
    .await;
    let created: Vec<_> = answers.iter().filter(|r| r.status == 201).collect();
    assert_eq!(
        created.len(),
        1,
        "one order made: {}",
        some(
            &answers
                .iter()
                .map(|r| (r.status, &r.body))
                .collect::<Vec<_>>()
        )
    );
    let order = created[0].body["order_id"].as_i64().expect("order_id");
    let wrong: Vec<_> = answers
        .iter()
        .filter(|r| {
            !(r.status == 201
                || (r.status == 200 && r.body["order_id"] == order)
                || is_unavailable(r))
        })
        .map(|r| (r.status, &r.body))
        .collect();
    assert!(
        wrong.is_empty(),
        "the others get that order (or 503): {}",
        some(&wrong)
    );

    let event = json!({"idempotency_key": "pay-galera", "order_id": order, "status": "success"});
    let answers = all_at_once_across(&c.clients, 30, |c, _| {
        let event = event.clone();
        async move { c.webhook(event).await }
    })
    .await;
    let wrong: Vec<_> = answers
        .iter()
        .filter(|r| {
            !(is_unavailable(r)
                || (r.status == 200
                    && r.body["order_status"] == "paid"
                    && r.body["order_id"] == order))
        })
        .map(|r| (r.status, &r.body))
        .collect();
    assert!(wrong.is_empty(), "200 paid (or 503): {}", some(&wrong));
    let first = answers
        .iter()
        .filter(|r| r.status == 200 && r.body["duplicate"] == false)
        .count();
    assert_eq!(
        first, 1,
        "one answer is the effect, the others duplicate: true"
    );

    let other = c.clients[0].create_product(10).await;
    let body = json!({"product_id": other, "qty": 1});
    let answers = all_at_once_across(&c.clients, 30, |c, _| {
        let body = body.clone();
        async move { hold_with_key(&c, "galera-key-1", &body).await }
    })
    .await;
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .filter(|r| r.status == 201)
        .map(|r| r.body["hold_id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "every 201 names the one hold: {ids:?}");
    let wrong: Vec<_> = answers
        .iter()
        .filter(|r| {
            !(r.status == 201
                || (r.status, r.code()) == (409, "idempotency_key_in_use")
                || is_unavailable(r))
        })
        .map(|r| (r.status, &r.body))
        .collect();
    assert!(
        wrong.is_empty(),
        "201, 409 idempotency_key_in_use or 503: {}",
        some(&wrong)
    );

    let one_everywhere = vec![1, 1, 1];
    assert_eq!(
        c.counts("orders", &format!("hold_id = {hold}")).await,
        one_everywhere
    );
    assert_eq!(c.counts("webhook_events", "1 = 1").await, one_everywhere);
    assert_eq!(
        c.counts("holds", &format!("product_id = {other}")).await,
        one_everywhere
    );
    for client in &c.clients {
        assert_eq!(client.stock(product).await, (8, 8), "paid once");
        assert_eq!(client.available(other).await, 9, "held once");
    }
    c.books().await;
}

/// Three APIs started at once on three nodes over one empty database, each migrating at start
/// (`AUTO_MIGRATE` on): all three start, the schema is made once (each migration recorded once,
/// on every node), no API logs an error, and each serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_apis_migrating_one_empty_database_at_once_through_three_nodes() {
    let nodes = GaleraCluster::start().await;
    let db = TestDb::new_on(&nodes.node_url(0)).await;
    let urls: Vec<String> = (0..3).map(|i| db.url_on(&nodes.node_url(i))).collect();
    let options = AppOptions::default();
    let started: Vec<Result<Process, String>> = tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            let starts: Vec<_> = urls
                .iter()
                .map(|url| s.spawn(|| spawn_api(url, &db, &options)))
                .collect();
            starts
                .into_iter()
                .map(|t| {
                    t.join().map_err(|panic| {
                        panic
                            .downcast_ref::<String>()
                            .cloned()
                            .unwrap_or_else(|| "panicked".into())
                    })
                })
                .collect()
        })
    });
    let failed: Vec<&String> = started.iter().filter_map(|s| s.as_ref().err()).collect();
    assert!(failed.is_empty(), "APIs that did not start:\n{failed:#?}");
    let mut apis: Vec<Process> = started.into_iter().map(|s| s.expect("started")).collect();
    for (i, api) in apis.iter().enumerate() {
        let errors: Vec<String> = api
            .output()
            .lines()
            .filter(|l| l.contains(r#""level":"ERROR""#))
            .map(str::to_owned)
            .collect();
        assert!(
            errors.is_empty(),
            "node {i}'s API logged errors:\n{errors:#?}"
        );
    }

    let first = apis.remove(0);
    let app = TestApp {
        client: Client::new(&first),
        server: first,
        db,
    };
    let mut migrations = Vec::new();
    for url in &urls {
        let all = app.count_at(url, "seaql_migrations", "1 = 1").await;
        let distinct = app
            .count_at(
                url,
                "(SELECT DISTINCT version FROM seaql_migrations) m",
                "1 = 1",
            )
            .await;
        assert_eq!(all, distinct, "a migration recorded twice on {url}");
        migrations.push(all);
    }
    assert!(
        migrations[0] >= 3 && migrations.iter().all(|&m| m == migrations[0]),
        "{migrations:?}"
    );
    let product = app.create_product(3).await;
    let clients: Vec<Client> = std::iter::once(app.client.clone())
        .chain(apis.iter().map(|api| app.client.on(api)))
        .collect();
    for (i, client) in clients.iter().enumerate() {
        let r = client.hold(product, 1).await;
        assert_eq!(r.status, 201, "through node {i}: {}", r.body);
    }
    books(&app, &nodes).await;
}
