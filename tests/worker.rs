//! End-to-end behaviour of the persistence worker through its public API: one task however many
//! sessions, coalescing, retries in due-time order, the circuit breaker, overflow parking,
//! shutdown with live handles, metrics, and no lost or rolled-back last event ID under faults.

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt::Write as _,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::Instant;
use tower_sse_tracking::{
    SessionId, metrics as m,
    store::{
        LastEventId, MemoryStore, SessionRecord, SessionStore, SessionUpdate, StoreError,
        StoreFuture,
    },
    worker::{RecordOutcome, WorkerConfig, WorkerHandle},
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn sid(key: &str) -> SessionId {
    SessionId::new(key).unwrap()
}

/// The ID a memory store holds for `session`: `None` if absent or cleared.
fn stored(store: &MemoryStore, session: &SessionId) -> Option<String> {
    store
        .get(session)
        .and_then(|r| r.last_event_id.as_str().map(str::to_owned))
}

/// A tiny deterministic PRNG (xorshift64*), so that fault scenarios replay identically.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `cond` every millisecond of (paused) time; panics after ten virtual seconds.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// What the test store does with one `save_batch` call.
enum Action {
    /// Apply the batch and succeed.
    Ok,
    /// Fail without applying anything.
    Fail(StoreError),
    /// Sleep, then apply and succeed (if the worker's timeout has not dropped the call).
    SleepThenApply(Duration),
    /// Apply at once, then sleep before succeeding: the write lands even if the worker gives up.
    ApplyThenSleep(Duration),
}

/// One `save_batch` call as the test store saw it.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    updates: Vec<(SessionId, Option<String>, u64)>,
    failed: bool,
    /// The call returned `Ok` (a call the worker's timeout dropped never does).
    answered: bool,
}

impl Call {
    fn id_of(&self, session: &SessionId) -> Option<Option<&str>> {
        self.updates
            .iter()
            .find(|(s, _, _)| s == session)
            .map(|(_, id, _)| id.as_deref())
    }
}

type Plan = Box<dyn Fn(usize, Instant, &[SessionUpdate]) -> Action + Send + Sync>;

#[derive(Default)]
struct Log {
    calls: Vec<Call>,
    /// Per session, the version and ID of the newest update the store accepted.
    newest: HashMap<SessionId, (u64, LastEventId)>,
    /// Every accepted update that would have rolled a session back, or reused a version for a
    /// different ID, or a batch that named a session twice.
    regressions: Vec<String>,
    /// Per session, the IDs of every accepted update, in order.
    accepted: HashMap<SessionId, Vec<Option<String>>>,
}

/// A [`MemoryStore`] behind a scripted fault plan that logs every call and checks that versions
/// per session only move forward across accepted batches.
#[derive(Clone)]
struct TestStore(Arc<TestStoreInner>);

struct TestStoreInner {
    memory: MemoryStore,
    plan: Plan,
    calls: AtomicUsize,
    log: Mutex<Log>,
}

impl TestStore {
    fn new(
        plan: impl Fn(usize, Instant, &[SessionUpdate]) -> Action + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(TestStoreInner {
            memory: MemoryStore::new(),
            plan: Box::new(plan),
            calls: AtomicUsize::new(0),
            log: Mutex::new(Log::default()),
        }))
    }

    fn healthy() -> Self {
        Self::new(|_, _, _| Action::Ok)
    }

    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    fn call_log(&self) -> Vec<Call> {
        self.0.log.lock().unwrap().calls.clone()
    }

    fn failed_calls(&self) -> usize {
        self.call_log().iter().filter(|c| c.failed).count()
    }

    /// Calls that neither failed nor answered: dropped by the worker's `store_timeout`.
    fn timed_out_calls(&self) -> usize {
        self.call_log()
            .iter()
            .filter(|c| !c.failed && !c.answered)
            .count()
    }

    /// The calls whose batch named `session`.
    fn calls_for(&self, session: &SessionId) -> Vec<Call> {
        self.call_log()
            .into_iter()
            .filter(|c| c.id_of(session).is_some())
            .collect()
    }

    fn accepted(&self, session: &SessionId) -> Vec<Option<String>> {
        let log = self.0.log.lock().unwrap();
        log.accepted.get(session).cloned().unwrap_or_default()
    }

    fn regressions(&self) -> Vec<String> {
        self.0.log.lock().unwrap().regressions.clone()
    }

    fn stored(&self, session: &SessionId) -> Option<String> {
        stored(&self.0.memory, session)
    }

    /// Checks the batch against what was accepted before, then applies it.
    async fn accept(&self, batch: &[SessionUpdate]) {
        {
            let mut log = self.0.log.lock().unwrap();
            let log = &mut *log;
            let mut seen = std::collections::HashSet::new();
            for u in batch {
                if !seen.insert(&u.session) {
                    log.regressions
                        .push(format!("{:?} twice in one batch", u.session));
                }
                if let Some((version, id)) = log.newest.get(&u.session) {
                    if u.version < *version {
                        log.regressions.push(format!(
                            "{:?}: version went back from {version} ({id:?}) to {} ({:?})",
                            u.session, u.version, u.last_event_id
                        ));
                    } else if u.version == *version && u.last_event_id != *id {
                        log.regressions.push(format!(
                            "{:?}: version {version} reused for {:?} after {id:?}",
                            u.session, u.last_event_id
                        ));
                    }
                }
                let newest = log
                    .newest
                    .entry(u.session.clone())
                    .or_insert((0, LastEventId::Cleared));
                if u.version >= newest.0 {
                    *newest = (u.version, u.last_event_id.clone());
                }
                log.accepted
                    .entry(u.session.clone())
                    .or_default()
                    .push(u.last_event_id.as_str().map(str::to_owned));
            }
        }
        self.0.memory.save_batch(batch).await.unwrap();
    }
}

