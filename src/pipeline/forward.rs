//! Stage 7, **forward**: send the mutated request to the route's upstream and stream the answer.
//!
//! Runs last, only for requests every earlier stage accepted. `Ok` is the upstream's response
//! (hop-by-hop headers removed, body streamed unbuffered); `Err` is 502 (refused, reset,
//! protocol error), 504 (no response head within `response_timeout`) or 413 (the body grew past
//! the route's limit while streaming). Connections are pooled and kept alive per upstream.
//! A WebSocket handshake (the only `Upgrade` the pipeline lets through, see
//! [`crate::pipeline`]) is passed on and, on a `101` that switches to `websocket`, the two
//! connections are spliced together until either side closes. Any other `101` — to a request
//! that was no WebSocket handshake, or switching to another protocol such as `h2c` — is
//! [`ForwardError::Upgrade`]: 502, the upstream connection dropped unjoined and the
//! client's closed, so nothing either side sends next is read as a request
//! (docs/security.md 34).
//!
//! The built-in `echo` upstream answers in-process with what it received, as JSON, so the
//! example config works with no other service and tests can see what a backend would see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{BodyError, GatewayBody};
use crate::pipeline::mutate;
use crate::pipeline::pool::H1Pool;

/// Why a request was not answered by its upstream. The variants the client caused (its body)
/// are told apart from the upstream's failures, because they are answered differently: the
/// crate's error vocabulary maps each to its status and reason id.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The upstream refused, reset or broke the protocol (502).
    #[error("upstream unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No response head within `response_timeout` (504).
    #[error("upstream timed out")]
    Timeout,
    /// A `101` nothing asked for, or one switching to anything but `websocket` (502).
    #[error("unexpected protocol switch from the upstream")]
    Upgrade,
    /// The request body grew past the route's limit while streaming (413).
    #[error("request body too large")]
    BodyTooLarge,
    /// The client stalled sending its body (408).
    #[error("request body stalled")]
    BodyStalled,
    /// The client's body broke off or was badly chunked (400).
    #[error("request body incomplete or malformed")]
    BodyIncomplete,
}

impl From<&BodyError> for ForwardError {
    fn from(e: &BodyError) -> Self {
        match e {
            BodyError::TooLarge => ForwardError::BodyTooLarge,
            BodyError::Stalled => ForwardError::BodyStalled,
            BodyError::Stream(_) => ForwardError::BodyIncomplete,
        }
    }
}

/// Timeouts and pool settings of an HTTP upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the response head arrives.
    pub response_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept per host.
    pub max_idle_per_host: usize,
    /// Speak HTTP/2 (prior knowledge on `http://`, ALPN `h2` on `https://`).
    pub h2: bool,
    /// Send the client's `Host` rather than the upstream's authority.
    pub preserve_host: bool,
}

/// A real HTTP(S) origin with its connection pool.
pub struct HttpUpstream {
    scheme: Scheme,
    authority: Authority,
    /// Path prefix prepended to every forwarded path, without a trailing slash.
    base_path: String,
    /// `Host` for HTTP/1.1 requests, made once: left to the client, it is formatted anew for
    /// every request.
    host: HeaderValue,
    client: Client<HttpsConnector<HttpConnector>, GatewayBody>,
    /// Plain-`http://` HTTP/1.1 upstreams: their own pool, used for everything but upgrades.
    pool: Option<Arc<H1Pool>>,
    settings: UpstreamSettings,
}

impl std::fmt::Debug for HttpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpUpstream")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Where a route sends its requests.
#[derive(Debug)]
pub enum Upstream {
    /// The built-in echo service.
    Echo,
    /// An HTTP(S) origin.
    Http(Box<HttpUpstream>),
}

impl HttpUpstream {
    /// Builds the pooled client for `url`. `tls` is the client TLS config for `https://`.
    pub fn new(
        url: &Uri,
        tls: rustls::ClientConfig,
        settings: UpstreamSettings,
    ) -> Result<Self, String> {
        let scheme = url
            .scheme()
            .cloned()
            .ok_or("the URL needs http:// or https://")?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("scheme `{scheme}` is not http or https"));
        }
        let authority = url.authority().cloned().ok_or("the URL has no host")?;
        if url.query().is_some() {
            return Err("the URL must not have a query".into());
        }
        let base_path = url.path().trim_end_matches('/').to_owned();
        // As hyper-util writes it: the host, and the port unless it is the scheme's default.
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::from_str(&host).map_err(|_| "the URL's host is not valid")?;
        let pool = (scheme == Scheme::HTTP && !settings.h2).then(|| {
            let port = authority.port_u16().unwrap_or(80);
            // `host()` keeps an IPv6 literal in brackets, as `TcpStream::connect` wants it.
            H1Pool::new(
                format!("{}:{port}", authority.host()),
                settings.connect_timeout,
                settings.idle_timeout,
                settings.max_idle_per_host,
            )
        });

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if settings.h2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(settings.h2)
            .build(connector);
        Ok(Self {
            scheme,
            authority,
            base_path,
            host,
            client,
            pool,
            settings,
        })
    }
}

/// The request as the forward stage receives it.
#[derive(Debug)]
pub struct Outgoing {
    /// Method, mutated headers, body and extensions (for upgrades). Its URI is replaced.
    pub request: Request<GatewayBody>,
    /// The normalized path that was authorized.
    pub path: String,
    /// The query string, unchanged.
    pub query: Option<String>,
    /// The client's `Host`, for `preserve_host`.
    pub client_host: Option<HeaderValue>,
    /// A well-formed WebSocket handshake, on a route that allows them.
    pub upgrade: bool,
}

