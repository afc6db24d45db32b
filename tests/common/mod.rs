//! Test harness: a real gateway on 127.0.0.1:0 in front of a real echo upstream that records
//! what it received, keys generated per test, tokens minted (or forged) by hand, and clients
//! that speak well-formed HTTP (hyper) or raw bytes (for malformed input).
//!
//! One of each: one gateway harness ([`TestGateway`], started by [`Setup`],
//! [`auth::AuthSetup`] or [`launch`]), one `Set-Cookie` reader ([`set_cookies`]), one wait for a
//! store's invalidation subscription ([`wait_subscribed`], [`connect_store`],
//! [`TestGateway::wait_subscribed`]), one poll for external processes ([`wait_for`]) and one
//! for in-process state ([`eventually`]).
//!
//! Ports: everything the tests start binds port 0 and reports its address, except
//! redis-server and sentinel, which take a port that was free a moment ago and try another if
//! it was taken. Time: a gateway started with [`Clock::manual`] moves only when a test calls
//! [`TestGateway::advance`]; token expiry, session lifetimes and throttle windows read it.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::clock::Clock;
use portcullis::config::Config;
use portcullis::server::Running;
use portcullis::store::{RedisStore, Store};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "portcullis-tests";

/// The name the store knows `sub` of [`ISSUER`] by: [`ISSUER`] is another issuer than the
/// gateway's own, so its users are named `<iss>#<sub>` (`alice` at two issuers are two users).
pub fn user_key(sub: &str) -> String {
    format!("{ISSUER}#{sub}")
}
pub const COOKIE: &str = "__Host-portcullis-at";

/// What the echo upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1.1 (and h2c) upstream that answers 200 with a JSON report and records each request.
#[derive(Clone)]
pub struct EchoUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl EchoUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let record = Arc::clone(&record);
                        async move { Ok::<_, Infallible>(echo(req, record).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .pop()
            .expect("the upstream received no request")
    }
}

async fn echo(mut req: Request<Incoming>, record: Arc<Mutex<Vec<Seen>>>) -> Response<Full<Bytes>> {
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    record.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if let Some(on_upgrade) = on_upgrade {
        // A raw byte echo after the handshake: enough to prove the tunnel carries both ways.
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let mut headers = BTreeMap::<String, Vec<String>>::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let report = json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": body.len(),
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("connection", "keep-alive")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(report.to_string())))
        .unwrap()
}

/// A signing key and the public half the gateway is configured with.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// Public key PEM (SPKI), or the raw secret for HS256.
    pub public_pem: String,
    pub public_der: Vec<u8>,
}

impl TestKey {
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let sig = match alg {
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::HS256 => {
                let secret: Vec<u8> = (0..48u8)
                    .map(|i| i.wrapping_mul(37).wrapping_add(11))
                    .collect();
                return Self {
                    kid: kid.into(),
                    alg,
                    encoding: EncodingKey::from_secret(&secret),
                    public_pem: String::new(),
                    public_der: secret,
                };
            }
            other => panic!("no test key for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(sig).unwrap();
        let private_pem = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        }
        .unwrap();
        Self {
            kid: kid.into(),
            alg,
            encoding,
            public_pem: pair.public_key_pem(),
            public_der: pair.public_key_der(),
        }
    }

    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::HS256 => "HS256",
            _ => unreachable!(),
        }
    }

    /// The `keys:` entry for gateway.yaml; writes the key file into `dir`.
    pub fn yaml_entry(&self, dir: &Path) -> String {
        if self.alg == Algorithm::HS256 {
            let path = dir.join(format!("{}.secret", self.kid));
            std::fs::write(&path, &self.public_der).unwrap();
            format!(
                "{{ kid: {}, alg: HS256, secret_file: {} }}",
                self.kid,
                path.display()
            )
        } else {
            let path = dir.join(format!("{}.pub.pem", self.kid));
            std::fs::write(&path, &self.public_pem).unwrap();
            format!(
                "{{ kid: {}, alg: {}, pem: {} }}",
                self.kid,
                self.alg_name(),
                path.display()
            )
        }
    }

    /// Signs `header.payload` exactly as given (no re-serialization), for forged tokens.
    pub fn sign_raw(&self, header: &Value, payload: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        self.sign_segments(&h, &p)
    }

    /// Signs already-encoded segments.
    pub fn sign_segments(&self, h: &str, p: &str) -> String {
        let message = format!("{h}.{p}");
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg).unwrap();
        // The gateway accepts ES256 signatures in low-S form only, as a careful issuer signs.
        portcullis::keys::ecdsa::low_s_token(self.alg, format!("{message}.{sig}"))
    }

    /// A well-formed access-token header for this key.
    pub fn header(&self) -> Value {
        json!({ "alg": self.alg_name(), "typ": "at+jwt", "kid": self.kid })
    }

    /// A valid access token with the given claims merged over good defaults.
    pub fn token(&self, overrides: Value) -> String {
        self.sign_raw(&self.header(), &claims(overrides))
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

static JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Good default claims (sub alice, session sid-alice, role reader), with `overrides` applied;
/// a `null` override removes the claim.
pub fn claims(overrides: Value) -> Value {
    let n = now();
    let jti = JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "sid": "sid-alice",
        "jti": format!("jti-{jti}-{n}"),
        "iat": n - 10,
        "exp": n + 600,
        "roles": ["reader"],
    });
    if let Value::Object(o) = overrides {
        for (k, v) in o {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(&k);
            } else {
                c[k] = v;
            }
        }
    }
    c
}

