//! [`ResponseFuture`]: waits for the store when resuming needs it, calls the inner service, then
//! wraps event-stream response bodies.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::mpsc;
use tower_service::Service;

use crate::{
    SessionId, StreamKey,
    body::{TrackingBody, spawn_producer},
    config::Config,
    history::SSE_REPLAY,
    metrics as m,
    replay::{self, Answer, Locate, Located, Outcome, Replaying, Route},
    resume::LAST_EVENT_ID,
    resume::{self, Load},
    session::RequestSession,
    worker::Attachment,
};

/// What `call` learnt about the request, used when the response arrives.
pub(crate) struct RequestInfo {
    config: Arc<Config>,
    session: RequestSession,
    /// The request's stream (`None` only when the session is untracked).
    stream: Option<StreamKey>,
    /// The `Last-Event-ID` the client itself sent (authoritative for the stream's position).
    stated: Option<Box<str>>,
    /// A successful response ends the session (see `forget_on`).
    forget: bool,
    /// What replay did with the request's `Last-Event-ID`, for the `sse-replay` header.
    outcome: Option<Outcome>,
    /// Events to send from history before the response (the request goes on after a replay).
    replaying: Option<Box<Replaying>>,
    /// The keyed hash of the request's credential, when replay binds streams to one.
    credential: Option<u64>,
    /// The response's stream may outlive its client (replay's detach grace).
    detach: bool,
}

impl RequestInfo {
    /// `None` when the response needs nothing from the layer: no session and no heartbeats.
    pub(crate) fn new(
        config: &Arc<Config>,
        session: RequestSession,
        stream: Option<StreamKey>,
        stated: Option<Box<str>>,
        forget: bool,
    ) -> Option<Self> {
        // A request that named no session still goes on: if its response is an event stream,
        // it is counted as untracked (`no_session`).
        if matches!(session, RequestSession::Untracked) && config.heartbeat.is_none() {
            return None;
        }
        Some(Self {
            config: config.clone(),
            session,
            stream,
            stated,
            forget,
            outcome: None,
            replaying: None,
            credential: None,
            detach: false,
        })
    }

    /// Where the request goes with replay on: to the service, after a replay, or answered
    /// here. Sets `Last-Event-ID` when the request goes on after a replay.
    pub(crate) fn route<B>(&mut self, req: &mut Request<B>) -> Next {
        let (Some(histories), RequestSession::Known(session), Some(key)) =
            (&self.config.replay, &self.session, &self.stream)
        else {
            return Next::Call;
        };
        self.credential = histories.credential(req.headers()).flatten();
        self.detach = histories.detaches(req.method(), key);
        let route = replay::route(&self.config, histories, session, key, req);
        self.follow(route)
    }

    /// What the history store said about an ID not in memory: replay it and go on with the
    /// service after its newest event, or the policy for unknown IDs.
    pub(crate) fn located<B>(&mut self, located: Located, req: &mut Request<B>) -> Next {
        let Some(histories) = self.config.replay.clone() else {
            return Next::Call;
        };
        match located {
            Located::Found(replaying, newest) => {
                if let Some(value) = newest.and_then(|id| HeaderValue::from_str(&id).ok()) {
                    req.headers_mut().insert(LAST_EVENT_ID.clone(), value);
                }
                self.follow(Route::CallAfter(replaying))
            }
            Located::Answer(answer) => Next::Answer(answer),
            Located::NotFound => self.follow(replay::unknown(&histories)),
        }
    }

    fn follow(&mut self, route: Route) -> Next {
        match route {
            Route::Call(outcome) => {
                self.outcome = outcome;
                Next::Call
            }
            Route::CallAfter(replaying) => {
                self.replaying = Some(replaying);
                Next::Call
            }
            Route::Answer(answer) => Next::Answer(answer),
            Route::Locate(locate) => Next::Locate(locate),
        }
    }

