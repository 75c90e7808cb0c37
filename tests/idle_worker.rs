//! The worker's batch buffers are freed once it is idle, measured with a counting global
//! allocator (in its own test binary so that it does not affect other tests).

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::time::Duration;

use counting::live;
use support::events;
use tower_sse_tracking::{EventTrackingLayer, SessionId, store::MemoryStore, worker::WorkerConfig};

const FLUSH: Duration = Duration::from_millis(50);

// One test (the counter is global).
#[test]
fn a_worker_that_goes_idle_frees_its_batch_buffers() {
    const SESSIONS: usize = 4_096;
    let rt = support::paused_runtime();
    rt.block_on(async {
        let layer = EventTrackingLayer::builder()
            .store(MemoryStore::new())
            .worker(WorkerConfig::default().flush_interval(FLUSH))
            .build();
        let sessions: Vec<SessionId> = (0..SESSIONS)
            .map(|i| SessionId::new(&format!("idle-{i:06}")).unwrap())
            .collect();
        // Two ticks that each write every session (one event per session per tick, as a
        // stream at ~20 events/s would give): the worker keeps its buffers between them.
        let mut written = 0;
        for round in 0..2 {
            for session in &sessions {
                let id = format!("{round}-{session}");
                layer.worker().record(session, &events(), Some(&id));
            }
            tokio::time::sleep(FLUSH).await;
            written = live();
        }
        // Ticks with nothing to write: the worker is idle and holds no buffers.
        for _ in 0..3 {
            tokio::time::sleep(FLUSH).await;
        }
        let idle = live();
        // The buffers of a batch of 4,096: the updates alone are 96 bytes each.
        let freed = written - idle;
        println!("worker idle: {freed} bytes freed after a batch of {SESSIONS} sessions");
        assert!(
            freed >= 200 * 1024,
            "{freed} bytes freed: the batch buffers are still held"
        );

        // Everything was written.
        for session in &sessions {
            assert_eq!(
                layer.worker().last_event_id(session, &events()).as_deref(),
                Some(format!("1-{session}").as_str())
            );
        }
    });
}
