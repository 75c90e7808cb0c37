//! [`RedisHistory`]: stream histories that replicas share, as Redis Streams.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, Script, Value};

use super::store::{
    AppendReport, DEFAULT_HISTORY_TTL, DEFAULT_LEASE, HistoryEvent, HistoryPage, HistoryStore,
    StoredPosition, StreamEnd, WriterLease,
};
use crate::{
    SessionId, StreamKey,
    store::{
        EventId, StoreError, StoreFuture,
        redis_support::{
            Connection, IN_FLIGHT, Shared, connect, connect_cluster_blocking,
            connect_shared_cluster, tag,
        },
    },
};

/// Appends one session's events, on the server, in one script run.
///
/// KEYS[1]: the session's state hash (field: stream key; value: `writer touched last end`, the
/// writer and last `seq` as 20 zero-padded digits, so that string order is numeric order and no
/// precision is lost in Lua's doubles; `touched` in ms of server time; `end` one of `o`pen,
/// `c`omplete, cu`x`). Then per stream of the batch: its events (a Redis Stream whose entry IDs
/// are `0-<seq>`) and its ID index (a hash: ID -> seq).
///
/// ARGV: max events per stream, TTL in ms (0: none), the number of streams n, their keys (in
/// KEYS order), then per event six values: its stream (1..n), writer, seq, `1` if it set an ID,
/// the ID, its bytes. Returns the number of events refused (fenced off).
const APPEND: &str = r"
local max, ttl, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
local zero = '00000000000000000000'
local meta = {}
for s = 1, n do
  local m = {w = zero, last = zero, e = 'o', dirty = false}
  local v = redis.call('HGET', KEYS[1], ARGV[3 + s])
  if v then
    local w, t, last, e = string.match(v, '^(%d+) (%d+) (%d+) (%a)$')
    if w and (ttl == 0 or now - tonumber(t) < ttl) then
      m.w, m.last, m.e = w, last, e
    end
  end
  if m.last == zero then
    -- New, or expired: whatever is left of it goes, so that it starts afresh.
    redis.call('DEL', KEYS[2 * s], KEYS[2 * s + 1])
  end
  meta[s] = m
end
local fenced = 0
local i = 4 + n
while i <= #ARGV do
  local s = tonumber(ARGV[i])
  local m = meta[s]
  local writer, seq = ARGV[i + 1], ARGV[i + 2]
  if writer < m.w then
    fenced = fenced + 1
  elseif seq > m.last then
    local entry = '0-' .. string.gsub(seq, '^0+', '')
    if ARGV[i + 3] == '1' then
      redis.call('XADD', KEYS[2 * s], 'MAXLEN', '~', max, entry, 'i', ARGV[i + 4], 'b', ARGV[i + 5])
      redis.call('HSET', KEYS[2 * s + 1], ARGV[i + 4], seq)
    else
      redis.call('XADD', KEYS[2 * s], 'MAXLEN', '~', max, entry, 'b', ARGV[i + 5])
    end
    m.w, m.last, m.e, m.dirty = writer, seq, 'o', true
  end
  i = i + 6
