//! Property test of the hold and order state machines through the real stock operations (on a
//! SQLite file): any sequence of holds, carts over two products, extensions, releases, orders,
//! payments (duplicated, conflicting), expiries and payment timeouts keeps every invariant of
//! `docs/design.md` ("Invariants and how they are kept") after every step, on both products
//! (sweeps and timeouts run in batches of 3, so a cart's lines are often split between them).

use entity::{
    Db, DbConfig, DomainError, Money, Quantity,
    operations::carts::{CartLine, CartRequest},
    operations::holds::{self, ExtensionRules, HoldOutcome, HoldRequest},
    operations::orders,
    operations::payments::{self, PaymentEvent, PaymentStatus},
    operations::products,
    operations::sweeps,
    operations::timeouts,
    rules::ownership::Access,
    types::{HoldId, OrderId, ProductId},
    views::OrderCreated,
};
use migration::{Migrator, MigratorTrait};
use proptest::prelude::*;
use sea_orm::{ConnectionTrait, Statement};

const STOCK: i32 = 12;

#[derive(Debug, Clone)]
enum Op {
    /// A hold of `qty`; `expired` ones are made already past their time.
    Hold {
        qty: i64,
        expired: bool,
    },
    /// A cart of `qty.0` units of the first product and `qty.1` of the second.
    Cart {
        qty: (i64, i64),
        expired: bool,
    },
    Extend(usize),
    Release(usize),
    Order(usize),
    /// A payment webhook for the i-th order (or, if `early`, for the i-th hold, before its
    /// order exists), with an idempotency key drawn from a small set so keys repeat.
    Pay {
        target: usize,
        success: bool,
        key: u8,
        early: bool,
    },
    Expire,
    TimeOut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..=4i64, any::<bool>()).prop_map(|(qty, expired)| Op::Hold { qty, expired }),
        2 => ((1..=3i64, 1..=3i64), any::<bool>()).prop_map(|(qty, expired)| Op::Cart { qty, expired }),
        1 => any::<usize>().prop_map(Op::Extend),
        1 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Order),
        3 => (any::<usize>(), any::<bool>(), 0..6u8, any::<bool>())
            .prop_map(|(target, success, key, early)| Op::Pay { target, success, key, early }),
        1 => Just(Op::Expire),
        1 => Just(Op::TimeOut),
    ]
}

async fn setup(dir: &std::path::Path) -> (Db, ProductId, ProductId) {
    let db = Db::connect(&DbConfig::new(
        format!("sqlite://{}?mode=rwc", dir.join("p.db").display()),
        2,
    ))
    .await
    .expect("connect");
    Migrator::up(db.conn(), None).await.expect("migrate");
    let product =
        products::create_product(&db, "p", Money::from_cents(250), STOCK, Default::default())
            .await
            .expect("product");
    let other =
        products::create_product(&db, "q", Money::from_cents(75), STOCK, Default::default())
            .await
            .expect("product");
    (db, product.id, other.id)
}

