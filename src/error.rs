//! Every way a request can be refused, and the one function that turns a refusal into a response.
//!
//! [`error_response`] has no side effects and tells the client little: a status, a short error
//! code, the request id to quote to support, and for 401 the `WWW-Authenticate` challenge (RFC
//! 6750). It never echoes a token, a claim or a header value. Details go to the log line the
//! pipeline writes with [`GatewayError::reason_id`]. Every match here is exhaustive, so a new
//! variant cannot silently become a 500.

use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::body::GatewayBody;
use crate::pipeline::authorize::Forbidden;
use crate::pipeline::credential::CredentialError;
use crate::pipeline::forward::ForwardError;
use crate::pipeline::forward_auth::{Contract, ForwardAuthError, LOGIN_HEADER};
use crate::pipeline::identify::IdentifyError;
use crate::pipeline::normalize::PathError;
use crate::pipeline::route::RouteError;
use crate::pipeline::session::Refusal;
use crate::pipeline::verify::TokenError;
use crate::store::StoreError;
use crate::users::LoginFailure;

/// A malformed request: 400 (or 431/413), and the upstream sees nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The path cannot be normalized unambiguously.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The `Host` header (or authority) is malformed, repeated, or disagrees with the URI.
    #[error("invalid host")]
    Host,
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    #[error("missing host")]
    MissingHost,
    /// Both `Content-Length` and `Transfer-Encoding`, or a `Transfer-Encoding` other than chunked.
    #[error("ambiguous message framing")]
    Framing,
    /// The request body ended before its declared length, or its chunked encoding is broken:
    /// the client's fault, not the upstream's.
    #[error("request body incomplete or malformed")]
    Body,
}

/// Why a state-changing request was refused as cross-site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    /// `Sec-Fetch-Site` names another site, or `Origin` another origin.
    #[error("cross-site request")]
    CrossSite,
    /// The CSRF token is missing or does not match the cookie.
    #[error("missing or wrong CSRF token")]
    Token,
}

impl CsrfError {
    /// A stable identifier for logs and audit.
    pub fn reason_id(self) -> &'static str {
        match self {
            CsrfError::CrossSite => "csrf.cross_site",
            CsrfError::Token => "csrf.token",
        }
    }
}

/// Why a refresh was refused (for the audit trail; the client is told only `invalid_grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefreshFailure {
    /// No refresh token: neither in the body nor a refresh cookie.
    #[error("no refresh token")]
    Missing,
    /// Not a refresh token, unknown, expired, or its session ended.
    #[error("refresh token invalid")]
    Invalid,
    /// A browser's (bound) refresh token sent in a body instead of its cookie.
    #[error("bound refresh token in a body")]
    BoundInBody,
    /// Doubled or conflicting access credentials next to the refresh token.
    #[error("mixed credentials: {0}")]
    MixedCredentials(CredentialError),
    /// An access token of another user next to the refresh token (docs/security.md 21).
    #[error("access token of another subject")]
    SubjectMismatch,
    /// The user no longer exists or is disabled; the session was ended.
    #[error("user unknown or disabled")]
    UserDisabled,
    /// Refresh cookies none of which is bound to this browser (docs/security.md 36).
    #[error("refresh cookie not bound to this browser")]
    Unbound,
    /// The OpenID Provider refused the session's refresh token (`invalid_grant`: the user's
    /// grant there was revoked or expired); the session was ended (docs/security.md 41).
    #[error("the provider refused the session's refresh token")]
    ProviderRefused,
}

impl RefreshFailure {
    /// A stable identifier for logs and audit.
    pub fn reason_id(self) -> &'static str {
        match self {
            RefreshFailure::Missing => "refresh.missing",
            RefreshFailure::Invalid => "refresh.invalid",
            RefreshFailure::BoundInBody => "refresh.bound_in_body",
            RefreshFailure::MixedCredentials(e) => e.reason_id(),
            RefreshFailure::SubjectMismatch => "refresh.subject_mismatch",
            RefreshFailure::UserDisabled => "refresh.user_disabled",
            RefreshFailure::Unbound => "refresh.unbound",
            RefreshFailure::ProviderRefused => "refresh.provider_refused",
        }
    }
}

