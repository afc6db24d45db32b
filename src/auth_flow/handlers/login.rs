//! `GET /auth/login` (the form, or the refresh page for a browser with a bound refresh cookie)
//! and `POST /auth/login`: throttling, the password check, the new session, and the access
//! token and token cookies it is answered with ([`mint`], [`set_token_cookies`]), which the
//! refresh and the revocation hand out too.

use http::header::SET_COOKIE;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::Env;
use super::input::{BodyKind, form_field, page_csrf_token, read_body};
use super::respond::{html, json, refused, see_other};
use crate::audit::AuditEvent;
use crate::auth_flow::csrf;
use crate::auth_flow::tokens::{self, AccessClaims, AccessGrant};
use crate::auth_flow::{AuthSettings, LOGIN_PATH, cookies, pages};
use crate::body::GatewayBody;
use crate::error::{AuthError, GatewayError};
use crate::store::{RefreshGrant, SessionRecord, SessionStore};
use crate::users;

/// Longest user agent kept in a session record.
const MAX_USER_AGENT: usize = 256;

/// The fields of a login, from a form or JSON.
#[derive(Debug, Default, Deserialize)]
struct LoginInput {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    remember_me: bool,
    #[serde(default)]
    return_to: Option<String>,
    /// API clients: put the tokens in the JSON body instead of cookies.
    #[serde(default)]
    return_tokens: bool,
    #[serde(default, skip)]
    csrf: Option<String>,
}

pub(super) fn login_page(
    headers: &HeaderMap,
    query: Option<&str>,
    env: &Env<'_>,
) -> Response<GatewayBody> {
    let return_to = query.and_then(|q| form_field(q, "return_to"));
    let (csrf_token, fresh) = page_csrf_token(headers);
    // A refresh cookie bound to this browser means it has a session whose access token
    // expired: offer the refresh (a POST) instead of the form. A planted refresh cookie (not
    // bound to this browser) gets the form, so it cannot trap the browser in a refresh that
    // fails. Reading this page changes nothing.
    let bound = matches!(
        cookies::bound_refresh(headers),
        cookies::RefreshCookies::Bound { .. }
    );
    let body = if bound {
        let target = env.auth.redirect.target(return_to.as_deref());
        pages::refresh(&csrf_token, &target)
    } else {
        if let Some(only) = single_provider(env.auth) {
            // One provider and no password form: nothing to choose, straight to the provider.
            return see_other(&provider_start(&only.id, return_to.as_deref()));
        }
        let buttons = provider_buttons(env.auth, return_to.as_deref());
        pages::login(&pages::LoginForm {
            csrf: &csrf_token,
            return_to: return_to.as_deref(),
            providers: &buttons,
            no_password: !env.auth.password_login,
            ..pages::LoginForm::default()
        })
    };
    let mut response = html(StatusCode::OK, body, &env.auth.page_csp);
    if fresh {
        response
            .headers_mut()
            .append(SET_COOKIE, cookies::csrf(&csrf_token));
    }
    response
}

