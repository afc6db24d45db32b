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

use http::header::ACCEPT;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

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

/// Whether a request with `method` and `headers` is a browser's navigation, which a login
/// fixes with a redirect rather than a 401: `Sec-Fetch-Mode: navigate` for any method (a form
/// post is one), else a `GET` or `HEAD` that accepts HTML (browsers without Fetch Metadata).
/// The proxy asks it of `GET`/`HEAD` requests only; forward-auth of the original request,
/// whatever its method (a refused form post is sent to log in with a 303).
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode == "navigate";
    }
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/html"))
}
