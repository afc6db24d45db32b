//! Operations, black-box: `/metrics` read with a Prometheus parser, `/healthz` and `/readyz`
//! (with a Redis store that dies and comes back), the admin API and its audit trail, hot reload
//! of `gateway.yaml` and of the users file, a TLS certificate swap, secrets kept out of the audit
//! file and the logs of the real binary (and its CLI against the admin API), and SIGTERM
//! draining in-flight requests (issue 5, docs/security.md 33).
//!
//! Each gateway has its own metrics registry, so a test's counts are its own requests even with
//! other gateways running in this test binary at once; tests still read differences, since
//! logging in counts too.

use crate::common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::auth::{ALICE_PASSWORD, BOB_PASSWORD, Browser, demo_users, post_json};
use common::{EchoUpstream, RedisServer, TestGateway, TestResponse, eventually, free_port, send};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use portcullis::clock::Clock;
use prometheus_parse::{HistogramCount, LineInfo, Scrape, Value as Metric};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
const BOUND: Duration = Duration::from_secs(10);
/// Bound for a change noticed by polling (config every 2 s, users every 1 s): a reload builds a
/// whole runtime, argon2 dummy hash included, which takes seconds on a busy debug build.
const POLL_BOUND: Duration = Duration::from_secs(20);
/// The admin bearer secret of every in-process gateway here (≥ 32 bytes).
const ADMIN_SECRET: &str = "ops-test-admin-secret-6f1c2a9e4b7d03581e2f4a6c8b0d1e3f";
/// The user agent the admin requests of these tests send.
const ADMIN_UA: &str = "ops-tests/1.0";
/// A wrong password typed for alice.
const WRONG_PASSWORD: &str = "not-alices-password-q7w8e9";

const ROLES: &str =
    "  reader: [docs:read]\n  editor: [docs:read, docs:write]\n  owner: [docs:read, docs:write]";

const ROUTES: &str = r#"  - { id: public, path: /public, upstream: echo, policy: public }
  - { id: app, path: /app, upstream: echo, policy: authenticated }
  - { id: docs-read, path: /docs, methods: [GET], upstream: echo, policy: { all_of: [docs:read] } }
  - { id: docs-write, path: /docs, methods: [POST], upstream: echo, policy: { all_of: [docs:write] } }"#;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The parts of a `gateway.yaml` the tests here vary; the rest is an auth-enabled gateway with
/// the demo users, an audit file and (by default) an admin listener with a bearer secret.
#[derive(Clone)]
struct Spec {
    listeners: String,
    store: String,
    roles: String,
    routes: String,
    /// The `admin:` mapping, or `None` for no admin listener.
    admin: Option<String>,
    extra: String,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            listeners: "  - bind: 127.0.0.1:0".into(),
            store: "store: { kind: memory }".into(),
            roles: ROLES.into(),
            routes: ROUTES.into(),
            admin: Some("{ bind: 127.0.0.1:0, token_file: admin.token }".into()),
            extra: String::new(),
        }
    }
}

impl Spec {
    fn render(&self, upstream_url: &str) -> String {
        let admin = self
            .admin
            .as_ref()
            .map(|a| format!("admin: {a}"))
            .unwrap_or_default();
        format!(
            r#"listeners:
{listeners}
{store}
roles:
{roles}
upstreams:
  echo: {{ url: "{upstream_url}", response_timeout: 5s }}
routes:
{routes}
auth:
  issuer: https://gw.test
  audience: gw-tests
  users_file: users.yaml
  access_ttl: 15m
  throttle: {{ per_ip: 50, per_user: 5, window: 15m }}
audit:
  file: audit.jsonl
limits:
  header_read_timeout: 30s
{admin}
{extra}
"#,
            listeners = self.listeners,
            store = self.store,
            roles = self.roles,
            routes = self.routes,
            extra = self.extra,
        )
    }
}

/// The harness's gateway, started from a file (so it reloads), with its admin listener.
struct Ops {
    gw: TestGateway,
    admin: Option<SocketAddr>,
    spec: Spec,
    config_path: PathBuf,
}

impl std::ops::Deref for Ops {
    type Target = TestGateway;

    fn deref(&self) -> &TestGateway {
        &self.gw
    }
}

impl Ops {
    async fn start(spec: Spec) -> Self {
        let upstream = EchoUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
        let config_path = dir.path().join("gateway.yaml");
        let yaml = spec.render(&upstream.url());
        std::fs::write(&config_path, &yaml).unwrap();
        let running = common::launch_file(&config_path, Clock::system()).await;
        Self {
            admin: running.admin_addr(),
            gw: TestGateway::new(running, upstream, dir, Vec::new()),
            spec,
            config_path,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("no admin listener"))
    }

    /// Writes a new `gateway.yaml` from `spec` the way config managers do (a rename over the
    /// old file), so a poll never sees half a file.
    fn rewrite(&mut self, spec: Spec) {
        replace_file(&self.config_path, &spec.render(&self.upstream.url()));
        self.spec = spec;
    }

    /// Writes raw text as `gateway.yaml` (for broken files).
    fn rewrite_raw(&self, text: &str) {
        replace_file(&self.config_path, text);
    }