/// A refusal by the auth flow (`/auth/*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A cross-site request or a missing/wrong CSRF token on a state-changing endpoint.
    #[error(transparent)]
    Csrf(#[from] CsrfError),
    /// Wrong username or password, or a disabled user (the client is not told which).
    #[error("login failed: {0}")]
    LoginFailed(LoginFailure),
    /// Too many failed logins from this address or for this username.
    #[error("login throttled")]
    Throttled {
        /// Seconds until the window ends.
        retry_after: u64,
    },
    /// The refresh token is missing, unknown, expired, or names a disabled user.
    #[error("refresh refused: {0}")]
    RefreshInvalid(RefreshFailure),
    /// A used refresh token came back outside the grace window: its session was revoked.
    #[error("refresh token reuse")]
    RefreshReuse,
    /// The endpoint needs a signed-in user.
    #[error("not signed in")]
    NotSignedIn,
    /// The session to revoke is not one of the caller's.
    #[error("no such session")]
    SessionNotFound,
    /// The body is not the form or JSON the endpoint expects.
    #[error("malformed body")]
    BadBody,
    /// The body is neither a form nor JSON.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// Every password-verification slot stayed taken (a login flood); try again shortly.
    #[error("login busy")]
    Busy,
}

impl AuthError {
    /// The `Retry-After` a throttled login is answered with.
    pub fn retry_after(self) -> Option<u64> {
        match self {
            AuthError::Throttled { retry_after } => Some(retry_after),
            AuthError::Csrf(_)
            | AuthError::LoginFailed(_)
            | AuthError::RefreshInvalid(_)
            | AuthError::RefreshReuse
            | AuthError::NotSignedIn
            | AuthError::SessionNotFound
            | AuthError::BadBody
            | AuthError::UnsupportedMediaType
            | AuthError::Busy => None,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            AuthError::Csrf(_) => StatusCode::FORBIDDEN,
            AuthError::LoginFailed(_)
            | AuthError::RefreshInvalid(_)
            | AuthError::RefreshReuse
            | AuthError::NotSignedIn => StatusCode::UNAUTHORIZED,
            AuthError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::SessionNotFound => StatusCode::NOT_FOUND,
            AuthError::BadBody => StatusCode::BAD_REQUEST,
            AuthError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AuthError::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn reason_id(self) -> &'static str {
        match self {
            AuthError::Csrf(e) => e.reason_id(),
            AuthError::LoginFailed(failure) => failure.reason_id(),
            AuthError::RefreshInvalid(failure) => failure.reason_id(),
            AuthError::Throttled { .. } => "login.throttled",
            AuthError::RefreshReuse => "refresh.reuse_detected",
            AuthError::NotSignedIn => "auth.not_signed_in",
            AuthError::SessionNotFound => "session.not_found",
            AuthError::BadBody => "request.body",
            AuthError::UnsupportedMediaType => "request.media_type",
            AuthError::Busy => "login.busy",
        }
    }

    fn code(self) -> &'static str {
        match self {
            AuthError::Csrf(_) => "forbidden",
            AuthError::LoginFailed(_) => "invalid_credentials",
            AuthError::Throttled { .. } => "too_many_attempts",
            AuthError::RefreshInvalid(_) | AuthError::RefreshReuse => "invalid_grant",
            AuthError::NotSignedIn => "unauthorized",
            AuthError::SessionNotFound => "not_found",
            AuthError::BadBody => "invalid_request",
            AuthError::UnsupportedMediaType => "unsupported_media_type",
            AuthError::Busy => "temporarily_unavailable",
        }
    }
}

/// Why the gateway answered instead of the upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Malformed input.
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// No route, or a method the route does not allow.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A route that needs a token, and none was presented.
    #[error("no credential")]
    MissingCredential,
    /// A credential was presented but cannot be used.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The token failed verification.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token verified but its session, `jti` or user is revoked.
    #[error("session refused: {}", .0.reason_id())]
    Session(Refusal),
    /// The identity lacks a permission.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// The request body exceeds the route's limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The client stopped sending the request body (`limits.body_read_timeout`).
    #[error("request body stalled")]
    BodyStalled,
    /// The session store cannot answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The token's issuer is configured by discovery or JWKS URI and no key set could be
    /// fetched yet: the token can be neither accepted nor called invalid.
    #[error("issuer keys unavailable")]
    KeysUnavailable,
    /// The upstream refused the connection or broke the exchange.
    #[error("upstream unavailable")]
    UpstreamUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream answered `101 Switching Protocols` to a request that was not a WebSocket
    /// handshake the gateway forwarded, or switched to something other than `websocket`
    /// (an `h2c` upgrade would let later requests bypass every check; docs/security.md 34).
    #[error("upstream switched protocols unasked")]
    UpstreamUpgrade,
    /// The user of a gateway-issued token no longer exists or is disabled (docs/security.md 11).
    #[error("user unknown or disabled")]
    UserDisabled,
    /// A refusal by the auth flow.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A forward-auth sub-request that cannot be decided (untrusted peer, malformed original
    /// request).
    #[error(transparent)]
    ForwardAuth(#[from] ForwardAuthError),
    /// A bug or a broken key: 500, details in the log only.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<ForwardError> for GatewayError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Unavailable(cause) => GatewayError::UpstreamUnavailable(cause),
            ForwardError::Timeout => GatewayError::UpstreamTimeout,
            ForwardError::Upgrade => GatewayError::UpstreamUpgrade,
            ForwardError::BodyTooLarge => GatewayError::PayloadTooLarge,
            ForwardError::BodyStalled => GatewayError::BodyStalled,
            ForwardError::BodyIncomplete => GatewayError::BadRequest(BadRequest::Body),
        }
    }
}

