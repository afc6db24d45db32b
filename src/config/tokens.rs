//! `tokens:` → how access tokens are read (cookie name, size bound, clock skew) and how many
//! verified ones are cached.

use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::raw::RawTokens;
use super::units::{duration, size};

/// The default access-token cookie name.
pub const DEFAULT_COOKIE: &str = "__Host-portcullis-at";

/// `tokens:`, compiled.
#[derive(Debug, Clone)]
pub(super) struct Tokens {
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub(super) leeway: Duration,
    /// Longest accepted token, in bytes.
    pub(super) max_bytes: usize,
    /// The access-token cookie.
    pub(super) cookie: String,
    /// Verified tokens kept.
    pub(super) cache_capacity: u64,
}

/// Compiles `tokens:`.
pub(super) fn compile(t: &RawTokens) -> Result<Tokens, ConfigError> {
    let leeway = duration("tokens.leeway", t.leeway.as_ref(), Duration::from_secs(30))?;
    if leeway > Duration::from_secs(300) {
        return Err(invalid(
            "tokens.leeway",
            "more than 5m of clock skew hides real problems",
        ));
    }
    let max_bytes = size("tokens.max_bytes", t.max_bytes.as_ref(), 8192)?;
    if !(256..=64 * 1024).contains(&max_bytes) {
        return Err(invalid(
            "tokens.max_bytes",
            "must be between 256 bytes and 64KiB",
        ));
    }
    let cookie = t
        .cookie
        .clone()
        .unwrap_or_else(|| DEFAULT_COOKIE.to_owned());
    if cookie.is_empty()
        || !cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "tokens.cookie",
            format!("`{cookie}` is not a cookie name"),
        ));
    }
    Ok(Tokens {
        leeway,
        max_bytes: max_bytes as usize,
        cookie,
        cache_capacity: t.cache_capacity.unwrap_or(100_000),
    })
}
