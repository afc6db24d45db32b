//! docs/security.md 24 and 28–31, black-box: token sources, header spoofing, path normalization,
//! request smuggling and default-deny routing, against a real gateway on 127.0.0.1:0 in front of
//! the recording echo upstream. "Rejected" means a 4xx and an upstream that received nothing.
//! Every refusal test has a positive control (the same request made valid gets through), so a
//! gateway that refused everything would fail here too.

use crate::common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request};
use http_body_util::Full;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Local helpers.

/// A GET with the given extra headers (appended in order, so names may repeat).
fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(gw.url(path));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Any request with the given extra headers.
fn request(
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(gw.url(path));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn access_cookie(token: &str) -> String {
    format!("{COOKIE}={token}")
}

/// A raw HTTP/1.1 GET with `Connection: close`, so the read ends as soon as the answer is sent.
fn raw_get(path: &str, headers: &[&str]) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// Status codes of every response in a raw reply, in order. A response head may follow the
/// previous body directly (no newline), so status lines are found anywhere.
fn statuses(reply: &str) -> Vec<u16> {
    reply
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, m)| reply.get(i + m.len()..i + m.len() + 4))
        .filter(|code| code.ends_with(' ') && code[..3].bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|code| code[..3].parse().ok())
        .collect()
}

/// The single status of a raw reply that must hold exactly one response.
fn only_status(reply: &str) -> u16 {
    let all = statuses(reply);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one response, got {all:?}:\n{reply}"
    );
    all[0]
}

/// Every value of `name` the upstream saw, as strings.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// Asserts that no header the upstream saw carries any of the planted values, under any name.
fn assert_no_planted_value(headers: &HeaderMap, planted: &[&str]) {
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        for p in planted {
            assert!(
                !value.contains(p),
                "client-planted `{p}` reached the upstream in `{name}: {value}`"
            );
        }
    }
}

/// The identity headers the upstream saw, each with exactly one value.
fn identity(headers: &HeaderMap) -> (String, String, String) {
    let one = |name: &str| {
        let v = values(headers, name);
        assert_eq!(v.len(), 1, "{name} must arrive exactly once, got {v:?}");
        v.into_iter().next().unwrap()
    };
    (
        one("x-auth-subject"),
        one("x-auth-session"),
        one("x-auth-permissions"),
    )
}

/// Asserts the upstream saw no identity header at all (in any spelling).
fn assert_no_identity(headers: &HeaderMap) {
    for name in headers.keys() {
        let n = name.as_str().replace('_', "-");
        assert!(
            !n.starts_with("x-auth-"),
            "an identity header `{name}` reached the upstream of a public route"
        );
    }
}

/// A second user with a live session and the editor role.
async fn bob_token(gw: &TestGateway) -> String {
    gw.create_session("sid-bob", "bob").await;
    gw.token(json!({ "sub": "bob", "sid": "sid-bob", "roles": ["editor"] }))
}

/// Routes in which `/` needs a token, so nothing is public by accident.
const CLOSED_ROUTES: &str = r#"
  - { id: public, path: /public, upstream: echo, policy: public }
  - { id: root, path: /, upstream: echo, policy: authenticated }
"#;

// ---------------------------------------------------------------------------------------------
// 24. Token sources.

#[tokio::test]
async fn sec24_tokens_in_the_query_string_are_ignored() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    for query in ["access_token", "token", "jwt", "id_token", "bearer", COOKIE] {
        let response = gw.get(&format!("/api/x?{query}={token}")).await;
        assert_eq!(response.status, 401, "?{query}= must not be a credential");
    }
    assert_eq!(gw.upstream.count(), 0);

    // Positive control: the same token in the Authorization header is accepted.
    let response = gw.get_bearer("/api/x", &token).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(gw.upstream.count(), 1);
}

#[tokio::test]
async fn sec24_the_configured_cookie_is_a_credential_and_is_not_forwarded_but_other_cookies_are() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let cookie = format!("theme=dark; {}; lang=en", access_cookie(&token));
    let response = gw
        .send(get_with(&gw, "/api/x", &[("cookie", &cookie)]))
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = gw.upstream.last();
    assert_eq!(values(&seen.headers, "cookie"), ["theme=dark; lang=en"]);
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_no_planted_value(&seen.headers, &[&token]);
}

