//! The `webhook_events` table: one row per payment webhook idempotency key that had its effect.

use sea_orm::entity::prelude::*;

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
    pub order_id: i64,
    pub event_status: String,
    /// The order's status right after the event: what a duplicate is answered.
    pub order_status: String,
    /// Why the event could not have its normal effect, if it could not.
    pub conflict: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
