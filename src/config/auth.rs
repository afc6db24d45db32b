//! `auth:` and `login_url:` → the login flow's [`AuthSettings`]: the users file, the signing
//! keys, session lifetimes, redirects and throttling; and the gateway registered as an issuer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::error::{ConfigError, invalid};
use super::raw::RawAuth;
use super::units::duration;
use crate::auth_flow::redirect::{self, HostPattern, RedirectPolicy};
use crate::auth_flow::{AuthSettings, Lifetimes, Throttle, cookies, pages};
use crate::keys::signing::SigningKeys;
use crate::keys::{self, Issuer, KeySet, VerificationKey};
use crate::pipeline::identify::OwnIssuer;
use crate::users::UsersHandle;

/// Checks `login_url:`: a path on this gateway or an `https://` URL, never a
/// protocol-relative or backslashed one a browser would read as another host.
pub(super) fn login_url(login: Option<&str>) -> Result<(), ConfigError> {
    if let Some(login) = login {
        let relative = login.starts_with('/') && !login.starts_with("//") && !login.contains('\\');
        if !relative && !login.starts_with("https://") {
            return Err(invalid(
                "login_url",
                "must be a path like /auth/login or an https:// URL",
            ));
        }
    }
    Ok(())
}

/// The default of `tokens.cookie` that `auth:` implies: [`cookies::SHARED_ACCESS_COOKIE`] with
/// `auth.cookie_domain`, else none (the plain default stands).
pub(super) fn access_cookie_default(auth: Option<&RawAuth>) -> Option<&'static str> {
    auth.and_then(|a| a.cookie_domain.as_ref())
        .map(|_| cookies::SHARED_ACCESS_COOKIE)
}

/// Checks `auth.cookie_domain` and lower-cases it: a registrable-looking domain name, like
/// `example.com` — no scheme, port, path or leading dot, not an IP address, at least two
/// labels. (Whether it is a public suffix, which browsers refuse as a `Domain`, cannot be told
/// without the public suffix list: that stays the operator's to get right.)
fn cookie_domain(raw: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let domain = raw.trim().to_ascii_lowercase();
    let refuse = |why: &str| Err(invalid("auth.cookie_domain", why.to_owned()));
    if domain.contains("://") {
        return refuse("must be a domain like example.com, not a URL");
    }
    if domain.starts_with('.') {
        return refuse("must not start with a dot: write example.com");
    }
    if domain.contains(['/', '@', '?', '#', '\\']) {
        return refuse("must be a domain like example.com, without a path");
    }
    if domain.contains([':', '[', ']']) {
        return refuse("must be a domain like example.com, without a port");
    }
    if domain.parse::<std::net::IpAddr>().is_ok()
        || domain
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return refuse("must be a domain name, not an IP address (browsers ignore Domain=<ip>)");
    }
    if !domain.contains('.') {
        return refuse("must have at least two labels, like example.com");
    }
    if !redirect::dns_name(&domain) {
        return refuse("must be a domain like example.com (letters, digits, hyphens, dots)");
    }
    Ok(Some(domain))
}

/// The key used when `auth.signing_keys` is empty: made once per process, so a config reload
/// does not invalidate every token issued so far.
fn ephemeral_signing_keys() -> Arc<SigningKeys> {
    static EPHEMERAL: std::sync::OnceLock<Arc<SigningKeys>> = std::sync::OnceLock::new();
    Arc::clone(EPHEMERAL.get_or_init(|| {
        tracing::warn!(
            "auth.signing_keys is empty: signing with an ephemeral EdDSA key generated now; \
             tokens stop verifying when the process exits and other instances cannot verify them"
        );
        Arc::new(SigningKeys::ephemeral())
    }))
}

