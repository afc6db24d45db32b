//! Stages 2–4 and the grant, **identify**: who is this request, and what may they do?
//!
//! [`identify`] is the one place the gateway answers that question, for the proxy, for the
//! auth flow's endpoints that need a signed-in user (sessions page, session revoke, logout,
//! logout-all) and for whatever comes next. In order:
//!
//! 1. **credential** ([`credential`]): the access token from the configured cookie or
//!    `Authorization: Bearer`. None is [`IdentifyError::MissingCredential`]; a malformed,
//!    doubled or conflicting one is [`IdentifyError::BadCredential`] and never falls through
//!    to another source.
//! 2. **verify** ([`verify`]): signature, key, algorithm and claims at `now`, from the token
//!    cache when the token was seen before. A refusal is [`IdentifyError::TokenRefused`].
//!    A `kid` no key has, on a token that claims a remote issuer (discovery or JWKS URI), asks
//!    that issuer's key set for a refetch (at most one fetch per issuer per
//!    cool-down, shared by concurrent askers) and verifies once more. While that issuer has no
//!    key set at all, its tokens are [`IdentifyError::KeysUnavailable`] (503): the gateway
//!    cannot tell a good token from a bad one, and must not call it invalid.
//! 3. **session** ([`session`]): the store's answer — `jti` denylisted, session ended, user
//!    revoked since `iat` — is [`IdentifyError::SessionRefused`]; a store that cannot answer is
//!    [`IdentifyError::StoreUnavailable`]. Both fail closed.
//! 4. **grant**: for a token this gateway issued, the user must still be in the users file and
//!    enabled ([`IdentifyError::UserDisabled`] otherwise, docs/security.md 11), and the
//!    permissions are those of the user's roles *now*, not when the token was minted — except
//!    for a session signed in through an OpenID Provider, whose token carries the permissions
//!    mapped from the provider's claims at login (re-minted from the session at each refresh). For a
//!    token of another issuer they are those of the roles it claims, resolved when it was
//!    verified. Either way role names become permissions in one place,
//!    [`PermissionTable::grant`], and which set applies is decided here, in
//!    [`Identity::permissions`].
//!
//! `Ok` is an [`Identity`]: the verified token and its permissions, which authorize checks and
//! mutate forwards. Every `Err` is a refusal the caller answers (401, 400 or 503); the stage
//! never lets a request through on an error. It reads the request's headers, the token cache
//! (which it fills) and the store (which it does not change), at the one instant `now` the
//! caller read from the gateway's clock.
//!
//! It emits no audit event and no log line (a refetch it asks for is logged by the key set):
//! the caller knows what the refusal means for its endpoint, and [`IdentifyError::token`] hands it the token that was refused, if one verified.
//!
//! Cost: on a cached token, one hash of the token, one cache lookup, the store's check and (for
//! own tokens) one map lookup; nothing is allocated.
//!
//! [`revoke_user`] is the inverse: the one rule by which a user is revoked (logout-all, the
//! admin API), so that what identify then refuses is the same whoever asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;

use crate::metrics::Metrics;
use crate::pipeline::authorize::{Grant, PermissionSet, PermissionTable};
use crate::pipeline::credential::{self, CredentialError};
use crate::pipeline::mutate;
use crate::pipeline::session::{self, Refusal, SessionError};
use crate::pipeline::verify::{self, TokenCache, TokenError, VerifiedToken, Verifier};
use crate::store::{SessionStore, StoreError};
use crate::users::{Users, UsersHandle};

/// What identify needs, compiled once with the runtime and swapped with it on reload.
#[derive(Debug)]
pub struct Identify {
    /// Name of the access-token cookie (`tokens.cookie`).
    pub cookie_name: String,
    /// Keys, issuers and verification settings.
    pub verifier: Verifier,
    /// Verified tokens. Owned with the rest of the runtime, so a key or role change never
    /// serves a verdict reached under the old config.
    pub token_cache: TokenCache,
    /// Role → permission mapping.
    pub permissions: PermissionTable,
    /// The gateway's own issuer, when it issues tokens (`auth:`).
    pub own: Option<OwnIssuer>,
}

