//! End-to-end load harness: an axum SSE server in a child process, with and without
//! `EventTrackingLayer`, and a hyper client holding C concurrent SSE connections over loopback.
//!
//! ```text
//! cargo run --release --example e2e                       # C = 1000, 5000, 10000; A B A B
//! cargo run --release --example e2e -- --connections 1000 --seconds 10 --rate 20000
//! cargo run --release --example e2e -- --connections 100 --rate 0   # a burst
//! cargo run --release --example e2e -- --connections 1000 --concurrent --b bare  # the floor
//! ```
//!
//! For each connection count it runs the bare server (A) and the tracked one (B) alternately,
//! `--rounds` times each, for `--seconds` of measurement after a warm-up, at a total of `--rate`
//! events per second spread over the connections (`--rate 0`: a burst, every connection taking
//! events as fast as it reads them), and prints per run: events/s received, server
//! CPU time per event (user + system, from /proc), client-measured event latency p50/p99/p999,
//! server resident memory per connection, store writes, events per write and persistence lag
//! (event emitted -> ID persisted) p50/p99. After the rounds, the summary gives the ratios of
//! the sums, and the `pairs` line the median of each round's ratio to the bare round just
//! before it, with every ratio listed (the machine's speed drifts; a pair shares its moment).
//! `--flush-ms` sets the worker's flush interval (default
//! 50 ms, the crate's default). `--connect-over MS` opens the connections evenly over that time
//! instead of all at once (resident memory per connection depends on it: see the README).
//! `--serving` chooses how both servers are served: `make-service` (the default, as the README
//! recommends) is `axum::serve(listener, app.into_make_service())`, one router shared by every
//! connection; `router` is `axum::serve(listener, app)`, with which axum builds the router again
//! for each connection (about 2.6 KB of resident memory per connection of its own at C = 5,000,
//! and, for the tracked server, its layered routes cloned as well).
//! `--concurrent` serves A and B at the same time, each with `--connections` connections of
//! its own, instead of one after the other: both then run through the same moments of a
//! machine whose speed drifts, so their CPU per event compares more tightly (at a burst the
//! one client then shares itself between them, so events/s says little there: the default
//! order stays the measure of throughput). `--b` chooses B: `tracked` (the default), `bare`
//! (two identical servers: how far this machine and harness alone move the ratios) or
//! `wrapped` (the layer over the same route, reading a session header the client never sends,
//! so every body is passed through: the cost of wrapping alone). `--abba` runs the rounds in
//! the order A B, B A, A B, ... so that neither server always comes second.
//! Linux only (reads /proc). Every loop is bounded in count and time, and only loopback
//! addresses are used.

use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    http::HeaderMap,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use futures_util::{Stream, stream};
use http_body_util::{BodyExt, Empty};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey,
    parser::SseParser,
    store::{MemoryStore, SessionRecord, SessionStore, SessionUpdate, StoreFuture},
    worker::WorkerConfig,
};

#[derive(Clone, Debug)]
struct Args {
    connections: Vec<usize>,
    seconds: u64,
    warmup: u64,
    rate: u64,
    rounds: usize,
    modes: Vec<String>,
    flush_ms: u64,
    /// Milliseconds over which the connections are opened, evenly (0: all at once).
    connect_over_ms: u64,
    /// How the servers are served: `make-service` or `router` (see the module's docs).
    serving: String,
    /// B's server: `tracked`, `bare` or `wrapped` (see the module's docs).
    b: String,
    /// A and B served at the same time, each with its own connections, instead of in turn.
    concurrent: bool,
    /// Rounds in the order A B, B A, A B, ... instead of A B, A B, ...
    abba: bool,
    // Child mode.
    serve: Option<String>,
    per_connection_rate: f64,
}

