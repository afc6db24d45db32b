//! `GET /auth/sessions` (the user's sessions, HTML or JSON) and `POST /auth/sessions/revoke`
//! (ends one of them).

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::Env;
use super::caller::{caller, signed_in};
use super::input::{
    BodyKind, body_csrf, check_csrf_token, form_field, header_str, needs_csrf, page_csrf_token,
    read_body,
};
use super::login::{mint, set_token_cookies};
use super::respond::{empty, html, json, not_signed_in, refused, see_other, store_refused};
use crate::audit::AuditEvent;
use crate::auth_flow::csrf;
use crate::auth_flow::{cookies, pages};
use crate::body::GatewayBody;
use crate::error::{AuthError, GatewayError};
use crate::store::SessionStore;

pub(super) async fn sessions_page(
    headers: &HeaderMap,
    method: &str,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let Some(signed) = signed_in(headers, env).await? else {
        return Err(not_signed_in(env, method, "/auth/sessions"));
    };
    let now = env.now;
    let list = env.store.sessions_of(&signed.subject, now).await?;
    let (csrf_token, fresh) = page_csrf_token(headers);
    let wants_json = header_str(headers, "accept")
        .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
    let mut response = if wants_json {
        let sessions: Vec<serde_json::Value> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "device": pages::device(&s.user_agent),
                    "user_agent": s.user_agent,
                    "ip": s.ip,
                    "created_at": crate::audit::rfc3339(s.created_at, 0),
                    "last_seen": crate::audit::rfc3339(s.last_seen, 0),
                    "remember_me": s.remember_me,
                    "provider": s.provider.as_ref().map(|p| p.provider.as_str()),
                    "current": s.id == signed.session,
                })
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({
                "subject": signed.subject,
                "sessions": sessions,
                "csrf_token": csrf_token,
            }),
        )
    } else {
        let users = env.auth.users.current();
        let provider_name = |id: &str| {
            crate::auth_flow::oidc::find(&env.auth.providers, id)
                .map_or(id.to_owned(), |p| p.name.clone())
        };
        let name = users
            .get(&signed.subject)
            .map(|u| u.display_name.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| {
                // A provider sign-in's user is `<iss>#<sub>` to the gateway; the person knows
                // themselves by the provider's `sub` at that provider.
                list.iter()
                    .find(|r| r.id == signed.session)
                    .and_then(|r| r.provider.as_ref())
                    .map(|link| format!("{} at {}", link.sub, provider_name(&link.provider)))
            })
            .unwrap_or_else(|| signed.subject.clone());
        let rows: Vec<pages::SessionRow<'_>> = list
            .iter()
            .map(|record| pages::SessionRow {
                record,
                current: record.id == signed.session,
                provider: record.provider.as_ref().map(|link| {
                    crate::auth_flow::oidc::find(&env.auth.providers, &link.provider)
                        .map_or(link.provider.as_str(), |p| p.name.as_str())
                }),
            })
            .collect();
        html(
            StatusCode::OK,
            pages::sessions(&name, &rows, &csrf_token),
            &env.auth.page_csp,
        )
    };
    if fresh {
        response
            .headers_mut()
            .append(SET_COOKIE, cookies::csrf(&csrf_token));
    }
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
struct RevokeInput {
    #[serde(default)]
    session: String,
}

pub(super) async fn revoke(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let headers = request.headers().clone();
    csrf::same_origin(&headers, &env.client.origin)
        .map_err(|e| refused(env, "session.revoke", "/auth/sessions/revoke", e))?;
    let (kind, body) = read_body(request, env).await?;
    if needs_csrf(&headers, env.auth) {
        let field = body_csrf(Some(kind), &body);
        check_csrf_token(
            env,
            &headers,
            field.as_deref(),
            "session.revoke",
            "/auth/sessions/revoke",
        )?;
    }
    let Some(signed) = caller(&headers, env).await? else {
        return Err(not_signed_in(env, "POST", "/auth/sessions/revoke"));
    };
    let form = kind == BodyKind::Form;
    let target = match kind {
        BodyKind::Form => {
            let text = std::str::from_utf8(&body).map_err(|_| AuthError::BadBody)?;
            form_field(text, "session").unwrap_or_default()
        }
        BodyKind::Json => {
            serde_json::from_slice::<RevokeInput>(&body)
                .map_err(|_| AuthError::BadBody)?
                .session
        }
    };
    // Scoped to the caller: another user's session id is simply not found (docs/security.md 19).
    let revoked = !target.is_empty()
        && env
            .store
            .revoke_session(&signed.subject, &target)
            .await
            .map_err(|e| {
                store_refused(
                    env,
                    "session.revoke",
                    "/auth/sessions/revoke",
                    &signed.subject,
                    &target,
                    e,
                )
            })?;
    env.audit.emit(&AuditEvent {
        subject: Some(&signed.subject),
        session: Some(&target),
        ..env.event(
            "session.revoke",
            if revoked {
                "session.revoked"
            } else {
                "session.not_found"
            },
            "/auth/sessions/revoke",
        )
    });
    if !revoked {
        return Err(AuthError::SessionNotFound.into());
    }
    let mut response = if form {
        see_other("/auth/sessions")
    } else {
        empty(StatusCode::NO_CONTENT)
    };
    // The caller's own access token had expired and its refresh token was rotated to prove
    // it: hand back the new pair, as a refresh would.
    if let Some(rotated) = &signed.rotated
        && signed.session != target
    {
        let now = env.now;
        let access = mint(
            env.auth,
            &signed.subject,
            &signed.session,
            &rotated.grant,
            now,
        )?;
        let (_, absolute) = env.auth.lifetimes.of(rotated.remember_me);
        set_token_cookies(
            response.headers_mut(),
            env,
            &access,
            rotated.cookie(),
            rotated.remember_me.then_some(absolute),
        );
    }
    Ok(response)
}
