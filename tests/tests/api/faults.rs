//! Fault injection against real MariaDB: processes killed with SIGKILL mid-work, connections
//! killed from the server side, the database itself stopped or killed (on a server of the test's
//! own). Afterwards every acknowledged write is there, consistent, and
//! the contract's invariants hold.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use flash_sale_tests::{
    AppOptions, Backend, Client, Load, TestApp, eventually, kill9, servers::ScratchMariaDb,
};
use sea_orm::{ConnectionTrait, Statement};

/// Every hold the API acknowledged with 201 is readable with a consistent status.
async fn assert_acknowledged_holds_survive(client: &Client, acknowledged: &[i64]) {
    for id in acknowledged {
        let r = client.get(&format!("/api/holds/{id}")).await;
        assert_eq!(r.status, 200, "acknowledged hold {id} is gone");
        assert!(
            ["active", "expired", "released", "consumed"]
                .contains(&r.body["status"].as_str().unwrap_or(""))
        );
    }
}

/// The API killed with SIGKILL while a hold load runs, once it has acknowledged holds: the
/// kill cuts requests off (some get no answer), and every hold acknowledged before it is
/// there for the API process started after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_api_under_hold_load_loses_no_acknowledged_hold() {
    let mut app = TestApp::spawn(Backend::MariaDb).await;
    let product = app.create_product(10_000).await;
    let load = Load::holds(std::slice::from_ref(&app.client), product, 8);
    load.until("20 holds acknowledged before the kill", |answers| {
        answers.iter().filter(|a| a.hold_id.is_some()).count() >= 20
    })
    .await;
    kill9(app.server.pid());
    assert!(
        !app.server.wait(Duration::from_secs(10)),
        "the API was killed, it did not exit by itself"
    );
    // The load goes on against the dead address until requests come back unanswered.
    load.until("requests unanswered after the kill", |answers| {
        answers.iter().any(|a| a.status == 0)
    })
    .await;
    let answers = load.finish().await;
    let acknowledged: Vec<i64> = answers.iter().filter_map(|a| a.hold_id).collect();
    assert!(
        acknowledged.len() >= 20,
        "{} acknowledged",
        acknowledged.len()
    );
    assert!(
        answers.iter().all(|a| a.status == 201 || a.status == 0),
        "only 201 before the kill, no answer after it: {:?}",
        answers.iter().find(|a| a.status != 201 && a.status != 0)
    );

    let restarted = app.spawn_another_api(&AppOptions::default());
    let client = app.client.on(&restarted);
    assert_acknowledged_holds_survive(&client, &acknowledged).await;
    app.assert_stock_conserved().await;
    let active = app.hold_count(product, "active").await;
    assert!(
        active >= acknowledged.len() as i64,
        "{active} active < {} acknowledged",
        acknowledged.len()
    );
    assert_eq!(client.hold(product, 1).await.status, 201, "service resumes");
}

/// A worker killed with SIGKILL after it has released some of a 5,000-hold backlog and before
/// it released all: a second worker finishes the backlog, and no hold is released twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_worker_mid_sweep_releases_each_hold_once_after_restart() {
    const BACKLOG: i64 = 5000;
    let app = TestApp::spawn(Backend::MariaDb).await;
    let product = app.create_product(20_000).await;
    // Holds already past their time, made directly (MariaDB's sequence engine).
    let db = app.db.connect().await;
    db.execute_unprepared(&format!(
        "INSERT INTO holds (product_id, qty, status, expires_at, created_at, updated_at) \
         SELECT {product}, 2, 'active', NOW(6) - INTERVAL 1 MINUTE, NOW(6) - INTERVAL 3 MINUTE, NOW(6) \
         FROM seq_1_to_{BACKLOG}"
    ))
    .await
    .expect("backlog");
    db.execute_unprepared(&format!(
        "UPDATE products SET available_stock = available_stock - {} WHERE id = {product}",
        2 * BACKLOG
    ))
    .await
    .expect("counter");
    app.assert_stock_conserved().await;

    let mut first = app.start_worker_once(50);
    first.metric_eventually("hold.expired", 1).await;
    kill9(first.pid());
    assert!(
        !first.wait(Duration::from_secs(10)),
        "the first worker was killed, it did not finish:\n{}",
        first.output()
    );
    let released_by_first = app.hold_count(product, "expired").await;
    assert!(
        (1..BACKLOG).contains(&released_by_first),
        "killed mid-sweep: {released_by_first} of {BACKLOG} released before the kill"
    );

    let mut second = app.start_worker_once(50);
    assert!(second.wait(Duration::from_secs(120)), "{}", second.output());
    let mut seen = Vec::new();
    for m in first
        .metric("hold.expired")
        .into_iter()
        .chain(second.metric("hold.expired"))
    {
        seen.push(m["hold_id"].as_i64().expect("id"));
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a hold was released twice");
    assert_eq!(app.hold_count(product, "expired").await, BACKLOG);
    assert_eq!(app.hold_count(product, "active").await, 0);
    assert_eq!(
        app.available(product).await,
        20_000,
        "every unit back, once"
    );
    app.assert_stock_conserved().await;
}

