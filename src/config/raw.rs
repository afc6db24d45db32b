//! The YAML shape of `gateway.yaml`, exactly as an operator writes it.
//!
//! Every struct denies unknown fields: in an authentication gateway a misspelt key (`polcy:`)
//! silently falling back to a default is a security bug, so it is a load error instead.
//! Nothing here is used at request time; [`super::compile`] turns it into the runtime.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Sockets to accept client connections on.
    pub listeners: Vec<RawListener>,
    /// Where sessions, denylisted `jti`s and user revocations live.
    #[serde(default)]
    pub store: RawStore,
    /// Token issuers whose access tokens this gateway accepts.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    /// Where the access token is read from and how the verified-token cache behaves.
    #[serde(default)]
    pub tokens: RawTokens,
    /// Role name → the permissions it grants.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Named upstreams that routes forward to.
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Routing rules; the most specific match wins, independent of order.
    pub routes: Vec<RawRoute>,
    /// Names of the verified identity headers the upstream receives.
    #[serde(default)]
    pub identity_headers: RawIdentityHeaders,
    /// Peers whose `X-Forwarded-*` headers are believed (CIDR or single address).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Size, count and time limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Where browser navigations without a valid token are sent (optional; defaults to the
    /// login page when `auth` is configured).
    #[serde(default)]
    pub login_url: Option<String>,
    /// The gateway as a token issuer with its own login flow (`/auth/*`). Absent: the gateway
    /// only verifies tokens from `issuers`.
    #[serde(default)]
    pub auth: Option<RawAuth>,
    /// Where audit events go besides the log.
    #[serde(default)]
    pub audit: Option<RawAudit>,
    /// The admin listener: health, readiness, metrics and the admin API.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Forward-auth endpoints on the proxy listeners, for a front proxy (nginx, Traefik,
    /// Caddy, Envoy) that asks the gateway before it forwards.
    #[serde(default)]
    pub forward_auth: Vec<RawForwardAuth>,
}

/// One forward-auth endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    /// How the front proxy describes the original request: `nginx`, `forwarded` (Traefik,
    /// Caddy, generic `X-Forwarded-*`) or `envoy`.
    pub contract: String,
    /// The endpoint's path (`envoy`: a prefix); defaults per contract.
    #[serde(default)]
    pub path: Option<String>,
    /// Peers allowed to ask (CIDR or address); defaults to the top-level `trusted_proxies`,
    /// and one of the two must list someone.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
    /// Where refused browsers log in; defaults to the top-level `login_url`.
    #[serde(default)]
    pub login_url: Option<String>,
}

/// The admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `host:port`; keep it on loopback or a private network.
    pub bind: String,
    /// File holding the bearer secret of the admin API (at least 32 bytes). Without it the
    /// admin API is off; health, readiness and metrics are still served.
    #[serde(default)]
    pub token_file: Option<String>,
}

/// Audit sinks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// Append one JSON line per event to this file.
    #[serde(default)]
    pub file: Option<String>,
    /// Also add every event to a Redis stream.
    #[serde(default)]
    pub redis_stream: Option<RawAuditStream>,
    /// Repeated refusals from one client with one reason within this window are written for a
    /// burst, then counted (`0s`: every one written).
    #[serde(default)]
    pub aggregate_window: Option<String>,
}

/// A Redis stream for audit events.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuditStream {
    /// `redis://host:port/db` or `rediss://…`.
    pub url: String,
    /// The stream key (default `portcullis:audit`).
    #[serde(default)]
    pub key: Option<String>,
    /// Roughly how many events to keep (default 1,000,000).
    #[serde(default)]
    pub maxlen: Option<u64>,
}

