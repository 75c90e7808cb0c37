//! [`HistoryStore`]: where stream histories go beyond this process's memory, so that a
//! reconnect that this process cannot answer from memory (after a restart, or on another
//! replica) still finds the events it missed. [`MemoryHistoryStore`] is the reference
//! implementation, and what replicas in one process (tests) share.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use bytes::Bytes;

use crate::{SessionId, StreamKey, store::StoreFuture};

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
    /// The ID the event's block set, if it set one (events are found by it).
    pub id: Option<Arc<str>>,
    /// The event's bytes, exactly as its client received them.
    pub bytes: Bytes,
}

/// Where a session's stream histories are kept beyond this process's memory: durable across
/// restarts, or shared by replicas.
///
/// The layer appends in batches, from a task of its own, every event that its in-memory
/// histories keep, each stream's in `seq` order; it asks the store only when a reconnect's
/// `Last-Event-ID` is not in its memory. A store must only ever answer for the session asked
/// about, and keep itself bounded.
///
/// The methods return boxed futures so that stores can be used behind `Arc<dyn HistoryStore>`.
pub trait HistoryStore: Send + Sync + 'static {
    /// Appends a batch of events (each stream's in `seq` order).
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the batch could not be written; the
    /// layer tries it again later (while its bounded outbox has room).
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, ()>;

    /// The stream of `session` whose history holds the newest event that set `id`, and that
    /// event's `seq`; `None` if none does.
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be read.
    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(StreamKey, u64)>>;

    /// The events of a stream after `after` (a `seq`), in order, at most `limit` bytes of them
    /// (but at least one, if there is one).
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
    ) -> StoreFuture<'a, Vec<HistoryEvent>>;

    /// Forgets every stream history of a session (it ended).
    ///
    /// # Errors
    ///
    /// A [`StoreError`](crate::store::StoreError) when the store cannot be written.
    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()>;
}

impl<S: HistoryStore + ?Sized> HistoryStore for Arc<S> {
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, ()> {
        (**self).append(batch)
    }

    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(StreamKey, u64)>> {
        (**self).locate(session, id)
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<HistoryEvent>> {
        (**self).read_after(session, stream, after, limit)
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
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<SessionId, HashMap<StreamKey, VecDeque<HistoryEvent>>>,
    bytes: usize,
    streams: usize,
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
                state: Mutex::default(),
            }),
        }
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

    fn apply(&self, batch: &[HistoryEvent]) {
        let mut st = self.lock();
        for event in batch {
            let state = &mut *st;
            let known = state
                .sessions
                .get(&event.session)
                .is_some_and(|s| s.contains_key(&event.stream));
            if !known {
                if state.streams >= self.inner.max_streams {
                    continue;
                }
                state.streams += 1;
            }
            let events = state
                .sessions
                .entry(event.session.clone())
                .or_default()
                .entry(event.stream.clone())
                .or_default();
            if events.back().is_some_and(|last| last.seq >= event.seq) {
                continue; // already there (a retried batch)
            }
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
    }
}

impl HistoryStore for MemoryHistoryStore {
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.apply(batch);
            Ok(())
        })
    }

    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(StreamKey, u64)>> {
        Box::pin(async move {
            let st = self.lock();
            let Some(streams) = st.sessions.get(session) else {
                return Ok(None);
            };
            Ok(streams
                .iter()
                .filter_map(|(stream, events)| {
                    let event = events.iter().rev().find(|e| e.id.as_deref() == Some(id))?;
                    Some((stream.clone(), event.seq))
                })
                .max_by_key(|(_, seq)| *seq))
        })
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, Vec<HistoryEvent>> {
        Box::pin(async move {
            let st = self.lock();
            let Some(events) = st.sessions.get(session).and_then(|s| s.get(stream)) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            let mut bytes = 0;
            for event in events.iter().filter(|e| e.seq > after) {
                if !out.is_empty() && bytes + event.bytes.len() > limit {
                    break;
                }
                bytes += event.bytes.len();
                out.push(event.clone());
            }
            Ok(out)
        })
    }

    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut st = self.lock();
            if let Some(streams) = st.sessions.remove(session) {
                let freed: usize = streams
                    .values()
                    .flat_map(|events| events.iter().map(|e| e.bytes.len()))
                    .sum();
                st.bytes -= freed;
                st.streams -= streams.len();
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
            id: id.map(Arc::from),
            bytes: Bytes::from(vec![b'x'; len]),
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
        assert_eq!(
            block_on(store.locate(&a, "3")).unwrap(),
            Some((key.clone(), 30))
        );
        assert_eq!(
            block_on(store.locate(&b, "1")).unwrap(),
            Some((key.clone(), 7))
        );
        let after: Vec<u64> = block_on(store.read_after(&a, &key, 20, 1 << 20))
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(after, [30, 40]);
        // A limit below one event still gives one.
        assert_eq!(block_on(store.read_after(&a, &key, 0, 1)).unwrap().len(), 1);
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
}
