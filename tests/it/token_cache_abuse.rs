//! Issue 6 item 4, black-box: the cold path and abuse of the verified-token cache, read from the
//! gateway's own `/metrics` (admin listener) and the recording echo upstream.
//!
//! - A flood of distinct forged and expired tokens is refused, reaches no upstream, leaves the
//!   token cache as it was (so a valid token stays a hit), and costs at most one signature check
//!   per request — none for a token refused before its signature is looked at.
//! - Many concurrent requests carrying one token never seen before cost one signature check.
//!
//! Each test starts its own gateway, whose metrics registry is its own: a counter's growth is
//! that test's requests and nothing else, so the assertions are exact rather than "at least",
//! even with the other suites running on parallel threads of the same process.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use prometheus_parse::{Scrape, Value as Metric};
use serde_json::json;
use tokio::net::TcpStream;

/// The authenticated route.
const PATH: &str = "/api/x";

const SIGNATURE_CHECKS: &str = "portcullis_token_signature_checks_total";
const HITS: &str = "portcullis_token_cache_hits_total";
const MISSES: &str = "portcullis_token_cache_misses_total";
const ENTRIES: &str = "portcullis_token_cache_entries";

/// A gateway with an admin listener (for `/metrics`) and a token cache of 64 entries: small
/// enough that the flood below would fill it many times over if failures were cached.
async fn gateway() -> TestGateway {
    Setup {
        extra: "admin: { bind: 127.0.0.1:0 }\ntokens: { cache_capacity: 64 }\n".into(),
        ..Setup::default()
    }
    .start()
    .await
}

/// The four token-cache figures, read from `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    signature_checks: f64,
    hits: f64,
    misses: f64,
    entries: f64,
}

