//! The main demo: an axum SSE server with `EventTrackingLayer` over a `MemoryStore`, and a client
//! that reads three sessions, loses one connection midway and resumes it without sending
//! `Last-Event-ID`: the layer fills it in from what it tracked.
//!
//! ```text
//! cargo run --example quickstart
//! ```

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
use tower_sse_tracking::{EventTrackingLayer, SessionId, parser::SseParser, store::MemoryStore};

const SESSION_HEADER: &str = "mcp-session-id";
const EVENTS_PER_SESSION: u64 = 5;

/// Emits events numbered after the client's `Last-Event-ID` (or from 1).
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
    let end = EVENTS_PER_SESSION;
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

fn print_table(title: &str, store: &MemoryStore) {
    println!("\n{title}");
    println!("  {:<10} {:>16}", "session", "persisted id");
    for (session, record) in store.snapshot() {
        let id = record.last_event_id.as_str().unwrap_or("(cleared)");
        println!("  {:<10} {:>16}", session.as_str(), id);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_header(SESSION_HEADER)
        .resume(true)
        .build();
    let app = Router::new()
        .route("/events", get(events))
        .layer(tracking.clone());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("SSE server with event tracking on http://{addr}/events");

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
    print_table("persisted after the first round:", &store);

    let beta_id = SessionId::new("beta")?;
    let tracked = tracking
        .worker()
        .last_event_id(&beta_id)
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
    print_table("persisted after shutdown:", &store);
    println!(
        "\nshutdown: {} session writes flushed, {} not persisted",
        report.persisted(),
        report.unpersisted().len()
    );
    assert!(report.unpersisted().is_empty());
    for session in ["alpha", "beta", "gamma"] {
        let record = store.get(&SessionId::new(session)?).expect("persisted");
        assert_eq!(
            record.last_event_id.as_str(),
            Some(EVENTS_PER_SESSION.to_string().as_str())
        );
    }
    println!("every session's last event id is persisted: done");
    server.abort();
    Ok(())
}
