//! Hot reload: build the new runtime from the files, validate it, swap it in atomically.
//!
//! Triggers: SIGHUP (`portcullis run` forwards it), `POST /admin/reload`, and a change of the
//! config file or of a file it names (certificates, keys), noticed by polling every
//! [`CONFIG_POLL`]. The users file is polled every [`USERS_POLL`] on its own. Polling rather
//! than inotify: no dependency, and it works with editors and config managers that replace a
//! file by renaming another over it.
//!
//! A config that fails to load changes nothing: the old runtime keeps serving, and the refusal
//! is logged with the key and line and audited (`config.reload` / `config.refused`). Requests in
//! flight finish on the snapshot they started with; sockets are never re-bound. What a reload
//! cannot change — the listeners' addresses, the store, the audit sink, the admin listener —
//! keeps its value, and the log says a restart is needed for it. TLS certificates are swapped
//! in place: the next connection gets the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::Gateway;
use crate::audit::AuditEvent;
use crate::config::{Config, ConfigError};
use crate::keys::KeySet;
use crate::keys::remote::{RemoteError, Trigger};
use crate::metrics::Metrics;
use crate::pipeline::verify::TokenCache;

/// How often the config file and the files it names are checked for changes.
pub const CONFIG_POLL: Duration = Duration::from_secs(2);
/// How often the users file is checked for changes.
pub const USERS_POLL: Duration = Duration::from_secs(1);
/// How often the refresher asks whether a remote key set is due (a comparison of instants;
/// the fetch happens only when one is).
pub const KEYS_POLL: Duration = Duration::from_secs(1);

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The config generation now serving.
    pub generation: u64,
    /// Settings that changed in the file but need a restart to take effect.
    pub restart_needed: Vec<&'static str>,
    /// Whether the set of verification keys changed.
    pub keys_changed: bool,
    /// The files the applied config names (certificates, keys), to watch for changes.
    pub watched: Vec<PathBuf>,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The gateway was not started from a file.
    #[error("the gateway was not started from a config file")]
    NoFile,
    /// The new config is invalid; the old one keeps serving.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Loading was interrupted (the runtime is shutting down).
    #[error("reload interrupted")]
    Interrupted,
    /// A new issuer's discovery document names another issuer.
    #[error("issuer {issuer}: {source}")]
    Keys {
        /// The configured issuer.
        issuer: String,
        /// What its provider answered.
        #[source]
        source: RemoteError,
    },
}

/// Fetches the remote key sets of `keys` that `trigger` makes due now (for [`Trigger::Start`]:
/// every one that has no set yet), all at once, each bounded by its fetch timeouts; drops the
/// cached tokens of keys a fetch removed; logs and audits what changed. `Err` only for a
/// configuration error at [`Trigger::Start`] (a discovery document naming another issuer):
/// a provider that does not answer is an outage, logged, and the issuer's tokens get 503.
pub async fn fetch_keys(
    keys: &KeySet,
    cache: &TokenCache,
    trigger: Trigger,
    now: i64,
    metrics: &Metrics,
    audit: &crate::audit::Audit,
) -> Result<(), ReloadError> {
    let fetches = keys
        .remote()
        .iter()
        .filter(|r| trigger != Trigger::Start || !r.has_keys())
        .map(|remote| async move { (remote, keys.fetch(remote, trigger, now, metrics).await) });
    for (remote, outcome) in futures_util::future::join_all(fetches).await {
        match outcome {
            Ok(None) => {}
            Ok(Some(change)) => {
                cache.forget_keys(remote.issuer, &change.removed);
                if !change.added.is_empty() || !change.removed.is_empty() {
                    audit.emit(&AuditEvent {
                        event: "keys.changed",
                        reason_id: "keys.fetched",
                        detail: Some(&remote.iss),
                        ..AuditEvent::default()
                    });
                }
            }
            Err(e) if trigger == Trigger::Start && e.is_config_error() => {
                return Err(ReloadError::Keys {
                    issuer: remote.iss.to_string(),
                    source: e,
                });
            }
            Err(_) => {
                // Logged by the key set. The previous set (if any) stays; without one the
                // issuer's tokens get 503.
                audit.emit(&AuditEvent {
                    event: "keys.fetch",
                    reason_id: "keys.fetch_failed",
                    detail: Some(&remote.iss),
                    ..AuditEvent::default()
                });
            }
        }
    }
    Ok(())
}

