//! `upstreams:` → the named origins routes forward to: an HTTP(S) client each (TLS roots,
//! protocol, timeouts, pool size) or the built-in echo service, and the identity assertion
//! each may receive (also compiled here for `routes[].assertion`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Uri};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::{Cause, ConfigError, ContextError, invalid};
use super::raw::{RawAssertion, RawUpstream};
use super::units::duration;
use crate::pipeline::assertion::{self, AssertionSpec, AudienceTable};
use crate::pipeline::forward::{HttpUpstream, Upstream, UpstreamSettings};
use crate::pipeline::mutate::{HOP_BY_HOP, IdentityHeaders};

/// `upstreams:`, compiled: `names[i]` names `upstreams[i]`, the index a route forwards to.
#[derive(Debug)]
pub(super) struct Upstreams {
    /// The names, for resolving `routes[].upstream`.
    pub(super) names: Vec<String>,
    /// The upstreams, in the same order.
    pub(super) upstreams: Vec<Upstream>,
    /// Each one's `assertion`, in the same order: what its routes send unless they say
    /// otherwise.
    pub(super) assertions: Vec<Option<AssertionSpec>>,
}

/// What an `assertion:` is checked against.
#[derive(Debug, Clone, Copy)]
pub(super) struct AssertionContext<'a> {
    /// Whether `auth:` is configured: assertions are signed with its keys.
    pub(super) signing: bool,
    /// Every audience access tokens are accepted for, with the key that names it
    /// (`auth.audience`, `issuers[0].audiences[1]`): an assertion's must be none of them.
    pub(super) access_audiences: &'a [(String, String)],
    /// The identity header names, which an assertion may not take.
    pub(super) identity: &'a IdentityHeaders,
}

/// Compiles the `assertion:` at `key` into `table`: `audience` set and no access-token
/// audience, `ttl` between 1 s and 60 s, `header` a name with no other meaning; and `auth:`
/// configured, whose keys sign it.
pub(super) fn assertion(
    key: &str,
    raw: &RawAssertion,
    cx: AssertionContext<'_>,
    table: &mut AudienceTable,
) -> Result<AssertionSpec, ConfigError> {
    if !cx.signing {
        return Err(invalid(
            key,
            "requires `auth:`: assertions are signed with the gateway's keys \
             (auth.signing_keys, or the ephemeral key)",
        ));
    }
    let audience = raw.audience.trim();
    if audience.is_empty() || audience != raw.audience {
        return Err(invalid(
            format!("{key}.audience"),
            "must name the backend, like https://backend.example, without surrounding spaces",
        ));
    }
    if let Some((_, at)) = cx.access_audiences.iter().find(|(a, _)| *a == audience) {
        return Err(invalid(
            format!("{key}.audience"),
            format!(
                "`{audience}` is also an access-token audience ({at}): an assertion must never \
                 be accepted as an access token"
            ),
        ));
    }
    let ttl = duration(&format!("{key}.ttl"), raw.ttl.as_ref(), assertion::MAX_TTL)?;
    if ttl < Duration::from_secs(1) || ttl > assertion::MAX_TTL || ttl.subsec_nanos() != 0 {
        return Err(invalid(
            format!("{key}.ttl"),
            "must be whole seconds between 1s and 60s",
        ));
    }
    let header = match &raw.header {
        None => assertion::DEFAULT_HEADER,
        Some(name) => {
            assertion_header(name, cx.identity).map_err(|m| invalid(format!("{key}.header"), m))?
        }
    };
    Ok(table.spec(audience, ttl, header))
}

/// Headers an assertion may not go in: HTTP's own, and those the gateway sets for itself.
const NOT_FOR_ASSERTIONS: [&str; 13] = [
    "host",
    "cookie",
    "authorization",
    "content-length",
    "content-type",
    "content-encoding",
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "traceparent",
    "tracestate",
];

