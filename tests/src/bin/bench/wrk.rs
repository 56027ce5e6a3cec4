//! The load generator: `wrk` runs with a Lua script each, and their reports. Every script ends
//! with [`WRK_REPORT`], which counts answers by status and prints one `WRK_JSON` line (counts,
//! percentiles, every latency with its count, for pooling); the request scripts before it build
//! the hold paths' requests (unkeyed, keyed, distinct buyers, tokens), hold reads and the
//! unknown-id spray.

use std::{io::Write, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::api::JWT_SECRET;

pub(crate) const WRK_REPORT: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread); thread:set("tid", #threads) end
function init(args) ok = 0; refused = 0; unavailable = 0; server_error = 0; other = 0 end
function response(status, headers, body)
  if status == 200 or status == 201 then ok = ok + 1
  elseif status == 409 then refused = refused + 1
  elseif status == 503 then unavailable = unavailable + 1
  elseif status >= 500 then server_error = server_error + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local o, r, u, s, x = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); r = r + t:get("refused"); u = u + t:get("unavailable")
    s = s + t:get("server_error"); x = x + t:get("other")
  end
  local e = summary.errors
  -- Every latency seen (µs) with its count, so that passes can be pooled exactly.
  local hist = {}
  for i = 1, #latency do
    local v, c = latency(i)
    hist[i] = string.format("[%d,%d]", v, c)
  end
  io.write(string.format('WRK_JSON {"requests":%d,"duration_us":%d,"ok":%d,"refused":%d,"unavailable":%d,"server_error":%d,"other":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"latency_us":[%s]}\n',
    summary.requests, summary.duration, o, r, u, s, x, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(hist, ",")))
end
"#;

/// Runs wrk with a script and returns its JSON report. Fails on any answer other than 2xx or
/// 409 (the Galera section, which expects 503s, counts them with [`wrk_with`] instead).
pub(crate) fn wrk(url: &str, connections: usize, seconds: u64, script: &str) -> Result<Value> {
    let v = wrk_with(url, connections, 2, seconds, script)?;
    let unexpected = ["unavailable", "server_error", "other"]
        .iter()
        .map(|f| v[f].as_u64().unwrap_or(0))
        .sum::<u64>();
    if unexpected > 0 {
        let mut shown = v.clone();
        if let Some(fields) = shown.as_object_mut() {
            fields.remove("latency_us");
        }
        bail!("unexpected statuses during the run: {shown}");
    }
    Ok(v)
}

/// Runs wrk (`threads` threads) with a script and returns its JSON report, whatever the statuses.
pub(crate) fn wrk_with(
    url: &str,
    connections: usize,
    threads: usize,
    seconds: u64,
    script: &str,
) -> Result<Value> {
    // One file per run: the Galera section runs three wrk at once.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("flash-sale-bench-{}-{run}.lua", std::process::id()));
    std::fs::File::create(&path)?.write_all(script.as_bytes())?;
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .with_context(|| format!("no report from wrk:\n{text}"))?;
    let v: Value = serde_json::from_str(line)?;
    let _ = std::fs::remove_file(&path);
    Ok(v)
}

pub(crate) fn rate(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or(0.0) / (v["duration_us"].as_f64().unwrap_or(1.0) / 1e6)
}

pub(crate) fn ms(v: &Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or(0.0) / 1000.0
}

pub(crate) fn holds_script(product: i64) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{{\"product_id\":{product},\"qty\":1}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n{WRK_REPORT}"
    )
}

