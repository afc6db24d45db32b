//! Harness for the login flow: a gateway with `auth:` configured (memory or Redis store), the
//! demo-style users file with cheap-to-type passwords, and [`Browser`], a small client that
//! keeps cookies and labels its requests the way a browser does (`Origin`, `Sec-Fetch-*`), so
//! tests drive the flow as a browser would — or as an attacker's page would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use portcullis::clock::Clock;
use serde_json::Value;

use super::{EchoUpstream, TestGateway, TestResponse, launch, send, set_cookies};

/// Passwords of the users in [`USERS`]; their hashes use the OWASP minimum (m=19456, t=2).
pub const ALICE_PASSWORD: &str = "demo-password-alice";
pub const BOB_PASSWORD: &str = "demo-password-bob";
pub const MALLORY_PASSWORD: &str = "demo-password-mallory";

/// The repository's demo users file: alice (reader, editor), bob (reader), mallory (disabled).
pub fn demo_users() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/users.yaml")).unwrap()
}

/// Which store the gateway uses.
#[derive(Debug, Clone)]
pub enum StoreChoice {
    Memory,
    /// A `redis://` URL (a test's own redis-server).
    Redis(String),
    /// A `redis://` URL and more keys for the `store:` mapping (`, min_replicas_acks: 1`).
    RedisWith(String, String),
}

/// Builder for an auth-enabled gateway.
#[derive(Debug, Clone)]
pub struct AuthSetup {
    pub store: StoreChoice,
    pub access_ttl: String,
    pub idle_timeout: String,
    pub absolute_lifetime: String,
    pub remember_me_idle_timeout: String,
    pub remember_me_absolute_lifetime: String,
    pub refresh_grace: String,
    pub per_ip: u32,
    pub per_user: u32,
    pub window: String,
    /// Extra lines inside `auth:` (indented by two spaces).
    pub auth_extra: String,
    /// Extra top-level YAML.
    pub extra: String,
    /// The users file's text.
    pub users: String,
    /// The gateway's clock: the system's, or [`Clock::manual`] for a test that moves time.
    pub clock: Clock,
}

impl Default for AuthSetup {
    fn default() -> Self {
        Self {
            store: StoreChoice::Memory,
            access_ttl: "15m".into(),
            idle_timeout: "1h".into(),
            absolute_lifetime: "2h".into(),
            remember_me_idle_timeout: "7d".into(),
            remember_me_absolute_lifetime: "30d".into(),
            refresh_grace: "10s".into(),
            per_ip: 50,
            per_user: 5,
            window: "15m".into(),
            auth_extra: String::new(),
            extra: String::new(),
            users: demo_users(),
            clock: Clock::system(),
        }
    }
}

pub const ISSUER: &str = "https://gw.test";

impl AuthSetup {
    pub fn yaml(&self, upstream_url: &str) -> String {
        let store = match &self.store {
            StoreChoice::Memory => "store: { kind: memory }".to_owned(),
            StoreChoice::Redis(url) => format!(
                "store: {{ kind: redis, url: \"{url}\", key_prefix: t{} }}",
                std::process::id()
            ),
            StoreChoice::RedisWith(url, extra) => format!(
                "store: {{ kind: redis, url: \"{url}\", key_prefix: t{}{extra} }}",
                std::process::id()
            ),
        };
        format!(
            r#"
listeners:
  - bind: 127.0.0.1:0
{store}
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
upstreams:
  echo: {{ url: "{upstream_url}", response_timeout: 5s }}
routes:
  - {{ id: public, path: /public, upstream: echo, policy: public }}
  - {{ id: app, path: /app, upstream: echo, policy: authenticated }}
  - {{ id: docs-read, path: /docs, methods: [GET], upstream: echo, policy: {{ all_of: [docs:read] }} }}
  - {{ id: docs-write, path: /docs, methods: [POST], upstream: echo, policy: {{ all_of: [docs:write] }} }}
auth:
  issuer: {ISSUER}
  audience: gw-tests
  users_file: users.yaml
  access_ttl: {access_ttl}
  idle_timeout: {idle}
  absolute_lifetime: {absolute}
  remember_me_idle_timeout: {r_idle}
  remember_me_absolute_lifetime: {r_absolute}
  refresh_grace: {grace}
  throttle: {{ per_ip: {per_ip}, per_user: {per_user}, window: {window} }}
{auth_extra}
audit:
  file: audit.jsonl
{extra}
"#,
            access_ttl = self.access_ttl,
            idle = self.idle_timeout,
            absolute = self.absolute_lifetime,
            r_idle = self.remember_me_idle_timeout,
            r_absolute = self.remember_me_absolute_lifetime,
            grace = self.refresh_grace,
            per_ip = self.per_ip,
            per_user = self.per_user,
            window = self.window,
            auth_extra = self.auth_extra,
            extra = self.extra,
        )
    }

    pub async fn start(&self) -> TestGateway {
        let upstream = EchoUpstream::start().await;
        self.start_with(upstream).await
    }

    /// Starts a gateway in front of `upstream` (a second instance can share a store).
    pub async fn start_with(&self, upstream: EchoUpstream) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("users.yaml"), &self.users).unwrap();
        let yaml = self.yaml(&upstream.url());
        let running = launch(&yaml, dir.path(), self.clock.clone()).await;
        TestGateway::new(running, upstream, dir, Vec::new())
    }
}

/// What the login flow's suites ask of a gateway started by [`AuthSetup`].
impl TestGateway {
    /// Its users file (`users.yaml` in its dir).
    pub fn users_path(&self) -> PathBuf {
        self.dir.path().join("users.yaml")
    }

