//! Serializing migrations across processes and database nodes.
//!
//! `GET_LOCK` is a lock of one server: Galera does not replicate it, so APIs starting at once on
//! different nodes would all migrate together (and the losers' DDL fail). A lease is a row in a
//! table of our own, taken by a conditional `UPDATE` that commits: Galera certifies that write
//! like any other, so of two nodes taking it at once exactly one commits. A holder that dies
//! leaves a lease that runs out after [`LEASE`]; a live holder renews it while it works.

use std::time::Duration;

use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr};

/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(30);
/// How often the holder renews it.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// How long a process waits for another's migration before giving up.
const WAIT_AT_MOST: Duration = Duration::from_secs(180);

const TABLE: &str = "flash_sale_migration_lease";

/// Runs `work` while holding the migration lease (MySQL/MariaDB). Other backends run it as is:
/// one SQLite file is one server, and its write lock serializes the DDL.
pub async fn with_lease<T>(
    conn: &DatabaseConnection,
    work: impl AsyncFnOnce() -> Result<T, DbErr>,
) -> Result<T, DbErr> {
    if conn.get_database_backend() != DbBackend::MySql {
        return work().await;
    }
    let owner = owner_id();
    acquire(conn, &owner).await?;
    let renew = {
        let conn = conn.clone();
        let owner = owner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let _ = conn.execute_unprepared(&renew_sql(&owner)).await;
            }
        })
    };
    let result = work().await;
    renew.abort();
    conn.execute_unprepared(&format!(
        "UPDATE {TABLE} SET owner = NULL, expires_at = NULL WHERE id = 1 AND owner = '{owner}'"
    ))
    .await?;
    result
}

async fn acquire(conn: &DatabaseConnection, owner: &str) -> Result<(), DbErr> {
    // Both are idempotent, and safe to run from every node at once (DDL is totally ordered on
    // Galera; a duplicate INSERT IGNORE is a no-op).
    conn.execute_unprepared(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (\
           id INT NOT NULL PRIMARY KEY, \
           owner VARCHAR(64) NULL, \
           expires_at DATETIME(6) NULL)"
    ))
    .await?;
    let started = std::time::Instant::now();
    let mut seeded = false;
    loop {
        if !seeded {
            // A certification conflict with another node's identical INSERT is just a retry.
            seeded = conn
                .execute_unprepared(&format!("INSERT IGNORE INTO {TABLE} (id) VALUES (1)"))
                .await
                .is_ok();
        }
        let taken = conn
            .execute_unprepared(&format!(
                "UPDATE {TABLE} SET owner = '{owner}', \
                   expires_at = NOW(6) + INTERVAL {} SECOND \
                 WHERE id = 1 AND (owner IS NULL OR expires_at < NOW(6))",
                LEASE.as_secs()
            ))
            .await;
        match taken {
            Ok(r) if seeded && r.rows_affected() == 1 => return Ok(()),
            // Taken by someone else, or our UPDATE lost a certification conflict: wait.
            Ok(_) | Err(_) if started.elapsed() < WAIT_AT_MOST => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(_) => {
                return Err(DbErr::Migration(format!(
                    "another process held the migration lease for over {} s",
                    WAIT_AT_MOST.as_secs()
                )));
            }
            Err(e) => return Err(e),
        }
    }
}

fn renew_sql(owner: &str) -> String {
    format!(
        "UPDATE {TABLE} SET expires_at = NOW(6) + INTERVAL {} SECOND \
         WHERE id = 1 AND owner = '{owner}'",
        LEASE.as_secs()
    )
}

/// A name for this holder, unique enough across processes and hosts: the process id and a
/// random number (std's hasher seeds are random per process). Only digits and a dash, so it can
/// be inlined in SQL.
fn owner_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{}-{}", std::process::id(), h.finish())
}
