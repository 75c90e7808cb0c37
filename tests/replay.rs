//! Replay at the layer, through a real loopback server: a reconnect with `Last-Event-ID` gets
//! the events it missed from the layer's history, byte for byte, whatever the wrapped service
//! can replay itself.

mod support;

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    response::sse::{Event, Sse},
    routing::get,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::Empty;
use tower_sse_tracking::{
    EventTrackingLayer,
    history::{ReplayConfig, UnknownId},
};

use support::{fetch, read_until, serve};

/// Calls of a handler, and the `Last-Event-ID` of each.
#[derive(Clone, Default)]
struct Calls(Arc<std::sync::Mutex<Vec<String>>>);

impl Calls {
    fn note(&self, headers: &HeaderMap) -> u32 {
        let id = headers
            .get("last-event-id")
            .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
        let n = id.parse().unwrap_or(0);
        self.0.lock().unwrap().push(id);
        n
    }

    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn event(i: u32) -> Result<Event, Infallible> {
    Ok(Event::default()
        .id(i.to_string())
        .data(format!("event {i}")))
}

/// Five events after the request's `Last-Event-ID`, then nothing more (the stream stays open):
/// a feed that cannot replay anything older.
async fn feed(
    State(calls): State<Calls>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let from = calls.note(&headers);
    Sse::new(stream::iter((from + 1..=from + 5).map(event)).chain(stream::pending()))
}

/// Events 1..=5 for the session (its cookie), then the stream ends: a complete answer.
async fn answer(
    State(calls): State<Calls>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    calls.note(&headers);
    let cookie = headers[header::COOKIE].to_str().unwrap().to_owned();
    Sse::new(stream::iter((1..=5).map(move |i| {
        Ok(Event::default()
            .id(i.to_string())
            .data(format!("event {i} for {cookie}")))
    })))
}

fn request(path: &str, session: &str, last: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::get(path).header(header::COOKIE, format!("sid={session}"));
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    req.body(Empty::new()).unwrap()
}

/// The IDs of the events in a body, in order.
fn ids(body: &str) -> Vec<u32> {
    body.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

async fn app(replay: ReplayConfig) -> (EventTrackingLayer, Calls, std::net::SocketAddr) {
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(replay)
        .build();
    let calls = Calls::default();
    let app = Router::new()
        .route("/feed", get(feed))
        .route("/answer", get(answer))
        .with_state(calls.clone())
        .layer(tracking.clone());
    let addr = serve(app).await;
    (tracking, calls, addr)
}

/// Waits until the layer has noticed a dropped connection (its stream released).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Waits until `cond` holds (at most 5 s).
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

/// A stream cut short: the reconnect gets the events after its ID from history, then the
/// service goes on after the newest of them; nothing lost, nothing twice.
#[tokio::test]
async fn a_cut_stream_is_replayed_then_continued_by_the_service() {
    let (_tracking, calls, addr) = app(ReplayConfig::default()).await;
    let first = read_until(addr, request("/feed", "a", None), "id: 5\n").await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    settle().await;
    // The client had processed up to 2 when it lost the connection.
    let body = read_until(addr, request("/feed", "a", Some("2")), "id: 10\n").await;
    assert_eq!(ids(&body), [3, 4, 5, 6, 7, 8, 9, 10], "{body}");
    assert!(
        body.starts_with("id: 3\ndata: event 3\n\n"),
        "byte for byte: {body}"
    );
    assert_eq!(calls.seen(), ["none", "5"], "the service went on after 5");
}

/// While the stream's producer still runs in this process, a reconnect follows it: the events
/// after its ID from history, then the live ones; the service is not called again.
#[tokio::test]
async fn a_reconnect_follows_a_running_stream_without_calling_the_service() {
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default())
        .build();
    let calls = Calls::default();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let live = {
        let calls = calls.clone();
        move |headers: HeaderMap| {
            let calls = calls.clone();
            let rx = rx.clone();
            async move {
                calls.note(&headers);
                let rx = rx.lock().await.take().expect("called once");
                let events = tokio_stream_from(rx).map(event);
                Sse::new(events)
            }
        }
    };
    let app = Router::new()
        .route("/live", get(live))
        .layer(tracking.clone());
    let addr = serve(app).await;
    for i in 1..=3 {
        tx.send(i).unwrap();
    }
    // The first client stays connected (its producer runs) in a task of its own.
    let first = tokio::spawn(read_until(addr, request("/live", "a", None), "id: 6\n"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(read_until(
        addr,
        request("/live", "a", Some("1")),
        "id: 6\n",
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 4..=6 {
        tx.send(i).unwrap();
    }
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(ids(&first), [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        ids(&second),
        [2, 3, 4, 5, 6],
        "history, then live: {second}"
    );
    assert_eq!(calls.seen(), ["none"], "called once");
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::UnboundedReceiver<u32>) -> impl Stream<Item = u32> {
    stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A stream that ended normally is complete in history: a reconnect gets the rest and the end,
/// without calling the service; one that has everything goes on to the service.
#[tokio::test]
async fn a_complete_stream_is_answered_from_history() {
    let (_tracking, calls, addr) = app(ReplayConfig::default()).await;
    let (_, body) = fetch(addr, request("/answer", "a", None)).await;
    assert_eq!(ids(std::str::from_utf8(&body).unwrap()), [1, 2, 3, 4, 5]);
    let (parts, body) = fetch(addr, request("/answer", "a", Some("2"))).await;
    assert_eq!(parts.headers["sse-replay"], "replayed");
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "id: 3\ndata: event 3 for sid=a\n\nid: 4\ndata: event 4 for sid=a\n\n\
         id: 5\ndata: event 5 for sid=a\n\n"
    );
    assert_eq!(calls.seen(), ["none"]);
    // Caught up: nothing to replay, the service decides (never an empty answer from here).
    let (_, body) = fetch(addr, request("/answer", "a", Some("5"))).await;
    assert_eq!(calls.seen(), ["none", "5"]);
    // The service started over: its events the client has are dropped at the seam.
    assert_eq!(&body[..], b"");
}

/// Histories never answer for another session, even with colliding IDs.
#[tokio::test]
async fn never_across_sessions() {
    let (_tracking, calls, addr) = app(ReplayConfig::default()).await;
    fetch(addr, request("/answer", "a", None)).await;
    // b never saw these IDs: its reconnect is unknown, passed through to the service.
    let (parts, body) = fetch(addr, request("/answer", "b", Some("2"))).await;
    assert_eq!(parts.headers["sse-replay"], "unknown");
    assert_eq!(calls.seen(), ["none", "2"]);
    let body = std::str::from_utf8(&body).unwrap().to_owned();
    assert_eq!(ids(&body), [1, 2, 3, 4, 5]);
    assert!(!body.contains("sid=a"), "{body}");
    // Now both have 1..5: each resumes from its own history.
    for session in ["a", "b"] {
        let (_, body) = fetch(addr, request("/answer", session, Some("3"))).await;
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            format!(
                "id: 4\ndata: event 4 for sid={session}\n\nid: 5\ndata: event 5 for sid={session}\n\n"
            )
        );
    }
    assert_eq!(calls.seen().len(), 2, "both answered from history");
}

/// Unknown and too old IDs, by policy: never an empty 200.
#[tokio::test]
async fn unknown_and_too_old_ids_by_policy() {
    let (_tracking, calls, addr) =
        app(ReplayConfig::default().unknown_id(UnknownId::Status(StatusCode::GONE))).await;
    let (parts, body) = fetch(addr, request("/answer", "a", Some("nope"))).await;
    assert_eq!(parts.status, StatusCode::GONE);
    assert_eq!(parts.headers["sse-replay"], "unknown");
    assert!(body.is_empty());
    assert!(calls.seen().is_empty(), "the service was not called");

    // Too old: four events kept, the client asks after the first.
    let (_tracking, calls, addr) = app(ReplayConfig::default()
        .max_events(3)
        .unknown_id(UnknownId::Gap))
    .await;
    fetch(addr, request("/answer", "a", None)).await;
    let (parts, body) = fetch(addr, request("/answer", "a", Some("1"))).await;
    assert_eq!(parts.headers["sse-replay"], "gap");
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        "event: gap\ndata: 3\n\nid: 3\ndata: event 3 for sid=a\n\n\
         id: 4\ndata: event 4 for sid=a\n\nid: 5\ndata: event 5 for sid=a\n\n"
    );
    assert_eq!(calls.seen(), ["none"]);
}

/// The global cap holds while 10,000 live streams write more than it allows: finished streams
/// would go first; live ones give up their oldest events and keep the newest; and when even
/// their floors do not fit, streams go on without a history.
#[tokio::test]
async fn memory_stays_under_the_global_cap_while_ten_thousand_streams_write() {
    // 20 MB of events; live streams keep their newest (about 750 bytes each with the ring and
    // the records): 7.5 MB for 10,000 fit under 16 MiB, not under 2 MiB.
    for cap in [16 << 20, 2 << 20] {
        let most = write_under_cap(10_000, cap).await;
        println!("cap {cap}: most held at once {most} bytes");
        // Transient overshoot is at most one stream's growth.
        assert!(most <= cap + (64 << 10), "{most} > {cap}");
    }
}

/// `streams` live streams write 20 events of ~110 bytes each, one per frame, in rounds, under a
/// history cap of `cap` bytes; returns the most the histories held at once (checked after every
/// round to be at most the cap).
async fn write_under_cap(streams: usize, cap: usize) -> usize {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt, service_fn};

    const EVENTS: usize = 20;
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default().max_total_bytes(cap))
        .worker(tower_sse_tracking::worker::WorkerConfig::default().max_sessions(streams))
        .build();
    let service = service_fn(|_req: Request<()>| async {
        let frames = (1..=EVENTS).map(|i| {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!(
                "id: {i}\ndata: {}\n\n",
                "x".repeat(90)
            ))))
        });
        Ok::<_, Infallible>(
            http::Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(http_body_util::StreamBody::new(stream::iter(frames)))
                .unwrap(),
        )
    });
    let mut bodies = Vec::with_capacity(streams);
    for i in 0..streams {
        let req = Request::get("/events")
            .header(header::COOKIE, format!("sid=s{i}"))
            .body(())
            .unwrap();
        let response = tracking.layer(service).oneshot(req).await.unwrap();
        assert!(response.body().is_tracked());
        bodies.push(response.into_body());
    }
    let mut most = 0;
    for _round in 0..EVENTS {
        for body in &mut bodies {
            body.frame().await.unwrap().unwrap();
            most = most.max(tracking.history_bytes());
        }
        assert!(
            tracking.history_bytes() <= cap,
            "{} > {cap}",
            tracking.history_bytes()
        );
    }
    drop(bodies);
    assert!(tracking.history_bytes() <= cap);
    most
}

