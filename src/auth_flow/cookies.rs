//! Every cookie the gateway sets, with its name and attributes, in one place (docs/security.md 22).
//!
//! | cookie | carries | attributes |
//! |---|---|---|
//! | `tokens.cookie` (default `__Host-portcullis-at`) | the access token | `Path=/; Secure; HttpOnly; SameSite=Lax` |
//! | `__Secure-portcullis-rt` | the refresh token | `Path=/auth; Secure; HttpOnly; SameSite=Lax` |
//! | `__Host-portcullis-rb` | the refresh token's binding | `Path=/; Secure; HttpOnly; SameSite=Lax` |
//! | `__Host-portcullis-csrf` | the CSRF token of the auth forms | `Path=/; Secure; HttpOnly; SameSite=Lax` |
//!
//! None carries `Domain`, unless `auth.cookie_domain` is set (a central auth host): then the
//! access cookie, and only it, carries `Domain=<cookie_domain>`, so the protected subdomains
//! receive it, and its name is `__Secure-` (default `__Secure-portcullis-at`; a `__Host-`
//! cookie cannot carry `Domain`). The others are read only by the auth host's own `/auth/*`
//! and stay host-only there: the binding cookie and the CSRF cookie keep `__Host-`, which is
//! what makes a planted refresh cookie or CSRF token useless (see below), and the refresh
//! cookie stays scoped to the auth host's `/auth`. [`domain_for`] says when the `Domain` is
//! written. Without "remember me" all are session cookies; with it the access, refresh and
//! binding cookies get `Max-Age` so they survive a browser restart. Expiring a cookie repeats
//! its name, domain, path and attributes exactly (a cookie is only replaced by one with the
//! same name, domain and path).
//!
//! **Planted refresh cookies** (docs/security.md 36). `__Secure-` does not stop a sibling
//! subdomain (`evil.example.com`) from setting `__Secure-portcullis-rt` with
//! `Domain=example.com`: a browser would then send the attacker's refresh token to the gateway,
//! next to or instead of its own. So a refresh cookie counts only together with the
//! `__Host-portcullis-rb` binding cookie, which no other host can set (`__Host-` forbids
//! `Domain`): the refresh token carries the SHA-256 of the binding value it was issued with
//! ([`super::tokens`]), and [`bound_refresh`] picks, among the refresh cookies a request
//! sends, the one bound to the binding cookie it sends. A planted refresh cookie is bound to
//! the attacker's binding, which the victim's browser does not have; it is ignored where the
//! browser's own cookie is present, refused (`refresh.unbound`) where it is not, and expired
//! on the parent domains it can have been planted for ([`expire_planted`]).

use std::time::Duration;

use cookie::{Cookie, SameSite};
use http::HeaderValue;

use crate::pipeline::credential::cookie_values;

/// The access cookie's name with `auth.cookie_domain` when `tokens.cookie` is not set: a cookie
/// with `Domain` cannot be `__Host-`, so it is `__Secure-`.
pub const SHARED_ACCESS_COOKIE: &str = "__Secure-portcullis-at";
/// The refresh-token cookie: `__Secure-` rather than `__Host-` because it is scoped to the auth
/// path, so it is never sent to an upstream or to the proxy routes.
pub const REFRESH_COOKIE: &str = "__Secure-portcullis-rt";
/// The path the refresh cookie is scoped to.
pub const REFRESH_PATH: &str = "/auth";
/// The CSRF token of the auth forms (double submit: the form repeats it).
pub const CSRF_COOKIE: &str = "__Host-portcullis-csrf";
/// The binding of the refresh cookie to this browser: a random value whose SHA-256 the
/// refresh token carries. `__Host-`, so no sibling subdomain can plant one.
pub const BINDING_COOKIE: &str = "__Host-portcullis-rb";
/// Ties an OpenID Provider sign-in's `state` to the browser that started it: a random value
/// whose SHA-256 the stored state holds, so a callback URL replayed in another browser (login
/// CSRF with the attacker's code) is refused. One value serves every flow this browser has
/// open at once (several tabs); it lives as long as a flow may.
pub const OIDC_COOKIE: &str = "__Host-portcullis-oidc";
/// Every cookie of the login flow (the access cookie's name is configurable and not here):
/// the proxy strips them from requests to upstreams and from upstream responses.
pub const FLOW_COOKIES: [&str; 4] = [REFRESH_COOKIE, BINDING_COOKIE, CSRF_COOKIE, OIDC_COOKIE];
/// At most this many refresh cookies of one request are looked at.
const MAX_REFRESH_COOKIES: usize = 8;
/// At most this many parent domains get a planted cookie expired.
const MAX_PARENT_DOMAINS: usize = 4;

