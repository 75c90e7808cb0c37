//! Metrics.

use super::*;

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
                worker.record(session, &events(), Some(&format!("{i}-{e}")));
            }
        }
        worker.record(&first[0], &events(), Some("0-9"));
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
            worker.record(session, &events(), Some("1"));
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