/// A running gateway on 127.0.0.1:0 in front of a recording echo upstream, with its temp dir:
/// the one gateway harness of the suites. [`Setup`] starts one that trusts test keys (tokens
/// minted by hand), [`auth::AuthSetup`] one that runs the login flow and issues its own tokens,
/// [`launch`] one from any YAML.
pub struct TestGateway {
    pub running: Running,
    pub addr: SocketAddr,
    pub upstream: EchoUpstream,
    pub dir: tempfile::TempDir,
    /// The keys of `issuers[0]`, in config order; empty for a gateway that issues its own.
    keys: Vec<TestKey>,
}

/// Builder for a test gateway config.
pub struct Setup {
    pub keys: Vec<TestKey>,
    /// Extra top-level YAML appended verbatim (e.g. `trusted_proxies`, `limits`).
    pub extra: String,
    /// Routes YAML (a list under `routes:`); `{upstream}` names the echo upstream.
    pub routes: String,
    /// Extra lines for the `issuers[0]` entry.
    pub issuer_extra: String,
    /// Listener YAML (defaults to plain HTTP on port 0).
    pub listeners: Option<String>,
    /// More `upstreams:` entries (YAML lines indented by two spaces) besides `echo` and
    /// `builtin`.
    pub upstreams: String,
    /// The gateway's clock: the system's, or [`Clock::manual`] for a test that moves time.
    pub clock: Clock,
}

pub const DEFAULT_ROUTES: &str = r#"
  - { id: public, path: /public, upstream: echo, policy: public }
  - { id: api, path: /api, upstream: echo, policy: authenticated }
  - { id: docs-read, path: /docs, methods: [GET], upstream: echo, policy: { all_of: [docs:read] } }
  - { id: docs-write, path: /docs, methods: [POST, PUT], upstream: echo, policy: { all_of: [docs:write] } }
  - { id: admin, path: /admin, upstream: echo, policy: { any_of: [admin] } }
  - { id: root, path: /, upstream: echo, policy: public }
"#;

impl Default for Setup {
    fn default() -> Self {
        Self {
            keys: vec![TestKey::generate(Algorithm::EdDSA, "k-ed")],
            extra: String::new(),
            routes: DEFAULT_ROUTES.into(),
            issuer_extra: String::new(),
            listeners: None,
            upstreams: String::new(),
            clock: Clock::system(),
        }
    }
}

