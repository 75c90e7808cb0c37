//! Replay at the layer: every tracked stream's recent events, kept as the exact bytes its
//! clients received, so that a client that reconnects with `Last-Event-ID` gets what it missed
//! even when the wrapped service cannot send it again.
//!
//! [`ReplayConfig`] turns it on
//! ([`EventTrackingLayerBuilder::replay`](crate::EventTrackingLayerBuilder::replay)) and bounds
//! it. What is kept, per stream (session, [`StreamKey`]): the events, byte for byte as the
//! upstream sent them (comments and blank lines before an event count as part of it; the
//! layer's own heartbeats do not), each with the ID its block set, in one ring buffer per stream.
//! A history only ever answers lookups of its own session.
//!
//! Beyond this process's memory, a [`HistoryStore`] ([`ReplayConfig::store`]) is a second tier:
//! the persistence worker appends every kept event to it, and a reconnect whose ID this process
//! does not hold (after a restart, on another replica) is answered from it.
//! [`MemoryHistoryStore`] is the reference implementation; `RedbHistory` (feature `redb`) keeps
//! histories across restarts in one file, and `RedisHistory` (feature `redis`) shares them
//! between replicas as Redis Streams. A stream has one writer at a time (a later writer fences
//! an earlier one off), and a writer that stops renewing its lease lets go of its stream.
//!
//! ```
//! use std::time::Duration;
//! use http::Method;
//! use tower_sse_tracking::{
//!     EventTrackingLayer,
//!     history::{MemoryHistoryStore, ReplayConfig, UnknownId},
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let replay = ReplayConfig::default()
//!     // A POST that generates an answer outlives its client for a minute.
//!     .detach_grace(Duration::from_secs(60))
//!     .detach_if(|method, _stream| method == Method::POST)
//!     // An ID in no history: start over is the service's call (the default).
//!     .unknown_id(UnknownId::PassThrough)
//!     // Shared by the replicas of this process (a durable or shared store in production).
//!     .store(MemoryHistoryStore::default());
//! let tracking = EventTrackingLayer::builder()
//!     .session_cookie("sid")
//!     .replay(replay)
//!     .build();
//! # let _ = tracking;
//! # }
//! ```

#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redis")]
mod redis;
mod ring;
mod store;
mod stream;

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{HeaderMap, HeaderName, Method, StatusCode};
use tokio::time::Instant;

#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use self::redb::{RedbHistory, RedbHistoryBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisHistory, RedisHistoryBuilder};
pub use self::store::{
    AppendReport, DEFAULT_HISTORY_TTL, DEFAULT_LEASE, HistoryEvent, HistoryPage, HistoryStore,
    MemoryHistoryStore, StoredPosition, StreamEnd, WriterLease,
};
pub(crate) use self::stream::{Appended, Bounds, Found, HistoryGuard, State, StreamHistory};
use crate::{
    SessionId, StreamKey,
    lru::LinkedSlab,
    metrics::{self as m, Labels},
};

/// The response header that says what replay did with a request's `Last-Event-ID`: `replayed`
/// (found: the events after it were sent from history), `gap` (too old: older events were
/// dropped) or `unknown` (in none of the session's histories).
pub static SSE_REPLAY: HeaderName = HeaderName::from_static("sse-replay");

/// What the layer answers when a request's `Last-Event-ID` is not in its session's histories:
/// unknown (never seen, or its history expired) or too old (evicted).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnknownId {
    /// Call the wrapped service with the request unchanged: it decides (a feed may start over,
    /// a generator may start again). The default.
    PassThrough,
    /// Answer from the stream's history (the request's own stream key) when it has one: an
    /// event `event: gap` whose `data` is the oldest retained ID, then every retained event,
    /// then the stream goes on as after a found ID. Without a history for the request's
    /// stream, as [`PassThrough`](Self::PassThrough).
    Gap,
    /// Answer with this status and an empty body, which stops a browser's `EventSource` from
    /// reconnecting (any status but 200 does; 204 says "no more", 409 or 410 "start over").
    Status(StatusCode),
}

