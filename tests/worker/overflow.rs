//! A full queue parks sessions; the next tick writes them.

use super::*;

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
        worker.record(&queued, &events(), Some("q1"));
        assert_eq!(metrics.counter(m::OVERFLOW_PARKED), 0);
        worker.record(&parked, &events(), Some("p1"));
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
