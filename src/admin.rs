//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the admin API.
//!
//! It is a separate socket (plain HTTP; bind it to loopback or a management network), so the
//! proxy listener never serves any of this: no path, header or user agent on the proxy
//! reaches health or admin endpoints (docs/security.md 31). It is served by the proxy's accept
//! loop ([`crate::server`]) with limits of its own ([`crate::server::admin_limits`]): a request
//! head that does not arrive in time, a silent connection, or one connection too many is closed
//! as on the proxy listeners, and neither port's connections count against the other's.
//!
//! | endpoint | auth | does |
//! |---|---|---|
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when the config is loaded and the store answers (and, with Redis, invalidations arrive); else 503. `issuers_without_keys` names the remote issuers no key set could be fetched for yet (reported, not a reason for 503) |
//! | `GET /metrics` | none | Prometheus text |
//! | `GET /admin/sessions?user=U` | bearer | the user's live sessions |
//! | `POST /admin/sessions/revoke` `{"user","session"}` | bearer | ends one session (404 if not the user's) |
//! | `POST /admin/users/revoke` `{"user", "issuer"?}` | bearer | ends every session of the user and refuses their tokens issued before this second (the one rule, [`crate::pipeline::identify::revoke_user`], logout-all uses too) |
//! | `POST /admin/reload` | bearer | reloads gateway.yaml now; 422 with the reason if it is invalid |
//! | `POST /admin/store/resume` | bearer | ends the halt after a detected loss of the store's data (`store.on_data_loss: unavailable`), on every instance |
//!
//! A revocation the store could not make durable (it did not answer, or too few replicas
//! acknowledged it: `store.min_replicas_acks`) is answered 503 and audited with reason
//! `admin.store_unavailable`: it is never reported as done.
//!
//! The admin API is authenticated with a bearer secret read from `admin.token_file` (at least
//! 32 bytes), compared in constant time. Without that file the API answers 404 and only health
//! and metrics are served. Every admin action, and every refused attempt, is audited.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::Gateway;
use crate::audit::AuditEvent;
use crate::config::AdminSettings;
use crate::store::{SessionStore, StoreError};

/// Largest admin request body.
const MAX_BODY: usize = 16 * 1024;

/// Binds the admin listener and serves it, until `running` shuts down, through the server's
/// accept loop with [`crate::server::admin_limits`] (header and first-request timeouts,
/// connection caps); records and returns the bound address.
pub async fn start(
    settings: AdminSettings,
    running: &mut crate::server::Running,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(settings.bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, api = settings.token.is_some(), "admin listener");
    let gateway = Arc::clone(running.gateway());
    running.serve_admin(listener, Admin { gateway, settings });
    running.set_admin_addr(addr);
    Ok(addr)
}

/// The admin endpoints, as the server's accept loop calls them.
struct Admin {
    gateway: Arc<Gateway>,
    settings: AdminSettings,
}

impl crate::server::Handler for Admin {
    type Body = Full<Bytes>;

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: Arc<crate::pipeline::Connection>,
    ) -> AdminResponse {
        handle(request, conn.peer, &self.gateway, &self.settings).await
    }
}

type AdminResponse = Response<Full<Bytes>>;