end
for s = 1, n do
  local m = meta[s]
  if m.dirty then
    redis.call('HSET', KEYS[1], ARGV[3 + s], m.w .. ' ' .. now .. ' ' .. m.last .. ' ' .. m.e)
    local index = KEYS[2 * s + 1]
    if redis.call('HLEN', index) > 2 * max + 64 then
      -- IDs of trimmed events go from the index (once per max appends or so).
      local first = redis.call('XRANGE', KEYS[2 * s], '-', '+', 'COUNT', 1)[1]
      if first then
        local f = string.match(first[1], '^0%-(%d+)$')
        f = string.rep('0', 20 - #f) .. f
        local all = redis.call('HGETALL', index)
        for j = 1, #all, 2 do
          if all[j + 1] < f then
            redis.call('HDEL', index, all[j])
          end
        end
      end
    end
    if ttl > 0 then
      redis.call('PEXPIRE', KEYS[2 * s], ttl)
      redis.call('PEXPIRE', index, ttl)
    end
  end
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  if redis.call('HLEN', KEYS[1]) > 64 then
    -- Streams past their TTL leave the state hash.
    local all = redis.call('HGETALL', KEYS[1])
    for j = 1, #all, 2 do
      local t = string.match(all[j + 1], '^%d+ (%d+) ')
      if t and now - tonumber(t) >= ttl then
        redis.call('HDEL', KEYS[1], all[j])
      end
    end
  end
end
return fenced
";

/// Marks streams of one session by their writers (others are left alone).
///
/// KEYS[1]: the state hash. ARGV[1]: `t` (touch: renew the lease) or the end to set (`c`, `x`);
/// then pairs of stream key and writer.
const MARK: &str = r"
local time = redis.call('TIME')
local now = time[1] * 1000 + math.floor(time[2] / 1000)
for j = 2, #ARGV, 2 do
  local v = redis.call('HGET', KEYS[1], ARGV[j])
  if v then
    local w, t, last, e = string.match(v, '^(%d+) (%d+) (%d+) (%a)$')
    if w == ARGV[j + 1] then
      if ARGV[1] == 't' then
        t = now
      else
        e = ARGV[1]
      end
      redis.call('HSET', KEYS[1], ARGV[j], w .. ' ' .. t .. ' ' .. last .. ' ' .. e)
    end
  end
end
return 0
";

/// Idle connections kept for blocking reads, at most.
const IDLE_BLOCKING: usize = 16;
/// Longest single `XREAD BLOCK`: a stream's end is noticed within this.
const BLOCK_SLICE: Duration = Duration::from_millis(500);
/// Entries read per page, at most.
const PAGE_ENTRIES: usize = 256;

/// Stream histories on Redis, for deployments with several replicas: a client that lost
/// replica A resumes on replica B, including a stream that A is still producing.
///
/// - One Redis Stream per (session, stream), at `prefix{session}:e:stream`, its entry IDs
///   `0-<seq>` (so a read after a position is an exclusive-start `XRANGE`, and a retried batch
///   cannot add an event twice), trimmed with `XADD ... MAXLEN ~ max_events` (Redis trims whole
///   nodes: a stream may keep up to about 100 events more than the bound). Per session, a hash
///   of its streams' state (writer, lease, newest `seq`, end) and, per stream, an index of IDs.
///   Every key of a session carries the hash tag `{session}`, so that in a cluster a session sits
///   on one slot (with [`connect_cluster`](RedisHistoryBuilder::connect_cluster), `%` and `}` in
///   the session key are percent-encoded inside the tag, so that the tag is the whole key). Keys
///   expire after the idle TTL, refreshed by every append.
/// - One round trip per batch: a pipeline of one script run per session, which appends, fences
///   off a writer older than the stream's (its events are refused and counted), and refreshes
///   the TTL. On a cluster the runs touch different slots: they are sent at once, each to its
///   slot's primary (the client pipelines those of one node).
/// - A reader follows a stream produced elsewhere with `XREAD BLOCK` (on connections of its
///   own, so that blocking never holds up writes), noticing its end within half a second.
/// - Leases use the Redis server's clock; writers and `seq` use the writers' wall clocks, which
///   must agree to within the time a client takes to reconnect.
///
/// Requires Redis 6.2 or later (exclusive ranges in `XRANGE`). Events that a replica kept but
/// its worker had not yet written when it died are lost: a reconnect that asks for one of them
/// does not find it, and the layer answers it as an unknown ID (`sse-replay: unknown`, then the
/// [`UnknownId`](super::UnknownId) policy), never as if the client were caught up.
///
/// ```no_run
/// use tower_sse_tracking::history::{RedisHistory, ReplayConfig};
///
/// # async fn run() -> Result<(), tower_sse_tracking::store::StoreError> {
/// let history = RedisHistory::builder()
///     .prefix("myapp:history:")
///     .connect("redis://127.0.0.1/")
///     .await?;
/// let replay = ReplayConfig::default().store(history);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisHistory {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where blocking reads get connections of their own.
    origin: Origin,
    connection: Shared,
    append: Script,
    mark: Script,
    options: RedisHistoryBuilder,
    /// Connections for blocking reads, idle.
    blocking: Mutex<Vec<Connection>>,
}

