//! Stage 6, **mutate**: make the request fit to forward. Strip, then inject.
//!
//! Runs after authorization (or after routing, for public routes), immediately before
//! forwarding; it cannot fail. It removes, in any case and with `_` spelled for `-`:
//! every client-sent identity header (`X-Auth-*`, the configured names, and every header an
//! identity assertion may go in), the identity and client-address headers other gateways and
//! platforms inject (`foreign_identity`: `Remote-User`, `X-Forwarded-User`, `X-WEBAUTH-USER`,
//! `True-Client-IP`, `X-Pomerium-*`, …) plus the operator's `identity_headers.strip` list,
//! `X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `X-Request-Id`, path and method overrides
//! (`X-Original-URL`, `X-HTTP-Method-Override`, …), hop-by-hop headers (and those `Connection`
//! names), `HTTP2-Settings`, framing headers spelled with `_` (`Content_Length`,
//! `Transfer_Encoding`), the gateway's own cookies, and `Authorization` unless the route
//! forwards it. Then it injects the verified identity (with its signed assertion on a route
//! that has one, [`crate::pipeline::assertion`]), the request id and
//! `X-Forwarded-For/-Proto/-Host` — keeping a client's forwarding chain only when the peer is a
//! configured trusted proxy (docs/security.md 28) — and one `traceparent` naming the gateway's
//! span ([`crate::pipeline::trace_context`]; a client's `tracestate` goes on only with a trace
//! the gateway continued).
//!
//! On the way back, [`protect_response`] runs on every forwarded response (HTTP/1, h2, and the
//! `101` of a WebSocket handshake): it drops any `Set-Cookie` for the gateway's own cookies, in
//! any case and with or without a `__Host-`/`__Secure-` prefix, and `Clear-Site-Data`
//! (docs/security.md 35).

use std::net::IpAddr;

use http::header::{AUTHORIZATION, CONNECTION, COOKIE, HOST, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::net::IpNet;
use crate::pipeline::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};
use crate::pipeline::verify::VerifiedToken;

/// The configured identity header names.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// Carries `sub`.
    pub subject: HeaderName,
    /// Carries `sid`.
    pub session: HeaderName,
    /// Carries the comma-separated permissions.
    pub permissions: HeaderName,
}

/// What mutate needs from the config.
#[derive(Debug)]
pub struct MutateConfig {
    /// Identity header names.
    pub identity: IdentityHeaders,
    /// Cookie names the gateway owns; removed before forwarding.
    pub gateway_cookies: Vec<String>,
    /// The gateway's cookie names as [`protect_response`] compares them: lower-case, without
    /// a `__Host-`/`__Secure-` prefix (see [`bare_cookie_name`]). Always includes the refresh
    /// and CSRF cookies, so a backend cannot plant them before `auth:` is turned on either.
    pub protected_cookies: Vec<String>,
    /// Further request headers to remove (`identity_headers.strip`).
    pub strip: Vec<StripRule>,
    /// Every header an identity assertion may go in ([`crate::pipeline::assertion`]): removed
    /// from client requests on every route, like the identity headers.
    pub assertion_headers: Vec<HeaderName>,
    /// Every header an issuer's `identity_claims` names: removed from client requests on every
    /// route, like the identity headers, and injected only for a token of an issuer that maps
    /// them.
    pub claim_headers: Vec<HeaderName>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

/// One entry of `identity_headers.strip`: a header name, or a prefix when written with a
/// trailing `*` (`X-Corp-*`). Matched in any case and with `_` for `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripRule {
    /// Lower-case name or prefix.
    name: Box<str>,
    prefix: bool,
}

impl StripRule {
    /// Parses `X-Legacy-User` or `X-Corp-*`; the error says why the entry is not a header name.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (name, prefix) = match entry.strip_suffix('*') {
            Some(p) => (p, true),
            None => (entry, false),
        };
        if name.is_empty() || HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!(
                "`{entry}` is not a header name (or a prefix ending in `*`)"
            ));
        }
        Ok(Self {
            name: name.to_ascii_lowercase().into(),
            prefix,
        })
    }

    fn matches(&self, name: &str) -> bool {
        if self.prefix {
            starts_with_name(name, &self.name)
        } else {
            same_name(name, &self.name)
        }
    }
}

