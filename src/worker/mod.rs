//! The persistence worker: one task per layer that writes every session's newest last event ID.
//!
//! Streams never talk to the store. Recording an event updates the session's slot in memory; a
//! session that turns dirty is queued once on a bounded queue. The worker takes queued sessions
//! in batches (`recv_many`), writes each session's *newest* state once per flush (on a timer,
//! or early when `max_batch` sessions wait), retries failures in due-time order with exponential
//! backoff, stops calling a failing store for a cool-down (circuit breaker), and on shutdown
//! closes intake for real, drains and flushes everything within a deadline. A session written
//! on two consecutive ticks stays with the worker until a tick finds nothing new to write, so
//! that a stream with an event per flush interval or so does not queue it again at every event.
//!
//! The layer's builder starts the worker; [`WorkerHandle::spawn`] (or [`WorkerHandle::pair`],
//! for other executors) starts one without the layer, for events from other transports.
//!
//! ```
//! use std::time::Duration;
//! use tower_sse_tracking::{
//!     SessionId, StreamKey, store::MemoryStore, worker::{WorkerConfig, WorkerHandle},
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = MemoryStore::new();
//! let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
//! let session = SessionId::new("s1").unwrap();
//! let stream = StreamKey::new("/events").unwrap();
//! for id in ["1", "2", "3"] {
//!     worker.record(&session, &stream, Some(id));
//! }
//! worker.flush().await.unwrap();
//! // Only the newest ID was written.
//! assert_eq!(store.last_event_id(&session, &stream).as_deref(), Some("3"));
//! let report = worker.shutdown(Duration::from_secs(5)).await.unwrap();
//! assert!(report.unpersisted().is_empty());
//! # }
//! ```

mod breaker;
mod config;
mod handle;
mod retry;
mod run;
mod tracker;

pub use self::{
    config::WorkerConfig,
    handle::{
        FlushReport, RecordOutcome, ShutdownReport, TrackedStream, WorkerFuture, WorkerGone,
        WorkerHandle,
    },
};
#[doc(hidden)]
pub use crate::registry::RegistryStats;

pub(crate) use self::{
    handle::Control,
    tracker::{Attachment, Queue, Reserve, Tracker, TryEnqueueError},
};
