//! Audit sinks and opt-in events: a route with `audit: true` records every request it lets
//! through, and events reach a Redis stream as well as the file (docs/security.md 33).

use crate::common;

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

/// A gateway whose audit file is `audit.jsonl` in the returned dir, with `audit_extra` in its
/// `audit:` mapping.
async fn audited_gateway(
    audit_extra: &str,
) -> (common::TestGateway, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let gw = Setup {
        routes: ROUTES.into(),
        extra: format!("audit: {{ file: \"{}\"{audit_extra} }}", path.display()),
        ..Setup::default()
    }
    .start()
    .await;
    (gw, dir, path)
}

/// `GET path` with each token as a bearer, 16 at a time; the statuses.
async fn requests(gw: &common::TestGateway, path: &str, tokens: &[String]) -> Vec<StatusCode> {
    use futures_util::StreamExt as _;
    let client = common::client();
    futures_util::stream::iter(tokens)
        .map(|token| {
            let request = http::Request::get(gw.url(path))
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let client = client.clone();
            async move {
                let response = client.request(request).await.expect("request failed");
                response.status()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_forged_requests_from_one_address_write_ten_events_and_one_summary_counting_the_rest()
 {
    let (gw, _dir, path) = audited_gateway("").await;
    let valid = gw.token(json!({}));
    let (head, _) = valid.rsplit_once('.').unwrap();
    // Distinct forgeries: the valid token's claims under 1,000 wrong signatures.
    let forged: Vec<String> = (0..1_000u32)
        .map(|i| format!("{head}.{}", common::b64(format!("not-a-signature-{i:04}"))))
        .collect();
    let statuses = requests(&gw, "/quiet/x", &forged).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    // Another reason from the same address is its own event.
    assert_eq!(gw.get("/quiet/y").await.status, StatusCode::UNAUTHORIZED);
    // Shutdown writes the count of the window still open.
    let common::TestGateway { running, .. } = gw;
    assert!(running.shutdown().await);

    let found = eventually(Duration::from_secs(5), || {
        let path = path.clone();
        async move { events(&path).iter().any(|e| e.get("count").is_some()) }
    })
    .await;
    assert!(found.is_some(), "no summary: {:#?}", events(&path));
    let all = events(&path);
    let forgeries: Vec<&Value> = all
        .iter()
        .filter(|e| e["reason_id"] == "token.bad_signature")
        .collect();
    // The first ten in full (a client's few refusals read one by one), then one count.
    assert_eq!(forgeries.len(), 11, "{forgeries:#?}");
    let (burst, summary) = (&forgeries[..10], forgeries[10]);
    for e in burst {
        assert_eq!(e["event"], "access.unauthorized");
        assert_eq!(e["path"], "/quiet/x");
        assert!(e.get("count").is_none());
    }
    assert_eq!(summary["event"], "access.unauthorized");
    assert_eq!(summary["client.ip"], "127.0.0.1");
    assert_eq!(summary["count"], 990);
    assert_eq!(summary["since"], burst[0]["time"]);
    assert_eq!(
        all.iter()
            .filter(|e| e["reason_id"] == "credential.missing")
            .count(),
        1
    );
    assert_eq!(all.len(), 12, "{all:#?}");
    let bytes = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "1,000 forged requests + 1: {} audit lines, {bytes} bytes",
        all.len()
    );
}

#[tokio::test]
async fn after_the_audit_file_is_renamed_and_reopened_new_events_go_to_a_new_file() {
    let (gw, _dir, path) = audited_gateway(", aggregate_window: 0s").await;
    let rotated = path.with_extension("jsonl.1");
    assert_eq!(
        gw.get("/quiet/before").await.status,
        StatusCode::UNAUTHORIZED
    );
    let written = eventually(Duration::from_secs(5), || {
        let path = path.clone();
        async move { events(&path).len() == 1 }
    })
    .await;
    assert!(written.is_some(), "{:#?}", events(&path));
    std::fs::rename(&path, &rotated).unwrap();
    // What `kill -USR1` does in `portcullis run`.
    gw.running.gateway().audit().reopen();
    assert_eq!(
        gw.get("/quiet/after").await.status,
        StatusCode::UNAUTHORIZED
    );
    let reopened = eventually(Duration::from_secs(5), || {
        let path = path.clone();
        async move { events(&path).len() == 1 }
    })
    .await;
    assert!(reopened.is_some(), "no new file at {}", path.display());
    assert_eq!(events(&path)[0]["path"], "/quiet/after");
    let old = events(&rotated);
    assert_eq!(old.len(), 1, "{old:#?}");
    assert_eq!(old[0]["path"], "/quiet/before");
}
