//! The token profile of an issuer and its claim mapping, black-box: which `typ` values are
//! accepted, `jti` optional, the `azp`/`client_id` allow-list, the subject claim, permissions
//! from the claims each identity provider writes them in (Keycloak, Auth0, Entra ID, Okta,
//! Google/Dex groups), prefixed permissions, extra identity headers from claims (reaching the
//! upstream and forward-auth answers, stripped from clients), and the config errors and
//! warnings. Keys are file keys; tokens are signed by hand with the test keys.

use crate::common::*;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use portcullis::clock::Clock;
use portcullis::config::Config;
use portcullis::store::SessionStore;
use serde_json::{Value, json};

const OTHER_ISSUER: &str = "https://other-idp.test";

/// Routes for the roles' permissions (`docs:*`, `admin`).
const ROUTES: &str = r#"
  - { id: public, path: /public, upstream: echo, policy: public }
  - { id: api, path: /api, upstream: echo, policy: authenticated }
  - { id: docs-read, path: /docs, methods: [GET], upstream: echo, policy: { all_of: [docs:read] } }
  - { id: docs-write, path: /docs, methods: [POST, PUT], upstream: echo, policy: { all_of: [docs:write] } }
  - { id: admin, path: /admin, upstream: echo, policy: { any_of: [admin] } }
"#;
/// A route for a permission only a `prefix: "scope:"` mapping produces (a config without one
/// refuses it).
const SCOPED_ROUTE: &str = r#"  - { id: scoped, path: /scoped, upstream: echo, policy: { all_of: ["scope:documents.read"] } }
"#;
/// One only a `prefix: ""` mapping produces.
const DIRECT_ROUTE: &str = r#"  - { id: direct, path: /direct, upstream: echo, policy: { all_of: ["read:documents"] } }
"#;

const ROLES: &str = r#"
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
  admin: [admin, docs:read, docs:write]
"#;

/// The `issuers:` entry for `key` with `profile` lines (indented by four spaces).
fn issuer_yaml(iss: &str, key: &TestKey, dir: &Path, profile: &str) -> String {
    format!(
        "  - issuer: {iss}\n    audiences: [{AUDIENCE}]\n    require_session: false\n    keys:\n      - {}\n{profile}\n",
        key.yaml_entry(dir)
    )
}

