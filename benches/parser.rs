//! Parser throughput: `SseParser` against `sse-stream` (the parser of the official Rust MCP SDK)
//! on the same bytes, cut into the same chunks.
//!
//! Both sides consume the whole input and count the events it holds; `sse-stream` is driven by
//! polling it with a no-op waker, since its input stream is always ready. After each group, a
//! summary gives MiB/s, ns/event and the ratio of the two: the mean over every iteration criterion
//! ran (warm-up included), timed by the same `iter_custom` loops criterion measured.
//!
//! Run with `cargo bench --bench parser`.

use std::cell::Cell;
use std::convert::Infallible;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use sse_stream::SseByteStream;
use tower_sse_tracking::parser::SseParser;

/// About 1 MiB of small events of about 60 bytes each.
fn small_events() -> Vec<u8> {
    let mut input = Vec::with_capacity((1 << 20) + 128);
    let mut n = 10_000u32;
    while input.len() < 1 << 20 {
        let event = format!("id: {n}\nevent: message\ndata: {{\"seq\":{n},\"msg\":\"hello\"}}\n\n");
        input.extend_from_slice(event.as_bytes());
        n += 1;
    }
    input
}

/// About 4 MiB of events carrying one `data` line of about 40 KB each.
fn large_events() -> Vec<u8> {
    let mut payload = String::from("{");
    let mut k = 0;
    while payload.len() < 40_000 {
        payload.push_str(&format!("\"key{k}\":\"value {k} of a large event\","));
        k += 1;
    }
    payload.push_str("\"end\":true}");
    let mut input = Vec::with_capacity((4 << 20) + payload.len());
    let mut n = 0u32;
    while input.len() < 4 << 20 {
        input.extend_from_slice(format!("id: {n}\ndata: {payload}\n\n").as_bytes());
        n += 1;
    }
    input
}

/// Our parser: feeds every chunk, counts events and keeps the last event ID observable.
fn ours(chunks: &[&[u8]]) -> usize {
    let mut parser = SseParser::new();
    let mut events = 0;
    for chunk in chunks {
        parser.feed(chunk, |d| events += usize::from(d.is_event()));
    }
    black_box(parser.last_event_id());
    events
}

/// `sse-stream` over the same borrowed chunks (`&[u8]` is a `Buf`, so nothing is copied going in).
fn theirs(chunks: &[&[u8]]) -> usize {
    let input = futures_util::stream::iter(chunks.iter().map(|c| Ok::<_, Infallible>(*c)));
    let mut stream = SseByteStream::new(input);
    let mut cx = Context::from_waker(Waker::noop());
    let mut events = 0;
    let mut last_id = None;
    loop {
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(sse))) => {
                events += usize::from(sse.data.is_some());
                if sse.id.is_some() {
                    last_id = sse.id;
                }
            }
            Poll::Ready(Some(Err(e))) => panic!("sse-stream failed: {e}"),
            Poll::Ready(None) => break,
            Poll::Pending => unreachable!("the input stream is always ready"),
        }
    }
    black_box(last_id);
    events
}

/// Total iterations and time of one benchmark function, over all of criterion's runs.
#[derive(Default)]
struct Tally {
    iters: Cell<u64>,
    time: Cell<Duration>,
}

impl Tally {
    fn time(&self, iters: u64, mut routine: impl FnMut()) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            routine();
        }
        let elapsed = start.elapsed();
        self.iters.set(self.iters.get() + iters);
        self.time.set(self.time.get() + elapsed);
        elapsed
    }

    /// Mean nanoseconds per iteration, if the function ran.
    fn ns_per_iter(&self) -> Option<f64> {
        let iters = self.iters.get();
        (iters > 0).then(|| self.time.get().as_nanos() as f64 / iters as f64)
    }
}

fn compare(c: &mut Criterion, name: &str, input: &[u8], chunk_size: Option<usize>) {
    let chunks: Vec<&[u8]> = match chunk_size {
        Some(size) => input.chunks(size).collect(),
        None => vec![input],
    };
    let events = ours(&chunks);
    assert_eq!(theirs(&chunks), events, "{name}: the parsers disagree");

    let (ours_tally, theirs_tally) = (Tally::default(), Tally::default());
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("tower_sse_tracking", |b| {
        b.iter_custom(|iters| {
            ours_tally.time(iters, || assert_eq!(ours(black_box(&chunks)), events))
        })
    });
    group.bench_function("sse_stream", |b| {
        b.iter_custom(|iters| {
            theirs_tally.time(iters, || assert_eq!(theirs(black_box(&chunks)), events))
        })
    });
    group.finish();

    let mib_per_s = |ns: f64| input.len() as f64 / ns * 1e9 / f64::from(1 << 20);
    let describe = |ns: f64| {
        format!(
            "{:8.1} MiB/s {:7.1} ns/event",
            mib_per_s(ns),
            ns / events as f64
        )
    };
    if let (Some(o), Some(t)) = (ours_tally.ns_per_iter(), theirs_tally.ns_per_iter()) {
        println!(
            "summary {name}: {} bytes, {events} events, {} chunks\n  \
             tower_sse_tracking {}\n  sse_stream         {}\n  ours/theirs throughput x{:.2}\n",
            input.len(),
            chunks.len(),
            describe(o),
            describe(t),
            t / o,
        );
    }
}

fn parser(c: &mut Criterion) {
    let small = small_events();
    let large = large_events();
    compare(c, "parser/small_events", &small, None);
    compare(c, "parser/large_events", &large, None);
    compare(c, "parser/small_events_7_byte_chunks", &small, Some(7));
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = parser
}
criterion_main!(benches);
