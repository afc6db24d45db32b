//! The embedded store: everything in one process, lost on restart. The default, for a single
//! instance and for trying Portcullis out. It follows exactly the contract the Redis store
//! follows (one behavioural suite runs against both).
//!
//! # Locking
//!
//! The session state is split into `SHARDS` (256) shards, each behind its own `RwLock`:
//!
//! - **Everything about one subject** (its sessions, the index of its session ids, their refresh
//!   tokens, its revoke-before mark) lives in the shard picked by a keyed hash of the subject.
//!   Every method that touches this state names the subject (`check` has `sub`, a session record
//!   has its subject, a rotation names its user), so each write is one critical section on one
//!   shard: concurrent rotations of one token still see each other in order (exactly one
//!   rotates), and `revoke_user` removes every session and sets the mark at once. A session id
//!   presented with another subject is looked up in that subject's shard and found unknown, as
//!   in the Redis store, where sessions are keyed under their subject.
//! - **A denylisted `jti`** lives in the shard picked by its key (a SHA-256 digest, so its first
//!   bytes already spread keys evenly). `check` reads the `jti`'s shard, lets it go, then reads
//!   the subject's shard. The two facts are independent, and every revocation is complete under
//!   its lock before it returns, so a check that starts after a revocation returned sees it.
//! - **No call holds two shard locks**, so there is no lock order to keep; no lock is held across
//!   an `.await` (every method is synchronous inside).
//!
//! Why shards: a write-locked call holds up every check that needs the same lock. With one lock
//! for all the state, a sweep (a scan of every entry) held it for 13 ms at 1,000,000 sessions,
//! and a map's growth (a rehash of every entry into a table twice the size) for up to 1 s at
//! 917,504 sessions, and every request waited. A shard holds a `1/SHARDS` share of the entries,
//! so its sweep and its growth cost that share, hold up only the checks that fall in that shard,
//! and the shards grow on different calls (docs/PERFORMANCE.md, "Memory store at a million
//! sessions", has the figures). Sweeps are counted per shard, so a sweep scans one shard.
//!
//! The login-throttling counters have their own `Mutex` (see [`MemoryStore`]).
//!
//! # Time
//!
//! Every answer compares the caller's `now` with the instants an entry holds. Sweeps, which
//! run on the store's own initiative after writes, read the gateway's [`Clock`] given to
//! [`MemoryStore::new`]; a sweep only removes what no `now` from that clock could still find
//! alive.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::clock::Clock;

use super::{
    Attempts, RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore, StoreError,
    TokenRef, Verdict, jti_key, throttle_digest,
};

/// How many shards the session state is split into. At 1,000,000 sessions a shard holds about
/// 3,900, so its sweep and its growth cost a 256th of the whole store's. Chosen by measurement
/// (docs/PERFORMANCE.md compares 1, 16, 64, 128 and 256 side by side: the worst single call
/// while filling to a million was 1.2 s, 95 ms, 25 ms, 12.9 ms and 5.9 ms, on a quiet machine
/// in release); each shard costs a lock and a few empty maps, and no call touches more than two.
const SHARDS: usize = 256;

/// The fewest writes to a shard between its sweeps of expired entries. Sweeps keep every map
/// bounded by what is live; the interval keeps their cost off individual requests.
const SWEEP_EVERY: u64 = 64;

/// A sweep scans every entry of its shard, so a shard's sweeps are spaced by a share of the
/// entries it holds: each write pays a constant amortized share, and a shard's dead entries never
/// exceed an eighth of its live ones plus [`SWEEP_EVERY`] (in the whole store: an eighth plus
/// `SHARDS * SWEEP_EVERY`).
const SWEEP_SHARE: u64 = 8;

#[derive(Debug, Clone)]
struct RefreshState {
    session: String,
    used_at: Option<i64>,
    expires_at: i64,
}

/// One shard's share of the state (see the module docs for what lands in which shard).
#[derive(Debug, Default)]
struct Shard {
    sessions: HashMap<String, SessionRecord>,
    by_user: HashMap<String, HashSet<String>>,
    /// SHA-256(refresh token) → its state.
    refresh: HashMap<[u8; 32], RefreshState>,
    /// jti key → denied until.
    denied: HashMap<[u8; 32], i64>,
    /// subject → (tokens issued at or before this instant are refused, mark kept until).
    revoked_before: HashMap<String, (i64, i64)>,
    /// Writes to this shard since its last sweep.
    writes: u64,
}

