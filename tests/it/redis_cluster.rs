//! The Redis store on a real Redis Cluster: three `redis-server` masters on free loopback ports,
//! joined with `redis-cli --cluster create` (one cluster per test, every node stopped by its pid).
//!
//! Each user's keys share the hash tag `{u:<subject>}`, so every script touches one slot; the
//! tests use several subjects so that their keys land on different nodes, and check that they
//! did — a script that reached across slots would fail here with CROSSSLOT, a mis-routed one
//! with MOVED.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use portcullis::store::{
    RedisSettings, RedisStore, RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore,
    Store, TokenRef, Topology, Verdict, jti_key,
};
use serde_json::json;

const ISS: &str = "https://issuer.test";

/// Subjects chosen to spread over the cluster's nodes (checked by `keys_are_spread`).
const SUBJECTS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

/// A token as the session stage sees it.
struct Tok {
    token_key: [u8; 32],
    jti: String,
    jti_key: [u8; 32],
    sub: String,
    sid: String,
    iat: i64,
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Tok {
    fn new(sub: &str, sid: &str) -> Self {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut token_key = [0u8; 32];
        token_key[..8].copy_from_slice(&n.to_le_bytes());
        let jti = format!("jti-{n}");
        Self {
            token_key,
            jti_key: jti_key(ISS, &jti),
            jti,
            sub: sub.into(),
            sid: sid.into(),
            iat: now() - 5,
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
            issued_at: self.iat,
            require_session: true,
        }
    }
}

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

fn grant(n: u8) -> Option<RefreshGrant> {
    Some(RefreshGrant {
        hash: [n; 32],
        expires_at: now() + 86_400,
    })
}

fn rotation<'a>(sub: &'a str, sid: &'a str, presented: u8, successor: u8, at: i64) -> Rotation<'a> {
    Rotation {
        subject: sub,
        session: sid,
        presented: [presented; 32],
        successor: [successor; 32],
        successor_expires_at: at + 86_400,
        now: at,
        grace: 10,
        idle: 1800,
    }
}

async fn cluster_store(cluster: &RedisCluster, prefix: &str) -> RedisStore {
    connect_store(&RedisSettings {
        topology: Topology::Cluster(cluster.urls()),
        key_prefix: prefix.into(),
        timeout: Duration::from_millis(500),
        cache_capacity: 10_000,
        cache_ttl: Duration::from_secs(30),
        password: None,
        ..RedisSettings::new(Topology::Single(String::new()))
    })
    .await
}

/// How many keys each node holds.
fn keys_per_node(cluster: &RedisCluster) -> Vec<u64> {
    cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["DBSIZE"]).trim().parse().unwrap())
        .collect()
}

/// The test proves nothing about slots unless the data really is on several nodes.
fn assert_spread(cluster: &RedisCluster) {
    let per_node = keys_per_node(cluster);
    assert!(
        per_node.iter().filter(|&&k| k > 0).count() >= 2,
        "all keys landed on one node: {per_node:?}"
    );
}

#[tokio::test]
async fn sessions_of_users_on_different_nodes_are_created_checked_and_revoked() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster, "c").await;
    let mut tokens = Vec::new();
    for sub in SUBJECTS {
        for sid in ["one", "two"] {
            store
                .create_session(record(&format!("{sub}-{sid}"), sub), grant(1))
                .await
                .unwrap();
        }
        let one = Tok::new(sub, &format!("{sub}-one"));
        let two = Tok::new(sub, &format!("{sub}-two"));
        assert_eq!(store.check(&one.r(), now()).await.unwrap(), Verdict::Alive);
        assert_eq!(store.check(&two.r(), now()).await.unwrap(), Verdict::Alive);
        assert_eq!(store.sessions_of(sub, now()).await.unwrap().len(), 2);
        tokens.push((one, two));
    }
    assert_spread(&cluster);
    for (one, two) in &tokens {
        assert!(store.revoke_session(&one.sub, &one.sid).await.unwrap());
        assert_eq!(
            store.check(&one.r(), now()).await.unwrap(),
            Verdict::SessionUnknown
        );
        assert_eq!(store.check(&two.r(), now()).await.unwrap(), Verdict::Alive);
        let listed = store.sessions_of(&one.sub, now()).await.unwrap();
        assert_eq!(
            listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
            [two.sid.as_str()]
        );
    }
    // A session named under another subject is another key: nothing to revoke.
    assert!(!store.revoke_session("bob", "alice-two").await.unwrap());
}