fn parse_args() -> Args {
    let mut args = Args {
        connections: vec![1000, 5000, 10000],
        seconds: 10,
        warmup: 3,
        rate: 20_000,
        rounds: 2,
        modes: vec!["bare".into(), "tracked".into()],
        flush_ms: 50,
        connect_over_ms: 0,
        serving: "make-service".into(),
        b: "tracked".into(),
        concurrent: false,
        abba: false,
        serve: None,
        per_connection_rate: 0.0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--connections" => {
                args.connections = value
                    .split(',')
                    .map(|v| v.parse().expect("count"))
                    .collect();
            }
            "--seconds" => args.seconds = value.parse().expect("seconds"),
            "--warmup" => args.warmup = value.parse().expect("seconds"),
            "--rate" => args.rate = value.parse().expect("events per second"),
            "--rounds" => args.rounds = value.parse().expect("rounds"),
            "--modes" => args.modes = value.split(',').map(str::to_owned).collect(),
            "--flush-ms" => args.flush_ms = value.parse().expect("milliseconds"),
            "--connect-over" => args.connect_over_ms = value.parse().expect("milliseconds"),
            "--serving" => {
                assert!(
                    matches!(value.as_str(), "make-service" | "router"),
                    "--serving is make-service or router"
                );
                args.serving = value;
            }
            "--b" => {
                assert!(
                    matches!(value.as_str(), "tracked" | "bare" | "wrapped"),
                    "--b is tracked, bare or wrapped"
                );
                args.b = value;
            }
            // Flags: no value follows.
            "--concurrent" => {
                args.concurrent = true;
                i += 1;
                continue;
            }
            "--abba" => {
                args.abba = true;
                i += 1;
                continue;
            }
            "--serve" => args.serve = Some(value),
            "--per-connection-rate" => args.per_connection_rate = value.parse().expect("rate"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    args
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// Server (child process)
// ---------------------------------------------------------------------------------------------

/// Wraps the store to count writes and measure persistence lag from the IDs, which carry the
/// time their event was emitted (`seq-micros`).
#[derive(Clone, Default)]
struct LagStore {
    inner: MemoryStore,
    writes: Arc<AtomicU64>,
    batches: Arc<AtomicU64>,
    lags: Arc<Mutex<Vec<u32>>>,
}

impl SessionStore for LagStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        let now = now_micros();
        self.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut lags = self.lags.lock().unwrap();
        // A sample (every 8th update, at most 250k) keeps the harness's own memory small.
        for update in batch.iter().step_by(8) {
            let emitted = update
                .last_event_id
                .as_str()
                .and_then(|id| id.split_once('-'))
                .and_then(|(_, t)| t.parse::<u64>().ok());
            if let Some(emitted) = emitted
                && lags.len() < LAG_SAMPLES
            {
                lags.push(now.saturating_sub(emitted).min(u64::from(u32::MAX)) as u32);
            }
        }
        drop(lags);
        self.inner.save_batch(batch)
    }

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.inner.load(session, stream)
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        self.inner.delete_session(session)
    }
}

/// Persistence lags kept (a sample of every 8th update).
const LAG_SAMPLES: usize = 250_000;

static EVENTS_SENT: AtomicU64 = AtomicU64::new(0);

/// A stream of events at `rate` per second (as fast as the connection takes them when `rate` is
/// 0: a burst): `id: seq-micros`, data padded to ~60 bytes.
fn events_stream(rate: f64) -> impl Stream<Item = Result<Event, Infallible>> {
    let interval = (rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / rate);
        // Spread connections' first events over one period.
        let offset = Duration::from_micros(now_micros() % period.as_micros().max(1) as u64);
        tokio::time::interval_at(tokio::time::Instant::now() + offset, period)
    });
    stream::unfold((interval, 0u64), |(mut interval, seq)| async move {
        if let Some(interval) = &mut interval {
            interval.tick().await;
        }
        let t = now_micros();
        EVENTS_SENT.fetch_add(1, Ordering::Relaxed);
        let event = Event::default()
            .id(format!("{seq}-{t}"))
            .data(format!("{t} xxxxxxxxxxxxxxxxxxxx"));
        Some((Ok(event), (interval, seq + 1)))
    })
}

