//! `issuers:` → the [`KeySet`] of trusted issuers and their verification keys (PEM, HS256
//! secret or JWKS files, and a remote key set by `discovery` or `jwks_uri`), each with its
//! token profile ([`super::claims`]). Remote key sets are compiled here (URL, roots, limits,
//! bounds) but not fetched: the gateway fetches them when it starts.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::raw::{RawFetch, RawIssuer, RawKey};
use super::units::{duration, size};
use crate::keys::fetch::{FetchLimits, Fetcher, check_url};
use crate::keys::remote::{RemoteKeys, RemoteSpec, Source};
use crate::keys::{self, Issuer, KeySet, VerificationKey};

/// Compiles `issuers:`; key files are relative to `base`.
pub(super) fn compile(raw: &[RawIssuer], base: &Path) -> Result<KeySet, ConfigError> {
    let mut keyset = KeySet::default();
    // Read once for all issuers that use them (as the upstreams do).
    let mut system_roots: Option<Arc<rustls::RootCertStore>> = None;
    for (i, issuer) in raw.iter().enumerate() {
        let key = format!("issuers[{i}]");
        if issuer.issuer.is_empty() {
            return Err(invalid(format!("{key}.issuer"), "must not be empty"));
        }
        if issuer.issuer.contains('#') {
            // Users of another issuer are named `<iss>#<sub>`: the first `#` must end `iss`.
            return Err(invalid(
                format!("{key}.issuer"),
                "must not contain `#` (an issuer identifier has no fragment)",
            ));
        }
        if issuer.audiences.is_empty() {
            return Err(invalid(
                format!("{key}.audiences"),
                "at least one audience is required",
            ));
        }
        if issuer.keys.is_empty() && issuer.discovery.is_none() && issuer.jwks_uri.is_none() {
            return Err(invalid(
                format!("{key}.keys"),
                "at least one key is required (or `discovery` or `jwks_uri`)",
            ));
        }
        if issuer.discovery.is_none()
            && issuer.jwks_uri.is_none()
            && (issuer.algorithms.is_some() || issuer.ca.is_some() || issuer.fetch.is_some())
        {
            return Err(invalid(
                format!("{key}.algorithms"),
                "`algorithms`, `ca` and `fetch` only apply with `discovery` or `jwks_uri`",
            ));
        }
        let idx = keyset.add_issuer(Issuer {
            iss: issuer.issuer.as_str().into(),
            audiences: issuer.audiences.iter().map(|a| a.as_str().into()).collect(),
            require_session: issuer.require_session.unwrap_or(true),
            max_lifetime: duration(
                &format!("{key}.max_lifetime"),
                issuer.max_lifetime.as_ref(),
                Duration::from_secs(86_400),
            )?,
            profile: super::claims::profile(&key, issuer)?,
            // Never the gateway's own `iss` (refused under `issuers:`), so never its users.
            qualify_users: true,
        });
        for (j, k) in issuer.keys.iter().enumerate() {
            let kkey = format!("{key}.keys[{j}]");
            load_key(&mut keyset, idx, k, base).map_err(|e| invalid(kkey, e))?;
        }
        if let Some(remote) = remote(&key, idx, issuer, base, &mut system_roots)? {
            keyset.add_remote(remote);
        }
    }
    Ok(keyset)
}

