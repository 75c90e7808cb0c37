//! The property the `parser` fuzz target checks, shared by path with `tests/fuzz_corpus.rs` so
//! that the corpus is replayed on stable in CI.
//!
//! An input is one control byte, then cut points, then the stream:
//!
//! - bits 0-2 of the control byte: the number `k` of cut points (0 to 7);
//! - bit 3: use small caps (`max_id_len(4)`, `max_event_type_len(3)`) instead of the defaults;
//! - then `k` little-endian `u16` cut points, each taken modulo `stream.len() + 1` (repeats make
//!   empty chunks);
//! - the rest of the input is the stream.
//!
//! So a seed written by hand as `0id: 1\n\n` is the stream `id: 1\n\n` fed whole (`'0'` is
//! `0x30`), and `8...` is the same with small caps.

use tower_sse_tracking::parser::SseParser;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatch, owned.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    is_event: bool,
    id_set: bool,
    event_type: String,
    last_event_id: String,
    retry: Option<u64>,
}

/// Everything observable after a whole stream.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    dispatches: Vec<Record>,
    last_event_id: String,
    retry: Option<u64>,
    oversized_ids: u64,
    oversized_event_types: u64,
}

/// Checks `input` (see the module docs for its layout); panics when a property fails.
pub fn check(input: &[u8]) {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let small_caps = control & 0b1000 != 0;
    let (cut_bytes, stream) = rest.split_at(rest.len().min(usize::from(control & 0b111) * 2));
    let cuts = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1));
    let chunks = chunks_at(stream, cuts);

    let whole = run(small_caps, [stream], false);
    check_consistent(&whole);
    assert_eq!(
        run(small_caps, chunks.iter().copied(), false),
        whole,
        "cut into {:?}",
        chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
    );
    assert_eq!(
        run(small_caps, stream.chunks(1), false),
        whole,
        "fed one byte at a time"
    );
    assert_eq!(
        run(small_caps, stream.chunks(1), true),
        whole,
        "a comment inserted wherever at_line_boundary() said it was safe changed the outcome"
    );
    if !stream.starts_with(BOM) {
        // One leading BOM is stripped, so adding one changes nothing.
        let with_bom = [BOM, stream].concat();
        assert_eq!(
            run(small_caps, [&with_bom[..]], false),
            whole,
            "a leading BOM was not stripped"
        );
    }
}

/// `stream` cut at `cuts`, in any order.
fn chunks_at(stream: &[u8], cuts: impl Iterator<Item = usize>) -> Vec<&[u8]> {
    let mut cuts: Vec<usize> = cuts.collect();
    cuts.sort_unstable();
    let mut start = 0;
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    for cut in cuts {
        chunks.push(&stream[start..cut]);
        start = cut;
    }
    chunks.push(&stream[start..]);
    chunks
}

/// Feeds `chunks` to a new parser. With `heartbeats`, a comment line is fed between chunks
/// whenever the parser says it is at a line boundary, as a keep-alive would be.
fn run<'a>(
    small_caps: bool,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    heartbeats: bool,
) -> Outcome {
    let mut parser = SseParser::new();
    if small_caps {
        parser = parser.max_id_len(4).max_event_type_len(3);
    }
    let mut dispatches = Vec::new();
    let mut on_dispatch = |d: &tower_sse_tracking::parser::Dispatch<'_>| {
        dispatches.push(Record {
            is_event: d.is_event(),
            id_set: d.id_set(),
            event_type: d.event_type().into_owned(),
            last_event_id: d.last_event_id().to_owned(),
            retry: d.retry(),
        });
    };
    for chunk in chunks {
        if heartbeats && parser.at_line_boundary() {
            parser.feed(b": keep-alive\n", |_| panic!("a comment line dispatched"));
        }
        parser.feed(chunk, &mut on_dispatch);
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

/// Properties of a single run that need no reference.
fn check_consistent(outcome: &Outcome) {
    let mut previous_id = "";
    for d in &outcome.dispatches {
        assert!(!d.event_type.is_empty(), "empty event type in {d:?}");
        if !d.id_set {
            assert_eq!(
                d.last_event_id, previous_id,
                "ID changed without an id field"
            );
        }
        assert!(!d.last_event_id.contains('\0'), "NUL in an ID: {d:?}");
        previous_id = &d.last_event_id;
    }
    assert_eq!(
        outcome.last_event_id, previous_id,
        "final ID is not the last dispatched"
    );
}
