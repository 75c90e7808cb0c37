//! An SSE reverse proxy that tracks an upstream service's streams: the proxy use case (for
//! example a gateway in front of Model Context Protocol servers).
//!
//! The upstream here is started in-process on a loopback port; point `UPSTREAM` at a real one
//! (e.g. `UPSTREAM=http://127.0.0.1:3000 cargo run --example proxy`, with `cargo run --example
//! server` running). The proxy listens on `127.0.0.1:3001` (or `ADDR`), forwards requests with
//! their headers, and streams the upstream's body back through the tracking layer unchanged.
//!
//! ```text
//! cargo run --example proxy
//! curl -N -H 'mcp-session-id: s1' http://127.0.0.1:3001/events
//! ```

use std::{convert::Infallible, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{StatusCode, Uri},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::stream;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower_sse_tracking::{EventTrackingLayer, store::MemoryStore};

type HttpClient = Client<HttpConnector, Body>;

#[derive(Clone)]
struct Upstream {
    client: HttpClient,
    base: String,
}

/// Forwards the request to the upstream and streams its response back.
async fn forward(State(upstream): State<Upstream>, mut req: Request) -> Response {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", upstream.base).parse::<Uri>() else {
        return (StatusCode::BAD_GATEWAY, "bad upstream uri").into_response();
    };
    *req.uri_mut() = uri;
    req.headers_mut().remove(http::header::HOST);
    match upstream.client.request(req).await {
        Ok(response) => response.map(Body::new),
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

/// A demo upstream: five events, numbered after `Last-Event-ID`.
async fn upstream_events(
    headers: http::HeaderMap,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let start: u64 = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stream = stream::unfold(start + 1, move |n| async move {
        if n > start + 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((
            Ok(Event::default().id(n.to_string()).data("upstream")),
            n + 1,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = match std::env::var("UPSTREAM") {
        Ok(base) => base,
        Err(_) => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let app = Router::new().route("/events", get(upstream_events));
            tokio::spawn(async move { axum::serve(listener, app).await });
            format!("http://{addr}")
        }
    };
    println!("upstream: {base}");

    let tracking = EventTrackingLayer::builder()
        .store(MemoryStore::new())
        .session_header(http::HeaderName::from_static("mcp-session-id"))
        .resume(true)
        // Keep idle connections open through proxies and load balancers.
        .heartbeat(Duration::from_secs(15))
        .build();
    let upstream = Upstream {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base,
    };
    let app = Router::new()
        .fallback(forward)
        .with_state(upstream)
        .layer(tracking.clone());
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "proxy listening on http://{}/events",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let report = tracking.shutdown(Duration::from_secs(5)).await?;
    println!("flushed; {} not persisted", report.unpersisted().len());
    Ok(())
}
