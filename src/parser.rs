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
//!         seen.push((d.is_event(), d.event_type().into_owned(), d.last_event_id().to_owned()));
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

use std::borrow::Cow;

use crate::id_buf::IdBuf;
use std::fmt;

/// The byte order mark, stripped once when it starts the stream.
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Default cap on the length of an `id` value, in bytes.
pub(crate) const DEFAULT_MAX_ID_LEN: usize = 1024;

/// Default cap on the length of an `event` value, in bytes.
pub(crate) const DEFAULT_MAX_EVENT_TYPE_LEN: usize = 1024;

/// Longest field name we need to recognise (`event`, `retry`).
const MAX_NAME_LEN: usize = 5;

/// What the parser is in the middle of: the start of a line, or a line that an earlier chunk
/// began and did not end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the first byte of a line.
    LineStart,
    /// The first bytes of a line, no colon among them yet: up to `MAX_NAME_LEN` bytes, in `name`.
    Head,
    /// Right after the colon of an `id`, `event` or `retry` field: one leading space is stripped.
    AfterColon(Field),
    /// An `id` or `event` value, gathered in `value` up to its cap.
    Keep(Field),
    /// An `id` or `event` value over its cap: skipped, and counted when the line ends.
    Oversized(Field),
    /// The digits of a `retry` value, accumulated in `retry_acc`.
    Retry,
    /// The rest of a line that changes nothing when it ends: `data` (noted already), comments
    /// and unknown fields.
    Skip,
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
/// ```
/// use tower_sse_tracking::parser::SseParser;
///
/// let mut parser = SseParser::new().max_id_len(64);
/// let mut ids = Vec::new();
/// // A CR at the end of one chunk and the LF at the start of the next are one line break.
/// for chunk in [&b"retry: 3000\rid: a\r"[..], b"\ndata: x\r\n\r\n"] {
///     parser.feed(chunk, |d| ids.push(d.last_event_id().to_owned()));
/// }
/// assert_eq!(ids, ["a"]);
/// assert_eq!(parser.retry(), Some(3000));
/// ```
///
/// See also the [module documentation](self). The parser allocates only while its
/// `id` and `event` buffers grow to their working size, and when an `id` or `event` value is not
/// valid UTF-8 (it is then decoded with U+FFFD replacement characters, never rejected).
#[derive(Clone)]
pub struct SseParser {
    // Laid out by the compiler: a hand-made order (`repr(C)`, the per-line flags first) cost
    // 6 ns per event in the layer bench (45 against 39 ns added), which no cold-cache gain
    // made up for.
    state: State,
    /// The previous chunk ended with a CR: an LF starting the next chunk belongs to it.
    after_cr: bool,
    /// The current block had a `data` field.
    has_data: bool,
    /// An `id` field took effect in the current block.
    id_in_block: bool,
    /// The last event ID buffer was set and is not committed yet.
    commit_pending: bool,
    /// In tracking mode: the `id` set in this block repeats the last event ID.
    id_repeated: bool,
    /// A line of this stream ended with CRLF (see [`scan_crlf`](Self::scan_crlf)).
    crlf: bool,
    /// Bytes of the byte order mark matched so far at the start of the stream, or `None` once the
    /// start of the stream has been decided.
    bom_matched: Option<u8>,
    /// How many bytes of `name` the line has so far (in `State::Head`).
    name_len: u8,
    /// In tracking mode, which of `Ids::Raw`'s two buffers holds the last event ID (kept here,
    /// beside the other small fields, rather than in `Ids`, where it cost 8 bytes of padding).
    newest: u8,
    // Lines split across chunks.
    name: [u8; MAX_NAME_LEN],
    /// Whether the current `retry` value is still all digits, and whether it is still empty.
    retry_digits: bool,
    retry_empty: bool,
    /// A valid `retry` field was seen: `retry` holds its value.
    has_retry: bool,
    /// The caps (`usize` caps past `u32::MAX` are taken as `u32::MAX`).
    max_id_len: u32,
    max_event_type_len: u32,
    /// The last event ID and its buffer (and, when decoding, the event type).
    ids: Ids,
    /// The current `id` or `event` value, up to its cap (in `State::Keep`), gathered only when
    /// the line is split across chunks. Boxed on first use: 8 bytes in every parser (one per
    /// tracked stream) rather than 24, for a buffer most streams never need.
    #[expect(
        clippy::box_collection,
        reason = "a thin pointer: 8 bytes in every parser, where a `Vec` takes 24"
    )]
    value: Option<Box<Vec<u8>>>,
    /// The reconnection time in milliseconds, once a valid `retry` field was seen
    /// (`has_retry`): a flag among the small fields and a `u64`, 8 bytes fewer than an
    /// `Option<u64>`.
    retry: u64,
    /// The current `retry` value so far (saturating).
    retry_acc: u64,
    oversized_ids: u64,
    oversized_event_types: u64,
}

/// How a parser keeps the last event ID: one of two modes, in the same bytes (a tracked stream
/// holds only what the layer's mode needs).
#[derive(Clone)]
enum Ids {
    /// The public parser: the ID as text, and the event type.
    Text {
        /// The last event ID string, committed at each blank line.
        last: String,
        /// The last event ID buffer while it differs from `last` (see `commit_pending`),
        /// checked as UTF-8 when set; committed by a swap, never a copy.
        pending: String,
        /// The event type buffer of the current block, as raw bytes (decoded only when asked
        /// for).
        event_type: Vec<u8>,
    },
    /// Tracking mode (crate-internal): raw bytes in place (no UTF-8 check per event: whoever
    /// keeps the ID decodes it once), event types not kept. `ids[newest]` (the parser's
    /// `newest`) is the last event ID, committed at each blank line by flipping `newest`; the
    /// other one is the buffer an
    /// `id` field sets (and, right after a commit, the ID before).
    Raw { ids: [IdBuf; 2] },
}

impl Default for SseParser {
    fn default() -> Self {
        Self {
            state: State::LineStart,
            after_cr: false,
            has_data: false,
            id_in_block: false,
            commit_pending: false,
            id_repeated: false,
            crlf: false,
            bom_matched: Some(0),
            name_len: 0,
            newest: 0,
            name: [0; MAX_NAME_LEN],
            retry_digits: true,
            retry_empty: true,
            has_retry: false,
            max_id_len: DEFAULT_MAX_ID_LEN as u32,
            max_event_type_len: DEFAULT_MAX_EVENT_TYPE_LEN as u32,
            ids: Ids::Text {
                last: String::new(),
                pending: String::new(),
                event_type: Vec::new(),
            },
            value: None,
            retry: 0,
            retry_acc: 0,
            oversized_ids: 0,
            oversized_event_types: 0,
        }
    }
}

impl fmt::Debug for SseParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseParser")
            .field("last_event_id", &self.last_event_id())
            .field("retry", &self.retry())
            .field("at_line_boundary", &self.at_line_boundary())
            .field("oversized_ids", &self.oversized_ids)
            .field("oversized_event_types", &self.oversized_event_types)
            .finish_non_exhaustive()
    }
}

/// One dispatch: a blank line that ended a block of fields.
///
/// Borrowed from the parser for the duration of the callback; copy out what you keep.
///
/// ```
/// use tower_sse_tracking::parser::SseParser;
///
/// let mut parser = SseParser::new();
/// parser.feed(b"event: ping\nid: 1\n\n", |d| {
///     assert!(!d.is_event(), "no data field: nothing dispatched to the page");
///     assert!(d.id_set());
///     assert_eq!(d.event_type(), "ping");
///     assert_eq!(d.last_event_id(), "1");
///     assert_eq!(d.retry(), None);
/// });
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Dispatch<'a> {
    is_event: bool,
    id_set: bool,
    /// Raw: decoded only if asked for, since tracking has no use for it.
    event_type: &'a [u8],
    last_event_id: &'a str,
    /// The last event ID's bytes (raw in tracking mode, where `last_event_id` is empty).
    last_id_bytes: &'a [u8],
    /// Tracking mode: this block's `id` repeated the previous last event ID.
    id_repeated: bool,
    /// The last event ID before this block's (the same as `last_id_bytes` if no `id` took
    /// effect in it).
    previous_id_bytes: &'a [u8],
    retry: Option<u64>,
    /// Where the blank line that dispatched ends in the chunk being fed.
    offset: usize,
}

