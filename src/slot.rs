//! Per-session state: the newest last event ID, a bounded duplicate window, and the bookkeeping
//! that lets the persistence worker write each session's newest state exactly when it changed.
//!
//! Every tracked session has one [`Slot`]. Recording an event updates the slot in place under a
//! short, uncontended lock (never held across an `await`) and reports whether the slot just
//! turned from clean to queued: only then does the caller enqueue the session on the worker's
//! queue. Coalescing thus happens at the source, and queue traffic is bounded by the number of
//! sessions per flush interval rather than by events.

use std::{
    hash::BuildHasher,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
};

use crate::{SessionId, StreamKey, clock, id_buf::IdBuf, store::SessionUpdate};

/// Default number of recent event IDs remembered per session to detect duplicates.
pub(crate) const DEFAULT_DEDUP_WINDOW: usize = 64;

/// What recording one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The event's ID was seen recently: counted, not persisted again.
    pub(crate) duplicate: bool,
    /// The slot just turned from clean to queued: the caller must hand it to the worker.
    pub(crate) enqueue: bool,
}

/// The lock of a slot: taken once per event by the stream that records it, and briefly by the
/// worker (a snapshot, marking what was written). Taking it is one compare-and-swap, giving it
/// back a plain store (a `std::sync::Mutex` swaps on release too, to learn whether to wake a
/// waiter: on the per-event path, that second read-modify-write cost as much as the rest of
/// the record). A waiter yields its thread between tries.
type SlotLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// One session's tracked state. Tracker by the streams of the session, the registry and (while it
/// has something to write) the persistence worker.
pub(crate) struct Slot {
    session: SessionId,
    stream: StreamKey,
    /// Where the registry keeps the slot: its shard and its index there (fixed).
    shard: u32,
    node: u32,
    /// Whether a stream may keep its events to itself for a while and hand them over later as
    /// one batch ([`publish`](Self::publish)), instead of taking the lock per event: the slot is
    /// with the worker (it will be written, and the worker turning it clean clears this flag)
    /// and its duplicate window is not armed (then the only duplicate possible is a repeat of
    /// the newest ID, which the stream sees itself). Set under the lock whenever either
    /// changes, read per event without it: a stale read only delays a batch until the stream's
    /// next hand-over.
    batching: AtomicBool,
    /// How many streams and handles are attached, as the registry last counted them (under its
    /// shard's lock): read by the worker without that lock (see `Registry::refresh`).
    attached: AtomicU32,
    /// How many times the session was forgotten (`forget`): a stream's batch begun before a
    /// forget is dropped rather than handed over after it (see `publish`).
    generation: AtomicU32,
    state: SlotLock<SlotState>,
}

struct SlotState {
    /// The newest last event ID, as the stream's raw bytes (decoded as UTF-8, with replacement
    /// characters, only when read or written: not per event); empty means cleared (or unknown
    /// while `id_known` is false).
    id: IdBuf,
    /// An `id` field has been recorded in this process. Until then snapshots carry version 0,
    /// which never overrides a stored ID (it only records activity).
    id_known: bool,
    /// Events recorded so far.
    seq: u64,
    /// `seq` covered by the latest snapshot handed to the worker.
    snap_seq: u64,
    /// `seq` covered by the latest successful write.
    persisted_seq: u64,
    /// The version of `id`: when it was recorded (see `clock`).
    version: u64,
    /// The activity time given at the latest snapshot that carried new events, in nanoseconds
    /// since the Unix epoch (`clock::nanos_of`: 8 bytes, where a `SystemTime` takes 16).
    activity: u64,
    /// The slot is with the worker (in its queue, pending set, retry heap, overflow set or
    /// lingering list).
    queued: bool,
    /// The worker's tick of the latest paced write (0: none yet), to tell a session written on
    /// consecutive ticks (see `mark_written`).
    written_tick: u32,
    dedup: DedupWindow,
}

impl SlotState {
    /// Makes `id` the newest ID, with a new version: the time it was seen, `seen` (for a
    /// batch, when its first event was), or now.
    fn set_id(&mut self, id: &[u8], seen: Option<u64>) {
        self.id.set(id);
        self.id_known = true;
        // One clock read per new ID (a vDSO call) unless the caller read it: the version is the
        // time the ID was recorded, see `clock`.
        self.version = match seen {
            Some(at) => clock::stamp_at(at, self.version),
            None => clock::stamp(self.version),
        };
    }

    /// Whether a stream may batch its events (see `Slot::batching`).
    fn batching(&self) -> bool {
        self.queued && self.dedup.state() != Armed::On
    }

