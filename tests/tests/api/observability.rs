//! What operators run beside the service (deploy/observability/): the alert rules evaluated by a
//! real Prometheus that scrapes the real binaries, and every metric the rules and the Grafana
//! dashboard query checked against what the binaries serve.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use flash_sale_tests::{
    AppOptions, Backend, Client, Process, TestApp, eventually, prometheus::ScratchPrometheus,
    servers::ScratchMariaDb,
};
use serde_json::{Value, json};

fn observability(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability")
        .join(file)
}

const ALERTS: &str = "alerts.yml";
const DASHBOARD: &str = "grafana/dashboards/flash-sale.json";

/// The series Prometheus makes itself, and the ones only a Galera node serves (checked by
/// `galera::an_isolated_node_answers_503_then_serves_again_by_itself`).
const NOT_FROM_THE_BINARIES: [&str; 1] = ["up"];
const GALERA_ONLY: [&str; 1] = ["galera_node_primary"];

/// A Prometheus of the test's own scraping `api` and `worker` under the job names the rules
/// and the dashboard expect.
async fn prometheus_over(api: &Process, worker: &Process) -> ScratchPrometheus {
    let addr = |p: &Process| p.addr.clone().expect("a listening process");
    ScratchPrometheus::start(
        &[
            ("flash-sale-api", &addr(api)),
            ("flash-sale-worker", &addr(worker)),
        ],
        &[&observability(ALERTS)],
    )
    .await
}

/// The alert `name`'s instances now pending or firing, as `(job, state)`.
async fn alert(prometheus: &ScratchPrometheus, name: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = prometheus
        .alerts()
        .await
        .iter()
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (text(&a["labels"]["job"]), text(&a["state"]))
        })
        .collect();
    found.sort();
    found
}

