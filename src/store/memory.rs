use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use super::{LastEventId, SessionRecord, SessionStore, SessionUpdate, StoreFuture};
use crate::{SessionId, StreamKey, id_buf::IdBuf, lru::LinkedSlab};

/// The default store: a bounded map in this process's memory.
///
/// Cloning is cheap and clones share the same map. It forgets everything when the process ends
/// and cannot be shared by several replicas; it is meant for single-process deployments, tests
/// and examples. It holds one record per (session, stream). It is bounded, and every operation
/// costs O(1) whatever it holds (times the session's streams, which the layer bounds: see
/// [`max_streams_per_session`](crate::worker::WorkerConfig::max_streams_per_session)): a record idle for longer
/// than the TTL reads as absent and is removed (a few at every write, oldest first), and when
/// the map is full the least recently written record is evicted to make room (counted by
/// [`evictions`](Self::evictions)).
///
/// ```
/// use std::time::Duration;
/// use tower_sse_tracking::store::MemoryStore;
///
/// let store = MemoryStore::with_limits(10_000, Duration::from_secs(3600));
/// assert!(store.is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    max_records: usize,
    idle_ttl: Duration,
    state: Mutex<State>,
}

/// Keyed by foldhash (randomly seeded per process): keys are client input, so the hasher must
/// resist crafted collisions, and SipHash would dominate the cost of a write.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct State {
    /// Each session's first record; the others are chained from it (a session has few streams:
    /// a map per session would cost more memory than the records themselves).
    map: Map<SessionId, u32>,
    /// The records, all linked, least recently written first.
    records: LinkedSlab<Entry>,
    len: usize,
    evictions: u64,
}

struct Entry {
    session: SessionId,
    stream: StreamKey,
    record: Stored,
    /// The session's next record, or `NIL`.
    next: u32,
}

/// No record.
const NIL: u32 = u32::MAX;

/// A record as the map holds it: the ID in a buffer of its own that later writes reuse, so that
/// a write allocates nothing in steady state (an `Arc` per write, freed by whichever thread
/// writes next, left the allocator's arenas fragmented under load).
struct Stored {
    /// The ID (UTF-8: it came from a `&str`), in place when short; empty when cleared.
    id: IdBuf,
    version: u64,
    last_activity: SystemTime,
}

impl Stored {
    fn new(update: &SessionUpdate) -> Self {
        let mut stored = Self {
            id: IdBuf::default(),
            version: 0,
            last_activity: update.last_activity,
        };
        stored.set(update);
        stored
    }

    fn set(&mut self, update: &SessionUpdate) {
        self.version = update.version;
        self.id.set(update.last_event_id.as_bytes());
    }

    /// [`SessionRecord::apply`], in place.
    fn apply(&mut self, update: &SessionUpdate) {
        if update.version > self.version {
            self.set(update);
        }
        if update.last_activity > self.last_activity {
            self.last_activity = update.last_activity;
        }
    }

    fn record(&self) -> SessionRecord {
        SessionRecord {
            last_event_id: LastEventId::from(String::from_utf8_lossy(self.id.as_slice()).as_ref()),
            version: self.version,
            last_activity: self.last_activity,
        }
    }
}

impl State {
    /// The record of `session`'s `stream`. By the keys themselves, not their text: the worker
    /// writes with clones of the keys the store kept, which compare by pointer first.
    fn find(&self, session: &SessionId, stream: &StreamKey) -> Option<u32> {
        let mut ix = self.map.get(session).copied().unwrap_or(NIL);
        while let Some(entry) = self.records.get(ix) {
            if entry.stream == *stream {
                return Some(ix);
            }
            ix = entry.next;
        }
        None
    }

    /// The records of a session, first to last.
    fn chain(&self, session: &str) -> impl Iterator<Item = u32> + '_ {
        let mut ix = self.map.get(session).copied().unwrap_or(NIL);
        std::iter::from_fn(move || {
            let entry = self.records.get(ix)?;
            let here = ix;
            ix = entry.next;
            Some(here)
        })
    }

    fn remove(&mut self, ix: u32) {
        let Some(entry) = self.records.remove(ix) else {
            return;
        };
        self.len -= 1;
        let session = entry.session.as_str();
        match self.map.get(session).copied() {
            Some(head) if head == ix => {
                if entry.next == NIL {
                    self.map.remove(session);
                } else if let Some(head) = self.map.get_mut(session) {
                    *head = entry.next;
                }
            }
            Some(head) => {
                let mut prev = head;
                while let Some(e) = self.records.get_mut(prev) {
                    if e.next == ix {
                        e.next = entry.next;
                        break;
                    }
                    prev = e.next;
                }
            }
            None => {}
        }
    }
}

/// Default cap on the number of records (session, stream) kept.
const DEFAULT_MAX_RECORDS: usize = 100_000;

