//! The browser login flow and the gateway as a token issuer: `/auth/*` and
//! `/.well-known/jwks.json` (docs/security.md 13–27).
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /auth/login` | the login form; with a refresh cookie bound to this browser, the refresh page instead |
//! | `POST /auth/login` | form or JSON login: new session, cookies (or tokens in the body) |
//! | `POST /auth/refresh` | rotates the refresh token (cookie or JSON body), new access token |
//! | `POST /auth/logout` | ends this session, denylists the access token, expires the cookies |
//! | `POST /auth/logout-all` | ends every session of the user |
//! | `GET /auth/sessions` | the user's sessions, HTML or JSON |
//! | `POST /auth/sessions/revoke` | ends one of the user's own sessions |
//! | `GET /.well-known/jwks.json` | the public signing keys |
//! | `GET /auth/static/*` | the pages' stylesheet and script |
//! | `GET /auth/oidc/<id>` | starts a sign-in through the OpenID Provider `<id>` ([`oidc`]) |
//! | `GET /auth/oidc/<id>/callback` | the provider's answer: a new session, cookies, 303 to the return path |
//! | `POST /auth/oidc/<id>/backchannel-logout` | the provider's `logout_token`: ends the matching sessions everywhere |
//!
//! **Expired access token in a browser.** A navigation with an expired (or missing) access
//! cookie is redirected by the proxy to `GET /auth/login?return_to=…`. The refresh cookie is
//! scoped to `/auth`, so that request carries it: instead of the form, the login page then
//! answers with a small page whose same-origin script POSTs to `/auth/refresh` with the CSRF
//! token, and the refresh answers 303 to the return path. No GET changes state, so a
//! cross-site page cannot make a browser refresh (or learn anything from a refresh), and the
//! POST passes the same CSRF checks as every other state change. Without JavaScript the page
//! shows a "Continue" button.
//!
//! **Two deployments.** On the protected host itself (the ingress sends its `/auth/*` here),
//! every cookie is host-only. With `auth.cookie_domain`, one central auth host logs browsers in
//! for its sibling subdomains: only the access cookie carries `Domain` (so a subdomain's
//! proxy or forward-auth check receives it), the refresh, binding and CSRF cookies stay on
//! the auth host ([`cookies`]); the proxy's login redirect then names the absolute URL to come
//! back to ([`redirect::return_target`]), which the login page follows only to a host listed
//! in `auth.redirect_hosts`. Every state change still posts from the auth host's own pages to
//! themselves: a page on a subdomain is another origin, refused by [`csrf`].
//!
//! **Planted refresh cookies.** A sibling subdomain can plant a `__Secure-` refresh cookie
//! (`Domain=` the parent), so a refresh cookie counts only next to the `__Host-` binding cookie
//! it was issued with (docs/security.md 36; [`cookies`] says how, [`tokens`] what a bound
//! refresh token carries). Refresh tokens in JSON bodies (API clients) are not bound, and are
//! refused in a cookie; bound ones are refused in a body.
//!
//! Every handler returns `Err` for refusals; [`crate::error::error_response`] turns them into
//! responses, except where a browser is better served by the form again (a failed login).

pub mod cookies;
pub mod csrf;
pub mod oidc;
pub mod pages;
pub mod redirect;
pub mod tokens;

pub mod handlers;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;

use crate::keys::signing::SigningKeys;
use crate::users::UsersHandle;
pub use handlers::handle;

/// Paths the auth flow answers (everything under `/auth/` and the JWKS document).
pub fn owns(path: &str) -> bool {
    path == "/auth" || path.starts_with("/auth/") || path == JWKS_PATH
}

/// Where the public keys are published.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The login page.
pub const LOGIN_PATH: &str = "/auth/login";

/// Session lifetimes.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Idle timeout without "remember me".
    pub idle: Duration,
    /// Absolute lifetime without "remember me".
    pub absolute: Duration,
    /// Idle timeout with "remember me".
    pub remember_idle: Duration,
    /// Absolute lifetime with "remember me".
    pub remember_absolute: Duration,
}

impl Lifetimes {
    /// (idle, absolute) for a session.
    pub fn of(&self, remember_me: bool) -> (Duration, Duration) {
        if remember_me {
            (self.remember_idle, self.remember_absolute)
        } else {
            (self.idle, self.absolute)
        }
    }
}

/// Login throttling limits.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    /// Failed logins per client IP per window.
    pub per_ip: u32,
    /// Failed logins per canonical username per window.
    pub per_user: u32,
    /// The window.
    pub window: Duration,
}

/// The auth flow's compiled settings: part of the runtime, swapped with it on reload.
pub struct AuthSettings {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Signing keys; the newest signs.
    pub signing: Arc<SigningKeys>,
    /// The users file, reloaded when it changes.
    pub users: Arc<UsersHandle>,
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Session lifetimes.
    pub lifetimes: Lifetimes,
    /// Reuse of a rotated refresh token within this window is a concurrent request, not theft.
    pub refresh_grace: Duration,
    /// Post-login redirects.
    pub redirect: redirect::RedirectPolicy,
    /// Login throttling.
    pub throttle: Throttle,
    /// The JWKS document.
    pub jwks: Bytes,
    /// Its `Cache-Control`.
    pub jwks_cache_control: HeaderValue,
    /// Name of the access-token cookie (`tokens.cookie`).
    pub access_cookie: String,
    /// `auth.cookie_domain`: the parent domain the access cookie is shared with, lower-case
    /// (a central auth host); `None`: every cookie is host-only.
    pub cookie_domain: Option<String>,
    /// The pages' `Content-Security-Policy`: [`pages::CSP`] with the redirect hosts added to
    /// `form-action` (a form POST may be answered with a redirect to one of them).
    pub page_csp: HeaderValue,
    /// Whether a users file is configured: the login page shows the password form.
    pub password_login: bool,
    /// `auth.providers`: the OpenID Providers browsers may sign in through, in config order.
    pub providers: Vec<Arc<oidc::Provider>>,
}

impl AuthSettings {
    /// The `Domain` of the access cookie set or expired in answer to a request to `origin`
    /// ([`cookies::domain_for`]).
    pub fn access_domain(&self, origin: &str) -> Option<&str> {
        cookies::domain_for(self.cookie_domain.as_deref(), origin)
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("cookie_domain", &self.cookie_domain)
            .finish_non_exhaustive()
    }
}

/// Facts about the client the handlers record.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address (behind trusted proxies, from `X-Forwarded-For`).
    pub ip: IpAddr,
    /// `User-Agent`, possibly empty.
    pub user_agent: String,
    /// `scheme://host[:port]` this request was addressed to, for the `Origin` check.
    pub origin: String,
}
