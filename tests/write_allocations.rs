//! A store write of a short ID allocates nothing per write: at low rates every event is its own
//! write, so an allocation there is one per event. Counted with a counting global allocator (in
//! its own test binary so that it does not affect other tests).

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::time::Duration;

use counting::made;
use support::events;
use tower_sse_tracking::{
    EventTrackingLayer, SessionId,
    store::{LastEventId, MemoryStore, SessionStore},
    worker::WorkerConfig,
};

const FLUSH: Duration = Duration::from_millis(50);
const SESSIONS: usize = 1_000;
const TICKS: usize = 12;
/// Ticks that grow buffers once: not counted.
const WARM_UP: usize = 6;

// One test (the counter is global).
#[test]
fn writes_of_ids_up_to_38_bytes_allocate_nothing_per_write() {
    let rt = support::paused_runtime();
    rt.block_on(async {
        let store = MemoryStore::new();
        let layer = EventTrackingLayer::builder()
            .store(store.clone())
            .worker(WorkerConfig::default().flush_interval(FLUSH))
            .build();
        let stream = events();
        let sessions: Vec<SessionId> = (0..SESSIONS)
            .map(|i| SessionId::new(&format!("alloc-{i:06}")).unwrap())
            .collect();
        // UUIDs (36 bytes, the longest common shape), made before counting; a new one per
        // session and tick, as a stream at ~20 events/s gives.
        let ids: Vec<Vec<String>> = (0..TICKS)
            .map(|tick| {
                (0..SESSIONS)
                    .map(|i| format!("{tick:08x}-1234-4abc-8def-{i:012x}"))
                    .collect()
            })
            .collect();
        assert_eq!(ids[0][0].len(), 36);
        let mut counted = 0;
        let mut writes = 0;
        for (tick, ids) in ids.iter().enumerate() {
            // The first ticks grow the worker's buffers, the store's map and each slot's
            // duplicate window (once, at its fifth ID): not counted.
            let before = made();
            for (session, id) in sessions.iter().zip(ids) {
                layer.worker().record(session, &stream, Some(id));
            }
            tokio::time::sleep(FLUSH).await;
            if tick >= WARM_UP {
                counted += made() - before;
                writes += SESSIONS;
            }
        }
        let per_write = counted as f64 / writes as f64;
        println!(
            "{counted} allocations in {writes} writes of 36-byte IDs ({per_write:.4} per write)"
        );
        // A batch allocates once or so (its store future): 1,000 writes share it. An
        // `Arc<str>` per ID would make it 1.0 or more.
        assert!(
            per_write < 0.01,
            "{counted} allocations in {writes} writes: {per_write:.4} per write"
        );

        // Every session's newest ID was written.
        for (session, id) in sessions.iter().zip(&ids[TICKS - 1]) {
            let record = store.load(session, &stream).await.unwrap().unwrap();
            assert_eq!(record.last_event_id, LastEventId::from(id.as_str()));
        }

        // Longer IDs are shared, not held in place, and written the same.
        let long = "x".repeat(100);
        layer.worker().record(&sessions[0], &stream, Some(&long));
        tokio::time::sleep(FLUSH).await;
        let record = store.load(&sessions[0], &stream).await.unwrap().unwrap();
        assert_eq!(record.last_event_id.as_str(), Some(long.as_str()));
    });
}