/// Default time after its last activity for which a record is kept: 24 hours.
const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Expired records removed from the front at every write, at most.
const EXPIRE_PER_WRITE: usize = 2;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_limits(DEFAULT_MAX_RECORDS, DEFAULT_IDLE_TTL)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_records", &self.inner.max_records)
            .field("idle_ttl", &self.inner.idle_ttl)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store with the default limits: 100 000 records (session, stream), each kept for
    /// 24 hours after its last activity.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps at most `max_records` records (session, stream; at least 1),
    /// each for `idle_ttl` after its last activity.
    pub fn with_limits(max_records: usize, idle_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_records: max_records.max(1),
                idle_ttl,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The number of records (session, stream) held, expired ones included until they are next
    /// swept.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many records were evicted before their TTL to respect the cap.
    pub fn evictions(&self) -> u64 {
        self.lock().evictions
    }

    /// A copy of every live record, sorted by session and stream key.
    pub fn snapshot(&self) -> Vec<(SessionId, StreamKey, SessionRecord)> {
        let cutoff = self.cutoff();
        let state = self.lock();
        let mut all: Vec<_> = state
            .map
            .keys()
            .flat_map(|session| state.chain(session.as_str()))
            .filter_map(|ix| state.records.get(ix))
            .filter(|e| !Self::expired(&e.record, cutoff))
            .map(|e| (e.session.clone(), e.stream.clone(), e.record.record()))
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }

    /// Reads a stream's record synchronously; see [`SessionStore::load`].
    pub fn get(&self, session: &SessionId, stream: &StreamKey) -> Option<SessionRecord> {
        let cutoff = self.cutoff();
        let mut state = self.lock();
        let ix = state.find(session, stream)?;
        let entry = state.records.get(ix)?;
        if Self::expired(&entry.record, cutoff) {
            state.remove(ix);
            return None;
        }
        Some(entry.record.record())
    }

    /// The stream's last event ID: `None` when the store holds none for it (or a cleared one).
    ///
    /// ```
    /// use tower_sse_tracking::{SessionId, StreamKey, store::MemoryStore};
    ///
    /// let store = MemoryStore::new();
    /// let (session, stream) = (SessionId::new("s1").unwrap(), StreamKey::new("/events").unwrap());
    /// assert_eq!(store.last_event_id(&session, &stream), None);
    /// ```
    pub fn last_event_id(&self, session: &SessionId, stream: &StreamKey) -> Option<String> {
        self.get(session, stream)?
            .last_event_id
            .as_str()
            .map(str::to_owned)
    }

    /// Deletes every record of a session synchronously; see [`SessionStore::delete_session`].
    /// Returns how many records it had.
    pub fn delete(&self, session: &SessionId) -> usize {
        let mut state = self.lock();
        let Some(mut ix) = state.map.remove(session.as_str()) else {
            return 0;
        };
        let mut removed = 0;
        while let Some(entry) = state.records.remove(ix) {
            state.len -= 1;
            removed += 1;
            ix = entry.next;
        }
        removed
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The map stays consistent even if a holder panicked: every write is a single insert.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records last written before this have been idle longer than the TTL (`None`: none can
    /// have been, this close to the clock's origin).
    fn cutoff(&self) -> Option<SystemTime> {
        SystemTime::now().checked_sub(self.inner.idle_ttl)
    }

    /// Whether a record has been idle longer than the TTL: one comparison, the subtraction
    /// made once per call in `cutoff`.
    fn expired(record: &Stored, cutoff: Option<SystemTime>) -> bool {
        cutoff.is_some_and(|cutoff| record.last_activity < cutoff)
    }

    fn apply(&self, batch: &[SessionUpdate]) {
        let cutoff = self.cutoff();
        let mut guard = self.lock();
        let state = &mut *guard;
        for update in batch {
            self.expire_front(state, cutoff, EXPIRE_PER_WRITE);
            if let Some(ix) = state.find(&update.session, &update.stream)
                && let Some(entry) = state.records.get_mut(ix)
            {
                if Self::expired(&entry.record, cutoff) {
                    entry.record = Stored::new(update);
                } else {
                    entry.record.apply(update);
                }
                state.records.push_back(ix);
                continue;
            }
            if state.len >= self.inner.max_records {
                // Full: the least recently written record makes room.
                if let Some(front) = state.records.front() {
                    state.remove(front);
                    state.evictions += 1;
                    tracing::trace!("memory store full: evicted the least recently written record");
                }
            }
            let next = state
                .map
                .get(update.session.as_str())
                .copied()
                .unwrap_or(NIL);
            let ix = state.records.insert(Entry {
                session: update.session.clone(),
                stream: update.stream.clone(),
                record: Stored::new(update),
                next,
            });
            state.records.push_back(ix);
            state.len += 1;
            state.map.insert(update.session.clone(), ix);
        }
    }

    /// Removes up to `max` expired records from the front (the least recently written).
    fn expire_front(&self, state: &mut State, cutoff: Option<SystemTime>, max: usize) {
        for _ in 0..max {
            let Some(front) = state.records.front() else {
                return;
            };
            match state.records.get(front) {
                Some(entry) if Self::expired(&entry.record, cutoff) => state.remove(front),
                _ => return,
            }
        }
    }
}

impl SessionStore for MemoryStore {
    // The work happens when the future is polled, not when it is made, so that a timeout or a
    // cancelled future around a call means what it says.
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.apply(batch);
            Ok(())
        })
    }

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(async move { Ok(self.get(session, stream)) })
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.delete(session);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LastEventId;

    fn update(session: &str, id: &str, version: u64, at: SystemTime) -> SessionUpdate {
        on(session, "/e", id, version, at)
    }

    fn on(session: &str, stream: &str, id: &str, version: u64, at: SystemTime) -> SessionUpdate {
        SessionUpdate {
            session: SessionId::new(session).unwrap(),
            stream: StreamKey::new(stream).unwrap(),
            last_event_id: LastEventId::from(id),
            version,
            last_activity: at,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn older_version_never_overwrites_newer() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        let later = now + Duration::from_secs(1);
        block_on(store.save_batch(&[update("a", "3", 3, now)])).unwrap();
        block_on(store.save_batch(&[update("a", "2", 2, later)])).unwrap();
        let r = store
            .get(
                &SessionId::new("a").unwrap(),
                &StreamKey::new("/e").unwrap(),
            )
            .unwrap();
        assert_eq!(r.last_event_id.as_str(), Some("3"));
        assert_eq!(r.version, 3);
        assert_eq!(r.last_activity, later, "activity keeps the later time");
    }

    #[test]
    fn empty_id_is_stored_as_cleared() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        block_on(store.save_batch(&[update("a", "1", 1, now), update("b", "", 1, now)])).unwrap();
        block_on(store.save_batch(&[update("a", "", 2, now)])).unwrap();
        for key in ["a", "b"] {
            let r = store
                .get(
                    &SessionId::new(key).unwrap(),
                    &StreamKey::new("/e").unwrap(),
                )
                .unwrap();
            assert_eq!(r.last_event_id, LastEventId::Cleared);
        }
    }

    #[test]
    fn expired_sessions_read_as_absent() {
        let store = MemoryStore::with_limits(10, Duration::from_secs(60));
        let old = SystemTime::now() - Duration::from_secs(61);
        block_on(store.save_batch(&[update("a", "1", 1, old)])).unwrap();
        assert_eq!(store.len(), 1);
        assert!(
            store
                .get(
                    &SessionId::new("a").unwrap(),
                    &StreamKey::new("/e").unwrap()
                )
                .is_none()
        );
        assert!(store.is_empty());
    }

    #[test]
    fn a_write_happens_when_its_future_runs_not_when_it_is_made() {
        let store = MemoryStore::new();
        let batch = [update("a", "1", 1, SystemTime::now())];
        drop(store.save_batch(&batch));
        assert!(store.is_empty(), "a dropped future wrote nothing");
        block_on(store.save_batch(&batch)).unwrap();
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn stays_within_max_sessions() {
        let store = MemoryStore::with_limits(64, DEFAULT_IDLE_TTL);
        let start = SystemTime::now();
        for i in 0..1000u64 {
            let at = start + Duration::from_millis(i);
            block_on(store.save_batch(&[update(&format!("s{i}"), "1", 1, at)])).unwrap();
            assert!(store.len() <= 64);
        }
        // The most recently active sessions survive.
        assert!(
            store
                .get(
                    &SessionId::new("s999").unwrap(),
                    &StreamKey::new("/e").unwrap()
                )
                .is_some()
        );
        assert!(
            store
                .get(
                    &SessionId::new("s0").unwrap(),
                    &StreamKey::new("/e").unwrap()
                )
                .is_none()
        );
        assert_eq!(store.evictions(), 1000 - store.len() as u64);
    }

    #[test]
    fn streams_of_a_session_are_kept_apart_and_deleted_together() {
        let store = MemoryStore::new();
        let now = SystemTime::now();
        block_on(store.save_batch(&[
            on("a", "/events", "5", 1, now),
            on("a", "/chat", "c9", 1, now),
            on("b", "/events", "7", 1, now),
        ]))
        .unwrap();
        let (a, b) = (SessionId::new("a").unwrap(), SessionId::new("b").unwrap());
        let key = |k: &str| StreamKey::new(k).unwrap();
        assert_eq!(
            store.last_event_id(&a, &key("/events")).as_deref(),
            Some("5")
        );
        assert_eq!(
            store.last_event_id(&a, &key("/chat")).as_deref(),
            Some("c9")
        );
        assert_eq!(store.last_event_id(&a, &key("/other")), None);
        assert_eq!(store.len(), 3);
        assert_eq!(store.delete(&a), 2);
        assert_eq!(store.last_event_id(&a, &key("/events")), None);
        assert_eq!(
            store.last_event_id(&b, &key("/events")).as_deref(),
            Some("7")
        );
        assert_eq!(store.len(), 1);
        assert_eq!(store.delete(&a), 0);
        // The session comes back with new writes.
        block_on(store.save_batch(&[on("a", "/chat", "c10", 2, now)])).unwrap();
        assert_eq!(store.snapshot().len(), 2);
    }
}