impl Shard {
    fn remove_session(&mut self, id: &str) -> Option<SessionRecord> {
        let record = self.sessions.remove(id)?;
        if let Some(ids) = self.by_user.get_mut(&record.subject) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_user.remove(&record.subject);
            }
        }
        Some(record)
    }

    fn after_write(&mut self, now: i64) {
        self.writes += 1;
        let held = self.sessions.len() + self.refresh.len() + self.denied.len();
        if self.writes < SWEEP_EVERY.max(held as u64 / SWEEP_SHARE) {
            return;
        }
        self.writes = 0;
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| !alive(s, now))
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.remove_session(&id);
        }
        self.refresh.retain(|_, r| r.expires_at > now);
        self.denied.retain(|_, until| *until > now);
        self.revoked_before.retain(|_, (_, keep)| *keep > now);
    }
}

/// Most throttle windows kept at once. An entry is a 32-byte digest and 16 bytes of window
/// (about 64 bytes with the map's overhead), so a full map holds about 4 MiB.
const THROTTLE_CAPACITY: usize = 65_536;

/// What a full throttle map is cut down to. Cutting an eighth at a time means the O(n) cut runs
/// at most once per `THROTTLE_CAPACITY / 8` new keys, not on every insertion at the cap.
const THROTTLE_KEEP: usize = THROTTLE_CAPACITY - THROTTLE_CAPACITY / 8;

/// One key's fixed window.
#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    resets_at: i64,
}

impl From<Window> for Attempts {
    fn from(w: Window) -> Self {
        Attempts {
            count: w.count,
            resets_at: w.resets_at,
        }
    }
}

/// The login-throttling counters, keyed by [`throttle_digest`] (fixed-size entries whatever a
/// client sends as a username).
///
/// Bounded: a flood of distinct keys (spoofed usernames, many source addresses) must not grow
/// the process without limit. When a new key would pass [`THROTTLE_CAPACITY`], expired windows
/// are dropped first; if that is not enough, the map is cut to [`THROTTLE_KEEP`] by dropping
/// the windows with the fewest failures, and among equal counts the ones that end soonest (the
/// oldest, windows being of one length). Dropping a window forgets failures — an attacker who
/// floods can reset counters — so the order protects what matters most: a flood of fresh keys
/// (one failure each) evicts itself before it evicts a counter that has been climbing, and the
/// per-IP counter stops a flood from any one address long before it reaches the cap.
#[derive(Debug, Default)]
struct Throttle {
    windows: HashMap<[u8; 32], Window>,
}

impl Throttle {
    fn hit(&mut self, key: [u8; 32], window: i64, now: i64) -> Attempts {
        let fresh = Window {
            count: 1,
            resets_at: now.saturating_add(window.max(1)),
        };
        if let Some(w) = self.windows.get_mut(&key) {
            if now < w.resets_at {
                w.count = w.count.saturating_add(1);
            } else {
                // The window ended: a failure now starts the next one.
                *w = fresh;
            }
            return (*w).into();
        }
        if self.windows.len() >= THROTTLE_CAPACITY {
            self.make_room(now);
        }
        self.windows.insert(key, fresh);
        fresh.into()
    }

    fn peek(&self, key: &[u8; 32], now: i64) -> Attempts {
        match self.windows.get(key) {
            Some(w) if now < w.resets_at => (*w).into(),
            _ => Attempts::NONE,
        }
    }

    /// Brings the map down to at most [`THROTTLE_KEEP`] windows (see [`Throttle`]).
    fn make_room(&mut self, now: i64) {
        self.windows.retain(|_, w| now < w.resets_at);
        let excess = self.windows.len().saturating_sub(THROTTLE_KEEP);
        if excess == 0 {
            return;
        }
        let mut order: Vec<(u32, i64, [u8; 32])> = self
            .windows
            .iter()
            .map(|(key, w)| (w.count, w.resets_at, *key))
            .collect();
        // The `excess` least valuable windows end up (in no order) before index `excess`.
        order.select_nth_unstable(excess - 1);
        for (_, _, key) in &order[..excess] {
            self.windows.remove(key);
        }
    }
}

fn alive(s: &SessionRecord, now: i64) -> bool {
    now < s.absolute_expiry && now < s.idle_expiry
}

