//! Stage 3, **verify**: turn an access-token string into verified claims.
//!
//! Runs after the credential stage found a token, for every route that is not public.
//! `Ok` means the signature was made by a configured key with the algorithm that key is pinned
//! to, the token's `typ` is one its issuer accepts (`at+jwt` unless `token_types` says more),
//! and `iss`, `aud`, `exp`, `nbf`, `iat`, the subject claim (`sub` unless `subject_claim`
//! says otherwise), `jti` (unless the issuer sets `require_jti: false`), `azp`/`client_id`
//! (when the issuer lists `clients`) and `sid` (where the issuer requires sessions) all check
//! out at `now`. Its permissions and extra identity headers are then read from its claims
//! through the issuer's profile ([`crate::pipeline::claims`]), once, and cached with it.
//! `Err` is always a 401: the stage never falls through to another credential.
//!
//! Keys are looked up by `kid` in the key set as it is at that moment: the file keys and the
//! remote key sets of issuers by discovery or JWKS URI ([`crate::keys::remote`]). An unknown
//! `kid` is refused here without any fetch; whether it is worth one refetch is identify's
//! decision, for which [`unverified_issuer`] reads the `iss` a token claims.
//!
//! It must not touch the session store (stage 4) nor the request. It does more than
//! `jsonwebtoken` does on its own: `crit` is refused, `typ` is required, duplicate JSON members
//! are refused, base64url must be canonical, `aud`/`nbf` are always checked, and the key — never
//! the token — decides the algorithm.
//!
//! A token's signature is checked once: [`TokenCache`] keeps verified tokens (keyed by the
//! SHA-256 of the token, so a re-encoded signature is a different, unverified entry) until
//! their `exp`, and concurrent first sights of one token share one verification. A token whose
//! refusal cost a signature check is remembered as failed for [`FAILED_TTL`] in a separate,
//! smaller cache, so the same forged token sent again costs no second check, and a flood of
//! forged or expired tokens evicts no verified one: each distinct forgery costs at most one
//! failed signature check (`portcullis_token_signature_checks_total` counts them all).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::keys::{KeySet, VerificationKey, algorithm_name};
use crate::metrics::Metrics;
use crate::pipeline::authorize::{PermissionSet, PermissionTable};

/// Why a token was refused. Every variant is a 401; the reason id goes to logs and audit only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than `tokens.max_bytes`.
    #[error("token is too large")]
    TooLarge,
    /// Not three canonical base64url segments of JSON objects.
    #[error("token is malformed")]
    Malformed,
    /// A JSON object in the header or payload names the same member twice.
    #[error("token has duplicate JSON members")]
    DuplicateMember,
    /// `crit` is present: we implement no extensions, so none can be critical.
    #[error("token has a crit header")]
    CriticalHeader,
    /// A nested JWT (`cty: JWT`).
    #[error("token is a nested JWT")]
    Nested,
    /// `typ` is absent or not one of the issuer's `token_types` (`at+jwt` by default).
    #[error("token is not an access token")]
    WrongType,
    /// `azp` (else `client_id`) is missing or not one of the issuer's `clients`.
    #[error("token client is not accepted")]
    WrongClient,
    /// No `kid`, or a `kid` no configured key has.
    #[error("token key id is unknown")]
    UnknownKey,
    /// `alg` differs from the algorithm the key is pinned to.
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// An ES256 signature with `s > n/2`: the second, malleated spelling of a signature
    /// (docs/security.md 12). Refused whether or not it verifies.
    #[error("token signature is not in low-S form")]
    HighS,
    /// A required claim is missing or has the wrong type.
    #[error("token claim is missing or malformed")]
    MissingClaim,
    /// `iss` is not the issuer the key belongs to.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` names none of the accepted audiences.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// `exp` has passed.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` is in the future, after `exp`, or the lifetime exceeds the issuer's maximum.
    #[error("token issue time is not sane")]
    BadIssuedAt,
}

impl TokenError {
    /// A stable identifier for logs, metrics and audit events.
    pub fn reason_id(self) -> &'static str {
        match self {
            TokenError::TooLarge => "token.too_large",
            TokenError::Malformed => "token.malformed",
            TokenError::DuplicateMember => "token.duplicate_member",
            TokenError::CriticalHeader => "token.crit",
            TokenError::Nested => "token.nested",
            TokenError::WrongType => "token.typ",
            TokenError::WrongClient => "token.client",
            TokenError::UnknownKey => "token.unknown_kid",
            TokenError::AlgorithmMismatch => "token.alg_mismatch",
            TokenError::BadSignature => "token.bad_signature",
            TokenError::HighS => "token.ecdsa_high_s",
            TokenError::MissingClaim => "token.claim_missing",
            TokenError::WrongIssuer => "token.issuer",
            TokenError::WrongAudience => "token.audience",
            TokenError::Expired => "token.expired",
            TokenError::NotYetValid => "token.not_yet_valid",
            TokenError::BadIssuedAt => "token.iat",
        }
    }
}

/// The verified facts about a token, as the later stages need them. Header values are
/// prepared once here so that forwarding a cached token allocates nothing for them.
#[derive(Debug)]
pub struct VerifiedToken {
    /// SHA-256 of the token string: the key of cached verdicts about it.
    pub token_key: [u8; 32],
    /// SHA-256 of issuer and `jti`: the denylist key. For a token without `jti` (an issuer with
    /// `require_jti: false`) the token's own [`token_key`](Self::token_key), which no denylist
    /// entry can name: such a token is revoked with its user or session, never alone.
    pub jti_key: [u8; 32],
    /// The subject: `sub`, or the issuer's `subject_claim`.
    pub subject: Box<str>,
    /// The name the store knows the user by ([`crate::keys::Issuer::user_key`]): the subject
    /// for the gateway's own issuer, `<iss>#<subject>` for any other.
    pub user: Box<str>,
    /// `sid`, when present.
    pub session: Option<Box<str>>,
    /// `jti`; empty when the token has none (only for an issuer with `require_jti: false`).
    pub jti: Box<str>,
    /// Index of the issuer in the key set.
    pub issuer: usize,
    /// The `kid` of the key that verified it: when a remote key set drops that key, the
    /// token leaves the cache ([`TokenCache::forget_keys`]).
    pub kid: Box<str>,
    /// `iat`, seconds since the epoch.
    pub issued_at: i64,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// `nbf`, when present.
    pub not_before: Option<i64>,
    /// Whether the session store must know `sid`.
    pub require_session: bool,
    /// Permissions granted by the token's roles under the current config.
    pub permissions: PermissionSet,
    /// `sub` as a header value.
    pub subject_header: HeaderValue,
    /// `sid` as a header value (empty when absent).
    pub session_header: HeaderValue,
    /// The permissions, comma-separated, as a header value.
    pub permissions_header: HeaderValue,
    /// The extra identity headers of the issuer's `identity_claims`, with this token's values.
    pub identity_claims: Box<[(HeaderName, HeaderValue)]>,
    /// A gateway token of a session signed in through an OpenID Provider: its permissions are
    /// the token's, mapped from the provider's claims at login, not a users-file user's.
    pub provider_login: bool,
}

