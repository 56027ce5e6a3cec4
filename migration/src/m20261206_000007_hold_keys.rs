//! A granted keyed hold carries its `Idempotency-Key` and request fingerprint on its own row,
//! under a unique index, instead of a row of its own in `idempotency_keys`. The key is then
//! written by the batch's one hold `INSERT` (one more index entry), and its 201 is replayed
//! from the hold: a key row cost MariaDB about three times the CPU of the key on the hold row
//! (`tests/bench-results/README.md`, "Statements").
//!
//! `idempotency_keys` keeps every other answer: refusals of keyed holds, and all order keys.
//! Keys written there before this migration keep working; both places are looked up.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "uq_holds_idem_key";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let conn = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Sqlite => {
                conn.execute_unprepared("ALTER TABLE holds ADD COLUMN idem_key TEXT NULL")
                    .await?;
                conn.execute_unprepared("ALTER TABLE holds ADD COLUMN idem_fingerprint TEXT NULL")
                    .await?;
            }
            _ => {
                // Keys are compared exactly (ascii, binary), as in `idempotency_keys`.
                conn.execute_unprepared(
                    "ALTER TABLE holds \
                       ADD COLUMN idem_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL, \
                       ADD COLUMN idem_fingerprint CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL",
                )
                .await?;
            }
        }
        // Unique, so that two processes granting one key cannot both commit; unkeyed holds
        // (NULL) do not collide.
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Alias::new("holds"))
                    .col(Alias::new("idem_key"))
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(Alias::new("holds"))
                    .to_owned(),
            )
            .await?;
        for column in ["idem_key", "idem_fingerprint"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new("holds"))
                        .drop_column(Alias::new(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
