//! Property tests for `SseParser`: it must agree with a direct transcription of the WHATWG HTML
//! "interpreting an event stream" algorithm, however the stream is cut into chunks.
//!
//! The reference below favours obviousness over speed: it decodes the whole stream at once,
//! splits it into lines and walks them, exactly in the order the spec describes.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use tower_sse_tracking::parser::SseParser;

/// The parser's default caps on `id` and `event` values (documented on its setters).
const DEFAULT_MAX_ID_LEN: usize = 1024;
const DEFAULT_MAX_EVENT_TYPE_LEN: usize = 1024;

/// One dispatch (blank line), owned.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    is_event: bool,
    event_type: String,
    last_event_id: String,
    retry: Option<u64>,
    id_set: bool,
}

/// Everything observable after a whole stream.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    dispatches: Vec<Record>,
    last_event_id: String,
    retry: Option<u64>,
    oversized_ids: u64,
    oversized_event_types: u64,
}

/// The `id` and `event` caps the parser is built with.
#[derive(Clone, Copy, Debug)]
struct Caps {
    id: usize,
    event_type: usize,
}

const DEFAULT_CAPS: Caps = Caps {
    id: DEFAULT_MAX_ID_LEN,
    event_type: DEFAULT_MAX_EVENT_TYPE_LEN,
};

/// Small enough that generated values cross them often.
const SMALL_CAPS: Caps = Caps {
    id: 4,
    event_type: 3,
};

const BOM: &[u8] = b"\xEF\xBB\xBF";

// ---------------------------------------------------------------------------------------------
// The reference implementation.
// ---------------------------------------------------------------------------------------------

/// The lines of `s` that end with CRLF, LF or CR, without their line break. Whatever follows the
/// last line break is an unterminated line: the spec discards it at the end of the stream.
fn terminated_lines(s: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\r' if s.get(i + 1) == Some(&b'\n') => {
                lines.push(&s[start..i]);
                i += 2;
                start = i;
            }
            b'\r' | b'\n' => {
                lines.push(&s[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    lines
}

/// The raw bytes of a field value: after the first colon, minus one leading space. The caps are
/// measured on these bytes, before UTF-8 decoding.
fn raw_value(raw_line: &[u8]) -> &[u8] {
    match raw_line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &raw_line[colon + 1..];
            value.strip_prefix(b" ").unwrap_or(value)
        }
        None => b"",
    }
}

