//! Replay at the layer, on the request path: where a request with `Last-Event-ID` goes
//! ([`route`]), and the parts of a response that come from history: [`Replaying`] (events read
//! from a stream's history, up to a point or following its live tail) and [`Seam`] (the inner
//! body's events that the client already got from history, dropped).

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};

use crate::{
    SessionId, StreamKey,
    config::Config,
    history::{
        Histories, HistoryEvent, HistoryPage, HistoryStore, Lookup, SSE_REPLAY, StoredPosition,
        StreamEnd, StreamHistory, UnknownId,
    },
    metrics as m,
    parser::SseParser,
    resume::LAST_EVENT_ID,
    store::StoreError,
};

/// Most bytes read from a history at once.
const READ_LIMIT: usize = 64 * 1024;

/// What replay did with a request's `Last-Event-ID` (the `sse-replay` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Replayed,
    Gap,
    Unknown,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::Gap => "gap",
            Self::Unknown => "unknown",
        }
    }

    pub(crate) fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// Where a request goes.
pub(crate) enum Route {
    /// To the wrapped service, as it is; `outcome` when a `Last-Event-ID` was looked up.
    Call(Option<Outcome>),
    /// To the wrapped service with `Last-Event-ID` set to the newest replayed ID; its response
    /// is sent after `replay`, without the events the client got from it (the seam).
    CallAfter(Box<Replaying>),
    /// Answered here: the wrapped service is not called.
    Answer(Box<Answer>),
    /// Not in memory: to be looked up in the history store first.
    Locate(Locate),
}

/// A response the layer makes itself.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    /// The events to send, from a history; `None`: an empty body.
    pub(crate) replay: Option<Replaying>,
}

/// Decides where a request of a known session and stream goes, from its `Last-Event-ID` (the
/// client's or filled in by resume). Sets the header the wrapped service sees when the request
/// goes on after a replay.
pub(crate) fn route<B>(
    config: &Config,
    histories: &Arc<Histories>,
    session: &SessionId,
    key: &StreamKey,
    req: &mut Request<B>,
) -> Route {
    let Some(id) = req
        .headers()
        .get(&LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Route::Call(None);
    };
    let labels = config.labels();
    let (history, after, outcome) = match histories.lookup(session, key, &id, req.headers()) {
        Lookup::Found(history, seq) => (history, Some(seq), Outcome::Replayed),
        Lookup::TooOld(history) => match &histories.config.unknown_id {
            UnknownId::Gap => (history, None, Outcome::Gap),
            UnknownId::PassThrough => {
                labels
                    .counter_with(m::REPLAYS, "outcome", "gap")
                    .increment(1);
                return Route::Call(Some(Outcome::Gap));
            }
            UnknownId::Status(status) => {
                labels
                    .counter_with(m::REPLAYS, "outcome", "gap")
                    .increment(1);
                return Route::Answer(Box::new(status_answer(*status, Outcome::Gap)));
            }
        },
        Lookup::Unknown => {
            if let Some(store) = &histories.config.store {
                // Not in this process's memory: perhaps in the history store.
                return Route::Locate(locate(store.clone(), histories.clone(), session, id));
            }
            return unknown(histories);
        }
    };
    labels
        .counter_with(m::REPLAYS, "outcome", outcome.as_str())
        .increment(1);
    let st = history.lock();
    let gap = (outcome == Outcome::Gap).then(|| {
        let oldest = st.id_at(st.first_seq()).unwrap_or_default();
        Bytes::from(format!("event: gap\ndata: {oldest}\n\n"))
    });
    let next = st.next_seq();
    let pending = after.map_or(next > st.first_seq(), |a| a + 1 < next);
    if st.producers > 0 {
        // Its producer runs in this process: follow it, without calling the service again.
        let headers = answer_headers(&st.head, outcome);
        drop(st);
        let replay = Replaying::new(history, after, None, gap);
        return Route::Answer(Box::new(Answer {
            status: StatusCode::OK,
            headers,
            replay: Some(replay),
        }));
    }
    if st.complete && pending {
        // The whole stream is here: send the rest, and end where it ended.
        let headers = answer_headers(&st.head, outcome);
        drop(st);
        let replay = Replaying::new(history, after, Some(next), gap);
        return Route::Answer(Box::new(Answer {
            status: StatusCode::OK,
            headers,
            replay: Some(replay),
        }));
    }
    // Cut short (or complete and the client has it all): the service goes on after the newest
    // event the client gets from here.
    let newest = if pending { st.id_at(next - 1) } else { None };
    // Every retained event up to the newest is one the client has (before the ID, or replayed).
    let mut seam = HashSet::new();
    st.for_each_id(|id| {
        seam.insert(histories.hash(id));
    });
    drop(st);
    if let Some(newest) = newest
        && let Ok(value) = HeaderValue::from_str(&newest)
    {
        req.headers_mut().insert(LAST_EVENT_ID.clone(), value);
    }
    let mut replay = Replaying::new(history, after, Some(next), gap);
    replay.outcome = Some(outcome);
    replay.seam = Some(Seam::new(seam, histories.clone()));
    Route::CallAfter(Box::new(replay))
}

