//! One conformance suite for every [`HistoryStore`]: the checks are written once, as generic
//! functions over a [`Fixture`], and run against [`MemoryHistoryStore`], `RedbHistory` (feature
//! `redb`, in a temporary directory) and `RedisHistory` (feature `redis`, against a
//! `redis-server` these tests start themselves, with a fresh key prefix per test).
//!
//! Append, read in order, a retried batch kept once, bounds, the lease of a writer, fencing of
//! an older writer, the idle TTL, purging a session, isolation between sessions, the live tail,
//! and concurrent appenders.

mod support;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use support::{sid, stream};
use tower_sse_tracking::{
    SessionId, StreamKey,
    history::{
        HistoryEvent, HistoryStore, MemoryHistoryStore, StoredPosition, StreamEnd, WriterLease,
    },
};

/// What a fixture's store is opened with.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_events: usize,
    lease: Duration,
    idle_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_events: 1024,
            lease: Duration::from_secs(30),
            idle_ttl: Duration::from_secs(3600),
        }
    }
}

/// A store under test, with whatever keeps its backend alive (a directory, a server).
trait Fixture: Sized {
    type Store: HistoryStore + Clone;

    /// Events a stream may keep beyond its bound.
    const SLACK: usize = 0;

    /// A fresh, empty store.
    async fn open(limits: Limits) -> Self;

    fn store(&self) -> &Self::Store;
}

struct Memory(MemoryHistoryStore);

impl Fixture for Memory {
    type Store = MemoryHistoryStore;

    async fn open(limits: Limits) -> Self {
        Self(
            MemoryHistoryStore::with_limits(limits.max_events, 64 << 20)
                .lease(limits.lease)
                .idle_ttl(limits.idle_ttl),
        )
    }

    fn store(&self) -> &MemoryHistoryStore {
        &self.0
    }
}

#[cfg(feature = "redb")]
struct Redb {
    store: tower_sse_tracking::history::RedbHistory,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "redb")]
impl Fixture for Redb {
    type Store = tower_sse_tracking::history::RedbHistory;

    async fn open(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = tower_sse_tracking::history::RedbHistory::builder()
            .max_events(limits.max_events)
            .lease(limits.lease)
            .idle_ttl(limits.idle_ttl)
            .cleanup_interval(Duration::ZERO)
            .open(dir.path().join("history.redb"))
            .unwrap();
        Self { store, _dir: dir }
    }

    fn store(&self) -> &Self::Store {
        &self.store
    }
}

#[cfg(feature = "redis")]
struct Redis {
    store: tower_sse_tracking::history::RedisHistory,
    _server: Arc<support::redis::RedisServer>,
}

#[cfg(feature = "redis")]
impl Fixture for Redis {
    type Store = tower_sse_tracking::history::RedisHistory;
    /// Redis trims a stream by whole nodes (100 entries by default).
    const SLACK: usize = 100;

    async fn open(limits: Limits) -> Self {
        let server = support::redis::RedisServer::shared();
        let store = tower_sse_tracking::history::RedisHistory::builder()
            .prefix(support::redis::fresh_prefix("history"))
            .max_events(limits.max_events)
            .lease(limits.lease)
            .idle_ttl(limits.idle_ttl)
            .connect(&server.url())
            .await
            .unwrap();
        Self {
            store,
            _server: server,
        }
    }

    fn store(&self) -> &Self::Store {
        &self.store
    }
}

/// `RedisHistory` on a real three-node Redis Cluster.
#[cfg(feature = "redis")]
struct RedisCluster {
    store: tower_sse_tracking::history::RedisHistory,
    _cluster: Arc<support::redis::RedisCluster>,
}

#[cfg(feature = "redis")]
impl Fixture for RedisCluster {
    type Store = tower_sse_tracking::history::RedisHistory;
    const SLACK: usize = 100;

