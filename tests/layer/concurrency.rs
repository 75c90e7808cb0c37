//! Many concurrent sessions, one worker task.

use super::*;

/// A service whose stream, for session `s<i>`, is events `<i>-1 ..= <i>-20`, yielding to the
/// scheduler between frames so that sessions interleave.
fn interleaving_service() -> impl Service<
    Request<()>,
    Response = Response<impl Body<Data = Bytes, Error = Infallible> + Send + 'static>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    service_fn(|req: Request<()>| {
        let session = req.headers()[SESSION_HEADER].to_str().unwrap().to_owned();
        let n = session.trim_start_matches('s').to_owned();
        let frames = stream::iter(1..=20).then(move |k| {
            let frame = Bytes::from(format!("id: {n}-{k}\ndata: payload {k}\n\n"));
            async move {
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(Frame::data(frame))
            }
        });
        ready(Ok::<_, Infallible>(sse(StreamBody::new(frames))))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_sessions_are_each_persisted_by_one_worker_task() {
    const SESSIONS: usize = 200;
    let store = MemoryStore::new();
    let metrics = tokio::runtime::Handle::current().metrics();

    let before = metrics.num_alive_tasks();
    let tracking = layer_builder(&store).build();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "build() spawns exactly one worker task"
    );
    // axum applies a layer once per route: that must not spawn anything.
    let services: Vec<_> = (0..SESSIONS)
        .map(|_| tracking.layer(interleaving_service()))
        .collect();
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "layer() spawns nothing"
    );

    let tasks: Vec<_> = services
        .into_iter()
        .enumerate()
        .map(|(i, svc)| {
            tokio::spawn(async move {
                let res = svc.oneshot(request(Some(&format!("s{i}")))).await.unwrap();
                assert!(res.body().is_tracked());
                res.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let body = task.await.unwrap();
        let expected: String = (1..=20)
            .map(|k| format!("id: {i}-{k}\ndata: payload {k}\n\n"))
            .collect();
        assert_eq!(body, expected.as_bytes());
    }

    let report = tracking.flush().await.unwrap();
    assert_eq!(report.failed(), 0);
    let snapshot = store.snapshot();
    assert_eq!(snapshot.len(), SESSIONS);
    for i in 0..SESSIONS {
        assert_eq!(stored(&store, &format!("s{i}")), set(&format!("{i}-20")));
    }
    let report = tracking.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(report.unpersisted().is_empty());
}
