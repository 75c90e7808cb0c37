//! End-to-end behaviour of the persistence worker through its public API: one task however many
//! sessions, coalescing, retries in due-time order, the circuit breaker, overflow parking,
//! shutdown with live handles, metrics, and no lost or rolled-back last event ID under faults.

#[path = "../support/mod.rs"]
mod support;

use support::{events, sid};

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
    SessionId, StreamKey, metrics as m,
    store::{
        LastEventId, MemoryStore, SessionRecord, SessionStore, SessionUpdate, StoreError,
        StoreFuture,
    },
    worker::{RecordOutcome, WorkerConfig, WorkerHandle},
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The ID a memory store holds for `session`: `None` if absent or cleared.
fn stored(store: &MemoryStore, session: &SessionId) -> Option<String> {
    store.last_event_id(session, &events())
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

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.0.memory.load(session, stream)
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        self.0.memory.delete_session(session)
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
    let rt = support::paused_runtime();
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

fn transient() -> StoreError {
    StoreError::transient("injected")
}

mod breaker;
mod coalescing;
mod faults;
mod flush;
mod forget;
mod one_task;
mod overflow;
mod reported_metrics;
mod retries;
mod shutdown;