/// Verification settings compiled from `issuers:` and `tokens:`.
#[derive(Debug)]
pub struct Verifier {
    /// Keys by `kid`, and their issuers.
    pub keys: KeySet,
    /// Clock skew tolerated, in seconds.
    pub leeway: i64,
    /// Longest accepted token.
    pub max_bytes: usize,
}

/// The stage's entry point: a cached verdict when there is one, else a full verification.
///
/// A token's first sight costs one signature check, however many requests carry it at once:
/// concurrent misses on one token share a single verification (moka's `try_get_with`). A token
/// that fails verification never enters the verified-token cache, so a flood of forged or
/// expired tokens cannot evict verified ones nor grow that cache. A failure that cost a
/// signature check is remembered for [`FAILED_TTL`] in the failed-token cache, so each distinct
/// forged token costs at most one failed signature check however often it is sent (and none
/// for a token refused before its signature is looked at: malformed, unknown `kid`, wrong
/// `alg`). Hits, misses and signature checks are counted into `metrics`, the gateway's.
pub fn verify(
    token: &str,
    verifier: &Verifier,
    cache: &TokenCache,
    permissions: &PermissionTable,
    now: i64,
    metrics: &Metrics,
) -> Result<Arc<VerifiedToken>, TokenError> {
    if token.len() > verifier.max_bytes {
        return Err(TokenError::TooLarge);
    }
    let key = cache_key(token);
    // The hot path: a plain lookup (`try_get_with` below would allocate even on a hit).
    if let Some(hit) = cache.inner.get(&key) {
        metrics.token_cache_hits.fetch_add(1, Ordering::Relaxed);
        // The cache only bounds work; validity in time is re-checked on every use.
        check_time(hit.expires_at, hit.not_before, verifier.leeway, now)?;
        return Ok(hit);
    }
    if let Some(failed) = cache.failed.get(&key) {
        metrics
            .token_cache_failed_hits
            .fetch_add(1, Ordering::Relaxed);
        return Err(failed);
    }
    metrics.token_cache_misses.fetch_add(1, Ordering::Relaxed);
    // moka runs at most one `init` per key at a time: concurrent first sights of this token wait
    // for it (blocking their threads for one signature check at most, ≤ 70 µs; `init` never
    // awaits, so it always finishes) and share its outcome — the inserted token, or the same
    // error. An `Err` is never inserted here, and moka does not remember it once the callers
    // have it: `init` itself records it in `failed` before returning, and looks there first, so
    // a caller that missed `failed` just before another's `init` finished costs no second check.
    let verified = cache
        .inner
        .try_get_with(key, || {
            if let Some(failed) = cache.failed.get(&key) {
                return Err(failed);
            }
            let checks = AtomicU64::new(0);
            let outcome =
                verify_inner(token, verifier, permissions, now, false, Some(key), &checks);
            let checked = checks.load(Ordering::Relaxed);
            metrics
                .token_signature_checks
                .fetch_add(checked, Ordering::Relaxed);
            if let Err(e) = outcome
                && checked > 0
                && remember_failure(e)
            {
                cache.failed.insert(key, e);
            }
            outcome.map(Arc::new)
        })
        .map_err(|e| *e)?;
    // A caller that waited got a token verified at another caller's `now`.
    check_time(
        verified.expires_at,
        verified.not_before,
        verifier.leeway,
        now,
    )?;
    Ok(verified)
}

/// Whether a refusal that cost a signature check may be answered again from the failed-token
/// cache. Every refusal of a token's bytes under one runtime is final, except those a later
/// clock could lift: `nbf` still ahead, or `iat` in the future (one [`TokenError`] covers that
/// and an overlong lifetime). Those come from tokens a trusted key signed, so re-checking them
/// is not a forger's lever. `Expired` stays expired. Exhaustive on purpose: a new error must
/// say whether it depends on the time.
fn remember_failure(e: TokenError) -> bool {
    match e {
        TokenError::NotYetValid | TokenError::BadIssuedAt => false,
        TokenError::TooLarge
        | TokenError::Malformed
        | TokenError::DuplicateMember
        | TokenError::CriticalHeader
        | TokenError::Nested
        | TokenError::WrongType
        | TokenError::UnknownKey
        | TokenError::AlgorithmMismatch
        | TokenError::BadSignature
        | TokenError::HighS
        | TokenError::MissingClaim
        | TokenError::WrongIssuer
        | TokenError::WrongAudience
        | TokenError::WrongClient
        | TokenError::Expired => true,
    }
}

