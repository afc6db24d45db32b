//! Black-box tests of the server and the forward stage: TLS (HTTP/1.1 and h2 over ALPN), h2c,
//! WebSocket upgrades, upstream failures, body and header limits, slowloris, the connection
//! limit, graceful shutdown, upstream keep-alive and the built-in echo upstream.

use crate::common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::Running;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
const BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A gateway with one public catch-all route to `upstream_url`; `upstream_opts` is appended
/// inside the upstream's flow mapping (e.g. `, response_timeout: 300ms`) and `extra` at the
/// top level.
async fn public_gateway(
    upstream_url: &str,
    upstream_opts: &str,
    extra: &str,
) -> (Running, SocketAddr) {
    let yaml = format!(
        "listeners:\n  - bind: 127.0.0.1:0\nupstreams:\n  app: {{ url: \"{upstream_url}\"{upstream_opts} }}\n\
         routes:\n  - {{ id: all, path: /, upstream: app, policy: public }}\n{extra}\n"
    );
    let running = launch(&yaml, Path::new("."), portcullis::clock::Clock::system()).await;
    let addr = running.local_addrs()[0];
    (running, addr)
}

/// An HTTP/1.1 upstream answering with `handler`, counting the TCP connections it accepts.
struct CustomUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl CustomUpstream {
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, connections }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn ok(body: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(body.as_bytes())))
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response head: {head:?}"))
}

async fn collect(response: Response<Incoming>) -> TestResponse {
    let (parts, body) = response.into_parts();
    let body = timeout(BOUND, body.collect())
        .await
        .expect("body timed out")
        .unwrap()
        .to_bytes();
    TestResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A self-signed certificate for `localhost`, written as PEM files.
struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn tls_files() -> TlsFiles {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = write(dir.path(), "gateway.crt", &cert.pem());
    let key_path = write(dir.path(), "gateway.key", &key_pair.serialize_pem());
    TlsFiles {
        _dir: dir,
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    }
}

/// A test gateway whose first listener terminates TLS with `tls` and whose second is plain.
async fn tls_gateway(tls: &TlsFiles, extra: &str) -> TestGateway {
    Setup {
        listeners: Some(format!(
            "  - {{ bind: 127.0.0.1:0, tls: {{ cert: \"{}\", key: \"{}\" }} }}\n  - bind: 127.0.0.1:0",
            tls.cert.display(),
            tls.key.display()
        )),
        extra: extra.into(),
        ..Setup::default()
    }
    .start()
    .await
}

/// Connects with TLS to `addr` as `localhost`, trusting only `cert`, offering `alpn`.
async fn tls_connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    timeout(BOUND, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake failed")
}

/// One HTTP/1.1 request on `io`.
async fn http1_request<S>(io: S, request: Request<Full<Bytes>>) -> TestResponse
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = timeout(BOUND, sender.send_request(request))
        .await
        .expect("timed out")
        .unwrap();
    collect(response).await
}

/// One HTTP/2 request on `io` (prior knowledge, or after ALPN `h2`).
async fn http2_request<S>(io: S, request: Request<Full<Bytes>>) -> TestResponse
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = timeout(BOUND, sender.send_request(request))
        .await
        .expect("timed out")
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    collect(response).await
}

// ---------------------------------------------------------------------------------------------
// TLS and HTTP versions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec32_tls_listeners_send_strict_transport_security_and_plain_ones_do_not() {
    let tls = tls_files();
    let gw = tls_gateway(&tls, "").await;
    let stream = tls_connect(gw.addr, &tls.der, &[b"http/1.1"]).await;
    let request = Request::get("/public/tls")
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    let response = http1_request(stream, request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.headers["strict-transport-security"],
        "max-age=31536000"
    );
    assert_eq!(gw.upstream.last().uri, "/public/tls");

    // Refusals the gateway makes itself carry it too.
    let stream = tls_connect(gw.addr, &tls.der, &[b"http/1.1"]).await;
    let request = Request::get("/api/x")
        .header("host", "localhost")
        .body(Full::default())
        .unwrap();
    let refused = http1_request(stream, request).await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.contains_key("strict-transport-security"));

    let plain = gw.running.local_addrs()[1];
    let response = send(get(plain, "/public/plain")).await;
    assert_eq!(response.status, 200);
    assert!(!response.headers.contains_key("strict-transport-security"));
}

