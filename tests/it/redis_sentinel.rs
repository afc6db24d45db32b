//! The Redis store behind Redis Sentinel: a master, a replica and one sentinel, all private
//! processes on free loopback ports, stopped by their pids. The store finds the master through
//! the sentinel, and after the master dies and the sentinel promotes the replica the same store
//! (no restart, no new store) works against the new master.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use portcullis::store::{
    RedisSettings, RedisStore, SessionRecord, SessionStore, TokenRef, Topology, Verdict, jti_key,
};

const ISS: &str = "https://issuer.test";
const MASTER: &str = "m";

/// How long a failover may take: 1 s to call the master down, then election and promotion.
const FAILOVER: Duration = Duration::from_secs(20);

fn record(sid: &str, sub: &str) -> SessionRecord {
    let n = now();
    SessionRecord {
        id: sid.into(),
        subject: sub.into(),
        created_at: n,
        last_seen: n,
        ip: "192.0.2.7".into(),
        user_agent: "tests".into(),
        absolute_expiry: n + 3600,
        idle_expiry: n + 1800,
        remember_me: false,
        provider: None,
    }
}

/// A token for `sub`/`sid`; `n` makes its cache key and `jti` unique.
struct Tok {
    token_key: [u8; 32],
    jti_key: [u8; 32],
    sub: String,
    sid: String,
}

impl Tok {
    fn new(n: u64, sub: &str, sid: &str) -> Self {
        let mut token_key = [0u8; 32];
        token_key[..8].copy_from_slice(&n.to_le_bytes());
        Self {
            token_key,
            jti_key: jti_key(ISS, &format!("jti-{n}")),
            sub: sub.into(),
            sid: sid.into(),
        }
    }

    fn r(&self) -> TokenRef<'_> {
        TokenRef {
            token_key: &self.token_key,
            jti_key: &self.jti_key,
            expires_at: now() + 600,
            subject: &self.sub,
            user: &self.sub,
            session: Some(&self.sid),
            issued_at: now() - 5,
            require_session: true,
        }
    }
}

/// Master, replica (in sync) and a sentinel watching the master.
fn start_group() -> (RedisServer, RedisServer, RedisSentinel) {
    let master = RedisServer::start();
    let master_port = master.port.to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port]);
    let synced = wait_for(Duration::from_secs(10), || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    assert!(synced, "the replica never synced");
    let sentinel = RedisSentinel::start(MASTER, master.port);
    // The sentinel learns of the replica from the master's INFO (every 10 s at first, at once
    // on start): a failover needs it known.
    let discovered = wait_for(Duration::from_secs(15), || {
        sentinel
            .cli(&["SENTINEL", "replicas", MASTER])
            .contains(&replica.port.to_string())
    });
    assert!(discovered, "the sentinel never discovered the replica");
    (master, replica, sentinel)
}

async fn sentinel_store(sentinel: &RedisSentinel) -> RedisStore {
    sentinel_store_acked(sentinel, 0).await
}

/// A store on the sentinel's master whose revoking writes wait for `acks` replicas.
async fn sentinel_store_acked(sentinel: &RedisSentinel, acks: u32) -> RedisStore {
    connect_store(&RedisSettings {
        topology: Topology::Sentinel {
            master: MASTER.into(),
            nodes: vec![sentinel.url()],
        },
        key_prefix: "sen".into(),
        timeout: Duration::from_millis(500),
        cache_capacity: 10_000,
        cache_ttl: Duration::from_secs(30),
        password: None,
        min_replicas_acks: acks,
        replica_ack_timeout: Duration::from_millis(300),
        ..RedisSettings::new(Topology::Single(String::new()))
    })
    .await
}

