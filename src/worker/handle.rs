//! [`WorkerHandle`] and what it hands out: the worker's future, tracked sessions, reports.

use std::{fmt, future::Future, pin::Pin, sync::Arc, task, time::Duration};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{Attachment, Queue, Tracker, WorkerConfig, run};
use crate::{
    SessionId, StreamKey,
    registry::{Full, RegistryStats},
    store::{SessionStore, StoreError},
};

pub(crate) enum Control {
    Flush(oneshot::Sender<FlushReport>),
    Forget {
        session: SessionId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Shutdown {
        deadline: Instant,
        reply: oneshot::Sender<ShutdownReport>,
    },
}

/// The worker task, for executors other than the current Tokio runtime's `spawn`. It needs a
/// Tokio timer (`time` driver) to run.
#[must_use = "the worker does nothing unless polled"]
pub struct WorkerFuture {
    inner: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl fmt::Debug for WorkerFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerFuture").finish_non_exhaustive()
    }
}

impl Future for WorkerFuture {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> task::Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

/// A cheap, cloneable handle to the persistence worker (see the [module docs](crate::worker)) and the
/// in-memory session registry.
///
/// ```
/// use std::time::Duration;
/// use tower_sse_tracking::{
///     SessionId, StreamKey, store::MemoryStore, worker::{WorkerConfig, WorkerHandle},
/// };
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (worker, task) = WorkerHandle::pair(MemoryStore::new(), WorkerConfig::default());
/// tokio::spawn(task); // or any executor with a Tokio timer
/// let session = SessionId::new("s1").unwrap();
/// worker.record(&session, &StreamKey::new("/events").unwrap(), Some("1"));
/// let report = worker.flush().await.unwrap();
/// assert_eq!(report.persisted(), 1);
/// assert!(worker.shutdown(Duration::from_secs(1)).await.unwrap().unpersisted().is_empty());
/// assert!(worker.flush().await.is_err(), "after shutdown");
/// # }
/// ```
#[derive(Clone)]
pub struct WorkerHandle {
    tracker: Arc<Tracker>,
    /// Handles and streams hold the queue's senders: the worker ends once all are dropped.
    queue: Queue,
    control: mpsc::Sender<Control>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    /// Spawns the worker on the current Tokio runtime and returns its handle. The layer's
    /// builder does this for you; use it directly to record events without the layer.
    ///
    /// # Panics
    ///
    /// Panics if called outside a Tokio runtime.
    pub fn spawn<S: SessionStore>(store: S, config: WorkerConfig) -> Self {
        let (handle, worker) = Self::pair(store, config);
        tokio::spawn(worker);
        handle
    }

    /// Returns the handle and the worker future, for other executors and for tests. Nothing is
    /// written until the future runs; it ends after [`shutdown`](Self::shutdown), or once every
    /// handle, layer and stream is gone.
    pub fn pair<S: SessionStore>(store: S, config: WorkerConfig) -> (Self, WorkerFuture) {
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_capacity);
        let (control_tx, control_rx) = mpsc::channel(16);
        let store: Arc<dyn SessionStore> = Arc::new(store);
        let tracker = Arc::new(Tracker::new(config, store));
        let worker = run::Worker::new(tracker.clone(), queue_rx, control_rx);
        let future = WorkerFuture {
            inner: Box::pin(worker.run()),
        };
        let handle = Self {
            tracker,
            queue: queue_tx,
            control: control_tx,
        };
        (handle, future)
    }

    /// Records one event of a session's stream outside of any HTTP response: `id` is the
    /// event's `id` field if it had one (`Some("")` clears the stream's ID). The position is
    /// queued for the worker if it just turned dirty; if the queue is full it is parked and
    /// written on the next tick. Never waits.
    ///
    /// [`RecordOutcome::RegistryFull`] if the stream could not be tracked (the registry is full
    /// of positions with live streams or unwritten state, or the session has
    /// [`max_streams_per_session`](WorkerConfig::max_streams_per_session) busy streams).
    pub fn record(
        &self,
        session: &SessionId,
        stream: &StreamKey,
        id: Option<&str>,
    ) -> RecordOutcome {
        // Attached for the call only, without an `Attachment`: no sender clone per call.
        let Ok(slot) = self.tracker.registry.attach(session, stream) else {
            return RecordOutcome::RegistryFull;
        };
        let outcome = self
            .tracker
            .record(&slot, &self.queue, id.map(str::as_bytes));
        self.tracker.registry.detach(&slot);
        outcome
    }

