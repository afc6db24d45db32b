//! Session and revocation state: the [`SessionStore`] contract and its implementations.
//!
//! The hot path asks one question per request — may this verified token still be used? — and
//! [`SessionStore::check`] answers it from three facts: is the token's `jti` denylisted, is its
//! session alive, and was its user revoked after the token was issued. Implementations must
//! answer from local memory whenever they can (the memory store always does; the Redis store
//! reads through a local cache kept fresh by pub/sub), and must say [`StoreError::Unavailable`]
//! rather than guess: the caller turns that into a 503, never into "allowed".
//!
//! The store also keeps the login-throttling counters ([`SessionStore::throttle_hit`]): failed
//! attempts per caller-built key (client IP, canonical username) in a fixed window, shared by
//! every instance when the store is Redis. They are not on the hot path and bypass the cache.
//!
//! # Who calls what
//!
//! - The request path's session stage calls [`SessionStore::check`] once per request.
//! - The auth flow creates sessions at login, rotates refresh tokens, revokes a session or a
//!   user, denylists a `jti` at logout, lists sessions, and counts failed logins.
//! - The admin API lists and revokes sessions and users; readiness asks [`Store::is_healthy`].
//! - The gateway builds one [`Store`] at start (`build_store` in the crate root) with its
//!   [`Clock`] and keeps it across reloads.
//!
//! # Time
//!
//! Every instant is seconds since the Unix epoch, and every decision that depends on the time
//! compares the caller's `now` with an instant the store keeps: session idle and absolute
//! expiry, refresh-token expiry and grace, a `jti` denial's `until`, a user revocation's
//! `keep_until`, a throttle window's end. The caller reads `now` from the gateway's [`Clock`]
//! once per request, so a test that advances a manual clock sees every lifetime end without
//! sleeping, in both stores. Where the store acts on its own — the memory store's sweeps of
//! dead entries, the Redis heartbeat and the epoch it writes, the expiry of its Redis keys, the
//! local cache's eviction — it reads the [`Clock`] it was given at construction, which is the
//! same clock. Redis key TTLs are garbage collection only: they are set from the same instants
//! as a remaining lifetime (plus a margin for sessions and revocations, so that such a key does
//! not vanish before the instant it holds has passed on the gateway's clock), and no answer
//! depends on Redis's own clock.
//!
//! [`Clock`]: crate::clock::Clock

use std::future::Future;

pub mod cache;
pub mod epoch;
pub mod memory;
pub mod redis;

pub use memory::MemoryStore;
pub use redis::{RedisSettings, RedisStore, Topology};

/// The store could not answer. Requests that need the answer are refused with 503.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing service is unreachable or timed out.
    #[error("session store unavailable")]
    Unavailable {
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The denylist key of a token: SHA-256 of its issuer and `jti` — never of the token bytes, so
/// a re-encoded token cannot slip past it.
pub fn jti_key(issuer: &str, jti: &str) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(issuer.as_bytes());
    ctx.update(&[0]);
    ctx.update(jti.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// The fixed-size name of a throttle key: SHA-256 of the caller's string, so that no key (it may
/// hold anything a client sent) is ever part of a store's key name and every entry has one size.
fn throttle_digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes()).as_ref(),
    );
    out
}

/// Failed attempts counted under one key in a fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Failures recorded in the current window; 0 when there is none.
    pub count: u32,
    /// When the window ends (seconds since the epoch); 0 when count is 0.
    pub resets_at: i64,
}

impl Attempts {
    /// No window: nothing counted.
    pub const NONE: Attempts = Attempts {
        count: 0,
        resets_at: 0,
    };
}

/// What the session check needs to know about a verified token.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    /// SHA-256 of the token: the key of a cached verdict.
    pub token_key: &'a [u8; 32],
    /// [`jti_key`] of the token.
    pub jti_key: &'a [u8; 32],
    /// `exp`: a cached verdict never outlives it.
    pub expires_at: i64,
    /// `sub`: whose session `sid` must be.
    pub subject: &'a str,
    /// The name the store knows the user by, under which a user revocation is marked: the
    /// subject for the gateway's own tokens, `<iss>#<sub>` for another issuer's
    /// ([`crate::keys::Issuer::user_key`]).
    pub user: &'a str,
    /// `sid`, when present.
    pub session: Option<&'a str>,
    /// `iat`, seconds since the epoch.
    pub issued_at: i64,
    /// Whether `sid` must name a live session of `sub`.
    pub require_session: bool,
}

