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

use super::{RecordOutcome, WorkerConfig};
use crate::{
    SessionId, StreamKey,
    metrics::{self as m, Labels},
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
    /// The queue is full.
    Full,
    /// The worker has shut down.
    Closed,
}

/// The sending side of the worker's queue. Only handles and attachments (streams) hold one: the
/// worker ends once the last is dropped (or on shutdown), as its channel says.
pub(crate) type Queue = mpsc::Sender<Arc<Slot>>;

/// The sessions being tracked, shared (behind an `Arc`) by the worker, its handles and every
/// tracked stream. It holds no sender of the worker's queue, so that it does not keep the
/// worker alive.
pub(crate) struct Tracker {
    pub(crate) config: WorkerConfig,
    pub(crate) registry: Registry,
    pub(crate) hasher: IdHasher,
    pub(crate) store: Arc<dyn SessionStore>,
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
    pub(crate) fn new(config: WorkerConfig, store: Arc<dyn SessionStore>) -> Self {
        // Wake once half the queue (or `max_batch` sessions, if fewer) is taken.
        let wake_below = config
            .queue_capacity
            .saturating_sub(config.max_batch.min(config.queue_capacity / 2).max(1));
        let registry = Registry::new(
            RegistryLimits {
                max_sessions: config.max_sessions,
                max_streams_per_session: config.max_streams_per_session,
                idle_ttl: config.idle_ttl,
                dedup_window: config.dedup_window,
            },
            config.labels.clone(),
        );
        Self {
            config,
            registry,
            hasher: IdHasher::default(),
            store,
            overflow: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            wake_below,
        }
    }

