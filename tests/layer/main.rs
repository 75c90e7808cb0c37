//! End-to-end tests of `EventTrackingLayer`: what the client receives, what gets tracked and
//! persisted, and how the layer composes with axum and tower-http.
//!
//! Every test asserts both sides: the bytes the client gets (always those the service produced,
//! plus heartbeats when asked for) and the last event ID recorded per session.

#[path = "../support/mod.rs"]
mod support;

use support::{events, sid};

use std::{
    convert::Infallible,
    fmt,
    future::{Ready, ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_http::{compression::CompressionLayer, trace::TraceLayer};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey,
    store::{
        LastEventId, MemoryStore, SessionRecord, SessionStore, SessionUpdate, StoreError,
        StoreFuture,
    },
    worker::WorkerConfig,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const SESSION_HEADER: &str = "mcp-session-id";

/// A body made of exactly these frames.
type Chunks = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunks_body(chunks: &[Bytes]) -> Chunks {
    let frames: Vec<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
    StreamBody::new(stream::iter(frames))
}

fn to_bytes(chunks: &[&[u8]]) -> Vec<Bytes> {
    chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect()
}

fn concat(chunks: &[&[u8]]) -> Bytes {
    chunks.concat().into()
}

fn sse<B>(body: B) -> Response<B> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(body)
        .unwrap()
}

type Respond = dyn Fn(Chunks) -> Response<Chunks> + Send + Sync;

/// A service answering every request with a response built by `respond` around fixed frames.
#[derive(Clone)]
struct ChunkService {
    chunks: Arc<[Bytes]>,
    respond: Arc<Respond>,
}

impl<B> Service<Request<B>> for ChunkService {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Chunks>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok((self.respond)(chunks_body(&self.chunks))))
    }
}

fn service_with(
    chunks: &[&[u8]],
    respond: impl Fn(Chunks) -> Response<Chunks> + Send + Sync + 'static,
) -> ChunkService {
    ChunkService {
        chunks: to_bytes(chunks).into(),
        respond: Arc::new(respond),
    }
}

/// A service answering every request with a `text/event-stream` of exactly these frames.
fn sse_service(chunks: &[&[u8]]) -> ChunkService {
    service_with(chunks, sse)
}

fn request(session: Option<&str>) -> Request<()> {
    let mut req = Request::builder().uri("/events");
    if let Some(session) = session {
        req = req.header(SESSION_HEADER, session);
    }
    req.body(()).unwrap()
}

fn layer_builder(store: &MemoryStore) -> tower_sse_tracking::EventTrackingLayerBuilder {
    EventTrackingLayer::builder()
        .store(store.clone())
        .session_header(http::HeaderName::from_static(SESSION_HEADER))
}

/// Sends one request through `layer` around `svc`; returns the whole body and whether it was
/// tracked.
async fn fetch<S, B>(layer: &EventTrackingLayer, svc: S, req: Request<()>) -> (Bytes, bool)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: fmt::Debug + Send,
{
    let res = layer.layer(svc).oneshot(req).await.unwrap();
    let tracked = res.body().is_tracked();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (bytes, tracked)
}

/// The persisted last event ID of a session: `None` when the store has no record,
/// `Some(LastEventId::Cleared)` for a record without an ID.
fn stored(store: &MemoryStore, session: &str) -> Option<LastEventId> {
    store.get(&sid(session), &events()).map(|r| r.last_event_id)
}

fn set(id: &str) -> Option<LastEventId> {
    Some(LastEventId::Set(id.into()))
}

mod axum_sse;
mod backpressure;
mod batching;
mod composition;
mod concurrency;
mod failures;
mod frame_splits;
mod gzip;
mod heartbeats;
mod passthrough;
mod resume;
mod session_keys;

use self::{
    backpressure::THREE_EVENTS,
    heartbeats::IDLE,
    passthrough::{LOOKS_LIKE_EVENTS, assert_untouched},
};
