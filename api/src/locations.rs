//! Where a created resource can be read: the `Location` of a 201, and of its replay. A leaf
//! module, so that the idempotency layer (which replays) and the routes (which create) both use
//! it without depending on each other.

/// Where a hold can be read.
pub fn hold(hold_id: i64) -> String {
    format!("/api/holds/{hold_id}")
}

/// Where a queue ticket can be read.
pub fn ticket(ticket_id: i64) -> String {
    format!("/api/queue/{ticket_id}")
}

/// Where an order can be read.
pub fn order(order_id: i64) -> String {
    format!("/api/orders/{order_id}")
}
