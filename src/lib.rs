//! # Portcullis
//!
//! A reverse-proxy authentication gateway. It stands in front of backends that know nothing
//! about tokens: it terminates TLS, authenticates every request from an access token (HttpOnly
//! cookie or `Authorization: Bearer`), checks that the token's session is still alive, enforces
//! the permissions `gateway.yaml` sets for the route, and forwards the request with verified
//! identity headers.
//!
//! ```text
//! client ─TLS─▶ listener (server) ─▶ pipeline::handle
//!   0 framing     refuse ambiguous Content-Length / Transfer-Encoding
//!   1 route       normalize the path; host + path + method → Route, or 404/405
//!   2 credential  cookie or bearer → Option<token>         (absent ≠ invalid)
//!   3 verify      kid → pinned key → alg pinned by the key; typ, crit, claims → VerifiedToken
//!   4 session     jti denylist, session alive, user not revoked since iat
//!   5 authorize   the route's policy against the token's permissions
//!   6 mutate      strip client-sent identity headers and the gateway's cookies; inject verified ones
//!   7 forward     pooled upstream client; streaming bodies; WebSocket upgrade; timeouts
//!   errors → error::error_response: 401 JSON + WWW-Authenticate, login redirect, 403, 502, 503, 504
//! ```
//!
//! Where to look: the token is checked in [`pipeline::verify`], the session in
//! [`pipeline::session`] over a [`store::SessionStore`], permissions in
//! [`pipeline::authorize`], headers in [`pipeline::mutate`]; the config is compiled once in
//! [`config`].

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
pub mod reload;
pub mod server;
pub mod store;

use std::sync::Arc;

use arc_swap::ArcSwap;

use audit::Audit;
use clock::Clock;
use config::{Config, ListenerSpec, Runtime, StoreKind};
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
        }
    }

    /// The gateway's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
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
        self.runtime.store(Arc::new(runtime));
    }

    /// The session store.
    pub fn store(&self) -> &Store {
        &self.store
    }
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
    let mut running = server::start(&listeners, &limits, Arc::clone(&gateway)).await?;
    if let Some(admin) = admin {
        admin::start(admin, &mut running).await?;
    }
    reload::spawn_watchers(&gateway, path, watched, running.shutdown_signal());
    Ok(running)
}
