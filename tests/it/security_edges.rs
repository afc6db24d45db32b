//! docs/security.md 28–30, 34 and 35, black-box, at the edges of the proxy: what `Upgrade` may
//! open (h2c smuggling), what a backend may send back (the gateway's cookies), headers the
//! gateway does not know by name, and requests HTTP/1.1 forbids. Each test runs a real gateway
//! on 127.0.0.1:0 in front of a real backend: the recording echo upstream, or a backend written
//! here that performs the h2c upgrade, or answers `101` to anything, or sets the gateway's
//! cookies. Every refusal has a positive control in the same test.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for something that should happen at once.
const BOUND: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Local helpers.

/// Status codes of every response in a raw reply, in order.
fn statuses(reply: &str) -> Vec<u16> {
    reply
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, m)| reply.get(i + m.len()..i + m.len() + 4))
        .filter(|code| code.ends_with(' ') && code[..3].bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|code| code[..3].parse().ok())
        .collect()
}

/// Reads whatever arrives until the peer closes; `None` if it is still open after `BOUND`.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(BOUND, read).await.ok()?;
    Some(out)
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4), an empty SETTINGS frame, and a
/// smuggled HTTP/1 request for the admin path: what a client sends after a switch to h2c.
fn after_the_switch() -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(b"GET /admin/secret HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    bytes
}

/// What one connection to [`SwitchingBackend`] received.
#[derive(Debug, Default, Clone)]
struct BackendConnection {
    /// Request heads, in order.
    heads: Vec<String>,
    /// Bytes received after the backend answered `101`.
    after_101: Vec<u8>,
    /// The backend answered `101` on this connection.
    switched: bool,
    /// The gateway closed the connection (end of stream seen).
    closed: bool,
}

/// A raw-TCP backend that performs the switch an `Upgrade` asks for: to a request with
/// `Upgrade: h2c` (or, when `always`, to any request) it answers `101 Switching Protocols` with
/// `Upgrade: <switch_to>`, and from then on records every byte it receives, as a real h2c
/// server would read them as HTTP/2 requests. Other requests get a plain 200.
#[derive(Clone)]
struct SwitchingBackend {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<BackendConnection>>>,
}

impl SwitchingBackend {
    async fn start(always: bool, switch_to: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<BackendConnection>>> = Arc::default();
        let all = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(BackendConnection::default());
                    all.len() - 1
                };
                let all = Arc::clone(&all);
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = socket.read(&mut buf).await.unwrap_or(0);
                        // The lock is never held across an await.
                        let answer = {
                            let mut all = all.lock().unwrap();
                            let conn = &mut all[index];
                            if n == 0 {
                                conn.closed = true;
                                return;
                            }
                            if conn.switched {
                                conn.after_101.extend_from_slice(&buf[..n]);
                                continue;
                            }
                            pending.extend_from_slice(&buf[..n]);
                            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n")
                            else {
                                continue;
                            };
                            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
                            let rest = pending.split_off(end + 4);
                            pending.clear();
                            let asks_h2c = head.to_ascii_lowercase().contains("\r\nupgrade: h2c");
                            conn.heads.push(head);
                            if always || asks_h2c {
                                conn.switched = true;
                                conn.after_101.extend_from_slice(&rest);
                                format!(
                                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                                     Upgrade: {switch_to}\r\n\r\n"
                                )
                            } else {
                                pending = rest;
                                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned()
                            }
                        };
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn connections(&self) -> Vec<BackendConnection> {
        self.connections.lock().unwrap().clone()
    }

    /// Waits until every connection that switched has been closed by the gateway.
    async fn switched_connections_closed(&self) -> Vec<BackendConnection> {
        let closed = eventually(BOUND, || async {
            self.connections()
                .iter()
                .filter(|c| c.switched)
                .all(|c| c.closed)
        })
        .await;
        assert!(
            closed.is_some(),
            "the gateway kept a switched upstream connection open: {:?}",
            self.connections()
        );
        self.connections()
    }
}

/// A gateway whose routes all forward to `backend_url`: `/public` (public), `/admin` (needs the
/// `admin` permission), `/nows` (public, `websocket: false`), `/` (authenticated).
async fn gateway_in_front_of(backend_url: &str) -> TestGateway {
    let setup = Setup {
        routes: r#"
  - { id: public, path: /public, upstream: backend, policy: public }
  - { id: admin, path: /admin, upstream: backend, policy: { any_of: [admin] } }
  - { id: nows, path: /nows, upstream: backend, policy: public, websocket: false }
  - { id: root, path: /, upstream: backend, policy: authenticated }
"#
        .into(),
        upstreams: format!("  backend: {{ url: \"{backend_url}\", response_timeout: 5s }}"),
        ..Setup::default()
    };
    setup.start().await
}