impl<'a> Dispatch<'a> {
    /// Where the blank line that dispatched this block ends in the chunk passed to
    /// [`SseParser::feed`]: the chunk's bytes before this offset belong to this block or earlier
    /// ones, those after it to later ones. (When the blank line is a CR at the very end of the
    /// chunk, an LF that opens the next chunk completes it; that LF is then counted with what
    /// follows.)
    ///
    /// ```
    /// use tower_sse_tracking::parser::SseParser;
    ///
    /// let chunk = b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n";
    /// let mut ends = Vec::new();
    /// SseParser::new().feed(chunk, |d| ends.push(d.chunk_offset()));
    /// assert_eq!(ends, [15, 30]);
    /// assert_eq!(&chunk[..15], b"id: 1\ndata: a\n\n");
    /// ```
    pub fn chunk_offset(&self) -> usize {
        self.offset
    }

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
    ///
    /// Decoded when called, with U+FFFD replacement characters for invalid UTF-8; borrowed unless
    /// the value was invalid.
    pub fn event_type(&self) -> Cow<'a, str> {
        if self.event_type.is_empty() {
            Cow::Borrowed("message")
        } else {
            String::from_utf8_lossy(self.event_type)
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

    /// The last event ID's bytes: those of [`last_event_id`](Self::last_event_id), or, from a
    /// parser in tracking mode, the raw bytes of the `id` value (not checked as UTF-8).
    pub(crate) fn last_event_id_bytes(&self) -> &'a [u8] {
        self.last_id_bytes
    }

    /// From a parser in tracking mode: an `id` took effect in this block and set the same last
    /// event ID as before it (always `false` in the decoding mode).
    pub(crate) fn id_repeated(&self) -> bool {
        self.id_repeated
    }

    /// From a parser in tracking mode: the last event ID before this block, raw.
    pub(crate) fn previous_id_bytes(&self) -> &'a [u8] {
        self.previous_id_bytes
    }
}

/// What [`SseParser::scan_plain`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Bytes read from the start of the chunk (up to the start of a block).
    pub(crate) read: usize,
    /// Blocks with data or an `id`, in those bytes.
    pub(crate) events: u64,
    /// Blocks with an `id` among them.
    pub(crate) ids: u64,
}

impl SseParser {
    /// A parser for a new stream, with the default caps of 1 KiB for `id` and `event` values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Caps the length of an `id` value in bytes. A longer `id` is counted
    /// ([`oversized_ids`](Self::oversized_ids)) and ignored, as if it contained a NUL.
    ///
    /// Defaults to 1024.
    pub fn max_id_len(mut self, max: usize) -> Self {
        self.max_id_len = u32::try_from(max).unwrap_or(u32::MAX);
        self
    }

    /// Caps the length of an `event` value in bytes. A longer `event` field is counted
    /// ([`oversized_event_types`](Self::oversized_event_types)) and ignored.
    ///
    /// Defaults to 1024.
    pub fn max_event_type_len(mut self, max: usize) -> Self {
        self.max_event_type_len = u32::try_from(max).unwrap_or(u32::MAX);
        self
    }

    /// A parser for the layer's per-event path: the last event ID is kept as raw bytes
    /// ([`Dispatch::last_event_id_bytes`]; [`Dispatch::last_event_id`] and
    /// [`last_event_id`](Self::last_event_id) stay empty) and event types are not kept
    /// ([`Dispatch::event_type`] is always `message`). What is parsed is the same.
    /// For a new parser (nothing fed yet).
    pub(crate) fn for_tracking(mut self) -> Self {
        debug_assert!(self.at_stream_start() && self.last_event_id().is_empty());
        self.ids = Ids::Raw {
            ids: Default::default(),
        };
        self.newest = 0;
        self
    }

    /// The last event ID committed by the latest dispatch, raw (in tracking mode, not checked as
    /// UTF-8).
    pub(crate) fn last_event_id_bytes(&self) -> &[u8] {
        match &self.ids {
            Ids::Text { last, .. } => last.as_bytes(),
            Ids::Raw { ids } => ids[usize::from(self.newest)].as_slice(),
        }
    }

    /// The last event ID committed by the latest dispatch (empty if none, and in the layer's
    /// tracking mode).
    pub fn last_event_id(&self) -> &str {
        match &self.ids {
            Ids::Text { last, .. } => last,
            Ids::Raw { .. } => "",
        }
    }

    /// The event type buffer's capacity (for tests).
    #[cfg(test)]
    fn event_type_capacity(&self) -> usize {
        match &self.ids {
            Ids::Text { event_type, .. } => event_type.capacity(),
            Ids::Raw { .. } => 0,
        }
    }

    /// The reconnection time in milliseconds set by the stream, if any.
    pub fn retry(&self) -> Option<u64> {
        self.has_retry.then_some(self.retry)
    }

    /// How many `id` values were ignored because they were longer than the cap.
    pub fn oversized_ids(&self) -> u64 {
        self.oversized_ids
    }

    /// How many `id` values were ignored for their length since the previous call: the
    /// layer counts them into its metric and keeps no copy of the count (8 bytes of every
    /// stream's state).
    pub(crate) fn take_oversized_ids(&mut self) -> u64 {
        std::mem::take(&mut self.oversized_ids)
    }

