//! `gateway.yaml`: read ([`raw`]), validate and compile into a [`Config`] — the listeners, the
//! server limits, the store choice, and the [`Runtime`] that requests are served with.
//!
//! Everything a request needs is parsed here, once: matchers, keys, durations, header names.
//! Errors name the key (`routes[2].policy.all_of[0]`) and, for syntax and type errors, the line.
//! Relative file paths are resolved against the directory of the config file.

pub mod raw;
pub mod units;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::auth_flow::AuthSettings;
use crate::keys::{self, Issuer, KeySet, VerificationKey};
use crate::pipeline::authorize::{PermissionTable, Policy};
use crate::pipeline::forward::{HttpUpstream, Upstream, UpstreamSettings};
use crate::pipeline::identify::{Identify, OwnIssuer};
use crate::pipeline::mutate::{IdentityHeaders, MutateConfig, StripRule};
use crate::pipeline::normalize::normalize;
use crate::pipeline::route::{HostPattern, Route, Router};
use crate::pipeline::verify::{TokenCache, Verifier};
use crate::store::{RedisSettings, Topology};
use raw::{RawConfig, RawPolicy, RawSize, RawStore};
use units::{IpNet, parse_duration, parse_size};

/// Why a config could not be loaded. The message names the key and, where the parser knows
/// it, the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// A value that parses but is not acceptable.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// Where the problem is, without the offending value (for the audit trail): the key path,
    /// or the line and column of a parse error.
    pub fn location(&self) -> String {
        match self {
            ConfigError::Read { .. } => "file".to_owned(),
            ConfigError::Parse(e) => e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "syntax".to_owned()),
            ConfigError::Invalid { key, .. } => key.clone(),
        }
    }
}

fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

/// A listening socket.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination, if configured.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HSTS header for TLS listeners.
    pub hsts: Option<HeaderValue>,
}

/// Server-wide limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields per request.
    pub max_headers: usize,
    /// Concurrent connections across listeners.
    pub max_connections: usize,
    /// Concurrent connections from one client address (an IPv6 /64 counts as one); 0: no cap.
    /// Peers in `trusted_proxies` are not capped.
    pub max_connections_per_ip: usize,
    /// Time to send the request head and finish the TLS handshake.
    pub header_read_timeout: Duration,
    /// A client connection with no new request for this long is closed gracefully.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
}

/// Which session store to run.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// In-process.
    Memory,
    /// Redis, shared by every instance.
    Redis(RedisSettings),
}

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
    /// Where browsers are sent to log in.
    pub login_url: Option<String>,
    /// The login flow, when the gateway issues its own tokens.
    pub auth: Option<AuthSettings>,
    /// Longest wait for the next part of a request body (a client that stalls mid-body holds
    /// a connection to the upstream; past this it gets 408).
    pub body_read_timeout: Duration,
    /// How fast a streamed request body must arrive: `body_read_timeout` between parts, plus
    /// the minimum rate and the total deadline.
    pub body_pace: crate::body::Pace,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Address to bind.
    pub bind: SocketAddr,
    /// The admin API's bearer secret; `None` turns the API off.
    pub token: Option<AdminToken>,
}

/// The admin bearer secret. Opaque: compared in constant time, never printed.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// Whether `presented` is the secret (constant time in the secret's length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, presented).is_ok()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Where audit events go besides the log.
#[derive(Debug, Clone, Default)]
pub struct AuditSettings {
    /// Append JSON lines to this file.
    pub file: Option<PathBuf>,
    /// Also add events to this Redis stream.
    pub redis_stream: Option<crate::audit::AuditStream>,
    /// Repeated refusals (same client, event and reason) within this window become one event
    /// and a count; zero: none aggregated.
    pub aggregate_window: Duration,
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
}

/// The default access-token cookie name.
pub const DEFAULT_COOKIE: &str = "__Host-portcullis-at";

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
        // The checks after parsing know the key; the text knows its line.
        compile(raw, base).map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let message = match units::line_of(text, &key) {
                    Some(line) => format!("{message} at line {line}"),
                    None => message,
                };
                ConfigError::Invalid { key, message }
            }
            other => other,
        })
    }
}

fn duration(key: &str, value: Option<&String>, default: Duration) -> Result<Duration, ConfigError> {
    value.map_or(Ok(default), |v| {
        parse_duration(v).map_err(|m| invalid(key, m))
    })
}

fn size(key: &str, value: Option<&RawSize>, default: u64) -> Result<u64, ConfigError> {
    value.map_or(Ok(default), |v| parse_size(v).map_err(|m| invalid(key, m)))
}