/// An ID in no history: counted, and answered by the policy.
pub(crate) fn unknown(histories: &Histories) -> Route {
    histories
        .labels
        .counter_with(m::REPLAYS, "outcome", "unknown")
        .increment(1);
    match &histories.config.unknown_id {
        UnknownId::Status(status) => {
            Route::Answer(Box::new(status_answer(*status, Outcome::Unknown)))
        }
        _ => Route::Call(Some(Outcome::Unknown)),
    }
}

/// The history store's answer for an ID not in memory.
pub(crate) enum Located {
    /// Found: replay this, then the service goes on after `newest`.
    Found(Box<Replaying>, Option<String>),
    /// Found, and answered from the store (the rest of a complete stream, or a stream still
    /// produced elsewhere, followed).
    Answer(Box<Answer>),
    /// In no history.
    NotFound,
}

/// Looking an ID up in the history store, and reading what follows it.
pub(crate) type Locate = Pin<Box<dyn Future<Output = Located> + Send>>;

/// Pages read from the history store for one reconnect, at most.
const STORE_PAGES: usize = 16;

fn locate(
    store: Arc<dyn HistoryStore>,
    histories: Arc<Histories>,
    session: &SessionId,
    id: String,
) -> Locate {
    let session = session.clone();
    Box::pin(async move {
        let Some(found) = locate_waiting(&*store, &histories, &session, &id).await else {
            return Located::NotFound;
        };
        let mut after = found.seq;
        let mut end = found.end;
        let mut bytes = BytesMut::new();
        let mut seam = HashSet::from([histories.hash(id.as_bytes())]);
        let mut newest = None;
        for _ in 0..STORE_PAGES {
            let page = match store
                .read_after(&session, &found.stream, after, histories.config.max_bytes)
                .await
            {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "history store read failed: replay cut short");
                    break;
                }
            };
            end = page.end;
            let Some(last) = page.events.last() else {
                break;
            };
            after = last.seq;
            for id in concat(&page.events, &mut bytes) {
                seam.insert(histories.hash(id.as_bytes()));
                newest = Some(id.to_string());
            }
        }
        histories
            .labels
            .counter_with(m::REPLAYS, "outcome", "replayed")
            .increment(1);
        let mut replaying = Replaying {
            history: None,
            after: None,
            until: None,
            first: (!bytes.is_empty()).then(|| bytes.freeze()),
            wait: None,
            seam: None,
            outcome: Some(Outcome::Replayed),
            store_newest: newest.clone(),
            store_tail: None,
        };
        match end {
            // Still produced elsewhere (another replica): follow it through the store, without
            // calling the service.
            StreamEnd::Open => {
                replaying.store_tail = Some(StoreTail {
                    store,
                    session,
                    stream: found.stream,
                    after,
                    limit: histories.config.max_bytes,
                    next: None,
                });
                Located::Answer(Box::new(store_answer(replaying)))
            }
            // Complete: the rest of it, and the end, without the service.
            StreamEnd::Complete if replaying.first.is_some() => {
                Located::Answer(Box::new(store_answer(replaying)))
            }
            // Cut short (or complete, and the client has it all): the service goes on.
            _ => {
                replaying.seam = Some(Seam::new(seam, histories.clone()));
                Located::Found(Box::new(replaying), newest)
            }
        }
    })
}

/// Looks `id` up in the history store. Not there while a writer is producing one of the
/// session's streams (on another replica, whose worker writes once per flush interval): looked
/// up again for up to two flush intervals before it counts as unknown. The store failing (Redis
/// restarting, say): tried again for up to [`STORE_RETRY`], then unknown.
async fn locate_waiting(
    store: &dyn HistoryStore,
    histories: &Histories,
    session: &SessionId,
    id: &str,
) -> Option<StoredPosition> {
    let start = tokio::time::Instant::now();
    let behind = start + histories.flush_interval * 2;
    let failing = start + STORE_RETRY;
    let step = (histories.flush_interval / 2).clamp(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(100),
    );
    let mut producing = None;
    loop {
        let deadline = match store.locate(session, id).await {
            Ok(Some(found)) => return Some(found),
            Ok(None) => {
                if producing.is_none() {
                    producing = Some(store.is_producing(session).await.unwrap_or(false));
                }
                if producing == Some(false) {
                    return None;
                }
                behind
            }
            Err(error) => {
                tracing::warn!(%error, "history store lookup failed: trying again");
                failing
            }
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            tracing::warn!("history store lookup gave up: answered as unknown");
            return None;
        }
        tokio::time::sleep(step.min(deadline - now)).await;
    }
}

