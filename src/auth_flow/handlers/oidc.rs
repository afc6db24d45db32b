//! `GET /auth/oidc/<id>` (start a sign-in through an OpenID Provider),
//! `GET /auth/oidc/<id>/callback` (its answer) and `POST /auth/oidc/<id>/backchannel-logout`
//! (the provider ending a user's session): see [`crate::auth_flow::oidc`] for the flow
//! and where its secrets live.
//!
//! Every ending is audited once: `login.oidc_started` when the browser is sent to the provider,
//! `login.success` (reason `login.oidc`) or `login.failure` with a reason id of
//! [`Failure::reason_id`], the provider's id as the detail. A failure answers the login page
//! with a plain message, never a redirect: a provider that keeps failing cannot make a loop.

use http::header::SET_COOKIE;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Env;
use super::input::{BodyKind, form_field, read_body};
use super::login::{Opened, login_page_error, mint, open_session, set_token_cookies};
use super::respond::{json, see_other};
use crate::audit::AuditEvent;
use crate::auth_flow::cookies;
use crate::auth_flow::oidc::{self, Failure, FlowState, Provider};
use crate::auth_flow::tokens::{self, AccessGrant};
use crate::body::GatewayBody;
use crate::error::{AuthError, GatewayError};
use crate::keys::remote::Trigger;
use crate::pipeline::route::RouteError;
use crate::pipeline::verify::{self, TokenError};
use crate::store::{ProviderLink, SessionStore};

/// Answers `GET /auth/oidc/<rest>`: `<id>` starts, `<id>/callback` finishes.
pub(super) async fn handle(
    headers: &HeaderMap,
    rest: &str,
    query: Option<&str>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let (id, callback) = match rest.strip_suffix("/callback") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    let Some(provider) = oidc::find(&env.auth.providers, id) else {
        return Err(RouteError::NotFound.into());
    };
    if callback {
        callback_of(headers, provider, query.unwrap_or(""), env).await
    } else {
        start(headers, provider, query, env).await
    }
}

/// The audit event of a step through `provider`, counted in `portcullis_oidc_events_total` as
/// it is built (each is emitted once).
fn event<'e>(
    env: &'e Env<'_>,
    event: &'static str,
    reason_id: &'static str,
    path: &'e str,
    provider: &'e Provider,
) -> AuditEvent<'e> {
    env.metrics.oidc(event, reason_id);
    AuditEvent {
        method: Some("GET"),
        detail: Some(&provider.id),
        ..env.event(event, reason_id, path)
    }
}

/// Sign-in starts allowed per client address and throttle window, per failed login the
/// throttle allows (`auth.throttle.per_ip`).
const STARTS_PER_FAILED_LOGIN: u32 = 10;

/// A new `state`, `nonce` and PKCE verifier, kept in the store for [`oidc::FLOW_TTL`]; 303 to
/// the provider's authorization endpoint.
async fn start(
    headers: &HeaderMap,
    provider: &Provider,
    query: Option<&str>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let path = format!("{}{}", oidc::PREFIX, provider.id);
    let return_to = query
        .and_then(|q| form_field(q, "return_to"))
        .filter(|r| !r.is_empty() && r.len() <= 2048);
    let endpoints = env
        .identify
        .verifier
        .keys
        .remote_for(&provider.iss)
        .and_then(|r| r.endpoints());
    let Some(endpoints) = endpoints else {
        return Ok(failed(
            env,
            &path,
            provider,
            Failure::Discovery,
            return_to.as_deref(),
        ));
    };
    // One binding value per browser, kept while it has flows open (several tabs share it).
    let browser = match cookies::read(headers, cookies::OIDC_COOKIE) {
        Some(v) if v.len() == 43 => v.to_owned(),
        _ => tokens::random_token(32),
    };
    let state = tokens::random_token(32);
    let flow = FlowState {
        provider: provider.id.clone(),
        nonce: tokens::random_token(32),
        verifier: tokens::random_token(32),
        return_to,
        browser: oidc::s256(&browser),
    };
    let value = serde_json::to_string(&flow).map_err(|e| GatewayError::Internal(Box::new(e)))?;
    let now = env.now;
    // Every start writes a state the store keeps for `FLOW_TTL`, before anyone has signed in: a
    // client starting sign-ins in a loop would fill the store. So each client address may start
    // at most ten times its failed-login allowance per throttle window (500 per 15 minutes by
    // default: generous for an office behind one address, a wall for a flood from one).
    let throttle = env.auth.throttle;
    let started = env
        .store
        .throttle_hit(
            &format!("oidc-start:{}", env.client.ip),
            throttle.window.as_secs() as i64,
            now,
        )
        .await?;
    if started.count > throttle.per_ip.saturating_mul(STARTS_PER_FAILED_LOGIN) {
        env.audit.emit(&event(
            env,
            "login.oidc_started",
            "oidc.throttled",
            &path,
            provider,
        ));
        return Err(AuthError::Throttled {
            retry_after: (started.resets_at - now).max(1) as u64,
        }
        .into());
    }
    env.store
        .put_login_state(
            &oidc::state_key(&state),
            &value,
            now + oidc::FLOW_TTL.as_secs() as i64,
            now,
        )
        .await?;
    env.audit.emit(&event(
        env,
        "login.oidc_started",
        "oidc.started",
        &path,
        provider,
    ));
    let location = oidc::authorization_url(
        &endpoints.authorization,
        provider,
        &state,
        &flow.nonce,
        &oidc::s256(&flow.verifier),
    );
    let mut response = see_other(&location);
    response
        .headers_mut()
        .append(SET_COOKIE, cookies::oidc(&browser, oidc::FLOW_TTL));
    Ok(response)
}