    /// Reads a field on each cache line that parsing an event touches (see
    /// `StreamState::warm`).
    #[inline]
    pub(crate) fn warm(&self) {
        let ids = match &self.ids {
            Ids::Raw { ids } => (ids[0].is_empty(), ids[1].is_empty(), self.newest),
            Ids::Text { .. } => (false, false, 0),
        };
        std::hint::black_box((
            self.value.is_some(),
            ids,
            self.oversized_ids,
            self.max_id_len,
            self.has_data,
            self.name_len,
        ));
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
    #[inline]
    pub fn feed<F>(&mut self, chunk: &[u8], mut on_dispatch: F)
    where
        F: FnMut(&Dispatch<'_>),
    {
        let whole = chunk.len();
        let mut chunk = chunk;
        if self.bom_matched.is_some() {
            match self.strip_bom(chunk) {
                Some(rest) => chunk = rest,
                None => return,
            }
        }
        // First the end of a line that an earlier chunk began, if any. Most chunk boundaries
        // fall inside `data` lines: those are skipped right here.
        let mut i = 0;
        match self.state {
            State::LineStart => {
                if self.after_cr {
                    let Some(&first) = chunk.first() else { return };
                    self.after_cr = false;
                    i = usize::from(first == b'\n');
                }
            }
            State::Skip => match find_eol(chunk) {
                Some(end) => i = self.end_of_line(chunk, end),
                None => return,
            },
            _ => match self.resume(chunk) {
                Some(end) => i = self.end_of_line(chunk, end),
                None => return,
            },
        }
        // Then whole lines, each read in place after one search for its end.
        while i < chunk.len() {
            let rest = &chunk[i..];
            match find_eol(rest) {
                Some(0) => {
                    i = self.end_of_line(chunk, i);
                    // Offsets count from the chunk as given, byte order mark included.
                    self.dispatch(whole - chunk.len() + i, &mut on_dispatch);
                }
                Some(len) => {
                    self.field_line(&rest[..len]);
                    i = self.end_of_line(chunk, i + len);
                }
                None => {
                    self.begin_line(rest);
                    return;
                }
            }
        }
    }

    /// Tracking mode's fast path (crate-internal): reads whole blocks from the start of `chunk`
    /// while they are plain, and commits each as [`feed`](Self::feed) would, without a dispatch
    /// per block. Plain: the parser is at the start of a block; lines end with LF; the lines
    /// are `data`, comments, an `event` within its cap, fields that change nothing, and `id`
    /// values that are not empty, within the cap, free of NUL and not the last event ID again.
    /// It stops at the start of the first block that is not (or that the chunk does not end),
    /// for `feed` to read from there. The blocks it read are counted when they have data or an
    /// ID (the blocks the layer records).
    ///
    /// `on_event` is called for each of them with the offset in `chunk` just after its blank
    /// line, the last event ID then (its buffer: a caller that does not read it pays nothing
    /// for it), and whether the block set it.
    #[inline(always)]
    pub(crate) fn scan_plain<const CRLF: bool, F>(
        &mut self,
        chunk: &[u8],
        mut on_event: F,
    ) -> Scanned
    where
        F: FnMut(usize, &IdBuf, bool),
    {
        let mut done = Scanned::default();
        let at_block_start = matches!(self.state, State::LineStart)
            && !self.after_cr
            && self.bom_matched.is_none()
            && !self.has_data
            && !self.id_in_block
            && !self.commit_pending;
        let Ids::Raw { ids } = &mut self.ids else {
            return done;
        };
        let newest = &mut self.newest;
        if !at_block_start {
            return done;
        }
        let (max_id, max_event) = (self.max_id_len as usize, self.max_event_type_len as usize);
        let mut rest = chunk;
        // The current block: whether it has data, and its ID.
        let mut has_data = false;
        let mut id: Option<&[u8]> = None;
        while let Some(&(mut first)) = rest.first() {
            // With `CRLF`, lines may end with CRLF too: a CRLF blank line is read as the LF
            // after its CR (a CR alone goes to `feed`, from the line split below).
            if CRLF && first == b'\r' && rest.get(1) == Some(&b'\n') {
                rest = &rest[1..];
                first = b'\n';
            }
            if first == b'\n' {
                // A blank line: the block dispatches.
                if let Some(value) = id.take() {
                    // `newest` is 0 or 1; the mask lets the indexing below go unchecked.
                    let last = usize::from(*newest & 1);
                    // IDs of 8 to 16 bytes (most counters and timestamps): two words, read
                    // once for the NUL check, the compare and the copy.
                    if (8..=16).contains(&value.len()) {
                        let n = value.len();
                        let (first, tail) = (
                            crate::id_buf::word(value, 0),
                            crate::id_buf::word(value, n - 8),
                        );
                        if has_zero_byte_in_words(first, tail)
                            || ids[last].holds_words(value, first, tail)
                        {
                            break; // A NUL (the ID is ignored) or a repeat: `feed` reports it.
                        }
                        ids[last ^ 1].set_words(value, first, tail);
                    } else if (17..=32).contains(&value.len()) {
                        // 17 to 32 bytes (ULIDs, `seq-timestamp` pairs): the same, in two
                        // 16-byte reads.
                        let n = value.len();
                        let (first, tail) = (
                            crate::id_buf::wide(value, 0),
                            crate::id_buf::wide(value, n - 16),
                        );
                        if has_zero_byte_at(value, [0, n - 16])
                            || ids[last].holds_wide(value, first, tail)
                        {
                            break; // A NUL (the ID is ignored) or a repeat: `feed` reports it.
                        }
                        ids[last ^ 1].set_wide(value, first, tail);
                    } else if (33..=48).contains(&value.len()) {
                        // 33 to 48 bytes (UUIDs): three 16-byte reads, the last overlapping.
                        let n = value.len();
                        let thirds = [0, 16, n - 16].map(|at| crate::id_buf::wide(value, at));
                        if has_zero_byte_at(value, [0, 16, n - 16])
                            || ids[last].holds_thirds(value, thirds)
                        {
                            break; // A NUL (the ID is ignored) or a repeat: `feed` reports it.
                        }
                        ids[last ^ 1].set_thirds(value, thirds);
                    } else {
                        if has_nul(value) || ids[last].holds(value) {
                            break; // A NUL (the ID is ignored) or a repeat: `feed` reports it.
                        }
                        ids[last ^ 1].set(value);
                    }
                    *newest = (last ^ 1) as u8;
                    rest = &rest[1..];
                    done.ids += 1;
                    done.events += 1;
                    on_event(chunk.len() - rest.len(), &ids[last ^ 1], true);
                } else {
                    rest = &rest[1..];
                    if has_data {
                        done.events += 1;
                        on_event(
                            chunk.len() - rest.len(),
                            &ids[usize::from(*newest & 1)],
                            false,
                        );
                    }
                }
                has_data = false;
                done.read = chunk.len() - rest.len();
                continue;
            }
            // The line's first bytes, read as one word: a field name and its colon are told
            // apart by masked compares (the bytes matched hold no line break, so they are the
            // line's own). Fewer than eight bytes left: `feed` reads them.
            let Some(head) = rest.first_chunk::<8>() else {
                break;
            };
            let head = u64::from_le_bytes(*head);
            let Some((len, after)) = split_lf::<CRLF>(rest) else {
                break; // The chunk ends inside the line, or the line ends with CR.
            };
            // The byte after a matched name and colon is the line's own when it is a space (a
            // space is no line end): `len` is past it then.
            let space_at = |i: u32| usize::from((head >> (8 * i)) as u8 == b' ');
            if head & MASK[5] == DATA_COLON || (len == 4 && head & MASK[4] == DATA) {
                has_data = true;
            } else if head & MASK[3] == ID_COLON {
                match rest.get(3 + space_at(3)..len) {
                    Some(value) if !value.is_empty() && value.len() <= max_id => id = Some(value),
                    _ => break,
                }
            } else if head & MASK[6] == EVENT_COLON {
                // `len` is at least 6: the name and colon hold no line end.
                if len.wrapping_sub(6 + space_at(6)) > max_event {
                    break;
                }
            } else if head & MASK[2] == ID || head & MASK[5] == RETRY {
                // An `id` without a colon may clear the last event ID, `retry` sets the
                // reconnection time: both are left to `feed`.
                break;
            }
            // Anything else: comments, `data`-like names, an `event` without a colon, fields
            // that change nothing.
            rest = after;
        }
        done
    }

    /// Whether a line of this stream ended with CRLF (then [`scan_crlf`](Self::scan_crlf)
    /// reads what the LF scan left).
    #[inline(always)]
    pub(crate) fn crlf(&self) -> bool {
        self.crlf
    }

    /// [`scan_plain`](Self::scan_plain) for lines that end with CRLF or LF, with nothing to do
    /// per event: for streams whose lines end with CRLF (sse-starlette's, and so the MCP
    /// Python SDK's), which the LF scan hands over at their first CR. Out of line, so that the
    /// LF case (most servers) keeps its code.
    #[inline(never)]
    pub(crate) fn scan_crlf(&mut self, chunk: &[u8]) -> Scanned {
        self.scan_plain::<true, _>(chunk, |_, _, _| {})
    }

    /// Ends the stream: an unterminated final block is discarded, as the spec requires.
    ///
    /// The last event ID and reconnection time stay readable; feeding again starts a new stream
    /// (with its own byte order mark, and a last event ID buffer that starts empty, so its first
    /// dispatch commits an empty ID unless the stream sets one).
    pub fn finish(&mut self) {
        self.state = State::LineStart;
        self.after_cr = false;
        self.has_data = false;
        self.id_in_block = false;
        self.bom_matched = Some(0);
        if let Some(value) = &mut self.value {
            value.clear();
        }
        self.name_len = 0;
        self.commit_pending = match &mut self.ids {
            Ids::Text {
                last,
                pending,
                event_type,
            } => {
                event_type.clear();
                pending.clear();
                !last.is_empty()
            }
            Ids::Raw { ids } => {
                ids[usize::from(1 - self.newest)].clear();
                !ids[usize::from(self.newest)].is_empty()
            }
        };
    }

    /// Strips a byte order mark, whole or split across chunks, from the start of the stream, and
    /// returns what follows it in `chunk`; `None` when the chunk ended inside what may still be
    /// one.
    #[cold]
    fn strip_bom<'c>(&mut self, chunk: &'c [u8]) -> Option<&'c [u8]> {
        let mut matched = usize::from(self.bom_matched.unwrap_or(0));
        let mut taken = 0;
        while matched < BOM.len() && taken < chunk.len() && chunk[taken] == BOM[matched] {
            matched += 1;
            taken += 1;
        }
        if matched < BOM.len() && taken == chunk.len() {
            self.bom_matched = Some(matched as u8);
            return None;
        }
        self.bom_matched = None;
        if matched < BOM.len() && matched > 0 {
            // Not a byte order mark: the bytes matched so far (held back from earlier chunks or
            // taken from this one) begin the first line. They hold no colon or line break.
            self.begin_line(&BOM[..matched]);
        }
        Some(&chunk[taken..])
    }