/// Why the admin listener refused a request: the one vocabulary of its errors, each with one
/// status, one body and (for the audit trail) one reason id, made into a response in one
/// place ([`AdminError::response`]).
#[derive(Debug, thiserror::Error)]
enum AdminError {
    /// The admin API is off (no `admin.token_file`): it does not exist.
    #[error("admin API not configured")]
    ApiOff,
    /// A missing or wrong bearer secret.
    #[error("bad admin token")]
    BadToken,
    /// No such endpoint.
    #[error("not found")]
    NotFound,
    /// An endpoint that exists, with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `GET /admin/sessions` without `?user=`.
    #[error("the query parameter `user` is required")]
    MissingUser,
    /// A body that is not the JSON the endpoint takes.
    #[error("invalid JSON body: {0}")]
    BadJson(#[source] serde_json::Error),
    /// A body over [`MAX_BODY`].
    #[error("body too large")]
    BodyTooLarge,
    /// The session to revoke is not one of the user's.
    #[error("no such session for this user")]
    NoSuchSession,
    /// The store could not answer, or could not make the change durable.
    #[error("store unavailable")]
    Store(#[source] StoreError),
    /// The config file was refused; the old config stays.
    #[error("{0}")]
    ReloadRefused(#[source] crate::reload::ReloadError),
    /// `POST /admin/store/resume` on the memory store.
    #[error("the memory store has no epoch to resume")]
    NoEpoch,
    /// An `issuer` that no `issuers:` entry (nor `auth.issuer`) names.
    #[error("no configured issuer has this `iss`")]
    UnknownIssuer,
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::ApiOff | AdminError::NotFound | AdminError::NoSuchSession => {
                StatusCode::NOT_FOUND
            }
            AdminError::BadToken => StatusCode::UNAUTHORIZED,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::MissingUser | AdminError::BadJson(_) | AdminError::UnknownIssuer => {
                StatusCode::BAD_REQUEST
            }
            AdminError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::ReloadRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::NoEpoch => StatusCode::CONFLICT,
        }
    }

    /// The `error` of the JSON body: a code where the endpoint has nothing to explain, else
    /// what the operator must fix.
    fn code(&self) -> String {
        match self {
            AdminError::ApiOff | AdminError::NotFound => "not_found".to_owned(),
            AdminError::BadToken => "unauthorized".to_owned(),
            AdminError::MethodNotAllowed => "method_not_allowed".to_owned(),
            AdminError::MissingUser
            | AdminError::BadJson(_)
            | AdminError::BodyTooLarge
            | AdminError::NoSuchSession
            | AdminError::Store(_)
            | AdminError::ReloadRefused(_)
            | AdminError::NoEpoch
            | AdminError::UnknownIssuer => self.to_string(),
        }
    }

    /// The reason id of the audit event an endpoint emits for this refusal.
    fn reason_id(&self) -> &'static str {
        match self {
            AdminError::BadToken => "admin.bad_token",
            AdminError::NoSuchSession => "admin.not_found",
            AdminError::Store(_) => "admin.store_unavailable",
            AdminError::ReloadRefused(_) => "admin.refused",
            AdminError::ApiOff
            | AdminError::NotFound
            | AdminError::MethodNotAllowed
            | AdminError::MissingUser
            | AdminError::BadJson(_)
            | AdminError::BodyTooLarge
            | AdminError::NoEpoch
            | AdminError::UnknownIssuer => "admin.invalid",
        }
    }

    /// The one place an admin refusal becomes a response.
    fn response(&self) -> AdminResponse {
        let mut body = serde_json::json!({"error": self.code()});
        match self {
            AdminError::Store(e) => {
                tracing::warn!(error = %e, "admin request: store unavailable");
            }
            AdminError::ReloadRefused(_) => body["applied"] = false.into(),
            AdminError::ApiOff
            | AdminError::BadToken
            | AdminError::NotFound
            | AdminError::MethodNotAllowed
            | AdminError::MissingUser
            | AdminError::BadJson(_)
            | AdminError::BodyTooLarge
            | AdminError::NoSuchSession
            | AdminError::NoEpoch
            | AdminError::UnknownIssuer => {}
        }
        let mut response = json(self.status(), body);
        if matches!(self, AdminError::BadToken) {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
            );
        }
        response
    }
}

