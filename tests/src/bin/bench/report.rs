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
