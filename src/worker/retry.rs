//! Failed writes waiting for their next attempt, ordered by due time.

use std::{
    cmp::{Ordering, Reverse},
    collections::BinaryHeap,
    sync::Arc,
    time::Duration,
};

use tokio::time::Instant;

use crate::slot::Slot;

/// A session whose write failed, due again at `due`.
#[derive(Debug)]
pub(crate) struct Retry {
    pub(crate) due: Instant,
    /// Breaks ties between equal due times: first scheduled, first retried.
    order: u64,
    pub(crate) slot: Arc<Slot>,
    pub(crate) attempts: u32,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Retry {}

impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Retry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

/// A min-heap of retries by due time. Holds each session at most once (the slot's `queued` flag
/// guarantees it), so it is bounded by the number of sessions.
#[derive(Debug, Default)]
pub(crate) struct RetryHeap {
    heap: BinaryHeap<Reverse<Retry>>,
    next_order: u64,
}

impl RetryHeap {
    pub(crate) fn push(&mut self, due: Instant, slot: Arc<Slot>, attempts: u32) {
        let order = self.next_order;
        self.next_order += 1;
        self.heap.push(Reverse(Retry {
            due,
            order,
            slot,
            attempts,
        }));
    }

    /// Removes and returns the earliest retry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Retry> {
        if self.heap.peek()?.0.due <= now {
            self.heap.pop().map(|r| r.0)
        } else {
            None
        }
    }

    /// Removes and returns the earliest retry, due or not.
    pub(crate) fn pop(&mut self) -> Option<Retry> {
        self.heap.pop().map(|r| r.0)
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.due)
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Exponential backoff with jitter: `base * 2^(attempt - 1)`, capped at `max`, then a random
/// point between half and all of it. `rand` is any uniformly distributed `u64`.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration, rand: u64) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let full = base.saturating_mul(1 << exp).min(max);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    let jitter = if nanos == 0 { 0 } else { rand % (nanos + 1) };
    half + Duration::from_nanos(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;

    fn slot(name: &str) -> Arc<Slot> {
        Arc::new(Slot::new(
            SessionId::new(name).unwrap(),
            crate::StreamKey::whole_session(),
            0,
            0,
            4,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_come_out_in_due_time_order() {
        let now = Instant::now();
        let mut heap = RetryHeap::default();
        // Pushed out of order.
        for (name, ms) in [("c", 300), ("a", 100), ("d", 400), ("b", 200), ("a2", 100)] {
            heap.push(now + Duration::from_millis(ms), slot(name), 1);
        }
        assert!(heap.pop_due(now).is_none(), "nothing due yet");
        let mut order = Vec::new();
        while let Some(r) = heap.pop_due(now + Duration::from_millis(250)) {
            order.push(r.slot.session().to_string());
        }
        assert_eq!(
            order,
            ["a", "a2", "b"],
            "by due time, ties first in first out"
        );
        assert_eq!(heap.next_due(), Some(now + Duration::from_millis(300)));
        assert_eq!(heap.pop().unwrap().slot.session().as_str(), "c");
        assert_eq!(heap.len(), 1);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for (attempt, full_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (8, 10_000),
            (40, 10_000),
        ] {
            let full = Duration::from_millis(full_ms);
            assert_eq!(backoff(attempt, base, max, 0), full / 2);
            assert_eq!(
                backoff(attempt, base, max, u64::MAX - 1).min(full),
                backoff(attempt, base, max, u64::MAX - 1)
            );
            for r in [1, 12345, 987_654_321_123] {
                let d = backoff(attempt, base, max, r);
                assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
            }
        }
    }
}
