//! The shared store: Redis (standalone, `rediss://`, Sentinel or Cluster) behind a local cache.
//!
//! Data model, every key under the configured prefix `P` (hash tags in braces keep all of one
//! user's keys in one Cluster slot, so every write below is a single atomic Lua script):
//!
//! | key | type | holds | expires |
//! |---|---|---|---|
//! | `P:{u:<sub>}:sessions` | set | the user's session ids | after the latest absolute expiry |
//! | `P:{u:<sub>}:s:<sid>` | hash | `sub created last_seen ip ua abs idle remember`, and `idp` (the provider link as JSON, its refresh token sealed) for a provider login | after `abs` |
//! | `P:{u:<sub>}:rt:<sha256>` | hash | a refresh token's session, `state` (`current`/`used`), `used_at`, `exp` | after `exp` |
//! | `P:{u:<sub>}:rb` | string | `<before> <keep_until>`: tokens issued at or before `before` are revoked until `keep_until` | after `keep_until` |
//! | `P:{j:<sha256(iss, jti)>}` | string | a denylisted access token, until the instant it holds (its `exp`) | after that instant |
//! | `P:{t:<sha256(key)>}` | string | `<count> <resets_at>`: failed logins counted under a throttle key | at `resets_at` |
//! | `P:{ls:<sha256(state)>}` | string | `<expires_at> <flow>`: an OpenID sign-in in progress, taken once | after `expires_at` |
//! | `P:{once:<sha256>}` | string | `<expires_at>`: a first use (a logout token's `jti`; a session's refresh against its provider), recorded until that instant | after `expires_at` |
//! | `P:{ps:<sha256(iss, sid)>}` | string | `<expires_at> <user>`: the user signed in through a provider session | after `expires_at` |
//! | `P:{epoch}` | string | the store's [`Epoch`] (data-loss detection) | never |
//!
//! Time: every answer compares the caller's `now` with the instants in these values (the scripts
//! take `now` as an argument); no answer depends on Redis's clock. Key expiry is garbage
//! collection, set as a remaining lifetime by the gateway's [`Clock`]: a margin (five minutes) after the
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
//!   connection, tagged with this instance's id and the instant it was sent. A cached "alive"
//!   verdict is served only while the instance's own heartbeat, sent within `max_staleness`,
//!   has come back on its subscription ([`LocalCache::fresh`]): so a revocation acknowledged
//!   at instant R is applied on every instance, or refused there by a read-through (503 when
//!   the store cannot answer) from R + `max_staleness` on, whether the partition cuts the
//!   subscription, the data connection or both, and however late the last message before it
//!   arrived.
//! - **Data loss.** The epoch changes or disappears; see [`super::epoch`]. It is read on every
//!   heartbeat, in every other instance's heartbeat, and with every read-through.
//! - **Failover.** With `min_replicas_acks > 0`, every revoking write is followed by `WAIT` on
//!   its own connection (a `WAIT` blocks the connection it runs on, so it never shares the
//!   request path's connection); too few acknowledgements within `replica_ack_timeout` is an
//!   error the caller reports (503), not a success.
//!
//! Where things are:
//! - `mod.rs`: [`RedisStore`], its construction and its [`SessionStore`] implementation;
//! - `settings.rs`: [`RedisSettings`] and [`Topology`], as the config compiles them;
//! - `keys.rs`: the key names of the table above and the formats of their values;
//! - `scripts.rs`: the Lua scripts, each with the invocation that passes its keys and arguments;
//! - `read.rs`: the read-through of one token's facts and the verdict made from them at `now`;
//! - `connection.rs`: connecting by topology, the Sentinel master lookup, and what a Redis
//!   error means for the connection (decided by the error's kind, never by its text);
//! - `subscriber.rs`: the invalidation subscription, the heartbeat, and the guard they share
//!   with the request path (health, epoch, data-loss handling).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::metrics::StoreCounters;

use super::cache::{Alive, Invalidation, Known, LocalCache};
use super::epoch::{Epoch, EpochWatch};
use super::{
    Attempts, RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore, StoreError,
    TokenRef, Verdict, jti_key,
};

mod connection;
mod keys;
mod read;
mod scripts;
mod settings;
mod subscriber;

