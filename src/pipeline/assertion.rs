//! Part of stage 6, **mutate**: the signed identity assertion a backend can verify instead of
//! trusting the network between it and the gateway (docs/security.md 42).
//!
//! On a route with an assertion (`upstreams.<name>.assertion`, or the route's own), the
//! upstream receives, besides the identity headers, a JWT signed with the gateway's current
//! signing key (`kid` in its header, so it verifies through the gateway's JWKS):
//!
//! ```json
//! {"iss": "<auth.issuer>", "aud": "<the upstream's audience>", "sub": "alice",
//!  "sid": "…", "permissions": ["docs:read"], "iat": 1700000000, "exp": 1700000060,
//!  "jti": "<128 random bits, base64url>"}
//! ```
//!
//! Its JOSE `typ` is [`ASSERTION_TYP`], not `at+jwt`, and its audience is never one the gateway
//! accepts access tokens for (the config refuses that), so it can never be used as an access
//! token, here or at another service that takes the gateway's tokens. `exp` is `iat + ttl`
//! (`ttl` ≤ 60 s), and never later than the access token's own `exp`.
//!
//! [`Assertions`] mints them and caches them by (access token, audience), so requests with a
//! token seen moments ago cost no signature: an assertion is served again while at least half
//! its lifetime is left (a backend never receives one that expires within `ttl/2`, unless the
//! access token itself does), its permissions are still the identity's, and it was not issued
//! after `now`. It is only ever asked for after identify accepted the request, so a revoked
//! session or a disabled user gets none, cached or not. Time is the caller's `now`, read from
//! the gateway's clock; cache eviction, which only frees memory, runs on moka's own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use serde::Serialize;

use crate::keys::signing::SigningKeys;
use crate::metrics::Metrics;
use crate::pipeline::identify::Identity;

/// The JOSE `typ` of an assertion: not `at+jwt`, so no verifier of access tokens (the gateway's
/// verify stage first) takes one for an access token (RFC 8725 §3.11).
pub const ASSERTION_TYP: &str = "portcullis-assertion+jwt";

/// The header an assertion goes in unless configured otherwise.
pub const DEFAULT_HEADER: HeaderName = HeaderName::from_static("x-auth-assertion");

/// The longest lifetime an assertion may be given.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// Which audience (with its lifetime) an assertion is minted for: an index into the
/// [`AudienceTable`] the routes were compiled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudienceId(u32);

/// A route's assertion, resolved when the config is compiled (the route's own setting, else
/// its upstream's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSpec {
    /// The audience and lifetime.
    pub audience: AudienceId,
    /// The header it goes in.
    pub header: HeaderName,
}

#[derive(Debug, PartialEq, Eq)]
struct Audience {
    aud: Box<str>,
    /// Seconds.
    ttl: i64,
}

/// The distinct (audience, ttl) pairs the config names, and every header name an assertion
/// may go in (all of them stripped from client requests on every route).
#[derive(Debug, Default)]
pub struct AudienceTable {
    audiences: Vec<Audience>,
    headers: Vec<HeaderName>,
}

impl AudienceTable {
    /// The spec for an assertion to `aud` living `ttl` (whole seconds, at most [`MAX_TTL`]),
    /// sent in `header`. The same audience and ttl written twice share one id, and so one cache.
    pub fn spec(&mut self, aud: &str, ttl: Duration, header: HeaderName) -> AssertionSpec {
        let wanted = Audience {
            aud: aud.into(),
            ttl: ttl.min(MAX_TTL).as_secs() as i64,
        };
        let index = match self.audiences.iter().position(|a| *a == wanted) {
            Some(i) => i,
            None => {
                self.audiences.push(wanted);
                self.audiences.len() - 1
            }
        };
        if !self.headers.contains(&header) {
            self.headers.push(header.clone());
        }
        AssertionSpec {
            // A config names far fewer than 2^32 audiences.
            audience: AudienceId(index as u32),
            header,
        }
    }

    /// Whether no assertion is configured.
    pub fn is_empty(&self) -> bool {
        self.audiences.is_empty()
    }

    /// Every header name an assertion may go in.
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }
}

/// A minted assertion, as cached.
#[derive(Debug)]
struct Minted {
    value: HeaderValue,
    iat: i64,
    exp: i64,
    /// The permissions it lists, as the identity's header: a change of the user's roles is a
    /// new assertion at once.
    permissions: HeaderValue,
}

/// The claims of an assertion, in this order.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sid: Option<&'a str>,
    permissions: Vec<&'a str>,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Mints assertions with the gateway's signing keys and caches them; one per runtime, so a
/// reload (new keys, new audiences) starts with an empty cache.
pub struct Assertions {
    issuer: Box<str>,
    signing: Arc<SigningKeys>,
    audiences: Box<[Audience]>,
    /// Keyed by the SHA-256 of the access token (not its `sid` or `jti`, which another issuer
    /// could repeat for another subject) and the audience.
    cache: moka::sync::Cache<([u8; 32], AudienceId), Arc<Minted>>,
}

