//! The shared store: Redis (standalone, `rediss://`, Sentinel or Cluster) behind a local cache.
//!
//! Data model, every key under the configured prefix `P` (hash tags in braces keep all of one
//! user's keys in one Cluster slot, so every write below is a single atomic Lua script):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:{u:<sub>}:sessions` | set | the user's session ids | after the latest absolute expiry |
//! | `P:{u:<sub>}:s:<sid>` | hash | `sub created last_seen ip ua abs idle remember` | after `abs` |
//! | `P:{u:<sub>}:rt:<sha256>` | hash | a refresh token's session, `state` (`current`/`used`), `used_at`, `exp` | after `exp` |
//! | `P:{u:<sub>}:rb` | string | `<before> <keep_until>`: tokens issued at or before `before` are revoked until `keep_until` | after `keep_until` |
//! | `P:{j:<sha256(iss, jti)>}` | string | a denylisted access token, until the instant it holds (its `exp`) | after that instant |
//! | `P:{t:<sha256(key)>}` | string | `<count> <resets_at>`: failed logins counted under a throttle key | at `resets_at` |
//! | `P:{epoch}` | string | the store's [`Epoch`] (data-loss detection) | never |
//!
//! Time: every answer compares the caller's `now` with the instants in these values (the scripts
//! take `now` as an argument); no answer depends on Redis's clock. Key expiry is garbage
//! collection, set as a remaining lifetime by the gateway's [`Clock`]: [`GC_MARGIN`] after the
//! instant a session or revocation key holds, so that it is still there whenever the gateway's
//! clock says it matters, and exactly at the end of a throttle window (those keys are made by
//! unauthenticated clients, so their memory is bounded as tightly as the window allows).
//! Values written before the instants were kept in them (`rb` holding only `before`, a `jti`
//! holding `1`, a throttle counter holding only its count) are read as their key's expiry says.
//!
//! `<sub>` is the subject in base64url, so no subject can forge another's key names; a throttle
//! key (`ip:…`, `user:…`, anything a client sent) appears only as its SHA-256. Refresh
//! tokens are stored only as SHA-256 hashes. Every revoking script publishes an
//! [`Invalidation`] on `P:invalidate` in the same script that writes, so an event is published
//! exactly when the write happened; every instance's subscriber applies it to its
//! [`LocalCache`]. The hot path reads the cache; a miss reads Redis in one round trip per slot.
//! Any Redis error or timeout is [`StoreError::Unavailable`]: the request gets 503, never a
//! guessed "alive".
//!
//! Faults, and what bounds them:
//! - **Partition.** Every instance runs a heartbeat: every `max_staleness / 5` it reads (or, if
//!   missing, creates) the epoch and publishes it on the invalidation channel, on the data
//!   connection. A cached "alive" verdict is served only while the channel was heard from within
//!   `max_staleness` ([`LocalCache::fresh`]); an instance whose subscription goes silent reads
//!   through (and gets 503 when the store cannot answer) at most `max_staleness` later.
//! - **Data loss.** The epoch changes or disappears; see [`super::epoch`]. It is read on every
//!   heartbeat, in every other instance's heartbeat, and with every read-through.
//! - **Failover.** With `min_replicas_acks > 0`, every revoking write is followed by `WAIT` on
//!   its own connection (a `WAIT` blocks the connection it runs on, so it never shares the
//!   request path's connection); too few acknowledgements within `replica_ack_timeout` is an
//!   error the caller reports (503), not a success.

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

use crate::clock::Clock;

use super::cache::{Alive, Invalidation, Known, LocalCache, Mark, hex};
use super::epoch::{Epoch, EpochWatch, Observation, OnDataLoss};
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
    /// Longest a cached positive verdict is served after the invalidation channel was last
    /// heard from.
    pub max_staleness: Duration,
    /// What a detected data loss does.
    pub on_data_loss: OnDataLoss,
    /// This deployment's first start: an epoch created at start cuts off no earlier token.
    pub first_start: bool,
    /// Replicas that must acknowledge a revoking write (`WAIT`); 0 waits for none.
    pub min_replicas_acks: u32,
    /// Longest a revoking write waits for those acknowledgements.
    pub replica_ack_timeout: Duration,
}

impl RedisSettings {
    /// The defaults for everything but where Redis is.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            key_prefix: "portcullis".to_owned(),
            timeout: Duration::from_millis(500),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(30),
            password: None,
            max_staleness: DEFAULT_MAX_STALENESS,
            on_data_loss: OnDataLoss::RefuseEarlierTokens,
            first_start: false,
            min_replicas_acks: 0,
            replica_ack_timeout: Duration::from_millis(500),
        }
    }
}

/// The default bound on how stale a cached verdict may be under a partition. It is the
/// longest a revoked token can still pass on an instance cut off from the invalidation
/// channel; 500 ms keeps that below what a person notices, while heartbeats every 100 ms let
/// four in a row be late (a busy host, a slow scheduler) before the instance falls back to
/// reading through.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("topology", &self.topology)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("cache_capacity", &self.cache_capacity)
            .field("cache_ttl", &self.cache_ttl)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("max_staleness", &self.max_staleness)
            .field("on_data_loss", &self.on_data_loss)
            .field("first_start", &self.first_start)
            .field("min_replicas_acks", &self.min_replicas_acks)
            .field("replica_ack_timeout", &self.replica_ack_timeout)
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

#[derive(Debug, thiserror::Error)]
#[error("{acked} of {wanted} replicas acknowledged the write in time")]
struct NotReplicated {
    acked: i64,
    wanted: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("the store's data was lost and checks are halted until an operator resumes them")]
struct Halted;