#[tokio::test]
async fn the_store_finds_the_master_through_sentinel_and_survives_a_failover() {
    let (mut master, replica, sentinel) = start_group();
    let store = sentinel_store(&sentinel).await;
    let other = sentinel_store(&sentinel).await;

    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    store
        .create_session(record("s2", "alice"), None)
        .await
        .unwrap();
    let t1 = Tok::new(1, "alice", "s1");
    assert_eq!(store.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
    assert_eq!(other.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
    // The invalidation reaches the other instance through the master.
    assert!(store.revoke_session("alice", "s1").await.unwrap());
    assert!(
        eventually(Duration::from_secs(2), || async {
            other.check(&t1.r(), now()).await.unwrap() != Verdict::Alive
        })
        .await
        .is_some(),
        "the other instance kept a revoked session"
    );
    // Everything written so far is on the replica before the master dies.
    assert_eq!(master.cli(&["WAIT", "1", "2000"]).trim(), "1");

    master.kill();
    let started = Instant::now();
    let promoted = eventually(FAILOVER, || async {
        sentinel.master_port(MASTER) == Some(replica.port)
    })
    .await;
    assert!(
        promoted.is_some(),
        "no failover within {FAILOVER:?}: sentinel says {:?}",
        sentinel.master_port(MASTER)
    );
    // The same store, not a new one: it re-asks the sentinel and works against the new master.
    let recovered = eventually(FAILOVER, || async {
        store
            .create_session(record("s3", "alice"), None)
            .await
            .is_ok()
    })
    .await;
    eprintln!(
        "sentinel: promoted after {promoted:?}; the store wrote again {:?} after the kill",
        started.elapsed()
    );
    assert!(
        recovered.is_some(),
        "the store did not write again within {FAILOVER:?} of the failover"
    );
    let t2 = Tok::new(2, "alice", "s2");
    let t3 = Tok::new(3, "alice", "s3");
    assert_eq!(store.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);
    assert_eq!(store.check(&t3.r(), now()).await.unwrap(), Verdict::Alive);
    assert_ne!(store.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
    // The other instance follows too, and its subscription moved to the new master: a
    // revocation made now reaches it.
    assert!(
        eventually(FAILOVER, || async {
            other.check(&t3.r(), now()).await.ok() == Some(Verdict::Alive)
                && other.cache().is_subscribed()
        })
        .await
        .is_some(),
        "the other instance did not follow the failover"
    );
    assert!(store.revoke_session("alice", "s3").await.unwrap());
    assert!(
        eventually(Duration::from_secs(2), || async {
            other.check(&t3.r(), now()).await.unwrap() != Verdict::Alive
        })
        .await
        .is_some(),
        "after the failover the other instance kept a revoked session"
    );
}

/// A master that hangs (stopped, as behind a partition that drops packets) answers nothing and
/// closes nothing: the store must not wait on it forever once the sentinel has promoted the
/// replica.
#[tokio::test]
async fn a_hung_master_is_failed_over_and_the_store_follows_without_a_restart() {
    let (master, replica, sentinel) = start_group();
    let store = sentinel_store(&sentinel).await;
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    let t1 = Tok::new(11, "alice", "s1");
    assert_eq!(store.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
    assert_eq!(master.cli(&["WAIT", "1", "2000"]).trim(), "1");

    let pid = master.pid().unwrap();
    signal(pid, "STOP");
    // Whatever happens next, the stopped master must not outlive the test as a stopped process
    // (the drop guard's SIGKILL works on a stopped process too).
    let started = Instant::now();
    // While it hangs, nothing is let through: an uncached answer is an error, never "alive".
    let t_uncached = Tok::new(12, "alice", "s1");
    assert!(store.check(&t_uncached.r(), now()).await.is_err());
    let promoted = eventually(FAILOVER, || async {
        sentinel.master_port(MASTER) == Some(replica.port)
    })
    .await;
    assert!(promoted.is_some(), "no failover within {FAILOVER:?}");
    let recovered = eventually(FAILOVER, || async {
        store
            .create_session(record("s2", "alice"), None)
            .await
            .is_ok()
            && store
                .check(&Tok::new(13, "alice", "s1").r(), now())
                .await
                .ok()
                == Some(Verdict::Alive)
    })
    .await;
    eprintln!(
        "hung master: promoted after {promoted:?}; the store answered again {:?} after the hang",
        started.elapsed()
    );
    assert!(
        recovered.is_some(),
        "the store still did not answer {:?} after the master hung (promoted after {promoted:?})",
        started.elapsed()
    );
}

/// A planned failover (`SENTINEL FAILOVER`) promotes the replica while the old master is still
/// alive and still a master until the sentinel converts it, seconds later; it then resyncs
/// from the new master, discarding whatever was written to it meanwhile. Both instances must
/// follow the sentinel's word at once: a revocation written to the old master in that window
/// would be lost, and the session would come back.
///
/// Multi-threaded so that the instances hear the sentinel's announcement while this thread is
/// blocked in `redis-cli` asking the same sentinel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_planned_failover_no_revocation_is_lost_and_both_instances_use_the_new_master() {
    let (old, replica, sentinel) = start_group();
    let a = sentinel_store(&sentinel).await;
    let b = sentinel_store(&sentinel).await;
    a.create_session(record("s1", "alice"), None).await.unwrap();
    a.create_session(record("s2", "alice"), None).await.unwrap();
    let t1 = Tok::new(21, "alice", "s1");
    assert_eq!(b.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);
    assert_eq!(old.cli(&["WAIT", "1", "2000"]).trim(), "1");

    // The sentinel refuses (NOGOODSLAVE) until it has fresh INFO from the replica.
    let mut said = String::new();
    let asked = eventually(FAILOVER, || {
        said = sentinel.cli(&["SENTINEL", "FAILOVER", MASTER]);
        let ok = said.contains("OK");
        async move { ok }
    })
    .await;
    assert!(asked.is_some(), "SENTINEL FAILOVER: {said}");
    let started = Instant::now();
    assert!(
        eventually(FAILOVER, || async {
            sentinel.master_port(MASTER) == Some(replica.port)
        })
        .await
        .is_some(),
        "the sentinel never named the new master"
    );
    // The sentinel has named the new master: from now on a write must land there, although the
    // old master is still up, still a master, and still accepts writes.
    let wrote = eventually(FAILOVER, || async {
        a.revoke_session("alice", "s1").await.is_ok()
    })
    .await;
    assert!(wrote.is_some(), "a never wrote after the failover");
    let old_role = old.cli(&["ROLE"]);
    assert_eq!(
        replica.cli(&["EXISTS", "sen:{u:YWxpY2U}:s:s1"]).trim(),
        "0",
        "the revocation went to the old master (role now: {}), which will discard it when \
         the sentinel converts it to a replica",
        old_role.lines().next().unwrap_or_default()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.check(&t1.r(), now())
                .await
                .ok()
                .is_some_and(|v| v != Verdict::Alive)
        })
        .await
        .is_some(),
        "b kept a session revoked after the failover"
    );
    // Stop the old master: an instance still talking to it would only time out. No polling:
    // each instance's very next answer must come from the new master.
    signal(old.pid().unwrap(), "STOP");
    let fresh = Tok::new(22, "alice", "s2");
    for (name, store) in [("a", &a), ("b", &b)] {
        let answer = store.check(&fresh.r(), now()).await;
        assert!(
            matches!(answer, Ok(Verdict::Alive)),
            "{name} still depends on the old master: {answer:?}"
        );
    }
    // And their subscriptions are on the new master: an event now reaches b.
    assert!(
        eventually(FAILOVER, || async {
            a.cache().is_subscribed() && b.cache().is_subscribed()
        })
        .await
        .is_some()
    );
    let t2 = Tok::new(23, "alice", "s2");
    assert_eq!(b.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);
    assert!(a.revoke_session("alice", "s2").await.unwrap());
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.check(&t2.r(), now()).await.ok() != Some(Verdict::Alive)
        })
        .await
        .is_some(),
        "an invalidation after the failover did not reach b"
    );
    eprintln!(
        "planned failover: both instances on the new master {:?} after the failover was asked \
         (the old master still says {:?})",
        started.elapsed(),
        old_role.lines().next().unwrap_or_default()
    );
}

