//! Connecting by topology (single server, Cluster, Sentinel), the two lanes a store sends on,
//! following the Sentinel master, and what a failed command means for its connection.
//!
//! Errors are told apart by their kind (`redis::ErrorKind`, `is_connection_dropped()`,
//! `is_io_error()`, …), never by their text, so a new wording in the redis crate or a server
//! cannot change what the store does: see [`retry_once`] and [`SentinelConn::after_error`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};

use super::settings::{RedisSettings, Topology};
use super::{Timeout, unavailable};
use crate::store::StoreError;

/// A connection to the data, whichever the topology.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConn>, Lane),
}

/// Which of a store's two connections: the one every request shares, or the one revoking
/// writes use when they wait for replicas (`WAIT` blocks the connection it is sent on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    Data = 0,
    Durable = 1,
}

/// A connection to whichever server the sentinels say is the master. It asks the sentinels
/// again after a connection error or `READONLY` (the old master was demoted), and at once when
/// a sentinel announces a new master (see [`super::subscriber::watch_sentinels`]).
pub(super) struct SentinelConn {
    pub(super) sentinel: tokio::sync::Mutex<redis::sentinel::SentinelClient>,
    /// The monitored master's name.
    pub(super) master: String,
    /// The master's password.
    pub(super) password: Option<String>,
    /// Longest a sentinel may take to connect or answer.
    pub(super) timeout: Duration,
    /// The master's connection for each [`Lane`].
    pub(super) current: [ArcSwap<Option<ConnectionManager>>; 2],
    pub(super) config: ConnectionManagerConfig,
    /// Bumped on every announced switch: the invalidation subscriber re-subscribes on the new
    /// master, and a resolution that began before the bump is not kept.
    pub(super) switches: tokio::sync::watch::Sender<u64>,
}

impl SentinelConn {
    /// A client for the master the sentinels name now. Asked with `get-master-addr-by-name`,
    /// which names the promoted replica as soon as a failover has promoted it; the redis
    /// crate's own lookup reads `SENTINEL MASTERS`, which keeps naming the old master until the
    /// failover ends — while the old master, still writable, loses what it is sent.
    pub(super) async fn master_client(&self) -> redis::RedisResult<redis::Client> {
        let sentinel = self
            .sentinel
            .lock()
            .await
            .async_get_sentinel_client()
            .await?;
        let mut conn = sentinel
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout)),
            )
            .await?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await?;
        client(&format!("redis://{host}:{port}"), self.password.as_deref())
    }

    pub(super) async fn resolve(&self, lane: Lane) -> redis::RedisResult<ConnectionManager> {
        let generation = *self.switches.borrow();
        let client = self.master_client().await?;
        let mut manager = ConnectionManager::new_with_config(client, self.config.clone()).await?;
        // As the sentinel client guidelines ask: a server that does not call itself the master
        // (the sentinel's view was stale) is not used.
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut manager).await?;
        let is_master = role
            .first()
            .is_some_and(|r| redis::from_redis_value_ref::<String>(r).is_ok_and(|r| r == "master"));
        if !is_master {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the server the sentinels name is not a master",
            )));
        }
        // The sentinels may have answered just before a switch: use that answer for this one
        // operation, but do not keep it.
        if *self.switches.borrow() == generation {
            self.current[lane as usize].store(Arc::new(Some(manager.clone())));
        }
        Ok(manager)
    }

    /// The sentinels named a new master: stop using the old one, for data and invalidations.
    pub(super) fn master_switched(&self) {
        for current in &self.current {
            current.store(Arc::new(None));
        }
        self.switches.send_modify(|g| *g = g.wrapping_add(1));
    }

    pub(super) async fn connection(&self, lane: Lane) -> redis::RedisResult<ConnectionManager> {
        match &**self.current[lane as usize].load() {
            Some(manager) => Ok(manager.clone()),
            None => self.resolve(lane).await,
        }
    }

    /// After a failed command: unless the connection still works ([`Failure::Command`]), it is
    /// let go, and the next use of `lane` asks the sentinels for the master again.
    pub(super) fn after_error(&self, lane: Lane, e: &RedisError) {
        if failure(e) != Failure::Command {
            self.current[lane as usize].store(Arc::new(None));
        }
    }
}

