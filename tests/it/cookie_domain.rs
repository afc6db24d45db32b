//! A central auth host (`auth.example.com`) logging browsers in for its sibling subdomains
//! with `auth.cookie_domain` (docs/security.md 22, 25, 26, 17, 18, 36).
//!
//! One loopback gateway plays every host: each request names its host in `Host`, and says
//! `X-Forwarded-Proto: https` as the TLS-terminating ingress in front of it would (the
//! gateway trusts 127.0.0.1 as a proxy). [`Browser`] keeps cookies as a browser does across
//! hosts: host-only cookies go back to their host only, `Domain` cookies to every host under
//! the domain, `/auth` cookies to `/auth/…` only; and it refuses what a browser refuses (a
//! `__Host-` cookie with `Domain`, a `Domain` that does not cover the host that sets it).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use portcullis::clock::Clock;
use portcullis::config::Config;

use crate::common::auth::{ALICE_PASSWORD, AuthSetup, demo_users, enc};
use crate::common::{SetCookie, TestGateway, TestResponse, send, set_cookies};

const AUTH: &str = "auth.example.com";
const APP: &str = "app.example.com";
const AT: &str = "__Secure-portcullis-at";
const RT: &str = "__Secure-portcullis-rt";
const RB: &str = "__Host-portcullis-rb";
const CSRF: &str = "__Host-portcullis-csrf";

/// `auth.cookie_domain: Example.COM` (lower-cased by the config), return hosts listed under
/// their alias `return_hosts`, the login page on the auth host, and the ingress trusted.
fn central() -> AuthSetup {
    AuthSetup {
        auth_extra: "  cookie_domain: Example.COM\n  \
                     return_hosts: [app.example.com, \"*.apps.example.com\"]"
            .into(),
        extra: "login_url: https://auth.example.com/auth/login\n\
                trusted_proxies: [127.0.0.1/32]"
            .into(),
        ..AuthSetup::default()
    }
}

#[derive(Debug, Clone)]
struct Stored {
    name: String,
    value: String,
    /// The host that set it (host-only) or its `Domain`.
    domain: String,
    host_only: bool,
    path: String,
}

impl Stored {
    fn sent_to(&self, host: &str, path: &str) -> bool {
        let host_ok = if self.host_only {
            host == self.domain
        } else {
            host == self.domain || host.ends_with(&format!(".{}", self.domain))
        };
        let path_ok = self.path == "/"
            || path == self.path
            || path.starts_with(&format!("{}/", self.path.trim_end_matches('/')));
        host_ok && path_ok
    }
}

/// A browser across hosts: see the module docs.
#[derive(Debug, Clone)]
struct Browser {
    base: String,
    jar: Vec<Stored>,
}

impl Browser {
    fn new(gw: &TestGateway) -> Self {
        Self {
            base: gw.url(""),
            jar: Vec::new(),
        }
    }

    /// The values of the cookies named `name` (one per domain and path).
    fn cookies(&self, name: &str) -> Vec<&Stored> {
        self.jar.iter().filter(|c| c.name == name).collect()
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies(name).first().map(|c| c.value.clone())
    }

    fn cookie_header(&self, host: &str, path: &str) -> Option<String> {
        let pairs: Vec<String> = self
            .jar
            .iter()
            .filter(|c| c.sent_to(host, path))
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// What a browser does with the `Set-Cookie` headers of a response from `host`.
    fn absorb(&mut self, host: &str, headers: &HeaderMap) {
        for c in set_cookies(headers) {
            let domain = c
                .attr("domain")
                .map(|d| d.trim_start_matches('.').to_owned());
            if let Some(d) = &domain {
                // A browser drops a Domain cookie whose domain does not cover the host, and a
                // __Host- cookie with any Domain.
                assert!(
                    host == d || host.ends_with(&format!(".{d}")),
                    "{host} set a cookie for another domain: {}",
                    c.raw
                );
                assert!(
                    !c.name.starts_with("__Host-"),
                    "__Host- with Domain: {}",
                    c.raw
                );
            }
            if c.name.starts_with("__Host-") || c.name.starts_with("__Secure-") {
                assert!(
                    c.has("secure"),
                    "a prefixed cookie without Secure: {}",
                    c.raw
                );
            }
            let stored = Stored {
                name: c.name.clone(),
                value: c.value.clone(),
                host_only: domain.is_none(),
                domain: domain.unwrap_or_else(|| host.to_owned()),
                path: c.attr("path").unwrap_or("/").to_owned(),
            };
            self.jar.retain(|o| {
                !(o.name == stored.name
                    && o.domain == stored.domain
                    && o.host_only == stored.host_only
                    && o.path == stored.path)
            });
            if !c.expires_now() {
                self.jar.push(stored);
            }
        }
    }

    fn request(&self, method: &str, host: &str, path: &str) -> http::request::Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("host", host)
            .header("x-forwarded-proto", "https")
            .header(
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0 Safari/537.36",
            );
        if let Some(c) = self.cookie_header(host, path.split('?').next().unwrap()) {
            req = req.header("cookie", c);
        }
        req
    }

