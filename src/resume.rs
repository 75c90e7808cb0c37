//! Resume: `Last-Event-ID` filled in for a client that reconnects without it, from memory at
//! once or from the store before the inner service is called.

use std::{future::Future, pin::Pin};

use http::{HeaderName, HeaderValue, Request};

use crate::{
    SessionId, StreamKey,
    config::Config,
    metrics::{self as m, Labels},
    store::{SessionRecord, StoreError},
};

/// The `Last-Event-ID` request header.
pub(crate) static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// The store read that a resuming request waits for.
pub(crate) type Load =
    Pin<Box<dyn Future<Output = Result<Option<SessionRecord>, StoreError>> + Send>>;

/// The `Last-Event-ID` a client sent itself, if it is a usable ID (UTF-8, no NUL, at most
/// `max_len` bytes; anything else is ignored as the parser would ignore such an `id`).
pub(crate) fn stated<B>(req: &Request<B>, max_len: usize) -> Option<Box<str>> {
    let value = std::str::from_utf8(req.headers().get(&LAST_EVENT_ID)?.as_bytes()).ok()?;
    (value.len() <= max_len && !value.contains('\0')).then(|| value.into())
}

/// Fills in `Last-Event-ID` for a request of a known session's stream that has none: from
/// memory at once, or returns the store read to wait for first (then [`finish`]).
pub(crate) fn start<B>(
    config: &Config,
    session: &SessionId,
    stream: &StreamKey,
    req: &mut Request<B>,
) -> Option<Load> {
    if req.headers().contains_key(&LAST_EVENT_ID) {
        // The client knows where it is: never override it.
        return None;
    }
    match config.worker.last_event_id(session, stream) {
        // Known in memory (possibly cleared, then no header).
        Some(id) => {
            insert(req, &id, config.labels());
            None
        }
        None => {
            let store = config.worker.store().clone();
            let (session, stream) = (session.clone(), stream.clone());
            Some(Box::pin(async move { store.load(&session, &stream).await }))
        }
    }
}

/// Applies what the store read returned. A store error leaves the request as it was: tracking
/// never fails a request.
pub(crate) fn finish<B>(
    req: &mut Request<B>,
    loaded: Result<Option<SessionRecord>, StoreError>,
    labels: &Labels,
) {
    match loaded {
        Ok(record) => {
            if let Some(id) = record.as_ref().and_then(|r| r.last_event_id.as_str()) {
                insert(req, id, labels);
            }
        }
        Err(error) => {
            labels.counter(m::RESUME_ERRORS).increment(1);
            tracing::warn!(%error, "could not read the stream's last event id to resume it");
        }
    }
}

/// Inserts the ID unless it is empty (cleared) or not representable as a header value.
fn insert<B>(req: &mut Request<B>, id: &str, labels: &Labels) {
    if id.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(id) {
        req.headers_mut().insert(LAST_EVENT_ID.clone(), value);
        labels.counter(m::RESUMED).increment(1);
    }
}
