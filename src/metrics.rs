//! Every metric this crate records, by name, with [`describe`] to register units and help texts.
//!
//! All names start with `sse_tracking_`. Metrics go to whatever [`metrics`] recorder the
//! application installed (for example `metrics-exporter-prometheus`); without one they cost
//! nothing. Events are counted in the session slots and reported by the worker once per flush;
//! on the per-event path only what is rare is counted where it happens (duplicate and oversized
//! IDs).
//!
//! Two layers in one process record the same names: give each a name
//! ([`EventTrackingLayerBuilder::name`](crate::EventTrackingLayerBuilder::name)), and every
//! metric it records carries the label `layer="<name>"` ([`LAYER_LABEL`]), so that their gauges
//! do not overwrite each other. Without a name, metrics carry no layer label.
//!
//! ```
//! // Once, after installing a recorder:
//! tower_sse_tracking::metrics::describe();
//! ```

use std::sync::Arc;

use metrics::{
    Counter, Gauge, Histogram, Label, Unit, describe_counter, describe_gauge, describe_histogram,
};

/// The label that names a layer, set with
/// [`name`](crate::EventTrackingLayerBuilder::name): `layer="<name>"` on every metric that layer
/// records.
pub const LAYER_LABEL: &str = "layer";

/// The labels every metric of one layer carries: none, or `layer="<name>"`. Cloning is cheap.
#[derive(Clone, Debug, Default)]
pub(crate) struct Labels(Option<Arc<Label>>);

impl Labels {
    pub(crate) fn named(name: Option<String>) -> Self {
        Self(name.map(|name| Arc::new(Label::new(LAYER_LABEL, name))))
    }

    /// The labels, with one more.
    fn with(&self, extra: Option<(&'static str, &'static str)>) -> Vec<Label> {
        // Without a name and an extra label: an empty `Vec`, which does not allocate.
        let mut labels: Vec<Label> = self.0.iter().map(|l| Label::clone(l)).collect();
        if let Some((key, value)) = extra {
            labels.push(Label::new(key, value));
        }
        labels
    }

    pub(crate) fn counter(&self, name: &'static str) -> Counter {
        metrics::counter!(name, self.with(None))
    }

    /// A counter with one more label (such as `reason`).
    pub(crate) fn counter_with(
        &self,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) -> Counter {
        metrics::counter!(name, self.with(Some((key, value))))
    }

    pub(crate) fn gauge(&self, name: &'static str) -> Gauge {
        metrics::gauge!(name, self.with(None))
    }

    pub(crate) fn histogram(&self, name: &'static str) -> Histogram {
        metrics::histogram!(name, self.with(None))
    }
}