/// The `iss` a token claims, read without verifying anything: only to choose which remote
/// issuer's key set an unknown `kid` may be refetched from (identify). Never trusted: the
/// token is then verified as any other, and its `iss` must be its key's issuer.
pub fn unverified_issuer(token: &str, max_bytes: usize) -> Option<String> {
    if token.len() > max_bytes {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let claims = parse_object(&decode_segment(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

fn cache_key(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// Full verification, no cache, counted nowhere. Public for benchmarks and tests of the cold
/// path; requests go through [`verify`].
pub fn verify_uncached(
    token: &str,
    verifier: &Verifier,
    permissions: &PermissionTable,
    now: i64,
) -> Result<VerifiedToken, TokenError> {
    let checks = AtomicU64::new(0);
    verify_inner(token, verifier, permissions, now, false, None, &checks)
}

/// Every check of [`verify_uncached`] except expiry: for telling whose token an expired one
/// is (the refresh endpoint refuses a refresh token next to another user's access token,
/// expired or not). Never use the result to let a request through.
pub fn verify_ignoring_expiry(
    token: &str,
    verifier: &Verifier,
    permissions: &PermissionTable,
    now: i64,
    metrics: &Metrics,
) -> Result<VerifiedToken, TokenError> {
    let checks = &metrics.token_signature_checks;
    verify_inner(token, verifier, permissions, now, true, None, checks)
}

/// Every check; `token_key` is the token's [`cache_key`] when the caller already has it, and
/// `signature_checks` counts the signature verifications performed.
fn verify_inner(
    token: &str,
    verifier: &Verifier,
    permissions: &PermissionTable,
    now: i64,
    ignore_expiry: bool,
    token_key: Option<[u8; 32]>,
    signature_checks: &AtomicU64,
) -> Result<VerifiedToken, TokenError> {
    let (key_issuer, kid, claims) =
        signed_claims(token, verifier, Expect::Access, signature_checks)?;
    let issuer = &verifier.keys.issuers[key_issuer];
    let kid = &*kid;
    let iss = claim_str(&claims, "iss")?;
    if iss != &*issuer.iss {
        return Err(TokenError::WrongIssuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => issuer.audiences.iter().any(|a| **a == *aud),
        Some(Value::Array(auds)) => auds.iter().any(|aud| {
            aud.as_str()
                .is_some_and(|aud| issuer.audiences.iter().any(|a| **a == *aud))
        }),
        None => return Err(TokenError::MissingClaim),
        Some(_) => return Err(TokenError::MissingClaim),
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience);
    }
    let expires_at = numeric_date(claims.get("exp"))?.ok_or(TokenError::MissingClaim)?;
    let issued_at = numeric_date(claims.get("iat"))?.ok_or(TokenError::MissingClaim)?;
    let not_before = numeric_date(claims.get("nbf"))?;
    match check_time(expires_at, not_before, verifier.leeway, now) {
        Err(TokenError::Expired) if ignore_expiry => {}
        checked => checked?,
    }
    let lifetime = expires_at.saturating_sub(issued_at);
    if issued_at > now + verifier.leeway
        || lifetime <= 0
        || lifetime as u64 > issuer.max_lifetime.as_secs()
    {
        return Err(TokenError::BadIssuedAt);
    }

    let profile = &issuer.profile;
    if let Some(clients) = &profile.clients {
        // `azp` (OpenID Connect) names the client when present; `client_id` (RFC 9068) else.
        let client = claims.get("azp").or_else(|| claims.get("client_id"));
        if !client
            .and_then(Value::as_str)
            .is_some_and(|c| clients.iter().any(|a| **a == *c))
        {
            return Err(TokenError::WrongClient);
        }
    }
    let subject = plain(profile.subject_claim.find(&claims), 1024)?;
    let jti = match claims.get("jti") {
        None if !profile.require_jti => None,
        value => Some(plain(value, 256)?),
    };
    let session = match claims.get("sid") {
        None if issuer.require_session => return Err(TokenError::MissingClaim),
        None => None,
        Some(_) => Some(identifier(&claims, "sid", 256)?),
    };
    // The gateway's own access token for a session signed in through an OpenID Provider names
    // the provider (`idp`) and carries the roles and permissions the provider's claims named
    // at login (`roles`, granted through the current `roles:`, and `permissions`): that user
    // is in no users file. Only the gateway's own issuer
    // (whose users are not qualified) is read this way; another issuer's `idp` means nothing.
    let provider_login = !issuer.qualify_users && claims.contains_key("idp");
    let grant = match &profile.permissions {
        Some(sources) => crate::pipeline::claims::grant(&claims, sources, permissions),
        None if provider_login => {
            let mut set = permissions.empty_set();
            match claims.get("roles") {
                None => {}
                Some(Value::Array(items)) => {
                    for r in items {
                        let r = r.as_str().ok_or(TokenError::MissingClaim)?;
                        permissions.add_role(&mut set, r);
                    }
                }
                Some(_) => return Err(TokenError::MissingClaim),
            }
            match claims.get("permissions") {
                None => {}
                Some(Value::Array(items)) => {
                    for p in items {
                        let p = p.as_str().ok_or(TokenError::MissingClaim)?;
                        permissions.add_permission(&mut set, p);
                    }
                }
                Some(_) => return Err(TokenError::MissingClaim),
            }
            permissions.grant_of(set)
        }
        None => {
            // Role names only select permissions from the config (the permissions header is
            // built from the config's names, never from the token's text), but a role that
            // could not be an identifier is a malformed token, not an unknown role.
            let roles: Vec<&str> = match claims.get("roles") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|r| {
                        r.as_str()
                            .filter(|r| is_plain_identifier(r))
                            .ok_or(TokenError::MissingClaim)
                    })
                    .collect::<Result<_, _>>()?,
                Some(_) => return Err(TokenError::MissingClaim),
            };
            permissions.grant(roles.iter().copied())
        }
    };
    let crate::pipeline::authorize::Grant {
        permissions: granted,
        permissions_header,
    } = grant;
    let identity_claims =
        crate::pipeline::claims::identity_headers(&claims, &profile.identity_claims);

    let token_key = token_key.unwrap_or_else(|| cache_key(token));
    Ok(VerifiedToken {
        token_key,
        jti_key: jti.map_or(token_key, |jti| crate::store::jti_key(iss, jti)),
        subject_header: header_value(subject)?,
        session_header: header_value(session.unwrap_or(""))?,
        subject: subject.into(),
        user: issuer.user_key(subject),
        session: session.map(Into::into),
        jti: jti.unwrap_or("").into(),
        issuer: key_issuer,
        kid: kid.into(),
        issued_at,
        expires_at,
        not_before,
        require_session: issuer.require_session,
        permissions: granted,
        permissions_header,
        identity_claims,
        provider_login,
    })
}

/// The facts of a verified ID token the login flow needs.
#[derive(Debug)]
pub struct IdToken {
    /// `sub`.
    pub subject: Box<str>,
    /// `sid`, when present (the provider's session, for back-channel logout).
    pub session: Option<Box<str>>,
    /// `nonce`, when present: the caller compares it with the one it sent.
    pub nonce: Option<Box<str>>,
    /// Every claim, for the provider's permission mapping and allow-lists.
    pub claims: Map<String, Value>,
}

/// Verifies an OpenID Connect ID token (Core 3.1.3.7) of the issuer at index `issuer` of the
/// key set, for the client `client_id`, at `now`: the same checks of the JWS as an access
/// token's ([`signed_claims`]: size, segments, `crit`, nesting, a configured key found by
/// `kid` and belonging to that issuer, the key's pinned algorithm, the signature), then `typ`
/// absent or `JWT` (an access token is not an ID token), `iss` exactly the issuer, `aud`
/// containing `client_id`, `azp` equal to `client_id` when present and required when `aud`
/// names more than one audience, `exp` not passed and `iat` not in the future (with the
/// verifier's leeway), a plain `sub`. The `nonce` is the caller's to compare. Never cached:
/// an ID token is used once, at the callback. `metrics` counts the signature check.
pub fn verify_id_token(
    token: &str,
    verifier: &Verifier,
    issuer: usize,
    client_id: &str,
    now: i64,
    metrics: &Metrics,
) -> Result<IdToken, TokenError> {
    let checks = &metrics.token_signature_checks;
    let (_, _, claims) = signed_claims(token, verifier, Expect::Id(issuer), checks)?;
    let iss = claim_str(&claims, "iss")?;
    if iss != &*verifier.keys.issuers[issuer].iss {
        return Err(TokenError::WrongIssuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds
            .iter()
            .map(|a| a.as_str().ok_or(TokenError::MissingClaim))
            .collect::<Result<_, _>>()?,
        _ => return Err(TokenError::MissingClaim),
    };
    if !audiences.contains(&client_id) {
        return Err(TokenError::WrongAudience);
    }
    match claims.get("azp") {
        None if audiences.len() > 1 => return Err(TokenError::WrongClient),
        None => {}
        Some(azp) if azp.as_str() == Some(client_id) => {}
        Some(_) => return Err(TokenError::WrongClient),
    }
    let expires_at = numeric_date(claims.get("exp"))?.ok_or(TokenError::MissingClaim)?;
    let issued_at = numeric_date(claims.get("iat"))?.ok_or(TokenError::MissingClaim)?;
    check_time(
        expires_at,
        numeric_date(claims.get("nbf"))?,
        verifier.leeway,
        now,
    )?;
    if issued_at > now + verifier.leeway || expires_at <= issued_at {
        return Err(TokenError::BadIssuedAt);
    }
    let subject = plain(claims.get("sub"), 1024)?.into();
    let session = match claims.get("sid") {
        None => None,
        Some(_) => Some(plain(claims.get("sid"), 256)?.into()),
    };
    let nonce = match claims.get("nonce") {
        None => None,
        Some(_) => Some(plain(claims.get("nonce"), 256)?.into()),
    };
    Ok(IdToken {
        subject,
        session,
        nonce,
        claims,
    })
}

/// The event a Back-Channel Logout token must carry in `events`.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// How long a logout token without `exp` is accepted after its `iat`.
pub const LOGOUT_TOKEN_MAX_AGE: i64 = 300;

/// The facts of a verified Back-Channel Logout token.
#[derive(Debug)]
pub struct LogoutToken {
    /// `sub`, when present.
    pub subject: Option<Box<str>>,
    /// `sid`, when present.
    pub session: Option<Box<str>>,
    /// `jti`: the caller records it, to refuse a replay.
    pub jti: Box<str>,
    /// Until when the token could be replayed: its `exp`, or `iat` plus
    /// [`LOGOUT_TOKEN_MAX_AGE`], plus the leeway.
    pub replayable_until: i64,
}

/// Why a logout token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogoutTokenError {
    /// The JWS or a claim every JWT of the issuer must get right.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// No `events` object with the back-channel logout event.
    #[error("logout token has no back-channel logout event")]
    Events,
    /// A `nonce`: a logout token must not have one (it would pass for an ID token).
    #[error("logout token has a nonce")]
    Nonce,
    /// Neither `sub` nor `sid`.
    #[error("logout token names no subject nor session")]
    NoSubject,
    /// No `jti`.
    #[error("logout token has no jti")]
    NoJti,
}

impl LogoutTokenError {
    /// A stable identifier for the audit trail.
    pub fn reason_id(self) -> &'static str {
        match self {
            LogoutTokenError::Token(e) => e.reason_id(),
            LogoutTokenError::Events => "logout_token.events",
            LogoutTokenError::Nonce => "logout_token.nonce",
            LogoutTokenError::NoSubject => "logout_token.no_subject",
            LogoutTokenError::NoJti => "logout_token.no_jti",
        }
    }
}

/// Verifies a Back-Channel Logout token (OpenID Connect Back-Channel Logout 1.0, 2.6) of the
/// issuer at index `issuer`, for the client `client_id`, at `now`: the JWS checks of
/// [`signed_claims`] with a key of that issuer, `typ` absent, `JWT` or `logout+jwt`, `iss`
/// exactly the issuer, `aud` containing `client_id`, `iat` not in the future, `exp` (when
/// present) not passed and, without `exp`, `iat` at most [`LOGOUT_TOKEN_MAX_AGE`] old; a `jti`;
/// an `events` object whose back-channel logout member is an object; `sub` and/or `sid`; no
/// `nonce`. Whether the `jti` was seen before is the caller's to check (in the store).
pub fn verify_logout_token(
    token: &str,
    verifier: &Verifier,
    issuer: usize,
    client_id: &str,
    now: i64,
    metrics: &Metrics,
) -> Result<LogoutToken, LogoutTokenError> {
    let checks = &metrics.token_signature_checks;
    let (_, _, claims) = signed_claims(token, verifier, Expect::Logout(issuer), checks)?;
    let iss = claim_str(&claims, "iss")?;
    if iss != &*verifier.keys.issuers[issuer].iss {
        return Err(TokenError::WrongIssuer.into());
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => aud == client_id,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(client_id)),
        _ => return Err(TokenError::MissingClaim.into()),
    };
    if !audience_ok {
        return Err(TokenError::WrongAudience.into());
    }
    let issued_at = numeric_date(claims.get("iat"))?.ok_or(TokenError::MissingClaim)?;
    if issued_at > now + verifier.leeway {
        return Err(TokenError::BadIssuedAt.into());
    }
    let replayable_until = match numeric_date(claims.get("exp"))? {
        Some(exp) => {
            check_time(exp, None, verifier.leeway, now)?;
            exp
        }
        None => {
            if issued_at + LOGOUT_TOKEN_MAX_AGE + verifier.leeway < now {
                return Err(TokenError::Expired.into());
            }
            issued_at + LOGOUT_TOKEN_MAX_AGE
        }
    } + verifier.leeway;
    if claims.contains_key("nonce") {
        return Err(LogoutTokenError::Nonce);
    }
    let event_ok = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(Value::is_object);
    if !event_ok {
        return Err(LogoutTokenError::Events);
    }
    let jti = match claims.get("jti") {
        None => return Err(LogoutTokenError::NoJti),
        value => plain(value, 256)?.into(),
    };
    let subject = match claims.get("sub") {
        None => None,
        value => Some(plain(value, 1024)?.into()),
    };
    let session = match claims.get("sid") {
        None => None,
        value => Some(plain(value, 256)?.into()),
    };
    if subject.is_none() && session.is_none() {
        return Err(LogoutTokenError::NoSubject);
    }
    Ok(LogoutToken {
        subject,
        session,
        jti,
        replayable_until,
    })
}

/// What kind of JWT [`signed_claims`] is checking.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// An access token: its `typ` is one its key's issuer accepts.
    Access,
    /// An OpenID Connect ID token (`typ` absent or `JWT`) signed by a key of the issuer at this
    /// index of the key set.
    Id(usize),
    /// A Back-Channel Logout token (`typ` absent, `JWT` or `logout+jwt`) signed by a key of the
    /// issuer at this index.
    Logout(usize),
}

