//! An incremental, spec-exact parser for `text/event-stream` bodies.
//!
//! [`SseParser`] follows the WHATWG HTML rules for *interpreting an event stream*, but only looks
//! at what tracking needs: the `id`, `event` and `retry` fields, the presence of `data`, and the
//! blank lines that dispatch events. The bytes themselves are never copied or changed: `data`
//! values are skipped with `memchr`, and only `id` and `event` values are buffered, each up to a
//! configurable cap. A line of any length, even one that never ends, costs bounded memory.
//!
//! Feed chunks of any size, split anywhere (inside a field name, between a CR and its LF, inside
//! a UTF-8 sequence, inside the byte order mark): the dispatches are the same as for the whole
//! stream fed at once.
//!
//! ```
//! use tower_sse_tracking::parser::SseParser;
//!
//! let mut parser = SseParser::new();
//! let mut seen = Vec::new();
//! for chunk in [&b"id: 1\ndata: hel"[..], b"lo\n\nid: 2\r", b"\nevent: ping\n\n"] {
//!     parser.feed(chunk, |d| {
//!         seen.push((d.is_event(), d.event_type().to_owned(), d.last_event_id().to_owned()));
//!     });
//! }
//! parser.finish();
//! assert_eq!(
//!     seen,
//!     [
//!         (true, "message".to_owned(), "1".to_owned()),
//!         // A block without `data` dispatches no event, but its `id` still takes effect.
//!         (false, "ping".to_owned(), "2".to_owned()),
//!     ]
//! );
//! assert_eq!(parser.last_event_id(), "2");
//! ```

use std::fmt;

/// The byte order mark, stripped once when it starts the stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Default cap on the length of an `id` value, in bytes.
pub const DEFAULT_MAX_ID_LEN: usize = 1024;

/// Default cap on the length of an `event` value, in bytes.
pub const DEFAULT_MAX_EVENT_TYPE_LEN: usize = 1024;

/// Longest field name we need to recognise (`event`, `retry`).
const MAX_NAME_LEN: usize = 5;

/// What the parser is in the middle of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// Reading a field name (up to a colon or the end of the line).
    Name,
    /// Right after the colon: one leading space is stripped.
    AfterColon(Field),
    /// Reading a field value (up to the end of the line).
    Value(Field),
}

/// The fields the parser acts on; everything else is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Id,
    Event,
    Data,
    Retry,
    /// Unknown fields and comments.
    Ignored,
}

/// An incremental `text/event-stream` parser that reports every dispatch (blank line).
///
/// See the [module documentation](self) for an example. The parser allocates only while its
/// `id` and `event` buffers grow to their working size, and when an `id` or `event` value is not
/// valid UTF-8 (it is then decoded with U+FFFD replacement characters, never rejected).
#[derive(Clone)]
pub struct SseParser {
    state: State,
    /// Bytes of the byte order mark matched so far at the start of the stream, or `None` once the
    /// start of the stream has been decided.
    bom_matched: Option<u8>,
    /// The previous chunk ended with a CR: an LF starting the next chunk belongs to it.
    after_cr: bool,

    name: [u8; MAX_NAME_LEN],
    /// Length of the field name so far; more than `MAX_NAME_LEN` means "too long to matter".
    name_len: usize,

    /// The current `id` or `event` value, up to its cap.
    value: Vec<u8>,
    /// The current value went over its cap.
    value_overflow: bool,
    /// The current `retry` value so far (saturating), and whether it is still all digits.
    retry_acc: u64,
    retry_digits: bool,
    retry_empty: bool,

    /// The last event ID buffer: persists across blocks.
    id_buffer: String,
    /// An `id` field took effect in the current block.
    id_in_block: bool,
    /// The event type buffer of the current block.
    event_type: String,
    /// The current block had a `data` field.
    has_data: bool,

    /// The last event ID string, committed at each blank line.
    last_event_id: String,
    /// The reconnection time in milliseconds, once a valid `retry` field was seen.
    retry: Option<u64>,

    max_id_len: usize,
    max_event_type_len: usize,
    oversized_ids: u64,
    oversized_event_types: u64,
}

