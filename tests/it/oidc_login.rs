//! Browser sign-in through an external OpenID Provider (docs/security.md 41), black-box,
//! against a real one: `oidc-provider` from npm run by `tests/oidc/provider.mjs` on a loopback
//! port, with its built-in development login and consent pages, which [`sign_in_at`] drives as
//! a browser would (following redirects, posting the forms, keeping the provider's cookies).
//! The gateway is `https://gw.test` to the provider: the provider redirects there, and the
//! test hands the callback's path and query to the gateway on its loopback port.
//!
//! Needs Node.js 20 or newer; the npm project is installed from its lockfile
//! (`npm ci --prefix tests/oidc`) on first use when it is not yet.

use crate::common::auth::{
    ALICE_PASSWORD, AuthSetup, Browser, ISSUER, StoreChoice, demo_users, enc,
};
use crate::common::oidc::spawn_provider;
use crate::common::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use portcullis::config::{Config, ConfigError};

const GATEWAY_CLIENT: &str = "portcullis-gateway";
const GATEWAY_SECRET: &str = "a-gateway-client-secret-for-the-code-flow-0123456789";
const OTHER_CLIENT: &str = "another-app";
const OTHER_SECRET: &str = "another-app-client-secret-for-the-code-flow-0123456789";
const OTHER_REDIRECT: &str = "https://another-app.test/callback";

/// A running provider whose `portcullis-gateway` client may redirect to the callbacks of
/// `provider_ids` at `https://gw.test`; stopped (by its own pid) when dropped.
struct Idp {
    child: Child,
    issuer: String,
    /// The key that signs, as the provider keeps it (`<kid>.key.pem` in `keys`).
    kid: String,
    keys: tempfile::TempDir,
}

impl Idp {
    fn start(provider_ids: &[&str]) -> Self {
        Self::spawn(0, provider_ids, None)
    }

    /// On `port` (0: any free one); with `backchannel`, the URL the provider POSTs its logout
    /// tokens to.
    fn spawn(port: u16, provider_ids: &[&str], backchannel: Option<&str>) -> Self {
        let keys = tempfile::tempdir().unwrap();
        let out = keys.path().join("out.log");
        let kid = format!("{}-k1", provider_ids[0]);
        let mut args = vec![
            "--port".to_owned(),
            port.to_string(),
            "--kids".to_owned(),
            kid.clone(),
            "--key-dir".to_owned(),
            keys.path().display().to_string(),
        ];
        if let Some(uri) = backchannel {
            args.extend(["--backchannel-uri".to_owned(), uri.to_owned()]);
        }
        for id in provider_ids {
            args.extend([
                "--redirect-uri".to_owned(),
                format!("{ISSUER}/auth/oidc/{id}/callback"),
            ]);
        }
        let (child, issuer) = spawn_provider(&args, &out);
        Self {
            child,
            issuer,
            kid,
            keys,
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `issuers:` entry and the `auth.providers` entry for `idp` as provider `id`, with
/// `extra` lines for the provider (indented by six spaces; a `scopes:` line among them
/// replaces the default one).
fn provider_yaml(issuer: &str, id: &str, name: &str, extra: &str) -> (String, String) {
    let issuers = format!(
        "  - issuer: {iss}\n    audiences: [portcullis-tests]\n    require_session: false\n    discovery: {iss}/.well-known/openid-configuration\n    algorithms: [RS256]\n",
        iss = issuer
    );
    let scopes = if extra.contains("scopes:") {
        ""
    } else {
        "      scopes: [openid, email, groups]\n"
    };
    let provider = format!(
        "    - id: {id}\n      name: {name}\n      issuer: {iss}\n      client_id: {GATEWAY_CLIENT}\n      client_secret_file: {id}-secret.txt\n{scopes}      permissions:\n        - {{ claim: groups, via: roles }}\n{extra}",
        iss = issuer
    );
    (issuers, provider)
}

/// A gateway (memory store unless `store` says otherwise) with the users file and the
/// providers `(idp, id, name, extra)`.
async fn gateway_with(providers: &[(&str, &str, &str, &str)], store: StoreChoice) -> TestGateway {
    gateway_on_clock(providers, store, portcullis::clock::Clock::system()).await
}

/// [`gateway_with`] on `clock`.
async fn gateway_on_clock(
    providers: &[(&str, &str, &str, &str)],
    store: StoreChoice,
    clock: portcullis::clock::Clock,
) -> TestGateway {
    gateway_edited(providers, store, clock, |_| {}).await
}

/// [`gateway_on_clock`], with `edit` applied to the harness's setup first.
async fn gateway_edited(
    providers: &[(&str, &str, &str, &str)],
    store: StoreChoice,
    clock: portcullis::clock::Clock,
    edit: impl FnOnce(&mut AuthSetup),
) -> TestGateway {
    let mut issuers = String::new();
    let mut list = String::new();
    for (issuer, id, name, extra) in providers {
        let (i, p) = provider_yaml(issuer, id, name, extra);
        issuers.push_str(&i);
        list.push_str(&p);
    }
    let mut setup = AuthSetup {
        store,
        clock,
        auth_extra: format!("  providers:\n{list}"),
        extra: format!("issuers:\n{issuers}"),
        ..AuthSetup::default()
    };
    edit(&mut setup);
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), &setup.users).unwrap();
    for (_, id, _, _) in providers {
        std::fs::write(dir.path().join(format!("{id}-secret.txt")), GATEWAY_SECRET).unwrap();
    }
    // The key sealing the provider's refresh tokens, for the providers that name it.
    std::fs::write(dir.path().join(RT_KEY_FILE), b64_std_bytes(&RT_KEY)).unwrap();
    let running = launch(
        &setup.yaml(&upstream.url()),
        dir.path(),
        setup.clock.clone(),
    )
    .await;
    TestGateway::new(running, upstream, dir, Vec::new())
}

async fn gateway(idp: &Idp) -> TestGateway {
    gateway_with(
        &[(
            &idp.issuer,
            "local",
            "Local IdP",
            "      required_groups: [staff]\n",
        )],
        StoreChoice::Memory,
    )
    .await
}

/// A plain HTTP client for the provider's pages: follows nothing by itself, keeps cookies
/// by name (the provider scopes them by path; sending them all is harmless here).
#[derive(Default)]
struct ProviderClient {
    jar: BTreeMap<String, String>,
}

impl ProviderClient {
    async fn request(&mut self, method: &str, url: &str, form: Option<&str>) -> TestResponse {
        let mut req = Request::builder().method(method).uri(url);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", cookies.join("; "));
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                Bytes::from(f.to_owned())
            }
            None => Bytes::new(),
        };
        let r = send(req.body(Full::new(body)).unwrap()).await;
        for c in r.set_cookies() {
            if c.expires_now() {
                self.jar.remove(&c.name);
            } else {
                self.jar.insert(c.name, c.value);
            }
        }
        r
    }

    /// Follows the provider's redirects and pages from `url`, signing in as `login` and
    /// granting consent (or cancelling at the login page with `abort`), until the provider
    /// sends the browser to another origin: that URL.
    async fn drive(&mut self, issuer: &str, mut url: String, login: &str, abort: bool) -> String {
        let mut form: Option<String> = None;
        for _ in 0..20 {
            let r = match form.take() {
                Some(f) => self.request("POST", &url, Some(&f)).await,
                None => self.request("GET", &url, None).await,
            };
            if r.status.is_redirection() {
                let location = r.headers["location"].to_str().unwrap().to_owned();
                url = if location.starts_with('/') {
                    format!("{issuer}{location}")
                } else {
                    location
                };
                if !url.starts_with(issuer) {
                    return url;
                }
                continue;
            }
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let page = r.text();
            if page.contains(r#"name="prompt" value="login""#) {
                if abort {
                    url = format!("{url}/abort");
                    continue;
                }
                form = Some(format!("prompt=login&login={}&password=any", enc(login)));
            } else if page.contains(r#"name="prompt" value="consent""#) {
                form = Some("prompt=consent".to_owned());
            } else {
                panic!("an unexpected provider page: {page}");
            }
        }
        panic!("the provider kept redirecting");
    }
}

