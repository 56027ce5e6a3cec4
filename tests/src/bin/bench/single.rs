//! The single-server sections of the full run, on one MariaDB and one database, in order:
//! - HTTP holds on one hot product at each of [`CONNECTIONS`], with coalescing on and off;
//! - with coalescing on: the hold paths ([`crate::paths`]), an unknown-id spray and the API's
//!   RSS around it, GET product reads/s (single-flight), and GET hold reads/s by its buyer
//!   (`Client-Secret`) as a share of them;
//! - a queued sale's opening storm ([`crate::queue`]);
//! - a 100,000-hold expiry backlog swept by the worker while holds keep coming
//!   ([`backlog_sweep`]);
//! - a stock-boundary run, where oversold must be 0 ([`stock_boundary`]);
//! - the API's peak RSS, and the plain-SQL anchor at each of [`CONNECTIONS`].

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sea_orm::sqlx::{self, Connection, Executor};
use serde_json::{Value, json};

use crate::{
    anchor::plain_sql_holds,
    api::Api,
    database::fresh_database,
    paths::hold_paths,
    sampling::mariadb_pid,
    wrk::{hold_reads_script, ms, rate, spray_script, wrk, wrk_holds, wrk_reads, wrk_with},
};

/// The load points of the HTTP and plain-SQL holds: concurrent connections.
pub(crate) const CONNECTIONS: [usize; 3] = [16, 64, 256];

/// Interleaved rounds of the hold paths in the full run.
const HOLD_PATH_ROUNDS: usize = 4;

/// The sections on the shared MariaDB: HTTP holds with coalescing on and off, reads, the expiry
/// backlog, the stock boundary, peak RSS, and the plain-SQL anchor.
pub(crate) async fn single_server(
    release: &Path,
    base: &str,
    seconds: u64,
    results: &mut Value,
) -> Result<()> {
    let db_url = fresh_database(base, "fs_bench").await?;
    let mut peak_rss_kib = 0u64;

    for coalescing in [true, false] {
        let api = Api::start(release, &db_url, coalescing)?;
        let product = api.create_product(100_000_000).await?;
        for &c in &CONNECTIONS {
            let r = wrk_holds(&api.url, product, c, seconds)?;
            println!(
                "HTTP holds  coalescing={coalescing:<5} c={c:<3}  {:>8.0} holds/s  p50 {:>6.1} ms  p99 {:>6.1} ms",
                r["holds_per_s"].as_f64().unwrap_or(0.0),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0)
            );
            let mut r = r;
            r["coalescing"] = json!(coalescing);
            r["connections"] = json!(c);
            push(&mut results["http_holds"], r);
        }
        if coalescing {
            // Four rounds: on this shared virtual machine one round's shares of the keyed and
            // limited paths ranged widely within a few minutes.
            let db_pid = mariadb_pid(base).await;
            let jwt_api = Api::start_tokens(release, &db_url)?;
            results["hold_paths"] =
                hold_paths(&api, &jwt_api, product, HOLD_PATH_ROUNDS, seconds, db_pid).await?;
            peak_rss_kib = peak_rss_kib.max(jwt_api.peak_rss_kib());
            drop(jwt_api);
            let rss_before = api.rss_kib();
            let spray = wrk_with(&format!("{}/", api.url), 256, 2, seconds, &spray_script())?;
            // Give retiring tasks a moment, then read the resident size again.
            std::thread::sleep(Duration::from_millis(500));
            let rss_after = api.rss_kib();
            println!(
                "Unknown-id spray: {} requests (all 404: {}), API RSS {:.1} -> {:.1} MiB",
                spray["requests"],
                spray["other"] == spray["requests"],
                rss_before as f64 / 1024.0,
                rss_after as f64 / 1024.0
            );
            results["unknown_id_spray"] = json!({
                "requests": spray["requests"],
                "not_found": spray["other"],
                "rss_before_mib": rss_before as f64 / 1024.0,
                "rss_after_mib": rss_after as f64 / 1024.0,
            });
            let reads = wrk_reads(&api.url, product, 256, seconds)?;
            println!(
                "GET product c=256           {:>8.0} reads/s  p50 {:>6.1} ms  p99 {:>6.1} ms",
                reads["per_s"].as_f64().unwrap_or(0.0),
                reads["p50_ms"].as_f64().unwrap_or(0.0),
                reads["p99_ms"].as_f64().unwrap_or(0.0)
            );
            results["get_product"] = reads;
            // A hold read by its buyer (its secret checked) against the product read just
            // before, in the same run: both one process, one product's row or one hold's.
            let (hold, secret) = api.create_hold(product).await?;
            let v = wrk(
                &format!("{}/api/holds/{hold}", api.url),
                256,
                seconds,
                &hold_reads_script(&secret),
            )?;
            let hold_reads = json!({
                "connections": 256,
                "per_s": rate(&v, "ok"),
                "p50_ms": ms(&v, "p50_us"),
                "p99_ms": ms(&v, "p99_us"),
                "share_of_product_reads": rate(&v, "ok") / results["get_product"]["per_s"].as_f64().unwrap_or(0.0).max(1.0),
            });
            println!(
                "GET hold c=256 (secret)     {:>8.0} reads/s  p50 {:>6.1} ms  p99 {:>6.1} ms ({:.0}% of product reads)",
                hold_reads["per_s"].as_f64().unwrap_or(0.0),
                hold_reads["p50_ms"].as_f64().unwrap_or(0.0),
                hold_reads["p99_ms"].as_f64().unwrap_or(0.0),
                100.0 * hold_reads["share_of_product_reads"].as_f64().unwrap_or(0.0)
            );
            results["get_hold"] = hold_reads;
            results["queue"] = crate::queue::queue_storm(release, &api, &db_url, seconds).await?;
            let backlog = backlog_sweep(release, &api, &db_url, seconds).await?;
            println!(
                "Backlog: {} expired holds swept in {:.1} s ({} batches); holds meanwhile: p99 {:.1} ms, max {:.1} ms",
                backlog["expired"],
                backlog["sweep_s"].as_f64().unwrap_or(0.0),
                backlog["batches"],
                backlog["holds_p99_ms"].as_f64().unwrap_or(0.0),
                backlog["holds_max_ms"].as_f64().unwrap_or(0.0)
            );
            results["expiry_backlog"] = backlog;
            let boundary = stock_boundary(&api, &db_url).await?;
            println!(
                "Stock boundary: stock 1000, 3000 requests (256 in flight): {} granted, oversold {}",
                boundary["granted"], boundary["oversold"]
            );
            results["stock_boundary"] = boundary;
        }
        peak_rss_kib = peak_rss_kib.max(api.peak_rss_kib());
    }
    results["api_peak_rss_mib"] = json!(peak_rss_kib as f64 / 1024.0);
    println!("API peak RSS: {:.1} MiB", peak_rss_kib as f64 / 1024.0);

    for &c in &CONNECTIONS {
        let r = plain_sql_holds(&db_url, c, seconds).await?;
        println!(
            "Plain SQL   one tx per hold  c={c:<3}  {:>8.0} holds/s  p50 {:>6.1} ms  p99 {:>6.1} ms",
            r["holds_per_s"].as_f64().unwrap_or(0.0),
            r["p50_ms"].as_f64().unwrap_or(0.0),
            r["p99_ms"].as_f64().unwrap_or(0.0)
        );
        push(&mut results["plain_sql_holds"], r);
    }
    Ok(())
}