/// The gateway as an issuer: which issuer index is its own, and its users.
#[derive(Debug)]
pub struct OwnIssuer {
    /// Index of the gateway's issuer in the verifier's key set.
    pub index: usize,
    /// The users file (shared with the login flow, which reloads it).
    pub users: Arc<UsersHandle>,
    /// Per-user grants, rebuilt when the users file changes.
    grants: ArcSwap<Grants>,
}

/// The grants of every enabled user for one version of the users file, built on first use.
#[derive(Debug, Default)]
struct Grants {
    /// The users snapshot these were built from.
    users: Option<Arc<Users>>,
    by_user: HashMap<String, Arc<Grant>>,
}

impl OwnIssuer {
    /// The gateway's issuer at `index` of the key set, with the users of `users`.
    pub fn new(index: usize, users: Arc<UsersHandle>) -> Self {
        Self {
            index,
            users,
            grants: ArcSwap::default(),
        }
    }

    /// The current grant of `subject`, from the users file as it is now: `None` when the user
    /// no longer exists or is disabled (docs/security.md 11). A change to the users file or to
    /// `roles:` applies from the next request on.
    fn grant(&self, subject: &str, table: &PermissionTable) -> Option<Arc<Grant>> {
        let users = self.users.current();
        let grants = self.grants.load();
        let fresh = grants
            .users
            .as_ref()
            .is_some_and(|built| Arc::ptr_eq(built, &users));
        if fresh {
            return grants.by_user.get(subject).cloned();
        }
        // The users file changed (or this is the first request): rebuild every grant once, so
        // the hot path is one map lookup and no string building per request.
        let by_user: HashMap<String, Arc<Grant>> = users
            .iter()
            .filter(|u| !u.disabled)
            .map(|u| {
                let grant = table.grant(u.roles.iter().map(String::as_str));
                (u.username.clone(), Arc::new(grant))
            })
            .collect();
        let found = by_user.get(subject).cloned();
        self.grants.store(Arc::new(Grants {
            users: Some(users),
            by_user,
        }));
        found
    }
}

/// Who a request is and what they may do.
#[derive(Debug)]
pub struct Identity {
    token: Arc<VerifiedToken>,
    /// The user's grant now, for a token the gateway issued to a users-file user; `None` for
    /// another issuer's, and for the gateway's own token of a provider login (whose
    /// permissions the token carries).
    grant: Option<Arc<Grant>>,
    /// Whether the gateway issued the token.
    own: bool,
    /// The instant identify accepted the request at.
    at: i64,
}

impl Identity {
    /// The verified token.
    pub fn token(&self) -> &VerifiedToken {
        &self.token
    }

    /// `sub`.
    pub fn subject(&self) -> &str {
        &self.token.subject
    }

    /// `sid`, when the token has one.
    pub fn session(&self) -> Option<&str> {
        self.token.session.as_deref()
    }

    /// The instant (`now`) identify accepted the request at: what a later step that needs the
    /// time (the identity assertion) reads, so that a request reads the clock once.
    pub fn at(&self) -> i64 {
        self.at
    }

    /// Whether the gateway issued the token (to a users-file user, or to a session signed in
    /// through one of `auth.providers`).
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// The permissions authorize checks: the user's current ones for the gateway's own tokens,
    /// the token's roles' for another issuer's.
    pub fn permissions(&self) -> &PermissionSet {
        match &self.grant {
            Some(grant) => &grant.permissions,
            None => &self.token.permissions,
        }
    }

    /// The identity headers mutate injects, with the same permissions as [`permissions`].
    ///
    /// [`permissions`]: Identity::permissions
    pub fn headers(&self) -> mutate::Identity<'_> {
        let mut headers = mutate::Identity::of(&self.token);
        if let Some(grant) = &self.grant {
            headers.permissions = &grant.permissions_header;
        }
        headers
    }
}

