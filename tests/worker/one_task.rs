//! One worker task, whatever the load.

use super::*;

#[test]
fn exactly_one_task_for_10k_sessions_and_1m_events() {
    const SESSIONS: usize = 10_000;
    const EVENTS: usize = 1_000_000;
    let rt = support::runtime();
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
                worker.record(&sessions[i % SESSIONS], &events(), Some(&id)),
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

/// The worker task ends once nothing can record any more: every handle gone and, since a tracked
/// session (a stream, for the layer) holds the worker's queue open, every session too. It
/// writes what was recorded before it ends.
#[test]
fn worker_task_ends_with_the_last_handle_or_tracked_session() {
    let rt = support::paused_runtime();
    rt.block_on(async {
        let runtime = tokio::runtime::Handle::current().metrics();
        let before = runtime.num_alive_tasks();
        let store = MemoryStore::new();

        // Handles only.
        let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
        let clone = worker.clone();
        worker.record(&sid("a"), &events(), Some("1"));
        clone.record(&sid("b"), &events(), Some("2"));
        drop((worker, clone));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runtime.num_alive_tasks(),
            before,
            "ended with the last handle"
        );
        assert_eq!(stored(&store, &sid("a")).as_deref(), Some("1"));
        assert_eq!(stored(&store, &sid("b")).as_deref(), Some("2"));

        // A session outlives every handle: the worker goes on writing its events.
        let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
        let session = worker.stream(&sid("s"), &events()).unwrap();
        drop(worker);
        session.record(Some("1"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(runtime.num_alive_tasks(), before + 1, "still running");
        assert_eq!(stored(&store, &sid("s")).as_deref(), Some("1"));
        session.record(Some("2"));
        drop(session);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            runtime.num_alive_tasks(),
            before,
            "ended with the last session"
        );
        assert_eq!(stored(&store, &sid("s")).as_deref(), Some("2"));
    });
}
