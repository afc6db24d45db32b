//! The shared store: Redis (standalone, `rediss://`, Sentinel or Cluster) behind a local cache.
//!
//! Data model, every key under the configured prefix `P` (hash tags in braces keep all of one
//! user's keys in one Cluster slot, so every write below is a single atomic Lua script):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:{u:<sub>}:sessions` | set | the user's session ids | with the latest absolute expiry |
//! | `P:{u:<sub>}:s:<sid>` | hash | `sub created last_seen ip ua abs idle remember` | at `abs` |
//! | `P:{u:<sub>}:rt:<sha256>` | hash | a refresh token's session, `state` (`current`/`used`), `used_at` | at its own expiry |
//! | `P:{u:<sub>}:rb` | string | tokens issued at or before this instant are revoked | when they have all expired |
//! | `P:{j:<sha256(iss, jti)>}` | string | a denylisted access token | at the token's `exp` |
//! | `P:{t:<sha256(key)>}` | string | failed logins counted under a throttle key | at the end of its window |
//!
//! `<sub>` is the subject in base64url, so no subject can forge another's key names; a throttle
//! key (`ip:…`, `user:…`, anything a client sent) appears only as its SHA-256. Refresh
//! tokens are stored only as SHA-256 hashes. Every revoking script publishes an
//! [`Invalidation`] on `P:invalidate` in the same script that writes, so an event is published
//! exactly when the write happened; every instance's subscriber applies it to its
//! [`LocalCache`]. The hot path reads the cache; a miss reads Redis in one round trip per slot.
//! Any Redis error or timeout is [`StoreError::Unavailable`]: the request gets 503, never a
//! guessed "alive".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};

use super::cache::{Alive, Invalidation, Known, LocalCache, hex};
use super::{
    Attempts, RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore, StoreError,
    TokenRef, Verdict, jti_key, throttle_digest,
};

/// Where Redis is.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One server: `redis://host:port/db` or `rediss://…`.
    Single(String),
    /// Cluster seed nodes.
    Cluster(Vec<String>),
    /// Sentinel nodes and the monitored master's name.
    Sentinel {
        /// The master name sentinels know.
        master: String,
        /// `redis://host:port` of each sentinel.
        nodes: Vec<String>,
    },
}

/// Compiled Redis settings.
#[derive(Clone)]
pub struct RedisSettings {
    /// Where Redis is.
    pub topology: Topology,
    /// Prefix of every key and of the invalidation channel.
    pub key_prefix: String,
    /// Longest any store operation may take before the request gets 503.
    pub timeout: Duration,
    /// Positive verdicts kept locally.
    pub cache_capacity: u64,
    /// Longest a positive verdict is kept locally (the safety net behind invalidation).
    pub cache_ttl: Duration,
    /// Password for Redis (and the sentinels' masters), read from a file.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("topology", &self.topology)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("cache_capacity", &self.cache_capacity)
            .field("cache_ttl", &self.cache_ttl)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable {
        source: Box::new(e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis did not answer within {0:?}")]
struct Timeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("redis answered a script with an unexpected shape")]
struct Protocol;

/// Key names.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn user(&self, subject: &str) -> String {
        format!("{}:{{u:{}}}", self.prefix, URL_SAFE_NO_PAD.encode(subject))
    }
    fn sessions(&self, subject: &str) -> String {
        format!("{}:sessions", self.user(subject))
    }
    fn session_prefix(&self, subject: &str) -> String {
        format!("{}:s:", self.user(subject))
    }
    fn session(&self, subject: &str, sid: &str) -> String {
        format!("{}{sid}", self.session_prefix(subject))
    }
    fn refresh(&self, subject: &str, hash: &[u8; 32]) -> String {
        format!("{}:rt:{}", self.user(subject), hex(hash))
    }
    fn revoked_before(&self, subject: &str) -> String {
        format!("{}:rb", self.user(subject))
    }
    fn jti(&self, key: &[u8; 32]) -> String {
        format!("{}:{{j:{}}}", self.prefix, hex(key))
    }
    fn throttle(&self, key: &str) -> String {
        format!("{}:{{t:{}}}", self.prefix, hex(&throttle_digest(key)))
    }
    fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
}

