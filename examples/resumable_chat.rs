//! Replay at the layer for an LLM-style answer: a POST streams 200 generated tokens, 20 ms apart.
//! The client reads 50, loses its connection (a phone changing networks), reconnects with
//! `Last-Event-ID` and gets the other 150 exactly once, while the generator ran exactly once:
//! the layer read the answer on into its history after the client went away (the detach
//! grace), and answered the reconnect from there. The handler knows nothing about resuming.
//!
//! ```text
//! cargo run --example resumable_chat
//! ```

use std::{
    convert::Infallible,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use axum::{
    Router,
    response::sse::{Event, Sse},
    routing::post,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower_sse_tracking::{EventTrackingLayer, history::ReplayConfig};

const TOKENS: u32 = 200;
const READ_FIRST: u32 = 50;

/// How many times the "model" ran.
static GENERATIONS: AtomicUsize = AtomicUsize::new(0);

/// The answer: 200 tokens, 20 ms apart, each an event with its index as ID.
async fn chat() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let run = GENERATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    println!("  server: generating answer #{run}");
    Sse::new(stream::iter(1..=TOKENS).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Event::default()
            .id(i.to_string())
            .data(format!("token {i}")))
    }))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// POSTs to `/chat` (with `Last-Event-ID` when given) and reads token events until `stop`
/// of them arrived or the stream ended; returns their IDs.
async fn read(
    client: &HttpClient,
    url: &str,
    last: Option<u32>,
    stop: Option<u32>,
) -> Result<(Vec<u32>, String), Box<dyn std::error::Error>> {
    let mut request = http::Request::post(url).header("cookie", "sid=phone-1");
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let response = client.request(request.body(Empty::new())?).await?;
    let replay = response
        .headers()
        .get("sse-replay")
        .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned());
    let mut body = response.into_body();
    let (mut text, mut ids) = (String::new(), Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            text.push_str(std::str::from_utf8(&data)?);
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                ids.push(id.parse()?);
            }
        }
        if stop.is_some_and(|n| ids.len() >= n as usize) {
            break; // dropping the body closes the connection
        }
    }
    Ok((ids, replay))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tracking = EventTrackingLayer::builder()
        .name("chat")
        .session_cookie("sid")
        .replay(ReplayConfig::default().detach_grace(Duration::from_secs(30)))
        .build();
    let app = Router::new()
        .route("/chat", post(chat))
        .layer(tracking.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/chat", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("resumable chat on {url}\n");

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    println!("1. the client asks, reads {READ_FIRST} tokens and loses its connection");
    let (first, _) = read(&client, &url, None, Some(READ_FIRST)).await?;
    println!(
        "  client got tokens {}..={}",
        first[0],
        first[first.len() - 1]
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let last = *first.last().ok_or("no token arrived")?;
    println!("\n2. 300 ms later it reconnects with Last-Event-ID: {last}");
    let (rest, replay) = read(&client, &url, Some(last), None).await?;
    println!(
        "  client got tokens {}..={} (sse-replay: {replay})",
        rest[0],
        rest[rest.len() - 1]
    );

    let all: Vec<u32> = first.iter().chain(&rest).copied().collect();
    let expected: Vec<u32> = (1..=TOKENS).collect();
    let generations = GENERATIONS.load(Ordering::SeqCst);
    println!(
        "\n{} tokens in all, each exactly once: {}; the generator ran {generations} time(s)",
        all.len(),
        all == expected
    );
    tracking.shutdown(Duration::from_secs(5)).await?;
    if all != expected || generations != 1 {
        return Err("the answer did not arrive exactly once".into());
    }
    println!("done");
    Ok(())
}
