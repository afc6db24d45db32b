//! Listeners: accept, limit, terminate TLS, speak HTTP/1.1 and HTTP/2, drain on shutdown.
//!
//! One accept loop ([`accept_loop`]) serves every listener, the proxy's and the admin one; what
//! a listener answers with is its [`Handler`] (the request pipeline, or the admin endpoints),
//! and everything below applies to both. The proxy listeners share `limits:`; the admin
//! listener has [`admin_limits`]: the proxy's, never looser than fixed caps, and with permits
//! and an address table of its own, so a flood on one port cannot take the other's connections
//! (health probes are answered while the proxy is full).
//!
//! Concurrency and state, and why:
//! - One accept loop per listener. Before accepting, a loop takes a permit from a semaphore
//!   shared by the listeners of one set of limits ([`Limits`]); the permit lives as long as the
//!   connection, so at most `max_connections` connections are open and excess clients wait in
//!   the kernel's backlog instead of costing memory here.
//! - Before serving, a connection also takes a slot of its client address in a table shared by
//!   the same listeners (a `std` mutex around a map: held for one lookup at accept and one at
//!   close, never across an await). At most `limits.max_connections_per_ip` connections per address
//!   (an IPv6 /64 counts as one address); one more is closed at accept, before a byte is read,
//!   so one client cannot hold every connection permit. Peers in `trusted_proxies` carry many
//!   clients and are not capped. The slot, like the permit, lives as long as the connection.
//! - Each connection is a task. The TLS handshake and the request head each have
//!   `limits.header_read_timeout` to arrive (slowloris); HTTP/2 streams per connection and
//!   header sizes are bounded too. hyper bounds an HTTP/1 head once it has started, but not the
//!   wait before it: the protocol sniff (a possible HTTP/2 preface) and an HTTP/2 connection
//!   that never opens a stream. So the first request must also arrive within that time, or the
//!   connection is dropped; otherwise silent sockets would hold every connection permit.
//! - Shutdown is a `watch` channel: accept loops stop, and every connection is told to finish
//!   its in-flight requests and close. Each connection task holds a clone of an `mpsc::Sender`
//!   that it never sends on; when the last one is dropped the receiver sees the channel close,
//!   which is how [`Running::shutdown`] knows the drain is complete (as in mini-redis).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::Gateway;
use crate::body::GatewayBody;
use crate::config::{ListenerSpec, ServerLimits};
use crate::pipeline::{self, Connection};

/// What a listener answers requests with. Called once per request, on the connection's task.
pub trait Handler: Send + Sync + 'static {
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;

    /// Answers one request; never fails (a refusal is a response).
    fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: Arc<Connection>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;
}

/// The proxy listeners' handler: the request pipeline.
struct Proxy(Arc<Gateway>);

impl Handler for Proxy {
    type Body = GatewayBody;

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: Arc<Connection>,
    ) -> Response<GatewayBody> {
        crate::proxy::handle(request, &conn, &self.0).await
    }
}

/// The admin listener's limits: the proxy's `limits:` (the operator tuned their timeouts to
/// the network), but never looser than caps sized for a handful of probes, scrapers and
/// operators. A hard cap rather than the proxy's figures alone, because a proxy tuned for ten
/// thousand connections says nothing about what a management port needs.
pub fn admin_limits(proxy: &ServerLimits) -> ServerLimits {
    /// Connections; a per-address cap of a quarter of them, so one host cannot take them all.
    const MAX_CONNECTIONS: usize = 64;
    const MAX_PER_IP: usize = MAX_CONNECTIONS / 4;
    ServerLimits {
        max_header_bytes: proxy.max_header_bytes.min(16 * 1024),
        max_headers: proxy.max_headers.min(64),
        max_connections: proxy.max_connections.min(MAX_CONNECTIONS),
        // 0 turns the proxy's cap off (clients behind a NAT); the admin port keeps one.
        max_connections_per_ip: match proxy.max_connections_per_ip {
            0 => MAX_PER_IP,
            n => n.min(MAX_PER_IP),
        },
        header_read_timeout: proxy.header_read_timeout.min(Duration::from_secs(5)),
        idle_timeout: proxy.idle_timeout.min(Duration::from_secs(30)),
        h2_max_concurrent_streams: proxy.h2_max_concurrent_streams.min(16),
        shutdown_grace: proxy.shutdown_grace,
    }
}

/// One set of connection limits and the state that enforces them, shared by the listeners
/// that draw on it.
#[derive(Debug)]
struct Limits {
    settings: ServerLimits,
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    builder: Arc<auto::Builder<TokioExecutor>>,
}

impl Limits {
    fn new(settings: &ServerLimits) -> Self {
        Self {
            settings: settings.clone(),
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            per_ip: Arc::new(PerIp::new(settings.max_connections_per_ip)),
            builder: Arc::new(http_builder(settings)),
        }
    }