/// The path and query of a callback URL to `https://gw.test`.
fn callback_path(url: &str) -> String {
    url.strip_prefix(ISSUER)
        .unwrap_or_else(|| panic!("not a callback to the gateway: {url}"))
        .to_owned()
}

/// Starts a sign-in at the gateway through provider `id` with `browser`, returning the
/// authorization URL the gateway redirected to.
async fn start(browser: &mut Browser, id: &str, return_to: &str) -> String {
    let r = browser
        .navigate(&format!("/auth/oidc/{id}?return_to={}", enc(return_to)))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    r.headers["location"].to_str().unwrap().to_owned()
}

/// A whole sign-in as `login` through provider `id` at `idp`: the callback's answer.
async fn sign_in_at(browser: &mut Browser, idp: &Idp, id: &str, login: &str) -> TestResponse {
    let authorize = start(browser, id, "/docs").await;
    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, login, false)
        .await;
    browser.navigate(&callback_path(&callback)).await
}

async fn sign_in(browser: &mut Browser, idp: &Idp, login: &str) -> TestResponse {
    sign_in_at(browser, idp, "local", login).await
}

/// GET `path` as `browser` (its access cookie), without following anything.
async fn get(browser: &mut Browser, path: &str) -> TestResponse {
    browser.navigate(path).await
}

fn query_param(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {url}"))
        .to_owned()
}

fn replace_param(url: &str, name: &str, value: &str) -> String {
    let old = format!("{name}={}", query_param(url, name));
    url.replacen(&old, &format!("{name}={value}"), 1)
}

fn reasons(events: &[serde_json::Value], event: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == event)
        .map(|e| e["reason_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sec41_a_sign_in_through_the_provider_ends_in_a_gateway_session_with_the_mapped_permissions()
 {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();

    // The login page offers the provider next to the password form.
    let page = browser.navigate("/auth/login?return_to=/docs").await;
    assert!(
        page.text().contains("Sign in with Local IdP"),
        "{}",
        page.text()
    );
    assert!(
        page.text()
            .contains(r#"href="/auth/oidc/local?return_to=%2Fdocs""#)
    );
    assert!(page.text().contains(r#"name="password""#));

    let authorize = start(&mut browser, "local", "/docs").await;
    assert!(
        authorize.starts_with(&format!("{}/auth?", idp.issuer)),
        "{authorize}"
    );
    assert_eq!(query_param(&authorize, "code_challenge_method"), "S256");
    assert_eq!(query_param(&authorize, "code_challenge").len(), 43);
    assert_eq!(query_param(&authorize, "client_id"), GATEWAY_CLIENT);
    assert_eq!(query_param(&authorize, "scope"), "openid%20email%20groups");
    let oidc_cookie = browser
        .cookie("__Host-portcullis-oidc")
        .expect("binding cookie");
    assert_eq!(oidc_cookie.len(), 43);

    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, "alice", false)
        .await;
    let done = browser.navigate(&callback_path(&callback)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(done.headers["location"], "/docs");
    let names: Vec<String> = done.set_cookies().into_iter().map(|c| c.name).collect();
    for cookie in [
        "__Host-portcullis-at",
        "__Secure-portcullis-rt",
        "__Host-portcullis-rb",
        "__Host-portcullis-csrf",
    ] {
        assert!(names.iter().any(|n| n == cookie), "{cookie} in {names:?}");
    }

    // The access token reaches a protected route with the permissions the provider's groups
    // map to (reader), as the provider's user `<iss>#alice`.
    let r = get(&mut browser, "/docs").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = gw.upstream.last();
    assert_eq!(seen.headers["x-auth-permissions"], "docs:read");
    let subject = format!("{}#alice", idp.issuer);
    assert_eq!(seen.headers["x-auth-subject"], subject.as_str());
    // Not an editor: writing is forbidden.
    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let w = browser.post_form("/docs", &[("csrf", &csrf)]).await;
    assert_eq!(w.status, StatusCode::FORBIDDEN);

    // The sessions page shows the provider.
    let html = get(&mut browser, "/auth/sessions").await;
    assert_eq!(html.status, StatusCode::OK, "{}", html.text());
    assert!(
        html.text().contains("Signed in with</dt><dd>Local IdP"),
        "{}",
        html.text()
    );
    let at = browser.cookie("__Host-portcullis-at").unwrap();
    let list = gw.api_get("/auth/sessions", &at).await.json();
    assert_eq!(list["subject"], subject.as_str());
    assert_eq!(list["sessions"][0]["provider"], "local");

    // The gateway's rotating refresh keeps the session's permissions.
    browser.jar.remove("__Host-portcullis-at");
    let refreshed = browser.refresh("/docs").await;
    assert_eq!(
        refreshed.status,
        StatusCode::SEE_OTHER,
        "{}",
        refreshed.text()
    );
    let r = get(&mut browser, "/docs").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read"
    );

    let events = gw.audit_events().await;
    assert_eq!(reasons(&events, "login.oidc_started"), ["oidc.started"]);
    assert_eq!(reasons(&events, "login.success"), ["login.oidc"]);
    let metrics = oidc_metrics(&gw);
    for line in [
        r#"portcullis_oidc_events_total{event="login.oidc_started",reason="oidc.started"} 1"#,
        r#"portcullis_oidc_events_total{event="login.success",reason="login.oidc"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// The `portcullis_oidc_events_total` lines of the gateway's metrics.
fn oidc_metrics(gw: &TestGateway) -> String {
    gw.running
        .gateway()
        .metrics()
        .render(&portcullis::metrics::Gauges::default())
        .lines()
        .filter(|l| l.starts_with("portcullis_oidc_events_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn sec41_an_editor_at_the_provider_may_write_through_the_gateway() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let done = sign_in(&mut browser, &idp, "editor-ann").await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let w = browser.post_form("/docs", &[("csrf", &csrf)]).await;
    assert_eq!(w.status, StatusCode::OK, "{}", w.text());
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read,docs:write"
    );
}

#[tokio::test]
async fn sec41_a_replayed_or_missing_state_is_refused_on_the_login_page() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, "alice", false)
        .await;
    let path = callback_path(&callback);
    assert_eq!(browser.navigate(&path).await.status, StatusCode::SEE_OTHER);

    // The same answer again: its state was used.
    let mut again = gw.browser();
    again.jar = browser.jar.clone();
    again.jar.remove("__Host-portcullis-at");
    let replay = again.navigate(&path).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.headers.get("location").is_none());
    assert!(
        replay.text().contains("expired or was already used"),
        "{}",
        replay.text()
    );
    assert!(
        !replay
            .set_cookies()
            .iter()
            .any(|c| c.name == "__Host-portcullis-at")
    );

    // No state at all, or one never issued.
    let code = query_param(&callback, "code");
    let none = again
        .navigate(&format!("/auth/oidc/local/callback?code={code}"))
        .await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    let forged = again
        .navigate(&format!(
            "/auth/oidc/local/callback?code={code}&state=made-up"
        ))
        .await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);

    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "login.failure"),
        ["oidc.state", "oidc.state", "oidc.state"]
    );
}

#[tokio::test]
async fn sec41_a_callback_opened_in_another_browser_is_refused() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    // The attacker starts a sign-in and signs in at the provider as themself...
    let mut attacker = gw.browser();
    let authorize = start(&mut attacker, "local", "/docs").await;
    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, "mallory", false)
        .await;
    // ...and gets the victim's browser to open the callback: no session for the victim.
    let mut victim = gw.browser();
    let r = victim.navigate(&callback_path(&callback)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(victim.cookie("__Host-portcullis-at").is_none());
    // And the state is spent: the attacker's own browser cannot use it after that either.
    let r = attacker.navigate(&callback_path(&callback)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "login.failure"),
        ["oidc.browser", "oidc.state"]
    );
}