    /// A top-level navigation to `https://{host}{path}` (no redirects followed).
    async fn navigate(&mut self, host: &str, path: &str) -> TestResponse {
        let req = self
            .request("GET", host, path)
            .header("accept", "text/html,application/xhtml+xml")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", "none");
        let r = send(req.body(Full::new(Bytes::new())).unwrap()).await;
        self.absorb(host, &r.headers);
        r
    }

    /// Follows a `Location` as a browser would: an absolute `https://` URL names its host.
    async fn follow(&mut self, from_host: &str, location: &str) -> TestResponse {
        let (host, path) = match location.strip_prefix("https://") {
            Some(rest) => {
                let i = rest.find('/').unwrap_or(rest.len());
                (rest[..i].to_owned(), rest[i..].to_owned())
            }
            None => (from_host.to_owned(), location.to_owned()),
        };
        self.navigate(&host, &path).await
    }

    /// A form POST to `https://{host}{path}` from a page of `page_origin`.
    async fn post_form_from(
        &mut self,
        page_origin: &str,
        host: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> TestResponse {
        let site = if page_origin == format!("https://{host}") {
            "same-origin"
        } else if page_origin.ends_with(".example.com") {
            "same-site"
        } else {
            "cross-site"
        };
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        let req = self
            .request("POST", host, path)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", site)
            .header("origin", page_origin);
        let r = send(req.body(Full::new(Bytes::from(body.join("&")))).unwrap()).await;
        self.absorb(host, &r.headers);
        r
    }

    /// A same-origin form POST on `host`, as the gateway's own pages make it.
    async fn post_form(&mut self, host: &str, path: &str, fields: &[(&str, &str)]) -> TestResponse {
        self.post_form_from(&format!("https://{host}"), host, path, fields)
            .await
    }

    /// The login form on the auth host, with `return_to`.
    async fn login(&mut self, return_to: &str) -> TestResponse {
        let page = self.navigate(AUTH, "/auth/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = self
            .cookie(CSRF)
            .expect("the login page sets the CSRF cookie");
        self.post_form(
            AUTH,
            "/auth/login",
            &[
                ("csrf", &csrf),
                ("username", "alice"),
                ("password", ALICE_PASSWORD),
                ("return_to", return_to),
            ],
        )
        .await
    }

    /// The refresh page's POST on the auth host.
    async fn refresh(&mut self, return_to: &str) -> TestResponse {
        let csrf = self.cookie(CSRF).unwrap_or_default();
        self.post_form(
            AUTH,
            "/auth/refresh",
            &[("csrf", &csrf), ("return_to", return_to)],
        )
        .await
    }
}

fn location(r: &TestResponse) -> String {
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    r.headers["location"].to_str().unwrap().to_owned()
}

fn set_cookie<'r>(cookies: &'r [SetCookie], name: &str) -> &'r SetCookie {
    cookies
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no Set-Cookie for {name}: {cookies:#?}"))
}

/// The token cookies of a login or refresh: the access cookie shared with the domain, the
/// refresh and binding cookies host-only on the auth host.
fn assert_token_cookies(r: &TestResponse, what: &str) {
    let cookies = r.set_cookies();
    let at = set_cookie(&cookies, AT);
    assert_eq!(at.attr("domain"), Some("example.com"), "{what}: {}", at.raw);
    assert_eq!(at.attr("path"), Some("/"), "{what}: {}", at.raw);
    for c in [set_cookie(&cookies, RT), set_cookie(&cookies, RB)] {
        assert!(!c.has("domain"), "{what}: {}", c.raw);
    }
    assert_eq!(set_cookie(&cookies, RT).attr("path"), Some("/auth"));
    assert_eq!(set_cookie(&cookies, RB).attr("path"), Some("/"));
    for c in &cookies {
        assert!(
            c.has("secure") && c.has("httponly") && c.attr("samesite") == Some("Lax"),
            "{what}: {}",
            c.raw
        );
        assert!(
            c.name.starts_with("__Secure-") || c.name.starts_with("__Host-"),
            "{what}: {}",
            c.raw
        );
        assert!(
            c.name != "__Host-portcullis-at",
            "{what}: the host-only access cookie"
        );
    }
}

#[tokio::test]
async fn sec22_with_cookie_domain_only_the_access_cookie_carries_domain_and_is_secure_prefixed() {
    let gw = central().start().await;
    let mut b = Browser::new(&gw);
    let page = b.navigate(AUTH, "/auth/login").await;
    let csrf = set_cookie(&page.set_cookies(), CSRF).clone();
    assert!(!csrf.has("domain"), "{}", csrf.raw);

    let r = b.login("/").await;
    assert_token_cookies(&r, "form login");
    // The new CSRF cookie after login stays host-only too.
    assert!(!set_cookie(&r.set_cookies(), CSRF).has("domain"));
    let r = b.refresh("/").await;
    assert_token_cookies(&r, "form refresh");

    // What the browser now holds: one access cookie for the domain, the rest for the auth host.
    let held: Vec<(String, String, bool)> = b
        .jar
        .iter()
        .map(|c| (c.name.clone(), c.domain.clone(), c.host_only))
        .collect();
    assert!(
        held.contains(&(AT.into(), "example.com".into(), false)),
        "{held:?}"
    );
    for name in [RT, RB, CSRF] {
        assert!(held.contains(&(name.into(), AUTH.into(), true)), "{held:?}");
    }
    assert_eq!(held.len(), 4, "{held:?}");
}

#[tokio::test]
async fn a_login_on_the_central_auth_host_signs_the_browser_in_on_its_sibling_subdomains() {
    let gw = central().start().await;
    let mut b = Browser::new(&gw);

    // Not signed in on the app: to the auth host's login page, with the absolute URL to return
    // to (token parameters dropped, as for a path).
    let r = b.navigate(APP, "/app/inbox?x=1&token=t").await;
    assert_eq!(
        location(&r),
        "https://auth.example.com/auth/login?return_to=https%3A//app.example.com/app/inbox%3Fx%3D1"
    );
    let page = b.follow(APP, &location(&r)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text()
            .contains("name=\"return_to\" value=\"https://app.example.com/app/inbox?x=1\""),
        "{}",
        page.text()
    );
    // The login page may redirect to the return hosts after its POST (Chrome applies
    // form-action to that redirect).
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("form-action 'self' https://app.example.com https://*.apps.example.com;"),
        "{csp}"
    );