impl SessionStore for TestStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let at = Instant::now();
        let action = (self.0.plan)(n, at, batch);
        self.0.log.lock().unwrap().calls.push(Call {
            at,
            updates: batch
                .iter()
                .map(|u| {
                    (
                        u.session.clone(),
                        u.last_event_id.as_str().map(str::to_owned),
                        u.version,
                    )
                })
                .collect(),
            failed: matches!(action, Action::Fail(_)),
            answered: false,
        });
        Box::pin(async move {
            match action {
                Action::Ok => self.accept(batch).await,
                Action::Fail(error) => return Err(error),
                Action::SleepThenApply(d) => {
                    tokio::time::sleep(d).await;
                    self.accept(batch).await;
                }
                Action::ApplyThenSleep(d) => {
                    self.accept(batch).await;
                    tokio::time::sleep(d).await;
                }
            }
            self.0.log.lock().unwrap().calls[n - 1].answered = true;
            Ok(())
        })
    }

    fn load<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, Option<SessionRecord>> {
        self.0.memory.load(session)
    }
}

/// Every value each gauge was set to, in order.
type GaugeLog = Arc<Mutex<HashMap<String, Vec<f64>>>>;

/// metrics-util's [`DebuggingRecorder`], plus a log of every gauge update: its snapshots swap
/// gauges (like counters) back to zero, so "set to 0" and "not set since" look alike there.
struct TestRecorder {
    debugging: DebuggingRecorder,
    gauges: GaugeLog,
}

struct LoggedGauge {
    inner: Gauge,
    name: String,
    log: GaugeLog,
}

impl LoggedGauge {
    fn push(&self, update: impl FnOnce(f64) -> f64) {
        let mut log = self.log.lock().unwrap();
        let values = log.entry(self.name.clone()).or_default();
        let value = update(values.last().copied().unwrap_or(0.0));
        values.push(value);
    }
}

impl GaugeFn for LoggedGauge {
    fn increment(&self, value: f64) {
        self.inner.increment(value);
        self.push(|last| last + value);
    }

    fn decrement(&self, value: f64) {
        self.inner.decrement(value);
        self.push(|last| last - value);
    }

    fn set(&self, value: f64) {
        self.inner.set(value);
        self.push(|_| value);
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.debugging.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.debugging.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.debugging.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.debugging.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(LoggedGauge {
            inner: self.debugging.register_gauge(key, metadata),
            name: key.name().to_owned(),
            log: self.gauges.clone(),
        }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.debugging.register_histogram(key, metadata)
    }
}

/// What a [`TestRecorder`] saw. Counters and histograms accumulate the deltas the
/// [`Snapshotter`] hands out (it resets them on every snapshot).
struct Metrics {
    snapshotter: Snapshotter,
    gauges: GaugeLog,
    counters: RefCell<HashMap<String, u64>>,
    histograms: RefCell<HashMap<String, Vec<f64>>>,
}

impl Metrics {
    fn refresh(&self) {
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            match value {
                DebugValue::Counter(n) => *self.counters.borrow_mut().entry(name).or_default() += n,
                DebugValue::Histogram(vs) => self
                    .histograms
                    .borrow_mut()
                    .entry(name)
                    .or_default()
                    .extend(vs.into_iter().map(|v| v.into_inner())),
                DebugValue::Gauge(_) => {}
            }
        }
    }

    fn counter(&self, name: &str) -> u64 {
        self.refresh();
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }

