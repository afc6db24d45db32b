//! The request path: [`handle`] runs the stages of [`crate::pipeline`] in the order the crate
//! docs draw, then `finish`es the request. The stages decide; this module only orders them
//! and records what they decided.
//!
//! Contract:
//! - `run` is the stages, one call each, in order; the first `Err` ends the request. It
//!   emits nothing: no metric, no audit event, no log line. What a later step needs to know
//!   (the route, the identity, whether access was granted) goes into a `Trace`.
//! - `finish` runs once per request, after the response is known (Pingora's logging phase):
//!   it turns a refusal into its response ([`crate::error::error_response`]), records the
//!   metrics, emits the one audit event of the decision (`access.granted`,
//!   `access.forbidden`, `access.unauthorized`, with whatever was known) and writes the log
//!   line. The auth flow audits its own decisions: its refusals are not audited again here.
//! - A request keeps the runtime snapshot it started with, and reads the clock at most once
//!   (for the identity, on routes that need one; the auth flow reads it for its handlers).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::Gateway;
use crate::audit::{Audit, AuditEvent};
use crate::auth_flow::{self, AuthSettings};
use crate::body::GatewayBody;
use crate::clock::Clock;
use crate::config::Runtime;
use crate::error::{BadRequest, ErrorContext, GatewayError, error_response, forward_auth_response};
use crate::metrics::{ForwardAuthResult, Metrics};
use crate::pipeline::authorize::{self, Policy};
use crate::pipeline::forward::{self, Outgoing, Upstream};
use crate::pipeline::forward_auth::{self, Endpoint};
use crate::pipeline::identify::{self, Identity};
use crate::pipeline::mutate::{self, ForwardFacts};
use crate::pipeline::normalize::{self, NormalizedPath};
use crate::pipeline::route::{self, Route};
use crate::pipeline::trace_context::TraceContext;
use crate::pipeline::verify::VerifiedToken;
use crate::pipeline::{self, Connection};
use crate::store::Store;

/// Handles one request of `gateway`'s; never fails (a refusal is a response).
pub async fn handle(
    request: Request<Incoming>,
    conn: &Connection,
    gateway: &Gateway,
) -> Response<GatewayBody> {
    let started = Instant::now();
    // The runtime snapshot is taken once per request: a reload never changes the rules halfway
    // through one.
    let runtime = gateway.runtime();
    let request_id = request_id(request.headers());
    // A reference-counted clone of the header, not a copy of the text: it is read only by the
    // audit trail and the auth flow.
    let user_agent = request.headers().get(http::header::USER_AGENT).cloned();
    // Decided before any stage, so every line about the request names its trace.
    let trace_context =
        TraceContext::of(request.headers(), runtime.mutate.is_trusted(conn.peer.ip()));
    let browser = is_browser_navigation(request.method(), request.headers());
    let env = RunEnv {
        conn,
        store: gateway.store(),
        audit: gateway.audit(),
        clock: gateway.clock(),
        metrics: gateway.metrics(),
        request_id: &request_id,
        client_ip: mutate::client_ip(conn.peer.ip(), request.headers(), &runtime.mutate),
        user_agent: user_agent.as_ref().and_then(|v| v.to_str().ok()),
        method: request.method().clone(),
        browser,
        // Kept (a reference-counted clone) only to build the login return path if one is needed.
        target: request.uri().path_and_query().cloned(),
        // Only where a login redirect may need it: a browser navigation, with the login page at
        // an absolute URL (possibly a central auth host on another host).
        origin: (runtime
            .login_url
            .as_deref()
            .is_some_and(|l| l.starts_with("https://"))
            && browser)
            .then(|| own_origin(&request, conn, &runtime)),
        trace_context: &trace_context,
    };
    let mut trace = Trace::default();
    // Every line logged while handling the request carries its id (at debug level, where the
    // per-request lines are; the line `finish` writes names it itself). Disabled spans cost a
    // level check, so the hot path pays nothing at the default level.
    let span = tracing::debug_span!(
        "request",
        request_id = request_id.to_str().unwrap_or(""),
        trace_id = trace_context.trace_id()
    );
    // Boxed, as forward's is below: hyper moves every request's future into place, and the
    // stages' state inline (held twice by the instrumented await) made it ~13 KiB to copy per
    // request; boxed it is ~1.4 KiB (benches/callgrind.sh counts the difference).
    let stages = Box::pin(tracing::Instrument::instrument(
        run(request, &runtime, &env, &mut trace),
        span,
    ));
    let outcome = stages.await;
    finish(outcome, &runtime, &env, &trace, started)
}

