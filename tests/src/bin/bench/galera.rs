//! The Galera section (`results["galera"]`): a three-node MariaDB Galera cluster of the run's
//! own (`flash_sale_tests::servers::GaleraCluster`, on loopback), hot-product holds at 256
//! connections through one API on node 0 alone, then through three APIs, one per node, each
//! driven by its own `wrk` on the same product (total holds/s, the worst of the three p99s, and
//! the non-2xx answers: 409, 503, other 5xx); then the books read on every node directly: equal
//! on all three, and conserved (stock = available + active holds + pending orders).

use std::{path::Path, time::Duration};

use anyhow::{Result, anyhow};
use flash_sale_tests::servers::GaleraCluster;
use sea_orm::sqlx::{self, Connection, Executor};
use serde_json::{Value, json};

use crate::{
    api::Api,
    database::fresh_database,
    wrk::{holds_script, ms, rate, wrk_with},
};

/// The Galera section: a three-node cluster of this run's own on loopback, one fresh database
/// (migrated by the first API), hot-product holds at 256 connections through one API on node 0
/// alone, then through three APIs, one per node, each driven by its own wrk (1 thread, a third
/// of the connections) on one product; then the books read on every node directly. Everything
/// shares this machine's cores: three `mariadbd`, up to three APIs and wrk.
pub(crate) async fn galera(release: &Path, seconds: u64) -> Result<Value> {
    const STOCK: i64 = 100_000_000;
    const C: usize = 256;
    const DB: &str = "fs_bench_galera";
    // Declared first, so dropped last: the APIs stop before the nodes do.
    let cluster = GaleraCluster::start().await;
    fresh_database(&cluster.node_url(0), DB).await?;
    let urls: Vec<String> = (0..3)
        .map(|i| format!("{}/{DB}", cluster.node_url(i)))
        .collect();

    // (a) One API on node 0, the only one running; the other nodes replicate.
    let first = Api::start_with(release, &urls[0], true, &[("AUTO_MIGRATE", "true")])?;
    let product_one = first.create_product(STOCK).await?;
    let v = wrk_with(
        &format!("{}/api/holds", first.url),
        C,
        2,
        seconds,
        &holds_script(product_one),
    )?;
    let one = json!({
        "apis": 1,
        "nodes": [0],
        "connections": C,
        "product_id": product_one,
        "holds_per_s": rate(&v, "ok"),
        "p50_ms": ms(&v, "p50_us"),
        "p99_ms": ms(&v, "p99_us"),
        "max_ms": ms(&v, "max_us"),
        "answers": answers(&v),
        "contention_retries": first.contention_retries().await?,
    });
    println!(
        "Galera  1 API  on node 0       c={C:<3}  {:>8.0} holds/s  p50 {:>6.1} ms  p99 {:>6.1} ms  {}; {} retried transactions",
        one["holds_per_s"].as_f64().unwrap_or(0.0),
        one["p50_ms"].as_f64().unwrap_or(0.0),
        one["p99_ms"].as_f64().unwrap_or(0.0),
        non_2xx(&one["answers"]),
        one["contention_retries"]
    );

    // (b) Three APIs, one per node, on one new product; node 0's API is the one from (a).
    let others = [
        Api::start_with(release, &urls[1], true, &[("AUTO_MIGRATE", "false")])?,
        Api::start_with(release, &urls[2], true, &[("AUTO_MIGRATE", "false")])?,
    ];
    let product = first.create_product(STOCK).await?;
    let script = holds_script(product);
    let split = [C - 2 * (C / 3), C / 3, C / 3];
    let targets: Vec<String> = [&first, &others[0], &others[1]]
        .iter()
        .map(|api| format!("{}/api/holds", api.url))
        .collect();
    let runs: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .zip(split)
            .map(|(url, c)| {
                let script = &script;
                s.spawn(move || wrk_with(url, c, 1, seconds, script))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("wrk thread"))?)
            .collect::<Result<_>>()
    })?;
    let before = [one["contention_retries"].as_u64().unwrap_or(0), 0, 0];
    let mut retries = Vec::new();
    for (api, before) in [&first, &others[0], &others[1]].into_iter().zip(before) {
        retries.push(api.contention_retries().await?.saturating_sub(before));
    }
    let per_node: Vec<Value> = runs
        .iter()
        .zip(split)
        .enumerate()
        .map(|(node, (v, c))| {
            json!({
                "node": node,
                "connections": c,
                "holds_per_s": rate(v, "ok"),
                "p50_ms": ms(v, "p50_us"),
                "p99_ms": ms(v, "p99_us"),
                "max_ms": ms(v, "max_us"),
                "answers": answers(v),
                "contention_retries": retries[node],
            })
        })
        .collect();
    let total = |f: &str| runs.iter().map(|v| v[f].as_u64().unwrap_or(0)).sum::<u64>();
    let worst = |f: &str| {
        per_node
            .iter()
            .filter_map(|r| r[f].as_f64())
            .fold(0.0, f64::max)
    };
    let three = json!({
        "apis": 3,
        "nodes": [0, 1, 2],
        "connections": C,
        "product_id": product,
        "holds_per_s": per_node.iter().filter_map(|r| r["holds_per_s"].as_f64()).sum::<f64>(),
        "p99_ms": worst("p99_ms"),
        "p99_is": "the largest of the three wrk runs' p99s",
        "max_ms": worst("max_ms"),
        "answers": {
            "2xx": total("ok"),
            "409": total("refused"),
            "503": total("unavailable"),
            "other_5xx": total("server_error"),
            "other": total("other"),
            "socket_errors": total("socket_errors"),
        },
        "contention_retries": retries.iter().sum::<u64>(),
        "per_node": per_node,
    });
    println!(
        "Galera  3 APIs on nodes 0,1,2  c={C:<3}  {:>8.0} holds/s  p99 {:>6.1} ms (worst of the three)  {}; {} retried transactions",
        three["holds_per_s"].as_f64().unwrap_or(0.0),
        three["p99_ms"].as_f64().unwrap_or(0.0),
        non_2xx(&three["answers"]),
        three["contention_retries"]
    );
    for r in three["per_node"].as_array().into_iter().flatten() {
        println!(
            "          API on node {}      c={:<3}  {:>8.0} holds/s  p50 {:>6.1} ms  p99 {:>6.1} ms  {}; {} retried",
            r["node"],
            r["connections"],
            r["holds_per_s"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0),
            non_2xx(&r["answers"]),
            r["contention_retries"]
        );
    }

    // The books, once the APIs have stopped (a request still retrying when wrk stopped could
    // otherwise commit between two nodes' reads).
    drop(others);
    drop(first);
    let mut books = Vec::new();
    let mut attempts = 0;
    while attempts < 5 {
        attempts += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        books.clear();
        for url in &urls {
            books.push(node_books(url).await?);
        }
        if books.iter().all(|b| *b == books[0]) {
            break;
        }
    }
    let equal = books.iter().all(|b| *b == books[0]);
    let ledger = books[0]["products"].as_array().cloned().unwrap_or_default();
    let conserved = !ledger.is_empty()
        && ledger.iter().all(|p| {
            let n = |f: &str| p[f].as_i64().unwrap_or(-1);
            n("available") >= 0 && n("stock") == n("available") + n("held") + n("pending")
        });
    let find = |id: i64| {
        ledger
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let hot = find(product);
    println!(
        "Galera  books on nodes 0,1,2 after the runs: equal {}, conserved {} (hot product: stock {} = available {} + active holds {} + pending orders {}; {} holds answered 2xx, {} active in the database)",
        if equal { "yes" } else { "NO" },
        if conserved { "yes" } else { "NO" },
        hot["stock"],
        hot["available"],
        hot["held"],
        hot["pending"],
        three["answers"]["2xx"],
        hot["held"],
    );
    Ok(json!({
        "cluster": "three MariaDB Galera nodes on loopback (tests/src/servers.rs), one machine",
        "one_api": one,
        "three_apis": three,
        "books": {
            "equal_on_all_nodes": equal,
            "conserved": conserved,
            "reads": attempts,
            "products": ledger,
            "per_node": books,
        },
    }))
}

