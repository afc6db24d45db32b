//! The `/auth/*` endpoints. Each handler reads the request, asks the users file and the store,
//! emits exactly one audit event for a security decision, and answers.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use super::csrf;
use super::tokens::{self, AccessClaims};
use super::{AuthSettings, Client, JWKS_PATH, LOGIN_PATH, cookies, pages};
use crate::audit::{Audit, AuditEvent};
use crate::body::GatewayBody;
use crate::error::{AuthError, CsrfError, GatewayError, RefreshFailure};
use crate::pipeline::identify::{self, Identify, IdentifyError};
use crate::pipeline::route::RouteError;
use crate::pipeline::{credential, verify};
use crate::store::{RefreshGrant, RotateOutcome, Rotation, SessionRecord, SessionStore, Store};
use crate::users;

/// Largest body accepted on an auth endpoint.
const MAX_BODY: usize = 16 * 1024;
/// Longest user agent kept in a session record.
const MAX_USER_AGENT: usize = 256;

/// What a handler needs besides the request.
#[derive(Debug)]
pub struct Env<'a> {
    /// The auth settings of this request's runtime snapshot.
    pub auth: &'a AuthSettings,
    /// Who a request is, in the same snapshot.
    pub identify: &'a Identify,
    /// Longest wait for the next part of a request body (`limits.body_read_timeout`).
    pub body_read_timeout: std::time::Duration,
    /// The session store.
    pub store: &'a Store,
    /// The audit trail.
    pub audit: &'a Audit,
    /// The request id.
    pub request_id: &'a HeaderValue,
    /// The instant of this request, read once from the gateway's clock: every decision the
    /// handler makes (expiry, lifetimes, revocation instants, throttle windows) uses it.
    pub now: i64,
    /// The client.
    pub client: Client,
}

impl Env<'_> {
    fn event<'e>(
        &'e self,
        event: &'static str,
        reason_id: &'static str,
        path: &'e str,
    ) -> AuditEvent<'e> {
        AuditEvent {
            event,
            reason_id,
            client_ip: Some(self.client.ip),
            user_agent: Some(&self.client.user_agent),
            request_id: self.request_id.to_str().ok(),
            method: Some("POST"),
            path: Some(path),
            ..AuditEvent::default()
        }
    }
}

/// Answers a request for one of the paths [`super::owns`].
pub async fn handle(
    request: Request<Incoming>,
    path: &str,
    env: &Env<'_>,
) -> Result<Response<GatewayBody>, GatewayError> {
    let method = request.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    match path {
        LOGIN_PATH if read => Ok(login_page(request.headers(), request.uri().query(), env)),
        LOGIN_PATH if method == Method::POST => login(request, env).await,
        "/auth/refresh" if method == Method::POST => refresh(request, env).await,
        "/auth/logout" if method == Method::POST => logout(request, env).await,
        "/auth/logout-all" if method == Method::POST => logout_all(request, env).await,
        "/auth/sessions" if read => sessions_page(request.headers(), method.as_str(), env).await,
        "/auth/sessions/revoke" if method == Method::POST => revoke(request, env).await,
        JWKS_PATH if read => Ok(jwks(env.auth)),
        "/auth/static/portcullis.css" if read => {
            Ok(asset(pages::STYLESHEET, "text/css; charset=utf-8"))
        }
        "/auth/static/refresh.js" if read => Ok(asset(
            pages::REFRESH_SCRIPT,
            "text/javascript; charset=utf-8",
        )),
        LOGIN_PATH
        | "/auth/refresh"
        | "/auth/logout"
        | "/auth/logout-all"
        | "/auth/sessions"
        | "/auth/sessions/revoke"
        | JWKS_PATH
        | "/auth/static/portcullis.css"
        | "/auth/static/refresh.js" => Err(RouteError::MethodNotAllowed.into()),
        _ => Err(RouteError::NotFound.into()),
    }
}

// ---- login -------------------------------------------------------------------------------

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

fn login_page(headers: &HeaderMap, query: Option<&str>, env: &Env<'_>) -> Response<GatewayBody> {
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
        pages::login(&pages::LoginForm {
            csrf: &csrf_token,
            return_to: return_to.as_deref(),
            ..pages::LoginForm::default()
        })
    };
    let mut response = html(StatusCode::OK, body);
    if fresh {
        response
            .headers_mut()
            .append(SET_COOKIE, cookies::csrf(&csrf_token));
    }
    response
}