    /// Records an event's `id` field; `true` if it is a duplicate (the newest ID is left as it
    /// was).
    #[inline]
    fn record_id(&mut self, id: &[u8], hasher: &IdHasher, seen: Option<u64>) -> bool {
        if id.is_empty() {
            if !self.id_known || !self.id.is_empty() {
                self.set_id(b"", seen);
            }
            self.dedup.clear();
            return false;
        }
        let repeats_newest = self.id_known && self.id == *id;
        match self.dedup.state() {
            Armed::Off => {
                if !repeats_newest {
                    self.set_id(id, seen);
                }
                false
            }
            Armed::Idle => {
                if repeats_newest {
                    // A repeat: a seam the stream did not announce. Watch for more.
                    self.dedup.arm(Some(hasher.hash(id)));
                    self.dedup.saw_duplicate();
                    true
                } else {
                    self.set_id(id, seen);
                    false
                }
            }
            Armed::On => {
                let hash = hasher.hash(id);
                if self.dedup.contains(hash) {
                    self.dedup.saw_duplicate();
                    return true;
                }
                self.dedup.insert(hash);
                if !repeats_newest {
                    self.set_id(id, seen);
                }
                false
            }
        }
    }

    /// The newest ID's fingerprint, if there is a (non-empty) newest ID.
    fn newest_hash(&self, hasher: &IdHasher) -> Option<u64> {
        (self.id_known && !self.id.is_empty()).then(|| hasher.hash(self.id.as_slice()))
    }

    /// Marks the slot as with the worker; `true` if it just turned so (the caller queues it).
    fn turn_dirty(&mut self) -> bool {
        let enqueue = !self.queued;
        self.queued = true;
        enqueue
    }
}

/// What a paced write left in a slot (see [`Slot::mark_written`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Newer events arrived meanwhile: still queued, to write again.
    Dirty,
    /// Clean, and written on consecutive ticks: still queued, to look at on the next tick.
    Hot,
    /// Clean and released: a new event queues it again.
    Clean,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Slot")
            .field("session", &self.session)
            .field("stream", &self.stream)
            .field("id", &st.id)
            .field("seq", &st.seq)
            .field("persisted_seq", &st.persisted_seq)
            .field("queued", &st.queued)
            .finish()
    }
}

impl Slot {
    pub(crate) fn new(
        session: SessionId,
        stream: StreamKey,
        shard: u32,
        node: u32,
        dedup_window: usize,
    ) -> Self {
        Self {
            session,
            stream,
            shard,
            node,
            batching: AtomicBool::new(false),
            attached: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            state: SlotLock::new(SlotState {
                id: IdBuf::default(),
                id_known: false,
                seq: 0,
                snap_seq: 0,
                persisted_seq: 0,
                version: 0,
                activity: 0,
                queued: false,
                written_tick: 0,
                dedup: DedupWindow::new(dedup_window),
            }),
        }
    }

    pub(crate) fn session(&self) -> &SessionId {
        &self.session
    }

    pub(crate) fn stream(&self) -> &StreamKey {
        &self.stream
    }

    pub(crate) fn shard(&self) -> u32 {
        self.shard
    }

    pub(crate) fn node(&self) -> u32 {
        self.node
    }

