//! Micro-benchmarks of the request path, stage by stage (docs/PERFORMANCE.md has the figures).
//!
//! Everything goes through the public API: the [`Runtime`] is compiled by
//! `Config::from_yaml` from YAML whose key files live in a temporary directory, keys are
//! generated with rcgen and tokens are signed with `jsonwebtoken::crypto::sign`.
//!
//! Groups:
//! - `hot_path`: a request with a token already in the verified-token cache, stage by stage
//!   and all together. Mutate works on a clone of a 12-header browser request, made in
//!   `iter_batched`'s untimed setup; `all_1_to_6_clone_inside` times the clone and the drop
//!   too, and `header_map_clone` times the clone alone, so it can be subtracted.
//!   `forward_auth_decision` is one nginx `auth_request` decision about the same request: the
//!   original request read back and normalized, stages 1–5, and the allowed answer.
//! - `verify_uncached`: first sight of a token (`pipeline::verify::verify_uncached`), per algorithm.
//! - `route_table`: route lookup with 10 and with 10,000 routes, for a path that matches a deep
//!   route and one that falls through to `/`; `router` is `Router::route` alone on a
//!   pre-normalized path, `stage` adds `normalize` and `canonical_host` as the pipeline does.
//! - `token_cache`: a cache hit with 10 and with 100,000 entries, always the same token and
//!   rotating through every cached token.
//!
//! - `discovery_issuer`: a token of an issuer by `jwks_uri` (its JWKS served on loopback and
//!   fetched once, as at start) beside one of an issuer with a key file: a cache hit, and a
//!   first sight (`verify_uncached`).
//!
//! Run: `cargo bench --bench auth_stages -- --warm-up-time 1 --measurement-time 3`

use std::future::Future;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jsonwebtoken::{Algorithm, EncodingKey};
use portcullis::body::GatewayBody;
use portcullis::clock::Clock;
use portcullis::config::{Config, Runtime};
use portcullis::metrics::Metrics;
use portcullis::pipeline::forward_auth;
use portcullis::pipeline::mutate::ForwardFacts;
use portcullis::pipeline::normalize::{NormalizedPath, normalize};
use portcullis::pipeline::route::{Route, canonical_host};
use portcullis::pipeline::trace_context::TraceContext;
use portcullis::pipeline::verify::{TokenCache, VerifiedToken, verify, verify_uncached};
use portcullis::pipeline::{authorize, credential, mutate, session};
use portcullis::store::{MemoryStore, SessionRecord, SessionStore, Store};
use serde_json::{Value, json};
use tempfile::TempDir;

const ISSUER: &str = "https://id.example.com";
const AUDIENCE: &str = "portcullis-bench";
const COOKIE: &str = "__Host-portcullis-at";
const HOST: &str = "app.example.com";
const PATH: &str = "/docs/reports/2026/q3-summary.pdf";

// ---------------------------------------------------------------------------------------------
// Keys and tokens

/// A signing key and the public half the gateway is configured with.
struct Key {
    kid: &'static str,
    alg: Algorithm,
    encoding: EncodingKey,
    /// SPKI PEM, or empty for HS256.
    public_pem: String,
    /// The HS256 secret, or empty.
    secret: Vec<u8>,
}

