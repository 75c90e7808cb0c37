//! Replay across replicas on a real `redis-server` (started by the tests): two replicas share a
//! [`RedisHistory`], each serving real loopback HTTP connections. A client that moves from one
//! to the other mid-stream gets every event once; a writer that lost its stream to another is
//! fenced off; Redis killed mid-stream loses no acknowledged event, duplicates none, and what it
//! lost is reported, never passed off as caught up.

#![cfg(feature = "redis")]

mod support;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::{get, post},
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{Request, header};
use http_body_util::Empty;
use support::{
    fetch, read_until,
    redis::{RedisConfig, RedisServer, fresh_prefix},
    serve, sid, stream,
};
use tower_sse_tracking::{
    EventTrackingLayer,
    history::{HistoryStore, RedisHistory, ReplayConfig},
    worker::WorkerConfig,
};

/// A history on `server` under a key prefix of its own.
async fn history_on(server: &RedisServer, name: &str) -> RedisHistory {
    RedisHistory::builder()
        .prefix(fresh_prefix(name))
        .connect(&server.url())
        .await
        .unwrap()
}

/// Two replicas (A and B) of an app with a generating POST `/chat` of `n` tokens, `gap` apart,
/// on one history; returns their layers and addresses.
async fn chat_replicas(
    history: &RedisHistory,
    runs: &Arc<AtomicUsize>,
    n: u32,
    gap: Duration,
) -> ([EventTrackingLayer; 2], [std::net::SocketAddr; 2]) {
    let app = |layer: EventTrackingLayer| {
        Router::new()
            .route("/chat", post(generator(runs.clone(), n, gap)))
            .layer(layer)
    };
    let (a, b) = (replica(history), replica(history));
    let (addr_a, addr_b) = (serve(app(a.clone())).await, serve(app(b.clone())).await);
    ([a, b], [addr_a, addr_b])
}

/// A replica's layer: replay into the shared Redis history, a fast worker, and a detach grace
/// for POSTs (the generating streams).
fn replica(history: &RedisHistory) -> EventTrackingLayer {
    EventTrackingLayer::builder()
        .session_cookie("sid")
        .replay(
            ReplayConfig::default()
                .store(history.clone())
                .detach_grace(Duration::from_secs(10))
                .detach_if(|method, _| method == http::Method::POST),
        )
        .worker(WorkerConfig::default().flush_interval(Duration::from_millis(10)))
        .build()
}

type Events = Sse<std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>>;

fn token(i: u32) -> Result<Event, Infallible> {
    Ok(Event::default()
        .id(i.to_string())
        .data(format!("token {i}")))
}

/// Tokens 1..=`n`, `gap` apart, counting how often the generator ran (on any replica).
fn generator(
    runs: Arc<AtomicUsize>,
    n: u32,
    gap: Duration,
) -> impl Fn() -> std::future::Ready<Events> + Clone {
    move || {
        runs.fetch_add(1, Ordering::SeqCst);
        let tokens = futures_util::stream::iter(1..=n).then(move |i| async move {
            tokio::time::sleep(gap).await;
            token(i)
        });
        std::future::ready(Sse::new(Box::pin(tokens) as std::pin::Pin<Box<_>>))
    }
}

/// A live feed: the events sent on the channel, once (the second call panics).
fn live(
    rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
) -> impl Fn() -> std::future::Ready<Events> + Clone {
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    move || {
        let mut rx = rx.lock().unwrap().take().expect("called once");
        let events = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(token);
        std::future::ready(Sse::new(Box::pin(events) as std::pin::Pin<Box<_>>))
    }
}

fn request(method: &str, path: &str, session: &str, last: Option<&str>) -> Request<Empty<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::COOKIE, format!("sid={session}"));
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

/// Waits until `cond` holds (at most 10 s).
async fn wait_until(what: &str, cond: impl AsyncFn() -> bool) {
    for _ in 0..1000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

/// Every `seq` and ID a stream holds in the history, in order.
async fn stored(history: &RedisHistory, session: &str, key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = history
            .read_after(&sid(session), &stream(key), after, 1 << 20)
            .await
            .unwrap();
        let Some(last) = page.events.last() else {
            return out;
        };
        after = last.seq;
        out.extend(
            page.events
                .iter()
                .map(|e| e.id.as_deref().unwrap_or("").to_owned()),
        );
    }
}

