//! Store write latency: one `save_batch` of 1, 100 and 1000 updates, beside a naive loop that
//! writes the same updates one `save_batch(&[update])` call at a time, on the same store in the
//! same run. Every iteration carries a newer version, so every update really replaces the ID.
//!
//! - `memory`: the in-process map (one lock per call).
//! - `redb` (feature `redb`): a file in a temporary directory; one write transaction and one
//!   `fsync` per call.
//! - `redis-cluster` (feature `redis`): a three-node Redis Cluster this bench forms on loopback
//!   (`redis-cli --cluster create`); the summary compares its batched updates per second with
//!   the single node's.
//! - `redis` (feature `redis`): a `redis-server` this bench starts on a free loopback port (from
//!   `PATH`, as the tests do); one round trip per call.
//!
//! - `history-redis` and `history-redis-cluster` (feature `redis`): `RedisHistory` appending
//!   batches of 100 and 1,000 events of ~60 bytes, ten per session, on one node and on the
//!   cluster.
//!
//! Run with `cargo bench --bench stores --all-features`. After the criterion output, a table
//! gives the time per update of both ways and the ratio naive / batched, then batched updates
//! (and history appends) per second, one node against the cluster.

use std::{
    cell::Cell,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput};
use tokio::runtime::Runtime;
use tower_sse_tracking::{
    SessionId, StreamKey,
    store::{LastEventId, MemoryStore, SessionStore, SessionUpdate},
};

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
mod redis_server;

const SIZES: [usize; 3] = [1, 100, 1000];

/// Criterion group names, one per store compiled in.
fn groups() -> Vec<&'static str> {
    let mut groups = vec!["stores-memory"];
    if cfg!(feature = "redb") {
        groups.push("stores-redb");
    }
    if cfg!(feature = "redis") {
        groups.push("stores-redis");
        groups.push("stores-redis-cluster");
    }
    groups
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `n` updates of sessions `bench-0..n`, all with the next version (so each one is applied).
fn updates(sessions: &[SessionId], version: &Cell<u64>) -> Vec<SessionUpdate> {
    let v = version.get() + 1;
    version.set(v);
    let now = SystemTime::now();
    let id = LastEventId::from(format!("event-{v}").as_str());
    sessions
        .iter()
        .map(|session| SessionUpdate {
            session: session.clone(),
            stream: StreamKey::new("/events").unwrap(),
            last_event_id: id.clone(),
            version: v,
            last_activity: now,
        })
        .collect()
}

