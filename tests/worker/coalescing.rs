//! Coalescing: only the newest ID per session is written.

use super::*;

#[tokio::test(start_paused = true)]
async fn coalesces_to_newest_id_per_session() {
    let store = TestStore::healthy();
    let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
    let (a, b) = (sid("A"), sid("B"));
    worker.record(&a, &events(), Some("1"));
    worker.record(&a, &events(), Some("2"));
    worker.record(&a, &events(), Some("3"));
    worker.record(&b, &events(), Some("4"));
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