#[derive(Debug, thiserror::Error)]
#[error("the store's epoch marker holds an unreadable value")]
struct BadEpoch;

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
    fn epoch(&self) -> String {
        format!("{}:{{epoch}}", self.prefix)
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

/// How long after the instant it holds a session or revocation key is kept (see the module
/// docs): a margin for a gateway clock that runs slower than Redis's, e.g. a test's manual
/// clock held still while real time passes.
pub const GC_MARGIN: i64 = 300;

/// The TTL of a key that matters until `until`, as seen at `now`.
fn gc_ttl(until: i64, now: i64) -> i64 {
    until.saturating_sub(now).max(0).saturating_add(GC_MARGIN)
}

// KEYS: the session, the user's session set, the refresh token (a placeholder when none).
// ARGV: sid, sub, created, last_seen, ip, ua, abs, idle, remember, the refresh token's expiry
// ('' when none), the session's TTL, the refresh token's TTL.
// A key's TTL only ever grows (`TTL` is -1 without one, -2 when missing).
const CREATE_SESSION: &str = r"
redis.call('HSET', KEYS[1], 'sub', ARGV[2], 'created', ARGV[3], 'last_seen', ARGV[4],
  'ip', ARGV[5], 'ua', ARGV[6], 'abs', ARGV[7], 'idle', ARGV[8], 'remember', ARGV[9])
redis.call('EXPIRE', KEYS[1], ARGV[11])
redis.call('SADD', KEYS[2], ARGV[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[11]) then
  redis.call('EXPIRE', KEYS[2], ARGV[11])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'state', 'current', 'exp', ARGV[10])
  redis.call('EXPIRE', KEYS[3], ARGV[12])
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
// KEYS: the user's session set, the mark. ARGV: the session key prefix, before, keep_until,
// the channel, the invalidation, the mark's TTL.
// The mark only moves forward: the later `before` and the later `keep_until` of the two. A mark
// written before it held `keep_until` is kept as long as its TTL says.
const REVOKE_USER: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
for _, sid in ipairs(members) do
  redis.call('DEL', ARGV[1] .. sid)
end
redis.call('DEL', KEYS[1])
local before, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[2])
if raw then
  local old_before, old_keep = string.match(raw, '^(%-?%d+) (%-?%d+)$')
  if not old_before then old_before = raw end
  if tonumber(old_before) > before then before = tonumber(old_before) end
  if old_keep and tonumber(old_keep) > keep then keep = tonumber(old_keep) end
end
local ttl = tonumber(ARGV[6])
local old_ttl = redis.call('TTL', KEYS[2])
if old_ttl > ttl then ttl = old_ttl end
redis.call('SET', KEYS[2], string.format('%d %d', before, keep), 'EX', ttl)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return #members
";

// The heartbeat: the epoch, created when missing, published on the invalidation channel so
// that every instance hears from it (and from the channel) several times per max_staleness.
// KEYS: the epoch. ARGV: the epoch to create if there is none, the channel.
const HEARTBEAT: &str = r"
local e = redis.call('GET', KEYS[1])
if not e then
  redis.call('SET', KEYS[1], ARGV[1])
  e = ARGV[1]
end
redis.call('PUBLISH', ARGV[2], 'h ' .. e)
return e
";

// Rewrites the epoch's state if it is still the epoch the caller means, and announces it.
// KEYS: the epoch. ARGV: its id, the new value, the channel.
const SET_EPOCH_STATE: &str = r"
local e = redis.call('GET', KEYS[1])
if (not e) or string.sub(e, 3, 34) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'h ' .. ARGV[2])
return 1
";

// KEYS: the denial. ARGV: until, now, the channel, the invalidation, the TTL.
// A denial only moves forward; one written before it held its instant (`1`) is replaced.
const DENY_JTI: &str = r"
local deadline = tonumber(ARGV[1])
if deadline > tonumber(ARGV[2]) then
  local old = tonumber(redis.call('GET', KEYS[1]) or '')
  if (not old) or old == 1 or old < deadline then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
  end
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

// KEYS: presented refresh, session, successor refresh, the user's session set.
// ARGV: sid, now, grace, idle seconds, successor expiry, channel, invalidation message, the
// GC margin. A token written before it held `exp` lives as long as its TTL says.
const ROTATE: &str = r"
local rt = redis.call('HMGET', KEYS[1], 'sid', 'state', 'used_at', 'exp')
if (not rt[1]) or rt[1] ~= ARGV[1] then return {'invalid'} end
local now = tonumber(ARGV[2])
if rt[4] and now >= tonumber(rt[4]) then return {'invalid'} end
local s = redis.call('HGETALL', KEYS[2])
if #s == 0 then return {'invalid'} end
local f = {}
for i = 1, #s, 2 do f[s[i]] = s[i + 1] end
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
  redis.call('HSET', KEYS[3], 'sid', ARGV[1], 'state', 'current', 'exp', expiry)
  local ttl = expiry - now
  if ttl < 0 then ttl = 0 end
  redis.call('EXPIRE', KEYS[3], ttl + tonumber(ARGV[8]))
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

// Reads a counter as `count, resets_at`: `0, 0` when there is none. A counter written before the
// window's end was kept in it holds only its count: its window ends when its key expires
// (rounded up to the second, so that a `Retry-After` built from it is never early).
// KEYS[1] is the counter.
const THROTTLE_READ: &str = r"
local function read(now)
  local raw = redis.call('GET', KEYS[1])
  if not raw then return 0, 0 end
  local count, resets = string.match(raw, '^(%d+) (%-?%d+)$')
  if count then return tonumber(count), tonumber(resets) end
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 then ttl = 0 end
  return tonumber(raw) or 0, now + math.floor((ttl + 999) / 1000)