/// Why a request has no identity. Closed: a new way to fail must be added here, and every
/// caller's exhaustive match then says what it means for its endpoint.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// No access token was presented.
    #[error("no credential")]
    MissingCredential,
    /// A credential was presented but cannot be used.
    #[error(transparent)]
    BadCredential(#[from] CredentialError),
    /// The token failed verification.
    #[error(transparent)]
    TokenRefused(#[from] TokenError),
    /// The token verified, but its `jti`, session or user is revoked.
    #[error("session refused: {}", .refusal.reason_id())]
    SessionRefused {
        /// What the store said.
        refusal: Refusal,
        /// The token refused.
        token: Arc<VerifiedToken>,
    },
    /// The user of a gateway-issued token no longer exists or is disabled.
    #[error("user unknown or disabled")]
    UserDisabled {
        /// The token refused.
        token: Arc<VerifiedToken>,
    },
    /// The token claims a remote issuer whose key set could not be fetched yet.
    #[error("keys of issuer {issuer} unavailable")]
    KeysUnavailable {
        /// The issuer (as configured).
        issuer: Box<str>,
    },
    /// The session store cannot answer.
    #[error("session store unavailable")]
    StoreUnavailable {
        /// What failed.
        #[source]
        source: StoreError,
        /// The token that could not be checked.
        token: Arc<VerifiedToken>,
    },
}

impl IdentifyError {
    /// The token refused, when one verified (for the audit trail and the log line).
    pub fn token(&self) -> Option<&Arc<VerifiedToken>> {
        match self {
            IdentifyError::MissingCredential
            | IdentifyError::BadCredential(_)
            | IdentifyError::TokenRefused(_)
            | IdentifyError::KeysUnavailable { .. } => None,
            IdentifyError::SessionRefused { token, .. }
            | IdentifyError::UserDisabled { token }
            | IdentifyError::StoreUnavailable { token, .. } => Some(token),
        }
    }
}

/// How long identify's steps took, for the caller to record when it records the request (the
/// proxy does, in its `finish`): the stage itself emits no metric about the request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Verify, cache hits included, when a credential was there to verify.
    pub verify: Option<Duration>,
    /// The session check, when the token verified.
    pub session: Option<Duration>,
}

/// The stage's entry point: the identity of a request with `headers`, at `now`. The token
/// cache counts its hits, misses and signature checks into `metrics`; how long verify and the
/// session check took goes into `timings`.
pub async fn identify<S: SessionStore>(
    headers: &HeaderMap,
    settings: &Identify,
    store: &S,
    now: i64,
    metrics: &Metrics,
    timings: &mut Timings,
) -> Result<Identity, IdentifyError> {
    let token = credential::credential(headers, &settings.cookie_name)?
        .ok_or(IdentifyError::MissingCredential)?;
    let t = Instant::now();
    let verify = || {
        verify::verify(
            token,
            &settings.verifier,
            &settings.token_cache,
            &settings.permissions,
            now,
            metrics,
        )
    };
    let mut verified = verify();
    if verified
        .as_ref()
        .is_err_and(|e| *e == TokenError::UnknownKey)
        && !settings.verifier.keys.remote().is_empty()
    {
        refetch(token, settings, now, metrics).await?;
        verified = verify();
    }
    timings.verify = Some(t.elapsed());
    let token = verified?;
    let t = Instant::now();
    let checked = session::session(&token, store, now).await;
    timings.session = Some(t.elapsed());
    match checked {
        Ok(()) => {}
        Err(SessionError::Refused(refusal)) => {
            return Err(IdentifyError::SessionRefused { refusal, token });
        }
        Err(SessionError::Store(source)) => {
            return Err(IdentifyError::StoreUnavailable { source, token });
        }
    }
    let own = settings
        .own
        .as_ref()
        .is_some_and(|own| token.issuer == own.index);
    let grant = match &settings.own {
        // A provider login's user is in no users file: the permissions its token carries were
        // mapped from the provider's claims at login, and are mapped again at each refresh
        // from what the session keeps (docs/security.md 41).
        Some(own) if token.issuer == own.index && token.provider_login => None,
        Some(own) if token.issuer == own.index => {
            match own.grant(&token.subject, &settings.permissions) {
                Some(grant) => Some(grant),
                None => return Err(IdentifyError::UserDisabled { token }),
            }
        }
        Some(_) | None => None,
    };
    Ok(Identity {
        token,
        grant,
        own,
        at: now,
    })
}

