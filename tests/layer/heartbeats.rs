//! Heartbeats: comment lines while the upstream is idle, at line boundaries only.

use super::*;

pub(super) const IDLE: Duration = Duration::from_secs(1);
const HB: &[u8] = b":\n";

/// An upstream that sends each frame after its delay, then ends after `end`.
fn scripted(
    steps: Vec<(u64, &'static [u8])>,
    end: u64,
) -> impl Body<Data = Bytes, Error = Infallible> + Send + 'static {
    let frames = stream::unfold(
        (steps.into_iter(), Some(end)),
        |(mut steps, end)| async move {
            if let Some((delay, bytes)) = steps.next() {
                sleep(Duration::from_millis(delay)).await;
                let frame = Ok(Frame::data(Bytes::from_static(bytes)));
                return Some((frame, (steps, end)));
            }
            sleep(Duration::from_millis(end?)).await;
            None
        },
    );
    StreamBody::new(frames)
}

/// The frames the client gets, with the time (ms since the request) each arrived.
async fn timed_frames(
    tracking: &EventTrackingLayer,
    steps: Vec<(u64, &'static [u8])>,
    end: u64,
) -> Vec<(u64, Bytes)> {
    let ends_at = steps.iter().map(|&(delay, _)| delay).sum::<u64>() + end;
    let steps = Arc::new(Mutex::new(Some(steps)));
    let svc = service_fn(move |_req: Request<()>| {
        let steps = steps.lock().unwrap().take().unwrap();
        ready(Ok::<_, Infallible>(sse(scripted(steps, end))))
    });
    let start = Instant::now();
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("hb")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        frames.push((start.elapsed().as_millis() as u64, data));
    }
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(ends_at),
        "ends with the upstream"
    );
    frames
}

fn heartbeat_layer() -> EventTrackingLayer {
    layer_builder(&MemoryStore::new()).heartbeat(IDLE).build()
}

