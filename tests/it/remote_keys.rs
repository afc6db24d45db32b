//! Issuers by discovery or JWKS URI and their key sets' lifecycle (docs/security.md 40),
//! black-box: a document server started here on loopback ([`JwksServer`]: the documents can be
//! changed at any time and every request is counted) and a gateway on a manual clock. Time
//! moves with [`TestGateway::advance`]; a background refresh is run at a known point with
//! [`portcullis::reload::fetch_remote_keys`] (what the refresher runs every second), so no
//! test sleeps for a schedule. The [`oidc`] module runs the lifecycle against a real OpenID
//! Provider.

use crate::common::*;

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::clock::Clock;
use portcullis::config::Config;
use portcullis::keys::remote::Trigger;
use serde_json::{Value, json};

const ISSUER_B: &str = "https://issuer-b.test";
const COOLDOWN: Duration = Duration::from_secs(31);
const PAST_REFRESH: Duration = Duration::from_secs(301);

const ROLES_AND_ROUTES: &str = r#"
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
routes:
  - { id: api, path: /api, upstream: echo, policy: authenticated }
  - { id: docs-read, path: /docs, methods: [GET], upstream: echo, policy: { all_of: [docs:read] } }
  - { id: docs-write, path: /docs, methods: [POST], upstream: echo, policy: { all_of: [docs:write] } }
"#;

/// An `issuers:` entry for `iss` whose keys come from `source` (`discovery: …` or
/// `jwks_uri: …`), with `extra` lines (indented by four spaces).
fn issuer(iss: &str, source: &str, extra: &str) -> String {
    format!(
        "  - issuer: {iss}\n    audiences: [{AUDIENCE}]\n    require_session: false\n    {source}\n{extra}\n"
    )
}

