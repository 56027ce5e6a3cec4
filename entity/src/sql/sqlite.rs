//! SQLite. Each statement takes the same binds, in the same order, as its `mysql` twin. The
//! plan is fixed the SQLite way: `CROSS JOIN` keeps the join order and `INDEXED BY` the index.

use super::{products_query, tickets_query};

/// See `mysql::UNITS_PER_BUYER`.
pub(crate) const UNITS_PER_BUYER: &str = "SELECT h.buyer_id, h.qty AS units FROM json_each(?) AS j \
       CROSS JOIN holds AS h INDEXED BY idx_holds_product_buyer \
       WHERE h.product_id = ? AND h.buyer_id = j.value AND h.status = ? AND h.expires_at > ? \
     UNION ALL \
     SELECT o.buyer_id, o.quantity AS units FROM json_each(?) AS j \
       CROSS JOIN orders AS o INDEXED BY idx_orders_product_buyer \
       WHERE o.product_id = ? AND o.buyer_id = j.value AND o.status IN (?, ?)";

/// See `mysql::KEYS`.
pub(crate) const KEYS: &str = "SELECT j.value AS idem_key, \
       t.id AS row_id, t.fingerprint AS row_fingerprint, t.created_at AS row_created_at \
     FROM json_each(?) AS j \
     JOIN idempotency_keys AS t ON t.scope = ? AND t.idem_key = j.value";

/// See `mysql::HOLD_KEYS`.
pub(crate) const HOLD_KEYS: &str = "SELECT j.value AS idem_key, \
       t.id AS row_id, t.fingerprint AS row_fingerprint, t.created_at AS row_created_at, \
       h.id AS hold_id, h.idem_fingerprint AS hold_fingerprint, h.created_at AS hold_created_at \
     FROM json_each(?) AS j \
     LEFT JOIN idempotency_keys AS t ON t.scope = ? AND t.idem_key = j.value \
     LEFT JOIN holds AS h ON h.idem_key = j.value \
     WHERE t.id IS NOT NULL OR h.id IS NOT NULL";

/// See `mysql::PRODUCT_BY_ID`.
pub(crate) const PRODUCT_BY_ID: &str = products_query!("INTEGER", "WHERE p.id = ?");

/// See `mysql::PRODUCTS_AFTER`.
pub(crate) const PRODUCTS_AFTER: &str =
    products_query!("INTEGER", "WHERE p.id > ? ORDER BY p.id LIMIT ?");

/// See `mysql::PRODUCTS_NEWEST`.
pub(crate) const PRODUCTS_NEWEST: &str = products_query!("INTEGER", "ORDER BY p.id DESC LIMIT ?");

/// See `mysql::TICKETS_BY_ID`.
pub(crate) const TICKETS_BY_ID: &str = tickets_query!(
    "INDEXED BY idx_tickets_product_state_seq",
    "FROM json_each(?) AS j JOIN queue_tickets t ON t.id = j.value"
);

/// See `mysql::LIVE_TICKETS` (SQLite's write lock is held). Binds in the same order.
pub(crate) const LIVE_TICKETS: &str = "SELECT t.* FROM json_each(?) AS j \
     CROSS JOIN queue_tickets AS t INDEXED BY uq_tickets_live_buyer \
     WHERE t.product_id = ? AND t.live_buyer = j.value";

/// See `mysql::NUMBER_TICKETS`.
pub(crate) const NUMBER_TICKETS: &str = "UPDATE queue_tickets \
     SET seq = j.seq \
     FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS seq \
       FROM json_each(?)) AS j \
     WHERE queue_tickets.id = j.id";
