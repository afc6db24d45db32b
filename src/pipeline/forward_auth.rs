//! Forward-auth: the gateway's decision for a front proxy that asks before it forwards
//! (nginx `auth_request`, Traefik `forwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`).
//!
//! The front proxy sends a sub-request to one of the configured endpoints, carrying the
//! client's credentials (cookie, `Authorization`) and the original request's method, host and
//! URL in headers. This module reads that original request back, and only from a peer the
//! endpoint trusts: the headers that describe it are as forgeable as any other, so from anyone
//! else the endpoint refuses before reading them. The original path is normalized exactly as a
//! proxied request's is, and the decision is made on host + normalized path + method against the
//! same route table, by the same identify and authorize stages; the query string never
//! affects it. Everything that could be read two ways is refused, never allowed: a missing or
//! repeated header, a URL that is not absolute, a fragment, userinfo, an encoded separator.
//!
//! Contracts (how each front proxy describes the original request):
//!
//! | contract | method | host | path and query | scheme |
//! |---|---|---|---|---|
//! | `nginx` | `X-Original-Method` | `X-Original-URL` (absolute) | `X-Original-URL` | `X-Original-URL` |
//! | `forwarded` (Traefik, Caddy, generic) | `X-Forwarded-Method` | `X-Forwarded-Host` | `X-Forwarded-Uri` | `X-Forwarded-Proto` (`https` when absent) |
//! | `envoy` (`ext_authz` HTTP service) | the sub-request's | its `Host` | its path after the endpoint's prefix, and its query | `X-Forwarded-Proto` (`https` when absent) |
//!
//! Answers: `200` with the identity headers to allow. Refusals differ by contract only in how
//! a browser is sent to log in: nginx can act on nothing but 401 and 403 (anything else becomes
//! a 500 there), so it gets 401 and the login URL in [`LOGIN_HEADER`], for `error_page 401`;
//! the others pass the answer to the client, so a browser navigation gets the redirect itself
//! (302 for `GET`/`HEAD`, 303 otherwise). [`crate::error::error_response`] builds them.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{CACHE_CONTROL, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};

use crate::body::GatewayBody;
use crate::pipeline::mutate::{self, IdentityHeaders};

use crate::metrics::{ForwardAuthCounters, Metrics};
use crate::net::IpNet;
use crate::pipeline::normalize::{self, NormalizedPath, PathError};
use crate::pipeline::route;

/// The header of a refusal to the nginx contract that carries where a browser logs in (with
/// the return path); present only for a browser navigation that logging in would fix.
pub const LOGIN_HEADER: HeaderName = HeaderName::from_static("x-portcullis-login");

const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How a front proxy describes the request it asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// nginx `auth_request`, Kubernetes ingress-nginx `auth-url`.
    Nginx,
    /// Traefik `forwardAuth`, Caddy `forward_auth`, and any proxy sending `X-Forwarded-*`.
    Forwarded,
    /// Envoy `ext_authz` in HTTP service mode: the original path appended to the endpoint's.
    Envoy,
}

impl Contract {
    /// The name used in `gateway.yaml`, metrics and audit events.
    pub fn name(self) -> &'static str {
        match self {
            Contract::Nginx => "nginx",
            Contract::Forwarded => "forwarded",
            Contract::Envoy => "envoy",
        }
    }

    /// The endpoint path used when the config gives none.
    pub fn default_path(self) -> &'static str {
        match self {
            Contract::Nginx => "/_portcullis/nginx",
            Contract::Forwarded => "/_portcullis/forward",
            Contract::Envoy => "/_portcullis/envoy",
        }
    }
}

/// One forward-auth endpoint, compiled from `forward_auth[]`.
#[derive(Debug)]
pub struct Endpoint {
    /// Its path on the proxy listeners (for `envoy`, a prefix).
    pub path: Box<str>,
    /// How the front proxy describes the original request.
    pub contract: Contract,
    /// Peers allowed to ask (never empty).
    pub trusted: Vec<IpNet>,
    /// Where a refused browser logs in; the top-level `login_url` when not given.
    pub login_url: Option<String>,
    /// The decisions of this endpoint, by result.
    pub counters: Arc<ForwardAuthCounters>,
}