/// How long a failing history store is tried again for one lookup.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_secs(3);

/// Appends the events' bytes to `bytes`; returns the IDs they set, in order.
fn concat<'e>(events: &'e [HistoryEvent], bytes: &mut BytesMut) -> Vec<&'e str> {
    let mut ids = Vec::new();
    for event in events {
        bytes.extend_from_slice(&event.bytes);
        ids.extend(event.id.as_deref());
    }
    ids
}

/// A response answered from the history store: an event stream (the store keeps no response
/// heads).
fn store_answer(replaying: Replaying) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(SSE_REPLAY.clone(), Outcome::Replayed.header());
    Answer {
        status: StatusCode::OK,
        headers,
        replay: Some(replaying),
    }
}

/// Following a stream produced elsewhere through the history store: read what is there, wait
/// for more, until it ends.
struct StoreTail {
    store: Arc<dyn HistoryStore>,
    session: SessionId,
    stream: StreamKey,
    /// The `seq` of the last event sent.
    after: u64,
    limit: usize,
    next: Option<Pin<Box<dyn Future<Output = Tail> + Send>>>,
}

/// What the store said next.
enum Tail {
    Page(Result<HistoryPage, StoreError>),
    Waited,
}

/// How long one wait for a stream's tail lasts before reading again.
const TAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

impl StoreTail {
    fn read(&mut self) {
        let (store, session, stream) = (
            self.store.clone(),
            self.session.clone(),
            self.stream.clone(),
        );
        let (after, limit) = (self.after, self.limit);
        self.next = Some(Box::pin(async move {
            Tail::Page(store.read_after(&session, &stream, after, limit).await)
        }));
    }

    fn wait(&mut self) {
        let (store, session, stream) = (
            self.store.clone(),
            self.session.clone(),
            self.stream.clone(),
        );
        let after = self.after;
        self.next = Some(Box::pin(async move {
            let _ = store.wait_after(&session, &stream, after, TAIL_WAIT).await;
            Tail::Waited
        }));
    }

    /// The next events (whole, with the newest ID they set), or `None` once the stream ended
    /// (or the store failed: the client reconnects).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(Bytes, Option<String>)>> {
        loop {
            if self.next.is_none() {
                self.read();
            }
            let Some(next) = &mut self.next else {
                return Poll::Ready(None);
            };
            let tail = std::task::ready!(next.as_mut().poll(cx));
            self.next = None;
            match tail {
                Tail::Waited => self.read(),
                Tail::Page(Err(error)) => {
                    tracing::warn!(%error, "history store read failed: following stream ends");
                    return Poll::Ready(None);
                }
                Tail::Page(Ok(page)) => {
                    let Some(last) = page.events.last() else {
                        if page.end == StreamEnd::Open {
                            self.wait();
                            continue;
                        }
                        return Poll::Ready(None);
                    };
                    self.after = last.seq;
                    let mut bytes = BytesMut::new();
                    let newest = concat(&page.events, &mut bytes)
                        .last()
                        .map(|id| id.to_string());
                    return Poll::Ready(Some((bytes.freeze(), newest)));
                }
            }
        }
    }
}

fn status_answer(status: StatusCode, outcome: Outcome) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert(SSE_REPLAY.clone(), outcome.header());
    Answer {
        status,
        headers,
        replay: None,
    }
}

