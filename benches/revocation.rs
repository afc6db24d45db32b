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
//! 4. **Sessions, 1 → 1,000,000** (issue 6 item 3), each pair side by side in this run: the
//!    memory store's `check` with 1 session and with 1,000,000; the Redis store's check of a
//!    cached verdict with its local cache holding 1 verdict and 1,000,000; and the Redis store's
//!    uncached check (a round trip) against a `redis-server` holding 1 session and one holding
//!    1,000,000 (filled through `RedisStore::create_session`, so in exactly its format). Memory
//!    per session: the memory store's resident-set growth, Redis's `used_memory` growth. While
//!    the memory store fills, another thread checks the sessions created so far; for both series
//!    (issue 10 item 8) it prints the worst calls and how many took 1 ms or more and 5 ms or
//!    more, next to the same checks with nothing writing (what the machine itself adds).
//! 5. **Forged tokens** (issue 6 item 4): the cost of refusing a forged or expired token next to
//!    one first sight of a valid token (EdDSA and RS256), and the hit rate of 1,000 cached valid
//!    tokens after a flood of 100,000 forged ones into a cache of 10,000 entries.
//!
//! 6. **Partition** (issue 10 item 2): instance B reaches Redis through a TCP proxy that freezes
//!    (sockets open, nothing forwarded); A revokes a session B holds cached; the clock runs
//!    until B stops serving the cached verdict — bounded by `store.max_staleness`.
//! 7. **Cluster propagation** (issue 10 item 4): as part 1, over a 3-master Redis Cluster, with
//!    users spread over every master (so most revocations are published on another node than
//!    the one B listens on).
//!
//! Bounded: every wait has a deadline; parts 1–3 take seconds, parts 4 and 5 about a minute
//! (mostly filling the memory store and Redis with a million sessions each).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use portcullis::clock::Clock;
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
    portcullis::clock::Clock::system().now()
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
        provider: None,
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
            user: &self.sub,
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
    store_with(port, 200_000).await
}

async fn store_with(port: u16, cache_capacity: u64) -> RedisStore {
    let s = RedisStore::connect(
        &RedisSettings {
            topology: Topology::Single(format!("redis://127.0.0.1:{port}")),
            key_prefix: "bench".into(),
            timeout: Duration::from_secs(1),
            cache_capacity,
            cache_ttl: Duration::from_secs(300),
            password: None,
            ..RedisSettings::new(Topology::Single(String::new()))
        },
        Clock::system(),
    )
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
    // `cargo bench` passes `--bench`; `cargo bench --bench revocation -- faults` runs parts 6
    // and 7 only.
    if std::env::args().any(|a| a == "faults") {
        faults().await;
        return;
    }
    let redis = Redis::start();
    let a = store(redis.port).await;
    let b = store(redis.port).await;

    // 1. Propagation.
    propagation(&a, &b, 0, "loopback, one redis-server").await;

    // 2. Per-request store cost of a cached session, side by side with the memory store.
    let memory = MemoryStore::new(Clock::system());
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
    let cache = portcullis::store::cache::LocalCache::new(
        200_000,
        Duration::from_secs(300),
        Duration::from_secs(300),
        Clock::system(),
    );
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
                user: format!("user-{i}@example.com").into(),
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
    let metrics = portcullis::metrics::Metrics::default();
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
            &rt.identify.verifier,
            &rt.identify.token_cache,
            &rt.identify.permissions,
            n,
            &metrics,
        )
        .unwrap();
    }
    let count = rt.identify.token_cache.entry_count();
    let after = rss_kib();
    println!(
        "memory per cached verified token: {} bytes ({count} entries, RSS +{} KiB)",
        (after.saturating_sub(before) * 1024) / count.max(1),
        after.saturating_sub(before)
    );

    // Everything above stays allocated until the end, so the resident-set growth measured
    // below is fresh memory, not memory freed by an earlier part and reused.
    let _kept = sessions_scale().await;
    forged_tokens();
    faults().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Sessions, 1 → 1,000,000