const H2C_UPGRADE: &str = "GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\
    Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

const WEBSOCKET: &str = "GET /public/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// 34. Upgrades.

#[tokio::test]
async fn sec34_an_h2c_upgrade_never_reaches_the_backend() {
    // A backend that really switches to h2c when asked. The gateway removes the `Upgrade`, so
    // the backend answers the request as plain HTTP/1.1 and never switches; what the client
    // sends next is parsed by the gateway, not the backend.
    let backend = SwitchingBackend::start(false, "h2c").await;
    let gw = gateway_in_front_of(&backend.url()).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client.write_all(H2C_UPGRADE.as_bytes()).await.unwrap();
    let head = read_head(&mut client, BOUND)
        .await
        .expect("no answer to the upgrade");
    assert_eq!(statuses(&head), [200], "{head}");
    let _ = client.write_all(&after_the_switch()).await;
    let rest = read_until_closed(&mut client).await.unwrap_or_default();
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("HTTP/1.1 2"),
        "the bytes after the upgrade were served: {rest}"
    );

    let connections = backend.connections();
    let heads: Vec<&String> = connections.iter().flat_map(|c| &c.heads).collect();
    assert_eq!(heads.len(), 1, "the backend received {heads:#?}");
    let forwarded = heads[0].to_ascii_lowercase();
    assert!(
        forwarded.starts_with("get /public/x http/1.1\r\n"),
        "{forwarded}"
    );
    for gone in ["\r\nupgrade:", "\r\nhttp2-settings:", "h2c"] {
        assert!(
            !forwarded.contains(gone),
            "`{gone}` was forwarded:\n{forwarded}"
        );
    }
    assert!(
        connections
            .iter()
            .all(|c| !c.switched && c.after_101.is_empty())
    );
}

#[tokio::test]
async fn sec34_a_101_to_a_request_that_asked_no_switch_is_502_and_joins_nothing() {
    // A backend that answers 101 to anything (buggy, or compromised and after a bypass): the
    // gateway answers 502, closes both connections, and the backend never receives a byte
    // after its 101, so no request after it can skip the gateway's checks.
    let backend = SwitchingBackend::start(true, "h2c").await;
    let gw = gateway_in_front_of(&backend.url()).await;
    for request in [
        H2C_UPGRADE,
        "GET /public/plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ] {
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client.write_all(request.as_bytes()).await.unwrap();
        let head = read_head(&mut client, BOUND).await.expect("no answer");
        assert_eq!(statuses(&head), [502], "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{head}"
        );
        let _ = client.write_all(&after_the_switch()).await;
        let rest = read_until_closed(&mut client)
            .await
            .expect("the gateway kept the client connection open after refusing a 101");
        assert!(
            !String::from_utf8_lossy(&rest).contains("HTTP/1.1"),
            "more was answered"
        );
    }
    let connections = backend.switched_connections_closed().await;
    assert_eq!(connections.len(), 2, "{connections:?}");
    for c in &connections {
        assert_eq!(
            c.heads.len(),
            1,
            "a second request reached the backend: {c:?}"
        );
        assert!(
            c.after_101.is_empty(),
            "bytes after the 101 reached the backend: {c:?}"
        );
    }
}

#[tokio::test]
async fn sec34_a_websocket_handshake_answered_with_another_protocol_is_502() {
    let backend = SwitchingBackend::start(true, "h2c").await;
    let gw = gateway_in_front_of(&backend.url()).await;
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client.write_all(WEBSOCKET.as_bytes()).await.unwrap();
    let head = read_head(&mut client, BOUND).await.expect("no answer");
    assert_eq!(statuses(&head), [502], "{head}");
    let _ = client.write_all(&after_the_switch()).await;
    assert!(
        read_until_closed(&mut client).await.is_some(),
        "client connection left open"
    );
    let connections = backend.switched_connections_closed().await;
    assert_eq!(connections.len(), 1);
    // The handshake itself was forwarded (it was well-formed), nothing after it.
    assert!(
        connections[0].heads[0]
            .to_ascii_lowercase()
            .contains("\r\nupgrade: websocket")
    );
    assert!(connections[0].after_101.is_empty());
}

