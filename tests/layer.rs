//! End-to-end tests of `EventTrackingLayer`: what the client receives, what gets tracked and
//! persisted, and how the layer composes with axum and tower-http.
//!
//! Every test asserts both sides: the bytes the client gets (always those the service produced,
//! plus heartbeats when asked for) and the last event ID recorded per session.

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
    EventTrackingLayer, SessionId,
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

fn sid(s: &str) -> SessionId {
    SessionId::new(s).unwrap()
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
    B: Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    let res = layer.layer(svc).oneshot(req).await.unwrap();
    let tracked = res.body().is_tracked();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (bytes, tracked)
}

/// The persisted last event ID of a session: `None` when the store has no record,
/// `Some(LastEventId::Cleared)` for a record without an ID.
fn stored(store: &MemoryStore, session: &str) -> Option<LastEventId> {
    store.get(&sid(session)).map(|r| r.last_event_id)
}

fn set(id: &str) -> Option<LastEventId> {
    Some(LastEventId::Set(id.into()))
}

// ---------------------------------------------------------------------------------------------
// 1. axum `Sse` with keep-alive
// ---------------------------------------------------------------------------------------------

/// Events `<session>-1 ..= <session>-n`, 1.5 s apart, with a 1 s keep-alive in between.
async fn axum_events(headers: HeaderMap) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let session = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let n = if session == "alice" { 3 } else { 5 };
    let events = stream::iter(1..=n).then(move |i| {
        let session = session.clone();
        async move {
            sleep(Duration::from_millis(1500)).await;
            Ok(Event::default()
                .id(format!("{session}-{i}"))
                .event("tick")
                .data(format!("{{\"n\":{i}}}\nsecond line")))
        }
    });
    Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(1))
            .text("keep-alive"),
    )
}

