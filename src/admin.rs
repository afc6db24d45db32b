//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the admin API.
//!
//! It is a separate socket (plain HTTP; bind it to loopback or a management network), so the
//! proxy listener never serves any of this: no path, header or user agent on the proxy
//! reaches health or admin endpoints (docs/security.md 31).
//!
//! | endpoint | auth | does |
//! |---|---|---|
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when the config is loaded and the store answers (and, with Redis, invalidations arrive); else 503 |
//! | `GET /metrics` | none | Prometheus text |
//! | `GET /admin/sessions?user=U` | bearer | the user's live sessions |
//! | `POST /admin/sessions/revoke` `{"user","session"}` | bearer | ends one session (404 if not the user's) |
//! | `POST /admin/users/revoke` `{"user"}` | bearer | ends every session of the user and refuses their tokens issued until now |
//! | `POST /admin/reload` | bearer | reloads gateway.yaml now; 422 with the reason if it is invalid |
//! | `POST /admin/store/resume` | bearer | ends the halt after a detected loss of the store's data (`store.on_data_loss: unavailable`), on every instance |
//!
//! A revocation the store could not make durable (it did not answer, or too few replicas
//! acknowledged it: `store.min_replicas_acks`) is answered 503 and audited with reason
//! `admin.store_unavailable`: it is never reported as done.//!
//! The admin API is authenticated with a bearer secret read from `admin.token_file` (at least
//! 32 bytes), compared in constant time. Without that file the API answers 404 and only health
//! and metrics are served. Every admin action, and every refused attempt, is audited.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::Gateway;
use crate::audit::AuditEvent;
use crate::config::AdminSettings;
use crate::store::SessionStore;

/// Largest admin request body.
const MAX_BODY: usize = 16 * 1024;

/// Binds the admin listener and serves it until shutdown. Returns the bound address.
pub async fn start(
    settings: AdminSettings,
    gateway: Arc<Gateway>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(settings.bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, api = settings.token.is_some(), "admin listener");
    let settings = Arc::new(settings);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let gateway = Arc::clone(&gateway);
            let settings = Arc::clone(&settings);
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let gateway = Arc::clone(&gateway);
                    let settings = Arc::clone(&settings);
                    async move { Ok::<_, Infallible>(handle(request, peer, &gateway, &settings).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type AdminResponse = Response<Full<Bytes>>;

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
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(gateway).await,
        (&Method::GET, "/metrics") => metrics(gateway),
        (_, p) if p.starts_with("/admin/") => {
            let Some(token) = &settings.token else {
                return json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "not_found"}),
                );
            };
            // The proxy's bearer parser: the scheme in any case (RFC 7235), one header only.
            let presented = crate::pipeline::credential::bearer(request.headers())
                .ok()
                .flatten();
            if !presented.is_some_and(|p| token.matches(p.as_bytes())) {
                gateway.audit().emit(&AuditEvent {
                    event: "admin.denied",
                    reason_id: "admin.bad_token",
                    client_ip: Some(peer.ip()),
                    user_agent: user_agent.as_deref(),
                    method: Some(method.as_str()),
                    path: Some(&path),
                    ..AuditEvent::default()
                });
                let mut r = json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "unauthorized"}),
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"portcullis-admin\""),
                );
                return r;
            }
            match admin(
                request,
                &method,
                &path,
                peer,
                user_agent.as_deref(),
                gateway,
            )
            .await
            {
                Ok(r) | Err(r) => r,
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ),
    }
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
    json(
        status,
        serde_json::json!({
            "status": if healthy { "ready" } else { "not_ready" },
            "store": if healthy { "ok" } else { "unavailable" },
            "config_generation": gateway.generation(),
        }),
    )
}

fn metrics(gateway: &Gateway) -> AdminResponse {
    let runtime = gateway.runtime();
    let healthy = gateway.store().is_healthy();
    let gauges = crate::metrics::Gauges {
        store_healthy: healthy,
        pubsub_connected: gateway.store().is_subscribed(),
        generation: gateway.generation(),
        token_cache_entries: runtime.identify.token_cache.entry_count(),
        audit_dropped: gateway.audit().dropped(),
    };
    let body = crate::metrics::global().render(&gauges);
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
}

