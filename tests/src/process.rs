//! The real binaries as child processes: started with a clean environment, their JSON log lines
//! collected, waited for or killed.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::wait::POLL;

/// How long no further log line must arrive before a count of lines is taken as final. A line
/// logged together with the awaited ones reaches the collector within milliseconds (a
/// non-blocking writer thread, then a pipe); this is far past that.
pub const QUIET: Duration = Duration::from_millis(300);

/// Where cargo put the binaries: next to this test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --bins`, as tests/run.sh does)",
        path.display()
    );
    path
}

/// A running binary whose stdout (JSON log lines) is collected.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub addr: Option<String>,
}

impl Process {
    /// Starts `bin` with `env` and, when it serves HTTP, waits for its "listening" line.
    pub fn start(bin: &str, args: &[&str], env: &[(&str, String)], wait_listening: bool) -> Self {
        let mut cmd = Command::new(binary(bin));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && v["message"] == "listening"
                        && v["target"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("flash_sale"))
                        && let Some(a) = v["addr"].as_str()
                    {
                        let _ = tx.send(a.to_owned());
                    }
                    lines.lock().expect("lines").push(line);
                }
            })
        };
        let addr = wait_listening.then(|| match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => panic!(
                "{bin} did not start listening; its output:\n{}",
                lines.lock().expect("lines").join("\n")
            ),
        });
        Self {
            child,
            lines,
            reader: Some(reader),
            addr,
        }
    }

    /// The metric lines of a running process once at least `n` have arrived (log lines reach
    /// stdout through a non-blocking writer), or all there are after 10 s.
    pub async fn metric_eventually(&self, name: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric(name).len() < n && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        self.metric(name)
    }

    /// Exactly `n` metric lines `name`: waits until `n` are there (10 s at most), then watches
    /// for [`QUIET`] that no further one arrives. Fails the test otherwise, showing the lines.
    pub async fn metric_exactly(&self, name: &str, n: usize) -> Vec<Value> {
        let lines = self.metric_eventually(name, n).await;
        assert!(
            lines.len() >= n,
            "{n} {name} lines expected, {} arrived within 10 s: {lines:?}",
            lines.len()
        );
        let quiet_until = Instant::now() + QUIET;
        while Instant::now() < quiet_until {
            let lines = self.metric(name);
            assert_eq!(
                lines.len(),
                n,
                "exactly {n} {name} lines expected: {lines:?}"
            );
            tokio::time::sleep(POLL).await;
        }
        self.metric(name)
    }

    /// All metric lines `name` once their number has not changed for [`QUIET`] (10 s at most),
    /// for a test that cannot know how many to expect.
    pub async fn metric_settled(&self, name: &str) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = self.metric(name).len();
        let mut since = Instant::now();
        while since.elapsed() < QUIET {
            assert!(
                Instant::now() < deadline,
                "{name} lines kept arriving for 10 s"
            );
            tokio::time::sleep(POLL).await;
            let now = self.metric(name).len();
            if now != seen {
                (seen, since) = (now, Instant::now());
            }
        }
        self.metric(name)
    }

    /// The first JSON log line that `matches`, waited for (10 s at most; then the test fails
    /// with `what` and the process's output).
    pub async fn line_eventually(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| matches(v));
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: no such log line within 10 s:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The JSON log lines with `"metric": name`, so far.
    pub fn metric(&self, name: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["metric"] == name)
            .collect()
    }

    pub fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// The last `n` lines worth reading after a failure: warnings, errors and contention
    /// (routine `INFO` lines such as `hold.created` left out).
    pub fn notable_tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("lines");
        let notable: Vec<&String> = lines
            .iter()
            .filter(|l| {
                serde_json::from_str::<Value>(l).map_or(true, |v| {
                    v["level"] != "INFO" || v["metric"] == "stock.contention"
                })
            })
            .collect();
        notable[notable.len().saturating_sub(n)..]
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for the process to exit by itself and returns whether it succeeded.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // The pipe is closed: the reader ends once it has every line.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit in {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -9` of a process this test started (an API, a worker), by its pid.
pub fn kill9(pid: u32) {
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -9 {pid}");
}
