//! Who the caller of an endpoint is: [`signed_in`] by its access token, or for a
//! state-changing [`caller`] its refresh cookie too, proven by [`rotate`] — the one place a
//! refresh token is rotated.

use http::HeaderMap;

use super::Env;
use crate::audit::AuditEvent;
use crate::auth_flow::{cookies, tokens};
use crate::error::GatewayError;
use crate::pipeline::identify::{self, IdentifyError};
use crate::store::{RotateOutcome, Rotation, SessionStore};

/// The signed-in user of a request, from its access token.
#[derive(Debug)]
pub(super) struct Signed {
    pub(super) subject: String,
    pub(super) session: String,
    /// The access token's `jti`, to denylist; `None` when the caller proved itself with its
    /// refresh token instead.
    pub(super) jti: Option<String>,
    pub(super) expires_at: i64,
    /// Set when the caller proved itself by rotating its refresh token: the successor, to
    /// hand back as the new refresh cookie (none after a concurrent rotation).
    pub(super) rotated: Option<Rotated>,
}

/// A rotated refresh token: its successor (none after a concurrent rotation) and what the new
/// access token and cookies need.
#[derive(Debug)]
pub(super) struct Rotated {
    pub(super) successor: Option<String>,
    /// The successor's new binding, when the rotated token was bound (a cookie's).
    binding: Option<tokens::Binding>,
    pub(super) remember_me: bool,
    /// What the next access token grants: the users-file user's roles, or the provider
    /// login's permissions kept with the session.
    pub(super) grant: tokens::AccessGrant,
    /// The session's provider link, for a provider login.
    pub(super) link: Option<crate::store::ProviderLink>,
}

impl Rotated {
    /// The refresh and binding cookies to set: a bound successor, if there is one.
    pub(super) fn cookie(&self) -> Option<(&str, &tokens::Binding)> {
        self.successor.as_deref().zip(self.binding.as_ref())
    }
}

/// The caller of a state-changing endpoint: its access token if that is usable, else — a page
/// left open past the access token's lifetime — its refresh cookie, proven by rotating it (a
/// session id alone, which backends see in `X-Auth-Session`, proves nothing).
pub(super) async fn caller(
    headers: &HeaderMap,
    env: &Env<'_>,
) -> Result<Option<Signed>, GatewayError> {
    if let Some(signed) = signed_in(headers, env).await? {
        return Ok(Some(signed));
    }
    // A bearer client gets no cookie fallback: the CSRF check was skipped for it.
    if headers.contains_key(http::header::AUTHORIZATION) {
        return Ok(None);
    }
    // Only the refresh cookie bound to this browser proves anything: a planted one
    // (docs/security.md 36) must not sign the browser in, nor out of the attacker's session.
    let cookies::RefreshCookies::Bound { token: cookie, .. } = cookies::bound_refresh(headers)
    else {
        return Ok(None);
    };
    let Some(parsed) = tokens::parse_refresh_token(cookie) else {
        return Ok(None);
    };
    let now = env.now;
    let Ok(rotated) = rotate(env, &parsed, cookie, now).await? else {
        return Ok(None);
    };
    Ok(Some(Signed {
        subject: parsed.subject.clone(),
        session: parsed.session.to_owned(),
        jti: None,
        expires_at: now,
        rotated: Some(rotated),
    }))
}

/// Why [`rotate`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RotateRefusal {
    /// The user no longer exists or is disabled.
    UserDisabled,
    /// Unknown or expired token, or an ended session.
    Invalid,
    /// A used token came back after the grace window: the store ended the session (audited).
    Reuse,
}

