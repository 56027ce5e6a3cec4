//! MariaDB 10.6+ and MySQL 8. Where the two differ (`RETURNING` is MariaDB's), the constant
//! says so and the caller checks `ServerTraits`.
//!
//! On these servers the join order and the index are fixed (`STRAIGHT_JOIN`, `FORCE INDEX`):
//! from the batch's values into the index. Left to itself the optimizer chose by the tables'
//! statistics, and with many active holds or orders on a product read all of them for every
//! batch, or planned a semi-join for every execution.

use super::{products_query, tickets_query};

/// MariaDB only: a batch of new active holds in ONE prepared statement, whatever its size.
/// `RETURNING` gives back each row's own id (never `LAST_INSERT_ID() + k`, wrong under Galera's
/// `auto_increment_increment`), in arrival order.
///
/// Binds: product id, status, expires_at, created_at, updated_at, unit price, and the holds as
/// a JSON array of [`HoldRow`]s.
pub(crate) const INSERT_HOLDS_RETURNING: &str = "INSERT INTO holds (product_id, qty, status, expires_at, created_at, updated_at, \
       unit_price_cents, secret_hash, buyer_id, idem_key, idem_fingerprint, cart_id, cart_lines) \
     SELECT ?, j.qty, ?, ?, ?, ?, ?, j.secret_hash, j.buyer, j.idem_key, j.fingerprint, \
       j.cart_id, j.cart_lines \
     FROM JSON_TABLE(?, '$[*]' COLUMNS (ord FOR ORDINALITY, qty INT PATH '$[0]', \
       secret_hash CHAR(64) CHARACTER SET ascii COLLATE ascii_bin PATH '$[1]' NULL ON EMPTY, \
       buyer VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[2]' NULL ON EMPTY, \
       idem_key VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin PATH '$[3]' NULL ON EMPTY, \
       fingerprint VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin PATH '$[4]' \
         NULL ON EMPTY, \
       cart_id BIGINT PATH '$[5]' NULL ON EMPTY, \
       cart_lines INT PATH '$[6]' NULL ON EMPTY)) AS j \
     ORDER BY j.ord \
     RETURNING id, qty";

/// One hold as a row of [`INSERT_HOLDS_RETURNING`]'s JSON array:
/// `[qty, secret hash, buyer, key, fingerprint, cart id, cart lines]`, as short as the row allows (what is missing
/// at the end is NULL ON EMPTY, and so is a JSON null). Borrowed tuples: no value tree, no
/// copies.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub(crate) enum HoldRow<'a> {
    Qty((i32,)),
    Secret((i32, &'a str)),
    Buyer((i32, Option<&'a str>, &'a str)),
    Keyed((i32, Option<&'a str>, Option<&'a str>, &'a str, &'a str)),
    /// A line of a cart: its first (with the cart's line count) or another (with the first's
    /// id).
    #[allow(clippy::type_complexity)]
    Line(
        (
            i32,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<i64>,
            Option<i32>,
        ),
    ),
}

/// MariaDB only: a batch of finished idempotency keys in ONE prepared statement. Each text
/// column names its character set: `JSON_TABLE`'s columns otherwise take the database's
/// default, and a `latin1` one would turn an answer's emoji into `?`.
///
/// Binds: state, created_at, expires_at, and the rows as a JSON array of
/// `[scope, key, fingerprint, outcome as JSON text]`.
pub(crate) const INSERT_KEYS: &str = "INSERT INTO idempotency_keys (scope, idem_key, fingerprint, state, outcome, \
       created_at, expires_at) \
     SELECT j.scope, j.idem_key, j.fingerprint, ?, j.outcome, ?, ? \
     FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
       scope VARCHAR(32) CHARACTER SET ascii PATH '$[0]', \
       idem_key VARCHAR(255) CHARACTER SET ascii PATH '$[1]', \
       fingerprint VARCHAR(64) CHARACTER SET ascii PATH '$[2]', \
       outcome LONGTEXT CHARACTER SET utf8mb4 PATH '$[3]')) AS j";

/// The units held (active, unexpired) or ordered (pending, paid) by each of a batch's buyers on
/// one product, as rows to be summed by the caller: a `GROUP BY` made MariaDB build and sort a
/// temporary table for every batch (see `tests/bench-results/README.md`, "Statements").
///
/// Binds: buyers (JSON array), product id, active, now, buyers, product id, pending, paid.
pub(crate) const UNITS_PER_BUYER: &str = "SELECT STRAIGHT_JOIN h.buyer_id, h.qty AS units \
       FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
         b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
       JOIN holds AS h FORCE INDEX (idx_holds_product_buyer) \
         ON h.product_id = ? AND h.buyer_id = j.b AND h.status = ? AND h.expires_at > ? \
     UNION ALL \
     SELECT STRAIGHT_JOIN o.buyer_id, o.quantity AS units \
       FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
         b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
       JOIN orders AS o FORCE INDEX (idx_orders_product_buyer) \
         ON o.product_id = ? AND o.buyer_id = j.b AND o.status IN (?, ?)";

/// The stored idempotency keys among a list, one row per key found (a key repeated in the list
/// gives its row twice, which callers take as once).
///
/// Binds: the keys (JSON array), the scope.
pub(crate) const KEYS: &str = "SELECT STRAIGHT_JOIN j.k AS idem_key, \
       t.id AS row_id, t.fingerprint AS row_fingerprint, t.created_at AS row_created_at \
     FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
       k VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin PATH '$')) AS j \
     JOIN idempotency_keys AS t ON t.scope = ? AND t.idem_key = j.k";