impl Setup {
    /// Writes key files into `dir` and returns the YAML.
    pub fn yaml(&self, dir: &Path, upstream_url: &str) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("      - {}", k.yaml_entry(dir)))
            .collect();
        let listeners = self
            .listeners
            .clone()
            .unwrap_or_else(|| "  - bind: 127.0.0.1:0".into());
        format!(
            r#"
listeners:
{listeners}
issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    keys:
{keys}
{issuer_extra}
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
  admin: [admin, docs:read, docs:write]
upstreams:
  echo: {{ url: "{upstream_url}", response_timeout: 5s }}
  builtin: {{ echo: true }}
{upstreams}
routes:
{routes}
{extra}
"#,
            keys = keys.join("\n"),
            upstreams = self.upstreams,
            issuer_extra = self.issuer_extra,
            routes = self.routes,
            extra = self.extra,
        )
    }

    /// Starts the gateway, with alice's session (`sid-alice`, the default token's) created.
    pub async fn start(self) -> TestGateway {
        let gw = self.start_without_session().await;
        // The default token's session exists; tests that want otherwise revoke it.
        gw.create_session("sid-alice", "alice").await;
        gw
    }

    /// Starts the gateway and touches nothing else: for a store that does not answer yet.
    pub async fn start_without_session(self) -> TestGateway {
        let upstream = EchoUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let yaml = self.yaml(dir.path(), &upstream.url());
        let running = launch(&yaml, dir.path(), self.clock).await;
        TestGateway::new(running, upstream, dir, self.keys)
    }
}

/// Compiles `yaml` (relative paths resolve in `dir`) and starts a gateway on `clock`: the one
/// place the suites start a gateway from YAML.
pub async fn launch(yaml: &str, dir: &Path, clock: Clock) -> Running {
    let config = Config::from_yaml(yaml, dir).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    portcullis::start_with(config, None, clock)
        .await
        .unwrap_or_else(|e| panic!("the gateway did not start: {e}\n{yaml}"))
}

/// Loads `path` and starts a gateway on `clock` that reloads from it (on change, SIGHUP and
/// the admin API).
pub async fn launch_file(path: &Path, clock: Clock) -> Running {
    let config = Config::load(path).unwrap_or_else(|e| panic!("{e}\n{}", path.display()));
    portcullis::start_with(config, Some(path.to_owned()), clock)
        .await
        .unwrap_or_else(|e| panic!("the gateway did not start: {e}"))
}

impl TestGateway {
    pub async fn start() -> Self {
        Setup::default().start().await
    }

    /// Wraps a started gateway; `keys` are the test keys it trusts (first: [`TestGateway::key`]).
    pub fn new(
        running: Running,
        upstream: EchoUpstream,
        dir: tempfile::TempDir,
        keys: Vec<TestKey>,
    ) -> Self {
        Self {
            addr: running.local_addrs()[0],
            running,
            upstream,
            dir,
            keys,
        }
    }

    /// The key tokens are minted with: the first of `issuers[0]`.
    ///
    /// # Panics
    /// For a gateway that issues its own tokens ([`auth::AuthSetup`]).
    pub fn key(&self) -> &TestKey {
        self.keys
            .first()
            .expect("this gateway trusts no test key: it issues its own tokens")
    }

    /// The gateway's clock.
    pub fn clock(&self) -> &Clock {
        self.running.gateway().clock()
    }

