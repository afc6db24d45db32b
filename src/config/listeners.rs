//! `listeners:` → the sockets to bind, each with its TLS configuration and HSTS header.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{Cause, ConfigError, ContextError, invalid};
use super::raw::RawListener;
use super::units::duration;

/// A listening socket.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HSTS header for TLS listeners.
    pub hsts: Option<HeaderValue>,
}

/// Compiles `listeners:` (at least one); certificate paths are relative to `base`.
pub(super) fn compile(raw: &[RawListener], base: &Path) -> Result<Vec<ListenerSpec>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid("listeners", "at least one listener is required"));
    }
    let mut listeners = Vec::with_capacity(raw.len());
    for (i, listener) in raw.iter().enumerate() {
        let key = format!("listeners[{i}]");
        let bind: SocketAddr = listener.bind.parse().map_err(|_| {
            invalid(
                format!("{key}.bind"),
                format!("`{}` is not an address like 127.0.0.1:8080", listener.bind),
            )
        })?;
        let (tls, hsts) = match &listener.tls {
            None => (None, None),
            Some(tls) => {
                let server = server_tls(&base.join(&tls.cert), &base.join(&tls.key))
                    .map_err(|m| invalid(format!("{key}.tls"), m))?;
                let age = duration(
                    &format!("{key}.tls.hsts_max_age"),
                    tls.hsts_max_age.as_ref(),
                    Duration::from_secs(31_536_000),
                )?;
                let hsts = (!age.is_zero())
                    .then(|| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok())
                    .flatten();
                (Some(Arc::new(server)), hsts)
            }
        };
        listeners.push(ListenerSpec { bind, tls, hsts });
    }
    Ok(listeners)
}

/// The TLS server config of a listener: the certificate chain and key from PEM files,
/// offering h2 and HTTP/1.1.
fn server_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, Cause> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| ContextError::new(format!("cannot read certificate {}", cert.display()), e))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            ContextError::new(format!("cannot parse certificate {}", cert.display()), e)
        })?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()).into());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ContextError::new(format!("cannot read private key {}", key.display()), e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ContextError::new("certificate and key do not form a usable pair", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
