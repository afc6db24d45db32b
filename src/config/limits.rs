//! `limits:` → the [`ServerLimits`] the listeners enforce and the [`BodyLimits`] routes and the
//! body stage use.

use std::time::Duration;

use super::error::{ConfigError, invalid};
use super::raw::RawLimits;
use super::units::{duration, parse_duration, size};

/// Server-wide limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields per request.
    pub max_headers: usize,
    /// Concurrent connections across listeners.
    pub max_connections: usize,
    /// Concurrent connections from one client address (an IPv6 /64 counts as one); 0: no cap.
    /// Peers in `trusted_proxies` are not capped.
    pub max_connections_per_ip: usize,
    /// Time to send the request head and finish the TLS handshake.
    pub header_read_timeout: Duration,
    /// A client connection with no new request for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// The request-body half of `limits:`, which lands in the runtime rather than the listeners.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    /// `limits.max_body`: the largest body on a route that sets none.
    pub(super) default_max: u64,
    /// `limits.body_read_timeout`.
    pub(super) read_timeout: Duration,
    /// The whole pace a streamed body must keep.
    pub(super) pace: crate::body::Pace,
}

/// Compiles `limits:`.
pub(super) fn compile(l: &RawLimits) -> Result<(ServerLimits, BodyLimits), ConfigError> {
    let max_header_bytes = size(
        "limits.max_header_bytes",
        l.max_header_bytes.as_ref(),
        16 * 1024,
    )?;
    if !(8192..=1 << 20).contains(&max_header_bytes) {
        return Err(invalid(
            "limits.max_header_bytes",
            "must be between 8KiB and 1MiB",
        ));
    }
    let limits = ServerLimits {
        max_header_bytes: max_header_bytes as usize,
        max_headers: l.max_headers.unwrap_or(100),
        max_connections: l.max_connections.unwrap_or(10_000),
        // A tenth of all connections, at least 64: one address cannot take them all, while a
        // NAT full of browsers (6 connections each over HTTP/1.1) still fits.
        max_connections_per_ip: l
            .max_connections_per_ip
            .unwrap_or((l.max_connections.unwrap_or(10_000) / 10).max(64)),
        header_read_timeout: duration(
            "limits.header_read_timeout",
            l.header_read_timeout.as_ref(),
            Duration::from_secs(10),
        )?,
        idle_timeout: duration(
            "limits.idle_timeout",
            l.idle_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
        h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(128),
        shutdown_grace: duration(
            "limits.shutdown_grace",
            l.shutdown_grace.as_ref(),
            Duration::from_secs(30),
        )?,
    };
    if limits.max_connections == 0 {
        return Err(invalid("limits.max_connections", "must be at least 1"));
    }
    let default_max = size("limits.max_body", l.max_body.as_ref(), 10 << 20)?;
    let read_timeout = duration(
        "limits.body_read_timeout",
        l.body_read_timeout.as_ref(),
        Duration::from_secs(30),
    )?;
    if read_timeout.is_zero() {
        return Err(invalid("limits.body_read_timeout", "must be above zero"));
    }
    let pace = crate::body::Pace {
        stall_after: read_timeout,
        min_rate: size("limits.body_min_rate", l.body_min_rate.as_ref(), 500)?,
        grace: duration(
            "limits.body_min_rate_grace",
            l.body_min_rate_grace.as_ref(),
            Duration::from_secs(20),
        )?,
        deadline: match &l.body_deadline {
            None => None,
            Some(text) => match parse_duration(text) {
                Ok(d) if d.is_zero() => {
                    return Err(invalid(
                        "limits.body_deadline",
                        "must be above zero (or unset)",
                    ));
                }
                Ok(d) => Some(d),
                Err(m) => return Err(invalid("limits.body_deadline", m)),
            },
        },
    };
    let body = BodyLimits {
        default_max,
        read_timeout,
        pace,
    };
    Ok((limits, body))
}