    async fn open(limits: Limits) -> Self {
        let cluster = tokio::task::spawn_blocking(support::redis::RedisCluster::shared)
            .await
            .unwrap();
        let store = tower_sse_tracking::history::RedisHistory::builder()
            .prefix(support::redis::fresh_prefix("history"))
            .max_events(limits.max_events)
            .lease(limits.lease)
            .idle_ttl(limits.idle_ttl)
            .connect_cluster(cluster.urls())
            .await
            .unwrap();
        Self {
            store,
            _cluster: cluster,
        }
    }

    fn store(&self) -> &Self::Store {
        &self.store
    }
}

/// Runs every check against one fixture, as one `#[tokio::test]` per check.
macro_rules! conformance {
    ($module:ident, $fixture:ty) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn events_are_read_back_in_order_after_a_position() {
                checks::events_are_read_back_in_order_after_a_position::<$fixture>().await;
            }

            #[tokio::test]
            async fn a_retried_batch_is_kept_once() {
                checks::a_retried_batch_is_kept_once::<$fixture>().await;
            }

            #[tokio::test]
            async fn locate_finds_the_newest_event_with_the_id_in_the_session_only() {
                checks::locate_finds_the_newest_event_with_the_id_in_the_session_only::<$fixture>()
                    .await;
            }

            #[tokio::test]
            async fn a_stream_keeps_its_newest_events_within_its_bound() {
                checks::a_stream_keeps_its_newest_events_within_its_bound::<$fixture>().await;
            }

            #[tokio::test]
            async fn finish_ends_a_stream_and_an_append_opens_it_again() {
                checks::finish_ends_a_stream_and_an_append_opens_it_again::<$fixture>().await;
            }

            #[tokio::test]
            async fn an_older_writer_is_fenced_off() {
                checks::an_older_writer_is_fenced_off::<$fixture>().await;
            }

            #[tokio::test]
            async fn an_open_stream_whose_writer_is_gone_reads_as_cut() {
                checks::an_open_stream_whose_writer_is_gone_reads_as_cut::<$fixture>().await;
            }

            #[tokio::test]
            async fn idle_streams_expire() {
                checks::idle_streams_expire::<$fixture>().await;
            }

            #[tokio::test]
            async fn purge_forgets_one_session_only() {
                checks::purge_forgets_one_session_only::<$fixture>().await;
            }

            #[tokio::test]
            async fn a_wait_ends_with_new_events_or_the_end() {
                checks::a_wait_ends_with_new_events_or_the_end::<$fixture>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_appenders_lose_nothing() {
                checks::concurrent_appenders_lose_nothing::<$fixture>().await;
            }

            #[tokio::test]
            async fn bytes_and_ids_round_trip_exactly() {
                checks::bytes_and_ids_round_trip_exactly::<$fixture>().await;
            }
        }
    };
}

conformance!(memory_history, Memory);
#[cfg(feature = "redb")]
conformance!(redb_history, Redb);
#[cfg(feature = "redis")]
conformance!(redis_history, Redis);
#[cfg(feature = "redis")]
conformance!(redis_cluster_history, RedisCluster);

/// An event of `session`'s stream `key`, by writer 1.
fn event(session: &str, key: &str, seq: u64, id: Option<&str>) -> HistoryEvent {
    by(1, session, key, seq, id)
}

/// An event by `writer`.
fn by(writer: u64, session: &str, key: &str, seq: u64, id: Option<&str>) -> HistoryEvent {
    let bytes = match id {
        Some(id) => format!("id: {id}\ndata: {seq}\n\n"),
        None => format!("data: {seq}\n\n"),
    };
    HistoryEvent {
        session: sid(session),
        stream: stream(key),
        seq,
        id: id.map(Into::into),
        bytes: Bytes::from(bytes),
        writer,
    }
}

/// Everything after `after`, read page by page.
async fn read_all<S: HistoryStore>(
    store: &S,
    session: &SessionId,
    key: &StreamKey,
    after: u64,
) -> (Vec<u64>, StreamEnd) {
    let mut seqs = Vec::new();
    let mut after = after;
    loop {
        let page = store.read_after(session, key, after, 64).await.unwrap();
        let Some(last) = page.events.last() else {
            return (seqs, page.end);
        };
        after = last.seq;
        seqs.extend(page.events.iter().map(|e| e.seq));
    }
}

