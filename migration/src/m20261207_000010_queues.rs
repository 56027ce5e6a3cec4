//! Fair admission: products that admit buyers through a queue.
//!
//! - `products.admission` (`open` or `queue`, default `open`, so existing products sell as
//!   before) and `products.admission_window_seconds` (default 120).
//! - `queues`: one row per product that ever had a queue, its counters and its head, changed
//!   only under that row's lock: joins take it to number their tickets, admission passes (under
//!   the product's lock first) to move the head.
//! - `queue_tickets`: one row per ticket. `seq` is the ticket's place in admission order, dense
//!   per product (unique): a ticket that joined before the sale opened has none until the
//!   draw, which gives every early ticket its place at random. `live_buyer` is the buyer while
//!   the ticket is waiting or admitted and NULL afterwards, so its unique index keeps one live
//!   ticket per buyer and product (both backends let a unique index hold many NULLs).
//!
//! Neither table has a foreign key to `products`: InnoDB checks one by taking a shared lock
//! on the product row, so every join would wait for the hold batch holding that row, and a
//! join holding the queue's lock could deadlock with an admission pass (product, then queue).
//! Products are never deleted, and tickets are made only for a product read first.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Admission,
    AdmissionWindowSeconds,
}

#[derive(DeriveIden)]
enum Queues {
    Table,
    ProductId,
    Opened,
    Drawn,
    Closed,
    EarlyCount,
    LateCount,
    Head,
    Waiting,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum QueueTickets {
    Table,
    Id,
    ProductId,
    BuyerId,
    LiveBuyer,
    SecretHash,
    State,
    Early,
    Seq,
    JoinedAt,
    AdmittedAt,
    AdmissionExpiresAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        // SQLite adds one column per ALTER TABLE.
        for column in [
            ColumnDef::new(Products::Admission)
                .string_len(8)
                .not_null()
                .default("open")
                .to_owned(),
            ColumnDef::new(Products::AdmissionWindowSeconds)
                .integer()
                .not_null()
                .default(120)
                .to_owned(),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter()
                        .table(Products::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        let time = |name: DynIden| {
            ColumnDef::new(name)
                .custom(Alias::new("DATETIME(6)"))
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(Queues::Table)
                    .col(
                        ColumnDef::new(Queues::ProductId)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Queues::Opened).boolean().not_null())
                    .col(ColumnDef::new(Queues::Drawn).boolean().not_null())
                    .col(ColumnDef::new(Queues::Closed).boolean().not_null())
                    .col(ColumnDef::new(Queues::EarlyCount).big_integer().not_null())
                    .col(ColumnDef::new(Queues::LateCount).big_integer().not_null())
                    .col(ColumnDef::new(Queues::Head).big_integer().not_null())
                    .col(ColumnDef::new(Queues::Waiting).big_integer().not_null())
                    .col(time(Queues::UpdatedAt.into_iden()).not_null())
                    .check(Expr::col(Queues::Waiting).gte(0))
                    .to_owned(),
            )
            .await?;
        // Compared exactly, and the same in every server's default character set.
        let (buyer_type, hash_type) = match backend {
            DbBackend::Sqlite => ("VARCHAR(128)", "CHAR(64)"),
            _ => (
                "VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                "CHAR(64) CHARACTER SET ascii COLLATE ascii_bin",
            ),
        };
        manager
            .create_table(
                Table::create()
                    .table(QueueTickets::Table)
                    .col(
                        ColumnDef::new(QueueTickets::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QueueTickets::ProductId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueTickets::BuyerId)
                            .custom(Alias::new(buyer_type))
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QueueTickets::LiveBuyer)
                            .custom(Alias::new(buyer_type))
                            .null(),
                    )
                    .col(
                        ColumnDef::new(QueueTickets::SecretHash)
                            .custom(Alias::new(hash_type))
                            .null(),
                    )
                    .col(
                        ColumnDef::new(QueueTickets::State)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(QueueTickets::Early).boolean().not_null())
                    .col(ColumnDef::new(QueueTickets::Seq).big_integer().null())
                    .col(time(QueueTickets::JoinedAt.into_iden()).not_null())
                    .col(time(QueueTickets::AdmittedAt.into_iden()).null())
                    .col(time(QueueTickets::AdmissionExpiresAt.into_iden()).null())
                    .col(time(QueueTickets::UpdatedAt.into_iden()).not_null())
                    .to_owned(),
            )
            .await?;
        let index = |name: &str| {
            Index::create()
                .name(name)
                .table(QueueTickets::Table)
                .to_owned()
        };
        for index in [
            index("uq_tickets_live_buyer")
                .col(QueueTickets::ProductId)
                .col(QueueTickets::LiveBuyer)
                .unique()
                .to_owned(),
            index("uq_tickets_seq")
                .col(QueueTickets::ProductId)
                .col(QueueTickets::Seq)
                .unique()
                .to_owned(),
            // Admission (waiting tickets in order), the left tickets a position skips, the
            // admitted ones a pass expires, and the early ones the draw numbers.
            index("idx_tickets_product_state_seq")
                .col(QueueTickets::ProductId)
                .col(QueueTickets::State)
                .col(QueueTickets::Seq)
                .to_owned(),
        ] {
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QueueTickets::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Queues::Table).to_owned())
            .await?;
        for column in [Products::Admission, Products::AdmissionWindowSeconds] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Products::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
