//! A stream hands its events to its session in batches (no lock per event): what the session
//! and the store hold at each point a client can observe.

use super::*;

use tokio::sync::mpsc;

/// An upstream fed frame by frame through a channel; ends when the sender is dropped.
fn channel_body(
    rx: mpsc::UnboundedReceiver<Bytes>,
) -> impl Body<Data = Bytes, Error = Infallible> + Send + 'static {
    StreamBody::new(stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok(Frame::data(bytes)), rx))
    }))
}

fn event(id: u64) -> Bytes {
    Bytes::from(format!("id: {id}\ndata: {{\"n\":{id}}}\n\n"))
}

/// A tracked response whose upstream the test feeds; returns the feed and the client's body.
async fn open(
    tracking: &EventTrackingLayer,
) -> (
    mpsc::UnboundedSender<Bytes>,
    impl Body<Data = Bytes, Error = Infallible> + Unpin,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let svc = service_fn(move |_req: Request<()>| {
        let rx = rx.lock().unwrap().take().expect("one request");
        ready(Ok::<_, Infallible>(sse(channel_body(rx))))
    });
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("batched")))
        .await
        .unwrap();
    assert!(res.body().is_tracked());
    (tx, Box::pin(res.into_body()))
}

/// Reads `n` frames, each one whole event, checking their bytes.
async fn read(body: &mut (impl Body<Data = Bytes, Error = Infallible> + Unpin), ids: Vec<u64>) {
    for id in ids {
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), event(id));
    }
}

/// Polls the body once more, finding the upstream idle.
async fn find_idle(body: &mut (impl Body<Data = Bytes, Error = Infallible> + Unpin)) {
    let polled = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
    assert!(polled.is_err(), "the upstream has nothing more yet");
}

fn newest(tracking: &EventTrackingLayer) -> Option<String> {
    tracking.worker().last_event_id(&sid("batched"), &events())
}

#[tokio::test]
async fn a_run_of_ready_events_reaches_the_session_once_the_upstream_goes_idle() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let (tx, mut body) = open(&tracking).await;

    // One event at a time: each is in the session once the body finds the upstream idle.
    for id in 1..=20 {
        tx.send(event(id)).unwrap();
        read(&mut body, vec![id]).await;
        find_idle(&mut body).await;
        assert_eq!(newest(&tracking).as_deref(), Some(&*id.to_string()));
    }
    // A run of 500 ready events, read one after the other without the upstream going idle.
    for id in 21..=520 {
        tx.send(event(id)).unwrap();
    }
    read(&mut body, (21..=520).collect()).await;
    find_idle(&mut body).await;
    assert_eq!(newest(&tracking).as_deref(), Some("520"));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "batched"), set("520"));
}

#[tokio::test]
async fn a_write_of_the_session_ends_the_batch_at_the_next_event() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let (tx, mut body) = open(&tracking).await;
    for id in 1..=1000 {
        tx.send(event(id)).unwrap();
    }
    read(&mut body, (1..=100).collect()).await;
    // The worker writes the session while the run goes on (never idle): the next event the
    // stream reads hands everything over, as a per-event record would have.
    tracking.flush().await.unwrap();
    read(&mut body, vec![101]).await;
    assert_eq!(newest(&tracking).as_deref(), Some("101"));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "batched"), set("101"));
    read(&mut body, (102..=1000).collect()).await;
    drop(tx);
    assert!(body.frame().await.is_none(), "the upstream ended");
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "batched"), set("1000"));
}

#[tokio::test]
async fn a_client_that_leaves_mid_run_leaves_its_newest_event_behind() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let (tx, mut body) = open(&tracking).await;
    for id in 1..=300 {
        tx.send(event(id)).unwrap();
    }
    read(&mut body, (1..=250).collect()).await;
    // Gone without polling again: what it received is handed over when the body drops.
    drop(body);
    assert_eq!(newest(&tracking).as_deref(), Some("250"));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "batched"), set("250"));
}