pub(super) async fn login(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let auth = env.auth;
    let headers = request.headers().clone();
    csrf::same_origin(&headers, &env.client.origin)
        .map_err(|e| refused(env, "login.failure", LOGIN_PATH, e))?;
    let (kind, body) = read_body(request, env).await?;
    let mut input = match kind {
        BodyKind::Form => {
            let text = std::str::from_utf8(&body).map_err(|_| AuthError::BadBody)?;
            LoginInput {
                username: form_field(text, "username").unwrap_or_default(),
                password: form_field(text, "password").unwrap_or_default(),
                remember_me: form_field(text, "remember_me").is_some_and(|v| !v.is_empty()),
                return_to: form_field(text, "return_to").filter(|r| !r.is_empty()),
                return_tokens: false,
                csrf: form_field(text, "csrf"),
            }
        }
        BodyKind::Json => serde_json::from_slice(&body).map_err(|_| AuthError::BadBody)?,
    };
    let form = kind == BodyKind::Form;
    let username = users::canonical_username(&input.username);
    let audit_path = LOGIN_PATH;

    if form {
        // Login CSRF: a form must repeat the cookie set with the form.
        let cookie = cookies::read(&headers, cookies::CSRF_COOKIE);
        if let Err(e) = csrf::token_matches(cookie, input.csrf.as_deref()) {
            let (subject, digest) = audit_username(env, &username);
            env.audit.emit(&AuditEvent {
                subject,
                detail: digest.as_deref(),
                ..env.event("login.failure", e.reason_id(), audit_path)
            });
            return Ok(login_form_again(
                env,
                StatusCode::FORBIDDEN,
                &input,
                "Your sign-in form expired. Please try again.",
            ));
        }
    }
    // JSON logins need no CSRF token: the fetch-metadata check above refused cross-site
    // senders, and JSON cannot be posted cross-site without a CORS preflight, which the
    // gateway never grants.

    let now = env.now;
    let ip_key = format!("ip:{}", env.client.ip);
    let user_key = format!("user:{username}");
    let throttle = auth.throttle;
    let (by_ip, by_user) = (
        env.store.throttle_peek(&ip_key, now).await?,
        env.store.throttle_peek(&user_key, now).await?,
    );
    let blocked = [(by_ip, throttle.per_ip), (by_user, throttle.per_user)]
        .iter()
        .filter(|(a, limit)| a.count >= *limit)
        .map(|(a, _)| a.resets_at)
        .max();
    if let Some(resets_at) = blocked {
        let retry_after = (resets_at - now).max(1) as u64;
        return login_deferred(
            env,
            &username,
            form.then_some(&input),
            AuthError::Throttled { retry_after },
            "Too many failed sign-in attempts. Please wait a few minutes and try again.",
        );
    }

    let current_users = auth.users.current();
    let password = users::Password::new(std::mem::take(&mut input.password));
    let slots = auth.users.slots();
    let user = match users::authenticate(slots, current_users, &input.username, password).await {
        Ok(user) => user,
        Err(users::LoginFailure::Busy) => {
            // Nothing was verified: not a failed attempt, so no throttle count.
            return login_deferred(
                env,
                &username,
                form.then_some(&input),
                AuthError::Busy,
                "Sign-in is busy right now. Please try again in a moment.",
            );
        }
        Err(failure) => {
            let window = throttle.window.as_secs() as i64;
            env.store.throttle_hit(&ip_key, window, now).await?;
            env.store.throttle_hit(&user_key, window, now).await?;
            let reason = failure.reason_id();
            // An unknown "username" is often a password typed into the wrong field: it is
            // recorded only as a short hash, which still lets repeated attempts be correlated.
            let unknown = matches!(failure, users::LoginFailure::UnknownUser);
            let hashed = unknown.then(|| username_digest(&username));
            env.audit.emit(&AuditEvent {
                subject: if unknown { None } else { Some(&username) },
                detail: hashed.as_deref(),
                ..env.event("login.failure", reason, audit_path)
            });
            if form {
                return Ok(login_form_again(
                    env,
                    StatusCode::UNAUTHORIZED,
                    &input,
                    "The username or password is not correct.",
                ));
            }
            return Err(AuthError::LoginFailed(failure).into());
        }
    };
    env.store.throttle_clear(&user_key).await?;
    // The clock again: the password check may have waited for the blocking pool for seconds
    // under load, and the session's idle and absolute lifetimes and the access token's
    // `iat`/`exp` start now, when the session is created, not when the request arrived.
    let now = env.now;

    // A new session with new identifiers, whatever the browser sent (docs/security.md 15).
    let subject = user.username.clone();
    // A refresh token for a cookie is bound to this browser's new binding cookie
    // (docs/security.md 36); one handed to an API client in the body is not.
    let binding = (!input.return_tokens).then(tokens::Binding::new);
    let Opened {
        sid,
        refresh_token,
        refresh_expires,
        absolute,
    } = open_session(
        env,
        &subject,
        input.remember_me,
        binding.as_ref(),
        None,
        now,
    )
    .await?;
    let access = mint(
        auth,
        &subject,
        &sid,
        &AccessGrant::Roles(user.roles.clone()),
        now,
    )?;
    env.audit.emit(&AuditEvent {
        subject: Some(&subject),
        session: Some(&sid),
        ..env.event("login.success", "login.ok", audit_path)
    });

    let target = auth.redirect.target(input.return_to.as_deref());
    if input.return_tokens {
        return Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "token_type": "Bearer",
                "access_token": access,
                "expires_in": auth.access_ttl.as_secs(),
                "refresh_token": refresh_token,
                "refresh_expires_in": refresh_expires - now,
                "session": sid,
            }),
        ));
    }
    let mut response = if form {
        see_other(&target)
    } else {
        json(
            StatusCode::OK,
            &serde_json::json!({
                "subject": subject,
                "session": sid,
                "expires_in": auth.access_ttl.as_secs(),
                "return_to": target,
            }),
        )
    };
    set_token_cookies(
        response.headers_mut(),
        env,
        &access,
        binding.as_ref().map(|b| (refresh_token.as_str(), b)),
        input.remember_me.then_some(absolute),
    );
    // A new CSRF token too: one planted before login is useless after it.
    response
        .headers_mut()
        .append(SET_COOKIE, cookies::csrf(&tokens::random_token(32)));
    Ok(response)
}