    /// The store deletion to wait for before a successful response that ends its session.
    fn forget<B>(&self, response: &Response<B>) -> Option<Forget> {
        let RequestSession::Known(session) = &self.session else {
            return None;
        };
        if !(self.forget && response.status().is_success()) {
            return None;
        }
        let worker = self.config.worker.clone();
        let histories = self.config.replay.clone();
        let session = session.clone();
        // The worker logs and counts a failure; the response goes out either way.
        Some(Box::pin(async move {
            if let Some(histories) = histories {
                histories.purge_session(&session);
                if let Some(store) = &histories.config.store
                    && let Err(error) = store.purge_session(&session).await
                {
                    tracing::warn!(%error, "could not purge an ended session's histories");
                }
            }
            let _ = worker.forget(&session).await;
        }))
    }
}

/// Frames buffered between the task that reads a detachable stream and its client.
const RELAY_FRAMES: usize = 16;

/// Where a request goes after its route was chosen.
pub(crate) enum Next {
    /// To the wrapped service.
    Call,
    /// Answered here.
    Answer(Box<Answer>),
    /// To the history store first.
    Locate(Locate),
}

impl<S, ReqBody> State<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn next(next: Next, mut service: S, request: Request<ReqBody>) -> Self {
        match next {
            Next::Call => State::Calling {
                future: service.call(request),
            },
            Next::Answer(answer) => State::Answered {
                answer: Some(answer),
            },
            Next::Locate(locate) => State::Locating {
                locate,
                service: Some(service),
                request: Some(request),
            },
        }
    }
}

/// The deletion of a session that a response ended.
type Forget = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project! {
    /// The response future of [`EventTracking`](crate::EventTracking): resolves to the inner
    /// service's response with its body wrapped in a [`TrackingBody`] (see
    /// [`EventTracking`](crate::EventTracking) for an example). When resuming needs the store, it
    /// first reads the stream's last event ID, then calls the inner service.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        info: Option<RequestInfo>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        /// Reading the stream's last event ID; the service (polled ready) and the request wait.
        Loading {
            load: Load,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        /// The inner service's future.
        Calling {
            #[pin]
            future: S::Future,
        },
        /// Looking an ID up in the history store; the service (polled ready) and the request
        /// wait.
        Locating {
            locate: Locate,
            service: Option<S>,
            request: Option<Request<ReqBody>>,
        },
        /// Answered here, from history: the service is not called.
        Answered {
            answer: Option<Box<Answer>>,
        },
        /// The response ended its session: forgetting it before the response goes out, so that
        /// the client's next request finds it gone.
        Forgetting {
            forget: Forget,
            response: Option<S::Response>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    /// Where a request goes once its route is known.
    pub(crate) fn routed(
        next: Next,
        mut service: S,
        request: Request<ReqBody>,
        info: Option<RequestInfo>,
    ) -> Self
    where
        S: Clone,
    {
        let state = match next {
            Next::Call => State::Calling {
                future: service.call(request),
            },
            // The service polled ready waits in the future; a clone takes its place.
            next => State::next(next, service, request),
        };
        Self { state, info }
    }

    pub(crate) fn calling(future: S::Future, info: Option<RequestInfo>) -> Self {
        Self {
            state: State::Calling { future },
            info,
        }
    }

    pub(crate) fn loading(
        load: Load,
        service: S,
        request: Request<ReqBody>,
        info: Option<RequestInfo>,
    ) -> Self {
        Self {
            state: State::Loading {
                load,
                service: Some(service),
                request: Some(request),
            },
            info,
        }
    }
}

impl<S, ReqBody> fmt::Debug for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Loading { .. } => "loading",
            State::Calling { .. } => "calling",
            State::Forgetting { .. } => "forgetting",
            State::Answered { .. } => "answered",
            State::Locating { .. } => "locating",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body + Send + 'static,
    ResBody::Data: From<Bytes> + Send,
    ResBody::Error: Send,
{
    type Output = Result<Response<TrackingBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Loading {
                    load,
                    service,
                    request,
                } => {
                    let loaded = ready!(load.as_mut().poll(cx));
                    let (Some(service), Some(mut request)) = (service.take(), request.take())
                    else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    let labels = this.info.as_ref().map(|i| i.config.labels().clone());
                    resume::finish(&mut request, loaded, &labels.unwrap_or_default());
                    let next = this
                        .info
                        .as_mut()
                        .map_or(Next::Call, |i| i.route(&mut request));
                    this.state.set(State::next(next, service, request));
                }
                StateProj::Locating {
                    locate,
                    service,
                    request,
                } => {
                    let located = ready!(locate.as_mut().poll(cx));
                    let (Some(service), Some(mut request)) = (service.take(), request.take())
                    else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    let next = this
                        .info
                        .as_mut()
                        .map_or(Next::Call, |i| i.located(located, &mut request));
                    this.state.set(State::next(next, service, request));
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
                    if let Some(forget) = this.info.as_ref().and_then(|i| i.forget(&response)) {
                        this.state.set(State::Forgetting {
                            forget,
                            response: Some(response),
                        });
                        continue;
                    }
                    return Poll::Ready(Ok(finish(response, this.info.take())));
                }
                StateProj::Answered { answer } => {
                    let Some(answer) = answer.take() else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    return Poll::Ready(Ok(self::answer(answer, this.info.take())));
                }
                StateProj::Forgetting { forget, response } => {
                    ready!(forget.as_mut().poll(cx));
                    let Some(response) = response.take() else {
                        unreachable!("ResponseFuture polled after completion");
                    };
                    return Poll::Ready(Ok(finish(response, this.info.take())));
                }
            }
        }
    }
}