/// One Redis, or a cluster (through any of these nodes).
enum Origin {
    Single(Client),
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Options of a [`RedisHistory`].
#[derive(Clone, Debug)]
pub struct RedisHistoryBuilder {
    prefix: String,
    max_events: usize,
    idle_ttl: Duration,
    lease: Duration,
    response_timeout: Duration,
    connection_timeout: Duration,
}

impl Default for RedisHistoryBuilder {
    fn default() -> Self {
        Self {
            prefix: "sse-history:".to_owned(),
            max_events: 1024,
            idle_ttl: DEFAULT_HISTORY_TTL,
            lease: DEFAULT_LEASE,
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(2),
        }
    }
}

impl RedisHistoryBuilder {
    /// Prefix of every key. Defaults to `sse-history:`. On a single-node connection to a
    /// cluster node, a prefix with a hash tag (`{...}`) puts every session on one slot; with
    /// [`connect_cluster`](Self::connect_cluster) the prefix may hold no brace.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Events kept per stream, about (see [`RedisHistory`]). Defaults to 1,024.
    pub fn max_events(mut self, n: usize) -> Self {
        self.max_events = n.max(1);
        self
    }

    /// Expiry of a stream's keys after its last append (zero: never). Defaults to a day.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// How long a writer holds a stream without writing ([`DEFAULT_LEASE`]).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Time limit of one request. Defaults to 2 s.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Time limit of one connection attempt. Defaults to 2 s.
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
    pub async fn connect(self, url: &str) -> Result<RedisHistory, StoreError> {
        let (client, connection) =
            connect(url, self.response_timeout, self.connection_timeout).await?;
        Ok(self.open(Origin::Single(client), Shared::Single(connection)))
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port` each): every key
    /// of a session carries its hash tag, so a session sits on one slot and sessions spread
    /// over the shards; a batch runs one script per session, all sent at once; followers block
    /// on connections of their own.
    ///
    /// # Errors
    ///
    /// A permanent [`StoreError`] for a malformed URL, no node given or a prefix holding `{` or
    /// `}`, a transient one if no node can be reached.
    ///
    /// ```no_run
    /// use tower_sse_tracking::history::RedisHistory;
    ///
    /// # async fn run() -> Result<(), tower_sse_tracking::store::StoreError> {
    /// let history = RedisHistory::builder()
    ///     .connect_cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<I, U>(self, nodes: I) -> Result<RedisHistory, StoreError>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let (nodes, connection) = connect_shared_cluster(
            &self.prefix,
            nodes,
            self.response_timeout,
            self.connection_timeout,
        )
        .await?;
        Ok(self.open(Origin::Cluster(nodes), connection))
    }

    fn open(self, origin: Origin, connection: Shared) -> RedisHistory {
        RedisHistory {
            inner: Arc::new(Inner {
                origin,
                connection,
                append: Script::new(APPEND),
                mark: Script::new(MARK),
                options: self,
                blocking: Mutex::default(),
            }),
        }
    }
}

/// A stream's state, as the state hash keeps it.
#[derive(Clone, Copy, Debug)]
struct Meta {
    writer: u64,
    touched_ms: u64,
    last_seq: u64,
    end: u8,
}

impl Meta {
    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(' ');
        let meta = Self {
            writer: parts.next()?.parse().ok()?,
            touched_ms: parts.next()?.parse().ok()?,
            last_seq: parts.next()?.parse().ok()?,
            end: *parts.next()?.as_bytes().first()?,
        };
        parts.next().is_none().then_some(meta)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `TIME`'s answer, in ms.
fn server_ms(time: &(String, String)) -> u64 {
    let secs: u64 = time.0.parse().unwrap_or(0);
    let micros: u64 = time.1.parse().unwrap_or(0);
    secs * 1000 + micros / 1000
}

/// An entry of a Redis Stream: its ID and its fields.
type Entry = (String, Vec<Vec<u8>>);

impl RedisHistory {
    /// Connects with the default options (see [`builder`](Self::builder)).
    ///
    /// # Errors
    ///
    /// See [`RedisHistoryBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        RedisHistoryBuilder::default().connect(url).await
    }

