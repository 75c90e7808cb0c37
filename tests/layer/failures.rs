//! Client disconnects and inner body errors.

use super::*;

#[tokio::test]
async fn client_disconnect_mid_event_keeps_the_last_completed_id() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let svc = service_fn(|_req: Request<()>| {
        // One frame ends inside event 2; the rest never comes.
        let frames = stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"id: 1\ndata: a\n\nid: 2\ndata: b\n",
        )))])
        .chain(stream::pending());
        ready(Ok::<_, Infallible>(sse(StreamBody::new(frames))))
    });
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("gone")))
        .await
        .unwrap();
    let mut body = Box::pin(res.into_body());
    let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(frame, &b"id: 1\ndata: a\n\nid: 2\ndata: b\n"[..]);
    drop(body); // the client goes away

    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("gone"), &events())
            .as_deref(),
        Some("1")
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "gone"), set("1"));
}

// ---------------------------------------------------------------------------------------------
// 7. Inner body errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Upstream(&'static str);

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream failed: {}", self.0)
    }
}

impl std::error::Error for Upstream {}

#[tokio::test]
async fn inner_body_error_reaches_the_client_unchanged_and_earlier_ids_are_kept() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let svc = service_fn(|_req: Request<()>| {
        let frames = stream::iter([
            Ok(Frame::data(Bytes::from_static(b"id: 1\ndata: a\n\n"))),
            Ok(Frame::data(Bytes::from_static(
                b"id: 2\ndata: b\n\nid: 3\ndata: c",
            ))),
            Err(Upstream("connection reset")),
        ]);
        ready(Ok::<_, Infallible>(sse(StreamBody::new(frames))))
    });
    let res = tracking
        .layer(svc)
        .oneshot(request(Some("err")))
        .await
        .unwrap();
    assert!(res.body().is_tracked());
    let mut body = Box::pin(res.into_body());
    let mut got = Vec::new();
    let error = loop {
        match body.frame().await.expect("an error before the end") {
            Ok(frame) => got.extend_from_slice(&frame.into_data().unwrap()),
            Err(error) => break error,
        }
    };
    assert_eq!(got, b"id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c");
    assert_eq!(error, Upstream("connection reset"), "same error value");
    assert_eq!(error.to_string(), "upstream failed: connection reset");

    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("err"), &events())
            .as_deref(),
        Some("2")
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "err"), set("2"));
}