/// Session ids are ours (base64url); anything else cannot name a session and could only be an
/// attempt to build another key's name.
fn plausible_sid(sid: &str) -> bool {
    !sid.is_empty()
        && sid.len() <= 128
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

const CREATE_SESSION: &str = r"
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'created', ARGV[3], 'last_seen', ARGV[4],
  'ip', ARGV[5], 'ua', ARGV[6], 'abs', ARGV[7], 'idle', ARGV[8], 'remember', ARGV[9])
redis.call('EXPIREAT', KEYS[1], ARGV[7])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('EXPIRETIME', KEYS[2]) < tonumber(ARGV[7]) then
  redis.call('EXPIREAT', KEYS[2], ARGV[7])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'state', 'current')
  redis.call('EXPIREAT', KEYS[3], ARGV[10])
end
return 1
";

// Publishes only when a session was deleted: a session id named under the wrong subject
// deletes nothing, and must not become a "revoked" fact in anyone's cache.
const REVOKE_SESSION: &str = r"
local existed = redis.call('DEL', KEYS[1])
if existed > 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return existed
";

// The session keys are not in KEYS: their names are only known from the set. They share the
// set's hash tag, so they live in the same Cluster slot and the script stays atomic there too.
const REVOKE_USER: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
for _, sid in ipairs(members) do
  redis.call('DEL', ARGV[1] .. sid)
end
redis.call('DEL', KEYS[1])
local raw = redis.call('GET', KEYS[2])
local old_expiry = redis.call('EXPIRETIME', KEYS[2])
if (not raw) or tonumber(ARGV[2]) > tonumber(raw) then
  redis.call('SET', KEYS[2], ARGV[2])
end
local keep = tonumber(ARGV[3])
if old_expiry > keep then keep = old_expiry end
redis.call('EXPIREAT', KEYS[2], keep)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return #members
";

const DENY_JTI: &str = r"
if tonumber(ARGV[1]) > tonumber(ARGV[2]) and redis.call('EXPIRETIME', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'EXAT', ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

// KEYS: presented refresh, session, successor refresh, the user's session set.
// ARGV: sid, now, grace, idle seconds, successor expiry, channel, invalidation message.
const ROTATE: &str = r"
local rt = redis.call('HMGET', KEYS[1], 'sid', 'state', 'used_at')
if (not rt[1]) or rt[1] ~= ARGV[1] then return {'invalid'} end
local s = redis.call('HGETALL', KEYS[2])
if #s == 0 then return {'invalid'} end
local f = {}
for i = 1, #s, 2 do f[s[i]] = s[i + 1] end
local now = tonumber(ARGV[2])
local function revoke()
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[4], ARGV[1])
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
if now >= tonumber(f.abs) or now >= tonumber(f.idle) then
  revoke()
  return {'expired'}
end
local function record(kind)
  return {kind, f.sub, f.created, f.last_seen, f.ip, f.ua, f.abs, f.idle, f.remember}
end
if rt[2] == 'current' then
  redis.call('HSET', KEYS[1], 'state', 'used', 'used_at', ARGV[2])
  local expiry = tonumber(ARGV[5])
  if expiry > tonumber(f.abs) then expiry = tonumber(f.abs) end
  redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'state', 'current')
  redis.call('EXPIREAT', KEYS[3], expiry)
  local idle = now + tonumber(ARGV[4])
  if idle > tonumber(f.abs) then idle = tonumber(f.abs) end
  redis.call('HSET', KEYS[2], 'last_seen', ARGV[2], 'idle', idle)
  f.last_seen = ARGV[2]
  f.idle = tostring(idle)
  return record('rotated')
end
if now - tonumber(rt[3]) <= tonumber(ARGV[3]) then
  return record('concurrent')
end
revoke()
return {'reuse', f.sub}
";

// One failed login. The expiry is set in the same script as the increment, so no counter can be
// left without one (a crash between INCR and EXPIRE would otherwise make it permanent); a
// counter that somehow has none gets the window now. Later failures do not extend the window.
// KEYS: the counter. ARGV: the window in seconds. Returns the count and the remaining ms.
const THROTTLE_HIT: &str = r"
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1]) * 1000
end
return {count, ttl}
";

