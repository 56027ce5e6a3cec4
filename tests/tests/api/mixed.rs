//! A randomized mix of everything clients and gateways do, at once, then the books must
//! balance: for every product `stock == available + Σ active holds + Σ pending orders` and
//! `stock + Σ paid == initial stock`.

use std::{collections::HashSet, time::Duration};

use flash_sale_tests::{AppOptions, Backend, Client, TestApp, on_both_databases};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};

const STOCK: [i64; 2] = [60, 40];

enum Step {
    Release(i64),
    Order(i64),
    EarlyWebhook {
        hold: i64,
        key: String,
        status: &'static str,
    },
    Nothing,
}

on_both_databases!(a_randomized_mix_keeps_every_product_balanced);

async fn a_randomized_mix_keeps_every_product_balanced(backend: Backend) {
    let seed: u64 = std::env::var("MIX_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("MIX_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(2)).await;
    let products = [
        app.create_product(STOCK[0]).await,
        app.create_product(STOCK[1]).await,
    ];

    // 1. A crowd of holds on both products, all at once.
    let asks: Vec<(i64, i64)> = (0..120)
        .map(|_| (products[rng.random_range(0..2)], rng.random_range(1..=3)))
        .collect();
    let asks_for_tasks = asks.clone();
    let holds: Vec<i64> = app
        .all_at_once(asks.len(), move |c, i| {
            let (p, q) = asks_for_tasks[i];
            async move { c.hold(p, q).await }
        })
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
        .map(|r| r.body["hold_id"].as_i64().expect("hold_id"))
        .collect();
    app.assert_stock_conserved().await;

    // 2. Releases, orders, and webhooks that come before their order, all at once.
    let steps: Vec<Step> = holds
        .iter()
        .enumerate()
        .map(|(i, &h)| match rng.random_range(0..10) {
            0 | 1 => Step::Release(h),
            2..=6 => Step::Order(h),
            7 => Step::EarlyWebhook {
                hold: h,
                key: format!("early-{i}"),
                status: if rng.random_bool(0.7) {
                    "success"
                } else {
                    "failure"
                },
            },
            _ => Step::Nothing, // left to expire
        })
        .collect();
    let steps = std::sync::Arc::new(steps);
    let steps_for_tasks = steps.clone();
    let outcomes = app
        .all_at_once(steps.len(), move |c, i| {
            let steps = steps_for_tasks.clone();
            async move { run_step(&c, &steps[i]).await }
        })
        .await;
    let orders: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ordered(id) => Some(*id),
            _ => None,
        })
        .collect();
    let early_recorded = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::EarlyRecorded))
        .count();
    app.assert_stock_conserved().await;

    // 3. Webhooks for the orders: duplicated, conflicting, shuffled, all at once.
    let mut events: Vec<Value> = Vec::new();
    for (i, &order) in orders.iter().enumerate() {
        let status = if rng.random_bool(0.6) {
            "success"
        } else {
            "failure"
        };
        let e = json!({"idempotency_key": format!("pay-{i}"), "order_id": order, "status": status});
        for _ in 0..rng.random_range(1..=3) {
            events.push(e.clone());
        }
        if rng.random_bool(0.2) {
            let other = if status == "success" {
                "failure"
            } else {
                "success"
            };
            events.push(
                json!({"idempotency_key": format!("late-{i}"), "order_id": order, "status": other}),
            );
        }
    }
    events.shuffle(&mut rng);
    let events = std::sync::Arc::new(events);
    let events_for_tasks = events.clone();
    let answers = app
        .all_at_once(events.len(), move |c, i| {
            let e = events_for_tasks[i].clone();
            async move { (e.clone(), c.webhook(e).await) }
        })
        .await;
    let mut applied_keys = HashSet::new();
    for (e, r) in &answers {
        assert_eq!(r.status, 200, "{e}: {}", r.body);
        if r.body["duplicate"] == false {
            assert!(
                applied_keys.insert(e["idempotency_key"].to_string()),
                "two effects for {e}"
            );
        }
    }
    app.assert_stock_conserved().await;

    // 4. Expiries: what was left runs out; a sweep and new holds reclaim it.
    app.until_no_hold_active(&holds, Duration::from_secs(20))
        .await;
    let mut worker = app.start_worker_once(16);
    let late = app
        .all_at_once(
            20,
            move |c, i| async move { c.hold(products[i % 2], 2).await },
        )
        .await;
    assert!(worker.wait(Duration::from_secs(60)), "{}", worker.output());
    assert!(
        late.iter()
            .all(|r| r.status == 201 || r.code() == "insufficient_stock")
    );

    // The books balance, every hold is readable, and every key had one effect.
    app.assert_stock_conserved().await;
    for (p, initial) in products.iter().zip(STOCK) {
        app.assert_sold_within(*p, initial).await;
    }
    for h in &holds {
        let r = app.get(&format!("/api/holds/{h}")).await;
        assert_eq!(r.status, 200);
        let status = r.body["status"].as_str().unwrap_or_default();
        assert!(
            ["active", "expired", "released", "consumed"].contains(&status),
            "{}",
            r.body
        );
    }
    assert_eq!(
        app.count("webhook_events", "1 = 1").await,
        (applied_keys.len() + early_recorded) as i64,
        "each recorded key is one that was applied once"
    );
}

enum Outcome {
    Ordered(i64),
    EarlyRecorded,
    Other,
}

async fn run_step(c: &Client, step: &Step) -> Outcome {
    match step {
        Step::Release(h) => {
            let r = c.release(*h).await;
            assert!(
                r.status == 200 || r.code() == "hold_not_active",
                "{}",
                r.body
            );
            Outcome::Other
        }
        Step::Order(h) => {
            let r = c.order(*h).await;
            assert!(r.status == 201 || r.status == 409, "{}", r.body);
            r.body["order_id"]
                .as_i64()
                .map_or(Outcome::Other, Outcome::Ordered)
        }
        Step::EarlyWebhook { hold, key, status } => {
            let r = c
                .webhook(
                    json!({"idempotency_key": key, "order_id": 900_000_000 + hold,
                                "status": status, "hold_id": hold}),
                )
                .await;
            assert!(r.status == 200 || r.status == 409, "{}", r.body);
            if r.status == 200 {
                Outcome::EarlyRecorded
            } else {
                Outcome::Other
            }
        }
        Step::Nothing => Outcome::Other,
    }
}
