//! Property tests over the whole layer: for any event stream cut into any frames, the client gets
//! exactly the bytes the service produced, and the persisted last event ID is the one the WHATWG
//! rules give for that stream.

use std::{
    convert::Infallible,
    future::ready,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use proptest::{
    collection::vec,
    prelude::*,
    sample::Index,
    test_runner::{Config, TestRunner},
};
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt, service_fn};
use tower_sse_tracking::{
    EventTrackingLayer, SessionId, StreamKey,
    store::{LastEventId, MemoryStore},
    worker::WorkerConfig,
};

// ---------------------------------------------------------------------------------------------
// The reference: the last event ID of a whole stream, per the WHATWG "interpreting an event
// stream" rules, written for obviousness.
// ---------------------------------------------------------------------------------------------

/// The last event ID string after the whole stream: the ID buffer as committed by the last
/// blank line ("" when never set or cleared).
fn reference_last_event_id(stream: &[u8]) -> String {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
    let mut buffer = String::new();
    let mut committed = String::new();
    let mut line = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\r' && c != '\n' {
            line.push(c);
            continue;
        }
        if c == '\r' && chars.peek() == Some(&'\n') {
            chars.next();
        }
        // A complete line.
        if line.is_empty() {
            committed = buffer.clone();
        } else if !line.starts_with(':') {
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            if field == "id" && !value.contains('\0') {
                buffer = value.to_owned();
            }
        }
        line.clear();
    }
    // Whatever follows the last line break is an unterminated line: discarded.
    committed
}

#[test]
fn reference_follows_the_spec_examples() {
    assert_eq!(reference_last_event_id(b"id: 1\n\nid: 2\n"), "1");
    assert_eq!(reference_last_event_id(b"id: 1\r\n\r\nid\n\n"), "");
    assert_eq!(reference_last_event_id(b"\xEF\xBB\xBFid:3\r\r"), "3");
    assert_eq!(reference_last_event_id(b"id: 4\0\n\n"), "");
    assert_eq!(reference_last_event_id(b"id: 5\r\n\r"), "5");
    assert_eq!(reference_last_event_id(b":id: 6\n\n"), "");
}

// ---------------------------------------------------------------------------------------------
// Generated streams
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Line {
    /// An `id` field. `None`: the next of a unique increasing sequence; `Some(n)`: exactly `n`.
    Id {
        value: Option<u8>,
        space: bool,
    },
    /// An `id` field that clears: `id`, `id:` or `id: `.
    Clear(u8),
    /// An `id` field with a NUL: ignored.
    IdWithNul,
    /// A `data` field (any bytes but CR and LF, even invalid UTF-8).
    Data(Vec<u8>),
    Event(String),
    Retry(String),
    Comment(Vec<u8>),
    Unknown(String),
}

#[derive(Clone, Copy, Debug)]
enum Eol {
    Lf,
    Cr,
    CrLf,
}

impl Eol {
    fn bytes(self) -> &'static [u8] {
        match self {
            Eol::Lf => b"\n",
            Eol::Cr => b"\r",
            Eol::CrLf => b"\r\n",
        }
    }
}

#[derive(Clone, Debug)]
struct Block {
    lines: Vec<(Line, Eol)>,
    end: Eol,
}

#[derive(Clone, Debug)]
struct EventStream {
    bom: bool,
    blocks: Vec<Block>,
    /// Lines of a final block that no blank line ends.
    tail: Vec<(Line, Eol)>,
    /// A final line without a line break.
    partial: Option<Line>,
}

