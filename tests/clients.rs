//! What real HTTP clients meet, through a real loopback server: a body that ended stays ended,
//! resume only where a client resumes (GET), a compressed stream that cannot be tracked is
//! counted, and the layer fits a tower-http `ServiceBuilder` stack.

mod support;

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    body::Body,
    response::sse::{Event, Sse},
    routing::{get, post},
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::Empty;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::ServiceBuilder;
use tower_http::compression::{CompressionLayer, predicate::Predicate};
use tower_sse_tracking::{EventTrackingLayer, metrics as m, store::MemoryStore};

use support::{fetch, read_until, serve, sid, stream as key};

/// Compresses every response, event streams included (tower-http's default predicate never
/// compresses `text/event-stream`).
#[derive(Clone, Copy)]
struct Always;

impl Predicate for Always {
    fn should_compress<B: http_body::Body>(&self, _: &http::Response<B>) -> bool {
        true
    }
}

/// An event stream that is *not* fused: polled after its end, `unfold` panics.
fn unfused(ids: &'static [&'static str]) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(stream::unfold(ids.iter(), |mut it| async move {
        let id = it.next()?;
        Some((Ok(Event::default().id(*id).data("x")), it))
    }))
}

fn get_request(path: &str, session: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("mcp-session-id", session)
        .body(Empty::new())
        .unwrap()
}

/// Finding 6: under a compression layer that compresses event streams, the encoder polls its
/// inner body again after the end; an unfused axum stream then panics. The layer's body stays
/// ended, so the client gets the whole stream.
#[tokio::test]
async fn an_ended_body_is_never_polled_again_so_compression_over_an_unfused_stream_works() {
    let tracking = EventTrackingLayer::builder().build();
    let app = Router::new()
        .route("/events", get(|| async { unfused(&["1", "2", "3"]) }))
        .layer(tracking.clone())
        .layer(CompressionLayer::new().compress_when(Always));
    let addr = serve(app).await;
    let mut request = get_request("/events", "gz");
    request
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
    let (parts, body) = fetch(addr, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[header::CONTENT_ENCODING], "gzip");
    assert!(!body.is_empty(), "a gzip stream arrived");
    tracking.flush().await.unwrap();
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("gz"), &key("/events"))
            .as_deref(),
        Some("3")
    );
}

/// Finding 9: `EventSource` reconnects with GET; a POST that starts new work must never be told
/// to continue an old stream. Resume fills in `Last-Event-ID` on GET only by default.
#[tokio::test]
async fn resume_fills_in_last_event_id_on_get_only_by_default() {
    let tracking = EventTrackingLayer::builder().resume(true).build();
    let seen = |headers: HeaderMap| async move {
        let id = headers
            .get("last-event-id")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        Sse::new(stream::iter([Ok::<_, Infallible>(
            Event::default().id("7").data(id),
        )]))
    };
    let app = Router::new()
        .route("/events", get(seen).post(seen))
        .layer(tracking.clone());
    let addr = serve(app).await;
    // The session's position is 7 after a first stream.
    fetch(addr, get_request("/events", "s")).await;
    tracking.flush().await.unwrap();
    let (_, body) = fetch(addr, get_request("/events", "s")).await;
    assert_eq!(body, "id: 7\ndata: 7\n\n", "a GET resumes");
    let mut post_request = get_request("/events", "s");
    *post_request.method_mut() = Method::POST;
    let (_, body) = fetch(addr, post_request).await;
    assert_eq!(body, "id: 7\ndata: none\n\n", "a POST starts afresh");

    // Configurable: POST too.
    let tracking = EventTrackingLayer::builder()
        .resume(true)
        .resume_methods([Method::GET, Method::POST])
        .build();
    let app = Router::new()
        .route("/events", post(seen))
        .layer(tracking.clone());
    let addr = serve(app).await;
    let mut first = get_request("/events", "p");
    *first.method_mut() = Method::POST;
    fetch(addr, first).await;
    tracking.flush().await.unwrap();
    let mut again = get_request("/events", "p");
    *again.method_mut() = Method::POST;
    let (_, body) = fetch(addr, again).await;
    assert_eq!(body, "id: 7\ndata: 7\n\n");
}

