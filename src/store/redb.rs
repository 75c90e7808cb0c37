//! [`RedbStore`]: a durable store in one file, with [`redb`] (pure Rust, no C toolchain).

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use tokio::time::Instant;

use super::{
    EventId, LastEventId, SessionRecord, SessionStore, SessionUpdate, StoreError, StoreFuture,
};
use crate::{SessionId, StreamKey};

/// (Session key, stream key) -> encoded [`SessionRecord`]. Ordered by session first, so that a
/// session's streams are one range.
const POSITIONS: TableDefinition<'_, (&str, &str), &[u8]> =
    TableDefinition::new("sse_tracking_positions");
/// Marks a file as ours, so that opening someone else's redb file is an error, not a mess.
const META: TableDefinition<'_, &str, &str> = TableDefinition::new("sse_tracking_meta");
const FORMAT_KEY: &str = "format";
/// Format 1 (one position per session, before 0.1 was released) is refused, not migrated.
const FORMAT: &str = "tower-sse-tracking/2";
/// Encoding of a record value: format byte, version, activity, cleared flag, then the ID.
const RECORD_V1: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8 + 1;

/// A durable store in a single file, for single-node deployments that must resume sessions
/// across restarts.
///
/// Each batch is one write transaction (one `fsync`); versions only move forward. Records are
/// keyed by (session, stream), so that deleting a session is one range. Records idle for longer
/// than the TTL read as absent and are deleted by a cleanup that runs inside a write
/// batch at most once per cleanup interval (or on [`purge_expired`](Self::purge_expired)).
/// Calls run on Tokio's blocking thread pool.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_sse_tracking::store::RedbStore;
///
/// # fn main() -> Result<(), tower_sse_tracking::store::StoreError> {
/// let store = RedbStore::builder()
///     .idle_ttl(Duration::from_secs(24 * 3600))
///     .open("tracking.redb")?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    idle_ttl: Duration,
    cleanup_interval: Duration,
    last_cleanup: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("idle_ttl", &self.inner.idle_ttl)
            .field("cleanup_interval", &self.inner.cleanup_interval)
            .finish_non_exhaustive()
    }
}

/// Options of a [`RedbStore`].
#[derive(Clone, Debug)]
pub struct RedbStoreBuilder {
    idle_ttl: Duration,
    cleanup_interval: Duration,
}

/// Default time a session is kept after its last write: 7 days.
const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for RedbStoreBuilder {
    fn default() -> Self {
        Self {
            idle_ttl: DEFAULT_IDLE_TTL,
            cleanup_interval: Duration::from_secs(600),
        }
    }
}

impl RedbStoreBuilder {
    /// How long a session is kept after its last activity.
    ///
    /// Defaults to 7 days.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Least time between two cleanups of expired sessions.
    ///
    /// Defaults to 10 minutes.
    pub fn cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Opens the store at `path`, creating the file if needed.
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] if the file cannot be opened or created, is not a redb file
    /// (corrupt or foreign), is a redb file of another application, or is open elsewhere.
    pub fn open(self, path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let db = open_file(path.as_ref(), META, FORMAT, |txn| {
            txn.open_table(POSITIONS).map_err(permanent)?;
            Ok(())
        })?;
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                idle_ttl: self.idle_ttl,
                cleanup_interval: self.cleanup_interval,
                last_cleanup: Mutex::new(None),
            }),
        })
    }
}

