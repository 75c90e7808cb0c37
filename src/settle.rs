//! At-least-once resume ([`resume_at_least_once`](crate::EventTrackingLayerBuilder::resume_at_least_once)):
//! when a stream ends, the position it leaves behind is the last ID it handed over at least
//! `settle` before the end, so that events that may still have been in flight (in socket
//! buffers, say) are sent again when the client resumes.
//!
//! [`Checkpoints`] keeps what that needs and no more: the stream's IDs in buckets of a quarter of
//! `settle`, each with the newest ID handed over in it and when; buckets older than the newest
//! settled one are dropped, so at most six are ever kept, whatever the event rate. The price of
//! buckets: the position left behind may be up to a bucket older than the exact one, which only
//! means a few more events are sent again.

use std::collections::VecDeque;

use tokio::time::{Duration, Instant};

/// One bucket: the newest ID handed over in it, and when.
#[derive(Debug)]
struct Checkpoint {
    /// When the bucket started (buckets are at least `settle / 4` apart).
    opened: Instant,
    /// When its ID was handed over; `None` for the position the stream started from.
    at: Option<Instant>,
    id: String,
}

/// The recent IDs of one stream, for [`settled`](Self::settled).
#[derive(Debug)]
pub(crate) struct Checkpoints {
    settle: Duration,
    spacing: Duration,
    /// Oldest first.
    buckets: VecDeque<Checkpoint>,
}

impl Checkpoints {
    /// A stream that starts at `start` (the position's ID when it began, if it had one).
    pub(crate) fn new(settle: Duration, start: Option<String>, now: Instant) -> Self {
        let mut buckets = VecDeque::with_capacity(6);
        if let Some(id) = start {
            buckets.push_back(Checkpoint {
                opened: now,
                at: None,
                id,
            });
        }
        Self {
            settle,
            spacing: settle / 4,
            buckets,
        }
    }

    /// The stream handed over an event with this `id` (`""`: cleared) at `now`.
    pub(crate) fn record(&mut self, id: &str, now: Instant) {
        match self.buckets.back_mut() {
            Some(back) if back.at.is_some() && now.duration_since(back.opened) < self.spacing => {
                back.at = Some(now);
                back.id.clear();
                back.id.push_str(id);
            }
            _ => self.buckets.push_back(Checkpoint {
                opened: now,
                at: Some(now),
                id: id.to_owned(),
            }),
        }
        // The front is only needed while nothing newer is settled.
        while self
            .buckets
            .get(1)
            .is_some_and(|next| self.is_settled(next, now))
        {
            self.buckets.pop_front();
        }
    }

    fn is_settled(&self, checkpoint: &Checkpoint, end: Instant) -> bool {
        checkpoint
            .at
            .is_none_or(|at| end.duration_since(at) >= self.settle)
    }

    /// The newest ID this stream recorded, if it recorded one.
    pub(crate) fn newest(&self) -> Option<&str> {
        self.buckets
            .back()
            .filter(|b| b.at.is_some())
            .map(|b| b.id.as_str())
    }

    /// The position to leave behind for a stream that ends at `end`: an ID handed over at least
    /// `settle` before it (the newest such one, or one at most a bucket, `settle / 4`, older),
    /// else the one the stream started from, else none (`""`, cleared: the client starts over).
    pub(crate) fn settled(&self, end: Instant) -> &str {
        self.buckets
            .iter()
            .rev()
            .find(|b| self.is_settled(b, end))
            .map_or("", |b| b.id.as_str())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_position_left_behind_is_the_last_id_handed_over_a_settle_before_the_end() {
        let t0 = Instant::now();
        let mut cp = Checkpoints::new(SETTLE, Some("0".into()), t0);
        for (i, at) in [(1, 0), (2, 10), (3, 20), (4, 30), (5, 40)] {
            cp.record(&i.to_string(), t0 + ms(at));
        }
        for (i, at) in [(6, 2000), (7, 2010), (8, 2020)] {
            cp.record(&i.to_string(), t0 + ms(at));
        }
        assert_eq!(cp.newest(), Some("8"));
        // 5 went out at 40 ms: settled from 1040 ms on. 6..8 went out at 2 s.
        assert_eq!(cp.settled(t0 + ms(2100)), "5");
        // 6 went out at 2 s, but its bucket's newest, 8, at 2020 ms: the bucket counts as one.
        assert_eq!(cp.settled(t0 + ms(3010)), "5");
        assert_eq!(cp.settled(t0 + ms(3020)), "8");
        // Before anything settled: where the stream started.
        let mut young = Checkpoints::new(SETTLE, Some("41".into()), t0);
        young.record("42", t0 + ms(500));
        assert_eq!(young.settled(t0 + ms(900)), "41");
        assert_eq!(young.settled(t0 + ms(1500)), "42");
        // A new position with nothing settled: no ID, the client starts over.
        let mut fresh = Checkpoints::new(SETTLE, None, t0);
        assert_eq!(fresh.newest(), None);
        fresh.record("1", t0);
        assert_eq!(fresh.settled(t0 + ms(10)), "");
    }

    #[test]
    fn memory_stays_bounded_whatever_the_rate() {
        let t0 = Instant::now();
        let mut cp = Checkpoints::new(SETTLE, Some("start".into()), t0);
        let mut most = 0;
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100); // 10,000 events/s for 10 s
            cp.record(&i.to_string(), now);
            most = most.max(cp.len());
        }
        assert!(most <= 6, "{most} buckets");
        let end = t0 + Duration::from_micros(100_000 * 100);
        let settled: u64 = cp.settled(end).parse().unwrap();
        // Handed over at least 1 s before the end (ID 90,000 went out at 9 s), at most a bucket
        // (250 ms, 2,500 IDs) earlier.
        assert!((87_500..=90_000).contains(&settled), "{settled}");
    }
}