impl Endpoint {
    /// Whether `raw_path` (the sub-request's path, before normalization) addresses this
    /// endpoint. Matched before normalization, so that no dot segment of an Envoy-appended
    /// original path can turn a sub-request into a proxied request, or the reverse.
    fn addressed_by(&self, raw_path: &str) -> bool {
        match self.contract {
            Contract::Nginx | Contract::Forwarded => raw_path == &*self.path,
            Contract::Envoy => raw_path
                .strip_prefix(&*self.path)
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(peer))
    }
}

/// The forward-auth endpoints of a runtime.
#[derive(Debug, Default)]
pub struct ForwardAuth {
    /// In `forward_auth:` order; their paths are distinct and none is under another.
    pub endpoints: Vec<Endpoint>,
}

impl ForwardAuth {
    /// The endpoint a sub-request with `raw_path` addresses, if any.
    pub fn endpoint(&self, raw_path: &str) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        self.endpoints.iter().find(|e| e.addressed_by(raw_path))
    }

    /// Makes every endpoint count into `metrics`, under its path.
    pub fn count_into(&mut self, metrics: &Metrics) {
        for endpoint in &mut self.endpoints {
            endpoint.counters = metrics.forward_auth(&endpoint.path);
        }
    }
}

/// Why a sub-request could not be decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ForwardAuthError {
    /// The peer is not in the endpoint's trusted list.
    #[error("forward-auth request from a peer the endpoint does not trust")]
    UntrustedPeer,
    /// A header the contract needs is missing (or sent twice).
    #[error("forward-auth request without exactly one {0}")]
    MissingHeader(&'static str),
    /// The original URL is not an absolute `http(s)` URL without userinfo or fragment.
    #[error("forward-auth original URL is malformed")]
    BadUrl,
    /// The original method is not a method.
    #[error("forward-auth original method is malformed")]
    BadMethod,
    /// The original host is not a host.
    #[error("forward-auth original host is malformed")]
    BadHost,
    /// The original path does not normalize.
    #[error("forward-auth original path: {0}")]
    BadPath(PathError),
}

impl ForwardAuthError {
    /// A stable identifier for logs, metrics and audit events.
    pub fn reason_id(self) -> &'static str {
        match self {
            ForwardAuthError::UntrustedPeer => "forward_auth.untrusted_peer",
            ForwardAuthError::MissingHeader(_) => "forward_auth.missing_header",
            ForwardAuthError::BadUrl => "forward_auth.bad_url",
            ForwardAuthError::BadMethod => "forward_auth.bad_method",
            ForwardAuthError::BadHost => "forward_auth.bad_host",
            ForwardAuthError::BadPath(_) => "forward_auth.bad_path",
        }
    }
}

/// The request a front proxy asks about.
#[derive(Debug)]
pub struct Original {
    /// Its method.
    pub method: Method,
    /// `https` or `http`, as the front proxy says the client used.
    pub https: bool,
    /// The canonical host (lower-case, no port).
    pub host: String,
    /// The host as the client wrote it (with its port), for the absolute return URL.
    pub authority: String,
    /// The normalized path.
    pub path: NormalizedPath,
    /// The query, kept only for the path a browser returns to after logging in.
    pub query: Option<String>,
}

impl Original {
    /// The normalized path and query, for the return path after a login on the same host.
    pub fn return_path(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path.path),
            None => self.path.path.clone(),
        }
    }
}

