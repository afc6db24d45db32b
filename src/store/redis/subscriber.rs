//! Keeping the local cache honest: the invalidation subscription (one per Cluster seed node,
//! else one), the decoding of what it hears, the heartbeat that proves the channel delivers and
//! carries the epoch, the Sentinel announcements that move the subscription to a new master,
//! and the [`Guard`] all of them share with the request path (health, epoch, data loss).
//!
//! The subscriber and the heartbeat run on tasks the store aborts when it is dropped. They act
//! on their own, so what they stamp with a time (a new epoch) reads the gateway's clock held in
//! the guard; staleness and ping intervals are monotonic (`Instant`, Tokio's timers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Value;

use super::connection::{Conn, PubSubSource, SentinelConn};
use super::scripts::Scripts;
use super::{BadEpoch, Halted, Timeout, unavailable};
use crate::clock::Clock;
use crate::metrics::StoreCounters;
use crate::store::StoreError;
use crate::store::cache::{Invalidation, LocalCache};
use crate::store::epoch::{Epoch, EpochWatch, Observation, OnDataLoss};

/// What the heartbeat, the subscriber and the request path share about the store's health and
/// epoch.
pub(super) struct Guard {
    pub(super) conn: Conn,
    pub(super) cache: Arc<LocalCache>,
    pub(super) epoch: EpochWatch,
    pub(super) on_data_loss: OnDataLoss,
    pub(super) first_start: bool,
    pub(super) timeout: Duration,
    /// Whether the last store operation succeeded (for readiness).
    pub(super) last_ok: AtomicBool,
    /// Where a detected reset is recorded; set once the gateway's audit trail exists.
    pub(super) audit: std::sync::OnceLock<crate::audit::Audit>,
    /// The gateway's clock: the instant an epoch this instance creates is stamped with.
    pub(super) clock: Clock,
    /// The heartbeat and epoch scripts (shared with the store).
    pub(super) scripts: Arc<Scripts>,
    /// What the store counts of its work (shared with the store through this guard).
    pub(super) counters: StoreCounters,
    /// Confirmed subscriptions (one per Cluster seed node, else at most one). Under a mutex so
    /// that the cache's subscribed/unsubscribed transitions happen in the order of the counts.
    pub(super) subscriptions: std::sync::Mutex<usize>,
    /// Invalidations applied in the last second (a Cluster delivers each once per subscribed
    /// node), by a hash of their wire form.
    pub(super) delivered: moka::sync::Cache<u64, ()>,
    pub(super) delivered_hasher: std::hash::RandomState,
    /// This instance's id in its heartbeats, random per store: how the subscriber tells its
    /// own heartbeat (which proves the channel delivered up to its send instant) from another
    /// instance's (which proves nothing about this instance's clock).
    pub(super) beat_id: u64,
}

