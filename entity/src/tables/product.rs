//! The `products` table.

use sea_orm::entity::prelude::*;

use crate::types::ProductId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "products")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: ProductId,
    pub name: String,
    /// Price in cents (see [`crate::Money`]).
    pub price_cents: i64,
    /// Units on hand, not yet sold. Drops only when an order is paid.
    pub stock: i32,
    /// `stock` minus active holds (including expired ones not yet reclaimed) minus pending
    /// orders. Changed only under this row's lock.
    pub available_stock: i32,
    pub created_at: DateTimeUtc,
    /// Holds before this moment are refused (`sale_not_started`); none: on sale already.
    pub sale_starts_at: Option<DateTimeUtc>,
    /// Holds at or after this moment are refused (`sale_ended`); none: no end.
    pub sale_ends_at: Option<DateTimeUtc>,
    /// Most units one buyer may hold or buy (active holds + pending and paid orders).
    pub per_buyer_limit: Option<i32>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::hold::Entity")]
    Hold,
}

impl Related<super::hold::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Hold.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