/// Browsers refuse a cookie whose name and value exceed 4096 bytes (docs/security.md 22).
pub const MAX_COOKIE_BYTES: usize = 4096;

fn build(name: &str, value: &str, path: &'static str, max_age: Option<Duration>) -> HeaderValue {
    build_at(name, value, path, max_age, None)
}

fn build_at(
    name: &str,
    value: &str,
    path: &'static str,
    max_age: Option<Duration>,
    domain: Option<&str>,
) -> HeaderValue {
    let mut cookie = Cookie::build((name.to_owned(), value.to_owned()))
        .path(path)
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .build();
    if let Some(domain) = domain {
        cookie.set_domain(domain.to_owned());
    }
    if let Some(age) = max_age {
        cookie.set_max_age(cookie::time::Duration::seconds(age.as_secs() as i64));
    }
    // Names are constants and values are base64url or JWTs: always valid header bytes.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn expire(name: &str, path: &'static str) -> HeaderValue {
    expire_at(name, path, None)
}

/// The `Domain` the access cookie is set (and expired) with: `cookie_domain` when the host of
/// `origin` (`scheme://host[:port]`) is that domain or under it, else none. A browser refuses a
/// cookie whose `Domain` does not cover the host that sets it, so on any other host (an
/// address, a health-check name) the cookie stays host-only rather than being dropped.
pub fn domain_for<'d>(cookie_domain: Option<&'d str>, origin: &str) -> Option<&'d str> {
    let domain = cookie_domain?;
    let (host, domain_bytes) = (origin_host(origin).as_bytes(), domain.as_bytes());
    let covered = host.eq_ignore_ascii_case(domain_bytes)
        || (host.len() > domain_bytes.len() + 1
            && host[host.len() - domain_bytes.len()..].eq_ignore_ascii_case(domain_bytes)
            && host[host.len() - domain_bytes.len() - 1] == b'.');
    covered.then_some(domain)
}

