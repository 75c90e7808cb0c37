//! Where last event IDs are persisted: the [`SessionStore`] trait and its implementations.
//!
//! A store keeps one position (last event ID) per session *and* stream ([`StreamKey`]): a
//! session's streams never share one. The persistence worker hands a store whole batches: at
//! most one [`SessionUpdate`] per (session, stream), always its newest state. A store must apply
//! them so that versions only move forward: an update whose `version` is lower than the stored
//! one must not change the stored last event ID (a late retry must never roll a stream back),
//! while the later of the two activity times is kept. A session that ended is deleted whole,
//! with all its streams ([`SessionStore::delete_session`]).
//!
//! ```
//! use std::time::SystemTime;
//! use tower_sse_tracking::{
//!     SessionId, StreamKey,
//!     store::{LastEventId, MemoryStore, SessionStore, SessionUpdate},
//! };
//!
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new();
//! let session = SessionId::new("s1").unwrap();
//! let stream = StreamKey::new("/events").unwrap();
//! let update = |id: &str, version| SessionUpdate {
//!     session: session.clone(),
//!     stream: stream.clone(),
//!     last_event_id: LastEventId::from(id),
//!     version,
//!     last_activity: SystemTime::now(),
//! };
//! store.save_batch(&[update("7", 2)]).await.unwrap();
//! store.save_batch(&[update("5", 1)]).await.unwrap(); // older: refused
//! assert_eq!(store.last_event_id(&session, &stream).as_deref(), Some("7"));
//! let record = store.load(&session, &stream).await.unwrap().unwrap();
//! assert_eq!(record.version, 2);
//! store.delete_session(&session).await.unwrap();
//! assert!(store.load(&session, &stream).await.unwrap().is_none());
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod error;
mod event_id;
mod memory;
#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redb")]
#[cfg_attr(docsrs, doc(cfg(feature = "redb")))]
pub use self::redb::{RedbStore, RedbStoreBuilder};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use self::{error::StoreError, event_id::EventId, memory::MemoryStore};

/// What the Redis history store shares with the Redis session store.
#[cfg(feature = "redis")]
pub(crate) mod redis_support {
    pub(crate) use super::redis::{
        Connection, IN_FLIGHT, Shared, connect, connect_cluster_blocking, connect_shared_cluster,
        tag,
    };
}

/// What the redb history store shares with the redb session store.
#[cfg(feature = "redb")]
pub(crate) mod redb_support {
    pub(crate) use super::redb::{blocking, open_file, permanent, transient};
}

use std::{future::Future, pin::Pin, sync::Arc, time::SystemTime};

use crate::{SessionId, StreamKey};

/// The future a [`SessionStore`] method returns: boxed, so that the trait can be used as
/// `Arc<dyn SessionStore>`. One allocation per batch, never per event.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A stream's last event ID as persisted: an ID, or cleared by an empty `id` field.
///
/// ```
/// use tower_sse_tracking::store::{EventId, LastEventId};
///
/// assert_eq!(LastEventId::from("7").as_str(), Some("7"));
/// assert_eq!(LastEventId::from("7"), LastEventId::Set(EventId::new("7")));
/// assert_eq!(LastEventId::from(""), LastEventId::Cleared);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum LastEventId {
    /// The stream set this ID (held in place when short: see [`EventId`]).
    Set(EventId),
    /// The stream cleared the ID (an empty `id` field); a client then sends no `Last-Event-ID`.
    #[default]
    Cleared,
}

impl LastEventId {
    /// The ID, or `None` when cleared.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Set(id) => Some(id.as_str()),
            Self::Cleared => None,
        }
    }

    /// The ID's bytes, empty when cleared: what a store that keeps bytes writes (no UTF-8
    /// check, unlike [`as_str`](Self::as_str)).
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Set(id) => id.as_bytes(),
            Self::Cleared => &[],
        }
    }
}

impl From<&str> for LastEventId {
    /// An empty string is [`LastEventId::Cleared`], as in the SSE format.
    fn from(id: &str) -> Self {
        if id.is_empty() {
            Self::Cleared
        } else {
            Self::Set(EventId::new(id))
        }
    }
}

