//! Fair admission: a product's queue. The early crowd is drawn at random at the opening and
//! comes before everyone later; tickets are admitted as stock allows, exactly once, by any
//! number of workers; a hold on a queue product needs its buyer's admitted ticket. Every
//! scenario runs real concurrent requests against the real binaries (an API and a worker), on
//! MariaDB and SQLite.

use std::{collections::HashMap, time::Duration};

use flash_sale_tests::{
    Backend, Client, Process, Response, TestApp, all_at_once, eventually, on_both_databases,
};
use reqwest::Method;
use serde_json::{Value, json};

/// How long admission may take: the worker's passes run every second.
const ADMISSION: Duration = Duration::from_secs(10);

/// An API with a worker beside it (whose admission passes run every second).
async fn queue_app(backend: Backend) -> (TestApp, Process) {
    let app = TestApp::spawn(backend).await;
    let worker = app.spawn_worker(&[]);
    (app, worker)
}

/// Returns once the worker has finished `n` more admission runs (its
/// `queue_admission_runs_total`): whatever they were to change has changed.
async fn after_admission_runs(worker: &Process, n: f64) {
    let client = Client::new(worker);
    let start = client.metric("queue_admission_runs_total").await;
    eventually(format!("{n} admission runs"), ADMISSION, || {
        let client = client.clone();
        async move {
            (client.metric("queue_admission_runs_total").await >= start + n).then_some(())
        }
    })
    .await;
}

/// Joins `buyer` to the queue: the new ticket's id.
async fn joined(client: &Client, product: i64, buyer: &str) -> i64 {
    let r = client.join(product, Some(buyer)).await;
    assert_eq!(r.status, 201, "join {buyer}: {}", r.body);
    r.body["ticket_id"].as_i64().expect("ticket id")
}

/// The ticket once it is in `state`.
async fn until_state(client: &Client, ticket: i64, state: &str) -> Value {
    eventually(
        format!("ticket {ticket} {state}"),
        ADMISSION,
        || async move {
            let r = client.ticket(ticket).await;
            assert_eq!(r.status, 200, "{}", r.body);
            (r.body["state"] == state).then_some(r.body)
        },
    )
    .await
}

on_both_databases!(
    tickets_are_admitted_as_stock_allows_and_a_hold_needs_an_admitted_ticket,
    one_admission_makes_one_hold_however_many_requests_use_it_at_once,
    units_coming_back_admit_the_next_in_line,
    the_early_crowd_is_drawn_at_random_and_comes_before_everyone_later,
    nobody_can_learn_the_order_of_the_early_crowd_before_the_opening,
    the_queue_closes_after_the_sale_and_when_the_stock_is_gone,
    joining_is_one_live_ticket_per_buyer_and_a_ticket_answers_only_its_owner,
    a_position_counts_those_who_left_only_while_they_are_ahead,
);

async fn tickets_are_admitted_as_stock_allows_and_a_hold_needs_an_admitted_ticket(
    backend: Backend,
) {
    let (app, worker) = queue_app(backend).await;
    let product = app.client.create_queue_product(3, None).await;
    let buyers: Vec<Client> = (0..5).map(|_| app.client.stranger()).collect();
    let mut tickets = Vec::new();
    for (i, buyer) in buyers.iter().enumerate() {
        tickets.push(joined(buyer, product, &format!("buyer-{i}")).await);
    }
    // Three units: the first three in line are admitted, the others wait, in order.
    for i in 0..3 {
        let t = until_state(&buyers[i], tickets[i], "admitted").await;
        assert_eq!(t["position"], 0, "{t}");
    }
    for (i, expected) in [(3, 0), (4, 1)] {
        let t = buyers[i].ticket(tickets[i]).await.body;
        assert_eq!(t["state"], "waiting", "{t}");
        assert_eq!(t["position"], expected, "{t}");
    }
    // No ticket, a waiting ticket, someone else's ticket: 403, and no stock taken.
    let r = buyers[0].hold(product, 1).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
    assert!(r.body.get("ticket_state").is_none(), "{}", r.body);
    let r = buyers[3].hold_with_ticket(product, 1, tickets[3]).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
    assert_eq!(r.body["ticket_state"], "waiting", "{}", r.body);
    assert_eq!(r.body["position"], 0, "{}", r.body);
    let r = buyers[3].hold_with_ticket(product, 1, tickets[0]).await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
    assert!(
        r.body.get("ticket_state").is_none(),
        "a stranger's ticket is not named"
    );
    assert_eq!(app.client.available(product).await, 3);
    // An admitted ticket named for another buyer is not theirs to use.
    let r = buyers[0]
        .request(
            Method::POST,
            "/api/holds",
            Some(
                json!({"product_id": product, "qty": 1, "ticket_id": tickets[0],
                "buyer_id": "someone-else"}),
            ),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (403, "admission_required"),
        "{}",
        r.body
    );
    // An admitted buyer holds, as the ticket's buyer; its ticket is used.
    let r = buyers[0].hold_with_ticket(product, 1, tickets[0]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["buyer_id"], "buyer-0", "{}", r.body);
    assert_eq!(buyers[0].ticket(tickets[0]).await.body["state"], "used");
    // Waiting tickets never pass the stock: 2 admitted and unused for 2 units available.
    after_admission_runs(&worker, 2.0).await;
    assert_eq!(buyers[3].ticket(tickets[3]).await.body["state"], "waiting");
}

