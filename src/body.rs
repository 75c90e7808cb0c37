//! [`TrackingBody`]: forwards every frame unchanged while the SSE parser reads the same bytes.

use std::{
    fmt,
    future::Future,
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{
    metrics as m,
    parser::SseParser,
    worker::{Attachment, Reserve, TryEnqueueError},
};

/// Most separate chunks one data frame may have for us to read it without copying; a frame made
/// of more (never seen in practice: SSE frames are `Bytes`) stops tracking for its stream.
const MAX_IOVECS: usize = 64;

/// The comment line sent as a heartbeat.
const HEARTBEAT: &[u8] = b":\n";

pin_project! {
    /// The response body of a tracked `text/event-stream` response.
    ///
    /// Every frame of the inner body reaches the client unchanged, in order, with errors and
    /// trailers as they are; the data also feeds an [`SseParser`] that records each event's ID in
    /// the session's slot. Responses that are not event streams pass through with no parsing at
    /// all; event streams without a valid session are parsed only if heartbeats are on.
    ///
    /// See [`EventTracking`](crate::EventTracking) for an example.
    ///
    /// The only ways the body differs from the inner one: a data frame may be held for up to the
    /// backpressure timeout when the worker's queue is full at the moment the session turns
    /// dirty, and, when heartbeats are on, comment lines (`:` LF) are inserted at line boundaries
    /// after the configured idle time (also before the upstream's first byte; a byte order mark
    /// that then starts the upstream is dropped, since it would no longer be at the start).
    pub struct TrackingBody<B: Body> {
        #[pin]
        inner: B,
        // `None`: pass-through.
        tracking: Option<Box<Tracking>>,
        // The data of a frame held back while waiting for queue capacity.
        held: Option<B::Data>,
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
pub(crate) struct Tracking {
    parser: SseParser,
    /// The stream's hold on its session; `None` for an event stream that only gets heartbeats
    /// (no valid session, or the registry was full).
    session: Option<Attachment>,
    backpressure_timeout: Duration,
    heartbeat: Option<Duration>,
    reserve: Option<Reserve>,
    /// The backpressure deadline, or the next heartbeat; allocated the first time it is needed
    /// (most streams never need it: no heartbeats, no full queue).
    timer: Option<Pin<Box<Sleep>>>,
    oversized_ids: u64,
    /// A heartbeat went out before the first upstream byte: a byte order mark starting the
    /// upstream would now land mid-stream for the client, so it is dropped from what is
    /// forwarded (the parser still sees it). `Some(n)`: `n` bytes of it dropped so far.
    strip_bom: Option<u8>,
}

impl Tracking {
    pub(crate) fn new(
        session: Option<Attachment>,
        max_id_len: usize,
        backpressure_timeout: Duration,
        heartbeat: Option<Duration>,
    ) -> Self {
        Self {
            parser: SseParser::new().max_id_len(max_id_len),
            session,
            backpressure_timeout,
            heartbeat,
            reserve: None,
            timer: None,
            oversized_ids: 0,
            strip_bom: None,
        }
    }

    /// Parses one chunk and records its events. Returns `true` if the session just turned dirty
    /// and must be queued. Hot path: no allocation, one short lock per event.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let Self {
            parser, session, ..
        } = self;
        let Some(session) = session.as_ref() else {
            // Heartbeats only: the parser just follows the line boundaries.
            parser.feed(chunk, |_| {});
            return false;
        };
        let mut dirty = false;
        parser.feed(chunk, |d| {
            if d.is_event() || d.id_set() {
                dirty |= session.record(d.id_set().then(|| d.last_event_id()));
            }
        });
        dirty
    }

    /// Feeds a data frame to the parser.
    fn feed_buf<D: Buf>(&mut self, data: &D) -> Fed {
        let chunk = data.chunk();
        let dirty = if chunk.len() == data.remaining() {
            self.feed(chunk)
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let n = data.chunks_vectored(&mut slices);
            let seen: usize = slices[..n].iter().map(|s| s.len()).sum();
            if seen != data.remaining() {
                return Fed::Unreadable;
            }
            let mut dirty = false;
            for slice in &slices[..n] {
                dirty |= self.feed(slice);
            }
            dirty
        };
        let oversized = self.parser.oversized_ids();
        if oversized != self.oversized_ids {
            metrics::counter!(m::OVERSIZED_IDS).increment(oversized - self.oversized_ids);
            self.oversized_ids = oversized;
        }
        if dirty {
            Fed::TurnedDirty
        } else {
            Fed::Recorded
        }
    }
}

impl Drop for Tracking {
    fn drop(&mut self) {
        // Dropped while a frame waited for queue room (the client went away): the slot is
        // already marked queued, so it must reach the worker now or it would never be written.
        // (Then the attachment drops: the stream leaves the session.)
        if let Some(session) = &self.session
            && self.reserve.take().is_some()
        {
            session.enqueue_or_park();
        }
    }
}

impl fmt::Debug for Tracking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracking")
            .field("session", &self.session.as_ref().map(Attachment::session))
            .field("parser", &self.parser)
            .finish_non_exhaustive()
    }
}