    /// The labels of every metric this layer records.
    pub(crate) fn labels(&self) -> &Labels {
        &self.config.labels
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Wakes the worker if the queue is filling up (called after every successful send).
    fn wake_if_filling(&self, queue: &Queue) {
        if queue.capacity() <= self.wake_below {
            self.wake.notify_one();
        }
    }

    /// Nobody will write the slot (the worker has shut down): let the registry forget it once
    /// idle.
    fn dropped_after_shutdown(&self, slot: &Arc<Slot>) {
        self.labels()
            .counter(m::DROPPED_AFTER_SHUTDOWN)
            .increment(1);
        slot.release();
        self.registry.refresh(slot);
    }

    pub(crate) fn take_overflow(&self, into: &mut Vec<Arc<Slot>>) {
        into.append(&mut self.overflow.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Records one event in a slot (hot path: the slot update, and a counter for duplicates).
    /// Inlined into the callers of other modules, like the per-event paths below.
    #[inline]
    fn note(&self, slot: &Slot, id: Option<&[u8]>) -> Recorded {
        let recorded = slot.record(id, &self.hasher);
        if recorded.duplicate {
            self.labels().counter(m::DUPLICATE_EVENTS).increment(1);
        }
        recorded
    }

    /// Records one event in a slot held by the caller, and queues the slot on `queue` if it just
    /// turned dirty (parks it if the queue is full).
    #[inline]
    pub(crate) fn record(
        &self,
        slot: &Arc<Slot>,
        queue: &Queue,
        id: Option<&[u8]>,
    ) -> RecordOutcome {
        let recorded = self.note(slot, id);
        if recorded.enqueue {
            self.enqueue_or_park(slot, queue);
        }
        if recorded.duplicate {
            RecordOutcome::Duplicate
        } else {
            RecordOutcome::Recorded
        }
    }

    /// Queues a slot without waiting.
    fn try_enqueue(&self, slot: &Arc<Slot>, queue: &Queue) -> Result<(), TryEnqueueError> {
        match queue.try_send(slot.clone()) {
            Ok(()) => {
                self.wake_if_filling(queue);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(TryEnqueueError::Full),
            Err(mpsc::error::TrySendError::Closed(slot)) => {
                self.dropped_after_shutdown(&slot);
                Err(TryEnqueueError::Closed)
            }
        }
    }

    /// Parks a slot the queue had no room for: the worker writes it on its next tick even if
    /// its stream goes quiet.
    fn park(&self, slot: &Arc<Slot>) {
        if self.is_closed() {
            self.dropped_after_shutdown(slot);
            return;
        }
        self.labels().counter(m::OVERFLOW_PARKED).increment(1);
        self.overflow
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot.clone());
    }

    /// Queues a slot, parking it if the queue is full.
    fn enqueue_or_park(&self, slot: &Arc<Slot>, queue: &Queue) {
        if let Err(TryEnqueueError::Full) = self.try_enqueue(slot, queue) {
            self.park(slot);
        }
    }
}

/// A stream's or handle's hold on a session: while one exists, the registry keeps the session in
/// memory and the worker runs. Cloning attaches once more; dropping detaches, after which a
/// session with nothing left to write becomes idle (and may be forgotten, its state being in the
/// store).
pub(crate) struct Attachment {
    slot: Arc<Slot>,
    tracker: Arc<Tracker>,
    queue: Queue,
}

impl Attachment {
    /// Attaches to a session's stream, admitting it into the registry if needed.
    pub(crate) fn new(
        tracker: &Arc<Tracker>,
        queue: &Queue,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<Self, Full> {
        let slot = tracker.registry.attach(session, stream)?;
        slot.arm_window(&tracker.hasher);
        Ok(Self {
            slot,
            tracker: tracker.clone(),
            queue: queue.clone(),
        })
    }

    pub(crate) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    pub(crate) fn session(&self) -> &SessionId {
        self.slot.session()
    }

    pub(crate) fn stream(&self) -> &StreamKey {
        self.slot.stream()
    }

    /// Records one event of the stream (hot path: the slot update alone). Returns `true` when
    /// the session just turned dirty: the caller must then queue it.
    #[inline]
    pub(crate) fn record(&self, id: Option<&[u8]>) -> bool {
        self.tracker.note(&self.slot, id).enqueue
    }

    /// How many times the session was forgotten (see `Slot::publish`).
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        self.slot.generation()
    }

    /// Whether the stream may keep its events to itself for now (see `Slot::batching`).
    #[inline]
    pub(crate) fn batching(&self) -> bool {
        self.slot.batching()
    }

    /// Hands over a stream's batch of events (see `Slot::publish`). Returns `true` when the
    /// session just turned dirty: the caller must then queue it.
    pub(crate) fn publish(
        &self,
        events: u64,
        id: Option<(&[u8], u64)>,
        seen: u64,
        generation: u32,
    ) -> bool {
        let recorded = self
            .slot
            .publish(events, id, seen, generation, &self.tracker.hasher);
        if recorded.duplicate {
            self.tracker
                .labels()
                .counter(m::DUPLICATE_EVENTS)
                .increment(1);
        }
        recorded.enqueue
    }

    /// Records one event and queues the session if it just turned dirty (parks it if the
    /// queue is full).
    #[inline]
    pub(crate) fn record_and_enqueue(&self, id: Option<&[u8]>) -> RecordOutcome {
        self.tracker.record(&self.slot, &self.queue, id)
    }

    /// The client stated `id` as its `Last-Event-ID`: the session's position moves there (see
    /// `Slot::resume_from`), and is written like any change.
    pub(crate) fn resume_from(&self, id: &str) {
        let recorded = self.slot.resume_from(id, &self.tracker.hasher);
        if recorded.enqueue {
            self.enqueue_or_park();
        }
    }

    /// An at-least-once stream ended: its position goes back to `settled` if it still holds
    /// `newest` (see `Slot::settle`), and is written like any change.
    pub(crate) fn settle(&self, newest: &str, settled: &str) {
        let recorded = self.slot.settle(newest, settled, &self.tracker.hasher);
        if recorded.enqueue {
            self.enqueue_or_park();
        }
    }

    /// Queues the session without waiting.
    pub(crate) fn try_enqueue(&self) -> Result<(), TryEnqueueError> {
        self.tracker.try_enqueue(&self.slot, &self.queue)
    }

    /// Waits for room in the queue (see [`send`](Self::send)).
    pub(crate) fn reserve(&self) -> Reserve {
        Box::pin(self.queue.clone().reserve_owned())
    }

    /// Queues the session in the room `reserve` found.
    pub(crate) fn send(&self, permit: OwnedPermit<Arc<Slot>>) {
        permit.send(self.slot.clone());
        self.tracker.wake_if_filling(&self.queue);
    }

    /// Parks the session, which the queue had no room for (see [`Tracker::park`]).
    pub(crate) fn park(&self) {
        self.tracker.park(&self.slot);
    }

    /// Queues the session, parking it if the queue is full.
    pub(crate) fn enqueue_or_park(&self) {
        self.tracker.enqueue_or_park(&self.slot, &self.queue);
    }
}

impl Clone for Attachment {
    fn clone(&self) -> Self {
        self.tracker.registry.attach_again(&self.slot);
        self.slot.arm_window(&self.tracker.hasher);
        Self {
            slot: self.slot.clone(),
            tracker: self.tracker.clone(),
            queue: self.queue.clone(),
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
            .field(self.slot.stream())
            .finish()
    }
}