async fn figures(gw: &TestGateway) -> Figures {
    let admin = gw.running.admin_addr().expect("an admin listener");
    let r = send(
        Request::get(format!("http://{admin}/metrics"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let scrape = Scrape::parse(r.text().lines().map(|l| Ok(l.to_owned()))).expect("Prometheus");
    let value = |name: &str| {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .unwrap_or_else(|| panic!("{name} is missing from /metrics"));
        match sample.value {
            Metric::Counter(v) | Metric::Gauge(v) => v,
            ref other => panic!("{name} is not a counter or gauge: {other:?}"),
        }
    };
    Figures {
        signature_checks: value(SIGNATURE_CHECKS),
        hits: value(HITS),
        misses: value(MISSES),
        entries: value(ENTRIES),
    }
}

/// `GET PATH` with each token as a bearer, 16 at a time over one client's connection pool;
/// returns the statuses in no particular order.
async fn flood(gw: &TestGateway, tokens: &[String]) -> Vec<StatusCode> {
    let client = client();
    futures_util::stream::iter(tokens)
        .map(|token| {
            let request = Request::get(gw.url(PATH))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let client = client.clone();
            async move {
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.request(request))
                        .await
                        .expect("request timed out")
                        .expect("request failed");
                let status = response.status();
                let _ = response.into_body().collect().await;
                status
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_and_expired_tokens_is_refused_and_leaves_the_valid_token_a_cache_hit() {
    let gw = gateway().await;
    let valid = gw.token(json!({}));
    assert_eq!(gw.get_bearer(PATH, &valid).await.status, StatusCode::OK);
    let served = gw.upstream.count();
    let before = figures(&gw).await;
    assert_eq!(before.entries, 1.0, "{before:?}");

    let n = now();
    let header = b64(gw.key().header().to_string());
    // An EdDSA key of the attacker's, announced under the gateway's `kid`.
    let attacker = TestKey::generate(Algorithm::EdDSA, &gw.key().kid);
    let stolen_signature = valid.rsplit('.').next().unwrap().to_owned();
    let claims = |i: usize| claims(json!({ "jti": format!("flood-{i}") }));

    // Reach the signature check, and fail it or the expiry after it: one check each.
    let mut checked: Vec<String> = Vec::new();
    // A real signature, of the valid token, under other claims.
    checked.extend((0..1_000).map(|i| {
        let payload = b64(claims(i).to_string());
        format!("{header}.{payload}.{stolen_signature}")
    }));
    // Signed by another key.
    checked.extend((1_000..1_500).map(|i| attacker.token(json!({ "jti": format!("flood-{i}") }))));
    // Validly signed, expired.
    checked.extend((1_500..2_000).map(|i| {
        gw.token(json!({ "jti": format!("flood-{i}"), "iat": n - 1200, "exp": n - 600 }))
    }));
    // Refused before any signature check: `alg: none` and an unknown `kid`.
    let mut unchecked: Vec<String> = Vec::new();
    let none = b64(json!({ "alg": "none", "typ": "at+jwt", "kid": gw.key().kid }).to_string());
    unchecked.extend((2_000..2_250).map(|i| {
        let payload = b64(claims(i).to_string());
        format!("{none}.{payload}.{stolen_signature}")
    }));
    let stranger = TestKey::generate(Algorithm::EdDSA, "k-unknown");
    unchecked
        .extend((2_250..2_500).map(|i| stranger.token(json!({ "jti": format!("flood-{i}") }))));

    let statuses = flood(&gw, &[checked.as_slice(), unchecked.as_slice()].concat()).await;
    assert_eq!(statuses.len(), 2_500);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "not all 401: {:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::UNAUTHORIZED)
            .count()
    );
    assert_eq!(
        gw.upstream.count(),
        served,
        "a forged token reached the upstream"
    );

    let after = figures(&gw).await;
    assert_eq!(
        after.entries, before.entries,
        "the flood changed the token cache"
    );
    let checks = after.signature_checks - before.signature_checks;
    assert!(checks <= statuses.len() as f64);
    assert_eq!(
        checks,
        checked.len() as f64,
        "one check per token that reached it"
    );
    assert_eq!(after.misses - before.misses, statuses.len() as f64);
    assert_eq!(after.hits, before.hits);

    // The valid token was not evicted: a hit, no verification.
    assert_eq!(gw.get_bearer(PATH, &valid).await.status, StatusCode::OK);
    let last = figures(&gw).await;
    assert_eq!(last.hits - after.hits, 1.0);
    assert_eq!(last.misses - after.misses, 0.0);
    assert_eq!(last.signature_checks - after.signature_checks, 0.0);
    assert_eq!(gw.upstream.count(), served + 1);
}

/// An HTTP/1.1 connection to the gateway, opened before the requests that use it.
async fn connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_requests_with_a_never_seen_token_cost_one_signature_check() {
    const REQUESTS: usize = 32;
    // One round may not overlap on 2 cores; over several, unshared checks would show.
    const ROUNDS: usize = 20;
    let gw = gateway().await;
    let mut senders = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        senders.push(connection(gw.addr).await);
    }
    let before = figures(&gw).await;

    for round in 0..ROUNDS {
        let token = gw.token(json!({ "jti": format!("first-sight-{round}") }));
        let requests = senders.iter_mut().map(|sender| {
            let request = Request::get(PATH)
                .header("host", "localhost")
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            async move {
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                let status = response.status();
                let _ = response.into_body().collect().await;
                status
            }
        });
        let statuses = tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(requests),
        )
        .await
        .expect("requests timed out");
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    }

    let after = figures(&gw).await;
    assert_eq!(
        after.signature_checks - before.signature_checks,
        ROUNDS as f64,
        "one signature check per new token"
    );
    assert_eq!(
        (after.hits - before.hits) + (after.misses - before.misses),
        (ROUNDS * REQUESTS) as f64
    );
    assert_eq!(after.entries - before.entries, ROUNDS as f64);
    assert_eq!(gw.upstream.count(), ROUNDS * REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_forged_token_sent_ten_thousand_times_costs_one_signature_check() {
    const REQUESTS: usize = 10_000;
    let gw = gateway().await;
    let valid = gw.token(json!({}));
    assert_eq!(gw.get_bearer(PATH, &valid).await.status, StatusCode::OK);
    let served = gw.upstream.count();
    // The valid token's real signature over other claims: it reaches the signature check.
    let header = b64(gw.key().header().to_string());
    let payload = b64(claims(json!({ "jti": "forged-once" })).to_string());
    let signature = valid.rsplit('.').next().unwrap();
    let forged = format!("{header}.{payload}.{signature}");
    let before = figures(&gw).await;

    let statuses = flood(&gw, &vec![forged; REQUESTS]).await;
    assert_eq!(statuses.len(), REQUESTS);
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    assert_eq!(
        gw.upstream.count(),
        served,
        "a forged token reached the upstream"
    );

    let after = figures(&gw).await;
    let checks = after.signature_checks - before.signature_checks;
    eprintln!("{REQUESTS} requests with one forged token: {checks} signature checks");
    assert_eq!(
        checks, 1.0,
        "one check for the forged token, however often it comes"
    );
    // The remembered failure sits beside the verified tokens, never among them.
    assert_eq!(after.entries, before.entries);
    assert_eq!(after.hits, before.hits);

    // The valid token is still a hit.
    assert_eq!(gw.get_bearer(PATH, &valid).await.status, StatusCode::OK);
    let last = figures(&gw).await;
    assert_eq!(last.hits - after.hits, 1.0);
    assert_eq!(last.signature_checks, after.signature_checks);
}
