//! Make Server-Sent-Events streams trackable and resumable.
//!
//! `tower-sse-tracking` reads the `text/event-stream` bodies that pass through it, byte for byte
//! unchanged, and records the last event ID each session has been sent, so that a reconnecting
//! client can resume where it left off.
//!
//! The building blocks:
//!
//! - [`parser`]: an incremental, spec-exact `text/event-stream` parser that never copies `data`.
//! - [`PersistenceWorker`]: one task per layer that writes each session's newest last event ID,
//!   batched, coalesced, retried in time order, flushed on shutdown.
//! - [`store`]: the [`SessionStore`](store::SessionStore) trait and the bounded
//!   [`MemoryStore`](store::MemoryStore).
//! - [`metrics`]: the name of every metric recorded.

#![warn(missing_docs, rust_2018_idioms, missing_debug_implementations)]
#![deny(unreachable_pub, unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod clock;
mod future;
mod layer;
pub mod metrics;
pub mod parser;
mod service;
mod session;
pub mod store;
mod tracker;
mod worker;

pub use self::{
    body::TrackingBody,
    future::ResponseFuture,
    layer::{DEFAULT_BACKPRESSURE_TIMEOUT, EventTrackingLayer, EventTrackingLayerBuilder},
    service::EventTracking,
    session::{DEFAULT_MAX_SESSION_KEY_LEN, InvalidSessionId, SessionId},
    tracker::DEFAULT_DEDUP_WINDOW,
    worker::{
        FlushReport, PersistenceWorker, ShutdownReport, WorkerConfig, WorkerFuture, WorkerGone,
        WorkerHandle,
    },
};