const SESSIONS: u64 = 1_000_000;
/// Distinct sessions (or verdicts) a rotating lookup cycles through: a working set far larger
/// than the CPU caches, as many users' requests make it.
const SAMPLE: u64 = 100_000;

fn sid(i: u64) -> String {
    // 22 characters, the length of a 128-bit base64url session id.
    format!("{i:022}")
}

fn sub(i: u64) -> String {
    format!("user-{i}@example.com")
}

/// The `k`-th of `SAMPLE` distinct session indices spread over `0..SESSIONS` (multiplying by a
/// number coprime to `SESSIONS` permutes it).
fn spread(k: u64) -> u64 {
    (k * 2_654_435_761) % SESSIONS
}

/// Mean time of `f` over `iter` calls, `f` given the call's index.
fn per_call(iter: u64, mut f: impl FnMut(u64)) -> Duration {
    let started = Instant::now();
    for i in 0..iter {
        f(i);
    }
    started.elapsed() / iter as u32
}

/// Redis's own count of the bytes it has allocated.
async fn used_memory(port: u16) -> u64 {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

fn ns(d: Duration) -> String {
    format!("{} ns", d.as_nanos())
}

fn ratio(big: Duration, one: Duration) -> f64 {
    big.as_secs_f64() / one.as_secs_f64()
}

/// Prints one side-by-side line: each measure's two runs, and its ratio to the first measure.
fn side_by_side(what: &str, measures: &[(&str, [Duration; 2])]) {
    let base = measures[0].1[0] + measures[0].1[1];
    let parts: Vec<String> = measures
        .iter()
        .map(|(name, [a, b])| {
            format!(
                "{name} {} / {} (x{:.2})",
                ns(*a),
                ns(*b),
                ratio(*a + *b, base)
            )
        })
        .collect();
    println!("  {what}: {}", parts.join("; "));
}

/// Runs part 4 and returns everything it allocated, for `main` to keep until the end.
/// A store's `check` on a store holding one session and on one holding many: one token again
/// and again (`one` vs `big`), and rotating over the sample (`mid`, which holds exactly the
/// sample, vs `big`). Two alternating runs of each, as `[small, big][run]`.
type OneVsMany = ([[Duration; 2]; 2], [[Duration; 2]; 2]);

fn one_vs_many<S: SessionStore>(
    [one, mid, big]: [&S; 3],
    hot: &TokenRef<'_>,
    rotating: &[TokenRef<'_>],
    iter: u64,
    n: i64,
) -> OneVsMany {
    let check = |store: &S, t: &TokenRef<'_>| {
        assert_eq!(
            ready(store.check(std::hint::black_box(t), n)).unwrap(),
            Verdict::Alive
        );
    };
    let at = |i: u64| &rotating[(i % rotating.len() as u64) as usize];
    let mut same = [[Duration::ZERO; 2]; 2];
    let mut spread_out = [[Duration::ZERO; 2]; 2];
    for run in 0..2 {
        same[0][run] = per_call(iter, |_| check(one, hot));
        same[1][run] = per_call(iter, |_| check(big, hot));
        spread_out[0][run] = per_call(iter, |i| check(mid, at(i)));
        spread_out[1][run] = per_call(iter, |i| check(big, at(i)));
    }
    (same, spread_out)
}

/// Latencies of a series of calls: how many, their mean, the slowest three, and how many took
/// 1 ms or more and 5 ms or more (a call that long is a request held up that long).
#[derive(Default)]
struct Calls {
    count: u64,
    total: Duration,
    /// (duration, index of the call), slowest first.
    slowest: Vec<(Duration, u64)>,
    over_1ms: (u64, Duration),
    over_5ms: u64,
}

impl Calls {
    fn add(&mut self, took: Duration, at: u64) {
        self.count += 1;
        self.total += took;
        if took >= Duration::from_millis(1) {
            self.over_1ms.0 += 1;
            self.over_1ms.1 += took;
        }
        if took >= Duration::from_millis(5) {
            self.over_5ms += 1;
        }
        if self.slowest.len() < 3 || took > self.slowest[2].0 {
            self.slowest.push((took, at));
            self.slowest
                .sort_by_key(|&(took, _)| std::cmp::Reverse(took));
            self.slowest.truncate(3);
        }
    }

    fn summary(&self) -> String {
        let slowest: Vec<String> = self
            .slowest
            .iter()
            .map(|(d, i)| format!("#{i} {d:.1?}"))
            .collect();
        format!(
            "{} calls, mean {:.1?}; worst {}; {} took 1 ms or more ({:.1?} each), {} took 5 ms \
             or more",
            self.count,
            self.total / self.count.max(1) as u32,
            slowest.join(", "),
            self.over_1ms.0,
            self.over_1ms.1 / self.over_1ms.0.max(1) as u32,
            self.over_5ms
        )
    }
}

/// Checks, one after another, sessions `0..upto` (read before each call: a fill moves it) in a
/// scattered order, until `stop(calls made)`; times each `check` alone.
fn checks(store: &MemoryStore, upto: &AtomicU64, stop: impl Fn(u64) -> bool, n: i64) -> Calls {
    let mut calls = Calls::default();
    let mut k = 0u64;
    while !stop(k) {
        let upto = upto.load(Ordering::Acquire);
        if upto == 0 {
            std::thread::yield_now();
            continue;
        }
        let i = k.wrapping_mul(2_654_435_761) % upto;
        let tok = Tok::new(i, &sub(i), &sid(i));
        let r = tok.r();
        let t = Instant::now();
        let verdict = ready(store.check(&r, n)).unwrap();
        calls.add(t.elapsed(), k);
        assert_eq!(verdict, Verdict::Alive);
        k += 1;
    }
    calls
}

/// What [`fill_while_checking`] measured.
struct Fill {
    time: Duration,
    writes: Calls,
    /// The mean of the writes under 1 ms over the last 100,000: the cost of a write that
    /// neither sweeps nor grows a map.
    plain: Duration,
    checks: Calls,
}

/// Creates sessions `0..SESSIONS` one by one, as logins create them, while another thread
/// checks the sessions created so far, as requests do meanwhile: a call that holds a lock long
/// (a sweep, a map growing) shows up in both series. Calls are told apart by what they took,
/// not by their position: the store decides when it sweeps and when a map grows.
fn fill_while_checking(store: &MemoryStore, n: i64) -> Fill {
    let filled = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let checker = scope.spawn(|| checks(store, &filled, |_| done.load(Ordering::Acquire), n));
        let mut writes = Calls::default();
        let mut plain = (Duration::ZERO, 0u32);
        let started = Instant::now();
        for i in 0..SESSIONS {
            let record = record(&sid(i), &sub(i));
            let t = Instant::now();
            ready(store.create_session(record, None)).unwrap();
            let took = t.elapsed();
            writes.add(took, i);
            if took < Duration::from_millis(1) && i >= SESSIONS - 100_000 {
                plain.0 += took;
                plain.1 += 1;
            }
            filled.store(i + 1, Ordering::Release);
        }
        let time = started.elapsed();
        done.store(true, Ordering::Release);
        Fill {
            time,
            writes,
            plain: plain.0 / plain.1.max(1),
            checks: checker.join().unwrap(),
        }
    })
}