/// [`fetch_keys`] for the gateway's current runtime at its clock's now: what the refresher
/// runs every [`KEYS_POLL`] with [`Trigger::Refresh`], and what a test calls after moving a
/// manual clock, so that a refresh happens at a known point instead of after a sleep.
pub async fn fetch_remote_keys(gateway: &Gateway, trigger: Trigger) -> Result<(), ReloadError> {
    let runtime = gateway.runtime();
    let identify = &runtime.identify;
    fetch_keys(
        &identify.verifier.keys,
        &identify.token_cache,
        trigger,
        gateway.clock().now(),
        gateway.metrics(),
        gateway.audit(),
    )
    .await
}

/// Reloads the config from the file the gateway was started from. `trigger` is recorded in the
/// audit event (`sighup`, `admin`, `file_change`).
pub async fn reload_file(
    gateway: &Arc<Gateway>,
    trigger: &'static str,
) -> Result<ReloadReport, ReloadError> {
    let Some(path) = gateway.config_path().map(Path::to_owned) else {
        return Err(ReloadError::NoFile);
    };
    // Loading reads files and may hash (the users file's dummy password): off the reactor.
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
        .await
        .map_err(|_| ReloadError::Interrupted)?;
    let loaded = match loaded {
        Ok(config) => {
            // The key sets the running runtime has for unchanged sources carry over; new
            // sources are fetched now, so the new runtime starts with keys where it can.
            let new_keys = &config.runtime.identify.verifier.keys;
            new_keys.adopt_remote(&gateway.runtime().identify.verifier.keys);
            fetch_keys(
                new_keys,
                &config.runtime.identify.token_cache,
                Trigger::Start,
                gateway.clock().now(),
                gateway.metrics(),
                gateway.audit(),
            )
            .await
            .map(|()| config)
        }
        Err(e) => Err(ReloadError::Config(e)),
    };
    match loaded {
        Ok(config) => Ok(apply(gateway, config, trigger)),
        Err(e) => {
            gateway
                .metrics()
                .reloads_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(trigger, error = %e, "config reload refused; the previous config keeps serving");
            let location = match &e {
                ReloadError::Config(e) => e.location(),
                other => other.to_string(),
            };
            gateway.audit().emit(&AuditEvent {
                event: "config.reload",
                reason_id: "config.refused",
                detail: Some(&location),
                ..AuditEvent::default()
            });
            Err(e)
        }
    }
}

