//! [`EventTracking`]: the middleware service.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::{
    config::Config,
    future::{Next, RequestInfo, ResponseFuture},
    resume,
    session::RequestSession,
};

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
/// use tower_sse_tracking::{EventTrackingLayer, SessionId, StreamKey};
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
/// let stream = StreamKey::new("/events").unwrap(); // the request's path
/// assert_eq!(tracking.worker().last_event_id(&session, &stream).as_deref(), Some("42"));
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
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    ResBody: Body + Send + 'static,
    ResBody::Data: From<bytes::Bytes> + Send,
    ResBody::Error: Send,
{
    type Response = Response<crate::TrackingBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.method() == Method::HEAD {
            return ResponseFuture::calling(self.inner.call(req), None);
        }
        let config = &self.config;
        let labels = config.labels();
        let (req, mut session) = config.source.of_request(req, config.max_key_len, labels);
        let (mut req, stream) = match session {
            RequestSession::Untracked => (req, None),
            _ => config
                .streams
                .of_request(req, config.max_stream_key_len, labels),
        };
        if stream.is_none() {
            session = RequestSession::Untracked;
        }
        let stated = resume::stated(&req, config.max_id_len);
        // A reconnect that names a stream's position continues that stream.
        let stream = match (&session, &stated, stream) {
            (RequestSession::Known(id), Some(last), Some(stream))
                if config.follow_last_event_id =>
            {
                Some(config.worker.stream_at(id, last).unwrap_or(stream))
            }
            (_, _, stream) => stream,
        };
        let load = match (&session, &stream) {
            (RequestSession::Known(id), Some(stream)) if config.resumes(req.method()) => {
                resume::start(config, id, stream, &mut req)
            }
            _ => None,
        };
        let forget = config.forgets(req.method());
        let mut info = RequestInfo::new(config, session, stream, stated, forget);
        match load {
            None => match info.as_mut().map_or(Next::Call, |i| i.route(&mut req)) {
                Next::Call => ResponseFuture::calling(self.inner.call(req), info),
                next => {
                    // Not calling now: the service that was polled ready goes into the
                    // future with the request; a clone takes its place.
                    let clone = self.inner.clone();
                    let ready = std::mem::replace(&mut self.inner, clone);
                    ResponseFuture::routed(next, ready, req, info)
                }
            },
            // The store must answer before the inner service is called: the service that was
            // polled ready goes into the future with the request; a clone takes its place.
            Some(load) => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::loading(load, ready, req, info)
            }
        }
    }
}
