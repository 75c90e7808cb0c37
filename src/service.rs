//! [`EventTracking`]: the middleware service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    future::{RequestInfo, ResponseFuture, Resume},
    layer::{Config, SessionKey},
    metrics as m,
};

/// The `Last-Event-ID` request header.
pub(crate) static LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// Middleware that tracks the last event ID of every session's `text/event-stream` responses.
///
/// Built by [`EventTrackingLayer`](crate::EventTrackingLayer). The error type is the inner
/// service's: tracking never fails or alters a response.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use tower::{ServiceExt, service_fn};
/// use tower_layer::Layer;
/// use tower_sse_tracking::{EventTrackingLayer, SessionId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let tracking = EventTrackingLayer::builder().build();
/// let service = tracking.layer(service_fn(|_req: Request<()>| async {
///     let body = Full::new(Bytes::from_static(b"id: 42\ndata: hi\n\n"));
///     Ok::<_, Infallible>(
///         Response::builder().header("content-type", "text/event-stream").body(body).unwrap(),
///     )
/// }));
/// let request = Request::get("/events").header("mcp-session-id", "s1").body(()).unwrap();
/// let response = service.oneshot(request).await.unwrap();
/// assert!(response.body().is_tracked());
/// let bytes = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(&bytes[..], b"id: 42\ndata: hi\n\n"); // unchanged
/// let session = SessionId::new("s1").unwrap();
/// assert_eq!(tracking.worker().last_event_id(&session).as_deref(), Some("42"));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EventTracking<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> EventTracking<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware and returns the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EventTracking<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body,
{
    type Response = Response<crate::TrackingBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.method() == Method::HEAD {
            return ResponseFuture::new(self.inner.call(req), None);
        }
        let (mut req, key) = self.config.session_from_request(req);
        let (session, session_from_response) = match key {
            SessionKey::Valid(session) => (Some(session), false),
            SessionKey::Absent {
                response_may_name_it,
            } => (None, response_may_name_it),
            SessionKey::Invalid(error) => {
                // Untrusted input: such requests pass through untracked (with heartbeats, if on).
                metrics::counter!(m::UNTRACKED, "reason" => "invalid_key").increment(1);
                tracing::debug!(%error, "invalid session key: request not tracked");
                let info = self.config.heartbeat.is_some().then(|| RequestInfo {
                    config: self.config.clone(),
                    session: None,
                    session_from_response: false,
                });
                return ResponseFuture::new(self.inner.call(req), info);
            }
        };
        let info = RequestInfo {
            config: self.config.clone(),
            session: session.clone(),
            session_from_response,
        };
        let Some(session) = session.filter(|_| self.config.resume) else {
            return ResponseFuture::new(self.inner.call(req), Some(info));
        };
        if req.headers().contains_key(&LAST_EVENT_ID) {
            // The client knows where it is: never override it.
            return ResponseFuture::new(self.inner.call(req), Some(info));
        }
        match self.config.worker.last_event_id(&session) {
            // Known in memory (possibly cleared, then no header).
            Some(id) => {
                if let Some(value) = header_value(&id) {
                    req.headers_mut().insert(LAST_EVENT_ID.clone(), value);
                    metrics::counter!(m::RESUMED).increment(1);
                }
                ResponseFuture::new(self.inner.call(req), Some(info))
            }
            // Not in memory: ask the store before calling the inner service. The service that
            // was polled ready goes into the future; a clone takes its place.
            None => {
                let store = self.config.worker.store().clone();
                let load = Box::pin(async move { store.load(&session).await });
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let call = Box::new(move |value: Option<HeaderValue>| {
                    if let Some(value) = value {
                        req.headers_mut().insert(LAST_EVENT_ID.clone(), value);
                    }
                    inner.call(req)
                });
                ResponseFuture::resuming(Resume { load, call }, Some(info))
            }
        }
    }
}

/// The ID as a header value; `None` when empty or not representable (control characters).
pub(crate) fn header_value(id: &str) -> Option<HeaderValue> {
    if id.is_empty() {
        return None;
    }
    HeaderValue::from_str(id).ok()
}
