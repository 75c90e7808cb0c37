//! [`HistoryStore`]: where stream histories go beyond this process's memory, so that a
//! reconnect that this process cannot answer from memory (after a restart, or on another
//! replica) still finds the events it missed. [`MemoryHistoryStore`] is the reference
//! implementation, and what replicas in one process (tests) share.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use crate::{
    SessionId, StreamKey,
    store::{EventId, StoreFuture},
};

/// One event of a stream's history, as a [`HistoryStore`] keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEvent {
    /// The session.
    pub session: SessionId,
    /// The session's stream.
    pub stream: StreamKey,
    /// The event's place in its stream: grows with every event, across processes and replicas
    /// (the wall-clock time it was kept, in nanoseconds, made strictly increasing per stream by
    /// its writer). Events are read back in this order.
    pub seq: u64,
    /// The ID the event's block set, if it set one (events are found by it). Held in place up
    /// to 38 bytes, so that keeping an event allocates nothing for its ID.
    pub id: Option<EventId>,
    /// The event's bytes, exactly as its client received them.
    pub bytes: Bytes,
    /// The writer that kept it: when its producer started (nanoseconds of wall-clock time).
    /// A stream has one writer at a time: the first write of a later writer takes it over, and
    /// from then on the store refuses the earlier one's events (fencing, so that a replica
    /// that lost a stream cannot append to it after another took it over).
    pub writer: u64,
}

/// How long a stream's writer holds it without writing: a stream still open whose writer has
/// neither appended nor [touched](HistoryStore::touch) it for this long reads as
/// [`StreamEnd::Cut`] (its writer is taken to be gone). The layer touches the streams it is
/// producing three times per lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long the crate's stores keep a stream nobody writes to: a day.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Streams a [`MemoryHistoryStore`] checks for expiry per append.
const EXPIRY_CHECKS: usize = 8;

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendReport {
    /// Events refused: their writer no longer owns their stream (another took it over).
    pub fenced: usize,
}

impl AppendReport {
    /// A report of `fenced` refused events.
    pub fn fenced(fenced: usize) -> Self {
        Self { fenced }
    }
}

/// A stream its writer is still producing (see [`HistoryStore::touch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterLease {
    /// The session.
    pub session: SessionId,
    /// The session's stream.
    pub stream: StreamKey,
    /// Its writer (see [`HistoryEvent::writer`]).
    pub writer: u64,
}

/// Whether a stream in a [`HistoryStore`] is still being produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// Events may still come (as far as the store knows): readers may wait for them.
    Open,
    /// Its upstream ended normally: the history holds the whole stream.
    Complete,
    /// It ended before its upstream did (its client and any grace were gone).
    Cut,
}

/// Where a stream's history holds an event: the stream, the event's `seq`, and whether the
/// stream is still being produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPosition {
    /// The stream.
    pub stream: StreamKey,
    /// The event's `seq`.
    pub seq: u64,
    /// Whether the stream is still being produced.
    pub end: StreamEnd,
}

/// Events of a stream read from a [`HistoryStore`], and whether more may come.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The events, in `seq` order.
    pub events: Vec<HistoryEvent>,
    /// Whether the stream is still being produced.
    pub end: StreamEnd,
}

