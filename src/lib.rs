//! # Portcullis
//!
//! A reverse-proxy authentication gateway. It stands in front of backends that know nothing
//! about tokens: it terminates TLS, authenticates every request from an access token (HttpOnly
//! cookie or `Authorization: Bearer`), checks that the token's session is still alive, enforces
//! the permissions `gateway.yaml` sets for the route, and forwards the request with verified
//! identity headers.
//!
//! The request path, written once in [`proxy`] (each stage is one call; the first refusal ends
//! the request) and drawn once, here:
//!
//! ```text
//! client ─TLS─▶ listener (server) ─▶ proxy::handle
//!   0 framing     refuse ambiguous Content-Length / Transfer-Encoding, CONNECT    (400, 405)
//!   1 route       a forward-auth endpoint → the same 2–5 on the request it describes,
//!                 answered with the decision (proxy::forward_auth);
//!                 normalize the path; /auth/* and the JWKS → auth_flow;
//!                 else host + path + method → Route                              (400, 404, 405)
//!   2–4 identify  credential: cookie or bearer → token; absent ≠ invalid          (401, 400)
//!                 verify: kid → pinned key → signature → typ/crit/claims          (401)
//!                 session: jti denylist, live session, user not revoked since iat (401, 503)
//!                 grant: own tokens' user exists and is enabled, roles as now     (401)
//!   5 authorize   the route's policy against the identity's permissions           (403)
//!     body limit  a declared Content-Length over the route's max_body             (413)
//!   6 mutate      strip client identity/forwarding headers and the gateway's cookies;
//!                 inject the verified identity and a traceparent (the trusted caller's
//!                 trace continued, else a new one; always the gateway's own span id)
//!   7 forward     pooled upstream client, streamed bodies, upgrades               (502, 504)
//!   6' protect    the response: no Set-Cookie for the gateway's cookies, no Clear-Site-Data
//!   finish        refusal → error::error_response (401 + WWW-Authenticate or a login
//!                 redirect, 403, 413, 502, 503, 504); metrics; one audit event
//!                 (access.granted / forbidden / unauthorized); the log line
//! ```
//!
//! Public routes skip 2–5 but still go through 6, so spoofed identity headers are stripped
//! there too. Only a well-formed WebSocket handshake on a route with `websocket: true` keeps
//! its `Upgrade`; every other `Upgrade` (`h2c` above all) is removed in 6 and forward refuses
//! a `101` to anything but that handshake (docs/security.md 34). The auth flow's endpoints
//! that need a signed-in user ask the same [`pipeline::identify`] as the proxy.
//!
//! Where to look: who a request is and what it may do is decided in [`pipeline::identify`]
//! (the token in [`pipeline::verify`], the session in [`pipeline::session`] over a
//! [`store::SessionStore`]); permissions are checked in [`pipeline::authorize`], headers made
//! in [`pipeline::mutate`]; the config is compiled once in [`config`]; docs/architecture.md
//! has the layering.

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod audit;
pub mod auth_flow;
pub mod body;
pub mod clock;
pub mod config;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod store;
pub mod users;

use std::sync::Arc;

use arc_swap::ArcSwap;

use audit::Audit;
use clock::Clock;
use config::{Config, ListenerSpec, Runtime, StoreKind};
use metrics::Metrics;
use store::{MemoryStore, RedisStore, Store, StoreError};

/// The state every connection shares: the current runtime (swapped whole on reload) and the
/// session store (which outlives reloads).
#[derive(Debug)]
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    store: Store,
    audit: Audit,
    /// The listeners as loaded at start: a reload can swap certificates, not sockets.
    listeners: Vec<ListenerSpec>,
    /// Each TLS listener's current certificate; new connections take the newest.
    tls: Vec<Option<Arc<ArcSwap<rustls::ServerConfig>>>>,
    /// The config as loaded (for reload), when it came from a file.
    config_path: Option<std::path::PathBuf>,
    /// Bumped by every applied reload.
    generation: std::sync::atomic::AtomicU64,
    /// Whether an admin listener was started.
    admin_configured: bool,
    /// The time every decision reads.
    clock: Clock,
    /// What this gateway counts, for `/metrics`.
    metrics: Metrics,
}

impl Gateway {
    /// A gateway serving `runtime` with `store`, recording security decisions to `audit`.
    pub fn new(runtime: Runtime, store: Store, audit: Audit) -> Self {
        Self::with_listeners(runtime, store, audit, Vec::new(), None, Clock::system())
    }

