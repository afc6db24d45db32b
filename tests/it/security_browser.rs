//! Black-box tests of the browser flow against docs/security.md 9, 22–27, 32 and 33: a real gateway
//! on `127.0.0.1:0` with an echo upstream, driven by a cookie-keeping [`Browser`] (or by an
//! attacker's page, through `post_form_with`) and by plain HTTP clients. Each test is named
//! after the docs/security.md line it shows. No test asserts a timing.

use crate::common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use common::auth::{
    ALICE_PASSWORD, AuthSetup, BOB_PASSWORD, Browser, MALLORY_PASSWORD, StoreChoice,
};
use common::{RedisServer, SetCookie, TestGateway, TestResponse, send};
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis::clock::Clock;
use serde_json::{Value, json};

const AT: &str = "__Host-portcullis-at";
const RT: &str = "__Secure-portcullis-rt";
const CSRF: &str = "__Host-portcullis-csrf";
/// The refresh cookie's binding (docs/security.md 36).
const RB: &str = "__Host-portcullis-rb";
/// The user agent [`Browser`] sends.
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36";
const WRONG_PASSWORD: &str = "not-the-password-2f9c";

// ---- helpers ------------------------------------------------------------------------------

/// The value a response sets for cookie `name` (not an expiry).
fn cookie_set(r: &TestResponse, name: &str) -> Option<String> {
    r.set_cookies()
        .into_iter()
        .find(|c| c.name == name && !c.expires_now())
        .map(|c| c.value)
}

