//! The `SessionStore` contract, one suite run against both implementations: the in-process
//! memory store and the Redis store (each Redis test on its own `redis-server`).

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{RedisServer, now};
use portcullis::clock::Clock;
use portcullis::store::{
    Attempts, MemoryStore, RedisSettings, RedisStore, RefreshGrant, RotateOutcome, Rotation,
    SessionRecord, SessionStore, TokenRef, Topology, Verdict, jti_key,
};

const ISS: &str = "https://issuer.test";

/// A token as the session stage sees it.
struct Tok {
    token_key: [u8; 32],
    jti_key: [u8; 32],
    sub: String,
    /// The user's name in the store: `sub`, or `<iss>#<sub>` for another issuer's user.
    user: String,
    sid: Option<String>,
    iat: i64,
    exp: i64,
    require_session: bool,
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Tok {
    fn new(sub: &str, sid: &str) -> Self {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut token_key = [0u8; 32];
        token_key[..8].copy_from_slice(&n.to_le_bytes());
        Self {
            token_key,
            jti_key: jti_key(ISS, &format!("jti-{n}")),
            sub: sub.into(),
            user: sub.into(),
            sid: Some(sid.into()),
            iat: now() - 5,
            exp: now() + 600,
            require_session: true,
        }
    }

    fn jti(&self) -> String {
        let n = u64::from_le_bytes(self.token_key[..8].try_into().unwrap());
        format!("jti-{n}")
    }

    fn r(&self) -> TokenRef<'_> {
        TokenRef {
            token_key: &self.token_key,
            jti_key: &self.jti_key,
            expires_at: self.exp,
            subject: &self.sub,
            user: &self.user,
            session: self.sid.as_deref(),
            issued_at: self.iat,
            require_session: self.require_session,
        }
    }
}

fn record(sid: &str, sub: &str) -> SessionRecord {
    let n = now();
    SessionRecord {
        id: sid.into(),
        subject: sub.into(),
        created_at: n,
        last_seen: n,
        ip: "192.0.2.7".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0".into(),
        absolute_expiry: n + 3600,
        idle_expiry: n + 1800,
        remember_me: false,
        provider: None,
    }
}

fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

async fn redis_store(server: &RedisServer, prefix: &str) -> RedisStore {
    let store = RedisStore::connect(
        &RedisSettings {
            topology: Topology::Single(server.url()),
            key_prefix: prefix.into(),
            timeout: Duration::from_millis(500),
            cache_capacity: 10_000,
            cache_ttl: Duration::from_secs(30),
            password: None,
            // Each test's Redis is a new deployment's, and its tokens are minted around its start:
            // the epoch it creates must not cut them off (the cutoff has suites of its own).
            first_start: true,
            ..RedisSettings::new(Topology::Single(String::new()))
        },
        Clock::system(),
    )
    .await
    .unwrap();
    // Tests that depend on invalidation wait for the subscription to be confirmed.
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

/// Generates `name::memory` and `name::redis` from one async body `|store| { ... }`.
macro_rules! contract {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                let $store = MemoryStore::new(Clock::system());
                $body
            }

            #[tokio::test]
            async fn redis() {
                let server = RedisServer::start();
                let $store = redis_store(&server, "t").await;
                $body
            }
        }
    };
}

contract!(a_live_session_of_the_subject_is_alive, |store| {
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    let t = Tok::new("alice", "s1");
    assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
    // Twice: the second answer may come from the local cache and must agree.
    assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
});

contract!(an_unknown_or_foreign_session_is_refused, |store| {
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    let unknown = Tok::new("alice", "nope");
    assert_eq!(
        store.check(&unknown.r(), now()).await.unwrap(),
        Verdict::SessionUnknown
    );
    let foreign = Tok::new("bob", "s1");
    let v = store.check(&foreign.r(), now()).await.unwrap();
    assert!(
        matches!(v, Verdict::SessionUnknown | Verdict::SessionMismatch),
        "{v:?}"
    );
    let mut no_sid = Tok::new("alice", "s1");
    no_sid.sid = None;
    assert_eq!(
        store.check(&no_sid.r(), now()).await.unwrap(),
        Verdict::SessionUnknown
    );
});