    #[inline]
    fn lock(&self) -> Locked<'_> {
        // Every critical section leaves the state consistent, even if interrupted by a panic
        // (which releases the lock).
        Locked {
            state: self.state.lock(),
            batching: &self.batching,
        }
    }

    /// Records how many streams and handles the registry counts attached (under its lock).
    pub(crate) fn set_attached(&self, n: u32) {
        self.attached.store(n, Ordering::Relaxed);
    }

    /// Whether something is attached, as the registry last counted (see `Registry::refresh`).
    pub(crate) fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed) > 0
    }

    /// How many times the session was forgotten so far: a batch notes it at its first event.
    #[inline]
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Whether a stream may batch its events now (see the field); one relaxed load.
    #[inline]
    pub(crate) fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    /// Hands over a stream's batch: `events` events recorded in the stream while the slot was
    /// batching, the newest ID among them (`Some` if any of them had an `id` field: the
    /// stream's last event ID then) and how many of them had one, first seen at `seen` (see
    /// `clock::wall_nanos`), which versions that ID. The same as recording them one by one:
    /// none of the IDs repeated the one before it (see `batching`), so with two or more, the
    /// newest cannot repeat the slot's newest as the one before it would have been.
    /// A batch begun before the session was forgotten (its `generation` is older) is dropped:
    /// nothing recorded before a forget comes back after it.
    pub(crate) fn publish(
        &self,
        events: u64,
        id: Option<(&[u8], u64)>,
        seen: u64,
        generation: u32,
        hasher: &IdHasher,
    ) -> Recorded {
        let mut st = self.lock();
        if self.generation.load(Ordering::Relaxed) != generation {
            return Recorded {
                duplicate: false,
                enqueue: false,
            };
        }
        st.seq += events;
        let mut duplicate = false;
        match id {
            Some((id, ids)) if ids > 1 && st.dedup.state() == Armed::Idle => {
                st.set_id(id, Some(seen));
            }
            Some((id, _)) => duplicate = st.record_id(id, hasher, Some(seen)),
            None => {}
        }
        Recorded {
            duplicate,
            enqueue: st.turn_dirty(),
        }
    }

    /// Records one event. `id` is the event's `id` field when it had one (`""` clears); `hasher`
    /// fingerprints it for the duplicate window, only while the window is armed.
    ///
    /// Hot path: no allocation unless the ID outgrows the slot's buffer (or an armed window
    /// grows), one short lock.
    #[inline]
    pub(crate) fn record(&self, id: Option<&[u8]>, hasher: &IdHasher) -> Recorded {
        let mut st = self.lock();
        st.seq += 1;
        let mut duplicate = false;
        if let Some(id) = id {
            duplicate = st.record_id(id, hasher, None);
        }
        Recorded {
            duplicate,
            enqueue: st.turn_dirty(),
        }
    }

    /// A new stream or handle attached to the slot: a seam where the events of two sources may
    /// meet, so the duplicate window is armed (again), holding the newest ID.
    pub(crate) fn arm_window(&self, hasher: &IdHasher) {
        let mut st = self.lock();
        let newest = st.newest_hash(hasher);
        st.dedup.arm(newest);
    }

    /// A client reconnected stating `id` as its `Last-Event-ID`: its position is authoritative.
    /// The slot's ID becomes `id` (with a new version, so that it wins over what was stored),
    /// and the duplicate window starts again from it, so that the events the stream sends after
    /// it count as new. Counts as one recorded change.
    pub(crate) fn resume_from(&self, id: &str, hasher: &IdHasher) -> Recorded {
        let mut st = self.lock();
        st.seq += 1;
        st.dedup
            .restart((!id.is_empty()).then(|| hasher.hash(id.as_bytes())));
        st.set_id(id.as_bytes(), None);
        Recorded {
            duplicate: false,
            enqueue: st.turn_dirty(),
        }
    }

    /// An at-least-once stream ended: if the slot still holds `newest` (the stream's last ID,
    /// not moved since by another stream), its position goes back to `settled` (with a new
    /// version, so that it wins in the store), and the duplicate window starts again from it, so
    /// that the events the client gets again count as new. Counts as one recorded change.
    pub(crate) fn settle(&self, newest: &str, settled: &str, hasher: &IdHasher) -> Recorded {
        let mut st = self.lock();
        if !st.id_known || String::from_utf8_lossy(st.id.as_slice()) != newest || newest == settled
        {
            return Recorded {
                duplicate: false,
                enqueue: false,
            };
        }
        st.seq += 1;
        st.dedup
            .restart((!settled.is_empty()).then(|| hasher.hash(settled.as_bytes())));
        st.set_id(settled.as_bytes(), None);
        Recorded {
            duplicate: false,
            enqueue: st.turn_dirty(),
        }
    }

    /// The session was forgotten: the slot forgets its ID and duplicate window, and has nothing
    /// left to write (a snapshot the worker has not taken yet is dropped). Events recorded
    /// afterwards start afresh.
    pub(crate) fn forget(&self) {
        let mut st = self.lock();
        self.generation.fetch_add(1, Ordering::Relaxed);
        st.id.clear();
        st.id_known = false;
        st.dedup.restart(None);
        st.persisted_seq = st.seq;
        st.snap_seq = st.seq;
    }

    /// The newest last event ID recorded in this process: `None` if none was recorded,
    /// `Some("")` if the stream cleared it.
    pub(crate) fn last_event_id(&self) -> Option<String> {
        let st = self.lock();
        st.id_known
            .then(|| String::from_utf8_lossy(st.id.as_slice()).into_owned())
    }

    /// Whether the newest ID recorded in this process is `id`.
    pub(crate) fn holds_id(&self, id: &str) -> bool {
        let st = self.lock();
        // Compared as the client would state it: decoded (an ID that is not UTF-8 comes back
        // with replacement characters).
        st.id_known && String::from_utf8_lossy(st.id.as_slice()) == id
    }

    /// Reads (without taking the lock) the lines a snapshot touches, so that the loads of a
    /// batch of slots miss in parallel before the snapshots take their locks one by one.
    #[inline]
    pub(crate) fn warm(&self) {
        std::hint::black_box((
            self.state.is_locked(),
            self.batching.load(Ordering::Relaxed),
            self.attached.load(Ordering::Relaxed),
            self.session.as_str().as_bytes().first().copied(),
        ));
    }

    /// Takes the slot's newest state for a write, or `None` if everything is written already.
    /// The version is the one stamped when the newest ID was recorded; the activity time moves
    /// only when events were recorded since the previous snapshot. Before any `id` was recorded
    /// the version is 0: the write records activity and never replaces a stored ID. `now` is
    /// the time of the write in nanoseconds since the Unix epoch (`clock::nanos_of`, read once
    /// per batch).
    pub(crate) fn snapshot(&self, now: u64) -> Option<Snapshot> {
        let mut st = self.lock();
        if st.seq == st.persisted_seq {
            return None;
        }
        if st.seq > st.snap_seq {
            st.activity = now;
            st.snap_seq = st.seq;
        }
        // Counted since the latest *successful* write: events of a failed write are reported
        // by the retry that writes them, not lost.
        let events = st.seq - st.persisted_seq;
        Some(Snapshot {
            update: SessionUpdate {
                session: self.session.clone(),
                stream: self.stream.clone(),
                last_event_id: st.id.to_last_event_id(),
                version: st.version,
                last_activity: crate::clock::time_of(st.activity),
            },
            seq: st.snap_seq,
            events,
        })
    }

    /// Marks a snapshot as written. Returns `true` if newer events arrived meanwhile (the slot
    /// stays queued and must be written again), `false` if the slot is now clean.
    pub(crate) fn mark_persisted(&self, seq: u64) -> bool {
        self.mark_written(seq, None) == Written::Dirty
    }

    /// Marks a snapshot as written, by the worker's paced tick number `tick` (never 0), or by
    /// an explicit flush or the shutdown (`None`). A session written on this tick and the one
    /// before stays with the worker while clean ([`Written::Hot`]): its stream is likely to
    /// record more before the next tick, and need not queue it again.
    pub(crate) fn mark_written(&self, seq: u64, tick: Option<u32>) -> Written {
        let mut st = self.lock();
        st.persisted_seq = st.persisted_seq.max(seq);
        let mut hot = false;
        if let Some(tick) = tick {
            hot = st.written_tick != 0 && tick.wrapping_sub(st.written_tick) == 1;
            st.written_tick = tick;
        }
        let written = if st.seq > st.persisted_seq {
            Written::Dirty
        } else if hot {
            Written::Hot
        } else {
            Written::Clean
        };
        st.queued = written != Written::Clean;
        written
    }

    /// Takes the slot back from the worker without a write (the worker is gone).
    pub(crate) fn release(&self) {
        self.lock().queued = false;
    }

    /// Whether the slot has events not yet written.
    pub(crate) fn is_dirty(&self) -> bool {
        let st = self.lock();
        st.seq > st.persisted_seq
    }

    /// Whether the slot is with the worker (it has, or just had, something to write).
    pub(crate) fn is_queued(&self) -> bool {
        self.lock().queued
    }
}