async fn one_admission_makes_one_hold_however_many_requests_use_it_at_once(backend: Backend) {
    let (app, _worker) = queue_app(backend).await;
    let product = app.client.create_queue_product(10, None).await;
    let buyer = app.client.stranger();
    let ticket = joined(&buyer, product, "ann").await;
    until_state(&buyer, ticket, "admitted").await;
    let answers = all_at_once(30, |_| {
        let buyer = buyer.clone();
        async move { buyer.hold_with_ticket(product, 1, ticket).await }
    })
    .await;
    let granted = answers.iter().filter(|r| r.status == 201).count();
    assert_eq!(granted, 1, "one hold per admission");
    for r in answers.iter().filter(|r| r.status != 201) {
        assert_eq!(
            (r.status, r.code()),
            (403, "admission_required"),
            "{}",
            r.body
        );
        assert_eq!(r.body["ticket_state"], "used", "{}", r.body);
    }
    assert_eq!(app.client.available(product).await, 9);
    assert_eq!(
        app.count(
            "queue_tickets",
            &format!("id = {ticket} AND state = 'used'")
        )
        .await,
        1
    );
}

async fn units_coming_back_admit_the_next_in_line(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let _worker = app.spawn_worker(&[]);
    let product = app.client.create_queue_product(1, None).await;
    let r = app
        .client
        .admin(
            Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"admission_window_seconds": 2})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let buyers: Vec<Client> = (0..5).map(|_| app.client.stranger()).collect();
    let mut tickets = Vec::new();
    for (i, buyer) in buyers.iter().enumerate() {
        tickets.push(joined(buyer, product, &format!("buyer-{i}")).await);
    }
    until_state(&buyers[0], tickets[0], "admitted").await;
    // A release: the unit comes back, the next is admitted.
    let hold = buyers[0].hold_with_ticket(product, 1, tickets[0]).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let hold_id = hold.body["hold_id"].as_i64().expect("hold id");
    assert_eq!(buyers[1].ticket(tickets[1]).await.body["state"], "waiting");
    assert_eq!(buyers[0].release(hold_id).await.status, 200);
    until_state(&buyers[1], tickets[1], "admitted").await;
    // An admission left unused past its window expires, and the next is admitted.
    until_state(&buyers[1], tickets[1], "expired").await;
    until_state(&buyers[2], tickets[2], "admitted").await;
    // A cancelled order gives its unit back.
    let hold = buyers[2].hold_with_ticket(product, 1, tickets[2]).await;
    let hold_id = hold.body["hold_id"].as_i64().expect("hold id");
    let order = buyers[2].order(hold_id).await;
    assert_eq!(order.status, 201, "{}", order.body);
    let order_id = order.body["order_id"].as_i64().expect("order id");
    let r = app
        .client
        .webhook(json!({"idempotency_key": "fail-1", "order_id": order_id, "status": "failure"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    until_state(&buyers[3], tickets[3], "admitted").await;
    // A restock admits as many more.
    let r = app
        .client
        .admin(
            Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"add_stock": 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    until_state(&buyers[4], tickets[4], "admitted").await;
}

/// Every ticket's position, read all at once (so shared reads answer them): `None` when it
/// has none (left).
async fn positions(buyers: &[Client], tickets: &[i64]) -> Vec<Option<i64>> {
    let pairs: Vec<(Client, i64)> = buyers
        .iter()
        .cloned()
        .zip(tickets.iter().copied())
        .collect();
    all_at_once(pairs.len(), |i| {
        let (buyer, ticket) = pairs[i].clone();
        async move {
            let r = buyer.ticket(ticket).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.body["position"].as_i64()
        }
    })
    .await
}

/// A ticket that leaves moves up everyone behind it and nobody ahead of it, before the head
/// reaches its place and after the head has passed it (when no left ticket is ahead of anyone
/// any more, positions are read without counting them at all).
async fn a_position_counts_those_who_left_only_while_they_are_ahead(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let product = app.client.create_queue_product(1, None).await;
    let buyers: Vec<Client> = (0..6).map(|_| app.client.stranger()).collect();
    let mut tickets = Vec::new();
    for (i, buyer) in buyers.iter().enumerate() {
        tickets.push(joined(buyer, product, &format!("buyer-{i}")).await);
    }
    let at = |p: [i64; 6]| p.map(|p| (p >= 0).then_some(p)).to_vec();
    assert_eq!(positions(&buyers, &tickets).await, at([0, 1, 2, 3, 4, 5]));

    // Before any admission: the third leaves.
    assert_eq!(buyers[2].leave(tickets[2]).await.status, 200);
    assert_eq!(positions(&buyers, &tickets).await, at([0, 1, -1, 2, 3, 4]));

    // The first is admitted (one unit): the one who left is still ahead of the last three.
    let _worker = app.spawn_worker(&[]);
    until_state(&buyers[0], tickets[0], "admitted").await;
    assert_eq!(positions(&buyers, &tickets).await, at([0, 0, -1, 1, 2, 3]));

    // The admitted one leaves, and the second is admitted in its place.
    assert_eq!(buyers[0].leave(tickets[0]).await.status, 200);
    until_state(&buyers[1], tickets[1], "admitted").await;
    assert_eq!(positions(&buyers, &tickets).await, at([-1, 0, -1, 0, 1, 2]));

    // The second leaves too: the head passes the third's empty place to admit the fourth.
    assert_eq!(buyers[1].leave(tickets[1]).await.status, 200);
    until_state(&buyers[3], tickets[3], "admitted").await;
    assert_eq!(
        positions(&buyers, &tickets).await,
        at([-1, -1, -1, 0, 0, 1])
    );
}

/// 1,000 buyers join before the opening and 100 after: the early ones are admitted in an order
/// unrelated to when they joined (Spearman's rank correlation under 0.15), every early one
/// before every late one, and the late ones in joining order. A queue with one unit and a
/// long window keeps everyone but the first waiting, so each ticket's position is its place.
async fn the_early_crowd_is_drawn_at_random_and_comes_before_everyone_later(backend: Backend) {
    let (app, _worker) = queue_app(backend).await;
    let product = app
        .client
        .create_queue_product(1, Some(Duration::from_secs(15)))
        .await;
    let r = app
        .client
        .admin(
            Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"admission_window_seconds": 3600})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let buyer = app.client.stranger();
    let early: Vec<i64> = all_at_once(1_000, |i| {
        let buyer = buyer.clone();
        async move { joined(&buyer, product, &format!("early-{i}")).await }
    })
    .await;
    let opens_at = product_opens_at(&app.client, product).await;
    // The late ones join after the opening, one after another: a known order.
    until_after(opens_at).await;
    let mut late = Vec::new();
    for i in 0..100 {
        late.push(joined(&buyer, product, &format!("late-{i}")).await);
    }
    // Places: 0 for the one admitted, 1 + position for the others.
    let place = |t: &Value| match t["state"].as_str() {
        Some("admitted") => 0,
        _ => {
            1 + t["position"]
                .as_i64()
                .unwrap_or_else(|| panic!("no position: {t}"))
        }
    };
    let first = early[0];
    eventually("the draw", ADMISSION, || {
        let buyer = buyer.clone();
        async move { (!buyer.ticket(first).await.body["position"].is_null()).then_some(()) }
    })
    .await;
    let mut places: HashMap<i64, i64> = HashMap::new();
    for &t in early.iter().chain(&late) {
        let r = buyer.ticket(t).await;
        assert_eq!(r.status, 200, "{}", r.body);
        places.insert(t, place(&r.body));
    }
    let mut all: Vec<i64> = places.values().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1_100).collect::<Vec<_>>(), "every place once");
    let worst_early = early.iter().map(|t| places[t]).max().expect("early");
    let best_late = late.iter().map(|t| places[t]).min().expect("late");
    assert!(worst_early < best_late, "an early ticket after a late one");
    let late_places: Vec<i64> = late.iter().map(|t| places[t]).collect();
    assert!(
        late_places.windows(2).all(|w| w[0] < w[1]),
        "late tickets in joining order: {late_places:?}"
    );
    // Joining order of the early ones: their ids (each join committed before the next id).
    let mut by_join = early.clone();
    by_join.sort_unstable();
    let admitted_in: Vec<i64> = by_join.iter().map(|t| places[t]).collect();
    let rho = spearman(&admitted_in);
    assert!(
        rho.abs() < 0.15,
        "admission order follows joining order: rho {rho}"
    );
}

