//! The signed identity assertion for backends (docs/security.md 42): on routes whose upstream
//! (or which themselves) configure `assertion:`, the upstream receives a short-lived JWT it can
//! verify through the gateway's JWKS instead of trusting the network; it is cached per token
//! and audience, never outlives the access token, never comes from the client, and is never
//! accepted as an access token.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use portcullis::clock::Clock;
use portcullis::config::Config;
use serde_json::{Value, json};

use crate::common::auth::{ALICE_PASSWORD, api_login, demo_users, post_json};
use crate::common::{EchoUpstream, Seen, TestGateway, TestKey, launch, send, user_key};

const GATEWAY: &str = "https://gw.test";
const BACKEND: &str = "https://backend.example";
const SHORT: &str = "https://short.example";
const HEADER: &str = "x-auth-assertion";
const TYP: &str = "portcullis-assertion+jwt";

/// Routes of every test gateway: the upstream's assertion on `/app` and `/docs`, none on
/// `/public` (no identity) and `/off` (`assertion: false`), and a route of its own on `/short`.
const ROUTES: &str = r#"
  - { id: public, path: /public, upstream: echo, policy: public }
  - { id: app, path: /app, upstream: echo, policy: authenticated }
  - { id: docs, path: /docs, upstream: echo, policy: { all_of: [docs:read] } }
  - { id: off, path: /off, upstream: echo, policy: authenticated, assertion: false }
  - id: short
    path: /short
    upstream: echo
    policy: authenticated
    assertion: { audience: "https://short.example", ttl: 10s, header: X-Backend-Jwt }
  - { id: decided, path: /decided, policy: authenticated, assertion: { audience: "https://decided.example" } }
"#;

/// A gateway with `auth:` (whose keys sign assertions) that also trusts test tokens of
/// `https://issuer.test` without sessions, in front of a recording echo upstream whose
/// `assertion:` is `{ audience: https://backend.example }` plus `upstream_extra`.
async fn gateway(upstream_extra: &str, clock: Clock) -> TestGateway {
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let yaml = format!(
        r#"
listeners:
  - bind: 127.0.0.1:0
issuers:
  - issuer: {issuer}
    audiences: [{audience}]
    require_session: false
    keys:
      - {key}
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
upstreams:
  echo:
    url: "{url}"
    response_timeout: 5s
    assertion: {{ audience: "{BACKEND}"{upstream_extra} }}
routes:
{ROUTES}
trusted_proxies: [127.0.0.1]
forward_auth:
  - {{ contract: forwarded }}
auth:
  issuer: {GATEWAY}
  audience: gw-tests
  users_file: users.yaml
"#,
        issuer = crate::common::ISSUER,
        audience = crate::common::AUDIENCE,
        key = key.yaml_entry(dir.path()),
        url = upstream.url(),
    );
    let running = launch(&yaml, dir.path(), clock).await;
    TestGateway::new(running, upstream, dir, vec![key])
}

/// GET `path` with a bearer token and extra headers; the status.
async fn get(gw: &TestGateway, path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> u16 {
    let mut req = Request::get(gw.url(path));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .status
        .as_u16()
}

/// The values of `name` the upstream received with `seen`.
fn values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The one assertion the upstream received last, in `name`.
fn last_assertion(gw: &TestGateway, name: &str) -> String {
    let seen = gw.upstream.last();
    match values(&seen, name).as_slice() {
        [one] => one.clone(),
        other => panic!("expected exactly one {name}, got {other:?}"),
    }
}

/// Verifies `jwt` as a backend would: the key by `kid` from the gateway's JWKS, the algorithm
/// that key names, `iss` the gateway, `aud` the backend's. Returns the JOSE header's `typ` and
/// the claims.
async fn verify(gw: &TestGateway, jwt: &str, audience: &str) -> (String, Value) {
    let jwks = gw.get("/.well-known/jwks.json").await;
    assert_eq!(jwks.status, StatusCode::OK);
    let jwks: JwkSet = serde_json::from_slice(&jwks.body).unwrap();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().expect("the assertion names its kid"))
        .expect("the assertion's kid is in the JWKS");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[GATEWAY]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["iss", "aud", "sub", "iat", "exp"]);
    let data =
        jsonwebtoken::decode::<Value>(jwt, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap_or_else(|e| panic!("the assertion does not verify: {e}"));
    (header.typ.unwrap_or_default(), data.claims)
}