/// Settings of replay at the layer: bounds on what is kept, and what to do with IDs not found.
///
/// ```
/// use std::time::Duration;
/// use http::StatusCode;
/// use tower_sse_tracking::history::{ReplayConfig, UnknownId};
///
/// let replay = ReplayConfig::default()
///     .max_events(2048)
///     .max_bytes(2 << 20)
///     .max_total_bytes(256 << 20)
///     .idle_ttl(Duration::from_secs(300))
///     .unknown_id(UnknownId::Status(StatusCode::GONE));
/// ```
#[derive(Clone)]
pub struct ReplayConfig {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_streams_per_session: usize,
    pub(crate) max_total_bytes: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) unknown_id: UnknownId,
    pub(crate) detach_grace: Duration,
    pub(crate) max_detached: usize,
    pub(crate) bind_to: Option<HeaderName>,
    pub(crate) authorize: Option<Arc<Authorize>>,
    pub(crate) detach_if: Option<Arc<DetachIf>>,
    pub(crate) store: Option<Arc<dyn HistoryStore>>,
}

/// A function that says which streams may outlive their client.
pub(crate) type DetachIf = dyn Fn(&Method, &StreamKey) -> bool + Send + Sync;

/// A function that decides whether a request may resume a session's stream from history.
pub(crate) type Authorize = dyn Fn(&SessionId, &StreamKey, &HeaderMap) -> bool + Send + Sync;

impl std::fmt::Debug for ReplayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayConfig")
            .field("max_events", &self.max_events)
            .field("max_bytes", &self.max_bytes)
            .field("max_streams_per_session", &self.max_streams_per_session)
            .field("max_total_bytes", &self.max_total_bytes)
            .field("idle_ttl", &self.idle_ttl)
            .field("unknown_id", &self.unknown_id)
            .field("detach_grace", &self.detach_grace)
            .field("max_detached", &self.max_detached)
            .field("bind_to", &self.bind_to)
            .field("authorize", &self.authorize.as_ref().map(|_| ".."))
            .field("detach_if", &self.detach_if.as_ref().map(|_| ".."))
            .field("store", &self.store.as_ref().map(|_| ".."))
            .finish()
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            max_events: 1024,
            max_bytes: 1 << 20,
            max_streams_per_session: 16,
            max_total_bytes: 64 << 20,
            idle_ttl: Duration::from_secs(600),
            unknown_id: UnknownId::PassThrough,
            detach_grace: Duration::ZERO,
            max_detached: 1024,
            bind_to: None,
            authorize: None,
            detach_if: None,
            store: None,
        }
    }
}

impl ReplayConfig {
    /// Default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Most events kept per stream (at least 1); the oldest go first.
    ///
    /// Defaults to 1024.
    pub fn max_events(mut self, n: usize) -> Self {
        self.max_events = n.max(1);
        self
    }