/// A generated answer's events.
type Tokens = Sse<std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>>;

/// Tokens 1..=`n`, `gap` apart, counting how often the generator ran.
fn generator(
    runs: Arc<std::sync::atomic::AtomicUsize>,
    n: u32,
    gap: Duration,
) -> impl Fn() -> std::future::Ready<Tokens> + Clone {
    move || {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tokens = stream::iter(1..=n).then(move |i| async move {
            tokio::time::sleep(gap).await;
            Ok(Event::default()
                .id(i.to_string())
                .data(format!("token {i}")))
        });
        std::future::ready(Sse::new(Box::pin(tokens) as std::pin::Pin<Box<_>>))
    }
}

/// A POST that streams generated tokens outlives its client for the detach grace: the client
/// reads 10, goes away, reconnects with `Last-Event-ID: 10` and gets 11..40 exactly once, while
/// the generator ran once.
#[tokio::test]
async fn a_generated_stream_outlives_its_client_and_the_reconnect_gets_the_rest() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = Arc::new(AtomicUsize::new(0));
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default().detach_grace(Duration::from_secs(5)))
        .build();
    let app = Router::new()
        .route(
            "/chat",
            axum::routing::post(generator(runs.clone(), 40, Duration::from_millis(10))),
        )
        .layer(tracking.clone());
    let addr = serve(app).await;
    let post = |last: Option<&str>| {
        let mut req = Request::post("/chat").header(header::COOKIE, "sid=a");
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        req.body(Empty::new()).unwrap()
    };
    let first = read_until(addr, post(None), "id: 10\n").await;
    assert_eq!(ids(&first), (1..=10).collect::<Vec<_>>());
    wait_until("read on without its client", || {
        tracking.detached_streams() == 1
    })
    .await;
    let (parts, rest) = fetch(addr, post(Some("10"))).await;
    assert_eq!(parts.headers["sse-replay"], "replayed");
    let rest = std::str::from_utf8(&rest).unwrap();
    assert_eq!(ids(rest), (11..=40).collect::<Vec<_>>(), "{rest}");
    assert!(rest.starts_with("id: 11\ndata: token 11\n\n"));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the generator ran once");
    wait_until("done once the upstream ended", || {
        tracking.detached_streams() == 0
    })
    .await;
}