/// Where a session's stream histories are kept beyond this process's memory: durable across
/// restarts, or shared by replicas.
///
/// The layer appends in batches, from its persistence worker, every event that its in-memory
/// histories keep, each stream's in `seq` order; it asks the store only when a reconnect's
/// `Last-Event-ID` is not in its memory. A store must only ever answer for the session asked
/// about, keep itself bounded, and keep each stream to one writer (see
/// [`HistoryEvent::writer`]): the conformance suite in `tests/history_conformance.rs` checks
/// all of this for every store of the crate.
///
/// The methods return boxed futures so that stores can be used behind `Arc<dyn HistoryStore>`.
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends a batch of events (each stream's in `seq` order). An event whose `seq` is not
    /// past its stream's newest is already there (a retried batch) and is skipped; an event of
    /// a writer older than its stream's is refused and counted in the report.
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the batch could not be written; the
    /// layer tries it again later (while its bounded outbox has room).
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, AppendReport>;

    /// Marks a stream as ended ([`StreamEnd::Complete`] or [`StreamEnd::Cut`]) by its writer
    /// (ignored if another writer took the stream over); appending to it again opens it again.
    /// The layer marks a stream after its last events.
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be written.
    fn finish<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        writer: u64,
        end: StreamEnd,
    ) -> StoreFuture<'a, ()>;

    /// Renews the lease of writers still producing their streams (those of other writers are
    /// left alone). See [`lease`](Self::lease).
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be written.
    fn touch<'a>(&'a self, leases: &'a [WriterLease]) -> StoreFuture<'a, ()>;

    /// How long a writer holds a stream without writing or touching it ([`DEFAULT_LEASE`]
    /// unless the store says otherwise).
    fn lease(&self) -> Duration {
        DEFAULT_LEASE
    }

    /// Where the newest event that set `id` is among the streams of `session`; `None` if in
    /// none.
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be read.
    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredPosition>>;

    /// Whether a writer is producing one of the session's streams now (an ID not found may
    /// still be on its way to the store).
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be read.
    fn is_producing<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, bool>;

    /// The events of a stream after `after` (a `seq`), in order, at most `limit` bytes of them
    /// (but at least one, if there is one), and whether more may come.
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be read.
    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage>;

    /// Waits, at most `timeout`, until the stream has events after `after` or has ended: the
    /// live tail of a stream produced elsewhere (another replica). Returns as soon as either
    /// holds; returning early is allowed (the layer reads, and waits again).
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be read.
    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        timeout: Duration,
    ) -> StoreFuture<'a, ()>;

    /// Forgets every stream history of a session (it ended).
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be written.
    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()>;
}

impl<S: HistoryStore + ?Sized> HistoryStore for Arc<S> {
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, AppendReport> {
        (**self).append(batch)
    }

    fn finish<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        writer: u64,
        end: StreamEnd,
    ) -> StoreFuture<'a, ()> {
        (**self).finish(session, stream, writer, end)
    }

    fn touch<'a>(&'a self, leases: &'a [WriterLease]) -> StoreFuture<'a, ()> {
        (**self).touch(leases)
    }

    fn lease(&self) -> Duration {
        (**self).lease()
    }

    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredPosition>> {
        (**self).locate(session, id)
    }

    fn is_producing<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, bool> {
        (**self).is_producing(session)
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage> {
        (**self).read_after(session, stream, after, limit)
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        timeout: Duration,
    ) -> StoreFuture<'a, ()> {
        (**self).wait_after(session, stream, after, timeout)
    }

    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        (**self).purge_session(session)
    }
}

/// A [`HistoryStore`] in this process's memory, bounded by events per stream and by bytes in
/// all: the oldest events of a stream go first, and at the byte cap the stream being appended
/// to gives up its oldest events (keeping its newest). Cloning shares it: layers (replicas in one
/// process, as tests run them) that share one see each other's histories.
///
/// ```
/// use tower_sse_tracking::history::{MemoryHistoryStore, ReplayConfig};
///
/// let shared = MemoryHistoryStore::with_limits(1024, 64 << 20);
/// let replay = ReplayConfig::default().store(shared.clone());
/// ```
#[derive(Clone, Debug)]
pub struct MemoryHistoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_events: usize,
    max_bytes: usize,
    max_streams: usize,
    lease: Duration,
    idle_ttl: Duration,
    state: Mutex<State>,
    /// Wakes the readers waiting for a stream's tail (any stream: they check their own).
    changed: tokio::sync::Notify,
}

/// Keyed by foldhash (randomly seeded per process), as `MemoryStore` is: keys are client
/// input, and SipHash, looked up a few times per appended event, was a fifth of an event's
/// way through the layer to this store.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
struct State {
    sessions: Map<SessionId, Map<StreamKey, Stored>>,
    bytes: usize,
    streams: usize,
    /// Every stream, checked for expiry a few per append (in turn: a stream not expired goes to
    /// the back).
    expiry: VecDeque<(SessionId, StreamKey)>,
}

impl State {
    /// Removes a stream; returns whether it was there.
    fn remove(&mut self, session: &SessionId, stream: &StreamKey) -> bool {
        let Some(streams) = self.sessions.get_mut(session) else {
            return false;
        };
        let Some(stored) = streams.remove(stream) else {
            return false;
        };
        if streams.is_empty() {
            self.sessions.remove(session);
        }
        self.bytes -= stored.events.iter().map(|e| e.bytes.len()).sum::<usize>();
        self.streams -= 1;
        true
    }