async fn axum_body(app: Router, session: &str) -> Bytes {
    let req = Request::builder()
        .uri("/events")
        .header(SESSION_HEADER, session)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn axum_sse_with_keep_alive_is_byte_identical_and_tracked_per_session() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let bare = Router::new().route("/events", get(axum_events));
    let tracked = Router::new()
        .route("/events", get(axum_events))
        .layer(tracking.clone());

    for (session, last) in [("alice", "alice-3"), ("bob", "bob-5")] {
        let expected = axum_body(bare.clone(), session).await;
        let got = axum_body(tracked.clone(), session).await;
        let keep_alives = expected
            .windows(14)
            .filter(|w| w == b": keep-alive\n\n")
            .count();
        assert!(keep_alives >= 3, "keep-alive comments: {expected:?}");
        assert_eq!(got, expected, "{session}: the layer changed the bytes");
        assert_eq!(
            tracking.worker().last_event_id(&sid(session)).as_deref(),
            Some(last)
        );
    }

    let report = tracking.flush().await.unwrap();
    assert_eq!(report.failed(), 0);
    assert_eq!(stored(&store, "alice"), set("alice-3"));
    assert_eq!(stored(&store, "bob"), set("bob-5"));
    assert_eq!(store.snapshot().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 2. Raw bodies with arbitrary frame splits
// ---------------------------------------------------------------------------------------------

/// What a stream should leave tracked: `None` no ID, `Some("")` cleared, else the ID.
struct Case {
    name: &'static str,
    chunks: &'static [&'static [u8]],
    last: Option<&'static str>,
}

const SPLIT_CASES: &[Case] = &[
    Case {
        name: "one frame per event",
        chunks: &[b"id: 1\ndata: a\n\n", b"id: 2\ndata: b\n\n"],
        last: Some("2"),
    },
    Case {
        // Read as two line breaks, the CR+LF would end the block and commit "2".
        name: "cr at frame end then lf is one line break",
        chunks: &[b"id: 1\ndata: a\n\nid: 2\r", b"\ndata: b\n"],
        last: Some("1"),
    },
    Case {
        name: "cr at frame end then lf completes the blank line",
        chunks: &[b"id: 7\r\ndata: x\r", b"\n\r", b"\n"],
        last: Some("7"),
    },
    Case {
        name: "crlf everywhere",
        chunks: &[b"id: 8\r\ndata: z\r\n\r\nid: 9\r\ndata: z\r\n\r\n"],
        last: Some("9"),
    },
    Case {
        name: "bare cr line endings",
        chunks: &[b"id: 3\rdata: q\r\rid: 4\rdata: q\r\r"],
        last: Some("4"),
    },
    Case {
        name: "bom split across frames is stripped",
        chunks: &[b"\xEF", b"\xBB", b"\xBFid: 7\n", b"data: x\n\n"],
        last: Some("7"),
    },
    Case {
        // Only the first BOM is stripped: the second makes the field name "\u{FEFF}id".
        name: "second bom is part of the field name",
        chunks: &[b"\xEF\xBB\xBF\xEF\xBB\xBFid: 7\ndata: x\n\n"],
        last: None,
    },
    Case {
        name: "comments are ignored",
        chunks: &[
            b": comment with id: 9\n",
            b"id: 3\n: another\ndata: y\n\n",
            b":id: 4\n\n",
        ],
        last: Some("3"),
    },
    Case {
        name: "ids without data are committed at the blank line",
        chunks: &[b"id: 10\n\n", b"id: 11\n", b"\n"],
        last: Some("11"),
    },
    Case {
        name: "empty id clears",
        chunks: &[b"id: 5\ndata: a\n\nid\ndata: b\n\n"],
        last: Some(""),
    },
    Case {
        name: "id with nul is ignored",
        chunks: &[b"id: 6\n\nid: 7\0x\ndata: c\n\n"],
        last: Some("6"),
    },
    Case {
        name: "one leading space is stripped, the second kept",
        chunks: &[b"id:  9\n\n"],
        last: Some(" 9"),
    },
    Case {
        name: "unterminated final block is discarded",
        chunks: &[b"id: 1\ndata: a\n\nid: 2\ndata: b\n"],
        last: Some("1"),
    },
    Case {
        name: "empty frames anywhere",
        chunks: &[
            b"", b"id: 1", b"", b"2\ndata", b"", b": a\n", b"", b"\n", b"",
        ],
        last: Some("12"),
    },
    Case {
        name: "every byte its own frame",
        chunks: &[
            b"\xEF", b"\xBB", b"\xBF", b"i", b"d", b":", b" ", b"4", b"2", b"\r", b"\n", b"\r",
            b"\n",
        ],
        last: Some("42"),
    },
    Case {
        name: "field name split from its colon",
        chunks: &[b"i", b"d", b":4", b"3\n", b"data:x\n", b"\n"],
        last: Some("43"),
    },
];

#[tokio::test]
async fn arbitrary_frame_splits_are_forwarded_unchanged_and_tracked_per_spec() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    for (i, case) in SPLIT_CASES.iter().enumerate() {
        let session = format!("split-{i}");
        let (got, tracked) =
            fetch(&tracking, sse_service(case.chunks), request(Some(&session))).await;
        assert!(tracked, "{}", case.name);
        assert_eq!(got, concat(case.chunks), "{}: bytes changed", case.name);
        assert_eq!(
            tracking.worker().last_event_id(&sid(&session)).as_deref(),
            case.last,
            "{}: tracked id",
            case.name
        );
    }
    tracking.flush().await.unwrap();
    for (i, case) in SPLIT_CASES.iter().enumerate() {
        let record = stored(&store, &format!("split-{i}"));
        match case.last {
            Some(id) if !id.is_empty() => assert_eq!(record, set(id), "{}", case.name),
            // Cleared, or never set: a record (activity) without an ID, or none at all.
            _ => assert!(
                matches!(record, None | Some(LastEventId::Cleared)),
                "{}: {record:?}",
                case.name
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Many concurrent sessions, one worker
// ---------------------------------------------------------------------------------------------

/// A service whose stream, for session `s<i>`, is events `<i>-1 ..= <i>-20`, yielding to the
/// scheduler between frames so that sessions interleave.
fn interleaving_service() -> impl Service<
    Request<()>,
    Response = Response<impl Body<Data = Bytes, Error = Infallible> + Send + 'static>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: Request<()>| {
        let session = req.headers()[SESSION_HEADER].to_str().unwrap().to_owned();
        let n = session.trim_start_matches('s').to_owned();
        let frames = stream::iter(1..=20).then(move |k| {
            let frame = Bytes::from(format!("id: {n}-{k}\ndata: payload {k}\n\n"));
            async move {
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(Frame::data(frame))
            }
        });
        ready(Ok::<_, Infallible>(sse(StreamBody::new(frames))))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions_are_each_persisted_by_one_worker_task() {
    const SESSIONS: usize = 200;
    let store = MemoryStore::new();
    let metrics = tokio::runtime::Handle::current().metrics();

    let before = metrics.num_alive_tasks();
    let tracking = layer_builder(&store).build();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "build() spawns exactly one worker task"
    );
    // axum applies a layer once per route: that must not spawn anything.
    let services: Vec<_> = (0..SESSIONS)
        .map(|_| tracking.layer(interleaving_service()))
        .collect();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "layer() spawns nothing"
    );

    let tasks: Vec<_> = services
        .into_iter()
        .enumerate()
        .map(|(i, svc)| {
            tokio::spawn(async move {
                let res = svc.oneshot(request(Some(&format!("s{i}")))).await.unwrap();
                assert!(res.body().is_tracked());
                res.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let body = task.await.unwrap();
        let expected: String = (1..=20)
            .map(|k| format!("id: {i}-{k}\ndata: payload {k}\n\n"))
            .collect();
        assert_eq!(body, expected.as_bytes());
    }

    let report = tracking.flush().await.unwrap();
    assert_eq!(report.failed(), 0);
    let snapshot = store.snapshot();
    assert_eq!(snapshot.len(), SESSIONS);
    for i in 0..SESSIONS {
        assert_eq!(stored(&store, &format!("s{i}")), set(&format!("{i}-20")));
    }
    let report = tracking.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(report.unpersisted().is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. Composition with TraceLayer and CompressionLayer
// ---------------------------------------------------------------------------------------------

/// Compresses every response, `text/event-stream` included (tower-http's default predicate
/// leaves event streams alone).
fn always(_: StatusCode, _: http::Version, _: &HeaderMap, _: &http::Extensions) -> bool {
    true
}

const GZIP_EVENTS: &[&[u8]] = &[
    b"id: 1\ndata: first\n\n",
    b"id: 2\ndata: second\n\n",
    b"id: 3\ndata: third\n\n",
];

fn gzip_request(session: &str) -> Request<Empty<Bytes>> {
    let mut req = request(Some(session)).map(|()| Empty::new());
    req.headers_mut()
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    req
}

async fn gzip_body<B>(res: Response<B>) -> Vec<u8>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    assert_eq!(
        res.headers().get(header::CONTENT_ENCODING).unwrap(),
        "gzip",
        "the response is compressed"
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    gzip::decode(&bytes).expect("valid gzip")
}

#[tokio::test]
async fn compression_inside_the_layer_leaves_the_stream_untracked_and_untouched() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    // Wrong order: compression is closer to the handler, so the layer sees gzip bytes.
    let svc = ServiceBuilder::new()
        .layer(tracking.clone())
        .layer(TraceLayer::new_for_http())
        .layer(CompressionLayer::new().compress_when(always))
        .service(sse_service(GZIP_EVENTS));
    let res = svc.oneshot(gzip_request("inside")).await.unwrap();
    assert!(!res.body().is_tracked(), "content-encoded: passes through");
    let body = gzip_body(res).await;
    assert_eq!(body, concat(GZIP_EVENTS));

    // Byte for byte what compression alone produces.
    let alone = ServiceBuilder::new()
        .layer(CompressionLayer::new().compress_when(always))
        .service(sse_service(GZIP_EVENTS))
        .oneshot(gzip_request("inside"))
        .await
        .unwrap();
    let alone = alone.into_body().collect().await.unwrap().to_bytes();
    let res = ServiceBuilder::new()
        .layer(tracking.clone())
        .layer(CompressionLayer::new().compress_when(always))
        .service(sse_service(GZIP_EVENTS))
        .oneshot(gzip_request("inside"))
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), alone);

    tracking.flush().await.unwrap();
    assert_eq!(tracking.worker().last_event_id(&sid("inside")), None);
    assert_eq!(tracking.worker().tracked_sessions(), 0);
    assert!(store.is_empty(), "nothing recorded: {:?}", store.snapshot());
}

#[tokio::test]
async fn layer_inside_compression_tracks_events_and_the_client_gets_valid_gzip() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    // Right order: compression outermost, the layer next to the handler.
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(CompressionLayer::new().compress_when(always))
        .layer(tracking.clone())
        .service(sse_service(GZIP_EVENTS));
    let res = svc.oneshot(gzip_request("outside")).await.unwrap();
    let body = gzip_body(res).await;
    assert_eq!(body, concat(GZIP_EVENTS));

    tracking.flush().await.unwrap();
    assert_eq!(
        tracking.worker().last_event_id(&sid("outside")).as_deref(),
        Some("3")
    );
    assert_eq!(stored(&store, "outside"), set("3"));
}

#[tokio::test]
async fn default_compression_skips_event_streams_so_either_order_tracks() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let inside = ServiceBuilder::new()
        .layer(tracking.clone())
        .layer(CompressionLayer::new())
        .service(sse_service(GZIP_EVENTS));
    let res = inside.oneshot(gzip_request("default")).await.unwrap();
    assert!(res.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(res.body().is_tracked());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, concat(GZIP_EVENTS));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "default"), set("3"));
}

