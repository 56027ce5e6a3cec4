//! Database servers of a test's own: [`ScratchMariaDb`], one `mariadbd`, and [`GaleraCluster`],
//! three MariaDB Galera nodes on loopback.
//!
//! Why: a test that stops, kills, isolates or restarts its database must not do it to the shared
//! MariaDB on 127.0.0.1:3306, which every other test of the parallel run (and perhaps a developer)
//! is using at that moment. It starts private servers here instead, and so runs in the parallel
//! suite like any other test.
//!
//! How these servers stay apart from everything else on the machine:
//! - each has its own directory (datadir, socket, pidfile, error log) and its own ports;
//! - the machine's `/etc/mysql` config, which names the shared server's socket, port, pidfile and
//!   datadir, is never read: a scratch server runs with `--no-defaults`; a Galera node reads only
//!   its own `--defaults-file`, because the state-transfer scripts read the server's option files
//!   and would otherwise fall back to `/etc/mysql`; every client tool gets `--no-defaults` and an
//!   explicit `--socket`;
//! - a server is found only through the child process started here and the pidfile it wrote,
//!   never by the executable's name; `Drop` kills it and removes its directory, also when the test
//!   panics.
//!
//! Needs root (the servers run as user `mysql`, as Debian's service does), Debian's
//! `mariadb-server` (tests/ensure-mariadb.sh) and, for Galera, `galera-4` and `rsync`
//! (tests/ensure-galera.sh).
//!
//! Speed: a datadir is a copy of a template that `mariadb-install-db` makes once per machine and
//! server binary, with the test user `flash` in it (made once, about 0.5 s). A scratch server is
//! then up in about 0.35 s; a three-node cluster in about 8 s (10 to 12 s with two clusters
//! starting at once on two cores), mostly the joiners' state transfers.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant, UNIX_EPOCH},
};

const MARIADBD: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const ADMIN: &str = "/usr/bin/mariadb-admin";
const CLIENT: &str = "/usr/bin/mariadb";
const GALERA: &str = "/usr/lib/galera/libgalera_smm.so";

/// The test user, as tests/ensure-mariadb.sh creates it on the shared server. `FLUSH PRIVILEGES`
/// first: `mariadb-install-db` runs the file with the grant tables not yet loaded.
const USERS_SQL: &str = "FLUSH PRIVILEGES;
CREATE USER 'flash'@'127.0.0.1' IDENTIFIED BY 'flash';
CREATE USER 'flash'@'localhost' IDENTIFIED BY 'flash';
GRANT ALL PRIVILEGES ON *.* TO 'flash'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'flash'@'localhost';
";

/// A private `mariadbd` for one test, which it may stop, kill and start again at will.
pub struct ScratchMariaDb {
    // Field order: the server is killed before its directory is removed.
    server: Server,
    _ports: PortClaims,
    _root: tempfile::TempDir,
}

impl ScratchMariaDb {
    /// Starts a server with the settings below plus `extra_args` (`--name=value` options), and
    /// waits until it answers.
    pub async fn start(extra_args: &[&str]) -> Self {
        let started = Instant::now();
        let root = scratch_root();
        let (ports, claims) = claim_ports(1);
        let dir = root.path().join("mariadb");
        let mut args = vec!["--no-defaults".to_owned()];
        args.extend(server_args(&dir, ports[0]));
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let server = Server::new("mariadb", dir, ports[0], args).await;
        server.spawn(&[]);
        server.wait_ping().await;
        eprintln!(
            "scratch MariaDB on port {} up in {:?}",
            ports[0],
            started.elapsed()
        );
        Self {
            server,
            _ports: claims,
            _root: root,
        }
    }

    /// `mysql://flash:flash@127.0.0.1:<port>`, naming no database.
    pub fn base_url(&self) -> String {
        base_url(self.server.port)
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    /// A clean shutdown; returns once the process has gone.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill9(&self) {
        self.server.kill9();
    }

    /// Starts the server again on the same datadir, port and socket, and waits until it answers.
    pub async fn start_again(&self) {
        self.server.spawn(&[]);
        self.server.wait_ping().await;
    }