    fn with_listeners(
        runtime: Runtime,
        store: Store,
        audit: Audit,
        listeners: Vec<ListenerSpec>,
        config_path: Option<std::path::PathBuf>,
        clock: Clock,
    ) -> Self {
        let tls = listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|c| Arc::new(ArcSwap::new(Arc::clone(c))))
            })
            .collect();
        let metrics = Metrics::default();
        let runtime = adopt(runtime, &metrics);
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            audit,
            listeners,
            tls,
            config_path,
            generation: std::sync::atomic::AtomicU64::new(1),
            admin_configured: false,
            clock,
            metrics,
        }
    }

    /// The gateway's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The gateway's metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The TLS certificate holder of listener `i` (in `listeners:` order), if it terminates TLS.
    pub fn listener_tls(&self, i: usize) -> Option<Arc<ArcSwap<rustls::ServerConfig>>> {
        self.tls.get(i).cloned().flatten()
    }

    /// The config generation: 1 at start, +1 per applied reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The file the config was loaded from, if any.
    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.as_deref()
    }

    /// The audit trail.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The current runtime snapshot. Hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replaces the runtime; requests already running keep the one they started with.
    pub fn swap_runtime(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(adopt(runtime, &self.metrics)));
    }

    /// The session store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// `runtime` counting into `metrics`: each route takes the registry's counters for its id, so
/// a route's counts go on across reloads.
fn adopt(mut runtime: Runtime, metrics: &Metrics) -> Runtime {
    runtime.router.count_into(metrics);
    runtime.forward_auth.count_into(metrics);
    runtime
}

/// Builds the store a config asks for, on the gateway's `clock`. A single Redis server is
/// connected lazily (the gateway starts, and answers 503, while it is down); a Cluster must be
/// reachable at start.
pub async fn build_store(kind: &StoreKind, clock: &Clock) -> Result<Store, StoreError> {
    Ok(match kind {
        StoreKind::Memory => Store::Memory(MemoryStore::new(clock.clone())),
        StoreKind::Redis(settings) => {
            Store::Redis(RedisStore::connect(settings, clock.clone()).await?)
        }
    })
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The session store could not be set up.
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error("binding listeners: {0}")]
    Bind(#[from] std::io::Error),
    /// The audit file could not be opened.
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    /// An issuer's discovery document names another issuer (a provider that does not
    /// answer does not stop the start).
    #[error("remote keys: {0}")]
    Keys(#[source] reload::ReloadError),
}

/// Binds the listeners of `config` and starts serving. Must run inside a Tokio runtime.
pub async fn start(config: Config) -> Result<server::Running, StartError> {
    start_from(config, None).await
}

/// Like [`start`], remembering the file the config came from so that it can be reloaded (on
/// SIGHUP, through the admin API, and when the file or the files it names change).
pub async fn start_from(
    config: Config,
    path: Option<std::path::PathBuf>,
) -> Result<server::Running, StartError> {
    start_with(config, path, Clock::system()).await
}

/// Like [`start_from`], reading time from `clock`: tests pass [`Clock::manual`] and advance it
/// (through [`Gateway::clock`]) instead of sleeping.
pub async fn start_with(
    config: Config,
    path: Option<std::path::PathBuf>,
    clock: Clock,
) -> Result<server::Running, StartError> {
    let Config {
        listeners,
        limits,
        store,
        audit,
        admin,
        runtime,
        watched,
        // Already logged when the config was compiled.
        warnings: _,
    } = config;
    let audit = Audit::with_window(
        audit.file.as_deref(),
        audit.redis_stream.as_ref(),
        audit.aggregate_window,
        &clock,
    )?;
    let store = build_store(&store, &clock).await?;
    if let Store::Redis(redis) = &store {
        redis.audit_to(audit.clone());
    }
    let mut gateway = Gateway::with_listeners(
        runtime,
        store,
        audit,
        listeners.clone(),
        path.clone(),
        clock,
    );
    gateway.admin_configured = admin.is_some();
    let gateway = Arc::new(gateway);
    // Before the first request: the remote issuers' key sets, each within its timeouts.
    reload::fetch_remote_keys(&gateway, keys::remote::Trigger::Start)
        .await
        .map_err(StartError::Keys)?;
    let mut running = server::start(&listeners, &limits, Arc::clone(&gateway)).await?;
    if let Some(admin) = admin {
        admin::start(admin, &mut running).await?;
    }
    reload::spawn_watchers(&gateway, path, watched, running.shutdown_signal());
    Ok(running)
}
