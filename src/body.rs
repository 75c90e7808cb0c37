//! [`TrackingBody`]: forwards every frame unchanged while the SSE parser reads the same bytes.

use std::{
    fmt,
    future::Future,
    io::IoSlice,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::{
    sync::mpsc,
    time::{Instant, Sleep},
};

use crate::{
    config::Config,
    heartbeat::Heartbeat,
    history::{Histories, HistoryEvent, Outgoing, StreamHistory},
    metrics as m,
    parser::{Dispatch, SseParser},
    replay::{Replaying, Seam},
    settle::Checkpoints,
    worker::{Attachment, Reserve, TryEnqueueError},
};

/// Most separate chunks one data frame may have for us to read it without copying; a frame made
/// of more (never seen in practice: SSE frames are `Bytes`) stops tracking for its stream.
const MAX_IOVECS: usize = 64;

pin_project! {
    /// The response body of a tracked `text/event-stream` response.
    ///
    /// Every frame of the inner body reaches the client unchanged, in order, with errors and
    /// trailers as they are; the data also feeds an [`SseParser`] that records each event's ID in
    /// the session's slot. Responses that are not event streams pass through with no parsing at
    /// all; event streams without a valid session are parsed only if heartbeats are on.
    ///
    /// While the session is already waiting for its next write, a run of events read one after
    /// the other is handed to the session as one batch (no lock per event): when the upstream
    /// goes idle (the next poll finds nothing ready), when the worker has written the session
    /// (at the next event), when an event repeats the previous ID, and when the body ends or is
    /// dropped. [`WorkerHandle::last_event_id`](crate::worker::WorkerHandle::last_event_id) may
    /// lag the frames a client was given by such a run, never by more than one flush interval
    /// while events flow; the version written with the newest ID is the time the run's first
    /// event was read.
    ///
    /// See [`EventTracking`](crate::EventTracking) for an example.
    ///
    /// The only ways the body differs from the inner one: a data frame may be held for up to the
    /// backpressure timeout when the worker's queue is full at the moment the session turns
    /// dirty, and, when heartbeats are on, comment lines (`:` LF) are inserted at line boundaries
    /// after the configured idle time (also before the upstream's first byte; a byte order mark
    /// that then starts the upstream is dropped, since it would no longer be at the start).
    pub struct TrackingBody<B: Body> {
        // `None` for a response the layer answered itself (replayed from history).
        #[pin]
        inner: Option<B>,
        // `None`: pass-through.
        tracking: Option<Box<StreamState>>,
        // The data of a frame held back while waiting for queue capacity. Boxed: holding is
        // rare, and axum boxes every response body once more, so each byte here is allocated
        // per connection (40 bytes over `axum::body::Body` instead of 64).
        held: Option<Box<B::Data>>,
        // The inner body ended (or failed): it is never polled again.
        ended: bool,
        // The last poll found the upstream idle: the stream state may have gone cold since.
        idle: bool,
    }
}

/// What a stream does with replay.
pub(crate) struct ReplayParts {
    /// The history the stream's events go to.
    producer: Option<Producer>,
    /// Events sent from history before the inner body's (or instead of it).
    replaying: Option<Replaying>,
    /// After a replay: the inner body's events the client already got are dropped.
    seam: Option<Seam>,
    /// For a stream read by a task of its own (detach grace): its frames, for the client.
    relay: Option<mpsc::Receiver<Bytes>>,
}

/// A stream appending its events to a history.
struct Producer {
    histories: Arc<Histories>,
    history: Arc<StreamHistory>,
    /// The upstream ended normally: the history holds the whole stream.
    complete: bool,
    /// A frame's events for the history store, if there is one: kept empty between frames,
    /// with its capacity (up to [`OUTGOING_KEPT`]).
    outgoing: Vec<Outgoing>,
}

/// Capacity a stream keeps for its frames' events to the history store: a frame of more
/// events allocates for them, and gives the room back after.
const OUTGOING_KEPT: usize = 16;

/// One chunk's appends to a history, under its lock.
struct Appending<'a> {
    histories: &'a Histories,
    history: &'a StreamHistory,
    state: crate::history::HistoryGuard<'a, crate::history::State>,
    /// Events for the history store, if there is one (pushed to its outbox at the end).
    outgoing: Option<&'a mut Vec<Outgoing>>,
}

impl Producer {
    fn begin(&mut self) -> Appending<'_> {
        Appending {
            histories: &self.histories,
            history: &self.history,
            state: self.history.lock(),
            outgoing: self.histories.outbox.as_ref().map(|_| &mut self.outgoing),
        }
    }
}

