//! `identity_headers:` and `trusted_proxies:` → the [`MutateConfig`] the mutate stage strips
//! and injects headers with, including the cookies a backend may not set.

use http::HeaderName;

use super::error::{ConfigError, invalid};
use super::raw::RawIdentityHeaders;
use crate::net::IpNet;
use crate::pipeline::mutate::{IdentityHeaders, MutateConfig, StripRule};

/// `identity_headers:`, compiled: the names injected, and the extra client headers stripped.
#[derive(Debug)]
pub(super) struct Identity {
    pub(super) headers: IdentityHeaders,
    strip: Vec<StripRule>,
}

/// An identity header name at `key`: a header name with no other meaning.
pub(super) fn identity_header_name(key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    let parsed = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| invalid(key, format!("`{name}` is not a header name")))?;
    const RESERVED: [&str; 10] = [
        "host",
        "cookie",
        "authorization",
        "connection",
        "content-length",
        "transfer-encoding",
        "upgrade",
        "te",
        "x-request-id",
        "x-forwarded-for",
    ];
    if RESERVED.contains(&parsed.as_str()) {
        return Err(invalid(
            key,
            format!("`{name}` is a header with another meaning"),
        ));
    }
    Ok(parsed)
}

/// Compiles `identity_headers:`: each name must be a header with no other meaning.
pub(super) fn identity_headers(ih: &RawIdentityHeaders) -> Result<Identity, ConfigError> {
    let header = |key: &str,
                  value: Option<&String>,
                  default: &'static str|
     -> Result<HeaderName, ConfigError> {
        identity_header_name(key, value.map_or(default, String::as_str))
    };
    let identity = IdentityHeaders {
        subject: header(
            "identity_headers.subject",
            ih.subject.as_ref(),
            "x-auth-subject",
        )?,
        session: header(
            "identity_headers.session",
            ih.session.as_ref(),
            "x-auth-session",
        )?,
        permissions: header(
            "identity_headers.permissions",
            ih.permissions.as_ref(),
            "x-auth-permissions",
        )?,
    };

    let strip = ih
        .strip
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            StripRule::parse(entry).map_err(|m| invalid(format!("identity_headers.strip[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Identity {
        headers: identity,
        strip,
    })
}

/// Compiles `trusted_proxies:`.
pub(super) fn trusted_proxies(raw: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, p)| IpNet::parse(p).map_err(|m| invalid(format!("trusted_proxies[{i}]"), m)))
        .collect()
}

/// The mutate stage's settings. `access_cookie` is `tokens.cookie`; with `auth` the login
/// flow's cookies are the gateway's too. `assertion_headers` are the names identity assertions
/// may go in, and `claim_headers` those of the issuers' `identity_claims`, both stripped from
/// client requests like the identity headers.
pub(super) fn config(
    identity: Identity,
    trusted_proxies: Vec<IpNet>,
    assertion_headers: Vec<HeaderName>,
    claim_headers: Vec<HeaderName>,
    access_cookie: &str,
    auth: bool,
) -> MutateConfig {
    let mut gateway_cookies = vec![access_cookie.to_owned()];
    if auth {
        gateway_cookies.extend(crate::auth_flow::cookies::FLOW_COOKIES.map(str::to_owned));
    }
    // What a backend may not `Set-Cookie`: the gateway's cookies, and the auth flow's even
    // while it is off, each in every case and prefix.
    let mut protected_cookies: Vec<String> = gateway_cookies
        .iter()
        .map(String::as_str)
        .chain([
            crate::auth_flow::cookies::REFRESH_COOKIE,
            crate::auth_flow::cookies::CSRF_COOKIE,
        ])
        .map(|name| {
            String::from_utf8_lossy(crate::pipeline::mutate::bare_cookie_name(name.as_bytes()))
                .to_ascii_lowercase()
        })
        .collect();
    protected_cookies.sort();
    protected_cookies.dedup();
    MutateConfig {
        identity: identity.headers,
        gateway_cookies,
        protected_cookies,
        strip: identity.strip,
        assertion_headers,
        claim_headers,
        trusted_proxies,
    }
}