/// A random heartbeat id for a new store.
pub(super) fn beat_id() -> u64 {
    let mut bytes = [0u8; 8];
    // The OS generator does not fail on the platforms the gateway runs on; a zero id would
    // still be only as guessable as a fixed one, and an id is no secret (anyone who can
    // publish on the channel can already publish invalidations).
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A heartbeat's tag: who sent it and when, on the sender's monotonic clock.
fn beat_tag(id: u64, sent: u64) -> String {
    format!("{id:016x}.{sent}")
}

/// The send instant in `tag` when the heartbeat is `id`'s own, else `None`.
fn own_beat(tag: &str, id: u64) -> Option<u64> {
    let (who, sent) = tag.split_once('.')?;
    if who.len() != 16 || u64::from_str_radix(who, 16).ok()? != id {
        return None;
    }
    sent.parse().ok()
}

impl Guard {
    fn subscription_confirmed(&self) {
        let mut live = self
            .subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live += 1;
        if *live == 1 {
            self.cache.subscribed();
        }
    }

    fn subscription_lost(&self) {
        let mut live = self
            .subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.cache.unsubscribed();
        }
    }

    /// Whether this is the first delivery of an invalidation within the last second. Applying
    /// one twice is harmless, only wasted work.
    fn first_delivery(&self, payload: &str) -> bool {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.delivered_hasher.build_hasher();
        h.write(payload.as_bytes());
        let key = h.finish();
        if self.delivered.contains_key(&key) {
            return false;
        }
        self.delivered.insert(key, ());
        true
    }

    /// Runs one store operation under `timeout`, recording health.
    pub(super) async fn run<T>(
        &self,
        timeout: Duration,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable(Timeout(timeout))),
        };
        self.last_ok.store(result.is_ok(), Ordering::Relaxed);
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// One heartbeat: reads the epoch (creating it when there is none), publishes it on the
    /// invalidation channel, and takes in what it says.
    pub(super) async fn beat(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        // The epoch this instance would create. Before it knew any, it is starting: `now` is
        // the cutoff unless this is the deployment's first start. After, a missing epoch is a
        // reset this instance detects.
        let starting = !self.epoch.has_seen();
        let cutoff = if starting && self.first_start { 0 } else { now };
        let halted =
            self.on_data_loss == OnDataLoss::Unavailable && !(starting && self.first_start);
        let candidate = Epoch::new(now, cutoff, halted);
        let mut conn = self.conn.clone();
        let tag = beat_tag(self.beat_id, self.cache.stamp());
        let invocation = self.scripts.heartbeat(&candidate.encode(), &tag);
        let value: String = self
            .run(self.timeout, invocation.invoke_async(&mut conn))
            .await?;
        self.take_in(&value);
        if self.epoch.current().is_none() {
            return Err(unavailable(BadEpoch));
        }
        Ok(())
    }

    /// Takes in an epoch read from the store or heard on the channel.
    pub(super) fn take_in(&self, value: &str) {
        let Some(seen) = Epoch::decode(value) else {
            tracing::error!(
                "the store's epoch marker is unreadable; store checks fail until it is"
            );
            return;
        };
        if let Observation::Reset { previous } = self.epoch.observe(&seen, self.on_data_loss) {
            self.reset_detected(&previous, &seen);
        }
    }

    /// The store lost its data: drop every cached verdict, record it, and (in `unavailable`
    /// mode) mark the epoch halted so that every instance, including those started later,
    /// refuses until an operator resumes.
    fn reset_detected(&self, previous: &Epoch, seen: &Epoch) {
        self.cache.forget_alive();
        self.counters
            .resets_detected
            .fetch_add(1, Ordering::Relaxed);
        let detail = format!(
            "epoch {} (created {}) replaced by {} (created {}); tokens without a session issued \
             at or before {} are refused{}",
            previous.id,
            previous.created,
            seen.id,
            seen.created,
            self.epoch.cutoff(),
            if self.on_data_loss == OnDataLoss::Unavailable {
                "; store checks are halted until POST /admin/store/resume"
            } else {
                ""
            }
        );
        tracing::error!(%detail, "the session store lost its data");
        if let Some(audit) = self.audit.get() {
            audit.emit(&crate::audit::AuditEvent {
                event: "store.reset_detected",
                reason_id: "store.epoch_changed",
                subject: None,
                session: None,
                client_ip: None,
                user_agent: None,
                route: None,
                method: None,
                path: None,
                request_id: None,
                detail: Some(&detail),
            });
        }
        if self.on_data_loss == OnDataLoss::Unavailable && !seen.halted {
            let halted = Epoch {
                halted: true,
                ..seen.clone()
            };
            let (mut conn, scripts) = (self.conn.clone(), Arc::clone(&self.scripts));
            tokio::spawn(async move {
                let marked = scripts
                    .set_epoch_state(&halted.id, &halted.encode())
                    .invoke_async::<i64>(&mut conn)
                    .await;
                if let Err(e) = marked {
                    tracing::warn!(error = %e, "could not mark the store's epoch halted; this instance stays halted");
                }
            });
        }
    }

    /// Takes in the epoch read with a read-through (`None`: the store holds none, and the
    /// heartbeat creates it now), then says whether checks may be answered.
    pub(super) async fn check_epoch(&self, value: Option<&str>) -> Result<(), StoreError> {
        match value {
            Some(v) => self.take_in(v),
            None => self.beat().await?,
        }
        if !self.epoch.has_seen() {
            return Err(unavailable(BadEpoch));
        }
        if self.epoch.is_halted() {
            return Err(unavailable(Halted));
        }
        Ok(())
    }
}