/// `stock == available + Σ active holds + Σ pending orders`, `0 <= available`, and
/// `stock + Σ paid == initial`, straight from the tables; and the API's view agrees.
async fn check(db: &Db, product: ProductId) {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(
            db.db_backend(),
            format!(
                "SELECT p.stock, p.available_stock, \
                 (SELECT COALESCE(SUM(qty), 0) FROM holds WHERE product_id = p.id AND status = 'active') AS held, \
                 (SELECT COALESCE(SUM(quantity), 0) FROM orders WHERE product_id = p.id AND status = 'pending') AS pending, \
                 (SELECT COALESCE(SUM(quantity), 0) FROM orders WHERE product_id = p.id AND status = 'paid') AS paid \
                 FROM products p WHERE p.id = {product}"
            ),
        ))
        .await
        .expect("ledger")
        .expect("row");
    let get = |c: &str| row.try_get::<i64>("", c).expect(c);
    let (stock_now, available, held, pending, paid) = (
        get("stock"),
        get("available_stock"),
        get("held"),
        get("pending"),
        get("paid"),
    );
    assert!(available >= 0, "available {available}");
    assert_eq!(
        stock_now,
        available + held + pending,
        "stock {stock_now} != {available} + {held} + {pending}"
    );
    assert_eq!(
        stock_now + paid,
        i64::from(STOCK),
        "sold {paid} of {STOCK}, {stock_now} left"
    );
    let view = products::product_view(db, product).await.expect("view");
    assert!(view.available_stock >= 0 && view.available_stock <= view.stock);
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("dir");
    let (db, product, other) = setup(dir.path()).await;
    let mut holds: Vec<HoldId> = Vec::new();
    let mut orders_made: Vec<OrderId> = Vec::new();
    let mut keys: std::collections::HashMap<u8, PaymentEvent> = std::collections::HashMap::new();
    for op in ops {
        match op {
            Op::Hold { qty, expired } => {
                let ttl = if expired {
                    chrono::Duration::seconds(-1)
                } else {
                    chrono::Duration::minutes(5)
                };
                let qty = Quantity::new(qty, 10).expect("qty");
                match holds::create_hold(&db, product, HoldRequest::new(qty), ttl).await {
                    Ok(HoldOutcome::Granted(h)) => holds.push(h.id),
                    Ok(HoldOutcome::Refused(DomainError::InsufficientStock { available })) => {
                        assert!(available < qty.as_i32())
                    }
                    other => panic!("hold: {other:?}"),
                }
            }
            Op::Cart { qty, expired } => {
                let ttl = if expired {
                    chrono::Duration::seconds(-1)
                } else {
                    chrono::Duration::minutes(5)
                };
                let lines = vec![
                    CartLine {
                        product_id: product,
                        qty: Quantity::new(qty.0, 10).expect("qty"),
                    },
                    CartLine {
                        product_id: other,
                        qty: Quantity::new(qty.1, 10).expect("qty"),
                    },
                ];
                let cart = CartRequest::new(lines, 10).expect("cart");
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let first = cart.lines()[0].product_id;
                let carts = [cart];
                let served = holds::serve_with_carts(
                    &db,
                    first,
                    &[],
                    &carts,
                    ttl,
                    deadline,
                    &|_| false,
                    false,
                );
                match served.await.map(|(_, mut carts)| carts.pop()) {
                    Ok(Some(HoldOutcome::Granted(h))) => {
                        assert_eq!(h.lines.len(), 2);
                        holds.push(h.id);
                    }
                    Ok(Some(HoldOutcome::Refused(DomainError::CartRefused(lines)))) => {
                        assert!(!lines.is_empty());
                        for line in lines {
                            assert!(matches!(
                                line.refusal,
                                DomainError::InsufficientStock { .. }
                            ));
                        }
                    }
                    other => panic!("cart: {other:?}"),
                }
            }
            Op::Extend(i) if !holds.is_empty() => {
                let rules = ExtensionRules {
                    ttl: chrono::Duration::minutes(5),
                    max_extensions: 2,
                    max_lifetime: chrono::Duration::hours(1),
                };
                match holds::extend_hold(&db, holds[i % holds.len()], Access::Service, rules).await
                {
                    Ok(h) => assert_eq!(h.status, entity::HoldStatus::Active),
                    Err(DomainError::HoldNotActive { .. } | DomainError::ExtensionLimit(_)) => {}
                    Err(e) => panic!("extend: {e}"),
                }
            }
            Op::Release(i) if !holds.is_empty() => {
                match holds::release_hold(&db, holds[i % holds.len()], Access::Service).await {
                    Ok(_) | Err(DomainError::HoldNotActive { .. }) => {}
                    Err(e) => panic!("release: {e}"),
                }
            }
            Op::Order(i) if !holds.is_empty() => {
                match orders::create_order(&db, holds[i % holds.len()], Access::Service, None).await
                {
                    Ok(OrderCreated::New(o)) => orders_made.push(o.id),
                    Ok(OrderCreated::Existing(_))
                    | Err(DomainError::HoldExpired(_) | DomainError::HoldReleased(_)) => {}
                    Err(e) => panic!("order: {e}"),
                }
            }
            Op::Pay {
                target,
                success,
                key,
                early,
            } => {
                let status = if success {
                    PaymentStatus::Success
                } else {
                    PaymentStatus::Failure
                };
                let event = if early && !holds.is_empty() {
                    PaymentEvent {
                        idempotency_key: format!("k{key}"),
                        order_id: OrderId::new(1_000_000),
                        status,
                        hold_id: Some(holds[target % holds.len()]),
                        product_id: None,
                        quantity: None,
                        amount: None,
                    }
                } else if !orders_made.is_empty() {
                    PaymentEvent {
                        idempotency_key: format!("k{key}"),
                        order_id: orders_made[target % orders_made.len()],
                        status,
                        hold_id: None,
                        product_id: None,
                        quantity: None,
                        amount: None,
                    }
                } else {
                    continue;
                };
                match payments::apply_payment(&db, &event).await {
                    Ok(r) => {
                        // A key seen before with the same body is a duplicate, with no effect.
                        if let Some(prev) = keys.get(&key) {
                            assert!(r.duplicate && prev == &event, "{event:?} after {prev:?}");
                        } else {
                            assert!(!r.duplicate);
                            keys.insert(key, event.clone());
                            if !orders_made.contains(&r.order_id) {
                                orders_made.push(r.order_id);
                            }
                        }
                    }
                    Err(DomainError::IdempotencyKeyMismatch) => {
                        assert!(keys.get(&key).is_some_and(|prev| prev != &event));
                    }
                    Err(
                        DomainError::HoldExpired(_)
                        | DomainError::HoldReleased(_)
                        | DomainError::OrderNotFound(_),
                    ) => {}
                    Err(e) => panic!("payment: {e}"),
                }
            }
            Op::Expire => {
                sweeps::expire_batch(&db, 3).await.expect("expire");
            }
            Op::TimeOut => {
                timeouts::cancel_unpaid_batch(&db, chrono::Duration::zero(), 3)
                    .await
                    .expect("timeout");
            }
            _ => {}
        }
        check(&db, product).await;
        check(&db, other).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_operations_keeps_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(ops));
    }
}