impl Appending<'_> {
    /// An event ends the part `part` of the chunk (its earlier parts came with earlier chunks).
    /// `last_id` is the last event ID after it, `id_set` whether the event set it.
    fn event(&mut self, part: &[u8], last_id: &[u8], id_set: bool) {
        let bounds = self.histories.bounds();
        let histories = self.histories;
        let before = self.state.next_seq();
        self.state
            .append(part, last_id, id_set, bounds, |n| histories.may_grow(n));
        if let Some(outgoing) = &mut self.outgoing
            && self.state.next_seq() > before
            && let Some((bytes, id, seq)) = self.state.newest_for_store()
        {
            outgoing.push(Outgoing::Event(HistoryEvent {
                session: self.history.session.clone(),
                stream: self.history.key.clone(),
                seq,
                id,
                bytes,
                writer: self.history.writer(),
            }));
        }
    }

    /// The chunk ends inside an event: its bytes so far.
    fn end(mut self, rest: &[u8]) {
        let histories = self.histories;
        self.state
            .write(rest, histories.bounds(), |n| histories.may_grow(n));
        let appended = self.state.take_appended();
        drop(self.state);
        if let (Some(outbox), Some(outgoing)) = (&self.histories.outbox, self.outgoing.take()) {
            outbox.push_back(outgoing);
            if outgoing.capacity() > OUTGOING_KEPT {
                *outgoing = Vec::new();
            }
        }
        self.histories.note(appended);
        self.history.wake_followers();
        // Only growth can pass the global cap (and whoever grew checks it).
        if appended.delta > 0
            && let Some(over) = self.histories.over_cap()
        {
            // Finished histories make room first, then the largest detached streams; then this
            // one gives up its oldest.
            self.histories.enforce_cap();
            self.histories.trim_detached();
            if let Some(over) = self.histories.over_cap().map(|o| o.min(over)) {
                let trimmed = self.history.lock().trim(over);
                self.histories.note(trimmed);
            }
            if self.histories.over_cap().is_some() {
                // Even at its floor it does not fit: this stream goes on without a history.
                self.histories.drop_live(self.history);
            }
        }
    }
}

/// What feeding one data frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fed {
    /// Parsed and recorded; nothing to hand to the worker.
    Recorded,
    /// The session just turned dirty: it must be queued.
    TurnedDirty,
    /// The frame is made of more pieces than can be read in place: tracking stops.
    Unreadable,
}

/// Per-stream tracking state, boxed so that untracked bodies stay small.
///
/// In declaration order (`repr(C)`): the parser, then what every data frame reads, then what
/// only rare paths need. On a slow stream (an event every few tens of milliseconds, among
/// thousands of connections) the state is cold at every event, and each cache line it touches
/// is a miss.
#[repr(C)]
pub(crate) struct StreamState {
    parser: SseParser,
    /// With replay: the history this stream appends to, and what it sends from history.
    pub(crate) replay: Option<Box<ReplayParts>>,
    /// Boxed: most streams have none, and every stream's state is kept per connection.
    heartbeat: Option<Box<Heartbeat>>,
    /// With at-least-once resume: the stream's recent IDs, to leave a settled position behind.
    checkpoints: Option<Box<Checkpoints>>,
    /// The stream's hold on its session; `None` for an event stream that only gets heartbeats
    /// (no valid session, or the registry was full).
    session: Option<Attachment>,
    /// Events recorded here and not yet handed to the session's slot.
    batch: Batch,
    // Rare paths only.
    /// The layer's settings: its metrics' labels and the backpressure timeout (one pointer,
    /// where the two took 24 bytes of every stream's state).
    config: Arc<Config>,
    /// Set while a frame is held back for room in the worker's queue (boxed: 8 bytes in every
    /// stream's state, where the wait itself takes 24, for a path taken only when the queue
    /// is full).
    wait: Option<Box<Wait>>,
}

/// A stream's events not yet in its session's slot. While the slot allows it
/// (`Slot::batching`: it is with the worker and its duplicate window is not armed), events are
/// counted here, with no lock and no clock read per event (plain whole events in bulk, with the
/// flag read once per frame: see `SseParser::scan_plain`), and handed over as one
/// (`Slot::publish`, versioned by when the first of them was seen) when the upstream goes
/// idle, when the slot stops allowing it (the worker wrote it, a seam armed its window, an
/// event repeats its ID), and when the stream ends. So a slot lags its stream by at most the
/// events of one unbroken run of ready frames, and never by more than one flush interval
/// while events flow.
#[derive(Debug, Default)]
struct Batch {
    events: u64,
    /// Events with an `id` field among them, saturating: only none, one and more than one
    /// matter (see `Slot::publish`), and a `u32` beside `generation` keeps the batch at 24
    /// bytes.
    ids: u32,
    /// When the first of them was seen (`clock::wall_nanos`).
    seen: u64,
    /// The session's generation then (a batch begun before a forget is dropped).
    generation: u32,
}