fn yaml(issuers: &str, upstream: &str, extra: &str) -> String {
    let mut routes = ROUTES.to_owned();
    if issuers.contains(r#"prefix: "scope:""#) {
        routes.push_str(SCOPED_ROUTE);
    }
    if issuers.contains(r#"prefix: """#) {
        routes.push_str(DIRECT_ROUTE);
    }
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nissuers:\n{issuers}{ROLES}upstreams:\n  echo: {{ url: \"{upstream}\", response_timeout: 5s }}\nroutes:\n{routes}{extra}\n"
    )
}

/// A gateway trusting one issuer ([`ISSUER`], key `k-main`) with `profile`.
async fn gateway(profile: &str) -> TestGateway {
    gateway_with(profile, None, "").await.0
}

/// With a second issuer ([`OTHER_ISSUER`], key `k-other`, default profile) when `other`, and
/// `extra` top-level YAML; the second issuer's key is returned beside the gateway.
async fn gateway_with(
    profile: &str,
    other: Option<&str>,
    extra: &str,
) -> (TestGateway, Option<TestKey>) {
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let main = TestKey::generate(Algorithm::EdDSA, "k-main");
    let mut issuers = issuer_yaml(ISSUER, &main, dir.path(), profile);
    let other = other.map(|other_profile| {
        let other = TestKey::generate(Algorithm::EdDSA, "k-other");
        issuers.push_str(&issuer_yaml(
            OTHER_ISSUER,
            &other,
            dir.path(),
            other_profile,
        ));
        other
    });
    let yaml = yaml(&issuers, &upstream.url(), extra);
    let running = launch(&yaml, dir.path(), Clock::system()).await;
    (TestGateway::new(running, upstream, dir, vec![main]), other)
}

/// `payload` signed by `key` under a header with `typ` (`None`: no `typ`).
fn signed(key: &TestKey, typ: Option<&str>, payload: Value) -> String {
    let mut header = json!({ "alg": key.alg_name(), "kid": key.kid });
    if let Some(typ) = typ {
        header["typ"] = json!(typ);
    }
    key.sign_raw(&header, &payload)
}

/// The registered claims of a token of `iss`, with `extra` merged in (`null` removes).
fn payload(iss: &str, extra: Value) -> Value {
    let n = now();
    let mut c = json!({
        "iss": iss, "aud": AUDIENCE, "sub": "alice", "jti": format!("j-{}", rand_suffix()),
        "iat": n - 10, "exp": n + 600,
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The status of `GET path` with `token`, and the permissions the upstream saw (when 200).
async fn get(gw: &TestGateway, path: &str, token: &str) -> (StatusCode, Option<String>) {
    let r = gw.get_bearer(path, token).await;
    let perms =
        (r.status == StatusCode::OK).then(|| header(&gw.upstream.last(), "x-auth-permissions"));
    (r.status, perms.flatten())
}

fn header(seen: &Seen, name: &str) -> Option<String> {
    let all: Vec<String> = seen
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(all.len() <= 1, "{name} sent {} times", all.len());
    all.into_iter().next()
}

// --- typ ----------------------------------------------------------------------------------

#[tokio::test]
async fn by_default_only_access_tokens_are_accepted_in_any_case_and_with_the_application_prefix() {
    let gw = gateway("").await;
    let k = gw.key();
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/At+Jwt",
    ] {
        let t = signed(k, Some(typ), payload(ISSUER, json!({})));
        assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::OK, "{typ}");
    }
    for typ in [
        Some("JWT"),
        Some("jwt"),
        None,
        Some("none"),
        Some("at+jwt2"),
    ] {
        let t = signed(k, typ, payload(ISSUER, json!({})));
        assert_eq!(
            get(&gw, "/api", &t).await.0,
            StatusCode::UNAUTHORIZED,
            "{typ:?}"
        );
    }
    // A `typ` that is not a string is no type at all.
    let t = k.sign_raw(
        &json!({ "alg": "EdDSA", "kid": k.kid, "typ": ["at+jwt"] }),
        &payload(ISSUER, json!({})),
    );
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_types_accept_exactly_the_listed_types_and_none_means_no_typ() {
    let (gw, other) = gateway_with("    token_types: [JWT, none]", Some(""), "").await;
    let (main, other) = (gw.key(), &other.unwrap());
    for typ in [Some("JWT"), Some("jwt"), Some("application/JWT"), None] {
        let t = signed(main, typ, payload(ISSUER, json!({})));
        assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::OK, "{typ:?}");
    }
    // `at+jwt` is not listed for this issuer.
    let t = signed(main, Some("at+jwt"), payload(ISSUER, json!({})));
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::UNAUTHORIZED);
    // The other issuer keeps the default: its key does not accept `JWT` because the first
    // issuer does (typ is checked against the key's own issuer).
    let t = signed(other, Some("JWT"), payload(OTHER_ISSUER, json!({})));
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::UNAUTHORIZED);
    let t = signed(other, None, payload(OTHER_ISSUER, json!({})));
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::UNAUTHORIZED);
    let t = signed(other, Some("at+jwt"), payload(OTHER_ISSUER, json!({})));
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::OK);
}

// --- jti, clients, subject ---------------------------------------------------------------

