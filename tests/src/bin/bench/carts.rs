//! Carts beside the hot path (`BENCH_ONLY=carts`): one-product holds on the hot product alone,
//! against the same holds while every tenth request is a two-line cart that includes the hot
//! product, at 256 connections, alternated over rounds so that the machine's drift touches both
//! alike. One-product holds served per second are read from the API's own counter of requests
//! served by one-product batches (`hold_batch_size_sum`), so the carts (served by their own
//! batches, `cart_batch_size_sum`) are not counted as one-product holds. Both wrk scripts build
//! every request in a Lua `request()`, so the generator spends alike on each.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    api::Api,
    database::fresh_database,
    sampling::{CpuSnapshot, machine, mariadb_pid},
    wrk::{WRK_REPORT, ms, wrk},
};

const CONNECTIONS: usize = 256;

/// Every request a one-product hold, or every `cart_every`-th a cart of the hot product and
/// `side` (0: never).
fn script(hot: i64, side: i64, cart_every: u32) -> String {
    format!(
        "local n = 0\n\
         local single = '{{\"product_id\":{hot},\"qty\":1}}'\n\
         local cart = '{{\"lines\":[{{\"product_id\":{hot},\"qty\":1}},{{\"product_id\":{side},\"qty\":1}}]}}'\n\
         local headers = {{[\"Content-Type\"] = \"application/json\"}}\n\
         function request()\n  n = n + 1\n  \
           if {cart_every} > 0 and n % {cart_every} == 0 then\n    \
             return wrk.format(\"POST\", \"/api/holds\", headers, cart)\n  end\n  \
           return wrk.format(\"POST\", \"/api/holds\", headers, single)\nend\n{WRK_REPORT}"
    )
}

/// One run: one-product holds per second, carts per second, and the latencies of all answers.
async fn run(
    api: &Api,
    db_pid: Option<u32>,
    hot: i64,
    side: i64,
    cart_every: u32,
    seconds: u64,
) -> Result<Value> {
    let (singles, carts) = (
        api.metric("hold_batch_size_sum").await?,
        api.metric("cart_batch_size_sum").await?,
    );
    let (single_txns, cart_txns) = (
        api.metric("hold_batch_size_count").await?,
        api.metric("cart_batch_size_count").await?,
    );
    let before = CpuSnapshot::take(api.pid(), db_pid);
    let v = wrk(
        &format!("{}/api/holds", api.url),
        CONNECTIONS,
        seconds,
        &script(hot, side, cart_every),
    )?;
    let [api_s, db_s, _] = CpuSnapshot::take(api.pid(), db_pid).since(&before);
    let took = v["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    // CPU per request answered, whatever its kind.
    let answered = v["ok"].as_f64().unwrap_or(0.0).max(1.0);
    Ok(json!({
        "single_holds_per_s": (api.metric("hold_batch_size_sum").await? - singles) / took,
        "carts_per_s": (api.metric("cart_batch_size_sum").await? - carts) / took,
        "one_product_batches_per_s": (api.metric("hold_batch_size_count").await? - single_txns) / took,
        "cart_batches_per_s": (api.metric("cart_batch_size_count").await? - cart_txns) / took,
        "api_us_per_request": api_s * 1e6 / answered,
        "db_us_per_request": db_s * 1e6 / answered,
        "p50_ms": ms(&v, "p50_us"),
        "p99_ms": ms(&v, "p99_us"),
    }))
}

/// `BENCH_ONLY=carts`: the rounds, into `results-carts.json`.
pub(crate) async fn carts_only(
    release: &Path,
    base: &str,
    seconds: u64,
    out_dir: &Path,
) -> Result<()> {
    let rounds: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let db_url = fresh_database(base, "fs_bench_carts").await?;
    let api = Api::start(release, &db_url, true)?;
    let hot = api.create_product(100_000_000).await?;
    let side = api.create_product(100_000_000).await?;
    // Warm-up: connections, prepared statements, the tables' first pages.
    let db_pid = mariadb_pid(base).await;
    run(&api, db_pid, hot, side, 10, 2).await?;
    let (mut alone, mut mixed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Forward and back in turn.
        let order = if round % 2 == 0 { [0, 10] } else { [10, 0] };
        for cart_every in order {
            let r = run(&api, db_pid, hot, side, cart_every, seconds).await?;
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            let label = match cart_every {
                0 => "one-product only",
                _ => "with 10% carts",
            };
            println!(
                "carts: round {round} {label:<17} {:>7.0} one-product holds/s in {:>5.0} \
                 batches/s, {:>5.0} carts/s in {:>5.0} batches/s, p99 {:.1} ms, \
                 CPU per request: API {:.0} µs, MariaDB {:.0} µs",
                f("single_holds_per_s"),
                f("one_product_batches_per_s"),
                f("carts_per_s"),
                f("cart_batches_per_s"),
                f("p99_ms"),
                f("api_us_per_request"),
                f("db_us_per_request"),
            );
            if cart_every == 0 {
                &mut alone
            } else {
                &mut mixed
            }
            .push(r);
        }
    }
    let mean = |runs: &[Value], field: &str| {
        runs.iter().filter_map(|r| r[field].as_f64()).sum::<f64>() / runs.len().max(1) as f64
    };
    let share = mean(&mixed, "single_holds_per_s") / mean(&alone, "single_holds_per_s").max(1.0);
    println!(
        "carts: one-product holds with 10% carts = {:.0}% of one-product only",
        share * 100.0
    );
    let path = out_dir.join("results-carts.json");
    let figures = json!({
        "measured_at": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        "commit": crate::sampling::commit(),
        "machine": machine(),
        "seconds_per_run": seconds,
        "connections": CONNECTIONS,
        "one_product_only": alone,
        "with_ten_percent_carts": mixed,
        "single_holds_share_with_carts": share,
        "api_peak_rss_mib": api.peak_rss_kib() as f64 / 1024.0,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
    println!("wrote {}", path.display());
    Ok(())
}
