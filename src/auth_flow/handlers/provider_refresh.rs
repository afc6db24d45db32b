//! The gateway's refresh of a provider login, staying in step with the provider
//! (docs/security.md 41): when the session keeps the provider's refresh token (sealed, see
//! [`crate::auth_flow::oidc::RefreshKey`]) and the provider's `provider_refresh_interval` has
//! passed since the sign-in or the last refresh against it, that refresh token is sent to the
//! provider's token endpoint (`grant_type=refresh_token`, client secret auth as the code
//! exchange).
//!
//! - `invalid_grant`: the user's grant at the provider is gone; the caller ends the session
//!   (audited `refresh.failure` / `refresh.provider_refused`).
//! - A network error, a timeout, a 5xx or any other answer: the session goes on (audited
//!   `refresh.provider` / `refresh.provider_unavailable`); the provider is asked again after
//!   the next interval.
//! - Success: a rotated refresh token, when the provider sends one, is sealed and stored in its
//!   place (audited `refresh.provider` / `refresh.provider_ok`). A new ID token is verified as
//!   at the callback (same `sub`); its claims must still pass the allow-lists (else the caller
//!   ends the session, as for `invalid_grant`) and are mapped again: the session's roles and
//!   permissions, and those of the access token this refresh mints, are the new ones.
//!
//! **One at a time.** Whether to ask is decided by [`SessionStore::first_use`] of the
//! session's [`oidc::provider_refresh_key`] until `now + interval`: atomic in either store
//! (across instances with Redis), so of the concurrent refreshes of one session (tabs) at most
//! one asks the provider; the others, and every refresh within the interval, go on without
//! asking. A provider's refresh token is therefore never sent twice (the fetch times out far
//! sooner than the shortest interval, 10 s).

use super::Env;
use crate::audit::AuditEvent;
use crate::auth_flow::oidc;
use crate::auth_flow::tokens::AccessGrant;
use crate::error::GatewayError;
use crate::keys::fetch::FetchError;
use crate::pipeline::verify;
use crate::store::{ProviderLink, SessionStore};

/// What came of the step.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Nothing to ask (no sealed token, no key, within the interval, another request asking).
    Skipped,
    /// The provider answered with new tokens; with a new ID token, the session's permissions
    /// re-mapped from it (what the next access token grants).
    Refreshed(Option<AccessGrant>),
    /// The provider could not be asked or did not answer usefully: the session goes on.
    Unavailable,
    /// The provider said `invalid_grant`: the caller ends the session.
    Refused,
}

/// Refreshes session `sid` of `subject` against its provider when it is time (see the module).
pub(super) async fn refresh(
    env: &Env<'_>,
    subject: &str,
    sid: &str,
    link: Option<&ProviderLink>,
    now: i64,
) -> Result<Outcome, GatewayError> {
    let Some(link) = link else {
        return Ok(Outcome::Skipped);
    };
    let Some(sealed) = link.refresh_token.as_deref() else {
        return Ok(Outcome::Skipped);
    };
    let Some(provider) = oidc::find(&env.auth.providers, &link.provider) else {
        return Ok(Outcome::Skipped);
    };
    let Some(key) = provider.refresh_key.as_ref() else {
        return Ok(Outcome::Skipped);
    };
    let interval = provider.refresh_interval.as_secs() as i64;
    if !env
        .store
        .first_use(&oidc::provider_refresh_key(sid), now + interval, now)
        .await?
    {
        return Ok(Outcome::Skipped);
    }
    let emit = |reason: &'static str| {
        env.metrics.oidc("refresh.provider", reason);
        env.audit.emit(&AuditEvent {
            subject: Some(subject),
            session: Some(sid),
            detail: Some(&provider.id),
            ..env.event("refresh.provider", reason, "/auth/refresh")
        });
    };
    // Sealed with another key (the key file was replaced) or for another session: nothing to
    // send. The session goes on as one without a provider refresh token.
    let Some(token) = key.open(sid, sealed) else {
        emit("refresh.provider_unreadable");
        return Ok(Outcome::Unavailable);
    };
    let remote = env.identify.verifier.keys.remote_for(&provider.iss);
    let Some((remote, endpoint)) = remote.and_then(|r| r.endpoints().map(|e| (r, e.token.clone())))
    else {
        emit("refresh.provider_unavailable");
        return Ok(Outcome::Unavailable);
    };
    let answer = remote
        .fetcher()
        .post_form(
            &endpoint,
            oidc::refresh_form(&token),
            &provider.client_id,
            provider.client_secret.expose(),
        )
        .await;
    match answer {
        Ok(answer) => {
            let mut updated = link.clone();
            if let Some(rotated) = answer
                .json
                .get("refresh_token")
                .and_then(|v| v.as_str())
                .filter(|t| !t.is_empty() && t.len() <= 4096 && *t != token)
            {
                updated.refresh_token = Some(key.seal(sid, rotated));
            }
            // A new ID token (OpenID Connect Core 12.2): verified as at the callback, for the
            // same user; it must still pass the allow-lists (a user removed from a required
            // group is no longer admitted: the session ends), and its claims are mapped again.
            let mut grant = None;
            if let Some(id_token) = answer.json.get("id_token").and_then(|v| v.as_str()) {
                let verified = verify::verify_id_token(
                    id_token,
                    &env.identify.verifier,
                    provider.issuer,
                    &provider.client_id,
                    now,
                    env.metrics,
                );
                match verified {
                    Ok(id) if *id.subject == *link.sub => {
                        if oidc::admit(provider, &id.claims).is_err() {
                            env.metrics
                                .oidc("refresh.provider", "refresh.provider_not_admitted");
                            return Ok(Outcome::Refused);
                        }
                        let (roles, permissions) =
                            oidc::mapped(provider, &id.claims, &env.identify.permissions);
                        updated.roles = roles.clone();
                        updated.permissions = permissions.clone();
                        updated.id_token = Some(id_token.to_owned());
                        grant = Some(AccessGrant::Provider {
                            provider: provider.id.clone(),
                            roles,
                            permissions,
                        });
                    }
                    // Another user's, or not verifiable: the permissions of the sign-in stay.
                    Ok(_) => emit("refresh.provider_id_token"),
                    Err(e) => {
                        tracing::info!(provider = %provider.id, reason = e.reason_id(), "refreshed ID token refused");
                        emit("refresh.provider_id_token");
                    }
                }
            }
            if updated != *link {
                env.store.set_provider_link(subject, sid, &updated).await?;
            }
            emit("refresh.provider_ok");
            Ok(Outcome::Refreshed(grant))
        }
        Err(FetchError::OAuth { error, .. }) if error == "invalid_grant" => {
            env.metrics
                .oidc("refresh.provider", "refresh.provider_refused");
            Ok(Outcome::Refused)
        }
        Err(e) => {
            tracing::warn!(provider = %provider.id, error = %e, "refresh against the provider failed; the session goes on");
            emit("refresh.provider_unavailable");
            Ok(Outcome::Unavailable)
        }
    }
}
