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
}

const MYSQL: Statements = Statements {
    units_per_buyer: mysql::UNITS_PER_BUYER,
    keys: mysql::KEYS,
    hold_keys: mysql::HOLD_KEYS,
    product_by_id: mysql::PRODUCT_BY_ID,
    products_after: mysql::PRODUCTS_AFTER,
};

const SQLITE: Statements = Statements {
    units_per_buyer: sqlite::UNITS_PER_BUYER,
    keys: sqlite::KEYS,
    hold_keys: sqlite::HOLD_KEYS,
    product_by_id: sqlite::PRODUCT_BY_ID,
    products_after: sqlite::PRODUCTS_AFTER,
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
               CAST(COALESCE((SELECT SUM(h.qty) FROM holds h \
                 WHERE h.product_id = p.id AND h.status = ? AND h.expires_at <= ?), 0) AS ",
            $cast,
            ") AS expired_qty FROM products p ",
            $filter
        )
    };
}
pub(crate) use products_query;

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
            ]
            .map(|sql| sql.matches('?').count())
        };
        assert_eq!(binds(&MYSQL), binds(&SQLITE));
    }
}