/// The remote key set of an issuer with `discovery` or `jwks_uri`, not fetched yet.
fn remote(
    key: &str,
    idx: usize,
    issuer: &RawIssuer,
    base: &Path,
    system_roots: &mut Option<Arc<rustls::RootCertStore>>,
) -> Result<Option<RemoteKeys>, ConfigError> {
    let source = match (&issuer.discovery, &issuer.jwks_uri) {
        (None, None) => return Ok(None),
        (Some(url), None) => {
            Source::Discovery(check_url(url).map_err(|e| invalid(format!("{key}.discovery"), e))?)
        }
        (None, Some(url)) => {
            Source::Jwks(check_url(url).map_err(|e| invalid(format!("{key}.jwks_uri"), e))?)
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.jwks_uri"),
                "set `discovery` or `jwks_uri`, not both",
            ));
        }
    };
    let algorithms = match &issuer.algorithms {
        None => None,
        Some(names) => Some(algorithms(&format!("{key}.algorithms"), names)?),
    };
    let none = RawFetch::default();
    let f = issuer.fetch.as_ref().unwrap_or(&none);
    let fkey = format!("{key}.fetch");
    let limits = FetchLimits {
        connect_timeout: duration(
            &format!("{fkey}.connect_timeout"),
            f.connect_timeout.as_ref(),
            FetchLimits::default().connect_timeout,
        )?,
        read_timeout: duration(
            &format!("{fkey}.read_timeout"),
            f.read_timeout.as_ref(),
            FetchLimits::default().read_timeout,
        )?,
        max_bytes: usize::try_from(size(
            &format!("{fkey}.max_bytes"),
            f.max_bytes.as_ref(),
            FetchLimits::default().max_bytes as u64,
        )?)
        .unwrap_or(usize::MAX),
    };
    if !(1024..=16 * 1024 * 1024).contains(&limits.max_bytes) {
        return Err(invalid(
            format!("{fkey}.max_bytes"),
            "must be between 1 KiB and 16 MiB",
        ));
    }
    let min_refresh = duration(
        &format!("{fkey}.min_refresh"),
        f.min_refresh.as_ref(),
        Duration::from_secs(300),
    )?;
    let max_refresh = duration(
        &format!("{fkey}.max_refresh"),
        f.max_refresh.as_ref(),
        Duration::from_secs(86_400),
    )?;
    if min_refresh < Duration::from_secs(1) || max_refresh < min_refresh {
        return Err(invalid(
            format!("{fkey}.max_refresh"),
            "need 1s <= min_refresh <= max_refresh",
        ));
    }
    let cooldown = duration(
        &format!("{fkey}.unknown_kid_cooldown"),
        f.unknown_kid_cooldown.as_ref(),
        Duration::from_secs(30),
    )?;
    if cooldown < Duration::from_secs(1) {
        return Err(invalid(
            format!("{fkey}.unknown_kid_cooldown"),
            "must be at least 1s: it is what bounds a forged-kid flood",
        ));
    }
    let ca = issuer.ca.as_ref().map(|ca| base.join(ca));
    let roots = match &ca {
        Some(path) => Arc::new(
            super::upstreams::roots_from_file(path).map_err(|m| invalid(format!("{key}.ca"), m))?,
        ),
        None => system_roots
            .get_or_insert_with(|| Arc::new(super::upstreams::system_roots()))
            .clone(),
    };
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let spec = RemoteSpec {
        source,
        algorithms,
        min_refresh,
        max_refresh,
        cooldown,
        ca,
    };
    Ok(Some(RemoteKeys::new(
        idx,
        &issuer.issuer,
        spec,
        Fetcher::new(tls, limits),
    )))
}

/// `algorithms:`: allowed names for fetched keys, at most one per key type, so that a JWK
/// without `alg` resolves to exactly one algorithm.
fn algorithms(key: &str, names: &[String]) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
    use jsonwebtoken::Algorithm;
    if names.is_empty() {
        return Err(invalid(key, "list at least one algorithm, or leave it out"));
    }
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let alg = keys::parse_algorithm(name).map_err(|e| invalid(format!("{key}[{i}]"), e))?;
        if alg == Algorithm::HS256 {
            return Err(invalid(
                format!("{key}[{i}]"),
                "HS256 keys are never taken from a JWKS",
            ));
        }
        let rsa = |a: &Algorithm| matches!(a, Algorithm::RS256 | Algorithm::PS256);
        if out.contains(&alg) || (rsa(&alg) && out.iter().any(rsa)) {
            return Err(invalid(
                format!("{key}[{i}]"),
                "at most one algorithm per key type (RS256 and PS256 are both RSA)",
            ));
        }
        out.push(alg);
    }
    Ok(out)
}

/// Loads one `keys:` entry of the issuer at index `issuer` into `keyset`.
fn load_key(
    keyset: &mut KeySet,
    issuer: usize,
    k: &RawKey,
    base: &Path,
) -> Result<(), keys::KeyError> {
    use keys::KeyError;
    match (&k.pem, &k.secret_file, &k.jwks) {
        (Some(pem), None, None) | (None, Some(pem), None) => {
            let kid = k
                .kid
                .as_deref()
                .ok_or_else(|| KeyError::Invalid("`kid` is required".into()))?;
            let alg = keys::parse_algorithm(
                k.alg
                    .as_deref()
                    .ok_or_else(|| KeyError::Invalid("`alg` is required".into()))?,
            )?;
            let is_secret = k.secret_file.is_some();
            if is_secret != (alg == jsonwebtoken::Algorithm::HS256) {
                return Err(KeyError::Invalid(
                    "HS256 keys come from `secret_file`; public-key algorithms from `pem`".into(),
                ));
            }
            let key = if is_secret {
                keys::load_secret(&base.join(pem))?
            } else {
                keys::load_pem(&base.join(pem), alg)?
            };
            keyset.insert(kid, VerificationKey { alg, key, issuer })
        }
        (None, None, Some(jwks)) => {
            if k.kid.is_some() || k.alg.is_some() {
                return Err(KeyError::Invalid(
                    "a JWKS file names its own `kid` and `alg`".into(),
                ));
            }
            for (kid, alg, key) in keys::load_jwks(&base.join(jwks))? {
                keyset.insert(&kid, VerificationKey { alg, key, issuer })?;
            }
            Ok(())
        }
        _ => Err(KeyError::Invalid(
            "set exactly one of `pem`, `secret_file` or `jwks`".into(),
        )),
    }
}