/// The slot's lock held: the state, and on release the `batching` flag set from it.
struct Locked<'a> {
    state: spin::mutex::SpinMutexGuard<'a, SlotState, spin::relax::Yield>,
    batching: &'a AtomicBool,
}

impl std::ops::Deref for Locked<'_> {
    type Target = SlotState;

    #[inline]
    fn deref(&self) -> &SlotState {
        &self.state
    }
}

impl std::ops::DerefMut for Locked<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut SlotState {
        &mut self.state
    }
}

impl Drop for Locked<'_> {
    #[inline]
    fn drop(&mut self) {
        // Still under the lock: the flag follows every change of the state, in order.
        self.batching
            .store(self.state.batching(), Ordering::Relaxed);
    }
}

/// A write handed to the store, with the event count it covers.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) update: SessionUpdate,
    pub(crate) seq: u64,
    /// Events recorded since the latest successful write (reported once that write succeeds).
    pub(crate) events: u64,
}

/// Distinct IDs in a row, none of them a duplicate, after which an armed window is freed.
pub(crate) const WINDOW_QUIET: u32 = 16;

/// Whether a duplicate window is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Armed {
    /// Turned off (a window of 0): no event is a duplicate.
    Off,
    /// Freed after a quiet run: only a repeat of the newest ID is a duplicate (and arms it).
    Idle,
    /// Remembering the newest distinct IDs.
    On,
}