impl Key {
    fn generate(alg: Algorithm, kid: &'static str) -> Self {
        let sig = match alg {
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            // rcgen generates 2048-bit RSA keys; PS256 signs with the same key type.
            Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::HS256 => {
                let secret: Vec<u8> = (0..48u8)
                    .map(|i| i.wrapping_mul(37).wrapping_add(11))
                    .collect();
                return Self {
                    kid,
                    alg,
                    encoding: EncodingKey::from_secret(&secret),
                    public_pem: String::new(),
                    secret,
                };
            }
            other => panic!("no bench key for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(sig).expect("key generation");
        if matches!(alg, Algorithm::RS256 | Algorithm::PS256) {
            // SPKI of a 2048-bit RSA key is 294 bytes; make sure the figure is for RSA-2048.
            assert_eq!(
                pair.public_key_der().len(),
                294,
                "expected a 2048-bit RSA key"
            );
        }
        let private_pem = pair.serialize_pem();
        let encoding = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
        }
        .expect("encoding key");
        Self {
            kid,
            alg,
            encoding,
            public_pem: pair.public_key_pem(),
            secret: Vec::new(),
        }
    }

    fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
            Algorithm::HS256 => "HS256",
            _ => unreachable!(),
        }
    }

    /// The `keys:` entry for gateway.yaml; writes the key file into `dir`.
    fn yaml_entry(&self, dir: &Path) -> String {
        if self.alg == Algorithm::HS256 {
            let path = dir.join(format!("{}.secret", self.kid));
            std::fs::write(&path, &self.secret).unwrap();
            format!(
                "{{ kid: {}, alg: HS256, secret_file: {} }}",
                self.kid,
                path.display()
            )
        } else {
            let path = dir.join(format!("{}.pub.pem", self.kid));
            std::fs::write(&path, &self.public_pem).unwrap();
            format!(
                "{{ kid: {}, alg: {}, pem: {} }}",
                self.kid,
                self.alg_name(),
                path.display()
            )
        }
    }

    /// A signed access token with realistic claims; `jti` makes it distinct.
    fn token(&self, jti: u64) -> String {
        self.token_of(ISSUER, jti)
    }

    /// The same, of issuer `iss`.
    fn token_of(&self, iss: &str, jti: u64) -> String {
        let now = Clock::system().now();
        let header = json!({ "alg": self.alg_name(), "typ": "at+jwt", "kid": self.kid });
        let claims: Value = json!({
            "iss": iss,
            "aud": AUDIENCE,
            "sub": "user-4f1c2a9e-alice@example.com",
            "sid": "sid-alice",
            "jti": format!("jti-{jti:016x}-{now}"),
            "iat": now - 10,
            // Long enough for the whole bench run; max_lifetime below allows it.
            "exp": now + 6 * 3600,
            "roles": ["editor"],
        });
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.encoding, self.alg).unwrap();
        // The gateway accepts ES256 signatures in low-S form only.
        portcullis::keys::ecdsa::low_s_token(self.alg, format!("{message}.{sig}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// A gateway.yaml with every key of `keys` under one issuer and the given routes.
fn config_yaml(dir: &Path, keys: &[Key], routes: &str) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("      - {}", k.yaml_entry(dir)))
        .collect();
    format!(
        r#"
listeners:
  - bind: 127.0.0.1:0
issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    max_lifetime: 12h
    keys:
{keys}
tokens:
  cookie: {COOKIE}
roles:
  reader: [docs:read]
  editor: [docs:read, docs:write]
  admin: [admin, docs:read, docs:write]
trusted_proxies: [10.0.0.0/8, 192.168.0.0/16]
forward_auth:
  - {{ contract: nginx }}
upstreams:
  app: {{ url: "http://127.0.0.1:9", response_timeout: 5s }}
routes:
{routes}
"#,
        keys = keys.join("\n"),
    )
}

fn compile(yaml: &str, dir: &Path) -> Runtime {
    Config::from_yaml(yaml, dir)
        .unwrap_or_else(|e| panic!("bench config does not compile: {e}"))
        .runtime
}

/// A small, realistic table: the request under test matches `docs-read`.
const HOT_ROUTES: &str = r#"
  - { id: public, path: /public, upstream: app, policy: public }
  - { id: login, path: /login, upstream: app, policy: public }
  - { id: api, host: api.example.com, path: /api, upstream: app, policy: authenticated }
  - { id: docs-read, host: app.example.com, path: /docs, methods: [GET], upstream: app, policy: { all_of: [docs:read] } }
  - { id: docs-write, host: app.example.com, path: /docs, methods: [POST, PUT, DELETE], upstream: app, policy: { all_of: [docs:write] } }
  - { id: admin, path: /admin, upstream: app, policy: { any_of: [admin] } }
  - { id: tenants, host: "*.tenants.example.com", path: /, upstream: app, policy: authenticated }
  - { id: root, path: /, upstream: app, policy: public }
"#;

