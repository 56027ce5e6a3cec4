//! Every hand-written statement of this crate, one file per backend: [`mysql`] (MariaDB 10.6+
//! and MySQL 8) and [`sqlite`]. Queries that SeaORM's builder writes the same way for both stay
//! with their operation. An operation picks its backend's text with [`of`], binds its values
//! (client strings are always bound, never inlined) and reads the rows itself.
//!
//! The statements that take a variable number of things (holds, buyers, keys) bind them as ONE
//! JSON array expanded by `JSON_TABLE` or `json_each`, so each is one prepared statement per
//! connection whatever the batch size: an `IN (?, ?, ...)` or `VALUES` list would be a new
//! statement, prepared under the product's row lock, for every size. The JSON columns carry the
//! exact type and collation of the columns they are compared with, or the indexes could not be
//! used.

use sea_orm::DbBackend;

pub(crate) mod mysql;
pub(crate) mod sqlite;

/// The statements that exist on both backends, each in its backend's dialect. Their binds are
/// listed on the [`mysql`] constants; the [`sqlite`] ones take the same binds in the same order.
pub(crate) struct Statements {
    pub units_per_buyer: &'static str,
    pub keys: &'static str,
    pub hold_keys: &'static str,
    pub product_by_id: &'static str,
    pub products_after: &'static str,
    pub products_newest: &'static str,
    pub tickets_by_id: &'static str,
    pub live_tickets: &'static str,
    pub number_tickets: &'static str,
}

const MYSQL: Statements = Statements {
    units_per_buyer: mysql::UNITS_PER_BUYER,
    keys: mysql::KEYS,
    hold_keys: mysql::HOLD_KEYS,
    product_by_id: mysql::PRODUCT_BY_ID,
    products_after: mysql::PRODUCTS_AFTER,
    products_newest: mysql::PRODUCTS_NEWEST,
    tickets_by_id: mysql::TICKETS_BY_ID,
    live_tickets: mysql::LIVE_TICKETS,
    number_tickets: mysql::NUMBER_TICKETS,
};

const SQLITE: Statements = Statements {
    units_per_buyer: sqlite::UNITS_PER_BUYER,
    keys: sqlite::KEYS,
    hold_keys: sqlite::HOLD_KEYS,
    product_by_id: sqlite::PRODUCT_BY_ID,
    products_after: sqlite::PRODUCTS_AFTER,
    products_newest: sqlite::PRODUCTS_NEWEST,
    tickets_by_id: sqlite::TICKETS_BY_ID,
    live_tickets: sqlite::LIVE_TICKETS,
    number_tickets: sqlite::NUMBER_TICKETS,
};

/// This backend's statements.
pub(crate) fn of(backend: DbBackend) -> &'static Statements {
    match backend {
        DbBackend::Sqlite => &SQLITE,
        _ => &MYSQL,
    }
}

/// The products query: each product with the sum of its expired-but-unswept holds, from one
/// snapshot, so the counter and what the sweeper has yet to give back never disagree. A macro
/// so that each backend's text is one `&'static str` (no string built per request). Binds: the
/// active status, now, then the filter's.
macro_rules! products_query {
    ($cast:literal, $filter:literal) => {
        concat!(
            "SELECT p.id, p.name, p.price_cents, p.stock, p.available_stock, \
               p.sale_starts_at, p.sale_ends_at, p.per_buyer_limit, \
               p.admission, p.admission_window_seconds, \
               CAST(COALESCE((SELECT SUM(h.qty) FROM holds h \
                 WHERE h.product_id = p.id AND h.status = ? AND h.expires_at <= ?), 0) AS ",
            $cast,
            ") AS expired_qty FROM products p ",
            $filter
        )
    };
}
pub(crate) use products_query;

/// Tickets by id, each with what its position needs: its queue's head and draw, and how many
/// tickets between the head and it have left. That count is an index range over the left
/// ones only, and is skipped while the queue's counters say nobody past the head has left:
/// once drawn, every ticket has a place, so the places past the head less the waiting
/// tickets are the left and closed ones. One statement for any number of tickets: the ticket
/// reads of concurrent requests and a stream hub's look at its listeners' tickets. Binds: the
/// ids (JSON array). `$by_state` names the (product, state, seq) index in the backend's
/// syntax: left to itself, MariaDB's optimizer was seen to range over (product, seq) instead,
/// reading every ticket ahead of each one read (6.7 million index rows for 1,280 joins on a
/// queue of 5,000).
macro_rules! tickets_query {
    ($by_state:literal, $from:literal) => {
        concat!(
            "SELECT t.id, t.product_id, t.buyer_id, t.live_buyer, t.secret_hash, t.state, \
               t.early, t.seq, t.joined_at, t.admitted_at, t.admission_expires_at, \
               t.updated_at, q.head AS queue_head, q.drawn AS queue_drawn, \
               CASE WHEN q.drawn AND q.early_count + q.late_count - q.head = q.waiting \
                 THEN 0 ELSE (SELECT COUNT(*) FROM queue_tickets l ",
            $by_state,
            " WHERE l.product_id = t.product_id AND l.state = 'left' \
                   AND l.seq > q.head AND l.seq < t.seq) END AS left_ahead ",
            $from,
            " LEFT JOIN queues q ON q.product_id = t.product_id"
        )
    };
}
pub(crate) use tickets_query;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_bind_the_same_number_of_values() {
        let binds = |s: &Statements| {
            [
                s.units_per_buyer,
                s.keys,
                s.hold_keys,
                s.product_by_id,
                s.products_after,
                s.products_newest,
                s.tickets_by_id,
                s.live_tickets,
                s.number_tickets,
            ]
            .map(|sql| sql.matches('?').count())
        };
        assert_eq!(binds(&MYSQL), binds(&SQLITE));
    }
}