impl Batch {
    /// Records one event (`d`) of `session`'s stream; `true` if the session just turned dirty
    /// (the caller must queue it).
    #[inline]
    fn record(&mut self, session: &Attachment, d: &Dispatch<'_>) -> bool {
        let id = d.id_set().then(|| d.last_event_id_bytes());
        if session.batching() && !d.id_repeated() && id.is_none_or(|id| !id.is_empty()) {
            if self.events == 0 {
                self.seen = crate::clock::wall_nanos();
                self.generation = session.generation();
            }
            self.events += 1;
            self.ids = self.ids.saturating_add(u32::from(d.id_set()));
            return false;
        }
        // The batch first, with the newest ID before this event.
        let mut dirty = false;
        if self.events > 0 {
            let newest = if d.id_set() {
                d.previous_id_bytes()
            } else {
                d.last_event_id_bytes()
            };
            dirty = self.publish(session, newest);
        }
        dirty | session.record(id)
    }

    /// Adds `events` events (`ids` of them with an `id` field) that the parser read as plain
    /// blocks while the slot takes batches, as [`record`](Self::record) does one by one.
    #[inline]
    fn add(&mut self, session: &Attachment, events: u64, ids: u64) {
        if events == 0 {
            return;
        }
        if self.events == 0 {
            self.seen = crate::clock::wall_nanos();
            self.generation = session.generation();
        }
        self.events += events;
        self.ids = self
            .ids
            .saturating_add(u32::try_from(ids).unwrap_or(u32::MAX));
    }

    /// Hands the batch (not empty) over; `newest` is the stream's newest ID. `true` if the
    /// session just turned dirty.
    fn publish(&mut self, session: &Attachment, newest: &[u8]) -> bool {
        let Self {
            events,
            ids,
            seen,
            generation,
        } = std::mem::take(self);
        session.publish(
            events,
            (ids > 0).then_some((newest, u64::from(ids))),
            seen,
            generation,
        )
    }
}

/// A stream waiting for room in the worker's queue, at most until its deadline.
struct Wait {
    reserve: Reserve,
    deadline: Pin<Box<Sleep>>,
}

/// What to do with an upstream frame once the parser has read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// Send it on.
    Send,
    /// Hold its data back until the session is queued or parked.
    Hold,
    /// Send it on, and stop tracking the stream.
    Untrack,
}

impl StreamState {
    pub(crate) fn new(
        config: Arc<Config>,
        session: Option<Attachment>,
        heartbeat: Option<Duration>,
        settle: Option<Duration>,
    ) -> Self {
        let checkpoints = settle.zip(session.as_ref()).map(|(settle, session)| {
            let start = session.slot().last_event_id();
            Box::new(Checkpoints::new(settle, start, Instant::now()))
        });
        Self {
            parser: SseParser::new()
                .max_id_len(config.max_id_len)
                .for_tracking(),
            session,
            heartbeat: heartbeat.map(|every| Box::new(Heartbeat::new(every))),
            config,
            checkpoints,
            replay: None,
            wait: None,
            batch: Batch::default(),
        }
    }

    /// Sets what the stream does with replay: append to `producer`'s history, send `replaying`
    /// first.
    pub(crate) fn with_replay(
        mut self,
        producer: Option<(Arc<Histories>, Arc<StreamHistory>)>,
        replaying: Option<Replaying>,
    ) -> Self {
        if producer.is_some() || replaying.is_some() {
            self.replay = Some(Box::new(ReplayParts {
                producer: producer.map(|(histories, history)| Producer {
                    histories,
                    history,
                    complete: false,
                    outgoing: Vec::new(),
                }),
                replaying,
                seam: None,
                relay: None,
            }));
        }
        self
    }

    /// Makes this the client's side of a stream read by a task of its own: its frames come
    /// through `relay` (after what `replaying` sends first).
    pub(crate) fn relayed(
        mut self,
        replaying: Option<Replaying>,
        relay: mpsc::Receiver<Bytes>,
    ) -> Self {
        self.replay = Some(Box::new(ReplayParts {
            producer: None,
            replaying,
            seam: None,
            relay: Some(relay),
        }));
        self
    }

