//! The worker task: batches, coalesces, writes, retries and shuts down.

use std::{hash::BuildHasher, sync::Arc, time::SystemTime};

use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tracing::Instrument;

use super::{
    Control, FlushReport, ShutdownReport,
    breaker::Breaker,
    retry::{RetryHeap, backoff},
    tracker::Tracker,
};
use crate::{
    SessionId,
    history::Outgoing,
    metrics as m,
    registry::EXPIRE_PER_SHARD_PER_TICK,
    slot::{Slot, Written},
    store::{SessionUpdate, StoreError},
};

/// How a flush treats a failing store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushMode {
    /// A tick: respects the circuit breaker and the retries' backoff.
    Paced,
    /// An explicit flush or the shutdown: tries everything now.
    Forced,
}

pub(crate) struct Worker {
    tracker: Arc<Tracker>,
    rx: mpsc::Receiver<Arc<Slot>>,
    control: mpsc::Receiver<Control>,
    /// Sessions to write at the next flush, with the attempts already made. Each at most once.
    pending: Vec<(Arc<Slot>, u32)>,
    /// Sessions written on two consecutive ticks, clean since: they stay with the worker
    /// (queued) until the next tick, which writes them if their streams recorded more and
    /// releases them otherwise. A stream with an event every tick or so then never queues its
    /// session again: at such rates every event would otherwise cost a trip through the queue
    /// (a reference count, the channel's shared counters, cache lines the worker's core wrote
    /// last). Slower streams are released after each write, as before.
    lingering: Vec<Arc<Slot>>,
    /// Paced ticks so far (wrapping, never 0), for `Slot::mark_written`.
    tick: u32,
    retries: RetryHeap,
    breaker: Breaker,
    /// Seeds the retry jitter.
    rand: foldhash::fast::RandomState,
    rand_counter: u64,
    /// When the leases of the streams produced here were last renewed in the history store.
    history_touched: Option<Instant>,
    /// The history store's breaker: its writes follow the session store's rules.
    history_breaker: Breaker,
    /// A batch's buffers (each at most `max_batch` long), kept from one paced tick to the next
    /// while ticks write something: allocated anew per batch, those of thousands of sessions
    /// came and went as blocks of hundreds of KiB every tick, which cost the allocator more per
    /// write than the rest of the batch's bookkeeping. A tick that writes nothing (the worker
    /// is idle) and an explicit flush release them, so an idle worker holds none.
    scratch: Scratch,
}

/// See [`Worker::scratch`]. Empty between batches.
#[derive(Default)]
struct Scratch {
    entries: Vec<(Arc<Slot>, u32)>,
    slots: Vec<(Arc<Slot>, u32)>,
    updates: Vec<SessionUpdate>,
    seqs: Vec<u64>,
}

impl Scratch {
    /// Frees the buffers.
    fn release(&mut self) {
        *self = Self::default();
    }

    /// Keeps a batch's buffers, emptied (the updates' references released now).
    fn put_back(
        &mut self,
        mut slots: Vec<(Arc<Slot>, u32)>,
        mut updates: Vec<SessionUpdate>,
        mut seqs: Vec<u64>,
    ) {
        slots.clear();
        updates.clear();
        seqs.clear();
        self.slots = slots;
        self.updates = updates;
        self.seqs = seqs;
    }
}

impl Worker {
    pub(crate) fn new(
        tracker: Arc<Tracker>,
        rx: mpsc::Receiver<Arc<Slot>>,
        control: mpsc::Receiver<Control>,
    ) -> Self {
        let breaker = Breaker::new(
            tracker.config.breaker_threshold,
            tracker.config.breaker_cooldown,
            tracker.config.labels.clone(),
        );
        let history_breaker = Breaker::reporting(
            tracker.config.breaker_threshold,
            tracker.config.breaker_cooldown,
            tracker.config.labels.clone(),
            m::HISTORY_CIRCUIT_STATE,
        );
        Self {
            tracker,
            rx,
            control,
            pending: Vec::new(),
            lingering: Vec::new(),
            tick: 1,
            retries: RetryHeap::default(),
            breaker,
            rand: foldhash::fast::RandomState::default(),
            rand_counter: 0,
            history_touched: None,
            history_breaker,
            scratch: Scratch::default(),
        }
    }

