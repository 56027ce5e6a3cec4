//! Carts and extensions.
//!
//! - A hold (or order) of several products is one row per line. The cart's first line (its
//!   "head") has the id clients see. `holds.cart_lines` is set on a cart's head (how many lines
//!   it has), `holds.cart_id` on its other lines (the head's id): both written by the insert
//!   itself. `orders.cart_id` is the head order's id on every row of a cart's order, its own
//!   included. Null on a one-product hold or order. Every per-product rule and counter keeps
//!   working on the line rows unchanged.
//! - `holds.extensions`: how many times the hold was extended.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Holds {
    Table,
    CartId,
    CartLines,
    Extensions,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    CartId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for (table, mut column) in [
            (
                Holds::Table.into_iden(),
                ColumnDef::new(Holds::CartId)
                    .big_integer()
                    .null()
                    .to_owned(),
            ),
            (
                Holds::Table.into_iden(),
                ColumnDef::new(Holds::CartLines).integer().null().to_owned(),
            ),
            (
                Holds::Table.into_iden(),
                ColumnDef::new(Holds::Extensions)
                    .integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            ),
            (
                Orders::Table.into_iden(),
                ColumnDef::new(Orders::CartId)
                    .big_integer()
                    .null()
                    .to_owned(),
            ),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        // A cart's lines are found from its head.
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_cart")
                    .table(Holds::Table)
                    .col(Holds::CartId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_cart")
                    .table(Orders::Table)
                    .col(Orders::CartId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (index, table) in [
            ("idx_holds_cart", Holds::Table.into_iden()),
            ("idx_orders_cart", Orders::Table.into_iden()),
        ] {
            manager
                .drop_index(Index::drop().name(index).table(table).to_owned())
                .await?;
        }
        for (table, column) in [
            (Holds::Table.into_iden(), Holds::CartId.into_iden()),
            (Holds::Table.into_iden(), Holds::CartLines.into_iden()),
            (Holds::Table.into_iden(), Holds::Extensions.into_iden()),
            (Orders::Table.into_iden(), Orders::CartId.into_iden()),
        ] {
            manager
                .alter_table(Table::alter().table(table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