/// `n` routes (n ≥ 2): a public `/` for any host, `n - 2` fillers in a mix of exact hosts,
/// wildcard hosts, any host, nested paths, method lists and policies, and — last — the deep
/// route the `deep` lookups hit. About a thousand distinct hosts at n = 10,000.
fn table_routes(n: usize) -> String {
    let policies = [
        "public",
        "authenticated",
        "{ all_of: [docs:read] }",
        "{ any_of: [admin, docs:write] }",
    ];
    let mut out = String::from("  - { id: root, path: /, upstream: app, policy: public }\n");
    for i in 0..n - 2 {
        let policy = policies[i % policies.len()];
        let h = i / 10;
        let line = match i % 10 {
            // Exact hosts, one to four segments deep.
            0 => format!("host: svc{h}.example.com, path: /"),
            1 => format!("host: svc{h}.example.com, path: /api/v1/items{i}"),
            2 => format!("host: svc{h}.example.com, path: /api/v2/items{i}/detail"),
            3 => format!("host: svc{h}.example.com, path: /static/r{i}, methods: [GET]"),
            4 => format!(
                "host: svc{h}.example.com, path: /api/v2/items{i}/detail/x, methods: [POST, PUT]"
            ),
            // Any host.
            5 => format!("path: /team{i}"),
            6 => format!("path: /team{i}/projects/p{i}, methods: [GET]"),
            // Wildcard hosts.
            7 => format!("host: \"*.t{h}.example.net\", path: /app{i}"),
            // Siblings of the deep route, on the same host.
            8 => format!("host: shop.example.com, path: /api/v2/orders{i}/items"),
            _ => format!("host: shop.example.com, path: /api/v2/orders/items{i}, methods: [POST]"),
        };
        out.push_str(&format!(
            "  - {{ id: r{i}, {line}, upstream: app, policy: {policy} }}\n"
        ));
    }
    out.push_str(
        "  - { id: deep, host: shop.example.com, path: /api/v2/orders/items, methods: [GET], \
         upstream: app, policy: { all_of: [docs:read] } }\n",
    );
    out
}

// ---------------------------------------------------------------------------------------------
// The hot-path fixture

struct HotPath {
    /// What the stages count into, as a gateway's registry.
    metrics: Metrics,
    _dir: TempDir,
    rt: Runtime,
    store: Store,
    keys: Vec<Key>,
    /// The EdDSA token, already verified into `rt.identify.token_cache`.
    token: String,
    headers: HeaderMap,
    method: Method,
    request_id: HeaderValue,
    peer: IpAddr,
    peer_header: HeaderValue,
}

/// Inputs made per untimed setup batch. Criterion's `SmallInput` makes up to a tenth of a
/// sample's iterations at once — thousands of header maps, megabytes — so the timed routine
/// would read them from DRAM; a request's headers were just parsed and sit in the CPU cache.
/// Sixteen ~1.5 KB maps stay in L1/L2, and two clock reads per batch add a few ns per iteration.
const HOT_BATCH: BatchSize = BatchSize::NumIterations(16);

/// Runs a future that must be immediately ready (the memory store never waits).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the memory store's future was not immediately ready"),
    }
}

/// A browser navigation with the access token in its cookie and some spoofed headers: 12 fields.
fn browser_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: &'static str, value: String| {
        h.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(&value).unwrap(),
        );
    };
    add("host", HOST.into());
    add(
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0".into(),
    );
    add(
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into(),
    );
    add("accept-language", "en-GB,en;q=0.7".into());
    add("accept-encoding", "gzip, deflate, br, zstd".into());
    add("referer", "https://app.example.com/docs/reports".into());
    add(
        "cookie",
        format!("_ga=GA1.2.1311492.1763800000; {COOKIE}={token}; theme=dark"),
    );
    add("sec-fetch-mode", "navigate".into());
    add("sec-fetch-site", "same-origin".into());
    add("connection", "keep-alive".into());
    // Spoofed by the client: stripped by mutate.
    add("x-forwarded-for", "203.0.113.66".into());
    add("x-auth-subject", "admin".into());
    assert_eq!(h.len(), 12);
    h
}

