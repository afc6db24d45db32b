//! What a Redis store is built from, as the config compiles it.

use std::time::Duration;

use crate::store::epoch::OnDataLoss;

/// Where Redis is.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One server: `redis://host:port/db` or `rediss://…`.
    Single(String),
    /// Cluster seed nodes.
    Cluster(Vec<String>),
    /// Sentinel nodes and the monitored master's name.
    Sentinel {
        /// The master name sentinels know.
        master: String,
        /// `redis://host:port` of each sentinel.
        nodes: Vec<String>,
    },
}

/// Compiled Redis settings.
#[derive(Clone)]
pub struct RedisSettings {
    /// Where Redis is.
    pub topology: Topology,
    /// Prefix of every key and of the invalidation channel.
    pub key_prefix: String,
    /// Longest any store operation may take before the request gets 503.
    pub timeout: Duration,
    /// Positive verdicts kept locally.
    pub cache_capacity: u64,
    /// Longest a positive verdict is kept locally (the safety net behind invalidation).
    pub cache_ttl: Duration,
    /// Password for Redis (and the sentinels' masters), read from a file.
    pub password: Option<String>,
    /// Longest a cached positive verdict is served after the invalidation channel was last
    /// heard from.
    pub max_staleness: Duration,
    /// What a detected data loss does.
    pub on_data_loss: OnDataLoss,
    /// This deployment's first start: an epoch created at start cuts off no earlier token.
    pub first_start: bool,
    /// Replicas that must acknowledge a revoking write (`WAIT`); 0 waits for none.
    pub min_replicas_acks: u32,
    /// Longest a revoking write waits for those acknowledgements.
    pub replica_ack_timeout: Duration,
}

impl RedisSettings {
    /// The defaults for everything but where Redis is.
    pub fn new(topology: Topology) -> Self {
        Self {
            topology,
            key_prefix: "portcullis".to_owned(),
            timeout: Duration::from_millis(500),
            cache_capacity: 100_000,
            cache_ttl: Duration::from_secs(30),
            password: None,
            max_staleness: DEFAULT_MAX_STALENESS,
            on_data_loss: OnDataLoss::RefuseEarlierTokens,
            first_start: false,
            min_replicas_acks: 0,
            replica_ack_timeout: Duration::from_millis(500),
        }
    }
}

/// The default bound on how stale a cached verdict may be under a partition. It is the
/// longest a revoked token can still pass on an instance cut off from the invalidation
/// channel; 500 ms keeps that below what a person notices, while heartbeats every 100 ms let
/// four in a row be late (a busy host, a slow scheduler) before the instance falls back to
/// reading through.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("topology", &self.topology)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("cache_capacity", &self.cache_capacity)
            .field("cache_ttl", &self.cache_ttl)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("max_staleness", &self.max_staleness)
            .field("on_data_loss", &self.on_data_loss)
            .field("first_start", &self.first_start)
            .field("min_replicas_acks", &self.min_replicas_acks)
            .field("replica_ack_timeout", &self.replica_ack_timeout)
            .finish()
    }
}
