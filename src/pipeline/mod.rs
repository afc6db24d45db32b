//! The request path. [`handle`] calls each stage in order; each stage is a module with one
//! entry function and a contract in its module docs:
//!
//! ```text
//!   0 framing     refuse ambiguous Content-Length / Transfer-Encoding      (400, connection closed)
//!                 and an HTTP/1.1 request without `Host`                    (400)
//!   1 route       normalize the path; host + path + method → Route         (400, 404, 405)
//!   2 credential  cookie or bearer → Option<token>; absent ≠ invalid       (401, 400)
//!   3 verify      kid → pinned key → signature → typ/crit/claims           (401)
//!   4 session     jti denylist, live session, user not revoked since iat   (401, 503)
//!   5 authorize   the route's policy against the token's permissions       (403)
//!   6 mutate      strip client identity/forwarding headers, inject verified ones
//!   7 forward     pooled upstream client, streamed bodies, upgrades        (502, 504, 413)
//!   6' protect    the response: no `Set-Cookie` for the gateway's cookies, no `Clear-Site-Data`
//! ```
//! Public routes skip 2–5 but still go through 6, so spoofed identity headers are stripped
//! there too. Only a well-formed WebSocket handshake on a route with `websocket: true` keeps
//! its `Upgrade` (`websocket_handshake`); every other `Upgrade` (`h2c` above all) is removed
//! in 6 and the request forwarded as a plain one, and forward refuses a `101` to anything but
//! that handshake (docs/security.md 34). Every refusal goes through [`crate::error::error_response`], and every 401 and
//! 403 is audited. With `auth:` configured, `/auth/*` and the JWKS document are answered by
//! [`crate::auth_flow`] right after the path is normalized, before routing; tokens the gateway
//! issued itself take their permissions from the users file as it is now (4b below), so a
//! disabled user or a role change applies to the next request.

pub mod authorize;
pub mod credential;
pub mod forward;
pub mod mutate;
pub mod normalize;
pub mod pool;
pub mod route;
pub mod session;
pub mod trace_context; // edge: trace context
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{ACCEPT, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::audit::{Audit, AuditEvent};
use crate::auth_flow;
use crate::body::GatewayBody;
use crate::clock::Clock;
use crate::config::Runtime;
use crate::error::{BadRequest, ErrorContext, GatewayError, error_response};
use crate::store::Store;
use authorize::Policy;
use forward::Outgoing;
use mutate::{ForwardFacts, Identity};

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

/// What is known about a request for its log line and its error response. It borrows from the
/// runtime snapshot and shares the verified token, so filling it costs no allocation.
#[derive(Debug, Default)]
struct Trace<'rt> {
    route: Option<&'rt str>,
    counters: Option<&'rt crate::metrics::RouteCounters>,
    token: Option<Arc<verify::VerifiedToken>>,
    path: Option<String>,
}

