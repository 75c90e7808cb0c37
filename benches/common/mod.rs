//! What the layer and replay benches share: the same 10,000 events of about 60 bytes, one per
//! frame, served by a handler that hands out a prepared body, and drained frame by frame.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    hint::black_box,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, StreamBody};
use std::time::{Duration, Instant};
use tower::{Layer, ServiceExt, service_fn};
use tower_sse_tracking::EventTrackingLayer;

pub const EVENTS: usize = 10_000;

pub type Frames = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// One frame per event, about 60 bytes each.
pub fn events() -> Vec<Bytes> {
    (0..EVENTS)
        .map(|i| {
            Bytes::from(format!(
                "id: {i:08}\nevent: tick\ndata: {{\"seq\":{i},\"msg\":\"hello\"}}\n\n"
            ))
        })
        .collect()
}

pub fn body(events: &[Bytes]) -> Frames {
    let frames: Vec<_> = events.iter().cloned().map(|e| Ok(Frame::data(e))).collect();
    StreamBody::new(stream::iter(frames))
}

/// The body prepared for one iteration, handed out by the handler.
pub fn handler(body: Option<Frames>) -> Arc<Mutex<Option<Frames>>> {
    Arc::new(Mutex::new(body))
}

/// A handler (clonable, as the layer needs) that answers with the prepared body.
pub fn service(
    prepared: Arc<Mutex<Option<Frames>>>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Frames>,
    Error = Infallible,
    Future = Ready<Result<Response<Frames>, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<()>| {
        let body = prepared.lock().unwrap().take().expect("one call per body");
        let res = Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(body)
            .unwrap();
        ready(Ok(res))
    })
}

/// Drains a body frame by frame; returns the bytes seen.
pub async fn drain<B>(body: B) -> usize
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(body);
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().into_data().map_or(0, |d| black_box(d).len());
    }
    n
}

pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

pub fn per_event(d: std::time::Duration) -> f64 {
    d.as_nanos() as f64 / EVENTS as f64
}

/// Time to call the bare handler with `request` and drain the body of `events` (checked whole).
pub fn bare(rt: &tokio::runtime::Runtime, events: &[Bytes], request: Request<()>) -> Duration {
    let prepared = handler(Some(body(events)));
    let start = Instant::now();
    let n = rt.block_on(async {
        let res = service(prepared).oneshot(request).await.unwrap();
        drain(res.into_body()).await
    });
    let elapsed = start.elapsed();
    assert_eq!(n, events.iter().map(Bytes::len).sum::<usize>());
    elapsed
}

/// The same through `layer` (the body must be tracked). Outside the measured time the worker
/// writes the session, which turns clean again.
pub fn through(
    rt: &tokio::runtime::Runtime,
    layer: &EventTrackingLayer,
    events: &[Bytes],
    request: Request<()>,
) -> Duration {
    let prepared = handler(Some(body(events)));
    let start = Instant::now();
    let n = rt.block_on(async {
        let res = layer
            .layer(service(prepared))
            .oneshot(request)
            .await
            .unwrap();
        assert!(res.body().is_tracked());
        drain(res.into_body()).await
    });
    let elapsed = start.elapsed();
    assert_eq!(n, events.iter().map(Bytes::len).sum::<usize>());
    rt.block_on(layer.flush()).unwrap();
    elapsed
}