impl Default for SseParser {
    fn default() -> Self {
        Self {
            state: State::LineStart,
            bom_matched: Some(0),
            after_cr: false,
            name: [0; MAX_NAME_LEN],
            name_len: 0,
            value: Vec::new(),
            value_overflow: false,
            retry_acc: 0,
            retry_digits: true,
            retry_empty: true,
            id_buffer: String::new(),
            id_in_block: false,
            event_type: String::new(),
            has_data: false,
            last_event_id: String::new(),
            retry: None,
            max_id_len: DEFAULT_MAX_ID_LEN,
            max_event_type_len: DEFAULT_MAX_EVENT_TYPE_LEN,
            oversized_ids: 0,
            oversized_event_types: 0,
        }
    }
}

impl fmt::Debug for SseParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseParser")
            .field("last_event_id", &self.last_event_id)
            .field("retry", &self.retry)
            .field("at_line_boundary", &self.at_line_boundary())
            .field("oversized_ids", &self.oversized_ids)
            .field("oversized_event_types", &self.oversized_event_types)
            .finish_non_exhaustive()
    }
}

/// One dispatch: a blank line that ended a block of fields.
///
/// Borrowed from the parser for the duration of the callback; copy out what you keep.
#[derive(Clone, Copy, Debug)]
pub struct Dispatch<'a> {
    is_event: bool,
    id_set: bool,
    event_type: &'a str,
    last_event_id: &'a str,
    retry: Option<u64>,
}

impl<'a> Dispatch<'a> {
    /// Whether an event is dispatched: the block had at least one `data` field.
    ///
    /// A block without `data` dispatches nothing to the page, but its `id` still takes effect.
    pub fn is_event(&self) -> bool {
        self.is_event
    }

    /// Whether an `id` field took effect in this block (even one that repeats the previous ID or
    /// clears it). Blocks without one inherit the previous last event ID.
    pub fn id_set(&self) -> bool {
        self.id_set
    }

    /// The event type: the block's last valid `event` value, or `"message"` when there was none
    /// or it was empty.
    pub fn event_type(&self) -> &'a str {
        if self.event_type.is_empty() {
            "message"
        } else {
            self.event_type
        }
    }

    /// The last event ID in effect after this dispatch; empty when none was set or it was cleared
    /// (a client then sends no `Last-Event-ID`).
    pub fn last_event_id(&self) -> &'a str {
        self.last_event_id
    }

    /// The reconnection time in milliseconds in effect, if the stream set one with `retry`.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }
}

impl SseParser {
    /// A parser for a new stream, with the default caps of 1 KiB for `id` and `event` values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps the length of an `id` value in bytes. A longer `id` is counted
    /// ([`oversized_ids`](Self::oversized_ids)) and ignored, as if it contained a NUL.
    ///
    /// Defaults to [`DEFAULT_MAX_ID_LEN`] (1 KiB).
    pub fn max_id_len(mut self, max: usize) -> Self {
        self.max_id_len = max;
        self
    }

    /// Caps the length of an `event` value in bytes. A longer `event` field is counted
    /// ([`oversized_event_types`](Self::oversized_event_types)) and ignored.
    ///
    /// Defaults to [`DEFAULT_MAX_EVENT_TYPE_LEN`] (1 KiB).
    pub fn max_event_type_len(mut self, max: usize) -> Self {
        self.max_event_type_len = max;
        self
    }

    /// The last event ID committed by the latest dispatch (empty if none).
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time in milliseconds set by the stream, if any.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// How many `id` values were ignored because they were longer than the cap.
    pub fn oversized_ids(&self) -> u64 {
        self.oversized_ids
    }

    /// How many `event` values were ignored because they were longer than the cap.
    pub fn oversized_event_types(&self) -> u64 {
        self.oversized_event_types
    }

    /// Whether bytes inserted now would start a line of their own: the parser is at the start of
    /// a line, not right after a CR (whose LF may still come) and past the start of the stream
    /// (where a byte order mark may still come).
    ///
    /// A comment line (`:` ... LF) inserted at such a point leaves the meaning of the stream as it
    /// was; this is what heartbeats rely on.
    pub fn at_line_boundary(&self) -> bool {
        self.state == State::LineStart && !self.after_cr && self.bom_matched.is_none()
    }

