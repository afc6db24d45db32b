//! Forward-auth behind the real front proxies: nginx (`auth_request`) and Caddy, each started
//! from its example in `examples/forward-auth/` with the ports rewritten, in front of the
//! harness's recording [`EchoUpstream`] as the backend, and the gateway started from the
//! example's `gateway.yaml` (on `127.0.0.1:0`). The plain-HTTP contract tests are
//! `forward_auth.rs`; these prove the example configurations do what the README says.
//!
//! The files' ports are literal numbers, rewritten here: 8080 (the front proxy) to a free
//! port, 9180 (the gateway) to the gateway's, 9181 (the backend) to the echo upstream's, and
//! the demo backend block between its two marker comments is dropped.
//!
//! Needs `nginx` (Debian package `nginx-light`) and `caddy`; `.ci/run` installs them. A
//! missing binary is a failure naming the package, not a skip.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::auth::{ALICE_PASSWORD, Browser, api_login, post_json};
use common::{EchoUpstream, TestGateway, TestKey, TestResponse, launch, send};
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::clock::Clock;
use serde_json::json;

const NGINX: &str = "/usr/sbin/nginx";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Nginx,
    Caddy,
}

impl Kind {
    fn example_dir(self) -> PathBuf {
        let name = match self {
            Kind::Nginx => "nginx",
            Kind::Caddy => "caddy",
        };
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/forward-auth")
            .join(name)
    }

    fn config_name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx.conf",
            Kind::Caddy => "Caddyfile",
        }
    }

    /// Panics with the package to install when the binary is missing.
    fn require(self) {
        let (ok, package) = match self {
            Kind::Nginx => (Path::new(NGINX).is_file(), "nginx-light"),
            Kind::Caddy => (
                Command::new("caddy")
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "caddy",
            ),
        };
        assert!(
            ok,
            "the forward-auth proxy tests need {self:?}: apt-get install {package} \
             (.ci/run installs it)"
        );
    }
}

/// The demo issuer's key, from `examples/keys` (what `portcullis token` signs with).
fn demo_key() -> TestKey {
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/keys");
    let private = std::fs::read(keys.join("demo-ed25519.key.pem")).unwrap();
    let public_pem = std::fs::read_to_string(keys.join("demo-ed25519.pub.pem")).unwrap();
    TestKey {
        kid: "demo-ed25519".into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(&private).unwrap(),
        public_pem,
        public_der: Vec::new(),
    }
}

/// A token of the demo issuer for `sub` with `roles`, as `portcullis token` mints it (no
/// session: the demo issuer does not require one).
fn demo_token(sub: &str, roles: &[&str]) -> String {
    demo_key().token(json!({
        "iss": "https://demo.portcullis.invalid",
        "aud": "portcullis-demo",
        "sub": sub,
        "sid": null,
        "roles": roles,
    }))
}