#[tokio::test]
async fn jti_is_required_by_default_and_optional_with_require_jti_false() {
    let strict = gateway("").await;
    let t = signed(
        strict.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "jti": null })),
    );
    assert_eq!(get(&strict, "/api", &t).await.0, StatusCode::UNAUTHORIZED);

    let lax = gateway("    require_jti: false").await;
    let t = signed(
        lax.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "jti": null })),
    );
    assert_eq!(get(&lax, "/api", &t).await.0, StatusCode::OK);
    // A `jti` that is there is still checked.
    let t = signed(
        lax.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "jti": 5 })),
    );
    assert_eq!(get(&lax, "/api", &t).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_without_jti_is_still_refused_once_its_user_is_revoked() {
    let gw = gateway("    require_jti: false").await;
    let t = signed(
        gw.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "jti": null })),
    );
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::OK);
    let n = gw.now();
    // An external issuer's users are known to the store by `iss` and subject.
    gw.store()
        .revoke_user(&user_key("alice"), n, n + 3600)
        .await
        .unwrap();
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn clients_check_azp_else_client_id_against_the_list() {
    let gw = gateway("    clients: [my-spa, my-cli]").await;
    let k = gw.key();
    for (claims, status) in [
        (json!({ "azp": "my-spa" }), StatusCode::OK),
        (json!({ "client_id": "my-cli" }), StatusCode::OK),
        (
            json!({ "azp": "my-spa", "client_id": "evil" }),
            StatusCode::OK,
        ),
        // `azp` decides when present.
        (
            json!({ "azp": "evil", "client_id": "my-spa" }),
            StatusCode::UNAUTHORIZED,
        ),
        (json!({ "azp": "MY-SPA" }), StatusCode::UNAUTHORIZED),
        (json!({ "azp": ["my-spa"] }), StatusCode::UNAUTHORIZED),
        (json!({}), StatusCode::UNAUTHORIZED),
    ] {
        let t = signed(k, Some("at+jwt"), payload(ISSUER, claims.clone()));
        assert_eq!(get(&gw, "/api", &t).await.0, status, "{claims}");
    }
    // Without `clients`, no client is checked.
    let open = gateway("").await;
    let t = signed(
        open.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "azp": "anyone" })),
    );
    assert_eq!(get(&open, "/api", &t).await.0, StatusCode::OK);
}

#[tokio::test]
async fn subject_claim_names_the_identity_and_must_be_a_plain_string() {
    let gw = gateway("    subject_claim: oid").await;
    let k = gw.key();
    let t = signed(
        k,
        Some("at+jwt"),
        payload(ISSUER, json!({ "oid": "00000000-aaaa-bbbb" })),
    );
    assert_eq!(get(&gw, "/api", &t).await.0, StatusCode::OK);
    assert_eq!(
        header(&gw.upstream.last(), "x-auth-subject").as_deref(),
        Some("00000000-aaaa-bbbb")
    );
    for oid in [
        json!(null),
        json!(42),
        json!(["a"]),
        json!(""),
        json!("a\nb"),
    ] {
        let t = signed(k, Some("at+jwt"), payload(ISSUER, json!({ "oid": oid })));
        assert_eq!(
            get(&gw, "/api", &t).await.0,
            StatusCode::UNAUTHORIZED,
            "{oid}"
        );
    }
    // A nested path works too.
    let nested = gateway("    subject_claim: ext.user-id").await;
    let t = signed(
        nested.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "ext": { "user-id": "u-7" } })),
    );
    assert_eq!(get(&nested, "/api", &t).await.0, StatusCode::OK);
    assert_eq!(
        header(&nested.upstream.last(), "x-auth-subject").as_deref(),
        Some("u-7")
    );
}

// --- permissions from the providers' claims -----------------------------------------------

#[tokio::test]
async fn keycloak_realm_and_client_roles_map_through_roles() {
    let gw = gateway(
        r#"    token_types: [JWT]
    permissions:
      - { claim: realm_access.roles, via: roles }
      - { claim: resource_access.portcullis-api.roles, via: roles }"#,
    )
    .await;
    // The layout of a Keycloak access token (header `typ: JWT`, payload `typ: Bearer`).
    let t = signed(
        gw.key(),
        Some("JWT"),
        payload(
            ISSUER,
            json!({
                "typ": "Bearer", "azp": "portcullis-api", "preferred_username": "alice",
                "realm_access": { "roles": ["offline_access", "uma_authorization", "reader"] },
                "resource_access": {
                    "portcullis-api": { "roles": ["editor"] },
                    "account": { "roles": ["admin", "manage-account"] }
                },
                "scope": "openid profile email",
            }),
        ),
    );
    assert_eq!(
        get(&gw, "/docs", &t).await,
        (StatusCode::OK, Some("docs:read,docs:write".into()))
    );
    // `admin` is a role of another client: not mapped.
    assert_eq!(get(&gw, "/admin", &t).await.0, StatusCode::FORBIDDEN);
    // The top-level `roles` claim is not read once `permissions:` is set, and a malformed one
    // no longer refuses the token.
    let t = signed(
        gw.key(),
        Some("JWT"),
        payload(
            ISSUER,
            json!({ "roles": ["admin", 7], "realm_access": { "roles": { "reader": true } } }),
        ),
    );
    assert_eq!(
        get(&gw, "/api", &t).await,
        (StatusCode::OK, Some(String::new()))
    );
}

