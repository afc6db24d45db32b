//! Listeners: accept, limit, terminate TLS, speak HTTP/1.1 and HTTP/2, drain on shutdown.
//!
//! Concurrency and state, and why:
//! - One accept loop per listener. Before accepting, a loop takes a permit from a semaphore
//!   shared by all listeners; the permit lives as long as the connection, so at most
//!   `limits.max_connections` connections are open and excess clients wait in the kernel's
//!   backlog instead of costing memory here.
//! - Before serving, a connection also takes a slot of its client address in a table shared by
//!   all listeners (a `std` mutex around a map: held for one lookup at accept and one at close,
//!   never across an await). At most `limits.max_connections_per_ip` connections per address
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

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::Gateway;
use crate::config::{ListenerSpec, ServerLimits};
use crate::pipeline::{self, Connection};

/// Listeners that are running, and the means to stop them.
#[derive(Debug)]
pub struct Running {
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    drained: mpsc::Receiver<()>,
    accept_loops: Vec<JoinHandle<()>>,
    grace: std::time::Duration,
    /// The connection permits, to tell at the end of the grace period how many are still held.
    permits: Arc<Semaphore>,
    max_connections: usize,
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
        let _ = self.shutdown.send(true);
        for task in self.accept_loops.drain(..) {
            let _ = task.await;
        }
        // `recv` returns `None` once every connection task has dropped its sender.
        let drained = tokio::time::timeout(self.grace, self.drained.recv())
            .await
            .is_ok();
        if !drained {
            // The accept loops have stopped, so every permit not available is an open connection.
            let open = self
                .max_connections
                .saturating_sub(self.permits.available_permits());
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
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (drain_tx, drained) = mpsc::channel::<()>(1);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::new(limits.max_connections_per_ip));
    let builder = Arc::new(http_builder(limits));
    let mut addrs = Vec::with_capacity(listeners.len());
    let mut bound = Vec::with_capacity(listeners.len());
    for spec in listeners {
        let listener = TcpListener::bind(spec.bind).await?;
        addrs.push(listener.local_addr()?);
        bound.push((listener, spec.clone()));
    }
    let mut accept_loops = Vec::with_capacity(bound.len());
    for (i, (listener, spec)) in bound.into_iter().enumerate() {
        // The gateway holds each listener's certificate so a reload can swap it; a gateway
        // built without listeners (tests) falls back to the spec's.
        let tls = gateway.listener_tls(i).or_else(|| {
            spec.tls
                .as_ref()
                .map(|c| Arc::new(arc_swap::ArcSwap::new(Arc::clone(c))))
        });
        let ctx = AcceptContext {
            tls,
            spec,
            limits: limits.clone(),
            gateway: Arc::clone(&gateway),
            permits: Arc::clone(&permits),
            per_ip: Arc::clone(&per_ip),
            builder: Arc::clone(&builder),
            shutdown: shutdown_rx.clone(),
            drain: drain_tx.clone(),
        };
        accept_loops.push(tokio::spawn(accept_loop(listener, ctx)));
    }
    drop(drain_tx);
    Ok(Running {
        addrs,
        admin: None,
        gateway,
        shutdown,
        drained,
        accept_loops,
        grace: limits.shutdown_grace,
        permits,
        max_connections: limits.max_connections,
    })
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

struct AcceptContext {
    /// The listener's current TLS config; read at every accept, so a swapped certificate is
    /// used by the next connection.
    tls: Option<Arc<arc_swap::ArcSwap<rustls::ServerConfig>>>,
    spec: ListenerSpec,
    limits: ServerLimits,
    gateway: Arc<Gateway>,
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    builder: Arc<auto::Builder<TokioExecutor>>,
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
        let key = crate::config::units::client_network(ip);
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

async fn accept_loop(listener: TcpListener, mut ctx: AcceptContext) {
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&ctx.permits).acquire_owned() => match permit {
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
            match ctx.per_ip.acquire(peer.ip()) {
                Some(slot) => slot,
                None => {
                    // Closed before a byte is read; the permit goes back with `permit`.
                    crate::metrics::global()
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
            hsts: ctx.spec.hsts.clone(),
        };
        let task = ConnectionTask {
            gateway: Arc::clone(&ctx.gateway),
            builder: Arc::clone(&ctx.builder),
            shutdown: ctx.shutdown.clone(),
            first_request_timeout: ctx.limits.header_read_timeout,
            idle_timeout: ctx.limits.idle_timeout,
            _drain: ctx.drain.clone(),
            _slot: slot,
            _permit: permit,
        };
        let handshake_timeout = ctx.limits.header_read_timeout;
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
struct ConnectionTask {
    gateway: Arc<Gateway>,
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

impl ConnectionTask {
    async fn serve<S>(mut self, stream: S, conn: Connection)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = Arc::clone(&self.gateway);
        let conn = Arc::new(conn);
        let peer = conn.peer;
        // When the latest request arrived, in milliseconds since `opened` (0: none yet). A
        // request only stores a number: the quiet timer below reads it when it fires, so a
        // busy connection costs no wake-up and no timer re-arm per request.
        let opened = tokio::time::Instant::now();
        let last_request = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = Arc::clone(&last_request);
        let service = service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            let conn = Arc::clone(&conn);
            let since = opened.elapsed().as_millis() as u64;
            seen.store(since.max(1), std::sync::atomic::Ordering::Relaxed);
            async move {
                // The runtime snapshot is taken once per request: a reload never changes the
                // rules halfway through one.
                let runtime = gateway.runtime();
                Ok::<_, Infallible>(
                    crate::proxy::handle(
                        request,
                        &conn,
                        runtime,
                        gateway.store(),
                        gateway.audit(),
                        gateway.clock(),
                    )
                    .await,
                )
            }
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

    #[test]
    fn without_a_cap_nothing_is_counted() {
        let table = Arc::new(PerIp::new(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let _slots: Vec<IpSlot> = (0..1000).map(|_| table.acquire(ip).unwrap()).collect();
        assert!(table.open.lock().unwrap().is_empty());
    }
}