#[tokio::test]
async fn sec37_with_min_replicas_acks_a_revocation_is_done_only_once_the_replica_has_it() {
    let (master, replica, sentinel) = start_group();
    let store = sentinel_store_acked(&sentinel, 1).await;
    for sid in ["s1", "s2", "s3"] {
        store
            .create_session(record(sid, "alice"), None)
            .await
            .unwrap();
    }
    assert!(store.revoke_session("alice", "s1").await.unwrap());
    // Acknowledged means the replica — the server a failover promotes — has it already.
    let left = replica.cli(&["--scan", "--pattern", "sen:*:s:s1"]);
    assert!(left.trim().is_empty(), "the replica still holds {left}");
    let t2 = Tok::new(2, "alice", "s2");
    assert_eq!(store.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);

    // The replica hangs: the write reaches the master, but it is not reported done.
    let pid = replica.pid().unwrap();
    signal(pid, "STOP");
    let refused = store.revoke_session("alice", "s2").await;
    let denied = store.deny_jti(ISS, "jti-2", now() + 60, now()).await;
    signal(pid, "CONT");
    assert!(
        refused.is_err() && denied.is_err(),
        "a revocation no replica acknowledged was reported done"
    );
    // Once the replica is back, revocations are acknowledged again; the request path never
    // waited on any of this (its connection is not the one WAIT blocks).
    assert!(store.revoke_session("alice", "s3").await.unwrap());
    drop(master);
}