    /// A complete, non-empty line (without its line break).
    #[inline(always)]
    fn field_line(&mut self, line: &[u8]) {
        // The lines servers write most, each told apart by their first bytes alone.
        match line {
            [b'd', b'a', b't', b'a', b':', ..] => {
                self.has_data = true;
                return;
            }
            [b'i', b'd', b':', value @ ..] => {
                self.set_id(value.strip_prefix(b" ").unwrap_or(value));
                return;
            }
            [b'e', b'v', b'e', b'n', b't', b':', value @ ..] => {
                self.set_event_type(value.strip_prefix(b" ").unwrap_or(value));
                return;
            }
            [b':', ..] => return, // A comment.
            _ => {}
        }
        // The fields we act on have names of at most five bytes: a colon further on (or none in
        // a longer line) means a field we ignore.
        let head = &line[..line.len().min(MAX_NAME_LEN + 1)];
        let (name, value) = match head.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None if line.len() <= MAX_NAME_LEN => (line, &[][..]),
            None => return,
        };
        match classify(name) {
            Field::Data => self.has_data = true,
            Field::Id => self.set_id(value),
            Field::Event => self.set_event_type(value),
            Field::Retry => {
                self.start_retry();
                self.push_retry(value);
                self.end_retry();
            }
            Field::Ignored => {}
        }
    }

    fn start_retry(&mut self) {
        self.retry_acc = 0;
        self.retry_digits = true;
        self.retry_empty = true;
    }

    /// Adds the next bytes of a `retry` value: ASCII digits only, saturating.
    fn push_retry(&mut self, digits: &[u8]) {
        if !self.retry_digits || digits.is_empty() {
            return;
        }
        self.retry_empty = false;
        for &b in digits {
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

    /// Ends a `retry` value: it takes effect if it was a non-empty run of digits.
    fn end_retry(&mut self) {
        if self.retry_digits && !self.retry_empty {
            self.retry = self.retry_acc;
            self.has_retry = true;
        }
    }

    #[inline]
    fn set_id(&mut self, value: &[u8]) {
        if value.len() > self.max_id_len as usize {
            self.oversized_ids += 1;
        } else if !has_nul(value) {
            self.keep_id(value);
        }
    }

    /// An `id` value takes effect (it holds no NUL and is within the cap).
    #[inline]
    fn keep_id(&mut self, value: &[u8]) {
        match &mut self.ids {
            Ids::Raw { ids } => {
                // Compared here, with the bytes still in the chunk: the buffers are not read
                // back right after being written.
                let newest = usize::from(self.newest);
                self.id_repeated = ids[newest].holds(value);
                ids[1 - newest].set(value);
            }
            Ids::Text { pending, .. } => {
                pending.clear();
                match std::str::from_utf8(value) {
                    Ok(id) => pending.push_str(id),
                    Err(_) => pending.push_str(&String::from_utf8_lossy(value)),
                }
            }
        }
        self.commit_pending = true;
        self.id_in_block = true;
    }

    fn set_event_type(&mut self, value: &[u8]) {
        if value.len() > self.max_event_type_len as usize {
            self.oversized_event_types += 1;
        } else if let Ids::Text { event_type, .. } = &mut self.ids {
            event_type.clear();
            event_type.extend_from_slice(value);
        }
    }

    /// The start of a line that the chunk does not end (`bytes` is not empty and holds no line
    /// break).
    fn begin_line(&mut self, bytes: &[u8]) {
        if bytes[0] == b':' {
            self.state = State::Skip; // A comment.
            return;
        }
        let head = &bytes[..bytes.len().min(MAX_NAME_LEN + 1)];
        match head.iter().position(|&b| b == b':') {
            Some(colon) => {
                self.enter_value(classify(&bytes[..colon]));
                let ended = self.resume(&bytes[colon + 1..]);
                debug_assert!(ended.is_none(), "the line has no end in this chunk");
            }
            // Too long to be the name of a field we act on.
            None if head.len() > MAX_NAME_LEN => self.state = State::Skip,
            None => {
                self.name[..bytes.len()].copy_from_slice(bytes);
                self.name_len = bytes.len() as u8;
                self.state = State::Head;
            }
        }
    }

    /// The state after the colon of a field.
    fn enter_value(&mut self, field: Field) {
        self.state = match field {
            Field::Data => {
                // Noted now: the block can only dispatch after this line has ended.
                self.has_data = true;
                State::Skip
            }
            Field::Ignored => State::Skip,
            Field::Id | Field::Event => {
                if let Some(value) = &mut self.value {
                    value.clear();
                }
                State::AfterColon(field)
            }
            Field::Retry => {
                self.start_retry();
                State::AfterColon(field)
            }
        };
    }

    /// Continues a line begun in an earlier chunk with `bytes`; returns the index of its line
    /// break, if there, once the line has taken effect.
    #[inline]
    fn resume(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        loop {
            let rest = &bytes[i..];
            match self.state {
                State::LineStart => unreachable!("only called inside a line"),
                State::Head => {
                    // Names that matter are short: look at a few bytes, not the whole rest.
                    let name_len = usize::from(self.name_len);
                    let room = MAX_NAME_LEN - name_len;
                    let window = &rest[..rest.len().min(room + 1)];
                    let Some(pos) = window
                        .iter()
                        .position(|&b| matches!(b, b':' | b'\r' | b'\n'))
                    else {
                        if window.len() > room {
                            // Too long to be the name of a field we act on.
                            self.state = State::Skip;
                            i += window.len();
                            continue;
                        }
                        self.name[name_len..][..window.len()].copy_from_slice(window);
                        // At most `MAX_NAME_LEN` in all.
                        self.name_len += window.len() as u8;
                        return None;
                    };
                    let mut name = self.name;
                    name[name_len..][..pos].copy_from_slice(&window[..pos]);
                    let name = &name[..name_len + pos];
                    if window[pos] == b':' {
                        self.enter_value(classify(name));
                        i += pos + 1;
                    } else {
                        // No colon: the whole line is the name, and the value is empty.
                        self.field_line(name);
                        return Some(i + pos);
                    }
                }
                State::AfterColon(field) => {
                    let &first = rest.first()?;
                    i += usize::from(first == b' ');
                    self.state = if field == Field::Retry {
                        State::Retry
                    } else {
                        State::Keep(field)
                    };
                }
                State::Keep(field) => {
                    let cap = if field == Field::Id {
                        self.max_id_len
                    } else {
                        self.max_event_type_len
                    } as usize;
                    let end = find_eol(rest);
                    let part = &rest[..end.unwrap_or(rest.len())];
                    let value = self.value.get_or_insert_default();
                    if value.len() + part.len() > cap {
                        value.clear();
                        self.state = State::Oversized(field);
                        continue;
                    }
                    value.extend_from_slice(part);
                    let end = end?;
                    // The gathered value becomes the buffer by a swap, not a copy.
                    if field == Field::Event {
                        if let Ids::Text { event_type, .. } = &mut self.ids {
                            std::mem::swap(event_type, &mut **value);
                        }
                    } else if !value.contains(&0)
                        && let Some(value) = self.value.take()
                    {
                        self.keep_id(&value);
                        self.value = Some(value);
                    }
                    return Some(i + end);
                }
                State::Oversized(field) => {
                    let end = find_eol(rest)?;
                    if field == Field::Id {
                        self.oversized_ids += 1;
                    } else {
                        self.oversized_event_types += 1;
                    }
                    return Some(i + end);
                }
                State::Retry => {
                    let end = find_eol(rest);
                    self.push_retry(&rest[..end.unwrap_or(rest.len())]);
                    let end = end?;
                    self.end_retry();
                    return Some(i + end);
                }
                State::Skip => return find_eol(rest).map(|end| i + end),
            }
        }
    }

    /// Ends the line whose line break is at `chunk[at]` (CR, LF or CRLF, with the LF possibly in
    /// the next chunk) and returns the index after the line break.
    #[inline]
    fn end_of_line(&mut self, chunk: &[u8], at: usize) -> usize {
        self.state = State::LineStart;
        if chunk[at] == b'\r' {
            match chunk.get(at + 1) {
                Some(b'\n') => {
                    self.crlf = true;
                    return at + 2;
                }
                Some(_) => {}
                None => self.after_cr = true,
            }
        }
        at + 1
    }

    #[inline]
    fn dispatch<F>(&mut self, offset: usize, on_dispatch: &mut F)
    where
        F: FnMut(&Dispatch<'_>),
    {
        // The spec sets the last event ID string to the buffer at every blank line; the two only
        // differ when an id took effect since, and then the buffer moves in without a copy.
        if self.commit_pending {
            self.commit_pending = false;
            match &mut self.ids {
                Ids::Raw { .. } => self.newest = 1 - self.newest,
                Ids::Text { last, pending, .. } => std::mem::swap(pending, last),
            }
        }
        let id_repeated = self.id_repeated && self.id_in_block;
        let retry = self.retry();
        // One literal per mode: a shared one built from a tuple measured 1.5 to 2 ns per event
        // slower in the layer bench.
        match &mut self.ids {
            Ids::Raw { ids } => {
                let newest = usize::from(self.newest);
                on_dispatch(&Dispatch {
                    is_event: self.has_data,
                    id_set: self.id_in_block,
                    event_type: &[],
                    last_event_id: "",
                    last_id_bytes: ids[newest].as_slice(),
                    retry,
                    id_repeated,
                    previous_id_bytes: ids[if self.id_in_block { 1 - newest } else { newest }]
                        .as_slice(),
                    offset,
                });
            }
            Ids::Text {
                last, event_type, ..
            } => {
                on_dispatch(&Dispatch {
                    is_event: self.has_data,
                    id_set: self.id_in_block,
                    event_type,
                    last_event_id: last,
                    last_id_bytes: last.as_bytes(),
                    retry,
                    id_repeated,
                    previous_id_bytes: &[],
                    offset,
                });
                event_type.clear();
            }
        }
        self.id_in_block = false;
        self.has_data = false;
    }
}

/// Whether one of the sixteen bytes of the words `a` and `b` is zero: on x86-64 one SSE2
/// compare of the two. Besides its own instructions, it spares the scan's loop a constant to
/// keep in a register: callgrind counted 440 -> 429 instructions per event through the layer
/// for 8-byte IDs, 467 -> 460 for the e2e harness's, 496 -> 488 for UUIDs.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_zero_byte_in_words(a: u64, b: u64) -> bool {
    use safe_arch::{cmp_eq_mask_i8_m128i, m128i, move_mask_i8_m128i, zeroed_m128i};
    let v = m128i::from(u128::from(a) | u128::from(b) << 64);
    move_mask_i8_m128i(cmp_eq_mask_i8_m128i(v, zeroed_m128i())) != 0
}

/// [`has_zero_byte_in_words`] on other targets.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn has_zero_byte_in_words(a: u64, b: u64) -> bool {
    has_zero_byte(a) || has_zero_byte(b)
}

