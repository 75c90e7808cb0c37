//! One conformance suite for every [`SessionStore`]: the checks are written once, as generic
//! functions over a [`Fixture`], and run against [`MemoryStore`], `RedbStore` (feature `redb`, in
//! a temporary directory) and `RedisStore` (feature `redis`, against a `redis-server` these tests
//! start themselves, with a fresh key prefix per test).
//!
//! Store-specific behaviour (redb files, Redis key prefixes) is tested at the end.

mod support;

use support::{events, sid};

use std::time::{Duration, SystemTime};

use tower_sse_tracking::{
    SessionId, StreamKey,
    store::{LastEventId, MemoryStore, SessionRecord, SessionStore, SessionUpdate},
};

/// A store under test, with whatever keeps its backend alive (a directory, a server).
trait Fixture: Sized {
    type Store: SessionStore + Clone;

    /// A fresh, empty store; `idle_ttl` overrides the store's default TTL.
    async fn open(idle_ttl: Option<Duration>) -> Self;

    fn store(&self) -> &Self::Store;

    /// How precisely the store keeps activity times.
    const ACTIVITY_PRECISION: Duration;

    /// Whether a session's idle time counts from its recorded activity (so a record written with
    /// an old activity time is already expired), or from its latest write (Redis key expiry).
    const TTL_FROM_ACTIVITY: bool;
}

struct Memory(MemoryStore);

impl Fixture for Memory {
    type Store = MemoryStore;
    const ACTIVITY_PRECISION: Duration = Duration::ZERO;
    const TTL_FROM_ACTIVITY: bool = true;

    async fn open(idle_ttl: Option<Duration>) -> Self {
        Self(match idle_ttl {
            // The documented default cap of 100,000 sessions.
            Some(ttl) => MemoryStore::with_limits(100_000, ttl),
            None => MemoryStore::new(),
        })
    }

    fn store(&self) -> &MemoryStore {
        &self.0
    }
}

#[cfg(feature = "redb")]
struct Redb {
    store: tower_sse_tracking::store::RedbStore,
    _dir: tempfile::TempDir,
}

#[cfg(feature = "redb")]
impl Fixture for Redb {
    type Store = tower_sse_tracking::store::RedbStore;
    const ACTIVITY_PRECISION: Duration = Duration::ZERO;
    const TTL_FROM_ACTIVITY: bool = true;

    async fn open(idle_ttl: Option<Duration>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tower_sse_tracking::store::RedbStore::builder();
        if let Some(ttl) = idle_ttl {
            builder = builder.idle_ttl(ttl);
        }
        let store = builder.open(dir.path().join("sessions.redb")).unwrap();
        Self { store, _dir: dir }
    }

    fn store(&self) -> &Self::Store {
        &self.store
    }
}

#[cfg(feature = "redis")]
struct Redis {
    store: tower_sse_tracking::store::RedisStore,
    _server: std::sync::Arc<support::redis::RedisServer>,
}

#[cfg(feature = "redis")]
impl Fixture for Redis {
    type Store = tower_sse_tracking::store::RedisStore;
    /// Redis keeps activity in milliseconds.
    const ACTIVITY_PRECISION: Duration = Duration::from_millis(1);
    const TTL_FROM_ACTIVITY: bool = false;

    async fn open(idle_ttl: Option<Duration>) -> Self {
        let server = support::redis::RedisServer::shared();
        let mut builder = tower_sse_tracking::store::RedisStore::builder()
            .prefix(support::redis::fresh_prefix("conformance"));
        if let Some(ttl) = idle_ttl {
            builder = builder.idle_ttl(ttl);
        }
        let store = builder.connect(&server.url()).await.unwrap();
        Self {
            store,
            _server: server,
        }
    }

    fn store(&self) -> &Self::Store {
        &self.store
    }
}

/// `RedisStore` on a real three-node Redis Cluster (each session's key tagged to its own slot).
#[cfg(feature = "redis")]
struct RedisCluster {
    store: tower_sse_tracking::store::RedisStore,
    _cluster: std::sync::Arc<support::redis::RedisCluster>,
}