/// The answer that lets the original request through: `200`, no body, and the identity in
/// the configured header names with the token issuer's `identity_claims` headers (and the
/// signed assertion, on a route whose upstream or route config asks for one) for the front
/// proxy to copy onto the request it forwards (none for a public route). Never cached: a revocation must apply to the next request.
pub fn allowed(
    identity: Option<mutate::Identity<'_>>,
    names: &IdentityHeaders,
) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    let headers = response.headers_mut();
    if let Some(identity) = identity {
        headers.insert(names.subject.clone(), identity.subject.clone());
        if let Some(session) = identity.session {
            headers.insert(names.session.clone(), session.clone());
        }
        headers.insert(names.permissions.clone(), identity.permissions.clone());
        for (name, value) in identity.claims {
            headers.insert(name.clone(), value.clone());
        }
        if let Some((name, value)) = identity.assertion {
            headers.insert(name.clone(), value.clone());
        }
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Reads the original request out of a sub-request to `endpoint` from `peer`: refused unless
/// the peer is trusted, then every part the contract defines, each exactly once.
pub fn original<B>(
    request: &Request<B>,
    endpoint: &Endpoint,
    peer: IpAddr,
) -> Result<Original, ForwardAuthError> {
    if !endpoint.trusts(peer) {
        return Err(ForwardAuthError::UntrustedPeer);
    }
    let headers = request.headers();
    match endpoint.contract {
        Contract::Nginx => {
            let method = method(one(headers, &X_ORIGINAL_METHOD, "X-Original-Method")?)?;
            let url = one(headers, &X_ORIGINAL_URL, "X-Original-URL")?;
            let (https, authority, target) = absolute_url(url)?;
            build(method, https, authority, target)
        }
        Contract::Forwarded => {
            let method = method(one(headers, &X_FORWARDED_METHOD, "X-Forwarded-Method")?)?;
            let authority = one(headers, &X_FORWARDED_HOST, "X-Forwarded-Host")?;
            let target = one(headers, &X_FORWARDED_URI, "X-Forwarded-Uri")?;
            build(method, proto(headers)?, authority, target)
        }
        Contract::Envoy => {
            // HTTP/2 carries the host as `:authority`, which hyper puts in the URI. When both
            // it and `Host` are there they must name one host (RFC 9113 §8.3.1); one reading
            // silently winning over the other would be a host read two ways.
            let authority = match request.uri().authority() {
                Some(a) if !headers.contains_key(HOST) => a.as_str(),
                Some(a) => {
                    let host = one(headers, &HOST, "Host")?;
                    if route::canonical_host(host) != route::canonical_host(a.as_str()) {
                        return Err(ForwardAuthError::BadHost);
                    }
                    host
                }
                None => one(headers, &HOST, "Host")?,
            };
            let path = request.uri().path();
            let rest = path
                .strip_prefix(&*endpoint.path)
                .filter(|rest| rest.starts_with('/'))
                .ok_or(ForwardAuthError::BadUrl)?;
            let target = match request.uri().query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            build(
                request.method().clone(),
                proto(headers)?,
                authority,
                &target,
            )
        }
    }
}

/// The value of `name`, which must be sent exactly once and be visible ASCII.
fn one<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'h str, ForwardAuthError> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v
            .to_str()
            .map_err(|_| ForwardAuthError::MissingHeader(label)),
        _ => Err(ForwardAuthError::MissingHeader(label)),
    }
}

fn method(text: &str) -> Result<Method, ForwardAuthError> {
    // Methods are case-sensitive (RFC 9110 §9.1); `get` is not `GET`, and is refused rather
    // than matched against a route that allows `GET`.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ForwardAuthError::BadMethod);
    }
    Method::from_bytes(text.as_bytes()).map_err(|_| ForwardAuthError::BadMethod)
}

/// `X-Forwarded-Proto`: `https` when absent (the front proxy terminates TLS), else exactly
/// `http` or `https`.
fn proto(headers: &HeaderMap) -> Result<bool, ForwardAuthError> {
    let mut values = headers.get_all(&X_FORWARDED_PROTO).iter();
    match (values.next(), values.next()) {
        (None, _) => Ok(true),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"https") => Ok(true),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"http") => Ok(false),
        _ => Err(ForwardAuthError::MissingHeader("X-Forwarded-Proto")),
    }
}

/// Splits an absolute `http(s)://authority/path?query` into its scheme, authority and
/// origin-form target. No userinfo, no fragment, nothing but a path after the authority.
fn absolute_url(url: &str) -> Result<(bool, &str, &str), ForwardAuthError> {
    let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
        (false, rest)
    } else {
        return Err(ForwardAuthError::BadUrl);
    };
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => rest.split_at(i),
        // `https://host?x` and `https://host` have no path: `/`.
        Some(_) | None => return Err(ForwardAuthError::BadUrl),
    };
    if authority.contains('@') {
        return Err(ForwardAuthError::BadUrl);
    }
    Ok((https, authority, target))
}

