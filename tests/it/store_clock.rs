//! The `SessionStore` contract as of the caller's `now`, run against both stores: every lifetime
//! (session idle and absolute expiry, refresh-token expiry and grace, a `jti` denial's `until`,
//! a user revocation's `keep_until`, a throttle window) ends when the caller's clock says so,
//! not when Redis's clock expires a key. Each test owns a manual clock, gives it to the store,
//! reads `now` from it and advances it: no test here sleeps.

use crate::common;

use std::time::Duration;

use common::RedisServer;
use portcullis::clock::Clock;
use portcullis::store::{
    Attempts, MemoryStore, RedisSettings, RedisStore, RefreshGrant, RotateOutcome, Rotation,
    SessionRecord, SessionStore, TokenRef, Topology, Verdict, jti_key,
};

const ISS: &str = "https://issuer.test";

/// A token as the session stage sees it, issued at `iat` and expiring an hour later.
struct Tok {
    token_key: [u8; 32],
    jti_key: [u8; 32],
    jti: String,
    sub: String,
    sid: String,
    iat: i64,
    require_session: bool,
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Tok {
    fn new(sub: &str, sid: &str, iat: i64) -> Self {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut token_key = [0u8; 32];
        token_key[..8].copy_from_slice(&n.to_le_bytes());
        let jti = format!("clock-jti-{n}");
        Self {
            token_key,
            jti_key: jti_key(ISS, &jti),
            jti,
            sub: sub.into(),
            sid: sid.into(),
            iat,
            require_session: true,
        }
    }

    fn stateless(sub: &str, iat: i64) -> Self {
        Self {
            require_session: false,
            ..Self::new(sub, "-", iat)
        }
    }

    fn r(&self) -> TokenRef<'_> {
        TokenRef {
            token_key: &self.token_key,
            jti_key: &self.jti_key,
            expires_at: self.iat + 3600,
            subject: &self.sub,
            user: &self.sub,
            session: Some(&self.sid),
            issued_at: self.iat,
            require_session: self.require_session,
        }
    }
}

/// A session created at `at`, idle for `idle` seconds, ending `absolute` seconds after `at`.
fn record(sid: &str, sub: &str, at: i64, idle: i64, absolute: i64) -> SessionRecord {
    SessionRecord {
        id: sid.into(),
        subject: sub.into(),
        created_at: at,
        last_seen: at,
        ip: "192.0.2.7".into(),
        user_agent: "test".into(),
        absolute_expiry: at + absolute,
        idle_expiry: at + idle,
        remember_me: false,
        provider: None,
    }
}

fn rotation<'a>(sid: &'a str, presented: u8, successor: u8, at: i64) -> Rotation<'a> {
    Rotation {
        subject: "alice",
        session: sid,
        presented: [presented; 32],
        successor: [successor; 32],
        successor_expires_at: at + 100,
        now: at,
        grace: 10,
        idle: 1800,
    }
}

async fn redis_store(server: &RedisServer, clock: &Clock) -> RedisStore {
    let settings = RedisSettings {
        // Each test's Redis is a new deployment's: its epoch must not cut off the test's tokens.
        first_start: true,
        ..RedisSettings::new(Topology::Single(server.url()))
    };
    let store = RedisStore::connect(&settings, clock.clone()).await.unwrap();
    // Cached verdicts are what these tests check against a later `now`: they need the
    // subscription that lets the store cache them.
    assert!(
        common::eventually(Duration::from_secs(5), || async {
            store.cache().is_subscribed()
        })
        .await
        .is_some(),
        "never subscribed"
    );
    store
}

/// Generates `name::memory` and `name::redis` from one async body `|store, clock| { ... }`.
macro_rules! contract {
    ($name:ident, |$store:ident, $clock:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                let $clock = Clock::manual();
                let $store = MemoryStore::new($clock.clone());
                $body
            }

            #[tokio::test]
            async fn redis() {
                let server = RedisServer::start();
                let $clock = Clock::manual();
                let $store = redis_store(&server, &$clock).await;
                $body
            }
        }
    };
}

contract!(
    a_cached_verdict_ends_at_its_sessions_idle_expiry_at_a_later_now,
    |store, clock| {
        let n = clock.now();
        let s = record("idle", "alice", n, 100, 3600);
        store.create_session(s, None).await.unwrap();
        let t = Tok::new("alice", "idle", n);
        // Twice: the second answer may come from the local cache.
        assert_eq!(store.check(&t.r(), n).await.unwrap(), Verdict::Alive);
        assert_eq!(store.check(&t.r(), n).await.unwrap(), Verdict::Alive);
        clock.advance(Duration::from_secs(99));
        assert_eq!(
            store.check(&t.r(), clock.now()).await.unwrap(),
            Verdict::Alive
        );
        clock.advance(Duration::from_secs(1));
        let later = clock.now();
        assert_eq!(
            store.check(&t.r(), later).await.unwrap(),
            Verdict::SessionUnknown
        );
        assert_eq!(store.session("alice", "idle", later).await.unwrap(), None);
        assert!(store.sessions_of("alice", later).await.unwrap().is_empty());
    }
);

