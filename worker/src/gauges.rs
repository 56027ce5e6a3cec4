//! The sale as the database has it, published as gauges for dashboards and alerts: each
//! product's stock on hand and units free to hold (as `GET /api/products/{id}` answers them),
//! each queue's waiting and admitted tickets, and the refunds owed. Counters in the API say what
//! happened; these say where a sale stands, whichever process changed it, and stay true when
//! the passes that would change it fail.

use entity::{
    Db, DomainError,
    operations::{orders, products, queue},
};

/// The schedule of gauge reads: every 5 seconds (a cron expression with a seconds field).
pub const GAUGES_SCHEDULE: &str = "*/5 * * * * *";

/// How many products, and how many queues, get gauges: the newest. Products are made by
/// operators, so this bounds the series a catalogue can add, not the ones a client can.
pub const GAUGED_PRODUCTS: u64 = 500;

/// One read of the products, one of the queues and one count of refunds owed, set as gauges.
pub async fn publish(db: &Db) -> Result<(), DomainError> {
    for product in products::newest_products(db, GAUGED_PRODUCTS).await? {
        let id = product.id.get().to_string();
        metrics::gauge!("product_stock", "product_id" => id.clone()).set(product.stock);
        metrics::gauge!("product_available_stock", "product_id" => id.clone())
            .set(product.available_stock);
        // Shown at 0 before this worker's first timeout on the product, so that an alert's
        // increase() counts the first batch too.
        metrics::counter!("order_status_changes_total", "status" => "timed_out", "product_id" => id)
            .increment(0);
    }
    for q in queue::queue_levels(db, GAUGED_PRODUCTS).await? {
        let id = q.product_id.get().to_string();
        metrics::gauge!("queue_waiting", "product_id" => id.clone()).set(q.waiting as f64);
        metrics::gauge!("queue_open", "product_id" => id.clone()).set(if q.admitting {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("queue_admitted_unused", "product_id" => id.clone())
            .set(q.admitted_unused as f64);
        metrics::counter!("queue_admission_failures_total", "product_id" => id).increment(0);
    }
    metrics::gauge!("orders_refund_owed").set(orders::refunds_owed(db).await? as f64);
    Ok(())
}
