//! Keyed holds keep their `Idempotency-Key` on the hold row: the races the HTTP suites cannot
//! force, driven straight through the hold batch on MariaDB and SQLite. A twin in another
//! process is a batch whose key look-up missed the first request's commit: its transaction
//! ([`hold_transaction`]) runs without the look-up before it.

use std::sync::Arc;

use flash_sale_tests::{Backend, TestDb, on_both_databases};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};

use super::*;
use crate::{
    DbConfig, Money,
    operations::idempotency::{self, Lookup, Replay},
    operations::products,
    rules::keys::KeyClaim,
};

const TTL: chrono::Duration = chrono::Duration::minutes(2);

async fn setup(backend: Backend, stock: i32) -> (TestDb, Db, ProductId) {
    let test_db = TestDb::new(backend).await;
    let db = Db::connect(&DbConfig::new(test_db.url.clone(), 4))
        .await
        .expect("connect");
    Migrator::up(db.conn(), None).await.expect("migrate");
    let product =
        products::create_product(&db, "p", Money::from_cents(100), stock, Default::default())
            .await
            .expect("product");
    (test_db, db, product.id)
}

fn keyed(key: &str, fingerprint: &str) -> HoldRequest {
    HoldRequest {
        key: Some(Arc::new(KeyClaim {
            scope: idempotency::HOLDS,
            key: key.into(),
            fingerprint: fingerprint.into(),
        })),
        ..HoldRequest::new(Quantity::new(1, 10).expect("qty"))
    }
}

/// A request served as the API serves it: its key looked up, then the batch.
async fn hold(db: &Db, product: ProductId, request: HoldRequest) -> HoldOutcome {
    create_hold(db, product, request, TTL)
        .await
        .expect("served")
}

/// A twin in another process: its key was looked up before the first request committed, so
/// its batch goes straight to the transaction.
async fn twin(db: &Db, product: ProductId, request: HoldRequest) -> HoldOutcome {
    let deadline = std::time::Instant::now() + ANSWER_WITHIN;
    let batch = Batch {
        holds: &[&request],
        carts: &[],
    };
    hold_transaction(db, product, batch, TTL, deadline, &|_| false)
        .await
        .expect("served")
        .remove(0)
}

fn granted(outcome: HoldOutcome) -> HoldView {
    match outcome {
        HoldOutcome::Granted(hold) => hold,
        other => panic!("not granted: {other:?}"),
    }
}

async fn count(db: &Db, sql: &str) -> i64 {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(
            db.conn().get_database_backend(),
            sql,
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a number")
}

async fn look_up(db: &Db, key: &str, fingerprint: &str) -> Lookup {
    let request = KeyClaim {
        scope: idempotency::HOLDS,
        key: key.into(),
        fingerprint: fingerprint.into(),
    };
    idempotency::lookup_many(db, idempotency::HOLDS, &[&request])
        .await
        .expect("look-up")
        .remove(0)
}

on_both_databases!(
    a_granted_key_lives_on_its_hold_and_replays_the_first_answer,
    a_twin_that_missed_the_first_commit_and_would_be_refused_is_told_the_key_is_taken,
    a_twin_that_missed_the_first_commit_and_would_be_granted_makes_no_second_hold,
    a_key_on_a_hold_older_than_a_day_is_free_again,
);

async fn a_granted_key_lives_on_its_hold_and_replays_the_first_answer(backend: Backend) {
    let (_t, db, product) = setup(backend, 5).await;
    let first = granted(hold(&db, product, keyed("k-1", "fp-a")).await);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM idempotency_keys").await,
        0,
        "no key row"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM holds WHERE idem_key = 'k-1'").await,
        1
    );
    assert!(
        matches!(look_up(&db, "k-1", "fp-a").await, Lookup::Finished(Replay::Hold(h)) if h == first)
    );
    assert!(matches!(
        look_up(&db, "k-1", "fp-b").await,
        Lookup::Mismatch
    ));
    // The same request again is answered from the hold, as the API serves it.
    assert!(
        matches!(hold(&db, product, keyed("k-1", "fp-a")).await, HoldOutcome::Replayed(Replay::Hold(h)) if h == first)
    );
    // Released since: the replay is still the first answer.
    release_hold(&db, first.id, Access::Service)
        .await
        .expect("released");
    assert!(
        matches!(look_up(&db, "k-1", "fp-a").await, Lookup::Finished(Replay::Hold(h)) if h == first)
    );
}

async fn a_twin_that_missed_the_first_commit_and_would_be_refused_is_told_the_key_is_taken(
    backend: Backend,
) {
    // Stock 1: the first request takes it; its twin's batch, which did not see the key
    // when it looked, would be refused for stock, and must not store that refusal as the
    // key's answer.
    let (_t, db, product) = setup(backend, 1).await;
    granted(hold(&db, product, keyed("k-2", "fp-a")).await);
    let same = twin(&db, product, keyed("k-2", "fp-a")).await;
    assert!(
        matches!(same, HoldOutcome::Refused(DomainError::IdempotencyKeyInUse)),
        "{same:?}"
    );
    let other_body = twin(&db, product, keyed("k-2", "fp-b")).await;
    assert!(
        matches!(
            other_body,
            HoldOutcome::Refused(DomainError::IdempotencyKeyMismatch)
        ),
        "{other_body:?}"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM idempotency_keys").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM holds").await, 1);
    // A refusal with a fresh key is stored, and replayed.
    let refused = hold(&db, product, keyed("k-3", "fp-a")).await;
    assert!(matches!(
        refused,
        HoldOutcome::Refused(DomainError::InsufficientStock { available: 0 })
    ));
    assert!(matches!(
        look_up(&db, "k-3", "fp-a").await,
        Lookup::Finished(Replay::Refused(DomainError::InsufficientStock {
            available: 0
        }))
    ));
}

async fn a_twin_that_missed_the_first_commit_and_would_be_granted_makes_no_second_hold(
    backend: Backend,
) {
    let (_t, db, product) = setup(backend, 5).await;
    granted(hold(&db, product, keyed("k-4", "fp-a")).await);
    // Its INSERT meets the unique key; the retried batch checks keys first.
    let same = twin(&db, product, keyed("k-4", "fp-a")).await;
    assert!(
        matches!(same, HoldOutcome::Refused(DomainError::IdempotencyKeyInUse)),
        "{same:?}"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM holds").await, 1);
    assert_eq!(
        count(&db, "SELECT available_stock FROM products").await,
        4,
        "one unit held, once"
    );
}

async fn a_key_on_a_hold_older_than_a_day_is_free_again(backend: Backend) {
    let (_t, db, product) = setup(backend, 5).await;
    let old = granted(hold(&db, product, keyed("k-5", "fp-a")).await);
    let day_ago = (chrono::Utc::now() - chrono::Duration::hours(25))
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    db.conn()
        .execute_unprepared(&format!(
            "UPDATE holds SET created_at = '{day_ago}' WHERE id = {}",
            old.id.get()
        ))
        .await
        .expect("age the hold");
    assert!(matches!(look_up(&db, "k-5", "fp-b").await, Lookup::Absent));
    let new = granted(hold(&db, product, keyed("k-5", "fp-b")).await);
    assert_ne!(new.id, old.id);
    assert!(
        matches!(look_up(&db, "k-5", "fp-b").await, Lookup::Finished(Replay::Hold(h)) if h == new)
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM holds WHERE idem_key IS NULL").await,
        1,
        "the old hold gave its key up"
    );
}
