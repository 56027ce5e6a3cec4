//! The sale as the database has it, published as gauges for dashboards and alerts: each
//! product's stock on hand and units free to hold (as `GET /api/products/{id}` answers them),
//! and the refunds owed. Counters in the API say what happened; these say where a sale stands,
//! whichever process changed it.

use entity::{
    Db, DomainError,
    operations::{orders, products},
};

/// The schedule of gauge reads: every 5 seconds (a cron expression with a seconds field).
pub const GAUGES_SCHEDULE: &str = "*/5 * * * * *";

/// How many products get gauges: the newest. Products are made by operators, so this bounds
/// the series a catalogue can add, not the ones a client can.
pub const GAUGED_PRODUCTS: u64 = 500;

/// One read of the products and one count of refunds owed, set as gauges.
pub async fn publish(db: &Db) -> Result<(), DomainError> {
    for product in products::newest_products(db, GAUGED_PRODUCTS).await? {
        let id = product.id.get().to_string();
        metrics::gauge!("product_stock", "product_id" => id.clone()).set(product.stock);
        metrics::gauge!("product_available_stock", "product_id" => id).set(product.available_stock);
    }
    metrics::gauge!("orders_refund_owed").set(orders::refunds_owed(db).await? as f64);
    Ok(())
}
