//! Shutdown with live handles.

use super::*;

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
            handle.record(session, &events(), Some(&format!("{i}-a"))),
            RecordOutcome::Recorded
        );
        assert_eq!(
            handle.record(session, &events(), Some(&format!("{i}-b"))),
            RecordOutcome::Recorded
        );
    }
    assert!(store.is_empty(), "nothing written before the worker runs");

    let report = worker.shutdown(Duration::from_secs(30)).await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.written_during_shutdown(), SESSIONS);
    assert_eq!(store.len(), SESSIONS);
    for (i, session) in sessions.iter().enumerate() {
        assert_eq!(stored(&store, session), Some(format!("{i}-b")));
    }

    // Every clone is still alive; none of them can hand anything over any more.
    let (recorder, metrics) = test_recorder();
    metrics::with_local_recorder(&recorder, || {
        for (i, handle) in clones.iter().enumerate() {
            assert!(handle.is_shut_down());
            handle.record(&sid(&format!("late-{i}")), &events(), Some("x"));
            handle.record(&sessions[i], &events(), Some("y"));
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