/// The host of `scheme://host[:port]`.
fn origin_host(origin: &str) -> &str {
    let host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

fn expire_at(name: &str, path: &'static str, domain: Option<&str>) -> HeaderValue {
    let mut cookie = Cookie::build((name.to_owned(), ""))
        .path(path)
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::ZERO)
        .expires(cookie::time::OffsetDateTime::UNIX_EPOCH)
        .build();
    if let Some(domain) = domain {
        cookie.set_domain(domain.to_owned());
    }
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` for the access token, with `Domain=domain` when given (see [`domain_for`]).
pub fn access(
    name: &str,
    token: &str,
    max_age: Option<Duration>,
    domain: Option<&str>,
) -> HeaderValue {
    build_at(name, token, "/", max_age, domain)
}

/// `Set-Cookie` for the refresh token.
pub fn refresh(token: &str, max_age: Option<Duration>) -> HeaderValue {
    build(REFRESH_COOKIE, token, REFRESH_PATH, max_age)
}

/// `Set-Cookie` for the refresh token's binding value; it lives exactly as long as the refresh
/// cookie.
pub fn binding(value: &str, max_age: Option<Duration>) -> HeaderValue {
    build(BINDING_COOKIE, value, "/", max_age)
}

/// `Set-Cookie` for the OpenID sign-in binding ([`OIDC_COOKIE`]), living `max_age`.
pub fn oidc(value: &str, max_age: Duration) -> HeaderValue {
    build(OIDC_COOKIE, value, "/", Some(max_age))
}

/// `Set-Cookie` for the CSRF token (a session cookie).
pub fn csrf(token: &str) -> HeaderValue {
    build(CSRF_COOKIE, token, "/", None)
}

/// `Set-Cookie` headers that expire every auth cookie, as logout sends them; the access cookie
/// with the `Domain` it was set with (`domain`, from [`domain_for`]).
pub fn expire_all(access_name: &str, domain: Option<&str>) -> [HeaderValue; 4] {
    [
        expire_at(access_name, "/", domain),
        expire(REFRESH_COOKIE, REFRESH_PATH),
        expire(BINDING_COOKIE, "/"),
        expire(CSRF_COOKIE, "/"),
    ]
}

/// `Set-Cookie` headers that expire the access, refresh and binding cookies (a failed
/// refresh), keeping the CSRF cookie the login form is about to use. `domain` as for
/// [`expire_all`].
pub fn expire_tokens(access_name: &str, domain: Option<&str>) -> [HeaderValue; 3] {
    [
        expire_at(access_name, "/", domain),
        expire(REFRESH_COOKIE, REFRESH_PATH),
        expire(BINDING_COOKIE, "/"),
    ]
}

/// `Set-Cookie` headers that expire a refresh cookie planted at `Path=/auth` for a parent
/// domain of `origin`'s host (`scheme://host[:port]`): for `app.corp.example.com`, at
/// `corp.example.com` and `example.com`. Never for the host itself, whose host-only cookie is
/// the browser's own (a `Domain` equal to the host would replace it), nor for a single label
/// (browsers refuse a public suffix anyway), nor for an IP address. A cookie planted at another
/// path cannot be named from here; it stays, and is ignored (see [`bound_refresh`]).
pub fn expire_planted(origin: &str) -> Vec<HeaderValue> {
    let host = origin_host(origin);
    let labels: Vec<&str> = host.split('.').collect();
    let dns_name = labels.len() >= 3
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !labels[labels.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if !dns_name {
        return Vec::new();
    }
    // From the shortest parent, the likeliest to be planted for (the registrable domain).
    (1..labels.len() - 1)
        .rev()
        .take(MAX_PARENT_DOMAINS)
        .map(|first| {
            expire_at(
                REFRESH_COOKIE,
                REFRESH_PATH,
                Some(&labels[first..].join(".")),
            )
        })
        .collect()
}

/// The refresh cookies of a request, sorted out against its binding cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshCookies<'h> {
    /// No refresh cookie at all.
    Absent,
    /// Exactly one refresh token bound to the binding cookie the request carries; `planted`
    /// says whether other, unbound, refresh cookies came with it.
    Bound {
        /// The refresh token.
        token: &'h str,
        /// Whether unbound refresh cookies came with it.
        planted: bool,
    },
    /// Refresh cookies, none of them bound to this browser (no binding cookie, another one, or
    /// tokens issued without a binding): planted, or left over. `subject` is the user the
    /// first of them names, for the audit trail.
    Unbound {
        /// The user the first parsable one names (unverified: for the audit trail only).
        subject: Option<String>,
    },
}

/// Sorts out the request's refresh cookies (docs/security.md 36). A browser can hold several
/// cookies of one name (its own, host-only, and any planted for a parent domain), and sends
/// all of them in an order the server cannot rely on; the binding cookie says which is its own.
/// Two different tokens bound to the same binding cannot be told apart and are refused.
pub fn bound_refresh(headers: &http::HeaderMap) -> RefreshCookies<'_> {
    let candidates = read_all(headers, REFRESH_COOKIE);
    if candidates.is_empty() {
        return RefreshCookies::Absent;
    }
    let binding = read(headers, BINDING_COOKIE);
    let mut found: Option<&str> = None;
    let mut ambiguous = false;
    for candidate in &candidates {
        let bound = binding.is_some_and(|b| {
            super::tokens::parse_refresh_token(candidate).is_some_and(|t| t.is_bound_to(b))
        });
        if bound {
            match found {
                Some(previous) if previous != *candidate => ambiguous = true,
                _ => found = Some(candidate),
            }
        }
    }
    match found {
        Some(token) if !ambiguous => RefreshCookies::Bound {
            token,
            planted: candidates.iter().any(|c| *c != token),
        },
        _ => RefreshCookies::Unbound {
            subject: candidates
                .iter()
                .find_map(|c| super::tokens::parse_refresh_token(c).map(|t| t.subject)),
        },
    }
}

