//! [`Breaker`]: stops calling a store that keeps failing, for a cool-down, then probes it with
//! one batch.

use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::{self as m, Labels};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// A circuit breaker over store calls: after `threshold` consecutive failed batches it opens for
/// `cooldown`; then one probing batch decides (success closes it, failure opens it again).
#[derive(Debug)]
pub(crate) struct Breaker {
    state: State,
    threshold: u32,
    cooldown: Duration,
    labels: Labels,
    /// The gauge of its state.
    gauge: &'static str,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration, labels: Labels) -> Self {
        Self::reporting(threshold, cooldown, labels, m::CIRCUIT_STATE)
    }

    /// A breaker whose state is the gauge `gauge` (the history store's has its own).
    pub(crate) fn reporting(
        threshold: u32,
        cooldown: Duration,
        labels: Labels,
        gauge: &'static str,
    ) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            threshold,
            cooldown,
            labels,
            gauge,
        }
    }

    /// Whether the store may be called now (an open breaker whose cool-down is over turns
    /// half-open and allows one probe).
    pub(crate) fn allows(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } | State::HalfOpen => true,
            State::Open { until } if now >= until => {
                self.set(State::HalfOpen);
                tracing::info!("circuit half-open: probing the store with one batch");
                true
            }
            State::Open { .. } => false,
        }
    }

    /// A batch was written.
    pub(crate) fn succeeded(&mut self) {
        if self.state != (State::Closed { failures: 0 }) {
            tracing::info!("store writes succeed again: circuit closed");
            self.set(State::Closed { failures: 0 });
        }
    }

    /// A batch failed; in the half-open state one failure reopens the breaker.
    pub(crate) fn failed(&mut self, now: Instant, error: &crate::store::StoreError) {
        let failures = match self.state {
            State::Closed { failures } => failures + 1,
            State::HalfOpen | State::Open { .. } => self.threshold,
        };
        if failures < self.threshold {
            self.set(State::Closed { failures });
            return;
        }
        if !matches!(self.state, State::Open { .. }) {
            tracing::warn!(cooldown = ?self.cooldown, %error, "store keeps failing: circuit open");
        }
        self.set(State::Open {
            until: now + self.cooldown,
        });
    }

    fn set(&mut self, state: State) {
        self.state = state;
        self.report();
    }

    /// Sets the gauge: 0 closed, 1 open, 2 half-open.
    pub(crate) fn report(&self) {
        let value = match self.state {
            State::Closed { .. } => 0.0,
            State::Open { .. } => 1.0,
            State::HalfOpen => 2.0,
        };
        self.labels.gauge(self.gauge).set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_then_probes_once_after_the_cooldown() {
        let error = StoreError::transient("down");
        let mut breaker = Breaker::new(2, Duration::from_secs(10), Labels::default());
        let now = Instant::now();
        breaker.failed(now, &error);
        assert!(breaker.allows(now), "one failure: still closed");
        breaker.failed(now, &error);
        assert!(!breaker.allows(now), "open");
        let later = now + Duration::from_secs(10);
        assert!(breaker.allows(later), "half-open: one probe");
        breaker.failed(later, &error);
        assert!(!breaker.allows(later), "the probe failed: open again");
        let much_later = later + Duration::from_secs(10);
        assert!(breaker.allows(much_later));
        breaker.succeeded();
        breaker.failed(much_later, &error);
        assert!(breaker.allows(much_later), "closed, the count started over");
    }
}
