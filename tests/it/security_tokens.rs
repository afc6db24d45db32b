//! docs/security.md requirements 1 to 12 (tokens), black-box: a real gateway on 127.0.0.1:0 in front
//! of the recording echo upstream. Every test is named after its requirement line.
//!
//! "Rejected" means: a 401 (400/431 where the request itself is malformed or oversized), the
//! upstream received nothing, and the response echoes no claim, no header value and no part of
//! the token. Every group of negative cases also runs a positive control on the same gateway, so
//! a refusal is known to come from the one thing that was changed.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::config::Config;
use portcullis::store::SessionStore;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any refusal may take. Generous on purpose: machines are noisy, and the point is
/// "answers at once" versus "fetches, waits, or reads a megabyte", not a benchmark.
const FAST: Duration = Duration::from_secs(5);

/// The authenticated route every test uses.
const PATH: &str = "/api/check";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The three segments of a compact token (panics on anything else: only for tokens we made).
fn split3(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
        panic!("not a three-segment token: {token}");
    };
    (h.to_owned(), p.to_owned(), s.to_owned())
}

/// Base64url of a JSON value's text.
fn enc(value: &Value) -> String {
    b64(value.to_string())
}

/// Signs `h.p` with `key` under `alg`, whatever algorithm the key was made for.
fn sign_segments_as(key: &EncodingKey, alg: Algorithm, h: &str, p: &str) -> String {
    let message = format!("{h}.{p}");
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    portcullis::keys::ecdsa::low_s_token(alg, format!("{message}.{sig}"))
}

/// Signs `header.payload` with `key` under `alg`.
fn sign_as(key: &EncodingKey, alg: Algorithm, header: &Value, payload: &Value) -> String {
    sign_segments_as(key, alg, &enc(header), &enc(payload))
}

/// A second handle on the same key (the harness keeps only the first key of a [`Setup`]).
fn twin(key: &TestKey) -> TestKey {
    TestKey {
        kid: key.kid.clone(),
        alg: key.alg,
        encoding: key.encoding.clone(),
        public_pem: key.public_pem.clone(),
        public_der: key.public_der.clone(),
    }
}

/// A gateway whose only key is `key`.
async fn gateway_with(key: TestKey) -> TestGateway {
    Setup {
        keys: vec![key],
        ..Setup::default()
    }
    .start()
    .await
}

fn decoded_json(segment: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if s.len() >= 4 => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// A refusal tells the client nothing about the token: the body is exactly
/// `{"error", "request_id"}`, and neither body nor headers contain a claim value or a piece of
/// the token. Header members (`alg`, `kid`, …) are checked against the body only, since the
/// response's own CSP legitimately says `'none'`.
fn assert_echoes_nothing(response: &TestResponse, token: &str, case: &str) {
    let body = response.text();
    let json = response.json();
    let mut members: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    members.sort_unstable();
    assert_eq!(
        members,
        ["error", "request_id"],
        "{case}: unexpected body {body}"
    );
    let headers: Vec<String> = response
        .headers
        .values()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    for piece in token.split('.').filter(|s| s.len() >= 8) {
        assert!(
            !body.contains(piece),
            "{case}: the body echoes part of the token"
        );
        assert!(
            headers.iter().all(|h| !h.contains(piece)),
            "{case}: a header echoes part of the token"
        );
    }
    let mut segments = token.split('.');
    let header = segments.next().and_then(decoded_json);
    let payload = segments.next().and_then(decoded_json);
    let mut claims = Vec::new();
    if let Some(payload) = &payload {
        collect_strings(payload, &mut claims);
    }
    for claim in &claims {
        assert!(
            !body.contains(claim.as_str()),
            "{case}: the body echoes the claim {claim:?}: {body}"
        );
        assert!(
            headers.iter().all(|h| !h.contains(claim.as_str())),
            "{case}: a response header echoes the claim {claim:?}: {headers:?}"
        );
    }
    let mut header_strings = Vec::new();
    if let Some(header) = &header {
        collect_strings(header, &mut header_strings);
    }
    for value in &header_strings {
        assert!(
            !body.contains(value.as_str()),
            "{case}: the body echoes the header value {value:?}"
        );
    }
}

/// Sends `token` as a bearer token to an authenticated route and asserts a fast 401 that
/// reached no upstream and echoes nothing.
async fn assert_rejected(gw: &TestGateway, token: &str, case: &str) {
    let before = gw.upstream.count();
    let started = Instant::now();
    let response = gw.get_bearer(PATH, token).await;
    let took = started.elapsed();
    assert_eq!(
        response.status,
        401,
        "{case}: expected 401, got {}: {}",
        response.status,
        response.text()
    );
    assert_eq!(
        gw.upstream.count(),
        before,
        "{case}: the upstream received the request"
    );
    assert!(took < FAST, "{case}: the refusal took {took:?}");
    assert_echoes_nothing(&response, token, case);
}

/// Sends `token` and asserts it reached the upstream as `subject`.
async fn assert_accepted_as(gw: &TestGateway, token: &str, subject: &str, case: &str) {
    let before = gw.upstream.count();
    let response = gw.get_bearer(PATH, token).await;
    assert_eq!(
        response.status,
        200,
        "{case}: expected 200, got {}: {}",
        response.status,
        response.text()
    );
    assert_eq!(
        gw.upstream.count(),
        before + 1,
        "{case}: the upstream did not receive the request"
    );
    let seen = gw.upstream.last();
    assert_eq!(seen.headers["x-auth-subject"], subject, "{case}");
}

async fn assert_accepted(gw: &TestGateway, token: &str, case: &str) {
    assert_accepted_as(gw, token, "alice", case).await;
}

/// A listener that counts connections: proof that nothing was fetched from a URL in a token.
async fn connection_trap() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        // Held open and never answered: a client waits for its own timeout.
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, hits)
}

/// An Ed25519 attacker key with a self-signed certificate for it (DER).
fn attacker_with_certificate(kid: &str) -> (TestKey, Vec<u8>) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["attacker.test".to_owned()])
        .unwrap()
        .self_signed(&pair)
        .unwrap();
    let key = TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).unwrap(),
        public_pem: pair.public_key_pem(),
        public_der: pair.public_key_der(),
    };
    (key, cert.der().to_vec())
}

/// The public JWK of a key, as JSON, built from its SPKI.
fn public_jwk(key: &TestKey) -> Value {
    let spki = &key.public_der;
    match key.alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            let pkcs1 = pkcs1_from_spki(spki);
            let (_, seq, _) = der_tlv(&pkcs1);
            let (_, n, rest) = der_tlv(seq);
            let (_, e, _) = der_tlv(rest);
            let n = n.strip_prefix(&[0u8]).unwrap_or(n);
            json!({ "kty": "RSA", "alg": key.alg_name(), "n": b64(n), "e": b64(e) })
        }
        Algorithm::ES256 => {
            let point = &spki[spki.len() - 65..];
            assert_eq!(point[0], 0x04, "uncompressed point");
            json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) })
        }
        Algorithm::EdDSA => {
            json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&spki[spki.len() - 32..]) })
        }
        other => panic!("no public JWK for {other:?}"),
    }
}

/// One DER TLV at the start of `der`: (tag, contents, rest).
fn der_tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = der[0];
    let (len, header) = if der[1] < 0x80 {
        (der[1] as usize, 2)
    } else {
        let n = (der[1] & 0x7f) as usize;
        let len = der[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | *b as usize);
        (len, 2 + n)
    };
    (tag, &der[header..header + len], &der[header + len..])
}