#[tokio::test]
async fn sec34_only_a_well_formed_websocket_handshake_on_a_websocket_route_keeps_its_upgrade() {
    let gw = TestGateway::start().await;
    let ws = |path: &str, key: &str, version: &str, upgrade: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
        )
    };
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    // Positive control: the echo upstream switches, and the tunnel carries bytes.
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(ws("/public/ws", KEY, "13", "websocket").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut client, BOUND).await.expect("no answer");
    assert_eq!(statuses(&head), [101], "{head}");
    client.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(BOUND, client.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(gw.upstream.last().headers["upgrade"], "websocket");

    // Everything else is forwarded as a plain request: no Upgrade, no switch.
    let cases = [
        ws("/public/ws", KEY, "8", "websocket"),
        ws("/public/ws", "c2hvcnQ=", "13", "websocket"),
        ws("/public/ws", "not base64 at all!!!!!==", "13", "websocket"),
        ws("/public/ws", KEY, "13", "h2c"),
        ws("/public/ws", KEY, "13", "foo"),
        ws("/public/ws", KEY, "13", "websocket, h2c"),
        ws("/public/ws", KEY, "13", "websocket").replacen("GET", "POST", 1),
    ];
    for case in &cases {
        let before = gw.upstream.count();
        let reply = gw
            .raw(
                case.replacen("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n", 1)
                    .as_bytes(),
            )
            .await;
        assert_eq!(statuses(&reply).first(), Some(&200), "{case}\n{reply}");
        assert_eq!(gw.upstream.count(), before + 1, "{case}");
        let seen = gw.upstream.last();
        assert!(seen.headers.get("upgrade").is_none(), "{case}");
        assert!(seen.headers.get("http2-settings").is_none(), "{case}");
    }
}

#[tokio::test]
async fn sec34_a_route_with_websocket_off_forwards_a_handshake_as_a_plain_request() {
    // The echo upstream would switch if it saw `Upgrade`; on `websocket: false` it never does.
    let gw = Setup {
        routes: r#"
  - { id: nows, path: /nows, upstream: echo, policy: public, websocket: false }
  - { id: ws, path: /ws, upstream: echo, policy: public }
"#
        .into(),
        ..Setup::default()
    }
    .start()
    .await;
    let reply = gw
        .raw(WEBSOCKET.replace("/public/ws", "/nows/x").as_bytes())
        .await;
    assert_eq!(statuses(&reply).first(), Some(&200), "{reply}");
    assert!(gw.upstream.last().headers.get("upgrade").is_none());
    // Control: the same handshake on a route that allows it switches.
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(WEBSOCKET.replace("/public/ws", "/ws/x").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut client, BOUND).await.expect("no answer");
    assert_eq!(statuses(&head), [101], "{head}");
}

#[tokio::test]
async fn sec34_http2_settings_is_never_forwarded() {
    let gw = TestGateway::start().await;
    let response = gw
        .send(
            Request::get(gw.url("/public/x"))
                .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
                .header("http2_settings", "AAMAAABkAARAAAAAAAIAAAAA")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status, 200);
    let seen = gw.upstream.last();
    assert!(seen.headers.get("http2-settings").is_none());
    assert!(seen.headers.get("http2_settings").is_none());
}

// ---------------------------------------------------------------------------------------------
// 35. A backend cannot set the gateway's cookies.

/// `Set-Cookie` lines a backend sends for the gateway's cookies, in every spelling.
const PLANTED: [&str; 9] = [
    "__Host-portcullis-at=planted-at; Path=/; Secure; HttpOnly",
    "portcullis-at=planted-bare",
    "__HOST-PORTCULLIS-AT=planted-case",
    "__secure-PORTCULLIS-rt=planted-rt; Path=/auth",
    "__Secure-portcullis-rt=; Max-Age=0; Path=/auth",
    "__Host-portcullis-csrf=planted-csrf; Path=/",
    "portcullis-csrf=planted-csrf-bare",
    "=__Host-portcullis-at=planted-nameless",
    "  __Host-portcullis-at =planted-space",
];

