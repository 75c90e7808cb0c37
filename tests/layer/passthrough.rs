//! What is not a tracked event stream passes through untouched.

use super::*;

/// A body that looks like events, to prove it is not parsed.
pub(super) const LOOKS_LIKE_EVENTS: &[&[u8]] = &[b"id: 1\ndata: x\n\n", b"id: 2\n\n"];

fn with_type(content_type: &'static str) -> impl Fn(Chunks) -> Response<Chunks> {
    move |body| {
        Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap()
    }
}

fn with_status(status: StatusCode) -> impl Fn(Chunks) -> Response<Chunks> {
    move |body| {
        let mut res = sse(body);
        *res.status_mut() = status;
        res
    }
}

pub(super) async fn assert_untouched(
    tracking: &EventTrackingLayer,
    store: &MemoryStore,
    svc: ChunkService,
    req: Request<()>,
    what: &str,
) {
    let (body, tracked) = fetch(tracking, svc, req).await;
    assert!(!tracked, "{what}: tracked");
    assert_eq!(body, concat(LOOKS_LIKE_EVENTS), "{what}: bytes changed");
    tracking.flush().await.unwrap();
    assert_eq!(tracking.worker().tracked_sessions(), 0, "{what}");
    assert!(store.is_empty(), "{what}: {:?}", store.snapshot());
}

#[tokio::test]
async fn non_event_stream_responses_pass_through_and_record_nothing() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    for content_type in [
        "application/json",
        "text/plain; charset=utf-8",
        "text/event-streams",
        "application/octet-stream",
    ] {
        let svc = service_with(LOOKS_LIKE_EVENTS, with_type(content_type));
        assert_untouched(&tracking, &store, svc, request(Some("s")), content_type).await;
    }
    // No content type at all.
    let svc = service_with(LOOKS_LIKE_EVENTS, Response::new);
    assert_untouched(
        &tracking,
        &store,
        svc,
        request(Some("s")),
        "no content type",
    )
    .await;

    // A real JSON body through `Full`.
    let json = service_fn(|_req: Request<()>| {
        ready(Ok::<_, Infallible>(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(b"{\"id\":1}")))
                .unwrap(),
        ))
    });
    let (body, tracked) = fetch(&tracking, json, request(Some("s"))).await;
    assert!(!tracked);
    assert_eq!(body, &b"{\"id\":1}"[..]);
    assert_eq!(tracking.worker().tracked_sessions(), 0);
}

#[tokio::test]
async fn head_requests_pass_through_and_record_nothing() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    tracking
        .worker()
        .record(&sid("known"), &events(), Some("5"));
    tracking.flush().await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let seen = seen.clone();
        service_fn(move |req: Request<()>| {
            seen.lock()
                .unwrap()
                .push(req.headers().get("last-event-id").cloned());
            ready(Ok::<_, Infallible>(sse(Empty::<Bytes>::new())))
        })
    };
    let mut req = request(Some("head"));
    *req.method_mut() = Method::HEAD;
    let (body, tracked) = fetch(&tracking, handler.clone(), req).await;
    assert!(!tracked);
    assert!(body.is_empty());
    // Not even resumed.
    let mut req = request(Some("known"));
    *req.method_mut() = Method::HEAD;
    let (_, tracked) = fetch(&tracking, handler, req).await;
    assert!(!tracked);
    assert_eq!(*seen.lock().unwrap(), [None, None]);

    // A HEAD answered with a body (a misbehaving handler) is not parsed either.
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let mut req = request(Some("head"));
    *req.method_mut() = Method::HEAD;
    assert_untouched(
        &tracking,
        &store,
        sse_service(LOOKS_LIKE_EVENTS),
        req,
        "HEAD",
    )
    .await;
}

#[tokio::test]
async fn non_success_event_streams_are_not_tracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    for status in [
        StatusCode::NOT_FOUND,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::FOUND,
        StatusCode::NOT_MODIFIED,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let svc = service_with(LOOKS_LIKE_EVENTS, with_status(status));
        assert_untouched(&tracking, &store, svc, request(Some("s")), status.as_str()).await;
    }
}

