//! [`Tracker`]: what the worker, its handles and every tracked stream share (the registry of
//! sessions, the queue's sending side, the overflow set), and [`Attachment`], a stream's hold on
//! one session.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::{
    Notify, mpsc,
    mpsc::{OwnedPermit, error::SendError},
};

use super::{Control, RecordOutcome, WorkerConfig};
use crate::{
    SessionId, metrics as m,
    registry::{Full, Registry, RegistryLimits},
    slot::{IdHasher, Recorded, Slot},
    store::SessionStore,
};

/// Resolves once the worker's queue has room for one session.
pub(crate) type Reserve =
    Pin<Box<dyn Future<Output = Result<OwnedPermit<Arc<Slot>>, SendError<()>>> + Send>>;

/// Why a slot could not be queued without waiting.
#[derive(Debug)]
pub(crate) enum TryEnqueueError {
    /// The queue is full; the slot is handed back.
    Full(Arc<Slot>),
    /// The worker has shut down.
    Closed,
}

/// The sessions being tracked and the way to the worker that persists them, shared (behind an
/// `Arc`) by the worker, its handles and every tracked stream.
pub(crate) struct Tracker {
    pub(crate) config: WorkerConfig,
    pub(crate) registry: Registry,
    pub(crate) hasher: IdHasher,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) queue: mpsc::Sender<Arc<Slot>>,
    pub(crate) control: mpsc::Sender<Control>,
    /// Sessions that could not be queued in time; the worker collects them on every tick.
    /// Bounded by the number of sessions: a slot is here at most once.
    overflow: Mutex<Vec<Arc<Slot>>>,
    closed: AtomicBool,
    /// Wakes the worker early, when the queue is half full.
    pub(crate) wake: Notify,
    /// Free queue capacity at or below which an enqueue wakes the worker.
    wake_below: usize,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("registry", &self.registry)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Tracker {
    pub(crate) fn new(
        config: WorkerConfig,
        store: Arc<dyn SessionStore>,
        queue: mpsc::Sender<Arc<Slot>>,
        control: mpsc::Sender<Control>,
    ) -> Self {
        // Wake once half the queue (or `max_batch` sessions, if fewer) is taken.
        let wake_below = config
            .queue_capacity
            .saturating_sub(config.max_batch.min(config.queue_capacity / 2).max(1));
        let registry = Registry::new(RegistryLimits {
            max_sessions: config.max_sessions,
            idle_ttl: config.idle_ttl,
            dedup_window: config.dedup_window,
        });
        Self {
            config,
            registry,
            hasher: IdHasher::default(),
            store,
            queue,
            control,
            overflow: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            wake_below,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Queues a slot that just turned dirty, without waiting.
    pub(crate) fn try_enqueue(&self, slot: Arc<Slot>) -> Result<(), TryEnqueueError> {
        match self.queue.try_send(slot) {
            Ok(()) => {
                self.wake_if_filling();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(slot)) => Err(TryEnqueueError::Full(slot)),
            Err(mpsc::error::TrySendError::Closed(slot)) => {
                metrics::counter!(m::DROPPED_AFTER_SHUTDOWN).increment(1);
                // Nobody will write it: let the registry forget it once idle.
                slot.release();
                self.registry.refresh(&slot);
                Err(TryEnqueueError::Closed)
            }
        }
    }

    /// Wakes the worker if the queue is filling up (called after every successful send).
    pub(crate) fn wake_if_filling(&self) {
        if self.queue.capacity() <= self.wake_below {
            self.wake.notify_one();
        }
    }

    /// Parks a slot the queue had no room for; the worker writes it on its next tick even if
    /// the stream goes quiet.
    pub(crate) fn park(&self, slot: Arc<Slot>) {
        if self.is_closed() {
            metrics::counter!(m::DROPPED_AFTER_SHUTDOWN).increment(1);
            slot.release();
            self.registry.refresh(&slot);
            return;
        }
        metrics::counter!(m::OVERFLOW_PARKED).increment(1);
        self.overflow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }

    /// Queues a slot, parking it if the queue is full.
    pub(crate) fn enqueue_or_park(&self, slot: Arc<Slot>) {
        if let Err(TryEnqueueError::Full(slot)) = self.try_enqueue(slot) {
            self.park(slot);
        }
    }

    pub(crate) fn take_overflow(&self, into: &mut Vec<Arc<Slot>>) {
        into.append(&mut self.overflow.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Records one event for `session` (tracking it if needed) and queues the session if it just
    /// turned dirty. Returns `None` if the session cannot be tracked (registry full).
    pub(crate) fn record(
        self: &Arc<Self>,
        session: &SessionId,
        id: Option<&str>,
    ) -> Option<RecordOutcome> {
        let attached = Attachment::new(self, session).ok()?;
        Some(self.record_in(&attached.slot, id))
    }

    /// Records one event in a slot (hot path: the slot update, and a counter for duplicates).
    fn note(&self, slot: &Slot, id: Option<&str>) -> Recorded {
        let recorded = slot.record(id.map(|id| (id, self.hasher.hash(id))));
        if recorded.duplicate {
            metrics::counter!(m::DUPLICATE_EVENTS).increment(1);
        }
        recorded
    }

    /// Records one event in a slot already looked up, and queues it if it just turned dirty.
    pub(crate) fn record_in(&self, slot: &Arc<Slot>, id: Option<&str>) -> RecordOutcome {
        let recorded = self.note(slot, id);
        if recorded.enqueue {
            self.enqueue_or_park(slot.clone());
        }
        if recorded.duplicate {
            RecordOutcome::Duplicate
        } else {
            RecordOutcome::Recorded
        }
    }
}

/// A stream's or handle's hold on a session: while one exists, the registry keeps the session in
/// memory. Cloning attaches once more; dropping detaches, after which a session with nothing left
/// to write becomes idle (and may be forgotten, its state being in the store).
pub(crate) struct Attachment {
    slot: Arc<Slot>,
    tracker: Arc<Tracker>,
}

impl Attachment {
    /// Attaches to `session`, admitting it into the registry if needed.
    pub(crate) fn new(tracker: &Arc<Tracker>, session: &SessionId) -> Result<Self, Full> {
        let slot = tracker.registry.attach(session)?;
        Ok(Self {
            slot,
            tracker: tracker.clone(),
        })
    }

    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    pub(crate) fn session(&self) -> &SessionId {
        self.slot.session()
    }

    /// Records one event of the stream (hot path: the slot update alone). Returns `true` when
    /// the session just turned dirty: the caller must then queue it.
    #[inline]
    pub(crate) fn record(&self, id: Option<&str>) -> bool {
        self.tracker.note(&self.slot, id).enqueue
    }

    /// Records one event and queues the session if it just turned dirty (parks it if the
    /// queue is full).
    pub(crate) fn record_and_enqueue(&self, id: Option<&str>) -> RecordOutcome {
        self.tracker.record_in(&self.slot, id)
    }

    /// Queues the session without waiting.
    pub(crate) fn try_enqueue(&self) -> Result<(), TryEnqueueError> {
        self.tracker.try_enqueue(self.slot.clone())
    }

    /// Waits for room in the queue (see [`send`](Self::send)).
    pub(crate) fn reserve(&self) -> Reserve {
        Box::pin(self.tracker.queue.clone().reserve_owned())
    }

    /// Queues the session in the room `reserve` found.
    pub(crate) fn send(&self, permit: OwnedPermit<Arc<Slot>>) {
        permit.send(self.slot.clone());
        self.tracker.wake_if_filling();
    }

    /// Parks the session: the worker writes it on its next tick.
    pub(crate) fn park(&self) {
        self.tracker.park(self.slot.clone());
    }

    /// Queues the session, parking it if the queue is full.
    pub(crate) fn enqueue_or_park(&self) {
        self.tracker.enqueue_or_park(self.slot.clone());
    }
}

impl Clone for Attachment {
    fn clone(&self) -> Self {
        self.tracker.registry.attach_again(&self.slot);
        Self {
            slot: self.slot.clone(),
            tracker: self.tracker.clone(),
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.tracker.registry.detach(&self.slot);
    }
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Attachment")
            .field(self.slot.session())
            .finish()
    }
}