    /// Most bytes of events kept per stream (at least 1); the oldest go first. An event larger
    /// than this is not kept at all, and the stream has a gap from then on (an ID before it is
    /// answered as too old).
    ///
    /// Defaults to 1 MiB; at most 1 GiB (a larger value is taken as 1 GiB).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n.clamp(1, MAX_BYTES);
        self
    }

    /// Most streams with a history per session (at least 1). A new one beyond it takes the
    /// place of the session's finished stream used longest ago; when all are live, it gets no
    /// history.
    ///
    /// Defaults to 16.
    pub fn max_streams_per_session(mut self, n: usize) -> Self {
        self.max_streams_per_session = n.max(1);
        self
    }

    /// Most bytes all histories hold together (rings and records, as allocated). At the cap,
    /// finished streams go first, least recently used first; then streams read on without their
    /// client (see [`detach_grace`](Self::detach_grace)) give up their oldest events, largest
    /// first; then the stream being appended to gives up its oldest, down to its newest one (a
    /// floor of a few hundred bytes each). While detached streams can give bytes up, a live
    /// stream's ring may grow past the cap for the chunk it is appending. While live streams at
    /// their floor fill the cap, a new stream gets no history (counted as
    /// `sse_tracking_history_streams_dropped_total{reason="refused"}`).
    ///
    /// Defaults to 64 MiB.
    pub fn max_total_bytes(mut self, n: usize) -> Self {
        self.max_total_bytes = n;
        self
    }

    /// How long a finished stream's history (no response appending to it) is kept.
    ///
    /// Defaults to 10 minutes.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// What to answer for a `Last-Event-ID` not found in the session's histories.
    ///
    /// Defaults to [`UnknownId::PassThrough`].
    pub fn unknown_id(mut self, policy: UnknownId) -> Self {
        self.unknown_id = policy;
        self
    }

    /// Lets streams outlive their client: after the client goes away, the layer keeps reading
    /// the wrapped service's response into the history for up to `grace` (until it ends, if
    /// sooner), so that the work is not lost and a reconnect gets the rest, as it comes, without
    /// calling the service again. For responses that generate something once (an LLM's answer
    /// streamed from a POST, a long export).
    ///
    /// Such a stream's response is read by a task of its own (spawned on the current Tokio
    /// runtime), and its client gets the frames through a small bounded channel: the client's
    /// pace still paces the upstream while it is there. Costs a task per stream and a channel
    /// hop per frame; apply it (with a layer of its own) only to the routes that need it.
    ///
    /// Defaults to zero: a stream ends with its client.
    pub fn detach_grace(mut self, grace: Duration) -> Self {
        self.detach_grace = grace;
        self
    }

    /// Which streams the [`detach_grace`](Self::detach_grace) applies to, by the request's
    /// method and the stream's key: say, only the POSTs that generate an answer, while the
    /// layer's GET feeds end with their client and pay no task per stream.
    ///
    /// Defaults to every stream (when the grace is not zero).
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::Method;
    /// use tower_sse_tracking::history::ReplayConfig;
    ///
    /// let replay = ReplayConfig::default()
    ///     .detach_grace(Duration::from_secs(60))
    ///     .detach_if(|method, stream| method == Method::POST && stream.as_str() == "/chat");
    /// ```
    pub fn detach_if<F>(mut self, f: F) -> Self
    where
        F: Fn(&Method, &StreamKey) -> bool + Send + Sync + 'static,
    {
        self.detach_if = Some(Arc::new(f));
        self
    }

    /// Most streams read on after their client went away, at once (see
    /// [`detach_grace`](Self::detach_grace)); beyond it a stream ends with its client (counted
    /// as `sse_tracking_detached_streams_total{outcome="refused"}`).
    ///
    /// Defaults to 1024.
    pub fn max_detached(mut self, n: usize) -> Self {
        self.max_detached = n;
        self
    }

    /// Binds every stream to a credential: a keyed hash (SipHash with keys drawn at random
    /// per process) of this request header's value (such as `Authorization`, or a cookie that
    /// authenticates) is kept with the stream, and only a request with the same value gets
    /// its events replayed; any other is answered as if the ID were unknown. The value itself
    /// is not kept.
    ///
    /// Replayed and followed responses do not reach the wrapped service, so whatever it checks
    /// is not checked for them: put authentication outside this layer, and bind streams (or
    /// [`authorize`](Self::authorize) resumes) when the session key alone must not be enough.
    ///
    /// Defaults to none.
    pub fn bind_to(mut self, header: HeaderName) -> Self {
        self.bind_to = Some(header);
        self
    }

    /// Decides, per request, whether it may get a session's stream from history: called with
    /// the session, the stream whose history holds the ID, and the request's headers; `false`
    /// answers as if the ID were unknown.
    ///
    /// Defaults to allowing every request of the session (the session key is the capability).
    ///
    /// ```
    /// use tower_sse_tracking::history::ReplayConfig;
    ///
    /// let replay = ReplayConfig::default()
    ///     .authorize(|_session, _stream, headers| headers.contains_key("x-user"));
    /// ```
    pub fn authorize<F>(mut self, f: F) -> Self
    where
        F: Fn(&SessionId, &StreamKey, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        self.authorize = Some(Arc::new(f));
        self
    }

    /// A second tier for histories, beyond this process's memory (durable, or shared by
    /// replicas): every event kept in memory is also appended to it, in batches, by the
    /// persistence worker on each tick; a reconnect whose `Last-Event-ID` is not in memory (after
    /// a restart, or on another replica) is looked up there, replayed from it, and the wrapped
    /// service goes on after the newest replayed event, with the seam as for any cut stream.
    /// A live tail across replicas is not followed: the service is called.
    ///
    /// Events wait for the worker in a bounded outbox (65,536 events); when the store keeps
    /// failing and the outbox is full, the oldest waiting events are dropped and counted
    /// (`sse_tracking_history_store_dropped_total`).
    ///
    /// Defaults to none: histories live in this process's memory only.
    pub fn store<H: HistoryStore>(mut self, store: H) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            max_events: self.max_events,
            max_bytes: self.max_bytes,
        }
    }
}

/// The largest [`ReplayConfig::max_bytes`]: a stream's byte ring then stays under 4 GiB, so
/// that its event records keep 32-bit offsets.
pub(crate) const MAX_BYTES: usize = 1 << 30;

/// Events waiting for the history store, at most.
const OUTBOX_EVENTS: usize = 65_536;

