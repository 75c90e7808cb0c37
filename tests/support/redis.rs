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

/// A key prefix no other test of this process uses.
pub fn fresh_prefix(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("test:{}:{name}:{n}:", std::process::id())
}
