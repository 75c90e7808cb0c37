//! Resume: `Last-Event-ID` filled in from memory or the store.

use super::*;

/// A handler that notes the `Last-Event-ID` it was given and streams the ids listed in the
/// `x-emit` request header, naming the session in its response when `x-assign` asks for it.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Recorder {
    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let seen = self.seen.clone();
        service_fn(move |req: Request<()>| {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
            };
            seen.lock().unwrap().push(header("last-event-id"));
            let body: String = header("x-emit")
                .unwrap_or_default()
                .split(',')
                .filter(|id| !id.is_empty())
                .map(|id| format!("id: {id}\ndata: x\n\n"))
                .collect();
            let mut res = sse(Full::new(Bytes::from(body)));
            if let Some(session) = header("x-assign") {
                res.headers_mut()
                    .insert(SESSION_HEADER, HeaderValue::from_str(&session).unwrap());
            }
            ready(Ok(res))
        })
    }

    fn last_seen(&self) -> Option<String> {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn resume_request(session: Option<&str>, last_event_id: Option<&str>, emit: &str) -> Request<()> {
    let mut req = request(session);
    if let Some(id) = last_event_id {
        req.headers_mut()
            .insert("last-event-id", HeaderValue::from_str(id).unwrap());
    }
    req.headers_mut()
        .insert("x-emit", HeaderValue::from_str(emit).unwrap());
    req
}

#[tokio::test]
async fn resume_inserts_the_tracked_id_of_a_session_known_in_memory() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();

    // First connection: no id known yet.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, "1,2,3"),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    // Reconnect without Last-Event-ID: the layer fills it in.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, "4"),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("3"));
    // The client's own header is never overridden.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), Some("2"), ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("2"));
    // Another session never gets this one's id.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("b"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    // Nor does a request without a session.
    fetch(&tracking, handler.service(), resume_request(None, None, "")).await;
    assert_eq!(handler.last_seen(), None);
    // The client's own header was authoritative: the session's position moved back to 2 (the
    // stream sent nothing after it), and the next resume continues from there.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("2"));
}

#[tokio::test]
async fn resume_does_not_insert_a_cleared_id() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();
    tracking.worker().record(&sid("c"), &events(), Some("5"));
    tracking.worker().record(&sid("c"), &events(), Some(""));
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("c"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
}

#[tokio::test]
async fn resume_is_off_by_default() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).build();
    let handler = Recorder::default();
    tracking.worker().record(&sid("a"), &events(), Some("5"));
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("a"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
}

async fn prefill(store: &MemoryStore, session: &str, id: &str) {
    store
        .save_batch(&[SessionUpdate {
            session: sid(session),
            stream: events(),
            last_event_id: LastEventId::from(id),
            version: 1,
            last_activity: SystemTime::now(),
        }])
        .await
        .unwrap();
}

#[tokio::test]
async fn resume_reads_a_session_known_only_in_the_store() {
    let store = MemoryStore::new();
    prefill(&store, "stored", "99").await;
    prefill(&store, "cleared", "").await;
    // A new layer (say, after a restart) over the filled store.
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();

    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("stored"), None, "100"),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("99"));
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("stored"), Some("42"), ""),
    )
    .await;
    assert_eq!(
        handler.last_seen().as_deref(),
        Some("42"),
        "client header kept"
    );
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("cleared"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("absent"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen(), None);
    // Now known in memory: the client's own 42 moved the position (nothing was sent after it),
    // and it wins over the older 100 in the store too.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("stored"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("42"));
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "stored"), set("42"));
}

/// A store whose reads always fail.
#[derive(Clone, Default)]
struct UnreadableStore(MemoryStore);

impl SessionStore for UnreadableStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        self.0.save_batch(batch)
    }

    fn load<'a>(
        &'a self,
        _session: &'a SessionId,
        _stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(ready(Err(StoreError::transient("store is down"))))
    }

    fn delete_session<'a>(&'a self, _session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(ready(Err(StoreError::transient("store is down"))))
    }
}