/// Opens (or creates) the redb file at `path`. Refuses files that belong to someone else
/// (tables but no `meta` table) or hold another `format`; marks new ones with `format` and
/// creates their tables (`create`).
pub(crate) fn open_file(
    path: &Path,
    meta: TableDefinition<'_, &str, &str>,
    format: &str,
    create: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
) -> Result<Database, StoreError> {
    let db = Database::create(path).map_err(|e| {
        StoreError::permanent(format!("cannot open redb file {}", path.display()))
            .with_source(redb::Error::from(e))
    })?;
    let txn = db.begin_write().map_err(permanent)?;
    {
        let tables: Vec<String> = txn
            .list_tables()
            .map_err(permanent)?
            .map(|t| t.name().to_owned())
            .collect();
        let ours = tables.iter().any(|t| t == meta.name());
        if !ours && !tables.is_empty() {
            return Err(StoreError::permanent(format!(
                "{} is a redb file of another application (tables: {})",
                path.display(),
                tables.join(", ")
            )));
        }
        let mut table = txn.open_table(meta).map_err(permanent)?;
        let found = table
            .get(FORMAT_KEY)
            .map_err(permanent)?
            .map(|v| v.value().to_owned());
        match found {
            Some(found) if found == format => {}
            Some(other) => {
                return Err(StoreError::permanent(format!(
                    "{} holds format {other:?}, expected {format:?}; it is not migrated: \
                     remove the file, or open another",
                    path.display()
                )));
            }
            None => {
                table.insert(FORMAT_KEY, format).map_err(permanent)?;
            }
        }
        create(&txn)?;
    }
    txn.commit().map_err(permanent)?;
    Ok(db)
}

impl RedbStore {
    /// Opens the store at `path` with the default options (see [`builder`](Self::builder)).
    ///
    /// # Errors
    ///
    /// See [`RedbStoreBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        RedbStoreBuilder::default().open(path)
    }

    /// Options: idle TTL and cleanup interval.
    pub fn builder() -> RedbStoreBuilder {
        RedbStoreBuilder::default()
    }

    /// Deletes every record (session, stream) idle for longer than the TTL; returns how many.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] if the write transaction fails.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        blocking(move || {
            let txn = inner.db.begin_write().map_err(transient)?;
            let removed = {
                let mut table = txn.open_table(POSITIONS).map_err(transient)?;
                inner.purge(&mut table)?
            };
            txn.commit().map_err(transient)?;
            Ok(removed)
        })
        .await
    }
}

impl Inner {
    fn expired(&self, record: &SessionRecord, now: SystemTime) -> bool {
        now.duration_since(record.last_activity)
            .is_ok_and(|idle| idle > self.idle_ttl)
    }

    fn purge(&self, table: &mut redb::Table<'_, (&str, &str), &[u8]>) -> Result<usize, StoreError> {
        let now = SystemTime::now();
        let mut removed = 0;
        table
            .retain(|_, value| {
                let keep = decode(value).is_ok_and(|r| !self.expired(&r, now));
                removed += usize::from(!keep);
                keep
            })
            .map_err(transient)?;
        *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        Ok(removed)
    }

    fn cleanup_due(&self) -> bool {
        let last = *self
            .last_cleanup
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|t| t.elapsed() >= self.cleanup_interval)
    }

    fn save(&self, batch: &[SessionUpdate]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(transient)?;
        {
            let mut table = txn.open_table(POSITIONS).map_err(transient)?;
            let now = SystemTime::now();
            let mut buf = Vec::new();
            for update in batch {
                let key = (update.session.as_str(), update.stream.as_str());
                let existing = table
                    .get(key)
                    .map_err(transient)?
                    .map(|v| decode(v.value()));
                let record = match existing {
                    Some(Ok(mut record)) if !self.expired(&record, now) => {
                        record.apply(update);
                        record
                    }
                    // An unreadable record is replaced, as the cleanup would delete it: failing
                    // would fail every batch this session is part of, for good.
                    Some(Err(_)) => {
                        tracing::warn!(
                            session = update.session.as_str(),
                            stream = update.stream.as_str(),
                            "undecodable session record in redb file: replaced"
                        );
                        SessionRecord::from(update)
                    }
                    _ => SessionRecord::from(update),
                };
                encode(&record, &mut buf);
                table.insert(key, buf.as_slice()).map_err(transient)?;
            }
            if self.cleanup_due() {
                self.purge(&mut table)?;
            }
        }
        txn.commit().map_err(transient)
    }

    fn load(
        &self,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(transient)?;
        let table = txn.open_table(POSITIONS).map_err(transient)?;
        let Some(value) = table
            .get((session.as_str(), stream.as_str()))
            .map_err(transient)?
        else {
            return Ok(None);
        };
        let record = decode(value.value())?;
        Ok((!self.expired(&record, SystemTime::now())).then_some(record))
    }

    /// Deletes a session's streams: the range from (session, "") up to (session + NUL, ""),
    /// which holds exactly its keys (keys have no control characters, so no other session's key
    /// starts with `session + NUL`).
    fn delete(&self, session: &SessionId) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(transient)?;
        let mut removed = 0;
        {
            let mut table = txn.open_table(POSITIONS).map_err(transient)?;
            let end = format!("{session}\0");
            table
                .retain_in((session.as_str(), "")..(end.as_str(), ""), |_, _| {
                    removed += 1;
                    false
                })
                .map_err(transient)?;
        }
        txn.commit().map_err(transient)?;
        Ok(removed)
    }
}

