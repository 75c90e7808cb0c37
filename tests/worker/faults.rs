//! Fault injection: nothing lost, nothing rolled back.

use super::*;

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
                worker.record(session, &events(), Some(&id)),
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
        assert_eq!(worker.last_event_id(session, &events()).as_ref(), Some(id));
        let accepted = store.accepted(session);
        assert_eq!(accepted.last(), Some(&Some(id.clone())), "{session}");
    }
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
        worker.record(&a, &events(), Some("1"));
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
        worker.record(&a, &events(), Some("2"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.calls(), 1, "not retried during the cool-down");
        assert_eq!(store.stored(&a), None);
        assert_eq!(worker.last_event_id(&a, &events()).as_deref(), Some("2"));

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