    /// Options: key prefix, bound per stream, TTL, lease, timeouts.
    pub fn builder() -> RedisHistoryBuilder {
        RedisHistoryBuilder::default()
    }

    fn key(&self, session: &SessionId, suffix: &str) -> String {
        let session = match self.inner.connection {
            // In a cluster the tag must be the whole session key (see `tag`).
            Shared::Cluster(_) => tag(session.as_str()),
            _ => session.as_str().into(),
        };
        format!("{}{{{session}}}:{suffix}", self.inner.options.prefix)
    }

    fn classify(&self, e: redis::RedisError) -> StoreError {
        self.inner.connection.classify(e)
    }

    fn state_key(&self, session: &SessionId) -> String {
        self.key(session, "m")
    }

    fn events_key(&self, session: &SessionId, stream: &StreamKey) -> String {
        self.key(session, &format!("e:{}", stream.as_str()))
    }

    fn index_key(&self, session: &SessionId, stream: &StreamKey) -> String {
        self.key(session, &format!("i:{}", stream.as_str()))
    }

    /// Runs script calls and returns their answers in order, loading the scripts first where
    /// the server lacks them: one pipeline on one Redis; in a cluster, each call on its own (the
    /// calls of a batch touch different slots), up to `IN_FLIGHT` at once (all at once, the
    /// last answers of a large batch could wait behind the others past the response timeout).
    async fn run_all<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> Result<Vec<T>, StoreError> {
        if !self.inner.connection.is_cluster() {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd);
            }
            return self.run(&pipe).await;
        }
        // Made up front: a lazy iterator's closures would have to live across the awaits.
        let runs: Vec<_> = cmds
            .iter()
            .map(|cmd| async move {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd.clone());
                let (value,): (T,) = self.run(&pipe).await?;
                Ok::<T, StoreError>(value)
            })
            .collect();
        use futures_util::StreamExt as _;
        futures_util::stream::iter(runs)
            .buffered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Runs a pipeline of script calls, loading the scripts first if the server lacks them.
    async fn run<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut connection = self.inner.connection.get();
        match pipe.query_async::<T>(&mut connection).await {
            Ok(value) => Ok(value),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // In a cluster, `SCRIPT LOAD` goes to every primary.
                for script in [&self.inner.append, &self.inner.mark] {
                    script
                        .prepare_invoke()
                        .load_async(&mut connection)
                        .await
                        .map_err(|e| self.classify(e))?;
                }
                pipe.query_async::<T>(&mut connection)
                    .await
                    .map_err(|e| self.classify(e))
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    async fn append_batch(&self, batch: &[HistoryEvent]) -> Result<AppendReport, StoreError> {
        if batch.is_empty() {
            return Ok(AppendReport::default());
        }
        // One script run per session, its events in batch order.
        let mut sessions: Vec<(&SessionId, Vec<&HistoryEvent>)> = Vec::new();
        let mut at: HashMap<&SessionId, usize> = HashMap::new();
        for event in batch {
            let ix = *at.entry(&event.session).or_insert_with(|| {
                sessions.push((&event.session, Vec::new()));
                sessions.len() - 1
            });
            sessions[ix].1.push(event);
        }
        let options = &self.inner.options;
        let mut cmds = Vec::with_capacity(sessions.len());
        for (session, events) in &sessions {
            let mut streams: Vec<&StreamKey> = Vec::new();
            for event in events {
                if !streams.contains(&&event.stream) {
                    streams.push(&event.stream);
                }
            }
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.inner.append.get_hash())
                .arg(1 + 2 * streams.len())
                .arg(self.state_key(session));
            for stream in &streams {
                cmd.arg(self.events_key(session, stream))
                    .arg(self.index_key(session, stream));
            }
            cmd.arg(options.max_events)
                .arg(millis(options.idle_ttl))
                .arg(streams.len());
            for stream in &streams {
                cmd.arg(stream.as_str());
            }
            for event in events {
                let s = streams
                    .iter()
                    .position(|k| *k == &event.stream)
                    .unwrap_or(0)
                    + 1;
                cmd.arg(s)
                    .arg(format!("{:020}", event.writer))
                    .arg(format!("{:020}", event.seq.max(1)))
                    .arg(if event.id.is_some() { "1" } else { "0" })
                    .arg(event.id.as_ref().map_or(&b""[..], EventId::as_bytes))
                    .arg(&event.bytes[..]);
            }
            cmds.push(cmd);
        }
        let fenced: Vec<usize> = self.run_all(cmds).await?;
        Ok(AppendReport::fenced(fenced.iter().sum()))
    }

    async fn mark(&self, mode: &str, leases: &[WriterLease]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut by_session: Vec<(&SessionId, Vec<&WriterLease>)> = Vec::new();
        for lease in leases {
            match by_session.iter_mut().find(|(s, _)| *s == &lease.session) {
                Some((_, list)) => list.push(lease),
                None => by_session.push((&lease.session, vec![lease])),
            }
        }
        let cmds = by_session
            .iter()
            .map(|(session, list)| {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.inner.mark.get_hash())
                    .arg(1)
                    .arg(self.state_key(session))
                    .arg(mode);
                for lease in list {
                    cmd.arg(lease.stream.as_str())
                        .arg(format!("{:020}", lease.writer));
                }
                cmd
            })
            .collect();
        self.run_all::<Value>(cmds).await.map(drop)
    }

    /// A stream's state and the server's time (ms); `None` when it has none or expired.
    async fn meta(
        &self,
        session: &SessionId,
        stream: &StreamKey,
    ) -> Result<(Option<Meta>, u64), StoreError> {
        let mut connection = self.inner.connection.get();
        let (value, time): (Option<String>, (String, String)) = redis::pipe()
            .cmd("HGET")
            .arg(self.state_key(session))
            .arg(stream.as_str())
            .cmd("TIME")
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
        let now = server_ms(&time);
        Ok((
            value
                .as_deref()
                .and_then(Meta::parse)
                .filter(|m| !self.expired(m, now)),
            now,
        ))
    }

    fn expired(&self, meta: &Meta, now_ms: u64) -> bool {
        let ttl = millis(self.inner.options.idle_ttl);
        ttl > 0 && now_ms.saturating_sub(meta.touched_ms) >= ttl
    }

    /// A stream's end as readers see it: open past the lease reads as cut.
    fn end(&self, meta: &Meta, now_ms: u64) -> StreamEnd {
        match meta.end {
            b'c' => StreamEnd::Complete,
            b'x' => StreamEnd::Cut,
            _ if now_ms.saturating_sub(meta.touched_ms) >= millis(self.inner.options.lease) => {
                StreamEnd::Cut
            }
            _ => StreamEnd::Open,
        }
    }

    /// Every stream of a session with its state, and the server's time (ms).
    async fn streams(
        &self,
        session: &SessionId,
    ) -> Result<(Vec<(StreamKey, Meta)>, u64), StoreError> {
        let mut connection = self.inner.connection.get();
        let (all, time): (Vec<(String, String)>, (String, String)) = redis::pipe()
            .cmd("HGETALL")
            .arg(self.state_key(session))
            .cmd("TIME")
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
        let now = server_ms(&time);
        let streams = all
            .into_iter()
            .filter_map(|(stream, value)| {
                let meta = Meta::parse(&value)?;
                let stream = StreamKey::new(&stream).ok()?;
                (!self.expired(&meta, now)).then_some((stream, meta))
            })
            .collect();
        Ok((streams, now))
    }

    async fn locate_id(
        &self,
        session: &SessionId,
        id: &str,
    ) -> Result<Option<StoredPosition>, StoreError> {
        let (streams, now) = self.streams(session).await?;
        if streams.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for (stream, _) in &streams {
            pipe.cmd("HGET")
                .arg(self.index_key(session, stream))
                .arg(id);
        }
        let mut connection = self.inner.connection.get();
        let seqs: Vec<Option<u64>> = pipe
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
        let mut found: Vec<(u64, usize)> = seqs
            .iter()
            .enumerate()
            .filter_map(|(i, seq)| seq.map(|s| (s, i)))
            .collect();
        found.sort_unstable_by(|a, b| b.cmp(a));
        // Newest first; an index entry may outlive its event by a little (trimming): check.
        for (seq, i) in found {
            let (stream, meta) = &streams[i];
            let entry = format!("0-{seq}");
            let there: Vec<Entry> = redis::cmd("XRANGE")
                .arg(self.events_key(session, stream))
                .arg(&entry)
                .arg(&entry)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.classify(e))?;
            if !there.is_empty() {
                return Ok(Some(StoredPosition {
                    stream: stream.clone(),
                    seq,
                    end: self.end(meta, now),
                }));
            }
        }
        Ok(None)
    }

    async fn read(
        &self,
        session: &SessionId,
        stream: &StreamKey,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        // One round trip: the stream's state, the server's time, the page.
        let mut connection = self.inner.connection.get();
        let (value, time, entries): (Option<String>, (String, String), Vec<Entry>) = redis::pipe()
            .cmd("HGET")
            .arg(self.state_key(session))
            .arg(stream.as_str())
            .cmd("TIME")
            .cmd("XRANGE")
            .arg(self.events_key(session, stream))
            .arg(format!("(0-{after}"))
            .arg("+")
            .arg("COUNT")
            .arg(PAGE_ENTRIES)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
        let now = server_ms(&time);
        let Some(meta) = value
            .as_deref()
            .and_then(Meta::parse)
            .filter(|m| !self.expired(m, now))
        else {
            return Ok(HistoryPage {
                events: Vec::new(),
                end: StreamEnd::Cut,
            });
        };
        let mut events = Vec::new();
        let mut bytes = 0;
        for entry in entries {
            let event = decode(session, stream, meta.writer, entry)?;
            if !events.is_empty() && bytes + event.bytes.len() > limit {
                break;
            }
            bytes += event.bytes.len();
            events.push(event);
        }
        Ok(HistoryPage {
            events,
            end: self.end(&meta, now),
        })
    }

    async fn wait(
        &self,
        session: &SessionId,
        stream: &StreamKey,
        after: u64,
        timeout: Duration,
    ) -> Result<(), StoreError> {
        let (meta, now) = self.meta(session, stream).await?;
        match meta {
            Some(meta) if self.end(&meta, now) == StreamEnd::Open && meta.last_seq <= after => {}
            _ => return Ok(()),
        }
        let block = timeout.min(BLOCK_SLICE);
        let mut connection = self.blocking_connection(block).await?;
        let read: Result<Value, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(millis(block).max(1))
            .arg("STREAMS")
            .arg(self.events_key(session, stream))
            .arg(format!("0-{after}"))
            .query_async(&mut connection)
            .await;
        match read {
            Ok(_) => {
                let mut idle = self
                    .inner
                    .blocking
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if idle.len() < IDLE_BLOCKING {
                    idle.push(connection);
                }
                Ok(())
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    /// A connection of its own for a blocking read (reused when idle).
    async fn blocking_connection(&self, block: Duration) -> Result<Connection, StoreError> {
        let idle = self
            .inner
            .blocking
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(connection) = idle {
            return Ok(connection);
        }
        let options = &self.inner.options;
        let response_timeout = options.response_timeout + BLOCK_SLICE.max(block);
        match &self.inner.origin {
            Origin::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(options.connection_timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Plain)
                    .map_err(|e| self.classify(e))
            }
            Origin::Cluster(nodes) => {
                connect_cluster_blocking(nodes, response_timeout, options.connection_timeout)
                    .await
                    .map(Connection::Cluster)
            }
        }
    }

    async fn purge(&self, session: &SessionId) -> Result<(), StoreError> {
        let mut connection = self.inner.connection.get();
        let streams: Vec<String> = redis::cmd("HKEYS")
            .arg(self.state_key(session))
            .query_async(&mut connection)
            .await
            .map_err(|e| self.classify(e))?;
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.state_key(session));
        for stream in &streams {
            cmd.arg(self.key(session, &format!("e:{stream}")))
                .arg(self.key(session, &format!("i:{stream}")));
        }
        cmd.query_async::<()>(&mut connection)
            .await
            .map_err(|e| self.classify(e))
    }
}