async fn sessions_scale() -> Vec<Box<dyn std::any::Any>> {
    let mut kept: Vec<Box<dyn std::any::Any>> = Vec::new();
    println!();
    println!(
        "sessions, 1 -> {SESSIONS} (per-call means, each measured twice, alternating: run a / run \
         b; xN = ratio to the first measure)"
    );
    const ITER: u64 = 1_000_000;
    let n = now();
    let hot_tok = Tok::new(0, &sub(0), &sid(0));
    let hot = hot_tok.r();
    // The same sessions, by the same tokens, for every rotating lookup below.
    let sample: Vec<Tok> = (0..SAMPLE)
        .map(|k| Tok::new(spread(k), &sub(spread(k)), &sid(spread(k))))
        .collect();
    let rotating: Vec<TokenRef<'_>> = sample.iter().map(Tok::r).collect();

    // 4a. The memory store. Sessions are created one by one, as logins create them.
    let one = MemoryStore::new(Clock::system());
    ready(one.create_session(record(&sid(0), &sub(0)), None)).unwrap();
    let mid = MemoryStore::new(Clock::system());
    for t in &sample {
        ready(mid.create_session(record(&t.sid, &t.sub), None)).unwrap();
    }
    let big = MemoryStore::new(Clock::system());
    let before = rss_kib();
    let filled = fill_while_checking(&big, n);
    let grown = rss_kib().saturating_sub(before);
    println!(
        "  memory store fill: {SESSIONS} create_session calls in {:.1?} ({:.1?} each); calls \
         under 1 ms over the last 100,000: {:.1?} each; RSS +{} MiB = {} bytes per session",
        filled.time,
        filled.time / SESSIONS as u32,
        filled.plain,
        grown / 1024,
        grown * 1024 / SESSIONS
    );
    println!(
        "    create_session during the fill: {}",
        filled.writes.summary()
    );
    println!(
        "    check during the fill (another thread, sessions created so far): {}",
        filled.checks.summary()
    );
    // The same checks with nothing writing: what the machine alone (other processes, the
    // scheduler) puts into the series above.
    let count = filled.checks.count.max(1);
    let full = AtomicU64::new(SESSIONS);
    let alone = checks(&big, &full, |k| k >= count, n);
    println!(
        "    check after the fill, nothing writing (the machine's own stalls): {}",
        alone.summary()
    );
    // How the shard count was chosen: the same fill into stores of other counts, each dropped
    // before the next. One shard is the store as it was before it was sharded (one lock).
    for shards in [1, 16, 64, 128] {
        let store = MemoryStore::with_shards(shards, Clock::system());
        let filled = fill_while_checking(&store, n);
        println!(
            "    {shards} shard(s): fill {:.1?}; create_session: {}; check: {}",
            filled.time,
            filled.writes.summary(),
            filled.checks.summary()
        );
    }
    let (same, spread_out) = one_vs_many([&one, &mid, &big], &hot, &rotating, ITER, n);
    side_by_side(
        "memory store check, one session again and again",
        &[
            ("store of 1 session", same[0]),
            ("store of 1,000,000", same[1]),
        ],
    );
    side_by_side(
        &format!("memory store check, rotating over {SAMPLE} sessions"),
        &[
            ("store of exactly those", spread_out[0]),
            ("store of 1,000,000", spread_out[1]),
        ],
    );
    // Kept until the end: see `main`.
    kept.extend([Box::new(one), Box::new(mid), Box::new(big)] as [Box<dyn std::any::Any>; 3]);

    // 4b. The Redis store's cached-verdict check: a local cache holding 1 verdict, the 100,000
    // of the sample, and 1,000,000. The default `store.cache_capacity` is 100,000; these stores
    // hold 1,100,000 so that nothing is evicted. Verdicts are put in the way a read-through puts
    // them (`remember_alive`), without a million round trips.
    let redis_small = Redis::start();
    let redis_big = Redis::start();
    let capacity = SESSIONS + SESSIONS / 10;
    let one = store_with(redis_small.port, capacity).await;
    let mid = store_with(redis_small.port, capacity).await;
    let big = store_with(redis_big.port, capacity).await;
    let remember = |store: &RedisStore, t: &Tok| {
        let alive = portcullis::store::cache::Alive {
            jti_key: t.jti_key,
            session: Some(t.sid.as_str().into()),
            subject: t.sub.as_str().into(),
            user: t.sub.as_str().into(),
            expires_at: n + 3600,
        };
        store
            .cache()
            .remember_alive(t.token_key, alive, store.cache().sequence());
    };
    remember(&one, &hot_tok);
    for t in &sample {
        remember(&mid, t);
    }
    let before = rss_kib();
    for i in 0..SESSIONS {
        remember(&big, &Tok::new(i, &sub(i), &sid(i)));
    }
    let count = big.cache().alive_count();
    let grown = rss_kib().saturating_sub(before);
    assert!(count >= SESSIONS * 99 / 100, "only {count} verdicts cached");
    println!(
        "  redis store local cache: {count} verdicts, RSS +{} MiB = {} bytes per cached verdict",
        grown / 1024,
        grown * 1024 / count
    );
    let (same, spread_out) = one_vs_many([&one, &mid, &big], &hot, &rotating, ITER, n);
    side_by_side(
        "redis store check of a cached verdict, one token again and again",
        &[("1 verdict cached", same[0]), ("1,000,000 cached", same[1])],
    );
    side_by_side(
        &format!("redis store check of a cached verdict, rotating over {SAMPLE} tokens"),
        &[
            ("exactly those cached", spread_out[0]),
            ("1,000,000 cached", spread_out[1]),
        ],
    );
    kept.extend([Box::new(one), Box::new(mid), Box::new(big)] as [Box<dyn std::any::Any>; 3]);

    // 4c. The Redis store's uncached check: one round trip (EXISTS on the jti key, and
    // GET + HMGET pipelined, concurrently), against a server holding 1 session and one holding
    // 1,000,000. Every check is of a token this store has not seen, so none is a cache hit.
    let one = store(redis_small.port).await;
    let big = store(redis_big.port).await;
    one.create_session(record(&sid(0), &sub(0)), None)
        .await
        .unwrap();
    let before = used_memory(redis_big.port).await;
    let started = Instant::now();
    {
        use futures_util::StreamExt as _;
        let big = &big;
        let mut created = futures_util::stream::iter(0..SESSIONS)
            .map(|i| async move { big.create_session(record(&sid(i), &sub(i)), None).await })
            .buffer_unordered(256);
        while let Some(result) = created.next().await {
            result.unwrap();
        }
    }
    let fill = started.elapsed();
    let grown = used_memory(redis_big.port).await.saturating_sub(before);
    println!(
        "  redis-server: {SESSIONS} sessions created in {fill:.1?} (create_session, 256 in \
         flight); used_memory +{} MiB = {} bytes per session (its hash and its user's set)",
        grown / (1 << 20),
        grown / SESSIONS
    );
    const ROUND_TRIPS: u64 = 2_500;
    const BLOCK: u64 = 250;
    // Distinct token keys, so never a cached verdict: (store, tokens) per series.
    let fresh = |base: u64, session: &dyn Fn(u64) -> u64| -> Vec<Tok> {
        (0..2 * ROUND_TRIPS)
            .map(|k| Tok::new(base + k, &sub(session(k)), &sid(session(k))))
            .collect()
    };
    let series = [
        ("1 session", &one, fresh(20_000_000, &|_| 0)),
        (
            "1,000,000, always session 0",
            &big,
            fresh(30_000_000, &|_| 0),
        ),
        ("1,000,000, rotating", &big, fresh(40_000_000, &spread)),
    ];
    let mut times: Vec<[Vec<Duration>; 2]> = series.iter().map(|_| Default::default()).collect();
    for run in 0..2 {
        for block in 0..ROUND_TRIPS / BLOCK {
            for (s, (_, store, toks)) in series.iter().enumerate() {
                for k in 0..BLOCK {
                    let t = &toks[(run as u64 * ROUND_TRIPS + block * BLOCK + k) as usize];
                    let started = Instant::now();
                    assert_eq!(store.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
                    times[s][run].push(started.elapsed());
                }
            }
        }
    }
    let mut parts = Vec::new();
    let mut base = Duration::ZERO;
    for (s, (name, _, _)) in series.iter().enumerate() {
        let mut stats = Vec::new();
        let mut total = Duration::ZERO;
        for run in &mut times[s] {
            run.sort();
            let mean = run.iter().sum::<Duration>() / run.len() as u32;
            // The ratio is of medians: on a shared machine a few slow round trips move the mean.
            total += percentile(run, 0.5);
            stats.push(format!(
                "{mean:.1?} {:.1?} {:.1?}",
                percentile(run, 0.5),
                percentile(run, 0.99)
            ));
        }
        if s == 0 {
            base = total;
        }
        parts.push(format!(
            "{name}: {} (x{:.2} on the median)",
            stats.join(" / "),
            ratio(total, base)
        ));
    }
    println!(
        "  redis store check, uncached (one round trip), {ROUND_TRIPS} per run, mean p50 p99: {}",
        parts.join("; ")
    );
    // The servers last: they are stopped (by pid) when `main` drops what it kept.
    kept.extend([
        Box::new(one),
        Box::new(big),
        Box::new(redis_small),
        Box::new(redis_big),
    ] as [Box<dyn std::any::Any>; 4]);
    kept
}

// ---------------------------------------------------------------------------------------------
// 5. Forged tokens

fn forged_tokens() {
    use jsonwebtoken::Algorithm;
    use portcullis::keys::signing::SigningKey;
    use portcullis::pipeline::verify::{TokenError, verify, verify_uncached};
    use std::sync::atomic::Ordering;

    println!();
    println!("forged tokens");
    let dir = tempfile::tempdir().unwrap();
    let (ed, _) = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let (rs, _) = SigningKey::generate(Algorithm::RS256).unwrap();
    std::fs::write(dir.path().join("ed.pem"), ed.public_key_pem()).unwrap();
    std::fs::write(dir.path().join("rs.pem"), rs.public_key_pem()).unwrap();
    let yaml = format!(
        r#"
listeners: [{{ bind: "127.0.0.1:0" }}]
issuers:
  - issuer: https://bench
    audiences: [bench]
    keys:
      - {{ kid: "{}", alg: EdDSA, pem: ed.pem }}
      - {{ kid: "{}", alg: RS256, pem: rs.pem }}
roles: {{ reader: [docs:read] }}
upstreams: {{ echo: {{ echo: true }} }}
routes: [{{ path: /, upstream: echo, policy: authenticated }}]
tokens: {{ cache_capacity: 10000 }}
"#,
        ed.kid(),
        rs.kid()
    );
    let runtime = || {
        portcullis::config::Config::from_yaml(&yaml, dir.path())
            .unwrap()
            .runtime
    };
    let n = now();
    let claims = |i: u64, exp: i64| {
        serde_json::json!({
            "iss": "https://bench", "aud": "bench", "sub": format!("user-{i}@example.com"),
            "sid": format!("{i:022}"), "jti": format!("{i:032x}"), "iat": exp - 900, "exp": exp,
            "roles": ["reader"],
        })
    };
    // Distinct tokens under the key's header whose signature is a real one of that key, made for
    // other claims: well-formed, and refused only by the signature check.
    let forge = |key: &SigningKey, range: std::ops::Range<u64>| -> Vec<String> {
        use base64::Engine as _;
        let donor = key.sign(&claims(u64::MAX, n + 900)).unwrap();
        let (header, rest) = donor.split_once('.').unwrap();
        let signature = rest.rsplit('.').next().unwrap();
        range
            .map(|i| {
                let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(claims(i, n + 900).to_string());
                format!("{header}.{payload}.{signature}")
            })
            .collect()
    };
    let metrics = portcullis::metrics::Metrics::default();
    let checks = || metrics.token_signature_checks.load(Ordering::Relaxed);
    let hits = || metrics.token_cache_hits.load(Ordering::Relaxed);

    // 5a. Cost per refused token, next to a valid token's first sight, in alternating blocks:
    // 10 times, 500 first sights of valid tokens (`verify_uncached`, which caches nothing, so
    // the same 500 serve every block), 2,000 distinct forged tokens and 500 expired ones
    // (never cached either) through `verify`.
    const BLOCKS: usize = 10;
    const VALID_BLOCK: usize = 500;
    const FORGED_BLOCK: usize = 2_000;
    let rt = runtime();
    for (name, key) in [("EdDSA", &ed), ("RS256", &rs)] {
        let valid: Vec<String> = (0..VALID_BLOCK as u64)
            .map(|i| key.sign(&claims(i, n + 900)).unwrap())
            .collect();
        let expired: Vec<String> = (0..VALID_BLOCK as u64)
            .map(|i| key.sign(&claims(i, n - 60)).unwrap())
            .collect();
        let forged = forge(key, 0..(BLOCKS * FORGED_BLOCK) as u64);
        let entries = rt.identify.token_cache.entry_count();
        let (mut first_sight, mut forged_time, mut expired_time) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let (mut forged_checks, mut expired_checks) = (0, 0);
        for block in 0..BLOCKS {
            let started = Instant::now();
            for token in &valid {
                verify_uncached(token, &rt.identify.verifier, &rt.identify.permissions, n).unwrap();
            }
            first_sight += started.elapsed();
            let before = checks();
            let started = Instant::now();
            for token in &forged[block * FORGED_BLOCK..(block + 1) * FORGED_BLOCK] {
                let refused = verify(
                    token,
                    &rt.identify.verifier,
                    &rt.identify.token_cache,
                    &rt.identify.permissions,
                    n,
                    &metrics,
                );
                assert_eq!(refused.unwrap_err(), TokenError::BadSignature);
            }
            forged_time += started.elapsed();
            forged_checks += checks() - before;
            let before = checks();
            let started = Instant::now();
            for token in &expired {
                let refused = verify(
                    token,
                    &rt.identify.verifier,
                    &rt.identify.token_cache,
                    &rt.identify.permissions,
                    n,
                    &metrics,
                );
                assert_eq!(refused.unwrap_err(), TokenError::Expired);
            }
            expired_time += started.elapsed();
            expired_checks += checks() - before;
        }
        let first_sight = first_sight / (BLOCKS * VALID_BLOCK) as u32;
        let forged_cost = forged_time / (BLOCKS * FORGED_BLOCK) as u32;
        let expired_cost = expired_time / (BLOCKS * VALID_BLOCK) as u32;
        println!(
            "  {name}: valid token, first sight (verify_uncached) {first_sight:.1?}; forged \
             (bad signature) {forged_cost:.1?} = x{:.2}, {forged_checks} signature checks for \
             {} tokens; expired (valid signature) {expired_cost:.1?} = x{:.2}, {expired_checks} \
             checks for {}; token cache entries {entries} -> {}",
            ratio(forged_cost, first_sight),
            BLOCKS * FORGED_BLOCK,
            ratio(expired_cost, first_sight),
            BLOCKS * VALID_BLOCK,
            rt.identify.token_cache.entry_count()
        );
    }
    drop(rt);

    // 5b. 1,000 valid tokens cached, then 100,000 forged ones, then the 1,000 again.
    const VALID: u64 = 1_000;
    const FLOOD: u64 = 100_000;
    let rt = runtime();
    let valid: Vec<String> = (0..VALID)
        .map(|i| ed.sign(&claims(1_000_000 + i, n + 900)).unwrap())
        .collect();
    let flood = forge(&ed, 2_000_000..2_000_000 + FLOOD);
    for token in &valid {
        verify(
            token,
            &rt.identify.verifier,
            &rt.identify.token_cache,
            &rt.identify.permissions,
            n,
            &metrics,
        )
        .unwrap();
    }
    let entries_before = rt.identify.token_cache.entry_count();
    let rss_before = rss_kib();
    let started = Instant::now();
    for token in &flood {
        let refused = verify(
            token,
            &rt.identify.verifier,
            &rt.identify.token_cache,
            &rt.identify.permissions,
            n,
            &metrics,
        );
        assert_eq!(refused.unwrap_err(), TokenError::BadSignature);
    }
    let flood_time = started.elapsed();
    let rss_after = rss_kib();
    let entries_after = rt.identify.token_cache.entry_count();
    let (hits_before, checks_before) = (hits(), checks());
    for token in &valid {
        verify(
            token,
            &rt.identify.verifier,
            &rt.identify.token_cache,
            &rt.identify.permissions,
            n,
            &metrics,
        )
        .unwrap();
    }
    let hit = hits() - hits_before;
    println!(
        "  flood of {FLOOD} forged EdDSA tokens into a cache of 10,000 holding {VALID} valid \
         ones: {flood_time:.1?} ({:.1?} each); entries {entries_before} -> {entries_after}; \
         RSS {rss_before} -> {rss_after} KiB; then the {VALID} valid tokens: {hit} hits \
         ({:.1} %), {} signature checks",
        flood_time / FLOOD as u32,
        hit as f64 * 100.0 / VALID as f64,
        checks() - checks_before
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Partition, 7. Cluster propagation

async fn faults() {
    // 6. A frozen link between B and Redis: how long B keeps serving a revoked verdict.
    let redis = Redis::start();
    let proxy = common::FreezingProxy::start(redis.port).await;
    let a = store(redis.port).await;
    let b = store(proxy.port).await;
    const TRIALS: u64 = 30;
    let mut stale = Vec::with_capacity(TRIALS as usize);
    for i in 0..TRIALS {
        let (sub, sid) = (format!("frozen{i}"), format!("f{i}"));
        a.create_session(record(&sid, &sub), None).await.unwrap();
        let t = Tok::new(2_000_000 + i, &sub, &sid);
        // Fresh again after the previous trial's thaw.
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.check(&t.r(), now()).await.ok() != Some(Verdict::Alive)
            || b.cache().alive(&t.token_key, now()).is_none()
        {
            assert!(Instant::now() < deadline, "B never recovered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.freeze();
        let started = Instant::now();
        a.revoke_session(&sub, &sid).await.unwrap();
        let deadline = started + Duration::from_secs(5);
        while b.cache().alive(&t.token_key, now()).is_some() {
            assert!(
                Instant::now() < deadline,
                "B served a revoked verdict for 5 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        stale.push(started.elapsed());
        proxy.thaw();
    }
    stale.sort();
    println!(
        "revocation under a frozen link to B ({TRIALS} trials, store.max_staleness {:?}): \
         B stopped serving the cached verdict after p50 {:?}  p99 {:?}  max {:?}",
        portcullis::store::redis::DEFAULT_MAX_STALENESS,
        percentile(&stale, 0.50),
        percentile(&stale, 0.99),
        stale.last().copied().unwrap_or_default()
    );
    drop((a, b, proxy, redis));

    // 7. Cluster: propagation across nodes.
    let cluster = common::RedisCluster::start(3);
    let cluster_store = || async {
        let s = RedisStore::connect(
            &RedisSettings {
                key_prefix: "bench".into(),
                timeout: Duration::from_secs(1),
                cache_capacity: 200_000,
                cache_ttl: Duration::from_secs(300),
                first_start: true,
                ..RedisSettings::new(Topology::Cluster(cluster.urls()))
            },
            Clock::system(),
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.cache().is_subscribed() {
            assert!(Instant::now() < deadline, "never subscribed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        s
    };
    let (a, b) = (cluster_store().await, cluster_store().await);
    propagation(&a, &b, 3_000_000, "a 3-master Redis Cluster").await;
}

/// Parts 1 and 7: 1,000 times, B caches an "alive" verdict, A revokes the session, and the
/// clock runs until B's cache no longer holds it. `first` keeps token ids apart between runs.
async fn propagation(a: &RedisStore, b: &RedisStore, first: u64, over: &str) {
    const N: u64 = 1_000;
    let mut delays = Vec::with_capacity(N as usize);
    let mut missed = 0;
    for i in first..first + N {
        let (sub, sid) = (format!("user{i}"), format!("s{i}"));
        a.create_session(record(&sid, &sub), None).await.unwrap();
        let t = Tok::new(i, &sub, &sid);
        assert_eq!(b.check(&t.r(), now()).await.unwrap(), Verdict::Alive);
        assert!(b.cache().alive(&t.token_key, now()).is_some());
        let started = Instant::now();
        a.revoke_session(&sub, &sid).await.unwrap();
        let deadline = started + Duration::from_secs(1);
        loop {
            if b.cache().alive(&t.token_key, now()).is_none() {
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
    println!("revocation propagation A -> B over {N} revocations ({over}):");
    println!(
        "  p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  not propagated within 1s: {missed}",
        percentile(&delays, 0.50),
        percentile(&delays, 0.90),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or_default()
    );
}