fn compile(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
    let resolve = |p: &str| -> PathBuf { base.join(p) };

    // Limits.
    let l = &raw.limits;
    let max_header_bytes = size(
        "limits.max_header_bytes",
        l.max_header_bytes.as_ref(),
        16 * 1024,
    )?;
    if !(8192..=1 << 20).contains(&max_header_bytes) {
        return Err(invalid(
            "limits.max_header_bytes",
            "must be between 8KiB and 1MiB",
        ));
    }
    let limits = ServerLimits {
        max_header_bytes: max_header_bytes as usize,
        max_headers: l.max_headers.unwrap_or(100),
        max_connections: l.max_connections.unwrap_or(10_000),
        // A tenth of all connections, at least 64: one address cannot take them all, while a
        // NAT full of browsers (6 connections each over HTTP/1.1) still fits.
        max_connections_per_ip: l
            .max_connections_per_ip
            .unwrap_or((l.max_connections.unwrap_or(10_000) / 10).max(64)),
        header_read_timeout: duration(
            "limits.header_read_timeout",
            l.header_read_timeout.as_ref(),
            Duration::from_secs(10),
        )?,
        idle_timeout: duration(
            "limits.idle_timeout",
            l.idle_timeout.as_ref(),
            Duration::from_secs(60),
        )?,
        h2_max_concurrent_streams: l.h2_max_concurrent_streams.unwrap_or(128),
        shutdown_grace: duration(
            "limits.shutdown_grace",
            l.shutdown_grace.as_ref(),
            Duration::from_secs(30),
        )?,
    };
    if limits.max_connections == 0 {
        return Err(invalid("limits.max_connections", "must be at least 1"));
    }
    let default_body = size("limits.max_body", l.max_body.as_ref(), 10 << 20)?;
    let body_read_timeout = duration(
        "limits.body_read_timeout",
        l.body_read_timeout.as_ref(),
        Duration::from_secs(30),
    )?;
    if body_read_timeout.is_zero() {
        return Err(invalid("limits.body_read_timeout", "must be above zero"));
    }
    let body_pace = crate::body::Pace {
        stall_after: body_read_timeout,
        min_rate: size("limits.body_min_rate", l.body_min_rate.as_ref(), 500)?,
        grace: duration(
            "limits.body_min_rate_grace",
            l.body_min_rate_grace.as_ref(),
            Duration::from_secs(20),
        )?,
        deadline: match &l.body_deadline {
            None => None,
            Some(text) => match parse_duration(text) {
                Ok(d) if d.is_zero() => {
                    return Err(invalid(
                        "limits.body_deadline",
                        "must be above zero (or unset)",
                    ));
                }
                Ok(d) => Some(d),
                Err(m) => return Err(invalid("limits.body_deadline", m)),
            },
        },
    };

    // Listeners.
    if raw.listeners.is_empty() {
        return Err(invalid("listeners", "at least one listener is required"));
    }
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    for (i, listener) in raw.listeners.iter().enumerate() {
        let key = format!("listeners[{i}]");
        let bind: SocketAddr = listener.bind.parse().map_err(|_| {
            invalid(
                format!("{key}.bind"),
                format!("`{}` is not an address like 127.0.0.1:8080", listener.bind),
            )
        })?;
        let (tls, hsts) = match &listener.tls {
            None => (None, None),
            Some(tls) => {
                let server = server_tls(&resolve(&tls.cert), &resolve(&tls.key))
                    .map_err(|m| invalid(format!("{key}.tls"), m))?;
                let age = duration(
                    &format!("{key}.tls.hsts_max_age"),
                    tls.hsts_max_age.as_ref(),
                    Duration::from_secs(31_536_000),
                )?;
                let hsts = (!age.is_zero())
                    .then(|| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok())
                    .flatten();
                (Some(Arc::new(server)), hsts)
            }
        };
        listeners.push(ListenerSpec { bind, tls, hsts });
    }

    let store = match &raw.store {
        RawStore::Memory => StoreKind::Memory,
        RawStore::Redis(r) => StoreKind::Redis(redis_settings(r, &resolve)?),
    };

    // Roles and permissions.
    for (role, perms) in &raw.roles {
        for (j, p) in perms.iter().enumerate() {
            if p.is_empty()
                || !p.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || matches!(b, b':' | b'.' | b'_' | b'-' | b'/' | b'*')
                })
            {
                return Err(invalid(
                    format!("roles.{role}[{j}]"),
                    format!("`{p}` is not a permission name (letters, digits and : . _ - / *)"),
                ));
            }
        }
    }
    let permissions =
        PermissionTable::new(raw.roles.iter().map(|(r, p)| (r.as_str(), p.as_slice())));

    // Issuers and keys.
    let t = &raw.tokens;
    let leeway = duration("tokens.leeway", t.leeway.as_ref(), Duration::from_secs(30))?;
    if leeway > Duration::from_secs(300) {
        return Err(invalid(
            "tokens.leeway",
            "more than 5m of clock skew hides real problems",
        ));
    }
    let max_bytes = size("tokens.max_bytes", t.max_bytes.as_ref(), 8192)?;
    if !(256..=64 * 1024).contains(&max_bytes) {
        return Err(invalid(
            "tokens.max_bytes",
            "must be between 256 bytes and 64KiB",
        ));
    }
    let mut keyset = KeySet::default();
    for (i, issuer) in raw.issuers.iter().enumerate() {
        let key = format!("issuers[{i}]");
        if issuer.issuer.is_empty() {
            return Err(invalid(format!("{key}.issuer"), "must not be empty"));
        }
        if issuer.audiences.is_empty() {
            return Err(invalid(
                format!("{key}.audiences"),
                "at least one audience is required",
            ));
        }
        if issuer.keys.is_empty() {
            return Err(invalid(
                format!("{key}.keys"),
                "at least one key is required",
            ));
        }
        let idx = keyset.add_issuer(Issuer {
            iss: issuer.issuer.as_str().into(),
            audiences: issuer.audiences.iter().map(|a| a.as_str().into()).collect(),
            require_session: issuer.require_session.unwrap_or(true),
            max_lifetime: duration(
                &format!("{key}.max_lifetime"),
                issuer.max_lifetime.as_ref(),
                Duration::from_secs(86_400),
            )?,
        });
        for (j, k) in issuer.keys.iter().enumerate() {
            let kkey = format!("{key}.keys[{j}]");
            load_key(&mut keyset, idx, k, &resolve).map_err(|e| invalid(kkey, e))?;
        }
    }

    // Upstreams.
    let mut upstream_names: Vec<&str> = Vec::new();
    let mut upstreams = Vec::new();
    let mut native_roots: Option<Arc<rustls::RootCertStore>> = None;
    for (name, up) in &raw.upstreams {
        let key = format!("upstreams.{name}");
        let upstream = match (&up.url, up.echo) {
            (None, Some(true)) => Upstream::Echo,
            (Some(url), None | Some(false)) => {
                let uri: Uri = url
                    .parse()
                    .map_err(|_| invalid(format!("{key}.url"), format!("`{url}` is not a URL")))?;
                let roots = match &up.ca {
                    Some(ca) => Arc::new(
                        roots_from_file(&resolve(ca))
                            .map_err(|m| invalid(format!("{key}.ca"), m))?,
                    ),
                    None if uri.scheme_str() == Some("https") => native_roots
                        .get_or_insert_with(|| Arc::new(system_roots()))
                        .clone(),
                    None => Arc::new(rustls::RootCertStore::empty()),
                };
                let tls = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let h2 = match up.protocol.as_deref() {
                    None | Some("http1") => false,
                    Some("h2") => true,
                    Some(other) => {
                        return Err(invalid(
                            format!("{key}.protocol"),
                            format!("`{other}` is not http1 or h2"),
                        ));
                    }
                };
                let settings = UpstreamSettings {
                    connect_timeout: duration(
                        &format!("{key}.connect_timeout"),
                        up.connect_timeout.as_ref(),
                        Duration::from_secs(5),
                    )?,
                    response_timeout: duration(
                        &format!("{key}.response_timeout"),
                        up.response_timeout.as_ref(),
                        Duration::from_secs(30),
                    )?,
                    idle_timeout: duration(
                        &format!("{key}.idle_timeout"),
                        up.idle_timeout.as_ref(),
                        Duration::from_secs(90),
                    )?,
                    max_idle_per_host: up.max_idle_per_host.unwrap_or(64),
                    h2,
                    preserve_host: up.preserve_host.unwrap_or(false),
                };
                Upstream::Http(Box::new(
                    HttpUpstream::new(&uri, tls, settings)
                        .map_err(|m| invalid(format!("{key}.url"), m))?,
                ))
            }
            _ => return Err(invalid(&key, "set exactly one of `url` or `echo: true`")),
        };
        upstream_names.push(name);
        upstreams.push(upstream);
    }

    // Routes.
    if raw.routes.is_empty() {
        return Err(invalid(
            "routes",
            "at least one route is required (unmatched requests are denied)",
        ));
    }
    let mut router = Router::default();
    let mut ids = BTreeSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        let id = r.id.clone().unwrap_or_else(|| format!("route-{i}"));
        if !ids.insert(id.clone()) {
            return Err(invalid(
                format!("{key}.id"),
                format!("`{id}` is used by another route"),
            ));
        }
        let host =
            HostPattern::parse(r.host.as_deref()).map_err(|m| invalid(format!("{key}.host"), m))?;
        let normalized = normalize(&r.path)
            .map_err(|e| invalid(format!("{key}.path"), format!("`{}`: {e}", r.path)))?;
        let prefix = normalized.lower.trim_end_matches('/');
        if normalized.path.trim_end_matches('/') != r.path.trim_end_matches('/') {
            return Err(invalid(
                format!("{key}.path"),
                format!(
                    "`{}` is not in normal form; write `{}`",
                    r.path, normalized.path
                ),
            ));
        }
        let methods = match &r.methods {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    format!("{key}.methods"),
                    "an empty list would deny everything; omit it to allow all",
                ));
            }
            Some(list) => Some(
                list.iter()
                    .enumerate()
                    .map(|(j, m)| {
                        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                            return Err(invalid(
                                format!("{key}.methods[{j}]"),
                                format!("`{m}` is not an upper-case method name"),
                            ));
                        }
                        Method::from_bytes(m.as_bytes()).map_err(|_| {
                            invalid(
                                format!("{key}.methods[{j}]"),
                                format!("`{m}` is not a method"),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let upstream = upstream_names
            .iter()
            .position(|n| *n == r.upstream)
            .ok_or_else(|| {
                invalid(
                    format!("{key}.upstream"),
                    format!("no upstream is named `{}`", r.upstream),
                )
            })?;
        let policy = match &r.policy {
            RawPolicy::Public => Policy::Public,
            RawPolicy::Authenticated => Policy::Authenticated,
            RawPolicy::AllOf(names) | RawPolicy::AnyOf(names) => {
                let which = if matches!(r.policy, RawPolicy::AllOf(_)) {
                    "all_of"
                } else {
                    "any_of"
                };
                if names.is_empty() {
                    return Err(invalid(
                        format!("{key}.policy.{which}"),
                        "lists no permission",
                    ));
                }
                let set = permissions.set_of(names).map_err(|missing| {
                    let j = names.iter().position(|n| n == missing).unwrap_or(0);
                    invalid(
                        format!("{key}.policy.{which}[{j}]"),
                        format!("no role grants the permission `{missing}`"),
                    )
                })?;
                if which == "all_of" {
                    Policy::AllOf(set)
                } else {
                    Policy::AnyOf(set)
                }
            }
        };
        if !matches!(policy, Policy::Public) && keyset.is_empty() && raw.auth.is_none() {
            return Err(invalid(
                format!("{key}.policy"),
                "requires a token, but no issuer is configured",
            ));
        }
        let route = Route {
            counters: crate::metrics::global().route(&id),
            id: id.as_str().into(),
            prefix: prefix.into(),
            methods,
            upstream,
            policy,
            max_body: size(
                &format!("{key}.max_body"),
                r.max_body.as_ref(),
                default_body,
            )?,
            forward_authorization: r.forward_authorization.unwrap_or(false),
            websocket: r.websocket.unwrap_or(true),
            audit: r.audit.unwrap_or(false),
        };
        router.add(host, route).map_err(|m| invalid(&key, m))?;
    }

    // Identity headers.
    let ih = &raw.identity_headers;
    let header = |key: &str,
                  value: Option<&String>,
                  default: &'static str|
     -> Result<HeaderName, ConfigError> {
        let name = value.map_or(default, String::as_str);
        let parsed = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid(key, format!("`{name}` is not a header name")))?;
        const RESERVED: [&str; 10] = [
            "host",
            "cookie",
            "authorization",
            "connection",
            "content-length",
            "transfer-encoding",
            "upgrade",
            "te",
            "x-request-id",
            "x-forwarded-for",
        ];
        if RESERVED.contains(&parsed.as_str()) {
            return Err(invalid(
                key,
                format!("`{name}` is a header with another meaning"),
            ));
        }
        Ok(parsed)
    };
    let identity = IdentityHeaders {
        subject: header(
            "identity_headers.subject",
            ih.subject.as_ref(),
            "x-auth-subject",
        )?,
        session: header(
            "identity_headers.session",
            ih.session.as_ref(),
            "x-auth-session",
        )?,
        permissions: header(
            "identity_headers.permissions",
            ih.permissions.as_ref(),
            "x-auth-permissions",
        )?,
    };

    let strip = ih
        .strip
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            StripRule::parse(entry).map_err(|m| invalid(format!("identity_headers.strip[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, p)| IpNet::parse(p).map_err(|m| invalid(format!("trusted_proxies[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;

    let cookie_name = t
        .cookie
        .clone()
        .unwrap_or_else(|| DEFAULT_COOKIE.to_owned());
    if cookie_name.is_empty()
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(invalid(
            "tokens.cookie",
            format!("`{cookie_name}` is not a cookie name"),
        ));
    }

    if let Some(login) = &raw.login_url {
        let relative = login.starts_with('/') && !login.starts_with("//") && !login.contains('\\');
        if !relative && !login.starts_with("https://") {
            return Err(invalid(
                "login_url",
                "must be a path like /auth/login or an https:// URL",
            ));
        }
    }

    let (auth, own) = match &raw.auth {
        None => (None, None),
        Some(a) => {
            let (auth, own) = compile_auth(a, &mut keyset, &cookie_name, &resolve)?;
            (Some(auth), Some(own))
        }
    };
    if auth.is_some() {
        for (i, r) in raw.routes.iter().enumerate() {
            let p = r.path.to_ascii_lowercase();
            if crate::auth_flow::owns(p.trim_end_matches('/')) {
                return Err(invalid(
                    format!("routes[{i}].path"),
                    format!(
                        "`{}` belongs to the login flow (`auth:` is configured)",
                        r.path
                    ),
                ));
            }
        }
    }
    let login_url = raw.login_url.or_else(|| {
        auth.as_ref()
            .map(|_| crate::auth_flow::LOGIN_PATH.to_owned())
    });
    let mut gateway_cookies = vec![cookie_name.clone()];
    if auth.is_some() {
        gateway_cookies.extend(crate::auth_flow::cookies::FLOW_COOKIES.map(str::to_owned));
    }
    // What a backend may not `Set-Cookie`: the gateway's cookies, and the auth flow's even
    // while it is off, each in every case and prefix.
    let mut protected_cookies: Vec<String> = gateway_cookies
        .iter()
        .map(String::as_str)
        .chain([
            crate::auth_flow::cookies::REFRESH_COOKIE,
            crate::auth_flow::cookies::CSRF_COOKIE,
        ])
        .map(|name| {
            String::from_utf8_lossy(crate::pipeline::mutate::bare_cookie_name(name.as_bytes()))
                .to_ascii_lowercase()
        })
        .collect();
    protected_cookies.sort();
    protected_cookies.dedup();
    let redis_stream = match raw.audit.as_ref().and_then(|a| a.redis_stream.as_ref()) {
        None => None,
        Some(r) => {
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                return Err(invalid(
                    "audit.redis_stream.url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            let maxlen = r.maxlen.unwrap_or(1_000_000);
            if maxlen == 0 {
                return Err(invalid("audit.redis_stream.maxlen", "must be above zero"));
            }
            Some(crate::audit::AuditStream {
                url: r.url.clone(),
                key: r
                    .key
                    .clone()
                    .unwrap_or_else(|| "portcullis:audit".to_owned()),
                maxlen,
            })
        }
    };
    let audit = AuditSettings {
        file: raw
            .audit
            .as_ref()
            .and_then(|a| a.file.as_deref())
            .map(&resolve),
        redis_stream,
        aggregate_window: duration(
            "audit.aggregate_window",
            raw.audit.as_ref().and_then(|a| a.aggregate_window.as_ref()),
            crate::audit::DEFAULT_WINDOW,
        )?,
    };

    let runtime = Runtime {
        router,
        upstreams,
        identify: Identify {
            cookie_name,
            verifier: Verifier {
                keys: keyset,
                leeway: leeway.as_secs() as i64,
                max_bytes: max_bytes as usize,
            },
            token_cache: TokenCache::new(t.cache_capacity.unwrap_or(100_000)),
            permissions,
            own,
        },
        mutate: MutateConfig {
            identity,
            gateway_cookies,
            protected_cookies,
            strip,
            trusted_proxies,
        },
        login_url,
        auth,
        body_read_timeout,
        body_pace,
    };
    let admin = match &raw.admin {
        None => None,
        Some(a) => {
            let bind: SocketAddr = a.bind.parse().map_err(|_| {
                invalid(
                    "admin.bind",
                    format!("`{}` is not an address like 127.0.0.1:9090", a.bind),
                )
            })?;
            let token = match &a.token_file {
                None => None,
                Some(f) => {
                    let path = resolve(f);
                    let text = std::fs::read(&path).map_err(|e| {
                        invalid(
                            "admin.token_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    let secret = text.trim_ascii();
                    if secret.len() < 32 {
                        return Err(invalid(
                            "admin.token_file",
                            "the admin secret must be at least 32 bytes (e.g. `openssl rand -hex 32`)",
                        ));
                    }
                    Some(AdminToken(Arc::from(secret)))
                }
            };
            Some(AdminSettings { bind, token })
        }
    };
    let mut watched: Vec<PathBuf> = Vec::new();
    for l in &raw.listeners {
        if let Some(tls) = &l.tls {
            watched.push(resolve(&tls.cert));
            watched.push(resolve(&tls.key));
        }
    }
    if let Some(a) = &raw.auth {
        watched.extend(a.signing_keys.iter().map(|k| resolve(&k.pem)));
    }
    for issuer in &raw.issuers {
        for k in &issuer.keys {
            watched.extend(
                [&k.pem, &k.secret_file, &k.jwks]
                    .into_iter()
                    .flatten()
                    .map(|p| resolve(p)),
            );
        }
    }
    Ok(Config {
        listeners,
        limits,
        store,
        audit,
        admin,
        watched,
        runtime,
    })
}

/// The key used when `auth.signing_keys` is empty: made once per process, so a config reload
/// does not invalidate every token issued so far.
fn ephemeral_signing_keys() -> Arc<crate::keys::signing::SigningKeys> {
    static EPHEMERAL: std::sync::OnceLock<Arc<crate::keys::signing::SigningKeys>> =
        std::sync::OnceLock::new();
    Arc::clone(EPHEMERAL.get_or_init(|| {
        tracing::warn!(
            "auth.signing_keys is empty: signing with an ephemeral EdDSA key generated now; \
             tokens stop verifying when the process exits and other instances cannot verify them"
        );
        Arc::new(crate::keys::signing::SigningKeys::ephemeral())
    }))
}

/// Compiles `auth:`: loads the users file and the signing keys, and registers the gateway as
/// an issuer whose tokens always need a live session.
fn compile_auth(
    a: &raw::RawAuth,
    keyset: &mut KeySet,
    cookie_name: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<(AuthSettings, OwnIssuer), ConfigError> {
    use crate::auth_flow::{Lifetimes, Throttle, redirect::RedirectPolicy};
    use crate::keys::signing::SigningKeys;
    use crate::users::UsersHandle;

    if !a.issuer.starts_with("https://") && !a.issuer.starts_with("http://") {
        return Err(invalid(
            "auth.issuer",
            "must be the gateway's URL, like https://gateway.example.com",
        ));
    }
    if keyset.issuers.iter().any(|i| *i.iss == *a.issuer) {
        return Err(invalid(
            "auth.issuer",
            format!("`{}` is also listed under `issuers`", a.issuer),
        ));
    }
    if !cookie_name.starts_with("__Host-") {
        return Err(invalid(
            "tokens.cookie",
            "with `auth:`, the access-token cookie must use the `__Host-` prefix",
        ));
    }
    let audience = a.audience.clone().unwrap_or_else(|| a.issuer.clone());
    let access_ttl = duration(
        "auth.access_ttl",
        a.access_ttl.as_ref(),
        Duration::from_secs(900),
    )?;
    if access_ttl < Duration::from_secs(1) || access_ttl > Duration::from_secs(3600) {
        return Err(invalid("auth.access_ttl", "must be between 1s and 1h"));
    }
    let lifetimes = Lifetimes {
        idle: duration(
            "auth.idle_timeout",
            a.idle_timeout.as_ref(),
            Duration::from_secs(12 * 3600),
        )?,
        absolute: duration(
            "auth.absolute_lifetime",
            a.absolute_lifetime.as_ref(),
            Duration::from_secs(24 * 3600),
        )?,
        remember_idle: duration(
            "auth.remember_me_idle_timeout",
            a.remember_me_idle_timeout.as_ref(),
            Duration::from_secs(14 * 86_400),
        )?,
        remember_absolute: duration(
            "auth.remember_me_absolute_lifetime",
            a.remember_me_absolute_lifetime.as_ref(),
            Duration::from_secs(30 * 86_400),
        )?,
    };
    for (key, value) in [
        ("auth.idle_timeout", lifetimes.idle),
        ("auth.absolute_lifetime", lifetimes.absolute),
        ("auth.remember_me_idle_timeout", lifetimes.remember_idle),
        (
            "auth.remember_me_absolute_lifetime",
            lifetimes.remember_absolute,
        ),
    ] {
        if value < access_ttl {
            return Err(invalid(key, "must be at least auth.access_ttl"));
        }
    }
    let refresh_grace = duration(
        "auth.refresh_grace",
        a.refresh_grace.as_ref(),
        Duration::from_secs(10),
    )?;
    if refresh_grace > Duration::from_secs(120) {
        return Err(invalid(
            "auth.refresh_grace",
            "more than 2m lets a stolen refresh token be replayed unnoticed",
        ));
    }
    let default_redirect = a.default_redirect.clone().unwrap_or_else(|| "/".to_owned());
    let mut hosts = Vec::new();
    for (i, h) in a.redirect_hosts.iter().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        if h.is_empty() || h.contains(['/', '@', '\\', ' ']) {
            return Err(invalid(
                format!("auth.redirect_hosts[{i}]"),
                "must be a host name (with an optional :port), like app.example.com",
            ));
        }
        hosts.push(h);
    }
    let redirect = RedirectPolicy {
        default: "/".to_owned(),
        hosts,
    };
    if redirect.target(Some(&default_redirect)) != default_redirect {
        return Err(invalid(
            "auth.default_redirect",
            "must be a path like /app or an https:// URL on a host in auth.redirect_hosts",
        ));
    }
    let redirect = RedirectPolicy {
        default: default_redirect,
        ..redirect
    };
    let th = &a.throttle;
    let throttle = Throttle {
        per_ip: th.per_ip.unwrap_or(50),
        per_user: th.per_user.unwrap_or(5),
        window: duration(
            "auth.throttle.window",
            th.window.as_ref(),
            Duration::from_secs(900),
        )?,
    };
    if throttle.per_ip == 0 || throttle.per_user == 0 || throttle.window.is_zero() {
        return Err(invalid(
            "auth.throttle",
            "limits and window must be above zero",
        ));
    }
    let jwks_max_age = duration(
        "auth.jwks_max_age",
        a.jwks_max_age.as_ref(),
        Duration::from_secs(300),
    )?;

    let users = UsersHandle::load(resolve(&a.users_file))
        .map_err(|e| invalid("auth.users_file", e.to_string()))?;

    let signing = if a.signing_keys.is_empty() {
        ephemeral_signing_keys()
    } else {
        let mut list = Vec::with_capacity(a.signing_keys.len());
        for (i, k) in a.signing_keys.iter().enumerate() {
            let alg = keys::parse_algorithm(&k.alg)
                .map_err(|e| invalid(format!("auth.signing_keys[{i}].alg"), e))?;
            list.push((resolve(&k.pem), alg));
        }
        Arc::new(
            SigningKeys::load(&list)
                .map_err(|(i, e)| invalid(format!("auth.signing_keys[{i}]"), e))?,
        )
    };
    let issuer_index = keyset.add_issuer(Issuer {
        iss: a.issuer.as_str().into(),
        audiences: Box::new([audience.as_str().into()]),
        require_session: true,
        max_lifetime: access_ttl,
    });
    for (kid, alg, key) in signing.verification_keys() {
        keyset
            .insert(
                &kid,
                VerificationKey {
                    alg,
                    key,
                    issuer: issuer_index,
                },
            )
            .map_err(|e| invalid("auth.signing_keys", e))?;
    }
    let jwks_cache_control =
        HeaderValue::from_str(&format!("public, max-age={}", jwks_max_age.as_secs()))
            .map_err(|_| invalid("auth.jwks_max_age", "out of range"))?;
    let users = Arc::new(users);
    let own = OwnIssuer::new(issuer_index, Arc::clone(&users));
    let auth = AuthSettings {
        issuer: a.issuer.clone(),
        audience,
        jwks: signing.jwks_json(),
        signing,
        users,
        access_ttl,
        lifetimes,
        refresh_grace,
        redirect,
        throttle,
        jwks_cache_control,
        access_cookie: cookie_name.to_owned(),
    };
    Ok((auth, own))
}

fn redis_settings(
    r: &raw::RawRedis,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<RedisSettings, ConfigError> {
    let url_ok = |key: &str, url: &str| -> Result<(), ConfigError> {
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            Ok(())
        } else {
            Err(invalid(
                key,
                format!("`{url}` is not a redis:// or rediss:// URL"),
            ))
        }
    };
    let topology = match (&r.url, &r.cluster, &r.sentinel) {
        (Some(url), None, None) => {
            url_ok("store.url", url)?;
            Topology::Single(url.clone())
        }
        (None, Some(nodes), None) => {
            if nodes.is_empty() {
                return Err(invalid("store.cluster", "lists no node"));
            }
            for (i, n) in nodes.iter().enumerate() {
                url_ok(&format!("store.cluster[{i}]"), n)?;
            }
            Topology::Cluster(nodes.clone())
        }
        (None, None, Some(s)) => {
            if s.nodes.is_empty() {
                return Err(invalid("store.sentinel.nodes", "lists no sentinel"));
            }
            for (i, n) in s.nodes.iter().enumerate() {
                url_ok(&format!("store.sentinel.nodes[{i}]"), n)?;
            }
            Topology::Sentinel {
                master: s.master.clone(),
                nodes: s.nodes.clone(),
            }
        }
        _ => {
            return Err(invalid(
                "store",
                "set exactly one of `url`, `cluster` or `sentinel`",
            ));
        }
    };
    let password = match &r.password_file {
        None => None,
        Some(file) => {
            let path = resolve(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "store.password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
    };
    let defaults = RedisSettings::new(topology);
    let key_prefix = r
        .key_prefix
        .clone()
        .unwrap_or_else(|| defaults.key_prefix.clone());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        return Err(invalid(
            "store.key_prefix",
            "must be non-empty, without braces or spaces",
        ));
    }
    let max_staleness = duration(
        "store.max_staleness",
        r.max_staleness.as_ref(),
        defaults.max_staleness,
    )?;
    if max_staleness < Duration::from_millis(50) {
        return Err(invalid(
            "store.max_staleness",
            "must be at least 50ms (heartbeats run five times per max_staleness)",
        ));
    }
    Ok(RedisSettings {
        key_prefix,
        timeout: duration("store.timeout", r.timeout.as_ref(), defaults.timeout)?,
        cache_capacity: r.cache_capacity.unwrap_or(defaults.cache_capacity),
        cache_ttl: duration("store.cache_ttl", r.cache_ttl.as_ref(), defaults.cache_ttl)?,
        password,
        max_staleness,
        on_data_loss: match r.on_data_loss.as_deref() {
            None => defaults.on_data_loss,
            Some("refuse_earlier_tokens") => crate::store::epoch::OnDataLoss::RefuseEarlierTokens,
            Some("unavailable") => crate::store::epoch::OnDataLoss::Unavailable,
            Some(other) => {
                return Err(invalid(
                    "store.on_data_loss",
                    format!("`{other}` is neither `refuse_earlier_tokens` nor `unavailable`"),
                ));
            }
        },
        first_start: r.first_start,
        min_replicas_acks: r.min_replicas_acks,
        replica_ack_timeout: duration(
            "store.replica_ack_timeout",
            r.replica_ack_timeout.as_ref(),
            defaults.replica_ack_timeout,
        )?,
        ..defaults
    })
}

fn load_key(
    keyset: &mut KeySet,
    issuer: usize,
    k: &raw::RawKey,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<(), keys::KeyError> {
    use keys::KeyError;
    match (&k.pem, &k.secret_file, &k.jwks) {
        (Some(pem), None, None) | (None, Some(pem), None) => {
            let kid = k
                .kid
                .as_deref()
                .ok_or_else(|| KeyError::Invalid("`kid` is required".into()))?;
            let alg = keys::parse_algorithm(
                k.alg
                    .as_deref()
                    .ok_or_else(|| KeyError::Invalid("`alg` is required".into()))?,
            )?;
            let is_secret = k.secret_file.is_some();
            if is_secret != (alg == jsonwebtoken::Algorithm::HS256) {
                return Err(KeyError::Invalid(
                    "HS256 keys come from `secret_file`; public-key algorithms from `pem`".into(),
                ));
            }
            let key = if is_secret {
                keys::load_secret(&resolve(pem))?
            } else {
                keys::load_pem(&resolve(pem), alg)?
            };
            keyset.insert(kid, VerificationKey { alg, key, issuer })
        }
        (None, None, Some(jwks)) => {
            if k.kid.is_some() || k.alg.is_some() {
                return Err(KeyError::Invalid(
                    "a JWKS file names its own `kid` and `alg`".into(),
                ));
            }
            for (kid, alg, key) in keys::load_jwks(&resolve(jwks))? {
                keyset.insert(&kid, VerificationKey { alg, key, issuer })?;
            }
            Ok(())
        }
        _ => Err(KeyError::Invalid(
            "set exactly one of `pem`, `secret_file` or `jwks`".into(),
        )),
    }
}

fn server_tls(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{} holds an unusable CA: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(roots)
}

fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "could not load a system CA certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(
        added,
        ignored,
        "loaded system CA certificates for https upstreams"
    );
    roots
}
