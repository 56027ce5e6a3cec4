//! The plain-SQL anchor: the one-transaction-per-hold design straight against the database
//! (lock, insert, update, commit), no HTTP in the way. Its holds/s are the ceiling of that
//! design on this machine, and in a run of the hold paths alone, how fast the machine is right
//! now.

use std::time::{Duration, Instant};

use anyhow::Result;
use sea_orm::sqlx::{self, Executor, mysql::MySqlPoolOptions};
use serde_json::{Value, json};

/// The one-transaction-per-hold design with no HTTP in the way: `connections` clients, each
/// locking the product row, inserting a hold, updating the counter and committing, in a loop.
pub(crate) async fn plain_sql_holds(
    db_url: &str,
    connections: usize,
    seconds: u64,
) -> Result<Value> {
    let pool = MySqlPoolOptions::new()
        .max_connections(connections as u32)
        .acquire_timeout(Duration::from_secs(120))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect(db_url)
        .await?;
    let product: i64 = sqlx::query_scalar(
        "INSERT INTO products (name, price_cents, stock, available_stock, created_at) \
         VALUES ('Plain SQL product', 999, 100000000, 100000000, NOW(6)) RETURNING id",
    )
    .fetch_one(&pool)
    .await?;
    // Open every connection before the clock starts.
    let warm: Vec<_> = futures::future::join_all((0..connections).map(|_| pool.acquire()))
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    drop(warm);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut tx = pool.begin().await?;
                    let available: i32 = sqlx::query_scalar(
                        "SELECT available_stock FROM products WHERE id = ? FOR UPDATE",
                    )
                    .bind(product)
                    .fetch_one(&mut *tx)
                    .await?;
                    if available >= 1 {
                        sqlx::query(
                            "INSERT INTO holds (product_id, qty, status, expires_at, created_at, updated_at) \
                             VALUES (?, 1, 'active', NOW(6) + INTERVAL 1 HOUR, NOW(6), NOW(6))",
                        )
                        .bind(product)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("UPDATE products SET available_stock = available_stock - 1 WHERE id = ?")
                            .bind(product)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, sqlx::Error>(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    pool.close().await;
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    Ok(json!({
        "connections": connections,
        "holds_per_s": all.len() as f64 / elapsed,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }))
}
