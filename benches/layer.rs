//! Cost of the layer per event: the same body of 10,000 small events (about 60 bytes each, one
//! event per frame, as axum emits them) drained bare and through the layer's `TrackingBody`.
//!
//! Each iteration calls the service once through `oneshot` and drains the body with
//! `BodyExt::frame`; the only difference between the two sides is the layer. Between
//! iterations (outside the measured time) the worker is flushed, so every iteration pays for the
//! one queue send of a session turning dirty, as a live stream does once per flush interval.
//! A summary line gives ns/event for both, the difference, and the parser's share of it.
//!
//! Run with `cargo bench --bench layer`.

mod common;

use common::{EVENTS, events, median, per_event};
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use tokio::runtime::Runtime;
use tower_sse_tracking::{EventTrackingLayer, parser::SseParser, store::MemoryStore};

fn request() -> Request<()> {
    Request::builder()
        .header("mcp-session-id", "bench-session")
        .body(())
        .unwrap()
}

struct Setup {
    rt: Runtime,
    layer: EventTrackingLayer,
    /// The same with heartbeats on (the idle timer is reset on every frame).
    beating: EventTrackingLayer,
    events: Vec<Bytes>,
    total: usize,
}

impl Setup {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (layer, beating) = rt.block_on(async {
            let layer = EventTrackingLayer::builder()
                .store(MemoryStore::new())
                .build();
            let beating = EventTrackingLayer::builder()
                .store(MemoryStore::new())
                .heartbeat(Duration::from_secs(15))
                .build();
            (layer, beating)
        });
        let events = events();
        let total = events.iter().map(Bytes::len).sum();
        Self {
            rt,
            layer,
            beating,
            events,
            total,
        }
    }

    /// Time to call the service and drain one body, bare.
    fn bare(&self) -> Duration {
        common::bare(&self.rt, &self.events, request())
    }

    /// Time to call the service and drain one body, through the layer.
    fn tracked(&self) -> Duration {
        self.through(&self.layer)
    }

    /// The same, with heartbeats on.
    fn tracked_with_heartbeats(&self) -> Duration {
        self.through(&self.beating)
    }

    fn through(&self, layer: &EventTrackingLayer) -> Duration {
        common::through(&self.rt, layer, &self.events, request())
    }
}

impl Setup {
    /// For comparison: the parser alone over the same frames (its share of the layer's cost).
    fn parse_only(&self) -> Duration {
        let start = Instant::now();
        let mut parser = SseParser::new();
        let mut ids = 0usize;
        for frame in &self.events {
            parser.feed(frame, |d| ids += usize::from(d.id_set()));
        }
        black_box(parser.last_event_id());
        let elapsed = start.elapsed();
        assert_eq!(ids, EVENTS);
        elapsed
    }
}

fn layer_overhead(c: &mut Criterion) {
    let setup = Setup::new();
    let mut group = c.benchmark_group("layer/10k-events-60B");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("bare", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.bare()).sum())
    });
    group.bench_function("tracked", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.tracked()).sum())
    });
    group.bench_function("tracked+heartbeat", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.tracked_with_heartbeats()).sum())
    });
    group.bench_function("parser-only", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| setup.parse_only()).sum())
    });
    group.finish();

    // A summary from interleaved runs, so that both sides see the same machine state.
    let (mut bare, mut tracked, mut beating, mut parse) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..200 {
        bare.push(per_event(setup.bare()));
        tracked.push(per_event(setup.tracked()));
        beating.push(per_event(setup.tracked_with_heartbeats()));
        parse.push(per_event(setup.parse_only()));
    }
    let (bare, tracked, beating, parse) = (
        median(bare),
        median(tracked),
        median(beating),
        median(parse),
    );
    println!(
        "layer: bare {bare:.1} ns/event, tracked {tracked:.1} ns/event, added {:.1} ns/event, \
         of which parsing {parse:.1} ns/event (median of 200 interleaved runs of {EVENTS} \
         events of ~{} bytes, one per frame)",
        tracked - bare,
        setup.total / EVENTS,
    );
    println!(
        "layer: with heartbeats on, tracked {beating:.1} ns/event, added {:.1} ns/event",
        beating - bare
    );
}

criterion_group!(benches, layer_overhead);
criterion_main!(benches);