contract!(tokens_of_issuers_without_sessions_need_none, |store| {
    let mut t = Tok::new("carol", "whatever");
    t.require_session = false;
    assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
});

contract!(
    revoking_a_session_refuses_its_tokens_at_once_even_when_cached,
    |store| {
        store
            .create_session(record("s1", "alice"), None)
            .await
            .unwrap();
        store
            .create_session(record("s2", "alice"), None)
            .await
            .unwrap();
        let t1 = Tok::new("alice", "s1");
        let t2 = Tok::new("alice", "s2");
        assert_eq!(store.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
        assert_eq!(store.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);
        assert!(store.revoke_session("alice", "s1").await.unwrap());
        assert_eq!(
            store.check(&t1.r(), now()).await.unwrap(),
            Verdict::SessionUnknown
        );
        assert_eq!(store.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);
        assert!(
            !store.revoke_session("alice", "s1").await.unwrap(),
            "already gone"
        );
    }
);

contract!(
    a_user_revocation_marks_the_users_name_so_the_same_subject_at_another_issuer_is_another_user,
    |store| {
        let mut own = Tok::new("alice", "-");
        own.require_session = false;
        let mut external = Tok::new("alice", "-");
        external.require_session = false;
        external.user = "https://idp.test#alice".into();
        for t in [&own, &external] {
            assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
        }
        let n = now();
        store
            .revoke_user("https://idp.test#alice", n, n + 900)
            .await
            .unwrap();
        assert_eq!(
            store.check(&external.r(), now()).await.unwrap(),
            Verdict::UserRevoked
        );
        assert_eq!(
            store.check(&own.r(), now()).await.unwrap(),
            Verdict::Alive,
            "the gateway's alice"
        );
        store.revoke_user("alice", n, n + 900).await.unwrap();
        assert_eq!(
            store.check(&own.r(), now()).await.unwrap(),
            Verdict::UserRevoked
        );
    }
);

contract!(a_user_cannot_revoke_another_users_session, |store| {
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    assert!(!store.revoke_session("mallory", "s1").await.unwrap());
    let t = Tok::new("alice", "s1");
    assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
});

contract!(
    revoking_a_user_refuses_every_earlier_token_and_ends_every_session,
    |store| {
        store
            .create_session(record("s1", "alice"), None)
            .await
            .unwrap();
        store
            .create_session(record("s2", "alice"), None)
            .await
            .unwrap();
        store
            .create_session(record("b1", "bob"), None)
            .await
            .unwrap();
        let mut stateless = Tok::new("alice", "-");
        stateless.require_session = false;
        let t1 = Tok::new("alice", "s1");
        let bob = Tok::new("bob", "b1");
        for t in [&t1, &stateless, &bob] {
            assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
        }
        let n = now();
        store.revoke_user("alice", n, n + 900).await.unwrap();
        assert_eq!(
            store.check(&stateless.r(), now()).await.unwrap(),
            Verdict::UserRevoked
        );
        assert_ne!(store.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
        assert_eq!(store.check(&bob.r(), now()).await.unwrap(), Verdict::Alive);
        assert!(store.sessions_of("alice", now()).await.unwrap().is_empty());
        // A token issued after the revocation, on a new session, works.
        store
            .create_session(record("s3", "alice"), None)
            .await
            .unwrap();
        let mut fresh = Tok::new("alice", "s3");
        fresh.iat = n + 1;
        assert_eq!(
            store.check(&fresh.r(), n + 1).await.unwrap(),
            Verdict::Alive
        );
    }
);

contract!(a_denied_jti_is_refused_for_its_issuer_only, |store| {
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    let t = Tok::new("alice", "s1");
    let other = Tok::new("alice", "s1");
    assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
    store.deny_jti(ISS, &t.jti(), t.exp, now()).await.unwrap();
    assert_eq!(
        store.check(&t.r(), now()).await.unwrap(),
        Verdict::JtiDenied
    );
    assert_eq!(
        store.check(&other.r(), now()).await.unwrap(),
        Verdict::Alive
    );
    // The same jti from another issuer is another token.
    store
        .deny_jti("https://other.test", &other.jti(), other.exp, now())
        .await
        .unwrap();
    assert_eq!(
        store.check(&other.r(), now()).await.unwrap(),
        Verdict::Alive
    );
});

contract!(expired_sessions_are_refused_and_not_listed, |store| {
    let n = now();
    let mut idle = record("idle", "alice");
    idle.idle_expiry = n + 2;
    let mut absolute = record("abs", "alice");
    absolute.absolute_expiry = n + 2;
    store.create_session(idle, None).await.unwrap();
    store.create_session(absolute, None).await.unwrap();
    store
        .create_session(record("live", "alice"), None)
        .await
        .unwrap();
    // Time is the caller's: checking "as of" later needs no sleep.
    let later = n + 3;
    assert_eq!(
        store
            .check(&Tok::new("alice", "idle").r(), later)
            .await
            .unwrap(),
        Verdict::SessionUnknown
    );
    assert_eq!(
        store
            .check(&Tok::new("alice", "abs").r(), later)
            .await
            .unwrap(),
        Verdict::SessionUnknown
    );
    let listed: Vec<String> = store
        .sessions_of("alice", later)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ["live"]);
});

contract!(
    sessions_are_listed_newest_first_with_their_details,
    |store| {
        let mut old = record("old", "alice");
        old.created_at -= 100;
        store.create_session(old, None).await.unwrap();
        store
            .create_session(record("new", "alice"), None)
            .await
            .unwrap();
        store
            .create_session(record("b", "bob"), None)
            .await
            .unwrap();
        let listed = store.sessions_of("alice", now()).await.unwrap();
        assert_eq!(
            listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            ["new", "old"]
        );
        assert_eq!(listed[0], record("new", "alice"));
        assert_eq!(
            store.session("alice", "new", now()).await.unwrap(),
            Some(record("new", "alice"))
        );
        assert_eq!(store.session("bob", "new", now()).await.unwrap(), None);
    }
);

fn rotation<'a>(sub: &'a str, sid: &'a str, presented: u8, successor: u8, at: i64) -> Rotation<'a> {
    Rotation {
        subject: sub,
        session: sid,
        presented: hash(presented),
        successor: hash(successor),
        successor_expires_at: at + 86_400,
        now: at,
        grace: 10,
        idle: 1800,
    }
}

fn grant(n: u8) -> Option<RefreshGrant> {
    Some(RefreshGrant {
        hash: hash(n),
        expires_at: now() + 86_400,
    })
}

contract!(
    rotation_replaces_the_token_and_the_old_one_is_dead_after_the_grace_window,
    |store| {
        let n = now();
        store
            .create_session(record("s1", "alice"), grant(1))
            .await
            .unwrap();
        let rotated = store
            .rotate_refresh(&rotation("alice", "s1", 1, 2, n))
            .await
            .unwrap();
        let RotateOutcome::Rotated(session) = rotated else {
            panic!("{rotated:?}")
        };
        assert_eq!(session.last_seen, n);
        assert_eq!(session.idle_expiry, n + 1800);
        // The successor rotates in turn.
        assert!(matches!(
            store
                .rotate_refresh(&rotation("alice", "s1", 2, 3, n + 1))
                .await
                .unwrap(),
            RotateOutcome::Rotated(_)
        ));
        // Token 1 again, long after: reuse, and the whole session is revoked.
        let reuse = store
            .rotate_refresh(&rotation("alice", "s1", 1, 9, n + 60))
            .await
            .unwrap();
        assert_eq!(
            reuse,
            RotateOutcome::ReuseDetected {
                subject: "alice".into()
            }
        );
        assert_eq!(
            store
                .check(&Tok::new("alice", "s1").r(), n + 60)
                .await
                .unwrap(),
            Verdict::SessionUnknown
        );
        // The family is dead: the newest token no longer works either.
        assert_eq!(
            store
                .rotate_refresh(&rotation("alice", "s1", 3, 4, n + 61))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
    }
);

contract!(
    an_old_token_inside_the_grace_window_is_concurrent_not_reuse,
    |store| {
        let n = now();
        store
            .create_session(record("s1", "alice"), grant(1))
            .await
            .unwrap();
        assert!(matches!(
            store
                .rotate_refresh(&rotation("alice", "s1", 1, 2, n))
                .await
                .unwrap(),
            RotateOutcome::Rotated(_)
        ));
        assert!(matches!(
            store
                .rotate_refresh(&rotation("alice", "s1", 1, 3, n + 5))
                .await
                .unwrap(),
            RotateOutcome::Concurrent(_)
        ));
        assert_eq!(
            store
                .check(&Tok::new("alice", "s1").r(), n + 5)
                .await
                .unwrap(),
            Verdict::Alive
        );
        // The concurrent call issued no successor.
        assert_eq!(
            store
                .rotate_refresh(&rotation("alice", "s1", 3, 4, n + 6))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
    }
);

contract!(
    twenty_parallel_rotations_of_one_token_rotate_exactly_once,
    |store| {
        let n = now();
        store
            .create_session(record("s1", "alice"), grant(1))
            .await
            .unwrap();
        let store = Arc::new(store);
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                store
                    .rotate_refresh(&rotation("alice", "s1", 1, 100 + i, n))
                    .await
                    .unwrap()
            }));
        }
        let mut rotated = 0;
        let mut concurrent = 0;
        for t in tasks {
            match t.await.unwrap() {
                RotateOutcome::Rotated(_) => rotated += 1,
                RotateOutcome::Concurrent(_) => concurrent += 1,
                other => panic!("false verdict inside the grace window: {other:?}"),
            }
        }
        assert_eq!((rotated, concurrent), (1, 19));
        assert_eq!(
            store.check(&Tok::new("alice", "s1").r(), n).await.unwrap(),
            Verdict::Alive
        );
    }
);