/// The store's answer for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token may be used.
    Alive,
    /// Its `jti` is on the denylist (logout).
    JtiDenied,
    /// Its session does not exist: never created, revoked, or expired.
    SessionUnknown,
    /// Its session belongs to another subject.
    SessionMismatch,
    /// Its user was revoked after the token was issued (logout-all, disable, role change).
    UserRevoked,
    /// It has no session and was issued before the store's epoch began: a revocation of it
    /// may have been lost with the store's data (see [`epoch`]).
    IssuedBeforeStoreReset,
}

impl Verdict {
    /// A stable identifier for logs and audit.
    pub fn reason_id(self) -> &'static str {
        match self {
            Verdict::Alive => "session.alive",
            Verdict::JtiDenied => "session.jti_denied",
            Verdict::SessionUnknown => "session.unknown",
            Verdict::SessionMismatch => "session.subject_mismatch",
            Verdict::UserRevoked => "session.user_revoked",
            Verdict::IssuedBeforeStoreReset => "session.store_reset",
        }
    }
}

/// A server-side session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id (`sid`), ≥ 128 bits from the OS CSPRNG.
    pub id: String,
    /// The user.
    pub subject: String,
    /// Creation time, seconds since the epoch.
    pub created_at: i64,
    /// Last time the session was used to refresh.
    pub last_seen: i64,
    /// Client IP at login.
    pub ip: String,
    /// User agent at login.
    pub user_agent: String,
    /// The session ends at this instant whatever happens.
    pub absolute_expiry: i64,
    /// The session ends if not refreshed before this instant.
    pub idle_expiry: i64,
    /// Whether the user asked to stay logged in.
    pub remember_me: bool,
    /// For a session signed in through an OpenID Provider (`auth.providers`): which one, the
    /// provider's `sub` and `sid`, and the permissions its claims mapped to at login, which the
    /// gateway's refresh puts into each new access token. `None` for a password login.
    pub provider: Option<ProviderLink>,
}

/// What a session signed in through an OpenID Provider remembers of that sign-in.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProviderLink {
    /// The provider's `id` in `auth.providers`.
    pub provider: String,
    /// The provider's `sub` for the user.
    pub sub: String,
    /// The provider's session (`sid` of the ID token), when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The role names the provider's claims named at login (`via: roles` mappings): what they
    /// grant is read from the config's `roles:` when each access token is verified, so a
    /// change to `roles:` applies from the next request on.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The permission names the provider's claims named directly at login (`prefix:`
    /// mappings), those the config knew then.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// The ID token of the sign-in, sent back as `id_token_hint` when the user signs out at
    /// the provider from the gateway (RP-initiated logout). Not a credential at the gateway:
    /// no endpoint accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The provider's refresh token, sealed with the provider's `refresh_token_key_file`
    /// (AES-256-GCM, the session id as associated data): never the token itself. `None` when
    /// the provider sent none or no key is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// A refresh token as the store keeps it: its hash, never the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshGrant {
    /// SHA-256 of the refresh token.
    pub hash: [u8; 32],
    /// When it stops working (capped at the session's absolute expiry).
    pub expires_at: i64,
}

/// A request to rotate a refresh token.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    /// The user the token names.
    pub subject: &'a str,
    /// The session the token names.
    pub session: &'a str,
    /// SHA-256 of the presented token.
    pub presented: [u8; 32],
    /// SHA-256 of its successor, made by the caller from the OS CSPRNG.
    pub successor: [u8; 32],
    /// The successor's expiry (capped at the session's absolute expiry).
    pub successor_expires_at: i64,
    /// Now, seconds since the epoch.
    pub now: i64,
    /// Seconds after a rotation during which presenting the old token again is taken for a
    /// concurrent request (another tab), not for theft.
    pub grace: i64,
    /// The idle lifetime: a successful rotation moves the idle expiry to `now + idle`.
    pub idle: i64,
}

/// What became of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The token was current: it is now used, and the successor is current.
    Rotated(SessionRecord),
    /// The token was rotated moments ago (within the grace window): no new refresh token, no
    /// verdict of reuse; the caller may issue an access token.
    Concurrent(SessionRecord),
    /// The token was used before, outside the grace window: the whole session is revoked.
    ReuseDetected {
        /// The user whose session was revoked.
        subject: String,
    },
    /// Unknown token, a token of another session, or an expired or revoked session.
    Invalid,
}