fn finish<B>(response: Response<B>, info: Option<RequestInfo>) -> Response<TrackingBody<B>>
where
    B: Body + Send + 'static,
    B::Data: From<Bytes> + Send,
    B::Error: Send,
{
    match info {
        Some(info) => wrap(response, info),
        None => response.map(TrackingBody::passthrough),
    }
}

/// Wraps the body of a successful, uncompressed `text/event-stream` response with a known
/// session; passes everything else through.
fn wrap<B>(mut response: Response<B>, info: RequestInfo) -> Response<TrackingBody<B>>
where
    B: Body + Send + 'static,
    B::Data: From<Bytes> + Send,
    B::Error: Send,
{
    let config = info.config.clone();
    match trackable(&response) {
        Trackable::Yes => {}
        Trackable::Encoded => {
            config.encoded_event_stream();
            return response.map(TrackingBody::passthrough);
        }
        Trackable::No => return response.map(TrackingBody::passthrough),
    }
    let named = match &info.session {
        RequestSession::InResponse => {
            config
                .source
                .of_response(response.headers(), config.max_key_len, config.labels())
        }
        other => other.clone(),
    };
    let session = match named {
        RequestSession::Known(session) => Some(session),
        RequestSession::Absent => {
            // An event stream of no session (MCP's session-less revision, say): untracked,
            // and counted as such.
            config
                .labels()
                .counter_with(m::UNTRACKED, "reason", "no_session")
                .increment(1);
            None
        }
        RequestSession::InResponse | RequestSession::Untracked => None,
    };
    let attachment = attach(&config, session.as_ref(), &info);
    // Injected bytes would break a declared length.
    let heartbeat = config
        .heartbeat
        .filter(|_| !response.headers().contains_key(header::CONTENT_LENGTH));
    // After a replay the service was told to go on after the newest replayed event: the replay
    // must reach the client whether or not the stream can be tracked.
    if attachment.is_none() && heartbeat.is_none() && info.replaying.is_none() {
        return response.map(TrackingBody::passthrough);
    }
    // With replay, the stream's events go to its history: the one the replay came from, or
    // the request's own.
    let mut replaying = info.replaying;
    let producer = match (&config.replay, &attachment, &session, &info.stream) {
        (Some(histories), Some(_), Some(session), Some(key)) => {
            match replaying.as_ref().and_then(|r| r.history.as_ref()) {
                Some(history) => {
                    histories.attach(history);
                    Some((histories.clone(), history.clone()))
                }
                None => histories
                    .produce(session, key, response.headers(), info.credential)
                    .map(|history| (histories.clone(), history)),
            }
        }
        _ => None,
    };
    if let Some(outcome) = info
        .outcome
        .or_else(|| replaying.as_ref().and_then(|r| r.outcome))
    {
        response
            .headers_mut()
            .insert(SSE_REPLAY.clone(), outcome.header());
    }
    if let Some((histories, _)) = &producer
        && info.detach
    {
        // Read by a task of its own, so that it may outlive its client; the client gets the
        // frames through a small channel.
        let histories = histories.clone();
        let seam = replaying.as_mut().and_then(|r| r.seam.take());
        let (tx, rx) = mpsc::channel(RELAY_FRAMES);
        let reader = config
            .stream_state(attachment, None, config.settle)
            .with_replay(producer, None);
        let client = config
            .stream_state(None, heartbeat, None)
            .relayed(replaying.map(|r| *r), rx);
        let (parts, body) = response.into_parts();
        spawn_producer(body, reader, seam, tx, histories);
        return Response::from_parts(parts, TrackingBody::answered(Some(client)));
    }
    // An event stream without a session still gets heartbeats when they are on.
    let tracking = config
        .stream_state(attachment, heartbeat, config.settle)
        .with_replay(producer, replaying.map(|r| *r));
    response.map(|body| TrackingBody::tracked(body, tracking))
}

