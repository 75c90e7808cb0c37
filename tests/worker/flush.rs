//! Flush.

use super::*;

#[tokio::test(start_paused = true)]
async fn flush_returns_after_everything_recorded_before_it_is_written() {
    // Slower than the flush interval, so a tick's write is still running when flush is called.
    let store = TestStore::new(|_, _, _| Action::SleepThenApply(Duration::from_millis(80)));
    let config = WorkerConfig::default().flush_interval(Duration::from_millis(50));
    let worker = WorkerHandle::spawn(store.clone(), config);
    let (a, b) = (sid("a"), sid("b"));

    worker.record(&a, &events(), Some("1"));
    // Wait until the tick's write of a:1 is in flight, then record more.
    wait_until("the first write started", || store.calls() == 1).await;
    worker.record(&a, &events(), Some("2"));
    worker.record(&b, &events(), Some("1"));
    let many: Vec<SessionId> = (0..1000).map(|i| sid(&format!("m{i}"))).collect();
    for session in &many {
        worker.record(session, &events(), Some("m"));
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
    let session = worker.stream(&sid("busy"), &events()).unwrap();
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
    assert!(report.written_during_shutdown() >= 1);
}