/// Handles one request with the runtime snapshot it started with; never fails.
pub async fn handle(
    request: Request<Incoming>,
    conn: &Connection,
    runtime: Arc<Runtime>,
    store: &Store,
    audit: &Audit,
    clock: &Clock,
) -> Response<GatewayBody> {
    let started = std::time::Instant::now();
    let metrics = crate::metrics::global();
    let request_id = request_id(request.headers());
    let browser = is_browser_navigation(request.method(), request.headers());
    let method = request.method().clone();
    // Kept (a reference-counted clone) only to build the login return path if one is needed.
    let target = request.uri().path_and_query().cloned();
    let mut trace = Trace::default();
    // A reference-counted clone of the header, not a copy of the text: it is read only by the
    // audit trail and the auth flow.
    let user_agent_header = request.headers().get(http::header::USER_AGENT).cloned();
    let user_agent = user_agent_header.as_ref().and_then(|v| v.to_str().ok());
    let client_ip = mutate::client_ip(conn.peer.ip(), request.headers(), &runtime.mutate);
    // edge: trace context. Decided before any stage, so every line about the request names it.
    let trace_ctx = trace_context::TraceContext::of(
        request.headers(),
        runtime.mutate.is_trusted(conn.peer.ip()),
    );
    let env = RunEnv {
        conn,
        store,
        audit,
        clock,
        request_id: &request_id,
        client_ip,
        user_agent,
        trace: &trace_ctx, // edge: trace context
    };
    // Every line logged while handling the request carries its id (at debug level, where the
    // per-request lines are; the refusal line below names it itself). Disabled
    // spans cost a level check, so the hot path pays nothing at the default level.
    let span = tracing::debug_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        trace_id = trace_ctx.trace_id() // edge: trace context
    );
    let mut response =
        match tracing::Instrument::instrument(run(request, &runtime, &env, &mut trace), span).await
        {
            Ok(response) => response,
            Err(err) => {
                let status = err.status();
                metrics.refused(err.reason_id());
                if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN
                {
                    // The auth flow audits its own refusals with their context.
                    let from_auth_flow = matches!(err, GatewayError::Auth(_));
                    if !from_auth_flow {
                        audit.emit(&AuditEvent {
                            event: if status == http::StatusCode::FORBIDDEN {
                                "access.forbidden"
                            } else {
                                "access.unauthorized"
                            },
                            reason_id: err.reason_id(),
                            subject: trace.token.as_ref().map(|t| &*t.subject),
                            session: trace.token.as_ref().and_then(|t| t.session.as_deref()),
                            client_ip: Some(client_ip),
                            user_agent,
                            route: trace.route,
                            method: Some(method.as_str()),
                            path: trace.path.as_deref(),
                            request_id: request_id.to_str().ok(),
                            detail: None,
                        });
                    }
                }
                // A client's refusal (4xx) is logged at debug: a client chooses how many it
                // causes, and the audit trail already aggregates them. The gateway's own
                // failures (5xx: store, upstream) stay at info.
                macro_rules! refused {
                    ($level:expr) => {
                        tracing::event!(
                            $level,
                            request_id = request_id.to_str().unwrap_or(""),
                            trace_id = trace_ctx.trace_id(), // edge: trace context
                            client.ip = %conn.peer.ip(),
                            method = %method,
                            route.id = trace.route,
                            subject = trace.token.as_ref().map(|t| &*t.subject),
                            status = status.as_u16(),
                            reason_id = err.reason_id(),
                            error = %err,
                            "request refused"
                        )
                    };
                }
                if status.is_server_error() {
                    refused!(tracing::Level::INFO);
                } else {
                    refused!(tracing::Level::DEBUG);
                }
                let return_to = (browser && runtime.login_url.is_some())
                    .then(|| target.as_ref().and_then(return_path))
                    .flatten();
                let ctx = ErrorContext {
                    request_id: &request_id,
                    browser,
                    login_url: runtime.login_url.as_deref(),
                    return_to: return_to.as_deref(),
                };
                error_response(&err, &ctx)
            }
        };
    if let Some(hsts) = &conn.hsts {
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let status = response.status().as_u16();
    match trace.counters {
        Some(route) => route.record(status),
        None => unrouted().record(status),
    }
    metrics.request_latency.observe(started.elapsed());
    response
}

/// Counters for the auth flow's endpoints.
fn auth_flow_counters() -> &'static crate::metrics::RouteCounters {
    static AUTH: std::sync::OnceLock<Arc<crate::metrics::RouteCounters>> =
        std::sync::OnceLock::new();
    AUTH.get_or_init(|| crate::metrics::global().route("(auth)"))
}

/// Counters for responses given before or without a route (400, 404, the auth flow).
fn unrouted() -> &'static crate::metrics::RouteCounters {
    static UNROUTED: std::sync::OnceLock<Arc<crate::metrics::RouteCounters>> =
        std::sync::OnceLock::new();
    UNROUTED.get_or_init(|| crate::metrics::global().route("(none)"))
}