end
";

// One failed login, counted in the window open at `now` or in a new one from `now`. The key's
// expiry is set in the same script as the count, so no counter is left without one. Later
// failures do not extend the window.
// KEYS: the counter. ARGV: the window in seconds, now. Returns the count and the window's end.
const THROTTLE_HIT: &str = r"
local now, window = tonumber(ARGV[2]), tonumber(ARGV[1])
local count, resets = read(now)
if count == 0 or now >= resets then
  count, resets = 1, now + window
else
  count = count + 1
end
redis.call('SET', KEYS[1], string.format('%d %d', count, resets), 'EX', resets - now)
return {count, resets}
";

// The count and the window's end, read together so the one cannot outlive the other.
// KEYS: the counter. ARGV: now.
const THROTTLE_PEEK: &str = r"
local count, resets = read(tonumber(ARGV[1]))
return {count, resets}
";

/// A counter's reply as [`Attempts`]: nothing counts once `now` has reached the window's end.
fn attempts(count: i64, resets_at: i64, now: i64) -> Attempts {
    if count <= 0 || now >= resets_at {
        return Attempts::NONE;
    }
    Attempts {
        count: u32::try_from(count).unwrap_or(u32::MAX),
        resets_at,
    }
}

/// The value a `jti` denial was written with before it held its instant: denied for as long as
/// the key lives.
const LEGACY_DENIAL: i64 = 1;

/// Whether a `jti` denial's value refuses at `now`.
fn denial_refuses(value: i64, now: i64) -> bool {
    value == LEGACY_DENIAL || now < value
}

/// A user's mark as stored (`<before> <keep_until>`, or only `<before>` when written before the
/// mark held its `keep_until`: kept as long as its key lives).
fn parse_mark(value: &str) -> Option<Mark> {
    let mut parts = value.split(' ');
    let before = parts.next()?.parse().ok()?;
    let keep_until = match parts.next() {
        Some(keep) => keep.parse().ok()?,
        None => i64::MAX,
    };
    parts
        .next()
        .is_none()
        .then_some(Mark { before, keep_until })
}

/// What a read-through reads: a `jti` denial's value, the user's mark, the session's `abs` and
/// `idle`, and the epoch.
type Facts = (
    Option<i64>,
    Option<String>,
    (Option<i64>, Option<i64>),
    Option<String>,
);

/// A read-through's verdict and what the cache may keep of it.
struct Read {
    verdict: Verdict,
    /// The denial that refused the token, and until when.
    denied_until: Option<i64>,
    /// The user's mark that refused the token.
    mark: Option<Mark>,
    /// When an `Alive` verdict stops being true.
    alive_until: i64,
}

/// A connection to the data, whichever the topology.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>, Lane),
}

/// Which of a store's two connections: the one every request shares, or the one revoking
/// writes use when they wait for replicas (`WAIT` blocks the connection it is sent on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Data = 0,
    Durable = 1,
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
    /// The master's connection for each [`Lane`].
    current: [ArcSwap<Option<ConnectionManager>>; 2],
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

    async fn resolve(&self, lane: Lane) -> redis::RedisResult<ConnectionManager> {
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
            self.current[lane as usize].store(Arc::new(Some(manager.clone())));
        }
        Ok(manager)
    }

    /// The sentinels named a new master: stop using the old one, for data and invalidations.
    fn master_switched(&self) {
        for current in &self.current {
            current.store(Arc::new(None));
        }
        self.switches.send_modify(|g| *g = g.wrapping_add(1));
    }

    async fn connection(&self, lane: Lane) -> redis::RedisResult<ConnectionManager> {
        match &**self.current[lane as usize].load() {
            Some(manager) => Ok(manager.clone()),
            None => self.resolve(lane).await,
        }
    }

    fn after_error(&self, lane: Lane, e: &redis::RedisError) {
        let read_only = e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || read_only {
            self.current[lane as usize].store(Arc::new(None));
        }
    }
}

/// Whether a failed command may be sent once more: the connection had died (typically while
/// idle, e.g. Redis restarted) and has been replaced by the manager. Every store operation is
/// idempotent or harmless to repeat: reads, `SET`s, the revoking scripts (a repeated
/// session revoke that had in fact run reports "not found" — the session is revoked all the
/// same), a rotation (a repeat finds the token just used: "concurrent", within the grace).
fn retry_once(e: &redis::RedisError) -> bool {
    e.is_connection_dropped()
}

