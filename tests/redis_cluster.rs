//! `RedisStore` on a real Redis Cluster (three primaries on loopback, formed with `redis-cli
//! --cluster create`; see `tests/support/redis.rs`): sessions spread over the shards, a batch
//! spans them, and a primary killed during writes loses nothing that was acknowledged.
//!
//! The conformance suite runs on a cluster too (`tests/store_conformance.rs`).
#![cfg(feature = "redis")]

mod support;

use support::{events, redis::RedisCluster, sid};

use std::{
    collections::HashSet,
    time::{Duration, Instant, SystemTime},
};

use redis::cluster_routing::Slot;
use tower_sse_tracking::store::{LastEventId, RedisStore, SessionStore, SessionUpdate};

fn update(session: &str, round: u64, at: SystemTime) -> SessionUpdate {
    SessionUpdate {
        session: sid(session),
        stream: events(),
        last_event_id: LastEventId::from(format!("id-{round}").as_str()),
        version: round,
        last_activity: at,
    }
}

/// The number of keys on the node at `url` (each node answers for its own slots).
async fn dbsize(url: &str) -> usize {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("DBSIZE")
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn sessions_spread_over_every_shard_and_a_batch_spans_them() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 0))
        .await
        .unwrap();
    let store = RedisStore::builder()
        .prefix("sse:")
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    // Each session's key carries its own hash tag.
    assert_eq!(store.key(&sid("user-1")), "sse:{user-1}");

    let now = SystemTime::now();
    let batch: Vec<_> = (0..600)
        .map(|i| update(&format!("session-{i}"), 7, now))
        .collect();
    let slots: HashSet<Slot> = batch
        .iter()
        .map(|u| Slot::for_key(store.key(&u.session)))
        .collect();
    assert!(slots.len() > 500, "{} slots", slots.len());
    store.save_batch(&batch).await.unwrap();

    let mut total = 0;
    for url in cluster.urls() {
        let keys = dbsize(&url).await;
        // 600 sessions over three primaries holding a third of the slots each.
        assert!((100..=300).contains(&keys), "{url}: {keys} keys");
        total += keys;
    }
    assert_eq!(total, 600, "one hash per session");
    for u in &batch {
        let record = store.load(&u.session, &events()).await.unwrap().unwrap();
        assert_eq!(record.last_event_id, u.last_event_id);
        assert_eq!(record.version, 7);
    }
    // A session is deleted on whichever shard holds it.
    store.delete_session(&sid("session-3")).await.unwrap();
    assert!(
        store
            .load(&sid("session-3"), &events())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_prefix_with_a_brace_is_refused_in_a_cluster() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::shared)
        .await
        .unwrap();
    let err = RedisStore::builder()
        .prefix("{sse}:")
        .connect_cluster(cluster.urls())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("brace"), "{err}");
    let none: [&str; 0] = [];
    let err = RedisStore::builder()
        .connect_cluster(none)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// Three primaries with a replica each; the primary serving one session is killed while
