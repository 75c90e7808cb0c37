//! axum `Sse` with keep-alive: byte-identical bodies, tracked per session.

use super::*;

/// Events `<session>-1 ..= <session>-n`, 1.5 s apart, with a 1 s keep-alive in between.
async fn axum_events(headers: HeaderMap) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let session = headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let n = if session == "alice" { 3 } else { 5 };
    let events = stream::iter(1..=n).then(move |i| {
        let session = session.clone();
        async move {
            sleep(Duration::from_millis(1500)).await;
            Ok(Event::default()
                .id(format!("{session}-{i}"))
                .event("tick")
                .data(format!("{{\"n\":{i}}}\nsecond line")))
        }
    });
    Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(1))
            .text("keep-alive"),
    )
}

async fn axum_body(app: Router, session: &str) -> Bytes {
    let req = Request::builder()
        .uri("/events")
        .header(SESSION_HEADER, session)
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(start_paused = true)]
async fn axum_sse_with_keep_alive_is_byte_identical_and_tracked_per_session() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let bare = Router::new().route("/events", get(axum_events));
    let tracked = Router::new()
        .route("/events", get(axum_events))
        .layer(tracking.clone());

    for (session, last) in [("alice", "alice-3"), ("bob", "bob-5")] {
        let expected = axum_body(bare.clone(), session).await;
        let got = axum_body(tracked.clone(), session).await;
        let keep_alives = expected
            .windows(14)
            .filter(|w| w == b": keep-alive\n\n")
            .count();
        assert!(keep_alives >= 3, "keep-alive comments: {expected:?}");
        assert_eq!(got, expected, "{session}: the layer changed the bytes");
        assert_eq!(
            tracking
                .worker()
                .last_event_id(&sid(session), &events())
                .as_deref(),
            Some(last)
        );
    }

    let report = tracking.flush().await.unwrap();
    assert_eq!(report.failed(), 0);
    assert_eq!(stored(&store, "alice"), set("alice-3"));
    assert_eq!(stored(&store, "bob"), set("bob-5"));
    assert_eq!(store.snapshot().len(), 2);
}