impl EventStream {
    fn render(&self) -> Vec<u8> {
        let mut next_id = 0u32;
        let mut out = Vec::new();
        if self.bom {
            out.extend_from_slice(b"\xEF\xBB\xBF");
        }
        let mut line = |out: &mut Vec<u8>, line: &Line| match line {
            Line::Id { value, space } => {
                let value = value.map_or_else(
                    || {
                        next_id += 1;
                        next_id
                    },
                    u32::from,
                );
                let sep = if *space { ": " } else { ":" };
                out.extend_from_slice(format!("id{sep}{value}").as_bytes());
            }
            Line::Clear(how) => out.extend_from_slice(match how % 3 {
                0 => &b"id"[..],
                1 => b"id:",
                _ => b"id: ",
            }),
            Line::IdWithNul => out.extend_from_slice(b"id: 9\09"),
            Line::Data(value) => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(value);
            }
            Line::Event(value) => out.extend_from_slice(format!("event: {value}").as_bytes()),
            Line::Retry(value) => out.extend_from_slice(format!("retry: {value}").as_bytes()),
            Line::Comment(value) => {
                out.push(b':');
                out.extend_from_slice(value);
            }
            Line::Unknown(value) => out.extend_from_slice(value.as_bytes()),
        };
        for block in &self.blocks {
            for (l, eol) in &block.lines {
                line(&mut out, l);
                out.extend_from_slice(eol.bytes());
            }
            out.extend_from_slice(block.end.bytes());
        }
        for (l, eol) in &self.tail {
            line(&mut out, l);
            out.extend_from_slice(eol.bytes());
        }
        if let Some(l) = &self.partial {
            line(&mut out, l);
        }
        out
    }
}

fn eol() -> impl Strategy<Value = Eol> {
    prop_oneof![Just(Eol::Lf), Just(Eol::Cr), Just(Eol::CrLf)]
}

/// Field values: printable text, colons, spaces, non-ASCII and invalid UTF-8, never CR or LF.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            4 => prop::sample::select(&b"abc xyz:019{}\""[..]),
            1 => Just(0xC3), // a lone UTF-8 lead byte
            1 => Just(0xFF),
            1 => Just(0xA9),
            1 => Just(0),
        ],
        0..12,
    )
}