    /// The end of the server's error log.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }
}

/// The server's `Com_select` (every SELECT it has run) through `conn`, or none without one: on a
/// [`ScratchMariaDb`] of a test's own, a count of one API's queries and nobody else's.
pub async fn com_select(conn: Option<&sea_orm::DatabaseConnection>) -> Option<f64> {
    use sea_orm::ConnectionTrait;
    let row = conn?
        .query_one_raw(sea_orm::Statement::from_string(
            conn?.get_database_backend(),
            "SHOW GLOBAL STATUS LIKE 'Com_select'",
        ))
        .await
        .expect("Com_select")?;
    row.try_get::<String>("", "Value").ok()?.parse().ok()
}

/// Three Galera nodes on loopback (multi-primary, the contract's "several database nodes").
/// Nodes are numbered 0, 1, 2; node 0 bootstrapped the cluster.
pub struct GaleraCluster {
    nodes: Vec<Server>,
    _ports: PortClaims,
    _root: tempfile::TempDir,
}

impl GaleraCluster {
    /// Bootstraps node 0, then lets nodes 1 and 2 join (by state transfer), and returns once
    /// every node is synced in a cluster of three.
    ///
    /// Failure detection is shortened for tests (`evs.suspect_timeout` 3 s, `evs.inactive_timeout`
    /// 6 s, against 5 s and 15 s by default), so a vanished or isolated node leaves the primary
    /// component within a few seconds.
    pub async fn start() -> Self {
        let started = Instant::now();
        for (path, package) in [(GALERA, "galera-4"), ("/usr/bin/rsync", "rsync")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install {package} (tests/ensure-galera.sh)"
            );
        }
        let root = scratch_root();
        // Per node: MySQL port, group communication, incremental and full state transfer.
        let (ports, claims) = claim_ports(12);
        let port = |node: usize, which: usize| ports[node * 4 + which];
        let gcomm: Vec<String> = (0..3)
            .map(|n| format!("127.0.0.1:{}", port(n, 1)))
            .collect();
        let cluster_name = format!("flash_test_{:08x}", rand::random::<u32>());
        let mut nodes = Vec::new();
        for n in 0..3 {
            let dir = root.path().join(format!("node{n}"));
            fs::create_dir(&dir).expect("node dir");
            let mut cnf = String::from("[mysqld]\n");
            for arg in server_args(&dir, port(n, 0)) {
                cnf.push_str(arg.trim_start_matches("--"));
                cnf.push('\n');
            }
            cnf.push_str(&format!(
                "binlog_format=ROW\n\
                 innodb_autoinc_lock_mode=2\n\
                 wsrep_on=ON\n\
                 wsrep_provider={GALERA}\n\
                 wsrep_cluster_name={cluster_name}\n\
                 wsrep_cluster_address=gcomm://{}\n\
                 wsrep_provider_options=\"base_port={base};gmcast.listen_addr=tcp://127.0.0.1:{base};\
                 ist.recv_addr=127.0.0.1:{ist};gcache.size=32M;\
                 evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S\"\n\
                 wsrep_node_address=127.0.0.1\n\
                 wsrep_node_name=node{n}\n\
                 wsrep_sst_method=rsync\n\
                 wsrep_sst_receive_address=127.0.0.1:{sst}\n",
                gcomm.join(","),
                base = port(n, 1),
                ist = port(n, 2),
                sst = port(n, 3),
            ));
            let cnf_path = dir.join("my.cnf");
            fs::write(&cnf_path, cnf).expect("my.cnf");
            let args = vec![format!("--defaults-file={}", cnf_path.display())];
            nodes.push(Server::new(&format!("node{n}"), dir, port(n, 0), args).await);
        }
        let cluster = Self {
            nodes,
            _ports: claims,
            _root: root,
        };
        cluster.nodes[0].spawn(&["--wsrep-new-cluster".to_owned()]);
        cluster.wait_status(0, &[("wsrep_ready", "ON")]).await;
        // One joiner at a time: two joining together take longer to agree on membership.
        cluster.nodes[1].spawn(&[]);
        cluster.wait_status(0, &[("wsrep_cluster_size", "2")]).await;
        cluster.nodes[2].spawn(&[]);
        for n in 0..3 {
            cluster.wait_synced(n).await;
        }
        eprintln!("Galera cluster up in {:?}", started.elapsed());
        cluster
    }

    /// `mysql://flash:flash@127.0.0.1:<port of node i>`, naming no database.
    pub fn node_url(&self, i: usize) -> String {
        base_url(self.nodes[i].port)
    }

    /// SIGKILL to node `i`.
    pub fn kill9(&self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Starts node `i` again after [`kill9`](Self::kill9): recovers its last committed position
    /// from InnoDB (`--wsrep-recover`), starts from there, and waits until it is synced. Panics
    /// unless it rejoined by incremental state transfer (IST) rather than a full copy.
    pub async fn restart(&self, i: usize) {
        let node = &self.nodes[i];
        let recover_log = node.dir.join("recover.log");
        let _ = fs::remove_file(&recover_log);
        let status = tokio::process::Command::new(MARIADBD)
            .args(&node.args)
            .arg("--wsrep-recover")
            .arg(format!("--log-error={}", recover_log.display()))
            .status()
            .await
            .expect("mariadbd --wsrep-recover");
        let log = fs::read_to_string(&recover_log).unwrap_or_default();
        let position = log
            .lines()
            .rev()
            .find_map(|l| l.split("WSREP: Recovered position: ").nth(1))
            .map(|p| p.trim().to_owned())
            .unwrap_or_else(|| {
                panic!("node{i}: --wsrep-recover ({status}) found no position:\n{log}")
            });
        let log_before = fs::metadata(node.dir.join("error.log")).map_or(0, |m| m.len() as usize);
        node.spawn(&[format!("--wsrep-start-position={position}")]);
        self.wait_synced(i).await;
        let log = fs::read(self.nodes[i].dir.join("error.log")).unwrap_or_default();
        let since = String::from_utf8_lossy(log.get(log_before..).unwrap_or_default());
        assert!(
            since.contains("IST received") && !since.contains("rsync SST completed"),
            "node{i} did not rejoin by IST:\n{}",
            self.nodes[i].log_tail()
        );
    }

    /// Cuts node `i` off from the others (`gmcast.isolate=1`), or reconnects it (`on == false`).
    pub async fn isolate(&self, i: usize, on: bool) {
        let sql = format!(
            "SET GLOBAL wsrep_provider_options='gmcast.isolate={}'",
            u8::from(on)
        );
        if let Err(e) = self.nodes[i].sql(&sql).await {
            panic!("node{i}: {sql}: {e}\n{}", self.nodes[i].log_tail());
        }
    }

    /// Waits until node `i` is synced, ready, and sees all three nodes.
    pub async fn wait_synced(&self, i: usize) {
        self.wait_status(
            i,
            &[
                ("wsrep_cluster_size", "3"),
                ("wsrep_ready", "ON"),
                ("wsrep_local_state_comment", "Synced"),
            ],
        )
        .await;
    }

    /// A global status variable of node `i`, e.g. `status(1, "wsrep_cluster_status")`.
    pub async fn status(&self, i: usize, var: &str) -> String {
        self.nodes[i]
            .status(var)
            .await
            .unwrap_or_else(|e| panic!("node{i}: status {var}: {e}\n{}", self.nodes[i].log_tail()))
    }

    /// The end of node `i`'s error log.
    pub fn log_tail(&self, i: usize) -> String {
        self.nodes[i].log_tail()
    }

    /// Polls node `i` until every `(variable, value)` holds, for up to two minutes.
    pub async fn wait_status(&self, i: usize, want: &[(&str, &str)]) {
        let node = &self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = Vec::new();
        loop {
            last.clear();
            for (var, value) in want {
                let got = node.status(var).await;
                if got.as_deref() != Ok(value) {
                    last.push(format!("{var} = {got:?}"));
                }
            }
            if last.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline && node.running(),
                "node{i} not {want:?} ({}):\n{}",
                last.join(", "),
                node.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn base_url(port: u16) -> String {
    format!("mysql://flash:flash@127.0.0.1:{port}")
}

/// What every server here runs with, as `--name=value` options.
fn server_args(dir: &Path, port: u16) -> Vec<String> {
    let file = |name: &str| dir.join(name).display().to_string();
    vec![
        "--user=mysql".to_owned(),
        format!("--datadir={}", file("data")),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--socket={}", file("mysqld.sock")),
        format!("--pid-file={}", file("mysqld.pid")),
        format!("--log-error={}", file("error.log")),
        "--skip-log-bin".to_owned(),
        "--innodb-buffer-pool-size=64M".to_owned(),
        "--innodb-log-file-size=16M".to_owned(),
        "--max-connections=300".to_owned(),
    ]
}

/// A temporary folder that user `mysql` can traverse (tempfile makes them 0700).
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::Builder::new()
        .prefix("flash-sale-db-")
        .tempdir()
        .expect("temp dir");
    run(
        Command::new("chmod").arg("755").arg(root.path()),
        "chmod 755",
    );
    root
}

/// One `mariadbd` process over its own directory.
struct Server {
    name: String,
    dir: PathBuf,
    port: u16,
    /// Every option of a normal start; a start may add one-off options (`--wsrep-new-cluster`).
    args: Vec<String>,
    child: Mutex<Option<Child>>,
}

impl Server {
    /// Prepares the directory: a copy of the template datadir, all of it owned by `mysql`.
    async fn new(name: &str, dir: PathBuf, port: u16, args: Vec<String>) -> Self {
        let template = tokio::task::spawn_blocking(template)
            .await
            .expect("template datadir");
        fs::create_dir_all(&dir).expect("server dir");
        let data = dir.join("data");
        let copy = tokio::process::Command::new("cp")
            .arg("-a")
            .arg(template.join("data"))
            .arg(&data)
            .status()
            .await;
        assert!(copy.is_ok_and(|s| s.success()), "cp -a template datadir");
        let chown = tokio::process::Command::new("chown")
            .args(["-R", "mysql:mysql"])
            .arg(&dir)
            .status()
            .await;
        assert!(
            chown.is_ok_and(|s| s.success()),
            "chown mysql {} (the servers run as user mysql: run the tests as root)",
            dir.display()
        );
        Self {
            name: name.to_owned(),
            dir,
            port,
            args,
            child: Mutex::new(None),
        }
    }

    fn spawn(&self, once: &[String]) {
        assert!(!self.running(), "{} is already running", self.name);
        let console = fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))
            .expect("console log");
        let child = Command::new(MARIADBD)
            .args(&self.args)
            .args(once)
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .spawn()
            .unwrap_or_else(|e| panic!("start {MARIADBD}: {e}"));
        *self.child() = Some(child);
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn running(&self) -> bool {
        self.child()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until the server answers on its socket (a Galera joiner only after its state transfer).
    async fn wait_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.client(ADMIN, &["ping"]).await.is_err() {
            assert!(
                self.running() && Instant::now() < deadline,
                "{} did not start:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A clean shutdown (`mariadb-admin shutdown`, else SIGTERM), waiting until the process exits.
    async fn stop(&self) {
        if self.client(ADMIN, &["shutdown"]).await.is_err()
            && let Some(pid) = self.pid()
        {
            signal("TERM", pid);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "{} did not stop:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *self.child() = None;
    }

    /// SIGKILL to the pid in this server's own pidfile (it is the child started here; without a
    /// pidfile yet, the child itself), then reaps it.
    fn kill9(&self) {
        let Some(mut child) = self.child().take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            match self.pid().filter(|&pid| pid == child.id()) {
                Some(pid) => signal("KILL", pid),
                None => {
                    let _ = child.kill();
                }
            }
        }
        let _ = child.wait();
        // A killed server leaves its pidfile behind; nothing may act on that stale pid later.
        let _ = fs::remove_file(self.dir.join("mysqld.pid"));
    }

    fn pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join("mysqld.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs a client tool as root over this server's socket; its stdout, or why it failed.
    async fn client(&self, tool: &str, args: &[&str]) -> Result<String, String> {
        let run = tokio::process::Command::new(tool)
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.join("mysqld.sock").display()
            ))
            .args(["--user=root", "--connect-timeout=5"])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(20), run).await {
            Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
            Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
            Ok(Err(e)) => Err(format!("{tool}: {e}")),
            Err(_) => Err(format!("{tool} {args:?}: no answer in 20 s")),
        }
    }

    async fn sql(&self, sql: &str) -> Result<String, String> {
        self.client(CLIENT, &["--batch", "--skip-column-names", "-e", sql])
            .await
    }

    async fn status(&self, var: &str) -> Result<String, String> {
        let out = self
            .sql(&format!("SHOW GLOBAL STATUS LIKE '{var}'"))
            .await?;
        out.lines()
            .find_map(|l| l.strip_prefix(var)?.strip_prefix('\t'))
            .map(str::to_owned)
            .ok_or_else(|| format!("no status variable {var}"))
    }

    /// The last lines of the error log (or of the console, if the server died before logging).
    fn log_tail(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let log = read("error.log") + &read("console.log");
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- {} ({}) ---\n{tail}", self.name, self.dir.display())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The datadir every server starts from, made once by `mariadb-install-db` and shared by every
/// test process (nextest runs each test in a process of its own). It is keyed by the server
/// binary, so an upgraded MariaDB gets a new one, and renamed into place once complete, so a
/// concurrent test process never copies half of one.
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let meta = fs::metadata(MARIADBD).unwrap_or_else(|e| {
                panic!("{MARIADBD}: {e}; install mariadb-server (tests/ensure-mariadb.sh)")
            });
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let done = std::env::temp_dir().join(format!(
                "flash-sale-mariadb-template-{}-{mtime}",
                meta.len()
            ));
            if done.join("data").is_dir() {
                return done;
            }
            let work = scratch_root();
            let data = work.path().join("data");
            fs::create_dir(&data).expect("template datadir");
            run(
                Command::new("chown").arg("mysql:mysql").arg(&data),
                "chown mysql (the servers run as user mysql: run the tests as root)",
            );
            let users = work.path().join("users.sql");
            fs::write(&users, USERS_SQL).expect("users.sql");
            run(
                Command::new(INSTALL_DB)
                    .args([
                        "--no-defaults",
                        "--user=mysql",
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                    ])
                    .arg(format!("--datadir={}", data.display()))
                    .arg(format!("--extra-file={}", users.display())),
                "mariadb-install-db",
            );
            let work = work.keep();
            if fs::rename(&work, &done).is_err() {
                // Another test process got there first.
                let _ = fs::remove_dir_all(&work);
                assert!(
                    done.join("data").is_dir(),
                    "no template at {}",
                    done.display()
                );
            }
            done
        })
        .clone()
}

/// Ports claimed for one test's servers, released on drop.
pub(crate) struct PortClaims(Vec<PathBuf>);

impl Drop for PortClaims {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

/// `n` free ports, taken at random below Linux's ephemeral range (32768 and up), so that neither
/// an outgoing connection nor another process's bind to port 0 takes one before the server binds
/// it. Each is claimed with a file that concurrent test processes respect.
pub(crate) fn claim_ports(n: usize) -> (Vec<u16>, PortClaims) {
    let dir = std::env::temp_dir().join("flash-sale-test-ports");
    fs::create_dir_all(&dir).expect("port claims dir");
    let mut ports = Vec::new();
    let mut claims = PortClaims(Vec::new());
    while ports.len() < n {
        let port: u16 = rand::random_range(20_000..32_000);
        let claim = dir.join(port.to_string());
        if ports.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if fs::File::options()
            .write(true)
            .create_new(true)
            .open(&claim)
            .is_ok()
        {
            ports.push(port);
            claims.0.push(claim);
        }
    }
    (ports, claims)
}