/// What [`run`] needs besides the request and the runtime.
struct RunEnv<'a> {
    conn: &'a Connection,
    store: &'a Store,
    audit: &'a Audit,
    clock: &'a Clock,
    request_id: &'a HeaderValue,
    client_ip: std::net::IpAddr,
    user_agent: Option<&'a str>,
    trace: &'a trace_context::TraceContext, // edge: trace context
}

/// The stages, in order. The order matters: nothing is read from a credential before the route
/// is known, no claim is used before the signature is verified (inside verify), and nothing is
/// forwarded before mutate has stripped what the client must not set.
async fn run<'rt>(
    request: Request<Incoming>,
    rt: &'rt Runtime,
    env: &RunEnv<'_>,
    trace: &mut Trace<'rt>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (conn, store, request_id) = (env.conn, env.store, env.request_id);
    check_framing(request.headers())?;
    if request.method() == Method::CONNECT {
        // A 2xx to CONNECT turns both connections into a raw tunnel past every check; a
        // reverse proxy has no use for it, on any route (docs/security.md 34).
        return Err(route::RouteError::MethodNotAllowed.into());
    }

    // 1. route
    let path = normalize::normalize(request.uri().path()).map_err(BadRequest::Path)?;
    let host = request_host(&request)?;
    // The gateway's own endpoints, before any route: a route cannot shadow the login flow.
    if let Some(auth) = &rt.auth
        && auth_flow::owns(&path.path)
    {
        let origin = own_origin(&request, conn, rt);
        let flow = auth_flow::handlers::Env {
            rt,
            auth,
            store,
            audit: env.audit,
            request_id,
            now: env.clock.now(),
            client: auth_flow::Client {
                ip: env.client_ip,
                user_agent: env.user_agent.unwrap_or("").to_owned(),
                origin,
            },
        };
        trace.counters = Some(auth_flow_counters());
        // Boxed: the login handlers' state is large, and unboxed it would size (and be copied
        // with) every proxied request's future, which never enters this branch.
        let mut response = Box::pin(auth_flow::handle(request, &path.path, &flow)).await?;
        response
            .headers_mut()
            .insert(mutate::X_REQUEST_ID, request_id.clone());
        return Ok(response);
    }
    let query = request.uri().query().map(str::to_owned);
    let route = rt
        .router
        .route(host.as_deref(), path.segments(), request.method())?;
    trace.route = Some(&route.id);
    trace.counters = Some(&route.counters);

    // 2–5: only for routes that need an identity.
    let identity = if matches!(route.policy, Policy::Public) {
        None
    } else {
        let identified = async {
            let token = credential::credential(request.headers(), &rt.cookie_name)?
                .ok_or(GatewayError::MissingCredential)?;
            let now = env.clock.now();
            let metrics = crate::metrics::global();
            let t = std::time::Instant::now();
            let verified =
                verify::verify(token, &rt.verifier, &rt.token_cache, &rt.permissions, now)?;
            metrics.verify_latency.observe(t.elapsed());
            trace.token = Some(Arc::clone(&verified));
            let t = std::time::Instant::now();
            let checked = session::session(&verified, store, now).await;
            metrics.store_latency.observe(t.elapsed());
            checked?;
            // 4b. a token this gateway issued: its user must still exist and be enabled, and the
            // permissions are those of the user's roles now, not when the token was minted.
            let grant = match &rt.auth {
                Some(auth) if verified.issuer == auth.issuer_index => Some(
                    auth.grant(&verified.subject, &rt.permissions)
                        .ok_or(GatewayError::UserDisabled)?,
                ),
                _ => None,
            };
            let permissions = grant
                .as_ref()
                .map_or(&verified.permissions, |g| &g.permissions);
            authorize::authorize(&route.policy, permissions)?;
            metrics
                .allowed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if route.audit {
                env.audit.emit(&AuditEvent {
                    event: "access.granted",
                    reason_id: "authz.granted",
                    subject: Some(&verified.subject),
                    session: verified.session.as_deref(),
                    client_ip: Some(env.client_ip),
                    user_agent: env.user_agent,
                    route: Some(&route.id),
                    method: Some(request.method().as_str()),
                    path: Some(&path.path),
                    request_id: request_id.to_str().ok(),
                    detail: None,
                });
            }
            Ok::<_, GatewayError>((verified, grant))
        }
        .await;
        match identified {
            Ok(identity) => Some(identity),
            Err(err) => {
                // The path is copied for the refusal's audit event only, not on every request.
                trace.path = Some(path.path.clone());
                return Err(err);
            }
        }
    };

    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > route.max_body) {
        return Err(GatewayError::PayloadTooLarge);
    }

    // 6. mutate. Decided here, before mutate, because mutate keeps `Upgrade` only for it.
    let upgrade = route.websocket && websocket_handshake(&request);
    let client_host = request.headers().get(HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let (mut parts, body) = request.into_parts();
    let facts = ForwardFacts {
        peer: conn.peer.ip(),
        peer_header: &conn.peer_header,
        tls: conn.tls,
        host: host.as_deref(),
        request_id,
        forward_authorization: route.forward_authorization,
        upgrade,
        trace: env.trace, // edge: trace context
    };
    let identity = identity.as_ref().map(|(token, grant)| {
        let mut identity = Identity::of(token);
        if let Some(grant) = grant {
            identity.permissions = &grant.permissions_header;
        }
        identity
    });
    mutate::mutate(&mut parts.headers, identity, &rt.mutate, &facts);

    // 7. forward
    let outgoing = Outgoing {
        request: Request::from_parts(
            parts,
            GatewayBody::limited(body, route.max_body, rt.body_pace),
        ),
        path: path.path,
        query,
        client_host,
        upgrade,
    };
    let t = std::time::Instant::now();
    let forwarded = forward::forward(&rt.upstreams[route.upstream], outgoing).await;
    crate::metrics::global()
        .upstream_latency
        .observe(t.elapsed());
    let mut response = forwarded?;
    // 6'. Whatever the upstream says, it cannot set the gateway's cookies.
    mutate::protect_response(response.headers_mut(), &rt.mutate);
    tracing::debug!(
        request_id = request_id.to_str().unwrap_or(""),
        route.id = &*route.id,
        status = response.status().as_u16(),
        "forwarded"
    );
    response
        .headers_mut()
        .insert(mutate::X_REQUEST_ID, request_id.clone());
    Ok(response)
}