/// The fingerprints of the last `N` distinct event IDs of a session, in a ring that grows with
/// use (4, 8, 16, ... up to `N` entries), so that a session with few events costs little.
///
/// Duplicates come from seams: a reconnect (whose service may replay what the client had), a
/// second stream or handle feeding the same position, a settled position. The window is armed
/// when the slot is created and at each seam, and freed (its memory given back) once
/// [`WINDOW_QUIET`] distinct IDs in a row were new: a stream that does not repeat itself then
/// costs neither the memory nor the fingerprint per event. While freed, a repeat of the newest
/// ID still counts as a duplicate, and arms the window again.
///
/// Fingerprints are 64-bit keyed hashes ([`foldhash`] with a per-process random seed, so IDs
/// cannot be crafted to collide): a false duplicate needs a collision among at most `N` values,
/// about `N / 2^64` per event. (Thirty-two bits were tried: at 64 / 2^32 a false duplicate came
/// once in 67 million events, often enough to show up in a test of a million.)
struct DedupWindow {
    /// The fingerprints, while the window is armed and has seen an ID (boxed: a slot whose
    /// window is freed keeps only the pointer).
    entries: Option<Box<Entries>>,
    capacity: u32,
    /// New IDs in a row since the window was armed or last saw a duplicate.
    quiet: u32,
    armed: bool,
}

/// Up to this many entries a window keeps no tags: a lookup compares the fingerprints
/// themselves (two cache lines at most). A quiet run never holds more (at most
/// [`WINDOW_QUIET`] - 1 new IDs, and the newest one a seam starts from), so a stream that does
/// not repeat itself allocates two blocks for its window (the entries and one ring, grown
/// once), not seven.
const UNTAGGED: usize = WINDOW_QUIET as usize;

struct Entries {
    ring: Vec<u64>,
    /// Once the ring can hold more than [`UNTAGGED`] entries (and only then: allocated means
    /// in use), one byte per entry (the fingerprint's top byte), scanned first with `memchr`:
    /// a lookup reads one cache line of tags, and a full fingerprint only where a tag matches,
    /// instead of all of the ring.
    tags: Vec<u8>,
    /// The next entry to overwrite once the ring is full.
    next: u32,
}

impl DedupWindow {
    fn new(capacity: usize) -> Self {
        Self {
            entries: None,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            quiet: 0,
            armed: capacity > 0,
        }
    }

    #[inline]
    fn state(&self) -> Armed {
        if self.armed {
            Armed::On
        } else if self.capacity == 0 {
            Armed::Off
        } else {
            Armed::Idle
        }
    }

    fn tag(hash: u64) -> u8 {
        (hash >> 56) as u8
    }

    /// Entries allocated (for tests).
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.ring.capacity())
    }

    fn contains(&self, hash: u64) -> bool {
        self.entries.as_ref().is_some_and(|e| {
            if e.tags.capacity() == 0 {
                e.ring.contains(&hash)
            } else {
                memchr::memchr_iter(Self::tag(hash), &e.tags).any(|i| e.ring[i] == hash)
            }
        })
    }

    /// Adds a new ID's fingerprint; after [`WINDOW_QUIET`] new ones in a row, frees the window.
    fn insert(&mut self, hash: u64) {
        self.quiet += 1;
        if self.quiet >= WINDOW_QUIET {
            self.free();
            return;
        }
        self.push(hash);
    }

    fn push(&mut self, hash: u64) {
        if self.capacity == 0 {
            return;
        }
        let capacity = self.capacity as usize;
        let e = self.entries.get_or_insert_with(|| {
            Box::new(Entries {
                ring: Vec::new(),
                tags: Vec::new(),
                next: 0,
            })
        });
        let len = e.ring.len();
        if len < capacity {
            if len == e.ring.capacity() {
                // 4, then all a quiet run needs, then doubling, up to the window.
                let target = match len {
                    0 => 4,
                    len if len < UNTAGGED => UNTAGGED,
                    len => len * 2,
                }
                .min(capacity);
                e.ring.reserve_exact(target - len);
                if target > UNTAGGED {
                    if e.tags.capacity() == 0 {
                        e.tags.reserve_exact(target);
                        e.tags.extend(e.ring.iter().map(|&h| Self::tag(h)));
                    } else {
                        e.tags.reserve_exact(target - len);
                    }
                }
            }
            e.ring.push(hash);
            if e.tags.capacity() != 0 {
                e.tags.push(Self::tag(hash));
            }
        } else if let Some(slot) = e.ring.get_mut(e.next as usize) {
            *slot = hash;
            if let Some(tag) = e.tags.get_mut(e.next as usize) {
                *tag = Self::tag(hash);
            }
            // A compare, not a division: this runs for every new ID.
            e.next += 1;
            if e.next == self.capacity {
                e.next = 0;
            }
        }
    }

    fn saw_duplicate(&mut self) {
        self.quiet = 0;
    }

    /// Arms the window (a seam), keeping what it holds if it is armed already; `newest` is the
    /// newest ID's fingerprint, which a freed window starts from.
    fn arm(&mut self, newest: Option<u64>) {
        if self.capacity == 0 {
            return;
        }
        self.quiet = 0;
        if !self.armed {
            self.armed = true;
            if let Some(hash) = newest {
                self.push(hash);
            }
        }
    }

    /// Starts the window again from `newest` alone (an authoritative new position), armed.
    fn restart(&mut self, newest: Option<u64>) {
        self.clear();
        self.armed = false;
        self.arm(newest);
    }

    /// Forgets every ID (the stream cleared its ID), armed or not.
    fn clear(&mut self) {
        if let Some(e) = &mut self.entries {
            e.ring.clear();
            e.tags.clear();
            e.next = 0;
        }
    }

    /// Gives the window's memory back (a quiet run).
    fn free(&mut self) {
        self.entries = None;
        self.quiet = 0;
        self.armed = false;
    }
}

