//! [`EventTrackingLayer`] and its builder.

use std::{
    fmt,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use http::{HeaderName, Method, request::Parts};
use tower_layer::Layer;

use crate::{
    config::Config,
    history::{Histories, ReplayConfig},
    metrics::Labels,
    parser::DEFAULT_MAX_ID_LEN,
    service::EventTracking,
    session::{
        DEFAULT_MAX_SESSION_KEY_LEN, DEFAULT_MAX_STREAM_KEY_LEN, SessionSource, StreamSource,
    },
    store::{MemoryStore, SessionStore},
    worker::{FlushReport, ShutdownReport, WorkerConfig, WorkerFuture, WorkerGone, WorkerHandle},
};

/// Default time a stream may wait for room in the worker's queue.
const DEFAULT_BACKPRESSURE_TIMEOUT: Duration = Duration::from_millis(100);

/// Tracks the last event ID of every session's `text/event-stream` responses and persists it
/// through one shared worker.
///
/// Cloning the layer, or applying it to many routes, shares the one worker that
/// [`build`](EventTrackingLayerBuilder::build) started.
///
/// # Untrusted session keys
///
/// Session keys come from clients. A key is validated (length, no control characters) before
/// anything is stored under it, and finding or admitting a session costs O(1) whatever the
/// in-memory registry holds: it is sharded (no lock is held for longer than a map operation)
/// and bounded by [`WorkerConfig::max_sessions`]. At the cap, the session idle longest is
/// forgotten from memory (its state is in the store); sessions with a live stream or unwritten
/// state never are, and when only such sessions remain, new ones pass through untracked (and
/// are counted). A flood of new keys thus costs bounded memory and work, and never slows or
/// untracks an existing stream. Every response body is forwarded unchanged either way.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use axum::{Router, routing::get, response::sse::{Event, Sse}};
/// use futures_util::stream;
/// use http::HeaderName;
/// use tower_sse_tracking::{EventTrackingLayer, store::MemoryStore};
///
/// async fn events() -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
///     Sse::new(stream::iter((1..=3).map(|i| Ok(Event::default().id(i.to_string()).data("tick")))))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let tracking = EventTrackingLayer::builder()
///     .store(store.clone())
///     .session_header(HeaderName::from_static("mcp-session-id"))
///     .build(); // spawns the persistence worker
/// let app: Router = Router::new().route("/events", get(events)).layer(tracking.clone());
/// // ... serve `app`; on shutdown:
/// let report = tracking.shutdown(Duration::from_secs(5)).await.unwrap();
/// assert!(report.unpersisted().is_empty());
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EventTrackingLayer {
    config: Arc<Config>,
}

impl EventTrackingLayer {
    /// A builder with the defaults: [`MemoryStore`], session key from the `mcp-session-id`
    /// header, no heartbeats, no resume.
    pub fn builder() -> EventTrackingLayerBuilder {
        EventTrackingLayerBuilder::default()
    }

    /// The worker's handle: flush, shutdown, and the in-memory view of sessions.
    pub fn worker(&self) -> &WorkerHandle {
        &self.config.worker
    }

    /// Bytes the replay histories hold (0 without replay). Not a stable API: for tests.
    #[doc(hidden)]
    pub fn history_bytes(&self) -> usize {
        self.config.replay.as_ref().map_or(0, |h| h.total_bytes())
    }

    /// Streams read on after their client went away (replay's detach grace). Not a stable API:
    /// for tests.
    #[doc(hidden)]
    pub fn detached_streams(&self) -> usize {
        self.config.replay.as_ref().map_or(0, |h| h.detached())
    }

    /// Writes everything recorded so far; see [`WorkerHandle::flush`].
    ///
    /// # Errors
    ///
    /// [`WorkerGone`] after shutdown.
    pub async fn flush(&self) -> Result<FlushReport, WorkerGone> {
        self.config.worker.flush().await
    }

    /// Stops tracking and writes everything left within `timeout`; see
    /// [`WorkerHandle::shutdown`].
    ///
    /// # Errors
    ///
    /// [`WorkerGone`] if it had already shut down.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, WorkerGone> {
        self.config.worker.shutdown(timeout).await
    }
}