    /// Whether no byte of the stream has been seen yet (the start of the stream).
    pub fn at_stream_start(&self) -> bool {
        self.bom_matched == Some(0)
    }

    /// Feeds the next chunk of the stream, calling `on_dispatch` for every blank line in it.
    ///
    /// Chunks may be split anywhere and may be empty.
    pub fn feed<F>(&mut self, chunk: &[u8], mut on_dispatch: F)
    where
        F: FnMut(&Dispatch<'_>),
    {
        let mut chunk = chunk;
        if let Some(matched) = self.bom_matched {
            let mut matched = usize::from(matched);
            let mut taken = 0;
            while matched < BOM.len() && taken < chunk.len() && chunk[taken] == BOM[matched] {
                matched += 1;
                taken += 1;
            }
            if matched == BOM.len() {
                // A whole byte order mark: stripped.
                self.bom_matched = None;
                chunk = &chunk[taken..];
            } else if taken == chunk.len() {
                // The chunk ended inside what may still be a byte order mark.
                self.bom_matched = Some(matched as u8);
                return;
            } else {
                // Not a byte order mark: the matched bytes (held back from earlier chunks or
                // taken from this one) are ordinary stream bytes.
                self.bom_matched = None;
                self.parse(&BOM[..matched], &mut on_dispatch);
                chunk = &chunk[taken..];
            }
        }
        self.parse(chunk, &mut on_dispatch);
    }

    /// Ends the stream: an unterminated final block is discarded, as the spec requires.
    ///
    /// The last event ID and reconnection time stay readable; feeding again starts a new stream
    /// (with its own byte order mark and last event ID buffer).
    pub fn finish(&mut self) {
        let last_event_id = std::mem::take(&mut self.last_event_id);
        let retry = self.retry;
        let (oversized_ids, oversized_event_types) =
            (self.oversized_ids, self.oversized_event_types);
        let (max_id_len, max_event_type_len) = (self.max_id_len, self.max_event_type_len);
        let value = std::mem::take(&mut self.value);
        *self = Self {
            last_event_id,
            retry,
            oversized_ids,
            oversized_event_types,
            max_id_len,
            max_event_type_len,
            value,
            ..Self::default()
        };
        self.value.clear();
    }

    fn parse<F>(&mut self, chunk: &[u8], on_dispatch: &mut F)
    where
        F: FnMut(&Dispatch<'_>),
    {
        let mut i = 0;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                i = 1;
            }
        }
        while i < chunk.len() {
            match self.state {
                State::LineStart => match chunk[i] {
                    b'\n' | b'\r' => {
                        i = self.end_of_line(chunk, i);
                        self.dispatch(on_dispatch);
                    }
                    b':' => {
                        // A comment.
                        self.state = State::Value(Field::Ignored);
                        i += 1;
                    }
                    _ => {
                        self.name_len = 0;
                        self.state = State::Name;
                    }
                },
                State::Name => {
                    let rest = &chunk[i..];
                    match memchr::memchr3(b':', b'\r', b'\n', rest) {
                        None => {
                            self.push_name(rest);
                            i = chunk.len();
                        }
                        Some(pos) => {
                            self.push_name(&rest[..pos]);
                            let field = self.field();
                            self.start_value(field);
                            if rest[pos] == b':' {
                                self.state = State::AfterColon(field);
                                i += pos + 1;
                            } else {
                                // A line without a colon: the whole line is the name, the value
                                // is empty.
                                self.end_field(field);
                                i = self.end_of_line(chunk, i + pos);
                            }
                        }
                    }
                }
                State::AfterColon(field) => {
                    if chunk[i] == b' ' {
                        i += 1;
                    }
                    self.state = State::Value(field);
                }
                State::Value(field) => {
                    let rest = &chunk[i..];
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        None => {
                            self.push_value(field, rest);
                            i = chunk.len();
                        }
                        Some(pos) => {
                            self.push_value(field, &rest[..pos]);
                            self.end_field(field);
                            i = self.end_of_line(chunk, i + pos);
                        }
                    }
                }
            }
        }
    }

    /// Consumes the line break at `chunk[at]` (CR, LF or CRLF, with the LF possibly in the next
    /// chunk) and returns the index after it.
    fn end_of_line(&mut self, chunk: &[u8], at: usize) -> usize {
        self.state = State::LineStart;
        if chunk[at] == b'\r' {
            match chunk.get(at + 1) {
                Some(b'\n') => return at + 2,
                Some(_) => {}
                None => self.after_cr = true,
            }
        }
        at + 1
    }

    fn push_name(&mut self, bytes: &[u8]) {
        let end = self.name_len + bytes.len();
        if end <= MAX_NAME_LEN {
            self.name[self.name_len..end].copy_from_slice(bytes);
        }
        self.name_len = end.min(MAX_NAME_LEN + 1);
    }

    fn field(&self) -> Field {
        if self.name_len > MAX_NAME_LEN {
            return Field::Ignored;
        }
        match &self.name[..self.name_len] {
            b"id" => Field::Id,
            b"event" => Field::Event,
            b"data" => Field::Data,
            b"retry" => Field::Retry,
            _ => Field::Ignored,
        }
    }

    fn start_value(&mut self, field: Field) {
        match field {
            Field::Id | Field::Event => {
                self.value.clear();
                self.value_overflow = false;
            }
            Field::Retry => {
                self.retry_acc = 0;
                self.retry_digits = true;
                self.retry_empty = true;
            }
            Field::Data | Field::Ignored => {}
        }
    }

    fn push_value(&mut self, field: Field, bytes: &[u8]) {
        match field {
            Field::Id | Field::Event => {
                if self.value_overflow || bytes.is_empty() {
                    return;
                }
                let cap = if field == Field::Id {
                    self.max_id_len
                } else {
                    self.max_event_type_len
                };
                if self.value.len() + bytes.len() > cap {
                    // Over the cap: stop buffering; the field will be ignored.
                    self.value_overflow = true;
                    self.value.clear();
                } else {
                    self.value.extend_from_slice(bytes);
                }
            }
            Field::Retry => {
                if !self.retry_digits || bytes.is_empty() {
                    return;
                }
                self.retry_empty = false;
                for &b in bytes {
                    if !b.is_ascii_digit() {
                        self.retry_digits = false;
                        return;
                    }
                    self.retry_acc = self
                        .retry_acc
                        .saturating_mul(10)
                        .saturating_add(u64::from(b - b'0'));
                }
            }
            Field::Data | Field::Ignored => {}
        }
    }

    fn end_field(&mut self, field: Field) {
        match field {
            Field::Id => {
                if self.value_overflow {
                    self.oversized_ids += 1;
                } else if memchr::memchr(0, &self.value).is_none() {
                    decode_into(&mut self.id_buffer, &self.value);
                    self.id_in_block = true;
                }
            }
            Field::Event => {
                if self.value_overflow {
                    self.oversized_event_types += 1;
                } else {
                    decode_into(&mut self.event_type, &self.value);
                }
            }
            Field::Data => self.has_data = true,
            Field::Retry => {
                if self.retry_digits && !self.retry_empty {
                    self.retry = Some(self.retry_acc);
                }
            }
            Field::Ignored => {}
        }
    }

    fn dispatch<F>(&mut self, on_dispatch: &mut F)
    where
        F: FnMut(&Dispatch<'_>),
    {
        // The spec commits the buffer at every blank line. Copies into the existing allocation
        // once it is large enough.
        self.last_event_id.clone_from(&self.id_buffer);
        on_dispatch(&Dispatch {
            is_event: self.has_data,
            id_set: self.id_in_block,
            event_type: &self.event_type,
            last_event_id: &self.last_event_id,
            retry: self.retry,
        });
        self.id_in_block = false;
        self.has_data = false;
        self.event_type.clear();
    }
}