// ---------------------------------------------------------------------------------------------
// 5. What is not an event stream passes through
// ---------------------------------------------------------------------------------------------

/// A body that looks like events, to prove it is not parsed.
const LOOKS_LIKE_EVENTS: &[&[u8]] = &[b"id: 1\ndata: x\n\n", b"id: 2\n\n"];

fn with_type(content_type: &'static str) -> impl Fn(Chunks) -> Response<Chunks> {
    move |body| {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap()
    }
}

fn with_status(status: StatusCode) -> impl Fn(Chunks) -> Response<Chunks> {
    move |body| {
        let mut res = sse(body);
        *res.status_mut() = status;
        res
    }
}

async fn assert_untouched(
    tracking: &EventTrackingLayer,
    store: &MemoryStore,
    svc: ChunkService,
    req: Request<()>,
    what: &str,
) {
    let (body, tracked) = fetch(tracking, svc, req).await;
    assert!(!tracked, "{what}: tracked");
    assert_eq!(body, concat(LOOKS_LIKE_EVENTS), "{what}: bytes changed");
    tracking.flush().await.unwrap();
    assert_eq!(tracking.worker().tracked_sessions(), 0, "{what}");
    assert!(store.is_empty(), "{what}: {:?}", store.snapshot());
}

#[tokio::test]
async fn non_event_stream_responses_pass_through_and_record_nothing() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    for content_type in [
        "application/json",
        "text/plain; charset=utf-8",
        "text/event-streams",
        "application/octet-stream",
    ] {
        let svc = service_with(LOOKS_LIKE_EVENTS, with_type(content_type));
        assert_untouched(&tracking, &store, svc, request(Some("s")), content_type).await;
    }
    // No content type at all.
    let svc = service_with(LOOKS_LIKE_EVENTS, Response::new);
    assert_untouched(
        &tracking,
        &store,
        svc,
        request(Some("s")),
        "no content type",
    )
    .await;

    // A real JSON body through `Full`.
    let json = service_fn(|_req: Request<()>| {
        ready(Ok::<_, Infallible>(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(b"{\"id\":1}")))
                .unwrap(),
        ))
    });
    let (body, tracked) = fetch(&tracking, json, request(Some("s"))).await;
    assert!(!tracked);
    assert_eq!(body, &b"{\"id\":1}"[..]);
    assert_eq!(tracking.worker().tracked_sessions(), 0);
}

#[tokio::test]
async fn head_requests_pass_through_and_record_nothing() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    tracking.worker().record(&sid("known"), Some("5"));
    tracking.flush().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        service_fn(move |req: Request<()>| {
            seen.lock()
                .unwrap()
                .push(req.headers().get("last-event-id").cloned());
            ready(Ok::<_, Infallible>(sse(Empty::<Bytes>::new())))
        })
    };
    let mut req = request(Some("head"));
    *req.method_mut() = Method::HEAD;
    let (body, tracked) = fetch(&tracking, handler.clone(), req).await;
    assert!(!tracked);
    assert!(body.is_empty());
    // Not even resumed.
    let mut req = request(Some("known"));
    *req.method_mut() = Method::HEAD;
    let (_, tracked) = fetch(&tracking, handler, req).await;
    assert!(!tracked);
    assert_eq!(*seen.lock().unwrap(), [None, None]);

    // A HEAD answered with a body (a misbehaving handler) is not parsed either.
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let mut req = request(Some("head"));
    *req.method_mut() = Method::HEAD;
    assert_untouched(
        &tracking,
        &store,
        sse_service(LOOKS_LIKE_EVENTS),
        req,
        "HEAD",
    )
    .await;
}

#[tokio::test]
async fn non_success_event_streams_are_not_tracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    for status in [
        StatusCode::NOT_FOUND,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::FOUND,
        StatusCode::NOT_MODIFIED,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let svc = service_with(LOOKS_LIKE_EVENTS, with_status(status));
        assert_untouched(&tracking, &store, svc, request(Some("s")), status.as_str()).await;
    }
}

#[tokio::test]
async fn event_streams_without_a_session_are_not_tracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let svc = sse_service(LOOKS_LIKE_EVENTS);
    assert_untouched(&tracking, &store, svc, request(None), "no session").await;
}

#[tokio::test]
async fn a_full_registry_leaves_new_sessions_untracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store)
        .worker(WorkerConfig::default().max_sessions(1))
        .build();
    let (_, tracked) = fetch(&tracking, sse_service(THREE_EVENTS), request(Some("first"))).await;
    assert!(tracked);
    // "first" is not idle long enough to be evicted: no room for "second".
    let (body, tracked) = fetch(
        &tracking,
        sse_service(THREE_EVENTS),
        request(Some("second")),
    )
    .await;
    assert!(!tracked);
    assert_eq!(body, concat(THREE_EVENTS));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "first"), set("3"));
    assert_eq!(stored(&store, "second"), None);
}

#[tokio::test(start_paused = true)]
async fn streams_flow_unchanged_and_undelayed_after_shutdown() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store)
        .worker(WorkerConfig::default().queue_capacity(1))
        .build();
    let report = tracking.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.unpersisted().is_empty());
    let start = Instant::now();
    let (body, _) = fetch(&tracking, sse_service(THREE_EVENTS), request(Some("late"))).await;
    assert_eq!(body, concat(THREE_EVENTS));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "never waits on a stopped worker"
    );
    assert!(tracking.flush().await.is_err());
    assert_eq!(stored(&store, "late"), None);
}