    /// Checks a few streams for expiry, oldest checked first.
    fn expire(&mut self, ttl: Duration) {
        for _ in 0..EXPIRY_CHECKS.min(self.expiry.len()) {
            let Some((session, stream)) = self.expiry.pop_front() else {
                return;
            };
            let expired = match self.sessions.get(&session).and_then(|s| s.get(&stream)) {
                None => continue,
                Some(stored) => stored.touched.elapsed() >= ttl,
            };
            if expired {
                self.remove(&session, &stream);
            } else {
                self.expiry.push_back((session, stream));
            }
        }
    }
}

/// One stream's events, its writer, and whether it is still being produced.
#[derive(Debug)]
struct Stored {
    events: VecDeque<HistoryEvent>,
    end: StreamEnd,
    writer: u64,
    /// When its writer last appended or touched it.
    touched: Instant,
}

impl Stored {
    fn new(writer: u64) -> Self {
        Self {
            events: VecDeque::new(),
            end: StreamEnd::Open,
            writer,
            touched: Instant::now(),
        }
    }

    /// Its end as readers see it: open past the lease reads as cut (its writer is gone).
    fn end(&self, lease: Duration) -> StreamEnd {
        match self.end {
            StreamEnd::Open if self.touched.elapsed() >= lease => StreamEnd::Cut,
            end => end,
        }
    }
}

impl Default for MemoryHistoryStore {
    fn default() -> Self {
        Self::with_limits(1024, 64 << 20)
    }
}

impl MemoryHistoryStore {
    /// A store that keeps at most `max_events` events per stream and `max_bytes` of events in
    /// all (1,024 and 64 MiB by default), in at most 100,000 streams (beyond, the events of new
    /// streams are not kept).
    pub fn with_limits(max_events: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_events: max_events.max(1),
                max_bytes,
                max_streams: 100_000,
                lease: DEFAULT_LEASE,
                idle_ttl: DEFAULT_HISTORY_TTL,
                state: Mutex::default(),
                changed: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Sets how long a writer holds a stream without writing ([`DEFAULT_LEASE`]).
    ///
    /// # Panics
    ///
    /// If the store was cloned already (the setting is shared by its clones).
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set the lease before cloning the store")
            .lease = lease;
        self
    }

    /// Sets how long a stream nobody writes to is kept ([`DEFAULT_HISTORY_TTL`]).
    ///
    /// # Panics
    ///
    /// If the store was cloned already (the setting is shared by its clones).
    #[must_use]
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("set the TTL before cloning the store")
            .idle_ttl = ttl;
        self
    }

    /// Bytes of events held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream, unless it expired (then it is removed).
    fn stored<'s>(
        &self,
        st: &'s mut State,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Option<&'s mut Stored> {
        let expired =
            st.sessions.get(session)?.get(stream)?.touched.elapsed() >= self.inner.idle_ttl;
        if expired {
            st.remove(session, stream);
            return None;
        }
        st.sessions.get_mut(session)?.get_mut(stream)
    }

    fn apply(&self, batch: &[HistoryEvent]) -> AppendReport {
        let mut report = AppendReport::default();
        let mut st = self.lock();
        st.expire(self.inner.idle_ttl);
        for event in batch {
            let known = self
                .stored(&mut st, &event.session, &event.stream)
                .is_some();
            let state = &mut *st;
            if !known {
                if state.streams >= self.inner.max_streams {
                    continue;
                }
                state.streams += 1;
                state
                    .expiry
                    .push_back((event.session.clone(), event.stream.clone()));
            }
            let stored = state
                .sessions
                .entry(event.session.clone())
                .or_default()
                .entry(event.stream.clone())
                .or_insert_with(|| Stored::new(event.writer));
            if event.writer < stored.writer {
                report.fenced += 1;
                continue;
            }
            if stored
                .events
                .back()
                .is_some_and(|last| last.seq >= event.seq)
            {
                continue; // already there (a retried batch)
            }
            stored.writer = event.writer;
            stored.end = StreamEnd::Open;
            stored.touched = Instant::now();
            let events = &mut stored.events;
            state.bytes += event.bytes.len();
            events.push_back(event.clone());
            // Per stream: the oldest events go; at the byte cap, this stream's oldest go too
            // (but the event just appended stays).
            while events.len() > self.inner.max_events
                || (state.bytes > self.inner.max_bytes && events.len() > 1)
            {
                state.bytes -= events.pop_front().map_or(0, |e| e.bytes.len());
            }
        }
        drop(st);
        self.inner.changed.notify_waiters();
        report
    }

    /// Whether a stream has events after `after`, or has ended.
    fn ready(&self, session: &SessionId, stream: &StreamKey, after: u64) -> bool {
        let mut st = self.lock();
        self.stored(&mut st, session, stream).is_none_or(|s| {
            s.end(self.inner.lease) != StreamEnd::Open
                || s.events.back().is_some_and(|e| e.seq > after)
        })
    }

    /// Removes the session's expired streams.
    fn expire_session(&self, st: &mut State, session: &SessionId) {
        let expired: Vec<StreamKey> = st
            .sessions
            .get(session)
            .into_iter()
            .flatten()
            .filter(|(_, s)| s.touched.elapsed() >= self.inner.idle_ttl)
            .map(|(k, _)| k.clone())
            .collect();
        for stream in expired {
            st.remove(session, &stream);
        }
    }
}

