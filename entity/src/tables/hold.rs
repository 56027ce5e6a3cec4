//! The `holds` table and the hold state machine.

use sea_orm::entity::prelude::*;

use crate::types::{HoldId, ProductId};

/// The stored state of a hold. A stored `Active` hold whose `expires_at` has passed is reported
/// as expired (see [`Model::effective_status`]) until the worker or a reclaim marks it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum HoldStatus {
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "expired")]
    Expired,
    #[sea_orm(string_value = "released")]
    Released,
    #[sea_orm(string_value = "consumed")]
    Consumed,
}

impl HoldStatus {
    /// The only moves a hold can make: out of `Active`, once, into one of the final states.
    pub fn can_become(self, next: HoldStatus) -> bool {
        matches!(
            (self, next),
            (
                HoldStatus::Active,
                HoldStatus::Expired | HoldStatus::Released | HoldStatus::Consumed
            )
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Expired => "expired",
            HoldStatus::Released => "released",
            HoldStatus::Consumed => "consumed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "holds")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
    pub status: HoldStatus,
    pub expires_at: DateTimeUtc,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// The buyer a per-buyer limit counts this hold against.
    pub buyer_id: Option<String>,
    /// The `Idempotency-Key` of the request that made this hold, if it had one (unique): a
    /// retry is answered from the hold itself (see `crate::operations::idempotency`).
    pub idem_key: Option<String>,
    /// SHA-256 (hex) of that request's canonical body.
    pub idem_fingerprint: Option<String>,
    /// SHA-256 (hex) of the `client_secret` its anonymous buyer was given (see
    /// `crate::rules::ownership`); none with `BUYER_AUTH=jwt`, where `buyer_id` is the owner.
    pub secret_hash: Option<String>,
    /// The product's price when the hold was made: what its order is charged per unit. None
    /// on holds made before prices were kept (their orders take the product's price).
    pub unit_price_cents: Option<i64>,
    /// On a cart's lines other than its first (a cart is one row per product): the first
    /// line's id, which is the id clients know. Null on a first line and on a hold of one
    /// product.
    pub cart_id: Option<HoldId>,
    /// On a cart's first line: how many lines the cart has. Null on every other row.
    pub cart_lines: Option<i32>,
    /// How many times the hold was extended.
    pub extensions: i32,
}

impl Model {
    /// A line of a cart other than its first: not reachable by its own id.
    pub fn is_inner_line(&self) -> bool {
        self.cart_id.is_some()
    }

    /// The effective status of a hold from its rows (see `rules::transitions::lock_lines`):
    /// its first row's, except that a cart whose first row looks active is expired once a
    /// sweeper has taken any of its other lines (a sweeper's clock may run a moment ahead).
    pub fn status_of_lines(lines: &[Model], now: DateTimeUtc) -> HoldStatus {
        let Some(first) = lines.first() else {
            return HoldStatus::Expired;
        };
        match first.effective_status(now) {
            HoldStatus::Active if lines.iter().any(|l| l.status != HoldStatus::Active) => {
                HoldStatus::Expired
            }
            status => status,
        }
    }

    /// The first line of a cart, which stands for it.
    pub fn is_cart(&self) -> bool {
        self.cart_lines.is_some()
    }

    /// The status a client sees at `now`: an active hold past its expiry is expired.
    pub fn effective_status(&self, now: DateTimeUtc) -> HoldStatus {
        if self.status == HoldStatus::Active && self.expires_at <= now {
            HoldStatus::Expired
        } else {
            self.status
        }
    }
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
    use super::HoldStatus::*;

    #[test]
    fn only_active_holds_move_and_only_to_final_states() {
        for next in [Expired, Released, Consumed] {
            assert!(Active.can_become(next));
            for from in [Expired, Released, Consumed] {
                assert!(!from.can_become(next), "{from:?} -> {next:?}");
            }
        }
        assert!(!Active.can_become(Active));
    }
}
