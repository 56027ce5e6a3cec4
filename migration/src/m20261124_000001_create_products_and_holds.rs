//! Products and holds.
//!
//! `products.available_stock` is a counter kept by the stock operations in `entity` under the
//! product row lock; the CHECK constraints make an oversell impossible even for a buggy writer.
//! Times are `DATETIME(6)` (microseconds, no 2038 limit) and always written in UTC.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Name,
    PriceCents,
    Stock,
    AvailableStock,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Holds {
    Table,
    Id,
    ProductId,
    Qty,
    Status,
    ExpiresAt,
    CreatedAt,
    UpdatedAt,
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
                    .table(Products::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Products::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Products::Name).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Products::PriceCents)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Products::Stock).integer().not_null())
                    .col(
                        ColumnDef::new(Products::AvailableStock)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Products::CreatedAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .check(Expr::col(Products::PriceCents).gte(0))
                    .check(Expr::col(Products::AvailableStock).gte(0))
                    .check(Expr::col(Products::AvailableStock).lte(Expr::col(Products::Stock)))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Holds::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Holds::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Holds::ProductId).big_integer().not_null())
                    .col(ColumnDef::new(Holds::Qty).integer().not_null())
                    .col(ColumnDef::new(Holds::Status).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Holds::ExpiresAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Holds::CreatedAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Holds::UpdatedAt)
                            .custom(datetime6())
                            .not_null(),
                    )
                    .check(Expr::col(Holds::Qty).gt(0))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_holds_product")
                            .from(Holds::Table, Holds::ProductId)
                            .to(Products::Table, Products::Id),
                    )
                    .to_owned(),
            )
            .await?;

        // The worker's sweep: `status = 'active' AND expires_at <= ? ORDER BY expires_at LIMIT n`.
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_status_expires")
                    .table(Holds::Table)
                    .col(Holds::Status)
                    .col(Holds::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        // Per-product reclaim and the expired part of `available_stock`; also serves the foreign key.
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_product_status_expires")
                    .table(Holds::Table)
                    .col(Holds::ProductId)
                    .col(Holds::Status)
                    .col(Holds::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Holds::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Products::Table).to_owned())
            .await
    }
}
