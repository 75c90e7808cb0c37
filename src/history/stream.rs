//! [`StreamHistory`]: one stream's retained events, as the exact bytes its clients received,
//! bounded by event count and bytes.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use tokio::{sync::Notify, time::Instant};

use super::ring::{ByteRing, SeqRing};

/// The lock around one stream's history. Its one writer (the response producing the stream)
/// takes it once per chunk; readers (reconnects, followers, the store) come rarely and hold it
/// for a copy of at most a page. Taking it is one compare-and-swap and giving it back a plain
/// store, where a `std::sync::Mutex` swaps on release as well (to learn whether to wake a
/// waiter): on the per-event path that second read-modify-write, with the store buffer it
/// drains, cost as much as the rest of the append. A waiter yields its thread between tries.
type HistoryLock<T> = spin::mutex::SpinMutex<T, spin::relax::Yield>;

/// A held [`HistoryLock`] (a panic while it is held releases it, leaving the state as it was
/// left, as a poisoned mutex taken anyway would).
pub(crate) type HistoryGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, spin::relax::Yield>;
use crate::{SessionId, StreamKey, store::EventId};

/// Evictions a history counts before it reports them.
const EVICTIONS_PER_REPORT: u64 = 256;

/// Smallest ring a stream gets; rings double from there up to the stream's byte cap.
const MIN_RING: usize = 256;

/// One retained event (16 bytes: one is written per event).
#[derive(Debug, Clone, Copy)]
struct Meta {
    /// Where the event's bytes end in the byte ring (they start where the previous event's
    /// end), as the low 32 bits of the logical offset: the ring holds less than 4 GiB (see
    /// [`MAX_BYTES`](super::MAX_BYTES)), so the offset is found again from the ring's end.
    end: u32,
    /// Length of its ID; [`NO_ID`] when the event's block did not set one.
    id_len: u32,
    /// An ID of up to [`INLINE_ID`] bytes, in place (most IDs: counters, short timestamps). A
    /// longer one is kept in the ID ring: then these bytes are a `u64` (native order) whose low
    /// 32 bits are those of the logical offset where it ends there.
    id: [u8; INLINE_ID],
}

/// [`Meta::id_len`] of an event whose block had no `id` field.
const NO_ID: u32 = u32::MAX;

/// IDs of up to this many bytes are kept in their event's record, not in the ID ring.
const INLINE_ID: usize = 8;

impl Default for Meta {
    fn default() -> Self {
        Self {
            end: 0,
            id_len: NO_ID,
            id: [0; INLINE_ID],
        }
    }
}

/// The full logical offset in `ring` whose low 32 bits are `low` (within 4 GiB before its end).
#[inline]
fn logical(ring: &ByteRing, low: u32) -> u64 {
    ring.end() - u64::from((ring.end() as u32).wrapping_sub(low))
}

/// An ID of up to [`INLINE_ID`] bytes, zero-padded: built in a register from at most three
/// loads (written byte by byte, the record would be read back before those writes could be
/// forwarded, a stall longer than the whole append).
#[inline]
fn in_place(id: &[u8]) -> [u8; INLINE_ID] {
    let n = id.len();
    let byte = |i: usize| u64::from(id[i]) << (8 * i);
    let half = |i: usize| {
        u64::from(u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]])) << (8 * i)
    };
    let word = match n {
        0 => 0,
        1..4 => byte(0) | byte(n / 2) | byte(n - 1),
        4..8 => half(0) | half(n - 4),
        _ => u64::from_le_bytes(id[..INLINE_ID].try_into().unwrap_or_default()),
    };
    word.to_le_bytes()
}

impl Meta {
    fn sets_id(&self) -> bool {
        self.id_len != NO_ID
    }

    /// Whether its ID is kept in the ID ring.
    fn id_in_ring(&self) -> bool {
        self.sets_id() && self.id_len as usize > INLINE_ID
    }

    /// Logical offset in the byte ring where its bytes end.
    #[inline]
    fn end(&self, bytes: &ByteRing) -> u64 {
        logical(bytes, self.end)
    }

    /// Logical end of its ID in `ids` (only for an ID kept there).
    #[inline]
    fn id_end(&self, ids: &ByteRing) -> u64 {
        logical(ids, u64::from_ne_bytes(self.id) as u32)
    }

