//! The local cache in front of a shared store: answers the per-request session check from
//! memory, and is kept fresh by invalidation events (Redis pub/sub) from every instance.
//!
//! What is cached, and why it is safe:
//! - **Positive verdicts** ("this token may be used"), keyed by the token's hash. They are the
//!   only entries that can become stale, so every revoking event evicts the ones it concerns at
//!   once (moka invalidation predicates: `get` is guaranteed never to return a matching entry
//!   after the call), they live at most `ttl` (a second safety net) and never past the token's
//!   `exp`, and they are neither read nor written while the instance is not subscribed to
//!   invalidations — then every request reads through to the store.
//! - **Staleness is bounded in time, not only by the connection's state.** A subscription whose
//!   socket goes silent (packets dropped, the socket still open) delivers nothing and reports
//!   no error. So a positive verdict is served only while the invalidation channel has been
//!   *heard from* within `max_staleness`. What counts as heard is the instance's own heartbeat
//!   coming back: every instance publishes one on the channel several times per
//!   `max_staleness` (see the Redis store), stamped with the instant it was sent on this
//!   instance's monotonic clock, and when it comes back the channel is known to have delivered
//!   everything published before that instant (one connection delivers in publish order). So
//!   freshness is dated by when the heartbeat was *sent*, not when it arrived: a revocation
//!   acknowledged at instant R is either applied here or no positive verdict is served after
//!   R + `max_staleness`, however long the last message before a partition spent in flight.
//!   Other instances' heartbeats and invalidations prove nothing about what was published
//!   after them, so they do not count. Past the bound the cache serves and keeps no positive
//!   verdict (requests read through to the store, or get 503 when it cannot answer), and the
//!   first heartbeat heard again empties it: anything published meanwhile may have been lost.
//! - **Negative facts** (a denied `jti`, a revoked session, a user's "revoked before" instant).
//!   Revocation is monotonic — a denied `jti` is never un-denied, a deleted session never comes
//!   back, the "revoked before" instant only moves forward — so these never become wrong. They
//!   are kept through a lost subscription and a store outage: a revoked token stays refused.
//!
//! - **Time.** Every entry holds the instant it stops being true (a verdict: the token's `exp`
//!   or its session's idle or absolute expiry, whichever comes first; a denied `jti`: its
//!   `until`; a user's mark: its `keep_until` when known), and every read compares it with the
//!   caller's `now`, so a verdict cached at one `now` is not served at a later one past its
//!   lifetime. Eviction (moka's own timers, the gateway's [`Clock`] for a verdict's lifetime)
//!   only frees memory.
//!
//! A read-through races with an invalidation that arrives while the store is being read. The
//! reader records the invalidation sequence number before reading, inserts, and then — if any
//! invalidation happened in between — evicts what it inserted. An invalidation bumps the
//! sequence *before* registering its predicate, so every interleaving either lets the reader
//! see the bump or puts the insert before the predicate (which then covers it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::clock::Clock;

/// An event that makes some cached "alive" verdicts wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A session was revoked (logout, reuse detection, admin).
    Session(String),
    /// Every token of a user issued at or before the instant is revoked (logout-all).
    User {
        /// The subject.
        subject: String,
        /// Tokens with `iat` at or before this are refused.
        before: i64,
    },
    /// One token (by issuer + `jti`) was denylisted until `until`.
    Jti {
        /// SHA-256 of issuer and `jti`.
        key: [u8; 32],
        /// When the denial may be forgotten (the token's `exp`).
        until: i64,
    },
}