#[tokio::test]
async fn revoking_a_user_on_a_cluster_ends_every_session_and_refuses_earlier_tokens() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster, "c").await;
    let mut tokens = Vec::new();
    for sub in SUBJECTS {
        for i in 0..3 {
            let sid = format!("{sub}-{i}");
            store.create_session(record(&sid, sub), None).await.unwrap();
            let t = Tok::new(sub, &sid);
            assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
            tokens.push(t);
        }
    }
    assert_spread(&cluster);
    let n = now();
    // Every other user is revoked; the rest are untouched.
    for sub in SUBJECTS.iter().step_by(2) {
        store.revoke_user(sub, n, n + 900).await.unwrap();
        assert!(store.sessions_of(sub, now()).await.unwrap().is_empty());
    }
    for t in &tokens {
        let revoked = SUBJECTS.iter().step_by(2).any(|s| *s == t.sub);
        let v = store.check(&t.r(), now()).await.unwrap();
        if revoked {
            assert_ne!(v, Verdict::Alive, "{} survived logout-all", t.sub);
        } else {
            assert_eq!(v, Verdict::Alive, "{} was revoked with another user", t.sub);
        }
    }
}

#[tokio::test]
async fn denied_jtis_in_their_own_slots_are_refused_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster, "c").await;
    store
        .create_session(record("s1", "alice"), None)
        .await
        .unwrap();
    let tokens: Vec<Tok> = (0..12).map(|_| Tok::new("alice", "s1")).collect();
    for t in &tokens {
        assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
    }
    for t in tokens.iter().step_by(2) {
        store
            .deny_jti(ISS, &t.jti, now() + 600, now())
            .await
            .unwrap();
    }
    // Twelve denylist keys, each in its own slot: they cannot all be on one node.
    assert_spread(&cluster);
    for (i, t) in tokens.iter().enumerate() {
        let want = if i % 2 == 0 {
            Verdict::JtiDenied
        } else {
            Verdict::Alive
        };
        assert_eq!(store.check(&t.r(), now()).await.unwrap(), want);
    }
}

#[tokio::test]
async fn rotation_and_reuse_detection_work_on_a_cluster() {
    let cluster = RedisCluster::start(3);
    let store = cluster_store(&cluster, "c").await;
    let n = now();
    for sub in SUBJECTS {
        store
            .create_session(record("s1", sub), grant(1))
            .await
            .unwrap();
        assert!(matches!(
            store
                .rotate_refresh(&rotation(sub, "s1", 1, 2, n))
                .await
                .unwrap(),
            RotateOutcome::Rotated(_)
        ));
        assert!(matches!(
            store
                .rotate_refresh(&rotation(sub, "s1", 1, 3, n + 5))
                .await
                .unwrap(),
            RotateOutcome::Concurrent(_)
        ));
        assert!(matches!(
            store
                .rotate_refresh(&rotation(sub, "s1", 2, 4, n + 6))
                .await
                .unwrap(),
            RotateOutcome::Rotated(_)
        ));
    }
    assert_spread(&cluster);
    // Reuse outside the grace window, for half the users: their session is gone, the others'
    // newest token still rotates.
    for (i, sub) in SUBJECTS.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(
                store
                    .rotate_refresh(&rotation(sub, "s1", 1, 9, n + 60))
                    .await
                    .unwrap(),
                RotateOutcome::ReuseDetected {
                    subject: (*sub).into()
                }
            );
            assert_eq!(
                store.check(&Tok::new(sub, "s1").r(), n + 60).await.unwrap(),
                Verdict::SessionUnknown
            );
            assert_eq!(
                store
                    .rotate_refresh(&rotation(sub, "s1", 4, 5, n + 61))
                    .await
                    .unwrap(),
                RotateOutcome::Invalid
            );
        } else {
            assert!(matches!(
                store
                    .rotate_refresh(&rotation(sub, "s1", 4, 5, n + 61))
                    .await
                    .unwrap(),
                RotateOutcome::Rotated(_)
            ));
        }
    }
}

#[tokio::test]
async fn twenty_parallel_rotations_on_a_cluster_rotate_exactly_once_per_user() {
    let cluster = RedisCluster::start(3);
    let store = Arc::new(cluster_store(&cluster, "c").await);
    let n = now();
    for sub in &SUBJECTS[..3] {
        store
            .create_session(record("s1", sub), grant(1))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for sub in &SUBJECTS[..3] {
        for i in 0..20u8 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let outcome = store
                    .rotate_refresh(&rotation(sub, "s1", 1, 100 + i, n))
                    .await
                    .unwrap();
                (*sub, outcome)
            }));
        }
    }
    let mut rotated = std::collections::BTreeMap::<&str, (u32, u32)>::new();
    for t in tasks {
        let (sub, outcome) = t.await.unwrap();
        let counts = rotated.entry(sub).or_default();
        match outcome {
            RotateOutcome::Rotated(_) => counts.0 += 1,
            RotateOutcome::Concurrent(_) => counts.1 += 1,
            other => panic!("false verdict inside the grace window for {sub}: {other:?}"),
        }
    }
    for sub in &SUBJECTS[..3] {
        assert_eq!(rotated[sub], (1, 19), "{sub}");
        assert_eq!(
            store.check(&Tok::new(sub, "s1").r(), n).await.unwrap(),
            Verdict::Alive
        );
    }
}