async fn login(
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
    let sid = tokens::new_session_id();
    // A refresh token for a cookie is bound to this browser's new binding cookie
    // (docs/security.md 36); one handed to an API client in the body is not.
    let binding = (!input.return_tokens).then(tokens::Binding::new);
    let refresh_token = tokens::new_refresh_token(&subject, &sid, binding.as_ref());
    let (idle, absolute) = auth.lifetimes.of(input.remember_me);
    let record = SessionRecord {
        id: sid.clone(),
        subject: subject.clone(),
        created_at: now,
        last_seen: now,
        ip: env.client.ip.to_string(),
        user_agent: crate::audit::truncate(&env.client.user_agent, MAX_USER_AGENT).to_owned(),
        absolute_expiry: now + absolute.as_secs() as i64,
        idle_expiry: now + idle.min(absolute).as_secs() as i64,
        remember_me: input.remember_me,
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
    let access = mint(auth, &subject, &sid, &user.roles, now)?;
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
        auth,
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
    let mut response = login_form_again(refusal.status(), input, message);
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

fn login_form_again(
    status: StatusCode,
    input: &LoginInput,
    message: &str,
) -> Response<GatewayBody> {
    let csrf_token = tokens::random_token(32);
    let mut response = html(
        status,
        pages::login(&pages::LoginForm {
            csrf: &csrf_token,
            return_to: input.return_to.as_deref(),
            username: Some(&input.username),
            error: Some(message),
        }),
    );
    response
        .headers_mut()
        .append(SET_COOKIE, cookies::csrf(&csrf_token));
    response
}

fn mint(
    auth: &AuthSettings,
    subject: &str,
    sid: &str,
    roles: &[String],
    now: i64,
) -> Result<String, GatewayError> {
    let claims = AccessClaims {
        iss: &auth.issuer,
        aud: &auth.audience,
        sub: subject,
        sid,
        jti: tokens::random_token(16),
        iat: now,
        exp: now + auth.access_ttl.as_secs() as i64,
        roles,
    };
    auth.signing
        .sign(&claims)
        .map_err(|e| GatewayError::Internal(Box::new(e)))
}

/// Sets the access cookie and, with `refresh`, the refresh cookie and the binding cookie it is
/// bound to: always together, with one lifetime.
fn set_token_cookies(
    headers: &mut HeaderMap,
    auth: &AuthSettings,
    access: &str,
    refresh: Option<(&str, &tokens::Binding)>,
    persistent: Option<std::time::Duration>,
) {
    headers.append(
        SET_COOKIE,
        cookies::access(
            &auth.access_cookie,
            access,
            persistent.map(|_| auth.access_ttl),
        ),
    );
    if let Some((refresh, binding)) = refresh {
        headers.append(SET_COOKIE, cookies::refresh(refresh, persistent));
        headers.append(SET_COOKIE, cookies::binding(binding.value(), persistent));
    }
}

// ---- refresh -----------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct RefreshInput {
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default, skip)]
    csrf: Option<String>,
}

