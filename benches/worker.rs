//! Persistence worker costs: nanoseconds per recorded event, the extra cost of the event that
//! turns a clean session dirty (it enqueues the session), and how many events one store write
//! covers in a burst.
//!
//! What `WorkerHandle::record` measures: a lookup in the session registry (a shard's mutex and a
//! `HashMap` lookup by `SessionId`, attaching and detaching the session), then the slot update
//! (its mutex, the ID's fingerprint, a scan of the duplicate window of up to 64 entries, the ID
//! copied into the slot's buffer). Streams behind the layer pay only the slot update per event:
//! they look the session up once per request; `session/*` measures that path, through a
//! `TrackedStream` (the slot update alone). `dirty/no_id` and `dirty/new_id_no_dedup` isolate
//! parts of it. `admit/*` measures a new session key below the registry's cap and at it.
//!
//! Run with `cargo bench --bench worker`. The events-per-write figures are printed first.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group};
use tower_sse_tracking::{
    SessionId, StreamKey,
    store::{SessionRecord, SessionStore, SessionUpdate, StoreFuture},
    worker::{WorkerConfig, WorkerHandle},
};

/// A store that only counts what it is asked to write.
#[derive(Clone, Default)]
struct CountingStore(Arc<Counts>);

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    updates: AtomicU64,
}

impl SessionStore for CountingStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        self.0.calls.fetch_add(1, Ordering::Relaxed);
        self.0
            .updates
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }

    fn load<'a>(
        &'a self,
        _session: &'a SessionId,
        _stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn delete_session<'a>(&'a self, _session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The stream every event of these benches belongs to.
fn stream_key() -> StreamKey {
    StreamKey::new("/events").unwrap()
}

fn sessions(n: usize, prefix: &str) -> Vec<SessionId> {
    (0..n)
        .map(|i| SessionId::new(&format!("{prefix}-{i:08}")).unwrap())
        .collect()
}

/// Distinct IDs to cycle through: more than the duplicate window, so none is a duplicate.
fn ids() -> Vec<String> {
    (0..1024u32).map(|i| (1_000_000 + i).to_string()).collect()
}

/// A worker on a current-thread runtime that is only driven when the bench says so: between
/// `flush` calls, recorded sessions stay dirty. 10 000 sessions are registered first, so that
/// lookups happen in a realistically filled registry.
fn idle_worker(rt: &tokio::runtime::Runtime, config: WorkerConfig) -> WorkerHandle {
    let key = stream_key();
    let _enter = rt.enter();
    let worker = WorkerHandle::spawn(CountingStore::default(), config);
    for session in sessions(10_000, "filler") {
        worker.record(&session, &key, Some("1"));
    }
    rt.block_on(worker.flush()).unwrap();
    worker
}

fn record(c: &mut Criterion) {
    let key = stream_key();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ids = ids();
    let mut group = c.benchmark_group("record");
    group.throughput(Throughput::Elements(1));

    // (a) The hot path: the session is already dirty (queued), nothing is enqueued.
    let worker = idle_worker(&rt, WorkerConfig::default());
    let hot = SessionId::new("hot").unwrap();
    worker.record(&hot, &key, Some("0"));
    let mut i = 0;
    group.bench_function("dirty/new_id", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            worker.record(black_box(&hot), &key, Some(black_box(&ids[i])))
        })
    });
    // The same through a `TrackedStream`: the slot update alone, which is what a stream behind
    // the layer pays per event (it looks the session up once per request).
    let tracked = worker.stream(&hot, &key).unwrap();
    group.bench_function("session/dirty/new_id", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            tracked.record(Some(black_box(&ids[i])))
        })
    });
    group.bench_function("session/dirty/no_id", |b| b.iter(|| tracked.record(None)));
    group.bench_function("dirty/no_id", |b| {
        b.iter(|| worker.record(black_box(&hot), &key, None))
    });
    let no_dedup = idle_worker(&rt, WorkerConfig::default().dedup_window(0));
    no_dedup.record(&hot, &key, Some("0"));
    group.bench_function("dirty/new_id_no_dedup", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            no_dedup.record(black_box(&hot), &key, Some(black_box(&ids[i])))
        })
    });

    // (b) Clean to dirty: every session was just written, so each record enqueues it. Rounds
    // of 1024 sessions (the queue holds 8192), flushed between rounds outside the timing; the
    // same round-robin over dirty sessions is the baseline.
    let round = sessions(1024, "round");
    let mut next_id = 0;
    group.bench_function("clean_to_dirty/enqueue", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let n = (iters - done).min(round.len() as u64) as usize;
                rt.block_on(worker.flush()).unwrap();
                next_id = (next_id + 1) & 1023;
                let id = &ids[next_id];
                let start = Instant::now();
                for session in &round[..n] {
                    black_box(worker.record(black_box(session), &key, Some(id)));
                }
                total += start.elapsed();
                done += n as u64;
            }
            total
        })
    });
    group.bench_function("dirty/round_robin_1024", |b| {
        for session in &round {
            worker.record(session, &key, Some("0"));
        }
        let mut s = 0;
        b.iter(|| {
            s = (s + 1) & 1023;
            i = (i + 1) & 1023;
            worker.record(black_box(&round[s]), &key, Some(black_box(&ids[i])))
        })
    });
    group.finish();
}