/// Replaces `out` with `bytes` decoded as UTF-8, invalid sequences as U+FFFD.
fn decode_into(out: &mut String, bytes: &[u8]) {
    out.clear();
    match std::str::from_utf8(bytes) {
        Ok(s) => out.push_str(s),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one dispatch reported, owned.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Seen {
        event: bool,
        ty: String,
        id: String,
        id_set: bool,
        retry: Option<u64>,
    }

    fn feed_all(parser: &mut SseParser, chunks: &[&[u8]]) -> Vec<Seen> {
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |d| {
                out.push(Seen {
                    event: d.is_event(),
                    ty: d.event_type().to_owned(),
                    id: d.last_event_id().to_owned(),
                    id_set: d.id_set(),
                    retry: d.retry(),
                })
            });
        }
        out
    }

    fn parse(chunks: &[&[u8]]) -> Vec<Seen> {
        feed_all(&mut SseParser::new(), chunks)
    }

    fn ids(seen: &[Seen]) -> Vec<&str> {
        seen.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn simple_event_with_id_and_type() {
        let seen = parse(&[b"id: 7\nevent: tick\ndata: x\n\n"]);
        assert_eq!(
            seen,
            [Seen {
                event: true,
                ty: "tick".into(),
                id: "7".into(),
                id_set: true,
                retry: None
            }]
        );
    }

    #[test]
    fn event_type_defaults_to_message_and_resets_after_dispatch() {
        let seen = parse(&[b"event: a\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n"]);
        let types: Vec<_> = seen.iter().map(|s| s.ty.as_str()).collect();
        assert_eq!(types, ["a", "message", "message"]);
    }

    #[test]
    fn bom_at_stream_start_is_stripped() {
        let seen = parse(&[b"\xEF\xBB\xBFid: 1\n\n"]);
        assert_eq!(ids(&seen), ["1"]);
    }

    #[test]
    fn bom_split_across_chunks_is_stripped() {
        let seen = parse(&[b"\xEF", b"", b"\xBB", b"\xBFid: 1\n\n"]);
        assert_eq!(ids(&seen), ["1"]);
    }

    #[test]
    fn bom_after_the_start_is_part_of_the_line() {
        // Only the first BOM is stripped; a second one makes the field name "\u{FEFF}id".
        let seen = parse(&[b"\xEF\xBB\xBF\xEF\xBB\xBFid: 1\n\n"]);
        assert_eq!(ids(&seen), [""]);
        assert!(!seen[0].id_set);
    }

    #[test]
    fn partial_bom_is_replayed_as_stream_bytes() {
        // "\xEF\xBB" then ":" : not a BOM; the bytes start a field whose name is not "id", and
        // the next line is still parsed.
        let seen = parse(&[b"\xEF\xBB", b":x\nid: 2\n\n"]);
        assert_eq!(ids(&seen), ["2"]);
        // A partial BOM followed by a line break: the held bytes form a (ignored) field line.
        let seen = parse(&[b"\xEF", b"\n\nid: 3\n\n"]);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(ids(&seen), ["", "3"]);
    }

    #[test]
    fn lf_cr_and_crlf_all_end_lines() {
        for stream in [
            &b"id: 1\ndata: a\n\n"[..],
            b"id: 1\rdata: a\r\r",
            b"id: 1\r\ndata: a\r\n\r\n",
        ] {
            let seen = parse(&[stream]);
            assert_eq!(ids(&seen), ["1"], "{stream:?}");
            assert!(seen[0].event);
        }
    }

    #[test]
    fn cr_at_chunk_end_then_lf_is_one_line_break() {
        let seen = parse(&[b"id: 1\r", b"\ndata: a\r", b"\n\r", b"\n"]);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(ids(&seen), ["1"]);
    }

    #[test]
    fn cr_then_empty_chunks_then_lf_is_one_line_break() {
        let seen = parse(&[b"data: a\r", b"", b"", b"\n", b"", b"id: 9\n\n"]);
        // "data: a" CRLF, then "id: 9" LF, then the blank line: one dispatch.
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(ids(&seen), ["9"]);
    }

    #[test]
    fn cr_cr_is_two_line_breaks() {
        let seen = parse(&[b"data: a\r", b"\r"]);
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn one_leading_space_after_colon_is_stripped() {
        let seen = parse(&[b"id:  two\n\nid:three\n\n"]);
        assert_eq!(ids(&seen), [" two", "three"]);
    }

    #[test]
    fn leading_space_split_from_colon_is_stripped() {
        let seen = parse(&[b"id:", b" 5\n\n"]);
        assert_eq!(ids(&seen), ["5"]);
    }

    #[test]
    fn id_without_colon_clears_the_last_event_id() {
        let seen = parse(&[b"id: 1\n\nid\n\n"]);
        assert_eq!(ids(&seen), ["1", ""]);
        assert!(seen[1].id_set);
    }

    #[test]
    fn empty_id_clears_the_last_event_id() {
        let seen = parse(&[b"id: 1\ndata\n\nid:\ndata\n\n"]);
        assert_eq!(ids(&seen), ["1", ""]);
    }

    #[test]
    fn id_containing_nul_is_ignored() {
        let seen = parse(&[b"id: 1\n\nid: a\0b\n\n"]);
        assert_eq!(ids(&seen), ["1", "1"]);
        assert!(!seen[1].id_set);
    }

    #[test]
    fn id_persists_across_blocks_without_id() {
        let seen = parse(&[b"id: 1\ndata: a\n\ndata: b\n\n"]);
        assert_eq!(ids(&seen), ["1", "1"]);
        assert!(seen[0].id_set && !seen[1].id_set);
    }

    #[test]
    fn last_id_commits_at_blank_line_without_data() {
        let mut p = SseParser::new();
        let seen = feed_all(&mut p, &[b"id: 42\n\n"]);
        assert_eq!(seen.len(), 1);
        assert!(!seen[0].event);
        assert_eq!(p.last_event_id(), "42");
    }

    #[test]
    fn last_id_is_not_committed_before_the_blank_line() {
        let mut p = SseParser::new();
        let seen = feed_all(&mut p, &[b"id: 1\n\nid: 2\ndata: x\n"]);
        assert_eq!(seen.len(), 1);
        assert_eq!(p.last_event_id(), "1");
    }

    #[test]
    fn last_id_in_block_wins() {
        let seen = parse(&[b"id: 1\nid: 2\ndata\n\n"]);
        assert_eq!(ids(&seen), ["2"]);
    }

    #[test]
    fn unterminated_final_block_is_discarded() {
        let mut p = SseParser::new();
        let seen = feed_all(&mut p, &[b"id: 1\ndata: a\n\nid: 2\ndata: b\n"]);
        p.finish();
        assert_eq!(seen.len(), 1);
        assert_eq!(p.last_event_id(), "1");
    }

    #[test]
    fn finish_starts_a_new_stream_with_its_own_bom() {
        let mut p = SseParser::new();
        feed_all(&mut p, &[b"\xEF\xBB\xBFid: 1\n\n"]);
        p.finish();
        let seen = feed_all(&mut p, &[b"\xEF\xBB\xBFid: 2\n\n"]);
        assert_eq!(ids(&seen), ["2"]);
    }

    #[test]
    fn data_line_without_colon_dispatches_an_event() {
        let seen = parse(&[b"data\n\n"]);
        assert!(seen[0].event);
    }

    #[test]
    fn block_without_data_is_not_an_event() {
        let seen = parse(&[b"event: x\nid: 3\n\n"]);
        assert!(!seen[0].event);
        assert_eq!(seen[0].ty, "x");
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored() {
        let seen = parse(&[b": hello\nfoo: bar\nids: 9\nDATA: x\nId: 4\n\n"]);
        assert_eq!(seen.len(), 1);
        assert!(!seen[0].event);
        assert_eq!(seen[0].id, "");
    }

    #[test]
    fn field_names_are_case_sensitive_and_exact() {
        let seen = parse(&[b"idx: 1\nevent : x\ndata : y\n\n"]);
        assert_eq!(seen[0].id, "");
        assert_eq!(seen[0].ty, "message");
        assert!(!seen[0].event);
    }

    #[test]
    fn retry_sets_reconnection_time_with_digits_only() {
        let seen = parse(&[b"retry: 1500\n\nretry: 12a\n\nretry: -1\n\nretry:\n\nretry: 3000\n\n"]);
        let retries: Vec<_> = seen.iter().map(|s| s.retry).collect();
        assert_eq!(
            retries,
            [Some(1500), Some(1500), Some(1500), Some(1500), Some(3000)]
        );
    }

    #[test]
    fn retry_split_across_chunks() {
        let seen = parse(&[b"retry: 2", b"5", b"0\n\n"]);
        assert_eq!(seen[0].retry, Some(250));
    }

    #[test]
    fn retry_with_huge_number_saturates() {
        let seen = parse(&[b"retry: 99999999999999999999999999\n\n"]);
        assert_eq!(seen[0].retry, Some(u64::MAX));
    }

    #[test]
    fn invalid_utf8_in_id_is_replaced_not_fatal() {
        let seen = parse(&[b"id: a\xFFb\n\n"]);
        assert_eq!(ids(&seen), ["a\u{FFFD}b"]);
        let seen = parse(&[b"id: \xE2\x82\n\n"]);
        assert_eq!(ids(&seen), ["\u{FFFD}"]);
    }

    #[test]
    fn utf8_id_split_inside_a_code_point() {
        let seen = parse(&[b"id: \xE2", b"\x82", b"\xAC\n\n"]);
        assert_eq!(ids(&seen), ["\u{20AC}"]);
    }

    #[test]
    fn invalid_utf8_in_data_is_ignored() {
        let seen = parse(&[b"data: \xFF\xFE\nid: 1\n\n"]);
        assert!(seen[0].event);
        assert_eq!(seen[0].id, "1");
    }

    #[test]
    fn oversized_id_is_counted_and_ignored() {
        let mut p = SseParser::new().max_id_len(4);
        let seen = feed_all(&mut p, &[b"id: 1234\n\nid: 12", b"345\n\nid: 9\n\n"]);
        assert_eq!(ids(&seen), ["1234", "1234", "9"]);
        assert_eq!(p.oversized_ids(), 1);
    }

    #[test]
    fn oversized_event_type_is_counted_and_ignored() {
        let mut p = SseParser::new().max_event_type_len(3);
        let seen = feed_all(&mut p, &[b"event: abcd\ndata\n\n"]);
        assert_eq!(seen[0].ty, "message");
        assert_eq!(p.oversized_event_types(), 1);
    }

    #[test]
    fn endless_line_uses_bounded_memory() {
        let mut p = SseParser::new();
        let mb = vec![b'x'; 1 << 20];
        for prefix in [
            &b"data: "[..],
            b"id: ",
            b"event: ",
            b"retry: ",
            b"whatever: ",
            b"xx",
        ] {
            p.feed(prefix, |_| panic!("no dispatch"));
            for _ in 0..64 {
                p.feed(&mb, |_| panic!("no dispatch"));
            }
            assert!(p.value.capacity() <= 2 * DEFAULT_MAX_ID_LEN);
            assert!(p.event_type.capacity() <= 2 * DEFAULT_MAX_EVENT_TYPE_LEN);
            p.feed(b"\n\n", |_| {});
        }
        assert_eq!(p.oversized_ids(), 1);
        assert_eq!(p.oversized_event_types(), 1);
    }

    #[test]
    fn field_name_split_across_chunks() {
        let seen = parse(&[b"i", b"d", b":", b" ", b"1", b"\n", b"\n"]);
        assert_eq!(ids(&seen), ["1"]);
        let seen = parse(&[b"ev", b"ent: x\nda", b"ta\n\n"]);
        assert_eq!(seen[0].ty, "x");
        assert!(seen[0].event);
    }

    #[test]
    fn line_boundary_tracks_cr_and_partial_lines() {
        let mut p = SseParser::new();
        assert!(!p.at_line_boundary(), "a BOM may still come");
        assert!(p.at_stream_start());
        p.feed(b"data: a", |_| {});
        assert!(!p.at_line_boundary());
        p.feed(b"\r", |_| {});
        assert!(!p.at_line_boundary(), "an LF may still come");
        p.feed(b"\n", |_| {});
        assert!(p.at_line_boundary());
        assert!(!p.at_stream_start());
    }

    #[test]
    fn blank_line_at_stream_start_dispatches_nothing_but_counts() {
        let seen = parse(&[b"\n\n"]);
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|s| !s.event && s.id.is_empty()));
    }
}