/// Swaps in the runtime of `config` (and its TLS certificates).
pub fn apply(gateway: &Gateway, config: Config, trigger: &'static str) -> ReloadReport {
    let watched = config.watched;
    let mut restart_needed = Vec::new();
    let same_sockets = config.listeners.len() == gateway.listeners.len()
        && config
            .listeners
            .iter()
            .zip(&gateway.listeners)
            .all(|(new, old)| new.bind == old.bind && new.tls.is_some() == old.tls.is_some());
    if !same_sockets {
        restart_needed.push("listeners");
    }
    for (i, new) in config.listeners.iter().enumerate() {
        if let (Some(holder), Some(tls), Some(old)) =
            (gateway.listener_tls(i), &new.tls, gateway.listeners.get(i))
            && old.bind == new.bind
        {
            holder.store(Arc::clone(tls));
        }
    }
    let old = gateway.runtime();
    let old_kids: std::collections::BTreeSet<&str> = old.identify.verifier.keys.kids().collect();
    let new_kids: std::collections::BTreeSet<&str> =
        config.runtime.identify.verifier.keys.kids().collect();
    let keys_changed = old_kids != new_kids;
    drop(old_kids);
    drop(new_kids);
    if config.admin.is_some() != gateway.admin_configured {
        restart_needed.push("admin");
    }
    gateway.swap_runtime(config.runtime);
    let generation = gateway.generation.fetch_add(1, Ordering::Relaxed) + 1;
    gateway
        .metrics()
        .reloads_applied
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        generation,
        trigger,
        ?restart_needed,
        keys_changed,
        "config reloaded"
    );
    gateway.audit().emit(&AuditEvent {
        event: "config.reload",
        reason_id: "config.applied",
        ..AuditEvent::default()
    });
    if keys_changed {
        gateway.audit().emit(&AuditEvent {
            event: "keys.changed",
            reason_id: "keys.reloaded",
            ..AuditEvent::default()
        });
    }
    if !restart_needed.is_empty() {
        tracing::warn!(
            ?restart_needed,
            "these settings changed in the file but keep their old values until a restart"
        );
    }
    ReloadReport {
        generation,
        restart_needed,
        keys_changed,
        watched,
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp(std::fs::metadata(path).ok().map(|m| {
        (
            m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            m.len(),
            m.ino(),
        )
    }))
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    paths.iter().map(|p| stamp(p)).collect()
}

/// Starts the pollers: the config file and the files it names (when the gateway was started
/// from a file), and the users file of whatever runtime is current. They stop at shutdown.
pub fn spawn_watchers(
    gateway: &Arc<Gateway>,
    config_path: Option<PathBuf>,
    watched: Vec<PathBuf>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    if let Some(path) = config_path {
        let gateway = Arc::clone(gateway);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut files = vec![path];
            files.extend(watched);
            let mut last = stamps(&files);
            let mut ticks = tokio::time::interval(CONFIG_POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let now = stamps(&files);
                if now != last {
                    last = now;
                    // A refusal is logged and audited inside; the old config keeps serving.
                    // An applied config may name other files: watch those from now on.
                    if let Ok(report) = reload_file(&gateway, "file_change").await {
                        files.truncate(1);
                        files.extend(report.watched);
                        last = stamps(&files);
                    }
                }
            }
        });
    }
    {
        // The remote key sets' refresher: owned by the gateway's runtime like the pollers,
        // it stops at shutdown. It always reads the current runtime, so after a reload it
        // refreshes the new runtime's sets.
        let gateway = Arc::clone(gateway);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(KEYS_POLL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.changed() => return,
                }
                if gateway.runtime().identify.verifier.keys.remote().is_empty() {
                    continue;
                }
                // A fetch is bounded by its timeouts; shutdown still wins the race.
                tokio::select! {
                    _ = fetch_remote_keys(&gateway, Trigger::Refresh) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
    }
    let gateway = Arc::clone(gateway);
    let mut shutdown = shutdown;
    tokio::spawn(async move {
        let mut last: Option<(PathBuf, Stamp)> = None;
        let mut ticks = tokio::time::interval(USERS_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            let runtime = gateway.runtime();
            let Some(auth) = &runtime.auth else { continue };
            let users = Arc::clone(&auth.users);
            let path = users.path().to_owned();
            let now = stamp(&path);
            let unchanged = last.as_ref().is_some_and(|(p, s)| *p == path && *s == now);
            if unchanged {
                continue;
            }
            let first = last.is_none();
            last = Some((path, now));
            let result = tokio::task::spawn_blocking(move || users.reload()).await;
            match result {
                Ok(Ok(true)) => {
                    tracing::info!("users file reloaded");
                    gateway.audit().emit(&AuditEvent {
                        event: "users.reload",
                        reason_id: "users.applied",
                        ..AuditEvent::default()
                    });
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    if !first {
                        tracing::error!(error = %e, "users file refused; the previous users stay");
                        gateway.audit().emit(&AuditEvent {
                            event: "users.reload",
                            reason_id: "users.refused",
                            detail: Some("users_file"),
                            ..AuditEvent::default()
                        });
                    }
                }
                Err(_) => return,
            }
        }
    });
}