/// A JWT whose signature verified: its key's issuer index, the `kid`, and the payload.
type Signed = (usize, Box<str>, Map<String, Value>);

/// The checks every JWT passes before its claims are read: size, three canonical segments,
/// no `crit`, not nested, the `typ` [`Expect`]ed, a `kid` a configured key has, `alg` exactly
/// the key's pinned algorithm, and the signature. `Ok` is the key's issuer index, the `kid`,
/// and the payload (duplicate members refused).
fn signed_claims(
    token: &str,
    verifier: &Verifier,
    expect: Expect,
    signature_checks: &AtomicU64,
) -> Result<Signed, TokenError> {
    if token.len() > verifier.max_bytes {
        return Err(TokenError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Also refuses JWE (five segments) and anything with a stray dot.
        return Err(TokenError::Malformed);
    };
    if signature_b64.is_empty() || payload_b64.is_empty() || header_b64.is_empty() {
        return Err(TokenError::Malformed);
    }
    let header_json = decode_segment(header_b64)?;
    let header = parse_object(&header_json)?;
    // Header checks that do not depend on the key.
    if header.contains_key("crit") {
        return Err(TokenError::CriticalHeader);
    }
    if let Some(cty) = header.get("cty") {
        let cty = cty.as_str().ok_or(TokenError::Malformed)?;
        if cty.eq_ignore_ascii_case("JWT") || cty.eq_ignore_ascii_case("application/jwt") {
            return Err(TokenError::Nested);
        }
    }
    // `typ` is checked against the key's issuer below; a value no issuer accepts is refused
    // here already, before the key is looked up.
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.as_str()),
        Some(_) => return Err(TokenError::WrongType),
    };
    let type_ok = match expect {
        Expect::Access => verifier
            .keys
            .issuers
            .iter()
            .any(|i| i.profile.token_types.accepts(typ)),
        // An ID token is never an access token, nor a logout token: `JWT` or nothing.
        Expect::Id(_) => typ.is_none_or(|t| {
            t.eq_ignore_ascii_case("JWT") || t.eq_ignore_ascii_case("application/jwt")
        }),
        Expect::Logout(_) => typ.is_none_or(|t| {
            [
                "JWT",
                "application/jwt",
                "logout+jwt",
                "application/logout+jwt",
            ]
            .iter()
            .any(|ok| t.eq_ignore_ascii_case(ok))
        }),
    };
    if !type_ok {
        return Err(TokenError::WrongType);
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(TokenError::UnknownKey)?;
    // `jwk`, `jku`, `x5u`, `x5c` are ignored: key material only ever comes from the config.
    let key = verifier.keys.get(kid).ok_or(TokenError::UnknownKey)?;
    let key = &*key;
    if alg != algorithm_name(key.alg) {
        // Exact comparison: `none`, `NONE`, `rs256`, or an HS256 token aimed at an RSA key.
        return Err(TokenError::AlgorithmMismatch);
    }
    let type_ok = match expect {
        Expect::Access => verifier.keys.issuers[key.issuer]
            .profile
            .token_types
            .accepts(typ),
        Expect::Id(issuer) | Expect::Logout(issuer) => key.issuer == issuer,
    };
    if !type_ok {
        return Err(match expect {
            Expect::Access => TokenError::WrongType,
            Expect::Id(_) | Expect::Logout(_) => TokenError::WrongIssuer,
        });
    }
    let message_len = header_b64.len() + 1 + payload_b64.len();
    signature_checks.fetch_add(1, Ordering::Relaxed);
    check_signature(signature_b64, &token.as_bytes()[..message_len], key)?;

    // Only now, with the signature verified, is the payload read.
    let payload_json = decode_segment(payload_b64)?;
    let claims = parse_object(&payload_json)?;
    Ok((key.issuer, kid.into(), claims))
}

