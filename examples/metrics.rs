//! Prometheus metrics for event tracking, served on `/metrics` next to an SSE endpoint.
//!
//! ```text
//! cargo run --example metrics
//! curl -N -H 'mcp-session-id: s1' http://127.0.0.1:3002/events   # in one terminal
//! curl http://127.0.0.1:3002/metrics | grep sse_tracking           # in another
//! ```

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    response::sse::{Event, KeepAlive, Sse},
    routing::get,
};
use futures_util::{Stream, stream};
use metrics_exporter_prometheus::PrometheusBuilder;
use tower_sse_tracking::{EventTrackingLayer, store::MemoryStore};

async fn events() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = stream::unfold(1u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Event::default().id(n.to_string()).data("tick")), n + 1))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    tower_sse_tracking::metrics::describe();

    let tracking = EventTrackingLayer::builder()
        .store(MemoryStore::new())
        .session_header(http::HeaderName::from_static("mcp-session-id"))
        .build();
    let app = Router::new()
        .route("/events", get(events))
        .layer(tracking.clone())
        .route(
            "/metrics",
            get(move || std::future::ready(prometheus.render())),
        );
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3002".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "events on http://{0}/events, metrics on http://{0}/metrics",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracking.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