#[tokio::test]
async fn size_hint_and_end_of_stream_are_forwarded() {
    let full = || {
        service_fn(|_req: Request<()>| {
            ready(Ok::<_, Infallible>(sse(Full::new(Bytes::from_static(
                b"id: 1\ndata: a\n\n",
            )))))
        })
    };
    let plain = layer_builder(&MemoryStore::new()).build();
    let res = plain
        .layer(full())
        .oneshot(request(Some("s")))
        .await
        .unwrap();
    assert!(res.body().is_tracked());
    assert_eq!(res.body().size_hint().exact(), Some(15));
    let mut body = Box::pin(res.into_body());
    assert!(!body.is_end_stream());
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream(), "ends right after the only frame");
    assert_eq!(
        plain.worker().last_event_id(&sid("s")).as_deref(),
        Some("1"),
        "recorded without polling past the end"
    );

    // Heartbeats may add bytes: no upper bound any more (and so no Content-Length).
    let beating = layer_builder(&MemoryStore::new()).heartbeat(IDLE).build();
    let res = beating
        .layer(full())
        .oneshot(request(Some("s")))
        .await
        .unwrap();
    let hint = res.body().size_hint();
    assert_eq!((hint.lower(), hint.upper()), (15, None));
}

// ---------------------------------------------------------------------------------------------
// 6. Client disconnect
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_disconnect_mid_event_keeps_the_last_completed_id() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let svc = service_fn(|_req: Request<()>| {
        // One frame ends inside event 2; the rest never comes.
        let frames = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"id: 1\ndata: a\n\nid: 2\ndata: b\n",
        )))])
        .chain(stream::pending());
        ready(Ok::<_, Infallible>(sse(StreamBody::new(frames))))
    });
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("gone")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, &b"id: 1\ndata: a\n\nid: 2\ndata: b\n"[..]);
    drop(body); // the client goes away

    assert_eq!(
        tracking.worker().last_event_id(&sid("gone")).as_deref(),
        Some("1")
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "gone"), set("1"));
}

// ---------------------------------------------------------------------------------------------
// 7. Inner body errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Upstream(&'static str);

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream failed: {}", self.0)
    }
}

impl std::error::Error for Upstream {}

#[tokio::test]
async fn inner_body_error_reaches_the_client_unchanged_and_earlier_ids_are_kept() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let svc = service_fn(|_req: Request<()>| {
        let frames = stream::iter([
            Ok(Frame::data(Bytes::from_static(b"id: 1\ndata: a\n\n"))),
            Ok(Frame::data(Bytes::from_static(
                b"id: 2\ndata: b\n\nid: 3\ndata: c",
            ))),
            Err(Upstream("connection reset")),
        ]);
        ready(Ok::<_, Infallible>(sse(StreamBody::new(frames))))
    });
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("err")))
        .await
        .unwrap();
    assert!(res.body().is_tracked());
    let mut body = Box::pin(res.into_body());
    let mut got = Vec::new();
    let error = loop {
        match body.frame().await.expect("an error before the end") {
            Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap()),
            Err(error) => break error,
        }
    };
    assert_eq!(got, b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c");
    assert_eq!(error, Upstream("connection reset"), "same error value");
    assert_eq!(error.to_string(), "upstream failed: connection reset");

    assert_eq!(
        tracking.worker().last_event_id(&sid("err")).as_deref(),
        Some("2")
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "err"), set("2"));
}

// ---------------------------------------------------------------------------------------------
// 8. Backpressure: a full queue
// ---------------------------------------------------------------------------------------------

const BACKPRESSURE: Duration = Duration::from_millis(100);

fn full_queue_layer(
    store: &MemoryStore,
) -> (EventTrackingLayer, tower_sse_tracking::worker::WorkerFuture) {
    let (tracking, worker) = layer_builder(store)
        .backpressure_timeout(BACKPRESSURE)
        .worker(WorkerConfig::default().queue_capacity(1))
        .build_with_worker();
    // Another session takes the only place in the queue; the worker is not running.
    assert_eq!(
        tracking.worker().record(&sid("other"), Some("x")),
        tower_sse_tracking::worker::RecordOutcome::Recorded
    );
    (tracking, worker)
}

const THREE_EVENTS: &[&[u8]] = &[
    b"id: 1\ndata: a\n\n",
    b"id: 2\ndata: b\n\n",
    b"id: 3\ndata: c\n\n",
];

#[tokio::test(start_paused = true)]
async fn full_queue_holds_a_frame_for_at_most_the_backpressure_timeout_then_parks() {
    let store = MemoryStore::new();
    let (tracking, worker) = full_queue_layer(&store);
    let res = tracking
        .layer(sse_service(THREE_EVENTS))
        .oneshot(request(Some("busy")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());

    // The session turns dirty on the first frame, when the queue is full.
    let start = Instant::now();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, THREE_EVENTS[0]);
    assert_eq!(start.elapsed(), BACKPRESSURE, "held exactly the timeout");

    // The session is parked (still dirty): later frames are not held.
    let start = Instant::now();
    for expected in &THREE_EVENTS[1..] {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, *expected);
    }
    assert!(body.frame().await.is_none());
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(body);
    assert_eq!(
        tracking.worker().last_event_id(&sid("busy")).as_deref(),
        Some("3")
    );
    assert!(store.is_empty(), "the worker has not run yet");

    // The worker runs later, with no new events: its ticks write the parked session.
    tokio::spawn(worker);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(stored(&store, "busy"), set("3"));
    assert_eq!(stored(&store, "other"), set("x"));
}

#[tokio::test(start_paused = true)]
async fn full_queue_releases_the_frame_as_soon_as_the_worker_makes_room() {
    let store = MemoryStore::new();
    let (tracking, worker) = full_queue_layer(&store);
    tokio::spawn(async move {
        sleep(Duration::from_millis(30)).await;
        worker.await;
    });
    let res = tracking
        .layer(sse_service(THREE_EVENTS))
        .oneshot(request(Some("busy")))
        .await
        .unwrap();
    let start = Instant::now();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, concat(THREE_EVENTS));
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "busy"), set("3"));
}

#[tokio::test(start_paused = true)]
async fn client_gone_while_a_frame_is_held_still_persists_the_session() {
    let store = MemoryStore::new();
    let (tracking, worker) = full_queue_layer(&store);
    let res = tracking
        .layer(sse_service(THREE_EVENTS))
        .oneshot(request(Some("busy")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    // Poll until the first frame is held, then give up before the timeout.
    let held = tokio::time::timeout(Duration::from_millis(10), body.frame()).await;
    assert!(held.is_err(), "the frame is held");
    drop(body);

    tokio::spawn(worker);
    tracking.flush().await.unwrap();
    assert_eq!(
        stored(&store, "busy"),
        set("1"),
        "the recorded id is not lost"
    );

    // And the session keeps being persisted afterwards.
    let (_, tracked) = fetch(
        &tracking,
        sse_service(&[b"id: 9\ndata: z\n\n"]),
        request(Some("busy")),
    )
    .await;
    assert!(tracked);
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "busy"), set("9"));
}

// ---------------------------------------------------------------------------------------------
// 9. Resume: inserting Last-Event-ID
// ---------------------------------------------------------------------------------------------