/// The signature check of this stage, alone: `signature_b64` (the third segment of a compact
/// JWS) over `message` (the first two segments and their dot) with `key`, under the one
/// algorithm the key is pinned to. `Ok` only when the signature verifies.
///
/// Before any crypto: the segment must be canonical base64url, and an ES256 signature must be
/// 64 bytes with `1 ≤ r < n` and `1 ≤ s ≤ n/2` ([`crate::keys::ecdsa::check_p256`]; high S is
/// [`TokenError::HighS`]). Then `jsonwebtoken::crypto::verify`, which hands the raw bytes to
/// aws-lc. Public so that known-answer vectors (tests/it/wycheproof.rs) run through exactly this.
pub fn check_signature(
    signature_b64: &str,
    message: &[u8],
    key: &VerificationKey,
) -> Result<(), TokenError> {
    let raw = decode_segment(signature_b64)?; // canonical base64url before the crate sees it
    if key.alg == jsonwebtoken::Algorithm::ES256 {
        use crate::keys::ecdsa::{ShapeError, check_p256};
        match check_p256(&raw) {
            Ok(()) => {}
            Err(ShapeError::HighS) => return Err(TokenError::HighS),
            Err(ShapeError::Length | ShapeError::OutOfRange) => {
                return Err(TokenError::BadSignature);
            }
        }
    }
    match jsonwebtoken::crypto::verify(signature_b64, message, &key.key, key.alg) {
        Ok(true) => Ok(()),
        Ok(false) | Err(_) => Err(TokenError::BadSignature),
    }
}