#[tokio::test]
async fn forward_auth_answers_carry_the_assertion_of_the_route_decided() {
    // Behind a front proxy the backend gets the assertion from the decision: the route's
    // upstream's audience, or the route's own on a decision-only route.
    let gw = gateway("", Clock::manual()).await;
    let (access, _, session) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    let ask = |uri: &'static str, token: Option<String>| {
        let mut r = Request::get(gw.url("/_portcullis/forward"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "app.example.com")
            .header("x-forwarded-uri", uri)
            .header(HEADER, "forged.by.client");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        send(r.body(Full::new(Bytes::new())).unwrap())
    };
    for (uri, audience) in [
        ("/app/x", BACKEND),
        ("/decided/x", "https://decided.example"),
    ] {
        let r = ask(uri, Some(access.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.text());
        let jwt = r.headers[HEADER].to_str().unwrap().to_owned();
        let (typ, claims) = verify(&gw, &jwt, audience).await;
        assert_eq!(typ, TYP);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["sid"], session);
    }
    // No identity, no assertion; and never the client's.
    let r = ask("/public/x", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key(HEADER));
    let r = ask("/off/x", Some(access)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key(HEADER));
    assert_eq!(gw.upstream.count(), 0);
}

fn minted(gw: &TestGateway) -> u64 {
    gw.running
        .gateway()
        .metrics()
        .assertions_minted
        .load(Ordering::Relaxed)
}

fn cached(gw: &TestGateway) -> u64 {
    gw.running
        .gateway()
        .metrics()
        .assertions_cached
        .load(Ordering::Relaxed)
}

#[tokio::test]
async fn the_upstream_receives_an_assertion_that_verifies_against_the_gateways_jwks() {
    let gw = gateway("", Clock::manual()).await;
    let (access, _, session) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    assert_eq!(get(&gw, "/app/x", Some(&access), &[]).await, 200);
    let jwt = last_assertion(&gw, HEADER);
    let (typ, claims) = verify(&gw, &jwt, BACKEND).await;
    assert_eq!(typ, TYP);
    assert_eq!(claims["iss"], GATEWAY);
    assert_eq!(claims["aud"], BACKEND);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["sid"], session.as_str());
    // alice is a reader and an editor in the demo users file.
    assert_eq!(claims["permissions"], json!(["docs:read", "docs:write"]));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(iat, gw.now());
    assert_eq!(exp - iat, 60);
    assert!(claims.get("nbf").is_none());
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 22, "128 bits, base64url: {jti}");
    let keys: Vec<&str> = claims.as_object().unwrap().keys().map(|k| &**k).collect();
    assert_eq!(
        keys.len(),
        8,
        "iss aud sub sid permissions iat exp jti: {keys:?}"
    );

    // Another issuer's token without a session: no `sid`, its roles' permissions, and the
    // user named with the issuer, never the users file's `alice`.
    let token = gw.token(json!({ "sid": null, "roles": ["reader"] }));
    assert_eq!(get(&gw, "/docs/a", Some(&token), &[]).await, 200);
    let (_, claims) = verify(&gw, &last_assertion(&gw, HEADER), BACKEND).await;
    assert_eq!(claims["sub"], user_key("alice"));
    assert!(claims.get("sid").is_none(), "{claims}");
    assert_eq!(claims["permissions"], json!(["docs:read"]));
}