/// Finding 5: an event stream compressed inside the layer cannot be tracked; that is counted
/// (`untracked{reason="content_encoding"}`), not silent.
#[test]
fn a_compressed_event_stream_is_counted_as_untracked() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = support::runtime();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let tracking = EventTrackingLayer::builder().build();
            // Fused: under compression without this layer between, an unfused stream panics.
            let app = Router::new()
                .route(
                    "/events",
                    get(|| async {
                        let events = [Ok::<_, Infallible>(Event::default().id("1").data("x"))];
                        Sse::new(stream::iter(events).fuse())
                    }),
                )
                .layer(CompressionLayer::new().compress_when(Always))
                .layer(tracking.clone());
            let addr = serve(app).await;
            for _ in 0..2 {
                let mut request = get_request("/events", "zipped");
                request
                    .headers_mut()
                    .insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
                let (parts, _) = fetch(addr, request).await;
                assert_eq!(parts.headers[header::CONTENT_ENCODING], "gzip");
            }
            tracking.flush().await.unwrap();
            assert_eq!(
                tracking
                    .worker()
                    .last_event_id(&sid("zipped"), &key("/events")),
                None
            );
        });
    });
    let untracked = support::counted(&snapshotter, m::UNTRACKED, "reason", "content_encoding");
    assert_eq!(untracked, 2);
}

/// Finding 10: the layer inside a tower-http `ServiceBuilder` stack whose layers need
/// `ResBody: Default` (timeout, CORS, bearer auth), with request IDs, tracing and compression,
/// serving a whole `Router`; and the tracking layer outside that stack.
#[tokio::test]
async fn the_layer_fits_a_tower_http_stack_in_either_order() {
    use tower_http::{
        cors::CorsLayer,
        request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
        timeout::TimeoutLayer,
        trace::TraceLayer,
        validate_request::ValidateRequestHeaderLayer,
    };
    let events = || async { unfused(&["1", "2"]) };
    let request_id = http::HeaderName::from_static("x-request-id");

    // Tracking innermost, the whole stack around it.
    let tracking = EventTrackingLayer::builder()
        .store(MemoryStore::new())
        .build();
    let app = Router::new().route("/events", get(events)).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .layer(TraceLayer::new_for_http())
            .layer(CompressionLayer::new())
            .layer(CorsLayer::permissive())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ))
            // Deprecated as too basic for real use; it is the layer users reported, and what
            // matters here is its `ResBody: Default` bound.
            .layer(
                #[allow(deprecated)]
                ValidateRequestHeaderLayer::bearer("secret"),
            )
            .layer(tracking.clone()),
    );
    let addr = serve(app).await;
    let mut request = get_request("/events", "stacked");
    request
        .headers_mut()
        .insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
    let (parts, body) = fetch(addr, request).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.contains_key(&request_id));
    assert_eq!(body, "id: 1\ndata: x\n\nid: 2\ndata: x\n\n");
    let (parts, _) = fetch(addr, get_request("/events", "no-token")).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    tracking.flush().await.unwrap();
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("stacked"), &key("/events"))
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("no-token"), &key("/events")),
        None
    );

    // Tracking outermost, around a whole router with its own stack: `axum::serve` wants an
    // `axum::body::Body`, hence the `map_response`.
    let tracking = EventTrackingLayer::builder().build();
    let inner = Router::new().route("/events", get(events)).layer(
        ServiceBuilder::new()
            .layer(CorsLayer::permissive())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            )),
    );
    let app = Router::new().fallback_service(
        ServiceBuilder::new()
            .map_response(|response: http::Response<_>| response.map(Body::new))
            .layer(tracking.clone())
            .service(inner),
    );
    let addr = serve(app).await;
    let (_, body) = fetch(addr, get_request("/events", "outside")).await;
    assert_eq!(body, "id: 1\ndata: x\n\nid: 2\ndata: x\n\n");
    tracking.flush().await.unwrap();
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("outside"), &key("/events"))
            .as_deref(),
        Some("2")
    );
}