/// The request's stream's hold on its position, if it can be tracked (counted when not).
fn attach(config: &Config, session: Option<&SessionId>, info: &RequestInfo) -> Option<Attachment> {
    let (Some(session), Some(stream)) = (session, &info.stream) else {
        return None;
    };
    match config.worker.attach(session, stream) {
        Ok(attachment) => {
            if let Some(id) = &info.stated {
                attachment.resume_from(id);
            }
            Some(attachment)
        }
        Err(full) => {
            // Debug, not warn: a flood of new keys must not become a flood of log lines. The
            // counter is what to alert on.
            config
                .labels()
                .counter_with(m::UNTRACKED, "reason", full.reason())
                .increment(1);
            tracing::debug!(%session, %stream, reason = full.reason(), "stream not tracked");
            None
        }
    }
}

/// A response the layer answers itself (from history, or a status for an unknown ID).
fn answer<B: Body>(answer: Box<Answer>, info: Option<RequestInfo>) -> Response<TrackingBody<B>> {
    let Answer {
        status,
        headers,
        replay,
    } = *answer;
    let body = match (replay, info) {
        (Some(replaying), Some(info)) => {
            let config = info.config.clone();
            let session = match &info.session {
                RequestSession::Known(session) => Some(session.clone()),
                _ => None,
            };
            let attachment = attach(&config, session.as_ref(), &info);
            let state = config
                .stream_state(attachment, config.heartbeat, config.settle)
                .with_replay(None, Some(replaying));
            TrackingBody::answered(Some(state))
        }
        _ => TrackingBody::answered(None),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Whether a response can be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trackable {
    /// A successful `text/event-stream` response (any case, any parameters), not encoded.
    Yes,
    /// A successful event stream with a content coding (compressed inside the layer).
    Encoded,
    /// Anything else.
    No,
}

pub(crate) fn trackable<B>(response: &Response<B>) -> Trackable {
    let headers = response.headers();
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream(v.as_bytes()));
    if !(event_stream && response.status().is_success()) {
        return Trackable::No;
    }
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        Trackable::Encoded
    } else {
        Trackable::Yes
    }
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
        assert_eq!(trackable(&sse().body(()).unwrap()), Trackable::Yes);
        assert_eq!(
            trackable(
                &sse()
                    .header(header::CONTENT_ENCODING, "identity")
                    .body(())
                    .unwrap()
            ),
            Trackable::Yes
        );
        assert_eq!(
            trackable(
                &sse()
                    .header(header::CONTENT_ENCODING, "gzip")
                    .body(())
                    .unwrap()
            ),
            Trackable::Encoded
        );
        assert_eq!(
            trackable(&sse().status(500).body(()).unwrap()),
            Trackable::No
        );
        assert_eq!(trackable(&Response::new(())), Trackable::No);
    }
}