    /// The gateway's time, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.clock().now()
    }

    /// Moves the gateway's manual clock forward (panics on the system clock).
    pub fn advance(&self, by: Duration) {
        self.clock().advance(by);
    }

    pub fn store(&self) -> &portcullis::store::Store {
        self.running.gateway().store()
    }

    /// The Redis store behind the gateway.
    ///
    /// # Panics
    /// When it runs the memory store.
    pub fn redis(&self) -> &RedisStore {
        match self.store() {
            Store::Redis(r) => r,
            Store::Memory(_) => panic!("the gateway runs the memory store, not redis"),
        }
    }

    /// With Redis: waits until the gateway receives invalidations (before that it caches no
    /// positive verdict, and a test of eviction would prove nothing). Nothing to wait for with
    /// the memory store.
    pub async fn wait_subscribed(&self) {
        if let Store::Redis(store) = self.store() {
            wait_subscribed(store).await;
        }
    }

    pub async fn create_session(&self, sid: &str, sub: &str) {
        use portcullis::store::{SessionRecord, SessionStore};
        let n = self.now();
        self.store()
            .create_session(
                SessionRecord {
                    id: sid.into(),
                    subject: sub.into(),
                    created_at: n,
                    last_seen: n,
                    ip: "127.0.0.1".into(),
                    user_agent: "tests".into(),
                    absolute_expiry: n + 3600,
                    idle_expiry: n + 3600,
                    remember_me: false,
                    provider: None,
                },
                None,
            )
            .await
            .unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A valid token for alice with role reader (overridable claims).
    pub fn token(&self, overrides: Value) -> String {
        self.key().token(overrides)
    }

    /// GET with a bearer token.
    pub async fn get_bearer(&self, path: &str, token: &str) -> TestResponse {
        self.send(
            Request::get(self.url(path))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(
            Request::get(self.url(path))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> TestResponse {
        send(req).await
    }

    /// Sends raw bytes on a fresh connection and returns everything read until close or 2s.
    pub async fn raw(&self, bytes: &[u8]) -> String {
        raw(self.addr, bytes).await
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Its `Set-Cookie` headers, parsed.
    pub fn set_cookies(&self) -> Vec<SetCookie> {
        set_cookies(&self.headers)
    }
}

/// One `Set-Cookie` header, split into name, value and attributes (names lower-cased).
#[derive(Debug, Clone)]
pub struct SetCookie {
    /// The header as sent.
    pub raw: String,
    pub name: String,
    pub value: String,
    pub attrs: Vec<(String, String)>,
}

impl SetCookie {
    /// An attribute's value (`""` for a flag such as `Secure`); `name` lower-case.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.attr(name).is_some()
    }

    /// A cookie that deletes rather than sets.
    pub fn expires_now(&self) -> bool {
        self.attr("max-age") == Some("0")
    }
}

/// Every `Set-Cookie` header of `headers`, parsed: the suites' one reader of them.
pub fn set_cookies(headers: &HeaderMap) -> Vec<SetCookie> {
    headers
        .get_all("set-cookie")
        .iter()
        .map(|v| {
            let raw = String::from_utf8_lossy(v.as_bytes()).into_owned();
            let mut parts = raw.split(';');
            let (name, value) = parts
                .next()
                .unwrap()
                .split_once('=')
                .unwrap_or_else(|| panic!("a Set-Cookie without `=`: {raw}"));
            let attrs = parts
                .map(|a| {
                    let (n, v) = a.split_once('=').unwrap_or((a, ""));
                    (n.trim().to_ascii_lowercase(), v.trim().to_owned())
                })
                .collect();
            SetCookie {
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
                attrs,
                raw,
            }
        })
        .collect()
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(req: Request<Full<Bytes>>) -> TestResponse {
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A private `redis-server` on a loopback port, with no persistence; stopped by its pid when
/// dropped. Never the machine's 6379.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// How many ports a server that lost its port to another process tries before giving up.
const PORT_ATTEMPTS: usize = 8;

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `--cluster-enabled yes`). redis-server
    /// cannot bind port 0 and report it, so the port is one that was free a moment ago, and
    /// another is tried if some other process took it meanwhile.
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            port: 0,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            if server.spawn().is_ok() {
                return server;
            }
        }
        panic!("redis-server found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// Starts on a chosen port: for a gateway configured with an address where nothing listened
    /// yet (take the port from [`free_port`]).
    pub fn start_on(port: u16) -> Self {
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: Vec::new(),
        };
        server
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server on port {port}: {e}"));
        server
    }

    /// Runs redis-server on `self.port` and waits until it answers `PING`. `Err` if it exited
    /// first: redis-server exits when it cannot bind its port.
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let port = self.port;
        let mut exited = None;
        let answered = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            ping(port)
        });
        if let Some(status) = exited {
            return Err(format!("redis-server exited with {status}"));
        }
        self.child = Some(child);
        assert!(answered, "redis-server on port {port} did not start");
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL by pid) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn()
            .unwrap_or_else(|e| panic!("redis-server did not restart on port {port}: {e}"));
    }

    /// Runs one command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a Redis server answers `PING` on `port`.
fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Runs one redis-cli command against the server on `port` and returns its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port that was free a moment ago on 127.0.0.1: only for servers that cannot bind port 0
/// and report theirs (redis-server, sentinel), which retry on a conflict.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `probe` from a plain thread until it returns true or `within` passes; whether it did.
/// For the state of external processes (redis-server, sentinel, a cluster), which can only be
/// asked again until it changes.
pub fn wait_for(within: Duration, mut probe: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if probe() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        // An external process changes on its own time: only asking again sees it.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The audit events `gateway` wrote to its file at `path` so far. The writer thread appends
/// asynchronously: this first waits until the file holds every line the gateway had emitted
/// when it was called.
pub async fn audit_events(gateway: &portcullis::Gateway, path: &Path) -> Vec<Value> {
    let emitted = gateway.audit().emitted();
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    let caught_up = eventually(Duration::from_secs(10), || {
        let lines = read().lines().count() as u64;
        async move { lines >= emitted }
    })
    .await;
    assert!(
        caught_up.is_some(),
        "the audit file never held the {emitted} lines emitted:\n{}",
        read()
    );
    read()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls `probe` until it returns true or `within` passes; returns how long it took.
pub async fn eventually<F, Fut>(within: Duration, mut probe: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        if probe().await {
            return Some(started.elapsed());
        }
        // State another task or process changes (a subscription coming up, a Redis message
        // delivered, a file written) is only seen by asking again.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Waits until `store` receives invalidations: before that it caches no positive verdict, and
/// a test of cache eviction would prove nothing.
pub async fn wait_subscribed(store: &RedisStore) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.cache().is_subscribed()
        })
        .await
        .is_some(),
        "never subscribed to invalidations"
    );
}

/// Connects a Redis store with `settings` and waits for its invalidation subscription: the
/// store-level suites' one way to get a store.
pub async fn connect_store(settings: &portcullis::store::RedisSettings) -> RedisStore {
    let store = RedisStore::connect(settings, portcullis::clock::Clock::system())
        .await
        .unwrap();
    wait_subscribed(&store).await;
    store
}

/// A Redis Cluster of private `redis-server` masters (no replicas) on free loopback ports,
/// joined with `redis-cli --cluster create`; every node is stopped by its pid when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (≥ 3) nodes, joins them and waits until every node says
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        Self::start_with_replicas(masters, 0)
    }

    /// Starts `masters` (≥ 3) masters with `replicas` replicas each, joins them and waits until
    /// every node says `cluster_state:ok` and every replica is in sync.
    pub fn start_with_replicas(masters: usize, replicas: usize) -> Self {
        // Each server has its own --dir, so one relative file name is unique per node.
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let cluster = Self { nodes };
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let formed = wait_for(Duration::from_secs(20), || {
            let ok = cluster
                .nodes
                .iter()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let synced = cluster.replicas().iter().all(|r| {
                r.cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
            });
            ok && synced && cluster.replicas().len() == masters * replicas
        });
        assert!(formed, "the cluster never reached cluster_state:ok");
        cluster
    }

    /// The nodes that are replicas now.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.cli(&["ROLE"]).starts_with("slave"))
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of every node (the seed list).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

/// A private Redis Sentinel on a loopback port monitoring one master; stopped by its pid when
/// dropped.
pub struct RedisSentinel {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts a sentinel that monitors `127.0.0.1:<master_port>` as `master_name` with quorum 1,
    /// calls it down after 1 s and allows a failover every 3 s. Like [`RedisServer`], on a port
    /// that was free a moment ago, and on another if some other process took it meanwhile.
    pub fn start(master_name: &str, master_port: u16) -> Self {
        for _ in 0..PORT_ATTEMPTS {
            if let Some(sentinel) = Self::try_start(master_name, master_port, free_port()) {
                return sentinel;
            }
        }
        panic!("redis sentinel found no free port in {PORT_ATTEMPTS} attempts");
    }

    /// `None` if the sentinel exited before it answered (it could not bind `port`).
    fn try_start(master_name: &str, master_port: u16, port: u16) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        // The sentinel rewrites its config file, so it lives in the sentinel's own dir.
        let conf = write(
            dir.path(),
            "sentinel.conf",
            &format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {master_name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 3000\n",
                dir = dir.path().display(),
            ),
        );
        let mut child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        let mut exited = false;
        let answered = wait_for(Duration::from_secs(10), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || ping(port)
        });
        if exited {
            return None;
        }
        assert!(answered, "redis sentinel on port {port} did not start");
        Some(Self {
            port,
            child: Some(child),
            dir,
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs one command with redis-cli against the sentinel and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// The port of the master this sentinel currently names, if it names one.
    pub fn master_port(&self, master_name: &str) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "get-master-addr-by-name", master_name]);
        out.lines().nth(1)?.trim().parse().ok()
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to one process by its pid.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}
pub mod auth;
pub mod oidc;

