//! `flash-sale-bench`: the hot-product benchmark, in one run, against a real MariaDB: one of
//! the run's own (`ScratchMariaDb`, with [`SALE_SERVER`]'s settings), or the server that
//! `TEST_MYSQL_URL` names.
//!
//! Run it with `tests/bench.sh` (builds release binaries, makes MariaDB and wrk ready). It
//! prints a table and writes `tests/bench-results/results.json` and `results.svg`:
//! - holds/s and p50/p99 through HTTP on one hot product at 16, 64 and 256 connections, with
//!   coalescing on and off (the load comes from `wrk`);
//! - the same for a plain SQL client doing one transaction per hold (lock, insert, update,
//!   commit) straight against the database: the ceiling of that design;
//! - the price of an `Idempotency-Key`, of a per-buyer limit and of buyer tokens
//!   (`results["hold_paths"]`): unkeyed (anonymous), keyed, distinct-buyer limited and
//!   token-authenticated (`BUYER_AUTH=jwt`, a second API on the same database) holds at 256
//!   connections, in four rounds that each run the paths forward and back, each path's share
//!   taken against the unkeyed holds of the same rounds; a path's p50 and p99 are those of all
//!   its answers in the run (wrk's latency counts of its passes, pooled), its worst pass's p99
//!   beside them;
//! - GET product reads/s (single-flight), and GET hold reads/s by its buyer (`Client-Secret`)
//!   as a share of them;
//! - a 100,000-hold expiry backlog swept by the worker while holds keep coming;
//! - a stock-boundary run (oversold must be 0) and the API's peak RSS;
//! - Galera (`results["galera"]`): a three-node MariaDB Galera cluster of the run's own
//!   (`flash_sale_tests::servers::GaleraCluster`, on loopback), hot-product holds at 256
//!   connections through one API on node 0 alone, then through three APIs, one per node, each
//!   driven by its own `wrk` on the same product (total holds/s, the worst of the three p99s,
//!   and the non-2xx answers: 409, 503, other 5xx); then the books read on every node directly:
//!   equal on all three, and conserved (stock = available + active holds + pending orders).
//!
//! - live stock streams (`results["stock_stream"]`): up to 5,000 listeners on one product through
//!   one API process: its RSS, and the database queries per second, which must not grow with
//!   listeners (see [`stock_streams`]).
//!
//! `BENCH_ONLY=stream` runs only the stock stream section (on a MariaDB of its own) and writes
//! `tests/bench-results/results-stream.json`.
//! `BENCH_ONLY=holds` runs only the four hold paths at 256 connections (unkeyed, keyed, distinct
//! buyers on a limited product, tokens), `BENCH_REPEAT` times (default 3) interleaved, and prints each
//! path's share of unkeyed holds/s and CPU per hold, with the plain-SQL anchor of the same run:
//! a quick check while working on the hold path; it writes
//! `tests/bench-results/results-holds.json`.
//! `BENCH_ONLY=galera` runs only the Galera section (a quick check: it needs neither the
//! single server nor the other sections) and writes `tests/bench-results/results-galera.json`
//! instead, leaving `results.json` and the chart as they were.

mod anchor;
mod api;
mod database;
mod paths;
mod sampling;
mod single;
mod wrk;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use flash_sale_tests::servers::{GaleraCluster, ScratchMariaDb};
use sea_orm::sqlx::{self, Connection, Executor};
use serde_json::{Value, json};

use api::Api;
use database::fresh_database;
use paths::holds_only;
use sampling::machine;
use single::{CONNECTIONS, single_server};
use wrk::{holds_script, ms, rate, wrk_with};

