//! The identity decision as its callers share it: one revoke rule behind logout-all and the
//! admin API, one bearer parser for the proxy and the admin API. Gateways here run on a manual
//! clock, so "the same second" and "the second before" are exact, not likely.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use portcullis::clock::Clock;
use serde_json::{Value, json};

use common::auth::{ALICE_PASSWORD, AuthSetup, api_login, post_json};
use common::{TestGateway, TestKey, TestResponse, send};

const ADMIN_SECRET: &str = "identify-test-admin-secret-0c9d8e7f6a5b4c3d2e1f0a9b";

/// An auth-enabled gateway on a manual clock, with an admin listener and a second, external
/// issuer (no sessions) whose tokens name the gateway's users: the harness's [`TestGateway`]
/// and what this suite adds to it.
struct Gateway {
    gw: TestGateway,
    admin: SocketAddr,
    external: TestKey,
    /// The admin secret and the external issuer's key, written before the gateway's own dir
    /// exists.
    _files: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let files = tempfile::tempdir().unwrap();
        let token_file = files.path().join("admin.token");
        std::fs::write(&token_file, ADMIN_SECRET).unwrap();
        let external = TestKey::generate(Algorithm::EdDSA, "idp-1");
        let extra = format!(
            r#"
issuers:
  - issuer: {iss}
    audiences: [{aud}]
    require_session: false
    max_lifetime: 2h
    keys:
      - {key}
admin: {{ bind: 127.0.0.1:0, token_file: "{token}" }}
"#,
            iss = common::ISSUER,
            aud = common::AUDIENCE,
            key = external.yaml_entry(files.path()),
            token = token_file.display(),
        );
        let gw = AuthSetup {
            extra,
            clock: Clock::manual(),
            ..AuthSetup::default()
        }
        .start()
        .await;
        Self {
            admin: gw.running.admin_addr().unwrap(),
            gw,
            external,
            _files: files,
        }
    }

    fn clock(&self) -> &Clock {
        self.gw.clock()
    }

    fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    /// A sessionless token of the external issuer for `sub`, issued at `iat`.
    fn external_token(&self, sub: &str, iat: i64) -> String {
        self.external.token(json!({
            "sub": sub,
            "sid": null,
            "iat": iat,
            "exp": iat + 3600,
        }))
    }

    async fn app(&self, token: &str) -> StatusCode {
        send(
            Request::get(self.url("/app"))
                .header("authorization", format!("Bearer {token}"))
                .header("accept", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .status
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        authorization: &str,
        body: Option<Value>,
    ) -> TestResponse {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        send(
            Request::builder()
                .method(method)
                .uri(format!("http://{}{path}", self.admin))
                .header("authorization", authorization)
                .header("content-type", "application/json")
                .body(Full::new(body))
                .unwrap(),
        )
        .await
    }

    /// The audit events named `event`, of which there must be at least `count`: read once the
    /// file holds every line the gateway has emitted.
    async fn audited(&self, event: &str, count: usize) -> Vec<Value> {
        let found: Vec<Value> = self
            .gw
            .audit_events()
            .await
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect();
        assert!(found.len() >= count, "{count} {event} expected: {found:?}");
        found
    }
}

/// What a user revocation made at `now` must do, whichever endpoint made it: every token of
/// the user issued before this second is refused (the external one, which has no session, by
/// the user mark), one issued in this second is not, every session ended (`ended`, issued this
/// very second, too), and a login right after works.
async fn assert_revoked_at(gw: &Gateway, now: i64, before: &str, same_second: &str, ended: &str) {
    assert_eq!(
        gw.app(before).await,
        StatusCode::UNAUTHORIZED,
        "issued the second before"
    );
    assert_eq!(
        gw.app(same_second).await,
        StatusCode::OK,
        "issued this very second"
    );
    assert_eq!(
        gw.app(ended).await,
        StatusCode::UNAUTHORIZED,
        "a session of the user"
    );
    let (fresh, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    assert_eq!(
        gw.app(&fresh).await,
        StatusCode::OK,
        "a login right after, at {now}"
    );
}

#[tokio::test]
async fn logout_all_and_the_admin_api_revoke_a_user_by_one_rule_at_one_instant() {
    let gw = Gateway::start().await;

    // Logout-all, at t.
    let t = gw.clock().now();
    let (access, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    let (before, same) = (
        gw.external_token("alice", t - 1),
        gw.external_token("alice", t),
    );
    for token in [&access, &before, &same] {
        assert_eq!(gw.app(token).await, StatusCode::OK);
    }
    let r = post_json(
        &gw.url("/auth/logout-all"),
        &json!({}),
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_revoked_at(&gw, t, &before, &same, &access).await;

    // The admin API, a minute later: the same rule.
    gw.clock().advance(Duration::from_secs(60));
    let t = gw.clock().now();
    let (access, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    let (before, same) = (
        gw.external_token("alice", t - 1),
        gw.external_token("alice", t),
    );
    for token in [&access, &before, &same] {
        assert_eq!(gw.app(token).await, StatusCode::OK);
    }
    let r = gw
        .admin(
            Method::POST,
            "/admin/users/revoke",
            &format!("Bearer {ADMIN_SECRET}"),
            Some(json!({"user": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_revoked_at(&gw, t, &before, &same, &access).await;

    // Each endpoint audited its revocation once, naming the user.
    for (event, reason) in [
        ("logout_all", "logout_all.ok"),
        ("admin.user_revoked", "admin.ok"),
    ] {
        let events = gw.audited(event, 1).await;
        assert_eq!(events.len(), 1, "{event}: {events:#?}");
        assert_eq!(events[0]["subject"], "alice", "{event}");
        assert_eq!(events[0]["reason_id"], reason, "{event}");
    }
}

#[tokio::test]
async fn the_admin_api_reads_its_bearer_secret_as_the_proxy_reads_a_bearer_token() {
    let gw = Gateway::start().await;
    // The scheme in any case (RFC 7235 §2.1), and surrounding spaces, as for the proxy.
    for authorization in [
        format!("Bearer {ADMIN_SECRET}"),
        format!("bearer {ADMIN_SECRET}"),
        format!("BEARER   {ADMIN_SECRET} "),
    ] {
        let r = gw
            .admin(
                Method::GET,
                "/admin/sessions?user=alice",
                &authorization,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{authorization}: {}", r.text());
    }
    for refused in [
        format!("Basic {ADMIN_SECRET}"),
        format!("Bearer{ADMIN_SECRET}"),
        "Bearer wrong-secret".to_owned(),
    ] {
        let r = gw
            .admin(Method::GET, "/admin/sessions?user=alice", &refused, None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{refused}");
    }
    // The proxy takes the same spellings of a bearer token.
    let (access, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    let r = send(
        Request::get(gw.url("/app"))
            .header("authorization", format!("bearer   {access}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}