/// `repeat`: draw `id` values from a small set so that duplicates are common, instead of a
/// unique increasing sequence.
fn line(repeat: bool) -> impl Strategy<Value = Line> {
    let id = if repeat {
        (0u8..6).prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    prop_oneof![
        4 => (id, any::<bool>()).prop_map(|(value, space)| Line::Id { value, space }),
        1 => any::<u8>().prop_map(Line::Clear),
        1 => Just(Line::IdWithNul),
        4 => value_bytes().prop_map(Line::Data),
        1 => "[a-z]{0,6}".prop_map(Line::Event),
        1 => "[0-9a]{0,4}".prop_map(Line::Retry),
        2 => value_bytes().prop_map(Line::Comment),
        1 => prop::sample::select(vec!["ids: 1", "Id: 2", "id 3", " id: 4", "data", "x"])
            .prop_map(|s| Line::Unknown(s.to_owned())),
    ]
}

fn event_stream(repeat: bool) -> impl Strategy<Value = EventStream> {
    let block =
        (vec((line(repeat), eol()), 0..5), eol()).prop_map(|(lines, end)| Block { lines, end });
    (
        any::<bool>(),
        vec(block, 0..10),
        vec((line(repeat), eol()), 0..3),
        proptest::option::of(line(repeat)),
    )
        .prop_map(|(bom, blocks, tail, partial)| EventStream {
            bom,
            blocks,
            tail,
            partial,
        })
}

/// Cuts `bytes` at the given points (duplicates make empty frames).
fn split(bytes: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running a stream through the layer
// ---------------------------------------------------------------------------------------------

struct Harness {
    rt: Runtime,
    layer: EventTrackingLayer,
    store: MemoryStore,
    next_session: AtomicU64,
}

impl Harness {
    fn new(dedup_window: usize) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = MemoryStore::new();
        let layer = rt.block_on(async {
            EventTrackingLayer::builder()
                .store(store.clone())
                .session_header(http::HeaderName::from_static("mcp-session-id"))
                .worker(WorkerConfig::default().dedup_window(dedup_window))
                .build()
        });
        Self {
            rt,
            layer,
            store,
            next_session: AtomicU64::new(0),
        }
    }

    /// Streams `frames` as one response; returns the client's bytes, the tracked ID in memory
    /// and the persisted one after a flush.
    fn run(&self, frames: Vec<Bytes>) -> (Bytes, Option<String>, Option<LastEventId>) {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let session = SessionId::new(&format!("prop-{n}")).unwrap();
        let frames = Arc::new(frames);
        let svc = service_fn(move |_req: Request<()>| {
            let frames: Vec<Result<_, Infallible>> =
                frames.iter().cloned().map(|f| Ok(Frame::data(f))).collect();
            let res = Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(StreamBody::new(stream::iter(frames)))
                .unwrap();
            ready(Ok::<_, Infallible>(res))
        });
        // The request's path, `/`, is its stream.
        let key = StreamKey::new("/").unwrap();
        self.rt.block_on(async {
            let req = Request::builder()
                .header("mcp-session-id", session.as_str())
                .body(())
                .unwrap();
            let res = self.layer.layer(svc).oneshot(req).await.unwrap();
            assert!(res.body().is_tracked());
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let in_memory = self.layer.worker().last_event_id(&session, &key);
            self.layer.flush().await.unwrap();
            let persisted = self.store.get(&session, &key).map(|r| r.last_event_id);
            (body, in_memory, persisted)
        })
    }
}

fn check(harness: &Harness, stream: &EventStream, cuts: &[Index]) -> Result<(), TestCaseError> {
    let bytes = stream.render();
    let frames = split(&bytes, cuts);
    let (body, in_memory, persisted) = harness.run(frames);
    prop_assert_eq!(&body[..], &bytes[..], "the client gets the service's bytes");
    let expected = reference_last_event_id(&bytes);
    if expected.is_empty() {
        // Never set, or cleared: no ID to resume from.
        prop_assert!(
            matches!(in_memory.as_deref(), None | Some("")),
            "in memory: {:?}",
            in_memory
        );
        prop_assert!(
            matches!(persisted, None | Some(LastEventId::Cleared)),
            "persisted: {:?}",
            persisted
        );
    } else {
        prop_assert_eq!(in_memory.as_deref(), Some(expected.as_str()));
        prop_assert_eq!(persisted, Some(LastEventId::Set(expected.as_str().into())));
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn any_stream_any_split_is_forwarded_unchanged_and_persists_the_spec_last_id() {
    let harness = Harness::new(64 /* the default duplicate window */);
    let strategy = (event_stream(false), vec(any::<Index>(), 0..12));
    runner(1024)
        .run(&strategy, |(stream, cuts)| check(&harness, &stream, &cuts))
        .unwrap();
}

#[test]
fn with_the_dedup_window_off_repeated_ids_follow_the_spec_too() {
    let harness = Harness::new(0);
    let strategy = (event_stream(true), vec(any::<Index>(), 0..12));
    runner(512)
        .run(&strategy, |(stream, cuts)| check(&harness, &stream, &cuts))
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Duplicates with the default window
// ---------------------------------------------------------------------------------------------

fn ids(list: &[&str]) -> Vec<Bytes> {
    list.iter()
        .map(|id| Bytes::from(format!("id: {id}\ndata: x\n\n")))
        .collect()
}

#[test]
fn a_recent_duplicate_id_does_not_move_the_tracked_id() {
    let harness = Harness::new(64 /* the default duplicate window */);
    // The spec's last ID is "1"; the layer keeps "2": a replayed event is not progress.
    let (_, in_memory, persisted) = harness.run(ids(&["1", "2", "1"]));
    assert_eq!(in_memory.as_deref(), Some("2"));
    assert_eq!(persisted, Some(LastEventId::Set("2".into())));

    // An ID that fell out of the window of 64 counts again.
    let mut list: Vec<String> = (0..=64).map(|i| i.to_string()).collect();
    list.push("0".to_owned());
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    let (_, in_memory, _) = harness.run(ids(&list));
    assert_eq!(in_memory.as_deref(), Some("0"));

    // Within the window it does not.
    let (_, in_memory, _) = harness.run(ids(&["a", "b", "c", "b"]));
    assert_eq!(in_memory.as_deref(), Some("c"));

    // Clearing forgets the window.
    let mut frames = ids(&["a", "b"]);
    frames.push(Bytes::from_static(b"id\n\n"));
    frames.extend(ids(&["a"]));
    let (_, in_memory, _) = harness.run(frames);
    assert_eq!(in_memory.as_deref(), Some("a"));
}

#[test]
fn a_duplicate_id_is_tracked_with_the_window_off() {
    let harness = Harness::new(0);
    let (_, in_memory, persisted) = harness.run(ids(&["1", "2", "1"]));
    assert_eq!(in_memory.as_deref(), Some("1"));
    assert_eq!(persisted, Some(LastEventId::Set("1".into())));
}