/// Whether one of the eight bytes of `w` is zero.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn has_zero_byte(w: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    w.wrapping_sub(ONES) & !w & HIGHS != 0
}

/// Whether one of the sixteen bytes of `w` is zero.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn has_zero_byte_wide(w: u128) -> bool {
    const ONES: u128 = u128::from_ne_bytes([0x01; 16]);
    const HIGHS: u128 = u128::from_ne_bytes([0x80; 16]);
    w.wrapping_sub(ONES) & !w & HIGHS != 0
}

/// Whether one of the sixteen bytes at each offset `at` of `value` is zero (each block lies
/// within `value`). On x86-64 with SSE2, a compare a block and one mask test: in `u128`
/// arithmetic ([`has_zero_byte_wide`]) each block took 13 instructions, and callgrind counted
/// 14 fewer in `feed_buf` per event of the e2e harness (IDs of 18 to 23 bytes) this way.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_zero_byte_at<const N: usize>(value: &[u8], at: [usize; N]) -> bool {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i, zeroed_m128i,
    };
    let mut zeros = zeroed_m128i();
    for at in at {
        debug_assert!(at + 16 <= value.len());
        if let Some(block) = value.get(at..).and_then(<[u8]>::first_chunk::<16>) {
            let v = load_unaligned_m128i(block);
            zeros = bitor_m128i(zeros, cmp_eq_mask_i8_m128i(v, zeroed_m128i()));
        }
    }
    move_mask_i8_m128i(zeros) != 0
}

/// [`has_zero_byte_at`] on other targets.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn has_zero_byte_at<const N: usize>(value: &[u8], at: [usize; N]) -> bool {
    at.into_iter()
        .any(|at| has_zero_byte_wide(crate::id_buf::wide(value, at)))
}

/// Whether `value` holds a NUL byte (an `id` that does is ignored). Up to 64 bytes a word at a
/// time, inline, the last word overlapping the one before: the byte loop `contains` compiles
/// to, and a call to memchr (which dispatches at run time) costs, more than that. A UUID (36
/// bytes) is five words.
#[inline]
fn has_nul(value: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of a byte that is zero (and maybe of bytes above it: only "any" matters).
    let zeros = |w: u64| w.wrapping_sub(ONES) & !w;
    match value.len() {
        0..8 => value.contains(&0),
        n @ 8..=64 => {
            let mut found = zeros(crate::id_buf::word(value, n - 8));
            let mut at = 0;
            while at + 8 < n {
                found |= zeros(crate::id_buf::word(value, at));
                at += 8;
            }
            found & HIGHS != 0
        }
        _ => memchr::memchr(0, value).is_some(),
    }
}

/// Line prefixes as little-endian words (see [`SseParser::scan_plain`]).
const DATA_COLON: u64 = u64::from_le_bytes(*b"data:\0\0\0");
const DATA: u64 = u64::from_le_bytes(*b"data\0\0\0\0");
const ID_COLON: u64 = u64::from_le_bytes(*b"id:\0\0\0\0\0");
const ID: u64 = u64::from_le_bytes(*b"id\0\0\0\0\0\0");
const EVENT_COLON: u64 = u64::from_le_bytes(*b"event:\0\0");
const RETRY: u64 = u64::from_le_bytes(*b"retry\0\0\0");
/// `MASK[n]`: the first `n` bytes of a little-endian word.
const MASK: [u64; 8] = [
    0,
    0xFF,
    0xFFFF,
    0xFF_FFFF,
    0xFFFF_FFFF,
    0xFF_FFFF_FFFF,
    0xFFFF_FFFF_FFFF,
    0xFF_FFFF_FFFF_FFFF,
];

/// The length of the line at the start of `bytes` and what follows its LF, if it ends with LF
/// (or, with `CRLF`, with CRLF); `None` if it ends with CR alone, or not in `bytes`. Inline, for
/// [`SseParser::scan_plain`].
#[inline(always)]
fn split_lf<const CRLF: bool>(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let at = find_eol(bytes)?;
    // Checked here, where the search's result is known to be in `bytes`: the rest is then
    // sliced without a second check.
    match bytes.get(at..) {
        Some([b'\n', after @ ..]) => Some((at, after)),
        Some([b'\r', b'\n', after @ ..]) if CRLF => Some((at, after)),
        _ => None,
    }
}

/// The index of the first CR or LF of `bytes` (16 bytes or more), on x86-64: the first 64
/// bytes 16 at a time with SSE2 (always there, and inlined: no run-time dispatch), in order, the
/// last block overlapping the one before it (whose bytes held no line end, so the lowest match
/// is still the first); past them (long `data` lines), memchr's general entry point, with the
/// widest vectors the machine has. Unlike memchr's SSE2 searcher, no alignment step: most lines
/// end in the first or second block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn find_eol_sse2(bytes: &[u8]) -> Option<usize> {
    const HEAD: usize = 64;
    let head = bytes.len().min(HEAD);
    let mut at = 0;
    while let Some(block) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        let mask = eol_mask128(block);
        if mask != 0 {
            return Some(at + mask.trailing_zeros() as usize);
        }
        at += 16;
        if at >= head {
            break;
        }
        at = at.min(head - 16);
    }
    if bytes.len() > HEAD {
        memchr::memchr2(b'\n', b'\r', &bytes[HEAD..]).map(|p| HEAD + p)
    } else {
        None
    }
}