#[cfg(feature = "redis")]
impl Fixture for RedisCluster {
    type Store = tower_sse_tracking::store::RedisStore;
    const ACTIVITY_PRECISION: Duration = Duration::from_millis(1);
    const TTL_FROM_ACTIVITY: bool = false;

    async fn open(idle_ttl: Option<Duration>) -> Self {
        // Started on a blocking thread: forming a cluster takes a moment.
        let cluster = tokio::task::spawn_blocking(support::redis::RedisCluster::shared)
            .await
            .unwrap();
        let mut builder = tower_sse_tracking::store::RedisStore::builder()
            .prefix(support::redis::fresh_prefix("conformance"));
        if let Some(ttl) = idle_ttl {
            builder = builder.idle_ttl(ttl);
        }
        let store = builder.connect_cluster(cluster.urls()).await.unwrap();
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
            async fn batch_is_saved_and_read_back() {
                checks::batch_is_saved_and_read_back::<$fixture>().await;
            }

            #[tokio::test]
            async fn empty_id_reads_as_cleared() {
                checks::empty_id_reads_as_cleared::<$fixture>().await;
            }

            #[tokio::test]
            async fn older_version_never_overwrites_newer() {
                checks::older_version_never_overwrites_newer::<$fixture>().await;
            }

            #[tokio::test]
            async fn version_zero_records_activity_and_never_an_id() {
                checks::version_zero_records_activity_and_never_an_id::<$fixture>().await;
            }

            #[tokio::test]
            async fn activity_is_recorded_and_keeps_the_later_time() {
                checks::activity_is_recorded_and_keeps_the_later_time::<$fixture>().await;
            }

            #[tokio::test]
            async fn idle_sessions_expire_and_start_afresh() {
                checks::idle_sessions_expire_and_start_afresh::<$fixture>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_writers_highest_version_wins() {
                checks::concurrent_writers_highest_version_wins::<$fixture>().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ten_thousand_updates_in_one_batch() {
                checks::ten_thousand_updates_in_one_batch::<$fixture>().await;
            }

            #[tokio::test]
            async fn unicode_and_maximum_length_keys_and_ids() {
                checks::unicode_and_maximum_length_keys_and_ids::<$fixture>().await;
            }

            #[tokio::test]
            async fn streams_of_a_session_are_kept_apart() {
                checks::streams_of_a_session_are_kept_apart::<$fixture>().await;
            }

            #[tokio::test]
            async fn deleting_a_session_deletes_all_its_streams_and_nothing_else() {
                checks::deleting_a_session_deletes_all_its_streams_and_nothing_else::<$fixture>()
                    .await;
            }
        }
    };
}

conformance!(memory_store, Memory);
#[cfg(feature = "redb")]
conformance!(redb_store, Redb);
#[cfg(feature = "redis")]
conformance!(redis_store, Redis);
#[cfg(feature = "redis")]
conformance!(redis_cluster_store, RedisCluster);

fn update(session: &str, id: &str, version: u64, at: SystemTime) -> SessionUpdate {
    on(session, "/events", id, version, at)
}

/// An update of one of the session's streams.
fn on(session: &str, stream: &str, id: &str, version: u64, at: SystemTime) -> SessionUpdate {
    SessionUpdate {
        session: sid(session),
        stream: StreamKey::new(stream).unwrap(),
        last_event_id: LastEventId::from(id),
        version,
        last_activity: at,
    }
}

async fn load<S: SessionStore>(store: &S, session: &str) -> Option<SessionRecord> {
    store.load(&sid(session), &events()).await.unwrap()
}

async fn load_some<S: SessionStore>(store: &S, session: &str) -> SessionRecord {
    load(store, session)
        .await
        .unwrap_or_else(|| panic!("session {session:?} missing"))
}

/// `got` is `want` as kept by a store with `precision`: never later, less than `precision`
/// earlier (exactly equal when the precision is zero).
fn assert_activity(got: SystemTime, want: SystemTime, precision: Duration, what: &str) {
    if precision.is_zero() {
        assert_eq!(got, want, "{what}: activity");
        return;
    }
    let behind = want
        .duration_since(got)
        .unwrap_or_else(|_| panic!("{what}: activity {got:?} is later than {want:?}"));
    assert!(
        behind < precision,
        "{what}: activity {got:?} is {behind:?} behind {want:?}"
    );
}

mod checks {
    use super::*;