fn serve(mode: &str, per_connection_rate: f64, flush_ms: u64, serving: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler =
            move |_headers: HeaderMap| async move { Sse::new(events_stream(per_connection_rate)) };
        let store = LagStore::default();
        {
            // The lag sample's memory, resident from the start in both modes: the harness's own
            // memory must not count as the layer's.
            let mut lags = store.lags.lock().unwrap();
            lags.resize(LAG_SAMPLES, 0);
            lags.clear();
        }
        let (app, tracking) = match mode {
            "bare" => (Router::new().route("/events", get(handler)), None),
            "tracked" | "wrapped" => {
                // `wrapped`: a header no request carries, so no stream is tracked.
                let header = if mode == "wrapped" {
                    "x-e2e-no-session"
                } else {
                    "mcp-session-id"
                };
                let tracking = EventTrackingLayer::builder()
                    .store(store.clone())
                    .session_header(http::HeaderName::from_static(header))
                    .worker(WorkerConfig::default().flush_interval(Duration::from_millis(flush_ms)))
                    .build();
                let app = Router::new()
                    .route("/events", get(handler))
                    .layer(tracking.clone());
                (app, Some(tracking))
            }
            other => panic!("unknown mode {other}"),
        };
        if serving == "router" {
            // axum builds the router again for each connection.
            tokio::spawn(async move { axum::serve(listener, app).await });
        } else {
            // One router, built once, shared by every connection.
            tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
        }
        println!("listening {addr}");
        std::io::stdout().flush().unwrap();
        // Commands on stdin: "stats" prints a line of figures; end of input stops.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(command) = rx.recv().await {
            if command == "stats" {
                if let Some(tracking) = &tracking {
                    tracking.flush().await.unwrap();
                }
                // Sorted in place (the order of the sample does not matter): no copy.
                let mut lags = store.lags.lock().unwrap();
                lags.sort_unstable();
                println!(
                    "stats sent={} writes={} batches={} lag_p50={} lag_p99={} tracked={}",
                    EVENTS_SENT.load(Ordering::Relaxed),
                    store.writes.load(Ordering::Relaxed),
                    store.batches.load(Ordering::Relaxed),
                    percentile(&lags, 0.50),
                    percentile(&lags, 0.99),
                    tracking
                        .as_ref()
                        .map_or(0, |t| t.worker().tracked_sessions()),
                );
                std::io::stdout().flush().unwrap();
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Client (parent process)
// ---------------------------------------------------------------------------------------------

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// user + system CPU time of a process, in seconds, and its resident memory in bytes.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here 0-based after the name: 11 and 12.
    let clk_tck = 100.0;
    let cpu = (ticks(11) + ticks(12)) / clk_tck;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
}

struct Server {
    child: Child,
    addr: SocketAddr,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn start(mode: &str, per_connection_rate: f64, flush_ms: u64, serving: &str) -> Self {
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .args([
                "--serve",
                mode,
                "--per-connection-rate",
                &per_connection_rate.to_string(),
                "--flush-ms",
                &flush_ms.to_string(),
                "--serving",
                serving,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("server address")
            .parse()
            .unwrap();
        Self {
            child,
            addr,
            stdout,
        }
    }

    fn stats(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "stats").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(stats: &str, name: &str) -> u64 {
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    received: AtomicU64,
    latencies: Mutex<Vec<u32>>,
}

async fn connection(addr: SocketAddr, session: String, shared: Arc<Shared>) {
    let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let io = hyper_util::rt::TokioIo::new(stream);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io).await
    else {
        return;
    };
    tokio::spawn(conn);
    let request = http::Request::get(format!("http://{addr}/events"))
        .header("mcp-session-id", session)
        .body(Empty::new())
        .unwrap();
    let Ok(response) = sender.send_request(request).await else {
        return;
    };
    let mut body = response.into_body();
    let mut parser = SseParser::new();
    let mut local = Vec::with_capacity(1024);
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let measuring = shared.measuring.load(Ordering::Relaxed);
        let now = now_micros();
        parser.feed(data, |d| {
            if !(d.is_event() && measuring) {
                return;
            }
            let emitted = d
                .last_event_id()
                .split_once('-')
                .and_then(|(_, t)| t.parse::<u64>().ok())
                .unwrap_or(now);
            local.push(now.saturating_sub(emitted).min(u64::from(u32::MAX)) as u32);
        });
        if local.len() >= 1024 {
            shared
                .received
                .fetch_add(local.len() as u64, Ordering::Relaxed);
            shared.latencies.lock().unwrap().extend(local.drain(..));
        }
    }
    shared
        .received
        .fetch_add(local.len() as u64, Ordering::Relaxed);
    shared.latencies.lock().unwrap().extend(local.drain(..));
}

struct RunResult {
    events_per_sec: f64,
    cpu_us_per_event: f64,
    p50: u32,
    p99: u32,
    p999: u32,
    rss_per_conn: f64,
    writes: u64,
    events_per_write: f64,
    lag_p50: u32,
    lag_p99: u32,
}

/// One server under load and the client's side of it.
struct Side {
    server: Server,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    rss_idle: u64,
}

/// Runs the servers `modes` at the same time (one, or A and B with `--concurrent`), each with
/// `connections` connections of its own, and measures each.
fn run(
    modes: &[&str],
    connections: usize,
    args: &Args,
    runtime: &tokio::runtime::Runtime,
) -> Vec<RunResult> {
    let per_connection = args.rate as f64 / connections as f64;
    let mut sides: Vec<Side> = modes
        .iter()
        .map(|mode| {
            let server = Server::start(mode, per_connection, args.flush_ms, &args.serving);
            Side {
                server,
                shared: Arc::new(Shared {
                    measuring: AtomicBool::new(false),
                    stop: AtomicBool::new(false),
                    received: AtomicU64::new(0),
                    latencies: Mutex::new(Vec::new()),
                }),
                tasks: Vec::with_capacity(connections),
                rss_idle: 0,
            }
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for side in &mut sides {
        side.rss_idle = proc_usage(side.server.child.id()).1;
    }
    // Opened all at once, or evenly over `--connect-over` (the warm-up starts after the last);
    // with several servers, in turn.
    let gap = Duration::from_millis(args.connect_over_ms) / connections.max(1) as u32;
    let opening = Instant::now();
    for i in 0..connections {
        if !gap.is_zero() {
            let due = opening + gap * i as u32;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        for side in &mut sides {
            let task = connection(
                side.server.addr,
                format!("session-{i}"),
                side.shared.clone(),
            );
            side.tasks.push(runtime.spawn(task));
        }
    }
    std::thread::sleep(Duration::from_secs(args.warmup));
    let before: Vec<(String, f64)> = sides
        .iter_mut()
        .map(|side| {
            let stats = side.server.stats();
            let (cpu, _) = proc_usage(side.server.child.id());
            side.shared.received.store(0, Ordering::Relaxed);
            side.shared.measuring.store(true, Ordering::Relaxed);
            (stats, cpu)
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(args.seconds));
    for side in &sides {
        side.shared.measuring.store(false, Ordering::Relaxed);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after: Vec<(String, f64, u64)> = sides
        .iter_mut()
        .map(|side| {
            let (cpu, rss_loaded) = proc_usage(side.server.child.id());
            (side.server.stats(), cpu, rss_loaded)
        })
        .collect();
    sides
        .into_iter()
        .zip(before)
        .zip(after)
        .map(
            |((side, (stats_before, cpu_before)), (stats_after, cpu_after, rss_loaded))| {
                side.shared.stop.store(true, Ordering::Relaxed);
                side.server.stop();
                runtime.block_on(async {
                    for task in side.tasks {
                        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                    }
                });
                let sent = field(&stats_after, "sent") - field(&stats_before, "sent");
                let received = side.shared.received.load(Ordering::Relaxed);
                let mut latencies = std::mem::take(&mut *side.shared.latencies.lock().unwrap());
                latencies.sort_unstable();
                let writes = field(&stats_after, "writes");
                RunResult {
                    events_per_sec: received as f64 / elapsed,
                    cpu_us_per_event: (cpu_after - cpu_before) * 1e6 / sent.max(1) as f64,
                    p50: percentile(&latencies, 0.5),
                    p99: percentile(&latencies, 0.99),
                    p999: percentile(&latencies, 0.999),
                    rss_per_conn: rss_loaded.saturating_sub(side.rss_idle) as f64
                        / connections as f64,
                    writes,
                    events_per_write: if writes == 0 {
                        0.0
                    } else {
                        field(&stats_after, "sent") as f64 / writes as f64
                    },
                    lag_p50: field(&stats_after, "lag_p50") as u32,
                    lag_p99: field(&stats_after, "lag_p99") as u32,
                }
            },
        )
        .collect()
}

fn main() {
    let args = parse_args();
    if let Some(mode) = &args.serve {
        serve(mode, args.per_connection_rate, args.flush_ms, &args.serving);
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rate = if args.rate == 0 {
        "a burst (as many events as the connections take)".to_owned()
    } else {
        format!("{} events/s in total", args.rate)
    };
    let opened = if args.connect_over_ms == 0 {
        "connections opened at once".to_owned()
    } else {
        format!("connections opened over {} ms", args.connect_over_ms)
    };
    println!(
        "e2e: {}, {opened}, {} s measured after {} s warm-up, {} rounds A (bare) B ({}), flush interval {} ms, served as {}; {} cores{}",
        rate,
        args.seconds,
        args.warmup,
        args.rounds,
        args.b,
        args.flush_ms,
        args.serving,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.concurrent {
            " (--concurrent: A and B at the same time, each with its own connections)"
        } else {
            ""
        }
    );
    println!(
        "{:>6} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "conns",
        "mode",
        "events/s",
        "cpu us/ev",
        "p50 us",
        "p99 us",
        "p999 us",
        "rss B/conn",
        "writes",
        "ev/write",
        "lag p50",
        "lag p99"
    );
    for &connections in &args.connections {
        let mut sums = [(0.0, 0.0, 0.0), (0.0, 0.0, 0.0)];
        // Per round (events/s, CPU per event), for the ratios of each pair.
        let mut rounds = [Vec::new(), Vec::new()];
        for round in 0..args.rounds {
            let b = args.b.as_str();
            let wanted = |mode: &str| args.modes.iter().any(|x| x == mode);
            let mut results: Vec<(usize, RunResult)> = Vec::with_capacity(2);
            if args.concurrent {
                let rs = run(&["bare", b], connections, &args, &runtime);
                results.extend(rs.into_iter().enumerate());
            } else {
                // `--abba`: B first in every other round, so that neither place is always second.
                let order = if args.abba && round % 2 == 1 {
                    [1, 0]
                } else {
                    [0, 1]
                };
                for m in order {
                    let mode = ["bare", b][m];
                    if wanted(["bare", "tracked"][m]) {
                        let r = run(&[mode], connections, &args, &runtime).remove(0);
                        results.push((m, r));
                    }
                }
            }
            for (m, r) in results {
                let label = if b == "tracked" {
                    ["bare", "tracked"][m]
                } else {
                    ["A", "B"][m]
                };
                println!(
                    "{:>6} {:>8} {:>10.0} {:>9.2} {:>8} {:>8} {:>8} {:>9.0} {:>9} {:>9.1} {:>8} {:>8}",
                    connections,
                    format!("{label}{}", round + 1),
                    r.events_per_sec,
                    r.cpu_us_per_event,
                    r.p50,
                    r.p99,
                    r.p999,
                    r.rss_per_conn,
                    r.writes,
                    r.events_per_write,
                    if m == 1 {
                        r.lag_p50.to_string()
                    } else {
                        "-".into()
                    },
                    if m == 1 {
                        r.lag_p99.to_string()
                    } else {
                        "-".into()
                    },
                );
                rounds[m].push((r.events_per_sec, r.cpu_us_per_event));
                sums[m].0 += r.events_per_sec;
                sums[m].1 += r.cpu_us_per_event;
                sums[m].2 += r.rss_per_conn;
            }
        }
        let n = args.rounds as f64;
        let ratio = if args.b == "tracked" {
            "tracked/bare"
        } else {
            "B/A"
        };
        let (bare, tracked) = (sums[0], sums[1]);
        println!(
            "{:>6} summary: {ratio} events/s {:.3}, cpu/event {:.3}, rss/conn +{:.0} B",
            connections,
            tracked.0 / bare.0,
            tracked.1 / bare.1,
            (tracked.2 - bare.2) / n
        );
        // Each tracked round against the bare round just before it: this VM's speed drifts
        // over minutes, and a pair shares its moment.
        if rounds[0].len() == rounds[1].len() && !rounds[0].is_empty() {
            let pairs = || rounds[0].iter().zip(&rounds[1]);
            let events: Vec<f64> = pairs().map(|(b, t)| t.0 / b.0).collect();
            let cpu: Vec<f64> = pairs().map(|(b, t)| t.1 / b.1).collect();
            let list = |v: &[f64]| {
                v.iter()
                    .map(|r| format!("{r:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!(
                "{:>6} pairs: {ratio} events/s median {:.3} ({}), cpu/event median {:.3} ({})",
                connections,
                median(&events),
                list(&events),
                median(&cpu),
                list(&cpu)
            );
        }
    }
}
