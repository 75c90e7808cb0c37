//! Forgetting a session that ended: every stream's position, in memory and in the store, and
//! nothing recorded before the forget comes back afterwards.

use super::*;

#[tokio::test(start_paused = true)]
async fn forget_drops_unwritten_state_and_deletes_every_stream_of_the_session() {
    let store = MemoryStore::new();
    let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
    let (a, b) = (sid("a"), sid("b"));
    let (one, two) = (support::stream("/one"), support::stream("/two"));
    worker.record(&a, &one, Some("1"));
    worker.record(&a, &two, Some("2"));
    worker.record(&b, &one, Some("3"));
    worker.flush().await.unwrap();
    assert_eq!(store.len(), 3);
    // Recorded, not written yet; and a stream of the session still open.
    worker.record(&a, &one, Some("4"));
    let live = worker.stream(&a, &two).unwrap();
    worker.forget(&a).await.unwrap();
    assert_eq!(store.last_event_id(&a, &one), None);
    assert_eq!(store.last_event_id(&a, &two), None);
    assert_eq!(worker.last_event_id(&a, &one), None);
    assert_eq!(live.last_event_id(), None, "the open stream starts afresh");
    // The unwritten "4" is never written, even by a later flush.
    worker.flush().await.unwrap();
    assert_eq!(store.last_event_id(&a, &one), None);
    assert_eq!(store.len(), 1);
    assert_eq!(store.last_event_id(&b, &one).as_deref(), Some("3"));
    // The open stream's later events are tracked again.
    live.record(Some("5"));
    worker.flush().await.unwrap();
    assert_eq!(store.last_event_id(&a, &two).as_deref(), Some("5"));
    drop(live);

    // After shutdown, forget still deletes from the store.
    worker.shutdown(Duration::from_secs(1)).await.unwrap();
    worker.forget(&b).await.unwrap();
    assert_eq!(store.last_event_id(&b, &one), None);
    assert_eq!(store.len(), 1, "a's later position stays");
}

/// A memory store whose next deletion fails.
#[derive(Clone, Default)]
struct FailingDelete {
    memory: MemoryStore,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl SessionStore for FailingDelete {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        self.memory.save_batch(batch)
    }

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        self.memory.load(session, stream)
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(transient())));
        }
        self.memory.delete_session(session)
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_delete_is_reported_and_can_be_retried() {
    let store = FailingDelete::default();
    let worker = WorkerHandle::spawn(store.clone(), WorkerConfig::default());
    worker.record(&sid("a"), &events(), Some("1"));
    worker.flush().await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let error = worker.forget(&sid("a")).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert_eq!(stored(&store.memory, &sid("a")).as_deref(), Some("1"));
    worker.forget(&sid("a")).await.unwrap();
    assert_eq!(stored(&store.memory, &sid("a")), None);
}

/// Streams attach, record and detach on two threads while the worker writes the same sessions
/// every millisecond: whichever comes first, every session ends up idle (nothing attached,
/// nothing to write), so it can be forgotten; none is left behind, held by neither side.
#[test]
fn sessions_detached_while_being_written_all_end_up_idle() {
    const SESSIONS: usize = 32;
    const ROUNDS: usize = 2_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = MemoryStore::new();
        let config = WorkerConfig::default().flush_interval(Duration::from_millis(1));
        let worker = WorkerHandle::spawn(store.clone(), config);
        let tasks: Vec<_> = (0..2)
            .map(|t| {
                let worker = worker.clone();
                tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        for s in 0..SESSIONS {
                            let session = sid(&format!("s{s}"));
                            let stream = worker.stream(&session, &events()).unwrap();
                            stream.record(Some(&format!("{t}-{round}")));
                            drop(stream);
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        worker.flush().await.unwrap();
        let stats = worker.registry_stats();
        assert_eq!(stats.sessions, SESSIONS);
        assert_eq!(stats.idle, SESSIONS, "every session idle: {stats:?}");
    });
}