#[tokio::test]
async fn the_upstream_sees_x_forwarded_proto_https_behind_a_tls_listener() {
    let tls = tls_files();
    let gw = tls_gateway(&tls, "").await;
    let stream = tls_connect(gw.addr, &tls.der, &[b"http/1.1"]).await;
    let request = Request::get("/public/proto")
        .header("host", "localhost")
        .header("x-forwarded-proto", "http")
        .body(Full::default())
        .unwrap();
    assert_eq!(http1_request(stream, request).await.status, 200);
    let seen = gw.upstream.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers.get_all("x-forwarded-proto").iter().count(), 1);

    let plain = gw.running.local_addrs()[1];
    assert_eq!(send(get(plain, "/public/proto")).await.status, 200);
    assert_eq!(gw.upstream.last().headers["x-forwarded-proto"], "http");
}

#[tokio::test]
async fn alpn_negotiates_h2_and_an_http2_request_over_tls_is_forwarded() {
    let tls = tls_files();
    let gw = tls_gateway(&tls, "").await;
    let stream = tls_connect(gw.addr, &tls.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let token = gw.token(json!({}));
    let request = Request::get("https://localhost/docs/over-h2")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let response = http2_request(stream, request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.headers.contains_key("strict-transport-security"));
    let seen = gw.upstream.last();
    assert_eq!(seen.uri, "/docs/over-h2");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
}

#[tokio::test]
async fn a_tls_client_offering_only_http1_gets_http1() {
    let tls = tls_files();
    let gw = tls_gateway(&tls, "").await;
    let stream = tls_connect(gw.addr, &tls.der, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn h2c_with_prior_knowledge_works_on_a_plain_listener() {
    let gw = TestGateway::start().await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let token = gw.token(json!({}));
    let request = Request::get(format!("http://{}/api/h2c?q=1", gw.addr))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::default())
        .unwrap();
    let response = http2_request(tcp, request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let seen = gw.upstream.last();
    assert_eq!(seen.uri, "/api/h2c?q=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert!(seen.headers.get("authorization").is_none());
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

fn upgrade_request(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
}

#[tokio::test]
async fn a_websocket_upgrade_with_a_valid_token_is_spliced_to_the_upstream() {
    let gw = TestGateway::start().await;
    let token = gw.token(json!({}));
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(upgrade_request("/api/ws", Some(&token)).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream, BOUND)
        .await
        .expect("no response to the upgrade");
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );

    let seen = gw.upstream.last();
    assert_eq!(seen.uri, "/api/ws");
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    assert!(seen.headers.get("authorization").is_none());

    // Bytes go through the tunnel both ways, more than once.
    for message in [&b"hello through the gateway"[..], b"\x81\x05again"] {
        stream.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        timeout(BOUND, stream.read_exact(&mut back))
            .await
            .expect("echo timed out")
            .unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn a_websocket_upgrade_without_a_token_on_a_protected_route_is_401_and_the_upstream_sees_nothing()
 {
    let gw = TestGateway::start().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(upgrade_request("/api/ws", None).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut stream, BOUND)
        .await
        .expect("no response to the upgrade");
    assert_eq!(status_of(&head), 401, "{head}");
    assert_eq!(gw.upstream.count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_502() {
    let _counted = UPSTREAM_FAILURES.lock().await;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let (running, addr) = public_gateway(&format!("http://{closed}"), "", "").await;
    let response = send(get(addr, "/x")).await;
    assert_eq!(response.status, 502, "{}", response.text());
    assert_eq!(response.json()["error"], "bad_gateway");
    assert!(running.shutdown().await);
}

#[tokio::test]
async fn an_upstream_that_accepts_but_never_answers_is_504_after_the_response_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut streams = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            // Read the request, never answer; keep the socket open.
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            streams.push(stream);
        }
    });
    let (running, addr) = public_gateway(
        &format!("http://{upstream}"),
        ", response_timeout: 300ms",
        "",
    )
    .await;
    let response = send(get(addr, "/slow")).await;
    assert_eq!(response.status, 504, "{}", response.text());
    assert_eq!(response.json()["error"], "gateway_timeout");
    held.abort();
    assert!(running.shutdown().await);
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

const BODY_ROUTES: &str = r#"
  - { id: small, path: /small, upstream: echo, policy: public, max_body: 1KiB }
  - { id: large, path: /large, upstream: echo, policy: public, max_body: 16MiB }
"#;

/// The standard test gateway with `limits: { <limits> }`.
async fn gateway_with_limits(limits: &str) -> TestGateway {
    Setup {
        extra: format!("limits: {{ {limits} }}"),
        ..Setup::default()
    }
    .start()
    .await
}

fn body_setup() -> Setup {
    Setup {
        routes: BODY_ROUTES.into(),
        ..Setup::default()
    }
}

fn post(addr: SocketAddr, path: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

#[tokio::test]
async fn a_body_over_the_route_limit_with_content_length_is_413_and_the_upstream_sees_nothing() {
    let gw = body_setup().start().await;
    let response = send(post(gw.addr, "/small", vec![b'x'; 2048])).await;
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["error"], "payload_too_large");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_route_limit_is_413_and_never_reaches_the_upstream_whole() {
    let gw = body_setup().start().await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut request =
        b"POST /small HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'y'; 512]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let head = read_head(&mut stream, BOUND).await.expect("no response");
    assert_eq!(status_of(&head), 413, "{head}");
    for seen in gw.upstream.requests() {
        assert!(
            seen.body.len() <= 1024,
            "the upstream received {} bytes",
            seen.body.len()
        );
    }
}

#[tokio::test]
async fn a_body_within_the_route_limit_reaches_the_upstream_whole() {
    let gw = body_setup().start().await;
    let body: Vec<u8> = (0..512u32).map(|i| (i % 251) as u8).collect();
    let response = send(post(gw.addr, "/small", body.clone())).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body_bytes"], 512);
    assert_eq!(gw.upstream.last().body, body);
}

#[tokio::test]
async fn a_body_exactly_at_the_route_limit_passes() {
    let gw = body_setup().start().await;
    let response = send(post(gw.addr, "/small", vec![b'z'; 1024])).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(gw.upstream.last().body.len(), 1024);
}

#[tokio::test]
async fn an_eight_mebibyte_body_within_the_limit_arrives_intact() {
    let gw = body_setup().start().await;
    let body: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let response = send(post(gw.addr, "/large", body.clone())).await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["body_bytes"], 8 << 20);
    assert!(
        gw.upstream.last().body == body,
        "the upstream received different bytes"
    );
}

#[tokio::test]
async fn request_bodies_are_streamed_to_the_upstream_before_the_client_has_finished() {
    // A raw upstream that reports when the first chunk of a body arrives, before the end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (first_chunk_tx, first_chunk_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut signal = Some(first_chunk_tx);
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            if signal.is_some() && seen.windows(11).any(|w| w == b"first-chunk") {
                let _ = signal.take().map(|s| s.send(()));
            }
            if seen.ends_with(b"0\r\n\r\n") {
                break;
            }
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nstreamed")
            .await;
    });
    let (running, addr) = public_gateway(&format!("http://{upstream}"), "", "").await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /stream HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nfirst-chunk\r\n")
        .await
        .unwrap();
    // A gateway that buffered the body would wait for the rest, and this would time out.
    timeout(BOUND, first_chunk_rx)
        .await
        .expect("the upstream got no body bytes before the client finished: the body is buffered")
        .unwrap();
    client.write_all(b"0\r\n\r\n").await.unwrap();
    let head = read_head(&mut client, BOUND).await.expect("no response");
    assert_eq!(status_of(&head), 200, "{head}");
    drop(client);
    assert!(running.shutdown().await);
}

/// A request body sent as separate chunks with no length known in advance (HTTP/2 DATA frames
/// without `content-length`).
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }
}

#[tokio::test]
async fn an_http2_body_without_content_length_over_the_route_limit_is_413() {
    let gw = body_setup().start().await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunks = Chunks((0..4).map(|_| Bytes::from(vec![b'h'; 512])).collect());
    let request = Request::post(format!("http://{}/small", gw.addr))
        .body(chunks)
        .unwrap();
    let response = timeout(BOUND, sender.send_request(request))
        .await
        .expect("timed out")
        .unwrap();
    assert_eq!(response.status(), 413);
    for seen in gw.upstream.requests() {
        assert!(
            seen.body.len() <= 1024,
            "the upstream received {} bytes",
            seen.body.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Header limits and slow clients
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sec12_a_request_head_over_max_header_bytes_is_refused_fast() {
    let gw = gateway_with_limits("max_header_bytes: 8KiB").await;
    for (name, size) in [
        ("x-big", 9 * 1024),
        ("cookie", 64 * 1024),
        ("authorization", 1 << 20),
    ] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let value = "a".repeat(size);
        let request =
            format!("GET /public/x HTTP/1.1\r\nHost: localhost\r\n{name}: {value}\r\n\r\n");
        // The gateway may stop reading (and close) before a 1 MiB head is fully written.
        let _ = timeout(BOUND, stream.write_all(request.as_bytes())).await;
        // Closed (or reset) without an answer is a refusal too; an answer must be 431 or 400.
        if let Some(head) = read_head(&mut stream, BOUND).await {
            assert!(
                matches!(status_of(&head), 431 | 400),
                "{name} of {size} bytes: {head}"
            );
        }
    }
    assert_eq!(gw.upstream.count(), 0);
    // A normal request still works.
    assert_eq!(gw.get("/public/ok").await.status, 200);
}

#[tokio::test]
async fn a_slowloris_client_sending_half_a_head_is_disconnected_after_header_read_timeout() {
    let gw = gateway_with_limits("header_read_timeout: 500ms").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let text = until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection was still open after 5s");
    assert!(!text.contains(" 200 "), "{text}");
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test]
async fn a_client_that_stalls_mid_body_gets_408_after_body_read_timeout() {
    let gw = gateway_with_limits("body_read_timeout: 500ms").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(b"POST /public/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly-part")
        .await
        .unwrap();
    let text = until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("the connection was still open after 5s");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    // The upstream never saw the whole body.
    assert!(
        gw.upstream
            .requests()
            .iter()
            .all(|seen| seen.body.len() < 100)
    );
}

#[tokio::test]
async fn a_slow_but_steady_body_is_not_cut_by_body_read_timeout() {
    let gw = gateway_with_limits("body_read_timeout: 500ms").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /public/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 40\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Four pieces 250 ms apart: a second in all, but never 500 ms without a byte. The body
    // timeouts are measured on the monotonic clock (they bound how long the gateway waits), so
    // a slow client has to be slow in real time.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        stream.write_all(b"0123456789").await.unwrap();
    }
    let text = until_closed(&mut stream, BOUND)
        .await
        .expect("the connection was still open");
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert_eq!(gw.upstream.last().body.len(), 40);
}

/// Reads until the gateway closes the connection; whether it did within `within`.
async fn closed_within<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    until_closed(stream, within).await.is_some()
}

/// Everything the gateway sent until it closed the connection, or `None` if it was still open
/// after `within`.
async fn until_closed<S: AsyncRead + Unpin>(stream: &mut S, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    // A read error (a reset) ends the connection as well as a close does.
    let _ = timeout(within, stream.read_to_end(&mut out)).await.ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Regression: hyper bounds an HTTP/1 head once it has started, but the protocol sniff before
/// it (waiting for a possible HTTP/2 preface) and an HTTP/2 connection that never opens a
/// stream had no deadline, so silent sockets were held, with their connection permits, forever.
#[tokio::test]
async fn a_connection_that_sends_no_request_is_disconnected_after_header_read_timeout() {
    let gw = gateway_with_limits("header_read_timeout: 500ms").await;
    let silent: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ];
    for bytes in silent {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "a connection that sent {:?} was still open after 5s",
            String::from_utf8_lossy(bytes)
        );
    }
    assert_eq!(gw.upstream.count(), 0);
}