impl HotPath {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = vec![
            Key::generate(Algorithm::EdDSA, "k-ed"),
            Key::generate(Algorithm::ES256, "k-es"),
            Key::generate(Algorithm::RS256, "k-rs"),
            Key::generate(Algorithm::PS256, "k-ps"),
            Key::generate(Algorithm::HS256, "k-hs"),
        ];
        let rt = compile(&config_yaml(dir.path(), &keys, HOT_ROUTES), dir.path());

        // A store with a thousand other users' sessions besides alice's.
        let store = Store::Memory(MemoryStore::new(Clock::system()));
        let now = Clock::system().now();
        for i in 0..=1000 {
            let (id, subject) = if i == 1000 {
                (
                    "sid-alice".to_owned(),
                    "user-4f1c2a9e-alice@example.com".to_owned(),
                )
            } else {
                (format!("sid-{i:08x}"), format!("user-{i}@example.com"))
            };
            ready(store.create_session(
                SessionRecord {
                    id,
                    subject,
                    created_at: now,
                    last_seen: now,
                    ip: "198.51.100.23".into(),
                    user_agent: "bench".into(),
                    absolute_expiry: now + 86_400,
                    idle_expiry: now + 86_400,
                    remember_me: false,
                    provider: None,
                },
                None,
            ))
            .unwrap();
        }

        let token = keys[0].token(0);
        let metrics = Metrics::default();
        // Warm the cache: the hot path is a cache hit.
        verify(
            &token,
            &rt.identify.verifier,
            &rt.identify.token_cache,
            &rt.identify.permissions,
            Clock::system().now(),
            &metrics,
        )
        .unwrap();
        let headers = browser_headers(&token);
        Self {
            metrics,
            _dir: dir,
            rt,
            store,
            keys,
            token,
            headers,
            method: Method::GET,
            request_id: HeaderValue::from_static("a3f0c1d2e4b5968700000000000004d2"),
            peer: "198.51.100.23".parse().unwrap(),
            peer_header: HeaderValue::from_static("198.51.100.23"),
        }
    }

    /// Stage 1 as `pipeline::run` does it: normalize, canonical host, router.
    fn route(&self, path: &str, host: &HeaderValue) -> (&Route, NormalizedPath, Option<String>) {
        let path = normalize(path).unwrap();
        let host = canonical_host(host.to_str().unwrap());
        let route = self
            .rt
            .router
            .route(host.as_deref(), path.segments(), &self.method)
            .unwrap();
        (route, path, host)
    }

    /// Stage 3.
    fn verify(&self, token: &str, now: i64) -> std::sync::Arc<VerifiedToken> {
        let rt = &self.rt;
        verify(
            token,
            &rt.identify.verifier,
            &rt.identify.token_cache,
            &rt.identify.permissions,
            now,
            &self.metrics,
        )
        .unwrap()
    }

    /// Stage 4, polled once.
    fn session(&self, verified: &VerifiedToken, now: i64) {
        ready(session::session(verified, &self.store, now)).unwrap();
    }

    fn facts<'a>(&'a self, host: Option<&'a str>, trace: &'a TraceContext) -> ForwardFacts<'a> {
        ForwardFacts {
            peer: self.peer,
            peer_header: &self.peer_header,
            tls: true,
            host,
            request_id: &self.request_id,
            forward_authorization: false,
            upgrade: false,
            trace,
        }
    }

    /// Stages 1–6 on `headers`, which comes out ready to forward. Not inlined, so that a
    /// profiler can attribute exactly this (`valgrind --toggle-collect=*HotPath*run*`).
    #[inline(never)]
    fn run(&self, mut headers: HeaderMap) -> HeaderMap {
        let host = headers.get(http::header::HOST).unwrap();
        let (route, path, host) = self.route(PATH, host);
        let token = credential::credential(&headers, &self.rt.identify.cookie_name)
            .unwrap()
            .unwrap();
        // The clock is read once per request, as `pipeline::run` does.
        let now = Clock::system().now();
        let verified = self.verify(token, now);
        self.session(&verified, now);
        authorize::authorize(&route.policy, &verified.permissions).unwrap();
        // Decided once per request from the client's headers, as `pipeline::handle` does.
        let trace = TraceContext::of(&headers, false);
        let facts = self.facts(host.as_deref(), &trace);
        mutate::mutate(
            &mut headers,
            Some(mutate::Identity::of(&verified)),
            &self.rt.mutate,
            &facts,
        );
        black_box(path);
        headers
    }
}

