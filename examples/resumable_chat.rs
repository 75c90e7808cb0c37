//! Replay at the layer for an LLM-style answer: a POST streams 200 generated tokens, 20 ms apart.
//! The client reads 50, loses its connection (a phone changing networks), reconnects with
//! `Last-Event-ID` and gets the other 150 exactly once, while the generator ran exactly once:
//! the layer read the answer on into its history after the client went away (the detach
//! grace), and answered the reconnect from there. The handler knows nothing about resuming.
//!
//! ```text
//! cargo run --example resumable_chat
//! ```
//!
//! With a history store, the reconnect is answered by another process:
//!
//! ```text
//! # redb: the server process stops after the answer was generated, a new one answers the
//! # reconnect from the file.
//! cargo run --example resumable_chat --features redb -- --store redb:/tmp/chat.redb
//! # Redis: two server processes on two ports share it; the client starts on the first and
//! # resumes on the second, which follows the answer the first is still generating.
//! cargo run --example resumable_chat --features redis -- --store redis://127.0.0.1:6379/
//! ```

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
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

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How many times the "model" ran in this process, and whether an answer was generated whole.
static GENERATIONS: AtomicUsize = AtomicUsize::new(0);
static ANSWERED: AtomicBool = AtomicBool::new(false);

/// The answer: 200 tokens, 20 ms apart, each an event with its index as ID.
async fn chat() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let run = GENERATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    println!("  server {}: generating answer #{run}", std::process::id());
    let tokens = stream::iter(1..=TOKENS).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i == TOKENS {
            ANSWERED.store(true, Ordering::SeqCst);
        }
        Ok(Event::default()
            .id(i.to_string())
            .data(format!("token {i}")))
    });
    Sse::new(tokens)
}

/// Where the history goes beyond this process's memory.
#[derive(Clone, Debug)]
enum Store {
    Memory,
    Redb(String),
    Redis { url: String, prefix: String },
}

/// What this process does.
#[derive(Debug)]
enum Role {
    /// The demo: server (and client).
    Demo,
    /// A second server process (redb: after the first stopped; Redis: beside it) that the
    /// client reconnects to, after `last`.
    Resume { last: u32 },
    /// A second server that serves until its standard input closes (Redis).
    Replica,
}

fn args() -> Result<(Store, Role), Error> {
    let mut store = Store::Memory;
    let mut role = Role::Demo;
    let mut prefix = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--store" => {
                let value = args.next().ok_or("--store needs a value")?;
                store = if let Some(path) = value.strip_prefix("redb:") {
                    Store::Redb(path.to_owned())
                } else if value.starts_with("redis://") || value.starts_with("redis+unix://") {
                    Store::Redis {
                        url: value,
                        prefix: String::new(),
                    }
                } else {
                    return Err(format!(
                        "unknown store {value:?}: redb:PATH, redis://.. or redis+unix://.."
                    )
                    .into());
                };
            }
            "--resume-after" => {
                let last = args.next().ok_or("--resume-after needs a value")?.parse()?;
                role = Role::Resume { last };
            }
            "--replica" => role = Role::Replica,
            "--prefix" => prefix = Some(args.next().ok_or("--prefix needs a value")?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if let Store::Redis { prefix: p, .. } = &mut store {
        *p = prefix.unwrap_or_else(|| format!("resumable-chat:{}:", std::process::id()));
    }
    Ok((store, role))
}