fn push(list: &mut Value, item: Value) {
    if let Some(a) = list.as_array_mut() {
        a.push(item);
    }
}

/// 100,000 expired holds on the hot product, swept by one worker run in batches of 500 while
/// wrk keeps asking for holds on the same product: how long the sweep takes and what hold
/// latency looks like meanwhile (it must not stall for longer than one batch).
async fn backlog_sweep(release: &Path, api: &Api, db_url: &str, seconds: u64) -> Result<Value> {
    const BACKLOG: i64 = 100_000;
    let product = api.create_product(BACKLOG + 100_000_000).await?;
    let mut conn = sqlx::MySqlConnection::connect(db_url).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO holds (product_id, qty, status, expires_at, created_at, updated_at) \
         SELECT {product}, 1, 'active', NOW(6) - INTERVAL 1 MINUTE, NOW(6) - INTERVAL 3 MINUTE, NOW(6) \
         FROM seq_1_to_{BACKLOG}"
    )))
    .await
    .context("insert the backlog (MariaDB's sequence engine)")?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "UPDATE products SET available_stock = available_stock - {BACKLOG} WHERE id = {product}"
    )))
    .await?;
    let log_dir = std::env::temp_dir().join("flash-sale-bench-logs");
    let started = Instant::now();
    let mut worker = Command::new(release.join("flash-sale-worker"))
        .arg("--once")
        .env("DATABASE_URL", db_url)
        .env("EXPIRY_BATCH_SIZE", "500")
        .env("LOG_DIR", &log_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let url = api.url.clone();
    let load = std::thread::spawn(move || wrk_holds(&url, product, 64, seconds.max(10)));
    let status = worker.wait()?;
    let sweep_s = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("worker failed");
    }
    let holds = load.join().map_err(|_| anyhow::anyhow!("wrk thread"))??;
    let remaining: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM holds WHERE product_id = ? AND status = 'active' AND expires_at <= NOW(6)",
    )
    .bind(product)
    .fetch_one(&mut conn)
    .await?;
    Ok(json!({
        "expired": BACKLOG,
        "batches": BACKLOG / 500,
        "sweep_s": sweep_s,
        "left_unswept": remaining,
        "holds_per_s_meanwhile": holds["holds_per_s"],
        "holds_p99_ms": holds["p99_ms"],
        "holds_max_ms": holds["max_ms"],
    }))
}

/// Stock 1000, 3000 requests released together, 256 in flight at a time (as many connections as
/// the heaviest load point): exactly 1000 granted, nothing oversold.
async fn stock_boundary(api: &Api, db_url: &str) -> Result<Value> {
    let product = api.create_product(1000).await?;
    let barrier = Arc::new(tokio::sync::Barrier::new(3000));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let tasks: Vec<_> = (0..3000)
        .map(|_| {
            let (http, url, barrier) = (api.http.clone(), api.url.clone(), barrier.clone());
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let _slot = in_flight.acquire().await;
                http.post(format!("{url}/api/holds"))
                    .json(&json!({"product_id": product, "qty": 1}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut granted = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await? {
            201 => granted += 1,
            409 => refused += 1,
            other => bail!("unexpected status {other} at the stock boundary"),
        }
    }
    let mut conn = sqlx::MySqlConnection::connect(db_url).await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(qty), 0) AS SIGNED) FROM holds WHERE product_id = ? AND status = 'active'",
    )
    .bind(product)
    .fetch_one(&mut conn)
    .await?;
    Ok(json!({
        "stock": 1000,
        "requests": 3000,
        "in_flight": 256,
        "granted": granted,
        "refused": refused,
        "held_in_database": held,
        "oversold": (held - 1000).max(0),
    }))
}
