//! Every cookie the gateway sets, with its name and attributes, in one place (SECURITY.md 22).
//!
//! | cookie | carries | attributes |
//! |---|---|---|
//! | `tokens.cookie` (default `__Host-portcullis-at`) | the access token | `Path=/; Secure; HttpOnly; SameSite=Lax` |
//! | `__Secure-portcullis-rt` | the refresh token | `Path=/auth; Secure; HttpOnly; SameSite=Lax` |
//! | `__Host-portcullis-csrf` | the CSRF token of the auth forms | `Path=/; Secure; HttpOnly; SameSite=Lax` |
//!
//! None carries `Domain`. Without "remember me" all three are session cookies; with it the
//! access and refresh cookies get `Max-Age` so they survive a browser restart. Expiring a cookie
//! repeats its name, path and attributes exactly (a cookie is only replaced by one with the
//! same name, domain and path).

use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::HeaderValue;

/// The refresh-token cookie: `__Secure-` rather than `__Host-` because it is scoped to the auth
/// path, so it is never sent to an upstream or to the proxy routes.
pub const REFRESH_COOKIE: &str = "__Secure-portcullis-rt";
/// The path the refresh cookie is scoped to.
pub const REFRESH_PATH: &str = "/auth";
/// The CSRF token of the auth forms (double submit: the form repeats it).
pub const CSRF_COOKIE: &str = "__Host-portcullis-csrf";

/// Browsers refuse a cookie whose name and value exceed 4096 bytes (SECURITY.md 22).
pub const MAX_COOKIE_BYTES: usize = 4096;

fn build(name: &str, value: &str, path: &'static str, max_age: Option<Duration>) -> HeaderValue {
    let mut cookie = Cookie::build((name.to_owned(), value.to_owned()))
        .path(path)
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .build();
    if let Some(age) = max_age {
        cookie.set_max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
    }
    // Names are constants and values are base64url or JWTs: always valid header bytes.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn expire(name: &str, path: &'static str) -> HeaderValue {
    let cookie = Cookie::build((name.to_owned(), ""))
        .path(path)
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::ZERO)
        .expires(cookie::time::OffsetDateTime::UNIX_EPOCH)
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` for the access token.
pub fn access(name: &str, token: &str, max_age: Option<Duration>) -> HeaderValue {
    build(name, token, "/", max_age)
}

/// `Set-Cookie` for the refresh token.
pub fn refresh(token: &str, max_age: Option<Duration>) -> HeaderValue {
    build(REFRESH_COOKIE, token, REFRESH_PATH, max_age)
}

/// `Set-Cookie` for the CSRF token (a session cookie).
pub fn csrf(token: &str) -> HeaderValue {
    build(CSRF_COOKIE, token, "/", None)
}

/// `Set-Cookie` headers that expire every auth cookie, as logout sends them.
pub fn expire_all(access_name: &str) -> [HeaderValue; 3] {
    [
        expire(access_name, "/"),
        expire(REFRESH_COOKIE, REFRESH_PATH),
        expire(CSRF_COOKIE, "/"),
    ]
}

/// `Set-Cookie` headers that expire the access and refresh cookies (a failed refresh), keeping
/// the CSRF cookie the login form is about to use.
pub fn expire_tokens(access_name: &str) -> [HeaderValue; 2] {
    [
        expire(access_name, "/"),
        expire(REFRESH_COOKIE, REFRESH_PATH),
    ]
}

/// The value of cookie `name` in the request, when it is sent exactly once.
pub fn read<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = None;
    for value in headers.get_all(http::header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n.trim() == name {
                if found.is_some() {
                    // Two cookies of one name: a planted one (cookie tossing) among them.
                    return None;
                }
                found = Some(v.trim());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_cookies_are_secure_httponly_lax_and_have_no_domain() {
        for v in [
            access("__Host-portcullis-at", "tok", None),
            refresh("rt", Some(Duration::from_secs(60))),
            csrf("c"),
        ] {
            let s = v.to_str().unwrap();
            assert!(s.contains("Secure"), "{s}");
            assert!(s.contains("HttpOnly"), "{s}");
            assert!(s.contains("SameSite=Lax"), "{s}");
            assert!(!s.to_ascii_lowercase().contains("domain"), "{s}");
        }
        assert!(refresh("rt", None).to_str().unwrap().contains("Path=/auth"));
        assert!(
            refresh("rt", Some(Duration::from_secs(60)))
                .to_str()
                .unwrap()
                .contains("Max-Age=60")
        );
    }

    #[test]
    fn expiring_repeats_name_and_path() {
        let [a, r, c] = expire_all("__Host-portcullis-at");
        assert!(a.to_str().unwrap().starts_with("__Host-portcullis-at=;"));
        assert!(a.to_str().unwrap().contains("Path=/;"));
        assert!(r.to_str().unwrap().contains("Path=/auth"));
        assert!(r.to_str().unwrap().contains("Max-Age=0"));
        assert!(c.to_str().unwrap().starts_with("__Host-portcullis-csrf=;"));
    }

    #[test]
    fn a_cookie_sent_twice_is_not_read() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; __Secure-portcullis-rt=x; b=2"),
        );
        assert_eq!(read(&h, REFRESH_COOKIE), Some("x"));
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("__Secure-portcullis-rt=y"),
        );
        assert_eq!(read(&h, REFRESH_COOKIE), None);
    }
}
