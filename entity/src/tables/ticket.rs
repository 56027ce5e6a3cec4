//! The `queue_tickets` table and the ticket state machine.

use sea_orm::entity::prelude::*;

use crate::types::{ProductId, TicketId};

/// Where a ticket is in the queue of a product with `admission = queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum TicketState {
    /// In line: not yet admitted.
    #[sea_orm(string_value = "waiting")]
    Waiting,
    /// May make one hold until `admission_expires_at`.
    #[sea_orm(string_value = "admitted")]
    Admitted,
    /// Its admission made a hold.
    #[sea_orm(string_value = "used")]
    Used,
    /// Admitted, and not used within the product's admission window.
    #[sea_orm(string_value = "expired")]
    Expired,
    /// Its buyer left the queue.
    #[sea_orm(string_value = "left")]
    Left,
    /// Still waiting when the sale ended or the stock ran out.
    #[sea_orm(string_value = "closed")]
    Closed,
}

impl TicketState {
    /// The only moves a ticket can make: a waiting one is admitted, leaves or is closed; an
    /// admitted one is used, expires or leaves. Every other state is final.
    pub fn can_become(self, next: TicketState) -> bool {
        use TicketState::*;
        matches!(
            (self, next),
            (Waiting, Admitted | Left | Closed) | (Admitted, Used | Expired | Left)
        )
    }

    /// Waiting or admitted: the buyer's one live ticket for the product.
    pub fn is_live(self) -> bool {
        matches!(self, TicketState::Waiting | TicketState::Admitted)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Waiting => "waiting",
            TicketState::Admitted => "admitted",
            TicketState::Used => "used",
            TicketState::Expired => "expired",
            TicketState::Left => "left",
            TicketState::Closed => "closed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_tickets")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: TicketId,
    pub product_id: ProductId,
    pub buyer_id: String,
    /// `buyer_id` while the ticket is live, NULL after: unique per product, so a buyer has at
    /// most one live ticket for a product.
    pub live_buyer: Option<String>,
    /// SHA-256 (hex) of the ticket's `client_secret` (anonymous buyers); none with
    /// `BUYER_AUTH=jwt`, where `buyer_id` is the owner.
    pub secret_hash: Option<String>,
    pub state: TicketState,
    /// Joined before the sale opened: its place is drawn at random at the opening.
    pub early: bool,
    /// Its place in admission order, dense per product from 1; none for an early ticket until
    /// the draw.
    pub seq: Option<i64>,
    pub joined_at: DateTimeUtc,
    pub admitted_at: Option<DateTimeUtc>,
    pub admission_expires_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::product::Entity",
        from = "Column::ProductId",
        to = "super::product::Column::Id"
    )]
    Product,
}

impl Related<super::product::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Product.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    use super::TicketState::{self, *};
    use sea_orm::Iterable;

    #[test]
    fn tickets_move_only_forward_and_only_live_ones_move() {
        for from in TicketState::iter() {
            for next in TicketState::iter() {
                let allowed = from.can_become(next);
                if allowed {
                    assert!(from.is_live(), "{from:?} -> {next:?}");
                    assert!(next != Waiting, "nothing goes back to waiting");
                }
            }
        }
        assert!(Waiting.can_become(Admitted) && Admitted.can_become(Used));
        assert!(!Waiting.can_become(Used), "no hold without an admission");
        assert!(!Used.can_become(Admitted), "an admission is used once");
    }
}