/// One bit per byte of `block` that is CR or LF, in order, with SSE2 through `safe_arch` (the
/// crate denies `unsafe`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn eol_mask128(block: &[u8; 16]) -> u32 {
    use safe_arch::{
        bitor_m128i, cmp_eq_mask_i8_m128i, load_unaligned_m128i, move_mask_i8_m128i,
        set_splat_i8_m128i,
    };
    let v = load_unaligned_m128i(block);
    let eol = bitor_m128i(
        cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'\n' as i8)),
        cmp_eq_mask_i8_m128i(v, set_splat_i8_m128i(b'\r' as i8)),
    );
    // The mask has 16 bits: its sign is never set.
    move_mask_i8_m128i(eol).cast_unsigned()
}

/// The field a name stands for.
#[inline]
fn classify(name: &[u8]) -> Field {
    match name {
        b"data" => Field::Data,
        b"id" => Field::Id,
        b"event" => Field::Event,
        b"retry" => Field::Retry,
        _ => Field::Ignored,
    }
}

/// The length of the line at the start of `bytes`: the index of its first CR or LF.
///
/// Most lines are short, and so are the chunk tails that split lines: up to seven bytes are
/// looked at one by one, inline; longer inputs go to [`find_eol_long`].
#[inline(always)]
fn find_eol(bytes: &[u8]) -> Option<usize> {
    match bytes.len() {
        0..4 => bytes.iter().position(|&b| b == b'\n' || b == b'\r'),
        // Two words of four bytes, the second one overlapping the first when there are fewer
        // than eight: no loop, so no branch that depends on where the line ends.
        4..8 => {
            let head = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            let at = bytes.len() - 4;
            let tail = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            match eol_mask32(head) {
                0 => match eol_mask32(tail) {
                    0 => None,
                    mask => Some(at + (mask.trailing_zeros() / 8) as usize),
                },
                mask => Some((mask.trailing_zeros() / 8) as usize),
            }
        }
        _ => find_eol_long(bytes),
    }
}

/// The high bit of every byte of `w` that is CR or LF, and possibly of bytes after the first
/// such byte (borrows run towards higher bytes): the lowest set bit is exact.
#[inline(always)]
fn eol_mask32(w: u32) -> u32 {
    const ONES: u32 = u32::from_ne_bytes([0x01; 4]);
    const HIGHS: u32 = u32::from_ne_bytes([0x80; 4]);
    let (lf, cr) = (
        w ^ u32::from_ne_bytes([b'\n'; 4]),
        w ^ u32::from_ne_bytes([b'\r'; 4]),
    );
    ((lf.wrapping_sub(ONES) & !lf) | (cr.wrapping_sub(ONES) & !cr)) & HIGHS
}

