//! Make Server-Sent-Events streams trackable and resumable.
//!
//! [`EventTrackingLayer`] wraps any tower service whose responses are `text/event-stream`. The
//! body reaches the client byte for byte unchanged, while an incremental, spec-exact parser reads
//! the same bytes and records the last event ID of each session's streams (a stream is the
//! request's path by default, see [`StreamKey`]). One bounded worker, started when the layer is
//! built, persists the newest ID per (session, stream) to a
//! [`SessionStore`](store::SessionStore): in memory by default, [`RedbStore`](store::RedbStore) on disk, or
//! [`RedisStore`](store::RedisStore) shared by replicas. A client that reconnects, with
//! `Last-Event-ID` or (with [`resume`](EventTrackingLayerBuilder::resume)) without it, continues
//! where it left off.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use axum::{Router, routing::get, response::sse::{Event, KeepAlive, Sse}};
//! use futures_util::{Stream, stream};
//! use http::HeaderName;
//! use tower_sse_tracking::{EventTrackingLayer, store::MemoryStore};
//!
//! async fn events() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
//!     let events = (1..=3).map(|i| Ok(Event::default().id(i.to_string()).data("hello")));
//!     Sse::new(stream::iter(events)).keep_alive(KeepAlive::default())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let tracking = EventTrackingLayer::builder()
//!     .store(store.clone())
//!     // The request's header, or the response's (MCP assigns the session there).
//!     .session_header(HeaderName::from_static("mcp-session-id"))
//!     .resume(true)                      // fill in Last-Event-ID for clients that lost it
//!     .build();                          // spawns the one persistence worker
//! let app: Router = Router::new().route("/events", get(events)).layer(tracking.clone());
//! // axum::serve(listener, app).await?;
//! tracking.shutdown(Duration::from_secs(5)).await?; // flushes everything recorded
//! # Ok(()) }
//! ```
//!
//! The building blocks:
//!
//! - [`parser`]: the incremental `text/event-stream` parser, usable on its own.
//! - [`worker`]: the persistence worker's handle and settings: batching, coalescing, retries,
//!   shutdown.
//! - [`store`]: the [`SessionStore`](store::SessionStore) trait and the stores.
//! - [`history`]: replay at the layer ([`ReplayConfig`](history::ReplayConfig)): recent events
//!   kept per stream, so that a reconnect gets what it missed even when the service cannot
//!   send it again.
//! - [`metrics`]: the name of every metric recorded.
//!
//! # Feature flags
//!
//! - `redb`: [`RedbStore`](store::RedbStore), a durable embedded store, and `RedbHistory`,
//!   replay histories that survive a restart.
//! - `redis`: [`RedisStore`](store::RedisStore), a store shared by several replicas, and
//!   `RedisHistory`, replay histories they share.

#![warn(missing_docs, rust_2018_idioms, missing_debug_implementations)]
#![deny(unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod clock;
mod config;
mod future;
mod heartbeat;
pub mod history;
mod id_buf;
mod layer;
mod lru;
pub mod metrics;
pub mod parser;
mod registry;
mod replay;
mod reserve;
mod resume;
mod service;
mod session;
mod settle;
mod slot;
pub mod store;
pub mod worker;

pub use self::{
    body::TrackingBody,
    future::ResponseFuture,
    layer::{EventTrackingLayer, EventTrackingLayerBuilder},
    service::EventTracking,
    session::{InvalidKey, SessionId, StreamKey},
};