    /// Reads an upstream frame (`store`: into the history too; not for replayed bytes) and
    /// decides what to do with it. The frame is read and changed in place: on the per-frame
    /// path it is never moved (a frame is as large as a `HeaderMap`, and each move of the
    /// poll result cost more than the rest of the pass-through).
    #[inline]
    fn forward<D>(&mut self, frame: &mut Frame<D>, store: bool) -> Forward
    where
        D: Buf + From<Bytes>,
    {
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.reset();
        }
        let Some(data) = frame.data_ref() else {
            return Forward::Send;
        };
        let fed = self.feed_buf(data, store);
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.forward(frame);
        }
        match fed {
            Fed::Recorded => Forward::Send,
            Fed::Unreadable => {
                tracing::warn!(
                    session = ?self.session.as_ref().map(Attachment::session),
                    "data frame in more than {MAX_IOVECS} pieces: stream no longer tracked"
                );
                Forward::Untrack
            }
            Fed::TurnedDirty => self.enqueue(),
        }
    }

    /// The session just turned dirty: queue it, or, if the queue is full, start waiting for
    /// room (at most for the backpressure timeout) and hold the frame back.
    #[cold]
    fn enqueue(&mut self) -> Forward {
        let Some(session) = &self.session else {
            return Forward::Send;
        };
        match session.try_enqueue() {
            Ok(()) | Err(TryEnqueueError::Closed) => Forward::Send,
            Err(TryEnqueueError::Full) => {
                self.config
                    .labels()
                    .counter(m::BACKPRESSURE_WAITS)
                    .increment(1);
                self.wait = Some(Box::new(Wait {
                    reserve: session.reserve(),
                    deadline: Box::pin(tokio::time::sleep(self.config.backpressure_timeout)),
                }));
                Forward::Hold
            }
        }
    }

    /// Waits for queue room or the backpressure deadline; on the deadline, parks the session in
    /// the worker's overflow set (the worker writes it on its next tick).
    fn poll_backpressure(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let (Some(wait), Some(session)) = (&mut self.wait, &self.session) else {
            return Poll::Ready(());
        };
        match wait.reserve.as_mut().poll(cx) {
            Poll::Ready(Ok(permit)) => session.send(permit),
            Poll::Ready(Err(_closed)) => {
                self.config
                    .labels()
                    .counter(m::DROPPED_AFTER_SHUTDOWN)
                    .increment(1);
            }
            Poll::Pending => {
                if wait.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                session.park();
            }
        }
        self.wait = None;
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.reset();
        }
        Poll::Ready(())
    }

    /// Reads a field on each cache line that the next data frame touches (the parser's, this
    /// state's, the slot's flag), all at once, before the upstream is polled. On a slow stream
    /// (an event every few tens of milliseconds, among thousands of connections) all of them
    /// have left the cache by then: so their misses overlap with each other and with the
    /// upstream's work instead of coming one after the other as the frame is read.
    #[inline]
    fn warm(&self) {
        self.parser.warm();
        std::hint::black_box((
            self.replay.is_some(),
            self.heartbeat.is_some(),
            self.checkpoints.is_some(),
            self.session.as_ref().map(Attachment::batching),
            self.batch.events,
        ));
    }

    /// Whole events sent from history: the stream's position moves to the last of them (its ID
    /// known from the history, so the bytes are parsed only when heartbeats need the line
    /// boundaries). Never waits: a position that turns dirty is queued or parked.
    fn replayed(&mut self, bytes: &[u8], last_id: Option<&str>) {
        self.publish_batch();
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.reset();
            self.parser.feed(bytes, |_| {});
        }
        if let (Some(session), Some(id)) = (&self.session, last_id)
            && session.record(Some(id.as_bytes()))
        {
            session.enqueue_or_park();
        }
    }

    /// Hands the events batched so far to the session's slot (see [`Batch`]). Never waits: a
    /// session that turns dirty is queued or parked.
    #[inline]
    fn publish_batch(&mut self) {
        if self.batch.events == 0 {
            return;
        }
        if let Some(session) = &self.session
            && self
                .batch
                .publish(session, self.parser.last_event_id_bytes())
        {
            session.enqueue_or_park();
        }
    }

    /// The upstream ended normally: the batch goes to the slot, and the parser drops an
    /// unfinished block.
    fn finish(&mut self) {
        self.publish_batch();
        self.parser.finish();
    }

    /// The upstream is idle: the batch goes to the slot, and a heartbeat, when they are on and
    /// one is due.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        self.publish_batch();
        match &mut self.heartbeat {
            Some(heartbeat) => heartbeat.poll(cx, &self.parser, self.config.labels()),
            None => Poll::Pending,
        }
    }

    /// Parses one chunk and records its events (and, when `store`, appends them to the
    /// stream's history). Returns `true` if the session just turned dirty and must be queued.
    /// Hot path: no allocation, one short lock per event.
    fn feed(&mut self, chunk: &[u8], store: bool) -> bool {
        let Self {
            parser,
            session,
            checkpoints,
            replay,
            batch,
            ..
        } = self;
        let producer = replay
            .as_mut()
            .and_then(|r| r.producer.as_mut())
            .filter(|_| store);
        let Some(session) = session.as_ref() else {
            // Heartbeats only: the parser just follows the line boundaries.
            parser.feed(chunk, |_| {});
            return false;
        };
        let mut dirty = false;
        match (checkpoints, producer) {
            (None, None) => {
                // Lines that end with CRLF: plain whole events in bulk as well, once the
                // stream used CRLF (the scan in `feed_buf` reads LF lines only).
                let mut chunk = chunk;
                if parser.crlf() && session.batching() {
                    let scanned = parser.scan_crlf(chunk);
                    batch.add(session, scanned.events, scanned.ids);
                    chunk = &chunk[scanned.read..];
                    if chunk.is_empty() {
                        return false;
                    }
                }
                parser.feed(chunk, |d| {
                    if d.is_event() || d.id_set() {
                        dirty |= batch.record(session, d);
                    }
                });
            }
            (None, Some(producer)) => {
                // Replay without checkpoints, the usual case: a closure with nothing else in it.
                // Plain whole events first, while the slot takes batches (see `scan`), under
                // the same lock.
                let mut history = producer.begin();
                let mut start = 0;
                let mut read = 0;
                if session.batching() {
                    let scanned = parser.scan_plain::<false, _>(chunk, |end, last_id, id_set| {
                        history.event(&chunk[start..end], last_id.as_slice(), id_set);
                        start = end;
                    });
                    batch.add(session, scanned.events, scanned.ids);
                    read = scanned.read;
                }
                if read < chunk.len() {
                    parser.feed(&chunk[read..], |d| {
                        if d.is_event() || d.id_set() {
                            dirty |= batch.record(session, d);
                            let end = read + d.chunk_offset();
                            history.event(&chunk[start..end], d.last_event_id_bytes(), d.id_set());
                            start = end;
                        }
                    });
                }
                history.end(&chunk[start..]);
            }
            (checkpoints, producer) => {
                dirty = Self::feed_keeping(parser, session, batch, checkpoints, producer, chunk);
            }
        }
        dirty
    }

    /// [`feed`](Self::feed) with checkpoints (and perhaps a history) to keep: out of line,
    /// since each way of feeding carries its own copy of the parser's loop and this one is
    /// rarer (checkpoints come with at-least-once resume).
    #[inline(never)]
    fn feed_keeping(
        parser: &mut SseParser,
        session: &Attachment,
        batch: &mut Batch,
        checkpoints: &mut Option<Box<Checkpoints>>,
        producer: Option<&mut Producer>,
        chunk: &[u8],
    ) -> bool {
        let mut dirty = false;
        let mut start = 0;
        let mut history = producer.map(Producer::begin);
        parser.feed(chunk, |d| {
            if d.is_event() || d.id_set() {
                let id = d.id_set().then(|| d.last_event_id_bytes());
                dirty |= batch.record(session, d);
                if let (Some(id), Some(checkpoints)) = (id, checkpoints.as_mut()) {
                    checkpoints.record(&String::from_utf8_lossy(id), Instant::now());
                }
                if let Some(history) = &mut history {
                    history.event(
                        &chunk[start..d.chunk_offset()],
                        d.last_event_id_bytes(),
                        d.id_set(),
                    );
                    start = d.chunk_offset();
                }
            }
        });
        if let Some(history) = history {
            history.end(&chunk[start..]);
        }
        dirty
    }

    /// While the stream's slot takes batches (and no history or checkpoint needs each event),
    /// counts the plain whole events at the start of `chunk` in bulk (see
    /// [`SseParser::scan_plain`]) and returns the rest, for [`feed`](Self::feed). A stream with
    /// a history scans in `feed`, under the history's one lock for the frame.
    #[inline(always)]
    fn scan<'c>(&mut self, chunk: &'c [u8], store: bool) -> &'c [u8] {
        let Self {
            parser,
            session,
            checkpoints,
            replay,
            batch,
            ..
        } = self;
        let Some(session) = session.as_ref() else {
            return chunk;
        };
        if checkpoints.is_some()
            || (store && replay.as_ref().is_some_and(|r| r.producer.is_some()))
            || !session.batching()
        {
            return chunk;
        }
        let scanned = parser.scan_plain::<false, _>(chunk, |_, _, _| {});
        batch.add(session, scanned.events, scanned.ids);
        &chunk[scanned.read..]
    }

    /// Feeds a data frame to the parser.
    fn feed_buf<D: Buf>(&mut self, data: &D, store: bool) -> Fed {
        let chunk = data.chunk();
        let dirty = if chunk.len() == data.remaining() {
            let rest = self.scan(chunk, store);
            !rest.is_empty() && self.feed(rest, store)
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = data.chunks_vectored(&mut slices);
            let seen: usize = slices[..n].iter().map(|s| s.len()).sum();
            if seen != data.remaining() {
                return Fed::Unreadable;
            }
            let mut dirty = false;
            for slice in &slices[..n] {
                dirty |= self.feed(slice, store);
            }
            dirty
        };
        // Read first, taken only when there are some: no store per frame.
        if self.parser.oversized_ids() != 0 {
            self.config
                .labels()
                .counter(m::OVERSIZED_IDS)
                .increment(self.parser.take_oversized_ids());
        }
        if dirty {
            Fed::TurnedDirty
        } else {
            Fed::Recorded
        }
    }
}

