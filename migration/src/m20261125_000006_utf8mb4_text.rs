//! Every text column a client's or the service's own words go into is `utf8mb4`, whatever the
//! server's default character set. Tables made before took the database's default, and where
//! that is `latin1` (MariaDB before 11.6 without a distribution's configuration, older MySQL)
//! a product named with an emoji failed with a 500, and a stored idempotent answer naming one
//! could not be written or replayed byte for byte. Binary collation, as SQLite compares:
//! statuses and keys are compared exactly. Columns already typed on purpose (`ascii` keys,
//! `utf8mb4_bin` buyer ids) are left as they are.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A text column: its name, type and nullability as the earlier migrations made it.
type Column = (&'static str, &'static str, &'static str);

/// Each table's text columns.
const COLUMNS: &[(&str, &[Column])] = &[
    ("products", &[("name", "VARCHAR(255)", "NOT NULL")]),
    ("holds", &[("status", "VARCHAR(16)", "NOT NULL")]),
    ("orders", &[("status", "VARCHAR(16)", "NOT NULL")]),
    (
        "idempotency_keys",
        &[
            ("state", "VARCHAR(16)", "NOT NULL"),
            ("response_content_type", "VARCHAR(64)", "NULL"),
            ("response_body", "TEXT", "NULL"),
        ],
    ),
    (
        "webhook_events",
        &[
            ("idempotency_key", "VARCHAR(255)", "NOT NULL"),
            ("fingerprint", "VARCHAR(64)", "NOT NULL"),
            ("event_status", "VARCHAR(16)", "NOT NULL"),
            ("order_status", "VARCHAR(16)", "NOT NULL"),
            ("conflict", "VARCHAR(64)", "NULL"),
        ],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        retype(manager, "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin", true).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        retype(manager, "", false).await
    }
}

/// Gives every listed column `charset` (empty: the table's default again), and with
/// `table_default` makes `utf8mb4` the table's default too, on MySQL/MariaDB.
async fn retype(
    manager: &SchemaManager<'_>,
    charset: &str,
    table_default: bool,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::MySql {
        return Ok(());
    }
    for (table, columns) in COLUMNS {
        let mut changes: Vec<String> = columns
            .iter()
            .map(|(name, kind, null)| format!("MODIFY {name} {kind} {charset} {null}"))
            .collect();
        if table_default {
            changes.push("DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin".to_owned());
        }
        manager
            .get_connection()
            .execute_unprepared(&format!("ALTER TABLE {table} {}", changes.join(", ")))
            .await?;
    }
    Ok(())
}