async fn end_of<S: HistoryStore>(store: &S, session: &SessionId, key: &StreamKey) -> StreamEnd {
    store.read_after(session, key, 0, 1).await.unwrap().end
}

mod checks {
    use super::*;

    pub async fn events_are_read_back_in_order_after_a_position<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        let batch: Vec<_> = (1..=10)
            .map(|i| event("a", "/e", i * 10, Some(&format!("e{i}"))))
            .collect();
        assert_eq!(s.append(&batch).await.unwrap().fenced, 0);
        let (a, key) = (sid("a"), stream("/e"));
        let (seqs, end) = read_all(s, &a, &key, 0).await;
        assert_eq!(seqs, (1..=10).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(end, StreamEnd::Open);
        // Exclusive start, in order.
        let page = s.read_after(&a, &key, 30, 1 << 20).await.unwrap();
        let got: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(got, [40, 50, 60, 70, 80, 90, 100]);
        // A limit below one event's size still gives one; a limit of two events' bytes, two.
        let one = s.read_after(&a, &key, 0, 1).await.unwrap();
        assert_eq!(one.events.len(), 1);
        let two_bytes = batch[0].bytes.len() + batch[1].bytes.len();
        let two = s.read_after(&a, &key, 0, two_bytes).await.unwrap();
        assert_eq!(two.events.len(), 2);
        // Nothing after the newest; an unknown stream reads as empty and not open.
        let none = s.read_after(&a, &key, 100, 1 << 20).await.unwrap();
        assert!(none.events.is_empty());
        let unknown = s.read_after(&a, &stream("/x"), 0, 1 << 20).await.unwrap();
        assert!(unknown.events.is_empty());
        assert_ne!(unknown.end, StreamEnd::Open);
    }