/// Hashes event IDs for the duplicate windows.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdHasher(foldhash::fast::RandomState);

impl IdHasher {
    pub(crate) fn hash(&self, id: &[u8]) -> u64 {
        self.0.hash_one(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LastEventId;
    use std::time::SystemTime;

    /// A write's time, as the worker passes it.
    fn now() -> u64 {
        crate::clock::nanos_of(SystemTime::now())
    }

    fn slot() -> Slot {
        Slot::new(
            SessionId::new("s").unwrap(),
            crate::StreamKey::whole_session(),
            0,
            0,
            4,
        )
    }

    fn rec(slot: &Slot, hasher: &IdHasher, id: &str) -> Recorded {
        slot.record(Some(id.as_bytes()), hasher)
    }

    #[test]
    fn first_event_enqueues_later_ones_coalesce() {
        let h = IdHasher::default();
        let s = slot();
        assert!(rec(&s, &h, "1").enqueue);
        assert!(!rec(&s, &h, "2").enqueue);
        assert!(!rec(&s, &h, "3").enqueue);
        let snap = s.snapshot(now()).unwrap();
        assert_eq!(snap.update.last_event_id.as_str(), Some("3"));
        assert!(!s.mark_persisted(snap.seq), "clean after the write");
        assert!(rec(&s, &h, "4").enqueue, "clean -> queued enqueues again");
    }

    #[test]
    fn a_session_written_on_consecutive_ticks_stays_queued_until_a_quiet_one() {
        let h = IdHasher::default();
        let s = slot();
        // Written on tick 7: released, as a session written once.
        assert!(rec(&s, &h, "1").enqueue);
        let snap = s.snapshot(now()).unwrap();
        assert_eq!(s.mark_written(snap.seq, Some(7)), Written::Clean);
        assert!(!s.is_queued());
        // Written again on tick 9 (not the next one): released again.
        assert!(rec(&s, &h, "2").enqueue);
        let snap = s.snapshot(now()).unwrap();
        assert_eq!(s.mark_written(snap.seq, Some(9)), Written::Clean);
        // Written on tick 10, right after 9: kept, so the next event needs no queue.
        assert!(rec(&s, &h, "3").enqueue);
        let snap = s.snapshot(now()).unwrap();
        assert_eq!(s.mark_written(snap.seq, Some(10)), Written::Hot);
        assert!(s.is_queued());
        assert!(
            !rec(&s, &h, "4").enqueue,
            "kept by the worker: not queued again"
        );
        // Tick 11 writes it (kept again, as it keeps getting events).
        let snap = s.snapshot(now()).unwrap();
        assert_eq!(snap.update.last_event_id.as_str(), Some("4"));
        assert_eq!(s.mark_written(snap.seq, Some(11)), Written::Hot);
        // Tick 12 finds nothing new: the worker releases it, and the next event queues it.
        assert!(s.snapshot(now()).is_none());
        assert!(!s.mark_persisted(0));
        assert!(!s.is_queued());
        assert!(rec(&s, &h, "5").enqueue);
        // Events during a write still keep it dirty, hot or not.
        let snap = s.snapshot(now()).unwrap();
        assert!(!rec(&s, &h, "6").enqueue);
        assert_eq!(s.mark_written(snap.seq, Some(13)), Written::Dirty);
        assert!(s.is_queued());
    }

    #[test]
    fn events_during_a_write_keep_the_slot_queued() {
        let h = IdHasher::default();
        let s = slot();
        rec(&s, &h, "1");
        let snap = s.snapshot(now()).unwrap();
        assert!(!rec(&s, &h, "2").enqueue);
        assert!(s.mark_persisted(snap.seq), "still dirty");
        let snap2 = s.snapshot(now()).unwrap();
        assert_eq!(snap2.update.last_event_id.as_str(), Some("2"));
        assert!(snap2.update.version > snap.update.version);
    }

    #[test]
    fn events_of_a_failed_write_are_counted_by_the_retry() {
        let h = IdHasher::default();
        let s = slot();
        rec(&s, &h, "1");
        rec(&s, &h, "2");
        let failed = s.snapshot(now()).unwrap();
        assert_eq!(failed.events, 2);
        // The write failed (no mark_persisted); one more event before the retry.
        rec(&s, &h, "3");
        let retry = s.snapshot(now()).unwrap();
        assert_eq!(retry.events, 3, "none lost");
        s.mark_persisted(retry.seq);
        rec(&s, &h, "4");
        assert_eq!(s.snapshot(now()).unwrap().events, 1, "none twice");
    }

    #[test]
    fn version_changes_only_with_the_id() {
        let h = IdHasher::default();
        let s = slot();
        rec(&s, &h, "1");
        let a = s.snapshot(now()).unwrap();
        s.mark_persisted(a.seq);
        s.record(None, &h); // an event without id: activity only
        let b = s.snapshot(now()).unwrap();
        assert_eq!(a.update.version, b.update.version);
        assert!(b.seq > a.seq);
        // A retry of the same snapshot keeps its version.
        let c = s.snapshot(now()).unwrap();
        assert_eq!(c.update.version, b.update.version);
    }

    #[test]
    fn batching_follows_the_worker_and_the_window() {
        let h = IdHasher::default();
        let s = slot();
        rec(&s, &h, "1");
        assert!(
            !s.batching(),
            "queued, but the window of a new slot is armed"
        );
        for id in 2..=WINDOW_QUIET + 1 {
            rec(&s, &h, &id.to_string());
        }
        assert!(s.batching(), "queued, window freed after a quiet run");
        let snap = s.snapshot(now()).unwrap();
        assert!(!s.mark_persisted(snap.seq));
        assert!(!s.batching(), "clean: the next event must queue the slot");
        assert!(rec(&s, &h, "100").enqueue);
        assert!(s.batching());
        s.arm_window(&h);
        assert!(!s.batching(), "a seam armed the window");
    }

    #[test]
    fn a_batch_is_versioned_by_when_its_first_event_was_seen() {
        let h = IdHasher::default();
        let s = slot();
        for id in 1..=WINDOW_QUIET + 1 {
            rec(&s, &h, &id.to_string());
        }
        let before = s.snapshot(now()).unwrap();
        // Seen long ago (a client whose body was dropped long after): never older than the
        // version before, and no newer than when it was seen.
        let r = s.publish(3, Some((b"a", 2)), 5, 0, &h);
        assert!(!r.duplicate && !r.enqueue);
        let old = s.snapshot(now()).unwrap();
        assert_eq!(old.update.version, before.update.version + 1);
        assert_eq!(old.update.last_event_id.as_str(), Some("a"));
        assert_eq!(old.events, before.events + 3);
        let later = crate::clock::wall_nanos() + 60_000_000_000;
        s.publish(1, Some((b"b", 1)), later, 0, &h);
        let snap = s.snapshot(now()).unwrap();
        assert_eq!(snap.update.version, later);
        // Events without an ID: counted, the version stays.
        s.publish(4, None, later + 5, 0, &h);
        let none = s.snapshot(now()).unwrap();
        assert_eq!(none.update.version, later);
        assert_eq!(none.events, snap.events + 4);
        // A batch of one ID that repeats the newest is a duplicate; of two, it is not (the one
        // before it differed).
        assert!(!s.publish(2, Some((b"b", 2)), later, 0, &h).duplicate);
        assert!(s.publish(1, Some((b"b", 1)), later, 0, &h).duplicate);
        assert!(!s.batching(), "a duplicate arms the window");
    }

    #[test]
    fn duplicates_are_detected_within_the_window() {
        let h = IdHasher::default();
        let s = slot();
        for id in ["1", "2", "3"] {
            assert!(!rec(&s, &h, id).duplicate);
        }
        assert!(rec(&s, &h, "2").duplicate);
        assert_eq!(
            s.last_event_id().as_deref(),
            Some("3"),
            "a duplicate changes nothing"
        );
        for id in ["4", "5", "6"] {
            rec(&s, &h, id);
        }
        // Window of 4: "1" and "2" fell out.
        assert!(!rec(&s, &h, "1").duplicate);
        assert!(rec(&s, &h, "6").duplicate);
    }

    #[test]
    fn window_checks_full_fingerprints_behind_equal_tags() {
        let mut w = DedupWindow::new(4);
        // Same top byte, different fingerprints.
        let (a, b) = (0xAB00_0000_0000_0001, 0xAB00_0000_0000_0002);
        w.insert(a);
        assert!(w.contains(a));
        assert!(!w.contains(b), "a tag match alone is not a duplicate");
        for h in [b, 3, 4, 5] {
            w.insert(h);
        }
        assert!(!w.contains(a), "evicted after 4 newer entries");
        assert!(w.contains(b) && w.contains(5));
    }

    #[test]
    fn window_grows_with_use_up_to_its_capacity_then_rings() {
        let mut w = DedupWindow::new(64);
        assert_eq!(w.allocated(), 0, "nothing allocated before the first id");
        w.push(1);
        assert_eq!(w.allocated(), 4);
        for h in 2..=5 {
            w.push(h);
        }
        assert_eq!(w.allocated(), UNTAGGED, "then all a quiet run needs");
        let tags = |w: &DedupWindow| w.entries.as_ref().map_or(0, |e| e.tags.capacity());
        assert_eq!(tags(&w), 0, "no tags while the ring is small");
        assert!((1..=5).all(|h| w.contains(h)) && !w.contains(6));
        for h in 6..=17 {
            w.push(h);
        }
        assert_eq!((w.allocated(), tags(&w)), (32, 32), "tagged past it");
        assert!(
            (1..=17).all(|h| w.contains(h)) && !w.contains(18),
            "the tags of the entries before were filled in"
        );
        for h in 18..=100 {
            w.push(h);
        }
        assert_eq!(w.allocated(), 64, "never past the window");
        assert!(!w.contains(36), "fell out after 64 newer entries");
        assert!(w.contains(37) && w.contains(100));
        let mut off = DedupWindow::new(0);
        off.insert(1);
        off.arm(Some(1));
        assert!(
            !off.contains(1) && off.allocated() == 0 && off.state() == Armed::Off,
            "0 turns it off"
        );
    }

    #[test]
    fn a_quiet_window_is_freed_and_a_repeat_of_the_newest_arms_it_again() {
        let h = IdHasher::default();
        let s = Slot::new(
            SessionId::new("s").unwrap(),
            crate::StreamKey::whole_session(),
            0,
            0,
            64,
        );
        let window = |s: &Slot| {
            let st = s.lock();
            (st.dedup.state(), st.dedup.allocated())
        };
        for i in 0..WINDOW_QUIET - 1 {
            assert!(!rec(&s, &h, &i.to_string()).duplicate);
        }
        assert_eq!(window(&s), (Armed::On, 16), "armed from the start");
        assert!(rec(&s, &h, "3").duplicate, "an older repeat, while armed");
        for i in 100..100 + WINDOW_QUIET {
            assert!(!rec(&s, &h, &i.to_string()).duplicate);
        }
        assert_eq!(window(&s), (Armed::Idle, 0), "freed after a quiet run");
        // Freed: an older repeat moves the position (as with the window off) ...
        assert!(!rec(&s, &h, "105").duplicate);
        assert_eq!(s.last_event_id().as_deref(), Some("105"));
        // ... a repeat of the newest is a duplicate, and arms the window.
        assert!(rec(&s, &h, "105").duplicate);
        assert_eq!(window(&s).0, Armed::On);
        assert!(!rec(&s, &h, "106").duplicate);
        assert!(rec(&s, &h, "105").duplicate, "remembered since the arming");
        assert_eq!(s.last_event_id().as_deref(), Some("106"));

        // A new stream attaching is a seam: armed, starting from the newest ID.
        for i in 200..200 + WINDOW_QUIET {
            rec(&s, &h, &i.to_string());
        }
        assert_eq!(window(&s), (Armed::Idle, 0));
        s.arm_window(&h);
        assert_eq!(window(&s).0, Armed::On);
        let newest = (200 + WINDOW_QUIET - 1).to_string();
        assert!(rec(&s, &h, &newest).duplicate);
    }

    #[test]
    fn clearing_resets_the_window() {
        let h = IdHasher::default();
        let s = slot();
        rec(&s, &h, "1");
        rec(&s, &h, "");
        assert_eq!(s.last_event_id().as_deref(), Some(""));
        assert!(!rec(&s, &h, "1").duplicate);
        assert_eq!(s.last_event_id().as_deref(), Some("1"));
    }

    #[test]
    fn activity_without_any_id_has_version_zero() {
        let h = IdHasher::default();
        let s = slot();
        s.record(None, &h);
        let a = s.snapshot(now()).unwrap();
        assert_eq!(a.update.version, 0, "must not override a stored id");
        assert_eq!(s.last_event_id(), None);
        s.mark_persisted(a.seq);
        // Clearing on a fresh slot is a real change.
        rec(&s, &h, "");
        let b = s.snapshot(now()).unwrap();
        assert!(b.update.version > 0);
        assert_eq!(b.update.last_event_id, LastEventId::Cleared);
    }

    #[test]
    fn nothing_to_write_gives_no_snapshot() {
        let s = slot();
        assert!(s.snapshot(now()).is_none());
    }
}