/// The spec's algorithm, over the whole stream at once.
fn reference(stream: &[u8], caps: Caps) -> Outcome {
    let raw = stream.strip_prefix(BOM).unwrap_or(stream);
    let text = String::from_utf8_lossy(raw);
    let lines = terminated_lines(text.as_bytes());
    // Decoding never merges an ASCII byte into a replacement character, so line breaks and
    // colons sit at the same places in the raw bytes: line `n` of one is line `n` of the other.
    let raw_lines = terminated_lines(raw);
    assert_eq!(lines.len(), raw_lines.len(), "decoding moved a line break");

    let mut out = Outcome {
        dispatches: Vec::new(),
        last_event_id: String::new(),
        retry: None,
        oversized_ids: 0,
        oversized_event_types: 0,
    };
    let mut data = String::new();
    let mut event_type = String::new();
    let mut id_buffer = String::new();
    let mut id_set = false;

    for (line, raw_line) in lines.into_iter().zip(raw_lines) {
        // Lines were split at ASCII bytes of a `str`, so each is still valid UTF-8.
        let line = std::str::from_utf8(line).expect("split at ASCII bytes");
        if line.is_empty() {
            // Dispatch: the last event ID string is committed even when no event is dispatched.
            out.last_event_id = id_buffer.clone();
            out.dispatches.push(Record {
                is_event: !data.is_empty(),
                event_type: if event_type.is_empty() {
                    "message".to_owned()
                } else {
                    event_type.clone()
                },
                last_event_id: id_buffer.clone(),
                retry: out.retry,
                id_set,
            });
            data.clear();
            event_type.clear();
            id_set = false;
            continue;
        }
        if line.starts_with(':') {
            continue; // A comment.
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        let raw_len = raw_value(raw_line).len();
        match name {
            "event" => {
                if raw_len > caps.event_type {
                    out.oversized_event_types += 1;
                } else {
                    event_type = value.to_owned();
                }
            }
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" => {
                if raw_len > caps.id {
                    out.oversized_ids += 1;
                } else if !value.contains('\0') {
                    id_buffer = value.to_owned();
                    id_set = true;
                }
            }
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                let ms = value.bytes().fold(0u64, |ms, digit| {
                    ms.saturating_mul(10)
                        .saturating_add(u64::from(digit - b'0'))
                });
                // Takes effect as soon as the line is processed, as in the spec, even in a block
                // that is never dispatched.
                out.retry = Some(ms);
            }
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Driving the parser.
// ---------------------------------------------------------------------------------------------

fn parser(caps: Caps) -> SseParser {
    SseParser::new()
        .max_id_len(caps.id)
        .max_event_type_len(caps.event_type)
}

fn run<'a>(caps: Caps, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = parser(caps);
    let mut dispatches = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, |d| {
            dispatches.push(Record {
                is_event: d.is_event(),
                event_type: d.event_type().into_owned(),
                last_event_id: d.last_event_id().to_owned(),
                retry: d.retry(),
                id_set: d.id_set(),
            });
        });
    }
    parser.finish();
    Outcome {
        dispatches,
        last_event_id: parser.last_event_id().to_owned(),
        retry: parser.retry(),
        oversized_ids: parser.oversized_ids(),
        oversized_event_types: parser.oversized_event_types(),
    }
}

/// `stream` cut at `cuts` (positions in `0..=len`, any order, repeats allowed). Repeated or
/// boundary positions yield empty chunks.
fn chunks_at<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts = cuts.to_vec();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        chunks.push(&stream[start..cut]);
        start = cut;
    }
    chunks.push(&stream[start..]);
    chunks
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

fn bytes(s: &'static [u8]) -> BoxedStrategy<Vec<u8>> {
    Just(s.to_vec()).boxed()
}

/// What a stream may start with: mostly nothing, often a whole or partial byte order mark.
fn prefix() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => bytes(b""),
        3 => bytes(BOM),
        1 => bytes(b"\xEF\xBB\xBF\xEF\xBB\xBF"),
        1 => bytes(b"\xEF"),
        1 => bytes(b"\xEF\xBB"),
        1 => bytes(b"\xEF\xBF"),
        1 => bytes(b"\xBB\xBF"),
    ]
}

fn field_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => bytes(b"id"),
        3 => bytes(b"data"),
        2 => bytes(b"event"),
        2 => bytes(b"retry"),
        // Near misses: prefixes, extensions, case, spaces, a BOM or invalid UTF-8 in the name.
        2 => prop::sample::select(vec![
            &b"i"[..], b"ids", b"Id", b"ID", b"dat", b"datas", b"DATA", b"even", b"events",
            b"retr", b"retryy", b"id ", b" id", b"foo", b"\xEF\xBB\xBFid", b"id\xFF", b"\0",
            b"\xC3\xA9",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => vec(any::<u8>().prop_filter("no line break or colon", |b| !b"\r\n:".contains(b)), 1..8),
    ]
}