/// The grace and the cap of detached streams bound the work done for absent clients.
#[tokio::test]
async fn detached_streams_are_bounded_by_their_grace_and_their_cap() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for (grace, cap, detached) in [
        (Duration::from_millis(100), 8, 1),
        (Duration::from_secs(5), 0, 0),
    ] {
        let runs = Arc::new(AtomicUsize::new(0));
        let tracking = EventTrackingLayer::builder()
            .session_cookie("sid")
            .replay(
                ReplayConfig::default()
                    .detach_grace(grace)
                    .max_detached(cap),
            )
            .build();
        let app = Router::new()
            .route(
                "/chat",
                get(generator(runs.clone(), 1000, Duration::from_millis(5))),
            )
            .layer(tracking.clone());
        let addr = serve(app).await;
        read_until(addr, request("/chat", "a", None), "id: 3\n").await;
        if detached > 0 {
            wait_until("detached", || tracking.detached_streams() == detached).await;
        } else {
            settle().await;
            assert_eq!(tracking.detached_streams(), 0, "over the cap");
        }
        wait_until("the grace ran out", || tracking.detached_streams() == 0).await;
        // The stream was released (cut short).
        settle().await;
        // Cut short: a reconnect replays what was read and goes on with the service.
        let body = read_until(addr, request("/chat", "a", Some("2")), "id: 3\n").await;
        assert!(body.starts_with("id: 3\n"), "{body}");
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}