/// A handler that notes the `Last-Event-ID` it was given and streams the ids listed in the
/// `x-emit` request header, naming the session in its response when `x-assign` asks for it.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Recorder {
    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let seen = self.seen.clone();
        service_fn(move |req: Request<()>| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            seen.lock().unwrap().push(header("last-event-id"));
            let body: String = header("x-emit")
                .unwrap_or_default()
                .split(',')
                .filter(|id| !id.is_empty())
                .map(|id| format!("id: {id}\ndata: x\n\n"))
                .collect();
            let mut res = sse(Full::new(Bytes::from(body)));
            if let Some(session) = header("x-assign") {
                res.headers_mut()
                    .insert(SESSION_HEADER, HeaderValue::from_str(&session).unwrap());
            }
            ready(Ok(res))
        })
    }

    fn last_seen(&self) -> Option<String> {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn resume_request(session: Option<&str>, last_event_id: Option<&str>, emit: &str) -> Request<()> {
    let mut req = request(session);
    if let Some(id) = last_event_id {
        req.headers_mut()
            .insert("last-event-id", HeaderValue::from_str(id).unwrap());
    }
    req.headers_mut()
        .insert("x-emit", HeaderValue::from_str(emit).unwrap());
    req
}

#[tokio::test]
async fn resume_inserts_the_tracked_id_of_a_session_known_in_memory() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();

    // First connection: no id known yet.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, "1,2,3"),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    // Reconnect without Last-Event-ID: the layer fills it in.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, "4"),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("3"));
    // The client's own header is never overridden.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), Some("2"), ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("2"));
    // Another session never gets this one's id.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("b"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    // Nor does a request without a session.
    fetch(&tracking, handler.service(), resume_request(None, None, "")).await;
    assert_eq!(handler.last_seen(), None);
    // The newest id is used.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("4"));
}

#[tokio::test]
async fn resume_does_not_insert_a_cleared_id() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();
    tracking.worker().record(&sid("c"), Some("5"));
    tracking.worker().record(&sid("c"), Some(""));
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("c"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
}

#[tokio::test]
async fn resume_is_off_by_default() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let handler = Recorder::default();
    tracking.worker().record(&sid("a"), Some("5"));
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
}

async fn prefill(store: &MemoryStore, session: &str, id: &str) {
    store
        .save_batch(&[SessionUpdate {
            session: sid(session),
            last_event_id: LastEventId::from(id),
            version: 1,
            last_activity: SystemTime::now(),
        }])
        .await
        .unwrap();
}

#[tokio::test]
async fn resume_reads_a_session_known_only_in_the_store() {
    let store = MemoryStore::new();
    prefill(&store, "stored", "99").await;
    prefill(&store, "cleared", "").await;
    // A new layer (say, after a restart) over the filled store.
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();

    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("stored"), None, "100"),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("99"));
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("stored"), Some("42"), ""),
    )
    .await;
    assert_eq!(
        handler.last_seen().as_deref(),
        Some("42"),
        "client header kept"
    );
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("cleared"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("absent"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    // Now known in memory, newer than the store.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("stored"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("100"));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "stored"), set("100"));
}

/// A store whose reads always fail.
#[derive(Clone, Default)]
struct UnreadableStore(MemoryStore);

impl SessionStore for UnreadableStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        self.0.save_batch(batch)
    }

    fn load<'a>(&'a self, _session: &'a SessionId) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(ready(Err(StoreError::transient("store is down"))))
    }
}

#[tokio::test]
async fn resume_with_a_failing_store_calls_the_handler_without_the_header() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime: everything below runs on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = UnreadableStore::default();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_header(http::HeaderName::from_static(SESSION_HEADER))
        .resume(true)
        .build();
    let handler = Recorder::default();
    let res = tracking
        .layer(handler.service())
        .oneshot(resume_request(Some("s"), None, "1"))
        .await
        .expect("the request does not fail");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.body().is_tracked());
    res.into_body().collect().await.unwrap();
    assert_eq!(handler.last_seen(), None);

    let errors: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "sse_tracking_resume_errors_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("not a counter: {other:?}"),
        })
        .sum();
    assert_eq!(errors, 1);
    tracking.flush().await.unwrap();
    assert_eq!(
        store.0.get(&sid("s")).map(|r| r.last_event_id),
        set("1"),
        "still tracked"
    );
}

#[tokio::test]
async fn session_named_in_the_response_header_is_tracked_and_resumed() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();

    // MCP style: the client has no session yet, the server assigns one in its response.
    let mut req = resume_request(None, None, "1,2");
    req.headers_mut()
        .insert("x-assign", HeaderValue::from_static("fresh-1"));
    let (body, tracked) = fetch(&tracking, handler.service(), req).await;
    assert!(tracked);
    assert_eq!(body, &b"id: 1\ndata: x\n\nid: 2\ndata: x\n\n"[..]);
    assert_eq!(
        tracking.worker().last_event_id(&sid("fresh-1")).as_deref(),
        Some("2")
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "fresh-1"), set("2"));

    // The client then sends the session it was given.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("fresh-1"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("2"));
}

#[tokio::test]
async fn session_fn_keys_are_tracked_and_response_headers_are_not_consulted() {
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_fn(|parts| {
            parts
                .uri
                .query()?
                .strip_prefix("session=")
                .map(str::to_owned)
        })
        .build();
    let handler = Recorder::default();
    let req = |uri: &str| {
        let mut req = resume_request(None, None, "7");
        *req.uri_mut() = uri.parse().unwrap();
        req.headers_mut()
            .insert("x-assign", HeaderValue::from_static("from-response"));
        req
    };
    let (_, tracked) = fetch(&tracking, handler.service(), req("/events?session=q1")).await;
    assert!(tracked);
    let (_, tracked) = fetch(&tracking, handler.service(), req("/events")).await;
    assert!(
        !tracked,
        "a key function that finds no key leaves the request untracked"
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "q1"), set("7"));
    assert_eq!(stored(&store, "from-response"), None);
}