/// A piece of a field value: digits, spaces, NULs, colons, non-ASCII and invalid UTF-8.
fn value_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(b'0'..=b'9', 1..4),
        2 => bytes(b" "),
        2 => bytes(b"a"),
        1 => bytes(b"xyz"),
        1 => bytes(b"\0"),
        1 => bytes(b":"),
        1 => bytes(b"-"),
        1 => bytes("é".as_bytes()),
        1 => bytes("€".as_bytes()),
        1 => bytes(b"\xE2\x82"),
        1 => bytes(b"\xFF"),
        1 => bytes(b"\xC3"),
        1 => bytes(BOM),
        1 => vec(any::<u8>().prop_filter("no line break", |b| !b"\r\n".contains(b)), 1..6),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(value_piece(), 0..5).prop_map(|pieces| pieces.concat()),
        // Plain numbers for `id` and `retry`, some long enough to overflow a `u64`.
        1 => vec(b'0'..=b'9', 1..6),
        1 => vec(b'0'..=b'9', 18..26),
    ]
}

fn line_break() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![4 => bytes(b"\n"), 2 => bytes(b"\r\n"), 2 => bytes(b"\r")]
}

/// One line without its line break.
fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // `name: value`, `name:value` (and `name:  value`, via a value starting with a space).
        8 => (field_name(), any::<bool>(), value()).prop_map(|(name, space, value)| {
            let mut line = name;
            line.push(b':');
            if space {
                line.push(b' ');
            }
            line.extend(value);
            line
        }),
        // A line without a colon: the whole line is the name.
        2 => field_name(),
        // A comment.
        1 => value().prop_map(|value| [&b":"[..], &value].concat()),
        // A blank line: dispatch.
        3 => bytes(b""),
    ]
}

/// A stream from the grammar: optional BOM, lines with mixed line breaks, and sometimes an
/// unterminated final line.
fn grammar_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prefix(),
        vec((line(), line_break()), 0..24),
        prop::option::weighted(0.3, line()),
    )
        .prop_map(|(prefix, lines, unterminated)| {
            let mut stream = prefix;
            for (line, line_break) in lines {
                stream.extend(line);
                stream.extend(line_break);
            }
            stream.extend(unterminated.unwrap_or_default());
            stream
        })
}

/// Random bytes over the alphabet the parser cares about, so that structure still appears.
fn alphabet_stream() -> impl Strategy<Value = Vec<u8>> {
    let alphabet = b"\r\n\r\n\n: :iiddddaaattteevvnnrry0123456789\0\xEF\xBB\xBF\xFF\xC3\xA9";
    (prefix(), vec(prop::sample::select(&alphabet[..]), 0..160))
        .prop_map(|(prefix, body)| [prefix, body].concat())
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => grammar_stream(),
        2 => alphabet_stream(),
        1 => vec(any::<u8>(), 0..200),
    ]
}

/// Cut points for a stream of `len` bytes: a few random ones (repeats make empty chunks), or a
/// fixed chunk size from 1 to 7 bytes with empty chunks sprinkled in.
fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        vec(any::<Index>(), 0..12)
            .prop_map(move |cuts| cuts.iter().map(|i| i.index(len + 1)).collect()),
        (1..=7usize, vec(any::<Index>(), 0..4)).prop_map(move |(size, empties)| {
            (0..=len)
                .step_by(size)
                .chain(empties.iter().map(|i| i.index(len + 1)))
                .collect()
        }),
    ]
}

fn stream_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    stream().prop_flat_map(|stream| {
        let len = stream.len();
        (Just(stream), cuts(len))
    })
}

// ---------------------------------------------------------------------------------------------
// Properties.
// ---------------------------------------------------------------------------------------------

