//! Versions for last event IDs: the wall-clock time (nanoseconds since the Unix epoch) at which
//! the ID was recorded, made strictly increasing per session.
//!
//! Stamping at record time, not when the worker writes, is what lets the newer write win across
//! replicas: a replica that writes late (a slow flush, an open circuit breaker) still carries the
//! time its events happened, so it cannot roll back an ID another replica recorded later.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch now.
fn wall_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The version of an ID recorded now, after one of version `prev`: the current time, or one more
/// than `prev` if the clock has not moved past it (or went back).
pub(crate) fn stamp(prev: u64) -> u64 {
    wall_nanos().max(prev.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_follow_the_clock_and_strictly_increase() {
        let before = wall_nanos();
        let a = stamp(0);
        assert!(a >= before);
        let far_future = u64::MAX - 10;
        assert_eq!(stamp(far_future), far_future + 1, "clock behind: prev + 1");
        assert_eq!(stamp(u64::MAX), u64::MAX, "saturates");
        assert!(stamp(a) > a);
    }
}