fn strip_prefix_ignore_case<'t>(text: &'t str, prefix: &str) -> Option<&'t str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// The original request from its parts: `target` is origin-form (`/path?query`).
fn build(
    method: Method,
    https: bool,
    authority: &str,
    target: &str,
) -> Result<Original, ForwardAuthError> {
    if target.contains('#') {
        return Err(ForwardAuthError::BadUrl);
    }
    if authority.is_empty() || authority.contains(['@', '/', '\\', ' ', ',']) {
        return Err(ForwardAuthError::BadHost);
    }
    let host = route::canonical_host(authority).ok_or(ForwardAuthError::BadHost)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(ForwardAuthError::BadUrl);
    }
    let normalized = normalize::normalize(path).map_err(ForwardAuthError::BadPath)?;
    // Proxied, the path decided on is the path forwarded. Here the front proxy forwards the
    // client's spelling, not ours: a decision on `/docs/x` for `/admin/../docs/x` would let a
    // backend that resolves dot segments (or `//`, or `%61`) its own way route it under
    // `/admin`. So only a path that is already normalized is decided on; any other spelling is
    // read two ways and refused (percent-escapes' case aside, which no server reads apart).
    if !normalized.path.eq_ignore_ascii_case(path) {
        return Err(ForwardAuthError::BadPath(PathError::Ambiguous));
    }
    let path = normalized;
    Ok(Original {
        method,
        https,
        host,
        authority: authority.to_ascii_lowercase(),
        path,
        query: query.filter(|q| !q.is_empty()).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(contract: Contract) -> Endpoint {
        Endpoint {
            path: contract.default_path().into(),
            contract,
            trusted: vec![IpNet::parse("127.0.0.1").unwrap()],
            login_url: None,
            counters: Arc::new(ForwardAuthCounters::new(contract.default_path())),
        }
    }

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn nginx(url: &str, method: &str) -> Result<Original, ForwardAuthError> {
        let request = Request::get("/_portcullis/nginx")
            .header("x-original-url", url)
            .header("x-original-method", method)
            .body(())
            .unwrap();
        original(&request, &endpoint(Contract::Nginx), LOOPBACK)
    }

    #[test]
    fn the_nginx_contract_reads_an_absolute_url_and_normalizes_its_path() {
        let o = nginx("https://App.Example.com:8443/docs/b?x=1", "POST").unwrap();
        assert_eq!(o.method, Method::POST);
        assert!(o.https);
        assert_eq!(o.host, "app.example.com");
        assert_eq!(o.path.path, "/docs/b");
        assert_eq!(o.return_path(), "/docs/b?x=1");
        assert_eq!(o.authority, "app.example.com:8443");
        // Escapes' case is no second reading: `%c3%a9` is decided as the `%C3%A9` it is.
        let o = nginx("https://app.example.com/docs/caf%c3%a9", "GET").unwrap();
        assert_eq!(o.path.path, "/docs/caf%C3%A9");
    }

    #[test]
    fn an_envoy_check_whose_authority_and_host_disagree_is_refused() {
        let e = endpoint(Contract::Envoy);
        let request = Request::get("http://api.example.com/_portcullis/envoy/docs")
            .header("host", "admin.example.com")
            .body(())
            .unwrap();
        assert_eq!(
            original(&request, &e, LOOPBACK).unwrap_err(),
            ForwardAuthError::BadHost
        );
        let request = Request::get("http://API.example.com/_portcullis/envoy/docs")
            .header("host", "api.example.com")
            .body(())
            .unwrap();
        assert_eq!(
            original(&request, &e, LOOPBACK).unwrap().host,
            "api.example.com"
        );
    }

    #[test]
    fn a_path_the_backend_could_read_another_way_than_the_decision_is_refused() {
        // The front proxy forwards these spellings as they are: a backend resolving them its
        // own way (Werkzeug routes `/admin/../docs/x` under `/admin`) must never receive a
        // path allowed as `/docs/x`.
        for path in [
            "/admin/../docs/x",
            "/admin/%2e%2e/docs/x",
            "/admin//../docs/x",
            "/docs/./x",
            "//docs/x",
            "/docs//x",
            "/%64ocs/x",
        ] {
            assert_eq!(
                nginx(&format!("https://app.example.com{path}"), "GET").unwrap_err(),
                ForwardAuthError::BadPath(PathError::Ambiguous),
                "{path}"
            );
        }
    }

    #[test]
    fn malformed_original_urls_are_refused() {
        for url in [
            "/docs/x",
            "//app.example.com/docs",
            "ftp://app.example.com/docs",
            "https://app.example.com",
            "https://app.example.com?x=1",
            "https://user:pw@app.example.com/docs",
            "https://evil.com\\@app.example.com/docs",
            "https://app.example.com/docs#frag",
            "https://app.example.com/docs?x=1#frag",
            "https:///docs",
        ] {
            assert!(nginx(url, "GET").is_err(), "{url} was accepted");
        }
        for (url, error) in [
            (
                "https://a.example.com/docs%2F..%2Fadmin",
                ForwardAuthError::BadPath(PathError::Ambiguous),
            ),
            (
                "https://a.example.com/docs%zz",
                ForwardAuthError::BadPath(PathError::BadEncoding),
            ),
        ] {
            assert_eq!(nginx(url, "GET").unwrap_err(), error, "{url}");
        }
    }

    #[test]
    fn the_method_must_be_an_upper_case_token() {
        assert_eq!(
            nginx("https://a.example.com/", "get").unwrap_err(),
            ForwardAuthError::BadMethod
        );
        assert_eq!(
            nginx("https://a.example.com/", "").unwrap_err(),
            ForwardAuthError::BadMethod
        );
        assert_eq!(
            nginx("https://a.example.com/", "GET").unwrap().method,
            Method::GET
        );
    }

    #[test]
    fn headers_sent_twice_or_not_at_all_are_refused() {
        let request = Request::get("/_portcullis/forward")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "a.example.com")
            .header("x-forwarded-host", "b.example.com")
            .header("x-forwarded-uri", "/docs")
            .body(())
            .unwrap();
        assert_eq!(
            original(&request, &endpoint(Contract::Forwarded), LOOPBACK).unwrap_err(),
            ForwardAuthError::MissingHeader("X-Forwarded-Host")
        );
        let request = Request::get("/_portcullis/forward")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-host", "a.example.com")
            .body(())
            .unwrap();
        assert_eq!(
            original(&request, &endpoint(Contract::Forwarded), LOOPBACK).unwrap_err(),
            ForwardAuthError::MissingHeader("X-Forwarded-Uri")
        );
    }

    #[test]
    fn an_untrusted_peer_is_refused_before_any_header_is_read() {
        let request = Request::get("/_portcullis/nginx").body(()).unwrap();
        let stranger: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            original(&request, &endpoint(Contract::Nginx), stranger).unwrap_err(),
            ForwardAuthError::UntrustedPeer
        );
    }

    #[test]
    fn the_envoy_contract_appends_the_original_path_to_the_prefix() {
        let e = endpoint(Contract::Envoy);
        assert!(e.addressed_by("/_portcullis/envoy/docs"));
        assert!(e.addressed_by("/_portcullis/envoy/"));
        assert!(!e.addressed_by("/_portcullis/envoy"));
        assert!(!e.addressed_by("/_portcullis/envoyx/docs"));
        let spelled = |path: &str| {
            Request::post(format!("/_portcullis/envoy{path}"))
                .header("host", "api.example.com")
                .header("x-forwarded-proto", "http")
                .body(())
                .unwrap()
        };
        assert_eq!(
            original(&spelled("/docs/../api?q=1"), &e, LOOPBACK).unwrap_err(),
            ForwardAuthError::BadPath(PathError::Ambiguous),
            "a spelling the backend may read another way"
        );
        let o = original(&spelled("/api?q=1"), &e, LOOPBACK).unwrap();
        assert_eq!(o.method, Method::POST);
        assert!(!o.https);
        assert_eq!(o.host, "api.example.com");
        assert_eq!(o.path.path, "/api");
        assert_eq!(o.query.as_deref(), Some("q=1"));
    }

    #[test]
    fn the_forwarded_contract_takes_the_uri_in_origin_form_only() {
        let e = endpoint(Contract::Forwarded);
        let ask = |uri: &str| {
            let request = Request::get("/_portcullis/forward")
                .header("x-forwarded-method", "GET")
                .header("x-forwarded-host", "a.example.com")
                .header("x-forwarded-uri", uri)
                .body(())
                .unwrap();
            original(&request, &e, LOOPBACK)
        };
        assert_eq!(ask("/docs/x?y").unwrap().path.path, "/docs/x");
        assert!(ask("https://a.example.com/docs").is_err());
        assert!(ask("docs").is_err());
        assert!(ask("/docs#x").is_err());
        assert!(ask("/docs%2fx").is_err());
    }
}