/// A wrk report's answers by status.
fn answers(v: &Value) -> Value {
    json!({
        "2xx": v["ok"],
        "409": v["refused"],
        "503": v["unavailable"],
        "other_5xx": v["server_error"],
        "other": v["other"],
        "socket_errors": v["socket_errors"],
    })
}

fn non_2xx(a: &Value) -> String {
    let mut line = format!(
        "non-2xx: 409 {}, 503 {}, other 5xx {}",
        a["409"], a["503"], a["other_5xx"]
    );
    for (field, what) in [("other", "other"), ("socket_errors", "socket errors")] {
        if a[field].as_u64().unwrap_or(0) > 0 {
            line.push_str(&format!(", {what} {}", a[field]));
        }
    }
    line
}

/// One Galera node's books, read on it directly with causal reads (`wsrep_sync_wait = 1`, so the
/// node has applied everything committed before the read): per product the stock, available,
/// active holds and pending orders, and the checksums of the tables.
async fn node_books(url: &str) -> Result<Value> {
    let mut conn = sqlx::MySqlConnection::connect(url).await?;
    conn.execute("SET SESSION wsrep_sync_wait = 1").await?;
    let rows: Vec<(i64, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT p.id, CAST(p.stock AS SIGNED), CAST(p.available_stock AS SIGNED), \
         CAST(COALESCE((SELECT SUM(h.qty) FROM holds h WHERE h.product_id = p.id AND h.status = 'active'), 0) AS SIGNED), \
         CAST(COALESCE((SELECT SUM(o.quantity) FROM orders o WHERE o.product_id = p.id AND o.status = 'pending'), 0) AS SIGNED), \
         CAST((SELECT COUNT(*) FROM holds h WHERE h.product_id = p.id) AS SIGNED), \
         CAST((SELECT COUNT(*) FROM orders o WHERE o.product_id = p.id) AS SIGNED) \
         FROM products p ORDER BY p.id",
    )
    .fetch_all(&mut conn)
    .await?;
    let products: Vec<Value> = rows
        .into_iter()
        .map(|(id, stock, available, held, pending, holds, orders)| {
            json!({"id": id, "stock": stock, "available": available, "held": held,
                   "pending": pending, "hold_rows": holds, "order_rows": orders})
        })
        .collect();
    let mut checksums = serde_json::Map::new();
    for table in ["products", "holds", "orders"] {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("CHECKSUM TABLE {table}")))
            .fetch_one(&mut conn)
            .await?;
        use sqlx::Row;
        let sum = row.try_get::<Option<u64>, _>(1).or_else(|_| {
            row.try_get::<Option<i64>, _>(1)
                .map(|s| s.map(|s| s as u64))
        })?;
        checksums.insert(table.to_owned(), json!(sum));
    }
    Ok(json!({"products": products, "checksums": checksums}))
}
