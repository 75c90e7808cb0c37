//! [`Registry`]: the bounded, sharded map of tracked positions: one per (session, stream).
//!
//! Session keys come from clients, so every operation costs O(1) whatever the registry holds,
//! full or not, and no lock is held for longer than a map operation:
//!
//! - The map is split into shards (a power of two, from the number of cores), each behind its
//!   own mutex; a session's shard is chosen by a randomly seeded hash, so clients cannot aim at
//!   one. All streams of a session live in its shard, chained from the session's map entry; a
//!   session has at most `max_streams_per_session` of them, so walking the chain is O(1) too.
//!   Below, "session" means one such position (the registry's unit).
//! - Each session counts the streams and handles *attached* to it. A session with none attached
//!   and nothing left to write ("idle") is on its shard's idle list, oldest first. Both facts
//!   change only under the shard's lock (writes clear the slot first, then the worker calls
//!   [`Registry::refresh`]), so the list is exact: its front can always be forgotten, its state
//!   is in the store.
//! - The cap (`max_sessions`) is global. A new session under the cap is inserted; at the cap the
//!   least recently idle session of its own shard is forgotten to make room, else the front of
//!   another shard's list, one shard lock at a time. When no session anywhere is idle (all have
//!   live streams or unwritten state) the new one is refused and the request goes untracked.
//! - Expiry by idle TTL is incremental: each worker tick forgets at most a fixed number of
//!   expired sessions per shard, from the fronts of the idle lists.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    SessionId, StreamKey,
    lru::LinkedSlab,
    metrics::{self as m, Labels},
    slot::Slot,
};

/// Most expired sessions forgotten per shard per worker tick.
pub(crate) const EXPIRE_PER_SHARD_PER_TICK: usize = 256;

/// Limits of the in-memory registry of tracked sessions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RegistryLimits {
    pub(crate) max_sessions: usize,
    pub(crate) max_streams_per_session: usize,
    pub(crate) idle_ttl: Duration,
    pub(crate) dedup_window: usize,
}

/// Why a stream could not be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// The registry is full of positions that cannot be forgotten.
    Registry,
    /// The session has `max_streams_per_session` streams, all busy.
    Streams,
}

impl Full {
    /// The `reason` label of the `untracked` counter.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::Registry => "registry_full",
            Self::Streams => "too_many_streams",
        }
    }
}

/// The end of a session's chain of positions.
const NIL: u32 = u32::MAX;

/// How the registry made room for new sessions, for tests and operators.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryStats {
    /// Sessions in memory.
    pub sessions: usize,
    /// Sessions with nothing attached and nothing to write (may be forgotten at any time).
    pub idle: usize,
    /// New sessions that found the registry at its cap.
    pub admissions_at_cap: u64,
    /// Sessions looked at by those admissions to find one to forget.
    pub examined: u64,
    /// The most sessions one admission looked at.
    pub max_examined: u64,
    /// Idle sessions forgotten before their TTL to make room.
    pub evicted: u64,
    /// Idle sessions forgotten after their TTL.
    pub expired: u64,
    /// New sessions refused: nothing could be forgotten.
    pub refused: u64,
    /// New streams refused: their session had the most streams allowed, all busy.
    pub refused_streams: u64,
}

struct Node {
    slot: Arc<Slot>,
    /// The next position of the same session, or `NIL`.
    next: u32,
    /// Streams and handles holding the session.
    attached: u32,
    /// When the session last became idle, in milliseconds since the registry's epoch.
    idle_since: u64,
}

#[derive(Default)]
struct Shard {
    /// Each session's first position. Keyed by foldhash, randomly seeded: the keys are client
    /// input.
    map: HashMap<SessionId, u32, foldhash::fast::RandomState>,
    /// Every position of the shard; the idle ones are linked, least recently idle first.
    nodes: LinkedSlab<Node>,
}

impl Shard {
    /// The position of (session, stream), and how many positions the session has up to it (all
    /// of them when it has none for `stream`).
    fn find(&self, session: &str, stream: &str) -> (Option<u32>, usize) {
        let mut ix = self.map.get(session).copied().unwrap_or(NIL);
        let mut count = 0;
        while let Some(node) = self.nodes.get(ix) {
            if node.slot.stream().as_str() == stream {
                return (Some(ix), count);
            }
            count += 1;
            ix = node.next;
        }
        (None, count)
    }