/// The MariaDB settings of the run's own server, beyond the test servers' (see the README's
/// "Server settings for a sale"): a redo log and a buffer pool that a sale's minutes of writes
/// do not fill, and connections for the plain-SQL client's 256 beside the API's pool.
const SALE_SERVER: &[&str] = &[
    "--innodb-log-file-size=1G",
    "--innodb-buffer-pool-size=1G",
    "--max-connections=1000",
];
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // `BENCH_BIN_DIR`: binaries built elsewhere (a build with symbols, for a profiler).
    let release = std::env::var_os("BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release"));
    let out_dir = root.join("tests/bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let galera_only = match only.as_str() {
        "" | "holds" => false,
        "galera" => true,
        "stream" => return stream_only(&release, seconds, &out_dir).await,
        other => bail!(
            "BENCH_ONLY={other}: the sections that run alone are `galera`, `holds` and `stream`"
        ),
    };
    // The single-server sections run on a MariaDB of the run's own, unless TEST_MYSQL_URL names
    // a server to use instead: nothing else's queries share its CPU or its disk, its CPU time
    // is this run's alone, and it is set up for a sale as the README recommends. (On the
    // shared server, with Debian's 96 MiB of redo log, one run of the hold paths took the
    // checkpoint age close to its limit, where InnoDB must flush pages before any more
    // writes.)
    let own_server = match (galera_only, std::env::var("TEST_MYSQL_URL")) {
        (false, Err(_)) => Some(ScratchMariaDb::start(SALE_SERVER).await),
        _ => None,
    };
    let base = match (&own_server, std::env::var("TEST_MYSQL_URL")) {
        (_, Ok(url)) => url,
        (Some(server), _) => server.base_url(),
        (None, Err(_)) => String::new(),
    };
    if only == "holds" {
        return holds_only(&release, &base, seconds, &out_dir).await;
    }
    let mut results = json!({
        "machine": machine(),
        "seconds_per_point": seconds,
        "http_holds": [],
        "plain_sql_holds": [],
    });
    if !galera_only {
        single_server(&release, &base, seconds, &mut results).await?;
        results["stock_stream"] = stock_streams(&release, seconds).await.unwrap_or_else(|e| {
            eprintln!("Stock stream section failed: {e:#}");
            json!({"error": format!("{e:#}")})
        });
    }

    // In a task of its own, so that a cluster that fails to start (GaleraCluster panics) still
    // leaves the other sections' figures written, with the failure recorded beside them.
    let galera_run = tokio::spawn({
        let release = release.clone();
        async move { galera(&release, seconds).await }
    })
    .await
    .map_err(|e| anyhow!("the Galera section panicked: {e}"))
    .and_then(|r| r);
    let galera_failed = match galera_run {
        Ok(v) => {
            results["galera"] = v;
            None
        }
        Err(e) if galera_only => return Err(e),
        Err(e) => {
            eprintln!("Galera section failed: {e:#}");
            results["galera"] = json!({"error": format!("{e:#}")});
            Some(e)
        }
    };

    if galera_only {
        let path = out_dir.join("results-galera.json");
        let only = json!({
            "machine": results["machine"],
            "seconds_per_point": seconds,
            "galera": results["galera"],
        });
        std::fs::write(&path, serde_json::to_string_pretty(&only)?)?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    summarize(&mut results);
    println!("{}", results["summary"]);
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    chart(&results, &out_dir.join("results.svg"))?;
    println!("wrote {}", out_dir.join("results.json").display());
    match galera_failed {
        Some(e) => Err(e.context("the Galera section failed (the other figures were written)")),
        None => Ok(()),
    }
}