/// A session [`open_session`] created.
pub(super) struct Opened {
    pub(super) sid: String,
    pub(super) refresh_token: String,
    /// When the first refresh token stops working (the session's idle expiry).
    pub(super) refresh_expires: i64,
    /// The session's absolute lifetime (the cookies' `Max-Age` with "remember me").
    pub(super) absolute: std::time::Duration,
}

/// Creates a new session of `subject` at `now`, with new identifiers whatever the browser sent
/// (docs/security.md 15), and its first refresh token (bound to `binding` when it goes into a
/// cookie): what a password login and a provider login (`provider`) both end in.
pub(super) async fn open_session(
    env: &Env<'_>,
    subject: &str,
    remember_me: bool,
    binding: Option<&tokens::Binding>,
    mut provider: Option<crate::store::ProviderLink>,
    now: i64,
) -> Result<Opened, GatewayError> {
    let sid = tokens::new_session_id();
    // A provider link arrives with the provider's refresh token in the clear: it is sealed
    // here, once the session id (its associated data) is known, or dropped when the provider
    // has no `refresh_token_key_file`. Never stored in the clear.
    if let Some(link) = provider.as_mut()
        && let Some(token) = link.refresh_token.take()
        && let Some(key) = crate::auth_flow::oidc::find(&env.auth.providers, &link.provider)
            .and_then(|p| p.refresh_key.as_ref())
    {
        link.refresh_token = Some(key.seal(&sid, &token));
    }
    let refresh_token = tokens::new_refresh_token(subject, &sid, binding);
    let (idle, absolute) = env.auth.lifetimes.of(remember_me);
    let record = SessionRecord {
        id: sid.clone(),
        subject: subject.to_owned(),
        created_at: now,
        last_seen: now,
        ip: env.client.ip.to_string(),
        user_agent: crate::audit::truncate(&env.client.user_agent, MAX_USER_AGENT).to_owned(),
        absolute_expiry: now + absolute.as_secs() as i64,
        idle_expiry: now + idle.min(absolute).as_secs() as i64,
        remember_me,
        provider,
    };
    let refresh_expires = record.idle_expiry;
    env.store
        .create_session(
            record,
            Some(RefreshGrant {
                hash: tokens::refresh_hash(&refresh_token),
                expires_at: refresh_expires,
            }),
        )
        .await?;
    Ok(Opened {
        sid,
        refresh_token,
        refresh_expires,
        absolute,
    })
}

/// How a typed username goes into the audit trail: as the subject when such a user exists,
/// else only as [`username_digest`].
fn audit_username<'u>(env: &Env<'_>, username: &'u str) -> (Option<&'u str>, Option<String>) {
    if env.auth.users.current().get(username).is_some() {
        (Some(username), None)
    } else {
        (None, Some(username_digest(username)))
    }
}

/// A login put off without a verdict on its password (throttled, or every verification slot
/// busy): audited as `login.failure` with the refusal's reason id, and answered with its status
/// and `Retry-After`: the login form again, with `message`, for a form post (`form`), the JSON
/// error otherwise.
fn login_deferred(
    env: &Env<'_>,
    username: &str,
    form: Option<&LoginInput>,
    refusal: AuthError,
    message: &str,
) -> Result<Response<GatewayBody>, GatewayError> {
    // Seconds until a retry can succeed: the throttle window's end, or a moment for a busy
    // verifier.
    let retry_after = refusal.retry_after().unwrap_or(1);
    let refusal = GatewayError::Auth(refusal);
    let (subject, digest) = audit_username(env, username);
    env.audit.emit(&AuditEvent {
        subject,
        detail: digest.as_deref(),
        ..env.event("login.failure", refusal.reason_id(), LOGIN_PATH)
    });
    let Some(input) = form else {
        return Err(refusal);
    };
    let mut response = login_form_again(env, refusal.status(), input, message);
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after));
    Ok(response)
}

