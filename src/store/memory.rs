//! The embedded store: everything in one process, lost on restart. The default, for a single
//! instance and for trying Portcullis out. It follows exactly the contract the Redis store
//! follows (one behavioural suite runs against both).

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use super::{
    RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore, StoreError, TokenRef,
    Verdict, jti_key,
};

/// How many writes pass between sweeps of expired entries. Sweeps keep every map bounded by
/// what is live; the interval keeps their cost off individual requests.
const SWEEP_EVERY: u64 = 256;

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
        if self.writes % SWEEP_EVERY != 0 {
            return;
        }
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

fn alive(s: &SessionRecord, now: i64) -> bool {
    now < s.absolute_expiry && now < s.idle_expiry
}

/// The in-process [`SessionStore`].
///
/// One `RwLock` guards all maps: every check is a handful of hash lookups under a read lock,
/// writes are rare (login, refresh, logout, revoke), each write is one critical section (so
/// rotation and reuse detection are atomic), and the lock is never held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: RwLock<State>,
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
}
