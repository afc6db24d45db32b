//! `audit:` → the [`AuditSettings`]: the audit file, the Redis stream, the aggregation window.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::raw::RawAudit;
use super::units::duration;

/// Where audit events go besides the log.
#[derive(Debug, Clone, Default)]
pub struct AuditSettings {
    /// Append JSON lines to this file.
    pub file: Option<PathBuf>,
    /// Also add events to this Redis stream.
    pub redis_stream: Option<crate::audit::AuditStream>,
    /// Repeated refusals (same client, event and reason) within this window become one event
    /// and a count; zero: none aggregated.
    pub aggregate_window: Duration,
}

/// Compiles `audit:`; the file is relative to `base`.
pub(super) fn compile(raw: Option<&RawAudit>, base: &Path) -> Result<AuditSettings, ConfigError> {
    let redis_stream = match raw.and_then(|a| a.redis_stream.as_ref()) {
        None => None,
        Some(r) => {
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                return Err(invalid(
                    "audit.redis_stream.url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            let maxlen = r.maxlen.unwrap_or(1_000_000);
            if maxlen == 0 {
                return Err(invalid("audit.redis_stream.maxlen", "must be above zero"));
            }
            Some(crate::audit::AuditStream {
                url: r.url.clone(),
                key: r
                    .key
                    .clone()
                    .unwrap_or_else(|| "portcullis:audit".to_owned()),
                maxlen,
            })
        }
    };
    Ok(AuditSettings {
        file: raw.and_then(|a| a.file.as_deref()).map(|f| base.join(f)),
        redis_stream,
        aggregate_window: duration(
            "audit.aggregate_window",
            raw.and_then(|a| a.aggregate_window.as_ref()),
            crate::audit::DEFAULT_WINDOW,
        )?,
    })
}
