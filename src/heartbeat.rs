//! [`Heartbeat`]: comment lines sent while the upstream is idle, only where they cannot change
//! the meaning of the stream.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use crate::{
    metrics::{self as m, Labels},
    parser::SseParser,
};

/// The comment line sent as a heartbeat.
const COMMENT: &[u8] = b":\n";

/// The heartbeat of one stream, like axum's `KeepAliveStream`: [`reset`](Self::reset) when the
/// upstream speaks, [`poll`](Self::poll) while it is idle.
pub(crate) struct Heartbeat {
    every: Duration,
    /// The next time to look whether the upstream has been idle for `every`; created the first
    /// time it is needed.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the upstream last spoke. The timer is not moved on every frame (that costs more
    /// than the frame's tracking): when it fires, it is moved to `last + every` if the
    /// upstream spoke since, so heartbeats still go out exactly `every` after the last byte.
    last: Option<Instant>,
    /// The upstream spoke since `last` was read. The clock is read only once the upstream goes
    /// idle (the next poll finds it pending), not per frame: a clock read cost more than the
    /// rest of a frame's tracking, and the time is the same, since the body is polled again
    /// right after a frame.
    spoke: bool,
    /// A heartbeat went out before the first upstream byte: a byte order mark starting the
    /// upstream would now land mid-stream for the client, so it is dropped from what is
    /// forwarded (the parser still sees it). `Some(n)`: `n` bytes of it dropped so far.
    strip_bom: Option<u8>,
}

impl Heartbeat {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            timer: None,
            last: None,
            spoke: false,
            strip_bom: None,
        }
    }

    /// The upstream spoke: the idle time starts again.
    #[inline]
    pub(crate) fn reset(&mut self) {
        self.spoke = true;
    }

    /// The upstream is idle: the comment line once it has been idle long enough and the stream
    /// is at a line boundary (`parser` has read everything forwarded so far).
    pub(crate) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        parser: &SseParser,
        labels: &Labels,
    ) -> Poll<Bytes> {
        if self.spoke {
            self.spoke = false;
            self.last = Some(Instant::now());
        }
        let every = self.every;
        let last = self.last;
        let sleep = self.timer.get_or_insert_with(|| {
            let since = last.unwrap_or_else(Instant::now);
            Box::pin(tokio::time::sleep_until(since + every))
        });
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The upstream spoke after this deadline was set: idle only `every` after that.
            match last.map(|at| at + every) {
                Some(due) if due > sleep.deadline() => sleep.as_mut().reset(due),
                _ => break,
            }
        }
        sleep.as_mut().reset(Instant::now() + every);
        // Register the new deadline with the waker.
        let _ = sleep.as_mut().poll(cx);
        let at_start = parser.at_stream_start();
        if !(parser.at_line_boundary() || at_start) {
            // Mid-line, right after a CR (an LF may follow), or inside what may be a byte order
            // mark: a comment now would change the stream's meaning. Try again later.
            return Poll::Pending;
        }
        if at_start && self.strip_bom.is_none() {
            self.strip_bom = Some(0);
        }
        labels.counter(m::HEARTBEATS).increment(1);
        Poll::Ready(Bytes::from_static(COMMENT))
    }

    /// Prepares an upstream frame for forwarding: after a heartbeat that went out before the
    /// upstream's first byte, a byte order mark starting the upstream is dropped.
    pub(crate) fn forward<D>(&mut self, frame: &mut Frame<D>)
    where
        D: Buf + From<Bytes>,
    {
        if self.strip_bom.is_some() {
            strip_leading_bom(&mut self.strip_bom, frame);
        }
    }
}

/// Drops a byte order mark at the start of the upstream (possibly split across frames) from a
/// frame about to be forwarded; see `Heartbeat::strip_bom`. Bytes that looked like the start of
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