/// Audits a failed sign-in and answers the login page with its message.
fn failed(
    env: &Env<'_>,
    path: &str,
    provider: &Provider,
    failure: Failure,
    return_to: Option<&str>,
) -> Response<GatewayBody> {
    env.audit.emit(&event(
        env,
        "login.failure",
        failure.reason_id(),
        path,
        provider,
    ));
    let status = match failure {
        Failure::State
        | Failure::Browser
        | Failure::WrongProvider
        | Failure::ProviderError
        | Failure::Issuer
        | Failure::NoCode
        | Failure::Nonce
        | Failure::IdToken => StatusCode::BAD_REQUEST,
        Failure::Email | Failure::Groups => StatusCode::FORBIDDEN,
        Failure::Discovery | Failure::TokenEndpoint | Failure::NoIdToken => StatusCode::BAD_GATEWAY,
    };
    login_page_error(env, status, return_to, failure.message())
}

/// The provider's answer: the state taken (single use) and checked against this browser and
/// provider, the code exchanged, the ID token verified, the user admitted; then a new session.
async fn callback_of(
    headers: &HeaderMap,
    provider: &Provider,
    query: &str,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let path = format!("{}{}/callback", oidc::PREFIX, provider.id);
    let fail =
        |failure, return_to: Option<&str>| Ok(failed(env, &path, provider, failure, return_to));
    let now = env.now;
    // The state first, whatever else the answer says: taking it ends it, so an answer is
    // used at most once, an error answer included.
    let Some(state) = form_field(query, "state").filter(|s| !s.is_empty() && s.len() <= 256) else {
        return fail(Failure::State, None);
    };
    let Some(taken) = env
        .store
        .take_login_state(&oidc::state_key(&state), now)
        .await?
    else {
        return fail(Failure::State, None);
    };
    let Ok(flow) = serde_json::from_str::<FlowState>(&taken) else {
        return fail(Failure::State, None);
    };
    let return_to = flow.return_to.as_deref();
    if flow.provider != provider.id {
        return fail(Failure::WrongProvider, return_to);
    }
    let same_browser = cookies::read(headers, cookies::OIDC_COOKIE).is_some_and(|c| {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            oidc::s256(c).as_bytes(),
            flow.browser.as_bytes(),
        )
        .is_ok()
    });
    if !same_browser {
        return fail(Failure::Browser, return_to);
    }
    // RFC 9207: a provider that names itself in its answer must be the one asked (an answer
    // from another provider's flow, a mix-up, is refused before its code goes anywhere).
    if form_field(query, "iss").is_some_and(|iss| iss != provider.iss) {
        return fail(Failure::Issuer, return_to);
    }
    if form_field(query, "error").is_some() {
        return fail(Failure::ProviderError, return_to);
    }
    let Some(code) = form_field(query, "code").filter(|c| !c.is_empty() && c.len() <= 4096) else {
        return fail(Failure::NoCode, return_to);
    };
    let keys = &env.identify.verifier.keys;
    let Some(remote) = keys.remote_for(&provider.iss) else {
        return fail(Failure::Discovery, return_to);
    };
    let Some(endpoints) = remote.endpoints() else {
        return fail(Failure::Discovery, return_to);
    };
    let answer = remote
        .fetcher()
        .post_form(
            &endpoints.token,
            oidc::token_form(provider, &code, &flow.verifier),
            &provider.client_id,
            provider.client_secret.expose(),
        )
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(provider = %provider.id, error = %e, "the token endpoint refused the code");
            return fail(Failure::TokenEndpoint, return_to);
        }
    };
    let Some(id_token) = answer.json.get("id_token").and_then(|v| v.as_str()) else {
        return fail(Failure::NoIdToken, return_to);
    };
    let verifier = &env.identify.verifier;
    let verify_id_token = || {
        verify::verify_id_token(
            id_token,
            verifier,
            provider.issuer,
            &provider.client_id,
            now,
            env.metrics,
        )
    };
    let mut verified = verify_id_token();
    if matches!(verified, Err(TokenError::UnknownKey)) {
        // The provider may have rotated its keys since the last fetch: one refetch, within the
        // same cool-down the proxy's unknown `kid`s share.
        if let Ok(Some(change)) = keys
            .fetch(remote, Trigger::UnknownKid, now, env.metrics)
            .await
        {
            env.identify
                .token_cache
                .forget_keys(remote.issuer, &change.removed);
        }
        verified = verify_id_token();
    }
    let id = match verified {
        Ok(id) => id,
        Err(e) => {
            tracing::info!(provider = %provider.id, reason = e.reason_id(), "ID token refused");
            return fail(Failure::IdToken, return_to);
        }
    };
    let nonce_ok = id.nonce.as_deref().is_some_and(|n| {
        aws_lc_rs::constant_time::verify_slices_are_equal(n.as_bytes(), flow.nonce.as_bytes())
            .is_ok()
    });
    if !nonce_ok {
        return fail(Failure::Nonce, return_to);
    }
    if let Err(failure) = oidc::admit(provider, &id.claims) {
        return fail(failure, return_to);
    }
    let (roles, permissions) = oidc::mapped(provider, &id.claims, &env.identify.permissions);

    // The user, per provider: `<iss>#<sub>`, as the provider's own tokens are known.
    let subject = keys.issuers[provider.issuer]
        .user_key(&id.subject)
        .into_string();
    let link = ProviderLink {
        provider: provider.id.clone(),
        sub: id.subject.to_string(),
        sid: id.session.as_deref().map(str::to_owned),
        roles: roles.clone(),
        permissions: permissions.clone(),
        id_token: Some(id_token.to_owned()),
        // In the clear only until `open_session` seals it with the session id (or drops it
        // when the provider has no key to seal it with).
        refresh_token: provider
            .refresh_key
            .as_ref()
            .and(answer.json.get("refresh_token").and_then(|v| v.as_str()))
            .filter(|t| !t.is_empty() && t.len() <= 4096)
            .map(str::to_owned),
    };
    let keeps_refresh = link.refresh_token.is_some();
    let binding = tokens::Binding::new();
    let provider_sid = link.sid.clone();
    let Opened {
        sid,
        refresh_token,
        absolute,
        ..
    } = open_session(env, &subject, false, Some(&binding), Some(link), now).await?;
    if let Some(provider_sid) = provider_sid {
        // A back-channel logout naming only this `sid` finds the user through it.
        env.store
            .put_provider_sid(
                &oidc::provider_sid_key(&provider.iss, &provider_sid),
                &subject,
                now + absolute.as_secs() as i64,
                now,
            )
            .await?;
    }
    if keeps_refresh {
        // The first refresh against the provider comes one interval after the sign-in.
        env.store
            .first_use(
                &oidc::provider_refresh_key(&sid),
                now + provider.refresh_interval.as_secs() as i64,
                now,
            )
            .await?;
    }
    let access = mint(
        env.auth,
        &subject,
        &sid,
        &AccessGrant::Provider {
            provider: provider.id.clone(),
            roles,
            permissions,
        },
        now,
    )?;
    env.audit.emit(&AuditEvent {
        subject: Some(&subject),
        session: Some(&sid),
        ..event(env, "login.success", "login.oidc", &path, provider)
    });
    let target = env.auth.redirect.target(return_to);
    let mut response = see_other(&target);
    set_token_cookies(
        response.headers_mut(),
        env,
        &access,
        Some((refresh_token.as_str(), &binding)),
        None,
    );
    // A new CSRF token too: one planted before the sign-in is useless after it.
    response
        .headers_mut()
        .append(SET_COOKIE, cookies::csrf(&tokens::random_token(32)));
    Ok(response)
}