    /// Connections open now. Exact once the accept loops have stopped.
    fn open(&self) -> usize {
        self.settings
            .max_connections
            .saturating_sub(self.permits.available_permits())
    }
}

/// Listeners that are running, and the means to stop them.
#[derive(Debug)]
pub struct Running {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    /// Connection tasks each hold a clone; dropped at shutdown, so that `drained` can close.
    drain: Option<mpsc::Sender<()>>,
    accept_loops: Vec<JoinHandle<()>>,
    grace: std::time::Duration,
    /// The proxy listeners' `limits:`, from which the admin listener's are derived.
    proxy_limits: ServerLimits,
    /// Every set of limits in use, to tell at the end of the grace period how many connections
    /// are still open.
    limits: Vec<Arc<Limits>>,
}

impl Running {
    /// The bound addresses, in the order of `listeners:` (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The admin listener's address, when one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Records the admin listener's address.
    pub fn set_admin_addr(&mut self, addr: SocketAddr) {
        self.admin = Some(addr);
    }

    /// Serves `listener` (plain HTTP) with `handler` under [`admin_limits`], through the same
    /// accept loop as the proxy listeners; it stops and drains with them.
    pub fn serve_admin<H: Handler>(&mut self, listener: TcpListener, handler: H) {
        let limits = Arc::new(Limits::new(&admin_limits(&self.proxy_limits)));
        self.serve(listener, None, None, &limits, Arc::new(handler));
        self.limits.push(limits);
    }

    fn serve<H: Handler>(
        &mut self,
        listener: TcpListener,
        tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
        hsts: Option<http::HeaderValue>,
        limits: &Arc<Limits>,
        handler: Arc<H>,
    ) {
        let Some(drain) = &self.drain else {
            // Shutdown has begun: nothing new is served.
            return;
        };
        let ctx = AcceptContext {
            tls,
            hsts,
            limits: Arc::clone(limits),
            gateway: Arc::clone(&self.gateway),
            handler,
            shutdown: self.shutdown.subscribe(),
            drain: drain.clone(),
        };
        self.accept_loops
            .push(tokio::spawn(accept_loop(listener, ctx)));
    }

    /// A receiver that turns `true` when shutdown begins, for background tasks.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The shared gateway state (runtime and store).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Stops accepting, lets in-flight requests finish for up to the configured grace period,
    /// then returns. Returns whether every connection drained in time; when not, the
    /// connections still open are logged (they are cut when the runtime stops).
    pub async fn shutdown(mut self) -> bool {
        self.shutdown.send_replace(true);
        for task in self.accept_loops.drain(..) {
            let _ = task.await;
        }
        drop(self.drain.take());
        // `recv` returns `None` once every connection task has dropped its sender.
        let drained = tokio::time::timeout(self.grace, self.drained.recv())
            .await
            .is_ok();
        if !drained {
            // The accept loops have stopped, so every permit not available is an open connection.
            let open: usize = self.limits.iter().map(|l| l.open()).sum();
            tracing::error!(
                connections = open,
                grace_ms = self.grace.as_millis() as u64,
                "shutdown grace period ended with connections still open: cutting them"
            );
        }
        // Counts of refusals still being aggregated are written now, not lost; `flush` waits
        // for the file writer, so off the runtime's threads.
        let audit = self.gateway.audit().clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush()).await;
        drained
    }
}

/// Binds every listener and starts serving.
pub async fn start(
    listeners: &[ListenerSpec],
    limits: &ServerLimits,
    gateway: Arc<Gateway>,
) -> io::Result<Running> {
    let (shutdown, _) = watch::channel(false);
    let (drain_tx, drained) = mpsc::channel::<()>(1);
    let shared = Arc::new(Limits::new(limits));
    let mut addrs = Vec::with_capacity(listeners.len());
    let mut bound = Vec::with_capacity(listeners.len());
    for spec in listeners {
        let listener = TcpListener::bind(spec.bind).await?;
        addrs.push(listener.local_addr()?);
        bound.push((listener, spec.clone()));
    }
    let mut running = Running {
        addrs,
        admin: None,
        gateway: Arc::clone(&gateway),
        shutdown,
        drained,
        drain: Some(drain_tx),
        accept_loops: Vec::with_capacity(bound.len() + 1),
        grace: limits.shutdown_grace,
        proxy_limits: limits.clone(),
        limits: vec![Arc::clone(&shared)],
    };
    let proxy = Arc::new(Proxy(Arc::clone(&gateway)));
    for (i, (listener, spec)) in bound.into_iter().enumerate() {
        // The gateway holds each listener's certificate so a reload can swap it; a gateway
        // built without listeners (tests) falls back to the spec's.
        let tls = gateway.listener_tls(i).or_else(|| {
            spec.tls
                .as_ref()
                .map(|c| Arc::new(arc_swap::ArcSwap::new(Arc::clone(c))))
        });
        running.serve(listener, tls, spec.hsts, &shared, Arc::clone(&proxy));
    }
    Ok(running)
}