#[tokio::test]
async fn sec41_an_answer_naming_another_issuer_is_refused_as_a_mix_up() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, "alice", false)
        .await;
    assert_eq!(query_param(&callback, "iss"), enc(&idp.issuer));
    let mixed = replace_param(&callback, "iss", &enc("https://evil.test"));
    let r = browser.navigate(&callback_path(&mixed)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(browser.cookie("__Host-portcullis-at").is_none());
    let events = gw.audit_events().await;
    assert_eq!(reasons(&events, "login.failure"), ["oidc.issuer"]);
}

#[tokio::test]
async fn sec41_several_tabs_may_sign_in_at_once() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let first = start(&mut browser, "local", "/docs").await;
    let second = start(&mut browser, "local", "/app").await;
    let cb2 = ProviderClient::default()
        .drive(&idp.issuer, second, "alice", false)
        .await;
    let cb1 = ProviderClient::default()
        .drive(&idp.issuer, first, "alice", false)
        .await;
    let r2 = browser.navigate(&callback_path(&cb2)).await;
    assert_eq!(r2.status, StatusCode::SEE_OTHER, "{}", r2.text());
    assert_eq!(r2.headers["location"], "/app");
    let r1 = browser.navigate(&callback_path(&cb1)).await;
    assert_eq!(r1.status, StatusCode::SEE_OTHER, "{}", r1.text());
    assert_eq!(r1.headers["location"], "/docs");
}

#[tokio::test]
async fn sec41_an_id_token_with_another_nonce_is_refused() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    // The provider is asked for another nonce than the one the gateway keeps for this state.
    let tampered = replace_param(&authorize, "nonce", "a-nonce-the-gateway-never-made");
    let callback = ProviderClient::default()
        .drive(&idp.issuer, tampered, "alice", false)
        .await;
    let r = browser.navigate(&callback_path(&callback)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(browser.cookie("__Host-portcullis-at").is_none());
    let events = gw.audit_events().await;
    assert_eq!(reasons(&events, "login.failure"), ["oidc.nonce"]);
    let line = r#"portcullis_oidc_events_total{event="login.failure",reason="oidc.nonce"} 1"#;
    assert!(oidc_metrics(&gw).contains(line));
}

#[tokio::test]
async fn sec41_an_id_token_issued_to_another_client_is_refused_by_the_verify_stage() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    // A real ID token of the same provider, for another relying party: the test is that
    // client, through the code flow with PKCE.
    let verifier = "a-pkce-verifier-of-the-other-client-0123456789abcdef";
    let challenge = portcullis::auth_flow::oidc::s256(verifier);
    let authorize = format!(
        "{}/auth?response_type=code&client_id={OTHER_CLIENT}&redirect_uri={}&scope=openid&state=s1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256",
        idp.issuer,
        enc(OTHER_REDIRECT)
    );
    let mut client = ProviderClient::default();
    let callback = client.drive(&idp.issuer, authorize, "alice", false).await;
    assert!(callback.starts_with(OTHER_REDIRECT), "{callback}");
    let code = query_param(&callback, "code");
    let token = send(
        Request::post(format!("{}/token", idp.issuer))
            .header(
                "authorization",
                format!("Basic {}", b64_std(&format!("{OTHER_CLIENT}:{OTHER_SECRET}"))),
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}",
                enc(OTHER_REDIRECT)
            ))))
            .unwrap(),
    )
    .await;
    assert_eq!(token.status, StatusCode::OK, "{}", token.text());
    let id_token = token.json()["id_token"].as_str().unwrap().to_owned();

    let runtime = gw.running.gateway().runtime();
    let verifier = &runtime.identify.verifier;
    let issuer = verifier
        .keys
        .issuers
        .iter()
        .position(|i| *i.iss == *idp.issuer)
        .unwrap();
    let metrics = gw.running.gateway().metrics();
    let now = gw.now();
    use portcullis::pipeline::verify::{TokenError, verify_id_token};
    // For its own client it verifies; for the gateway's it is refused.
    let own = verify_id_token(&id_token, verifier, issuer, OTHER_CLIENT, now, metrics).unwrap();
    assert_eq!(&*own.subject, "alice");
    assert_eq!(own.nonce.as_deref(), Some("n1"));
    assert_eq!(
        verify_id_token(&id_token, verifier, issuer, GATEWAY_CLIENT, now, metrics).unwrap_err(),
        TokenError::WrongAudience
    );
    // Nor is it an access token of that issuer (its `typ` is not at+jwt).
    assert_eq!(
        gw.get_bearer("/docs", &id_token).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A changed byte of it verifies for nobody.
    let mut forged = id_token.clone().into_bytes();
    let at = forged.len() - 5;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(verify_id_token(&forged, verifier, issuer, OTHER_CLIENT, now, metrics).is_err());
}

fn b64_std(text: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)
}

#[tokio::test]
async fn sec41_pkce_is_required_by_the_provider_so_a_flow_without_it_never_signs_in() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let challenge = query_param(&authorize, "code_challenge");
    let stripped = authorize
        .replace(&format!("&code_challenge={challenge}"), "")
        .replace("&code_challenge_method=S256", "");
    let answer = ProviderClient::default()
        .drive(&idp.issuer, stripped, "alice", false)
        .await;
    // The provider refuses the request itself and sends the error to the callback.
    assert_eq!(query_param(&answer, "error"), "invalid_request");
    let r = browser.navigate(&callback_path(&answer)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(browser.cookie("__Host-portcullis-at").is_none());
}

#[tokio::test]
async fn sec41_a_client_starting_sign_ins_in_a_loop_is_throttled_before_it_fills_the_store() {
    let idp = Idp::start(&["local"]);
    // One failed login per window allowed: ten starts.
    let gw = gateway_edited(
        &[(&idp.issuer, "local", "Local IdP", "")],
        StoreChoice::Memory,
        portcullis::clock::Clock::system(),
        |setup| setup.per_ip = 1,
    )
    .await;
    let mut browser = gw.browser();
    for _ in 0..10 {
        start(&mut browser, "local", "/docs").await;
    }
    let r = browser.navigate("/auth/oidc/local?return_to=%2Fdocs").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.headers.get("location").is_none(), "no state, no redirect");
    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "login.oidc_started").last().unwrap(),
        "oidc.throttled"
    );
}

#[tokio::test]
async fn sec41_access_denied_at_the_provider_ends_on_the_login_page_with_a_message() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let answer = ProviderClient::default()
        .drive(&idp.issuer, authorize, "alice", true)
        .await;
    assert_eq!(query_param(&answer, "error"), "access_denied");
    let r = browser.navigate(&callback_path(&answer)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.headers.get("location").is_none(), "never a redirect");
    let text = r.text();
    assert!(
        text.contains("cancelled or refused by the provider"),
        "{text}"
    );
    assert!(text.contains("Sign in with Local IdP"), "{text}");
    let events = gw.audit_events().await;
    assert_eq!(reasons(&events, "login.failure"), ["oidc.provider_error"]);
}

#[tokio::test]
async fn sec41_a_user_outside_the_required_groups_is_refused() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let r = sign_in(&mut browser, &idp, "outsider-olga").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("not allowed to sign in here"));
    assert!(browser.cookie("__Host-portcullis-at").is_none());
}

#[tokio::test]
async fn sec41_logout_and_logout_all_end_provider_login_sessions() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut laptop = gw.browser();
    let mut phone = gw.browser();
    let mut tablet = gw.browser();
    for b in [&mut laptop, &mut phone, &mut tablet] {
        assert_eq!(
            sign_in(b, &idp, "alice").await.status,
            StatusCode::SEE_OTHER
        );
        assert_eq!(get(b, "/docs").await.status, StatusCode::OK);
    }
    let laptop_at = laptop.cookie("__Host-portcullis-at").unwrap();

    // Logout ends this session: its access token is refused at once.
    let csrf = laptop.cookie("__Host-portcullis-csrf").unwrap();
    let r = laptop.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert!(
        r.status.is_redirection() || r.status.is_success(),
        "{}",
        r.status
    );
    assert_eq!(
        gw.get_bearer("/docs", &laptop_at).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(get(&mut phone, "/docs").await.status, StatusCode::OK);

    // Logout-all from the phone ends the tablet's too.
    let tablet_at = tablet.cookie("__Host-portcullis-at").unwrap();
    let csrf = phone.cookie("__Host-portcullis-csrf").unwrap();
    let r = phone
        .post_form("/auth/logout-all", &[("csrf", &csrf)])
        .await;
    assert!(
        r.status.is_redirection() || r.status.is_success(),
        "{}",
        r.status
    );
    assert_eq!(
        gw.get_bearer("/docs", &tablet_at).await.status,
        StatusCode::UNAUTHORIZED
    );
    // And its refresh token is dead: the refresh does not sign it back in.
    tablet.jar.remove("__Host-portcullis-at");
    let r = tablet.refresh("/docs").await;
    assert!(
        tablet.cookie("__Host-portcullis-at").is_none(),
        "{}",
        r.status
    );
}