/// What [`run`] and [`finish`] need besides the request and the runtime.
struct RunEnv<'a> {
    conn: &'a Connection,
    store: &'a Store,
    audit: &'a Audit,
    clock: &'a Clock,
    metrics: &'a Metrics,
    request_id: &'a HeaderValue,
    client_ip: IpAddr,
    user_agent: Option<&'a str>,
    method: Method,
    /// A top-level browser navigation: a refusal that logging in fixes becomes a redirect.
    browser: bool,
    target: Option<http::uri::PathAndQuery>,
    /// `scheme://host[:port]` the client addressed, when [`handle`] kept it for the login
    /// return URL.
    origin: Option<String>,
    /// The W3C trace this request belongs to (continued from a trusted proxy, or new).
    trace_context: &'a TraceContext,
}

/// What the stages found out, for [`finish`]. It borrows from the runtime snapshot and holds
/// the identity the stages use, so filling it costs no allocation on the hot path.
#[derive(Debug, Default)]
struct Trace<'rt> {
    route: Option<&'rt Route>,
    /// The auth flow answered (and audited its own decision).
    auth_flow: bool,
    /// The identity, once identify accepted the request.
    identity: Option<Identity>,
    /// The token identify refused after verifying it (revoked, disabled user, store down).
    refused: Option<Arc<VerifiedToken>>,
    /// Authorize let the request through.
    granted: bool,
    /// The normalized path, copied only when an audit event will name it.
    path: Option<String>,
    upstream_latency: Option<Duration>,
    /// How long identify's verify and session check took.
    timings: identify::Timings,
    /// A forward-auth endpoint answered: the decision is the response.
    forward_auth: Option<AskedFor<'rt>>,
}

/// What finish needs to answer a forward-auth sub-request in its front proxy's terms.
#[derive(Debug)]
struct AskedFor<'rt> {
    endpoint: &'rt Endpoint,
    /// The original request's method, once read.
    method: Option<Method>,
    /// The original method was `GET` or `HEAD` (a login redirect is then a 302, else a 303).
    original_read: bool,
    /// The original request is a browser navigation.
    browser: bool,
    /// Where that browser comes back to after logging in.
    return_to: Option<String>,
}

impl Trace<'_> {
    fn token(&self) -> Option<&VerifiedToken> {
        match &self.identity {
            Some(identity) => Some(identity.token()),
            None => self.refused.as_deref(),
        }
    }
}

/// The stages, in order. The order matters: nothing is read from a credential before the route
/// is known, no claim is used before the signature is verified (inside identify), and nothing
/// is forwarded before mutate has stripped what the client must not set.
async fn run<'rt>(
    request: Request<Incoming>,
    rt: &'rt Runtime,
    env: &RunEnv<'_>,
    trace: &mut Trace<'rt>,
) -> Result<Response<GatewayBody>, GatewayError> {
    check_framing(&request)?;
    let (route, path, host) = match route(&request, rt)? {
        Target::AuthFlow(auth, path) => {
            return auth_flow(request, auth, &path, rt, env, trace).await;
        }
        Target::ForwardAuth(endpoint) => {
            return forward_auth(&request, endpoint, rt, env, trace).await;
        }
        Target::Route(route, path, host) => (route, path, host),
    };
    trace.route = Some(route);
    // Public routes read no credential; they still go through mutate, so spoofed identity
    // headers are stripped there too.
    if !matches!(route.policy, Policy::Public) {
        let identity = identify(&request, &path, rt, env, trace).await?;
        authorize(route, identity, &path, trace)?;
    }
    body_limit(&request, route)?;
    // `route` only returns routes with an upstream.
    let upstream = route.upstream.ok_or(route::RouteError::NotFound)?;
    let assertion = assertion(route, trace.identity.as_ref(), rt, env)?;
    let outgoing = prepare(
        request,
        route,
        path,
        host,
        trace.identity.as_ref(),
        assertion,
        rt,
        env,
    );
    forward(&rt.upstreams[upstream], outgoing, rt, trace).await
}

