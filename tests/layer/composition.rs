//! Composition with tower-http: `TraceLayer` and `CompressionLayer` in either order.

use super::*;

/// Compresses every response, `text/event-stream` included (tower-http's default predicate
/// leaves event streams alone).
fn always(_: StatusCode, _: http::Version, _: &HeaderMap, _: &http::Extensions) -> bool {
    true
}

const GZIP_EVENTS: &[&[u8]] = &[
    b"id: 1\ndata: first\n\n",
    b"id: 2\ndata: second\n\n",
    b"id: 3\ndata: third\n\n",
];

fn gzip_request(session: &str) -> Request<Empty<Bytes>> {
    let mut req = request(Some(session)).map(|()| Empty::new());
    req.headers_mut()
        .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    req
}

async fn gzip_body<B>(res: Response<B>) -> Vec<u8>
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Debug,
{
    assert_eq!(
        res.headers().get(header::CONTENT_ENCODING).unwrap(),
        "gzip",
        "the response is compressed"
    );
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    gzip::decode(&bytes).expect("valid gzip")
}

#[tokio::test]
async fn compression_inside_the_layer_leaves_the_stream_untracked_and_untouched() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    // Wrong order: compression is closer to the handler, so the layer sees gzip bytes.
    let svc = ServiceBuilder::new()
        .layer(tracking.clone())
        .layer(TraceLayer::new_for_http())
        .layer(CompressionLayer::new().compress_when(always))
        .service(sse_service(GZIP_EVENTS));
    let res = svc.oneshot(gzip_request("inside")).await.unwrap();
    assert!(!res.body().is_tracked(), "content-encoded: passes through");
    let body = gzip_body(res).await;
    assert_eq!(body, concat(GZIP_EVENTS));

    // Byte for byte what compression alone produces.
    let alone = ServiceBuilder::new()
        .layer(CompressionLayer::new().compress_when(always))
        .service(sse_service(GZIP_EVENTS))
        .oneshot(gzip_request("inside"))
        .await
        .unwrap();
    let alone = alone.into_body().collect().await.unwrap().to_bytes();
    let res = ServiceBuilder::new()
        .layer(tracking.clone())
        .layer(CompressionLayer::new().compress_when(always))
        .service(sse_service(GZIP_EVENTS))
        .oneshot(gzip_request("inside"))
        .await
        .unwrap();
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), alone);

    tracking.flush().await.unwrap();
    assert_eq!(
        tracking.worker().last_event_id(&sid("inside"), &events()),
        None
    );
    assert_eq!(tracking.worker().tracked_sessions(), 0);
    assert!(store.is_empty(), "nothing recorded: {:?}", store.snapshot());
}

#[tokio::test]
async fn layer_inside_compression_tracks_events_and_the_client_gets_valid_gzip() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    // Right order: compression outermost, the layer next to the handler.
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(CompressionLayer::new().compress_when(always))
        .layer(tracking.clone())
        .service(sse_service(GZIP_EVENTS));
    let res = svc.oneshot(gzip_request("outside")).await.unwrap();
    let body = gzip_body(res).await;
    assert_eq!(body, concat(GZIP_EVENTS));

    tracking.flush().await.unwrap();
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("outside"), &events())
            .as_deref(),
        Some("3")
    );
    assert_eq!(stored(&store, "outside"), set("3"));
}

#[tokio::test]
async fn default_compression_skips_event_streams_so_either_order_tracks() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let inside = ServiceBuilder::new()
        .layer(tracking.clone())
        .layer(CompressionLayer::new())
        .service(sse_service(GZIP_EVENTS));
    let res = inside.oneshot(gzip_request("default")).await.unwrap();
    assert!(res.headers().get(header::CONTENT_ENCODING).is_none());
    assert!(res.body().is_tracked());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, concat(GZIP_EVENTS));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "default"), set("3"));
}
