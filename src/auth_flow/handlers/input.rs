//! What a request to an auth endpoint brings: its form or JSON body (bounded in size and
//! time), form fields, headers, and the CSRF token it must repeat.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Env;
use super::respond::refused;
use crate::auth_flow::{AuthSettings, cookies, csrf, tokens};
use crate::error::{AuthError, GatewayError};
use crate::pipeline::credential;

/// Largest body accepted on an auth endpoint.
const MAX_BODY: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyKind {
    Form,
    Json,
}

fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let ct = header_str(headers, "content-type")?;
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => Some(BodyKind::Form),
        "application/json" => Some(BodyKind::Json),
        _ => None,
    }
}

/// The body of a form or JSON request, at most [`MAX_BODY`] bytes.
pub(super) async fn read_body(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<(BodyKind, Bytes), GatewayError> {
    match read_body_or_empty(request, env).await? {
        (Some(kind), body) => Ok((kind, body)),
        (None, _) => Err(AuthError::UnsupportedMediaType.into()),
    }
}

/// Like [`read_body`], but a request without a body (and without a content type) is allowed.
pub(super) async fn read_body_or_empty(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<(Option<BodyKind>, Bytes), GatewayError> {
    let kind = body_kind(request.headers());
    let declared =
        header_str(request.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let has_type = request.headers().contains_key(CONTENT_TYPE);
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    // A form is a few hundred bytes: all of it within `limits.body_read_timeout`.
    let body = tokio::time::timeout(env.body_read_timeout, limited.collect())
        .await
        .map_err(|_| GatewayError::BodyStalled)?
        .map_err(|_| GatewayError::PayloadTooLarge)?
        .to_bytes();
    if kind.is_none() && (has_type || !body.is_empty()) {
        return Err(AuthError::UnsupportedMediaType.into());
    }
    Ok((kind, body))
}

/// Whether a state-changing request authenticates with an ambient credential (an auth cookie
/// the browser attaches by itself) and so must repeat the CSRF token. A bearer client is not
/// a browser acting for someone else, and gets no cookie fallback (see
/// [`caller`](super::caller::caller)).
pub(super) fn needs_csrf(headers: &HeaderMap, auth: &AuthSettings) -> bool {
    !headers.contains_key(http::header::AUTHORIZATION)
        && credential::cookies(headers)
            .any(|(name, _)| name == auth.access_cookie || name == cookies::REFRESH_COOKIE)
}

/// The double-submit check: the request repeats the CSRF cookie's value in the form field
/// (`field`) or else the `X-CSRF-Token` header. A refusal is audited as `event` on `path`.
pub(super) fn check_csrf_token(
    env: &Env<'_>,
    headers: &HeaderMap,
    field: Option<&str>,
    event: &'static str,
    path: &str,
) -> Result<(), GatewayError> {
    csrf::token_matches(
        cookies::read(headers, cookies::CSRF_COOKIE),
        field.or_else(|| header_str(headers, "x-csrf-token")),
    )
    .map_err(|e| refused(env, event, path, e))
}

/// The CSRF token a page embeds in its forms: the browser's cookie when it has a usable one,
/// else a new one (`true`: set it as the cookie with the page).
pub(super) fn page_csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookies::read(headers, cookies::CSRF_COOKIE) {
        Some(c) if c.len() >= 22 => (c.to_owned(), false),
        _ => (tokens::random_token(32), true),
    }
}

pub(super) fn body_csrf(kind: Option<BodyKind>, body: &[u8]) -> Option<String> {
    match kind {
        Some(BodyKind::Form) => std::str::from_utf8(body)
            .ok()
            .and_then(|t| form_field(t, "csrf")),
        Some(BodyKind::Json) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("csrf").and_then(|c| c.as_str()).map(str::to_owned)),
        None => None,
    }
}

pub(super) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first value of `name` in an `application/x-www-form-urlencoded` string.
pub(super) fn form_field(text: &str, name: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (url_decode(k)? == name).then(|| url_decode(v)).flatten()
    })
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space); `None` for a bad escape
/// or invalid UTF-8.
pub(crate) fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_percent_decoded() {
        let body = "username=al%20ice&password=p%26ss+word&remember_me=1&x";
        assert_eq!(form_field(body, "username").as_deref(), Some("al ice"));
        assert_eq!(form_field(body, "password").as_deref(), Some("p&ss word"));
        assert_eq!(form_field(body, "remember_me").as_deref(), Some("1"));
        assert_eq!(form_field(body, "x").as_deref(), Some(""));
        assert_eq!(form_field(body, "missing"), None);
        assert_eq!(form_field("a=%zz", "a"), None);
    }
}
