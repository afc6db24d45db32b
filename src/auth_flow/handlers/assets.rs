//! The static answers: the JWKS document and the pages' stylesheet and script.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Response};

use crate::auth_flow::AuthSettings;
use crate::body::GatewayBody;

pub(super) fn jwks(auth: &AuthSettings) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(auth.jwks.clone()));
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    h.insert(CACHE_CONTROL, auth.jwks_cache_control.clone());
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

pub(super) fn asset(text: &'static str, content_type: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(Bytes::from_static(text.as_bytes())));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}