/// Gauge: session updates waiting in the worker's queue.
pub const QUEUE_DEPTH: &str = "sse_tracking_queue_depth";
/// Gauge: the queue's capacity (alert when the depth stays above 80 % of it).
pub const QUEUE_CAPACITY: &str = "sse_tracking_queue_capacity";
/// Histogram: updates per `save_batch` call.
pub const BATCH_SIZE: &str = "sse_tracking_batch_size";
/// Histogram: events covered per written update, per batch (how much coalescing saved).
pub const COALESCE_RATIO: &str = "sse_tracking_coalesce_ratio";
/// Counter: events recorded (reported per flush).
pub const EVENTS: &str = "sse_tracking_events_total";
/// Counter: session updates written successfully.
pub const PERSISTED: &str = "sse_tracking_persisted_total";
/// Counter: failed `save_batch` calls.
pub const FAILURES: &str = "sse_tracking_store_failures_total";
/// Counter: session updates scheduled for a retry.
pub const RETRIES: &str = "sse_tracking_retries_total";
/// Counter: session updates whose fast retries ran out (kept, retried after the cool-down).
pub const RETRY_EXHAUSTED: &str = "sse_tracking_retry_exhausted_total";
/// Counter: sessions parked in the overflow set because the queue stayed full.
pub const OVERFLOW_PARKED: &str = "sse_tracking_overflow_parked_total";
/// Counter: times a stream waited for queue capacity.
pub const BACKPRESSURE_WAITS: &str = "sse_tracking_backpressure_waits_total";
/// Counter: sessions that could not be handed to the worker because it had shut down.
pub const DROPPED_AFTER_SHUTDOWN: &str = "sse_tracking_dropped_after_shutdown_total";
/// Histogram: seconds per `save_batch` call.
pub const FLUSH_DURATION: &str = "sse_tracking_flush_duration_seconds";
/// Gauge: circuit breaker state, 0 closed, 1 open, 2 half-open (probing).
pub const CIRCUIT_STATE: &str = "sse_tracking_circuit_state";
/// Gauge: sessions with state in the worker (pending, retrying or parked).
pub const PENDING_SESSIONS: &str = "sse_tracking_pending_sessions";
/// Counter: events whose ID was already seen recently (not persisted again).
pub const DUPLICATE_EVENTS: &str = "sse_tracking_duplicate_events_total";
/// Counter: `id` values ignored because they were longer than the cap.
pub const OVERSIZED_IDS: &str = "sse_tracking_oversized_ids_total";
/// Counter: requests left untracked, by `reason` label: `invalid_key` (session or stream key),
/// `registry_full`, `too_many_streams`, `content_encoding`.
pub const UNTRACKED: &str = "sse_tracking_untracked_total";
/// Counter: positions (session, stream) forgotten from memory, by `reason` label: `idle` (after
/// the idle TTL), `capacity` (earlier, to admit a new one at the cap), `streams` (to admit a new
/// stream of a session at its cap of streams); their state is in the store. And `ended`: the
/// session was forgotten on purpose (see `sse_tracking_sessions_deleted_total`).
pub const SESSIONS_FORGOTTEN: &str = "sse_tracking_sessions_forgotten_total";
/// Counter: sessions deleted from the store because they ended (`WorkerHandle::forget`).
pub const SESSIONS_DELETED: &str = "sse_tracking_sessions_deleted_total";
/// Counter: failed deletions of ended sessions from the store.
pub const DELETE_ERRORS: &str = "sse_tracking_delete_errors_total";
/// Gauge: positions (session, stream) in the in-memory registry.
pub const TRACKED_SESSIONS: &str = "sse_tracking_tracked_sessions";
/// Counter: events dropped from stream histories (replay) to stay within their bounds, by
/// `reason` label (`bounds`).
pub const HISTORY_EVICTED: &str = "sse_tracking_history_evicted_events_total";
/// Counter: events not kept in a stream's history because they were larger than its byte cap
/// (the stream has a gap from then on).
pub const HISTORY_OVERSIZED: &str = "sse_tracking_history_oversized_events_total";
/// Counter: whole stream histories dropped, by `reason` label: `idle` (TTL), `capacity` (the
/// global byte cap), `streams` (the session's cap of streams), `ended` (the session was
/// forgotten), `refused` (not started: live streams filled the global cap).
pub const HISTORY_STREAMS_DROPPED: &str = "sse_tracking_history_streams_dropped_total";
/// Counter: history events dropped before they reached the history store (it kept failing
/// and the outbox was full).
pub const HISTORY_STORE_DROPPED: &str = "sse_tracking_history_store_dropped_total";
/// Counter: history events written to the history store.
pub const HISTORY_STORED: &str = "sse_tracking_history_stored_total";
/// Gauge: the history store's circuit breaker: 0 closed, 1 open, 2 half-open (its writes follow
/// the same rules as the session store's, with a breaker of their own).
pub const HISTORY_CIRCUIT_STATE: &str = "sse_tracking_history_circuit_state";
/// Counter: history events the history store refused because another writer had taken their
/// stream over (this process's stream goes on for its client, without the store).
pub const HISTORY_FENCED: &str = "sse_tracking_history_fenced_total";
/// Gauge: bytes all stream histories hold.
pub const HISTORY_BYTES: &str = "sse_tracking_history_bytes";
/// Counter: requests with a `Last-Event-ID` looked up in the histories, by `outcome` label:
/// `replayed` (found: answered from history, then live), `gap` (too old: a gap event, then what
/// is retained), `unknown` (not found: passed through or answered with the configured status).
pub const REPLAYS: &str = "sse_tracking_replays_total";
/// Counter: streams whose client went away, by `outcome` label: `detached` (read on for the
/// detach grace), `refused` (the cap of detached streams was reached: ended), and, at their
/// end, `completed` (the upstream ended within the grace) or `expired` (the grace ran out).
pub const DETACHED: &str = "sse_tracking_detached_streams_total";
/// Gauge: streams being read on after their client went away.
pub const DETACHED_NOW: &str = "sse_tracking_detached_streams";
/// Counter: heartbeat comments injected.
pub const HEARTBEATS: &str = "sse_tracking_heartbeats_total";
/// Counter: `Last-Event-ID` headers inserted to resume a session.
pub const RESUMED: &str = "sse_tracking_resumed_total";
/// Counter: failed store reads while resuming (the request went on without the header).
pub const RESUME_ERRORS: &str = "sse_tracking_resume_errors_total";