/// The replay configuration for `store`.
async fn replay(store: &Store) -> Result<ReplayConfig, Error> {
    let config = ReplayConfig::default().detach_grace(Duration::from_secs(30));
    Ok(match store {
        Store::Memory => config,
        #[cfg(feature = "redb")]
        Store::Redb(path) => {
            // The process before may still be letting go of the file: give it a moment.
            let mut tries = 0;
            let history = loop {
                match tower_sse_tracking::history::RedbHistory::open(path) {
                    Ok(history) => break history,
                    Err(e) if tries < 50 && format!("{e:?}").contains("DatabaseAlreadyOpen") => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            config.store(history)
        }
        #[cfg(feature = "redis")]
        Store::Redis { url, prefix } => config.store(
            tower_sse_tracking::history::RedisHistory::builder()
                .prefix(prefix.clone())
                .connect(url)
                .await?,
        ),
        #[allow(unreachable_patterns)]
        other => return Err(format!("{other:?} needs the crate feature of that store").into()),
    })
}

/// A server: the chat endpoint behind the layer, on a free port, until `stop` resolves.
async fn serve(
    store: &Store,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(EventTrackingLayer, SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let tracking = EventTrackingLayer::builder()
        .name("chat")
        .session_cookie("sid")
        .replay(replay(store).await?)
        .worker(
            tower_sse_tracking::worker::WorkerConfig::default()
                .flush_interval(Duration::from_millis(20)),
        )
        .build();
    let app = Router::new()
        .route("/chat", post(chat))
        .layer(tracking.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await;
    });
    Ok((tracking, addr, server))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// POSTs to `/chat` (with `Last-Event-ID` when given) and reads token events until `stop`
/// of them arrived or the stream ended; returns their IDs and the `sse-replay` header.
async fn read(
    addr: SocketAddr,
    last: Option<u32>,
    stop: Option<u32>,
) -> Result<(Vec<u32>, String), Error> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut request =
        http::Request::post(format!("http://{addr}/chat")).header("cookie", "sid=phone-1");
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

fn span(ids: &[u32]) -> String {
    match (ids.first(), ids.last()) {
        (Some(a), Some(b)) => format!("{a}..={b}"),
        _ => "none".to_owned(),
    }
}

/// The reconnect, and the verdict: tokens after `last`, each once, with the generator having
/// run `generations` times in all.
async fn resume(addr: SocketAddr, first: &[u32], last: u32) -> Result<Vec<u32>, Error> {
    println!("\n2. the client reconnects to {addr} with Last-Event-ID: {last}");
    let (rest, replay) = read(addr, Some(last), None).await?;
    println!("  client got tokens {} (sse-replay: {replay})", span(&rest));
    Ok(first.iter().chain(&rest).copied().collect())
}

fn verdict(all: &[u32], generations: usize) -> Result<(), Error> {
    let expected: Vec<u32> = (1..=TOKENS).collect();
    println!(
        "\n{} tokens in all, each exactly once: {}; the generator ran {generations} time(s)",
        all.len(),
        all == expected
    );
    if all != expected || generations != 1 {
        return Err("the answer did not arrive exactly once".into());
    }
    println!("done");
    Ok(())
}

/// This example again, as another process, with the same store.
fn self_command(store: &Store) -> Result<Command, Error> {
    let mut command = Command::new(std::env::current_exe()?);
    match store {
        Store::Memory => {}
        Store::Redb(path) => {
            command.args(["--store", &format!("redb:{path}")]);
        }
        Store::Redis { url, prefix } => {
            command.args(["--store", url, "--prefix", prefix]);
        }
    }
    Ok(command)
}

/// Starts a second server process (a replica); returns it with its address, its output
/// forwarded to ours.
async fn start_replica(
    store: &Store,
) -> Result<(std::process::Child, SocketAddr, tokio::task::JoinHandle<()>), Error> {
    use std::io::BufRead;
    let mut replica = self_command(store)?
        .arg("--replica")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = replica.stdout.take().ok_or("the replica has no output")?;
    let (addr, reader) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err("the replica exited before it listened".into());
            }
            if let Some(addr) = line.trim().strip_prefix("listening ") {
                return Ok((addr.parse::<SocketAddr>()?, reader));
            }
            print!("{line}");
        }
    })
    .await??;
    let forward = tokio::task::spawn_blocking(move || {
        for line in reader.lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    Ok((replica, addr, forward))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (store, role) = args()?;
    match role {
        Role::Demo => demo(store).await,
        Role::Resume { last } => {
            // A new server process on the history another process left behind.
            let (tracking, addr, _server) = serve(&store, std::future::pending()).await?;
            let all = resume(addr, &(1..=last).collect::<Vec<_>>(), last).await?;
            tracking.shutdown(Duration::from_secs(5)).await?;
            let here = GENERATIONS.load(Ordering::SeqCst);
            println!("  (the generator ran {here} time(s) in this process)");
            verdict(&all, 1 + here)
        }
        Role::Replica => {
            let (tracking, addr, _server) = serve(&store, std::future::pending()).await?;
            println!("listening {addr}");
            // Serve until the demo closes our standard input.
            tokio::task::spawn_blocking(|| {
                std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
            })
            .await??;
            tracking.shutdown(Duration::from_secs(5)).await?;
            let here = GENERATIONS.load(Ordering::SeqCst);
            println!(
                "  replica {}: the generator ran {here} time(s) here",
                std::process::id()
            );
            if here != 0 {
                return Err("the replica generated the answer again".into());
            }
            Ok(())
        }
    }
}

async fn demo(store: Store) -> Result<(), Error> {
    if let Store::Redb(path) = &store {
        let _ = std::fs::remove_file(path); // a fresh demo
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (tracking, addr, server) = serve(&store, async {
        let _ = stop_rx.await;
    })
    .await?;
    println!("resumable chat on http://{addr}/chat (history: {store:?})");
    let replica = match &store {
        Store::Redis { .. } => {
            let (child, addr_b, forward) = start_replica(&store).await?;
            println!("a second server process on http://{addr_b}/chat, sharing Redis");
            Some((child, addr_b, forward))
        }
        _ => None,
    };

    println!("\n1. the client asks, reads {READ_FIRST} tokens and loses its connection");
    let (first, _) = read(addr, None, Some(READ_FIRST)).await?;
    println!("  client got tokens {}", span(&first));
    let last = *first.last().ok_or("no token arrived")?;

    match (&store, replica) {
        (Store::Redis { .. }, Some((mut child, addr_b, forward))) => {
            // The other replica follows the answer this one is still generating.
            let all = resume(addr_b, &first, last).await?;
            tracking.shutdown(Duration::from_secs(5)).await?;
            drop(child.stdin.take()); // the replica stops
            let status = child.wait()?;
            forward.await?;
            if !status.success() {
                return Err(format!("the replica failed: {status}").into());
            }
            verdict(&all, GENERATIONS.load(Ordering::SeqCst))
        }
        (Store::Redb(_), _) => {
            // This server reads the answer on into its history, then stops for good.
            while !ANSWERED.load(Ordering::SeqCst) || tracking.detached_streams() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracking.shutdown(Duration::from_secs(5)).await?;
            let _ = stop_tx.send(());
            server.await?;
            drop(tracking); // closes the file
            println!(
                "\n  server {} stopped; a new server process starts on the same file",
                std::process::id()
            );
            let status = self_command(&store)?
                .args(["--resume-after", &last.to_string()])
                .status()?;
            if !status.success() {
                return Err(format!("the new server process failed: {status}").into());
            }
            Ok(())
        }
        _ => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let all = resume(addr, &first, last).await?;
            tracking.shutdown(Duration::from_secs(5)).await?;
            verdict(&all, GENERATIONS.load(Ordering::SeqCst))
        }
    }
}