contract!(
    refresh_tokens_are_bound_to_their_session_and_user,
    |store| {
        let n = now();
        store
            .create_session(record("s1", "alice"), grant(1))
            .await
            .unwrap();
        store
            .create_session(record("b1", "bob"), grant(2))
            .await
            .unwrap();
        // Alice's token presented for Bob's session, or under Bob's name: invalid, and nothing revoked.
        assert_eq!(
            store
                .rotate_refresh(&rotation("alice", "b1", 1, 3, n))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
        assert_eq!(
            store
                .rotate_refresh(&rotation("bob", "s1", 1, 3, n))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
        assert_eq!(
            store
                .rotate_refresh(&rotation("alice", "s1", 7, 3, n))
                .await
                .unwrap(),
            RotateOutcome::Invalid
        );
        assert!(matches!(
            store
                .rotate_refresh(&rotation("alice", "s1", 1, 3, n))
                .await
                .unwrap(),
            RotateOutcome::Rotated(_)
        ));
        assert!(matches!(
            store
                .rotate_refresh(&rotation("bob", "b1", 2, 4, n))
                .await
                .unwrap(),
            RotateOutcome::Rotated(_)
        ));
    }
);

contract!(rotation_enforces_idle_and_absolute_lifetimes, |store| {
    let n = now();
    let mut s = record("s1", "alice");
    s.idle_expiry = n + 100;
    s.absolute_expiry = n + 1000;
    store.create_session(s, grant(1)).await.unwrap();
    // Idle extension is capped at the absolute expiry.
    let RotateOutcome::Rotated(after) = store
        .rotate_refresh(&Rotation {
            idle: 5000,
            ..rotation("alice", "s1", 1, 2, n + 50)
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(after.idle_expiry, n + 1000);
    // Past the idle expiry: refused and the session ends.
    let mut s = record("s2", "alice");
    s.idle_expiry = n + 100;
    store.create_session(s, grant(3)).await.unwrap();
    assert_eq!(
        store
            .rotate_refresh(&rotation("alice", "s2", 3, 4, n + 101))
            .await
            .unwrap(),
        RotateOutcome::Invalid
    );
    assert_eq!(store.session("alice", "s2", n).await.unwrap(), None);
});

// Login throttling. Both stores measure windows with the caller's `now` (tests/store_clock.rs
// advances it); these tests use the real time, which `within_a_second_of` tolerates.

fn within_a_second_of(actual: i64, expected: i64) -> bool {
    (expected - 1..=expected).contains(&actual)
}

contract!(failures_are_counted_within_one_window, |store| {
    let n = now();
    let first = store.throttle_hit("user:alice", 60, n).await.unwrap();
    assert_eq!(first.count, 1);
    assert!(within_a_second_of(first.resets_at, n + 60), "{first:?}");
    let second = store.throttle_hit("user:alice", 60, n).await.unwrap();
    let third = store.throttle_hit("user:alice", 60, n).await.unwrap();
    assert_eq!((second.count, third.count), (2, 3));
    // Later failures do not extend the window.
    assert!(
        third.resets_at <= first.resets_at,
        "{third:?} after {first:?}"
    );
    // A longer window asked later does not move it either: it started at the first failure.
    let fourth = store.throttle_hit("user:alice", 3600, n).await.unwrap();
    assert_eq!(fourth.count, 4);
    assert!(fourth.resets_at <= first.resets_at, "{fourth:?}");
});

contract!(peeking_does_not_count, |store| {
    let n = now();
    assert_eq!(
        store.throttle_peek("ip:203.0.113.9", n).await.unwrap(),
        Attempts {
            count: 0,
            resets_at: 0
        }
    );
    let hit = store.throttle_hit("ip:203.0.113.9", 60, n).await.unwrap();
    for _ in 0..3 {
        let seen = store.throttle_peek("ip:203.0.113.9", n).await.unwrap();
        assert_eq!(seen.count, 1);
        assert!(
            within_a_second_of(seen.resets_at, hit.resets_at),
            "{seen:?}"
        );
    }
    assert_eq!(
        store
            .throttle_hit("ip:203.0.113.9", 60, n)
            .await
            .unwrap()
            .count,
        2
    );
});

contract!(clearing_a_key_starts_its_count_again, |store| {
    let n = now();
    for _ in 0..4 {
        store.throttle_hit("user:alice", 60, n).await.unwrap();
    }
    store.throttle_hit("ip:192.0.2.7", 60, n).await.unwrap();
    store.throttle_clear("user:alice").await.unwrap();
    assert_eq!(store.throttle_peek("user:alice", n).await.unwrap().count, 0);
    assert_eq!(
        store
            .throttle_peek("user:alice", n)
            .await
            .unwrap()
            .resets_at,
        0
    );
    assert_eq!(
        store.throttle_hit("user:alice", 60, n).await.unwrap().count,
        1
    );
    // Only that key: the client's address keeps its count.
    assert_eq!(
        store.throttle_peek("ip:192.0.2.7", n).await.unwrap().count,
        1
    );
    // Clearing what counts nothing is not an error.
    store.throttle_clear("user:nobody").await.unwrap();
});

contract!(a_window_ends_and_its_counter_disappears, |store| {
    let first = store.throttle_hit("user:bob", 1, now()).await.unwrap();
    assert_eq!(first.count, 1);
    assert_eq!(
        store
            .throttle_hit("user:bob", 1, now())
            .await
            .unwrap()
            .count,
        2
    );
    let ended = common::eventually(Duration::from_secs(5), || async {
        store.throttle_peek("user:bob", now()).await.unwrap()
            == Attempts {
                count: 0,
                resets_at: 0,
            }
    })
    .await;
    assert!(ended.is_some(), "a 1 s window was still counting after 5 s");
    // The next failure opens a new window.
    let n = now();
    let next = store.throttle_hit("user:bob", 1, n).await.unwrap();
    assert_eq!(next.count, 1);
    assert!(within_a_second_of(next.resets_at, n + 1), "{next:?}");
});

contract!(keys_are_counted_independently_whatever_they_hold, |store| {
    let n = now();
    let keys = [
        "user:alice",
        "user:Alice",
        "ip:203.0.113.9",
        "ip:2001:db8::1",
        "user:alice smith",
        "user:{alice}",
        "user:}{",
        "user:a:b:c",
        "user:ünïcødé 🦀",
        "user:*",
        "user:alice\r\nDEL *",
        "user:\u{0}",
        "",
    ];
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..=i {
            store.throttle_hit(key, 60, n).await.unwrap();
        }
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            store.throttle_peek(key, n).await.unwrap().count,
            i as u32 + 1,
            "{key:?}"
        );
    }
    store.throttle_clear("user:{alice}").await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        let expected = if *key == "user:{alice}" {
            0
        } else {
            i as u32 + 1
        };
        assert_eq!(
            store.throttle_peek(key, n).await.unwrap().count,
            expected,
            "{key:?}"
        );
    }
});

#[tokio::test]
async fn throttle_keys_reach_redis_only_hashed_under_the_prefix() {
    let server = RedisServer::start();
    let store = redis_store(&server, "pc").await;
    store
        .throttle_hit("user:{alice} smith", 60, now())
        .await
        .unwrap();
    let names = server.cli(&["--scan"]);
    // Besides the store's epoch marker, the one counter.
    let names: Vec<&str> = names.lines().filter(|n| *n != "pc:{epoch}").collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = names[0];
    let digest = name
        .strip_prefix("pc:{t:")
        .and_then(|rest| rest.strip_suffix('}'))
        .unwrap_or_else(|| panic!("unexpected key name {name:?}"));
    assert_eq!(digest.len(), 64, "{name:?}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{name:?}");
    // The window is always set with the count.
    let ttl: i64 = server.cli(&["TTL", name]).trim().parse().unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn two_instances_count_into_one_window() {
    let server = RedisServer::start();
    let a = redis_store(&server, "t").await;
    let b = redis_store(&server, "t").await;
    let n = now();
    a.throttle_hit("user:alice", 60, n).await.unwrap();
    b.throttle_hit("user:alice", 60, n).await.unwrap();
    assert_eq!(a.throttle_hit("user:alice", 60, n).await.unwrap().count, 3);
    b.throttle_clear("user:alice").await.unwrap();
    assert_eq!(a.throttle_peek("user:alice", n).await.unwrap().count, 0);
}

#[tokio::test]
async fn with_redis_down_throttle_counters_are_errors_not_zero() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, "t").await;
    store.throttle_hit("user:alice", 60, now()).await.unwrap();
    server.kill();
    // The caller fails closed (503): an unknown count is never taken for "no failures".
    assert!(store.throttle_hit("user:alice", 60, now()).await.is_err());
    assert!(store.throttle_peek("user:alice", now()).await.is_err());
    assert!(store.throttle_clear("user:alice").await.is_err());
}

