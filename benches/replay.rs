//! Replay at the layer: what keeping every event in its stream's history costs, and how fast a
//! reconnect is answered from it.
//!
//! - `layer/*`: the body of `benches/layer.rs` (10,000 events of about 60 bytes, one per frame)
//!   drained bare, through the layer without replay, and with replay on. The difference between
//!   the last two is the append to the history, per event, amortized (the ring's growth
//!   included: each iteration is a new stream, whose ring grows from empty).
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
    replay: EventTrackingLayer,
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
        let (tracked, replay) = rt.block_on(async {
            (
                EventTrackingLayer::builder().build(),
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
            events,
            total,
            n: std::cell::Cell::new(0),
        };
        // The complete stream that `answer` replays.
        setup.through(&setup.replay, "complete");
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

    /// One of 16 sessions in turn: each iteration appends 10,000 events to a history that
    /// holds the previous 10,000 of that session (steady state: every append evicts one).
    fn replayed(&self) -> Duration {
        let n = self.n.get() + 1;
        self.n.set(n);
        self.through(&self.replay, &format!("s{}", n % 16))
    }

    /// A reconnect after the first event of the complete stream: answered from history.
    fn answer(&self) -> (Duration, usize) {
        let prepared = handler(None);
        let start = Instant::now();
        let n = self.rt.block_on(async {
            let res = self
                .replay
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
        b.iter_custom(|iters| (0..iters).map(|_| setup.replayed()).sum())
    });
    let answer_bytes = setup.answer().1;
    group.throughput(Throughput::Bytes(answer_bytes as u64));
    group.bench_function("answer-from-history", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.answer().0).sum())
    });
    group.finish();

    let (mut bare, mut tracked, mut replayed, mut answer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..100 {
        bare.push(per_event(setup.bare()));
        tracked.push(per_event(setup.tracked()));
        replayed.push(per_event(setup.replayed()));
        let (d, n) = setup.answer();
        answer.push(n as f64 / d.as_secs_f64() / f64::from(1 << 30));
    }
    let (bare, tracked, replayed, answer) = (
        median(bare),
        median(tracked),
        median(replayed),
        median(answer),
    );
    println!(
        "replay: bare {bare:.1} ns/event, tracked {tracked:.1}, replay on {replayed:.1}: \
         append {:.1} ns/event (replay on - tracked), replay on adds {:.1} ns/event over bare \
         (median of 100 interleaved runs of {EVENTS} events of ~{} bytes, one per frame)",
        replayed - tracked,
        replayed - bare,
        setup.total / EVENTS,
    );
    println!(
        "replay: a reconnect answered from history: {answer:.2} GiB/s ({answer_bytes} bytes, \
         parsed on the way for the client's position)"
    );
}

criterion_group!(benches, replay);
criterion_main!(benches);
