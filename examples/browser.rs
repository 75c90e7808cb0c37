//! Event tracking for browsers: `EventSource` cannot send custom headers, so the session comes
//! from a cookie. Open the page in a browser, or run it headless:
//!
//! ```text
//! cargo run --example browser
//! # then open http://127.0.0.1:3001/ (the page sets the cookie `sid` and opens an EventSource)
//! chromium --headless --no-sandbox --virtual-time-budget=4000 --dump-dom http://127.0.0.1:3001/
//! curl http://127.0.0.1:3001/tracked?sid=tab-1   # the last event ID tracked for that session
//! ```
//!
//! Set `ADDR` to listen elsewhere (default `127.0.0.1:3001`). Ctrl-C shuts down and flushes.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    Router,
    extract::{Query, State},
    http::HeaderMap,
    response::{
        Html,
        sse::{Event, Sse},
    },
    routing::get,
};
use futures_util::{Stream, stream};
use tower_sse_tracking::{EventTrackingLayer, SessionId, StreamKey};

/// The page: sets the session cookie, opens an `EventSource` and writes every event it gets.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>tower-sse-tracking in a browser</title>
<ol id="events"></ol>
<script>
  document.cookie = "sid=tab-1; path=/";
  const source = new EventSource("/events");
  source.onmessage = (e) => {
    const li = document.createElement("li");
    li.textContent = e.lastEventId + ": " + e.data;
    document.getElementById("events").append(li);
  };
</script>
"#;

/// Ten events, 100 ms apart, numbered after the client's `Last-Event-ID`.
async fn events(headers: HeaderMap) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = stream::unfold(start + 1, move |n| async move {
        if n > start + 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let event = Event::default().id(n.to_string()).data(format!("tick {n}"));
        Some((Ok(event), n + 1))
    });
    Sse::new(stream)
}

/// The last event ID tracked for `?sid=...`.
async fn tracked(
    State(tracking): State<EventTrackingLayer>,
    Query(query): Query<HashMap<String, String>>,
) -> String {
    let session = query.get("sid").and_then(|s| SessionId::new(s).ok());
    let id = session.and_then(|s| {
        tracking
            .worker()
            .last_event_id(&s, &StreamKey::new("/events").ok()?)
    });
    format!("{}\n", id.as_deref().unwrap_or("(none)"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tracking = EventTrackingLayer::builder()
        .session_cookie("sid")
        .resume(true)
        .build();
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(events).layer(tracking.clone()))
        .route("/tracked", get(tracked))
        .with_state(tracking.clone());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("open http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracking.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