/// Stage 0, framing: refuse what two parsers could read differently, and `CONNECT`.
fn check_framing<B>(request: &Request<B>) -> Result<(), GatewayError> {
    check_framing_headers(request.headers())?;
    if request.method() == Method::CONNECT {
        // A 2xx to CONNECT turns both connections into a raw tunnel past every check; a
        // reverse proxy has no use for it, on any route (docs/security.md 34).
        return Err(route::RouteError::MethodNotAllowed.into());
    }
    Ok(())
}

/// Where a request goes.
enum Target<'rt> {
    /// The gateway's own endpoints.
    AuthFlow(&'rt AuthSettings, NormalizedPath),
    /// A front proxy asking for a decision.
    ForwardAuth(&'rt Endpoint),
    /// A route, with the normalized path and the canonical host.
    Route(&'rt Route, NormalizedPath, Option<String>),
}

/// Stage 1, route: a forward-auth endpoint (matched on the path as sent, see
/// [`Endpoint`]), else normalize the path, then the auth flow's paths (a route cannot shadow
/// the login flow), else host + path + method → route.
fn route<'rt>(request: &Request<Incoming>, rt: &'rt Runtime) -> Result<Target<'rt>, GatewayError> {
    if let Some(endpoint) = rt.forward_auth.endpoint(request.uri().path()) {
        return Ok(Target::ForwardAuth(endpoint));
    }
    let path = normalize::normalize(request.uri().path()).map_err(BadRequest::Path)?;
    let host = request_host(request)?;
    if let Some(auth) = &rt.auth
        && auth_flow::owns(&path.path)
    {
        return Ok(Target::AuthFlow(auth, path));
    }
    let route = rt
        .router
        .route(host.as_deref(), path.segments(), request.method())?;
    // A route without an upstream is decided for forward-auth only: proxied, it does not exist,
    // before any credential is read.
    if route.upstream.is_none() {
        return Err(route::RouteError::NotFound.into());
    }
    Ok(Target::Route(route, path, host))
}

/// `/auth/*` and the JWKS document, answered by the auth flow.
async fn auth_flow(
    request: Request<Incoming>,
    auth: &AuthSettings,
    path: &NormalizedPath,
    rt: &Runtime,
    env: &RunEnv<'_>,
    trace: &mut Trace<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    trace.auth_flow = true;
    let flow = auth_flow::handlers::Env {
        auth,
        identify: &rt.identify,
        body_read_timeout: rt.body_read_timeout,
        store: env.store,
        audit: env.audit,
        metrics: env.metrics,
        request_id: env.request_id,
        now: env.clock.now(),
        client: auth_flow::Client {
            ip: env.client_ip,
            user_agent: env.user_agent.unwrap_or("").to_owned(),
            origin: own_origin(&request, env.conn, rt),
        },
    };
    // Boxed: the login handlers' state is large, and unboxed it would size (and be copied
    // with) every proxied request's future, which never enters this branch.
    Box::pin(auth_flow::handle(request, &path.path, &flow)).await
}

/// A forward-auth sub-request: the original request read back (trusted peers only), then the
/// same route, identify and authorize stages a proxied request goes through, on its host,
/// normalized path and method; the answer is the decision, not a forwarded response.
async fn forward_auth<'rt>(
    request: &Request<Incoming>,
    endpoint: &'rt Endpoint,
    rt: &'rt Runtime,
    env: &RunEnv<'_>,
    trace: &mut Trace<'rt>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let mut asked = AskedFor {
        endpoint,
        method: None,
        original_read: true,
        browser: false,
        return_to: None,
    };
    let original = forward_auth::original(request, endpoint, env.conn.peer.ip());
    let original = match original {
        Ok(original) => original,
        Err(e) => {
            trace.forward_auth = Some(asked);
            return Err(e.into());
        }
    };
    asked.original_read = original.method == Method::GET || original.method == Method::HEAD;
    asked.method = Some(original.method.clone());
    asked.browser = pipeline::is_navigation(&original.method, request.headers());
    if asked.browser {
        asked.return_to = Some(return_target(endpoint.login_url.as_deref(), &original));
    }
    trace.forward_auth = Some(asked);
    // No exception for the login flow's paths (`/auth/*`): an allowed answer sends the request
    // to the front proxy's backend, not to the gateway, so "yes" for them would open that
    // backend's `/auth/…` to anyone. The front proxy sends those paths to the gateway without
    // asking (the examples do); asked, the route table decides like for any path.
    let route = rt.router.route(
        Some(original.host.as_str()),
        original.path.segments(),
        &original.method,
    )?;
    trace.route = Some(route);
    if matches!(route.policy, Policy::Public) {
        return Ok(forward_auth::allowed(None, &rt.mutate.identity));
    }
    let identity = identify(request, &original.path, rt, env, trace).await?;
    authorize(route, identity, &original.path, trace)?;
    let assertion = assertion(route, trace.identity.as_ref(), rt, env)?;
    let identity = identity_headers(trace.identity.as_ref(), assertion.as_ref());
    Ok(forward_auth::allowed(identity, &rt.mutate.identity))
}

