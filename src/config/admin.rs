//! `admin:` → the admin listener's address and the admin API's bearer secret.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::error::{ConfigError, ReadError, invalid};
use super::raw::RawAdmin;

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address to bind.
    pub bind: SocketAddr,
    /// The admin API's bearer secret; `None` turns the API off.
    pub token: Option<AdminToken>,
}

/// The admin bearer secret. Opaque: compared in constant time, never printed.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// Whether `presented` is the secret (constant time in the secret's length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, presented).is_ok()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Compiles `admin:`; the token file is relative to `base`.
pub(super) fn compile(
    raw: Option<&RawAdmin>,
    base: &Path,
) -> Result<Option<AdminSettings>, ConfigError> {
    Ok(match raw {
        None => None,
        Some(a) => {
            let bind: SocketAddr = a.bind.parse().map_err(|_| {
                invalid(
                    "admin.bind",
                    format!("`{}` is not an address like 127.0.0.1:9090", a.bind),
                )
            })?;
            let token = match &a.token_file {
                None => None,
                Some(f) => {
                    let path = base.join(f);
                    let text = std::fs::read(&path).map_err(|source| {
                        invalid("admin.token_file", ReadError { path, source })
                    })?;
                    let secret = text.trim_ascii();
                    if secret.len() < 32 {
                        return Err(invalid(
                            "admin.token_file",
                            "the admin secret must be at least 32 bytes (e.g. `openssl rand -hex 32`)",
                        ));
                    }
                    Some(AdminToken(Arc::from(secret)))
                }
            };
            Some(AdminSettings { bind, token })
        }
    })
}