    async fn get(&self, path: &str) -> TestResponse {
        send(
            Request::get(self.url(path))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    async fn bearer(&self, method: Method, path: &str, token: &str) -> TestResponse {
        send(
            Request::builder()
                .method(method)
                .uri(self.url(path))
                .header("authorization", format!("Bearer {token}"))
                .header("accept", "application/json")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }

    /// Logs in through the JSON API with tokens in the body: (access, refresh, session).
    async fn login(&self, user: &str, password: &str) -> (String, String, String) {
        common::auth::api_login(&self.url(""), user, password).await
    }

    /// A request to the admin listener, with the bearer `token` if given.
    async fn admin_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> TestResponse {
        let mut req = Request::builder()
            .method(method)
            .uri(self.admin_url(path))
            .header("user-agent", ADMIN_UA);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        send(req.body(Full::new(body)).unwrap()).await
    }

    async fn admin_ok(&self, method: Method, path: &str, body: Option<Value>) -> TestResponse {
        self.admin_call(method, path, body, Some(ADMIN_SECRET))
            .await
    }

    async fn scrape(&self) -> Scrape {
        let r = send(
            Request::get(self.admin_url("/metrics"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let content_type = r.headers["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        parse_prometheus(&r.text())
    }

    async fn status_of(&self, path: &str) -> StatusCode {
        try_get(&self.admin_url(path)).await.unwrap_or_default()
    }

    /// The audit events written so far.
    fn audit(&self) -> Vec<Value> {
        read_audit(&self.audit_path())
    }

    /// Waits until at least `n` events named `event` (with `reason`, if given) are in the
    /// audit file, then until every line emitted so far is, so that an extra one would show,
    /// and returns them all.
    async fn audited(&self, event: &str, reason: Option<&str>, n: usize) -> Vec<Value> {
        let matching = |events: Vec<Value>| -> Vec<Value> {
            events
                .into_iter()
                .filter(|e| e["event"] == event && reason.is_none_or(|r| e["reason_id"] == r))
                .collect()
        };
        let found = eventually(POLL_BOUND, || {
            let count = matching(self.audit()).len();
            async move { count >= n }
        })
        .await;
        assert!(
            found.is_some(),
            "fewer than {n} `{event}` events ({reason:?}) in the audit file:\n{:#?}",
            self.audit()
        );
        // An extra event emitted with them is in the file once every line the gateway has
        // emitted so far is.
        matching(self.audit_events().await)
    }
}

fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("writing");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn read_audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// GET that tolerates a refused connection or a slow answer (for probes): `None` then.
async fn try_get(url: &str) -> Option<StatusCode> {
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    match timeout(Duration::from_secs(2), common::client().request(req)).await {
        Ok(Ok(r)) => Some(r.status()),
        _ => None,
    }
}

/// `time` is an RFC 3339 UTC timestamp with milliseconds: `2026-11-28T03:04:05.678Z`.
fn assert_utc_time(event: &Value) {
    let t = event["time"].as_str().expect("an event without time");
    let b = t.as_bytes();
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22];
    let ok = b.len() == 24
        && digits.iter().all(|&i| b[i].is_ascii_digit())
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z';
    assert!(ok, "not an RFC 3339 UTC time: {t}");
}

/// The fields every admin event carries: who (client IP, user agent), what (method, path),
/// when (UTC), and no credential.
fn assert_admin_fields(event: &Value, method: &str, path: &str) {
    assert_utc_time(event);
    assert_eq!(event["client.ip"], "127.0.0.1", "{event}");
    assert_eq!(event["method"], method, "{event}");
    assert_eq!(event["path"], path, "{event}");
    assert_eq!(event["user_agent"], ADMIN_UA, "{event}");
    assert!(!event.to_string().contains(ADMIN_SECRET), "{event}");
}

// --- Prometheus text -------------------------------------------------------------------------

/// Parses the exposition with `prometheus-parse`, and first checks what that parser is lenient
/// about: every line is a `# HELP`/`# TYPE` line or a sample with a numeric value, and every
/// sample belongs to a family declared with `# TYPE` before it.
fn parse_prometheus(text: &str) -> Scrape {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Empty => {}
            LineInfo::Doc { .. } => assert!(line.starts_with("# HELP "), "{line:?}"),
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                let kind = line.rsplit(' ').next().unwrap().to_owned();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind.as_str()),
                    "{line:?}"
                );
                assert!(
                    typed.insert(family.clone(), kind).is_none(),
                    "{family} typed twice"
                );
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                assert!(
                    value.parse::<f64>().is_ok(),
                    "sample value is not a number: {line:?}"
                );
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        metric_name
                            .strip_suffix(s)
                            .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(metric_name);
                assert!(
                    typed.contains_key(family),
                    "sample before its # TYPE line: {line:?}"
                );
            }
            LineInfo::Ignored => {
                assert!(
                    line.starts_with('#')
                        && !line.starts_with("# HELP")
                        && !line.starts_with("# TYPE"),
                    "not Prometheus text: {line:?}"
                );
            }
        }
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text")
}

fn scalar(value: &Metric) -> f64 {
    match value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        other => panic!("not a scalar: {other:?}"),
    }
}

/// The value of `name` with exactly `labels`; 0 when the series does not exist yet (counters
/// with a zero value are not rendered).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map_or(0.0, |s| scalar(&s.value))
}

fn is_counter(scrape: &Scrape, name: &str) -> bool {
    scrape
        .samples
        .iter()
        .any(|s| s.metric == name && matches!(s.value, Metric::Counter(_)))
}

/// A histogram's buckets, by bound; checks they are cumulative and end at `+Inf` = `_count`.
fn histogram(scrape: &Scrape, name: &str) -> Vec<HistogramCount> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && matches!(s.value, Metric::Histogram(_)))
        .unwrap_or_else(|| panic!("no histogram {name}"));
    let Metric::Histogram(buckets) = &sample.value else {
        unreachable!()
    };
    let mut buckets = buckets.clone();
    buckets.sort_by(|a, b| a.less_than.total_cmp(&b.less_than));
    assert!(buckets.len() >= 2, "{name}: {buckets:?}");
    for pair in buckets.windows(2) {
        assert!(
            pair[0].count <= pair[1].count,
            "{name}: buckets are not monotone: {buckets:?}"
        );
        assert!(pair[0].less_than < pair[1].less_than, "{name}: {buckets:?}");
    }
    let last = buckets.last().unwrap();
    assert!(last.less_than.is_infinite(), "{name}: no +Inf bucket");
    assert_eq!(
        last.count,
        value(scrape, &format!("{name}_count"), &[]),
        "{name}: +Inf bucket differs from _count"
    );
    assert!(value(scrape, &format!("{name}_sum"), &[]) >= 0.0);
    buckets
}

fn histogram_count(scrape: &Scrape, name: &str) -> f64 {
    histogram(scrape, name).last().unwrap().count
}

// --- Raw connections and TLS -----------------------------------------------------------------

