//! Kept-alive HTTP/1.1 connections to one plain `http://` upstream.
//!
//! The forward stage sends most requests here rather than through hyper-util's general client:
//! that client keys one shared pool by `(scheme, authority)` with a SipHash lookup and a mutex on
//! every checkout and return, boxes every response future, and spawns a task per request to
//! hand the connection back once the response body is done. Here each upstream owns its pool
//! (a LIFO list behind an uncontended mutex), and a connection goes back when the response
//! body has been read to its end and the body is dropped (the body's [`Lease`], which names
//! the pool only as its [`Lender`]), with no task. A
//! connection idle for `idle_timeout` is closed: by the next return to the pool, or, when
//! traffic stops, by a task that runs per pool only while connections sit idle.
//! callgrind figures are in docs/PERFORMANCE.md.
//!
//! HTTPS and HTTP/2 upstreams and WebSocket handshakes still use hyper-util's client.
//!
//! A connection is reused only when hyper says it is ready for the next request; a connection
//! whose response was not read to the end, or that the upstream closed, is dropped, which
//! closes it. A request refused by a reused connection before any of it was written (the
//! upstream closed the idle connection at that moment) is sent again once, on a new connection.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::{GatewayBody, Lease, Lender};

type Sender = http1::SendRequest<GatewayBody>;

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP connect failed.
    #[error("connect to the upstream failed")]
    Connect(#[source] std::io::Error),
    /// TCP connect did not finish within `connect_timeout`.
    #[error("connect to the upstream timed out")]
    ConnectTimeout,
    /// The HTTP exchange failed.
    #[error("upstream request failed")]
    Http(#[source] hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle list, oldest first, and whether a task is reaping it.
#[derive(Default)]
struct IdleList {
    entries: Vec<Idle>,
    reaper: bool,
}

impl IdleList {
    /// Drops (closing them) the connections idle for `timeout` or longer.
    fn expire(&mut self, now: Instant, timeout: Duration) {
        let expired = self
            .entries
            .iter()
            .take_while(|e| now.duration_since(e.since) >= timeout)
            .count();
        self.entries.drain(..expired);
    }
}

/// The idle connections of one upstream.
pub struct H1Pool {
    /// `host:port` as `TcpStream::connect` takes it.
    address: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<IdleList>,
    /// The pool itself, for the reaper task, which must not keep a pool alive after a reload.
    this: Weak<H1Pool>,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("address", &self.address)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Lender for H1Pool {
    fn give_back(&self, connection: Sender) {
        self.put(connection);
    }
}

impl H1Pool {
    /// A pool for the upstream at `address` (`host:port`).
    pub fn new(
        address: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Self> {
        Arc::new_cyclic(|this| Self {
            address,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(IdleList::default()),
            this: Weak::clone(this),
        })
    }

    /// Sends `request` on an idle connection, or on a new one, and returns the response head with
    /// the connection it came on.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<GatewayBody>,
    ) -> Result<(Response<Incoming>, Lease), PoolError> {
        if let Some(mut sender) = self.take() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lend(sender))),
                Err(mut e) => match e.take_message() {
                    // Nothing of it was written: the idle connection had been closed.
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(PoolError::Http)?;
        Ok((response, self.lend(sender)))
    }

    fn lend(self: &Arc<Self>, sender: Sender) -> Lease {
        // A reference-counted pointer to this pool, as the body's `Lender`: no allocation.
        Lease::new(sender, Arc::clone(self) as Arc<dyn Lender>)
    }

    /// The most recently used idle connection that is still open and ready.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.expire(Instant::now(), self.idle_timeout);
        while let Some(entry) = idle.entries.pop() {
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            // Closed or still busy: dropping it closes the connection.
        }
        None
    }

    fn put(&self, sender: Sender) {
        if !sender.is_ready() {
            // Closed, or hyper has not finished with the last response yet.
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.expire(now, self.idle_timeout);
        if idle.entries.len() >= self.max_idle {
            return;
        }
        idle.entries.push(Idle { sender, since: now });
        if !idle.reaper {
            // Without traffic nothing would look at the list again: a task closes idle
            // connections at `idle_timeout` and ends once the list is empty.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                idle.reaper = true;
                runtime.spawn(reap(Weak::clone(&self.this)));
            }
        }
    }

    async fn connect(&self) -> Result<Sender, PoolError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.address))
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
            .map_err(PoolError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap().entries.len()
    }
}