/// Reads a stream's upstream in a task of its own (replay with a detach grace): every frame is
/// tracked and kept in the history, and relayed to the client while it is there. When the
/// client goes away, reading goes on for up to `grace` (if the cap of detached streams allows),
/// so that a reconnect gets the rest from history. An upstream error ends the client's stream
/// (and the reading); trailers are not relayed.
pub(crate) fn spawn_producer<B>(
    body: B,
    mut state: StreamState,
    seam: Option<Seam>,
    relay: mpsc::Sender<Bytes>,
    histories: Arc<Histories>,
) where
    B: Body + Send + 'static,
    B::Data: From<Bytes> + Send,
    B::Error: Send,
{
    let grace = histories.config.detach_grace;
    let history = state
        .replay
        .as_ref()
        .and_then(|r| r.producer.as_ref())
        .map(|p| p.history.clone());
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let mut seam = seam;
        let mut relay = Some(relay);
        // When reading on without a client must stop.
        let mut deadline: Option<Instant> = None;
        let mut expired = false;
        loop {
            let polled = match (&relay, deadline) {
                (Some(tx), _) => {
                    tokio::select! {
                        polled = std::future::poll_fn(|cx| poll_publishing(body.as_mut(), &mut state, cx)) => polled,
                        () = tx.closed() => {
                            relay = None;
                            if !histories.try_detach(history.as_ref()) {
                                break;
                            }
                            deadline = Some(Instant::now() + grace);
                            continue;
                        }
                    }
                }
                (None, Some(at)) => match tokio::time::timeout_at(
                    at,
                    std::future::poll_fn(|cx| poll_publishing(body.as_mut(), &mut state, cx)),
                )
                .await
                {
                    Ok(polled) => polled,
                    Err(_) => {
                        expired = true;
                        break;
                    }
                },
                (None, None) => break,
            };
            let mut frame = match polled {
                Some(Ok(frame)) => frame,
                Some(Err(_)) => break,
                None => {
                    state.finish();
                    if let Some(producer) = state.replay.as_mut().and_then(|r| r.producer.as_mut())
                    {
                        producer.complete = true;
                    }
                    break;
                }
            };
            if let Some(filter) = &mut seam
                && let Some(data) = frame.data_mut()
            {
                let chunk = data.copy_to_bytes(data.remaining());
                let (kept, passed) = filter.filter(&chunk);
                if passed {
                    seam = None;
                }
                if kept.is_empty() {
                    continue;
                }
                frame = Frame::data(B::Data::from(kept));
            }
            if state.forward(&mut frame, true) == Forward::Hold {
                std::future::poll_fn(|cx| state.poll_backpressure(cx)).await;
            }
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers: not relayed
            };
            if let Some(tx) = &relay {
                let bytes = data.copy_to_bytes(data.remaining());
                if tx.send(bytes).await.is_err() {
                    relay = None;
                    if !histories.try_detach(history.as_ref()) {
                        break;
                    }
                    deadline = Some(Instant::now() + grace);
                }
            }
        }
        if deadline.is_some() {
            histories.end_detached(expired, history.as_ref());
        }
        // Dropping the state releases the history (complete or not) and the position.
        drop(state);
    });
}