impl Invalidation {
    /// The wire form published on the invalidation channel.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Session(sid) => format!("s {sid}"),
            Invalidation::User { subject, before } => format!("u {before} {subject}"),
            Invalidation::Jti { key, until } => format!("j {until} {}", hex(key)),
        }
    }

    /// Parses the wire form; `None` for anything else (ignored, and logged by the caller).
    pub fn decode(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "s" if !rest.is_empty() => Some(Invalidation::Session(rest.to_owned())),
            "u" => {
                let (before, subject) = rest.split_once(' ')?;
                Some(Invalidation::User {
                    subject: subject.to_owned(),
                    before: before.parse().ok()?,
                })
            }
            "j" => {
                let (until, key) = rest.split_once(' ')?;
                Some(Invalidation::Jti {
                    key: unhex(key)?,
                    until: until.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// A cached "alive" verdict and what it depends on.
#[derive(Debug)]
pub struct Alive {
    /// Hash of issuer + `jti`.
    pub jti_key: [u8; 32],
    /// The session, if the verdict depended on one.
    pub session: Option<Box<str>>,
    /// The subject, whose session it is.
    pub subject: Box<str>,
    /// The user, as revocation marks name them ([`super::TokenRef::user`]): the subject, or
    /// `<iss>#<sub>` for another issuer's token.
    pub user: Box<str>,
    /// When the verdict stops being true: the token's `exp`, or its session's idle or absolute
    /// expiry if earlier. It is served only at a `now` before this, and never kept longer.
    pub expires_at: i64,
}

struct AliveExpiry {
    ttl: Duration,
    clock: Clock,
}

impl moka::Expiry<[u8; 32], Arc<Alive>> for AliveExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &Arc<Alive>,
        _: Instant,
    ) -> Option<Duration> {
        let left = value.expires_at.saturating_sub(self.clock.now()).max(0);
        Some(self.ttl.min(Duration::from_secs(left as u64)))
    }
}

/// How long negative facts are kept locally. The store keeps them as long as they matter;
/// this only bounds memory and how long an outage can be bridged with 401s rather than 503s.
const NEGATIVE_TTL: Duration = Duration::from_secs(15 * 60);

/// The local cache of one instance.
pub struct LocalCache {
    alive: Cache<[u8; 32], Arc<Alive>>,
    /// The instant `heard_at` counts from.
    base: Instant,
    /// Milliseconds after `base` up to which the invalidation channel is known to have
    /// delivered everything: the send instant of the latest own heartbeat heard back.
    heard_at: AtomicU64,
    /// Longest a positive verdict is served after the channel was last heard from, in ms.
    max_staleness_ms: u64,
    /// jti key → denied until.
    denied_jti: Cache<[u8; 32], i64>,
    dead_sessions: Cache<Box<str>, ()>,
    /// subject → the user's mark (tokens issued at or before it are refused).
    revoked_before: Cache<Box<str>, Mark>,
    /// Whether invalidation events are being received. While false, positive verdicts are
    /// neither served nor stored.
    subscribed: AtomicBool,
    /// Bumped by every invalidation; see the module docs.
    sequence: AtomicU64,
}

impl std::fmt::Debug for LocalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("alive", &self.alive.entry_count())
            .field("subscribed", &self.subscribed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A user's revocation: tokens issued at or before `before` are refused while `now` is before
/// `keep_until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Tokens with `iat` at or before this are refused.
    pub before: i64,
    /// When the mark may be forgotten (no token issued before it lives longer). A mark heard
    /// on the invalidation channel does not carry it and is kept for as long as the cache
    /// keeps negative facts: refusing longer than needed refuses only expired tokens.
    pub keep_until: i64,
}

impl Mark {
    /// Whether the mark refuses a token issued at `issued_at`, at `now`.
    pub fn refuses(self, issued_at: i64, now: i64) -> bool {
        now < self.keep_until && issued_at <= self.before
    }

    /// The later of two marks of one user: a revocation never moves a mark backwards.
    fn max(self, other: Mark) -> Mark {
        Mark {
            before: self.before.max(other.before),
            keep_until: self.keep_until.max(other.keep_until),
        }
    }
}

/// What the negative facts say about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Its `jti` is denied.
    JtiDenied,
    /// Its session is revoked.
    SessionRevoked,
    /// Its user was revoked after it was issued.
    UserRevoked,
}

impl LocalCache {
    /// A cache holding at most `capacity` positive verdicts, each for at most `ttl`, served
    /// only while the invalidation channel was heard from within `max_staleness`. `clock` (the
    /// gateway's) times the eviction of verdicts whose lifetime ends before `ttl`.
    pub fn new(capacity: u64, ttl: Duration, max_staleness: Duration, clock: Clock) -> Self {
        let now = Instant::now();
        Self {
            // Backdated so that "long ago" is representable from the first moment on.
            base: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            heard_at: AtomicU64::new(0),
            max_staleness_ms: u64::try_from(max_staleness.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            alive: Cache::builder()
                .max_capacity(capacity)
                .expire_after(AliveExpiry { ttl, clock })
                .support_invalidation_closures()
                .build(),
            denied_jti: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            dead_sessions: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            revoked_before: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(NEGATIVE_TTL)
                .build(),
            subscribed: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
        }
    }

    /// A positive verdict for the token with hash `token_key`, if one may be served at `now`.
    pub fn alive(&self, token_key: &[u8; 32], now: i64) -> Option<Arc<Alive>> {
        if !self.fresh() {
            return None;
        }
        self.alive.get(token_key).filter(|v| now < v.expires_at)
    }

    /// Whether positive verdicts may be served now: subscribed, and the channel heard from
    /// within `max_staleness`.
    pub fn fresh(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
            && self
                .millis_now()
                .saturating_sub(self.heard_at.load(Ordering::Acquire))
                <= self.max_staleness_ms
    }

    fn millis_now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant to stamp a heartbeat with as it is sent: what [`LocalCache::heard`] takes
    /// back when the heartbeat returns on the channel.
    pub fn stamp(&self) -> u64 {
        self.millis_now()
    }

    /// This instance's heartbeat stamped `sent` (by [`LocalCache::stamp`]) came back on the
    /// invalidation channel: everything published before `sent` has been delivered, so the
    /// staleness clock restarts from `sent`. When the channel had been stale (nothing proven
    /// within `max_staleness`), the cache is emptied first: events published during the
    /// silence may never arrive.
    pub fn heard(&self, sent: u64) {
        let now = self.millis_now();
        // A stamp from the future is not one this instance made: never trust past now.
        let sent = sent.min(now);
        let last = self.heard_at.load(Ordering::Acquire);
        if now.saturating_sub(last) > self.max_staleness_ms {
            // Emptied before the channel counts as fresh again, so no verdict cached before the
            // silence is served after it (the sequence bump also drops read-throughs that
            // began during it).
            self.sequence.fetch_add(1, Ordering::SeqCst);
            self.alive.invalidate_all();
        }
        // Heartbeats may come back out of order (one per Cluster node): only ever forward.
        self.heard_at.fetch_max(sent, Ordering::AcqRel);
    }

    /// How long ago the invalidation channel was last heard from.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.millis_now()
                .saturating_sub(self.heard_at.load(Ordering::Acquire)),
        )
    }

    /// Drops every positive verdict at once (the store lost its data, see the Redis store's
    /// epoch); negative facts are kept.
    pub fn forget_alive(&self) {
        self.sequence.fetch_add(1, Ordering::SeqCst);
        self.alive.invalidate_all();
    }

    /// What the negative facts already say about a token at `now`.
    pub fn known_revoked(
        &self,
        jti_key: &[u8; 32],
        session: Option<&str>,
        subject: &str,
        issued_at: i64,
        now: i64,
    ) -> Option<Known> {
        if self
            .denied_jti
            .get(jti_key)
            .is_some_and(|until| now < until)
        {
            return Some(Known::JtiDenied);
        }
        if session.is_some_and(|s| self.dead_sessions.contains_key(s)) {
            return Some(Known::SessionRevoked);
        }
        if self
            .revoked_before
            .get(subject)
            .is_some_and(|mark| mark.refuses(issued_at, now))
        {
            return Some(Known::UserRevoked);
        }
        None
    }

    /// The current invalidation sequence number; take it before reading the store.
    pub fn sequence(&self) -> u64 {
        self.sequence.load(Ordering::SeqCst)
    }

    /// Stores a positive verdict read from the store when `sequence` was current, unless an
    /// invalidation has happened since or the instance is not subscribed.
    pub fn remember_alive(&self, token_key: [u8; 32], alive: Alive, sequence: u64) {
        if !self.fresh() || self.sequence() != sequence {
            return;
        }
        self.alive.insert(token_key, Arc::new(alive));
        if self.sequence() != sequence {
            self.alive.invalidate(&token_key);
        }
    }

    /// Records a `jti` denial read from the store.
    pub fn remember_denied(&self, jti_key: &[u8; 32], until: i64) {
        self.deny(*jti_key, until);
    }

    /// Records a user's revocation mark read from the store.
    pub fn remember_mark(&self, subject: &str, mark: Mark) {
        self.raise_mark(subject, mark);
    }

    fn deny(&self, jti_key: [u8; 32], until: i64) {
        let current = self.denied_jti.get(&jti_key).unwrap_or(i64::MIN);
        if until > current {
            self.denied_jti.insert(jti_key, until);
        }
    }

    fn raise_mark(&self, subject: &str, mark: Mark) {
        let raised = match self.revoked_before.get(subject) {
            Some(current) => current.max(mark),
            None => mark,
        };
        self.revoked_before.insert(subject.into(), raised);
    }

    /// Applies an invalidation from any instance (this one included; applying twice is harmless).
    pub fn apply(&self, event: &Invalidation) {
        // Bump first: see the module docs for why the order matters.
        self.sequence.fetch_add(1, Ordering::SeqCst);
        let result = match event {
            Invalidation::Session(sid) => {
                self.dead_sessions.insert(sid.as_str().into(), ());
                let sid = sid.clone();
                self.alive
                    .invalidate_entries_if(move |_, v| v.session.as_deref() == Some(sid.as_str()))
            }
            Invalidation::User { subject, before } => {
                // The wire form has no `keep_until`: kept as long as negative facts are.
                let mark = Mark {
                    before: *before,
                    keep_until: i64::MAX,
                };
                self.raise_mark(subject, mark);
                let subject = subject.clone();
                self.alive
                    // The user's mark refuses their tokens; the sessions the revocation
                    // ended are the subject's (the same name for the gateway's own tokens).
                    .invalidate_entries_if(move |_, v| {
                        *v.user == *subject || *v.subject == *subject
                    })
            }
            Invalidation::Jti { key, until } => {
                self.deny(*key, *until);
                let key = *key;
                self.alive
                    .invalidate_entries_if(move |_, v| v.jti_key == key)
            }
        };
        if result.is_err() {
            // Cannot happen (closures are enabled at build time); fail safe regardless.
            self.alive.invalidate_all();
        }
    }

    /// The invalidation channel is (again) delivering events: positive verdicts may be used.
    pub fn subscribed(&self) {
        // Anything cached before the gap may have missed an event.
        self.sequence.fetch_add(1, Ordering::SeqCst);
        self.alive.invalidate_all();
        // Confirming the subscription is hearing from the channel.
        self.heard_at.store(self.millis_now(), Ordering::Release);
        self.subscribed.store(true, Ordering::Release);
    }

    /// The invalidation channel was lost: stop serving positive verdicts until it is back.
    pub fn unsubscribed(&self) {
        self.subscribed.store(false, Ordering::Release);
        self.sequence.fetch_add(1, Ordering::SeqCst);
        self.alive.invalidate_all();
    }

    /// Moves the last message heard `silence` into the past, as if the channel had been
    /// silent since (tests advance time instead of sleeping).
    #[cfg(test)]
    fn pretend_silent_for(&self, silence: Duration) {
        let silence = u64::try_from(silence.as_millis()).unwrap_or(u64::MAX);
        self.heard_at
            .store(self.millis_now().saturating_sub(silence), Ordering::Release);
    }

    /// Whether invalidation events are being received.
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Positive verdicts held (after pending maintenance).
    pub fn alive_count(&self) -> u64 {
        self.alive.run_pending_tasks();
        self.alive.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' `now`; the cache's clock reads it too.
    const NOW: i64 = 1_700_000_000;

    fn clock() -> Clock {
        Clock::manual_at(NOW * 1000)
    }

    fn alive(jti: u8, sid: &str, sub: &str) -> Alive {
        Alive {
            jti_key: [jti; 32],
            session: Some(sid.into()),
            subject: sub.into(),
            user: sub.into(),
            expires_at: NOW + 600,
        }
    }

    fn cache() -> LocalCache {
        let c = LocalCache::new(
            1000,
            Duration::from_secs(60),
            Duration::from_secs(60),
            clock(),
        );
        c.subscribed();
        c
    }

    #[test]
    fn events_round_trip_through_their_wire_form() {
        for e in [
            Invalidation::Session("abc".into()),
            Invalidation::User {
                subject: "alice smith".into(),
                before: 42,
            },
            Invalidation::Jti {
                key: [7; 32],
                until: 99,
            },
        ] {
            assert_eq!(Invalidation::decode(&e.encode()), Some(e));
        }
        assert_eq!(Invalidation::decode("x y"), None);
        assert_eq!(Invalidation::decode("j 1 zz"), None);
    }

    #[test]
    fn a_session_event_evicts_its_verdicts_and_is_remembered() {
        let c = cache();
        let seq = c.sequence();
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        c.remember_alive([2; 32], alive(2, "s2", "alice"), seq);
        assert!(c.alive(&[1; 32], NOW).is_some());
        c.apply(&Invalidation::Session("s1".into()));
        assert!(c.alive(&[1; 32], NOW).is_none());
        assert!(c.alive(&[2; 32], NOW).is_some());
        assert_eq!(
            c.known_revoked(&[1; 32], Some("s1"), "alice", 0, NOW),
            Some(Known::SessionRevoked)
        );
    }

    #[test]
    fn a_user_event_evicts_every_verdict_of_the_user() {
        let c = cache();
        let seq = c.sequence();
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        c.remember_alive([2; 32], alive(2, "s2", "bob"), seq);
        c.apply(&Invalidation::User {
            subject: "alice".into(),
            before: 100,
        });
        assert!(c.alive(&[1; 32], NOW).is_none());
        assert!(c.alive(&[2; 32], NOW).is_some());
        assert_eq!(
            c.known_revoked(&[9; 32], None, "alice", 100, NOW),
            Some(Known::UserRevoked)
        );
        assert_eq!(c.known_revoked(&[9; 32], None, "alice", 101, NOW), None);
    }

    #[test]
    fn a_read_through_that_raced_an_invalidation_is_not_kept() {
        let c = cache();
        let seq = c.sequence();
        c.apply(&Invalidation::Jti {
            key: [5; 32],
            until: 0,
        });
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        assert!(c.alive(&[1; 32], NOW).is_none());
    }

    #[test]
    fn nothing_positive_is_served_or_kept_while_unsubscribed_but_negatives_survive() {
        let c = cache();
        let seq = c.sequence();
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        c.apply(&Invalidation::Session("s0".into()));
        c.unsubscribed();
        assert!(c.alive(&[1; 32], NOW).is_none());
        let seq = c.sequence();
        c.remember_alive([2; 32], alive(2, "s2", "alice"), seq);
        assert!(c.alive(&[2; 32], NOW).is_none());
        assert_eq!(
            c.known_revoked(&[0; 32], Some("s0"), "alice", 0, NOW),
            Some(Known::SessionRevoked)
        );
        c.subscribed();
        assert!(
            c.alive(&[1; 32], NOW).is_none(),
            "verdicts from before the gap are gone"
        );
    }

    fn cache_with_staleness(max_staleness: Duration) -> LocalCache {
        LocalCache::new(1000, Duration::from_secs(60), max_staleness, clock())
    }

    #[test]
    fn verdicts_are_served_only_while_the_channel_was_heard_from_within_max_staleness() {
        let c = cache_with_staleness(Duration::from_millis(300));
        c.subscribed();
        let seq = c.sequence();
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        c.pretend_silent_for(Duration::from_millis(250));
        assert!(c.alive(&[1; 32], NOW).is_some(), "within the bound");
        c.pretend_silent_for(Duration::from_millis(301));
        assert!(!c.fresh());
        assert!(
            c.alive(&[1; 32], NOW).is_none(),
            "past the bound nothing is served"
        );
        let seq = c.sequence();
        c.remember_alive([2; 32], alive(2, "s2", "alice"), seq);
        c.heard(c.stamp());
        assert!(c.fresh());
        assert!(
            c.alive(&[1; 32], NOW).is_none() && c.alive(&[2; 32], NOW).is_none(),
            "what was cached before or during the silence is gone once the channel is heard again"
        );
        let seq = c.sequence();
        c.remember_alive([3; 32], alive(3, "s3", "alice"), seq);
        c.pretend_silent_for(Duration::from_millis(100));
        c.heard(c.stamp());
        assert!(
            c.alive(&[3; 32], NOW).is_some(),
            "a message heard within the bound keeps the cache"
        );
    }

    #[test]
    fn staleness_counts_from_when_the_heartbeat_heard_back_was_sent_not_when_it_arrived() {
        let c = cache_with_staleness(Duration::from_millis(300));
        c.subscribed();
        let seq = c.sequence();
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        // A heartbeat sent 250 ms ago arrives only now: the channel is proven up to then.
        let sent = c.stamp() - 250;
        c.pretend_silent_for(Duration::from_millis(280));
        c.heard(sent);
        assert!(c.fresh(), "proven 250 ms ago, within 300 ms");
        c.pretend_silent_for(Duration::from_millis(301));
        c.heard(c.stamp() - 301);
        assert!(
            !c.fresh(),
            "a heartbeat sent before the bound, however late it arrives, does not make it fresh"
        );
        // An older heartbeat arriving after a newer one never moves the proof backwards.
        let newest = c.stamp();
        c.heard(newest);
        c.heard(newest - 200);
        assert!(c.silent_for() < Duration::from_millis(100));
        // A stamp past now is clamped to now.
        c.heard(u64::MAX);
        assert!(c.fresh());
    }

    #[test]
    fn forgetting_alive_verdicts_keeps_negative_facts() {
        let c = cache();
        let seq = c.sequence();
        c.remember_alive([1; 32], alive(1, "s1", "alice"), seq);
        c.apply(&Invalidation::Session("s0".into()));
        c.forget_alive();
        assert!(c.alive(&[1; 32], NOW).is_none());
        assert_eq!(
            c.known_revoked(&[0; 32], Some("s0"), "alice", 0, NOW),
            Some(Known::SessionRevoked)
        );
    }

    #[test]
    fn a_cached_verdict_is_served_only_before_the_instant_it_ends() {
        let c = cache();
        let seq = c.sequence();
        // A verdict whose session's idle expiry comes before the token's `exp`.
        let mut v = alive(1, "s1", "alice");
        v.expires_at = NOW + 30;
        c.remember_alive([1; 32], v, seq);
        assert!(c.alive(&[1; 32], NOW + 29).is_some());
        assert!(c.alive(&[1; 32], NOW + 30).is_none(), "served at its end");
        assert!(c.alive(&[1; 32], NOW + 3600).is_none());
    }

    #[test]
    fn a_denial_refuses_until_its_until_and_a_mark_until_its_keep_until() {
        let c = cache();
        c.remember_denied(&[1; 32], NOW + 10);
        assert_eq!(
            c.known_revoked(&[1; 32], None, "alice", NOW - 5, NOW + 9),
            Some(Known::JtiDenied)
        );
        assert_eq!(
            c.known_revoked(&[1; 32], None, "alice", NOW - 5, NOW + 10),
            None
        );
        let mark = Mark {
            before: NOW,
            keep_until: NOW + 900,
        };
        c.remember_mark("bob", mark);
        assert_eq!(
            c.known_revoked(&[2; 32], None, "bob", NOW, NOW + 899),
            Some(Known::UserRevoked)
        );
        assert_eq!(c.known_revoked(&[2; 32], None, "bob", NOW + 1, NOW), None);
        assert_eq!(c.known_revoked(&[2; 32], None, "bob", NOW, NOW + 900), None);
        // A mark heard on the channel carries no keep_until: it is kept, and never lowered.
        c.apply(&Invalidation::User {
            subject: "bob".into(),
            before: NOW - 100,
        });
        assert_eq!(
            c.known_revoked(&[2; 32], None, "bob", NOW, NOW + 5000),
            Some(Known::UserRevoked)
        );
    }
}