/// Sends on the master's connection of `lane`; after an error the connection is dropped (the
/// next use asks the sentinels again), and a dropped one is tried once more ([`retry_once`]).
async fn on_master<T, F, Fut>(s: &SentinelConn, lane: Lane, send: F) -> redis::RedisResult<T>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut retried = false;
    loop {
        let result = send(s.connection(lane).await?).await;
        match &result {
            Err(e) => {
                s.after_error(lane, e);
                if retried || !retry_once(e) {
                    return result;
                }
                retried = true;
            }
            Ok(_) => return result,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e) if retry_once(&e) => c.req_packed_command(cmd).await,
                    result => result,
                }
            }),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s, lane) => {
                let (s, lane) = (Arc::clone(s), *lane);
                Box::pin(async move {
                    on_master(
                        &s,
                        lane,
                        |mut c| async move { c.req_packed_command(cmd).await },
                    )
                    .await
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
            Conn::Single(c) => Box::pin(async move {
                match c.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if retry_once(&e) => {
                        c.req_packed_commands(pipeline, offset, count).await
                    }
                    result => result,
                }
            }),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s, lane) => {
                let (s, lane) = (Arc::clone(s), *lane);
                Box::pin(async move {
                    on_master(&s, lane, |mut c| async move {
                        c.req_packed_commands(pipeline, offset, count).await
                    })
                    .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(..) => 0,
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
    /// Revoking writes that wait for replicas; `None` when `min_replicas_acks` is 0.
    durable: Option<Conn>,
    keys: Keys,
    cache: Arc<LocalCache>,
    guard: Arc<Guard>,
    timeout: Duration,
    min_replicas_acks: u32,
    replica_ack_timeout: Duration,
    /// Whether cross-slot reads must be separate commands (Cluster) or may share a pipeline.
    cluster: bool,
    subscriber: tokio::task::JoinHandle<()>,
    heartbeat: tokio::task::JoinHandle<()>,
    create_session: Script,
    revoke_session: Script,
    revoke_user: Script,
    deny_jti: Script,
    rotate: Script,
    throttle_hit: Script,
    throttle_peek: Script,
    /// The gateway's clock, for key expiry only.
    clock: Clock,
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
        self.heartbeat.abort();
    }
}

/// What the heartbeat, the subscriber and the request path share about the store's health and
/// epoch.
struct Guard {
    conn: Conn,
    keys: Keys,
    cache: Arc<LocalCache>,
    epoch: EpochWatch,
    on_data_loss: OnDataLoss,
    first_start: bool,
    timeout: Duration,
    /// Whether the last store operation succeeded (for readiness).
    last_ok: AtomicBool,
    /// Where a detected reset is recorded; set once the gateway's audit trail exists.
    audit: std::sync::OnceLock<crate::audit::Audit>,
    /// The gateway's clock: the instant an epoch this instance creates is stamped with.
    clock: Clock,
    heartbeat: Script,
    set_epoch_state: Script,
    /// Confirmed subscriptions (one per Cluster seed node, else at most one). Under a mutex so
    /// that the cache's subscribed/unsubscribed transitions happen in the order of the counts.
    subscriptions: std::sync::Mutex<usize>,
    /// Invalidations applied in the last second (a Cluster delivers each once per subscribed
    /// node), by a hash of their wire form.
    delivered: moka::sync::Cache<u64, ()>,
    delivered_hasher: std::hash::RandomState,
}

impl Guard {
    fn subscription_confirmed(&self) {
        let mut live = self
            .subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live += 1;
        if *live == 1 {
            self.cache.subscribed();
        }
    }

    fn subscription_lost(&self) {
        let mut live = self
            .subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.cache.unsubscribed();
        }
    }

    /// Whether this is the first delivery of an invalidation within the last second. Applying
    /// one twice is harmless, only wasted work.
    fn first_delivery(&self, payload: &str) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.delivered_hasher.build_hasher();
        h.write(payload.as_bytes());
        let key = h.finish();
        if self.delivered.contains_key(&key) {
            return false;
        }
        self.delivered.insert(key, ());
        true
    }

    /// Runs one store operation under `timeout`, recording health.
    async fn run<T>(
        &self,
        timeout: Duration,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(Timeout(timeout))),
        };
        self.last_ok.store(result.is_ok(), Ordering::Relaxed);
        if result.is_err() {
            crate::metrics::global()
                .store_errors
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// One heartbeat: reads the epoch (creating it when there is none), publishes it on the
    /// invalidation channel, and takes in what it says.
    async fn beat(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        // The epoch this instance would create. Before it knew any, it is starting: `now` is
        // the cutoff unless this is the deployment's first start. After, a missing epoch is a
        // reset this instance detects.
        let starting = !self.epoch.has_seen();
        let cutoff = if starting && self.first_start { 0 } else { now };
        let halted =
            self.on_data_loss == OnDataLoss::Unavailable && !(starting && self.first_start);
        let candidate = Epoch::new(now, cutoff, halted);
        let mut conn = self.conn.clone();
        let value: String = self
            .run(
                self.timeout,
                self.heartbeat
                    .key(self.keys.epoch())
                    .arg(candidate.encode())
                    .arg(self.keys.channel())
                    .invoke_async(&mut conn),
            )
            .await?;
        self.take_in(&value);
        if self.epoch.current().is_none() {
            return Err(unavailable(BadEpoch));
        }
        Ok(())
    }

    /// Takes in an epoch read from the store or heard on the channel.
    fn take_in(&self, value: &str) {
        let Some(seen) = Epoch::decode(value) else {
            tracing::error!(
                "the store's epoch marker is unreadable; store checks fail until it is"
            );
            return;
        };
        if let Observation::Reset { previous } = self.epoch.observe(&seen, self.on_data_loss) {
            self.reset_detected(&previous, &seen);
        }
    }

    /// The store lost its data: drop every cached verdict, record it, and (in `unavailable`
    /// mode) mark the epoch halted so that every instance, including those started later,
    /// refuses until an operator resumes.
    fn reset_detected(&self, previous: &Epoch, seen: &Epoch) {
        self.cache.forget_alive();
        crate::metrics::global()
            .store_resets_detected
            .fetch_add(1, Ordering::Relaxed);
        let detail = format!(
            "epoch {} (created {}) replaced by {} (created {}); tokens without a session issued \
             at or before {} are refused{}",
            previous.id,
            previous.created,
            seen.id,
            seen.created,
            self.epoch.cutoff(),
            if self.on_data_loss == OnDataLoss::Unavailable {
                "; store checks are halted until POST /admin/store/resume"
            } else {
                ""
            }
        );
        tracing::error!(%detail, "the session store lost its data");
        if let Some(audit) = self.audit.get() {
            audit.emit(&crate::audit::AuditEvent {
                event: "store.reset_detected",
                reason_id: "store.epoch_changed",
                subject: None,
                session: None,
                client_ip: None,
                user_agent: None,
                route: None,
                method: None,
                path: None,
                request_id: None,
                detail: Some(&detail),
            });
        }
        if self.on_data_loss == OnDataLoss::Unavailable && !seen.halted {
            let halted = Epoch {
                halted: true,
                ..seen.clone()
            };
            let (mut conn, script, keys) = (
                self.conn.clone(),
                self.set_epoch_state.clone(),
                self.keys.clone(),
            );
            tokio::spawn(async move {
                let marked = script
                    .key(keys.epoch())
                    .arg(&halted.id)
                    .arg(halted.encode())
                    .arg(keys.channel())
                    .invoke_async::<i64>(&mut conn)
                    .await;
                if let Err(e) = marked {
                    tracing::warn!(error = %e, "could not mark the store's epoch halted; this instance stays halted");
                }
            });
        }
    }

    /// Takes in the epoch read with a read-through (`None`: the store holds none, and the
    /// heartbeat creates it now), then says whether checks may be answered.
    async fn check_epoch(&self, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(v) => self.take_in(v),
            None => self.beat().await?,
        }
        if !self.epoch.has_seen() {
            return Err(unavailable(BadEpoch));
        }
        if self.epoch.is_halted() {
            return Err(unavailable(Halted));
        }
        Ok(())
    }
}

