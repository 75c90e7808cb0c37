//! A long-running SSE server with event tracking, to try by hand:
//!
//! ```text
//! cargo run --example server
//! curl -N -H 'mcp-session-id: s1' http://127.0.0.1:3000/events
//! # stop curl, then reconnect without Last-Event-ID: the stream resumes where it was
//! curl -N -H 'mcp-session-id: s1' http://127.0.0.1:3000/events
//! ```
//!
//! Set `ADDR` to listen elsewhere (default `127.0.0.1:3000`). Ctrl-C shuts down and flushes.

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use futures_util::{Stream, stream};
use tower_sse_tracking::{EventTrackingLayer, store::MemoryStore};

/// One event per second, numbered after the client's `Last-Event-ID`.
async fn events(headers: HeaderMap) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = stream::unfold(start + 1, |n| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let event = Event::default().id(n.to_string()).data(format!("tick {n}"));
        Some((Ok(event), n + 1))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tracking = EventTrackingLayer::builder()
        .store(MemoryStore::new())
        .session_header(http::HeaderName::from_static("mcp-session-id"))
        .resume(true)
        // Keep idle connections open through proxies and load balancers.
        .heartbeat(Duration::from_secs(15))
        .build();
    let app = Router::new()
        .route("/events", get(events))
        .layer(tracking.clone());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}/events", listener.local_addr()?);
    // `into_make_service`: one router for every connection (`axum::serve(listener, app)` builds
    // it again per connection; see the README's "Serving").
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = tracking.shutdown(Duration::from_secs(5)).await?;
    println!(
        "flushed {} sessions, {} not persisted",
        report.written_during_shutdown(),
        report.unpersisted().len()
    );
    Ok(())
}
