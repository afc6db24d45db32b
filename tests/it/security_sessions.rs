//! docs/security.md requirements 13 to 21 (sessions and refresh), black-box: a real gateway issuing
//! its own tokens on 127.0.0.1:0, driven through `/auth/*` and a protected route, once with the
//! memory store and once with a private `redis-server` (two gateway instances on it where a
//! requirement says "every instance").
//!
//! Every test is written once as `async fn <requirement as a sentence>(setup: AuthSetup)` and
//! [`both_stores!`] turns it into `<name>::memory` and `<name>::redis`. Every group of refusals
//! also runs a positive control on the same gateway, so a refusal is known to come from the one
//! thing that was changed.
//!
//! Time: the tests about lifetimes and the grace window run the gateway on a manual clock and
//! move it ([`advance_to`]) to a point scheduled against the second the gateway stamped into the
//! token (`iat`): the stores count in whole seconds, and nothing waits.

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::auth::{ALICE_PASSWORD, AuthSetup, BOB_PASSWORD, Browser, StoreChoice};
use common::{EchoUpstream, RedisServer, TestGateway, TestResponse, eventually, send};
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis::clock::Clock;
use portcullis::store::SessionStore;
use serde_json::{Value, json};

/// The cookies the gateway sets, with the path each is scoped to.
const ACCESS_COOKIE: &str = "__Host-portcullis-at";
const REFRESH_COOKIE: &str = "__Secure-portcullis-rt";
/// The refresh cookie's binding (docs/security.md 36).
const BINDING_COOKIE: &str = "__Host-portcullis-rb";
const CSRF_COOKIE: &str = "__Host-portcullis-csrf";

/// An authenticated route (any signed-in user).
const APP: &str = "/app/inbox";

/// How long another instance may take before the test gives up on it. Not a target: the delay
/// actually measured is printed; this only keeps a broken build from hanging.
const GIVE_UP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Running every test against both stores
// ---------------------------------------------------------------------------------------------

/// For each `name`, a module `name` with `memory` and `redis` tests that run
/// `name(setup)`: the Redis one on its own `redis-server` (a free port, stopped on drop).
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name(AuthSetup::default()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                let server = RedisServer::start();
                super::$name(AuthSetup {
                    store: StoreChoice::Redis(server.url()),
                    ..AuthSetup::default()
                })
                .await;
                drop(server);
            }
        }
    )*};
}

both_stores!(
    sec13_revoking_a_session_fails_its_access_token_at_once_on_every_instance,
    sec14_session_ids_refresh_tokens_and_csrf_tokens_are_long_random_and_distinct,
    sec15_login_always_issues_new_identifiers_and_planted_values_are_useless,
    sec16_the_idle_timeout_is_enforced_on_refresh,
    sec16_the_absolute_lifetime_is_enforced_on_refresh_however_often_it_is_refreshed,
    sec17_logout_fails_the_access_token_the_refresh_token_and_the_session_and_expires_every_cookie,
    sec18_logout_all_fails_every_session_of_the_user_on_every_instance_and_a_new_login_works,
    sec19_a_user_lists_only_their_own_sessions_and_cannot_revoke_another_users,
    sec20_each_refresh_returns_a_new_refresh_token_and_the_old_one_yields_none,
    sec20_reuse_outside_the_grace_window_revokes_the_whole_session_and_is_audited,
    sec20_twenty_parallel_refreshes_with_one_token_rotate_exactly_once_without_a_reuse_verdict,
    sec21_a_refresh_token_with_another_users_access_token_is_refused,
    sec21_a_refresh_token_with_another_users_expired_access_cookie_is_refused,
    sec21_a_tampered_refresh_token_or_an_access_token_sent_as_one_is_refused,
);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// One session from an API login.
#[derive(Debug, Clone)]
struct Session {
    access: String,
    refresh: String,
    sid: String,
}