impl<S> Layer<S> for EventTrackingLayer {
    type Service = EventTracking<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EventTracking::new(inner, self.config.clone())
    }
}

/// Configures and builds an [`EventTrackingLayer`].
///
/// ```
/// use std::time::Duration;
/// use tower_sse_tracking::{EventTrackingLayer, store::MemoryStore, worker::WorkerConfig};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tracking = EventTrackingLayer::builder()
///     .store(MemoryStore::new())
///     // The session key from a query parameter instead of a header.
///     .session_query("session")
///     .heartbeat(Duration::from_secs(15))
///     .backpressure_timeout(Duration::from_millis(50))
///     .worker(WorkerConfig::default().flush_interval(Duration::from_millis(20)))
///     .build();
/// # let _ = tracking;
/// # }
/// ```
pub struct EventTrackingLayerBuilder {
    name: Option<String>,
    store: Option<Arc<dyn SessionStore>>,
    source: SessionSource,
    streams: StreamSource,
    max_key_len: usize,
    max_stream_key_len: usize,
    max_id_len: usize,
    backpressure_timeout: Duration,
    heartbeat: Option<Duration>,
    resume: bool,
    replay: Option<ReplayConfig>,
    settle: Option<Duration>,
    resume_methods: Vec<Method>,
    forget_methods: Vec<Method>,
    follow_last_event_id: bool,
    worker: WorkerConfig,
}

impl Default for EventTrackingLayerBuilder {
    fn default() -> Self {
        Self {
            name: None,
            store: None,
            source: SessionSource::Header(HeaderName::from_static("mcp-session-id")),
            streams: StreamSource::path(),
            max_key_len: DEFAULT_MAX_SESSION_KEY_LEN,
            max_stream_key_len: DEFAULT_MAX_STREAM_KEY_LEN,
            max_id_len: DEFAULT_MAX_ID_LEN,
            backpressure_timeout: DEFAULT_BACKPRESSURE_TIMEOUT,
            heartbeat: None,
            resume: false,
            replay: None,
            settle: None,
            resume_methods: vec![Method::GET],
            forget_methods: Vec::new(),
            follow_last_event_id: false,
            worker: WorkerConfig::default(),
        }
    }
}