/// Where a browser refused by forward-auth comes back to after logging in: the path, when it
/// logs in on the same host; the absolute URL, when the login page is on another host (a
/// central auth host for many subdomains).
fn return_target(login_url: Option<&str>, original: &forward_auth::Original) -> String {
    match login_url {
        Some(login) => auth_flow::redirect::return_target(
            login,
            if original.https { "https" } else { "http" },
            &original.authority,
            &original.return_path(),
        ),
        None => original.return_path(),
    }
}

/// Stages 2–4, identify, at the request's instant.
async fn identify(
    request: &Request<Incoming>,
    path: &NormalizedPath,
    rt: &Runtime,
    env: &RunEnv<'_>,
    trace: &mut Trace<'_>,
) -> Result<Identity, GatewayError> {
    let now = env.clock.now();
    identify::identify(
        request.headers(),
        &rt.identify,
        env.store,
        now,
        env.metrics,
        &mut trace.timings,
    )
    .await
    .map_err(|refused| {
        // Copied for the refusal's audit event only, not on every request.
        trace.refused = refused.token().cloned();
        trace.path = Some(path.path.clone());
        refused.into()
    })
}

/// Stage 5, authorize: the route's policy against the identity's permissions. The identity
/// goes into the trace either way: mutate forwards it, and a 403's audit event names it.
fn authorize(
    route: &Route,
    identity: Identity,
    path: &NormalizedPath,
    trace: &mut Trace<'_>,
) -> Result<(), GatewayError> {
    let decided = authorize::authorize(&route.policy, identity.permissions());
    trace.identity = Some(identity);
    trace.granted = decided.is_ok();
    if decided.is_err() || route.audit {
        trace.path = Some(path.path.clone());
    }
    Ok(decided?)
}

/// A declared body over the route's limit is refused before anything is forwarded; a body
/// that turns out longer is cut off by the limit [`prepare`] puts on it.
fn body_limit<B>(request: &Request<B>, route: &Route) -> Result<(), GatewayError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > route.max_body) {
        return Err(GatewayError::PayloadTooLarge);
    }
    Ok(())
}

/// Stage 6, mutate: strip, then inject; the request as it goes upstream.
#[allow(clippy::too_many_arguments)] // each is one fact mutate needs, from a different stage
fn prepare(
    request: Request<Incoming>,
    route: &Route,
    path: NormalizedPath,
    host: Option<String>,
    identity: Option<&Identity>,
    assertion: Option<(&HeaderName, HeaderValue)>,
    rt: &Runtime,
    env: &RunEnv<'_>,
) -> Outgoing {
    // Decided here, before mutate, because mutate keeps `Upgrade` only for it.
    let upgrade = route.websocket && websocket_handshake(&request);
    let client_host = request.headers().get(HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let query = request.uri().query().map(str::to_owned);
    let (mut parts, body) = request.into_parts();
    let facts = ForwardFacts {
        peer: env.conn.peer.ip(),
        peer_header: &env.conn.peer_header,
        tls: env.conn.tls,
        host: host.as_deref(),
        request_id: env.request_id,
        forward_authorization: route.forward_authorization,
        upgrade,
        trace: env.trace_context,
    };
    let identity = identity_headers(identity, assertion.as_ref());
    mutate::mutate(&mut parts.headers, identity, &rt.mutate, &facts);
    Outgoing {
        request: Request::from_parts(
            parts,
            GatewayBody::limited(body, route.max_body, rt.body_pace),
        ),
        path: path.path,
        query,
        client_host,
        upgrade,
    }
}

/// The identity headers a backend is told about: the identity's, with the route's assertion.
fn identity_headers<'a>(
    identity: Option<&'a Identity>,
    assertion: Option<&'a (&'a HeaderName, HeaderValue)>,
) -> Option<mutate::Identity<'a>> {
    identity.map(|identity| mutate::Identity {
        assertion: assertion.map(|(name, value)| (*name, value)),
        ..identity.headers()
    })
}