/// A stream bound to a credential replays only to a request with the same one; an authorize
/// function can refuse any resume. Refused: as if the ID were unknown.
#[tokio::test]
async fn replay_is_bound_to_a_credential_and_can_be_refused() {
    let (_tracking, calls, addr) = app(ReplayConfig::default()
        .bind_to(header::AUTHORIZATION)
        .authorize(|_, _, headers| !headers.contains_key("x-deny")))
    .await;
    let with = |token: Option<&str>, last: Option<&str>, deny: bool| {
        let mut req = request("/answer", "a", last);
        if let Some(token) = token {
            req.headers_mut()
                .insert(header::AUTHORIZATION, token.parse().unwrap());
        }
        if deny {
            req.headers_mut().insert("x-deny", "1".parse().unwrap());
        }
        req
    };
    fetch(addr, with(Some("Bearer alice"), None, false)).await;
    let (parts, body) = fetch(addr, with(Some("Bearer alice"), Some("3"), false)).await;
    assert_eq!(parts.headers["sse-replay"], "replayed");
    assert_eq!(ids(std::str::from_utf8(&body).unwrap()), [4, 5]);
    assert_eq!(calls.seen().len(), 1, "answered from history");
    for (token, deny) in [
        (Some("Bearer mallory"), false),
        (None, false),
        (Some("Bearer alice"), true),
    ] {
        let (parts, _) = fetch(addr, with(token, Some("3"), deny)).await;
        assert_eq!(
            parts.headers["sse-replay"], "unknown",
            "{token:?} deny: {deny}"
        );
    }
    assert_eq!(
        calls.seen().len(),
        4,
        "each refused resume went to the service"
    );
}

/// A response following a live stream that falls behind by more than the history keeps ends
/// (its client reconnects, and gets the policy for IDs too old) rather than skip events silently.
#[tokio::test]
async fn a_follower_that_falls_too_far_behind_ends() {
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default().max_events(4))
        .build();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let service = tower::service_fn(move |_req: Request<()>| {
        let mut rx = rx.lock().unwrap().take().expect("called once");
        let frames = stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
        std::future::ready(Ok::<_, Infallible>(
            http::Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(http_body_util::StreamBody::new(frames))
                .unwrap(),
        ))
    });
    let req = |last: Option<&str>| {
        let mut req = Request::get("/live").header(header::COOKIE, "sid=a");
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        req.body(()).unwrap()
    };
    let send = |i: u32| {
        tx.send(Bytes::from(format!("id: {i}\ndata: x\n\n")))
            .unwrap()
    };
    let mut producer = tracking
        .layer(service.clone())
        .oneshot(req(None))
        .await
        .unwrap()
        .into_body();
    for i in 1..=2 {
        send(i);
        producer.frame().await.unwrap().unwrap();
    }
    let mut follower = tracking
        .layer(service)
        .oneshot(req(Some("1")))
        .await
        .unwrap()
        .into_body();
    let frame = follower.frame().await.unwrap().unwrap();
    assert_eq!(&frame.into_data().unwrap()[..], b"id: 2\ndata: x\n\n");
    // Ten more go through while the follower reads nothing: it is 10 behind, 4 are kept.
    for i in 3..=12 {
        send(i);
        producer.frame().await.unwrap().unwrap();
    }
    assert!(follower.frame().await.is_none(), "ended, not skipped ahead");
}