/// As [`KEYS`], for the `holds` scope, whose keys also live on the hold rows: one bound list
/// probed into both places, cheaper per key than a `UNION` of one look-up per place (see
/// `tests/bench-results/README.md`, "Statements").
pub(crate) const HOLD_KEYS: &str = "SELECT STRAIGHT_JOIN j.k AS idem_key, \
       t.id AS row_id, t.fingerprint AS row_fingerprint, t.created_at AS row_created_at, \
       h.id AS hold_id, h.idem_fingerprint AS hold_fingerprint, h.created_at AS hold_created_at \
     FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
       k VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin PATH '$')) AS j \
     LEFT JOIN idempotency_keys AS t ON t.scope = ? AND t.idem_key = j.k \
     LEFT JOIN holds AS h ON h.idem_key = j.k \
     WHERE t.id IS NOT NULL OR h.id IS NOT NULL";

/// One product (see [`super::products_query`]). Binds: active, now, product id.
pub(crate) const PRODUCT_BY_ID: &str = products_query!("SIGNED", "WHERE p.id = ?");

/// A page of the catalogue. Binds: active, now, after id, limit.
pub(crate) const PRODUCTS_AFTER: &str =
    products_query!("SIGNED", "WHERE p.id > ? ORDER BY p.id LIMIT ?");

/// The newest products, for the worker's gauges. Binds: active, now, limit.
pub(crate) const PRODUCTS_NEWEST: &str = products_query!("SIGNED", "ORDER BY p.id DESC LIMIT ?");

/// See [`super::tickets_query`].
pub(crate) const TICKETS_BY_ID: &str = tickets_query!(
    "FORCE INDEX (idx_tickets_product_state_seq)",
    "FROM JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$')) AS j \
     JOIN queue_tickets t ON t.id = j.id"
);

/// The live tickets of a batch's buyers on one product, locked (a join batch holds the queue's
/// lock, so none appears meanwhile). Binds: the buyers (JSON array), product id.
pub(crate) const LIVE_TICKETS: &str = "SELECT STRAIGHT_JOIN t.* \
     FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
       b VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$')) AS j \
     JOIN queue_tickets t FORCE INDEX (uq_tickets_live_buyer) \
       ON t.product_id = ? AND t.live_buyer = j.b";

/// A batch of new waiting tickets in ONE prepared statement, whatever its size (see the
/// module's doc): the opening storm's joins were a `VALUES` list of a new length, so a new
/// statement to prepare and evict, in most batches. `RETURNING` (MariaDB) answers the rows in
/// the JSON's order; without it the caller reads them back by their buyers.
///
/// Binds: product id, state, early, joined_at, updated_at, and the tickets as a JSON array of
/// [`TicketRow`]s.
macro_rules! insert_tickets {
    ($returning:literal) => {
        concat!(
            "INSERT INTO queue_tickets (product_id, buyer_id, live_buyer, secret_hash, state, \
               early, seq, joined_at, updated_at) \
             SELECT ?, j.buyer, j.buyer, j.secret_hash, ?, ?, j.seq, ?, ? \
             FROM JSON_TABLE(?, '$[*]' COLUMNS (ord FOR ORDINALITY, \
               buyer VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$.b', \
               secret_hash CHAR(64) CHARACTER SET ascii COLLATE ascii_bin PATH '$.s' \
                 NULL ON EMPTY, \
               seq BIGINT PATH '$.q' NULL ON EMPTY)) AS j \
             ORDER BY j.ord",
            $returning
        )
    };
}

/// MariaDB and MySQL 8: see [`insert_tickets`].
pub(crate) const INSERT_TICKETS: &str = insert_tickets!("");

/// MariaDB only: see [`insert_tickets`].
pub(crate) const INSERT_TICKETS_RETURNING: &str = insert_tickets!(
    " RETURNING id, product_id, buyer_id, live_buyer, secret_hash, state, early, seq, \
       joined_at, admitted_at, admission_expires_at, updated_at"
);

/// One new ticket as a row of [`INSERT_TICKETS`]'s JSON array: what is missing is NULL.
#[derive(serde::Serialize)]
pub(crate) struct TicketRow<'a> {
    pub b: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<i64>,
}

/// The draw: gives each early ticket its place. Binds: `[[id, seq], ...]` (JSON array).
pub(crate) const NUMBER_TICKETS: &str = "UPDATE queue_tickets t \
     JOIN JSON_TABLE(?, '$[*]' COLUMNS (id BIGINT PATH '$[0]', seq BIGINT PATH '$[1]')) AS j \
       ON t.id = j.id \
     SET t.seq = j.seq";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_rows_are_written_as_short_json_arrays() {
        let rows = [
            HoldRow::Qty((1,)),
            HoldRow::Secret((2, "s")),
            HoldRow::Buyer((3, None, "b")),
            HoldRow::Keyed((4, Some("s"), None, "k-1", "ab")),
        ];
        assert_eq!(
            serde_json::to_string(&rows).unwrap(),
            r#"[[1],[2,"s"],[3,null,"b"],[4,"s",null,"k-1","ab"]]"#
        );
    }
}
