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
//! A summary from interleaved runs prints both sides of every ratio. Run with
//! `cargo bench --bench replay`.

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

criterion_group!(benches, replay);
criterion_main!(benches);