#[tokio::test]
async fn auth0_permissions_array_and_scope_are_taken_directly() {
    let gw = gateway(
        r#"    permissions:
      - { claim: permissions, prefix: "" }
      - { claim: scope, prefix: "scope:" }"#,
    )
    .await;
    // Auth0 with RBAC on: `permissions` array, `scope` string, a namespaced custom claim.
    let t = signed(
        gw.key(),
        Some("at+jwt"),
        payload(
            ISSUER,
            json!({
                "azp": "abc123", "gty": "client-credentials",
                "permissions": ["read:documents", "docs:write", "delete:everything"],
                "scope": "openid documents.read",
                "https://example.com/roles": ["admin"],
            }),
        ),
    );
    let (status, perms) = get(&gw, "/direct", &t).await;
    assert_eq!(status, StatusCode::OK);
    // Only names the config knows reach the header: a route's or a role's.
    assert_eq!(
        perms.as_deref(),
        Some("docs:write,read:documents,scope:documents.read")
    );
    assert_eq!(get(&gw, "/scoped", &t).await.0, StatusCode::OK);
    assert_eq!(get(&gw, "/admin", &t).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_claim_with_dots_in_its_name_is_written_with_escaped_dots() {
    let gw = gateway(
        r#"    permissions:
      - { claim: 'https://example\.com/roles', via: roles }"#,
    )
    .await;
    let t = signed(
        gw.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "https://example.com/roles": ["admin"] })),
    );
    assert_eq!(get(&gw, "/admin", &t).await.0, StatusCode::OK);
}

#[tokio::test]
async fn entra_roles_and_space_separated_scp() {
    let gw = gateway(
        r#"    token_types: [JWT]
    require_jti: false
    subject_claim: oid
    permissions:
      - { claim: roles, via: roles }
      - { claim: scp, prefix: "scope:" }"#,
    )
    .await;
    let t = signed(
        gw.key(),
        Some("JWT"),
        payload(
            ISSUER,
            json!({ "jti": null, "uti": "x", "oid": "4f3e", "tid": "t", "ver": "2.0",
                    "roles": ["editor"], "scp": "User.Read documents.read" }),
        ),
    );
    assert_eq!(get(&gw, "/scoped", &t).await.0, StatusCode::OK);
    assert_eq!(
        header(&gw.upstream.last(), "x-auth-permissions").as_deref(),
        Some("docs:read,docs:write,scope:documents.read")
    );
    assert_eq!(
        header(&gw.upstream.last(), "x-auth-subject").as_deref(),
        Some("4f3e")
    );
}

