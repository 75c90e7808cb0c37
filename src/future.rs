//! [`ResponseFuture`]: resolves the session, then wraps SSE response bodies.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::{
    SessionId, body::TrackingBody, layer::Config, metrics as m, registry::Full,
    store::SessionRecord, worker::Attachment,
};

/// Reads the session's last event ID from the store, then calls the inner service.
pub(crate) struct Resume<F> {
    pub(crate) load: Pin<
        Box<dyn Future<Output = Result<Option<SessionRecord>, crate::store::StoreError>> + Send>,
    >,
    pub(crate) call: Box<dyn FnOnce(Option<HeaderValue>) -> F + Send>,
}

/// What `call` learnt about the request, used when the response arrives.
pub(crate) struct RequestInfo {
    pub(crate) config: Arc<Config>,
    /// The session named by the request, if any.
    pub(crate) session: Option<SessionId>,
    /// The request named no session (as opposed to an invalid one): the response may.
    pub(crate) session_from_response: bool,
}

pin_project! {
    /// The response future of [`EventTracking`](crate::EventTracking): resolves to the inner
    /// service's response with its body wrapped in a [`TrackingBody`] (see
    /// [`EventTracking`](crate::EventTracking) for an example). When resuming needs the store, it
    /// first reads the session's last event ID, then calls the inner service.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        resume: Option<Resume<F>>,
        info: Option<RequestInfo>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, info: Option<RequestInfo>) -> Self {
        Self {
            inner: Some(inner),
            resume: None,
            info,
        }
    }

    pub(crate) fn resuming(resume: Resume<F>, info: Option<RequestInfo>) -> Self {
        Self {
            inner: None,
            resume: Some(resume),
            info,
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("resuming", &self.resume.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<TrackingBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(resume) = this.resume.as_mut() {
            let loaded = ready!(resume.load.as_mut().poll(cx));
            let header = match loaded {
                Ok(Some(record)) => record
                    .last_event_id
                    .as_str()
                    .and_then(|id| HeaderValue::from_str(id).ok()),
                Ok(None) => None,
                Err(error) => {
                    // Never fail the request over tracking: go on without the header.
                    metrics::counter!(m::RESUME_ERRORS).increment(1);
                    tracing::warn!(%error, "could not read the session's last event id to resume it");
                    None
                }
            };
            if header.is_some() {
                metrics::counter!(m::RESUMED).increment(1);
            }
            let resume = this.resume.take().expect("checked above");
            this.inner.set(Some((resume.call)(header)));
        }
        let inner = this
            .inner
            .as_pin_mut()
            .expect("ResponseFuture polled after completion");
        let response = ready!(inner.poll(cx))?;
        let Some(info) = this.info.take() else {
            return Poll::Ready(Ok(response.map(TrackingBody::passthrough)));
        };
        Poll::Ready(Ok(wrap(response, info)))
    }
}

/// Wraps the body of a successful, uncompressed `text/event-stream` response with a known
/// session; passes everything else through.
fn wrap<B: Body>(response: Response<B>, info: RequestInfo) -> Response<TrackingBody<B>> {
    if !is_trackable(&response) {
        return response.map(TrackingBody::passthrough);
    }
    let config = info.config;
    let session = match info.session {
        Some(session) => Some(session),
        None if info.session_from_response => config.session_from_response(response.headers()),
        None => None,
    };
    let attachment = match session {
        Some(session) => match Attachment::new(&config.worker.shared, &session) {
            Ok(attachment) => Some(attachment),
            Err(Full) => {
                // Debug, not warn: a flood of new keys must not become a flood of log lines.
                // The counter is what to alert on.
                metrics::counter!(m::UNTRACKED, "reason" => "registry_full").increment(1);
                tracing::debug!(%session, "session registry full: stream not tracked");
                None
            }
        },
        None => None,
    };
    // Injected bytes would break a declared length.
    let heartbeat = config
        .heartbeat
        .filter(|_| !response.headers().contains_key(header::CONTENT_LENGTH));
    if attachment.is_none() && heartbeat.is_none() {
        return response.map(TrackingBody::passthrough);
    }
    // An event stream without a session still gets heartbeats when they are on.
    let tracking = crate::body::Tracking::new(
        attachment,
        config.max_id_len,
        config.backpressure_timeout,
        heartbeat,
    );
    response.map(|body| TrackingBody::tracked(body, tracking))
}

/// A successful `text/event-stream` response (any case, any parameters) without a content
/// coding.
pub(crate) fn is_trackable<B>(response: &Response<B>) -> bool {
    if !response.status().is_success() {
        return false;
    }
    let headers = response.headers();
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return false;
    }
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream(v.as_bytes()))
}

fn is_event_stream(content_type: &[u8]) -> bool {
    let essence = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"text/event-stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_matching() {
        for yes in [
            &b"text/event-stream"[..],
            b"TEXT/Event-Stream",
            b"text/event-stream; charset=utf-8",
            b" text/event-stream ;x=y",
        ] {
            assert!(is_event_stream(yes), "{yes:?}");
        }
        for no in [
            &b"text/plain"[..],
            b"text/event-streams",
            b"",
            b"application/json",
        ] {
            assert!(!is_event_stream(no), "{no:?}");
        }
    }

    #[test]
    fn encoded_or_failed_responses_are_not_tracked() {
        let sse = || Response::builder().header(header::CONTENT_TYPE, "text/event-stream");
        assert!(is_trackable(&sse().body(()).unwrap()));
        assert!(is_trackable(
            &sse()
                .header(header::CONTENT_ENCODING, "identity")
                .body(())
                .unwrap()
        ));
        assert!(!is_trackable(
            &sse()
                .header(header::CONTENT_ENCODING, "gzip")
                .body(())
                .unwrap()
        ));
        assert!(!is_trackable(&sse().status(500).body(()).unwrap()));
        assert!(!is_trackable(&Response::new(())));
    }
}