impl<B: Body> TrackingBody<B> {
    /// A body that passes `inner` through untouched.
    pub(crate) fn passthrough(inner: B) -> Self {
        Self {
            inner,
            tracking: None,
            held: None,
        }
    }

    pub(crate) fn tracked(inner: B, tracking: Tracking) -> Self {
        Self {
            inner,
            tracking: Some(Box::new(tracking)),
            held: None,
        }
    }

    /// Whether this body records its stream's event IDs (an event stream without a valid session
    /// may still get heartbeats, but is not tracked).
    pub fn is_tracked(&self) -> bool {
        self.tracking.as_ref().is_some_and(|t| t.session.is_some())
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The inner body, mutably.
    pub fn get_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Consumes the wrapper and returns the inner body (a held frame, if any, is lost).
    pub fn into_inner(self) -> B {
        self.inner
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
        let Some(tracking) = this.tracking.as_mut() else {
            return this.inner.poll_frame(cx);
        };

        // A frame held while the worker's queue is full: release it once the session is queued
        // or parked, whichever comes first.
        if this.held.is_some() {
            ready!(poll_backpressure(tracking, cx));
            if let Some(every) = tracking.heartbeat {
                arm(&mut tracking.timer, Instant::now() + every);
            }
            return Poll::Ready(this.held.take().map(|data| Ok(Frame::data(data))));
        }

        let frame = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                tracking.parser.finish();
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
            Poll::Pending => {
                if let Some(every) = tracking.heartbeat {
                    return poll_heartbeat(tracking, every, cx);
                }
                return Poll::Pending;
            }
        };

        if let Some(every) = tracking.heartbeat {
            // Upstream spoke: the idle timer starts again.
            arm(&mut tracking.timer, Instant::now() + every);
        }
        let mut frame = frame;
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let fed = tracking.feed_buf(data);
        if tracking.strip_bom.is_some() {
            strip_leading_bom(&mut tracking.strip_bom, &mut frame);
        }
        if fed == Fed::Unreadable {
            tracing::warn!(
                session = ?tracking.session.as_ref().map(Attachment::session),
                "data frame in more than {MAX_IOVECS} pieces: stream no longer tracked"
            );
            *this.tracking = None;
            return Poll::Ready(Some(Ok(frame)));
        }
        if fed != Fed::TurnedDirty {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(session) = tracking.session.as_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        match session.try_enqueue() {
            Ok(()) | Err(TryEnqueueError::Closed) => Poll::Ready(Some(Ok(frame))),
            Err(TryEnqueueError::Full(_)) => {
                // The queue is full right when the session turned dirty: wait for room, at most
                // for the backpressure timeout, holding this frame.
                metrics::counter!(m::BACKPRESSURE_WAITS).increment(1);
                tracking.reserve = Some(session.reserve());
                let deadline = Instant::now() + tracking.backpressure_timeout;
                arm(&mut tracking.timer, deadline);
                // A data frame (checked above).
                *this.held = frame.into_data().ok();
                ready!(poll_backpressure(tracking, cx));
                if let Some(every) = tracking.heartbeat {
                    arm(&mut tracking.timer, Instant::now() + every);
                }
                Poll::Ready(this.held.take().map(|data| Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        match &self.tracking {
            // Heartbeats add bytes: keep the lower bound, drop the upper one.
            Some(t) if t.heartbeat.is_some() => {
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower());
                hint
            }
            _ => inner,
        }
    }
}

/// Sets the timer to `deadline`, creating it the first time.
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant) {
    match timer {
        Some(sleep) => sleep.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
}

/// Waits for queue room or the backpressure deadline; on the deadline, parks the session in the
/// worker's overflow set (the worker writes it on its next tick).
fn poll_backpressure(tracking: &mut Tracking, cx: &mut Context<'_>) -> Poll<()> {
    let (Some(reserve), Some(session)) = (tracking.reserve.as_mut(), tracking.session.as_ref())
    else {
        return Poll::Ready(());
    };
    match reserve.as_mut().poll(cx) {
        Poll::Ready(Ok(permit)) => session.send(permit),
        Poll::Ready(Err(_closed)) => {
            metrics::counter!(m::DROPPED_AFTER_SHUTDOWN).increment(1);
        }
        Poll::Pending => {
            let fired = tracking
                .timer
                .as_mut()
                .is_none_or(|sleep| sleep.as_mut().poll(cx).is_ready());
            if !fired {
                return Poll::Pending;
            }
            session.park();
        }
    }
    tracking.reserve = None;
    Poll::Ready(())
}

/// Drops a byte order mark at the start of the upstream (possibly split across frames) from a
/// frame about to be forwarded; see `Tracking::strip_bom`. Bytes that looked like the start of
/// one but were not are put back in front of the frame.
fn strip_leading_bom<D>(strip: &mut Option<u8>, frame: &mut Frame<D>)
where
    D: Buf + From<Bytes>,
{
    const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];
    while let Some(n) = *strip {
        let n = usize::from(n);
        let Some(data) = frame.data_mut() else {
            return;
        };
        if !data.has_remaining() {
            return;
        }
        let chunk = data.chunk();
        let k = chunk
            .iter()
            .zip(&BOM[n..])
            .take_while(|(a, b)| a == b)
            .count();
        if n + k == BOM.len() {
            data.advance(k);
            *strip = None;
        } else if k == chunk.len() {
            // Still a prefix of the mark: drop it for now.
            data.advance(k);
            *strip = Some((n + k) as u8);
        } else {
            *strip = None;
            if n > 0 {
                // Not a byte order mark after all: the bytes dropped earlier go back in front.
                let mut bytes = BOM[..n].to_vec();
                while data.has_remaining() {
                    let len = data.chunk().len();
                    bytes.extend_from_slice(data.chunk());
                    data.advance(len);
                }
                *frame = Frame::data(D::from(Bytes::from(bytes)));
            }
        }
    }
}

/// The inner body is idle: send a heartbeat comment when the timer fires at a line boundary.
fn poll_heartbeat<D, E>(
    tracking: &mut Tracking,
    every: Duration,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<D>, E>>>
where
    D: From<Bytes>,
{
    let sleep = tracking
        .timer
        .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
    if sleep.as_mut().poll(cx).is_pending() {
        return Poll::Pending;
    }
    sleep.as_mut().reset(Instant::now() + every);
    // Register the new deadline with the waker.
    let _ = sleep.as_mut().poll(cx);
    let at_start = tracking.parser.at_stream_start();
    if !(tracking.parser.at_line_boundary() || at_start) {
        // Mid-line, right after a CR (an LF may follow), or inside what may be a byte order
        // mark: a comment now would change the stream's meaning. Try again later.
        return Poll::Pending;
    }
    if at_start && tracking.strip_bom.is_none() {
        tracking.strip_bom = Some(0);
    }
    metrics::counter!(m::HEARTBEATS).increment(1);
    Poll::Ready(Some(Ok(Frame::data(D::from(Bytes::from_static(
        HEARTBEAT,
    ))))))
}
