//! Tests that measure a bound in real time: how long a partitioned instance may keep serving a
//! revoked token (`store.max_staleness`, docs/security.md 37). They run as a binary of their
//! own, so while their clock runs no other suite's CPU work (argon2 logins, signature vectors,
//! browser) shares the machine's cores with the gateway under test: a bound measured from
//! outside includes every scheduling delay, and on a loaded two-core machine a starved
//! subscriber reads its last heartbeat late. Everything else is in `tests/it/`.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use portcullis::store::SessionStore;
use serde_json::json;

/// The authenticated route the harness's default config protects.
const PATH: &str = "/api/check";

#[tokio::test]
async fn sec37_a_token_revoked_through_a_is_refused_by_b_whose_redis_link_is_frozen_within_max_staleness()
 {
    let server = RedisServer::start();
    let proxy = FreezingProxy::start(server.port).await;
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let b_key = same_key(&key);
    let staleness = format!(", max_staleness: {}ms", MAX_STALENESS.as_millis());
    let a = redis_gateway_with(&server.url(), "frozen", key, &staleness, false).await;
    // B reaches Redis only through the proxy: data connection and subscription alike.
    let b = redis_gateway_with(&proxy.url(), "frozen", b_key, &staleness, false).await;
    a.create_session("s-frozen", "alice").await;
    a.create_session("s-after", "alice").await;
    let token = a.token(json!({ "sid": "s-frozen" }));
    assert_eq!(b.get_bearer(PATH, &token).await.status, StatusCode::OK);
    assert_eq!(
        b.get_bearer(PATH, &token).await.status,
        StatusCode::OK,
        "cached on B"
    );

    proxy.freeze();
    let revoked_at = Instant::now();
    assert!(a.store().revoke_session("alice", "s-frozen").await.unwrap());
    // A knows at once; B hears nothing, and must stop trusting its cache within the bound.
    assert_eq!(
        a.get_bearer(PATH, &token).await.status,
        StatusCode::UNAUTHORIZED
    );
    let mut served_after_bound = 0;
    let refused_after = loop {
        let status = b.get_bearer(PATH, &token).await.status;
        let elapsed = revoked_at.elapsed();
        if status != StatusCode::OK {
            // The store cannot answer through the frozen link: 503, never a guess.
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            break elapsed;
        }
        if elapsed > MAX_STALENESS {
            served_after_bound += 1;
        }
        assert!(
            elapsed < Duration::from_secs(10),
            "B kept serving a revoked token for 10 s through a frozen link"
        );
    };
    eprintln!(
        "frozen link: B refused the revoked token {refused_after:?} after the revocation \
         (max_staleness {MAX_STALENESS:?}, store timeout {STORE_TIMEOUT:?})"
    );
    // The last 200 began within the bound (a request in flight may finish after it).
    assert!(
        served_after_bound <= 1,
        "B answered 200 {served_after_bound} times after max_staleness had passed"
    );
    assert!(
        refused_after < MAX_STALENESS + STORE_TIMEOUT + Duration::from_millis(500),
        "B refused only {refused_after:?} after the revocation"
    );
    let seen = b.upstream.count();
    for _ in 0..3 {
        assert_ne!(b.get_bearer(PATH, &token).await.status, StatusCode::OK);
    }
    assert_eq!(
        b.upstream.count(),
        seen,
        "nothing reached B's upstream while frozen"
    );

    // Thawed: B learns the truth (401 for the revoked session) and serves live ones again.
    proxy.thaw();
    let back = eventually(Duration::from_secs(10), || async {
        b.get_bearer(PATH, &a.token(json!({ "sid": "s-after" })))
            .await
            .status
            == StatusCode::OK
    })
    .await;
    assert!(back.is_some(), "B did not recover after the link thawed");
    assert_eq!(
        b.get_bearer(PATH, &token).await.status,
        StatusCode::UNAUTHORIZED
    );
}
