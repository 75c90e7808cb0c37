//! [`RedbHistory`]: stream histories in one file, with [`redb`], so that a reconnect resumes after
//! a restart.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::store::{
    AppendReport, DEFAULT_HISTORY_TTL, DEFAULT_LEASE, HistoryEvent, HistoryPage, HistoryStore,
    StoredPosition, StreamEnd, WriterLease,
};
use crate::{
    SessionId, StreamKey,
    store::{
        EventId, StoreError, StoreFuture,
        redb_support::{blocking, open_file, permanent, transient},
    },
};

/// (session, stream, seq) -> the event: its ID (if its block set one) and its bytes. A stream's
/// events are one range, in `seq` order.
const EVENTS: TableDefinition<'_, (&str, &str, u64), &[u8]> =
    TableDefinition::new("sse_history_events");
/// (session, stream) -> the stream's state (see [`Meta`]).
const STREAMS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("sse_history_streams");
/// (session, ID, stream) -> `seq` of the newest event of the stream that set the ID.
const IDS: TableDefinition<'_, (&str, &str, &str), u64> = TableDefinition::new("sse_history_ids");
/// Marks a file as ours.
const META: TableDefinition<'_, &str, &str> = TableDefinition::new("sse_history_meta");
const FORMAT: &str = "tower-sse-tracking-history/1";
/// An event's value: format byte, ID length (`u32::MAX`: none), ID, bytes.
const EVENT_V1: u8 = 1;
/// A stream's value: format byte, then the fields of [`Meta`].
const STREAM_V1: u8 = 1;
const STREAM_LEN: usize = 1 + 8 * 6 + 1;
const NO_ID: u32 = u32::MAX;

/// Stream histories in a single file, for one node that must resume streams across restarts.
///
/// Each batch the persistence worker hands over is one write transaction (one `fsync`); a
/// stream's events are keyed by (session, stream, seq), so reading after a position is a range
/// scan and trimming a stream to its bounds a range delete. An index of IDs per session makes
/// finding a reconnect's ID a short range read. Streams nobody writes to for the TTL are
/// deleted by a cleanup inside a write batch, at most once per cleanup interval. A redb file is
/// opened by one process: this store is for one node (use `RedisHistory` for replicas). The
/// layer's in-memory histories stay the first tier for the streams this process serves.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_sse_tracking::history::{RedbHistory, ReplayConfig};
///
/// # fn main() -> Result<(), tower_sse_tracking::store::StoreError> {
/// let history = RedbHistory::builder()
///     .max_events(1024)
///     .idle_ttl(Duration::from_secs(3600))
///     .open("history.redb")?;
/// let replay = ReplayConfig::default().store(history);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedbHistory {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    limits: RedbHistoryBuilder,
    last_cleanup: Mutex<Option<std::time::Instant>>,
    /// Wakes the readers waiting for a stream's tail (one process writes the file).
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for RedbHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbHistory")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Options of a [`RedbHistory`].
#[derive(Clone, Debug)]
pub struct RedbHistoryBuilder {
    max_events: usize,
    max_bytes: usize,
    idle_ttl: Duration,
    lease: Duration,
    cleanup_interval: Duration,
}

impl Default for RedbHistoryBuilder {
    fn default() -> Self {
        Self {
            max_events: 1024,
            max_bytes: 1 << 20,
            idle_ttl: DEFAULT_HISTORY_TTL,
            lease: DEFAULT_LEASE,
            cleanup_interval: Duration::from_secs(600),
        }
    }
}

impl RedbHistoryBuilder {
    /// Events kept per stream, at most (the oldest go first). Defaults to 1,024.
    pub fn max_events(mut self, n: usize) -> Self {
        self.max_events = n.max(1);
        self
    }