/// An HTTP/1.1 connection held open by the test (keep-alive).
async fn open_connection<S>(io: S) -> SendRequest<Full<Bytes>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` on an already open connection; panics if the connection was closed.
async fn get_on(sender: &mut SendRequest<Full<Bytes>>, path: &str) -> StatusCode {
    timeout(BOUND, sender.ready())
        .await
        .expect("connection not ready")
        .expect("the kept-alive connection was closed");
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = timeout(BOUND, sender.send_request(request))
        .await
        .expect("timed out")
        .expect("request on the kept-alive connection failed");
    let status = response.status();
    let _ = timeout(BOUND, response.into_body().collect()).await;
    status
}

/// A self-signed certificate for `localhost`: (cert PEM, key PEM, DER).
fn certificate() -> (String, String, CertificateDer<'static>) {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    (cert.pem(), key_pair.serialize_pem(), cert.der().clone())
}

async fn tls_connect(
    addr: SocketAddr,
    trusted: &[&CertificateDer<'static>],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trusted {
        roots.add((*cert).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    timeout(
        BOUND,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .expect("TLS handshake timed out")
    .expect("TLS handshake failed")
}

fn peer_certificate(
    stream: &tokio_rustls::client::TlsStream<TcpStream>,
) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("no peer certificate")[0]
        .clone()
}

// --- The real binary -------------------------------------------------------------------------

/// `portcullis run` as a child process, its stdout and stderr captured to files. Killed by its
/// pid if a test ends without stopping it.
struct Binary {
    child: Child,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

impl Binary {
    fn spawn(dir: &Path, config: &Path) -> Self {
        let stderr_path = dir.join("gateway.stderr");
        let stdout_path = dir.join("gateway.stdout");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("PORTCULLIS_LOG", "debug")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawning portcullis");
        Self {
            child,
            stderr_path,
            stdout_path,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The proxy listeners' addresses, from the binary's `listening` log lines (it binds
    /// port 0 and says which port it got).
    async fn listening(&self) -> Vec<SocketAddr> {
        let parse = || -> Vec<SocketAddr> {
            self.logs()
                .lines()
                .filter(|l| l.contains("listening"))
                .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
                .filter_map(|a| a.trim_matches('"').parse().ok())
                .collect()
        };
        let logged = eventually(Duration::from_secs(30), || {
            let found = !parse().is_empty();
            async move { found }
        })
        .await;
        assert!(
            logged.is_some(),
            "portcullis never said where it listens:\n{}",
            self.logs()
        );
        parse()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            + &std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Waits until `url` answers 200, failing early if the process exits.
    async fn wait_ready(&mut self, url: &str) {
        let child = &mut self.child;
        let mut exited = None;
        let ready = eventually(Duration::from_secs(30), || {
            exited = child.try_wait().unwrap();
            let gone = exited.is_some();
            async move { gone || try_get(url).await == Some(StatusCode::OK) }
        })
        .await;
        if let Some(status) = exited {
            panic!("portcullis exited with {status}:\n{}", self.logs());
        }
        assert!(
            ready.is_some(),
            "portcullis did not become ready:\n{}",
            self.logs()
        );
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit, at most `within`.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let mut exited = None;
        eventually(within, || {
            exited = child.try_wait().unwrap();
            let gone = exited.is_some();
            async move { gone }
        })
        .await;
        exited.unwrap_or_else(|| {
            panic!(
                "portcullis did not exit within {within:?}:\n{}",
                self.logs()
            )
        })
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn cli(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("running portcullis")
}

// ---------------------------------------------------------------------------------------------
// 1. Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_requests_by_route_and_status_and_decisions_by_reason()
 {
    let gw = Ops::start(Spec {
        routes: r#"  - { id: ops-m-public, path: /public, upstream: echo, policy: public }
  - { id: ops-m-read, path: /docs, methods: [GET], upstream: echo, policy: { all_of: [docs:read] } }
  - { id: ops-m-write, path: /docs, methods: [POST], upstream: echo, policy: { all_of: [docs:write] } }"#
            .into(),
        ..Spec::default()
    })
    .await;
    let (alice, _, _) = gw.login("alice", ALICE_PASSWORD).await;
    let (bob, _, _) = gw.login("bob", BOB_PASSWORD).await;
    let before = gw.scrape().await;
    assert_eq!(value(&before, "portcullis_config_generation", &[]), 1.0);

    for _ in 0..3 {
        assert_eq!(gw.get("/public/x").await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(gw.get("/docs/x").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        gw.bearer(Method::GET, "/docs/x", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.bearer(Method::POST, "/docs/x", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.bearer(Method::POST, "/docs/x", &bob).await.status,
        StatusCode::FORBIDDEN
    );
    let after = gw.scrape().await;

    let diff = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let requests = "portcullis_requests_total";
    assert!(is_counter(&after, requests));
    assert_eq!(
        diff(requests, &[("route", "ops-m-public"), ("status", "200")]),
        3.0
    );
    assert_eq!(
        diff(requests, &[("route", "ops-m-read"), ("status", "401")]),
        2.0
    );
    assert_eq!(
        diff(requests, &[("route", "ops-m-read"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        diff(requests, &[("route", "ops-m-write"), ("status", "200")]),
        1.0
    );
    assert_eq!(
        diff(requests, &[("route", "ops-m-write"), ("status", "403")]),
        1.0
    );
    assert_eq!(
        diff(requests, &[("route", "ops-m-public"), ("status", "401")]),
        0.0
    );

    // The gateway's own registry: exactly this test's decisions.
    let decisions = "portcullis_auth_decisions_total";
    assert!(is_counter(&after, decisions));
    assert_eq!(diff(decisions, &[("reason", "credential.missing")]), 2.0);
    assert_eq!(diff(decisions, &[("reason", "authz.forbidden")]), 1.0);
    assert_eq!(diff(decisions, &[("reason", "allowed")]), 2.0);

    // Histograms: present, cumulative, +Inf = _count, and they counted exactly our requests:
    // 8 requests, 3 of them with a token (verified, session checked), 5 forwarded.
    for (name, count) in [
        ("portcullis_request_duration_seconds", 8.0),
        ("portcullis_verify_duration_seconds", 3.0),
        ("portcullis_store_check_duration_seconds", 3.0),
        ("portcullis_upstream_duration_seconds", 5.0),
    ] {
        let grew = histogram_count(&after, name) - histogram_count(&before, name);
        assert_eq!(grew, count, "{name} grew by {grew}, expected {count}");
    }
    for name in [
        "portcullis_token_cache_hits_total",
        "portcullis_token_cache_misses_total",
        "portcullis_token_signature_checks_total",
        "portcullis_store_errors_total",
        "portcullis_config_reloads_applied_total",
        "portcullis_config_reloads_refused_total",
    ] {
        assert!(is_counter(&after, name), "{name} missing or not a counter");
    }
    assert_eq!(value(&after, "portcullis_store_healthy", &[]), 1.0);

    // The generation gauge belongs to this gateway: it moves with an applied reload.
    let applied_before = value(&after, "portcullis_config_reloads_applied_total", &[]);
    let r = gw.admin_ok(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let reloaded = gw.scrape().await;
    assert_eq!(value(&reloaded, "portcullis_config_generation", &[]), 2.0);
    assert_eq!(
        value(&reloaded, "portcullis_config_reloads_applied_total", &[]),
        applied_before + 1.0
    );
    // A route's counts survive a reload.
    assert_eq!(
        value(
            &reloaded,
            requests,
            &[("route", "ops-m-public"), ("status", "200")]
        ),
        value(
            &after,
            requests,
            &[("route", "ops-m-public"), ("status", "200")]
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Health and readiness
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_and_readyz_answer_200_with_the_memory_store() {
    let gw = Ops::start(Spec::default()).await;
    let health = send(
        Request::get(gw.admin_url("/healthz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = send(
        Request::get(gw.admin_url("/readyz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    assert_eq!(ready.json()["config_generation"], 1);
    // The proxy listener serves none of it.
    assert_eq!(gw.get("/healthz").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn readyz_turns_503_when_redis_dies_and_200_again_when_it_is_back() {
    let mut redis = RedisServer::start();
    let gw = Ops::start(Spec {
        store: format!(
            "store: {{ kind: redis, url: \"{}\", key_prefix: ops{}, timeout: 300ms }}",
            redis.url(),
            std::process::id()
        ),
        ..Spec::default()
    })
    .await;
    assert!(
        eventually(BOUND, || async {
            gw.status_of("/readyz").await == StatusCode::OK
        })
        .await
        .is_some(),
        "never ready with Redis up"
    );
    let (token, _, _) = gw.login("alice", ALICE_PASSWORD).await;
    assert_eq!(
        gw.bearer(Method::GET, "/app", &token).await.status,
        StatusCode::OK
    );

    redis.kill();
    assert!(
        eventually(BOUND, || async {
            gw.status_of("/readyz").await == StatusCode::SERVICE_UNAVAILABLE
        })
        .await
        .is_some(),
        "/readyz stayed 200 with Redis dead"
    );
    // Traffic during the outage (a load balancer may still send some).
    let outage = gw.get("/public").await;
    assert_eq!(outage.status, StatusCode::OK);
    let _ = gw.bearer(Method::GET, "/app", "not.a.token").await;
    let _ = post_json(
        &gw.url("/auth/login"),
        &json!({"username": "alice", "password": ALICE_PASSWORD, "return_tokens": true}),
        &[],
    )
    .await;
    assert_eq!(
        gw.status_of("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(gw.status_of("/healthz").await, StatusCode::OK);

    redis.restart();
    // No proxy traffic now: readiness must come back by itself (a load balancer that took the
    // instance out of rotation sends none).
    let back = eventually(Duration::from_secs(15), || async {
        gw.status_of("/readyz").await == StatusCode::OK
    })
    .await;
    if back.is_none() {
        let m = gw.scrape().await;
        panic!(
            "/readyz did not return to 200 after Redis came back \
             (portcullis_pubsub_connected {}, portcullis_store_healthy {})",
            value(&m, "portcullis_pubsub_connected", &[]),
            value(&m, "portcullis_store_healthy", &[]),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Admin API
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_admin_api_answers_401_without_a_token_or_with_a_wrong_one_and_audits_each_refusal() {
    let gw = Ops::start(Spec::default()).await;
    let none = gw
        .admin_call(Method::GET, "/admin/sessions?user=alice", None, None)
        .await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        none.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let wrong = format!("{}x", &ADMIN_SECRET[..ADMIN_SECRET.len() - 1]);
    let r = gw
        .admin_call(
            Method::POST,
            "/admin/users/revoke",
            Some(json!({"user": "alice"})),
            Some(&wrong),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = gw
        .admin_call(Method::POST, "/admin/reload", None, Some("Basic abc"))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let denied = gw.audited("admin.denied", None, 3).await;
    assert_eq!(denied.len(), 3, "{denied:#?}");
    assert_admin_fields(&denied[0], "GET", "/admin/sessions");
    assert_admin_fields(&denied[1], "POST", "/admin/users/revoke");
    assert_admin_fields(&denied[2], "POST", "/admin/reload");
    for e in &denied {
        assert_eq!(e["reason_id"], "admin.bad_token");
        assert!(!e.to_string().contains(&wrong));
    }
    // Nothing was done.
    assert!(
        gw.audit()
            .iter()
            .all(|e| e["event"] != "admin.user_revoked")
    );
    assert!(gw.audit().iter().all(|e| e["event"] != "config.reload"));
}

#[tokio::test]
async fn without_a_token_file_the_admin_api_is_404_while_health_and_metrics_are_served() {
    let gw = Ops::start(Spec {
        admin: Some("{ bind: 127.0.0.1:0 }".into()),
        ..Spec::default()
    })
    .await;
    for (method, path) in [
        (Method::GET, "/admin/sessions?user=alice"),
        (Method::POST, "/admin/users/revoke"),
        (Method::POST, "/admin/reload"),
    ] {
        let r = gw
            .admin_call(method.clone(), path, None, Some(ADMIN_SECRET))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    assert_eq!(gw.status_of("/healthz").await, StatusCode::OK);
    assert_eq!(gw.status_of("/readyz").await, StatusCode::OK);
    gw.scrape().await;
}

#[tokio::test]
async fn the_admin_api_lists_and_revokes_one_session_then_all_of_a_user_each_audited_once() {
    let gw = Ops::start(Spec::default()).await;
    let (first, _, first_sid) = gw.login("alice", ALICE_PASSWORD).await;
    let (second, second_refresh, second_sid) = gw.login("alice", ALICE_PASSWORD).await;
    let (bob, _, _) = gw.login("bob", BOB_PASSWORD).await;

    // List.
    let r = gw
        .admin_ok(Method::GET, "/admin/sessions?user=alice", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let listed = r.json();
    assert_eq!(listed["user"], "alice");
    let mut ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![first_sid.as_str(), second_sid.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(!r.text().contains(&second_refresh) && !r.text().contains("prt1."));
    let events = gw.audited("admin.sessions_listed", None, 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_admin_fields(&events[0], "GET", "/admin/sessions");
    assert_eq!(events[0]["subject"], "alice");
    assert_eq!(events[0]["reason_id"], "admin.ok");

    // Revoke one session: its token fails at once, the other still works.
    let r = gw
        .admin_ok(
            Method::POST,
            "/admin/sessions/revoke",
            Some(json!({"user": "alice", "session": first_sid})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.bearer(Method::GET, "/app", &first).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        gw.bearer(Method::GET, "/app", &second).await.status,
        StatusCode::OK
    );
    let events = gw.audited("admin.session_revoked", None, 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_admin_fields(&events[0], "POST", "/admin/sessions/revoke");
    assert_eq!(events[0]["subject"], "alice");
    assert_eq!(events[0]["session"], first_sid.as_str());
    assert_eq!(events[0]["reason_id"], "admin.ok");

    // A session that is not the user's: 404, and audited as such.
    let r = gw
        .admin_ok(
            Method::POST,
            "/admin/sessions/revoke",
            Some(json!({"user": "bob", "session": second_sid})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gw.bearer(Method::GET, "/app", &second).await.status,
        StatusCode::OK
    );
    let events = gw.audited("admin.session_revoked", None, 2).await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[1]["reason_id"], "admin.not_found");

    // Revoke all of alice: every token of hers fails, her refresh token too; bob is untouched.
    let r = gw
        .admin_ok(
            Method::POST,
            "/admin/users/revoke",
            Some(json!({"user": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for token in [&first, &second] {
        assert_eq!(
            gw.bearer(Method::GET, "/app", token).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let refreshed = post_json(
        &gw.url("/auth/refresh"),
        &json!({"refresh_token": second_refresh}),
        &[],
    )
    .await;
    assert_eq!(
        refreshed.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        refreshed.text()
    );
    assert_eq!(
        gw.bearer(Method::GET, "/app", &bob).await.status,
        StatusCode::OK
    );
    let r = gw
        .admin_ok(Method::GET, "/admin/sessions?user=alice", None)
        .await;
    assert_eq!(r.json()["sessions"], json!([]));
    let events = gw.audited("admin.user_revoked", None, 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_admin_fields(&events[0], "POST", "/admin/users/revoke");
    assert_eq!(events[0]["subject"], "alice");
    assert_eq!(events[0]["reason_id"], "admin.ok");

    // Reload.
    let r = gw.admin_ok(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["applied"], true);
    assert_eq!(r.json()["generation"], 2);
    let events = gw.audited("admin.reload", None, 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_admin_fields(&events[0], "POST", "/admin/reload");
    assert_eq!(events[0]["reason_id"], "admin.ok");
    let applied = gw.audited("config.reload", Some("config.applied"), 1).await;
    assert_eq!(applied.len(), 1, "{applied:#?}");
    assert_utc_time(&applied[0]);

    // One event per admin call, in order; none carries a token.
    let admin_events: Vec<String> = gw
        .audit()
        .into_iter()
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .filter(|e| e.starts_with("admin."))
        .collect();
    assert_eq!(
        admin_events,
        [
            "admin.sessions_listed",
            "admin.session_revoked",
            "admin.session_revoked",
            "admin.user_revoked",
            "admin.sessions_listed",
            "admin.reload",
        ]
    );
    let text = std::fs::read_to_string(gw.audit_path()).unwrap();
    assert!(!text.contains("eyJ") && !text.contains("prt1.") && !text.contains(ADMIN_SECRET));
}

// ---------------------------------------------------------------------------------------------
// 4. Hot reload
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_route_added_to_the_file_is_served_without_rebinding_and_an_open_keep_alive_connection_keeps_working()
 {
    let mut gw = Ops::start(Spec::default()).await;
    let mut kept = open_connection(TcpStream::connect(gw.addr).await.unwrap()).await;
    assert_eq!(get_on(&mut kept, "/public").await, StatusCode::OK);
    assert_eq!(get_on(&mut kept, "/new/x").await, StatusCode::NOT_FOUND);

    let mut spec = gw.spec.clone();
    spec.routes
        .push_str("\n  - { id: added, path: /new, upstream: echo, policy: public }");
    gw.rewrite(spec);
    let applied = eventually(POLL_BOUND, || async {
        try_get(&gw.url("/new/x")).await == Some(StatusCode::OK)
    })
    .await;
    assert!(applied.is_some(), "the new route never became reachable");

    // Same socket, and the connection opened before the reload serves the new route.
    assert_eq!(gw.running.local_addrs()[0], gw.addr);
    assert_eq!(get_on(&mut kept, "/new/x").await, StatusCode::OK);
    assert_eq!(get_on(&mut kept, "/public").await, StatusCode::OK);
    let events = gw.audited("config.reload", Some("config.applied"), 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(
        gw.status_of("/readyz").await,
        StatusCode::OK,
        "not ready after a reload"
    );
    let ready = send(
        Request::get(gw.admin_url("/readyz"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(ready.json()["config_generation"], 2);
}

/// Starts a gateway with an extra route, breaks its file with `broken`, and checks that the old
/// routes keep serving and that exactly one refusal is audited, naming `detail`.
async fn broken_file_keeps_the_old_config(broken: impl Fn(&str) -> String, detail: &str) {
    let mut spec = Spec::default();
    spec.routes
        .push_str("\n  - { id: before, path: /before, upstream: echo, policy: public }");
    let gw = Ops::start(spec).await;
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    let refused_before = value(
        &gw.scrape().await,
        "portcullis_config_reloads_refused_total",
        &[],
    );

    gw.rewrite_raw(&broken(&good));
    let events = gw.audited("config.reload", Some("config.refused"), 1).await;
    // Another poll period: the same broken file is not refused (nor audited) again. The poller
    // runs on the monotonic clock and shows a poll only by acting on it, so nothing but a
    // period (reload::CONFIG_POLL, 2 s) passing can show it did not act.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events_later: Vec<Value> = gw
        .audit()
        .into_iter()
        .filter(|e| e["reason_id"] == "config.refused")
        .collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events_later.len(), 1, "{events_later:#?}");
    let event = &events[0];
    assert_utc_time(event);
    let named = event["detail"].as_str().unwrap_or_default();
    assert!(
        named.contains(detail),
        "the refusal's detail {named:?} does not name {detail:?}"
    );
    assert!(
        gw.audit()
            .iter()
            .all(|e| e["reason_id"] != "config.applied"),
        "a broken file was applied"
    );

    // The old routes keep serving.
    assert_eq!(gw.get("/before").await.status, StatusCode::OK);
    assert_eq!(gw.get("/public").await.status, StatusCode::OK);
    assert_eq!(gw.get("/docs").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.status_of("/readyz").await, StatusCode::OK);
    let after = gw.scrape().await;
    assert!(value(&after, "portcullis_config_reloads_refused_total", &[]) >= refused_before + 1.0);
    assert_eq!(value(&after, "portcullis_config_generation", &[]), 1.0);

    // The admin API reports the same refusal, with the reason.
    let r = gw.admin_ok(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = r.json();
    assert_eq!(body["applied"], false);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(detail), "{error}");
    let events = gw.audited("admin.reload", None, 1).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["reason_id"], "admin.refused");
    assert_eq!(gw.get("/before").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_config_file_with_a_syntax_error_keeps_serving_the_old_routes_and_audits_one_refusal_naming_the_line()
 {
    // The first route's flow mapping is left unclosed.
    broken_file_keeps_the_old_config(
        |good| good.replacen("policy: public }", "policy: public", 1),
        "line ",
    )
    .await;
}

#[tokio::test]
async fn a_config_file_with_an_invalid_value_keeps_serving_the_old_routes_and_audits_one_refusal_naming_the_key()
 {
    broken_file_keeps_the_old_config(
        |good| good.replacen("all_of: [docs:write]", "all_of: [docs:delete]", 1),
        "routes[3].policy",
    )
    .await;
}

#[tokio::test]
async fn a_role_change_in_the_config_applies_to_the_next_request_of_a_logged_in_user() {
    let mut gw = Ops::start(Spec::default()).await;
    let (alice, _, _) = gw.login("alice", ALICE_PASSWORD).await;
    assert_eq!(
        gw.bearer(Method::POST, "/docs/x", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read,docs:write"
    );

    let mut spec = gw.spec.clone();
    spec.roles = spec
        .roles
        .replace("editor: [docs:read, docs:write]", "editor: [docs:read]");
    gw.rewrite(spec);
    let r = gw.admin_ok(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    assert_eq!(
        gw.bearer(Method::POST, "/docs/x", &alice).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.bearer(Method::GET, "/docs/x", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.upstream.last().headers["x-auth-permissions"],
        "docs:read"
    );
}

#[tokio::test]
async fn disabling_a_user_or_changing_their_roles_in_the_users_file_applies_to_their_next_request()
{
    let gw = Ops::start(Spec::default()).await;
    let (alice, _, _) = gw.login("alice", ALICE_PASSWORD).await;
    let (bob, _, _) = gw.login("bob", BOB_PASSWORD).await;
    assert_eq!(
        gw.bearer(Method::POST, "/docs/x", &alice).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.bearer(Method::GET, "/docs/x", &bob).await.status,
        StatusCode::OK
    );

    let users = demo_users();
    let changed = users
        .replacen("roles: [reader, editor]", "roles: [reader]", 1)
        .replacen(
            "display_name: Bob Example",
            "display_name: Bob Example\n    disabled: true",
            1,
        );
    assert_ne!(changed, users);
    replace_file(&gw.users_path(), &changed);

    let applied = eventually(POLL_BOUND, || async {
        gw.bearer(Method::GET, "/docs/x", &bob).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        applied.is_some(),
        "bob's token still works after he was disabled"
    );
    assert_eq!(
        gw.bearer(Method::POST, "/docs/x", &alice).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        gw.bearer(Method::GET, "/docs/x", &alice).await.status,
        StatusCode::OK
    );
    let r = post_json(
        &gw.url("/auth/login"),
        &json!({"username": "bob", "password": BOB_PASSWORD, "return_tokens": true}),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let reloads = gw.audited("users.reload", Some("users.applied"), 1).await;
    assert_eq!(reloads.len(), 1, "{reloads:#?}");
}

// ---------------------------------------------------------------------------------------------
// 5. TLS certificate swap
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn after_a_certificate_swap_a_new_tls_connection_gets_the_new_certificate_and_an_open_one_keeps_working()
 {
    let certs = tempfile::tempdir().unwrap();
    let cert_path = certs.path().join("gateway.crt");
    let key_path = certs.path().join("gateway.key");
    let (old_pem, old_key, old_der) = certificate();
    let (new_pem, new_key, new_der) = certificate();
    assert_ne!(old_der, new_der);
    std::fs::write(&cert_path, &old_pem).unwrap();
    std::fs::write(&key_path, &old_key).unwrap();
    let gw = Ops::start(Spec {
        listeners: format!(
            "  - {{ bind: 127.0.0.1:0, tls: {{ cert: \"{}\", key: \"{}\" }} }}",
            cert_path.display(),
            key_path.display()
        ),
        ..Spec::default()
    })
    .await;
    let trusted = [&old_der, &new_der];

    let before = tls_connect(gw.addr, &trusted).await;
    assert_eq!(
        peer_certificate(&before),
        old_der,
        "the old certificate was not served"
    );
    let mut kept = open_connection(before).await;
    assert_eq!(get_on(&mut kept, "/public").await, StatusCode::OK);

    // Key first: any reload that reads the files in between sees a mismatched pair (refused),
    // never the old pair again.
    replace_file(&key_path, &new_key);
    replace_file(&cert_path, &new_pem);
    let r = gw.admin_ok(Method::POST, "/admin/reload", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let after = tls_connect(gw.addr, &trusted).await;
    assert_eq!(
        peer_certificate(&after),
        new_der,
        "a new connection still got the old certificate"
    );
    let mut fresh = open_connection(after).await;
    assert_eq!(get_on(&mut fresh, "/public").await, StatusCode::OK);
    assert_eq!(get_on(&mut kept, "/public").await, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 6 and 7. The real binary
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_binary_never_writes_a_password_or_token_to_its_audit_file_or_logs_and_its_cli_reaches_the_admin_api()
 {
    let upstream = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The binary logs the proxy listeners' addresses, not the admin listener's: that one is
    // chosen here.
    let admin_port = free_port();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    let spec = Spec {
        listeners: "  - bind: 127.0.0.1:0".into(),
        admin: Some(format!(
            "{{ bind: 127.0.0.1:{admin_port}, token_file: admin.token }}"
        )),
        ..Spec::default()
    };
    let config = dir.path().join("gateway.yaml");
    std::fs::write(&config, spec.render(&upstream.url())).unwrap();
    let mut gateway = Binary::spawn(dir.path(), &config);
    gateway
        .wait_ready(&format!("http://127.0.0.1:{admin_port}/readyz"))
        .await;
    let port = gateway.listening().await[0].port();
    let base = format!("http://127.0.0.1:{port}");
    let mut secrets: Vec<String> = vec![
        ALICE_PASSWORD.into(),
        BOB_PASSWORD.into(),
        WRONG_PASSWORD.into(),
        ADMIN_SECRET.into(),
        "eyJ".into(),
        "prt1.".into(),
    ];

    // Form login, a page with the cookie, form logout.
    let mut browser = Browser {
        base: base.clone(),
        origin: base.clone(),
        jar: BTreeMap::new(),
    };
    let r = browser.login("alice", ALICE_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    secrets.extend(browser.jar.values().map(|(v, _)| v.clone()));
    assert_eq!(
        browser.navigate("/docs/report").await.status,
        StatusCode::OK
    );

    // JSON login with tokens in the body, a proxied call, refresh, and the new token.
    let login = post_json(
        &format!("{base}/auth/login"),
        &json!({"username": "bob", "password": BOB_PASSWORD, "return_tokens": true}),
        &[],
    )
    .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text());
    let tokens = login.json();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("eyJ") && refresh.starts_with("prt1."));
    secrets.extend([access.clone(), refresh.clone()]);
    let bearer = |token: String| {
        Request::get(format!("{base}/docs/x"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(bearer(access.clone())).await.status, StatusCode::OK);
    let refreshed = post_json(
        &format!("{base}/auth/refresh"),
        &json!({"refresh_token": refresh}),
        &[],
    )
    .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    let rotated = refreshed.json();
    let new_access = rotated["access_token"].as_str().unwrap().to_owned();
    secrets.push(new_access.clone());
    if let Some(r) = rotated["refresh_token"].as_str() {
        secrets.push(r.to_owned());
    }
    assert_eq!(
        send(bearer(new_access.clone())).await.status,
        StatusCode::OK
    );
    // The rotated refresh token replayed within the grace window.
    let _ = post_json(
        &format!("{base}/auth/refresh"),
        &json!({"refresh_token": refresh}),
        &[],
    )
    .await;

    // Failed logins: JSON and form.
    let failed = post_json(
        &format!("{base}/auth/login"),
        &json!({"username": "alice", "password": WRONG_PASSWORD}),
        &[],
    )
    .await;
    assert_eq!(failed.status, StatusCode::UNAUTHORIZED);
    let mut stranger = Browser {
        base: base.clone(),
        origin: base.clone(),
        jar: BTreeMap::new(),
    };
    let r = stranger.login("alice", WRONG_PASSWORD, false).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The CLI against the running gateway's admin API.
    let listed = cli(&["sessions", "list", "--user", "alice"], &config);
    assert!(
        listed.status.success(),
        "sessions list: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("sessions list prints JSON");
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let reloaded = cli(&["reload"], &config);
    assert!(
        reloaded.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    let reloaded: Value = serde_json::from_slice(&reloaded.stdout).expect("reload prints JSON");
    assert_eq!(reloaded["applied"], true);

    // Logouts: bearer (JSON) and form.
    let logout = send(
        Request::post(format!("{base}/auth/logout"))
            .header("authorization", format!("Bearer {new_access}"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.text());
    assert_eq!(
        send(bearer(new_access.clone())).await.status,
        StatusCode::UNAUTHORIZED
    );
    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let r = browser.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    gateway.terminate();
    let status = gateway.wait_exit(BOUND).await;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        gateway.logs()
    );

    let audit_text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let logs = gateway.logs();
    // The grep below must have something to look at.
    assert!(logs.contains("DEBUG"), "no debug lines in the log:\n{logs}");
    let events = read_audit(&dir.path().join("audit.jsonl"));
    for (event, reason) in [
        ("login.success", None),
        ("login.failure", None),
        ("refresh.success", None),
        ("logout", Some("logout.ok")),
        ("admin.sessions_listed", None),
        ("admin.reload", None),
        ("config.reload", Some("config.applied")),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == event && reason.is_none_or(|r| e["reason_id"] == r)),
            "no {event} ({reason:?}) event in:\n{audit_text}"
        );
    }
    for secret in secrets.iter().filter(|s| s.len() >= 3) {
        assert!(
            !audit_text.contains(secret.as_str()),
            "the audit file contains {secret:?}"
        );
        if let Some(at) = logs.find(secret.as_str()) {
            let line = logs[..at]
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .to_owned()
                + logs[at..].split('\n').next().unwrap_or_default();
            panic!("the logs contain {secret:?}: {line}");
        }
    }
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_the_binary_exits_0_and_refuses_new_connections()
 {
    // An upstream that answers /slow once released (after the drain has begun) and says when a
    // request has arrived.
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(4);
    let (release, released) = tokio::sync::watch::channel(false);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived = arrived_tx.clone();
            let released = released.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let arrived = arrived.clone();
                        let mut released = released.clone();
                        async move {
                            if req.uri().path() == "/slow" {
                                let _ = arrived.send(()).await;
                                let _ = released.wait_for(|r| *r).await;
                                return Ok::<_, Infallible>(Response::new(Full::new(
                                    Bytes::from_static(b"slow answer"),
                                )));
                            }
                            Ok(Response::new(Full::new(Bytes::from_static(b"fast"))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  app: {{ url: \"http://{upstream}\" }}\n\
             routes:\n  - {{ id: ops-drain, path: /, upstream: app, policy: public }}\n\
             limits: {{ shutdown_grace: 10s }}\n"
        ),
    )
    .unwrap();
    let mut gateway = Binary::spawn(dir.path(), &config);
    let port = gateway.listening().await[0].port();
    let base = format!("http://127.0.0.1:{port}");
    gateway.wait_ready(&format!("{base}/fast")).await;

    let slow = Request::get(format!("{base}/slow"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let in_flight = tokio::spawn(send(slow));
    timeout(BOUND, arrived_rx.recv())
        .await
        .expect("the request never reached the upstream");
    gateway.terminate();

    // The listener closes at once; the request in flight still gets its answer.
    let refused = eventually(BOUND, || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
    assert!(
        refused.is_some(),
        "new connections were still accepted after SIGTERM"
    );
    release.send_replace(true);
    let response = timeout(BOUND, in_flight)
        .await
        .expect("the in-flight request hung")
        .expect("the in-flight request failed");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.text(), "slow answer");

    let status = gateway.wait_exit(BOUND).await;
    assert_eq!(status.code(), Some(0), "{}", gateway.logs());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a connection was accepted after exit"
    );
    let logs = gateway.logs();
    assert!(logs.contains("draining"), "{logs}");
}

/// An upstream that holds every request for a minute, telling `arrived` when one comes in.
async fn hanging_upstream(arrived: tokio::sync::mpsc::Sender<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let arrived = arrived.clone();
                        async move {
                            let _ = arrived.send(()).await;
                            std::future::pending::<()>().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"late",
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn when_the_shutdown_grace_runs_out_with_a_request_in_flight_the_binary_logs_it_and_exits_3()
{
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(4);
    let upstream = hanging_upstream(arrived_tx).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  app: {{ url: \"http://{upstream}\", response_timeout: 60s }}\n  \
             ok: {{ echo: true }}\nroutes:\n  - {{ id: ops-cut, path: /, upstream: app, policy: public }}\n  \
             - {{ id: ops-cut-ready, path: /ready, upstream: ok, policy: public }}\n\
             limits: {{ shutdown_grace: 200ms }}\n"
        ),
    )
    .unwrap();
    let mut gateway = Binary::spawn(dir.path(), &config);
    let port = gateway.listening().await[0].port();
    let base = format!("http://127.0.0.1:{port}");
    gateway.wait_ready(&format!("{base}/ready")).await;
    let url = format!("{base}/hang");
    let hanging = tokio::spawn(async move {
        let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        match timeout(Duration::from_secs(60), common::client().request(req)).await {
            Ok(Ok(r)) => Some(r.status()),
            _ => None,
        }
    });
    timeout(BOUND, arrived_rx.recv())
        .await
        .expect("the request never reached the upstream");
    gateway.terminate();
    let status = gateway.wait_exit(BOUND).await;
    let logs = gateway.logs();
    assert_eq!(status.code(), Some(3), "{logs}");
    assert!(
        logs.contains("shutdown grace period ended with connections still open"),
        "{logs}"
    );
    assert!(logs.contains("connections=1"), "{logs}");
    // The client was cut off, not answered.
    let answer = timeout(BOUND, hanging)
        .await
        .expect("the client hung")
        .unwrap();
    assert_ne!(answer, Some(StatusCode::OK));
}

#[tokio::test]
async fn sigusr1_makes_the_binary_reopen_its_audit_file_so_a_rotated_file_stops_growing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.yaml");
    let audit = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  ok: {{ echo: true }}\n\
             routes:\n  - {{ id: ops-rotate, path: /, upstream: ok, policy: public }}\n  \
             - {{ id: ops-rotate-auth, path: /private, upstream: ok, policy: authenticated }}\n\
             issuers:\n  - issuer: https://issuer.test\n    audiences: [ops]\n    keys:\n      - {key}\n\
             audit: {{ file: audit.jsonl, aggregate_window: 0s }}\n",
            key = common::TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ops").yaml_entry(dir.path()),
        ),
    )
    .unwrap();
    let mut gateway = Binary::spawn(dir.path(), &config);
    let port = gateway.listening().await[0].port();
    let base = format!("http://127.0.0.1:{port}");
    gateway.wait_ready(&format!("{base}/")).await;
    assert_eq!(
        try_get(&format!("{base}/private/1")).await,
        Some(StatusCode::UNAUTHORIZED)
    );
    let written = eventually(BOUND, || async { read_audit(&audit).len() == 1 }).await;
    assert!(written.is_some(), "{:#?}", read_audit(&audit));

    std::fs::rename(&audit, &rotated).unwrap();
    common::signal(gateway.pid(), "USR1");
    // The writer reopens as soon as the signal is handled, and says so.
    let reopened = eventually(BOUND, || async {
        gateway.logs().contains("audit file reopened")
    })
    .await;
    assert!(reopened.is_some(), "{}", gateway.logs());
    assert!(audit.exists(), "no new audit file");
    assert_eq!(
        try_get(&format!("{base}/private/2")).await,
        Some(StatusCode::UNAUTHORIZED)
    );
    let fresh = eventually(BOUND, || async { read_audit(&audit).len() == 1 }).await;
    assert!(fresh.is_some(), "{:#?}", read_audit(&audit));
    assert_eq!(read_audit(&audit)[0]["path"], "/private/2");
    let old = read_audit(&rotated);
    assert_eq!(old.len(), 1, "{old:#?}");
    assert_eq!(old[0]["path"], "/private/1");
    gateway.terminate();
    assert_eq!(
        gateway.wait_exit(BOUND).await.code(),
        Some(0),
        "{}",
        gateway.logs()
    );
}