/// The contract both stores implement; the behavioural test suite runs against each.
///
/// All times are seconds since the Unix epoch, passed in by the caller so that tests control
/// the clock. Every method is safe to call concurrently.
pub trait SessionStore: Send + Sync + 'static {
    /// Whether a verified token may still be used at `now`. Must answer from local state when
    /// it is known to be fresh; must return `Err` rather than a guessed `Alive`.
    fn check(
        &self,
        token: &TokenRef<'_>,
        now: i64,
    ) -> impl Future<Output = Result<Verdict, StoreError>> + Send;

    /// Stores a new session (login), with its first refresh token.
    fn create_session(
        &self,
        record: SessionRecord,
        refresh: Option<RefreshGrant>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A session of `subject` by id, if it is alive at `now`.
    fn session(
        &self,
        subject: &str,
        id: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<SessionRecord>, StoreError>> + Send;

    /// The live sessions of a user, newest first.
    fn sessions_of(
        &self,
        subject: &str,
        now: i64,
    ) -> impl Future<Output = Result<Vec<SessionRecord>, StoreError>> + Send;

    /// Ends a session of `subject`; its access and refresh tokens fail from the next request
    /// on, on every instance. Returns whether it existed.
    fn revoke_session(
        &self,
        subject: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends every session of a user and refuses every token issued to them before `before`.
    /// The mark is kept until `keep_until` (the longest a token issued before it can live).
    fn revoke_user(
        &self,
        subject: &str,
        before: i64,
        keep_until: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Denylists one token by issuer and `jti` until `until` (its `exp`), as of `now`: a denial
    /// whose `until` is not after `now` denies nothing (the token has expired anyway).
    fn deny_jti(
        &self,
        issuer: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Rotates a refresh token atomically, detecting reuse (see [`RotateOutcome`]).
    fn rotate_refresh(
        &self,
        rotation: &Rotation<'_>,
    ) -> impl Future<Output = Result<RotateOutcome, StoreError>> + Send;

    /// Records one failed attempt under `key` and returns the count in the current window; the
    /// window (of `window` seconds; less than 1 counts as 1) starts at the first failure, is
    /// not extended by later ones, and the counter disappears with it.
    ///
    /// `key` is built by the caller (`ip:203.0.113.9`, `user:alice`) and may hold anything; the
    /// stores keep only its SHA-256. Both stores measure the window with `now`: it ends when
    /// `now` reaches `resets_at` (Redis keeps `resets_at` with the count; the key's TTL only
    /// frees it). `Err` means the store could not count: the caller refuses the login (503).
    fn throttle_hit(
        &self,
        key: &str,
        window: i64,
        now: i64,
    ) -> impl Future<Output = Result<Attempts, StoreError>> + Send;

    /// The current count under `key` without recording anything ([`Attempts::NONE`] when no
    /// window is open at `now`).
    fn throttle_peek(
        &self,
        key: &str,
        now: i64,
    ) -> impl Future<Output = Result<Attempts, StoreError>> + Send;

    /// Forgets the key (a successful login clears its username's counter). Clearing a key that
    /// counts nothing is not an error.
    fn throttle_clear(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps `value` under `key` (a SHA-256 the caller made: the OpenID login flow's `state`)
    /// until `expires_at`, for one [`SessionStore::take_login_state`]. Shared by every instance
    /// with Redis, so a callback may reach another instance than the one that started the flow.
    fn put_login_state(
        &self,
        key: &[u8; 32],
        value: &str,
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads and deletes, atomically, what [`SessionStore::put_login_state`] kept under `key`:
    /// of two concurrent takes of one key at most one gets it (single use). `None` when there
    /// is nothing, or it expired at `now`.
    fn take_login_state(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Indexes a provider's session (`key`: a SHA-256 the caller made of the provider's issuer
    /// and its `sid`) to the gateway user signed in through it, until `expires_at` (the
    /// gateway session's absolute expiry; a later call for the same key keeps the later one),
    /// so that a back-channel logout naming only `sid` finds the user.
    fn put_provider_sid(
        &self,
        key: &[u8; 32],
        subject: &str,
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The user [`SessionStore::put_provider_sid`] indexed under `key`, if not expired at
    /// `now`.
    fn provider_sid_user(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Replaces the provider link of a live session of `subject` (a rotated provider refresh
    /// token). Returns whether the session existed.
    fn set_provider_link(
        &self,
        subject: &str,
        id: &str,
        link: &ProviderLink,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records `key` (a SHA-256 the caller made: a back-channel logout token's issuer and
    /// `jti`) until `expires_at`: `true` the first time, `false` while it is recorded — on
    /// every instance sharing the store, and atomically (of two concurrent calls one gets
    /// `true`).
    fn first_use(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The configured store. An enum rather than a trait object: the hot path dispatches with a
/// match instead of boxing a future per request. The variants differ in size (the sharded
/// memory store is a pointer-sized handful of fields, the Redis store holds its connections):
/// there is one per gateway, so neither is boxed, which would add a pointer chase to every
/// check.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Store {
    /// In-process.
    Memory(MemoryStore),
    /// Redis behind a local cache.
    Redis(RedisStore),
}

impl Store {
    /// Whether the store can answer (for readiness): always for memory; for Redis, the last
    /// operation succeeded, the epoch is known and not halted, and invalidations are being
    /// received within the staleness bound.
    pub fn is_healthy(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.is_healthy(),
        }
    }

    /// Asks the store whether it answers, updating [`Store::is_healthy`] (a no-op for memory).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.ping().await,
        }
    }

    /// Whether invalidations are being received (always for memory).
    pub fn is_subscribed(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.is_subscribed(),
        }
    }

    /// What the store counted of its own work, for `/metrics` (`None` for memory, which has
    /// no cache, no remote calls and nothing that fails).
    pub fn counters(&self) -> Option<&crate::metrics::StoreCounters> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => Some(r.counters()),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Memory($s) => $call,
            Store::Redis($s) => $call,
        }
    };
}

impl SessionStore for Store {
    async fn check(&self, token: &TokenRef<'_>, now: i64) -> Result<Verdict, StoreError> {
        match self {
            Store::Memory(s) => s.check(token, now).await,
            // Boxed: the Redis check's state (its commands, timeout and pipeline) is about 4 KiB,
            // and unboxed it would size every request's future, which is moved into place once
            // per request whichever store answers. One allocation on the Redis path is cheaper
            // than copying it (measured with benches/callgrind.sh).
            Store::Redis(s) => Box::pin(s.check(token, now)).await,
        }
    }
    async fn create_session(
        &self,
        record: SessionRecord,
        refresh: Option<RefreshGrant>,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.create_session(record, refresh).await)
    }
    async fn session(
        &self,
        subject: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<SessionRecord>, StoreError> {
        dispatch!(self, s => s.session(subject, id, now).await)
    }
    async fn sessions_of(&self, subject: &str, now: i64) -> Result<Vec<SessionRecord>, StoreError> {
        dispatch!(self, s => s.sessions_of(subject, now).await)
    }
    async fn revoke_session(&self, subject: &str, id: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.revoke_session(subject, id).await)
    }
    async fn revoke_user(
        &self,
        subject: &str,
        before: i64,
        keep_until: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.revoke_user(subject, before, keep_until).await)
    }
    async fn deny_jti(
        &self,
        issuer: &str,
        jti: &str,
        until: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.deny_jti(issuer, jti, until, now).await)
    }
    async fn rotate_refresh(&self, rotation: &Rotation<'_>) -> Result<RotateOutcome, StoreError> {
        dispatch!(self, s => s.rotate_refresh(rotation).await)
    }
    async fn throttle_hit(&self, key: &str, window: i64, now: i64) -> Result<Attempts, StoreError> {
        dispatch!(self, s => s.throttle_hit(key, window, now).await)
    }
    async fn throttle_peek(&self, key: &str, now: i64) -> Result<Attempts, StoreError> {
        dispatch!(self, s => s.throttle_peek(key, now).await)
    }
    async fn throttle_clear(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.throttle_clear(key).await)
    }
    async fn put_login_state(
        &self,
        key: &[u8; 32],
        value: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_login_state(key, value, expires_at, now).await)
    }
    async fn take_login_state(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.take_login_state(key, now).await)
    }
    async fn put_provider_sid(
        &self,
        key: &[u8; 32],
        subject: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_provider_sid(key, subject, expires_at, now).await)
    }
    async fn provider_sid_user(
        &self,
        key: &[u8; 32],
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.provider_sid_user(key, now).await)
    }
    async fn set_provider_link(
        &self,
        subject: &str,
        id: &str,
        link: &ProviderLink,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.set_provider_link(subject, id, link).await)
    }
    async fn first_use(
        &self,
        key: &[u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.first_use(key, expires_at, now).await)
    }
}