#[tokio::test]
async fn sec41_the_same_sub_at_two_providers_is_two_users_and_logout_all_at_one_leaves_the_other() {
    let a = Idp::start(&["a"]);
    let b = Idp::start(&["b"]);
    let gw = gateway_with(
        &[
            (&a.issuer, "a", "Provider A", ""),
            (&b.issuer, "b", "Provider B", ""),
        ],
        StoreChoice::Memory,
    )
    .await;
    let mut at_a = gw.browser();
    let mut at_b = gw.browser();
    assert_eq!(
        sign_in_at(&mut at_a, &a, "a", "alice").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in_at(&mut at_b, &b, "b", "alice").await.status,
        StatusCode::SEE_OTHER
    );
    get(&mut at_a, "/docs").await;
    let sub_a = gw.upstream.last().headers["x-auth-subject"].clone();
    get(&mut at_b, "/docs").await;
    let sub_b = gw.upstream.last().headers["x-auth-subject"].clone();
    assert_eq!(sub_a, format!("{}#alice", a.issuer).as_str());
    assert_eq!(sub_b, format!("{}#alice", b.issuer).as_str());

    let csrf = at_a.cookie("__Host-portcullis-csrf").unwrap();
    at_a.post_form("/auth/logout-all", &[("csrf", &csrf)]).await;
    let b_at = at_b.cookie("__Host-portcullis-at").unwrap();
    assert_eq!(gw.get_bearer("/docs", &b_at).await.status, StatusCode::OK);
}

#[tokio::test]
async fn sec41_with_one_provider_and_no_users_file_the_login_page_redirects_at_once() {
    let idp = Idp::start(&["local"]);
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("local-secret.txt"), GATEWAY_SECRET).unwrap();
    let (issuers, provider) = provider_yaml(&idp.issuer, "local", "Local IdP", "");
    let yaml = format!(
        r#"
listeners:
  - bind: 127.0.0.1:0
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
issuers:
{issuers}upstreams:
  echo: {{ url: "{}", response_timeout: 5s }}
routes:
  - {{ id: docs-read, path: /docs, methods: [GET], upstream: echo, policy: {{ all_of: [docs:read] }} }}
auth:
  issuer: {ISSUER}
  audience: gw-tests
  providers:
{provider}"#,
        upstream.url()
    );
    let running = launch(&yaml, dir.path(), portcullis::clock::Clock::system()).await;
    let gw = TestGateway::new(running, upstream, dir, Vec::new());
    let mut browser = gw.browser();
    let r = browser.navigate("/auth/login?return_to=/docs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/auth/oidc/local?return_to=%2Fdocs");
    // No password login: the users file is not there.
    let refused = gw
        .post_json(
            "/auth/login",
            &serde_json::json!({"username": "alice", "password": ALICE_PASSWORD}),
            &[],
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let done = sign_in(&mut browser, &idp, "alice").await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(get(&mut browser, "/docs").await.status, StatusCode::OK);
}

#[tokio::test]
async fn sec41_a_provider_login_on_one_instance_is_signed_in_on_another_sharing_redis() {
    let idp = Idp::start(&["local"]);
    let redis = RedisServer::start();
    let one = gateway_with(
        &[(&idp.issuer, "local", "Local IdP", "")],
        StoreChoice::Redis(redis.url()),
    )
    .await;
    let two = gateway_with(
        &[(&idp.issuer, "local", "Local IdP", "")],
        StoreChoice::Redis(redis.url()),
    )
    .await;
    // Started on one, answered on the other: the state lives in Redis.
    let mut browser = one.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, "alice", false)
        .await;
    let mut other = two.browser();
    other.jar = browser.jar.clone();
    let r = other.navigate(&callback_path(&callback)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let at = other.cookie("__Host-portcullis-at").unwrap();
    assert_eq!(one.get_bearer("/docs", &at).await.status, StatusCode::OK);
    // The session record (with its provider) is read back from Redis by the sessions page.
    let list = one.api_get("/auth/sessions", &at).await.json();
    assert_eq!(list["sessions"][0]["provider"], "local");
    // Its state is spent on both.
    let r = browser.navigate(&callback_path(&callback)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

// ---- config errors ----

fn base_yaml(issuers: &str, provider: &str, users: bool) -> String {
    let users = if users {
        "  users_file: users.yaml\n"
    } else {
        ""
    };
    format!(
        "listeners:\n  - bind: 127.0.0.1:0\nissuers:\n{issuers}upstreams:\n  app: {{ echo: true }}\nroutes:\n  - {{ path: /, upstream: app, policy: public }}\nauth:\n  issuer: https://gw.test\n{users}  providers:\n{provider}"
    )
}

const DISCOVERY_ISSUER: &str = "  - issuer: http://127.0.0.1:9\n    audiences: [x]\n    discovery: http://127.0.0.1:9/.well-known/openid-configuration\n";

fn provider_entry(extra: &str) -> String {
    format!(
        "    - id: corp\n      name: Corp\n      issuer: http://127.0.0.1:9\n      client_id: gw\n      client_secret_file: secret.txt\n{extra}"
    )
}

fn load(yaml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    std::fs::write(dir.path().join("raw.key"), RT_KEY).unwrap();
    std::fs::write(
        dir.path().join("b64.key"),
        format!("{}\n", b64_std_bytes(&RT_KEY)),
    )
    .unwrap();
    std::fs::write(dir.path().join("short.key"), "c2hvcnQ=\n").unwrap();
    Config::from_yaml(yaml, dir.path())
}

fn refused(yaml: &str, expected: &[&str]) {
    let message = match load(yaml) {
        Ok(_) => panic!("accepted a broken config:\n{yaml}"),
        Err(e) => e.to_string(),
    };
    for want in expected {
        assert!(
            message.contains(want),
            "the message lacks `{want}`: {message}"
        );
    }
}

#[test]
fn sec41_a_valid_provider_config_loads() {
    load(&base_yaml(DISCOVERY_ISSUER, &provider_entry(""), true)).unwrap();
    load(&base_yaml(DISCOVERY_ISSUER, &provider_entry(""), false)).unwrap();
    // The refresh-token key, raw or in base64.
    for file in ["raw.key", "b64.key"] {
        let extra = format!(
            "      scopes: [openid, offline_access]\n      refresh_token_key_file: {file}\n      provider_refresh_interval: 10m\n"
        );
        load(&base_yaml(DISCOVERY_ISSUER, &provider_entry(&extra), true)).unwrap();
    }
}

#[test]
fn sec41_a_refresh_token_key_that_is_not_32_bytes_or_a_bad_interval_is_refused() {
    for (extra, want) in [
        (
            "      refresh_token_key_file: short.key\n",
            "auth.providers[0].refresh_token_key_file",
        ),
        (
            "      refresh_token_key_file: missing.key\n",
            "auth.providers[0].refresh_token_key_file",
        ),
        (
            "      provider_refresh_interval: 1s\n",
            "auth.providers[0].provider_refresh_interval",
        ),
        (
            "      provider_refresh_interval: soon\n",
            "auth.providers[0].provider_refresh_interval",
        ),
    ] {
        refused(
            &base_yaml(DISCOVERY_ISSUER, &provider_entry(extra), true),
            &[want],
        );
    }
}

#[test]
fn sec41_an_unknown_key_under_a_provider_names_the_key_and_its_line() {
    refused(
        &base_yaml(
            DISCOVERY_ISSUER,
            &provider_entry("      client_secrte: x\n"),
            true,
        ),
        &["unknown field `client_secrte`", "line 20"],
    );
}

#[test]
fn sec41_provider_config_mistakes_are_refused_naming_the_key() {
    let jwks_issuer = "  - issuer: http://127.0.0.1:9\n    audiences: [x]\n    jwks_uri: http://127.0.0.1:9/jwks\n";
    refused(
        &base_yaml(jwks_issuer, &provider_entry(""), true),
        &["auth.providers[0].issuer", "discovery"],
    );
    let other_issuer = DISCOVERY_ISSUER.replace("127.0.0.1:9", "127.0.0.1:10");
    refused(
        &base_yaml(&other_issuer, &provider_entry(""), true),
        &["auth.providers[0].issuer", "not listed under `issuers`"],
    );
    refused(
        &base_yaml(
            DISCOVERY_ISSUER,
            &provider_entry("      scopes: [email]\n"),
            true,
        ),
        &["auth.providers[0].scopes", "openid"],
    );
    refused(
        &base_yaml(
            DISCOVERY_ISSUER,
            &provider_entry("      permissions: [{ claim: groups, via: group }]\n"),
            true,
        ),
        &["auth.providers[0].permissions[0].via"],
    );
    refused(
        &base_yaml(
            DISCOVERY_ISSUER,
            &provider_entry("").replace("secret.txt", "missing.txt"),
            true,
        ),
        &["auth.providers[0].client_secret_file", "missing.txt"],
    );
    let two = format!("{}{}", provider_entry(""), provider_entry(""));
    refused(
        &base_yaml(DISCOVERY_ISSUER, &two, true),
        &["auth.providers[1].id", "two providers"],
    );
    refused(
        &base_yaml(
            DISCOVERY_ISSUER,
            &provider_entry("").replace("id: corp", "id: c/rp"),
            true,
        ),
        &["auth.providers[0].id"],
    );
    // Without a users file, there must be a provider.
    let no_users = "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  app: { echo: true }\nroutes:\n  - { path: /, upstream: app, policy: public }\nauth:\n  issuer: https://gw.test\n";
    refused(no_users, &["auth.users_file"]);
}

#[test]
fn sec41_the_example_gateway_yaml_with_a_provider_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/oidc/gateway.yaml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let auth = config.runtime.auth.as_ref().expect("auth");
    assert_eq!(auth.providers.len(), 1);
    assert_eq!(
        auth.providers[0].redirect_uri,
        "http://localhost:8080/auth/oidc/local/callback"
    );
    assert!(auth.password_login);
}

// ---- back-channel logout ----

const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A logout token with `claims` (over a valid base for `sub`/`sid`), signed with the provider's
/// own key under `header`'s `typ` (`None`: no `typ`).
fn logout_token(idp: &Idp, claims: serde_json::Value, typ: Option<&str>) -> String {
    let pem = std::fs::read(idp.keys.path().join(format!("{}.key.pem", idp.kid))).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(idp.kid.clone());
    header.typ = typ.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The claims of a valid logout token of `idp` for the gateway, with `extra` merged over them
/// (a `null` removes a member).
fn logout_claims(idp: &Idp, extra: serde_json::Value) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "iss": idp.issuer,
        "aud": GATEWAY_CLIENT,
        "iat": now(),
        "exp": now() + 120,
        "jti": portcullis::auth_flow::tokens::random_token(16),
        "events": { LOGOUT_EVENT: {} },
        "sub": "alice",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

async fn post_logout(gw: &TestGateway, id: &str, token: &str) -> TestResponse {
    send(
        Request::post(gw.url(&format!("/auth/oidc/{id}/backchannel-logout")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "logout_token={}",
                enc(token)
            ))))
            .unwrap(),
    )
    .await
}