/// Two gateways configured with `cluster:` seed lists, like two instances in production.
#[tokio::test]
async fn sec13_a_revocation_through_one_gateway_reaches_another_over_a_cluster() {
    let cluster = RedisCluster::start(3);
    let seeds = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = format!("store: {{ kind: redis, cluster: [{seeds}], key_prefix: gw }}");
    let key = TestKey::generate(jsonwebtoken::Algorithm::EdDSA, "k-ed");
    let b_key = TestKey {
        kid: key.kid.clone(),
        alg: key.alg,
        encoding: key.encoding.clone(),
        public_pem: key.public_pem.clone(),
        public_der: key.public_der.clone(),
    };
    let a = Setup {
        keys: vec![key],
        extra: extra.clone(),
        ..Setup::default()
    }
    .start()
    .await;
    let b = Setup {
        keys: vec![b_key],
        extra,
        ..Setup::default()
    }
    .start()
    .await;
    let b_store = match b.store() {
        Store::Redis(r) => r,
        Store::Memory(_) => panic!("memory store"),
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            b_store.cache().is_subscribed()
        })
        .await
        .is_some()
    );
    // Users on several nodes: the invalidation must reach B whichever node ran the script.
    let mut tokens = Vec::new();
    for sub in SUBJECTS {
        a.create_session(&format!("{sub}-s"), sub).await;
        let t = a.token(json!({ "sub": sub, "sid": format!("{sub}-s") }));
        assert_eq!(b.get_bearer("/api", &t).await.status, StatusCode::OK);
        tokens.push((sub, t));
    }
    assert_spread(&cluster);
    assert!(b_store.cache().alive_count() >= SUBJECTS.len() as u64);
    let mut delays = Vec::new();
    for (sub, t) in &tokens {
        assert!(
            a.store()
                .revoke_session(sub, &format!("{sub}-s"))
                .await
                .unwrap()
        );
        let started = Instant::now();
        let refused = eventually(Duration::from_secs(2), || async {
            b.get_bearer("/api", t).await.status == StatusCode::UNAUTHORIZED
        })
        .await;
        let Some(took) = refused else {
            panic!(
                "b accepted {sub}'s revoked session {:?} after the revocation",
                started.elapsed()
            )
        };
        delays.push(took);
        let before = b.upstream.count();
        assert_eq!(
            b.get_bearer("/api", t).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(b.upstream.count(), before);
    }
    eprintln!("cluster sec13: revoked through A, refused by B after {delays:?}");
}

/// Every node's id, in `cluster.nodes` order.
fn node_ids(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["CLUSTER", "MYID"]).trim().to_owned())
        .collect()
}

/// The node (index into `ids`) that `asked` says serves `slot`.
fn owner_of(asked: &RedisServer, ids: &[String], slot: u16) -> usize {
    let nodes = asked.cli(&["CLUSTER", "NODES"]);
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        for range in fields.iter().skip(8) {
            let (lo, hi) = match range.split_once('-') {
                Some((lo, hi)) => (lo.parse::<u16>(), hi.parse::<u16>()),
                None => (range.parse::<u16>(), range.parse::<u16>()),
            };
            if let (Ok(lo), Ok(hi)) = (lo, hi)
                && (lo..=hi).contains(&slot)
            {
                return ids.iter().position(|id| id == fields[0]).unwrap();
            }
        }
    }
    panic!("no node serves slot {slot}:\n{nodes}");
}