    pub async fn a_retried_batch_is_kept_once<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        let batch: Vec<_> = (1..=5).map(|i| event("a", "/e", i, None)).collect();
        s.append(&batch).await.unwrap();
        s.append(&batch).await.unwrap();
        // Half of it again, then what follows.
        let rest: Vec<_> = (3..=8).map(|i| event("a", "/e", i, None)).collect();
        s.append(&rest).await.unwrap();
        let (seqs, _) = read_all(s, &sid("a"), &stream("/e"), 0).await;
        assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    }

    pub async fn locate_finds_the_newest_event_with_the_id_in_the_session_only<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        s.append(&[
            event("a", "/one", 10, Some("7")),
            event("a", "/one", 20, Some("8")),
            event("a", "/two", 30, Some("7")), // the same ID, later, in another stream
            event("a", "/two", 40, None),
            event("b", "/one", 50, Some("7")), // the same ID in another session
            event("b", "/one", 60, Some("9")),
        ])
        .await
        .unwrap();
        let at = |key: &str, seq| {
            Some(StoredPosition {
                stream: stream(key),
                seq,
                end: StreamEnd::Open,
            })
        };
        assert_eq!(s.locate(&sid("a"), "7").await.unwrap(), at("/two", 30));
        assert_eq!(s.locate(&sid("a"), "8").await.unwrap(), at("/one", 20));
        assert_eq!(s.locate(&sid("b"), "7").await.unwrap(), at("/one", 50));
        // Never another session's: "9" is b's only.
        assert_eq!(s.locate(&sid("a"), "9").await.unwrap(), None);
        assert_eq!(s.locate(&sid("c"), "7").await.unwrap(), None);
        assert_eq!(s.locate(&sid("a"), "").await.unwrap(), None);
        assert!(s.is_producing(&sid("a")).await.unwrap());
        assert!(!s.is_producing(&sid("c")).await.unwrap());
    }

    pub async fn a_stream_keeps_its_newest_events_within_its_bound<F: Fixture>() {
        let f = F::open(Limits {
            max_events: 5,
            ..Limits::default()
        })
        .await;
        let s = f.store();
        let total = 40 + 3 * F::SLACK as u64;
        for chunk in (1..=total).collect::<Vec<_>>().chunks(7) {
            let batch: Vec<_> = chunk
                .iter()
                .map(|&i| event("a", "/e", i, Some(&i.to_string())))
                .collect();
            s.append(&batch).await.unwrap();
        }
        let (seqs, _) = read_all(s, &sid("a"), &stream("/e"), 0).await;
        // The newest five, and nothing beyond the bound and the store's slack.
        let newest: Vec<u64> = (total - 4..=total).collect();
        assert!(seqs.ends_with(&newest), "{seqs:?}");
        assert!(seqs.len() <= 5 + F::SLACK, "{} kept", seqs.len());
        assert!(s.locate(&sid("a"), "1").await.unwrap().is_none(), "evicted");
        assert!(
            s.locate(&sid("a"), &total.to_string())
                .await
                .unwrap()
                .is_some()
        );
        // Another stream is not trimmed by this one's bound.
        s.append(&[event("a", "/f", 1, None)]).await.unwrap();
        assert_eq!(read_all(s, &sid("a"), &stream("/f"), 0).await.0, [1]);
    }

    pub async fn finish_ends_a_stream_and_an_append_opens_it_again<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        let (a, key) = (sid("a"), stream("/e"));
        s.append(&[event("a", "/e", 1, Some("1"))]).await.unwrap();
        s.finish(&a, &key, 1, StreamEnd::Complete).await.unwrap();
        assert_eq!(end_of(s, &a, &key).await, StreamEnd::Complete);
        assert_eq!(
            s.locate(&a, "1").await.unwrap().map(|p| p.end),
            Some(StreamEnd::Complete)
        );
        assert!(!s.is_producing(&a).await.unwrap());
        s.append(&[event("a", "/e", 2, None)]).await.unwrap();
        assert_eq!(end_of(s, &a, &key).await, StreamEnd::Open);
        s.finish(&a, &key, 1, StreamEnd::Cut).await.unwrap();
        assert_eq!(end_of(s, &a, &key).await, StreamEnd::Cut);
    }

    pub async fn an_older_writer_is_fenced_off<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        let (a, key) = (sid("a"), stream("/e"));
        // Writer 5 (replica A) writes; writer 9 (replica B) takes over.
        s.append(&[
            by(5, "a", "/e", 1, Some("1")),
            by(5, "a", "/e", 2, Some("2")),
        ])
        .await
        .unwrap();
        let report = s.append(&[by(9, "a", "/e", 3, Some("3"))]).await.unwrap();
        assert_eq!(report.fenced, 0);
        // A comes back: its events are refused, counted, and its end ignored.
        let report = s
            .append(&[by(5, "a", "/e", 4, Some("4")), by(5, "a", "/e", 5, None)])
            .await
            .unwrap();
        assert_eq!(report.fenced, 2);
        s.finish(&a, &key, 5, StreamEnd::Complete).await.unwrap();
        assert_eq!(
            read_all(s, &a, &key, 0).await,
            (vec![1, 2, 3], StreamEnd::Open)
        );
        assert!(s.locate(&a, "4").await.unwrap().is_none());
        // Its lease is not renewed by the stale writer either (checked with the lease below);
        // the new writer ends the stream.
        s.finish(&a, &key, 9, StreamEnd::Complete).await.unwrap();
        assert_eq!(end_of(s, &a, &key).await, StreamEnd::Complete);
        // Other streams are unaffected by this stream's writer.
        let other = s.append(&[by(5, "a", "/f", 1, None)]).await.unwrap();
        assert_eq!(other.fenced, 0);
    }

    pub async fn an_open_stream_whose_writer_is_gone_reads_as_cut<F: Fixture>() {
        let lease = Duration::from_millis(600);
        let f = F::open(Limits {
            lease,
            ..Limits::default()
        })
        .await;
        let s = f.store();
        let (a, key) = (sid("a"), stream("/e"));
        s.append(&[by(3, "a", "/e", 1, None), by(3, "a", "/f", 1, None)])
            .await
            .unwrap();
        // "/e"'s writer renews its lease; "/f"'s is gone; a stale writer's touch renews nothing.
        let leases = [WriterLease {
            session: a.clone(),
            stream: key.clone(),
            writer: 3,
        }];
        let stale = [WriterLease {
            session: a.clone(),
            stream: stream("/f"),
            writer: 2,
        }];
        for _ in 0..4 {
            tokio::time::sleep(lease / 3).await;
            s.touch(&leases).await.unwrap();
            s.touch(&stale).await.unwrap();
        }
        assert_eq!(end_of(s, &a, &key).await, StreamEnd::Open);
        assert_eq!(end_of(s, &a, &stream("/f")).await, StreamEnd::Cut);
        assert!(s.is_producing(&a).await.unwrap());
        tokio::time::sleep(lease + lease / 2).await;
        assert_eq!(end_of(s, &a, &key).await, StreamEnd::Cut);
        assert!(!s.is_producing(&a).await.unwrap());
        // Its events are still there to replay.
        assert_eq!(read_all(s, &a, &key, 0).await.0, [1]);
    }

    pub async fn idle_streams_expire<F: Fixture>() {
        let ttl = Duration::from_millis(800);
        let f = F::open(Limits {
            idle_ttl: ttl,
            ..Limits::default()
        })
        .await;
        let s = f.store();
        let a = sid("a");
        s.append(&[event("a", "/old", 1, Some("old"))])
            .await
            .unwrap();
        tokio::time::sleep(ttl / 2).await;
        s.append(&[event("a", "/new", 1, Some("new"))])
            .await
            .unwrap();
        tokio::time::sleep(ttl / 2 + ttl / 4).await;
        // "/old" is past its TTL, "/new" is not.
        assert!(s.locate(&a, "old").await.unwrap().is_none());
        assert!(read_all(s, &a, &stream("/old"), 0).await.0.is_empty());
        assert!(s.locate(&a, "new").await.unwrap().is_some());
        tokio::time::sleep(ttl).await;
        assert!(s.locate(&a, "new").await.unwrap().is_none());
    }

    pub async fn purge_forgets_one_session_only<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        s.append(&[
            event("a", "/one", 1, Some("1")),
            event("a", "/two", 2, Some("2")),
            event("ab", "/one", 3, Some("1")), // a key that starts like "a"
            event("b", "/one", 4, Some("1")),
        ])
        .await
        .unwrap();
        s.purge_session(&sid("a")).await.unwrap();
        assert!(s.locate(&sid("a"), "1").await.unwrap().is_none());
        assert!(s.locate(&sid("a"), "2").await.unwrap().is_none());
        assert!(
            read_all(s, &sid("a"), &stream("/two"), 0)
                .await
                .0
                .is_empty()
        );
        assert!(s.locate(&sid("ab"), "1").await.unwrap().is_some());
        assert!(s.locate(&sid("b"), "1").await.unwrap().is_some());
        // Purging what is not there is fine.
        s.purge_session(&sid("nobody")).await.unwrap();
    }

    pub async fn a_wait_ends_with_new_events_or_the_end<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store().clone();
        let (a, key) = (sid("a"), stream("/e"));
        s.append(&[event("a", "/e", 1, None)]).await.unwrap();
        // Events after 0 are there: no wait.
        let start = tokio::time::Instant::now();
        s.wait_after(&a, &key, 0, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        // Nothing after 1: the wait lasts until an append.
        let waiting = {
            let (s, a, key) = (s.clone(), a.clone(), key.clone());
            tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                s.wait_after(&a, &key, 1, Duration::from_secs(20))
                    .await
                    .unwrap();
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.append(&[event("a", "/e", 2, None)]).await.unwrap();
        let waited = waiting.await.unwrap();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        // Ended: no wait.
        s.finish(&a, &key, 1, StreamEnd::Cut).await.unwrap();
        let start = tokio::time::Instant::now();
        s.wait_after(&a, &key, 2, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        // Nothing comes: the wait ends at its timeout.
        s.append(&[event("a", "/g", 1, None)]).await.unwrap();
        let start = tokio::time::Instant::now();
        s.wait_after(&a, &stream("/g"), 1, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    pub async fn concurrent_appenders_lose_nothing<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store().clone();
        // Eight writers, each its own stream of one session, 25 batches of 8 events each.
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let s = s.clone();
                tokio::spawn(async move {
                    for b in 0..25u64 {
                        let batch: Vec<_> = (0..8)
                            .map(|i| {
                                let seq = b * 8 + i + 1;
                                event("a", &format!("/w{w}"), seq, Some(&format!("{w}-{seq}")))
                            })
                            .collect();
                        s.append(&batch).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for w in 0..8 {
            let (seqs, _) = read_all(&s, &sid("a"), &stream(&format!("/w{w}")), 0).await;
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "writer {w}");
            let found = s.locate(&sid("a"), &format!("{w}-200")).await.unwrap();
            assert_eq!(found.map(|p| p.seq), Some(200));
        }
    }

    pub async fn bytes_and_ids_round_trip_exactly<F: Fixture>() {
        let f = F::open(Limits::default()).await;
        let s = f.store();
        let id = "é/🙂 \"quoted\" {tag} ".repeat(8);
        let bytes = Bytes::from(
            [
                b"id: ".as_slice(),
                id.as_bytes(),
                b"\r\ndata: \x00\xff binary\r\n\r\n",
            ]
            .concat(),
        );
        let session = "s".repeat(125) + "{x}";
        let key = "/chat/{room}/events?x=1";
        let e = HistoryEvent {
            session: sid(&session),
            stream: stream(key),
            seq: u64::MAX - 1,
            id: Some(id.as_str().into()),
            bytes: bytes.clone(),
            writer: u64::MAX - 7,
        };
        s.append(std::slice::from_ref(&e)).await.unwrap();
        let found = s.locate(&sid(&session), &id).await.unwrap().unwrap();
        assert_eq!((found.stream.as_str(), found.seq), (key, u64::MAX - 1));
        let page = s
            .read_after(&sid(&session), &stream(key), 0, 1 << 20)
            .await
            .unwrap();
        assert_eq!(page.events, [e]);
    }
}

/// What only the redb store does: its histories and bounds outlive the process that wrote them,
/// and it refuses files that are not its own.
#[cfg(feature = "redb")]
mod redb_only {
    use super::*;
    use tower_sse_tracking::history::RedbHistory;

    #[tokio::test]
    async fn histories_and_bounds_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.redb");
        let open = || RedbHistory::builder().max_events(4).open(&path).unwrap();
        {
            let store = open();
            let batch: Vec<_> = (1..=6)
                .map(|i| event("a", "/e", i, Some(&i.to_string())))
                .collect();
            store.append(&batch).await.unwrap();
            store
                .finish(&sid("a"), &stream("/e"), 1, StreamEnd::Complete)
                .await
                .unwrap();
        } // the process "restarts"
        let store = open();
        let (seqs, end) = read_all(&store, &sid("a"), &stream("/e"), 0).await;
        assert_eq!((seqs, end), (vec![3, 4, 5, 6], StreamEnd::Complete));
        let found = store.locate(&sid("a"), "5").await.unwrap().unwrap();
        assert_eq!((found.seq, found.end), (5, StreamEnd::Complete));
        // The bound holds across the restart.
        store
            .append(&[event("a", "/e", 7, Some("7"))])
            .await
            .unwrap();
        assert_eq!(
            read_all(&store, &sid("a"), &stream("/e"), 0).await.0,
            [4, 5, 6, 7]
        );
    }

    #[tokio::test]
    async fn foreign_and_session_store_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = dir.path().join("sessions.redb");
        drop(tower_sse_tracking::store::RedbStore::open(&sessions).unwrap());
        let err = RedbHistory::open(&sessions).unwrap_err();
        assert!(!err.is_transient());
        assert!(err.to_string().contains("another application"), "{err}");
        let garbage = dir.path().join("garbage.redb");
        std::fs::write(&garbage, b"not a database at all").unwrap();
        assert!(RedbHistory::open(&garbage).is_err());
    }
}