impl MutateConfig {
    /// Whether `ip` is a configured trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

/// The verified identity the upstream is told about, as header values.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// `sub`.
    pub subject: &'a HeaderValue,
    /// `sid`, when the token has one.
    pub session: Option<&'a HeaderValue>,
    /// The granted permissions, comma-separated.
    pub permissions: &'a HeaderValue,
    /// The signed identity assertion and the header it goes in, on a route that has one.
    pub assertion: Option<(&'a HeaderName, &'a HeaderValue)>,
    /// The extra identity headers of the token's issuer (`identity_claims`).
    pub claims: &'a [(HeaderName, HeaderValue)],
}

impl<'a> Identity<'a> {
    /// The identity a verified token carries, with the permissions its roles grant.
    pub fn of(token: &'a VerifiedToken) -> Self {
        Self {
            subject: &token.subject_header,
            session: token.session.is_some().then_some(&token.session_header),
            permissions: &token.permissions_header,
            assertion: None,
            claims: &token.identity_claims,
        }
    }
}

/// Facts about the connection and request that mutate writes into headers.
#[derive(Debug)]
pub struct ForwardFacts<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// The TCP peer's address as a header value, formatted once per connection.
    pub peer_header: &'a HeaderValue,
    /// The listener terminated TLS.
    pub tls: bool,
    /// The canonical request host, if any.
    pub host: Option<&'a str>,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// Keep `Authorization`.
    pub forward_authorization: bool,
    /// Keep `Upgrade`/`Connection: upgrade` (a WebSocket handshake).
    pub upgrade: bool,
    /// The request's trace: the `traceparent` sent on, and whether `tracestate` may be.
    pub trace: &'a TraceContext,
}

/// Header names mutate writes, made once rather than parsed on every request.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection and are never forwarded,
/// in either direction.
/// `HTTP2-Settings` belongs to an `Upgrade: h2c` (RFC 7540 §3.2), which is never forwarded.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "http2-settings",
];

/// `a` equals `b` with `_` and `-` treated alike (names are already lower-case).
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (matches!(x, b'_' | b'-') && matches!(y, b'_' | b'-')))
}

fn starts_with_name(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len()
        && name.is_char_boundary(prefix.len())
        && same_name(&name[..prefix.len()], prefix)
}

/// Headers some backends obey to serve another path or method than the request line names
/// (IIS and Symfony read `X-Original-URL`/`X-Rewrite-URL`, many frameworks a method override).
/// Forwarded, they would let a client reach a resource or method other than the one the route
/// authorized, e.g. `GET /public` with `X-Original-URL: /admin` (docs/security.md 31).
const OVERRIDES: [&str; 7] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-http-host-override",
];

/// Names other gateways, identity-aware proxies and CDNs inject (Authelia and Caddy
/// `Remote-*`, oauth2-proxy `X-Forwarded-User`/`X-Auth-Request-*`, Grafana `X-WEBAUTH-USER`,
/// Apache `X-Remote-User`, Akamai and Cloudflare client addresses, Pomerium, authentik,
/// Azure Easy Auth, Google IAP, AWS ALB, Kong, vouch, client-certificate headers, Envoy). A
/// backend that once sat behind one of them may still believe them, so a client must not be
/// able to send them through the gateway (docs/security.md 28). Exact names and prefixes,
/// grouped by first byte so that most headers are ruled out by one comparison.
const FOREIGN_X_EXACT: [&str; 15] = [
    "x-client-ip",
    "x-cluster-client-ip",
    "x-user",
    "x-username",
    "x-user-id",
    "x-email",
    "x-proxy-user",
    "x-host",
    "x-originating-ip",
    "x-anonymous-consumer",
    "x-credential-identifier",
    "x-client-cert",
    "x-client-verify",
    "x-client-dn",
    "x-goog-iap-jwt-assertion",
];
const FOREIGN_X_PREFIX: [&str; 15] = [
    "x-remote-",
    "x-webauth-",
    "x-pomerium-",
    "x-authentik-",
    "x-ms-client-principal",
    "x-ms-token-",
    "x-goog-authenticated-user-",
    "x-amzn-oidc-",
    "x-vouch-",
    "x-consumer-",
    "x-authenticated-",
    "x-ssl-client-",
    "x-envoy-",
    "x-original-",
    "x-forwarded-",
];

