//! Revocation propagation and the cost of the session check, measured side by side in one run.
//!
//! `cargo bench --bench revocation` starts its own `redis-server` on a free loopback port
//! (stopped by pid at the end) and two Redis stores on it, standing for two gateway instances:
//!
//! 1. **Propagation**: 1,000 times, instance B caches an "alive" verdict for a session, instance
//!    A revokes the session, and the clock runs until B's local cache no longer holds the
//!    verdict (B reads nothing from Redis meanwhile: this is pub/sub delivery plus eviction).
//! 2. **Per-request store cost** of a cached session: `check` on a verdict B holds, against the
//!    memory store's `check` for the same token, polled once with a no-op waker (both futures
//!    are ready at once).
//! 3. **Memory** per cached verdict and per verified token: resident set before and after
//!    filling each cache with 100,000 entries.
//!
//! Bounded: every wait has a deadline; the run takes well under a minute.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use portcullis::store::{
    MemoryStore, RedisSettings, RedisStore, SessionRecord, SessionStore, TokenRef, Topology,
    Verdict, jti_key,
};

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("expected a future that is ready at once"),
    }
}

fn now() -> i64 {
    portcullis::pipeline::verify::unix_now()
}

struct Redis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record(sid: &str, sub: &str) -> SessionRecord {
    let n = now();
    SessionRecord {
        id: sid.into(),
        subject: sub.into(),
        created_at: n,
        last_seen: n,
        ip: "192.0.2.1".into(),
        user_agent: "bench".into(),
        absolute_expiry: n + 3600,
        idle_expiry: n + 3600,
        remember_me: false,
    }
}

struct Tok {
    token_key: [u8; 32],
    jti_key: [u8; 32],
    sub: String,
    sid: String,
}

impl Tok {
    fn new(i: u64, sub: &str, sid: &str) -> Self {
        let mut token_key = [0u8; 32];
        token_key[..8].copy_from_slice(&i.to_le_bytes());
        Self {
            token_key,
            jti_key: jti_key("https://bench", &format!("j{i}")),
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
            session: Some(&self.sid),
            issued_at: now() - 1,
            require_session: true,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn store(port: u16) -> RedisStore {
    let s = RedisStore::connect(&RedisSettings {
        topology: Topology::Single(format!("redis://127.0.0.1:{port}")),
        key_prefix: "bench".into(),
        timeout: Duration::from_secs(1),
        cache_capacity: 200_000,
        cache_ttl: Duration::from_secs(300),
        password: None,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.cache().is_subscribed() {
        assert!(Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing here takes arguments.
    let redis = Redis::start();
    let a = store(redis.port).await;
    let b = store(redis.port).await;

    // 1. Propagation.
    const N: u64 = 1_000;
    let mut delays = Vec::with_capacity(N as usize);
    let mut missed = 0;
    for i in 0..N {
        let (sub, sid) = (format!("user{i}"), format!("s{i}"));
        a.create_session(record(&sid, &sub), None).await.unwrap();
        let t = Tok::new(i, &sub, &sid);
        assert_eq!(b.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
        assert!(b.cache().alive(&t.token_key).is_some());
        let started = Instant::now();
        a.revoke_session(&sub, &sid).await.unwrap();
        let deadline = started + Duration::from_secs(1);
        loop {
            if b.cache().alive(&t.token_key).is_none() {
                delays.push(started.elapsed());
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    delays.sort();
    println!("revocation propagation A -> B over {N} revocations (loopback, one redis-server):");
    println!(
        "  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  not propagated within 1s: {missed}",
        percentile(&delays, 0.50),
        percentile(&delays, 0.90),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or_default()
    );

    // 2. Per-request store cost of a cached session, side by side with the memory store.
    let memory = MemoryStore::new();
    ready(memory.create_session(record("hot", "alice"), None)).unwrap();
    a.create_session(record("hot", "alice"), None)
        .await
        .unwrap();
    let hot = Tok::new(1_000_000, "alice", "hot");
    assert_eq!(b.check(&hot.r(), now()).await.unwrap(), Verdict::Alive);
    let n = now();
    const ITER: u32 = 1_000_000;
    for (name, cost) in [
        ("redis store, cached verdict", {
            let started = Instant::now();
            for _ in 0..ITER {
                assert_eq!(
                    ready(b.check(std::hint::black_box(&hot.r()), n)).unwrap(),
                    Verdict::Alive
                );
            }
            started.elapsed() / ITER
        }),
        ("memory store", {
            let started = Instant::now();
            for _ in 0..ITER {
                assert_eq!(
                    ready(memory.check(std::hint::black_box(&hot.r()), n)).unwrap(),
                    Verdict::Alive
                );
            }
            started.elapsed() / ITER
        }),
    ] {
        println!("session check, {name}: {cost:?} per request ({ITER} iterations)");
    }

    // 3. Memory per cached verdict.
    const M: u64 = 100_000;
    let cache = portcullis::store::cache::LocalCache::new(200_000, Duration::from_secs(300));
    cache.subscribed();
    let before = rss_kib();
    for i in 0..M {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&i.to_le_bytes());
        cache.remember_alive(
            key,
            portcullis::store::cache::Alive {
                jti_key: key,
                session: Some(format!("{i:022}").into()),
                subject: format!("user-{i}@example.com").into(),
                expires_at: now() + 600,
            },
            cache.sequence(),
        );
    }
    let count = cache.alive_count();
    let after = rss_kib();
    println!(
        "memory per cached verdict: {} bytes ({count} entries, RSS +{} KiB)",
        (after.saturating_sub(before) * 1024) / count.max(1),
        after.saturating_sub(before)
    );

    // 4. Memory per verified token in the token cache (HS256 tokens: cheap to sign in bulk).
    let dir = tempfile::tempdir().unwrap();
    let secret = b"bench-secret-bench-secret-bench-secret-0123";
    std::fs::write(dir.path().join("k.secret"), secret).unwrap();
    let yaml = r#"
listeners: [{ bind: "127.0.0.1:0" }]
issuers:
  - issuer: https://bench
    audiences: [bench]
    keys: [{ kid: k, alg: HS256, secret_file: k.secret }]
roles: { reader: [docs:read] }
upstreams: { echo: { echo: true } }
routes: [{ path: /, upstream: echo, policy: authenticated }]
tokens: { cache_capacity: 200000 }
"#;
    let config = portcullis::config::Config::from_yaml(yaml, dir.path()).unwrap();
    let rt = config.runtime;
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let header = jsonwebtoken::Header {
        kid: Some("k".into()),
        typ: Some("at+jwt".into()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
    };
    let n = now();
    let before = rss_kib();
    for i in 0..M {
        let claims = serde_json::json!({
            "iss": "https://bench", "aud": "bench", "sub": format!("user-{i}@example.com"),
            "sid": format!("{i:022}"), "jti": format!("{i:032x}"), "iat": n, "exp": n + 900,
            "roles": ["reader"],
        });
        let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
        portcullis::pipeline::verify::verify(
            &token,
            &rt.verifier,
            &rt.token_cache,
            &rt.permissions,
            n,
        )
        .unwrap();
    }
    let count = rt.token_cache.entry_count();
    let after = rss_kib();
    println!(
        "memory per cached verified token: {} bytes ({count} entries, RSS +{} KiB)",
        (after.saturating_sub(before) * 1024) / count.max(1),
        after.saturating_sub(before)
    );
}