/// What a body's poll yields.
type FrameResult<B> = Result<Frame<<B as Body>::Data>, <B as Body>::Error>;

/// Polls the upstream of a stream read by a task of its own; when it is idle, the stream's
/// batch goes to the slot.
fn poll_publishing<B: Body>(
    body: Pin<&mut B>,
    state: &mut StreamState,
    cx: &mut Context<'_>,
) -> Poll<Option<FrameResult<B>>> {
    let polled = body.poll_frame(cx);
    if polled.is_pending() {
        state.publish_batch();
    }
    polled
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.publish_batch();
        // Dropped while a frame waited for queue room (the client went away): the slot is
        // already marked queued, so it must reach the worker now or it would never be written.
        // (Then the attachment drops: the stream leaves the session.)
        if let Some(session) = &self.session
            && self.wait.take().is_some()
        {
            session.enqueue_or_park();
        }
        if let Some(producer) = self.replay.as_mut().and_then(|r| r.producer.take()) {
            producer
                .histories
                .release(&producer.history, producer.complete);
        }
        // At-least-once: leave behind the position settled before the end, not the newest.
        if let (Some(session), Some(checkpoints)) = (&self.session, &self.checkpoints)
            && let Some(newest) = checkpoints.newest()
        {
            session.settle(newest, checkpoints.settled(Instant::now()));
        }
    }
}