/// Moves `slot` with its keys from one node to another, the way `redis-cli --cluster reshard`
/// does it, and waits until every node agrees.
fn move_slot(cluster: &RedisCluster, ids: &[String], slot: u16, from: usize, to: usize) {
    let (src, dst) = (&cluster.nodes[from], &cluster.nodes[to]);
    let s = slot.to_string();
    assert!(
        dst.cli(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &ids[from]])
            .contains("OK")
    );
    assert!(
        src.cli(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &ids[to]])
            .contains("OK")
    );
    let keys = src.cli(&["CLUSTER", "GETKEYSINSLOT", &s, "1000"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(!keys.is_empty(), "slot {slot} holds no key");
    let port = dst.port.to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(&keys);
    let out = src.cli(&migrate);
    assert!(out.contains("OK"), "MIGRATE: {out}");
    for n in &cluster.nodes {
        assert!(
            n.cli(&["CLUSTER", "SETSLOT", &s, "NODE", &ids[to]])
                .contains("OK")
        );
    }
    let settled = wait_for(Duration::from_secs(10), || {
        cluster.nodes.iter().all(|n| owner_of(n, ids, slot) == to)
    });
    assert!(settled, "slot {slot} never settled");
}

#[tokio::test]
async fn a_users_slot_moving_to_another_node_needs_no_new_store() {
    let cluster = RedisCluster::start(3);
    let a = cluster_store(&cluster, "c").await;
    let b = cluster_store(&cluster, "c").await;
    a.create_session(record("s1", "alice"), grant(1))
        .await
        .unwrap();
    a.create_session(record("s2", "alice"), None).await.unwrap();
    let t1 = Tok::new("alice", "s1");
    assert_eq!(b.check(&t1.r(), now()).await.unwrap(), Verdict::Alive);

    // `c:{u:YWxpY2U}` — alice's hash tag; every key of hers is in this slot.
    let slot: u16 = cluster.nodes[0]
        .cli(&["CLUSTER", "KEYSLOT", "c:{u:YWxpY2U}:sessions"])
        .trim()
        .parse()
        .unwrap();
    let ids = node_ids(&cluster);
    let from = owner_of(&cluster.nodes[0], &ids, slot);
    let to = (from + 1) % cluster.nodes.len();
    move_slot(&cluster, &ids, slot, from, to);
    assert_eq!(
        cluster.nodes[from]
            .cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
            .trim(),
        "0",
        "the keys moved"
    );

    // The same stores, after MOVED: reads, every script, and invalidation all still work.
    let t2 = Tok::new("alice", "s2");
    assert_eq!(a.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);
    assert!(matches!(
        a.rotate_refresh(&rotation("alice", "s1", 1, 2, now()))
            .await
            .unwrap(),
        RotateOutcome::Rotated(_)
    ));
    a.create_session(record("s3", "alice"), None).await.unwrap();
    assert_eq!(a.sessions_of("alice", now()).await.unwrap().len(), 3);
    assert!(a.revoke_session("alice", "s1").await.unwrap());
    assert!(
        eventually(Duration::from_secs(2), || async {
            b.check(&t1.r(), now()).await.unwrap() != Verdict::Alive
        })
        .await
        .is_some(),
        "b kept a session revoked after the slot moved"
    );
    let n = now();
    a.revoke_user("alice", n, n + 900).await.unwrap();
    assert_ne!(b.check(&t2.r(), now()).await.unwrap(), Verdict::Alive);
    assert!(a.sessions_of("alice", now()).await.unwrap().is_empty());
    assert!(
        cluster.nodes[to]
            .cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
            .trim()
            .parse::<u64>()
            .unwrap()
            > 0
    );
}

#[tokio::test]
async fn sec37_with_min_replicas_acks_cluster_revocations_wait_for_a_replica_and_fail_without_one()
{
    let cluster = RedisCluster::start_with_replicas(3, 1);
    let store = RedisStore::connect(
        &RedisSettings {
            topology: Topology::Cluster(cluster.urls()),
            key_prefix: "wait".into(),
            min_replicas_acks: 1,
            replica_ack_timeout: Duration::from_millis(300),
            first_start: true,
            ..RedisSettings::new(Topology::Single(String::new()))
        },
        portcullis::clock::Clock::system(),
    )
    .await
    .unwrap();
    // Users whose keys land on different masters.
    let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
    for user in users {
        store
            .create_session(record("s1", user), None)
            .await
            .unwrap();
        store
            .create_session(record("s2", user), None)
            .await
            .unwrap();
        assert!(
            store.revoke_session(user, "s1").await.unwrap(),
            "acknowledged by a replica"
        );
    }
    // Acknowledged means a replica has it: no replica holds a revoked session.
    for replica in cluster.replicas() {
        let left = replica.cli(&["--scan", "--pattern", "wait:*:s:s1"]);
        assert!(left.trim().is_empty(), "a replica still holds {left}");
    }

    // Every replica hangs: nothing can be acknowledged, so nothing is reported done.
    let replicas: Vec<u32> = cluster.replicas().iter().filter_map(|r| r.pid()).collect();
    assert_eq!(replicas.len(), 3);
    for pid in &replicas {
        signal(*pid, "STOP");
    }
    let started = Instant::now();
    let refused = store.revoke_session("alice", "s2").await;
    let took = started.elapsed();
    let jti = store
        .deny_jti("https://issuer.test", "jti-x", now() + 60, now())
        .await;
    let user = store.revoke_user("bob", now(), now() + 900).await;
    for pid in &replicas {
        signal(*pid, "CONT");
    }
    eprintln!("unacknowledged revocation refused after {took:?}");
    assert!(
        refused.is_err(),
        "a revocation no replica acknowledged was reported done"
    );
    assert!(jti.is_err() && user.is_err());
}