// The count and the remaining ms, read together so the one cannot outlive the other.
const THROTTLE_PEEK: &str = r"
local count = redis.call('GET', KEYS[1])
if not count then return {0, 0} end
return {tonumber(count), redis.call('PTTL', KEYS[1])}
";

/// A counter's reply as [`Attempts`]: the window ends when the key expires, rounded up to the
/// second so that a `Retry-After` built from it is never early.
fn attempts(count: i64, ttl_ms: i64, now: i64) -> Attempts {
    if count <= 0 {
        return Attempts::NONE;
    }
    Attempts {
        count: u32::try_from(count).unwrap_or(u32::MAX),
        resets_at: now.saturating_add((ttl_ms.max(0) + 999) / 1000),
    }
}

/// The data connection, whichever the topology.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>),
}

/// A connection to whichever server the sentinels say is the master. It asks the sentinels
/// again after a connection error or `READONLY` (the old master was demoted), and at once when
/// a sentinel announces a new master (see [`watch_sentinels`]).
struct SentinelConn {
    sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// The monitored master's name.
    master: String,
    /// The master's password.
    password: Option<String>,
    /// Longest a sentinel may take to connect or answer.
    timeout: Duration,
    current: ArcSwap<Option<ConnectionManager>>,
    config: ConnectionManagerConfig,
    /// Bumped on every announced switch: the invalidation subscriber re-subscribes on the new
    /// master, and a resolution that began before the bump is not kept.
    switches: tokio::sync::watch::Sender<u64>,
}

