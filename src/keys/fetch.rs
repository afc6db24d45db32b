//! Fetching an issuer's documents (the discovery document and the JWKS) over HTTPS, and the
//! one POST the OpenID login flow makes (the authorization code to the token endpoint).
//!
//! One request per document through the same hyper client stack as the upstreams (hyper-util's
//! legacy client over hyper-rustls, aws-lc-rs), with the issuer's roots: the system's, or its
//! `ca` file. What an attacker on the path or a compromised provider could use to make the
//! gateway wait, allocate or go elsewhere is bounded here:
//! - `https://` only; `http://` only to a loopback address (tests, a sidecar), checked when
//!   the config is compiled and again for a `jwks_uri` a discovery document names;
//! - a connect timeout, and one deadline for the whole response (head and body);
//! - a size limit enforced while the body is read, never after;
//! - redirects are not followed: a 3xx is an error (a redirect would move trust to a URL the
//!   operator never configured).
//!
//! Nothing here decides what the documents mean: [`super::remote`] does.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Why a document could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The connection failed or broke (DNS, refused, TLS, reset, connect timeout).
    #[error("cannot reach {uri}: {source}")]
    Connect {
        /// The URL.
        uri: String,
        /// The client's error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The whole response did not arrive within the read timeout.
    #[error("{uri} did not answer within {timeout:?}")]
    Timeout {
        /// The URL.
        uri: String,
        /// The deadline.
        timeout: Duration,
    },
    /// A redirect: never followed.
    #[error("{uri} answered {status}: redirects are not followed")]
    Redirect {
        /// The URL.
        uri: String,
        /// The 3xx status.
        status: u16,
    },
    /// Any other status but 200.
    #[error("{uri} answered {status}")]
    Status {
        /// The URL.
        uri: String,
        /// The status.
        status: u16,
    },
    /// A token endpoint's error answer (RFC 6749 5.2): 400 or 401 with a JSON `error`.
    #[error("{uri} answered {status} with error `{error}`")]
    OAuth {
        /// The URL.
        uri: String,
        /// The status.
        status: u16,
        /// The `error` code (`invalid_grant`, …).
        error: String,
    },
    /// The body is larger than the limit (or broke off).
    #[error("{uri}: the document is larger than {max} bytes or broke off")]
    Body {
        /// The URL.
        uri: String,
        /// The limit.
        max: usize,
    },
    /// The body is not a JSON object.
    #[error("{uri} is not a JSON object: {source}")]
    Json {
        /// The URL.
        uri: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A URL a document names is not one the gateway may fetch.
    #[error("{0}")]
    Url(#[from] UrlError),
}

/// Why a URL may not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not a URL with a host.
    #[error("`{0}` is not an absolute URL")]
    Malformed(String),
    /// `http://` to a host that is not loopback, or another scheme.
    #[error("`{0}` must be https:// (plain http:// only to a loopback address)")]
    Insecure(String),
}

/// Checks that `url` may be fetched: `https://`, or `http://` to `localhost`, `127.0.0.0/8` or
/// `::1` (where no one else is on the path).
pub fn check_url(url: &str) -> Result<Uri, UrlError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| UrlError::Malformed(url.to_owned()))?;
    let Some(host) = uri.host() else {
        return Err(UrlError::Malformed(url.to_owned()));
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Credentials in a URL end up in logs; and `https://a@b` is a classic confusion.
        return Err(UrlError::Malformed(url.to_owned()));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        _ => Err(UrlError::Insecure(url.to_owned())),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The limits of one issuer's fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// TCP and TLS connection.
    pub connect_timeout: Duration,
    /// The whole response, head and body.
    pub read_timeout: Duration,
    /// The largest body.
    pub max_bytes: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            max_bytes: 1024 * 1024,
        }
    }
}

/// An HTTP client for one issuer's documents.
pub struct Fetcher {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    limits: FetchLimits,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A fetched JSON document and how long its server says it may be cached.
#[derive(Debug)]
pub struct Document {
    /// The body, parsed.
    pub json: serde_json::Value,
    /// `Cache-Control: max-age`, when the response has one (and no `no-store`/`no-cache`).
    pub max_age: Option<Duration>,
}

impl Fetcher {
    /// A client trusting `tls`'s roots, within `limits`. Builds no connection.
    pub fn new(tls: rustls::ClientConfig, limits: FetchLimits) -> Self {
        let mut http = HttpConnector::new();
        // The scheme is checked by `check_url`; the connector must let https through.
        http.enforce_http(false);
        http.set_connect_timeout(Some(limits.connect_timeout));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // A refresh every few minutes at most: keeping connections buys nothing.
            .pool_max_idle_per_host(0)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self { client, limits }
    }

