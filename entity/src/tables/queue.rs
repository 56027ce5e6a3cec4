//! The `queues` table: one row per product that has (or had) a queue, changed only under its
//! own lock. Its counters number the tickets densely, so a ticket's position is arithmetic on
//! this row and an index look-up, never a scan of the line.

use sea_orm::entity::prelude::*;

use crate::types::ProductId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queues")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub product_id: ProductId,
    /// The sale has opened for this queue: tickets made from now on are late (in joining
    /// order). Set once, by the first join or admission pass that sees the opening, so two
    /// processes whose clocks differ never number a ticket both ways.
    pub opened: bool,
    /// The early tickets have their places (`seq` 1 to `early_count`).
    pub drawn: bool,
    /// No more joins: the sale ended or the stock ran out (or the product went back to open
    /// admission).
    pub closed: bool,
    /// Tickets made before the opening.
    pub early_count: i64,
    /// Tickets made after it (numbered `early_count + 1` on).
    pub late_count: i64,
    /// The `seq` of the last ticket an admission pass has passed (admitted, or skipped because
    /// it left): every waiting ticket is after it.
    pub head: i64,
    /// Tickets waiting now.
    pub waiting: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
