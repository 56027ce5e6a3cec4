//! The hold paths: what an `Idempotency-Key`, a per-buyer limit and buyer tokens cost
//! (`results["hold_paths"]`). Unkeyed (anonymous), keyed, distinct-buyer limited and
//! token-authenticated (`BUYER_AUTH=jwt`, a second API on the same database) holds at 256
//! connections, in rounds that each run the paths forward and back, each path's share taken
//! against the unkeyed holds of the same rounds; a path's p50 and p99 are those of all its
//! answers in the run (wrk's latency counts of its passes, pooled), its worst pass's p99 beside
//! them. [`holds_only`] is `BENCH_ONLY=holds`: these rounds alone, with the plain-SQL anchor.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::{
    anchor::plain_sql_holds,
    api::Api,
    database::fresh_database,
    sampling::{CpuSnapshot, Latencies, machine, mariadb_pid},
    wrk::{
        buyer_holds_script, holds_request_script, keyed_holds_script, ms, token_holds_script, wrk,
    },
};

/// `BENCH_ONLY=holds`: unkeyed, keyed and buyer-limited holds at 256 connections, interleaved so
/// that the machine's drift touches each path alike.
pub(crate) async fn holds_only(
    release: &Path,
    base: &str,
    seconds: u64,
    out_dir: &Path,
) -> Result<()> {
    let rounds: usize = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let db_url = fresh_database(base, "fs_bench").await?;
    let api = Api::start(release, &db_url, true)?;
    let jwt_api = Api::start_tokens(release, &db_url)?;
    let product = api.create_product(100_000_000).await?;
    let db_pid = mariadb_pid(base).await;
    let paths = hold_paths(&api, &jwt_api, product, rounds, seconds, db_pid).await?;
    let peak_rss_mib = api.peak_rss_kib() as f64 / 1024.0;
    drop((api, jwt_api));
    // The plain-SQL anchor of the same run: how fast this machine is right now.
    let anchor = plain_sql_holds(&db_url, 64, seconds).await?;
    println!(
        "Plain SQL   one tx per hold  c=64   {:>8.0} holds/s (this run's anchor); API peak RSS {peak_rss_mib:.1} MiB",
        anchor["holds_per_s"].as_f64().unwrap_or(0.0)
    );
    let path = out_dir.join("results-holds.json");
    let only = json!({
        "machine": machine(),
        "seconds_per_run": seconds,
        "hold_paths": paths,
        "plain_sql_anchor": anchor,
        "api_peak_rss_mib": peak_rss_mib,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&only)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The price of an `Idempotency-Key`, of a per-buyer limit and of buyer tokens: unkeyed holds
/// (anonymous buyers, each hold given a `client_secret`), keyed holds (a unique key each),
/// holds by distinct buyers on a product with a limit of 5, and holds by signed-in buyers
/// through `jwt_api` (`BUYER_AUTH=jwt`, the same database; a token per buyer, 256 buyers in
/// turn), all at 256 connections, forward and back in each of `rounds` rounds. Each path's share
/// is taken against the unkeyed holds of the same rounds, so all ran on the same tables (their
/// size changes a hold's cost) and through the same spells of the machine's speed.
///
/// The three share one machine with their load generator, so two things make the comparison
/// fair to each path:
/// - every path's wrk script builds each request in its own Lua `request()` (the unkeyed one
///   too, sending the same request every time): wrk's per-request cost is then the same on each
///   path, apart from making the key or buyer id itself;
/// - the CPU time of the API, of MariaDB and of wrk is read around each run and divided by the
///   holds granted (`api_us`, `db_us`, `wrk_us` per hold): the service's own price of a key or a
///   limit (`service_us` = API + MariaDB), whatever the generator costs.
pub(crate) async fn hold_paths(
    api: &Api,
    jwt_api: &Api,
    product: i64,
    rounds: usize,
    seconds: u64,
    db_pid: Option<u32>,
) -> Result<Value> {
    let limited = api.create_limited_product(100_000_000, 5).await?;
    let url = format!("{}/api/holds", api.url);
    let jwt_url = format!("{}/api/holds", jwt_api.url);
    let mut runs: Vec<Vec<Value>> = Vec::new();
    // Each round runs the paths forward and back (unkeyed, keyed, limited, limited, keyed,
    // unkeyed), each for half the round's time per pass: a drift of the machine's speed through
    // the round, and the tables' growth, then weigh on every path alike. (Run once each in a
    // fixed order, the later paths always got the later part of the drift and the larger
    // tables.)
    let pass = (seconds / 2).max(1);
    // Each path's answers over the whole run: its p50 and p99 are theirs.
    let mut pooled: [Latencies; 4] = Default::default();
    for round in 1..=rounds.max(1) {
        let mut paths: [PathRun; 4] = Default::default();
        for path in [0, 1, 2, 3, 3, 2, 1, 0] {
            // Made anew for each run: keys and buyer ids are new in every run, never replays.
            let (script, api, url) = match path {
                0 => (holds_request_script(product), api, &url),
                1 => (keyed_holds_script(product), api, &url),
                2 => (buyer_holds_script(limited), api, &url),
                _ => (token_holds_script(product), jwt_api, &jwt_url),
            };
            let before = CpuSnapshot::take(api.pid(), db_pid);
            let v = wrk(url, 256, pass, &script)?;
            paths[path].add(&v, CpuSnapshot::take(api.pid(), db_pid).since(&before));
        }
        for (all, path) in pooled.iter_mut().zip(&paths) {
            all.merge(&path.latencies);
        }
        let run: Vec<Value> = paths.iter().map(PathRun::figures).collect();
        let per_s = |v: &Value| v["holds_per_s"].as_f64().unwrap_or(0.0);
        let cost = |v: &Value| {
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            format!(
                "API {:.0} + DB {:.0} µs, wrk {:.0}",
                f("api_us"),
                f("db_us"),
                f("wrk_us")
            )
        };
        println!(
            "Hold paths c=256, round {round}: unkeyed {:>6.0}/s ({})  keyed {:>6.0}/s ({:.0}%; {})  \
             buyers, limit 5 {:>6.0}/s ({:.0}%; {})  tokens {:>6.0}/s ({:.0}%; {})",
            per_s(&run[0]),
            cost(&run[0]),
            per_s(&run[1]),
            100.0 * per_s(&run[1]) / per_s(&run[0]).max(1.0),
            cost(&run[1]),
            per_s(&run[2]),
            100.0 * per_s(&run[2]) / per_s(&run[0]).max(1.0),
            cost(&run[2]),
            per_s(&run[3]),
            100.0 * per_s(&run[3]) / per_s(&run[0]).max(1.0),
            cost(&run[3]),
        );
        runs.push(run);
    }
    // Per path: the mean of each figure over the rounds, p50 and p99 of all its answers in the
    // run, and the worst p99 of any one pass (the machine's spells of slowness show there).
    let path = |i: usize| {
        let mean = |field: &str| {
            runs.iter()
                .map(|r| r[i][field].as_f64().unwrap_or(0.0))
                .sum::<f64>()
                / runs.len() as f64
        };
        let worst = |field: &str| {
            runs.iter()
                .map(|r| r[i][field].as_f64().unwrap_or(0.0))
                .fold(0.0, f64::max)
        };
        json!({
            "connections": 256,
            "holds_per_s": mean("holds_per_s"),
            "p50_ms": pooled[i].percentile_ms(50.0),
            "p99_ms": pooled[i].percentile_ms(99.0),
            "p99_ms_worst_pass": worst("p99_ms_worst_pass"),
            "api_us_per_hold": mean("api_us"),
            "db_us_per_hold": mean("db_us"),
            "wrk_us_per_hold": mean("wrk_us"),
            "service_us_per_hold": mean("service_us"),
        })
    };
    let (unkeyed, keyed, buyers, tokens) = (path(0), path(1), path(2), path(3));
    let share = |v: &Value| {
        v["holds_per_s"].as_f64().unwrap_or(0.0)
            / unkeyed["holds_per_s"].as_f64().unwrap_or(0.0).max(1.0)
    };
    // The service's CPU per unkeyed hold as a share of the path's: what the throughput share
    // would be if the service had the machine to itself.
    let cost_share = |v: &Value| {
        unkeyed["service_us_per_hold"].as_f64().unwrap_or(0.0)
            / v["service_us_per_hold"]
                .as_f64()
                .unwrap_or(0.0)
                .max(f64::MIN_POSITIVE)
    };
    let mut limited = buyers.clone();
    limited["per_buyer_limit"] = json!(5);
    limited["buyers"] = json!("distinct");
    limited["refused_in_last_round"] = runs.last().map_or(Value::Null, |r| r[2]["refused"].clone());
    let result = json!({
        "rounds": runs.len(),
        "seconds_per_path_per_round": seconds,
        "passes_per_round": "unkeyed, keyed, limited, limited, keyed, unkeyed; each half the seconds",
        "unkeyed": unkeyed,
        "keyed": keyed,
        "limited": limited,
        "tokens": tokens,
        "keyed_share_of_unkeyed": share(&keyed),
        "tokens_share_of_anonymous": share(&tokens),
        "tokens_service_cost_share": cost_share(&tokens),
        "limited_share_of_unlimited": share(&buyers),
        "keyed_service_cost_share": cost_share(&keyed),
        "limited_service_cost_share": cost_share(&buyers),
        "runs": runs,
    });
    println!(
        "Hold paths c=256, {} rounds: unkeyed p99 {:.1} ms (worst pass {:.1}); keyed {:.0}% of unkeyed \
         (p99 {:.1} ms, worst pass {:.1}; service CPU per hold {:.0} vs {:.0} µs), \
         distinct buyers on a limited product {:.0}% (p99 {:.1} ms; {:.0} µs), \
         signed-in buyers (tokens) {:.0}% (p99 {:.1} ms; {:.0} µs)",
        result["rounds"],
        unkeyed["p99_ms"].as_f64().unwrap_or(0.0),
        unkeyed["p99_ms_worst_pass"].as_f64().unwrap_or(0.0),
        100.0 * share(&keyed),
        keyed["p99_ms"].as_f64().unwrap_or(0.0),
        keyed["p99_ms_worst_pass"].as_f64().unwrap_or(0.0),
        keyed["service_us_per_hold"].as_f64().unwrap_or(0.0),
        unkeyed["service_us_per_hold"].as_f64().unwrap_or(0.0),
        100.0 * share(&buyers),
        buyers["p99_ms"].as_f64().unwrap_or(0.0),
        buyers["service_us_per_hold"].as_f64().unwrap_or(0.0),
        100.0 * share(&tokens),
        tokens["p99_ms"].as_f64().unwrap_or(0.0),
        tokens["service_us_per_hold"].as_f64().unwrap_or(0.0),
    );
    Ok(result)
}

/// One hold path's passes in one round, added up.
#[derive(Default)]
struct PathRun {
    ok: f64,
    duration_s: f64,
    refused: u64,
    /// The worst pass's p99.
    p99_ms: f64,
    /// Each pass's p99, in order.
    p99_ms_passes: Vec<f64>,
    /// Every answer's latency over the passes.
    latencies: Latencies,
    /// CPU seconds of the API, MariaDB and wrk over the passes.
    cpu: [f64; 3],
}

impl PathRun {
    fn add(&mut self, v: &Value, cpu: [f64; 3]) {
        self.ok += v["ok"].as_f64().unwrap_or(0.0);
        self.duration_s += v["duration_us"].as_f64().unwrap_or(0.0) / 1e6;
        self.refused += v["refused"].as_u64().unwrap_or(0);
        self.p99_ms = self.p99_ms.max(ms(v, "p99_us"));
        self.p99_ms_passes.push(ms(v, "p99_us"));
        self.latencies.add(v);
        for (total, pass) in self.cpu.iter_mut().zip(cpu) {
            *total += pass;
        }
    }

    /// Holds per second over all passes, p50 and p99 of all their answers, the worse pass's p99,
    /// CPU µs per hold.
    fn figures(&self) -> Value {
        let per_hold = |i: usize| 1e6 * self.cpu[i] / self.ok.max(1.0);
        json!({
            "holds_per_s": self.ok / self.duration_s.max(f64::MIN_POSITIVE),
            "p50_ms": self.latencies.percentile_ms(50.0),
            "p99_ms": self.latencies.percentile_ms(99.0),
            "p99_ms_worst_pass": self.p99_ms,
            "p99_ms_passes": self.p99_ms_passes,
            "refused": self.refused,
            "api_us": per_hold(0),
            "db_us": per_hold(1),
            "wrk_us": per_hold(2),
            "service_us": per_hold(0) + per_hold(1),
        })
    }
}