/// What a failed command says about the connection it was sent on. Decided from the error's
/// kind alone (its text is for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The connection died (typically while idle: Redis restarted, an idle timeout) and the
    /// manager replaces it: the command may be sent once more ([`retry_once`]).
    Dropped,
    /// The connection cannot be trusted to reach the master: another I/O failure (a timeout, a
    /// refused connection) or the server answers that it is a replica now (`READONLY`).
    LostMaster,
    /// The command failed on a working connection (a script error, a type error, `NOSCRIPT`
    /// handled by the client, an authentication failure): nothing to change.
    Command,
}

/// Classifies a failed command's error; see [`Failure`].
pub(super) fn failure(e: &RedisError) -> Failure {
    if e.is_connection_dropped() {
        Failure::Dropped
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
    {
        Failure::LostMaster
    } else {
        Failure::Command
    }
}

/// Whether a failed command may be sent once more: the connection had died ([`Failure::Dropped`])
/// and has been replaced by the manager. Every store operation is idempotent or harmless to
/// repeat: reads, `SET`s, the revoking scripts (a repeated session revoke that had in fact run
/// reports "not found" — the session is revoked all the same), a rotation (a repeat finds the
/// token just used: "concurrent", within the grace).
fn retry_once(e: &RedisError) -> bool {
    failure(e) == Failure::Dropped
}

/// Sends on the master's connection of `lane`; after an error the connection is dropped (the
/// next use asks the sentinels again), and a dropped one is tried once more ([`retry_once`]).
async fn on_master<T, F, Fut>(s: &SentinelConn, lane: Lane, send: F) -> redis::RedisResult<T>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let mut retried = false;
    loop {
        let result = send(s.connection(lane).await?).await;
        match &result {
            Err(e) => {
                s.after_error(lane, e);
                if retried || !retry_once(e) {
                    return result;
                }
                retried = true;
            }
            Ok(_) => return result,
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e) if retry_once(&e) => c.req_packed_command(cmd).await,
                    result => result,
                }
            }),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s, lane) => {
                let (s, lane) = (Arc::clone(s), *lane);
                Box::pin(async move {
                    on_master(
                        &s,
                        lane,
                        |mut c| async move { c.req_packed_command(cmd).await },
                    )
                    .await
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => Box::pin(async move {
                match c.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if retry_once(&e) => {
                        c.req_packed_commands(pipeline, offset, count).await
                    }
                    result => result,
                }
            }),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s, lane) => {
                let (s, lane) = (Arc::clone(s), *lane);
                Box::pin(async move {
                    on_master(&s, lane, |mut c| async move {
                        c.req_packed_commands(pipeline, offset, count).await
                    })
                    .await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(..) => 0,
        }
    }
}

/// Where the invalidation subscriber connects.
pub(super) enum PubSubSource {
    Clients(Vec<redis::Client>),
    Sentinel(Arc<SentinelConn>),
}

impl PubSubSource {
    pub(super) async fn client(&self, attempt: usize) -> redis::RedisResult<redis::Client> {
        match self {
            // Cluster: PUBLISH reaches every node, so any node will do; rotate on failure.
            PubSubSource::Clients(clients) => Ok(clients[attempt % clients.len()].clone()),
            PubSubSource::Sentinel(s) => s.master_client().await,
        }
    }
}

/// A client for `url`; `password` (read from a file), when given, replaces any in the URL.
fn client(url: &str, password: Option<&str>) -> redis::RedisResult<redis::Client> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(url)?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info)
}