/// Two Redis stores on one server stand for two gateway instances.
#[tokio::test]
async fn a_revocation_on_one_instance_reaches_another_that_had_the_verdict_cached() {
    let server = RedisServer::start();
    let a = redis_store(&server, "t").await;
    let b = redis_store(&server, "t").await;
    a.create_session(record("s1", "alice"), None).await.unwrap();
    let t = Tok::new("alice", "s1");
    assert_eq!(b.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
    assert_eq!(b.cache().alive_count(), 1, "b holds the verdict locally");
    a.revoke_session("alice", "s1").await.unwrap();
    let took = common::eventually(Duration::from_secs(2), || async {
        b.check(&t.r(), now()).await.unwrap() != Verdict::Alive
    })
    .await;
    assert!(
        took.is_some(),
        "instance b still accepted a revoked session after 2s"
    );
}

#[tokio::test]
async fn with_redis_down_uncached_answers_are_errors_and_cached_revocations_stay_revoked() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, "t").await;
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    store
        .create_session(record("s2", "alice"), None)
        .await
        .unwrap();
    let revoked = Tok::new("alice", "s1");
    store.revoke_session("alice", "s1").await.unwrap();
    server.kill();
    // Fail closed: an answer the cache does not hold is an error (the gateway's 503).
    let unknown = Tok::new("alice", "s2");
    assert!(store.check(&unknown.r(), now()).await.is_err());
    // A revocation already known locally stays a refusal, never "alive".
    assert_eq!(
        store.check(&revoked.r(), now()).await.unwrap(),
        Verdict::SessionUnknown
    );
    assert!(!store.is_healthy());
    // Redis returns (empty): the store recovers by itself.
    server.restart();
    store.create_session(record("s3", "alice"), None).await.ok();
    let recovered = common::eventually(Duration::from_secs(10), || async {
        store
            .create_session(record("s3", "alice"), None)
            .await
            .is_ok()
            && store.check(&Tok::new("alice", "s3").r(), now()).await.ok() == Some(Verdict::Alive)
    })
    .await;
    assert!(
        recovered.is_some(),
        "the store did not recover after redis came back"
    );
    assert!(
        common::eventually(Duration::from_secs(10), || async { store.is_healthy() })
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_killed_subscription_stops_positive_caching_until_resubscribed() {
    let server = RedisServer::start();
    let a = redis_store(&server, "t").await;
    let b = redis_store(&server, "t").await;
    a.create_session(record("s1", "alice"), None).await.unwrap();
    let t = Tok::new("alice", "s1");
    assert_eq!(b.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
    assert_eq!(b.cache().alive_count(), 1);
    server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    // Until b is subscribed again it holds no positive verdict: every check reads Redis, so a
    // revocation whose event b missed is still seen.
    let dropped = common::eventually(Duration::from_secs(5), || async {
        !b.cache().is_subscribed() || b.cache().alive_count() == 0
    })
    .await;
    assert!(dropped.is_some());
    a.revoke_session("alice", "s1").await.unwrap();
    assert_ne!(b.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            b.cache().is_subscribed()
        })
        .await
        .is_some()
    );
}