/// `scheme://host[:port]` the client addressed, as a browser writes it in `Origin`. The scheme
/// is `https` on a TLS listener, or when a trusted proxy says the client used TLS.
fn own_origin(request: &Request<Incoming>, conn: &Connection, rt: &Runtime) -> String {
    let forwarded_https = rt.mutate.is_trusted(conn.peer.ip())
        && request
            .headers()
            .get(mutate::X_FORWARDED_PROTO)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let scheme = if conn.tls || forwarded_https {
        "https"
    } else {
        "http"
    };
    let host = request
        .headers()
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_ascii_lowercase();
    format!("{scheme}://{host}")
}

/// The normalized path and query a browser returns to after logging in; `None` when the path
/// cannot be normalized (such a request was refused with 400 anyway).
/// An IP address as a header value, for [`Connection::peer_header`].
pub fn peer_header(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).expect("an IP address is a valid header value")
}

fn return_path(target: &http::uri::PathAndQuery) -> Option<String> {
    let path = normalize::normalize(target.path()).ok()?.path;
    Some(match target.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    })
}

/// Refuses requests whose body framing two parsers could read differently (docs/security.md 30).
/// Defence in depth: hyper's HTTP/1 parser already rejects conflicting lengths and drops
/// `Content-Length` when `Transfer-Encoding` is present (reading chunked, then closing), so
/// the first two checks mostly guard other transports and future parser changes.
fn check_framing(headers: &HeaderMap) -> Result<(), BadRequest> {
    let lengths = headers.get_all(CONTENT_LENGTH).iter().count();
    let encodings: Vec<&HeaderValue> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    if lengths > 1 || (lengths == 1 && !encodings.is_empty()) {
        return Err(BadRequest::Framing);
    }
    match encodings.as_slice() {
        [] => Ok(()),
        [one] if one.as_bytes().eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(BadRequest::Framing),
    }
}

