//! Holds and orders as clients see them: what the operations answer and what a finished
//! idempotency key is answered again with. Made from rows here; rendered by the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Money,
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    rules::ownership::ClientSecret,
    types::{HoldId, OrderId, ProductId},
};

/// A hold as clients see it; `status` is the effective one (an active hold past its time is
/// `Expired`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
    pub status: HoldStatus,
    pub expires_at: DateTime<Utc>,
    pub buyer_id: Option<String>,
    /// The secret its anonymous buyer reaches it with: only in the answer that made the hold
    /// (and that answer's replay), never read back from the database, which keeps its hash.
    pub client_secret: Option<ClientSecret>,
}

impl HoldView {
    /// The hold as its request was first answered: `active`, with its expiry (a keyed hold's
    /// replay is this answer again, whatever became of the hold since).
    pub fn as_granted(model: &hold::Model) -> Self {
        Self {
            status: HoldStatus::Active,
            ..Self::at(model, model.created_at)
        }
    }

    /// The hold as it is at `now`.
    pub fn at(model: &hold::Model, now: DateTime<Utc>) -> Self {
        Self {
            id: model.id,
            product_id: model.product_id,
            qty: model.qty,
            status: model.effective_status(now),
            expires_at: model.expires_at,
            buyer_id: model.buyer_id.clone(),
            client_secret: None,
        }
    }
}

/// An order as clients see it; also what a finished order key keeps of its first answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub id: OrderId,
    pub hold_id: HoldId,
    pub product_id: ProductId,
    pub quantity: i32,
    pub total: Money,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub buyer_id: Option<String>,
    /// Paid for, but its units could not be delivered: the payment is owed back.
    pub refund_required: bool,
}

impl From<&order::Model> for OrderView {
    fn from(o: &order::Model) -> Self {
        Self {
            id: o.id,
            hold_id: o.hold_id,
            product_id: o.product_id,
            quantity: o.quantity,
            total: Money::from_cents(o.total_cents),
            status: o.status,
            created_at: o.created_at,
            buyer_id: o.buyer_id.clone(),
            refund_required: o.refund_required,
        }
    }
}

/// Whether `create_order` made the order or found the one the hold had already become.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderCreated {
    New(OrderView),
    Existing(OrderView),
}