fn check_time(exp: i64, nbf: Option<i64>, leeway: i64, now: i64) -> Result<(), TokenError> {
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// Strict base64url: the URL-safe alphabet, no padding, no non-zero trailing bits.
fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)
}

/// Parses a JSON object, refusing duplicate member names at any depth and deep nesting.
fn parse_object(json: &[u8]) -> Result<Map<String, Value>, TokenError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    StrictJson { depth: 0 }.deserialize(&mut de).map_err(|e| {
        if e.to_string().starts_with(DUPLICATE) {
            TokenError::DuplicateMember
        } else {
            TokenError::Malformed
        }
    })?;
    de.end().map_err(|_| TokenError::Malformed)?;
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenError::Malformed),
    }
}

const DUPLICATE: &str = "duplicate member";
const MAX_DEPTH: usize = 16;

/// A validating pass over JSON that keeps nothing: it fails on a repeated member name in any
/// object or nesting deeper than [`MAX_DEPTH`].
struct StrictJson {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictJson {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictJson {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("too deep"));
        }
        while seq.next_element_seed(StrictJson { depth })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("too deep"));
        }
        // A hash set, not a list: the header is parsed before the signature is checked, so an
        // unauthenticated client chooses the member count, and a linear scan per member made
        // that quadratic (seconds of CPU for one large token).
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            map.next_value_seed(StrictJson { depth })?;
        }
        Ok(())
    }
}

fn claim_str<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, TokenError> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaim)
}

/// A string claim that becomes an identity header (`sub`, `sid`) or a key (`jti`), checked
/// with [`is_plain_identifier`] and at most `max` bytes long.
fn identifier<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<&'a str, TokenError> {
    plain(claims.get(name), max)
}

/// [`identifier`] for a claim already found (absent: `None`).
fn plain(value: Option<&Value>, max: usize) -> Result<&str, TokenError> {
    let value = value
        .and_then(Value::as_str)
        .ok_or(TokenError::MissingClaim)?;
    if value.len() > max || !is_plain_identifier(value) {
        return Err(TokenError::MissingClaim);
    }
    Ok(value)
}

/// Whether `value` reads the same to every parser downstream (docs/security.md 8): not empty,
/// no leading or trailing whitespace (a backend that trims would see `" alice"` as `alice`,
/// one that does not as someone else), no control character (CR, LF, NUL, tab, DEL, C1), no
/// whitespace but the plain space (no NBSP, line separators, ideographic space), and none of
/// the invisible formatting characters that make two strings look alike (zero-width, bidi
/// overrides and isolates, word joiner, BOM, soft hyphen). Other non-ASCII text is allowed:
/// subjects may be e-mail addresses or names in any script.
pub fn is_plain_identifier(value: &str) -> bool {
    let invisible = |c: char| {
        matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    !value.is_empty()
        && !value.starts_with(char::is_whitespace)
        && !value.ends_with(char::is_whitespace)
        && !value
            .chars()
            .any(|c| c.is_control() || (c.is_whitespace() && c != ' ') || invisible(c))
}

/// A NumericDate: a JSON number (fractions truncated), non-negative and finite.
fn numeric_date(value: Option<&Value>) -> Result<Option<i64>, TokenError> {
    match value {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                return if i >= 0 {
                    Ok(Some(i))
                } else {
                    Err(TokenError::MissingClaim)
                };
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 && f < i64::MAX as f64 => Ok(Some(f as i64)),
                _ => Err(TokenError::MissingClaim),
            }
        }
        Some(_) => Err(TokenError::MissingClaim),
    }
}

fn header_value(text: &str) -> Result<HeaderValue, TokenError> {
    HeaderValue::from_str(text).map_err(|_| TokenError::MissingClaim)
}

/// How long a token whose refusal cost a signature check is answered from the failed-token
/// cache. Short: the entry only saves work, and a reload starts a new cache anyway.
pub const FAILED_TTL: Duration = Duration::from_secs(30);
/// How many failed tokens are remembered. Its own bound, so no number of forgeries can push a
/// verified token out; at ~100 bytes an entry, about 1.6 MB when full.
pub const FAILED_CAPACITY: u64 = 16_384;

/// The verified-token cache: bounded, and no entry outlives its token's `exp`. Only verified
/// tokens are inserted, so its size and its entries are out of reach of anyone without a key.
/// Beside it, and never sharing its capacity, the failed-token cache: the refusal of each token
/// whose signature was checked in vain (or whose claims failed after it), for [`FAILED_TTL`].
pub struct TokenCache {
    inner: moka::sync::Cache<[u8; 32], Arc<VerifiedToken>>,
    /// Keyed like `inner`, by the SHA-256 of the token: a re-encoded token is a new entry.
    failed: moka::sync::Cache<[u8; 32], TokenError>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.entry_count())
            .field("failed", &self.failed.entry_count())
            .finish()
    }
}

struct UntilExp;

impl moka::Expiry<[u8; 32], Arc<VerifiedToken>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        // Eviction only frees memory, so the system clock: every hit is re-checked against
        // the request's own instant.
        let left = value
            .expires_at
            .saturating_sub(Clock::system().now())
            .max(0);
        Some(Duration::from_secs(left as u64))
    }
}

