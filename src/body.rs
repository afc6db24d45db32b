//! The one body type the gateway sends and forwards: streamed bodies are passed through frame
//! by frame, never buffered; gateway-made responses are a single chunk.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::pipeline::pool::Checkout;

/// An error while streaming a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The peer's stream failed.
    #[error("body stream failed")]
    Stream(#[source] hyper::Error),
    /// The request body grew past the route's limit while streaming.
    #[error("request body exceeds the route's limit")]
    TooLarge,
    /// The client sent no part of the request body for `limits.body_read_timeout`.
    #[error("request body stalled")]
    Stalled,
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
        /// Longest wait for the next frame (request bodies).
        stall: Option<Stall>,
    },
    /// A response from a pooled upstream connection, which goes back to its pool once this
    /// body has been read to the end and dropped.
    Pooled {
        /// The upstream's body.
        inner: Incoming,
        /// The connection it arrives on.
        checkout: Checkout,
    },
}

impl GatewayBody {
    /// A gateway-made body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(bytes.into()))
    }

    /// A request body: fails once more than `limit` bytes have passed, or when the client
    /// sends nothing for `stall_after` while more is expected.
    pub fn limited(inner: Incoming, limit: u64, stall_after: Duration) -> Self {
        GatewayBody::Stream {
            inner,
            remaining: limit,
            stall: Some(Stall {
                after: stall_after,
                timer: None,
                waiting: false,
            }),
        }
    }

    /// A streamed body without a limit (responses from the upstream).
    pub fn stream(inner: Incoming) -> Self {
        GatewayBody::Stream {
            inner,
            remaining: u64::MAX,
            stall: None,
        }
    }
}

/// The stall timer of a request body: how long the gateway has been waiting for the client's
/// next frame. The clock starts when a read finds nothing, not at the last frame, so a body
/// the upstream was slow to take (backpressure) is never cut. The timer is made on the first
/// wait: a body already complete when read (every `GET`, most small `POST`s) arms none.
#[derive(Debug)]
pub struct Stall {
    after: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl Stall {
    /// `Ready` once the client has sent nothing for `after` while the body was being read.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A new wait (re)starts the clock, once, not on every poll of the same wait.
        let new_wait = !std::mem::replace(&mut self.waiting, true);
        let timer = match &mut self.timer {
            Some(timer) => {
                if new_wait {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.after);
                }
                timer
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep(self.after))),
        };
        timer.as_mut().poll(cx)
    }

    fn frame_arrived(&mut self) {
        self.waiting = false;
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
                stall,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(stall) = stall {
                        stall.frame_arrived();
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
                Poll::Pending => match stall.as_mut().map(|s| s.poll_expired(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(BodyError::Stalled))),
                    _ => Poll::Pending,
                },
            },
            GatewayBody::Pooled { inner, checkout } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if inner.is_end_stream() {
                        checkout.finished();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Stream(e)))),
                Poll::Ready(None) => {
                    checkout.finished();
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
