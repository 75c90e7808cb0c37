//! Cost of the layer per event when every event finds its stream cold: the end-to-end
//! harness's slow-stream case (C = 1,000 connections, 20 events/s each: one event per session
//! per flush interval) in process, without the network.
//!
//! 10,000 open streams of as many sessions, each fed through a channel, get one event each per
//! round, in turn, and each event is read as it arrives (after it the stream is idle again). By
//! the time a stream's next event comes, its state, its slot and its store record have left the
//! cache, as they have in a server holding many slow connections. After each round the tracked
//! side waits one flush interval, in which the worker's paced tick writes every session: tokio's
//! clock is paused, so the interval passes at once and the time measured is the tick's work. As
//! in the harness at C = 1,000, sessions written on consecutive ticks stay with the worker, and
//! their streams queue nothing. The worker's queue can hold every session, since here it runs
//! only between rounds.
//!
//! A summary line gives ns/event for both sides, the difference, and the worker's share of it
//! (medians of interleaved rounds). Run with `cargo bench --bench cold`.

// Only its `median` is used here.
#[allow(dead_code)]
mod common;

use common::median;
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, header};
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey, store::MemoryStore, worker::WorkerConfig,
};

/// Open streams (and sessions) on each side.
const STREAMS: usize = 10_000;

/// Interleaved rounds measured per side, after the first `WARM_UP` (which admit the sessions,
/// fill the store and see each session's duplicate window freed).
const ROUNDS: usize = 50;
const WARM_UP: usize = 20;

/// The worker's flush interval (its default), on tokio's paused clock.
const FLUSH: Duration = Duration::from_millis(50);

/// A body fed through a channel, one frame per message: an open stream that gets an event now
/// and then.
struct Channel(mpsc::UnboundedReceiver<Bytes>);

impl Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

type Open = Vec<(
    mpsc::UnboundedSender<Bytes>,
    Pin<Box<dyn Body<Data = Bytes, Error = Infallible> + Send>>,
)>;

fn session(i: usize) -> String {
    format!("cold-session-{i:06}")
}

/// `STREAMS` open streams of as many sessions, through `layer` or bare.
async fn open(layer: Option<&EventTrackingLayer>) -> Open {
    let next: Arc<Mutex<Option<Channel>>> = Arc::default();
    let handler = {
        let next = next.clone();
        service_fn(move |_req: Request<()>| {
            let body = next.lock().unwrap().take().expect("one call per body");
            let res = Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(body)
                .unwrap();
            std::future::ready(Ok::<_, Infallible>(res))
        })
    };
    let mut tracked = layer.map(|l| l.layer(handler.clone()));
    let mut open: Open = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let (tx, rx) = mpsc::unbounded_channel();
        *next.lock().unwrap() = Some(Channel(rx));
        let req = Request::builder()
            .header("mcp-session-id", session(i))
            .body(())
            .unwrap();
        let body: Pin<Box<dyn Body<Data = Bytes, Error = Infallible> + Send>> = match &mut tracked {
            Some(service) => {
                let res = service.ready().await.unwrap().call(req).await.unwrap();
                assert!(res.body().is_tracked());
                Box::pin(res.into_body())
            }
            None => Box::pin(handler.clone().oneshot(req).await.unwrap().into_body()),
        };
        open.push((tx, body));
    }
    open
}

/// Round `r`'s event: a new ID every round, about as long as the end-to-end harness's.
fn event(r: usize) -> Bytes {
    let t = 1_700_000_000_000_000 + r as u64;
    Bytes::from(format!("id: {r}-{t}\ndata: {t} xxxxxxxxxxxxxxxxxxxx\n\n"))
}

/// One round: an event to every stream in turn, each read as it arrives (then the stream is
/// idle again), then, for the tracked side, one flush interval, in which the worker's tick
/// writes them. Returns ns per event for the two parts.
async fn round(open: &mut Open, event: &Bytes, tracked: bool) -> (f64, f64) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let start = Instant::now();
    for (tx, body) in open.iter_mut() {
        tx.send(event.clone()).unwrap();
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                assert_eq!(frame.data_ref().map(Bytes::len), Some(event.len()));
            }
            other => panic!("an event was sent, the body gave {other:?}"),
        }
        assert!(body.as_mut().poll_frame(&mut cx).is_pending());
    }
    let read = start.elapsed();
    if tracked {
        tokio::time::sleep(FLUSH).await;
    }
    let per_event = |d: Duration| d.as_nanos() as f64 / open.len() as f64;
    (per_event(read), per_event(start.elapsed() - read))
}

fn cold_streams(_c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let store = MemoryStore::new();
    rt.block_on(async {
        let layer = EventTrackingLayer::builder()
            .store(store.clone())
            .worker(
                WorkerConfig::default()
                    .queue_capacity(2 * STREAMS)
                    .flush_interval(FLUSH),
            )
            .build();
        let mut bare = open(None).await;
        let mut tracked = open(Some(&layer)).await;
        let (mut b, mut t, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..WARM_UP + ROUNDS {
            let event = event(r);
            // Unconstrained: tokio's cooperative budget would otherwise have the channels
            // answer `Pending` after 128 receives in one task poll.
            let (bare, _) = tokio::task::unconstrained(round(&mut bare, &event, false)).await;
            let (read, written) =
                tokio::task::unconstrained(round(&mut tracked, &event, true)).await;
            b.push(bare);
            t.push(read + written);
            w.push(written);
        }
        let (b, t, w) = (
            median(b.split_off(WARM_UP)),
            median(t.split_off(WARM_UP)),
            median(w.split_off(WARM_UP)),
        );
        println!(
            "cold: {STREAMS} open streams, one event each per flush interval: bare {b:.1} \
             ns/event, tracked {t:.1} ns/event, added {:.1} ns/event, of which the worker's \
             writes {w:.1} ns/event (medians of {ROUNDS} interleaved rounds)",
            t - b
        );

        // Every session was tracked and its last event ID written.
        assert_eq!(layer.worker().tracked_sessions(), STREAMS);
        layer.flush().await.unwrap();
        let r = WARM_UP + ROUNDS - 1;
        let last = format!("{r}-{}", 1_700_000_000_000_000 + r as u64);
        let stream = StreamKey::new("/").unwrap();
        for i in 0..STREAMS {
            let session = SessionId::new(&session(i)).unwrap();
            let record = store.get(&session, &stream).expect("every session written");
            assert_eq!(record.last_event_id.as_str(), Some(last.as_str()));
        }
    });
}

criterion_group!(benches, cold_streams);
criterion_main!(benches);