/// Spearman's rank correlation between positions `0..n` and `ranks` (a permutation of `0..n`).
fn spearman(ranks: &[i64]) -> f64 {
    let n = ranks.len() as f64;
    let mut order: Vec<(usize, i64)> = ranks.iter().copied().enumerate().collect();
    order.sort_by_key(|&(_, r)| r);
    let d2: f64 = order
        .iter()
        .enumerate()
        .map(|(rank, &(i, _))| {
            let d = i as f64 - rank as f64;
            d * d
        })
        .sum();
    1.0 - 6.0 * d2 / (n * (n * n - 1.0))
}

#[test]
fn spearman_is_one_for_the_same_order_and_minus_one_for_the_reverse() {
    assert!((spearman(&[0, 1, 2, 3]) - 1.0).abs() < 1e-9);
    assert!((spearman(&[3, 2, 1, 0]) + 1.0).abs() < 1e-9);
}

async fn product_opens_at(client: &Client, product: i64) -> chrono::DateTime<chrono::Utc> {
    let r = client.get(&format!("/api/products/{product}")).await;
    r.body["sale_starts_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|| panic!("no opening: {}", r.body))
}

/// Returns once the clock has passed `at` (a wait for a time, not for a condition).
async fn until_after(at: chrono::DateTime<chrono::Utc>) {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(50)).await;
}