async fn handle(
    request: Request<Incoming>,
    peer: SocketAddr,
    gateway: &Arc<Gateway>,
    settings: &AdminSettings,
) -> AdminResponse {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // Who made an admin call is part of its audit event (docs/security.md 33), refusals included.
    let user_agent = request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let answered = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => Ok(json(StatusCode::OK, serde_json::json!({"status": "ok"}))),
        (&Method::GET, "/readyz") => Ok(readyz(gateway).await),
        (&Method::GET, "/metrics") => Ok(metrics(gateway)),
        (_, p) if p.starts_with("/admin/") => {
            let call = Call {
                method: &method,
                path: &path,
                peer,
                user_agent: user_agent.as_deref(),
                gateway,
            };
            match &settings.token {
                None => Err(AdminError::ApiOff),
                Some(token) => {
                    // The proxy's bearer parser: the scheme in any case (RFC 7235), one header.
                    let presented = crate::pipeline::credential::bearer(request.headers())
                        .ok()
                        .flatten();
                    if presented.is_some_and(|p| token.matches(p.as_bytes())) {
                        admin(request, &call).await
                    } else {
                        let refused = AdminError::BadToken;
                        call.audit("admin.denied", refused.reason_id(), None, None);
                        Err(refused)
                    }
                }
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics") => Err(AdminError::MethodNotAllowed),
        _ => Err(AdminError::NotFound),
    };
    answered.unwrap_or_else(|refused| refused.response())
}

async fn readyz(gateway: &Gateway) -> AdminResponse {
    let store = gateway.store();
    // Ready means the store answers now, not that the last operation did: a connection that
    // died while idle (Redis restarted) would say "healthy" until a request found out. So every
    // probe asks the store itself (one heartbeat: read the epoch, bounded by the store's
    // timeout; a dead connection is replaced and asked once more).
    let answered = store.ping().await.is_ok();
    let healthy = answered && store.is_healthy();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // An issuer whose provider could not be reached is named, but does not make the instance
    // unready: every instance would say the same, a load balancer would take them all out, and
    // the tokens of every other issuer would be refused with them. Its own tokens get 503.
    let runtime = gateway.runtime();
    let missing = runtime.identify.verifier.keys.issuers_without_keys();
    json(
        status,
        serde_json::json!({
            "status": if healthy { "ready" } else { "not_ready" },
            "store": if healthy { "ok" } else { "unavailable" },
            "keys": if missing.is_empty() { "ok" } else { "missing" },
            "issuers_without_keys": missing,
            "config_generation": gateway.generation(),
        }),
    )
}

fn metrics(gateway: &Gateway) -> AdminResponse {
    let runtime = gateway.runtime();
    let healthy = gateway.store().is_healthy();
    let gauges = crate::metrics::Gauges {
        store: gateway.store().counters(),
        store_healthy: healthy,
        pubsub_connected: gateway.store().is_subscribed(),
        generation: gateway.generation(),
        token_cache_entries: runtime.identify.token_cache.entry_count(),
        audit_dropped: gateway.audit().dropped(),
    };
    let body = gateway.metrics().render(&gauges);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeSession {
    user: String,
    session: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeUser {
    user: String,
    /// The issuer whose user this is (its `iss`); absent: a user of the gateway's own users
    /// file. `alice` at two issuers are two users.
    #[serde(default)]
    issuer: Option<String>,
}

/// One admin API call: who made it, for its audit event.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    peer: SocketAddr,
    user_agent: Option<&'a str>,
    gateway: &'a Arc<Gateway>,
}

impl Call<'_> {
    fn audit(
        &self,
        event: &'static str,
        reason: &'static str,
        subject: Option<&str>,
        session: Option<&str>,
    ) {
        self.gateway.audit().emit(&AuditEvent {
            event,
            reason_id: reason,
            subject,
            session,
            client_ip: Some(self.peer.ip()),
            user_agent: self.user_agent,
            method: Some(self.method.as_str()),
            path: Some(self.path),
            ..AuditEvent::default()
        });
    }

    /// Audits a refusal of the store as `event`, and passes it on.
    fn unavailable(
        &self,
        event: &'static str,
        subject: Option<&str>,
        session: Option<&str>,
    ) -> impl FnOnce(StoreError) -> AdminError {
        move |e| {
            let refused = AdminError::Store(e);
            self.audit(event, refused.reason_id(), subject, session);
            refused
        }
    }
}

async fn admin(request: Request<Incoming>, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
    let gateway = call.gateway;
    let now = gateway.clock().now();
    let store = gateway.store();
    match (call.method, call.path) {
        (&Method::GET, "/admin/sessions") => {
            let user = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("user=")))
                .and_then(crate::auth_flow::handlers::url_decode)
                .filter(|u| !u.is_empty())
                .ok_or(AdminError::MissingUser)?;
            let sessions = store
                .sessions_of(&user, now)
                .await
                .map_err(AdminError::Store)?;
            let list: Vec<serde_json::Value> = sessions
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "id": s.id,
                        "ip": s.ip,
                        "user_agent": s.user_agent,
                        "device": crate::auth_flow::pages::device(&s.user_agent),
                        "created_at": crate::audit::rfc3339(s.created_at, 0),
                        "last_seen": crate::audit::rfc3339(s.last_seen, 0),
                        "absolute_expiry": crate::audit::rfc3339(s.absolute_expiry, 0),
                        "remember_me": s.remember_me,
                    })
                })
                .collect();
            call.audit("admin.sessions_listed", "admin.ok", Some(&user), None);
            Ok(json(
                StatusCode::OK,
                serde_json::json!({"user": user, "sessions": list}),
            ))
        }
        (&Method::POST, "/admin/sessions/revoke") => {
            let body: RevokeSession = read_json(request).await?;
            let (user, session) = (Some(body.user.as_str()), Some(body.session.as_str()));
            let revoked = store
                .revoke_session(&body.user, &body.session)
                .await
                .map_err(call.unavailable("admin.session_revoked", user, session))?;
            if !revoked {
                let refused = AdminError::NoSuchSession;
                call.audit("admin.session_revoked", refused.reason_id(), user, session);
                return Err(refused);
            }
            call.audit("admin.session_revoked", "admin.ok", user, session);
            Ok(json(StatusCode::OK, serde_json::json!({"revoked": true})))
        }
        (&Method::POST, "/admin/users/revoke") => {
            let body: RevokeUser = read_json(request).await?;
            let runtime = gateway.runtime();
            let key = match &body.issuer {
                None => body.user.as_str().into(),
                Some(iss) => runtime
                    .identify
                    .verifier
                    .keys
                    .issuers
                    .iter()
                    .find(|i| *i.iss == **iss)
                    .map(|i| i.user_key(&body.user))
                    .ok_or_else(|| {
                        let refused = AdminError::UnknownIssuer;
                        call.audit(
                            "admin.user_revoked",
                            refused.reason_id(),
                            Some(&body.user),
                            None,
                        );
                        refused
                    })?,
            };
            let user = Some(&*key);
            crate::pipeline::identify::revoke_user(store, &runtime.identify, &key, now)
                .await
                .map_err(call.unavailable("admin.user_revoked", user, None))?;
            call.audit("admin.user_revoked", "admin.ok", user, None);
            Ok(json(StatusCode::OK, serde_json::json!({"revoked": true})))
        }
        (&Method::POST, "/admin/reload") => {
            // The outcome, not the attempt: a refused file is `admin.refused` here, and
            // `config.reload` carries the key or line that refused it.
            let report = match crate::reload::reload_file(gateway, "admin").await {
                Ok(report) => report,
                Err(e) => {
                    let refused = AdminError::ReloadRefused(e);
                    call.audit("admin.reload", refused.reason_id(), None, None);
                    return Err(refused);
                }
            };
            call.audit("admin.reload", "admin.ok", None, None);
            Ok(json(
                StatusCode::OK,
                serde_json::json!({
                    "applied": true,
                    "generation": report.generation,
                    "restart_needed": report.restart_needed,
                    "keys_changed": report.keys_changed,
                }),
            ))
        }
        (&Method::POST, "/admin/store/resume") => {
            let crate::store::Store::Redis(redis) = store else {
                return Err(AdminError::NoEpoch);
            };
            let was_halted = redis.resume().await.map_err(call.unavailable(
                "admin.store_resumed",
                None,
                None,
            ))?;
            call.audit("admin.store_resumed", "admin.ok", None, None);
            Ok(json(
                StatusCode::OK,
                serde_json::json!({"resumed": true, "was_halted": was_halted}),
            ))
        }
        (
            _,
            "/admin/sessions"
            | "/admin/sessions/revoke"
            | "/admin/users/revoke"
            | "/admin/reload"
            | "/admin/store/resume",
        ) => Err(AdminError::MethodNotAllowed),
        _ => Err(AdminError::NotFound),
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
) -> Result<T, AdminError> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| AdminError::BodyTooLarge)?
        .to_bytes();
    serde_json::from_slice(&body).map_err(AdminError::BadJson)
}