/// A client reads 10 tokens of a generated answer from replica A, loses it, and reconnects to
/// replica B, which follows the stream A is still producing through Redis: tokens 11..40 once,
/// in order, byte for byte, and the generator ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_replica_mid_stream_gets_every_event_once() {
    let server = RedisServer::shared();
    let history = history_on(&server, "move").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (layers, [addr_a, addr_b]) =
        chat_replicas(&history, &runs, 40, Duration::from_millis(15)).await;

    let first = read_until(addr_a, request("POST", "/chat", "s", None), "id: 10\n").await;
    assert_eq!(ids(&first), (1..=10).collect::<Vec<_>>());
    // The load balancer sends the reconnect to B.
    let (parts, rest) = fetch(addr_b, request("POST", "/chat", "s", Some("10"))).await;
    assert_eq!(parts.headers["sse-replay"], "replayed");
    let rest = std::str::from_utf8(&rest).unwrap();
    assert_eq!(ids(rest), (11..=40).collect::<Vec<_>>(), "{rest}");
    assert!(
        rest.starts_with("id: 11\ndata: token 11\n\n"),
        "byte for byte"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the generator ran once, on A"
    );
    drop(layers);
}

/// A feed cut on A (no grace): B replays from Redis what A had written after the client's ID,
/// then its own service goes on after the newest replayed event, with the seam in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_on_one_replica_is_continued_by_another() {
    let server = RedisServer::shared();
    let history = history_on(&server, "cut").await;
    // A's feed: 1..=6 then nothing more; B's: from the Last-Event-ID it is given, on.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 1..=6 {
        tx.send(i).unwrap();
    }
    let (a, b) = (replica(&history), replica(&history));
    let addr_a = serve(Router::new().route("/feed", get(live(rx))).layer(a.clone())).await;
    let b_calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let feed_b = {
        let calls = b_calls.clone();
        move |headers: http::HeaderMap| {
            let from: u32 = headers["last-event-id"].to_str().unwrap().parse().unwrap();
            calls.lock().unwrap().push(from);
            let events = futures_util::stream::iter(from + 1..=from + 4)
                .map(token)
                .chain(futures_util::stream::pending());
            std::future::ready(Sse::new(Box::pin(events) as std::pin::Pin<Box<_>>))
        }
    };
    let addr_b = serve(Router::new().route("/feed", get(feed_b)).layer(b.clone())).await;

    let first = read_until(addr_a, request("GET", "/feed", "s", None), "id: 6\n").await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5, 6]);
    // The client went away (no grace for a GET): A's stream is cut.
    wait_until("A's stream is in Redis, cut", async || {
        stored(&history, "s", "/feed").await.len() == 6
            && history
                .read_after(&sid("s"), &stream("/feed"), 0, 1)
                .await
                .unwrap()
                .end
                != tower_sse_tracking::history::StreamEnd::Open
    })
    .await;
    // The client had 3 when it lost A.
    let body = read_until(addr_b, request("GET", "/feed", "s", Some("3")), "id: 10\n").await;
    assert_eq!(ids(&body), [4, 5, 6, 7, 8, 9, 10], "{body}");
    assert_eq!(
        *b_calls.lock().unwrap(),
        [6],
        "B's service went on after the replay"
    );
    drop(tx);
}

/// A replica that lost its stream to another is fenced off: once B's first write took the
/// stream over, A's later events are refused by Redis (A's own client still gets them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_is_fenced_off() {
    let server = RedisServer::shared();
    let history = history_on(&server, "fence").await;
    let (tx_a, rx_a) = tokio::sync::mpsc::unbounded_channel();
    let (tx_b, rx_b) = tokio::sync::mpsc::unbounded_channel();
    let (a, b) = (replica(&history), replica(&history));
    let addr_a = serve(
        Router::new()
            .route("/live", get(live(rx_a)))
            .layer(a.clone()),
    )
    .await;
    let addr_b = serve(
        Router::new()
            .route("/live", get(live(rx_b)))
            .layer(b.clone()),
    )
    .await;

    // A produces 1..3 (say it lost its network to Redis' clients for a while, but not to Redis).
    for i in 1..=3 {
        tx_a.send(i).unwrap();
    }
    let on_a = tokio::spawn(read_until(
        addr_a,
        request("GET", "/live", "s", None),
        "id: 103\n",
    ));
    wait_until("A's events are in Redis", async || {
        stored(&history, "s", "/live").await.len() == 3
    })
    .await;
    // The same stream starts on B (the client gave up on A): B's first write takes it over.
    for i in 11..=12 {
        tx_b.send(i).unwrap();
    }
    let on_b = tokio::spawn(read_until(
        addr_b,
        request("GET", "/live", "s", None),
        "id: 12\n",
    ));
    wait_until("B's events are in Redis", async || {
        stored(&history, "s", "/live").await.len() == 5
    })
    .await;
    // A goes on: its events reach its client but not the history.
    for i in 101..=103 {
        tx_a.send(i).unwrap();
    }
    let on_a = on_a.await.unwrap();
    assert_eq!(ids(&on_a), [1, 2, 3, 101, 102, 103]);
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(
        stored(&history, "s", "/live").await,
        ["1", "2", "3", "11", "12"],
        "A's events after the takeover were refused"
    );
    assert_eq!(ids(&on_b.await.unwrap()), [11, 12]);
}

