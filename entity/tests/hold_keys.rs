//! Keyed holds keep their `Idempotency-Key` on the hold row: the races the HTTP suites cannot
//! force, driven straight through the hold batch on MariaDB and SQLite. A twin in another
//! process is a batch whose key look-up missed the first request's commit.

use entity::{
    Db, DbConfig, DomainError, Money, Quantity,
    holds::{self, HoldRequest, HoldView},
    idempotency::{self, Keyed, KeyedRequest, Lookup, StoredResponse},
    products,
    types::ProductId,
};
use flash_sale_tests::{Backend, TestDb, on_both_databases};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, Statement};

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

/// Any answer, written down as its debug form: enough to see what was stored.
fn render(answer: &Result<HoldView, DomainError>) -> Option<StoredResponse> {
    Some(StoredResponse {
        status: if answer.is_ok() { 201 } else { 409 },
        content_type: "text/plain".into(),
        body: format!("{answer:?}"),
    })
}

fn keyed(key: &str, fingerprint: &str) -> HoldRequest {
    HoldRequest {
        keyed: Some(Keyed {
            request: std::sync::Arc::new(KeyedRequest {
                scope: idempotency::HOLDS,
                key: key.into(),
                fingerprint: fingerprint.into(),
            }),
            render,
        }),
        ..HoldRequest::new(Quantity::new(1, 10).expect("qty"))
    }
}

async fn hold(db: &Db, product: ProductId, request: HoldRequest) -> Result<HoldView, DomainError> {
    holds::create_hold(db, product, request, TTL).await
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
    let request = KeyedRequest {
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
    a_key_on_a_hold_older_than_a_day_is_free_again
);

async fn a_granted_key_lives_on_its_hold_and_replays_the_first_answer(backend: Backend) {
    let (_t, db, product) = setup(backend, 5).await;
    let first = hold(&db, product, keyed("k-1", "fp-a"))
        .await
        .expect("granted");
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM idempotency_keys").await,
        0,
        "no key row"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM holds WHERE idem_key = 'k-1'").await,
        1
    );
    assert_eq!(
        look_up(&db, "k-1", "fp-a").await,
        Lookup::Hold(first.clone())
    );
    assert_eq!(look_up(&db, "k-1", "fp-b").await, Lookup::Mismatch);
    // Released since: the replay is still the first answer.
    holds::release_hold(&db, first.id, entity::ownership::Access::Service)
        .await
        .expect("released");
    assert_eq!(look_up(&db, "k-1", "fp-a").await, Lookup::Hold(first));
}

async fn a_twin_that_missed_the_first_commit_and_would_be_refused_is_told_the_key_is_taken(
    backend: Backend,
) {
    // Stock 1: the first request takes it; its twin's batch, which did not see the key
    // when it looked, would be refused for stock, and must not store that refusal as the
    // key's answer.
    let (_t, db, product) = setup(backend, 1).await;
    hold(&db, product, keyed("k-2", "fp-a"))
        .await
        .expect("granted");
    let twin = hold(&db, product, keyed("k-2", "fp-a")).await;
    assert!(
        matches!(twin, Err(DomainError::IdempotencyKeyInUse)),
        "{twin:?}"
    );
    let other_body = hold(&db, product, keyed("k-2", "fp-b")).await;
    assert!(
        matches!(other_body, Err(DomainError::IdempotencyKeyMismatch)),
        "{other_body:?}"
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM idempotency_keys").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM holds").await, 1);
    // A refusal with a fresh key is stored, and replayed.
    let refused = hold(&db, product, keyed("k-3", "fp-a")).await;
    assert!(matches!(
        refused,
        Err(DomainError::InsufficientStock { available: 0 })
    ));
    assert!(matches!(look_up(&db, "k-3", "fp-a").await, Lookup::Replay(r) if r.status == 409));
}

async fn a_twin_that_missed_the_first_commit_and_would_be_granted_makes_no_second_hold(
    backend: Backend,
) {
    let (_t, db, product) = setup(backend, 5).await;
    hold(&db, product, keyed("k-4", "fp-a"))
        .await
        .expect("granted");
    // Its INSERT meets the unique key; the retried batch checks keys first.
    let twin = hold(&db, product, keyed("k-4", "fp-a")).await;
    assert!(
        matches!(twin, Err(DomainError::IdempotencyKeyInUse)),
        "{twin:?}"
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
    let old = hold(&db, product, keyed("k-5", "fp-a"))
        .await
        .expect("granted");
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
    assert_eq!(look_up(&db, "k-5", "fp-b").await, Lookup::Absent);
    let new = hold(&db, product, keyed("k-5", "fp-b"))
        .await
        .expect("runs afresh");
    assert_ne!(new.id, old.id);
    assert_eq!(look_up(&db, "k-5", "fp-b").await, Lookup::Hold(new));
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM holds WHERE idem_key IS NULL").await,
        1,
        "the old hold gave its key up"
    );
}