impl From<IdentifyError> for GatewayError {
    fn from(refused: IdentifyError) -> Self {
        match refused {
            IdentifyError::MissingCredential => GatewayError::MissingCredential,
            IdentifyError::BadCredential(e) => GatewayError::Credential(e),
            IdentifyError::TokenRefused(e) => GatewayError::Token(e),
            IdentifyError::SessionRefused { refusal, .. } => GatewayError::Session(refusal),
            IdentifyError::UserDisabled { .. } => GatewayError::UserDisabled,
            IdentifyError::StoreUnavailable { source, .. } => GatewayError::Store(source),
            IdentifyError::KeysUnavailable { .. } => GatewayError::KeysUnavailable,
        }
    }
}

impl GatewayError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            GatewayError::Route(RouteError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::MissingCredential => StatusCode::UNAUTHORIZED,
            GatewayError::Credential(e) => match e {
                CredentialError::DuplicateAuthorization
                | CredentialError::DuplicateCookie
                | CredentialError::Conflicting => StatusCode::BAD_REQUEST,
                CredentialError::NotBearer | CredentialError::BadCharacters => {
                    StatusCode::UNAUTHORIZED
                }
            },
            GatewayError::Token(_) | GatewayError::Session(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Store(_) | GatewayError::KeysUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::UpstreamUpgrade => StatusCode::BAD_GATEWAY,
            GatewayError::UserDisabled => StatusCode::UNAUTHORIZED,
            GatewayError::Auth(e) => e.status(),
            GatewayError::ForwardAuth(ForwardAuthError::UntrustedPeer) => StatusCode::FORBIDDEN,
            GatewayError::ForwardAuth(_) => StatusCode::BAD_REQUEST,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable identifier for logs, metrics and audit events.
    pub fn reason_id(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(BadRequest::Path(_)) => "request.path",
            GatewayError::BadRequest(BadRequest::Host) => "request.host",
            GatewayError::BadRequest(BadRequest::MissingHost) => "request.host_missing",
            GatewayError::BadRequest(BadRequest::Framing) => "request.framing",
            GatewayError::BadRequest(BadRequest::Body) => "request.body_incomplete",
            GatewayError::Route(RouteError::NotFound) => "route.not_found",
            GatewayError::Route(RouteError::MethodNotAllowed) => "route.method_not_allowed",
            GatewayError::MissingCredential => "credential.missing",
            GatewayError::Credential(e) => e.reason_id(),
            GatewayError::Token(e) => e.reason_id(),
            GatewayError::Session(v) => v.reason_id(),
            GatewayError::Forbidden(_) => "authz.forbidden",
            GatewayError::PayloadTooLarge => "request.body_too_large",
            GatewayError::BodyStalled => "request.body_stalled",
            GatewayError::Store(_) => "store.unavailable",
            GatewayError::KeysUnavailable => "keys.unavailable",
            GatewayError::UpstreamUnavailable(_) => "upstream.unavailable",
            GatewayError::UpstreamTimeout => "upstream.timeout",
            GatewayError::UpstreamUpgrade => "upstream.unexpected_upgrade",
            GatewayError::UserDisabled => "user.disabled",
            GatewayError::Auth(e) => e.reason_id(),
            GatewayError::ForwardAuth(e) => e.reason_id(),
            GatewayError::Internal(_) => "internal",
        }
    }

    /// The short code in the JSON body (RFC 6750 names where one applies).
    fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "invalid_request",
            GatewayError::Route(RouteError::NotFound) => "not_found",
            GatewayError::Route(RouteError::MethodNotAllowed) => "method_not_allowed",
            GatewayError::MissingCredential => "unauthorized",
            GatewayError::Credential(e) => match e {
                CredentialError::DuplicateAuthorization
                | CredentialError::DuplicateCookie
                | CredentialError::Conflicting => "invalid_request",
                CredentialError::NotBearer | CredentialError::BadCharacters => "invalid_token",
            },
            GatewayError::Token(_) | GatewayError::Session(_) => "invalid_token",
            GatewayError::Forbidden(_) => "insufficient_scope",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::BodyStalled => "request_timeout",
            GatewayError::Store(_) | GatewayError::KeysUnavailable => "temporarily_unavailable",
            GatewayError::UpstreamUnavailable(_) => "bad_gateway",
            GatewayError::UpstreamTimeout => "gateway_timeout",
            GatewayError::UpstreamUpgrade => "bad_gateway",
            GatewayError::UserDisabled => "invalid_token",
            GatewayError::Auth(e) => e.code(),
            GatewayError::ForwardAuth(ForwardAuthError::UntrustedPeer) => "forbidden",
            GatewayError::ForwardAuth(_) => "invalid_request",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    /// Whether a browser navigation should be sent to the login page instead.
    fn wants_login(&self) -> bool {
        match self {
            GatewayError::MissingCredential
            | GatewayError::Token(_)
            | GatewayError::Session(_)
            | GatewayError::UserDisabled
            | GatewayError::Auth(AuthError::NotSignedIn)
            | GatewayError::Credential(
                CredentialError::NotBearer | CredentialError::BadCharacters,
            ) => true,
            GatewayError::BadRequest(_)
            | GatewayError::Route(_)
            | GatewayError::Credential(_)
            | GatewayError::Forbidden(_)
            | GatewayError::PayloadTooLarge
            | GatewayError::BodyStalled
            | GatewayError::Store(_)
            | GatewayError::KeysUnavailable
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::UpstreamTimeout
            | GatewayError::UpstreamUpgrade
            | GatewayError::Auth(_)
            | GatewayError::ForwardAuth(_)
            | GatewayError::Internal(_) => false,
        }
    }

    /// Whether the client connection is closed after this refusal: when the rest of its byte
    /// stream cannot be trusted to be what the client meant (ambiguous framing), or the
    /// client asked to switch protocols and whatever it sends next must not be read as HTTP/1.
    pub fn closes_connection(&self) -> bool {
        match self {
            // A body cut short or badly chunked: where the next request would start is
            // unknown too.
            GatewayError::BadRequest(BadRequest::Framing | BadRequest::Body)
            | GatewayError::UpstreamUpgrade => true,
            GatewayError::BadRequest(
                BadRequest::Path(_) | BadRequest::Host | BadRequest::MissingHost,
            )
            | GatewayError::Route(_)
            | GatewayError::MissingCredential
            | GatewayError::Credential(_)
            | GatewayError::Token(_)
            | GatewayError::Session(_)
            | GatewayError::Forbidden(_)
            | GatewayError::PayloadTooLarge
            | GatewayError::BodyStalled
            | GatewayError::Store(_)
            | GatewayError::KeysUnavailable
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::UpstreamTimeout
            | GatewayError::UserDisabled
            | GatewayError::Auth(_)
            | GatewayError::ForwardAuth(_)
            | GatewayError::Internal(_) => false,
        }
    }
}

