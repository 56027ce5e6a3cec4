//! The `orders` table and the order state machine.

use sea_orm::entity::prelude::*;

use crate::types::{HoldId, OrderId, ProductId};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Waiting for payment; its quantity is out of `available_stock` but still in `stock`.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Paid; its quantity has left `stock`. Final.
    #[sea_orm(string_value = "paid")]
    Paid,
    /// Payment failed or timed out; its quantity is available again.
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

impl OrderStatus {
    /// Pending orders get paid or cancelled; a cancelled order can still be paid by a late
    /// success if the stock is there (checked by the caller under the product lock). Paid is
    /// final.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Pending, Paid) | (Pending, Cancelled) | (Cancelled, Paid)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "paid" => Some(Self::Paid),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: OrderId,
    #[sea_orm(unique)]
    pub hold_id: HoldId,
    pub product_id: ProductId,
    pub quantity: i32,
    pub total_cents: i64,
    pub status: OrderStatus,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The hold's buyer.
    pub buyer_id: Option<String>,
    /// Paid for, but its units could not be delivered: the payment is owed back.
    pub refund_required: bool,
    /// The hold's owner secret hash (see `crate::rules::ownership`): the order answers the caller
    /// who could reach its hold.
    pub secret_hash: Option<String>,
    /// On every line of an order made from a cart: the id of its first line, the order's id
    /// for clients. Null on an order of one product.
    pub cart_id: Option<OrderId>,
}

impl Model {
    /// A line of a cart's order other than its first: not reachable by its own id.
    pub fn is_inner_line(&self) -> bool {
        self.cart_id.is_some_and(|cart| cart != self.id)
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::hold::Entity",
        from = "Column::HoldId",
        to = "super::hold::Column::Id"
    )]
    Hold,
    #[sea_orm(
        belongs_to = "super::product::Entity",
        from = "Column::ProductId",
        to = "super::product::Column::Id"
    )]
    Product,
}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;

    #[test]
    fn paid_is_final_and_cancelled_only_becomes_paid() {
        assert!(Pending.can_become(Paid));
        assert!(Pending.can_become(Cancelled));
        assert!(Cancelled.can_become(Paid));
        for next in [Pending, Paid, Cancelled] {
            assert!(!Paid.can_become(next));
        }
        assert!(!Cancelled.can_become(Pending));
        assert!(!Pending.can_become(Pending));
    }
}