/// Whether `name` (lower-case) is an identity or client-address header another gateway uses.
/// `X-Auth-*` (oauth2-proxy's `X-Auth-Request-*` included) is the gateway's own prefix and
/// is checked by [`spoofable`].
fn foreign_identity(name: &str) -> bool {
    let (exact, prefixes): (&[&str], &[&str]) = match name.as_bytes().first() {
        Some(b'r') => (&[], &["remote-"]),
        Some(b't') => (&["true-client-ip"], &[]),
        Some(b'c') => (&["cf-connecting-ip", "cf-connecting-ipv6"], &["cf-access-"]),
        Some(b'f') => (&["fastly-client-ip"], &[]),
        Some(b's') => (&[], &["ssl-client-"]),
        Some(b'x') => (&FOREIGN_X_EXACT, &FOREIGN_X_PREFIX),
        _ => return false,
    };
    exact.iter().any(|e| same_name(name, e)) || prefixes.iter().any(|p| starts_with_name(name, p))
}

/// Framing headers that a backend which folds `_` into `-` (CGI, WSGI, PHP) would read as
/// framing. hyper does not, so the gateway frames the body by the real `Content-Length` while
/// such a backend could believe `Content_Length` (docs/security.md 30). The hop-by-hop names,
/// `Transfer_Encoding` among them, are caught by [`HOP_BY_HOP`] in every spelling.
fn underscore_framing(name: &str) -> bool {
    name.as_bytes().contains(&b'_') && same_name(name, "content-length")
}

fn spoofable(name: &str, config: &MutateConfig) -> bool {
    let identity = &config.identity;
    if foreign_identity(name)
        || underscore_framing(name)
        || config.strip.iter().any(|r| r.matches(name))
        || config
            .assertion_headers
            .iter()
            .chain(&config.claim_headers)
            .any(|h| same_name(name, h.as_str()))
    {
        return true;
    }
    // Every fixed name below starts with `x` or `f`; most real headers are ruled out by their
    // first byte before any comparison.
    if !matches!(name.as_bytes().first(), Some(b'x' | b'f')) {
        return same_name(name, identity.subject.as_str())
            || same_name(name, identity.session.as_str())
            || same_name(name, identity.permissions.as_str());
    }
    starts_with_name(name, "x-auth-")
        || same_name(name, "forwarded")
        || same_name(name, "x-real-ip")
        || same_name(name, "x-request-id")
        || same_name(name, identity.subject.as_str())
        || same_name(name, identity.session.as_str())
        || same_name(name, identity.permissions.as_str())
        || OVERRIDES.iter().any(|o| same_name(name, o))
}

/// The header names a `Connection` header lists: hop-by-hop for this message only. The
/// [`HOP_BY_HOP`] names are left out: every caller strips those anyway, and leaving them out
/// means the usual `Connection: keep-alive` costs no allocation.
pub fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|n| {
            !n.is_empty()
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_bytes()))
        })
        // `from_bytes` lower-cases; a token that is no header name names nothing to strip.
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect()
}

/// The client's address: the peer, or — behind trusted proxies — the right-most address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, config: &MutateConfig) -> IpAddr {
    if !config.is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let chain: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for hop in chain.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !config.is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// The stage's entry point.
