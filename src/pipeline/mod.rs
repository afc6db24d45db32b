//! The stages of the request path, one module each, with its contract in its module docs.
//! The order they run in is drawn once, in the crate docs, and written once, in
//! [`crate::proxy`]; stages know nothing of each other's callers, of the config or of the
//! error responses: each returns its own error type.
//!
//! | stage | module | answers |
//! |---|---|---|
//! | 1 route | [`normalize`], [`route`] | which route, or 400/404/405 |
//! | 2–4 identify | [`identify`] ([`credential`], [`verify`] with [`claims`], [`session`]) | who is this, and what may they do |
//! | 5 authorize | [`authorize`] | does the route's policy allow it |
//! | 6 mutate | [`mutate`], [`assertion`] | the headers the upstream sees (and 6', the response's) |
//! | 7 forward | [`forward`], [`pool`] | the upstream's answer |

pub mod assertion;
pub mod authorize;
pub mod claims;
pub mod credential;
pub mod forward;
pub mod forward_auth;
pub mod identify;
pub mod mutate;
pub mod normalize;
pub mod pool;
pub mod route;
pub mod session;
pub mod trace_context;
pub mod verify;

use std::net::SocketAddr;

use http::HeaderValue;

/// Facts about the client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The peer's IP address as a header value (`X-Forwarded-For`), formatted once.
    pub peer_header: HeaderValue,
    /// Whether the listener terminated TLS.
    pub tls: bool,
    /// `Strict-Transport-Security` to add to every response, on TLS listeners.
    pub hsts: Option<HeaderValue>,
}

/// An IP address as a header value, for [`Connection::peer_header`].
pub fn peer_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}