contract!(
    a_login_state_is_taken_once_and_not_after_it_expired,
    |store| {
        let n = now();
        store
            .put_login_state(&hash(1), "flow-1", n + 600, n)
            .await
            .unwrap();
        store
            .put_login_state(&hash(2), "flow-2", n + 600, n)
            .await
            .unwrap();
        assert_eq!(
            store
                .take_login_state(&hash(1), n)
                .await
                .unwrap()
                .as_deref(),
            Some("flow-1")
        );
        // Taken: gone, and the other flow is untouched.
        assert_eq!(store.take_login_state(&hash(1), n).await.unwrap(), None);
        assert_eq!(
            store
                .take_login_state(&hash(2), n + 1)
                .await
                .unwrap()
                .as_deref(),
            Some("flow-2")
        );
        // Past its instant on the caller's clock, whatever the store's own TTL.
        store
            .put_login_state(&hash(3), "flow-3", n + 10, n)
            .await
            .unwrap();
        assert_eq!(
            store.take_login_state(&hash(3), n + 10).await.unwrap(),
            None
        );
    }
);

contract!(a_provider_link_is_kept_with_its_session, |store| {
    let link = portcullis::store::ProviderLink {
        provider: "corp".into(),
        sub: "248289761001".into(),
        sid: Some("provider-session".into()),
        roles: vec!["reader".into()],
        permissions: vec!["docs:read".into()],
        id_token: Some("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIyNDgyODk3NjEwMDEifQ.c2ln".into()),
        refresh_token: Some("sealed-provider-refresh-token".into()),
    };
    let user = "https://idp.test#248289761001";
    let mut r = record("s1", user);
    r.provider = Some(link.clone());
    store.create_session(r, None).await.unwrap();
    let read = store.session(user, "s1", now()).await.unwrap().unwrap();
    assert_eq!(read.provider, Some(link.clone()));
    let listed = store.sessions_of(user, now()).await.unwrap();
    assert_eq!(listed[0].provider.as_ref().unwrap().provider, "corp");
    // A password login's session has none.
    store
        .create_session(record("s2", "alice"), None)
        .await
        .unwrap();
    let plain = store.session("alice", "s2", now()).await.unwrap().unwrap();
    assert_eq!(plain.provider, None);
    // Replaced in place (a rotated provider refresh token); never for another user's
    // session, nor for one that is gone.
    let mut rotated = link.clone();
    rotated.refresh_token = Some("sealed-successor".into());
    assert!(store.set_provider_link(user, "s1", &rotated).await.unwrap());
    let read = store.session(user, "s1", now()).await.unwrap().unwrap();
    assert_eq!(read.provider, Some(rotated.clone()));
    assert!(
        !store
            .set_provider_link("bob", "s1", &rotated)
            .await
            .unwrap()
    );
    store.revoke_session(user, "s1").await.unwrap();
    assert!(!store.set_provider_link(user, "s1", &rotated).await.unwrap());
    assert!(store.session(user, "s1", now()).await.unwrap().is_none());
});