    /// The ID its block set, if any, as at most two slices (one unless it wraps in the ring).
    fn id<'a>(&'a self, ids: &'a ByteRing) -> Option<(&'a [u8], &'a [u8])> {
        if !self.sets_id() {
            None
        } else if self.id_in_ring() {
            let end = self.id_end(ids);
            Some(ids.slices(end - u64::from(self.id_len), end))
        } else {
            Some((&self.id[..self.id_len as usize], &[]))
        }
    }
}

/// What a stream's history answers about an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// The event that set the ID is retained: its sequence number.
    At(u64),
    /// Not retained, and events were evicted (or not stored): it may have been there.
    Evicted,
    /// Not retained and nothing was ever evicted: not an ID of this stream.
    Unknown,
}

pub(crate) struct State {
    bytes: ByteRing,
    ids: ByteRing,
    /// The retained events' records, by sequence number.
    events: SeqRing<Meta>,
    /// Logical end of the committed bytes: what follows is the event being received.
    committed: u64,
    /// The event being received outgrew the stream's byte cap: it is not stored.
    oversized: bool,
    /// Events were evicted or not stored: an ID not found may have been there.
    pub(crate) gap: bool,
    /// Responses appending to this history now.
    pub(crate) producers: u32,
    /// The last producer's upstream ended normally: the history holds the whole stream.
    pub(crate) complete: bool,
    /// When the last producer ended.
    pub(crate) finished_at: Option<Instant>,
    /// The head of the response that started the stream, for replays answered from history.
    pub(crate) head: HeaderMap,
    /// Bytes this history holds (rings, event records), as counted in the global total.
    pub(crate) accounted: usize,
    /// The `seq` of the newest event handed to the history store (see `HistoryEvent::seq`).
    stamp: u64,
    /// What the history holds besides its rings and records (its head, its own struct).
    fixed: usize,
    /// Events evicted and not yet reported (reported in batches: in a full history every
    /// append evicts one).
    unreported_evictions: u64,
    /// An event was too large to keep, not yet reported.
    unreported_oversized: bool,
    /// The history was dropped (expired, evicted, its session forgotten): nothing is stored
    /// any more, and followers stop.
    pub(crate) dropped: bool,
}

/// One stream's history: (session, stream key) and its events.
pub(crate) struct StreamHistory {
    pub(crate) session: SessionId,
    pub(crate) key: StreamKey,
    /// The keyed hash of the credential the stream is bound to, if any.
    pub(crate) credential: Option<u64>,
    state: HistoryLock<State>,
    /// Wakes the responses that follow the live tail.
    pub(crate) appended: Notify,
    /// Responses following the live tail (the producer wakes them only if there are some).
    followers: std::sync::atomic::AtomicIsize,
    /// Where the history sits on the list of finished streams (`u32::MAX`: not on it). Changed
    /// under that list's lock only.
    pub(crate) lru: AtomicU32,
    /// Its writer in the history store, if there is one (see `HistoryEvent::writer`): set when
    /// a producer starts with none before it.
    writer: AtomicU64,
}

impl std::fmt::Debug for StreamHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHistory")
            .field("session", &self.session)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The limits one history is kept within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) max_events: usize,
    pub(crate) max_bytes: usize,
}

/// What an append did to the bytes accounted for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// Change of the bytes this history holds.
    pub(crate) delta: isize,
    /// Events evicted to stay within the bounds.
    pub(crate) evicted: u64,
    /// An event was too large to keep.
    pub(crate) dropped: bool,
}

impl StreamHistory {
    pub(crate) fn new(
        session: SessionId,
        key: StreamKey,
        head: HeaderMap,
        credential: Option<u64>,
    ) -> Self {
        let fixed = std::mem::size_of::<StreamHistory>()
            + head
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 64)
                .sum::<usize>();
        let state = State {
            bytes: ByteRing::default(),
            ids: ByteRing::default(),
            events: SeqRing::default(),
            committed: 0,
            oversized: false,
            gap: false,
            producers: 0,
            complete: false,
            finished_at: None,
            head,
            accounted: 0,
            fixed,
            stamp: 0,
            unreported_evictions: 0,
            unreported_oversized: false,
            dropped: false,
        };
        Self {
            session,
            key,
            credential,
            state: HistoryLock::new(state),
            appended: Notify::new(),
            followers: std::sync::atomic::AtomicIsize::new(0),
            lru: AtomicU32::new(u32::MAX),
            writer: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> HistoryGuard<'_, State> {
        self.state.lock()
    }

