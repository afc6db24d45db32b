//! `store:` → which session store to run, and for Redis its topology and settings.

use std::path::Path;
use std::time::Duration;

use super::error::{ConfigError, ReadError, invalid};
use super::raw::{RawStore, RawStoreKind};
use super::units::duration;
use crate::store::{RedisSettings, Topology};

/// Which session store to run.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// In-process.
    Memory,
    /// Redis, shared by every instance.
    Redis(RedisSettings),
}

/// Compiles `store:`; a password file is relative to `base`.
pub(super) fn compile(raw: &RawStore, base: &Path) -> Result<StoreKind, ConfigError> {
    match raw.kind {
        RawStoreKind::Memory => match raw.redis_keys_written().next() {
            // Not silently ignored: it is most likely meant for a `kind: redis` left out.
            Some(key) => Err(invalid(
                format!("store.{key}"),
                "is a Redis setting, and `kind` is `memory`",
            )),
            None => Ok(StoreKind::Memory),
        },
        RawStoreKind::Redis => Ok(StoreKind::Redis(redis_settings(raw, base)?)),
    }
}

fn redis_settings(r: &RawStore, base: &Path) -> Result<RedisSettings, ConfigError> {
    let url_ok = |key: &str, url: &str| -> Result<(), ConfigError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("`{url}` is not a redis:// or rediss:// URL"),
            ))
        }
    };
    let topology = match (&r.url, &r.cluster, &r.sentinel) {
        (Some(url), None, None) => {
            url_ok("store.url", url)?;
            Topology::Single(url.clone())
        }
        (None, Some(nodes), None) => {
            if nodes.is_empty() {
                return Err(invalid("store.cluster", "lists no node"));
            }
            for (i, n) in nodes.iter().enumerate() {
                url_ok(&format!("store.cluster[{i}]"), n)?;
            }
            Topology::Cluster(nodes.clone())
        }
        (None, None, Some(s)) => {
            if s.nodes.is_empty() {
                return Err(invalid("store.sentinel.nodes", "lists no sentinel"));
            }
            for (i, n) in s.nodes.iter().enumerate() {
                url_ok(&format!("store.sentinel.nodes[{i}]"), n)?;
            }
            Topology::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
            }
        }
        _ => {
            return Err(invalid(
                "store",
                "set exactly one of `url`, `cluster` or `sentinel`",
            ));
        }
    };
    let password = match &r.password_file {
        None => None,
        Some(file) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|source| invalid("store.password_file", ReadError { path, source }))?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
    };
    let defaults = RedisSettings::new(topology);
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| defaults.key_prefix.clone());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        return Err(invalid(
            "store.key_prefix",
            "must be non-empty, without braces or spaces",
        ));
    }
    let max_staleness = duration(
        "store.max_staleness",
        r.max_staleness.as_ref(),
        defaults.max_staleness,
    )?;
    if max_staleness < Duration::from_millis(50) {
        return Err(invalid(
            "store.max_staleness",
            "must be at least 50ms (heartbeats run five times per max_staleness)",
        ));
    }
    Ok(RedisSettings {
        key_prefix,
        timeout: duration("store.timeout", r.timeout.as_ref(), defaults.timeout)?,
        cache_capacity: r.cache_capacity.unwrap_or(defaults.cache_capacity),
        cache_ttl: duration("store.cache_ttl", r.cache_ttl.as_ref(), defaults.cache_ttl)?,
        password,
        max_staleness,
        on_data_loss: match r.on_data_loss.as_deref() {
            None => defaults.on_data_loss,
            Some("refuse_earlier_tokens") => crate::store::epoch::OnDataLoss::RefuseEarlierTokens,
            Some("unavailable") => crate::store::epoch::OnDataLoss::Unavailable,
            Some(other) => {
                return Err(invalid(
                    "store.on_data_loss",
                    format!("`{other}` is neither `refuse_earlier_tokens` nor `unavailable`"),
                ));
            }
        },
        first_start: r.first_start.unwrap_or(false),
        min_replicas_acks: r.min_replicas_acks.unwrap_or(0),
        replica_ack_timeout: duration(
            "store.replica_ack_timeout",
            r.replica_ack_timeout.as_ref(),
            defaults.replica_ack_timeout,
        )?,
        ..defaults
    })
}