    /// GETs `uri` and parses its body as JSON, within the limits.
    pub async fn get_json(&self, uri: &Uri) -> Result<Document, FetchError> {
        let url = uri.to_string();
        let timeout = self.limits.read_timeout;
        tokio::time::timeout(timeout, self.get_inner(uri, &url))
            .await
            .map_err(|_| FetchError::Timeout { uri: url, timeout })?
    }

    async fn get_inner(&self, uri: &Uri, url: &str) -> Result<Document, FetchError> {
        let request = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis")
            .body(Full::default())
            .map_err(|_| UrlError::Malformed(url.to_owned()))?;
        self.send(request, url, false).await
    }

    /// POSTs the `application/x-www-form-urlencoded` `form` to `uri` with HTTP Basic
    /// `client_id`:`secret` (RFC 6749 2.3.1: both form-urlencoded first), within the same
    /// limits as a GET, and parses the JSON answer. Only a 200 is a document. `uri` must have
    /// passed [`check_url`].
    pub async fn post_form(
        &self,
        uri: &Uri,
        form: String,
        client_id: &str,
        secret: &str,
    ) -> Result<Document, FetchError> {
        let url = uri.to_string();
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("{}:{}", form_encode(client_id), form_encode(secret)),
        );
        let request = Request::post(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "portcullis")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::AUTHORIZATION, format!("Basic {basic}"))
            .body(Full::new(Bytes::from(form)))
            .map_err(|_| UrlError::Malformed(url.clone()))?;
        let timeout = self.limits.read_timeout;
        tokio::time::timeout(timeout, self.send(request, &url, true))
            .await
            .map_err(|_| FetchError::Timeout { uri: url, timeout })?
    }

    /// With `oauth_errors`, a 400 or 401 whose body names an `error` is [`FetchError::OAuth`].
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
        url: &str,
        oauth_errors: bool,
    ) -> Result<Document, FetchError> {
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| FetchError::Connect {
                    uri: url.to_owned(),
                    source,
                })?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect {
                uri: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if oauth_errors && (status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED)
        {
            let error = Limited::new(response.into_body(), self.limits.max_bytes)
                .collect()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b.to_bytes()).ok())
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            return Err(match error {
                Some(error) => FetchError::OAuth {
                    uri: url.to_owned(),
                    status: status.as_u16(),
                    error,
                },
                None => FetchError::Status {
                    uri: url.to_owned(),
                    status: status.as_u16(),
                },
            });
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                uri: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let max_age = max_age(response.headers());
        let max = self.limits.max_bytes;
        // `Limited` stops reading at `max` bytes: a huge (or endless) body costs no more.
        let body = Limited::new(response.into_body(), max)
            .collect()
            .await
            .map_err(|_| FetchError::Body {
                uri: url.to_owned(),
                max,
            })?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|source| FetchError::Json {
                uri: url.to_owned(),
                source,
            })?;
        Ok(Document { json, max_age })
    }
}

/// `value` in `application/x-www-form-urlencoded` form: unreserved bytes as they are, every
/// other byte `%XX`.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `max-age` of `Cache-Control`; `None` when absent, unparsable, or the response says not to
/// reuse it (`no-store`, `no-cache`), which the caller answers with its shortest interval.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let lower = directive.to_ascii_lowercase();
            if lower == "no-store" || lower == "no-cache" {
                return None;
            }
            if let Some(secs) = lower.strip_prefix("max-age=") {
                age = secs
                    .trim_matches('"')
                    .parse::<u64>()
                    .ok()
                    .map(Duration::from_secs);
            }
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_may_be_fetched() {
        assert!(check_url("https://idp.example/.well-known/openid-configuration").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://[::1]:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        for bad in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "ftp://idp.example/jwks",
        ] {
            assert_eq!(check_url(bad), Err(UrlError::Insecure(bad.into())), "{bad}");
        }
        assert!(check_url("file:///etc/passwd").is_err());
        assert!(matches!(
            check_url("https://user@idp.example/jwks"),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(check_url("/jwks"), Err(UrlError::Malformed(_))));
    }

    #[test]
    fn cache_control_max_age_is_read_and_no_store_wins() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert("cache-control", "public, max-age=3600".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(3600)));
        h.insert("cache-control", "max-age=60, no-store".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }
}