    let r = b.login("https://app.example.com/app/inbox?x=1").await;
    assert_eq!(location(&r), "https://app.example.com/app/inbox?x=1");
    let r = b.follow(AUTH, &location(&r)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = gw.upstream.last();
    assert_eq!(seen.uri, "/app/inbox?x=1");
    assert_eq!(seen.headers["x-auth-subject"], "alice");
    // The gateway's cookie is a credential, not forwarded (docs/security.md 24).
    let cookies = seen
        .headers
        .get("cookie")
        .map(|c| c.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(!cookies.contains("portcullis"), "{cookies}");

    // Any host under a wildcard return host: signed in there too, and a login returning there
    // is followed.
    let r = b.navigate("wiki.apps.example.com", "/docs/a").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gw.upstream.last().headers["x-auth-subject"], "alice");
    let r = b.refresh("https://wiki.apps.example.com/docs/a").await;
    assert_eq!(location(&r), "https://wiki.apps.example.com/docs/a");

    // On the login page's own host the return target stays a path.
    let mut other = Browser::new(&gw);
    let r = other.navigate(AUTH, "/app/x").await;
    assert_eq!(
        location(&r),
        "https://auth.example.com/auth/login?return_to=/app/x"
    );
}

#[tokio::test]
async fn an_expired_access_cookie_on_a_subdomain_is_refreshed_on_the_auth_host_and_returns_there() {
    let gw = AuthSetup {
        access_ttl: "1s".into(),
        extra: "login_url: https://auth.example.com/auth/login\n\
                trusted_proxies: [127.0.0.1/32]\n\
                tokens: { leeway: 0s }"
            .into(),
        clock: Clock::manual(),
        ..central()
    }
    .start()
    .await;
    let mut b = Browser::new(&gw);
    assert_eq!(location(&b.login("/").await), "/");
    gw.advance(Duration::from_millis(2100));

    let r = b.navigate(APP, "/app/x").await;
    let login = location(&r);
    assert!(
        login.starts_with(
            "https://auth.example.com/auth/login?return_to=https%3A//app.example.com/app/x"
        ),
        "{login}"
    );
    // The auth host holds the bound refresh cookie: the refresh page, not the form.
    let page = b.follow(APP, &login).await;
    let html = page.text();
    assert!(html.contains("action=\"/auth/refresh\""), "{html}");
    assert!(
        html.contains("value=\"https://app.example.com/app/x\""),
        "{html}"
    );
    let r = b.refresh("https://app.example.com/app/x").await;
    assert_token_cookies(&r, "refresh");
    assert_eq!(location(&r), "https://app.example.com/app/x");
    let r = b.follow(AUTH, "https://app.example.com/app/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// A front proxy's forward-auth sub-request about `https://{host}{uri}` (the `forwarded`
/// contract, as Traefik and Caddy send it), with the browser's cookies for that host.
async fn forward_auth(gw: &TestGateway, b: &Browser, host: &str, uri: &str) -> TestResponse {
    let mut req = Request::get(gw.url("/_portcullis/forward"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("sec-fetch-mode", "navigate")
        .header("accept", "text/html");
    if let Some(c) = b.cookie_header(host, uri) {
        req = req.header("cookie", c);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

#[tokio::test]
async fn forward_auth_for_a_subdomain_reads_the_access_cookie_the_central_auth_host_set() {
    let gw = AuthSetup {
        extra: "login_url: https://auth.example.com/auth/login\n\
                trusted_proxies: [127.0.0.1/32]\n\
                forward_auth:\n  - { contract: forwarded }"
            .into(),
        ..central()
    }
    .start()
    .await;
    let mut b = Browser::new(&gw);
    // Signed out: the front proxy passes on a redirect to the auth host, with the way back.
    let r = forward_auth(&gw, &b, APP, "/app/x?y=1").await;
    assert_eq!(r.status, StatusCode::FOUND, "{}", r.text());
    assert_eq!(
        r.headers["location"],
        "https://auth.example.com/auth/login?return_to=https%3A//app.example.com/app/x%3Fy%3D1"
    );
    b.login("https://app.example.com/app/x?y=1").await;
    // The only cookie the browser sends to the subdomain is the shared access cookie.
    let sent = b.cookie_header(APP, "/app/x").unwrap();
    assert!(
        sent.starts_with(&format!("{AT}=")) && !sent.contains(';'),
        "{sent}"
    );
    let r = forward_auth(&gw, &b, APP, "/app/x?y=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["x-auth-subject"], "alice");
}

/// Return URLs a login or refresh on the auth host must not follow (docs/security.md 26).
const NOT_FOLLOWED: &[&str] = &[
    "https://evil.com/",
    "//evil.com",
    "//app.example.com/x",
    "https://evil.com\\@app.example.com",
    "https://app.example.com.evil.com/",
    "https://user@app.example.com/",
    "https://app.example.com@evil.com/",
    "https:/app.example.com/x",
    "https:app.example.com",
    "http://app.example.com/",
    "https://app.example.com:8443/",
    "https://app%2eexample.com/",
    "https://app.example.com/%2f%2fevil.com",
    "https://apps.example.com/",
    "https://example.com/",
    "https://wiki.example.com/",
    "https://auth.example.com.evil.com/",
    "javascript:alert(1)",
];

#[tokio::test]
async fn sec26_return_to_a_listed_host_is_followed_after_login_and_to_any_other_host_is_not() {
    let gw = central().start().await;
    let mut b = Browser::new(&gw);
    // A login with a foreign return URL lands on the default page…
    assert_eq!(location(&b.login("https://evil.com/phish").await), "/");
    // …and one returning to a listed host (any case) goes there.
    assert_eq!(
        location(&b.login("https://APP.example.com/a/../b?q=1").await),
        "https://app.example.com/b?q=1"
    );
    // Every other form, through the refresh (the same policy, without a password check each).
    for evil in NOT_FOLLOWED {
        let r = b.refresh(evil).await;
        assert_eq!(location(&r), "/", "{evil:?} was followed");
        let page = b
            .navigate(AUTH, &format!("/auth/login?return_to={}", enc(evil)))
            .await;
        assert!(
            page.text().contains("name=\"return_to\" value=\"/\""),
            "{evil:?}: {}",
            page.text()
        );
    }
    for (kept, to) in [
        ("https://app.example.com/x", "https://app.example.com/x"),
        (
            "https://a.b.apps.example.com/",
            "https://a.b.apps.example.com/",
        ),
        ("/local?x=1", "/local?x=1"),
    ] {
        assert_eq!(location(&b.refresh(kept).await), to, "{kept}");
    }
}

/// The `Set-Cookie` headers that expire every auth cookie, with the access cookie's Domain.
fn assert_all_expired(r: &TestResponse, what: &str) {
    let cookies = r.set_cookies();
    let at = cookies
        .iter()
        .find(|c| c.name == AT && c.attr("domain") == Some("example.com"))
        .unwrap_or_else(|| panic!("{what}: the Domain access cookie not expired: {cookies:#?}"));
    assert!(at.expires_now(), "{what}: {}", at.raw);
    for name in [RT, RB, CSRF] {
        let c = cookies
            .iter()
            .find(|c| c.name == name && !c.has("domain"))
            .unwrap_or_else(|| panic!("{what}: {name} not expired: {cookies:#?}"));
        assert!(c.expires_now(), "{what}: {}", c.raw);
    }
    assert_eq!(r.headers["clear-site-data"], "\"cookies\"");
}

#[tokio::test]
async fn sec17_logout_on_the_auth_host_expires_the_domain_access_cookie_and_ends_the_session() {
    let gw = central().start().await;
    let mut b = Browser::new(&gw);
    b.login("/").await;
    let access = b.cookie(AT).unwrap();
    assert_eq!(b.navigate(APP, "/app/x").await.status, StatusCode::OK);

    let csrf = b.cookie(CSRF).unwrap();
    let r = b.post_form(AUTH, "/auth/logout", &[("csrf", &csrf)]).await;
    assert_eq!(location(&r), "/auth/login");
    assert_all_expired(&r, "logout");
    // The planted-cookie sweep still runs: the refresh cookie at the auth host's parent.
    assert!(r.set_cookies().iter().any(|c| c.name == RT
        && c.attr("domain") == Some("example.com")
        && c.attr("path") == Some("/auth")
        && c.expires_now()));
    assert!(b.cookies(AT).is_empty(), "{:?}", b.jar);

    // The browser is signed out on the subdomain, and the old token is refused anywhere.
    let r = b.navigate(APP, "/app/x").await;
    assert!(location(&r).starts_with("https://auth.example.com/auth/login?"));
    let replay = gw.api_get("/app/x", &access).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.text());
}

#[tokio::test]
async fn sec18_logout_everywhere_on_the_auth_host_expires_the_domain_cookie_and_ends_every_session()
{
    let gw = central().start().await;
    let (mut laptop, mut phone) = (Browser::new(&gw), Browser::new(&gw));
    laptop.login("/").await;
    phone.login("/").await;
    assert_eq!(phone.navigate(APP, "/app/x").await.status, StatusCode::OK);

    // The sessions page works on the auth host and lists both.
    let page = laptop.navigate(AUTH, "/auth/sessions").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_eq!(page.text().matches("data-session=\"").count(), 2);

    let csrf = laptop.cookie(CSRF).unwrap();
    let r = laptop
        .post_form(AUTH, "/auth/logout-all", &[("csrf", &csrf)])
        .await;
    assert_eq!(location(&r), "/auth/login");
    assert_all_expired(&r, "logout-all");
    let r = phone.navigate(APP, "/app/x").await;
    assert_eq!(
        r.status,
        StatusCode::SEE_OTHER,
        "the phone is still signed in"
    );
}

#[tokio::test]
async fn sec25_a_page_on_a_sibling_subdomain_cannot_log_the_browser_out_or_change_its_sessions() {
    let gw = central().start().await;
    let mut b = Browser::new(&gw);
    b.login("/").await;
    let sid = {
        let page = b.navigate(AUTH, "/auth/sessions").await;
        let html = page.text();
        let at = html.find("data-session=\"").unwrap() + 14;
        html[at..at + html[at..].find('"').unwrap()].to_owned()
    };
    let app_page = format!("https://{APP}");
    // Even knowing the CSRF token (it cannot read it: the cookie is the auth host's and
    // HttpOnly), a page of app.example.com posting to the auth host is another origin.
    let csrf = b.cookie(CSRF).unwrap();
    for (path, fields) in [
        ("/auth/logout", vec![("csrf", csrf.as_str())]),
        ("/auth/logout-all", vec![("csrf", csrf.as_str())]),
        (
            "/auth/sessions/revoke",
            vec![("csrf", csrf.as_str()), ("session", sid.as_str())],
        ),
        ("/auth/refresh", vec![("csrf", csrf.as_str())]),
    ] {
        let r = b.post_form_from(&app_page, AUTH, path, &fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}: {}", r.text());
        assert!(r.text().contains("forbidden"), "{path}: {}", r.text());
        assert!(r.set_cookies().is_empty(), "{path}: {:?}", r.set_cookies());
    }
    // Nor on its own origin: the gateway answers /auth/* there too, but the request carries
    // the shared access cookie without the CSRF token (the app host holds none the page could
    // read).
    let r = b.post_form(APP, "/auth/logout", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    // Still signed in, on every host.
    assert_eq!(b.navigate(APP, "/app/x").await.status, StatusCode::OK);
    let page = b.navigate(AUTH, "/auth/sessions").await;
    assert!(page.text().contains(&sid));
}

fn config_error(auth_extra: &str, extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    let yaml = AuthSetup {
        auth_extra: auth_extra.into(),
        extra: extra.into(),
        ..AuthSetup::default()
    }
    .yaml("http://127.0.0.1:9");
    match Config::from_yaml(&yaml, dir.path()) {
        Ok(_) => panic!("accepted:\n{auth_extra}\n{extra}"),
        Err(e) => e.to_string(),
    }
}

fn config_cookie(auth_extra: &str, extra: &str) -> (String, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.yaml"), demo_users()).unwrap();
    let yaml = AuthSetup {
        auth_extra: auth_extra.into(),
        extra: extra.into(),
        ..AuthSetup::default()
    }
    .yaml("http://127.0.0.1:9");
    let config = Config::from_yaml(&yaml, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let auth = config.runtime.auth.unwrap();
    (auth.access_cookie, auth.cookie_domain)
}

#[test]
fn sec48_a_cookie_domain_that_is_not_a_registrable_looking_domain_is_a_config_error() {
    for bad in [
        "https://example.com",
        ".example.com",
        "example.com:443",
        "example.com/",
        "com",
        "localhost",
        "127.0.0.1",
        "[::1]",
        "::1",
        "10.0.0.1",
        "exa mple.com",
        "example..com",
        "-example.com",
        "example.com.",
        "user@example.com",
        "",
    ] {
        let message = config_error(
            &format!("  cookie_domain: {}", serde_json::to_string(bad).unwrap()),
            "",
        );
        assert!(
            message.contains("auth.cookie_domain"),
            "{bad:?}: the message lacks the key: {message}"
        );
    }
    // With a Domain the access cookie cannot be __Host-.
    let message = config_error(
        "  cookie_domain: example.com",
        "tokens: { cookie: __Host-portcullis-at }",
    );
    assert!(
        message.contains("tokens.cookie") && message.contains("__Secure-"),
        "{message}"
    );
    let message = config_error(
        "  cookie_domain: example.com",
        "tokens: { cookie: portcullis-at }",
    );
    assert!(message.contains("tokens.cookie"), "{message}");
    // Return hosts are host names or wildcards over a domain.
    for bad in [
        "https://app.example.com",
        "*",
        "*.com",
        "app.example.com/x",
        "a@b.com",
    ] {
        let message = config_error(&format!("  return_hosts: [\"{bad}\"]"), "");
        assert!(
            message.contains("auth.redirect_hosts[0]"),
            "{bad}: {message}"
        );
    }
}

#[test]
fn without_cookie_domain_the_cookies_stay_host_only_and_with_it_the_access_cookie_is_secure() {
    assert_eq!(
        config_cookie("", ""),
        ("__Host-portcullis-at".to_owned(), None)
    );
    assert_eq!(
        config_cookie("  cookie_domain: Corp.Example.com", ""),
        (AT.to_owned(), Some("corp.example.com".to_owned()))
    );
    assert_eq!(
        config_cookie(
            "  cookie_domain: example.com",
            "tokens: { cookie: __Secure-my-at }"
        ),
        ("__Secure-my-at".to_owned(), Some("example.com".to_owned()))
    );
    // Both spellings of the return hosts are the same key.
    config_cookie(
        "  redirect_hosts: [\"*.example.com\", \"app.example.org:8443\"]",
        "",
    );
    config_cookie("  return_hosts: [\"*.example.com\"]", "");
}
