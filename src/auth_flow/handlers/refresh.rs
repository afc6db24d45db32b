//! `POST /auth/refresh`: a refresh token (the browser's bound cookie, or an API client's in the
//! body) rotated for a new access token, and every way a refresh is refused.

use http::header::SET_COOKIE;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::Env;
use super::caller::{RotateRefusal, rotate};
use super::input::{BodyKind, check_csrf_token, form_field, read_body_or_empty};
use super::login::{mint, set_token_cookies};
use super::respond::{json, refused, see_other};
use crate::audit::AuditEvent;
use crate::auth_flow::csrf;
use crate::auth_flow::tokens;
use crate::auth_flow::{LOGIN_PATH, cookies};
use crate::body::GatewayBody;
use crate::error::{AuthError, GatewayError, RefreshFailure};
use crate::pipeline::{credential, verify};
use crate::store::SessionStore;

#[derive(Debug, Default, Deserialize)]
struct RefreshInput {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default, skip)]
    csrf: Option<String>,
}

pub(super) async fn refresh(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let auth = env.auth;
    let audit_path = "/auth/refresh";
    let headers = request.headers().clone();
    csrf::same_origin(&headers, &env.client.origin)
        .map_err(|e| refused(env, "refresh.failure", audit_path, e))?;
    let (kind, body) = read_body_or_empty(request, env).await?;
    let input = match kind {
        Some(BodyKind::Json) => serde_json::from_slice(&body).map_err(|_| AuthError::BadBody)?,
        Some(BodyKind::Form) => {
            let text = std::str::from_utf8(&body).map_err(|_| AuthError::BadBody)?;
            RefreshInput {
                refresh_token: None,
                return_to: form_field(text, "return_to").filter(|r| !r.is_empty()),
                csrf: form_field(text, "csrf"),
            }
        }
        None => RefreshInput::default(),
    };
    let form = kind == Some(BodyKind::Form);
    // An API client sends its token in the body; a browser's comes in the cookie, which makes
    // it an ambient credential, so the CSRF token must come with it.
    // A refresh cookie counts only with the binding cookie it was issued with: a planted one
    // (docs/security.md 36) is ignored next to the browser's own, refused without it.
    let mut planted = false;
    let (presented, from_cookie) = match input.refresh_token.as_deref() {
        Some(t) => (t.to_owned(), false),
        None => {
            let cookie = match cookies::bound_refresh(&headers) {
                cookies::RefreshCookies::Bound {
                    token,
                    planted: others,
                } => {
                    planted = others;
                    token
                }
                cookies::RefreshCookies::Absent => {
                    return refresh_failed(
                        env,
                        form,
                        input.return_to.as_deref(),
                        RefreshFailure::Missing,
                        None,
                    );
                }
                cookies::RefreshCookies::Unbound { subject } => {
                    return refresh_unbound(env, form, input.return_to.as_deref(), subject);
                }
            };
            check_csrf_token(
                env,
                &headers,
                input.csrf.as_deref(),
                "refresh.failure",
                audit_path,
            )?;
            (cookie.to_owned(), true)
        }
    };
    let Some(parsed) = tokens::parse_refresh_token(&presented) else {
        return refresh_failed(
            env,
            form,
            input.return_to.as_deref(),
            RefreshFailure::Invalid,
            None,
        );
    };
    // Cookie ⇔ bound: a browser's (bound) refresh token is good in its cookie only, next to
    // its binding — never in a body, where its successor's binding would have nowhere to go.
    if !from_cookie && parsed.is_bound() {
        return refresh_failed(
            env,
            form,
            input.return_to.as_deref(),
            RefreshFailure::BoundInBody,
            Some(&parsed.subject),
        );
    }
    let (subject, sid) = (parsed.subject.clone(), parsed.session);
    let now = env.now;

    // An access token of another user next to this refresh token: someone mixed credentials
    // (docs/security.md 21). Refuse rather than pick one. Cookie and bearer that disagree, or a
    // doubled cookie or header, are such a mix too (docs/security.md 24).
    let presented_access = match credential::credential(&headers, &auth.access_cookie) {
        Ok(token) => token,
        Err(
            e @ (credential::CredentialError::Conflicting
            | credential::CredentialError::DuplicateCookie
            | credential::CredentialError::DuplicateAuthorization),
        ) => {
            return refresh_failed(
                env,
                form,
                input.return_to.as_deref(),
                RefreshFailure::MixedCredentials(e),
                Some(&subject),
            );
        }
        Err(_) => None,
    };
    // A browser refreshes because its access token expired, so expiry must not hide whose
    // token it is: everything but the expiry is verified (one signature check per refresh).
    if let Some(token) = presented_access
        && let Ok(verified) = verify::verify_ignoring_expiry(
            token,
            &env.identify.verifier,
            &env.identify.permissions,
            now,
            env.metrics,
        )
        && *verified.subject != *subject
    {
        return refresh_failed(
            env,
            form,
            input.return_to.as_deref(),
            RefreshFailure::SubjectMismatch,
            Some(&subject),
        );
    }

    let rotated = match rotate(env, &parsed, &presented, now).await? {
        Ok(rotated) => rotated,
        Err(RotateRefusal::UserDisabled) => {
            // The user was deleted or disabled: the session ends here (docs/security.md 11).
            env.store.revoke_session(&subject, sid).await?;
            return refresh_failed(
                env,
                form,
                input.return_to.as_deref(),
                RefreshFailure::UserDisabled,
                Some(&subject),
            );
        }
        Err(RotateRefusal::Invalid) => {
            return refresh_failed(
                env,
                form,
                input.return_to.as_deref(),
                RefreshFailure::Invalid,
                Some(&subject),
            );
        }
        Err(RotateRefusal::Reuse) => {
            let mut response = refresh_error_response(
                form,
                input.return_to.as_deref(),
                env,
                AuthError::RefreshReuse,
            );
            let domain = auth.access_domain(&env.client.origin);
            for c in cookies::expire_tokens(&auth.access_cookie, domain) {
                response.headers_mut().append(SET_COOKIE, c);
            }
            return Ok(response);
        }
    };
    let mut rotated = rotated;
    let outcome =
        super::provider_refresh::refresh(env, &subject, sid, rotated.link.as_ref(), now).await?;
    if matches!(outcome, super::provider_refresh::Outcome::Refused) {
        env.store.revoke_session(&subject, sid).await?;
        return refresh_failed(
            env,
            form,
            input.return_to.as_deref(),
            RefreshFailure::ProviderRefused,
            Some(&subject),
        );
    }
    if let super::provider_refresh::Outcome::Refreshed(Some(grant)) = outcome {
        rotated.grant = grant;
    }
    let access = mint(auth, &subject, sid, &rotated.grant, now)?;
    let reason = if rotated.successor.is_some() {
        "refresh.rotated"
    } else {
        "refresh.concurrent"
    };
    env.audit.emit(&AuditEvent {
        subject: Some(&subject),
        session: Some(sid),
        ..env.event("refresh.success", reason, audit_path)
    });
    if !from_cookie {
        let mut body = serde_json::json!({
            "token_type": "Bearer",
            "access_token": access,
            "expires_in": auth.access_ttl.as_secs(),
            "session": sid,
        });
        if let Some(rt) = &rotated.successor {
            body["refresh_token"] = rt.as_str().into();
        }
        return Ok(json(StatusCode::OK, &body));
    }
    let mut response = if form {
        see_other(&auth.redirect.target(input.return_to.as_deref()))
    } else {
        json(
            StatusCode::OK,
            &serde_json::json!({ "subject": subject, "session": sid, "expires_in": auth.access_ttl.as_secs() }),
        )
    };
    let (_, absolute) = auth.lifetimes.of(rotated.remember_me);
    set_token_cookies(
        response.headers_mut(),
        env,
        &access,
        rotated.cookie(),
        rotated.remember_me.then_some(absolute),
    );
    if planted {
        for c in cookies::expire_planted(&env.client.origin) {
            response.headers_mut().append(SET_COOKIE, c);
        }
    }
    Ok(response)
}