/// `name` as an assertion header: a header name with no other meaning (it is stripped from
/// every client request, so it must not be one a request needs).
fn assertion_header(name: &str, identity: &IdentityHeaders) -> Result<HeaderName, String> {
    let parsed = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    let n = parsed.as_str();
    let identity_header = [&identity.subject, &identity.session, &identity.permissions]
        .iter()
        .any(|h| h.as_str() == n);
    if identity_header || NOT_FOR_ASSERTIONS.contains(&n) || HOP_BY_HOP.contains(&n) {
        return Err(format!("`{name}` is a header with another meaning"));
    }
    Ok(parsed)
}

/// Compiles `upstreams:`; CA files are relative to `base`. The system roots are loaded once,
/// and only when an `https://` upstream without its own `ca` needs them.
pub(super) fn compile(
    raw: &BTreeMap<String, RawUpstream>,
    base: &Path,
    cx: AssertionContext<'_>,
    table: &mut AudienceTable,
) -> Result<Upstreams, ConfigError> {
    let mut names = Vec::with_capacity(raw.len());
    let mut upstreams = Vec::new();
    let mut assertions = Vec::with_capacity(raw.len());
    let mut native_roots: Option<Arc<rustls::RootCertStore>> = None;
    for (name, up) in raw {
        let key = format!("upstreams.{name}");
        let upstream = match (&up.url, up.echo) {
            (None, Some(true)) => Upstream::Echo,
            (Some(url), None | Some(false)) => {
                let uri: Uri = url.parse().map_err(|e| {
                    invalid(
                        format!("{key}.url"),
                        ContextError::new(format!("`{url}` is not a URL"), e),
                    )
                })?;
                let roots = match &up.ca {
                    Some(ca) => Arc::new(
                        roots_from_file(&base.join(ca))
                            .map_err(|m| invalid(format!("{key}.ca"), m))?,
                    ),
                    None if uri.scheme_str() == Some("https") => native_roots
                        .get_or_insert_with(|| Arc::new(system_roots()))
                        .clone(),
                    None => Arc::new(rustls::RootCertStore::empty()),
                };
                let tls = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let h2 = match up.protocol.as_deref() {
                    None | Some("http1") => false,
                    Some("h2") => true,
                    Some(other) => {
                        return Err(invalid(
                            format!("{key}.protocol"),
                            format!("`{other}` is not http1 or h2"),
                        ));
                    }
                };
                let settings = UpstreamSettings {
                    connect_timeout: duration(
                        &format!("{key}.connect_timeout"),
                        up.connect_timeout.as_ref(),
                        Duration::from_secs(5),
                    )?,
                    response_timeout: duration(
                        &format!("{key}.response_timeout"),
                        up.response_timeout.as_ref(),
                        Duration::from_secs(30),
                    )?,
                    idle_timeout: duration(
                        &format!("{key}.idle_timeout"),
                        up.idle_timeout.as_ref(),
                        Duration::from_secs(90),
                    )?,
                    max_idle_per_host: up.max_idle_per_host.unwrap_or(64),
                    h2,
                    preserve_host: up.preserve_host.unwrap_or(false),
                };
                Upstream::Http(Box::new(
                    HttpUpstream::new(&uri, tls, settings)
                        .map_err(|m| invalid(format!("{key}.url"), m))?,
                ))
            }
            _ => return Err(invalid(&key, "set exactly one of `url` or `echo: true`")),
        };
        let spec = match &up.assertion {
            None => None,
            Some(a) => Some(assertion(&format!("{key}.assertion"), a, cx, table)?),
        };
        names.push(name.clone());
        upstreams.push(upstream);
        assertions.push(spec);
    }
    Ok(Upstreams {
        names,
        upstreams,
        assertions,
    })
}

/// The CA certificates of a PEM bundle, for an upstream's own `ca`.
pub(super) fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, Cause> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ContextError::new(format!("cannot read {}", path.display()), e))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| ContextError::new(format!("cannot parse {}", path.display()), e))?;
        roots.add(cert).map_err(|e| {
            ContextError::new(format!("{} holds an unusable CA", path.display()), e)
        })?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()).into());
    }
    Ok(roots)
}

pub(super) fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "could not load a system CA certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(
        added,
        ignored,
        "loaded system CA certificates for https upstreams"
    );
    roots
}
