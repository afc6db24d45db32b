//! Black-box tests of the edge of the gateway: W3C trace context (which `traceparent` the
//! upstream sees, from trusted and untrusted peers) and the limits of the admin listener
//! (served by the same accept loop as the proxy listeners).

use crate::common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything that should happen "at once" on a loaded CI machine.
const BOUND: Duration = Duration::from_secs(10);

/// Linux routes all of 127.0.0.0/8 to `lo`: the trusted proxy connects from 127.0.0.2 and a
/// client from 127.0.0.3, as two hosts would.
const PROXY_IP: [u8; 4] = [127, 0, 0, 2];
const CLIENT_IP: [u8; 4] = [127, 0, 0, 3];

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_PARENT: &str = "00f067aa0ba902b7";
const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((ip, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

fn status_of(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response head: {head:?}"))
}

/// A gateway whose only trusted proxy is [`PROXY_IP`].
async fn gateway_behind_a_proxy() -> TestGateway {
    Setup {
        extra: "trusted_proxies: [127.0.0.2/32]".into(),
        ..Setup::default()
    }
    .start()
    .await
}

/// `GET /public/trace` from `ip` with the extra header lines `headers`; the response head.
async fn get_from(gw: &TestGateway, ip: [u8; 4], headers: &str) -> String {
    let mut stream = connect_from(ip, gw.addr).await;
    let request = format!("GET /public/trace HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut stream, BOUND)
        .await
        .expect("the gateway did not answer")
}

/// The `traceparent`s and `tracestate`s the upstream saw on its latest request.
fn seen_by_upstream(gw: &TestGateway) -> (Vec<String>, Vec<String>) {
    let seen = gw.upstream.last();
    let all = |name: &str| -> Vec<String> {
        seen.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    };
    (all("traceparent"), all("tracestate"))
}

/// `(version, trace-id, parent-id, flags)` of a `traceparent` the gateway sent.
fn fields(value: &str) -> (&str, &str, &str, &str) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(value.len(), 55, "{value}");
    (parts[0], parts[1], parts[2], parts[3])
}

#[tokio::test]
async fn a_trusted_peers_trace_id_reaches_the_upstream_with_a_new_parent_id() {
    let gw = gateway_behind_a_proxy().await;
    let head = get_from(
        &gw,
        PROXY_IP,
        &format!("traceparent: {CALLER}\r\ntracestate: congo=t61rcWkgMzE\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let (parents, states) = seen_by_upstream(&gw);
    assert_eq!(parents.len(), 1, "{parents:?}");
    let (version, trace, parent, flags) = fields(&parents[0]);
    assert_eq!(version, "00");
    assert_eq!(trace, CALLER_TRACE);
    assert_ne!(parent, CALLER_PARENT, "the gateway is a span of its own");
    assert_ne!(parent, "0000000000000000");
    assert_eq!(flags, "01", "the caller's sampled flag is kept");
    assert_eq!(states, ["congo=t61rcWkgMzE"]);
}

#[tokio::test]
async fn an_untrusted_peers_traceparent_is_replaced_and_its_tracestate_dropped() {
    let gw = gateway_behind_a_proxy().await;
    let head = get_from(
        &gw,
        CLIENT_IP,
        &format!("traceparent: {CALLER}\r\ntracestate: congo=t61rcWkgMzE\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let (parents, states) = seen_by_upstream(&gw);
    assert_eq!(parents.len(), 1, "{parents:?}");
    let (version, trace, parent, flags) = fields(&parents[0]);
    assert_eq!(version, "00");
    assert_ne!(trace, CALLER_TRACE);
    assert_ne!(trace, "00000000000000000000000000000000");
    assert_ne!(parent, CALLER_PARENT);
    assert_eq!(
        flags, "00",
        "a client cannot ask for its request to be sampled"
    );
    assert!(states.is_empty(), "{states:?}");
}

#[tokio::test]
async fn a_malformed_traceparent_from_a_trusted_peer_is_replaced() {
    let gw = gateway_behind_a_proxy().await;
    for malformed in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "garbage",
    ] {
        let head = get_from(
            &gw,
            PROXY_IP,
            &format!("traceparent: {malformed}\r\ntracestate: congo=t61rcWkgMzE\r\n"),
        )
        .await;
        assert_eq!(status_of(&head), 200, "{head}");
        let (parents, states) = seen_by_upstream(&gw);
        assert_eq!(parents.len(), 1, "{malformed}: {parents:?}");
        let (_, trace, _, flags) = fields(&parents[0]);
        assert_ne!(trace, CALLER_TRACE, "{malformed}");
        assert_eq!(flags, "00", "{malformed}");
        assert!(states.is_empty(), "{malformed}: {states:?}");
    }
}

#[tokio::test]
async fn the_upstream_sees_exactly_one_traceparent() {
    let gw = gateway_behind_a_proxy().await;
    // Two from the trusted proxy: neither is continued, one new one is sent.
    get_from(
        &gw,
        PROXY_IP,
        &format!("traceparent: {CALLER}\r\nTraceParent: {CALLER}\r\n"),
    )
    .await;
    let (parents, _) = seen_by_upstream(&gw);
    assert_eq!(parents.len(), 1, "{parents:?}");
    assert_ne!(fields(&parents[0]).1, CALLER_TRACE);
    // None at all: one is generated.
    get_from(&gw, CLIENT_IP, "").await;
    let (parents, _) = seen_by_upstream(&gw);
    assert_eq!(parents.len(), 1, "{parents:?}");
    // Over HTTP/2 too, where a client may send the header as often as it likes.
    let response = send(
        http::Request::get(gw.url("/public/trace"))
            .header("traceparent", CALLER)
            .header("traceparent", CALLER)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(response.status, 200);
    let (parents, _) = seen_by_upstream(&gw);
    assert_eq!(parents.len(), 1, "{parents:?}");
}

/// Every line the gateway logs, in the text format, from the first test that asks on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one subscriber per test binary");
        logs
    }))
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_trace_id_is_logged_with_the_request_id() {
    let logs = captured_logs();
    let gw = gateway_behind_a_proxy().await;
    // Forwarded: the per-request lines carry both ids (the request's span).
    let head = get_from(
        &gw,
        PROXY_IP,
        &format!("traceparent: {CALLER}\r\nx-request-id: rid-forwarded-1\r\n"),
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    // Refused: the refusal line names both.
    let mut stream = connect_from(PROXY_IP, gw.addr).await;
    stream
        .write_all(
            format!(
                "GET /api/x HTTP/1.1\r\nHost: localhost\r\ntraceparent: {CALLER}\r\n\
                 x-request-id: rid-refused-1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut answer)).await;
    assert!(answer.starts_with(b"HTTP/1.1 401 "));
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let line_with = |needles: &[&str]| {
        text.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no line with {needles:?} in:\n{text}"))
            .to_owned()
    };
    let forwarded = line_with(&["forwarded", "request_id=\"rid-forwarded-1\""]);
    assert!(
        forwarded.contains(&format!("trace_id=\"{CALLER_TRACE}\"")),
        "{forwarded}"
    );
    let refused = line_with(&["request refused", "rid-refused-1"]);
    assert!(
        refused.contains(&format!("trace_id=\"{CALLER_TRACE}\"")),
        "{refused}"
    );
}

// ---------------------------------------------------------------------------------------------
// The admin listener: one accept loop with limits for every listener
// ---------------------------------------------------------------------------------------------

/// A gateway with an admin listener and `limits: { <limits> }`; the admin address.
async fn gateway_with_admin(limits: &str) -> (TestGateway, SocketAddr) {
    let gw = Setup {
        extra: format!("limits: {{ {limits} }}\nadmin: {{ bind: 127.0.0.1:0 }}"),
        ..Setup::default()
    }
    .start()
    .await;
    let admin = gw.running.admin_addr().expect("an admin listener");
    (gw, admin)
}

/// Everything the server sent until it closed the connection, or `None` if it was still open
/// after `within`. A reset ends the connection as well as a close does.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// A new connection to `addr` from `ip`, proven served by one `/healthz` (the proxy answers
/// it too, with a 200 from the `root` route), and left open (keep-alive).
async fn served(ip: [u8; 4], addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(ip, addr).await;
    stream.write_all(HEALTHZ).await.unwrap();
    let head = read_head(&mut stream, BOUND)
        .await
        .expect("a connection within the limits is served");
    assert_eq!(status_of(&head), 200, "{head}");
    stream
}

#[tokio::test]
async fn a_slowloris_connection_on_the_admin_port_is_closed_after_the_header_timeout() {
    let (_gw, admin) = gateway_with_admin("header_read_timeout: 500ms").await;
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let text = until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("the half-sent head was still held open after 5s");
    assert!(!text.contains(" 200 "), "{text}");
    // And a connection that sends nothing at all.
    let mut silent = TcpStream::connect(admin).await.unwrap();
    assert!(
        until_closed(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection was still open after 5s"
    );
}

#[tokio::test]
async fn the_admin_ports_connection_limit_holds_a_third_connection_until_one_of_two_closes() {
    let (_gw, admin) = gateway_with_admin("max_connections: 2").await;
    let mut held = vec![
        served(CLIENT_IP, admin).await,
        served(PROXY_IP, admin).await,
    ];
    let mut third = connect_from([127, 0, 0, 4], admin).await;
    third.write_all(HEALTHZ).await.unwrap();
    assert!(
        read_head(&mut third, Duration::from_millis(500))
            .await
            .is_none(),
        "a third admin connection was served while two were open"
    );
    drop(held.remove(0));
    let head = read_head(&mut third, BOUND)
        .await
        .expect("the third connection was never served");
    assert_eq!(status_of(&head), 200, "{head}");
}

#[tokio::test]
async fn the_admin_port_closes_one_connection_too_many_from_one_address() {
    let (_gw, admin) = gateway_with_admin("max_connections_per_ip: 1").await;
    let _held = served(CLIENT_IP, admin).await;
    let mut second = connect_from(CLIENT_IP, admin).await;
    let _ = second.write_all(HEALTHZ).await;
    let text = until_closed(&mut second, BOUND)
        .await
        .expect("a second connection from the address was held open");
    assert!(text.is_empty(), "closed at accept, unanswered: {text}");
    // Another address is served.
    let _other = served(PROXY_IP, admin).await;
}

#[tokio::test]
async fn health_probes_are_answered_while_the_proxy_port_is_full() {
    let (gw, admin) = gateway_with_admin("max_connections: 2").await;
    let _proxy_full = [
        served(CLIENT_IP, gw.addr).await,
        served(PROXY_IP, gw.addr).await,
    ];
    // Two more on the admin port: with one pool of permits for both, these would wait.
    let _probes = [
        served(CLIENT_IP, admin).await,
        served(PROXY_IP, admin).await,
    ];
}