/// A refresh cookie that is not bound to this browser (docs/security.md 36): planted by a
/// sibling subdomain, or left from before binding. Refused and audited as
/// `refresh.unbound`, with the subject it names; the token and binding cookies are expired,
/// and so is the planted cookie on every parent domain it can have been planted for.
fn refresh_unbound(
    env: &Env<'_>,
    form: bool,
    return_to: Option<&str>,
    subject: Option<String>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let mut response = refresh_failed(
        env,
        form,
        return_to,
        RefreshFailure::Unbound,
        subject.as_deref(),
    )?;
    for c in cookies::expire_planted(&env.client.origin) {
        response.headers_mut().append(SET_COOKIE, c);
    }
    Ok(response)
}

/// A refused refresh: audited; a browser form goes back to the login page with its token
/// cookies expired, an API client gets 401.
fn refresh_failed(
    env: &Env<'_>,
    form: bool,
    return_to: Option<&str>,
    failure: RefreshFailure,
    subject: Option<&str>,
) -> Result<Response<GatewayBody>, GatewayError> {
    env.audit.emit(&AuditEvent {
        subject,
        ..env.event("refresh.failure", failure.reason_id(), "/auth/refresh")
    });
    let mut response =
        refresh_error_response(form, return_to, env, AuthError::RefreshInvalid(failure));
    let domain = env.auth.access_domain(&env.client.origin);
    for c in cookies::expire_tokens(&env.auth.access_cookie, domain) {
        response.headers_mut().append(SET_COOKIE, c);
    }
    Ok(response)
}

fn refresh_error_response(
    form: bool,
    return_to: Option<&str>,
    env: &Env<'_>,
    err: AuthError,
) -> Response<GatewayBody> {
    if form {
        let target = env.auth.redirect.target(return_to);
        let location = format!(
            "{LOGIN_PATH}?return_to={}",
            crate::error::percent_encode(&target)
        );
        return see_other(&location);
    }
    crate::error::error_response(
        &GatewayError::Auth(err),
        &crate::error::ErrorContext {
            request_id: env.request_id,
            browser: false,
            login_url: None,
            return_to: None,
        },
    )
}
