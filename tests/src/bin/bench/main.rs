//! `flash-sale-bench`: the hot-product benchmark, in one run, against a real MariaDB: one of
//! the run's own (`ScratchMariaDb`, with [`SALE_SERVER`]'s settings), or the server that
//! `TEST_MYSQL_URL` names.
//!
//! Run it with `tests/bench.sh` (builds release binaries, makes MariaDB and wrk ready). It
//! prints a table and writes `tests/bench-results/results.json`, `results.md` and `results.svg`.
//! `BENCH_SECONDS` (default 8) is the length of each measured point; `BENCH_BIN_DIR` names
//! binaries built elsewhere. `BENCH_ONLY` runs one section alone, into a file of its own:
//! `holds` (the hold paths, `BENCH_REPEAT` rounds, default 3, with the plain-SQL anchor of the
//! same run) into `results-holds.json`; `galera` into `results-galera.json`; `stream` into
//! `results-stream.json`; `queue` into `results-queue.json`; `carts` into `results-carts.json`.
//! These leave `results.json` and the
//! chart as they were.
//! `BENCH_ONLY=report` only renders `results.md` again from `results.json`.
//!
//! Where each part lives:
//! - [`single`]: the single-server sections in their order: HTTP holds with coalescing on and
//!   off, reads, the expiry backlog, the stock boundary, peak RSS;
//! - [`paths`]: the hold paths (unkeyed, keyed, distinct buyers on a limited product, tokens),
//!   their shares of unkeyed holds and CPU per hold; `BENCH_ONLY=holds`;
//! - [`anchor`]: the plain-SQL anchor, one transaction per hold straight against the database;
//! - [`galera`]: three Galera nodes on loopback, one API then three, and their books;
//! - [`stream`]: live stock streams, up to 5,000 listeners on one API; `BENCH_ONLY=stream`;
//! - [`queue`]: a queued sale's opening storm: 100,000 joins, ticket reads, sold-out refusals,
//!   admission to order; `BENCH_ONLY=queue`;
//! - [`carts`]: one-product holds on the hot product alone and with 10% two-line carts;
//!   `BENCH_ONLY=carts`;
//! - [`wrk`]: the load generator, its Lua request scripts and its JSON report;
//! - [`api`]: the API process under test;
//! - [`sampling`]: CPU time and RSS from `/proc`, pooled latencies, the machine's description;
//! - [`database`]: fresh databases for the sections;
//! - [`report`]: the summary in `results.json`, `results.md` and the chart.

mod anchor;
mod api;
mod carts;
mod database;
mod galera;
mod paths;
mod queue;
mod report;
mod sampling;
mod single;
mod stream;
mod wrk;

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use flash_sale_tests::servers::ScratchMariaDb;
use serde_json::json;

use carts::carts_only;
use galera::galera;
use paths::holds_only;
use queue::queue_only;
use report::{chart, markdown, summarize};
use sampling::{commit, machine};
use single::single_server;
use stream::{stock_streams, stream_only};

/// The MariaDB settings of the run's own server, beyond the test servers' (see deploy/README.md,
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
        "" | "holds" | "queue" | "carts" => false,
        "galera" => true,
        "stream" => return stream_only(&release, seconds, &out_dir).await,
        "report" => {
            // Renders `results.md` again from `results.json` (after a change to the report).
            let results =
                serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json"))?)?;
            std::fs::write(out_dir.join("results.md"), markdown(&results))?;
            return Ok(());
        }
        other => bail!(
            "BENCH_ONLY={other}: the sections that run alone are `carts`, `galera`, `holds`, `queue` and `stream` \
             (`report` renders results.md from results.json)"
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
    if only == "queue" {
        return queue_only(&release, &base, seconds, &out_dir).await;
    }
    if only == "carts" {
        return carts_only(&release, &base, seconds, &out_dir).await;
    }
    let mut results = json!({
        "measured_at": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        "commit": commit(),
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
    std::fs::write(out_dir.join("results.md"), markdown(&results))?;
    println!("wrote {}", out_dir.join("results.json").display());
    match galera_failed {
        Some(e) => Err(e.context("the Galera section failed (the other figures were written)")),
        None => Ok(()),
    }
}
