//! A flood of session keys: client input must not buy unbounded memory or work.
//!
//! 250,000 distinct session keys go through the layer with its defaults (100,000 sessions in
//! memory, a `MemoryStore` of 100,000) while one existing session streams live. Every body must
//! arrive byte for byte, both maps stay within their caps at every sample, each admission at the
//! cap looks at a bounded number of sessions, new clients keep being tracked, and the live
//! session loses nothing.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt, service_fn};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey, store::MemoryStore, worker::WorkerConfig,
};

const FLOOD: usize = 250_000;
const IN_FLIGHT: usize = 64;
const CAP: usize = 100_000;

type Body = BoxBody<Bytes, Infallible>;

fn sse(body: Body) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .unwrap()
}

/// The bytes the flood's `i`th response carries, in two frames split at `i % len`.
fn flood_event(i: usize) -> Vec<u8> {
    format!("id: {i}\ndata: flood {i}\n\n").into_bytes()
}

#[test]
fn a_flood_of_new_session_keys_is_bounded_and_starves_no_stream() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(flood());
}

async fn flood() {
    // Defaults everywhere: that is what a new user runs.
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .worker(WorkerConfig::default())
        .build();

    // `/live` streams from a channel; every other path answers one short event.
    let (live_tx, live_rx) = mpsc::channel::<Bytes>(1024);
    let live_rx = Arc::new(std::sync::Mutex::new(Some(live_rx)));
    let service = tracking.layer(service_fn(move |req: Request<()>| {
        let live_rx = live_rx.clone();
        async move {
            if req.uri().path() == "/live" {
                let rx = live_rx.lock().unwrap().take().expect("one live stream");
                let frames = stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
                });
                return Ok::<_, Infallible>(sse(BodyExt::boxed(StreamBody::new(frames))));
            }
            let i: usize = req.uri().path()[1..].parse().unwrap();
            let bytes = flood_event(i);
            let (a, b) = bytes.split_at(i % bytes.len());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(a))),
                Ok(Frame::data(Bytes::copy_from_slice(b))),
            ];
            Ok(sse(BodyExt::boxed(StreamBody::new(stream::iter(frames)))))
        }
    }));

    // The live session connects first.
    let live_session = SessionId::new("live-session").unwrap();
    let live = service
        .clone()
        .oneshot(
            Request::get("/live")
                .header("mcp-session-id", live_session.as_str())
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(live.body().is_tracked());
    let reader = tokio::spawn(async move { live.into_body().collect().await.unwrap().to_bytes() });

    // Its producer sends an event every 2 ms for as long as the flood runs.
    let flooding = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn({
        let flooding = flooding.clone();
        async move {
            let mut sent = Vec::new();
            let mut n = 0usize;
            while flooding.load(Ordering::Relaxed) || n < 10 {
                let event = format!("id: live-{n}\ndata: still here\n\n");
                sent.extend_from_slice(event.as_bytes());
                live_tx.send(Bytes::from(event)).await.unwrap();
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (sent, n)
        }
    });

    // Both maps stay within their caps at every sample.
    let sampler = tokio::spawn({
        let flooding = flooding.clone();
        let worker = tracking.worker().clone();
        let store = store.clone();
        async move {
            let mut samples = 0;
            while flooding.load(Ordering::Relaxed) {
                assert!(worker.tracked_sessions() <= CAP, "registry over its cap");
                assert!(store.len() <= CAP, "store over its cap");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        }
    });

    let intact = Arc::new(AtomicUsize::new(0));
    let tracked = Arc::new(AtomicUsize::new(0));
    let floods: Vec<_> = (0..2)
        .map(|part| {
            let service = service.clone();
            let intact = intact.clone();
            let tracked = tracked.clone();
            tokio::spawn(async move {
                stream::iter((part..FLOOD).step_by(2))
                    .for_each_concurrent(IN_FLIGHT / 2, |i| {
                        let service = service.clone();
                        let intact = intact.clone();
                        let tracked = tracked.clone();
                        async move {
                            let request = Request::get(format!("/{i}"))
                                .header("mcp-session-id", format!("flood-{i:06}"))
                                .body(())
                                .unwrap();
                            let response = service.oneshot(request).await.unwrap();
                            if response.body().is_tracked() {
                                tracked.fetch_add(1, Ordering::Relaxed);
                            }
                            let bytes = response.into_body().collect().await.unwrap().to_bytes();
                            assert_eq!(&bytes[..], &flood_event(i)[..], "body {i} changed");
                            intact.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .await;
            })
        })
        .collect();
    for flood in floods {
        flood.await.unwrap();
    }
    flooding.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let (sent, live_events) = producer.await.unwrap();
    let received = reader.await.unwrap();

    // Every body intact; every new client tracked: room was made for each.
    assert_eq!(intact.load(Ordering::Relaxed), FLOOD);
    let stats = tracking.worker().registry_stats();
    println!(
        "flood: {FLOOD} keys, {} tracked, {samples} cap samples, {live_events} live events, {stats:?}",
        tracked.load(Ordering::Relaxed)
    );
    assert_eq!(tracked.load(Ordering::Relaxed), FLOOD, "{stats:?}");
    assert_eq!(stats.refused, 0);
    // Bounded work at the cap: one idle session looked at per admission.
    assert!(stats.admissions_at_cap >= (FLOOD - CAP) as u64, "{stats:?}");
    assert!(stats.max_examined <= 2, "{stats:?}");
    assert!(stats.examined <= stats.admissions_at_cap * 2, "{stats:?}");

    // The live session: every event arrived unchanged, its newest ID is persisted.
    assert_eq!(
        received,
        Bytes::from(sent),
        "live stream changed or lost events"
    );
    tracking.flush().await.unwrap();
    let live_key = StreamKey::new("/live").unwrap();
    let last = format!("live-{}", live_events - 1);
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&live_session, &live_key)
            .as_deref(),
        Some(last.as_str())
    );
    assert_eq!(
        store
            .get(&live_session, &live_key)
            .unwrap()
            .last_event_id
            .as_str(),
        Some(last.as_str())
    );
    // The newest flood sessions are in the store, and the store stayed at its cap.
    let newest = SessionId::new(&format!("flood-{:06}", FLOOD - 1)).unwrap();
    let newest_key = StreamKey::new(&format!("/{}", FLOOD - 1)).unwrap();
    assert!(store.get(&newest, &newest_key).is_some());
    assert!(tracking.worker().tracked_sessions() <= CAP);
    assert_eq!(store.len(), CAP);
    assert!(store.evictions() >= (FLOOD + 1 - CAP) as u64);
    let report = tracking.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(report.unpersisted().is_empty());
}