#[tokio::test]
async fn sec24_cookies_with_a_similar_name_are_not_credentials() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let names = [
        "portcullis-at",
        "__Secure-portcullis-at",
        "__host-portcullis-at",
        "__HOST-PORTCULLIS-AT",
        "__Host-portcullis-at2",
        "x__Host-portcullis-at",
    ];
    for name in names {
        let cookie = format!("{name}={token}");
        let response = gw
            .send(get_with(&gw, "/api/x", &[("cookie", &cookie)]))
            .await;
        assert_eq!(
            response.status, 401,
            "cookie `{name}` must not be a credential"
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn sec24_the_access_cookie_sent_twice_is_rejected() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let other = gw.token(json!({}));
    let c = access_cookie(&token);
    let o = access_cookie(&other);
    let cases: [&[(&str, &str)]; 4] = [
        &[("cookie", &format!("{c}; {c}"))],
        &[("cookie", &format!("{c}; a=1; {o}"))],
        &[("cookie", &c), ("cookie", &c)],
        &[("cookie", &c), ("cookie", &format!("b=2; {o}"))],
    ];
    for headers in cases {
        let response = gw.send(get_with(&gw, "/api/x", headers)).await;
        assert_eq!(response.status, 400, "{headers:?}");
    }
    assert_eq!(gw.upstream.count(), 0);

    let response = gw.send(get_with(&gw, "/api/x", &[("cookie", &c)])).await;
    assert_eq!(
        response.status, 200,
        "positive control: one cookie is accepted"
    );
}

#[tokio::test]
async fn sec24_two_authorization_headers_are_rejected() {
    let gw = TestGateway::start().await;
    let alice = gw.token(json!({}));
    let bob = bob_token(&gw).await;
    for second in [&alice, &bob] {
        let response = gw
            .send(get_with(
                &gw,
                "/api/x",
                &[
                    ("authorization", &bearer(&alice)),
                    ("authorization", &bearer(second)),
                ],
            ))
            .await;
        assert_eq!(response.status, 400);
    }
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn sec24_cookie_and_bearer_for_different_users_are_rejected() {
    let gw = TestGateway::start().await;
    let alice = gw.token(json!({}));
    let bob = bob_token(&gw).await;
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[
                ("authorization", &bearer(&alice)),
                ("cookie", &access_cookie(&bob)),
            ],
        ))
        .await;
    assert_eq!(response.status, 400);
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[
                ("authorization", &bearer(&bob)),
                ("cookie", &access_cookie(&alice)),
            ],
        ))
        .await;
    assert_eq!(response.status, 400);
    // Two different tokens of the same user are just as ambiguous.
    let alice2 = gw.token(json!({}));
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[
                ("authorization", &bearer(&alice)),
                ("cookie", &access_cookie(&alice2)),
            ],
        ))
        .await;
    assert_eq!(response.status, 400);
    // A forged cookie does not get a pass because the bearer is good.
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[
                ("authorization", &bearer(&alice)),
                ("cookie", &access_cookie("a.b.c")),
            ],
        ))
        .await;
    assert_eq!(response.status, 400);
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn sec24_equal_cookie_and_bearer_are_accepted_and_neither_is_forwarded() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let cookie = format!("a=1; {}", access_cookie(&token));
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[("authorization", &bearer(&token)), ("cookie", &cookie)],
        ))
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = gw.upstream.last();
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(values(&seen.headers, "cookie"), ["a=1"]);
    assert_no_planted_value(&seen.headers, &[&token]);
    assert_eq!(identity(&seen.headers).0, "alice");
}

#[tokio::test]
async fn sec24_the_gateway_cookie_and_authorization_are_not_forwarded_on_public_routes_either() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let cookie = format!("{}; keep=me", access_cookie(&token));
    let response = gw
        .send(get_with(
            &gw,
            "/public/x",
            &[("authorization", &bearer(&token)), ("cookie", &cookie)],
        ))
        .await;
    assert_eq!(response.status, 200);
    let seen = gw.upstream.last();
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(values(&seen.headers, "cookie"), ["keep=me"]);
    assert_no_planted_value(&seen.headers, &[&token]);
    assert_no_identity(&seen.headers);
}

#[tokio::test]
async fn sec24_the_forwarded_identity_always_equals_the_verified_one() {
    let gw = TestGateway::start().await;
    let bob = bob_token(&gw).await;
    // Bob's token, with alice's identity planted in every header the client could set.
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[
                ("authorization", &bearer(&bob)),
                ("x-auth-subject", "alice"),
                ("x-auth-session", "sid-alice"),
                ("x-auth-permissions", "admin"),
            ],
        ))
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let (subject, session, permissions) = identity(&gw.upstream.last().headers);
    assert_eq!(subject, "bob");
    assert_eq!(session, "sid-bob");
    let mut granted: Vec<&str> = permissions.split(',').map(str::trim).collect();
    granted.sort_unstable();
    assert_eq!(granted, ["docs:read", "docs:write"]);

    // The same through the cookie.
    let response = gw
        .send(get_with(&gw, "/api/y", &[("cookie", &access_cookie(&bob))]))
        .await;
    assert_eq!(response.status, 200);
    assert_eq!(identity(&gw.upstream.last().headers).0, "bob");
}

// ---------------------------------------------------------------------------------------------
// 28. Identity and forwarding headers.

/// Planted identity headers in every spelling a client might try; hyper lower-cases the names.
const PLANTED_IDENTITY: &[&str] = &[
    "X-Auth-Subject: mallory",
    "x-auth-subject: mallory",
    "X-AUTH-SUBJECT: mallory",
    "x_auth_subject: mallory",
    "X_Auth_Subject: mallory",
    "x-auth_subject: mallory",
    "X-Auth-Session: sid-mallory",
    "x_auth_session: sid-mallory",
    "X-Auth-Permissions: admin-planted",
    "x_auth_permissions: admin-planted",
    "X-AUTH-PERMISSIONS: admin-planted",
    "X-Auth-Roles: admin-planted",
    "X-Auth-Email: mallory@evil.test",
    "X-Auth-User: mallory",
];