/// Any request, with the given headers (added in order, so a name may repeat).
async fn call(
    gw: &TestGateway,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> TestResponse {
    let mut req = Request::builder().method(method).uri(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
}

/// The `Cookie` header the browser would send to `path` (cookie paths honoured).
fn cookies_for(b: &Browser, path: &str) -> String {
    b.jar
        .iter()
        .filter(|(_, (_, p))| p == "/" || path == p || path.starts_with(&format!("{p}/")))
        .map(|(n, (v, _))| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every cookie in the jar, whatever its path.
fn all_cookies(b: &Browser) -> String {
    b.jar
        .iter()
        .map(|(n, (v, _))| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// GET the login page, then POST the form with `extra` fields (e.g. `return_to`).
async fn form_login(
    b: &mut Browser,
    user: &str,
    password: &str,
    extra: &[(&str, &str)],
    request_id: &str,
) -> TestResponse {
    let page = b.navigate("/auth/login").await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = b.cookie(CSRF).expect("the login page sets the CSRF cookie");
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("username", user),
        ("password", password),
    ];
    fields.extend_from_slice(extra);
    let origin = b.origin.clone();
    b.post_form_with(
        "/auth/login",
        &fields,
        &[
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
            ("x-request-id", request_id),
        ],
    )
    .await
}

/// A same-origin form POST with the browser's CSRF token and a request id.
async fn form_post(
    b: &mut Browser,
    path: &str,
    extra: &[(&str, &str)],
    request_id: &str,
) -> TestResponse {
    let csrf = b.cookie(CSRF).unwrap_or_default();
    let mut fields = vec![("csrf", csrf.as_str())];
    fields.extend_from_slice(extra);
    let origin = b.origin.clone();
    b.post_form_with(
        path,
        &fields,
        &[
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
            ("x-request-id", request_id),
        ],
    )
    .await
}

/// The ids of alice's (or whoever's) sessions, listed with a bearer token.
async fn session_ids(gw: &TestGateway, bearer: &str) -> Vec<String> {
    let r = gw.api_get("/auth/sessions", bearer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut ids: Vec<String> = r.json()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Status of an API call to a protected route with the browser's cookies.
async fn app_status_with_cookies(gw: &TestGateway, b: &Browser) -> StatusCode {
    call(
        gw,
        "GET",
        "/app/probe",
        &[
            ("cookie", &cookies_for(b, "/app/probe")),
            ("accept", "application/json"),
        ],
        "",
    )
    .await
    .status
}

/// The claims of a JWT (unverified: the test only reads what it was given).
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Events appended to the audit file since `before` events.
async fn new_events(gw: &TestGateway, before: usize) -> Vec<Value> {
    gw.audit_events().await.split_off(before)
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`YYYY-MM-DDTHH:MM:SS[.fff]Z`).
fn rfc3339_utc(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let frac = &text[19..text.len() - 1];
    let digits = frac.strip_prefix('.').unwrap_or("x");
    if !frac.is_empty() && (digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit())) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = text.get(from..to)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hh, mm, ss) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Asserts one audit event has every field docs/security.md 33 asks for.
fn assert_complete_event(
    e: &Value,
    event: &str,
    subject: &str,
    session: Option<&str>,
    request_id: &str,
) {
    assert_eq!(e["event"], event, "{e}");
    let time = e["time"].as_str().unwrap_or_default();
    let at = rfc3339_utc(time).unwrap_or_else(|| panic!("time is not RFC 3339 UTC: {e}"));
    assert!((at - common::now()).abs() < 300, "time is not now: {e}");
    assert!(
        e["reason_id"].as_str().is_some_and(|r| !r.is_empty()),
        "no reason_id: {e}"
    );
    assert_eq!(e["subject"], subject, "{e}");
    assert_eq!(e["client.ip"], "127.0.0.1", "{e}");
    assert_eq!(e["user_agent"], UA, "{e}");
    assert_eq!(e["request_id"], request_id, "{e}");
    if let Some(session) = session {
        assert_eq!(e["session"], session, "{e}");
    }
}

/// The single new event since `before`, checked for completeness.
async fn one_event(
    gw: &TestGateway,
    before: usize,
    event: &str,
    subject: &str,
    session: Option<&str>,
    request_id: &str,
) -> Value {
    let events = new_events(gw, before).await;
    assert_eq!(
        events.len(),
        1,
        "expected exactly one {event} event: {events:#?}"
    );
    assert_complete_event(&events[0], event, subject, session, request_id);
    events[0].clone()
}

/// Every header value and the body of a response as one string, for "contains" checks.
fn everything(r: &TestResponse) -> String {
    let mut out = String::new();
    for (k, v) in &r.headers {
        out.push_str(k.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
        out.push('\n');
    }
    out.push_str(&r.text());
    out
}

/// `token` with one character in its last segment changed (well inside it, so the change is
/// not lost in base64 padding bits).
fn tamper(token: &str) -> String {
    let at = token.len() - 10;
    let old = token.as_bytes()[at];
    let new = if old == b'A' { 'B' } else { 'A' };
    format!("{}{new}{}", &token[..at], &token[at + 1..])
}

// ---- 9: typing --------------------------------------------------------------------------

#[tokio::test]
async fn sec9_an_access_token_sent_to_the_refresh_endpoint_is_refused() {
    let gw = AuthSetup::default().start().await;
    let (access, refresh, _) = gw.api_login("alice", ALICE_PASSWORD).await;

    let r = gw
        .post_json("/auth/refresh", &json!({ "refresh_token": access }), &[])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(!r.text().contains("access_token"), "{}", r.text());

    // Also in the refresh cookie of a browser.
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let browser_access = b.cookie(AT).unwrap();
    b.set_cookie(RT, &browser_access, "/auth");
    let r = b.refresh("/app").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let location = r.headers["location"].to_str().unwrap();
    assert!(location.starts_with("/auth/login"), "{location}");
    assert!(cookie_set(&r, AT).is_none() && cookie_set(&r, RT).is_none());

    // The real refresh token still works: the refusal was about the token's type.
    let r = gw
        .post_json("/auth/refresh", &json!({ "refresh_token": refresh }), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn sec9_a_refresh_token_used_as_an_access_token_is_refused_by_the_proxy() {
    let gw = AuthSetup::default().start().await;
    let (_, refresh, _) = gw.api_login("alice", ALICE_PASSWORD).await;

    let r = gw.api_get("/app/x", &refresh).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = call(
        &gw,
        "GET",
        "/docs/x",
        &[
            ("cookie", &format!("{AT}={refresh}")),
            ("accept", "application/json"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let r = gw.api_get("/auth/sessions", &refresh).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert_eq!(gw.upstream.count(), 0, "the upstream saw a request");
}

// ---- 22: cookies ------------------------------------------------------------------------

/// Checks one auth cookie against docs/security.md 22 and the cookie attributes the README's browser flow names.
fn assert_auth_cookie(c: &SetCookie, persistent: bool) {
    let raw = &c.raw;
    assert!(
        [AT, RT, RB, CSRF].contains(&c.name.as_str()),
        "an unexpected cookie: {raw}"
    );
    assert!(c.has("secure"), "not Secure: {raw}");
    assert!(c.has("httponly"), "not HttpOnly: {raw}");
    let same_site = c.attr("samesite").unwrap_or_default().to_ascii_lowercase();
    assert!(
        same_site == "lax" || same_site == "strict",
        "SameSite is not Lax or Strict: {raw}"
    );
    assert!(!c.has("domain"), "has a Domain: {raw}");
    assert!(
        c.name.len() + 1 + c.value.len() <= 4096,
        "name and value exceed 4096 bytes: {} bytes",
        c.name.len() + c.value.len()
    );
    match c.name.as_str() {
        AT | RB | CSRF => {
            assert!(c.name.starts_with("__Host-"), "{raw}");
            assert_eq!(c.attr("path"), Some("/"), "{raw}");
        }
        _ => {
            assert!(c.name.starts_with("__Secure-"), "{raw}");
            assert_eq!(c.attr("path"), Some("/auth"), "{raw}");
        }
    }
    let lasting = c.has("max-age") || c.has("expires");
    if persistent && c.name != CSRF {
        let age: i64 = c
            .attr("max-age")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("a remembered cookie without Max-Age: {raw}"));
        assert!(age > 0, "{raw}");
    } else {
        assert!(!lasting, "a session cookie with Max-Age or Expires: {raw}");
    }
}

/// Checks every cookie of a response that must set the access and refresh cookies (and the
/// binding cookie, which comes with every refresh cookie).
fn assert_token_cookies(r: &TestResponse, persistent: bool, what: &str) {
    let cookies = r.set_cookies();
    for name in [AT, RT, RB] {
        assert!(
            cookies.iter().any(|c| c.name == name && !c.expires_now()),
            "{what}: {name} not set: {cookies:#?}"
        );
    }
    for c in &cookies {
        assert_auth_cookie(c, persistent);
    }
}

#[tokio::test]
async fn sec22_auth_cookies_are_prefixed_secure_httponly_samesite_without_domain_and_small() {
    let gw = AuthSetup::default().start().await;
    for remember in [false, true] {
        let mut b = gw.browser();
        let page = b.navigate("/auth/login").await;
        let cookies = page.set_cookies();
        assert!(cookies.iter().any(|c| c.name == CSRF), "{cookies:#?}");
        for c in &cookies {
            assert_auth_cookie(c, false);
        }

        let r = b.login("alice", ALICE_PASSWORD, remember).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
        assert_token_cookies(&r, remember, "form login");

        let r = b.refresh("/app").await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
        assert_token_cookies(&r, remember, "form refresh");

        // A cookie refresh by script (JSON answer, token in the header).
        let csrf = b.cookie(CSRF).unwrap();
        let r = call(
            &gw,
            "POST",
            "/auth/refresh",
            &[
                ("cookie", &cookies_for(&b, "/auth/refresh")),
                ("origin", &gw.origin()),
                ("sec-fetch-site", "same-origin"),
                ("x-csrf-token", &csrf),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_token_cookies(&r, remember, "script refresh");

        // Logout expires them with the same names, prefixes and paths.
        let r = form_post(&mut b, "/auth/logout", &[], "logout").await;
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        let expired = r.set_cookies();
        for name in [AT, RT, RB, CSRF] {
            let c = expired
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} not expired: {expired:#?}"));
            assert!(c.expires_now(), "{}", c.raw);
            assert!(
                c.has("secure") && c.has("httponly") && !c.has("domain"),
                "{}",
                c.raw
            );
            let path = if name == RT { "/auth" } else { "/" };
            assert_eq!(c.attr("path"), Some(path), "{}", c.raw);
        }

        // A JSON login of a cookie client (no return_tokens); one round is enough (argon2 is
        // slow in debug builds).
        if !remember {
            let r = gw
                .post_json(
                    "/auth/login",
                    &json!({"username": "bob", "password": BOB_PASSWORD, "remember_me": remember}),
                    &[],
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_token_cookies(&r, remember, "JSON login");
        }
    }
}

// ---- 23: no token in URLs, logs, cookie clients' bodies ------------------------------------

/// Asserts none of `secrets` (nor anything shaped like one of our tokens) is in `text`.
fn assert_no_secret(text: &str, secrets: &[String], what: &str) {
    for s in secrets {
        assert!(
            !text.contains(s.as_str()),
            "{what} contains a secret: {text}"
        );
    }
    for shape in ["eyJ", "prt1.", "prt2."] {
        assert!(!text.contains(shape), "{what} contains {shape}: {text}");
    }
}

#[tokio::test]
async fn sec23_no_token_appears_in_a_location_or_in_the_body_sent_to_a_cookie_client() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    let mut secrets: Vec<String> = Vec::new();
    let mut locations: Vec<String> = Vec::new();
    let mut cookie_bodies: Vec<(String, String)> = Vec::new();
    let mut record = |r: &TestResponse, what: &str, secrets: &mut Vec<String>| {
        for name in [AT, RT, RB, CSRF] {
            if let Some(v) = cookie_set(r, name) {
                secrets.push(v);
            }
        }
        if let Some(l) = r.headers.get("location") {
            locations.push(l.to_str().unwrap().to_owned());
        }
        cookie_bodies.push((what.to_owned(), r.text()));
    };

    let r = b.navigate("/docs/report?page=2").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    record(&r, "redirect to login", &mut secrets);
    let r = form_login(
        &mut b,
        "alice",
        ALICE_PASSWORD,
        &[("return_to", "/docs/report?page=2")],
        "l",
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    record(&r, "form login", &mut secrets);
    let r = b.refresh("/docs/report").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    record(&r, "form refresh", &mut secrets);
    let csrf = b.cookie(CSRF).unwrap();
    let r = call(
        &gw,
        "POST",
        "/auth/refresh",
        &[
            ("cookie", &cookies_for(&b, "/auth/refresh")),
            ("origin", &gw.origin()),
            ("sec-fetch-site", "same-origin"),
            ("x-csrf-token", &csrf),
            ("content-type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    b.absorb(&r.headers);
    record(&r, "script refresh", &mut secrets);
    let r = gw
        .post_json(
            "/auth/login",
            &json!({"username": "alice", "password": ALICE_PASSWORD, "return_to": "/docs"}),
            &[("origin", &gw.origin()), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(cookie_set(&r, AT).is_some(), "a cookie client gets cookies");
    record(&r, "JSON login", &mut secrets);
    // A refresh that fails sends the browser back to the login page.
    let mut stale = b.clone();
    let rt = stale.cookie(RT).unwrap();
    stale.set_cookie(RT, &tamper(&rt), "/auth");
    let r = stale.refresh("/docs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    record(&r, "failed refresh", &mut secrets);
    let r = form_post(&mut b, "/auth/logout", &[], "o").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    record(&r, "logout", &mut secrets);

    assert!(secrets.len() >= 8, "tokens were issued: {secrets:?}");
    assert_eq!(locations.len(), 5, "{locations:?}");
    for l in &locations {
        assert_no_secret(l, &secrets, "a Location");
        assert!(!l.contains("token"), "{l}");
    }
    for (what, body) in &cookie_bodies {
        assert_no_secret(body, &secrets, what);
    }
}

#[tokio::test]
async fn sec23_no_token_or_password_appears_in_the_audit_file_or_in_error_responses() {
    let gw = AuthSetup::default().start().await;
    let (access, refresh, _) = gw.api_login("alice", ALICE_PASSWORD).await;
    let (bob_access, _, _) = gw.api_login("bob", BOB_PASSWORD).await;
    let mut secrets = vec![
        access.clone(),
        refresh.clone(),
        bob_access.clone(),
        ALICE_PASSWORD.to_owned(),
        BOB_PASSWORD.to_owned(),
        WRONG_PASSWORD.to_owned(),
    ];
    // Parts of the tokens an error could echo: the signature, the refresh secret.
    secrets.push(access.rsplit('.').next().unwrap().to_owned());
    secrets.push(refresh.rsplit('.').next().unwrap().to_owned());
    let tampered_access = tamper(&access);
    let tampered_refresh = tamper(&refresh);
    secrets.push(tampered_access.clone());
    secrets.push(tampered_refresh.clone());

    let mut errors: Vec<(&str, TestResponse)> = Vec::new();
    errors.push((
        "tampered bearer",
        gw.api_get("/app/x", &tampered_access).await,
    ));
    errors.push((
        "tampered cookie",
        call(
            &gw,
            "GET",
            "/docs/x",
            &[
                ("cookie", &format!("{AT}={tampered_access}")),
                ("accept", "application/json"),
            ],
            "",
        )
        .await,
    ));
    errors.push((
        "duplicate cookie",
        call(
            &gw,
            "GET",
            "/app/x",
            &[("cookie", &format!("{AT}={access}; {AT}={bob_access}"))],
            "",
        )
        .await,
    ));
    errors.push((
        "cookie and bearer differ",
        call(
            &gw,
            "GET",
            "/app/x",
            &[
                ("cookie", &format!("{AT}={access}")),
                ("authorization", &format!("Bearer {bob_access}")),
            ],
            "",
        )
        .await,
    ));
    errors.push((
        "tampered refresh",
        gw.post_json(
            "/auth/refresh",
            &json!({"refresh_token": tampered_refresh}),
            &[],
        )
        .await,
    ));
    errors.push((
        "access as refresh",
        gw.post_json("/auth/refresh", &json!({"refresh_token": access}), &[])
            .await,
    ));
    errors.push((
        "sessions, tampered",
        gw.api_get("/auth/sessions", &tampered_access).await,
    ));
    errors.push((
        "JSON login, wrong password",
        gw.post_json(
            "/auth/login",
            &json!({"username": "alice", "password": WRONG_PASSWORD}),
            &[],
        )
        .await,
    ));
    errors.push((
        "form login, wrong password",
        form_login(&mut gw.browser(), "alice", WRONG_PASSWORD, &[], "f").await,
    ));
    errors.push((
        "logout without CSRF token",
        call(
            &gw,
            "POST",
            "/auth/logout",
            &[(
                "cookie",
                &format!("{AT}={access}; {RT}={refresh}; {CSRF}=c2VjcmV0LWNzcmYtdG9rZW4tMTIz"),
            )],
            "",
        )
        .await,
    ));
    for (what, r) in &errors {
        assert!(
            r.status.is_client_error(),
            "{what}: {} {}",
            r.status,
            r.text()
        );
        assert_no_secret(&everything(r), &secrets, what);
    }

    // Every 401 and 403 above was audited (the 400s need not be).
    let refusals = errors
        .iter()
        .filter(|(_, r)| matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
        .count();
    let events = gw.audit_events().await;
    assert!(events.len() >= refusals + 2, "{events:#?}");
    let audit = std::fs::read_to_string(gw.audit_path()).unwrap();
    assert_no_secret(&audit, &secrets, "the audit file");
    for p in [
        ALICE_PASSWORD,
        BOB_PASSWORD,
        MALLORY_PASSWORD,
        WRONG_PASSWORD,
    ] {
        assert!(!audit.contains(p), "the audit file holds a password");
    }
}

#[tokio::test]
async fn sec23_every_token_bearing_response_says_cache_control_no_store() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    let mut responses: Vec<(&str, TestResponse)> = Vec::new();
    responses.push(("login page", b.navigate("/auth/login").await));
    responses.push(("form login", b.login("alice", ALICE_PASSWORD, true).await));
    responses.push(("form refresh", b.refresh("/app").await));
    responses.push((
        "JSON login",
        gw.post_json(
            "/auth/login",
            &json!({"username": "bob", "password": BOB_PASSWORD}),
            &[],
        )
        .await,
    ));
    let api = gw
        .post_json(
            "/auth/login",
            &json!({"username": "bob", "password": BOB_PASSWORD, "return_tokens": true}),
            &[],
        )
        .await;
    let refresh = api.json()["refresh_token"].as_str().unwrap().to_owned();
    responses.push(("API login", api));
    responses.push((
        "API refresh",
        gw.post_json("/auth/refresh", &json!({"refresh_token": refresh}), &[])
            .await,
    ));
    let csrf = b.cookie(CSRF).unwrap();
    responses.push((
        "script refresh",
        call(
            &gw,
            "POST",
            "/auth/refresh",
            &[
                ("cookie", &cookies_for(&b, "/auth/refresh")),
                ("x-csrf-token", &csrf),
            ],
            "",
        )
        .await,
    ));
    responses.push(("sessions page", b.navigate("/auth/sessions").await));
    for (what, r) in &responses {
        assert!(
            r.status.is_success() || r.status.is_redirection(),
            "{what}: {}",
            r.status
        );
        let cc = r
            .headers
            .get("cache-control")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(cc.contains("no-store"), "{what}: Cache-Control is {cc:?}");
    }
}

#[tokio::test]
async fn sec23_token_query_parameters_are_dropped_from_the_login_return_path() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    let r = b
        .navigate("/docs/report?access_token=eyJhbGciOi.eyJzdWIi.c2ln&page=2&refresh_token=prt1.x&id_token=i&code=c")
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/auth/login?return_to="), "{location}");
    assert!(
        location.contains("page"),
        "kept the harmless parameter: {location}"
    );
    for bad in [
        "access_token",
        "refresh_token",
        "id_token",
        "code",
        "eyJ",
        "prt1",
    ] {
        assert!(!location.contains(bad), "{bad} in {location}");
    }

    // A crafted login link carrying a token: the redirect after login does not repeat it.
    let r = form_login(
        &mut b,
        "alice",
        ALICE_PASSWORD,
        &[(
            "return_to",
            "/docs/report?access_token=eyJhbGciOi.eyJzdWIi.c2ln&page=2",
        )],
        "t",
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let location = r.headers["location"].to_str().unwrap();
    assert!(location.starts_with("/docs/report"), "{location}");
    assert!(location.contains("page=2"), "{location}");
    assert!(
        !location.contains("access_token") && !location.contains("eyJ"),
        "a token in the post-login Location: {location}"
    );
}

// ---- 24: where tokens come from --------------------------------------------------------

#[tokio::test]
async fn sec24_an_access_cookie_sent_twice_is_not_accepted() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let token = b.cookie(AT).unwrap();
    assert_eq!(app_status_with_cookies(&gw, &b).await, StatusCode::OK);
    let before = gw.upstream.count();

    let once = format!("{AT}={token}");
    let twice_one_header = format!("{AT}={token}; {AT}={token}");
    for headers in [
        vec![("cookie", twice_one_header.as_str())],
        vec![("cookie", once.as_str()), ("cookie", once.as_str())],
        vec![
            ("cookie", once.as_str()),
            ("cookie", "__Host-portcullis-at=planted"),
        ],
    ] {
        let mut h = headers.clone();
        h.push(("accept", "application/json"));
        let r = call(&gw, "GET", "/app/x", &h, "").await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
            "proxy accepted a doubled cookie: {} {}",
            r.status,
            r.text()
        );
        let r = call(&gw, "GET", "/auth/sessions", &h, "").await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
            "the sessions page accepted a doubled cookie: {}",
            r.status
        );
    }
    assert_eq!(gw.upstream.count(), before, "the upstream saw a request");
}

#[tokio::test]
async fn sec24_cookie_and_bearer_for_different_users_are_refused_and_the_upstream_sees_nothing() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let (bob, bob_refresh, bob_sid) = gw.api_login("bob", BOB_PASSWORD).await;
    let (alice, _, _) = gw.api_login("alice", ALICE_PASSWORD).await;
    let alice_sessions = session_ids(&gw, &alice).await;
    let bearer = format!("Bearer {bob}");
    let csrf = b.cookie(CSRF).unwrap();

    for path in ["/app/x", "/docs/x"] {
        let r = call(
            &gw,
            "GET",
            path,
            &[
                ("cookie", &cookies_for(&b, path)),
                ("authorization", &bearer),
                ("accept", "application/json"),
            ],
            "",
        )
        .await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
    // The auth flow refuses them too, and ends nobody's session.
    let r = call(
        &gw,
        "GET",
        "/auth/sessions",
        &[
            ("cookie", &all_cookies(&b)),
            ("authorization", &bearer),
            ("accept", "application/json"),
        ],
        "",
    )
    .await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
        "{}",
        r.status
    );
    for path in ["/auth/logout-all", "/auth/sessions/revoke"] {
        let r = call(
            &gw,
            "POST",
            path,
            &[
                ("cookie", &all_cookies(&b)),
                ("authorization", &bearer),
                ("x-csrf-token", &csrf),
                ("content-type", "application/json"),
            ],
            &json!({"session": bob_sid}).to_string(),
        )
        .await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
    // Alice's refresh cookie next to Bob's bearer: refused, nothing rotated.
    let r = call(
        &gw,
        "POST",
        "/auth/refresh",
        &[
            ("cookie", &cookies_for(&b, "/auth/refresh")),
            ("authorization", &bearer),
            ("x-csrf-token", &csrf),
        ],
        "",
    )
    .await;
    assert!(
        r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
        "{}",
        r.status
    );
    assert!(cookie_set(&r, AT).is_none());

    assert_eq!(gw.upstream.count(), 0, "the upstream saw a request");
    assert_eq!(session_ids(&gw, &alice).await, alice_sessions);
    assert_eq!(session_ids(&gw, &bob).await, vec![bob_sid]);
    let r = gw
        .post_json("/auth/refresh", &json!({"refresh_token": bob_refresh}), &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test]
async fn sec24_an_access_token_in_the_query_string_is_not_accepted() {
    let gw = AuthSetup::default().start().await;
    let (access, _, _) = gw.api_login("alice", ALICE_PASSWORD).await;
    for query in ["access_token", "token", "jwt", AT] {
        let r = call(
            &gw,
            "GET",
            &format!("/app/x?{query}={access}"),
            &[("accept", "application/json")],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{query}");
    }
    assert_eq!(gw.upstream.count(), 0);
}

// ---- 25: cross-site requests and CSRF ---------------------------------------------------

#[tokio::test]
async fn sec25_every_state_changing_endpoint_refuses_cross_site_requests_without_changing_state() {
    let gw = AuthSetup::default().start().await;
    let (alice, _, other_sid) = gw.api_login("alice", ALICE_PASSWORD).await;
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let sessions = session_ids(&gw, &alice).await;
    assert_eq!(sessions.len(), 2);
    let csrf = b.cookie(CSRF).unwrap();
    let jar = b.jar.clone();

    let other_port = format!("http://127.0.0.1:{}", gw.addr.port() ^ 1);
    let https_same_host = format!("https://{}", gw.addr);
    let label_sets: Vec<Vec<(&str, &str)>> = vec![
        vec![("origin", "https://evil.example")],
        vec![("origin", "null")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("origin", "null"), ("sec-fetch-site", "cross-site")],
        vec![
            ("origin", other_port.as_str()),
            ("sec-fetch-site", "same-site"),
        ],
        vec![("origin", https_same_host.as_str())],
    ];
    let forms: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "/auth/login",
            vec![
                ("csrf", csrf.as_str()),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
            ],
        ),
        (
            "/auth/refresh",
            vec![("csrf", csrf.as_str()), ("return_to", "/app")],
        ),
        ("/auth/logout", vec![("csrf", csrf.as_str())]),
        ("/auth/logout-all", vec![("csrf", csrf.as_str())]),
        (
            "/auth/sessions/revoke",
            vec![("csrf", csrf.as_str()), ("session", other_sid.as_str())],
        ),
    ];
    for labels in &label_sets {
        for (path, fields) in &forms {
            let r = b.post_form_with(path, fields, labels).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{path} {labels:?}: {}",
                r.text()
            );
            assert!(
                cookie_set(&r, AT).is_none() && cookie_set(&r, RT).is_none(),
                "{path} {labels:?} set a token cookie"
            );
            assert!(
                !r.headers.contains_key("clear-site-data"),
                "{path} {labels:?}"
            );
            // The same as a script's JSON request.
            let mut headers = labels.clone();
            let cookie = cookies_for(&b, path);
            headers.push(("cookie", &cookie));
            headers.push(("x-csrf-token", &csrf));
            headers.push(("content-type", "application/json"));
            let body =
                json!({"username": "alice", "password": ALICE_PASSWORD, "session": other_sid});
            let r = call(&gw, "POST", path, &headers, &body.to_string()).await;
            assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} {labels:?} (JSON)");
            assert!(cookie_set(&r, AT).is_none() && cookie_set(&r, RT).is_none());
        }
    }

    // Nothing changed: no session created or ended, the cookies are the ones we had, the
    // browser's access token works and its refresh token rotates normally.
    assert_eq!(
        b.jar, jar,
        "a refused request changed the browser's cookies"
    );
    assert_eq!(session_ids(&gw, &alice).await, sessions);
    assert_eq!(app_status_with_cookies(&gw, &b).await, StatusCode::OK);
    let r = b.refresh("/app").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert_eq!(r.headers["location"], "/app");
    assert!(
        cookie_set(&r, RT).is_some(),
        "the refresh token was not rotated normally"
    );
}

#[tokio::test]
async fn sec25_cookie_authenticated_form_posts_without_the_right_csrf_token_are_refused() {
    let gw = AuthSetup::default().start().await;
    let (alice, _, other_sid) = gw.api_login("alice", ALICE_PASSWORD).await;
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let sessions = session_ids(&gw, &alice).await;
    let jar = b.jar.clone();
    let csrf = b.cookie(CSRF).unwrap();
    let wrong = "A".repeat(csrf.len());
    let origin = gw.origin();
    let labels = [
        ("origin", origin.as_str()),
        ("sec-fetch-site", "same-origin"),
    ];

    let endpoints: [(&str, Vec<(&str, &str)>); 4] = [
        ("/auth/logout", vec![]),
        ("/auth/logout-all", vec![]),
        (
            "/auth/sessions/revoke",
            vec![("session", other_sid.as_str())],
        ),
        ("/auth/refresh", vec![("return_to", "/app")]),
    ];
    for (path, extra) in &endpoints {
        for token in [
            None,
            Some(""),
            Some(wrong.as_str()),
            Some(&csrf[..csrf.len() - 1]),
        ] {
            let mut fields = extra.clone();
            if let Some(t) = token {
                fields.push(("csrf", t));
            }
            let r = b.post_form_with(path, &fields, &labels).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{path} csrf={token:?}: {}",
                r.text()
            );
        }
        // The right token, but the browser has no CSRF cookie to match it.
        let mut without = b.clone();
        without.jar.remove(CSRF);
        let mut fields = extra.clone();
        fields.push(("csrf", &csrf));
        let r = without.post_form_with(path, &fields, &labels).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path} without the cookie");
        // A script's request with a wrong header.
        let cookie = cookies_for(&b, path);
        let r = call(
            &gw,
            "POST",
            path,
            &[
                ("cookie", &cookie),
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
                ("x-csrf-token", &wrong),
                ("content-type", "application/json"),
            ],
            &json!({"session": other_sid}).to_string(),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{path} with a wrong X-CSRF-Token"
        );
    }
    // Login CSRF: the login form needs its token too.
    let mut fresh = gw.browser();
    fresh.navigate("/auth/login").await;
    for token in [None, Some(wrong.as_str())] {
        let mut fields = vec![("username", "alice"), ("password", ALICE_PASSWORD)];
        if let Some(t) = token {
            fields.push(("csrf", t));
        }
        let r = fresh.post_form_with("/auth/login", &fields, &labels).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "login csrf={token:?}");
        assert!(cookie_set(&r, AT).is_none());
    }

    assert_eq!(
        b.jar, jar,
        "a refused request changed the browser's cookies"
    );
    assert_eq!(session_ids(&gw, &alice).await, sessions);
    assert_eq!(app_status_with_cookies(&gw, &b).await, StatusCode::OK);
    let r = b.refresh("/app").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(cookie_set(&r, RT).is_some());
}

#[tokio::test]
async fn sec25_get_and_head_of_every_auth_endpoint_change_no_state() {
    let gw = AuthSetup::default().start().await;
    let (alice, _, other_sid) = gw.api_login("alice", ALICE_PASSWORD).await;
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let sessions = session_ids(&gw, &alice).await;
    let csrf = b.cookie(CSRF).unwrap();
    let events_before = gw.audit_events().await.len();

    let every_cookie = all_cookies(&b);
    let revoke = format!("/auth/sessions/revoke?session={other_sid}&csrf={csrf}");
    let paths: [(&str, Option<StatusCode>); 11] = [
        ("/auth/login", Some(StatusCode::OK)),
        ("/auth/login?return_to=/app", Some(StatusCode::OK)),
        ("/auth/refresh", Some(StatusCode::METHOD_NOT_ALLOWED)),
        ("/auth/logout", Some(StatusCode::METHOD_NOT_ALLOWED)),
        ("/auth/logout?csrf=x", Some(StatusCode::METHOD_NOT_ALLOWED)),
        ("/auth/logout-all", Some(StatusCode::METHOD_NOT_ALLOWED)),
        ("/auth/sessions", Some(StatusCode::OK)),
        (&revoke, Some(StatusCode::METHOD_NOT_ALLOWED)),
        ("/.well-known/jwks.json", Some(StatusCode::OK)),
        ("/auth/static/refresh.js", Some(StatusCode::OK)),
        ("/auth/nowhere", None),
    ];
    for method in ["GET", "HEAD"] {
        for (path, expected) in &paths {
            let r = call(
                &gw,
                method,
                path,
                &[
                    ("cookie", &every_cookie),
                    ("origin", &gw.origin()),
                    ("sec-fetch-site", "same-origin"),
                    ("x-csrf-token", &csrf),
                    ("accept", "text/html"),
                ],
                "",
            )
            .await;
            if let Some(status) = expected {
                assert_eq!(r.status, *status, "{method} {path}");
            } else {
                assert!(r.status.is_client_error(), "{method} {path}: {}", r.status);
            }
            for c in r.set_cookies() {
                assert!(c.name == CSRF, "{method} {path} set {}", c.raw);
            }
            assert!(
                !r.headers.contains_key("clear-site-data"),
                "{method} {path}"
            );
        }
    }

    // No session ended or began, no state-changing decision was audited, the access cookie
    // works, and the refresh token was never rotated: refreshing it now rotates it (a token
    // rotated a moment ago would get no successor).
    assert_eq!(session_ids(&gw, &alice).await, sessions);
    let events: Vec<Value> = new_events(&gw, events_before).await;
    assert!(events.is_empty(), "a GET or HEAD was audited: {events:#?}");
    assert_eq!(app_status_with_cookies(&gw, &b).await, StatusCode::OK);
    let r = b.refresh("/app").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    assert!(
        cookie_set(&r, RT).is_some(),
        "the refresh token had been rotated by a GET"
    );
}

// ---- 26: redirects ------------------------------------------------------------------------

/// The return paths of docs/security.md 26 that must end at the default page.
const OPEN_REDIRECTS: &[&str] = &[
    "https://evil",
    "//evil",
    "/\\evil",
    "\\/evil",
    "https:evil",
    "/%2f%2fevil",
    "javascript:alert(1)",
    "data:text/html,x",
    "https://gw@evil",
    "\t/x",
    " /x",
    "/x%0d%0aSet-Cookie:a=b",
];

/// Asserts a POST answered 303 to exactly `expected`, and injected nothing.
fn assert_see_other(r: &TestResponse, expected: &str, what: &str) {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{what}: {}", r.text());
    assert_eq!(r.headers.get_all("location").iter().count(), 1, "{what}");
    assert_eq!(r.headers["location"], expected, "{what}");
    assert!(
        r.set_cookies()
            .iter()
            .all(|c| [AT, RT, RB, CSRF].contains(&c.name.as_str())),
        "{what} injected a cookie"
    );
}

#[tokio::test]
async fn sec26_open_redirect_attempts_after_login_end_at_the_default_page_with_303() {
    let gw = AuthSetup::default().start().await;
    let mut cases: Vec<(&str, &str)> = OPEN_REDIRECTS.iter().map(|r| (*r, "/")).collect();
    cases.push(("/docs/report?x=1", "/docs/report?x=1"));
    // Two logins at a time: argon2 is slow in debug builds, and a request may wait 10 s at most.
    for pair in cases.chunks(2) {
        let mut tasks = tokio::task::JoinSet::new();
        for (requested, expected) in pair {
            let mut b = gw.browser();
            let (requested, expected) = (requested.to_string(), expected.to_string());
            tasks.spawn(async move {
                let r = form_login(
                    &mut b,
                    "alice",
                    ALICE_PASSWORD,
                    &[("return_to", &requested)],
                    "redirect",
                )
                .await;
                (requested, expected, r)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let (requested, expected, r) = done.unwrap();
            assert_see_other(&r, &expected, &format!("login, return_to={requested:?}"));
        }
    }
}

#[tokio::test]
async fn sec26_the_refresh_page_and_the_refresh_post_apply_the_same_redirect_policy() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let page = b.navigate("/auth/login?return_to=//evil.example/x").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text().contains("action=\"/auth/refresh\""),
        "{}",
        page.text()
    );
    assert!(!page.text().contains("evil"), "{}", page.text());
    let mut cases: Vec<(&str, &str)> = OPEN_REDIRECTS.iter().map(|r| (*r, "/")).collect();
    cases.extend([
        ("/x\r\nSet-Cookie:a=b", "/"),
        ("///evil", "/"),
        ("/./\\evil", "/"),
        ("https://evil.example/", "/"),
        ("/app/inbox?x=1", "/app/inbox?x=1"),
    ]);
    for (requested, expected) in cases {
        let r = b.refresh(requested).await;
        assert_see_other(&r, expected, &format!("refresh, return_to={requested:?}"));
    }
}

// ---- 27: throttling -----------------------------------------------------------------------

fn assert_throttled(r: &TestResponse, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        r.text()
    );
    let retry: u64 = r
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("{what}: no Retry-After"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After is not delta-seconds"));
    assert!((1..=900).contains(&retry), "{what}: Retry-After {retry}");
    assert!(
        cookie_set(r, AT).is_none(),
        "{what}: signed in while throttled"
    );
}

async fn json_login(gw: &TestGateway, user: &str, password: &str) -> TestResponse {
    gw.post_json(
        "/auth/login",
        &json!({"username": user, "password": password}),
        &[],
    )
    .await
}

#[tokio::test]
async fn sec27_failed_logins_for_one_account_get_429_with_retry_after_even_with_the_right_password()
{
    let gw = AuthSetup {
        per_user: 3,
        ..AuthSetup::default()
    }
    .start()
    .await;
    for user in ["alice", "Alice", " alice"] {
        let r = json_login(&gw, user, WRONG_PASSWORD).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    }
    assert_throttled(&json_login(&gw, "alice", ALICE_PASSWORD).await, "alice");
    assert_throttled(
        &json_login(&gw, " ALICE ", ALICE_PASSWORD).await,
        "' ALICE '",
    );
    assert_throttled(
        &json_login(&gw, "aLiCe\t", ALICE_PASSWORD).await,
        "'aLiCe\\t'",
    );
    let r = form_login(&mut gw.browser(), "ALICE", ALICE_PASSWORD, &[], "form").await;
    assert_throttled(&r, "form");
    // The account is throttled, not the address: bob still signs in.
    assert_eq!(
        json_login(&gw, "bob", BOB_PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn sec27_failed_logins_from_one_address_get_429_with_retry_after() {
    let gw = AuthSetup {
        per_ip: 3,
        per_user: 50,
        ..AuthSetup::default()
    }
    .start()
    .await;
    for user in ["nobody-1", "nobody-2", "bob"] {
        let r = json_login(&gw, user, WRONG_PASSWORD).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    }
    assert_throttled(&json_login(&gw, "alice", ALICE_PASSWORD).await, "alice");
    assert_throttled(&json_login(&gw, "bob", BOB_PASSWORD).await, "bob");
    let r = form_login(&mut gw.browser(), "alice", ALICE_PASSWORD, &[], "form").await;
    assert_throttled(&r, "form");
}

/// The body of the login form again, with its random CSRF token and the echoed username
/// masked.
fn masked_form(html: &str, username: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).unwrap() + marker.len();
    let end = start + html[start..].find('"').unwrap();
    let html = format!("{}CSRF{}", &html[..start], &html[end..]);
    html.replace(&format!("value=\"{username}\""), "value=\"USER\"")
}

#[tokio::test]
async fn sec27_an_unknown_or_disabled_user_fails_exactly_like_a_wrong_password() {
    let gw = AuthSetup::default().start().await;
    let probe = |user: &'static str, password: &'static str| {
        let gw = &gw;
        async move {
            gw.post_json(
                "/auth/login",
                &json!({"username": user, "password": password}),
                &[("x-request-id", "enumeration-probe")],
            )
            .await
        }
    };
    let reference = probe("alice", WRONG_PASSWORD).await;
    assert_eq!(reference.status, StatusCode::UNAUTHORIZED);
    let shape = |r: &TestResponse| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        (r.status, h, r.body.clone())
    };
    for (user, password) in [
        ("nobody-at-all", WRONG_PASSWORD),
        ("mallory", MALLORY_PASSWORD),
        ("bob", WRONG_PASSWORD),
    ] {
        let r = probe(user, password).await;
        assert_eq!(shape(&r), shape(&reference), "{user} answered differently");
    }

    // The form: same status, same page but for the fresh CSRF token and the echoed name.
    let form = |user: &'static str, password: &'static str| {
        let gw = &gw;
        async move {
            let r = form_login(&mut gw.browser(), user, password, &[], "form-probe").await;
            let cookies: Vec<Vec<(String, String)>> =
                r.set_cookies().into_iter().map(|c| c.attrs).collect();
            (r.status, masked_form(&r.text(), user), cookies)
        }
    };
    let reference = form("alice", WRONG_PASSWORD).await;
    assert_eq!(reference.0, StatusCode::UNAUTHORIZED);
    for (user, password) in [
        ("nobody-at-all", WRONG_PASSWORD),
        ("mallory", MALLORY_PASSWORD),
    ] {
        assert_eq!(form(user, password).await, reference, "{user} (form)");
    }
}

#[tokio::test]
async fn sec27_two_instances_on_one_redis_share_the_throttle_counter() {
    let redis = RedisServer::start();
    let setup = AuthSetup {
        store: StoreChoice::Redis(redis.url()),
        per_user: 3,
        ..AuthSetup::default()
    };
    let a = setup.start().await;
    let b = setup.start().await;
    assert_eq!(
        json_login(&a, "alice", WRONG_PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        json_login(&b, "Alice", WRONG_PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        json_login(&a, "ALICE", WRONG_PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Neither instance saw three failures by itself.
    assert_throttled(&json_login(&b, "alice", ALICE_PASSWORD).await, "instance b");
    assert_throttled(&json_login(&a, "alice", ALICE_PASSWORD).await, "instance a");
    assert_eq!(
        json_login(&b, "bob", BOB_PASSWORD).await.status,
        StatusCode::OK
    );
}

// ---- 32: the gateway's pages --------------------------------------------------------------

fn assert_page_is_hardened(r: &TestResponse, what: &str) {
    assert!(
        r.status.is_success() || r.status.is_client_error(),
        "{what}"
    );
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{what}"
    );
    let csp: Vec<String> = r
        .headers
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(csp.len(), 1, "{what}: {csp:?}");
    let csp = &csp[0];
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-eval"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(csp.contains("default-src"), "{what}: {csp}");
    assert_eq!(r.headers["x-content-type-options"], "nosniff", "{what}");

    let html = r.text().to_ascii_lowercase();
    let mut rest = html.as_str();
    while let Some(i) = rest.find("<script") {
        let tag_end = i + rest[i..].find('>').unwrap();
        let tag = &rest[i..=tag_end];
        assert!(tag.contains(" src="), "{what}: a script without src: {tag}");
        assert!(
            rest[tag_end + 1..].starts_with("</script>"),
            "{what}: a script with a body"
        );
        rest = &rest[tag_end..];
    }
    assert!(
        !html.contains("style="),
        "{what}: an inline style attribute"
    );
    assert!(!html.contains("<style"), "{what}: a style element");
    assert!(!html.contains("javascript:"), "{what}: a javascript: URL");
    // No event-handler attributes (`onclick=`, `onload=`, …).
    for (i, _) in html.match_indices(" on") {
        let name: String = html[i + 3..]
            .chars()
            .take_while(char::is_ascii_alphabetic)
            .collect();
        assert!(
            name.is_empty() || !html[i + 3 + name.len()..].starts_with('='),
            "{what}: an inline event handler on{name}="
        );
    }
}

#[tokio::test]
async fn sec32_the_gateways_pages_have_a_strict_csp_nosniff_and_no_inline_script_or_style() {
    let gw = AuthSetup::default().start().await;
    let mut b = gw.browser();
    assert_page_is_hardened(&b.navigate("/auth/login").await, "login page");
    assert_page_is_hardened(
        &b.navigate("/auth/login?return_to=/docs/%3Cscript%3E").await,
        "login page with return_to",
    );
    let failed = form_login(&mut b, "alice", WRONG_PASSWORD, &[], "x").await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    assert_page_is_hardened(&failed, "failed login");
    assert_eq!(
        b.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let sessions = b.navigate("/auth/sessions").await;
    assert_eq!(sessions.status, StatusCode::OK);
    assert!(sessions.text().contains("Log out everywhere"));
    assert_page_is_hardened(&sessions, "sessions page");
    let refresh_page = b.navigate("/auth/login?return_to=/app").await;
    assert!(refresh_page.text().contains("action=\"/auth/refresh\""));
    assert_page_is_hardened(&refresh_page, "refresh page");
}

#[tokio::test]
async fn sec32_the_login_form_has_a_label_for_each_input() {
    let gw = AuthSetup::default().start().await;
    let page = gw.browser().navigate("/auth/login").await;
    let html = page.text();
    let mut visible = 0;
    for (i, _) in html.match_indices("<input") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        if tag.contains("type=\"hidden\"") {
            continue;
        }
        visible += 1;
        let labelled_by_for = tag
            .split("id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .is_some_and(|id| html.contains(&format!("<label for=\"{id}\"")));
        // …or wrapped in a label.
        let before = &html[..i];
        let wrapped = match (before.rfind("<label"), before.rfind("</label>")) {
            (Some(open), Some(close)) => open > close,
            (Some(_), None) => true,
            (None, _) => false,
        };
        assert!(
            labelled_by_for || wrapped,
            "an input without a label: {tag}"
        );
    }
    assert!(visible >= 3, "username, password and remember-me: {html}");
    assert!(html.contains("<button type=\"submit\">"), "{html}");
    assert!(html.contains("autocomplete=\"current-password\""), "{html}");
}

// ---- 33: audit ----------------------------------------------------------------------------

#[tokio::test]
async fn sec33_each_auth_flow_decision_writes_exactly_one_complete_audit_event() {
    let gw = AuthSetup {
        refresh_grace: "0s".into(),
        clock: Clock::manual(),
        ..AuthSetup::default()
    }
    .start()
    .await;
    let mut b = gw.browser();
    let mut tokens: Vec<String> = Vec::new();

    // login success
    let n = gw.audit_events().await.len();
    let r = form_login(&mut b, "alice", ALICE_PASSWORD, &[], "rid-login-ok").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let access = b.cookie(AT).unwrap();
    tokens.extend([access.clone(), b.cookie(RT).unwrap()]);
    let sid = jwt_claims(&access)["sid"].as_str().unwrap().to_owned();
    let e = one_event(&gw, n, "login.success", "alice", Some(&sid), "rid-login-ok").await;
    assert_eq!(e["reason_id"], "login.ok");

    // login failure
    let n = gw.audit_events().await.len();
    let r = form_login(
        &mut gw.browser(),
        "Alice ",
        WRONG_PASSWORD,
        &[],
        "rid-login-bad",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    one_event(&gw, n, "login.failure", "alice", None, "rid-login-bad").await;

    // refresh
    let n = gw.audit_events().await.len();
    let r = form_post(
        &mut b,
        "/auth/refresh",
        &[("return_to", "/app")],
        "rid-refresh",
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    tokens.extend([b.cookie(AT).unwrap(), b.cookie(RT).unwrap()]);
    one_event(
        &gw,
        n,
        "refresh.success",
        "alice",
        Some(&sid),
        "rid-refresh",
    )
    .await;

    // session revoke (of another session of alice)
    let (api_access, api_refresh, other) = gw.api_login("alice", ALICE_PASSWORD).await;
    tokens.extend([api_access, api_refresh]);
    let n = gw.audit_events().await.len();
    let r = form_post(
        &mut b,
        "/auth/sessions/revoke",
        &[("session", &other)],
        "rid-revoke",
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let e = one_event(
        &gw,
        n,
        "session.revoke",
        "alice",
        Some(&other),
        "rid-revoke",
    )
    .await;
    assert_eq!(e["reason_id"], "session.revoked");

    // logout
    let n = gw.audit_events().await.len();
    let r = form_post(&mut b, "/auth/logout", &[], "rid-logout").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    one_event(&gw, n, "logout", "alice", Some(&sid), "rid-logout").await;

    // logout-all
    let mut b2 = gw.browser();
    assert_eq!(
        b2.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let access2 = b2.cookie(AT).unwrap();
    tokens.extend([access2.clone(), b2.cookie(RT).unwrap()]);
    let sid2 = jwt_claims(&access2)["sid"].as_str().unwrap().to_owned();
    let n = gw.audit_events().await.len();
    let r = form_post(&mut b2, "/auth/logout-all", &[], "rid-logout-all").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    one_event(&gw, n, "logout_all", "alice", Some(&sid2), "rid-logout-all").await;

    // reuse detection: a rotated refresh token presented again after the (zero) grace window
    let (access3, refresh0, sid3) = gw.api_login("bob", BOB_PASSWORD).await;
    tokens.extend([access3, refresh0.clone()]);
    let api_refresh = |rid: &'static str, token: String| {
        let gw = &gw;
        async move {
            call(
                gw,
                "POST",
                "/auth/refresh",
                &[
                    ("content-type", "application/json"),
                    ("user-agent", UA),
                    ("x-request-id", rid),
                ],
                &json!({ "refresh_token": token }).to_string(),
            )
            .await
        }
    };
    let r = api_refresh("rid-rotate", refresh0.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    tokens.push(r.json()["refresh_token"].as_str().unwrap().to_owned());
    tokens.push(r.json()["access_token"].as_str().unwrap().to_owned());
    // The store counts in whole seconds: the reuse comes a second after the rotation.
    gw.advance(Duration::from_secs(1));
    let n = gw.audit_events().await.len();
    let r = api_refresh("rid-reuse", refresh0).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let e = one_event(
        &gw,
        n,
        "refresh.reuse_detected",
        "bob",
        Some(&sid3),
        "rid-reuse",
    )
    .await;
    assert_eq!(e["reason_id"], "refresh.reuse_detected");

    // Nothing secret in the file.
    let audit = std::fs::read_to_string(gw.audit_path()).unwrap();
    for secret in tokens.iter().map(String::as_str).chain([
        ALICE_PASSWORD,
        BOB_PASSWORD,
        MALLORY_PASSWORD,
        WRONG_PASSWORD,
        "eyJ",
        "prt1.",
        "prt2.",
    ]) {
        assert!(
            !audit.contains(secret),
            "the audit file contains {secret:.12}…"
        );
    }
}

#[tokio::test]
async fn sec33_a_401_and_a_403_on_the_proxy_each_write_one_access_event_with_route_and_path() {
    let gw = AuthSetup::default().start().await;
    let (bob, _, bob_sid) = gw.api_login("bob", BOB_PASSWORD).await;

    let n = gw.audit_events().await.len();
    let r = call(
        &gw,
        "GET",
        "/app/inbox?x=1",
        &[
            ("accept", "application/json"),
            ("user-agent", UA),
            ("x-request-id", "rid-401"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let events = new_events(&gw, n).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e["event"], "access.unauthorized", "{e}");
    assert_eq!(e["route.id"], "app", "{e}");
    assert_eq!(e["path"], "/app/inbox", "{e}");
    assert_eq!(e["request_id"], "rid-401", "{e}");
    assert_eq!(e["client.ip"], "127.0.0.1", "{e}");
    assert!(rfc3339_utc(e["time"].as_str().unwrap()).is_some(), "{e}");
    assert!(
        e["reason_id"].as_str().is_some_and(|r| !r.is_empty()),
        "{e}"
    );

    let n = gw.audit_events().await.len();
    let r = call(
        &gw,
        "POST",
        "/docs/new",
        &[
            ("authorization", &format!("Bearer {bob}")),
            ("content-type", "application/json"),
            ("user-agent", UA),
            ("x-request-id", "rid-403"),
        ],
        "{}",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let events = new_events(&gw, n).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_complete_event(
        &events[0],
        "access.forbidden",
        "bob",
        Some(&bob_sid),
        "rid-403",
    );
    assert_eq!(events[0]["route.id"], "docs-write");
    assert_eq!(events[0]["path"], "/docs/new");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn sec33_every_401_and_403_of_the_auth_flow_writes_exactly_one_event() {
    let gw = AuthSetup::default().start().await;
    let origin = gw.origin();
    let json_body = json!({"session": "AAAAAAAAAAAAAAAAAAAAAA"}).to_string();
    // (method, path, headers, body, expected status)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        StatusCode,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/auth/sessions",
            vec![("accept", "application/json")],
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/auth/logout-all",
            vec![("content-type", "application/json")],
            "{}",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/auth/sessions/revoke",
            vec![("content-type", "application/json")],
            &json_body,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/auth/refresh",
            vec![("content-type", "application/json")],
            r#"{"refresh_token":"not-a-refresh-token"}"#,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/auth/logout",
            vec![
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            "",
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/auth/logout-all",
            vec![
                ("origin", &origin),
                ("sec-fetch-site", "same-origin"),
                (
                    "cookie",
                    "__Host-portcullis-csrf=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                ),
            ],
            "",
            // Not signed in: no auth cookie, so no CSRF check applies; refused as such.
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/auth/login",
            vec![("sec-fetch-site", "same-site")],
            "",
            StatusCode::FORBIDDEN,
        ),
    ];
    for (i, (method, path, headers, body, status)) in cases.into_iter().enumerate() {
        let rid = format!("rid-flow-{i}");
        let mut headers = headers;
        headers.push(("user-agent", UA));
        headers.push(("x-request-id", &rid));
        let n = gw.audit_events().await.len();
        let r = call(&gw, method, path, &headers, body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        let events = new_events(&gw, n).await;
        assert_eq!(events.len(), 1, "{method} {path}: {events:#?}");
        let e = &events[0];
        assert!(
            rfc3339_utc(e["time"].as_str().unwrap_or_default()).is_some(),
            "{e}"
        );
        assert!(e["event"].as_str().is_some_and(|v| !v.is_empty()), "{e}");
        assert!(
            e["reason_id"].as_str().is_some_and(|v| !v.is_empty()),
            "{e}"
        );
        assert_eq!(e["client.ip"], "127.0.0.1", "{e}");
        assert_eq!(e["user_agent"], UA, "{e}");
        assert_eq!(e["request_id"], rid.as_str(), "{e}");
        assert_eq!(e["path"], path, "{method} {path}: {e}");
    }
}

// ---- 36: planted refresh cookies --------------------------------------------------------

/// A same-origin `fetch` POST to `/auth/refresh` as the refresh page's script makes it, with
/// exactly the `Cookie` header given (a real browser may send two cookies of one name, which
/// [`Browser`]'s jar cannot hold) and the extra labels (`host`, `origin`) given.
async fn refresh_with_cookies(
    gw: &TestGateway,
    cookie: &str,
    csrf: &str,
    labels: &[(&str, &str)],
) -> TestResponse {
    let origin = gw.origin();
    let mut headers = vec![
        ("cookie", cookie),
        ("x-csrf-token", csrf),
        ("sec-fetch-site", "same-origin"),
        ("user-agent", UA),
    ];
    if !labels.iter().any(|(k, _)| *k == "origin") {
        headers.push(("origin", &origin));
    }
    headers.extend_from_slice(labels);
    call(gw, "POST", "/auth/refresh", &headers, "").await
}

#[tokio::test]
async fn sec36_a_refresh_cookie_planted_by_a_sibling_subdomain_cannot_sign_a_browser_in() {
    let gw = AuthSetup::default().start().await;
    // The attacker signs in to their own account and keeps their refresh cookie.
    let mut attacker = gw.browser();
    assert_eq!(
        attacker.login("bob", BOB_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let planted = attacker.cookie(RT).unwrap();
    assert!(
        attacker.cookie(RB).is_some(),
        "login sets the binding cookie"
    );

    // `evil.example.com` sets it with `Domain=example.com`: the victim's browser (never signed
    // in here) now sends it to the gateway's /auth paths, without the attacker's binding.
    let mut victim = gw.browser();
    victim.set_cookie(RT, &planted, "/auth");
    // The login page offers the sign-in form, not the refresh page.
    let page = victim.navigate("/auth/login?return_to=/app").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text().contains(r#"name="password""#),
        "the login page offered a refresh for a planted cookie"
    );
    // The refresh the page would have posted: refused, audited, cookies expired.
    let before = gw.audit_events().await.len();
    let upstream_before = gw.upstream.count();
    let r = victim.refresh("/app").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(
        r.headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/auth/login"),
        "{:?}",
        r.headers
    );
    assert!(cookie_set(&r, AT).is_none(), "an access cookie was set");
    let expired: Vec<String> = r
        .set_cookies()
        .into_iter()
        .filter(|c| c.expires_now())
        .map(|c| c.name)
        .collect();
    assert!(
        expired.contains(&RT.to_owned()) && expired.contains(&RB.to_owned()),
        "{expired:?}"
    );
    let events = new_events(&gw, before).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["event"], "refresh.failure");
    assert_eq!(events[0]["reason_id"], "refresh.unbound");
    assert_eq!(
        events[0]["subject"], "bob",
        "the audit names whose cookie it was"
    );
    // The victim is not signed in as anyone: the app sends it to the login page.
    assert_eq!(victim.cookie(AT), None);
    assert_eq!(victim.navigate("/app").await.status, StatusCode::SEE_OTHER);
    assert_eq!(
        gw.upstream.count(),
        upstream_before,
        "the upstream saw a request"
    );

    // Nor with a binding cookie of its own (a victim with a session of its own whose refresh
    // cookie is gone), nor with an unbound refresh token of the API kind.
    let mut alice = gw.browser();
    assert_eq!(
        alice.login("alice", ALICE_PASSWORD, false).await.status,
        StatusCode::SEE_OTHER
    );
    let (alice_rt, alice_rb) = (alice.cookie(RT).unwrap(), alice.cookie(RB).unwrap());
    let csrf = alice.cookie(CSRF).unwrap();
    let (_, api_refresh, _) = gw.api_login("bob", BOB_PASSWORD).await;
    for (what, cookie) in [
        (
            "the attacker's cookie with the victim's binding",
            format!("{RT}={planted}; {RB}={alice_rb}; {CSRF}={csrf}"),
        ),
        (
            "an API refresh token as a cookie",
            format!("{RT}={api_refresh}; {RB}={alice_rb}; {CSRF}={csrf}"),
        ),
        (
            "the attacker's cookie alone",
            format!("{RT}={planted}; {CSRF}={csrf}"),
        ),
    ] {
        let r = refresh_with_cookies(&gw, &cookie, &csrf, &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        assert!(cookie_set(&r, AT).is_none(), "{what}");
    }

    // Planted next to the browser's own: whatever the order, the browser's own is the one
    // used — the planted cookie can neither sign it in as the attacker nor sign it out.
    let mut own_rt = alice_rt;
    let mut own_rb = alice_rb;
    for order in ["planted first", "own first"] {
        let cookie = if order == "planted first" {
            format!("{RT}={planted}; {RT}={own_rt}; {RB}={own_rb}; {CSRF}={csrf}")
        } else {
            format!("{RT}={own_rt}; {RT}={planted}; {RB}={own_rb}; {CSRF}={csrf}")
        };
        let r = refresh_with_cookies(&gw, &cookie, &csrf, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{order}: {}", r.text());
        let access = cookie_set(&r, AT).expect("a new access cookie");
        assert_eq!(jwt_claims(&access)["sub"], "alice", "{order}");
        // Rotated, with a new binding.
        let (rt, rb) = (cookie_set(&r, RT).unwrap(), cookie_set(&r, RB).unwrap());
        assert_ne!(rt, own_rt, "{order}");
        assert_ne!(rb, own_rb, "{order}");
        (own_rt, own_rb) = (rt, rb);
    }

    // The gateway behind a DNS name: the planted cookie is also expired on the parent domain
    // it was planted for (a host-only expiry cannot remove a `Domain=` cookie).
    let r = refresh_with_cookies(
        &gw,
        &format!("{RT}={planted}; {CSRF}={csrf}"),
        &csrf,
        &[
            ("host", "gw.example.test"),
            ("origin", "http://gw.example.test"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let parent: Vec<SetCookie> = r
        .set_cookies()
        .into_iter()
        .filter(|c| c.name == RT && c.attr("domain").is_some())
        .collect();
    assert_eq!(parent.len(), 1, "{:?}", r.set_cookies());
    assert_eq!(parent[0].attr("domain"), Some("example.test"));
    assert_eq!(parent[0].attr("path"), Some("/auth"));
    assert!(parent[0].expires_now(), "{}", parent[0].raw);

    // A planted cookie does not stand in for the caller of logout either: the attacker's
    // session is not touched, and it still refreshes for the attacker (with its binding).
    let r = refresh_with_cookies(&gw, &format!("{RT}={planted}; {CSRF}={csrf}"), &csrf, &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let mut stranger = gw.browser();
    stranger.set_cookie(RT, &planted, "/auth");
    stranger.set_cookie(CSRF, &csrf, "/");
    let r = stranger.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = attacker.refresh("/app").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let access = attacker.cookie(AT).unwrap();
    assert_eq!(jwt_claims(&access)["sub"], "bob");
    assert_ne!(attacker.cookie(RT).unwrap(), planted, "rotated");
}