    /// The ID the store holds for a session's stream, through the trait's accessor.
    async fn id_of<S: SessionStore>(store: &S, session: &str, stream: &str) -> Option<String> {
        store
            .last_event_id(&sid(session), &StreamKey::new(stream).unwrap())
            .await
            .unwrap()
    }

    pub(super) async fn streams_of_a_session_are_kept_apart<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let now = SystemTime::now();
        store
            .save_batch(&[
                on("a", "/events", "5", 10, now),
                on("a", "/chat/7", "an id with spaces", 10, now),
                on("a", "", "whole", 10, now),
                on("a", "/ключ", "", 10, now),
                on("b", "/events", "7", 10, now),
            ])
            .await
            .unwrap();
        assert_eq!(id_of(store, "a", "/events").await.as_deref(), Some("5"));
        assert_eq!(
            id_of(store, "a", "/chat/7").await.as_deref(),
            Some("an id with spaces")
        );
        assert_eq!(id_of(store, "a", "").await.as_deref(), Some("whole"));
        assert_eq!(id_of(store, "a", "/ключ").await, None, "cleared");
        let cleared = load_on(store, "a", "/ключ")
            .await
            .expect("a cleared record");
        assert_eq!(cleared.last_event_id, LastEventId::Cleared);
        assert_eq!(id_of(store, "a", "/other").await, None);
        assert!(load_on(store, "a", "/other").await.is_none());
        assert_eq!(id_of(store, "b", "/events").await.as_deref(), Some("7"));
        // Versions are per stream: an older one on one stream leaves it, a newer one on
        // another moves that one only.
        store
            .save_batch(&[
                on("a", "/events", "4", 9, now),
                on("a", "/chat/7", "8", 11, now),
            ])
            .await
            .unwrap();
        assert_eq!(id_of(store, "a", "/events").await.as_deref(), Some("5"));
        assert_eq!(id_of(store, "a", "/chat/7").await.as_deref(), Some("8"));
        assert_eq!(id_of(store, "b", "/events").await.as_deref(), Some("7"));
    }

    async fn load_on<S: SessionStore>(
        store: &S,
        session: &str,
        stream: &str,
    ) -> Option<SessionRecord> {
        store
            .load(&sid(session), &StreamKey::new(stream).unwrap())
            .await
            .unwrap()
    }