/// The login flow and the tokens the gateway issues.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `iss` of the tokens the gateway mints (an `https://` URL naming this gateway).
    pub issuer: String,
    /// `aud` of the tokens the gateway mints.
    #[serde(default)]
    pub audience: Option<String>,
    /// The users file (YAML), reloaded when it changes. None: no password sign-in (only
    /// through `providers`).
    #[serde(default)]
    pub users_file: Option<String>,
    /// Private signing keys (PEM); the last listed signs, all verify. None: an ephemeral
    /// EdDSA key is generated at start (tokens die with the process; one instance only).
    #[serde(default)]
    pub signing_keys: Vec<RawSigningKey>,
    /// Access-token lifetime (≤ 15 minutes by default).
    #[serde(default)]
    pub access_ttl: Option<String>,
    /// A session without "remember me" ends when not refreshed for this long...
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// ...and this long after login, whatever happens.
    #[serde(default)]
    pub absolute_lifetime: Option<String>,
    /// The same two lifetimes with "remember me" (and the cookies become persistent).
    #[serde(default)]
    pub remember_me_idle_timeout: Option<String>,
    /// See `remember_me_idle_timeout`.
    #[serde(default)]
    pub remember_me_absolute_lifetime: Option<String>,
    /// How long after a rotation the old refresh token may be presented again by a concurrent
    /// request without being taken for reuse.
    #[serde(default)]
    pub refresh_grace: Option<String>,
    /// Where a login without a (safe) return path lands.
    #[serde(default)]
    pub default_redirect: Option<String>,
    /// Hosts an absolute `https://` return URL may name besides this gateway: exact
    /// (`app.example.com`, optional `:port`) or every subdomain (`*.example.com`).
    #[serde(default, alias = "return_hosts")]
    pub redirect_hosts: Vec<String>,
    /// The parent domain the access cookie is shared with (a central auth host for many
    /// subdomains): the cookie becomes `__Secure-` with `Domain=`. None: host-only cookies.
    #[serde(default)]
    pub cookie_domain: Option<String>,
    /// Login throttling.
    #[serde(default)]
    pub throttle: RawThrottle,
    /// `max-age` of the JWKS document.
    #[serde(default)]
    pub jwks_max_age: Option<String>,
    /// OpenID Providers browsers may sign in through (authorization code flow with PKCE).
    #[serde(default)]
    pub providers: Vec<RawProvider>,
}

/// An OpenID Provider browsers sign in through (`auth.providers[]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// A short name for URLs and the audit trail (`corp`): letters, digits, `-`, `_`.
    pub id: String,
    /// What the login page's button says after "Sign in with".
    pub name: String,
    /// The provider's `iss`: an `issuers:` entry with `discovery:` (whose document gives the
    /// endpoints, and whose keys verify the ID tokens).
    pub issuer: String,
    /// The client id registered at the provider.
    pub client_id: String,
    /// A file holding the client secret (surrounding whitespace ignored).
    pub client_secret_file: String,
    /// Scopes asked for; must include `openid` (default `[openid]`).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// How the ID token's claims become permissions, as an issuer's `permissions:`.
    #[serde(default)]
    pub permissions: Vec<RawPermissionSource>,
    /// Only users whose `email` is at one of these domains (and `email_verified` is true).
    #[serde(default)]
    pub email_domains: Vec<String>,
    /// Only users in every one of these groups (of `groups_claim`).
    #[serde(default)]
    pub required_groups: Vec<String>,
    /// The claim listing the user's groups (default `groups`).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// A file holding the 32-byte key (raw, or base64) that seals the provider's refresh
    /// tokens at rest; without it no refresh token is kept.
    #[serde(default)]
    pub refresh_token_key_file: Option<String>,
    /// How often at most the gateway refreshes a session against the provider (default 5m).
    #[serde(default)]
    pub provider_refresh_interval: Option<String>,
}

/// A private signing key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigningKey {
    /// EdDSA, ES256, RS256 or PS256.
    pub alg: String,
    /// PEM file with the private key (PKCS#8; PKCS#1 for RSA; SEC1 for EC).
    pub pem: String,
}

/// Login throttling: failed attempts counted in a fixed window.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawThrottle {
    /// Failed logins allowed per client IP per window.
    #[serde(default)]
    pub per_ip: Option<u32>,
    /// Failed logins allowed per (canonical) username per window.
    #[serde(default)]
    pub per_user: Option<u32>,
    /// The window.
    #[serde(default)]
    pub window: Option<String>,
}

/// One listening socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `host:port`; use port 0 for an ephemeral port.
    pub bind: String,
    /// Terminate TLS on this listener.
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// A TLS certificate for a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM file holding the certificate chain, leaf first.
    pub cert: String,
    /// PEM file holding the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// `Strict-Transport-Security` max-age; `0s` disables the header.
    #[serde(default)]
    pub hsts_max_age: Option<String>,
}

