//! A key's outcome is kept typed, not as HTTP bytes: `idempotency_keys.outcome` (JSON of
//! `entity::operations::idempotency::StoredOutcome`) replaces `response_status`,
//! `response_content_type` and `response_body`, so that only the API renders answers, first
//! time and replay alike.
//!
//! The rows of the old shape are deleted. That can cost a retry its replay but never makes a
//! second effect: these rows held only keyed holds' refusals (which took nothing) and order
//! keys (the hold stays the order's own key: a retry answers the same order, 200). Granted holds
//! keep their keys on their rows, untouched.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Outcome,
    ResponseStatus,
    ResponseContentType,
    ResponseBody,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DELETE FROM idempotency_keys")
            .await?;
        let mut outcome = ColumnDef::new(IdempotencyKeys::Outcome);
        match manager.get_database_backend() {
            DbBackend::Sqlite => outcome.text(),
            // Emoji in a product's name survive any server default character set.
            _ => outcome.custom(Alias::new("LONGTEXT CHARACTER SET utf8mb4")),
        };
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyKeys::Table)
                    .add_column(outcome.null())
                    .to_owned(),
            )
            .await?;
        // SQLite drops one column per ALTER TABLE.
        for column in [
            IdempotencyKeys::ResponseStatus,
            IdempotencyKeys::ResponseContentType,
            IdempotencyKeys::ResponseBody,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(IdempotencyKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DELETE FROM idempotency_keys")
            .await?;
        for column in [
            ColumnDef::new(IdempotencyKeys::ResponseStatus)
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(IdempotencyKeys::ResponseContentType)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(IdempotencyKeys::ResponseBody)
                .text()
                .null()
                .to_owned(),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(IdempotencyKeys::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(IdempotencyKeys::Table)
                    .drop_column(IdempotencyKeys::Outcome)
                    .to_owned(),
            )
            .await
    }
}
