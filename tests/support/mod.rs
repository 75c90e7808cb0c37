//! Helpers shared by the integration tests (`mod support;`, or `#[path]` from a test folder).

#![allow(dead_code)] // Each test crate uses a different part of the helpers.

#[cfg(feature = "redis")]
pub mod redis;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tower_sse_tracking::{SessionId, StreamKey};

/// A valid session key (panics on an invalid one: tests name their sessions).
pub fn sid(key: &str) -> SessionId {
    SessionId::new(key).unwrap()
}

/// A valid stream key.
pub fn stream(key: &str) -> StreamKey {
    StreamKey::new(key).unwrap()
}

/// The stream key of requests to `/events` (the default key is the request's path).
pub fn events() -> StreamKey {
    stream("/events")
}

/// A current-thread runtime with every driver, its clock paused (timers advance instantly when
/// the runtime is idle): for tests of timing that must not take real time.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A current-thread runtime with every driver, on the real clock.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Serves `app` on a free loopback port until the runtime ends; returns its address.
pub async fn serve(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends `request` (its URI a path) to the server at `addr` over a real HTTP/1.1 connection and
/// reads the whole response.
pub async fn fetch(
    addr: std::net::SocketAddr,
    request: http::Request<Empty<Bytes>>,
) -> (http::response::Parts, Bytes) {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client
        .request(http::Request::from_parts(parts, body))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

/// Sends `request` (its URI a path) to the server at `addr` and reads the response body until it
/// holds `needle`, then drops the connection, as a client that goes away mid-stream. Returns
/// what it read.
pub async fn read_until(
    addr: std::net::SocketAddr,
    request: http::Request<Empty<Bytes>>,
    needle: &str,
) -> String {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let mut body = client
        .request(http::Request::from_parts(parts, body))
        .await
        .unwrap()
        .into_body();
    let mut read = String::new();
    while !read.contains(needle) {
        let frame = body.frame().await.expect("the stream ended early").unwrap();
        if let Ok(data) = frame.into_data() {
            read.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    read
}

/// The sum of the counter `name` over the series whose label `label` is `value`, in what a
/// debugging recorder captured.
pub fn counted(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
    label: &str,
    value: &str,
) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == name
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == label && l.value() == value)
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}
