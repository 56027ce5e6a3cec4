//! Holds and orders as clients see them: what the operations answer and what a finished
//! idempotency key is answered again with. Made from rows here; rendered by the API.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    Money,
    hold::{self, HoldStatus},
    order::{self, OrderStatus},
    rules::ownership::ClientSecret,
    ticket::{self, TicketState},
    types::{HoldId, OrderId, ProductId, TicketId},
};

/// One product of a cart (a hold or order of several products): its units, at the price the
/// hold recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    pub product_id: ProductId,
    pub qty: i32,
    pub unit_price: Money,
}

impl LineView {
    /// The line's price: unit price × units (exact; prices are refused where this could not
    /// be computed, see `Money::times`).
    pub fn total(&self) -> Option<Money> {
        self.unit_price.times(u32::try_from(self.qty).ok()?)
    }
}

/// The sum of the lines' totals.
pub fn total_of(lines: &[LineView]) -> Option<Money> {
    lines
        .iter()
        .try_fold(Money::from_cents(0), |sum, line| sum.plus(line.total()?))
}

/// A hold as clients see it; `status` is the effective one (an active hold past its time is
/// `Expired`). For a cart, `product_id` and `qty` are its first line's and `lines` has them
/// all (in product id order); empty for a hold of one product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldView {
    pub id: HoldId,
    pub product_id: ProductId,
    pub qty: i32,
    pub lines: Vec<LineView>,
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

    /// A hold as it is at `now`, from its rows (see `rules::transitions::lock_lines`): a cart
    /// lists every line. The rows' own statuses may differ only where a sweeper has reached
    /// some lines of an expired cart first; its effective status is its first line's.
    pub fn of_lines(lines: &[hold::Model], now: DateTime<Utc>) -> Option<Self> {
        let first = lines.first()?;
        let mut view = Self::at(first, now);
        if first.is_cart() {
            view.status = hold::Model::status_of_lines(lines, now);
            view.lines = lines
                .iter()
                .map(|h| LineView {
                    product_id: h.product_id,
                    qty: h.qty,
                    unit_price: Money::from_cents(h.unit_price_cents.unwrap_or_default()),
                })
                .collect();
        }
        Some(view)
    }

    /// The hold as it is at `now`.
    pub fn at(model: &hold::Model, now: DateTime<Utc>) -> Self {
        Self {
            id: model.id,
            product_id: model.product_id,
            qty: model.qty,
            lines: Vec::new(),
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
    /// For an order made from a cart: every line (`product_id` and `quantity` are the
    /// first's, `total` is the whole order's). Empty for an order of one product.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineView>,
}

impl OrderView {
    /// An order from its rows (first line first): a cart's lists every line, and its total is
    /// theirs.
    pub fn of_rows(rows: &[order::Model]) -> Option<Self> {
        let first = rows.first()?;
        let mut view = Self::from(first);
        if first.cart_id.is_some() {
            view.total = Money::from_cents(rows.iter().map(|o| o.total_cents).sum());
            view.lines = rows
                .iter()
                .map(|o| LineView {
                    product_id: o.product_id,
                    qty: o.quantity,
                    unit_price: Money::from_cents(match o.quantity {
                        0 => 0,
                        q => o.total_cents / i64::from(q),
                    }),
                })
                .collect();
        }
        Some(view)
    }

    /// The order's products, one per line.
    pub fn product_ids(&self) -> Vec<ProductId> {
        match self.lines.is_empty() {
            true => vec![self.product_id],
            false => self.lines.iter().map(|l| l.product_id).collect(),
        }
    }
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
            lines: Vec::new(),
        }
    }
}

/// A queue ticket as clients see it; `state` is the effective one (an admission past its window
/// is `Expired` before a pass marks it so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketView {
    pub id: TicketId,
    pub product_id: ProductId,
    pub buyer_id: String,
    pub state: TicketState,
    /// Waiting tickets ahead of it in admission order; 0 once admitted; none before the draw
    /// (the order of the early tickets does not exist yet) and once the ticket is done.
    pub position: Option<i64>,
    pub joined_at: DateTime<Utc>,
    pub admitted_at: Option<DateTime<Utc>>,
    pub admission_expires_at: Option<DateTime<Utc>>,
    /// Only in the answer that made the ticket, and to a keyed join's retry.
    pub client_secret: Option<ClientSecret>,
}

/// Where a queue stands, for the positions of its tickets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLine {
    /// The early tickets have their places.
    pub drawn: bool,
    /// The last place an admission pass has passed.
    pub head: i64,
}

impl TicketView {
    /// The ticket at `now`; `left_ahead` is how many tickets between the queue's head and this
    /// one have left (`line` none: no queue row, so no position).
    pub fn at(
        model: &ticket::Model,
        line: Option<QueueLine>,
        left_ahead: i64,
        now: DateTime<Utc>,
    ) -> Self {
        let state = match (model.state, model.admission_expires_at) {
            (TicketState::Admitted, Some(until)) if until <= now => TicketState::Expired,
            (state, _) => state,
        };
        let position = match (state, line, model.seq) {
            (TicketState::Admitted, _, _) => Some(0),
            (TicketState::Waiting, Some(line), Some(seq)) if line.drawn => {
                Some((seq - line.head - 1 - left_ahead).max(0))
            }
            _ => None,
        };
        Self {
            id: model.id,
            product_id: model.product_id,
            buyer_id: model.buyer_id.clone(),
            state,
            position,
            joined_at: model.joined_at,
            admitted_at: model.admitted_at,
            admission_expires_at: model.admission_expires_at,
            client_secret: None,
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