fn owned(frames: &[(u64, &'static [u8])]) -> Vec<(u64, Bytes)> {
    frames
        .iter()
        .map(|&(t, b)| (t, Bytes::from_static(b)))
        .collect()
}

/// An upstream that idles at line boundaries, mid-line and right after a CR.
fn idling_script() -> Vec<(u64, &'static [u8])> {
    vec![
        (0, b"id: 1\ndata: a\n\n"), // t = 0
        (2500, b"data: abc"),       // t = 2500, stalls mid-line
        (3200, b"\n\n"),            // t = 5700
        (500, b"id: 2\r"),          // t = 6200, stalls right after a CR
        (2300, b"\ndata: b\n\n"),   // t = 8500
    ]
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_injected_only_at_line_boundaries_of_an_idle_upstream() {
    let tracking = heartbeat_layer();
    let frames = timed_frames(&tracking, idling_script(), 1700).await; // ends at t = 10200
    assert_eq!(
        frames,
        owned(&[
            (0, b"id: 1\ndata: a\n\n"),
            (1000, HB),
            (2000, HB),
            (2500, b"data: abc"),
            // Nothing while the upstream is mid-line (timers at 3500, 4500, 5500).
            (5700, b"\n\n"),
            (6200, b"id: 2\r"),
            // Nothing after the CR: an LF may follow (timers at 7200, 8200).
            (8500, b"\ndata: b\n\n"),
            (9500, HB),
        ])
    );
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert_eq!(
        all,
        b"id: 1\ndata: a\n\n:\n:\ndata: abc\n\nid: 2\r\ndata: b\n\n:\n"
    );
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("hb"), &events())
            .as_deref(),
        Some("2"),
        "heartbeats do not change what is tracked"
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timer_resets_on_every_upstream_frame() {
    let tracking = heartbeat_layer();
    let steps: Vec<(u64, &'static [u8])> = (0..6)
        .map(|i| (if i == 0 { 0 } else { 900 }, &b"data: x\n\n"[..]))
        .collect();
    // Frames every 900 ms (never idle for 1 s), then 1500 ms of silence.
    let frames = timed_frames(&tracking, steps, 1500).await;
    let mut expected: Vec<(u64, &[u8])> = (0..6).map(|i| (i * 900, &b"data: x\n\n"[..])).collect();
    expected.push((4500 + 1000, HB));
    assert_eq!(frames, owned(&expected));
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_an_upstream_that_has_not_spoken_yet_alive() {
    let tracking = heartbeat_layer();
    let frames = timed_frames(&tracking, vec![(3500, b"id: 1\n\n")], 1200).await;
    assert_eq!(
        frames,
        owned(&[
            (1000, HB),
            (2000, HB),
            (3000, HB),
            (3500, b"id: 1\n\n"),
            (4500, HB)
        ])
    );
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("hb"), &events())
            .as_deref(),
        Some("1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_byte_order_mark_after_an_early_heartbeat_is_dropped() {
    // The client's stream now starts with the heartbeat: the upstream's BOM would land
    // mid-stream and turn its first field name into "\u{FEFF}id". Dropping it keeps the meaning.
    let tracking = heartbeat_layer();
    let frames = timed_frames(
        &tracking,
        vec![(1500, b"\xEF\xBB\xBFid: 1\ndata: a\n\n")],
        0,
    )
    .await;
    assert_eq!(frames, owned(&[(1000, HB), (1500, b"id: 1\ndata: a\n\n")]));
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("hb"), &events())
            .as_deref(),
        Some("1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_byte_order_mark_split_across_frames_after_an_early_heartbeat_is_dropped() {
    let tracking = heartbeat_layer();
    let script = vec![(1500, &b"\xEF"[..]), (10, b"\xBB"), (10, b"\xBFid: 7\n\n")];
    let frames = timed_frames(&tracking, script, 0).await;
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert_eq!(all, b":\nid: 7\n\n");
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("hb"), &events())
            .as_deref(),
        Some("7")
    );
}

#[tokio::test(start_paused = true)]
async fn bytes_that_only_looked_like_a_byte_order_mark_are_forwarded() {
    let tracking = heartbeat_layer();
    let script = vec![(1500, &b"\xEF\xBB"[..]), (10, b"x\nid: 2\n\n")];
    let frames = timed_frames(&tracking, script, 0).await;
    let all: Vec<u8> = frames.iter().flat_map(|(_, b)| b.to_vec()).collect();
    assert_eq!(
        all, b":\n\xEF\xBBx\nid: 2\n\n",
        "every upstream byte, in order"
    );
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("hb"), &events())
            .as_deref(),
        Some("2")
    );
}

#[tokio::test(start_paused = true)]
async fn a_byte_order_mark_is_kept_when_no_heartbeat_went_first() {
    let tracking = heartbeat_layer();
    let frames = timed_frames(&tracking, vec![(500, b"\xEF\xBB\xBFid: 3\n\n")], 0).await;
    assert_eq!(frames, owned(&[(500, b"\xEF\xBB\xBFid: 3\n\n")]));
}

#[tokio::test(start_paused = true)]
async fn event_streams_without_a_session_get_heartbeats_but_are_not_tracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).heartbeat(IDLE).build();
    let too_long = "k".repeat(200);
    for req in [request(None), request(Some(&too_long))] {
        let svc = service_fn(|_req: Request<()>| {
            ready(Ok::<_, Infallible>(sse(scripted(
                vec![(1500, &b"id: 9\n\n"[..])],
                0,
            ))))
        });
        let res = tracking.layer(svc).oneshot(req).await.unwrap();
        assert!(!res.body().is_tracked());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b":\nid: 9\n\n");
    }
    tracking.flush().await.unwrap();
    assert!(store.is_empty(), "nothing recorded");
    assert_eq!(tracking.worker().tracked_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_off_by_default() {
    let tracking = layer_builder(&MemoryStore::new()).build();
    let frames = timed_frames(&tracking, idling_script(), 1700).await;
    assert_eq!(
        frames,
        owned(&[
            (0, b"id: 1\ndata: a\n\n"),
            (2500, b"data: abc"),
            (5700, b"\n\n"),
            (6200, b"id: 2\r"),
            (8500, b"\ndata: b\n\n"),
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn no_heartbeats_with_a_content_length() {
    let tracking = heartbeat_layer();
    let svc = service_fn(|_req: Request<()>| {
        let mut res = sse(scripted(vec![(0, b"id: 1\n\n"), (5000, b"id: 2\n\n")], 0));
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("14"));
        ready(Ok::<_, Infallible>(res))
    });
    let (body, tracked) = fetch(&tracking, svc, request(Some("len"))).await;
    assert!(tracked);
    assert_eq!(body, &b"id: 1\n\nid: 2\n\n"[..]);
}
