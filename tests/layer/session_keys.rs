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