/// The PKCS#1 `RSAPublicKey` inside an SPKI.
fn pkcs1_from_spki(spki: &[u8]) -> Vec<u8> {
    let (_, seq, _) = der_tlv(spki);
    let (_, _algorithm, rest) = der_tlv(seq);
    let (tag, bits, _) = der_tlv(rest);
    assert_eq!(tag, 0x03, "SPKI without a BIT STRING");
    bits[1..].to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A JSON object's text with its members in reverse order: same claims, different bytes.
fn reversed_members(value: &Value) -> String {
    let members: Vec<String> = value
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// Writes `head` on a fresh connection while reading the answer, and returns the status (if
/// any arrived) and how long until the gateway answered or closed. Writing and reading at once
/// matters: a gateway that stops reading a 1 MB head must not deadlock the test.
async fn raw_head(addr: SocketAddr, head: Vec<u8>) -> (Option<u16>, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        // The gateway may close mid-write; that is an acceptable answer.
        let _ = writer.write_all(&head).await;
        writer
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(FAST, async {
        let mut buf = [0u8; 4096];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let took = started.elapsed();
    write.abort();
    assert!(
        read.is_ok(),
        "the gateway neither answered nor closed within {FAST:?}"
    );
    let text = String::from_utf8_lossy(&out);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    (status, took)
}

// ---------------------------------------------------------------------------------------------
// Positive controls
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec01_every_allow_listed_algorithm_accepts_a_valid_token() {
    for alg in [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::HS256,
    ] {
        let gw = gateway_with(TestKey::generate(alg, "k-1")).await;
        let token = gw.token(json!({}));
        let response = gw.get_bearer(PATH, &token).await;
        assert_eq!(response.status, 200, "{alg:?}: {}", response.text());
        let seen = gw.upstream.last();
        assert_eq!(seen.headers["x-auth-subject"], "alice", "{alg:?}");
        assert_eq!(seen.headers["x-auth-session"], "sid-alice", "{alg:?}");
        assert_eq!(gw.upstream.count(), 1, "{alg:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Algorithms
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec01_alg_none_in_any_case_is_rejected() {
    let gw = gateway_with(TestKey::generate(Algorithm::RS256, "k-rs")).await;
    let payload = claims(json!({}));
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({ "alg": alg, "typ": "at+jwt", "kid": gw.key().kid });
        let (h, p) = (enc(&header), enc(&payload));
        // The classic unsigned token…
        assert_rejected(
            &gw,
            &format!("{h}.{p}."),
            &format!("alg {alg}, empty signature"),
        )
        .await;
        // …one carrying a signature that the key would accept (only `alg` is wrong)…
        let signed = sign_segments_as(&gw.key().encoding, Algorithm::RS256, &h, &p);
        assert_rejected(&gw, &signed, &format!("alg {alg}, valid RS256 signature")).await;
        // …and without a kid, unsigned and signed.
        let h = enc(&json!({ "alg": alg, "typ": "at+jwt" }));
        assert_rejected(&gw, &format!("{h}.{p}."), &format!("alg {alg}, no kid")).await;
        let signed = sign_segments_as(&gw.key().encoding, Algorithm::RS256, &h, &p);
        assert_rejected(&gw, &signed, &format!("alg {alg}, no kid, RS256 signature")).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

#[tokio::test]
async fn sec01_alg_is_compared_exactly_so_rs256_in_lower_case_is_rejected() {
    let gw = gateway_with(TestKey::generate(Algorithm::RS256, "k-rs")).await;
    let payload = claims(json!({}));
    for alg in ["rs256", "Rs256", "RS256 ", " RS256", "RS256\u{0}", "RS-256"] {
        let header = json!({ "alg": alg, "typ": "at+jwt", "kid": gw.key().kid });
        // The signature is a valid RS256 signature by the gateway's key: only `alg` is off.
        let token = sign_as(&gw.key().encoding, Algorithm::RS256, &header, &payload);
        assert_rejected(&gw, &token, &format!("alg {alg:?}")).await;
    }
    let ed = gateway_with(TestKey::generate(Algorithm::EdDSA, "k-ed")).await;
    for alg in ["eddsa", "EDDSA", "Ed25519"] {
        let header = json!({ "alg": alg, "typ": "at+jwt", "kid": ed.key().kid });
        let token = sign_as(&ed.key().encoding, Algorithm::EdDSA, &header, &payload);
        assert_rejected(&ed, &token, &format!("alg {alg:?}")).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control RS256").await;
    assert_accepted(&ed, &ed.token(json!({})), "control EdDSA").await;
}

#[tokio::test]
async fn sec01_a_token_re_signed_with_another_algorithm_is_rejected() {
    let gw = gateway_with(TestKey::generate(Algorithm::RS256, "k-rs")).await;
    let kid = gw.key().kid.clone();
    let payload = claims(json!({}));
    // PS256 with the gateway's own RSA private key: a valid signature, under the wrong alg.
    let header = json!({ "alg": "PS256", "typ": "at+jwt", "kid": kid });
    let token = sign_as(&gw.key().encoding, Algorithm::PS256, &header, &payload);
    assert_rejected(&gw, &token, "PS256 with the gateway's own RSA key").await;
    // Other algorithms with other keys, same kid.
    for alg in [
        Algorithm::HS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::PS256,
    ] {
        let other = TestKey::generate(alg, &kid);
        let header = json!({ "alg": other.alg_name(), "typ": "at+jwt", "kid": kid });
        let token = sign_as(&other.encoding, alg, &header, &payload);
        assert_rejected(&gw, &token, &format!("re-signed with {alg:?}")).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

#[tokio::test]
async fn sec01_each_key_is_bound_to_exactly_one_algorithm() {
    // Two keys: RS256 and HS256. A token may not combine one key's kid with the other's alg.
    let rs = TestKey::generate(Algorithm::RS256, "k-rs");
    let hs = TestKey::generate(Algorithm::HS256, "k-hs");
    let (rs2, hs2) = (twin(&rs), twin(&hs));
    let gw = Setup {
        keys: vec![rs, hs],
        ..Setup::default()
    }
    .start()
    .await;
    let payload = claims(json!({}));

    let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": "k-rs" });
    let token = sign_as(&hs2.encoding, Algorithm::HS256, &header, &payload);
    assert_rejected(
        &gw,
        &token,
        "kid of the RSA key, HS256 with the HMAC key's secret",
    )
    .await;

    let header = json!({ "alg": "RS256", "typ": "at+jwt", "kid": "k-hs" });
    let token = sign_as(&rs2.encoding, Algorithm::RS256, &header, &payload);
    assert_rejected(&gw, &token, "kid of the HMAC key, RS256 with the RSA key").await;

    assert_accepted(&gw, &rs2.token(json!({})), "control RS256").await;
    assert_accepted(&gw, &hs2.token(json!({})), "control HS256").await;
}

#[test]
fn sec01_a_key_cannot_be_configured_with_an_algorithm_outside_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        keys: vec![TestKey::generate(Algorithm::RS256, "k-rs")],
        ..Setup::default()
    };
    let yaml = setup.yaml(dir.path(), "http://127.0.0.1:9");
    assert!(
        Config::from_yaml(&yaml, dir.path()).is_ok(),
        "control: the unmodified config loads"
    );
    for alg in ["none", "None", "rs256", "HS384", "RS512", "ES384"] {
        let bad = yaml.replace("alg: RS256", &format!("alg: {alg}"));
        assert_ne!(bad, yaml);
        let err = Config::from_yaml(&bad, dir.path())
            .expect_err(alg)
            .to_string();
        assert!(
            err.contains("issuers[0].keys[0]"),
            "alg {alg}: the error names the key: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Key confusion
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec02_hs256_token_signed_with_the_public_key_is_rejected() {
    let gw = gateway_with(TestKey::generate(Algorithm::RS256, "k-rs")).await;
    let kid = gw.key().kid.clone();
    let pem_text = gw.key().public_pem.clone();
    assert!(pem_text.ends_with('\n'));
    let jwk = public_jwk(gw.key());
    let minimal_jwk = json!({ "e": jwk["e"], "kty": "RSA", "n": jwk["n"] });
    let pkcs1 = pkcs1_from_spki(&gw.key().public_der);
    let mut jwk_with_kid = jwk.clone();
    jwk_with_kid["kid"] = json!(kid);
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        (
            "SPKI PEM with trailing newline",
            pem_text.clone().into_bytes(),
        ),
        (
            "SPKI PEM without trailing newline",
            pem_text.trim_end().as_bytes().to_vec(),
        ),
        (
            "SPKI PEM with CRLF",
            pem_text.replace('\n', "\r\n").into_bytes(),
        ),
        ("SPKI DER", gw.key().public_der.clone()),
        ("PKCS#1 DER", pkcs1.clone()),
        ("PKCS#1 PEM", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
        (
            "PKCS#1 PEM without trailing newline",
            pem("RSA PUBLIC KEY", &pkcs1).trim_end().as_bytes().to_vec(),
        ),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("JWK JSON with kid", jwk_with_kid.to_string().into_bytes()),
        ("minimal JWK JSON", minimal_jwk.to_string().into_bytes()),
        (
            "JWK JSON pretty",
            serde_json::to_string_pretty(&jwk).unwrap().into_bytes(),
        ),
    ];
    let payload = claims(json!({}));
    for (what, secret) in &secrets {
        let hmac = EncodingKey::from_secret(secret);
        for (which, header) in [
            (
                "gateway kid",
                json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid }),
            ),
            ("no kid", json!({ "alg": "HS256", "typ": "at+jwt" })),
        ] {
            let token = sign_as(&hmac, Algorithm::HS256, &header, &payload);
            assert_rejected(
                &gw,
                &token,
                &format!("HS256 keyed with the {what}, {which}"),
            )
            .await;
        }
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

#[tokio::test]
async fn sec02_hs256_token_signed_with_an_ec_or_ed25519_public_key_is_rejected() {
    for alg in [Algorithm::ES256, Algorithm::EdDSA] {
        let gw = gateway_with(TestKey::generate(alg, "k-pub")).await;
        let pem_text = gw.key().public_pem.clone();
        let jwk = public_jwk(gw.key());
        let payload = claims(json!({}));
        for (what, secret) in [
            ("PEM", pem_text.clone().into_bytes()),
            (
                "PEM without trailing newline",
                pem_text.trim_end().as_bytes().to_vec(),
            ),
            ("DER", gw.key().public_der.clone()),
            ("JWK JSON", jwk.to_string().into_bytes()),
        ] {
            let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": gw.key().kid });
            let token = sign_as(
                &EncodingKey::from_secret(&secret),
                Algorithm::HS256,
                &header,
                &payload,
            );
            assert_rejected(
                &gw,
                &token,
                &format!("{alg:?} gateway, HS256 keyed with the {what}"),
            )
            .await;
        }
        assert_accepted(&gw, &gw.token(json!({})), &format!("control {alg:?}")).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Signature before claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec03_a_token_with_a_broken_signature_is_rejected_and_echoes_no_claim() {
    let gw = TestGateway::start().await;
    gw.create_session("sid-marker-4b1d", "mallory-marker-subject")
        .await;
    let marked = json!({
        "sub": "mallory-marker-subject",
        "sid": "sid-marker-4b1d",
        "jti": "marker-jti-7f3a9c",
        "note": "<script>marker-note</script>",
    });
    let token = gw.token(marked.clone());
    let (h, p, s) = split3(&token);

    // A flipped bit in the payload, re-encoded canonically so only the signature can tell.
    let mut bytes = URL_SAFE_NO_PAD.decode(&p).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    let flipped = format!("{h}.{}.{s}", b64(&bytes));
    // A flipped bit in the encoded payload text.
    let mut text = p.clone().into_bytes();
    text[10] = if text[10] == b'A' { b'B' } else { b'A' };
    let flipped_text = format!("{h}.{}.{s}", String::from_utf8(text).unwrap());
    // Truncated signatures: by bytes (canonical), and by characters.
    let sig = URL_SAFE_NO_PAD.decode(&s).unwrap();
    let short_bytes = format!("{h}.{p}.{}", b64(&sig[..sig.len() - 1]));
    let half = format!("{h}.{p}.{}", b64(&sig[..sig.len() / 2]));
    let short_chars = format!("{h}.{p}.{}", &s[..s.len() - 4]);
    // Another valid token's signature, by the same key.
    let (_, _, other_sig) = split3(&gw.token(json!({})));
    let spliced = format!("{h}.{p}.{other_sig}");
    // A signature by another key with the same kid.
    let (_, _, foreign_sig) =
        split3(&TestKey::generate(Algorithm::EdDSA, "k-ed").sign_segments(&h, &p));
    let foreign = format!("{h}.{p}.{foreign_sig}");
    let zeros = format!("{h}.{p}.{}", b64([0u8; 64]));

    let cases = [
        ("flipped payload bit", flipped),
        ("flipped payload character", flipped_text),
        ("signature one byte short", short_bytes),
        ("signature half length", half),
        ("signature four characters short", short_chars),
        ("empty signature (h.p.)", format!("{h}.{p}.")),
        ("no signature segment (h.p)", format!("{h}.{p}")),
        ("another token's signature", spliced),
        ("another key's signature", foreign),
        ("all-zero signature", zeros),
    ];
    for (what, forged) in &cases {
        assert_rejected(&gw, forged, what).await;
        let response = gw.get_bearer(PATH, forged).await;
        for marker in [
            "mallory-marker-subject",
            "marker-jti-7f3a9c",
            "marker-note",
            "alice",
        ] {
            assert!(
                !response.text().contains(marker),
                "{what}: body echoes {marker}"
            );
        }
    }
    assert_eq!(gw.upstream.count(), 0);
    assert_accepted_as(
        &gw,
        &token,
        "mallory-marker-subject",
        "control: the unbroken token",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Key material never comes from the token
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec04_jwk_jku_x5u_x5c_headers_never_give_a_key_nor_cause_a_fetch() {
    let (trap, hits) = connection_trap().await;
    // A route to the trap, for the positive signal below.
    let gw = Setup {
        upstreams: format!("  trap: {{ url: \"http://{trap}\", response_timeout: 200ms }}"),
        routes: format!(
            "  - {{ id: trap, path: /trap, upstream: trap, policy: public }}{DEFAULT_ROUTES}"
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let (attacker, cert_der) = attacker_with_certificate(&gw.key().kid);
    let jwk = public_jwk(&attacker);
    let payload = claims(json!({}));
    let jku = format!("http://{trap}/.well-known/jwks.json");
    let x5u = format!("http://{trap}/cert.pem");
    let x5c = json!([STANDARD.encode(&cert_der)]);
    let headers = [
        (
            "jwk, gateway kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid, "jwk": jwk }),
        ),
        (
            "jwk, no kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "jwk": jwk }),
        ),
        (
            "jwk, attacker kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": "attacker", "jwk": jwk }),
        ),
        (
            "jku, gateway kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid, "jku": jku }),
        ),
        (
            "jku, attacker kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": "attacker", "jku": jku }),
        ),
        (
            "jku, no kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "jku": jku }),
        ),
        (
            "x5u, gateway kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid, "x5u": x5u }),
        ),
        (
            "x5u, no kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "x5u": x5u }),
        ),
        (
            "x5c, gateway kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid, "x5c": x5c }),
        ),
        (
            "x5c, no kid",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "x5c": x5c }),
        ),
        (
            "all four at once",
            json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid, "jwk": jwk, "jku": jku, "x5u": x5u, "x5c": x5c }),
        ),
    ];
    for (what, header) in &headers {
        let token = sign_as(&attacker.encoding, Algorithm::EdDSA, header, &payload);
        assert_rejected(&gw, &token, what).await;
    }
    // A fetch could be fired off in the background. The gateway's own connection to the trap,
    // made after every attack was answered, shows when the trap has counted what came before.
    assert_eq!(gw.get("/trap").await.status, 504);
    let counted = eventually(Duration::from_secs(5), || async {
        hits.load(Ordering::SeqCst) >= 1
    })
    .await;
    assert!(
        counted.is_some(),
        "the trap never saw the gateway's request"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the gateway connected to a URL taken from a token"
    );
    // Control: the same headers on a token the gateway's own key signed are simply ignored.
    let header =
        json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid, "jku": jku, "x5u": x5u });
    assert_accepted(
        &gw,
        &gw.key().sign_raw(&header, &payload),
        "control: ignored headers",
    )
    .await;
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sec04_an_unknown_kid_is_rejected() {
    let gw = TestGateway::start().await;
    let payload = claims(json!({}));
    // Validly signed by a key the gateway does not have.
    let stranger = TestKey::generate(Algorithm::EdDSA, "k-stranger");
    assert_rejected(&gw, &stranger.token(json!({})), "unconfigured key").await;
    for (what, kid) in [
        ("empty kid", json!("")),
        ("numeric kid", json!(1)),
        ("null kid", Value::Null),
    ] {
        let header = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": kid });
        assert_rejected(&gw, &gw.key().sign_raw(&header, &payload), what).await;
    }
    let header = json!({ "alg": "EdDSA", "typ": "at+jwt" });
    assert_rejected(&gw, &gw.key().sign_raw(&header, &payload), "no kid").await;
    // The gateway's kid in the wrong case is another kid.
    let header = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": gw.key().kid.to_uppercase() });
    assert_rejected(
        &gw,
        &gw.key().sign_raw(&header, &payload),
        "kid in upper case",
    )
    .await;
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

#[tokio::test]
async fn sec04_path_sql_and_shell_kids_are_just_unknown_ids() {
    let gw = TestGateway::start().await;
    let payload = claims(json!({}));
    let empty_hmac = EncodingKey::from_secret(b"");
    let attacker = TestKey::generate(Algorithm::EdDSA, "unused");
    let kids = [
        "../../dev/null",
        "../../../../../../dev/null",
        "/dev/null",
        "/dev/zero",
        "/dev/random",
        "/etc/passwd",
        "file:///etc/passwd",
        "' OR 1=1 --",
        "x' UNION SELECT 'secret' --",
        "$(reboot)",
        "`reboot`",
        "; sleep 10",
        "| sleep 10",
        "http://127.0.0.1:9/jwks.json",
    ];
    for kid in kids {
        // HS256 with an empty secret (what `/dev/null` would yield), and EdDSA by a stranger.
        let header = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
        let token = sign_as(&empty_hmac, Algorithm::HS256, &header, &payload);
        assert_rejected(
            &gw,
            &token,
            &format!("kid {kid:?}, HS256 with empty secret"),
        )
        .await;
        let header = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": kid });
        let token = sign_as(&attacker.encoding, Algorithm::EdDSA, &header, &payload);
        assert_rejected(&gw, &token, &format!("kid {kid:?}, EdDSA by a stranger")).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

// ---------------------------------------------------------------------------------------------
// 5. crit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec05_a_crit_header_with_any_value_is_rejected() {
    let gw = TestGateway::start().await;
    let payload = claims(json!({}));
    for crit in [
        json!(["exp"]),
        json!([]),
        json!("x"),
        json!(["b64"]),
        json!(null),
        json!(false),
        json!({}),
    ] {
        let mut header = gw.key().header();
        header["crit"] = crit.clone();
        if crit == json!(["b64"]) {
            header["b64"] = json!(true);
        }
        assert_rejected(
            &gw,
            &gw.key().sign_raw(&header, &payload),
            &format!("crit {crit}"),
        )
        .await;
    }
    // `crit` spelt with a JSON escape is still `crit`.
    let h = b64(format!(
        r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","\u0063rit":["exp"]}}"#,
        gw.key().kid
    ));
    assert_rejected(
        &gw,
        &gw.key().sign_segments(&h, &enc(&payload)),
        "escaped crit",
    )
    .await;
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Duplicate JSON members
// ---------------------------------------------------------------------------------------------

/// Hand-written claims text (so members can repeat); `extra` is spliced in before `roles`.
fn payload_text(extra: &str) -> String {
    let n = now();
    format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"alice","sid":"sid-alice","jti":"dup-{n}-{}","iat":{},"exp":{},{extra}"roles":["reader"]}}"#,
        extra.len(),
        n - 10,
        n + 600,
    )
}

#[tokio::test]
async fn sec06_duplicate_member_names_in_header_or_payload_are_rejected() {
    let gw = TestGateway::start().await;
    let kid = gw.key().kid.clone();
    let good_header = format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#);
    let good_payload = payload_text("");
    let headers = [
        (
            "two alg, none first",
            format!(r#"{{"alg":"none","alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#),
        ),
        (
            "two alg, none last",
            format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","alg":"none"}}"#),
        ),
        (
            "two identical alg",
            format!(r#"{{"alg":"EdDSA","alg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#),
        ),
        (
            "two kid",
            format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"other","kid":"{kid}"}}"#),
        ),
        (
            "two typ",
            format!(r#"{{"alg":"EdDSA","typ":"JWT","typ":"at+jwt","kid":"{kid}"}}"#),
        ),
        (
            "alg and escaped alg",
            format!(r#"{{"alg":"none","\u0061lg":"EdDSA","typ":"at+jwt","kid":"{kid}"}}"#),
        ),
        (
            "duplicate inside a nested object",
            format!(r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{kid}","x":{{"a":1,"a":2}}}}"#),
        ),
    ];
    for (what, header) in &headers {
        let token = gw.key().sign_segments(&b64(header), &b64(&good_payload));
        assert_rejected(&gw, &token, &format!("header: {what}")).await;
    }
    let payloads = [
        ("two sub", payload_text(r#""sub":"admin","#)),
        (
            "sub and escaped sub",
            payload_text(r#""s\u0075b":"admin","#),
        ),
        ("two roles", payload_text(r#""roles":["admin"],"#)),
        (
            "two exp",
            payload_text(&format!(r#""exp":{},"#, now() + 365 * 86_400)),
        ),
        ("two sid", payload_text(r#""sid":"sid-other","#)),
        ("two iss", payload_text(r#""iss":"https://evil.test","#)),
        (
            "duplicate inside a nested object",
            payload_text(r#""ctx":{"role":"reader","role":"admin"},"#),
        ),
    ];
    for (what, payload) in &payloads {
        let token = gw.key().sign_segments(&b64(&good_header), &b64(payload));
        assert_rejected(&gw, &token, &format!("payload: {what}")).await;
    }
    // Control: the same hand-written text without the duplicates verifies.
    let token = gw
        .key()
        .sign_segments(&b64(&good_header), &b64(&good_payload));
    assert_accepted(&gw, &token, "control: hand-written JSON").await;
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Compact serialization, base64url only
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec07_only_compact_base64url_is_accepted() {
    let gw = TestGateway::start().await;
    // A token whose base64url text uses `-` or `_`, so the standard alphabet differs.
    let token = (0..200)
        .map(|_| gw.token(json!({})))
        .find(|t| t.contains('-') || t.contains('_'))
        .expect("no token with - or _ in 200 tries");
    let (h, p, s) = split3(&token);
    let standard_alphabet = token.replace('-', "+").replace('_', "/");
    // Non-zero trailing bits: the same signature bytes, spelt differently.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *s.as_bytes().last().unwrap();
    let index = alphabet.iter().position(|c| *c == last).unwrap();
    let sloppy_last = alphabet[index + 1] as char;
    let sloppy = format!("{h}.{p}.{}{sloppy_last}", &s[..s.len() - 1]);
    let std_sig = STANDARD.encode(URL_SAFE_NO_PAD.decode(&s).unwrap());
    // The same for the header, validly signed by the gateway's key: strictness, not the
    // signature, refuses it. (The header's 58 characters leave 4 spare bits in the last one.)
    assert_eq!(h.len() % 4, 2);
    let h_last = *h.as_bytes().last().unwrap();
    let h_index = alphabet.iter().position(|c| *c == h_last).unwrap();
    let sloppy_h = format!("{}{}", &h[..h.len() - 1], alphabet[h_index + 1] as char);
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
    );
    assert_eq!(
        lenient.decode(&sloppy_h).unwrap(),
        URL_SAFE_NO_PAD.decode(&h).unwrap()
    );
    let sloppy_header = gw.key().sign_segments(&sloppy_h, &p);
    // Correct padding where the length needs some, a stray `=` otherwise.
    let pad = |seg: &str| format!("{seg}{}", "=".repeat(((4 - seg.len() % 4) % 4).max(1)));

    let cases = vec![
        ("standard alphabet (+ and /)", standard_alphabet),
        ("padded signature", format!("{h}.{p}.{}", pad(&s))),
        ("padded header", format!("{}.{p}.{s}", pad(&h))),
        ("padded payload", format!("{h}.{}.{s}", pad(&p))),
        ("standard base64 signature", format!("{h}.{p}.{std_sig}")),
        ("non-zero trailing bits in the signature", sloppy),
        (
            "non-zero trailing bits in the header, validly signed",
            sloppy_header,
        ),
        ("space inside", format!("{h}.{} {}.{s}", &p[..5], &p[5..])),
        ("tab inside", format!("{h}.{p}\t.{s}")),
        ("space after a dot", format!("{h}. {p}.{s}")),
        ("percent-encoded", format!("{h}.{p}.{}%3D", s)),
        ("four segments", format!("{h}.{p}.{s}.")),
        ("leading dot", format!(".{h}.{p}.{s}")),
    ];
    for (what, bad) in &cases {
        assert_ne!(bad, &token, "{what}");
        assert_rejected(&gw, bad, what).await;
    }

    // JSON serializations of the same JWS (flattened and general), raw and base64url'd.
    let flattened = json!({ "protected": h, "payload": p, "signature": s }).to_string();
    let general =
        json!({ "payload": p, "signatures": [{ "protected": h, "signature": s }] }).to_string();
    for (what, text) in [("flattened JSON", &flattened), ("general JSON", &general)] {
        let request = Request::get(gw.url(PATH))
            .header("authorization", format!("Bearer {text}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = gw.send(request).await;
        assert_eq!(response.status, 401, "{what}");
        assert_eq!(gw.upstream.count(), 0, "{what}");
        assert_rejected(&gw, &b64(text), &format!("{what}, base64url")).await;
    }

    // A 5-segment JWE aimed at the gateway's kid.
    let jwe_header = enc(
        &json!({ "alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": gw.key().kid, "typ": "at+jwt" }),
    );
    let jwe = format!(
        "{jwe_header}.{}.{}.{}.{}",
        b64([7u8; 256]),
        b64([1u8; 12]),
        b64(b"ciphertext"),
        b64([2u8; 16])
    );
    assert_rejected(&gw, &jwe, "JWE").await;
    let dir_header = enc(&json!({ "alg": "dir", "enc": "A256GCM", "kid": gw.key().kid }));
    let jwe_dir = format!(
        "{dir_header}..{}.{}.{}",
        b64([1u8; 12]),
        b64(b"ciphertext"),
        b64([2u8; 16])
    );
    assert_rejected(&gw, &jwe_dir, "JWE, dir").await;

    // Nested JWT: the gateway's key signs, `cty: JWT`. Once with the inner token as payload,
    // once with ordinary claims (so `cty` is the only thing wrong).
    let inner = gw.token(json!({ "sub": "admin", "roles": ["admin"] }));
    for cty in ["JWT", "jwt", "application/jwt"] {
        let mut header = gw.key().header();
        header["cty"] = json!(cty);
        let nested = gw.key().sign_segments(&enc(&header), &b64(&inner));
        assert_rejected(&gw, &nested, &format!("nested JWT, cty {cty}")).await;
        let plain = gw.key().sign_raw(&header, &claims(json!({})));
        assert_rejected(&gw, &plain, &format!("claims with cty {cty}")).await;
    }

    assert_eq!(gw.upstream.count(), 0);
    assert_accepted(&gw, &token, "control: the original token").await;
}

// ---------------------------------------------------------------------------------------------
// 8. Registered claims
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec08_exp_is_required_and_numeric() {
    let gw = TestGateway::start().await;
    let n = now();
    let cases = [
        ("missing exp", json!({ "exp": null })),
        ("string exp", json!({ "exp": (n + 600).to_string() })),
        ("boolean exp", json!({ "exp": true })),
        ("array exp", json!({ "exp": [n + 600] })),
        ("negative exp", json!({ "exp": -1 })),
        ("exp beyond i64", json!({ "exp": 1e300 })),
    ];
    for (what, overrides) in cases {
        assert_rejected(&gw, &gw.token(overrides), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({ "exp": n + 600 })), "control").await;
}

#[tokio::test]
async fn sec08_expired_beyond_the_leeway_is_rejected_but_within_it_is_accepted() {
    // Default leeway: 30 s. The margins below are 20 s or more on either side, so a slow
    // machine cannot flip a verdict.
    let gw = TestGateway::start().await;
    let n = now();
    for (what, exp) in [
        ("expired 60 s ago", n - 60),
        ("expired an hour ago", n - 3600),
    ] {
        let token = gw.token(json!({ "iat": n - 7200, "exp": exp }));
        assert_rejected(&gw, &token, what).await;
    }
    let token = gw.token(json!({ "iat": n - 600, "exp": n - 10 }));
    assert_accepted(&gw, &token, "expired 10 s ago, within the leeway").await;
}

#[tokio::test]
async fn sec08_nbf_in_the_future_is_rejected() {
    let gw = TestGateway::start().await;
    let n = now();
    for (what, nbf) in [
        ("nbf in 2 minutes", json!(n + 120)),
        ("nbf in a day", json!(n + 86_400)),
        ("string nbf", json!("0")),
    ] {
        assert_rejected(&gw, &gw.token(json!({ "nbf": nbf })), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({ "nbf": n - 5 })), "nbf in the past").await;
    assert_accepted(
        &gw,
        &gw.token(json!({ "nbf": n + 5 })),
        "nbf within the leeway",
    )
    .await;
}

#[tokio::test]
async fn sec08_iat_in_the_future_is_rejected() {
    let gw = TestGateway::start().await;
    let n = now();
    let cases = [
        ("iat in 2 minutes", json!({ "iat": n + 120 })),
        (
            "iat in a day",
            json!({ "iat": n + 86_400, "exp": n + 86_400 + 60 }),
        ),
        ("missing iat", json!({ "iat": null })),
        ("string iat", json!({ "iat": (n - 10).to_string() })),
        // exp is within the leeway, so only its order relative to iat is wrong.
        ("iat after exp", json!({ "iat": n, "exp": n - 1 })),
        (
            "lifetime beyond the issuer's maximum (24 h)",
            json!({ "iat": n - 10, "exp": n + 2 * 86_400 }),
        ),
    ];
    for (what, overrides) in cases {
        assert_rejected(&gw, &gw.token(overrides), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({ "iat": n - 10 })), "control").await;
}

#[tokio::test]
async fn sec08_iss_must_equal_the_configured_issuer() {
    let gw = TestGateway::start().await;
    let cases = [
        ("missing iss", json!(null)),
        ("foreign iss", json!("https://evil.test")),
        ("trailing slash", json!(format!("{ISSUER}/"))),
        ("upper case", json!(ISSUER.to_uppercase())),
        ("prefix", json!("https://issuer.test.evil")),
        ("array", json!([ISSUER])),
    ];
    for (what, iss) in cases {
        assert_rejected(&gw, &gw.token(json!({ "iss": iss })), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({ "iss": ISSUER })), "control").await;
}

#[tokio::test]
async fn sec08_iss_must_be_the_issuer_the_signing_key_belongs_to() {
    const OTHER: &str = "https://other-issuer.test";
    let keydir = tempfile::tempdir().unwrap();
    let other = TestKey::generate(Algorithm::ES256, "k-other");
    // A second `issuers:` entry, spliced after the first one's keys.
    let issuer_extra = format!(
        "  - issuer: {OTHER}\n    audiences: [{AUDIENCE}]\n    keys:\n      - {}",
        other.yaml_entry(keydir.path())
    );
    let gw = Setup {
        issuer_extra,
        ..Setup::default()
    }
    .start()
    .await;
    // Each key signing a token that names the other key's issuer.
    let token = other.token(json!({ "iss": ISSUER }));
    assert_rejected(&gw, &token, "other issuer's key, iss of the first issuer").await;
    let token = gw.token(json!({ "iss": OTHER }));
    assert_rejected(&gw, &token, "first issuer's key, iss of the other issuer").await;
    // Controls: each key with its own issuer.
    assert_accepted(
        &gw,
        &other.token(json!({ "iss": OTHER })),
        "control: other issuer",
    )
    .await;
    assert_accepted(
        &gw,
        &gw.token(json!({ "iss": ISSUER })),
        "control: first issuer",
    )
    .await;
}

#[tokio::test]
async fn sec08_identity_claims_a_backend_could_read_two_ways_are_rejected() {
    // `sub` and `sid` become X-Auth-Subject and X-Auth-Session: a value with edge whitespace
    // reached a backend as `" alice"` before, which a trimming backend reads as `alice`.
    let gw = gateway_with(TestKey::generate(Algorithm::EdDSA, "k-ed")).await;
    let shapes = [
        ("leading space", " alice"),
        ("trailing space", "alice "),
        ("leading tab", "\talice"),
        ("trailing newline", "alice\n"),
        ("CR LF inside", "alice\r\nX-Auth-Permissions: admin"),
        ("NUL inside", "ali\u{0}ce"),
        ("DEL", "alice\u{7f}"),
        ("C1 control (NEL)", "alice\u{85}"),
        ("no-break space", "al\u{a0}ice"),
        ("line separator", "alice\u{2028}"),
        ("ideographic space", "\u{3000}alice"),
        ("zero-width space", "al\u{200b}ice"),
        ("right-to-left override", "\u{202e}ecila"),
        ("byte-order mark", "\u{feff}alice"),
        ("empty", ""),
    ];
    for (what, value) in shapes {
        for claim in ["sub", "sid", "jti"] {
            let token = gw.token(json!({ claim: value }));
            assert_rejected(&gw, &token, &format!("{claim}: {what}")).await;
        }
    }
    // Role names pick permissions from the config, but a role of that shape is a malformed
    // token, not an unknown role.
    for (what, role) in [
        ("leading space", " reader"),
        ("CR LF", "reader\r\n"),
        ("zero-width", "read\u{200b}er"),
    ] {
        let token = gw.token(json!({ "roles": ["reader", role] }));
        assert_rejected(&gw, &token, &format!("role: {what}")).await;
    }
    // Controls: a plain inner space is a legal subject, and passes through exactly.
    gw.create_session("sid with space", "alice smith").await;
    let token = gw.token(json!({ "sub": "alice smith", "sid": "sid with space" }));
    assert_accepted_as(&gw, &token, "alice smith", "an inner space").await;
    assert_eq!(
        gw.upstream.last().headers["x-auth-session"],
        "sid with space"
    );
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

#[tokio::test]
async fn sec08_aud_is_required_and_must_contain_the_configured_audience() {
    let gw = TestGateway::start().await;
    let cases = [
        ("missing aud", json!(null)),
        ("wrong aud", json!("another-service")),
        ("aud in another case", json!("Portcullis-Tests")),
        ("aud as a prefix", json!("portcullis-tests-evil")),
        (
            "array without the audience",
            json!(["another-service", "a-third"]),
        ),
        ("empty array", json!([])),
        ("numeric aud", json!(1)),
        ("empty string", json!("")),
    ];
    for (what, aud) in cases {
        assert_rejected(&gw, &gw.token(json!({ "aud": aud })), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({ "aud": AUDIENCE })), "aud string").await;
    assert_accepted(
        &gw,
        &gw.token(json!({ "aud": ["another-service", AUDIENCE] })),
        "aud array containing it",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 9. Typing
// ---------------------------------------------------------------------------------------------

// The second half of requirement 9 (an access token sent to the refresh endpoint is rejected)
// belongs to the refresh endpoint, which a later issue adds; it is not tested here.
#[tokio::test]
async fn sec09_only_an_at_jwt_typ_is_accepted_as_an_access_token() {
    let gw = TestGateway::start().await;
    let payload = claims(json!({}));
    let id_token_claims = claims(json!({
        "nonce": "n-0S6_WzA2Mj",
        "auth_time": now() - 20,
        "azp": AUDIENCE,
        "at_hash": "77QmUPtjPfzWtF2AnpK9RQ",
    }));
    let typs = [
        ("missing typ", Value::Null),
        ("JWT", json!("JWT")),
        ("jwt", json!("jwt")),
        ("application/jwt", json!("application/jwt")),
        ("refresh token", json!("rt+jwt")),
        ("refresh token, long", json!("refresh+jwt")),
        ("logout token", json!("logout+jwt")),
        ("DPoP proof", json!("dpop+jwt")),
        ("SET", json!("secevent+jwt")),
        ("at+jwt with suffix", json!("at+jwt; q=1")),
        ("at+jwt in an array", json!(["at+jwt"])),
        ("empty", json!("")),
    ];
    for (what, typ) in &typs {
        let mut header = gw.key().header();
        match typ {
            Value::Null => {
                header.as_object_mut().unwrap().remove("typ");
            }
            other => header["typ"] = other.clone(),
        }
        assert_rejected(&gw, &gw.key().sign_raw(&header, &payload), what).await;
    }
    // An ID token: `typ: JWT` and the claims an OpenID provider puts in one.
    let mut header = gw.key().header();
    header["typ"] = json!("JWT");
    assert_rejected(
        &gw,
        &gw.key().sign_raw(&header, &id_token_claims),
        "ID token",
    )
    .await;
    // Controls: RFC 9068 allows both spellings.
    assert_accepted(&gw, &gw.token(json!({})), "typ at+jwt").await;
    let mut header = gw.key().header();
    header["typ"] = json!("application/at+jwt");
    assert_accepted(
        &gw,
        &gw.key().sign_raw(&header, &claims(json!({}))),
        "typ application/at+jwt",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 10. jti, sid, denylist
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec10_a_token_without_jti_is_rejected() {
    let gw = TestGateway::start().await;
    for (what, jti) in [
        ("missing jti", json!(null)),
        ("empty jti", json!("")),
        ("numeric jti", json!(42)),
    ] {
        assert_rejected(&gw, &gw.token(json!({ "jti": jti })), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

#[tokio::test]
async fn sec10_a_token_without_sid_is_rejected_when_the_issuer_requires_sessions() {
    // `require_session` is not set: it defaults to true.
    let gw = TestGateway::start().await;
    for (what, sid) in [
        ("missing sid", json!(null)),
        ("empty sid", json!("")),
        ("numeric sid", json!(7)),
        ("unknown sid", json!("sid-never-created")),
    ] {
        assert_rejected(&gw, &gw.token(json!({ "sid": sid })), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;

    // Contrast: an issuer that does not use sessions accepts tokens without one.
    let sessionless = Setup {
        issuer_extra: "    require_session: false".into(),
        ..Setup::default()
    }
    .start()
    .await;
    assert_accepted(
        &sessionless,
        &sessionless.token(json!({ "sid": null })),
        "issuer without sessions",
    )
    .await;
}

#[tokio::test]
async fn sec10_the_denylist_keys_on_jti_and_issuer_not_on_token_bytes() {
    // ES256 signatures are randomized: signing the same bytes twice gives a new token.
    let es = TestKey::generate(Algorithm::ES256, "k-es");
    let ed = TestKey::generate(Algorithm::EdDSA, "k-ed");
    let (es2, ed2) = (twin(&es), twin(&ed));
    let gw = Setup {
        keys: vec![es, ed],
        ..Setup::default()
    }
    .start()
    .await;

    let payload = claims(json!({ "jti": "jti-to-deny" }));
    let header = es2.header();
    let original = es2.sign_raw(&header, &payload);
    // Verified once, so it sits in the verified-token cache when it is denied.
    assert_accepted(&gw, &original, "before the denial").await;

    let until = now() + 3600;
    SessionStore::deny_jti(gw.store(), ISSUER, "jti-to-deny", until, now())
        .await
        .unwrap();
    assert_rejected(&gw, &original, "the denied token itself (cached)").await;

    let (h, p, _) = split3(&original);
    let resigned = es2.sign_segments(&h, &p);
    assert_ne!(
        resigned, original,
        "ECDSA produced the same signature twice"
    );
    let reordered = es2.sign_segments(&h, &b64(reversed_members(&payload)));
    let spaced = es2.sign_segments(&h, &b64(serde_json::to_string_pretty(&payload).unwrap()));
    let other_key = ed2.sign_raw(&ed2.header(), &payload);
    let header_reordered = es2.sign_segments(&b64(reversed_members(&header)), &p);
    for (what, token) in [
        ("same bytes, fresh ECDSA signature", &resigned),
        ("payload members reordered", &reordered),
        ("payload pretty-printed", &spaced),
        ("header members reordered", &header_reordered),
        (
            "same claims signed by another key of the issuer",
            &other_key,
        ),
    ] {
        assert_ne!(token, &original, "{what}");
        assert_rejected(&gw, token, what).await;
    }
    // Controls: another jti is fine, and so is the same jti under another issuer's name
    // (the denylist is per issuer).
    assert_accepted(
        &gw,
        &es2.token(json!({ "jti": "jti-not-denied" })),
        "another jti",
    )
    .await;
    SessionStore::deny_jti(
        gw.store(),
        "https://some-other-issuer.test",
        "jti-shared",
        until,
        now(),
    )
    .await
    .unwrap();
    assert_accepted(
        &gw,
        &es2.token(json!({ "jti": "jti-shared" })),
        "a jti denied for another issuer only",
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 11. Revoked users and sessions
// ---------------------------------------------------------------------------------------------

// Deleting or disabling a user in the users file arrives with a later issue; here the user is
// revoked through the store, which is what that will do.
#[tokio::test]
async fn sec11_a_token_of_a_revoked_user_is_rejected() {
    let gw = TestGateway::start().await;
    gw.create_session("sid-bob", "bob").await;
    let n = now();
    let alice = gw.token(json!({ "iat": n - 10 }));
    let bob = gw.token(json!({ "sub": "bob", "sid": "sid-bob", "iat": n - 10 }));
    assert_accepted(&gw, &alice, "alice before the revocation").await;

    SessionStore::revoke_user(gw.store(), &user_key("alice"), n, n + 3600)
        .await
        .unwrap();
    assert_rejected(&gw, &alice, "alice's token (cached) after the revocation").await;
    // Even on a session created afterwards, a token issued before the revocation is refused:
    // the user mark, not only the session, refuses it.
    gw.create_session("sid-alice-2", "alice").await;
    let old_on_new_session = gw.token(json!({ "sid": "sid-alice-2", "iat": n - 10 }));
    assert_rejected(
        &gw,
        &old_on_new_session,
        "token issued before the revocation, live session",
    )
    .await;

    // Controls: other users are untouched, and a token issued after the revocation works.
    assert_accepted_as(&gw, &bob, "bob", "bob").await;
    let fresh = gw.token(json!({ "sid": "sid-alice-2", "iat": n + 1 }));
    assert_accepted(&gw, &fresh, "alice's token issued after the revocation").await;
}

#[tokio::test]
async fn sec11_a_token_of_a_revoked_session_is_rejected() {
    let gw = TestGateway::start().await;
    gw.create_session("sid-alice-phone", "alice").await;
    let laptop = gw.token(json!({}));
    let phone = gw.token(json!({ "sid": "sid-alice-phone" }));
    assert_accepted(&gw, &laptop, "before the revocation").await;

    assert!(
        SessionStore::revoke_session(gw.store(), "alice", "sid-alice")
            .await
            .unwrap()
    );
    assert_rejected(&gw, &laptop, "token of the revoked session (cached)").await;
    assert_rejected(
        &gw,
        &gw.token(json!({})),
        "a new token naming the revoked session",
    )
    .await;
    assert_accepted(&gw, &phone, "control: the user's other session").await;
}

// ---------------------------------------------------------------------------------------------
// 12. Size, nesting, psychic signatures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec12_oversized_tokens_get_a_fast_4xx() {
    let gw = TestGateway::start().await;

    // An 8 KB+ token: well-formed and validly signed, just too long (default max 8192 bytes).
    let big = gw.token(json!({ "pad": "x".repeat(9000) }));
    assert!(big.len() > 8192);
    assert_rejected(&gw, &big, "9 KB signed token").await;
    assert_rejected(&gw, &"A".repeat(8193), "8 KB of base64url").await;
    // The same through the cookie.
    let before = gw.upstream.count();
    let started = Instant::now();
    let request = Request::get(gw.url(PATH))
        .header("cookie", format!("{COOKIE}={big}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = gw.send(request).await;
    assert_eq!(response.status, 401, "9 KB cookie: {}", response.text());
    assert!(started.elapsed() < FAST);
    assert_eq!(gw.upstream.count(), before);

    // 64 KB cookie and 1 MB headers exceed the request-head limit (16 KiB by default): 431
    // (RFC 6585), before any of it is parsed as a token.
    let cookie_64k = format!("{COOKIE}={}", "A".repeat(64 * 1024));
    let bearer_1m = format!("Bearer {}", "A".repeat(1 << 20));
    let filler_1m = "a".repeat(1 << 20);
    let heads = [
        (
            "64 KB cookie",
            format!("GET {PATH} HTTP/1.1\r\nhost: gw.test\r\ncookie: {cookie_64k}\r\n\r\n"),
        ),
        (
            "1 MB Authorization",
            format!("GET {PATH} HTTP/1.1\r\nhost: gw.test\r\nauthorization: {bearer_1m}\r\n\r\n"),
        ),
        (
            "1 MB other header",
            format!("GET {PATH} HTTP/1.1\r\nhost: gw.test\r\nx-filler: {filler_1m}\r\n\r\n"),
        ),
    ];
    for (what, head) in heads {
        let (status, took) = raw_head(gw.addr, head.into_bytes()).await;
        assert!(took < FAST, "{what}: took {took:?}");
        assert_eq!(
            status,
            Some(431),
            "{what}: expected 431 Request Header Fields Too Large"
        );
        assert_eq!(
            gw.upstream.count(),
            before,
            "{what}: the upstream received the request"
        );
    }
    // The gateway is still serving.
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

/// `n` nested JSON arrays.
fn nested_arrays(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

#[tokio::test]
async fn sec12_deeply_nested_json_is_rejected() {
    // Within the default 8 KB token limit: 2000 levels.
    let gw = TestGateway::start().await;
    let deep = nested_arrays(2000);
    let payload = payload_text(&format!(r#""deep":{deep},"#));
    let header = format!(
        r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","deep":{deep}}}"#,
        gw.key().kid
    );
    let good_header = b64(gw.key().header().to_string());
    let in_payload = gw.key().sign_segments(&good_header, &b64(&payload));
    assert!(in_payload.len() <= 8192);
    assert_rejected(&gw, &in_payload, "2000 nested arrays in the payload").await;
    let in_header = gw
        .key()
        .sign_segments(&b64(&header), &b64(payload_text("")));
    assert_rejected(&gw, &in_header, "2000 nested arrays in the header").await;
    let objects = format!("{}1{}", r#"{"a":"#.repeat(800), "}".repeat(800));
    let in_objects = gw.key().sign_segments(
        &good_header,
        &b64(payload_text(&format!(r#""deep":{objects},"#))),
    );
    assert_rejected(&gw, &in_objects, "800 nested objects in the payload").await;
    assert_accepted(
        &gw,
        &gw.key().sign_segments(&good_header, &b64(payload_text(""))),
        "control",
    )
    .await;

    // With room for 10 000 levels: limits raised so the nesting, not the size, is what is hit.
    let roomy = Setup {
        extra: "tokens: { max_bytes: 64KiB }\nlimits: { max_header_bytes: 128KiB }".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let deep = nested_arrays(10_000);
    let good_header = b64(roomy.key().header().to_string());
    let token = roomy.key().sign_segments(
        &good_header,
        &b64(payload_text(&format!(r#""deep":{deep},"#))),
    );
    assert!(token.len() > 8192 && token.len() < 65536);
    assert_rejected(&roomy, &token, "10 000 nested arrays in the payload").await;
    let header = format!(
        r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}","deep":{deep}}}"#,
        roomy.key().kid
    );
    let token = roomy
        .key()
        .sign_segments(&b64(&header), &b64(payload_text("")));
    assert_rejected(&roomy, &token, "10 000 nested arrays in the header").await;
    // Control: a large but flat token is accepted under these limits.
    let flat = roomy.key().sign_segments(
        &good_header,
        &b64(payload_text(&format!(r#""pad":"{}","#, "x".repeat(20_000)))),
    );
    assert_accepted(&roomy, &flat, "control: large flat token").await;
}

/// Regression: duplicate-member detection scanned a list per member, so a header (parsed before
/// the signature is checked) with many members cost quadratic CPU. `tokens.max_bytes` is now
/// capped at 64KiB as well; this fills that cap with members.
#[tokio::test]
async fn sec12_a_json_header_filled_with_members_is_rejected_fast() {
    // The largest token the config allows, so the member count is what is tested.
    let gw = Setup {
        extra: "tokens: { max_bytes: 64KiB }\nlimits: { max_header_bytes: 128KiB }".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let members: Vec<String> = (0..4_500).map(|i| format!(r#""{i:x}":0"#)).collect();
    let wide = format!(
        r#"{{"alg":"EdDSA","typ":"at+jwt","kid":"{}",{}}}"#,
        gw.key().kid,
        members.join(",")
    );
    let unsigned = format!(
        "{}.{}.{}",
        b64(&wide),
        b64(payload_text("")),
        b64([0u8; 64])
    );
    assert!(unsigned.len() < 64 * 1024, "{}", unsigned.len());
    assert_rejected(&gw, &unsigned, "4 500 header members, bad signature").await;
    // Control: validly signed, wide but legal claims are accepted, also within the bound.
    let wide_payload = payload_text(&format!("{},", members.join(",")));
    let signed = gw
        .key()
        .sign_segments(&b64(gw.key().header().to_string()), &b64(&wide_payload));
    assert!(signed.len() < 64 * 1024, "{}", signed.len());
    let started = Instant::now();
    assert_accepted(&gw, &signed, "4 500 payload members, validly signed").await;
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn sec12_psychic_ecdsa_signatures_are_rejected() {
    let gw = gateway_with(TestKey::generate(Algorithm::ES256, "k-es")).await;
    let (h, p, _) = split3(&gw.token(json!({ "sub": "admin", "roles": ["admin"] })));
    // P-256 group order n.
    let n_hex = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
    let n: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&n_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let r_s_n = [n.as_slice(), n.as_slice()].concat();
    let cases = [
        ("r = s = 0", b64([0u8; 64])),
        (
            "r = s = 0, DER",
            b64([0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]),
        ),
        ("r = s = n", b64(&r_s_n)),
        ("r = 0, s = 1", b64([[0u8; 63].as_slice(), &[1u8]].concat())),
        ("one zero byte", b64([0u8])),
    ];
    for (what, sig) in &cases {
        assert_rejected(&gw, &format!("{h}.{p}.{sig}"), what).await;
    }
    assert_accepted(&gw, &gw.token(json!({})), "control").await;
}

/// `n − s` for a big-endian 32-byte `s < n` (P-256 order), by schoolbook subtraction: the
/// test's own arithmetic, independent of the gateway's.
fn p256_n_minus(s: &[u8]) -> Vec<u8> {
    let n_hex = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
    let n: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&n_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    assert_eq!(borrow, 0);
    out
}

#[tokio::test]
async fn sec12_a_high_s_twin_of_a_valid_es256_signature_is_rejected() {
    let key = TestKey::generate(Algorithm::ES256, "k-es");
    let raw_key = twin(&key);
    let gw = gateway_with(key).await;
    for i in 0..8 {
        // Straight from the crypto library: random S, so high about half the time.
        let payload = claims(json!({ "jti": format!("malleable-{i}") }));
        let (h, p) = (enc(&raw_key.header()), enc(&payload));
        let message = format!("{h}.{p}");
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &raw_key.encoding, Algorithm::ES256)
                .unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&sig).unwrap();
        assert_eq!(raw.len(), 64);
        let flipped = [&raw[..32], &p256_n_minus(&raw[32..])[..]].concat();
        // Of (r, s) and (r, n − s), exactly one is low: that one is accepted, the other —
        // which verifies just as well — is refused, before anything reaches the upstream.
        let (low, high) = if raw[32..] <= flipped[32..] {
            (raw, flipped)
        } else {
            (flipped, raw)
        };
        let high_token = format!("{message}.{}", b64(&high));
        let low_token = format!("{message}.{}", b64(&low));
        assert_rejected(&gw, &high_token, &format!("high-S twin {i}")).await;
        assert_accepted(&gw, &low_token, &format!("low-S original {i}")).await;
        // Once the low-S token is cached, its high-S twin is still refused.
        assert_rejected(&gw, &high_token, &format!("high-S twin {i}, after")).await;
    }
}