/// The API's database connections killed from the server side (`KILL CONNECTION`) five times
/// while holds are requested: every answer is a 201 or a 503, never a 500, acknowledged holds
/// are kept, and the pool recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_killed_by_the_server_under_load_give_503_never_500_and_service_resumes() {
    let app = TestApp::spawn(Backend::MariaDb).await;
    let product = app.create_product(10_000).await;
    let name = app.db.url.rsplit('/').next().expect("db name").to_owned();
    let load = Load::holds(std::slice::from_ref(&app.client), product, 8);
    let admin = &app.db.connect().await;
    let name = name.as_str();
    // Lists the API's connections and kills them; `None` until at least one kill took, since
    // a connection may close by itself between the listing and the kill.
    let kill_api_connections = || async move {
        let rows = admin
            .query_all_raw(Statement::from_string(
                admin.get_database_backend(),
                format!(
                    "SELECT ID AS id FROM information_schema.PROCESSLIST \
                     WHERE DB = '{name}' AND ID <> CONNECTION_ID()"
                ),
            ))
            .await
            .expect("processlist");
        let mut killed = 0;
        for row in &rows {
            let id: i64 = row.try_get("", "id").expect("id");
            if admin
                .execute_unprepared(&format!("KILL CONNECTION {id}"))
                .await
                .is_ok()
            {
                killed += 1;
            }
        }
        (killed > 0).then_some(killed)
    };
    let (mut killed, mut answered) = (0, 0);
    for round in 1..=5 {
        // The pool opens connections again as the load needs them: kill those, once there.
        killed += eventually(
            &format!("round {round}: the API has connections to kill"),
            Duration::from_secs(10),
            kill_api_connections,
        )
        .await;
        // The next kill comes once the load has had answers since this one: under load.
        let before = answered;
        answered = load
            .until(&format!("answers after kill round {round}"), move |a| {
                a.len() >= before + 5
            })
            .await;
    }
    assert!(killed >= 5, "only {killed} connections were killed");
    let answers = load.finish().await;
    assert!(
        answers.iter().all(|a| a.status == 201 || a.status == 503),
        "only 201 or 503: {:?}",
        answers.iter().find(|a| a.status != 201 && a.status != 503)
    );
    let acknowledged: Vec<i64> = answers.iter().filter_map(|a| a.hold_id).collect();
    assert!(
        !acknowledged.is_empty(),
        "holds were granted under the kills"
    );
    assert_acknowledged_holds_survive(&app.client, &acknowledged).await;
    assert_eq!(
        app.hold(product, 1).await.status,
        201,
        "the pool recovered by itself"
    );
    app.assert_stock_conserved().await;
}

/// Three API processes and two scheduled workers on one MariaDB, for about a minute of a
/// randomized mix: holds, releases, orders, webhooks (duplicated, shuffled, some before their
/// order), expiries and payment timeouts. Then the books must balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_apis_and_two_workers_under_a_randomized_mix_keep_every_invariant() {
    use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
    use serde_json::json;

    let seed: u64 = std::env::var("MIX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("MIX_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let options = AppOptions::hold_ttl(2);
    let app = TestApp::spawn_with(Backend::MariaDb, options.clone()).await;
    let products = [app.create_product(80).await, app.create_product(40).await];
    let others = [
        app.spawn_another_api(&options),
        app.spawn_another_api(&options),
    ];
    let clients = [
        app.client.clone(),
        app.client.on(&others[0]),
        app.client.on(&others[1]),
    ];
    let timeout = [("PAYMENT_TIMEOUT_SECONDS", "3".to_string())];
    let _workers = [app.spawn_worker(&timeout), app.spawn_worker(&timeout)];

    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    let mut round = 0u64;
    while std::time::Instant::now() < deadline {
        round += 1;
        // Holds from every API at once.
        let asks: Vec<(usize, i64, i64)> = (0..30)
            .map(|_| {
                (
                    rng.random_range(0..3),
                    products[rng.random_range(0..2)],
                    rng.random_range(1..=3),
                )
            })
            .collect();
        let holds: Vec<i64> =
            futures::future::join_all(asks.iter().map(|&(c, p, q)| clients[c].hold(p, q)))
                .await
                .into_iter()
                .filter(|r| {
                    assert!(
                        r.status == 201 || r.code() == "insufficient_stock",
                        "{}",
                        r.body
                    );
                    r.status == 201
                })
                .map(|r| r.body["hold_id"].as_i64().expect("id"))
                .collect();
        // Releases, orders and early webhooks, on random APIs, at once.
        let steps = futures::future::join_all(holds.iter().map(|&h| {
            let c = clients[rng.random_range(0..3)].clone();
            let pick = rng.random_range(0..10);
            let key = format!("early-{round}-{h}");
            async move {
                match pick {
                    0 | 1 => {
                        c.release(h).await;
                        None
                    }
                    2..=6 => c.order(h).await.body["order_id"].as_i64(),
                    7 => {
                        let r = c
                            .webhook(json!({"idempotency_key": key, "order_id": 900_000_000 + h, "status": "success", "hold_id": h}))
                            .await;
                        assert!(r.status == 200 || r.status == 409, "{}", r.body);
                        None
                    }
                    _ => None,
                }
            }
        }))
        .await;
        // Webhooks for the orders: duplicated and shuffled across the APIs.
        let mut events = Vec::new();
        for order in steps.into_iter().flatten() {
            let status = if rng.random_bool(0.6) {
                "success"
            } else {
                "failure"
            };
            let e = json!({"idempotency_key": format!("pay-{round}-{order}"), "order_id": order, "status": status});
            for _ in 0..rng.random_range(1..=3) {
                events.push(e.clone());
            }
        }
        events.shuffle(&mut rng);
        let answers = futures::future::join_all(
            events
                .iter()
                .map(|e| clients[rng.random_range(0..3)].webhook(e.clone())),
        )
        .await;
        assert!(
            answers.iter().all(|r| r.status == 200),
            "webhooks: {:?}",
            answers.iter().map(|r| &r.body).collect::<Vec<_>>()
        );
        app.assert_stock_conserved().await;
        // A random pause between rounds, so that holds expire and orders time out at random
        // points of the mix: part of the load, not a wait for anything.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
    }
    // Holds expire (2 s) and unpaid orders time out (3 s): the workers sweep them all.
    let app = &app;
    eventually(
        "every hold swept and every unpaid order timed out",
        Duration::from_secs(30),
        || async move {
            let left = app.count("holds", "status = 'active'").await
                + app.count("orders", "status = 'pending'").await;
            (left == 0).then_some(())
        },
    )
    .await;
    app.assert_stock_conserved().await;
    for (p, initial) in products.iter().zip([80, 40]) {
        app.assert_sold_within(*p, initial).await;
    }
    assert!(round >= 5, "only {round} rounds ran");
}