pub fn mutate(
    headers: &mut HeaderMap,
    identity: Option<Identity<'_>>,
    config: &MutateConfig,
    facts: &ForwardFacts<'_>,
) {
    let trusted = config.is_trusted(facts.peer);
    // Forwarding headers from a trusted proxy are carried over before the strip.
    let (prior_for, prior_proto, prior_host) = if trusted {
        (
            joined(headers, &X_FORWARDED_FOR),
            headers.get(X_FORWARDED_PROTO).cloned(),
            headers.get(X_FORWARDED_HOST).cloned(),
        )
    } else {
        (None, None, None)
    };

    // Strip. Names listed in `Connection` are hop-by-hop too.
    let mut doomed = connection_listed(headers);
    if facts.upgrade {
        doomed.retain(|n| n != "upgrade");
    }
    for name in headers.keys() {
        let n = name.as_str();
        // `_` spellings too: a backend that folds `_` into `-` must not read a client's
        // `Transfer_Encoding` as framing.
        let hop = HOP_BY_HOP.iter().any(|h| same_name(n, h))
            && !(facts.upgrade && (n == "upgrade" || n == "connection"));
        if hop || spoofable(n, config) || n == HOST {
            doomed.push(name.clone());
        }
    }
    if !facts.forward_authorization {
        doomed.push(AUTHORIZATION);
    }
    for name in &doomed {
        headers.remove(name);
    }
    if facts.upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    strip_cookies(headers, &config.gateway_cookies);
    // A `tracestate` belongs to the `traceparent` it came with: kept only when that trace is
    // continued (a trusted peer's valid one), never attached to a trace the gateway started.
    if !facts.trace.continued() {
        headers.remove(TRACESTATE);
    }
    if !doomed.is_empty() {
        tracing::debug!(stripped = ?doomed, "removed client-sent headers before forwarding");
    }

    // Inject.
    if let Some(identity) = identity {
        headers.insert(config.identity.subject.clone(), identity.subject.clone());
        if let Some(session) = identity.session {
            headers.insert(config.identity.session.clone(), session.clone());
        }
        headers.insert(
            config.identity.permissions.clone(),
            identity.permissions.clone(),
        );
        for (name, value) in identity.claims {
            headers.insert(name.clone(), value.clone());
        }
        if let Some((name, value)) = identity.assertion {
            headers.insert(name.clone(), value.clone());
        }
    }
    headers.insert(X_REQUEST_ID, facts.request_id.clone());
    // `insert` replaces every client-sent copy: the upstream sees exactly one.
    headers.insert(TRACEPARENT, facts.trace.header_value());
    let xff = match prior_for {
        Some(chain) => {
            let peer = facts.peer_header.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{chain}, {peer}")).ok()
        }
        None => Some(facts.peer_header.clone()),
    };
    if let Some(xff) = xff {
        headers.insert(X_FORWARDED_FOR, xff);
    }
    let proto = prior_proto
        .unwrap_or_else(|| HeaderValue::from_static(if facts.tls { "https" } else { "http" }));
    headers.insert(X_FORWARDED_PROTO, proto);
    let host = prior_host.or_else(|| facts.host.and_then(|h| HeaderValue::from_str(h).ok()));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// Response side, on every forwarded response: an upstream may not set, delete or shadow the
/// gateway's own cookies — a backend bug or compromise must not be able to pin a browser to an
/// attacker's token, plant a known CSRF value, or sign the user out — and may not send
/// `Clear-Site-Data`, which would wipe the gateway's cookies too (docs/security.md 35).
pub fn protect_response(headers: &mut HeaderMap, config: &MutateConfig) {
    if headers.remove(CLEAR_SITE_DATA).is_some() {
        tracing::debug!("removed Clear-Site-Data from an upstream response");
    }
    if !headers.contains_key(SET_COOKIE) {
        return;
    }
    let ours = |value: &HeaderValue| {
        let name = bare_cookie_name(set_cookie_name(value.as_bytes()));
        config
            .protected_cookies
            .iter()
            .any(|p| name.eq_ignore_ascii_case(p.as_bytes()))
    };
    if !headers.get_all(SET_COOKIE).iter().any(ours) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| !ours(v))
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for value in kept {
        headers.append(SET_COOKIE, value);
    }
    tracing::warn!("removed an upstream Set-Cookie for one of the gateway's cookies");
}

/// `Clear-Site-Data` (W3C): `"cookies"` clears every cookie of the origin.
const CLEAR_SITE_DATA: HeaderName = HeaderName::from_static("clear-site-data");

