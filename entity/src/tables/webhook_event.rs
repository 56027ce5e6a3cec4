//! The `webhook_events` table: one row per payment webhook idempotency key that had its effect.

use sea_orm::entity::prelude::*;

use super::order::OrderStatus;
use crate::types::OrderId;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub idempotency_key: String,
    /// SHA-256 (hex) of the event's fields in canonical form: same key, other body = mismatch.
    pub fingerprint: String,
    /// The real order the event was applied to.
    pub order_id: OrderId,
    pub event_status: String,
    /// The order's status right after the event: what a duplicate is answered.
    pub order_status: OrderStatus,
    /// Why the event could not have its normal effect, if it could not.
    pub conflict: Option<WebhookConflict>,
    pub created_at: DateTimeUtc,
}

/// Why a payment webhook could not have its normal effect (stored, and logged as
/// `webhook.conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(64))")]
pub enum WebhookConflict {
    /// A failure for an order already paid: `paid` is final.
    #[sea_orm(string_value = "failure_after_paid")]
    FailureAfterPaid,
    /// A success for a cancelled order whose units are gone: its payment is owed back.
    #[sea_orm(string_value = "success_after_cancelled_no_stock")]
    SuccessAfterCancelledNoStock,
    /// A success with a new key for an order already paid: maybe a second charge.
    #[sea_orm(string_value = "already_paid")]
    AlreadyPaid,
}

impl WebhookConflict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailureAfterPaid => "failure_after_paid",
            Self::SuccessAfterCancelledNoStock => "success_after_cancelled_no_stock",
            Self::AlreadyPaid => "already_paid",
        }
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
