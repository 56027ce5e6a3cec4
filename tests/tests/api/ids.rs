//! Every id in an answer is the id of the row it names, whatever the server's auto-increment
//! settings. A server whose `auto_increment_increment` is above 1 (Galera sets it to the cluster
//! size; MySQL Group Replication multi-primary to 7; offset-based multi-master setups) hands one
//! multi-row INSERT ids 2, 5, 8, …: computing them as `LAST_INSERT_ID() + k` answers ids of
//! other rows, or of none.

use flash_sale_tests::{AppOptions, TestApp, servers::ScratchMariaDb};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;

/// `(product_id, qty)` of a hold row, or of an order row (`quantity`), read straight from the
/// table.
async fn row(db: &DatabaseConnection, table: &str, qty_col: &str, id: i64) -> Option<(i64, i64)> {
    let sql =
        format!("SELECT product_id, CAST({qty_col} AS SIGNED) AS q FROM {table} WHERE id = {id}");
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .expect("read row")?;
    Some((
        row.try_get("", "product_id").expect("product_id"),
        row.try_get("", "q").expect("qty"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_auto_increment_stepping_by_3_every_answered_id_is_its_own_row() {
    let server = ScratchMariaDb::start(&[
        "--auto-increment-increment=3",
        "--auto-increment-offset=2",
        "--innodb-autoinc-lock-mode=1",
    ])
    .await;
    let app = TestApp::spawn_on(&server.base_url(), AppOptions::default()).await;
    let db = app.db.connect().await;

    // Products created concurrently: each id reads back with its own stock.
    let products = app
        .all_at_once(12, |c, i| async move {
            let stock = 10_000 + i as i64;
            (stock, c.create_product(stock).await)
        })
        .await;
    for &(stock, id) in &products {
        let (s, _) = app.stock(id).await;
        assert_eq!(
            s, stock,
            "product {id} answered for the one with stock {stock}"
        );
    }

    // Coalesced bursts of holds with mixed quantities on two products.
    let (p1, p2) = (products[0].1, products[1].1);
    let answers = app
        .all_at_once(400, |c, i| {
            let (product, qty) = (if i % 2 == 0 { p1 } else { p2 }, (i % 3 + 1) as i64);
            async move { (product, qty, c.hold(product, qty).await) }
        })
        .await;
    let mut hold_ids = Vec::new();
    for (product, qty, r) in &answers {
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["hold_id"].as_i64().expect("hold_id");
        assert_eq!(
            row(&db, "holds", "qty", id).await,
            Some((*product, *qty)),
            "hold {id} answered for product {product} qty {qty}"
        );
        hold_ids.push(id);
    }
    let mut distinct = hold_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), hold_ids.len(), "an id was answered twice");
    assert!(
        hold_ids.iter().all(|id| id % 3 == 2),
        "the server's step and offset were not in force: {hold_ids:?}"
    );

    // Orders made from those holds at once: each answered order is the one for its hold.
    let orders = app
        .all_at_once(60, |c, i| {
            let hold = hold_ids[i];
            async move { (hold, c.order(hold).await) }
        })
        .await;
    for (hold, r) in &orders {
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["order_id"].as_i64().expect("order_id");
        let (_, qty, _) = answers
            .iter()
            .find(|(_, _, a)| a.body["hold_id"].as_i64() == Some(*hold))
            .expect("the hold's answer");
        let want_product = r.body["product_id"].as_i64().expect("product_id");
        assert_eq!(
            row(&db, "orders", "quantity", id).await,
            Some((want_product, *qty))
        );
        let stored_hold = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT hold_id FROM orders WHERE id = {id}"),
            ))
            .await
            .expect("read order")
            .and_then(|r| r.try_get::<i64>("", "hold_id").ok());
        assert_eq!(
            stored_hold,
            Some(*hold),
            "order {id} answered for hold {hold}"
        );
        // And the API agrees with the table when asked by id.
        let got = app.get(&format!("/api/orders/{id}")).await;
        assert_eq!(got.body["hold_id"], json!(hold));
    }
    app.assert_stock_conserved().await;
}
