//! The one body type the gateway sends and forwards: streamed bodies are passed through frame
//! by frame, never buffered; gateway-made responses are a single chunk.
//!
//! A response that arrived on a pooled upstream connection carries a [`Lease`] on that
//! connection: the connection goes back to whoever lent it (a [`Lender`]) once the body has
//! been read to its end and dropped. The body knows the lender only by that trait, so it
//! depends on no part of the gateway (the pool hands itself in; no allocation per request).

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// Where a lent upstream connection goes back once its response body is done.
pub trait Lender: Send + Sync + 'static {
    /// Takes back `connection`, whose last response was read to its end (or closes it).
    fn give_back(&self, connection: SendRequest<GatewayBody>);
}

/// An upstream connection lent to one response. It goes back to its lender when dropped after
/// the response body was read to its end ([`Lease::finished`]); otherwise dropping it closes
/// the connection, since hyper cannot reuse one with a response half read.
pub struct Lease {
    connection: Option<SendRequest<GatewayBody>>,
    lender: Arc<dyn Lender>,
    finished: bool,
}

impl Lease {
    /// `connection`, lent by `lender`.
    pub fn new(connection: SendRequest<GatewayBody>, lender: Arc<dyn Lender>) -> Self {
        Self {
            connection: Some(connection),
            lender,
            finished: false,
        }
    }

    /// The response body has been read to its end: the connection may serve another request.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (true, Some(connection)) = (self.finished, self.connection.take()) {
            self.lender.give_back(connection);
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// An error while streaming a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's stream failed.
    #[error("body stream failed")]
    Stream(#[source] hyper::Error),
    /// The request body grew past the route's limit while streaming.
    #[error("request body exceeds the route's limit")]
    TooLarge,
    /// The client sent no part of the request body for `limits.body_read_timeout`, sent it
    /// slower than `limits.body_min_rate`, or not within `limits.body_deadline`.
    #[error("request body stalled")]
    Stalled,
}

/// How fast a request body must arrive. Every limit counts only the time the gateway spends
/// waiting for the client's next bytes, never time the body waits for the upstream to take it
/// (backpressure), so a slow upstream never gets a client cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Longest single wait for the next part (`limits.body_read_timeout`).
    pub stall_after: Duration,
    /// Bytes per second of waiting the client must keep up, after `grace`; 0: no minimum
    /// (`limits.body_min_rate`). As with Apache's `mod_reqtimeout` `MinRate`, each byte
    /// received earns `1/min_rate` s of further waiting: the body may be waited for
    /// `grace + received / min_rate` in all.
    pub min_rate: u64,
    /// Waiting allowed before any byte has to have arrived (`limits.body_min_rate_grace`).
    pub grace: Duration,
    /// Longest total wait for the whole body, whatever its rate (`limits.body_deadline`).
    pub deadline: Option<Duration>,
}

impl Pace {
    /// How much longer the gateway may wait for the client at the start of a new wait, having
    /// waited `waited` in all so far for `received` bytes: the tightest of the three limits.
    pub fn allowance(&self, waited: Duration, received: u64) -> Duration {
        let mut left = self.stall_after;
        if self.min_rate > 0 {
            // Whole seconds and the remainder apart, so a body of any size cannot overflow.
            let rest =
                u128::from(received % self.min_rate) * 1_000_000_000 / u128::from(self.min_rate);
            let earned = Duration::from_secs(received / self.min_rate)
                .saturating_add(Duration::from_nanos(rest as u64));
            left = left.min(self.grace.saturating_add(earned).saturating_sub(waited));
        }
        if let Some(deadline) = self.deadline {
            left = left.min(deadline.saturating_sub(waited));
        }
        left
    }
}

/// A request or response body.
#[derive(Debug)]
pub enum GatewayBody {
    /// Nothing.
    Empty,
    /// One chunk made by the gateway.
    Full(Option<Bytes>),
    /// A streamed body from a peer, with the bytes it may still carry.
    Stream {
        /// The peer's body.
        inner: Incoming,
        /// Remaining allowance; `u64::MAX` for no limit.
        remaining: u64,
        /// How fast the client must send it (request bodies).
        pacer: Option<Pacer>,
    },
    /// A response from a pooled upstream connection, which goes back to its pool once this
    /// body has been read to the end and dropped.
    Pooled {
        /// The upstream's body.
        inner: Incoming,
        /// The connection it arrives on.
        lease: Lease,
    },
}

impl GatewayBody {
    /// A gateway-made body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(bytes.into()))
    }

    /// A request body: fails once more than `limit` bytes have passed, or when the client
    /// sends it slower than `pace` allows while more is expected.
    pub fn limited(inner: Incoming, limit: u64, pace: Pace) -> Self {
        GatewayBody::Stream {
            inner,
            remaining: limit,
            pacer: Some(Pacer {
                pace,
                timer: None,
                waiting_since: None,
                waited: Duration::ZERO,
                received: 0,
            }),
        }
    }

    /// A streamed body without a limit (responses from the upstream).
    pub fn stream(inner: Incoming) -> Self {
        GatewayBody::Stream {
            inner,
            remaining: u64::MAX,
            pacer: None,
        }
    }
}