/// What the error response may use from the request.
#[derive(Debug, Clone, Copy)]
pub struct ErrorContext<'a> {
    /// The request id, echoed so the client can quote it.
    pub request_id: &'a HeaderValue,
    /// The request is a top-level browser navigation.
    pub browser: bool,
    /// Where browsers log in, if configured.
    pub login_url: Option<&'a str>,
    /// The normalized path and query to come back to after login, or the absolute URL of
    /// [`crate::auth_flow::redirect::return_target`] when the login page is on another host.
    pub return_to: Option<&'a str>,
}

/// Headers every response the gateway makes itself carries.
pub fn harden(headers: &mut http::HeaderMap) {
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

/// The one place refusals become responses.
pub fn error_response(err: &GatewayError, ctx: &ErrorContext<'_>) -> Response<GatewayBody> {
    if ctx.browser
        && err.wants_login()
        && let Some(login) = ctx.login_url
    {
        let location = login_location(login, ctx.return_to);
        return login_redirect(StatusCode::SEE_OTHER, &location, ctx.request_id);
    }
    let status = err.status();
    let body = format!(
        "{{\"error\":\"{}\",\"request_id\":{}}}",
        err.code(),
        serde_json::Value::from(ctx.request_id.to_str().unwrap_or(""))
    );
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    harden(headers);
    headers.insert("x-request-id", ctx.request_id.clone());
    if err.closes_connection() {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::UNAUTHORIZED {
        let challenge = if matches!(err, GatewayError::MissingCredential | GatewayError::Auth(_)) {
            "Bearer realm=\"portcullis\""
        } else {
            "Bearer realm=\"portcullis\", error=\"invalid_token\""
        };
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    } else if matches!(err, GatewayError::Forbidden(_)) {
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"portcullis\", error=\"insufficient_scope\""),
        );
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    } else if let GatewayError::Auth(auth) = err
        && let Some(retry_after) = auth.retry_after()
    {
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
    }
    response
}

