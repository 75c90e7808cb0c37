//! A private `redis-server` per test (or per group of tests), started from `PATH`.
//!
//! Each server listens on 127.0.0.1 on a free port, keeps its files and log in its own temporary
//! directory and is killed and reaped when its guard drops. A missing `redis-server` fails the
//! test with a clear message: these tests never skip silently (CI installs `redis-server`).
//!
//! Included by the test crates through `tests/support/mod.rs`, and by `benches/stores.rs` with
//! `#[path]`, so it only uses the standard library and `tempfile`.

#![allow(dead_code)] // Each including crate uses a different part of the helper.

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, PoisonError, Weak},
    thread,
    time::{Duration, Instant},
};

/// Longest wait for a started server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh ports tried when the chosen one was taken between choosing and binding it.
const PORT_ATTEMPTS: usize = 10;

/// How to run the server.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisConfig {
    /// `--appendonly yes --appendfsync always`: every acknowledged write survives a kill and
    /// restart (the files live in the server's temporary directory). Otherwise nothing is
    /// persisted (`--save "" --appendonly no`).
    pub durable: bool,
    /// `--cluster-enabled yes`: a cluster node that owns no slots until told to.
    pub cluster: bool,
}

/// A running `redis-server` child process. Dropping it kills and reaps the process.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    config: RedisConfig,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server that persists nothing.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH` or does not answer within 15 s.
    pub fn start() -> Self {
        Self::start_with(RedisConfig::default())
    }

    /// Starts a server with `config` on a free loopback port.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not on `PATH` or does not answer within 15 s.
    pub fn start_with(config: RedisConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tower-sse-tracking-redis-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-server");
        let mut server = Self {
            child: None,
            port: 0,
            config,
            dir,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(Failure::PortTaken(log)) => failures.push(log),
                Err(Failure::Fatal(message)) => panic!("{message}"),
            }
        }
        panic!(
            "redis-server could not bind a free port in {PORT_ATTEMPTS} attempts; last log:\n{}",
            failures.last().map_or("", String::as_str)
        );
    }

    /// A server shared by every caller that holds the returned `Arc` at the same time: tests of
    /// one binary that run together use one process, and the last one to finish stops it (a
    /// `static` would never be dropped and would leak the process).
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port the server listens on (the same after [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the child process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server at once (SIGKILL: no shutdown save) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port with the same
    /// directory (so a durable server finds its data again).
    ///
    /// # Panics
    ///
    /// If the server cannot be started again on its port within 15 s.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // Someone else holds the port for a moment (a closing socket): try again.
                Err(Failure::PortTaken(_)) if Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(100));
                }
                Err(Failure::PortTaken(log)) => {
                    panic!(
                        "redis-server could not bind port {} again:\n{log}",
                        self.port
                    )
                }
                Err(Failure::Fatal(message)) => panic!("{message}"),
            }
        }
    }

    /// Everything the server wrote to its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), Failure> {
        let port = self.port.to_string();
        let dir = self
            .dir
            .path()
            .to_str()
            .expect("temporary directory is not UTF-8");
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--dir",
            dir,
        ];
        if self.config.durable {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        if self.config.cluster {
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                // A failed primary is noticed (and a replica promoted) within seconds.
                "--cluster-node-timeout",
                "1500",
            ]);
        }
        // The log is appended to across restarts; it is read back when something goes wrong.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot create the redis-server log file");
        let log_err = log.try_clone().expect("cannot share the log file");
        let child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::Fatal(
                    "redis-server is not installed (not found on PATH): these tests start their own \
                     Redis and do not skip without it; install it, e.g. `apt-get install redis-server`"
                        .to_owned(),
                ));
            }
            Err(e) => return Err(Failure::Fatal(format!("cannot start redis-server: {e}"))),
        };
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = self.log();
                if log.contains("already in use") || log.contains("Could not create server TCP") {
                    return Err(Failure::PortTaken(log));
                }
                return Err(Failure::Fatal(format!(
                    "redis-server exited at start ({status}); its log:\n{log}"
                )));
            }
            // Ready when the process that answers on the port is ours (not another test's server
            // that grabbed the port first) and it has loaded its data.
            if answering_pid(self.port) == Some(pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(Failure::Fatal(format!(
                    "redis-server did not answer PING on port {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Failure {
    /// The port was taken: another one (or a later try) may work. Holds the log.
    PortTaken(String),
    Fatal(String),
}

/// A port that was free a moment ago: bind port 0, read the port, release it.
fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .expect("cannot bind a loopback port")
        .port()
}

/// The `process_id` of the Redis server answering on `port` once it answers `PING` with `PONG`
/// (a server still loading its data answers `-LOADING`), `None` otherwise.
fn answering_pid(port: u16) -> Option<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    let mut writer = stream.try_clone().ok()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"PING\r\nINFO server\r\n").ok()?;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if line != "+PONG\r\n" {
        return None;
    }
    line.clear();
    reader.read_line(&mut line).ok()?;
    let len: usize = line.strip_prefix('$')?.trim_end().parse().ok()?;
    let mut info = vec![0; len + 2];
    reader.read_exact(&mut info).ok()?;
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// A Redis Cluster on loopback: `primaries` nodes sharing the 16,384 slots, each with
/// `replicas` replicas, formed with `redis-cli --cluster create` (installed with
/// `redis-server`). Dropping it stops every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// Longest wait for a cluster to form or to settle after a failover.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

impl RedisCluster {
    /// Starts and forms the cluster, and waits until every node sees every slot served.
    ///
    /// # Panics
    ///
    /// If a node cannot be started, or the cluster does not form within 30 s.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let config = RedisConfig {
            cluster: true,
            ..RedisConfig::default()
        };
        let nodes: Vec<RedisServer> = (0..primaries * (1 + replicas))
            .map(|_| RedisServer::start_with(config))
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("cannot run redis-cli (installed with redis-server)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_until_ok();
        cluster
    }

    /// A cluster of three primaries shared by the tests of one binary that run at the same
    /// time (see [`RedisServer::shared`]).
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(Self::start(3, 0));
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    /// `redis://127.0.0.1:PORT/` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The ports of the nodes running now.
    pub fn ports_running(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.is_running().then(|| n.port().to_string()))
            .collect()
    }

    /// The nodes, in the order they were given to `redis-cli --cluster create` (primaries
    /// first).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The port of the primary serving `slot`, as the first running node sees it.
    pub fn primary_of(&mut self, slot: u16) -> Option<u16> {
        let port = self
            .nodes
            .iter_mut()
            .find_map(|n| n.is_running().then(|| n.port()))?;
        let out = cli(port, &["CLUSTER", "SHARDS"]);
        // `redis-cli` prints the reply as nested lists; a shard's slot ranges come before its
        // nodes, and the primary's entry has `role` then `master`.
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i] == "slots" {
                let mut ranges = Vec::new();
                let mut j = i + 1;
                while let Some(n) = lines.get(j).and_then(|l| l.parse::<u16>().ok()) {
                    ranges.push(n);
                    j += 1;
                }
                let serves = ranges
                    .chunks(2)
                    .any(|r| r.len() == 2 && (r[0]..=r[1]).contains(&slot));
                if serves {
                    let mut port = None;
                    for k in j..lines.len() {
                        if lines[k] == "slots" {
                            break;
                        }
                        if lines[k] == "port" {
                            port = lines.get(k + 1).and_then(|p| p.parse().ok());
                        }
                        if lines[k] == "role" && lines.get(k + 1) == Some(&"master") {
                            return port;
                        }
                    }
                }
                i = j;
            } else {
                i += 1;
            }
        }
        None
    }

    /// Waits until every running node reports `cluster_state:ok`, and every replica is linked
    /// to its primary (its first sync done).
    ///
    /// # Panics
    ///
    /// After 30 s.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let pending: Vec<(u16, String)> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| {
                    let info = cli(n.port(), &["CLUSTER", "INFO"]);
                    let replication = cli(n.port(), &["INFO", "replication"]);
                    (n.port(), info + &replication)
                })
                .filter(|(_, info)| {
                    !info.contains("cluster_state:ok")
                        || (info.contains("role:slave") && !info.contains("master_link_status:up"))
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not ready within {CLUSTER_TIMEOUT:?}: {pending:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `redis-cli -p port args..`: its output, or the error as text.
fn cli(port: u16, args: &[&str]) -> String {
    match Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("redis-cli failed: {e}"),
    }
}

/// A key prefix no other test of this process uses.
pub fn fresh_prefix(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("test:{}:{name}:{n}:", std::process::id())
}
