//! Forward-auth, black-box with a plain HTTP client speaking each front proxy's documented
//! header shapes: nginx `auth_request` (`X-Original-URL`, `X-Original-Method`), Traefik
//! `forwardAuth` and Caddy `forward_auth` (`X-Forwarded-Method`, `-Host`, `-Uri`, `-Proto`),
//! Envoy `ext_authz` in HTTP service mode (the original path appended to the endpoint's
//! prefix, the original method and `Host`). The real nginx and Caddy in front are in
//! `forward_auth_proxies`.
//!
//! What is pinned: the decision is the proxied one (same routes, policies, verification and
//! revocation), made on host + normalized path + method; the query never affects it; anything
//! that reads two ways is refused; only trusted peers may ask; the answers follow each
//! contract (nginx 401/403 with `X-Portcullis-Login`, the others a 302/303 for browsers); and the
//! decisions are counted and audited.

use crate::common::*;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use portcullis::store::SessionStore;
use serde_json::json;

const ROUTES: &str = r#"
  - { id: public, path: /public, policy: public }
  - { id: api, path: /api, host: api.example.com, policy: authenticated }
  - { id: docs-read, path: /docs, methods: [GET], policy: { all_of: [docs:read] } }
  - { id: docs-write, path: /docs, methods: [POST, PUT], policy: { all_of: [docs:write] } }
  - { id: admin, path: /admin, policy: { any_of: [admin] }, audit: true }
  - { id: proxied, path: /proxied, upstream: echo, policy: public }
"#;

const ENDPOINTS: &str = r#"
trusted_proxies: [127.0.0.1]
login_url: https://app.example.com/auth/login
forward_auth:
  - { contract: nginx }
  - { contract: forwarded }
  - { contract: envoy }
audit:
  file: audit.jsonl
  aggregate_window: 0s
"#;

async fn gateway(extra: &str) -> TestGateway {
    Setup {
        routes: ROUTES.into(),
        extra: format!("{ENDPOINTS}{extra}"),
        clock: portcullis::clock::Clock::manual(),
        ..Setup::default()
    }
    .start()
    .await
}

/// An nginx `auth_request` sub-request about `method url`, with `headers` copied from the
/// client's request.
async fn nginx(
    gw: &TestGateway,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    let mut r = Request::get(gw.url("/_portcullis/nginx"))
        .header("x-original-method", method)
        .header("x-original-url", url);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    gw.send(r.body(Full::new(Bytes::new())).unwrap()).await
}

/// A Traefik/Caddy sub-request about `method https://host uri`.
async fn forwarded(
    gw: &TestGateway,
    method: &str,
    host: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    let mut r = Request::get(gw.url("/_portcullis/forward"))
        .header("x-forwarded-method", method)
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-for", "198.51.100.7");
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    gw.send(r.body(Full::new(Bytes::new())).unwrap()).await
}