// ---------------------------------------------------------------------------------------------
// 10. Hostile session keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_session_keys_pass_through_untracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let long = "k".repeat(129);
    let hostile: Vec<(&str, HeaderValue)> = vec![
        ("too long", HeaderValue::from_str(&long).unwrap()),
        ("tab", HeaderValue::from_static("bad\tkey")),
        ("non-utf-8", HeaderValue::from_bytes(b"caf\xe9").unwrap()),
        (
            "c1 control",
            HeaderValue::from_bytes("a\u{85}b".as_bytes()).unwrap(),
        ),
        ("empty", HeaderValue::from_static("")),
    ];
    for (what, value) in hostile {
        let mut req = request(None);
        req.headers_mut().insert(SESSION_HEADER, value);
        assert_untouched(&tracking, &store, sse_service(LOOKS_LIKE_EVENTS), req, what).await;
    }

    // Named by the response instead (MCP style): the same rules apply.
    let bad_response = service_with(LOOKS_LIKE_EVENTS, |body| {
        let mut res = sse(body);
        res.headers_mut().insert(
            SESSION_HEADER,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        res
    });
    assert_untouched(&tracking, &store, bad_response, request(None), "response").await;

    // The longest valid key is tracked.
    let longest = "k".repeat(128);
    let (_, tracked) = fetch(
        &tracking,
        sse_service(LOOKS_LIKE_EVENTS),
        request(Some(&longest)),
    )
    .await;
    assert!(tracked);
}