/// The requests of [`holds_script`], each built by a Lua `request()` as the keyed and buyer
/// scripts build theirs, so that wrk spends alike per request on every path compared.
pub(crate) fn holds_request_script(product: i64) -> String {
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{{\"product_id\":{product},\"qty\":1}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         function request()\n  return wrk.format()\nend\n{WRK_REPORT}"
    )
}

/// Holds like [`holds_script`], each with an `Idempotency-Key` of its own (unique across runs),
/// as clients that retry safely send them.
pub(crate) fn keyed_holds_script(product: i64) -> String {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{{\"product_id\":{product},\"qty\":1}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         local n = 0\n\
         function request()\n  n = n + 1\n  \
           wrk.headers[\"Idempotency-Key\"] = \"bench-{run}-\" .. tid .. \"-\" .. n\n  \
           return wrk.format()\nend\n{WRK_REPORT}"
    )
}

/// Holds on a limited product, each by a buyer of its own, as a crowd of distinct users sends
/// them.
pub(crate) fn buyer_holds_script(product: i64) -> String {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "local n = 0\n\
         function request()\n  n = n + 1\n  \
           return wrk.format(\"POST\", nil, {{[\"Content-Type\"] = \"application/json\"}}, \
             '{{\"product_id\":{product},\"qty\":1,\"buyer_id\":\"b-{run}-' .. tid .. '-' .. n .. '\"}}')\nend\n{WRK_REPORT}"
    )
}

/// Buyers of the token path: a token each, sent in turn.
const TOKEN_BUYERS: usize = 256;

/// Holds by [`TOKEN_BUYERS`] signed-in buyers (`BUYER_AUTH=jwt`), each request with the next
/// buyer's token, as a crowd of logged-in users sends them.
pub(crate) fn token_holds_script(product: i64) -> String {
    let tokens: Vec<String> = (0..TOKEN_BUYERS)
        .map(|i| {
            let claims = flash_sale_tests::tokens::claims(&format!("bench-buyer-{i}"));
            format!(
                "\"{}\"",
                flash_sale_tests::tokens::sign_hs256(JWT_SECRET.as_bytes(), &claims)
            )
        })
        .collect();
    format!(
        "wrk.method = \"POST\"\nwrk.body = '{{\"product_id\":{product},\"qty\":1}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         local tokens = {{{}}}\nlocal n = 0\n\
         function request()\n  n = n + 1\n  \
           wrk.headers[\"Authorization\"] = \"Bearer \" .. tokens[(n + tid * 17) % #tokens + 1]\n  \
           return wrk.format()\nend\n{WRK_REPORT}",
        tokens.join(",")
    )
}

/// Reads of one hold by its buyer, with the hold's `Client-Secret`.
pub(crate) fn hold_reads_script(secret: &str) -> String {
    format!("wrk.headers[\"Client-Secret\"] = \"{secret}\"\n{WRK_REPORT}")
}

/// Holds and reads for product ids that do not exist, each id new: the abuse the per-product
/// queues must not grow with.
pub(crate) fn spray_script() -> String {
    format!(
        "local n = 0\n\
         function request()\n  n = n + 1\n  local id = 1000000000 + tid * 100000000 + n\n  \
           if n % 2 == 0 then\n    \
             return wrk.format(\"GET\", \"/api/products/\" .. id)\n  end\n  \
           return wrk.format(\"POST\", \"/api/holds\", {{[\"Content-Type\"] = \"application/json\"}}, \
             '{{\"product_id\":' .. id .. ',\"qty\":1}}')\nend\n{WRK_REPORT}"
    )
}

pub(crate) fn wrk_holds(
    url: &str,
    product: i64,
    connections: usize,
    seconds: u64,
) -> Result<Value> {
    let v = wrk(
        &format!("{url}/api/holds"),
        connections,
        seconds,
        &holds_script(product),
    )?;
    Ok(json!({
        "holds_per_s": rate(&v, "ok"),
        "p50_ms": ms(&v, "p50_us"),
        "p99_ms": ms(&v, "p99_us"),
        "max_ms": ms(&v, "max_us"),
        "socket_errors": v["socket_errors"],
    }))
}

pub(crate) fn wrk_reads(
    url: &str,
    product: i64,
    connections: usize,
    seconds: u64,
) -> Result<Value> {
    let v = wrk(
        &format!("{url}/api/products/{product}"),
        connections,
        seconds,
        WRK_REPORT,
    )?;
    Ok(json!({
        "connections": connections,
        "per_s": rate(&v, "ok"),
        "p50_ms": ms(&v, "p50_us"),
        "p99_ms": ms(&v, "p99_us"),
    }))
}
