use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use super::{SessionRecord, SessionStore, SessionUpdate, StoreFuture};
use crate::{SessionId, lru::LinkedSlab};

/// The default store: a bounded map in this process's memory.
///
/// Cloning is cheap and clones share the same map. It forgets everything when the process ends
/// and cannot be shared by several replicas; it is meant for single-process deployments, tests
/// and examples. It is bounded, and every operation costs O(1) whatever it holds: a session idle
/// for longer than the TTL reads as absent and is removed (a few at every write, oldest first),
/// and when the map is full the least recently written session is evicted to make room (counted
/// by [`evictions`](Self::evictions)).
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
    max_sessions: usize,
    idle_ttl: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Keyed by foldhash (randomly seeded per process): keys are client input, so the hasher
    /// must resist crafted collisions, and SipHash would dominate the cost of a write.
    map: HashMap<SessionId, u32, foldhash::fast::RandomState>,
    /// The records, all linked, least recently written first.
    records: LinkedSlab<(SessionId, SessionRecord)>,
    evictions: u64,
}

/// Default cap on the number of sessions kept.
const DEFAULT_MAX_SESSIONS: usize = 100_000;

/// Default time after its last activity for which a session is kept: 24 hours.
const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Expired records removed from the front at every write, at most.
const EXPIRE_PER_WRITE: usize = 2;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_limits(DEFAULT_MAX_SESSIONS, DEFAULT_IDLE_TTL)
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_sessions", &self.inner.max_sessions)
            .field("idle_ttl", &self.inner.idle_ttl)
            .field("len", &self.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store with the default limits: 100 000 sessions, each kept for 24 hours after
    /// its last activity.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps at most `max_sessions` sessions (at least 1), each for `idle_ttl`
    /// after its last activity.
    pub fn with_limits(max_sessions: usize, idle_ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_sessions: max_sessions.max(1),
                idle_ttl,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The number of sessions held (expired ones included until they are next swept).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many sessions were evicted before their TTL to respect the cap.
    pub fn evictions(&self) -> u64 {
        self.lock().evictions
    }

    /// A copy of every live session's record, sorted by session key.
    pub fn snapshot(&self) -> Vec<(SessionId, SessionRecord)> {
        let now = SystemTime::now();
        let state = self.lock();
        let mut all: Vec<_> = state
            .map
            .values()
            .filter_map(|&ix| state.records.get(ix))
            .filter(|(_, r)| !self.expired(r, now))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Reads a session synchronously; see [`SessionStore::load`].
    pub fn get(&self, session: &SessionId) -> Option<SessionRecord> {
        let now = SystemTime::now();
        let mut state = self.lock();
        let ix = *state.map.get(session.as_str())?;
        let (_, record) = state.records.get(ix)?;
        if self.expired(record, now) {
            state.map.remove(session.as_str());
            state.records.remove(ix);
            return None;
        }
        Some(record.clone())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The map stays consistent even if a holder panicked: every write is a single insert.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, record: &SessionRecord, now: SystemTime) -> bool {
        now.duration_since(record.last_activity)
            .is_ok_and(|idle| idle > self.inner.idle_ttl)
    }

    fn apply(&self, batch: &[SessionUpdate]) {
        let now = SystemTime::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        for update in batch {
            self.expire_front(state, now, EXPIRE_PER_WRITE);
            if let Some(&ix) = state.map.get(update.session.as_str())
                && let Some((_, record)) = state.records.get_mut(ix)
            {
                if self.expired(record, now) {
                    *record = SessionRecord::from(update);
                } else {
                    record.apply(update);
                }
                state.records.push_back(ix);
                continue;
            }
            if state.map.len() >= self.inner.max_sessions {
                // Full: the least recently written session makes room.
                if let Some(front) = state.records.front() {
                    self.remove(state, front);
                    state.evictions += 1;
                    tracing::trace!(
                        "memory store full: evicted the least recently written session"
                    );
                }
            }
            let ix = state
                .records
                .insert((update.session.clone(), SessionRecord::from(update)));
            state.records.push_back(ix);
            state.map.insert(update.session.clone(), ix);
        }
    }

    /// Removes up to `max` expired records from the front (the least recently written).
    fn expire_front(&self, state: &mut State, now: SystemTime, max: usize) {
        for _ in 0..max {
            let Some(front) = state.records.front() else {
                return;
            };
            match state.records.get(front) {
                Some((_, record)) if self.expired(record, now) => self.remove(state, front),
                _ => return,
            }
        }
    }

    fn remove(&self, state: &mut State, ix: u32) {
        if let Some((session, _)) = state.records.remove(ix) {
            state.map.remove(session.as_str());
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

    fn load<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(async move { Ok(self.get(session)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LastEventId;

    fn update(session: &str, id: &str, version: u64, at: SystemTime) -> SessionUpdate {
        SessionUpdate {
            session: SessionId::new(session).unwrap(),
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
        let r = store.get(&SessionId::new("a").unwrap()).unwrap();
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
            let r = store.get(&SessionId::new(key).unwrap()).unwrap();
            assert_eq!(r.last_event_id, LastEventId::Cleared);
        }
    }

    #[test]
    fn expired_sessions_read_as_absent() {
        let store = MemoryStore::with_limits(10, Duration::from_secs(60));
        let old = SystemTime::now() - Duration::from_secs(61);
        block_on(store.save_batch(&[update("a", "1", 1, old)])).unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.get(&SessionId::new("a").unwrap()).is_none());
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
        assert!(store.get(&SessionId::new("s999").unwrap()).is_some());
        assert!(store.get(&SessionId::new("s0").unwrap()).is_none());
        assert_eq!(store.evictions(), 1000 - store.len() as u64);
    }
}