/// Regression: after its first request an HTTP/2 connection that opened no further stream was
/// held, with its connection permit, forever; `limits.idle_timeout` now winds it down (GOAWAY).
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_idle_timeout() {
    let gw = gateway_with_limits("idle_timeout: 300ms").await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let response = timeout(BOUND, sender.send_request(get(gw.addr, "/public/idle")))
        .await
        .expect("timed out")
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // The client keeps its sender: only the gateway can end this connection.
    let ended = timeout(Duration::from_secs(5), conn).await;
    assert!(
        ended.is_ok(),
        "the idle HTTP/2 connection was still open after 5s"
    );
    drop(sender);
}

#[tokio::test]
async fn silent_connections_cannot_hold_every_connection_permit() {
    let gw = gateway_with_limits("max_connections: 2, header_read_timeout: 500ms").await;
    let _silent = [
        TcpStream::connect(gw.addr).await.unwrap(),
        TcpStream::connect(gw.addr).await.unwrap(),
    ];
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third
        .write_all(b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut third, BOUND)
        .await
        .expect("two silent sockets starved the gateway");
    assert_eq!(status_of(&head), 200, "{head}");
}

#[tokio::test]
async fn a_tls_client_that_sends_nothing_after_the_handshake_is_disconnected() {
    let tls = tls_files();
    let gw = tls_gateway(&tls, "limits: { header_read_timeout: 500ms }").await;
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut stream = tls_connect(gw.addr, &tls.der, &[alpn]).await;
        assert!(
            closed_within(&mut stream, Duration::from_secs(5)).await,
            "an idle TLS connection ({}) was still open after 5s",
            String::from_utf8_lossy(alpn)
        );
    }
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_the_handshake_is_disconnected() {
    let tls = tls_files();
    let gw = tls_gateway(&tls, "limits: { header_read_timeout: 500ms }").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Half a ClientHello record header, then nothing.
    stream.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "the connection was still open after 5s"
    );
}

