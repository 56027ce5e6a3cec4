//! What the full run writes besides its sections' figures: the summary of `results.json`
//! (the headline figures of every section in one object) and the `results.svg` chart of
//! holds/s by connections.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

use crate::single::CONNECTIONS;

pub(crate) fn summarize(results: &mut Value) {
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
pub(crate) fn chart(results: &Value, path: &Path) -> Result<()> {
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

/// The run's figures as Markdown (`results.md`): the tables `tests/bench-results/README.md`
/// points to, so that figures live with the run that measured them.
pub(crate) fn markdown(results: &Value) -> String {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let int = |v: &Value| format!("{:.0}", num(v));
    let ms = |v: &Value| format!("{:.1}", num(v));
    let pct = |v: &Value| format!("{:.0}%", num(v) * 100.0);
    let mut md = format!(
        "# Benchmark results\n\nWritten by `tests/bench.sh` at {} (commit {}), {} s per point, \
         on {} CPUs; {}. Compare rows within this run, not across runs.\n\n",
        results["measured_at"].as_str().unwrap_or("?"),
        results["commit"].as_str().unwrap_or("?"),
        results["seconds_per_point"],
        results["machine"]["cpus"],
        results["machine"]["note"].as_str().unwrap_or(""),
    );
    md += "## Holds on one product\n\n| design | connections | holds/s | p50 ms | p99 ms |\n\
           | --- | ---: | ---: | ---: | ---: |\n";
    for (list, label) in [
        ("http_holds", None),
        (
            "plain_sql_holds",
            Some("plain SQL client, one transaction per hold"),
        ),
    ] {
        for row in results[list].as_array().into_iter().flatten() {
            let design = label.unwrap_or(if row["coalescing"] == true {
                "HTTP, coalesced (default)"
            } else {
                "HTTP, one transaction per hold"
            });
            md += &format!(
                "| {design} | {} | {} | {} | {} |\n",
                row["connections"],
                int(&row["holds_per_s"]),
                ms(&row["p50_ms"]),
                ms(&row["p99_ms"]),
            );
        }
    }
    let summary = &results["summary"];
    md += &format!(
        "\nCoalesced over the plain-SQL anchor (best of each): **{:.1}×**.\n\n",
        num(&summary["speedup_over_plain_sql"])
    );
    let paths = &results["hold_paths"];
    md += &format!(
        "## Hold paths, side by side\n\n{} rounds ({}), 256 connections. CPU is µs per hold \
         granted.\n\n| path | holds/s | share | p50 ms | p99 ms | API µs | MariaDB µs | wrk µs |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        paths["rounds"],
        paths["passes_per_round"].as_str().unwrap_or(""),
    );
    for (name, label, share) in [
        ("unkeyed", "anonymous, no key", None),
        (
            "keyed",
            "a unique `Idempotency-Key` each",
            Some("keyed_share_of_unkeyed"),
        ),
        (
            "limited",
            "a distinct buyer each, limit 5",
            Some("limited_share_of_unlimited"),
        ),
        (
            "tokens",
            "a signed-in buyer (JWT) each",
            Some("tokens_share_of_anonymous"),
        ),
    ] {
        let p = &paths[name];
        if p.is_null() {
            continue;
        }
        md += &format!(
            "| {label} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            int(&p["holds_per_s"]),
            share.map_or("100%".to_owned(), |s| pct(&paths[s])),
            ms(&p["p50_ms"]),
            ms(&p["p99_ms"]),
            num(&p["api_us_per_hold"]),
            num(&p["db_us_per_hold"]),
            num(&p["wrk_us_per_hold"]),
        );
    }
    let (product, hold) = (&results["get_product"], &results["get_hold"]);
    md += &format!(
        "\n## Reads, bounds and backlog\n\n\
         - `GET /api/products/{{id}}`: {} reads/s, p50 {} ms, p99 {} ms.\n\
         - `GET /api/holds/{{id}}` with its secret: {} reads/s ({} of product reads), p99 {} ms.\n\
         - Stock boundary: stock {}, {} requests, {} granted, **oversold {}**.\n\
         - Expiry backlog: {} expired holds swept in {:.1} s ({} batches) while holds kept coming \
           ({} holds/s, p99 {} ms).\n\
         - API peak RSS: {:.1} MiB. Unknown-id spray: {} requests, RSS {:.1} → {:.1} MiB.\n",
        int(&product["per_s"]),
        ms(&product["p50_ms"]),
        ms(&product["p99_ms"]),
        int(&hold["per_s"]),
        pct(&hold["share_of_product_reads"]),
        ms(&hold["p99_ms"]),
        results["stock_boundary"]["stock"],
        results["stock_boundary"]["requests"],
        results["stock_boundary"]["granted"],
        results["stock_boundary"]["oversold"],
        results["expiry_backlog"]["expired"],
        num(&results["expiry_backlog"]["sweep_s"]),
        results["expiry_backlog"]["batches"],
        int(&results["expiry_backlog"]["holds_per_s_meanwhile"]),
        ms(&results["expiry_backlog"]["holds_p99_ms"]),
        num(&results["api_peak_rss_mib"]),
        results["unknown_id_spray"]["requests"],
        num(&results["unknown_id_spray"]["rss_before_mib"]),
        num(&results["unknown_id_spray"]["rss_after_mib"]),
    );
    let galera = &results["galera"];
    if galera["error"].is_null() {
        let (one, three) = (&galera["one_api"], &galera["three_apis"]);
        md += &format!(
            "\n## Galera, three nodes\n\n\
             - One API on one node: {} holds/s, p99 {} ms, {} answered 503.\n\
             - Three APIs on three nodes, one hot product: {} holds/s in all, worst API's p99 {} \
               ms, {} answered 503, {} transactions retried after a certification conflict; \
               books equal on every node and conserved: {}.\n",
            int(&one["holds_per_s"]),
            ms(&one["p99_ms"]),
            one["answers"]["503"],
            int(&three["holds_per_s"]),
            ms(&three["p99_ms"]),
            three["answers"]["503"],
            three["contention_retries"],
            summary["galera_books_equal_and_conserved"],
        );
    } else {
        md += &format!("\n## Galera\n\nFailed: {}\n", galera["error"]);
    }
    if !results["queue"].is_null() {
        md += &queue_markdown(&results["queue"]);
    }
    let steps = results["stock_stream"]["steps"].as_array();
    if let Some(steps) = steps {
        md += "\n## Live stock, one API process\n\n| listeners | API RSS MiB | API CPU | hub \
               checks/s | MariaDB SELECTs/s | a change seen by all: p50 / p99 / max ms |\n\
               | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for s in steps {
            md += &format!(
                "| {} | {:.1} | {} | {:.1} | {:.1} | {:.0} / {:.0} / {:.0} |\n",
                s["listeners"],
                num(&s["rss_mib"]),
                pct(&s["api_cpu_share"]),
                num(&s["hub_checks_per_s"]),
                num(&s["server_selects_per_s"]),
                num(&s["change_seen_p50_ms"]),
                num(&s["change_seen_p99_ms"]),
                num(&s["change_seen_max_ms"]),
            );
        }
    }
    md
}

/// The queue section's table (`results["queue"]`, or `results-queue.json`'s `queue`).
pub(crate) fn queue_markdown(q: &Value) -> String {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let row = |what: &str, rate: &Value, p99: &Value, against: &str, share: &Value| {
        format!(
            "| {what} | {:.0} | {:.1} | {against} | **{:.0}%** |\n",
            num(rate),
            num(p99),
            num(share) * 100.0
        )
    };
    let path = &q["admission_to_order"];
    let mut md = String::from(
        "\n## A queued sale's opening, one API, 256 connections\n\n\
         | what | per s | p99 ms | against (same run) | share |\n| --- | ---: | ---: | --- | ---: |\n",
    );
    md += &row(
        &format!("joins, {:.0} distinct buyers", num(&q["joins"]["answers"])),
        &q["joins"]["joins_per_s"],
        &q["joins"]["p99_ms"],
        &format!(
            "plain holds, {:.0}/s",
            num(&q["plain_holds"]["holds_per_s"])
        ),
        &q["joins_share_of_plain_holds"],
    );
    md += &row(
        "ticket reads (1,000 tickets at the back of the line)",
        &q["ticket_reads"]["per_s"],
        &q["ticket_reads"]["p99_ms"],
        &format!(
            "product reads, {:.0}/s",
            num(&q["product_reads_beside_ticket_reads"]["per_s"])
        ),
        &q["ticket_reads_share_of_product_reads"],
    );
    md += &row(
        "sold-out refusals (409)",
        &q["sold_out_refusals"]["per_s"],
        &q["sold_out_refusals"]["p99_ms"],
        &format!(
            "product reads, {:.0}/s",
            num(&q["product_reads_beside_refusals"]["per_s"])
        ),
        &q["sold_out_refusals_share_of_product_reads"],
    );
    let (alone, crowded) = (&path["alone"], &path["with_the_crowd"]);
    md += &format!(
        "\nAdmission to order, admitted buyers one after another (hold with the ticket, then \
         the order): alone, {} buyers, hold + order p99 **{:.1} ms** (p50 {:.1}; hold p99 {:.1}, \
         order p99 {:.1}), {:.0}% of plain holds' p99 at 256 connections ({:.1} ms); while the \
         waiting crowd polls {:.0} tickets/s at 256 connections, {} buyers, p99 {:.1} ms (p50 \
         {:.1}).\n",
        alone["buyers"],
        num(&alone["path_p99_ms"]),
        num(&alone["path_p50_ms"]),
        num(&alone["hold_p99_ms"]),
        num(&alone["order_p99_ms"]),
        num(&q["admission_to_order_p99_share_of_hold_p99"]) * 100.0,
        num(&q["plain_holds"]["p99_ms"]),
        num(&path["crowd_ticket_reads_per_s"]),
        crowded["buyers"],
        num(&crowded["path_p99_ms"]),
        num(&crowded["path_p50_ms"]),
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed results render: every section of a real run has the fields read here.
    #[test]
    fn the_committed_results_render_as_markdown() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results/results.json");
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("results.json"))
                .expect("JSON");
        let md = markdown(&results);
        assert!(md.contains("| HTTP, coalesced (default) | 256 |"), "{md}");
        assert!(md.contains("oversold 0"), "{md}");
        assert!(!md.contains("NaN"), "a field read here is missing: {md}");
    }
}