impl std::fmt::Debug for Assertions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertions")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Assertions {
    /// Assertions for the audiences of `table`, issued as `issuer` (`auth.issuer`) and signed
    /// with the current key of `signing`; at most `capacity` cached.
    pub fn new(
        table: AudienceTable,
        signing: Arc<SigningKeys>,
        issuer: &str,
        capacity: u64,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            signing,
            audiences: table.audiences.into_boxed_slice(),
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                // Memory only: no entry is served past `ttl/2` anyway, which `now` decides.
                .time_to_live(MAX_TTL)
                .build(),
        }
    }

    /// The assertion for `identity` to `audience` at `now` (the instant identify accepted the
    /// request): a cached one while it is fresh enough, else a new one. `None` only if the
    /// audience is unknown or signing failed (logged); the proxy then refuses the request
    /// with 500 rather than forward it without the assertion its route promises. Counted
    /// into `metrics` as minted or cached.
    pub fn header_for(
        &self,
        audience: AudienceId,
        identity: &Identity,
        now: i64,
        metrics: &Metrics,
    ) -> Option<HeaderValue> {
        let aud = self.audiences.get(audience.0 as usize)?;
        let token = identity.token();
        let permissions = identity.headers().permissions;
        let key = (token.token_key, audience);
        if let Some(hit) = self.cache.get(&key)
            && fresh(&hit, aud.ttl, token.expires_at, now)
            && hit.permissions == *permissions
        {
            metrics.assertions_cached.fetch_add(1, Ordering::Relaxed);
            return Some(hit.value.clone());
        }
        let mut jti = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut jti).is_err() {
            tracing::error!("the OS CSPRNG failed: no identity assertion sent");
            return None;
        }
        // Never past the token's own `exp`; but a token still accepted within the clock-skew
        // leeway after it must not get an assertion born expired (re-signed on every request).
        let exp = now
            .saturating_add(aud.ttl)
            .min(token.expires_at)
            .max(now.saturating_add(1));
        let claims = Claims {
            iss: &self.issuer,
            aud: &aud.aud,
            // The user as the gateway knows them: `alice` of the users file, or
            // `<iss>#<sub>` of another issuer, so a backend that trusts `sub` cannot take
            // a provider's self-registered `alice` for the users file's.
            sub: &token.user,
            // A gateway session only: another issuer's `sid` names none of the gateway's.
            sid: identity
                .is_own()
                .then_some(token.session.as_deref())
                .flatten(),
            permissions: permissions
                .to_str()
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.is_empty())
                .collect(),
            iat: now,
            exp,
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let signed = match self.signing.current().sign_as(ASSERTION_TYP, &claims) {
            Ok(signed) => signed,
            Err(error) => {
                tracing::error!(%error, "could not sign an identity assertion: none sent");
                return None;
            }
        };
        // base64url and dots: always a valid header value.
        let value = HeaderValue::from_str(&signed).ok()?;
        self.cache.insert(
            key,
            Arc::new(Minted {
                value: value.clone(),
                iat: now,
                exp,
                permissions: permissions.clone(),
            }),
        );
        metrics.assertions_minted.fetch_add(1, Ordering::Relaxed);
        Some(value)
    }
}

/// Whether `minted` may be sent again at `now`: issued no later than `now`, and at least half
/// of `ttl` left — or, when its `exp` is already the access token's (`token_exp`), a new one
/// could not live longer, so any time left.
fn fresh(minted: &Minted, ttl: i64, token_exp: i64, now: i64) -> bool {
    let left = minted.exp - now;
    minted.iat <= now && left > 0 && (2 * left >= ttl || minted.exp >= token_exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minted(iat: i64, exp: i64) -> Minted {
        Minted {
            value: HeaderValue::from_static("a.b.c"),
            iat,
            exp,
            permissions: HeaderValue::from_static(""),
        }
    }

    #[test]
    fn an_assertion_is_served_again_only_while_half_its_ttl_is_left() {
        let m = minted(1000, 1060);
        let token_exp = 5000;
        assert!(fresh(&m, 60, token_exp, 1000));
        assert!(fresh(&m, 60, token_exp, 1030), "exactly half left");
        assert!(!fresh(&m, 60, token_exp, 1031), "less than half left");
        assert!(!fresh(&m, 60, token_exp, 999), "issued after now");
        // Capped at the access token's exp: a new one would not live longer, so it is reused
        // until it expires, and never after.
        let capped = minted(1000, 1020);
        assert!(fresh(&capped, 60, 1020, 1019));
        assert!(!fresh(&capped, 60, 1020, 1020));
        // A one-second ttl is never served at or after its exp.
        assert!(fresh(&minted(1000, 1001), 1, token_exp, 1000));
        assert!(!fresh(&minted(1000, 1001), 1, token_exp, 1001));
    }

    #[test]
    fn one_audience_and_ttl_written_twice_is_one_cache_and_every_header_is_listed() {
        let mut table = AudienceTable::default();
        let other = HeaderName::from_static("x-backend-jwt");
        let a = table.spec("https://a.example", MAX_TTL, DEFAULT_HEADER);
        let b = table.spec("https://a.example", MAX_TTL, other.clone());
        let c = table.spec("https://a.example", Duration::from_secs(30), DEFAULT_HEADER);
        assert_eq!(a.audience, b.audience);
        assert_ne!(a.audience, c.audience);
        assert_eq!(table.headers(), [DEFAULT_HEADER, other]);
    }
}