#[tokio::test]
async fn resume_with_a_failing_store_calls_the_handler_without_the_header() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime: everything below runs on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let store = UnreadableStore::default();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_header(http::HeaderName::from_static(SESSION_HEADER))
        .resume(true)
        .build();
    let handler = Recorder::default();
    let res = tracking
        .layer(handler.service())
        .oneshot(resume_request(Some("s"), None, "1"))
        .await
        .expect("the request does not fail");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.body().is_tracked());
    res.into_body().collect().await.unwrap();
    assert_eq!(handler.last_seen(), None);

    let errors: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "sse_tracking_resume_errors_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("not a counter: {other:?}"),
        })
        .sum();
    assert_eq!(errors, 1);
    tracking.flush().await.unwrap();
    assert_eq!(
        store.0.get(&sid("s"), &events()).map(|r| r.last_event_id),
        set("1"),
        "still tracked"
    );
}

#[tokio::test]
async fn session_named_in_the_response_header_is_tracked_and_resumed() {
    let store = MemoryStore::new();
    let tracking = layer_builder(&store).resume(true).build();
    let handler = Recorder::default();

    // MCP style: the client has no session yet, the server assigns one in its response.
    let mut req = resume_request(None, None, "1,2");
    req.headers_mut()
        .insert("x-assign", HeaderValue::from_static("fresh-1"));
    let (body, tracked) = fetch(&tracking, handler.service(), req).await;
    assert!(tracked);
    assert_eq!(body, &b"id: 1\ndata: x\n\nid: 2\ndata: x\n\n"[..]);
    assert_eq!(
        tracking
            .worker()
            .last_event_id(&sid("fresh-1"), &events())
            .as_deref(),
        Some("2")
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "fresh-1"), set("2"));

    // The client then sends the session it was given.
    fetch(
        &tracking,
        handler.service(),
        resume_request(Some("fresh-1"), None, ""),
    )
    .await;
    assert_eq!(handler.last_seen().as_deref(), Some("2"));
}

#[tokio::test]
async fn session_fn_keys_are_tracked_and_response_headers_are_not_consulted() {
    let store = MemoryStore::new();
    let tracking = EventTrackingLayer::builder()
        .store(store.clone())
        .session_fn(|parts| {
            parts
                .uri
                .query()?
                .strip_prefix("session=")
                .map(str::to_owned)
        })
        .build();
    let handler = Recorder::default();
    let req = |uri: &str| {
        let mut req = resume_request(None, None, "7");
        *req.uri_mut() = uri.parse().unwrap();
        req.headers_mut()
            .insert("x-assign", HeaderValue::from_static("from-response"));
        req
    };
    let (_, tracked) = fetch(&tracking, handler.service(), req("/events?session=q1")).await;
    assert!(tracked);
    let (_, tracked) = fetch(&tracking, handler.service(), req("/events")).await;
    assert!(
        !tracked,
        "a key function that finds no key leaves the request untracked"
    );
    tracking.flush().await.unwrap();
    assert_eq!(stored(&store, "q1"), set("7"));
    assert_eq!(stored(&store, "from-response"), None);
}

/// A request body that is neither `Send` nor `Sync` (an `Rc`): the layer must not require more
/// of the request than the inner service does, with resume off or on (then the session's ID is
/// read from the store while the request waits in the response future).
#[tokio::test]
async fn a_request_body_that_is_not_send_works_with_and_without_resume() {
    use std::rc::Rc;

    let session = sid("local");
    for resume in [false, true] {
        let store = MemoryStore::new();
        store
            .save_batch(&[SessionUpdate {
                session: session.clone(),
                stream: events(),
                last_event_id: LastEventId::from("41"),
                version: 1,
                last_activity: SystemTime::now(),
            }])
            .await
            .unwrap();
        let tracking = EventTrackingLayer::builder()
            .store(store.clone())
            .resume(resume)
            .build();
        let service = tracking.layer(service_fn(|req: Request<Rc<String>>| {
            let seen = req
                .headers()
                .get("last-event-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = format!("id: 42\ndata: {} {:?}\n\n", req.body(), seen);
            async move { Ok::<_, Infallible>(sse(Full::new(Bytes::from(body)))) }
        }));
        let request = Request::get("/events")
            .header(SESSION_HEADER, "local")
            .body(Rc::new("not send".to_owned()))
            .unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert!(response.body().is_tracked());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let expected = if resume {
            "id: 42\ndata: not send Some(\"41\")\n\n"
        } else {
            "id: 42\ndata: not send None\n\n"
        };
        assert_eq!(bytes, expected);
        tracking.flush().await.unwrap();
        assert_eq!(
            tracking
                .worker()
                .last_event_id(&session, &events())
                .as_deref(),
            Some("42")
        );
        tracking.shutdown(Duration::from_secs(1)).await.unwrap();
    }
}
