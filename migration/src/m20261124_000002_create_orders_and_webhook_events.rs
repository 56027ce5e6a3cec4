//! Orders and recorded payment webhooks.
//!
//! `orders.hold_id` is UNIQUE: a hold becomes at most one order, whatever races.
//! `webhook_events.idempotency_key` is UNIQUE: the insert of the event, in the same transaction
//! as its effect, decides which of two identical deliveries has the effect.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    HoldId,
    ProductId,
    Quantity,
    TotalCents,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookEvents {
    Table,
    Id,
    IdempotencyKey,
    Fingerprint,
    OrderId,
    EventStatus,
    OrderStatus,
    Conflict,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Holds {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
}

fn datetime6() -> Alias {
    Alias::new("DATETIME(6)")
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Orders::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Orders::HoldId).big_integer().not_null())
                    .col(ColumnDef::new(Orders::ProductId).big_integer().not_null())
                    .col(ColumnDef::new(Orders::Quantity).integer().not_null())
                    .col(ColumnDef::new(Orders::TotalCents).big_integer().not_null())
                    .col(ColumnDef::new(Orders::Status).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Orders::CreatedAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Orders::UpdatedAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .check(Expr::col(Orders::Quantity).gt(0))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_orders_hold")
                            .from(Orders::Table, Orders::HoldId)
                            .to(Holds::Table, Holds::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_orders_product")
                            .from(Orders::Table, Orders::ProductId)
                            .to(Products::Table, Products::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_orders_hold")
                    .table(Orders::Table)
                    .col(Orders::HoldId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The payment-timeout sweep: `status = 'pending' AND created_at <= ? ORDER BY created_at`.
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_status_created")
                    .table(Orders::Table)
                    .col(Orders::Status)
                    .col(Orders::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_product_status")
                    .table(Orders::Table)
                    .col(Orders::ProductId)
                    .col(Orders::Status)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WebhookEvents::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::IdempotencyKey)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::Fingerprint)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::OrderId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::EventStatus)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::OrderStatus)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::Conflict)
                            .string_len(64)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(WebhookEvents::CreatedAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_webhook_events_key")
                    .table(WebhookEvents::Table)
                    .col(WebhookEvents::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WebhookEvents::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Orders::Table).to_owned())
            .await
    }
}
