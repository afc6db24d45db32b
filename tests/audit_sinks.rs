//! Audit sinks and opt-in events: a route with `audit: true` records every request it lets
//! through, and events reach a Redis stream as well as the file (SECURITY.md 33).

mod common;

use std::time::Duration;

use common::{RedisServer, Setup, eventually};
use http::StatusCode;
use serde_json::{Value, json};

const ROUTES: &str = r#"
  - { id: audited, path: /audited, upstream: echo, policy: authenticated, audit: true }
  - { id: quiet, path: /quiet, upstream: echo, policy: authenticated }
"#;

fn events(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn sec33_a_route_that_opts_in_audits_every_granted_request_to_the_file_and_a_redis_stream() {
    let redis = RedisServer::start();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_file = audit_dir.path().join("audit.jsonl");
    let gw = Setup {
        routes: ROUTES.into(),
        extra: format!(
            "audit: {{ file: \"{}\", redis_stream: {{ url: \"{}\", key: \"audit:test\", maxlen: 1000 }} }}",
            audit_file.display(),
            redis.url()
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let token = gw.token(json!({}));

    assert_eq!(
        gw.get_bearer("/audited/a", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get_bearer("/quiet/b", &token).await.status,
        StatusCode::OK
    );
    assert_eq!(gw.get("/audited/c").await.status, StatusCode::UNAUTHORIZED);

    let found = eventually(Duration::from_secs(5), || {
        let path = audit_file.clone();
        async move { events(&path).len() >= 2 }
    })
    .await;
    assert!(found.is_some(), "events: {:?}", events(&audit_file));
    let all = events(&audit_file);
    let granted: Vec<&Value> = all
        .iter()
        .filter(|e| e["event"] == "access.granted")
        .collect();
    assert_eq!(granted.len(), 1, "{all:#?}");
    let e = granted[0];
    assert_eq!(e["reason_id"], "authz.granted");
    assert_eq!(e["subject"], "alice");
    assert_eq!(e["route.id"], "audited");
    assert_eq!(e["path"], "/audited/a");
    assert_eq!(e["method"], "GET");
    assert!(e["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(
        all.iter()
            .filter(|e| e["event"] == "access.unauthorized")
            .count(),
        1
    );

    // The same events, in the Redis stream.
    let expected = all.len();
    let streamed = eventually(Duration::from_secs(5), || {
        let out = redis.cli(&["XLEN", "audit:test"]);
        async move { out.trim().parse::<usize>().unwrap_or(0) >= expected }
    })
    .await;
    assert!(
        streamed.is_some(),
        "XLEN {}",
        redis.cli(&["XLEN", "audit:test"])
    );
    let range = redis.cli(&["XRANGE", "audit:test", "-", "+"]);
    assert!(range.contains("\"event\":\"access.granted\""), "{range}");
    assert!(
        !range.contains("eyJ"),
        "a token reached the stream: {range}"
    );
}

#[tokio::test]
async fn audit_events_wait_for_a_redis_stream_that_is_down_and_arrive_when_it_is_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let gw = Setup {
        routes: ROUTES.into(),
        extra: format!("audit: {{ redis_stream: {{ url: \"{url}\", key: \"audit:late\" }} }}"),
        ..Setup::default()
    }
    .start()
    .await;
    let token = gw.token(json!({}));
    assert_eq!(
        gw.get_bearer("/audited/x", &token).await.status,
        StatusCode::OK
    );
    redis.restart();
    let arrived = eventually(Duration::from_secs(15), || {
        let out = redis.cli(&["XLEN", "audit:late"]);
        async move { out.trim() == "1" }
    })
    .await;
    assert!(
        arrived.is_some(),
        "XLEN {}",
        redis.cli(&["XLEN", "audit:late"])
    );
}
