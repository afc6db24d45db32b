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

pub mod audit;
pub mod auth_flow;
pub mod body;
pub mod config;
pub mod error;
pub mod keys;
pub mod pipeline;
pub mod server;
pub mod store;

use std::sync::Arc;

use arc_swap::ArcSwap;

use audit::Audit;
use config::{Config, Runtime, StoreKind};
use store::{MemoryStore, RedisStore, Store, StoreError};

/// The state every connection shares: the current runtime (swapped whole on reload) and the
/// session store (which outlives reloads).
#[derive(Debug)]
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    store: Store,
    audit: Audit,
}

impl Gateway {
    /// A gateway serving `runtime` with `store`, recording security decisions to `audit`.
    pub fn new(runtime: Runtime, store: Store, audit: Audit) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            store,
            audit,
        }
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

/// Builds the store a config asks for. A single Redis server is connected lazily (the gateway
/// starts, and answers 503, while it is down); a Cluster must be reachable at start.
pub async fn build_store(kind: &StoreKind) -> Result<Store, StoreError> {
    Ok(match kind {
        StoreKind::Memory => Store::Memory(MemoryStore::new()),
        StoreKind::Redis(settings) => Store::Redis(RedisStore::connect(settings).await?),
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

/// How often the users file is checked for changes.
const USERS_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds the listeners of `config` and starts serving. Must run inside a Tokio runtime.
pub async fn start(config: Config) -> Result<server::Running, StartError> {
    let Config {
        listeners,
        limits,
        store,
        audit,
        runtime,
    } = config;
    let audit = match &audit.file {
        Some(path) => Audit::to_file(path)?,
        None => Audit::log_only(),
    };
    let users = runtime.auth.as_ref().map(|a| Arc::clone(&a.users));
    let gateway = Arc::new(Gateway::new(runtime, build_store(&store).await?, audit));
    let running = server::start(&listeners, &limits, gateway).await?;
    if let Some(users) = users {
        // The users file is polled, not watched: see `UsersHandle::spawn_watch`.
        users.spawn_watch(USERS_POLL, running.shutdown_signal());
    }
    Ok(running)
}
