use std::time::Duration;

use crate::{metrics::Labels, slot::DEFAULT_DEDUP_WINDOW};

/// Settings of the persistence worker and of the in-memory session registry it persists from.
///
/// ```
/// use std::time::Duration;
/// use tower_sse_tracking::worker::WorkerConfig;
///
/// let config = WorkerConfig::default()
///     .flush_interval(Duration::from_millis(20))
///     .queue_capacity(16_384)
///     .max_sessions(50_000);
/// ```
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub(crate) queue_capacity: usize,
    pub(crate) recv_batch: usize,
    pub(crate) flush_interval: Duration,
    pub(crate) max_batch: usize,
    pub(crate) max_attempts: u32,
    pub(crate) base_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) max_sessions: usize,
    pub(crate) max_streams_per_session: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) dedup_window: usize,
    /// Set by the layer's builder from its name.
    pub(crate) labels: Labels,
    /// Set by the layer's builder when replay has a history store: the events to write to it.
    pub(crate) history: Option<std::sync::Arc<crate::history::Outbox>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 8192,
            recv_batch: 512,
            flush_interval: Duration::from_millis(50),
            max_batch: 4096,
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
            store_timeout: Duration::from_secs(5),
            max_sessions: 100_000,
            max_streams_per_session: 16,
            idle_ttl: Duration::from_secs(600),
            dedup_window: DEFAULT_DEDUP_WINDOW,
            labels: Labels::default(),
            history: None,
        }
    }
}

impl WorkerConfig {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Capacity of the bounded queue of sessions waiting to be written (at least 1). A session
    /// is queued at most once until it is written, so this bounds sessions, not events.
    ///
    /// Defaults to 8192.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// How many queued sessions the worker takes per wake-up (`recv_many`), at least 1.
    ///
    /// Defaults to 512.
    pub fn recv_batch(mut self, n: usize) -> Self {
        self.recv_batch = n.max(1);
        self
    }

    /// How often pending sessions are written, parked sessions collected and due retries run.
    /// Must not be zero (then 1 ms is used).
    ///
    /// Defaults to 50 ms.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Most sessions per `save_batch` call; pending sessions are also written early once this
    /// many are waiting (at least 1).
    ///
    /// Defaults to 4096.
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Fast retries of a failed write, with exponential backoff, before it is reported as
    /// exhausted and kept for a retry after the circuit breaker's cool-down.
    ///
    /// Defaults to 5.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Backoff before the first retry; doubled at every further attempt (with jitter: a random
    /// time between half and all of it) up to [`max_backoff`](Self::max_backoff).
    ///
    /// Defaults to 100 ms.
    pub fn base_backoff(mut self, backoff: Duration) -> Self {
        self.base_backoff = backoff;
        self
    }

    /// Upper bound of the retry backoff.
    ///
    /// Defaults to 10 s.
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Consecutive failed batches after which the store is left alone for the cool-down (at
    /// least 1).
    ///
    /// Defaults to 5.
    pub fn breaker_threshold(mut self, failures: u32) -> Self {
        self.breaker_threshold = failures.max(1);
        self
    }

    /// How long the circuit breaker stays open before one probing batch; also the delay before
    /// exhausted writes are tried again.
    ///
    /// Defaults to 10 s.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Time limit of one `save_batch` call; a call that takes longer counts as a transient
    /// failure.
    ///
    /// Defaults to 5 s.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Most sessions tracked in memory (at least 1). Positions are tracked per (session,
    /// stream), and each such position counts as one session here.
    ///
    /// Session keys come from clients, so this cap is what a flood of new keys runs into. Every
    /// admission costs O(1) whatever the registry holds: at the cap, the session that has been
    /// idle longest (no stream attached, everything written, so its state is in the store) is
    /// forgotten to make room, even before its [`idle_ttl`](Self::idle_ttl). A flood therefore
    /// cannot slow down other requests or grow memory, and cannot evict a session with a live
    /// stream or unwritten state; it can push idle sessions out of memory early (they are read
    /// back from the store on resume, but their duplicate window is lost). When every session
    /// in memory has a live stream or unwritten state, new sessions pass through untracked and
    /// are counted as `sse_tracking_untracked_total{reason="registry_full"}`.
    ///
    /// Defaults to 100 000.
    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = n.max(1);
        self
    }

    /// Most streams tracked in memory per session (at least 1). Stream keys come from clients
    /// too (the request path, by default), so one session cannot take more than this many
    /// places. A new stream of a session at the cap takes the place of that session's stream
    /// idle longest (counted as `sse_tracking_sessions_forgotten_total{reason="streams"}`);
    /// when all are busy, it passes through untracked (counted as
    /// `sse_tracking_untracked_total{reason="too_many_streams"}`).
    ///
    /// Defaults to 16.
    pub fn max_streams_per_session(mut self, n: usize) -> Self {
        self.max_streams_per_session = n.max(1);
        self
    }

    /// How long a session with no stream and nothing left to write stays in memory. Expiry is
    /// incremental: each flush tick forgets at most a few hundred expired sessions per shard of
    /// the registry, oldest first (counted as
    /// `sse_tracking_sessions_forgotten_total{reason="idle"}`).
    ///
    /// Defaults to 10 minutes.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// How many recent event IDs per session are remembered to spot duplicates (0 turns the
    /// check off). A duplicate is counted (`sse_tracking_duplicate_events_total`) and leaves the
    /// position where it was.
    ///
    /// Duplicates come from seams: a reconnect (whose service may send again what the client
    /// had), a second stream or handle on the same position, a settled position. The window is
    /// armed when a position is created and at each of those seams, and each ID costs 8 bytes
    /// in it (a 64-bit keyed fingerprint; 9 in a window past 16 IDs, with a tag byte that keeps
    /// a lookup to about one cache line), allocated as IDs come. Once 16 distinct IDs in a row
    /// were new, the window is freed: a stream that does not repeat itself then costs neither
    /// the memory nor a fingerprint per event. While freed, a repeat of the newest ID still
    /// counts as a duplicate (and arms the window again); an older one moves the position, as
    /// with the window off.
    ///
    /// Defaults to 64.
    pub fn dedup_window(mut self, n: usize) -> Self {
        self.dedup_window = n;
        self
    }
}
