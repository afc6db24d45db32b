//! `issuers:` → the [`KeySet`] of trusted issuers and their verification keys (PEM, HS256
//! secret or JWKS files), each with its token profile ([`super::claims`]).

use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::raw::{RawIssuer, RawKey};
use super::units::duration;
use crate::keys::{self, Issuer, KeySet, VerificationKey};

/// Compiles `issuers:`; key files are relative to `base`.
pub(super) fn compile(raw: &[RawIssuer], base: &Path) -> Result<KeySet, ConfigError> {
    let mut keyset = KeySet::default();
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
        if issuer.keys.is_empty() {
            return Err(invalid(
                format!("{key}.keys"),
                "at least one key is required",
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
    }
    Ok(keyset)
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
