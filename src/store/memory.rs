//! The embedded store: everything in one process, lost on restart. The default, for a single
//! instance and for trying Portcullis out. It follows exactly the contract the Redis store
//! follows (one behavioural suite runs against both).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use super::{
    Attempts, RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore, StoreError,
    TokenRef, Verdict, jti_key, throttle_digest,
};

/// The fewest writes between sweeps of expired entries. Sweeps keep every map bounded by what
/// is live; the interval keeps their cost off individual requests.
const SWEEP_EVERY: u64 = 256;

/// A sweep scans every entry, so sweeps are spaced by a share of the entries held: each write
/// pays a constant amortized share (at a million sessions a sweep takes ~13 ms under the lock,
/// and ran every 256 writes), and dead entries never exceed an eighth of the live ones plus
/// [`SWEEP_EVERY`].
const SWEEP_SHARE: u64 = 8;

#[derive(Debug, Clone)]
struct RefreshState {
    session: String,
    used_at: Option<i64>,
    expires_at: i64,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, SessionRecord>,
    by_user: HashMap<String, HashSet<String>>,
    /// SHA-256(refresh token) → its state.
    refresh: HashMap<[u8; 32], RefreshState>,
    /// jti key → denied until.
    denied: HashMap<[u8; 32], i64>,
    /// subject → (tokens issued at or before this instant are refused, mark kept until).
    revoked_before: HashMap<String, (i64, i64)>,
    /// Writes since the last sweep.
    writes: u64,
}

impl State {
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
/// One `RwLock` guards all maps: every check is a handful of hash lookups under a read lock,
/// writes are rare (login, refresh, logout, revoke), each write is one critical section (so
/// rotation and reuse detection are atomic), and the lock is never held across an `.await`.
///
/// The throttle counters have their own `Mutex`: they share no invariant with the session
/// maps, and a burst of failed logins (each one a write) must not queue the hot path's reads
/// behind it. Each counter operation is one short critical section, so a hit is atomic.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
    throttle: Mutex<Throttle>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave these maps half-updated in a way that
        // lets a token through (revocations are single removals or inserts), so poison is ignored.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        // Every update of a window is a single assignment, so a panic cannot leave one torn.
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_now(&self, token: &TokenRef<'_>, now: i64) -> Verdict {
        let state = self.read();
        if state
            .denied
            .get(token.jti_key)
            .is_some_and(|until| *until > now)
        {
            return Verdict::JtiDenied;
        }
        if let Some((before, keep)) = state.revoked_before.get(token.subject)
            && *keep > now
            && token.issued_at <= *before
        {
            return Verdict::UserRevoked;
        }
        if token.require_session {
            let Some(record) = token.session.and_then(|sid| state.sessions.get(sid)) else {
                return Verdict::SessionUnknown;
            };
            if !alive(record, now) {
                return Verdict::SessionUnknown;
            }
            if record.subject != token.subject {
                return Verdict::SessionMismatch;
            }
        }
        Verdict::Alive
    }
}

