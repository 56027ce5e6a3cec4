//! Idempotency keys are compared exactly. MySQL and MariaDB compare `VARCHAR`s with the table's
//! collation, case- and accent-insensitive by default, so `Order-1` and `order-1` would have
//! been one key: another client's answer replayed, or a false mismatch. Keys, scopes and
//! fingerprints are printable ASCII (the API refuses anything else), so they become `ascii`
//! with binary comparison, which also makes the unique index a quarter of the size (255 bytes a
//! key instead of 1,020) and its comparisons byte-wise. SQLite already compares bytes.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        retype(manager, "CHARACTER SET ascii COLLATE ascii_bin").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        retype(manager, "").await
    }
}

/// Gives the three text columns `charset` (empty: the table's default again), on MySQL/MariaDB.
async fn retype(manager: &SchemaManager<'_>, charset: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::MySql {
        return Ok(());
    }
    manager
        .get_connection()
        .execute_unprepared(&format!(
            "ALTER TABLE idempotency_keys \
               MODIFY scope VARCHAR(32) {charset} NOT NULL, \
               MODIFY idem_key VARCHAR(255) {charset} NOT NULL, \
               MODIFY fingerprint VARCHAR(64) {charset} NOT NULL"
        ))
        .await
        .map(|_| ())
}