/// An entry as a [`HistoryEvent`].
fn decode(
    session: &SessionId,
    stream: &StreamKey,
    writer: u64,
    (entry, fields): Entry,
) -> Result<HistoryEvent, StoreError> {
    let corrupt = || StoreError::permanent(format!("corrupt history entry {entry}"));
    let seq = entry
        .strip_prefix("0-")
        .and_then(|s| s.parse().ok())
        .ok_or_else(corrupt)?;
    let (mut id, mut bytes) = (None, None);
    for pair in fields.chunks(2) {
        match pair {
            [name, value] if name == b"i" => {
                id = Some(EventId::new(
                    std::str::from_utf8(value).map_err(|_| corrupt())?,
                ));
            }
            [name, value] if name == b"b" => bytes = Some(Bytes::copy_from_slice(value)),
            _ => {}
        }
    }
    Ok(HistoryEvent {
        session: session.clone(),
        stream: stream.clone(),
        seq,
        id,
        bytes: bytes.ok_or_else(corrupt)?,
        writer,
    })
}

impl HistoryStore for RedisHistory {
    fn append<'a>(&'a self, batch: &'a [HistoryEvent]) -> StoreFuture<'a, AppendReport> {
        Box::pin(self.append_batch(batch))
    }

    fn finish<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        writer: u64,
        end: StreamEnd,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mode = match end {
                StreamEnd::Complete => "c",
                StreamEnd::Cut => "x",
                StreamEnd::Open => return Ok(()),
            };
            let lease = WriterLease {
                session: session.clone(),
                stream: stream.clone(),
                writer,
            };
            self.mark(mode, std::slice::from_ref(&lease)).await
        })
    }

    fn touch<'a>(&'a self, leases: &'a [WriterLease]) -> StoreFuture<'a, ()> {
        Box::pin(self.mark("t", leases))
    }

    fn lease(&self) -> Duration {
        self.inner.options.lease
    }

    fn locate<'a>(
        &'a self,
        session: &'a SessionId,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredPosition>> {
        Box::pin(self.locate_id(session, id))
    }

    fn is_producing<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let (streams, now) = self.streams(session).await?;
            Ok(streams
                .iter()
                .any(|(_, meta)| self.end(meta, now) == StreamEnd::Open))
        })
    }

    fn read_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        limit: usize,
    ) -> StoreFuture<'a, HistoryPage> {
        Box::pin(self.read(session, stream, after, limit))
    }

    fn wait_after<'a>(
        &'a self,
        session: &'a SessionId,
        stream: &'a StreamKey,
        after: u64,
        timeout: Duration,
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.wait(session, stream, after, timeout))
    }

    fn purge_session<'a>(&'a self, session: &'a SessionId) -> StoreFuture<'a, ()> {
        Box::pin(self.purge(session))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_values_parse_strictly() {
        let meta =
            Meta::parse("00000000000000000007 1700000000000 00000000000000000042 o").unwrap();
        assert_eq!(
            (meta.writer, meta.touched_ms, meta.last_seq, meta.end),
            (7, 1_700_000_000_000, 42, b'o')
        );
        assert!(Meta::parse("7 1 42").is_none());
        assert!(Meta::parse("7 1 42 o extra").is_none());
        assert!(Meta::parse("x 1 42 o").is_none());
    }

    #[test]
    fn entries_decode_to_events() {
        let (s, k) = (SessionId::new("s").unwrap(), StreamKey::new("/e").unwrap());
        let entry = (
            "0-42".to_owned(),
            vec![
                b"i".to_vec(),
                "é".as_bytes().to_vec(),
                b"b".to_vec(),
                b"data: x\n\n".to_vec(),
            ],
        );
        let event = decode(&s, &k, 3, entry).unwrap();
        assert_eq!(
            (event.seq, event.id.as_deref(), &event.bytes[..]),
            (42, Some("é"), &b"data: x\n\n"[..])
        );
        assert!(decode(&s, &k, 3, ("1-2".to_owned(), vec![])).is_err());
        assert!(
            decode(
                &s,
                &k,
                3,
                ("0-2".to_owned(), vec![b"i".to_vec(), b"x".to_vec()])
            )
            .is_err(),
            "no bytes"
        );
    }
}