/// What waits for the history store.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// An event to append.
    Event(HistoryEvent),
    /// A stream ended (after its last events), by its writer.
    Finish(WriterLease, StreamEnd),
}

/// Events on their way to the history store: pushed by producers, written by the persistence
/// worker on its ticks. Bounded: when the store keeps failing, the oldest go (counted).
pub(crate) struct Outbox {
    pub(crate) store: Arc<dyn HistoryStore>,
    items: Mutex<std::collections::VecDeque<Outgoing>>,
    /// The streams being produced here, with their writers: their leases are renewed.
    live: Mutex<HashMap<(SessionId, StreamKey), u64>>,
    labels: Labels,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    pub(crate) fn new(store: Arc<dyn HistoryStore>, labels: Labels) -> Self {
        Self {
            store,
            items: Mutex::default(),
            live: Mutex::default(),
            labels,
        }
    }

    /// A stream starts (`Some(writer)`) or stops (`None`) being produced here.
    pub(crate) fn set_live(&self, session: &SessionId, stream: &StreamKey, writer: Option<u64>) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (session.clone(), stream.clone());
        match writer {
            Some(writer) => live.insert(key, writer),
            None => live.remove(&key),
        };
    }

    /// The leases of the streams being produced here.
    pub(crate) fn live(&self) -> Vec<WriterLease> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.iter()
            .map(|((session, stream), &writer)| WriterLease {
                session: session.clone(),
                stream: stream.clone(),
                writer,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, std::collections::VecDeque<Outgoing>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds items at the front: what a failed write left, to be tried again first. The oldest
    /// go beyond the bound.
    pub(crate) fn push_front(&self, items: Vec<Outgoing>) {
        if items.is_empty() {
            return;
        }
        let mut queue = self.lock();
        for item in items.into_iter().rev() {
            queue.push_front(item);
        }
        self.bound(queue);
    }

    /// Adds `items` at the back (new ones), leaving the vector empty with its capacity: a
    /// stream keeps one for its frames' events, so that a frame allocates nothing for them. The
    /// oldest go beyond the bound.
    pub(crate) fn push_back(&self, items: &mut Vec<Outgoing>) {
        if items.is_empty() {
            return;
        }
        let mut queue = self.lock();
        queue.extend(items.drain(..));
        self.bound(queue);
    }

    /// Lets the oldest items go beyond the bound, counted.
    fn bound(&self, mut queue: MutexGuard<'_, std::collections::VecDeque<Outgoing>>) {
        let over = queue.len().saturating_sub(OUTBOX_EVENTS);
        queue.drain(..over);
        drop(queue);
        if over > 0 {
            self.labels
                .counter(m::HISTORY_STORE_DROPPED)
                .increment(over as u64);
        }
    }

    /// Everything waiting, oldest first.
    pub(crate) fn take(&self) -> Vec<Outgoing> {
        self.lock().drain(..).collect()
    }
}

/// Histories expired per new stream, at most (incremental, like the registry's expiry).
const EXPIRE_PER_STREAM: usize = 4;

/// Where a `Last-Event-ID` was found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// In this stream, as the event with this sequence number.
    Found(Arc<StreamHistory>, u64),
    /// Not retained, but the request's own stream has a history with a gap: it may have been
    /// there.
    TooOld(Arc<StreamHistory>),
    /// In none of the session's histories.
    Unknown,
}

/// The stream histories of some sessions, keyed by foldhash (randomly seeded: keys are client
/// input).
type Shard = HashMap<SessionId, Vec<Arc<StreamHistory>>, foldhash::fast::RandomState>;

/// Every stream history of one layer, by session; bounded in total.
pub(crate) struct Histories {
    pub(crate) config: ReplayConfig,
    bounds: Bounds,
    shards: Box<[Mutex<Shard>]>,
    router: foldhash::fast::RandomState,
    /// Fingerprints of IDs, randomly seeded (IDs come from upstreams, lookups from clients).
    hasher: foldhash::fast::RandomState,
    /// Keys the hash of the credentials streams are bound to (SipHash, random keys).
    credentials: std::hash::RandomState,
    /// Bytes all histories hold.
    total: AtomicUsize,
    /// Finished streams (no producer), least recently finished first.
    finished: Mutex<LinkedSlab<Arc<StreamHistory>>>,
    pub(crate) labels: Labels,
    /// Streams being read on after their client went away.
    detached: AtomicUsize,
    /// The histories of the streams being read on without their client: over the global cap,
    /// the largest of them give up their oldest events before a live stream does.
    detached_streams: Mutex<Vec<Arc<StreamHistory>>>,
    /// Events on their way to the history store, if there is one.
    pub(crate) outbox: Option<Arc<Outbox>>,
    /// The persistence worker's flush interval: how far behind its writer the history store
    /// may be.
    pub(crate) flush_interval: Duration,
}