/// batches are written. Every batch the store acknowledged (with `wait_for_replicas(1, ..)`) is
/// on a replica, so after the failover every session holds at least its newest acknowledged
/// version, with the ID of that version: nothing acknowledged is lost, nothing rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_writes_loses_nothing_acknowledged() {
    let mut cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3, 1))
        .await
        .unwrap();
    let store = RedisStore::builder()
        .prefix("sse:")
        .response_timeout(Duration::from_secs(2))
        .wait_for_replicas(1, Duration::from_millis(500))
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let sessions: Vec<String> = (0..60).map(|i| format!("session-{i}")).collect();
    let victim_slot = Slot::for_key(store.key(&sid(&sessions[0])));
    let victim_port = {
        // The slot number, as the server computes it, to find its primary.
        let client = redis::Client::open(cluster.urls()[0].as_str()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(store.key(&sid(&sessions[0])))
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(Slot::new(slot), Some(victim_slot));
        cluster.primary_of(slot).expect("a primary serves the slot")
    };

    // `acked`: the newest round every session holds, per the store's answer.
    let mut acked = 0;
    let (mut failed, mut ok_after_restart) = (0, 0);
    let (mut killed_at, mut restarted) = (None, false);
    let mut last_error = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut round = 0;
    while ok_after_restart < 20 {
        if Instant::now() >= deadline {
            let nodes = std::process::Command::new("redis-cli")
                .args(["-p", &cluster.ports_running()[0], "CLUSTER", "NODES"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!(
                "the cluster did not recover: {failed} failed batches, {round} rounds, the last \
                 error {last_error:?}; {nodes:?}"
            );
        }
        round += 1;
        let now = SystemTime::now();
        let batch: Vec<_> = sessions.iter().map(|s| update(s, round, now)).collect();
        match store.save_batch(&batch).await {
            Ok(()) => {
                acked = round;
                if restarted {
                    ok_after_restart += 1;
                }
            }
            Err(e) => {
                last_error = Some(format!("{e}: {:?}", std::error::Error::source(&e)));
                assert!(e.is_transient(), "a failover is transient: {e}");
                failed += 1;
            }
        }
        let victim = cluster
            .nodes_mut()
            .iter_mut()
            .find(|n| n.port() == victim_port)
            .unwrap();
        if round == 20 {
            // SIGKILL: no goodbye to the cluster; a replica takes over after the node timeout.
            victim.kill();
            killed_at = Some(Instant::now());
        }
        // Once the replica has taken over, the old primary comes back: as the new primary's
        // replica (until then, its shard has no replica, and writes there are not acknowledged).
        if !restarted && killed_at.is_some_and(|at| at.elapsed() > Duration::from_secs(5)) {
            tokio::task::block_in_place(|| victim.restart());
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until_ok();
        cluster
    })
    .await
    .unwrap();
    println!(
        "{round} rounds, {failed} failed during the failover ({:?} from the kill to 20 good \
         rounds after the old primary came back)",
        killed_at.unwrap().elapsed()
    );
    assert!(failed > 0, "the kill was noticed");
    assert!(
        acked > 20,
        "writes were acknowledged after the failover too"
    );
    for s in &sessions {
        let record = store.load(&sid(s), &events()).await.unwrap().unwrap();
        assert!(
            record.version >= acked,
            "{s}: version {} < acknowledged {acked}",
            record.version
        );
        assert_eq!(
            record.last_event_id,
            LastEventId::from(format!("id-{}", record.version).as_str()),
            "{s}: the ID goes with its version"
        );
    }
    drop(cluster);
}

/// Without replicas, a batch asked to wait for one is written but not acknowledged: a transient
/// error, so the worker writes it again later. A wait as long as the response timeout is
/// refused when connecting.
#[tokio::test]
async fn a_batch_that_no_replica_confirms_is_not_acknowledged() {
    let server = tokio::task::spawn_blocking(support::redis::RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::builder()
        .prefix("sse:")
        .wait_for_replicas(1, Duration::from_millis(50))
        .connect(&server.url())
        .await
        .unwrap();
    let err = store
        .save_batch(&[update("s", 1, SystemTime::now())])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    // Written all the same: a retry is harmless.
    let record = store.load(&sid("s"), &events()).await.unwrap().unwrap();
    assert_eq!(record.version, 1);

    let err = RedisStore::builder()
        .response_timeout(Duration::from_secs(1))
        .wait_for_replicas(1, Duration::from_secs(1))
        .connect(&server.url())
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

/// Every key of a session sits on the session's slot, whatever braces or percent signs its
/// key holds (a `}` would otherwise end the hash tag early, or leave it empty): a batch over
/// several sessions and streams is applied, read back, located and purged.
#[tokio::test]
async fn history_keys_of_odd_sessions_share_their_slot() {
    use bytes::Bytes;
    use tower_sse_tracking::history::{HistoryEvent, HistoryStore, RedisHistory};
    use tower_sse_tracking::store::EventId;

    let cluster = tokio::task::spawn_blocking(RedisCluster::shared)
        .await
        .unwrap();
    let history = RedisHistory::builder()
        .prefix(support::redis::fresh_prefix("odd"))
        .connect_cluster(cluster.urls())
        .await
        .unwrap();
    let sessions = ["}x", "a}b", "{c}", "50%", "%7D", "plain"];
    let mut batch = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        for stream in ["/a", "/b"] {
            for seq in 1..=3u64 {
                let id = format!("{i}-{stream}-{seq}");
                batch.push(HistoryEvent {
                    session: sid(session),
                    stream: support::stream(stream),
                    seq,
                    id: Some(id.as_str().into()),
                    bytes: Bytes::from(format!("id: {id}\ndata: x\n\n")),
                    writer: 1,
                });
            }
        }
    }
    history.append(&batch).await.unwrap();
    for (i, session) in sessions.iter().enumerate() {
        let page = history
            .read_after(&sid(session), &support::stream("/b"), 1, 1 << 20)
            .await
            .unwrap();
        let ids: Vec<_> = page.events.iter().map(|e| e.id.clone().unwrap()).collect();
        assert_eq!(
            ids,
            [format!("{i}-/b-2"), format!("{i}-/b-3")].map(|s| EventId::new(&s)),
            "{session}"
        );
        let found = history
            .locate(&sid(session), &format!("{i}-/a-2"))
            .await
            .unwrap()
            .expect("located in its own session");
        assert_eq!((found.stream.as_str(), found.seq), ("/a", 2));
    }
    // "%7D" and "}x" are different sessions: the encoding is one to one.
    assert!(
        history
            .locate(&sid("%7D"), "0-/a-2")
            .await
            .unwrap()
            .is_none()
    );
    history.purge_session(&sid("a}b")).await.unwrap();
    let page = history
        .read_after(&sid("a}b"), &support::stream("/a"), 0, 1 << 20)
        .await
        .unwrap();
    assert!(page.events.is_empty());
}