impl HistoryStore for MemoryHistoryStore {
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, AppendReport> {
        Box::pin(async move { Ok(self.apply(batch)) })
    }

    fn finish<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        writer: u64,
        end: StreamEnd,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut st = self.lock();
            if let Some(stored) = self
                .stored(&mut st, session, stream)
                .filter(|s| s.writer == writer)
            {
                stored.end = end;
            }
            drop(st);
            self.inner.changed.notify_waiters();
            Ok(())
        })
    }

    fn touch<'a>(&'a self, leases: &'a [WriterLease]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut st = self.lock();
            for lease in leases {
                if let Some(stored) = self
                    .stored(&mut st, &lease.session, &lease.stream)
                    .filter(|s| s.writer == lease.writer)
                {
                    stored.touched = Instant::now();
                }
            }
            Ok(())
        })
    }

    fn lease(&self) -> Duration {
        self.inner.lease
    }

    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredPosition>> {
        Box::pin(async move {
            let mut st = self.lock();
            self.expire_session(&mut st, session);
            let Some(streams) = st.sessions.get(session) else {
                return Ok(None);
            };
            Ok(streams
                .iter()
                .filter_map(|(stream, stored)| {
                    let event = stored.events.iter().rev().find(|e| {
                        e.id.as_ref()
                            .is_some_and(|held| held.as_bytes() == id.as_bytes())
                    })?;
                    Some(StoredPosition {
                        stream: stream.clone(),
                        seq: event.seq,
                        end: stored.end(self.inner.lease),
                    })
                })
                .max_by_key(|p| p.seq))
        })
    }

    fn is_producing<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut st = self.lock();
            self.expire_session(&mut st, session);
            Ok(st.sessions.get(session).is_some_and(|streams| {
                streams
                    .values()
                    .any(|s| s.end(self.inner.lease) == StreamEnd::Open)
            }))
        })
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage> {
        Box::pin(async move {
            let mut st = self.lock();
            let Some(stored) = self.stored(&mut st, session, stream) else {
                return Ok(HistoryPage {
                    events: Vec::new(),
                    end: StreamEnd::Cut,
                });
            };
            let mut events = Vec::new();
            let mut bytes = 0;
            for event in stored.events.iter().filter(|e| e.seq > after) {
                if !events.is_empty() && bytes + event.bytes.len() > limit {
                    break;
                }
                bytes += event.bytes.len();
                events.push(event.clone());
            }
            Ok(HistoryPage {
                events,
                end: stored.end(self.inner.lease),
            })
        })
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        timeout: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.ready(session, stream, after) {
                let _ = tokio::time::timeout(timeout, changed).await;
            }
            Ok(())
        })
    }

    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut st = self.lock();
            let streams: Vec<StreamKey> = st
                .sessions
                .get(session)
                .map(|s| s.keys().cloned().collect())
                .unwrap_or_default();
            for stream in streams {
                st.remove(session, &stream);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(session: &str, stream: &str, seq: u64, id: Option<&str>, len: usize) -> HistoryEvent {
        HistoryEvent {
            session: SessionId::new(session).unwrap(),
            stream: StreamKey::new(stream).unwrap(),
            seq,
            id: id.map(EventId::new),
            bytes: Bytes::from(vec![b'x'; len]),
            writer: 1,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn appends_are_found_read_in_order_bounded_and_purged() {
        let store = MemoryHistoryStore::with_limits(3, 1 << 20);
        let (a, b) = (SessionId::new("a").unwrap(), SessionId::new("b").unwrap());
        let key = StreamKey::new("/e").unwrap();
        let batch: Vec<_> = (1..=4)
            .map(|i| event("a", "/e", i * 10, Some(&i.to_string()), 5))
            .chain([event("b", "/e", 7, Some("1"), 5)])
            .collect();
        block_on(store.append(&batch)).unwrap();
        // A retried batch is not kept twice.
        block_on(store.append(&batch)).unwrap();
        // Three kept per stream: "1" is gone from a, but b has its own "1".
        assert_eq!(block_on(store.locate(&a, "1")).unwrap(), None);
        let at = |seq| {
            Some(StoredPosition {
                stream: key.clone(),
                seq,
                end: StreamEnd::Open,
            })
        };
        assert_eq!(block_on(store.locate(&a, "3")).unwrap(), at(30));
        assert_eq!(block_on(store.locate(&b, "1")).unwrap(), at(7));
        let page = block_on(store.read_after(&a, &key, 20, 1 << 20)).unwrap();
        let after: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(after, [30, 40]);
        assert_eq!(page.end, StreamEnd::Open);
        // A limit below one event still gives one.
        let page = block_on(store.read_after(&a, &key, 0, 1)).unwrap();
        assert_eq!(page.events.len(), 1);
        block_on(store.finish(&a, &key, 1, StreamEnd::Complete)).unwrap();
        assert_eq!(
            block_on(store.locate(&a, "3")).unwrap().unwrap().end,
            StreamEnd::Complete
        );
        assert_eq!(store.bytes(), 20);
        block_on(store.purge_session(&a)).unwrap();
        assert_eq!(block_on(store.locate(&a, "3")).unwrap(), None);
        assert_eq!(store.bytes(), 5);
    }

    #[test]
    fn the_byte_cap_holds_but_for_each_stream_s_newest_event() {
        let store = MemoryHistoryStore::with_limits(1000, 100);
        for i in 1..=50 {
            block_on(store.append(&[event("a", "/e", i, None, 10)])).unwrap();
            assert!(store.bytes() <= 100);
        }
        block_on(store.append(&[event("b", "/e", 1, None, 10)])).unwrap();
        assert!(store.bytes() <= 110, "{}", store.bytes());
    }

    #[test]
    fn a_wait_for_the_tail_ends_with_new_events_or_the_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryHistoryStore::default();
            let (a, key) = (SessionId::new("a").unwrap(), StreamKey::new("/e").unwrap());
            store.append(&[event("a", "/e", 1, None, 3)]).await.unwrap();
            // Nothing after 1 yet: the wait lasts until an append.
            let waiting = {
                let (store, a, key) = (store.clone(), a.clone(), key.clone());
                tokio::spawn(async move {
                    let start = tokio::time::Instant::now();
                    store
                        .wait_after(&a, &key, 1, Duration::from_secs(60))
                        .await
                        .unwrap();
                    start.elapsed()
                })
            };
            tokio::time::sleep(Duration::from_secs(5)).await;
            store.append(&[event("a", "/e", 2, None, 3)]).await.unwrap();
            let waited = waiting.await.unwrap();
            assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(60));
            // Ended: no wait at all.
            store.finish(&a, &key, 1, StreamEnd::Cut).await.unwrap();
            let start = tokio::time::Instant::now();
            store
                .wait_after(&a, &key, 2, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(start.elapsed(), Duration::ZERO);
            let page = store.read_after(&a, &key, 2, 100).await.unwrap();
            assert_eq!((page.events.len(), page.end), (0, StreamEnd::Cut));
        });
    }
}
