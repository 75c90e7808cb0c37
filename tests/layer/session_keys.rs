//! Hostile session keys.

use super::*;

#[tokio::test]
async fn hostile_session_keys_pass_through_untracked() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let long = "k".repeat(129);
    let hostile: Vec<(&str, HeaderValue)> = vec![
        ("too long", HeaderValue::from_str(&long).unwrap()),
        ("tab", HeaderValue::from_static("bad\tkey")),
        ("non-utf-8", HeaderValue::from_bytes(b"caf\xe9").unwrap()),
        (
            "c1 control",
            HeaderValue::from_bytes("a\u{85}b".as_bytes()).unwrap(),
        ),
        ("empty", HeaderValue::from_static("")),
    ];
    for (what, value) in hostile {
        let mut req = request(None);
        req.headers_mut().insert(SESSION_HEADER, value);
        assert_untouched(&tracking, &store, sse_service(LOOKS_LIKE_EVENTS), req, what).await;
    }

    // Named by the response instead (MCP style): the same rules apply.
    let bad_response = service_with(LOOKS_LIKE_EVENTS, |body| {
        let mut res = sse(body);
        res.headers_mut().insert(
            SESSION_HEADER,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        res
    });
    assert_untouched(&tracking, &store, bad_response, request(None), "response").await;

    // The longest valid key is tracked.
    let longest = "k".repeat(128);
    let (_, tracked) = fetch(
        &tracking,
        sse_service(LOOKS_LIKE_EVENTS),
        request(Some(&longest)),
    )
    .await;
    assert!(tracked);
}

#[tokio::test]
async fn hostile_keys_from_a_session_fn_pass_through_untracked() {
    for key in [
        "x\u{1}y",
        "line\nbreak",
        "",
        "del\u{7f}",
        "c1\u{9b}",
        &"k".repeat(129),
    ] {
        let key = key.to_owned();
        let store = MemoryStore::new();
        let tracking = EventTrackingLayer::builder()
            .store(store.clone())
            .session_fn(move |_| Some(key.clone()))
            .build();
        assert_untouched(
            &tracking,
            &store,
            sse_service(LOOKS_LIKE_EVENTS),
            request(None),
            "session_fn",
        )
        .await;
    }
}

/// With `follow_last_event_id`, a reconnect whose `Last-Event-ID` is the position of one of its
/// session's streams continues that stream (its events move that position), whatever key the
/// stream key function gives the request; without it, the reconnect's own key takes them.
#[tokio::test]
async fn a_reconnect_naming_a_stream_s_position_continues_that_stream() {
    for follow in [true, false] {
        let store = MemoryStore::new();
        let mut builder = layer_builder(&store)
            .stream_key(|parts| Some(format!("{} {}", parts.method, parts.uri.path())));
        if follow {
            builder = builder.follow_last_event_id();
        }
        let layer = builder.build();
        let post = Request::post("/events")
            .header(SESSION_HEADER, "s")
            .body(())
            .unwrap();
        // A POST stream sends p1, p2; a GET stream sends g1.
        fetch(&layer, sse_service(&[b"id: p1\n\n", b"id: p2\n\n"]), post).await;
        let get = |last: Option<&str>| {
            let mut req = Request::get("/events").header(SESSION_HEADER, "s");
            if let Some(id) = last {
                req = req.header("last-event-id", id);
            }
            req.body(()).unwrap()
        };
        fetch(&layer, sse_service(&[b"id: g1\n\n"]), get(None)).await;
        // A GET that resumes the POST stream after p2: its events are the POST stream's.
        fetch(&layer, sse_service(&[b"id: p3\n\n"]), get(Some("p2"))).await;
        // A GET naming an ID that is no stream's position keeps its own key.
        fetch(&layer, sse_service(&[b"id: g2\n\n"]), get(Some("zzz"))).await;
        let position = |key: &str| {
            layer
                .worker()
                .last_event_id(&sid("s"), &StreamKey::new(key).unwrap())
        };
        if follow {
            assert_eq!(position("POST /events").as_deref(), Some("p3"));
            assert_eq!(position("GET /events").as_deref(), Some("g2"));
        } else {
            assert_eq!(position("POST /events").as_deref(), Some("p2"));
            assert_eq!(position("GET /events").as_deref(), Some("g2"));
        }
    }
}
