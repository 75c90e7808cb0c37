//! Session and stream keys: untrusted client input, validated once and then shared cheaply; and
//! where a request's session and stream come from.

use std::{borrow::Borrow, fmt, sync::Arc};

use http::{HeaderMap, HeaderName, Request, request::Parts};

use crate::metrics::{self as m, Labels};

/// Default cap on the length of a session key, in bytes.
pub(crate) const DEFAULT_MAX_SESSION_KEY_LEN: usize = 128;

/// Default cap on the length of a stream key, in bytes.
pub(crate) const DEFAULT_MAX_STREAM_KEY_LEN: usize = 256;

/// A validated session key.
///
/// Session keys usually come from clients (a header such as `mcp-session-id`), so they are
/// checked before anything is stored under them: not empty, at most a configured number of bytes
/// (128 by default), and free of control characters. Cloning is cheap (an `Arc<str>`).
///
/// ```
/// use tower_sse_tracking::SessionId;
///
/// let id = SessionId::new("a1b2c3").unwrap();
/// assert_eq!(id.as_str(), "a1b2c3");
/// assert!(SessionId::new("bad\nkey").is_err());
/// assert!(SessionId::with_max_len("toolong", 4).is_err());
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

/// Equal bytes; the same allocation first, without reading them (the registry, the worker and
/// the stores mostly compare clones of one key).
impl PartialEq for SessionId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// The bytes' hash, as derived (consistent with the equality above).
impl std::hash::Hash for SessionId {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl SessionId {
    /// An empty key, never a session's: the placeholder of a slot made ahead of use (see
    /// `reserve`). It shares its bytes with [`StreamKey::whole_session`].
    pub(crate) fn blank() -> Self {
        Self(StreamKey::whole_session().0)
    }

    /// Validates `key` with the default length cap of 128 bytes (the layer's default too, see
    /// [`max_session_key_len`](crate::EventTrackingLayerBuilder::max_session_key_len)).
    ///
    /// # Errors
    ///
    /// Returns [`InvalidKey`] when `key` is empty, too long or contains a control
    /// character.
    pub fn new(key: &str) -> Result<Self, InvalidKey> {
        Self::with_max_len(key, DEFAULT_MAX_SESSION_KEY_LEN)
    }

    /// Validates `key` with a length cap of `max_len` bytes.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidKey`] when `key` is empty, longer than `max_len` bytes or contains
    /// a control character.
    pub fn with_max_len(key: &str, max_len: usize) -> Result<Self, InvalidKey> {
        Self::check(key.as_bytes(), max_len)?;
        Ok(Self(Arc::from(key)))
    }

    /// Validates raw bytes (such as a header value) as a session key.
    ///
    /// # Errors
    ///
    /// As [`with_max_len`](Self::with_max_len), and also when the bytes are not UTF-8.
    pub fn from_bytes(key: &[u8], max_len: usize) -> Result<Self, InvalidKey> {
        Self::check(key, max_len)?;
        let key = std::str::from_utf8(key).map_err(|_| InvalidKey::NotUtf8)?;
        Ok(Self(Arc::from(key)))
    }

