//! `upstreams:` → the named origins routes forward to: an HTTP(S) client each (TLS roots,
//! protocol, timeouts, pool size) or the built-in echo service.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::{Cause, ConfigError, ContextError, invalid};
use super::raw::RawUpstream;
use super::units::duration;
use crate::pipeline::forward::{HttpUpstream, Upstream, UpstreamSettings};

/// `upstreams:`, compiled: `names[i]` names `upstreams[i]`, the index a route forwards to.
#[derive(Debug)]
pub(super) struct Upstreams {
    /// The names, for resolving `routes[].upstream`.
    pub(super) names: Vec<String>,
    /// The upstreams, in the same order.
    pub(super) upstreams: Vec<Upstream>,
}

/// Compiles `upstreams:`; CA files are relative to `base`. The system roots are loaded once,
/// and only when an `https://` upstream without its own `ca` needs them.
pub(super) fn compile(
    raw: &BTreeMap<String, RawUpstream>,
    base: &Path,
) -> Result<Upstreams, ConfigError> {
    let mut names = Vec::with_capacity(raw.len());
    let mut upstreams = Vec::new();
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
        names.push(name.clone());
        upstreams.push(upstream);
    }
    Ok(Upstreams { names, upstreams })
}

/// The CA certificates of a PEM bundle, for an upstream's own `ca`.
fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, Cause> {
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

fn system_roots() -> rustls::RootCertStore {
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