    pub(crate) async fn run(mut self) {
        let config = self.tracker.config.clone();
        config
            .labels
            .gauge(m::QUEUE_CAPACITY)
            .set(config.queue_capacity as f64);
        self.breaker.report();
        let mut interval = tokio::time::interval(config.flush_interval);
        interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut buf = Vec::with_capacity(config.recv_batch);
        loop {
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => match control {
                    Control::Flush(reply) => {
                        let report = self.flush_now().await;
                        let _ = reply.send(report);
                    }
                    Control::Forget { session, reply } => {
                        let _ = reply.send(self.forget(&session).await);
                    }
                    Control::Shutdown { deadline, reply } => {
                        let report = self.shutdown(deadline).await;
                        let _ = reply.send(report);
                        return;
                    }
                },
                _ = interval.tick() => {
                    // Only handles and streams hold the queue's senders: once the last is gone,
                    // the channel says so (noticed here rather than woken per enqueue).
                    if self.rx.is_closed() {
                        self.orphaned().await;
                        return;
                    }
                    self.tick = self.tick.wrapping_add(1).max(1);
                    self.drain_queue(&mut buf).await;
                    self.collect_overflow();
                    self.collect_lingering();
                    self.collect_due_retries(Instant::now());
                    let report = self.flush(FlushMode::Paced, None).await;
                    if report.persisted == 0 && report.failed == 0 {
                        self.scratch.release();
                    }
                    self.write_history(FlushMode::Paced).await;
                    // Bounded work: the fronts of the idle lists, a few hundred per shard at most.
                    self.tracker.registry.expire(EXPIRE_PER_SHARD_PER_TICK);
                    self.gauges();
                }
                // Senders wake the worker only when the queue is half full: between ticks there
                // is nothing to do with a queued session (writes happen on ticks or once
                // `max_batch` sessions wait), so a wake-up per enqueue would be wasted work.
                () = self.tracker.wake.notified() => {
                    self.drain_queue(&mut buf).await;
                    if self.pending.len() >= config.max_batch {
                        self.flush(FlushMode::Paced, None).await;
                    }
                }
            }
        }
    }

    /// Forgets a session that ended, in memory and in the store. Runs between two writes, so no
    /// write of the session is in flight: none can bring it back afterwards.
    async fn forget(&mut self, session: &SessionId) -> Result<(), StoreError> {
        let positions = self.tracker.registry.forget_session(session);
        let timeout = self.tracker.config.store_timeout;
        let result =
            match tokio::time::timeout(timeout, self.tracker.store.delete_session(session)).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::transient(format!(
                    "delete_session took longer than {timeout:?}"
                ))),
            };
        match &result {
            Ok(()) => {
                self.tracker
                    .labels()
                    .counter(m::SESSIONS_DELETED)
                    .increment(1);
                tracing::debug!(%session, positions, "session forgotten");
            }
            Err(error) => {
                self.tracker.labels().counter(m::DELETE_ERRORS).increment(1);
                tracing::warn!(%session, %error, "could not delete a session from the store");
            }
        }
        result
    }

    /// Every handle, layer and stream is gone: writes what is left, then the worker stops.
    async fn orphaned(&mut self) {
        let deadline = Instant::now() + self.tracker.config.store_timeout;
        let report = self.shutdown(deadline).await;
        if !report.unpersisted.is_empty() {
            tracing::error!(
                sessions = report.unpersisted.len(),
                "tracking dropped without shutdown: last event ids not persisted"
            );
        }
    }

    fn gauges(&self) {
        let queued = self.rx.len();
        self.tracker
            .labels()
            .gauge(m::QUEUE_DEPTH)
            .set(queued as f64);
        self.tracker
            .labels()
            .gauge(m::PENDING_SESSIONS)
            .set((self.pending.len() + self.retries.len()) as f64);
        self.tracker
            .labels()
            .gauge(m::TRACKED_SESSIONS)
            .set(self.tracker.registry.len() as f64);
    }

    /// The sessions kept since the last tick join the pending ones: written if their streams
    /// recorded more, released (no longer queued) if not.
    fn collect_lingering(&mut self) {
        self.pending
            .extend(self.lingering.drain(..).map(|slot| (slot, 0)));
    }

    fn collect_overflow(&mut self) {
        let mut parked = Vec::new();
        self.tracker.take_overflow(&mut parked);
        self.pending
            .extend(parked.into_iter().map(|slot| (slot, 0)));
    }

    fn collect_due_retries(&mut self, now: Instant) {
        while let Some(retry) = self.retries.pop_due(now) {
            self.pending.push((retry.slot, retry.attempts));
        }
    }

    /// Takes everything already queued, in `recv_many` batches, without waiting for more.
    async fn drain_queue(&mut self, buf: &mut Vec<Arc<Slot>>) {
        while !self.rx.is_empty() {
            // Returns at once: messages are available.
            if self.rx.recv_many(buf, self.tracker.config.recv_batch).await == 0 {
                break;
            }
            self.pending.extend(buf.drain(..).map(|slot| (slot, 0)));
        }
    }

    /// An explicit flush: everything queued, parked or retrying is tried now, once.
    async fn flush_now(&mut self) -> FlushReport {
        self.drain_queue(&mut Vec::new()).await;
        self.collect_overflow();
        self.collect_lingering();
        while let Some(retry) = self.retries.pop() {
            self.pending.push((retry.slot, retry.attempts));
        }
        let report = self.flush(FlushMode::Forced, None).await;
        self.scratch.release();
        self.write_history(FlushMode::Forced).await;
        self.gauges();
        report
    }

    /// Writes what waits for the history store (replay's second tier), if there is one:
    /// events in batches, each stream's end after its events, and, three times per lease, the
    /// leases of the streams produced here. What a failure leaves waits for the next tick,
    /// first in line. Paced writes respect the history store's breaker; an explicit flush and
    /// the shutdown try anyway, as they do for sessions.
    async fn write_history(&mut self, mode: FlushMode) {
        let Some(outbox) = self.tracker.config.history.clone() else {
            return;
        };
        let timeout = self.tracker.config.store_timeout;
        let bounded = |what: &'static str, result: Result<Result<(), StoreError>, _>| {
            result.unwrap_or_else(|_| {
                Err(StoreError::transient(format!(
                    "{what} took longer than {timeout:?}"
                )))
            })
        };
        let now = Instant::now();
        if mode == FlushMode::Paced && !self.history_breaker.allows(now) {
            return; // what waits stays in the outbox (bounded) until the cool-down is over
        }
        if self
            .history_touched
            .is_none_or(|at| now.duration_since(at) >= outbox.store.lease() / 3)
        {
            self.history_touched = Some(now);
            let live = outbox.live();
            if !live.is_empty() {
                let touched = tokio::time::timeout(timeout, outbox.store.touch(&live)).await;
                if let Err(error) = bounded("touch", touched) {
                    tracing::warn!(%error, "history store lease renewal failed: will retry");
                    self.history_touched = None;
                    self.history_breaker.failed(now, &error);
                    return;
                }
            }
        }
        let mut items = outbox.take().into_iter().peekable();
        let mut events = Vec::new();
        while items.peek().is_some() || !events.is_empty() {
            let finish = match items.next() {
                Some(Outgoing::Event(event)) => {
                    events.push(event);
                    continue;
                }
                Some(Outgoing::Finish(lease, end)) => Some((lease, end)),
                None => None,
            };
            let mut written = Ok(());
            if !events.is_empty() {
                let appended = tokio::time::timeout(timeout, outbox.store.append(&events)).await;
                written = match appended {
                    Ok(Ok(report)) => {
                        if report.fenced > 0 {
                            self.tracker
                                .labels()
                                .counter(m::HISTORY_FENCED)
                                .increment(report.fenced as u64);
                        }
                        Ok(())
                    }
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(StoreError::transient(format!(
                        "append took longer than {timeout:?}"
                    ))),
                };
            }
            if written.is_ok()
                && let Some((lease, end)) = &finish
            {
                let finished =
                    outbox
                        .store
                        .finish(&lease.session, &lease.stream, lease.writer, *end);
                written = bounded("finish", tokio::time::timeout(timeout, finished).await);
            }
            if let Err(error) = written {
                tracing::warn!(%error, "history store write failed: will retry");
                self.history_breaker.failed(Instant::now(), &error);
                let mut left: Vec<Outgoing> = events.drain(..).map(Outgoing::Event).collect();
                left.extend(finish.map(|(lease, end)| Outgoing::Finish(lease, end)));
                left.extend(items);
                outbox.push_front(left);
                return;
            }
            self.history_breaker.succeeded();
            self.tracker
                .labels()
                .counter(m::HISTORY_STORED)
                .increment(events.len() as u64);
            events.clear();
        }
    }

    /// Writes pending sessions in batches of at most `max_batch`, stopping at `deadline`.
    async fn flush(&mut self, mode: FlushMode, deadline: Option<Instant>) -> FlushReport {
        let mut report = FlushReport::default();
        // Slots that got new events while being written go to the next flush, not this one.
        let mut again = Vec::new();
        while !self.pending.is_empty() {
            let now = Instant::now();
            if mode == FlushMode::Paced && !self.breaker.allows(now) {
                break;
            }
            let mut timeout = self.tracker.config.store_timeout;
            if let Some(deadline) = deadline {
                timeout = timeout.min(deadline.saturating_duration_since(now));
                if timeout.is_zero() {
                    break;
                }
            }
            let take = self.pending.len().min(self.tracker.config.max_batch);
            let mut entries = std::mem::take(&mut self.scratch.entries);
            entries.extend(self.pending.drain(..take));
            let (persisted, failed) = self
                .write_batch(&mut entries, &mut again, mode, timeout)
                .await;
            self.scratch.entries = entries;
            report.persisted += persisted;
            report.failed += failed;
        }
        self.pending.append(&mut again);
        report
    }

    /// Writes one batch, taking `entries` (left empty). Returns (written, failed) session
    /// counts.
    async fn write_batch(
        &mut self,
        entries: &mut Vec<(Arc<Slot>, u32)>,
        again: &mut Vec<(Arc<Slot>, u32)>,
        mode: FlushMode,
        timeout: std::time::Duration,
    ) -> (usize, usize) {
        let now = crate::clock::nanos_of(SystemTime::now());
        let mut slots = std::mem::take(&mut self.scratch.slots);
        let mut updates = std::mem::take(&mut self.scratch.updates);
        let mut seqs = std::mem::take(&mut self.scratch.seqs);
        let mut events = 0u64;
        // Each slot was last written by its stream's core, so each snapshot starts with cache
        // misses; touched all at once first, they are fetched in parallel, not one by one.
        for (slot, _) in entries.iter() {
            slot.warm();
        }
        for (slot, attempts) in entries.drain(..) {
            match slot.snapshot(now) {
                Some(snap) => {
                    events += snap.events;
                    updates.push(snap.update);
                    seqs.push(snap.seq);
                    slots.push((slot, attempts));
                }
                // Already written (by an earlier batch): release it.
                None => {
                    if slot.mark_persisted(0) {
                        again.push((slot, 0));
                    } else {
                        self.tracker.registry.refresh(&slot);
                    }
                }
            }
        }
        if updates.is_empty() {
            self.scratch.put_back(slots, updates, seqs);
            return (0, 0);
        }
        let n = updates.len();
        let span = tracing::debug_span!("sse_tracking.flush", batch = n, events);
        let started = Instant::now();
        let result = async {
            match tokio::time::timeout(timeout, self.tracker.store.save_batch(&updates)).await {
                Ok(result) => result,
                Err(_) => Err(crate::store::StoreError::transient(format!(
                    "save_batch took longer than {timeout:?}"
                ))),
            }
        }
        .instrument(span.clone())
        .await;
        self.tracker
            .labels()
            .histogram(m::FLUSH_DURATION)
            .record(started.elapsed().as_secs_f64());
        self.tracker
            .labels()
            .histogram(m::BATCH_SIZE)
            .record(n as f64);
        let written = match result {
            Ok(()) => {
                self.tracker
                    .labels()
                    .counter(m::PERSISTED)
                    .increment(n as u64);
                self.tracker.labels().counter(m::EVENTS).increment(events);
                self.tracker
                    .labels()
                    .histogram(m::COALESCE_RATIO)
                    .record(events as f64 / n as f64);
                self.breaker.succeeded();
                // Only paced writes keep sessions (see `lingering`).
                let tick = (mode == FlushMode::Paced).then_some(self.tick);
                for ((slot, _), &seq) in slots.drain(..).zip(&seqs) {
                    match slot.mark_written(seq, tick) {
                        Written::Dirty => again.push((slot, 0)),
                        Written::Hot => self.lingering.push(slot),
                        // Clean: idle if no stream holds it, and then free to forget.
                        Written::Clean => self.tracker.registry.refresh(&slot),
                    }
                }
                (n, 0)
            }
            Err(error) => {
                self.tracker.labels().counter(m::FAILURES).increment(1);
                let _enter = span.enter();
                self.on_failure(&error, slots.drain(..), mode);
                (0, n)
            }
        };
        self.scratch.put_back(slots, updates, seqs);
        written
    }

    fn on_failure(
        &mut self,
        error: &crate::store::StoreError,
        slots: impl Iterator<Item = (Arc<Slot>, u32)>,
        mode: FlushMode,
    ) {
        let tracker = self.tracker.clone();
        let config = &tracker.config;
        let now = Instant::now();
        self.breaker.failed(now, error);
        let mut retried = 0u64;
        let mut exhausted = 0u64;
        for (slot, attempts) in slots {
            let attempts = attempts.saturating_add(1);
            let fast = error.is_transient() && attempts <= config.max_attempts;
            let due = if fast {
                retried += 1;
                let rand = self.next_rand();
                now + backoff(attempts, config.base_backoff, config.max_backoff, rand)
            } else {
                // Out of fast retries (or a permanent error): kept, tried after the cool-down.
                // The attempt count stays capped, so these never go back to fast retries.
                if attempts == config.max_attempts.saturating_add(1) || !error.is_transient() {
                    exhausted += 1;
                }
                now + config.breaker_cooldown
            };
            let attempts = attempts.min(config.max_attempts.saturating_add(1));
            let due = if mode == FlushMode::Forced {
                due.min(now + config.base_backoff)
            } else {
                due
            };
            self.retries.push(due, slot, attempts);
        }
        self.tracker.labels().counter(m::RETRIES).increment(retried);
        if exhausted > 0 {
            self.tracker
                .labels()
                .counter(m::RETRY_EXHAUSTED)
                .increment(exhausted);
            tracing::error!(
                sessions = exhausted,
                %error,
                "store write retries exhausted: last event ids kept and retried after the cool-down"
            );
        } else {
            tracing::warn!(sessions = retried, %error, "store write failed: will retry");
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rand_counter += 1;
        self.rand.hash_one(self.rand_counter)
    }

    /// Closes intake for good, then writes everything left until `deadline`.
    async fn shutdown(&mut self, deadline: Instant) -> ShutdownReport {
        let span = tracing::info_span!("sse_tracking.shutdown");
        async {
            self.tracker.close();
            // Closing the receiver refuses new messages even while sender clones live; what
            // was queued before stays readable.
            self.rx.close();
            while let Some(slot) = self.rx.recv().await {
                self.pending.push((slot, 0));
            }
            self.collect_overflow();
            self.collect_lingering();
            while let Some(retry) = self.retries.pop() {
                self.pending.push((retry.slot, retry.attempts));
            }
            self.write_history(FlushMode::Forced).await;
            let mut persisted = 0;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                if !self.pending.is_empty() {
                    persisted += self
                        .flush(FlushMode::Forced, Some(deadline))
                        .await
                        .persisted;
                }
                // Newer events that arrived during the writes, and failed writes after backoff.
                self.collect_overflow();
                let next = if !self.pending.is_empty() {
                    // Sessions that got events while being written (streams may still run):
                    // write them a flush interval later rather than spin.
                    Instant::now() + self.tracker.config.flush_interval
                } else if let Some(due) = self.retries.next_due() {
                    due
                } else {
                    break;
                };
                tokio::time::sleep_until(next.min(deadline)).await;
                self.collect_due_retries(Instant::now());
            }
            let mut unpersisted: Vec<_> = self
                .pending
                .drain(..)
                .map(|(slot, _)| slot)
                .chain(std::iter::from_fn(|| self.retries.pop().map(|r| r.slot)))
                .filter(|slot| slot.is_dirty())
                .map(|slot| (slot.session().clone(), slot.stream().clone()))
                .collect();
            unpersisted.sort();
            unpersisted.dedup();
            if unpersisted.is_empty() {
                tracing::info!(persisted, "tracking shut down: everything persisted");
            } else {
                tracing::error!(
                    persisted,
                    unpersisted = unpersisted.len(),
                    "tracking shut down: some last event ids could not be persisted"
                );
            }
            self.gauges();
            ShutdownReport {
                persisted,
                unpersisted,
            }
        }
        .instrument(span)
        .await
    }
}
