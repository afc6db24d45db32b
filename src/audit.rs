//! The audit trail: one structured event per security decision, from one function
//! ([`Audit::emit`]), with a stable reason id (SECURITY.md 33).
//!
//! Events are JSON lines. Every event also goes to the log under the `audit` target; with
//! `audit.file` set, a dedicated writer thread appends each line to that file and flushes it to
//! the operating system before taking the next, so a crash of the gateway process loses no
//! event already emitted, while a crash of the machine can lose what the kernel had not yet
//! written back (no `fsync` per event: it would cost milliseconds per login). The queue to the
//! writer is bounded; when it is full (the disk stalls), events are counted as dropped and
//! logged rather than blocking requests.
//!
//! Never put a token, a cookie value or a password in an event: the fields are fixed and hold
//! identifiers only.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Events waiting for the writer thread before new ones are dropped.
const QUEUE: usize = 65_536;
/// The longest user agent kept in an event.
const MAX_USER_AGENT: usize = 256;

/// One security decision.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// What happened: `login.success`, `refresh.reuse_detected`, `access.denied`, …
    pub event: &'static str,
    /// Why, as a stable id.
    pub reason_id: &'static str,
    /// The user (a canonical username for failed logins).
    pub subject: Option<&'a str>,
    /// The session id.
    pub session: Option<&'a str>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The client's `User-Agent`, truncated.
    pub user_agent: Option<&'a str>,
    /// The route id.
    pub route: Option<&'a str>,
    /// The request method.
    pub method: Option<&'a str>,
    /// The normalized request path (never the query: it may carry secrets).
    pub path: Option<&'a str>,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// A short detail where the reason id needs one (the config key a reload refused). Never a
    /// value from a request or a file.
    pub detail: Option<&'a str>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    event: &'static str,
    reason_id: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(rename = "client.ip", skip_serializing_if = "Option::is_none")]
    client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
    #[serde(rename = "route.id", skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

/// Where events go (`Default`: the log only).
#[derive(Debug, Clone, Default)]
pub struct Audit {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    file: Option<mpsc::SyncSender<String>>,
    stream: Option<tokio::sync::mpsc::Sender<String>>,
    dropped: AtomicU64,
    emitted: AtomicU64,
}

/// Where the Redis audit stream goes.
#[derive(Debug, Clone)]
pub struct AuditStream {
    /// `redis://…` or `rediss://…`.
    pub url: String,
    /// The stream's key.
    pub key: String,
    /// Roughly how many events the stream keeps (`MAXLEN ~`).
    pub maxlen: u64,
}

/// The audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit file {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl Audit {
    /// Events go to the log and, when given, are appended to `file` (created 0600 if missing)
    /// and added to a Redis stream. The stream's sender must be made inside Tokio.
    pub fn new(file: Option<&Path>, stream: Option<&AuditStream>) -> Result<Self, AuditError> {
        let file = file.map(file_sink).transpose()?;
        let stream = stream.map(stream_sink).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                file,
                stream,
                ..Inner::default()
            }),
        })
    }

    /// Records one event. Never blocks on the disk.
    pub fn emit(&self, event: &AuditEvent<'_>) {
        let user_agent = event.user_agent.map(|ua| truncate(ua, MAX_USER_AGENT));
        let line = Line {
            time: rfc3339_now(),
            event: event.event,
            reason_id: event.reason_id,
            subject: event.subject,
            session: event.session,
            client_ip: event.client_ip.map(|ip| ip.to_string()),
            user_agent,
            route: event.route,
            method: event.method,
            path: event.path,
            request_id: event.request_id,
            detail: event.detail,
        };
        let Ok(mut json) = serde_json::to_string(&line) else {
            return;
        };
        tracing::info!(target: "audit", "{json}");
        self.inner.emitted.fetch_add(1, Ordering::Relaxed);
        if let Some(tx) = &self.inner.stream
            && tx.try_send(json.clone()).is_err()
        {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(dropped, "audit stream queue full: event not sent to Redis");
        }
        if let Some(tx) = &self.inner.file {
            json.push('\n');
            if tx.try_send(json).is_err() {
                let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(dropped, "audit queue full: event not written to the file");
            }
        }
    }

    /// Events emitted since start.
    pub fn emitted(&self) -> u64 {
        self.inner.emitted.load(Ordering::Relaxed)
    }

    /// Events that could not be queued for the file.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The file sink: a writer thread appends each line and flushes it before the next.
fn file_sink(path: &Path) -> Result<mpsc::SyncSender<String>, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError {
            path: path.to_owned(),
            source,
        })?;
    let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
    let shown = path.display().to_string();
    // A thread, not a task: file writes block, and the writer must keep draining during
    // shutdown after the runtime stops. It ends when the last sender is dropped.
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            for line in rx {
                if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
                    tracing::error!(file = %shown, error = %e, "audit write failed");
                }
            }
        })
        .map_err(|source| AuditError {
            path: path.to_owned(),
            source,
        })?;
    Ok(tx)
}

/// The Redis stream sink: a background task sends every event (`XADD key MAXLEN ~ maxlen *
/// event <json>`) and reconnects with backoff. Events wait in a bounded queue while Redis is
/// away; beyond it they are counted as dropped. Must run inside Tokio.
fn stream_sink(settings: &AuditStream) -> Result<tokio::sync::mpsc::Sender<String>, AuditError> {
    let client = redis::Client::open(settings.url.as_str()).map_err(|e| AuditError {
        path: PathBuf::from("audit.redis_stream.url"),
        source: std::io::Error::other(e),
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(QUEUE);
    let key = settings.key.clone();
    let maxlen = settings.maxlen;
    tokio::spawn(async move {
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        let mut backoff = std::time::Duration::from_millis(100);
        while let Some(event) = rx.recv().await {
            loop {
                if conn.is_none() {
                    match client.get_multiplexed_async_connection().await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "audit stream: Redis unreachable");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                let sent: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(maxlen)
                    .arg("*")
                    .arg("event")
                    .arg(&event)
                    .query_async(c)
                    .await;
                match sent {
                    Ok(_) => {
                        backoff = std::time::Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "audit stream: XADD failed; retrying");
                        conn = None;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
        }
    });
    Ok(tx)
}

/// Now as `2026-11-28T03:04:05.678Z`.
pub fn rfc3339_now() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(since.as_secs() as i64, since.subsec_millis())
}

/// Seconds since the epoch (and milliseconds) as an RFC 3339 UTC timestamp.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_833_045, 678), "2026-11-28T02:30:45.678Z");
    }

    #[test]
    fn events_are_appended_to_the_file_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::new(Some(&path), None).unwrap();
        audit.emit(&AuditEvent {
            event: "login.success",
            reason_id: "login.ok",
            subject: Some("alice"),
            client_ip: Some("203.0.113.9".parse().unwrap()),
            user_agent: Some(&"x".repeat(1000)),
            ..AuditEvent::default()
        });
        drop(audit);
        // The writer thread appends asynchronously; it is done when the line is there.
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(&path).unwrap();
            if text.ends_with('\n') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(line["event"], "login.success");
        assert_eq!(line["subject"], "alice");
        assert_eq!(line["client.ip"], "203.0.113.9");
        assert_eq!(line["user_agent"].as_str().unwrap().len(), MAX_USER_AGENT);
        assert!(line.get("session").is_none());
    }
}