/// Closes a pool's connections as they reach `idle_timeout`, until none is left idle (or the
/// pool itself is gone, after a reload). One per pool at a time; under load it wakes once per
/// `idle_timeout`, as every return to the pool also expires the oldest.
async fn reap(pool: Weak<H1Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.expire(Instant::now(), pool.idle_timeout);
            match idle.entries.first() {
                Some(oldest) => oldest.since + pool.idle_timeout,
                None => {
                    idle.reaper = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Connections an upstream accepted, and how many of them the client has closed.
    #[derive(Default)]
    struct Seen {
        accepted: std::sync::atomic::AtomicUsize,
        closed_by_client: std::sync::atomic::AtomicUsize,
    }

    /// An upstream answering `ok` with keep-alive. With `close_after_first`, it closes each
    /// connection shortly after its first answer: the way an upstream ends an idle keep-alive
    /// connection.
    async fn upstream(close_after_first: bool) -> (String, Arc<Seen>) {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Seen::default());
        let counts = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counts.accepted.fetch_add(1, SeqCst);
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = socket.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                counts.closed_by_client.fetch_add(1, SeqCst);
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                        }
                        seen.clear();
                        socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                        if close_after_first {
                            // Give the client time to pool the connection, then close it.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            return;
                        }
                    }
                });
            }
        });
        (address, seen)
    }

    /// A pool of up to 4 idle connections to `address`, with a 2 s connect timeout.
    fn pool(address: String, idle_timeout: Duration) -> Arc<H1Pool> {
        H1Pool::new(address, Duration::from_secs(2), idle_timeout, 4)
    }

    fn get() -> Request<GatewayBody> {
        Request::builder()
            .uri("/")
            .header(hyper::header::HOST, "upstream")
            .body(GatewayBody::Empty)
            .unwrap()
    }

    async fn read_to_end(pool: &Arc<H1Pool>) -> String {
        let (response, lease) = pool.send(get()).await.unwrap();
        let mut body = GatewayBody::Pooled {
            inner: response.into_body(),
            lease,
        };
        let mut text = Vec::new();
        while let Some(frame) = body.frame().await {
            text.extend_from_slice(frame.unwrap().data_ref().unwrap());
        }
        drop(body);
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn a_read_response_returns_its_connection_and_a_closed_one_is_replaced() {
        let (address, seen) = upstream(true).await;
        let pool = pool(address, Duration::from_secs(30));
        assert_eq!(read_to_end(&pool).await, "ok");
        // Back in the pool once the body was read to its end and dropped.
        assert_eq!(pool.idle_count(), 1);
        // The upstream closes that connection; the next request still succeeds, on a new one.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(read_to_end(&pool).await, "ok");
        assert_eq!(seen.accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unread_response_closes_its_connection() {
        let (address, _) = upstream(true).await;
        let pool = pool(address, Duration::from_secs(30));
        let (response, lease) = pool.send(get()).await.unwrap();
        drop((response, lease));
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn connections_are_reused_and_closed_after_idle_timeout_without_traffic() {
        use std::sync::atomic::Ordering::SeqCst;
        let (address, seen) = upstream(false).await;
        let pool = pool(address, Duration::from_millis(200));
        for _ in 0..3 {
            assert_eq!(read_to_end(&pool).await, "ok");
        }
        assert_eq!(seen.accepted.load(SeqCst), 1, "one connection, reused");
        assert_eq!(pool.idle_count(), 1);
        // No request follows: the reaper closes the connection at idle_timeout.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(seen.closed_by_client.load(SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = unused.local_addr().unwrap().to_string();
        drop(unused);
        let pool = pool(address, Duration::from_secs(30));
        assert!(matches!(pool.send(get()).await, Err(PoolError::Connect(_))));
    }
}
