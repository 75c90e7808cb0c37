//! The main demo: an axum SSE server with `EventTrackingLayer`, and a client that reads three
//! sessions, loses one connection midway and resumes it without sending `Last-Event-ID`: the
//! layer fills it in from what it tracked.
//!
//! ```text
//! cargo run --example quickstart                                   # MemoryStore
//! cargo run --features redb --example quickstart -- --store redb:/tmp/quickstart.redb
//! cargo run --features redis --example quickstart -- --store redis://127.0.0.1/
//! ```
//!
//! With a durable store, run it twice: the second run's sessions resume after the first run's
//! IDs, read back from the store.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey,
    parser::SseParser,
    store::{MemoryStore, SessionStore},
};

const SESSION_HEADER: &str = "mcp-session-id";
/// Events per connection, numbered after the connection's `Last-Event-ID`.
const EVENTS_PER_CONNECTION: u64 = 5;
const SESSIONS: [&str; 3] = ["alpha", "beta", "gamma"];

/// Emits five events numbered after the client's `Last-Event-ID` (or from 1).
async fn events(headers: HeaderMap) -> Response {
    let Some(session) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "missing mcp-session-id").into_response();
    };
    let last: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if last > 0 {
        println!("  server: session {session} resumes after event {last}");
    }
    let end = last + EVENTS_PER_CONNECTION;
    let session = session.to_owned();
    let stream = stream::unfold(last + 1, move |n| {
        let session = session.clone();
        async move {
            if n > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
            let event = Event::default()
                .id(n.to_string())
                .data(format!("event {n} for {session}"));
            Some((Ok::<_, Infallible>(event), n + 1))
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Reads up to `max` events of one session; returns their IDs.
async fn read_session(
    client: &HttpClient,
    addr: SocketAddr,
    session: &str,
    max: usize,
) -> Vec<String> {
    let request = http::Request::get(format!("http://{addr}/events"))
        .header(SESSION_HEADER, session)
        .body(Empty::new())
        .expect("valid request");
    let mut body = client.request(request).await.expect("response").into_body();
    let mut parser = SseParser::new();
    let mut ids = Vec::new();
    while ids.len() < max {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            parser.feed(data, |d| {
                if d.is_event() {
                    ids.push(d.last_event_id().to_owned());
                }
            });
        }
    }
    // Dropping the body here closes the connection, like a client that went away.
    ids
}

/// The store named by `--store` (default: memory).
async fn open_store() -> Result<(Box<dyn SessionStore>, String), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let choice = match args.iter().position(|a| a == "--store") {
        Some(i) => args.get(i + 1).cloned().ok_or("--store needs a value")?,
        None => "memory".to_owned(),
    };
    if choice == "memory" {
        return Ok((Box::new(MemoryStore::new()), choice));
    }
    if let Some(path) = choice.strip_prefix("redb:") {
        #[cfg(feature = "redb")]
        return Ok((
            Box::new(tower_sse_tracking::store::RedbStore::open(path)?),
            choice.clone(),
        ));
        #[cfg(not(feature = "redb"))]
        return Err(format!("--store redb:{path} needs `--features redb`").into());
    }
    if choice.starts_with("redis://") {
        #[cfg(feature = "redis")]
        return Ok((
            Box::new(tower_sse_tracking::store::RedisStore::connect(&choice).await?),
            choice.clone(),
        ));
        #[cfg(not(feature = "redis"))]
        return Err("--store redis://... needs `--features redis`".into());
    }
    Err(format!("unknown store {choice:?}: use memory, redb:PATH or redis://HOST/").into())
}

/// Every session's persisted last event ID, read back through the store.
async fn persisted(
    store: &dyn SessionStore,
) -> Result<Vec<(String, u64)>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    for name in SESSIONS {
        let record = store
            .load(&SessionId::new(name)?, &StreamKey::new("/events")?)
            .await?;
        let id = record
            .and_then(|r| r.last_event_id.as_str().and_then(|id| id.parse().ok()))
            .unwrap_or(0);
        rows.push((name.to_owned(), id));
    }
    Ok(rows)
}

fn print_table(title: &str, rows: &[(String, u64)]) {
    println!("\n{title}");
    println!("  {:<10} {:>16}", "session", "persisted id");
    for (session, id) in rows {
        let id = if *id == 0 {
            "-".to_owned()
        } else {
            id.to_string()
        };
        println!("  {session:<10} {id:>16}");
    }
}

fn id_of(rows: &[(String, u64)], session: &str) -> u64 {
    rows.iter()
        .find(|(s, _)| s == session)
        .map_or(0, |(_, id)| *id)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (store, store_name) = open_store().await?;
    let store: std::sync::Arc<dyn SessionStore> = store.into();
    let before = persisted(store.as_ref()).await?;
    if before.iter().any(|(_, id)| *id > 0) {
        print_table(
            &format!("already persisted in {store_name} (an earlier run):"),
            &before,
        );
    }

    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_header(http::HeaderName::from_static(SESSION_HEADER))
        .resume(true) // clients without Last-Event-ID continue after their tracked ID
        .build();
    let app = Router::new()
        .route("/events", get(events))
        .layer(tracking.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // `into_make_service`: one router for every connection (`axum::serve(listener, app)` builds
    // it again per connection; see the README's "Serving").
    let server = tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
    println!("SSE server with event tracking ({store_name}) on http://{addr}/events");

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    println!("\n1. three sessions read their events; beta's connection drops after 2");
    let (alpha, beta, gamma) = tokio::join!(
        read_session(&client, addr, "alpha", usize::MAX),
        read_session(&client, addr, "beta", 2),
        read_session(&client, addr, "gamma", usize::MAX),
    );
    println!(
        "  alpha got {alpha:?}\n  beta  got {beta:?} (then lost its connection)\n  gamma got {gamma:?}"
    );
    // Let the server notice beta's disconnect, then write everything tracked.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tracking.flush().await?;
    let first = persisted(store.as_ref()).await?;
    print_table("persisted after the first round:", &first);

    let beta_id = SessionId::new("beta")?;
    let tracked = tracking
        .worker()
        .last_event_id(&beta_id, &StreamKey::new("/events")?)
        .unwrap_or_default();
    println!(
        "\n2. beta reconnects WITHOUT Last-Event-ID; the layer inserts the tracked id {tracked:?}"
    );
    let resumed = read_session(&client, addr, "beta", usize::MAX).await;
    println!("  beta  got {resumed:?}");
    let expected_first = tracked.parse::<u64>().unwrap_or(0) + 1;
    assert_eq!(
        resumed.first().map(String::as_str),
        Some(expected_first.to_string().as_str()),
        "beta resumes right after its tracked id"
    );

    let report = tracking.shutdown(Duration::from_secs(5)).await?;
    let after = persisted(store.as_ref()).await?;
    print_table("persisted after shutdown:", &after);
    println!(
        "\nshutdown: {} session writes flushed, {} not persisted",
        report.written_during_shutdown(),
        report.unpersisted().len()
    );
    assert!(report.is_complete());
    // Each connection continued after what the store held at start (resume), and beta's second
    // connection after what its first one was tracked to have sent.
    for session in ["alpha", "gamma"] {
        let expected = id_of(&before, session) + EVENTS_PER_CONNECTION;
        assert_eq!(id_of(&after, session), expected, "{session}");
    }
    let expected = tracked.parse::<u64>()? + EVENTS_PER_CONNECTION;
    assert_eq!(id_of(&after, "beta"), expected, "beta");
    println!("every session's last event id is persisted: done");
    server.abort();
    Ok(())
}
