//! Replay at the layer: what keeping every event in its stream's history costs, and how fast a
//! reconnect is answered from it.
//!
//! - `bare`, `tracked`, `replay-on`: the body of `benches/layer.rs` (10,000 events of about 60
//!   bytes, one per frame) drained bare, through the layer without replay, and with replay on
//!   (the default bounds: each history keeps the newest 1,024 events). The difference between
//!   the last two is the append to the history, per event, amortized. Each iteration appends to
//!   one of 16 sessions in turn, whose history is full: every append evicts the oldest event.
//! - `replay-on-10k`: the same with histories of 10,000 events (the bound `answer` needs): 16
//!   histories of 1 MiB each, so every append writes to memory that is no longer in cache.
//! - `answer`: a reconnect after the first event of a complete stream of 10,000 events, answered
//!   from history (no service call): the body drained, in bytes per second. This includes the
//!   layer's parse of the replayed bytes (it records the position of the reconnected client).
//!
//! - history stores (the second tier, written by the persistence worker): per store compiled in
//!   (memory; redb with `--features redb`, in a temporary directory; Redis with
//!   `--features redis`, a `redis-server` this bench starts on a free loopback port, and a
//!   three-node Redis Cluster it forms on loopback), events
//!   of ~60 bytes appended in batches of 100 as the worker hands them over, beside one append
//!   call per event, and a stream of 1,000 events read back (replay from the store) in pages
//!   of up to 1 MiB.
//!
//! A summary from interleaved runs prints both sides of every ratio. Run with
//! `cargo bench --bench replay --all-features`.

mod common;

use common::{EVENTS, drain, events, handler, median, per_event, service};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt};
use tower_sse_tracking::{EventTrackingLayer, history::ReplayConfig};

fn request(session: &str, last: Option<&str>) -> Request<()> {
    let mut req = Request::get("/events").header("mcp-session-id", session);
    if let Some(last) = last {
        req = req.header("last-event-id", last);
    }
    req.body(()).unwrap()
}

struct Setup {
    rt: Runtime,
    tracked: EventTrackingLayer,
    /// Replay with the default bounds.
    replay: EventTrackingLayer,
    /// Replay keeping 10,000 events per stream.
    long: EventTrackingLayer,
    events: Vec<Bytes>,
    total: usize,
    /// Streams made so far (each iteration a new session: a new history).
    n: std::cell::Cell<usize>,
}

impl Setup {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tracked, replay, long) = rt.block_on(async {
            (
                EventTrackingLayer::builder().build(),
                EventTrackingLayer::builder()
                    .replay(ReplayConfig::default())
                    .build(),
                EventTrackingLayer::builder()
                    .replay(
                        ReplayConfig::default()
                            .max_events(EVENTS)
                            .max_total_bytes(1 << 30),
                    )
                    .build(),
            )
        });
        let events = events();
        let total = events.iter().map(Bytes::len).sum();
        let setup = Self {
            rt,
            tracked,
            replay,
            long,
            events,
            total,
            n: std::cell::Cell::new(0),
        };
        // The complete stream that `answer` replays.
        setup.through(&setup.long, "complete");
        setup
    }

    fn bare(&self) -> Duration {
        common::bare(&self.rt, &self.events, request("s", None))
    }

    fn through(&self, layer: &EventTrackingLayer, session: &str) -> Duration {
        common::through(&self.rt, layer, &self.events, request(session, None))
    }

    fn tracked(&self) -> Duration {
        self.through(&self.tracked, "s")
    }

    /// One of 16 sessions in turn: each iteration appends 10,000 events to a full history of
    /// that session (steady state: every append evicts one).
    fn replayed(&self, layer: &EventTrackingLayer) -> Duration {
        let n = self.n.get() + 1;
        self.n.set(n);
        self.through(layer, &format!("s{}", n % 16))
    }

    /// A reconnect after the first event of the complete stream: answered from history.
    fn answer(&self) -> (Duration, usize) {
        let prepared = handler(None);
        let start = Instant::now();
        let n = self.rt.block_on(async {
            let res = self
                .long
                .layer(service(prepared))
                .oneshot(request("complete", Some("00000000")))
                .await
                .unwrap();
            assert_eq!(res.headers()["sse-replay"], "replayed");
            drain(res.into_body()).await
        });
        (start.elapsed(), n)
    }
}

fn replay(c: &mut Criterion) {
    let setup = Setup::new();
    let mut group = c.benchmark_group("replay/10k-events-60B");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.bare()).sum())
    });
    group.bench_function("tracked", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.tracked()).sum())
    });
    group.bench_function("replay-on", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.replayed(&setup.replay)).sum())
    });
    group.bench_function("replay-on-10k", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.replayed(&setup.long)).sum())
    });
    let answer_bytes = setup.answer().1;
    group.throughput(Throughput::Bytes(answer_bytes as u64));
    group.bench_function("answer-from-history", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.answer().0).sum())
    });
    group.finish();

    // Each round drains the bodies back to back, so that the differences are taken between
    // runs that saw the same machine (this one is noisy): the figures are the medians of the
    // per-round differences, with the medians of each side.
    let mut rounds = Rounds::default();
    for _ in 0..200 {
        let b = per_event(setup.bare());
        let t = per_event(setup.tracked());
        let r = per_event(setup.replayed(&setup.replay));
        let l = per_event(setup.replayed(&setup.long));
        rounds.push([b, t, r, l, r - t, r - b, l - t]);
    }
    // Apart from the rounds above: a replay reads and copies a whole history, which would
    // leave the caches cold for the next round.
    let answer = median(
        (0..100)
            .map(|_| {
                let (d, n) = setup.answer();
                n as f64 / d.as_secs_f64() / f64::from(1 << 30)
            })
            .collect(),
    );
    let [bare, tracked, replayed, long, append, over, append_long] = rounds.medians();
    println!(
        "replay: bare {bare:.1} ns/event, tracked {tracked:.1}, replay on {replayed:.1}: \
         append {append:.1} ns/event (replay on - tracked), replay on adds {over:.1} ns/event \
         over bare (medians of 200 rounds of {EVENTS} events of ~{} bytes, one per frame, \
         differences taken per round)",
        setup.total / EVENTS,
    );
    println!(
        "replay: with 10,000-event histories (cold memory): replay on {long:.1} ns/event, \
         append {append_long:.1} ns/event"
    );
    println!(
        "replay: a reconnect answered from history: {answer:.2} GiB/s ({answer_bytes} bytes, \
         parsed on the way for the client's position)"
    );
}