impl std::fmt::Debug for Histories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histories")
            .field("config", &self.config)
            .field("total_bytes", &self.total_bytes())
            .finish_non_exhaustive()
    }
}

impl Histories {
    pub(crate) fn new(config: ReplayConfig, labels: Labels, flush_interval: Duration) -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 4)
            .next_power_of_two()
            .clamp(4, 64);
        let outbox = config
            .store
            .clone()
            .map(|store| Arc::new(Outbox::new(store, labels.clone())));
        Self {
            bounds: config.bounds(),
            config,
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            router: foldhash::fast::RandomState::default(),
            hasher: foldhash::fast::RandomState::default(),
            credentials: std::hash::RandomState::new(),
            flush_interval,
            total: AtomicUsize::new(0),
            finished: Mutex::default(),
            labels,
            detached: AtomicUsize::new(0),
            detached_streams: Mutex::default(),
            outbox,
        }
    }

    pub(crate) fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The fingerprint of an ID, for the seam.
    pub(crate) fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Bytes all histories hold.
    pub(crate) fn total_bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Whether a history may grow by `more` bytes without passing the global cap.
    pub(crate) fn has_room(&self, more: usize) -> bool {
        self.total_bytes() + more <= self.config.max_total_bytes
    }

    /// Whether a history may grow its ring by `more` bytes: within the global cap, or past it
    /// while detached streams hold bytes they can give up (the growing stream's chunk is then
    /// followed by [`trim_detached`](Self::trim_detached), before it trims itself).
    pub(crate) fn may_grow(&self, more: usize) -> bool {
        self.has_room(more) || self.detached.load(Ordering::Relaxed) > 0
    }

    /// A stream's client went away: whether the stream may be read on (under the cap of
    /// detached streams). Counted either way.
    pub(crate) fn try_detach(&self, history: Option<&Arc<StreamHistory>>) -> bool {
        let taken = self
            .detached
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.config.max_detached).then_some(n + 1)
            })
            .is_ok();
        if taken && let Some(history) = history {
            self.detached_list().push(history.clone());
        }
        self.note_detached(if taken { "detached" } else { "refused" });
        taken
    }

    /// A detached stream ended (`expired`: its grace ran out before its upstream ended).
    pub(crate) fn end_detached(&self, expired: bool, history: Option<&Arc<StreamHistory>>) {
        if let Some(history) = history {
            self.detached_list().retain(|h| !Arc::ptr_eq(h, history));
        }
        self.detached.fetch_sub(1, Ordering::Relaxed);
        self.note_detached(if expired { "expired" } else { "completed" });
    }

    fn detached_list(&self) -> MutexGuard<'_, Vec<Arc<StreamHistory>>> {
        self.detached_streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Over the global cap: the detached streams give up their oldest events (down to their
    /// newest), largest first, before a stream with a live client has to.
    pub(crate) fn trim_detached(&self) {
        let mut by_size: Vec<(usize, Arc<StreamHistory>)> = self
            .detached_list()
            .iter()
            .map(|h| (h.lock().accounted, h.clone()))
            .collect();
        by_size.sort_unstable_by_key(|(size, _)| std::cmp::Reverse(*size));
        for (_, history) in by_size {
            let Some(over) = self.over_cap() else {
                return;
            };
            let trimmed = history.lock().trim(over);
            self.note(trimmed);
        }
    }

    fn note_detached(&self, outcome: &'static str) {
        self.labels
            .counter_with(m::DETACHED, "outcome", outcome)
            .increment(1);
        self.labels
            .gauge(m::DETACHED_NOW)
            .set(self.detached.load(Ordering::Relaxed) as f64);
    }

    /// Streams being read on after their client went away.
    pub(crate) fn detached(&self) -> usize {
        self.detached.load(Ordering::Relaxed)
    }

    /// Whether a request's response may outlive its client.
    pub(crate) fn detaches(&self, method: &Method, key: &StreamKey) -> bool {
        !self.config.detach_grace.is_zero()
            && self
                .config
                .detach_if
                .as_ref()
                .is_none_or(|f| f(method, key))
    }

    /// The keyed hash of the credential a request carries, when streams are bound to one
    /// (`Some(None)`: bound, and the request has none).
    pub(crate) fn credential(&self, headers: &HeaderMap) -> Option<Option<u64>> {
        let header = self.config.bind_to.as_ref()?;
        Some(
            headers
                .get(header)
                .map(|value| self.credentials.hash_one(value.as_bytes())),
        )
    }

    /// By how many bytes the histories are over the global cap, if they are.
    pub(crate) fn over_cap(&self) -> Option<usize> {
        self.total_bytes()
            .checked_sub(self.config.max_total_bytes)
            .filter(|&over| over > 0)
    }

    /// Accounts an append's change of size; counts evictions (in batches: in a full history
    /// every append evicts) and dropped events.
    #[inline]
    pub(crate) fn note(&self, appended: Appended) {
        if appended == Appended::default() {
            return;
        }
        self.note_changes(appended);
    }

    #[cold]
    fn note_changes(&self, appended: Appended) {
        if appended.delta > 0 {
            self.total
                .fetch_add(appended.delta as usize, Ordering::Relaxed);
        } else if appended.delta < 0 {
            self.total
                .fetch_sub(appended.delta.unsigned_abs(), Ordering::Relaxed);
        }
        if appended.evicted > 0 {
            self.labels
                .counter_with(m::HISTORY_EVICTED, "reason", "bounds")
                .increment(appended.evicted);
        }
        if appended.dropped {
            self.labels.counter(m::HISTORY_OVERSIZED).increment(1);
        }
    }

    fn shard(&self, session: &SessionId) -> MutexGuard<'_, Shard> {
        let ix = (self.router.hash_one(session.as_str()) >> 40) as usize & (self.shards.len() - 1);
        self.shards[ix]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn finished(&self) -> MutexGuard<'_, LinkedSlab<Arc<StreamHistory>>> {
        self.finished.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, history: &StreamHistory, now: Instant) -> bool {
        let st = history.lock();
        st.producers == 0
            && st
                .finished_at
                .is_some_and(|at| now.duration_since(at) >= self.config.idle_ttl)
    }

    /// A response starts (or continues) producing into the history of (session, stream):
    /// created if needed, with `head` as the head of replays answered from it. `None` when the
    /// session has the most streams allowed, all live.
    pub(crate) fn produce(
        &self,
        session: &SessionId,
        key: &StreamKey,
        head: &HeaderMap,
        credential: Option<u64>,
    ) -> Option<Arc<StreamHistory>> {
        self.expire(EXPIRE_PER_STREAM);
        let history = {
            let mut shard = self.shard(session);
            let streams = shard.entry(session.clone()).or_default();
            let history = self.find_or_add(streams, session, key, head, credential);
            if streams.is_empty() {
                shard.remove(session);
            }
            history?
        };
        self.attach(&history);
        Some(history)
    }

    /// The history of `key` among a session's `streams`, added if there is none and room for
    /// it (see [`produce`](Self::produce)).
    fn find_or_add(
        &self,
        streams: &mut Vec<Arc<StreamHistory>>,
        session: &SessionId,
        key: &StreamKey,
        head: &HeaderMap,
        credential: Option<u64>,
    ) -> Option<Arc<StreamHistory>> {
        let now = Instant::now();
        streams.retain(|h| !self.expired(h, now) || self.forget(h, "idle"));
        if let Some(history) = streams.iter().find(|h| &h.key == key) {
            // A stream bound to another credential takes no events of this one.
            return (history.credential == credential).then(|| history.clone());
        }
        if self.over_cap().is_some() {
            // Live streams at their floor fill the cap: no history for a new one.
            self.labels
                .counter_with(m::HISTORY_STREAMS_DROPPED, "reason", "refused")
                .increment(1);
            return None;
        }
        if streams.len() >= self.config.max_streams_per_session {
            // The finished stream of this session that finished longest ago goes.
            let oldest = streams
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    let st = h.lock();
                    (st.producers == 0).then_some((i, st.finished_at))
                })
                .min_by_key(|&(_, at)| at)
                .map(|(i, _)| i)?;
            let gone = streams.swap_remove(oldest);
            self.forget(&gone, "streams");
        }
        let history = Arc::new(StreamHistory::new(
            session.clone(),
            key.clone(),
            head.clone(),
            credential,
        ));
        streams.push(history.clone());
        Some(history)
    }

    /// One more producer for a history.
    pub(crate) fn attach(&self, history: &Arc<StreamHistory>) {
        let mut finished = self.finished();
        let ix = history.lru.swap(u32::MAX, Ordering::Relaxed);
        if ix != u32::MAX {
            finished.remove(ix);
        }
        drop(finished);
        let mut st = history.lock();
        if st.producers == 0
            && let Some(outbox) = &self.outbox
        {
            // A new writer for the history store: later than any before it.
            history.new_writer();
            outbox.set_live(&history.session, &history.key, Some(history.writer()));
        }
        st.producers += 1;
        st.complete = false;
        st.finished_at = None;
    }

    /// A producer ended: `complete` when its upstream ended normally. The last one puts the
    /// history on the finished list.
    pub(crate) fn release(&self, history: &Arc<StreamHistory>, complete: bool) {
        {
            let mut st = history.lock();
            let evicted = st.take_evictions();
            if evicted > 0 {
                self.labels
                    .counter_with(m::HISTORY_EVICTED, "reason", "bounds")
                    .increment(evicted);
            }
            st.producers = st.producers.saturating_sub(1);
            st.abandon_pending();
            if st.producers == 0
                && let Some(outbox) = &self.outbox
            {
                outbox.set_live(&history.session, &history.key, None);
            }
            // A dropped history (its session forgotten, or over the cap) is no longer listed
            // anywhere: it goes with its last holder.
            if st.producers > 0 || st.dropped {
                return;
            }
            st.complete = complete;
            st.finished_at = Some(Instant::now());
        }
        if let Some(outbox) = &self.outbox {
            let end = if complete {
                StreamEnd::Complete
            } else {
                StreamEnd::Cut
            };
            let finish = Outgoing::Finish(history.lease(), end);
            outbox.push_back(&mut vec![finish]);
        }
        // Wake the responses following the tail: nothing more comes from this producer.
        history.appended.notify_waiters();
        let mut finished = self.finished();
        if history.lru.load(Ordering::Relaxed) == u32::MAX {
            let ix = finished.insert(history.clone());
            finished.push_back(ix);
            history.lru.store(ix, Ordering::Relaxed);
        }
        drop(finished);
        self.enforce_cap();
        self.labels
            .gauge(m::HISTORY_BYTES)
            .set(self.total_bytes() as f64);
    }

    /// Finished histories go, least recently finished first, while the total is over the cap.
    pub(crate) fn enforce_cap(&self) {
        while self.total_bytes() > self.config.max_total_bytes {
            let Some(front) = self.pop_finished(None) else {
                return;
            };
            self.remove(&front, "capacity");
        }
    }

    /// Expires up to `n` finished histories idle for the TTL.
    pub(crate) fn expire(&self, n: usize) {
        let now = Instant::now();
        for _ in 0..n {
            let Some(front) = self.pop_finished(Some(now)) else {
                return;
            };
            self.remove(&front, "idle");
        }
    }

    /// Takes the front of the finished list (with `expired_at`, only if it expired).
    fn pop_finished(&self, expired_at: Option<Instant>) -> Option<Arc<StreamHistory>> {
        let mut finished = self.finished();
        let ix = finished.front()?;
        let history = finished.get(ix)?.clone();
        if let Some(now) = expired_at
            && !self.expired(&history, now)
        {
            return None;
        }
        finished.remove(ix);
        history.lru.store(u32::MAX, Ordering::Relaxed);
        Some(history)
    }

    /// Removes a history from its session (it was taken off the finished list already).
    fn remove(&self, history: &StreamHistory, reason: &'static str) {
        let mut shard = self.shard(&history.session);
        if let Some(streams) = shard.get_mut(&history.session) {
            streams.retain(|h| !std::ptr::eq(Arc::as_ptr(h), history));
            if streams.is_empty() {
                shard.remove(&history.session);
            }
        }
        drop(shard);
        self.drop_history(history, reason);
    }

    /// Takes a history off the finished list and drops it (the caller removes it from its
    /// session). Returns `false`, for `retain`.
    fn forget(&self, history: &Arc<StreamHistory>, reason: &'static str) -> bool {
        let mut finished = self.finished();
        let ix = history.lru.swap(u32::MAX, Ordering::Relaxed);
        if ix != u32::MAX {
            finished.remove(ix);
        }
        drop(finished);
        self.drop_history(history, reason);
        false
    }

    /// Accounts for a history that is gone.
    fn drop_history(&self, history: &StreamHistory, reason: &'static str) {
        let bytes = history.lock().drop_all();
        self.total.fetch_sub(bytes, Ordering::Relaxed);
        self.labels
            .counter_with(m::HISTORY_STREAMS_DROPPED, "reason", reason)
            .increment(1);
        // Responses following it see it finished.
        history.appended.notify_waiters();
    }

    /// Where `id` is among the session's histories: the stream whose history holds it (only
    /// ever this session's), else whether the request's own stream (`key`) may have had it.
    pub(crate) fn lookup(
        &self,
        session: &SessionId,
        key: &StreamKey,
        id: &str,
        headers: &HeaderMap,
    ) -> Lookup {
        let credential = self.credential(headers);
        self.expire(EXPIRE_PER_STREAM);
        let streams: Vec<Arc<StreamHistory>> = {
            let shard = self.shard(session);
            match shard.get(session) {
                Some(streams) => streams.clone(),
                None => return Lookup::Unknown,
            }
        };
        let now = Instant::now();
        let mut own = None;
        for history in streams {
            if self.expired(&history, now) {
                continue;
            }
            // Bound to another credential, or not authorized: as if it did not exist.
            if credential.is_some_and(|c| c.is_none() || c != history.credential)
                || self
                    .config
                    .authorize
                    .as_ref()
                    .is_some_and(|allow| !allow(session, &history.key, headers))
            {
                continue;
            }
            let found = history.lock().find(id);
            match found {
                Found::At(seq) => return Lookup::Found(history, seq),
                Found::Evicted if &history.key == key => own = Some(history),
                _ => {}
            }
        }
        own.map_or(Lookup::Unknown, Lookup::TooOld)
    }

    /// Drops the history of a live stream that does not fit under the cap even at its floor:
    /// the stream goes on, without a history (its appends are ignored).
    pub(crate) fn drop_live(&self, history: &StreamHistory) {
        self.remove(history, "capacity");
    }

    /// Forgets every history of a session (it ended).
    pub(crate) fn purge_session(&self, session: &SessionId) {
        let streams = self.shard(session).remove(session).unwrap_or_default();
        for history in streams {
            self.forget(&history, "ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> StreamKey {
        StreamKey::new(k).unwrap()
    }

    #[test]
    fn a_session_keeps_at_most_its_cap_of_streams_finished_ones_going_first() {
        let histories = Histories::new(
            ReplayConfig::default().max_streams_per_session(2),
            Labels::default(),
            Duration::from_millis(50),
        );
        let s = SessionId::new("s").unwrap();
        let head = HeaderMap::new();
        let a = histories.produce(&s, &key("/a"), &head, None).unwrap();
        let b = histories.produce(&s, &key("/b"), &head, None).unwrap();
        assert!(
            histories.produce(&s, &key("/c"), &head, None).is_none(),
            "both live: no room"
        );
        histories.release(&a, true);
        let c = histories.produce(&s, &key("/c"), &head, None).unwrap();
        assert!(a.lock().dropped, "the finished one made room");
        // The same key finds the same history; another credential does not.
        let again = histories.produce(&s, &key("/b"), &head, None).unwrap();
        assert!(Arc::ptr_eq(&again, &b));
        assert!(histories.produce(&s, &key("/b"), &head, Some(7)).is_none());
        for h in [&b, &again, &c] {
            histories.release(h, false);
        }
        histories.purge_session(&s);
        assert_eq!(histories.total_bytes(), 0);
        assert!(histories.shard(&s).get(&s).is_none(), "no empty entry left");
        // A refused stream leaves no empty entry either.
        let other = SessionId::new("t").unwrap();
        let tiny = Histories::new(
            ReplayConfig::default().max_total_bytes(0),
            Labels::default(),
            Duration::from_millis(50),
        );
        tiny.total.store(1, Ordering::Relaxed); // over the cap
        assert!(tiny.produce(&other, &key("/a"), &head, None).is_none());
        assert!(tiny.shard(&other).get(&other).is_none());
    }

    #[test]
    fn a_history_dropped_while_live_is_not_listed_as_finished_afterwards() {
        let histories = Histories::new(
            ReplayConfig::default(),
            Labels::default(),
            Duration::from_millis(50),
        );
        let s = SessionId::new("s").unwrap();
        let live = histories
            .produce(&s, &key("/a"), &HeaderMap::new(), None)
            .unwrap();
        histories.purge_session(&s); // the session ended while its stream ran
        histories.release(&live, true);
        assert!(
            histories.pop_finished(None).is_none(),
            "nothing to drop twice"
        );
        assert_eq!(histories.total_bytes(), 0);
    }
}