#[tokio::test]
async fn max_connections_holds_a_third_connection_until_one_of_two_closes() {
    let gw = gateway_with_limits("max_connections: 2").await;
    let request = b"GET /public/x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    // Two connections, each proven to be served, then left idle (keep-alive).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let head = read_head(&mut stream, BOUND)
            .await
            .expect("a connection within the limit is served");
        assert_eq!(status_of(&head), 200, "{head}");
        held.push(stream);
    }
    // The kernel completes the third handshake, but the gateway does not serve it.
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    third.write_all(request).await.unwrap();
    assert!(
        read_head(&mut third, Duration::from_millis(500))
            .await
            .is_none(),
        "a third connection was served while two were open"
    );
    drop(held.remove(0));
    let head = read_head(&mut third, BOUND)
        .await
        .expect("the third connection was never served");
    assert_eq!(status_of(&head), 200, "{head}");
}

// ---------------------------------------------------------------------------------------------
// Slow clients: the per-address cap and the body pace (docs/security.md 38)
//
// Every test client shares 127.0.0.1 unless it binds another loopback address: Linux routes
// all of 127.0.0.0/8 to `lo`, so a flood can come from 127.0.0.2 and the normal client from
// 127.0.0.3, as two hosts would.
// ---------------------------------------------------------------------------------------------

