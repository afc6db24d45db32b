//! The browser login flow end to end through the gateway, with a cookie-keeping client.

mod common;

use common::auth::{ALICE_PASSWORD, AuthSetup};
use http::StatusCode;

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
        ..AuthSetup::default()
    }
    .start()
    .await;
    let mut browser = gw.browser();
    let r = browser.login("alice", ALICE_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;

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
