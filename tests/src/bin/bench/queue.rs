//! The opening storm of a queued sale (`results["queue"]`), on one API at 256 connections, each
//! figure beside its reference from the same run:
//! - joins: 100,000 distinct buyers join one queue, in passes, against plain holds on an open
//!   product before and after them;
//! - ticket reads by the waiting crowd (1,000 tickets far back in that line, each read with its
//!   own `Client-Secret`) against product reads, both scripts doing the same Lua work;
//! - sold-out refusals (holds on a product with no stock, while the queue of 100,000 waits)
//!   against product reads, both scripts building each request in `request()`;
//! - admission to order: buyers admitted by a worker, each then holding with its ticket and
//!   ordering, one at a time while the waiting crowd reads its tickets at 256 connections;
//!   their path's p99 against the plain holds' p99.
//!
//! [`queue_only`] is `BENCH_ONLY=queue`: this section alone, into `results-queue.json`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    api::Api,
    database::fresh_database,
    sampling::{Latencies, machine},
    wrk::{WRK_REPORT, holds_request_script, wrk},
};

/// Buyers that join the queue in the joins run.
const JOINERS: u64 = 100_000;
/// Tickets whose reads are measured, and buyers taken from admission to order.
const READ_TICKETS: usize = 1_000;
const ORDERING_BUYERS: usize = 1_000;
const CONNECTIONS: usize = 256;

