//! Fair admission at scale: several API and worker processes on one queue, a queue of
//! signed-in buyers, the ticket stream's cost with a thousand listeners, and the queue's
//! figures on `/metrics`. Real binaries, real concurrent requests, MariaDB and SQLite.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use flash_sale_tests::{
    AppOptions, Backend, Client, TestApp, all_at_once, all_at_once_across, eventually,
    on_both_databases,
    servers::{ScratchMariaDb, com_select},
    sse::{Reader, stream_client},
    tokens::{buyer_token, jwt_options},
};
use reqwest::Method;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};

on_both_databases!(
    two_apis_and_two_workers_admit_each_ticket_once_and_never_beyond_the_stock,
    signed_in_buyers_queue_by_their_token_and_reach_only_their_own_ticket,
    the_ticket_stream_reads_a_product_once_per_interval_for_1_or_1000_listeners,
    queue_length_and_admissions_per_product_are_on_metrics,
);

/// How long a ticket may take to reach a state the worker moves it to (passes every second).
const ADMISSION: Duration = Duration::from_secs(15);

/// `(admitted and unused tickets, available_stock)` of a product, read by one statement (one
/// consistent view on MariaDB; SQLite reads run against one snapshot anyway).
async fn admitted_and_available(db: &DatabaseConnection, product: i64) -> (i64, i64) {
    let sql = format!(
        "SELECT (SELECT COUNT(*) FROM queue_tickets WHERE product_id = {product} \
           AND state = 'admitted') AS admitted, available_stock AS available \
         FROM products WHERE id = {product}"
    );
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("sample")
        .expect("the product's row");
    let admitted: i64 = row.try_get("", "admitted").expect("admitted");
    let available: i64 = row
        .try_get::<i32>("", "available")
        .map(i64::from)
        .or_else(|_| row.try_get::<i64>("", "available"))
        .expect("available");
    (admitted, available)
}

/// The ticket's state as its owner reads it.
async fn state_of(buyer: &Client, ticket: i64) -> String {
    let r = buyer.ticket(ticket).await;
    assert_eq!(r.status, 200, "ticket {ticket}: {}", r.body);
    r.body["state"].as_str().unwrap_or_default().to_owned()
}