/// The connections a store uses, by topology: the data lane every request shares, the durable
/// lane for revoking writes that wait for replicas (`None` when `min_replicas_acks` is 0), and
/// where the invalidation subscriber connects. A single server is connected lazily (the gateway
/// starts, and answers 503, while it is down); a Cluster must answer now.
pub(super) async fn open(
    settings: &RedisSettings,
) -> Result<(Conn, Option<Conn>, PubSubSource), StoreError> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.timeout))
        .set_response_timeout(Some(settings.timeout))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_secs(1));
    let password = settings.password.as_deref();
    let waits = settings.min_replicas_acks > 0;
    // The durable lane's commands include a `WAIT` of up to replica_ack_timeout.
    let durable_config = manager_config
        .clone()
        .set_response_timeout(Some(settings.timeout + settings.replica_ack_timeout));
    Ok(match &settings.topology {
        Topology::Single(url) => {
            let c = client(url, password).map_err(unavailable)?;
            let manager = ConnectionManager::new_lazy_with_config(c.clone(), manager_config)
                .map_err(unavailable)?;
            let durable = if waits {
                Some(Conn::Single(
                    ConnectionManager::new_lazy_with_config(c.clone(), durable_config)
                        .map_err(unavailable)?,
                ))
            } else {
                None
            };
            (
                Conn::Single(manager),
                durable,
                PubSubSource::Clients(vec![c]),
            )
        }
        Topology::Cluster(nodes) => {
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(settings.timeout)
                .response_timeout(settings.timeout)
                .retries(2);
            if let Some(p) = password {
                builder = builder.password(p);
            }
            let cluster = builder.build().map_err(unavailable)?;
            let connect = || async {
                tokio::time::timeout(settings.timeout * 4, cluster.get_async_connection())
                    .await
                    .map_err(|_| unavailable(Timeout(settings.timeout * 4)))?
                    .map_err(unavailable)
            };
            let conn = connect().await?;
            let durable = if waits {
                Some(Conn::Cluster(connect().await?))
            } else {
                None
            };
            let clients = nodes
                .iter()
                .map(|n| client(n, password))
                .collect::<Result<Vec<_>, _>>()
                .map_err(unavailable)?;
            (Conn::Cluster(conn), durable, PubSubSource::Clients(clients))
        }
        Topology::Sentinel { master, nodes } => {
            let node_info = password.map(|p| {
                redis::sentinel::SentinelNodeConnectionInfo::default().set_redis_connection_info(
                    redis::RedisConnectionInfo::default().set_password(p),
                )
            });
            let sentinel = redis::sentinel::SentinelClient::build(
                nodes.clone(),
                master.clone(),
                node_info,
                redis::sentinel::SentinelServerType::Master,
            )
            .map_err(unavailable)?;
            let s = Arc::new(SentinelConn {
                sentinel: tokio::sync::Mutex::new(sentinel),
                master: master.clone(),
                password: password.map(str::to_owned),
                timeout: settings.timeout,
                current: [ArcSwap::from_pointee(None), ArcSwap::from_pointee(None)],
                // The durable lane's config differs only in its response timeout; it is
                // used for both lanes' reconnects, so it is the longer one.
                config: if waits {
                    durable_config
                } else {
                    manager_config
                },
                switches: tokio::sync::watch::Sender::new(0),
            });
            let durable = waits.then(|| Conn::Sentinel(Arc::clone(&s), Lane::Durable));
            (
                Conn::Sentinel(Arc::clone(&s), Lane::Data),
                durable,
                PubSubSource::Sentinel(s),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> RedisError {
        RedisError::from(std::io::Error::from(kind))
    }

    #[test]
    fn a_dropped_connection_is_retried_once() {
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::NotConnected,
        ] {
            assert_eq!(failure(&io(kind)), Failure::Dropped, "{kind:?}");
            assert!(retry_once(&io(kind)), "{kind:?}");
        }
        // The manager's own "connection lost" errors carry the I/O kind without an io::Error.
        let lost = RedisError::from((ErrorKind::Io, "connection lost"));
        assert_eq!(failure(&lost), Failure::Dropped);
    }

    #[test]
    fn a_timeout_or_a_demoted_master_lets_the_connection_go_without_a_retry() {
        let timed_out = io(std::io::ErrorKind::TimedOut);
        assert!(timed_out.is_timeout());
        assert_eq!(failure(&timed_out), Failure::LostMaster);
        assert!(!retry_once(&timed_out));
        let read_only = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert_eq!(failure(&read_only), Failure::LostMaster);
        assert!(!retry_once(&read_only));
    }

    #[test]
    fn a_failed_command_on_a_working_connection_changes_nothing() {
        for kind in [
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::Server(ServerErrorKind::NoScript),
            ErrorKind::Server(ServerErrorKind::BusyLoading),
            ErrorKind::UnexpectedReturnType,
            ErrorKind::AuthenticationFailed,
            ErrorKind::Client,
        ] {
            let e = RedisError::from((kind, "any text at all"));
            assert_eq!(failure(&e), Failure::Command, "{kind:?}");
        }
        // Text that reads like a dropped connection or a replica does not make it one.
        let worded = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "READONLY broken pipe connection reset",
        ));
        assert_eq!(failure(&worded), Failure::Command);
    }
}