    /// The positions of a session.
    fn chain(&self, session: &str) -> Vec<u32> {
        let mut ix = self.map.get(session).copied().unwrap_or(NIL);
        let mut all = Vec::new();
        while let Some(node) = self.nodes.get(ix) {
            all.push(ix);
            ix = node.next;
        }
        all
    }

    /// Removes a position from the shard: from its session's chain, the idle list and the slab.
    fn remove(&mut self, ix: u32) -> Option<Node> {
        let node = self.nodes.get(ix)?;
        let (session, next) = (node.slot.session().clone(), node.next);
        let head = self.map.get(session.as_str()).copied().unwrap_or(NIL);
        if head == ix {
            if next == NIL {
                self.map.remove(session.as_str());
            } else if let Some(head) = self.map.get_mut(session.as_str()) {
                *head = next;
            }
        } else {
            let mut prev = head;
            while let Some(node) = self.nodes.get_mut(prev) {
                if node.next == ix {
                    node.next = next;
                    break;
                }
                prev = node.next;
            }
        }
        self.nodes.remove(ix)
    }
}

/// A shard's lock on a cache line of its own, so that shards do not slow each other down.
#[repr(align(64))]
#[derive(Default)]
struct Padded(Mutex<Shard>);

/// The bounded, sharded map of tracked sessions. Looked up once per request, never per event.
pub(crate) struct Registry {
    shards: Box<[Padded]>,
    /// Picks a key's shard.
    router: foldhash::fast::RandomState,
    limits: RegistryLimits,
    labels: Labels,
    ttl_ms: u64,
    epoch: Instant,
    /// Sessions in memory (never above `limits.max_sessions`).
    len: AtomicUsize,
    /// Sessions on the idle lists: at the cap, other shards are tried only when some are.
    idle: AtomicUsize,
    admissions_at_cap: AtomicU64,
    examined: AtomicU64,
    max_examined: AtomicU64,
    evicted: AtomicU64,
    expired: AtomicU64,
    refused: AtomicU64,
    refused_streams: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("limits", &self.limits)
            .field("shards", &self.shards.len())
            .field("len", &self.len())
            .finish()
    }
}