/// An Envoy `ext_authz` check: the original method, path appended to the prefix, `Host`.
async fn envoy(
    gw: &TestGateway,
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> TestResponse {
    let mut r = Request::builder()
        .method(method)
        .uri(gw.url(&format!("/_portcullis/envoy{path}")))
        .header("host", host);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    gw.send(r.body(Full::new(Bytes::new())).unwrap()).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn forward_auth_allows_with_the_identity_headers_in_every_contract() {
    let gw = gateway("").await;
    let token = gw.token(json!({}));
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];
    for r in [
        nginx(&gw, "GET", "https://app.example.com/docs/1", &headers).await,
        forwarded(&gw, "GET", "app.example.com", "/docs/1", &headers).await,
        envoy(&gw, Method::GET, "app.example.com", "/docs/1", &headers).await,
    ] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.headers["x-auth-subject"], "alice");
        assert_eq!(r.headers["x-auth-session"], "sid-alice");
        assert_eq!(r.headers["x-auth-permissions"], "docs:read");
        assert_eq!(r.headers["cache-control"], "no-store");
        assert!(r.body.is_empty());
    }
    // A decision is not a proxied request: the upstream saw nothing.
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn forward_auth_refuses_like_the_proxy_401_without_a_token_and_403_without_the_permission() {
    let gw = gateway("").await;
    let auth = bearer(&gw.token(json!({})));
    let reader = [("authorization", auth.as_str())];
    // API calls (no HTML accepted): 401 with the challenge, 403 for a missing permission.
    let r = nginx(&gw, "GET", "https://app.example.com/docs/1", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.headers.contains_key("www-authenticate"));
    assert!(!r.headers.contains_key("x-portcullis-login"));
    assert!(!r.headers.contains_key("x-auth-subject"));
    let r = nginx(&gw, "POST", "https://app.example.com/docs/1", &reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/1", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = forwarded(&gw, "PUT", "app.example.com", "/docs/1", &reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = envoy(&gw, Method::POST, "app.example.com", "/docs/1", &reader).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A public route is allowed without a token, and says nobody.
    let r = forwarded(&gw, "GET", "app.example.com", "/public/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key("x-auth-subject"));
    // A forged token is refused.
    let forged = bearer(&format!("{}x", gw.token(json!({}))));
    let r = nginx(
        &gw,
        "GET",
        "https://app.example.com/docs/1",
        &[("authorization", forged.as_str())],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forward_auth_sends_browsers_to_log_in_as_each_front_proxy_can_act_on() {
    let gw = gateway("").await;
    let navigate = [("sec-fetch-mode", "navigate"), ("accept", "text/html")];
    // nginx: only 401/403 are usable, so 401 and the login URL (with the way back) in a header.
    let r = nginx(
        &gw,
        "GET",
        "https://app.example.com/docs/a?page=2",
        &navigate,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["x-portcullis-login"],
        "https://app.example.com/auth/login?return_to=/docs/a%3Fpage%3D2"
    );
    // Traefik/Caddy/Envoy pass the answer on: the redirect itself, 302 for GET …
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/a", &navigate).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.headers["location"],
        "https://app.example.com/auth/login?return_to=/docs/a"
    );
    // … and 303 for a form post, so the browser comes back with a GET.
    let r = forwarded(&gw, "POST", "app.example.com", "/docs/a", &navigate).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = envoy(&gw, Method::GET, "app.example.com", "/docs/a", &navigate).await;
    assert_eq!(r.status, StatusCode::FOUND);
    // A browser that is signed in but lacks the permission is not sent to log in again.
    let auth = bearer(&gw.token(json!({})));
    let r = forwarded(
        &gw,
        "GET",
        "app.example.com",
        "/admin",
        &[navigate[0], ("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forward_auth_returns_to_the_absolute_url_when_the_login_page_is_on_another_host() {
    let gw = Setup {
        routes: ROUTES.into(),
        extra: r#"
trusted_proxies: [127.0.0.1]
forward_auth:
  - { contract: forwarded, login_url: "https://auth.example.com/auth/login" }
"#
        .into(),
        ..Setup::default()
    }
    .start()
    .await;
    let r = forwarded(
        &gw,
        "GET",
        "wiki.example.com:8443",
        "/docs/a?x=1",
        &[("sec-fetch-mode", "navigate")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.headers["location"],
        "https://auth.example.com/auth/login?return_to=https%3A//wiki.example.com%3A8443/docs/a%3Fx%3D1"
    );
}

#[tokio::test]
async fn forward_auth_refuses_every_peer_it_does_not_trust_before_reading_a_header() {
    // The endpoint trusts only 192.0.2.1; the test connects from 127.0.0.1.
    let gw = Setup {
        routes: ROUTES.into(),
        extra: r#"
trusted_proxies: [127.0.0.1]
forward_auth:
  - { contract: nginx, trusted_proxies: [192.0.2.1] }
  - { contract: forwarded, trusted_proxies: ["10.0.0.0/8"] }
"#
        .into(),
        ..Setup::default()
    }
    .start()
    .await;
    let auth = bearer(&gw.token(json!({})));
    let headers = [("authorization", auth.as_str())];
    let r = nginx(&gw, "GET", "https://app.example.com/public/x", &headers).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"], "forbidden");
    assert!(!r.headers.contains_key("x-auth-subject"));
    let r = forwarded(&gw, "GET", "app.example.com", "/public/x", &headers).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[test]
fn an_endpoint_inheriting_the_forwarding_peers_of_a_gateway_that_also_proxies_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let warnings = |extra: &str| {
        let yaml = Setup {
            routes: ROUTES.into(),
            extra: extra.into(),
            ..Setup::default()
        }
        .yaml(dir.path(), "http://127.0.0.1:9");
        portcullis::config::Config::from_yaml(&yaml, dir.path())
            .unwrap()
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    // ROUTES has a proxied route (`/proxied`): the top-level list may hold a load balancer.
    let inherited =
        warnings("trusted_proxies: [127.0.0.1]\nforward_auth:\n  - { contract: nginx }\n");
    assert_eq!(inherited.len(), 1, "{inherited:?}");
    assert!(
        inherited[0].starts_with("forward_auth[0].trusted_proxies: not set"),
        "{inherited:?}"
    );
    let own = warnings(
        "trusted_proxies: [127.0.0.1]\nforward_auth:\n  - { contract: nginx, trusted_proxies: [127.0.0.1] }\n",
    );
    assert!(own.is_empty(), "{own:?}");
}

#[test]
fn forward_auth_trusts_no_one_by_default_a_config_without_trusted_peers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = Setup {
        routes: ROUTES.into(),
        extra: "forward_auth:\n  - { contract: nginx }\n".into(),
        ..Setup::default()
    }
    .yaml(dir.path(), "http://127.0.0.1:9");
    let err = portcullis::config::Config::from_yaml(&yaml, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("forward_auth[0].trusted_proxies") && err.contains("trusts no one"),
        "{err}"
    );
}

#[tokio::test]
async fn forward_auth_decides_on_the_normalized_path_and_refuses_what_reads_two_ways() {
    let gw = gateway("").await;
    let auth = bearer(&gw.token(json!({})));
    let reader = [("authorization", auth.as_str())];
    // Dot segments and case are resolved as for a proxied request: a reader reaching for the
    // admin route through /docs/.. is deciding about /admin, and refused.
    for url in [
        "https://app.example.com/docs/../admin",
        "https://app.example.com/docs/%2e%2e/admin",
        "https://app.example.com//admin",
        "https://app.example.com/ADMIN",
        "https://app.example.com/public/../admin",
    ] {
        let r = nginx(&gw, "GET", url, &reader).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}");
    }
    // Encoded separators, bad encodings, fragments, userinfo, relative or non-HTTP URLs: refused
    // (nginx gets a 403 for what it cannot act on otherwise), never allowed.
    for url in [
        "https://app.example.com/public%2F..%2Fadmin",
        "https://app.example.com/public/%zz",
        "https://app.example.com/public#x",
        "https://user@app.example.com/public",
        "/public",
        "ftp://app.example.com/public",
        "https://app.example.com",
    ] {
        let r = nginx(&gw, "GET", url, &reader).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}");
        assert!(!r.headers.contains_key("x-auth-subject"), "{url}");
    }
    for uri in [
        "/public%2F..%2Fadmin",
        "/public#x",
        "public",
        "https://x/public",
    ] {
        let r = forwarded(&gw, "GET", "app.example.com", uri, &reader).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
    }
    // A header the contract needs, sent twice, is refused rather than one of them believed.
    let r = gw
        .send(
            Request::get(gw.url("/_portcullis/forward"))
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-host", "app.example.com")
                .header("x-forwarded-uri", "/public/x")
                .header("x-forwarded-uri", "/admin")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Lower-case methods are not methods.
    let r = nginx(&gw, "get", "https://app.example.com/public/x", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn forward_auth_ignores_the_query_string_and_matches_the_host_and_method() {
    let gw = gateway("").await;
    let auth = bearer(&gw.token(json!({})));
    let reader = [("authorization", auth.as_str())];
    // The query cannot turn a forbidden request into an allowed one, nor the reverse.
    for url in [
        "https://app.example.com/admin?x=/public",
        "https://app.example.com/admin?/public",
        "https://app.example.com/admin?path=%2Fpublic",
    ] {
        assert_eq!(
            nginx(&gw, "GET", url, &reader).await.status,
            StatusCode::FORBIDDEN,
            "{url}"
        );
    }
    assert_eq!(
        nginx(
            &gw,
            "GET",
            "https://app.example.com/docs/1?admin=1",
            &reader
        )
        .await
        .status,
        StatusCode::OK
    );
    // Host-bound route: /api exists only on api.example.com.
    assert_eq!(
        forwarded(&gw, "GET", "api.example.com", "/api/x", &reader)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        forwarded(&gw, "GET", "app.example.com", "/api/x", &reader)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Unmatched routes are denied.
    assert_eq!(
        forwarded(&gw, "GET", "app.example.com", "/nowhere", &reader)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // The sub-request's own method and host are not the original's: an nginx sub-request is a
    // GET to the gateway, and the decision is about the POST it describes.
    assert_eq!(
        nginx(&gw, "POST", "https://app.example.com/docs/1", &reader)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn forward_auth_refuses_a_revoked_session_and_a_denylisted_token_on_the_next_request() {
    let gw = gateway("").await;
    let token = gw.token(json!({}));
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];
    let ask = || nginx(&gw, "GET", "https://app.example.com/docs/1", &headers);
    assert_eq!(ask().await.status, StatusCode::OK);
    assert!(
        gw.store()
            .revoke_session("alice", "sid-alice")
            .await
            .unwrap()
    );
    assert_eq!(ask().await.status, StatusCode::UNAUTHORIZED);

    gw.create_session("sid-alice-2", "alice").await;
    let token = gw.token(json!({ "sid": "sid-alice-2", "jti": "jti-2" }));
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/1", &headers).await;
    assert_eq!(r.status, StatusCode::OK);
    let now = gw.now();
    gw.store()
        .deny_jti(ISSUER, "jti-2", now + 900, now)
        .await
        .unwrap();
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/1", &headers).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forward_auth_never_answers_with_identity_headers_the_client_sent() {
    let gw = gateway("").await;
    let spoofed = [
        ("x-auth-subject", "mallory"),
        ("x-auth-permissions", "admin"),
        ("x-auth-session", "sid-mallory"),
    ];
    // A public route: allowed, and the answer names nobody (the front proxy then clears the
    // client's copies when it copies ours).
    let r = nginx(&gw, "GET", "https://app.example.com/public/x", &spoofed).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key("x-auth-subject"));
    // A protected route: the identity is the token's.
    let auth = bearer(&gw.token(json!({})));
    let mut with_token = spoofed.to_vec();
    with_token.push(("authorization", auth.as_str()));
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/1", &with_token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-auth-subject"], "alice");
    assert_eq!(r.headers["x-auth-permissions"], "docs:read");
    // Identity headers alone are no credential.
    let r = forwarded(&gw, "GET", "app.example.com", "/admin", &spoofed).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn routes_without_an_upstream_are_decided_but_never_proxied() {
    let gw = gateway("").await;
    // /public has no upstream: a proxied request to it is 404, the decision about it is 200.
    assert_eq!(gw.get("/public/x").await.status, StatusCode::NOT_FOUND);
    assert_eq!(gw.get("/proxied/x").await.status, StatusCode::OK);
    assert_eq!(
        forwarded(&gw, "GET", "app.example.com", "/public/x", &[])
            .await
            .status,
        StatusCode::OK
    );
    // The endpoints are matched on the path as sent: a dot segment does not reach them.
    let r = gw
        .send(
            Request::get(gw.url("/_portcullis/x/../nginx"))
                .header("x-original-method", "GET")
                .header("x-original-url", "https://app.example.com/public/x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forward_auth_decisions_are_counted_by_endpoint_and_result_and_audited() {
    let gw = gateway("").await;
    let auth = bearer(&gw.token(json!({})));
    let reader = [("authorization", auth.as_str())];
    nginx(&gw, "GET", "https://app.example.com/docs/1", &reader).await;
    nginx(&gw, "GET", "https://app.example.com/docs/1", &reader).await;
    nginx(&gw, "GET", "https://app.example.com/docs/1", &[]).await;
    forwarded(&gw, "GET", "app.example.com", "/admin", &reader).await;
    forwarded(&gw, "GET", "app.example.com", "/x#y", &reader).await;

    let metrics = gw.running.gateway().metrics().render(&Default::default());
    let line = |endpoint: &str, result: &str| {
        let prefix = format!(
            "portcullis_forward_auth_decisions_total{{endpoint=\"{endpoint}\",result=\"{result}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .to_owned()
    };
    assert_eq!(line("/_portcullis/nginx", "allowed"), "2");
    assert_eq!(line("/_portcullis/nginx", "unauthorized"), "1");
    assert_eq!(line("/_portcullis/forward", "forbidden"), "1");
    assert_eq!(line("/_portcullis/forward", "invalid"), "1");
    assert_eq!(line("/_portcullis/envoy", "allowed"), "0");
    assert!(
        metrics.contains("portcullis_requests_total{route=\"(forward-auth)\",status=\"200\"} 2")
    );

    // The refusals are audited like proxied ones, naming the original route, path and method
    // and the endpoint asked.
    let events = audit_events(gw.running.gateway(), &gw.dir.path().join("audit.jsonl")).await;
    let audit = format!("{events:#?}");
    let forbidden = events
        .iter()
        .find(|e| e["event"] == "access.forbidden")
        .unwrap_or_else(|| panic!("no access.forbidden in {audit}"));
    assert_eq!(forbidden["route.id"], "admin");
    assert_eq!(forbidden["client.ip"], "198.51.100.7");
    assert_eq!(forbidden["path"], "/admin");
    assert_eq!(forbidden["method"], "GET");
    assert_eq!(forbidden["subject"], "alice");
    assert_eq!(forbidden["detail"], "/_portcullis/forward");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "access.unauthorized" && e["detail"] == "/_portcullis/nginx"),
        "{audit}"
    );
}

#[tokio::test]
async fn an_envoy_check_over_http2_reads_the_host_from_its_authority() {
    // Envoy talks to its authorization service over HTTP/2 as often as not; there the host is
    // `:authority`, not a `Host` header.
    let gw = gateway("").await;
    let auth = bearer(&gw.token(json!({})));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut ask = |path: &str, authority: &str, token: Option<&str>| {
        let mut r = Request::get(format!("http://{authority}/_portcullis/envoy{path}"));
        if let Some(t) = token {
            r = r.header("authorization", t);
        }
        sender.send_request(r.body(Full::new(Bytes::new())).unwrap())
    };
    let r = ask("/api/x", "api.example.com", Some(&auth)).await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-subject"], "alice");
    // The host-bound route does not exist on another host.
    let r = ask("/api/x", "app.example.com", Some(&auth)).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = ask("/api/x", "api.example.com", None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_websocket_handshake_behind_the_front_proxy_is_decided_like_any_request() {
    // Traefik and Caddy copy the client's headers, `Upgrade` included, into the sub-request:
    // the gateway decides and answers 200 (never 101), so the front proxy does the upgrade.
    let gw = gateway("").await;
    let auth = bearer(&gw.token(json!({})));
    let handshake = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let mut with_token = handshake.to_vec();
    with_token.push(("authorization", auth.as_str()));
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/live", &with_token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-auth-subject"], "alice");
    assert!(!r.headers.contains_key("upgrade"));
    let r = forwarded(&gw, "GET", "app.example.com", "/docs/live", &handshake).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn a_decision_only_route_requested_directly_is_404_before_any_credential_is_read() {
    let gw = gateway("").await;
    // Without a token, with a forged one, with a valid one lacking the permission: 404, as a
    // path no route matches — never a 401 or 403 that would say the route exists.
    assert_eq!(gw.get("/admin/x").await.status, StatusCode::NOT_FOUND);
    let forged = format!("{}x", gw.token(json!({})));
    assert_eq!(
        gw.get_bearer("/admin/x", &forged).await.status,
        StatusCode::NOT_FOUND
    );
    let valid = gw.token(json!({}));
    assert_eq!(
        gw.get_bearer("/docs/x", &valid).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(gw.upstream.count(), 0);
}
