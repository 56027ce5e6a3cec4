//! What the run reads off the machine besides wrk's reports: CPU time and resident size of
//! processes from `/proc` (the API, MariaDB, and wrk as this process's finished children),
//! MariaDB's pid, the machine's description for the results, and latencies pooled over many
//! wrk runs.

use std::process::Command;

use sea_orm::sqlx::{self, Connection};
use serde_json::{Value, json};

/// CPU seconds used so far by the API, by MariaDB (when its pid is known) and by the finished
/// child processes of this benchmark (each wrk run, once it has been waited for).
pub(crate) struct CpuSnapshot([f64; 3]);

impl CpuSnapshot {
    /// `api_pid`: the API's process id.
    pub(crate) fn take(api_pid: u32, db_pid: Option<u32>) -> Self {
        Self([
            proc_cpu_seconds(&api_pid.to_string(), [11, 12]),
            db_pid.map_or(0.0, |pid| proc_cpu_seconds(&pid.to_string(), [11, 12])),
            // This process's cutime and cstime: its waited-for children.
            proc_cpu_seconds("self", [13, 14]),
        ])
    }

    /// Seconds of CPU of each process since `before`.
    pub(crate) fn since(&self, before: &Self) -> [f64; 3] {
        [0, 1, 2].map(|i| self.0[i] - before.0[i])
    }
}

/// Latencies of many wrk runs, pooled: how many answers took each number of microseconds.
#[derive(Default, Clone)]
pub(crate) struct Latencies(std::collections::BTreeMap<u64, u64>);

impl Latencies {
    /// Adds a wrk report's latencies (its `latency_us`: `[µs, count]` pairs).
    pub(crate) fn add(&mut self, report: &Value) {
        for pair in report["latency_us"].as_array().into_iter().flatten() {
            if let (Some(us), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                *self.0.entry(us).or_default() += n;
            }
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        for (&us, &n) in &other.0 {
            *self.0.entry(us).or_default() += n;
        }
    }

    /// The `p`th percentile in ms, ranked as wrk ranks it (`stats_percentile`).
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.0.values().sum();
        let rank = ((p / 100.0) * total as f64 + 0.5).round() as u64;
        let mut seen = 0;
        for (&us, &n) in &self.0 {
            seen += n;
            if seen >= rank {
                return us as f64 / 1000.0;
            }
        }
        0.0
    }
}

/// Two CPU-time fields of `/proc/{pid}/stat`, counted after the command's closing parenthesis
/// (utime and stime are 11 and 12, cutime and cstime 13 and 14), in seconds.
pub(crate) fn proc_cpu_seconds(pid: &str, fields: [usize; 2]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let values: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .iter()
        .filter_map(|&i| values.get(i)?.parse::<f64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// A field of `/proc/{pid}/status` in KiB (`VmRSS:`, `VmHWM:`), 0 if it cannot be read.
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// The pid of the MariaDB server behind `base`, from the pidfile it reports: its CPU time is
/// part of a hold's price.
pub(crate) async fn mariadb_pid(base: &str) -> Option<u32> {
    let mut conn = sqlx::MySqlConnection::connect(base).await.ok()?;
    let (file,): (String,) = sqlx::query_as("SELECT @@pid_file")
        .fetch_one(&mut conn)
        .await
        .ok()?;
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

pub(crate) fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let version = Command::new("mariadb")
        .args(["--version"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({"cpus": cpus, "database": version, "note": "load generator, API and database on one machine"})
}

/// The commit measured (`git describe --always --dirty`), or `unknown` outside a checkout.
pub(crate) fn commit() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}
