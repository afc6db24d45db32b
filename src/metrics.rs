//! Counters and histograms, rendered in the Prometheus text format on the admin listener's
//! `/metrics`.
//!
//! One registry per [`crate::Gateway`], made when it is made and passed down to what counts:
//! several gateways in one process (the test suites) each count their own requests. The hot
//! path only touches atomics: each compiled route holds its own [`RouteCounters`] (taken from
//! the registry by route id when the gateway adopts a runtime, so counts survive a reload), and
//! histograms are fixed arrays of atomic buckets. Refusal reasons are counted under a mutex,
//! on the refusal path only. The session store counts its own operations
//! ([`StoreCounters`]); they are read when the page is rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Status codes counted individually; anything else is counted by class (`2xx`, …).
const STATUSES: [u16; 21] = [
    200, 201, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 405, 413, 429, 431, 502,
    503, 504,
];

/// Requests of one route, by status.
#[derive(Debug)]
pub struct RouteCounters {
    id: Box<str>,
    by_status: [AtomicU64; STATUSES.len()],
    /// Other statuses by class: 1xx … 5xx.
    by_class: [AtomicU64; 5],
}

impl RouteCounters {
    /// Counters of route `id` that belong to no registry yet: what a compiled route holds
    /// until a gateway adopts its runtime ([`Metrics::route`] then hands it the registry's).
    pub fn new(id: &str) -> Self {
        Self {
            id: id.into(),
            by_status: std::array::from_fn(|_| AtomicU64::new(0)),
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one response.
    pub fn record(&self, status: u16) {
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.by_status[i].fetch_add(1, Ordering::Relaxed),
            None => {
                let class = usize::from(status / 100).clamp(1, 5) - 1;
                self.by_class[class].fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// The outcomes a forward-auth decision is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAuthResult {
    /// 2xx: the front proxy forwards.
    Allowed,
    /// No usable credential, or one refused (401, or the login redirect).
    Unauthorized,
    /// Authenticated but not permitted, or no route (403).
    Forbidden,
    /// The sub-request did not describe a request that can be decided (400).
    Invalid,
    /// The peer is not trusted to ask.
    Untrusted,
    /// The store could not answer (503).
    Unavailable,
}

impl ForwardAuthResult {
    /// Every outcome, in the order they are rendered.
    pub const ALL: [ForwardAuthResult; 6] = [
        ForwardAuthResult::Allowed,
        ForwardAuthResult::Unauthorized,
        ForwardAuthResult::Forbidden,
        ForwardAuthResult::Invalid,
        ForwardAuthResult::Untrusted,
        ForwardAuthResult::Unavailable,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            ForwardAuthResult::Allowed => "allowed",
            ForwardAuthResult::Unauthorized => "unauthorized",
            ForwardAuthResult::Forbidden => "forbidden",
            ForwardAuthResult::Invalid => "invalid",
            ForwardAuthResult::Untrusted => "untrusted",
            ForwardAuthResult::Unavailable => "unavailable",
        }
    }
}

/// Decisions of one forward-auth endpoint, by outcome: atomics, so counting an allowed
/// request is one add.
#[derive(Debug)]
pub struct ForwardAuthCounters {
    endpoint: Box<str>,
    by_result: [AtomicU64; ForwardAuthResult::ALL.len()],
}

impl ForwardAuthCounters {
    /// Counters of the endpoint at `path` that belong to no registry yet (what a compiled
    /// endpoint holds until a gateway adopts its runtime).
    pub fn new(path: &str) -> Self {
        Self {
            endpoint: path.into(),
            by_result: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts one decision.
    pub fn record(&self, result: ForwardAuthResult) {
        self.by_result[result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency buckets, in microseconds.
const BUCKETS_US: [u64; 18] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 5_000_000,
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Every metric of one gateway.
#[derive(Debug)]
pub struct Metrics {
    routes: Mutex<BTreeMap<Box<str>, Arc<RouteCounters>>>,
    /// Responses of the auth flow's endpoints (route `(auth)`).
    pub auth_flow: Arc<RouteCounters>,
    /// Responses given before or without a route: 400, 404 (route `(none)`).
    pub unrouted: Arc<RouteCounters>,
    /// Responses of the forward-auth endpoints (route `(forward-auth)`).
    pub forward_auth_responses: Arc<RouteCounters>,
    forward_auth: Mutex<BTreeMap<Box<str>, Arc<ForwardAuthCounters>>>,
    /// Refusals by reason id.
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Steps of sign-ins through OpenID Providers and of back-channel logouts, by event and
    /// reason id (`login.oidc_started`/`oidc.started`, `login.success`/`login.oidc`,
    /// `login.failure`/`oidc.nonce`, `logout.backchannel`/`logout_token.replayed`, …).
    oidc: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Requests that passed authentication and authorization.
    pub allowed: AtomicU64,
    /// Whole requests, from the head being read to the response head being ready.
    pub request_latency: Histogram,
    /// Stage 3, verify (cache hits included).
    pub verify_latency: Histogram,
    /// Stage 4, the session check against the store (local cache hits included).
    pub store_latency: Histogram,
    /// The upstream's time to a response head.
    pub upstream_latency: Histogram,
    /// Verified-token cache hits.
    pub token_cache_hits: AtomicU64,
    /// Verified-token cache misses (a full verification followed, or was shared with a
    /// concurrent miss on the same token).
    pub token_cache_misses: AtomicU64,
    /// Token signature verifications performed, passed or failed: one per first sight of a
    /// token (concurrent first sights share one), none for a cache hit.
    pub token_signature_checks: AtomicU64,
    /// Requests refused from the failed-token cache: a token whose signature check (or the
    /// claims after it) failed within the last 30 s, refused again without a check.
    pub token_cache_failed_hits: AtomicU64,
    /// Client connections closed at accept because their address had
    /// `limits.max_connections_per_ip` open already.
    pub connections_refused_per_ip: AtomicU64,
    /// Identity assertions signed for backends (a cache miss, or one too close to its `exp`).
    pub assertions_minted: AtomicU64,
    /// Identity assertions sent again from the assertion cache, without signing.
    pub assertions_cached: AtomicU64,
    /// Config reloads applied.
    pub reloads_applied: AtomicU64,
    /// Config reloads refused (the old config kept serving).
    pub reloads_refused: AtomicU64,
    /// Fetches of remote key sets (discovery and JWKS), whatever asked and however they ended.
    pub jwks_fetches: AtomicU64,
    /// Fetches of remote key sets that gave no key set (the previous set stayed).
    pub jwks_fetch_failures: AtomicU64,
    /// Fetches asked for by a token with an unknown `kid` (at most one per issuer per
    /// cool-down).
    pub jwks_refetches: AtomicU64,
    /// Unknown-`kid` refetches refused because the issuer's cool-down was running: what a
    /// forged-`kid` flood costs.
    pub jwks_refetches_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut routes = BTreeMap::new();
        let mut named = |id: &str| {
            let counters = Arc::new(RouteCounters::new(id));
            routes.insert(id.into(), Arc::clone(&counters));
            counters
        };
        let auth_flow = named("(auth)");
        let unrouted = named("(none)");
        let forward_auth_responses = named("(forward-auth)");
        Self {
            routes: Mutex::new(routes),
            auth_flow,
            unrouted,
            forward_auth_responses,
            forward_auth: Mutex::default(),
            refusals: Mutex::default(),
            oidc: Mutex::default(),
            allowed: AtomicU64::new(0),
            request_latency: Histogram::default(),
            verify_latency: Histogram::default(),
            store_latency: Histogram::default(),
            upstream_latency: Histogram::default(),
            token_cache_hits: AtomicU64::new(0),
            token_cache_misses: AtomicU64::new(0),
            token_signature_checks: AtomicU64::new(0),
            token_cache_failed_hits: AtomicU64::new(0),
            connections_refused_per_ip: AtomicU64::new(0),
            assertions_minted: AtomicU64::new(0),
            assertions_cached: AtomicU64::new(0),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            jwks_fetch_failures: AtomicU64::new(0),
            jwks_refetches: AtomicU64::new(0),
            jwks_refetches_refused: AtomicU64::new(0),
        }
    }
}

/// What the session store counts of its own work: it holds these (the Redis store and its
/// subscriber share them) and the registry reads them at render time.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Session checks answered from the Redis store's local cache.
    pub cache_hits: AtomicU64,
    /// Session checks that went to Redis.
    pub cache_misses: AtomicU64,
    /// Store operations that failed (timeouts, connection errors).
    pub errors: AtomicU64,
    /// Times this instance found the store's epoch replaced (the store lost its data).
    pub resets_detected: AtomicU64,
    /// Revoking writes that too few replicas acknowledged in time (answered 503).
    pub unreplicated_writes: AtomicU64,
}

impl Metrics {
    /// The counters of route `id`, created on first use and kept across reloads.
    pub fn route(&self, id: &str) -> Arc<RouteCounters> {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            routes
                .entry(id.into())
                .or_insert_with(|| Arc::new(RouteCounters::new(id))),
        )
    }

    /// The decision counters of the forward-auth endpoint at `path`, created on first use and
    /// kept across reloads.
    pub fn forward_auth(&self, path: &str) -> Arc<ForwardAuthCounters> {
        let mut endpoints = self.forward_auth.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(
            endpoints
                .entry(path.into())
                .or_insert_with(|| Arc::new(ForwardAuthCounters::new(path))),
        )
    }

    /// Counts a refusal.
    pub fn refused(&self, reason_id: &'static str) {
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        *refusals.entry(reason_id).or_insert(0) += 1;
    }

    /// Counts a step of an OpenID Provider sign-in or back-channel logout: the audit event's
    /// name and reason id.
    pub fn oidc(&self, event: &'static str, reason_id: &'static str) {
        let mut steps = self.oidc.lock().unwrap_or_else(|p| p.into_inner());
        *steps.entry((event, reason_id)).or_insert(0) += 1;
    }

    /// Renders everything in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str(
            "# HELP portcullis_requests_total Responses by route and status.\n\
             # TYPE portcullis_requests_total counter\n",
        );
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for counters in routes.values() {
            let id = escape_label(&counters.id);
            for (i, status) in STATUSES.iter().enumerate() {
                let n = counters.by_status[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "portcullis_requests_total{{route=\"{id}\",status=\"{status}\"}} {n}"
                    );
                }
            }
            for (i, n) in counters.by_class.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "portcullis_requests_total{{route=\"{id}\",status=\"{}xx\"}} {n}",
                        i + 1
                    );
                }
            }
        }
        drop(routes);
        out.push_str(
            "# HELP portcullis_auth_decisions_total Authentication and authorization decisions by reason id.\n\
             # TYPE portcullis_auth_decisions_total counter\n",
        );
        let _ = writeln!(
            out,
            "portcullis_auth_decisions_total{{reason=\"allowed\"}} {}",
            self.allowed.load(Ordering::Relaxed)
        );
        for (reason, n) in self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "portcullis_auth_decisions_total{{reason=\"{}\"}} {n}",
                escape_label(reason)
            );
        }
        out.push_str(
            "# HELP portcullis_oidc_events_total Steps of sign-ins through OpenID Providers and back-channel logouts, by event and reason id.\n\
             # TYPE portcullis_oidc_events_total counter\n",
        );
        for ((event, reason), n) in self.oidc.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(
                out,
                "portcullis_oidc_events_total{{event=\"{}\",reason=\"{}\"}} {n}",
                escape_label(event),
                escape_label(reason)
            );
        }
        out.push_str(
            "# HELP portcullis_forward_auth_decisions_total Forward-auth decisions by endpoint and result.\n\
             # TYPE portcullis_forward_auth_decisions_total counter\n",
        );
        for counters in self
            .forward_auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let endpoint = escape_label(&counters.endpoint);
            for result in ForwardAuthResult::ALL {
                let n = counters.by_result[result as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "portcullis_forward_auth_decisions_total{{endpoint=\"{endpoint}\",result=\"{}\"}} {n}",
                    result.label()
                );
            }
        }
        self.request_latency.render(
            &mut out,
            "portcullis_request_duration_seconds",
            "Time from request head to response head.",
        );
        self.verify_latency.render(
            &mut out,
            "portcullis_verify_duration_seconds",
            "Token verification, cache hits included.",
        );
        self.store_latency.render(
            &mut out,
            "portcullis_store_check_duration_seconds",
            "Session and revocation check, local cache hits included.",
        );
        self.upstream_latency.render(
            &mut out,
            "portcullis_upstream_duration_seconds",
            "Upstream time to response head.",
        );
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let none = StoreCounters::default();
        let store = gauges.store.unwrap_or(&none);
        let counters: [(&str, &str, u64); 19] = [
            (
                "portcullis_token_cache_hits_total",
                "Verified-token cache hits.",
                load(&self.token_cache_hits),
            ),
            (
                "portcullis_token_cache_misses_total",
                "Verified-token cache misses.",
                load(&self.token_cache_misses),
            ),
            (
                "portcullis_token_signature_checks_total",
                "Token signature verifications performed, passed or failed.",
                load(&self.token_signature_checks),
            ),
            (
                "portcullis_connections_refused_per_ip_total",
                "Connections closed at accept: their client address had max_connections_per_ip open.",
                load(&self.connections_refused_per_ip),
            ),
            (
                "portcullis_token_cache_failed_hits_total",
                "Tokens refused again from the failed-token cache, without a signature check.",
                load(&self.token_cache_failed_hits),
            ),
            (
                "portcullis_store_cache_hits_total",
                "Session checks answered by the local cache over Redis.",
                load(&store.cache_hits),
            ),
            (
                "portcullis_store_cache_misses_total",
                "Session checks that read Redis.",
                load(&store.cache_misses),
            ),
            (
                "portcullis_store_errors_total",
                "Store operations that failed.",
                load(&store.errors),
            ),
            (
                "portcullis_store_resets_detected_total",
                "Times the store's epoch was found replaced: the store lost its data.",
                load(&store.resets_detected),
            ),
            (
                "portcullis_store_unreplicated_writes_total",
                "Revoking writes too few replicas acknowledged in time (refused with 503).",
                load(&store.unreplicated_writes),
            ),
            (
                "portcullis_assertions_minted_total",
                "Identity assertions signed for backends.",
                load(&self.assertions_minted),
            ),
            (
                "portcullis_assertions_cached_total",
                "Identity assertions sent again from the cache, without signing.",
                load(&self.assertions_cached),
            ),
            (
                "portcullis_config_reloads_applied_total",
                "Config reloads applied.",
                load(&self.reloads_applied),
            ),
            (
                "portcullis_config_reloads_refused_total",
                "Config reloads refused; the previous config kept serving.",
                load(&self.reloads_refused),
            ),
            (
                "portcullis_jwks_fetches_total",
                "Fetches of remote issuers' key sets, whatever asked.",
                load(&self.jwks_fetches),
            ),
            (
                "portcullis_jwks_fetch_failures_total",
                "Remote key-set fetches that failed; the previous set stayed.",
                load(&self.jwks_fetch_failures),
            ),
            (
                "portcullis_jwks_refetches_total",
                "Remote key-set fetches asked for by a token with an unknown kid.",
                load(&self.jwks_refetches),
            ),
            (
                "portcullis_jwks_refetches_refused_total",
                "Unknown-kid refetches refused during the issuer's cool-down.",
                load(&self.jwks_refetches_refused),
            ),
            (
                "portcullis_audit_events_dropped_total",
                "Audit events that could not be queued for the audit file.",
                gauges.audit_dropped,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {value}");
        }
        let gauges_list: [(&str, &str, u64); 4] = [
            (
                "portcullis_store_healthy",
                "1 when the store answers and (Redis) invalidations are being received.",
                u64::from(gauges.store_healthy),
            ),
            (
                "portcullis_pubsub_connected",
                "1 while subscribed to the Redis invalidation channel (1 for the memory store).",
                u64::from(gauges.pubsub_connected),
            ),
            (
                "portcullis_config_generation",
                "The config generation: 1 at start, +1 per applied reload.",
                gauges.generation,
            ),
            (
                "portcullis_token_cache_entries",
                "Verified tokens cached.",
                gauges.token_cache_entries,
            ),
        ];
        for (name, help, value) in gauges_list {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// Values read from the gateway at render time.
#[derive(Debug, Default)]
pub struct Gauges<'a> {
    /// The session store's counters (`None`: a store that counts nothing, all zero).
    pub store: Option<&'a StoreCounters>,
    /// Store healthy.
    pub store_healthy: bool,
    /// Subscribed to invalidations.
    pub pubsub_connected: bool,
    /// Config generation.
    pub generation: u64,
    /// Verified tokens cached.
    pub token_cache_entries: u64,
    /// Audit events dropped.
    pub audit_dropped: u64,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_counted_per_route_and_rendered() {
        let m = Metrics::default();
        let r = m.route("docs\"x");
        r.record(200);
        r.record(200);
        r.record(418);
        m.refused("token.expired");
        m.request_latency.observe(Duration::from_micros(30));
        let text = m.render(&Gauges::default());
        assert!(text.contains("portcullis_requests_total{route=\"docs\\\"x\",status=\"200\"} 2"));
        assert!(text.contains("portcullis_requests_total{route=\"docs\\\"x\",status=\"4xx\"} 1"));
        assert!(text.contains("portcullis_auth_decisions_total{reason=\"token.expired\"} 1"));
        assert!(text.contains("portcullis_request_duration_seconds_bucket{le=\"0.00005\"} 1"));
        assert!(text.contains("portcullis_request_duration_seconds_count 1"));
    }
}