impl SessionStore for RedbStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let batch = batch.to_vec();
        Box::pin(blocking(move || inner.save(&batch)))
    }

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        let inner = self.inner.clone();
        let (session, stream) = (session.clone(), stream.clone());
        Box::pin(blocking(move || inner.load(&session, &stream)))
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        let inner = self.inner.clone();
        let session = session.clone();
        Box::pin(blocking(move || inner.delete(&session).map(drop)))
    }
}

pub(crate) async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::transient("redb task failed").with_source(e))?
}

pub(crate) fn transient(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    // Corruption is not cured by a retry; everything else (I/O, a busy lock) may be.
    let permanent = matches!(
        e,
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_)
    );
    let error = if permanent {
        StoreError::permanent("redb operation failed")
    } else {
        StoreError::transient("redb operation failed")
    };
    error.with_source(e)
}

pub(crate) fn permanent(e: impl Into<redb::Error>) -> StoreError {
    StoreError::permanent("redb operation failed").with_source(e.into())
}

fn encode(record: &SessionRecord, out: &mut Vec<u8>) {
    out.clear();
    out.push(RECORD_V1);
    out.extend_from_slice(&record.version.to_le_bytes());
    out.extend_from_slice(&crate::clock::nanos_of(record.last_activity).to_le_bytes());
    match &record.last_event_id {
        LastEventId::Set(id) => {
            out.push(0);
            out.extend_from_slice(id.as_bytes());
        }
        LastEventId::Cleared => out.push(1),
    }
}

fn decode(value: &[u8]) -> Result<SessionRecord, StoreError> {
    let corrupt = || StoreError::permanent("corrupt session record in redb file");
    if value.len() < HEADER_LEN || value[0] != RECORD_V1 {
        return Err(corrupt());
    }
    let version = u64::from_le_bytes(value[1..9].try_into().map_err(|_| corrupt())?);
    let nanos = u64::from_le_bytes(value[9..17].try_into().map_err(|_| corrupt())?);
    let last_event_id = match value[17] {
        0 => LastEventId::Set(EventId::new(
            std::str::from_utf8(&value[HEADER_LEN..]).map_err(|_| corrupt())?,
        )),
        1 => LastEventId::Cleared,
        _ => return Err(corrupt()),
    };
    Ok(SessionRecord {
        last_event_id,
        version,
        last_activity: crate::clock::time_of(nanos),
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        for id in [LastEventId::from("abc-é"), LastEventId::Cleared] {
            let record = SessionRecord {
                last_event_id: id,
                version: 1_700_000_000_000_000_000,
                last_activity: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            };
            encode(&record, &mut buf);
            assert_eq!(decode(&buf).unwrap(), record);
        }
        assert!(decode(b"").is_err());
        assert!(decode(&[9; 20]).is_err());
    }
}