fn yaml(issuers: &str, upstream: &str) -> String {
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nadmin: {{ bind: 127.0.0.1:0 }}\nissuers:\n{issuers}upstreams:\n  echo: {{ url: \"{upstream}\", response_timeout: 5s }}\n{ROLES_AND_ROUTES}"
    )
}

/// A gateway on a manual clock trusting `issuers`.
async fn gateway(issuers: &str) -> TestGateway {
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let running = launch(&yaml(issuers, &upstream.url()), dir.path(), Clock::manual()).await;
    TestGateway::new(running, upstream, dir, Vec::new())
}

/// A gateway trusting [`ISSUER`] by the discovery document of `idp`.
async fn by_discovery(idp: &JwksServer) -> TestGateway {
    gateway(&issuer(
        ISSUER,
        &format!("discovery: {}", idp.discovery_url()),
        "",
    ))
    .await
}

/// An access token of `iss` signed by `key`, claiming `roles`, at the gateway's time.
fn token(gw: &TestGateway, key: &TestKey, iss: &str, roles: &[&str]) -> String {
    let n = gw.now();
    key.sign_raw(
        &key.header(),
        &claims(json!({ "iss": iss, "sid": null, "roles": roles, "iat": n - 10, "exp": n + 600 })),
    )
}

async fn status(gw: &TestGateway, token: &str) -> StatusCode {
    gw.get_bearer("/docs", token).await.status
}

async fn refresh(gw: &TestGateway) {
    portcullis::reload::fetch_remote_keys(gw.running.gateway(), Trigger::Refresh)
        .await
        .unwrap();
}

async fn readyz(gw: &TestGateway) -> Value {
    let addr = gw.running.admin_addr().unwrap();
    let r = send(
        http::Request::get(format!("http://{addr}/readyz"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    r.json()
}

fn counter(gw: &TestGateway, name: &str) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let m = gw.running.gateway().metrics();
    match name {
        "fetches" => m.jwks_fetches.load(Relaxed),
        "failures" => m.jwks_fetch_failures.load(Relaxed),
        "refetches" => m.jwks_refetches.load(Relaxed),
        "refused" => m.jwks_refetches_refused.load(Relaxed),
        _ => unreachable!(),
    }
}

fn permissions(gw: &TestGateway) -> String {
    gw.upstream.last().headers["x-auth-permissions"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn sec40_an_issuer_by_discovery_accepts_tokens_signed_by_its_served_keys_with_mapped_permissions()
 {
    let key = TestKey::generate(Algorithm::RS256, "idp-rsa-1");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let gw = by_discovery(&idp).await;
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(idp.hits("/jwks"), 1, "fetched once, at start");

    let r = gw
        .get_bearer("/docs", &token(&gw, &key, ISSUER, &["editor"]))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(permissions(&gw), "docs:read,docs:write");
    assert_eq!(readyz(&gw).await["keys"], "ok");
    assert_eq!(idp.total_hits(), 2, "a request fetches nothing");
}

/// A provider-shaped access token: `header` and `payload` as the provider writes them,
/// signed by `key` (served from the provider's JWKS), issued at the gateway's time.
fn provider_token(gw: &TestGateway, key: &TestKey, typ: &str, payload: Value) -> String {
    let n = gw.now();
    let mut claims = payload;
    claims["iat"] = json!(n - 10);
    claims["exp"] = json!(n + 300);
    key.sign_raw(
        &json!({ "alg": key.alg_name(), "typ": typ, "kid": key.kid }),
        &claims,
    )
}

#[tokio::test]
async fn sec40_a_keycloak_shaped_access_token_is_accepted_by_discovery_with_realm_and_client_roles()
{
    // Keycloak: issuer `<base>/realms/<realm>`, RS256 keys served with `alg` and `use: sig`,
    // header `typ: JWT`, payload `typ: Bearer`, roles under `realm_access` and
    // `resource_access.<client>`, `azp` the client, `aud` set by an audience mapper.
    let iss = "https://kc.example.test/realms/demo";
    let key = TestKey::generate(Algorithm::RS256, "kc-rs256-Yp1rD3xM");
    let mut jwk = key.jwk();
    jwk["use"] = json!("sig");
    let idp = JwksServer::start(iss, vec![jwk]).await;
    let gw = gateway(&issuer(
        iss,
        &format!("discovery: {}", idp.discovery_url()),
        "    token_types: [JWT]\n    clients: [portcullis-api]\n    permissions:\n      - { claim: realm_access.roles, via: roles }\n      - { claim: resource_access.portcullis-api.roles, via: roles }",
    ))
    .await;
    let t = provider_token(
        &gw,
        &key,
        "JWT",
        json!({
            "iss": iss, "aud": [AUDIENCE, "account"], "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "typ": "Bearer", "azp": "portcullis-api", "sid": "5e2c1b5c-kc-session",
            "jti": "onrtac:7b9d1c3e", "scope": "openid profile email",
            "preferred_username": "alice",
            "realm_access": { "roles": ["offline_access", "uma_authorization", "reader"] },
            "resource_access": {
                "portcullis-api": { "roles": ["editor"] },
                "account": { "roles": ["manage-account"] }
            },
        }),
    );
    let r = gw.get_bearer("/docs", &t).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(permissions(&gw), "docs:read,docs:write");
    // Another client's token of the same realm (an ID token, or the account console's).
    let other = provider_token(
        &gw,
        &key,
        "JWT",
        json!({
            "iss": iss, "aud": AUDIENCE, "sub": "f81d4fae", "azp": "account-console",
            "jti": "onrtac:1", "realm_access": { "roles": ["reader"] },
        }),
    );
    assert_eq!(status(&gw, &other).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sec40_an_auth0_shaped_access_token_is_accepted_by_discovery_with_its_permissions_claim() {
    // Auth0: issuer with a trailing slash, `aud` the API identifier and the userinfo URL,
    // `permissions` array (RBAC with "Add Permissions in the Access Token"), `scope` string,
    // `azp` the client; the RFC 9068 profile's `typ: at+jwt`.
    let iss = "https://tenant.eu.auth0.test/";
    let key = TestKey::generate(Algorithm::RS256, "auth0-kid-NkJCQzc2");
    let idp = JwksServer::start(iss, vec![key.jwk()]).await;
    let gw = gateway(&issuer(
        iss,
        &format!("discovery: {}", idp.discovery_url()),
        "    clients: [kbyuFDidLLm280LIwVFiazOqjO3ty8KH]\n    permissions:\n      - { claim: permissions, prefix: \"\" }",
    ))
    .await;
    let t = provider_token(
        &gw,
        &key,
        "at+jwt",
        json!({
            "iss": iss, "sub": "auth0|64d2f1c0a1b2c3d4e5f60718",
            "aud": [AUDIENCE, "https://tenant.eu.auth0.test/userinfo"],
            "azp": "kbyuFDidLLm280LIwVFiazOqjO3ty8KH", "client_id": "kbyuFDidLLm280LIwVFiazOqjO3ty8KH",
            "jti": "b7c2a1d0e9f8", "scope": "openid profile docs:read",
            "permissions": ["docs:read", "docs:write", "delete:everything"],
        }),
    );
    let r = gw
        .send(
            http::Request::post(gw.url("/docs"))
                .header("authorization", format!("Bearer {t}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Only names the config knows reach the header.
    assert_eq!(permissions(&gw), "docs:read,docs:write");
    // The same token without the trailing slash in `iss` is another issuer: refused.
    let no_slash = provider_token(
        &gw,
        &key,
        "at+jwt",
        json!({
            "iss": "https://tenant.eu.auth0.test", "sub": "auth0|x", "aud": AUDIENCE,
            "azp": "kbyuFDidLLm280LIwVFiazOqjO3ty8KH", "jti": "j2", "permissions": ["docs:read"],
        }),
    );
    assert_eq!(status(&gw, &no_slash).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sec40_an_issuer_by_jwks_uri_accepts_tokens_of_a_jwk_without_alg_through_its_one_algorithm()
{
    let key = TestKey::generate(Algorithm::ES256, "idp-ec");
    let mut jwk = key.jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    let idp = JwksServer::start(ISSUER, vec![jwk]).await;
    let gw = gateway(&issuer(
        ISSUER,
        &format!("jwks_uri: {}", idp.jwks_url()),
        "    algorithms: [ES256, RS256]",
    ))
    .await;
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 0);
}

#[tokio::test]
async fn sec40_a_discovery_document_naming_another_issuer_is_refused_at_start() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    // One trailing slash more: byte for byte means no normalisation.
    let idp = JwksServer::start(&format!("{ISSUER}/"), vec![key.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = yaml(
        &issuer(ISSUER, &format!("discovery: {}", idp.discovery_url()), ""),
        "http://127.0.0.1:9",
    );
    let config = Config::from_yaml(&yaml, dir.path()).unwrap();
    let refused = portcullis::start_with(config, None, Clock::manual()).await;
    let Err(e) = refused else {
        panic!("the gateway must not start")
    };
    assert!(e.to_string().contains("remote keys"), "{e}");
    assert_eq!(
        idp.hits("/jwks"),
        0,
        "the JWKS of a wrong issuer is not read"
    );
}

#[tokio::test]
async fn sec40_a_new_kid_is_picked_up_by_a_refetch_and_a_removed_kid_is_refused_after_the_refresh()
{
    let old = TestKey::generate(Algorithm::EdDSA, "idp-old");
    let new = TestKey::generate(Algorithm::EdDSA, "idp-new");
    let idp = JwksServer::start(ISSUER, vec![old.jwk()]).await;
    let gw = by_discovery(&idp).await;
    let old_token = token(&gw, &old, ISSUER, &["reader"]);
    assert_eq!(status(&gw, &old_token).await, StatusCode::OK);

    // The provider rotates: the new key is published beside the old one.
    idp.set_keys(vec![old.jwk(), new.jwk()]);
    // Within the cool-down since the start's fetch, an unknown kid fetches nothing.
    assert_eq!(
        status(&gw, &token(&gw, &new, ISSUER, &["reader"])).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(idp.hits("/jwks"), 1);
    gw.advance(COOLDOWN);
    let new_token = token(&gw, &new, ISSUER, &["reader"]);
    assert_eq!(status(&gw, &new_token).await, StatusCode::OK);
    assert_eq!(idp.hits("/jwks"), 2, "one refetch for the unknown kid");
    assert_eq!(counter(&gw, "refetches"), 1);

    // The old key is retired; the next refresh drops it, and its cached token with it.
    idp.set_keys(vec![new.jwk()]);
    assert_eq!(status(&gw, &old_token).await, StatusCode::OK, "until then");
    gw.advance(PAST_REFRESH);
    refresh(&gw).await;
    assert_eq!(idp.hits("/jwks"), 3);
    assert_eq!(status(&gw, &old_token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&gw, &new_token).await, StatusCode::OK);
}

#[tokio::test]
async fn sec40_a_kid_given_new_key_material_at_the_provider_drops_the_tokens_of_the_old_one() {
    let before = TestKey::generate(Algorithm::EdDSA, "same-kid");
    let after = TestKey::generate(Algorithm::EdDSA, "same-kid");
    let idp = JwksServer::start(ISSUER, vec![before.jwk()]).await;
    let gw = by_discovery(&idp).await;
    let old_token = token(&gw, &before, ISSUER, &["reader"]);
    assert_eq!(status(&gw, &old_token).await, StatusCode::OK);

    idp.set_keys(vec![after.jwk()]);
    gw.advance(PAST_REFRESH);
    refresh(&gw).await;
    assert_eq!(status(&gw, &old_token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&gw, &token(&gw, &after, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sec40_a_provider_down_at_start_gets_503_and_readyz_names_it_until_its_keys_are_fetched() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    idp.set_down(true);
    let gw = by_discovery(&idp).await;
    let ready = readyz(&gw).await;
    assert_eq!(ready["keys"], "missing");
    assert_eq!(ready["issuers_without_keys"], json!([ISSUER]));

    let t = token(&gw, &key, ISSUER, &["reader"]);
    let r = gw.get_bearer("/docs", &t).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not 401: {}",
        r.text()
    );
    assert_eq!(gw.upstream.count(), 0);

    idp.set_down(false);
    assert_eq!(
        status(&gw, &t).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "no fetch within the cool-down"
    );
    gw.advance(COOLDOWN);
    assert_eq!(status(&gw, &t).await, StatusCode::OK);
    assert_eq!(readyz(&gw).await["keys"], "ok");
}

#[tokio::test]
async fn sec40_a_failed_refresh_keeps_the_last_good_key_set() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let gw = by_discovery(&idp).await;

    idp.serve("/jwks", Serve::Status(500));
    gw.advance(PAST_REFRESH);
    refresh(&gw).await;
    assert_eq!(idp.hits("/jwks"), 2);
    assert_eq!(counter(&gw, "failures"), 1);
    // A token never seen before still verifies with the kept key.
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
    // Down altogether: the same.
    idp.set_down(true);
    gw.advance(PAST_REFRESH);
    refresh(&gw).await;
    assert_eq!(counter(&gw, "failures"), 2);
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["editor"])).await,
        StatusCode::OK
    );
    assert_eq!(readyz(&gw).await["keys"], "ok");
}

#[tokio::test]
async fn sec40_the_refresh_honours_cache_control_max_age_within_the_configured_bounds() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![]).await;
    let jwks = json!({ "keys": [key.jwk()] });
    idp.serve(
        "/jwks",
        Serve::Json(jwks.clone(), Some("public, max-age=600".into())),
    );
    let gw = by_discovery(&idp).await;
    gw.advance(Duration::from_secs(400));
    refresh(&gw).await;
    assert_eq!(idp.hits("/jwks"), 1, "max-age 600 is not over yet");
    gw.advance(Duration::from_secs(201));
    refresh(&gw).await;
    assert_eq!(idp.hits("/jwks"), 2);

    // Below the floor (5 min by default): the floor.
    idp.serve("/jwks", Serve::Json(jwks, Some("max-age=5".into())));
    gw.advance(Duration::from_secs(601));
    refresh(&gw).await;
    assert_eq!(idp.hits("/jwks"), 3);
    gw.advance(Duration::from_secs(60));
    refresh(&gw).await;
    assert_eq!(idp.hits("/jwks"), 3, "max-age 5 is clamped to min_refresh");
}

#[tokio::test]
async fn sec40_a_forged_kid_flood_costs_one_fetch_per_cooldown() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let gw = std::sync::Arc::new(by_discovery(&idp).await);

    let flood = |gw: std::sync::Arc<TestGateway>| async move {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let gw = std::sync::Arc::clone(&gw);
                let forged = TestKey::generate(Algorithm::EdDSA, &format!("forged-{i}"));
                let t = token(&gw, &forged, ISSUER, &["editor"]);
                tokio::spawn(async move { status(&gw, &t).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
        }
    };
    gw.advance(COOLDOWN);
    flood(std::sync::Arc::clone(&gw)).await;
    assert_eq!(
        idp.hits("/jwks"),
        2,
        "one fetch for 50 concurrent forged kids"
    );
    flood(std::sync::Arc::clone(&gw)).await;
    assert_eq!(idp.hits("/jwks"), 2, "none more within the cool-down");
    gw.advance(COOLDOWN);
    flood(std::sync::Arc::clone(&gw)).await;
    assert_eq!(idp.hits("/jwks"), 3, "one more after it");
    assert_eq!(counter(&gw, "refetches"), 2);
    // The others waited for the fetch in flight, or found the cool-down running.
    assert!(counter(&gw, "refused") > 0);
    let addr = gw.running.admin_addr().unwrap();
    let metrics = send(
        http::Request::get(format!("http://{addr}/metrics"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .text();
    assert!(
        metrics.contains("\nportcullis_jwks_refetches_total 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_jwks_refetches_refused_total"));
    assert_eq!(gw.upstream.count(), 0);
    // The good key still works.
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sec40_a_token_signed_with_provider_a_key_but_claiming_provider_b_is_refused() {
    let a = TestKey::generate(Algorithm::EdDSA, "idp-a");
    let b = TestKey::generate(Algorithm::EdDSA, "idp-b");
    let idp_a = JwksServer::start(ISSUER, vec![a.jwk()]).await;
    let idp_b = JwksServer::start(ISSUER_B, vec![b.jwk()]).await;
    let gw = gateway(&format!(
        "{}{}",
        issuer(ISSUER, &format!("discovery: {}", idp_a.discovery_url()), ""),
        issuer(
            ISSUER_B,
            &format!("discovery: {}", idp_b.discovery_url()),
            ""
        ),
    ))
    .await;
    assert_eq!(
        status(&gw, &token(&gw, &a, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&gw, &token(&gw, &b, ISSUER_B, &["reader"])).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&gw, &token(&gw, &a, ISSUER_B, &["reader"])).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&gw, &token(&gw, &b, ISSUER, &["reader"])).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sec40_a_kid_served_by_two_issuers_is_a_fetch_error_never_an_override() {
    let a = TestKey::generate(Algorithm::EdDSA, "shared-kid");
    let b = TestKey::generate(Algorithm::EdDSA, "shared-kid");
    let idp_a = JwksServer::start(ISSUER, vec![a.jwk()]).await;
    let idp_b = JwksServer::start(ISSUER_B, vec![b.jwk()]).await;
    let gw = gateway(&format!(
        "{}{}",
        issuer(ISSUER, &format!("jwks_uri: {}", idp_a.jwks_url()), ""),
        issuer(ISSUER_B, &format!("jwks_uri: {}", idp_b.jwks_url()), ""),
    ))
    .await;
    // Both are fetched at once at start: whichever came second was refused, and at most one
    // of them has keys. B's key never verifies as A's, nor A's as B's.
    let missing = readyz(&gw).await["issuers_without_keys"].clone();
    assert_eq!(missing.as_array().unwrap().len(), 1, "{missing}");
    for (key, iss) in [(&a, ISSUER_B), (&b, ISSUER)] {
        assert_ne!(
            status(&gw, &token(&gw, key, iss, &["reader"])).await,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn sec40_jku_x5u_and_embedded_jwk_headers_are_never_fetched_nor_used() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let gw = by_discovery(&idp).await;
    let attacker = TestKey::generate(Algorithm::EdDSA, "attacker");
    idp.serve(
        "/evil",
        Serve::Json(json!({ "keys": [attacker.jwk()] }), None),
    );
    let payload = claims(json!({ "sid": null, "roles": ["editor"] }));
    for (name, value) in [
        ("jku", json!(idp.url("/evil"))),
        ("x5u", json!(idp.url("/evil"))),
        ("jwk", attacker.jwk()),
    ] {
        for kid in ["attacker", "idp-ed"] {
            let mut header = attacker.header();
            header["kid"] = json!(kid);
            header[name] = value.clone();
            let t = attacker.sign_raw(&header, &payload);
            assert_eq!(
                status(&gw, &t).await,
                StatusCode::UNAUTHORIZED,
                "{name} {kid}"
            );
        }
    }
    assert_eq!(idp.hits("/evil"), 0);
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn sec40_the_jwk_alg_pins_the_algorithm_and_hs256_with_the_rsa_key_is_refused() {
    let key = TestKey::generate(Algorithm::RS256, "idp-rsa");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let gw = by_discovery(&idp).await;
    let payload = claims(json!({ "sid": null, "roles": ["reader"] }));
    assert_eq!(
        status(&gw, &key.sign_raw(&key.header(), &payload)).await,
        StatusCode::OK
    );

    // The same RSA key, re-signed as PS256.
    let mut ps = TestKey::generate(Algorithm::PS256, "idp-rsa");
    ps.encoding = key.encoding.clone();
    assert_eq!(
        status(&gw, &ps.sign_raw(&ps.header(), &payload)).await,
        StatusCode::UNAUTHORIZED
    );

    // HS256 whose secret is the public key in every spelling a verifier might hold it in.
    let jwk_json = key.jwk().to_string();
    let pem_trimmed = key.public_pem.trim_end().to_owned();
    let secrets: [&[u8]; 4] = [
        key.public_pem.as_bytes(),
        pem_trimmed.as_bytes(),
        &key.public_der,
        jwk_json.as_bytes(),
    ];
    for secret in secrets {
        let mut hs = TestKey::generate(Algorithm::HS256, "idp-rsa");
        hs.encoding = EncodingKey::from_secret(secret);
        let t = hs.sign_raw(&hs.header(), &payload);
        assert_eq!(status(&gw, &t).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(gw.upstream.count(), 1);
}

#[tokio::test]
async fn sec40_encryption_private_and_symmetric_jwks_are_skipped_and_the_rest_of_the_set_used() {
    let good = TestKey::generate(Algorithm::EdDSA, "good");
    let enc = TestKey::generate(Algorithm::EdDSA, "enc");
    let private = TestKey::generate(Algorithm::EdDSA, "private");
    let oct = TestKey::generate(Algorithm::HS256, "oct");
    let mut enc_jwk = enc.jwk();
    enc_jwk["use"] = json!("enc");
    let mut private_jwk = private.jwk();
    private_jwk["d"] = json!(b64([7u8; 32]));
    let oct_jwk = json!({ "kty": "oct", "kid": "oct", "alg": "HS256", "k": b64(&oct.public_der) });
    let idp = JwksServer::start(ISSUER, vec![enc_jwk, private_jwk, oct_jwk, good.jwk()]).await;
    let gw = by_discovery(&idp).await;

    assert_eq!(
        status(&gw, &token(&gw, &good, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
    for refused in [&enc, &private, &oct] {
        assert_eq!(
            status(&gw, &token(&gw, refused, ISSUER, &["reader"])).await,
            StatusCode::UNAUTHORIZED,
            "{}",
            refused.kid
        );
    }
}

#[tokio::test]
async fn sec40_an_https_provider_is_trusted_through_the_issuers_ca_file_and_not_without_it() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let (idp, ca) = JwksServer::start_tls(ISSUER, vec![key.jwk()]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "idp-ca.pem", &ca);
    let trusting = gateway(&issuer(
        ISSUER,
        &format!("discovery: {}", idp.discovery_url()),
        &format!("    ca: {}", ca.display()),
    ))
    .await;
    assert!(idp.discovery_url().starts_with("https://127.0.0.1:"));
    assert_eq!(
        status(&trusting, &token(&trusting, &key, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
    assert_eq!(idp.hits("/jwks"), 1);

    // The system roots do not know this CA: no document is read, no key is had.
    let untrusting = by_discovery(&idp).await;
    assert_eq!(readyz(&untrusting).await["keys"], "missing");
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(
        status(&untrusting, &token(&untrusting, &key, ISSUER, &["reader"])).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn sec40_a_discovery_document_fetched_over_tls_cannot_send_the_key_fetch_to_plain_http_on_loopback()
 {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed-tls");
    let (idp, ca) = JwksServer::start_tls(ISSUER, vec![key.jwk()]).await;
    // What a hostile or compromised document could name: a local port, over plain http.
    let local = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    idp.serve(
        "/.well-known/openid-configuration",
        Serve::Json(
            json!({ "issuer": ISSUER, "jwks_uri": local.jwks_url() }),
            None,
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "idp-ca.pem", &ca);
    let gw = gateway(&issuer(
        ISSUER,
        &format!("discovery: {}", idp.discovery_url()),
        &format!("    ca: {}", ca.display()),
    ))
    .await;
    assert_eq!(idp.hits("/.well-known/openid-configuration"), 1);
    assert_eq!(local.total_hits(), 0, "the loopback port was never asked");
    assert_eq!(readyz(&gw).await["keys"], "missing");
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn sec40_a_redirect_is_not_followed() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![]).await;
    idp.serve("/jwks", Serve::Status(302));
    idp.serve("/moved", Serve::Json(json!({ "keys": [key.jwk()] }), None));
    let gw = by_discovery(&idp).await;
    assert_eq!(idp.hits("/jwks"), 1);
    assert_eq!(idp.hits("/moved"), 0);
    assert_eq!(readyz(&gw).await["issuers_without_keys"], json!([ISSUER]));
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn sec40_an_oversized_document_is_refused() {
    let idp = JwksServer::start(ISSUER, vec![]).await;
    idp.serve("/jwks", Serve::Oversized(64 * 1024));
    let gw = gateway(&issuer(
        ISSUER,
        &format!("discovery: {}", idp.discovery_url()),
        "    fetch: { max_bytes: 16KiB }",
    ))
    .await;
    assert_eq!(idp.hits("/jwks"), 1);
    assert_eq!(counter(&gw, "failures"), 1);
    assert_eq!(readyz(&gw).await["keys"], "missing");
}

#[tokio::test]
async fn sec40_plain_http_to_a_non_loopback_host_and_bad_algorithm_lists_are_refused_at_config_load()
 {
    let dir = tempfile::tempdir().unwrap();
    let load = |source: &str, extra: &str| {
        Config::from_yaml(
            &yaml(&issuer(ISSUER, source, extra), "http://127.0.0.1:9"),
            dir.path(),
        )
        .err()
        .map(|e| e.to_string())
    };
    for (source, extra, key) in [
        (
            "jwks_uri: http://idp.example/jwks",
            "",
            "issuers[0].jwks_uri",
        ),
        (
            "discovery: http://10.1.2.3/.well-known/openid-configuration",
            "",
            "issuers[0].discovery",
        ),
        (
            "jwks_uri: https://idp.example/jwks",
            "    algorithms: [RS256, PS256]",
            "issuers[0].algorithms[1]",
        ),
        (
            "jwks_uri: https://idp.example/jwks",
            "    algorithms: [HS256]",
            "issuers[0].algorithms[0]",
        ),
        (
            "jwks_uri: https://idp.example/jwks",
            "    fetch: { refresh: 1m }",
            "refresh",
        ),
        (
            "jwks_uri: https://idp.example/jwks\n    discovery: https://idp.example/.well-known/openid-configuration",
            "",
            "issuers[0].jwks_uri",
        ),
    ] {
        let e = load(source, extra).unwrap_or_else(|| panic!("{source} {extra} loaded"));
        assert!(e.contains(key), "{e}");
    }
    assert_eq!(load("jwks_uri: https://idp.example/jwks", ""), None);
    assert_eq!(load("jwks_uri: http://127.0.0.1:1/jwks", ""), None);
}

#[tokio::test]
async fn sec40_a_reload_keeps_the_fetched_key_set_of_an_unchanged_issuer() {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = yaml(
        &issuer(ISSUER, &format!("discovery: {}", idp.discovery_url()), ""),
        &upstream.url(),
    );
    let path = write(dir.path(), "gateway.yaml", &text);
    let running = launch_file(&path, Clock::manual()).await;
    let gw = TestGateway::new(running, upstream, dir, Vec::new());
    assert_eq!(idp.hits("/jwks"), 1);
    idp.set_down(true);
    portcullis::reload::reload_file(gw.running.gateway(), "admin")
        .await
        .unwrap();
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::OK,
        "the new runtime took the set over without a fetch"
    );
    assert_eq!(idp.hits("/jwks"), 1);
}

#[tokio::test]
async fn sec40_a_reload_adding_an_issuer_whose_discovery_names_another_is_refused_and_the_old_config_serves()
 {
    let key = TestKey::generate(Algorithm::EdDSA, "idp-ed");
    let idp = JwksServer::start(ISSUER, vec![key.jwk()]).await;
    let impostor = JwksServer::start("https://someone-else.test", vec![]).await;
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = issuer(ISSUER, &format!("discovery: {}", idp.discovery_url()), "");
    let path = write(dir.path(), "gateway.yaml", &yaml(&good, &upstream.url()));
    let running = launch_file(&path, Clock::manual()).await;
    let gw = TestGateway::new(running, upstream, dir, Vec::new());

    let bad = issuer(
        ISSUER_B,
        &format!("discovery: {}", impostor.discovery_url()),
        "",
    );
    write(
        gw.dir.path(),
        "gateway.yaml",
        &yaml(&format!("{good}{bad}"), &gw.upstream.url()),
    );
    let refused = portcullis::reload::reload_file(gw.running.gateway(), "admin").await;
    let e = refused.expect_err("the reload must be refused");
    assert!(e.to_string().contains(ISSUER_B), "{e}");
    assert_eq!(gw.running.gateway().generation(), 1);
    assert_eq!(
        status(&gw, &token(&gw, &key, ISSUER, &["reader"])).await,
        StatusCode::OK
    );
}

/// The same behaviours against a real OpenID Provider: `oidc-provider` from npm (certified by
/// the OpenID Foundation), run by `tests/oidc/provider.mjs` on a loopback port, issuing RFC 9068
/// access tokens to a client-credentials client. Its keys rotate by restarting it on the same
/// port with other key names. Needs Node.js 20 or newer; the npm project is installed from its
/// lockfile (`npm ci --prefix tests/oidc`) on first use when it is not yet.
mod oidc {
    use super::*;

    use std::process::Child;

    use crate::common::oidc::{require_provider, spawn_provider};

    use bytes::Bytes;
    use http_body_util::Full;

    const CLIENT_ID: &str = "portcullis-tests";
    const CLIENT_SECRET: &str = "a-test-client-secret-long-enough-for-hs256-0123456789";
    /// The provider's tokens live 10 minutes from the real time they are minted at, while the
    /// gateway's clock moves ahead: so these gateways refresh every minute, not every five.
    const PAST_MINUTE_REFRESH: Duration = Duration::from_secs(61);

    /// A running provider; stopped (by its own pid) when dropped.
    struct Provider {
        child: Child,
        port: u16,
        keys: tempfile::TempDir,
    }

    impl Provider {
        /// Starts a provider on `port` (0: any) signing with the first of `kids`, publishing all.
        fn start(port: u16, kids: &[&str]) -> Self {
            Self::start_in(port, kids, tempfile::tempdir().unwrap())
        }

        fn start_in(port: u16, kids: &[&str], keys: tempfile::TempDir) -> Self {
            let out = keys.path().join(format!("out-{}.log", kids.join("-")));
            let args = [
                "--port".to_owned(),
                port.to_string(),
                "--kids".to_owned(),
                kids.join(","),
                "--key-dir".to_owned(),
                keys.path().display().to_string(),
            ];
            let (child, issuer) = spawn_provider(&args, &out);
            let port = issuer.rsplit(':').next().unwrap().parse().unwrap();
            Self { child, port, keys }
        }

        fn issuer(&self) -> String {
            format!("http://127.0.0.1:{}", self.port)
        }

        /// Stops it and starts it again on the same port with `kids` (keys already made keep
        /// their key material): a rotation at the provider.
        fn restart(mut self, kids: &[&str]) -> Self {
            let port = self.port;
            self.stop();
            let keys = std::mem::replace(&mut self.keys, tempfile::tempdir().unwrap());
            Self::start_in(port, kids, keys)
        }

        fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }

        /// An access token from the client-credentials grant with `scope`.
        async fn token(&self, scope: &str) -> String {
            let r = send(
                http::Request::post(format!("{}/token", self.issuer()))
                    .header(
                        "authorization",
                        format!(
                            "Basic {}",
                            base64::Engine::encode(
                                &base64::engine::general_purpose::STANDARD,
                                format!("{CLIENT_ID}:{CLIENT_SECRET}")
                            )
                        ),
                    )
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Full::new(Bytes::from(format!(
                        "grant_type=client_credentials&scope={scope}"
                    ))))
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.json()["access_token"].as_str().unwrap().to_owned()
        }
    }

    impl Drop for Provider {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// A gateway trusting the provider at `issuer` by discovery, mapping its scopes to
    /// `scope:`-prefixed permissions.
    async fn trusting(issuer: &str) -> TestGateway {
        let upstream = EchoUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!(
            r#"listeners:
  - bind: 127.0.0.1:0
admin: {{ bind: 127.0.0.1:0 }}
issuers:
  - issuer: {issuer}
    audiences: [{AUDIENCE}]
    require_session: false
    discovery: {issuer}/.well-known/openid-configuration
    algorithms: [RS256]
    fetch: {{ min_refresh: 1m }}
    permissions:
      - {{ claim: scope, prefix: "scope:" }}
upstreams:
  echo: {{ url: "{}", response_timeout: 5s }}
routes:
  - {{ id: read, path: /docs, upstream: echo, policy: {{ all_of: ["scope:documents.read"] }} }}
  - {{ id: write, path: /write, upstream: echo, policy: {{ all_of: ["scope:documents.write"] }} }}
"#,
            upstream.url()
        );
        let running = launch(&yaml, dir.path(), Clock::manual()).await;
        TestGateway::new(running, upstream, dir, Vec::new())
    }

    #[tokio::test]
    async fn the_oidc_bearer_example_runs_as_it_is_in_front_of_the_real_provider() {
        require_provider();
        let provider = Provider::start(0, &["example-key"]);
        // examples/oidc/bearer.yaml with its two literal ports rewritten to free ones.
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc/bearer.yaml"),
        )
        .unwrap();
        assert!(example.contains("127.0.0.1:9400") && example.contains("127.0.0.1:9480"));
        let yaml = example
            .replace("127.0.0.1:9400", &format!("127.0.0.1:{}", provider.port))
            .replace("127.0.0.1:9480", "127.0.0.1:0");
        let dir = tempfile::tempdir().unwrap();
        let running = launch(&yaml, dir.path(), Clock::system()).await;
        let gw = TestGateway::new(running, EchoUpstream::start().await, dir, Vec::new());

        let token = provider.token("documents.read").await;
        let read = gw.get_bearer("/documents", &token).await;
        assert_eq!(read.status, StatusCode::OK, "{}", read.text());
        let write = gw
            .send(
                http::Request::post(gw.url("/documents"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            write.status,
            StatusCode::FORBIDDEN,
            "no documents.write scope"
        );
        assert_eq!(
            gw.get("/documents").await.status,
            StatusCode::UNAUTHORIZED,
            "no token"
        );
    }

    #[tokio::test]
    async fn sec40_tokens_of_a_real_openid_provider_are_accepted_by_discovery_with_their_scopes_as_permissions()
     {
        let idp = Provider::start(0, &["k1"]);
        let gw = trusting(&idp.issuer()).await;
        let read = idp.token("documents.read").await;
        let r = gw.get_bearer("/docs", &read).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(permissions(&gw), "scope:documents.read");
        assert_eq!(
            gw.get_bearer("/write", &read).await.status,
            StatusCode::FORBIDDEN
        );
        let both = idp.token("documents.read documents.write").await;
        assert_eq!(gw.get_bearer("/write", &both).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn sec40_a_key_rotation_at_a_real_openid_provider_is_picked_up_and_the_retired_key_dropped()
     {
        let idp = Provider::start(0, &["k1"]);
        let gw = trusting(&idp.issuer()).await;
        let old = idp.token("documents.read").await;
        assert_eq!(status(&gw, &old).await, StatusCode::OK);

        // The provider signs with a new key and publishes both.
        let idp = idp.restart(&["k2", "k1"]);
        let new = idp.token("documents.read").await;
        gw.advance(COOLDOWN);
        assert_eq!(
            status(&gw, &new).await,
            StatusCode::OK,
            "refetched for kid k2"
        );
        assert_eq!(status(&gw, &old).await, StatusCode::OK);

        // The old key is retired; after the next refresh its tokens are refused.
        let idp = idp.restart(&["k2"]);
        gw.advance(PAST_MINUTE_REFRESH);
        refresh(&gw).await;
        assert_eq!(status(&gw, &old).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&gw, &new).await, StatusCode::OK);

        // Down during a refresh: the last good keys stay.
        drop(idp);
        gw.advance(PAST_MINUTE_REFRESH);
        refresh(&gw).await;
        assert_eq!(counter(&gw, "failures"), 1);
        assert_eq!(status(&gw, &new).await, StatusCode::OK);
    }

    #[tokio::test]
    async fn sec40_a_real_openid_provider_down_at_start_gets_503_until_it_is_up() {
        let port = free_port();
        let issuer = format!("http://127.0.0.1:{port}");
        let gw = trusting(&issuer).await;
        assert_eq!(readyz(&gw).await["issuers_without_keys"], json!([issuer]));

        let idp = Provider::start(port, &["k1"]);
        let t = idp.token("documents.read").await;
        assert_eq!(status(&gw, &t).await, StatusCode::SERVICE_UNAVAILABLE);
        gw.advance(COOLDOWN);
        assert_eq!(status(&gw, &t).await, StatusCode::OK);
        assert_eq!(readyz(&gw).await["keys"], "ok");
    }
}