/// Benchmarks `batched/n` and `naive/n` for every size on `store`.
fn bench_store<S: SessionStore>(
    c: &mut Criterion,
    group: &str,
    store: &S,
    rt: &Runtime,
    slow: bool,
) {
    let mut group = c.benchmark_group(group);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    if slow {
        // Each call syncs to disk or crosses the network: the same few iterations per sample,
        // and room for ten samples of the slowest case (1000 fsyncs, about 0.3 s).
        group
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs(3));
    }
    let version = Cell::new(0);
    for n in SIZES {
        let sessions: Vec<_> = (0..n)
            .map(|i| SessionId::new(&format!("bench-{i}")).unwrap())
            .collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("batched", n), |b| {
            b.iter_batched(
                || updates(&sessions, &version),
                |batch| rt.block_on(store.save_batch(&batch)).unwrap(),
                BatchSize::SmallInput,
            );
        });
        group.bench_function(BenchmarkId::new("naive", n), |b| {
            b.iter_batched(
                || updates(&sessions, &version),
                |batch| {
                    rt.block_on(async {
                        for update in &batch {
                            store
                                .save_batch(std::slice::from_ref(update))
                                .await
                                .unwrap();
                        }
                    });
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn memory(c: &mut Criterion) {
    let rt = runtime();
    bench_store(c, "stores-memory", &MemoryStore::new(), &rt, false);
}

#[cfg(feature = "redb")]
fn redb(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store = tower_sse_tracking::store::RedbStore::open(dir.path().join("bench.redb")).unwrap();
    bench_store(c, "stores-redb", &store, &rt, true);
}

#[cfg(feature = "redis")]
fn redis(c: &mut Criterion) {
    let rt = runtime();
    let server = redis_server::RedisServer::start();
    let store = rt
        .block_on(
            tower_sse_tracking::store::RedisStore::builder()
                .prefix("bench:")
                .connect(&server.url()),
        )
        .unwrap();
    bench_store(c, "stores-redis", &store, &rt, true);
}

/// The same on a three-node Redis Cluster on loopback (three primaries, no replicas): sessions
/// spread over the shards, a batch split by slot.
#[cfg(feature = "redis")]
fn redis_cluster(c: &mut Criterion) {
    let rt = runtime();
    let cluster = redis_server::RedisCluster::start(3, 0);
    let store = rt
        .block_on(
            tower_sse_tracking::store::RedisStore::builder()
                .prefix("bench:")
                .connect_cluster(cluster.urls()),
        )
        .unwrap();
    bench_store(c, "stores-redis-cluster", &store, &rt, true);
}

/// `n` history events of ~60 bytes, ten per session (as a flush interval of an LLM token
/// stream hands them over), each session's `seq` going on from the previous iteration's.
#[cfg(feature = "redis")]
fn history_events(n: usize, seq: &Cell<u64>) -> Vec<tower_sse_tracking::history::HistoryEvent> {
    let base = seq.get();
    seq.set(base + 10);
    (0..n)
        .map(|i| {
            let s = base + 1 + (i % 10) as u64;
            let id = format!("{s:08}");
            tower_sse_tracking::history::HistoryEvent {
                session: SessionId::new(&format!("bench-{}", i / 10)).unwrap(),
                stream: StreamKey::new("/events").unwrap(),
                seq: s,
                bytes: bytes::Bytes::from(format!(
                    "id: {id}\ndata: {{\"token\":\"lorem ipsum dolor\"}}\n\n"
                )),
                id: Some(id.into()),
                writer: 1,
            }
        })
        .collect()
}

/// `history/batched/n`: one `append` of `n` events (ten per session) on a history store.
#[cfg(feature = "redis")]
fn bench_history<H: tower_sse_tracking::history::HistoryStore>(
    c: &mut Criterion,
    group: &str,
    store: &H,
    rt: &Runtime,
) {
    let mut group = c.benchmark_group(group);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sampling_mode(SamplingMode::Flat);
    let seq = Cell::new(0);
    for n in [100, 1000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("batched", n), |b| {
            b.iter_batched(
                || history_events(n, &seq),
                |batch| rt.block_on(store.append(&batch)).unwrap(),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// `RedisHistory` on one node and on the three-node cluster.
#[cfg(feature = "redis")]
fn redis_history(c: &mut Criterion) {
    let rt = runtime();
    let server = redis_server::RedisServer::start();
    let store = rt
        .block_on(
            tower_sse_tracking::history::RedisHistory::builder()
                .prefix("bench-history:")
                .connect(&server.url()),
        )
        .unwrap();
    bench_history(c, "history-redis", &store, &rt);
    let cluster = redis_server::RedisCluster::start(3, 0);
    let store = rt
        .block_on(
            tower_sse_tracking::history::RedisHistory::builder()
                .prefix("bench-history:")
                .connect_cluster(cluster.urls()),
        )
        .unwrap();
    bench_history(c, "history-redis-cluster", &store, &rt);
}

/// Where criterion keeps its results.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    PathBuf::from(target).join("criterion")
}

/// The mean time of one iteration, in nanoseconds, from criterion's `estimates.json`.
fn mean_ns(group: &str, function: &str, n: usize) -> Option<f64> {
    let path = criterion_dir()
        .join(group)
        .join(function)
        .join(n.to_string())
        .join("new/estimates.json");
    let json = std::fs::read_to_string(path).ok()?;
    let mean = &json[json.find("\"mean\"")?..];
    let value = &mean[mean.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

fn human(ns: f64) -> String {
    match ns {
        ns if ns >= 1e6 => format!("{:.2} ms", ns / 1e6),
        ns if ns >= 1e3 => format!("{:.2} µs", ns / 1e3),
        ns => format!("{ns:.0} ns"),
    }
}

/// Per-update latency of both ways and their ratio, from the results just measured.
fn summary() {
    println!();
    println!(
        "{:<14} {:>5} {:>16} {:>16} {:>14}",
        "store", "batch", "batched/update", "naive/update", "naive/batched"
    );
    for group in groups() {
        for n in SIZES {
            let (Some(batched), Some(naive)) =
                (mean_ns(group, "batched", n), mean_ns(group, "naive", n))
            else {
                continue;
            };
            let per = n as f64;
            println!(
                "{:<14} {:>5} {:>16} {:>16} {:>13.1}x",
                group.trim_start_matches("stores-"),
                n,
                human(batched / per),
                human(naive / per),
                naive / batched
            );
        }
    }
}

/// Updates per second through one Redis and through the cluster, batched, from this run.
fn cluster_summary() {
    println!();
    println!(
        "{:>5} {:>22} {:>22} {:>16}",
        "batch", "one node, updates/s", "3-node cluster, updates/s", "cluster / node"
    );
    for (what, node_group, cluster_group) in [
        ("session updates", "stores-redis", "stores-redis-cluster"),
        ("history appends", "history-redis", "history-redis-cluster"),
    ] {
        for n in [100, 1000] {
            let (Some(node), Some(cluster)) = (
                mean_ns(node_group, "batched", n),
                mean_ns(cluster_group, "batched", n),
            ) else {
                continue;
            };
            let per_second = |ns: f64| n as f64 / (ns / 1e9);
            println!(
                "{:>5} {:>22.0} {:>22.0} {:>15.2}x  {what}",
                n,
                per_second(node),
                per_second(cluster),
                per_second(cluster) / per_second(node)
            );
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    memory(&mut c);
    #[cfg(feature = "redb")]
    redb(&mut c);
    #[cfg(feature = "redis")]
    redis(&mut c);
    #[cfg(feature = "redis")]
    redis_cluster(&mut c);
    #[cfg(feature = "redis")]
    redis_history(&mut c);
    c.final_summary();
    summary();
    if cfg!(feature = "redis") {
        cluster_summary();
    }
}
