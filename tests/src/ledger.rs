//! The books, read straight from the tables (not through the API): per-product counters and
//! sums of holds and orders by state, row counts, and the contract's conservation invariant.

use sea_orm::{ConnectionTrait, Database, Statement};

use crate::{Backend, TestApp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    pub id: i64,
    pub stock: i64,
    pub available: i64,
    pub held: i64,
    pub pending: i64,
    pub paid: i64,
}

/// The contract's invariant over a [`TestApp::ledger`]: see [`TestApp::assert_stock_conserved`].
pub fn assert_conserved(ledger: &[Ledger]) {
    for p in ledger {
        assert!(
            p.available >= 0,
            "product {}: available {} < 0",
            p.id,
            p.available
        );
        assert_eq!(
            p.stock,
            p.available + p.held + p.pending,
            "product {}: stock {} != available {} + active holds {} + pending orders {}",
            p.id,
            p.stock,
            p.available,
            p.held,
            p.pending
        );
    }
}

impl TestApp {
    /// The contract's invariant, read straight from the tables: for every product,
    /// `stock == available counter + Σ qty of holds stored as active + Σ quantity of pending
    /// orders`, and the counter is never negative. (Expired-but-unswept holds are still stored
    /// as active and still counted out of the counter, so this holds at every moment.)
    pub async fn assert_stock_conserved(&self) {
        assert_conserved(&self.ledger().await);
    }

    /// Units sold never exceed what there was: `stock + Σ quantity of paid orders == initial`.
    pub async fn assert_sold_within(&self, product_id: i64, initial: i64) {
        let p = self
            .ledger()
            .await
            .into_iter()
            .find(|p| p.id == product_id)
            .expect("product");
        assert_eq!(p.stock + p.paid, initial, "product {product_id}: {p:?}");
    }

    /// Per product: the counters and the sums of holds and orders by state.
    pub async fn ledger(&self) -> Vec<Ledger> {
        self.ledger_at(&self.db.url).await
    }

    /// [`ledger`](Self::ledger) read through `url` (this database on one Galera node).
    pub async fn ledger_at(&self, url: &str) -> Vec<Ledger> {
        let sum = |table: &str, col: &str, status: &str| {
            format!(
                "CAST(COALESCE((SELECT SUM(x.{col}) FROM {table} x WHERE x.product_id = p.id \
                 AND x.status = '{status}'), 0) {})",
                self.signed()
            )
        };
        let sql = format!(
            "SELECT p.id, p.stock, p.available_stock, {} AS held, {} AS pending, {} AS paid \
             FROM products p ORDER BY p.id",
            sum("holds", "qty", "active"),
            sum("orders", "quantity", "pending"),
            sum("orders", "quantity", "paid"),
        );
        self.read_at(url, sql)
            .await
            .iter()
            .map(|row| Ledger {
                id: row.try_get("", "id").expect("id"),
                stock: i64::from(row.try_get::<i32>("", "stock").expect("stock")),
                available: i64::from(
                    row.try_get::<i32>("", "available_stock")
                        .expect("available"),
                ),
                held: row.try_get("", "held").expect("held"),
                pending: row.try_get("", "pending").expect("pending"),
                paid: row.try_get("", "paid").expect("paid"),
            })
            .collect()
    }

    /// Rows of a table matching a condition, e.g. `count("orders", "hold_id = 3")`.
    pub async fn count(&self, table: &str, condition: &str) -> i64 {
        self.count_at(&self.db.url, table, condition).await
    }

    /// The sum of a column over the rows matching a condition (0 for none), e.g.
    /// `sum("holds", "qty", "buyer_id = 'ann'")`.
    pub async fn sum(&self, table: &str, column: &str, condition: &str) -> i64 {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM({column}), 0) {}) AS n FROM {table} WHERE {condition}",
            self.signed()
        );
        let rows = self.read_at(&self.db.url, sql).await;
        rows[0].try_get("", "n").expect("n")
    }

    /// [`count`](Self::count) read through `url` (this database on one Galera node).
    pub async fn count_at(&self, url: &str, table: &str, condition: &str) -> i64 {
        let sql = format!(
            "SELECT CAST(COUNT(*) {}) AS n FROM {table} WHERE {condition}",
            self.signed()
        );
        let rows = self.read_at(url, sql).await;
        rows[0].try_get("", "n").expect("n")
    }

    /// A read through `url` on one connection. On a Galera node it first waits until the node
    /// has applied every write committed anywhere before it (`wsrep_sync_wait`), so a direct
    /// check is never stale; other servers ignore the setting or lack it.
    async fn read_at(&self, url: &str, sql: String) -> Vec<sea_orm::QueryResult> {
        let mut options = sea_orm::ConnectOptions::new(url);
        options.max_connections(1).sqlx_logging(false);
        let db = Database::connect(options)
            .await
            .expect("connect to test db");
        if self.db.backend == Backend::MariaDb {
            let _ = db
                .execute_unprepared("SET SESSION wsrep_sync_wait = 1")
                .await;
        }
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                sql.clone(),
            ))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        db.close().await.ok();
        rows
    }

    /// Count of holds per stored status for a product.
    pub async fn hold_count(&self, product_id: i64, status: &str) -> i64 {
        self.count(
            "holds",
            &format!("product_id = {product_id} AND status = '{status}'"),
        )
        .await
    }

    fn signed(&self) -> &'static str {
        match self.db.backend {
            Backend::MariaDb => "AS SIGNED",
            Backend::Sqlite => "AS INTEGER",
        }
    }
}