/// The in-process [`SessionStore`].
///
/// The session state is sharded (see the module docs): every check is a handful of hash lookups
/// under two short read locks, writes are rare (login, refresh, logout, revoke), each write is
/// one critical section on one shard (so rotation and reuse detection are atomic), and no lock
/// is held across an `.await`.
///
/// The throttle counters have their own `Mutex`: they share no invariant with the session
/// maps, and a burst of failed logins (each one a write) must not queue the hot path's reads
/// behind it. Each counter operation is one short critical section, so a hit is atomic.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[RwLock<Shard>]>,
    /// Picks a subject's shard. Keyed per process, so that nobody can choose subjects that all
    /// land in one shard; independent of the maps' own hashers, so that the keys of one shard
    /// still spread over that shard's tables.
    placement: RandomState,
    throttle: Mutex<Throttle>,
    /// The OpenID login flows' states: key → (value, expires at). One mutex: a flow writes
    /// one and takes one, far off the hot path.
    login_states: Mutex<HashMap<[u8; 32], (String, i64)>>,
    /// Provider sessions (`sid`) → the user signed in through them, until the gateway
    /// session's absolute expiry: one entry per provider sign-in, swept as the map grows.
    provider_sids: Mutex<HashMap<[u8; 32], (String, i64)>>,
    /// First uses ([`SessionStore::first_use`]): key → until.
    once: Mutex<HashMap<[u8; 32], i64>>,
    /// The gateway's clock, for sweeps (answers use the caller's `now`).
    clock: Clock,
}

// A panic while holding a shard's lock cannot leave its maps half-updated in a way that lets a
// token through (revocations are single removals or inserts), so poison is ignored.
fn read(shard: &RwLock<Shard>) -> RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(|e| e.into_inner())
}

fn write(shard: &RwLock<Shard>) -> RwLockWriteGuard<'_, Shard> {
    shard.write().unwrap_or_else(|e| e.into_inner())
}

/// The most sign-ins through an OpenID Provider in progress at once (each lives 10 minutes).
const MAX_LOGIN_STATES: usize = 100_000;

impl MemoryStore {
    /// An empty store that sweeps by `clock` (the gateway's).
    pub fn new(clock: Clock) -> Self {
        Self::with_shards(SHARDS, clock)
    }

