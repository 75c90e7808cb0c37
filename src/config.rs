//! [`Config`]: the settings every service of one layer shares.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use http::Method;

use crate::{
    metrics::{self as m, Labels},
    session::{SessionSource, StreamSource},
    worker::WorkerHandle,
};

/// Settings shared by every service the layer builds (behind one `Arc`).
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) worker: WorkerHandle,
    pub(crate) source: SessionSource,
    pub(crate) streams: StreamSource,
    pub(crate) max_key_len: usize,
    pub(crate) max_stream_key_len: usize,
    pub(crate) max_id_len: usize,
    pub(crate) backpressure_timeout: Duration,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) resume: bool,
    /// Replay at the layer: the histories (`None`: off).
    pub(crate) replay: Option<std::sync::Arc<crate::history::Histories>>,
    /// At-least-once resume: how long before its end an ID must have been handed over for a
    /// stream to leave it behind (`None`: at most once, the newest ID).
    pub(crate) settle: Option<Duration>,
    /// The methods whose requests resume (GET, by default: how `EventSource` reconnects).
    pub(crate) resume_methods: Vec<Method>,
    /// The methods whose successful requests end their session (none, by default).
    pub(crate) forget_methods: Vec<Method>,
    /// A request whose `Last-Event-ID` is a stream's position continues that stream.
    pub(crate) follow_last_event_id: bool,
    /// A content-encoded event stream was seen (and logged once).
    pub(crate) warned_encoded: AtomicBool,
}

impl Config {
    /// Whether a request of this method may have `Last-Event-ID` filled in.
    pub(crate) fn resumes(&self, method: &Method) -> bool {
        self.resume && self.resume_methods.contains(method)
    }

    /// The labels of every metric this layer records.
    pub(crate) fn labels(&self) -> &Labels {
        self.worker.labels()
    }

    /// A stream's tracking state with this layer's settings.
    pub(crate) fn stream_state(
        self: &std::sync::Arc<Self>,
        session: Option<crate::worker::Attachment>,
        heartbeat: Option<Duration>,
        settle: Option<Duration>,
    ) -> crate::body::StreamState {
        crate::body::StreamState::new(self.clone(), session, heartbeat, settle)
    }

    /// Whether a successful request of this method ends its session.
    pub(crate) fn forgets(&self, method: &Method) -> bool {
        self.forget_methods.contains(method)
    }

    /// An event stream arrived content-encoded: it cannot be tracked (nor get heartbeats).
    /// Counted every time, logged once per layer.
    pub(crate) fn encoded_event_stream(&self) {
        self.labels()
            .counter_with(m::UNTRACKED, "reason", "content_encoding")
            .increment(1);
        if !self.warned_encoded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a text/event-stream response arrived content-encoded: it is not tracked and gets \
                 no heartbeats; put the compression layer outside the tracking layer \
                 (logged once; counted as sse_tracking_untracked_total{{reason=\"content_encoding\"}})"
            );
        }
    }
}