async fn refresh(
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
            for c in cookies::expire_tokens(&auth.access_cookie) {
                response.headers_mut().append(SET_COOKIE, c);
            }
            return Ok(response);
        }
    };
    let access = mint(auth, &subject, sid, &rotated.roles, now)?;
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
        auth,
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
    for c in cookies::expire_tokens(&env.auth.access_cookie) {
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

// ---- logout, logout-all, sessions ----------------------------------------------------------

/// The signed-in user of a request, from its access token.
#[derive(Debug)]
struct Signed {
    subject: String,
    session: String,
    /// The access token's `jti`, to denylist; `None` when the caller proved itself with its
    /// refresh token instead.
    jti: Option<String>,
    expires_at: i64,
    /// Set when the caller proved itself by rotating its refresh token: the successor, to
    /// hand back as the new refresh cookie (none after a concurrent rotation).
    rotated: Option<Rotated>,
}

/// A rotated refresh token: its successor (none after a concurrent rotation) and what the new
/// access token and cookies need.
#[derive(Debug)]
struct Rotated {
    successor: Option<String>,
    /// The successor's new binding, when the rotated token was bound (a cookie's).
    binding: Option<tokens::Binding>,
    remember_me: bool,
    roles: Vec<String>,
}

impl Rotated {
    /// The refresh and binding cookies to set: a bound successor, if there is one.
    fn cookie(&self) -> Option<(&str, &tokens::Binding)> {
        self.successor.as_deref().zip(self.binding.as_ref())
    }
}

/// The caller of a state-changing endpoint: its access token if that is usable, else — a page
/// left open past the access token's lifetime — its refresh cookie, proven by rotating it (a
/// session id alone, which backends see in `X-Auth-Session`, proves nothing).
async fn caller(headers: &HeaderMap, env: &Env<'_>) -> Result<Option<Signed>, GatewayError> {
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
enum RotateRefusal {
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
async fn rotate(
    env: &Env<'_>,
    token: &tokens::RefreshToken<'_>,
    presented: &str,
    now: i64,
) -> Result<Result<Rotated, RotateRefusal>, GatewayError> {
    let (subject, sid) = (token.subject.as_str(), token.session);
    let users = env.auth.users.current();
    let Some(user) = users.get(subject).filter(|u| !u.disabled) else {
        return Ok(Err(RotateRefusal::UserDisabled));
    };
    let Some(record) = env.store.session(subject, sid, now).await? else {
        return Ok(Err(RotateRefusal::Invalid));
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
        roles: user.roles.clone(),
    }))
}

/// The request's identity ([`identify`]) when the gateway issued its token: verified, with a
/// live session and an enabled user. `None` when there is none, or it is refused or another
/// issuer's; `Err` only when the store cannot answer, which fails closed (503) rather than
/// pass for "not signed in".
async fn signed_in(headers: &HeaderMap, env: &Env<'_>) -> Result<Option<Signed>, GatewayError> {
    let identity = match identify::identify(headers, env.identify, env.store, env.now).await {
        Ok(identity) => identity,
        Err(IdentifyError::StoreUnavailable { source, .. }) => return Err(source.into()),
        Err(
            IdentifyError::MissingCredential
            | IdentifyError::BadCredential(_)
            | IdentifyError::TokenRefused(_)
            | IdentifyError::SessionRefused { .. }
            | IdentifyError::UserDisabled { .. },
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

/// Whether a state-changing request authenticates with an ambient credential (an auth cookie
/// the browser attaches by itself) and so must repeat the CSRF token. A bearer client is not
/// a browser acting for someone else, and gets no cookie fallback (see [`caller`]).
fn needs_csrf(headers: &HeaderMap, auth: &AuthSettings) -> bool {
    !headers.contains_key(http::header::AUTHORIZATION)
        && credential::cookies(headers)
            .any(|(name, _)| name == auth.access_cookie || name == cookies::REFRESH_COOKIE)
}

/// The double-submit check: the request repeats the CSRF cookie's value in the form field
/// (`field`) or else the `X-CSRF-Token` header. A refusal is audited as `event` on `path`.
fn check_csrf_token(
    env: &Env<'_>,
    headers: &HeaderMap,
    field: Option<&str>,
    event: &'static str,
    path: &str,
) -> Result<(), GatewayError> {
    csrf::token_matches(
        cookies::read(headers, cookies::CSRF_COOKIE),
        field.or_else(|| header_str(headers, "x-csrf-token")),
    )
    .map_err(|e| refused(env, event, path, e))
}

/// The CSRF token a page embeds in its forms: the browser's cookie when it has a usable one,
/// else a new one (`true`: set it as the cookie with the page).
fn page_csrf_token(headers: &HeaderMap) -> (String, bool) {
    match cookies::read(headers, cookies::CSRF_COOKIE) {
        Some(c) if c.len() >= 22 => (c.to_owned(), false),
        _ => (tokens::random_token(32), true),
    }
}

async fn logout(
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
    let mut response = if form {
        see_other(LOGIN_PATH)
    } else {
        empty(StatusCode::NO_CONTENT)
    };
    expire_everything(response.headers_mut(), env);
    Ok(response)
}

/// Logout's cookies: every auth cookie expired, a refresh cookie planted for a parent domain
/// too (docs/security.md 36), and `Clear-Site-Data`.
fn expire_everything(headers: &mut HeaderMap, env: &Env<'_>) {
    for c in cookies::expire_all(&env.auth.access_cookie) {
        headers.append(SET_COOKIE, c);
    }
    for c in cookies::expire_planted(&env.client.origin) {
        headers.append(SET_COOKIE, c);
    }
    headers.insert("clear-site-data", HeaderValue::from_static("\"cookies\""));
}

async fn logout_all(
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

async fn sessions_page(
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
        let name = users
            .get(&signed.subject)
            .map(|u| u.display_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| signed.subject.clone());
        let rows: Vec<pages::SessionRow<'_>> = list
            .iter()
            .map(|record| pages::SessionRow {
                record,
                current: record.id == signed.session,
            })
            .collect();
        html(StatusCode::OK, pages::sessions(&name, &rows, &csrf_token))
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

async fn revoke(
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
            &rotated.roles,
            now,
        )?;
        let (_, absolute) = env.auth.lifetimes.of(rotated.remember_me);
        set_token_cookies(
            response.headers_mut(),
            env.auth,
            &access,
            rotated.cookie(),
            rotated.remember_me.then_some(absolute),
        );
    }
    Ok(response)
}

// ---- responses and parsing ----------------------------------------------------------------

fn refused(env: &Env<'_>, event: &'static str, path: &str, err: CsrfError) -> GatewayError {
    env.audit.emit(&env.event(event, err.reason_id(), path));
    AuthError::Csrf(err).into()
}

/// A revocation the store could not make (it did not answer, or too few replicas acknowledged
/// it): the caller gets 503 and the audit trail says so under the endpoint's event — it is
/// never reported done.
fn store_refused(
    env: &Env<'_>,
    event: &'static str,
    path: &str,
    subject: &str,
    session: &str,
    err: crate::store::StoreError,
) -> GatewayError {
    env.audit.emit(&AuditEvent {
        subject: Some(subject),
        session: Some(session),
        ..env.event(event, "store.unavailable", path)
    });
    err.into()
}

/// An endpoint that needs a signed-in user, and the request has none: audited like the proxy's
/// 401s (docs/security.md 33), since the pipeline leaves the auth flow's refusals to it.
fn not_signed_in(env: &Env<'_>, method: &str, path: &str) -> GatewayError {
    env.audit.emit(&AuditEvent {
        method: Some(method),
        ..env.event("access.unauthorized", "auth.not_signed_in", path)
    });
    AuthError::NotSignedIn.into()
}

fn jwks(auth: &AuthSettings) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(auth.jwks.clone()));
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    h.insert(CACHE_CONTROL, auth.jwks_cache_control.clone());
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(Bytes::from_static(text.as_bytes())));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn page_headers(h: &mut HeaderMap) {
    crate::error::harden(h);
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(pages::CSP),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

fn html(status: StatusCode, body: String) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(body));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    page_headers(h);
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::full(value.to_string()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    crate::error::harden(h);
    response
}

fn empty(status: StatusCode) -> Response<GatewayBody> {
    let mut response = Response::new(GatewayBody::Empty);
    *response.status_mut() = status;
    crate::error::harden(response.headers_mut());
    response
}

/// 303 See Other: after a POST the browser GETs the target (docs/security.md 26).
fn see_other(location: &str) -> Response<GatewayBody> {
    let mut response = empty(StatusCode::SEE_OTHER);
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, v);
    }
    response
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Form,
    Json,
}