    /// Its audit file (`audit.jsonl` in its dir).
    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// The origin a browser would send for pages of this gateway.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn browser(&self) -> Browser {
        Browser {
            base: self.url(""),
            origin: self.origin(),
            jar: BTreeMap::new(),
        }
    }

    /// Logs in through the JSON API with tokens in the body: (access, refresh, session).
    pub async fn api_login(&self, user: &str, password: &str) -> (String, String, String) {
        api_login(&self.url(""), user, password).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        post_json(&self.url(path), body, headers).await
    }

    /// GET with a bearer token, asking for JSON as an API client does.
    pub async fn api_get(&self, path: &str, token: &str) -> TestResponse {
        send(
            Request::get(self.url(path))
                .header("authorization", format!("Bearer {token}"))
                .header("accept", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// The audit events written so far (see [`super::audit_events`]).
    pub async fn audit_events(&self) -> Vec<Value> {
        super::audit_events(self.running.gateway(), &self.audit_path()).await
    }
}

/// POSTs `body` as JSON to `url`, with extra headers.
pub async fn post_json(url: &str, body: &Value, headers: &[(&str, &str)]) -> TestResponse {
    let mut req = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await
}

/// Logs in at the gateway whose base URL is `base` through the JSON API, tokens in the body:
/// (access, refresh, session).
pub async fn api_login(base: &str, user: &str, password: &str) -> (String, String, String) {
    let r = post_json(
        &format!("{base}/auth/login"),
        &serde_json::json!({"username": user, "password": password, "return_tokens": true}),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "login failed: {}", r.text());
    let v = r.json();
    (
        v["access_token"].as_str().unwrap().to_owned(),
        v["refresh_token"].as_str().unwrap().to_owned(),
        v["session"].as_str().unwrap().to_owned(),
    )
}

/// A cookie-keeping client that sends what a browser sends: `Origin` and
/// `Sec-Fetch-Site: same-origin` on its POSTs, `Sec-Fetch-Mode: navigate` and
/// `Accept: text/html` on its page loads. Cookie paths are honoured (`/auth` cookies go only to
/// `/auth/…`); `Secure` is ignored (the test gateway speaks plain HTTP on loopback, which
/// browsers treat as a secure context).
#[derive(Debug, Clone)]
pub struct Browser {
    pub base: String,
    pub origin: String,
    /// name → (value, path)
    pub jar: BTreeMap<String, (String, String)>,
}

impl Browser {
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.get(name).map(|(v, _)| v.clone())
    }

    pub fn set_cookie(&mut self, name: &str, value: &str, path: &str) {
        self.jar.insert(name.into(), (value.into(), path.into()));
    }

    fn cookie_header(&self, path: &str) -> Option<String> {
        let pairs: Vec<String> = self
            .jar
            .iter()
            .filter(|(_, (_, p))| {
                path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/'))) || p == "/"
            })
            .map(|(n, (v, _))| format!("{n}={v}"))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// Applies the response's `Set-Cookie` headers to the jar.
    pub fn absorb(&mut self, headers: &HeaderMap) {
        for c in set_cookies(headers) {
            if c.expires_now() {
                self.jar.remove(&c.name);
            } else {
                let path = c.attr("path").unwrap_or("/").to_owned();
                self.jar.insert(c.name, (c.value, path));
            }
        }
    }

    /// A top-level navigation (no redirects followed).
    pub async fn navigate(&mut self, path: &str) -> TestResponse {
        let mut req = Request::get(format!("{}{path}", self.base))
            .header("accept", "text/html,application/xhtml+xml")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", "none")
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
            );
        if let Some(c) = self.cookie_header(path.split('?').next().unwrap()) {
            req = req.header("cookie", c);
        }
        let r = send(req.body(Full::new(Bytes::new())).unwrap()).await;
        self.absorb(&r.headers);
        r
    }

    /// A same-origin form POST, as the gateway's own pages make it.
    pub async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> TestResponse {
        self.post_form_with(
            path,
            fields,
            &[
                ("origin", &self.origin.clone()),
                ("sec-fetch-site", "same-origin"),
            ],
        )
        .await
    }

    /// A form POST with the given browser labels (e.g. a cross-site page's).
    pub async fn post_form_with(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> TestResponse {
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        let mut req = Request::post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-mode", "navigate")
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
            );
        for (k, v) in labels {
            req = req.header(*k, *v);
        }
        if let Some(c) = self.cookie_header(path) {
            req = req.header("cookie", c);
        }
        let r = send(req.body(Full::new(Bytes::from(body.join("&")))).unwrap()).await;
        self.absorb(&r.headers);
        r
    }

    /// GET the login page (for its CSRF cookie) and log in with the form. Returns the POST's
    /// response (a 303 on success).
    pub async fn login(&mut self, user: &str, password: &str, remember_me: bool) -> TestResponse {
        self.navigate("/auth/login").await;
        let csrf = self
            .cookie("__Host-portcullis-csrf")
            .expect("login page sets the CSRF cookie");
        let mut fields = vec![
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", password),
        ];
        if remember_me {
            fields.push(("remember_me", "1"));
        }
        self.post_form("/auth/login", &fields).await
    }

    /// Follows the refresh page as its script would: POST /auth/refresh with the CSRF token.
    pub async fn refresh(&mut self, return_to: &str) -> TestResponse {
        let csrf = self.cookie("__Host-portcullis-csrf").unwrap_or_default();
        self.post_form(
            "/auth/refresh",
            &[("csrf", &csrf), ("return_to", return_to)],
        )
        .await
    }
}

/// `s` form-encoded (`application/x-www-form-urlencoded` for a value or a query parameter).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
