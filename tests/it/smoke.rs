//! The whole path once: public route, authenticated route, identity headers, refusals.

use crate::common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_verified_identity_headers() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let response = gw.get_bearer("/docs/readme?x=1", &token).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = gw.upstream.last();
    assert_eq!(seen.uri, "/docs/readme?x=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert_eq!(seen.headers["x-auth-session"], "sid-alice");
    assert_eq!(seen.headers["x-auth-permissions"], "docs:read");
    assert!(seen.headers.get("authorization").is_none());
    assert!(response.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn no_token_on_a_protected_route_is_401_and_the_upstream_sees_nothing() {
    let gw = TestGateway::start().await;
    let response = gw.get("/api/x").await;
    assert_eq!(response.status, 401);
    assert_eq!(response.json()["error"], "unauthorized");
    assert_eq!(
        response.headers["www-authenticate"],
        "Bearer realm=\"portcullis\""
    );
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let gw = TestGateway::start().await;
    let response = gw.get("/public/hello").await;
    assert_eq!(response.status, 200);
    assert_eq!(gw.upstream.last().uri, "/public/hello");
}