/// `BENCH_ONLY=stream`: the stock stream section alone, into `results-stream.json`.
async fn stream_only(release: &Path, seconds: u64, out_dir: &Path) -> Result<()> {
    let path = out_dir.join("results-stream.json");
    let only = json!({
        "machine": machine(),
        "seconds_per_point": seconds,
        "stock_stream": stock_streams(release, seconds).await?,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&only)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The Galera section: a three-node cluster of this run's own on loopback, one fresh database
/// (migrated by the first API), hot-product holds at 256 connections through one API on node 0
/// alone, then through three APIs, one per node, each driven by its own wrk (1 thread, a third
/// of the connections) on one product; then the books read on every node directly. Everything
/// shares this machine's cores: three `mariadbd`, up to three APIs and wrk.
async fn galera(release: &Path, seconds: u64) -> Result<Value> {
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

fn summarize(results: &mut Value) {
    let find = |list: &str, coalescing: Option<bool>, c: usize| -> f64 {
        results[list]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["connections"] == c && coalescing.is_none_or(|co| r["coalescing"] == co))
            .and_then(|r| r["holds_per_s"].as_f64())
            .unwrap_or(0.0)
    };
    let best_coalesced = CONNECTIONS
        .iter()
        .map(|&c| find("http_holds", Some(true), c))
        .fold(0.0, f64::max);
    let sql_ceiling = CONNECTIONS
        .iter()
        .map(|&c| find("plain_sql_holds", None, c))
        .fold(0.0, f64::max);
    let p99_256 = results["http_holds"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["connections"] == 256 && r["coalescing"] == true)
        .and_then(|r| r["p99_ms"].as_f64())
        .unwrap_or(0.0);
    results["summary"] = json!({
        "best_coalesced_holds_per_s": best_coalesced,
        "plain_sql_ceiling_holds_per_s": sql_ceiling,
        "speedup_over_plain_sql": if sql_ceiling > 0.0 { best_coalesced / sql_ceiling } else { 0.0 },
        "coalesced_p99_ms_at_256": p99_256,
        "keyed_holds_per_s_at_256": results["hold_paths"]["keyed"]["holds_per_s"],
        "keyed_p99_ms_at_256": results["hold_paths"]["keyed"]["p99_ms"],
        "keyed_share_of_unkeyed": results["hold_paths"]["keyed_share_of_unkeyed"],
        "limited_product_holds_per_s_at_256": results["hold_paths"]["limited"]["holds_per_s"],
        "limited_share_of_unlimited": results["hold_paths"]["limited_share_of_unlimited"],
        "tokens_share_of_anonymous": results["hold_paths"]["tokens_share_of_anonymous"],
        "tokens_p99_ms_at_256": results["hold_paths"]["tokens"]["p99_ms"],
        "get_product_per_s": results["get_product"]["per_s"],
        "get_hold_per_s": results["get_hold"]["per_s"],
        "get_hold_share_of_product_reads": results["get_hold"]["share_of_product_reads"],
        "unknown_id_spray_rss_mib": [results["unknown_id_spray"]["rss_before_mib"], results["unknown_id_spray"]["rss_after_mib"]],
        "oversold": results["stock_boundary"]["oversold"],
        "api_peak_rss_mib": results["api_peak_rss_mib"],
        "galera_one_api_holds_per_s": results["galera"]["one_api"]["holds_per_s"],
        "galera_three_apis_holds_per_s": results["galera"]["three_apis"]["holds_per_s"],
        "galera_three_apis_p99_ms": results["galera"]["three_apis"]["p99_ms"],
        "galera_three_apis_503": results["galera"]["three_apis"]["answers"]["503"],
        "galera_three_apis_contention_retries": results["galera"]["three_apis"]["contention_retries"],
        "stream_5000_listeners_rss_mib": stream_step(results, 5000, "rss_mib"),
        "stream_hub_checks_per_s_1_vs_5000_listeners": [stream_step(results, 1, "hub_checks_per_s"), stream_step(results, 5000, "hub_checks_per_s")],
        "galera_books_equal_and_conserved": results["galera"]["books"]["equal_on_all_nodes"] == true
            && results["galera"]["books"]["conserved"] == true,
    });
}

/// A figure of the stock stream section's step with `listeners` listeners.
fn stream_step(results: &Value, listeners: usize, field: &str) -> Value {
    results["stock_stream"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["listeners"] == listeners)
        .map(|s| s[field].clone())
        .unwrap_or(Value::Null)
}

/// Holds/s by connections for the three designs, as an SVG line chart.
fn chart(results: &Value, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let series = |list: &str, coalescing: Option<bool>| -> Vec<(f64, f64)> {
        results[list]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| coalescing.is_none_or(|c| r["coalescing"] == c))
            .filter_map(|r| Some((r["connections"].as_f64()?, r["holds_per_s"].as_f64()?)))
            .collect()
    };
    let lines = [
        (
            "HTTP, coalesced batches",
            series("http_holds", Some(true)),
            RGBColor(31, 119, 180),
        ),
        (
            "HTTP, one transaction per hold",
            series("http_holds", Some(false)),
            RGBColor(255, 127, 14),
        ),
        (
            "Plain SQL, one transaction per hold",
            series("plain_sql_holds", None),
            RGBColor(44, 160, 44),
        ),
    ];
    let top = lines
        .iter()
        .flat_map(|(_, s, _)| s.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.15;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Holds per second on one hot product (MariaDB, 2 cores)",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((10f64..400f64).log_scale(), 0f64..top)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("concurrent connections")
        .y_desc("holds/s")
        .x_labels(3)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, points, color) in lines {
        let style = color.stroke_width(3);
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 5, color.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// Live stock streams (`results["stock_stream"]`): one API process on a MariaDB of the run's own
/// (`ScratchMariaDb`, so that its `Com_select` counts this API's queries and nobody else's),
/// `STOCK_STREAM_INTERVAL_MS` at its default (250), and 0, 1, 100, 1,000 then 5,000 listeners
/// on one product. At each step, over a quiet window: the API's RSS, its CPU, the hub's checks
/// per second (`stock_stream_checks_total`) and the server's SELECTs per second; then one hold,
/// and how long every listener took to receive the new level.
async fn stock_streams(release: &Path, seconds: u64) -> Result<Value> {
    use flash_sale_tests::sse::{Reader, stream_client};
    const STEPS: [usize; 5] = [0, 1, 100, 1000, 5000];
    const INTERVAL_MS: u64 = 250;

    let mariadb = ScratchMariaDb::start(&[]).await;
    let db_url = fresh_database(&mariadb.base_url(), "fs_bench_stream").await?;
    let api = Api::start_with(
        release,
        &db_url,
        true,
        // Every listener is this one client: its own limit must not be the one measured.
        &[
            ("STOCK_STREAM_INTERVAL_MS", "250"),
            ("STREAM_MAX_PER_CLIENT", "10000"),
            ("RUST_LOG", "warn"),
        ],
    )?;
    let product = api.create_product(1_000_000).await?;
    let mut status = sqlx::MySqlConnection::connect(&mariadb.base_url()).await?;
    let http = stream_client();
    let stream_url = format!("{}/api/products/{product}/stream", api.url);
    let mut readers: Vec<Reader> = Vec::new();
    let mut expected = 1_000_000i64;
    let mut steps = Vec::new();
    for target in STEPS {
        let opening = Instant::now();
        while readers.len() < target {
            // A few hundred at a time, as a crowd arriving, not one burst of 5,000 handshakes.
            let n = (target - readers.len()).min(250);
            let opened = futures::future::join_all((0..n).map(|_| async {
                let r = http.get(&stream_url).send().await?;
                if r.status() != 200 {
                    bail!("stream answered {}", r.status());
                }
                let mut reader = Reader::new(r);
                reader
                    .next_event("stock", Duration::from_secs(30))
                    .await
                    .map_err(|e| anyhow!("no first event: {e:?}"))?;
                Ok(reader)
            }))
            .await;
            for r in opened {
                readers.push(r?);
            }
        }
        let opened_s = opening.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;

        let checks_before = api.metric("stock_stream_checks_total").await?;
        let selects_before = com_select(&mut status).await?;
        let cpu_before = api.cpu_seconds();
        let window = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let elapsed = window.elapsed().as_secs_f64();
        let checks = (api.metric("stock_stream_checks_total").await? - checks_before) / elapsed;
        let selects = (com_select(&mut status).await? - selects_before) as f64 / elapsed;
        let cpu = (api.cpu_seconds() - cpu_before) / elapsed;
        let rss_mib = api.rss_kib() as f64 / 1024.0;

        // One hold; then every listener must see the new level.
        let hold = api
            .http
            .post(format!("{}/api/holds", api.url))
            .json(&json!({"product_id": product, "qty": 1}))
            .send()
            .await?;
        if hold.status() != 201 {
            bail!("hold answered {}", hold.status());
        }
        let held_at = Instant::now();
        expected -= 1;
        let delays = futures::future::join_all(readers.iter_mut().map(|r| async move {
            loop {
                match r.next_event("stock", Duration::from_secs(10)).await {
                    Ok(v) if v["available_stock"] == expected => return Some(held_at.elapsed()),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        }))
        .await;
        let missed = delays.iter().filter(|d| d.is_none()).count();
        let mut ms: Vec<f64> = delays
            .into_iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            ms[((ms.len() - 1) as f64 * p).round() as usize]
        };
        println!(
            "Stock stream: {target:>5} listeners  RSS {rss_mib:>6.1} MiB  CPU {:>4.0}%  hub checks {checks:>4.1}/s  SELECTs {selects:>4.1}/s  change seen by all: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms, missed {missed}",
            cpu * 100.0,
            pct(0.5),
            pct(0.99),
            pct(1.0),
        );
        steps.push(json!({
            "listeners": target,
            "opened_in_s": opened_s,
            "rss_mib": rss_mib,
            "api_cpu_share": cpu,
            "hub_checks_per_s": checks,
            "server_selects_per_s": selects,
            "change_seen_p50_ms": pct(0.5),
            "change_seen_p99_ms": pct(0.99),
            "change_seen_max_ms": pct(1.0),
            "listeners_missing_the_change": missed,
        }));
    }
    let peak_rss_mib = api.peak_rss_kib() as f64 / 1024.0;
    drop(readers);
    Ok(json!({
        "interval_ms": INTERVAL_MS,
        "window_s": seconds,
        "steps": steps,
        "api_peak_rss_mib": peak_rss_mib,
    }))
}

/// The server's `Com_select`: every SELECT it ran (a scratch server: only the API's).
async fn com_select(conn: &mut sqlx::MySqlConnection) -> Result<i64> {
    let row: (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
        .fetch_one(conn)
        .await?;
    row.1.parse().context("Com_select")
}