    /// Bytes of events kept per stream, at most (but always its newest event). Defaults to
    /// 1 MiB.
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// How long a stream nobody writes to is kept. Defaults to a day.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// How long a writer holds a stream without writing ([`DEFAULT_LEASE`]).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Least time between two cleanups of expired streams. Defaults to 10 minutes.
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Opens the store at `path`, creating the file if needed.
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] if the file cannot be opened or created, is not a redb file,
    /// is a redb file of another application (a `RedbStore`'s file included: keep sessions and
    /// histories in two files), or is open elsewhere.
    pub fn open(self, path: impl AsRef<Path>) -> Result<RedbHistory, StoreError> {
        let db = open_file(path.as_ref(), META, FORMAT, |txn| {
            txn.open_table(EVENTS).map_err(permanent)?;
            txn.open_table(STREAMS).map_err(permanent)?;
            txn.open_table(IDS).map_err(permanent)?;
            Ok(())
        })?;
        Ok(RedbHistory {
            inner: Arc::new(Inner {
                db,
                limits: self,
                last_cleanup: Mutex::new(None),
                changed: tokio::sync::Notify::new(),
            }),
        })
    }
}

/// A stream's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    writer: u64,
    /// Wall-clock nanoseconds of its writer's last append or touch.
    touched: u64,
    /// `seq` of its newest event (0: none yet).
    last_seq: u64,
    /// Events and bytes kept.
    count: u64,
    bytes: u64,
    /// Wall-clock nanoseconds of its last write (for the TTL).
    written: u64,
    end: StreamEnd,
}

impl Meta {
    fn new(writer: u64, now: u64) -> Self {
        Self {
            writer,
            touched: now,
            last_seq: 0,
            count: 0,
            bytes: 0,
            written: now,
            end: StreamEnd::Open,
        }
    }