impl fmt::Debug for EventTrackingLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventTrackingLayerBuilder")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("streams", &self.streams)
            .field("max_key_len", &self.max_key_len)
            .field("max_stream_key_len", &self.max_stream_key_len)
            .field("max_id_len", &self.max_id_len)
            .field("backpressure_timeout", &self.backpressure_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("resume", &self.resume)
            .field("settle", &self.settle)
            .field("replay", &self.replay)
            .field("resume_methods", &self.resume_methods)
            .field("forget_methods", &self.forget_methods)
            .field("follow_last_event_id", &self.follow_last_event_id)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl EventTrackingLayerBuilder {
    /// Names the layer: every metric it records (its worker's too) carries the label
    /// `layer="<name>"` ([`metrics::LAYER_LABEL`](crate::metrics::LAYER_LABEL)), so that two
    /// layers in one process do not overwrite each other's gauges.
    ///
    /// Defaults to no name: metrics carry no layer label.
    ///
    /// ```
    /// use tower_sse_tracking::EventTrackingLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let chat = EventTrackingLayer::builder().name("chat").build();
    /// let feed = EventTrackingLayer::builder().name("feed").build();
    /// # let _ = (chat, feed);
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where last event IDs are persisted.
    ///
    /// Defaults to a new [`MemoryStore`].
    pub fn store<S: SessionStore>(mut self, store: S) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Takes the session key from this header of the request or, when the request has none,
    /// of the response (servers such as MCP ones assign the session in their response).
    ///
    /// Defaults to `mcp-session-id`.
    pub fn session_header(mut self, name: HeaderName) -> Self {
        self.source = SessionSource::Header(name);
        self
    }

    /// Takes the session key from a cookie of the request, as browsers send it: `EventSource`
    /// cannot send custom headers, but sends the page's cookies (with `withCredentials` across
    /// origins). The value is percent-decoded (`%XX`) and validated like any key; a request
    /// without the cookie is not tracked.
    ///
    /// Defaults to the `mcp-session-id` header (see [`session_header`](Self::session_header)).
    ///
    /// ```
    /// use tower_sse_tracking::EventTrackingLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tracking = EventTrackingLayer::builder().session_cookie("sid").build();
    /// # let _ = tracking;
    /// # }
    /// ```
    pub fn session_cookie(mut self, name: &str) -> Self {
        self.source = SessionSource::Cookie(Arc::from(name));
        self
    }

    /// Takes the session key from a parameter of the request's query string (for
    /// `new EventSource("/events?session=...")`), decoded as browsers encode it (`%XX`, `+` for
    /// a space) and validated like any key; the first parameter of that name counts. A request
    /// without it is not tracked.
    ///
    /// Defaults to the `mcp-session-id` header (see [`session_header`](Self::session_header)).
    pub fn session_query(mut self, name: &str) -> Self {
        self.source = SessionSource::Query(Arc::from(name));
        self
    }

    /// Takes the session key from a function of the request head (path, query, cookies, ...).
    /// `None` leaves the request untracked.
    ///
    /// Defaults to the `mcp-session-id` header (see [`session_header`](Self::session_header)).
    pub fn session_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.source = SessionSource::Fn(Arc::new(f));
        self
    }

    /// Takes the stream key from a function of the request head: positions are tracked and
    /// resumed per (session, stream), and this says which of a session's streams a request is.
    /// `None` leaves the request untracked.
    ///
    /// Defaults to the request's path (without the query): different endpoints never share a
    /// position. Two tabs of one page on the same endpoint with the same session do share one,
    /// unless the key tells them apart, as below with a tab ID in the query.
    ///
    /// ```
    /// use tower_sse_tracking::EventTrackingLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tracking = EventTrackingLayer::builder()
    ///     .session_cookie("sid")
    ///     // "/events?tab=3" -> "/events#3"
    ///     .stream_key(|parts| {
    ///         let tab = parts.uri.query()?.split('&').find_map(|p| p.strip_prefix("tab="))?;
    ///         Some(format!("{}#{tab}", parts.uri.path()))
    ///     })
    ///     .build();
    /// # let _ = tracking;
    /// # }
    /// ```
    pub fn stream_key<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.streams = StreamSource::Fn(Arc::new(f));
        self
    }

    /// Tracks one position per session, whatever the stream (the stream key is empty, see
    /// [`StreamKey::whole_session`](crate::StreamKey::whole_session)). For protocols whose
    /// event IDs are unique across all the streams of a session, where a reconnecting stream
    /// may resume from an ID another stream sent.
    ///
    /// Defaults to one position per (session, request path); see
    /// [`stream_key`](Self::stream_key).
    pub fn one_position_per_session(mut self) -> Self {
        self.streams = StreamSource::WholeSession;
        self
    }

    /// A request whose `Last-Event-ID` is the position of one of its session's streams
    /// continues that stream, whatever key [`stream_key`](Self::stream_key) gives it. For
    /// protocols where the event ID says which stream a reconnect resumes, as MCP's does
    /// ("the server MAY replay messages ... on the stream that was disconnected"), so that the
    /// resumed stream's events update its own position, not the position of the stream the
    /// request would otherwise be keyed to. The IDs are only compared, never parsed.
    ///
    /// Defaults to off (see [`mcp`](Self::mcp)).
    pub fn follow_last_event_id(mut self) -> Self {
        self.follow_last_event_id = true;
        self
    }

    /// Settings for an MCP server on the streamable HTTP transport (protocol revisions
    /// 2025-03-26 to 2025-11-25; the session-less 2026-07-28 revision is passed through,
    /// untracked, and counted as `sse_tracking_untracked_total{reason="no_session"}`):
    ///
    /// - the session key from the `mcp-session-id` header (of the request, or of the
    ///   `initialize` response that assigns it);
    /// - positions the way MCP defines streams: the standalone stream a client opens with a GET
    ///   (`"GET <path>"`), the streams of POST responses (`"POST <path>"`, one position for
    ///   all of them, as their IDs carry the request they answer), a GET whose `Last-Event-ID`
    ///   is the position of one of these continuing it ([`follow_last_event_id`]), and any
    ///   other GET with a `Last-Event-ID` apart (`"GET <path> resumed"`), so that each stored
    ///   ID stays one of its own stream's;
    /// - [`resume`](Self::resume), if turned on, only for GET (the default), so a client that
    ///   lost its `Last-Event-ID` gets the standalone stream's own, never a POST stream's;
    /// - the session forgotten on `DELETE` ([`forget_on`](Self::forget_on)), with its history.
    ///
    /// [`follow_last_event_id`]: Self::follow_last_event_id
    ///
    /// ```
    /// use tower_sse_tracking::EventTrackingLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // In front of rmcp's `StreamableHttpService` (nested at "/mcp" in an axum Router).
    /// let tracking = EventTrackingLayer::builder().mcp().resume(true).build();
    /// # let _ = tracking;
    /// # }
    /// ```
    pub fn mcp(self) -> Self {
        self.session_header(HeaderName::from_static("mcp-session-id"))
            .stream_key(|parts| {
                let path = parts.uri.path();
                let method = &parts.method;
                if method == Method::GET && parts.headers.contains_key("last-event-id") {
                    Some(format!("GET {path} resumed"))
                } else {
                    // GET, POST, and DELETE (it ends the session: keyed so that it is seen).
                    Some(format!("{method} {path}"))
                }
            })
            .follow_last_event_id()
            .resume_methods([Method::GET])
            .forget_on([Method::DELETE])
    }

    /// Longest accepted stream key, in bytes. Longer keys, and keys with control characters,
    /// leave the request untracked (counted as `sse_tracking_untracked_total{reason="invalid_key"}`).
    ///
    /// Defaults to 256.
    pub fn max_stream_key_len(mut self, max: usize) -> Self {
        self.max_stream_key_len = max;
        self
    }

    /// Forgets a session when a request of one of these methods, carrying the session's key,
    /// gets a successful (2xx) response: its positions are deleted from memory and from the
    /// store (see [`WorkerHandle::forget`]) before the response goes out, so that the client's
    /// next request finds the session gone. A failed deletion is logged and counted
    /// (`sse_tracking_delete_errors_total`); the response goes out unchanged either way.
    ///
    /// For protocols where a request ends the session, such as MCP's `DELETE` with
    /// `mcp-session-id`. Without it, an ended session stays in the store until its TTL.
    ///
    /// Defaults to none.
    ///
    /// ```
    /// use http::Method;
    /// use tower_sse_tracking::EventTrackingLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tracking = EventTrackingLayer::builder().forget_on([Method::DELETE]).build();
    /// # let _ = tracking;
    /// # }
    /// ```
    pub fn forget_on(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.forget_methods = methods.into_iter().collect();
        self
    }

    /// Longest accepted session key, in bytes. Longer keys, and keys with control characters,
    /// leave the request untracked (counted as `sse_tracking_untracked_total{reason="invalid_key"}`).
    ///
    /// Defaults to 128.
    pub fn max_session_key_len(mut self, max: usize) -> Self {
        self.max_key_len = max;
        self
    }

    /// Longest tracked event ID, in bytes; longer ones are ignored and counted.
    ///
    /// Defaults to 1024.
    pub fn max_id_len(mut self, max: usize) -> Self {
        self.max_id_len = max;
        self
    }

    /// Longest time a stream waits for room in the worker's queue when its session turns
    /// dirty and the queue is full. After it the session is parked and written on the worker's
    /// next tick: no ID is lost and the stream is never stalled longer.
    ///
    /// Defaults to 100 ms.
    pub fn backpressure_timeout(mut self, timeout: Duration) -> Self {
        self.backpressure_timeout = timeout;
        self
    }

    /// Sends a comment line (`:` LF) after `idle` without upstream bytes, at line boundaries
    /// only, to keep idle connections open through proxies. Not for responses with a
    /// `Content-Length`.
    ///
    /// Defaults to off.
    pub fn heartbeat(mut self, idle: Duration) -> Self {
        self.heartbeat = Some(idle).filter(|d| !d.is_zero());
        self
    }

    /// When a request for a known session carries no `Last-Event-ID`, inserts its stream's
    /// last event ID (from memory, else from the store; see [`stream_key`](Self::stream_key)) before calling the inner service. A
    /// client's own header is never overridden; a store error leaves the request as it was.
    /// Only requests of the [`resume_methods`](Self::resume_methods) (GET) are resumed.
    ///
    /// What resume promises: the tracked ID is the last event the layer handed to the
    /// connection, not the last one the client processed. Events in flight when a connection
    /// broke (in socket buffers, say) are not sent again: a client that had processed 7 while
    /// 8..10 were on their way resumes at 11. Resume is *at most once* for those events; a
    /// client that needs every event sends its own `Last-Event-ID` (browsers' `EventSource`
    /// does when it reconnects by itself).
    ///
    /// Whether resume is on or not, a `Last-Event-ID` that the client sends itself is
    /// authoritative: the stream's position moves to it, and the duplicate window starts again
    /// from it, so that the events the stream sends after it are tracked even if the session
    /// had seen them before.
    ///
    /// Defaults to off.
    pub fn resume(mut self, enabled: bool) -> Self {
        self.resume = enabled;
        self
    }

    /// Makes resume *at least once*: when a stream ends, the position it leaves behind is an ID
    /// it handed over at least `settle` before the end (at most `settle / 4` earlier than the
    /// newest such one), not the newest ID. Events that may still have been in flight when the
    /// connection broke are then sent again to a client that resumes (with
    /// [`resume`](Self::resume), or its own `Last-Event-ID` from an earlier point); a client
    /// may get some events twice, and must tell them apart by their IDs.
    ///
    /// While the stream runs, the store gets its newest ID as usual; the position goes back to
    /// the settled one when the stream ends (written like any change, with a new version). If
    /// another stream of the same position moved it meanwhile, it is left alone. If the process
    /// dies while the stream runs, the store keeps the newest ID (at most once for that stream).
    /// Replay at the layer, where the events themselves are kept, will make this exact.
    ///
    /// Costs a clock read and a copy of the ID per event with an ID, and a few hundred bytes per
    /// stream.
    ///
    /// Defaults to off: at most once (see [`resume`](Self::resume)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse_tracking::EventTrackingLayer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tracking = EventTrackingLayer::builder()
    ///     .resume(true)
    ///     .resume_at_least_once(Duration::from_secs(1))
    ///     .build();
    /// # let _ = tracking;
    /// # }
    /// ```
    pub fn resume_at_least_once(mut self, settle: Duration) -> Self {
        self.settle = Some(settle).filter(|d| !d.is_zero());
        self
    }

    /// Turns on replay at the layer: every tracked stream's recent events are kept (bounded, see
    /// [`ReplayConfig`]), and a request with `Last-Event-ID` (the client's, or filled in by
    /// [`resume`](Self::resume)) gets the events after it from the layer, even when the wrapped
    /// service cannot send them again:
    ///
    /// - The ID is looked up in the histories of the request's session only (never another
    ///   session's), in whichever of its streams holds it.
    /// - If that stream's producer is still running in this process, the response follows it:
    ///   the events after the ID, then the live ones as they come. The wrapped service is **not**
    ///   called, so whatever it checks (authentication, say) must sit outside this layer.
    /// - If the stream ended normally and events follow the ID, the response sends them and
    ///   ends where the stream ended; again without calling the service.
    /// - Otherwise (the stream was cut, or the client has all of it) the response sends the
    ///   events after the ID, then calls the wrapped service with `Last-Event-ID` set to the
    ///   newest of them, and drops the events of its response that the client already got.
    /// - An ID not found is passed through by default; see [`ReplayConfig::unknown_id`].
    ///
    /// The `sse-replay` response header says what happened: `replayed`, `gap` or `unknown`.
    /// Events are matched by the ID their block set: events without an `id` field are kept
    /// and replayed with the one before them, but cannot be resumed after.
    ///
    /// Defaults to off (no history is kept, nothing changes).
    ///
    /// ```
    /// use tower_sse_tracking::{EventTrackingLayer, history::ReplayConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let tracking = EventTrackingLayer::builder()
    ///     .session_cookie("sid")
    ///     .replay(ReplayConfig::default().max_events(2048))
    ///     .build();
    /// # let _ = tracking;
    /// # }
    /// ```
    pub fn replay(mut self, config: ReplayConfig) -> Self {
        self.replay = Some(config);
        self
    }

    /// The request methods that [`resume`](Self::resume) applies to. `EventSource` reconnects
    /// with GET; a POST usually starts new work, which must not be told to continue an old
    /// stream, so only add methods whose requests really continue a stream.
    ///
    /// Defaults to GET only.
    pub fn resume_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.resume_methods = methods.into_iter().collect();
        self
    }

    /// Settings of the persistence worker and of the in-memory registry of sessions (its cap,
    /// idle TTL and duplicate window).
    ///
    /// Defaults to [`WorkerConfig::default`].
    pub fn worker(mut self, config: WorkerConfig) -> Self {
        self.worker = config;
        self
    }

    /// Builds the layer and spawns its persistence worker on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime.
    pub fn build(self) -> EventTrackingLayer {
        let (layer, worker) = self.build_with_worker();
        tokio::spawn(worker);
        layer
    }

    /// Builds the layer and returns the worker future instead of spawning it, for other
    /// executors and for tests. Nothing is persisted until the future runs.
    pub fn build_with_worker(self) -> (EventTrackingLayer, WorkerFuture) {
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let mut worker_config = self.worker;
        worker_config.labels = Labels::named(self.name);
        let replay = self.replay.map(|replay| {
            Arc::new(Histories::new(
                replay,
                worker_config.labels.clone(),
                worker_config.flush_interval,
            ))
        });
        // The worker writes the history store's batches, if there is one.
        worker_config.history = replay.as_ref().and_then(|h| h.outbox.clone());
        let (worker, future) = WorkerHandle::pair(store, worker_config);
        let config = Config {
            worker,
            source: self.source,
            streams: self.streams,
            max_key_len: self.max_key_len,
            max_stream_key_len: self.max_stream_key_len,
            max_id_len: self.max_id_len,
            backpressure_timeout: self.backpressure_timeout,
            heartbeat: self.heartbeat,
            resume: self.resume,
            settle: self.settle,
            replay,
            resume_methods: self.resume_methods,
            forget_methods: self.forget_methods,
            follow_last_event_id: self.follow_last_event_id,
            warned_encoded: AtomicBool::new(false),
        };
        (
            EventTrackingLayer {
                config: Arc::new(config),
            },
            future,
        )
    }
}