fn body_kind(headers: &HeaderMap) -> Option<BodyKind> {
    let ct = header_str(headers, "content-type")?;
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => Some(BodyKind::Form),
        "application/json" => Some(BodyKind::Json),
        _ => None,
    }
}

/// The body of a form or JSON request, at most [`MAX_BODY`] bytes.
async fn read_body(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<(BodyKind, Bytes), GatewayError> {
    match read_body_or_empty(request, env).await? {
        (Some(kind), body) => Ok((kind, body)),
        (None, _) => Err(AuthError::UnsupportedMediaType.into()),
    }
}

/// Like [`read_body`], but a request without a body (and without a content type) is allowed.
async fn read_body_or_empty(
    request: Request<Incoming>,
    env: &Env<'_>,
) -> Result<(Option<BodyKind>, Bytes), GatewayError> {
    let kind = body_kind(request.headers());
    let declared =
        header_str(request.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY as u64) {
        return Err(GatewayError::PayloadTooLarge);
    }
    let has_type = request.headers().contains_key(CONTENT_TYPE);
    let limited = http_body_util::Limited::new(request.into_body(), MAX_BODY);
    // A form is a few hundred bytes: all of it within `limits.body_read_timeout`.
    let body = tokio::time::timeout(env.body_read_timeout, limited.collect())
        .await
        .map_err(|_| GatewayError::BodyStalled)?
        .map_err(|_| GatewayError::PayloadTooLarge)?
        .to_bytes();
    if kind.is_none() && (has_type || !body.is_empty()) {
        return Err(AuthError::UnsupportedMediaType.into());
    }
    Ok((kind, body))
}

fn body_csrf(kind: Option<BodyKind>, body: &[u8]) -> Option<String> {
    match kind {
        Some(BodyKind::Form) => std::str::from_utf8(body)
            .ok()
            .and_then(|t| form_field(t, "csrf")),
        Some(BodyKind::Json) => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("csrf").and_then(|c| c.as_str()).map(str::to_owned)),
        None => None,
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The first value of `name` in an `application/x-www-form-urlencoded` string.
fn form_field(text: &str, name: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (url_decode(k)? == name).then(|| url_decode(v)).flatten()
    })
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space); `None` for a bad escape
/// or invalid UTF-8.
pub(crate) fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_percent_decoded() {
        let body = "username=al%20ice&password=p%26ss+word&remember_me=1&x";
        assert_eq!(form_field(body, "username").as_deref(), Some("al ice"));
        assert_eq!(form_field(body, "password").as_deref(), Some("p&ss word"));
        assert_eq!(form_field(body, "remember_me").as_deref(), Some("1"));
        assert_eq!(form_field(body, "x").as_deref(), Some(""));
        assert_eq!(form_field(body, "missing"), None);
        assert_eq!(form_field("a=%zz", "a"), None);
    }
}