/// The newest state of one session's stream, to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionUpdate {
    /// The session.
    pub session: SessionId,
    /// The session's stream.
    pub stream: StreamKey,
    /// Its newest last event ID.
    pub last_event_id: LastEventId,
    /// Grows with every new last event ID of the stream: a store keeps the ID of the highest
    /// version it has seen. Versions come from a clock that is monotonic within a process and
    /// follows wall-clock time across restarts and replicas (nanoseconds since the Unix epoch),
    /// so that the newer write wins wherever it comes from.
    pub version: u64,
    /// The time of the stream's latest event; a store keeps the later of the stored one and
    /// this one.
    pub last_activity: SystemTime,
}

/// A stream's persisted state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The last event ID.
    pub last_event_id: LastEventId,
    /// The version of that ID.
    pub version: u64,
    /// The time of the stream's latest recorded event.
    pub last_activity: SystemTime,
}

impl SessionRecord {
    /// Applies `update` with the forward-only rule: a newer version replaces the ID, an older
    /// one leaves it alone; activity keeps the later time. For store implementations.
    pub fn apply(&mut self, update: &SessionUpdate) {
        if update.version > self.version {
            self.version = update.version;
            self.last_event_id = update.last_event_id.clone();
        }
        if update.last_activity > self.last_activity {
            self.last_activity = update.last_activity;
        }
    }
}

impl From<&SessionUpdate> for SessionRecord {
    fn from(update: &SessionUpdate) -> Self {
        Self {
            last_event_id: update.last_event_id.clone(),
            version: update.version,
            last_activity: update.last_activity,
        }
    }
}

/// A place to persist the last event ID of every session's streams.
///
/// Implementations must be safe to call from one worker task while other tasks read, and must
/// apply a batch with the forward-only rule described in the [module docs](self) (see
/// [`SessionRecord::apply`]). A batch holds at most one update per (session, stream).
///
/// The methods return boxed futures so that stores can be used behind `Arc<dyn SessionStore>`.
///
/// ```
/// use tower_sse_tracking::store::{SessionRecord, SessionStore, SessionUpdate, StoreError, StoreFuture};
/// use tower_sse_tracking::{SessionId, StreamKey};
///
/// /// A store that keeps nothing: every read misses.
/// struct Forgetful;
///
/// impl SessionStore for Forgetful {
///     fn save_batch<'a>(&'a self, _batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
///         Box::pin(async { Ok(()) })
///     }
///     fn load<'a>(
///         &'a self,
///         _session: &'a SessionId,
///         _stream: &'a StreamKey,
///     ) -> StoreFuture<'a, Option<SessionRecord>> {
///         Box::pin(async { Ok(None) })
///     }
///     fn delete_session<'a>(&'a self, _session: &'a SessionId) -> StoreFuture<'a, ()> {
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait SessionStore: Send + Sync + 'static {
    /// Writes a batch of updates, all or nothing where the store allows it.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] says whether a retry may help ([`StoreError::is_transient`]). The worker
    /// retries transient failures with backoff and keeps every session's newest state until it is
    /// written.
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()>;

    /// Reads a stream's persisted state, `None` if the store has none.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot be read.
    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>>;

    /// Deletes everything stored for a session: the positions of all its streams. Deleting a
    /// session the store does not hold succeeds.
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot be written.
    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()>;

    /// The stream's last event ID: `None` when the store holds no position for it, or holds a
    /// cleared one (then a client sends no `Last-Event-ID` either). The common question, without
    /// matching on a [`SessionRecord`].
    ///
    /// # Errors
    ///
    /// A [`StoreError`] when the store cannot be read.
    fn last_event_id<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            let record = self.load(session, stream).await?;
            Ok(record.and_then(|r| r.last_event_id.as_str().map(str::to_owned)))
        })
    }
}

/// Forwards every method to the store behind a pointer.
macro_rules! forward_store {
    ($($pointer:ident),*) => {$(
        impl<S: SessionStore + ?Sized> SessionStore for $pointer<S> {
            fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
                (**self).save_batch(batch)
            }

            fn load<'a>(
                &'a self,
                session: &'a SessionId,
                stream: &'a StreamKey,
            ) -> StoreFuture<'a, Option<SessionRecord>> {
                (**self).load(session, stream)
            }

            fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
                (**self).delete_session(session)
            }

            fn last_event_id<'a>(
                &'a self,
                session: &'a SessionId,
                stream: &'a StreamKey,
            ) -> StoreFuture<'a, Option<String>> {
                (**self).last_event_id(session, stream)
            }
        }
    )*};
}

forward_store!(Arc, Box);
