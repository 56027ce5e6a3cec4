//! The `idempotency_keys` table: one row per client `Idempotency-Key`, with its request's
//! outcome (a granted hold's key is on the hold instead).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Which operation the key belongs to (`holds`, `orders`).
    pub scope: String,
    pub idem_key: String,
    /// SHA-256 (hex) of the request: another body with the same key is a mismatch.
    pub fingerprint: String,
    pub state: KeyState,
    /// The outcome, as JSON of `crate::operations::idempotency::StoredOutcome`.
    pub outcome: Option<String>,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
}

/// Where a key's first request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum KeyState {
    /// The first request is still running.
    #[sea_orm(string_value = "running")]
    Running,
    /// Its answer is stored, to be replayed.
    #[sea_orm(string_value = "done")]
    Done,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