impl SentinelConn {
    /// A client for the master the sentinels name now. Asked with `get-master-addr-by-name`,
    /// which names the promoted replica as soon as a failover has promoted it; the redis
    /// crate's own lookup reads `SENTINEL MASTERS`, which keeps naming the old master until the
    /// failover ends — while the old master, still writable, loses what it is sent.
    async fn master_client(&self) -> redis::RedisResult<redis::Client> {
        let sentinel = self
            .sentinel
            .lock()
            .await
            .async_get_sentinel_client()
            .await?;
        let mut conn = sentinel
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout)),
            )
            .await?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await?;
        client(&format!("redis://{host}:{port}"), self.password.as_deref())
    }

    async fn resolve(&self) -> redis::RedisResult<ConnectionManager> {
        let generation = *self.switches.borrow();
        let client = self.master_client().await?;
        let mut manager = ConnectionManager::new_with_config(client, self.config.clone()).await?;
        // As the sentinel client guidelines ask: a server that does not call itself the master
        // (the sentinel's view was stale) is not used.
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut manager).await?;
        let is_master = role
            .first()
            .is_some_and(|r| redis::from_redis_value_ref::<String>(r).is_ok_and(|r| r == "master"));
        if !is_master {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the server the sentinels name is not a master",
            )));
        }
        // The sentinels may have answered just before a switch: use that answer for this one
        // operation, but do not keep it.
        if *self.switches.borrow() == generation {
            self.current.store(Arc::new(Some(manager.clone())));
        }
        Ok(manager)
    }

    /// The sentinels named a new master: stop using the old one, for data and invalidations.
    fn master_switched(&self) {
        self.current.store(Arc::new(None));
        self.switches.send_modify(|g| *g = g.wrapping_add(1));
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        match &**self.current.load() {
            Some(manager) => Ok(manager.clone()),
            None => self.resolve().await,
        }
    }

    fn after_error(&self, e: &redis::RedisError) {
        let read_only = e.to_string().contains("READONLY");
        if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || read_only {
            self.current.store(Arc::new(None));
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => {
                let s = Arc::clone(s);
                Box::pin(async move {
                    let mut c = s.connection().await?;
                    let result = c.req_packed_command(cmd).await;
                    if let Err(e) = &result {
                        s.after_error(e);
                    }
                    result
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s) => {
                let s = Arc::clone(s);
                Box::pin(async move {
                    let mut c = s.connection().await?;
                    let result = c.req_packed_commands(pipeline, offset, count).await;
                    if let Err(e) = &result {
                        s.after_error(e);
                    }
                    result
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

/// Where the invalidation subscriber connects.
enum PubSubSource {
    Clients(Vec<redis::Client>),
    Sentinel(Arc<SentinelConn>),
}

impl PubSubSource {
    async fn client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        match self {
            // Cluster: PUBLISH reaches every node, so any node will do; rotate on failure.
            PubSubSource::Clients(clients) => Ok(clients[attempt % clients.len()].clone()),
            PubSubSource::Sentinel(s) => s.master_client().await,
        }
    }
}

/// The Redis [`SessionStore`].
pub struct RedisStore {
    conn: Conn,
    keys: Keys,
    cache: Arc<LocalCache>,
    timeout: Duration,
    /// Whether the last store operation succeeded (for readiness).
    last_ok: Arc<AtomicBool>,
    subscriber: tokio::task::JoinHandle<()>,
    create_session: Script,
    revoke_session: Script,
    revoke_user: Script,
    deny_jti: Script,
    rotate: Script,
    throttle_hit: Script,
    throttle_peek: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .field("cache", &self.cache)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

fn client(url: &str, password: Option<&str>) -> redis::RedisResult<redis::Client> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
}

impl RedisStore {
    /// Connects (lazily for a single server, so the gateway starts and answers 503 while
    /// Redis is down) and starts the invalidation subscriber. Must run inside Tokio.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let keys = Keys {
            prefix: settings.key_prefix.clone(),
        };
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_secs(1));
        let password = settings.password.as_deref();
        let (conn, source) = match &settings.topology {
            Topology::Single(url) => {
                let c = client(url, password).map_err(unavailable)?;
                let manager = ConnectionManager::new_lazy_with_config(c.clone(), manager_config)
                    .map_err(unavailable)?;
                (Conn::Single(manager), PubSubSource::Clients(vec![c]))
            }
            Topology::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .retries(2);
                if let Some(p) = password {
                    builder = builder.password(p);
                }
                let cluster = builder.build().map_err(unavailable)?;
                let conn =
                    tokio::time::timeout(settings.timeout * 4, cluster.get_async_connection())
                        .await
                        .map_err(|_| unavailable(Timeout(settings.timeout * 4)))?
                        .map_err(unavailable)?;
                let clients = nodes
                    .iter()
                    .map(|n| client(n, password))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                (Conn::Cluster(conn), PubSubSource::Clients(clients))
            }
            Topology::Sentinel { master, nodes } => {
                let node_info = password.map(|p| {
                    redis::sentinel::SentinelNodeConnectionInfo::default()
                        .set_redis_connection_info(
                            redis::RedisConnectionInfo::default().set_password(p),
                        )
                });
                let sentinel = redis::sentinel::SentinelClient::build(
                    nodes.clone(),
                    master.clone(),
                    node_info,
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(unavailable)?;
                let s = Arc::new(SentinelConn {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    master: master.clone(),
                    password: password.map(str::to_owned),
                    timeout: settings.timeout,
                    current: ArcSwap::from_pointee(None),
                    config: manager_config,
                    switches: tokio::sync::watch::Sender::new(0),
                });
                (Conn::Sentinel(Arc::clone(&s)), PubSubSource::Sentinel(s))
            }
        };
        let cache = Arc::new(LocalCache::new(settings.cache_capacity, settings.cache_ttl));
        let invalidations = subscribe(source, keys.channel(), Arc::clone(&cache));
        // One task, aborted on drop, runs both loops (each runs forever).
        let subscriber = match &conn {
            Conn::Sentinel(s) => {
                let s = Arc::clone(s);
                tokio::spawn(async move {
                    tokio::join!(invalidations, watch_sentinels(s));
                })
            }
            Conn::Single(_) | Conn::Cluster(_) => tokio::spawn(invalidations),
        };
        Ok(Self {
            conn,
            keys,
            cache,
            timeout: settings.timeout,
            last_ok: Arc::new(AtomicBool::new(true)),
            subscriber,
            create_session: Script::new(CREATE_SESSION),
            revoke_session: Script::new(REVOKE_SESSION),
            revoke_user: Script::new(REVOKE_USER),
            deny_jti: Script::new(DENY_JTI),
            rotate: Script::new(ROTATE),
            throttle_hit: Script::new(THROTTLE_HIT),
            throttle_peek: Script::new(THROTTLE_PEEK),
        })
    }

    /// The local cache (for tests and metrics).
    pub fn cache(&self) -> &LocalCache {
        &self.cache
    }

    /// One `PING` on the data connection, under the store timeout: refreshes the health flag
    /// when no request has (a readiness probe after an outage).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(async move { redis::cmd("PING").query_async::<String>(&mut conn).await })
            .await
            .map(|_| ())
    }

    /// Whether this instance is subscribed to invalidations.
    pub fn is_subscribed(&self) -> bool {
        self.cache.is_subscribed()
    }

    /// Whether the store answers and invalidations are being received.
    pub fn is_healthy(&self) -> bool {
        self.last_ok.load(Ordering::Relaxed) && self.cache.is_subscribed()
    }

    /// Runs one store operation under the timeout, recording health.
    async fn run<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(Timeout(self.timeout))),
        };
        self.last_ok.store(result.is_ok(), Ordering::Relaxed);
        if result.is_err() {
            crate::metrics::global()
                .store_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Reads the three facts a verdict needs: two round trips at most (the `jti` key lives in
    /// its own slot), issued concurrently.
    async fn read_verdict(
        &self,
        token: &TokenRef<'_>,
        now: i64,
    ) -> Result<(Verdict, Option<i64>), StoreError> {
        let mut jti_conn = self.conn.clone();
        let mut user_conn = self.conn.clone();
        let jti_key = self.keys.jti(token.jti_key);
        let denied = async move {
            redis::cmd("EXISTS")
                .arg(jti_key)
                .query_async::<bool>(&mut jti_conn)
                .await
        };
        let mut pipe = redis::pipe();
        pipe.get(self.keys.revoked_before(token.subject));
        let check_session = token.require_session;
        if check_session {
            let sid = token.session.filter(|s| plausible_sid(s)).unwrap_or("-");
            pipe.cmd("HMGET")
                .arg(self.keys.session(token.subject, sid))
                .arg("abs")
                .arg("idle");
        }
        let user = async move {
            if check_session {
                pipe.query_async::<(Option<i64>, (Option<i64>, Option<i64>))>(&mut user_conn)
                    .await
            } else {
                pipe.query_async::<(Option<i64>,)>(&mut user_conn)
                    .await
                    .map(|(rb,)| (rb, (None, None)))
            }
        };
        let (denied, (revoked_before, (abs, idle))) =
            self.run(async { tokio::try_join!(denied, user) }).await?;
        let verdict = if denied {
            Verdict::JtiDenied
        } else if revoked_before.is_some_and(|before| token.issued_at <= before) {
            Verdict::UserRevoked
        } else if check_session {
            match (abs, idle) {
                (Some(abs), Some(idle)) if now < abs && now < idle => Verdict::Alive,
                // Unknown, expired, or (the key is under `sub`) another user's session.
                _ => Verdict::SessionUnknown,
            }
        } else {
            Verdict::Alive
        };
        Ok((verdict, revoked_before))
    }

    fn apply_locally(&self, event: Invalidation) {
        // The subscriber will deliver the same event; applying it here too means this
        // instance never serves a stale verdict even for the moment before it arrives.
        self.cache.apply(&event);
    }
}

impl SessionStore for RedisStore {
    async fn check(&self, token: &TokenRef<'_>, now: i64) -> Result<Verdict, StoreError> {
        let metrics = crate::metrics::global();
        if self.cache.alive(token.token_key).is_some() {
            metrics.store_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Verdict::Alive);
        }
        if let Some(known) =
            self.cache
                .known_revoked(token.jti_key, token.session, token.subject, token.issued_at)
        {
            metrics.store_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(match known {
                Known::JtiDenied => Verdict::JtiDenied,
                Known::SessionRevoked => Verdict::SessionUnknown,
                Known::UserRevoked => Verdict::UserRevoked,
            });
        }
        metrics.store_cache_misses.fetch_add(1, Ordering::Relaxed);
        let sequence = self.cache.sequence();
        let (verdict, revoked_before) = self.read_verdict(token, now).await?;
        match verdict {
            Verdict::Alive => self.cache.remember_alive(
                *token.token_key,
                Alive {
                    jti_key: *token.jti_key,
                    session: token.session.map(Into::into),
                    subject: token.subject.into(),
                    expires_at: token.expires_at,
                },
                sequence,
            ),
            Verdict::JtiDenied => self.cache.remember_revoked(
                token.jti_key,
                None,
                token.subject,
                Known::JtiDenied,
                None,
            ),
            Verdict::UserRevoked => self.cache.remember_revoked(
                token.jti_key,
                None,
                token.subject,
                Known::UserRevoked,
                revoked_before,
            ),
            // A session that is merely absent might be one whose creation has not reached this
            // replica yet; only revocation events (which name it) make it a negative fact.
            Verdict::SessionUnknown | Verdict::SessionMismatch => {}
        }
        Ok(verdict)
    }

    async fn create_session(
        &self,
        record: SessionRecord,
        refresh: Option<RefreshGrant>,
    ) -> Result<(), StoreError> {
        if !plausible_sid(&record.id) {
            return Err(unavailable(std::io::Error::other(
                "session ids must be base64url",
            )));
        }
        let mut conn = self.conn.clone();
        let mut invocation = self.create_session.prepare_invoke();
        invocation
            .key(self.keys.session(&record.subject, &record.id))
            .key(self.keys.sessions(&record.subject));
        match &refresh {
            Some(r) => invocation.key(self.keys.refresh(&record.subject, &r.hash)),
            None => invocation.key(self.keys.refresh(&record.subject, &[0; 32])),
        };
        invocation
            .arg(&record.id)
            .arg(&record.subject)
            .arg(record.created_at)
            .arg(record.last_seen)
            .arg(&record.ip)
            .arg(&record.user_agent)
            .arg(record.absolute_expiry)
            .arg(record.idle_expiry)
            .arg(if record.remember_me { "1" } else { "0" })
            .arg(
                refresh
                    .map(|r| r.expires_at.min(record.absolute_expiry).to_string())
                    .unwrap_or_default(),
            );
        self.run(invocation.invoke_async::<i64>(&mut conn))
            .await
            .map(|_| ())
    }

    async fn session(
        &self,
        subject: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if !plausible_sid(id) {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let fields: Vec<Option<String>> = self
            .run(
                redis::cmd("HMGET")
                    .arg(self.keys.session(subject, id))
                    .arg(&[
                        "sub",
                        "created",
                        "last_seen",
                        "ip",
                        "ua",
                        "abs",
                        "idle",
                        "remember",
                    ])
                    .query_async(&mut conn),
            )
            .await?;
        Ok(parse_session(id, &fields).filter(|s| now < s.absolute_expiry && now < s.idle_expiry))
    }

    async fn sessions_of(&self, subject: &str, now: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = self
            .run(
                redis::cmd("SMEMBERS")
                    .arg(self.keys.sessions(subject))
                    .query_async(&mut conn),
            )
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.session(subject, &id, now).await? {
                out.push(s);
            }
        }
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    async fn revoke_session(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        if !plausible_sid(id) {
            return Ok(false);
        }
        let event = Invalidation::Session(id.to_owned());
        let mut conn = self.conn.clone();
        let existed: i64 = self
            .run(
                self.revoke_session
                    .key(self.keys.session(subject, id))
                    .key(self.keys.sessions(subject))
                    .arg(id)
                    .arg(self.keys.channel())
                    .arg(event.encode())
                    .invoke_async(&mut conn),
            )
            .await?;
        if existed > 0 {
            self.apply_locally(event);
        }
        Ok(existed > 0)
    }

    async fn revoke_user(
        &self,
        subject: &str,
        before: i64,
        keep_until: i64,
    ) -> Result<(), StoreError> {
        let event = Invalidation::User {
            subject: subject.to_owned(),
            before,
        };
        let mut conn = self.conn.clone();
        self.run(
            self.revoke_user
                .key(self.keys.sessions(subject))
                .key(self.keys.revoked_before(subject))
                .arg(self.keys.session_prefix(subject))
                .arg(before)
                .arg(keep_until)
                .arg(self.keys.channel())
                .arg(event.encode())
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        self.apply_locally(event);
        Ok(())
    }

    async fn deny_jti(&self, issuer: &str, jti: &str, until: i64) -> Result<(), StoreError> {
        let key = jti_key(issuer, jti);
        let event = Invalidation::Jti { key, until };
        let mut conn = self.conn.clone();
        self.run(
            self.deny_jti
                .key(self.keys.jti(&key))
                .arg(until)
                .arg(crate::pipeline::verify::unix_now())
                .arg(self.keys.channel())
                .arg(event.encode())
                .invoke_async::<i64>(&mut conn),
        )
        .await?;
        self.apply_locally(event);
        Ok(())
    }

    async fn rotate_refresh(&self, rotation: &Rotation<'_>) -> Result<RotateOutcome, StoreError> {
        if !plausible_sid(rotation.session) {
            return Ok(RotateOutcome::Invalid);
        }
        let (subject, sid) = (rotation.subject, rotation.session);
        let event = Invalidation::Session(sid.to_owned());
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self
            .run(
                self.rotate
                    .key(self.keys.refresh(subject, &rotation.presented))
                    .key(self.keys.session(subject, sid))
                    .key(self.keys.refresh(subject, &rotation.successor))
                    .key(self.keys.sessions(subject))
                    .arg(sid)
                    .arg(rotation.now)
                    .arg(rotation.grace)
                    .arg(rotation.idle)
                    .arg(rotation.successor_expires_at)
                    .arg(self.keys.channel())
                    .arg(event.encode())
                    .invoke_async(&mut conn),
            )
            .await?;
        let record = |fields: &[String]| {
            let fields: Vec<Option<String>> = fields.iter().cloned().map(Some).collect();
            parse_session(sid, &fields).ok_or_else(|| unavailable(Protocol))
        };
        match reply.first().map(String::as_str) {
            Some("rotated") => Ok(RotateOutcome::Rotated(record(&reply[1..])?)),
            Some("concurrent") => Ok(RotateOutcome::Concurrent(record(&reply[1..])?)),
            Some("reuse") => {
                self.apply_locally(event);
                Ok(RotateOutcome::ReuseDetected {
                    subject: reply.get(1).cloned().unwrap_or_default(),
                })
            }
            Some("expired") => {
                self.apply_locally(event);
                Ok(RotateOutcome::Invalid)
            }
            Some("invalid") => Ok(RotateOutcome::Invalid),
            _ => Err(unavailable(Protocol)),
        }
    }

    // The counters are read and written in Redis every time, never through the local cache:
    // they are not on the hot path, and every instance must count every failure.
    async fn throttle_hit(&self, key: &str, window: i64, now: i64) -> Result<Attempts, StoreError> {
        let mut conn = self.conn.clone();
        let (count, ttl): (i64, i64) = self
            .run(
                self.throttle_hit
                    .key(self.keys.throttle(key))
                    .arg(window.max(1))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(attempts(count, ttl, now))
    }

    async fn throttle_peek(&self, key: &str, now: i64) -> Result<Attempts, StoreError> {
        let mut conn = self.conn.clone();
        let (count, ttl): (i64, i64) = self
            .run(
                self.throttle_peek
                    .key(self.keys.throttle(key))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(attempts(count, ttl, now))
    }

    async fn throttle_clear(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.run(
            redis::cmd("DEL")
                .arg(self.keys.throttle(key))
                .query_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }
}

fn parse_session(id: &str, f: &[Option<String>]) -> Option<SessionRecord> {
    let get = |i: usize| f.get(i).cloned().flatten();
    let num = |i: usize| get(i).and_then(|v| v.parse::<i64>().ok());
    Some(SessionRecord {
        id: id.to_owned(),
        subject: get(0)?,
        created_at: num(1)?,
        last_seen: num(2)?,
        ip: get(3).unwrap_or_default(),
        user_agent: get(4).unwrap_or_default(),
        absolute_expiry: num(5)?,
        idle_expiry: num(6)?,
        remember_me: get(7).as_deref() == Some("1"),
    })
}

/// Keeps this instance subscribed to invalidations, forever: on any loss the cache stops
/// serving positive verdicts until the subscription is confirmed again.
async fn subscribe(source: PubSubSource, channel: String, cache: Arc<LocalCache>) {
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(25);
    loop {
        match listen(&source, attempt, &channel, &cache).await {
            Ok(()) => backoff = Duration::from_millis(25),
            Err(e) => {
                tracing::warn!(error = %e, "invalidation subscription failed; reading through to redis")
            }
        }
        cache.unsubscribed();
        attempt = attempt.wrapping_add(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription's life: returns when the connection is lost.
async fn listen(
    source: &PubSubSource,
    attempt: usize,
    channel: &str,
    cache: &LocalCache,
) -> redis::RedisResult<()> {
    // Taken before asking the sentinels for the master, so that a switch announced from here
    // on ends this subscription.
    let mut switches = match source {
        PubSubSource::Clients(_) => None,
        PubSubSource::Sentinel(s) => Some(s.switches.subscribe()),
    };
    let client = source.client(attempt).await?;
    let mut pubsub = tokio::time::timeout(PING_EVERY, client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub.subscribe(channel).await?;
    // Confirmed: from now on every revocation reaches us.
    cache.subscribed();
    tracing::info!(channel, "subscribed to invalidations");
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let payload: String = match message.get_payload() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable invalidation");
                        continue;
                    }
                };
                match Invalidation::decode(&payload) {
                    Some(event) => cache.apply(&event),
                    None => tracing::warn!("unknown invalidation message ignored"),
                }
            }
            _ = ping.tick() => {
                // A half-open connection never ends the stream; a ping that goes unanswered does.
                // Any answer will do: a subscribed RESP2 connection answers `["pong", ""]`.
                match tokio::time::timeout(PING_EVERY, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
            // The server we listen on is no longer the master: events are published elsewhere.
            () = switched(&mut switches) => return Ok(()),
        }
    }
}

/// How often an idle subscription is pinged, and how long the answer may take.
const PING_EVERY: Duration = Duration::from_secs(2);

/// Resolves when a master switch is announced; never without a sentinel.
async fn switched(switches: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match switches {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Follows the sentinels' announcements of a new master, forever. A planned failover
/// (`SENTINEL FAILOVER`) leaves the old master running, and writable, for seconds until the
/// sentinels convert it; whatever is written to it meanwhile (a revocation) is discarded when it
/// resyncs, and its subscribers hear nothing published on the new master. So the switch must be
/// acted on when it is announced, not when the old master fails.
///
/// Two announcements: `+failover-state-reconf-slaves` (`master <name> <ip> <port>`), sent at
/// the moment a sentinel starts naming the promoted replica as the master — well before
/// `+switch-master` (`<name> <old ip> <old port> <new ip> <new port>`), which ends the failover.
async fn watch_sentinels(s: Arc<SentinelConn>) {
    let mut backoff = Duration::from_millis(25);
    let mut first = true;
    loop {
        match watch_switches(&s, &mut first).await {
            Ok(()) => backoff = Duration::from_millis(25),
            Err(e) => tracing::warn!(error = %e, "cannot follow sentinel announcements"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription to a sentinel's announcements: returns when the connection is lost.
async fn watch_switches(s: &SentinelConn, first: &mut bool) -> redis::RedisResult<()> {
    let client = s.sentinel.lock().await.async_get_sentinel_client().await?;
    let mut pubsub = tokio::time::timeout(PING_EVERY, client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub
        .subscribe(&["+failover-state-reconf-slaves", "+switch-master"])
        .await?;
    if !std::mem::take(first) {
        // A switch may have been announced while no sentinel was being heard.
        s.master_switched();
    }
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let payload: String = message.get_payload()?;
                let mut words = payload.split(' ');
                let name = match message.get_channel_name() {
                    "+switch-master" => words.next(),
                    "+failover-state-reconf-slaves" => words.nth(1),
                    _ => None,
                };
                if name == Some(s.master.as_str()) {
                    tracing::warn!(announcement = %payload, "sentinel switched master");
                    s.master_switched();
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_EVERY, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}
