//! Live stock streams (`results["stock_stream"]`): up to 5,000 listeners on one product
//! through one API process: its RSS, and the database queries per second, which must not grow
//! with listeners (see [`stock_streams`]). [`stream_only`] is `BENCH_ONLY=stream`: this section
//! alone, on a MariaDB of its own, into `tests/bench-results/results-stream.json`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use flash_sale_tests::servers::ScratchMariaDb;
use sea_orm::sqlx::{self, Connection};
use serde_json::{Value, json};

use crate::{api::Api, database::fresh_database, sampling::machine};

/// `BENCH_ONLY=stream`: the stock stream section alone, into `results-stream.json`.
pub(crate) async fn stream_only(release: &Path, seconds: u64, out_dir: &Path) -> Result<()> {
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

/// Live stock streams (`results["stock_stream"]`): one API process on a MariaDB of the run's own
/// (`ScratchMariaDb`, so that its `Com_select` counts this API's queries and nobody else's),
/// `STOCK_STREAM_INTERVAL_MS` at its default (250), and 0, 1, 100, 1,000 then 5,000 listeners
/// on one product. At each step, over a quiet window: the API's RSS, its CPU, the hub's checks
/// per second (`stock_stream_checks_total`) and the server's SELECTs per second; then one hold,
/// and how long every listener took to receive the new level.
pub(crate) async fn stock_streams(release: &Path, seconds: u64) -> Result<Value> {
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
