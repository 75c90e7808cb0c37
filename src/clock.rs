//! Versions for last event IDs: strictly increasing within the process, and following wall-clock
//! time (nanoseconds since the Unix epoch) across restarts and replicas.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

static LAST: AtomicU64 = AtomicU64::new(0);

/// The next version: the current time in nanoseconds since the Unix epoch, or one more than the
/// previous version if the clock has not moved (or moved back).
pub(crate) fn next_version(now: SystemTime) -> u64 {
    let wall = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = wall.max(prev.saturating_add(1));
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(actual) => prev = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn versions_strictly_increase_even_if_the_clock_goes_back() {
        let now = SystemTime::now();
        let a = next_version(now);
        let b = next_version(now);
        let c = next_version(now - Duration::from_secs(3600));
        assert!(a < b && b < c);
        let d = next_version(now + Duration::from_secs(10));
        assert!(
            d >= (now + Duration::from_secs(10))
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        );
    }
}
