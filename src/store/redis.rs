//! [`RedisStore`]: a store that several replicas share, on Redis.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, Cmd, Pipeline, RedisFuture, RetryMethod, Script, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
};

use super::{
    EventId, LastEventId, SessionRecord, SessionStore, SessionUpdate, StoreError, StoreFuture,
};
use crate::{SessionId, StreamKey};

/// Updates per `EVALSHA` inside a batch's pipeline: keeps each script run short, so Redis stays
/// responsive to other clients during large batches.
const CHUNK: usize = 512;

/// Script runs a cluster batch keeps in flight at once (see `save_to_cluster`; the Redis
/// history store's batches too).
pub(crate) const IN_FLIGHT: usize = 256;

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
/// [`RedisStoreBuilder::connect_cluster`] connects through redis-rs's cluster client, which
/// follows `MOVED` and `ASK` redirections and a failover by itself. Each session's hash is then
/// at `prefix{session key}`: the hash tag puts it in the session's own slot, so sessions spread
/// over the shards. A batch is split by slot, one script run per slot (per 512 updates), up to
/// 256 of them in flight at once over the client's connections (one per node, pipelined): a
/// few round trips per batch. The script is idempotent (applying an update twice changes nothing), so a batch
/// that failed on one shard is simply written again. The prefix may not hold a brace there.
///
/// A single-node connection ([`connect`](RedisStoreBuilder::connect)) to one node of a cluster
/// works only with a prefix that is itself a hash tag (for example `{sse-tracking}:`), which
/// puts every session on one shard.
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
    connection: Shared,
    script: Script,
    prefix: String,
    idle_ttl: Duration,
    wait_for_replicas: Option<(u32, Duration)>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("idle_ttl", &self.inner.idle_ttl)
            .field("wait_for_replicas", &self.inner.wait_for_replicas)
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
    wait_for_replicas: Option<(u32, Duration)>,
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
            wait_for_replicas: None,
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

    /// Acknowledges a batch only once `replicas` replicas of every primary have it (Redis
    /// `WAIT`, at most `timeout`): a batch written but not replicated in time fails as a
    /// transient error, and the worker writes it again (applying it twice changes nothing).
    ///
    /// Redis replicates asynchronously: without this, a write acknowledged just before its
    /// primary dies can be missing on the replica that takes over, and the session's position
    /// goes back to the one before it after the failover. With it, an acknowledged write is on
    /// `replicas` replicas, and so survives the loss of a primary whenever a replica that has it
    /// is promoted (Redis promotes the most up-to-date one). In a cluster, every primary must
    /// have that many replicas confirming: while one shard has fewer (after a failover, until
    /// the failed node is back as a replica), no batch is acknowledged, and the worker keeps
    /// them to write again.
    ///
    /// Defaults to off (no wait).
    ///
    /// `timeout` must be shorter than the [response timeout](Self::response_timeout), which
    /// bounds the whole request: connecting fails otherwise.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_for_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Time limit of one connection attempt.
    ///
    /// Defaults to 2 s.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.wait_for_replicas {
            Some((_, wait)) if wait >= self.response_timeout => {
                Err(StoreError::permanent(format!(
                    "the replicas' wait ({wait:?}) must be shorter than the response timeout ({:?})",
                    self.response_timeout
                )))
            }
            _ => Ok(()),
        }
    }

    /// Connects to Redis at `url` (`redis://host:port/db`).
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] for a malformed URL or a [replicas' wait](Self::wait_for_replicas)
    /// not shorter than the response timeout, a transient one if Redis cannot be reached.
    pub async fn connect(self, url: &str) -> Result<RedisStore, StoreError> {
        self.check()?;
        let (_, connection) = connect(url, self.response_timeout, self.connection_timeout).await?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection: Shared::Single(connection),
                script: Script::new(APPLY),
                prefix: self.prefix,
                idle_ttl: self.idle_ttl,
                wait_for_replicas: self.wait_for_replicas,
            }),
        })
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port` each; the
    /// others are discovered). Each session's hash is at `prefix{session key}`, in the
    /// session's own slot (see [Redis Cluster](RedisStore#redis-cluster)).
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] for a malformed URL, no node given, a prefix holding `{` or
    /// `}` (it would change the hash tag) or a replicas' wait not shorter than the response
    /// timeout, a transient one if no node can be reached.
    ///
    /// ```no_run
    /// use tower_sse_tracking::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), tower_sse_tracking::store::StoreError> {
    /// let store = RedisStore::builder()
    ///     .prefix("myapp:sse:")
    ///     .connect_cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .await?;
    /// // A session's key: myapp:sse:{<session key>}
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<I, U>(self, nodes: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        self.check()?;
        let (_, connection) = connect_shared_cluster(
            &self.prefix,
            nodes,
            self.response_timeout,
            self.connection_timeout,
        )
        .await?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                script: Script::new(APPLY),
                prefix: self.prefix,
                idle_ttl: self.idle_ttl,
                wait_for_replicas: self.wait_for_replicas,
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

    /// The Redis key of a session: a hash with one field per stream. In a cluster,
    /// `prefix{session key}` (with `%` and `}` in the session key percent-encoded, so that the hash
    /// tag is the whole session key); otherwise `prefix` and the session key.
    pub fn key(&self, session: &SessionId) -> String {
        match self.inner.connection {
            Shared::Single(_) => format!("{}{}", self.inner.prefix, session.as_str()),
            Shared::Cluster(_) => format!("{}{{{}}}", self.inner.prefix, tag(session.as_str())),
        }
    }

    /// Classifies an error of this store's connection.
    fn classify(&self, e: redis::RedisError) -> StoreError {
        self.inner.connection.classify(e)
    }

    /// One script run applying `updates` (whose keys share a slot in a cluster).
    fn apply_cmd(&self, updates: &[&SessionUpdate], ttl_ms: u64) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.inner.script.get_hash()).arg(updates.len());
        for update in updates {
            cmd.arg(self.key(&update.session));
        }
        cmd.arg(ttl_ms);
        for update in updates {
            let (cleared, id) = match &update.last_event_id {
                LastEventId::Set(id) => ("0", id.as_bytes()),
                LastEventId::Cleared => ("1", &b""[..]),
            };
            cmd.arg(update.stream.as_str())
                .arg(format!("{:020}", update.version))
                .arg(millis(update.last_activity))
                .arg(cleared)
                .arg(id);
        }
        cmd
    }

    async fn save(&self, batch: &[SessionUpdate]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(batch).await?;
        match self.inner.wait_for_replicas {
            Some((replicas, timeout)) => self.wait(replicas, timeout).await,
            None => Ok(()),
        }
    }

    /// Waits until `replicas` replicas have what this store's connection wrote so far (`WAIT`).
    /// In a cluster the client sends it to every primary, once each (each node's connection
    /// carried this batch's runs for that node's slots), and answers with the smallest count.
    /// (A `WAIT` per script run would queue behind each other on a node's connection, each
    /// taking the whole timeout while a shard lacks a replica.)
    async fn wait(&self, replicas: u32, timeout: Duration) -> Result<(), StoreError> {
        let mut connection = self.inner.connection.get();
        let acked: u32 = wait_cmd(replicas, timeout)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
        replicated(acked, replicas, timeout)
    }

    async fn write(&self, batch: &[SessionUpdate]) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(self.inner.idle_ttl.as_millis()).unwrap_or(u64::MAX);
        if let Connection::Cluster(cluster) = self.inner.connection.get() {
            return self.save_to_cluster(&cluster, batch, ttl_ms).await;
        }
        let mut pipe = redis::pipe();
        let all: Vec<&SessionUpdate> = batch.iter().collect();
        for chunk in all.chunks(CHUNK) {
            pipe.add_command(self.apply_cmd(chunk, ttl_ms)).ignore();
        }
        let mut connection = self.inner.connection.get();
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

    /// A batch on a cluster: one script run per slot (per `CHUNK` updates), `IN_FLIGHT` of them
    /// in flight at a time; the client routes each to the slot's primary and pipelines those of
    /// one node. Random session keys put almost every update in a slot of its own, so a batch
    /// of thousands is thousands of runs: all sent at once, the last answers waited behind all
    /// the others, and under load they outlasted the response timeout (which applies to each
    /// run) although the nodes were working through them.
    async fn save_to_cluster(
        &self,
        cluster: &ClusterConnection,
        batch: &[SessionUpdate],
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        let mut by_slot: HashMap<Slot, Vec<&SessionUpdate>> = HashMap::new();
        for update in batch {
            by_slot
                .entry(Slot::for_key(self.key(&update.session)))
                .or_default()
                .push(update);
        }
        // Made up front (as `join_all` did): a lazy iterator's closures would have to live
        // across the awaits below.
        let runs: Vec<_> = by_slot
            .values()
            .flat_map(|updates| updates.chunks(CHUNK))
            .map(|updates| {
                let cmd = self.apply_cmd(updates, ttl_ms);
                let mut connection = cluster.clone();
                async move { self.run_script(&cmd, &mut connection).await }
            })
            .collect();
        // Every run is tried; the first error is the batch's (the others were applied, and
        // applying them again changes nothing).
        use futures_util::StreamExt as _;
        let mut first_error = None;
        let mut results = futures_util::stream::iter(runs).buffer_unordered(IN_FLIGHT);
        while let Some(result) = results.next().await {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs the script's `EVALSHA`, loading the script first where the server lacks it.
    async fn run_script(
        &self,
        cmd: &Cmd,
        connection: &mut ClusterConnection,
    ) -> Result<(), StoreError> {
        match cmd.query_async::<()>(connection).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // `SCRIPT LOAD` goes to every primary.
                self.inner
                    .script
                    .prepare_invoke()
                    .load_async(connection)
                    .await
                    .map_err(|e| self.classify(e))?;
                cmd.query_async::<()>(connection)
                    .await
                    .map_err(|e| self.classify(e))
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn get(
        &self,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let mut connection = self.inner.connection.get();
        let value: Option<String> = redis::cmd("HGET")
            .arg(self.key(session))
            .arg(stream.as_str())
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
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
        let mut connection = self.inner.connection.get();
        redis::cmd("DEL")
            .arg(self.key(session))
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.classify(e))
    }
}

/// Decodes a field's value: `version activity cleared id`.
fn decode(value: &str) -> Option<SessionRecord> {
    let (version, rest) = value.split_once(' ')?;
    let (activity, rest) = rest.split_once(' ')?;
    let (cleared, id) = rest.split_once(' ')?;
    let last_event_id = match cleared {
        "0" => LastEventId::Set(EventId::new(id)),
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

/// `WAIT replicas timeout`.
fn wait_cmd(replicas: u32, timeout: Duration) -> Cmd {
    let timeout_ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut cmd = redis::cmd("WAIT");
    cmd.arg(replicas).arg(timeout_ms);
    cmd
}

/// A batch is acknowledged once `replicas` replicas have it; fewer is a transient error (the
/// worker writes the batch again).
fn replicated(acked: u32, replicas: u32, timeout: Duration) -> Result<(), StoreError> {
    if acked < replicas {
        return Err(StoreError::transient(format!(
            "written, but only {acked} of {replicas} replicas confirmed it within {timeout:?}"
        )));
    }
    Ok(())
}

/// A connection to one Redis (reconnecting by itself, or a plain one for blocking reads), or to
/// a cluster through redis-rs's cluster client.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Plain(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Plain(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Plain(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a store's requests go: one Redis, or a cluster through a client that is rebuilt when
/// it stops answering.
#[derive(Clone)]
pub(crate) enum Shared {
    Single(ConnectionManager),
    Cluster(Arc<ClusterHandle>),
}

impl Shared {
    /// A connection for the next requests.
    pub(crate) fn get(&self) -> Connection {
        match self {
            Self::Single(c) => Connection::Single(c.clone()),
            Self::Cluster(h) => Connection::Cluster(h.current()),
        }
    }

    /// Whether requests go to a cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Classifies an error of a request (redirects are followed only in a cluster). In a
    /// cluster, a request that timed out or lost its connection has the client rebuilt in the
    /// background: redis-rs's cluster client was seen to stay stuck in its slot refresh after a
    /// failover under load, every later request timing out.
    pub(crate) fn classify(&self, e: redis::RedisError) -> StoreError {
        if let Self::Cluster(h) = self
            && (e.is_timeout() || e.is_io_error() || e.is_connection_dropped())
        {
            h.rebuild();
        }
        classify_redirects(e, self.is_cluster())
    }
}

/// A cluster client's connection, replaced by a fresh one (from the initial nodes) when it stops
/// answering.
pub(crate) struct ClusterHandle {
    nodes: Vec<String>,
    response_timeout: Duration,
    connection_timeout: Duration,
    current: std::sync::Mutex<ClusterConnection>,
    /// A rebuild is under way, or happened less than `REBUILD_EVERY` ago.
    rebuilt_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The shortest time between two rebuilds of a cluster client.
const REBUILD_EVERY: Duration = Duration::from_secs(2);

impl ClusterHandle {
    fn current(&self) -> ClusterConnection {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Connects afresh in the background (at most once per `REBUILD_EVERY`); requests keep
    /// using the current connection until the new one is ready.
    fn rebuild(self: &Arc<Self>) {
        {
            let mut at = self
                .rebuilt_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if at.is_some_and(|at| at.elapsed() < REBUILD_EVERY) {
                return;
            }
            *at = Some(std::time::Instant::now());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let handle = Arc::clone(self);
        runtime.spawn(async move {
            match connect_cluster(
                &handle.nodes,
                handle.response_timeout,
                handle.connection_timeout,
            )
            .await
            {
                Ok((_, fresh)) => {
                    tracing::info!("redis cluster client rebuilt after failed requests");
                    *handle
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                }
                Err(error) => tracing::warn!(%error, "redis cluster client: rebuild failed"),
            }
        });
    }
}

/// A session key as it sits inside a cluster hash tag: `%` and `}` percent-encoded, so that the
/// tag ends where the session key does (a `}` in it would end the tag early, and one at its
/// start would leave the tag empty, which Redis ignores).
pub(crate) fn tag(session: &str) -> std::borrow::Cow<'_, str> {
    if session.contains(['%', '}']) {
        session.replace('%', "%25").replace('}', "%7D").into()
    } else {
        session.into()
    }
}

/// A cluster connection through any of `nodes`: redis-rs's cluster client discovers the
/// others, follows redirections and retries through failovers.
pub(crate) async fn connect_cluster<I, U>(
    nodes: I,
    response_timeout: Duration,
    connection_timeout: Duration,
) -> Result<(Vec<String>, ClusterConnection), StoreError>
where
    I: IntoIterator<Item = U>,
    U: AsRef<str>,
{
    let nodes: Vec<String> = nodes.into_iter().map(|u| u.as_ref().to_owned()).collect();
    if nodes.is_empty() {
        return Err(StoreError::permanent("no redis cluster node given"));
    }
    let connection = cluster_connection(&nodes, response_timeout, connection_timeout, 4).await?;
    Ok((nodes, connection))
}

/// A cluster client on `nodes` and its (multiplexed) connection.
async fn cluster_connection(
    nodes: &[String],
    response_timeout: Duration,
    connection_timeout: Duration,
    retries: u32,
) -> Result<ClusterConnection, StoreError> {
    let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .response_timeout(response_timeout)
        .connection_timeout(connection_timeout)
        .retries(retries)
        .build()
        .map_err(|e| {
            StoreError::permanent(format!("invalid redis cluster nodes {nodes:?}")).with_source(e)
        })?;
    client
        .get_async_connection()
        .await
        .map_err(classify_cluster)
}

/// A cluster client on `nodes` that rebuilds itself when it stops answering, for a store whose
/// keys start with `prefix` (refused if it holds a brace: the store tags each session's keys
/// itself); the nodes it was given are returned too.
pub(crate) async fn connect_shared_cluster<I, U>(
    prefix: &str,
    nodes: I,
    response_timeout: Duration,
    connection_timeout: Duration,
) -> Result<(Vec<String>, Shared), StoreError>
where
    I: IntoIterator<Item = U>,
    U: AsRef<str>,
{
    if prefix.contains(['{', '}']) {
        return Err(StoreError::permanent(format!(
            "prefix {prefix:?} holds a brace: in a cluster the store tags each session's keys itself"
        )));
    }
    let (nodes, connection) = connect_cluster(nodes, response_timeout, connection_timeout).await?;
    let handle = ClusterHandle {
        nodes: nodes.clone(),
        response_timeout,
        connection_timeout,
        current: std::sync::Mutex::new(connection),
        rebuilt_at: std::sync::Mutex::new(None),
    };
    Ok((nodes, Shared::Cluster(Arc::new(handle))))
}

/// A second cluster client on `nodes`, for blocking reads: its own connections (a blocking
/// command would hold up every request to its node on a shared one), with a response timeout
/// that covers the block.
pub(crate) async fn connect_cluster_blocking(
    nodes: &[String],
    response_timeout: Duration,
    connection_timeout: Duration,
) -> Result<ClusterConnection, StoreError> {
    cluster_connection(nodes, response_timeout, connection_timeout, 2).await
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

/// Transient when the client library says a retry may help, except cluster redirects on a
/// single-node connection: it does not follow them, so a store pointed at the wrong node would
/// retry forever.
pub(crate) fn classify(e: redis::RedisError) -> StoreError {
    classify_redirects(e, false)
}

/// [`classify`], for a connection that follows redirects (a cluster client): one that still
/// surfaces (the slots kept moving through all of the client's retries) is transient.
pub(crate) fn classify_cluster(e: redis::RedisError) -> StoreError {
    classify_redirects(e, true)
}

fn classify_redirects(e: redis::RedisError, followed: bool) -> StoreError {
    let redirect = matches!(
        e.retry_method(),
        RetryMethod::MovedRedirect | RetryMethod::AskRedirect
    );
    let transient = (followed || !redirect)
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