/// A response answered from history has the original's head, less what belonged to that
/// response alone: a cookie it set is not set again for whoever resumes.
#[tokio::test]
async fn an_answer_from_history_does_not_repeat_the_original_cookies() {
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default())
        .build();
    let app = Router::new()
        .route(
            "/answer",
            get(|| async {
                (
                    [
                        (header::SET_COOKIE, "token=secret"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    Sse::new(stream::iter((1..=3).map(event))),
                )
            }),
        )
        .layer(tracking.clone());
    let addr = serve(app).await;
    let (first, _) = fetch(addr, request("/answer", "a", None)).await;
    assert_eq!(first.headers[header::SET_COOKIE], "token=secret");
    let (parts, body) = fetch(addr, request("/answer", "a", Some("1"))).await;
    assert_eq!(parts.headers["sse-replay"], "replayed");
    assert_eq!(ids(std::str::from_utf8(&body).unwrap()), [2, 3]);
    assert!(!parts.headers.contains_key(header::SET_COOKIE));
    assert_eq!(parts.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(parts.headers[header::CONTENT_TYPE], "text/event-stream");
}

/// `detach_if` picks the streams that may outlive their client: here the POSTs only.
#[tokio::test]
async fn only_the_streams_detach_if_picks_outlive_their_client() {
    use std::sync::atomic::AtomicUsize;
    let runs = Arc::new(AtomicUsize::new(0));
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(
            ReplayConfig::default()
                .detach_grace(Duration::from_secs(5))
                .detach_if(|method, _| method == http::Method::POST),
        )
        .build();
    let generate = generator(runs, 1000, Duration::from_millis(5));
    let app = Router::new()
        .route("/chat", get(generate.clone()).post(generate))
        .layer(tracking.clone());
    let addr = serve(app).await;
    read_until(addr, request("/chat", "a", None), "id: 3\n").await;
    settle().await;
    settle().await;
    assert_eq!(tracking.detached_streams(), 0, "a GET ends with its client");
    let mut post = request("/chat", "b", None);
    *post.method_mut() = http::Method::POST;
    read_until(addr, post, "id: 3\n").await;
    wait_until("the POST reads on", || tracking.detached_streams() == 1).await;
}

/// A stream read by a task of its own still says it is tracked.
#[tokio::test]
async fn a_detachable_stream_is_tracked() {
    use tower::{Layer, ServiceExt};
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default().detach_grace(Duration::from_secs(1)))
        .build();
    let service = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(
            http::Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(http_body_util::Full::new(Bytes::from_static(
                    b"id: 1\ndata: x\n\n",
                )))
                .unwrap(),
        )
    });
    let req = Request::get("/e")
        .header(header::COOKIE, "sid=a")
        .body(())
        .unwrap();
    let response = tracking.layer(service).oneshot(req).await.unwrap();
    assert!(response.body().is_tracked());
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"id: 1\ndata: x\n\n");
}

/// Two replicas share a history store: a stream cut on A is replayed by B from the store, and
/// B's service goes on after the newest replayed event; nothing lost, nothing twice.
#[tokio::test]
async fn a_reconnect_to_another_replica_is_replayed_from_the_shared_store() {
    use tower_sse_tracking::history::MemoryHistoryStore;
    let shared = MemoryHistoryStore::default();
    let replica = |calls: Calls| {
        let shared = shared.clone();
        async move {
            let tracking = EventTrackingLayer::builder()
                .session_cookie("sid")
                .replay(ReplayConfig::default().store(shared))
                .build();
            let app = Router::new()
                .route("/feed", get(feed))
                .with_state(calls)
                .layer(tracking.clone());
            (tracking, serve(app).await)
        }
    };
    let (calls_a, calls_b) = (Calls::default(), Calls::default());
    let (a, addr_a) = replica(calls_a.clone()).await;
    let (_b, addr_b) = replica(calls_b.clone()).await;
    let first = read_until(addr_a, request("/feed", "s", None), "id: 5\n").await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    // A notices its client went away; its worker writes the events and the stream's end (cut)
    // to the history store. (Before that, B would follow the stream as still produced on A.)
    settle().await;
    a.flush().await.unwrap();
    assert!(shared.bytes() > 0);
    // The client had 2 when A went away; the load balancer sends it to B.
    let body = read_until(addr_b, request("/feed", "s", Some("2")), "id: 10\n").await;
    assert_eq!(ids(&body), [3, 4, 5, 6, 7, 8, 9, 10], "{body}");
    assert!(
        body.starts_with("id: 3\ndata: event 3\n\n"),
        "byte for byte"
    );
    assert_eq!(
        calls_b.seen(),
        ["5"],
        "B's service went on after the replay"
    );
    // An ID in no history, on B: unknown, passed through.
    let (parts, _) = fetch_head(addr_b, request("/feed", "s", Some("nope"))).await;
    assert_eq!(parts.headers["sse-replay"], "unknown");
}