async fn login(gw: &TestGateway, user: &str) -> Session {
    let password = match user {
        "alice" => ALICE_PASSWORD,
        "bob" => BOB_PASSWORD,
        other => panic!("no password for {other}"),
    };
    let (access, refresh, sid) = gw.api_login(user, password).await;
    Session {
        access,
        refresh,
        sid,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The status of the authenticated route for a bearer token.
async fn app(gw: &TestGateway, token: &str) -> StatusCode {
    gw.api_get(APP, token).await.status
}

/// `POST /auth/refresh` as an API client: the token in the JSON body.
async fn refresh(gw: &TestGateway, refresh_token: &str) -> TestResponse {
    refresh_with(gw, refresh_token, &[]).await
}

async fn refresh_with(
    gw: &TestGateway,
    refresh_token: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    gw.post_json(
        "/auth/refresh",
        &json!({ "refresh_token": refresh_token }),
        headers,
    )
    .await
}

/// A successful refresh: the new access token and, when one was issued, the new refresh token.
fn refreshed(r: &TestResponse) -> (String, Option<String>) {
    assert_eq!(r.status, StatusCode::OK, "refresh failed: {}", r.text());
    let v = r.json();
    (
        v["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned(),
        v["refresh_token"].as_str().map(str::to_owned),
    )
}

/// A refused refresh: 401, and no token of any kind in the body or in a cookie.
#[track_caller]
fn assert_refresh_refused(r: &TestResponse, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "{what}: expected 401, got {}: {}",
        r.status,
        r.text()
    );
    let body = r.text();
    assert!(
        !body.contains("access_token")
            && !body.contains("refresh_token")
            && !body.contains("prt1.")
            && !body.contains("prt2."),
        "{what}: the refusal carries a token: {body}"
    );
    for c in r.headers.get_all("set-cookie") {
        let c = c.to_str().unwrap();
        let value = c.split(';').next().unwrap().split_once('=').unwrap().1;
        assert!(value.is_empty(), "{what}: the refusal sets a cookie: {c}");
    }
}

/// The JSON payload of a JWT.
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// `prt1.<b64 subject>.<sid>.<secret>` or `prt2.<b64 subject>.<sid>.<secret>.<binding hash>`
/// (a cookie's), split into its first four parts.
fn refresh_parts(token: &str) -> [String; 4] {
    let parts: Vec<&str> = token.split('.').collect();
    let expected = if parts[0] == "prt2" { 5 } else { 4 };
    assert_eq!(
        parts.len(),
        expected,
        "not a gateway refresh token: {token}"
    );
    [0, 1, 2, 3].map(|i| parts[i].to_owned())
}

/// Moves `gw`'s manual clock to `millis` ms into Unix second `second` (never back).
fn advance_to(gw: &TestGateway, second: i64, millis: i64) {
    let ahead = second * 1000 + millis - gw.clock().now_millis();
    if ahead > 0 {
        gw.advance(Duration::from_millis(ahead as u64));
    }
}

/// `setup` with a signing key written to a temporary file, so that several instances sign and
/// verify with the same key (without `signing_keys` each generates its own). Keep the directory
/// alive as long as the gateways.
fn with_shared_key(setup: AuthSetup) -> (AuthSetup, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (_, pem) =
        portcullis::keys::signing::SigningKey::generate(jsonwebtoken::Algorithm::EdDSA).unwrap();
    let path = dir.path().join("signing.pem");
    std::fs::write(&path, pem).unwrap();
    let setup = AuthSetup {
        auth_extra: format!(
            "  signing_keys: [ {{ alg: EdDSA, pem: \"{}\" }} ]",
            path.display()
        ),
        ..setup
    };
    (setup, dir)
}

/// With Redis: a second instance on the same server (same key prefix, same signing key), and
/// both subscribed to invalidations. With the memory store there is no second instance.
async fn second_instance(setup: &AuthSetup, a: &TestGateway) -> Option<TestGateway> {
    if !matches!(setup.store, StoreChoice::Redis(_)) {
        return None;
    }
    let b = setup.start_with(EchoUpstream::start().await).await;
    a.wait_subscribed().await;
    b.wait_subscribed().await;
    Some(b)
}

/// Polls `gw` with `token` until it is refused; returns how long after `since` and on which
/// request. Panics after [`GIVE_UP`].
async fn refused_on(gw: &TestGateway, token: &str, since: Instant) -> (Duration, u32) {
    let mut attempt = 0;
    let refused = eventually(GIVE_UP.saturating_sub(since.elapsed()), || {
        attempt += 1;
        async { app(gw, token).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    assert!(
        refused.is_some(),
        "still accepted {:?} after the revocation (request #{attempt})",
        since.elapsed()
    );
    (since.elapsed(), attempt)
}

/// After a refusal, more attempts are refused too and none reaches the upstream.
async fn stays_refused(gw: &TestGateway, token: &str) {
    let before = gw.upstream.count();
    for _ in 0..3 {
        assert_eq!(app(gw, token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        gw.upstream.count(),
        before,
        "the upstream received a request with a revoked token"
    );
}

/// After a revocation through `a` (sent at `started`): `b`, which had the token cached, is
/// asked first, at once and then until it refuses (the delay is printed, not asserted); `a`
/// must refuse it on its first request (it applied the revocation before answering); neither
/// lets it through afterwards.
async fn refused_everywhere(
    a: &TestGateway,
    b: Option<&TestGateway>,
    token: &str,
    started: Instant,
    what: &str,
) {
    if let Some(b) = b {
        let (after, attempt) = refused_on(b, token, started).await;
        eprintln!(
            "{what}: instance B refused the token on its request #{attempt} after the \
             revocation, {after:?} after the revocation was sent to A"
        );
    }
    assert_eq!(
        app(a, token).await,
        StatusCode::UNAUTHORIZED,
        "{what}: the instance that revoked still accepts the token"
    );
    stays_refused(a, token).await;
    if let Some(b) = b {
        stays_refused(b, token).await;
    }
}

/// A GET with no credential at all, as an API client.
async fn anonymous_get(gw: &TestGateway, path: &str) -> TestResponse {
    send(
        Request::get(gw.url(path))
            .header("accept", "application/json")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
}

/// The session id the upstream was told about on the last request.
fn forwarded_session(gw: &TestGateway) -> (String, String) {
    let seen = gw.upstream.last();
    (
        seen.headers["x-auth-subject"].to_str().unwrap().to_owned(),
        seen.headers["x-auth-session"].to_str().unwrap().to_owned(),
    )
}

/// The `Set-Cookie` header for `name` (exactly one), as (value, attributes in lower case).
fn set_cookie(r: &TestResponse, name: &str) -> (String, Vec<(String, String)>) {
    let found: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .filter(|c| {
            c.split(';')
                .next()
                .unwrap()
                .split_once('=')
                .unwrap()
                .0
                .trim()
                == name
        })
        .collect();
    assert_eq!(found.len(), 1, "one Set-Cookie for {name}: {found:?}");
    let mut parts = found[0].split(';');
    let value = parts.next().unwrap().split_once('=').unwrap().1.to_owned();
    let attrs = parts
        .map(|a| {
            let (k, v) = a.trim().split_once('=').unwrap_or((a.trim(), ""));
            (k.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    (value, attrs)
}

fn attr<'a>(attrs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The bytes behind a base64url token (no padding, nothing else).
#[track_caller]
fn decoded(what: &str, text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_else(|e| panic!("{what} is not base64url ({e}): {text}"))
}

/// Checks a sample of random values: each has at least `min_bits`, all are distinct, and the
/// bits look like coin flips: the count of ones is within 6 standard deviations of half (a
/// false alarm has odds below 1 in 10^8; a value half made of constant bytes misses by far
/// more), and, when the sample is large enough for it to be certain, no bit position never
/// changes.
#[track_caller]
fn assert_random(what: &str, values: &[Vec<u8>], min_bits: usize) {
    assert!(values.len() >= 6, "{what}: too few samples");
    let len = values[0].len();
    for v in values {
        assert!(
            v.len() * 8 >= min_bits,
            "{what}: {} bits, want at least {min_bits}",
            v.len() * 8
        );
        assert_eq!(v.len(), len, "{what}: lengths vary");
    }
    let distinct: HashSet<&Vec<u8>> = values.iter().collect();
    assert_eq!(distinct.len(), values.len(), "{what}: a value repeats");
    let ones: u32 = values.iter().flatten().map(|b| b.count_ones()).sum();
    let total = (values.len() * len * 8) as f64;
    let sigma = total.sqrt() / 2.0;
    let off = (f64::from(ones) - total / 2.0).abs() / sigma;
    assert!(
        off < 6.0,
        "{what}: {ones} ones in {total} bits, {off:.1} standard deviations from half"
    );
    // A fixed bit survives n samples with probability 2^(1-n); below 2^-30 over all positions.
    if values.len() >= 40 {
        for i in 0..len {
            let (all_or, all_and) = values
                .iter()
                .fold((0u8, 0xffu8), |(o, a), v| (o | v[i], a & v[i]));
            assert_eq!(all_or, 0xff, "{what}: a bit of byte {i} is always 0");
            assert_eq!(all_and, 0, "{what}: a bit of byte {i} is always 1");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 13. Deleting or revoking a session fails its unexpired access token at once, everywhere
// ---------------------------------------------------------------------------------------------

async fn sec13_revoking_a_session_fails_its_access_token_at_once_on_every_instance(
    setup: AuthSetup,
) {
    let (setup, _key) = with_shared_key(setup);
    let a = setup.start().await;
    let b = second_instance(&setup, &a).await;
    let revoked_by_endpoint = login(&a, "alice").await;
    let revoked_by_store = login(&a, "alice").await;
    let logged_out = login(&a, "alice").await;
    let all = [&revoked_by_endpoint, &revoked_by_store, &logged_out];

    // Every token works everywhere, twice: the second answer may come from the local caches.
    for s in all {
        for _ in 0..2 {
            assert_eq!(app(&a, &s.access).await, StatusCode::OK);
            if let Some(b) = &b {
                assert_eq!(app(b, &s.access).await, StatusCode::OK);
            }
        }
    }
    if let Some(b) = &b {
        let cached = b.redis().cache().alive_count();
        assert!(cached >= 3, "b holds the verdicts locally ({cached})");
    }

    // 1. Through the sessions endpoint, from another of the user's sessions.
    let started = Instant::now();
    let r = a
        .post_json(
            "/auth/sessions/revoke",
            &json!({ "session": revoked_by_endpoint.sid }),
            &[("authorization", &bearer(&logged_out.access))],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    refused_everywhere(
        &a,
        b.as_ref(),
        &revoked_by_endpoint.access,
        started,
        "sec13 POST /auth/sessions/revoke on A",
    )
    .await;

    // 2. Through the store (the admin API's path).
    let started = Instant::now();
    assert!(
        a.store()
            .revoke_session("alice", &revoked_by_store.sid)
            .await
            .unwrap()
    );
    refused_everywhere(
        &a,
        b.as_ref(),
        &revoked_by_store.access,
        started,
        "sec13 store revoke_session on A",
    )
    .await;

    // The session that did the revoking was not touched.
    assert_eq!(app(&a, &logged_out.access).await, StatusCode::OK);
    if let Some(b) = &b {
        assert_eq!(app(b, &logged_out.access).await, StatusCode::OK);
    }

    // 3. Logout through A of a session whose token B has cached.
    let started = Instant::now();
    let r = a
        .post_json(
            "/auth/logout",
            &json!({}),
            &[("authorization", &bearer(&logged_out.access))],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    refused_everywhere(
        &a,
        b.as_ref(),
        &logged_out.access,
        started,
        "sec13 POST /auth/logout on A",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 14. Identifier lengths and randomness
// ---------------------------------------------------------------------------------------------

async fn sec14_session_ids_refresh_tokens_and_csrf_tokens_are_long_random_and_distinct(
    setup: AuthSetup,
) {
    let gw = setup.start().await;
    // Logins hash a password (argon2id, ~0.5 s in a debug build): a few of them, as a browser
    // would (JSON, tokens in cookies), each giving a session id, a refresh token, a CSRF token
    // and an access token. Rotations and login pages add the cheap samples.
    let logins = 6;
    let started = Instant::now();
    let mut sids = Vec::new();
    let mut refresh_secrets = Vec::new();
    let mut csrf = Vec::new();
    let mut jtis = Vec::new();
    let mut texts = HashSet::new();
    for _ in 0..logins {
        let r = gw
            .post_json(
                "/auth/login",
                &json!({ "username": "alice", "password": ALICE_PASSWORD }),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let sid = r.json()["session"].as_str().unwrap().to_owned();
        let (rt, _) = set_cookie(&r, REFRESH_COOKIE);
        let (at, _) = set_cookie(&r, ACCESS_COOKIE);
        let (token, _) = set_cookie(&r, CSRF_COOKIE);
        let [prefix, _, rt_sid, secret] = refresh_parts(&rt);
        // A cookie's refresh token is bound to the browser's binding cookie (256 bits).
        assert_eq!(prefix, "prt2");
        let (binding, _) = set_cookie(&r, BINDING_COOKIE);
        assert_eq!(URL_SAFE_NO_PAD.decode(&binding).unwrap().len(), 32);
        assert!(texts.insert(binding), "a binding value repeats");
        assert_eq!(rt_sid, sid, "the refresh token names its session");
        sids.push(decoded("session id", &sid));
        refresh_secrets.push(decoded("refresh secret", &secret));
        csrf.push(decoded("CSRF token", &token));
        jtis.push(decoded("jti", jwt_claims(&at)["jti"].as_str().unwrap()));
        for t in [sid, rt.clone(), at, token] {
            assert!(texts.insert(t), "an identifier repeats");
        }
    }
    eprintln!(
        "sec14: {logins} logins took {:?} ({:?} each)",
        started.elapsed(),
        started.elapsed() / logins
    );
    // Rotations as an API client does them: a browser's (bound) token is good in its cookie only.
    let mut current = login(&gw, "alice").await.refresh;
    assert_eq!(refresh_parts(&current)[0], "prt1");
    for _ in 0..40 {
        let (at, next) = refreshed(&refresh(&gw, &current).await);
        current = next.expect("a rotated refresh token");
        refresh_secrets.push(decoded("refresh secret", &refresh_parts(&current)[3]));
        jtis.push(decoded("jti", jwt_claims(&at)["jti"].as_str().unwrap()));
        assert!(texts.insert(current.clone()), "a refresh token repeats");
    }
    for _ in 0..40 {
        let mut browser = gw.browser();
        let r = browser.navigate("/auth/login").await;
        assert_eq!(r.status, StatusCode::OK);
        csrf.push(decoded("CSRF token", &browser.cookie(CSRF_COOKIE).unwrap()));
    }

    assert_random("session ids", &sids, 128);
    assert_random("refresh-token secrets", &refresh_secrets, 256);
    assert_random("CSRF tokens", &csrf, 128);
    assert_random("access-token jtis", &jtis, 128);
    // No value serves as two kinds of identifier.
    let mut everything = HashSet::new();
    for v in sids
        .iter()
        .chain(&refresh_secrets)
        .chain(&csrf)
        .chain(&jtis)
    {
        assert!(everything.insert(v.clone()), "a value serves twice");
    }
}

// ---------------------------------------------------------------------------------------------
// 15. No session fixation
// ---------------------------------------------------------------------------------------------

async fn sec15_login_always_issues_new_identifiers_and_planted_values_are_useless(
    setup: AuthSetup,
) {
    let gw = setup.start().await;
    // The attacker's own, perfectly valid, tokens…
    let attacker = login(&gw, "bob").await;
    // …and a planted CSRF token long enough for the login page to adopt it.
    let planted_csrf = "planted-csrf-token-0123456789abcdef";

    let mut victim = gw.browser();
    victim.set_cookie(ACCESS_COOKIE, &attacker.access, "/");
    victim.set_cookie(REFRESH_COOKIE, &attacker.refresh, "/auth");
    victim.set_cookie(CSRF_COOKIE, planted_csrf, "/");
    let r = victim.login("alice", ALICE_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let (at, rt, csrf) = (
        victim.cookie(ACCESS_COOKIE).unwrap(),
        victim.cookie(REFRESH_COOKIE).unwrap(),
        victim.cookie(CSRF_COOKIE).unwrap(),
    );
    assert_ne!(at, attacker.access, "the planted access cookie was kept");
    assert_ne!(rt, attacker.refresh, "the planted refresh cookie was kept");
    assert_ne!(csrf, planted_csrf, "the planted CSRF cookie was kept");
    assert_eq!(victim.navigate(APP).await.status, StatusCode::OK);
    let (subject, first_sid) = forwarded_session(&gw);
    assert_eq!(subject, "alice");
    assert_ne!(first_sid, attacker.sid);

    // What the attacker holds gives no access to the victim's session.
    assert_eq!(app(&gw, &attacker.access).await, StatusCode::OK);
    assert_eq!(forwarded_session(&gw), ("bob".into(), attacker.sid.clone()));
    let r = refresh(&gw, &attacker.refresh).await;
    let (access, _) = refreshed(&r);
    assert_eq!(jwt_claims(&access)["sub"], "bob");
    assert_eq!(jwt_claims(&access)["sid"], attacker.sid.as_str());
    // The planted CSRF token does not authorize a state change of the new session.
    let r = victim
        .post_form("/auth/logout", &[("csrf", planted_csrf)])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(victim.navigate(APP).await.status, StatusCode::OK);
    assert_eq!(forwarded_session(&gw).1, first_sid);

    // Forged values naming the victim and an attacker-chosen session id, planted into the
    // signed-in browser; a second login replaces them and gets yet another session id.
    let planted_sid = "FixatedSessionId012345";
    let planted_rt = format!(
        "prt1.{}.{planted_sid}.{}",
        URL_SAFE_NO_PAD.encode("alice"),
        "A".repeat(43)
    );
    let planted_at = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"at+jwt"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"alice","sid":"{planted_sid}"}}"#)),
        URL_SAFE_NO_PAD.encode([7u8; 64])
    );
    victim.set_cookie(ACCESS_COOKIE, &planted_at, "/");
    victim.set_cookie(REFRESH_COOKIE, &planted_rt, "/auth");
    victim.set_cookie(CSRF_COOKIE, planted_csrf, "/");
    let r = victim.login("alice", ALICE_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_ne!(victim.cookie(ACCESS_COOKIE).unwrap(), planted_at);
    assert_ne!(victim.cookie(REFRESH_COOKIE).unwrap(), planted_rt);
    assert_ne!(victim.cookie(CSRF_COOKIE).unwrap(), planted_csrf);
    assert_eq!(victim.navigate(APP).await.status, StatusCode::OK);
    let (subject, second_sid) = forwarded_session(&gw);
    assert_eq!(subject, "alice");
    assert_ne!(second_sid, planted_sid);
    assert_ne!(second_sid, first_sid, "two logins, one session id");
    assert_ne!(victim.cookie(ACCESS_COOKIE).unwrap(), at);
    assert_ne!(victim.cookie(REFRESH_COOKIE).unwrap(), rt);
    assert_ne!(victim.cookie(CSRF_COOKIE).unwrap(), csrf);
    // The forged values are useless after the login too.
    assert_refresh_refused(
        &refresh(&gw, &planted_rt).await,
        "the planted refresh token",
    );
    assert_eq!(app(&gw, &planted_at).await, StatusCode::UNAUTHORIZED);
    let none = gw.store().session("alice", planted_sid, gw.now()).await;
    assert_eq!(none.unwrap(), None, "a session exists under the planted id");
}

// ---------------------------------------------------------------------------------------------
// 16. Idle timeout and absolute lifetime
// ---------------------------------------------------------------------------------------------

/// Access tokens of 1 s, sessions idle after 2 s and over after 5 s.
fn short_lived(setup: AuthSetup) -> AuthSetup {
    AuthSetup {
        clock: Clock::manual(),
        access_ttl: "1s".into(),
        idle_timeout: "2s".into(),
        absolute_lifetime: "5s".into(),
        ..setup
    }
}

/// The second the gateway stamped an access token with: the stores count in the same whole
/// seconds, so the schedules below are relative to it rather than to the test's own clock.
fn issued_at(access: &str) -> i64 {
    jwt_claims(access)["iat"].as_i64().unwrap()
}

async fn sec16_the_idle_timeout_is_enforced_on_refresh(setup: AuthSetup) {
    let gw = short_lived(setup).start().await;
    let s = login(&gw, "alice").await;
    let t0 = issued_at(&s.access);

    // A second in: within the idle timeout; the refresh moves it to t1 + 2.
    advance_to(&gw, t0 + 1, 300);
    let (access, next) = refreshed(&refresh(&gw, &s.refresh).await);
    let rt = next.expect("a rotated refresh token");
    let t1 = issued_at(&access);
    assert!(
        t1 + 2 < t0 + 5,
        "the refresh came too late ({}s after login) to tell idle from absolute",
        t1 - t0
    );

    // The idle timeout after that refresh, and before the absolute lifetime: refused.
    advance_to(&gw, t1 + 2, 300);
    assert_refresh_refused(&refresh(&gw, &rt).await, "a refresh after the idle timeout");
    assert_eq!(
        gw.store().session("alice", &s.sid, gw.now()).await.unwrap(),
        None
    );
}

async fn sec16_the_absolute_lifetime_is_enforced_on_refresh_however_often_it_is_refreshed(
    setup: AuthSetup,
) {
    let gw = short_lived(setup).start().await;
    let s = login(&gw, "alice").await;
    let t0 = issued_at(&s.access);

    // A refresh every second keeps the session from going idle, well past the idle timeout…
    let mut rt = s.refresh.clone();
    let mut last = t0;
    while last < t0 + 4 {
        advance_to(&gw, last + 1, 300);
        let (access, next) = refreshed(&refresh(&gw, &rt).await);
        rt = next.expect("a rotated refresh token");
        assert_eq!(app(&gw, &access).await, StatusCode::OK);
        last = issued_at(&access);
    }
    // …but not past the absolute lifetime, though the last refresh was a second ago (the idle
    // timeout alone would allow this one until t0 + 6).
    advance_to(&gw, t0 + 5, 300);
    assert_refresh_refused(
        &refresh(&gw, &rt).await,
        "a refresh after the absolute lifetime",
    );
    assert_eq!(
        gw.store().session("alice", &s.sid, gw.now()).await.unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------------------------
// 17. Logout
// ---------------------------------------------------------------------------------------------

/// The logout response expires each cookie with its own name and path, and clears the site's
/// cookies.
#[track_caller]
fn assert_expires_every_cookie(r: &TestResponse) {
    for (name, path) in [
        (ACCESS_COOKIE, "/"),
        (REFRESH_COOKIE, "/auth"),
        (BINDING_COOKIE, "/"),
        (CSRF_COOKIE, "/"),
    ] {
        let (value, attrs) = set_cookie(r, name);
        assert_eq!(value, "", "{name} is emptied");
        assert_eq!(attr(&attrs, "path"), Some(path), "{name}: {attrs:?}");
        assert_eq!(attr(&attrs, "max-age"), Some("0"), "{name}: {attrs:?}");
        // A `__Host-`/`__Secure-` cookie is only replaced (and so deleted) by a `Secure` one,
        // and a `__Host-` one never has a `Domain`.
        assert!(attr(&attrs, "secure").is_some(), "{name}: {attrs:?}");
        assert!(attr(&attrs, "domain").is_none(), "{name}: {attrs:?}");
        assert!(attr(&attrs, "httponly").is_some(), "{name}: {attrs:?}");
    }
    assert_eq!(
        r.headers
            .get("clear-site-data")
            .map(|v| v.to_str().unwrap()),
        Some("\"cookies\"")
    );
}

async fn sec17_logout_fails_the_access_token_the_refresh_token_and_the_session_and_expires_every_cookie(
    setup: AuthSetup,
) {
    let gw = setup.start().await;

    // A browser, with cookies and the CSRF token.
    let mut browser = gw.browser();
    let r = browser.login("alice", ALICE_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.navigate(APP).await.status, StatusCode::OK);
    let sid = forwarded_session(&gw).1;
    let signed_in = browser.clone();
    let (at, rt) = (
        browser.cookie(ACCESS_COOKIE).unwrap(),
        browser.cookie(REFRESH_COOKIE).unwrap(),
    );
    let csrf = browser.cookie(CSRF_COOKIE).unwrap();
    let r = browser.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers["location"], "/auth/login");
    assert_expires_every_cookie(&r);
    assert!(browser.jar.is_empty(), "cookies left: {:?}", browser.jar);

    let seen = gw.upstream.count();
    assert_eq!(app(&gw, &at).await, StatusCode::UNAUTHORIZED);
    // The old cookies, as a browser that ignored the expiry would send them.
    let mut stale: Browser = signed_in.clone();
    let r = stale.navigate(APP).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login")
    );
    let r = stale.refresh(APP).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login")
    );
    assert!(stale.cookie(ACCESS_COOKIE).is_none(), "{:?}", stale.jar);
    assert_refresh_refused(&refresh(&gw, &rt).await, "the logged-out refresh token");
    assert_eq!(
        gw.upstream.count(),
        seen,
        "the upstream saw a logged-out token"
    );
    assert_eq!(
        gw.store().session("alice", &sid, gw.now()).await.unwrap(),
        None
    );

    // An API client, logging out with its bearer token.
    let s = login(&gw, "alice").await;
    assert_eq!(app(&gw, &s.access).await, StatusCode::OK);
    let r = gw
        .post_json(
            "/auth/logout",
            &json!({}),
            &[("authorization", &bearer(&s.access))],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_expires_every_cookie(&r);
    assert_eq!(app(&gw, &s.access).await, StatusCode::UNAUTHORIZED);
    assert_refresh_refused(
        &refresh(&gw, &s.refresh).await,
        "the logged-out refresh token",
    );
    assert_eq!(
        gw.store().session("alice", &s.sid, gw.now()).await.unwrap(),
        None
    );
    let left = gw.store().sessions_of("alice", gw.now()).await.unwrap();
    assert!(left.is_empty(), "sessions left: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// 18. Logout everywhere
// ---------------------------------------------------------------------------------------------

async fn sec18_logout_all_fails_every_session_of_the_user_on_every_instance_and_a_new_login_works(
    setup: AuthSetup,
) {
    let (setup, _key) = with_shared_key(setup);
    let a = setup.start().await;
    let b = second_instance(&setup, &a).await;
    let mut alice = Vec::new();
    for _ in 0..3 {
        alice.push(login(&a, "alice").await);
    }
    let bob = login(&a, "bob").await;
    for s in alice.iter().chain([&bob]) {
        assert_eq!(app(&a, &s.access).await, StatusCode::OK);
        if let Some(b) = &b {
            assert_eq!(app(b, &s.access).await, StatusCode::OK);
            assert_eq!(app(b, &s.access).await, StatusCode::OK);
        }
    }

    let started = Instant::now();
    let r = a
        .post_json(
            "/auth/logout-all",
            &json!({}),
            &[("authorization", &bearer(&alice[1].access))],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    for (i, s) in alice.iter().enumerate() {
        let what = format!("sec18 POST /auth/logout-all on A, alice's session {i}");
        refused_everywhere(&a, b.as_ref(), &s.access, started, &what).await;
    }
    for s in &alice {
        assert_refresh_refused(&refresh(&a, &s.refresh).await, "a refresh after logout-all");
        if let Some(b) = &b {
            assert_refresh_refused(
                &refresh(b, &s.refresh).await,
                "a refresh on B after logout-all",
            );
        }
    }
    let left = a.store().sessions_of("alice", a.now()).await.unwrap();
    assert!(left.is_empty(), "sessions left: {left:?}");

    // Another user is not affected.
    assert_eq!(app(&a, &bob.access).await, StatusCode::OK);
    if let Some(b) = &b {
        assert_eq!(app(b, &bob.access).await, StatusCode::OK);
    }
    let (bob_access, _) = refreshed(&refresh(&a, &bob.refresh).await);
    assert_eq!(app(&a, &bob_access).await, StatusCode::OK);

    // A new login right after (most likely within the same second) works everywhere.
    let fresh = login(&a, "alice").await;
    assert_eq!(app(&a, &fresh.access).await, StatusCode::OK);
    if let Some(b) = &b {
        assert_eq!(app(b, &fresh.access).await, StatusCode::OK);
    }
    let (access, next) = refreshed(&refresh(&a, &fresh.refresh).await);
    assert!(next.is_some());
    assert_eq!(app(&a, &access).await, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 19. Only one's own sessions
// ---------------------------------------------------------------------------------------------

/// `GET /auth/sessions` as JSON: (subject, [(id, current)]).
async fn list_sessions(gw: &TestGateway, access: &str) -> (String, BTreeSet<(String, bool)>) {
    let r = gw.api_get("/auth/sessions", access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    let ids = v["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["current"].as_bool().unwrap(),
            )
        })
        .collect();
    (v["subject"].as_str().unwrap().to_owned(), ids)
}

async fn sec19_a_user_lists_only_their_own_sessions_and_cannot_revoke_another_users(
    setup: AuthSetup,
) {
    let gw = setup.start().await;
    let alice1 = login(&gw, "alice").await;
    let alice2 = login(&gw, "alice").await;
    let bob = login(&gw, "bob").await;

    let (subject, listed) = list_sessions(&gw, &alice1.access).await;
    assert_eq!(subject, "alice");
    assert_eq!(
        listed,
        BTreeSet::from([(alice1.sid.clone(), true), (alice2.sid.clone(), false)])
    );
    let (subject, listed) = list_sessions(&gw, &bob.access).await;
    assert_eq!(subject, "bob");
    assert_eq!(listed, BTreeSet::from([(bob.sid.clone(), true)]));
    let r = anonymous_get(&gw, "/auth/sessions").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Alice cannot end Bob's session: it is not one of hers.
    let r = gw
        .post_json(
            "/auth/sessions/revoke",
            &json!({ "session": bob.sid }),
            &[("authorization", &bearer(&alice1.access))],
        )
        .await;
    assert!(
        matches!(r.status, StatusCode::NOT_FOUND | StatusCode::FORBIDDEN),
        "{}: {}",
        r.status,
        r.text()
    );
    assert_eq!(app(&gw, &bob.access).await, StatusCode::OK);
    assert_eq!(
        list_sessions(&gw, &bob.access).await.1,
        BTreeSet::from([(bob.sid.clone(), true)])
    );
    let (bob_access, next) = refreshed(&refresh(&gw, &bob.refresh).await);
    assert!(next.is_some());
    assert_eq!(app(&gw, &bob_access).await, StatusCode::OK);

    // Positive control: the same request for her own other session works.
    let r = gw
        .post_json(
            "/auth/sessions/revoke",
            &json!({ "session": alice2.sid }),
            &[("authorization", &bearer(&alice1.access))],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(app(&gw, &alice2.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        list_sessions(&gw, &alice1.access).await.1,
        BTreeSet::from([(alice1.sid.clone(), true)])
    );
}

// ---------------------------------------------------------------------------------------------
// 20. Rotation and reuse detection
// ---------------------------------------------------------------------------------------------

async fn sec20_each_refresh_returns_a_new_refresh_token_and_the_old_one_yields_none(
    setup: AuthSetup,
) {
    let gw = setup.start().await;
    let s = login(&gw, "alice").await;
    let mut seen = vec![s.refresh.clone()];
    let mut current = s.refresh.clone();
    for _ in 0..3 {
        let (access, next) = refreshed(&refresh(&gw, &current).await);
        let next = next.expect("every refresh returns a new refresh token");
        assert!(!seen.contains(&next), "a refresh token came back");
        assert_eq!(jwt_claims(&access)["sid"], s.sid.as_str());
        assert_eq!(app(&gw, &access).await, StatusCode::OK);
        seen.push(next.clone());
        current = next;
    }
    // Inside the grace window (10 s here) an old token is a second tab, not a thief: it may get
    // an access token, but never a refresh token — the family has exactly one live member.
    for old in &seen[..seen.len() - 1] {
        let r = refresh(&gw, old).await;
        if r.status == StatusCode::OK {
            let (_, next) = refreshed(&r);
            assert_eq!(next, None, "a rotated refresh token was rotated again");
        } else {
            assert_refresh_refused(&r, "an old refresh token");
        }
    }
    let (_, next) = refreshed(&refresh(&gw, &current).await);
    assert!(next.is_some(), "the current token still rotates");
}

async fn sec20_reuse_outside_the_grace_window_revokes_the_whole_session_and_is_audited(
    setup: AuthSetup,
) {
    let gw = AuthSetup {
        refresh_grace: "1s".into(),
        clock: Clock::manual(),
        ..setup
    }
    .start()
    .await;
    let s = login(&gw, "alice").await;
    let other = login(&gw, "alice").await;
    let (access1, rt1) = refreshed(&refresh(&gw, &s.refresh).await);
    let rt1 = rt1.unwrap();
    let (access2, rt2) = refreshed(&refresh(&gw, &rt1).await);
    let rt2 = rt2.unwrap();
    assert_eq!(app(&gw, &access2).await, StatusCode::OK);
    let rotated_at = gw.now();

    // More than the 1 s grace window later (whole seconds: two of them), the first token again.
    advance_to(&gw, rotated_at + 2, 100);
    assert_refresh_refused(&refresh(&gw, &s.refresh).await, "a reused refresh token");

    // The whole session is gone: every access token of it, and its current refresh token.
    for access in [&s.access, &access1, &access2] {
        assert_eq!(app(&gw, access).await, StatusCode::UNAUTHORIZED);
    }
    assert_refresh_refused(
        &refresh(&gw, &rt2).await,
        "the current refresh token of a revoked family",
    );
    assert_eq!(
        gw.store().session("alice", &s.sid, gw.now()).await.unwrap(),
        None
    );
    // Only that session: the user's other session is untouched.
    assert_eq!(app(&gw, &other.access).await, StatusCode::OK);

    let events = gw.audit_events().await;
    let reuse: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "refresh.reuse_detected")
        .collect();
    assert_eq!(reuse.len(), 1, "{events:#?}");
    assert_eq!(reuse[0]["reason_id"], "refresh.reuse_detected");
    assert_eq!(reuse[0]["subject"], "alice");
    assert_eq!(reuse[0]["session"], s.sid.as_str());
    let line = serde_json::to_string(reuse[0]).unwrap();
    assert!(
        !line.contains("prt1.") && !line.contains("prt2."),
        "the audit line carries a token: {line}"
    );
}

async fn sec20_twenty_parallel_refreshes_with_one_token_rotate_exactly_once_without_a_reuse_verdict(
    setup: AuthSetup,
) {
    let gw = setup.start().await;
    let s = login(&gw, "alice").await;
    let url = gw.url("/auth/refresh");
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, barrier) = (url.clone(), barrier.clone());
            let body = json!({ "refresh_token": s.refresh }).to_string();
            tokio::spawn(async move {
                let request = Request::post(url)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                barrier.wait().await;
                send(request).await
            })
        })
        .collect();
    let responses: Vec<TestResponse> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();

    let mut successors = Vec::new();
    for r in &responses {
        // Inside the grace window every one of them is a concurrent tab: none is refused.
        let (access, next) = refreshed(r);
        assert_eq!(app(&gw, &access).await, StatusCode::OK);
        successors.extend(next);
    }
    assert_eq!(successors.len(), 1, "rotations: {successors:?}");

    let events = gw.audit_events().await;
    let of_session = |reason: &str| {
        events
            .iter()
            .filter(|e| e["session"] == s.sid.as_str() && e["reason_id"] == reason)
            .count()
    };
    assert_eq!(of_session("refresh.rotated"), 1, "{events:#?}");
    assert_eq!(of_session("refresh.reuse_detected"), 0, "{events:#?}");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "refresh.reuse_detected"),
        "{events:#?}"
    );

    // The family lives on through its one successor.
    assert_eq!(app(&gw, &s.access).await, StatusCode::OK);
    let (_, next) = refreshed(&refresh(&gw, &successors[0]).await);
    assert!(next.is_some());
}

// ---------------------------------------------------------------------------------------------
// 21. Mixed credentials and tampering
// ---------------------------------------------------------------------------------------------

async fn sec21_a_refresh_token_with_another_users_access_token_is_refused(setup: AuthSetup) {
    let gw = setup.start().await;
    let alice = login(&gw, "alice").await;
    let bob = login(&gw, "bob").await;
    let csrf = "csrf-token-of-this-browser-0123456789";
    let origin = gw.origin();

    // Alice's refresh token in the body, Bob's access token as bearer or as cookie.
    let r = refresh_with(
        &gw,
        &alice.refresh,
        &[("authorization", &bearer(&bob.access))],
    )
    .await;
    assert_refresh_refused(&r, "alice's refresh token with bob's bearer token");
    let r = refresh_with(
        &gw,
        &alice.refresh,
        &[("cookie", &format!("{ACCESS_COOKIE}={}", bob.access))],
    )
    .await;
    assert_refresh_refused(&r, "alice's refresh token with bob's access cookie");

    // A browser holding Alice's refresh cookie and Bob's access cookie.
    let cookies = format!(
        "{ACCESS_COOKIE}={}; {REFRESH_COOKIE}={}; {CSRF_COOKIE}={csrf}",
        bob.access, alice.refresh
    );
    let r = send(
        Request::post(gw.url("/auth/refresh"))
            .header("cookie", &cookies)
            .header("x-csrf-token", csrf)
            .header("origin", &origin)
            .header("sec-fetch-site", "same-origin")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_refresh_refused(&r, "alice's refresh cookie with bob's access cookie");
    let mut browser = gw.browser();
    browser.set_cookie(ACCESS_COOKIE, &bob.access, "/");
    browser.set_cookie(REFRESH_COOKIE, &alice.refresh, "/auth");
    browser.set_cookie(CSRF_COOKIE, csrf, "/");
    let r = browser.refresh(APP).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login"),
        "{:?}",
        r.headers
    );
    assert!(browser.cookie(ACCESS_COOKIE).is_none(), "{:?}", browser.jar);

    // Positive controls: each with its own owner's access token, or with none, refreshes.
    let (access, next) = refreshed(
        &refresh_with(
            &gw,
            &alice.refresh,
            &[("authorization", &bearer(&alice.access))],
        )
        .await,
    );
    assert_eq!(jwt_claims(&access)["sub"], "alice");
    assert!(next.is_some());
    let (access, _) = refreshed(&refresh(&gw, &bob.refresh).await);
    assert_eq!(jwt_claims(&access)["sub"], "bob");
}

/// The case a browser meets: its access cookie has expired (that is when it refreshes), and a
/// refresh cookie of another user sits next to it — `__Secure-` cookies, unlike `__Host-` ones,
/// can be planted by a sibling subdomain, so an attacker can try to slip the victim into the
/// attacker's session. The expired token still proves, by its signature, whose browser it is.
async fn sec21_a_refresh_token_with_another_users_expired_access_cookie_is_refused(
    setup: AuthSetup,
) {
    let gw = AuthSetup {
        access_ttl: "1s".into(),
        extra: "tokens: { leeway: 0s }".into(),
        clock: Clock::manual(),
        ..setup
    }
    .start()
    .await;
    let victim = login(&gw, "bob").await;
    let attacker = login(&gw, "alice").await;
    let expired_at = jwt_claims(&victim.access)["exp"].as_i64().unwrap();
    advance_to(&gw, expired_at + 1, 100);
    assert_eq!(app(&gw, &victim.access).await, StatusCode::UNAUTHORIZED);

    let csrf = "csrf-token-of-this-browser-0123456789";
    let mut browser = gw.browser();
    browser.set_cookie(ACCESS_COOKIE, &victim.access, "/");
    browser.set_cookie(REFRESH_COOKIE, &attacker.refresh, "/auth");
    browser.set_cookie(CSRF_COOKIE, csrf, "/");
    let r = browser.refresh(APP).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let location = r.headers["location"].to_str().unwrap();
    let swapped_into = browser
        .cookie(ACCESS_COOKIE)
        .map(|at| jwt_claims(&at)["sub"].clone());
    assert!(
        location.starts_with("/auth/login") && swapped_into.is_none(),
        "bob's browser, its access cookie expired, was refreshed into alice's session by her \
         refresh cookie: 303 to {location}, new access cookie for {swapped_into:?}"
    );
    let r = refresh_with(
        &gw,
        &attacker.refresh,
        &[("authorization", &bearer(&victim.access))],
    )
    .await;
    assert_refresh_refused(&r, "alice's refresh token with bob's expired bearer token");

    // Positive control: the victim's own refresh cookie (a browser's, with its binding cookie)
    // next to the same expired access cookie works.
    let mut own = gw.browser();
    assert_eq!(
        own.login("bob", BOB_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let own_sid = refresh_parts(&own.cookie(REFRESH_COOKIE).unwrap())[2].clone();
    own.set_cookie(ACCESS_COOKIE, &victim.access, "/");
    let r = own.refresh(APP).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers["location"], APP);
    assert_eq!(own.navigate(APP).await.status, StatusCode::OK);
    assert_eq!(forwarded_session(&gw), ("bob".into(), own_sid));
}

async fn sec21_a_tampered_refresh_token_or_an_access_token_sent_as_one_is_refused(
    setup: AuthSetup,
) {
    let gw = setup.start().await;
    let alice = login(&gw, "alice").await;
    let alice2 = login(&gw, "alice").await;
    let bob = login(&gw, "bob").await;
    let [prefix, sub, sid, secret] = refresh_parts(&alice.refresh);
    let bob_sub = refresh_parts(&bob.refresh)[1].clone();
    let flip = |s: &str, at: usize| {
        let mut chars: Vec<char> = s.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let tampered = [
        (
            "another subject",
            format!("{prefix}.{bob_sub}.{sid}.{secret}"),
        ),
        (
            "another subject and that subject's session",
            format!("{prefix}.{bob_sub}.{}.{secret}", bob.sid),
        ),
        (
            "another user's session",
            format!("{prefix}.{sub}.{}.{secret}", bob.sid),
        ),
        (
            "another session of the same user",
            format!("{prefix}.{sub}.{}.{secret}", alice2.sid),
        ),
        (
            "a flipped first secret character",
            format!("{prefix}.{sub}.{sid}.{}", flip(&secret, 0)),
        ),
        (
            "a flipped last secret character",
            format!("{prefix}.{sub}.{sid}.{}", flip(&secret, secret.len() - 1)),
        ),
        (
            "a flipped session character",
            format!("{prefix}.{sub}.{}.{secret}", flip(&sid, 5)),
        ),
        (
            "another subject spelling",
            format!(
                "{prefix}.{}.{sid}.{secret}",
                URL_SAFE_NO_PAD.encode("Alice")
            ),
        ),
        (
            "a truncated secret",
            format!("{prefix}.{sub}.{sid}.{}", &secret[..42]),
        ),
        ("a padded secret", format!("{}=", alice.refresh)),
        ("an extra segment", format!("{}.x", alice.refresh)),
        ("another prefix", format!("prt2.{sub}.{sid}.{secret}")),
        ("no prefix", format!("{sub}.{sid}.{secret}")),
        (
            "the other session's own token",
            alice2.refresh.replace(&alice2.sid, &sid),
        ),
    ];
    for (what, token) in &tampered {
        assert_ne!(token, &alice.refresh, "{what}");
        assert_refresh_refused(&refresh(&gw, token).await, what);
    }

    // An access token is not a refresh token (docs/security.md 9), in the body or in the cookie…
    assert_refresh_refused(
        &refresh(&gw, &alice.access).await,
        "an access token as refresh token",
    );
    let mut browser = gw.browser();
    browser.set_cookie(REFRESH_COOKIE, &alice.access, "/auth");
    browser.set_cookie(CSRF_COOKIE, "csrf-token-of-this-browser-0123456789", "/");
    let r = browser.refresh(APP).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(browser.cookie(ACCESS_COOKIE).is_none(), "{:?}", browser.jar);
    // …and a refresh token is not an access token.
    assert_eq!(app(&gw, &alice.refresh).await, StatusCode::UNAUTHORIZED);

    // Positive control: the untampered token was valid all along, and no refusal consumed it.
    let events = gw.audit_events().await;
    assert!(
        !events.iter().any(|e| e["reason_id"] == "refresh.rotated"),
        "a tampered token rotated something: {events:#?}"
    );
    let (access, next) = refreshed(&refresh(&gw, &alice.refresh).await);
    assert_eq!(jwt_claims(&access)["sid"], sid.as_str());
    assert!(next.is_some());
}
