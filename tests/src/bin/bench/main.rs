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
mod galera;
mod paths;
mod report;
mod sampling;
mod single;
mod stream;
mod wrk;

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use flash_sale_tests::servers::ScratchMariaDb;
use serde_json::json;

use galera::galera;
use paths::holds_only;
use report::{chart, summarize};
use sampling::machine;
use single::single_server;
use stream::{stock_streams, stream_only};

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
