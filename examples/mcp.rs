//! An MCP server (the official Rust SDK, rmcp, on the streamable HTTP transport) behind the
//! layer with `.mcp()`: rmcp's own client calls a tool that reports progress, loses its
//! standalone GET stream (the server drops it, as a proxy would), reconnects with its
//! `Last-Event-ID`, and gets the log sent meanwhile. The example prints the positions the layer
//! keeps per stream at each step, ends the session (DELETE) and checks that they are gone.
//!
//! ```text
//! cargo run --example mcp
//! ```

#![allow(deprecated)] // rmcp 3.11 marks logging notifications deprecated (SEP-2577)

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    ClientHandler, ErrorData, RoleClient, RoleServer, ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolRequestParams, CallToolResult, ClientInfo, ContentBlock, LoggingLevel,
        LoggingMessageNotificationParam, ProgressNotificationParam, ServerCapabilities, ServerInfo,
    },
    schemars,
    service::{NotificationContext, RequestContext},
    tool, tool_handler, tool_router,
    transport::{
        StreamableHttpClientTransport, StreamableHttpServerConfig, StreamableHttpService,
        streamable_http_server::session::local::LocalSessionManager,
    },
};
use tower_sse_tracking::{EventTrackingLayer, SessionId, StreamKey};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct CountArgs {
    /// How far to count.
    steps: u32,
}

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

    #[tool(description = "Counts to `steps`, reporting progress and logging each step")]
    async fn count(
        &self,
        Parameters(CountArgs { steps }): Parameters<CountArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let failed =
            |e: rmcp::service::ServiceError| ErrorData::internal_error(e.to_string(), None);
        let token = ctx.meta.get_progress_token();
        for i in 1..=steps {
            if let Some(token) = &token {
                let progress = ProgressNotificationParam::new(token.clone(), f64::from(i))
                    .with_total(f64::from(steps));
                ctx.peer.notify_progress(progress).await.map_err(failed)?;
            }
            let log = LoggingMessageNotificationParam::new(
                LoggingLevel::Info,
                serde_json::json!(format!("step {i}")),
            );
            ctx.peer.notify_logging_message(log).await.map_err(failed)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "counted to {steps}"
        ))]))
    }

    #[tool(description = "Logs one message")]
    async fn note(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let log =
            LoggingMessageNotificationParam::new(LoggingLevel::Info, serde_json::json!("a note"));
        ctx.peer
            .notify_logging_message(log)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(CallToolResult::success(vec![ContentBlock::text("noted")]))
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

/// The client: prints what arrives, and keeps the logs.
#[derive(Clone, Default)]
struct Client {
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        println!(
            "  client: progress {}/{}",
            params.progress,
            params.total.unwrap_or_default()
        );
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        println!("  client: log {}", params.data);
        self.logs.lock().unwrap().push(params.data);
    }

    fn get_info(&self) -> ClientInfo {
        ClientInfo::default()
    }
}

/// The positions the layer keeps for the session's streams.
fn positions(tracking: &EventTrackingLayer, session: &SessionId) -> Vec<(String, Option<String>)> {
    ["GET /mcp", "POST /mcp", "GET /mcp resumed"]
        .into_iter()
        .map(|key| {
            let id = tracking
                .worker()
                .last_event_id(session, &StreamKey::new(key).unwrap());
            (key.to_owned(), id)
        })
        .collect()
}

fn print_positions(tracking: &EventTrackingLayer, session: &SessionId) {
    for (key, id) in positions(tracking, session) {
        println!(
            "  layer: {key:<16} -> {}",
            id.as_deref().unwrap_or("(none)")
        );
    }
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) -> Result<(), Error> {
    for _ in 0..500 {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("never: {what}").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let tracking = EventTrackingLayer::builder().mcp().resume(true).build();
    let manager = Arc::new(LocalSessionManager::default());
    let service = StreamableHttpService::new(
        || Ok(Counter::new()),
        manager.clone(),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(tracking.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/mcp", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("MCP server (rmcp, streamable HTTP) behind the layer on {url}\n");

    let handler = Client::default();
    let client = handler
        .clone()
        .serve(StreamableHttpClientTransport::from_uri(url.as_str()))
        .await?;
    let session = {
        let sessions = manager.sessions.read().await;
        SessionId::new(sessions.keys().next().ok_or("no session")?)?
    };
    println!("1. the client initialized session {session} and calls `count` (3 steps)");
    let args = serde_json::json!({ "steps": 3 });
    let result = client
        .call_tool(
            CallToolRequestParams::new("count")
                .with_arguments(args.as_object().cloned().unwrap_or_default()),
        )
        .await?;
    let text: Vec<&str> = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    println!("  client: result {text:?}");
    wait_for("3 logs", || handler.logs.lock().unwrap().len() == 3).await?;
    print_positions(&tracking, &session);
    let before = positions(&tracking, &session);

    println!("\n2. the standalone GET stream is dropped; a note is logged meanwhile");
    manager.sessions.read().await[session.as_str()]
        .close_standalone_sse_stream(Some(Duration::from_millis(300)))
        .await?;
    client.call_tool(CallToolRequestParams::new("note")).await?;
    wait_for("the note, after the reconnect", || {
        handler.logs.lock().unwrap().len() == 4
    })
    .await?;
    print_positions(&tracking, &session);
    let after = positions(&tracking, &session);

    // Each stream's position is in its own scheme: integers on the standalone stream, k/n on
    // the POST streams; the reconnect moved the standalone stream's on.
    let number = |p: &[(String, Option<String>)], i: usize| -> Option<u64> {
        p[i].1.as_deref()?.parse().ok()
    };
    let post_scheme = after[1]
        .1
        .as_deref()
        .and_then(|id| id.split_once('/'))
        .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
    let moved_on = matches!((number(&before, 0), number(&after, 0)), (Some(a), Some(b)) if b > a);
    println!(
        "\n  standalone stream moved on after the reconnect: {moved_on}; POST streams keep k/n IDs: \
         {post_scheme}"
    );

    println!("\n3. the client ends the session (DELETE)");
    client.cancel().await?;
    let gone = positions(&tracking, &session)
        .iter()
        .all(|(_, id)| id.is_none());
    print_positions(&tracking, &session);
    tracking.shutdown(Duration::from_secs(5)).await?;
    if !(moved_on && post_scheme && gone) {
        return Err("positions per stream were not as expected".into());
    }
    println!("\ndone");
    Ok(())
}
