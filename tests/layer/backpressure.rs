//! Backpressure: a full queue holds a frame for at most the timeout, then parks.

use super::*;

const BACKPRESSURE: Duration = Duration::from_millis(100);

fn full_queue_layer(
    store: &MemoryStore,
) -> (EventTrackingLayer, tower_sse_tracking::worker::WorkerFuture) {
    let (tracking, worker) = layer_builder(store)
        .backpressure_timeout(BACKPRESSURE)
        .worker(WorkerConfig::default().queue_capacity(1))
        .build_with_worker();
    // Another session takes the only place in the queue; the worker is not running.
    assert_eq!(
        tracking
            .worker()
            .record(&sid("other"), &events(), Some("x")),
        tower_sse_tracking::worker::RecordOutcome::Recorded
    );
    (tracking, worker)
}

pub(super) const THREE_EVENTS: &[&[u8]] = &[
    b"id: 1\ndata: a\n\n",
    b"id: 2\ndata: b\n\n",
    b"id: 3\ndata: c\n\n",
];

#[tokio::test(start_paused = true)]
async fn full_queue_holds_a_frame_for_at_most_the_backpressure_timeout_then_parks() {
    let store = MemoryStore::new();
    let (tracking, worker) = full_queue_layer(&store);
    let res = tracking
        .layer(sse_service(THREE_EVENTS))
        .oneshot(request(Some("busy")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());

    // The session turns dirty on the first frame, when the queue is full.
    let start = Instant::now();
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, THREE_EVENTS[0]);
    assert_eq!(start.elapsed(), BACKPRESSURE, "held exactly the timeout");

    // The session is parked (still dirty): later frames are not held.
    let start = Instant::now();
    for expected in &THREE_EVENTS[1..] {
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(frame, *expected);
    }
    assert!(body.frame().await.is_none());
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(body);
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("busy"), &events())
            .as_deref(),
        Some("3")
    );
    assert!(store.is_empty(), "the worker has not run yet");

    // The worker runs later, with no new events: its ticks write the parked session.
    tokio::spawn(worker);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(stored(&store, "busy"), set("3"));
    assert_eq!(stored(&store, "other"), set("x"));
}

#[tokio::test(start_paused = true)]
async fn full_queue_releases_the_frame_as_soon_as_the_worker_makes_room() {
    let store = MemoryStore::new();
    let (tracking, worker) = full_queue_layer(&store);
    tokio::spawn(async move {
        sleep(Duration::from_millis(30)).await;
        worker.await;
    });
    let res = tracking
        .layer(sse_service(THREE_EVENTS))
        .oneshot(request(Some("busy")))
        .await
        .unwrap();
    let start = Instant::now();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, concat(THREE_EVENTS));
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "busy"), set("3"));
}

#[tokio::test(start_paused = true)]
async fn client_gone_while_a_frame_is_held_still_persists_the_session() {
    let store = MemoryStore::new();
    let (tracking, worker) = full_queue_layer(&store);
    let res = tracking
        .layer(sse_service(THREE_EVENTS))
        .oneshot(request(Some("busy")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    // Poll until the first frame is held, then give up before the timeout.
    let held = tokio::time::timeout(Duration::from_millis(10), body.frame()).await;
    assert!(held.is_err(), "the frame is held");
    drop(body);

    tokio::spawn(worker);
    tracking.flush().await.unwrap();
    assert_eq!(
        stored(&store, "busy"),
        set("1"),
        "the recorded id is not lost"
    );

    // And the session keeps being persisted afterwards.
    let (_, tracked) = fetch(
        &tracking,
        sse_service(&[b"id: 9\ndata: z\n\n"]),
        request(Some("busy")),
    )
    .await;
    assert!(tracked);
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "busy"), set("9"));
}