/// A forward-auth endpoint's refusal, shaped for the front proxy of `contract`: the refusal
/// [`error_response`] makes, except that no route (404, 405) is a 403 for every contract (a
/// request the route table does not know is denied, as a proxied one is), and how a browser
/// navigation that logging in would fix is sent there:
/// - `nginx` acts on nothing but 401 and 403 (anything else becomes a 500 there; a 503 is kept,
///   since it still refuses): 401 stays 401, with the login location in
///   [`LOGIN_HEADER`] for `error_page 401`; any other client error is a 403.
/// - `forwarded` and `envoy` pass the answer to the client: the redirect itself, 302 when the
///   original method was `GET` or `HEAD` and 303 otherwise (so the browser comes back with a
///   `GET`).
pub fn forward_auth_response(
    err: &GatewayError,
    ctx: &ErrorContext<'_>,
    contract: Contract,
    original_read: bool,
) -> Response<GatewayBody> {
    let login = (ctx.browser && err.wants_login())
        .then_some(ctx.login_url)
        .flatten()
        .map(|login| login_location(login, ctx.return_to));
    if contract != Contract::Nginx
        && let Some(location) = &login
    {
        let status = if original_read {
            StatusCode::FOUND
        } else {
            StatusCode::SEE_OTHER
        };
        return login_redirect(status, location, ctx.request_id);
    }
    let plain = ErrorContext {
        browser: false,
        ..*ctx
    };
    let mut response = error_response(err, &plain);
    let status = match (contract, response.status()) {
        (_, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) => StatusCode::FORBIDDEN,
        (Contract::Nginx, s)
            if s != StatusCode::UNAUTHORIZED
                && s != StatusCode::FORBIDDEN
                && s != StatusCode::SERVICE_UNAVAILABLE =>
        {
            StatusCode::FORBIDDEN
        }
        (_, s) => s,
    };
    *response.status_mut() = status;
    if let Some(location) = login
        && let Ok(value) = HeaderValue::from_str(&location)
    {
        response.headers_mut().insert(LOGIN_HEADER, value);
    }
    response
}

/// A redirect to the login page: `status`, `Location`, the hardening headers, the request id.
fn login_redirect(
    status: StatusCode,
    location: &str,
    request_id: &HeaderValue,
) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    harden(response.headers_mut());
    response
        .headers_mut()
        .insert("x-request-id", request_id.clone());
    response
}

/// `login?return_to=<path or URL>` with the return target percent-encoded. Query parameters that
/// commonly carry tokens are dropped so a token put in a URL by mistake is not copied further.
fn login_location(login: &str, return_to: Option<&str>) -> String {
    let Some(return_to) = return_to else {
        return login.to_owned();
    };
    let (path, query) = return_to.split_once('?').unwrap_or((return_to, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("").to_ascii_lowercase();
            !matches!(
                name.as_str(),
                "access_token" | "id_token" | "refresh_token" | "token" | "code" | "jwt"
            )
        })
        .collect();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let sep = if login.contains('?') { '&' } else { '?' };
    format!("{login}{sep}return_to={}", percent_encode(&target))
}

