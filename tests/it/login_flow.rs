//! The browser login flow end to end through the gateway, with a cookie-keeping client.

use crate::common;

use std::time::Duration;

use common::auth::{ALICE_PASSWORD, AuthSetup};
use http::StatusCode;
use portcullis::clock::Clock;

#[tokio::test]
async fn a_browser_logs_in_reaches_a_protected_page_and_logs_out() {
    let gw = AuthSetup::default().start().await;
    let mut browser = gw.browser();

    let r = browser.navigate("/docs/report").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/auth/login?return_to=/docs/report");

    let login_page = browser.navigate("/auth/login?return_to=/docs/report").await;
    assert_eq!(login_page.status, StatusCode::OK);
    assert!(
        login_page
            .text()
            .contains("<form method=\"post\" action=\"/auth/login\"")
    );
    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let r = browser
        .post_form(
            "/auth/login",
            &[
                ("csrf", &csrf),
                ("username", "Alice"),
                ("password", ALICE_PASSWORD),
                ("return_to", "/docs/report"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers["location"], "/docs/report");

    let r = browser.navigate("/docs/report").await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = gw.upstream.last();
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-permissions"], "docs:read,docs:write");

    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let r = browser.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/auth/login");
    let r = browser.navigate("/docs/report").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_without_the_login_form() {
    let gw = AuthSetup {
        access_ttl: "1s".into(),
        extra: "tokens: { leeway: 0s }".into(),
        clock: Clock::manual(),
        ..AuthSetup::default()
    }
    .start()
    .await;
    let mut browser = gw.browser();
    let r = browser.login("alice", ALICE_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    gw.advance(Duration::from_millis(2100));

    let r = browser.navigate("/app/inbox").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    let page = browser.navigate(&location).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("action=\"/auth/refresh\""), "{html}");
    assert!(!html.contains("name=\"password\""));

    let r = browser.refresh("/app/inbox").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers["location"], "/app/inbox");
    let r = browser.navigate("/app/inbox").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Regression: a sessions page left open past the access token's lifetime answered its Revoke
/// and "Log out everywhere" buttons with a bare 401. The refresh cookie now proves the caller
/// (by rotating it), and the response carries the new token pair.
#[tokio::test]
async fn revoke_and_logout_work_from_a_page_whose_access_token_expired() {
    let gw = AuthSetup {
        access_ttl: "1s".into(),
        extra: "tokens: { leeway: 0s }".into(),
        clock: Clock::manual(),
        ..AuthSetup::default()
    }
    .start()
    .await;
    let mut laptop = gw.browser();
    let mut phone = gw.browser();
    assert_eq!(
        laptop.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        phone.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let phone_at = phone.cookie("__Host-portcullis-at").unwrap();
    let phone_sid = jwt_claim(&phone_at, "sid");
    let old_refresh = laptop.cookie("__Secure-portcullis-rt").unwrap();
    gw.advance(Duration::from_millis(2100));

    let csrf = laptop.cookie("__Host-portcullis-csrf").unwrap();
    let r = laptop
        .post_form(
            "/auth/sessions/revoke",
            &[("csrf", &csrf), ("session", &phone_sid)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers["location"], "/auth/sessions");
    assert_ne!(
        laptop.cookie("__Secure-portcullis-rt").unwrap(),
        old_refresh
    );
    let r = laptop.navigate("/app/x").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the laptop got a fresh access token"
    );
    // The phone's session is gone: its refresh fails and it lands on the login form.
    let r = phone.refresh("/app/x").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login")
    );

    // Log out once the laptop's access token expired too: the session ends server-side.
    let laptop_rt = laptop.cookie("__Secure-portcullis-rt").unwrap();
    gw.advance(Duration::from_millis(2100));
    let csrf = laptop.cookie("__Host-portcullis-csrf").unwrap();
    let r = laptop.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = gw
        .post_json(
            "/auth/refresh",
            &serde_json::json!({ "refresh_token": laptop_rt }),
            &[],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the session outlived logout"
    );
}

/// A knowing backend sees session ids (`X-Auth-Session`): a refresh cookie naming a real
/// session but with a made-up secret must not log that session out.
#[tokio::test]
async fn logout_with_a_forged_refresh_cookie_ends_no_session() {
    let gw = AuthSetup::default().start().await;
    let (access, _refresh, sid) = gw.api_login("alice", ALICE_PASSWORD).await;
    let mut attacker = gw.browser();
    attacker.navigate("/auth/login").await;
    let forged = format!("prt1.{}.{sid}.{}", base64_url("alice"), "A".repeat(43));
    attacker.set_cookie("__Secure-portcullis-rt", &forged, "/auth");
    let csrf = attacker.cookie("__Host-portcullis-csrf").unwrap();
    let r = attacker.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(gw.api_get("/app/x", &access).await.status, StatusCode::OK);
}

fn base64_url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn jwt_claim(token: &str, claim: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    value[claim].as_str().unwrap().to_owned()
}