    fn check(key: &[u8], max_len: usize) -> Result<(), InvalidKey> {
        if key.is_empty() {
            return Err(InvalidKey::Empty);
        }
        check_chars(key, max_len)
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a key's length and characters (not its emptiness).
fn check_chars(key: &[u8], max_len: usize) -> Result<(), InvalidKey> {
    if key.len() > max_len {
        return Err(InvalidKey::TooLong {
            len: key.len(),
            max: max_len,
        });
    }
    // Control characters: C0 and DEL (C1 controls are caught as characters below).
    if key.iter().any(|b| b.is_ascii_control()) {
        return Err(InvalidKey::ControlCharacter);
    }
    if let Ok(s) = std::str::from_utf8(key)
        && s.chars().any(char::is_control)
    {
        return Err(InvalidKey::ControlCharacter);
    }
    Ok(())
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for SessionId {
    type Error = InvalidKey;

    fn try_from(key: &str) -> Result<Self, Self::Error> {
        Self::new(key)
    }
}

/// Which of a session's streams an event stream is: positions (last event IDs) are tracked and
/// resumed per session *and* stream, so that two endpoints of one session never share one.
///
/// The layer takes it from the request: by default its path (`/events`, `/chat/42/stream`; the
/// query is not part of it), or from a function of the request
/// ([`stream_key`](crate::EventTrackingLayerBuilder::stream_key)). The empty key stands for
/// the whole session ([`StreamKey::whole_session`], chosen by
/// [`one_position_per_session`](crate::EventTrackingLayerBuilder::one_position_per_session)):
/// for protocols whose event IDs are unique across all streams of a session.
///
/// Stream keys come from clients too, so they are checked like session keys (at most a
/// configured number of bytes, 256 by default, and no control characters), except that the
/// empty key is allowed. Cloning is cheap (an `Arc<str>`).
///
/// ```
/// use tower_sse_tracking::StreamKey;
///
/// let key = StreamKey::new("/events").unwrap();
/// assert_eq!(key.as_str(), "/events");
/// assert!(StreamKey::whole_session().is_whole_session());
/// assert!(StreamKey::new("/a\nb").is_err());
/// ```
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct StreamKey(Arc<str>);

/// Equal bytes; the same allocation first (see [`SessionId`]'s).
impl PartialEq for StreamKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

/// The bytes' hash, as derived (consistent with the equality above).
impl std::hash::Hash for StreamKey {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl StreamKey {
    /// Validates `key` with the default length cap of 256 bytes.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidKey`] when `key` is longer than 256 bytes or contains a control
    /// character.
    pub fn new(key: &str) -> Result<Self, InvalidKey> {
        Self::with_max_len(key, DEFAULT_MAX_STREAM_KEY_LEN)
    }

    /// Validates `key` with a length cap of `max_len` bytes.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidKey`] when `key` is longer than `max_len` bytes or contains a control
    /// character.
    pub fn with_max_len(key: &str, max_len: usize) -> Result<Self, InvalidKey> {
        check_chars(key.as_bytes(), max_len)?;
        Ok(Self(Arc::from(key)))
    }

    /// The empty key: one position for all of a session's streams.
    pub fn whole_session() -> Self {
        static WHOLE: std::sync::OnceLock<StreamKey> = std::sync::OnceLock::new();
        WHOLE.get_or_init(|| Self(Arc::from(""))).clone()
    }

    /// Whether this is the [whole session's](Self::whole_session) key.
    pub fn is_whole_session(&self) -> bool {
        self.0.is_empty()
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StreamKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for StreamKey {
    type Error = InvalidKey;

    fn try_from(key: &str) -> Result<Self, Self::Error> {
        Self::new(key)
    }
}

/// Why a session or stream key was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The key is empty.
    Empty,
    /// The key is longer than allowed.
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The cap in bytes.
        max: usize,
    },
    /// The key contains a control character.
    ControlCharacter,
    /// The key is not valid UTF-8.
    NotUtf8,
    /// A percent-encoded key (cookie or query parameter) has a `%` that is not followed by two
    /// hex digits.
    BadEscape,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("key is empty"),
            Self::TooLong { len, max } => {
                write!(f, "key is {len} bytes long, more than {max}")
            }
            Self::ControlCharacter => f.write_str("key contains a control character"),
            Self::NotUtf8 => f.write_str("key is not valid utf-8"),
            Self::BadEscape => f.write_str("key has an invalid percent escape"),
        }
    }
}

impl std::error::Error for InvalidKey {}

/// A function of the request head that names its session.
pub(crate) type KeyFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// Where a request's session key comes from.
#[derive(Clone)]
pub(crate) enum SessionSource {
    /// A header on the request or, if the request has none, on the response.
    Header(HeaderName),
    /// A cookie of the request (`Cookie` headers), by name.
    Cookie(Arc<str>),
    /// A parameter of the request's query string, by name.
    Query(Arc<str>),
    /// A function of the request head.
    Fn(Arc<KeyFn>),
}

impl fmt::Debug for SessionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Cookie(name) => f.debug_tuple("Cookie").field(name).finish(),
            Self::Query(name) => f.debug_tuple("Query").field(name).finish(),
            Self::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// The stream keys of the most recent paths, one per bucket (picked by the path's length and
/// last byte), so that the streams of one endpoint share one key instead of holding a copy each.
/// Bounded; paths are client input, and one that misses only costs the allocation it would
/// have cost anyway.
#[derive(Default)]
pub(crate) struct KeyCache([spin::mutex::SpinMutex<Option<StreamKey>, spin::relax::Yield>; 8]);

impl KeyCache {
    fn key(&self, path: &str, max_len: usize) -> Result<StreamKey, InvalidKey> {
        let bucket = (path.len() ^ usize::from(path.as_bytes().last().copied().unwrap_or(0))) % 8;
        let mut cached = self.0[bucket].lock();
        // (Checked against `max_len` too: clones of a builder share the cache.)
        if let Some(key) = cached
            .as_ref()
            .filter(|key| key.as_str() == path && path.len() <= max_len)
        {
            return Ok(key.clone());
        }
        let key = StreamKey::with_max_len(path, max_len)?;
        *cached = Some(key.clone());
        Ok(key)
    }
}

/// A function of the request head that names its stream.
pub(crate) type StreamFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// Where a request's stream key comes from.
#[derive(Clone)]
pub(crate) enum StreamSource {
    /// The request's path, with the keys of recent paths to share.
    Path(Arc<KeyCache>),
    /// One position per session: the empty key.
    WholeSession,
    /// A function of the request head.
    Fn(Arc<StreamFn>),
}

impl fmt::Debug for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(_) => f.write_str("Path"),
            Self::WholeSession => f.write_str("WholeSession"),
            Self::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

impl StreamSource {
    /// Keys from the request's path.
    pub(crate) fn path() -> Self {
        Self::Path(Arc::default())
    }

    /// The stream key of a request; `None` (not tracked) when the function names none, or when
    /// the key is invalid (counted and logged: keys are client input).
    pub(crate) fn of_request<B>(
        &self,
        req: Request<B>,
        max_len: usize,
        labels: &Labels,
    ) -> (Request<B>, Option<StreamKey>) {
        let (req, key) = match self {
            Self::Path(cache) => {
                let key = cache.key(req.uri().path(), max_len);
                (req, key)
            }
            Self::WholeSession => return (req, Some(StreamKey::whole_session())),
            Self::Fn(f) => {
                let (parts, body) = req.into_parts();
                let key = f(&parts);
                let req = Request::from_parts(parts, body);
                match key {
                    Some(key) => (req, StreamKey::with_max_len(&key, max_len)),
                    None => return (req, None),
                }
            }
        };
        match key {
            Ok(key) => (req, Some(key)),
            Err(error) => {
                labels
                    .counter_with(m::UNTRACKED, "reason", "invalid_key")
                    .increment(1);
                tracing::debug!(%error, "invalid stream key: not tracked");
                (req, None)
            }
        }
    }
}

/// The session a request belongs to, as far as the request tells.
#[derive(Debug, Clone)]
pub(crate) enum RequestSession {
    /// The request named a valid session.
    Known(SessionId),
    /// The request named none, and the session header may name it on the response (servers
    /// such as MCP ones assign the session there).
    InResponse,
    /// No session: an invalid key (counted). Not tracked.
    Untracked,
    /// No session named, and none can come with the response (a session-less protocol, or a
    /// client that sent no key): not tracked, and counted as `no_session` if the response is
    /// an event stream.
    Absent,
}

impl SessionSource {
    /// The session of a request. Takes the request and gives it back unchanged, since a key
    /// function sees the request head as [`Parts`].
    pub(crate) fn of_request<B>(
        &self,
        req: Request<B>,
        max_len: usize,
        labels: &Labels,
    ) -> (Request<B>, RequestSession) {
        let valid = |key| valid(key, labels);
        match self {
            Self::Header(name) => {
                let session = match req.headers().get(name) {
                    Some(value) => valid(SessionId::from_bytes(value.as_bytes(), max_len)),
                    None => RequestSession::InResponse,
                };
                (req, session)
            }
            Self::Cookie(name) => {
                let session = match cookie(req.headers(), name) {
                    Some(value) => valid(
                        percent_decode(value.as_bytes(), false)
                            .and_then(|key| SessionId::from_bytes(&key, max_len)),
                    ),
                    None => RequestSession::Absent,
                };
                (req, session)
            }
            Self::Query(name) => {
                let session = match req.uri().query().and_then(|q| query_param(q, name)) {
                    Some(value) => {
                        valid(value.and_then(|key| SessionId::from_bytes(&key, max_len)))
                    }
                    None => RequestSession::Absent,
                };
                (req, session)
            }
            Self::Fn(f) => {
                let (parts, body) = req.into_parts();
                let session = match f(&parts) {
                    Some(key) => valid(SessionId::with_max_len(&key, max_len)),
                    None => RequestSession::Absent,
                };
                (Request::from_parts(parts, body), session)
            }
        }
    }

    /// The session named by a response's headers (header source only): known, absent, or an
    /// invalid key (counted).
    pub(crate) fn of_response(
        &self,
        headers: &HeaderMap,
        max_len: usize,
        labels: &Labels,
    ) -> RequestSession {
        let Self::Header(name) = self else {
            return RequestSession::Absent;
        };
        match headers.get(name) {
            Some(value) => valid(SessionId::from_bytes(value.as_bytes(), max_len), labels),
            None => RequestSession::Absent,
        }
    }
}

/// The value of the first cookie named `name` in the request's `Cookie` headers (RFC 6265:
/// `name=value` pairs separated by `;`), without the optional double quotes around it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            (n.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

/// The decoded value of the first parameter named `name` in a query string
/// (`application/x-www-form-urlencoded`: `&`-separated pairs, `+` for a space, `%XX` escapes).
/// `Err` when the value has an invalid escape (the key is then refused, not guessed at).
fn query_param(query: &str, name: &str) -> Option<Result<Vec<u8>, InvalidKey>> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = percent_decode(n.as_bytes(), true).ok()?;
        (n == name.as_bytes()).then(|| percent_decode(v.as_bytes(), true))
    })
}