    /// A new writer takes the stream over in the history store: the wall-clock time now, past
    /// the previous writer's.
    pub(crate) fn new_writer(&self) {
        let previous = self.writer.load(Ordering::Relaxed);
        self.writer
            .store(crate::clock::stamp(previous), Ordering::Relaxed);
    }

    /// Its writer in the history store.
    pub(crate) fn writer(&self) -> u64 {
        self.writer.load(Ordering::Relaxed)
    }

    /// Its writer in the history store, with the stream's identity.
    pub(crate) fn lease(&self) -> super::WriterLease {
        super::WriterLease {
            session: self.session.clone(),
            stream: self.key.clone(),
            writer: self.writer(),
        }
    }

    /// A response starts (`1`) or stops (`-1`) following the live tail.
    pub(crate) fn follow(&self, delta: isize) {
        self.followers.fetch_add(delta, Ordering::SeqCst);
    }

    /// Wakes the followers, if there are any (called after appends).
    pub(crate) fn wake_followers(&self) {
        if self.followers.load(Ordering::SeqCst) > 0 {
            self.appended.notify_waiters();
        }
    }
}

impl State {
    /// Sequence number the next committed event gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.events.end()
    }

    pub(crate) fn first_seq(&self) -> u64 {
        self.events.start()
    }

    /// Bytes retained in committed events.
    #[cfg(test)]
    pub(crate) fn committed_bytes(&self) -> usize {
        (self.committed - self.bytes.start()) as usize
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    fn account(&mut self) -> isize {
        let now = self.fixed
            + self.bytes.capacity()
            + self.ids.capacity()
            + self.events.capacity() * std::mem::size_of::<Meta>();
        let delta = now as isize - self.accounted as isize;
        self.accounted = now;
        delta
    }

    /// Appends bytes of the event being received. `room(n)` says whether the ring may grow by
    /// `n` bytes (the global cap may forbid it: then the oldest events make room). Hot path: a copy into
    /// the ring, an allocation only when the ring grows. What it did to the bytes accounted for
    /// is collected by [`State::take_appended`].
    #[inline]
    pub(crate) fn write(&mut self, part: &[u8], bounds: Bounds, room: impl Fn(usize) -> bool) {
        if self.oversized || self.dropped || part.is_empty() {
            return;
        }
        if part.len() <= self.bytes.spare() && self.bytes.len() + part.len() <= bounds.max_bytes {
            // Steady state: the ring has room.
            self.bytes.push(part);
        } else {
            self.write_making_room(part, bounds, room);
        }
    }

    #[cold]
    fn write_making_room(&mut self, part: &[u8], bounds: Bounds, room: impl Fn(usize) -> bool) {
        let pending = (self.bytes.end() - self.committed) as usize;
        if pending + part.len() > bounds.max_bytes {
            // This event alone is over the cap: it is not stored, and the stream has a gap.
            self.bytes.truncate(self.committed);
            self.oversized = true;
            self.gap = true;
            self.unreported_oversized = true;
            return;
        }
        // The byte cap: the oldest events make room.
        while self.bytes.len() + part.len() > bounds.max_bytes && !self.events.is_empty() {
            self.evict_front();
        }
        if self.bytes.spare() < part.len() {
            let needed = self.bytes.len() + part.len();
            let grown = needed
                .max(self.bytes.capacity() * 2)
                .max(MIN_RING)
                .min(bounds.max_bytes.max(needed));
            if self.bytes.capacity() == 0 || room(grown - self.bytes.capacity()) {
                self.bytes.resize(grown);
            } else {
                // No room to grow: the oldest events make room in the ring as it is.
                while self.bytes.spare() < part.len() && !self.events.is_empty() {
                    self.evict_front();
                }
                if self.bytes.spare() < part.len() {
                    self.bytes.resize(self.bytes.len() + part.len());
                }
            }
        }
        self.bytes.push(part);
    }

    /// A whole event, `part` being the last of its bytes: [`write`](Self::write) then
    /// [`commit`](Self::commit), in one pass for the usual case (the event came in one chunk,
    /// the rings have room).
    #[inline]
    pub(crate) fn append(
        &mut self,
        part: &[u8],
        id: &[u8],
        id_set: bool,
        bounds: Bounds,
        room: impl Fn(usize) -> bool,
    ) {
        let usual = !(self.oversized || self.dropped)
            && self.committed == self.bytes.end()
            && part.len() <= self.bytes.spare()
            && self.bytes.len() + part.len() <= bounds.max_bytes
            && (!id_set || id.len() <= INLINE_ID || id.len() <= self.ids.spare());
        if !usual {
            self.write(part, bounds, room);
            self.commit(id, id_set, bounds);
            return;
        }
        self.bytes.push(part);
        self.keep_event(id, id_set, bounds);
    }

    /// The event being received is complete: it is retained with its ID (`id_set`: its block
    /// set `id`), as the stream's raw bytes (decoded, with replacement characters if they are
    /// not UTF-8, only where read). Evicts the oldest events beyond the bounds.
    #[inline]
    pub(crate) fn commit(&mut self, id: &[u8], id_set: bool, bounds: Bounds) {
        if self.dropped {
            return;
        }
        if std::mem::take(&mut self.oversized) {
            self.committed = self.bytes.end();
            return;
        }
        // An ID of 4 GiB or more (a parser allowed it, and the byte cap too) is not kept.
        let id_set = id_set && id.len() < NO_ID as usize;
        self.keep_event(id, id_set, bounds);
    }

    /// The bytes up to the ring's end are a complete event: its record goes after the others
    /// (the oldest make room first, so the records never grow past the bound). Inlined into
    /// both callers, as the code it replaces was: a call per event costs on the append path.
    #[inline(always)]
    fn keep_event(&mut self, id: &[u8], id_set: bool, bounds: Bounds) {
        while self.events.len() >= bounds.max_events {
            self.evict_front();
        }
        // The record is built just before it is written, so that it stays in registers.
        let (id_len, id) = if !id_set {
            (NO_ID, [0; INLINE_ID])
        } else if id.len() <= INLINE_ID {
            (id.len() as u32, in_place(id))
        } else {
            (id.len() as u32, self.keep_long_id(id))
        };
        self.events.push_back(Meta {
            end: self.bytes.end() as u32,
            id_len,
            id,
        });
        self.committed = self.bytes.end();
    }

    /// An ID longer than [`INLINE_ID`] goes to the ID ring; returns its record's `id` (where
    /// it ends there).
    fn keep_long_id(&mut self, id: &[u8]) -> [u8; INLINE_ID] {
        if self.ids.spare() < id.len() {
            let needed = self.ids.len() + id.len();
            self.ids.resize(needed.max(self.ids.capacity() * 2).max(64));
        }
        self.ids.push(id);
        u64::from(self.ids.end() as u32).to_ne_bytes()
    }

    /// What the appends since the last call did: the change of the bytes this history holds
    /// (its rings and records grow rarely, so this is checked once per chunk, not per event),
    /// evictions (in batches: in a full history every append evicts one), an event dropped.
    pub(crate) fn take_appended(&mut self) -> Appended {
        let evicted = if self.unreported_evictions >= EVICTIONS_PER_REPORT {
            std::mem::take(&mut self.unreported_evictions)
        } else {
            0
        };
        Appended {
            delta: self.account(),
            evicted,
            dropped: std::mem::take(&mut self.unreported_oversized),
        }
    }

    /// The newest committed event, for the history store: its bytes, the ID its block set, and
    /// a new `seq` (the wall clock, strictly increasing per stream).
    pub(crate) fn newest_for_store(&mut self) -> Option<(Bytes, Option<EventId>, u64)> {
        let meta = *self.events.back()?;
        let start = match self.events.len() {
            1 => self.bytes.start(),
            n => self.events[n - 2].end(&self.bytes),
        };
        let (a, b) = self.bytes.slices(start, meta.end(&self.bytes));
        let mut bytes = BytesMut::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        self.stamp = crate::clock::stamp(self.stamp);
        let id = meta
            .id(&self.ids)
            .map(|(a, b)| EventId::from_utf8_lossy_parts(a, b));
        Some((bytes.freeze(), id, self.stamp))
    }

    /// Evictions not reported yet (the history is finished or dropped: report them now).
    pub(crate) fn take_evictions(&mut self) -> u64 {
        std::mem::take(&mut self.unreported_evictions)
    }

    #[inline]
    fn evict_front(&mut self) {
        let Some(meta) = self.events.pop_front() else {
            return;
        };
        self.bytes.pop_to(meta.end(&self.bytes));
        if meta.id_in_ring() {
            self.ids.pop_to(meta.id_end(&self.ids));
        }
        self.gap = true;
        self.unreported_evictions += 1;
    }

    /// Where the newest event that set `id` is, if retained. A scan from the newest event back
    /// (reconnects ask for recent IDs): O(events retained), only on a reconnect, so that
    /// appending stays a copy with no index to keep.
    pub(crate) fn find(&self, id: &str) -> Found {
        // IDs are kept raw: one that is not UTF-8 reached the client decoded, with replacement
        // characters, and comes back that way.
        let decoded = id.contains(char::REPLACEMENT_CHARACTER);
        let id = id.as_bytes();
        if !decoded && id.len() <= INLINE_ID {
            // Only an ID kept in place can be this one: compared as one word with each record.
            let (len, key) = (id.len() as u32, in_place(id));
            if let Some(i) = self
                .events
                .iter()
                .rposition(|meta| meta.id_len == len && meta.id == key)
            {
                return Found::At(self.first_seq() + i as u64);
            }
            return self.not_found();
        }
        for (i, meta) in self.events.iter().enumerate().rev() {
            if !decoded && meta.id_len as usize != id.len() {
                // Not this one (or no ID at all): nothing to read from the ring.
                continue;
            }
            let found = if !meta.sets_id() {
                false
            } else if meta.id_in_ring() {
                let end = meta.id_end(&self.ids);
                self.ids.equals(end - u64::from(meta.id_len), end, id)
            } else {
                meta.id[..meta.id_len as usize] == *id
            };
            // Not the raw bytes: perhaps what the client decoded them to.
            let found = found
                || (decoded
                    && meta.id(&self.ids).is_some_and(|(a, b)| {
                        String::from_utf8_lossy(&[a, b].concat()).as_bytes() == id
                    }));
            if found {
                return Found::At(self.first_seq() + i as u64);
            }
        }
        self.not_found()
    }

    /// What an ID that is not retained may be.
    fn not_found(&self) -> Found {
        if self.gap {
            Found::Evicted
        } else {
            Found::Unknown
        }
    }

    /// Calls `f` with every ID the retained events set.
    pub(crate) fn for_each_id(&self, mut f: impl FnMut(&[u8])) {
        let mut joined = Vec::new();
        for (a, b) in self.events.iter().filter_map(|m| m.id(&self.ids)) {
            let id = if b.is_empty() {
                a
            } else {
                joined.clear();
                joined.extend_from_slice(a);
                joined.extend_from_slice(b);
                &joined
            };
            // As the client got it (see `find`).
            match String::from_utf8_lossy(id) {
                std::borrow::Cow::Borrowed(valid) => f(valid.as_bytes()),
                std::borrow::Cow::Owned(decoded) => f(decoded.as_bytes()),
            }
        }
    }

    /// The ID in effect after event `seq` (the newest set at or before it that is retained), if
    /// any.
    pub(crate) fn id_at(&self, seq: u64) -> Option<String> {
        let upto = usize::try_from(seq.checked_sub(self.first_seq())?).ok()?;
        // From `seq` back, by index: `iter().take(..).rev()` stepped through every record after
        // it first, which made a replay of N events O(N^2 / page).
        let (a, b) = (0..=upto.min(self.events.len().checked_sub(1)?))
            .rev()
            .find_map(|i| self.events.at(i).id(&self.ids))?;
        Some(String::from_utf8_lossy(&[a, b].concat()).into_owned())
    }

    /// The bytes of the events after `after` (a sequence number; `None`: from the oldest
    /// retained) and before `until` (if given), at most `limit` bytes but at least one event,
    /// and the sequence number of the last event they hold. `None` when there is nothing there
    /// (or it is no longer retained).
    pub(crate) fn read_after(
        &self,
        after: Option<u64>,
        until: Option<u64>,
        limit: usize,
    ) -> Option<(Bytes, u64)> {
        let first = after.map_or(self.first_seq(), |a| a + 1);
        let start_ix = usize::try_from(first.checked_sub(self.first_seq())?).ok()?;
        let end_ix = until.map_or(self.events.len(), |u| {
            usize::try_from(u.saturating_sub(self.first_seq()))
                .unwrap_or(usize::MAX)
                .min(self.events.len())
        });
        if start_ix >= end_ix {
            return None;
        }
        let from = if start_ix == 0 {
            self.bytes.start()
        } else {
            self.events[start_ix - 1].end(&self.bytes)
        };
        let mut last = start_ix;
        // Distances within the ring fit 32 bits: compared there, with no offset to rebuild.
        let (from_low, limit) = (from as u32, u32::try_from(limit).unwrap_or(u32::MAX));
        while last + 1 < end_ix && self.events.at(last + 1).end.wrapping_sub(from_low) <= limit {
            last += 1;
        }
        let to = self.events[last].end(&self.bytes);
        let (a, b) = self.bytes.slices(from, to);
        let mut out = BytesMut::with_capacity(a.len() + b.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        Some((out.freeze(), self.first_seq() + last as u64))
    }

    /// The global cap is passed by `over` bytes: the oldest events go (the newest stays, a
    /// floor for a live stream), and the rings shrink to what is left.
    pub(crate) fn trim(&mut self, over: usize) -> Appended {
        let mut out = Appended::default();
        let before = self.accounted;
        // The byte ring's capacity is a power of two: it gives memory back only once it can
        // halve. The oldest events go until it can shrink by `over` (or to its smallest).
        let capacity = self.bytes.capacity();
        let mut target = capacity;
        while capacity - target < over && target > MIN_RING {
            target /= 2;
        }
        while self.bytes.len() > target && self.events.len() > 1 {
            self.evict_front();
        }
        out.evicted = std::mem::take(&mut self.unreported_evictions);
        let keep = self.bytes.len().max(MIN_RING.min(capacity));
        if keep < self.bytes.capacity() {
            self.bytes.resize(keep);
        }
        if self.ids.len() < self.ids.capacity() {
            self.ids.resize(self.ids.len());
        }
        self.events.shrink_to_fit();
        out.delta = self.account();
        debug_assert!(self.accounted <= before || out.delta >= 0);
        out
    }

    /// The history is dropped: frees what it holds. Returns the bytes it had accounted for.
    pub(crate) fn drop_all(&mut self) -> usize {
        self.dropped = true;
        self.bytes = ByteRing::default();
        self.ids = ByteRing::default();
        self.events.clear();
        self.committed = 0;
        // Nothing is held any more, its own struct included: what is accounted for is given
        // back once, and a producer still appending reports nothing after this.
        self.fixed = 0;
        std::mem::take(&mut self.accounted)
    }

    /// Gives up the bytes of an event not completed (its producer went away mid-event).
    pub(crate) fn abandon_pending(&mut self) {
        self.bytes.truncate(self.committed);
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_events: 4,
        max_bytes: 64,
    };

    fn history() -> StreamHistory {
        StreamHistory::new(
            SessionId::new("s").unwrap(),
            StreamKey::new("/e").unwrap(),
            HeaderMap::new(),
            None,
        )
    }

    fn event(st: &mut State, id: &str) {
        let bytes = format!("id: {id}\ndata: x\n\n");
        // In two parts, as frames would split it.
        let (a, b) = bytes.as_bytes().split_at(3);
        st.write(a, BOUNDS, |_| true);
        st.write(b, BOUNDS, |_| true);
        st.commit(id.as_bytes(), true, BOUNDS);
    }

    #[test]
    fn events_are_kept_byte_exact_found_by_id_and_bounded() {
        let h = history();
        let mut st = h.lock();
        for id in ["1", "2", "3"] {
            event(&mut st, id);
        }
        assert_eq!(st.find("2"), Found::At(1));
        assert_eq!(st.find("9"), Found::Unknown);
        let (bytes, last) = st.read_after(Some(0), None, 1 << 20).unwrap();
        assert_eq!(&bytes[..], b"id: 2\ndata: x\n\nid: 3\ndata: x\n\n");
        assert_eq!(last, 2);
        assert!(
            st.read_after(Some(2), None, 1 << 20).is_none(),
            "nothing after the newest"
        );
        // A limit smaller than an event still yields one event.
        assert_eq!(st.read_after(None, None, 1).unwrap().1, 0);
        // Bounded by count: 4 events; the oldest go, and an ID no longer retained may have
        // been there.
        for id in ["4", "5", "6"] {
            event(&mut st, id);
        }
        assert_eq!(st.len(), 4);
        assert_eq!(st.find("1"), Found::Evicted);
        assert_eq!(st.find("3"), Found::At(2));
        assert_eq!(st.id_at(5).as_deref(), Some("6"));
        assert!(st.committed_bytes() <= BOUNDS.max_bytes);
    }

    /// IDs are kept raw; one that is not UTF-8 is found, listed and read back as the client has
    /// it, decoded with replacement characters.
    #[test]
    fn an_id_that_is_not_utf8_is_found_as_the_client_decoded_it() {
        let h = history();
        let mut st = h.lock();
        for id in [&b"a\xFF"[..], b"b"] {
            let mut bytes = b"id: ".to_vec();
            bytes.extend_from_slice(id);
            bytes.extend_from_slice(b"\ndata: x\n\n");
            st.write(&bytes, BOUNDS, |_| true);
            st.commit(id, true, BOUNDS);
        }
        assert_eq!(st.find("a\u{FFFD}"), Found::At(0));
        assert_eq!(st.find("b"), Found::At(1));
        assert_eq!(st.find("a"), Found::Unknown);
        assert_eq!(st.id_at(0).as_deref(), Some("a\u{FFFD}"));
        let mut ids = Vec::new();
        st.for_each_id(|id| ids.push(String::from_utf8(id.to_vec()).unwrap()));
        assert_eq!(ids, ["a\u{FFFD}", "b"]);
    }

    #[test]
    fn an_event_over_the_byte_cap_is_not_kept_and_leaves_a_gap() {
        let h = history();
        let mut st = h.lock();
        event(&mut st, "1");
        let big = vec![b'x'; 100];
        st.write(b"data: ", BOUNDS, |_| true);
        assert!(!st.take_appended().dropped);
        st.write(&big, BOUNDS, |_| true);
        assert!(st.take_appended().dropped);
        st.write(b"\n\n", BOUNDS, |_| true);
        st.commit(b"1", false, BOUNDS);
        event(&mut st, "2");
        assert!(st.gap);
        assert_eq!(st.len(), 2);
        let (bytes, _) = st.read_after(None, None, 1 << 20).unwrap();
        assert_eq!(&bytes[..], b"id: 1\ndata: x\n\nid: 2\ndata: x\n\n");
    }

    #[test]
    fn without_room_to_grow_the_oldest_events_make_room() {
        let h = history();
        let mut st = h.lock();
        for id in ["1", "2"] {
            event(&mut st, id);
        }
        let cap = st.bytes.capacity();
        for i in 3..20 {
            let bytes = format!("id: {i}\ndata: x\n\n");
            st.write(bytes.as_bytes(), BOUNDS, |_| false);
            st.commit(i.to_string().as_bytes(), true, BOUNDS);
        }
        assert_eq!(st.bytes.capacity(), cap, "never grew");
        assert!(st.len() >= 1);
        let (bytes, last) = st.read_after(None, None, 1 << 20).unwrap();
        assert!(bytes.ends_with(b"id: 19\ndata: x\n\n"));
        assert_eq!(last, 18);
    }

    /// IDs of every length, in place (up to 8 bytes) or in the ID ring, among events without
    /// one, appended whole or in parts, through many wraps of both rings: each is found,
    /// listed and read back as set.
    #[test]
    fn short_and_long_ids_are_kept_through_wraps_and_evictions() {
        // Both rings start just below a multiple of 2^32, so that the records' 32-bit offsets
        // wrap during the run.
        for start in [0, (1 << 32) - 1500, (5 << 32) - 700] {
            ids_kept_from(start);
        }
    }

    fn ids_kept_from(start: u64) {
        let bounds = Bounds {
            max_events: 7,
            max_bytes: 1 << 10,
        };
        let h = history();
        let mut st = h.lock();
        st.bytes.start_at(start);
        st.ids.start_at(start + 3);
        st.committed = start;
        // (id set by the event, if any), for the events retained.
        let mut model: std::collections::VecDeque<Option<String>> = Default::default();
        let mut last_set = String::new();
        // The retained events' bytes.
        let mut texts: std::collections::VecDeque<String> = Default::default();
        for i in 0..300usize {
            let id = (i % 5 != 4).then(|| "abcdefghijklmnopqrstuvwxyz"[..i % 21].to_string());
            let bytes = match &id {
                Some(id) => format!("id: {id}\ndata: {i}\n\n"),
                None => format!("data: {i}\n\n"),
            };
            // As the parser reports it: an event without `id` carries the last ID set.
            if let Some(id) = &id {
                last_set = id.clone();
            }
            let id_bytes = last_set.as_bytes();
            match i % 3 {
                // In one piece: the usual path.
                0 => st.append(bytes.as_bytes(), id_bytes, id.is_some(), bounds, |_| true),
                // Its start in an earlier chunk.
                1 => {
                    let (a, b) = bytes.as_bytes().split_at(4);
                    st.write(a, bounds, |_| true);
                    st.append(b, id_bytes, id.is_some(), bounds, |_| true);
                }
                _ => {
                    st.write(bytes.as_bytes(), bounds, |_| true);
                    st.commit(id_bytes, id.is_some(), bounds);
                }
            }
            model.push_back(id);
            texts.push_back(bytes.clone());
            if model.len() > bounds.max_events {
                model.pop_front();
                texts.pop_front();
            }
            assert_eq!(st.len(), model.len());
            let first = st.first_seq();
            let mut listed = Vec::new();
            st.for_each_id(|id| listed.push(String::from_utf8(id.to_vec()).unwrap()));
            let expected: Vec<String> = model.iter().flatten().cloned().collect();
            assert_eq!(listed, expected, "event {i}");
            let mut in_effect = None;
            for (k, id) in model.iter().enumerate() {
                let seq = first + k as u64;
                if let Some(id) = id {
                    in_effect = Some(id.clone());
                    // The newest event that set it.
                    let newest = model.iter().rposition(|m| m.as_ref() == Some(id)).unwrap();
                    assert_eq!(st.find(id), Found::At(first + newest as u64), "{id:?}");
                }
                assert_eq!(st.id_at(seq), in_effect, "event {i}, seq {seq}");
            }
            let (bytes, last) = st
                .read_after(st.next_seq().checked_sub(2), None, 1 << 20)
                .unwrap();
            assert_eq!(last, st.next_seq() - 1);
            assert_eq!(bytes, texts.back().unwrap().as_bytes(), "event {i}");
            let (all, _) = st.read_after(None, None, 1 << 20).unwrap();
            assert_eq!(
                all,
                texts
                    .iter()
                    .map(String::as_str)
                    .collect::<String>()
                    .as_bytes(),
                "event {i}"
            );
            let (newest, newest_id, _) = st.newest_for_store().unwrap();
            assert_eq!(newest, texts.back().unwrap().as_bytes());
            assert_eq!(newest_id.as_deref(), model.back().unwrap().as_deref());
            // The ID ring holds the retained long IDs and nothing else.
            let long: usize = model
                .iter()
                .flatten()
                .map(String::len)
                .filter(|&n| n > INLINE_ID)
                .sum();
            assert_eq!(st.ids.len(), long, "event {i}");
        }
        assert!(st.ids.capacity() > 0, "long IDs went to the ring");
    }

    /// A dropped history gives its bytes back once: a producer still appending to it reports
    /// nothing more.
    #[test]
    fn a_dropped_history_accounts_for_nothing_after() {
        let h = history();
        let mut st = h.lock();
        event(&mut st, "1");
        let held = st.take_appended().delta;
        assert!(held > 0);
        assert_eq!(st.drop_all(), held as usize);
        event(&mut st, "2");
        assert_eq!(st.take_appended(), Appended::default());
        assert_eq!(st.len(), 0);
    }
}