/// How a test takes its database away.
#[derive(Clone, Copy)]
enum Outage {
    /// A clean shutdown (`mariadb-admin shutdown`), as in maintenance.
    Stop,
    /// SIGKILL, as in a crash or the OOM killer.
    Kill9,
}

/// MariaDB taken away and started again under load: while it is down every request is answered
/// 503 `unavailable` within 6 seconds (never a 500, never a hang) and `/readyz` is 503; once it
/// is back the same API process serves again by itself within 30 s, every acknowledged hold is
/// there and stock is conserved. The test has a MariaDB of its own, so it runs with the others.
async fn outage_under_load(outage: Outage) {
    let db = ScratchMariaDb::start(&[]).await;
    let app = TestApp::spawn_on(&db.base_url(), AppOptions::default()).await;
    let product = app.create_product(100_000).await;
    let load = Load::holds(std::slice::from_ref(&app.client), product, 4);
    load.until("20 holds granted before the outage", |answers| {
        answers.iter().filter(|a| a.hold_id.is_some()).count() >= 20
    })
    .await;

    match outage {
        Outage::Stop => db.stop().await,
        Outage::Kill9 => db.kill9(),
    }
    for _ in 0..3 {
        let started = Instant::now();
        let r = app.hold(product, 1).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered after {:?}",
            started.elapsed()
        );
        assert_eq!((r.status, r.code()), (503, "unavailable"), "{}", r.body);
        assert_eq!(app.get("/readyz").await.status, 503);
    }

    db.start_again().await;
    let back = Instant::now();
    eventually(
        "serving again after the database came back",
        Duration::from_secs(30),
        || async {
            let r = app.hold(product, 1).await;
            if r.status == 201 {
                return Some(());
            }
            assert_eq!((r.status, r.code()), (503, "unavailable"), "{}", r.body);
            None
        },
    )
    .await;
    println!(
        "serving again {:?} after the database came back",
        back.elapsed()
    );
    assert_eq!(app.get("/readyz").await.status, 200);

    let answers = load.finish().await;
    let slowest = answers.iter().map(|a| a.took).max().unwrap_or_default();
    println!(
        "load: {} answers, {} of them 503, slowest {slowest:?}",
        answers.len(),
        answers.iter().filter(|a| a.status == 503).count()
    );
    for a in &answers {
        assert!(
            a.status == 201 || (a.status, a.code.as_str()) == (503, "unavailable"),
            "only 201 or 503 unavailable under load: {a:?}"
        );
        assert!(a.took < Duration::from_secs(5), "a hang: {a:?}");
    }
    let acknowledged: Vec<i64> = answers.iter().filter_map(|a| a.hold_id).collect();
    assert!(
        answers.iter().any(|a| a.status == 503),
        "the load saw the outage"
    );
    assert_acknowledged_holds_survive(&app.client, &acknowledged).await;
    assert!(app.hold_count(product, "active").await >= acknowledged.len() as i64);
    app.assert_stock_conserved().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_restarted_under_load_gives_503_then_service_resumes_by_itself() {
    outage_under_load(Outage::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_killed_under_load_gives_503_then_service_resumes_by_itself() {
    outage_under_load(Outage::Kill9).await;
}