/// Decodes `%XX` escapes (and `+` as a space when `plus` is set). A `%` not followed by two hex
/// digits makes the value invalid.
fn percent_decode(bytes: &[u8], plus: bool) -> Result<Vec<u8>, InvalidKey> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) else {
                    return Err(InvalidKey::BadEscape);
                };
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// A validated key, or an untracked request (counted and logged: keys are client input).
fn valid(key: Result<SessionId, InvalidKey>, labels: &Labels) -> RequestSession {
    match key {
        Ok(session) => RequestSession::Known(session),
        Err(error) => {
            labels
                .counter_with(m::UNTRACKED, "reason", "invalid_key")
                .increment(1);
            tracing::debug!(%error, "invalid session key: not tracked");
            RequestSession::Untracked
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for key in ["a", "0f8fad5b-d9cb-469f-a165-70867728950e", "ключ", "a b"] {
            assert_eq!(SessionId::new(key).unwrap().as_str(), key);
        }
    }

    #[test]
    fn keys_are_equal_by_their_bytes_whether_or_not_they_share_an_allocation() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let a = SessionId::new("a1b2").unwrap();
        let (clone, apart) = (a.clone(), SessionId::new("a1b2").unwrap());
        assert!(!Arc::ptr_eq(&a.0, &apart.0));
        assert!(a == clone && a == apart && clone == apart);
        assert_ne!(a, SessionId::new("a1b3").unwrap());
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&apart));
        let k = StreamKey::new("/events").unwrap();
        let (clone, apart) = (k.clone(), StreamKey::new("/events").unwrap());
        assert!(k == clone && k == apart);
        assert_ne!(k, StreamKey::new("/event").unwrap());
        assert_eq!(hasher.hash_one(&k), hasher.hash_one(&apart));
    }

    #[test]
    fn refuses_empty_long_and_control_keys() {
        assert_eq!(SessionId::new(""), Err(InvalidKey::Empty));
        let long = "x".repeat(DEFAULT_MAX_SESSION_KEY_LEN + 1);
        assert!(matches!(
            SessionId::new(&long),
            Err(InvalidKey::TooLong { len: 129, max: 128 })
        ));
        assert!(SessionId::new(&long[1..]).is_ok());
        for key in ["a\nb", "a\rb", "\0", "a\x7f", "a\u{85}b", "tab\there"] {
            assert_eq!(
                SessionId::new(key),
                Err(InvalidKey::ControlCharacter),
                "{key:?}"
            );
        }
    }

    #[test]
    fn refuses_non_utf8_bytes() {
        assert_eq!(
            SessionId::from_bytes(b"a\xffb", 128),
            Err(InvalidKey::NotUtf8)
        );
    }

    fn key<B>(source: &SessionSource, req: Request<B>) -> Option<String> {
        match source.of_request(req, 128, &Labels::default()).1 {
            RequestSession::Known(id) => Some(id.as_str().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn query_parameters_are_found_anywhere_and_decoded() {
        let query = SessionSource::Query(Arc::from("session"));
        let at = |uri: &str| key(&query, Request::get(uri).body(()).unwrap());
        assert_eq!(at("/e?session=a&max=30").as_deref(), Some("a"));
        assert_eq!(at("/e?max=30&session=a").as_deref(), Some("a"));
        assert_eq!(at("/e?session=a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(at("/e?s%65ssion=x").as_deref(), Some("x"), "encoded name");
        assert_eq!(
            at("/e?session=1&session=2").as_deref(),
            Some("1"),
            "first wins"
        );
        assert_eq!(at("/e?sessions=a"), None);
        assert_eq!(at("/e?xsession=a"), None);
        assert_eq!(at("/e?session"), None, "empty key");
        assert_eq!(at("/e?session=%zz"), None, "invalid escape");
        assert_eq!(at("/e?session=%0A"), None, "control character");
        assert_eq!(at("/e"), None);
    }

    #[test]
    fn cookies_are_found_among_others_and_decoded() {
        let source = SessionSource::Cookie(Arc::from("sid"));
        let with = |cookies: &[&str]| {
            let mut req = Request::get("/e");
            for c in cookies {
                req = req.header(http::header::COOKIE, *c);
            }
            key(&source, req.body(()).unwrap())
        };
        assert_eq!(with(&["sid=abc"]).as_deref(), Some("abc"));
        assert_eq!(
            with(&["theme=dark; sid=a%20b; x=1"]).as_deref(),
            Some("a b")
        );
        assert_eq!(
            with(&["theme=dark", "sid=\"quoted\""]).as_deref(),
            Some("quoted")
        );
        assert_eq!(
            with(&["sid=a+b"]).as_deref(),
            Some("a+b"),
            "no + decoding in cookies"
        );
        assert_eq!(with(&["xsid=a; sidx=b"]), None);
        assert_eq!(with(&["sid=%zz"]), None);
        assert_eq!(with(&[]), None);
    }
}