impl Registry {
    pub(crate) fn new(limits: RegistryLimits, labels: Labels) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards(limits, (cores * 4).next_power_of_two().clamp(4, 64), labels)
    }

    pub(crate) fn with_shards(limits: RegistryLimits, shards: usize, labels: Labels) -> Self {
        let shards = shards.next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Padded::default()).collect(),
            router: foldhash::fast::RandomState::default(),
            limits: RegistryLimits {
                max_sessions: limits.max_sessions.max(1),
                max_streams_per_session: limits.max_streams_per_session.max(1),
                ..limits
            },
            labels,
            ttl_ms: u64::try_from(limits.idle_ttl.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            len: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            admissions_at_cap: AtomicU64::new(0),
            examined: AtomicU64::new(0),
            max_examined: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refused_streams: AtomicU64::new(0),
        }
    }

    fn shard_of(&self, session: &str) -> usize {
        // High bits of the hash; the shard maps use other seeds, so the two are independent.
        (self.router.hash_one(session) >> 40) as usize & (self.shards.len() - 1)
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Every critical section leaves the shard consistent, even if interrupted by a panic.
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// The position's slot, if it is tracked (not attached: for reading it).
    pub(crate) fn get(&self, session: &SessionId, stream: &StreamKey) -> Option<Arc<Slot>> {
        let shard = self.lock(self.shard_of(session.as_str()));
        let ix = shard.find(session.as_str(), stream.as_str()).0?;
        shard.nodes.get(ix).map(|node| node.slot.clone())
    }

    /// The position's slot, created if needed, attached: the caller must
    /// [`detach`](Self::detach) it once. [`Full`] when the registry is at its cap and no
    /// position can be forgotten, or the session has the most streams allowed, all busy.
    pub(crate) fn attach(
        &self,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<Arc<Slot>, Full> {
        let home = self.shard_of(session.as_str());
        let mut shard = self.lock(home);
        let (found, streams) = shard.find(session.as_str(), stream.as_str());
        if let Some(ix) = found {
            return Ok(self.attach_existing(&mut shard, ix));
        }
        if streams >= self.limits.max_streams_per_session {
            // The session's own least recently idle stream makes room, whatever the TTL.
            if !self.forget_idlest_stream(&mut shard, session) {
                self.refused_streams.fetch_add(1, Relaxed);
                return Err(Full::Streams);
            }
            self.forgotten("streams").increment(1);
            // One out, one in: the count stays.
            return Ok(self.insert(&mut shard, home, session, stream));
        }
        if self.reserve() {
            return Ok(self.insert(&mut shard, home, session, stream));
        }
        // At the cap: forget the least recently idle session of this shard, else of another.
        self.admissions_at_cap.fetch_add(1, Relaxed);
        let mut examined = 0;
        if let Some(forgotten) = self.forget_front(&mut shard, &mut examined, None) {
            // The forgotten slot becomes the new one (see `reserve::recycle`).
            crate::reserve::recycle(forgotten.slot);
            self.evicted.fetch_add(1, Relaxed);
            self.forgotten("capacity").increment(1);
            self.note_examined(examined);
            // One out, one in: the count stays at the cap.
            return Ok(self.insert(&mut shard, home, session, stream));
        }
        drop(shard);
        let mut freed = false;
        let n = self.shards.len();
        for k in 1..n {
            if self.idle.load(Relaxed) == 0 {
                break;
            }
            let mut other = self.lock((home + k) & (n - 1));
            if let Some(forgotten) = self.forget_front(&mut other, &mut examined, None) {
                drop(other);
                crate::reserve::recycle(forgotten.slot);
                self.len.fetch_sub(1, Relaxed);
                self.evicted.fetch_add(1, Relaxed);
                self.forgotten("capacity").increment(1);
                freed = true;
                break;
            }
        }
        self.note_examined(examined);
        if freed && self.reserve() {
            let mut shard = self.lock(home);
            let (found, streams) = shard.find(session.as_str(), stream.as_str());
            if let Some(ix) = found {
                // Another request admitted it meanwhile.
                self.len.fetch_sub(1, Relaxed);
                return Ok(self.attach_existing(&mut shard, ix));
            }
            if streams >= self.limits.max_streams_per_session {
                // Other requests gave the session its last streams meanwhile.
                self.len.fetch_sub(1, Relaxed);
                self.refused_streams.fetch_add(1, Relaxed);
                return Err(Full::Streams);
            }
            return Ok(self.insert(&mut shard, home, session, stream));
        }
        self.refused.fetch_add(1, Relaxed);
        Err(Full::Registry)
    }

    /// The stream of `session` whose position is `id`, if one is.
    pub(crate) fn stream_at(&self, session: &SessionId, id: &str) -> Option<StreamKey> {
        let shard = self.lock(self.shard_of(session.as_str()));
        shard
            .chain(session.as_str())
            .into_iter()
            .filter_map(|ix| shard.nodes.get(ix))
            .find(|node| node.slot.holds_id(id))
            .map(|node| node.slot.stream().clone())
    }

    /// Forgets every position of `session` (a session that ended): each slot forgets its ID
    /// and what it had left to write, and the positions nothing holds leave the registry. Those
    /// with a live stream stay (their later events start afresh). Returns how many positions
    /// the session had.
    pub(crate) fn forget_session(&self, session: &SessionId) -> usize {
        let mut shard = self.lock(self.shard_of(session.as_str()));
        let chain = shard.chain(session.as_str());
        let mut removed = 0;
        for &ix in &chain {
            let Some(node) = shard.nodes.get(ix) else {
                continue;
            };
            node.slot.forget();
            if node.attached > 0 || node.slot.is_queued() {
                continue;
            }
            if shard.nodes.is_linked(ix) {
                self.idle.fetch_sub(1, Relaxed);
            }
            shard.remove(ix);
            removed += 1;
        }
        drop(shard);
        if removed > 0 {
            self.len.fetch_sub(removed, Relaxed);
            self.forgotten("ended").increment(removed as u64);
        }
        chain.len()
    }

    /// Releases an attachment taken by [`attach`](Self::attach). The session becomes idle (and
    /// may be forgotten) once nothing is attached and nothing is left to write.
    pub(crate) fn detach(&self, slot: &Arc<Slot>) {
        self.update(slot, |node| {
            debug_assert!(node.attached > 0, "detached more often than attached");
            node.attached = node.attached.saturating_sub(1);
            node.slot.set_attached(node.attached);
        });
    }

    /// Adds one more attachment to a slot already attached (a cloned handle).
    pub(crate) fn attach_again(&self, slot: &Arc<Slot>) {
        self.update(slot, |node| {
            debug_assert!(node.attached > 0, "attach_again on an unattached slot");
            node.attached += 1;
            node.slot.set_attached(node.attached);
        });
    }

    /// Called by the worker after a slot turned clean (written, or released): puts it on the
    /// idle list if nothing is attached to it.
    pub(crate) fn refresh(&self, slot: &Arc<Slot>) {
        // A slot something is attached to cannot turn idle: no need for the shard's lock. (The
        // hint is set under that lock before `detach` looks at the slot's queued flag, and read
        // here after the worker changed that flag, both under the slot's lock: a detach that
        // saw the slot still queued is seen here.)
        if slot.is_attached() {
            return;
        }
        self.update(slot, |_| {});
    }

    /// Applies `change` to the slot's node, then puts the session on its shard's idle list if
    /// it just became idle: nothing attached, nothing left to write. Both are read under the
    /// shard's lock, so a session is on the list exactly when it can be forgotten.
    fn update(&self, slot: &Arc<Slot>, change: impl FnOnce(&mut Node)) {
        let mut shard = self.lock(slot.shard() as usize);
        let ix = slot.node();
        let Some(node) = shard
            .nodes
            .get_mut(ix)
            .filter(|n| Arc::ptr_eq(&n.slot, slot))
        else {
            // Forgotten already: only an idle session is, and nothing holds those.
            return;
        };
        change(node);
        if node.attached > 0 || shard.nodes.is_linked(ix) || slot.is_queued() {
            return;
        }
        if let Some(node) = shard.nodes.get_mut(ix) {
            node.idle_since = self.now_ms();
        }
        shard.nodes.push_back(ix);
        self.idle.fetch_add(1, Relaxed);
    }

    /// Forgets sessions idle for longer than the TTL: at most `per_shard` per shard, from the
    /// fronts of the idle lists. Returns how many.
    pub(crate) fn expire(&self, per_shard: usize) -> usize {
        let now = self.now_ms();
        let mut forgotten = 0;
        for i in 0..self.shards.len() {
            let mut shard = self.lock(i);
            let mut examined = 0;
            for _ in 0..per_shard {
                if self
                    .forget_front(&mut shard, &mut examined, Some(now))
                    .is_none()
                {
                    break;
                }
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            self.len.fetch_sub(forgotten, Relaxed);
            self.expired.fetch_add(forgotten as u64, Relaxed);
            self.forgotten("idle").increment(forgotten as u64);
        }
        forgotten
    }

    pub(crate) fn stats(&self) -> RegistryStats {
        RegistryStats {
            sessions: self.len(),
            idle: self.idle.load(Relaxed),
            admissions_at_cap: self.admissions_at_cap.load(Relaxed),
            examined: self.examined.load(Relaxed),
            max_examined: self.max_examined.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            expired: self.expired.load(Relaxed),
            refused: self.refused.load(Relaxed),
            refused_streams: self.refused_streams.load(Relaxed),
        }
    }

    fn forgotten(&self, reason: &'static str) -> metrics::Counter {
        self.labels
            .counter_with(m::SESSIONS_FORGOTTEN, "reason", reason)
    }

    fn note_examined(&self, examined: u64) {
        self.examined.fetch_add(examined, Relaxed);
        self.max_examined.fetch_max(examined, Relaxed);
    }

    /// Takes one more place under the cap.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Relaxed, Relaxed, |len| {
                (len < self.limits.max_sessions).then_some(len + 1)
            })
            .is_ok()
    }

    fn attach_existing(&self, shard: &mut Shard, ix: u32) -> Arc<Slot> {
        let was_idle = shard.nodes.is_linked(ix);
        shard.nodes.unlink(ix);
        if was_idle {
            self.idle.fetch_sub(1, Relaxed);
        }
        let node = shard
            .nodes
            .get_mut(ix)
            .expect("a position found in its shard is in the slab");
        node.attached += 1;
        node.slot.set_attached(node.attached);
        node.slot.clone()
    }

    /// Inserts a new position, attached, in a place already counted under the cap, at the head
    /// of its session's chain.
    fn insert(
        &self,
        shard: &mut Shard,
        home: usize,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Arc<Slot> {
        let ix = shard.nodes.vacant_index();
        let slot = crate::reserve::shared(Slot::new(
            session.clone(),
            stream.clone(),
            home as u32,
            ix,
            self.limits.dedup_window,
        ));
        let next = shard.map.get(session.as_str()).copied().unwrap_or(NIL);
        let inserted = shard.nodes.insert(Node {
            slot: slot.clone(),
            next,
            attached: 1,
            idle_since: 0,
        });
        debug_assert_eq!(inserted, ix);
        slot.set_attached(1);
        shard.map.insert(session.clone(), ix);
        slot
    }

    /// Forgets the session's stream that has been idle longest, if one is idle (at most
    /// `max_streams_per_session` looked at). Does not touch `len`.
    fn forget_idlest_stream(&self, shard: &mut Shard, session: &SessionId) -> bool {
        let idlest = shard
            .chain(session.as_str())
            .into_iter()
            .filter(|&ix| shard.nodes.is_linked(ix))
            .min_by_key(|&ix| shard.nodes.get(ix).map_or(u64::MAX, |n| n.idle_since));
        let Some(ix) = idlest else {
            return false;
        };
        self.idle.fetch_sub(1, Relaxed);
        shard.remove(ix);
        true
    }

    /// Forgets the front of the shard's idle list, if it has one (and, with `expired_at`, only
    /// if it has been idle for the TTL), and returns its node. Does not touch `len`.
    fn forget_front(
        &self,
        shard: &mut Shard,
        examined: &mut u64,
        expired_at: Option<u64>,
    ) -> Option<Node> {
        // The list holds only sessions that can be forgotten (see the module docs); the check
        // below guards that invariant, bounded so that a broken one cannot cost a scan.
        for _ in 0..4 {
            let ix = shard.nodes.front()?;
            let node = shard.nodes.get(ix)?;
            if let Some(now) = expired_at
                && now.saturating_sub(node.idle_since) < self.ttl_ms
            {
                return None;
            }
            *examined += 1;
            self.idle.fetch_sub(1, Relaxed);
            if node.attached == 0 && !node.slot.is_queued() {
                return shard.remove(ix);
            }
            debug_assert!(false, "a busy session on the idle list");
            shard.nodes.unlink(ix);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::IdHasher;

    fn sid(key: &str) -> SessionId {
        SessionId::new(key).unwrap()
    }

    fn whole() -> StreamKey {
        StreamKey::whole_session()
    }

    fn stream(key: &str) -> StreamKey {
        StreamKey::new(key).unwrap()
    }

    fn registry(max_sessions: usize, shards: usize) -> Registry {
        Registry::with_shards(
            RegistryLimits {
                max_sessions,
                max_streams_per_session: 3,
                idle_ttl: Duration::from_secs(10),
                dedup_window: 4,
            },
            shards,
            Labels::default(),
        )
    }

    /// Records an event and writes it, as the worker would.
    fn written(reg: &Registry, slot: &Arc<Slot>, id: &str) {
        slot.record(Some(id.as_bytes()), &IdHasher::default());
        let snap = slot
            .snapshot(crate::clock::nanos_of(std::time::SystemTime::now()))
            .unwrap();
        assert!(!slot.mark_persisted(snap.seq));
        reg.refresh(slot);
    }

    #[tokio::test(start_paused = true)]
    async fn full_registry_forgets_idle_written_sessions_lru_first() {
        let reg = registry(3, 1);
        let a = reg.attach(&sid("a"), &whole()).unwrap();
        let b = reg.attach(&sid("b"), &whole()).unwrap();
        let c = reg.attach(&sid("c"), &whole()).unwrap();
        assert!(
            matches!(reg.attach(&sid("d"), &whole()), Err(Full::Registry)),
            "all three attached"
        );
        for slot in [&b, &a, &c] {
            written(&reg, slot, "1");
            reg.detach(slot);
        }
        // Idle order: b, a, c. No TTL has passed: the cap alone makes room.
        assert!(reg.attach(&sid("d"), &whole()).is_ok());
        assert!(
            reg.get(&sid("b"), &whole()).is_none(),
            "least recently idle goes first"
        );
        assert!(reg.attach(&sid("e"), &whole()).is_ok());
        assert!(reg.get(&sid("a"), &whole()).is_none());
        assert!(reg.get(&sid("c"), &whole()).is_some());
        assert_eq!(reg.len(), 3);
        let stats = reg.stats();
        assert_eq!((stats.evicted, stats.max_examined), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_with_streams_or_unwritten_state_are_never_forgotten() {
        let reg = registry(2, 1);
        let a = reg.attach(&sid("a"), &whole()).unwrap();
        let b = reg.attach(&sid("b"), &whole()).unwrap();
        // a: stream gone but its event not written yet; b: still attached.
        a.record(Some(b"1"), &IdHasher::default());
        reg.detach(&a);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(reg.expire(usize::MAX), 0);
        assert!(matches!(
            reg.attach(&sid("c"), &whole()),
            Err(Full::Registry)
        ));
        assert_eq!(reg.stats().refused, 1);
        // Written: a becomes idle and can go.
        let snap = a
            .snapshot(crate::clock::nanos_of(std::time::SystemTime::now()))
            .unwrap();
        a.mark_persisted(snap.seq);
        reg.refresh(&a);
        let c = reg.attach(&sid("c"), &whole()).unwrap();
        assert!(reg.get(&sid("a"), &whole()).is_none());
        assert!(reg.get(&sid("b"), &whole()).is_some());
        drop((b, c));
    }

    #[tokio::test(start_paused = true)]
    async fn reattaching_takes_a_session_off_the_idle_list() {
        let reg = registry(1, 1);
        let a = reg.attach(&sid("a"), &whole()).unwrap();
        written(&reg, &a, "1");
        reg.detach(&a);
        assert_eq!(reg.stats().idle, 1);
        let again = reg.attach(&sid("a"), &whole()).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "the same slot");
        assert_eq!(reg.stats().idle, 0);
        assert!(matches!(
            reg.attach(&sid("b"), &whole()),
            Err(Full::Registry)
        ));
        // Two attachments: one detach leaves it busy.
        reg.attach_again(&again);
        reg.detach(&again);
        assert!(matches!(
            reg.attach(&sid("b"), &whole()),
            Err(Full::Registry)
        ));
        reg.detach(&again);
        assert!(reg.attach(&sid("b"), &whole()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_incremental_and_oldest_first() {
        let reg = registry(100, 1);
        let mut slots = Vec::new();
        for i in 0..10 {
            let slot = reg.attach(&sid(&format!("s{i}")), &whole()).unwrap();
            written(&reg, &slot, "1");
            reg.detach(&slot);
            slots.push(slot);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // s0 idle for 10 s, s9 for 1 s; TTL 10 s.
        assert_eq!(reg.expire(usize::MAX), 1);
        assert!(reg.get(&sid("s0"), &whole()).is_none() && reg.get(&sid("s1"), &whole()).is_some());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(reg.expire(2), 2, "at most the budget per shard");
        assert_eq!(reg.expire(usize::MAX), 3);
        assert_eq!(reg.len(), 4);
        assert_eq!(reg.stats().expired, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_other_shards_give_room_and_the_cap_is_exact() {
        let reg = registry(64, 8);
        let mut held = Vec::new();
        // Fill to the cap; keep the first 60 attached, write and release the last 4.
        for i in 0..64 {
            held.push(reg.attach(&sid(&format!("k{i}")), &whole()).unwrap());
        }
        for slot in held.drain(60..) {
            written(&reg, &slot, "1");
            reg.detach(&slot);
        }
        // Four new sessions, whatever their shard, take the four idle places.
        for i in 0..4 {
            held.push(reg.attach(&sid(&format!("new{i}")), &whole()).unwrap());
            assert_eq!(reg.len(), 64);
        }
        assert!(matches!(
            reg.attach(&sid("one-too-many"), &whole()),
            Err(Full::Registry)
        ));
        let stats = reg.stats();
        assert_eq!((stats.evicted, stats.refused, stats.idle), (4, 1, 0));
        assert!(stats.max_examined <= 1, "{stats:?}");
    }

    #[tokio::test]
    async fn a_flood_at_the_cap_does_bounded_work_per_admission() {
        let reg = registry(1000, 8);
        for i in 0..20_000 {
            let slot = reg.attach(&sid(&format!("flood-{i}")), &whole()).unwrap();
            written(&reg, &slot, "1");
            reg.detach(&slot);
            assert!(reg.len() <= 1000);
        }
        let stats = reg.stats();
        assert_eq!(stats.admissions_at_cap, 19_000);
        assert_eq!(stats.evicted, 19_000);
        assert!(stats.max_examined <= 1, "{stats:?}");
        assert_eq!(stats.examined, 19_000);
    }

    #[tokio::test(start_paused = true)]
    async fn streams_of_a_session_are_positions_of_their_own() {
        let reg = registry(100, 1);
        let events = reg.attach(&sid("a"), &stream("/events")).unwrap();
        let chat = reg.attach(&sid("a"), &stream("/chat")).unwrap();
        let other = reg.attach(&sid("b"), &stream("/events")).unwrap();
        assert!(!Arc::ptr_eq(&events, &chat) && !Arc::ptr_eq(&events, &other));
        written(&reg, &events, "5");
        written(&reg, &chat, "c1");
        let get = |s: &str, k: &str| reg.get(&sid(s), &stream(k)).unwrap().last_event_id();
        assert_eq!(get("a", "/events").as_deref(), Some("5"));
        assert_eq!(get("a", "/chat").as_deref(), Some("c1"));
        assert_eq!(get("b", "/events"), None);
        assert!(reg.get(&sid("a"), &stream("/other")).is_none());
        assert_eq!(reg.len(), 3);
        // Any position of the chain can leave it, the others stay found.
        for slot in [&chat, &events, &other] {
            reg.detach(slot);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        let again = reg.attach(&sid("a"), &stream("/events")).unwrap();
        assert_eq!(reg.expire(usize::MAX), 2, "chat and b's stream expire");
        assert!(Arc::ptr_eq(
            &again,
            &reg.get(&sid("a"), &stream("/events")).unwrap()
        ));
        assert!(reg.get(&sid("a"), &stream("/chat")).is_none());
        reg.detach(&again);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_has_at_most_its_cap_of_streams() {
        // Cap: 3 streams per session.
        let reg = registry(100, 1);
        let held: Vec<_> = (0..3)
            .map(|i| reg.attach(&sid("a"), &stream(&format!("/s{i}"))).unwrap())
            .collect();
        assert_eq!(
            reg.attach(&sid("a"), &stream("/s3")).err(),
            Some(Full::Streams),
            "all three busy"
        );
        assert_eq!(reg.stats().refused_streams, 1);
        assert!(
            reg.attach(&sid("b"), &stream("/s3")).is_ok(),
            "other sessions are not capped"
        );
        // The idlest of the session's streams makes room, before its TTL.
        written(&reg, &held[1], "1");
        reg.detach(&held[1]);
        tokio::time::advance(Duration::from_secs(1)).await;
        written(&reg, &held[2], "1");
        reg.detach(&held[2]);
        let s3 = reg.attach(&sid("a"), &stream("/s3")).unwrap();
        assert!(reg.get(&sid("a"), &stream("/s1")).is_none(), "idle longest");
        assert!(reg.get(&sid("a"), &stream("/s2")).is_some());
        assert_eq!(reg.len(), 4);
        drop((held, s3));
    }

    #[tokio::test(start_paused = true)]
    async fn forgetting_a_session_drops_its_idle_positions_and_resets_busy_ones() {
        let reg = registry(100, 1);
        let idle = reg.attach(&sid("a"), &stream("/idle")).unwrap();
        written(&reg, &idle, "7");
        reg.detach(&idle);
        let live = reg.attach(&sid("a"), &stream("/live")).unwrap();
        written(&reg, &live, "9");
        let unwritten = reg.attach(&sid("a"), &stream("/unwritten")).unwrap();
        unwritten.record(Some(b"3"), &IdHasher::default());
        reg.detach(&unwritten);
        let other = reg.attach(&sid("b"), &stream("/idle")).unwrap();
        written(&reg, &other, "1");
        assert_eq!(reg.forget_session(&sid("a")), 3);
        assert!(reg.get(&sid("a"), &stream("/idle")).is_none());
        // Still held (by a stream, by the worker): kept, but with nothing to remember or write.
        assert_eq!(live.last_event_id(), None);
        assert!(
            unwritten
                .snapshot(crate::clock::nanos_of(std::time::SystemTime::now()))
                .is_none()
        );
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.stats().idle, 0);
        // Other sessions are untouched; the held positions go their usual way afterwards.
        assert_eq!(other.last_event_id().as_deref(), Some("1"));
        assert!(!unwritten.mark_persisted(0));
        reg.refresh(&unwritten);
        assert_eq!(reg.stats().idle, 1);
        assert_eq!(reg.forget_session(&sid("nobody")), 0);
        reg.detach(&live);
        reg.detach(&other);
    }
}
