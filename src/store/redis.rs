//! [`RedisStore`]: a store that several replicas share, on Redis.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, RetryMethod, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::{LastEventId, SessionRecord, SessionStore, SessionUpdate, StoreError, StoreFuture};
use crate::{SessionId, StreamKey};

/// Updates per `EVALSHA` inside a batch's pipeline: keeps each script run short, so Redis stays
/// responsive to other clients during large batches.
const CHUNK: usize = 512;

/// Applies updates atomically with the forward-only rule, on the server.
///
/// KEYS: one hash per update's session (a session may appear more than once, once per stream).
/// ARGV[1]: TTL in ms (0 = none); then, per key, five values: the stream key (the hash field),
/// version (20 zero-padded digits, so that string order is numeric order and no precision is
/// lost in Lua's doubles), activity (ms since the epoch), cleared flag ("1"/"0") and the ID. A
/// field's value is `version activity cleared id`, space-separated (the ID last: it may hold
/// spaces).
const APPLY: &str = r"
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  local j = 2 + (i - 1) * 5
  local stream, version, activity = ARGV[j], ARGV[j + 1], ARGV[j + 2]
  local value = version .. ' ' .. activity .. ' ' .. ARGV[j + 3] .. ' ' .. ARGV[j + 4]
  local current = redis.call('HGET', KEYS[i], stream)
  if current then
    local v, a, rest = string.match(current, '^(%d+) (%d+) (.*)$')
    if v then
      if tonumber(a) > tonumber(activity) then
        activity = a
      end
      if v >= version then
        value = v .. ' ' .. activity .. ' ' .. rest
      else
        value = version .. ' ' .. activity .. ' ' .. ARGV[j + 3] .. ' ' .. ARGV[j + 4]
      end
    end
  end
  redis.call('HSET', KEYS[i], stream, value)
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return #KEYS
";

/// A store on Redis, for deployments with several replicas: every replica reads and writes the
/// same sessions, and the newer version wins whatever order writes arrive in.
///
/// - One round trip per batch: a pipeline of `EVALSHA` calls of a small Lua script, each applying
///   up to 512 updates atomically with the forward-only rule (compared on the server).
/// - One hash per session, at `prefix + session key`, with one field per stream (the stream key)
///   whose value is `version activity cleared id` (space-separated: a 20-digit version, the
///   activity in ms since the epoch, `1` if the ID was cleared, else `0`, then the ID). The hash
///   expires after the idle TTL, refreshed on every write of any of its streams, and deleting a
///   session is one `DEL`. (Before 0.1 was released, the hash held one position per session, in
///   fields `v`, `a`, `c`, `id`; such hashes are not migrated: they read as absent and expire.)
/// - The connection is a [`ConnectionManager`]: it reconnects by itself after Redis restarts.
/// - Errors are transient when a retry may help (I/O, timeouts, dropped connections, a loading
///   or busy server), permanent otherwise.
///
/// # Redis Cluster
///
/// A script may only touch keys of one hash slot, and the keys of one batch would span slots.
/// Use a prefix with a hash tag (for example `{sse-tracking}:`), so that every key lands in the
/// same slot; this keeps batches atomic per chunk but puts all sessions on one shard. Connecting
/// through a cluster client is not supported: point the store at the node that owns that slot
/// (or at a non-cluster Redis).
///
/// ```no_run
/// use std::time::Duration;
/// use tower_sse_tracking::store::RedisStore;
///
/// # async fn run() -> Result<(), tower_sse_tracking::store::StoreError> {
/// let store = RedisStore::builder()
///     .prefix("myapp:sse:")
///     .idle_ttl(Duration::from_secs(24 * 3600))
///     .connect("redis://127.0.0.1/")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: ConnectionManager,
    script: Script,
    prefix: String,
    idle_ttl: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("idle_ttl", &self.inner.idle_ttl)
            .finish_non_exhaustive()
    }
}

/// Options of a [`RedisStore`].
#[derive(Clone, Debug)]
pub struct RedisStoreBuilder {
    prefix: String,
    idle_ttl: Duration,
    response_timeout: Duration,
    connection_timeout: Duration,
}

/// Default time a session is kept after its last write: 7 days.
const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: "sse-tracking:".to_owned(),
            idle_ttl: DEFAULT_IDLE_TTL,
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisStoreBuilder {
    /// Prefix of every key.
    ///
    /// Defaults to `sse-tracking:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Expiry of a session's key after its last write (zero: keys never expire).
    ///
    /// Defaults to 7 days.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Time limit of one request.
    ///
    /// Defaults to 2 s.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Time limit of one connection attempt.
    ///
    /// Defaults to 2 s.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// Connects to Redis at `url` (`redis://host:port/db`).
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] for a malformed URL, a transient one if Redis cannot be
    /// reached.
    pub async fn connect(self, url: &str) -> Result<RedisStore, StoreError> {
        let (_, connection) = connect(url, self.response_timeout, self.connection_timeout).await?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                script: Script::new(APPLY),
                prefix: self.prefix,
                idle_ttl: self.idle_ttl,
            }),
        })
    }
}