/// Enough cases to hit every rule many times while the whole file takes a few seconds in debug.
/// Set `PROPTEST_CASES` for a deeper run (e.g. 200000 with `--release`).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(2048);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn whole_stream_matches_reference(stream in stream()) {
        prop_assert_eq!(run(DEFAULT_CAPS, [&stream[..]]), reference(&stream, DEFAULT_CAPS));
    }

    #[test]
    fn whole_stream_matches_reference_with_small_caps(stream in stream()) {
        prop_assert_eq!(run(SMALL_CAPS, [&stream[..]]), reference(&stream, SMALL_CAPS));
    }

    #[test]
    fn any_chunking_matches_whole_stream((stream, cuts) in stream_and_cuts()) {
        let whole = run(DEFAULT_CAPS, [&stream[..]]);
        prop_assert_eq!(&whole, &reference(&stream, DEFAULT_CAPS));
        prop_assert_eq!(run(DEFAULT_CAPS, chunks_at(&stream, &cuts)), whole);
    }

    #[test]
    fn any_chunking_matches_whole_stream_with_small_caps((stream, cuts) in stream_and_cuts()) {
        let whole = run(SMALL_CAPS, [&stream[..]]);
        prop_assert_eq!(&whole, &reference(&stream, SMALL_CAPS));
        prop_assert_eq!(run(SMALL_CAPS, chunks_at(&stream, &cuts)), whole);
    }

    #[test]
    fn one_byte_at_a_time_matches_reference(stream in stream()) {
        for caps in [DEFAULT_CAPS, SMALL_CAPS] {
            let bytes = stream.chunks(1);
            prop_assert_eq!(run(caps, bytes), reference(&stream, caps));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reference itself, on cases worked out by hand from the spec.
// ---------------------------------------------------------------------------------------------

fn ids(outcome: &Outcome) -> Vec<&str> {
    outcome
        .dispatches
        .iter()
        .map(|d| d.last_event_id.as_str())
        .collect()
}

#[test]
fn reference_follows_the_spec_on_hand_worked_cases() {
    let o = reference(
        b"\xEF\xBB\xBFid: 1\ndata\n\nid\r\n\r\nid: a\0\revent: x\rdata:\r\r",
        DEFAULT_CAPS,
    );
    assert_eq!(ids(&o), ["1", "", ""]);
    assert_eq!(
        o.dispatches.iter().map(|d| d.is_event).collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(o.dispatches[2].event_type, "x");
    assert!(!o.dispatches[2].id_set, "an id with NUL is ignored");

    // A partial BOM is not stripped: it decodes to U+FFFD and spoils the field name.
    assert_eq!(ids(&reference(b"\xEF\xBBid: 1\n\n", DEFAULT_CAPS)), [""]);

    // `retry` takes effect when its line is processed; the unterminated tail is dropped.
    let o = reference(b"id: 5\n\nretry: 10\nid: 6\n\nretry: 99", DEFAULT_CAPS);
    assert_eq!(ids(&o), ["5", "6"]);
    assert_eq!(o.retry, Some(10));
    let o = reference(b"retry: 7\nid: 8\ndata: x\n", DEFAULT_CAPS);
    assert_eq!((o.dispatches.len(), o.retry), (0, Some(7)));
    assert_eq!(o.last_event_id, "");

    // Caps count raw bytes after the one stripped space.
    let o = reference(
        b"id:  123\n\nid: \xFF\xFF\xFF\xFF\n\nid: 12345\n\n",
        SMALL_CAPS,
    );
    assert_eq!(
        ids(&o),
        [
            " 123",
            "\u{FFFD}".repeat(4).as_str(),
            "\u{FFFD}".repeat(4).as_str()
        ]
    );
    assert_eq!(o.oversized_ids, 1);
}

/// Streams that broke an earlier version of the parser, kept as plain tests.
#[test]
fn partial_bom_and_its_mismatch_in_one_chunk_are_kept_as_stream_bytes() {
    for stream in [&b"\xEF\xBBid: 1\n\n"[..], b"\xEFid: 1\n\n", b"\xEF\xBB\n\n"] {
        assert_eq!(
            run(DEFAULT_CAPS, [stream]),
            reference(stream, DEFAULT_CAPS),
            "{stream:?}"
        );
        assert_eq!(
            run(DEFAULT_CAPS, stream.chunks(1)),
            reference(stream, DEFAULT_CAPS),
            "{stream:?}"
        );
    }
}
