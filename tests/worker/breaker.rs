//! The circuit breaker.

use super::*;

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
        worker.record(&a, &events(), Some("1"));
        wait_until("three failures", || store.calls() == 3).await;
        let opened = Instant::now();
        assert_eq!(metrics.gauge(m::CIRCUIT_STATE), Some(1.0), "open");
        assert_eq!(metrics.counter(m::FAILURES), 3);

        // Open: not called during the cool-down, even for new sessions.
        worker.record(&b, &events(), Some("1"));
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
        worker.record(&c, &events(), Some("1"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(store.calls(), 6);
        assert_eq!(store.stored(&c).as_deref(), Some("1"));
    });
}
