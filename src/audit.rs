//! The audit trail: one structured event per security decision, from one function
//! ([`Audit::emit`]), with a stable reason id (docs/security.md 33).
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
//!
//! **Refusal floods are aggregated** so that they cannot fill the disk: the proxy's refusals
//! (`access.unauthorized`, `access.forbidden`) from one client address (an IPv6 /64 counts as
//! one) with one reason id open a window of `audit.aggregate_window`. The first [`BURST`]
//! events of a window are written in full (so a client's few refusals read as before, one event
//! each); the others in it are only counted, and one summary event — the same `event`,
//! `reason_id` and `client.ip`, with `count` (how many were not written) and `since` (the
//! window's first event's time) — is written when the window closes, by the flusher thread
//! at most half a window later, or before the next such event, or at shutdown
//! ([`Audit::flush`]). Every other event is always written. At most [`MAX_WINDOWS`] windows
//! are open; beyond that, refusals from further addresses share one window per event and reason
//! whose summary carries no address.
//!
//! **Rotation**: [`Audit::reopen`] (SIGUSR1 in `portcullis run`) makes the writer thread open
//! the file's path anew before its next line, so after `mv audit.jsonl audit.jsonl.1` new events
//! go to a new `audit.jsonl`, and the old file is no longer written once the signal was handled.
//!
//! Concurrency: the windows are one `std` mutex around a map, held only to look up or update a
//! window (never while writing); the writer thread owns the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Events waiting for the writer thread before new ones are dropped.
const QUEUE: usize = 65_536;
/// The longest user agent kept in an event.
const MAX_USER_AGENT: usize = 256;
/// Aggregation windows open at once (one per address, event and reason); ~100 bytes each.
pub const MAX_WINDOWS: usize = 4096;
/// Refusals written in full per window before the rest are counted.
pub const BURST: u64 = 10;
/// The default `audit.aggregate_window`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
/// The longest [`Audit::flush`] waits for the file writer.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Whether repeats of `event` are aggregated: the refusals a client can make the proxy write
/// as fast as it can send requests. Logins, refreshes and admin calls are throttled or
/// authenticated, and each of their events stays one line.
fn aggregated(event: &str) -> bool {
    matches!(event, "access.unauthorized" | "access.forbidden")
}

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
    /// Summaries only: how many events like this one were counted and not written.
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    /// Summaries only: the time of the window's first event, the one written in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

/// Where events go (`Default`: the log only).
#[derive(Debug, Clone, Default)]
pub struct Audit {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    file: Option<FileSink>,
    stream: Option<tokio::sync::mpsc::Sender<String>>,
    dropped: AtomicU64,
    emitted: AtomicU64,
    /// Refusals counted and not written, summaries aside.
    suppressed: AtomicU64,
    /// `Duration::ZERO`: no aggregation.
    window: Duration,
    windows: Mutex<HashMap<WindowKey, Window>>,
    /// The gateway's clock, for the `time` of each line.
    clock: crate::clock::Clock,
}

/// What the file's writer thread is sent.
#[derive(Debug)]
enum ToWriter {
    Line(String),
    /// Look at `reopen` now (it may already have been seen).
    Wake,
    /// Say so once every line before this one is written.
    Flushed(mpsc::SyncSender<()>),
}

#[derive(Debug)]
struct FileSink {
    tx: mpsc::SyncSender<ToWriter>,
    /// Set by [`Audit::reopen`]; the writer reopens the path before its next line.
    reopen: Arc<AtomicBool>,
}

