//! The HTTP/1 head handling before routing: any bytes, as a client's side of a connection, go
//! through hyper's HTTP/1 server (the gateway's header limits) into `proxy::handle` with
//! the fixed config of `fuzz/fixtures/verifier.yaml`. That covers framing checks
//! (`check_framing`), `Host` handling (`request_host`), `X-Request-Id` parsing, path
//! normalization and routing, credential and token checks, on the real request type.
//!
//! Properties: nothing panics; every route is protected and verification runs at the real
//! clock, so no response is a success (2xx) or a switch of protocols (101) unless the input
//! carries a token the fixed keys signed; and every `x-request-id` the gateway answers with
//! is 1–128 of `[A-Za-z0-9._:-]` (a client-chosen one is echoed only in that shape).

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use portcullis::Gateway;
use portcullis::audit::Audit;
use portcullis::clock::Clock;
use portcullis::pipeline::{self, Connection};
use portcullis::proxy;
use portcullis::store::{MemoryStore, Store};
use portcullis_fuzz::{EXPIRED_TOKENS, VALID_TOKENS, verifier_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Inside the runtime: the memory store starts its sweeper task there. `Gateway::new` reads
    // the system clock, as the store's does.
    let store = {
        let _entered = rt.enter();
        Store::Memory(MemoryStore::new(Clock::system()))
    };
    let audit = Audit::new(None, None).unwrap();
    let gateway = Gateway::new(verifier_config().runtime, store, audit);
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let conn = Connection {
        peer: SocketAddr::new(ip, 40000),
        peer_header: pipeline::peer_header(ip),
        tls: false,
        hsts: None,
    };
    // Asserted unwind-safe: a panic aborts the process (afl), nothing observes the state after.
    let state = AssertUnwindSafe((rt, conn, gateway));
    afl::fuzz!(|data: &[u8]| {
        let (rt, conn, gateway) = &*state;
        let response = rt.block_on(exchange(data, conn, gateway));
        check(data, &response);
    });
}

/// Writes `data` as the client, half-closes, and returns every byte the gateway answered.
async fn exchange(data: &[u8], conn: &Connection, gateway: &Gateway) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let service = service_fn(|request| async move {
        Ok::<_, Infallible>(proxy::handle(request, conn, gateway).await)
    });
    let serve = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .max_buf_size(16 * 1024)
        .max_headers(100)
        .serve_connection(TokioIo::new(server), service)
        .with_upgrades();
    let talk = async {
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        answer
    };
    let (_, answer) = tokio::join!(serve, talk);
    answer
}

fn check(data: &[u8], response: &[u8]) {
    let carries_signed_token = VALID_TOKENS
        .iter()
        .chain(EXPIRED_TOKENS)
        .any(|t| data.windows(t.len()).any(|w| w == t.as_bytes()));
    for line in response.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.starts_with(b"HTTP/1.") && line.len() >= 12 {
            let status = &line[9..12];
            assert!(
                carries_signed_token || !(status.starts_with(b"2") || status == b"101"),
                "status {} without a signed token:\n{}",
                String::from_utf8_lossy(status),
                String::from_utf8_lossy(data)
            );
        }
        if line.len() >= 14 && line[..14].eq_ignore_ascii_case(b"x-request-id: ") {
            let id = &line[14..];
            assert!(
                (1..=128).contains(&id.len())
                    && id.iter().all(
                        |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                    ),
                "x-request-id {:?}",
                String::from_utf8_lossy(id)
            );
        }
    }
}
