//! MCP, as users run it: the official Rust SDK's (rmcp) streamable HTTP server behind the layer
//! with [`EventTrackingLayerBuilder::mcp`], driven by rmcp's own client over a real loopback
//! connection. Every notification arrives; each stream keeps positions in its own scheme; a
//! dropped standalone stream resumes with nothing lost that rmcp's cache holds, and the layer's
//! resume hands a GET only its own stream's ID; DELETE forgets the session; the session-less
//! 2026-07-28 revision passes through, counted as untracked.

#![allow(deprecated)] // rmcp 3.11 marks logging notifications deprecated (SEP-2577)

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use metrics_util::debugging::DebuggingRecorder;
use rmcp::{
    ClientHandler, ClientLifecycleMode, ClientServiceExt, ErrorData, RoleClient, RoleServer,
    ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolRequestParams, CallToolResult, ClientInfo, ContentBlock, LoggingLevel,
        LoggingMessageNotificationParam, ProgressNotificationParam, ProtocolVersion,
        ServerCapabilities, ServerInfo,
    },
    schemars,
    service::{NotificationContext, RequestContext, RunningService},
    tool, tool_handler, tool_router,
    transport::{
        StreamableHttpClientTransport, StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use tower_sse_tracking::{EventTrackingLayer, SessionId, StreamKey, metrics as m};

use support::{sid, stream};

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct CountArgs {
    /// How far to count.
    steps: u32,
}

/// A server with a tool that reports progress and logs as it counts.
#[derive(Clone)]
struct Counter {
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Counter {
    fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(description = "Counts to `steps`, with a progress and a log notification per step")]
    async fn count(
        &self,
        Parameters(CountArgs { steps }): Parameters<CountArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let token = ctx.meta.get_progress_token();
        for i in 1..=steps {
            let failed =
                |e: rmcp::service::ServiceError| ErrorData::internal_error(e.to_string(), None);
            if let Some(token) = &token {
                ctx.peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), f64::from(i))
                            .with_total(f64::from(steps)),
                    )
                    .await
                    .map_err(failed)?;
            }
            ctx.peer
                .notify_logging_message(LoggingMessageNotificationParam::new(
                    LoggingLevel::Info,
                    serde_json::json!({ "step": i }),
                ))
                .await
                .map_err(failed)?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "counted to {steps}"
        ))]))
    }

    #[tool(description = "Logs one message")]
    async fn log(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        ctx.peer
            .notify_logging_message(LoggingMessageNotificationParam::new(
                LoggingLevel::Info,
                serde_json::json!("one"),
            ))
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(CallToolResult::success(vec![ContentBlock::text("logged")]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Counter {
    fn get_info(&self) -> ServerInfo {
        ServerInfo::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_logging()
                .build(),
        )
    }
}

/// What a client received.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<f64>>>,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(params.progress);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        self.logs.lock().unwrap().push(params.data);
    }

    fn get_info(&self) -> ClientInfo {
        ClientInfo::default()
    }
}

/// The `Last-Event-ID` of every GET that reached the MCP server (after the layer).
type SeenIds = Arc<Mutex<Vec<Option<String>>>>;

struct Server {
    addr: std::net::SocketAddr,
    tracking: EventTrackingLayer,
    manager: Arc<LocalSessionManager>,
    seen: SeenIds,
}

impl Server {
    async fn start(tracking: EventTrackingLayer) -> Self {
        let manager = Arc::new(LocalSessionManager::default());
        let config = StreamableHttpServerConfig::default()
            .with_sse_keep_alive(Some(Duration::from_secs(60)));
        let service = StreamableHttpService::new(|| Ok(Counter::new()), manager.clone(), config);
        let seen = SeenIds::default();
        let record = {
            let seen = seen.clone();
            axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let seen = seen.clone();
                    async move {
                        if req.method() == http::Method::GET {
                            let id = req
                                .headers()
                                .get("last-event-id")
                                .map(|v| v.to_str().unwrap().to_owned());
                            seen.lock().unwrap().push(id);
                        }
                        next.run(req).await
                    }
                },
            )
        };
        let app = axum::Router::new()
            .nest_service("/mcp", service)
            .layer(record)
            .layer(tracking.clone());
        let addr = support::serve(app).await;
        Self {
            addr,
            tracking,
            manager,
            seen,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The one session the server has.
    async fn session(&self) -> SessionId {
        let sessions = self.manager.sessions.read().await;
        assert_eq!(sessions.len(), 1);
        sid(sessions.keys().next().unwrap())
    }

    fn position(&self, session: &SessionId, key: &str) -> Option<String> {
        self.tracking.worker().last_event_id(session, &stream(key))
    }
}

fn layer() -> EventTrackingLayer {
    EventTrackingLayer::builder().mcp().resume(true).build()
}

async fn connect(server: &Server) -> (Recorder, RunningService<RoleClient, Recorder>) {
    let recorder = Recorder::default();
    let client = recorder
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(server.url()))
        .await
        .unwrap();
    (recorder, client)
}

async fn count(client: &RunningService<RoleClient, Recorder>, steps: u32) {
    let args = serde_json::json!({ "steps": steps })
        .as_object()
        .unwrap()
        .clone();
    let result = client
        .call_tool(CallToolRequestParams::new("count").with_arguments(args))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false));
}

/// Waits until `cond` holds (at most 5 s): rmcp's client handles notifications in tasks.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn is_index(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())
}

fn is_post_id(id: &str) -> bool {
    id.split_once('/')
        .is_some_and(|(a, b)| is_index(a) && is_index(b))
}