    pub(super) async fn deleting_a_session_deletes_all_its_streams_and_nothing_else<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let now = SystemTime::now();
        // Sessions whose keys start with another's must survive its deletion.
        let sessions = ["s", "s2", "s ", "s/x", "t"];
        let streams = ["/a", "/b", ""];
        let batch: Vec<_> = sessions
            .iter()
            .flat_map(|s| {
                streams
                    .iter()
                    .map(move |k| on(s, k, &format!("{s}{k}"), 5, now))
            })
            .collect();
        store.save_batch(&batch).await.unwrap();
        store.delete_session(&sid("s")).await.unwrap();
        for k in streams {
            assert!(load_on(store, "s", k).await.is_none(), "s {k:?} deleted");
        }
        for s in &sessions[1..] {
            for k in streams {
                assert_eq!(
                    id_of(store, s, k).await,
                    Some(format!("{s}{k}")),
                    "{s:?} {k:?} kept"
                );
            }
        }
        // Deleting what is not there succeeds; a deleted session starts afresh, even with a
        // version lower than the one it had.
        store.delete_session(&sid("s")).await.unwrap();
        store.delete_session(&sid("never")).await.unwrap();
        store
            .save_batch(&[on("s", "/a", "again", 1, now)])
            .await
            .unwrap();
        assert_eq!(id_of(store, "s", "/a").await.as_deref(), Some("again"));
        assert!(load_on(store, "s", "/b").await.is_none());
    }

    pub(super) async fn batch_is_saved_and_read_back<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let now = SystemTime::now();
        let batch: Vec<_> = (0..64u64)
            .map(|i| {
                let at = now - Duration::from_micros(i * 7_777);
                update(&format!("batch-{i}"), &format!("id-{i}"), 1_000 + i, at)
            })
            .collect();
        store.save_batch(&batch).await.unwrap();
        for u in &batch {
            let r = load_some(store, u.session.as_str()).await;
            assert_eq!(r.last_event_id, u.last_event_id, "{}", u.session.as_str());
            assert_eq!(r.version, u.version, "{}", u.session.as_str());
            assert_activity(
                r.last_activity,
                u.last_activity,
                F::ACTIVITY_PRECISION,
                u.session.as_str(),
            );
        }
        assert_eq!(load(store, "batch-never-written").await, None);
        // An empty batch is a no-op, not an error.
        store.save_batch(&[]).await.unwrap();
        assert_eq!(load_some(store, "batch-0").await.version, 1_000);
    }

    pub(super) async fn empty_id_reads_as_cleared<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let now = SystemTime::now();
        store
            .save_batch(&[update("was-set", "7", 1, now), update("fresh", "", 1, now)])
            .await
            .unwrap();
        // A cleared ID on a fresh session is a record (the stream said "no ID"), not absence.
        let fresh = load_some(store, "fresh").await;
        assert_eq!(fresh.last_event_id, LastEventId::Cleared);
        assert_eq!(fresh.last_event_id.as_str(), None);
        assert_eq!(fresh.version, 1);

        store
            .save_batch(&[update("was-set", "", 2, now)])
            .await
            .unwrap();
        let cleared = load_some(store, "was-set").await;
        assert_eq!(cleared.last_event_id, LastEventId::Cleared);
        assert_eq!(cleared.version, 2);

        // A stale retry of the old ID does not bring it back; a newer ID replaces the clear.
        store
            .save_batch(&[update("was-set", "7", 1, now)])
            .await
            .unwrap();
        assert_eq!(
            load_some(store, "was-set").await.last_event_id,
            LastEventId::Cleared
        );
        store
            .save_batch(&[update("was-set", "8", 3, now)])
            .await
            .unwrap();
        let set = load_some(store, "was-set").await;
        assert_eq!(set.last_event_id.as_str(), Some("8"));
        assert_eq!(set.version, 3);
    }

    pub(super) async fn older_version_never_overwrites_newer<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let t0 = SystemTime::now() - Duration::from_secs(60);
        let later = t0 + Duration::from_secs(5);
        store
            .save_batch(&[update("s", "new", 10, t0)])
            .await
            .unwrap();
        // A late retry: older version, later activity.
        store
            .save_batch(&[update("s", "old", 5, later)])
            .await
            .unwrap();
        let r = load_some(store, "s").await;
        assert_eq!(r.last_event_id.as_str(), Some("new"), "rolled back");
        assert_eq!(r.version, 10);
        assert_activity(r.last_activity, later, F::ACTIVITY_PRECISION, "late retry");

        // Version numbers of very different magnitudes compare as numbers, not as text.
        store
            .save_batch(&[update("s", "nine", 9, later)])
            .await
            .unwrap();
        assert_eq!(
            load_some(store, "s").await.last_event_id.as_str(),
            Some("new")
        );
        let big = 1_700_000_000_000_000_000;
        store
            .save_batch(&[update("s", "big", big, t0)])
            .await
            .unwrap();
        store
            .save_batch(&[update("s", "smaller", big - 1, later)])
            .await
            .unwrap();
        let r = load_some(store, "s").await;
        assert_eq!(r.last_event_id.as_str(), Some("big"));
        assert_eq!(r.version, big);
        // A newer version with an older activity time takes the ID, keeps the later activity.
        store
            .save_batch(&[update("s", "max", u64::MAX, t0)])
            .await
            .unwrap();
        let r = load_some(store, "s").await;
        assert_eq!(r.last_event_id.as_str(), Some("max"));
        assert_eq!(r.version, u64::MAX);
        assert_activity(r.last_activity, later, F::ACTIVITY_PRECISION, "newer id");
    }

    pub(super) async fn version_zero_records_activity_and_never_an_id<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let t0 = SystemTime::now() - Duration::from_secs(30);
        // What the worker writes for a session that had events but no `id` yet.
        store.save_batch(&[update("s", "", 0, t0)]).await.unwrap();
        let r = load_some(store, "s").await;
        assert_eq!(r.last_event_id, LastEventId::Cleared, "no id recorded");
        assert_eq!(r.version, 0);
        assert_activity(r.last_activity, t0, F::ACTIVITY_PRECISION, "version 0");

        // Later activity at version 0 moves the activity only.
        let t1 = t0 + Duration::from_secs(1);
        store.save_batch(&[update("s", "", 0, t1)]).await.unwrap();
        let r = load_some(store, "s").await;
        assert_eq!((r.last_event_id, r.version), (LastEventId::Cleared, 0));
        assert_activity(
            r.last_activity,
            t1,
            F::ACTIVITY_PRECISION,
            "version 0 again",
        );

        // An ID arrives; a later version-0 write (another replica, no id seen) keeps it.
        store.save_batch(&[update("s", "42", 7, t1)]).await.unwrap();
        let t2 = t1 + Duration::from_secs(1);
        store.save_batch(&[update("s", "", 0, t2)]).await.unwrap();
        let r = load_some(store, "s").await;
        assert_eq!(
            r.last_event_id.as_str(),
            Some("42"),
            "version 0 overrode an id"
        );
        assert_eq!(r.version, 7);
        assert_activity(
            r.last_activity,
            t2,
            F::ACTIVITY_PRECISION,
            "after version 0",
        );
    }

    pub(super) async fn activity_is_recorded_and_keeps_the_later_time<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        let t0 = SystemTime::now() - Duration::from_secs(10);
        store.save_batch(&[update("s", "1", 1, t0)]).await.unwrap();
        assert_activity(
            load_some(store, "s").await.last_activity,
            t0,
            F::ACTIVITY_PRECISION,
            "first write",
        );
        // Same ID and version, newer events (a snapshot with activity only).
        let t1 = t0 + Duration::from_millis(1_234);
        store.save_batch(&[update("s", "1", 1, t1)]).await.unwrap();
        let r = load_some(store, "s").await;
        assert_eq!((r.last_event_id.as_str(), r.version), (Some("1"), 1));
        assert_activity(r.last_activity, t1, F::ACTIVITY_PRECISION, "activity only");
        // An older activity time never moves it back.
        store.save_batch(&[update("s", "1", 1, t0)]).await.unwrap();
        assert_activity(
            load_some(store, "s").await.last_activity,
            t1,
            F::ACTIVITY_PRECISION,
            "older activity",
        );
    }

    pub(super) async fn idle_sessions_expire_and_start_afresh<F: Fixture>() {
        let now = SystemTime::now();
        let f = if F::TTL_FROM_ACTIVITY {
            let f = F::open(Some(Duration::from_secs(60))).await;
            let store = f.store();
            store
                .save_batch(&[
                    update("idle", "old", 5, now - Duration::from_secs(120)),
                    update("live", "recent", 5, now - Duration::from_secs(30)),
                ])
                .await
                .unwrap();
            assert_eq!(load(store, "idle").await, None, "idle session still read");
            assert_eq!(
                load_some(store, "live").await.last_event_id.as_str(),
                Some("recent")
            );
            f
        } else {
            // Expiry counts from the latest write: a short TTL and a short real wait.
            let f = F::open(Some(Duration::from_secs(1))).await;
            let store = f.store();
            store
                .save_batch(&[update("idle", "old", 5, now)])
                .await
                .unwrap();
            assert_eq!(
                load_some(store, "idle").await.last_event_id.as_str(),
                Some("old")
            );
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            assert_eq!(load(f.store(), "idle").await, None, "key did not expire");
            f
        };
        // An expired session is forgotten: a new write starts it afresh, whatever its version.
        let store = f.store();
        let again = SystemTime::now();
        store
            .save_batch(&[update("idle", "again", 1, again)])
            .await
            .unwrap();
        let r = load_some(store, "idle").await;
        assert_eq!((r.last_event_id.as_str(), r.version), (Some("again"), 1));
        assert_activity(r.last_activity, again, F::ACTIVITY_PRECISION, "afresh");
    }

    pub(super) async fn concurrent_writers_highest_version_wins<F: Fixture>() {
        const WRITERS: u64 = 6;
        const ROUNDS: u64 = 20;
        const SESSIONS: u64 = 16;
        let f = F::open(None).await;
        let base = SystemTime::now() - Duration::from_secs(60);
        // Versions are unique and interleaved across writers; odd writers send their rounds
        // newest first, so old versions keep arriving after newer ones.
        let version = |writer: u64, round: u64, session: u64| {
            (round * WRITERS + writer) * SESSIONS + session + 1
        };
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let store = f.store().clone();
                tokio::spawn(async move {
                    let rounds: Vec<u64> = if writer % 2 == 0 {
                        (0..ROUNDS).collect()
                    } else {
                        (0..ROUNDS).rev().collect()
                    };
                    for round in rounds {
                        // One update per session per batch, in a writer-specific order.
                        let batch: Vec<_> = (0..SESSIONS)
                            .map(|i| (i * (2 * writer + 1) + round) % SESSIONS)
                            .map(|s| {
                                let v = version(writer, round, s);
                                let at = base + Duration::from_millis(v);
                                update(&format!("c-{s}"), &format!("w{writer}-r{round}"), v, at)
                            })
                            .collect();
                        store.save_batch(&batch).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for s in 0..SESSIONS {
            let (writer, round) = (WRITERS - 1, ROUNDS - 1);
            let newest = version(writer, round, s);
            let r = load_some(f.store(), &format!("c-{s}")).await;
            assert_eq!(
                (r.last_event_id.as_str(), r.version),
                (Some(format!("w{writer}-r{round}").as_str()), newest),
                "session c-{s}"
            );
            assert_activity(
                r.last_activity,
                base + Duration::from_millis(newest),
                F::ACTIVITY_PRECISION,
                "concurrent",
            );
        }
    }

    pub(super) async fn ten_thousand_updates_in_one_batch<F: Fixture>() {
        const N: usize = 10_000;
        let f = F::open(None).await;
        let store = f.store();
        let now = SystemTime::now();
        let first: Vec<_> = (0..N)
            .map(|i| update(&format!("big-{i}"), &format!("first-{i}"), 100, now))
            .collect();
        store.save_batch(&first).await.unwrap();
        // Even sessions get a newer ID, odd ones a stale retry: both in one big batch.
        let second: Vec<_> = (0..N)
            .map(|i| {
                if i % 2 == 0 {
                    update(&format!("big-{i}"), &format!("second-{i}"), 200, now)
                } else {
                    update(&format!("big-{i}"), &format!("stale-{i}"), 50, now)
                }
            })
            .collect();
        store.save_batch(&second).await.unwrap();
        for i in 0..N {
            let r = load_some(store, &format!("big-{i}")).await;
            let want = if i % 2 == 0 {
                (format!("second-{i}"), 200)
            } else {
                (format!("first-{i}"), 100)
            };
            assert_eq!(
                (r.last_event_id.as_str(), r.version),
                (Some(want.0.as_str()), want.1),
                "session big-{i}"
            );
        }
    }

    pub(super) async fn unicode_and_maximum_length_keys_and_ids<F: Fixture>() {
        let f = F::open(None).await;
        let store = f.store();
        // The default cap (documented on `SessionId::new`) that bounds every key a store sees.
        let max = 128;
        assert!(SessionId::new(&"k".repeat(max + 1)).is_err());
        let keys = [
            "k".repeat(max),
            "🦀".repeat(max / 4),
            format!("{}é", "x".repeat(max - 2)),
            "a b:c\"d'e\\f".to_owned(),
            "{sse}:tagged".to_owned(),
            "ключ セッション 🦀".to_owned(),
            ":".to_owned(),
            " ".to_owned(),
            "nil".to_owned(),
            "*".to_owned(),
        ];
        let ids = [
            "x".repeat(1024),
            "é".repeat(512),
            "🦀".repeat(256),
            "id with spaces: \"double\" 'single' `back` 🦀".to_owned(),
            "0".to_owned(),
            "-1".to_owned(),
            "nil".to_owned(),
            "false".to_owned(),
            "1e400".to_owned(),
            "\ttab\\back%s{}".to_owned(),
        ];
        for key in &keys {
            assert!(key.len() <= max, "{key:?}");
        }
        for id in &ids[..3] {
            assert_eq!(id.len(), 1024);
        }
        let now = SystemTime::now();
        let batch: Vec<_> = keys
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(i, (key, id))| update(key, id, i as u64 + 1, now))
            .collect();
        store.save_batch(&batch).await.unwrap();
        for u in &batch {
            let r = load_some(store, u.session.as_str()).await;
            assert_eq!(r.last_event_id, u.last_event_id, "{:?}", u.session);
            assert_eq!(r.version, u.version, "{:?}", u.session);
        }
        // Keys that differ only past a prefix of each other stay apart.
        assert_eq!(load(store, &"k".repeat(max - 1)).await, None);
        // Rotate the IDs: each key gets its neighbour's ID with a newer version.
        let rotated: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| update(key, &ids[(i + 1) % ids.len()], 100 + i as u64, now))
            .collect();
        store.save_batch(&rotated).await.unwrap();
        for u in &rotated {
            let r = load_some(store, u.session.as_str()).await;
            assert_eq!(r.last_event_id, u.last_event_id, "{:?}", u.session);
        }
    }
}

