//! `gateway.yaml`: read ([`raw`]), validate and compile into a [`Config`] — the listeners, the
//! server limits, the store choice, and the [`Runtime`] that requests are served with.
//!
//! Everything a request needs is parsed here, once: matchers, keys, durations, header names.
//! Errors name the key (`routes[2].policy.all_of[0]`) and, for syntax and type errors, the line.
//! Relative file paths are resolved against the directory of the config file.
//!
//! Each top-level key is compiled by the function of the module named after it, from its raw
//! section and what the sections compiled before it produced; [`compile`] is the list of those
//! calls, in the order the checks between sections need.

mod admin;
mod audit;
mod auth;
mod claims;
mod error;
mod forward_auth;
mod issuers;
mod limits;
mod listeners;
mod mutate;
mod providers;
pub mod raw;
mod roles;
mod routes;
mod store;
mod tokens;
pub mod units;
mod upstreams;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth_flow::AuthSettings;
use crate::pipeline::assertion::{Assertions, AudienceTable};
use crate::pipeline::forward::Upstream;
use crate::pipeline::forward_auth::ForwardAuth;
use crate::pipeline::identify::Identify;
use crate::pipeline::mutate::MutateConfig;
use crate::pipeline::route::Router;
use crate::pipeline::verify::{TokenCache, Verifier};
use raw::RawConfig;

pub use admin::{AdminSettings, AdminToken};
pub use audit::AuditSettings;
pub use claims::ConfigWarning;
pub use error::{Cause, ConfigError, ContextError, ReadError};
pub use limits::ServerLimits;
pub use listeners::ListenerSpec;
pub use store::StoreKind;
pub use tokens::DEFAULT_COOKIE;

/// Everything that answers requests; swapped as a whole on reload, and a request keeps the
/// snapshot it started with.
#[derive(Debug)]
pub struct Runtime {
    /// Routing table.
    pub router: Router,
    /// Upstreams, indexed by [`Route::upstream`].
    pub upstreams: Vec<Upstream>,
    /// Who a request is: cookie name, keys, token cache, roles, the gateway's own issuer.
    pub identify: Identify,
    /// Header stripping and injection settings.
    pub mutate: MutateConfig,
    /// Signs and caches the identity assertions routes send ([`Route::assertion`]); `None`
    /// when no route has one.
    ///
    /// [`Route::assertion`]: crate::pipeline::route::Route::assertion
    pub assertions: Option<Assertions>,
    /// Where browsers are sent to log in.
    pub login_url: Option<String>,
    /// The forward-auth endpoints (none unless `forward_auth:` lists some).
    pub forward_auth: ForwardAuth,
    /// The login flow, when the gateway issues its own tokens.
    pub auth: Option<AuthSettings>,
    /// Longest wait for the next part of a request body (a client that stalls mid-body holds
    /// a connection to the upstream; past this it gets 408).
    pub body_read_timeout: Duration,
    /// How fast a streamed request body must arrive: `body_read_timeout` between parts, plus
    /// the minimum rate and the total deadline.
    pub body_pace: crate::body::Pace,
}

/// A compiled, validated config.
#[derive(Debug)]
pub struct Config {
    /// Sockets to listen on.
    pub listeners: Vec<ListenerSpec>,
    /// Server limits.
    pub limits: ServerLimits,
    /// Session store.
    pub store: StoreKind,
    /// Audit sinks.
    pub audit: AuditSettings,
    /// The admin listener, if configured.
    pub admin: Option<AdminSettings>,
    /// Files besides the config itself whose change triggers a reload (certificates, keys).
    pub watched: Vec<PathBuf>,
    /// The request-serving runtime.
    pub runtime: Runtime,
    /// What loads but is probably not meant (logged at load; `portcullis check` prints them).
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// Reads and compiles a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_yaml(&text, base)
    }

    /// Compiles YAML text; relative paths in it are resolved against `base`.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text)?;
        let mut config = compile(raw, base).map_err(|e| e.with_line_in(text))?;
        for w in &mut config.warnings {
            w.line = units::line_of(text, &w.key);
            tracing::warn!(key = %w.key, line = ?w.line, "config: {}", w.message);
        }
        Ok(config)
    }
}