/// Beats every `every` until aborted (when the store is dropped).
async fn heartbeat(guard: Arc<Guard>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = guard.beat().await {
            tracing::debug!(error = %e, "store heartbeat failed");
        }
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
    /// Redis is down) and starts the invalidation subscriber and the heartbeat. `clock` is the
    /// gateway's: it stamps the epochs this instance creates and times key expiry (answers use
    /// the caller's `now`). Must run inside Tokio.
    pub async fn connect(settings: &RedisSettings, clock: Clock) -> Result<Self, StoreError> {
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
        let waits = settings.min_replicas_acks > 0;
        // The durable lane's commands include a `WAIT` of up to replica_ack_timeout.
        let durable_config = manager_config
            .clone()
            .set_response_timeout(Some(settings.timeout + settings.replica_ack_timeout));
        let (conn, durable, source) = match &settings.topology {
            Topology::Single(url) => {
                let c = client(url, password).map_err(unavailable)?;
                let manager = ConnectionManager::new_lazy_with_config(c.clone(), manager_config)
                    .map_err(unavailable)?;
                let durable = if waits {
                    Some(Conn::Single(
                        ConnectionManager::new_lazy_with_config(c.clone(), durable_config)
                            .map_err(unavailable)?,
                    ))
                } else {
                    None
                };
                (
                    Conn::Single(manager),
                    durable,
                    PubSubSource::Clients(vec![c]),
                )
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
                let connect = || async {
                    tokio::time::timeout(settings.timeout * 4, cluster.get_async_connection())
                        .await
                        .map_err(|_| unavailable(Timeout(settings.timeout * 4)))?
                        .map_err(unavailable)
                };
                let conn = connect().await?;
                let durable = if waits {
                    Some(Conn::Cluster(connect().await?))
                } else {
                    None
                };
                let clients = nodes
                    .iter()
                    .map(|n| client(n, password))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                (Conn::Cluster(conn), durable, PubSubSource::Clients(clients))
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
                    current: [ArcSwap::from_pointee(None), ArcSwap::from_pointee(None)],
                    // The durable lane's config differs only in its response timeout; it is
                    // used for both lanes' reconnects, so it is the longer one.
                    config: if waits {
                        durable_config
                    } else {
                        manager_config
                    },
                    switches: tokio::sync::watch::Sender::new(0),
                });
                let durable = waits.then(|| Conn::Sentinel(Arc::clone(&s), Lane::Durable));
                (
                    Conn::Sentinel(Arc::clone(&s), Lane::Data),
                    durable,
                    PubSubSource::Sentinel(s),
                )
            }
        };
        let cache = Arc::new(LocalCache::new(
            settings.cache_capacity,
            settings.cache_ttl,
            settings.max_staleness,
            clock.clone(),
        ));
        let guard = Arc::new(Guard {
            conn: conn.clone(),
            keys: keys.clone(),
            cache: Arc::clone(&cache),
            epoch: EpochWatch::new(),
            on_data_loss: settings.on_data_loss,
            first_start: settings.first_start,
            timeout: settings.timeout,
            last_ok: AtomicBool::new(true),
            audit: std::sync::OnceLock::new(),
            clock: clock.clone(),
            heartbeat: Script::new(HEARTBEAT),
            set_epoch_state: Script::new(SET_EPOCH_STATE),
            subscriptions: std::sync::Mutex::new(0),
            delivered: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            delivered_hasher: std::hash::RandomState::new(),
        });
        let invalidations = subscribe(source, keys.channel(), Arc::clone(&guard));
        // One task, aborted on drop, runs both loops (each runs forever).
        let subscriber = match &conn {
            Conn::Sentinel(s, _) => {
                let s = Arc::clone(s);
                tokio::spawn(async move {
                    tokio::join!(invalidations, watch_sentinels(s));
                })
            }
            Conn::Single(_) | Conn::Cluster(_) => tokio::spawn(invalidations),
        };
        let heartbeat = tokio::spawn(heartbeat(
            Arc::clone(&guard),
            heartbeat_interval(settings.max_staleness),
        ));
        Ok(Self {
            cluster: matches!(conn, Conn::Cluster(_)),
            conn,
            durable,
            keys,
            cache,
            guard,
            timeout: settings.timeout,
            min_replicas_acks: settings.min_replicas_acks,
            replica_ack_timeout: settings.replica_ack_timeout,
            subscriber,
            heartbeat,
            create_session: Script::new(CREATE_SESSION),
            revoke_session: Script::new(REVOKE_SESSION),
            revoke_user: Script::new(REVOKE_USER),
            deny_jti: Script::new(DENY_JTI),
            rotate: Script::new(ROTATE),
            throttle_hit: Script::new(&format!("{THROTTLE_READ}{THROTTLE_HIT}")),
            throttle_peek: Script::new(&format!("{THROTTLE_READ}{THROTTLE_PEEK}")),
            clock,
        })
    }

    /// The local cache (for tests and metrics).
    pub fn cache(&self) -> &LocalCache {
        &self.cache
    }

    /// Records detected store resets to `audit` from now on (set once; later calls are
    /// ignored).
    pub fn audit_to(&self, audit: crate::audit::Audit) {
        let _ = self.guard.audit.set(audit);
    }

    /// The epoch this instance knows, if any.
    pub fn epoch(&self) -> Option<Epoch> {
        self.guard.epoch.current()
    }

    /// One heartbeat on the data connection, under the store timeout: reads the epoch (creating
    /// it when missing) and refreshes the health flag (a readiness probe after an outage).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.guard.beat().await
    }

    /// Whether this instance is subscribed to invalidations.
    pub fn is_subscribed(&self) -> bool {
        self.cache.is_subscribed()
    }

    /// Whether the store answers, its epoch is known and not halted, and invalidations are
    /// being received within the staleness bound.
    pub fn is_healthy(&self) -> bool {
        self.guard.last_ok.load(Ordering::Relaxed)
            && self.cache.fresh()
            && self.guard.epoch.has_seen()
            && !self.guard.epoch.is_halted()
    }

    /// Whether store checks are halted after a detected data loss (`on_data_loss: unavailable`).
    pub fn is_halted(&self) -> bool {
        self.guard.epoch.is_halted()
    }

    /// Ends a halt after a detected data loss, on every instance (`POST /admin/store/resume`).
    /// Returns whether the epoch was halted.
    pub async fn resume(&self) -> Result<bool, StoreError> {
        self.guard.beat().await?;
        let Some(current) = self.guard.epoch.current() else {
            return Err(unavailable(BadEpoch));
        };
        let was_halted = current.halted || self.guard.epoch.is_halted();
        let resumed = Epoch {
            halted: false,
            ..current
        };
        let mut conn = self.conn.clone();
        let changed: i64 = self
            .run(
                self.guard
                    .set_epoch_state
                    .key(self.keys.epoch())
                    .arg(&resumed.id)
                    .arg(resumed.encode())
                    .arg(self.keys.channel())
                    .invoke_async(&mut conn),
            )
            .await?;
        if changed == 0 {
            // The epoch changed under us: another reset. Nothing is resumed.
            return Err(unavailable(BadEpoch));
        }
        // Seen through our own eyes at once: the store now says "ok" after "halted".
        self.guard.take_in(
            &Epoch {
                halted: true,
                ..resumed.clone()
            }
            .encode(),
        );
        self.guard.take_in(&resumed.encode());
        Ok(was_halted)
    }

    /// Runs one store operation under the timeout, recording health.
    async fn run<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.guard.run(self.timeout, op).await
    }

    /// Runs a revoking write. With `min_replicas_acks` it runs on the durable lane and is
    /// followed there by `WAIT`: fewer acknowledgements than asked is an error, so a caller
    /// never reports a revocation as done that a failover could undo.
    async fn revoking<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let Some(durable) = &self.durable else {
            let mut conn = self.conn.clone();
            return self.run(invocation.invoke_async(&mut conn)).await;
        };
        let mut conn = durable.clone();
        let wanted = self.min_replicas_acks;
        let wait_ms = u64::try_from(self.replica_ack_timeout.as_millis()).unwrap_or(u64::MAX);
        let (value, acked) = self
            .guard
            .run(self.timeout + self.replica_ack_timeout, async {
                let value: T = invocation.invoke_async(&mut conn).await?;
                let acked: i64 = redis::cmd("WAIT")
                    .arg(wanted)
                    .arg(wait_ms.max(1))
                    .query_async(&mut conn)
                    .await?;
                Ok((value, acked))
            })
            .await?;
        if acked < i64::from(wanted) {
            crate::metrics::global()
                .store_unreplicated_writes
                .fetch_add(1, Ordering::Relaxed);
            return Err(unavailable(NotReplicated { acked, wanted }));
        }
        Ok(value)
    }

    /// Reads the three facts a verdict needs and the epoch, read after them (so that a reset
    /// that happened before the facts were read cannot go unseen), and decides as of `now`.
    /// Single server and Sentinel: one pipeline, in that order. Cluster: the keys live in
    /// different slots, so the commands are issued concurrently, one round trip in all (per-node
    /// data loss in a Cluster is detected only for the node that holds the epoch: see the
    /// README).
    async fn read_verdict(&self, token: &TokenRef<'_>, now: i64) -> Result<Read, StoreError> {
        let jti_key = self.keys.jti(token.jti_key);
        let rb_key = self.keys.revoked_before(token.subject);
        let check_session = token.require_session;
        let session_key = check_session.then(|| {
            let sid = token.session.filter(|s| plausible_sid(s)).unwrap_or("-");
            self.keys.session(token.subject, sid)
        });
        let epoch_key = self.keys.epoch();
        let facts = if self.cluster {
            self.read_facts_apart(jti_key, rb_key, session_key, epoch_key)
                .await
        } else {
            let mut pipe = redis::pipe();
            pipe.get(jti_key).get(rb_key);
            if let Some(key) = &session_key {
                pipe.cmd("HMGET").arg(key).arg("abs").arg("idle");
            }
            pipe.get(epoch_key);
            let mut conn = self.conn.clone();
            self.run(async move {
                if check_session {
                    pipe.query_async::<Facts>(&mut conn).await
                } else {
                    pipe.query_async::<(Option<i64>, Option<String>, Option<String>)>(&mut conn)
                        .await
                        .map(|(denied, rb, epoch)| (denied, rb, (None, None), epoch))
                }
            })
            .await
        };
        let (denied_until, mark, (abs, idle), epoch) = facts?;
        self.guard.check_epoch(epoch.as_deref()).await?;
        // An unreadable mark refuses every token of the user: it can only be damage, and a
        // revocation must not be lost to it.
        let mark = mark.map(|m| {
            parse_mark(&m).unwrap_or(Mark {
                before: i64::MAX,
                keep_until: i64::MAX,
            })
        });
        let denied_until = denied_until.filter(|until| denial_refuses(*until, now));
        let mark = mark.filter(|m| m.refuses(token.issued_at, now));
        let mut alive_until = token.expires_at;
        let verdict = if denied_until.is_some() {
            Verdict::JtiDenied
        } else if mark.is_some() {
            Verdict::UserRevoked
        } else if check_session {
            match (abs, idle) {
                (Some(abs), Some(idle)) if now < abs && now < idle => {
                    alive_until = alive_until.min(abs).min(idle);
                    Verdict::Alive
                }
                // Unknown, expired, or (the key is under `sub`) another user's session.
                _ => Verdict::SessionUnknown,
            }
        } else if self.guard.epoch.refuses(token.issued_at) {
            // No session vouches for it, and it predates the store's epoch: a revocation of
            // it may have been lost with the store's data.
            Verdict::IssuedBeforeStoreReset
        } else {
            Verdict::Alive
        };
        Ok(Read {
            verdict,
            denied_until: denied_until.map(|until| {
                if until == LEGACY_DENIAL {
                    token.expires_at
                } else {
                    until
                }
            }),
            mark,
            alive_until,
        })
    }

    /// [`Self::read_verdict`]'s reads for a Cluster, where every key may live on another node.
    async fn read_facts_apart(
        &self,
        jti_key: String,
        rb_key: String,
        session_key: Option<String>,
        epoch_key: String,
    ) -> Result<Facts, StoreError> {
        let (mut jti_conn, mut user_conn, mut epoch_conn) =
            (self.conn.clone(), self.conn.clone(), self.conn.clone());
        let denied = async move {
            redis::cmd("GET")
                .arg(jti_key)
                .query_async::<Option<i64>>(&mut jti_conn)
                .await
        };
        let user = async move {
            let mut pipe = redis::pipe();
            pipe.get(rb_key);
            match session_key {
                Some(key) => {
                    pipe.cmd("HMGET").arg(key).arg("abs").arg("idle");
                    pipe.query_async::<(Option<String>, (Option<i64>, Option<i64>))>(&mut user_conn)
                        .await
                }
                None => pipe
                    .query_async::<(Option<String>,)>(&mut user_conn)
                    .await
                    .map(|(rb,)| (rb, (None, None))),
            }
        };
        // Concurrently with the facts: on other nodes, an order would not order anything.
        let epoch = async move {
            redis::cmd("GET")
                .arg(epoch_key)
                .query_async::<Option<String>>(&mut epoch_conn)
                .await
        };
        let (denied, (rb, session), epoch) = self
            .run(async { tokio::try_join!(denied, user, epoch) })
            .await?;
        Ok((denied, rb, session, epoch))
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
        if self.cache.alive(token.token_key, now).is_some() {
            metrics.store_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Verdict::Alive);
        }
        if let Some(known) = self.cache.known_revoked(
            token.jti_key,
            token.session,
            token.subject,
            token.issued_at,
            now,
        ) {
            metrics.store_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(match known {
                Known::JtiDenied => Verdict::JtiDenied,
                Known::SessionRevoked => Verdict::SessionUnknown,
                Known::UserRevoked => Verdict::UserRevoked,
            });
        }
        metrics.store_cache_misses.fetch_add(1, Ordering::Relaxed);
        let sequence = self.cache.sequence();
        let read = self.read_verdict(token, now).await?;
        match read.verdict {
            Verdict::Alive => self.cache.remember_alive(
                *token.token_key,
                Alive {
                    jti_key: *token.jti_key,
                    session: token.session.map(Into::into),
                    subject: token.subject.into(),
                    expires_at: read.alive_until,
                },
                sequence,
            ),
            Verdict::JtiDenied => {
                if let Some(until) = read.denied_until {
                    self.cache.remember_denied(token.jti_key, until);
                }
            }
            Verdict::UserRevoked => {
                if let Some(mark) = read.mark {
                    self.cache.remember_mark(token.subject, mark);
                }
            }
            // A session that is merely absent might be one whose creation has not reached this
            // replica yet; only revocation events (which name it) make it a negative fact. The
            // epoch's cutoff is already held in memory.
            Verdict::SessionUnknown
            | Verdict::SessionMismatch
            | Verdict::IssuedBeforeStoreReset => {}
        }
        Ok(read.verdict)
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
            .arg(if record.remember_me { "1" } else { "0" });
        let now = self.clock.now();
        let refresh_expiry = refresh.map(|r| r.expires_at.min(record.absolute_expiry));
        invocation
            .arg(refresh_expiry.map(|e| e.to_string()).unwrap_or_default())
            .arg(gc_ttl(record.absolute_expiry, now))
            .arg(refresh_expiry.map_or(0, |e| gc_ttl(e, now)));
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
        let mut invocation = self.revoke_session.prepare_invoke();
        invocation
            .key(self.keys.session(subject, id))
            .key(self.keys.sessions(subject))
            .arg(id)
            .arg(self.keys.channel())
            .arg(event.encode());
        let existed: i64 = self.revoking(&invocation).await?;
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
        let mut invocation = self.revoke_user.prepare_invoke();
        invocation
            .key(self.keys.sessions(subject))
            .key(self.keys.revoked_before(subject))
            .arg(self.keys.session_prefix(subject))
            .arg(before)
            .arg(keep_until)
            .arg(self.keys.channel())
            .arg(event.encode())
            .arg(gc_ttl(keep_until, self.clock.now()));
        self.revoking::<i64>(&invocation).await?;
        self.apply_locally(event);
        Ok(())
    }

    async fn deny_jti(
        &self,
        issuer: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let key = jti_key(issuer, jti);
        let event = Invalidation::Jti { key, until };
        let mut invocation = self.deny_jti.prepare_invoke();
        invocation
            .key(self.keys.jti(&key))
            .arg(until)
            .arg(now)
            .arg(self.keys.channel())
            .arg(event.encode())
            .arg(gc_ttl(until, self.clock.now()));
        self.revoking::<i64>(&invocation).await?;
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
                    .arg(GC_MARGIN)
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
        let (count, resets_at): (i64, i64) = self
            .run(
                self.throttle_hit
                    .key(self.keys.throttle(key))
                    .arg(window.max(1))
                    .arg(now)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(attempts(count, resets_at, now))
    }

    async fn throttle_peek(&self, key: &str, now: i64) -> Result<Attempts, StoreError> {
        let mut conn = self.conn.clone();
        let (count, resets_at): (i64, i64) = self
            .run(
                self.throttle_peek
                    .key(self.keys.throttle(key))
                    .arg(now)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(attempts(count, resets_at, now))
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
///
/// A Cluster gets one subscription per seed node. `PUBLISH` reaches every node over the
/// cluster bus, so any one subscription hears every event — but through the bus, which cost a
/// p99 of ~58 ms under load; a subscription on the node that ran the revoking script hears it
/// at once. The cache counts as subscribed while at least one subscription is confirmed, and
/// each event is applied once however many nodes deliver it.
async fn subscribe(source: PubSubSource, channel: String, guard: Arc<Guard>) {
    match source {
        PubSubSource::Clients(clients) if clients.len() > 1 => {
            let each = clients
                .into_iter()
                .map(|c| subscription(PubSubSource::Clients(vec![c]), &channel, &guard));
            futures_util::future::join_all(each).await;
        }
        source => subscription(source, &channel, &guard).await,
    }
}

/// One subscription, kept up forever.
async fn subscription(source: PubSubSource, channel: &str, guard: &Guard) {
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(25);
    loop {
        let mut confirmed = false;
        match listen(&source, attempt, channel, guard, &mut confirmed).await {
            Ok(()) => backoff = Duration::from_millis(25),
            Err(e) => {
                tracing::warn!(error = %e, "invalidation subscription failed; reading through to redis")
            }
        }
        if confirmed {
            guard.subscription_lost();
        }
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
    guard: &Guard,
    confirmed: &mut bool,
) -> redis::RedisResult<()> {
    let cache = &guard.cache;
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
    *confirmed = true;
    guard.subscription_confirmed();
    tracing::info!(channel, "subscribed to invalidations");
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                // Anything received proves the channel delivers: the staleness clock restarts.
                cache.heard();
                let payload: String = match message.get_payload() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable invalidation");
                        continue;
                    }
                };
                // A heartbeat carries the epoch its sender read: a reset seen by any instance
                // is seen by all within one heartbeat.
                if let Some(epoch) = payload.strip_prefix("h ") {
                    guard.take_in(epoch);
                    continue;
                }
                match Invalidation::decode(&payload) {
                    Some(event) => {
                        if guard.first_delivery(&payload) {
                            cache.apply(&event);
                        }
                    }
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

/// Heartbeats come five times per `max_staleness`, so that four can be late before cached
/// verdicts stop being served (and never more often than every 10 ms).
fn heartbeat_interval(max_staleness: Duration) -> Duration {
    (max_staleness / 5).max(Duration::from_millis(10))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_reply_counts_nothing_once_now_reaches_the_windows_end() {
        assert_eq!(
            attempts(3, 160, 100),
            Attempts {
                count: 3,
                resets_at: 160
            }
        );
        assert_eq!(attempts(3, 160, 160), Attempts::NONE);
        assert_eq!(attempts(0, 0, 100), Attempts::NONE);
    }

    #[test]
    fn a_denial_refuses_before_its_instant_and_a_legacy_one_while_its_key_lives() {
        assert!(denial_refuses(1_700_000_100, 1_700_000_099));
        assert!(!denial_refuses(1_700_000_100, 1_700_000_100));
        assert!(denial_refuses(LEGACY_DENIAL, 1_700_000_100));
    }

    #[test]
    fn a_mark_is_read_with_its_keep_until_or_kept_when_written_without_one() {
        assert_eq!(
            parse_mark("100 1000"),
            Some(Mark {
                before: 100,
                keep_until: 1000
            })
        );
        assert_eq!(
            parse_mark("100"),
            Some(Mark {
                before: 100,
                keep_until: i64::MAX
            })
        );
        assert_eq!(parse_mark("100 x"), None);
        assert_eq!(parse_mark("100 1000 7"), None);
    }

    #[test]
    fn a_keys_ttl_runs_the_margin_past_its_instant_and_never_below_it() {
        assert_eq!(gc_ttl(1_000, 900), 100 + GC_MARGIN);
        assert_eq!(gc_ttl(900, 1_000), GC_MARGIN);
    }
}
