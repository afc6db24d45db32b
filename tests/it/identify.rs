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

/// A second external issuer: its `alice` is neither the gateway's nor the first issuer's.
const OTHER_ISSUER: &str = "https://other-idp.test";

/// An auth-enabled gateway on a manual clock, with an admin listener and two external issuers
/// (no sessions), [`common::ISSUER`] and [`OTHER_ISSUER`], each of whose users are its own:
/// the harness's [`TestGateway`] and what this suite adds to it.
struct Gateway {
    gw: TestGateway,
    admin: SocketAddr,
    external: TestKey,
    other: TestKey,
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
        let other = TestKey::generate(Algorithm::EdDSA, "other-1");
        let extra = format!(
            r#"
issuers:
  - issuer: {iss}
    audiences: [{aud}]
    require_session: false
    max_lifetime: 2h
    keys:
      - {key}
  - issuer: {OTHER_ISSUER}
    audiences: [{aud}]
    require_session: false
    max_lifetime: 2h
    keys:
      - {other_key}
admin: {{ bind: 127.0.0.1:0, token_file: "{token}" }}
"#,
            iss = common::ISSUER,
            aud = common::AUDIENCE,
            key = external.yaml_entry(files.path()),
            other_key = other.yaml_entry(files.path()),
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
            other,
            _files: files,
        }
    }

    fn clock(&self) -> &Clock {
        self.gw.clock()
    }

    fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    /// A sessionless token of the external issuer ([`common::ISSUER`]) for `sub`, issued at
    /// `iat`.
    fn external_token(&self, sub: &str, iat: i64) -> String {
        self.external.token(json!({
            "sub": sub,
            "sid": null,
            "iat": iat,
            "exp": iat + 3600,
        }))
    }

    /// A token of [`OTHER_ISSUER`] for `sub`, issued at `iat`.
    fn other_token(&self, sub: &str, iat: i64) -> String {
        self.other.token(json!({
            "iss": OTHER_ISSUER,
            "sub": sub,
            "sid": null,
            "iat": iat,
            "exp": iat + 3600,
        }))
    }

    /// `POST /admin/users/revoke` with `body`.
    async fn revoke_user(&self, body: Value) -> TestResponse {
        self.admin(
            Method::POST,
            "/admin/users/revoke",
            &format!("Bearer {ADMIN_SECRET}"),
            Some(body),
        )
        .await
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
/// the user issued before this second is refused (`before`, sessionless, by the user mark),
/// one issued in this second is not (`same_second`), and every session of theirs is ended
/// (`ended`, issued this very second, too).
async fn assert_revoked_at(gw: &Gateway, before: &str, same_second: &str, ended: &[&str]) {
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
    for token in ended {
        assert_eq!(
            gw.app(token).await,
            StatusCode::UNAUTHORIZED,
            "a session of the user"
        );
    }
}

#[tokio::test]
async fn logout_all_and_the_admin_api_revoke_a_user_by_one_rule_at_one_instant() {
    let gw = Gateway::start().await;

    // Logout-all, at t: the gateway's alice. Her tokens all name sessions, so the instant is
    // shown by a login in the same second working; the external issuer's alice is another
    // user, and her tokens pass.
    let t = gw.clock().now();
    let (access, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    let external = gw.external_token("alice", t - 1);
    for token in [&access, &external] {
        assert_eq!(gw.app(token).await, StatusCode::OK);
    }
    let r = post_json(
        &gw.url("/auth/logout-all"),
        &json!({}),
        &[("authorization", &format!("Bearer {access}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text());
    assert_eq!(gw.app(&access).await, StatusCode::UNAUTHORIZED);
    let (fresh, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    assert_eq!(gw.app(&fresh).await, StatusCode::OK, "a login right after");
    assert_eq!(
        gw.app(&external).await,
        StatusCode::OK,
        "another issuer's alice"
    );

    // The admin API, a minute later, on the external issuer's alice: the same rule, whose
    // instant her sessionless tokens show exactly.
    gw.clock().advance(Duration::from_secs(60));
    let t = gw.clock().now();
    let (before, same) = (
        gw.external_token("alice", t - 1),
        gw.external_token("alice", t),
    );
    for token in [&before, &same] {
        assert_eq!(gw.app(token).await, StatusCode::OK);
    }
    let r = gw
        .revoke_user(json!({"user": "alice", "issuer": common::ISSUER}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_revoked_at(&gw, &before, &same, &[]).await;
    assert_eq!(gw.app(&fresh).await, StatusCode::OK, "the gateway's alice");

    // And on the gateway's alice (no `issuer`): her sessions end, as by logout-all.
    gw.clock().advance(Duration::from_secs(60));
    let r = gw.revoke_user(json!({"user": "alice"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gw.app(&fresh).await, StatusCode::UNAUTHORIZED);
    let (again, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    assert_eq!(gw.app(&again).await, StatusCode::OK, "a login right after");

    // Each endpoint audited its revocations, naming the user as the store knows her.
    let events = gw.audited("logout_all", 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["subject"], "alice");
    assert_eq!(events[0]["reason_id"], "logout_all.ok");
    let events = gw.audited("admin.user_revoked", 2).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["subject"], format!("{}#alice", common::ISSUER));
    assert_eq!(events[1]["subject"], "alice");
    assert!(events.iter().all(|e| e["reason_id"] == "admin.ok"));
}

#[tokio::test]
async fn users_are_revoked_per_issuer_alice_at_two_issuers_is_two_users() {
    let gw = Gateway::start().await;
    let t = gw.clock().now();
    let (own, _, _) = api_login(&gw.url(""), "alice", ALICE_PASSWORD).await;
    let external = gw.external_token("alice", t - 1);
    let other = gw.other_token("alice", t - 1);
    for token in [&own, &external, &other] {
        assert_eq!(gw.app(token).await, StatusCode::OK);
    }

    // The other issuer's alice: only her tokens are refused.
    let r = gw
        .revoke_user(json!({"user": "alice", "issuer": OTHER_ISSUER}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gw.app(&other).await, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.app(&own).await, StatusCode::OK, "the gateway's alice");
    assert_eq!(
        gw.app(&external).await,
        StatusCode::OK,
        "the first issuer's"
    );
    let events = gw.audited("admin.user_revoked", 1).await;
    assert_eq!(events[0]["subject"], format!("{OTHER_ISSUER}#alice"));

    // An issuer no entry names: refused, audited, and nothing revoked.
    let r = gw
        .revoke_user(json!({"user": "alice", "issuer": "https://unknown.test"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "no configured issuer has this `iss`");
    let events = gw.audited("admin.user_revoked", 2).await;
    assert_eq!(events[1]["reason_id"], "admin.invalid");
    for token in [&own, &external] {
        assert_eq!(gw.app(token).await, StatusCode::OK);
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