/// Every value of cookie `name` in the request, in the order sent (at most
/// [`MAX_REFRESH_COOKIES`]; a request with more is treated as having none of them).
fn read_all<'h>(headers: &'h http::HeaderMap, name: &str) -> Vec<&'h str> {
    let found: Vec<&str> = cookie_values(headers, name)
        .take(MAX_REFRESH_COOKIES + 1)
        .collect();
    if found.len() > MAX_REFRESH_COOKIES {
        return Vec::new();
    }
    found
}

/// The value of cookie `name` in the request, when it is sent exactly once.
pub fn read<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    let mut found = cookie_values(headers, name);
    let first = found.next()?;
    // Two cookies of one name: a planted one (cookie tossing) among them.
    found.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_cookies_are_secure_httponly_lax_and_have_no_domain() {
        for v in [
            access("__Host-portcullis-at", "tok", None, None),
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
        let [a, r, b, c] = expire_all("__Host-portcullis-at", None);
        assert!(a.to_str().unwrap().starts_with("__Host-portcullis-at=;"));
        assert!(a.to_str().unwrap().contains("Path=/;"));
        assert!(r.to_str().unwrap().contains("Path=/auth"));
        assert!(r.to_str().unwrap().contains("Max-Age=0"));
        assert!(b.to_str().unwrap().starts_with("__Host-portcullis-rb=;"));
        assert!(b.to_str().unwrap().contains("Path=/;"));
        assert!(c.to_str().unwrap().starts_with("__Host-portcullis-csrf=;"));
        for v in [a, r, b, c] {
            assert!(!v.to_str().unwrap().contains("Domain"), "{v:?}");
        }
    }

    fn domain_of(v: &HeaderValue) -> Option<String> {
        v.to_str()
            .unwrap()
            .split("; ")
            .find_map(|a| a.strip_prefix("Domain="))
            .map(str::to_owned)
    }

    #[test]
    fn sec22_with_a_cookie_domain_only_the_access_cookie_carries_it_and_is_expired_with_it() {
        let at = "__Secure-portcullis-at";
        let set = access(
            at,
            "tok",
            Some(Duration::from_secs(60)),
            Some("example.com"),
        );
        let s = set.to_str().unwrap();
        assert!(s.starts_with("__Secure-portcullis-at=tok;"), "{s}");
        assert!(s.contains("Secure") && s.contains("HttpOnly") && s.contains("SameSite=Lax"));
        assert!(s.contains("Path=/;") && s.contains("Max-Age=60"), "{s}");
        assert_eq!(domain_of(&set).as_deref(), Some("example.com"));
        // Logout and a failed refresh expire it with the same Domain; the others stay
        // host-only, as they were set.
        let all = expire_all(at, Some("example.com"));
        let tokens = expire_tokens(at, Some("example.com"));
        for expired in [&all[..], &tokens[..]] {
            assert!(
                expired[0]
                    .to_str()
                    .unwrap()
                    .starts_with("__Secure-portcullis-at=;")
            );
            assert!(expired[0].to_str().unwrap().contains("Max-Age=0"));
            assert_eq!(domain_of(&expired[0]).as_deref(), Some("example.com"));
            for host_only in &expired[1..] {
                assert_eq!(domain_of(host_only), None, "{host_only:?}");
            }
        }
    }

    #[test]
    fn the_cookie_domain_is_written_only_on_hosts_it_covers() {
        let d = Some("example.com");
        for covered in [
            "https://auth.example.com",
            "https://example.com",
            "https://a.b.example.com:8443",
            "http://AUTH.example.com",
        ] {
            assert_eq!(domain_for(d, covered), d, "{covered}");
        }
        for other in [
            "https://badexample.com",
            "https://example.com.evil.com",
            "https://example.org",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "https://.example.com",
            "",
        ] {
            assert_eq!(domain_for(d, other), None, "{other}");
        }
        assert_eq!(domain_for(None, "https://auth.example.com"), None);
    }

    #[test]
    fn planted_cookies_are_expired_on_parent_domains_only() {
        let domains = |origin: &str| -> Vec<String> {
            expire_planted(origin)
                .iter()
                .map(|v| {
                    let s = v.to_str().unwrap();
                    assert!(s.starts_with("__Secure-portcullis-rt=;"), "{s}");
                    assert!(s.contains("Path=/auth") && s.contains("Max-Age=0"), "{s}");
                    s.split("; ")
                        .find_map(|a| a.strip_prefix("Domain="))
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        assert_eq!(domains("https://app.example.com"), ["example.com"]);
        assert_eq!(
            domains("https://gw.corp.example.com:8443"),
            ["example.com", "corp.example.com"]
        );
        for none in [
            "https://example.com",
            "http://localhost:8080",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "https://a..example.com",
            "https://a_b.example.com",
            "",
        ] {
            assert!(domains(none).is_empty(), "{none}");
        }
        assert_eq!(
            domains("https://a.b.c.d.e.f.example.com"),
            [
                "example.com",
                "f.example.com",
                "e.f.example.com",
                "d.e.f.example.com"
            ]
        );
    }

    fn request(cookies: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for c in cookies {
            h.append(http::header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn the_refresh_cookie_bound_to_the_binding_cookie_is_the_one_used() {
        use super::super::tokens::{Binding, new_refresh_token};
        let sid = super::super::tokens::new_session_id();
        let (mine, theirs) = (Binding::new(), Binding::new());
        let my_token = new_refresh_token("alice", &sid, Some(&mine));
        let their_token = new_refresh_token("mallory", &sid, Some(&theirs));
        let unbound = new_refresh_token("mallory", &sid, None);
        let rt = |t: &str| format!("{REFRESH_COOKIE}={t}");
        let rb = |b: &Binding| format!("{BINDING_COOKIE}={}", b.value());

        assert_eq!(bound_refresh(&request(&[])), RefreshCookies::Absent);
        assert_eq!(
            bound_refresh(&request(&[&rt(&my_token), &rb(&mine)])),
            RefreshCookies::Bound {
                token: &my_token,
                planted: false
            }
        );
        // Whichever order the browser sends them in.
        for order in [
            [rt(&their_token), rt(&my_token)],
            [rt(&my_token), rt(&their_token)],
        ] {
            let h = request(&[&order[0], &order[1], &rb(&mine)]);
            assert_eq!(
                bound_refresh(&h),
                RefreshCookies::Bound {
                    token: &my_token,
                    planted: true
                }
            );
        }
        let unbound_for = |h| match bound_refresh(&h) {
            RefreshCookies::Unbound { subject } => subject,
            other => panic!("{other:?}"),
        };
        // A planted token alone: without a binding, with the victim's, or one issued unbound.
        assert_eq!(
            unbound_for(request(&[&rt(&their_token)])).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            unbound_for(request(&[&rt(&their_token), &rb(&mine)])).as_deref(),
            Some("mallory")
        );
        assert_eq!(
            unbound_for(request(&[&rt(&unbound), &rb(&theirs)])).as_deref(),
            Some("mallory")
        );
        // Two binding cookies: none is read.
        assert!(matches!(
            bound_refresh(&request(&[&rt(&my_token), &rb(&mine), &rb(&theirs)])),
            RefreshCookies::Unbound { .. }
        ));
        // Not a refresh token at all.
        assert_eq!(unbound_for(request(&[&rt("junk"), &rb(&mine)])), None);
        // More cookies of the name than any browser holds: none is looked at.
        let many: Vec<String> = (0..9).map(|_| rt(&my_token)).collect();
        let mut refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let binding = rb(&mine);
        refs.push(&binding);
        assert_eq!(bound_refresh(&request(&refs)), RefreshCookies::Absent);
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