/// Finding 1: browsers cannot send custom headers: `EventSource` sends the page's cookies and
/// the URL. Sessions from a cookie and from a query parameter, over real requests.
#[tokio::test]
async fn browsers_are_tracked_by_cookie_or_query_parameter() {
    let events = || async { unfused(&["1", "2"]) };

    let by_cookie = EventTrackingLayer::builder().session_cookie("sid").build();
    let addr = serve(
        Router::new()
            .route("/events", get(events))
            .layer(by_cookie.clone()),
    )
    .await;
    let request = Request::get("/events")
        .header(header::COOKIE, "theme=dark; sid=tab%201; lang=en")
        .body(Empty::new())
        .unwrap();
    let (_, body) = fetch(addr, request).await;
    assert_eq!(body, "id: 1\ndata: x\n\nid: 2\ndata: x\n\n");
    by_cookie.flush().await.unwrap();
    assert_eq!(
        by_cookie
            .worker()
            .last_event_id(&sid("tab 1"), &key("/events"))
            .as_deref(),
        Some("2")
    );

    let by_query = EventTrackingLayer::builder()
        .session_query("session")
        .build();
    let addr = serve(
        Router::new()
            .route("/events", get(events))
            .layer(by_query.clone()),
    )
    .await;
    for (uri, session) in [
        ("/events?session=a&max=30", "a"),
        ("/events?max=30&session=b", "b"),
        ("/events?session=c%2Fd+e", "c/d e"),
    ] {
        let (_, body) = fetch(addr, Request::get(uri).body(Empty::new()).unwrap()).await;
        assert_eq!(body, "id: 1\ndata: x\n\nid: 2\ndata: x\n\n");
        by_query.flush().await.unwrap();
        assert_eq!(
            by_query
                .worker()
                .last_event_id(&sid(session), &key("/events"))
                .as_deref(),
            Some("2"),
            "{uri}"
        );
    }
    // A broken escape is refused, not guessed at.
    fetch(
        addr,
        Request::get("/events?session=%zz")
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    by_query.flush().await.unwrap();
    assert_eq!(by_query.worker().tracked_sessions(), 3);
}

/// Finding 3: a client's own `Last-Event-ID` is authoritative. After 1..100, a client that
/// reconnects at 90 gets 91..95: the stored position must be 95, not 100 (91..95 were still in
/// the duplicate window); one that reconnects at 0 gets 1..5, and the position is 5.
#[tokio::test]
async fn a_clients_own_last_event_id_resets_the_position() {
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder().store(store.clone()).build();
    let numbered = |headers: HeaderMap| async move {
        let (from, count) = match headers.get("last-event-id") {
            Some(v) => (v.to_str().unwrap().parse::<u64>().unwrap(), 5),
            None => (0, 100),
        };
        let events = (from + 1..=from + count)
            .map(|n| Ok::<_, Infallible>(Event::default().id(n.to_string()).data("x")));
        Sse::new(stream::iter(events))
    };
    let app = Router::new()
        .route("/events", get(numbered))
        .layer(tracking.clone());
    let addr = serve(app).await;
    let store_id = || async {
        tracking.flush().await.unwrap();
        let stored = store.get(&sid("c"), &key("/events")).unwrap().last_event_id;
        assert_eq!(
            tracking
                .worker()
                .last_event_id(&sid("c"), &key("/events"))
                .as_deref(),
            stored.as_str(),
            "memory and store agree"
        );
        stored.as_str().map(str::to_owned)
    };
    fetch(addr, get_request("/events", "c")).await;
    assert_eq!(store_id().await.as_deref(), Some("100"));
    for (stated, expect) in [("90", "95"), ("0", "5"), ("5", "10")] {
        let mut request = get_request("/events", "c");
        request
            .headers_mut()
            .insert("last-event-id", stated.parse().unwrap());
        fetch(addr, request).await;
        assert_eq!(store_id().await.as_deref(), Some(expect), "after {stated}");
    }
}

/// The event stream of [`numbered`].
type Numbered = Sse<stream::Iter<std::vec::IntoIter<Result<Event, Infallible>>>>;

/// An endpoint that streams events `1..=n` and says, in a first event, which `Last-Event-ID`
/// it was called with.
fn numbered(n: u32) -> impl Fn(HeaderMap) -> std::future::Ready<Numbered> + Clone {
    move |headers: HeaderMap| {
        let seen = headers
            .get("last-event-id")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        let mut events = vec![Ok(Event::default().event("seen").data(seen))];
        events.extend((1..=n).map(|i| Ok(Event::default().id(i.to_string()).data("x"))));
        std::future::ready(Sse::new(stream::iter(events)))
    }
}

/// Serves `/events` (events 1..=5) and `/other` (1..=2) behind `tracking`.
async fn two_endpoints(tracking: &EventTrackingLayer) -> std::net::SocketAddr {
    let app = Router::new()
        .route("/events", get(numbered(5)))
        .route("/other", get(numbered(2)))
        .layer(tracking.clone());
    serve(app).await
}

fn with_cookie(path: &str, sid: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(header::COOKIE, format!("sid={sid}"))
        .body(Empty::new())
        .unwrap()
}

/// The `Last-Event-ID` an endpoint of [`numbered`] was called with.
fn seen(body: &[u8]) -> String {
    let body = std::str::from_utf8(body).unwrap();
    let (_, rest) = body.split_once("event: seen\ndata: ").unwrap();
    rest.lines().next().unwrap().to_owned()
}

/// Finding 2: positions are per (session, stream). With one cookie, a second endpoint is not
/// handed the first one's position, and each endpoint resumes from its own.
#[tokio::test]
async fn endpoints_of_one_session_never_share_a_position() {
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_cookie("sid")
        .resume(true)
        .build();
    let addr = two_endpoints(&tracking).await;
    let (_, body) = fetch(addr, with_cookie("/events", "c")).await;
    assert_eq!(seen(&body), "none");
    tracking.flush().await.unwrap();
    let (_, body) = fetch(addr, with_cookie("/other", "c")).await;
    assert_eq!(seen(&body), "none", "/events' position is not /other's");
    tracking.flush().await.unwrap();
    let (_, body) = fetch(addr, with_cookie("/events", "c")).await;
    assert_eq!(seen(&body), "5", "/events resumes from its own position");
    let (_, body) = fetch(addr, with_cookie("/other", "c")).await;
    assert_eq!(seen(&body), "2", "and /other from its own");
    tracking.flush().await.unwrap();
    let c = sid("c");
    assert_eq!(
        store.last_event_id(&c, &key("/events")).as_deref(),
        Some("5")
    );
    assert_eq!(
        store.last_event_id(&c, &key("/other")).as_deref(),
        Some("2")
    );
    // The query is not part of the default key: `?x=1` is the same endpoint.
    let (_, body) = fetch(addr, with_cookie("/events?x=1", "c")).await;
    assert_eq!(seen(&body), "5");

    // Opt-in: one position per session (protocols whose IDs are unique per session).
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .one_position_per_session()
        .resume(true)
        .build();
    let addr = two_endpoints(&tracking).await;
    fetch(addr, with_cookie("/events", "c")).await;
    tracking.flush().await.unwrap();
    let (_, body) = fetch(addr, with_cookie("/other", "c")).await;
    assert_eq!(seen(&body), "5", "one position for the whole session");
}

/// Finding 2: two tabs of one page share a cookie and an endpoint; a stream key that tells them
/// apart (a tab ID in the query) keeps their positions apart.
#[tokio::test]
async fn two_tabs_with_one_cookie_keep_their_own_positions_with_a_stream_key() {
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .stream_key(|parts| {
            let tab = parts
                .uri
                .query()?
                .split('&')
                .find_map(|p| p.strip_prefix("tab="))?;
            Some(format!("{}#{tab}", parts.uri.path()))
        })
        .resume(true)
        .build();
    let app = Router::new()
        .route("/events", get(numbered(3)))
        .route("/more", get(numbered(9)))
        .layer(tracking.clone());
    let addr = serve(app).await;
    fetch(addr, with_cookie("/events?tab=1", "c")).await;
    fetch(addr, with_cookie("/more?tab=2", "c")).await;
    tracking.flush().await.unwrap();
    let (_, body) = fetch(addr, with_cookie("/events?tab=1", "c")).await;
    assert_eq!(seen(&body), "3");
    let (_, body) = fetch(addr, with_cookie("/more?tab=2", "c")).await;
    assert_eq!(seen(&body), "9");
    // No tab: the key function names no stream, so the request is not tracked (nor resumed).
    let (_, body) = fetch(addr, with_cookie("/events", "c")).await;
    assert_eq!(seen(&body), "none");
    tracking.flush().await.unwrap();
    let worker = tracking.worker();
    assert_eq!(worker.last_event_id(&sid("c"), &key("/events")), None);
    assert_eq!(
        worker
            .last_event_id(&sid("c"), &key("/events#1"))
            .as_deref(),
        Some("3")
    );
}

/// Finding 2: stream keys come from clients too. A session gets at most
/// `max_streams_per_session` streams in memory: at the cap, its idlest stream makes room, and
/// when all are busy a new one passes through untracked and counted.
#[tokio::test]
async fn a_session_cannot_take_more_than_its_cap_of_streams() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_cookie("sid")
        .worker(tower_sse_tracking::worker::WorkerConfig::default().max_streams_per_session(2))
        .build();
    let app = Router::new()
        .route("/{n}", get(numbered(1)))
        .layer(tracking.clone());
    let addr = serve(app).await;
    for n in 0..10 {
        let (_, body) = fetch(addr, with_cookie(&format!("/{n}"), "c")).await;
        assert_eq!(seen(&body), "none");
        tracking.flush().await.unwrap();
        assert!(tracking.worker().tracked_sessions() <= 2);
    }
    // Every stream was tracked and written: the idle ones made room for the next.
    for n in 0..10 {
        assert_eq!(
            store
                .last_event_id(&sid("c"), &key(&format!("/{n}")))
                .as_deref(),
            Some("1")
        );
    }
    let forgotten = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            k.key().name() == m::SESSIONS_FORGOTTEN
                && k.key().labels().any(|l| l.value() == "streams")
        })
        .map(|(.., v)| v);
    assert_eq!(forgotten, Some(DebugValue::Counter(8)));
}