/// [`find_eol`] for eight bytes or more. On x86-64, from 16 bytes on, [`find_eol_sse2`];
/// elsewhere, or below 16 bytes, eight bytes at a time in a machine word, then memchr's general
/// entry point past 64 bytes.
#[inline]
fn find_eol_long(bytes: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 16 {
        return find_eol_sse2(bytes);
    }
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LF: u64 = u64::from_ne_bytes([b'\n'; 8]);
    const CR: u64 = u64::from_ne_bytes([b'\r'; 8]);
    const WORDS: usize = 8;
    let mut i = 0;
    let mut words = bytes.chunks_exact(8);
    for word in words.by_ref().take(WORDS) {
        let w = u64::from_le_bytes([
            word[0], word[1], word[2], word[3], word[4], word[5], word[6], word[7],
        ]);
        // A zero byte in `w ^ LF` or `w ^ CR` marks an LF or CR. The lowest marked byte is
        // exact (borrows only run towards higher bytes).
        let (lf, cr) = (w ^ LF, w ^ CR);
        let found = ((lf.wrapping_sub(ONES) & !lf) | (cr.wrapping_sub(ONES) & !cr)) & HIGHS;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let rest = &bytes[i..];
    if rest.len() >= 16 {
        memchr::memchr2(b'\n', b'\r', rest).map(|p| i + p)
    } else {
        rest.iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map(|p| i + p)
    }
}

#[cfg(test)]
mod tests {
    /// Cuts a stream into its blocks by `chunk_offset`, fed in two chunks split at `at`.
    fn blocks_split_at(stream: &[u8], at: usize) -> Vec<Vec<u8>> {
        let mut parser = SseParser::new();
        let (mut blocks, mut current) = (Vec::new(), Vec::new());
        for chunk in [&stream[..at], &stream[at..]] {
            let mut start = 0;
            parser.feed(chunk, |d| {
                current.extend_from_slice(&chunk[start..d.chunk_offset()]);
                start = d.chunk_offset();
                blocks.push(std::mem::take(&mut current));
            });
            current.extend_from_slice(&chunk[start..]);
        }
        blocks
    }

    #[test]
    fn chunk_offsets_cut_the_stream_into_its_blocks_wherever_it_is_split() {
        let stream = b"\xEF\xBB\xBFid: 1\r\ndata: a\r\n\r\n: c\n\ndata: b\r\rid: 3\ndata: c\n\n";
        let whole = blocks_split_at(stream, 0);
        assert_eq!(whole.len(), 4, "{whole:?}");
        assert_eq!(whole.concat(), stream.to_vec());
        for at in 0..=stream.len() {
            let blocks = blocks_split_at(stream, at);
            assert_eq!(
                blocks.concat(),
                stream[..blocks.concat().len()].to_vec(),
                "split at {at}"
            );
            assert_eq!(blocks.len(), 4, "split at {at}");
        }
    }

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
                    ty: d.event_type().into_owned(),
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

    /// Tracking mode reports the same dispatches, with each ID's raw bytes, wherever the stream
    /// is split: a valid ID as its UTF-8 bytes, an invalid one as it came (decoded mode gives
    /// replacement characters).
    #[test]
    fn tracking_mode_reports_the_same_ids_as_raw_bytes() {
        let stream: &[u8] =
            b"id: 1\ndata: a\n\nevent: x\nid: caf\xC3\xA9\r\ndata\r\n\r\nid: \xFFz\n\nid\ndata\n\n";
        for at in 0..=stream.len() {
            let (mut decoded, mut raw) = (SseParser::new(), SseParser::new().for_tracking());
            let (mut want, mut got) = (Vec::new(), Vec::new());
            for chunk in [&stream[..at], &stream[at..]] {
                decoded.feed(chunk, |d| {
                    want.push((
                        d.is_event(),
                        d.id_set(),
                        d.chunk_offset(),
                        d.last_event_id().to_owned(),
                    ));
                });
                raw.feed(chunk, |d| {
                    assert_eq!(d.event_type(), "message", "event types are not kept");
                    let id = String::from_utf8_lossy(d.last_event_id_bytes()).into_owned();
                    got.push((d.is_event(), d.id_set(), d.chunk_offset(), id));
                });
            }
            assert_eq!(got, want, "split at {at}");
            assert_eq!(want.len(), 4);
        }
        let mut raw = SseParser::new().for_tracking();
        let mut ids = Vec::new();
        raw.feed(b"id: \xFFz\n\n", |d| {
            ids.push(d.last_event_id_bytes().to_vec())
        });
        raw.finish();
        raw.feed(b"data\n\n", |d| ids.push(d.last_event_id_bytes().to_vec()));
        assert_eq!(
            ids,
            [b"\xFFz".to_vec(), Vec::new()],
            "a new stream starts empty"
        );
    }

    #[test]
    fn has_nul_finds_a_nul_at_any_place() {
        for n in 0..80 {
            let clean = vec![b'x'; n];
            assert!(!has_nul(&clean), "{n}");
            for at in 0..n {
                let mut with = clean.clone();
                with[at] = 0;
                assert!(has_nul(&with), "{n} {at}");
                // Bytes around 0x01 and 0x80 do not fool it.
                with[at] = 0x80;
                assert!(!has_nul(&with), "{n} {at}");
                with[at] = 0x01;
                assert!(!has_nul(&with), "{n} {at}");
            }
        }
    }

    #[test]
    fn line_searches_find_the_first_line_end_at_any_place() {
        // Lengths around the 16-byte blocks, the overlapping last block and the 64-byte head;
        // a second line end later must not win, and bytes next to CR and LF must not match.
        for n in 0..200 {
            let clean: Vec<u8> = (0..n).map(|i| [b'x', 0x0b, 0x0c, 0x8a][i % 4]).collect();
            assert_eq!(find_eol(&clean), None, "{n}");
            assert_eq!(split_lf::<false>(&clean), None, "{n}");
            assert_eq!(split_lf::<true>(&clean), None, "{n}");
            for at in 0..n {
                for (end, later) in [(b'\n', b'\r'), (b'\r', b'\n')] {
                    let mut with = clean.clone();
                    with[at] = end;
                    if at + 5 < n {
                        with[at + 5] = later;
                    }
                    assert_eq!(find_eol(&with), Some(at), "{n} {at} {end}");
                    let lf = (end == b'\n').then_some((at, n - at - 1));
                    for split in [split_lf::<false>(&with), split_lf::<true>(&with)] {
                        let split = split.map(|(len, after)| (len, after.len()));
                        assert_eq!(split, lf, "{n} {at} {end}");
                    }
                }
                // CRLF: a line end for `split_lf::<true>` only, the rest after its LF.
                if at + 1 < n {
                    let mut with = clean.clone();
                    with[at] = b'\r';
                    with[at + 1] = b'\n';
                    assert_eq!(split_lf::<false>(&with), None, "{n} {at}");
                    let split = split_lf::<true>(&with).map(|(len, after)| (len, after.len()));
                    assert_eq!(split, Some((at, n - at - 2)), "{n} {at}");
                }
            }
        }
    }

    #[test]
    fn has_zero_byte_in_words_finds_a_zero_byte_at_any_place() {
        let clean = u64::from_ne_bytes([b'x'; 8]);
        assert!(!has_zero_byte_in_words(clean, clean));
        for at in 0..16 {
            for (byte, zero) in [(0, true), (0x80, false), (0x01, false), (0xff, false)] {
                let mut bytes = [b'x'; 16];
                bytes[at] = byte;
                let a = u64::from_ne_bytes(bytes[..8].try_into().unwrap());
                let b = u64::from_ne_bytes(bytes[8..].try_into().unwrap());
                assert_eq!(has_zero_byte_in_words(a, b), zero, "{at} {byte}");
                // The portable form, which other targets use.
                assert_eq!(has_zero_byte(a) || has_zero_byte(b), zero, "{at} {byte}");
            }
        }
    }

    #[test]
    fn has_zero_byte_at_finds_a_zero_byte_in_any_block_only() {
        // 40 bytes read as blocks at 0, 16 and 24 (overlapping): every byte is in one.
        for at in 0..40 {
            let mut bytes = [b'x'; 40];
            bytes[at] = 0;
            assert!(has_zero_byte_at(&bytes, [0, 16, 24]), "{at}");
            // Only the blocks asked for are read.
            assert_eq!(
                has_zero_byte_at(&bytes, [0, 24]),
                !(16..24).contains(&at),
                "{at}"
            );
        }
        assert!(!has_zero_byte_at(&[0x80; 40], [0, 16, 24]));
    }

    #[test]
    fn has_zero_byte_wide_finds_a_zero_byte_at_any_place() {
        let clean = u128::from_ne_bytes([b'x'; 16]);
        assert!(!has_zero_byte_wide(clean));
        for at in 0..16 {
            for (byte, zero) in [(0, true), (0x80, false), (0x01, false), (0xff, false)] {
                let mut bytes = [b'x'; 16];
                bytes[at] = byte;
                assert_eq!(
                    has_zero_byte_wide(u128::from_ne_bytes(bytes)),
                    zero,
                    "{at} {byte}"
                );
            }
        }
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
            assert!(p.value.as_ref().map_or(0, |v| v.capacity()) <= 2 * DEFAULT_MAX_ID_LEN);
            assert!(p.event_type_capacity() <= 2 * DEFAULT_MAX_EVENT_TYPE_LEN);
            p.feed(b"\n\n", |_| {});
        }
        assert_eq!(p.oversized_ids(), 1);
        assert_eq!(p.oversized_event_types(), 1);
    }

    #[test]
    fn oversized_id_split_across_chunks_is_counted_once() {
        let mut p = SseParser::new().max_id_len(4);
        let seen = feed_all(&mut p, &[b"id: 1\n\nid: 12", b"345", b"678\n\n"]);
        assert_eq!(ids(&seen), ["1", "1"]);
        assert!(!seen[1].id_set);
        assert_eq!(p.oversized_ids(), 1);
        // Exactly at the cap, split the same way: kept.
        let seen = feed_all(&mut p, &[b"id: 12", b"34\n\n"]);
        assert_eq!(ids(&seen), ["1234"]);
        assert_eq!(p.oversized_ids(), 1);
    }

    #[test]
    fn split_names_that_only_start_like_a_field_are_ignored() {
        for chunks in [
            &[&b"i"[..], b"ds: 1\n", b"data\n\n"][..],
            &[b"i", b"d\0: 1\n", b"data\n\n"],
            &[b"even", b"ts: x\nid", b"x\n", b"data\n\n"],
            &[b"retr", b"ies: 5\n", b"data\n\n"],
            &[b"dat", b"ax: 1\n\n"],
        ] {
            let mut p = SseParser::new();
            let seen = feed_all(&mut p, chunks);
            let first = &seen[0];
            assert!(!first.id_set, "{chunks:?}");
            assert_eq!(first.ty, "message", "{chunks:?}");
            assert_eq!(first.retry, None, "{chunks:?}");
            assert_eq!(first.event, chunks.len() > 2, "{chunks:?}");
        }
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
    fn line_ends_are_found_at_every_offset() {
        // Exercises the word-at-a-time search: every position, both terminators, long lines.
        for len in 0..200 {
            for eol in [b'\n', b'\r'] {
                let mut line = vec![b'x'; len];
                line.push(eol);
                line.extend_from_slice(b"yy\nzz");
                assert_eq!(find_eol(&line), Some(len), "{len} {eol}");
            }
            // Bytes just around the terminators' values are not terminators.
            let line = vec![0x0B; len];
            assert_eq!(find_eol(&line), None);
            let line = vec![0x8D; len];
            assert_eq!(find_eol(&line), None);
        }
    }

    #[test]
    fn blank_line_at_stream_start_dispatches_nothing_but_counts() {
        let seen = parse(&[b"\n\n"]);
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|s| !s.event && s.id.is_empty()));
    }

    /// What the layer takes from a tracking parser after each chunk: events and IDs recorded
    /// (those repeating the last ID apart), the last event ID, oversized IDs, and whether it is
    /// at a line boundary.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Taken {
        events: u64,
        ids: u64,
        repeated: u64,
        last: Vec<u8>,
        oversized: u64,
        boundary: bool,
        /// Every recorded event (data or an `id`), as a history keeps it: where it ends in the
        /// stream, the last event ID then, whether it set it.
        recorded: Vec<(usize, Vec<u8>, bool)>,
    }

    /// Feeds `chunks` to a tracking parser, with or without `scan_plain` first on each chunk,
    /// and returns what the layer takes after each one.
    fn take(chunks: &[&[u8]], scan: bool, max_id: usize) -> Vec<Taken> {
        let mut parser = SseParser::new().max_id_len(max_id).for_tracking();
        parser.max_event_type_len = 6;
        let mut taken = Taken::default();
        let mut after = Vec::new();
        let mut base = 0;
        for chunk in chunks {
            let mut read = 0;
            if scan {
                let recorded = &mut taken.recorded;
                let scanned = parser.scan_plain::<false, _>(chunk, |end, id, set| {
                    recorded.push((base + end, id.as_slice().to_vec(), set));
                });
                taken.events += scanned.events;
                taken.ids += scanned.ids;
                read = scanned.read;
                // As the layer does: what the LF scan left, read with CRLF lines too once the
                // stream used them.
                if read < chunk.len() && parser.crlf {
                    let recorded = &mut taken.recorded;
                    let scanned = parser.scan_plain::<true, _>(&chunk[read..], |end, id, set| {
                        recorded.push((base + read + end, id.as_slice().to_vec(), set));
                    });
                    taken.events += scanned.events;
                    taken.ids += scanned.ids;
                    read += scanned.read;
                }
            }
            parser.feed(&chunk[read..], |d| {
                if d.is_event() || d.id_set() {
                    taken.recorded.push((
                        base + read + d.chunk_offset(),
                        d.last_event_id_bytes().to_vec(),
                        d.id_set(),
                    ));
                    if d.id_repeated() {
                        taken.repeated += 1;
                    } else {
                        taken.events += 1;
                        taken.ids += u64::from(d.id_set());
                    }
                }
            });
            base += chunk.len();
            taken.last = parser.last_event_id_bytes().to_vec();
            taken.oversized = parser.oversized_ids();
            taken.boundary = parser.at_line_boundary();
            after.push(Taken {
                last: taken.last.clone(),
                recorded: taken.recorded.clone(),
                ..taken
            });
        }
        after
    }

    /// Streams of whole lines with the common fields and, now and then (`rare` is their weight
    /// against ~40 for the common ones), what the fast path leaves to `feed`: CR, empty,
    /// oversized or NUL-holding IDs, `id` without a colon, `retry`, long event types, a byte
    /// order mark. Repeated IDs come up by themselves.
    fn sse_bytes(rare: u32) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        sse_bytes_ending(rare, false)
    }

    /// [`sse_bytes`], its lines ending mostly with CRLF when `crlf` (as sse-starlette, and so
    /// the MCP Python SDK, writes them), now and then with LF or CR alone.
    fn sse_bytes_ending(
        rare: u32,
        crlf: bool,
    ) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        const LONG_DATA: &[u8] = b"data: 0123456789abcdef0123456789abcdef0123456789abcdef\
            0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\
            0123456789abcdef0123456789abcdef0123456789abcdef";
        let field = prop_oneof![
            10 => Just(&b"data: x"[..]),
            2 => Just(&b"data"[..]),
            1 => Just(&b"dat"[..]),
            1 => Just(&b"data:"[..]),
            2 => Just(&b"id: 1"[..]),
            2 => Just(&b"id:2"[..]),
            2 => Just(&b"id: 3456"[..]),
            2 => Just(&b"id: 12345678"[..]),
            2 => Just(&b"id: 87654321"[..]),
            2 => Just(&b"id: 0123456789abcdefXYZ"[..]),
            // 17 to 32 bytes (read as two 16-byte halves): the one above and a twin with the
            // same first 16 bytes, a ULID, the inline buffer's 30 bytes, then 31 and 32 (a
            // heap buffer).
            1 => Just(&b"id: 0123456789abcdefXYW"[..]),
            2 => Just(&b"id: 01HZX3K9Q2V7T8W6Y4R5N0M1PA"[..]),
            1 => Just(&b"id: 0123456789abcdef0123456789ab"[..]),
            1 => Just(&b"id: 0123456789abcdef0123456789abc"[..]),
            1 => Just(&b"id: 0123456789abcdef0123456789abcd"[..]),
            // 33 to 48 bytes (three 16-byte reads): UUIDs differing in the last or the middle
            // third only, 33 and 48 bytes, and 49 past them.
            1 => Just(&b"id: 6f1c2a0e-4b7d-4e21-9a3f-00000000abcd"[..]),
            1 => Just(&b"id: 6f1c2a0e-4b7d-4e21-9a3f-00000000abce"[..]),
            1 => Just(&b"id: 6f1c2a0e-4b7d-4e22-9a3f-00000000abcd"[..]),
            1 => Just(&b"id: 0123456789abcdef0123456789abcdef0"[..]),
            1 => Just(&b"id: 0123456789abcdef0123456789abcdef0123456789ab"[..]),
            1 => Just(&b"id: 0123456789abcdef0123456789abcdef0123456789abc"[..]),
            4 => Just(&b"event: tick"[..]),
            1 => Just(&b"event"[..]),
            2 => Just(&b": comment"[..]),
            1 => Just(&b"other: field"[..]),
            // Longer than the 64 bytes the fast path searches with SSE2 before memchr's
            // general entry point takes over.
            1 => Just(&b"data: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"[..]),
            1 => Just(LONG_DATA),
            8 => Just(&b""[..]),
            rare => Just(&b"id"[..]),
            rare => Just(&b"id:"[..]),
            rare => Just(&b"id: "[..]),
            rare => Just(&b"id: a\0bcdefgh"[..]),
            rare => Just(&b"id: z\0abcdef0123456789abcd"[..]),
            rare => Just(&b"id: 0123456789abcdef01\0"[..]),
            rare => Just(&b"id: 6f1c2a0e-4b7d-4e\0x-9a3f-00000000abcd"[..]),
            rare => Just(&b"idx: 2"[..]),
            rare => Just(&b"event: much-too-long"[..]),
            rare => Just(&b"retry: 10"[..]),
        ];
        let (lf, crlf) = if crlf { (rare, 60) } else { (60, rare) };
        let end = prop_oneof![
            lf => Just(&b"\n"[..]),
            rare => Just(&b"\r"[..]),
            crlf => Just(&b"\r\n"[..]),
        ];
        let line = (field, end).prop_map(|(f, e)| [f, e].concat());
        (
            proptest::bool::weighted(0.1),
            proptest::collection::vec(line, 0..80),
        )
            .prop_map(|(bom, lines)| {
                let mut stream = if bom {
                    b"\xEF\xBB\xBF".to_vec()
                } else {
                    Vec::new()
                };
                stream.extend(lines.concat());
                stream
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// The fast path reads exactly what `feed` would: the same events, IDs, repeats, last
        /// event ID, oversized IDs and line boundary after every chunk, however the stream is
        /// cut.
        #[test]
        fn scan_plain_takes_what_feed_takes(
            stream in proptest::prop_oneof![
                3 => sse_bytes(1),
                1 => sse_bytes(6),
                2 => sse_bytes_ending(1, true),
            ],
            cuts in proptest::collection::vec(0usize..600, 0..8),
            at_blocks in proptest::collection::vec(proptest::bool::weighted(0.8), 64),
            max_id in proptest::prop_oneof![proptest::strategy::Just(8usize), proptest::strategy::Just(1024)],
        ) {
            // Cut anywhere, and at most block boundaries (as servers send events, one a frame).
            let blocks = (2..=stream.len()).filter(|&i| stream[i - 2] == b'\n' && stream[i - 1] == b'\n');
            let mut cuts: Vec<usize> = cuts
                .into_iter()
                .map(|c| c.min(stream.len()))
                .chain(blocks.zip(at_blocks.iter().cycle()).filter(|(_, cut)| **cut).map(|(i, _)| i))
                .collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[at..cut]);
                at = cut;
            }
            proptest::prop_assert_eq!(take(&chunks, true, max_id), take(&chunks, false, max_id));
        }
    }

    #[test]
    fn scan_plain_reads_whole_plain_blocks_and_stops_at_the_first_other() {
        let mut parser = SseParser::new().for_tracking();
        parser.feed(b"", |_| {}); // The start of the stream (no byte order mark) is decided...
        parser.feed(b": start\n", |_| {}); // ...by a first line.
        let chunk: &[u8] =
            b"id: 00000001\nevent: tick\ndata: one\n\ndata: two\n\nid: 2\r\ndata\n\n";
        let mut ends = Vec::new();
        let scanned = parser.scan_plain::<false, _>(chunk, |end, id, set| {
            ends.push((end, id.as_slice().to_vec(), set))
        });
        // Two plain blocks; the third ends a line with CR.
        assert_eq!(
            scanned,
            Scanned {
                read: 47,
                events: 2,
                ids: 1
            }
        );
        assert_eq!(
            &chunk[..scanned.read],
            b"id: 00000001\nevent: tick\ndata: one\n\ndata: two\n\n"
        );
        assert_eq!(parser.last_event_id_bytes(), b"00000001");
        assert_eq!(
            ends,
            [
                (36, b"00000001".to_vec(), true),
                (47, b"00000001".to_vec(), false)
            ]
        );
        // The same ID again: left to `feed`, which reports the repeat.
        assert_eq!(
            parser.scan_plain::<false, _>(b"id: 00000001\ndata: x\n\n", |_, _, _| {}),
            Scanned::default()
        );
    }
}