/// `POST /auth/oidc/<id>/backchannel-logout`: the provider says a user's session there ended
/// (OpenID Connect Back-Channel Logout 1.0). The `logout_token` is verified by the verify stage
/// ([`verify::verify_logout_token`]), its `jti` recorded in the store for as long as the token
/// could be replayed (a replay is refused), and the matching gateway sessions end on every
/// instance: with `sid`, the sessions of `<iss>#<sub>` signed in through that provider session;
/// with `sub` alone, every session of the user (the user is revoked, as by logout-all); with
/// `sid` alone, the sessions of that provider session, whose user the store indexed at the
/// callback ([`SessionStore::put_provider_sid`]). 200 with an empty body, or 400 with `{"error":"invalid_request"}` and nothing
/// more; audited as `logout.backchannel`.
pub(super) async fn backchannel_logout(
    request: Request<Incoming>,
    rest: &str,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let Some(provider) = rest
        .strip_suffix(BACKCHANNEL_SUFFIX)
        .and_then(|id| oidc::find(&env.auth.providers, id))
    else {
        return Err(RouteError::NotFound.into());
    };
    let path = format!("{}{}{BACKCHANNEL_SUFFIX}", oidc::PREFIX, provider.id);
    let refuse = |reason: &'static str| {
        env.metrics.oidc("logout.backchannel", reason);
        env.audit.emit(&AuditEvent {
            method: Some("POST"),
            detail: Some(&provider.id),
            ..env.event("logout.backchannel", reason, &path)
        });
        let mut response = json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "invalid_request"}),
        );
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        Ok(response)
    };
    let body = match read_body(request, env).await {
        Ok((BodyKind::Form, body)) => body,
        Ok((BodyKind::Json, _)) | Err(GatewayError::Auth(_)) => {
            return refuse("logout_token.missing");
        }
        Err(e) => return Err(e),
    };
    let Some(token) = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| form_field(text, "logout_token"))
    else {
        return refuse("logout_token.missing");
    };
    let now = env.now;
    let keys = &env.identify.verifier.keys;
    let verified = verify::verify_logout_token(
        &token,
        &env.identify.verifier,
        provider.issuer,
        &provider.client_id,
        now,
        env.metrics,
    );
    let logout = match verified {
        Ok(logout) => logout,
        Err(e) => return refuse(e.reason_id()),
    };
    // Single use within its lifetime, on every instance.
    let jti_key = crate::store::jti_key(&provider.iss, &format!("logout:{}", logout.jti));
    if !env
        .store
        .first_use(&jti_key, logout.replayable_until, now)
        .await?
    {
        return refuse("logout_token.replayed");
    }
    // The user: `<iss>#<sub>`, or, for a token naming only `sid`, the user the provider
    // session signed in (indexed at the callback; none when no gateway session came of it).
    let user = match (logout.subject.as_deref(), logout.session.as_deref()) {
        (Some(sub), _) => Some(keys.issuers[provider.issuer].user_key(sub).into_string()),
        (None, Some(provider_sid)) => {
            env.store
                .provider_sid_user(&oidc::provider_sid_key(&provider.iss, provider_sid), now)
                .await?
        }
        // The verify stage refuses a token with neither.
        (None, None) => return refuse("logout_token.no_subject"),
    };
    let ended = match (user.as_deref(), logout.session.as_deref()) {
        (None, _) => 0,
        (Some(user), Some(provider_sid)) => {
            let mut ended = 0;
            for record in env.store.sessions_of(user, now).await? {
                let matches = record.provider.as_ref().is_some_and(|link| {
                    link.provider == provider.id && link.sid.as_deref() == Some(provider_sid)
                });
                if matches && env.store.revoke_session(user, &record.id).await? {
                    ended += 1;
                }
            }
            ended
        }
        (Some(user), None) => {
            crate::pipeline::identify::revoke_user(env.store, env.identify, user, now).await?;
            1
        }
    };
    tracing::info!(provider = %provider.id, ended, "back-channel logout applied");
    env.metrics.oidc("logout.backchannel", "logout.backchannel");
    env.audit.emit(&AuditEvent {
        method: Some("POST"),
        subject: user.as_deref(),
        detail: Some(&provider.id),
        ..env.event("logout.backchannel", "logout.backchannel", &path)
    });
    let mut response = json(StatusCode::OK, &serde_json::json!({}));
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// The back-channel logout endpoint of a provider: `/auth/oidc/<id>` and this.
pub(super) const BACKCHANNEL_SUFFIX: &str = "/backchannel-logout";

