//! `flash-sale-bench`: the hot-product benchmark, in one run, against a real MariaDB.
//!
//! Run it with `tests/bench.sh` (builds release binaries, makes MariaDB and wrk ready). It
//! prints a table and writes `tests/bench-results/results.json` and `results.svg`:
//! - holds/s and p50/p99 through HTTP on one hot product at 16, 64 and 256 connections, with
//!   coalescing on and off (the load comes from `wrk`);
//! - the same for a plain SQL client doing one transaction per hold (lock, insert, update,
//!   commit) straight against the database: the ceiling of that design;
//! - GET product reads/s (single-flight);
//! - a 100,000-hold expiry backlog swept by the worker while holds keep coming;
//! - a stock-boundary run (oversold must be 0) and the API's peak RSS.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use sea_orm::sqlx::{self, Connection, Executor, mysql::MySqlPoolOptions};
use serde_json::{Value, json};

const CONNECTIONS: [usize; 3] = [16, 64, 256];
const ADMIN: &str = "bench-admin";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let base = std::env::var("TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://flash:flash@127.0.0.1:3306".into());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = root.join("target/release");
    let out_dir = root.join("tests/bench-results");
    std::fs::create_dir_all(&out_dir)?;
    let db_url = fresh_database(&base, "fs_bench").await?;
    let mut results = json!({
        "machine": machine(),
        "seconds_per_point": seconds,
        "http_holds": [],
        "plain_sql_holds": [],
    });
    let mut peak_rss_kib = 0u64;

    for coalescing in [true, false] {
        let api = Api::start(&release, &db_url, coalescing)?;
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
            let reads = wrk_reads(&api.url, product, 256, seconds)?;
            println!(
                "GET product c=256           {:>8.0} reads/s  p50 {:>6.1} ms  p99 {:>6.1} ms",
                reads["per_s"].as_f64().unwrap_or(0.0),
                reads["p50_ms"].as_f64().unwrap_or(0.0),
                reads["p99_ms"].as_f64().unwrap_or(0.0)
            );
            results["get_product"] = reads;
            let backlog = backlog_sweep(&release, &api, &db_url, seconds).await?;
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

    summarize(&mut results);
    println!("{}", results["summary"]);
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    chart(&results, &out_dir.join("results.svg"))?;
    println!("wrote {}", out_dir.join("results.json").display());
    Ok(())
}

fn push(list: &mut Value, item: Value) {
    if let Some(a) = list.as_array_mut() {
        a.push(item);
    }
}

/// Drops and recreates a database, migrates it through the API binary, returns its URL.
async fn fresh_database(base: &str, name: &str) -> Result<String> {
    let mut conn = sqlx::MySqlConnection::connect(base)
        .await
        .context("MariaDB")?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
        .await?;
    Ok(format!("{base}/{name}"))
}

struct Api {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Api {
    fn start(release: &Path, db_url: &str, coalescing: bool) -> Result<Self> {
        let log_dir = std::env::temp_dir().join("flash-sale-bench-logs");
        // A free port chosen here, so the API's stdout need not be read (parsing every log
        // line would cost the load generator CPU).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(release.join("flash-sale-api"))
            .env("DATABASE_URL", db_url)
            .env("BIND_ADDR", addr.to_string())
            .env("HOLD_COALESCING", coalescing.to_string())
            .env("HOLD_TTL_SECONDS", "3600")
            .env("MAX_HOLD_QTY", "10")
            .env("ADMIN_TOKEN", ADMIN)
            .env("LOG_DIR", &log_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .spawn()
            .context("start target/release/flash-sale-api (run tests/bench.sh)")?;
        let api = Self {
            child,
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("the API did not start listening on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(api)
    }

    async fn create_product(&self, stock: i64) -> Result<i64> {
        let r: Value = self
            .http
            .post(format!("{}/api/admin/products", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({"name": "Hot product", "price": "9.99", "stock": stock}))
            .send()
            .await?
            .json()
            .await?;
        r["id"].as_i64().context("product id")
    }

    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            })
            .unwrap_or(0)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const WRK_REPORT: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; refused = 0; other = 0 end
function response(status, headers, body)
  if status == 200 or status == 201 then ok = ok + 1
  elseif status == 409 then refused = refused + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local o, r, x = 0, 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); r = r + t:get("refused"); x = x + t:get("other") end
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"ok":%d,"refused":%d,"other":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, o, r, x, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// Runs wrk with a script and returns its JSON report.
fn wrk(url: &str, connections: usize, seconds: u64, script: &str) -> Result<Value> {
    let path = std::env::temp_dir().join(format!("flash-sale-bench-{}.lua", std::process::id()));
    std::fs::File::create(&path)?.write_all(script.as_bytes())?;
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .with_context(|| format!("no report from wrk:\n{text}"))?;
    let v: Value = serde_json::from_str(line)?;
    if v["other"].as_u64().unwrap_or(0) > 0 {
        bail!("unexpected statuses during the run: {v}");
    }
    Ok(v)
}

fn rate(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or(0.0) / (v["duration_us"].as_f64().unwrap_or(1.0) / 1e6)
}

fn ms(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or(0.0) / 1000.0
}

fn wrk_holds(url: &str, product: i64, connections: usize, seconds: u64) -> Result<Value> {
    let script = format!(
        "wrk.method = \"POST\"\nwrk.body = '{{\"product_id\":{product},\"qty\":1}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n{WRK_REPORT}"
    );
    let v = wrk(&format!("{url}/api/holds"), connections, seconds, &script)?;
    Ok(json!({
        "holds_per_s": rate(&v, "ok"),
        "p50_ms": ms(&v, "p50_us"),
        "p99_ms": ms(&v, "p99_us"),
        "max_ms": ms(&v, "max_us"),
        "socket_errors": v["socket_errors"],
    }))
}

fn wrk_reads(url: &str, product: i64, connections: usize, seconds: u64) -> Result<Value> {
    let v = wrk(
        &format!("{url}/api/products/{product}"),
        connections,
        seconds,
        WRK_REPORT,
    )?;
    Ok(json!({
        "connections": connections,
        "per_s": rate(&v, "ok"),
        "p50_ms": ms(&v, "p50_us"),
        "p99_ms": ms(&v, "p99_us"),
    }))
}

/// The one-transaction-per-hold design with no HTTP in the way: `connections` clients, each
/// locking the product row, inserting a hold, updating the counter and committing, in a loop.
async fn plain_sql_holds(db_url: &str, connections: usize, seconds: u64) -> Result<Value> {
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
        "oversold": results["stock_boundary"]["oversold"],
        "api_peak_rss_mib": results["api_peak_rss_mib"],
    });
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let version = Command::new("mariadb")
        .args(["--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({"cpus": cpus, "database": version, "note": "load generator, API and database on one machine"})
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