contract!(a_first_use_is_recorded_until_its_instant, |store| {
    let n = now();
    assert!(store.first_use(&hash(7), n + 60, n).await.unwrap());
    assert!(!store.first_use(&hash(7), n + 60, n + 1).await.unwrap());
    // Past its instant on the caller's clock (whatever the store's own TTL), it is free
    // again: the provider-refresh interval is measured so.
    assert!(store.first_use(&hash(7), n + 120, n + 60).await.unwrap());
    assert!(!store.first_use(&hash(7), n + 120, n + 119).await.unwrap());
    assert!(
        store.first_use(&hash(8), n + 60, n).await.unwrap(),
        "another key"
    );
    // Concurrent first uses of one key: exactly one is first.
    let key = hash(9);
    let (a, b) = tokio::join!(
        store.first_use(&key, n + 60, n),
        store.first_use(&key, n + 60, n)
    );
    assert!(a.unwrap() ^ b.unwrap());
});

contract!(
    a_provider_session_is_indexed_to_its_user_until_its_instant,
    |store| {
        let n = now();
        assert_eq!(store.provider_sid_user(&hash(20), n).await.unwrap(), None);
        store
            .put_provider_sid(&hash(20), "https://idp.test#alice", n + 60, n)
            .await
            .unwrap();
        assert_eq!(
            store
                .provider_sid_user(&hash(20), n + 59)
                .await
                .unwrap()
                .as_deref(),
            Some("https://idp.test#alice")
        );
        // A second sign-in through the same provider session keeps the later instant.
        store
            .put_provider_sid(&hash(20), "https://idp.test#alice", n + 30, n + 1)
            .await
            .unwrap();
        assert!(
            store
                .provider_sid_user(&hash(20), n + 59)
                .await
                .unwrap()
                .is_some()
        );
        // Past it on the caller's clock, whatever the store's own TTL.
        assert_eq!(
            store.provider_sid_user(&hash(20), n + 60).await.unwrap(),
            None
        );
        assert_eq!(store.provider_sid_user(&hash(21), n).await.unwrap(), None);
    }
);