use connection::{Conn, open};
use keys::{Keys, gc_ttl, parse_session, plausible_sid};
use scripts::{Scripts, attempts};
pub use settings::{DEFAULT_MAX_STALENESS, RedisSettings, Topology};
use subscriber::{Guard, beat_id, heartbeat, heartbeat_interval, subscribe, watch_sentinels};

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
    /// Shared with the guard, which runs the heartbeat and epoch scripts.
    scripts: Arc<Scripts>,
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

impl RedisStore {
    /// Connects (lazily for a single server, so the gateway starts and answers 503 while
    /// Redis is down) and starts the invalidation subscriber and the heartbeat. `clock` is the
    /// gateway's: it stamps the epochs this instance creates and times key expiry (answers use
    /// the caller's `now`). Must run inside Tokio.
    pub async fn connect(settings: &RedisSettings, clock: Clock) -> Result<Self, StoreError> {
        let keys = Keys {
            prefix: settings.key_prefix.clone(),
        };
        let (conn, durable, source) = open(settings).await?;
        let scripts = Arc::new(Scripts::new(keys.clone()));
        let cache = Arc::new(LocalCache::new(
            settings.cache_capacity,
            settings.cache_ttl,
            settings.max_staleness,
            clock.clone(),
        ));
        let guard = Arc::new(Guard {
            conn: conn.clone(),
            cache: Arc::clone(&cache),
            epoch: EpochWatch::new(),
            on_data_loss: settings.on_data_loss,
            first_start: settings.first_start,
            timeout: settings.timeout,
            last_ok: AtomicBool::new(true),
            audit: std::sync::OnceLock::new(),
            clock: clock.clone(),
            scripts: Arc::clone(&scripts),
            counters: StoreCounters::default(),
            subscriptions: std::sync::Mutex::new(0),
            delivered: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            delivered_hasher: std::hash::RandomState::new(),
            beat_id: beat_id(),
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
            scripts,
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

    /// What this store counted: local-cache hits and misses, errors, resets, unreplicated
    /// writes.
    pub fn counters(&self) -> &StoreCounters {
        &self.guard.counters
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
        let invocation = self.scripts.set_epoch_state(&resumed.id, &resumed.encode());
        let changed: i64 = self.run(invocation.invoke_async(&mut conn)).await?;
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
            self.guard
                .counters
                .unreplicated_writes
                .fetch_add(1, Ordering::Relaxed);
            return Err(unavailable(NotReplicated { acked, wanted }));
        }
        Ok(value)
    }

    fn apply_locally(&self, event: Invalidation) {
        // The subscriber will deliver the same event; applying it here too means this
        // instance never serves a stale verdict even for the moment before it arrives.
        self.cache.apply(&event);
    }
}

/// The value of a `"<until> <value>"` record (a login state, a provider-session index) while
/// `now` is before `until`, on the gateway's clock: the key's TTL only frees memory.
fn unexpired(record: &str, now: i64) -> Option<String> {
    let (until, value) = record.split_once(' ')?;
    (until.parse::<i64>().ok()? > now).then(|| value.to_owned())
}

impl SessionStore for RedisStore {
    async fn check(&self, token: &TokenRef<'_>, now: i64) -> Result<Verdict, StoreError> {
        let counters = &self.guard.counters;
        if self.cache.alive(token.token_key, now).is_some() {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Verdict::Alive);
        }
        if let Some(known) = self.cache.known_revoked(
            token.jti_key,
            token.session,
            token.user,
            token.issued_at,
            now,
        ) {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(match known {
                Known::JtiDenied => Verdict::JtiDenied,
                Known::SessionRevoked => Verdict::SessionUnknown,
                Known::UserRevoked => Verdict::UserRevoked,
            });
        }
        counters.cache_misses.fetch_add(1, Ordering::Relaxed);
        let sequence = self.cache.sequence();
        let read = self.read_verdict(token, now).await?;
        match read.verdict {
            Verdict::Alive => self.cache.remember_alive(
                *token.token_key,
                Alive {
                    jti_key: *token.jti_key,
                    session: token.session.map(Into::into),
                    subject: token.subject.into(),
                    user: token.user.into(),
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
                    self.cache.remember_mark(token.user, mark);
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
        let invocation = self
            .scripts
            .create_session(&record, refresh, self.clock.now());
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
                        "idp",
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
        let invocation = self.scripts.revoke_session(subject, id, &event);
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
        let invocation =
            self.scripts
                .revoke_user(subject, before, keep_until, &event, self.clock.now());
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
        let invocation = self
            .scripts
            .deny_jti(&key, until, now, &event, self.clock.now());
        self.revoking::<i64>(&invocation).await?;
        self.apply_locally(event);
        Ok(())
    }

    async fn rotate_refresh(&self, rotation: &Rotation<'_>) -> Result<RotateOutcome, StoreError> {
        if !plausible_sid(rotation.session) {
            return Ok(RotateOutcome::Invalid);
        }
        let sid = rotation.session;
        let event = Invalidation::Session(sid.to_owned());
        let mut conn = self.conn.clone();
        let invocation = self.scripts.rotate(rotation, &event);
        let reply: Vec<String> = self.run(invocation.invoke_async(&mut conn)).await?;
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
        let invocation = self.scripts.throttle_hit(key, window, now);
        let (count, resets_at): (i64, i64) = self.run(invocation.invoke_async(&mut conn)).await?;
        Ok(attempts(count, resets_at, now))
    }

    async fn throttle_peek(&self, key: &str, now: i64) -> Result<Attempts, StoreError> {
        let mut conn = self.conn.clone();
        let invocation = self.scripts.throttle_peek(key, now);
        let (count, resets_at): (i64, i64) = self.run(invocation.invoke_async(&mut conn)).await?;
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

    async fn put_login_state(
        &self,
        key: &[u8; 32],
        value: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        // The expiry travels with the value (`<expires_at> <value>`): the answer depends on
        // the gateway's clock, the key's TTL only frees it.
        let mut conn = self.conn.clone();
        self.run(
            redis::cmd("SET")
                .arg(self.keys.login_state(key))
                .arg(format!("{expires_at} {value}"))
                .arg("EX")
                .arg(gc_ttl(expires_at, now))
                .query_async::<()>(&mut conn),
        )
        .await
    }

    async fn take_login_state(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        // GETDEL is atomic: of two takes of one state, one gets it (single use).
        let mut conn = self.conn.clone();
        let found: Option<String> = self
            .run(
                redis::cmd("GETDEL")
                    .arg(self.keys.login_state(key))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(found.and_then(|v| unexpired(&v, now)))
    }

    async fn first_use(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        // One script: the key is free when missing or when the instant it holds has passed
        // on the gateway's clock (its TTL, with the margin, only frees memory), so that the
        // answer depends on the caller's `now` as in the memory store.
        const FIRST_USE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) and tonumber(v) > tonumber(ARGV[2]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
return 1
";
        let mut conn = self.conn.clone();
        let set: i64 = self
            .run(
                redis::Script::new(FIRST_USE)
                    .key(self.keys.once(key))
                    .arg(expires_at)
                    .arg(now)
                    .arg(gc_ttl(expires_at, now))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(set == 1)
    }

    async fn put_provider_sid(
        &self,
        key: &[u8; 32],
        subject: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        // `<expires_at> <subject>`: the answer depends on the gateway's clock, the key's TTL
        // only frees it. The later of two instants is kept (one script).
        const PUT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local old = tonumber(string.match(v, '^(%-?%d+) '))
  if old and old > tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'EX', ARGV[3])
return 1
";
        let mut conn = self.conn.clone();
        self.run(
            redis::Script::new(PUT)
                .key(self.keys.provider_sid(key))
                .arg(expires_at)
                .arg(subject)
                .arg(gc_ttl(expires_at, now))
                .invoke_async::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    async fn provider_sid_user(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        let found: Option<String> = self
            .run(
                redis::cmd("GET")
                    .arg(self.keys.provider_sid(key))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(found.and_then(|v| unexpired(&v, now)))
    }

    async fn set_provider_link(
        &self,
        subject: &str,
        id: &str,
        link: &crate::store::ProviderLink,
    ) -> Result<bool, StoreError> {
        // Only an existing session's field: a session revoked meanwhile is not brought back.
        const SET_LINK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'idp', ARGV[1])
  return 1
end
return 0
";
        if !plausible_sid(id) {
            return Ok(false);
        }
        let json = serde_json::to_string(link).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let set: i64 = self
            .run(
                redis::Script::new(SET_LINK)
                    .key(self.keys.session(subject, id))
                    .arg(json)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(set == 1)
    }
}