/// A tool call's progress (on its POST stream) and logs (on the standalone GET stream) all
/// arrive, and each stream keeps its own position, in its own scheme.
#[tokio::test]
async fn every_notification_arrives_and_each_stream_keeps_its_own_position() {
    let server = Server::start(layer()).await;
    let (recorder, client) = connect(&server).await;
    count(&client, 5).await;
    count(&client, 3).await;
    wait_until("8 progress and 8 log notifications", || {
        recorder.progress.lock().unwrap().len() == 8 && recorder.logs.lock().unwrap().len() == 8
    })
    .await;
    assert_eq!(
        *recorder.progress.lock().unwrap(),
        [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0]
    );
    let session = server.session().await;
    let post = server
        .position(&session, "POST /mcp")
        .expect("POST streams tracked");
    let get = server
        .position(&session, "GET /mcp")
        .expect("the GET stream tracked");
    assert!(is_post_id(&post), "a POST stream's ID: {post}");
    assert!(is_index(&get), "the standalone stream's ID: {get}");
    client.cancel().await.unwrap();
}

/// The standalone stream is dropped by the server while a log is sent: rmcp's client
/// reconnects with its `Last-Event-ID`, rmcp replays from its cache, and the log arrives; the
/// reconnect continues the standalone stream's position. A client that lost its ID gets the
/// standalone stream's own from the layer's resume, never a POST stream's.
#[tokio::test]
async fn a_dropped_standalone_stream_resumes_and_resume_never_crosses_streams() {
    let server = Server::start(layer()).await;
    let (recorder, client) = connect(&server).await;
    count(&client, 2).await;
    wait_until("2 logs", || recorder.logs.lock().unwrap().len() == 2).await;
    let session = server.session().await;
    server.manager.sessions.read().await[session.as_str()]
        .close_standalone_sse_stream(Some(Duration::from_millis(300)))
        .await
        .unwrap();
    // Sent while the standalone stream is down: it waits in rmcp's cache.
    client
        .call_tool(CallToolRequestParams::new("log"))
        .await
        .unwrap();
    wait_until("the log sent while the stream was down", || {
        recorder.logs.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(recorder.logs.lock().unwrap()[2], serde_json::json!("one"));
    let seen = server.seen.lock().unwrap().clone();
    let reconnect = seen
        .last()
        .unwrap()
        .clone()
        .expect("rmcp reconnects with its ID");
    assert!(is_index(&reconnect), "{seen:?}");
    // The reconnect continued the standalone stream.
    wait_until("the standalone position moved on", || {
        server
            .position(&session, "GET /mcp")
            .is_some_and(|id| id.parse::<u64>().unwrap() > reconnect.parse::<u64>().unwrap())
    })
    .await;
    assert_eq!(server.position(&session, "GET /mcp resumed"), None);

    // A client that lost its Last-Event-ID: resume fills in the standalone stream's own.
    let own = server.position(&session, "GET /mcp").unwrap();
    let post = server.position(&session, "POST /mcp").unwrap();
    let request = http::Request::get("/mcp")
        .header("mcp-session-id", session.as_str())
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let (parts, body) = head(server.addr, request).await;
    assert_eq!(parts.status, 200);
    drop(body);
    let injected = server.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        injected.as_deref(),
        Some(own.as_str()),
        "its own stream's ID"
    );
    assert_ne!(
        injected.as_deref(),
        Some(post.as_str()),
        "never a POST stream's"
    );
    client.cancel().await.unwrap();
}

/// Sends a request and returns its head, with the body still open.
async fn head(
    addr: std::net::SocketAddr,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> (http::response::Parts, hyper::body::Incoming) {
    let (mut parts, body) = request.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    client
        .request(http::Request::from_parts(parts, body))
        .await
        .unwrap()
        .into_parts()
}

/// The client ends the session (rmcp sends DELETE with `mcp-session-id`): its positions are
/// forgotten, in memory and in the store.
#[tokio::test]
async fn delete_forgets_the_session() {
    let server = Server::start(layer()).await;
    let (recorder, client) = connect(&server).await;
    count(&client, 2).await;
    wait_until("2 logs", || recorder.logs.lock().unwrap().len() == 2).await;
    let session = server.session().await;
    server.tracking.flush().await.unwrap();
    let store = server.tracking.worker().store().clone();
    assert!(
        store
            .last_event_id(&session, &stream("POST /mcp"))
            .await
            .unwrap()
            .is_some()
    );
    client.cancel().await.unwrap(); // DELETE, waited for
    assert_eq!(server.manager.sessions.read().await.len(), 0);
    for key in ["POST /mcp", "GET /mcp"] {
        assert_eq!(server.position(&session, key), None, "{key} in memory");
        assert_eq!(
            store.last_event_id(&session, &stream(key)).await.unwrap(),
            None,
            "{key} in the store"
        );
    }
}

/// The 2026-07-28 revision has no sessions: its streams pass through untouched, every
/// notification arrives, and each is counted as untracked with the reason `no_session`.
#[test]
fn the_session_less_revision_passes_through_counted_as_untracked() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = support::runtime();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let server = Server::start(layer()).await;
            let received = Recorder::default();
            let client = received
                .clone()
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::from_uri(server.url()),
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    },
                )
                .await
                .unwrap();
            count(&client, 3).await;
            wait_until("3 progress and 3 logs", || {
                received.progress.lock().unwrap().len() == 3
                    && received.logs.lock().unwrap().len() == 3
            })
            .await;
            assert_eq!(server.manager.sessions.read().await.len(), 0, "no session");
            assert_eq!(server.tracking.worker().tracked_sessions(), 0);
            let _ = StreamKey::whole_session();
            drop(client);
        });
    });
    let no_session = support::counted(&snapshotter, m::UNTRACKED, "reason", "no_session");
    assert!(no_session >= 1, "counted: {no_session}");
}