#[tokio::test]
async fn sec28_client_sent_x_auth_headers_are_removed_in_every_spelling_on_authenticated_routes() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let auth = format!("Authorization: Bearer {token}");
    let mut headers: Vec<&str> = PLANTED_IDENTITY.to_vec();
    headers.push(&auth);
    let reply = gw.raw(&raw_get("/api/x", &headers)).await;
    assert_eq!(only_status(&reply), 200, "{reply}");
    let seen = gw.upstream.last();
    assert_no_planted_value(&seen.headers, &["mallory", "admin-planted"]);
    assert_eq!(
        identity(&seen.headers),
        (
            "alice".to_owned(),
            "sid-alice".to_owned(),
            "docs:read".to_owned()
        )
    );
    // Underscore spellings are gone by name too, not just replaced in value.
    for name in [
        "x_auth_subject",
        "x_auth_session",
        "x_auth_permissions",
        "x-auth_subject",
        "x-auth-roles",
        "x-auth-email",
        "x-auth-user",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn sec28_client_sent_x_auth_headers_are_removed_in_every_spelling_on_public_routes() {
    let gw = TestGateway::start().await;
    let reply = gw.raw(&raw_get("/public/x", PLANTED_IDENTITY)).await;
    assert_eq!(only_status(&reply), 200, "{reply}");
    let seen = gw.upstream.last();
    assert_no_planted_value(&seen.headers, &["mallory", "admin-planted"]);
    assert_no_identity(&seen.headers);
}

#[tokio::test]
async fn sec28_underscore_header_names_are_accepted_by_the_parser_and_then_stripped() {
    // hyper accepts `_` in header names (it is a legal token character), so the request is
    // served; the strip stage, not the parser, is what keeps these names from the upstream.
    let gw = TestGateway::start().await;
    let response = gw
        .send(get_with(
            &gw,
            "/public/x",
            &[
                ("x_auth_subject", "mallory"),
                ("x_forwarded_for", "203.0.113.66"),
                ("x_real_ip", "203.0.113.66"),
            ],
        ))
        .await;
    assert_eq!(response.status, 200);
    let seen = gw.upstream.last();
    for name in ["x_auth_subject", "x_forwarded_for", "x_real_ip"] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    assert_no_planted_value(&seen.headers, &["mallory", "203.0.113.66"]);
    assert_eq!(values(&seen.headers, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn sec28_obs_folded_header_lines_are_rejected() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let auth = format!("Authorization: Bearer {token}");
    let folds: [&[&str]; 4] = [
        // A planted identity continued onto a folded line.
        &["X-Auth-Subject: alice", " admin"],
        // A folded line that itself looks like an identity header.
        &["X-Note: hello", " X-Auth-Subject: mallory"],
        &["X-Note: hello", "\tX-Auth-Permissions: admin"],
        // A fold inside a forwarding header.
        &["X-Forwarded-For: 203.0.113.1,", " 127.0.0.1"],
    ];
    for path in ["/public/x", "/api/x"] {
        for fold in folds {
            let mut headers = fold.to_vec();
            headers.push(&auth);
            let reply = gw.raw(&raw_get(path, &headers)).await;
            assert_eq!(only_status(&reply), 400, "{path} {fold:?}:\n{reply}");
        }
    }
    assert_eq!(gw.upstream.count(), 0);

    // Positive control: the same headers unfolded are served (and stripped).
    let reply = gw
        .raw(&raw_get("/api/x", &["X-Auth-Subject: mallory", &auth]))
        .await;
    assert_eq!(only_status(&reply), 200, "{reply}");
    assert_eq!(identity(&gw.upstream.last().headers).0, "alice");
}

/// Forwarding headers a client might plant.
const PLANTED_FORWARDING: &[(&str, &str)] = &[
    ("x-forwarded-for", "203.0.113.7"),
    ("x-forwarded-for", "198.51.100.8"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-port", "443"),
    ("x-forwarded-prefix", "/evil"),
    ("x_forwarded_for", "203.0.113.9"),
    (
        "forwarded",
        "for=203.0.113.10;proto=https;host=evil.example",
    ),
    ("x-real-ip", "203.0.113.11"),
    ("x_real_ip", "203.0.113.12"),
];

fn assert_forwarding_is_the_gateways_own(headers: &HeaderMap) {
    assert_eq!(values(headers, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(headers, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(headers, "x-forwarded-host"), ["127.0.0.1"]);
    for name in [
        "forwarded",
        "x-real-ip",
        "x_real_ip",
        "x_forwarded_for",
        "x-forwarded-port",
        "x-forwarded-prefix",
    ] {
        assert!(headers.get(name).is_none(), "{name} reached the upstream");
    }
    assert_no_planted_value(headers, &["203.0.113", "198.51.100", "evil"]);
}

#[tokio::test]
async fn sec28_forwarding_headers_from_an_untrusted_peer_are_replaced() {
    let gw = TestGateway::start().await;
    let response = gw
        .send(get_with(&gw, "/public/x", PLANTED_FORWARDING))
        .await;
    assert_eq!(response.status, 200);
    assert_forwarding_is_the_gateways_own(&gw.upstream.last().headers);

    let token = gw.token(json!({}));
    let auth = bearer(&token);
    let mut headers = PLANTED_FORWARDING.to_vec();
    headers.push(("authorization", &auth));
    let response = gw.send(get_with(&gw, "/api/x", &headers)).await;
    assert_eq!(response.status, 200);
    assert_forwarding_is_the_gateways_own(&gw.upstream.last().headers);
}

#[tokio::test]
async fn sec28_forwarding_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let gw = Setup {
        extra: "trusted_proxies: [127.0.0.1]".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let response = gw
        .send(get_with(&gw, "/public/x", PLANTED_FORWARDING))
        .await;
    assert_eq!(response.status, 200);
    let seen = gw.upstream.last();
    assert_eq!(
        values(&seen.headers, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.8, 127.0.0.1"]
    );
    assert_eq!(values(&seen.headers, "x-forwarded-proto"), ["https"]);
    assert_eq!(values(&seen.headers, "x-forwarded-host"), ["evil.example"]);
    // Only the X-Forwarded-For/-Proto/-Host chain is believed; the rest is still removed.
    for name in ["forwarded", "x-real-ip", "x_real_ip", "x_forwarded_for"] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    // Identity headers are never believed, even from a trusted proxy.
    let response = gw
        .send(get_with(&gw, "/public/x", &[("x-auth-subject", "mallory")]))
        .await;
    assert_eq!(response.status, 200);
    assert_no_identity(&gw.upstream.last().headers);
}

// ---------------------------------------------------------------------------------------------
// 29. Path normalization.

#[tokio::test]
async fn sec29_spellings_of_a_protected_path_never_reach_the_public_rule_without_a_token() {
    let gw = TestGateway::start().await;
    // 401: the admin rule applied. 400: an ambiguous encoding, refused before routing.
    let cases: &[(&str, u16)] = &[
        ("/admin", 401),
        ("/ADMIN", 401),
        ("/Admin/x", 401),
        ("/admin/", 401),
        ("/admin;x", 400),
        ("/admin;jsessionid=1/x", 400),
        ("/%61dmin", 401),
        ("/%41DMIN", 401),
        ("/./admin", 401),
        ("/pub/../admin", 401),
        ("/pub/./../admin", 401),
        ("/../admin", 401),
        ("/pub/%2e%2e/admin", 401),
        ("/pub/%2E%2E/admin", 401),
        ("/pub/.%2e/admin", 401),
        ("/pub/%2e%2e%2fadmin", 400),
        ("/pub/..%2fadmin", 400),
        ("/pub/..%5cadmin", 400),
        ("/pub\\..\\admin", 400),
        ("//admin", 401),
        ("///admin//x", 401),
        ("/admin%2f", 400),
        ("/admin%2F", 400),
        ("/admin%00", 400),
        ("/admin%00.html", 400),
        ("/admin%0d%0a", 400),
        ("/admin%09", 400),
        ("/admin%23x", 400),
        ("/admin#x", 401),
        ("/admin?x=1", 401),
        ("/admin?/public", 401),
        // Absolute-form targets are normalized the same way.
        ("http://127.0.0.1/pub/../admin", 401),
        ("http://127.0.0.1/%61dmin", 401),
        ("http://127.0.0.1/admin%2f", 400),
    ];
    let mut wrong = Vec::new();
    for &(path, expected) in cases {
        let reply = gw.raw(&raw_get(path, &[])).await;
        let status = only_status(&reply);
        if status != expected {
            wrong.push(format!("{path}: {status}, expected {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(
        gw.upstream.count(),
        0,
        "{:#?}",
        gw.upstream
            .requests()
            .iter()
            .map(|s| &s.uri)
            .collect::<Vec<_>>()
    );

    // Positive control: raw requests to public paths do reach the upstream.
    for path in ["/public/x", "/pub/../public/x", "/somewhere"] {
        let reply = gw.raw(&raw_get(path, &[])).await;
        assert_eq!(only_status(&reply), 200, "{path}:\n{reply}");
    }
    assert_eq!(gw.upstream.count(), 3);
}

#[tokio::test]
async fn sec29_the_upstream_receives_the_normalized_path_that_was_matched() {
    let gw = TestGateway::start().await;
    let admin = gw.token(json!({ "roles": ["admin"] }));
    let cases = [
        ("/%61dmin/x", "/admin/x"),
        ("/pub/%2e%2e/admin", "/admin"),
        ("/pub/../admin", "/admin"),
        ("//admin//x/", "/admin/x/"),
        ("/./admin/./x", "/admin/x"),
        ("/admin/%7euser", "/admin/~user"),
        ("/admin/a%3fb", "/admin/a%3Fb"),
        ("/admin/caf%c3%a9", "/admin/caf%C3%A9"),
        // The case is kept; matching is case-insensitive.
        ("/ADMIN/X", "/ADMIN/X"),
    ];
    for (sent, expected) in cases {
        let response = gw.get_bearer(sent, &admin).await;
        assert_eq!(response.status, 200, "{sent}: {}", response.text());
        assert_eq!(gw.upstream.last().uri, expected, "{sent}");
    }
    // The fragment never leaves the client's side of the gateway.
    let auth = format!("Authorization: Bearer {admin}");
    let reply = gw.raw(&raw_get("/admin/x#frag", &[&auth])).await;
    assert_eq!(only_status(&reply), 200, "{reply}");
    assert_eq!(gw.upstream.last().uri, "/admin/x");
}

#[tokio::test]
async fn sec29_an_encoded_question_mark_is_part_of_the_segment_and_stays_encoded() {
    // `/admin%3Fx` names a segment `admin?x`, not `/admin` with a query, so the public `/` rule
    // applies; the upstream receives it still encoded, so it cannot read a query out of it.
    let gw = TestGateway::start().await;
    let reply = gw.raw(&raw_get("/admin%3fx", &[])).await;
    assert_eq!(only_status(&reply), 200, "{reply}");
    assert_eq!(gw.upstream.last().uri, "/admin%3Fx");
}

#[tokio::test]
async fn sec29_query_strings_are_passed_unchanged_and_never_change_the_rule() {
    let gw = TestGateway::start().await;
    let admin = gw.token(json!({ "roles": ["admin"] }));
    for query in [
        "x=1",
        "a=1&b=%2F&c=..%2f",
        "next=/public&x=%00",
        "/public",
        "a=%61&a=2",
    ] {
        let path = format!("/pub/%2e%2e/admin?{query}");
        let response = gw.get_bearer(&path, &admin).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(gw.upstream.last().uri, format!("/admin?{query}"));
    }
    // A public path with a query naming a protected one stays public, and vice versa.
    let before = gw.upstream.count();
    let response = gw.get("/public/x?path=/admin").await;
    assert_eq!(response.status, 200);
    assert_eq!(gw.upstream.last().uri, "/public/x?path=/admin");
    let response = gw.get("/admin?/public").await;
    assert_eq!(response.status, 401);
    assert_eq!(gw.upstream.count(), before + 1);
}

// ---------------------------------------------------------------------------------------------
// 30. Request smuggling.

/// A smuggled request that, if it ever reached the upstream, would have bypassed authentication.
const SMUGGLED: &str =
    "GET /admin/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// How the gateway may answer an ambiguously framed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// 400, the upstream saw nothing.
    Refused,
    /// The request was read by its `Transfer-Encoding` alone, forwarded once, and the
    /// connection closed after the answer (RFC 9112 §6.1), so the rest was never parsed.
    ChunkedThenClosed,
}

/// Sends a `POST /public/first` whose framing headers are `framing` and whose body is
/// `body`, and checks that no smuggled request reached the upstream. Returns what happened.
async fn send_ambiguous(framing: &str, body: &str) -> (Framing, String) {
    let gw = TestGateway::start().await;
    let head = format!("POST /public/first HTTP/1.1\r\nHost: 127.0.0.1\r\n{framing}\r\n\r\n");
    let started = Instant::now();
    let reply = gw.raw(format!("{head}{body}").as_bytes()).await;
    let elapsed = started.elapsed();
    let seen = gw.upstream.requests();
    assert!(
        seen.iter().all(|s| !s.uri.contains("smuggled")),
        "a smuggled request reached the upstream: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    assert!(seen.len() <= 1, "the upstream saw {} requests", seen.len());
    let all = statuses(&reply);
    let outcome = match all.as_slice() {
        [400] => {
            assert_eq!(seen.len(), 0, "a refused request reached the upstream");
            Framing::Refused
        }
        [200] => {
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].uri, "/public/first");
            assert!(
                reply
                    .to_ascii_lowercase()
                    .contains("\r\nconnection: close\r\n"),
                "an accepted ambiguous request must close the connection:\n{reply}"
            );
            // The read ended because the gateway closed, not because the 2 s read timed out.
            assert!(
                elapsed < Duration::from_millis(1500),
                "the connection stayed open"
            );
            Framing::ChunkedThenClosed
        }
        other => panic!("unexpected responses {other:?} to {framing:?}:\n{reply}"),
    };
    (outcome, reply)
}

/// A chunked body that ends early, followed by a smuggled request (CL.TE).
fn cl_te_body() -> String {
    format!("0\r\n\r\n{SMUGGLED}")
}

#[tokio::test]
async fn sec30_content_length_with_transfer_encoding_is_read_as_chunked_alone_and_the_connection_closed()
 {
    // hyper drops the Content-Length when Transfer-Encoding is present, before the gateway
    // sees the request, and closes the connection after responding (RFC 9112 §6.1 allows
    // this; README "How a request is decided" says so). The upstream receives the request once,
    // with the body the chunks decode to, and nothing after it is ever parsed.
    let body = cl_te_body();
    let cl_first = format!(
        "Content-Length: {}\r\nTransfer-Encoding: chunked",
        body.len()
    );
    let te_first = format!(
        "Transfer-Encoding: chunked\r\nContent-Length: {}",
        body.len()
    );
    for framing in [cl_first, te_first] {
        let (outcome, _) = send_ambiguous(&framing, &body).await;
        assert_eq!(outcome, Framing::ChunkedThenClosed, "{framing}");
    }
    // TE.CL: a short Content-Length with the smuggled request inside a chunk.
    let chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let (outcome, _) =
        send_ambiguous("Content-Length: 4\r\nTransfer-Encoding: chunked", &chunk).await;
    assert_eq!(outcome, Framing::ChunkedThenClosed);
}

#[tokio::test]
async fn sec30_duplicate_content_lengths_with_different_values_are_refused() {
    let body = format!("hello{SMUGGLED}");
    let framing = format!("Content-Length: 5\r\nContent-Length: {}", body.len());
    assert_eq!(send_ambiguous(&framing, &body).await.0, Framing::Refused);
    let framing = format!("Content-Length: 5, {}", body.len());
    assert_eq!(send_ambiguous(&framing, &body).await.0, Framing::Refused);
}

#[tokio::test]
async fn sec30_duplicate_content_lengths_with_equal_values_never_let_a_request_through_unchecked() {
    // hyper folds identical Content-Length lines into one (RFC 9110 §8.6 allows either that or
    // a 400). Either way the bytes after the body are parsed by the gateway as a request of
    // their own, routed and refused — they never reach the upstream inside another request.
    let gw = TestGateway::start().await;
    let head = "POST /public/first HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    let reply = gw.raw(format!("{head}hello{SMUGGLED}").as_bytes()).await;
    let all = statuses(&reply);
    let seen = gw.upstream.requests();
    assert!(seen.iter().all(|s| !s.uri.contains("smuggled")));
    match all.as_slice() {
        [400] => assert_eq!(seen.len(), 0),
        [200, 401] => {
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].uri, "/public/first");
            assert_eq!(&seen[0].body[..], b"hello");
        }
        other => panic!("unexpected responses {other:?}:\n{reply}"),
    }
}

#[tokio::test]
async fn sec30_obfuscated_transfer_encodings_are_refused() {
    let body = cl_te_body();
    let cl = format!("Content-Length: {}", body.len());
    let variants = [
        "Transfer-Encoding: xchunked".to_owned(),
        "Transfer-Encoding: chunked, identity".to_owned(),
        "Transfer-Encoding: identity".to_owned(),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: x".to_owned(),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked".to_owned(),
        "Transfer-Encoding: chunked, chunked".to_owned(),
        "Transfer-Encoding: gzip, chunked".to_owned(),
        "Transfer-Encoding : chunked".to_owned(),
        "Transfer-Encoding\t: chunked".to_owned(),
        " Transfer-Encoding: chunked".to_owned(),
        "X-Note: x\r\n Transfer-Encoding: chunked".to_owned(),
        "Transfer-Encoding: \u{b}chunked".to_owned(),
    ];
    let mut wrong = Vec::new();
    for te in &variants {
        // Alone, and with a Content-Length covering the smuggled request.
        for framing in [te.clone(), format!("{cl}\r\n{te}"), format!("{te}\r\n{cl}")] {
            let (outcome, reply) = send_ambiguous(&framing, &body).await;
            if outcome != Framing::Refused {
                wrong.push(format!(
                    "{framing:?} → {outcome:?}: {}",
                    reply.lines().next().unwrap_or("")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn sec30_whitespace_around_chunked_is_plain_chunked_and_smuggles_nothing() {
    // Leading spaces and tabs are optional whitespace (RFC 9110 §5.6.3): every parser reads
    // `Transfer-Encoding:\tchunked` as chunked, so it is not ambiguous. With a Content-Length
    // it is the CL+TE case; alone it is one chunked request and the rest is a new request the
    // gateway itself routes (and refuses).
    let body = cl_te_body();
    let cl = format!("Content-Length: {}", body.len());
    for te in [
        "Transfer-Encoding:  chunked",
        "Transfer-Encoding:\tchunked",
        "Transfer-Encoding: chunked\t",
        "Transfer-Encoding: \t chunked",
    ] {
        let (outcome, _) = send_ambiguous(&format!("{cl}\r\n{te}"), &body).await;
        assert!(
            matches!(outcome, Framing::Refused | Framing::ChunkedThenClosed),
            "{te:?}"
        );

        let gw = TestGateway::start().await;
        let head = format!("POST /public/first HTTP/1.1\r\nHost: 127.0.0.1\r\n{te}\r\n\r\n");
        let reply = gw.raw(format!("{head}{body}").as_bytes()).await;
        let seen = gw.upstream.requests();
        assert!(seen.iter().all(|s| !s.uri.contains("smuggled")), "{te:?}");
        match statuses(&reply).as_slice() {
            [400] => assert_eq!(seen.len(), 0),
            [200, 401] => {
                assert_eq!(seen.len(), 1, "{te:?}");
                assert!(seen[0].body.is_empty(), "{te:?}");
            }
            other => panic!("unexpected responses {other:?} to {te:?}:\n{reply}"),
        }
    }
}

#[tokio::test]
async fn sec30_hop_by_hop_headers_spelled_with_underscores_are_not_forwarded() {
    // `Transfer_Encoding` is not a framing header to hyper, so the request is framed by its
    // Content-Length; but a backend that folds `_` into `-` would read the forwarded copy as
    // chunked and see the smuggled request. The gateway must not pass it on.
    let gw = TestGateway::start().await;
    let body = cl_te_body();
    let head = format!(
        "POST /public/first HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\
         Transfer_Encoding: chunked\r\nKeep_Alive: timeout=5\r\nProxy_Authorization: Basic eDp4\r\n\
         Proxy_Connection: keep-alive\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let reply = gw.raw(format!("{head}{body}").as_bytes()).await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    let seen = gw.upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].body.len(),
        body.len(),
        "the body is framed by Content-Length"
    );
    for name in [
        "transfer_encoding",
        "keep_alive",
        "proxy_authorization",
        "proxy_connection",
    ] {
        assert!(
            seen[0].headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn sec30_transfer_encoding_in_http_1_0_is_refused() {
    let gw = TestGateway::start().await;
    let body = cl_te_body();
    let reply = gw
        .raw(format!("POST /public/first HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes())
        .await;
    assert_eq!(statuses(&reply), [400], "{reply}");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn sec30_a_well_framed_chunked_request_is_forwarded_once() {
    // Positive control for the smuggling tests: plain chunked and plain Content-Length work.
    let gw = TestGateway::start().await;
    let reply = gw
        .raw(b"POST /public/a HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nPOST /public/b HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .await;
    assert_eq!(statuses(&reply), [200, 200], "{reply}");
    let seen = gw.upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].uri.as_str(), &seen[0].body[..]),
        ("/public/a", &b"hello"[..])
    );
    assert_eq!(
        (seen[1].uri.as_str(), &seen[1].body[..]),
        ("/public/b", &b"hi"[..])
    );
}

// ---------------------------------------------------------------------------------------------
// 31. Default deny.

#[tokio::test]
async fn sec31_an_unlisted_path_is_not_found_even_with_a_valid_token() {
    let gw = Setup {
        routes: "  - { id: api, path: /api, upstream: echo, policy: authenticated }\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let token = gw.token(json!({ "roles": ["admin"] }));
    for path in ["/", "/other", "/apix", "/public", "/healthz", "/ap%69x"] {
        assert_eq!(gw.get(path).await.status, 404, "{path} without a token");
        assert_eq!(
            gw.get_bearer(path, &token).await.status,
            404,
            "{path} with a token"
        );
    }
    assert_eq!(gw.upstream.count(), 0);

    // Positive control.
    assert_eq!(gw.get_bearer("/api/x", &token).await.status, 200);
    assert_eq!(gw.get_bearer("/%61pi/x", &token).await.status, 200);
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn sec31_an_unlisted_method_is_not_allowed_and_does_not_fall_back_to_a_public_prefix() {
    let gw = TestGateway::start().await;
    let admin = gw.token(json!({ "roles": ["admin"] }));
    let auth = bearer(&admin);
    for method in ["DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"] {
        for path in ["/docs", "/docs/x"] {
            let response = gw.send(request(&gw, method, path, &[])).await;
            assert_eq!(response.status, 405, "{method} {path} without a token");
            let response = gw
                .send(request(&gw, method, path, &[("authorization", &auth)]))
                .await;
            assert_eq!(response.status, 405, "{method} {path} with an admin token");
        }
    }
    // A method-override header does not turn an unlisted method into a listed one.
    let response = gw
        .send(request(
            &gw,
            "DELETE",
            "/docs/x",
            &[("authorization", &auth), ("x-http-method-override", "GET")],
        ))
        .await;
    assert_eq!(response.status, 405);
    assert_eq!(gw.upstream.count(), 0);

    // Positive control: the listed methods go through.
    for method in ["GET", "HEAD", "POST", "PUT"] {
        let response = gw
            .send(request(&gw, method, "/docs/x", &[("authorization", &auth)]))
            .await;
        assert_eq!(response.status, 200, "{method}");
    }
    assert_eq!(gw.upstream.count(), 4);
}

#[tokio::test]
async fn sec31_a_missing_permission_is_forbidden() {
    let gw = TestGateway::start().await;
    let reader = gw.token(json!({}));
    let response = gw.get_bearer("/admin", &reader).await;
    assert_eq!(response.status, 403);
    let response = gw.get_bearer("/%61dmin/x", &reader).await;
    assert_eq!(response.status, 403);
    let response = gw
        .send(request(
            &gw,
            "PUT",
            "/docs/x",
            &[("authorization", &bearer(&reader))],
        ))
        .await;
    assert_eq!(response.status, 403);
    let no_roles = gw.token(json!({ "roles": [] }));
    assert_eq!(gw.get_bearer("/docs/x", &no_roles).await.status, 403);
    assert_eq!(gw.upstream.count(), 0);

    // Positive control.
    let admin = gw.token(json!({ "roles": ["admin"] }));
    assert_eq!(gw.get_bearer("/admin", &admin).await.status, 200);
    assert_eq!(gw.get_bearer("/docs/x", &reader).await.status, 200);
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn sec31_no_user_agent_bypasses_authentication() {
    let gw = TestGateway::start().await;
    let agents = [
        "GoogleHealthCheck",
        "GoogleHC/1.0",
        "kube-probe/1.30",
        "ELB-HealthChecker/2.0",
        "Consul Health Check",
        "Prometheus/2.53.0",
        "Googlebot/2.1 (+http://www.google.com/bot.html)",
        "portcullis",
        "",
    ];
    for agent in agents {
        let response = gw
            .send(get_with(&gw, "/api/x", &[("user-agent", agent)]))
            .await;
        assert_eq!(response.status, 401, "User-Agent {agent:?}");
        let response = gw
            .send(get_with(&gw, "/admin", &[("user-agent", agent)]))
            .await;
        assert_eq!(response.status, 401, "User-Agent {agent:?}");
    }
    // And with no User-Agent at all (hyper's client sends none unless told).
    assert_eq!(gw.get("/api/x").await.status, 401);
    assert_eq!(gw.upstream.count(), 0);

    let token = gw.token(json!({}));
    let response = gw
        .send(get_with(
            &gw,
            "/api/x",
            &[
                ("user-agent", "kube-probe/1.30"),
                ("authorization", &bearer(&token)),
            ],
        ))
        .await;
    assert_eq!(response.status, 200, "positive control");
}

#[tokio::test]
async fn sec31_no_header_bypasses_authentication() {
    let gw = TestGateway::start().await;
    let attempts: &[(&str, &str)] = &[
        ("x-forwarded-for", "127.0.0.1"),
        ("x-real-ip", "127.0.0.1"),
        ("x-client-ip", "127.0.0.1"),
        ("true-client-ip", "127.0.0.1"),
        ("forwarded", "for=127.0.0.1"),
        ("x-forwarded-host", "localhost"),
        ("x-forwarded-proto", "https"),
        ("x-original-url", "/public"),
        ("x-rewrite-url", "/public"),
        ("x-original-uri", "/public"),
        ("x-forwarded-uri", "/public"),
        ("x-forwarded-prefix", "/public"),
        ("x-auth-subject", "admin"),
        ("x-auth-permissions", "admin"),
        ("x-http-method-override", "OPTIONS"),
    ];
    for &(name, value) in attempts {
        for path in ["/admin", "/api/x"] {
            let response = gw.send(get_with(&gw, path, &[(name, value)])).await;
            assert_eq!(response.status, 401, "{name}: {value} on {path}");
        }
    }
    // All at once, with a health-check agent.
    let mut all = attempts.to_vec();
    all.push(("user-agent", "kube-probe/1.30"));
    assert_eq!(gw.send(get_with(&gw, "/admin", &all)).await.status, 401);
    assert_eq!(gw.upstream.count(), 0);

    let admin = gw.token(json!({ "roles": ["admin"] }));
    assert_eq!(
        gw.get_bearer("/admin", &admin).await.status,
        200,
        "positive control"
    );
}

#[tokio::test]
async fn sec31_rewrite_and_method_override_headers_are_not_forwarded() {
    // A backend that honours `X-Original-URL` (IIS, Symfony) or `X-HTTP-Method-Override`
    // (many frameworks) would otherwise serve a different path or method from the one the
    // gateway authorized: `/public` with `X-Original-URL: /admin` would be an admin request.
    let gw = TestGateway::start().await;
    let planted: &[(&str, &str)] = &[
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x_original_url", "/admin"),
        ("x-http-method-override", "PUT"),
        ("x-http-method", "PUT"),
        ("x-method-override", "PUT"),
        ("x_http_method_override", "PUT"),
    ];
    let response = gw.send(get_with(&gw, "/public/x", planted)).await;
    assert_eq!(response.status, 200);
    let seen = gw.upstream.last();
    for (name, _) in planted {
        assert!(
            seen.headers.get(*name).is_none(),
            "{name} reached the upstream"
        );
    }

    let reader = gw.token(json!({}));
    let auth = bearer(&reader);
    let mut headers = planted.to_vec();
    headers.push(("authorization", &auth));
    let response = gw.send(get_with(&gw, "/docs/x", &headers)).await;
    assert_eq!(response.status, 200, "a reader may GET /docs");
    let seen = gw.upstream.last();
    for (name, _) in planted {
        assert!(
            seen.headers.get(*name).is_none(),
            "{name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn sec31_health_and_metrics_paths_are_not_public_on_the_proxy_listener() {
    let gw = Setup {
        routes: CLOSED_ROUTES.into(),
        ..Setup::default()
    }
    .start()
    .await;
    let paths = [
        "/healthz",
        "/health",
        "/livez",
        "/readyz",
        "/ready",
        "/status",
        "/ping",
        "/metrics",
        "/.well-known/x",
        "/.well-known/openid-configuration",
        "/favicon.ico",
        "/robots.txt",
        "/HEALTHZ",
        "/%68ealthz",
        "/public/../healthz",
        "/public/../metrics",
    ];
    for path in paths {
        let response = gw
            .send(get_with(&gw, path, &[("user-agent", "kube-probe/1.30")]))
            .await;
        assert_eq!(response.status, 401, "{path}");
    }
    assert_eq!(gw.upstream.count(), 0);

    // Positive controls: with a token these are ordinary proxied paths, and the public route works.
    let token = gw.token(json!({}));
    let response = gw.get_bearer("/healthz", &token).await;
    assert_eq!(response.status, 200);
    assert_eq!(gw.upstream.last().uri, "/healthz");
    assert_eq!(gw.get("/public/healthz").await.status, 200);
    assert_eq!(gw.upstream.count(), 2);
}