/// The canonical request host: the absolute-form authority or `Host` (which must agree when
/// both are present), lower-cased and without port. An HTTP/1.1 request must carry `Host`
/// (RFC 9112 §3.2), even in absolute form; HTTP/1.0 predates it and may omit it, and then only
/// routes without a `host` match; HTTP/2 names the host in `:authority`.
fn request_host<B>(request: &Request<B>) -> Result<Option<String>, BadRequest> {
    let from_uri = request.uri().authority().map(|a| a.as_str());
    let mut hosts = request.headers().get_all(HOST).iter();
    let from_header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(h.to_str().map_err(|_| BadRequest::Host)?),
        (None, _) if request.version() == http::Version::HTTP_11 => {
            return Err(BadRequest::MissingHost);
        }
        (None, _) => None,
        (Some(_), Some(_)) => return Err(BadRequest::Host),
    };
    let raw = match (from_uri, from_header) {
        (Some(u), Some(h)) => {
            let (u, h) = (route::canonical_host(u), route::canonical_host(h));
            if u != h {
                return Err(BadRequest::Host);
            }
            return u.map(Some).ok_or(BadRequest::Host);
        }
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return Ok(None),
    };
    route::canonical_host(raw).map(Some).ok_or(BadRequest::Host)
}

/// Whether `request` is a WebSocket opening handshake as RFC 6455 §4.1 shapes it: HTTP/1.1
/// `GET`, `Connection` listing `upgrade`, exactly one `Upgrade: websocket`, one
/// `Sec-WebSocket-Key` that is base64 for 16 bytes, and `Sec-WebSocket-Version: 13`. Only such
/// a request keeps its `Upgrade` on the way upstream; `h2c` (whose requests after the switch
/// would bypass every check), other tokens and malformed handshakes never do.
fn websocket_handshake<B>(request: &Request<B>) -> bool {
    use base64::Engine as _;
    fn one<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
        let mut all = headers.get_all(name).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => Some(v.as_bytes().trim_ascii()),
            _ => None,
        }
    }
    let headers = request.headers();
    if request.version() != http::Version::HTTP_11 || request.method() != Method::GET {
        return false;
    }
    let connection_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let websocket = one(headers, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    let version = one(headers, "sec-websocket-version") == Some(b"13");
    let key = one(headers, "sec-websocket-key").is_some_and(|k| {
        // 16 bytes are 24 base64 characters, the last two `==`.
        k.len() == 24
            && base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|raw| raw.len() == 16)
    });
    connection_upgrade && websocket && version && key
}