contract!(
    a_cached_verdict_ends_at_its_sessions_absolute_expiry_at_a_later_now,
    |store, clock| {
        let n = clock.now();
        let s = record("abs", "alice", n, 1800, 50);
        store.create_session(s, None).await.unwrap();
        let t = Tok::new("alice", "abs", n);
        assert_eq!(store.check(&t.r(), n).await.unwrap(), Verdict::Alive);
        assert_eq!(store.check(&t.r(), n).await.unwrap(), Verdict::Alive);
        clock.advance(Duration::from_secs(50));
        let later = clock.now();
        assert_eq!(
            store.check(&t.r(), later).await.unwrap(),
            Verdict::SessionUnknown
        );
        assert_eq!(store.session("alice", "abs", later).await.unwrap(), None);
    }
);

contract!(
    a_refresh_token_past_its_expiry_does_not_rotate_at_a_later_now,
    |store, clock| {
        let n = clock.now();
        let grant = RefreshGrant {
            hash: [1; 32],
            expires_at: n + 100,
        };
        let s = record("s1", "alice", n, 3600, 7200);
        store.create_session(s, Some(grant)).await.unwrap();
        clock.advance(Duration::from_secs(100));
        let later = clock.now();
        assert_eq!(
            store
                .rotate_refresh(&rotation("s1", 1, 2, later))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
        // Only the token has expired: its session is still alive.
        let t = Tok::new("alice", "s1", n);
        assert_eq!(store.check(&t.r(), later).await.unwrap(), Verdict::Alive);

        // A successor expires at its own instant too (100 s after its rotation here).
        let grant = RefreshGrant {
            hash: [3; 32],
            expires_at: later + 100,
        };
        let s = record("s2", "alice", later, 3600, 7200);
        store.create_session(s, Some(grant)).await.unwrap();
        let rotated = store
            .rotate_refresh(&rotation("s2", 3, 4, later + 99))
            .await
            .unwrap();
        assert!(matches!(rotated, RotateOutcome::Rotated(_)), "{rotated:?}");
        clock.advance(Duration::from_secs(199));
        assert_eq!(
            store
                .rotate_refresh(&rotation("s2", 4, 5, clock.now()))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
    }
);

contract!(
    the_rotation_grace_ends_at_the_callers_now,
    |store, clock| {
        let n = clock.now();
        let grant = RefreshGrant {
            hash: [1; 32],
            expires_at: n + 86_400,
        };
        let s = record("s1", "alice", n, 3600, 7200);
        store.create_session(s, Some(grant)).await.unwrap();
        let rotated = store
            .rotate_refresh(&rotation("s1", 1, 2, n))
            .await
            .unwrap();
        assert!(matches!(rotated, RotateOutcome::Rotated(_)), "{rotated:?}");
        // The grace is 10 s: the old token at n + 10 is a concurrent request, at n + 11 reuse.
        clock.advance(Duration::from_secs(10));
        let again = store
            .rotate_refresh(&rotation("s1", 1, 3, clock.now()))
            .await
            .unwrap();
        assert!(matches!(again, RotateOutcome::Concurrent(_)), "{again:?}");
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            store
                .rotate_refresh(&rotation("s1", 1, 3, clock.now()))
                .await
                .unwrap(),
            RotateOutcome::ReuseDetected {
                subject: "alice".into()
            }
        );
    }
);

contract!(
    a_denied_jti_is_refused_until_its_until_and_not_after,
    |store, clock| {
        let n = clock.now();
        let s = record("s1", "alice", n, 3600, 7200);
        store.create_session(s, None).await.unwrap();
        let t = Tok::new("alice", "s1", n);
        assert_eq!(store.check(&t.r(), n).await.unwrap(), Verdict::Alive);
        store.deny_jti(ISS, &t.jti, n + 100, n).await.unwrap();
        clock.advance(Duration::from_secs(99));
        // Twice: the second answer may come from the local cache.
        for _ in 0..2 {
            assert_eq!(
                store.check(&t.r(), clock.now()).await.unwrap(),
                Verdict::JtiDenied
            );
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            store.check(&t.r(), clock.now()).await.unwrap(),
            Verdict::Alive
        );
    }
);

contract!(
    a_denial_whose_until_has_passed_at_the_callers_now_denies_nothing,
    |store, clock| {
        let n = clock.now();
        let s = record("s1", "alice", n, 3600, 7200);
        store.create_session(s, None).await.unwrap();
        let t = Tok::new("alice", "s1", n);
        store.deny_jti(ISS, &t.jti, n - 1, n).await.unwrap();
        assert_eq!(store.check(&t.r(), n).await.unwrap(), Verdict::Alive);
    }
);

contract!(
    a_user_revocation_holds_at_every_later_now_before_keep_until,
    |store, clock| {
        let n = clock.now();
        let earlier = Tok::stateless("alice", n - 5);
        assert_eq!(store.check(&earlier.r(), n).await.unwrap(), Verdict::Alive);
        store.revoke_user("alice", n, n + 900).await.unwrap();
        for step in [1, 450, 448] {
            clock.advance(Duration::from_secs(step));
            assert_eq!(
                store.check(&earlier.r(), clock.now()).await.unwrap(),
                Verdict::UserRevoked,
                "{}s after the revocation",
                clock.now() - n
            );
        }
        // A token issued after the mark is not refused by it.
        let later = Tok::stateless("alice", n + 1);
        assert_eq!(
            store.check(&later.r(), clock.now()).await.unwrap(),
            Verdict::Alive
        );
    }
);

contract!(
    a_throttle_window_ends_when_the_callers_now_reaches_its_end,
    |store, clock| {
        let n = clock.now();
        let first = store.throttle_hit("user:alice", 60, n).await.unwrap();
        assert_eq!(
            first,
            Attempts {
                count: 1,
                resets_at: n + 60
            }
        );
        clock.advance(Duration::from_secs(59));
        let second = store
            .throttle_hit("user:alice", 60, clock.now())
            .await
            .unwrap();
        assert_eq!(
            second,
            Attempts {
                count: 2,
                resets_at: n + 60
            }
        );
        clock.advance(Duration::from_secs(1));
        let at_end = clock.now();
        assert_eq!(
            store.throttle_peek("user:alice", at_end).await.unwrap(),
            Attempts::NONE
        );
        // The next failure opens a new window from the caller's now.
        assert_eq!(
            store.throttle_hit("user:alice", 60, at_end).await.unwrap(),
            Attempts {
                count: 1,
                resets_at: at_end + 60
            }
        );
    }
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Values an earlier release wrote, before the instants were kept in them, are read as their
/// key's expiry says: across an upgrade a denial and a mark still refuse, a counter still counts.
#[tokio::test]
async fn values_written_before_they_held_their_instants_still_refuse_and_count() {
    use base64::Engine as _;
    let server = RedisServer::start();
    let clock = Clock::manual();
    let store = redis_store(&server, &clock).await;
    let n = clock.now();
    let s = record("s1", "alice", n, 3600, 7200);
    store.create_session(s, None).await.unwrap();
    // A denial as it was written: `1`, expiring with the token.
    let denied = Tok::new("alice", "s1", n);
    let jti = format!("portcullis:{{j:{}}}", hex(&denied.jti_key));
    server.cli(&["SET", &jti, "1", "EX", "600"]);
    // A mark as it was written: only `before`.
    let revoked = Tok::stateless("bob", n - 5);
    let bob = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("bob");
    let rb = format!("portcullis:{{u:{bob}}}:rb");
    server.cli(&["SET", &rb, &n.to_string(), "EX", "900"]);
    // A counter as it was written: only its count, its window in its TTL.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"user:carol");
    let counter = format!("portcullis:{{t:{}}}", hex(digest.as_ref()));
    server.cli(&["SET", &counter, "3", "EX", "60"]);

    clock.advance(Duration::from_secs(30));
    let later = clock.now();
    assert_eq!(
        store.check(&denied.r(), later).await.unwrap(),
        Verdict::JtiDenied
    );
    assert_eq!(
        store.check(&revoked.r(), later).await.unwrap(),
        Verdict::UserRevoked
    );
    let seen = store.throttle_peek("user:carol", later).await.unwrap();
    assert_eq!(seen.count, 3);
    // The window is what the key's TTL (Redis's clock, still about 60 s) says.
    assert!(
        (later + 58..=later + 60).contains(&seen.resets_at),
        "{seen:?} at {later}"
    );
    let hit = store.throttle_hit("user:carol", 60, later).await.unwrap();
    assert_eq!(hit.count, 4);
    assert!(hit.resets_at <= seen.resets_at, "{hit:?} after {seen:?}");
    // Written again, a mark holds its keep_until from then on.
    store.revoke_user("bob", n, n + 900).await.unwrap();
    assert_eq!(server.cli(&["GET", &rb]).trim(), format!("{n} {}", n + 900));
}
