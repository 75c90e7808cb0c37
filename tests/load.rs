//! The load test of the original plan: 1,000 events/s for 5 s over 100 sessions, through a real
//! axum server on loopback with the layer and its worker, read by 100 real HTTP connections.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Empty};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey, metrics as m, parser::SseParser, store::MemoryStore,
    worker::WorkerConfig,
};

const SESSIONS: usize = 100;
const EVENTS_PER_SESSION: u64 = 50;
/// 100 sessions x 10 events/s = 1,000 events/s, for 5 s.
const PERIOD: Duration = Duration::from_millis(100);
const QUEUE_CAPACITY: usize = 64;

async fn events() -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let mut interval = tokio::time::interval(PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    Sse::new(stream::unfold(
        (interval, 1u64),
        |(mut interval, n)| async move {
            if n > EVENTS_PER_SESSION {
                return None;
            }
            interval.tick().await;
            let event = Event::default().id(n.to_string()).data("x".repeat(40));
            Some((Ok(event), (interval, n + 1)))
        },
    ))
}

/// Metrics seen over the run. The debugging recorder's snapshots drain counters, so every
/// snapshot is folded in here.
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    max_queue_depth: f64,
}

impl Seen {
    fn fold(&mut self, snapshotter: &Snapshotter) {
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            match value {
                DebugValue::Counter(c) => *self.counters.entry(name).or_default() += c,
                DebugValue::Gauge(g) if name == m::QUEUE_DEPTH => {
                    self.max_queue_depth = self.max_queue_depth.max(g.into_inner());
                }
                _ => {}
            }
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

#[test]
fn thousand_events_per_second_for_five_seconds_over_100_sessions() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let metrics = runtime_metrics();
        let tasks_before = metrics.num_alive_tasks();
        let store = MemoryStore::new();
        let tracking = EventTrackingLayer::builder()
            .store(store.clone())
            .session_header(http::HeaderName::from_static("mcp-session-id"))
            .worker(WorkerConfig::default().queue_capacity(QUEUE_CAPACITY))
            .build();
        assert_eq!(
            metrics.num_alive_tasks(),
            tasks_before + 1,
            "build() spawns exactly one task"
        );

        // axum clones the layer for every route: still no new task.
        let app = Router::new()
            .route("/events", get(events))
            .route("/other", get(events))
            .layer(tracking.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        // Sample the queue depth while the load runs.
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let done = done.clone();
            let snapshotter = snapshotter.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                while !done.load(Ordering::Relaxed) {
                    seen.fold(&snapshotter);
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen.fold(&snapshotter);
                seen
            })
        };

        assert_eq!(metrics.num_alive_tasks(), tasks_before + 2, "worker + server");
        let started = std::time::Instant::now();
        let clients: Vec<_> = (0..SESSIONS)
            .map(|i| tokio::spawn(read_all(addr, format!("load-{i}"))))
            .collect();
        let mut received = 0;
        for client in clients {
            received += tokio::time::timeout(Duration::from_secs(30), client)
                .await
                .expect("client finished in time")
                .unwrap();
        }
        let elapsed = started.elapsed();
        assert_eq!(received, SESSIONS as u64 * EVENTS_PER_SESSION);
        assert!(
            elapsed >= Duration::from_millis(4500),
            "the load lasted about 5 s: {elapsed:?}"
        );

        let report = tracking.shutdown(Duration::from_secs(10)).await.unwrap();
        done.store(true, Ordering::Relaxed);
        let seen = sampler.join().unwrap();
        assert!(report.unpersisted().is_empty(), "{report:?}");
        for i in 0..SESSIONS {
            let session = SessionId::new(&format!("load-{i}")).unwrap();
            let record = store.get(&session, &StreamKey::new("/events").unwrap()).expect("persisted");
            assert_eq!(
                record.last_event_id.as_str(),
                Some(EVENTS_PER_SESSION.to_string().as_str()),
                "{session}"
            );
        }
        let max_depth = seen.max_queue_depth;
        assert!(
            max_depth <= QUEUE_CAPACITY as f64,
            "queue depth {max_depth} above its bound"
        );
        let persisted = seen.counter(m::PERSISTED);
        let events = seen.counter(m::EVENTS);
        assert_eq!(events, SESSIONS as u64 * EVENTS_PER_SESSION, "every event counted");
        assert!(persisted >= SESSIONS as u64, "{persisted} writes");
        // At 10 events/s per session and a 50 ms flush interval most events get a write of their
        // own; never more than one write per event.
        assert!(
            persisted <= events,
            "{persisted} writes for {events} events"
        );
        println!(
            "load: {received} events in {elapsed:?}, {persisted} store writes, max queue depth {max_depth}, overflow parked {}",
            seen.counter(m::OVERFLOW_PARKED)
        );
        server.abort();
    });
}

fn runtime_metrics() -> tokio::runtime::RuntimeMetrics {
    tokio::runtime::Handle::current().metrics()
}

/// Reads one session's whole stream; returns the number of events.
async fn read_all(addr: std::net::SocketAddr, session: String) -> u64 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!("http://{addr}/events"))
        .header("mcp-session-id", session)
        .body(Empty::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    let mut parser = SseParser::new();
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            parser.feed(data, |d| events += u64::from(d.is_event()));
        }
    }
    events
}