/// Sends a request and returns its head (the body stays open: the feeds never end).
async fn fetch_head(
    addr: std::net::SocketAddr,
    request: Request<Empty<Bytes>>,
) -> (http::response::Parts, ()) {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client
        .request(Request::from_parts(parts, body))
        .await
        .unwrap();
    (response.into_parts().0, ())
}

/// A stream still produced on replica A is followed from replica B through the shared store:
/// what A had written, then what it writes next, until A's stream ends; B's service is not
/// called.
#[tokio::test]
async fn another_replica_follows_a_stream_still_produced_elsewhere() {
    use tower_sse_tracking::history::MemoryHistoryStore;
    let shared = MemoryHistoryStore::default();
    let layer = || {
        EventTrackingLayer::builder()
            .session_cookie("sid")
            .replay(ReplayConfig::default().store(shared.clone()))
            .worker(
                tower_sse_tracking::worker::WorkerConfig::default()
                    .flush_interval(Duration::from_millis(10)),
            )
            .build()
    };
    let (a, b) = (layer(), layer());
    // A: a live feed fed by a channel.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let live = move || {
        let rx = rx.clone();
        async move {
            let rx = rx.lock().await.take().expect("called once");
            Sse::new(tokio_stream_from(rx).map(event))
        }
    };
    let addr_a = serve(Router::new().route("/live", get(live)).layer(a.clone())).await;
    // B: its service must not be called.
    let calls_b = Calls::default();
    let addr_b = serve(
        Router::new()
            .route("/live", get(feed))
            .with_state(calls_b.clone())
            .layer(b.clone()),
    )
    .await;
    for i in 1..=3 {
        tx.send(i).unwrap();
    }
    let on_a = tokio::spawn(read_until(addr_a, request("/live", "s", None), "id: 6\n"));
    wait_until("A wrote 1..3 to the store", || shared.bytes() >= 3 * 20).await;
    let on_b = tokio::spawn(read_until(
        addr_b,
        request("/live", "s", Some("1")),
        "id: 6\n",
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 4..=6 {
        tx.send(i).unwrap();
    }
    let (on_a, on_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    assert_eq!(ids(&on_a), [1, 2, 3, 4, 5, 6]);
    assert_eq!(ids(&on_b), [2, 3, 4, 5, 6], "{on_b}");
    assert!(calls_b.seen().is_empty(), "B's service was not called");
}

/// Resume (the client lost its `Last-Event-ID`) with at-least-once and replay: the events
/// handed over just before the disconnect come again, from history, although the service (a
/// broadcast: it only ever sends what comes next) cannot send them again.
#[tokio::test]
async fn at_least_once_resume_gets_the_events_in_flight_from_history() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let next = Arc::new(AtomicU32::new(1));
    let broadcast = move || {
        let next = next.clone();
        async move {
            let take = move |n: u32| {
                let from = next.fetch_add(n, Ordering::SeqCst);
                (from..from + n)
                    .map(|i| Ok::<_, Infallible>(Event::default().id(i.to_string()).data("x")))
                    .collect::<Vec<_>>()
            };
            // Five now, three more 1.5 s later, then quiet.
            let now = take(5);
            let later = stream::once(tokio::time::sleep(Duration::from_millis(1500)))
                .flat_map(move |()| stream::iter(take(3)));
            Sse::new(stream::iter(now).chain(later).chain(stream::pending()))
        }
    };
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .resume(true)
        .resume_at_least_once(Duration::from_secs(1))
        .heartbeat(Duration::from_millis(50))
        .replay(ReplayConfig::default())
        .build();
    let app = Router::new()
        .route("/live", get(broadcast))
        .layer(tracking.clone());
    let addr = serve(app).await;
    // 1..5 at once, 6..8 1.5 s later; the client goes away right after 8.
    let first = read_until(addr, request("/live", "c", None), "id: 8\n").await;
    assert_eq!(ids(&first), (1..=8).collect::<Vec<_>>());
    let worker = tracking.worker();
    let key = tower_sse_tracking::StreamKey::new("/live").unwrap();
    let session = tower_sse_tracking::SessionId::new("c").unwrap();
    wait_until("settled back to 5", || {
        worker.last_event_id(&session, &key).as_deref() == Some("5")
    })
    .await;
    // It reconnects without Last-Event-ID: resume says 5; 6..8 come from history, then the
    // broadcast goes on with what is new.
    let second = read_until(addr, request("/live", "c", None), "id: 13\n").await;
    assert_eq!(ids(&second), (6..=13).collect::<Vec<_>>(), "{second}");
}

/// A history store that fails while told to, counting the appends it was asked for.
#[derive(Clone, Default)]
struct Flaky {
    inner: tower_sse_tracking::history::MemoryHistoryStore,
    failing: Arc<std::sync::atomic::AtomicBool>,
    appends: Arc<std::sync::atomic::AtomicUsize>,
}

impl tower_sse_tracking::history::HistoryStore for Flaky {
    fn append<'a>(
        &'a self,
        batch: &'a [tower_sse_tracking::history::HistoryEvent],
    ) -> tower_sse_tracking::store::StoreFuture<'a, tower_sse_tracking::history::AppendReport> {
        use std::sync::atomic::Ordering;
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Box::pin(async {
                Err(tower_sse_tracking::store::StoreError::transient("down"))
            });
        }
        self.inner.append(batch)
    }

    fn finish<'a>(
        &'a self,
        session: &'a tower_sse_tracking::SessionId,
        stream: &'a tower_sse_tracking::StreamKey,
        writer: u64,
        end: tower_sse_tracking::history::StreamEnd,
    ) -> tower_sse_tracking::store::StoreFuture<'a, ()> {
        self.inner.finish(session, stream, writer, end)
    }

    fn touch<'a>(
        &'a self,
        leases: &'a [tower_sse_tracking::history::WriterLease],
    ) -> tower_sse_tracking::store::StoreFuture<'a, ()> {
        self.inner.touch(leases)
    }

    fn locate<'a>(
        &'a self,
        session: &'a tower_sse_tracking::SessionId,
        id: &'a str,
    ) -> tower_sse_tracking::store::StoreFuture<
        'a,
        Option<tower_sse_tracking::history::StoredPosition>,
    > {
        self.inner.locate(session, id)
    }

    fn is_producing<'a>(
        &'a self,
        session: &'a tower_sse_tracking::SessionId,
    ) -> tower_sse_tracking::store::StoreFuture<'a, bool> {
        self.inner.is_producing(session)
    }

    fn read_after<'a>(
        &'a self,
        session: &'a tower_sse_tracking::SessionId,
        stream: &'a tower_sse_tracking::StreamKey,
        after: u64,
        limit: usize,
    ) -> tower_sse_tracking::store::StoreFuture<'a, tower_sse_tracking::history::HistoryPage> {
        self.inner.read_after(session, stream, after, limit)
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a tower_sse_tracking::SessionId,
        stream: &'a tower_sse_tracking::StreamKey,
        after: u64,
        timeout: Duration,
    ) -> tower_sse_tracking::store::StoreFuture<'a, ()> {
        self.inner.wait_after(session, stream, after, timeout)
    }

    fn purge_session<'a>(
        &'a self,
        session: &'a tower_sse_tracking::SessionId,
    ) -> tower_sse_tracking::store::StoreFuture<'a, ()> {
        self.inner.purge_session(session)
    }
}