/// The stage's entry point.
pub async fn forward(
    upstream: &Upstream,
    outgoing: Outgoing,
) -> Result<Response<GatewayBody>, ForwardError> {
    match upstream {
        Upstream::Echo => echo(outgoing).await,
        Upstream::Http(http) => forward_http(http, outgoing).await,
    }
}

async fn forward_http(
    up: &HttpUpstream,
    out: Outgoing,
) -> Result<Response<GatewayBody>, ForwardError> {
    let Outgoing {
        mut request,
        path,
        query,
        client_host,
        upgrade,
    } = out;
    let mut path_and_query = String::with_capacity(
        up.base_path.len() + path.len() + 1 + query.as_ref().map_or(0, String::len),
    );
    path_and_query.push_str(&up.base_path);
    path_and_query.push_str(&path);
    if let Some(q) = &query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let path_and_query = PathAndQuery::try_from(path_and_query)
        .map_err(|e| ForwardError::Unavailable(Box::new(e)))?;
    let pooled = up.pool.as_ref().filter(|_| !upgrade);
    *request.uri_mut() = if pooled.is_some() {
        // hyper's connection API writes the URI as given: origin-form, as RFC 9112 asks of a
        // request to an origin server.
        Uri::from(path_and_query)
    } else {
        // hyper-util's client picks the connection by the URI and writes origin-form itself.
        Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ForwardError::Unavailable(Box::new(e)))?
    };
    *request.version_mut() = if up.settings.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    if up.settings.preserve_host
        && let Some(host) = client_host
    {
        request.headers_mut().insert(HOST, host);
    } else if !up.settings.h2 {
        request.headers_mut().insert(HOST, up.host.clone());
    }
    if let Some(pool) = pooled {
        let (response, mut lease) = exchange(up, pool.send(request)).await?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // Nothing was asked to switch. Dropping the lease unfinished closes the
            // connection (hyper hands a 101 connection to nobody without `with_upgrades`).
            return Err(ForwardError::Upgrade);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if body.is_end_stream() {
            // Nothing will poll an empty body (HEAD, 204, 304, `Content-Length: 0`).
            lease.finished();
        }
        let body = GatewayBody::Pooled { inner: body, lease };
        return Ok(Response::from_parts(parts, body));
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));

    let response = exchange(up, up.client.request(request)).await?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Dropping the response drops its pending upgrade, which closes the connection.
        return match client_upgrade {
            Some(client_upgrade) if switches_to_websocket(response.headers()) => {
                Ok(splice(response, client_upgrade))
            }
            Some(_) | None => Err(ForwardError::Upgrade),
        };
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, GatewayBody::stream(body)))
}

/// Whether a `101`'s `Upgrade` is exactly `websocket` (RFC 6455 §4.2.2).
fn switches_to_websocket(headers: &HeaderMap) -> bool {
    let mut upgrades = headers.get_all(http::header::UPGRADE).iter();
    matches!(
        (upgrades.next(), upgrades.next()),
        (Some(only), None) if only.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

/// Answers the client's upgrade with the upstream's `101` and joins the two connections.
fn splice(
    mut upstream_response: Response<hyper::body::Incoming>,
    client: hyper::upgrade::OnUpgrade,
) -> Response<GatewayBody> {
    let upstream = hyper::upgrade::on(&mut upstream_response);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        // Ends when either side closes or errors; both halves are then dropped.
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
    let (parts, _) = upstream_response.into_parts();
    Response::from_parts(parts, GatewayBody::Empty)
}

/// Waits for an upstream's response head, by either client, within `response_timeout`: 504 after
/// it, the client's own refusal when sending its body failed ([`body_refusal`]), 502 otherwise.
async fn exchange<T, E>(
    up: &HttpUpstream,
    sent: impl Future<Output = Result<T, E>>,
) -> Result<T, ForwardError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(up.settings.response_timeout, sent).await {
        Err(_) => Err(ForwardError::Timeout),
        Ok(Err(e)) => {
            Err(body_refusal(&e).unwrap_or_else(|| ForwardError::Unavailable(Box::new(e))))
        }
        Ok(Ok(response)) => Ok(response),
    }
}

/// The client's refusal behind an upstream exchange that failed while sending the request
/// body: the body grew past the route's limit (413), the client stalled (408), or the client's
/// body broke off or was badly chunked (400, not an upstream failure).
fn body_refusal(e: &(dyn std::error::Error + 'static)) -> Option<ForwardError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        match err.downcast_ref::<BodyError>() {
            Some(body) => return Some(body.into()),
            None => cause = err.source(),
        }
    }
    None
}

/// Removes hop-by-hop headers from an upstream response.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) response headers instead of a hashed removal per hop-by-hop
    // name; nothing is allocated when there is nothing to remove, the usual case.
    let mut doomed = mutate::connection_listed(headers);
    doomed.extend(
        headers
            .keys()
            .filter(|n| mutate::HOP_BY_HOP.contains(&n.as_str()))
            .cloned(),
    );
    for name in &doomed {
        headers.remove(name);
    }
}

/// The built-in echo service: method, path, query, headers and body size, as JSON.
async fn echo(out: Outgoing) -> Result<Response<GatewayBody>, ForwardError> {
    let (parts, body) = out.request.into_parts();
    let body_bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(e) => return Err(ForwardError::from(&e)),
    };
    let mut headers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(value.to_str().unwrap_or("<non-ascii>"));
    }
    let report = serde_json::json!({
        "method": parts.method.as_str(),
        "path": out.path,
        "query": out.query,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(GatewayBody::full(Bytes::from(report.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