/// The session store: `kind`, and for `kind: redis` exactly one of `url`, `cluster` or
/// `sentinel` with the settings below.
///
/// One struct rather than an enum tagged by `kind`: serde reads a tagged enum's mapping into a
/// buffer first, and errors found in a buffer carry neither the key's path nor its line (and a
/// unit variant's buffer accepts any key at all). The Redis settings under `kind: memory` are
/// refused when compiled.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `memory` or `redis`; required when `store:` is written.
    pub kind: RawStoreKind,
    /// `redis://host:port/db` or `rediss://…` (TLS).
    #[serde(default)]
    pub url: Option<String>,
    /// Cluster seed nodes (`redis://host:port`).
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// Sentinel-monitored master.
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
    /// File holding the Redis password.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Prefix of every key and of the invalidation channel.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Longest a store operation may take before the request gets 503.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Positive verdicts kept in the local cache.
    #[serde(default)]
    pub cache_capacity: Option<u64>,
    /// Longest a positive verdict is kept locally (the safety net behind invalidation).
    #[serde(default)]
    pub cache_ttl: Option<String>,
    /// Longest a cached verdict is served after the invalidation channel was last heard from.
    #[serde(default)]
    pub max_staleness: Option<String>,
    /// What a detected loss of the store's data does: `refuse_earlier_tokens` or `unavailable`.
    #[serde(default)]
    pub on_data_loss: Option<String>,
    /// The deployment's first start: an epoch created at start cuts off no earlier token.
    #[serde(default)]
    pub first_start: Option<bool>,
    /// Replicas that must acknowledge each revoking write (`WAIT`); 0 waits for none.
    #[serde(default)]
    pub min_replicas_acks: Option<u32>,
    /// Longest a revoking write waits for those acknowledgements.
    #[serde(default)]
    pub replica_ack_timeout: Option<String>,
}

impl RawStore {
    /// The Redis settings written, by name, for refusing them under `kind: memory`.
    pub fn redis_keys_written(&self) -> impl Iterator<Item = &'static str> {
        [
            ("url", self.url.is_some()),
            ("cluster", self.cluster.is_some()),
            ("sentinel", self.sentinel.is_some()),
            ("password_file", self.password_file.is_some()),
            ("key_prefix", self.key_prefix.is_some()),
            ("timeout", self.timeout.is_some()),
            ("cache_capacity", self.cache_capacity.is_some()),
            ("cache_ttl", self.cache_ttl.is_some()),
            ("max_staleness", self.max_staleness.is_some()),
            ("on_data_loss", self.on_data_loss.is_some()),
            ("first_start", self.first_start.is_some()),
            ("min_replicas_acks", self.min_replicas_acks.is_some()),
            ("replica_ack_timeout", self.replica_ack_timeout.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, written)| written.then_some(name))
    }
}

/// Which session store.
#[derive(Debug, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawStoreKind {
    /// In-process maps: one instance only, lost on restart.
    #[default]
    Memory,
    /// Redis, shared by every instance.
    Redis,
}

/// Sentinel settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    /// The master name the sentinels monitor.
    pub master: String,
    /// Sentinel addresses (`redis://host:26379`).
    pub nodes: Vec<String>,
}

/// One trusted issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// The exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Verification keys from files, each bound to one algorithm.
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// The provider's `.well-known/openid-configuration` URL: its `jwks_uri` is fetched, and
    /// its `issuer` must equal `issuer` byte for byte.
    #[serde(default)]
    pub discovery: Option<String>,
    /// A JWKS URL fetched directly (instead of `discovery`).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// A PEM bundle of CA certificates trusted for `discovery`/`jwks_uri` instead of the
    /// system's roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// The algorithms a fetched key may verify; a JWK without `alg` takes the one of these its
    /// key type allows (exactly one per key type).
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// How the remote key set is fetched and refreshed.
    #[serde(default)]
    pub fetch: Option<RawFetch>,
    /// When true (the default), `sid` is required and must name a live session in the store.
    #[serde(default)]
    pub require_session: Option<bool>,
    /// Longest accepted `exp - iat`; longer-lived tokens are refused.
    #[serde(default)]
    pub max_lifetime: Option<String>,
    /// Accepted `typ` header values (default `[at+jwt]`; `none`: no `typ`).
    #[serde(default)]
    pub token_types: Option<Vec<String>>,
    /// Whether `jti` is required (default true).
    #[serde(default)]
    pub require_jti: Option<bool>,
    /// Accepted `azp` (else `client_id`) values; absent: not checked.
    #[serde(default)]
    pub clients: Option<Vec<String>>,
    /// The claim path that names the subject (default `sub`).
    #[serde(default)]
    pub subject_claim: Option<String>,
    /// Where permissions come from; absent: the `roles` claim through `roles:`.
    #[serde(default)]
    pub permissions: Option<Vec<RawPermissionSource>>,
    /// Claim path → extra identity header name.
    #[serde(default)]
    pub identity_claims: BTreeMap<String, String>,
}