#[tokio::test]
async fn okta_scp_array_and_groups_claims() {
    let gw = gateway(
        r#"    permissions:
      - { claim: scp, prefix: "scope:" }
      - { claim: groups, via: roles }"#,
    )
    .await;
    let t = signed(
        gw.key(),
        Some("at+jwt"),
        payload(
            ISSUER,
            json!({ "cid": "0oa1", "uid": "00u1",
                    "scp": ["openid", "documents.read", 5], "groups": ["Everyone", "admin"] }),
        ),
    );
    assert_eq!(get(&gw, "/scoped", &t).await.0, StatusCode::OK);
    assert_eq!(get(&gw, "/admin", &t).await.0, StatusCode::OK);
    // An array `scp` is not split: one element with a space is one scope.
    let t = signed(
        gw.key(),
        Some("at+jwt"),
        payload(ISSUER, json!({ "scp": ["openid documents.read"] })),
    );
    assert_eq!(get(&gw, "/scoped", &t).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn google_and_dex_style_groups_map_through_roles() {
    let gw = gateway(
        r#"    token_types: [JWT]
    permissions:
      - { claim: groups, via: roles }"#,
    )
    .await;
    let t = signed(
        gw.key(),
        Some("JWT"),
        payload(
            ISSUER,
            json!({ "email": "alice@example.com", "email_verified": true,
                    "groups": ["reader", "engineering@example.com"] }),
        ),
    );
    assert_eq!(
        get(&gw, "/docs", &t).await,
        (StatusCode::OK, Some("docs:read".into()))
    );
    // A single string is one group.
    let t = signed(
        gw.key(),
        Some("JWT"),
        payload(ISSUER, json!({ "groups": "editor" })),
    );
    assert_eq!(
        get(&gw, "/docs", &t).await,
        (StatusCode::OK, Some("docs:read,docs:write".into()))
    );
}

#[tokio::test]
async fn a_prefixed_value_grants_only_with_its_prefix() {
    let gw = gateway(
        r#"    permissions:
      - { claim: scope, prefix: "scope:" }"#,
    )
    .await;
    let k = gw.key();
    // The value itself is not the permission: `scope:` is added, never removed.
    for scope in [
        "scope:documents.read",
        "documents.read2",
        "DOCUMENTS.READ",
        "admin",
    ] {
        let t = signed(
            k,
            Some("at+jwt"),
            payload(ISSUER, json!({ "scope": scope })),
        );
        let (status, _) = get(&gw, "/scoped", &t).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{scope}");
        assert_eq!(
            get(&gw, "/admin", &t).await.0,
            StatusCode::FORBIDDEN,
            "{scope}"
        );
    }
    // Scope values are never role names here: `reader` grants nothing.
    let t = signed(
        k,
        Some("at+jwt"),
        payload(ISSUER, json!({ "scope": "reader documents.read" })),
    );
    assert_eq!(
        get(&gw, "/scoped", &t).await,
        (StatusCode::OK, Some("scope:documents.read".into()))
    );
    assert_eq!(get(&gw, "/docs", &t).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn without_a_permissions_mapping_the_roles_claim_works_as_before() {
    let gw = gateway("").await;
    let t = gw.token(json!({ "sid": null }));
    assert_eq!(
        get(&gw, "/docs", &t).await,
        (StatusCode::OK, Some("docs:read".into()))
    );
    // A malformed `roles` claim still refuses the token, as it always has.
    let t = gw.token(json!({ "sid": null, "roles": "reader" }));
    assert_eq!(get(&gw, "/docs", &t).await.0, StatusCode::UNAUTHORIZED);
}

// --- identity claims ----------------------------------------------------------------------

const IDENTITY_CLAIMS: &str = r#"    identity_claims:
      email: X-Auth-Email
      preferred_username: X-User-Name
      'ext.dept': X-Auth-Dept"#;

async fn send_with(gw: &TestGateway, path: &str, token: Option<&str>) -> StatusCode {
    let mut r = Request::get(gw.url(path))
        .header("x-auth-email", "forged@evil.example")
        .header("X_User_Name", "forged")
        .header("x-user-name", "forged")
        .header("x-auth-dept", "forged");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    gw.send(r.body(Full::new(Bytes::new())).unwrap())
        .await
        .status
}

#[tokio::test]
async fn identity_claims_reach_the_upstream_and_client_copies_are_stripped() {
    let (gw, other) = gateway_with(IDENTITY_CLAIMS, Some(""), "").await;
    let k = gw.key();
    let t = signed(
        k,
        Some("at+jwt"),
        payload(
            ISSUER,
            json!({ "email": "alice@example.com", "preferred_username": "alice",
                    "ext": { "dept": "R&D" } }),
        ),
    );
    assert_eq!(send_with(&gw, "/api", Some(&t)).await, StatusCode::OK);
    let seen = gw.upstream.last();
    assert_eq!(
        header(&seen, "x-auth-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(header(&seen, "x-user-name").as_deref(), Some("alice"));
    assert_eq!(header(&seen, "x-auth-dept").as_deref(), Some("R&D"));
    assert!(seen.headers.get("x_user_name").is_none());
    // The same token again, from the cache: the same headers.
    assert_eq!(send_with(&gw, "/api", Some(&t)).await, StatusCode::OK);
    assert_eq!(
        header(&gw.upstream.last(), "x-user-name").as_deref(),
        Some("alice")
    );

    // A claim that is absent or not a plain string: no header, and no client copy either.
    let t = signed(
        k,
        Some("at+jwt"),
        payload(
            ISSUER,
            json!({ "email": ["a@b"], "preferred_username": "bob\u{200b}" }),
        ),
    );
    assert_eq!(send_with(&gw, "/api", Some(&t)).await, StatusCode::OK);
    let seen = gw.upstream.last();
    for h in ["x-auth-email", "x-user-name", "x-auth-dept", "x_user_name"] {
        assert!(seen.headers.get(h).is_none(), "{h}: {:?}", seen.headers);
    }

    // A public route: stripped all the same.
    assert_eq!(send_with(&gw, "/public", None).await, StatusCode::OK);
    let seen = gw.upstream.last();
    assert!(
        seen.headers.get("x-user-name").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(seen.headers.get("x_user_name").is_none());

    // The other issuer maps no claims: its tokens inject none, and client copies still go.
    let t = signed(
        &other.unwrap(),
        Some("at+jwt"),
        payload(OTHER_ISSUER, json!({ "preferred_username": "mallory" })),
    );
    assert_eq!(send_with(&gw, "/api", Some(&t)).await, StatusCode::OK);
    let seen = gw.upstream.last();
    assert!(
        seen.headers.get("x-user-name").is_none(),
        "{:?}",
        seen.headers
    );
    assert!(seen.headers.get("x-auth-email").is_none());
}

#[tokio::test]
async fn identity_claims_are_in_the_forward_auth_answer() {
    let (gw, _) = gateway_with(
        IDENTITY_CLAIMS,
        None,
        "trusted_proxies: [127.0.0.1]\nforward_auth:\n  - { contract: nginx }\n",
    )
    .await;
    let t = signed(
        gw.key(),
        Some("at+jwt"),
        payload(
            ISSUER,
            json!({ "preferred_username": "alice", "email": "alice@example.com" }),
        ),
    );
    let r = gw
        .send(
            Request::get(gw.url("/_portcullis/nginx"))
                .header("x-original-method", "GET")
                .header("x-original-url", "https://app.example.com/api")
                .header("authorization", format!("Bearer {t}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get("x-user-name").unwrap(), "alice");
    assert_eq!(r.headers.get("x-auth-email").unwrap(), "alice@example.com");
    assert_eq!(r.headers.get("x-auth-subject").unwrap(), "alice");
}

// --- config errors and warnings -----------------------------------------------------------

fn compile(profile: &str, routes_extra: &str, roles: bool) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(Algorithm::EdDSA, "k-cfg");
    let roles = if roles { ROLES } else { "\n" };
    let text = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nissuers:\n{}{roles}upstreams:\n  app: {{ echo: true }}\nroutes:\n  - {{ path: /, upstream: app, policy: authenticated }}\n{routes_extra}",
        issuer_yaml(ISSUER, &key, dir.path(), profile)
    );
    Config::from_yaml(&text, dir.path()).map_err(|e| e.to_string())
}

fn refused(profile: &str, routes_extra: &str) -> String {
    match compile(profile, routes_extra, true) {
        Ok(_) => panic!("accepted:\n{profile}\n{routes_extra}"),
        Err(e) => e,
    }
}

#[test]
fn an_issuer_whose_iss_holds_a_hash_is_refused_since_it_would_make_user_names_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(Algorithm::EdDSA, "k-hash");
    let text = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nissuers:\n{}{ROLES}upstreams:\n  app: {{ echo: true }}\nroutes:\n  - {{ path: /, upstream: app, policy: authenticated }}\n",
        issuer_yaml("https://idp.test/#x", &key, dir.path(), "")
    );
    let e = Config::from_yaml(&text, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("issuers[0].issuer") && e.contains('#'), "{e}");
}

#[test]
fn profile_mistakes_are_config_errors_naming_the_key() {
    for (profile, want) in [
        ("    token_types: []", "issuers[0].token_types"),
        ("    token_types: [\"at jwt\"]", "issuers[0].token_types"),
        ("    clients: []", "issuers[0].clients"),
        ("    clients: [\"\"]", "issuers[0].clients[0]"),
        ("    subject_claim: a..b", "issuers[0].subject_claim"),
        ("    subject_claim: ''", "issuers[0].subject_claim"),
        (
            "    permissions:\n      - { claim: x., via: roles }",
            "issuers[0].permissions[0].claim",
        ),
        (
            "    permissions:\n      - { claim: 'a\\b', via: roles }",
            "issuers[0].permissions[0].claim",
        ),
        (
            "    permissions:\n      - { claim: groups, via: groups }",
            "issuers[0].permissions[0].via",
        ),
        (
            "    permissions:\n      - { claim: groups }",
            "issuers[0].permissions[0]",
        ),
        (
            "    permissions:\n      - { claim: groups, via: roles, prefix: 'g:' }",
            "issuers[0].permissions[0]",
        ),
        (
            "    permissions:\n      - { claim: scope, prefix: 'a b' }",
            "issuers[0].permissions[0].prefix",
        ),
        (
            "    permissions:\n      - { claim: scope, prefix: x, bogus: 1 }",
            "bogus",
        ),
        (
            "    identity_claims: { email: Host }",
            "issuers[0].identity_claims.email",
        ),
        (
            "    identity_claims: { email: 'bad name' }",
            "issuers[0].identity_claims.email",
        ),
        (
            "    identity_claims: { email: X-Forwarded-Host }",
            "issuers[0].identity_claims.email",
        ),
        (
            "    identity_claims: { email: Content-Type }",
            "issuers[0].identity_claims.email",
        ),
        (
            "    identity_claims: { email: X-Auth-Subject }",
            "already an identity header",
        ),
        (
            "    identity_claims: { email: x_auth_permissions }",
            "already an identity header",
        ),
        (
            "    identity_claims: { email: X-E, name: x-e }",
            "another claim of this issuer",
        ),
        (
            "    identity_claims: { 'a..b': X-E }",
            "issuers[0].identity_claims.a..b",
        ),
    ] {
        let e = refused(profile, "");
        assert!(e.contains(want), "{profile}: `{e}` lacks `{want}`");
    }
}

#[test]
fn a_route_may_require_a_permission_only_a_prefix_mapping_produces() {
    let route = "  - { path: /s, upstream: app, policy: { all_of: [\"scope:documents.read\"] } }\n";
    // No prefix: the error it always was, at the route.
    let e = refused("", route);
    assert!(e.contains("routes[1].policy.all_of[0]"), "{e}");
    assert!(
        e.contains("no role grants the permission `scope:documents.read`"),
        "{e}"
    );
    // Another prefix does not help.
    let e = refused(
        "    permissions:\n      - { claim: scope, prefix: 'scp:' }",
        route,
    );
    assert!(e.contains("routes[1].policy.all_of[0]"), "{e}");
    // The matching prefix does.
    let config = compile(
        "    permissions:\n      - { claim: scope, prefix: 'scope:' }",
        route,
        true,
    )
    .unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn mappings_that_can_never_grant_are_warnings_with_their_line() {
    // `via: roles` without roles, and a prefix no route asks for.
    let config = compile(
        "    permissions:\n      - { claim: groups, via: roles }\n      - { claim: scope, prefix: 'scope:' }",
        "",
        false,
    )
    .unwrap();
    let w: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].starts_with("issuers[0].permissions[0].via: "), "{w:?}");
    assert!(w[0].contains("no role is defined"), "{w:?}");
    assert!(
        w[1].starts_with("issuers[0].permissions[1].prefix: "),
        "{w:?}"
    );
    assert!(w[1].contains("`scope:`"), "{w:?}");
    assert!(config.warnings.iter().all(|w| w.line.is_some()), "{w:?}");
    // With roles and a route that names a `scope:` permission: nothing to warn about.
    let config = compile(
        "    permissions:\n      - { claim: groups, via: roles }\n      - { claim: scope, prefix: 'scope:' }",
        "  - { path: /s, upstream: app, policy: { any_of: [\"scope:x\"] } }\n",
        true,
    )
    .unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn check_prints_the_warnings_and_still_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::generate(Algorithm::EdDSA, "k-check");
    let text = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nissuers:\n{}upstreams:\n  app: {{ echo: true }}\nroutes:\n  - {{ path: /, upstream: app, policy: authenticated }}\n",
        issuer_yaml(
            ISSUER,
            &key,
            dir.path(),
            "    permissions:\n      - { claim: groups, via: roles }"
        )
    );
    let path = write(dir.path(), "gateway.yaml", &text);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: issuers[0].permissions[0].via: ") && stderr.contains("at line"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}