#[tokio::test]
async fn event_streams_without_a_session_are_not_tracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let svc = sse_service(LOOKS_LIKE_EVENTS);
    assert_untouched(&tracking, &store, svc, request(None), "no session").await;
}

#[tokio::test]
async fn a_full_registry_leaves_new_sessions_untracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store)
        .worker(WorkerConfig::default().max_sessions(1))
        .build();
    let (_, tracked) = fetch(&tracking, sse_service(THREE_EVENTS), request(Some("first"))).await;
    assert!(tracked);
    // "first" is not idle long enough to be evicted: no room for "second".
    let (body, tracked) = fetch(
        &tracking,
        sse_service(THREE_EVENTS),
        request(Some("second")),
    )
    .await;
    assert!(!tracked);
    assert_eq!(body, concat(THREE_EVENTS));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "first"), set("3"));
    assert_eq!(stored(&store, "second"), None);
}

#[tokio::test(start_paused = true)]
async fn streams_flow_unchanged_and_undelayed_after_shutdown() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store)
        .worker(WorkerConfig::default().queue_capacity(1))
        .build();
    let report = tracking.shutdown(Duration::from_secs(1)).await.unwrap();
    assert!(report.unpersisted().is_empty());
    let start = Instant::now();
    let (body, _) = fetch(&tracking, sse_service(THREE_EVENTS), request(Some("late"))).await;
    assert_eq!(body, concat(THREE_EVENTS));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "never waits on a stopped worker"
    );
    assert!(tracking.flush().await.is_err());
    assert_eq!(stored(&store, "late"), None);
}

#[tokio::test]
async fn size_hint_and_end_of_stream_are_forwarded() {
    let full = || {
        service_fn(|_req: Request<()>| {
            ready(Ok::<_, Infallible>(sse(Full::new(Bytes::from_static(
                b"id: 1\ndata: a\n\n",
            )))))
        })
    };
    let plain = layer_builder(&MemoryStore::new()).build();
    let res = plain
        .layer(full())
        .oneshot(request(Some("s")))
        .await
        .unwrap();
    assert!(res.body().is_tracked());
    assert_eq!(res.body().size_hint().exact(), Some(15));
    let mut body = Box::pin(res.into_body());
    assert!(!body.is_end_stream());
    body.frame().await.unwrap().unwrap();
    assert!(body.is_end_stream(), "ends right after the only frame");
    assert_eq!(
        plain
            .worker()
            .last_event_id(&sid("s"), &events())
            .as_deref(),
        Some("1"),
        "recorded without polling past the end"
    );

    // Heartbeats may add bytes: no upper bound any more (and so no Content-Length).
    let beating = layer_builder(&MemoryStore::new()).heartbeat(IDLE).build();
    let res = beating
        .layer(full())
        .oneshot(request(Some("s")))
        .await
        .unwrap();
    let hint = res.body().size_hint();
    assert_eq!((hint.lower(), hint.upper()), (15, None));
}

/// The layer wraps every response body, tracked or not: an untracked body must stay small.
#[test]
fn tracking_body_adds_a_few_words_to_the_inner_body() {
    use tower_sse_tracking::TrackingBody;
    let axum = size_of::<TrackingBody<axum::body::Body>>();
    let full = size_of::<TrackingBody<Full<Bytes>>>();
    println!("size_of TrackingBody<axum::body::Body> = {axum}, TrackingBody<Full<Bytes>> = {full}");
    // The inner body (optional: a response answered from history has none), a pointer to the
    // boxed tracking state, a held frame's data, an end flag.
    assert!(axum <= size_of::<Option<axum::body::Body>>() + 16 + size_of::<Option<Bytes>>());
    assert!(
        axum <= 64,
        "as before replay, thanks to the niche of a boxed body"
    );
    // A held frame's data is boxed (it is rare): the body axum boxes per response is 40 bytes.
    assert_eq!(axum, 40);
    assert!(full <= size_of::<Option<Full<Bytes>>>() + 16 + size_of::<Option<Bytes>>());
}