/// Exchanges the refresh token `presented` (which names `token`'s subject and session) for its
/// successor — the one place a refresh token is rotated, for `/auth/refresh` and for a caller
/// proving itself with its refresh cookie. A bound token's successor is bound to a new binding
/// value. Reuse outside the grace window is audited here.
pub(super) async fn rotate(
    env: &Env<'_>,
    token: &tokens::RefreshToken<'_>,
    presented: &str,
    now: i64,
) -> Result<Result<Rotated, RotateRefusal>, GatewayError> {
    let (subject, sid) = (token.subject.as_str(), token.session);
    let Some(record) = env.store.session(subject, sid, now).await? else {
        return Ok(Err(RotateRefusal::Invalid));
    };
    let grant = match &record.provider {
        // A provider login: its permissions are the session's, while the provider is still
        // configured (removing it ends its sessions at their next refresh).
        Some(link) => {
            if crate::auth_flow::oidc::find(&env.auth.providers, &link.provider).is_none() {
                return Ok(Err(RotateRefusal::UserDisabled));
            }
            tokens::AccessGrant::Provider {
                provider: link.provider.clone(),
                roles: link.roles.clone(),
                permissions: link.permissions.clone(),
            }
        }
        None => {
            let users = env.auth.users.current();
            let Some(user) = users.get(subject).filter(|u| !u.disabled) else {
                return Ok(Err(RotateRefusal::UserDisabled));
            };
            tokens::AccessGrant::Roles(user.roles.clone())
        }
    };
    let (idle, _) = env.auth.lifetimes.of(record.remember_me);
    let binding = token.is_bound().then(tokens::Binding::new);
    let successor = tokens::new_refresh_token(subject, sid, binding.as_ref());
    let rotation = Rotation {
        subject,
        session: sid,
        presented: tokens::refresh_hash(presented),
        successor: tokens::refresh_hash(&successor),
        successor_expires_at: (now + idle.as_secs() as i64).min(record.absolute_expiry),
        now,
        grace: env.auth.refresh_grace.as_secs() as i64,
        idle: idle.as_secs() as i64,
    };
    let successor = match env.store.rotate_refresh(&rotation).await? {
        RotateOutcome::Rotated(_) => Some(successor),
        // Another request (a second tab) rotated this token a moment ago: it got the
        // successor; this one gets an access token and keeps no refresh token of its own.
        RotateOutcome::Concurrent(_) => None,
        RotateOutcome::ReuseDetected { subject } => {
            env.audit.emit(&AuditEvent {
                subject: Some(&subject),
                session: Some(sid),
                ..env.event(
                    "refresh.reuse_detected",
                    "refresh.reuse_detected",
                    "/auth/refresh",
                )
            });
            return Ok(Err(RotateRefusal::Reuse));
        }
        RotateOutcome::Invalid => return Ok(Err(RotateRefusal::Invalid)),
    };
    Ok(Ok(Rotated {
        successor,
        binding,
        remember_me: record.remember_me,
        grant,
        link: record.provider,
    }))
}

/// The request's identity ([`identify`]) when the gateway issued its token: verified, with a
/// live session and an enabled user. `None` when there is none, or it is refused or another
/// issuer's; `Err` only when the store cannot answer, which fails closed (503) rather than
/// pass for "not signed in".
pub(super) async fn signed_in(
    headers: &HeaderMap,
    env: &Env<'_>,
) -> Result<Option<Signed>, GatewayError> {
    // The latency histograms describe proxied requests; the auth flow's own are not in them.
    let mut timings = identify::Timings::default();
    let identity = match identify::identify(
        headers,
        env.identify,
        env.store,
        env.now,
        env.metrics,
        &mut timings,
    )
    .await
    {
        Ok(identity) => identity,
        Err(IdentifyError::StoreUnavailable { source, .. }) => return Err(source.into()),
        Err(
            IdentifyError::MissingCredential
            | IdentifyError::BadCredential(_)
            | IdentifyError::TokenRefused(_)
            | IdentifyError::SessionRefused { .. }
            | IdentifyError::UserDisabled { .. }
            // Only the gateway's own tokens count here, and its keys are never remote.
            | IdentifyError::KeysUnavailable { .. },
        ) => return Ok(None),
    };
    if !identity.is_own() {
        return Ok(None);
    }
    let token = identity.token();
    Ok(Some(Signed {
        subject: token.subject.to_string(),
        session: token.session.as_deref().unwrap_or_default().to_owned(),
        jti: Some(token.jti.to_string()),
        expires_at: token.expires_at,
        rotated: None,
    }))
}