/// Registers units and descriptions of every metric with the installed recorder.
pub fn describe() {
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Session updates waiting in the queue"
    );
    describe_gauge!(QUEUE_CAPACITY, Unit::Count, "Capacity of the queue");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Updates per store batch");
    describe_histogram!(
        COALESCE_RATIO,
        Unit::Count,
        "Events covered per written update"
    );
    describe_counter!(EVENTS, Unit::Count, "Events recorded");
    describe_counter!(PERSISTED, Unit::Count, "Session updates written");
    describe_counter!(FAILURES, Unit::Count, "Failed store batches");
    describe_counter!(RETRIES, Unit::Count, "Session updates scheduled for retry");
    describe_counter!(
        RETRY_EXHAUSTED,
        Unit::Count,
        "Session updates whose retries ran out (kept for later)"
    );
    describe_counter!(
        OVERFLOW_PARKED,
        Unit::Count,
        "Sessions parked because the queue stayed full"
    );
    describe_counter!(BACKPRESSURE_WAITS, Unit::Count, "Waits for queue capacity");
    describe_counter!(
        DROPPED_AFTER_SHUTDOWN,
        Unit::Count,
        "Sessions not handed over because the worker had shut down"
    );
    describe_histogram!(FLUSH_DURATION, Unit::Seconds, "Duration of a store batch");
    describe_gauge!(
        CIRCUIT_STATE,
        Unit::Count,
        "Circuit breaker: 0 closed, 1 open, 2 half-open"
    );
    describe_gauge!(
        PENDING_SESSIONS,
        Unit::Count,
        "Sessions with unwritten state in the worker"
    );
    describe_counter!(
        DUPLICATE_EVENTS,
        Unit::Count,
        "Events with a recently seen ID"
    );
    describe_counter!(OVERSIZED_IDS, Unit::Count, "Event IDs over the length cap");
    describe_counter!(UNTRACKED, Unit::Count, "Requests left untracked");
    describe_counter!(
        SESSIONS_FORGOTTEN,
        Unit::Count,
        "Idle sessions forgotten from memory"
    );
    describe_counter!(SESSIONS_DELETED, Unit::Count, "Ended sessions deleted");
    describe_counter!(
        DELETE_ERRORS,
        Unit::Count,
        "Failed deletions of ended sessions"
    );
    describe_gauge!(
        TRACKED_SESSIONS,
        Unit::Count,
        "Positions (session, stream) tracked in memory"
    );
    describe_counter!(
        HISTORY_EVICTED,
        Unit::Count,
        "Events dropped from stream histories to stay within bounds"
    );
    describe_counter!(
        HISTORY_OVERSIZED,
        Unit::Count,
        "Events too large for their stream's history"
    );
    describe_counter!(
        HISTORY_STREAMS_DROPPED,
        Unit::Count,
        "Stream histories dropped"
    );
    describe_gauge!(HISTORY_BYTES, Unit::Bytes, "Bytes held by stream histories");
    describe_counter!(
        HISTORY_STORE_DROPPED,
        Unit::Count,
        "History events dropped before the history store"
    );
    describe_counter!(
        HISTORY_STORED,
        Unit::Count,
        "History events written to the history store"
    );
    describe_gauge!(
        HISTORY_CIRCUIT_STATE,
        Unit::Count,
        "History store circuit breaker: 0 closed, 1 open, 2 half-open"
    );
    describe_counter!(
        HISTORY_FENCED,
        Unit::Count,
        "History events refused: another writer took their stream over"
    );
    describe_counter!(REPLAYS, Unit::Count, "Last-Event-ID lookups in histories");
    describe_counter!(DETACHED, Unit::Count, "Streams whose client went away");
    describe_gauge!(
        DETACHED_NOW,
        Unit::Count,
        "Streams read on after their client went away"
    );
    describe_counter!(HEARTBEATS, Unit::Count, "Heartbeat comments injected");
    describe_counter!(RESUMED, Unit::Count, "Last-Event-ID headers inserted");
    describe_counter!(
        RESUME_ERRORS,
        Unit::Count,
        "Store reads that failed on resume"
    );
}