/// A top-level navigation by a browser, which is better served by the login page than by JSON.
fn is_browser_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    const SEC_FETCH_MODE: http::HeaderName = http::HeaderName::from_static("sec-fetch-mode");
    if let Some(mode) = headers.get(SEC_FETCH_MODE) {
        return mode == "navigate";
    }
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);
static REQUEST_PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// The client's `X-Request-Id` when it is well-formed (1–128 of `[A-Za-z0-9._:-]`), else a new
/// one: a per-process random prefix and a counter, unique without a syscall per request.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(given) = headers.get(mutate::X_REQUEST_ID) {
        let bytes = given.as_bytes();
        if !bytes.is_empty()
            && bytes.len() <= 128
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return given.clone();
        }
    }
    let prefix = *REQUEST_PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // If the OS RNG fails the ids are still unique within the process, just predictable.
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        u64::from_le_bytes(bytes)
    });
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    // Hex by hand: `format!` costs more than the rest of this function.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, byte) in prefix
        .to_be_bytes()
        .iter()
        .chain(&n.to_be_bytes())
        .enumerate()
    {
        id[2 * i] = HEX[usize::from(byte >> 4)];
        id[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_refuses_cl_with_te_and_odd_encodings() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing(&h).is_ok());
        h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(check_framing(&h), Err(BadRequest::Framing));
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(check_framing(&h).is_ok());
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(check_framing(&h), Err(BadRequest::Framing));
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("xchunked"));
        assert_eq!(check_framing(&h), Err(BadRequest::Framing));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert_eq!(check_framing(&h), Err(BadRequest::Framing));
    }

    fn handshake() -> Request<()> {
        Request::get("/ws")
            .version(http::Version::HTTP_11)
            .header("host", "gw")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap()
    }

    #[test]
    fn only_a_well_formed_websocket_handshake_is_an_upgrade() {
        assert!(websocket_handshake(&handshake()));
        let refused: [(&str, &str, &str); 8] = [
            ("upgrade", "h2c", "another protocol"),
            ("upgrade", "websocket, h2c", "two protocols"),
            ("upgrade", "websocket", "two Upgrade headers"),
            ("sec-websocket-version", "8", "an old version"),
            ("sec-websocket-key", "c2hvcnQ=", "a key of 5 bytes"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==", "two keys"),
            (
                "sec-websocket-key",
                "!!!!!!!!!!!!!!!!!!!!!!==",
                "a key that is not base64",
            ),
            ("x-unused", "", "no Connection: upgrade"),
        ];
        for (name, value, why) in refused {
            let mut request = handshake();
            let headers = request.headers_mut();
            match why {
                "two Upgrade headers" | "two keys" => {
                    headers.append(name, HeaderValue::from_static(value));
                }
                "no Connection: upgrade" => {
                    headers.insert("connection", HeaderValue::from_static("keep-alive"));
                }
                _ => {
                    headers.insert(name, HeaderValue::from_static(value));
                }
            }
            assert!(!websocket_handshake(&request), "{why}");
        }
        let mut post = handshake();
        *post.method_mut() = Method::POST;
        assert!(!websocket_handshake(&post), "POST");
        let mut old = handshake();
        *old.version_mut() = http::Version::HTTP_10;
        assert!(!websocket_handshake(&old), "HTTP/1.0");
    }

    #[test]
    fn http_1_1_needs_a_host_and_http_1_0_may_omit_it() {
        let mut request = Request::get("/").body(()).unwrap();
        assert_eq!(request_host(&request), Err(BadRequest::MissingHost));
        *request.version_mut() = http::Version::HTTP_10;
        assert_eq!(request_host(&request), Ok(None));
        *request.version_mut() = http::Version::HTTP_2;
        assert_eq!(request_host(&request), Ok(None));
        let absolute = Request::get("http://Example.com:80/").body(()).unwrap();
        assert_eq!(request_host(&absolute), Err(BadRequest::MissingHost));
        let mut request = Request::get("/").body(()).unwrap();
        request
            .headers_mut()
            .insert(HOST, HeaderValue::from_static("Example.COM:8080"));
        assert_eq!(request_host(&request), Ok(Some("example.com".into())));
    }

    #[test]
    fn request_ids_are_kept_when_well_formed_and_replaced_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("bad id<script>"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&h));
    }

    #[test]
    fn navigations_are_told_apart_from_api_calls() {
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-mode", HeaderValue::from_static("navigate"));
        assert!(is_browser_navigation(&Method::GET, &h));
        assert!(!is_browser_navigation(&Method::POST, &h));
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_browser_navigation(&Method::GET, &h));
        h.insert(ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(is_browser_navigation(&Method::GET, &h));
    }
}