impl fmt::Debug for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamState")
            .field("session", &self.session.as_ref().map(Attachment::session))
            .field("parser", &self.parser)
            .finish_non_exhaustive()
    }
}

impl<B: Body> TrackingBody<B> {
    /// A body that passes `inner` through untouched.
    pub(crate) fn passthrough(inner: B) -> Self {
        Self {
            inner: Some(inner),
            tracking: None,
            held: None,
            ended: false,
            idle: false,
        }
    }

    pub(crate) fn tracked(inner: B, tracking: StreamState) -> Self {
        Self {
            inner: Some(inner),
            tracking: Some(crate::reserve::boxed(tracking)),
            held: None,
            ended: false,
            idle: false,
        }
    }

    /// A body the layer answers with itself: events from a history (then its end), or nothing.
    pub(crate) fn answered(tracking: Option<StreamState>) -> Self {
        Self {
            inner: None,
            ended: tracking.is_none(),
            tracking: tracking.map(crate::reserve::boxed),
            held: None,
            idle: false,
        }
    }

    /// Whether this body records its stream's event IDs (an event stream without a valid session
    /// may still get heartbeats, but is not tracked).
    pub fn is_tracked(&self) -> bool {
        // A stream read by a task of its own (detach grace) is tracked there.
        self.tracking.as_ref().is_some_and(|t| {
            t.session.is_some() || t.replay.as_ref().is_some_and(|r| r.relay.is_some())
        })
    }

    /// The inner body; `None` for a response the layer answered itself from history.
    pub fn get_ref(&self) -> Option<&B> {
        self.inner.as_ref()
    }

    /// The inner body, mutably; `None` for a response the layer answered itself from history.
    pub fn get_mut(&mut self) -> Option<&mut B> {
        self.inner.as_mut()
    }

    /// Consumes the wrapper and returns the inner body (a held frame, if any, is lost); `None`
    /// for a response the layer answered itself from history.
    pub fn into_inner(self) -> Option<B> {
        self.inner
    }
}

/// An untracked body around the inner body's default, so that `TrackingBody` fits layers that
/// need `ResBody: Default` (tower-http's `TimeoutLayer`, `CorsLayer`,
/// `ValidateRequestHeaderLayer`).
impl<B: Body + Default> Default for TrackingBody<B> {
    fn default() -> Self {
        Self::passthrough(B::default())
    }
}

impl<B> fmt::Debug for TrackingBody<B>
where
    B: Body + fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackingBody")
            .field("inner", &self.inner)
            .field("tracking", &self.tracking)
            .field("holding_frame", &self.held.is_some())
            .finish()
    }
}

