//! Schema history of the Flash Sale database, as sea-orm-migration migrations.
//!
//! Used as a library by `flash-sale-api` (auto-migration at start and `flash-sale-api migrate`)
//! and as the usual `migration` CLI (`cargo run -p migration -- up`).

pub use sea_orm_migration::prelude::*;

mod lease;
pub use lease::with_lease;

mod m20261124_000001_create_products_and_holds;
mod m20261124_000002_create_orders_and_webhook_events;
mod m20261124_000003_create_idempotency_keys;
mod m20261125_000004_exact_idempotency_keys;
mod m20261125_000005_sales_buyers_refunds;
mod m20261125_000006_utf8mb4_text;
mod m20261206_000007_hold_keys;
mod m20261207_000008_owners_and_prices;
mod m20261207_000009_typed_key_outcomes;
mod m20261207_000010_queues;
mod m20261207_000011_carts;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_products_and_holds::Migration),
            Box::new(m20261124_000002_create_orders_and_webhook_events::Migration),
            Box::new(m20261124_000003_create_idempotency_keys::Migration),
            Box::new(m20261125_000004_exact_idempotency_keys::Migration),
            Box::new(m20261125_000005_sales_buyers_refunds::Migration),
            Box::new(m20261125_000006_utf8mb4_text::Migration),
            Box::new(m20261206_000007_hold_keys::Migration),
            Box::new(m20261207_000008_owners_and_prices::Migration),
            Box::new(m20261207_000009_typed_key_outcomes::Migration),
            Box::new(m20261207_000010_queues::Migration),
            Box::new(m20261207_000011_carts::Migration),
        ]
    }
}
