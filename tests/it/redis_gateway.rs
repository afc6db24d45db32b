//! The Redis store seen from outside: real gateways on 127.0.0.1:0 in front of the recording echo
//! upstream, sharing a private `redis-server` on a free port (one per test, stopped by its pid).
//!
//! Two gateways on one Redis stand for two instances behind a load balancer: a revocation made
//! through A must be refused by B even though B had the token's verdict cached (docs/security.md 13,
//! 18). Then the failure behaviour: Redis killed, restarted empty, down at start, and the
//! invalidation subscription killed — never a 200 that the store could not vouch for.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use portcullis::config::Config;
use portcullis::store::SessionStore;
use serde_json::json;

/// The authenticated route every test uses.
const PATH: &str = "/api/check";

/// How long a revocation may take to reach another instance before the test fails. The target
/// (docs/security.md 13) is milliseconds; the measured delay is printed and put in every message.
const PROPAGATION: Duration = Duration::from_secs(2);

/// How long the gateway may take to recover once Redis is back (reconnect backoff ≤ 2 s).
const RECOVERY: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The `store:` section for a single Redis at `url`.
fn store_yaml(url: &str, prefix: &str) -> String {
    format!("store: {{ kind: redis, url: \"{url}\", key_prefix: {prefix}, timeout: 500ms }}")
}

/// A gateway on `url` with key `key`, subscribed to invalidations.
async fn gateway(url: &str, prefix: &str, key: TestKey) -> TestGateway {
    let gw = Setup {
        keys: vec![key],
        extra: store_yaml(url, prefix),
        ..Setup::default()
    }
    .start()
    .await;
    gw.wait_subscribed().await;
    gw
}

/// Two gateways (A and B) on one Redis, trusting the same key.
async fn two_instances(server: &RedisServer, prefix: &str) -> (TestGateway, TestGateway) {
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let b_key = same_key(&key);
    let a = gateway(&server.url(), prefix, key).await;
    let b = gateway(&server.url(), prefix, b_key).await;
    (a, b)
}

/// How long a refusal took to arrive, and on which request.
#[derive(Debug, Clone, Copy)]
struct Refused {
    after: Duration,
    attempt: u32,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused on request #{}, {:?} after the revocation call returned",
            self.attempt, self.after
        )
    }
}

/// Polls `gw` with `token` until it is refused.
async fn refused_within(gw: &TestGateway, token: &str, within: Duration) -> Option<Refused> {
    let attempts = std::cell::Cell::new(0u32);
    let after = eventually(within, || async {
        attempts.set(attempts.get() + 1);
        gw.get_bearer(PATH, token).await.status == StatusCode::UNAUTHORIZED
    })
    .await?;
    Some(Refused {
        after,
        attempt: attempts.get(),
    })
}

