//! What the handlers answer with: audited refusals (CSRF, a store that cannot revoke, no
//! signed-in user) and the HTML, JSON, empty and redirect responses.

use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::Env;
use crate::audit::AuditEvent;
use crate::body::GatewayBody;
use crate::error::{AuthError, CsrfError, GatewayError};

pub(super) fn refused(
    env: &Env<'_>,
    event: &'static str,
    path: &str,
    err: CsrfError,
) -> GatewayError {
    env.audit.emit(&env.event(event, err.reason_id(), path));
    AuthError::Csrf(err).into()
}

/// A revocation the store could not make (it did not answer, or too few replicas acknowledged
/// it): the caller gets 503 and the audit trail says so under the endpoint's event — it is
/// never reported done.
pub(super) fn store_refused(
    env: &Env<'_>,
    event: &'static str,
    path: &str,
    subject: &str,
    session: &str,
    err: crate::store::StoreError,
) -> GatewayError {
    env.audit.emit(&AuditEvent {
        subject: Some(subject),
        session: Some(session),
        ..env.event(event, "store.unavailable", path)
    });
    err.into()
}

/// An endpoint that needs a signed-in user, and the request has none: audited like the proxy's
/// 401s (docs/security.md 33), since the pipeline leaves the auth flow's refusals to it.
pub(super) fn not_signed_in(env: &Env<'_>, method: &str, path: &str) -> GatewayError {
    env.audit.emit(&AuditEvent {
        method: Some(method),
        ..env.event("access.unauthorized", "auth.not_signed_in", path)
    });
    AuthError::NotSignedIn.into()
}

fn page_headers(h: &mut HeaderMap, csp: &HeaderValue) {
    crate::error::harden(h);
    h.insert("content-security-policy", csp.clone());
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

/// A page, with the CSP of [`crate::auth_flow::AuthSettings::page_csp`] (`csp`).
pub(super) fn html(status: StatusCode, body: String, csp: &HeaderValue) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    page_headers(h, csp);
    response
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(value.to_string()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    crate::error::harden(h);
    response
}

pub(super) fn empty(status: StatusCode) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = status;
    crate::error::harden(response.headers_mut());
    response
}

/// 303 See Other: after a POST the browser GETs the target (docs/security.md 26).
pub(super) fn see_other(location: &str) -> Response<GatewayBody> {
    let mut response = empty(StatusCode::SEE_OTHER);
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}
