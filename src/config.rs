//! [`Config`]: the settings every service of one layer shares.

use std::time::Duration;

use crate::{session::SessionSource, worker::WorkerHandle};

/// Settings shared by every service the layer builds (behind one `Arc`).
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) worker: WorkerHandle,
    pub(crate) source: SessionSource,
    pub(crate) max_key_len: usize,
    pub(crate) max_id_len: usize,
    pub(crate) backpressure_timeout: Duration,
    pub(crate) heartbeat: Option<Duration>,
    pub(crate) resume: bool,
}
