//! `POST /auth/logout` (this session) and `POST /auth/logout-all` (every session of the user),
//! and the cookies both expire.

use http::header::SET_COOKIE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Env;
use super::caller::caller;
use super::input::{BodyKind, body_csrf, check_csrf_token, needs_csrf, read_body_or_empty};
use super::respond::{empty, html, not_signed_in, refused, see_other, store_refused};
use crate::audit::AuditEvent;
use crate::auth_flow::csrf;
use crate::auth_flow::{LOGIN_PATH, cookies, pages};
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::pipeline::identify;
use crate::store::SessionStore;

pub(super) async fn logout(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let auth = env.auth;
    let audit_path = "/auth/logout";
    let headers = request.headers().clone();
    csrf::same_origin(&headers, &env.client.origin)
        .map_err(|e| refused(env, "logout", audit_path, e))?;
    let (kind, body) = read_body_or_empty(request, env).await?;
    let form = kind == Some(BodyKind::Form);
    let field = body_csrf(kind, &body);
    // The CSRF token first: proving the caller by its refresh cookie rotates it.
    if needs_csrf(&headers, auth) {
        check_csrf_token(env, &headers, field.as_deref(), "logout", audit_path)?;
    }
    let signed = caller(&headers, env).await?;
    // A session signed in through an OpenID Provider: after this logout, the page offers to
    // sign out at the provider too (read before the session is gone).
    let mut at_provider = None;
    if let Some(s) = signed.as_ref().filter(|_| form) {
        if let Some(link) = env
            .store
            .session(&s.subject, &s.session, env.now)
            .await?
            .and_then(|r| r.provider)
        {
            at_provider = super::oidc::end_session_url(env, &link);
        }
    }
    let (subject, sid, reason) = match &signed {
        Some(s) => {
            let unrevoked = |e| store_refused(env, "logout", audit_path, &s.subject, &s.session, e);
            env.store
                .revoke_session(&s.subject, &s.session)
                .await
                .map_err(unrevoked)?;
            if let Some(jti) = &s.jti {
                env.store
                    .deny_jti(&auth.issuer, jti, s.expires_at, env.now)
                    .await
                    .map_err(unrevoked)?;
            }
            (
                Some(s.subject.clone()),
                Some(s.session.clone()),
                "logout.ok",
            )
        }
        None => (None, None, "logout.no_session"),
    };
    env.audit.emit(&AuditEvent {
        subject: subject.as_deref(),
        session: sid.as_deref(),
        ..env.event("logout", reason, audit_path)
    });
    let mut response = match at_provider {
        Some((url, name)) => html(
            StatusCode::OK,
            pages::signed_out_with_provider(&name, &url),
            &env.auth.page_csp,
        ),
        None if form => see_other(LOGIN_PATH),
        None => empty(StatusCode::NO_CONTENT),
    };
    expire_everything(response.headers_mut(), env);
    Ok(response)
}

/// Logout's cookies: every auth cookie expired (the access cookie with its `Domain` when
/// `auth.cookie_domain` applies), a refresh cookie planted for a parent domain too
/// (docs/security.md 36), and `Clear-Site-Data`.
fn expire_everything(headers: &mut HeaderMap, env: &Env<'_>) {
    let domain = env.auth.access_domain(&env.client.origin);
    for c in cookies::expire_all(&env.auth.access_cookie, domain) {
        headers.append(SET_COOKIE, c);
    }
    for c in cookies::expire_planted(&env.client.origin) {
        headers.append(SET_COOKIE, c);
    }
    headers.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
}

pub(super) async fn logout_all(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let auth = env.auth;
    let headers = request.headers().clone();
    csrf::same_origin(&headers, &env.client.origin)
        .map_err(|e| refused(env, "logout_all", "/auth/logout-all", e))?;
    let (kind, body) = read_body_or_empty(request, env).await?;
    let form = kind == Some(BodyKind::Form);
    if needs_csrf(&headers, auth) {
        let field = body_csrf(kind, &body);
        check_csrf_token(
            env,
            &headers,
            field.as_deref(),
            "logout_all",
            "/auth/logout-all",
        )?;
    }
    let Some(signed) = caller(&headers, env).await? else {
        return Err(not_signed_in(env, "POST", "/auth/logout-all"));
    };
    let unrevoked = |e| {
        store_refused(
            env,
            "logout_all",
            "/auth/logout-all",
            &signed.subject,
            &signed.session,
            e,
        )
    };
    identify::revoke_user(env.store, env.identify, &signed.subject, env.now)
        .await
        .map_err(unrevoked)?;
    if let Some(jti) = &signed.jti {
        env.store
            .deny_jti(&auth.issuer, jti, signed.expires_at, env.now)
            .await
            .map_err(unrevoked)?;
    }
    env.audit.emit(&AuditEvent {
        subject: Some(&signed.subject),
        session: Some(&signed.session),
        ..env.event("logout_all", "logout_all.ok", "/auth/logout-all")
    });
    let mut response = if form {
        see_other(LOGIN_PATH)
    } else {
        empty(StatusCode::NO_CONTENT)
    };
    expire_everything(response.headers_mut(), env);
    Ok(response)
}