impl HotPath {
    /// One forward-auth decision as `proxy::forward_auth` makes it for an nginx sub-request
    /// from a trusted peer: the endpoint, the original request read back and normalized,
    /// route, credential, verify (a cache hit), session, authorize, and the allowed answer
    /// with the identity headers. Not inlined, for the same reason as [`HotPath::run`].
    #[inline(never)]
    fn forward_auth(&self, request: &http::Request<()>) -> http::Response<GatewayBody> {
        let endpoint = self.rt.forward_auth.endpoint(request.uri().path()).unwrap();
        let original = forward_auth::original(request, endpoint, FRONT_PROXY).unwrap();
        let route = self
            .rt
            .router
            .route(
                Some(original.host.as_str()),
                original.path.segments(),
                &original.method,
            )
            .unwrap();
        let token = credential::credential(request.headers(), &self.rt.identify.cookie_name)
            .unwrap()
            .unwrap();
        let now = Clock::system().now();
        let verified = self.verify(token, now);
        self.session(&verified, now);
        authorize::authorize(&route.policy, &verified.permissions).unwrap();
        forward_auth::allowed(
            Some(mutate::Identity::of(&verified)),
            &self.rt.mutate.identity,
        )
    }

    /// The browser request of [`HotPath::run`] as nginx's `auth_request` sends it to the
    /// gateway: the same headers, the original URL and method in `X-Original-*`.
    fn nginx_sub_request(&self) -> http::Request<()> {
        let mut request = http::Request::get("/_portcullis/nginx").body(()).unwrap();
        *request.headers_mut() = self.headers.clone();
        let headers = request.headers_mut();
        headers.insert(
            "x-original-url",
            HeaderValue::from_str(&format!("https://app.example.com{PATH}")).unwrap(),
        );
        headers.insert("x-original-method", HeaderValue::from_static("GET"));
        request
    }
}

/// The front proxy's address in the forward-auth bench (in `trusted_proxies`).
const FRONT_PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));