impl RedisStore {
    /// Connects with the default options (see [`builder`](Self::builder)).
    ///
    /// # Errors
    ///
    /// See [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        RedisStoreBuilder::default().connect(url).await
    }

    /// Options: key prefix, TTL, timeouts.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// The Redis key of a session: a hash with one field per stream.
    pub fn key(&self, session: &SessionId) -> String {
        format!("{}{}", self.inner.prefix, session.as_str())
    }

    async fn save(&self, batch: &[SessionUpdate]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ttl_ms = u64::try_from(self.inner.idle_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut pipe = redis::pipe();
        for chunk in batch.chunks(CHUNK) {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.inner.script.get_hash())
                .arg(chunk.len());
            for update in chunk {
                cmd.arg(self.key(&update.session));
            }
            cmd.arg(ttl_ms);
            for update in chunk {
                let (cleared, id) = match &update.last_event_id {
                    LastEventId::Set(id) => ("0", id.as_ref()),
                    LastEventId::Cleared => ("1", ""),
                };
                cmd.arg(update.stream.as_str())
                    .arg(format!("{:020}", update.version))
                    .arg(millis(update.last_activity))
                    .arg(cleared)
                    .arg(id);
            }
            cmd.ignore();
        }
        let mut connection = self.inner.connection.clone();
        match pipe.query_async::<()>(&mut connection).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // First use on this server (or after a restart, or SCRIPT FLUSH): load, retry.
                self.inner
                    .script
                    .prepare_invoke()
                    .load_async(&mut connection)
                    .await
                    .map_err(classify)?;
                pipe.query_async::<()>(&mut connection)
                    .await
                    .map_err(classify)
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn get(
        &self,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut connection = self.inner.connection.clone();
        let value: Option<String> = redis::cmd("HGET")
            .arg(self.key(session))
            .arg(stream.as_str())
            .query_async(&mut connection)
            .await
            .map_err(classify)?;
        let Some(value) = value else {
            return Ok(None);
        };
        decode(&value).map(Some).ok_or_else(|| {
            StoreError::permanent(format!(
                "corrupt record at {} field {:?}",
                self.key(session),
                stream.as_str()
            ))
        })
    }

    async fn delete(&self, session: &SessionId) -> Result<(), StoreError> {
        let mut connection = self.inner.connection.clone();
        redis::cmd("DEL")
            .arg(self.key(session))
            .query_async::<()>(&mut connection)
            .await
            .map_err(classify)
    }
}

/// Decodes a field's value: `version activity cleared id`.
fn decode(value: &str) -> Option<SessionRecord> {
    let (version, rest) = value.split_once(' ')?;
    let (activity, rest) = rest.split_once(' ')?;
    let (cleared, id) = rest.split_once(' ')?;
    let last_event_id = match cleared {
        "0" => LastEventId::Set(Arc::from(id)),
        "1" => LastEventId::Cleared,
        _ => return None,
    };
    Some(SessionRecord {
        last_event_id,
        version: version.parse().ok()?,
        last_activity: UNIX_EPOCH + Duration::from_millis(activity.parse().ok()?),
    })
}

impl SessionStore for RedisStore {
    fn save_batch<'a>(&'a self, batch: &'a [SessionUpdate]) -> StoreFuture<'a, ()> {
        Box::pin(self.save(batch))
    }

    fn load<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
    ) -> StoreFuture<'a, Option<SessionRecord>> {
        Box::pin(self.get(session, stream))
    }

    fn delete_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(self.delete(session))
    }
}

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A client for `url`, and a connection manager on it that reconnects by itself.
pub(crate) async fn connect(
    url: &str,
    response_timeout: Duration,
    connection_timeout: Duration,
) -> Result<(Client, ConnectionManager), StoreError> {
    let client = Client::open(url)
        .map_err(|e| StoreError::permanent(format!("invalid redis url {url:?}")).with_source(e))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(connection_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let connection = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(classify)?;
    Ok((client, connection))
}

/// Transient when the client library says a retry may help, except cluster redirects: this
/// store does not follow them, so a store pointed at the wrong node would retry forever.
pub(crate) fn classify(e: redis::RedisError) -> StoreError {
    let redirect = matches!(
        e.retry_method(),
        RetryMethod::MovedRedirect | RetryMethod::AskRedirect
    );
    let transient = !redirect
        && (e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || !matches!(e.retry_method(), RetryMethod::NoRetry));
    let error = if transient {
        StoreError::transient("redis request failed")
    } else {
        StoreError::permanent("redis request failed")
    };
    error.with_source(e)
}