/// The signed identity assertion for `route`'s backend, on routes that send one
/// (docs/security.md 42), minted at the instant identify accepted the request. Failing
/// closed: a route that promises its backend an assertion gets none forwarded without one.
fn assertion<'r>(
    route: &'r Route,
    identity: Option<&Identity>,
    rt: &Runtime,
    env: &RunEnv<'_>,
) -> Result<Option<(&'r HeaderName, HeaderValue)>, GatewayError> {
    let (Some(identity), Some(spec)) = (identity, &route.assertion) else {
        return Ok(None);
    };
    rt.assertions
        .as_ref()
        .and_then(|a| a.header_for(spec.audience, identity, identity.at(), env.metrics))
        .map(|value| Some((&spec.header, value)))
        .ok_or_else(|| GatewayError::Internal("the identity assertion could not be signed".into()))
}

/// Stage 7, forward, and 6' on the way back: whatever the upstream says, it cannot set the
/// gateway's cookies.
async fn forward(
    upstream: &Upstream,
    outgoing: Outgoing,
    rt: &Runtime,
    trace: &mut Trace<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let t = Instant::now();
    // Boxed: the upstream client's state is most of the stages' future (see `handle`).
    let forwarded = Box::pin(forward::forward(upstream, outgoing)).await;
    trace.upstream_latency = Some(t.elapsed());
    let mut response = forwarded?;
    mutate::protect_response(response.headers_mut(), &rt.mutate);
    Ok(response)
}