/// After a refusal, more attempts are refused too and none reaches the upstream.
async fn stays_refused(gw: &TestGateway, token: &str) {
    let before = gw.upstream.count();
    for _ in 0..5 {
        assert_eq!(
            gw.get_bearer(PATH, token).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        gw.upstream.count(),
        before,
        "the upstream received a request with a revoked token"
    );
}

// ---------------------------------------------------------------------------------------------
// docs/security.md 13 and 18 across instances
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec13_revoking_a_session_through_instance_a_is_refused_by_instance_b_that_had_it_cached() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server, "sec13").await;
    a.create_session("s-13", "alice").await;
    let token = a.token(json!({ "sid": "s-13" }));
    let other = a.token(json!({ "sid": "sid-alice" }));
    for _ in 0..2 {
        assert_eq!(b.get_bearer(PATH, &token).await.status, StatusCode::OK);
    }
    assert_eq!(b.get_bearer(PATH, &other).await.status, StatusCode::OK);
    assert!(
        b.redis().cache().alive_count() >= 2,
        "b holds the verdicts locally"
    );

    let started = Instant::now();
    assert!(a.store().revoke_session("alice", "s-13").await.unwrap());
    let took = refused_within(&b, &token, PROPAGATION).await;
    let elapsed = started.elapsed();
    let Some(took) = took else {
        panic!("b still accepted the revoked session {elapsed:?} after the revocation through a")
    };
    eprintln!("sec13: revoked through A; B {took} ({elapsed:?} including the revoke call)");
    stays_refused(&b, &token).await;
    stays_refused(&a, &token).await;
    // Only that session: the user's other session still works on both.
    assert_eq!(b.get_bearer(PATH, &other).await.status, StatusCode::OK);
    assert_eq!(a.get_bearer(PATH, &other).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sec18_logout_all_through_a_refuses_every_session_of_the_user_on_b() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server, "sec18").await;
    let mut alice = Vec::new();
    for sid in ["s-18-1", "s-18-2", "s-18-3"] {
        a.create_session(sid, "alice").await;
        alice.push(a.token(json!({ "sid": sid })));
    }
    // A token of a session-less issuer would be covered too; here: all of alice's sessions.
    b.create_session("s-bob", "bob").await;
    let bob = a.token(json!({ "sub": "bob", "sid": "s-bob" }));
    for t in alice.iter().chain([&bob]) {
        assert_eq!(b.get_bearer(PATH, t).await.status, StatusCode::OK);
    }
    assert!(b.redis().cache().alive_count() >= 4);

    let n = now();
    a.store().revoke_user("alice", n, n + 900).await.unwrap();
    let started = Instant::now();
    let mut delays = Vec::new();
    for t in &alice {
        let Some(took) = refused_within(&b, t, PROPAGATION).await else {
            panic!(
                "b still accepted a session of alice {:?} after logout-all through a",
                started.elapsed()
            )
        };
        delays.push(format!(
            "request #{} refused {:?} after the call returned",
            took.attempt,
            started.elapsed()
        ));
    }
    eprintln!("sec18: logout-all through A; alice's sessions on B: {delays:?}");
    for t in &alice {
        stays_refused(&b, t).await;
    }
    assert!(
        a.store()
            .sessions_of("alice", now())
            .await
            .unwrap()
            .is_empty(),
        "logout-all ends the sessions themselves"
    );
    assert_eq!(b.get_bearer(PATH, &bob).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_jti_denied_through_a_is_refused_by_b_that_had_it_cached() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server, "jti").await;
    let exp = now() + 600;
    let denied = a.token(json!({ "jti": "logout-me", "exp": exp }));
    let sibling = a.token(json!({ "jti": "keep-me" }));
    for t in [&denied, &sibling] {
        assert_eq!(b.get_bearer(PATH, t).await.status, StatusCode::OK);
    }
    let started = Instant::now();
    a.store()
        .deny_jti(ISSUER, "logout-me", exp, now())
        .await
        .unwrap();
    let Some(took) = refused_within(&b, &denied, PROPAGATION).await else {
        panic!(
            "b still accepted a denied jti {:?} after the denial through a",
            started.elapsed()
        )
    };
    eprintln!("jti: denied through A; B {took}");
    stays_refused(&b, &denied).await;
    // The same session, another jti: unaffected.
    assert_eq!(b.get_bearer(PATH, &sibling).await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// Failure behaviour
// ---------------------------------------------------------------------------------------------

/// What one request of the flow was and what it got.
#[derive(Debug, Clone, Copy)]
struct Sample {
    revoked: bool,
    after_kill: bool,
    status: StatusCode,
}

#[tokio::test]
async fn while_redis_is_down_uncached_tokens_get_503_and_revoked_tokens_stay_refused() {
    let mut server = RedisServer::start();
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let minter = same_key(&key);
    let gw = Arc::new(gateway(&server.url(), "down", key).await);
    gw.create_session("live", "alice").await;
    gw.create_session("gone", "alice").await;
    let revoked_session = gw.token(json!({ "sid": "gone" }));
    let denied_exp = now() + 600;
    let denied_jti = gw.token(json!({ "sid": "live", "jti": "denied", "exp": denied_exp }));
    for t in [&revoked_session, &denied_jti] {
        // Cached as alive first, so the revocation has something to evict.
        assert_eq!(gw.get_bearer(PATH, t).await.status, StatusCode::OK);
    }
    assert!(gw.store().revoke_session("alice", "gone").await.unwrap());
    gw.store()
        .deny_jti(ISSUER, "denied", denied_exp, now())
        .await
        .unwrap();
    for t in [&revoked_session, &denied_jti] {
        assert_eq!(
            gw.get_bearer(PATH, t).await.status,
            StatusCode::UNAUTHORIZED
        );
    }

    // Requests flow: revoked tokens, and fresh tokens (new jti, so no cached verdict) of a live
    // session, until enough of them have been answered after the kill.
    let killed = Arc::new(AtomicBool::new(false));
    let flow = {
        let gw = Arc::clone(&gw);
        let killed = Arc::clone(&killed);
        let revoked = [revoked_session.clone(), denied_jti.clone()];
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut after = 0;
            while after < 60 {
                // Read before sending: a request that starts after the kill must not be served.
                let after_kill = killed.load(Ordering::SeqCst);
                let fresh = minter.token(json!({ "sid": "live" }));
                for (revoked, token) in [(false, &fresh), (true, &revoked[after % 2])] {
                    let status = gw.get_bearer(PATH, token).await.status;
                    samples.push(Sample {
                        revoked,
                        after_kill,
                        status,
                    });
                }
                if after_kill {
                    after += 1;
                }
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.upstream.count() >= 10
        })
        .await
        .is_some(),
        "requests did not flow"
    );
    server.kill();
    killed.store(true, Ordering::SeqCst);
    let samples = flow.await.unwrap();

    for s in &samples {
        if s.revoked {
            assert_eq!(
                s.status,
                StatusCode::UNAUTHORIZED,
                "a revoked token got {s:?}"
            );
        } else if s.after_kill {
            assert_eq!(
                s.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "a token whose verdict was not cached got {s:?} with redis down"
            );
        } else {
            assert!(
                matches!(s.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
                "{s:?}"
            );
        }
    }
    let before = samples.iter().filter(|s| !s.after_kill).count();
    let after = samples.iter().filter(|s| s.after_kill).count();
    eprintln!("flow: {before} requests before the kill, {after} after");
    assert!(before >= 10 && after >= 100, "{before} / {after}");
}

#[tokio::test]
async fn after_redis_returns_empty_the_gateway_recovers_without_a_restart() {
    let mut server = RedisServer::start();
    let gw = gateway(
        &server.url(),
        "recover",
        TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed"),
    )
    .await;
    gw.create_session("s-r", "alice").await;
    gw.create_session("s-revoked", "alice").await;
    let revoked = gw.token(json!({ "sid": "s-revoked" }));
    assert_eq!(gw.get_bearer(PATH, &revoked).await.status, StatusCode::OK);
    assert!(
        gw.store()
            .revoke_session("alice", "s-revoked")
            .await
            .unwrap()
    );
    assert_eq!(
        gw.get_bearer(PATH, &gw.token(json!({ "sid": "s-r" })))
            .await
            .status,
        StatusCode::OK
    );

    server.kill();
    let down = eventually(Duration::from_secs(5), || async {
        gw.get_bearer(PATH, &gw.token(json!({ "sid": "s-r" })))
            .await
            .status
            == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(down.is_some(), "no 503 while redis was down");
    assert_eq!(
        gw.get_bearer(PATH, &revoked).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Public routes do not need the store.
    assert_eq!(gw.get("/public").await.status, StatusCode::OK);

    // Back, and empty: the session has to be made again (as a new login would).
    server.restart();
    let started = Instant::now();
    let recovered = eventually(RECOVERY, || async {
        gw.store()
            .create_session(
                portcullis::store::SessionRecord {
                    id: "s-r".into(),
                    subject: "alice".into(),
                    created_at: now(),
                    last_seen: now(),
                    ip: "127.0.0.1".into(),
                    user_agent: "tests".into(),
                    absolute_expiry: now() + 3600,
                    idle_expiry: now() + 3600,
                    remember_me: false,
                    provider: None,
                },
                None,
            )
            .await
            .is_ok()
            && gw
                .get_bearer(PATH, &gw.token(json!({ "sid": "s-r" })))
                .await
                .status
                == StatusCode::OK
    })
    .await;
    eprintln!("recovery: 200 again {recovered:?} after redis restarted");
    assert!(
        recovered.is_some(),
        "the gateway did not recover within {RECOVERY:?} of redis returning"
    );
    // The revocation survives the outage (its session is gone from the empty redis as well).
    assert_eq!(
        gw.get_bearer(PATH, &revoked).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Invalidations flow again.
    gw.wait_subscribed().await;
    assert!(started.elapsed() < RECOVERY);
}

#[tokio::test]
async fn a_revocation_through_a_while_bs_subscription_is_down_is_still_refused_by_b() {
    let server = RedisServer::start();
    let (a, b) = two_instances(&server, "pubsub").await;
    // Several rounds: each kills every subscription, revokes while B may still be
    // resubscribing, and checks B's very next answer.
    for round in 0..3 {
        b.wait_subscribed().await;
        let sid = format!("s-pubsub-{round}");
        a.create_session(&sid, "alice").await;
        let token = a.token(json!({ "sid": sid }));
        let live = a.token(json!({ "sid": "sid-alice" }));
        for t in [&token, &live] {
            assert_eq!(b.get_bearer(PATH, t).await.status, StatusCode::OK);
        }
        assert!(b.redis().cache().alive_count() >= 2);
        let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(
            killed.trim().parse::<u32>().unwrap_or(0) >= 2,
            "expected both subscriptions killed, redis said {killed:?}"
        );
        // B notices the loss (and drops its positive verdicts) or has already resubscribed
        // (which drops them too): either way nothing it cached before the gap is served.
        let noticed = eventually(Duration::from_secs(5), || async {
            let cache = b.redis().cache();
            !cache.is_subscribed() || cache.alive_count() == 0
        })
        .await;
        assert!(
            noticed.is_some(),
            "b never noticed its subscription was killed"
        );
        assert!(a.store().revoke_session("alice", &sid).await.unwrap());
        // No polling: B's very next answer must already be the refusal.
        assert_eq!(
            b.get_bearer(PATH, &token).await.status,
            StatusCode::UNAUTHORIZED,
            "round {round}: b served a session revoked while its subscription was down"
        );
        stays_refused(&b, &token).await;
        assert_eq!(b.get_bearer(PATH, &live).await.status, StatusCode::OK);
    }
    // B subscribes again by itself and caches again.
    b.wait_subscribed().await;
    let live = a.token(json!({ "sid": "sid-alice" }));
    let cached = eventually(Duration::from_secs(5), || async {
        b.get_bearer(PATH, &live).await.status == StatusCode::OK
            && b.redis().cache().alive_count() >= 1
    })
    .await;
    assert!(cached.is_some(), "b never cached a verdict again");
}

#[tokio::test]
async fn a_gateway_whose_redis_is_down_at_start_starts_answers_503_and_recovers_when_it_comes_up() {
    let port = free_port();
    let gw = Setup {
        extra: store_yaml(&format!("redis://127.0.0.1:{port}"), "late"),
        ..Setup::default()
    }
    .start_without_session()
    .await;
    let token = gw.token(json!({}));
    assert_eq!(gw.get("/public").await.status, StatusCode::OK);
    assert_eq!(gw.upstream.count(), 1, "public routes are served");
    assert_eq!(
        gw.get_bearer(PATH, &token).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(gw.upstream.count(), 1, "nothing passes without a verdict");
    assert!(!gw.store().is_healthy());

    let _server = RedisServer::start_on(port);
    let started = Instant::now();
    let up = eventually(RECOVERY, || async {
        gw.store()
            .create_session(
                portcullis::store::SessionRecord {
                    id: "sid-alice".into(),
                    subject: "alice".into(),
                    created_at: now(),
                    last_seen: now(),
                    ip: "127.0.0.1".into(),
                    user_agent: "tests".into(),
                    absolute_expiry: now() + 3600,
                    idle_expiry: now() + 3600,
                    remember_me: false,
                    provider: None,
                },
                None,
            )
            .await
            .is_ok()
            && gw.get_bearer(PATH, &token).await.status == StatusCode::OK
    })
    .await;
    eprintln!("late redis: 200 {up:?} after redis came up");
    assert!(
        up.is_some(),
        "the gateway did not start serving within {RECOVERY:?} of redis coming up"
    );
    assert!(
        eventually(RECOVERY, || async { gw.store().is_healthy() })
            .await
            .is_some(),
        "healthy again {:?} after redis came up",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_password_from_password_file_authenticates_to_redis() {
    let server = RedisServer::start();
    server.cli(&["CONFIG", "SET", "requirepass", "s3cret-pass"]);
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good", "s3cret-pass\n");
    let bad = write(dir.path(), "bad", "wrong\n");
    let with = |file: &std::path::Path| Setup {
        extra: format!(
            "store: {{ kind: redis, url: \"{}\", key_prefix: pw, password_file: {} }}",
            server.url(),
            file.display()
        ),
        ..Setup::default()
    };
    let gw = with(&good).start().await;
    let token = gw.token(json!({}));
    assert_eq!(gw.get_bearer(PATH, &token).await.status, StatusCode::OK);
    let wrong = with(&bad).start_without_session().await;
    let token = wrong.token(json!({}));
    assert_eq!(
        wrong.get_bearer(PATH, &token).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn store_config_errors_name_the_store_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("store: { kind: redis }", "store: set exactly one"),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", cluster: [\"redis://127.0.0.1:2\"] }",
            "store: set exactly one",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", sentinel: { master: m, nodes: [\"redis://127.0.0.1:2\"] } }",
            "store: set exactly one",
        ),
        (
            "store: { kind: redis, url: \"http://127.0.0.1:6380\" }",
            "store.url:",
        ),
        (
            "store: { kind: redis, url: \"127.0.0.1:6380\" }",
            "store.url:",
        ),
        (
            "store: { kind: redis, cluster: [\"redis://127.0.0.1:1\", \"tcp://127.0.0.1:2\"] }",
            "store.cluster[1]:",
        ),
        ("store: { kind: redis, cluster: [] }", "store.cluster:"),
        (
            "store: { kind: redis, sentinel: { master: m, nodes: [] } }",
            "store.sentinel.nodes:",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", password_file: does-not-exist }",
            "store.password_file:",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", key_prefix: \"a{b}\" }",
            "store.key_prefix:",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", timeout: \"5\" }",
            "store.timeout:",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", cache_ttl: 1y }",
            "store.cache_ttl:",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", max_staleness: 10ms }",
            "store.max_staleness:",
        ),
        (
            "store: { kind: redis, url: \"redis://127.0.0.1:1\", replica_ack_timeout: soon }",
            "store.replica_ack_timeout:",
        ),
    ];
    for (store, expected) in cases {
        let setup = Setup {
            extra: store.into(),
            ..Setup::default()
        };
        let yaml = setup.yaml(dir.path(), "http://127.0.0.1:9");
        match Config::from_yaml(&yaml, dir.path()) {
            Ok(_) => panic!("accepted: {store}"),
            Err(e) => assert!(
                e.to_string().starts_with(expected),
                "{store}\n  gave: {e}\n  want: {expected}…"
            ),
        }
    }
    // A typo in the store section is an error too (unknown keys are refused everywhere).
    let setup = Setup {
        extra: "store: { kind: redis, url: \"redis://127.0.0.1:1\", passwd_file: x }".into(),
        ..Setup::default()
    };
    let yaml = setup.yaml(dir.path(), "http://127.0.0.1:9");
    let e = Config::from_yaml(&yaml, dir.path()).expect_err("a typo was accepted");
    assert!(e.to_string().contains("passwd_file"), "{e}");
    // An unknown on_data_loss mode names its key, like every bad value.
    let setup = Setup {
        extra: "store:\n  kind: redis\n  url: \"redis://127.0.0.1:1\"\n  on_data_loss: shrug\n"
            .into(),
        ..Setup::default()
    };
    let yaml = setup.yaml(dir.path(), "http://127.0.0.1:9");
    let e = Config::from_yaml(&yaml, dir.path())
        .expect_err("an unknown mode was accepted")
        .to_string();
    assert!(e.starts_with("store.on_data_loss:"), "{e}");
    // And the good forms compile.
    for store in [
        "store: { kind: redis, url: \"redis://127.0.0.1:1/2\" }",
        "store: { kind: redis, url: \"rediss://127.0.0.1:1\" }",
        "store: { kind: redis, cluster: [\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"] }",
        "store: { kind: redis, sentinel: { master: m, nodes: [\"redis://127.0.0.1:1\"] } }",
        "store: { kind: redis, url: \"redis://127.0.0.1:1\", max_staleness: 250ms, on_data_loss: unavailable, first_start: true, min_replicas_acks: 1, replica_ack_timeout: 1s }",
        "store: { kind: memory }",
    ] {
        let setup = Setup {
            extra: store.into(),
            ..Setup::default()
        };
        let yaml = setup.yaml(dir.path(), "http://127.0.0.1:9");
        Config::from_yaml(&yaml, dir.path()).unwrap_or_else(|e| panic!("{store}: {e}"));
    }
}

/// How many `PING`s `server` has answered.
fn pings(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Regression: the keep-alive PING on the invalidation subscription expected a plain string, but
/// a subscribed RESP2 connection answers `["pong", ""]`; so every ping (each 2 s) ended the
/// subscription, emptied the cache and made the instance briefly unhealthy.
#[tokio::test]
async fn the_invalidation_subscription_survives_its_keepalive_pings_and_the_cache_stays_warm() {
    let server = RedisServer::start();
    let gw = gateway(
        &server.url(),
        "ping",
        TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed"),
    )
    .await;
    let token = gw.token(json!({}));
    assert_eq!(gw.get_bearer(PATH, &token).await.status, StatusCode::OK);
    let store = gw.redis();
    assert_eq!(store.cache().alive_count(), 1);
    // Past two pings (Redis counts them: the subscription is the only connection that sends
    // PING), watching all the way.
    let before = pings(&server);
    let pinged_twice = eventually(Duration::from_secs(15), || {
        assert!(
            store.cache().is_subscribed() && store.cache().alive_count() == 1,
            "the subscription dropped (or the cache was emptied) with nothing wrong"
        );
        let done = pings(&server) >= before + 2;
        async move { done }
    })
    .await;
    assert!(
        pinged_twice.is_some(),
        "redis never received two keep-alive pings"
    );
    let clients = server.cli(&["CLIENT", "LIST", "TYPE", "pubsub"]);
    let ages: Vec<u64> = clients
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("age="))
        .map(|a| a.parse().unwrap())
        .collect();
    assert!(
        ages.len() == 1 && ages[0] >= 4,
        "one subscription, as old as the test: {clients}"
    );
}

// ---------------------------------------------------------------------------------------------
// Revocation under faults (docs/security.md 37): a partition, a store that lost its data
// ---------------------------------------------------------------------------------------------

/// The audit events of `gw` named `event`.
fn audit_events(gw: &TestGateway, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir.path().join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == event)
        .collect()
}

#[tokio::test]
async fn sec37_after_flushall_a_revoked_sessionless_token_stays_refused_on_running_and_new_instances()
 {
    let server = RedisServer::start();
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let (b_key, c_key) = (same_key(&key), same_key(&key));
    // A is the deployment's first start: tokens minted before its epoch are accepted.
    let a = redis_gateway_with(&server.url(), "flush", key, ", first_start: true", true).await;
    let revoked = a.token(json!({ "sid": null }));
    let kept = a.token(json!({ "sid": null, "sub": "bob" }));
    assert_eq!(a.get_bearer(PATH, &revoked).await.status, StatusCode::OK);
    assert_eq!(a.get_bearer(PATH, &kept).await.status, StatusCode::OK);
    let claims = decode_claims(&revoked);
    a.store()
        .deny_jti(
            ISSUER,
            claims["jti"].as_str().unwrap(),
            claims["exp"].as_i64().unwrap(),
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        a.get_bearer(PATH, &revoked).await.status,
        StatusCode::UNAUTHORIZED
    );
    let before = a.redis().epoch().expect("A knows the epoch");

    // The store loses everything, the denylist entry included.
    assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");
    let detected = eventually(Duration::from_secs(5), || async {
        a.redis().epoch().is_some_and(|e| e.id != before.id)
    })
    .await;
    eprintln!("FLUSHALL detected by the running instance after {detected:?}");
    assert!(
        detected.is_some(),
        "the running instance never saw the reset"
    );
    eventually(Duration::from_secs(5), || async {
        !audit_events(&a, "store.reset_detected").is_empty()
    })
    .await;
    let events = audit_events(&a, "store.reset_detected");
    assert_eq!(
        events.len(),
        1,
        "one store.reset_detected event: {events:?}"
    );
    assert_eq!(events[0]["reason_id"], "store.epoch_changed");

    // The revoked token stays refused on A, and the never-revoked one that A had cached as
    // alive is refused too: its cached verdict did not outlive the detection.
    assert_eq!(
        a.get_bearer(PATH, &revoked).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = a.get_bearer(PATH, &kept).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // An instance started after the loss refuses the revoked token at once — even one that
    // says first_start, because the epoch it finds was made by A at detection.
    for (name, extra, key) in [("B", "", b_key), ("C", ", first_start: true", c_key)] {
        let late = redis_gateway_with(&server.url(), "flush", key, extra, true).await;
        for token in [&revoked, &kept] {
            assert_eq!(
                late.get_bearer(PATH, token).await.status,
                StatusCode::UNAUTHORIZED,
                "instance {name} accepted a token issued before the store lost its data"
            );
        }
        assert_eq!(late.upstream.count(), 0);
        // A token issued after the reset is served.
        let fresh = a.token(json!({ "sid": null, "iat": now() + 2 }));
        assert_eq!(late.get_bearer(PATH, &fresh).await.status, StatusCode::OK);
    }
    assert_eq!(
        a.upstream.count(),
        2,
        "A's upstream saw only the two first requests"
    );
}

#[tokio::test]
async fn sec37_after_a_restart_without_persistence_earlier_sessionless_tokens_are_refused_everywhere()
 {
    let mut server = RedisServer::start();
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let b_key = same_key(&key);
    let a = redis_gateway_with(&server.url(), "restart", key, ", first_start: true", true).await;
    let b = redis_gateway_with(&server.url(), "restart", b_key, "", true).await;
    let token = a.token(json!({ "sid": null }));
    assert_eq!(a.get_bearer(PATH, &token).await.status, StatusCode::OK);
    assert_eq!(b.get_bearer(PATH, &token).await.status, StatusCode::OK);
    let before = a.redis().epoch().unwrap();
    assert_eq!(b.redis().epoch().unwrap().id, before.id);

    server.restart();
    for gw in [&a, &b] {
        let detected = eventually(Duration::from_secs(15), || async {
            gw.redis().epoch().is_some_and(|e| e.id != before.id)
        })
        .await;
        assert!(detected.is_some(), "an instance never saw the reset");
        assert_eq!(
            gw.get_bearer(PATH, &token).await.status,
            StatusCode::UNAUTHORIZED
        );
        // The audit file is written by a thread of its own: give it a moment.
        let audited = eventually(Duration::from_secs(5), || async {
            audit_events(gw, "store.reset_detected").len() == 1
        })
        .await;
        assert!(
            audited.is_some(),
            "one store.reset_detected event per instance"
        );
    }
    // Both agree on one new epoch.
    assert_eq!(a.redis().epoch().unwrap().id, b.redis().epoch().unwrap().id);
}

#[tokio::test]
async fn sec37_with_on_data_loss_unavailable_every_instance_answers_503_until_an_operator_resumes()
{
    let server = RedisServer::start();
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let b_key = same_key(&key);
    let mode = ", on_data_loss: unavailable";
    let a = redis_gateway_with(
        &server.url(),
        "halt",
        key,
        &format!("{mode}, first_start: true"),
        true,
    )
    .await;
    let token = a.token(json!({ "sid": null }));
    assert_eq!(a.get_bearer(PATH, &token).await.status, StatusCode::OK);

    assert_eq!(server.cli(&["FLUSHALL"]).trim(), "OK");
    let halted = eventually(Duration::from_secs(5), || async {
        a.get_bearer(PATH, &token).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(halted.is_some(), "A kept answering after the loss");
    assert!(a.redis().is_halted());
    // A new instance finds the halted epoch and refuses as well.
    let b = redis_gateway_with(&server.url(), "halt", b_key, mode, true).await;
    let fresh = a.token(json!({ "sid": null, "iat": now() + 2 }));
    assert_eq!(
        b.get_bearer(PATH, &fresh).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(!b.store().is_healthy(), "a halted instance is not ready");

    // The operator resumes through one instance; both serve tokens issued after the loss.
    assert!(a.redis().resume().await.unwrap(), "it was halted");
    for gw in [&a, &b] {
        let resumed = eventually(Duration::from_secs(5), || async {
            gw.get_bearer(PATH, &fresh).await.status == StatusCode::OK
        })
        .await;
        assert!(
            resumed.is_some(),
            "an instance stayed halted after the resume"
        );
        assert_eq!(
            gw.get_bearer(PATH, &token).await.status,
            StatusCode::UNAUTHORIZED,
            "tokens from before the loss stay refused"
        );
    }
}

#[tokio::test]
async fn a_new_deployment_refuses_sessionless_tokens_minted_before_its_epoch_unless_first_start() {
    let server = RedisServer::start();
    let token_key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let first_key = same_key(&token_key);
    let strict = redis_gateway_with(&server.url(), "new", token_key, "", true).await;
    // Minted 10 s ago, before the epoch this instance created at its start.
    let old = strict.token(json!({ "sid": null }));
    let r = strict.get_bearer(PATH, &old).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(strict.upstream.count(), 0);
    let newer = strict.token(json!({ "sid": null, "iat": now() + 2 }));
    assert_eq!(strict.get_bearer(PATH, &newer).await.status, StatusCode::OK);

    let other = RedisServer::start();
    let relaxed =
        redis_gateway_with(&other.url(), "new", first_key, ", first_start: true", true).await;
    let old = relaxed.token(json!({ "sid": null }));
    assert_eq!(relaxed.get_bearer(PATH, &old).await.status, StatusCode::OK);
}

#[tokio::test]
async fn after_an_idle_redis_restart_the_first_request_is_answered_and_readyz_proves_the_store_answers()
 {
    let mut server = RedisServer::start();
    let gw = Setup {
        extra: format!(
            "{}\nadmin: {{ bind: 127.0.0.1:0 }}",
            store_yaml(&server.url(), "idle")
        ),
        ..Setup::default()
    }
    .start()
    .await;
    gw.wait_subscribed().await;
    let admin = gw.running.admin_addr().expect("admin listener");
    let readyz = || async move {
        send(
            http::Request::get(format!("http://{admin}/readyz"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .status
    };
    assert_eq!(readyz().await, StatusCode::OK);

    server.kill();
    assert_eq!(
        readyz().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "readyz asks the store, it does not trust the last answer"
    );
    server.restart();
    // The very first operations after the restart run on connections that died: they are
    // replaced and the command sent once more, so neither the store write nor the request
    // gets a 503.
    gw.create_session("s-idle", "alice").await;
    assert_eq!(
        gw.get_bearer(PATH, &gw.token(json!({ "sid": "s-idle" })))
            .await
            .status,
        StatusCode::OK
    );
    // Ready again once invalidations flow too (the subscriber reconnects with a backoff of up
    // to 2 s); until then checks read through, as the request above did.
    let ready = eventually(RECOVERY, || async { readyz().await == StatusCode::OK }).await;
    assert!(
        ready.is_some(),
        "readyz never said ready again after the restart"
    );
}

/// A Redis master and a replica of it, in sync.
async fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::start();
    let port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .await
        .is_some(),
        "the replica never synced"
    );
    (master, replica)
}

/// The payload of a compact JWS, unverified (the test minted it).
fn decode_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn sec37_an_admin_revocation_no_replica_acknowledges_is_answered_503_and_audited_not_reported_done()
 {
    let (master, replica) = master_and_replica().await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = write(secrets.path(), "admin.token", &"a".repeat(40));
    let gw = Setup {
        extra: format!(
            "store: {{ kind: redis, url: \"{}\", key_prefix: acks, timeout: 500ms, \
             min_replicas_acks: 1, replica_ack_timeout: 300ms }}\n\
             audit: {{ file: audit.jsonl }}\n\
             admin: {{ bind: 127.0.0.1:0, token_file: \"{}\" }}",
            master.url(),
            token_file.display()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    gw.wait_subscribed().await;
    gw.create_session("s-ok", "alice").await;
    gw.create_session("s-lost", "alice").await;
    let admin = gw.running.admin_addr().unwrap();
    let revoke = |sid: &'static str| async move {
        send(
            http::Request::post(format!("http://{admin}/admin/sessions/revoke"))
                .header("authorization", format!("Bearer {}", "a".repeat(40)))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    json!({ "user": "alice", "session": sid }).to_string(),
                )))
                .unwrap(),
        )
        .await
    };
    assert_eq!(revoke("s-ok").await.status, StatusCode::OK);

    let pid = replica.pid().unwrap();
    signal(pid, "STOP");
    // While the revocation waits for a replica, a check that must read Redis is answered: the
    // request path never shares the connection WAIT blocks.
    let uncached = gw.token(json!({ "sid": "sid-alice" }));
    let (r, during) = tokio::join!(revoke("s-lost"), async {
        // Once Redis shows the revocation's connection blocked in WAIT (if the 300 ms pass
        // first, the check below still has to be answered).
        eventually(Duration::from_millis(300), || {
            let blocked = master.cli(&["CLIENT", "LIST"]).contains("cmd=wait");
            async move { blocked }
        })
        .await;
        let started = Instant::now();
        let status = gw.get_bearer(PATH, &uncached).await.status;
        (status, started.elapsed())
    });
    signal(pid, "CONT");
    eprintln!("an uncached check during a 300 ms WAIT took {:?}", during.1);
    assert_eq!(during.0, StatusCode::OK);
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(!r.text().contains("revoked\":true"));
    let audited = eventually(Duration::from_secs(5), || async {
        audit_events(&gw, "admin.session_revoked")
            .iter()
            .any(|e| e["reason_id"] == "admin.store_unavailable" && e["session"] == "s-lost")
    })
    .await;
    assert!(audited.is_some(), "the refused revocation was not audited");
}

#[tokio::test]
async fn sec37_a_logout_no_replica_acknowledges_is_answered_503_and_audited() {
    use common::auth::{ALICE_PASSWORD, AuthSetup, StoreChoice};
    let (master, replica) = master_and_replica().await;
    let gw = AuthSetup {
        store: StoreChoice::RedisWith(
            master.url(),
            ", min_replicas_acks: 1, replica_ack_timeout: 300ms".into(),
        ),
        ..AuthSetup::default()
    }
    .start()
    .await;
    let (access, _refresh, sid) = gw.api_login("alice", ALICE_PASSWORD).await;
    assert_eq!(gw.get_bearer("/app", &access).await.status, StatusCode::OK);

    let pid = replica.pid().unwrap();
    signal(pid, "STOP");
    let auth = format!("Bearer {access}");
    let r = gw
        .post_json("/auth/logout", &json!({}), &[("authorization", &auth)])
        .await;
    signal(pid, "CONT");
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let events = gw.audit_events().await;
    assert!(
        events.iter().any(|e| e["event"] == "logout"
            && e["reason_id"] == "store.unavailable"
            && e["session"] == sid.as_str()),
        "the unacknowledged logout was not audited: {events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "logout" && e["reason_id"] == "logout.ok"),
        "a logout no replica acknowledged was reported done"
    );
}
