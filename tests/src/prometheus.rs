//! Debian's `prometheus`, of a test's own (tests/ensure-prometheus.sh installs it): its own
//! port, data directory and configuration. It is found only through the child process started
//! here; `Drop` kills it and removes its directory, also when the test panics.

use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    servers::{PortClaims, claim_ports},
    wait::eventually,
};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus that scrapes its targets every second and evaluates its rules every second, or
/// at the interval their group names (`alerts.yml`: 15 s).
pub struct ScratchPrometheus {
    // Field order: the process is killed before its directory is removed.
    child: Child,
    url: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _ports: PortClaims,
}

impl ScratchPrometheus {
    /// Starts one scraping each `(job, "host:port")` and evaluating `rule_files`, and waits
    /// until it is ready (a rule file Prometheus refuses stops it here).
    pub async fn start(jobs: &[(&str, &str)], rule_files: &[&Path]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flash-sale-prometheus-")
            .tempdir()
            .expect("temp dir");
        let (ports, claims) = claim_ports(1);
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config += "rule_files:\n";
        for f in rule_files {
            let path = f
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            config += &format!("  - {:?}\n", path.display().to_string());
        }
        config += "scrape_configs:\n";
        for (job, target) in jobs {
            config += &format!(
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [{target:?}]\n"
            );
        }
        let config_file = dir.path().join("prometheus.yml");
        fs::write(&config_file, config).expect("write prometheus.yml");
        let log = fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", ports[0]))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {PROMETHEUS} (tests/ensure-prometheus.sh): {e}"));
        let prometheus = Self {
            child,
            url: format!("http://127.0.0.1:{}", ports[0]),
            http: reqwest::Client::new(),
            dir,
            _ports: claims,
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually(
            std::fmt::from_fn(|f| write!(f, "Prometheus ready; its log:\n{}", prometheus.log())),
            Duration::from_secs(30),
            || async {
                let r = prometheus.http.get(&ready).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
        prometheus
    }

    /// `GET /api/v1/{path}` with `params`: its `data`, after checking `status` is `success`.
    pub async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let r = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(params)
            .send()
            .await
            .unwrap_or_else(|e| panic!("Prometheus {path}: {e}"));
        let body: Value = r.json().await.expect("Prometheus answers JSON");
        assert_eq!(body["status"], "success", "{path} {params:?}: {body}");
        body["data"].clone()
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", promql)]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts now pending or firing.
    pub async fn alerts(&self) -> Vec<Value> {
        let data = self.api("alerts", &[]).await;
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Every loaded rule as `(name, query)`, as Prometheus parsed it.
    pub async fn rules(&self) -> Vec<(String, String)> {
        let data = self.api("rules", &[]).await;
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (text("name"), text("query"))
            })
            .collect()
    }

    /// Prometheus's own log, for a failure's message.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for ScratchPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