/// `BENCH_ONLY=queue`: the queue section alone, written to `results-queue.json`.
pub(crate) async fn queue_only(
    release: &Path,
    base: &str,
    seconds: u64,
    out_dir: &Path,
) -> Result<()> {
    let db_url = fresh_database(base, "fs_bench_queue").await?;
    let api = Api::start(release, &db_url, true)?;
    let figures = queue_storm(release, &api, &db_url, seconds).await?;
    let path = out_dir.join("results-queue.json");
    let only = json!({
        "measured_at": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        "commit": crate::sampling::commit(),
        "machine": machine(),
        "seconds_per_point": seconds,
        "queue": figures,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&only)?)?;
    std::fs::write(
        out_dir.join("results-queue.md"),
        format!(
            "# Queue benchmark\n\nWritten by `BENCH_ONLY=queue tests/bench.sh` at {} (commit {}), \
             {} s per point. Compare rows within this run, not across runs.\n{}",
            only["measured_at"].as_str().unwrap_or("?"),
            only["commit"].as_str().unwrap_or("?"),
            seconds,
            crate::report::queue_markdown(&only["queue"])
        ),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The section (see the module's doc) on `api`, whose database is `db_url`.
pub(crate) async fn queue_storm(
    release: &Path,
    api: &Api,
    db_url: &str,
    seconds: u64,
) -> Result<Value> {
    let open = api.create_product(100_000_000).await?;
    let queued = api.create_queue_product(100_000_000).await?;
    let holds_url = format!("{}/api/holds", api.url);

    // Joins, between two passes of plain holds.
    let mut holds = Pass::default();
    holds.add(&wrk(
        &holds_url,
        CONNECTIONS,
        seconds,
        &holds_request_script(open),
    )?);
    let mut joins = Pass::default();
    let join_url = format!("{}/api/products/{queued}/queue", api.url);
    while joins.ok < JOINERS as f64 && joins.passes < 40 {
        joins.add(&wrk(
            &join_url,
            CONNECTIONS,
            seconds,
            &joins_script(joins.passes),
        )?);
    }
    holds.add(&wrk(
        &holds_url,
        CONNECTIONS,
        seconds,
        &holds_request_script(open),
    )?);
    if joins.ok < JOINERS as f64 {
        bail!("only {} joins in 40 passes", joins.ok);
    }
    let joins_figures = joins.figures("joins_per_s");
    let holds_figures = holds.figures("holds_per_s");
    let joins_share = joins.per_s() / holds.per_s().max(1.0);
    println!(
        "Queue joins c=256: {:.0} buyers joined at {:>6.0}/s (p99 {:.1} ms) = {:.0}% of plain holds {:.0}/s (p99 {:.1} ms)",
        joins.ok,
        joins.per_s(),
        joins.latencies.percentile_ms(99.0),
        100.0 * joins_share,
        holds.per_s(),
        holds.latencies.percentile_ms(99.0),
    );

    // Ticket reads by the waiting crowd, far back in the line, against product reads.
    let tickets = join_buyers(api, queued, READ_TICKETS, "reader").await?;
    let entries: Vec<(String, String)> = tickets
        .iter()
        .map(|t| (format!("/api/queue/{}", t.id), t.secret.clone()))
        .collect();
    let product_entries: Vec<(String, String)> = tickets
        .iter()
        .map(|t| (format!("/api/products/{queued}"), t.secret.clone()))
        .collect();
    let (ticket_reads, product_reads) = side_by_side(
        &api.url,
        seconds,
        &reads_script(&entries),
        &reads_script(&product_entries),
    )?;
    let reads_share = ticket_reads.per_s() / product_reads.per_s().max(1.0);
    println!(
        "Ticket reads c=256: {:>6.0}/s (p99 {:.1} ms) = {:.0}% of product reads {:.0}/s",
        ticket_reads.per_s(),
        ticket_reads.latencies.percentile_ms(99.0),
        100.0 * reads_share,
        product_reads.per_s(),
    );

    // Sold-out refusals, with the queue of 100,000 waiting, against product reads.
    let sold_out = api.create_product(0).await?;
    let (refusals, refusal_reads) = side_by_side_urls(
        (&holds_url, &holds_request_script(sold_out)),
        (
            &format!("{}/api/products/{sold_out}", api.url),
            &request_script_get(),
        ),
        seconds,
    )?;
    let refusal_share = refusals.per_s_of("refused") / refusal_reads.per_s().max(1.0);
    println!(
        "Sold-out refusals c=256: {:>6.0}/s (p99 {:.1} ms) = {:.0}% of product reads {:.0}/s",
        refusals.per_s_of("refused"),
        refusals.latencies.percentile_ms(99.0),
        100.0 * refusal_share,
        refusal_reads.per_s(),
    );

    // From admission to order, while the crowd reads its tickets.
    let path = admission_to_order(release, api, db_url, seconds, reads_script(&entries)).await?;
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "Admission to order, one buyer at a time: hold + order p99 {:.1} ms alone ({} buyers), {:.1} ms while the crowd reads {:.0} tickets/s ({} buyers); plain holds' p99 {:.1} ms",
        f(&path["alone"]["path_p99_ms"]),
        path["alone"]["buyers"],
        f(&path["with_the_crowd"]["path_p99_ms"]),
        f(&path["crowd_ticket_reads_per_s"]),
        path["with_the_crowd"]["buyers"],
        holds.latencies.percentile_ms(99.0),
    );
    Ok(json!({
        "connections": CONNECTIONS,
        "plain_holds": holds_figures,
        "joins": joins_figures,
        "joins_share_of_plain_holds": joins_share,
        "ticket_reads": ticket_reads.figures("per_s"),
        "product_reads_beside_ticket_reads": product_reads.figures("per_s"),
        "ticket_reads_share_of_product_reads": reads_share,
        "sold_out_refusals": refusals.figures_of("refused", "per_s"),
        "product_reads_beside_refusals": refusal_reads.figures("per_s"),
        "sold_out_refusals_share_of_product_reads": refusal_share,
        "admission_to_order": path,
        "admission_to_order_p99_share_of_hold_p99": path["alone"]["path_p99_ms"].as_f64().unwrap_or(0.0)
            / holds.latencies.percentile_ms(99.0).max(f64::MIN_POSITIVE),
    }))
}

/// Passes of one kind of request, added up.
#[derive(Default)]
struct Pass {
    passes: usize,
    ok: f64,
    refused: f64,
    duration_s: f64,
    latencies: Latencies,
}

impl Pass {
    fn add(&mut self, v: &Value) {
        self.passes += 1;
        self.ok += v["ok"].as_f64().unwrap_or(0.0);
        self.refused += v["refused"].as_f64().unwrap_or(0.0);
        self.duration_s += v["duration_us"].as_f64().unwrap_or(0.0) / 1e6;
        self.latencies.add(v);
    }

    fn per_s(&self) -> f64 {
        self.per_s_of("ok")
    }

    fn per_s_of(&self, what: &str) -> f64 {
        let n = if what == "refused" {
            self.refused
        } else {
            self.ok
        };
        n / self.duration_s.max(f64::MIN_POSITIVE)
    }

    fn figures(&self, rate_name: &str) -> Value {
        self.figures_of("ok", rate_name)
    }

    fn figures_of(&self, what: &str, rate_name: &str) -> Value {
        json!({
            rate_name: self.per_s_of(what),
            "answers": if what == "refused" { self.refused } else { self.ok },
            "passes": self.passes,
            "p50_ms": self.latencies.percentile_ms(50.0),
            "p99_ms": self.latencies.percentile_ms(99.0),
        })
    }
}

/// Two scripts on one server, forward and back (a, b, b, a; each half the seconds), so that a
/// drift of the machine's speed weighs on both alike.
fn side_by_side(url: &str, seconds: u64, a: &str, b: &str) -> Result<(Pass, Pass)> {
    side_by_side_urls((url, a), (url, b), seconds)
}

fn side_by_side_urls(a: (&str, &str), b: (&str, &str), seconds: u64) -> Result<(Pass, Pass)> {
    let pass = (seconds / 2).max(1);
    let (mut first, mut second) = (Pass::default(), Pass::default());
    for which in [0, 1, 1, 0] {
        if which == 0 {
            first.add(&wrk(a.0, CONNECTIONS, pass, a.1)?);
        } else {
            second.add(&wrk(b.0, CONNECTIONS, pass, b.1)?);
        }
    }
    Ok((first, second))
}

/// Joins by distinct buyers, each request a new one (unique across passes and runs).
fn joins_script(pass: usize) -> String {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "local n = 0\n\
         function request()\n  n = n + 1\n  \
           return wrk.format(\"POST\", nil, {{[\"Content-Type\"] = \"application/json\"}}, \
             '{{\"buyer_id\":\"q-{run}-{pass}-' .. tid .. '-' .. n .. '\"}}')\nend\n{WRK_REPORT}"
    )
}

/// GETs of `entries` (path, `Client-Secret`) in turn, one per request.
fn reads_script(entries: &[(String, String)]) -> String {
    let table: Vec<String> = entries
        .iter()
        .map(|(path, secret)| format!("{{\"{path}\",\"{secret}\"}}"))
        .collect();
    format!(
        "local entries = {{{}}}\nlocal n = 0\n\
         function request()\n  n = n + 1\n  local e = entries[(n + tid * 31) % #entries + 1]\n  \
           return wrk.format(\"GET\", e[1], {{[\"Client-Secret\"] = e[2]}})\nend\n{WRK_REPORT}",
        table.join(",")
    )
}

/// A GET of the URL, built in `request()` as [`holds_request_script`] builds its POST.
fn request_script_get() -> String {
    format!("function request()\n  return wrk.format(\"GET\")\nend\n{WRK_REPORT}")
}

/// A ticket and the secret that reaches it.
struct Ticket {
    id: i64,
    secret: String,
}

/// `n` buyers named `{prefix}-{i}` join the product's queue, 256 at a time.
async fn join_buyers(api: &Api, product: i64, n: usize, prefix: &str) -> Result<Vec<Ticket>> {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (http, url, slots) = (api.http.clone(), api.url.clone(), slots.clone());
            let buyer = format!("{prefix}-{i}");
            tokio::spawn(async move {
                let _slot = slots.acquire().await?;
                let r: Value = http
                    .post(format!("{url}/api/products/{product}/queue"))
                    .json(&json!({ "buyer_id": buyer }))
                    .send()
                    .await?
                    .json()
                    .await?;
                anyhow::Ok(Ticket {
                    id: r["ticket_id"].as_i64().context("ticket id")?,
                    secret: r["client_secret"]
                        .as_str()
                        .context("ticket secret")?
                        .to_owned(),
                })
            })
        })
        .collect();
    let mut tickets = Vec::with_capacity(n);
    for t in tasks {
        tickets.push(t.await??);
    }
    Ok(tickets)
}