    /// A session's stream, for recording many events without looking it up each time (the
    /// path responses behind the layer take). `None` if the registry is full.
    ///
    /// ```
    /// use tower_sse_tracking::{
    ///     SessionId, StreamKey, store::MemoryStore,
    ///     worker::{RecordOutcome, WorkerConfig, WorkerHandle},
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let worker = WorkerHandle::spawn(MemoryStore::new(), WorkerConfig::default());
    /// let session = SessionId::new("ws-42").unwrap();
    /// let stream = worker.stream(&session, &StreamKey::new("ticks").unwrap()).unwrap();
    /// for id in ["1", "2", "3"] {
    ///     assert_eq!(stream.record(Some(id)), RecordOutcome::Recorded);
    /// }
    /// assert_eq!(stream.record(Some("2")), RecordOutcome::Duplicate);
    /// assert_eq!(stream.last_event_id().as_deref(), Some("3"));
    /// # }
    /// ```
    pub fn stream(&self, session: &SessionId, stream: &StreamKey) -> Option<TrackedStream> {
        let attachment = self.attach(session, stream).ok()?;
        Some(TrackedStream { attachment })
    }

    /// Attaches a response to a session's stream, admitting it into the registry if needed.
    /// The stream of `session` whose position (in memory) is `id`, if one is.
    pub(crate) fn stream_at(&self, session: &SessionId, id: &str) -> Option<StreamKey> {
        self.tracker.registry.stream_at(session, id)
    }

    pub(crate) fn attach(
        &self,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<Attachment, Full> {
        Attachment::new(&self.tracker, &self.queue, session, stream)
    }

    /// The stream's newest last event ID known in memory: `None` if this process recorded no
    /// `id` for it, `Some("")` if the stream cleared it.
    pub fn last_event_id(&self, session: &SessionId, stream: &StreamKey) -> Option<String> {
        self.tracker.registry.get(session, stream)?.last_event_id()
    }

    /// Forgets a session that ended: every stream's position, in memory and in the store
    /// ([`SessionStore::delete_session`]). What was recorded for the session and not written
    /// yet is dropped, not written. A stream of the session that is still open stays tracked:
    /// its later events start afresh.
    ///
    /// Runs on the worker, between two writes, so that no write of the session in flight can
    /// bring it back. See [`forget_on`](crate::EventTrackingLayerBuilder::forget_on) to forget
    /// sessions when a request (such as a `DELETE`) ends them.
    ///
    /// # Errors
    ///
    /// The store's error when it could not delete the session (the positions in memory are
    /// forgotten all the same).
    pub async fn forget(&self, session: &SessionId) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .control
            .send(Control::Forget {
                session: session.clone(),
                reply,
            })
            .await;
        if sent.is_ok()
            && let Ok(result) = rx.await
        {
            return result;
        }
        // The worker has shut down: nothing writes any more, so no write can race the delete.
        self.tracker.registry.forget_session(session);
        self.tracker.store.delete_session(session).await
    }

    /// The labels of every metric this worker's layer records.
    pub(crate) fn labels(&self) -> &crate::metrics::Labels {
        self.tracker.labels()
    }