    /// An empty store split into `shards` shards (at least one) instead of 256. For
    /// measurement: `benches/revocation.rs` fills stores of several shard counts to show the
    /// choice. The gateway uses [`MemoryStore::new`].
    pub fn with_shards(shards: usize, clock: Clock) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| RwLock::default()).collect(),
            placement: RandomState::new(),
            throttle: Mutex::default(),
            login_states: Mutex::default(),
            provider_sids: Mutex::default(),
            once: Mutex::default(),
            clock,
        }
    }

    /// The instant a sweep removes what has expired by.
    fn now_for_sweep(&self) -> i64 {
        self.clock.now()
    }

    /// The shard of everything about `subject`.
    fn subject_shard(&self, subject: &str) -> &RwLock<Shard> {
        self.shard(self.placement.hash_one(subject))
    }

    /// The shard of a denylisted `jti`.
    fn jti_shard(&self, key: &[u8; 32]) -> &RwLock<Shard> {
        let mut head = [0u8; 8];
        head.copy_from_slice(&key[..8]);
        self.shard(u64::from_le_bytes(head))
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        // Every update of a window is a single assignment, so a panic cannot leave one torn.
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn login_states(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (String, i64)>> {
        // A put or take is one map operation: a panic cannot leave one half done.
        self.login_states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_now(&self, token: &TokenRef<'_>, now: i64) -> Verdict {
        // The jti's shard is let go before the subject's is taken (see the module docs).
        let denied = read(self.jti_shard(token.jti_key))
            .denied
            .get(token.jti_key)
            .is_some_and(|until| *until > now);
        if denied {
            return Verdict::JtiDenied;
        }
        let revoked = |shard: &Shard| {
            shard
                .revoked_before
                .get(token.user)
                .is_some_and(|(before, keep)| *keep > now && token.issued_at <= *before)
        };
        // Another issuer's user is marked under another name, maybe in another shard: read it
        // there first, one shard at a time as above.
        if token.user != token.subject && revoked(&read(self.subject_shard(token.user))) {
            return Verdict::UserRevoked;
        }
        let shard = read(self.subject_shard(token.subject));
        if token.user == token.subject && revoked(&shard) {
            return Verdict::UserRevoked;
        }
        if token.require_session {
            // Another subject's session may live in another shard, so it is unknown here
            // whichever shard it is in, never sometimes a mismatch.
            let live = token
                .session
                .and_then(|sid| shard.sessions.get(sid))
                .is_some_and(|s| s.subject == token.subject && alive(s, now));
            if !live {
                return Verdict::SessionUnknown;
            }
        }
        Verdict::Alive
    }
}

impl SessionStore for MemoryStore {
    async fn check(&self, token: &TokenRef<'_>, now: i64) -> Result<Verdict, StoreError> {
        Ok(self.check_now(token, now))
    }

    async fn create_session(
        &self,
        record: SessionRecord,
        refresh: Option<RefreshGrant>,
    ) -> Result<(), StoreError> {
        let mut shard = write(self.subject_shard(&record.subject));
        if let Some(grant) = refresh {
            shard.refresh.insert(
                grant.hash,
                RefreshState {
                    session: record.id.clone(),
                    used_at: None,
                    expires_at: grant.expires_at.min(record.absolute_expiry),
                },
            );
        }
        shard
            .by_user
            .entry(record.subject.clone())
            .or_default()
            .insert(record.id.clone());
        shard.sessions.insert(record.id.clone(), record);
        shard.after_write(self.now_for_sweep());
        Ok(())
    }

    async fn session(
        &self,
        subject: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        Ok(read(self.subject_shard(subject))
            .sessions
            .get(id)
            .filter(|s| s.subject == subject && alive(s, now))
            .cloned())
    }

    async fn sessions_of(&self, subject: &str, now: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let shard = read(self.subject_shard(subject));
        let mut out: Vec<SessionRecord> = shard
            .by_user
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| shard.sessions.get(id))
            .filter(|s| alive(s, now))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(out)
    }

    async fn revoke_session(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        let mut shard = write(self.subject_shard(subject));
        // Another user's session id names nothing for this subject.
        let owned = shard.sessions.get(id).is_some_and(|s| s.subject == subject);
        let existed = owned && shard.remove_session(id).is_some();
        shard.after_write(self.now_for_sweep());
        Ok(existed)
    }

    async fn revoke_user(
        &self,
        subject: &str,
        before: i64,
        keep_until: i64,
    ) -> Result<(), StoreError> {
        // The user's sessions and mark are in one shard: they go and it is set in one step.
        let mut shard = write(self.subject_shard(subject));
        let ids: Vec<String> = shard
            .by_user
            .get(subject)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            shard.remove_session(&id);
        }
        let entry = shard
            .revoked_before
            .entry(subject.to_owned())
            .or_insert((before, keep_until));
        // A later revocation never moves the mark backwards.
        entry.0 = entry.0.max(before);
        entry.1 = entry.1.max(keep_until);
        shard.after_write(self.now_for_sweep());
        Ok(())
    }

    async fn deny_jti(
        &self,
        issuer: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        // A denial that has already ended denies nothing; none is kept (as in Redis).
        if until <= now {
            return Ok(());
        }
        let key = jti_key(issuer, jti);
        let mut shard = write(self.jti_shard(&key));
        let slot = shard.denied.entry(key).or_insert(until);
        *slot = (*slot).max(until);
        shard.after_write(self.now_for_sweep());
        Ok(())
    }

    async fn rotate_refresh(&self, r: &Rotation<'_>) -> Result<RotateOutcome, StoreError> {
        // One write lock for the whole decision: twenty concurrent rotations of one token see
        // each other's writes in order, so exactly one of them rotates. The token, its session
        // and the session's other tokens are all in the subject's shard; a token presented with
        // another subject is not found there, which is `Invalid` as it always was.
        let mut shard = write(self.subject_shard(r.subject));
        let Some(token) = shard.refresh.get(&r.presented).cloned() else {
            return Ok(RotateOutcome::Invalid);
        };
        if token.session != r.session || token.expires_at <= r.now {
            return Ok(RotateOutcome::Invalid);
        }
        let Some(session) = shard.sessions.get(r.session).cloned() else {
            return Ok(RotateOutcome::Invalid);
        };
        if session.subject != r.subject {
            return Ok(RotateOutcome::Invalid);
        }
        if !alive(&session, r.now) {
            shard.remove_session(r.session);
            return Ok(RotateOutcome::Invalid);
        }
        let outcome = match token.used_at {
            None => {
                if let Some(t) = shard.refresh.get_mut(&r.presented) {
                    t.used_at = Some(r.now);
                }
                shard.refresh.insert(
                    r.successor,
                    RefreshState {
                        session: r.session.to_owned(),
                        used_at: None,
                        expires_at: r.successor_expires_at.min(session.absolute_expiry),
                    },
                );
                let record = shard.sessions.get_mut(r.session).map(|s| {
                    s.last_seen = r.now;
                    s.idle_expiry = (r.now + r.idle).min(s.absolute_expiry);
                    s.clone()
                });
                record.map_or(RotateOutcome::Invalid, RotateOutcome::Rotated)
            }
            Some(used_at) if r.now - used_at <= r.grace => RotateOutcome::Concurrent(session),
            Some(_) => {
                shard.remove_session(r.session);
                RotateOutcome::ReuseDetected {
                    subject: session.subject,
                }
            }
        };
        shard.after_write(self.now_for_sweep());
        Ok(outcome)
    }
    async fn throttle_hit(&self, key: &str, window: i64, now: i64) -> Result<Attempts, StoreError> {
        Ok(self.throttle().hit(throttle_digest(key), window, now))
    }

    async fn throttle_peek(&self, key: &str, now: i64) -> Result<Attempts, StoreError> {
        Ok(self.throttle().peek(&throttle_digest(key), now))
    }

    async fn throttle_clear(&self, key: &str) -> Result<(), StoreError> {
        self.throttle().windows.remove(&throttle_digest(key));
        Ok(())
    }

    async fn put_login_state(
        &self,
        key: &[u8; 32],
        value: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut states = self.login_states();
        // Expired states are swept whenever the map doubles past 1024 entries: amortised O(1)
        // per put, and the map holds about the flows started within one state lifetime.
        if states.len() >= 1024 && states.len().is_power_of_two() {
            states.retain(|_, (_, until)| *until > now);
        }
        // Starting a sign-in needs no credential: a flood of starts must not grow the process
        // without bound. Past the cap (and a sweep), new sign-ins wait (503) until some expire.
        if states.len() >= MAX_LOGIN_STATES {
            states.retain(|_, (_, until)| *until > now);
            if states.len() >= MAX_LOGIN_STATES {
                return Err(StoreError::Unavailable {
                    source: "too many sign-ins in progress".into(),
                });
            }
        }
        states.insert(*key, (value.to_owned(), expires_at));
        Ok(())
    }

    async fn take_login_state(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        // Removed under the lock: two takes of one key cannot both get it.
        Ok(self
            .login_states()
            .remove(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value))
    }

    async fn put_provider_sid(
        &self,
        key: &[u8; 32],
        subject: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut sids = self.provider_sids.lock().unwrap_or_else(|e| e.into_inner());
        // Expired entries are swept whenever the map doubles past 1024 entries.
        if sids.len() >= 1024 && sids.len().is_power_of_two() {
            sids.retain(|_, (_, until)| *until > now);
        }
        let until = match sids.get(key) {
            Some((_, old)) if *old > expires_at => *old,
            _ => expires_at,
        };
        sids.insert(*key, (subject.to_owned(), until));
        Ok(())
    }

    async fn provider_sid_user(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .provider_sids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(subject, _)| subject.clone()))
    }

    async fn set_provider_link(
        &self,
        subject: &str,
        id: &str,
        link: &crate::store::ProviderLink,
    ) -> Result<bool, StoreError> {
        let mut shard = write(self.subject_shard(subject));
        match shard.sessions.get_mut(id).filter(|s| s.subject == subject) {
            Some(record) => {
                record.provider = Some(link.clone());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn first_use(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        // A map of its own (not the login states', whose cap is for sign-ins in progress: a
        // session's provider-refresh claims must not count against it), checked and written
        // under one lock.
        let mut once = self.once.lock().unwrap_or_else(|e| e.into_inner());
        if once.get(key).is_some_and(|until| *until > now) {
            return Ok(false);
        }
        if once.len() >= 1024 && once.len().is_power_of_two() {
            once.retain(|_, until| *until > now);
        }
        once.insert(*key, expires_at);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flood_of_started_sign_ins_is_capped_until_they_expire() {
        let store = MemoryStore::new(Clock::manual());
        let n = 1_000_000;
        for i in 0..MAX_LOGIN_STATES as u64 {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&i.to_le_bytes());
            store.put_login_state(&key, "s", n + 600, n).await.unwrap();
        }
        let one_more = [0xff; 32];
        assert!(
            store
                .put_login_state(&one_more, "s", n + 600, n)
                .await
                .is_err()
        );
        // Once they have expired, sign-ins start again.
        store
            .put_login_state(&one_more, "s", n + 1200, n + 600)
            .await
            .unwrap();
        assert_eq!(
            store
                .take_login_state(&one_more, n + 601)
                .await
                .unwrap()
                .as_deref(),
            Some("s")
        );
    }

    #[tokio::test]
    async fn a_window_is_measured_with_the_callers_clock() {
        let store = MemoryStore::new(Clock::manual());
        let n = 1_000_000;
        let first = store.throttle_hit("user:alice", 60, n).await.unwrap();
        assert_eq!(
            first,
            Attempts {
                count: 1,
                resets_at: n + 60
            }
        );
        // Later failures count in the same window and do not extend it.
        let second = store.throttle_hit("user:alice", 60, n + 59).await.unwrap();
        assert_eq!(
            second,
            Attempts {
                count: 2,
                resets_at: n + 60
            }
        );
        // The window ends at `resets_at`: nothing is counted then, and a failure starts anew.
        let ended = store.throttle_peek("user:alice", n + 60).await.unwrap();
        assert_eq!(ended, Attempts::NONE);
        let next = store.throttle_hit("user:alice", 60, n + 60).await.unwrap();
        assert_eq!(
            next,
            Attempts {
                count: 1,
                resets_at: n + 120
            }
        );
        // A window shorter than a second is a second.
        let short = store.throttle_hit("ip:192.0.2.1", 0, n).await.unwrap();
        assert_eq!(
            short,
            Attempts {
                count: 1,
                resets_at: n + 1
            }
        );
    }

    #[tokio::test]
    async fn a_flood_of_100_000_distinct_keys_leaves_the_throttle_map_bounded() {
        let store = MemoryStore::new(Clock::manual());
        let n = 1_000_000;
        // A window that has ended, with many failures, and a live counter that has been
        // climbing: room is made from the first, never from the second.
        for _ in 0..10 {
            store.throttle_hit("user:stale", 10, n).await.unwrap();
        }
        for _ in 0..5 {
            store.throttle_hit("user:target", 900, n).await.unwrap();
        }
        for i in 0..100_000u32 {
            store
                .throttle_hit(&format!("user:flood-{i}"), 900, n + 100)
                .await
                .unwrap();
            assert!(store.throttle().windows.len() <= THROTTLE_CAPACITY);
        }
        assert!(
            !store
                .throttle()
                .windows
                .contains_key(&throttle_digest("user:stale")),
            "expired windows go first"
        );
        // Single-failure keys were dropped before the counter that mattered.
        assert_eq!(
            store.throttle_peek("user:target", n + 100).await.unwrap(),
            Attempts {
                count: 5,
                resets_at: n + 900
            }
        );
    }

    fn session(id: String, expires: i64) -> SessionRecord {
        SessionRecord {
            subject: format!("user-{id}"),
            id,
            created_at: expires - 600,
            last_seen: expires - 600,
            ip: "192.0.2.1".into(),
            user_agent: "test".into(),
            absolute_expiry: expires,
            idle_expiry: expires,
            remember_me: false,
            provider: None,
        }
    }

    #[tokio::test]
    async fn sweeps_are_spaced_by_the_size_of_the_shard_and_keep_dead_entries_bounded() {
        let store = MemoryStore::new(Clock::manual());
        let now = store.now_for_sweep();
        // One subject's sessions all live in its shard, so this is one shard filling up.
        let of_alice = |id: String, expires: i64| SessionRecord {
            subject: "alice".into(),
            ..session(id, expires)
        };
        let shard = store.subject_shard("alice");
        for i in 0..4_000 {
            let record = of_alice(format!("live-{i}"), now + 3_600);
            store.create_session(record, None).await.unwrap();
        }
        // As if a sweep had just run with 4,000 held: the next waits for more than 500 writes
        // (an eighth of what the shard holds by then), not SWEEP_EVERY.
        write(shard).writes = 0;
        for i in 0..400 {
            let record = of_alice(format!("dead-{i}"), now - 1);
            store.create_session(record, None).await.unwrap();
        }
        assert_eq!(
            read(shard).sessions.len(),
            4_400,
            "no sweep within 400 writes"
        );
        for i in 400..600 {
            let record = of_alice(format!("dead-{i}"), now - 1);
            store.create_session(record, None).await.unwrap();
        }
        // The sweep ran once, and removed every dead session written before it.
        let held = read(shard);
        let dead = held
            .sessions
            .keys()
            .filter(|k| k.starts_with("dead-"))
            .count();
        assert!(dead < 600 - 400, "{dead} dead sessions left");
        assert_eq!(held.sessions.len(), 4_000 + dead);
        assert_eq!(held.by_user["alice"].len(), 4_000 + dead);
    }

    #[tokio::test]
    async fn dead_entries_stay_bounded_in_every_shard() {
        let clock = Clock::manual();
        let store = MemoryStore::new(clock.clone());
        let now = clock.now();
        // Sweeps run a second after the entries below have expired.
        clock.advance(std::time::Duration::from_secs(2));
        // Sessions of 20,000 users and 20,000 denylist entries, written live at `now` and
        // expired by the time of every sweep, spread over every shard: each shard sweeps on its
        // own writes, so none keeps more than SWEEP_EVERY dead entries of either kind.
        for i in 0..20_000 {
            let record = session(format!("dead-{i}"), now + 1);
            store.create_session(record, None).await.unwrap();
            store
                .deny_jti("https://issuer", &format!("j{i}"), now + 1, now)
                .await
                .unwrap();
        }
        for shard in &store.shards {
            let shard = read(shard);
            assert!(shard.sessions.len() + shard.denied.len() < SWEEP_EVERY as usize);
            assert_eq!(shard.by_user.len(), shard.sessions.len());
        }
    }

    fn token<'a>(key: &'a [u8; 32], subject: &'a str, sid: &'a str, now: i64) -> TokenRef<'a> {
        TokenRef {
            token_key: key,
            jti_key: key,
            expires_at: now + 600,
            subject,
            user: subject,
            session: Some(sid),
            issued_at: now - 1,
            require_session: true,
        }
    }

    #[tokio::test]
    async fn a_session_of_another_subject_is_unknown_whichever_shard_it_is_in() {
        let store = MemoryStore::new(Clock::manual());
        let now = store.now_for_sweep();
        // 500 pairs: with 256 shards, some owners share a shard with the subject presenting
        // their session id and most do not; the verdict is the same for all.
        for i in 0..500 {
            let record = session(format!("s{i}"), now + 3_600);
            store.create_session(record, None).await.unwrap();
        }
        for i in 0..500 {
            let (sid, owner, other) = (format!("s{i}"), format!("user-s{i}"), format!("u{i}"));
            let key = jti_key("https://issuer", &sid);
            let alive = store.check_now(&token(&key, &owner, &sid, now), now);
            assert_eq!(alive, Verdict::Alive);
            let foreign = store.check_now(&token(&key, &other, &sid, now), now);
            assert_eq!(foreign, Verdict::SessionUnknown);
        }
    }

    #[tokio::test]
    async fn a_sweep_removes_what_has_expired_by_the_gateways_clock() {
        let clock = Clock::manual();
        let store = MemoryStore::new(clock.clone());
        let now = clock.now();
        let of_alice = |id: String, expires: i64| SessionRecord {
            subject: "alice".into(),
            ..session(id, expires)
        };
        let shard = store.subject_shard("alice");
        for i in 0..SWEEP_EVERY {
            let record = of_alice(format!("short-{i}"), now + 10);
            store.create_session(record, None).await.unwrap();
        }
        assert_eq!(
            read(shard).sessions.len() as u64,
            SWEEP_EVERY,
            "alive by the clock: a sweep kept them all"
        );
        // Past their expiry on the gateway's clock, though not on the system's.
        clock.advance(std::time::Duration::from_secs(11));
        for i in 0..SWEEP_EVERY {
            let record = of_alice(format!("long-{i}"), now + 3_600);
            store.create_session(record, None).await.unwrap();
        }
        let held = read(shard);
        assert!(held.sessions.keys().all(|k| k.starts_with("long-")));
        assert_eq!(held.sessions.len() as u64, SWEEP_EVERY);
    }
}