/// The provider's `sid` of the gateway session `browser` holds.
async fn provider_sid(gw: &TestGateway, idp: &Idp, browser: &Browser) -> String {
    use portcullis::store::SessionStore;
    let at = browser.cookie("__Host-portcullis-at").unwrap();
    let list = gw.api_get("/auth/sessions", &at).await.json();
    let current = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = format!("{}#alice", idp.issuer);
    let record = gw
        .store()
        .session(&user, &current, gw.now())
        .await
        .unwrap()
        .unwrap();
    record
        .provider
        .unwrap()
        .sid
        .expect("the provider sent a sid")
}

async fn docs_status(gw: &TestGateway, browser: &Browser) -> StatusCode {
    let at = browser.cookie("__Host-portcullis-at").unwrap();
    gw.get_bearer("/docs", &at).await.status
}

#[tokio::test]
async fn sec41_a_logout_token_ends_the_provider_session_s_gateway_session_and_a_replay_is_refused()
{
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let (mut one, mut two) = (gw.browser(), gw.browser());
    assert_eq!(
        sign_in(&mut one, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in(&mut two, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    let sid_one = provider_sid(&gw, &idp, &one).await;
    assert_ne!(sid_one, provider_sid(&gw, &idp, &two).await);

    let token = logout_token(
        &idp,
        logout_claims(&idp, serde_json::json!({ "sid": sid_one })),
        Some("logout+jwt"),
    );
    let r = post_logout(&gw, "local", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(docs_status(&gw, &one).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        docs_status(&gw, &two).await,
        StatusCode::OK,
        "another provider session"
    );

    // The same token again: its jti was used.
    let again = post_logout(&gw, "local", &token).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert_eq!(again.text(), r#"{"error":"invalid_request"}"#);

    // `sub` alone: every session of the user.
    let all = logout_token(&idp, logout_claims(&idp, serde_json::json!({})), None);
    assert_eq!(post_logout(&gw, "local", &all).await.status, StatusCode::OK);
    assert_eq!(docs_status(&gw, &two).await, StatusCode::UNAUTHORIZED);

    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "logout.backchannel"),
        [
            "logout.backchannel",
            "logout_token.replayed",
            "logout.backchannel"
        ]
    );
    let metrics = oidc_metrics(&gw);
    for line in [
        r#"portcullis_oidc_events_total{event="logout.backchannel",reason="logout.backchannel"} 2"#,
        r#"portcullis_oidc_events_total{event="logout.backchannel",reason="logout_token.replayed"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn sec41_logout_tokens_the_spec_refuses_are_answered_400_and_end_nothing() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    assert_eq!(
        sign_in(&mut browser, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    let sid = provider_sid(&gw, &idp, &browser).await;
    let with = |extra: serde_json::Value| {
        let mut extra = extra;
        extra["sid"] = serde_json::json!(sid);
        logout_claims(&idp, extra)
    };
    let other_key = TestKey::generate(jsonwebtoken::Algorithm::RS256, &idp.kid);
    let valid = with(serde_json::json!({}));
    let unsigned = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"logout+jwt"}"#),
        b64(valid.to_string())
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "with a nonce",
            logout_token(&idp, with(serde_json::json!({"nonce": "n"})), None),
        ),
        (
            "without events",
            logout_token(&idp, with(serde_json::json!({"events": null})), None),
        ),
        (
            "with another event",
            logout_token(
                &idp,
                with(serde_json::json!({"events": {"http://schemas.openid.net/event/other": {}}})),
                None,
            ),
        ),
        (
            "with a non-object event",
            logout_token(
                &idp,
                with(serde_json::json!({"events": {LOGOUT_EVENT: true}})),
                None,
            ),
        ),
        (
            "without jti",
            logout_token(&idp, with(serde_json::json!({"jti": null})), None),
        ),
        (
            "without sub nor sid",
            logout_token(
                &idp,
                logout_claims(&idp, serde_json::json!({"sub": null})),
                None,
            ),
        ),
        (
            "for another client",
            logout_token(&idp, with(serde_json::json!({"aud": OTHER_CLIENT})), None),
        ),
        (
            "of another issuer",
            logout_token(
                &idp,
                with(serde_json::json!({"iss": "https://evil.test"})),
                None,
            ),
        ),
        (
            "expired",
            logout_token(
                &idp,
                with(serde_json::json!({"iat": now() - 600, "exp": now() - 300})),
                None,
            ),
        ),
        (
            "issued in the future",
            logout_token(&idp, with(serde_json::json!({"iat": now() + 600})), None),
        ),
        (
            "typed as an access token",
            logout_token(&idp, valid.clone(), Some("at+jwt")),
        ),
        ("unsigned", unsigned),
        (
            "signed by another key under the provider's kid",
            other_key.sign_raw(
                &serde_json::json!({"alg": "RS256", "kid": idp.kid, "typ": "logout+jwt"}),
                &valid,
            ),
        ),
        ("not a JWT", "not-a-token".to_owned()),
    ];
    for (what, token) in &cases {
        let r = post_logout(&gw, "local", token).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "a logout token {what}");
        assert_eq!(r.text(), r#"{"error":"invalid_request"}"#, "{what}");
    }
    // No body at all.
    let empty = send(
        Request::post(gw.url("/auth/oidc/local/backchannel-logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        docs_status(&gw, &browser).await,
        StatusCode::OK,
        "nothing ended"
    );

    let events = gw.audit_events().await;
    let refused = reasons(&events, "logout.backchannel");
    assert_eq!(refused.len(), cases.len() + 1);
    for reason in [
        "logout_token.nonce",
        "logout_token.events",
        "logout_token.no_jti",
        "logout_token.no_subject",
        "token.audience",
        "token.expired",
        "token.iat",
        "token.bad_signature",
        "logout_token.missing",
    ] {
        assert!(
            refused.iter().any(|r| r == reason),
            "{reason} in {refused:?}"
        );
    }
    // A valid one still works after all that.
    let ok = logout_token(&idp, valid, None);
    assert_eq!(post_logout(&gw, "local", &ok).await.status, StatusCode::OK);
    assert_eq!(docs_status(&gw, &browser).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sec41_a_sign_out_at_the_provider_ends_the_gateway_session_through_back_channel_logout() {
    // The gateway must know the provider's issuer and the provider the gateway's address: the
    // gateway starts first (the provider is not up yet: its keys are fetched once it is).
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let gw = gateway_with(&[(&issuer, "local", "Local IdP", "")], StoreChoice::Memory).await;
    let backchannel = gw.url("/auth/oidc/local/backchannel-logout");
    let idp = Idp::spawn(port, &["local"], Some(&backchannel));
    portcullis::reload::fetch_remote_keys(
        gw.running.gateway(),
        portcullis::keys::remote::Trigger::Start,
    )
    .await
    .unwrap();

    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let mut at_idp = ProviderClient::default();
    let callback = at_idp.drive(&idp.issuer, authorize, "alice", false).await;
    let done = browser.navigate(&callback_path(&callback)).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(docs_status(&gw, &browser).await, StatusCode::OK);

    // The user signs out at the provider (its end-session page and confirmation).
    let page = at_idp
        .request("GET", &format!("{}/session/end", idp.issuer), None)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let text = page.text();
    let xsrf = text
        .split(r#"name="xsrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no xsrf field: {text}"))
        .to_owned();
    let confirm = at_idp
        .request(
            "POST",
            &format!("{}/session/end/confirm", idp.issuer),
            Some(&format!("xsrf={xsrf}&logout=yes")),
        )
        .await;
    assert!(confirm.status.is_redirection(), "{}", confirm.text());

    // The provider POSTed its logout token to the gateway, which ended the session.
    let ended = eventually(Duration::from_secs(5), || async {
        docs_status(&gw, &browser).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        ended.is_some(),
        "the gateway session outlived the provider's; the provider's log: {}",
        std::fs::read_to_string(idp.keys.path().join("out.log")).unwrap_or_default()
    );
    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "logout.backchannel"),
        ["logout.backchannel"]
    );
}

#[tokio::test]
async fn sec41_logout_offers_to_sign_out_at_the_provider_with_the_id_token_as_hint() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    let mut at_idp = ProviderClient::default();
    let callback = at_idp.drive(&idp.issuer, authorize, "alice", false).await;
    assert_eq!(
        browser.navigate(&callback_path(&callback)).await.status,
        StatusCode::SEE_OTHER
    );
    let at = browser.cookie("__Host-portcullis-at").unwrap();

    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let r = browser.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.get_bearer("/docs", &at).await.status,
        StatusCode::UNAUTHORIZED
    );
    let page = r.text();
    assert!(page.contains("Sign out at Local IdP too"), "{page}");
    let href = page
        .split(r#"id="provider-logout" href=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        href.starts_with(&format!("{}/session/end?id_token_hint=", idp.issuer)),
        "{href}"
    );
    assert_eq!(query_param(&href, "client_id"), GATEWAY_CLIENT);

    // At the provider: the hint names the gateway's sign-in; confirming signs out there and
    // comes back to the gateway's login page.
    let end = at_idp.request("GET", &href, None).await;
    assert_eq!(end.status, StatusCode::OK, "{}", end.text());
    let text = end.text();
    let xsrf = text
        .split(r#"name="xsrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no xsrf field: {text}"))
        .to_owned();
    let confirm = at_idp
        .request(
            "POST",
            &format!("{}/session/end/confirm", idp.issuer),
            Some(&format!("xsrf={xsrf}&logout=yes")),
        )
        .await;
    assert_eq!(confirm.status, StatusCode::SEE_OTHER, "{}", confirm.text());
    assert_eq!(
        confirm.headers["location"],
        format!("{ISSUER}/auth/login").as_str()
    );

    // A JSON logout (an API client) gets no page.
    let mut api = gw.browser();
    assert_eq!(
        sign_in(&mut api, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    let at = api.cookie("__Host-portcullis-at").unwrap();
    let r = gw
        .post_json(
            "/auth/logout",
            &serde_json::json!({}),
            &[("authorization", &format!("Bearer {at}"))],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn sec41_a_logout_token_received_by_one_instance_ends_the_session_on_another_sharing_redis() {
    let idp = Idp::start(&["local"]);
    let redis = RedisServer::start();
    let providers = [(idp.issuer.as_str(), "local", "Local IdP", "")];
    let one = gateway_with(&providers, StoreChoice::Redis(redis.url())).await;
    let two = gateway_with(&providers, StoreChoice::Redis(redis.url())).await;
    wait_subscribed(one.redis()).await;
    let mut browser = one.browser();
    assert_eq!(
        sign_in(&mut browser, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    // Instance one has seen the token and cached its verdict.
    assert_eq!(docs_status(&one, &browser).await, StatusCode::OK);
    let sid = provider_sid(&one, &idp, &browser).await;

    let token = logout_token(
        &idp,
        logout_claims(&idp, serde_json::json!({ "sid": sid })),
        Some("logout+jwt"),
    );
    let r = post_logout(&two, "local", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let refused = eventually(Duration::from_secs(2), || async {
        docs_status(&one, &browser).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused.is_some(),
        "instance one still lets the session through"
    );
    // The jti is spent on every instance.
    assert_eq!(
        post_logout(&one, "local", &token).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn sec41_a_change_to_roles_applies_to_provider_sessions_from_the_next_request() {
    let idp = Idp::start(&["local"]);
    let (issuers, provider) = provider_yaml(&idp.issuer, "local", "Local IdP", "");
    let setup = AuthSetup {
        auth_extra: format!("  providers:\n{provider}"),
        extra: format!("issuers:\n{issuers}"),
        ..AuthSetup::default()
    };
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), &setup.users).unwrap();
    std::fs::write(dir.path().join("local-secret.txt"), GATEWAY_SECRET).unwrap();
    let yaml = setup.yaml(&upstream.url());
    let running = launch(&yaml, dir.path(), setup.clock.clone()).await;
    let gw = TestGateway::new(running, upstream, dir, Vec::new());
    let mut browser = gw.browser();
    assert_eq!(
        sign_in(&mut browser, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    let at = browser.cookie("__Host-portcullis-at").unwrap();
    let write = |gw: &TestGateway| {
        let at = at.clone();
        let url = gw.url("/docs");
        async move {
            send(
                Request::post(url)
                    .header("authorization", format!("Bearer {at}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .status
        }
    };
    assert_eq!(write(&gw).await, StatusCode::FORBIDDEN, "a reader");

    // The operator lets readers write: the same access token may, at once.
    let widened = yaml.replace("reader: [docs:read]", "reader: [docs:read, docs:write]");
    let config = Config::from_yaml(&widened, gw.dir.path()).unwrap();
    let report = portcullis::reload::apply(gw.running.gateway(), config, "test");
    assert!(report.restart_needed.is_empty(), "{report:?}");
    assert_eq!(write(&gw).await, StatusCode::OK);
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read,docs:write"
    );
}

// ---- staying in step with the provider: its refresh token ----

const OFFLINE: &str = "      scopes: [openid, email, groups, offline_access]\n";
const RT_KEY_FILE: &str = "provider-refresh.key";
const RT_KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

fn b64_std_bytes(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A gateway on a manual clock whose provider asks for `offline_access` and keeps the
/// provider's refresh token (sealed with [`RT_KEY`]), refreshing against the provider at
/// most every 60 s.
async fn refreshing_gateway(idp: &Idp, store: StoreChoice) -> TestGateway {
    let extra = format!(
        "{OFFLINE}      refresh_token_key_file: {RT_KEY_FILE}\n      provider_refresh_interval: 60s\n"
    );
    gateway_on_clock(
        &[(&idp.issuer, "local", "Local IdP", &extra)],
        store,
        portcullis::clock::Clock::manual(),
    )
    .await
}

/// The session record of `browser`'s current session (user `alice` at `idp`).
async fn current_record(
    gw: &TestGateway,
    idp: &Idp,
    browser: &Browser,
) -> portcullis::store::SessionRecord {
    use portcullis::store::SessionStore;
    let at = browser.cookie("__Host-portcullis-at").unwrap();
    let list = gw.api_get("/auth/sessions", &at).await.json();
    let current = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.store()
        .session(&format!("{}#alice", idp.issuer), &current, gw.now())
        .await
        .unwrap()
        .expect("the session is alive")
}

/// The provider's refresh token of `record`, opened with [`RT_KEY`].
fn opened(record: &portcullis::store::SessionRecord) -> String {
    let key = portcullis::auth_flow::oidc::RefreshKey::new(&RT_KEY).unwrap();
    let sealed = record
        .provider
        .as_ref()
        .unwrap()
        .refresh_token
        .as_deref()
        .unwrap();
    key.open(&record.id, sealed)
        .expect("sealed for this session")
}

/// The refresh_token grants the provider answered so far: `ok` or an error code each.
fn provider_refreshes(idp: &Idp) -> Vec<String> {
    std::fs::read_to_string(idp.keys.path().join("out.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("refresh "))
        .map(str::to_owned)
        .collect()
}

/// A gateway refresh by `browser` (the refresh page's form POST): where it sent the browser.
async fn gateway_refresh(browser: &mut Browser) -> String {
    let r = browser.refresh("/docs").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    r.headers["location"].to_str().unwrap().to_owned()
}

/// A sign-in through the provider asking for `offline_access` (hence the consent page).
async fn sign_in_offline(gw: &TestGateway, idp: &Idp) -> Browser {
    let mut browser = gw.browser();
    let authorize = start(&mut browser, "local", "/docs").await;
    assert!(authorize.contains("prompt=consent"), "{authorize}");
    assert!(authorize.contains("offline_access"), "{authorize}");
    let callback = ProviderClient::default()
        .drive(&idp.issuer, authorize, "alice", false)
        .await;
    let r = browser.navigate(&callback_path(&callback)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    browser
}

#[tokio::test]
async fn sec41_the_provider_refresh_token_is_sealed_and_used_after_the_interval_only() {
    let idp = Idp::start(&["local"]);
    let gw = refreshing_gateway(&idp, StoreChoice::Memory).await;
    let mut browser = sign_in_offline(&gw, &idp).await;

    // Kept sealed: what the store holds is not the provider's token, and opens only as this
    // session's (the session id is the associated data).
    let record = current_record(&gw, &idp, &browser).await;
    let sealed = record
        .provider
        .as_ref()
        .unwrap()
        .refresh_token
        .clone()
        .unwrap();
    let token = opened(&record);
    assert!(!sealed.contains(&token) && !token.is_empty());
    let key = portcullis::auth_flow::oidc::RefreshKey::new(&RT_KEY).unwrap();
    assert_eq!(key.open("another-session-id", &sealed), None);

    // Within the interval: the gateway refreshes without asking the provider.
    gw.advance(Duration::from_secs(30));
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert!(provider_refreshes(&idp).is_empty());

    // Past it: the provider is asked once, and its rotated token is kept (sealed).
    gw.advance(Duration::from_secs(31));
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(provider_refreshes(&idp), ["ok"]);
    let rotated = current_record(&gw, &idp, &browser).await;
    assert_ne!(opened(&rotated), token, "the provider rotated it");
    assert_eq!(get(&mut browser, "/docs").await.status, StatusCode::OK);

    // Right after: not again. One interval later: again, with the rotated token (the old one
    // would be refused by the provider as reused).
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(provider_refreshes(&idp), ["ok"]);
    gw.advance(Duration::from_secs(61));
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(provider_refreshes(&idp), ["ok", "ok"]);
    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "refresh.provider"),
        ["refresh.provider_ok", "refresh.provider_ok"]
    );
    assert!(oidc_metrics(&gw).contains("refresh.provider_ok"));
}

#[tokio::test]
async fn sec41_without_a_key_file_no_provider_refresh_token_is_kept() {
    let idp = Idp::start(&["local"]);
    let gw = gateway_on_clock(
        &[(&idp.issuer, "local", "Local IdP", OFFLINE)],
        StoreChoice::Memory,
        portcullis::clock::Clock::manual(),
    )
    .await;
    let mut browser = sign_in_offline(&gw, &idp).await;
    let record = current_record(&gw, &idp, &browser).await;
    assert_eq!(record.provider.unwrap().refresh_token, None);
    gw.advance(Duration::from_secs(600));
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert!(provider_refreshes(&idp).is_empty());
}

#[tokio::test]
async fn sec41_a_grant_revoked_at_the_provider_ends_the_session_on_the_next_gateway_refresh() {
    let idp = Idp::start(&["local"]);
    let gw = refreshing_gateway(&idp, StoreChoice::Memory).await;
    let mut browser = sign_in_offline(&gw, &idp).await;
    let record = current_record(&gw, &idp, &browser).await;

    // The grant is revoked at the provider (RFC 7009, its revocation endpoint).
    let basic = b64_std(&format!("{GATEWAY_CLIENT}:{GATEWAY_SECRET}"));
    let r = send(
        Request::post(format!("{}/token/revocation", idp.issuer))
            .header("authorization", format!("Basic {basic}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "token={}&token_type_hint=refresh_token",
                enc(&opened(&record))
            ))))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Within the interval the gateway does not know yet; past it, the provider says
    // invalid_grant and the session ends.
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    gw.advance(Duration::from_secs(61));
    let to = gateway_refresh(&mut browser).await;
    assert!(to.starts_with("/auth/login"), "{to}");
    assert_eq!(provider_refreshes(&idp), ["invalid_grant"]);
    use portcullis::store::SessionStore;
    assert!(
        gw.store()
            .session(&record.subject, &record.id, gw.now())
            .await
            .unwrap()
            .is_none()
    );
    let events = gw.audit_events().await;
    assert!(reasons(&events, "refresh.failure").contains(&"refresh.provider_refused".to_owned()));
}

#[tokio::test]
async fn sec41_the_provider_down_does_not_end_the_session() {
    let mut idp = Idp::start(&["local"]);
    let gw = refreshing_gateway(&idp, StoreChoice::Memory).await;
    let mut browser = sign_in_offline(&gw, &idp).await;
    let before = current_record(&gw, &idp, &browser).await;
    let _ = idp.child.kill();
    let _ = idp.child.wait();
    gw.advance(Duration::from_secs(61));
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(get(&mut browser, "/docs").await.status, StatusCode::OK);
    let after = current_record(&gw, &idp, &browser).await;
    assert_eq!(
        after.provider.unwrap().refresh_token,
        before.provider.unwrap().refresh_token,
        "the provider's token is kept for the next try"
    );
    let events = gw.audit_events().await;
    assert_eq!(
        reasons(&events, "refresh.provider"),
        ["refresh.provider_unavailable"]
    );
}

/// Changes `login`'s groups at the provider (the ID tokens it issues from now on).
async fn set_groups(idp: &Idp, login: &str, groups: &str) {
    let r = send(
        Request::post(format!(
            "{}/test/groups?login={login}&groups={groups}",
            idp.issuer
        ))
        .body(Full::new(Bytes::new()))
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
}

async fn write_docs(browser: &mut Browser) -> StatusCode {
    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    browser.post_form("/docs", &[("csrf", &csrf)]).await.status
}

#[tokio::test]
async fn sec41_a_provider_refresh_maps_the_permissions_again_from_the_new_id_token() {
    let idp = Idp::start(&["local"]);
    let gw = refreshing_gateway(&idp, StoreChoice::Memory).await;
    let mut browser = sign_in_offline(&gw, &idp).await;
    assert_eq!(write_docs(&mut browser).await, StatusCode::FORBIDDEN);

    // Made an editor at the provider: the gateway learns it at its next refresh against the
    // provider, not before.
    set_groups(&idp, "alice", "staff,reader,editor").await;
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(write_docs(&mut browser).await, StatusCode::FORBIDDEN);
    gw.advance(Duration::from_secs(61));
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(provider_refreshes(&idp), ["ok"]);
    assert_eq!(write_docs(&mut browser).await, StatusCode::OK);
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read,docs:write"
    );
    // Kept with the session: the next gateway refresh (without the provider) keeps them.
    let record = current_record(&gw, &idp, &browser).await;
    assert_eq!(
        record.provider.unwrap().roles,
        ["editor", "reader", "staff"]
    );
    assert_eq!(gateway_refresh(&mut browser).await, "/docs");
    assert_eq!(write_docs(&mut browser).await, StatusCode::OK);
}

#[tokio::test]
async fn sec41_a_user_no_longer_in_the_required_groups_at_the_provider_is_signed_out_at_refresh() {
    let idp = Idp::start(&["local"]);
    let extra = format!(
        "{OFFLINE}      refresh_token_key_file: {RT_KEY_FILE}\n      provider_refresh_interval: 60s\n      required_groups: [staff]\n"
    );
    let gw = gateway_on_clock(
        &[(&idp.issuer, "local", "Local IdP", &extra)],
        StoreChoice::Memory,
        portcullis::clock::Clock::manual(),
    )
    .await;
    let mut browser = sign_in_offline(&gw, &idp).await;
    let record = current_record(&gw, &idp, &browser).await;
    set_groups(&idp, "alice", "reader").await;
    gw.advance(Duration::from_secs(61));
    let to = gateway_refresh(&mut browser).await;
    assert!(to.starts_with("/auth/login"), "{to}");
    use portcullis::store::SessionStore;
    assert!(
        gw.store()
            .session(&record.subject, &record.id, gw.now())
            .await
            .unwrap()
            .is_none(),
        "the session ended"
    );
    assert!(oidc_metrics(&gw).contains("refresh.provider_not_admitted"));
}

/// Ten tabs refresh one session at once, on two instances sharing Redis: the provider is
/// asked once.
#[tokio::test]
async fn sec41_concurrent_gateway_refreshes_of_one_session_ask_the_provider_at_most_once() {
    let idp = Idp::start(&["local"]);
    let redis = RedisServer::start();
    let one = refreshing_gateway(&idp, StoreChoice::Redis(redis.url())).await;
    let two = refreshing_gateway(&idp, StoreChoice::Redis(redis.url())).await;
    let browser = sign_in_offline(&one, &idp).await;
    // At rest in Redis: the session hash's provider link holds the sealed token, never the
    // token itself.
    let record = current_record(&one, &idp, &browser).await;
    let token = opened(&record);
    let keys = redis.cli(&["KEYS", &format!("*:s:{}", record.id)]);
    let key = keys
        .lines()
        .next()
        .expect("the session's hash")
        .trim()
        .to_owned();
    let raw = redis.cli(&["HGET", &key, "idp"]);
    let sealed = record
        .provider
        .as_ref()
        .unwrap()
        .refresh_token
        .clone()
        .unwrap();
    assert!(raw.contains(&sealed), "{raw}");
    assert!(!raw.contains(&token), "{raw}");
    one.advance(Duration::from_secs(61));
    two.advance(Duration::from_secs(61));
    let mut tabs = Vec::new();
    for i in 0..10 {
        let mut tab = if i % 2 == 0 {
            one.browser()
        } else {
            two.browser()
        };
        tab.jar = browser.jar.clone();
        tabs.push(tokio::spawn(async move { gateway_refresh(&mut tab).await }));
    }
    for tab in tabs {
        assert_eq!(tab.await.unwrap(), "/docs");
    }
    assert_eq!(provider_refreshes(&idp), ["ok"]);
}

// ---- back-channel logout naming only `sid` ----

#[tokio::test]
async fn sec41_a_logout_token_naming_only_sid_ends_that_provider_session_s_gateway_session() {
    let idp = Idp::start(&["local"]);
    let gw = gateway(&idp).await;
    let (mut one, mut two) = (gw.browser(), gw.browser());
    assert_eq!(
        sign_in(&mut one, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        sign_in(&mut two, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    let sid_one = provider_sid(&gw, &idp, &one).await;

    // A provider session the gateway never saw: nothing to end, and nothing ends.
    let unknown = logout_token(
        &idp,
        logout_claims(
            &idp,
            serde_json::json!({ "sub": null, "sid": "a-session-the-gateway-never-saw" }),
        ),
        Some("logout+jwt"),
    );
    let r = post_logout(&gw, "local", &unknown).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(docs_status(&gw, &one).await, StatusCode::OK);
    assert_eq!(docs_status(&gw, &two).await, StatusCode::OK);

    let token = logout_token(
        &idp,
        logout_claims(&idp, serde_json::json!({ "sub": null, "sid": sid_one })),
        Some("logout+jwt"),
    );
    let r = post_logout(&gw, "local", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(docs_status(&gw, &one).await, StatusCode::UNAUTHORIZED);
    assert_eq!(docs_status(&gw, &two).await, StatusCode::OK);
    assert_eq!(
        post_logout(&gw, "local", &token).await.status,
        StatusCode::BAD_REQUEST,
        "a replay"
    );
    let events = gw.audit_events().await;
    let applied: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "logout.backchannel" && e["reason_id"] == "logout.backchannel")
        .collect();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1]["subject"], format!("{}#alice", idp.issuer));
    assert!(!reasons(&events, "logout.backchannel").contains(&"logout_token.sid_only".to_owned()));
}

#[tokio::test]
async fn sec41_a_sid_only_logout_token_received_by_one_instance_ends_the_session_on_another() {
    let idp = Idp::start(&["local"]);
    let redis = RedisServer::start();
    let providers = [(idp.issuer.as_str(), "local", "Local IdP", "")];
    let one = gateway_with(&providers, StoreChoice::Redis(redis.url())).await;
    let two = gateway_with(&providers, StoreChoice::Redis(redis.url())).await;
    wait_subscribed(one.redis()).await;
    let mut browser = one.browser();
    assert_eq!(
        sign_in(&mut browser, &idp, "alice").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(docs_status(&one, &browser).await, StatusCode::OK);
    let sid = provider_sid(&one, &idp, &browser).await;
    let token = logout_token(
        &idp,
        logout_claims(&idp, serde_json::json!({ "sub": null, "sid": sid })),
        Some("logout+jwt"),
    );
    // The index from the provider's sid to the user is in Redis: instance two finds it.
    let r = post_logout(&two, "local", &token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let refused = eventually(Duration::from_secs(2), || async {
        docs_status(&one, &browser).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused.is_some(),
        "instance one still lets the session through"
    );
}