/// A running nginx or caddy, stopped by its pid when dropped.
pub(crate) struct FrontProxy {
    kind: Kind,
    pub(crate) port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl FrontProxy {
    /// Starts `kind` from its example file with 8080 → a free port, 9180 → `gateway`,
    /// 9181 → `backend`, without the demo backend. Retries on another port if the free port
    /// was taken meanwhile.
    fn start(kind: Kind, gateway: u16, backend: u16) -> Self {
        kind.require();
        let example = std::fs::read_to_string(kind.example_dir().join(kind.config_name()))
            .expect("the example config");
        let mut last = String::new();
        for _ in 0..3 {
            let port = common::free_port();
            let text = without_demo_backend(&example)
                .replace("8080", &port.to_string())
                .replace("9180", &gateway.to_string())
                .replace("9181", &backend.to_string());
            let dir = tempfile::tempdir().unwrap();
            let config = common::write(dir.path(), kind.config_name(), &text);
            let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
            let mut command = match kind {
                Kind::Nginx => {
                    // nginx's workers run as `nobody`: they must reach the temp directories.
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                        .unwrap();
                    let mut c = Command::new(NGINX);
                    c.arg("-p")
                        .arg(dir.path())
                        .arg("-c")
                        .arg(&config)
                        .arg("-g")
                        .arg(format!(
                            "daemon off; pid {};",
                            dir.path().join("nginx.pid").display()
                        ));
                    c
                }
                Kind::Caddy => {
                    let mut c = Command::new("caddy");
                    c.args(["run", "--adapter", "caddyfile", "--config"])
                        .arg(&config)
                        // Its autosave and storage go here, not to the user's directories.
                        .env("HOME", dir.path())
                        .env("XDG_CONFIG_HOME", dir.path())
                        .env("XDG_DATA_HOME", dir.path());
                    c
                }
            };
            let child = command
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("{kind:?} did not start: {e}"));
            let mut proxy = FrontProxy {
                kind,
                port,
                child: Some(child),
                dir,
            };
            // A real external process: only asking again sees its port open (or it exit).
            let mut exited = false;
            let ready = common::wait_for(Duration::from_secs(20), || {
                if let Some(Ok(Some(_))) = proxy.child.as_mut().map(Child::try_wait) {
                    exited = true;
                    return true;
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if ready && !exited {
                return proxy;
            }
            last = proxy.log();
            proxy.stop();
            if !last.contains("in use") {
                break;
            }
        }
        panic!("{kind:?} did not come up:\n{last}");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub(crate) fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("proxy.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// A browser (cookies, navigation labels) talking to this front proxy.
    fn browser(&self) -> Browser {
        Browser {
            base: self.url(""),
            origin: self.url(""),
            jar: Default::default(),
        }
    }

    /// Stops the process by its pid: TERM (nginx's master then stops its workers), KILL if it
    /// has not exited within 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        common::signal(child.id(), "TERM");
        let exited = common::wait_for(Duration::from_secs(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The example text without the block between the demo backend's marker comments.
fn without_demo_backend(text: &str) -> String {
    let start = text
        .find("# --- demo backend")
        .expect("the demo backend's start marker");
    let end_marker = "# --- end of demo backend ---";
    let end = text
        .find(end_marker)
        .expect("the demo backend's end marker")
        + end_marker.len();
    format!("{}{}", &text[..start], &text[end..])
}

/// The example's gateway with its listener on port 0 and `edit` applied to the YAML.
/// (`auth.issuer` keeps naming port 8080: it is only the `iss` of the gateway's own tokens.)
async fn example_gateway(kind: Kind, edit: &dyn Fn(String) -> String) -> TestGateway {
    let yaml = std::fs::read_to_string(kind.example_dir().join("gateway.yaml")).unwrap();
    assert!(
        yaml.contains("bind: 127.0.0.1:9180"),
        "the example binds 9180"
    );
    let yaml = edit(yaml.replace("127.0.0.1:9180", "127.0.0.1:0"));
    let upstream = EchoUpstream::start().await;
    // Relative paths (the demo key, the users file) resolve beside the example.
    let running = launch(&yaml, &kind.example_dir(), Clock::system()).await;
    TestGateway::new(
        running,
        upstream,
        tempfile::tempdir().unwrap(),
        vec![demo_key()],
    )
}

/// The example gateway (edited) and the front proxy in front of it.
pub(crate) struct Stack {
    pub(crate) gw: TestGateway,
    pub(crate) proxy: FrontProxy,
}

impl Stack {
    pub(crate) async fn start(kind: Kind) -> Self {
        Self::start_with(kind, &|yaml| yaml).await
    }

    async fn start_with(kind: Kind, edit: &dyn Fn(String) -> String) -> Self {
        let gw = example_gateway(kind, edit).await;
        let proxy = FrontProxy::start(kind, gw.addr.port(), gw.upstream.addr.port());
        Self { gw, proxy }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> TestResponse {
        self.send("GET", path, headers, "").await
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> TestResponse {
        let mut req = Request::builder().method(method).uri(self.proxy.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await
    }

    /// What the backend saw of its last request: the named header's values.
    fn backend_header(&self, name: &str) -> Vec<String> {
        self.gw
            .upstream
            .last()
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }

    fn context(&self) -> String {
        format!("--- {:?} log ---\n{}", self.proxy.kind, self.proxy.log())
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const API: (&str, &str) = ("accept", "application/json");

// ---- the cases, each run against nginx and Caddy ------------------------------------------

async fn allowed_requests_reach_the_backend_with_the_identity(kind: Kind) {
    let s = Stack::start(kind).await;
    let token = demo_token("alice", &["reader"]);
    let r = s
        .get(
            "/documents/report?page=2",
            &[("authorization", &bearer(&token)), API],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), s.context());
    assert_eq!(s.gw.upstream.count(), 1);
    let seen = s.gw.upstream.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/documents/report?page=2");
    assert_eq!(s.backend_header("x-auth-subject"), ["alice"]);
    assert_eq!(s.backend_header("x-auth-permissions"), ["documents:read"]);
    assert!(
        s.backend_header("x-auth-session").is_empty(),
        "a token without a session sends no session header (not an empty or placeholder one)"
    );

    // A write with a body: the decision is on the method, and the backend gets the body.
    let editor = demo_token("alice", &["editor"]);
    let r = s
        .send(
            "POST",
            "/documents",
            &[
                ("authorization", &bearer(&editor)),
                ("content-type", "application/json"),
                API,
            ],
            r#"{"title":"minutes"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), s.context());
    let seen = s.gw.upstream.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(&seen.body[..], br#"{"title":"minutes"}"#);
    assert_eq!(
        s.backend_header("x-auth-permissions"),
        ["documents:read,documents:write"]
    );

    // A public route: through, with no identity at all.
    let r = s.get("/", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", s.context());
    for name in ["x-auth-subject", "x-auth-session", "x-auth-permissions"] {
        assert!(
            s.backend_header(name).is_empty(),
            "{name} on a public route"
        );
    }
}

async fn an_api_call_without_a_token_gets_401(kind: Kind) {
    let s = Stack::start(kind).await;
    let r = s.get("/api/hello", &[API]).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "{}\n{}",
        r.text(),
        s.context()
    );
    assert!(r.headers.get("location").is_none());
    assert!(
        r.headers
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
        "the gateway's challenge reaches the client: {:?}",
        r.headers
    );
    // An expired token, and a token of an issuer the gateway does not trust: 401 too.
    let expired = demo_key().token(json!({
        "iss": "https://demo.portcullis.invalid", "aud": "portcullis-demo", "sid": null,
        "iat": common::now() - 7200, "exp": common::now() - 3600,
    }));
    let r = s
        .get("/api/hello", &[("authorization", &bearer(&expired)), API])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let stranger = TestKey::generate(Algorithm::EdDSA, "demo-ed25519").token(json!({
        "iss": "https://demo.portcullis.invalid", "aud": "portcullis-demo", "sid": null,
    }));
    let r = s
        .get("/api/hello", &[("authorization", &bearer(&stranger)), API])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.gw.upstream.count(), 0, "the backend was never asked");
}

async fn a_forbidden_route_gets_403(kind: Kind) {
    let s = Stack::start(kind).await;
    let reader = bearer(&demo_token("bob", &["reader"]));
    let r = s.get("/admin", &[("authorization", &reader), API]).await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "{}\n{}",
        r.text(),
        s.context()
    );
    let r = s
        .send(
            "POST",
            "/documents",
            &[("authorization", &reader), API],
            "{}",
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a reader's write");
    // A browser that is signed in but not allowed is not sent to log in again.
    let r = s
        .get(
            "/admin",
            &[
                ("authorization", &reader),
                ("accept", "text/html"),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(s.gw.upstream.count(), 0);
}

async fn a_browser_is_sent_to_log_in_and_comes_back(kind: Kind) {
    let s = Stack::start(kind).await;
    let mut browser = s.proxy.browser();
    let r = browser.navigate("/documents/report?page=2").await;
    assert_eq!(r.status, StatusCode::FOUND, "{}\n{}", r.text(), s.context());
    let location = r.headers["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        "/auth/login?return_to=/documents/report%3Fpage%3D2"
    );

    // The login page is the gateway's, on the front proxy's origin (same-host mode).
    let r = browser.navigate(&location).await;
    assert_eq!(r.status, StatusCode::OK, "{}", s.context());
    assert!(r.text().contains("name=\"password\""), "{}", r.text());
    let csrf = browser
        .cookie("__Host-portcullis-csrf")
        .expect("the login page set its CSRF cookie");
    let r = browser
        .post_form(
            "/auth/login",
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("return_to", "/documents/report?page=2"),
            ],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "{}\n{}",
        r.text(),
        s.context()
    );
    assert_eq!(r.headers["location"], "/documents/report?page=2");

    let r = browser.navigate("/documents/report?page=2").await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), s.context());
    assert_eq!(s.gw.upstream.last().uri, "/documents/report?page=2");
    assert_eq!(s.backend_header("x-auth-subject"), ["alice"]);
    assert_eq!(
        s.backend_header("x-auth-session").len(),
        1,
        "a login session"
    );

    // Logging out through the front proxy ends it: the next navigation goes to log in.
    let csrf = browser.cookie("__Host-portcullis-csrf").unwrap();
    let r = browser.post_form("/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let before = s.gw.upstream.count();
    let r = browser.navigate("/documents/report").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(
        r.headers["location"],
        "/auth/login?return_to=/documents/report"
    );
    assert_eq!(s.gw.upstream.count(), before);
}

async fn a_revoked_session_is_refused_on_the_next_request(kind: Kind) {
    let s = Stack::start(kind).await;
    // Logged in through the front proxy (the JSON API), tokens in the body.
    let (access, _refresh, session) = api_login(&s.proxy.url(""), "alice", ALICE_PASSWORD).await;
    let auth = bearer(&access);
    let r = s
        .get("/documents/x", &[("authorization", &auth), API])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), s.context());
    assert_eq!(s.backend_header("x-auth-session"), [session]);

    let r = post_json(
        &s.proxy.url("/auth/logout"),
        &json!({}),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NO_CONTENT,
        "{}\n{}",
        r.text(),
        s.context()
    );
    let before = s.gw.upstream.count();
    let r = s
        .get("/documents/x", &[("authorization", &auth), API])
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "the same token, after logout"
    );
    assert_eq!(s.gw.upstream.count(), before);
}

async fn a_spoofed_original_request_does_not_change_the_decision(kind: Kind) {
    let s = Stack::start(kind).await;
    // Headers a client sends to make the gateway decide about another request than its own.
    let spoof: &[(&str, &str)] = &[
        ("x-original-url", "http://localhost/"),
        ("x-original-method", "GET"),
        ("x-forwarded-uri", "/"),
        ("x-forwarded-method", "GET"),
        ("x-forwarded-host", "public.example"),
        ("x-forwarded-proto", "https"),
        API,
    ];
    let r = s.get("/admin", spoof).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "{}\n{}",
        r.text(),
        s.context()
    );
    let reader = bearer(&demo_token("bob", &["reader"]));
    let mut with_token = spoof.to_vec();
    with_token.push(("authorization", &reader));
    let r = s.get("/admin", &with_token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A reader's write, described as a read of a public page: still the write.
    with_token[0] = ("x-original-url", "http://localhost/documents");
    with_token[2] = ("x-forwarded-uri", "/documents");
    let r = s.send("POST", "/documents", &with_token, "{}").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(s.gw.upstream.count(), 0, "the backend was never asked");
}

async fn path_tricks_never_reach_a_forbidden_route(kind: Kind) {
    let s = Stack::start(kind).await;
    let reader = bearer(&demo_token("bob", &["reader"]));
    // bob may read /documents and may not see /admin; each of these means /admin (or cannot be
    // read one way only), so none may reach the backend.
    for path in [
        "/documents/../admin",
        "/documents/%2e%2e/admin",
        "/documents/%2E%2E/admin",
        "/documents/.%2e/admin",
        "/documents%2F..%2Fadmin",
        "/documents/..%2Fadmin",
        "/documents/%2e%2e%2fadmin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/admin/",
        "/documents/./../admin/x",
        // Allowed as `/documents/x` it would reach a backend that may route it under `/admin`:
        // the front proxy forwards the client's spelling, so it is refused however it ends.
        "/admin/../documents/./x",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: {reader}\r\n\
             Accept: application/json\r\nConnection: close\r\n\r\n",
            s.proxy.port
        );
        let before = s.gw.upstream.count();
        let answer = common::raw(s.proxy.addr(), request.as_bytes()).await;
        let status = answer.split(' ').nth(1).unwrap_or("").to_owned();
        let reached = s.gw.upstream.count() > before;
        let seen = reached.then(|| s.gw.upstream.last().uri);
        assert!(
            !reached && matches!(status.as_str(), "400" | "401" | "403" | "404"),
            "{path}: {status}, backend saw {seen:?}\n{answer}\n{}",
            s.context()
        );
    }
    // The control: the path bob may read, spelled as it is, is allowed.
    let r = s
        .get("/documents/x", &[("authorization", &reader), API])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), s.context());
}

/// The gateway's login paths are the gateway's: asked about them, it answers as the route
/// table says, never a blanket yes, since an allowed answer sends the request to the backend.
/// (Caddy's `handle /auth/*` does not match `/auth` itself, which it asks about; nginx
/// answers `/auth` with a redirect to `/auth/`.) Here the catch-all route is not public, so
/// both are refused and the backend sees neither.
async fn the_login_paths_asked_about_are_never_allowed_through_to_the_backend(kind: Kind) {
    let s = Stack::start_with(kind, &|yaml| {
        let closed = yaml.replace(
            "{ id: home, path: /, policy: public }",
            "{ id: home, path: /, policy: authenticated }",
        );
        assert_ne!(closed, yaml, "the example's catch-all route moved");
        closed
    })
    .await;
    for path in ["/auth", "/.well-known/jwks.json/x"] {
        let before = s.gw.upstream.count();
        let r = s.get(path, &[API]).await;
        assert!(
            !r.status.is_success(),
            "{path}: {} {}\n{}",
            r.status,
            r.text(),
            s.context()
        );
        assert_eq!(s.gw.upstream.count(), before, "{path} reached the backend");
    }
}

async fn client_identity_headers_never_reach_the_backend(kind: Kind) {
    let s = Stack::start(kind).await;
    let forged: &[(&str, &str)] = &[
        ("x-auth-subject", "mallory"),
        ("x-auth-subject", "root"),
        ("x-auth-session", "sid-of-someone-else"),
        ("x-auth-permissions", "admin:access"),
        API,
    ];
    // A public route: no identity, so none of the client's may pass.
    let r = s.get("/", forged).await;
    assert_eq!(r.status, StatusCode::OK, "{}", s.context());
    for name in ["x-auth-subject", "x-auth-session", "x-auth-permissions"] {
        assert!(
            s.backend_header(name).is_empty(),
            "{name} reached the backend on a public route: {:?}",
            s.backend_header(name)
        );
    }
    // A protected route: only the gateway's answer.
    let token = bearer(&demo_token("alice", &["reader"]));
    let mut with_token = forged.to_vec();
    with_token.push(("authorization", &token));
    let r = s.get("/documents/x", &with_token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", s.context());
    assert_eq!(s.backend_header("x-auth-subject"), ["alice"]);
    assert_eq!(s.backend_header("x-auth-permissions"), ["documents:read"]);
    assert!(s.backend_header("x-auth-session").is_empty());
    // The forged headers did not make a refused request allowed either.
    let r = s.get("/admin", &with_token).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

async fn a_gateway_that_does_not_trust_the_proxy_refuses_it(kind: Kind) {
    let s = Stack::start_with(kind, &|yaml| {
        assert!(yaml.contains("trusted_proxies: [127.0.0.1]"));
        yaml.replace(
            "trusted_proxies: [127.0.0.1]",
            "trusted_proxies: [192.0.2.1]",
        )
    })
    .await;
    let token = bearer(&demo_token("alice", &["reader"]));
    for path in ["/", "/documents/x"] {
        let r = s.get(path, &[("authorization", &token), API]).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{path}: {}\n{}",
            r.text(),
            s.context()
        );
    }
    assert_eq!(s.gw.upstream.count(), 0);
    // Directly: a well-formed sub-request from 127.0.0.1 (not 192.0.2.1) is refused as well.
    let (endpoint, headers): (&str, &[(&str, &str)]) = match kind {
        Kind::Nginx => (
            "/_portcullis/nginx",
            &[
                ("x-original-url", "http://localhost/"),
                ("x-original-method", "GET"),
            ],
        ),
        Kind::Caddy => (
            "/_portcullis/forward",
            &[
                ("x-forwarded-uri", "/"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-host", "localhost"),
            ],
        ),
    };
    let mut req = Request::get(s.gw.url(endpoint));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = send(req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.headers.get("x-auth-subject").is_none());
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod nginx {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(super::Kind::Nginx).await;
                }
            )*
        }
        mod caddy {
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    super::$case(super::Kind::Caddy).await;
                }
            )*
        }
    };
}

both!(
    allowed_requests_reach_the_backend_with_the_identity,
    an_api_call_without_a_token_gets_401,
    a_forbidden_route_gets_403,
    a_browser_is_sent_to_log_in_and_comes_back,
    a_revoked_session_is_refused_on_the_next_request,
    a_spoofed_original_request_does_not_change_the_decision,
    path_tricks_never_reach_a_forbidden_route,
    the_login_paths_asked_about_are_never_allowed_through_to_the_backend,
    client_identity_headers_never_reach_the_backend,
    a_gateway_that_does_not_trust_the_proxy_refuses_it,
);