/// A worker on the database (admissions every second), stopped when dropped.
struct Worker(Child);

impl Worker {
    fn start(release: &Path, db_url: &str) -> Result<Self> {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(release.join("flash-sale-worker"))
            .env("DATABASE_URL", db_url)
            .env("WORKER_ADDR", addr.to_string())
            .env(
                "LOG_DIR",
                std::env::temp_dir().join("flash-sale-bench-logs"),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("start target/release/flash-sale-worker")?;
        Ok(Self(child))
    }
}

impl Drop for Worker {
    /// SIGTERM, as an operator stops it: it finishes the pass in flight and exits.
    fn drop(&mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Buyers on their way from admission to order, one at a time, while the waiting crowd reads
/// its tickets (`crowd`: the ticket-reads script at 256 connections): each admitted buyer
/// holds with its ticket and orders it. The path's latency is the hold's plus the order's.
async fn admission_to_order(
    release: &Path,
    api: &Api,
    db_url: &str,
    seconds: u64,
    crowd: String,
) -> Result<Value> {
    let product = api.create_queue_product(ORDERING_BUYERS as i64).await?;
    let tickets = join_buyers(api, product, ORDERING_BUYERS, "orderer").await?;
    let worker = Worker::start(release, db_url)?;
    // Admitted when the last in line is (admission is in joining order here).
    let last = tickets.last().context("no tickets")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r: Value = api
            .http
            .get(format!("{}/api/queue/{}", api.url, last.id))
            .header("Client-Secret", &last.secret)
            .send()
            .await?
            .json()
            .await?;
        if r["state"] == "admitted" {
            break;
        }
        if Instant::now() > deadline {
            bail!("the queue was not admitted within 60 s: {r}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(worker);
    let (alone, rest) = tickets.split_at(tickets.len() / 4);
    let quiet = paths(
        api,
        product,
        alone,
        Instant::now() + Duration::from_secs(seconds),
    )
    .await?;
    let url = api.url.clone();
    let load = std::thread::spawn(move || wrk(&url, CONNECTIONS, seconds.max(4), &crowd));
    // Into the crowd's run, then buyers one after another until a second before its end.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let until =
        Instant::now() + Duration::from_secs(seconds.max(4) - 1) - Duration::from_millis(500);
    let crowded = paths(api, product, rest, until).await?;
    let crowd = load
        .join()
        .map_err(|_| anyhow::anyhow!("the crowd's wrk thread"))??;
    Ok(json!({
        "one_at_a_time": true,
        "alone": quiet,
        "crowd_ticket_reads_per_s": crate::wrk::rate(&crowd, "ok"),
        "with_the_crowd": crowded,
    }))
}

/// Paths not counted at the start of each phase: the first few after the admissions (and the
/// worker's stop) were seen at 90 to 270 ms, two or three in the first ten, in runs whose
/// later paths all took under 10 ms. Their slowest is kept beside the figures.
const WARM_UP_PATHS: usize = 10;

/// Admitted buyers' paths, one after another, until `until`: hold with the ticket, then order.
async fn paths(api: &Api, product: i64, tickets: &[Ticket], until: Instant) -> Result<Value> {
    let mut times = Vec::new();
    for t in tickets {
        if Instant::now() > until {
            break;
        }
        let started = Instant::now();
        let hold = api
            .http
            .post(format!("{}/api/holds", api.url))
            .header("Client-Secret", &t.secret)
            .json(&json!({"product_id": product, "qty": 1, "ticket_id": t.id}))
            .send()
            .await?;
        if hold.status() != 201 {
            bail!("admitted hold answered {}", hold.status());
        }
        let hold: Value = hold.json().await?;
        let held = started.elapsed();
        let order = api
            .http
            .post(format!("{}/api/orders", api.url))
            .header(
                "Client-Secret",
                hold["client_secret"].as_str().context("hold secret")?,
            )
            .json(&json!({"hold_id": hold["hold_id"]}))
            .send()
            .await?;
        if order.status() != 201 {
            bail!("order answered {}", order.status());
        }
        times.push((held, started.elapsed() - held, started.elapsed()));
    }
    if times.len() <= WARM_UP_PATHS {
        bail!("too few buyers went from admission to order");
    }
    let warm_up: Vec<f64> = times
        .drain(..WARM_UP_PATHS)
        .map(|t| t.2.as_secs_f64() * 1e3)
        .collect();
    let p = |f: fn(&(Duration, Duration, Duration)) -> Duration, q: f64| {
        let mut v: Vec<f64> = times.iter().map(|t| f(t).as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1]
    };
    // The slowest paths and where in the run they came (their index, 0 first).
    let mut slowest: Vec<(usize, f64)> = times
        .iter()
        .enumerate()
        .map(|(i, t)| (i, t.2.as_secs_f64() * 1e3))
        .collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(3);
    Ok(json!({
        "buyers": times.len(),
        "warm_up_paths": WARM_UP_PATHS,
        "warm_up_slowest_ms": warm_up.iter().copied().fold(0.0, f64::max),
        "slowest_paths_ms": slowest,
        "path_p50_ms": p(|t| t.2, 0.50),
        "path_p99_ms": p(|t| t.2, 0.99),
        "hold_p99_ms": p(|t| t.0, 0.99),
        "order_p99_ms": p(|t| t.1, 0.99),
    }))
}