/// The provider's end-session URL for `link`'s sign-in (OpenID Connect RP-Initiated Logout 1.0:
/// `id_token_hint`, `client_id`, and `post_logout_redirect_uri` = the login page, which must be
/// registered at the provider), with the provider's display name; `None` when the provider is
/// no longer configured, has no `end_session_endpoint`, or the session kept no ID token.
pub(super) fn end_session_url(env: &Env<'_>, link: &ProviderLink) -> Option<(String, String)> {
    use crate::keys::fetch::form_encode as enc;
    let provider = oidc::find(&env.auth.providers, &link.provider)?;
    let id_token = link.id_token.as_deref()?;
    let endpoint = env
        .identify
        .verifier
        .keys
        .remote_for(&provider.iss)?
        .endpoints()?
        .end_session
        .clone()?
        .to_string();
    let sep = if endpoint.contains('?') { '&' } else { '?' };
    let back = format!(
        "{}{}",
        env.auth.issuer.trim_end_matches('/'),
        crate::auth_flow::LOGIN_PATH
    );
    Some((
        format!(
            "{endpoint}{sep}id_token_hint={}&client_id={}&post_logout_redirect_uri={}",
            enc(id_token),
            enc(&provider.client_id),
            enc(&back)
        ),
        provider.name.clone(),
    ))
}