/// Compiles `auth:`: loads the users file and the signing keys, and registers the gateway as
/// an issuer whose tokens always need a live session.
pub(super) fn compile(
    a: &RawAuth,
    keyset: &mut KeySet,
    cookie_name: &str,
    base: &Path,
) -> Result<(AuthSettings, OwnIssuer), ConfigError> {
    if !a.issuer.starts_with("https://") && !a.issuer.starts_with("http://") {
        return Err(invalid(
            "auth.issuer",
            "must be the gateway's URL, like https://gateway.example.com",
        ));
    }
    if keyset.issuers.iter().any(|i| *i.iss == *a.issuer) {
        return Err(invalid(
            "auth.issuer",
            format!("`{}` is also listed under `issuers`", a.issuer),
        ));
    }
    let cookie_domain = cookie_domain(a.cookie_domain.as_deref())?;
    if cookie_domain.is_some() {
        if !cookie_name.starts_with("__Secure-") {
            return Err(invalid(
                "tokens.cookie",
                "with `auth.cookie_domain`, the access-token cookie must use the `__Secure-` \
                 prefix (a `__Host-` cookie cannot carry Domain); leave tokens.cookie out for \
                 `__Secure-portcullis-at`",
            ));
        }
    } else if !cookie_name.starts_with("__Host-") {
        return Err(invalid(
            "tokens.cookie",
            "with `auth:`, the access-token cookie must use the `__Host-` prefix",
        ));
    }
    let audience = a.audience.clone().unwrap_or_else(|| a.issuer.clone());
    let access_ttl = duration(
        "auth.access_ttl",
        a.access_ttl.as_ref(),
        Duration::from_secs(900),
    )?;
    if access_ttl < Duration::from_secs(1) || access_ttl > Duration::from_secs(3600) {
        return Err(invalid("auth.access_ttl", "must be between 1s and 1h"));
    }
    let lifetimes = Lifetimes {
        idle: duration(
            "auth.idle_timeout",
            a.idle_timeout.as_ref(),
            Duration::from_secs(12 * 3600),
        )?,
        absolute: duration(
            "auth.absolute_lifetime",
            a.absolute_lifetime.as_ref(),
            Duration::from_secs(24 * 3600),
        )?,
        remember_idle: duration(
            "auth.remember_me_idle_timeout",
            a.remember_me_idle_timeout.as_ref(),
            Duration::from_secs(14 * 86_400),
        )?,
        remember_absolute: duration(
            "auth.remember_me_absolute_lifetime",
            a.remember_me_absolute_lifetime.as_ref(),
            Duration::from_secs(30 * 86_400),
        )?,
    };
    for (key, value) in [
        ("auth.idle_timeout", lifetimes.idle),
        ("auth.absolute_lifetime", lifetimes.absolute),
        ("auth.remember_me_idle_timeout", lifetimes.remember_idle),
        (
            "auth.remember_me_absolute_lifetime",
            lifetimes.remember_absolute,
        ),
    ] {
        if value < access_ttl {
            return Err(invalid(key, "must be at least auth.access_ttl"));
        }
    }
    let refresh_grace = duration(
        "auth.refresh_grace",
        a.refresh_grace.as_ref(),
        Duration::from_secs(10),
    )?;
    if refresh_grace > Duration::from_secs(120) {
        return Err(invalid(
            "auth.refresh_grace",
            "more than 2m lets a stolen refresh token be replayed unnoticed",
        ));
    }
    let default_redirect = a.default_redirect.clone().unwrap_or_else(|| "/".to_owned());
    let mut hosts = Vec::new();
    for (i, h) in a.redirect_hosts.iter().enumerate() {
        hosts.push(
            HostPattern::parse(h).map_err(|e| invalid(format!("auth.redirect_hosts[{i}]"), e))?,
        );
    }
    let redirect = RedirectPolicy {
        default: "/".to_owned(),
        hosts,
    };
    if redirect.target(Some(&default_redirect)) != default_redirect {
        return Err(invalid(
            "auth.default_redirect",
            "must be a path like /app or an https:// URL on a host in auth.redirect_hosts",
        ));
    }
    let redirect = RedirectPolicy {
        default: default_redirect,
        ..redirect
    };
    let page_csp = HeaderValue::from_str(&pages::csp(&redirect.form_action()))
        .map_err(|_| invalid("auth.redirect_hosts", "not valid in a header"))?;
    let th = &a.throttle;
    let throttle = Throttle {
        per_ip: th.per_ip.unwrap_or(50),
        per_user: th.per_user.unwrap_or(5),
        window: duration(
            "auth.throttle.window",
            th.window.as_ref(),
            Duration::from_secs(900),
        )?,
    };
    if throttle.per_ip == 0 || throttle.per_user == 0 || throttle.window.is_zero() {
        return Err(invalid(
            "auth.throttle",
            "limits and window must be above zero",
        ));
    }
    let jwks_max_age = duration(
        "auth.jwks_max_age",
        a.jwks_max_age.as_ref(),
        Duration::from_secs(300),
    )?;

    let users = match &a.users_file {
        Some(file) => {
            UsersHandle::load(base.join(file)).map_err(|e| invalid("auth.users_file", e))?
        }
        None if a.providers.is_empty() => {
            return Err(invalid(
                "auth.users_file",
                "is needed unless `auth.providers` lists an OpenID Provider to sign in through",
            ));
        }
        None => UsersHandle::empty(),
    };

    let signing = if a.signing_keys.is_empty() {
        ephemeral_signing_keys()
    } else {
        let mut list = Vec::with_capacity(a.signing_keys.len());
        for (i, k) in a.signing_keys.iter().enumerate() {
            let alg = keys::parse_algorithm(&k.alg)
                .map_err(|e| invalid(format!("auth.signing_keys[{i}].alg"), e))?;
            list.push((base.join(&k.pem), alg));
        }
        Arc::new(
            SigningKeys::load(&list)
                .map_err(|(i, e)| invalid(format!("auth.signing_keys[{i}]"), e))?,
        )
    };
    let issuer_index = keyset.add_issuer(Issuer {
        iss: a.issuer.as_str().into(),
        audiences: Box::new([audience.as_str().into()]),
        require_session: true,
        max_lifetime: access_ttl,
        profile: keys::profile::TokenProfile::default(),
        qualify_users: false,
    });
    for (kid, alg, key) in signing.verification_keys() {
        keyset
            .insert(
                &kid,
                VerificationKey {
                    alg,
                    key,
                    issuer: issuer_index,
                },
            )
            .map_err(|e| invalid("auth.signing_keys", e))?;
    }
    let jwks_cache_control =
        HeaderValue::from_str(&format!("public, max-age={}", jwks_max_age.as_secs()))
            .map_err(|_| invalid("auth.jwks_max_age", "out of range"))?;
    let users = Arc::new(users);
    let own = OwnIssuer::new(issuer_index, Arc::clone(&users));
    let providers = super::providers::compile(&a.providers, keyset, &a.issuer, base)?;
    let auth = AuthSettings {
        issuer: a.issuer.clone(),
        audience,
        jwks: signing.jwks_json(),
        signing,
        users,
        access_ttl,
        lifetimes,
        refresh_grace,
        redirect,
        throttle,
        jwks_cache_control,
        access_cookie: cookie_name.to_owned(),
        cookie_domain,
        page_csp,
        password_login: a.users_file.is_some(),
        providers,
    };
    Ok((auth, own))
}