/// Per-round figures, in columns.
#[derive(Default)]
struct Rounds(Vec<[f64; 7]>);

impl Rounds {
    fn push(&mut self, round: [f64; 7]) {
        self.0.push(round);
    }

    fn medians(&self) -> [f64; 7] {
        std::array::from_fn(|i| median(self.0.iter().map(|r| r[i]).collect()))
    }
}

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
mod redis_server;

/// One history event of ~60 bytes.
fn history_event(stream: &str, seq: u64) -> tower_sse_tracking::history::HistoryEvent {
    let id = format!("{seq:08}");
    tower_sse_tracking::history::HistoryEvent {
        session: tower_sse_tracking::SessionId::new("bench").unwrap(),
        stream: tower_sse_tracking::StreamKey::new(stream).unwrap(),
        seq,
        bytes: Bytes::from(format!(
            "id: {id}\ndata: {{\"token\":\"lorem ipsum dolor\"}}\n\n"
        )),
        id: Some(id.into()),
        writer: 1,
    }
}

/// Per store: ns per event appended in batches of 100, ns per event appended one call each, and
/// MiB/s read back (medians of `ROUNDS` rounds, the two ways of appending alternated).
async fn store_figures<S: tower_sse_tracking::history::HistoryStore>(store: &S) -> [f64; 3] {
    const ROUNDS: usize = 7;
    const BATCHED: u64 = 1000;
    const SINGLE: u64 = 200;
    let (mut batched, mut single, mut read) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let key = format!("/batched/{round}");
        let events: Vec<_> = (1..=BATCHED).map(|i| history_event(&key, i)).collect();
        let start = Instant::now();
        for batch in events.chunks(100) {
            store.append(batch).await.unwrap();
        }
        batched.push(start.elapsed().as_nanos() as f64 / BATCHED as f64);

        let key = format!("/single/{round}");
        let events: Vec<_> = (1..=SINGLE).map(|i| history_event(&key, i)).collect();
        let start = Instant::now();
        for event in &events {
            store.append(std::slice::from_ref(event)).await.unwrap();
        }
        single.push(start.elapsed().as_nanos() as f64 / SINGLE as f64);

        let (session, stream) = (
            tower_sse_tracking::SessionId::new("bench").unwrap(),
            tower_sse_tracking::StreamKey::new(&format!("/batched/{round}")).unwrap(),
        );
        let start = Instant::now();
        let (mut after, mut bytes) = (0, 0);
        loop {
            let page = store
                .read_after(&session, &stream, after, 1 << 20)
                .await
                .unwrap();
            let Some(last) = page.events.last() else {
                break;
            };
            after = last.seq;
            bytes += page.events.iter().map(|e| e.bytes.len()).sum::<usize>();
        }
        read.push(bytes as f64 / start.elapsed().as_secs_f64() / f64::from(1 << 20));
    }
    [median(batched), median(single), median(read)]
}

/// The history stores compiled in, measured one after the other.
fn stores(_: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rows.push((
        "memory",
        rt.block_on(store_figures(
            &tower_sse_tracking::history::MemoryHistoryStore::default(),
        )),
    ));
    #[cfg(feature = "redb")]
    {
        let dir = tempfile::tempdir().unwrap();
        let store = tower_sse_tracking::history::RedbHistory::open(dir.path().join("history.redb"))
            .unwrap();
        rows.push(("redb", rt.block_on(store_figures(&store))));
    }
    #[cfg(feature = "redis")]
    {
        let server = redis_server::RedisServer::start();
        let figures = rt.block_on(async {
            let store = tower_sse_tracking::history::RedisHistory::connect(&server.url())
                .await
                .unwrap();
            store_figures(&store).await
        });
        rows.push(("redis", figures));
        // One session's events sit on one slot: this is what one shard of a cluster takes.
        let cluster = redis_server::RedisCluster::start(3, 0);
        let figures = rt.block_on(async {
            let store = tower_sse_tracking::history::RedisHistory::builder()
                .connect_cluster(cluster.urls())
                .await
                .unwrap();
            store_figures(&store).await
        });
        rows.push(("redis-cluster", figures));
    }
    println!(
        "replay: history stores, ~60-byte events (medians of 7 rounds): \
         store | batched append (100 per call) ns/event | one call per event ns/event | \
         one call / batched | read back MiB/s"
    );
    for (name, [batched, single, read]) in rows {
        println!(
            "replay: {name} | {batched:.0} | {single:.0} | {:.1}x | {read:.0}",
            single / batched
        );
    }
}

criterion_group!(benches, replay, stores);
criterion_main!(benches);