/// Redis killed mid-stream, then started again with its data (append-only file): the stream's
/// client gets every event once meanwhile, the worker writes what waited once Redis is back
/// (nothing twice, nothing rolled back), and a reconnect to the other replica is replayed
/// exactly. Killed without persistence: a reconnect asking for what Redis lost is answered as
/// unknown, never as caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_nothing_acknowledged_and_reports_what_it_lost() {
    let mut server = RedisServer::start_with(RedisConfig {
        durable: true,
        ..RedisConfig::default()
    });
    let history = history_on(&server, "kill").await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (a, b) = (replica(&history), replica(&history));
    let addr_a = serve(Router::new().route("/live", get(live(rx))).layer(a.clone())).await;
    let b_calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr_b = {
        let calls = b_calls.clone();
        let feed = move |headers: http::HeaderMap| {
            let last = headers["last-event-id"].to_str().unwrap().to_owned();
            calls.lock().unwrap().push(last);
            let events = futures_util::stream::pending::<Result<Event, Infallible>>();
            std::future::ready(Sse::new(Box::pin(events) as std::pin::Pin<Box<_>>))
        };
        serve(Router::new().route("/live", get(feed)).layer(b.clone())).await
    };

    for i in 1..=5 {
        tx.send(i).unwrap();
    }
    let on_a = tokio::spawn(read_until(
        addr_a,
        request("GET", "/live", "s", None),
        "id: 20\n",
    ));
    wait_until("1..5 are in Redis", async || {
        stored(&history, "s", "/live").await.len() == 5
    })
    .await;
    server.kill();
    for i in 6..=15 {
        tx.send(i).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // appends fail meanwhile
    server.restart();
    for i in 16..=20 {
        tx.send(i).unwrap();
    }
    let on_a = on_a.await.unwrap();
    assert_eq!(
        ids(&on_a),
        (1..=20).collect::<Vec<_>>(),
        "A's client got every event once"
    );
    wait_until("A's stream is cut (its client went away)", async || {
        history
            .read_after(&sid("s"), &stream("/live"), 0, 1)
            .await
            .is_ok_and(|p| p.end != tower_sse_tracking::history::StreamEnd::Open)
    })
    .await;
    let want: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    wait_until("the worker wrote what waited", async || {
        history
            .read_after(&sid("s"), &stream("/live"), 0, 1 << 20)
            .await
            .is_ok_and(|p| p.events.len() == 20)
    })
    .await;
    assert_eq!(
        stored(&history, "s", "/live").await,
        want,
        "in order, none twice"
    );
    // A's client went away (cut). Its reconnect to B is replayed from Redis, exactly, and B's
    // service goes on after the newest event.
    let body = read_until(addr_b, request("GET", "/live", "s", Some("12")), "id: 20\n").await;
    assert_eq!(ids(&body), (13..=20).collect::<Vec<_>>(), "{body}");
    assert_eq!(*b_calls.lock().unwrap(), ["20"]);

    // Now without persistence: Redis comes back empty.
    let mut volatile = RedisServer::start();
    let lost = history_on(&volatile, "lost").await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let c = replica(&lost);
    let addr_c = serve(Router::new().route("/live", get(live(rx))).layer(c.clone())).await;
    let d = replica(&lost);
    let d_calls = Arc::new(AtomicUsize::new(0));
    let addr_d = {
        let calls = d_calls.clone();
        let feed = move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let events = futures_util::stream::iter([token(99)]);
            std::future::ready(Sse::new(Box::pin(events) as std::pin::Pin<Box<_>>))
        };
        serve(Router::new().route("/live", get(feed)).layer(d.clone())).await
    };
    for i in 1..=3 {
        tx.send(i).unwrap();
    }
    let on_c = read_until(addr_c, request("GET", "/live", "s", None), "id: 3\n").await;
    assert_eq!(ids(&on_c), [1, 2, 3]);
    wait_until("1..3 are in Redis", async || {
        stored(&lost, "s", "/live").await.len() == 3
    })
    .await;
    volatile.restart(); // everything gone
    let (parts, body) = fetch(addr_d, request("GET", "/live", "s", Some("2"))).await;
    assert_eq!(
        parts.headers["sse-replay"], "unknown",
        "reported, not passed off as caught up"
    );
    assert_eq!(
        ids(std::str::from_utf8(&body).unwrap()),
        [99],
        "the policy: passed through"
    );
    assert_eq!(d_calls.load(Ordering::SeqCst), 1);
}