/// The pace keeper of a request body: how long the gateway has been waiting for the client's
/// bytes, this time and in all. A wait starts when a read finds nothing, not at the last frame,
/// so a body the upstream was slow to take (backpressure) is never cut. The timer is made on
/// the first wait: a body already complete when read (every `GET`, most small `POST`s) arms
/// none, and a frame that arrives without a wait costs no clock read.
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the current wait began; `None` between waits.
    waiting_since: Option<tokio::time::Instant>,
    /// The waits that have ended, summed.
    waited: Duration,
    /// Body bytes received so far.
    received: u64,
}

impl Pacer {
    /// `Ready` once the client has been too slow by any of the pace's limits.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A new wait (re)arms the clock, once, not on every poll of the same wait.
        if self.waiting_since.is_none() {
            let now = tokio::time::Instant::now();
            self.waiting_since = Some(now);
            let until = now + self.pace.allowance(self.waited, self.received);
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(until),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(until))),
            }
        }
        match &mut self.timer {
            Some(timer) => timer.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    fn frame_arrived(&mut self, len: usize) {
        self.received = self.received.saturating_add(len as u64);
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            GatewayBody::Empty => Poll::Ready(None),
            GatewayBody::Full(chunk) => Poll::Ready(chunk.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Stream {
                inner,
                remaining,
                pacer,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(pacer) = pacer {
                        pacer.frame_arrived(frame.data_ref().map_or(0, Bytes::len));
                    }
                    if let Some(data) = frame.data_ref() {
                        let len = data.len() as u64;
                        if len > *remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge)));
                        }
                        *remaining -= len;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Stream(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match pacer.as_mut().map(|p| p.poll_expired(cx)) {
                    Some(Poll::Ready(())) => {
                        if let Some(s) = pacer {
                            tracing::debug!(
                                received = s.received,
                                waited_ms = (s.waited
                                    + s.waiting_since.map_or(Duration::ZERO, |t| t.elapsed()))
                                .as_millis() as u64,
                                "request body too slow"
                            );
                        }
                        Poll::Ready(Some(Err(BodyError::Stalled)))
                    }
                    _ => Poll::Pending,
                },
            },
            GatewayBody::Pooled { inner, lease } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if inner.is_end_stream() {
                        lease.finished();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Stream(e)))),
                Poll::Ready(None) => {
                    lease.finished();
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Empty => true,
            GatewayBody::Full(chunk) => chunk.is_none(),
            GatewayBody::Stream { inner, .. } | GatewayBody::Pooled { inner, .. } => {
                inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Empty => SizeHint::with_exact(0),
            GatewayBody::Full(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |b| b.len() as u64))
            }
            GatewayBody::Stream { inner, .. } | GatewayBody::Pooled { inner, .. } => {
                inner.size_hint()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(30);

    fn pace(min_rate: u64, grace_ms: u64, deadline_ms: Option<u64>) -> Pace {
        Pace {
            stall_after: STALL,
            min_rate,
            grace: Duration::from_millis(grace_ms),
            deadline: deadline_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn without_a_rate_or_deadline_every_wait_gets_the_stall_limit() {
        let p = pace(0, 0, None);
        assert_eq!(p.allowance(Duration::ZERO, 0), STALL);
        assert_eq!(p.allowance(Duration::from_secs(3600), 1), STALL);
    }

    #[test]
    fn each_byte_earns_one_over_min_rate_of_waiting_after_the_grace() {
        // 500 B/s after 20 s, as mod_reqtimeout's `body=20,MinRate=500`.
        let p = pace(500, 20_000, None);
        assert_eq!(p.allowance(Duration::ZERO, 0), Duration::from_secs(20));
        // 19 s waited for 0 bytes: 1 s left.
        assert_eq!(
            p.allowance(Duration::from_secs(19), 0),
            Duration::from_secs(1)
        );
        // 1,000 bytes earned 2 s more.
        assert_eq!(
            p.allowance(Duration::from_secs(19), 1_000),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.allowance(Duration::from_millis(20_001), 0),
            Duration::ZERO
        );
        // One byte every 3 s (under any stall limit) falls behind: 3 s waited per 2 ms earned.
        let trickle = |bytes: u64| p.allowance(Duration::from_secs(3 * bytes), bytes);
        assert!(trickle(6) > Duration::ZERO);
        assert_eq!(trickle(7), Duration::ZERO);
        // Fractions of a second per byte, and bodies too large to overflow the sum.
        assert_eq!(
            pace(3, 0, None).allowance(Duration::ZERO, 1),
            Duration::from_nanos(333_333_333)
        );
        assert_eq!(pace(1, 0, None).allowance(Duration::ZERO, u64::MAX), STALL);
    }

    #[test]
    fn the_deadline_caps_the_total_wait_whatever_the_rate() {
        let p = pace(0, 0, Some(5_000));
        assert_eq!(p.allowance(Duration::ZERO, 0), Duration::from_secs(5));
        assert_eq!(
            p.allowance(Duration::from_secs(4), 1 << 30),
            Duration::from_secs(1)
        );
        assert_eq!(p.allowance(Duration::from_secs(6), 0), Duration::ZERO);
        // The tightest limit wins.
        let p = Pace {
            stall_after: Duration::from_secs(2),
            ..pace(500, 20_000, Some(60_000))
        };
        assert_eq!(p.allowance(Duration::ZERO, 0), Duration::from_secs(2));
    }
}
