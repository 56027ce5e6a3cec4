//! The `products` table.

use sea_orm::entity::prelude::*;

use crate::types::ProductId;

/// How buyers reach a product's stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(8))")]
pub enum Admission {
    /// Anyone may hold (first come, first served).
    #[default]
    #[sea_orm(string_value = "open")]
    Open,
    /// A hold needs the buyer's admitted queue ticket (`crate::operations::queue`).
    #[sea_orm(string_value = "queue")]
    Queue,
}

impl Admission {
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Open => "open",
            Admission::Queue => "queue",
        }
    }
}

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
    pub admission: Admission,
    /// With queue admission: how long an admitted buyer has to make a hold.
    pub admission_window_seconds: i32,
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