fn json(status: StatusCode, value: serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_admin_error_has_its_status_and_json_body() {
        let bad_json = serde_json::from_str::<RevokeUser>("{").unwrap_err();
        let store = StoreError::Unavailable {
            source: "down".into(),
        };
        let cases: Vec<(AdminError, u16, &str)> = vec![
            (AdminError::ApiOff, 404, "not_found"),
            (AdminError::BadToken, 401, "unauthorized"),
            (AdminError::NotFound, 404, "not_found"),
            (AdminError::MethodNotAllowed, 405, "method_not_allowed"),
            (
                AdminError::MissingUser,
                400,
                "the query parameter `user` is required",
            ),
            (AdminError::BadJson(bad_json), 400, "invalid JSON body: "),
            (AdminError::BodyTooLarge, 413, "body too large"),
            (
                AdminError::NoSuchSession,
                404,
                "no such session for this user",
            ),
            (AdminError::Store(store), 503, "store unavailable"),
            (
                AdminError::ReloadRefused(crate::reload::ReloadError::NoFile),
                422,
                "the gateway was not started from a config file",
            ),
            (
                AdminError::NoEpoch,
                409,
                "the memory store has no epoch to resume",
            ),
            (
                AdminError::UnknownIssuer,
                400,
                "no configured issuer has this `iss`",
            ),
        ];
        for (err, status, error) in cases {
            let response = err.response();
            assert_eq!(response.status().as_u16(), status, "{err:?}");
            assert_eq!(response.headers()["cache-control"], "no-store", "{err:?}");
            assert!(err.code().starts_with(error), "{err:?}: {}", err.code());
            let challenge = response.headers().get("www-authenticate");
            assert_eq!(challenge.is_some(), status == 401, "{err:?}");
        }
    }
}