#[tokio::test]
async fn hostile_keys_from_a_session_fn_pass_through_untracked() {
    for key in [
        "x\u{1}y",
        "line\nbreak",
        "",
        "del\u{7f}",
        "c1\u{9b}",
        &"k".repeat(129),
    ] {
        let key = key.to_owned();
        let store = MemoryStore::new();
        let tracking = EventTrackingLayer::builder()
            .store(store.clone())
            .session_fn(move |_| Some(key.clone()))
            .build();
        assert_untouched(
            &tracking,
            &store,
            sse_service(LOOKS_LIKE_EVENTS),
            request(None),
            "session_fn",
        )
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Heartbeats
// ---------------------------------------------------------------------------------------------

const IDLE: Duration = Duration::from_secs(1);
const HB: &[u8] = b":\n";

/// An upstream that sends each frame after its delay, then ends after `end`.
fn scripted(
    steps: Vec<(u64, &'static [u8])>,
    end: u64,
) -> impl Body<Data = Bytes, Error = Infallible> + Send + 'static {
    let frames = stream::unfold(
        (steps.into_iter(), Some(end)),
        |(mut steps, end)| async move {
            if let Some((delay, bytes)) = steps.next() {
                sleep(Duration::from_millis(delay)).await;
                let frame = Ok(Frame::data(Bytes::from_static(bytes)));
                return Some((frame, (steps, end)));
            }
            sleep(Duration::from_millis(end?)).await;
            None
        },
    );
    StreamBody::new(frames)
}

/// The frames the client gets, with the time (ms since the request) each arrived.
async fn timed_frames(
    tracking: &EventTrackingLayer,
    steps: Vec<(u64, &'static [u8])>,
    end: u64,
) -> Vec<(u64, Bytes)> {
    let ends_at = steps.iter().map(|&(delay, _)| delay).sum::<u64>() + end;
    let steps = Arc::new(Mutex::new(Some(steps)));
    let svc = service_fn(move |_req: Request<()>| {
        let steps = steps.lock().unwrap().take().unwrap();
        ready(Ok::<_, Infallible>(sse(scripted(steps, end))))
    });
    let start = Instant::now();
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("hb")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        frames.push((start.elapsed().as_millis() as u64, data));
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(ends_at),
        "ends with the upstream"
    );
    frames
}

fn heartbeat_layer() -> EventTrackingLayer {
    layer_builder(&MemoryStore::new()).heartbeat(IDLE).build()
}

fn owned(frames: &[(u64, &'static [u8])]) -> Vec<(u64, Bytes)> {
    frames
        .iter()
        .map(|&(t, b)| (t, Bytes::from_static(b)))
        .collect()
}

/// An upstream that idles at line boundaries, mid-line and right after a CR.
fn idling_script() -> Vec<(u64, &'static [u8])> {
    vec![
        (0, b"id: 1\ndata: a\n\n"), // t = 0
        (2500, b"data: abc"),       // t = 2500, stalls mid-line
        (3200, b"\n\n"),            // t = 5700
        (500, b"id: 2\r"),          // t = 6200, stalls right after a CR
        (2300, b"\ndata: b\n\n"),   // t = 8500
    ]
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_injected_only_at_line_boundaries_of_an_idle_upstream() {
    let tracking = heartbeat_layer();
    let frames = timed_frames(&tracking, idling_script(), 1700).await; // ends at t = 10200
    assert_eq!(
        frames,
        owned(&[
            (0, b"id: 1\ndata: a\n\n"),
            (1000, HB),
            (2000, HB),
            (2500, b"data: abc"),
            // Nothing while the upstream is mid-line (timers at 3500, 4500, 5500).
            (5700, b"\n\n"),
            (6200, b"id: 2\r"),
            // Nothing after the CR: an LF may follow (timers at 7200, 8200).
            (8500, b"\ndata: b\n\n"),
            (9500, HB),
        ])
    );
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert_eq!(
        all,
        b"id: 1\ndata: a\n\n:\n:\ndata: abc\n\nid: 2\r\ndata: b\n\n:\n"
    );
    assert_eq!(
        tracking.worker().last_event_id(&sid("hb")).as_deref(),
        Some("2"),
        "heartbeats do not change what is tracked"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timer_resets_on_every_upstream_frame() {
    let tracking = heartbeat_layer();
    let steps: Vec<(u64, &'static [u8])> = (0..6)
        .map(|i| (if i == 0 { 0 } else { 900 }, &b"data: x\n\n"[..]))
        .collect();
    // Frames every 900 ms (never idle for 1 s), then 1500 ms of silence.
    let frames = timed_frames(&tracking, steps, 1500).await;
    let mut expected: Vec<(u64, &[u8])> = (0..6).map(|i| (i * 900, &b"data: x\n\n"[..])).collect();
    expected.push((4500 + 1000, HB));
    assert_eq!(frames, owned(&expected));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_an_upstream_that_has_not_spoken_yet_alive() {
    let tracking = heartbeat_layer();
    let frames = timed_frames(&tracking, vec![(3500, b"id: 1\n\n")], 1200).await;
    assert_eq!(
        frames,
        owned(&[
            (1000, HB),
            (2000, HB),
            (3000, HB),
            (3500, b"id: 1\n\n"),
            (4500, HB)
        ])
    );
    assert_eq!(
        tracking.worker().last_event_id(&sid("hb")).as_deref(),
        Some("1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_byte_order_mark_after_an_early_heartbeat_is_dropped() {
    // The client's stream now starts with the heartbeat: the upstream's BOM would land
    // mid-stream and turn its first field name into "\u{FEFF}id". Dropping it keeps the meaning.
    let tracking = heartbeat_layer();
    let frames = timed_frames(
        &tracking,
        vec![(1500, b"\xEF\xBB\xBFid: 1\ndata: a\n\n")],
        0,
    )
    .await;
    assert_eq!(frames, owned(&[(1000, HB), (1500, b"id: 1\ndata: a\n\n")]));
    assert_eq!(
        tracking.worker().last_event_id(&sid("hb")).as_deref(),
        Some("1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_byte_order_mark_split_across_frames_after_an_early_heartbeat_is_dropped() {
    let tracking = heartbeat_layer();
    let script = vec![(1500, &b"\xEF"[..]), (10, b"\xBB"), (10, b"\xBFid: 7\n\n")];
    let frames = timed_frames(&tracking, script, 0).await;
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert_eq!(all, b":\nid: 7\n\n");
    assert_eq!(
        tracking.worker().last_event_id(&sid("hb")).as_deref(),
        Some("7")
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_that_only_looked_like_a_byte_order_mark_are_forwarded() {
    let tracking = heartbeat_layer();
    let script = vec![(1500, &b"\xEF\xBB"[..]), (10, b"x\nid: 2\n\n")];
    let frames = timed_frames(&tracking, script, 0).await;
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert_eq!(
        all, b":\n\xEF\xBBx\nid: 2\n\n",
        "every upstream byte, in order"
    );
    assert_eq!(
        tracking.worker().last_event_id(&sid("hb")).as_deref(),
        Some("2")
    );
}

#[tokio::test(start_paused = true)]
async fn a_byte_order_mark_is_kept_when_no_heartbeat_went_first() {
    let tracking = heartbeat_layer();
    let frames = timed_frames(&tracking, vec![(500, b"\xEF\xBB\xBFid: 3\n\n")], 0).await;
    assert_eq!(frames, owned(&[(500, b"\xEF\xBB\xBFid: 3\n\n")]));
}

#[tokio::test(start_paused = true)]
async fn event_streams_without_a_session_get_heartbeats_but_are_not_tracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).heartbeat(IDLE).build();
    let too_long = "k".repeat(200);
    for req in [request(None), request(Some(&too_long))] {
        let svc = service_fn(|_req: Request<()>| {
            ready(Ok::<_, Infallible>(sse(scripted(
                vec![(1500, &b"id: 9\n\n"[..])],
                0,
            ))))
        });
        let res = tracking.layer(svc).oneshot(req).await.unwrap();
        assert!(!res.body().is_tracked());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b":\nid: 9\n\n");
    }
    tracking.flush().await.unwrap();
    assert!(store.is_empty(), "nothing recorded");
    assert_eq!(tracking.worker().tracked_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_off_by_default() {
    let tracking = layer_builder(&MemoryStore::new()).build();
    let frames = timed_frames(&tracking, idling_script(), 1700).await;
    assert_eq!(
        frames,
        owned(&[
            (0, b"id: 1\ndata: a\n\n"),
            (2500, b"data: abc"),
            (5700, b"\n\n"),
            (6200, b"id: 2\r"),
            (8500, b"\ndata: b\n\n"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn no_heartbeats_with_a_content_length() {
    let tracking = heartbeat_layer();
    let svc = service_fn(|_req: Request<()>| {
        let mut res = sse(scripted(vec![(0, b"id: 1\n\n"), (5000, b"id: 2\n\n")], 0));
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("14"));
        ready(Ok::<_, Infallible>(res))
    });
    let (body, tracked) = fetch(&tracking, svc, request(Some("len"))).await;
    assert!(tracked);
    assert_eq!(body, &b"id: 1\n\nid: 2\n\n"[..]);
}

// ---------------------------------------------------------------------------------------------
// A minimal gzip decoder (RFC 1951/1952), to check what the client of a compressed stream gets.
// ---------------------------------------------------------------------------------------------

mod gzip {
    /// Decodes a single-member gzip file, checking its CRC-32 and length.
    pub(crate) fn decode(data: &[u8]) -> Result<Vec<u8>, String> {
        if data.len() < 18 || data[0..3] != [0x1f, 0x8b, 8] {
            return Err("not a gzip header".into());
        }
        let flags = data[3];
        let mut pos = 10;
        if flags & 4 != 0 {
            let xlen = usize::from(u16::from_le_bytes([data[pos], data[pos + 1]]));
            pos += 2 + xlen;
        }
        for flag in [8, 16] {
            if flags & flag != 0 {
                pos += data[pos..].iter().position(|&b| b == 0).ok_or("name")? + 1;
            }
        }
        if flags & 2 != 0 {
            pos += 2;
        }
        let mut bits = Bits {
            data,
            pos,
            buf: 0,
            count: 0,
        };
        let out = inflate(&mut bits)?;
        let trailer = &data[bits.pos..];
        if trailer.len() != 8 {
            return Err(format!("{} bytes after the deflate stream", trailer.len()));
        }
        let crc = u32::from_le_bytes(trailer[0..4].try_into().unwrap());
        let len = u32::from_le_bytes(trailer[4..8].try_into().unwrap());
        if crc != crc32(&out) || len != out.len() as u32 {
            return Err("bad crc or length".into());
        }
        Ok(out)
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    struct Bits<'a> {
        data: &'a [u8],
        pos: usize,
        buf: u32,
        count: u32,
    }

    impl Bits<'_> {
        fn get(&mut self, n: u32) -> Result<u32, String> {
            while self.count < n {
                let byte = *self.data.get(self.pos).ok_or("truncated")?;
                self.pos += 1;
                self.buf |= u32::from(byte) << self.count;
                self.count += 8;
            }
            let v = self.buf & ((1u32 << n) - 1);
            self.buf >>= n;
            self.count -= n;
            Ok(v)
        }

        fn align(&mut self) {
            self.buf = 0;
            self.count = 0;
        }
    }

    struct Huffman {
        counts: [u16; 16],
        symbols: Vec<u16>,
    }

    impl Huffman {
        fn new(lengths: &[u8]) -> Self {
            let mut counts = [0u16; 16];
            for &l in lengths {
                counts[usize::from(l)] += 1;
            }
            counts[0] = 0;
            let mut offsets = [0u16; 16];
            for len in 1..15 {
                offsets[len + 1] = offsets[len] + counts[len];
            }
            let mut symbols = vec![0; lengths.len()];
            for (symbol, &l) in lengths.iter().enumerate() {
                if l != 0 {
                    symbols[usize::from(offsets[usize::from(l)])] = symbol as u16;
                    offsets[usize::from(l)] += 1;
                }
            }
            Self { counts, symbols }
        }

        fn decode(&self, bits: &mut Bits<'_>) -> Result<u16, String> {
            let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
            for len in 1..16 {
                code |= bits.get(1)? as i32;
                let count = i32::from(self.counts[len]);
                if code - count < first {
                    return Ok(self.symbols[(index + (code - first)) as usize]);
                }
                index += count;
                first = (first + count) << 1;
                code <<= 1;
            }
            Err("bad code".into())
        }
    }

    const LEN_BASE: [u16; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const LEN_EXTRA: [u8; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    const DIST_BASE: [u16; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    const DIST_EXTRA: [u8; 30] = [
        0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13,
    ];

    fn inflate(bits: &mut Bits<'_>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        loop {
            let last = bits.get(1)?;
            match bits.get(2)? {
                0 => {
                    bits.align();
                    let d = &bits.data[bits.pos..];
                    if d.len() < 4 {
                        return Err("truncated stored block".into());
                    }
                    let len = usize::from(u16::from_le_bytes([d[0], d[1]]));
                    let nlen = u16::from_le_bytes([d[2], d[3]]);
                    if nlen != !(len as u16) || d.len() < 4 + len {
                        return Err("bad stored block".into());
                    }
                    out.extend_from_slice(&d[4..4 + len]);
                    bits.pos += 4 + len;
                }
                1 => {
                    let mut lengths = [0u8; 288];
                    lengths[..144].fill(8);
                    lengths[144..256].fill(9);
                    lengths[256..280].fill(7);
                    lengths[280..].fill(8);
                    let lit = Huffman::new(&lengths);
                    let dist = Huffman::new(&[5; 30]);
                    codes(bits, &mut out, &lit, &dist)?;
                }
                2 => {
                    let nlen = bits.get(5)? as usize + 257;
                    let ndist = bits.get(5)? as usize + 1;
                    let ncode = bits.get(4)? as usize + 4;
                    const ORDER: [usize; 19] = [
                        16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                    ];
                    let mut code_lengths = [0u8; 19];
                    for &i in &ORDER[..ncode] {
                        code_lengths[i] = bits.get(3)? as u8;
                    }
                    let code = Huffman::new(&code_lengths);
                    let mut lengths = Vec::with_capacity(nlen + ndist);
                    while lengths.len() < nlen + ndist {
                        let symbol = code.decode(bits)?;
                        let (value, repeat) = match symbol {
                            0..=15 => (symbol as u8, 1),
                            16 => (
                                *lengths.last().ok_or("repeat of nothing")?,
                                3 + bits.get(2)?,
                            ),
                            17 => (0, 3 + bits.get(3)?),
                            _ => (0, 11 + bits.get(7)?),
                        };
                        lengths.extend(std::iter::repeat_n(value, repeat as usize));
                    }
                    if lengths.len() != nlen + ndist {
                        return Err("too many lengths".into());
                    }
                    let lit = Huffman::new(&lengths[..nlen]);
                    let dist = Huffman::new(&lengths[nlen..]);
                    codes(bits, &mut out, &lit, &dist)?;
                }
                _ => return Err("bad block type".into()),
            }
            if last == 1 {
                // The trailer starts at the next byte boundary.
                bits.align();
                return Ok(out);
            }
        }
    }

    fn codes(
        bits: &mut Bits<'_>,
        out: &mut Vec<u8>,
        lit: &Huffman,
        dist: &Huffman,
    ) -> Result<(), String> {
        loop {
            let symbol = usize::from(lit.decode(bits)?);
            match symbol {
                0..=255 => out.push(symbol as u8),
                256 => return Ok(()),
                _ => {
                    let i = symbol - 257;
                    if i >= 29 {
                        return Err("bad length".into());
                    }
                    let len =
                        usize::from(LEN_BASE[i]) + bits.get(u32::from(LEN_EXTRA[i]))? as usize;
                    let d = usize::from(dist.decode(bits)?);
                    if d >= 30 {
                        return Err("bad distance".into());
                    }
                    let back =
                        usize::from(DIST_BASE[d]) + bits.get(u32::from(DIST_EXTRA[d]))? as usize;
                    if back > out.len() {
                        return Err("distance too far".into());
                    }
                    for _ in 0..len {
                        out.push(out[out.len() - back]);
                    }
                }
            }
        }
    }
}

/// The layer wraps every response body, tracked or not: an untracked body must stay small.
#[test]
fn tracking_body_adds_a_few_words_to_the_inner_body() {
    use tower_sse_tracking::TrackingBody;
    let axum = size_of::<TrackingBody<axum::body::Body>>();
    let full = size_of::<TrackingBody<Full<Bytes>>>();
    println!("size_of TrackingBody<axum::body::Body> = {axum}, TrackingBody<Full<Bytes>> = {full}");
    // The inner body, a pointer to the boxed tracking state and a held frame's data.
    assert!(axum <= size_of::<axum::body::Body>() + 8 + size_of::<Option<Bytes>>());
    assert!(full <= size_of::<Full<Bytes>>() + 8 + size_of::<Option<Bytes>>());
}

/// A request body that is neither `Send` nor `Sync` (an `Rc`): the layer must not require more
/// of the request than the inner service does, with resume off or on (then the session's ID is
/// read from the store while the request waits in the response future).
#[tokio::test]
async fn a_request_body_that_is_not_send_works_with_and_without_resume() {
    use std::rc::Rc;

    let session = sid("local");
    for resume in [false, true] {
        let store = MemoryStore::new();
        store
            .save_batch(&[SessionUpdate {
                session: session.clone(),
                last_event_id: LastEventId::from("41"),
                version: 1,
                last_activity: SystemTime::now(),
            }])
            .await
            .unwrap();
        let tracking = EventTrackingLayer::builder()
            .store(store.clone())
            .resume(resume)
            .build();
        let service = tracking.layer(service_fn(|req: Request<Rc<String>>| {
            let seen = req
                .headers()
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = format!("id: 42\ndata: {} {:?}\n\n", req.body(), seen);
            async move { Ok::<_, Infallible>(sse(Full::new(Bytes::from(body)))) }
        }));
        let request = Request::get("/events")
            .header(SESSION_HEADER, "local")
            .body(Rc::new("not send".to_owned()))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(response.body().is_tracked());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let expected = if resume {
            "id: 42\ndata: not send Some(\"41\")\n\n"
        } else {
            "id: 42\ndata: not send None\n\n"
        };
        assert_eq!(bytes, expected);
        tracking.flush().await.unwrap();
        assert_eq!(
            tracking.worker().last_event_id(&session).as_deref(),
            Some("42")
        );
        tracking.shutdown(Duration::from_secs(1)).await.unwrap();
    }
}
