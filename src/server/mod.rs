//! Listeners: accept, limit, terminate TLS, speak HTTP/1.1 and HTTP/2, drain on shutdown.
//!
//! Concurrency and state, and why:
//! - One accept loop per listener. Before accepting, a loop takes a permit from a semaphore
//!   shared by all listeners; the permit lives as long as the connection, so at most
//!   `limits.max_connections` connections are open and excess clients wait in the kernel's
//!   backlog instead of costing memory here.
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

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

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
    /// then returns. Returns whether every connection drained in time.
    pub async fn shutdown(mut self) -> bool {
        let _ = self.shutdown.send(true);
        for task in self.accept_loops.drain(..) {
            let _ = task.await;
        }
        // `recv` returns `None` once every connection task has dropped its sender.
        tokio::time::timeout(self.grace, self.drained.recv())
            .await
            .is_ok()
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
    builder: Arc<auto::Builder<TokioExecutor>>,
    shutdown: watch::Receiver<bool>,
    drain: mpsc::Sender<()>,
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
                    pipeline::handle(request, &conn, runtime, gateway.store(), gateway.audit())
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