/// Compiles each top-level key in turn. The order is the order of the checks between them:
/// routes name upstreams and permissions and need some way to verify a token; `auth:`
/// registers the gateway as an issuer next to `issuers:` and needs `tokens.cookie`.
fn compile(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let (limits, body) = limits::compile(&raw.limits)?;
    let listeners = listeners::compile(&raw.listeners, base)?;
    let store = store::compile(&raw.store, base)?;
    let permissions = roles::compile(&raw.roles, &claims::direct_permissions(&raw))?;
    let mut warnings = claims::warnings(&raw);
    warnings.extend(forward_auth::warnings(&raw));
    let mut tokens = tokens::compile(&raw.tokens)?;
    if raw.tokens.cookie.is_none()
        && let Some(name) = auth::access_cookie_default(raw.auth.as_ref())
    {
        tokens.cookie = name.to_owned();
    }
    let mut keys = issuers::compile(&raw.issuers, base)?;
    let identity = mutate::identity_headers(&raw.identity_headers)?;
    let access_audiences = access_audiences(&raw);
    let assertion = upstreams::AssertionContext {
        signing: raw.auth.is_some(),
        access_audiences: &access_audiences,
        identity: &identity.headers,
    };
    let mut audiences = AudienceTable::default();
    let upstreams = upstreams::compile(&raw.upstreams, base, assertion, &mut audiences)?;
    let router = routes::compile(
        &raw.routes,
        routes::Context {
            upstreams: &upstreams.names,
            permissions: &permissions,
            default_max_body: body.default_max,
            tokens_verified: !keys.is_empty() || raw.auth.is_some(),
            upstream_assertions: &upstreams.assertions,
            assertion,
        },
        &mut audiences,
    )?;
    let trusted_proxies = mutate::trusted_proxies(&raw.trusted_proxies)?;
    auth::login_url(raw.login_url.as_deref())?;
    let (auth, own) = match &raw.auth {
        None => (None, None),
        Some(a) => {
            let (auth, own) = auth::compile(a, &mut keys, &tokens.cookie, base)?;
            (Some(auth), Some(own))
        }
    };
    if auth.is_some() {
        routes::outside_login_flow(&raw.routes)?;
    }
    let audit = audit::compile(raw.audit.as_ref(), base)?;
    let admin = admin::compile(raw.admin.as_ref(), base)?;
    let watched = watched(&raw, base);

    let login_url = raw.login_url.or_else(|| {
        auth.as_ref()
            .map(|_| crate::auth_flow::LOGIN_PATH.to_owned())
    });
    let forward_auth = forward_auth::compile(
        &raw.forward_auth,
        &raw.routes,
        &trusted_proxies,
        login_url.as_deref(),
    )?;
    let assertion_headers = audiences.headers().to_vec();
    let claim_headers = claims::claim_headers(&raw.issuers, &identity.headers, &assertion_headers)?;
    // Every assertion needs `auth:` (checked where it is written), so without it there is none.
    let assertions = auth.as_ref().filter(|_| !audiences.is_empty()).map(|a| {
        Assertions::new(
            audiences,
            std::sync::Arc::clone(&a.signing),
            &a.issuer,
            tokens.cache_capacity,
        )
    });
    let runtime = Runtime {
        router,
        upstreams: upstreams.upstreams,
        mutate: mutate::config(
            identity,
            trusted_proxies,
            assertion_headers,
            claim_headers,
            &tokens.cookie,
            auth.is_some(),
        ),
        forward_auth,
        assertions,
        identify: Identify {
            cookie_name: tokens.cookie,
            verifier: Verifier {
                keys,
                leeway: tokens.leeway.as_secs() as i64,
                max_bytes: tokens.max_bytes,
            },
            token_cache: TokenCache::new(tokens.cache_capacity),
            permissions,
            own,
        },
        login_url,
        auth,
        body_read_timeout: body.read_timeout,
        body_pace: body.pace,
    };
    Ok(Config {
        listeners,
        limits,
        store,
        audit,
        admin,
        watched,
        runtime,
        warnings,
    })
}

/// Every audience an access token is accepted for, with the key that sets it: an identity
/// assertion's audience must be none of them (docs/security.md 42).
fn access_audiences(raw: &RawConfig) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = raw
        .issuers
        .iter()
        .enumerate()
        .flat_map(|(i, issuer)| {
            issuer
                .audiences
                .iter()
                .enumerate()
                .map(move |(j, a)| (a.clone(), format!("issuers[{i}].audiences[{j}]")))
        })
        .collect();
    if let Some(a) = &raw.auth {
        all.push(match &a.audience {
            Some(audience) => (audience.clone(), "auth.audience".to_owned()),
            // The gateway's tokens are for itself when `auth.audience` is not set.
            None => (
                a.issuer.clone(),
                "auth.issuer, which auth.audience defaults to".to_owned(),
            ),
        });
    }
    all
}

/// The files besides the config whose change is a reason to reload: certificates, keys and
/// the CA bundles of remote key sets.
/// (The users file is polled on its own; the store's and admin's files need a restart.)
fn watched(raw: &RawConfig, base: &Path) -> Vec<PathBuf> {
    let mut watched: Vec<PathBuf> = Vec::new();
    for l in &raw.listeners {
        if let Some(tls) = &l.tls {
            watched.push(base.join(&tls.cert));
            watched.push(base.join(&tls.key));
        }
    }
    if let Some(a) = &raw.auth {
        watched.extend(a.signing_keys.iter().map(|k| base.join(&k.pem)));
    }
    for issuer in &raw.issuers {
        // A new CA bundle for a remote key set applies from the reload it triggers.
        watched.extend(issuer.ca.iter().map(|ca| base.join(ca)));
        for k in &issuer.keys {
            watched.extend(
                [&k.pem, &k.secret_file, &k.jwks]
                    .into_iter()
                    .flatten()
                    .map(|p| base.join(p)),
            );
        }
    }
    watched
}