/// Runs `test` on a current-thread runtime under a local metrics recorder, and returns what it
/// recorded.
fn recorded(test: impl Future<Output = ()>) -> metrics_util::debugging::Snapshotter {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = support::runtime();
    metrics::with_local_recorder(&recorder, || rt.block_on(test));
    snapshotter
}

/// The counter `name` as the layer recorded it.
fn counted(snapshotter: &metrics_util::debugging::Snapshotter, name: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// Duplicates counted by the layer.
fn duplicates(snapshotter: &metrics_util::debugging::Snapshotter) -> u64 {
    counted(snapshotter, "sse_tracking_duplicate_events_total")
}

/// Within a run, an ID that repeats the one before it is a duplicate (counted, the session's
/// ID stays), exactly as when every event is recorded on its own; one that comes back after
/// others, once the duplicate window was freed again, is not (the session moved on from it).
#[test]
fn a_repeated_id_in_a_run_is_counted_as_a_duplicate() {
    let snapshotter = recorded(async {
        let store = MemoryStore::new();
        let tracking = layer_builder(&store).build();
        let (tx, mut body) = open(&tracking).await;
        // Past the seam of the new stream (its duplicate window is freed after a quiet
        // run), in one run: 1..=40, 40 again (which arms the window), 41..=80 (freed again
        // after 16), then 79.
        let ids: Vec<u64> = (1..=40).chain([40]).chain(41..=80).chain([79]).collect();
        for &id in &ids {
            tx.send(event(id)).unwrap();
        }
        read(&mut body, ids[..41].to_vec()).await;
        assert_eq!(newest(&tracking).as_deref(), Some("40"));
        read(&mut body, ids[41..].to_vec()).await;
        find_idle(&mut body).await;
        assert_eq!(newest(&tracking).as_deref(), Some("79"));
        tracking.flush().await.unwrap();
        assert_eq!(stored(&store, "batched"), set("79"));
    });
    assert_eq!(duplicates(&snapshotter), 1, "the second 40 alone");
}

/// IDs over the cap are counted once each, whether the stream's frames are plain blocks (read
/// in bulk) or split inside the ID's line, and leave the position where it was.
#[test]
fn oversized_ids_are_counted_once_each() {
    let snapshotter = recorded(async {
        let store = MemoryStore::new();
        let tracking = layer_builder(&store).max_id_len(8).build();
        let (tx, mut body) = open(&tracking).await;
        let long = "x".repeat(9);
        let frames = [
            event(1),
            Bytes::from(format!("id: {long}\ndata: a\n\n")),
            Bytes::from(format!("id: {}", &long[..4])),
            Bytes::from(format!("{}\ndata: b\n\n", &long[4..])),
            event(2),
            Bytes::from(format!("id: {long}\ndata: c\n\n")),
        ];
        for frame in &frames {
            tx.send(frame.clone()).unwrap();
        }
        for frame in &frames {
            let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(&got, frame);
        }
        find_idle(&mut body).await;
        assert_eq!(newest(&tracking).as_deref(), Some("2"));
    });
    assert_eq!(
        counted(&snapshotter, "sse_tracking_oversized_ids_total"),
        3,
        "the whole one, the split one and the last"
    );
}

/// A session forgotten (a `DELETE` that ends it, say) while its stream has events not yet
/// handed over: those events do not bring its position back; the stream's later events do.
#[tokio::test]
async fn events_read_before_a_forget_do_not_come_back_after_it() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let (tx, mut body) = open(&tracking).await;
    for id in 1..=40 {
        tx.send(event(id)).unwrap();
    }
    // A run read without the upstream going idle: past its first events, it is batched.
    read(&mut body, (1..=40).collect()).await;
    tracking.worker().forget(&sid("batched")).await.unwrap();
    find_idle(&mut body).await;
    assert_eq!(newest(&tracking), None, "forgotten, and not brought back");
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "batched"), None);
    tx.send(event(41)).unwrap();
    read(&mut body, vec![41]).await;
    find_idle(&mut body).await;
    assert_eq!(
        newest(&tracking).as_deref(),
        Some("41"),
        "later events count"
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "batched"), set("41"));
}