/// History writes follow the worker's breaker rules: after the threshold of failures the store
/// is left alone for the cool-down (the events wait in the bounded outbox); an explicit flush
/// (as at shutdown) tries anyway, and everything that waited is written, in order, once.
#[tokio::test]
async fn a_failing_history_store_trips_its_own_breaker_and_loses_nothing() {
    use std::sync::atomic::Ordering;
    let flaky = Flaky::default();
    flaky.failing.store(true, Ordering::SeqCst);
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(ReplayConfig::default().store(flaky.clone()))
        .worker(
            tower_sse_tracking::worker::WorkerConfig::default()
                .flush_interval(Duration::from_millis(10))
                .breaker_threshold(2)
                .breaker_cooldown(Duration::from_millis(800)),
        )
        .build();
    let calls = Calls::default();
    let app = Router::new()
        .route("/feed", get(feed))
        .with_state(calls)
        .layer(tracking.clone());
    let addr = serve(app).await;
    let first = read_until(addr, request("/feed", "s", None), "id: 5\n").await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    // 300 ms of 10 ms ticks: two failed attempts, then the breaker keeps the store alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        flaky.appends.load(Ordering::SeqCst),
        2,
        "open after two failures"
    );
    flaky.failing.store(false, Ordering::SeqCst);
    // An explicit flush (as at shutdown) tries anyway, breaker open or not.
    tracking.flush().await.unwrap();
    assert!(
        flaky.inner.bytes() > 0,
        "written by the flush, before the cool-down"
    );
    let page = tower_sse_tracking::history::HistoryStore::read_after(
        &flaky.inner,
        &support::sid("s"),
        &support::stream("/feed"),
        0,
        1 << 20,
    )
    .await
    .unwrap();
    let got: Vec<&str> = page.events.iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(got, ["1", "2", "3", "4", "5"]);
    assert_eq!(
        flaky.appends.load(Ordering::SeqCst),
        3,
        "one probe, which succeeded"
    );
}

