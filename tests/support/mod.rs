//! Helpers shared by the integration tests (`mod support;`).

#[cfg(feature = "redis")]
pub mod redis;
