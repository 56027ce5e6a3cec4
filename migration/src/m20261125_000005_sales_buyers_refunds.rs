//! Sale windows and per-buyer limits on products, the buyer on holds and orders, and the
//! "refund owed" mark on orders.
//!
//! - `products.sale_starts_at` / `sale_ends_at` / `per_buyer_limit`: all nullable (no window, no
//!   limit), so existing products sell as before.
//! - `holds.buyer_id`, `orders.buyer_id`: the opaque buyer a limit counts against. The indexes
//!   serve the one query a hold batch makes for its buyers under the product lock: active holds
//!   and pending or paid orders of these buyers on this product.
//! - `orders.refund_required`: a payment taken for units that could not be delivered; indexed
//!   with the id for the operators' paged list.

use sea_orm_migration::{prelude::*, sea_orm::DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Products {
    Table,
    SaleStartsAt,
    SaleEndsAt,
    PerBuyerLimit,
}

#[derive(DeriveIden)]
enum Holds {
    Table,
    ProductId,
    BuyerId,
    Status,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    ProductId,
    BuyerId,
    Status,
    RefundRequired,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [
            ColumnDef::new(Products::SaleStartsAt)
                .custom(Alias::new("DATETIME(6)"))
                .null()
                .to_owned(),
            ColumnDef::new(Products::SaleEndsAt)
                .custom(Alias::new("DATETIME(6)"))
                .null()
                .to_owned(),
            ColumnDef::new(Products::PerBuyerLimit)
                .integer()
                .null()
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
        manager
            .alter_table(
                Table::alter()
                    .table(Holds::Table)
                    .add_column(ColumnDef::new(Holds::BuyerId).string_len(128).null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(ColumnDef::new(Orders::BuyerId).string_len(128).null())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Orders::Table)
                    .add_column(
                        ColumnDef::new(Orders::RefundRequired)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        // Buyers are compared exactly (`Ann` is not `ann`): a binary collation on MySQL and
        // MariaDB, whose default ones ignore case; SQLite compares bytes already.
        if manager.get_database_backend() == DbBackend::MySql {
            for table in ["holds", "orders"] {
                manager
                    .get_connection()
                    .execute_unprepared(&format!(
                        "ALTER TABLE {table} MODIFY buyer_id VARCHAR(128) \
                         CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL"
                    ))
                    .await?;
            }
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_product_buyer")
                    .table(Holds::Table)
                    .col(Holds::ProductId)
                    .col(Holds::BuyerId)
                    .col(Holds::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_product_buyer")
                    .table(Orders::Table)
                    .col(Orders::ProductId)
                    .col(Orders::BuyerId)
                    .col(Orders::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_refund_required")
                    .table(Orders::Table)
                    .col(Orders::RefundRequired)
                    .col(Orders::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (index, table) in [
            ("idx_orders_refund_required", Orders::Table.to_string()),
            ("idx_orders_product_buyer", Orders::Table.to_string()),
            ("idx_holds_product_buyer", Holds::Table.to_string()),
        ] {
            manager
                .drop_index(
                    Index::drop()
                        .name(index)
                        .table(Alias::new(table))
                        .to_owned(),
                )
                .await?;
        }
        for column in [Orders::RefundRequired, Orders::BuyerId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Orders::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Holds::Table)
                    .drop_column(Holds::BuyerId)
                    .to_owned(),
            )
            .await?;
        for column in [
            Products::PerBuyerLimit,
            Products::SaleEndsAt,
            Products::SaleStartsAt,
        ] {
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