/// One aggregation window's identity: the client address (`None`: the shared overflow window),
/// the event and the reason.
type WindowKey = (Option<IpAddr>, &'static str, &'static str);

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// The first event's timestamp, as written.
    first_time: String,
    /// Events written in full in this window (at most [`BURST`]).
    written: u64,
    /// Events counted since the first.
    count: u64,
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
    /// and added to a Redis stream, refusals aggregated over [`DEFAULT_WINDOW`]. The stream's
    /// sender must be made inside Tokio.
    pub fn new(file: Option<&Path>, stream: Option<&AuditStream>) -> Result<Self, AuditError> {
        Self::with_window(file, stream, DEFAULT_WINDOW, &crate::clock::Clock::system())
    }

    /// Like [`Audit::new`], aggregating repeated refusals over `window` (zero: never), and
    /// stamping lines with `clock`'s time.
    pub fn with_window(
        file: Option<&Path>,
        stream: Option<&AuditStream>,
        window: Duration,
        clock: &crate::clock::Clock,
    ) -> Result<Self, AuditError> {
        let file = file.map(file_sink).transpose()?;
        let stream = stream.map(stream_sink).transpose()?;
        let audit = Self {
            inner: Arc::new(Inner {
                file,
                stream,
                window,
                clock: clock.clone(),
                ..Inner::default()
            }),
        };
        if !window.is_zero() {
            spawn_flusher(Arc::downgrade(&audit.inner), window);
        }
        Ok(audit)
    }

    /// Records one event, or counts it into its aggregation window. Never blocks on the disk.
    pub fn emit(&self, event: &AuditEvent<'_>) {
        self.emit_at(event, Instant::now());
    }

    fn emit_at(&self, event: &AuditEvent<'_>, now: Instant) {
        // Read the clock as text only for a line that is written: a counted refusal costs a
        // lock and an addition, no allocation.
        let mut time = None;
        if let Some(ip) = event.client_ip
            && !self.inner.window.is_zero()
            && aggregated(event.event)
        {
            let mut closed = None;
            {
                let mut windows = self.inner.windows.lock().unwrap_or_else(|e| e.into_inner());
                let mut key = (
                    Some(crate::net::client_network(ip)),
                    event.event,
                    event.reason_id,
                );
                if !windows.contains_key(&key) && windows.len() >= MAX_WINDOWS {
                    let window = self.inner.window;
                    windows.retain(|k, w| {
                        let open = now < w.opened + window;
                        if !open && w.count > 0 {
                            closed.get_or_insert_with(Vec::new).push(summary(k, w));
                        }
                        open
                    });
                    if windows.len() >= MAX_WINDOWS {
                        key.0 = None;
                    }
                }
                match windows.get_mut(&key) {
                    Some(w) if now < w.opened + self.inner.window && w.written < BURST => {
                        w.written += 1;
                    }
                    Some(w) if now < w.opened + self.inner.window => {
                        w.count += 1;
                        self.inner.suppressed.fetch_add(1, Ordering::Relaxed);
                        drop(windows);
                        self.write_summaries(closed);
                        return;
                    }
                    Some(w) => {
                        if w.count > 0 {
                            closed.get_or_insert_with(Vec::new).push(summary(&key, w));
                        }
                        *w = Window {
                            opened: now,
                            first_time: time.get_or_insert_with(|| self.now_text()).clone(),
                            written: 1,
                            count: 0,
                        };
                    }
                    None => {
                        windows.insert(
                            key,
                            Window {
                                opened: now,
                                first_time: time.get_or_insert_with(|| self.now_text()).clone(),
                                written: 1,
                                count: 0,
                            },
                        );
                    }
                }
            }
            self.write_summaries(closed);
        }
        let user_agent = event.user_agent.map(|ua| truncate(ua, MAX_USER_AGENT));
        self.write(&Line {
            time: time.unwrap_or_else(|| self.now_text()),
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
            count: None,
            since: None,
        });
    }

    /// Writes the summary of every window closed by `now` that counted something, and forgets
    /// every closed window.
    fn flush_closed(&self, now: Instant) {
        let window = self.inner.window;
        self.flush_where(|w| now >= w.opened + window);
    }

    /// Writes the summary of every open aggregation window now, closing them all, and waits
    /// (at most [`FLUSH_WAIT`]) until the file writer has written every line queued so far: at
    /// shutdown, so that no count is lost when the process exits. Blocks: call it off the async
    /// runtime's threads.
    pub fn flush(&self) {
        self.flush_where(|_| true);
        if let Some(sink) = &self.inner.file {
            let (done, written) = mpsc::sync_channel(1);
            if sink.tx.send(ToWriter::Flushed(done)).is_ok() {
                let _ = written.recv_timeout(FLUSH_WAIT);
            }
        }
    }

    fn flush_where(&self, closed: impl Fn(&Window) -> bool) {
        let mut summaries = None;
        {
            let mut windows = self.inner.windows.lock().unwrap_or_else(|e| e.into_inner());
            windows.retain(|k, w| {
                if !closed(w) {
                    return true;
                }
                if w.count > 0 {
                    summaries.get_or_insert_with(Vec::new).push(summary(k, w));
                }
                false
            });
        }
        self.write_summaries(summaries);
    }

    /// The clock's time as the lines write it.
    fn now_text(&self) -> String {
        let ms = self.inner.clock.now_millis();
        rfc3339(ms.div_euclid(1000), ms.rem_euclid(1000) as u32)
    }

    fn write_summaries(&self, summaries: Option<Vec<Summary>>) {
        for s in summaries.into_iter().flatten() {
            self.write(&Line {
                time: self.now_text(),
                event: s.event,
                reason_id: s.reason_id,
                subject: None,
                session: None,
                client_ip: s.client_ip.map(|ip| ip.to_string()),
                user_agent: None,
                route: None,
                method: None,
                path: None,
                request_id: None,
                detail: None,
                count: Some(s.count),
                since: Some(s.since),
            });
        }
    }

    /// One line to every sink.
    fn write(&self, line: &Line<'_>) {
        let Ok(mut json) = serde_json::to_string(line) else {
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
        if let Some(sink) = &self.inner.file {
            json.push('\n');
            if sink.tx.try_send(ToWriter::Line(json)).is_err() {
                let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(dropped, "audit queue full: event not written to the file");
            }
        }
    }

    /// Makes the file writer open `audit.file` anew before its next line, for log rotation:
    /// events emitted after this call go to whatever file the path names now (created 0600 if
    /// missing). If it cannot be opened, the old file keeps being written and the error is
    /// logged. Without a file, nothing happens.
    pub fn reopen(&self) {
        if let Some(sink) = &self.inner.file {
            sink.reopen.store(true, Ordering::SeqCst);
            // A full queue needs no wake-up: the writer looks at the flag before every line.
            let _ = sink.tx.try_send(ToWriter::Wake);
        }
    }

    /// Lines written (events and summaries) since start.
    pub fn emitted(&self) -> u64 {
        self.inner.emitted.load(Ordering::Relaxed)
    }

    /// Refusals counted into an aggregation window instead of written.
    pub fn suppressed(&self) -> u64 {
        self.inner.suppressed.load(Ordering::Relaxed)
    }

    /// Events that could not be queued for the file.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// A closed window's summary, taken out of the map so the lock is not held while writing.
struct Summary {
    event: &'static str,
    reason_id: &'static str,
    client_ip: Option<IpAddr>,
    count: u64,
    since: String,
}

fn summary(key: &WindowKey, w: &Window) -> Summary {
    Summary {
        event: key.1,
        reason_id: key.2,
        client_ip: key.0,
        count: w.count,
        since: w.first_time.clone(),
    }
}

/// Writes the summaries of closed windows without waiting for a next event: wakes every half
/// window (10 ms to 1 s) and ends once the audit trail has been dropped.
fn spawn_flusher(inner: Weak<Inner>, window: Duration) {
    let tick = (window / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let spawned = std::thread::Builder::new()
        .name("audit-flusher".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                let Some(inner) = inner.upgrade() else {
                    return;
                };
                Audit { inner }.flush_closed(Instant::now());
            }
        });
    if let Err(e) = spawned {
        // Summaries then wait for the next refusal of their kind, or shutdown.
        tracing::error!(error = %e, "cannot start the audit flusher thread");
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

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// The file sink: a writer thread appends each line and flushes it before the next, and opens
/// the path anew when [`Audit::reopen`] asked it to.
fn file_sink(path: &Path) -> Result<FileSink, AuditError> {
    let mut file = open_append(path).map_err(|source| AuditError {
        path: path.to_owned(),
        source,
    })?;
    let (tx, rx) = mpsc::sync_channel::<ToWriter>(QUEUE);
    let reopen = Arc::new(AtomicBool::new(false));
    let asked = Arc::clone(&reopen);
    let owned = path.to_owned();
    let shown = path.display().to_string();
    // A thread, not a task: file writes block, and the writer must keep draining during
    // shutdown after the runtime stops. It ends when the last sender is dropped.
    std::thread::Builder::new()
        .name("audit-writer".into())
        .spawn(move || {
            for message in rx {
                if asked.swap(false, Ordering::SeqCst) {
                    match open_append(&owned) {
                        Ok(new) => {
                            file = new;
                            tracing::info!(file = %shown, "audit file reopened");
                        }
                        Err(e) => tracing::error!(
                            file = %shown,
                            error = %e,
                            "cannot reopen the audit file: still writing the old one"
                        ),
                    }
                }
                let line = match message {
                    ToWriter::Line(line) => line,
                    ToWriter::Wake => continue,
                    ToWriter::Flushed(done) => {
                        let _ = done.try_send(());
                        continue;
                    }
                };
                if let Err(e) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
                    tracing::error!(file = %shown, error = %e, "audit write failed");
                }
            }
        })
        .map_err(|source| AuditError {
            path: path.to_owned(),
            source,
        })?;
    Ok(FileSink { tx, reopen })
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

    /// The file's lines once it holds at least `n` of them (the writer thread is asynchronous).
    fn lines_once(path: &Path, n: usize) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        for _ in 0..500 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            lines = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines.len() >= n {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        lines
    }

    fn refusal(ip: &str, reason_id: &'static str) -> AuditEvent<'static> {
        AuditEvent {
            event: "access.unauthorized",
            reason_id,
            client_ip: Some(ip.parse().unwrap()),
            path: Some("/api/x"),
            ..AuditEvent::default()
        }
    }

    /// A window no test reaches by itself: windows close only at the instants given.
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn past_a_burst_repeated_refusals_within_the_window_are_counted_into_one_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit =
            Audit::with_window(Some(&path), None, HOUR, &crate::clock::Clock::system()).unwrap();
        let t0 = Instant::now();
        for i in 0..1000 {
            audit.emit_at(
                &refusal("203.0.113.9", "token.bad_signature"),
                t0 + Duration::from_millis(i),
            );
        }
        // Another reason is a window of its own; two addresses of one IPv6 /64 share one.
        audit.emit_at(&refusal("203.0.113.9", "token.expired"), t0);
        for i in 0..=BURST {
            let ip = if i % 2 == 0 {
                "2001:db8:0:1::1"
            } else {
                "2001:db8:0:1::2"
            };
            audit.emit_at(&refusal(ip, "token.expired"), t0);
        }
        // Another kind of event is never aggregated.
        for _ in 0..(BURST + 3) {
            audit.emit_at(
                &AuditEvent {
                    event: "login.failure",
                    reason_id: "login.bad_password",
                    client_ip: Some("203.0.113.9".parse().unwrap()),
                    ..AuditEvent::default()
                },
                t0,
            );
        }
        assert_eq!(audit.suppressed(), (1000 - BURST) + 1);
        let full = (BURST + 1 + BURST + BURST + 3) as usize;
        let written = lines_once(&path, full);
        assert_eq!(written.len(), full, "{written:#?}");
        assert!(written.iter().all(|l| l.get("count").is_none()));
        assert!(
            written[..BURST as usize]
                .iter()
                .all(|l| l["path"] == "/api/x")
        );

        // Still open a second later: nothing more.
        audit.flush_closed(t0 + Duration::from_secs(1));
        // Closed: one summary per window that counted something.
        audit.flush_closed(t0 + HOUR + Duration::from_secs(1));
        let all = lines_once(&path, full + 2);
        assert_eq!(all.len(), full + 2, "{all:#?}");
        let summaries = &all[full..];
        let bad = summaries
            .iter()
            .find(|l| l["reason_id"] == "token.bad_signature")
            .unwrap();
        assert_eq!(bad["count"], 1000 - BURST);
        assert_eq!(bad["event"], "access.unauthorized");
        assert_eq!(bad["client.ip"], "203.0.113.9");
        assert_eq!(bad["since"], written[0]["time"]);
        assert!(bad.get("path").is_none());
        let v6 = summaries
            .iter()
            .find(|l| l["reason_id"] == "token.expired")
            .unwrap();
        assert_eq!(v6["count"], 1);
        assert_eq!(v6["client.ip"], "2001:db8:0:1::");
        // Closed windows are forgotten.
        assert!(audit.inner.windows.lock().unwrap().is_empty());
    }

    #[test]
    fn a_refusal_after_its_window_closed_is_written_after_the_summary_of_the_old_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit =
            Audit::with_window(Some(&path), None, HOUR, &crate::clock::Clock::system()).unwrap();
        let t0 = Instant::now();
        for i in 0..(BURST + 4) {
            audit.emit_at(
                &refusal("192.0.2.1", "credential.missing"),
                t0 + Duration::from_secs(i),
            );
        }
        audit.emit_at(&refusal("192.0.2.1", "credential.missing"), t0 + HOUR);
        let burst = BURST as usize;
        let lines = lines_once(&path, burst + 2);
        assert_eq!(lines.len(), burst + 2, "{lines:#?}");
        assert_eq!(lines[burst]["count"], 4);
        assert!(lines[burst + 1].get("count").is_none());
        assert_eq!(lines[burst + 1]["path"], "/api/x");
        // Shutdown writes what the open window counted: here, nothing yet.
        audit.flush();
        for _ in 0..(BURST + 1) {
            audit.emit_at(&refusal("192.0.2.1", "credential.missing"), t0 + HOUR);
        }
        audit.flush();
        let lines = lines_once(&path, 2 * burst + 3);
        assert_eq!(lines.len(), 2 * burst + 3, "{lines:#?}");
        assert_eq!(lines[2 * burst + 2]["count"], 1);
    }

    #[test]
    fn past_max_windows_further_addresses_share_one_window_without_an_address() {
        let audit = Audit::with_window(None, None, HOUR, &crate::clock::Clock::system()).unwrap();
        let t0 = Instant::now();
        for i in 0..(MAX_WINDOWS as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..2 {
                audit.emit_at(
                    &AuditEvent {
                        client_ip: Some(ip),
                        ..refusal("127.0.0.1", "token.bad_signature")
                    },
                    t0,
                );
            }
        }
        let windows = audit.inner.windows.lock().unwrap();
        assert_eq!(windows.len(), MAX_WINDOWS + 1);
        let overflow = &windows[&(None, "access.unauthorized", "token.bad_signature")];
        // 200 refusals from the addresses past the limit: a burst written, the rest counted.
        assert_eq!(overflow.written, BURST);
        assert_eq!(overflow.count, 200 - BURST);
    }

    #[test]
    fn with_a_zero_window_every_refusal_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::with_window(
            Some(&path),
            None,
            Duration::ZERO,
            &crate::clock::Clock::system(),
        )
        .unwrap();
        for _ in 0..20 {
            audit.emit(&refusal("192.0.2.1", "credential.missing"));
        }
        assert_eq!(lines_once(&path, 20).len(), 20);
        assert_eq!(audit.suppressed(), 0);
    }

    #[test]
    fn after_the_file_is_renamed_and_reopened_new_events_go_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let rotated = dir.path().join("audit.jsonl.1");
        let audit = Audit::with_window(
            Some(&path),
            None,
            Duration::ZERO,
            &crate::clock::Clock::system(),
        )
        .unwrap();
        let event = |reason_id| AuditEvent {
            event: "config.reload",
            reason_id,
            ..AuditEvent::default()
        };
        audit.emit(&event("config.applied"));
        assert_eq!(lines_once(&path, 1).len(), 1);
        std::fs::rename(&path, &rotated).unwrap();
        // Without a reopen the writer keeps its handle: the line lands in the renamed file.
        audit.emit(&event("config.applied"));
        assert_eq!(lines_once(&rotated, 2).len(), 2);
        audit.reopen();
        audit.emit(&event("config.refused"));
        let fresh = lines_once(&path, 1);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0]["reason_id"], "config.refused");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let old = std::fs::read_to_string(&rotated).unwrap();
        assert_eq!(old.lines().count(), 2, "{old}");
    }
}