/// The head of a response answered from a history: the original response's, without what
/// belonged to that response alone (its length, date, cookies it set, connection headers).
fn answer_headers(head: &HeaderMap, outcome: Outcome) -> HeaderMap {
    let mut headers = head.clone();
    for name in [
        header::CONTENT_LENGTH,
        header::DATE,
        header::SET_COOKIE,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.insert(SSE_REPLAY.clone(), outcome.header());
    headers
}

/// Events sent from a stream's history: after a sequence number, up to a point (`until`) or
/// following the live tail while the stream has a producer.
pub(crate) struct Replaying {
    /// `None` for a replay read from the history store (all of it in `first`).
    pub(crate) history: Option<Arc<StreamHistory>>,
    /// The last event sent (`None`: none yet, start from the oldest).
    after: Option<u64>,
    /// Stop before this sequence number; `None`: follow the tail.
    until: Option<u64>,
    /// Bytes to send before the history's (a gap event).
    first: Option<Bytes>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// For a response that goes on with the wrapped service: what the client already got.
    pub(crate) seam: Option<Seam>,
    /// The `sse-replay` header for a response that goes on with the wrapped service.
    pub(crate) outcome: Option<Outcome>,
    /// For a replay read from the history store: the newest ID it sends.
    store_newest: Option<String>,
    /// For a stream produced elsewhere: its tail, followed through the store.
    store_tail: Option<StoreTail>,
}

impl std::fmt::Debug for Replaying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replaying")
            .field("history", &self.history)
            .field("after", &self.after)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl Replaying {
    fn new(
        history: Arc<StreamHistory>,
        after: Option<u64>,
        until: Option<u64>,
        first: Option<Bytes>,
    ) -> Self {
        if until.is_none() {
            history.follow(1);
        }
        Self {
            history: Some(history),
            after,
            until,
            first,
            wait: None,
            seam: None,
            outcome: None,
            store_newest: None,
            store_tail: None,
        }
    }

    /// The next bytes to send, whole events, with the ID in effect after them (`None` when
    /// they set none, as a gap event); `None` once the replay is over (up to `until`, or the
    /// followed stream has no producer any more).
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(Bytes, Option<String>)>> {
        if let Some(first) = self.first.take() {
            // From the store, all of it comes at once, with the ID to move the position to.
            let id = self
                .history
                .is_none()
                .then(|| self.store_newest.take())
                .flatten();
            return Poll::Ready(Some((first, id)));
        }
        let Some(history) = self.history.clone() else {
            return match &mut self.store_tail {
                Some(tail) => tail.poll_next(cx),
                None => Poll::Ready(None),
            };
        };
        loop {
            if let Some(wait) = &mut self.wait {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            let st = history.lock();
            if self.after.is_some_and(|a| a + 1 < st.first_seq()) {
                // This response fell behind by more than the history keeps: it ends, and the
                // client's reconnect is answered by the policy for IDs too old.
                return Poll::Ready(None);
            }
            if self
                .until
                .is_some_and(|until| self.after.map_or(st.first_seq(), |a| a + 1) >= until)
            {
                return Poll::Ready(None);
            }
            match st.read_after(self.after, self.until, READ_LIMIT) {
                Some((bytes, last)) => {
                    self.after = Some(last);
                    return Poll::Ready(Some((bytes, st.id_at(last))));
                }
                None if self.until.is_some() || st.producers == 0 || st.dropped => {
                    return Poll::Ready(None);
                }
                None => {
                    let seen = st.next_seq();
                    drop(st);
                    let history = history.clone();
                    self.wait = Some(Box::pin(async move {
                        let notified = history.appended.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        {
                            let st = history.lock();
                            if st.next_seq() != seen || st.producers == 0 || st.dropped {
                                return;
                            }
                        }
                        notified.await;
                    }));
                }
            }
        }
    }
}

impl Drop for Replaying {
    fn drop(&mut self) {
        if self.until.is_none()
            && let Some(history) = &self.history
        {
            history.follow(-1);
        }
    }
}

/// The start of the wrapped service's response after a replay: events whose IDs the client
/// already got from history are dropped, until the first one it did not get; from there on
/// everything passes. Comments and empty blocks pass on the way; an unfinished block at the
/// end of the inner body inside the seam is dropped (a client would discard it too).
pub(crate) struct Seam {
    ids: HashSet<u64>,
    histories: Arc<Histories>,
    parser: SseParser,
    /// The bytes of the block being read.
    block: BytesMut,
}

impl std::fmt::Debug for Seam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seam")
            .field("ids", &self.ids.len())
            .finish_non_exhaustive()
    }
}

impl Seam {
    fn new(ids: HashSet<u64>, histories: Arc<Histories>) -> Self {
        Self {
            ids,
            histories,
            parser: SseParser::new(),
            block: BytesMut::new(),
        }
    }

    /// Filters one chunk of the inner body: returns the bytes to send on, and whether the seam
    /// is passed (then the rest of the stream goes through untouched).
    pub(crate) fn filter(&mut self, chunk: &[u8]) -> (Bytes, bool) {
        let mut out = BytesMut::new();
        let mut start = 0;
        let mut passed = None;
        let Self {
            ids,
            histories,
            parser,
            block,
        } = self;
        parser.feed(chunk, |d| {
            if passed.is_some() {
                return;
            }
            let end = d.chunk_offset();
            block.extend_from_slice(&chunk[start..end]);
            start = end;
            let replayed =
                d.id_set() && ids.contains(&histories.hash(d.last_event_id().as_bytes()));
            if replayed {
                block.clear(); // the client has it
            } else if !d.is_event() && !d.id_set() {
                out.extend_from_slice(block); // a comment or an empty block: on, seam or not
                block.clear();
            } else {
                out.extend_from_slice(block);
                block.clear();
                passed = Some(end);
            }
        });
        match passed {
            Some(end) => {
                out.extend_from_slice(&chunk[end..]);
                (out.freeze(), true)
            }
            None => {
                block.extend_from_slice(&chunk[start..]);
                (out.freeze(), false)
            }
        }
    }
}