/// `sha256:` and the first 16 hex digits of the SHA-256 of a canonical username.
fn username_digest(username: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, username.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// The only way to sign in, when it is one provider (no users file, one `auth.providers`).
fn single_provider(auth: &AuthSettings) -> Option<&crate::auth_flow::oidc::Provider> {
    match auth.providers.as_slice() {
        [only] if !auth.password_login => Some(only),
        _ => None,
    }
}

/// `/auth/oidc/<id>`, with the return path when there is one.
fn provider_start(id: &str, return_to: Option<&str>) -> String {
    let start = format!("{}{id}", crate::auth_flow::oidc::PREFIX);
    match return_to.filter(|r| !r.is_empty()) {
        Some(r) => format!("{start}?return_to={}", crate::keys::fetch::form_encode(r)),
        None => start,
    }
}

/// The login page's "Sign in with …" links.
fn provider_buttons(auth: &AuthSettings, return_to: Option<&str>) -> Vec<pages::ProviderButton> {
    auth.providers
        .iter()
        .map(|p| pages::ProviderButton {
            href: provider_start(&p.id, return_to),
            name: p.name.clone(),
        })
        .collect()
}

/// The login page with `message` (a provider sign-in that failed), answered with `status`:
/// never a redirect, so a failing provider cannot make a loop.
pub(super) fn login_page_error(
    env: &Env<'_>,
    status: StatusCode,
    return_to: Option<&str>,
    message: &str,
) -> Response<GatewayBody> {
    let csrf_token = tokens::random_token(32);
    let buttons = provider_buttons(env.auth, return_to);
    let mut response = html(
        status,
        pages::login(&pages::LoginForm {
            csrf: &csrf_token,
            return_to,
            error: Some(message),
            providers: &buttons,
            no_password: !env.auth.password_login,
            ..pages::LoginForm::default()
        }),
        &env.auth.page_csp,
    );
    response
        .headers_mut()
        .append(SET_COOKIE, cookies::csrf(&csrf_token));
    response
}

fn login_form_again(
    env: &Env<'_>,
    status: StatusCode,
    input: &LoginInput,
    message: &str,
) -> Response<GatewayBody> {
    let csrf_token = tokens::random_token(32);
    let buttons = provider_buttons(env.auth, input.return_to.as_deref());
    let mut response = html(
        status,
        pages::login(&pages::LoginForm {
            csrf: &csrf_token,
            return_to: input.return_to.as_deref(),
            username: Some(&input.username),
            error: Some(message),
            providers: &buttons,
            no_password: !env.auth.password_login,
        }),
        &env.auth.page_csp,
    );
    response
        .headers_mut()
        .append(SET_COOKIE, cookies::csrf(&csrf_token));
    response
}

pub(super) fn mint(
    auth: &AuthSettings,
    subject: &str,
    sid: &str,
    grant: &AccessGrant,
    now: i64,
) -> Result<String, GatewayError> {
    let (roles, idp, permissions): (&[String], _, _) = match grant {
        AccessGrant::Roles(roles) => (roles, None, None),
        AccessGrant::Provider {
            provider,
            roles,
            permissions,
        } => (roles, Some(provider.as_str()), Some(permissions.as_slice())),
    };
    let claims = AccessClaims {
        iss: &auth.issuer,
        aud: &auth.audience,
        sub: subject,
        sid,
        jti: tokens::random_token(16),
        iat: now,
        exp: now + auth.access_ttl.as_secs() as i64,
        roles,
        idp,
        permissions,
    };
    auth.signing
        .sign(&claims)
        .map_err(|e| GatewayError::Internal(Box::new(e)))
}

/// Sets the access cookie (with `auth.cookie_domain` where it applies) and, with `refresh`,
/// the refresh cookie and the binding cookie it is bound to: always together, with one
/// lifetime, host-only.
pub(super) fn set_token_cookies(
    headers: &mut HeaderMap,
    env: &Env<'_>,
    access: &str,
    refresh: Option<(&str, &tokens::Binding)>,
    persistent: Option<std::time::Duration>,
) {
    let auth = env.auth;
    headers.append(
        SET_COOKIE,
        cookies::access(
            &auth.access_cookie,
            access,
            persistent.map(|_| auth.access_ttl),
            auth.access_domain(&env.client.origin),
        ),
    );
    if let Some((refresh, binding)) = refresh {
        headers.append(SET_COOKIE, cookies::refresh(refresh, persistent));
        headers.append(SET_COOKIE, cookies::binding(binding.value(), persistent));
    }
}
