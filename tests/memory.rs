//! Memory per tracked session, measured with a counting global allocator (in its own test
//! binary so that it does not affect other tests).

#[path = "support/counting.rs"]
mod counting;
mod support;

use counting::live;
use support::events;

use std::{
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt, service_fn};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey,
    store::{MemoryStore, SessionRecord, SessionStore, SessionUpdate, StoreFuture},
    worker::RecordOutcome,
};

/// The default duplicate window (documented on `WorkerConfig::dedup_window`).
const DEFAULT_DEDUP_WINDOW: usize = 64;

/// A store that keeps nothing, so that only the layer's own memory is measured.
struct Discard;

impl SessionStore for Discard {
    fn save_batch<'a>(&'a self, _batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
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

/// Bytes allocated per session by `setup`, which tracks `sessions` sessions, each after
/// recording `ids` IDs (with `repeat`, every eighth ID repeats an earlier one, so that the
/// duplicate window stays armed); measured after everything is written (the sessions are idle).
async fn per_session(
    layer: &EventTrackingLayer,
    prefix: &str,
    sessions: usize,
    ids: usize,
    repeat: bool,
) -> f64 {
    let before = live();
    for i in 0..sessions {
        let session = SessionId::new(&format!("{prefix}-{i:08}")).unwrap();
        for k in 0..ids {
            let (n, expect) = if repeat && k % 8 == 7 {
                (i * ids + k - 4, RecordOutcome::Duplicate)
            } else {
                (i * ids + k, RecordOutcome::Recorded)
            };
            let id = format!("{n:016}"); // 16-byte event IDs
            assert_eq!(
                layer.worker().record(&session, &events(), Some(&id)),
                expect
            );
        }
    }
    let report = layer.flush().await.unwrap();
    assert_eq!(report.persisted(), sessions);
    (live() - before) as f64 / sessions as f64
}

/// An SSE body that yields `events` events (each in its own frame, as axum sends them), then
/// stays open.
struct OpenStream {
    sent: usize,
    events: usize,
}

impl Body for OpenStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent == self.events {
            return Poll::Pending;
        }
        self.sent += 1;
        let event = format!(
            "id: {}-1764501234567890\ndata: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\n",
            self.sent
        );
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

/// Bytes allocated per open stream that has received `events` events, with or without the
/// layer (over a `MemoryStore`, whose copy is counted), after the worker wrote everything.
async fn per_stream(tracked: bool, streams: usize, events: usize) -> f64 {
    let store = MemoryStore::new();
    let layer = EventTrackingLayer::builder().store(store.clone()).build();
    layer.flush().await.unwrap();
    let service = service_fn(move |_req: Request<()>| async move {
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(OpenStream { sent: 0, events })
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let before = live();
    let mut open = Vec::with_capacity(streams);
    let mut open_bare = Vec::with_capacity(streams);
    for i in 0..streams {
        let request = Request::get("/events")
            .header("mcp-session-id", format!("connection-{i:06}"))
            .body(())
            .unwrap();
        if tracked {
            let mut body = Box::pin(
                layer
                    .layer(service)
                    .oneshot(request)
                    .await
                    .unwrap()
                    .into_body(),
            );
            assert!(body.is_tracked());
            for _ in 0..events {
                body.frame().await.unwrap().unwrap();
            }
            open.push(body);
        } else {
            let mut body = Box::pin(service.oneshot(request).await.unwrap().into_body());
            for _ in 0..events {
                body.frame().await.unwrap().unwrap();
            }
            open_bare.push(body);
        }
    }
    layer.flush().await.unwrap();
    let bytes = (live() - before) as f64 / streams as f64;
    if tracked {
        assert_eq!(store.len(), streams);
    }
    drop((open, open_bare));
    layer
        .shutdown(std::time::Duration::from_secs(1))
        .await
        .unwrap();
    bytes
}

// One test (the counter is global): an idle session with one event, then with a full
// duplicate window.
#[test]
fn an_idle_tracked_session_costs_less_than_512_bytes() {
    const SESSIONS: usize = 10_000;
    let rt = support::runtime();
    rt.block_on(async {
        let layer = EventTrackingLayer::builder().store(Discard).build();
        // Let the worker start (its first tick allocates its buffers).
        layer.flush().await.unwrap();

        let one = per_session(&layer, "one", SESSIONS, 1, false).await;
        assert_eq!(layer.worker().tracked_sessions(), SESSIONS);
        println!(
            "memory per idle tracked session, one event (16-byte id, 12-byte key): {one:.0} bytes"
        );
        assert!(one < 512.0, "{one:.0} bytes per idle tracked session");

        // A long-lived session whose IDs never repeat: its duplicate window was freed after a
        // quiet run.
        let quiet = per_session(&layer, "quiet", SESSIONS, DEFAULT_DEDUP_WINDOW + 8, false).await;
        println!(
            "memory per idle tracked session, {} distinct IDs: {quiet:.0} bytes",
            DEFAULT_DEDUP_WINDOW + 8
        );
        assert!(quiet < 512.0, "{quiet:.0} bytes per session, window freed");

        // One that keeps repeating IDs: its window stays armed, and full.
        let full = per_session(&layer, "full", SESSIONS, DEFAULT_DEDUP_WINDOW + 8, true).await;
        assert_eq!(layer.worker().tracked_sessions(), 3 * SESSIONS);
        println!(
            "memory per idle tracked session, full duplicate window of {DEFAULT_DEDUP_WINDOW}: \
             {full:.0} bytes"
        );
        assert!(
            full < 1024.0 && full > quiet + 8.0 * DEFAULT_DEDUP_WINDOW as f64,
            "{full:.0} bytes per session with a full window"
        );

        // A tracked connection: the open stream's parser and the session's slot, with the
        // MemoryStore's copy, against the same open stream without the layer.
        let bare = per_stream(false, 5_000, 300).await;
        let tracked = per_stream(true, 5_000, 300).await;
        println!(
            "memory per open stream after 300 events: bare {bare:.0} bytes, tracked {tracked:.0} \
             bytes, added by the layer and MemoryStore {:.0} bytes",
            tracked - bare
        );

        // Still tracked (the measurement is not of an emptied registry).
        let probe = SessionId::new("one-00000042").unwrap();
        assert_eq!(
            layer.worker().last_event_id(&probe, &events()).as_deref(),
            Some("0000000000000042")
        );
    });
}