fn hot_path(c: &mut Criterion) {
    let hp = HotPath::new();
    // The fixture must do what the gateway does, or the figures mean nothing.
    let out = hp.run(hp.headers.clone());
    assert_eq!(out["x-auth-subject"], "user-4f1c2a9e-alice@example.com");
    assert_eq!(out["x-auth-permissions"], "docs:read,docs:write");
    assert_eq!(out["x-forwarded-for"], "198.51.100.23");
    assert_eq!(out["cookie"], "_ga=GA1.2.1311492.1763800000; theme=dark");
    assert!(out.get("connection").is_none() && out.get("host").is_none());
    assert_eq!(
        hp.route(PATH, &hp.headers["host"]).0.id.as_ref(),
        "docs-read"
    );

    let mut g = c.benchmark_group("hot_path");
    let host = hp.headers["host"].clone();
    g.bench_function("1_route", |b| {
        b.iter(|| black_box(hp.route(black_box(PATH), &host).0))
    });
    g.bench_function("2_credential", |b| {
        b.iter(|| {
            credential::credential(black_box(&hp.headers), &hp.rt.identify.cookie_name).unwrap()
        })
    });
    // Includes the one clock read per request.
    g.bench_function("3_verify_cache_hit", |b| {
        b.iter(|| hp.verify(black_box(&hp.token), Clock::system().now()))
    });
    let now = Clock::system().now();
    let verified = hp.verify(&hp.token, now);
    g.bench_function("4_session_memory", |b| {
        b.iter(|| hp.session(black_box(&verified), now))
    });
    let (route, _, canonical) = hp.route(PATH, &host);
    g.bench_function("5_authorize", |b| {
        b.iter(|| authorize::authorize(black_box(&route.policy), black_box(&verified.permissions)))
    });
    let trace = TraceContext::of(&hp.headers, false);
    let facts = hp.facts(canonical.as_deref(), &trace);
    g.bench_function("6_mutate", |b| {
        b.iter_batched(
            || hp.headers.clone(),
            |mut headers| {
                mutate::mutate(
                    &mut headers,
                    Some(mutate::Identity::of(&verified)),
                    &hp.rt.mutate,
                    &facts,
                );
                headers
            },
            HOT_BATCH,
        )
    });
    g.bench_function("all_1_to_6", |b| {
        b.iter_batched(|| hp.headers.clone(), |headers| hp.run(headers), HOT_BATCH)
    });
    // A forward-auth decision about the same request, next to the proxied one above.
    let sub_request = hp.nginx_sub_request();
    let answer = hp.forward_auth(&sub_request);
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(
        answer.headers()["x-auth-subject"],
        "user-4f1c2a9e-alice@example.com"
    );
    g.bench_function("forward_auth_decision", |b| {
        b.iter(|| hp.forward_auth(black_box(&sub_request)))
    });
    // The same with the clone (and the drop) inside the timed loop, where every map is hot in
    // the CPU cache; subtract `header_map_clone` to compare with the figure above.
    g.bench_function("all_1_to_6_clone_inside", |b| {
        b.iter(|| hp.run(black_box(&hp.headers).clone()))
    });
    // Not part of the request path (the request owns its headers).
    g.bench_function("header_map_clone", |b| {
        b.iter(|| black_box(&hp.headers).clone())
    });
    g.finish();

    let mut g = c.benchmark_group("verify_uncached");
    let now = Clock::system().now();
    for key in &hp.keys {
        let token = key.token(1);
        verify_uncached(
            &token,
            &hp.rt.identify.verifier,
            &hp.rt.identify.permissions,
            now,
        )
        .unwrap();
        g.bench_function(key.alg_name(), |b| {
            b.iter(|| {
                verify_uncached(
                    black_box(&token),
                    &hp.rt.identify.verifier,
                    &hp.rt.identify.permissions,
                    now,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Route table size

fn route_table(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let keys = [Key::generate(Algorithm::HS256, "k-hs")];
    let sizes = [10usize, 10_000];
    let tables: Vec<Runtime> = sizes
        .iter()
        .map(|&n| {
            let rt = compile(
                &config_yaml(dir.path(), &keys, &table_routes(n)),
                dir.path(),
            );
            assert_eq!(rt.router.len(), n);
            rt
        })
        .collect();
    let lookups = [
        (
            "deep",
            "shop.example.com",
            "/api/v2/orders/items/8812/history",
            "deep",
        ),
        (
            "fallthrough",
            "www.unknown.org",
            "/nothing/matches/here",
            "root",
        ),
    ];

    let mut g = c.benchmark_group("route_table");
    for (name, host, path, expect) in lookups {
        for (rt, n) in tables.iter().zip(sizes) {
            let normalized = normalize(path).unwrap();
            let found = rt
                .router
                .route(Some(host), normalized.segments(), &Method::GET)
                .unwrap();
            assert_eq!(found.id.as_ref(), expect, "{n} routes, {path}");
            g.bench_function(format!("router/{name}/{n}"), |b| {
                b.iter(|| {
                    rt.router
                        .route(
                            black_box(Some(host)),
                            black_box(&normalized).segments(),
                            &Method::GET,
                        )
                        .unwrap()
                        .upstream
                })
            });
            let host_header = HeaderValue::from_static(host);
            g.bench_function(format!("stage/{name}/{n}"), |b| {
                b.iter(|| {
                    let path = normalize(black_box(path)).unwrap();
                    let host = canonical_host(black_box(&host_header).to_str().unwrap());
                    rt.router
                        .route(host.as_deref(), path.segments(), &Method::GET)
                        .unwrap()
                        .upstream
                })
            });
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Token cache size

fn token_cache(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate(Algorithm::HS256, "k-hs");
    let rt = compile(
        &config_yaml(dir.path(), std::slice::from_ref(&key), HOT_ROUTES),
        dir.path(),
    );
    let now = Clock::system().now();

    let metrics = Metrics::default();
    let mut g = c.benchmark_group("token_cache");
    for n in [10usize, 100_000] {
        // Capacity above n, so that nothing is evicted and every lookup below is a hit.
        let cache = TokenCache::new(2 * n as u64);
        let tokens: Vec<String> = (0..n as u64).map(|i| key.token(i)).collect();
        for t in &tokens {
            verify(
                t,
                &rt.identify.verifier,
                &cache,
                &rt.identify.permissions,
                now,
                &metrics,
            )
            .unwrap();
        }
        assert_eq!(cache.entry_count(), n as u64);
        let hit = |t: &str| {
            verify(
                t,
                &rt.identify.verifier,
                &cache,
                &rt.identify.permissions,
                now,
                &metrics,
            )
            .unwrap()
        };

        let same = &tokens[n / 2];
        g.bench_function(format!("hit_same_token/{n}"), |b| {
            b.iter(|| hit(black_box(same)))
        });
        // A prime stride through all entries, so that consecutive hits touch different parts
        // of the cache. The token is copied in the untimed setup, as a request's token sits in
        // a freshly read buffer: what is timed is the cache's memory, not the token list's.
        let mut i = 0usize;
        g.bench_function(format!("hit_rotating/{n}"), |b| {
            b.iter_batched(
                || {
                    i = (i + 7919) % n;
                    tokens[i].clone()
                },
                |token| hit(&token),
                HOT_BATCH,
            )
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// An issuer by JWKS URI next to one with key files

/// The Ed25519 JWK of `key` (its public key is the last 32 bytes of its SPKI).
fn ed25519_jwk(key: &Key) -> Value {
    let b64: String = key
        .public_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("SPKI PEM");
    json!({ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": key.kid,
            "x": URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]) })
}

/// Serves `body` as JSON to every request on a loopback port, on `rt`, until the process ends.
fn serve_json(rt: &tokio::runtime::Runtime, body: String) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

/// The verify stage for a token of an issuer by `jwks_uri` (its key set fetched once, as at
/// start) next to the same for a token of an issuer with a key file: the cached path must not
/// differ, and a first sight differs by the remote key lookup only.
fn discovery_issuer(c: &mut Criterion) {
    const REMOTE: &str = "https://idp.example.com";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file_key = Key::generate(Algorithm::EdDSA, "k-file");
    let remote_key = Key::generate(Algorithm::EdDSA, "k-remote");
    let jwks = json!({ "keys": [ed25519_jwk(&remote_key)] }).to_string();
    let addr = serve_json(&rt, jwks);
    let yaml = config_yaml(dir.path(), std::slice::from_ref(&file_key), HOT_ROUTES).replacen(
        "tokens:",
        &format!(
            "  - issuer: {REMOTE}\n    audiences: [{AUDIENCE}]\n    max_lifetime: 12h\n    jwks_uri: http://{addr}/jwks\ntokens:"
        ),
        1,
    );
    let runtime = compile(&yaml, dir.path());
    let verifier = &runtime.identify.verifier;
    let metrics = Metrics::default();
    let now = Clock::system().now();
    for remote in verifier.keys.remote() {
        rt.block_on(verifier.keys.fetch(
            remote,
            portcullis::keys::remote::Trigger::Start,
            now,
            &metrics,
        ))
        .expect("the JWKS is served");
    }
    let tokens = [
        ("file_key", file_key.token(1)),
        ("jwks_uri", remote_key.token_of(REMOTE, 1)),
    ];
    let mut g = c.benchmark_group("discovery_issuer");
    for (name, token) in &tokens {
        verify(
            token,
            verifier,
            &runtime.identify.token_cache,
            &runtime.identify.permissions,
            now,
            &metrics,
        )
        .expect("verifies");
        g.bench_function(format!("cache_hit/{name}"), |b| {
            b.iter(|| {
                verify(
                    black_box(token),
                    verifier,
                    &runtime.identify.token_cache,
                    &runtime.identify.permissions,
                    now,
                    &metrics,
                )
                .unwrap()
            })
        });
        g.bench_function(format!("first_sight/{name}"), |b| {
            b.iter(|| {
                verify_uncached(
                    black_box(token),
                    verifier,
                    &runtime.identify.permissions,
                    now,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    hot_path,
    route_table,
    token_cache,
    discovery_issuer
);
criterion_main!(benches);