#[tokio::test]
async fn a_client_sent_assertion_never_reaches_the_upstream_on_public_or_protected_routes() {
    let gw = gateway("", Clock::system()).await;
    let token = gw.token(json!({}));
    let forged = [
        ("X-Auth-Assertion", "forged"),
        ("x_auth_assertion", "forged"),
        ("X-Backend-Jwt", "forged"),
        ("x_backend_jwt", "forged"),
    ];
    for (path, token, ours) in [
        ("/public", None, None),
        ("/off", Some(token.as_str()), None),
        ("/app", Some(token.as_str()), Some(HEADER)),
        ("/short", Some(token.as_str()), Some("x-backend-jwt")),
    ] {
        assert_eq!(get(&gw, path, token, &forged).await, 200, "{path}");
        let seen = gw.upstream.last();
        for (name, value) in &seen.headers {
            assert_ne!(
                value, "forged",
                "{path}: the client's {name} reached the upstream"
            );
        }
        for name in [HEADER, "x-backend-jwt"] {
            let got = values(&seen, name);
            if Some(name) == ours {
                assert_eq!(got.len(), 1, "{path}: {got:?}");
            } else {
                assert!(got.is_empty(), "{path}: {name} {got:?}");
            }
        }
    }
}

#[tokio::test]
async fn requests_with_one_token_share_an_assertion_for_half_its_ttl_without_signing_again() {
    let gw = gateway("", Clock::manual()).await;
    let token = gw.token(json!({ "exp": gw.now() + 600 }));
    assert_eq!(get(&gw, "/app", Some(&token), &[]).await, 200);
    let first = last_assertion(&gw, HEADER);
    assert_eq!((minted(&gw), cached(&gw)), (1, 0));

    // Another route to the same audience, and exactly half the ttl later: the same one,
    // not signed again.
    gw.advance(Duration::from_secs(30));
    assert_eq!(get(&gw, "/docs", Some(&token), &[]).await, 200);
    assert_eq!(last_assertion(&gw, HEADER), first);
    assert_eq!((minted(&gw), cached(&gw)), (1, 1));

    // Past half its ttl: a new one, valid for a full ttl from now.
    gw.advance(Duration::from_secs(1));
    assert_eq!(get(&gw, "/app", Some(&token), &[]).await, 200);
    let second = last_assertion(&gw, HEADER);
    assert_ne!(second, first);
    assert_eq!((minted(&gw), cached(&gw)), (2, 1));
    let claims = payload(&second);
    assert_eq!(claims["iat"].as_i64().unwrap(), gw.now());
    assert_eq!(claims["exp"].as_i64().unwrap(), gw.now() + 60);

    // Another token of the same user and session is another assertion.
    let other = gw.token(json!({ "exp": gw.now() + 600 }));
    assert_eq!(get(&gw, "/app", Some(&other), &[]).await, 200);
    assert_ne!(last_assertion(&gw, HEADER), second);
    assert_eq!(minted(&gw), 3);

    let text = gw
        .running
        .gateway()
        .metrics()
        .render(&portcullis::metrics::Gauges::default());
    assert!(
        text.contains("portcullis_assertions_minted_total 3"),
        "{text}"
    );
    assert!(
        text.contains("portcullis_assertions_cached_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_route_with_assertion_false_gets_none_and_a_route_of_its_own_gets_its_audience() {
    let gw = gateway("", Clock::system()).await;
    let token = gw.token(json!({}));
    assert_eq!(get(&gw, "/off", Some(&token), &[]).await, 200);
    let seen = gw.upstream.last();
    assert!(values(&seen, HEADER).is_empty());
    assert!(values(&seen, "x-backend-jwt").is_empty());
    // The route's own audience, ttl and header.
    assert_eq!(get(&gw, "/short", Some(&token), &[]).await, 200);
    let seen = gw.upstream.last();
    assert!(values(&seen, HEADER).is_empty());
    let (_, claims) = verify(&gw, &last_assertion(&gw, "x-backend-jwt"), SHORT).await;
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 10);
    // A public route has no identity, so no assertion.
    assert_eq!(get(&gw, "/public", Some(&token), &[]).await, 200);
    assert!(values(&gw.upstream.last(), HEADER).is_empty());
}

#[tokio::test]
async fn an_assertion_presented_to_the_gateway_as_an_access_token_is_refused_with_401() {
    let gw = gateway("", Clock::system()).await;
    let (access, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    assert_eq!(get(&gw, "/app", Some(&access), &[]).await, 200);
    let jwt = last_assertion(&gw, HEADER);
    let forwarded = gw.upstream.count();
    // Signed by the gateway's own key, live, naming a live session: refused for its `typ`.
    for path in ["/app", "/docs", "/off"] {
        assert_eq!(get(&gw, path, Some(&jwt), &[]).await, 401, "{path}");
        let cookie = format!("__Host-portcullis-at={jwt}");
        assert_eq!(get(&gw, path, None, &[("cookie", &cookie)]).await, 401);
    }
    let r = post_json(
        &gw.url("/auth/logout-all"),
        &json!({}),
        &[("authorization", &format!("Bearer {jwt}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(gw.upstream.count(), forwarded);
    // The six proxied refusals were for the wrong type, before the audience was looked at.
    let text = gw
        .running
        .gateway()
        .metrics()
        .render(&portcullis::metrics::Gauges::default());
    assert!(
        text.contains("portcullis_auth_decisions_total{reason=\"token.typ\"} 6"),
        "{text}"
    );
}

#[tokio::test]
async fn an_assertion_never_outlives_its_access_token_and_a_revoked_session_gets_none() {
    let gw = gateway("", Clock::manual()).await;
    // A token with 20 s left: its assertion ends with it, however long the ttl.
    let token = gw.token(json!({ "exp": gw.now() + 20 }));
    assert_eq!(get(&gw, "/app", Some(&token), &[]).await, 200);
    let first = last_assertion(&gw, HEADER);
    assert_eq!(payload(&first)["exp"].as_i64().unwrap(), gw.now() + 20);
    // Less than half a ttl left, but a new one could not live longer: the same one.
    gw.advance(Duration::from_secs(19));
    assert_eq!(get(&gw, "/app", Some(&token), &[]).await, 200);
    assert_eq!(last_assertion(&gw, HEADER), first);
    assert_eq!(minted(&gw), 1);

    // Logged out everywhere: the cached assertion is not sent, nothing is.
    let (access, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    assert_eq!(get(&gw, "/app", Some(&access), &[]).await, 200);
    let r = post_json(
        &gw.url("/auth/logout-all"),
        &json!({}),
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    let forwarded = gw.upstream.count();
    assert_eq!(get(&gw, "/app", Some(&access), &[]).await, 401);
    assert_eq!(gw.upstream.count(), forwarded);
}

/// The claims of `jwt`, unverified (for tests that already verified one like it).
fn payload(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

/// A config with `auth:` and one echo upstream, whose `assertion:` and routes are the
/// arguments; `with_auth: false` leaves `auth:` out.
fn config(upstream_assertion: &str, route_extra: &str, with_auth: bool) -> String {
    let auth = if with_auth {
        "auth:\n  issuer: https://gw.test\n  audience: gw-tests\n  users_file: users.yaml\n"
    } else {
        ""
    };
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\n\
         issuers:\n  - issuer: https://idp.test\n    audiences: [api, https://idp-api.test]\n    \
         keys: [{{ jwks: jwks.json }}]\n\
         upstreams:\n  app:\n    echo: true\n    assertion: {upstream_assertion}\n\
         routes:\n  - path: /\n    upstream: app\n    policy: authenticated\n{route_extra}\
         {auth}"
    )
}

/// The error `yaml` is refused with, as displayed.
fn refused(yaml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
    match Config::from_yaml(yaml, dir.path()) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_config_helper_builds_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    std::fs::write(dir.path().join("jwks.json"), r#"{"keys":[]}"#).unwrap();
    let yaml = config(
        "{ audience: https://backend.example, ttl: 60s, header: X-Backend-Jwt }",
        "    assertion: { audience: https://other.example, ttl: 5s }\n",
        true,
    );
    Config::from_yaml(&yaml, dir.path()).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
}

#[test]
fn an_assertion_ttl_over_60s_or_under_1s_is_a_config_error() {
    for ttl in ["61s", "2m", "0s", "1500ms"] {
        let e = refused(&config(
            &format!("{{ audience: https://backend.example, ttl: {ttl} }}"),
            "",
            true,
        ));
        assert!(e.contains("upstreams.app.assertion.ttl"), "{ttl}: {e}");
        assert!(e.contains("between 1s and 60s"), "{ttl}: {e}");
        assert!(e.contains("at line"), "{ttl}: {e}");
    }
    let e = refused(&config(
        "{ audience: https://backend.example }",
        "    assertion: { audience: https://other.example, ttl: 90s }\n",
        true,
    ));
    assert!(e.contains("routes[0].assertion.ttl"), "{e}");
}

#[test]
fn an_assertion_without_auth_is_a_config_error_naming_the_key() {
    let e = refused(&config("{ audience: https://backend.example }", "", false));
    assert!(e.contains("upstreams.app.assertion"), "{e}");
    assert!(e.contains("requires `auth:`"), "{e}");
    assert!(e.contains("auth.signing_keys"), "{e}");
    assert!(e.contains("at line 10"), "{e}");
}

#[test]
fn an_assertion_audience_equal_to_an_access_token_audience_is_a_config_error() {
    for (audience, named) in [
        ("gw-tests", "auth.audience"),
        ("api", "issuers[0].audiences[0]"),
        ("https://idp-api.test", "issuers[0].audiences[1]"),
    ] {
        let e = refused(&config(
            &format!("{{ audience: \"{audience}\" }}"),
            "",
            true,
        ));
        assert!(e.contains("upstreams.app.assertion.audience"), "{e}");
        assert!(e.contains(named), "{audience}: {e}");
        assert!(e.contains("never be accepted as an access token"), "{e}");
        // The same on a route.
        let e = refused(&config(
            "{ audience: https://backend.example }",
            &format!("    assertion: {{ audience: \"{audience}\" }}\n"),
            true,
        ));
        assert!(e.contains("routes[0].assertion.audience"), "{e}");
    }
    // Without `auth.audience`, the gateway's tokens are for its issuer URL.
    let yaml =
        config("{ audience: https://gw.test }", "", true).replace("  audience: gw-tests\n", "");
    let e = refused(&yaml);
    assert!(e.contains("auth.issuer"), "{e}");
}

#[test]
fn other_malformed_assertion_settings_are_config_errors() {
    let cases: [(&str, &str, &str); 7] = [
        ("{ audience: \"\" }", "", "upstreams.app.assertion.audience"),
        (
            "{ audience: https://b.example, header: Authorization }",
            "",
            "another meaning",
        ),
        (
            "{ audience: https://b.example, header: X-Auth-Subject }",
            "",
            "another meaning",
        ),
        (
            "{ audience: https://b.example, header: \"bad name\" }",
            "",
            "not a header name",
        ),
        (
            "{ audience: https://b.example, lifetime: 5s }",
            "",
            "unknown field `lifetime`",
        ),
        (
            "{ audience: https://b.example }",
            "    assertion: true\n",
            "`true` is not a setting",
        ),
        ("{ ttl: 5s }", "", "missing field `audience`"),
    ];
    for (upstream, route, want) in cases {
        let e = refused(&config(upstream, route, true));
        assert!(e.contains(want), "{upstream} / {route}: {e}");
    }
    // A public route with its own assertion would never send it.
    let yaml = config("{ audience: https://b.example }", "", true).replace(
        "    policy: authenticated\n",
        "    policy: public\n    assertion: { audience: https://c.example }\n",
    );
    let e = refused(&yaml);
    assert!(e.contains("routes[0].assertion"), "{e}");
    assert!(e.contains("no identity"), "{e}");
}