    fn histogram(&self, name: &str) -> Vec<f64> {
        self.refresh();
        self.histograms
            .borrow()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// The gauge's current value, `None` if it was never set.
    fn gauge(&self, name: &str) -> Option<f64> {
        self.gauge_history(name).last().copied()
    }

    /// Every value the gauge was set to, in order.
    fn gauge_history(&self, name: &str) -> Vec<f64> {
        let log = self.gauges.lock().unwrap();
        log.get(name).cloned().unwrap_or_default()
    }
}

/// Runs `test` on a current-thread runtime with paused time, under a per-test local metrics
/// recorder. The worker's task runs on this same thread, so it records into it as well.
fn with_metrics<F: Future<Output = ()>>(test: impl FnOnce(Metrics) -> F) {
    let (recorder, metrics) = test_recorder();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || rt.block_on(test(metrics)));
}

fn test_recorder() -> (TestRecorder, Metrics) {
    let debugging = DebuggingRecorder::new();
    let gauges = GaugeLog::default();
    let metrics = Metrics {
        snapshotter: debugging.snapshotter(),
        gauges: gauges.clone(),
        counters: RefCell::default(),
        histograms: RefCell::default(),
    };
    (TestRecorder { debugging, gauges }, metrics)
}

// ---------------------------------------------------------------------------------------------
// 1. One task, whatever the load
// ---------------------------------------------------------------------------------------------

#[test]
fn exactly_one_task_for_10k_sessions_and_1m_events() {
    const SESSIONS: usize = 10_000;
    const EVENTS: usize = 1_000_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = tokio::runtime::Handle::current().metrics();
        let before = runtime.num_alive_tasks();
        let store = MemoryStore::new();
        let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
        assert_eq!(runtime.num_alive_tasks(), before + 1, "spawn adds one task");

        let sessions: Vec<SessionId> = (0..SESSIONS).map(|i| sid(&format!("s{i}"))).collect();
        let mut id = String::new();
        for i in 0..EVENTS {
            id.clear();
            write!(id, "{i}").unwrap();
            assert_eq!(
                worker.record(&sessions[i % SESSIONS], Some(&id)),
                tower_sse_tracking::worker::RecordOutcome::Recorded
            );
            if i % 1_000 == 999 {
                // Let the worker take queued sessions and tick while the load goes on.
                tokio::task::yield_now().await;
            }
            if i % 10_000 == 9_999 {
                assert_eq!(
                    runtime.num_alive_tasks(),
                    before + 1,
                    "no task per session or per event (after {} events)",
                    i + 1
                );
            }
        }
        worker.flush().await.unwrap();
        assert_eq!(runtime.num_alive_tasks(), before + 1);
        assert_eq!(worker.tracked_sessions(), SESSIONS);
        for (s, session) in sessions.iter().enumerate() {
            let last = EVENTS - SESSIONS + s;
            assert_eq!(stored(&store, session), Some(last.to_string()), "{session}");
        }
    });
}

#[test]
fn worker_task_ends_once_every_handle_is_dropped() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = tokio::runtime::Handle::current().metrics();
        let before = runtime.num_alive_tasks();
        let store = MemoryStore::new();
        let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
        let clone = worker.clone();
        worker.record(&sid("a"), Some("1"));
        clone.record(&sid("b"), Some("2"));
        drop(worker);
        drop(clone);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runtime.num_alive_tasks(),
            before,
            "the worker task stops when nothing can record any more"
        );
        assert_eq!(stored(&store, &sid("a")).as_deref(), Some("1"));
        assert_eq!(stored(&store, &sid("b")).as_deref(), Some("2"));
    });
}