fn now_for_sweep() -> i64 {
    crate::pipeline::verify::unix_now()
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
        let mut state = self.write();
        if let Some(grant) = refresh {
            state.refresh.insert(
                grant.hash,
                RefreshState {
                    session: record.id.clone(),
                    used_at: None,
                    expires_at: grant.expires_at.min(record.absolute_expiry),
                },
            );
        }
        state
            .by_user
            .entry(record.subject.clone())
            .or_default()
            .insert(record.id.clone());
        state.sessions.insert(record.id.clone(), record);
        state.after_write(now_for_sweep());
        Ok(())
    }

    async fn session(
        &self,
        subject: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .read()
            .sessions
            .get(id)
            .filter(|s| s.subject == subject && alive(s, now))
            .cloned())
    }

    async fn sessions_of(&self, subject: &str, now: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let state = self.read();
        let mut out: Vec<SessionRecord> = state
            .by_user
            .get(subject)
            .into_iter()
            .flatten()
            .filter_map(|id| state.sessions.get(id))
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
        let mut state = self.write();
        // Another user's session id names nothing for this subject.
        let owned = state.sessions.get(id).is_some_and(|s| s.subject == subject);
        let existed = owned && state.remove_session(id).is_some();
        state.after_write(now_for_sweep());
        Ok(existed)
    }

    async fn revoke_user(
        &self,
        subject: &str,
        before: i64,
        keep_until: i64,
    ) -> Result<(), StoreError> {
        let mut state = self.write();
        let ids: Vec<String> = state
            .by_user
            .get(subject)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            state.remove_session(&id);
        }
        let entry = state
            .revoked_before
            .entry(subject.to_owned())
            .or_insert((before, keep_until));
        // A later revocation never moves the mark backwards.
        entry.0 = entry.0.max(before);
        entry.1 = entry.1.max(keep_until);
        state.after_write(now_for_sweep());
        Ok(())
    }

    async fn deny_jti(&self, issuer: &str, jti: &str, until: i64) -> Result<(), StoreError> {
        let mut state = self.write();
        let slot = state.denied.entry(jti_key(issuer, jti)).or_insert(until);
        *slot = (*slot).max(until);
        state.after_write(now_for_sweep());
        Ok(())
    }

    async fn rotate_refresh(&self, r: &Rotation<'_>) -> Result<RotateOutcome, StoreError> {
        // One write lock for the whole decision: twenty concurrent rotations of one token see
        // each other's writes in order, so exactly one of them rotates.
        let mut state = self.write();
        let Some(token) = state.refresh.get(&r.presented).cloned() else {
            return Ok(RotateOutcome::Invalid);
        };
        if token.session != r.session || token.expires_at <= r.now {
            return Ok(RotateOutcome::Invalid);
        }
        let Some(session) = state.sessions.get(r.session).cloned() else {
            return Ok(RotateOutcome::Invalid);
        };
        if session.subject != r.subject {
            return Ok(RotateOutcome::Invalid);
        }
        if !alive(&session, r.now) {
            state.remove_session(r.session);
            return Ok(RotateOutcome::Invalid);
        }
        let outcome = match token.used_at {
            None => {
                if let Some(t) = state.refresh.get_mut(&r.presented) {
                    t.used_at = Some(r.now);
                }
                state.refresh.insert(
                    r.successor,
                    RefreshState {
                        session: r.session.to_owned(),
                        used_at: None,
                        expires_at: r.successor_expires_at.min(session.absolute_expiry),
                    },
                );
                let record = state.sessions.get_mut(r.session).map(|s| {
                    s.last_seen = r.now;
                    s.idle_expiry = (r.now + r.idle).min(s.absolute_expiry);
                    s.clone()
                });
                record.map_or(RotateOutcome::Invalid, RotateOutcome::Rotated)
            }
            Some(used_at) if r.now - used_at <= r.grace => RotateOutcome::Concurrent(session),
            Some(_) => {
                state.remove_session(r.session);
                RotateOutcome::ReuseDetected {
                    subject: session.subject,
                }
            }
        };
        state.after_write(r.now);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_window_is_measured_with_the_callers_clock() {
        let store = MemoryStore::new();
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
        let store = MemoryStore::new();
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
        }
    }

    #[tokio::test]
    async fn sweeps_are_spaced_by_the_size_of_the_store_and_keep_dead_entries_bounded() {
        let store = MemoryStore::new();
        let now = now_for_sweep();
        for i in 0..4_000 {
            let record = session(format!("live-{i}"), now + 3_600);
            store.create_session(record, None).await.unwrap();
        }
        // As if a sweep had just run with 4,000 held: the next waits for more than 500 writes
        // (an eighth of what is held by then), not 256.
        store.write().writes = 0;
        for i in 0..400 {
            let record = session(format!("dead-{i}"), now - 1);
            store.create_session(record, None).await.unwrap();
        }
        assert_eq!(
            store.read().sessions.len(),
            4_400,
            "no sweep within 400 writes"
        );
        for i in 400..600 {
            let record = session(format!("dead-{i}"), now - 1);
            store.create_session(record, None).await.unwrap();
        }
        // The sweep ran once, and removed every dead session written before it.
        let state = store.read();
        let dead = state
            .sessions
            .keys()
            .filter(|k| k.starts_with("dead-"))
            .count();
        assert!(dead < 600 - 400, "{dead} dead sessions left");
        assert_eq!(state.sessions.len(), 4_000 + dead);
    }
}
