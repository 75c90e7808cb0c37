//! Helpers shared by the integration tests (`mod support;`, or `#[path]` from a test folder).

#![allow(dead_code)] // Each test crate uses a different part of the helpers.

#[cfg(feature = "redis")]
pub mod redis;

use tower_sse_tracking::SessionId;

/// A valid session key (panics on an invalid one: tests name their sessions).
pub fn sid(key: &str) -> SessionId {
    SessionId::new(key).unwrap()
}

/// A current-thread runtime with every driver, its clock paused (timers advance instantly when
/// the runtime is idle): for tests of timing that must not take real time.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

/// A current-thread runtime with every driver, on the real clock.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