/// How an issuer's remote key set is fetched (`issuers[].fetch`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFetch {
    /// Longest wait for the TCP (and TLS) connection (default 5s).
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Longest wait for the whole response, head and body (default 10s).
    #[serde(default)]
    pub read_timeout: Option<String>,
    /// Largest document accepted (default 1 MiB).
    #[serde(default)]
    pub max_bytes: Option<RawSize>,
    /// Shortest interval between background refreshes, whatever `Cache-Control` says
    /// (default 5m).
    #[serde(default)]
    pub min_refresh: Option<String>,
    /// Longest interval between background refreshes (default 24h).
    #[serde(default)]
    pub max_refresh: Option<String>,
    /// Least time between two fetches caused by tokens with an unknown `kid` (default 30s).
    #[serde(default)]
    pub unknown_kid_cooldown: Option<String>,
}

/// One entry of an issuer's `permissions:`: a claim path and either `via: roles` or a
/// `prefix:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermissionSource {
    /// The claim path (`realm_access.roles`, `scope`).
    pub claim: String,
    /// `roles`: values are role names mapped through `roles:`.
    #[serde(default)]
    pub via: Option<String>,
    /// Values are permissions, with this prefix.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// A verification key: a PEM file with its algorithm and id, or a local JWKS file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// Key id matched against the token's `kid` (required with `pem`/`secret_file`).
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies: EdDSA, ES256, RS256, PS256 or HS256.
    #[serde(default)]
    pub alg: Option<String>,
    /// Public key PEM file (SPKI, or PKCS#1 for RSA).
    #[serde(default)]
    pub pem: Option<String>,
    /// File holding the raw HS256 secret (at least 32 bytes).
    #[serde(default)]
    pub secret_file: Option<String>,
    /// A JWKS file; each key in it must carry `kid` and `alg`.
    #[serde(default)]
    pub jwks: Option<String>,
}

/// Token sources and the verified-token cache.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// Name of the HttpOnly cookie carrying the access token.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[serde(default)]
    pub leeway: Option<String>,
    /// Longest accepted token, in bytes.
    #[serde(default)]
    pub max_bytes: Option<RawSize>,
    /// How many verified tokens the cache keeps.
    #[serde(default)]
    pub cache_capacity: Option<u64>,
}

/// A byte count written as a number or with a unit (`64KiB`, `1MiB`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawSize {
    /// Plain bytes.
    Bytes(u64),
    /// With a unit suffix.
    Text(String),
}

/// An upstream: a real HTTP(S) origin, or the built-in echo service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port[/base]` or `https://…`.
    #[serde(default)]
    pub url: Option<String>,
    /// The built-in echo service: answers with what it received, as JSON.
    #[serde(default)]
    pub echo: Option<bool>,
    /// `http1` (default) or `h2`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// TCP connect timeout.
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Time to wait for the response head.
    #[serde(default)]
    pub response_timeout: Option<String>,
    /// How long an idle pooled connection is kept.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Idle connections kept per upstream host.
    #[serde(default)]
    pub max_idle_per_host: Option<usize>,
    /// Send the client's `Host` instead of the upstream's authority.
    #[serde(default)]
    pub preserve_host: Option<bool>,
    /// PEM bundle of CAs trusted for an `https://` upstream instead of the system roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// A signed identity assertion (JWT) sent with every request that has an identity.
    #[serde(default)]
    pub assertion: Option<RawAssertion>,
}

/// A signed identity assertion for a backend: `{ audience, ttl, header }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    /// `aud` of the assertion: the backend, never an access-token audience.
    pub audience: String,
    /// Lifetime, at most 60 s (default 60 s).
    #[serde(default)]
    pub ttl: Option<String>,
    /// The header it goes in (default `X-Auth-Assertion`).
    #[serde(default)]
    pub header: Option<String>,
}

/// A route's `assertion:`: its own settings in place of its upstream's, or `false` for none.
#[derive(Debug)]
pub enum RawRouteAssertion {
    /// `false`: no assertion on this route, whatever its upstream says.
    Off,
    /// The route's own settings.
    On(RawAssertion),
}

impl<'de> Deserialize<'de> for RawRouteAssertion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct AssertionVisitor;
        impl<'de> serde::de::Visitor<'de> for AssertionVisitor {
            type Value = RawRouteAssertion;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`false` or `{ audience: ..., ttl: ..., header: ... }`")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawRouteAssertion, E> {
                if v {
                    return Err(E::custom(
                        "`true` is not a setting: the upstream's assertion applies unless the \
                         route says `false` or writes its own `{ audience: ... }`",
                    ));
                }
                Ok(RawRouteAssertion::Off)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawRouteAssertion, A::Error> {
                RawAssertion::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawRouteAssertion::On)
            }
        }
        d.deserialize_any(AssertionVisitor)
    }
}