async fn nobody_can_learn_the_order_of_the_early_crowd_before_the_opening(backend: Backend) {
    let (app, worker) = queue_app(backend).await;
    let product = app
        .client
        .create_queue_product(5, Some(Duration::from_secs(3_600)))
        .await;
    let buyer = app.client.stranger();
    let answers: Vec<Response> = all_at_once(50, |i| {
        let buyer = buyer.clone();
        async move { buyer.join(product, Some(&format!("early-{i}"))).await }
    })
    .await;
    let expected: Vec<&str> = vec![
        "admission_expires_at",
        "admitted_at",
        "buyer_id",
        "client_secret",
        "joined_at",
        "position",
        "product_id",
        "state",
        "ticket_id",
    ];
    for r in &answers {
        assert_eq!(r.status, 201, "{}", r.body);
        let mut keys: Vec<&str> = r
            .body
            .as_object()
            .expect("a ticket")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, expected, "nothing else in a ticket");
        assert!(r.body["position"].is_null(), "{}", r.body);
    }
    // Read back, and after the worker's passes: still no order.
    after_admission_runs(&worker, 2.0).await;
    for r in &answers {
        let id = r.body["ticket_id"].as_i64().expect("id");
        let t = buyer.ticket(id).await.body;
        assert!(t["position"].is_null(), "{t}");
        assert_eq!(t["state"], "waiting", "{t}");
    }
    // The queue's log lines carry the ticket and the product, nothing more.
    for line in app
        .server
        .metric("queue.joined")
        .iter()
        .chain(&worker.metric("queue.joined"))
    {
        for key in line.as_object().expect("a line").keys() {
            assert!(
                [
                    "timestamp",
                    "level",
                    "message",
                    "metric",
                    "ticket_id",
                    "product_id",
                    "target",
                    "span"
                ]
                .contains(&key.as_str()),
                "{key} in {line}"
            );
        }
    }
    // And the database holds no place for them yet: the order does not exist.
    assert_eq!(
        app.count(
            "queue_tickets",
            &format!("product_id = {product} AND seq IS NOT NULL")
        )
        .await,
        0
    );
}

