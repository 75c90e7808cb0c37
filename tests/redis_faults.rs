//! `RedisStore` under faults: a Redis restart in the middle of streaming, two replicas writing
//! the same sessions, and what Redis Cluster requires of key prefixes.
//!
//! Every test starts its own `redis-server` (see `tests/support/redis.rs`).
#![cfg(feature = "redis")]

mod support;

use support::{events as events_key, sid};

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, Request, header},
    response::sse::{Event, Sse},
    routing::get,
};
use futures_util::Stream;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey,
    store::{
        LastEventId, RedisStore, SessionRecord, SessionStore, SessionUpdate, StoreError,
        StoreFuture,
    },
    worker::{WorkerConfig, WorkerHandle},
};

use support::redis::{RedisConfig, RedisServer};

/// Generous bound for anything that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

async fn connect(server: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .response_timeout(Duration::from_millis(500))
        .connection_timeout(Duration::from_millis(500))
        .connect(&server.url())
        .await
        .unwrap()
}

/// Short intervals everywhere, so that failures, retries and the breaker play out in
/// milliseconds.
fn fast_worker() -> WorkerConfig {
    WorkerConfig::new()
        .flush_interval(Duration::from_millis(20))
        .base_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(200))
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(300))
        .store_timeout(Duration::from_secs(1))
}

// ---------------------------------------------------------------------------------------------
// (a) Redis killed and restarted while sessions stream.

/// The SSE feed of each session, taken by its one request.
type Feeds = Arc<Mutex<HashMap<String, mpsc::UnboundedReceiver<Event>>>>;

async fn events(
    State(feeds): State<Feeds>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let key = headers["mcp-session-id"].to_str().unwrap();
    let rx = feeds
        .lock()
        .unwrap()
        .remove(key)
        .expect("one stream per session");
    Sse::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    }))
}

/// A session fed either through a real SSE response of the router (the client reads the body,
/// which is what the tracking layer parses) or directly through the worker's handle.
enum Feed {
    Sse {
        tx: mpsc::UnboundedSender<Event>,
        /// The last `id` the client read.
        seen: watch::Receiver<String>,
        client: tokio::task::JoinHandle<()>,
    },
    Direct(WorkerHandle),
}

struct Session {
    key: String,
    /// The last phase (1: before the kill, 2: while Redis is down, 3: after the restart) in which
    /// this session gets events.
    last_phase: u32,
    feed: Feed,
    last_id: Option<String>,
}

impl Session {
    async fn open(
        key: String,
        last_phase: u32,
        sse: bool,
        app: &Router,
        feeds: &Feeds,
        layer: &EventTrackingLayer,
    ) -> Self {
        let feed = if sse {
            let (tx, rx) = mpsc::unbounded_channel();
            feeds.lock().unwrap().insert(key.clone(), rx);
            let request = Request::get("/events")
                .header("mcp-session-id", &key)
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/event-stream"
            );
            let (seen_tx, seen) = watch::channel(String::new());
            let mut body = response.into_body();
            let client = tokio::spawn(async move {
                while let Some(frame) = body.frame().await {
                    let Ok(data) = frame.unwrap().into_data() else {
                        continue;
                    };
                    let text = std::str::from_utf8(&data).unwrap();
                    for id in text.lines().filter_map(|l| l.strip_prefix("id: ")) {
                        seen_tx.send_replace(id.to_owned());
                    }
                }
            });
            Feed::Sse { tx, seen, client }
        } else {
            Feed::Direct(layer.worker().clone())
        };
        Self {
            key,
            last_phase,
            feed,
            last_id: None,
        }
    }

    /// Sends `n` events with IDs and waits until the tracking layer has seen the last one.
    async fn stream(&mut self, phase: u32, n: u32) {
        let mut last = String::new();
        for k in 1..=n {
            last = format!("{}-p{phase}-{k}", self.key);
            match &self.feed {
                Feed::Sse { tx, .. } => {
                    tx.send(Event::default().id(&last).data("tick")).unwrap();
                }
                Feed::Direct(worker) => {
                    assert_eq!(
                        worker.record(&sid(&self.key), &events_key(), Some(&last)),
                        tower_sse_tracking::worker::RecordOutcome::Recorded
                    );
                }
            }
        }
        if let Feed::Sse { seen, .. } = &mut self.feed {
            tokio::time::timeout(PATIENCE, seen.wait_for(|id| *id == last))
                .await
                .expect("the client did not read the stream")
                .unwrap();
        }
        self.last_id = Some(last);
    }

    /// Ends the SSE response (the client reads it to the end).
    async fn close(self) -> (String, Option<String>) {
        if let Feed::Sse { tx, client, .. } = self.feed {
            drop(tx);
            tokio::time::timeout(PATIENCE, client)
                .await
                .expect("the stream did not end")
                .unwrap();
        }
        (self.key, self.last_id)
    }
}