    fn encode(&self) -> [u8; STREAM_LEN] {
        let mut out = [0; STREAM_LEN];
        out[0] = STREAM_V1;
        let fields = [
            self.writer,
            self.touched,
            self.last_seq,
            self.count,
            self.bytes,
            self.written,
        ];
        for (i, field) in fields.iter().enumerate() {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&field.to_be_bytes());
        }
        out[STREAM_LEN - 1] = match self.end {
            StreamEnd::Open => 0,
            StreamEnd::Complete => 1,
            StreamEnd::Cut => 2,
        };
        out
    }

    fn decode(value: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::permanent("corrupt stream record in redb history file");
        if value.len() != STREAM_LEN || value[0] != STREAM_V1 {
            return Err(corrupt());
        }
        let field = |i: usize| {
            u64::from_be_bytes(value[1 + i * 8..9 + i * 8].try_into().unwrap_or_default())
        };
        Ok(Self {
            writer: field(0),
            touched: field(1),
            last_seq: field(2),
            count: field(3),
            bytes: field(4),
            written: field(5),
            end: match value[STREAM_LEN - 1] {
                0 => StreamEnd::Open,
                1 => StreamEnd::Complete,
                2 => StreamEnd::Cut,
                _ => return Err(corrupt()),
            },
        })
    }

    /// Its end as readers see it: open past the lease reads as cut.
    fn end(&self, lease: Duration, now: u64) -> StreamEnd {
        match self.end {
            StreamEnd::Open if now.saturating_sub(self.touched) >= nanos(lease) => StreamEnd::Cut,
            end => end,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn now_nanos() -> u64 {
    crate::clock::nanos_of(SystemTime::now())
}

fn encode_event(event: &HistoryEvent, out: &mut Vec<u8>) {
    out.clear();
    out.push(EVENT_V1);
    let id = event.id.as_ref().map(EventId::as_bytes);
    let len = id.map_or(NO_ID, |id| u32::try_from(id.len()).unwrap_or(NO_ID));
    out.extend_from_slice(&len.to_be_bytes());
    if len != NO_ID {
        out.extend_from_slice(id.unwrap_or_default());
    }
    out.extend_from_slice(&event.bytes);
}

/// An event's ID and bytes.
fn decode_event(value: &[u8]) -> Result<(Option<&str>, &[u8]), StoreError> {
    let corrupt = || StoreError::permanent("corrupt event in redb history file");
    if value.len() < 5 || value[0] != EVENT_V1 {
        return Err(corrupt());
    }
    let len = u32::from_be_bytes(value[1..5].try_into().map_err(|_| corrupt())?);
    if len == NO_ID {
        return Ok((None, &value[5..]));
    }
    let end = 5usize
        .checked_add(len as usize)
        .filter(|&e| e <= value.len())
        .ok_or_else(corrupt)?;
    let id = std::str::from_utf8(&value[5..end]).map_err(|_| corrupt())?;
    Ok((Some(id), &value[end..]))
}

/// The bytes an event's value adds to its stream's count.
fn event_size(value: &[u8]) -> u64 {
    decode_event(value).map_or(0, |(_, bytes)| bytes.len() as u64)
}

/// The key just past every key of `session` (keys hold no control characters).
fn past(session: &str) -> String {
    format!("{session}\0")
}

type Events<'t> = redb::Table<'t, (&'static str, &'static str, u64), &'static [u8]>;
type Ids<'t> = redb::Table<'t, (&'static str, &'static str, &'static str), u64>;

impl Inner {
    fn expired(&self, meta: &Meta, now: u64) -> bool {
        now.saturating_sub(meta.written) >= nanos(self.limits.idle_ttl)
    }

    fn cleanup_due(&self) -> bool {
        let last = *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|t| t.elapsed() >= self.limits.cleanup_interval)
    }

    fn append(&self, batch: &[HistoryEvent]) -> Result<AppendReport, StoreError> {
        let mut report = AppendReport::default();
        let now = now_nanos();
        let txn = self.db.begin_write().map_err(transient)?;
        {
            let mut events = txn.open_table(EVENTS).map_err(transient)?;
            let mut streams = txn.open_table(STREAMS).map_err(transient)?;
            let mut ids = txn.open_table(IDS).map_err(transient)?;
            // The batch's streams, read once and written back once.
            let mut touched: HashMap<(&str, &str), Meta> = HashMap::new();
            let mut buf = Vec::new();
            for event in batch {
                let key = (event.session.as_str(), event.stream.as_str());
                let meta = match touched.get_mut(&key) {
                    Some(meta) => meta,
                    None => {
                        let stored = streams
                            .get(key)
                            .map_err(transient)?
                            .map(|v| Meta::decode(v.value()))
                            .transpose()?;
                        let meta = match stored {
                            Some(meta) if !self.expired(&meta, now) => meta,
                            Some(_) => {
                                // Expired: it starts afresh.
                                delete_stream(&mut events, &mut ids, key.0, key.1)?;
                                Meta::new(event.writer, now)
                            }
                            None => Meta::new(event.writer, now),
                        };
                        touched.entry(key).or_insert(meta)
                    }
                };
                if event.writer < meta.writer {
                    report.fenced += 1;
                    continue;
                }
                if event.seq <= meta.last_seq {
                    continue; // already there (a retried batch)
                }
                meta.writer = event.writer;
                meta.end = StreamEnd::Open;
                meta.touched = now;
                meta.written = now;
                meta.last_seq = event.seq;
                meta.count += 1;
                meta.bytes += event.bytes.len() as u64;
                encode_event(event, &mut buf);
                events
                    .insert((key.0, key.1, event.seq), buf.as_slice())
                    .map_err(transient)?;
                if let Some(id) = event.id.as_deref() {
                    ids.insert((key.0, id, key.1), event.seq)
                        .map_err(transient)?;
                }
            }
            for ((session, stream), meta) in &mut touched {
                self.trim(&mut events, &mut ids, session, stream, meta)?;
                streams
                    .insert((*session, *stream), meta.encode().as_slice())
                    .map_err(transient)?;
            }
            if self.cleanup_due() {
                self.purge_expired(&mut events, &mut streams, &mut ids, now)?;
            }
        }
        txn.commit().map_err(transient)?;
        self.changed.notify_waiters();
        Ok(report)
    }

    /// Deletes a stream's oldest events beyond its bounds (but never its newest): one range.
    fn trim(
        &self,
        events: &mut Events<'_>,
        ids: &mut Ids<'_>,
        session: &str,
        stream: &str,
        meta: &mut Meta,
    ) -> Result<(), StoreError> {
        let max_events = self.limits.max_events as u64;
        let max_bytes = self.limits.max_bytes as u64;
        if meta.count <= max_events && meta.bytes <= max_bytes {
            return Ok(());
        }
        // Find the newest event that goes.
        let (mut count, mut bytes, mut cut) = (meta.count, meta.bytes, None);
        for entry in events
            .range((session, stream, 0)..=(session, stream, u64::MAX))
            .map_err(transient)?
        {
            if count <= 1 || (count <= max_events && bytes <= max_bytes) {
                break;
            }
            let (key, value) = entry.map_err(transient)?;
            count -= 1;
            bytes -= event_size(value.value()).min(bytes);
            cut = Some(key.value().2);
        }
        let Some(cut) = cut else {
            return Ok(());
        };
        let mut gone = Vec::new();
        events
            .retain_in(
                (session, stream, 0)..=(session, stream, cut),
                |key, value| {
                    if let Ok((Some(id), _)) = decode_event(value) {
                        gone.push((id.to_owned(), key.2));
                    }
                    false
                },
            )
            .map_err(transient)?;
        for (id, seq) in gone {
            // Only if the index still points at the event that goes.
            let indexed = ids
                .get((session, id.as_str(), stream))
                .map_err(transient)?
                .map(|v| v.value());
            if indexed == Some(seq) {
                ids.remove((session, id.as_str(), stream))
                    .map_err(transient)?;
            }
        }
        meta.count = count;
        meta.bytes = bytes;
        Ok(())
    }

    fn purge_expired(
        &self,
        events: &mut Events<'_>,
        streams: &mut redb::Table<'_, (&'static str, &'static str), &'static [u8]>,
        ids: &mut Ids<'_>,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        for entry in streams.iter().map_err(transient)? {
            let (key, value) = entry.map_err(transient)?;
            if Meta::decode(value.value()).is_ok_and(|m| self.expired(&m, now)) {
                let (session, stream) = key.value();
                expired.push((session.to_owned(), stream.to_owned()));
            }
        }
        for (session, stream) in &expired {
            delete_stream(events, ids, session, stream)?;
            streams
                .remove((session.as_str(), stream.as_str()))
                .map_err(transient)?;
        }
        *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
        Ok(())
    }

    /// A stream's state, unless it expired.
    fn meta(
        &self,
        txn: &redb::ReadTransaction,
        session: &SessionId,
        stream: &StreamKey,
        now: u64,
    ) -> Result<Option<Meta>, StoreError> {
        let streams = txn.open_table(STREAMS).map_err(transient)?;
        let meta = streams
            .get((session.as_str(), stream.as_str()))
            .map_err(transient)?
            .map(|v| Meta::decode(v.value()))
            .transpose()?;
        Ok(meta.filter(|m| !self.expired(m, now)))
    }

    fn finish(
        &self,
        session: &SessionId,
        stream: &StreamKey,
        writer: u64,
        end: StreamEnd,
    ) -> Result<(), StoreError> {
        self.update(&[(session, stream, writer)], |meta| meta.end = end)
    }

    fn touch(&self, leases: &[WriterLease]) -> Result<(), StoreError> {
        let now = now_nanos();
        let leases: Vec<_> = leases
            .iter()
            .map(|l| (&l.session, &l.stream, l.writer))
            .collect();
        self.update(&leases, |meta| meta.touched = now)
    }

    /// Changes the state of streams whose writer is the one given (others are left alone).
    fn update(
        &self,
        streams_of: &[(&SessionId, &StreamKey, u64)],
        change: impl Fn(&mut Meta),
    ) -> Result<(), StoreError> {
        let now = now_nanos();
        let txn = self.db.begin_write().map_err(transient)?;
        {
            let mut streams = txn.open_table(STREAMS).map_err(transient)?;
            for (session, stream, writer) in streams_of {
                let key = (session.as_str(), stream.as_str());
                let meta = streams
                    .get(key)
                    .map_err(transient)?
                    .map(|v| Meta::decode(v.value()))
                    .transpose()?;
                if let Some(mut meta) =
                    meta.filter(|m| m.writer == *writer && !self.expired(m, now))
                {
                    change(&mut meta);
                    streams
                        .insert(key, meta.encode().as_slice())
                        .map_err(transient)?;
                }
            }
        }
        txn.commit().map_err(transient)?;
        self.changed.notify_waiters();
        Ok(())
    }

    fn locate(&self, session: &SessionId, id: &str) -> Result<Option<StoredPosition>, StoreError> {
        let now = now_nanos();
        let txn = self.db.begin_read().map_err(transient)?;
        let ids = txn.open_table(IDS).map_err(transient)?;
        let mut best: Option<(String, u64)> = None;
        for entry in ids.range((session.as_str(), id, "")..).map_err(transient)? {
            let (key, seq) = entry.map_err(transient)?;
            let (s, i, stream) = key.value();
            if s != session.as_str() || i != id {
                break;
            }
            let seq = seq.value();
            if best.as_ref().is_none_or(|(_, b)| seq > *b) {
                best = Some((stream.to_owned(), seq));
            }
        }
        let Some((stream, seq)) = best else {
            return Ok(None);
        };
        let stream = StreamKey::new(&stream)
            .map_err(|_| StoreError::permanent("corrupt stream key in redb history file"))?;
        let Some(meta) = self.meta(&txn, session, &stream, now)? else {
            return Ok(None);
        };
        Ok(Some(StoredPosition {
            stream,
            seq,
            end: meta.end(self.limits.lease, now),
        }))
    }

    fn is_producing(&self, session: &SessionId) -> Result<bool, StoreError> {
        let now = now_nanos();
        let txn = self.db.begin_read().map_err(transient)?;
        let streams = txn.open_table(STREAMS).map_err(transient)?;
        let end = past(session.as_str());
        for entry in streams
            .range((session.as_str(), "")..(end.as_str(), ""))
            .map_err(transient)?
        {
            let (_, value) = entry.map_err(transient)?;
            let meta = Meta::decode(value.value())?;
            if !self.expired(&meta, now) && meta.end(self.limits.lease, now) == StreamEnd::Open {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn read_after(
        &self,
        session: &SessionId,
        stream: &StreamKey,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let now = now_nanos();
        let txn = self.db.begin_read().map_err(transient)?;
        let Some(meta) = self.meta(&txn, session, stream, now)? else {
            return Ok(HistoryPage {
                events: Vec::new(),
                end: StreamEnd::Cut,
            });
        };
        let table = txn.open_table(EVENTS).map_err(transient)?;
        let (s, k) = (session.as_str(), stream.as_str());
        let mut events = Vec::new();
        let mut bytes = 0;
        if after < u64::MAX {
            for entry in table
                .range((s, k, after + 1)..=(s, k, u64::MAX))
                .map_err(transient)?
            {
                let (key, value) = entry.map_err(transient)?;
                let (id, data) = decode_event(value.value())?;
                if !events.is_empty() && bytes + data.len() > limit {
                    break;
                }
                bytes += data.len();
                events.push(HistoryEvent {
                    session: session.clone(),
                    stream: stream.clone(),
                    seq: key.value().2,
                    id: id.map(EventId::new),
                    bytes: Bytes::copy_from_slice(data),
                    writer: meta.writer,
                });
            }
        }
        Ok(HistoryPage {
            events,
            end: meta.end(self.limits.lease, now),
        })
    }

    /// Whether a stream has events after `after`, or has ended.
    fn ready(
        &self,
        session: &SessionId,
        stream: &StreamKey,
        after: u64,
    ) -> Result<bool, StoreError> {
        let now = now_nanos();
        let txn = self.db.begin_read().map_err(transient)?;
        Ok(self
            .meta(&txn, session, stream, now)?
            .is_none_or(|m| m.end(self.limits.lease, now) != StreamEnd::Open || m.last_seq > after))
    }

    fn purge_session(&self, session: &SessionId) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(transient)?;
        {
            let s = session.as_str();
            let end = past(s);
            let e = end.as_str();
            let mut events = txn.open_table(EVENTS).map_err(transient)?;
            events
                .retain_in((s, "", 0)..(e, "", 0), |_, _| false)
                .map_err(transient)?;
            let mut streams = txn.open_table(STREAMS).map_err(transient)?;
            streams
                .retain_in((s, "")..(e, ""), |_, _| false)
                .map_err(transient)?;
            let mut ids = txn.open_table(IDS).map_err(transient)?;
            ids.retain_in((s, "", "")..(e, "", ""), |_, _| false)
                .map_err(transient)?;
        }
        txn.commit().map_err(transient)?;
        self.changed.notify_waiters();
        Ok(())
    }
}

/// Deletes a stream's events and their IDs (not its state).
fn delete_stream(
    events: &mut Events<'_>,
    ids: &mut Ids<'_>,
    session: &str,
    stream: &str,
) -> Result<(), StoreError> {
    let mut gone = Vec::new();
    events
        .retain_in(
            (session, stream, 0)..=(session, stream, u64::MAX),
            |_, value| {
                if let Ok((Some(id), _)) = decode_event(value) {
                    gone.push(id.to_owned());
                }
                false
            },
        )
        .map_err(transient)?;
    for id in gone {
        ids.remove((session, id.as_str(), stream))
            .map_err(transient)?;
    }
    Ok(())
}

impl RedbHistory {
    /// Opens the store at `path` with the default options (see [`builder`](Self::builder)).
    ///
    /// # Errors
    ///
    /// See [`RedbHistoryBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        RedbHistoryBuilder::default().open(path)
    }

    /// Options: bounds per stream, idle TTL, lease, cleanup interval.
    pub fn builder() -> RedbHistoryBuilder {
        RedbHistoryBuilder::default()
    }
}

impl HistoryStore for RedbHistory {
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, AppendReport> {
        let inner = self.inner.clone();
        let batch = batch.to_vec();
        Box::pin(blocking(move || inner.append(&batch)))
    }

    fn finish<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        writer: u64,
        end: StreamEnd,
    ) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let (session, stream) = (session.clone(), stream.clone());
        Box::pin(blocking(move || {
            inner.finish(&session, &stream, writer, end)
        }))
    }

    fn touch<'a>(&'a self, leases: &'a [WriterLease]) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let leases = leases.to_vec();
        Box::pin(blocking(move || inner.touch(&leases)))
    }

    fn lease(&self) -> Duration {
        self.inner.limits.lease
    }

    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredPosition>> {
        let inner = self.inner.clone();
        let (session, id) = (session.clone(), id.to_owned());
        Box::pin(blocking(move || inner.locate(&session, &id)))
    }

    fn is_producing<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, bool> {
        let inner = self.inner.clone();
        let session = session.clone();
        Box::pin(blocking(move || inner.is_producing(&session)))
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage> {
        let inner = self.inner.clone();
        let (session, stream) = (session.clone(), stream.clone());
        Box::pin(blocking(move || {
            inner.read_after(&session, &stream, after, limit)
        }))
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
            let inner = self.inner.clone();
            let (s, k) = (session.clone(), stream.clone());
            let ready = blocking(move || inner.ready(&s, &k, after)).await?;
            if !ready {
                // The lease may run out meanwhile: wait no longer than it.
                let wait = timeout.min(self.inner.limits.lease);
                let _ = tokio::time::timeout(wait, changed).await;
            }
            Ok(())
        })
    }

    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let session = session.clone();
        Box::pin(blocking(move || inner.purge_session(&session)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_is_refused() {
        let meta = Meta {
            writer: 7,
            touched: 1_700_000_000_000_000_000,
            last_seq: 42,
            count: 3,
            bytes: 99,
            written: 5,
            end: StreamEnd::Complete,
        };
        assert_eq!(Meta::decode(&meta.encode()).unwrap(), meta);
        assert!(Meta::decode(b"").is_err());
        let event = HistoryEvent {
            session: SessionId::new("s").unwrap(),
            stream: StreamKey::new("/e").unwrap(),
            seq: 1,
            id: Some(EventId::new("é1")),
            bytes: Bytes::from_static(b"id: \xc3\xa91\ndata: x\n\n"),
            writer: 1,
        };
        let mut buf = Vec::new();
        encode_event(&event, &mut buf);
        let (id, bytes) = decode_event(&buf).unwrap();
        assert_eq!((id, bytes), (Some("é1"), &event.bytes[..]));
        assert_eq!(event_size(&buf), event.bytes.len() as u64);
        assert!(
            decode_event(&[EVENT_V1, 0, 0, 0, 9, b'x']).is_err(),
            "ID past the end"
        );
        assert!(decode_event(&[2, 0, 0, 0, 0]).is_err(), "unknown format");
    }
}