/// Reads until the end of a response head. `None` if `within` passes first, or the
/// connection closes or resets before a whole head arrived.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Option<String> {
    let mut buf = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing after the head (an upgraded stream's data) is consumed.
        loop {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => buf.push(byte[0]),
            }
            if buf.ends_with(b"\r\n\r\n") {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
        }
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// A TCP proxy on a free loopback port in front of `target`, that can **freeze**: stop
/// forwarding in both directions while every socket stays open, as a network that drops
/// packets does. No error reaches either side; only silence. Thawing forwards what was held.
pub struct FreezingProxy {
    pub port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, rx.clone()), pump(sr, cw, rx));
                });
            }
        });
        Self { port, frozen, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on nothing is forwarded (bytes already in flight included).
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding every chunk while the proxy is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held, not dropped: the sender's socket stays open and sees no error.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A second handle on the same signing key, so two gateways trust the same tokens.
pub fn same_key(k: &TestKey) -> TestKey {
    TestKey {
        kid: k.kid.clone(),
        alg: k.alg,
        encoding: k.encoding.clone(),
        public_pem: k.public_pem.clone(),
        public_der: k.public_der.clone(),
    }
}

/// The staleness bound the partition tests configure, and the store timeout beside it.
pub const MAX_STALENESS: Duration = Duration::from_millis(300);
pub const STORE_TIMEOUT: Duration = Duration::from_millis(200);

/// A gateway on the Redis at `url` with extra `store:` keys, tokens without sessions
/// (`require_session: false`) when `sessionless`, and an audit file `audit.jsonl` in its dir.
pub async fn redis_gateway_with(
    url: &str,
    prefix: &str,
    key: TestKey,
    store_extra: &str,
    sessionless: bool,
) -> TestGateway {
    let setup = Setup {
        keys: vec![key],
        extra: format!(
            "store: {{ kind: redis, url: \"{url}\", key_prefix: {prefix}, timeout: {}ms{store_extra} }}\n\
             audit: {{ file: audit.jsonl }}",
            STORE_TIMEOUT.as_millis()
        ),
        issuer_extra: if sessionless {
            "    require_session: false".into()
        } else {
            String::new()
        },
        ..Setup::default()
    };
    let gw = setup.start().await;
    gw.wait_subscribed().await;
    gw
}

/// How the [`JwksServer`] answers a document path.
#[derive(Clone, Debug)]
pub enum Serve {
    /// 200 with this JSON body and `Cache-Control` (when given).
    Json(Value, Option<String>),
    /// This status with an empty body (a 3xx gets a `Location` to `/moved`).
    Status(u16),
    /// 200 with a body of this many bytes (an endless-looking document).
    Oversized(usize),
}

/// An identity provider's document server on 127.0.0.1:0: `/.well-known/openid-configuration`
/// and `/jwks` answer what the test set (changeable at any time), every path is counted, and
/// while [`JwksServer::set_down`] is on, connections are closed without an answer.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    docs: Arc<Mutex<BTreeMap<String, Serve>>>,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl JwksServer {
    /// A server whose discovery document names `issuer` and this server's `/jwks`, which
    /// serves `keys` (JWKs).
    pub async fn start(issuer: &str, keys: Vec<Value>) -> Self {
        Self::start_with(issuer, keys, None).await
    }

    /// The same over TLS, with a certificate for `127.0.0.1` and `localhost` from a CA of its
    /// own; returns the CA certificate (PEM) beside the server.
    pub async fn start_tls(issuer: &str, keys: Vec<Value>) -> (Self, String) {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key_pair.serialize_der().into()),
            )
            .unwrap();
        let server = Self::start_with(issuer, keys, Some(Arc::new(tls))).await;
        (server, cert.pem())
    }

    async fn start_with(
        issuer: &str,
        keys: Vec<Value>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            docs: Arc::default(),
            hits: Arc::default(),
            down: Arc::default(),
        };
        server.set_discovery(issuer);
        server.set_keys(keys);
        let s = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                if s.down.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.answer(req.uri().path())) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => {
                            let Ok(stream) =
                                tokio_rustls::TlsAcceptor::from(tls).accept(stream).await
                            else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(stream), service).await
                        }
                    };
                });
            }
        });
        server
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        *self
            .hits
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default() += 1;
        let serve = self.docs.lock().unwrap().get(path).cloned();
        let mut r = Response::builder();
        match serve {
            None => r.status(404).body(Full::new(Bytes::new())).unwrap(),
            Some(Serve::Json(body, cache)) => {
                if let Some(cache) = cache {
                    r = r.header("cache-control", cache);
                }
                r.header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap()
            }
            Some(Serve::Status(status)) => r
                .status(status)
                .header("location", self.url("/moved"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
            Some(Serve::Oversized(n)) => {
                let mut body = String::from(r#"{"keys":[],"pad":""#);
                body.push_str(&"x".repeat(n));
                body.push_str(r#""}"#);
                r.body(Full::new(Bytes::from(body))).unwrap()
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    pub fn discovery_url(&self) -> String {
        self.url("/.well-known/openid-configuration")
    }

    pub fn jwks_url(&self) -> String {
        self.url("/jwks")
    }

    /// The discovery document names `issuer` (and this server's `/jwks`).
    pub fn set_discovery(&self, issuer: &str) {
        let doc = json!({ "issuer": issuer, "jwks_uri": self.jwks_url() });
        self.serve("/.well-known/openid-configuration", Serve::Json(doc, None));
    }

    /// `/jwks` serves these JWKs, without `Cache-Control`.
    pub fn set_keys(&self, keys: Vec<Value>) {
        self.serve("/jwks", Serve::Json(json!({ "keys": keys }), None));
    }

    pub fn serve(&self, path: &str, serve: Serve) {
        self.docs.lock().unwrap().insert(path.to_owned(), serve);
    }

    /// While on, every connection is closed at once (the provider is down).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// Requests received for any path.
    pub fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

impl TestKey {
    /// The public JWK of this key, with `kid` and `alg` (remove `alg` to test a JWK without).
    pub fn jwk(&self) -> Value {
        let der = &self.public_der;
        let mut jwk = match self.alg {
            Algorithm::EdDSA => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(&der[der.len() - 32..]) })
            }
            Algorithm::ES256 => {
                let point = &der[der.len() - 64..];
                json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[..32]), "y": b64(&point[32..]) })
            }
            Algorithm::RS256 | Algorithm::PS256 => {
                let (n, e) = rsa_components(der);
                json!({ "kty": "RSA", "n": b64(n), "e": b64(e) })
            }
            other => panic!("no public JWK for {other:?}"),
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg_name());
        jwk
    }
}