async fn stored_id(store: &RedisStore, key: &str) -> Option<String> {
    let record = store.load(&sid(key), &events_key()).await.unwrap()?;
    Some(record.last_event_id.as_str().unwrap_or("").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_final_id_survives_a_redis_restart_mid_stream() {
    // Durable Redis: what it acknowledged before the kill is there after the restart, so every
    // session's final ID can be asserted, not only those written after the restart.
    let expected = restart_mid_stream(true).await;
    for (key, (last_id, stored)) in &expected {
        assert_eq!(stored, last_id, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_persistence_what_is_written_after_the_restart_is_kept() {
    // Redis without persistence forgets everything when killed. The worker writes sessions with
    // new events, not those it wrote before: sessions whose last write happened before the kill
    // are gone (Redis's durability, not ours); every session with events after its last
    // successful write (during the outage or after the restart) has its final ID.
    let expected = restart_mid_stream(false).await;
    for (key, (last_id, stored)) in &expected {
        if key_phase(key) == 0 {
            assert_eq!(
                stored, &None,
                "{key}: Redis kept data it was not asked to keep"
            );
        } else {
            assert_eq!(stored, last_id, "{key}");
        }
    }
}

/// Twelve sessions stream in three phases: Redis up, Redis killed, Redis restarted on the same
/// port. A third of the sessions ends in each phase; half of them are real SSE responses of an
/// axum router, half are fed through the worker's handle. After a shutdown with a generous
/// deadline, returns each session's last recorded ID beside the one another connection reads.
async fn restart_mid_stream(durable: bool) -> Vec<(String, (Option<String>, Option<String>))> {
    let mut server = RedisServer::start_with(RedisConfig {
        durable,
        ..RedisConfig::default()
    });
    let prefix = "{sse}:fault:";
    let layer = EventTrackingLayer::builder()
        .store(connect(&server, prefix).await)
        .worker(fast_worker())
        .build();
    let feeds = Feeds::default();
    let app = Router::new()
        .route("/events", get(events))
        .with_state(feeds.clone())
        .layer(layer.clone());

    let mut sessions = Vec::new();
    for i in 0..12u32 {
        let (sse, last_phase) = (i % 2 == 0, i % 3 + 1);
        let key = format!("{}-{i}", if sse { "sse" } else { "direct" });
        sessions.push(Session::open(key, last_phase, sse, &app, &feeds, &layer).await);
    }

    // Phase 1: Redis up.
    run_phase(&mut sessions, 1).await;
    let report = layer.flush().await.unwrap();
    assert_eq!(report.failed(), 0, "{report:?}");
    let checker = connect(&server, prefix).await;
    for s in &sessions {
        assert_eq!(stored_id(&checker, &s.key).await, s.last_id, "{}", s.key);
    }
    drop(checker);

    // Phase 2: Redis killed; streams go on, nothing reaches Redis.
    tokio::task::block_in_place(|| server.kill());
    run_phase(&mut sessions, 2).await;
    let report = tokio::time::timeout(PATIENCE, layer.flush())
        .await
        .expect("flush hung while Redis was down")
        .unwrap();
    assert_eq!(report.persisted(), 0, "wrote to a dead Redis? {report:?}");
    assert!(report.failed() > 0, "{report:?}");
    // Let retries fail and the breaker open.
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Phase 3: Redis back on the same port (with its data if durable).
    tokio::task::block_in_place(|| server.restart());
    let checker = connect(&server, prefix).await;
    for s in sessions.iter().filter(|s| s.last_phase == 1) {
        let want = if durable { s.last_id.clone() } else { None };
        assert_eq!(
            stored_id(&checker, &s.key).await,
            want,
            "after restart: {}",
            s.key
        );
    }
    run_phase(&mut sessions, 3).await;

    let mut recorded = Vec::new();
    for s in sessions {
        // The layer saw every event the client read (or the handle recorded).
        assert_eq!(
            layer.worker().last_event_id(&sid(&s.key), &events_key()),
            s.last_id,
            "{}",
            s.key
        );
        recorded.push(s.close().await);
    }
    let report = layer.shutdown(PATIENCE).await.unwrap();
    assert!(
        report.unpersisted().is_empty(),
        "{:?}",
        report.unpersisted()
    );
    assert!(
        report.written_during_shutdown() > 0,
        "nothing left to write after the restart? {report:?}"
    );
    assert!(server.is_running());

    let mut results = Vec::new();
    for (key, last_id) in recorded {
        let last = last_id.as_deref().expect("every session streamed");
        assert!(
            last.contains(&format!("-p{}-", 1 + key_phase(&key))),
            "{last}"
        );
        let stored = stored_id(&checker, &key).await;
        results.push((key, (last_id, stored)));
    }
    assert_eq!(results.len(), 12);
    results
}

/// Streams 25 events on every session still active in phase `p`, all at once.
async fn run_phase(sessions: &mut [Session], p: u32) {
    let active = sessions.iter_mut().filter(|s| s.last_phase >= p);
    futures_util::future::join_all(active.map(|s| s.stream(p, 25))).await;
}

/// The last phase of a session key `...-i`, as assigned above (0-based).
fn key_phase(key: &str) -> u32 {
    key.rsplit('-').next().unwrap().parse::<u32>().unwrap() % 3
}

// ---------------------------------------------------------------------------------------------
// (b) Two replicas, one Redis.

/// A replica's view of the shared Redis: records every update it writes, and can be held shut
/// so that a replica's write arrives late.
#[derive(Clone)]
struct Replica {
    redis: RedisStore,
    sent: Arc<Mutex<Vec<SessionUpdate>>>,
    /// Writes wait while this is `false`.
    open: watch::Receiver<bool>,
    /// Counts `save_batch` calls that reached the gate.
    arrived: Arc<watch::Sender<usize>>,
    /// While set, writes fail at once (this replica is cut off from Redis).
    cut_off: Arc<AtomicBool>,
}

impl Replica {
    fn new(redis: RedisStore, open: bool) -> (Self, watch::Sender<bool>) {
        let (gate, rx) = watch::channel(open);
        let replica = Self {
            redis,
            sent: Arc::default(),
            open: rx,
            arrived: Arc::new(watch::Sender::new(0)),
            cut_off: Arc::default(),
        };
        (replica, gate)
    }

    fn sent(&self) -> Vec<SessionUpdate> {
        self.sent.lock().unwrap().clone()
    }
}

impl SessionStore for Replica {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.arrived.send_modify(|n| *n += 1);
            if self.cut_off.load(Ordering::SeqCst) {
                return Err(StoreError::transient("replica cut off from redis"));
            }
            let mut open = self.open.clone();
            let _ = open.wait_for(|open| *open).await;
            self.redis.save_batch(batch).await?;
            self.sent.lock().unwrap().extend_from_slice(batch);
            Ok(())
        })
    }

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.redis.load(session, stream)
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        self.redis.delete_session(session)
    }
}

fn replica_layer(store: Replica, config: WorkerConfig) -> EventTrackingLayer {
    EventTrackingLayer::builder()
        .store(store)
        .worker(config)
        .build()
}

/// The update with the highest version among everything both replicas wrote for `key`.
fn newest(all: &[SessionUpdate], key: &str) -> SessionUpdate {
    all.iter()
        .filter(|u| u.session.as_str() == key)
        .max_by_key(|u| u.version)
        .cloned()
        .unwrap_or_else(|| panic!("nothing written for {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_interleaving_ids_keep_the_highest_version() {
    let server = RedisServer::start();
    let prefix = "replicas:interleaved:";
    let (a_store, _a_gate) = Replica::new(connect(&server, prefix).await, true);
    let (b_store, _b_gate) = Replica::new(connect(&server, prefix).await, true);
    let config = fast_worker().flush_interval(Duration::from_millis(3));
    let a = replica_layer(a_store.clone(), config.clone());
    let b = replica_layer(b_store.clone(), config);

    // Both replicas record the same sessions at the same time, each flushing on its own timer:
    // their writes interleave and arrive in whatever order.
    const SESSIONS: u32 = 8;
    let writer = |name: &'static str, layer: EventTrackingLayer| {
        tokio::spawn(async move {
            for round in 0..60u32 {
                for s in 0..SESSIONS {
                    let id = format!("{name}-{s}-{round}");
                    assert_eq!(
                        layer.worker().record(
                            &sid(&format!("shared-{s}")),
                            &events_key(),
                            Some(&id)
                        ),
                        tower_sse_tracking::worker::RecordOutcome::Recorded
                    );
                }
                tokio::time::sleep(Duration::from_millis(1 + u64::from(round % 3))).await;
            }
            layer
        })
    };
    let (a, b) = (writer("a", a), writer("b", b));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    // Flush in the opposite order of creation.
    assert!(b.shutdown(PATIENCE).await.unwrap().unpersisted().is_empty());
    assert!(a.shutdown(PATIENCE).await.unwrap().unpersisted().is_empty());

    let checker = connect(&server, prefix).await;
    let all: Vec<_> = a_store.sent().into_iter().chain(b_store.sent()).collect();
    assert!(
        a_store.sent().len() > SESSIONS as usize && b_store.sent().len() > SESSIONS as usize,
        "expected many interleaved writes"
    );
    for s in 0..SESSIONS {
        let key = format!("shared-{s}");
        let want = newest(&all, &key);
        let got = checker
            .load(&sid(&key), &events_key())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.version, want.version, "{key}");
        // Versions come from a clock with a resolution of a kernel tick: the two replicas can
        // stamp the same version within one tick, and then the first write of it stays.
        let tied: Vec<_> = all
            .iter()
            .filter(|u| u.session.as_str() == key && u.version == want.version)
            .map(|u| u.last_event_id.clone())
            .collect();
        assert!(
            tied.contains(&got.last_event_id),
            "{key}: {got:?} not among {tied:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_late_write_does_not_roll_back_a_newer_one() {
    let server = RedisServer::start();
    let prefix = "replicas:late:";
    // Replica A's writes are held until we let them through.
    let (a_store, a_gate) = Replica::new(connect(&server, prefix).await, false);
    let (b_store, _b_gate) = Replica::new(connect(&server, prefix).await, true);
    let config = fast_worker().store_timeout(PATIENCE);
    let a = replica_layer(a_store.clone(), config.clone());
    let b = replica_layer(b_store.clone(), config);
    let session = sid("moved");

    // The client reads from A; A's worker takes its snapshot and starts writing (held).
    a.worker().record(&session, &events_key(), Some("a-1"));
    a.worker().record(&session, &events_key(), Some("a-2"));
    let mut arrived = a_store.arrived.subscribe();
    tokio::time::timeout(PATIENCE, arrived.wait_for(|n| *n > 0))
        .await
        .expect("replica A never wrote")
        .unwrap();

    // The client reconnects to B (which takes longer than a tick of the clock that stamps
    // versions), and B streams on and writes first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.worker().record(&session, &events_key(), Some("b-1"));
    b.worker().record(&session, &events_key(), Some("b-2"));
    b.flush().await.unwrap();
    let checker = connect(&server, prefix).await;
    let stored = checker
        .load(&session, &events_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_event_id.as_str(), Some("b-2"));

    // A's older write arrives last: refused.
    a_gate.send_replace(true);
    assert!(a.shutdown(PATIENCE).await.unwrap().unpersisted().is_empty());
    assert!(b.shutdown(PATIENCE).await.unwrap().unpersisted().is_empty());
    let a_sent = newest(&a_store.sent(), "moved");
    let b_sent = newest(&b_store.sent(), "moved");
    assert_eq!(a_sent.last_event_id, LastEventId::from("a-2"));
    assert!(a_sent.version < b_sent.version);
    let stored = checker
        .load(&session, &events_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.last_event_id.as_str(),
        Some("b-2"),
        "rolled back by a late write"
    );
    assert_eq!(stored.version, b_sent.version);
}

/// A replica that cannot write (breaker open) writes late the ID its client read *before*
/// moving to another replica. Versions are stamped when an ID is recorded, not when the worker
/// writes it, so that late write is older than the other replica's newer ID and cannot roll the
/// session back. (With versions taken at write time, this test failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_does_not_roll_back_a_newer_id() {
    let server = RedisServer::start();
    let prefix = "replicas:cut-off:";
    let (a_store, _a_gate) = Replica::new(connect(&server, prefix).await, true);
    let (b_store, _b_gate) = Replica::new(connect(&server, prefix).await, true);
    let a = replica_layer(
        a_store.clone(),
        fast_worker()
            .breaker_threshold(1)
            .breaker_cooldown(Duration::from_millis(500)),
    );
    let b = replica_layer(b_store.clone(), fast_worker());
    let session = sid("moved");

    // The client reads a-1 from A, which cannot reach Redis: its write fails, the breaker opens.
    a_store.cut_off.store(true, Ordering::SeqCst);
    a.worker().record(&session, &events_key(), Some("a-1"));
    let mut arrived = a_store.arrived.subscribe();
    tokio::time::timeout(PATIENCE, arrived.wait_for(|n| *n > 0))
        .await
        .expect("replica A never tried to write")
        .unwrap();
    // It reads a-2 from A, then moves to B and reads b-1, which B writes at once.
    a.worker().record(&session, &events_key(), Some("a-2"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.worker().record(&session, &events_key(), Some("b-1"));
    b.flush().await.unwrap();

    // A reaches Redis again and writes what it has.
    a_store.cut_off.store(false, Ordering::SeqCst);
    assert!(a.shutdown(PATIENCE).await.unwrap().unpersisted().is_empty());
    assert!(b.shutdown(PATIENCE).await.unwrap().unpersisted().is_empty());
    let stored = connect(&server, prefix)
        .await
        .load(&session, &events_key())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.last_event_id.as_str(),
        Some("b-1"),
        "A's older ID (versions: A {:?}, B {:?}) rolled the session back",
        a_store.sent().iter().map(|u| u.version).collect::<Vec<_>>(),
        b_store.sent().iter().map(|u| u.version).collect::<Vec<_>>(),
    );
}

#[tokio::test]
async fn script_is_reloaded_after_script_flush() {
    let server = RedisServer::start();
    let store = connect(&server, "noscript:").await;
    let now = SystemTime::now();
    let update = |id: &str, version| SessionUpdate {
        session: sid("s"),
        stream: events_key(),
        last_event_id: LastEventId::from(id),
        version,
        last_activity: now,
    };
    store.save_batch(&[update("1", 1)]).await.unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut connection)
        .await
        .unwrap();
    store.save_batch(&[update("2", 2)]).await.unwrap();
    let stored = store.load(&sid("s"), &events_key()).await.unwrap().unwrap();
    assert_eq!(stored.last_event_id.as_str(), Some("2"));
}

// ---------------------------------------------------------------------------------------------
// (c) Redis Cluster: one script call may only touch keys of one hash slot.

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum of Redis Cluster key slots.
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// The cluster slot of a key, with the hash-tag rule: if the key has a `{` followed later by a
/// `}` with at least one byte between the first `{` and the first `}` after it, only those
/// bytes are hashed.
fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % 16384
}

#[test]
fn key_slots_follow_the_cluster_spec() {
    // The check value of CRC16/XMODEM, quoted by the cluster specification.
    assert_eq!(crc16(b"123456789"), 0x31C3);
    assert_eq!(key_slot(b"foo"), 12182);
    assert_eq!(
        key_slot(b"{user1000}.following"),
        key_slot(b"{user1000}.followers")
    );
    assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
    // The spec's edge cases: empty tag, nested braces, two tags.
    assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
    assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    assert_eq!(key_slot(b"{}"), crc16(b"{}") % 16384);
    assert_eq!(key_slot(b"no-close{tag"), crc16(b"no-close{tag") % 16384);
}

#[tokio::test]
async fn hash_tagged_prefix_puts_every_key_of_a_batch_in_one_slot() {
    let server = RedisServer::start();
    let sessions: Vec<_> = (0..1000).map(|i| sid(&format!("session-{i}"))).collect();
    // Session keys may hold braces of their own: the prefix's tag comes first and wins.
    let odd = [sid("{other}"), sid("a}b{c}"), sid("{}")];

    let tagged = connect(&server, "{sse}:").await;
    let slots: std::collections::HashSet<u16> = sessions
        .iter()
        .chain(&odd)
        .map(|s| key_slot(tagged.key(s).as_bytes()))
        .collect();
    assert_eq!(slots.len(), 1, "{slots:?}");
    assert_eq!(slots.into_iter().next(), Some(key_slot(b"sse")));

    let untagged = connect(&server, "sse:").await;
    let slots: std::collections::HashSet<u16> = sessions
        .iter()
        .map(|s| key_slot(untagged.key(s).as_bytes()))
        .collect();
    assert!(
        slots.len() > 900,
        "untagged keys should spread: {} slots",
        slots.len()
    );
}

#[tokio::test]
async fn a_single_node_cluster_accepts_tagged_batches_and_refuses_untagged_ones() {
    let server = RedisServer::start_with(RedisConfig {
        cluster: true,
        ..RedisConfig::default()
    });
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    // Our slot computation agrees with the server's.
    for key in [
        "foo",
        "{sse}:session-1",
        "sse:session-1",
        "foo{{bar}}zap",
        "a}b{c}",
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(slot, key_slot(key.as_bytes()), "{key}");
    }
    // One node that owns every slot: a real cluster node, with its cross-slot checks.
    let () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut admin)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut admin)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cluster never got ready: {info}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let now = SystemTime::now();
    let batch: Vec<_> = (0..100)
        .map(|i| SessionUpdate {
            session: sid(&format!("session-{i}")),
            stream: events_key(),
            last_event_id: LastEventId::from(format!("id-{i}").as_str()),
            version: 1,
            last_activity: now,
        })
        .collect();
    let tagged = connect(&server, "{sse}:").await;
    tagged.save_batch(&batch).await.unwrap();
    for u in &batch {
        let r = tagged
            .load(&u.session, &events_key())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.last_event_id, u.last_event_id);
    }

    let untagged = connect(&server, "sse:").await;
    let err = untagged.save_batch(&batch).await.unwrap_err();
    assert!(
        !err.is_transient(),
        "a cross-slot batch is not worth retrying: {err}"
    );
    let cause = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<redis::RedisError>())
        .expect("the redis error as cause");
    assert_eq!(
        cause.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot),
        "{cause}"
    );
    // A batch of one key has a single slot: it works even untagged.
    untagged.save_batch(&batch[..1]).await.unwrap();
}