const FLOOD_IP: [u8; 4] = [127, 0, 0, 2];
const NORMAL_IP: [u8; 4] = [127, 0, 0, 3];

/// A TCP connection to `addr` from the loopback address `ip`.
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET path` on a new connection from `ip`; the status, or `None` if the connection was
/// closed without an answer.
async fn get_from(ip: [u8; 4], addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = connect_from(ip, addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_head(&mut stream, BOUND).await.map(|h| status_of(&h))
}

/// One slow upload from `ip`: the head of a 100,000-byte POST, then one byte every 50 ms
/// until the gateway answers or closes. Returns what the gateway sent.
async fn trickle(ip: [u8; 4], addr: SocketAddr) -> String {
    let Ok(mut stream) = connect_from(ip, addr).await else {
        return String::new();
    };
    let (mut reader, mut writer) = stream.split();
    let head = b"POST /public/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n";
    if writer.write_all(head).await.is_err() {
        return String::new();
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            // Real time, as in a_slow_but_steady_body_is_not_cut_by_body_read_timeout: the
            // body rate is measured on the monotonic clock.
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                if writer.write_all(b"x").await.is_err() {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// `clients` slow uploads from [`FLOOD_IP`], each reconnecting as soon as it is cut off, until
/// the returned flag is set. The counter is how many were cut off with a 408.
fn flood(
    addr: SocketAddr,
    clients: usize,
) -> (Arc<std::sync::atomic::AtomicBool>, Arc<AtomicUsize>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut = Arc::new(AtomicUsize::new(0));
    // How many were cut, for the clients waiting for a slot of the address to free up.
    let (cuts, _) = tokio::sync::watch::channel(0usize);
    for _ in 0..clients {
        let (stop, cut, cuts) = (Arc::clone(&stop), Arc::clone(&cut), cuts.clone());
        let mut freed = cuts.subscribe();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let before = *freed.borrow_and_update();
                let answer = trickle(FLOOD_IP, addr).await;
                if answer.starts_with("HTTP/1.1 408 ") {
                    cut.fetch_add(1, Ordering::SeqCst);
                    cuts.send_modify(|n| *n += 1);
                } else if freed.wait_for(|n| *n > before).await.is_err() {
                    // Closed at accept (the address's cap): retry once one of the address's
                    // connections was cut, rather than spin.
                    return;
                }
            }
        });
    }
    (stop, cut)
}

#[tokio::test]
async fn sec38_one_client_address_holds_at_most_max_connections_per_ip_while_others_are_served() {
    let gw = gateway_with_limits("max_connections: 20, max_connections_per_ip: 5").await;
    // Five connections from one address, each proven served, then held open (keep-alive).
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut stream = connect_from(FLOOD_IP, gw.addr).await.unwrap();
        stream
            .write_all(b"GET /public/held HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut stream, BOUND)
            .await
            .expect("a connection within the cap is served");
        assert_eq!(status_of(&head), 200, "{head}");
        held.push(stream);
    }
    // Fifteen more from that address are closed at accept, without an answer.
    for i in 0..15 {
        let mut stream = connect_from(FLOOD_IP, gw.addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /public/over HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let answer = until_closed(&mut stream, BOUND)
            .await
            .unwrap_or_else(|| panic!("connection {} over the cap was left open", i + 6));
        assert!(answer.is_empty(), "over the cap, yet answered: {answer}");
    }
    // Another address is served at once: 15 of the 20 connection permits are free.
    assert_eq!(
        get_from(NORMAL_IP, gw.addr, "/public/normal").await,
        Some(200)
    );
    assert!(
        gw.upstream
            .requests()
            .iter()
            .all(|r| r.uri != "/public/over"),
        "a request over the cap reached the upstream"
    );
    // A closed connection frees its place.
    drop(held.remove(0));
    let freed = eventually(BOUND, || async {
        get_from(FLOOD_IP, gw.addr, "/public/again").await == Some(200)
    })
    .await;
    assert!(freed.is_some(), "the address never got its place back");
}

#[tokio::test]
async fn sec38_a_normal_client_is_served_while_slow_uploads_from_one_address_flood_the_gateway() {
    // Small figures for a test: twenty connections, eight per address; a body must keep up
    // 1,000 bytes per second after 200 ms of waiting. The flood sends a byte every 50 ms, far
    // inside `body_read_timeout`, which alone would let it hold its connections for ever.
    let gw = gateway_with_limits(
        "max_connections: 20, max_connections_per_ip: 8, body_min_rate: 1000, \
         body_min_rate_grace: 200ms",
    )
    .await;
    let (stop, cut) = flood(gw.addr, 20);
    let cycling = eventually(BOUND, || async { cut.load(Ordering::SeqCst) >= 8 }).await;
    assert!(cycling.is_some(), "the slow uploads were never cut off");

    // While it runs: a request, and an upload of normal speed, from another address.
    assert_eq!(
        get_from(NORMAL_IP, gw.addr, "/public/normal").await,
        Some(200)
    );
    let body = vec![b'n'; 64 * 1024];
    let stream = connect_from(NORMAL_IP, gw.addr).await.unwrap();
    let request = Request::post("/public/upload-normal")
        .header("host", "localhost")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let response = http1_request(stream, request).await;
    assert_eq!(response.status, 200, "{}", response.text());
    stop.store(true, Ordering::SeqCst);
    let seen = gw.upstream.requests();
    assert!(
        seen.iter()
            .any(|r| r.uri == "/public/upload-normal" && r.body == body),
        "the normal upload did not arrive whole"
    );
    assert!(
        seen.iter()
            .filter(|r| r.uri == "/public/upload")
            .all(|r| r.body.len() < 100_000),
        "a slow upload was forwarded whole"
    );
}

#[tokio::test]
async fn sec38_slow_uploads_holding_every_connection_are_cut_by_body_min_rate_and_a_waiting_client_gets_in()
 {
    // No per-address cap: six slow uploads hold all six connections. The seventh client waits
    // in the backlog until the minimum rate frees a connection.
    let gw = gateway_with_limits(
        "max_connections: 6, max_connections_per_ip: 0, body_min_rate: 1000, \
         body_min_rate_grace: 200ms",
    )
    .await;
    let (stop, cut) = flood(gw.addr, 6);
    let cycling = eventually(BOUND, || async { cut.load(Ordering::SeqCst) >= 6 }).await;
    assert!(cycling.is_some(), "the slow uploads were never cut off");
    let status = timeout(BOUND, get_from(NORMAL_IP, gw.addr, "/public/waited"))
        .await
        .expect("the waiting client was never served");
    assert_eq!(status, Some(200));
    stop.store(true, Ordering::SeqCst);
}

#[tokio::test]
async fn a_body_sent_slower_than_body_min_rate_gets_408_and_a_body_past_body_deadline_too() {
    for limits in [
        "body_min_rate: 1000, body_min_rate_grace: 200ms",
        "body_min_rate: 0, body_deadline: 300ms",
    ] {
        let gw = gateway_with_limits(limits).await;
        let answer = timeout(BOUND, trickle(FLOOD_IP, gw.addr))
            .await
            .unwrap_or_else(|_| panic!("with {limits}, a slow upload was never cut"));
        assert!(answer.starts_with("HTTP/1.1 408 "), "{limits}: {answer}");
        assert!(answer.contains("request_timeout"), "{limits}: {answer}");
    }
}

#[tokio::test]
async fn a_request_body_the_client_cuts_short_or_chunks_badly_is_400_and_not_an_upstream_failure() {
    let _counting = UPSTREAM_FAILURES.lock().await;
    let gw = Setup {
        extra: "admin: { bind: 127.0.0.1:0 }".into(),
        ..Setup::default()
    }
    .start()
    .await;
    let before = (
        decisions(&gw, "request.body_incomplete").await,
        decisions(&gw, "upstream.unavailable").await,
    );
    // Content-Length 100, ten bytes, then the client shuts its sending side.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /public/cut HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let answer = until_closed(&mut stream, BOUND).await.expect("left open");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("invalid_request"), "{answer}");
    // A chunk size that is not hexadecimal.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"POST /public/chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut stream, BOUND).await.expect("left open");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");

    let after = (
        decisions(&gw, "request.body_incomplete").await,
        decisions(&gw, "upstream.unavailable").await,
    );
    // The registry is the process's: other tests may add to it, never take away.
    assert!(after.0 >= before.0 + 2.0, "{before:?} → {after:?}");
    assert_eq!(after.1, before.1, "counted as an upstream failure");
}

/// Held by the tests that count `upstream.unavailable` refusals or cause them.
static UPSTREAM_FAILURES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `portcullis_auth_decisions_total{reason="…"}` from the gateway's `/metrics` (0 if absent).
async fn decisions(gw: &TestGateway, reason: &str) -> f64 {
    let admin = gw.running.admin_addr().expect("an admin listener");
    let text = send(get(admin, "/metrics")).await.text();
    let prefix = format!("portcullis_auth_decisions_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.parse().unwrap())
}

// ---------------------------------------------------------------------------------------------
// Shutdown and pooling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish_and_then_refuses_connections() {
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(4);
    // The slow answer is held until the drain has begun, so it is in flight during it.
    let (release, released) = tokio::sync::watch::channel(false);
    let upstream = CustomUpstream::start(move |req| {
        let arrived = arrived_tx.clone();
        let mut released = released.clone();
        async move {
            if req.uri().path() == "/idle" {
                return ok("idle");
            }
            let _ = arrived.send(()).await;
            let _ = released.wait_for(|r| *r).await;
            ok("slow answer")
        }
    })
    .await;
    // The grace period is longer than the bound below: a drain that waited on idle
    // connections would fail the test rather than pass late.
    let (running, addr) =
        public_gateway(&upstream.url(), "", "limits: { shutdown_grace: 30s }").await;

    // Idle connections, HTTP/1.1 keep-alive and HTTP/2, must not hold up the drain.
    let mut idle_h1 = TcpStream::connect(addr).await.unwrap();
    idle_h1
        .write_all(b"GET /idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    read_head(&mut idle_h1, BOUND)
        .await
        .expect("no answer on the keep-alive connection");
    let h2_tcp = TcpStream::connect(addr).await.unwrap();
    let (mut idle_h2, h2_conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2_tcp))
            .await
            .unwrap();
    tokio::spawn(h2_conn);
    let response = timeout(BOUND, idle_h2.send_request(get(addr, "/idle")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);

    let in_flight = tokio::spawn(send(get(addr, "/slow")));
    timeout(BOUND, arrived_rx.recv())
        .await
        .expect("the request never reached the upstream");

    let release_once_draining = async {
        let closed = eventually(BOUND, || async { TcpStream::connect(addr).await.is_err() }).await;
        assert!(closed.is_some(), "the listener stayed open during shutdown");
        release.send_replace(true);
    };
    let (drained, ()) = tokio::join!(timeout(BOUND, running.shutdown()), release_once_draining);
    let drained = drained.expect("shutdown hung");
    let response = timeout(BOUND, in_flight)
        .await
        .expect("in-flight request hung")
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "slow answer");
    assert!(drained, "shutdown reported connections still open");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after shutdown"
    );
    assert!(
        closed_within(&mut idle_h1, BOUND).await,
        "the idle keep-alive connection was left open"
    );
}

#[tokio::test]
async fn sequential_requests_reuse_one_pooled_upstream_connection() {
    let upstream = CustomUpstream::start(|_req| async { ok("pooled") }).await;
    let (running, addr) = public_gateway(&upstream.url(), "", "").await;
    for _ in 0..3 {
        let response = send(get(addr, "/pooled")).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "pooled");
    }
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    assert!(running.shutdown().await);
}

// ---------------------------------------------------------------------------------------------
// The built-in echo upstream
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_builtin_echo_upstream_answers_with_method_path_and_headers_as_json() {
    let routes = format!(
        "{DEFAULT_ROUTES}  - {{ id: builtin, path: /builtin, upstream: builtin, policy: public }}\n  \
         - {{ id: builtin-auth, path: /whoami, upstream: builtin, policy: authenticated }}\n"
    );
    let gw = Setup {
        routes,
        ..Setup::default()
    }
    .start()
    .await;
    let response = gw
        .send(
            Request::post(gw.url("/builtin/hello?x=1"))
                .header("x-custom", "yes")
                .header("x-auth-subject", "mallory")
                .body(Full::new(Bytes::from_static(&[7u8; 100])))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.headers["content-type"], "application/json");
    let report = response.json();
    assert_eq!(report["method"], "POST");
    assert_eq!(report["path"], "/builtin/hello");
    assert_eq!(report["query"], "x=1");
    assert_eq!(report["body_bytes"], 100);
    assert_eq!(report["headers"]["x-custom"], json!(["yes"]));
    assert_eq!(report["headers"]["x-forwarded-proto"], json!(["http"]));
    assert!(
        report["headers"].get("x-auth-subject").is_none(),
        "{report}"
    );
    assert_eq!(
        gw.upstream.count(),
        0,
        "the built-in echo must not reach the real upstream"
    );

    let token = gw.token(json!({}));
    let response = gw.get_bearer("/whoami", &token).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let report = response.json();
    assert_eq!(report["method"], "GET");
    assert_eq!(report["headers"]["x-auth-subject"], json!(["alice"]));
    assert_eq!(report["headers"]["x-auth-session"], json!(["sid-alice"]));
    assert!(report["headers"].get("authorization").is_none(), "{report}");
}