/// (d) Admitting a new session (`WorkerHandle::session`, then dropping the handle: what a request
/// with a new session key costs in the registry), below the cap and at it, where each admission
/// forgets the least recently idle session. Both registries hold 100 000 idle, written sessions
/// when a round starts; a round admits at most 50 000 new keys, so neither changes regime.
fn admit(c: &mut Criterion) {
    let key = stream_key();
    const FILL: usize = 100_000;
    const ROUND: usize = 50_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fill = sessions(FILL, "fill");
    let fresh = sessions(ROUND, "fresh");
    let mut group = c.benchmark_group("admit");
    group.throughput(Throughput::Elements(1));
    for (name, max_sessions) in [("below_cap", 2 * FILL), ("at_cap", FILL)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = (iters - done).min(ROUND as u64) as usize;
                    let worker = {
                        let _enter = rt.enter();
                        WorkerHandle::spawn(
                            CountingStore::default(),
                            WorkerConfig::default().max_sessions(max_sessions),
                        )
                    };
                    for session in &fill {
                        worker.record(session, &key, Some("1"));
                    }
                    rt.block_on(worker.flush()).unwrap();
                    assert_eq!(worker.tracked_sessions(), FILL);
                    let start = Instant::now();
                    for session in &fresh[..n] {
                        drop(black_box(worker.stream(black_box(session), &key)));
                    }
                    total += start.elapsed();
                    assert_eq!(worker.tracked_sessions(), (FILL + n).min(max_sessions));
                    done += n as u64;
                }
                total
            })
        });
    }
    group.finish();
}

/// (c) A burst of 1 000 000 events over 1 000 sessions with default settings, recorded as fast
/// as one thread can while the worker runs on a multi-thread runtime; prints how many events
/// each store write covered.
fn events_per_write() {
    let key = stream_key();
    const EVENTS: usize = 1_000_000;
    const SESSIONS: usize = 1_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = CountingStore::default();
    let worker = {
        let _enter = rt.enter();
        WorkerHandle::spawn(store.clone(), WorkerConfig::default())
    };
    let sessions = sessions(SESSIONS, "burst");
    let mut id = String::new();
    let start = Instant::now();
    for i in 0..EVENTS {
        id.clear();
        id.push_str(itoa(i as u64, &mut [0; 20]));
        worker.record(&sessions[i % SESSIONS], &key, Some(&id));
    }
    let recorded = start.elapsed();
    rt.block_on(worker.flush()).unwrap();
    let calls = store.0.calls.load(Ordering::Relaxed);
    let updates = store.0.updates.load(Ordering::Relaxed);
    println!(
        "worker/events_per_write: {EVENTS} events over {SESSIONS} sessions in {recorded:.2?} \
         ({:.1} ns/event, default settings): {updates} session updates in {calls} save_batch \
         calls = {:.1} events per session update, {:.1} events per save_batch call",
        recorded.as_nanos() as f64 / EVENTS as f64,
        EVENTS as f64 / updates as f64,
        EVENTS as f64 / calls as f64,
    );
    rt.block_on(worker.shutdown(Duration::from_secs(5)))
        .unwrap();
}

/// Formats `n` in decimal without allocating (the burst should measure `record`, not `format!`).
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap()
}

criterion_group!(benches, record, admit);

fn main() {
    events_per_write();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