/// `n` and `e` of an RSA SubjectPublicKeyInfo (DER): the two INTEGERs of the RSAPublicKey in
/// its BIT STRING, leading zero bytes removed.
fn rsa_components(spki: &[u8]) -> (&[u8], &[u8]) {
    /// The content of the DER element at `at`, and the index after it.
    fn element(der: &[u8], at: usize) -> (usize, usize) {
        let len0 = der[at + 1] as usize;
        let (len, start) = if len0 < 0x80 {
            (len0, at + 2)
        } else {
            let n = len0 & 0x7f;
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, at + 2 + n)
        };
        (start, start + len)
    }
    let (outer, _) = element(spki, 0); // SEQUENCE
    let (_, after_alg) = element(spki, outer); // AlgorithmIdentifier
    let (bits, _) = element(spki, after_alg); // BIT STRING
    let (rsa, _) = element(spki, bits + 1); // RSAPublicKey SEQUENCE (after the unused-bits byte)
    let (n_start, n_end) = element(spki, rsa);
    let (e_start, e_end) = element(spki, n_end);
    let trim = |mut b: &[u8]| -> usize {
        let mut skipped = 0;
        while b.len() > 1 && b[0] == 0 {
            b = &b[1..];
            skipped += 1;
        }
        skipped
    };
    let n = &spki[n_start..n_end];
    let e = &spki[e_start..e_end];
    (&n[trim(n)..], &e[trim(e)..])
}