/// Finding 11: a session ends with a request (MCP's `DELETE`); with `forget_on`, its positions
/// go from memory and from the store before the response reaches the client, and a request
/// that failed forgets nothing.
#[tokio::test]
async fn a_successful_delete_forgets_the_session_before_its_response() {
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_cookie("sid")
        .resume(true)
        .forget_on([Method::DELETE])
        .build();
    let app = Router::new()
        .route(
            "/events",
            get(numbered(4)).delete(|headers: HeaderMap| async move {
                if headers.contains_key("x-refuse") {
                    StatusCode::FORBIDDEN
                } else {
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .route("/other", get(numbered(2)))
        .layer(tracking.clone());
    let addr = serve(app).await;
    for (path, session) in [("/events", "a"), ("/other", "a"), ("/events", "b")] {
        fetch(addr, with_cookie(path, session)).await;
    }
    tracking.flush().await.unwrap();
    assert_eq!(store.len(), 3);

    let delete = |refuse: bool| {
        let mut req = with_cookie("/events", "a");
        *req.method_mut() = Method::DELETE;
        if refuse {
            req.headers_mut()
                .insert("x-refuse", http::HeaderValue::from_static("1"));
        }
        req
    };
    let (parts, _) = fetch(addr, delete(true)).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(store.len(), 3, "a refused DELETE forgets nothing");

    let (parts, _) = fetch(addr, delete(false)).await;
    assert_eq!(parts.status, StatusCode::NO_CONTENT);
    // No flush, no wait: gone once the response arrived, from every stream of the session.
    let a = sid("a");
    assert_eq!(store.last_event_id(&a, &key("/events")), None);
    assert_eq!(store.last_event_id(&a, &key("/other")), None);
    assert_eq!(tracking.worker().last_event_id(&a, &key("/events")), None);
    assert_eq!(
        store.last_event_id(&sid("b"), &key("/events")).as_deref(),
        Some("4"),
        "other sessions stay"
    );
    let (_, body) = fetch(addr, with_cookie("/events", "a")).await;
    assert_eq!(seen(&body), "none", "nothing left to resume from");

    // Without `forget_on`, a DELETE forgets nothing.
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_cookie("sid")
        .build();
    let app = Router::new()
        .route(
            "/events",
            get(numbered(1)).delete(|| async { StatusCode::NO_CONTENT }),
        )
        .layer(tracking.clone());
    let addr = serve(app).await;
    fetch(addr, with_cookie("/events", "a")).await;
    tracking.flush().await.unwrap();
    fetch(addr, delete(false)).await;
    assert_eq!(store.len(), 1);
}

/// Finding 7: two layers in one process recorded the same gauges, which overwrote each other. A
/// named layer labels every metric it records (its worker's too) with `layer="<name>"`.
#[tokio::test]
async fn two_named_layers_side_by_side_keep_their_own_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let chat = EventTrackingLayer::builder().name("chat").build();
    let feed = EventTrackingLayer::builder().name("feed").build();
    let plain = EventTrackingLayer::builder().build();
    let app = Router::new()
        .route("/chat", get(numbered(3)).layer(chat.clone()))
        .route("/feed", get(numbered(2)).layer(feed.clone()))
        .route("/plain", get(numbered(1)).layer(plain.clone()));
    let addr = serve(app).await;
    for session in ["a", "b", "c"] {
        fetch(addr, get_request("/chat", session)).await;
    }
    fetch(addr, get_request("/feed", "a")).await;
    fetch(addr, get_request("/feed", &"x".repeat(200))).await; // too long a key
    fetch(addr, get_request("/plain", "a")).await;
    for layer in [&chat, &feed, &plain] {
        layer.flush().await.unwrap();
    }
    let metrics = snapshotter.snapshot().into_vec();
    let value = |name: &str, layer: Option<&str>, reason: Option<&str>| {
        metrics
            .iter()
            .find(|(k, ..)| {
                let key = k.key();
                let label = |l: &str| key.labels().find(|x| x.key() == l).map(|x| x.value());
                key.name() == name && label(m::LAYER_LABEL) == layer && label("reason") == reason
            })
            .map(|(.., v)| match v {
                DebugValue::Counter(n) => *n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => unreachable!("no histogram asked for"),
            })
    };
    let gauge = |layer| value(m::TRACKED_SESSIONS, layer, None);
    assert_eq!(gauge(Some("chat")), Some(3.0));
    assert_eq!(gauge(Some("feed")), Some(1.0));
    assert_eq!(gauge(None), Some(1.0), "unnamed");
    let events = |layer| value(m::EVENTS, layer, None);
    assert_eq!(
        events(Some("chat")),
        Some(12.0),
        "3 sessions x (1 + 3) events"
    );
    assert_eq!(events(Some("feed")), Some(3.0));
    assert_eq!(
        value(m::UNTRACKED, Some("feed"), Some("invalid_key")),
        Some(1.0),
        "request-path metrics carry the label too"
    );
    assert_eq!(value(m::UNTRACKED, Some("chat"), Some("invalid_key")), None);
}

/// Events 1..=5 at once, then 6..=8 after 1.5 s, then nothing (the stream stays open); first an
/// event that says which `Last-Event-ID` the request had.
async fn slow(headers: HeaderMap) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let seen = headers
        .get("last-event-id")
        .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
    let event = |i: u32| Ok(Event::default().id(i.to_string()).data("x"));
    let first: Vec<_> = std::iter::once(Ok(Event::default().event("seen").data(seen)))
        .chain((1..=5).map(event))
        .collect();
    let later = stream::once(tokio::time::sleep(Duration::from_millis(1500)))
        .flat_map(move |()| stream::iter((6..=8).map(event)));
    Sse::new(stream::iter(first).chain(later).chain(stream::pending()))
}

/// Finding 4: at most once (the default) leaves the newest ID handed over behind, so a client
/// that went away while 6..8 were in flight resumes after 8; at least once leaves the last ID
/// handed over at least `settle` before the end, so the client gets 6..8 again.
#[tokio::test]
async fn at_least_once_resume_sends_again_what_was_in_flight() {
    for (at_least_once, expected) in [(false, "8"), (true, "5")] {
        let mut builder = EventTrackingLayer::builder()
            .session_cookie("sid")
            .resume(true)
            // Heartbeats make the server notice at once that the client went away.
            .heartbeat(Duration::from_millis(50));
        if at_least_once {
            builder = builder.resume_at_least_once(Duration::from_secs(1));
        }
        let tracking = builder.build();
        let app = Router::new()
            .route("/events", get(slow))
            .layer(tracking.clone());
        let addr = serve(app).await;
        // The client reads up to 8, which went out right now, and goes away.
        let read = read_until(addr, with_cookie("/events", "c"), "id: 8\n").await;
        assert!(read.contains("data: none"), "{read}");
        let worker = tracking.worker();
        let mut waited = 0;
        while worker.last_event_id(&sid("c"), &key("/events")).as_deref() != Some(expected) {
            assert!(waited < 200, "position never became {expected}");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        let read = read_until(addr, with_cookie("/events", "c"), "id: 1\n").await;
        assert_eq!(
            seen(read.as_bytes()),
            expected,
            "at least once: {at_least_once}"
        );
        tracking.flush().await.unwrap();
    }
}