/// The end of every request: the response for a refusal, then the metrics, the audit event and
/// the log line, from what [`run`] returned and what it put in the trace.
fn finish(
    outcome: Result<Response<GatewayBody>, GatewayError>,
    rt: &Runtime,
    env: &RunEnv<'_>,
    trace: &Trace<'_>,
    started: Instant,
) -> Response<GatewayBody> {
    let metrics = env.metrics;
    if let Some(elapsed) = trace.timings.verify {
        metrics.verify_latency.observe(elapsed);
    }
    if let Some(elapsed) = trace.timings.session {
        metrics.store_latency.observe(elapsed);
    }
    if let Some(elapsed) = trace.upstream_latency {
        metrics.upstream_latency.observe(elapsed);
    }
    if trace.granted {
        metrics.allowed.fetch_add(1, Ordering::Relaxed);
    }
    // The decision to let the request through, whatever the upstream then made of it.
    if trace.granted
        && let Some(route) = trace.route
        && route.audit
    {
        audit_access(env, trace, "access.granted", "authz.granted");
    }
    let route_id = trace.route.map(|r| &*r.id);
    let mut response = match outcome {
        Ok(mut response) => {
            if let Some(asked) = &trace.forward_auth {
                asked.endpoint.counters.record(ForwardAuthResult::Allowed);
            }
            if let Some(route_id) = route_id {
                tracing::debug!(
                    request_id = env.request_id.to_str().unwrap_or(""),
                    route.id = route_id,
                    status = response.status().as_u16(),
                    "forwarded"
                );
            }
            response
                .headers_mut()
                .insert(mutate::X_REQUEST_ID, env.request_id.clone());
            response
        }
        Err(err) => {
            let status = err.status();
            metrics.refused(err.reason_id());
            // The auth flow audits its own refusals with their context.
            if !trace.auth_flow {
                match status {
                    StatusCode::UNAUTHORIZED => {
                        audit_access(env, trace, "access.unauthorized", err.reason_id());
                    }
                    StatusCode::FORBIDDEN => {
                        audit_access(env, trace, "access.forbidden", err.reason_id());
                    }
                    _ => {}
                }
            }
            // A client's refusal (4xx) is logged at debug: a client chooses how many it
            // causes, and the audit trail already aggregates them. The gateway's own
            // failures (5xx: store, upstream) stay at info.
            macro_rules! refused {
                ($level:expr) => {
                    tracing::event!(
                        $level,
                        request_id = env.request_id.to_str().unwrap_or(""),
                        trace_id = env.trace_context.trace_id(),
                        client.ip = %env.conn.peer.ip(),
                        method = %env.method,
                        route.id = route_id,
                        subject = trace.token().map(|t| &*t.subject),
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
            if let Some(asked) = &trace.forward_auth {
                asked.endpoint.counters.record(forward_auth_result(&err));
                let ctx = ErrorContext {
                    request_id: env.request_id,
                    browser: asked.browser,
                    login_url: asked.endpoint.login_url.as_deref(),
                    return_to: asked.return_to.as_deref(),
                };
                forward_auth_response(&err, &ctx, asked.endpoint.contract, asked.original_read)
            } else {
                // The path to come back to; an absolute URL when the login page is on another
                // host.
                let return_to = (env.browser && rt.login_url.is_some())
                    .then(|| env.target.as_ref().and_then(return_path))
                    .flatten()
                    .map(
                        |path| match (rt.login_url.as_deref(), env.origin.as_deref()) {
                            (Some(login), Some(origin)) => {
                                let (scheme, host) =
                                    origin.split_once("://").unwrap_or(("", origin));
                                auth_flow::redirect::return_target(login, scheme, host, &path)
                            }
                            _ => path,
                        },
                    );
                let ctx = ErrorContext {
                    request_id: env.request_id,
                    browser: env.browser,
                    login_url: rt.login_url.as_deref(),
                    return_to: return_to.as_deref(),
                };
                error_response(&err, &ctx)
            }
        }
    };
    if let Some(hsts) = &env.conn.hsts {
        response
            .headers_mut()
            .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let status = response.status().as_u16();
    let counters = match (trace.auth_flow, &trace.forward_auth, trace.route) {
        (true, _, _) => &metrics.auth_flow,
        (false, Some(_), _) => &metrics.forward_auth_responses,
        (false, None, Some(route)) => &route.counters,
        (false, None, None) => &metrics.unrouted,
    };
    counters.record(status);
    metrics.request_latency.observe(started.elapsed());
    response
}

/// What a forward-auth refusal is counted as.
fn forward_auth_result(err: &GatewayError) -> ForwardAuthResult {
    match err {
        GatewayError::ForwardAuth(forward_auth::ForwardAuthError::UntrustedPeer) => {
            ForwardAuthResult::Untrusted
        }
        GatewayError::Route(_) | GatewayError::Forbidden(_) => ForwardAuthResult::Forbidden,
        GatewayError::Store(_) | GatewayError::KeysUnavailable => ForwardAuthResult::Unavailable,
        other if other.status() == StatusCode::UNAUTHORIZED => ForwardAuthResult::Unauthorized,
        _ => ForwardAuthResult::Invalid,
    }
}

/// The proxy's one audit event about a request's access decision.
fn audit_access(env: &RunEnv<'_>, trace: &Trace<'_>, event: &'static str, reason_id: &'static str) {
    let token = trace.token();
    env.audit.emit(&AuditEvent {
        event,
        reason_id,
        subject: token.map(|t| &*t.subject),
        session: token.and_then(|t| t.session.as_deref()),
        client_ip: Some(env.client_ip),
        user_agent: env.user_agent,
        route: trace.route.map(|r| &*r.id),
        method: Some(match &trace.forward_auth {
            Some(AskedFor {
                method: Some(m), ..
            }) => m.as_str(),
            _ => env.method.as_str(),
        }),
        path: trace.path.as_deref(),
        request_id: env.request_id.to_str().ok(),
        // A forward-auth decision names the endpoint that was asked.
        detail: trace.forward_auth.as_ref().map(|a| &*a.endpoint.path),
    });
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
fn check_framing_headers(headers: &HeaderMap) -> Result<(), BadRequest> {
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

/// A top-level `GET`/`HEAD` navigation by a browser, which is better served by the login page
/// than by JSON ([`pipeline::is_navigation`] for those methods).
fn is_browser_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD) && pipeline::is_navigation(method, headers)
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
    use http::header::ACCEPT;

    #[test]
    fn framing_refuses_cl_with_te_and_odd_encodings() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert!(check_framing_headers(&h).is_ok());
        h.append(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(check_framing_headers(&h), Err(BadRequest::Framing));
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(check_framing_headers(&h).is_ok());
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("5"));
        assert_eq!(check_framing_headers(&h), Err(BadRequest::Framing));
        let mut h = HeaderMap::new();
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("xchunked"));
        assert_eq!(check_framing_headers(&h), Err(BadRequest::Framing));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert_eq!(check_framing_headers(&h), Err(BadRequest::Framing));
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