/// Beats every `every` until aborted (when the store is dropped).
pub(super) async fn heartbeat(guard: Arc<Guard>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = guard.beat().await {
            tracing::debug!(error = %e, "store heartbeat failed");
        }
    }
}

/// Keeps this instance subscribed to invalidations, forever: on any loss the cache stops
/// serving positive verdicts until the subscription is confirmed again.
///
/// A Cluster gets one subscription per seed node. `PUBLISH` reaches every node over the
/// cluster bus, so any one subscription hears every event — but through the bus, which cost a
/// p99 of ~58 ms under load; a subscription on the node that ran the revoking script hears it
/// at once. The cache counts as subscribed while at least one subscription is confirmed, and
/// each event is applied once however many nodes deliver it.
pub(super) async fn subscribe(source: PubSubSource, channel: String, guard: Arc<Guard>) {
    match source {
        PubSubSource::Clients(clients) if clients.len() > 1 => {
            let each = clients
                .into_iter()
                .map(|c| subscription(PubSubSource::Clients(vec![c]), &channel, &guard));
            futures_util::future::join_all(each).await;
        }
        source => subscription(source, &channel, &guard).await,
    }
}

/// One subscription, kept up forever.
async fn subscription(source: PubSubSource, channel: &str, guard: &Guard) {
    let mut attempt = 0usize;
    let mut backoff = Duration::from_millis(25);
    loop {
        let mut confirmed = false;
        match listen(&source, attempt, channel, guard, &mut confirmed).await {
            Ok(()) => backoff = Duration::from_millis(25),
            Err(e) => {
                tracing::warn!(error = %e, "invalidation subscription failed; reading through to redis")
            }
        }
        if confirmed {
            guard.subscription_lost();
        }
        attempt = attempt.wrapping_add(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription's life: returns when the connection is lost.
async fn listen(
    source: &PubSubSource,
    attempt: usize,
    channel: &str,
    guard: &Guard,
    confirmed: &mut bool,
) -> redis::RedisResult<()> {
    let cache = &guard.cache;
    // Taken before asking the sentinels for the master, so that a switch announced from here
    // on ends this subscription.
    let mut switches = match source {
        PubSubSource::Clients(_) => None,
        PubSubSource::Sentinel(s) => Some(s.switches.subscribe()),
    };
    let client = source.client(attempt).await?;
    let mut pubsub = tokio::time::timeout(PING_EVERY, client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub.subscribe(channel).await?;
    // Confirmed: from now on every revocation reaches us.
    *confirmed = true;
    guard.subscription_confirmed();
    tracing::info!(channel, "subscribed to invalidations");
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let payload: String = match message.get_payload() {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable invalidation");
                        continue;
                    }
                };
                // A heartbeat (`b <tag> <epoch>`) carries the epoch its sender read: a reset
                // seen by any instance is seen by all within one heartbeat. Only this
                // instance's own restarts the staleness clock, from the instant it was sent.
                if let Some((tag, epoch)) =
                    payload.strip_prefix("b ").and_then(|b| b.split_once(' '))
                {
                    if let Some(sent) = own_beat(tag, guard.beat_id) {
                        cache.heard(sent);
                    }
                    guard.take_in(epoch);
                    continue;
                }
                // An epoch announcement (a halted epoch, or a previous release's heartbeat).
                if let Some(epoch) = payload.strip_prefix("h ") {
                    guard.take_in(epoch);
                    continue;
                }
                match Invalidation::decode(&payload) {
                    Some(event) => {
                        if guard.first_delivery(&payload) {
                            cache.apply(&event);
                        }
                    }
                    None => tracing::warn!("unknown invalidation message ignored"),
                }
            }
            _ = ping.tick() => {
                // A half-open connection never ends the stream; a ping that goes unanswered does.
                // Any answer will do: a subscribed RESP2 connection answers `["pong", ""]`.
                match tokio::time::timeout(PING_EVERY, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
            // The server we listen on is no longer the master: events are published elsewhere.
            () = switched(&mut switches) => return Ok(()),
        }
    }
}

/// How often an idle subscription is pinged, and how long the answer may take.
const PING_EVERY: Duration = Duration::from_secs(2);

/// Heartbeats go out five times per `max_staleness`, so that four can be lost or late before
/// cached verdicts stop being served (and never more often than every 10 ms).
pub(super) fn heartbeat_interval(max_staleness: Duration) -> Duration {
    (max_staleness / 5).max(Duration::from_millis(10))
}

/// Resolves when a master switch is announced; never without a sentinel.
async fn switched(switches: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    match switches {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Follows the sentinels' announcements of a new master, forever. A planned failover
/// (`SENTINEL FAILOVER`) leaves the old master running, and writable, for seconds until the
/// sentinels convert it; whatever is written to it meanwhile (a revocation) is discarded when it
/// resyncs, and its subscribers hear nothing published on the new master. So the switch must be
/// acted on when it is announced, not when the old master fails.
///
/// Two announcements: `+failover-state-reconf-slaves` (`master <name> <ip> <port>`), sent at
/// the moment a sentinel starts naming the promoted replica as the master — well before
/// `+switch-master` (`<name> <old ip> <old port> <new ip> <new port>`), which ends the failover.
pub(super) async fn watch_sentinels(s: Arc<SentinelConn>) {
    let mut backoff = Duration::from_millis(25);
    let mut first = true;
    loop {
        match watch_switches(&s, &mut first).await {
            Ok(()) => backoff = Duration::from_millis(25),
            Err(e) => tracing::warn!(error = %e, "cannot follow sentinel announcements"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One subscription to a sentinel's announcements: returns when the connection is lost.
async fn watch_switches(s: &SentinelConn, first: &mut bool) -> redis::RedisResult<()> {
    let client = s.sentinel.lock().await.async_get_sentinel_client().await?;
    let mut pubsub = tokio::time::timeout(PING_EVERY, client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub
        .subscribe(&["+failover-state-reconf-slaves", "+switch-master"])
        .await?;
    if !std::mem::take(first) {
        // A switch may have been announced while no sentinel was being heard.
        s.master_switched();
    }
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = stream.next() => {
                let Some(message) = message else { return Ok(()) };
                let payload: String = message.get_payload()?;
                let mut words = payload.split(' ');
                let name = match message.get_channel_name() {
                    "+switch-master" => words.next(),
                    "+failover-state-reconf-slaves" => words.nth(1),
                    _ => None,
                };
                if name == Some(s.master.as_str()) {
                    tracing::warn!(announcement = %payload, "sentinel switched master");
                    s.master_switched();
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_EVERY, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_instances_own_heartbeat_tag_yields_its_send_instant() {
        let tag = beat_tag(0xabc, 12_345);
        assert_eq!(tag, "0000000000000abc.12345");
        assert_eq!(own_beat(&tag, 0xabc), Some(12_345));
        assert_eq!(own_beat(&tag, 0xabd), None, "another instance's");
        assert_eq!(own_beat("abc.12345", 0xabc), None, "not the full width");
        assert_eq!(own_beat("0000000000000abc", 0xabc), None, "no instant");
        assert_eq!(own_beat("0000000000000abc.x", 0xabc), None);
    }
}