fn http_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        // A client that shuts down its sending side mid-body still reads its 400: without
        // this, hyper closes the connection on that EOF and the client learns nothing.
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256));
    builder
}

struct AcceptContext<H> {
    /// The listener's current TLS config; read at every accept, so a swapped certificate is
    /// used by the next connection.
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    /// `Strict-Transport-Security` for the listener's responses.
    hsts: Option<http::HeaderValue>,
    limits: Arc<Limits>,
    /// For `trusted_proxies`, read at every accept so a reload applies to the next connection.
    gateway: Arc<Gateway>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
}

/// Open connections by client address: the `limits.max_connections_per_ip` cap.
#[derive(Debug)]
struct PerIp {
    /// 0: no cap (and no bookkeeping).
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` open already.
    /// Without a cap, an empty slot that counts nothing.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        if self.limit == 0 {
            return Some(IpSlot(None));
        }
        let key = crate::net::client_network(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((Arc::clone(self), key))))
    }
}

/// One connection's place in [`PerIp`]; dropping it frees the place.
struct IpSlot(Option<(Arc<PerIp>, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((table, key)) = self.0.take() {
            let mut open = table.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    // Only addresses with open connections are kept: the map stays as small as
                    // the number of connections.
                    open.remove(&key);
                }
            }
        }
    }
}

async fn accept_loop<H: Handler>(listener: TcpListener, mut ctx: AcceptContext<H>) {
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&ctx.limits.permits).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = ctx.shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.shutdown.changed() => return,
        };
        // Trusted proxies speak for many clients; everyone else is capped per address.
        let trusted = ctx.gateway.runtime().mutate.is_trusted(peer.ip());
        let slot = if trusted {
            IpSlot(None)
        } else {
            match ctx.limits.per_ip.acquire(peer.ip()) {
                Some(slot) => slot,
                None => {
                    // Closed before a byte is read; the permit goes back with `permit`.
                    ctx.gateway
                        .metrics()
                        .connections_refused_per_ip
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(client.ip = %peer.ip(), "max_connections_per_ip reached: connection closed");
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let tls = ctx
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        let conn = Connection {
            peer,
            peer_header: pipeline::peer_header(peer.ip()),
            tls: tls.is_some(),
            hsts: ctx.hsts.clone(),
        };
        let task = ConnectionTask {
            handler: Arc::clone(&ctx.handler),
            builder: Arc::clone(&ctx.limits.builder),
            shutdown: ctx.shutdown.clone(),
            first_request_timeout: ctx.limits.settings.header_read_timeout,
            idle_timeout: ctx.limits.settings.idle_timeout,
            _drain: ctx.drain.clone(),
            _slot: slot,
            _permit: permit,
        };
        let handshake_timeout = ctx.limits.settings.header_read_timeout;
        tokio::spawn(async move {
            match tls {
                None => task.serve(stream, conn).await,
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => task.serve(tls_stream, conn).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client.ip = %peer.ip(), error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(client.ip = %peer.ip(), "TLS handshake timed out")
                        }
                    }
                }
            }
        });
    }
}

/// One client connection. Dropping it releases its connection permit and its drain sender.
struct ConnectionTask<H> {
    handler: Arc<H>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    /// Time from the start of serving until the first request head has been read.
    first_request_timeout: std::time::Duration,
    /// Time without a new request after which the connection is wound down gracefully.
    idle_timeout: std::time::Duration,
    _drain: mpsc::Sender<()>,
    _slot: IpSlot,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<H: Handler> ConnectionTask<H> {
    async fn serve<S>(mut self, stream: S, conn: Connection)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handler = Arc::clone(&self.handler);
        let conn = Arc::new(conn);
        let peer = conn.peer;
        // When the latest request arrived, in milliseconds since `opened` (0: none yet). A
        // request only stores a number: the quiet timer below reads it when it fires, so a
        // busy connection costs no wake-up and no timer re-arm per request.
        let opened = tokio::time::Instant::now();
        let last_request = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = Arc::clone(&last_request);
        let service = service_fn(move |request| {
            let since = opened.elapsed().as_millis() as u64;
            seen.store(since.max(1), std::sync::atomic::Ordering::Relaxed);
            let response = Arc::clone(&handler).handle(request, Arc::clone(&conn));
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(connection);
        // Resolves when the connection has gone quiet: no first request within
        // `first_request_timeout` (→ `false`), or no new request for `idle_timeout` after
        // that (→ `true`). hyper bounds an HTTP/1 keep-alive wait itself, but an HTTP/2
        // connection with no open stream would otherwise hold its permit forever.
        let quiet = async {
            let first_deadline = opened + self.first_request_timeout;
            // Wake at least every `idle_timeout`: a first request is only seen when we look.
            let mut deadline = first_deadline.min(opened + self.idle_timeout);
            loop {
                tokio::time::sleep_until(deadline).await;
                let last = last_request.load(std::sync::atomic::Ordering::Relaxed);
                if last == 0 {
                    let now = tokio::time::Instant::now();
                    if now >= first_deadline {
                        return false;
                    }
                    deadline = first_deadline.min(now + self.idle_timeout);
                    continue;
                }
                let idle_until =
                    opened + std::time::Duration::from_millis(last) + self.idle_timeout;
                if idle_until <= tokio::time::Instant::now() {
                    return true;
                }
                deadline = idle_until;
            }
        };
        let result = tokio::select! {
            result = connection.as_mut() => result,
            served = quiet => {
                if !served {
                    // Dropping the connection closes the socket and releases the permit.
                    tracing::debug!(client.ip = %peer.ip(), "no request within header_read_timeout");
                    return;
                }
                // GOAWAY / close after the current response: streams in flight (a long
                // download, say) still finish.
                tracing::debug!(client.ip = %peer.ip(), "idle connection closed");
                connection.as_mut().graceful_shutdown();
                connection.await
            }
            _ = self.shutdown.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client.ip = %peer.ip(), error = %e, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_limit_slots_and_a_dropped_slot_is_free_again() {
        let table = Arc::new(PerIp::new(2));
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "203.0.113.8".parse().unwrap();
        let first = table.acquire(a).unwrap();
        let _second = table.acquire(a).unwrap();
        assert!(table.acquire(a).is_none());
        let _other = table.acquire(b).unwrap();
        drop(first);
        let _again = table.acquire(a).unwrap();
        assert!(table.acquire(a).is_none());
    }

    #[test]
    fn closed_connections_leave_nothing_in_the_table() {
        let table = Arc::new(PerIp::new(8));
        let slots: Vec<IpSlot> = (1..=50u8)
            .map(|i| table.acquire(IpAddr::from([198, 51, 100, i])).unwrap())
            .collect();
        assert_eq!(table.open.lock().unwrap().len(), 50);
        drop(slots);
        assert!(table.open.lock().unwrap().is_empty());
    }

    #[test]
    fn two_addresses_of_one_ipv6_64_share_one_cap() {
        let table = Arc::new(PerIp::new(1));
        let _held = table.acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(table.acquire("2001:db8::2".parse().unwrap()).is_none());
        assert!(table.acquire("2001:db8:0:1::1".parse().unwrap()).is_some());
    }

    fn proxy_limits(max_connections: usize, per_ip: usize, header_read_ms: u64) -> ServerLimits {
        ServerLimits {
            max_header_bytes: 1 << 20,
            max_headers: 500,
            max_connections,
            max_connections_per_ip: per_ip,
            header_read_timeout: Duration::from_millis(header_read_ms),
            idle_timeout: Duration::from_secs(3600),
            h2_max_concurrent_streams: 1000,
            shutdown_grace: Duration::from_secs(7),
        }
    }

    #[test]
    fn the_admin_listener_never_gets_looser_limits_than_its_caps() {
        let admin = admin_limits(&proxy_limits(10_000, 0, 60_000));
        assert_eq!(admin.max_connections, 64);
        assert_eq!(
            admin.max_connections_per_ip, 16,
            "a proxy without a cap still gets one"
        );
        assert_eq!(admin.header_read_timeout, Duration::from_secs(5));
        assert_eq!(admin.idle_timeout, Duration::from_secs(30));
        assert_eq!(admin.max_header_bytes, 16 * 1024);
        assert_eq!(admin.max_headers, 64);
        assert_eq!(admin.h2_max_concurrent_streams, 16);
        assert_eq!(admin.shutdown_grace, Duration::from_secs(7));
    }

    #[test]
    fn the_admin_listener_keeps_the_proxys_limits_when_they_are_tighter() {
        let admin = admin_limits(&proxy_limits(2, 1, 500));
        assert_eq!(admin.max_connections, 2);
        assert_eq!(admin.max_connections_per_ip, 1);
        assert_eq!(admin.header_read_timeout, Duration::from_millis(500));
    }

    #[test]
    fn without_a_cap_nothing_is_counted() {
        let table = Arc::new(PerIp::new(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let _slots: Vec<IpSlot> = (0..1000).map(|_| table.acquire(ip).unwrap()).collect();
        assert!(table.open.lock().unwrap().is_empty());
    }
}