/// The name a browser gives the cookie a `Set-Cookie` value sets: the text before the first
/// `=` of the part before the first `;`, trimmed. A name-less cookie (`=__Host-at=x`) is sent
/// back as just its value, `__Host-at=x`, so its name is read from the value instead; a value
/// without `=` is taken whole.
fn set_cookie_name(value: &[u8]) -> &[u8] {
    let pair = value.split(|b| *b == b';').next().unwrap_or_default();
    let mut parts = pair.splitn(2, |b| *b == b'=');
    let name = parts.next().unwrap_or_default().trim_ascii();
    match parts.next() {
        Some(rest) if name.is_empty() => rest
            .split(|b| *b == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii(),
        _ => name,
    }
}

/// A cookie name without its `__Host-`/`__Secure-` prefixes (in any case, as browsers
/// compare them): `__secure-PORTCULLIS-rt` and `portcullis-rt` are both `PORTCULLIS-rt`,
/// to be compared case-insensitively.
pub fn bare_cookie_name(mut name: &[u8]) -> &[u8] {
    loop {
        let rest = [&b"__host-"[..], b"__secure-"].iter().find_map(|p| {
            (name.len() >= p.len() && name[..p.len()].eq_ignore_ascii_case(p))
                .then(|| &name[p.len()..])
        });
        match rest {
            Some(rest) => name = rest,
            None => return name,
        }
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Removes the gateway's cookies from every `Cookie` header, keeping the others in order. Several
/// `Cookie` headers (HTTP/2 sends one per cookie) are joined into one, as HTTP/1.1 requires.
fn strip_cookies(headers: &mut HeaderMap, ours: &[String]) {
    let mut values = headers.get_all(COOKIE).iter();
    let Some(first) = values.next() else { return };
    let several = values.next().is_some();
    let mut kept = String::with_capacity(first.len());
    let mut changed = several;
    for value in headers.get_all(COOKIE) {
        let Ok(text) = value.to_str() else {
            changed = true;
            continue;
        };
        for pair in text.split(';') {
            let pair = pair.trim();
            let name = pair.split('=').next().unwrap_or("").trim();
            if name.is_empty() || ours.iter().any(|o| o == name) {
                changed = true;
                continue;
            }
            if !kept.is_empty() {
                kept.push_str("; ");
            }
            kept.push_str(pair);
        }
    }
    if !changed {
        return;
    }
    headers.remove(COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept)
    {
        headers.insert(COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(trusted: &[&str]) -> MutateConfig {
        MutateConfig {
            identity: IdentityHeaders {
                subject: HeaderName::from_static("x-auth-subject"),
                session: HeaderName::from_static("x-auth-session"),
                permissions: HeaderName::from_static("x-user-perms"),
            },
            gateway_cookies: vec!["__Host-at".into()],
            protected_cookies: vec!["at".into(), "portcullis-rt".into()],
            strip: vec![
                StripRule::parse("X-Legacy-Login").unwrap(),
                StripRule::parse("X-Corp-*").unwrap(),
            ],
            assertion_headers: vec![HeaderName::from_static("backend-jwt")],
            claim_headers: vec![HeaderName::from_static("x-email")],
            trusted_proxies: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
        }
    }

    fn facts<'a>(peer: &str, rid: &'a HeaderValue) -> ForwardFacts<'a> {
        ForwardFacts {
            peer: peer.parse().unwrap(),
            // Leaked: a test's few bytes, so the facts can borrow it like a connection's.
            peer_header: Box::leak(Box::new(HeaderValue::from_str(peer).unwrap())),
            tls: true,
            host: Some("app.example.com"),
            request_id: rid,
            forward_authorization: false,
            upgrade: false,
            trace: Box::leak(Box::new(TraceContext::of(&HeaderMap::new(), false))),
        }
    }

    #[test]
    fn spoofed_identity_and_forwarding_headers_are_removed_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-auth-subject",
            "x_auth_subject",
            "X-AUTH-ROLES",
            "x-user-perms",
            "x_user_perms",
            "forwarded",
            "x-real-ip",
            "x_forwarded_for",
            "x-forwarded-host",
        ] {
            h.append(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        h.append("x-auth-subject", HeaderValue::from_static("evil2"));
        let rid = HeaderValue::from_static("rid");
        mutate(&mut h, None, &config(&[]), &facts("203.0.113.9", &rid));
        for (name, value) in &h {
            assert_ne!(value, "evil", "{name} survived");
            assert_ne!(value, "evil2", "{name} survived");
        }
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example.com");
        assert_eq!(h["x-request-id"], "rid");
        assert!(h.get("x-auth-subject").is_none());
    }

    #[test]
    fn forwarding_chain_is_kept_only_from_trusted_proxies() {
        let rid = HeaderValue::from_static("rid");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let cfg = config(&["10.0.0.0/8"]);
        let mut untrusted = h.clone();
        mutate(
            &mut untrusted,
            None,
            &cfg,
            &ForwardFacts {
                tls: false,
                ..facts("192.0.2.1", &rid)
            },
        );
        assert_eq!(untrusted["x-forwarded-for"], "192.0.2.1");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        mutate(
            &mut h,
            None,
            &cfg,
            &ForwardFacts {
                tls: false,
                ..facts("10.1.2.3", &rid)
            },
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.7, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn client_ip_skips_trusted_hops_from_the_right() {
        let cfg = config(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 198.51.100.7, 10.0.0.2"),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &cfg),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip("192.0.2.1".parse().unwrap(), &h, &cfg),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn upstreams_cannot_set_the_gateway_cookies_in_any_case_or_prefix() {
        let mut h = HeaderMap::new();
        for planted in [
            "__Host-at=planted; Path=/; Secure",
            "AT=planted",
            "__secure-AT=planted",
            "__HOST-__Secure-at=planted",
            " at =planted",
            "=__Host-at=planted",
            "__Secure-PORTCULLIS-rt=planted; Max-Age=0",
            "portcullis-rt",
        ] {
            h.append(SET_COOKIE, HeaderValue::from_str(planted).unwrap());
        }
        h.append(SET_COOKIE, HeaderValue::from_static("theme=dark"));
        h.append(SET_COOKIE, HeaderValue::from_static("attic=1"));
        h.insert(CLEAR_SITE_DATA, HeaderValue::from_static("\"cookies\""));
        protect_response(&mut h, &config(&[]));
        let left: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(left, ["theme=dark", "attic=1"]);
        assert!(h.get(CLEAR_SITE_DATA).is_none());
    }

    #[test]
    fn cookie_names_are_compared_without_prefix() {
        assert_eq!(bare_cookie_name(b"__Host-portcullis-at"), b"portcullis-at");
        assert_eq!(bare_cookie_name(b"__SECURE-rt"), b"rt");
        assert_eq!(bare_cookie_name(b"__Hostile"), b"__Hostile");
        assert_eq!(set_cookie_name(b"a=b=c; Path=/"), b"a");
        assert_eq!(set_cookie_name(b"=a=b"), b"a");
        assert_eq!(set_cookie_name(b"lonely"), b"lonely");
    }

    #[test]
    fn other_gateways_identity_headers_and_underscore_framing_are_removed() {
        let mut h = HeaderMap::new();
        for name in [
            "remote-user",
            "remote_groups",
            "x-forwarded-user",
            "x-forwarded-preferred-username",
            "x-auth-request-email",
            "x-webauth-user",
            "x-remote-user",
            "true-client-ip",
            "x-client-ip",
            "x_cluster_client_ip",
            "cf-connecting-ip",
            "fastly-client-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-pomerium-claim-email",
            "x-authentik-username",
            "x-ms-client-principal-name",
            "content_length",
            "transfer_encoding",
            "http2-settings",
            "x-legacy-login",
            "x_legacy_login",
            "x-corp-user",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("evil"),
            );
        }
        // Look-alikes that are not on any list stay.
        h.insert("x-userland", HeaderValue::from_static("kept"));
        h.insert("remotely", HeaderValue::from_static("kept"));
        h.insert("content-length", HeaderValue::from_static("0"));
        let rid = HeaderValue::from_static("rid");
        mutate(&mut h, None, &config(&[]), &facts("192.0.2.1", &rid));
        for (name, value) in &h {
            assert_ne!(value, "evil", "{name} survived");
        }
        assert_eq!(h["x-userland"], "kept");
        assert_eq!(h["remotely"], "kept");
        assert_eq!(h["content-length"], "0");
    }

    #[test]
    fn a_client_sent_assertion_header_is_removed_in_every_spelling_and_only_ours_is_sent() {
        let rid = HeaderValue::from_static("rid");
        let cfg = config(&[]);
        let client = || {
            let mut h = HeaderMap::new();
            for name in ["backend-jwt", "backend_jwt", "x-auth-assertion"] {
                h.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_static("forged"),
                );
            }
            h
        };
        // A public route: no identity, no assertion, and nothing of the client's left.
        let mut h = client();
        mutate(&mut h, None, &cfg, &facts("192.0.2.1", &rid));
        assert!(h.values().all(|v| v != "forged"), "{h:?}");
        // A route with one: exactly the gateway's.
        let mut h = client();
        let (sub, perms, jwt) = (
            HeaderValue::from_static("alice"),
            HeaderValue::from_static("docs:read"),
            HeaderValue::from_static("h.p.s"),
        );
        let name = HeaderName::from_static("backend-jwt");
        let identity = Identity {
            subject: &sub,
            session: None,
            permissions: &perms,
            assertion: Some((&name, &jwt)),
            claims: &[],
        };
        mutate(&mut h, Some(identity), &cfg, &facts("192.0.2.1", &rid));
        assert!(h.values().all(|v| v != "forged"), "{h:?}");
        assert_eq!(h.get_all("backend-jwt").iter().collect::<Vec<_>>(), [jwt]);
    }

    #[test]
    fn strip_rules_are_header_names_or_prefixes() {
        assert!(StripRule::parse("X-Ok").is_ok());
        assert!(StripRule::parse("X-Ok-*").unwrap().matches("x_ok_user"));
        assert!(!StripRule::parse("X-Ok").unwrap().matches("x-ok-user"));
        assert!(StripRule::parse("bad name").is_err());
        assert!(StripRule::parse("*").is_err());
    }

    #[test]
    fn gateway_cookies_and_authorization_never_reach_the_upstream() {
        let rid = HeaderValue::from_static("rid");
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-at=secret; b=2"),
        );
        h.append(COOKIE, HeaderValue::from_static("__Host-at=secret"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
        h.insert(CONNECTION, HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        mutate(&mut h, None, &config(&[]), &facts("192.0.2.1", &rid));
        assert_eq!(h[COOKIE], "a=1; b=2");
        assert!(h.get(AUTHORIZATION).is_none());
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get(CONNECTION).is_none());
    }

    #[test]
    fn exactly_one_traceparent_is_sent_and_tracestate_only_with_a_continued_trace() {
        const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let rid = HeaderValue::from_static("rid");
        let client = || {
            let mut h = HeaderMap::new();
            h.append(TRACEPARENT, HeaderValue::from_static(CALLER));
            h.append(TRACEPARENT, HeaderValue::from_static(CALLER));
            h.insert(TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            h
        };
        // Two values: not continued, even from a trusted peer.
        let mut h = client();
        let trace = TraceContext::of(&h, true);
        mutate(
            &mut h,
            None,
            &config(&[]),
            &ForwardFacts {
                trace: &trace,
                ..facts("192.0.2.1", &rid)
            },
        );
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        assert_eq!(h[TRACEPARENT], trace.header_value());
        assert!(h.get(TRACESTATE).is_none());
        // One valid value from a trusted peer: continued, its tracestate kept.
        let mut h = client();
        h.insert(TRACEPARENT, HeaderValue::from_static(CALLER));
        let trace = TraceContext::of(&h, true);
        mutate(
            &mut h,
            None,
            &config(&["10.0.0.0/8"]),
            &ForwardFacts {
                trace: &trace,
                ..facts("10.0.0.1", &rid)
            },
        );
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert_ne!(sent, CALLER);
        assert_eq!(h[TRACESTATE], "congo=t61rcWkgMzE");
    }

    #[test]
    fn connection_lists_custom_names_lower_cased_and_skips_the_standard_ones() {
        let mut h = HeaderMap::new();
        h.append(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop,, Close"),
        );
        h.append(
            CONNECTION,
            HeaderValue::from_static(" TE ,x-other , bad name"),
        );
        let listed = connection_listed(&h);
        let names: Vec<&str> = listed.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-secret-hop", "close", "x-other"]);
        // The common case allocates nothing.
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(connection_listed(&h).capacity(), 0);
    }
}