/// One routing rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Stable name used in logs and audit events; defaults to `route-N`.
    #[serde(default)]
    pub id: Option<String>,
    /// Exact host or `*.example.com`; absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Segment-respecting path prefix.
    pub path: String,
    /// Allowed methods; absent allows all. `GET` implies `HEAD`.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Name of an entry in `upstreams`. Absent: the route is only decided for forward-auth,
    /// and a proxied request to it is answered 404.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Who may pass.
    pub policy: RawPolicy,
    /// Largest request body accepted on this route.
    #[serde(default)]
    pub max_body: Option<RawSize>,
    /// Pass the client's `Authorization` header to the upstream (off by default).
    #[serde(default)]
    pub forward_authorization: Option<bool>,
    /// Forward well-formed WebSocket handshakes (on by default).
    #[serde(default)]
    pub websocket: Option<bool>,
    /// Write an `access.granted` audit event for every request this route lets through.
    #[serde(default)]
    pub audit: Option<bool>,
    /// This route's identity assertion, in place of its upstream's; `false`: none.
    #[serde(default)]
    pub assertion: Option<RawRouteAssertion>,
}

/// A route's access policy: `public`, `authenticated`, `{ all_of: [...] }` or `{ any_of: [...] }`.
#[derive(Debug)]
pub enum RawPolicy {
    /// No credential needed.
    Public,
    /// Any valid token with a live session.
    Authenticated,
    /// Every listed permission.
    AllOf(Vec<String>),
    /// At least one listed permission.
    AnyOf(Vec<String>),
}

const POLICY_FORMS: &str = "`public`, `authenticated`, `{ all_of: [...] }` or `{ any_of: [...] }`";

impl<'de> Deserialize<'de> for RawPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PolicyVisitor;
        impl<'de> serde::de::Visitor<'de> for PolicyVisitor {
            type Value = RawPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(POLICY_FORMS)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPolicy, E> {
                match v {
                    "public" => Ok(RawPolicy::Public),
                    "authenticated" => Ok(RawPolicy::Authenticated),
                    other => Err(E::custom(format!(
                        "unknown policy `{other}`, expected {POLICY_FORMS}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawPolicy, A::Error> {
                use serde::de::Error;
                let key: String = map.next_key()?.ok_or_else(|| {
                    A::Error::custom(format!("empty policy, expected {POLICY_FORMS}"))
                })?;
                let policy = match key.as_str() {
                    "all_of" => RawPolicy::AllOf(map.next_value()?),
                    "any_of" => RawPolicy::AnyOf(map.next_value()?),
                    other => {
                        return Err(A::Error::custom(format!(
                            "unknown policy `{other}`, expected {POLICY_FORMS}"
                        )));
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(
                        "a policy has exactly one of `all_of` or `any_of`",
                    ));
                }
                Ok(policy)
            }
        }
        d.deserialize_any(PolicyVisitor)
    }
}

/// Names of the identity headers sent upstream.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentityHeaders {
    /// The verified `sub`.
    #[serde(default)]
    pub subject: Option<String>,
    /// The verified `sid`.
    #[serde(default)]
    pub session: Option<String>,
    /// Comma-separated permissions.
    #[serde(default)]
    pub permissions: Option<String>,
    /// More client-sent headers to remove, besides the built-in list: names, or prefixes
    /// ending in `*`; any case, `_` for `-`.
    #[serde(default)]
    pub strip: Vec<String>,
}

/// Resource limits.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request head (request line and headers).
    #[serde(default)]
    pub max_header_bytes: Option<RawSize>,
    /// Most header fields in one request.
    #[serde(default)]
    pub max_headers: Option<usize>,
    /// Default largest request body for routes that set none.
    #[serde(default)]
    pub max_body: Option<RawSize>,
    /// Concurrent client connections across all listeners.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Concurrent client connections from one client address (0: no cap).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Time allowed to send the request head (and the TLS handshake).
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// A client connection with no new request for this long is closed gracefully.
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Longest wait for the next part of a request body.
    #[serde(default)]
    pub body_read_timeout: Option<String>,
    /// Slowest accepted request body, in bytes per second of waiting for it (0: no minimum).
    #[serde(default)]
    pub body_min_rate: Option<RawSize>,
    /// Waiting allowed before `body_min_rate` applies.
    #[serde(default)]
    pub body_min_rate_grace: Option<String>,
    /// Longest total wait for a whole request body (unset: none).
    #[serde(default)]
    pub body_deadline: Option<String>,
    /// Concurrent HTTP/2 streams per connection.
    #[serde(default)]
    pub h2_max_concurrent_streams: Option<u32>,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(default)]
    pub shutdown_grace: Option<String>,
}