async fn the_queue_closes_after_the_sale_and_when_the_stock_is_gone(backend: Backend) {
    let (app, _worker) = queue_app(backend).await;
    // Stock gone: one unit, held, ordered and paid; the others in line are closed.
    let product = app.client.create_queue_product(1, None).await;
    let buyers: Vec<Client> = (0..3).map(|_| app.client.stranger()).collect();
    let mut tickets = Vec::new();
    for (i, buyer) in buyers.iter().enumerate() {
        tickets.push(joined(buyer, product, &format!("buyer-{i}")).await);
    }
    until_state(&buyers[0], tickets[0], "admitted").await;
    let hold = buyers[0].hold_with_ticket(product, 1, tickets[0]).await;
    let hold_id = hold.body["hold_id"].as_i64().expect("hold id");
    let order = buyers[0].order(hold_id).await;
    let order_id = order.body["order_id"].as_i64().expect("order id");
    let paid = app
        .client
        .webhook(json!({"idempotency_key": "pay-1", "order_id": order_id, "status": "success"}))
        .await;
    assert_eq!(paid.body["order_status"], "paid", "{}", paid.body);
    until_state(&buyers[1], tickets[1], "closed").await;
    assert!(buyers[2].ticket(tickets[2]).await.body["position"].is_null());
    let r = app.client.stranger().join(product, Some("late")).await;
    assert_eq!((r.status, r.code()), (409, "queue_closed"), "{}", r.body);

    // The sale's end: waiting tickets are closed.
    let product = app.client.create_queue_product(1, None).await;
    let ends = chrono::Utc::now() + chrono::Duration::seconds(3);
    let r = app
        .client
        .admin(
            Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"sale_ends_at": ends.to_rfc3339()})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let first = joined(&buyers[0], product, "first").await;
    let second = joined(&buyers[1], product, "second").await;
    until_state(&buyers[0], first, "admitted").await;
    until_state(&buyers[1], second, "closed").await;
    let r = app.client.stranger().join(product, Some("after")).await;
    assert_eq!((r.status, r.code()), (409, "queue_closed"), "{}", r.body);
}

async fn joining_is_one_live_ticket_per_buyer_and_a_ticket_answers_only_its_owner(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let open = app.client.create_product(5).await;
    let product = app
        .client
        .create_queue_product(5, Some(Duration::from_secs(3_600)))
        .await;
    let r = app.client.join(open, Some("ann")).await;
    assert_eq!((r.status, r.code()), (409, "no_queue"), "{}", r.body);
    let r = app.client.join(product, None).await;
    assert_eq!(
        (r.status, r.code()),
        (422, "buyer_id_required"),
        "{}",
        r.body
    );
    // Twenty tabs of one buyer at once: one ticket, its secret only in the 201.
    let ann = app.client.stranger();
    let answers = all_at_once(20, |_| {
        let ann = ann.clone();
        async move { ann.join(product, Some("ann")).await }
    })
    .await;
    assert_eq!(answers.iter().filter(|r| r.status == 201).count(), 1);
    let ids: Vec<i64> = answers
        .iter()
        .map(|r| r.body["ticket_id"].as_i64().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one ticket: {ids:?}");
    for r in answers.iter().filter(|r| r.status == 200) {
        assert!(r.body["client_secret"].is_null(), "{}", r.body);
    }
    // A keyed join's retry is answered its secret again.
    let bob = app.client.stranger();
    let path = format!("/api/products/{product}/queue");
    let first = bob
        .post_with_key(&path, "join-bob-1", &json!({"buyer_id": "bob"}))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = app
        .client
        .stranger()
        .post_with_key(&path, "join-bob-1", &json!({"buyer_id": "bob"}))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["client_secret"], first.body["client_secret"]);
    let other_key = app
        .client
        .stranger()
        .post_with_key(&path, "another", &json!({"buyer_id": "bob"}))
        .await;
    assert!(
        other_key.body["client_secret"].is_null(),
        "{}",
        other_key.body
    );
    // Only the secret reaches a ticket; anyone else gets the 404 of a ticket that does not exist.
    let ticket = ids[0];
    assert_eq!(ann.ticket(ticket).await.status, 200);
    let stranger = app.client.stranger();
    for r in [
        stranger.ticket(ticket).await,
        stranger.leave(ticket).await,
        stranger.ticket(999_999).await,
    ] {
        assert_eq!(
            (r.status, r.code()),
            (404, "ticket_not_found"),
            "{}",
            r.body
        );
    }
    // Leaving frees the buyer for a new ticket.
    let left = ann.leave(ticket).await;
    assert_eq!(left.body["state"], "left", "{}", left.body);
    let r = ann.join(product, Some("ann")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_ne!(r.body["ticket_id"].as_i64(), Some(ticket));
}