    /// The store the worker writes to.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.tracker.store
    }

    /// Positions (session, stream) tracked in memory.
    pub fn tracked_sessions(&self) -> usize {
        self.tracker.registry.len()
    }

    /// How the in-memory registry made room for new sessions. Not a stable API: for tests.
    #[doc(hidden)]
    pub fn registry_stats(&self) -> RegistryStats {
        self.tracker.registry.stats()
    }

    /// Whether [`shutdown`](Self::shutdown) has run (or the worker has stopped).
    pub fn is_shut_down(&self) -> bool {
        self.tracker.is_closed() || self.control.is_closed()
    }

    /// Writes everything recorded before the call now: returns once it is written or has
    /// failed (failed writes stay scheduled for retry).
    ///
    /// # Errors
    ///
    /// [`WorkerGone`] if the worker has shut down.
    pub async fn flush(&self) -> Result<FlushReport, WorkerGone> {
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Flush(reply))
            .await
            .map_err(|_| WorkerGone(()))?;
        rx.await.map_err(|_| WorkerGone(()))
    }

    /// Stops the worker: intake is closed at once (later records are dropped and counted, even
    /// while layers and handles live on), everything queued or parked is written, failures are
    /// retried until `timeout` has passed, and what could not be written is reported.
    ///
    /// # Errors
    ///
    /// [`WorkerGone`] if the worker had already shut down.
    pub async fn shutdown(&self, timeout: Duration) -> Result<ShutdownReport, WorkerGone> {
        let deadline = Instant::now() + timeout;
        let (reply, rx) = oneshot::channel();
        self.control
            .send(Control::Shutdown { deadline, reply })
            .await
            .map_err(|_| WorkerGone(()))?;
        rx.await.map_err(|_| WorkerGone(()))
    }
}

/// One tracked stream of a session, for recording its events directly (for example from a
/// WebSocket or a custom transport). Holding it (or a clone) keeps the stream in memory.
#[derive(Clone)]
pub struct TrackedStream {
    attachment: Attachment,
}

impl fmt::Debug for TrackedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrackedStream")
            .field(self.attachment.session())
            .field(self.attachment.stream())
            .finish()
    }
}

impl TrackedStream {
    /// Records one event: `id` is its `id` field if it had one (`Some("")` clears). Updates the
    /// stream's slot in place; queues it for the worker only when it turns dirty (parking it if
    /// the queue is full). Never waits. [`RecordOutcome::Duplicate`] if the ID is a duplicate
    /// of a recent one (counted, the stream's ID left as it was); never
    /// [`RecordOutcome::RegistryFull`]: holding the handle keeps the stream tracked.
    #[inline]
    pub fn record(&self, id: Option<&str>) -> RecordOutcome {
        self.attachment.record_and_enqueue(id.map(str::as_bytes))
    }

    /// The session key.
    pub fn session(&self) -> &SessionId {
        self.attachment.session()
    }

    /// The stream key.
    pub fn stream(&self) -> &StreamKey {
        self.attachment.stream()
    }

    /// The newest last event ID recorded in this process (`Some("")`: cleared).
    pub fn last_event_id(&self) -> Option<String> {
        self.attachment.slot().last_event_id()
    }
}

/// What recording one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordOutcome {
    /// Recorded: the session's newest state will be written.
    Recorded,
    /// The event's ID was seen recently in this session: counted
    /// (`sse_tracking_duplicate_events_total`), the session's ID left as it was.
    Duplicate,
    /// Not recorded: the registry is full of positions with live streams or unwritten state,
    /// or the session has the most streams allowed, all busy.
    RegistryFull,
}

/// What an explicit [`flush`](WorkerHandle::flush) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub(crate) persisted: usize,
    pub(crate) failed: usize,
}

impl FlushReport {
    /// Sessions written.
    pub fn persisted(&self) -> usize {
        self.persisted
    }

    /// Sessions whose write failed (kept and retried).
    pub fn failed(&self) -> usize {
        self.failed
    }
}

/// What [`shutdown`](WorkerHandle::shutdown) wrote and could not write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    pub(crate) persisted: usize,
    pub(crate) unpersisted: Vec<(SessionId, StreamKey)>,
}

impl ShutdownReport {
    /// Position writes that succeeded during the shutdown itself (0 when everything had been
    /// written before it began: see [`is_complete`](Self::is_complete) for that question).
    pub fn written_during_shutdown(&self) -> usize {
        self.persisted
    }

    /// Whether nothing was left unwritten: every stream's newest last event ID is in the
    /// store.
    pub fn is_complete(&self) -> bool {
        self.unpersisted.is_empty()
    }

    /// The streams whose newest last event ID could not be written before the deadline.
    pub fn unpersisted(&self) -> &[(SessionId, StreamKey)] {
        &self.unpersisted
    }
}

/// The worker has shut down (or its task ended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerGone(());

impl fmt::Display for WorkerGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the persistence worker has shut down")
    }
}

impl std::error::Error for WorkerGone {}
