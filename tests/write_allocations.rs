//! Short event IDs cost no allocation where every event or write would pay for one: a session
//! store's write (at low rates every event is its own write) and a history store's event (every
//! event, with replay across replicas). Counted with a counting global allocator (in its own
//! test binary so that it does not affect other tests).

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::{
    convert::Infallible,
    future::ready,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use counting::made;
use http::{Request, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::events;
use tower::{Layer, ServiceExt, service_fn};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId,
    history::{HistoryStore, MemoryHistoryStore, ReplayConfig},
    store::{LastEventId, MemoryStore, SessionStore},
    worker::WorkerConfig,
};

const FLUSH: Duration = Duration::from_millis(50);
const SESSIONS: usize = 1_000;
const TICKS: usize = 12;
/// Ticks that grow buffers once: not counted.
const WARM_UP: usize = 6;

/// UUIDs: 36 bytes, the longest common shape.
fn uuid(a: usize, b: usize) -> String {
    format!("{a:08x}-1234-4abc-8def-{b:012x}")
}

// One test (the counter is global).
#[test]
fn short_ids_allocate_nothing_per_store_write_or_history_event() {
    let rt = support::paused_runtime();
    rt.block_on(async {
        store_writes().await;
        history_events().await;
    });
}

/// A store write of a UUID allocates nothing: 1,000 sessions, a new ID each per tick.
async fn store_writes() {
    let store = MemoryStore::new();
    let layer = EventTrackingLayer::builder()
        .store(store.clone())
        .worker(WorkerConfig::default().flush_interval(FLUSH))
        .build();
    let stream = events();
    let sessions: Vec<SessionId> = (0..SESSIONS)
        .map(|i| SessionId::new(&format!("alloc-{i:06}")).unwrap())
        .collect();
    // Made before counting.
    let ids: Vec<Vec<String>> = (0..TICKS)
        .map(|tick| (0..SESSIONS).map(|i| uuid(tick, i)).collect())
        .collect();
    assert_eq!(ids[0][0].len(), 36);
    let mut counted = 0;
    let mut writes = 0;
    for (tick, ids) in ids.iter().enumerate() {
        // The first ticks grow the worker's buffers, the store's map and each slot's duplicate
        // window (once, at its fifth ID): not counted.
        let before = made();
        for (session, id) in sessions.iter().zip(ids) {
            layer.worker().record(session, &stream, Some(id));
        }
        tokio::time::sleep(FLUSH).await;
        if tick >= WARM_UP {
            counted += made() - before;
            writes += SESSIONS;
        }
    }
    let per_write = counted as f64 / writes as f64;
    println!("{counted} allocations in {writes} writes of 36-byte IDs ({per_write:.4} per write)");
    // A batch allocates once or so (its store future): 1,000 writes share it. An `Arc<str>`
    // per ID would make it 1.0 or more.
    assert!(
        per_write < 0.01,
        "{counted} allocations in {writes} writes: {per_write:.4} per write"
    );

    // Every session's newest ID was written.
    for (session, id) in sessions.iter().zip(&ids[TICKS - 1]) {
        let record = store.load(session, &stream).await.unwrap().unwrap();
        assert_eq!(record.last_event_id, LastEventId::from(id.as_str()));
    }

    // Longer IDs are shared, not held in place, and written the same.
    let long = "x".repeat(100);
    layer.worker().record(&sessions[0], &stream, Some(&long));
    tokio::time::sleep(FLUSH).await;
    let record = store.load(&sessions[0], &stream).await.unwrap().unwrap();
    assert_eq!(record.last_event_id.as_str(), Some(long.as_str()));
}

/// An event kept for a history store costs its bytes' buffer, and nothing for its ID or its
/// way to the store's outbox: one stream through the layer with replay over a
/// `MemoryHistoryStore`, one event per frame.
async fn history_events() {
    const EVENTS: usize = 2_000;
    let shared = MemoryHistoryStore::with_limits(EVENTS, 64 << 20);
    let layer = EventTrackingLayer::builder()
        .replay(ReplayConfig::default().store(shared.clone()))
        .build();
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..EVENTS)
        .map(|i| {
            let event = format!("id: {}\ndata: {{\"token\":\"lorem\"}}\n\n", uuid(1, i));
            Ok(Frame::data(Bytes::from(event)))
        })
        .collect();
    let body = Arc::new(Mutex::new(Some(StreamBody::new(
        futures_util::stream::iter(frames),
    ))));
    let svc = layer.layer(service_fn(move |_: Request<()>| {
        let body = body.lock().unwrap().take().unwrap();
        ready(Ok::<_, Infallible>(
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(body)
                .unwrap(),
        ))
    }));
    let request = Request::builder()
        .uri("/events")
        .header("mcp-session-id", "h")
        .body(())
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert!(response.body().is_tracked());
    let mut body = std::pin::pin!(response.into_body());
    // The first half grows the history's rings and the outbox: not counted.
    let (mut counted, mut read) = (0, 0);
    for i in 0..EVENTS {
        let before = made();
        let frame = body.frame().await.unwrap().unwrap();
        if i >= EVENTS / 2 {
            counted += made() - before;
            read += 1;
        }
        drop(frame);
    }
    assert!(body.frame().await.is_none());
    let per_event = counted as f64 / read as f64;
    println!(
        "{counted} allocations in {read} events kept for the history store ({per_event:.2} per event)"
    );
    // The event's bytes for the store (one `Bytes`): one. A copy of the ID joined from its
    // ring, an `Arc<str>` for it and a list per frame made it four.
    assert!(
        per_event <= 1.05,
        "{counted} allocations in {read} events: {per_event:.2} per event"
    );

    // Every event reached the store, IDs included.
    layer.flush().await.unwrap();
    let page = shared
        .read_after(&support::sid("h"), &events(), 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(page.events.len(), EVENTS);
    assert_eq!(
        page.events[EVENTS - 1].id.as_deref(),
        Some(uuid(1, EVENTS - 1).as_str())
    );
}
