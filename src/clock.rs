//! Versions for last event IDs: the wall-clock time (nanoseconds since the Unix epoch) at which
//! the ID was recorded, made strictly increasing per session.
//!
//! Stamping at record time, not when the worker writes, is what lets the newer write win across
//! replicas: a replica that writes late (a slow flush, an open circuit breaker) still carries the
//! time its events happened, so it cannot roll back an ID another replica recorded later.

/// Nanoseconds since the Unix epoch now, from the kernel's coarse real-time clock where there is
/// one: it is read from memory the kernel updates every tick (1-4 ms), several times cheaper than
/// a precise read, and a version needs no finer order than that across replicas (within a
/// process, `stamp` makes versions strictly increasing anyway).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn wall_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

/// Nanoseconds since the Unix epoch now.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn wall_nanos() -> u64 {
    nanos_of(std::time::SystemTime::now())
}

/// The version of an ID recorded now, after one of version `prev`: the current time, or one more
/// than `prev` if the clock has not moved past it (or went back).
pub(crate) fn stamp(prev: u64) -> u64 {
    stamp_at(wall_nanos(), prev)
}

/// The version of an ID seen at `at` (from [`wall_nanos`]), after one of version `prev`.
pub(crate) fn stamp_at(at: u64, prev: u64) -> u64 {
    at.max(prev.saturating_add(1))
}

/// `t` as nanoseconds since the Unix epoch (0 before it, saturating in the year 2554): how a
/// slot keeps its activity time in 8 bytes instead of a `SystemTime`'s 16, and how the redb
/// stores write times.
pub(crate) fn nanos_of(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The time `nanos` nanoseconds after the Unix epoch (the inverse of [`nanos_of`]).
pub(crate) fn time_of(nanos: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn stamps_follow_the_clock_and_strictly_increase() {
        let before = wall_nanos();
        let a = stamp(0);
        assert!(a >= before);
        // The coarse clock agrees with the precise one to within a few ticks.
        let precise = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(precise.abs_diff(wall_nanos()) < 50_000_000, "within 50 ms");
        let far_future = u64::MAX - 10;
        assert_eq!(stamp(far_future), far_future + 1, "clock behind: prev + 1");
        assert_eq!(stamp(u64::MAX), u64::MAX, "saturates");
        assert!(stamp(a) > a);
    }
}