impl<B> Body for TrackingBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if *this.ended {
            // Some bodies panic when polled after their end (an unfused stream under a
            // compression layer, say): the end is final here whatever the inner body does.
            return Poll::Ready(None);
        }
        let Some(tracking) = this.tracking.as_mut() else {
            let Some(inner) = this.inner.as_pin_mut() else {
                *this.ended = true;
                return Poll::Ready(None);
            };
            let polled = ready!(inner.poll_frame(cx));
            *this.ended = !matches!(polled, Some(Ok(_)));
            return Poll::Ready(polled);
        };
        if this.held.is_none() {
            // Events from history come first (or alone, for a response answered from it).
            if let Some(parts) = tracking.replay.as_mut()
                && let Some(replaying) = parts.replaying.as_mut()
            {
                match replaying.poll_next(cx) {
                    Poll::Ready(Some((bytes, last_id))) => {
                        tracking.replayed(&bytes, last_id.as_deref());
                        return Poll::Ready(Some(Ok(Frame::data(B::Data::from(bytes)))));
                    }
                    Poll::Ready(None) => {
                        parts.seam = replaying.seam.take();
                        parts.replaying = None;
                    }
                    Poll::Pending => {
                        return tracking
                            .poll_heartbeat(cx)
                            .map(|comment| Some(Ok(Frame::data(comment.into()))));
                    }
                }
            }
        }
        if std::mem::take(this.idle) {
            tracking.warm();
        }
        while this.held.is_none() {
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                // Relayed from the task that reads the upstream, or answered from history (then
                // over once the replay is).
                if let Some(relay) = tracking.replay.as_mut().and_then(|r| r.relay.as_mut()) {
                    match relay.poll_recv(cx) {
                        Poll::Ready(Some(bytes)) => {
                            let mut frame = Frame::data(B::Data::from(bytes));
                            if tracking.forward(&mut frame, false) != Forward::Hold {
                                return Poll::Ready(Some(Ok(frame)));
                            }
                            match frame.into_data() {
                                Ok(data) => *this.held = Some(Box::new(data)),
                                Err(frame) => return Poll::Ready(Some(Ok(frame))),
                            }
                            break;
                        }
                        Poll::Ready(None) => {}
                        Poll::Pending => {
                            return tracking
                                .poll_heartbeat(cx)
                                .map(|comment| Some(Ok(Frame::data(comment.into()))));
                        }
                    }
                }
                *this.tracking = None;
                *this.ended = true;
                return Poll::Ready(None);
            };
            // The poll result is returned as it came whenever possible: the frame is read and
            // changed in place, never moved on the per-frame path.
            let mut polled = inner.poll_frame(cx);
            let frame = match &mut polled {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    tracking.finish();
                    if let Some(producer) =
                        tracking.replay.as_mut().and_then(|r| r.producer.as_mut())
                    {
                        producer.complete = true;
                    }
                    // The stream is over: its session is released now, not when the body drops.
                    *this.tracking = None;
                    *this.ended = true;
                    return polled;
                }
                Poll::Ready(Some(Err(_))) => {
                    *this.tracking = None;
                    *this.ended = true;
                    return polled;
                }
                Poll::Pending => {
                    *this.idle = true;
                    return tracking
                        .poll_heartbeat(cx)
                        .map(|comment| Some(Ok(Frame::data(comment.into()))));
                }
            };
            // After a replay, the inner body's events the client already got are dropped.
            if let Some(parts) = tracking.replay.as_mut()
                && let Some(seam) = parts.seam.as_mut()
                && let Some(data) = frame.data_mut()
            {
                let chunk = data.copy_to_bytes(data.remaining());
                let (kept, passed) = seam.filter(&chunk);
                if passed {
                    parts.seam = None;
                }
                if kept.is_empty() {
                    continue;
                }
                *frame = Frame::data(B::Data::from(kept));
            }
            match tracking.forward(frame, true) {
                Forward::Send => return polled,
                Forward::Untrack => {
                    *this.tracking = None;
                    return polled;
                }
                Forward::Hold => {
                    if let Poll::Ready(Some(Ok(frame))) = polled {
                        match frame.into_data() {
                            Ok(data) => *this.held = Some(Box::new(data)),
                            Err(frame) => return Poll::Ready(Some(Ok(frame))),
                        }
                    }
                }
            }
        }
        // A frame held while the worker's queue is full: released once the session is queued or
        // parked, whichever comes first.
        ready!(tracking.poll_backpressure(cx));
        Poll::Ready(this.held.take().map(|data| Ok(Frame::data(*data))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
            || (self.held.is_none()
                && self.inner.as_ref().is_some_and(Body::is_end_stream)
                && self
                    .tracking
                    .as_ref()
                    .is_none_or(|t| t.replay.as_ref().is_none_or(|r| r.replaying.is_none())))
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            return SizeHint::with_exact(0);
        }
        let Some(inner) = self.inner.as_ref().map(Body::size_hint) else {
            return SizeHint::new();
        };
        match &self.tracking {
            // Heartbeats and replays add bytes, a seam drops some: keep the lower bound (only
            // without a seam), drop the upper one.
            Some(t)
                if t.replay
                    .as_ref()
                    .is_some_and(|r| r.seam.is_some() || r.replaying.is_some()) =>
            {
                SizeHint::new()
            }
            Some(t) if t.heartbeat.is_some() => {
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower());
                hint
            }
            _ => inner,
        }
    }
}