impl TokenCache {
    /// A cache holding at most `capacity` verified tokens (and, apart, [`FAILED_CAPACITY`]
    /// failed ones).
    pub fn new(capacity: u64) -> Self {
        Self {
            inner: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExp)
                // For `forget_keys`: a key removed from a remote set takes its tokens along.
                .support_invalidation_closures()
                .build(),
            failed: moka::sync::Cache::builder()
                .max_capacity(FAILED_CAPACITY)
                .time_to_live(FAILED_TTL)
                .build(),
        }
    }

    /// Drops every cached token of `issuer` verified by one of `kids`: the keys a remote key
    /// set no longer has. moka applies the predicate lazily, but no lookup returns an entry
    /// it matches from now on.
    pub fn forget_keys(&self, issuer: usize, kids: &[Box<str>]) {
        if kids.is_empty() {
            return;
        }
        let kids = kids.to_vec();
        let dropped = self.inner.invalidate_entries_if(move |_, token| {
            token.issuer == issuer && kids.contains(&token.kid)
        });
        if let Err(e) = dropped {
            // Only when the cache was built without invalidation closures: a bug. Empty the
            // whole cache rather than keep serving tokens of a removed key.
            tracing::error!(error = %e, "token cache cannot drop by key; emptying it");
            self.inner.invalidate_all();
        }
    }

    /// Entries currently held (approximate, as moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.inner.run_pending_tasks();
        self.inner.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json_refuses_duplicates_at_any_depth() {
        assert!(parse_object(br#"{"a":1,"b":{"c":2}}"#).is_ok());
        assert_eq!(
            parse_object(br#"{"a":1,"a":2}"#).unwrap_err(),
            TokenError::DuplicateMember
        );
        assert_eq!(
            parse_object(br#"{"a":{"c":1,"c":1}}"#).unwrap_err(),
            TokenError::DuplicateMember
        );
        assert_eq!(parse_object(b"[1]").unwrap_err(), TokenError::Malformed);
        assert_eq!(
            parse_object(br#"{"a":1} x"#).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn strict_json_refuses_deep_nesting() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(
            parse_object(deep.as_bytes()).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn base64url_must_be_canonical() {
        assert!(decode_segment("eyJhIjoxfQ").is_ok());
        assert!(decode_segment("eyJhIjoxfQ==").is_err());
        assert!(decode_segment("eyJh+joxfQ").is_err());
        assert!(decode_segment("eyJh/joxfQ").is_err());
        // Non-zero trailing bits: a second spelling of the same bytes.
        assert!(decode_segment("eyJhIjoxfR").is_err());
    }

    #[test]
    fn identifiers_read_the_same_to_every_parser() {
        for ok in [
            "alice",
            "alice smith",
            "ålice@example.com",
            "用户",
            "a.b-c_d:e/f",
        ] {
            assert!(is_plain_identifier(ok), "{ok:?}");
        }
        for bad in [
            "",
            " alice",
            "alice ",
            "\talice",
            "alice\n",
            "al\rice",
            "ali\0ce",
            "alice\u{7f}",
            "alice\u{85}",
            "al\u{a0}ice",
            "alice\u{2028}",
            "\u{3000}alice",
            "al\u{200b}ice",
            "\u{202e}ecila",
            "alice\u{feff}",
            "al\u{ad}ice",
            "\u{2066}alice\u{2069}",
        ] {
            assert!(!is_plain_identifier(bad), "{bad:?}");
        }
    }

    #[test]
    fn numeric_dates_must_be_non_negative_numbers() {
        assert_eq!(numeric_date(Some(&serde_json::json!(5))), Ok(Some(5)));
        assert_eq!(numeric_date(Some(&serde_json::json!(5.9))), Ok(Some(5)));
        assert!(numeric_date(Some(&serde_json::json!("5"))).is_err());
        assert!(numeric_date(Some(&serde_json::json!(-1))).is_err());
        assert_eq!(numeric_date(None), Ok(None));
    }

    // --- The verified-token cache under a flood, and on first sight ---------------------------

    use crate::keys::Issuer;
    use crate::keys::signing::SigningKey;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "portcullis-tests";

    /// A verifier trusting one generated EdDSA key, and an attacker's key of the same type.
    struct Fixture {
        trusted: SigningKey,
        attacker: EncodingKey,
        verifier: Verifier,
        permissions: PermissionTable,
    }

    impl Fixture {
        fn new() -> Self {
            let (trusted, _) = SigningKey::generate(Algorithm::EdDSA).unwrap();
            let (_, attacker_pem) = SigningKey::generate(Algorithm::EdDSA).unwrap();
            let mut keys = KeySet::default();
            let issuer = keys.add_issuer(Issuer {
                iss: ISS.into(),
                audiences: vec![AUD.into()].into(),
                require_session: true,
                max_lifetime: Duration::from_secs(3600),
                profile: Default::default(),
                qualify_users: false,
            });
            let key = VerificationKey {
                alg: Algorithm::EdDSA,
                key: trusted.decoding_key().clone(),
                issuer,
            };
            keys.insert(trusted.kid(), key).unwrap();
            Self {
                trusted,
                attacker: EncodingKey::from_ed_pem(attacker_pem.as_bytes()).unwrap(),
                verifier: Verifier {
                    keys,
                    leeway: 0,
                    max_bytes: 8192,
                },
                permissions: PermissionTable::default(),
            }
        }

        fn claims(jti: &str, iat: i64, exp: i64) -> Value {
            json!({ "iss": ISS, "aud": AUD, "sub": "alice", "sid": "sid-alice", "jti": jti,
                    "iat": iat, "exp": exp })
        }

        /// Signed by the trusted key.
        fn token(&self, jti: &str, iat: i64, exp: i64) -> String {
            self.trusted.sign(&Self::claims(jti, iat, exp)).unwrap()
        }

        /// The trusted key's header and `kid` over `claims`, signed by the attacker's key.
        fn forged(&self, claims: &Value) -> String {
            let header = self.trusted.sign(&json!({})).unwrap();
            let header = header.split('.').next().unwrap();
            let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &self.attacker, Algorithm::EdDSA)
                    .unwrap();
            format!("{message}.{signature}")
        }

        fn verify(
            &self,
            token: &str,
            cache: &TokenCache,
            metrics: &Metrics,
            now: i64,
        ) -> Result<Arc<VerifiedToken>, TokenError> {
            super::verify(
                token,
                &self.verifier,
                cache,
                &self.permissions,
                now,
                metrics,
            )
        }
    }

    fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    #[test]
    fn a_flood_of_forged_and_expired_tokens_evicts_nothing_and_costs_at_most_one_signature_check_each()
     {
        let f = Fixture::new();
        // Small enough that 64 inserted forgeries would have filled it.
        let cache = TokenCache::new(64);
        // This test's own counters: other tests verify tokens on other threads meanwhile.
        let metrics = Metrics::default();
        let now = Clock::system().now();
        let valid = f.token("valid", now - 10, now + 600);
        let first = f.verify(&valid, &cache, &metrics, now).unwrap();
        assert_eq!(count(&metrics.token_signature_checks), 1);
        assert_eq!(cache.entry_count(), 1);

        // 10,000 distinct tokens under the trusted `kid` with signatures that do not verify:
        // 100 signed by another key, the rest carrying one of those signatures over other claims.
        let mut forged: Vec<String> = (0..100)
            .map(|i| f.forged(&Fixture::claims(&format!("forged-{i}"), now, now + 600)))
            .collect();
        let (header, _) = forged[0].split_once('.').unwrap();
        let header = header.to_owned();
        let stolen_signature = forged[0].rsplit('.').next().unwrap().to_owned();
        forged.extend((100..10_000).map(|i| {
            let claims = Fixture::claims(&format!("forged-{i}"), now, now + 600);
            let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
            format!("{header}.{payload}.{stolen_signature}")
        }));
        for (i, token) in forged.iter().enumerate() {
            let checks = count(&metrics.token_signature_checks);
            assert_eq!(
                f.verify(token, &cache, &metrics, now).unwrap_err(),
                TokenError::BadSignature,
                "forged token {i}"
            );
            assert_eq!(count(&metrics.token_signature_checks), checks + 1);
        }
        // Validly signed, but expired: the signature is checked (once), then `exp` refuses it.
        for i in 0..200 {
            let token = f.token(&format!("expired-{i}"), now - 1200, now - 600 + i);
            let checks = count(&metrics.token_signature_checks);
            assert_eq!(
                f.verify(&token, &cache, &metrics, now).unwrap_err(),
                TokenError::Expired
            );
            assert_eq!(count(&metrics.token_signature_checks), checks + 1);
        }
        // Refused before the signature is looked at: no check at all.
        let unknown_kid = {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"nope"}"#);
            let rest = forged[1].split_once('.').unwrap().1;
            format!("{h}.{rest}")
        };
        let alg_none = {
            let kid = f.trusted.kid();
            let h =
                URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{kid}"}}"#));
            let p = forged[2].split('.').nth(1).unwrap();
            format!("{h}.{p}.{stolen_signature}")
        };
        let checks = count(&metrics.token_signature_checks);
        for (token, error) in [
            (unknown_kid, TokenError::UnknownKey),
            (alg_none, TokenError::AlgorithmMismatch),
            ("a.b".to_owned(), TokenError::Malformed),
            ("x".repeat(9000), TokenError::TooLarge),
        ] {
            assert_eq!(f.verify(&token, &cache, &metrics, now).unwrap_err(), error);
        }
        assert_eq!(count(&metrics.token_signature_checks), checks);

        // Nothing was inserted, nothing was evicted: the valid token is still a hit.
        assert_eq!(cache.entry_count(), 1);
        let hits = count(&metrics.token_cache_hits);
        let again = f.verify(&valid, &cache, &metrics, now).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(count(&metrics.token_cache_hits), hits + 1);
        assert_eq!(count(&metrics.token_signature_checks), checks);
    }

    #[test]
    fn a_refusal_that_cost_a_signature_check_is_remembered_unless_a_later_clock_could_lift_it() {
        let f = Fixture::new();
        let cache = TokenCache::new(64);
        let metrics = Metrics::default();
        let now = Clock::system().now();
        let valid = f.token("valid", now - 10, now + 600);
        f.verify(&valid, &cache, &metrics, now).unwrap();
        let forged = f.forged(&Fixture::claims("forged", now, now + 600));
        let expired = f.token("expired", now - 1200, now - 600);
        let mut early = Fixture::claims("early", now, now + 600);
        early["nbf"] = json!(now + 60);
        let early = f.trusted.sign(&early).unwrap();
        let unknown_kid = {
            let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"nope"}"#);
            format!("{h}.{}", forged.split_once('.').unwrap().1)
        };
        for (token, error, checks_per_sight) in [
            (&forged, TokenError::BadSignature, 0),
            (&expired, TokenError::Expired, 0),
            // Valid a minute from now: checked every time, never remembered.
            (&early, TokenError::NotYetValid, 1),
            // Refused before any signature check: nothing to save, nothing remembered.
            (&unknown_kid, TokenError::UnknownKey, 0),
        ] {
            let checks = count(&metrics.token_signature_checks);
            let first = f.verify(token, &cache, &metrics, now).unwrap_err();
            assert_eq!(first, error);
            let first_cost = count(&metrics.token_signature_checks) - checks;
            for _ in 0..100 {
                assert_eq!(f.verify(token, &cache, &metrics, now).unwrap_err(), error);
            }
            let repeat_cost = count(&metrics.token_signature_checks) - checks - first_cost;
            assert_eq!(repeat_cost, 100 * checks_per_sight, "{error:?}");
        }
        // forged and expired: 1 check each, then 200 answers from the failed-token cache.
        assert_eq!(count(&metrics.token_cache_failed_hits), 200);
        assert!(cache.failed.contains_key(&cache_key(&forged)));
        assert!(!cache.failed.contains_key(&cache_key(&early)));
        assert!(!cache.failed.contains_key(&cache_key(&unknown_kid)));
        // None of it touched the verified tokens.
        assert_eq!(cache.entry_count(), 1);
        assert!(f.verify(&valid, &cache, &metrics, now).is_ok());
    }

    #[test]
    fn concurrent_first_sights_of_one_token_share_one_signature_check_and_one_entry() {
        // Each round, 8 threads released together verify one token none has seen. A single
        // round may not overlap on 2 cores; over 50 rounds, unshared checks would show.
        const THREADS: usize = 8;
        const ROUNDS: usize = 50;
        let f = Fixture::new();
        let cache = TokenCache::new(1024);
        let metrics = Metrics::default();
        let now = Clock::system().now();
        let barrier = std::sync::Barrier::new(THREADS);
        for round in 0..ROUNDS {
            let token = f.token(&format!("first-sight-{round}"), now - 10, now + 600);
            let seen: Vec<Arc<VerifiedToken>> = std::thread::scope(|s| {
                let threads: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            f.verify(&token, &cache, &metrics, now).unwrap()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            assert!(seen.iter().all(|v| Arc::ptr_eq(v, &seen[0])));
            assert_eq!(
                count(&metrics.token_signature_checks),
                round as u64 + 1,
                "round {round}: {} misses",
                count(&metrics.token_cache_misses)
            );
        }
        assert_eq!(cache.entry_count(), ROUNDS as u64);
        assert_eq!(
            count(&metrics.token_cache_hits) + count(&metrics.token_cache_misses),
            (THREADS * ROUNDS) as u64
        );
    }

    #[test]
    fn time_checks_apply_the_leeway_both_ways() {
        assert!(check_time(100, None, 0, 99).is_ok());
        assert_eq!(check_time(100, None, 0, 100), Err(TokenError::Expired));
        assert!(check_time(100, None, 5, 104).is_ok());
        assert_eq!(
            check_time(100, Some(50), 5, 44),
            Err(TokenError::NotYetValid)
        );
        assert!(check_time(100, Some(50), 5, 45).is_ok());
    }
}