/// 60 buyers queue for 12 units through two APIs while two workers admit (and the holds expire
/// after 2 s, admissions after 2 s, so units keep coming back): a third of the buyers keep
/// their hold until it expires, a third release it at once, a third never use their admission.
/// Sampled by SQL all along, admitted-and-unused tickets never outnumber the available units;
/// at the end every ticket was admitted once (the workers' admission counters add up to the
/// tickets ever admitted), every hold used one admission, and the books balance.
async fn two_apis_and_two_workers_admit_each_ticket_once_and_never_beyond_the_stock(
    backend: Backend,
) {
    let options = AppOptions::hold_ttl(2);
    let app = TestApp::spawn_with(backend, options.clone()).await;
    let second = app.spawn_another_api(&options);
    let workers = [app.spawn_worker(&[]), app.spawn_worker(&[])];
    let product = app.client.create_queue_product(12, None).await;
    let r = app
        .client
        .admin(
            Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"admission_window_seconds": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The sampler: admitted-and-unused never above available, read straight from the tables.
    let db = app.db.connect().await;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                let (admitted, available) = admitted_and_available(&db, product).await;
                assert!(
                    admitted <= available,
                    "{admitted} admitted and unused for {available} available"
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        }
    });

    let apis = [app.client.clone(), app.client.on(&second)];
    let buyers = all_at_once_across(&apis, 60, |api, i| async move {
        let buyer = api.stranger();
        let r = buyer.join(product, Some(&format!("buyer-{i}"))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let ticket = r.body["ticket_id"].as_i64().expect("ticket id");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(Instant::now() < deadline, "ticket {ticket} never finished");
            match state_of(&buyer, ticket).await.as_str() {
                "waiting" => {}
                "admitted" if i % 3 == 2 => {}
                "admitted" => {
                    let hold = buyer.hold_with_ticket(product, 1, ticket).await;
                    // Its admission may just have expired: then it is refused, never served.
                    if hold.status == 201 && i % 3 == 1 {
                        let id = hold.body["hold_id"].as_i64().expect("hold id");
                        assert_eq!(buyer.release(id).await.status, 200);
                    } else if hold.status != 201 {
                        assert_eq!(hold.code(), "admission_required", "{}", hold.body);
                    }
                }
                "used" | "expired" => return (buyer, ticket),
                other => panic!("ticket {ticket} became {other}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.expect("sampler");
    assert!(samples >= 20, "only {samples} samples");

    // Each admission once: the two workers' counters add up to the tickets ever admitted.
    let mut admissions = 0.0;
    for w in &workers {
        admissions += Client::new(w).metric("queue_admitted_total").await;
    }
    let admitted = app
        .count(
            "queue_tickets",
            &format!("product_id = {product} AND admitted_at IS NOT NULL"),
        )
        .await;
    assert_eq!(admitted, 60, "every ticket was admitted");
    assert_eq!(admissions, admitted as f64, "no ticket admitted twice");
    // Every hold used an admission of its buyer, one each.
    let holds = app.count("holds", &format!("product_id = {product}")).await;
    let used = app
        .count(
            "queue_tickets",
            &format!("product_id = {product} AND state = 'used'"),
        )
        .await;
    assert_eq!(holds, used, "one hold per used admission");
    assert!(holds >= 40, "only {holds} holds");
    let strays = app
        .count(
            "holds",
            &format!(
                "product_id = {product} AND buyer_id NOT IN (SELECT buyer_id FROM queue_tickets \
                 WHERE product_id = {product} AND state = 'used')"
            ),
        )
        .await;
    assert_eq!(strays, 0, "a hold without an admission");
    // Holds that expired gave their units back to the line.
    assert!(
        app.count(
            "holds",
            &format!("product_id = {product} AND status IN ('active', 'expired')")
        )
        .await
            > 0
    );
    for (buyer, ticket) in &buyers {
        assert!(["used", "expired"].contains(&state_of(buyer, *ticket).await.as_str()));
    }
    app.assert_stock_conserved().await;
}

/// With `BUYER_AUTH=jwt` the ticket is the token's buyer's: joining needs no `buyer_id` (a
/// different one is refused), the hold finds the admitted ticket by buyer, and another buyer's
/// token reaches the ticket no more than a guess does.
async fn signed_in_buyers_queue_by_their_token_and_reach_only_their_own_ticket(backend: Backend) {
    let app = TestApp::spawn_with(backend, jwt_options()).await;
    let product = app.client.create_queue_product(1, None).await;
    let ann = app.client.with_token(&buyer_token("ann"));
    let bob = app.client.with_token(&buyer_token("bob"));
    let r = ann.join(product, Some("bob")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let joins = all_at_once(10, |_| {
        let ann = ann.clone();
        async move { ann.join(product, None).await }
    })
    .await;
    assert_eq!(joins.iter().filter(|r| r.status == 201).count(), 1);
    let ticket = joins[0].body["ticket_id"].as_i64().expect("ticket id");
    for r in &joins {
        assert_eq!(r.body["ticket_id"].as_i64(), Some(ticket), "{}", r.body);
        assert_eq!(r.body["buyer_id"], "ann");
        assert!(r.body["client_secret"].is_null(), "{}", r.body);
    }
    let bobs = bob.join(product, None).await;
    assert_eq!(bobs.status, 201, "{}", bobs.body);
    let bobs = bobs.body["ticket_id"].as_i64().expect("ticket id");
    // Not admitted yet (no worker runs): a hold is refused, naming the ticket's state.
    let r = ann.hold(product, 1).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
    assert_eq!(r.body["ticket_state"], "waiting", "{}", r.body);
    // Another buyer, or nobody, reaches nothing.
    for r in [bob.ticket(ticket).await, bob.leave(ticket).await] {
        assert_eq!(
            (r.status, r.code()),
            (404, "ticket_not_found"),
            "{}",
            r.body
        );
    }
    assert_eq!(app.client.stranger().ticket(ticket).await.status, 401);
    // Admitted (one unit: ann only), ann holds with her token alone; bob still waits.
    let _worker = app.spawn_worker(&[]);
    eventually("ann admitted", ADMISSION, || async {
        (state_of(&ann, ticket).await == "admitted").then_some(())
    })
    .await;
    let r = bob.hold(product, 1).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
    let r = ann.hold(product, 1).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(state_of(&ann, ticket).await, "used");
    assert_eq!(state_of(&bob, bobs).await, "waiting");
    let r = ann.hold(product, 1).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
}

/// Opens the ticket's stream with its secret and reads the first event.
async fn follow(http: &reqwest::Client, buyer: &Client, ticket: i64) -> (Reader, Value) {
    let secret = buyer.ticket_secret_of(ticket).expect("the ticket's secret");
    let r = http
        .get(format!("{}/api/queue/{ticket}/stream", buyer.address))
        .header("client-secret", secret)
        .send()
        .await
        .expect("open stream");
    assert_eq!(r.status(), 200, "stream of ticket {ticket}");
    let mut reader = Reader::new(r);
    let first = reader
        .next_event("ticket", Duration::from_secs(10))
        .await
        .expect("the first event comes at once");
    (reader, first)
}

/// The ticket hub reads the product's followed tickets with one statement per
/// `QUEUE_STREAM_INTERVAL_MS`, for one listener as for a thousand (checked with its own counter
/// and, on MariaDB, with the server's `Com_select`); every listener gets its own ticket's
/// changes, and positions move up when someone ahead leaves.
async fn the_ticket_stream_reads_a_product_once_per_interval_for_1_or_1000_listeners(
    backend: Backend,
) {
    let options = AppOptions {
        extra_env: vec![
            ("QUEUE_STREAM_INTERVAL_MS", "100".into()),
            ("STREAM_MAX_PER_CLIENT", "2000".into()),
        ],
        ..Default::default()
    };
    // On MariaDB a server of the test's own, and no worker: its `Com_select` counts this API's
    // queries and nobody else's.
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
    // One unit, no worker: everyone waits, in joining order.
    let product = app.client.create_queue_product(1, None).await;
    let buyers: Vec<(Client, i64)> = all_at_once(1000, |i| {
        let buyer = app.client.stranger();
        async move {
            let r = buyer.join(product, Some(&format!("b{i:04}"))).await;
            assert_eq!(r.status, 201, "{}", r.body);
            let ticket = r.body["ticket_id"].as_i64().expect("ticket id");
            (buyer, ticket)
        }
    })
    .await;
    let http = stream_client();
    let checks = async || app.client.metric("queue_stream_checks_total").await;
    let reading = async || {
        let before = com_select(status.as_ref()).await;
        let checks = checks().await;
        let after = com_select(status.as_ref()).await;
        (checks, before.zip(after))
    };
    let window = Duration::from_secs(2);
    let checks_over = async |window: Duration| {
        let start = reading().await;
        // The time the checks are counted over: a measurement, not a wait for a condition.
        tokio::time::sleep(window).await;
        let end = reading().await;
        let n = end.0 - start.0;
        if let (Some((s1, s2)), Some((e1, e2))) = (start.1, end.1) {
            // Each check is one SELECT, and the API runs no other meanwhile.
            let (fewest, most) = (e1 - s2, e2 - s1);
            assert!(
                fewest - 2.0 <= n && n <= most + 2.0,
                "{fewest} to {most} SELECTs for {n} checks"
            );
        }
        n
    };
    let until_checked = async || {
        let before = checks().await;
        eventually(
            "a check by the ticket hub",
            Duration::from_secs(5),
            || async { (checks().await > before).then_some(()) },
        )
        .await;
    };

    let (first_buyer, first_ticket) = &buyers[0];
    let (reader, first) = follow(&http, first_buyer, *first_ticket).await;
    let (mut readers, mut firsts) = (vec![reader], vec![first]);
    until_checked().await;
    let one = checks_over(window).await;

    let opened = futures::future::join_all(
        buyers[1..]
            .iter()
            .map(|(buyer, ticket)| follow(&http, buyer, *ticket)),
    )
    .await;
    for (reader, first) in opened {
        readers.push(reader);
        firsts.push(first);
    }
    assert_eq!(app.client.metric("queue_stream_clients").await, 1000.0);
    until_checked().await;
    let many = checks_over(window).await;
    // One check per interval (100 ms): about 20 in 2 s either way.
    let most = window.as_millis() as f64 / 100.0 + 2.0;
    assert!((5.0..=most).contains(&one), "1 listener: {one} checks");
    assert!(
        (5.0..=most).contains(&many),
        "1,000 listeners: {many} checks (1 listener: {one})"
    );

    // Each listener was sent its own ticket; the line's positions are 0 to 999.
    let mut positions: Vec<i64> = buyers
        .iter()
        .zip(&firsts)
        .map(|((_, ticket), first)| {
            assert_eq!(first["ticket_id"].as_i64(), Some(*ticket));
            first["position"].as_i64().expect("a position")
        })
        .collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<i64>>());
    // The first in line leaves: it hears `left`, every other listener its position move up.
    let head = positions.iter().position(|p| *p == 0).expect("a head");
    let (leaver, ticket) = &buyers[head];
    let r = leaver.leave(*ticket).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let updates = futures::future::join_all(
        readers
            .iter_mut()
            .map(|r| r.next_event("ticket", Duration::from_secs(5))),
    )
    .await;
    positions[head] = 1;
    for (i, (update, before)) in updates.into_iter().zip(positions).enumerate() {
        let update = update.expect("every listener hears the change");
        if i == head {
            assert_eq!(update["state"], "left", "{update}");
        } else {
            assert_eq!(update["position"].as_i64(), Some(before - 1), "{update}");
        }
    }
}

/// The worker's `/metrics` carries, per product, the length of the queue
/// (`queue_waiting{product_id}`) and the admissions made (`queue_admitted_total{product_id}`,
/// whose rate is the admission rate); each product's own, not mixed with another's.
async fn queue_length_and_admissions_per_product_are_on_metrics(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let worker = app.spawn_worker(&[]);
    let small = app.client.create_queue_product(2, None).await;
    let large = app.client.create_queue_product(5, None).await;
    let joins = all_at_once(15, |i| {
        let buyer = app.client.stranger();
        let product = if i < 7 { small } else { large };
        async move { buyer.join(product, Some(&format!("b{i}"))).await.status }
    })
    .await;
    assert!(joins.iter().all(|s| *s == 201), "{joins:?}");
    // small: 7 joined, 2 admitted, 5 waiting; large: 8 joined, 5 admitted, 3 waiting.
    let metrics = Client::new(&worker);
    let labelled = |name: &str, product: i64| format!("{name}{{product_id=\"{product}\"}}");
    let expected = [
        (labelled("queue_waiting", small), 5.0),
        (labelled("queue_admitted_total", small), 2.0),
        (labelled("queue_waiting", large), 3.0),
        (labelled("queue_admitted_total", large), 5.0),
    ];
    eventually("the queue figures on /metrics", ADMISSION, || async {
        let text = metrics.metrics_text().await;
        expected
            .iter()
            .all(|(series, value)| value_of(&text, series) == Some(*value))
            .then_some(())
    })
    .await;
}

/// The value of one exact series (name and labels) in a `/metrics` page.
fn value_of(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Joins batched in every size, from a lone join to a crowd of 40, write their tickets with ONE
/// prepared statement: MariaDB's own record of the prepared statements (`performance_schema`
/// on a server of the test's own) holds one ticket insert text, executed for batches of one
/// ticket and of several (its rows are counted as affected, or as sent by `RETURNING`). A
/// `VALUES` list has a text per size, and once the sizes spread the connections' statement
/// caches churn under the queue's lock: joins fell to half their speed as the opening storm
/// went on (`tests/bench-results/README.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_of_every_batch_size_share_one_prepared_insert() {
    // Statements are timed and counted only with the statements consumer on.
    let server = ScratchMariaDb::start(&[
        "--performance-schema=ON",
        "--performance-schema-consumer-events-statements-current=ON",
    ])
    .await;
    let app = TestApp::spawn_on(&server.base_url(), AppOptions::default()).await;
    let status = sea_orm::Database::connect(server.base_url())
        .await
        .expect("status connection");
    let product = app.client.create_queue_product(1_000, None).await;

    for wave in 1..=40usize {
        let joined = all_at_once(wave, |i| {
            let buyer = app.client.stranger();
            async move {
                buyer
                    .join(product, Some(&format!("w{wave}-{i}")))
                    .await
                    .status
            }
        })
        .await;
        assert!(joined.iter().all(|&s| s == 201), "wave {wave}: {joined:?}");
    }

    let row = status
        .query_one_raw(Statement::from_string(
            status.get_database_backend(),
            "SELECT COUNT(DISTINCT SQL_TEXT) AS texts, \
               CAST(SUM(COUNT_EXECUTE) AS SIGNED) AS batches, \
               CAST(SUM(SUM_ROWS_AFFECTED + SUM_ROWS_SENT) AS SIGNED) AS tickets \
             FROM performance_schema.prepared_statements_instances \
             WHERE SQL_TEXT LIKE 'INSERT INTO%queue_tickets%'",
        ))
        .await
        .expect("prepared statements")
        .expect("one row");
    let count = |column: &str| -> i64 {
        row.try_get::<i64>("", column)
            .unwrap_or_else(|e| panic!("{column}: {e}"))
    };
    let (texts, batches, tickets) = (count("texts"), count("batches"), count("tickets"));
    assert_eq!(
        tickets, 820,
        "every join made its ticket through the insert"
    );
    assert!(
        batches > 1 && batches < tickets,
        "batches of one and of several: {batches} inserts for {tickets} tickets"
    );
    assert_eq!(texts, 1, "one insert text whatever the batch's size");
}
