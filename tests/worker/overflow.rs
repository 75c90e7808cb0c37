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

/// The flush interval of the tests of kept sessions.
const TICK: Duration = Duration::from_millis(50);

/// A worker over a memory store ticking every [`TICK`], past its immediate first tick.
async fn ticking(config: WorkerConfig) -> (MemoryStore, WorkerHandle) {
    let store = MemoryStore::new();
    let worker = WorkerHandle::spawn(store.clone(), config.flush_interval(TICK));
    tokio::time::sleep(Duration::from_millis(1)).await;
    (store, worker)
}

/// A session written on consecutive ticks stays with the worker while its events keep coming:
/// they need no trip through the queue (here a full one would park them). After a tick without
/// events it is released, and the next event is queued again.
#[test]
fn a_session_with_events_every_tick_is_not_queued_again() {
    with_metrics(|metrics| async move {
        let (store, worker) = ticking(WorkerConfig::default().queue_capacity(1)).await;
        let (hot, other) = (sid("hot"), sid("other"));
        let tick = || tokio::time::sleep(TICK);

        // Written on two consecutive ticks: from then on the worker keeps it.
        worker.record(&hot, &events(), Some("1"));
        tick().await;
        assert_eq!(stored(&store, &hot).as_deref(), Some("1"));
        worker.record(&hot, &events(), Some("2"));
        tick().await;
        assert_eq!(stored(&store, &hot).as_deref(), Some("2"));
        for n in 3..8 {
            // The queue is full (another session just took its one place): a session that
            // needed queueing would be parked.
            worker.record(&other, &events(), Some(&format!("o{n}")));
            worker.record(&hot, &events(), Some(&n.to_string()));
            assert_eq!(metrics.counter(m::OVERFLOW_PARKED), 0, "event {n}");
            tick().await;
            assert_eq!(
                stored(&store, &hot),
                Some(n.to_string()),
                "written on its tick"
            );
        }

        // A tick without events releases it: the next event needs the (full) queue again.
        tick().await;
        worker.record(&other, &events(), Some("o8"));
        worker.record(&hot, &events(), Some("8"));
        assert_eq!(metrics.counter(m::OVERFLOW_PARKED), 1);
        tick().await;
        assert_eq!(stored(&store, &hot).as_deref(), Some("8"));
        assert_eq!(worker.flush().await.unwrap().failed(), 0);
    });
}

/// A session the worker keeps between ticks (written on consecutive ones) gives nothing back
/// after a forget, and is released by the shutdown: an event after it is counted as dropped,
/// not silently kept as if the worker still had the session.
#[test]
fn a_kept_session_is_released_by_forget_and_by_shutdown() {
    with_metrics(|metrics| async move {
        let (store, worker) = ticking(WorkerConfig::default()).await;
        let (a, b) = (sid("a"), sid("b"));
        for n in ["1", "2"] {
            worker.record(&a, &events(), Some(n));
            worker.record(&b, &events(), Some(n));
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(stored(&store, &a).as_deref(), Some("2"));
        assert_eq!(stored(&store, &b).as_deref(), Some("2"));

        // Recorded while kept, then forgotten: nothing of it is written, on any later tick.
        // (`b` gets an event every tick meanwhile, so the worker keeps it.)
        worker.record(&a, &events(), Some("3"));
        worker.forget(&a).await.unwrap();
        for n in ["b3", "b4", "b5"] {
            worker.record(&b, &events(), Some(n));
            tokio::time::sleep(TICK).await;
        }
        assert_eq!(stored(&store, &a), None);
        // The session's later events are tracked afresh.
        worker.record(&a, &events(), Some("4"));
        worker.record(&b, &events(), Some("b6"));
        tokio::time::sleep(TICK).await;
        assert_eq!(stored(&store, &a).as_deref(), Some("4"));

        // `b` is kept (written on this tick and the one before, clean) when the worker shuts
        // down: nothing is left unwritten, and it is released.
        assert_eq!(stored(&store, &b).as_deref(), Some("b6"));
        let report = worker.shutdown(Duration::from_secs(1)).await.unwrap();
        assert!(report.unpersisted().is_empty());
        assert_eq!(metrics.counter(m::DROPPED_AFTER_SHUTDOWN), 0);
        worker.record(&b, &events(), Some("6"));
        assert_eq!(metrics.counter(m::DROPPED_AFTER_SHUTDOWN), 1);
    });
}
