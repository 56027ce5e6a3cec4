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
    sampling::machine,
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
async fn run(api: &Api, hot: i64, side: i64, cart_every: u32, seconds: u64) -> Result<Value> {
    let (singles, carts) = (
        api.metric("hold_batch_size_sum").await?,
        api.metric("cart_batch_size_sum").await?,
    );
    let v = wrk(
        &format!("{}/api/holds", api.url),
        CONNECTIONS,
        seconds,
        &script(hot, side, cart_every),
    )?;
    let took = v["duration_us"].as_f64().unwrap_or(1.0) / 1e6;
    Ok(json!({
        "single_holds_per_s": (api.metric("hold_batch_size_sum").await? - singles) / took,
        "carts_per_s": (api.metric("cart_batch_size_sum").await? - carts) / took,
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
    run(&api, hot, side, 10, 2).await?;
    let (mut alone, mut mixed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Forward and back in turn.
        let order = if round % 2 == 0 { [0, 10] } else { [10, 0] };
        for cart_every in order {
            let r = run(&api, hot, side, cart_every, seconds).await?;
            println!(
                "carts: round {round} {:<22} {:>8.0} one-product holds/s {:>6.0} carts/s  p99 {:.1} ms",
                if cart_every == 0 {
                    "one-product only"
                } else {
                    "with 10% carts"
                },
                r["single_holds_per_s"].as_f64().unwrap_or(0.0),
                r["carts_per_s"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
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