/// A backend (HTTP/1.1 and h2c prior knowledge) whose every answer sets the gateway's cookies,
/// `Clear-Site-Data`, and one cookie of its own. A WebSocket handshake gets a `101` that
/// carries them too.
async fn cookie_planting_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|mut req: Request<Incoming>| async move {
                    let upgrade = req.headers().contains_key("upgrade");
                    let mut response = Response::builder();
                    if upgrade {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(upgraded) = on.await {
                                let mut io = TokioIo::new(upgraded);
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        response = response
                            .status(101)
                            .header("connection", "upgrade")
                            .header("upgrade", "websocket");
                    }
                    for planted in PLANTED {
                        response = response.header("set-cookie", planted);
                    }
                    let response = response
                        .header("set-cookie", "backend-theme=dark; Path=/")
                        .header("clear-site-data", "\"cookies\", \"storage\"")
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn sec35_a_backend_cannot_set_the_gateways_cookies() {
    let backend = cookie_planting_backend().await;
    let url = format!("http://{backend}");
    let gw = Setup {
        routes: r#"
  - { id: h1, path: /h1, upstream: backend, policy: public }
  - { id: h2, path: /h2, upstream: backend-h2, policy: public }
  - { id: api, path: /api, upstream: backend, policy: authenticated }
"#
        .into(),
        upstreams: format!(
            "  backend: {{ url: \"{url}\" }}\n  backend-h2: {{ url: \"{url}\", protocol: h2 }}"
        ),
        ..Setup::default()
    }
    .start()
    .await;
    let token = gw.token(json!({}));

    // HTTP/1.1 and h2 upstreams, public and authenticated routes.
    for response in [
        gw.get("/h1/page").await,
        gw.get("/h2/page").await,
        gw.get_bearer("/api/page", &token).await,
    ] {
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(
            response
                .set_cookies()
                .into_iter()
                .map(|c| c.raw)
                .collect::<Vec<_>>(),
            ["backend-theme=dark; Path=/"]
        );
        assert!(response.headers.get("clear-site-data").is_none());
    }

    // The 101 of a WebSocket handshake.
    let mut client = TcpStream::connect(gw.addr).await.unwrap();
    client
        .write_all(WEBSOCKET.replace("/public/ws", "/h1/ws").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut client, BOUND).await.expect("no answer");
    assert_eq!(statuses(&head), [101], "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("portcullis"), "{head}");
    assert!(!lower.contains("clear-site-data"), "{head}");
    assert!(lower.contains("set-cookie: backend-theme=dark"), "{head}");
}

// ---------------------------------------------------------------------------------------------
// 28 and 30. Header spellings the gateway does not know by name.

/// Identity and client-address headers other gateways set, as a client would forge them.
const FOREIGN: [&str; 30] = [
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "Remote-Name",
    "remote_user",
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "x_auth_request_groups",
    "X-WEBAUTH-USER",
    "X-Remote-User",
    "True-Client-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "CF-Connecting-IP",
    "Fastly-Client-IP",
    "X-Original-URL",
    "X-Rewrite-URL",
    "X-Pomerium-Claim-Email",
    "X-Pomerium-Jwt-Assertion",
    "X-Authentik-Username",
    "X-authentik-groups",
    "X-MS-CLIENT-PRINCIPAL-NAME",
    "X-Goog-Authenticated-User-Email",
    "X-Amzn-Oidc-Identity",
    "X_Legacy_User",
];

#[tokio::test]
async fn sec28_identity_headers_of_other_gateways_never_reach_the_upstream() {
    let gw = Setup {
        extra: "identity_headers:\n  strip: [X-Legacy-User, \"X-Corp-*\"]\n".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let token = gw.token(json!({}));
    let forged: Vec<(String, String)> = FOREIGN
        .iter()
        .chain(&["X-Corp-Role", "x_corp_tenant"])
        .enumerate()
        .map(|(i, name)| (name.to_string(), format!("forged-{i}")))
        .collect();
    for (path, bearer) in [("/public/x", None), ("/api/x", Some(&token))] {
        let mut request = Request::get(gw.url(path)).header("x-kept", "control");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in &forged {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = gw
            .send(request.body(Full::new(Bytes::new())).unwrap())
            .await;
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        let seen = gw.upstream.last();
        for (name, value) in &seen.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(
                !value.contains("forged"),
                "{path}: `{name}: {value}` reached the upstream"
            );
        }
        assert_eq!(seen.headers["x-kept"], "control", "{path}");
    }
}

#[tokio::test]
async fn sec30_content_length_spelled_with_an_underscore_is_not_forwarded() {
    // hyper frames the body by `Content-Length: 5`; a backend that folds `_` into `-` would
    // frame it by `Content_Length` and read the rest as another request.
    let gw = TestGateway::start().await;
    let reply = gw
        .raw(
            b"POST /public/first HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\
              Content_Length: 60\r\ncontent_LENGTH: 61\r\nConnection: close\r\n\r\nhello",
        )
        .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    let seen = gw.upstream.last();
    assert_eq!(&seen.body[..], b"hello");
    for (name, _) in &seen.headers {
        assert!(
            !name.as_str().contains('_'),
            "`{name}` reached the upstream"
        );
    }
    assert_eq!(seen.headers["content-length"], "5");
}

#[tokio::test]
async fn sec28_a_strip_entry_that_is_no_header_name_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        extra: "identity_headers:\n  strip: [\"X Bad\"]\n".into(),
        ..Setup::default()
    };
    let yaml = setup.yaml(dir.path(), "http://127.0.0.1:9");
    let Err(err) = portcullis::config::Config::from_yaml(&yaml, dir.path()) else {
        panic!("a strip entry with a space was accepted");
    };
    assert!(
        err.to_string().contains("identity_headers.strip[0]"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// 29 and 30. Requests HTTP/1.1 forbids.

#[tokio::test]
async fn sec30_an_http_1_1_request_without_host_is_refused() {
    let gw = TestGateway::start().await;
    for request in [
        &b"GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
        b"GET http://127.0.0.1/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let reply = gw.raw(request).await;
        assert_eq!(statuses(&reply), [400], "{reply}");
    }
    assert_eq!(gw.upstream.count(), 0);
    // HTTP/1.0 predates Host and may omit it; with it, HTTP/1.1 passes.
    let reply = gw.raw(b"GET /public/x HTTP/1.0\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "{reply}"
    );
    let reply = gw
        .raw(b"GET /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
    assert_eq!(gw.upstream.count(), 2);
}

#[tokio::test]
async fn sec29_paths_whose_bytes_are_not_utf8_are_refused_on_every_route() {
    let gw = TestGateway::start().await;
    for path in [
        "/public/%c0%ae%c0%ae/admin",
        "/public/%e0%80%ae%e0%80%ae/admin",
        "/public/%80",
        "/public/a%c3",
        "/public/%ed%a0%80",
        "/api/%c0%ae",
        "/admin%80",
        "/%c0%af",
    ] {
        let response = gw.get(path).await;
        assert_eq!(response.status, 400, "{path}");
        assert_eq!(response.json()["error"], "invalid_request", "{path}");
    }
    assert_eq!(gw.upstream.count(), 0);
    let response = gw.get("/public/caf%C3%A9").await;
    assert_eq!(response.status, 200);
    assert_eq!(gw.upstream.last().uri, "/public/caf%C3%A9");
}

#[tokio::test]
async fn sec29_look_alike_slashes_and_double_encodings_are_data_and_never_change_the_route() {
    let gw = Setup {
        routes: r#"
  - { id: public, path: /public, upstream: echo, policy: public }
  - { id: admin, path: /admin, upstream: echo, policy: { any_of: [admin] } }
  - { id: root, path: /, upstream: echo, policy: authenticated }
"#
        .into(),
        ..Setup::default()
    }
    .start()
    .await;
    // Under /public they stay in their segment, and the upstream receives them as sent.
    for (path, forwarded) in [
        (
            "/public/%ef%bc%8f..%ef%bc%8fadmin",
            "/public/%EF%BC%8F..%EF%BC%8Fadmin",
        ),
        ("/public/%252e%252e/admin", "/public/%252e%252e/admin"),
        (
            "/public/%252e%252e%252fadmin",
            "/public/%252e%252e%252fadmin",
        ),
    ] {
        let response = gw.get(path).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(gw.upstream.last().uri, forwarded, "{path}");
    }
    // A look-alike slash after `public` is not a slash: the segment is not `public`, so the
    // authenticated root applies, and without a token nothing is forwarded.
    let before = gw.upstream.count();
    for path in ["/public%ef%bc%8fx", "/%252e%252e/public", "/admin%ef%bc%8f"] {
        assert_eq!(gw.get(path).await.status, 401, "{path}");
    }
    assert_eq!(gw.upstream.count(), before);
}

#[tokio::test]
async fn sec34_connect_never_opens_a_tunnel() {
    // A 2xx to CONNECT switches both hyper ends to a raw tunnel: the gateway never forwards
    // one, in authority form or (malformed) origin form, on any route.
    let gw = TestGateway::start().await;
    for request in [
        &b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n"[..],
        b"CONNECT /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"CONNECT /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ] {
        let reply = gw.raw(request).await;
        assert_eq!(statuses(&reply), [405], "{reply}");
    }
    assert_eq!(gw.upstream.count(), 0);
    // Control: the same route forwards other methods.
    let reply = gw
        .raw(b"OPTIONS /public/x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(statuses(&reply), [200], "{reply}");
}