/// A token's `kid` is unknown: if it claims a remote issuer, ask for that issuer's key set
/// again ([`crate::keys::remote::Trigger::UnknownKid`]: once per cool-down, whoever asks;
/// concurrent askers wait for one fetch). `Err` when that issuer still has no key set at all.
/// A token claiming no remote issuer costs nothing: its `kid` is just unknown.
async fn refetch(
    token: &str,
    settings: &Identify,
    now: i64,
    metrics: &Metrics,
) -> Result<(), IdentifyError> {
    let keys = &settings.verifier.keys;
    let Some(iss) = verify::unverified_issuer(token, settings.verifier.max_bytes) else {
        return Ok(());
    };
    let Some(remote) = keys.remote_for(&iss) else {
        return Ok(());
    };
    let trigger = crate::keys::remote::Trigger::UnknownKid;
    // A failure (or no fetch, in the cool-down) is logged by the key set; what matters here is
    // whether there are keys now.
    if let Ok(Some(change)) = keys.fetch(remote, trigger, now, metrics).await {
        settings
            .token_cache
            .forget_keys(remote.issuer, &change.removed);
    }
    if remote.has_keys() {
        Ok(())
    } else {
        Err(IdentifyError::KeysUnavailable {
            issuer: remote.iss.clone(),
        })
    }
}

/// The instants of a user revocation made at `now`: `(before, keep_until)` for
/// [`SessionStore::revoke_user`].
///
/// `before` is the second before `now`: the store refuses tokens issued at or before it, so
/// every token issued before this second is refused by the user mark, and a login made later in
/// this same second (a user who logged out everywhere and signs in again at once,
/// docs/security.md 18) is not. Tokens of this second that the gateway issued name a session,
/// and the revocation ends every session. `keep_until` is as long as any token issued before
/// the mark can live: the longest lifetime any issuer allows (a day when there is none), plus the clock-skew
/// leeway.
pub fn user_revocation(verifier: &Verifier, now: i64) -> (i64, i64) {
    let longest = verifier
        .keys
        .issuers
        .iter()
        .map(|i| i64::try_from(i.max_lifetime.as_secs()).unwrap_or(i64::MAX))
        .max()
        // No issuer, no token verifies; a day still covers one a reload brings back.
        .unwrap_or(86_400);
    let keep_until = now
        .saturating_add(longest)
        .saturating_add(verifier.leeway.max(0));
    (now - 1, keep_until)
}

/// Revokes `subject` at `now`: ends every session of theirs and refuses every token issued to
/// them before this second, on every instance sharing the store. The one way a user is revoked
/// (`POST /auth/logout-all`, `POST /admin/users/revoke`); see [`user_revocation`].
pub async fn revoke_user<S: SessionStore>(
    store: &S,
    settings: &Identify,
    subject: &str,
    now: i64,
) -> Result<(), StoreError> {
    let (before, keep_until) = user_revocation(&settings.verifier, now);
    store.revoke_user(subject, before, keep_until).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::{Issuer, KeySet};

    fn verifier(lifetimes: &[u64], leeway: i64) -> Verifier {
        let mut keys = KeySet::default();
        for (i, secs) in lifetimes.iter().enumerate() {
            keys.add_issuer(Issuer {
                iss: format!("https://issuer-{i}.test").into(),
                audiences: Box::new(["aud".into()]),
                require_session: i == 0,
                max_lifetime: Duration::from_secs(*secs),
                profile: Default::default(),
                qualify_users: i != 0,
            });
        }
        Verifier {
            keys,
            leeway,
            max_bytes: 8192,
        }
    }

    #[test]
    fn a_user_revocation_refuses_tokens_issued_before_this_second_for_as_long_as_any_can_live() {
        let now = 1_700_000_000;
        // The gateway's 15-minute tokens and an IdP's 2-hour ones: the mark outlives both.
        let (before, keep_until) = user_revocation(&verifier(&[900, 7200], 30), now);
        assert_eq!(before, now - 1);
        assert_eq!(keep_until, now + 7200 + 30);
        // No issuer: a day.
        assert_eq!(
            user_revocation(&verifier(&[], 0), now),
            (now - 1, now + 86_400)
        );
    }
}