/// A tracked session (a stream, for the layer) holds the worker's queue open: with every handle
/// gone the worker keeps writing its events, and ends once the session is dropped too.
#[test]
fn worker_lives_while_a_tracked_session_does_and_ends_with_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let runtime = tokio::runtime::Handle::current().metrics();
        let before = runtime.num_alive_tasks();
        let store = MemoryStore::new();
        let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
        let session = worker.session(&sid("s")).unwrap();
        drop(worker);
        session.record(Some("1"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runtime.num_alive_tasks(), before + 1, "still running");
        assert_eq!(
            stored(&store, &sid("s")).as_deref(),
            Some("1"),
            "and writing"
        );
        session.record(Some("2"));
        drop(session);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runtime.num_alive_tasks(),
            before,
            "ended with the last sender"
        );
        assert_eq!(
            stored(&store, &sid("s")).as_deref(),
            Some("2"),
            "after writing the rest"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Coalescing
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn coalesces_to_newest_id_per_session() {
    let store = TestStore::healthy();
    let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
    let (a, b) = (sid("A"), sid("B"));
    worker.record(&a, Some("1"));
    worker.record(&a, Some("2"));
    worker.record(&a, Some("3"));
    worker.record(&b, Some("4"));
    let report = worker.flush().await.unwrap();
    assert_eq!(report.persisted(), 2);
    assert_eq!(report.failed(), 0);

    let calls = store.call_log();
    assert_eq!(calls.len(), 1, "one save_batch call: {calls:?}");
    let mut batch: Vec<_> = calls[0]
        .updates
        .iter()
        .map(|(s, id, _)| (s.as_str().to_owned(), id.clone()))
        .collect();
    batch.sort();
    assert_eq!(
        batch,
        [
            ("A".to_owned(), Some("3".to_owned())),
            ("B".to_owned(), Some("4".to_owned()))
        ]
    );
    // Nothing is written again while nothing changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.calls(), 1);
    assert_eq!(store.stored(&a).as_deref(), Some("3"));
    assert_eq!(store.stored(&b).as_deref(), Some("4"));
}

// ---------------------------------------------------------------------------------------------
// 3. Fault injection: nothing lost, nothing rolled back
// ---------------------------------------------------------------------------------------------

/// Records many events over many sessions, interleaved with (paused) time passing, against a
/// faulty store; then shuts down with a generous deadline and checks that every session's last
/// recorded ID is stored and no accepted write ever rolled a session back.
async fn survives_faults(store: TestStore, config: WorkerConfig, seed: u64) {
    const SESSIONS: u64 = 300;
    const ROUNDS: usize = 300;
    let worker = WorkerHandle::spawn(store.clone(), config);
    let sessions: Vec<SessionId> = (0..SESSIONS).map(|i| sid(&format!("s{i}"))).collect();
    let mut last: HashMap<SessionId, String> = HashMap::new();
    let mut rng = Rng(seed);
    let mut counter = 0u64;
    for _ in 0..ROUNDS {
        for _ in 0..rng.below(60) {
            let session = &sessions[rng.below(SESSIONS) as usize];
            counter += 1;
            let id = counter.to_string();
            assert_eq!(
                worker.record(session, Some(&id)),
                tower_sse_tracking::worker::RecordOutcome::Recorded
            );
            last.insert(session.clone(), id);
        }
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
    }
    assert!(counter > 5_000 && last.len() == SESSIONS as usize);

    let report = worker.shutdown(Duration::from_secs(300)).await.unwrap();
    assert!(
        report.unpersisted().is_empty(),
        "unpersisted: {:?}",
        report.unpersisted()
    );
    assert!(
        store.failed_calls() + store.timed_out_calls() > 0,
        "the fault was exercised"
    );
    assert_eq!(store.regressions(), Vec::<String>::new());
    for (session, id) in &last {
        assert_eq!(store.stored(session).as_ref(), Some(id), "{session}");
        assert_eq!(worker.last_event_id(session).as_ref(), Some(id));
        let accepted = store.accepted(session);
        assert_eq!(accepted.last(), Some(&Some(id.clone())), "{session}");
    }
}

fn transient() -> StoreError {
    StoreError::transient("injected")
}

#[tokio::test(start_paused = true)]
async fn every_third_call_failing_loses_nothing_and_never_rolls_back() {
    let store = TestStore::new(|n, _, _| {
        if n % 3 == 0 {
            Action::Fail(transient())
        } else {
            Action::Ok
        }
    });
    survives_faults(store, WorkerConfig::default(), 0x5eed_0001).await;
}

#[tokio::test(start_paused = true)]
async fn store_outage_window_loses_nothing_and_never_rolls_back() {
    let start = Instant::now();
    let outage = start + Duration::from_secs(1)..start + Duration::from_secs(3);
    let store = TestStore::new(move |_, at, _| {
        if outage.contains(&at) {
            Action::Fail(transient())
        } else {
            Action::Ok
        }
    });
    let config = WorkerConfig::default().breaker_cooldown(Duration::from_millis(500));
    survives_faults(store, config, 0x5eed_0002).await;
}

#[tokio::test(start_paused = true)]
async fn store_slower_than_flush_interval_loses_nothing() {
    let store = TestStore::new(|n, _, _| {
        if n % 5 == 0 {
            Action::Fail(transient())
        } else {
            Action::SleepThenApply(Duration::from_millis(120))
        }
    });
    let config = WorkerConfig::default().flush_interval(Duration::from_millis(50));
    survives_faults(store, config, 0x5eed_0003).await;
}

#[tokio::test(start_paused = true)]
async fn store_slower_than_store_timeout_is_retried_and_loses_nothing() {
    // Every third call outlives the timeout and is dropped before it writes anything.
    let store = TestStore::new(|n, _, _| {
        if n % 3 == 0 {
            Action::SleepThenApply(Duration::from_millis(400))
        } else {
            Action::SleepThenApply(Duration::from_millis(20))
        }
    });
    let config = WorkerConfig::default().store_timeout(Duration::from_millis(200));
    survives_faults(store, config, 0x5eed_0004).await;
}

#[tokio::test(start_paused = true)]
async fn write_that_lands_after_the_timeout_is_rewritten_without_rolling_back() {
    // Every third call writes, then answers too late: the worker counts it as failed and writes
    // again, maybe with a newer ID, never an older one.
    let store = TestStore::new(|n, _, _| {
        if n % 3 == 0 {
            Action::ApplyThenSleep(Duration::from_millis(400))
        } else {
            Action::Ok
        }
    });
    let config = WorkerConfig::default().store_timeout(Duration::from_millis(200));
    survives_faults(store.clone(), config, 0x5eed_0005).await;
    assert!(store.timed_out_calls() > 0, "the fault was exercised");
}

#[test]
fn permanent_error_keeps_the_id_and_writes_it_after_the_breaker_cooldown() {
    with_metrics(|metrics| async move {
        let store = TestStore::new(|n, _, _| {
            if n == 1 {
                Action::Fail(StoreError::permanent("refused"))
            } else {
                Action::Ok
            }
        });
        let cooldown = Duration::from_secs(5);
        let config = WorkerConfig::default()
            .flush_interval(Duration::from_millis(10))
            .breaker_cooldown(cooldown);
        let worker = WorkerHandle::spawn(store.clone(), config);
        let a = sid("a");
        worker.record(&a, Some("1"));
        wait_until("the first write failed", || store.calls() == 1).await;
        let failed_at = Instant::now();
        assert_eq!(metrics.counter(m::RETRY_EXHAUSTED), 1);
        assert_eq!(
            metrics.counter(m::RETRIES),
            0,
            "no fast retry for a permanent error"
        );

        // Kept in memory, not retried before the cool-down, even with newer events.
        tokio::time::sleep(Duration::from_secs(2)).await;
        worker.record(&a, Some("2"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.calls(), 1, "not retried during the cool-down");
        assert_eq!(store.stored(&a), None);
        assert_eq!(worker.last_event_id(&a).as_deref(), Some("2"));

        wait_until("written after the cool-down", || store.calls() == 2).await;
        assert!(failed_at.elapsed() >= cooldown - Duration::from_millis(20));
        assert!(failed_at.elapsed() <= cooldown + Duration::from_millis(50));
        assert_eq!(store.stored(&a).as_deref(), Some("2"), "newest ID written");
        assert_eq!(store.accepted(&a), [Some("2".to_owned())]);
        assert_eq!(metrics.counter(m::PERSISTED), 1);
        assert_eq!(metrics.counter(m::RETRY_EXHAUSTED), 1);
        assert_eq!(metrics.counter(m::FAILURES), 1);
    });
}

// ---------------------------------------------------------------------------------------------
// 4. A full queue parks sessions; the next tick writes them
// ---------------------------------------------------------------------------------------------

#[test]
fn queue_full_parks_session_and_next_tick_persists_it() {
    with_metrics(|metrics| async move {
        let interval = Duration::from_millis(50);
        let store = MemoryStore::new();
        let config = WorkerConfig::default()
            .queue_capacity(1)
            .flush_interval(interval);
        let worker = WorkerHandle::spawn(store.clone(), config);
        // Let the worker start and take its immediate first tick.
        tokio::time::sleep(Duration::from_millis(1)).await;

        let (queued, parked) = (sid("queued"), sid("parked"));
        worker.record(&queued, Some("q1"));
        assert_eq!(metrics.counter(m::OVERFLOW_PARKED), 0);
        worker.record(&parked, Some("p1"));
        assert_eq!(
            metrics.counter(m::OVERFLOW_PARKED),
            1,
            "found the queue full"
        );
        // The worker takes the queued session but writes nothing before its next tick.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stored(&store, &parked), None);

        // No new event: time alone gets the parked session written.
        tokio::time::sleep(interval + Duration::from_millis(1)).await;
        assert_eq!(stored(&store, &parked).as_deref(), Some("p1"));
        assert_eq!(stored(&store, &queued).as_deref(), Some("q1"));
        assert_eq!(metrics.counter(m::OVERFLOW_PARKED), 1);
        assert_eq!(metrics.counter(m::PERSISTED), 2);
    });
}

// ---------------------------------------------------------------------------------------------
// 5. Shutdown with live handles
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_persists_100k_queued_ids_with_live_clones() {
    const SESSIONS: usize = 100_000;
    let store = MemoryStore::with_limits(2 * SESSIONS, Duration::from_secs(24 * 3600));
    // The default queue (8192) is far smaller: most sessions are parked in the overflow set.
    let config = WorkerConfig::default().max_sessions(2 * SESSIONS);
    let worker = WorkerHandle::spawn(store.clone(), config);
    let clones: Vec<WorkerHandle> = (0..4).map(|_| worker.clone()).collect();
    let sessions: Vec<SessionId> = (0..SESSIONS).map(|i| sid(&format!("s{i}"))).collect();
    for (i, session) in sessions.iter().enumerate() {
        let handle = &clones[i % clones.len()];
        assert_eq!(
            handle.record(session, Some(&format!("{i}-a"))),
            RecordOutcome::Recorded
        );
        assert_eq!(
            handle.record(session, Some(&format!("{i}-b"))),
            RecordOutcome::Recorded
        );
    }
    assert!(store.is_empty(), "nothing written before the worker runs");

    let report = worker.shutdown(Duration::from_secs(30)).await.unwrap();
    assert_eq!(report.unpersisted(), &[] as &[SessionId]);
    assert_eq!(report.persisted(), SESSIONS);
    assert_eq!(store.len(), SESSIONS);
    for (i, session) in sessions.iter().enumerate() {
        assert_eq!(stored(&store, session), Some(format!("{i}-b")));
    }

    // Every clone is still alive; none of them can hand anything over any more.
    let (recorder, metrics) = test_recorder();
    metrics::with_local_recorder(&recorder, || {
        for (i, handle) in clones.iter().enumerate() {
            assert!(handle.is_shut_down());
            handle.record(&sid(&format!("late-{i}")), Some("x"));
            handle.record(&sessions[i], Some("y"));
        }
    });
    assert_eq!(
        metrics.counter(m::DROPPED_AFTER_SHUTDOWN),
        2 * clones.len() as u64
    );
    for handle in &clones {
        assert!(handle.flush().await.is_err(), "flush after shutdown");
        assert!(
            handle.shutdown(Duration::from_secs(1)).await.is_err(),
            "second shutdown"
        );
    }
    assert_eq!(stored(&store, &sessions[0]).as_deref(), Some("0-b"));
    assert_eq!(stored(&store, &sid("late-0")), None);
}

// ---------------------------------------------------------------------------------------------
// 6. Retries by due time; the newest ID supersedes a pending retry
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retries_follow_due_time_and_newer_ids_supersede_pending_retries() {
    let (a, b) = (sid("a"), sid("b"));
    // `a` fails its first three writes, `b` its first one.
    let failures = Mutex::new(HashMap::from([(a.clone(), 3u32), (b.clone(), 1u32)]));
    let store = TestStore::new(move |_, _, batch| {
        let mut failures = failures.lock().unwrap();
        let mut fail = false;
        for u in batch {
            if let Some(left) = failures.get_mut(&u.session).filter(|left| **left > 0) {
                *left -= 1;
                fail = true;
            }
        }
        if fail {
            Action::Fail(transient())
        } else {
            Action::Ok
        }
    });
    let tick = Duration::from_millis(10);
    let base = Duration::from_millis(200);
    let config = WorkerConfig::default()
        .flush_interval(tick)
        .base_backoff(base)
        .max_backoff(Duration::from_secs(10))
        .max_attempts(10)
        .breaker_threshold(100);
    let worker = WorkerHandle::spawn(store.clone(), config);

    worker.record(&a, Some("a1"));
    wait_until("a failed once", || store.calls_for(&a).len() == 1).await;
    worker.record(&a, Some("a2"));
    wait_until("a failed three times", || store.calls_for(&a).len() == 3).await;
    // `a`'s next attempt is due 400..800 ms after its third failure; `b` fails now and is due
    // 100..200 ms later: it is retried first although scheduled later.
    worker.record(&b, Some("b1"));
    wait_until("b failed once", || store.calls_for(&b).len() == 1).await;
    worker.record(&b, Some("b2"));
    worker.record(&a, Some("a3"));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let a_calls = store.calls_for(&a);
    let b_calls = store.calls_for(&b);
    let ids = |calls: &[Call], s: &SessionId| -> Vec<String> {
        calls
            .iter()
            .map(|c| c.id_of(s).unwrap().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&a_calls, &a), ["a1", "a2", "a2", "a3"]);
    assert_eq!(ids(&b_calls, &b), ["b1", "b2"]);
    assert_eq!(
        a_calls.iter().map(|c| c.failed).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    assert_eq!(
        b_calls.iter().map(|c| c.failed).collect::<Vec<_>>(),
        [true, false]
    );
    // Each retry waits for its backoff: between half and all of base * 2^(attempt - 1), plus at
    // most one tick.
    for (attempt, pair) in a_calls.windows(2).enumerate() {
        let full = base * (1 << attempt);
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= full / 2 && waited <= full + tick,
            "a, attempt {}: waited {waited:?}",
            attempt + 1
        );
    }
    let waited = b_calls[1].at - b_calls[0].at;
    assert!(waited >= base / 2 && waited <= base + tick, "b: {waited:?}");
    assert!(
        b_calls[0].at >= a_calls[2].at,
        "b failed after a's third failure"
    );
    assert!(
        b_calls[1].at < a_calls[3].at,
        "the earlier due time goes first"
    );
    // A pending retry never writes an older ID than the newest recorded one.
    assert_eq!(store.accepted(&a), [Some("a3".to_owned())]);
    assert_eq!(store.accepted(&b), [Some("b2".to_owned())]);
    assert_eq!(store.regressions(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 7. Circuit breaker
// ---------------------------------------------------------------------------------------------

#[test]
fn circuit_breaker_rests_the_store_then_probes_with_one_batch() {
    with_metrics(|metrics| async move {
        let failing = Arc::new(AtomicBool::new(true));
        let store = TestStore::new({
            let failing = failing.clone();
            move |_, _, _| {
                if failing.load(Ordering::SeqCst) {
                    Action::Fail(transient())
                } else {
                    Action::Ok
                }
            }
        });
        let cooldown = Duration::from_secs(5);
        let config = WorkerConfig::default()
            .flush_interval(Duration::from_millis(10))
            .base_backoff(Duration::from_millis(10))
            .max_backoff(Duration::from_millis(10))
            .max_attempts(1000)
            .breaker_threshold(3)
            .breaker_cooldown(cooldown);
        let worker = WorkerHandle::spawn(store.clone(), config);
        let (a, b, c) = (sid("a"), sid("b"), sid("c"));
        worker.record(&a, Some("1"));
        wait_until("three failures", || store.calls() == 3).await;
        let opened = Instant::now();
        assert_eq!(metrics.gauge(m::CIRCUIT_STATE), Some(1.0), "open");
        assert_eq!(metrics.counter(m::FAILURES), 3);

        // Open: not called during the cool-down, even for new sessions.
        worker.record(&b, Some("1"));
        tokio::time::sleep(cooldown - Duration::from_millis(100)).await;
        assert_eq!(store.calls(), 3, "store left alone during the cool-down");

        // One probe; it fails, so the breaker opens again for another cool-down.
        wait_until("the first probe", || store.calls() == 4).await;
        assert!(opened.elapsed() >= cooldown);
        let probe = &store.call_log()[3];
        assert_eq!(probe.updates.len(), 2, "a and b in the one probe batch");
        assert_eq!(metrics.gauge(m::CIRCUIT_STATE), Some(1.0), "open again");
        let reopened = Instant::now();
        failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(cooldown - Duration::from_millis(100)).await;
        assert_eq!(store.calls(), 4);

        // The next probe succeeds and closes the breaker.
        wait_until("the second probe", || store.calls() == 5).await;
        assert!(reopened.elapsed() >= cooldown - Duration::from_millis(10));
        assert_eq!(metrics.gauge(m::CIRCUIT_STATE), Some(0.0), "closed");
        assert_eq!(store.stored(&a).as_deref(), Some("1"));
        assert_eq!(store.stored(&b).as_deref(), Some("1"));

        let mut states = metrics.gauge_history(m::CIRCUIT_STATE);
        states.dedup();
        assert_eq!(
            states,
            [0.0, 1.0, 2.0, 1.0, 2.0, 0.0],
            "closed, open, half-open, open, half-open, closed"
        );

        // Closed: writes flow again at the normal pace.
        worker.record(&c, Some("1"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(store.calls(), 6);
        assert_eq!(store.stored(&c).as_deref(), Some("1"));
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn metrics_report_writes_batches_coalescing_queue_failures_and_retries() {
    with_metrics(|metrics| async move {
        let delay = Duration::from_millis(30);
        let store = TestStore::new(move |n, _, _| {
            if n == 1 {
                Action::Fail(transient())
            } else {
                Action::SleepThenApply(delay)
            }
        });
        let interval = Duration::from_millis(50);
        let config = WorkerConfig::default()
            .queue_capacity(64)
            .flush_interval(interval)
            .base_backoff(Duration::from_millis(100));
        let worker = WorkerHandle::spawn(store.clone(), config);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(metrics.gauge(m::QUEUE_CAPACITY), Some(64.0));
        assert_eq!(metrics.gauge(m::CIRCUIT_STATE), Some(0.0));

        // 10 sessions x 10 events, plus one duplicate ID: 101 events.
        let first: Vec<SessionId> = (0..10).map(|i| sid(&format!("s{i}"))).collect();
        for (i, session) in first.iter().enumerate() {
            for e in 0..10 {
                worker.record(session, Some(&format!("{i}-{e}")));
            }
        }
        worker.record(&first[0], Some("0-9"));
        assert_eq!(metrics.counter(m::DUPLICATE_EVENTS), 1);

        // First write fails: one failure, ten retries scheduled, ten sessions pending.
        wait_until("the first write", || store.calls() == 1).await;
        assert_eq!(metrics.counter(m::FAILURES), 1);
        assert_eq!(metrics.counter(m::RETRIES), 10);
        assert_eq!(metrics.counter(m::PERSISTED), 0);
        assert_eq!(metrics.gauge(m::PENDING_SESSIONS), Some(10.0));

        // The retry is slow; seven sessions queue up behind it.
        wait_until("the retry started", || store.calls() == 2).await;
        let second: Vec<SessionId> = (0..7).map(|i| sid(&format!("t{i}"))).collect();
        for session in &second {
            worker.record(session, Some("1"));
        }
        tokio::time::sleep(delay + Duration::from_millis(1)).await;
        assert_eq!(store.calls(), 2);
        assert_eq!(metrics.gauge(m::QUEUE_DEPTH), Some(7.0));

        let report = worker.flush().await.unwrap();
        assert_eq!(report.persisted(), 7);
        assert_eq!(metrics.gauge(m::QUEUE_DEPTH), Some(0.0));
        assert_eq!(metrics.gauge(m::PENDING_SESSIONS), Some(0.0));
        assert_eq!(metrics.counter(m::PERSISTED), 17);
        assert_eq!(
            metrics.counter(m::EVENTS),
            101 + 7,
            "every event counted once"
        );
        assert_eq!(metrics.counter(m::FAILURES), 1);
        assert_eq!(metrics.counter(m::RETRY_EXHAUSTED), 0);
        assert_eq!(metrics.histogram(m::BATCH_SIZE), [10.0, 10.0, 7.0]);
        assert_eq!(metrics.histogram(m::COALESCE_RATIO), [10.1, 1.0]);
        let durations = metrics.histogram(m::FLUSH_DURATION);
        assert_eq!(durations.len(), 3, "{durations:?}");
        assert!(
            durations[0] < 0.001,
            "the failure was immediate: {durations:?}"
        );
        for d in &durations[1..] {
            assert!((0.029..0.032).contains(d), "about 30 ms: {durations:?}");
        }
        tokio::time::sleep(interval).await;
        assert_eq!(metrics.gauge(m::TRACKED_SESSIONS), Some(17.0));
        assert_eq!(metrics.gauge(m::CIRCUIT_STATE), Some(0.0));
        worker.shutdown(Duration::from_secs(1)).await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// 9. Flush
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn flush_returns_after_everything_recorded_before_it_is_written() {
    // Slower than the flush interval, so a tick's write is still running when flush is called.
    let store = TestStore::new(|_, _, _| Action::SleepThenApply(Duration::from_millis(80)));
    let config = WorkerConfig::default().flush_interval(Duration::from_millis(50));
    let worker = WorkerHandle::spawn(store.clone(), config);
    let (a, b) = (sid("a"), sid("b"));

    worker.record(&a, Some("1"));
    // Wait until the tick's write of a:1 is in flight, then record more.
    wait_until("the first write started", || store.calls() == 1).await;
    worker.record(&a, Some("2"));
    worker.record(&b, Some("1"));
    let many: Vec<SessionId> = (0..1000).map(|i| sid(&format!("m{i}"))).collect();
    for session in &many {
        worker.record(session, Some("m"));
    }
    let report = worker.flush().await.unwrap();
    assert_eq!(report.failed(), 0);
    // Right after flush, with no more time passing: everything is there.
    assert_eq!(store.stored(&a).as_deref(), Some("2"));
    assert_eq!(store.stored(&b).as_deref(), Some("1"));
    for session in &many {
        assert_eq!(store.stored(session).as_deref(), Some("m"));
    }
    assert_eq!(store.regressions(), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn shutdown_paces_rewrites_of_streams_that_keep_recording() {
    // A stream that keeps recording during shutdown turns its session dirty during every write:
    // the worker writes it again once per flush interval until the deadline, never back to back.
    let store = TestStore::new(|_, _, _| Action::SleepThenApply(Duration::from_millis(1)));
    let config = WorkerConfig::default().flush_interval(Duration::from_millis(50));
    let worker = WorkerHandle::spawn(store.clone(), config);
    let session = worker.session(&sid("busy")).unwrap();
    session.record(Some("0"));
    let producer = tokio::spawn(async move {
        for i in 1..=5_000u32 {
            session.record(Some(&i.to_string()));
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let report = worker.shutdown(Duration::from_secs(1)).await.unwrap();
    producer.abort();
    let calls = store.calls();
    assert!(
        calls <= 1 + 1000 / 50 + 2,
        "{calls} writes in a 1 s shutdown with a 50 ms flush interval"
    );
    assert!(report.persisted() >= 1);
}