/// The database goes away under a running API and worker: Prometheus, with the shipped rules,
/// fires `FlashSaleDatabaseUnavailable` for both, and clears it once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_database_alert_while_the_database_is_down_then_clears_it() {
    let db = ScratchMariaDb::start(&[]).await;
    let app = TestApp::spawn_on(&db.base_url(), AppOptions::default()).await;
    let worker = app.spawn_worker(&[]);
    let prometheus = prometheus_over(&app.server, &worker).await;
    eventually(
        "both processes scraped, their database up",
        Duration::from_secs(30),
        || async {
            let up = prometheus.query("database_up == 1").await;
            (up.len() == 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        alert(&prometheus, "FlashSaleDatabaseUnavailable").await,
        vec![]
    );

    db.stop().await;
    let stopped = Instant::now();
    let both_firing = vec![
        ("flash-sale-api".to_owned(), "firing".to_owned()),
        ("flash-sale-worker".to_owned(), "firing".to_owned()),
    ];
    eventually(
        std::fmt::from_fn(|f| write!(f, "the alert firing; Prometheus:\n{}", prometheus.log())),
        Duration::from_secs(120),
        || async {
            (alert(&prometheus, "FlashSaleDatabaseUnavailable").await == both_firing).then_some(())
        },
    )
    .await;
    println!(
        "FlashSaleDatabaseUnavailable firing {:?} after the database stopped",
        stopped.elapsed()
    );
    // While the database is away, /metrics still answers: the alert is not a scrape failure.
    assert_eq!(prometheus.query("up == 0").await, Vec::<Value>::new());

    db.start_again().await;
    let back = Instant::now();
    eventually(
        "the alert inactive again",
        Duration::from_secs(90),
        || async {
            alert(&prometheus, "FlashSaleDatabaseUnavailable")
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    println!("inactive {:?} after the database came back", back.elapsed());
    assert_eq!(app.get("/readyz").await.status, 200);
}

/// A sale that touches every metric the rules and the dashboard use: a paid order, a refused
/// hold, an order timed out then paid with its units gone (a refund owed), an expired hold swept
/// by the worker, a queue with an admission. Then every metric name in every rule (as
/// Prometheus parsed them) and every dashboard query is one the two binaries serve, and every
/// dashboard query is one Prometheus accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_is_one_the_binaries_serve() {
    let app = TestApp::spawn_with(Backend::MariaDb, AppOptions::hold_ttl(1)).await;
    let worker = app.spawn_worker(&[("PAYMENT_TIMEOUT_SECONDS", "1".into())]);
    let worker_client = app.client.on(&worker);
    let prometheus = prometheus_over(&app.server, &worker).await;

    let product = app.create_product(2).await;
    let paid = order_of(&app, product).await;
    app.webhook(json!({"idempotency_key": "obs-paid", "order_id": paid, "status": "success"}))
        .await;
    let late = order_of(&app, product).await;
    eventually(
        "the unpaid order timed out",
        Duration::from_secs(30),
        || async {
            let r = app.get(&format!("/api/orders/{late}")).await;
            (r.body["status"] == "cancelled").then_some(())
        },
    )
    .await;
    // Its unit leaves the shop: the late payment then owes a refund.
    let r = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/api/admin/products/{product}"),
            Some(json!({"add_stock": -1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = app
        .webhook(json!({"idempotency_key": "obs-late", "order_id": late, "status": "success"}))
        .await;
    assert_eq!(r.body["order_status"], "cancelled", "{}", r.body);
    assert_eq!(app.hold(product, 5).await.code(), "insufficient_stock");

    let swept = app.create_product(1).await;
    let hold = app.hold(swept, 1).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let queued = app.create_queue_product(1, None).await;
    assert_eq!(app.join(queued, Some("observed-buyer")).await.status, 201);

    let served = eventually(
        "the worker's sweep, admission and gauges on /metrics",
        Duration::from_secs(30),
        || async {
            let worker_text = worker_client.metrics_text().await;
            let ready = [
                "holds_expired_total",
                "queue_admitted_total",
                "orders_refund_owed 1",
                "product_available_stock",
            ]
            .iter()
            .all(|m| worker_text.contains(m));
            ready.then_some(worker_text)
        },
    )
    .await;
    let served: BTreeSet<String> = metric_names_served(&served)
        .union(&metric_names_served(&app.metrics_text().await))
        .cloned()
        .collect();

    let rules = prometheus.rules().await;
    assert!(rules.len() >= 9, "the shipped rules load: {rules:?}");
    let dashboard = dashboard_queries();
    assert!(dashboard.len() >= 20, "{dashboard:?}");
    for query in &dashboard {
        // Accepted as PromQL by Prometheus itself (an error fails in `query`).
        prometheus.query(query).await;
    }
    let mut used = BTreeSet::new();
    for (name, query) in &rules {
        for metric in metric_names_in(query) {
            used.insert((metric, format!("rule {name}")));
        }
    }
    for query in &dashboard {
        for metric in metric_names_in(query) {
            used.insert((metric, format!("dashboard query {query}")));
        }
    }
    for (variable, query) in dashboard_variables() {
        assert!(
            query.starts_with("label_values(") && query.ends_with(')'),
            "variable {variable}: {query}"
        );
        let inner = &query["label_values(".len()..query.len() - 1];
        // label_values(selector, label): the selector is the part before the last comma.
        let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s);
        for metric in metric_names_in(selector) {
            used.insert((metric, format!("dashboard variable {variable}")));
        }
    }
    let unknown: Vec<_> = used
        .iter()
        .filter(|(m, _)| !served.contains(m))
        .filter(|(m, _)| !NOT_FROM_THE_BINARIES.contains(&m.as_str()))
        .filter(|(m, _)| !GALERA_ONLY.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "not served by either binary: {unknown:#?}\nserved: {served:#?}"
    );
    for galera in GALERA_ONLY {
        assert!(
            used.iter().any(|(m, _)| m == galera),
            "{galera} is no longer used: drop it"
        );
    }

    // The refund made, the gauge behind FlashSaleRefundsOwed falls back to 0.
    let r = app
        .admin(
            reqwest::Method::POST,
            &format!("/api/admin/orders/{late}/refunded"),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "no refund owed on /metrics",
        Duration::from_secs(30),
        || async {
            let text = worker_client.metrics_text().await;
            text.lines()
                .any(|l| l == "orders_refund_owed 0")
                .then_some(())
        },
    )
    .await;
}

/// The worker's gauges say where each product's sale stands, as the product read does: its
/// stock on hand and its units free to hold, an expired hold counted free before any sweep;
/// and where each queue stands: waiting, admitted and not yet used, open or not yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_publishes_each_products_stock_and_available_units() {
    for backend in [Backend::MariaDb, Backend::Sqlite] {
        let app = TestApp::spawn_with(backend, AppOptions::hold_ttl(1)).await;
        let product = app.create_product(5).await;
        let other = app.create_product(7).await;
        let queued = app.create_queue_product(1, None).await;
        let opens_later = app
            .create_queue_product(1, Some(Duration::from_secs(3600)))
            .await;
        for (buyer, queue) in [("b1", queued), ("b2", queued), ("b3", opens_later)] {
            assert_eq!(app.join(queue, Some(buyer)).await.status, 201);
        }
        order_of(&app, product).await;
        assert_eq!(app.hold(product, 2).await.status, 201);
        // A sweep once an hour: the worker does not give the expired hold back here.
        let worker = app.spawn_worker(&[("EXPIRY_SCHEDULE", "0 0 * * * *".into())]);
        let worker_client = app.client.on(&worker);
        // Within the hold's 1 s life the gauge says 2 fewer; after it, only the order's unit.
        let want = [
            format!(r#"product_stock{{product_id="{product}"}} 5"#),
            format!(r#"product_available_stock{{product_id="{product}"}} 4"#),
            format!(r#"product_stock{{product_id="{other}"}} 7"#),
            format!(r#"product_available_stock{{product_id="{other}"}} 7"#),
            // One unit: one buyer admitted, one waiting behind; the other queue not open yet.
            format!(r#"queue_waiting{{product_id="{queued}"}} 1"#),
            format!(r#"queue_admitted_unused{{product_id="{queued}"}} 1"#),
            format!(r#"queue_open{{product_id="{queued}"}} 1"#),
            format!(r#"queue_waiting{{product_id="{opens_later}"}} 1"#),
            format!(r#"queue_admitted_unused{{product_id="{opens_later}"}} 0"#),
            format!(r#"queue_open{{product_id="{opens_later}"}} 0"#),
        ];
        eventually(
            format!("{backend:?}: {want:?} on the worker's /metrics"),
            Duration::from_secs(30),
            || async {
                let text = worker_client.metrics_text().await;
                want.iter()
                    .all(|w| text.lines().any(|l| l == w))
                    .then_some(())
            },
        )
        .await;
        assert_eq!(app.available(product).await, 4, "as the product read says");
    }
}

/// A hold of one unit of `product` made into an order: its id.
async fn order_of(app: &Client, product: i64) -> i64 {
    let hold = app.hold(product, 1).await;
    assert_eq!(hold.status, 201, "{}", hold.body);
    let order = app
        .order(hold.body["hold_id"].as_i64().expect("hold_id"))
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    order.body["order_id"].as_i64().expect("order_id")
}

/// The series names in a Prometheus text exposition.
fn metric_names_served(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The dashboard, as Grafana would load it.
fn dashboard() -> Value {
    let path = observability(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    dashboard
}

/// Every `expr` of the dashboard's panels, with Grafana's variables as a query would have them.
fn dashboard_queries() -> Vec<String> {
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    exprs
        .into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("${product_id}", ".*")
                .replace("$product_id", ".*")
        })
        .collect()
}

/// The dashboard's query variables, as `(name, query)`.
fn dashboard_variables() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let list = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let query = match &v["query"] {
                Value::String(q) => q.clone(),
                other => other["query"].as_str().unwrap_or_default().to_owned(),
            };
            (v["name"].as_str().unwrap_or_default().to_owned(), query)
        })
        .collect()
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(e)) = map.get("expr") {
                out.push(e.clone());
            }
            map.values().for_each(|v| collect_exprs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression selects: identifiers that are not functions or
/// aggregations (followed by `(`), keywords, label names (inside `{}` or after `by`, `without`,
/// `on`, `ignoring`, `group_left`, `group_right`), strings, durations or numbers.
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 20] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Past the end of the string, or of the `{}` or `[]` block, that starts at `i` (a block's
    // strings may hold its closing character).
    let skip = |i: usize| match chars[i] {
        open @ ('{' | '[') => {
            let close = if open == '{' { '}' } else { ']' };
            let mut j = i + 1;
            while j < chars.len() && chars[j] != close {
                j = match chars[j] {
                    '"' | '\'' | '`' => skip_string(&chars, j),
                    _ => j + 1,
                };
            }
            j + 1
        }
        _ => skip_string(&chars, i),
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip(i);
        } else if c == '{' {
            // A selector's matchers: label names and values, but `__name__` names a metric.
            let end = skip(i).min(chars.len());
            let block: String = chars[i..end].iter().collect();
            names.extend(name_matchers(&block));
            i = end;
        } else if c == '[' {
            i = skip(i);
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration: 0.99, 1e3, 5m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if LABEL_LISTS.contains(&word.as_str()) {
                if next == Some(&'(') {
                    let open = i + chars[i..].iter().position(|&c| c == '(').unwrap_or(0);
                    i = chars[open..]
                        .iter()
                        .position(|&c| c == ')')
                        .map_or(chars.len(), |p| open + p + 1);
                }
            } else if next != Some(&'(') && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Past the end of the string whose quote is at `i` (a quote after a backslash does not end it).
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    i + 1
}

/// The metric names a selector's matchers (`{...}`) give exactly, with `__name__="..."`.
fn name_matchers(block: &str) -> Vec<String> {
    block
        .trim_matches(['{', '}'])
        .split(',')
        .filter_map(|matcher| {
            let (label, value) = matcher.split_once('=')?;
            let exact = !value.starts_with(['~', '=']) && !label.ends_with('!');
            (label.trim() == "__name__" && exact)
                .then(|| value.trim().trim_matches(['"', '\'', '`']).to_owned())
        })
        .collect()
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = |e: &str| metric_names_in(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{route="/api/holds", method="POST"}[5m]))) > 0.5 and on (job) up == 1"#
        ),
        ["http_request_duration_seconds_bucket", "up"]
    );
    assert_eq!(
        names(
            "max by (product_id) (queue_waiting) > 0 unless on (product_id) (sum by (product_id) (increase(queue_admitted_total[2m])) > 0) offset 1m"
        ),
        ["queue_admitted_total", "queue_waiting"]
    );
    assert_eq!(
        names("time() - max(expiry_last_success_timestamp_seconds) > 3e2"),
        ["expiry_last_success_timestamp_seconds"]
    );
    assert_eq!(
        names(r#"{__name__="orders_refund_owed"} > 0 or db_pool_connections{state="in \"use}\""}"#),
        ["db_pool_connections", "orders_refund_owed"]
    );
    assert_eq!(
        names(r#"sum by (by) (rate(holds_expired_total{by="worker"}[1m]))"#),
        ["holds_expired_total"]
    );
}