async fn admin(
    request: Request<Incoming>,
    method: &Method,
    path: &str,
    peer: SocketAddr,
    user_agent: Option<&str>,
    gateway: &Arc<Gateway>,
) -> Result<AdminResponse, AdminResponse> {
    let event = |event: &'static str,
                 reason: &'static str,
                 subject: Option<&str>,
                 session: Option<&str>| {
        gateway.audit().emit(&AuditEvent {
            event,
            reason_id: reason,
            subject,
            session,
            client_ip: Some(peer.ip()),
            user_agent,
            method: Some(method.as_str()),
            path: Some(path),
            ..AuditEvent::default()
        });
    };
    let now = gateway.clock().now();
    let store = gateway.store();
    match (method, path) {
        (&Method::GET, "/admin/sessions") => {
            let user = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("user=")))
                .and_then(crate::auth_flow::handlers::url_decode)
                .filter(|u| !u.is_empty())
                .ok_or_else(|| bad("the query parameter `user` is required"))?;
            let sessions = store.sessions_of(&user, now).await.map_err(unavailable)?;
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
            event("admin.sessions_listed", "admin.ok", Some(&user), None);
            Ok(json(
                StatusCode::OK,
                serde_json::json!({"user": user, "sessions": list}),
            ))
        }
        (&Method::POST, "/admin/sessions/revoke") => {
            let body: RevokeSession = read_json(request).await?;
            let revoked = store
                .revoke_session(&body.user, &body.session)
                .await
                .map_err(|e| {
                    event(
                        "admin.session_revoked",
                        "admin.store_unavailable",
                        Some(&body.user),
                        Some(&body.session),
                    );
                    unavailable(e)
                })?;
            event(
                "admin.session_revoked",
                if revoked {
                    "admin.ok"
                } else {
                    "admin.not_found"
                },
                Some(&body.user),
                Some(&body.session),
            );
            if revoked {
                Ok(json(StatusCode::OK, serde_json::json!({"revoked": true})))
            } else {
                Err(json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"error": "no such session for this user"}),
                ))
            }
        }
        (&Method::POST, "/admin/users/revoke") => {
            let body: RevokeUser = read_json(request).await?;
            let runtime = gateway.runtime();
            crate::pipeline::identify::revoke_user(store, &runtime.identify, &body.user, now)
                .await
                .map_err(|e| {
                    event(
                        "admin.user_revoked",
                        "admin.store_unavailable",
                        Some(&body.user),
                        None,
                    );
                    unavailable(e)
                })?;
            event("admin.user_revoked", "admin.ok", Some(&body.user), None);
            Ok(json(StatusCode::OK, serde_json::json!({"revoked": true})))
        }
        (&Method::POST, "/admin/reload") => {
            let outcome = crate::reload::reload_file(gateway, "admin").await;
            // The outcome, not the attempt: a refused file is `admin.refused` here, and
            // `config.reload` carries the key or line that refused it.
            let reason = if outcome.is_ok() {
                "admin.ok"
            } else {
                "admin.refused"
            };
            event("admin.reload", reason, None, None);
            match outcome {
                Ok(report) => Ok(json(
                    StatusCode::OK,
                    serde_json::json!({
                        "applied": true,
                        "generation": report.generation,
                        "restart_needed": report.restart_needed,
                        "keys_changed": report.keys_changed,
                    }),
                )),
                Err(e) => Err(json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"applied": false, "error": e.to_string()}),
                )),
            }
        }
        (&Method::POST, "/admin/store/resume") => {
            let crate::store::Store::Redis(redis) = store else {
                return Err(json(
                    StatusCode::CONFLICT,
                    serde_json::json!({"error": "the memory store has no epoch to resume"}),
                ));
            };
            let was_halted = redis.resume().await.map_err(|e| {
                event("admin.store_resumed", "admin.store_unavailable", None, None);
                unavailable(e)
            })?;
            event("admin.store_resumed", "admin.ok", None, None);
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
        ) => Err(json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method_not_allowed"}),
        )),
        _ => Err(json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        )),
    }
}

async fn read_json<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
) -> Result<T, AdminResponse> {
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": "body too large"}),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| bad(&format!("invalid JSON body: {e}")))
}

fn bad(message: &str) -> AdminResponse {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"error": message}),
    )
}

fn unavailable(e: crate::store::StoreError) -> AdminResponse {
    tracing::warn!(error = %e, "admin request: store unavailable");
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": "store unavailable"}),
    )
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