/// A reader on B may be one flush behind the writer on A: an ID that A sent its client but has
/// not written yet is waited for (up to two flush intervals), not declared unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_not_yet_flushed_by_the_writer_is_waited_for() {
    let server = RedisServer::shared();
    let history = history_on(&server, "behind").await;
    let slow = |history: &RedisHistory| {
        EventTrackingLayer::builder()
            .session_cookie("sid")
            .replay(ReplayConfig::default().store(history.clone()))
            .worker(WorkerConfig::default().flush_interval(Duration::from_millis(400)))
            .build()
    };
    let (a, b) = (slow(&history), slow(&history));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr_a = serve(Router::new().route("/live", get(live(rx))).layer(a.clone())).await;
    let addr_b = {
        let feed = || -> std::future::Ready<Events> {
            panic!("B's service is not called: it follows A's stream")
        };
        serve(Router::new().route("/live", get(feed)).layer(b.clone())).await
    };
    tx.send(1).unwrap();
    let on_a = tokio::spawn(read_until(
        addr_a,
        request("GET", "/live", "s", None),
        "id: 3\n",
    ));
    wait_until("1 is in Redis", async || {
        stored(&history, "s", "/live").await.len() == 1
    })
    .await;
    // 2 is sent and read at once; A writes it at its next flush (up to 400 ms later).
    tx.send(2).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        stored(&history, "s", "/live").await.len(),
        1,
        "2 not written yet"
    );
    let on_b = tokio::spawn(read_until(
        addr_b,
        request("GET", "/live", "s", Some("2")),
        "id: 3\n",
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(3).unwrap();
    let on_b = on_b.await.unwrap();
    assert_eq!(ids(&on_b), [3], "{on_b}");
    assert_eq!(ids(&on_a.await.unwrap()), [1, 2, 3]);
}

/// Redis killed while B follows a stream A produces: B's response ends (the store failed) and
/// the client reconnects with the last ID it got, or B's reads ride the outage out; B finds the
/// ID once Redis is back, and the client gets every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_during_a_replay_duplicates_nothing() {
    let mut server = RedisServer::start_with(RedisConfig {
        durable: true,
        ..RedisConfig::default()
    });
    let history = history_on(&server, "follow").await;
    let runs = Arc::new(AtomicUsize::new(0));
    let (_layers, [addr_a, addr_b]) =
        chat_replicas(&history, &runs, 60, Duration::from_millis(20)).await;
    let first = read_until(addr_a, request("POST", "/chat", "s", None), "id: 5\n").await;
    assert_eq!(ids(&first), [1, 2, 3, 4, 5]);
    // The client follows the rest on B, reading as a client would, frame by frame.
    let mut got: Vec<u32> = Vec::new();
    let mut last = "5".to_owned();
    let mut reconnects = 0;
    let mut killed = false;
    while got.last() != Some(&60) {
        assert!(reconnects < 10, "too many reconnects: {got:?}");
        let uri = format!("http://{addr_b}/chat");
        let req = Request::post(uri)
            .header(header::COOKIE, "sid=s")
            .header("last-event-id", &last)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let mut body = client.request(req).await.unwrap().into_body();
        let mut text = String::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
            // Whole events only, as EventSource does.
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                    got.push(id.parse().unwrap());
                    last = id.to_owned();
                }
            }
            if !killed && got.len() >= 10 {
                killed = true;
                server.kill();
                tokio::time::sleep(Duration::from_millis(300)).await;
                server.restart();
            }
        }
        reconnects += 1;
    }
    assert_eq!(
        got,
        (6..=60).collect::<Vec<_>>(),
        "every event once, in order"
    );
    // Whether B's response ended with the outage (then the client reconnected, and B found its
    // ID once Redis was back) or B's reads rode it out depends on timing: either way, every
    // event once.
    println!("reconnects: {reconnects}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the generator ran once");
}