/// Over the global cap, a stream whose client went away (read on for its detach grace) gives
/// up its oldest events before a stream with a live client does.
#[tokio::test]
async fn over_the_cap_detached_streams_give_way_to_live_ones() {
    let pad = "x".repeat(180);
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(
            ReplayConfig::default()
                .max_total_bytes(48 * 1024)
                .detach_grace(Duration::from_secs(10))
                .detach_if(|method, _| method == http::Method::POST),
        )
        .build();
    // D: a POST generating 400 events of ~200 bytes, 5 ms apart (2 s).
    let chat = {
        let pad = pad.clone();
        move || {
            let pad = pad.clone();
            let events = stream::iter(1..=400u32).then(move |i| {
                let pad = pad.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, Infallible>(Event::default().id(i.to_string()).data(pad))
                }
            });
            std::future::ready(Sse::new(events))
        }
    };
    // L: a live feed of ~200-byte events, sent on a channel.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let live = {
        let pad = pad.clone();
        move || {
            let (rx, pad) = (rx.clone(), pad.clone());
            async move {
                let rx = rx.lock().await.take().expect("called once");
                Sse::new(tokio_stream_from(rx).map(move |i| {
                    Ok::<_, Infallible>(Event::default().id(i.to_string()).data(pad.clone()))
                }))
            }
        }
    };
    let app = Router::new()
        .route("/chat", axum::routing::post(chat))
        .route("/live", get(live))
        .layer(tracking.clone());
    let addr = serve(app).await;
    let post = Request::post("/chat")
        .header(header::COOKIE, "sid=d")
        .body(Empty::new())
        .unwrap();
    read_until(addr, post, "id: 1\n").await; // D's client goes away at once
    wait_until("D is read on without its client", || {
        tracking.detached_streams() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // D keeps ~100 events (~20 KB)
    // L's client stays while L writes 150 events (~30 KB): together over the 48 KiB cap.
    let on_l = tokio::spawn(read_until(addr, request("/live", "l", None), "id: 151\n"));
    for i in 1..=150 {
        tx.send(i).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tracking.history_bytes() <= 48 * 1024,
        "{}",
        tracking.history_bytes()
    );
    // L kept every event: while its client is still there, a second client of the session gets
    // all after the first event, from history.
    let again = read_until(addr, request("/live", "l", Some("1")), "id: 150\n").await;
    assert_eq!(ids(&again), (2..=150).collect::<Vec<_>>());
    tx.send(151).unwrap();
    assert_eq!(ids(&on_l.await.unwrap()), (1..=151).collect::<Vec<_>>());
    // D gave up its oldest: a reconnect from its first event finds it too old.
    let (parts, _) = fetch_head(
        addr,
        Request::post("/chat")
            .header(header::COOKIE, "sid=d")
            .header("last-event-id", "1")
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert_ne!(parts.headers["sse-replay"], "replayed");
    drop(tx);
}