#[cfg(feature = "redb")]
mod redb_files {
    use std::io::Write;

    use tower_sse_tracking::store::RedbStore;

    use super::*;

    /// Deterministic noise (xorshift), so that a failure can be replayed.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn data_survives_closing_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let now = SystemTime::now();
        {
            let store = RedbStore::open(&path).unwrap();
            store
                .save_batch(&[update("a", "1", 1, now), update("b", "", 1, now)])
                .await
                .unwrap();
            store.save_batch(&[update("a", "2", 2, now)]).await.unwrap();
            // Clones share the database: all of them must go for the file to close.
            let clone = store.clone();
            drop(store);
            assert_eq!(load_some(&clone, "a").await.version, 2);
        }
        let store = RedbStore::open(&path).unwrap();
        let a = load_some(&store, "a").await;
        assert_eq!((a.last_event_id.as_str(), a.version), (Some("2"), 2));
        assert_eq!(a.last_activity, now);
        assert_eq!(
            load_some(&store, "b").await.last_event_id,
            LastEventId::Cleared
        );
        // Still forward-only after reopening.
        store
            .save_batch(&[update("a", "stale", 1, now)])
            .await
            .unwrap();
        assert_eq!(
            load_some(&store, "a").await.last_event_id.as_str(),
            Some("2")
        );
    }

    #[tokio::test]
    async fn file_open_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let _store = RedbStore::open(&path).unwrap();
        let err = RedbStore::open(&path).unwrap_err();
        assert!(!err.is_transient(), "{err}");
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        for (i, len) in [1usize, 17, 512, 4096, 64 * 1024].into_iter().enumerate() {
            let path = dir.path().join(format!("corrupt-{i}.redb"));
            std::fs::write(&path, noise(len, 0x9E37_79B9_7F4A_7C15 + i as u64)).unwrap();
            let err = RedbStore::open(&path).expect_err("random bytes opened as a store");
            assert!(!err.is_transient(), "{err}");
            let message = err.to_string();
            assert!(message.contains("cannot open redb file"), "{message}");
            assert!(std::error::Error::source(&err).is_some(), "no cause given");
        }
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let store = RedbStore::open(&path).unwrap();
                let batch: Vec<_> = (0..500)
                    .map(|i| update(&format!("s{i}"), "x", 1, SystemTime::now()))
                    .collect();
                store.save_batch(&batch).await.unwrap();
            });
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 2).unwrap();
        drop(file);
        let err = RedbStore::open(&path).expect_err("a truncated file opened as a store");
        assert!(!err.is_transient(), "{err}");
        assert!(std::error::Error::source(&err).is_some(), "no cause given");
    }

    #[test]
    fn foreign_redb_file_is_refused_and_left_untouched() {
        const OTHER: redb::TableDefinition<'_, &str, u64> = redb::TableDefinition::new("orders");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other-app.redb");
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(OTHER)
                .unwrap()
                .insert("order-1", 42)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = RedbStore::open(&path).expect_err("opened another application's file");
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("another application"), "{err}");

        use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert_eq!(
            tables,
            ["orders"],
            "our tables were added to a foreign file"
        );
        let table = txn.open_table(OTHER).unwrap();
        assert_eq!(table.get("order-1").unwrap().unwrap().value(), 42);
        assert_eq!(table.len().unwrap(), 1);
    }

    #[test]
    fn file_of_another_format_version_is_refused() {
        const META: redb::TableDefinition<'_, &str, &str> =
            redb::TableDefinition::new("sse_tracking_meta");
        // 1: one position per session, before 0.1 was released (not migrated); 99: the future.
        for format in ["tower-sse-tracking/1", "tower-sse-tracking/99"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("other.redb");
            {
                let db = redb::Database::create(&path).unwrap();
                let txn = db.begin_write().unwrap();
                txn.open_table(META)
                    .unwrap()
                    .insert("format", format)
                    .unwrap();
                txn.commit().unwrap();
            }
            let err = RedbStore::open(&path).expect_err("opened a file of another format");
            assert!(!err.is_transient(), "{err}");
            assert!(err.to_string().contains(format), "{err}");
            assert!(err.to_string().contains("not migrated"), "{err}");
        }
    }

    #[tokio::test]
    async fn an_undecodable_record_is_replaced_and_does_not_fail_the_batch() {
        const POSITIONS: redb::TableDefinition<'_, (&str, &str), &[u8]> =
            redb::TableDefinition::new("sse_tracking_positions");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            // A record this version cannot read (written by a bug, or by a future format).
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(POSITIONS)
                .unwrap()
                .insert(("bad", "/events"), [0xFF, 1, 2].as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let err = store.load(&sid("bad"), &events()).await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        // The worker batches many sessions together: one bad record must not block them all.
        let now = SystemTime::now();
        store
            .save_batch(&[update("good", "1", 1, now), update("bad", "2", 2, now)])
            .await
            .unwrap();
        assert_eq!(
            load_some(&store, "good").await.last_event_id.as_str(),
            Some("1")
        );
        let bad = load_some(&store, "bad").await;
        assert_eq!((bad.last_event_id.as_str(), bad.version), (Some("2"), 2));
    }

    #[test]
    fn empty_existing_file_becomes_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.redb");
        std::fs::File::create(&path).unwrap().flush().unwrap();
        RedbStore::open(&path).expect("an empty file is initialised");
    }
}

#[cfg(feature = "redis")]
mod redis_keys {
    use tower_sse_tracking::store::RedisStore;

    use super::*;

    #[tokio::test]
    async fn stores_with_different_prefixes_do_not_see_each_other() {
        let server = support::redis::RedisServer::shared();
        let (pa, pb) = (
            support::redis::fresh_prefix("a"),
            support::redis::fresh_prefix("b"),
        );
        let a = RedisStore::builder()
            .prefix(pa.clone())
            .connect(&server.url())
            .await
            .unwrap();
        let b = RedisStore::builder()
            .prefix(pb.clone())
            .connect(&server.url())
            .await
            .unwrap();
        assert_eq!(a.key(&sid("s")), format!("{pa}s"));
        let now = SystemTime::now();
        a.save_batch(&[update("s", "from-a", 1, now)])
            .await
            .unwrap();
        assert_eq!(load(&b, "s").await, None);
        b.save_batch(&[update("s", "from-b", 1, now)])
            .await
            .unwrap();
        assert_eq!(
            load_some(&a, "s").await.last_event_id.as_str(),
            Some("from-a")
        );
        assert_eq!(
            load_some(&b, "s").await.last_event_id.as_str(),
            Some("from-b")
        );
    }
}