/// Percent-encodes everything but unreserved characters and `/`, for a value in a URL's query
/// (RFC 3986 §3.4 allows `/` there): the login redirect's return path, the admin CLI's user.
/// The one percent-encoder of the crate.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(rid: &HeaderValue) -> ErrorContext<'_> {
        ErrorContext {
            request_id: rid,
            browser: false,
            login_url: None,
            return_to: None,
        }
    }

    #[test]
    fn each_error_has_its_status() {
        let cases: Vec<(GatewayError, u16)> = vec![
            (BadRequest::Host.into(), 400),
            (BadRequest::MissingHost.into(), 400),
            (BadRequest::Path(PathError::NotUtf8).into(), 400),
            (BadRequest::Framing.into(), 400),
            (BadRequest::Body.into(), 400),
            (BadRequest::Path(PathError::Ambiguous).into(), 400),
            (RouteError::NotFound.into(), 404),
            (RouteError::MethodNotAllowed.into(), 405),
            (GatewayError::MissingCredential, 401),
            (CredentialError::Conflicting.into(), 400),
            (CredentialError::DuplicateAuthorization.into(), 400),
            (CredentialError::DuplicateCookie.into(), 400),
            (CredentialError::NotBearer.into(), 401),
            (CredentialError::BadCharacters.into(), 401),
            (TokenError::Expired.into(), 401),
            (GatewayError::Session(Refusal::JtiDenied), 401),
            (Forbidden.into(), 403),
            (GatewayError::PayloadTooLarge, 413),
            (GatewayError::BodyStalled, 408),
            (
                StoreError::Unavailable {
                    source: "down".into(),
                }
                .into(),
                503,
            ),
            (GatewayError::KeysUnavailable, 503),
            (GatewayError::UpstreamUnavailable("refused".into()), 502),
            (GatewayError::UpstreamTimeout, 504),
            (GatewayError::UpstreamUpgrade, 502),
            (GatewayError::UserDisabled, 401),
            (AuthError::Csrf(CsrfError::CrossSite).into(), 403),
            (AuthError::Csrf(CsrfError::Token).into(), 403),
            (
                AuthError::LoginFailed(LoginFailure::BadPassword).into(),
                401,
            ),
            (AuthError::Throttled { retry_after: 5 }.into(), 429),
            (AuthError::Busy.into(), 503),
            (
                AuthError::RefreshInvalid(RefreshFailure::Invalid).into(),
                401,
            ),
            (AuthError::RefreshReuse.into(), 401),
            (AuthError::NotSignedIn.into(), 401),
            (AuthError::SessionNotFound.into(), 404),
            (AuthError::BadBody.into(), 400),
            (AuthError::UnsupportedMediaType.into(), 415),
            (GatewayError::Internal("bug".into()), 500),
        ];
        let rid = HeaderValue::from_static("r1");
        for (err, status) in cases {
            let response = error_response(&err, &ctx(&rid));
            assert_eq!(response.status().as_u16(), status, "{err:?}");
            assert_eq!(response.headers()["cache-control"], "no-store");
        }
    }

    #[test]
    fn refusals_that_poison_the_stream_close_the_connection() {
        let rid = HeaderValue::from_static("r1");
        for err in [BadRequest::Framing.into(), GatewayError::UpstreamUpgrade] {
            assert_eq!(
                error_response(&err, &ctx(&rid)).headers()["connection"],
                "close"
            );
        }
        let kept = error_response(&BadRequest::MissingHost.into(), &ctx(&rid));
        assert!(kept.headers().get("connection").is_none());
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let rid = HeaderValue::from_static("r1");
        let missing = error_response(&GatewayError::MissingCredential, &ctx(&rid));
        assert_eq!(
            missing.headers()["www-authenticate"],
            "Bearer realm=\"portcullis\""
        );
        let invalid = error_response(&TokenError::BadSignature.into(), &ctx(&rid));
        assert!(
            invalid.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );
    }

    #[test]
    fn browsers_are_sent_to_login_with_a_safe_return_path() {
        let rid = HeaderValue::from_static("r1");
        let c = ErrorContext {
            request_id: &rid,
            browser: true,
            login_url: Some("/auth/login"),
            return_to: Some("/docs/a b?x=1&access_token=eyJ&y=2"),
        };
        let response = error_response(&GatewayError::MissingCredential, &c);
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            response.headers()["location"],
            "/auth/login?return_to=/docs/a%20b%3Fx%3D1%26y%3D2"
        );
        // A central auth host: the absolute URL to come back to, encoded, tokens dropped.
        let central = ErrorContext {
            login_url: Some("https://auth.example.com/auth/login"),
            return_to: Some("https://app.example.com/docs?token=t&x=1"),
            ..c
        };
        assert_eq!(
            error_response(&GatewayError::MissingCredential, &central).headers()["location"],
            "https://auth.example.com/auth/login?return_to=https%3A//app.example.com/docs%3Fx%3D1"
        );
        // A 403 is not fixed by logging in again.
        assert_eq!(
            error_response(&Forbidden.into(), &c).status(),
            StatusCode::FORBIDDEN
        );
    }
}
