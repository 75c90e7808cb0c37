//! The seam between replay and the live stream, as a property: whatever the frame splits and
//! wherever a client goes away, and whether or not the wrapped service can replay itself, the
//! client ends up with every event exactly once, in order, byte for byte.

use std::{convert::Infallible, future::ready};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_sse_tracking::{EventTrackingLayer, history::ReplayConfig};

fn text(from: u32, to: u32) -> String {
    (from..=to)
        .map(|i| format!("id: {i}\ndata: e{i}\n\n"))
        .collect()
}

/// `text` cut into frames of the given sizes, in turn.
fn frames(text: &str, sizes: &[usize]) -> Vec<Result<Frame<Bytes>, Infallible>> {
    let bytes = Bytes::copy_from_slice(text.as_bytes());
    let mut out = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        out.push(Ok(Frame::data(bytes.slice(at..end))));
        at = end;
    }
    out
}

/// IDs of the complete events in `body`.
fn complete_ids(body: &str) -> Vec<u32> {
    let complete = &body[..body.rfind("\n\n").map_or(0, |i| i + 2)];
    complete
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

fn run(n: u32, k: u32, sizes: Vec<usize>, respects: bool) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let layer = EventTrackingLayer::builder()
            .session_cookie("sid")
            .replay(ReplayConfig::default())
            .build();
        let sizes2 = sizes.clone();
        // Sends the events after `Last-Event-ID` (or, if it cannot replay, all of them).
        let service = service_fn(move |req: Request<()>| {
            let last: u32 = req
                .headers()
                .get("last-event-id")
                .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
            let from = if respects { last + 1 } else { 1 };
            let body = StreamBody::new(stream::iter(frames(&text(from, n), &sizes2)));
            ready(Ok::<_, Infallible>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(body)
                    .unwrap(),
            ))
        });
        let request = |last: Option<u32>| {
            let mut req = Request::get("/events").header(header::COOKIE, "sid=s");
            if let Some(last) = last {
                req = req.header("last-event-id", last.to_string());
            }
            req.body(()).unwrap()
        };
        // The first client reads until it has `k` events, and goes away.
        let mut body = layer
            .layer(service.clone())
            .oneshot(request(None))
            .await
            .unwrap()
            .into_body();
        let mut got = String::new();
        while complete_ids(&got).len() < k as usize {
            let frame = body.frame().await.unwrap().unwrap();
            got.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
        }
        drop(body);
        let first = complete_ids(&got);
        let last = *first.last().unwrap();
        // It reconnects with the last event it has.
        let response = layer
            .layer(service)
            .oneshot(request(Some(last)))
            .await
            .unwrap();
        let rest = response.into_body().collect().await.unwrap().to_bytes();
        let rest = std::str::from_utf8(&rest).unwrap();
        prop_assert_eq!(rest, text(last + 1, n), "after {}", last);
        let mut all = first;
        all.extend(complete_ids(rest));
        prop_assert_eq!(all, (1..=n).collect::<Vec<_>>());
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn every_event_exactly_once_across_a_reconnect(
        n in 2u32..40,
        k_part in 0.0f64..1.0,
        sizes in prop::collection::vec(1usize..48, 1..12),
        respects in any::<bool>(),
    ) {
        let k = 1 + ((n - 1) as f64 * k_part) as u32; // 1..n-1 events before going away
        run(n, k.min(n - 1), sizes, respects)?;
    }
}
